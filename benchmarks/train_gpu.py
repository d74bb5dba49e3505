"""The GPU tests of `qvl train` (tests/test_train_gpu.py) as a table: each run's losses, warm-up, steady-state speed
and memory (GB, 10^9 bytes; records before 2026-11-29 were written in GiB and are converted), with `qvl estimate` of
the same config and data beside the peak where the record has it, from the records the tests write when
QVL_GPU_REPORT names a file.

    QVL_GPU_REPORT=runs.jsonl python -m pytest -m gpu tests/test_train_gpu.py     # on a machine with 2 GPUs
    python benchmarks/train_gpu.py runs.jsonl [more.jsonl ...]     # several records: one table
"""
import json, sys
from pathlib import Path


def table(records: list[dict]) -> str:
    lines = ['| session | run | method | GPUs x batch | steps | loss first -> last | warm-up s | steady s/step | tokens/s | MFU | '
             'peak alloc GB | `qvl estimate` GB | peak reserved GB | check |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in records:
        s, c, m = r['summary'], r['config'], r.get('memory')
        check = ', '.join(f"{k.replace('largest_rel_diff_', 'max rel. loss diff ').replace('_', ' ')} {v:.2e}" if isinstance(v, float)
                          else f"{k.replace('_', ' ')} {v}" for k, v in r.items() if k.startswith(('largest', 'killed')))
        lines.append(f"| {r.get('session_run', '')} | {r['run']} | {c['method']}{' fast' if c.get('fast', True) else ' plain'}"
                     f"{' packed' if c.get('packing') else ''}{' ' + c.get('sharding', 'ddp') if r['gpus'] > 1 else ''} | "
                     f"{r['gpus']} x {c['batch_size']} | {len(r['losses'])} | {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} | "
                     f"{s.get('warmup_s', float('nan')):.1f} | {s.get('steady_s_per_step', float('nan')):.3f} | "
                     f"{s.get('tokens_per_s', 0):,.0f} | {s.get('mfu', float('nan')) * 100:.1f}% | {s.get('max_allocated_gb', float('nan')):.2f} | "
                     + (f"{m['estimated_gb']:.2f} ({m['estimate_error']:+.1%}) | " if m else "| ")
                     + f"{s.get('max_reserved_gb', float('nan')):.2f} | {check} |")
    return '\n'.join(lines)


if __name__ == '__main__':
    if len(sys.argv) < 2: sys.exit(__doc__)
    recs = [json.loads(l) for f in sys.argv[1:] for l in Path(f).read_text().splitlines() if l.strip()]
    print(f"GPU: {recs[0]['gpu']}\n")
    print(table(recs))
