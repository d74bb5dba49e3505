"""Quantized exports against bf16, through the command (`qvl export --quantize`, `qvl eval --json`).

    python benchmarks/quantized_export.py cpu OUT    # the tiny task: the built-in run (1000 steps), bf16 / nf4 / int8 / fp8 / w4a16 accuracy per budget
    python benchmarks/quantized_export.py gpu OUT    # a real-size random Qwen2.5-VL-7B: load time, weight memory, generation speed

Each prints one table and writes OUT/results.csv. On the random 7B the answers are noise (random weights): only load
time, memory and speed mean something there."""
import json, subprocess, sys, time
from pathlib import Path

import pandas as pd

from qvl.evaluate import EVAL_COLUMNS


def qvl(*args, timeout=900) -> str:
    r = subprocess.run([sys.executable, '-m', 'qvl.cli', *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if r.returncode: raise SystemExit(f"qvl {' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}")
    return r.stdout


def compare(models: dict, data: Path, budgets: str, batch_size: int, max_new_tokens: int, out: Path) -> pd.DataFrame:
    rows = []
    for fmt, d in models.items():
        t0 = time.perf_counter()
        r = json.loads(qvl('eval', d, data, '--budgets', budgets, '--batch-size', batch_size, '--max-new-tokens', max_new_tokens,
                           '--json'))
        for row in r['rows']: rows.append(dict(row, eval_wall_s=round(time.perf_counter() - t0, 1)))
        pd.DataFrame(rows).to_csv(out / 'results.csv', index=False)          # what is done so far survives a time limit
    return pd.DataFrame(rows)


def main(mode: str, out: Path):
    from qvl.sample import write_sample_data
    out.mkdir(parents=True, exist_ok=True)
    if mode == 'cpu':
        from qvl.train import tiny_run_config
        run = out / 'run'
        if not (run / 'model' / 'config.json').exists(): qvl('train', '--out-dir', run)
        data = Path(tiny_run_config(run).eval_data)
        models, budgets, batch, new = {'bf16': run / 'model'}, '336,168,84,56', 16, 8
        source, calib = run, []                  # w4a16 calibrates on the run's own training data
    else:
        import torch
        model = out / 'Qwen2.5-VL-7B'
        if not (model / 'config.json').exists(): qvl('tiny-model', model, '--like', 'Qwen2.5-VL-7B')
        data = write_sample_data(out / 'data', n=40, seed=0, min_side=448, max_side=448, mark=40, task='colour', progress=False) / 'test.json'
        models, budgets, batch, new = {'bf16': model}, '448', 8, 32
        source, calib = model, ['--calib-data', data.parent / 'train.json', '--calib-samples', 32]
        print(torch.cuda.get_device_name(), flush=True)
    for fmt in ('nf4', 'int8', 'fp8', 'w4a16'):
        d = out / f'export-{fmt}'
        t0 = time.perf_counter()
        if not (d / 'quantization.json').exists(): qvl('export', source, d, '--quantize', fmt, *(calib if fmt == 'w4a16' else []))
        print(f"export {fmt}: {time.perf_counter() - t0:.1f} s", flush=True)
        models[fmt] = d
    df = compare(models, data, budgets, batch, new, out)
    print(df[EVAL_COLUMNS + ['eval_wall_s']].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == '__main__':
    if len(sys.argv) != 3 or sys.argv[1] not in ('cpu', 'gpu'): sys.exit(__doc__)
    main(sys.argv[1], Path(sys.argv[2]))
