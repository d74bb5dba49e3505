"""Fit the memory estimator's numbers on the committed H200 measurements and write them, with where they came from, to the
file qvl ships (`qvl/fitted/memory.json`, read by `qvl.estimate`):

    python benchmarks/memory_fit.py            # refit and write qvl/fitted/memory.json
    python benchmarks/memory_fit.py --check    # refit and compare with the shipped file (what the tests do)

What is fitted on what (every other measured point is held out, and the tests named in `benchmarks/README.md` judge the
estimate on those):
- the plain step's coefficients, the optimizer's temporaries and the plain groups' reserved overhead: the square sides
  448, 1344 and 2016 at batch 1 and 4 of `benchmarks/memory/m_*.csv` (`memory_accuracy.py`'s fit split);
- the fast step's coefficients and reserved overhead: batch 1 and 4 of `benchmarks/fast_step/nocompile/memory.csv`
  (eager decoder layers, padding mask);
- `fast_kept`: the median kept fraction of that file's no-checkpointing steps;
- `fast_kept_compiled_lora`: the median of `benchmarks/step_time/rows.csv`'s no-checkpointing steps (7B LoRA, compiled);
- `qlora_kept`: the median of the Qwen2-VL-2B QLoRA steps without checkpointing in `benchmarks/memory_heldout`.

Each number depends on the others (a kept fraction is what the rest of the estimate leaves), so the fit is repeated until
the rounded numbers stop changing: the shipped file is a fixed point of its own fit.
"""
import json, statistics, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / 'benchmarks'
SHIPPED = ROOT / 'qvl' / 'fitted' / 'memory.json'
sys.path.insert(0, str(BENCH))


def _sig(v: float, digits: int = 4) -> float: return float(f'{v:.{digits}g}')


def _rounded(c: dict) -> dict:
    "The coefficients at 4 significant digits, the shape of `COEFFICIENTS` (its `fitted_on` left out)."
    out = {}
    for k, v in c.items():
        if k == 'fitted_on': continue
        out[k] = _rounded(v) if isinstance(v, dict) else _sig(float(v)) if isinstance(v, (int, float)) else [_sig(float(x)) for x in v]
    return out


def _use(values: dict):
    "Make `qvl.estimate` estimate with `values` (the kept fractions read these globals at each call)."
    import qvl.estimate as E
    E.COEFFICIENTS.update(values['coefficients'])
    E.FAST_KEPT, E.FAST_KEPT_COMPILED_LORA, E.QLORA_KEPT = values['fast_kept'], values['fast_kept_compiled_lora'], values['qlora_kept']


def _rows():
    import pandas as pd
    from memory_accuracy import is_fit
    plain = pd.concat([pd.read_csv(p) for p in sorted((BENCH / 'memory').glob('m_*.csv'))], ignore_index=True)
    plain = plain[[is_fit(int(r.image_h), int(r.batch_size)) for r in plain.itertuples()]]
    fast = pd.read_csv(BENCH / 'fast_step/nocompile' / 'memory.csv').assign(compiled_layers=False)
    compiled = pd.read_csv(BENCH / 'step_time' / 'rows.csv')
    held = pd.concat([pd.read_csv(p) for p in sorted((BENCH / 'memory_heldout').glob('rows_*.csv'))], ignore_index=True)
    qlora = held[(held.status == 'ok') & (held.method == 'qlora') & (held.model == 'Qwen2-VL-2B') & ~held.gradient_checkpointing.astype(bool)]
    return plain, fast, compiled, qlora


def _once(values: dict, rows) -> dict:
    "One round of the fit, every other number at `values`."
    from qvl.profile import fit_coefficients, kept_fraction
    from memory_heldout import row_setup
    plain, fast, compiled, qlora = rows
    _use(values)
    c = fit_coefficients(plain, base=values['coefficients'])
    c = fit_coefficients(fast[fast.batch_size.isin([1, 4])], base=c)
    no_gc = lambda df: df[(df.status == 'ok') & ~df.gradient_checkpointing.astype(bool) & df.fast.astype(bool)]
    eager = [kept_fraction(r) for _, r in no_gc(fast).iterrows()]
    padded = [kept_fraction(r) for _, r in no_gc(compiled[compiled.k == 0]).iterrows()]
    q = [values['qlora_kept'] * kept_fraction(r, row_setup(r)) for _, r in qlora.iterrows()]
    return dict(coefficients=_rounded(c), fast_kept=round(statistics.median(eager), 2),
                fast_kept_compiled_lora=round(statistics.median(padded), 2), qlora_kept=round(statistics.median(q), 2)), \
        dict(fast_kept=eager, fast_kept_compiled_lora=padded, qlora_kept=q)


def fit(start: dict | None = None, rounds: int = 20) -> dict:
    "The fixed point of the fit from `start` (default: the shipped values), with the fractions each kept number took."
    values = start or json.loads(SHIPPED.read_text())['values']
    rows = _rows()
    for _ in range(rounds):
        new, spread = _once(values, rows)
        if new == values: break
        values = new
    else: raise SystemExit(f'the fit did not settle in {rounds} rounds')
    return dict(values=values, spread={k: [round(min(v), 3), round(max(v), 3), len(v)] for k, v in spread.items()})


if __name__ == '__main__':
    shipped = json.loads(SHIPPED.read_text())
    new = fit(shipped['values'] if '--check' in sys.argv else None)
    if '--check' in sys.argv:
        same = new['values'] == shipped['values']
        if not same: print(json.dumps(dict(shipped=shipped['values'], refit=new['values']), indent=1))
        print(json.dumps(dict(same=same))); sys.exit(0 if same else 1)
    out = dict(shipped, values=new['values'], date=time.strftime('%Y-%m-%d'), script='benchmarks/memory_fit.py',
               kept_fractions='[lowest, highest, points] of the fractions each kept number is the median of: ' +
                              json.dumps(new['spread']))
    SHIPPED.write_text(json.dumps(out, indent=1) + '\n')
    print(f"written {SHIPPED}: {json.dumps(new['values'])}\nkept fractions (lowest, highest, points): {new['spread']}")
