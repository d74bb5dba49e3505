"""Fit the step-time model's five numbers on the committed H200 steps and write them, with where they came from, to the
file qvl ships (`qvl/fitted/step_time.json`, read as `qvl.plan.STEP_TIME`):

    python benchmarks/step_time_fit.py            # refit and write qvl/fitted/step_time.json
    python benchmarks/step_time_fit.py --check    # refit and compare with the shipped file (what the tests do)

Fitted on the 1344 px steps of Qwen2.5-VL-3B and 7B (LoRA and full) in `benchmarks/step_time/causal/rows_*.csv`; the
896 px steps and Qwen3-VL-8B are held out (`nbs/17_plan.ipynb` prints the errors on both).
"""
import json, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ROOT / 'benchmarks' / 'step_time/causal'
SHIPPED = ROOT / 'qvl' / 'fitted' / 'step_time.json'


def _sig(v: float, digits: int = 4) -> float: return float(f'{v:.{digits}g}')


def fit(folder: Path = ROWS) -> dict:
    "The fitted numbers (4 significant digits) and their provenance: the points, the held-out ones, the GPU, the script."
    import pandas as pd
    from qvl.plan import TIME_TERMS, fit_step_time
    from qvl.estimate import Setup
    m = pd.concat([pd.read_csv(p) for p in sorted(folder.glob('rows_*.csv'))], ignore_index=True)
    m = m[m.status == 'ok']
    fitted = (m.image_h == 1344) & (m.model != 'Qwen3-VL-8B')
    setup = lambda r: Setup(model=r.model, method=r.method, image_size=(r.image_w, r.image_h), batch_size=r.batch_size,
                            gradient_checkpointing=r.k > 0, checkpoint_layers=r.k or None, attention_mask=r.attention_mask)
    c = fit_step_time([(setup(r), 1, r.step_s) for r in m[fitted].itertuples()])
    point = lambda r: f"{r.model} {r.method} {r.image_w}x{r.image_h} b{r.batch_size} k{r.k}"
    return dict(values={k: _sig(c[k]) for k in TIME_TERMS}, gpu=sorted(set(m.gpu)), script='benchmarks/step_time_fit.py',
                rows=[str(p.relative_to(ROOT)) for p in sorted(folder.glob('rows_*.csv'))],
                points=[point(r) for r in m[fitted].itertuples()], held_out=[point(r) for r in m[~fitted].itertuples()],
                fitted_on=f"{', '.join(sorted(set(m.gpu)))}, {int(fitted.sum())} steps at 1344 px of Qwen2.5-VL-3B/7B LoRA and "
                          f"full; held out: {int((~fitted).sum())} steps (896 px, and Qwen3-VL-8B)")


if __name__ == '__main__':
    new = fit()
    if '--check' in sys.argv:
        old = json.loads(SHIPPED.read_text())
        same = {k: new[k] == old[k] for k in ('values', 'points', 'held_out', 'gpu')}
        print(json.dumps(same)); sys.exit(0 if all(same.values()) else 1)
    SHIPPED.write_text(json.dumps(dict(new, date=time.strftime('%Y-%m-%d')), indent=1) + '\n')
    print(f"written {SHIPPED}: {new['values']}")
