"""Step time of `qvl train`'s fast step against micro-batch, image size and checkpointed layers k (the planner's data).

    python benchmarks/step_time.py measure --out DIR        # one CUDA GPU, about 8 minutes on an H200
    python benchmarks/step_time.py measure --grid holdout --out DIR   # the planner's held-out settings
    python benchmarks/step_time.py measure --grid causal --out DIR    # after causal_attention: fit and held-out steps
    python benchmarks/step_time.py report DIR/rows.csv ... --out DIR  # anywhere: the plan's prediction beside each row
    python benchmarks/step_time.py trace --out DIR          # where one step's time goes (torch.profiler), 7B LoRA 1344 b4 k=0
    python benchmarks/step_time.py plan-plot --runs benchmarks/train_mfu/causal/runs.json --out DIR   # the planner's plot

Every point is `qvl.profile.profile` (the trainer's own preparation and step, synthetic samples of one image with 64
prompt and 128 answer tokens): warm-up step(s), then the median of 3 timed steps; MFU counts the vision tower's FLOPs
and not recomputation, HFU counts recomputation. k=0 is checkpointing off; k=N every layer. Rows: DIR/rows.csv.
"""
import argparse, time
from pathlib import Path

# (model, method, side, batches, checkpointed layers k); in this order, until the time budget is spent.
# fit: what STEP_TIME was fitted on (7B LoRA at 1344 px) and its first held-out points (896 px);
# holdout: the planner's settings it never saw: another model size, full fine-tuning, both resolutions
GRIDS = dict(
    fit=[('Qwen2.5-VL-7B', 'lora', 1344, (1, 2, 4, 8), (28, 0, 14)),
         ('Qwen2.5-VL-7B', 'lora', 896, (4, 8), (0, 28))],
    holdout=[('Qwen2.5-VL-3B', 'lora', 1344, (4,), (0, 18, 36)),
             ('Qwen2.5-VL-3B', 'full', 896, (4,), (0, 36)),
             ('Qwen2.5-VL-7B', 'full', 1344, (2,), (28, 0)),
             ('Qwen2.5-VL-3B', 'lora', 896, (8,), (0,)),
             ('Qwen2.5-VL-7B', 'full', 896, (4,), (28,)),
             ('Qwen3-VL-8B', 'lora', 1344, (4,), (0,))])
GRIDS['holdout2'] = GRIDS['holdout'][3:]      # what the first run's time budget left out
# after the fast step's causal_attention route (no padding mask): the fit's 7B LoRA 1344 px steps and held-out ones again
GRIDS['causal'] = [('Qwen2.5-VL-7B', 'lora', 1344, (2, 4, 8), (0, 28, 14)),
                   ('Qwen2.5-VL-3B', 'lora', 1344, (4,), (0, 36)),
                   ('Qwen2.5-VL-3B', 'full', 896, (4,), (0,)),
                   ('Qwen3-VL-8B', 'lora', 1344, (4,), (0,)),
                   ('Qwen2.5-VL-7B', 'full', 1344, (2,), (0,))]
GRIDS['causal2'] = [('Qwen2.5-VL-7B', 'full', 1344, (2,), (28,)),
                    ('Qwen2.5-VL-7B', 'lora', 896, (4, 8), (0, 28)),
                    ('Qwen2.5-VL-3B', 'lora', 896, (8,), (0,)),
                    ('Qwen2.5-VL-7B', 'full', 896, (4,), (28,)),
                    ('Qwen2.5-VL-3B', 'full', 896, (4,), (36,))]

def measure(a):
    import pandas as pd, torch
    from qvl.profile import profile
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    t0, rows = time.time(), []
    for model, method, side, batches, ks in GRIDS[a.grid]:
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
    from qvl.profile import profile_config, profile_trainer
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

def report(a):
    """Each measured row beside what `qvl plan` predicts for it (`estimate_setup` and `step_seconds` of the same Setup):
    DIR/predicted.csv and a table; Qwen2.5-VL rows at 1344 px are the step-time model's fit, the rest held out."""
    import pandas as pd
    from qvl.plan import STEP_TIME, step_seconds
    from qvl.estimate import Setup, estimate_setup
    from qvl.profile import row_attention_mask
    df = pd.concat([pd.read_csv(p) for p in a.rows], ignore_index=True)
    df = df[df.status == 'ok'].copy()
    pk, ps = [], []
    for r in df.itertuples():
        s = Setup(model=r.model, method=r.method, image_size=(int(r.image_w), int(r.image_h)), batch_size=int(r.batch_size),
                  gradient_checkpointing=r.k > 0, checkpoint_layers=int(r.k) or None, fast=bool(r.fast),
                  attention_mask=row_attention_mask(r._asdict()))
        pk.append(estimate_setup(s).peak_allocated_bytes); ps.append(step_seconds(s)[0])
    df['predicted_peak'], df['predicted_s'] = pk, ps
    df['peak_error'], df['time_error'] = df.predicted_peak / df.peak_allocated - 1, df.predicted_s / df.step_s - 1
    df['split'] = ['fit' if r.image_h == 1344 and r.model.startswith('Qwen2.5-VL') else 'held out' for r in df.itertuples()]   # STEP_TIME's
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    cols = ['split', 'model', 'method', 'image_h', 'batch_size', 'k', 'step_s', 'predicted_s', 'time_error', 'mfu',
            'peak_allocated', 'predicted_peak', 'peak_error', 'gpu']
    df[cols].to_csv(out / 'predicted.csv', index=False)
    show = df[cols[:-1]].assign(peak_allocated=df.peak_allocated / 1e9, predicted_peak=df.predicted_peak / 1e9)
    text = show.to_string(index=False, float_format=lambda v: f'{v:.3f}')
    for split, g in df.groupby('split'):
        text += (f"\n{split}: {len(g)} points; step time median {g.time_error.abs().median():.1%}, worst {g.time_error.abs().max():.1%} "
                 f"({(g.time_error.abs() <= 0.10).sum()} within 10%); peak median {g.peak_error.abs().median():.1%}, worst "
                 f"{g.peak_error.abs().max():.1%} ({(g.peak_error.abs() <= 0.03).sum()} within 3%)")
    text += f"\nstep-time model: {STEP_TIME}"
    (out / 'report.txt').write_text(text + '\n'); print(text)

def plan_plot(a):
    """`qvl plan`'s candidates for 7B LoRA at 1344 px, global batch 8, at 80 and 24 GB: predicted tokens/s against the
    estimated peak, the chosen point and the budget line of each; with the `qvl train` runs of RUNS (train_mfu's
    runs.json) measured beside them. DIR/plan_7b_lora_1344.png."""
    import json, matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from qvl.estimate import Setup
    from qvl.plan import plan
    s = Setup(model='Qwen2.5-VL-7B', method='lora', image_size=(1344, 1344), batch_size=8, fast=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    runs = {r['run']: r for r in json.loads(Path(a.runs).read_text())} if a.runs else {}
    for ax, gb, run in zip(axes, (80, 24), ('b4x2-k0-workers4', 'b4x2-k28-workers4')):
        p = plan(s, gb * 1e9)
        for fits, g in p.groupby('fits'):
            ax.scatter(g.peak_gb, g.tokens_per_s, s=12, c='tab:blue' if fits else 'lightgray', label='fits' if fits else 'does not fit')
        c = p[p.chosen].iloc[0]
        ax.scatter([c.peak_gb], [c.tokens_per_s], s=90, marker='*', c='tab:red', zorder=3,
                   label=f'chosen: {c.micro_batch} x {c.grad_accum}, k={c.checkpoint_layers}')
        if run in runs:
            m = runs[run]
            ax.scatter([m['max_allocated_gb']], [m['tokens_per_s']], s=70, marker='D', c='tab:green', zorder=3,
                       label=f"qvl train {run.split('-workers')[0]}: MFU {m['mfu']:.1%}")
        ax.axvline(gb, ls='--', c='k', lw=1, label=f'budget ({gb} GB)')
        ax.set(xlabel='peak allocated, GB (estimated; diamonds measured)', title=f'{gb} GB')
        ax.legend(fontsize=8)
    axes[0].set_ylabel('tokens/s (predicted; diamonds measured)')
    fig.suptitle('Qwen2.5-VL-7B LoRA, 1344 px, global batch 8: qvl plan candidates (one H200)')
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(); fig.savefig(out / 'plan_7b_lora_1344.png', dpi=110)
    print(out / 'plan_7b_lora_1344.png')

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    m = sub.add_parser('measure'); m.add_argument('--out', required=True)
    m.add_argument('--budget-s', type=float, default=420, help='no new group starts after this many seconds')
    m.add_argument('--warmup', type=int, default=2)
    m.add_argument('--grid', choices=tuple(GRIDS), default='fit')
    r = sub.add_parser('report', help="the planner's prediction (estimate and step-time model) beside measured rows")
    r.add_argument('rows', nargs='+'); r.add_argument('--out', required=True)
    t = sub.add_parser('trace'); t.add_argument('--out', required=True)
    pp = sub.add_parser('plan-plot', help="qvl plan's candidates at 80 and 24 GB, with measured qvl train runs")
    pp.add_argument('--out', required=True); pp.add_argument('--runs', help="train_mfu.py's runs.json")
    a = p.parse_args()
    {'measure': measure, 'trace': trace, 'report': report, 'plan-plot': plan_plot}[a.cmd](a)

if __name__ == '__main__': main()
