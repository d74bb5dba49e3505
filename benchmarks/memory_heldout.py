"""Held-out memory of `qvl train`'s step: families, precisions, checkpointing, both steps, several images, text lengths.

    python benchmarks/memory_heldout.py measure --out DIR [--workers 4]     # on one GPU (CUDA), a few minutes
    python benchmarks/memory_heldout.py measure --out DIR --only 4,5,6,7   # the second run
    python benchmarks/memory_heldout.py measure --out DIR --only 8,9,10,11   # the third run (full, checkpointing)
    python benchmarks/memory_heldout.py report DIR/rows_*.csv --out benchmarks/memory_heldout   # anywhere, no GPU

`measure` runs GROUPS (below) in `--workers` processes on the same GPU, each capped to its share of the GPU's memory
(`torch.cuda.set_per_process_memory_fraction`): peaks are per process, so they do not mix; step times do, and this
benchmark reports none. Every point is prepared as `qvl train` prepares it (`qvl.profile.profile_trainer`: the run
config's model, adapters, precision, step and optimizer) and steps synthetic samples shaped as the processor makes them
(`qvl.profile.SyntheticData`). An out-of-memory point is a row with status 'oom'. No coefficient of `qvl.estimate` was
fitted on any of these models (its fits: Qwen2.5-VL-3B/7B), so every row is held out.

`report` puts `qvl.estimate.estimate_setup` of each row beside it and writes the table per family x precision x
checkpointing x step.
"""
import argparse, csv, gc, subprocess, sys, time
from pathlib import Path

# (side, batch, images per sample, prompt tokens, answer tokens)
BASE = [(448, 2, 1, 64, 128), (896, 2, 1, 64, 128), (672, 1, 3, 64, 128), (448, 1, 1, 1024, 3072), (896, 4, 1, 16, 16)]
SMALL = [(448, 2, 1, 64, 128), (896, 2, 1, 64, 128), (672, 1, 3, 64, 128), (448, 1, 1, 512, 1536)]

def groups(model, methods=('lora',), precisions=('bf16',), steps=(True, False), gcs=(True, False), points=BASE):
    return [dict(model=model, method=m, precision=p, fast=f, gradient_checkpointing=g, points=points)
            for m in methods for p in precisions for f in steps for g in gcs]

# worker -> (share of the GPU's memory, groups in order of priority)
PLAN = {
    0: (0.36, groups('Qwen3-VL-8B', points=SMALL) + groups('Qwen2-VL-7B', points=SMALL)),
    1: (0.19, groups('Qwen2-VL-2B', methods=('lora', 'full'))),
    2: (0.19, groups('Qwen3-VL-2B', methods=('lora', 'full'))),
    3: (0.19, groups('Qwen2-VL-2B', methods=('lora', 'full'), precisions=('bf16-mixed',), points=SMALL)
        + groups('Qwen3-VL-2B', methods=('lora', 'full'), precisions=('bf16-mixed',), gcs=(True,), points=SMALL)
        + groups('Qwen3-VL-4B', points=SMALL[:3])
        + groups('Qwen3-VL-2B', precisions=('fp32',), steps=(True,), gcs=(True,), points=SMALL[:2])
        + [dict(model='qlora:Qwen2-VL-2B', method='qlora', precision='bf16', fast=True, gradient_checkpointing=True, points=SMALL[:3])]),
    # the second run (`--only 4,5,6,7`): what worker 3 had no time for, and full fine-tuning of Qwen3-VL-4B
    4: (0.24, groups('Qwen3-VL-4B', points=SMALL[:3])),
    5: (0.24, groups('Qwen3-VL-2B', methods=('lora', 'full'), precisions=('fp32',), steps=(True,), points=SMALL[:3])
        + groups('Qwen2-VL-2B', precisions=('fp32',), steps=(True,), points=SMALL[:2])),
    6: (0.24, [dict(model=f'qlora:{m}', method='qlora', precision='bf16', fast=True, gradient_checkpointing=g, points=SMALL)
               for m in ('Qwen2-VL-2B', 'Qwen3-VL-2B') for g in (True, False)]
        + [dict(model='qlora:Qwen3-VL-4B', method='qlora', precision='bf16', fast=True, gradient_checkpointing=True, points=SMALL[:3])]),
    7: (0.24, groups('Qwen3-VL-4B', methods=('full',), steps=(True,), points=SMALL[:3])
        + groups('Qwen3-VL-2B', methods=('full',), precisions=('bf16-mixed',), steps=(False,), gcs=(True,), points=SMALL)),
    # the third run (`--only 8,9,10,11`): every group of full fine-tuning with checkpointing again, after `prepare_model`
    # took the frozen vision tower out of autograd for full fine-tuning too; their earlier rows: superseded_full_gc.csv
    8: (0.24, groups('Qwen2-VL-2B', methods=('full',), gcs=(True,))),
    9: (0.24, groups('Qwen3-VL-2B', methods=('full',), gcs=(True,))),
    10: (0.24, groups('Qwen3-VL-4B', methods=('full',), steps=(True,), gcs=(True,), points=SMALL[:3])
         + groups('Qwen3-VL-2B', methods=('full',), precisions=('fp32',), steps=(True,), gcs=(True,), points=SMALL[:3])),
    11: (0.24, groups('Qwen3-VL-2B', methods=('full',), precisions=('bf16-mixed',), gcs=(True,), points=SMALL)
         + groups('Qwen2-VL-2B', methods=('full',), precisions=('bf16-mixed',), gcs=(True,), points=SMALL)),
}
FIELDS = ['model', 'method', 'precision', 'fast', 'gradient_checkpointing', 'image_w', 'image_h', 'batch_size',
          'images_per_sample', 'prompt_tokens', 'answer_tokens', 'lora_adapter_dtype', 'status', 'error',
          'after_load', 'peak_allocated', 'peak_reserved', 'gpu', 'seconds']

def worker(a):
    import torch
    from qvl.profile import measure_steps, SyntheticData, profile_config, profile_trainer
    from qvl.core import ImageSize
    if a.smoke:     # the script's own check on any machine: a tiny model, CPU
        from qvl.cli import main as qvl
        tiny = str(Path(a.out) / 'tiny'); qvl(['tiny-model', tiny])
        share, plan, dev = None, [dict(g, points=g['points'][:2]) for g in groups(tiny, methods=('lora', 'full'), precisions=('fp32',))], torch.device('cpu')
    else:
        share, plan = PLAN[a.worker]
        torch.cuda.set_per_process_memory_fraction(share)
        dev = torch.device('cuda')
    out = Path(a.out) / f'rows_{a.worker}.csv'
    new = not out.exists()
    f = open(out, 'a', newline=''); w = csv.DictWriter(f, FIELDS)
    if new: w.writeheader()
    t_start = time.time()
    for g in plan:
        if time.time() - t_start > a.budget_s: print(f'worker {a.worker}: time budget spent, {g["model"]} left out', flush=True); break
        model = g['model']
        if model.startswith('qlora:'):      # QLoRA quantizes a checkpoint on load: a random-weight one on disk
            like = model.split(':', 1)[1]; model = f'/tmp/ckpt-{like}'
            if not Path(model).exists():
                from qvl.cli import main as qvl
                qvl(['tiny-model', model, '--like', like])
        cfg = profile_config(model, g['method'], g['gradient_checkpointing'], g['fast'], precision=g['precision'])
        tr = None
        for side, b, n_img, p, ans in g['points']:
            t0 = time.time()
            row = dict(model=g['model'].split(':')[-1], method=g['method'], precision=g['precision'], fast=g['fast'],
                       gradient_checkpointing=g['gradient_checkpointing'], image_w=side, image_h=side, batch_size=b,
                       images_per_sample=n_img, prompt_tokens=p, answer_tokens=ans, gpu=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu')
            try:
                if tr is None:
                    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(dev)
                    tr = profile_trainer(cfg, ImageSize(side, side), b, p, ans, dev)
                    loaded = torch.cuda.memory_allocated(dev) if dev.type == 'cuda' else 0
                    row['lora_adapter_dtype'] = next((str(q.dtype).split('.')[-1] for n, q in tr.module.named_parameters()
                                                      if 'lora_' in n), '')
                tr.use_data(SyntheticData(tr.module.config, ImageSize(side, side), b, p, ans, images_per_sample=n_img), b)
                r = measure_steps(tr, steps=1, warmup=1)
                row.update({k: r.get(k) for k in ('status', 'error', 'peak_allocated', 'peak_reserved')}, after_load=loaded)
            except torch.OutOfMemoryError as e:
                row.update(status='oom', error=str(e).split('.')[0], peak_allocated=torch.cuda.max_memory_allocated(dev) if dev.type == 'cuda' else None)
                tr = None
            except Exception as e:      # a setting that cannot run is a row that says why, not the end of the sweep
                row.update(status='error', error=f'{type(e).__name__}: {e}'[:300])
            row['seconds'] = round(time.time() - t0, 1)
            w.writerow(row); f.flush()
            print(f"worker {a.worker}: {row['model']} {row['method']} {row['precision']} {'fast' if row['fast'] else 'plain'} "
                  f"gc={row['gradient_checkpointing']} {side} b{b} x{n_img} {p}+{ans}: {row['status']} "
                  f"{(row.get('peak_allocated') or 0) / 2**30:.2f} GiB ({row['seconds']} s)", flush=True)
        del tr; gc.collect(); torch._dynamo.reset()
        if dev.type == 'cuda': torch.cuda.empty_cache()
    f.close()

def measure(a):
    Path(a.out).mkdir(parents=True, exist_ok=True)
    which = [int(w) for w in a.only.split(',')] if a.only else range(a.workers)
    procs = [subprocess.Popen([sys.executable, __file__, 'worker', '--worker', str(i), '--out', a.out, '--budget-s', str(a.budget_s)])
             for i in which]
    sys.exit(max(p.wait() for p in procs))

def row_setup(r):
    "The `Setup` of a measured row (`qvl train`'s preparation: the merger trained)."
    from qvl.estimate import Setup
    from qvl.profile import row_attention_mask
    return Setup(model=r.model, method=r.method, precision=r.precision, fast=bool(r.fast),
                 gradient_checkpointing=bool(r.gradient_checkpointing), image_size=(int(r.image_w), int(r.image_h)),
                 batch_size=int(r.batch_size), images_per_sample=int(r.images_per_sample), prompt_tokens=int(r.prompt_tokens),
                 answer_tokens=int(r.answer_tokens), freeze_projector=False, attention_mask=row_attention_mask(r))


def report(a):
    import pandas as pd
    from qvl.estimate import estimate_setup
    df = pd.concat([pd.read_csv(p).assign(worker=int(Path(p).stem.split('_')[-1])) for p in a.rows], ignore_index=True)
    est, res = [], []
    for _, r in df.iterrows():
        e = estimate_setup(row_setup(r)); est.append(e.peak_allocated_bytes); res.append(e.peak_reserved_bytes)
    df['estimated_allocated'], df['estimated_reserved'] = est, res
    # each worker's cap: its share of the GPU's memory (PLAN), which bounds what the allocator reserves; an out-of-memory
    # row is right when the estimate of the reserved peak is above it
    total = 143771 * 2**20      # NVIDIA H200, MiB as nvidia-smi reports it
    df['cap'] = [PLAN[int(str(w))][0] * total for w in df.worker] if 'worker' in df else float('nan')
    oom = df[df.status == 'oom']
    print(f"out of memory: {len(oom)} points; the estimate (reserved) is above the cap for {(oom.estimated_reserved > oom.cap).sum()}"
          + ''.join(f"\n  {r.model} {r.method} {r.precision} {'fast' if r.fast else 'plain'} gc={r.gradient_checkpointing} "
                    f"{r.image_w} b{r.batch_size}: estimate {r.estimated_allocated / 1e9:.1f} GB allocated, {r.estimated_reserved / 1e9:.1f} reserved; cap {r.cap / 1e9:.1f} GB"
                    for _, r in oom.iterrows()))
    ok = df[df.status == 'ok'].copy()
    ok['error'] = ok.estimated_allocated / ok.peak_allocated - 1
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    ok.drop(columns=['gpu', 'cap']).to_csv(out / 'accuracy.csv', index=False)
    ok['step'] = ok.fast.map({True: 'fast', False: 'plain'})
    ok['checkpointing'] = ok.gradient_checkpointing.map({True: 'on', False: 'off'})
    g = ok.groupby(['model', 'method', 'precision', 'checkpointing', 'step']).error
    t = pd.DataFrame(dict(points=g.size(), median=g.apply(lambda e: e.abs().median()), worst=g.apply(lambda e: e.abs().max()),
                          signed_worst=g.apply(lambda e: e.loc[e.abs().idxmax()]))).reset_index()
    print(t.to_string(index=False, float_format=lambda v: f'{v:.1%}'))
    print(f"all {len(ok)} points: median {ok.error.abs().median():.1%}, worst {ok.error.abs().max():.1%}; "
          f"{(df.status == 'oom').sum()} out of memory, {(df.status == 'error').sum()} errors")
    t.to_csv(out / 'by_group.csv', index=False)

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    m = sub.add_parser('measure'); m.add_argument('--out', required=True); m.add_argument('--workers', type=int, default=4)
    m.add_argument('--only', metavar='W,W', help='run these workers of PLAN (default: 0 to --workers - 1)')
    m.add_argument('--budget-s', type=float, default=420, help='a worker starts no new group after this many seconds')
    w = sub.add_parser('worker'); w.add_argument('--worker', type=int, required=True); w.add_argument('--out', required=True)
    w.add_argument('--budget-s', type=float, default=420); w.add_argument('--smoke', action='store_true')
    r = sub.add_parser('report'); r.add_argument('rows', nargs='+'); r.add_argument('--out', required=True)
    a = p.parse_args()
    dict(measure=measure, worker=worker, report=report)[a.cmd](a)

if __name__ == '__main__': main()
