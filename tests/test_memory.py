"""The estimator against the committed H200 measurements, the CLI, bad input; a GPU check of the profiler."""
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import run_qvl
from qvl.estimate import estimate

BENCH = Path(__file__).parents[1] / 'benchmarks'


def held_out(measured):
    import importlib.util
    spec = importlib.util.spec_from_file_location('ma', BENCH / 'memory_accuracy.py')
    ma = importlib.util.module_from_spec(spec); spec.loader.exec_module(ma)
    return measured[[not ma.is_fit(int(r.image_h), int(r.batch_size)) for r in measured.itertuples()]]


def test_estimate_within_5_percent_of_measured_on_held_out_points():
    """The shipped coefficients against every measured point the fit did not see (pure bf16, H200). That harness's
    plain step kept peft's input hooks, so the frozen vision tower was in autograd; without checkpointing the layers'
    and the tower's activations are derived (`traced_activations`), not fitted."""
    m = pd.concat([pd.read_csv(p) for p in sorted((BENCH / 'memory').glob('m_*.csv'))], ignore_index=True)
    h = held_out(m[m.status == 'ok'])
    assert len(h) >= 80
    for r in h.itertuples():
        e = estimate(r.model, r.method, (r.image_w, r.image_h), r.batch_size, gradient_checkpointing=r.gradient_checkpointing,
                     fast=False, vision_in_graph=True,   # these steps are the plain step, the tower in autograd,
                     attention_mask='causal')            # on unpadded rows
        assert abs(e.peak_allocated_bytes / r.peak_allocated - 1) < 0.05, r


def test_sweep_of_the_trainers_step_against_its_estimate():
    "The VRAM sweep measured `qvl train`'s (fast) step on H200s: its predictions are the estimates of the same run configs, as accurate as the README says."
    from qvl.experiments import point_config
    from qvl.profile import estimate_run
    sweep = pd.read_csv(BENCH / 'vram_sweep' / 'results.csv')
    ok = sweep[sweep.status == 'ok']
    assert len(ok) == 64 and ok.fast.all()
    for r in ok.itertuples():
        e = estimate_run(point_config(r._asdict()), (r.side, r.side))
        assert abs(e.peak_allocated_bytes / 1e9 - r.predicted_allocated_gb) < 1e-6
    err = (ok.predicted_allocated_gb / ok.measured_allocated_gb - 1).abs()
    lora, full = err[ok.method == 'lora'], err[ok.method == 'full']
    assert lora.median() < 0.02 and lora.max() < 0.08
    small = (ok.method == 'full') & (ok.side <= 896) & (ok.batch_size <= 2)     # where the optimizer step sets the peak
    assert err[small].max() < 0.01 and full.max() < 0.36     # full fine-tuning's activation peak: under, up to 35%


def test_estimate_on_families_no_coefficient_was_fitted_on():
    """`qvl sweep vram_sweep` of Qwen3-VL-2B and Qwen3.5-0.8B on an H200 (`qvl train`'s fast step, checkpointing on)
    and `memory_accuracy.py families` (Qwen2-VL-2B, Qwen3-VL 2B/4B/8B): the estimate of every point is the shipped
    estimator's, and within the stated errors. Only the tied-table term saw Qwen3-VL-2B (one full point at 448 px b2)."""
    from qvl.experiments import point_config
    from qvl.profile import accuracy, estimate_run
    sweep = pd.read_csv(BENCH / 'vram_sweep/qwen3' / 'results.csv')
    ok = sweep[sweep.status == 'ok']
    assert len(ok) == 24 and set(ok.model) == {'Qwen3-VL-2B', 'Qwen3.5-0.8B'}
    for r in ok.itertuples():
        e = estimate_run(point_config(r._asdict()), (r.side, r.side))
        assert abs(e.peak_allocated_bytes / 1e9 - r.predicted_allocated_gb) < 1e-6
    err = (ok.predicted_allocated_gb / ok.measured_allocated_gb - 1).abs()
    assert err[ok.model == 'Qwen3-VL-2B'].max() < 0.03
    q35 = err[ok.model == 'Qwen3.5-0.8B']
    assert q35.median() < 0.03 and q35.max() < 0.16      # linear-attention activations are not modelled yet
    fam = pd.read_csv(BENCH / 'memory' / 'families_h200.csv').assign(freeze_projector=False)
    a = accuracy(fam)
    gc = a[a.gradient_checkpointing].error_allocated.abs()
    assert len(gc) == 12 and gc.median() < 0.01 and gc.max() < 0.04
    # without checkpointing: the layers' kept tensors derived from each architecture (`traced_activations`) with the
    # fast step's fractions measured on Qwen2.5-VL (`FAST_KEPT`, `FAST_KEPT_COMPILED_LORA`); Qwen3-VL-8B is the outlier
    nogc = a[~a.gradient_checkpointing].error_allocated
    assert len(nogc) == 6 and nogc.abs().median() < 0.04 and nogc.abs().max() < 0.14 and (nogc < 0.02).all()


def test_held_out_set_through_the_trainers_preparation(tmp_path):
    """benchmarks/memory_heldout (H200, `qvl train`'s preparation, 191 points of Qwen2-VL, Qwen3-VL 2B/4B/8B, bf16,
    bf16-mixed, fp32, QLoRA, checkpointing on and off, both steps): the shipped estimate of every row meets the goal of
    3% median and 8% worst. QLoRA's one correction (`QLORA_KEPT`) is fitted on Qwen2-VL-2B without checkpointing
    (`benchmarks/memory_fit.py`); its other rows are held out: 3% median, 6.5% worst (the refit of 2026-12-03 against
    the estimate of that day moved it from 1.59 to 1.55, and the worst held-out row, Qwen3-VL-4B, from 5.7% to 6.0%)."""
    import subprocess, sys
    rows = sorted((BENCH / 'memory_heldout').glob('rows_*.csv'))
    out = subprocess.run([sys.executable, BENCH / 'memory_heldout.py', 'report', *rows, '--out', tmp_path],
                         capture_output=True, text=True, check=True).stdout
    a = pd.read_csv(tmp_path / 'accuracy.csv')
    assert len(a) >= 190 and {'fp32', 'bf16-mixed', 'bf16'} <= set(a.precision) and 'qlora' in set(a.method)
    err = a.error.abs()
    assert err.median() < 0.03 and err.max() < 0.08, out
    q = a[a.method == 'qlora']
    held = q[~((q.model == 'Qwen2-VL-2B') & ~q.gradient_checkpointing)]
    assert len(held) >= 11 and held.error.abs().max() < 0.065 and held.error.abs().median() < 0.03
    # every point that ran out of its process's memory cap was predicted (reserved) above the cap, but for two
    line = next(l for l in out.splitlines() if l.startswith('out of memory'))
    n, above = (int(w) for w in line.replace(';', ' ').split() if w.isdigit())
    assert n >= 18 and above >= n - 2


def test_estimate_cli_json_and_components():
    r = run_qvl('estimate', '--model', 'Qwen2.5-VL-3B', '--method', 'full', '--image-size', '896x896', '--batch-size', '2',
                '--prompt-tokens', '64', '--answer-tokens', '128', '--json')
    out = json.loads(r.stdout)
    assert {'peak_allocated_bytes', 'peak_reserved_bytes', 'components'} <= set(out)
    c = out['components']
    assert out['peak_reserved_bytes'] >= out['peak_allocated_bytes'] > c['weights'] + c['optimizer_states']
    e = estimate('Qwen2.5-VL-3B', 'full', (896, 896), 2)
    assert out['peak_allocated_bytes'] == e.peak_allocated_bytes


def test_settings_change_the_estimate_the_right_way():
    base = estimate('Qwen2.5-VL-7B', 'lora', 1344, 2).peak_allocated_bytes
    assert estimate('Qwen2.5-VL-7B', 'lora', 1344, 4).peak_allocated_bytes > base
    assert estimate('Qwen2.5-VL-7B', 'lora', 1344, 2, gradient_checkpointing=False).peak_allocated_bytes > base
    assert estimate('Qwen2.5-VL-7B', 'qlora', 1344, 2).peak_allocated_bytes < base
    full = estimate('Qwen2.5-VL-7B', 'full', 448, 1)
    assert estimate('Qwen2.5-VL-7B', 'full', 448, 1, optimizer='adamw8bit').peak_allocated_bytes < full.peak_allocated_bytes
    assert estimate('Qwen2.5-VL-7B', 'full', 448, 1, gpus=4, sharding='zero3').peak_allocated_bytes < full.peak_allocated_bytes / 2


@pytest.mark.parametrize('args,needle', [(['--batch-size', '0'], 'batch_size must be at least 1'),
                                         (['--image-size=-448x448'], 'WIDTHxHEIGHT'),
                                         (['--optimizer', 'lion'], 'invalid choice'),
                                         (['--model', 'Qwen9-VL'], 'Qwen2.5-VL-7B')])
def test_impossible_settings_are_clear_errors(args, needle):
    r = run_qvl('estimate', *args, check=False)
    assert r.returncode == 2 and needle in r.stderr and 'Traceback' not in r.stderr, r.stderr


def test_a_setting_that_fits_no_gpu_says_what_would():
    out = run_qvl('estimate', '--model', 'Qwen2.5-VL-7B', '--method', 'full', '--image-size', '2016x2016', '--batch-size', '8',
                  '--no-gradient-checkpointing').stdout
    assert 'more than 141 GB' in out and ('images of at most' in out or 'batch size' in out)


@pytest.mark.gpu
@pytest.mark.parametrize('fast', [True, False])
def test_profile_measures_what_the_estimate_predicts(fast):
    """`profile` measures the trainer's own step (fast by default), a model per checkpointing setting; with checkpointing
    the estimate of the same run config is within 5%. (Without it the estimate is 6% under for the fast step and 45%
    over for the plain one on an H200: its coefficients come from another harness, which the estimator work replaces.)"""
    from qvl.profile import estimate_run, profile, profile_config
    df = profile('Qwen2.5-VL-3B', 'lora', settings=[(896, 2, True), (1120, 1, False)], fast=fast, progress=False)
    assert (df.status == 'ok').all() and (df.fast == fast).all() and (df.step_s > 0).all()
    assert df.after_load.max() < 9e9          # each model is freed before the next is built
    for r in df[df.gradient_checkpointing].itertuples():
        e = estimate_run(profile_config('Qwen2.5-VL-3B', 'lora', r.gradient_checkpointing, fast, batch_size=r.batch_size),
                         (r.image_w, r.image_h))
        assert abs(e.peak_allocated_bytes / r.peak_allocated - 1) < 0.05, (r, e.peak_allocated_bytes)


def test_fast_step_estimate_within_5_percent_of_measured():
    """The fast step's coefficients (fitted on batch 1 and 4 of benchmarks/fast_step/nocompile, eager decoder layers)
    against every measured fast step on H200s; those rows' layers were eager, the harness's compiled."""
    m = pd.concat([pd.read_csv(BENCH / d / 'memory.csv').assign(compiled=d != 'fast_step/nocompile')
                   for d in ('fast_step/nocompile', 'fast_step/harness')], ignore_index=True)
    ok = m[m.status == 'ok']
    assert len(ok) >= 36 and (ok.batch_size == 2).sum() >= 12
    for r in ok.itertuples():
        e = estimate(r.model, 'lora', (r.image_w, r.image_h), r.batch_size, gradient_checkpointing=bool(r.gradient_checkpointing),
                     fast=True, compiled_layers=bool(r.compiled), attention_mask='padded')   # before causal_attention
        assert abs(e.peak_allocated_bytes / r.peak_allocated - 1) < 0.05, r
        plain = estimate(r.model, 'lora', (r.image_w, r.image_h), r.batch_size, gradient_checkpointing=bool(r.gradient_checkpointing),
                         fast=False)
        assert e.peak_allocated_bytes < plain.peak_allocated_bytes
    # `qvl estimate` predicts the step `qvl train` takes by default, the fast one; --no-fast the plain one
    args = ['estimate', '--model', 'Qwen2.5-VL-7B', '--image-size', '1344x1344', '--batch-size', '2', '--json']
    default, plain = (json.loads(run_qvl(*args, *extra).stdout) for extra in ([], ['--no-fast']))
    assert default['setup']['fast'] is True and plain['setup']['fast'] is False
    assert abs(default['peak_allocated_bytes'] / 19.032e9 - 1) < 0.02
    assert plain['peak_allocated_bytes'] > 1.3 * default['peak_allocated_bytes']


def test_estimate_reads_a_run_config(tmp_path):
    "`qvl estimate run.yaml` estimates exactly the run `qvl train run.yaml` would make; --set changes it as for train."
    cfg = tmp_path / 'run.yaml'
    cfg.write_text(yaml.safe_dump(dict(model='Qwen2.5-VL-7B', data='train.json', method='full', batch_size=2)))
    run = json.loads(run_qvl('estimate', cfg, '--image-size', '1344x1344', '--json').stdout)
    flags = json.loads(run_qvl('estimate', '--model', 'Qwen2.5-VL-7B', '--method', 'full', '--image-size', '1344x1344',
                               '--batch-size', '2', '--json').stdout)
    s = run['setup']
    assert s['fast'] and not s['freeze_projector'] and s['batch_size'] == 2     # the trainer's defaults: the merger trains
    assert flags == run                 # the flags are the config's keys, with its defaults: the same run, the same estimate
    bigger = json.loads(run_qvl('estimate', cfg, '--image-size', '1344x1344', '--batch-size', '4', '--json').stdout)
    assert bigger['setup']['batch_size'] == 4     # a flag overrides the key
    assert bigger['components']['llm_activations'] > run['components']['llm_activations']
    plain = json.loads(run_qvl('estimate', cfg, '--image-size', '1344x1344', '--set', 'fast=false', '--json').stdout)
    assert plain['setup']['fast'] is False and plain['peak_allocated_bytes'] != run['peak_allocated_bytes']
    bad = run_qvl('estimate', cfg, '--set', 'method=dora', check=False)
    assert bad.returncode == 2 and 'choose one of lora, full, qlora' in bad.stderr


@pytest.mark.gpu
def test_profile_reads_a_run_config(tmp_path):
    "`qvl profile RUN.yaml` measures that run's step (its batch, LoRA rank, fast step), the estimate of the same run beside it."
    cfg = tmp_path / 'run.yaml'
    cfg.write_text(yaml.safe_dump(dict(model='Qwen2.5-VL-3B', data='train.json', method='lora', batch_size=2, lora_rank=16)))
    r = json.loads(run_qvl('profile', cfg, '--image-size', '896', '--json', timeout=900).stdout)
    assert r['status'] == 'ok' and r['batch_size'] == 2 and r['fast'] is True and r['image_w'] == 896
    assert abs(r['estimated_allocated'] / r['peak_allocated'] - 1) < 0.05, r
    flags = json.loads(run_qvl('profile', cfg, '--image-size', '896', '--batch-size', '1', '--json', timeout=900).stdout)
    assert flags['batch_size'] == 1 and flags['peak_allocated'] < r['peak_allocated']     # a flag overrides the key


def test_estimate_of_a_run_walks_its_own_data(tiny_model, tmp_path):
    """`qvl estimate run.yaml` tokenizes and resizes the run's data as training does, walks the run's micro-batches and
    estimates the largest one; it names the samples that make it. --image-size estimates a nominal sample instead."""
    from qvl.config import load_config
    from qvl.data import build_examples
    from qvl.formats import load_dataset
    from qvl.plan import estimate_data
    from qvl.sample import write_sample_data
    from qvl.data import micro_batches
    data = write_sample_data(tmp_path / 'data', n=16, seed=1, min_side=300, max_side=1500, progress=False)
    path = tmp_path / 'run.yaml'
    path.write_text(yaml.safe_dump(dict(model=str(tiny_model), data=str(data / 'train.json'), batch_size=2, steps=6,
                                        max_pixels=1_000_000, cache_dir=str(tmp_path / 'cache'))))
    out = json.loads(run_qvl('estimate', path, '--json').stdout)
    where, b = out['largest_batch'], out['batch']
    cfg = load_config(path)
    ex = build_examples(load_dataset(cfg.data), cfg.model, cfg.budget(), cfg.cutoff_len, progress=False)
    pos = {p: i for i, p in enumerate(ex.index)}
    mb = [pos[p] for p in where['samples']]
    assert mb in micro_batches(cfg, len(ex), (where['step'] - 1) * cfg.batch_size, 1, 0)[1]     # a micro-batch of that step
    assert b['rows'] == 2 and b['seq_len'] == -(-max(len(ex[i]['input_ids']) for i in mb) // 8) * 8   # padded as collate pads
    assert b['images'] == sum(len(ex.images[i]) for i in mb) and b['image_tokens'] > 0
    # the estimate of every other micro-batch of the run is not larger (one more step could only add candidates)
    e, _ = estimate_data(cfg, progress=False)
    assert e.peak_allocated_bytes == out['peak_allocated_bytes']
    assert estimate_data(cfg, steps=12, progress=False)[0].peak_allocated_bytes >= e.peak_allocated_bytes
    text = run_qvl('estimate', path).stdout
    assert 'the largest micro-batch of' in text and f"#{where['samples'][0]}" in text
    nominal = json.loads(run_qvl('estimate', path, '--image-size', '448', '--json').stdout)
    assert nominal['largest_batch'] is None and nominal['batch'] is None


def test_calibration_beside_a_run_changes_its_estimate_until_turned_off(tmp_path):
    """`qvl estimate RUN.yaml` applies the corrections `qvl calibrate` saved in the run's out_dir and says so;
    `--no-calibration` ignores them; a broken file is a clear error; `qvl calibrate` without a GPU says what it needs."""
    cfg = tmp_path / 'run.yaml'
    cfg.write_text(yaml.safe_dump(dict(model='Qwen2.5-VL-3B', data='train.json', out_dir=str(tmp_path / 'run'))))
    args = ('estimate', cfg, '--image-size', '896x896')
    plain = json.loads(run_qvl(*args, '--json').stdout)
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'memory_calibration.json').write_text(json.dumps(dict(activation_scale=1.5, constant_bytes=2e8, gpu='GPU X')))
    calibrated = json.loads(run_qvl(*args, '--json').stdout)
    c, p = calibrated['components'], plain['components']
    assert calibrated['corrections']['gpu'] == 'GPU X'
    assert abs(c['llm_activations'] / p['llm_activations'] - 1.5) < 1e-6 and c['fixed_overhead'] - p['fixed_overhead'] == 2e8
    assert calibrated['peak_allocated_bytes'] > plain['peak_allocated_bytes']
    assert 'calibrated on GPU X' in run_qvl(*args).stdout
    assert json.loads(run_qvl(*args, '--no-calibration', '--json').stdout)['peak_allocated_bytes'] == plain['peak_allocated_bytes']
    (tmp_path / 'run' / 'memory_calibration.json').write_text('[]')
    bad = run_qvl(*args, check=False)
    assert bad.returncode == 2 and 'is not a memory calibration' in bad.stderr
    import torch
    if not torch.cuda.is_available():
        r = run_qvl('calibrate', cfg, check=False)
        assert r.returncode == 2 and 'calibrate measures training steps on a CUDA GPU' in r.stderr and 'Traceback' not in r.stderr


@pytest.mark.gpu
def test_calibrate_measures_a_run_and_its_estimate_uses_the_corrections(tmp_path):
    """`qvl calibrate RUN.yaml` on a GPU: a few short steps of the run, two corrections fitted, the error before and after
    on each step, written beside the run where `qvl estimate` picks them up."""
    cfg = tmp_path / 'run.yaml'
    cfg.write_text(yaml.safe_dump(dict(model='Qwen3-VL-2B', data='train.json', batch_size=2, out_dir=str(tmp_path / 'run'))))
    # sides where the step's time is its GPU work: at 448 px a 2B model's step is launch-bound, as long at any size
    out = json.loads(run_qvl('calibrate', cfg, '--sides', '896,1344', '--json', timeout=900).stdout)
    pts = out['points']
    print(json.dumps(out, indent=1))
    assert len(pts) == 4 and {p['batch_size'] for p in pts} == {1, 2} and out['gpu']
    squares = lambda k: sum(p[k] ** 2 for p in pts)          # the fit's objective: never worse than no correction
    assert squares('error_after') <= squares('error_before') + 1e-12 and max(abs(p['error_after']) for p in pts) < 0.03
    saved = json.loads((tmp_path / 'run' / 'memory_calibration.json').read_text())
    assert saved['activation_scale'] == out['activation_scale']
    e = json.loads(run_qvl('estimate', cfg, '--image-size', '896x896', '--batch-size', '2', '--json').stdout)
    p = next(p for p in pts if p['image_size'] == '896x896' and p['batch_size'] == 2)
    assert abs(e['peak_allocated_bytes'] / 1e9 - p['after_gb']) < 1e-6
    # the step-time model refitted on the same steps, and `qvl plan` predicts with it
    t = saved['step_time']
    assert t and t['micro_batch_s'] >= 0 and 0 < t['model_efficiency'] and 0 < t['recompute_efficiency']
    assert squares('time_error_after') <= squares('time_error_before') + 1e-12
    assert f"calibrated on {out['gpu']}" in run_qvl('plan', cfg, '--gpu-memory', 80, '--out', tmp_path / 'p.yaml').stdout


def test_selective_checkpointing_through_the_command():
    "`--checkpoint-layers k` (a run config's `checkpoint_layers`): the estimate lies between checkpointing all layers and none."
    base = ('estimate', '--model', 'Qwen2.5-VL-7B', '--image-size', '1344x1344', '--batch-size', '2', '--json')
    peak = lambda *a: json.loads(run_qvl(*base, *a).stdout)['peak_allocated_bytes']
    all_, half, none = peak(), peak('--checkpoint-layers', '14'), peak('--no-gradient-checkpointing')
    assert all_ < half < none and peak('--checkpoint-layers', '28') == all_ and peak('--checkpoint-layers', '0') == none
    bad = run_qvl(*base, '--checkpoint-layers', '29', check=False)
    assert bad.returncode == 2 and 'has 28 decoder layers' in bad.stderr


@pytest.mark.gpu
def test_selective_checkpointing_measured_between_all_and_none(tmp_path):
    "`qvl profile` of the same LoRA step with 0, 18 and 36 of Qwen2.5-VL-3B's layers checkpointed: the peak falls with k, each within 5% of its estimate."
    rows = {}
    for k in (0, 18, 36):
        rows[k] = json.loads(run_qvl('profile', '--model', 'Qwen2.5-VL-3B', '--image-size', '1344', '--batch-size', '2',
                                     '--checkpoint-layers', k, '--json', timeout=900).stdout)
        assert rows[k]['status'] == 'ok' and abs(rows[k]['estimated_allocated'] / rows[k]['peak_allocated'] - 1) < 0.05, rows[k]
    assert rows[0]['peak_allocated'] > rows[18]['peak_allocated'] > rows[36]['peak_allocated']


def test_plan_writes_the_fastest_config_that_fits(tmp_path):
    "`qvl plan`: the global batch kept, the chosen config fits by the estimate, the source untouched; nothing fits: one line."
    from qvl.config import load_config
    from qvl.estimate import Setup, estimate_setup
    run = tmp_path / 'run.yaml'
    run.write_text(yaml.safe_dump(dict(model='Qwen2.5-VL-7B', data='d.json', method='lora', batch_size=1, grad_accum=8,
                                       target=[1344, 1344])))
    before = run.read_text()
    chosen = {}
    for gb in (80, 24):
        out = tmp_path / f'plan{gb}.yaml'
        r = run_qvl('plan', run, '--gpu-memory', gb, '--out', out)
        assert 'chosen: 1344x1344 images, micro-batch' in r.stdout and str(out) in r.stdout
        cfg = chosen[gb] = load_config(out)
        assert cfg.batch_size * cfg.grad_accum == 8
        assert estimate_setup(Setup.of(cfg, image_size=(1344, 1344))).fits(gb * 1e9)
    # a larger GPU keeps fewer layers checkpointed: 80 GB runs none at micro-batch 4, 24 GB checkpoints
    assert (chosen[80].batch_size, chosen[80].gradient_checkpointing) == (4, False) and chosen[24].gradient_checkpointing
    assert run.read_text() == before
    r = run_qvl('plan', run, '--gpu-memory', 10, '--out', tmp_path / 'none.yaml', check=False)
    assert r.returncode == 2 and 'Traceback' not in r.stderr and not (tmp_path / 'none.yaml').exists()
    assert r.stderr.strip().splitlines()[-1].startswith('qvl: error: nothing fits 10 GB'), r.stderr


def test_plan_smaller_images_and_a_calibration(tmp_path):
    """`qvl plan --min-side`: where nothing fits at the run's images, the largest smaller budget that does is written as
    max_pixels; a calibration beside the run (its step-time model, slower than the H200 fit) changes s/step, not the fit."""
    from qvl.config import load_config
    from qvl.core import ImageSize
    from qvl.estimate import CALIBRATION_FILE, Setup, estimate_setup
    from qvl.plan import PLAN_MARGIN, STEP_TIME
    run = tmp_path / 'run.yaml'
    run.write_text(yaml.safe_dump(dict(model='Qwen2.5-VL-7B', data='d.json', method='lora', batch_size=1, grad_accum=8,
                                       target=[1344, 1344], out_dir=str(tmp_path / 'out'))))
    r = run_qvl('plan', run, '--gpu-memory', 19.5, '--out', tmp_path / 'kept.yaml', check=False)
    assert r.returncode == 2 and 'nothing fits 19.5 GB' in r.stderr
    r = run_qvl('plan', run, '--gpu-memory', 19.5, '--min-side', 896, '--out', tmp_path / 'small.yaml')
    cfg = load_config(tmp_path / 'small.yaml')
    size = ImageSize(*cfg.target)
    assert 896 <= size.width < 1344 and size.width % 28 == 0 and cfg.max_pixels == size.width * size.height
    assert 'nothing fits at 1344x1344' in r.stdout and f'chosen: {size} images' in r.stdout, r.stdout
    assert estimate_setup(Setup.of(cfg, image_size=size)).fits(19.5e9, PLAN_MARGIN)
    bigger = ImageSize(size.width + 56, size.height + 56)      # the next size tried: it does not fit at any k
    assert not estimate_setup(Setup.of(cfg, image_size=bigger, batch_size=1, checkpoint_layers=None)).fits(19.5e9, PLAN_MARGIN)
    # a GPU half as fast as the H200 fit: plan reads the calibration beside the run and says so
    out = tmp_path / 'out'; out.mkdir()
    slow = {k: v / 2 if k.endswith('efficiency') else 2 * v for k, v in STEP_TIME.items() if k != 'fitted_on'}
    (out / CALIBRATION_FILE).write_text(json.dumps(dict(activation_scale=1.0, constant_bytes=0.0, gpu='a slow GPU', step_time=slow,
                                                        peak_flops=989.4e12)))
    rows = lambda r: {l.split()[0] + ' ' + l.split()[1] + ' ' + l.split()[2]: float(l.split()[5]) for l in r.stdout.splitlines()
                      if l.split() and l.split()[0].isdigit()}
    cal = run_qvl('plan', run, '--gpu-memory', 80, '--out', tmp_path / 'c.yaml')
    raw = run_qvl('plan', run, '--gpu-memory', 80, '--out', tmp_path / 'r.yaml', '--no-calibration')
    assert 'calibrated on a slow GPU' in cal.stdout and 'calibrated' not in raw.stdout
    a, b = rows(cal), rows(raw)
    assert a and set(a) & set(b) and all(abs(a[k] / b[k] - 2) < 0.02 for k in set(a) & set(b)), (a, b)
    assert load_config(tmp_path / 'c.yaml') == load_config(tmp_path / 'r.yaml')


def test_train_plan_trains_the_planned_config(tiny_model, sample_data, tmp_path):
    "`qvl train RUN.yaml --plan GB` trains with what `qvl plan` chooses: the tiny model's global batch in one micro-batch."
    run = tmp_path / 'run.yaml'
    run.write_text(yaml.safe_dump(dict(model=str(tiny_model), data=str(sample_data / 'train.json'), out_dir=str(tmp_path / 'out'),
                                       batch_size=1, grad_accum=4, steps=1, cache_dir=str(tmp_path / 'cache'), report_to='none')))
    r = run_qvl('train', run, '--plan', 80, timeout=600)
    assert 'planned for 80 GB: micro-batch 4 x 1, no checkpointing' in r.stdout, r.stdout
    saved = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert (saved['batch_size'], saved['grad_accum'], saved['gradient_checkpointing']) == (4, 1, False)


@pytest.fixture(scope='module')
def shaped_3b(tmp_path_factory):
    "A Qwen2.5-VL-3B-shaped checkpoint without weights (config, tokenizer, processor), written through the CLI."
    out = tmp_path_factory.mktemp('shaped') / 'Qwen2.5-VL-3B'
    r = run_qvl('tiny-model', out, '--like', 'Qwen2.5-VL-3B', '--no-weights')
    assert 'no weights' in r.stdout and not list(out.glob('*.safetensors'))
    return out


def plan_json(run, gb, *args) -> dict:
    return json.loads(run_qvl('plan', run, '--gpu-memory', gb, '--json', *args, timeout=900).stdout)


def test_plan_of_a_run_plans_its_own_data(shaped_3b, tmp_path):
    """1344 px JPEGs and no resize budget: `qvl plan` plans the micro-batches the run will see (not a nominal 448 px
    sample), the chosen peak is `qvl estimate` of the written plan on the same data within 1%, and with the margin and
    the CUDA context it stays within the budget; `--image-size` still plans a nominal sample, and says so."""
    from qvl.estimate import CUDA_CONTEXT
    from qvl.plan import PLAN_MARGIN
    from qvl.sample import write_sample_data
    data = write_sample_data(tmp_path / 'data', n=24, seed=0, min_side=1344, max_side=1344, progress=False)
    run = tmp_path / 'run.yaml'
    run.write_text(yaml.safe_dump(dict(model=str(shaped_3b), data=str(data / 'train.json'), method='lora', batch_size=8,
                                       cutoff_len=8192, steps=6, cache_dir=str(tmp_path / 'cache'))))
    before = run.read_text()
    out = plan_json(run, 24, '--out', tmp_path / 'p24.yaml')
    c = out['chosen']
    assert out['planned_on'].startswith("the run's data") and 'largest image 1344x1344' in out['planned_on'], out['planned_on']
    assert c['image_size'] == '1344x1344' and c['micro_batch'] * c['grad_accum'] == 8
    assert c['reserved_gb'] * (1 + PLAN_MARGIN) + CUDA_CONTEXT / 1e9 <= 24
    e = json.loads(run_qvl('estimate', tmp_path / 'p24.yaml', '--json', timeout=900).stdout)
    assert abs(e['peak_allocated_bytes'] / 1e9 / c['peak_gb'] - 1) < 0.01, (e['peak_allocated_bytes'], c)
    assert e['batch']['image_tokens'] == c['micro_batch'] * 2304       # each image 48 x 48 tokens, as the processor sees it
    nominal = plan_json(run, 24, '--image-size', '448', '--out', tmp_path / 'n24.yaml')
    assert nominal['planned_on'].startswith('a nominal sample') and 'image_size given' in nominal['planned_on']
    assert nominal['chosen']['image_size'] == '448x448' and nominal['chosen']['micro_batch_tokens'] < c['micro_batch_tokens'] / 4
    text = run_qvl('plan', run, '--gpu-memory', 24, '--out', tmp_path / 'p.yaml', timeout=900).stdout
    assert "planned on the run's data" in text and 'none of its 19 samples skipped' in text and 'its largest micro-batch: step' in text
    assert run.read_text() == before


def test_plan_of_mixed_sizes_takes_the_largest_micro_batch_and_reports_skips(shaped_3b, tmp_path):
    """Images of mixed sizes: the chosen candidate's peak is that of the largest of its micro-batches in the run's order
    (every micro-batch of every step estimated here one by one), the samples the run skips at its cutoff_len are
    reported with the doctor's reason, and a run in which none can be trained on is refused in one line."""
    import dataclasses
    from qvl.config import load_config
    from qvl.estimate import Setup, estimate_setup
    from qvl.data import run_examples
    from qvl.plan import RunShapes, run_micro_batches
    from qvl.sample import write_sample_data
    data = write_sample_data(tmp_path / 'data', n=40, seed=2, min_side=300, max_side=1800, progress=False)
    run = tmp_path / 'run.yaml'
    run.write_text(yaml.safe_dump(dict(model=str(shaped_3b), data=str(data / 'train.json'), method='lora', batch_size=2,
                                       grad_accum=2, cutoff_len=2500, steps=5, cache_dir=str(tmp_path / 'cache'))))
    out = plan_json(run, 40, '--out', tmp_path / 'p.yaml')
    c = out['chosen']
    cfg = load_config(run)
    ex, _ = run_examples(cfg, progress=False)
    assert ex.skipped and all('image_tokens_truncated' in s['codes'] for s in ex.skipped)
    assert f"{len(ex.skipped)} of {len(ex) + len(ex.skipped)} samples skipped (image_tokens_truncated: " in out['planned_on']
    assert out['skipped'] in out['planned_on']
    chosen = dataclasses.replace(cfg, batch_size=c['micro_batch'], grad_accum=c['grad_accum'])
    k = c['checkpoint_layers']
    s = Setup.of(chosen, gradient_checkpointing=k > 0, checkpoint_layers=k or None)
    shapes = RunShapes(ex, 28)
    peaks = [estimate_setup(s, batch=shapes.batch(mb)).peak_reserved_bytes
             for per_gpu in run_micro_batches(chosen, len(ex)) for mbs in per_gpu for mb in mbs]
    assert len(set(peaks)) > 1 and abs(max(peaks) / 1e9 - c['reserved_gb']) < 1e-9 * max(peaks), (max(peaks), c)
    bad = tmp_path / 'none.yaml'
    bad.write_text(yaml.safe_dump(dict(yaml.safe_load(run.read_text()), cutoff_len=64)))
    r = run_qvl('plan', bad, '--gpu-memory', 40, '--out', tmp_path / 'none.plan.yaml', check=False, timeout=900)
    assert r.returncode == 2 and 'Traceback' not in r.stderr and not (tmp_path / 'none.plan.yaml').exists()
    assert 'no sample can be trained on at cutoff_len 64' in r.stderr.strip().splitlines()[-1], r.stderr


def test_the_shipped_step_time_numbers_are_the_fit_of_the_committed_steps():
    "`benchmarks/step_time_fit.py --check`: a refit of the committed H200 rows gives the shipped file's numbers back."
    import subprocess, sys
    from pathlib import Path
    root = Path(__file__).parents[1]
    r = subprocess.run([sys.executable, str(root / 'benchmarks' / 'step_time_fit.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    from qvl.plan import STEP_TIME, TIME_TERMS
    from qvl.core import fitted
    shipped = fitted('step_time')
    assert {k: STEP_TIME[k] for k in TIME_TERMS} == shipped['values'] and len(shipped['points']) == 13 and shipped['gpu'] == ['NVIDIA H200']


def test_the_shipped_memory_numbers_are_the_fit_of_the_committed_measurements():
    """`benchmarks/memory_fit.py --check`: a refit of the committed H200 measurements (plain and fast steps, kept
    fractions) gives the shipped file's numbers back, and those are the numbers the estimator uses."""
    import subprocess, sys
    from pathlib import Path
    root = Path(__file__).parents[1]
    r = subprocess.run([sys.executable, str(root / 'benchmarks' / 'memory_fit.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    from qvl.core import fitted
    from qvl.estimate import COEFFICIENTS, FAST_KEPT, FAST_KEPT_COMPILED_LORA, QLORA_KEPT
    v = fitted('memory')['values']
    assert {k: x for k, x in COEFFICIENTS.items() if k != 'fitted_on'} == v['coefficients']
    assert (FAST_KEPT, FAST_KEPT_COMPILED_LORA, QLORA_KEPT) == (v['fast_kept'], v['fast_kept_compiled_lora'], v['qlora_kept'])


def test_the_readme_states_the_plain_steps_held_out_error_as_the_committed_table_has_it():
    "README's figure for the plain step's held-out memory error is the one `benchmarks/memory/accuracy.csv` gives."
    import re
    from pathlib import Path
    readme = (Path(__file__).parents[1] / 'README.md').read_text()
    worst, median = (float(v) for v in re.search(r'within ([\d.]+)% \(median ([\d.]+)%\) on every point not used in the fit',
                                                 readme.replace('\n', ' ')).groups())
    a = pd.read_csv(BENCH / 'memory' / 'accuracy.csv')
    err = a[a.split == 'holdout'].error_allocated.abs() * 100
    assert (worst, median) == (round(err.max() + 0.05, 1), round(err.median(), 1)), (err.max(), err.median())


def test_the_readme_states_the_held_out_sets_figures_as_its_committed_report_has_them():
    "README's figures for the held-out set of `qvl train`'s own preparation are those of `benchmarks/memory_heldout/report.txt`."
    import re
    from pathlib import Path
    readme = (Path(__file__).parents[1] / 'README.md').read_text().replace('\n', ' ')
    said = re.search(r'A held-out H200 set of (\d+) points .*? has a median error of ([\d.]+)%, worst ([\d.]+)%; (\d+) of its (\d+) '
                     r'out-of-memory points were predicted not to fit', readme).groups()
    report = (BENCH / 'memory_heldout' / 'report.txt').read_text()
    points, median, worst, oom = re.search(r'all (\d+) points: median ([\d.]+)%, worst ([\d.]+)%; (\d+) out of memory', report).groups()
    predicted = re.search(r'out of memory: \d+ points; the estimate \(reserved\) is above the cap for (\d+)', report).group(1)
    assert said == (points, median, worst, predicted, oom), (said, (points, median, worst, predicted, oom))


def test_the_readme_states_the_estimate_against_qvl_train_as_the_committed_gpu_records_have_it():
    "README's figures for `qvl estimate RUN.yaml` against the peaks `qvl train` logged are those of the committed GPU records."
    import math, re
    from pathlib import Path
    readme = (Path(__file__).parents[1] / 'README.md').read_text().replace('\n', ' ')
    one, qlora, folder, two, multi = re.search(
        r'is within ([\d.]+)% of the logged peak for LoRA \(fast, plain and packed steps\) and full fine-tuning on one GPU and '
        r'([\d.]+)% under it for QLoRA \(Qwen2.5-VL-3B, H200, `(benchmarks/train_gpu/[^`]+)/`\), and within ([\d.]+)% for DDP and '
        r'FSDP on 2 GPUs \(`(benchmarks/train_gpu/[^`]+)`', readme).groups()
    root = Path(__file__).parents[1]
    rec = lambda files: [json.loads(l) for f in files for l in f.read_text().splitlines() if l.strip()]
    err = {r['run']: r['memory']['estimate_error'] for r in rec(sorted((root / folder).glob('*.jsonl')))}
    ups = lambda v: math.ceil(abs(v) * 1000 - 1e-9) / 10            # a percentage, rounded up to 0.1
    assert float(one) == ups(max(abs(err[k]) for k in ('lora', 'plain', 'packed', 'full'))), err
    assert float(qlora) == round(abs(err['qlora']) * 100, 1) and err['qlora'] < 0, err
    two_gpu = {r['run']: r['memory']['estimate_error'] for r in rec([root / multi]) if r['gpus'] == 2}
    assert set(two_gpu) == {'ddp', 'fsdp'} and float(two) == ups(max(map(abs, two_gpu.values()))), two_gpu
