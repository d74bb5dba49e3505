"""qvl train on real-size Qwen2.5-VL-3B and 7B (random bf16 weights) on GPUs: LoRA and full steps, DDP on 2 GPUs
against 1 GPU at the same global batch, and each run's measured memory against the estimator.

    python benchmarks/train_gpu.py prepare --out DIR     # checkpoints (on the GPU), data, configs
    # then the runs (see benchmarks/train_gpu.md for the exact commands), then:
    python benchmarks/train_gpu.py report DIR            # the table

Setting: pure bf16, torch AdamW, gradient checkpointing, SDPA, 896x896 images (1024 visual tokens),
batch 2 per step, LoRA r=8 alpha=16 on every linear layer of the LLM, or full fine-tuning of the LLM with the
vision tower and merger frozen.
"""
import argparse, json, sys
from pathlib import Path

import yaml

RUNS = {'3b_lora': ('Qwen2.5-VL-3B', 'lora', 2), '3b_full': ('Qwen2.5-VL-3B', 'full', 2),
        '7b_lora': ('Qwen2.5-VL-7B', 'lora', 2), '7b_full': ('Qwen2.5-VL-7B', 'full', 2),
        'ddp_single': ('Qwen2.5-VL-3B', 'lora', 2), 'ddp_two': ('Qwen2.5-VL-3B', 'lora', 1),
        'fsdp_single': ('Qwen2.5-VL-3B', 'full', 2), 'fsdp_two': ('Qwen2.5-VL-3B', 'full', 1)}


def prepare(a):
    from qvl.core import build_random_checkpoint
    from qvl.sample import write_sample_data
    out = Path(a.out)
    data = write_sample_data(out / 'data', n=40, seed=0, min_side=896, max_side=896, mark=24, task='colour', progress=False)
    for name in ('Qwen2.5-VL-3B', 'Qwen2.5-VL-7B'):
        build_random_checkpoint(name, out / name)
    (out / 'configs').mkdir(exist_ok=True)
    for run, (model, method, bs) in RUNS.items():
        cfg = dict(model=str(out / model), data=str(data / 'train.json'), out_dir=str(out / run), method=method,
                   learning_rate=1e-4 if method == 'lora' else 1e-5, schedule='constant', steps=5, batch_size=bs,
                   cutoff_len=2048, gradient_checkpointing=True, log_every=1, save_every=0, freeze_vision=True,
                   freeze_projector=True, cache_dir=str(out / 'cache' / run), seed=0,
                   sharding='fsdp' if run.startswith('fsdp') else 'ddp')
        (out / 'configs' / f'{run}.yaml').write_text(yaml.safe_dump(cfg))
    print(f"prepared {out}")


def report(a):
    from qvl.memory import estimate
    from qvl.data import build_examples
    from qvl.tokens import load_dataset
    out = Path(a.out)
    ex = build_examples(load_dataset(out / 'data' / 'train.json'), out / 'Qwen2.5-VL-3B', progress=False)
    lengths = [ex.offsets[i + 1] - ex.offsets[i] for i in range(len(ex))]
    img = 1024
    text = sum(lengths) / len(lengths) - img - 2        # the estimator adds 20 template tokens to prompt+answer
    rows = []
    for run, (model, method, bs) in RUNS.items():
        log = out / run / 'log.jsonl'
        if not log.exists(): rows.append(f"| {run} | {model} | {method} | did not run | | | |"); continue
        recs = [json.loads(l) for l in log.read_text().splitlines()]
        gpus = 2 if run.endswith('_two') else 1
        e = estimate(model, method, (896, 896), bs, prompt_tokens=max(0, round(text - 20 - 1)), answer_tokens=1,
                     gpus=gpus, sharding=('fsdp' if run.startswith('fsdp') else 'ddp') if gpus > 1 else 'none')
        meas = max(r.get('max_allocated_gb', 0) for r in recs[1:]) * 2 ** 30 / 1e9   # steady state: step 2 onwards
        losses = ', '.join(f"{r['loss']:.4f}" for r in recs)
        rows.append(f"| {run} | {model} | {method} | batch {bs} x {gpus} GPU | "
                    f"{losses} | {sum(r['seconds'] for r in recs[1:]) / max(1, len(recs) - 1):.2f} s | "
                    f"{meas:.2f} GB | {e.peak_allocated_bytes / 1e9:.2f} GB ({e.peak_allocated_bytes / 1e9 / meas - 1:+.1%}) |")
    print("| run | model | method | batch | loss per step | s/step | peak allocated, measured | estimated |")
    print("|---|---|---|---|---|---|---|---|")
    print('\n'.join(rows))
    for kind in ('ddp', 'fsdp'):
        s, t = out / f'{kind}_single' / 'log.jsonl', out / f'{kind}_two' / 'log.jsonl'
        if s.exists() and t.exists():
            ls = [json.loads(l)['loss'] for l in s.read_text().splitlines()]
            lt = [json.loads(l)['loss'] for l in t.read_text().splitlines()]
            worst = max(abs(x - y) / abs(x) for x, y in zip(ls, lt))
            print(f"\n{kind.upper()} on 2 GPUs (batch 1 each) against 1 GPU (batch 2): largest relative loss difference "
                  f"over {len(ls)} steps {worst:.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('cmd', choices=['prepare', 'report']); ap.add_argument('--out', required=True)
    a = ap.parse_args()
    prepare(a) if a.cmd == 'prepare' else report(a)


if __name__ == '__main__':
    main()
