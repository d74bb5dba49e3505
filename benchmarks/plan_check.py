"""`qvl train RUN.yaml --plan GB` measured against what `qvl plan` predicted for the config it chose: settings no
coefficient of the step-time model was fitted on (its fit: 1344 px steps; these: 896 px).

    python benchmarks/plan_check.py --work /tmp/plan --out DIR     # one CUDA GPU; a random-weight checkpoint on disk

Each run is `qvl train` in its own process on real JPEGs (global batch 8, written as micro-batch 1 x 8; the planner picks
the split and the checkpointed layers); its summary.json gives the steady steps' seconds and the memory peak. The
prediction is `qvl.plan.plan_config` of the same config (a nominal sample of the run's image size and 64 + 128 text
tokens). Rows: DIR/runs.json.
"""
import argparse, json, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
RUNS = [('Qwen2.5-VL-3B', 'full', 896, 80), ('Qwen2.5-VL-3B', 'full', 896, 40), ('Qwen2.5-VL-3B', 'lora', 896, 24)]

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work', required=True); p.add_argument('--out', required=True)
    p.add_argument('--steps', type=int, default=6); p.add_argument('--budget-s', type=float, default=400)
    a = p.parse_args()
    from fast_step import prepare
    from train_mfu import train_run
    from qvl.config import config_from_dict
    from qvl.core import GB
    from qvl.plan import plan_config
    t0 = time.time()
    work, out = Path(a.work), Path(a.out); out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model, method, side, gb in RUNS:
        if time.time() - t0 > a.budget_s: print(f'time budget spent: {model} {method} {side} {gb} GB left out'); continue
        d = prepare(work, model, [side], n=16)
        name = f'{model}-{method}-{side}-{gb}GB'
        cfg = dict(model=str(d['checkpoint']), data=str(d['data'][side]), out_dir=str(work / name), method=method, steps=a.steps,
                   batch_size=1, grad_accum=8, cutoff_len=8192, target=[side, side], report_to='none', log_every=1)
        _, df = plan_config(config_from_dict(cfg), gb * GB)
        c = df[df.chosen].iloc[0]
        row = dict(run=name, micro_batch=int(c.micro_batch), grad_accum=int(c.grad_accum), checkpoint_layers=int(c.checkpoint_layers),
                   predicted_s_per_step=round(c.s_per_step, 4), predicted_peak_gb=round(c.peak_gb, 3),
                   **train_run(cfg, name, work, out, '--plan', str(gb)))
        if row['rc'] == 0: row.update(time_error=round(c.s_per_step / row['steady_s_per_step'] - 1, 4),
                                      peak_error=round(c.peak_gb / row['max_allocated_gb'] - 1, 4))
        rows.append(row); print(row, flush=True)
        (out / 'runs.json').write_text(json.dumps(rows, indent=1))

if __name__ == '__main__': main()
