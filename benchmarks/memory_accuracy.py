"""GPU memory of fine-tuning steps: measured on the GPU, estimated by qvl.estimate, side by side.

Three commands:

    # on a GPU machine: measure one model and method over the grid (rows are appended as they finish)
    python benchmarks/memory_accuracy.py measure --model Qwen2.5-VL-7B --method lora --out m.csv
    # anywhere: fit the coefficients on the fit split, report errors on the held-out split
    python benchmarks/memory_accuracy.py fit m1.csv m2.csv ... [--write-coefficients qvl_coefficients.json]
    # on a GPU machine: `qvl train`'s own step (the fast step, the trainer's defaults) of models no coefficient was
    # fitted on, each point beside `qvl estimate` of the same run config
    python benchmarks/memory_accuracy.py families --out f.csv [--models Qwen3-VL-2B,...]

The setting (the reference of the memory issue): random real-size weights in pure bf16, torch AdamW,
LoRA r=8 alpha=16 on all linear LLM layers or full fine-tuning of the LLM with the vision tower and
merger frozen, SDPA attention, one image per sample, 64 prompt and 128 answer tokens with the loss on
the answer only, PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True. Gradient checkpointing on and off.

Split: the fit uses square sides 448, 1344 and 2016 at batch sizes 1 and 4; every other point
(side 896, batch 2 and 8, and odd settings 672x672 b6, 1120x1120 b3, 1792x1792 b1) is held out.
"""
import argparse, json, os
from pathlib import Path

FIT_SIDES, FIT_BATCHES = (448, 1344, 2016), (1, 4)
GRID = [(s, b) for s in (448, 896, 1344, 2016) for b in (1, 2, 4, 8) if not (s == 2016 and b > 2)] + \
       [(672, 6), (1120, 3), (1792, 1)]


def is_fit(side, batch): return side in FIT_SIDES and batch in FIT_BATCHES


def measure(a):
    "Measure the grid through `qvl.profile.profile` (the trainer's plain step, merger frozen), appending rows to --out."
    from qvl.profile import profile
    os.environ.setdefault('PYTORCH_CUDA_ALLOC_CONF', 'expandable_segments:True')
    out = Path(a.out)
    for gc_on in (True, False):
        df = profile(a.model, a.method, settings=[(side, b, gc_on) for side, b in GRID], fast=False, freeze_projector=True)
        df['split'] = ['fit' if is_fit(int(r.image_h), int(r.batch_size)) else 'holdout' for r in df.itertuples()]
        df.to_csv(out, mode='a', header=not out.exists(), index=False)
        print(df[['image_w', 'image_h', 'batch_size', 'gradient_checkpointing', 'status', 'peak_allocated', 'peak_reserved']]
              .to_string(index=False), flush=True)


def fit(a):
    import pandas as pd
    from qvl.profile import accuracy, fit_coefficients
    df = pd.concat([pd.read_csv(p) for p in a.csv], ignore_index=True)
    df['split'] = ['fit' if is_fit(int(r.image_h), int(r.batch_size)) else 'holdout' for r in df.itertuples()]
    c = fit_coefficients(df[df.split == 'fit'])
    c['fitted_on'] = f"{df.gpu.iloc[0]}, {len(df[(df.split == 'fit') & (df.status == 'ok')])} measured steps"
    acc = accuracy(df, c)
    acc['split'] = ['fit' if is_fit(s, b) else 'holdout' for s, b in zip(acc.side, acc.batch_size)]
    pd.set_option('display.width', 200)
    for split in ('fit', 'holdout'):
        part = acc[acc.split == split]
        err = part.error_allocated.abs(); errr = part.error_reserved.abs()
        print(f"{split}: {len(part)} points; max_memory_allocated error median {err.median():.1%}, worst {err.max():.1%}; "
              f"max_memory_reserved error median {errr.median():.1%}, worst {errr.max():.1%}")
    print(acc.round(3).to_string(index=False))
    ooms = df[df.status == 'oom']
    print(f"out of memory (recorded, not fitted): {len(ooms)} points")
    print(json.dumps(c, indent=1))
    if a.write_coefficients: Path(a.write_coefficients).write_text(json.dumps(c, indent=1))
    if a.table: acc.to_csv(a.table, index=False)


FAMILY_MODELS = ('Qwen2-VL-2B', 'Qwen3-VL-2B', 'Qwen3-VL-4B', 'Qwen3-VL-8B')
FAMILY_SETTINGS = ((448, 2, True), (1344, 1, True), (896, 2, False))


def families(a):
    """Measure models of other families (no coefficient fitted on them) through `qvl.profile.profile` with `qvl train`'s
    defaults (fast step, merger trained), LoRA for every model and full fine-tuning for the 2B ones, and put
    `estimate_run` of the same run config beside each point. Rows are appended to --out as each model finishes."""
    from qvl.profile import estimate_run, profile, profile_config
    os.environ.setdefault('PYTORCH_CUDA_ALLOC_CONF', 'expandable_segments:True')
    out = Path(a.out)
    for model in a.models.split(','):
        for method in ('lora', 'full') if model.endswith('2B') else ('lora',):
            df = profile(model, method, settings=FAMILY_SETTINGS, fast=True, progress=False)
            est = [estimate_run(profile_config(model, method, bool(r.gradient_checkpointing), True, batch_size=int(r.batch_size)),
                                (int(r.image_w), int(r.image_h))) for r in df.itertuples()]
            df['estimated_allocated'] = [e.peak_allocated_bytes for e in est]
            df['estimated_reserved'] = [e.peak_reserved_bytes for e in est]
            ok = df.status == 'ok'
            df['error_allocated'] = (df.estimated_allocated / df.peak_allocated - 1).where(ok)
            df['error_reserved'] = (df.estimated_reserved / df.peak_reserved - 1).where(ok)
            df.to_csv(out, mode='a', header=not out.exists(), index=False)
            print(df[['model', 'method', 'image_w', 'batch_size', 'gradient_checkpointing', 'status', 'peak_allocated',
                      'estimated_allocated', 'error_allocated', 'error_reserved']].to_string(index=False), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)
    m = sub.add_parser('measure'); m.add_argument('--model', required=True); m.add_argument('--method', required=True)
    m.add_argument('--out', required=True)
    f = sub.add_parser('fit'); f.add_argument('csv', nargs='+'); f.add_argument('--write-coefficients')
    f.add_argument('--table')
    h = sub.add_parser('families'); h.add_argument('--out', required=True); h.add_argument('--models', default=','.join(FAMILY_MODELS))
    a = ap.parse_args()
    dict(measure=measure, fit=fit, families=families)[a.cmd](a)


if __name__ == '__main__':
    main()
