"""Step time of `qvl train`'s fast step against micro-batch, image size and checkpointed layers k (the planner's data).

    python benchmarks/step_time.py measure --out DIR        # one CUDA GPU, about 8 minutes on an H200
    python benchmarks/step_time.py trace --out DIR          # where one step's time goes (torch.profiler), 7B LoRA 1344 b4 k=0

Every point is `qvl.memory.profile` (the trainer's own preparation and step, synthetic samples of one image with 64
prompt and 128 answer tokens): warm-up step(s), then the median of 3 timed steps; MFU counts the vision tower's FLOPs
and not recomputation, HFU counts recomputation. k=0 is checkpointing off; k=N every layer. Rows: DIR/rows.csv.
"""
import argparse, time
from pathlib import Path

# (model, method, side, batches, checkpointed layers k); in this order, until the time budget is spent
GRID = [('Qwen2.5-VL-7B', 'lora', 1344, (1, 2, 4, 8), (28, 0, 14)),
        ('Qwen2.5-VL-7B', 'lora', 896, (4, 8), (0, 28)),
        ('Qwen2.5-VL-3B', 'lora', 1344, (4,), (0, 18, 36)),
        ('Qwen2.5-VL-3B', 'full', 896, (4,), (0, 36)),
        ('Qwen2.5-VL-7B', 'full', 1344, (2,), (0, 28))]

def measure(a):
    import pandas as pd, torch
    from qvl.memory import profile
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    t0, rows = time.time(), []
    for model, method, side, batches, ks in GRID:
        for k in ks:
            if time.time() - t0 > a.budget_s: print(f'time budget spent: {model} {method} {side} k={k} left out', flush=True); continue
            kw = dict(checkpoint_layers=k) if k else {}
            df = profile(model, method, [(side, b, k > 0) for b in batches], steps=3, warmup=a.warmup, progress=False, **kw)
            df['k'] = k
            rows.append(df)
            for _, r in df.iterrows():
                print(f"{model} {method} {side} b{r.batch_size} k={k}: {r.status} {r.get('step_s', float('nan')):.3f} s/step "
                      f"MFU {r.get('mfu') or float('nan'):.1%} HFU {r.get('hfu') or float('nan'):.1%} "
                      f"{r.peak_allocated / 1e9:.1f} GB (warm-up {r.get('warmup_s', float('nan')):.0f} s)", flush=True)
            pd.concat(rows).to_csv(out / 'rows.csv', index=False)
    print(f'{time.time() - t0:.0f} s; {torch.cuda.get_device_name()}')

def trace(a):
    "One step of 7B LoRA 1344 b4 without checkpointing under torch.profiler: GPU busy time and the top kernels."
    from qvl.core import ImageSize
    from qvl.memory import profile_config, profile_trainer
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    cfg = profile_config('Qwen2.5-VL-7B', 'lora', False, True)
    tr = profile_trainer(cfg, ImageSize(1344, 1344), 4)
    for _ in range(2): tr.train_step()
    from torch.profiler import ProfilerActivity, profile as tprofile
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        r = tr.train_step()
    ev = p.key_averages()
    table = ev.table(sort_by='cuda_time_total', row_limit=40, max_name_column_width=90)
    busy = sum(e.self_device_time_total for e in ev) / 1e6
    text = (f"step {r['seconds']:.3f} s, GPU kernels {busy:.3f} s ({busy / r['seconds']:.0%} of the step), "
            f"MFU {r['flops'] / r['seconds'] / tr.peak_flops:.1%}\n\n{table}")
    (out / 'trace_7b_lora_1344_b4_k0.txt').write_text(text); print(text[:6000])

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    m = sub.add_parser('measure'); m.add_argument('--out', required=True)
    m.add_argument('--budget-s', type=float, default=420, help='no new group starts after this many seconds')
    m.add_argument('--warmup', type=int, default=2)
    t = sub.add_parser('trace'); t.add_argument('--out', required=True)
    a = p.parse_args()
    dict(measure=measure, trace=trace)[a.cmd](a)

if __name__ == '__main__': main()
