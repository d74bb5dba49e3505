"""The plain training step against qvl's fast step, side by side in one run on CUDA GPUs.

    python benchmarks/fast_step.py --out DIR                      # the default grid (below), one model per GPU
    python benchmarks/fast_step.py --out DIR --models Qwen2.5-VL-7B --sides 1344 --batches 2 --variants plain fast

The plain step is what a user would otherwise write: transformers' Qwen2.5-VL (SDPA attention), peft LoRA
(r=8, alpha=16, every linear layer of the LLM), pure bf16, gradient checkpointing (non-reentrant), torch
AdamW, `model(**batch).loss`. The fast step is the same model and adapters with `qvl.fast.enable` (and
`--variants fast-nogc`: without checkpointing). Weights are random at real size (memory and time depend on
shapes only); each sample is one square image, a 64-token prompt and a 128-token answer, as
`qvl.memory.synthetic_batch` builds it. Per setting: warm-up steps, then the median of the timed steps,
tokens per second, model-FLOPs utilisation (`qvl.fast.step_flops` over the GPU's dense bf16 peak) and the
peaks of `max_memory_allocated` / `max_memory_reserved` over the timed steps. An OOM is a result.

The loss check trains the plain and the fast step for `--loss-steps` steps from the same weights, the same
adapter initialisation and the same batches, and compares the losses step by step.
Writes DIR/results.csv, DIR/losses.csv, DIR/env.json and DIR/results.md (the table printed last).
"""
import argparse, json, os, statistics, subprocess, sys, time
from pathlib import Path

VARIANTS = ('plain', 'fast', 'fast-nogc', 'fast-nofuse', 'fast-nocompile')


def lora(base, seed):
    import torch
    from peft import LoraConfig, get_peft_model
    from qvl.train import llm_linear_names
    torch.manual_seed(seed)
    return get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=llm_linear_names(base)),
                          autocast_adapter_dtype=False)


def setup_variant(base, variant, seed=0):
    "LoRA adapters (same seed every time) and the variant's step; returns (peft model, FastPath or None)."
    from qvl import fast
    m = lora(base, seed)
    m.config.use_cache = False
    if variant != 'fast-nogc': m.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(use_reentrant=False))
    else: m.base_model.model.gradient_checkpointing_disable()
    fp = None
    if variant != 'plain':
        drop = {'fast-nofuse': ('fused_kernels', 'compiled_layers'), 'fast-nocompile': ('compiled_layers',)}.get(variant, ())
        routes = tuple(r for r in fast.ROUTES if r not in drop)
        fp = fast.enable(m, routes=routes)
    m.train()
    return m, fp


def teardown(m):
    import gc, torch
    from qvl import fast
    fast.disable(m)
    base = m.unload()
    gc.collect(); torch.cuda.empty_cache()
    return base


def optimizer(m, variant, lr):
    "torch AdamW as a user would make it for the plain step; the fused (one-kernel) AdamW qvl's trainer takes for the fast step."
    import torch
    return torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr, **({} if variant == 'plain' else dict(fused=True)))


def measure(m, batch, steps, warmup, variant):
    import torch
    opt = optimizer(m, variant, 1e-5)
    times = []
    try:
        for i in range(warmup + steps):
            if i == warmup:
                torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            loss = m(**batch, use_cache=False).loss
            loss.backward()
            opt.step(); opt.zero_grad(set_to_none=True)
            del loss
            torch.cuda.synchronize()
            if i >= warmup: times.append(time.perf_counter() - t0)
        return dict(status='ok', step_s=statistics.median(times), peak_allocated=torch.cuda.max_memory_allocated(),
                    peak_reserved=torch.cuda.max_memory_reserved())
    except torch.OutOfMemoryError:
        return dict(status='oom', step_s=None, peak_allocated=torch.cuda.max_memory_allocated(),
                    peak_reserved=torch.cuda.max_memory_reserved())
    finally:
        opt.zero_grad(set_to_none=True); del opt
        torch.cuda.empty_cache()


def loss_curve(base, variant, batches, steps, lr):
    import torch
    m, _ = setup_variant(base, variant)
    opt = optimizer(m, variant, lr)
    out = []
    for i in range(steps):
        loss = m(**batches[i % len(batches)], use_cache=False).loss
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        out.append(loss.item())
    del opt
    return out, teardown(m)


def worker(a):
    "One model on one GPU: every variant at every setting, then the loss check."
    import torch
    from qvl.memory import build_model, synthetic_batch
    from qvl.fast import step_flops, peak_flops
    out = Path(a.out)
    torch.manual_seed(0)
    base = build_model(a.models[0], 'cuda')
    name, peak = torch.cuda.get_device_name(), peak_flops(torch.cuda.get_device_name())
    rows = []
    settings = [] if a.loss_only else [(s, b) for s in a.sides for b in a.batches]
    for variant in ([] if a.loss_only else a.variants):
        m, fp = setup_variant(base, variant)
        if fp: print(f"[{a.models[0]}] {variant}: {fp}", flush=True)
        for side, b in settings:
            batch = synthetic_batch(base.config, (side, side), b, device='cuda')
            r = dict(model=a.models[0], variant=variant, side=side, batch=b, tokens=int(batch['input_ids'].numel()), gpu=name)
            r.update(measure(m, batch, a.plain_steps or a.steps if variant == 'plain' else a.steps, a.warmup, variant))
            if r['status'] == 'ok':
                fl = step_flops(a.models[0], (side, side), b)['total']
                r.update(tokens_per_s=r['tokens'] / r['step_s'], tflops=fl / r['step_s'] / 1e12,
                         mfu=fl / r['step_s'] / peak if peak else None)
            print(json.dumps(r), flush=True)
            rows.append(r)
            (out / f'rows-{a.models[0]}.json').write_text(json.dumps(dict(rows=rows, losses=[])))   # kept if a later step dies
            del batch
            if a.profile and variant == a.profile and (side, b) == settings[0]:
                from torch.profiler import profile, ProfilerActivity
                batch = synthetic_batch(base.config, (side, side), b, device='cuda')
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    measure(m, batch, 1, 0, variant)
                (out / f'profile-{a.models[0]}-{variant}.txt').write_text(
                    prof.key_averages().table(sort_by='cuda_time_total', row_limit=40, max_name_column_width=60))
                del batch
        base = teardown(m)
    losses = []
    if a.loss_steps:
        side, b = a.loss_setting
        batches = [synthetic_batch(base.config, (side, side), b, device='cuda', seed=s) for s in range(4)]
        curves = {}
        for variant in ('plain', 'fast'):
            curves[variant], base = loss_curve(base, variant, batches, a.loss_steps, a.loss_lr)
        if a.loss_fp32:   # bf16's own error: the plain step in fp32 from the same (exactly widened) weights
            base = base.float()
            curves['plain_fp32'], base = loss_curve(base, 'plain', batches, a.loss_steps, a.loss_lr)
            base = base.to(torch.bfloat16)
        for i, (p, f) in enumerate(zip(curves['plain'], curves['fast'])):
            row = dict(model=a.models[0], side=side, batch=b, step=i + 1, plain=p, fast=f, rel_diff=abs(f - p) / abs(p))
            if a.loss_fp32:
                ref = curves['plain_fp32'][i]
                row.update(plain_fp32=ref, bf16_rel_err=abs(p - ref) / abs(ref), fast_rel_err=abs(f - ref) / abs(ref))
            losses.append(row)
    if a.loss_only: rows = json.loads((out / f'rows-{a.models[0]}.json').read_text())['rows'] if (out / f'rows-{a.models[0]}.json').exists() else []
    (out / f'rows-{a.models[0]}.json').write_text(json.dumps(dict(rows=rows, losses=losses)))


def fmt(v, f):
    return '' if v is None or v != v else format(v, f)


def report(a):
    import pandas as pd
    out = Path(a.out)
    rows, losses = [], []
    for f in sorted(out.glob('rows-*.json')):
        d = json.loads(f.read_text()); rows += d['rows']; losses += d['losses']
    if not rows: sys.exit(f"{out}: no measured rows to report (losses are in losses.csv)") if not losses else None
    df = pd.DataFrame(rows)
    df.to_csv(out / 'results.csv', index=False)
    mem = df[df.variant.isin(['fast', 'fast-nogc'])]   # for benchmarks/memory_accuracy.py: the estimator's fast-step coefficients
    pd.DataFrame(dict(model=mem.model, method='lora', image_h=mem.side, image_w=mem.side, batch_size=mem.batch,
                      gradient_checkpointing=mem.variant == 'fast', fast=True, status=mem.status, gpu=mem.gpu,
                      peak_allocated=mem.peak_allocated, peak_reserved=mem.peak_reserved)).to_csv(out / 'memory.csv', index=False)
    if losses: pd.DataFrame(losses).to_csv(out / 'losses.csv', index=False)
    lines = [f"GPU: {df.gpu.iloc[0]}; torch, transformers, peft: see env.json", '',
             '| model | side | batch | step | s/step | steps/s | tokens/s | MFU | peak alloc GB | peak reserved GB | speed-up | memory saved |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for (model, side, b), g in df.groupby(['model', 'side', 'batch'], sort=False):
        plain = g[g.variant == 'plain']
        p = plain.iloc[0] if len(plain) else None
        for _, r in g.iterrows():
            ok = r.status == 'ok'
            sp = (p.step_s / r.step_s) if (p is not None and ok and p.status == 'ok' and r.variant != 'plain') else None
            ms = (1 - r.peak_allocated / p.peak_allocated) if (p is not None and r.variant != 'plain' and p.status == 'ok') else None
            lines.append(f"| {model} | {side} | {b} | {r.variant} | {fmt(r.step_s, '.3f') if ok else 'OOM'} | "
                         f"{fmt(1 / r.step_s, '.2f') if ok else ''} | {fmt(r.get('tokens_per_s'), ',.0f')} | "
                         f"{fmt(r.get('mfu', float('nan')) * 100 if ok and r.get('mfu') == r.get('mfu') else None, '.1f')}{'%' if ok else ''} | "
                         f"{r.peak_allocated / 1e9:.2f} | {r.peak_reserved / 1e9:.2f} | "
                         f"{fmt(sp, '.2f')}{'x' if sp else ''} | {fmt(ms * 100 if ms is not None else None, '.0f')}{'%' if ms is not None else ''} |")
    if losses:
        L = pd.DataFrame(losses)
        for (model, side, b), g in L.groupby(['model', 'side', 'batch']):
            lines += ['', f"Loss check, {model} at {side}x{side}, batch {b}, {len(g)} steps (same weights, adapters, batches): "
                      f"first {g.plain.iloc[0]:.4f} / {g.fast.iloc[0]:.4f}, last {g.plain.iloc[-1]:.4f} / {g.fast.iloc[-1]:.4f} "
                      f"(plain / fast), largest relative difference {g.rel_diff.max():.2e} at step {int(g.step[g.rel_diff.idxmax()])}"]
            if 'plain_fp32' in g and g.plain_fp32.notna().all():
                lines.append(f"Against the plain step in fp32 (bf16's own error): plain bf16 differs by up to {g.bf16_rel_err.max():.2e}, "
                             f"fast bf16 by up to {g.fast_rel_err.max():.2e}")
    text = '\n'.join(lines)
    (out / 'results.md').write_text(text + '\n')
    print(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', required=True, help='results folder')
    p.add_argument('--models', nargs='+', default=['Qwen2.5-VL-3B', 'Qwen2.5-VL-7B'])
    p.add_argument('--sides', nargs='+', type=int, default=[1344, 2016], help='square image sides')
    p.add_argument('--batches', nargs='+', type=int, default=[1, 2, 4])
    p.add_argument('--variants', nargs='+', default=['plain', 'fast'], choices=VARIANTS)
    p.add_argument('--steps', type=int, default=3, help='timed steps per setting (median)')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--plain-steps', type=int, default=None, help='timed steps of the plain step (default: --steps)')
    p.add_argument('--loss-steps', type=int, default=20, help='steps of the loss check (0: none)')
    p.add_argument('--loss-setting', nargs=2, type=int, default=[1344, 2], metavar=('SIDE', 'BATCH'))
    p.add_argument('--loss-lr', type=float, default=1e-3)
    p.add_argument('--loss-fp32', nargs='*', default=[], metavar='MODEL',
                   help='models whose loss check also runs the plain step in fp32 (bf16 error reference)')
    p.add_argument('--loss-only', action='store_true', help='only the loss check (keeps rows measured earlier in --out)')
    p.add_argument('--profile', default=None, choices=VARIANTS, help='write a torch.profiler table of this variant (first setting)')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--report', action='store_true', help='only write the table from the rows in --out')
    a = p.parse_args(argv)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    if a.report: return report(a)
    if a.worker:
        a.loss_fp32 = a.models[0] in a.loss_fp32
        return worker(a)
    import torch
    if not torch.cuda.is_available(): sys.exit("fast_step.py measures CUDA GPUs; none is visible")
    import transformers, peft
    (out / 'env.json').write_text(json.dumps(dict(gpu=torch.cuda.get_device_name(), gpus=torch.cuda.device_count(),
        torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__, argv=sys.argv[1:]), indent=1))
    n = torch.cuda.device_count()
    args = [a for a in (argv if argv is not None else sys.argv[1:])]
    procs = []
    for i, model in enumerate(a.models):     # one process per model, spread over the GPUs
        rest = [x for x in args if x not in a.models and x not in ('--models', '--loss-fp32')]
        cmd = [sys.executable, __file__, '--worker'] + rest + ['--models', model] + (['--loss-fp32', model] if model in a.loss_fp32 else [])
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(i % n), PYTORCH_CUDA_ALLOC_CONF='expandable_segments:True')
        procs.append(subprocess.Popen(cmd, env=env))
        if (i + 1) % n == 0 or i == len(a.models) - 1:
            for pr in procs:
                if pr.wait() != 0: sys.exit(f"a worker failed (exit {pr.returncode})")
            procs = []
    report(a)


if __name__ == '__main__':
    main()
