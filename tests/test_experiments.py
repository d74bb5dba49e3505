"""Papermill templates run for real and store checkable results."""
from pathlib import Path

import pandas as pd
import papermill as pm
from PIL import Image

from qvl.resize import COMMON_BUDGETS, image_size
from qvl.sample import load_samples, sample_image_path

ROOT = Path(__file__).parents[1]


def test_token_budget_template(tmp_path, sample_data):
    out = tmp_path / 'run'
    pm.execute_notebook(str(ROOT / 'experiments' / 'token_budget.ipynb'), str(tmp_path / 'executed.ipynb'),
                        parameters=dict(data=str(sample_data), out_dir=str(out), budgets='checkpoint default,448x448'),
                        progress_bar=False, kernel_name='python3')
    tokens = pd.read_csv(out / 'tokens.csv')
    samples = load_samples(sample_data)
    assert len(tokens) == len(samples)
    for row, s in zip(tokens.itertuples(), samples):
        w, h = image_size(sample_data / sample_image_path(s))
        assert (row.width, row.height) == (w, h)
        assert row._4 == COMMON_BUDGETS['checkpoint default'].tokens(h, w)
        assert row._5 == COMMON_BUDGETS['448x448'].tokens(h, w) <= 256
    assert Image.open(out / 'tokens.png').size[0] > 500
    surv = pd.read_csv(out / 'survival.csv', index_col=0)
    assert list(surv.index) == ['checkpoint default', '448x448'] and (surv.loc['checkpoint default'] == 1).all()
