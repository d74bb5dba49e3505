"""MFU of `qvl train` itself (the public command, real JPEGs read by the trainer) for Qwen2.5-VL-7B LoRA at 1344x1344
with a global batch of 8, in the settings the step-time grid (`step_time.py`) points to.

    python benchmarks/train_mfu.py --work /tmp/mfu --out DIR      # one CUDA GPU; a random-weight 7B checkpoint on disk

Each run is `qvl train RUN.yaml` in its own process; its summary.json gives the steady steps' MFU (vision tower counted,
recomputation not), HFU, tokens/s and memory peaks. Rows: DIR/runs.csv.
"""
import argparse, json, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
RUNS = [dict(name='b4x2-k0-workers4', batch_size=4, grad_accum=2, gradient_checkpointing=False, data_workers=4),
        dict(name='b4x2-k28-workers4', batch_size=4, grad_accum=2, gradient_checkpointing=True, data_workers=4),
        dict(name='b4x2-k0-workers0', batch_size=4, grad_accum=2, gradient_checkpointing=False, data_workers=0),
        dict(name='b8x1-k14-workers4', batch_size=8, grad_accum=1, gradient_checkpointing=True, checkpoint_layers=14, data_workers=4)]

def train_run(cfg: dict, name: str, work: Path, out: Path, *args) -> dict:
    "`qvl train` of `cfg` (written to WORK/NAME.yaml; `args`: more flags) in its own process: rc, wall time, its summary.json."
    import yaml
    y = work / f'{name}.yaml'; y.write_text(yaml.safe_dump(cfg))
    t = time.time()
    res = subprocess.run(['qvl', 'train', str(y), *args], capture_output=True, text=True)
    (out / f'log_{name}.txt').write_text(res.stdout[-20000:] + res.stderr[-20000:])
    s = json.loads((Path(cfg['out_dir']) / 'summary.json').read_text()) if res.returncode == 0 else {}
    return dict(rc=res.returncode, wall_s=round(time.time() - t), **s)

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work', required=True); p.add_argument('--out', required=True)
    p.add_argument('--steps', type=int, default=8); p.add_argument('--budget-s', type=float, default=400)
    p.add_argument('--runs', nargs='+', choices=[r['name'] for r in RUNS], help='only these runs (default: all)')
    a = p.parse_args()
    from fast_step import prepare
    t0 = time.time()
    work, out = Path(a.work), Path(a.out); out.mkdir(parents=True, exist_ok=True)
    d = prepare(work, 'Qwen2.5-VL-7B', [1344], n=16)
    print(f'checkpoint and data ready in {time.time() - t0:.0f} s', flush=True)
    rows = []
    for r in (r for r in RUNS if not a.runs or r['name'] in a.runs):
        if time.time() - t0 > a.budget_s: print(f"time budget spent: {r['name']} left out"); continue
        cfg = dict(model=str(d['checkpoint']), data=str(d['data'][1344]), out_dir=str(work / r['name']), method='lora',
                   steps=a.steps, cutoff_len=8192, target=[1344, 1344], report_to='none', log_every=1,
                   **{k: v for k, v in r.items() if k != 'name'})
        rows.append(dict(run=r['name'], **train_run(cfg, r['name'], work, out)))
        print(rows[-1], flush=True)
        (out / 'runs.json').write_text(json.dumps(rows, indent=1))

if __name__ == '__main__': main()
