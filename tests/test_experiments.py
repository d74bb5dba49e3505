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


def sweep(*args, runs, check=True, **kw):
    from conftest import run_qvl
    return run_qvl('sweep', *args, '--runs-dir', runs, check=check, **kw)


def only_run(runs, experiment):
    dirs = [d for d in (Path(runs) / experiment).iterdir() if (d / 'done.json').exists()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_vram_sweep_template_records_results_figures_and_environment(tmp_path):
    import json
    from qvl.estimate import estimate
    runs = tmp_path / 'runs'
    args = ['vram_sweep', '-p', 'models', 'Qwen2.5-VL-3B', '-p', 'sides', '448,1344', '-p', 'batches', '1,2',
            '-p', 'cpu_sides', '224', '-p', 'cpu_batches', '1,2']
    sweep(*args, runs=runs)
    d = only_run(runs, 'vram_sweep')
    res = pd.read_csv(d / 'results.csv')
    real = res[res.model == 'Qwen2.5-VL-3B']
    assert len(real) == 2 * 2 * 2 and (real.status == 'not measured').all()   # no GPU here: predicted only
    for row in real.itertuples():
        # the prediction is of `qvl train`'s step: the fast one, with the trainer's defaults (the merger trains in full)
        e = estimate('Qwen2.5-VL-3B', row.method, (row.side, row.side), row.batch_size, fast=True, freeze_projector=False)
        assert abs(row.predicted_allocated_gb - e.peak_allocated_bytes / 1e9) < 1e-6
    tiny = res[res.status == 'ok']
    assert len(tiny) == 4 and (tiny.measured_allocated_gb > 0).all()
    # bigger batches of the tiny model use more memory, measured
    for method in ('lora', 'full'):
        t = tiny[tiny.method == method].sort_values('batch_size')
        assert t.measured_allocated_gb.is_monotonic_increasing
    for name in ('vram_by_resolution', 'vram_by_batch', 'full_vs_lora', 'measured_vs_predicted'):
        assert Image.open(d / f'{name}.png').size[0] >= 400
    # CPU steps of the tiny model are another quantity than a GPU peak: not drawn against the GPU estimate
    from qvl.experiments import plot_vram
    ax = plot_vram(res)['measured_vs_predicted'].axes[0]
    assert 'not compared' in ax.get_title() and not ax.collections
    env = json.loads((d / 'env.json').read_text())
    import torch, transformers
    assert env['torch'] == torch.__version__ and env['transformers'] == transformers.__version__ and env['seed'] == 0
    assert len(env['source_hash']) == 16 and env['machine'] and 'cpus' in env
    assert 'batches: 1,2' in (d / 'params.yaml').read_text()
    again = sweep(*args, runs=runs)
    assert 'reusing the finished run' in again.stdout


def test_sweep_killed_midway_finishes_only_missing_points(tmp_path):
    import signal, subprocess, sys, time
    runs = tmp_path / 'runs'
    args = ['vram_sweep', '-p', 'models', 'Qwen2.5-VL-3B', '-p', 'sides', '448', '-p', 'batches', '1',
            '-p', 'cpu_sides', '224,336,448', '-p', 'cpu_batches', '1,2,3,4']
    exe = str(Path(sys.executable).parent / 'qvl')
    p = subprocess.Popen([exe, 'sweep', *args, '--runs-dir', str(runs)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    csv = None
    while time.time() < deadline and p.poll() is None:
        found = list(runs.glob('vram_sweep/*/measured-cpu.csv'))
        if found and len(found[0].read_text().splitlines()) >= 4: csv = found[0]; break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL); p.wait()
    assert csv is not None, 'the sweep did not start measuring'
    before = pd.read_csv(csv)
    assert 3 <= len(before) < 24, len(before)
    sweep(*args, runs=runs)
    after = pd.read_csv(csv)
    keys = ['method', 'side', 'batch_size']
    assert len(after) == 24 and not after.duplicated(keys).any()
    pd.testing.assert_frame_equal(after.iloc[:len(before)], before)      # finished points were kept, not redone


def test_resize_token_audit_and_finetune_templates(tmp_path):
    from qvl.experiments import collect
    runs = tmp_path / 'runs'
    sweep('resize_audit', '-p', 'n', '10', '-p', 'cutoff_len', '700', runs=runs)
    sweep('resize_audit', '-p', 'n', '10', '-p', 'cutoff_len', '3000', runs=runs)
    res = collect(runs, 'resize_audit')
    by = {(r.param_cutoff_len, r.budget): r.over_cutoff for r in res.itertuples()}
    assert by[('700', 'model limits')] > by[('700', '448x448')] == 0       # the small budget fits the short cutoff
    assert by[('3000', '448x448')] == 0 and by[('700', 'model limits')] >= by[('3000', 'model limits')]
    d = [p for p in (runs / 'resize_audit').iterdir() if 'cutoff_len: 700' in (p / 'params.yaml').read_text()][0]
    assert Image.open(d / 'tokens_hist.png').size[0] > 400

    sweep('token_audit', runs=runs)
    findings = pd.read_csv(only_run(runs, 'token_audit') / 'results.csv')
    assert {'missing_image', 'placeholder_count_mismatch'} <= set(findings.code)
    assert findings[findings.code == 'missing_image']['index'].tolist() == [1]

    sweep('finetune', '-p', 'steps', '20', '-p', 'n', '30', '-p', 'detail_budgets', '224,56', runs=runs, timeout=900)
    d = only_run(runs, 'finetune')
    detail = pd.read_csv(d / 'results.csv')
    assert list(detail.side) == [224, 56] and detail.accuracy.between(0, 1).all()
    log = pd.read_csv(d / 'log.csv')
    assert list(log.step)[-1] == 20 and log.loss.iloc[-1] < log.loss.iloc[0]
    assert Image.open(d / 'loss.png').size[0] > 400 and Image.open(d / 'detail.png').size[0] > 400


def test_unknown_template_or_parameter_is_a_clear_error(tmp_path):
    r = sweep('no_such', runs=tmp_path, check=False)
    assert r.returncode == 2 and 'vram_sweep' in r.stderr
    r = sweep('vram_sweep', '-p', 'sidez', '448', runs=tmp_path, check=False)
    assert r.returncode == 2 and 'has no parameter(s) sidez' in r.stderr
