"""`qvl train RUN.yaml --plan GB` on a run's own data, measured: what the plan predicted beside what the run logged.

    python benchmarks/plan_data.py benchmarks/plan_data        # prints both tables from the committed logs

Two records. `plan_runs.jsonl` (with `pytest_plan.log`) is the GPU test
`pytest -m gpu tests/test_train_gpu.py -k plan_keeps` at 24 and 40 GB: one row per budget, the plan `qvl plan --json`
chose beside what `qvl train RUN.yaml --plan GB` then logged (`used_gb` = reserved peak + what the GPU held outside
PyTorch's allocator). The earlier probe below is the same run at 24 GB by hand.

The run (`plan_data/probe.sh`, one H200): a Qwen2.5-VL-3B checkpoint with random weights (`qvl tiny-model --like`), 24
generated JPEGs of 1344x1344 (19 train), `method: lora`, `batch_size: 8`, `cutoff_len: 8192`, no resize budget, 6 steps,
`qvl train run.yaml --plan 24`. `train_plan24.txt` is its console output (the plan's prediction), `train_plan24_log.jsonl`
its log: the run went on past step 6 through a bug of that build (the GPU's memory size shadowed the step count when
the trainer logged memory; fixed since), so only its first 6 steps, the run it planned, are read here.
"""
import json, re, sys
from pathlib import Path


def report(folder: Path, steps: int = 6) -> dict:
    text = (folder / 'train_plan24.txt').read_text()
    m = re.search(r'planned for (\d+) GB: micro-batch (\d+) x (\d+), checkpoint_layers (\d+|all), (\S+) images: predicted '
                  r'([\d.]+) s/step, ([\d.]+) GB reserved', text)
    budget, b, acc, k, size, pred_s, pred_res = m.groups()
    rows = [json.loads(l) for l in (folder / 'train_plan24_log.jsonl').read_text().splitlines()][:steps]
    steady = [r['seconds'] for r in rows[1:]]
    used = max(r['max_reserved_gb'] + r['outside_allocator_gb'] for r in rows)
    return dict(budget_gb=int(budget), plan=f'{b} x {acc}, k {k}, {size}', predicted_s_per_step=float(pred_s),
                measured_s_per_step=round(sum(steady) / len(steady), 4),
                time_error=round(float(pred_s) / (sum(steady) / len(steady)) - 1, 4),
                predicted_reserved_gb=float(pred_res), measured_reserved_gb=round(max(r['max_reserved_gb'] for r in rows), 3),
                outside_allocator_gb=round(max(r['outside_allocator_gb'] for r in rows), 3), used_gb=round(used, 3),
                within_budget=used <= int(budget), warmup_s=rows[0].get('warmup_s'))


def gpu_test(folder: Path) -> list:
    "One row per budget of the GPU test's report: planned against measured."
    rows = []
    for l in (folder / 'plan_runs.jsonl').read_text().splitlines():
        r = json.loads(l); c, s = r['planned'], r['summary']
        rows.append(dict(budget_gb=r['budget_gb'], gpu=r['gpu'], plan=f"{c['micro_batch']} x {c['grad_accum']}, k {c['checkpoint_layers']}, {c['image_size']}",
                         predicted_s_per_step=round(c['s_per_step'], 4), measured_s_per_step=s['steady_s_per_step'],
                         time_error=r['time_error'], predicted_reserved_gb=round(c['reserved_gb'], 3),
                         measured_reserved_gb=s['max_reserved_gb'], outside_allocator_gb=s['outside_allocator_gb'],
                         used_gb=r['used_gb'], within_budget=r['used_gb'] <= r['budget_gb'], mfu=s['mfu']))
    return rows


if __name__ == '__main__':
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / 'plan_data')
    for row in gpu_test(folder):
        print(f"--- GPU test, {row['budget_gb']} GB")
        for k, v in row.items(): print(f'{k:>24}: {v}')
    print('--- probe by hand, 24 GB')
    for k, v in report(folder).items(): print(f'{k:>24}: {v}')
