"""`qvl train`'s step, plain against fast, side by side in one run on CUDA GPUs: `Trainer.train_step` itself.

    python benchmarks/fast_step.py --out DIR [--work /tmp/fast_step]      # the default grid, one model per GPU
    python benchmarks/fast_step.py --out DIR --models Qwen2.5-VL-7B --methods lora --sides 1344 --batches 2
    python benchmarks/fast_step.py --out DIR --report                       # only the table, from DIR's rows

For each model: a checkpoint of the real architecture with random bf16 weights written to disk (`qvl tiny-model
--like`), and a dataset per image side on disk (JPEGs of SIDE x SIDE, a prompt of about 64 tokens and an answer of
about 128 labelled tokens, in the sharegpt format). Then, per method (LoRA r=8 on every LLM linear layer, or full
fine-tuning of the LLM and merger with the vision tower frozen) and per step (`fast: false`, transformers' plain
forward, and `fast: true`, the default), one `qvl.train.Trainer` built from a run config that differs only in
`fast`, and for each (side, batch) `Trainer.measure`: warm-up steps, then timed `train_step` calls (reading and
processing the images, collation, forward, backward, clipping, the optimizer step, all of it). Pure bf16, gradient
checkpointing, SDPA, torch AdamW (fused for the fast step, as the trainer takes it). An OOM is a result.

Writes DIR/results.csv, DIR/memory.csv, DIR/env.json and DIR/results.md (the table printed last).
"""
import argparse, json, os, subprocess, sys
from pathlib import Path

WORDS = ('the image shows a small mark near the corner of a light textured canvas with fine grain and soft '
         'shading from left to right describe its colour shape size and position in detail').split()


def text(rng, tokenizer, n):
    "Words from WORDS until `n` tokens."
    words = []
    while len(tokenizer(' '.join(words))['input_ids']) < n: words.append(rng.choice(WORDS))
    return ' '.join(words)


def prepare(work: Path, model: str, sides, n: int = 8) -> dict:
    "The random checkpoint and one dataset per side (made once under `work`)."
    import random
    from transformers import AutoTokenizer
    from qvl.families import build_random_checkpoint
    from qvl.sample import write_sample_data
    ck = work / model
    if not (ck / 'config.json').exists(): build_random_checkpoint(model, ck)
    tok = AutoTokenizer.from_pretrained(ck)
    rng, data = random.Random(0), {}
    for side in sides:
        d = work / f'data-{side}'
        if not (d / 'train.json').exists():
            write_sample_data(d, n=n, seed=side, min_side=side, max_side=side, mark=24, task='colour', progress=False)
            recs = json.loads((d / 'train.json').read_text())
            for r in recs:
                r['messages'][0]['content'] = '<image>' + text(rng, tok, 64)
                r['messages'][1]['content'] = text(rng, tok, 128)
            (d / 'train.json').write_text(json.dumps(recs))
        data[side] = d / 'train.json'
    return dict(checkpoint=ck, data=data)


def worker(a):
    "One model on one GPU: every method, step, side and batch."
    import torch
    from qvl.train import Trainer
    from qvl.profile import measure_steps
    from qvl.config import config_from_dict
    from qvl.data import VisionTextDataset, cached_examples
    from qvl.formats import load_dataset
    model = a.models[0]
    out, work = Path(a.out), Path(a.work)
    p = prepare(work, model, a.sides)
    rows = []
    for method in a.methods:
        batches = a.batches if method != 'full' else a.full_batches
        settings = [(s, b) for s in a.sides for b in batches]
        for variant in ('plain', 'fast'):
            cfg = config_from_dict(dict(model=str(p['checkpoint']), data=str(p['data'][a.sides[0]]), out_dir=str(work / 'run'),
                                        method=method, fast=variant == 'fast', batch_size=batches[0], steps=10 ** 6, cutoff_len=8192,
                                        learning_rate=1e-5, cache_dir=str(work / 'cache'), seed=0))
            tr = Trainer(cfg, progress=False, plot=False)
            print(f"[{model}] {method} {variant}: {tr.fast or 'plain step'}", flush=True)
            sets = {}
            for side, b in settings:
                if side not in sets:
                    ex, _ = cached_examples(load_dataset(p['data'][side]), cfg.model, cfg.budget(), cfg.cutoff_len,
                                            cache_dir=cfg.cache_dir, progress=False)
                    sets[side] = VisionTextDataset(ex, tr.processor)
                tr.use_data(sets[side], b)
                steps = a.plain_steps if variant == 'plain' else a.steps
                r = dict(model=model, method=method, variant=variant, side=side, batch=b, gpu=torch.cuda.get_device_name(),
                         tokens_per_sample=sets[side].examples.tokens / len(sets[side].examples),
                         **measure_steps(tr, steps, a.warmup))
                print(json.dumps(r), flush=True)
                rows.append(r)
                (out / f'rows-{model}.json').write_text(json.dumps(rows))     # kept if a later setting dies
            del tr
            import gc; gc.collect(); torch.cuda.empty_cache()


def fmt(v, f):
    return '' if v is None or v != v else format(v, f)


def report(a):
    import pandas as pd
    out = Path(a.out)
    rows = [r for f in sorted(out.glob('rows-*.json')) for r in json.loads(f.read_text())]
    if not rows: sys.exit(f"{out}: no measured rows")
    df = pd.DataFrame(rows)
    for k in ('peak_allocated', 'peak_reserved', 'step_s', 'mfu', 'tokens_per_s'):
        if k not in df: df[k] = float('nan')     # a CPU dry run has no GPU memory peaks or MFU
    df.to_csv(out / 'results.csv', index=False)
    fast = df[df.variant == 'fast']     # the estimator's fast-step rows (qvl.profile.fit_coefficients' columns)
    pd.DataFrame(dict(model=fast.model, method=fast.method, image_h=fast.side, image_w=fast.side, batch_size=fast.batch,
                      gradient_checkpointing=True, fast=True, status=fast.status, gpu=fast.gpu,
                      peak_allocated=fast.peak_allocated, peak_reserved=fast.peak_reserved)).to_csv(out / 'memory.csv', index=False)
    lines = [f"GPU: {df.gpu.iloc[0]}; torch, transformers, peft: see env.json", '',
             '| model | method | side | batch | step | s/step | steps/s | tokens/s | MFU | peak alloc GB | peak reserved GB | speed-up | memory saved |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for (model, method, side, b), g in df.groupby(['model', 'method', 'side', 'batch'], sort=False):
        plain = g[g.variant == 'plain']
        p = plain.iloc[0] if len(plain) else None
        for _, r in g.iterrows():
            ok = r.status == 'ok'
            base_ok = p is not None and p.status == 'ok' and r.variant != 'plain'
            sp = p.step_s / r.step_s if base_ok and ok else None
            ms = 1 - r.peak_allocated / p.peak_allocated if base_ok and ok else None
            mfu = r.get('mfu')
            lines.append(f"| {model} | {method} | {side} | {b} | {r.variant} | {fmt(r.step_s, '.3f') if ok else 'OOM'} | "
                         f"{fmt(1 / r.step_s, '.2f') if ok else ''} | {fmt(r.get('tokens_per_s') if ok else None, ',.0f')} | "
                         f"{fmt(mfu * 100 if ok and mfu == mfu and mfu is not None else None, '.1f')}{'%' if ok else ''} | "
                         f"{r.peak_allocated / 1e9:.2f} | {r.peak_reserved / 1e9:.2f} | "
                         f"{fmt(sp, '.2f')}{'x' if sp else ''} | {fmt(ms * 100 if ms is not None else None, '.0f')}{'%' if ms is not None else ''} |")
    ok = df[(df.status == 'ok')]
    if len(ok):
        lines += ['', f"Tokens per sample: {ok.tokens_per_sample.min():.0f}-{ok.tokens_per_sample.max():.0f} "
                      f"(image tokens + about 64 prompt and 128 answer tokens + the chat template)."]
    text = '\n'.join(lines)
    (out / 'results.md').write_text(text + '\n')
    print(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', required=True, help='results folder')
    p.add_argument('--work', default='/tmp/qvl-fast-step', help='checkpoints, data and caches (large: 8 GB for 3B, 17 GB for 7B)')
    p.add_argument('--models', nargs='+', default=['Qwen2.5-VL-3B', 'Qwen2.5-VL-7B'])
    p.add_argument('--methods', nargs='+', default=['lora', 'full'], choices=['lora', 'full'])
    p.add_argument('--sides', nargs='+', type=int, default=[1344, 2016], help='square image sides')
    p.add_argument('--batches', nargs='+', type=int, default=[1, 2, 4], help='micro-batch sizes (LoRA)')
    p.add_argument('--full-batches', nargs='+', type=int, default=[1, 2], help='micro-batch sizes (full fine-tuning)')
    p.add_argument('--steps', type=int, default=2, help='timed steps per setting (median)')
    p.add_argument('--plain-steps', type=int, default=1, help='timed steps of the plain step')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--report', action='store_true', help='only write the table from the rows in --out')
    a = p.parse_args(argv)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    if a.report: return report(a)
    if a.worker: return worker(a)
    import torch
    if not torch.cuda.is_available(): sys.exit("fast_step.py measures CUDA GPUs; none is visible")
    import transformers, peft
    (out / 'env.json').write_text(json.dumps(dict(gpu=torch.cuda.get_device_name(), gpus=torch.cuda.device_count(),
        torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__, argv=sys.argv[1:]), indent=1))
    n = torch.cuda.device_count()
    args = list(argv if argv is not None else sys.argv[1:])
    procs = []
    for i, model in enumerate(a.models):     # one process per model, spread over the GPUs
        rest = [x for x in args if x not in a.models and x != '--models']
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(i % n))      # the allocator as `qvl train` gets it
        procs.append(subprocess.Popen([sys.executable, __file__, '--worker'] + rest + ['--models', model], env=env))
        if (i + 1) % n == 0 or i == len(a.models) - 1:
            for pr in procs:
                if pr.wait() != 0: print(f"a worker failed (exit {pr.returncode})", file=sys.stderr)
            procs = []
    report(a)


if __name__ == '__main__':
    main()
