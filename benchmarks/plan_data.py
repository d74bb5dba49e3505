"""`qvl train RUN.yaml --plan GB` on a run's own data, measured: what the plan predicted beside what the run logged.

    python benchmarks/plan_data.py benchmarks/plan_data        # prints the table from the committed logs

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


if __name__ == '__main__':
    for k, v in report(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / 'plan_data')).items(): print(f'{k:>24}: {v}')
