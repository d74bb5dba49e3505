"""`qvl train` end to end on GPUs, as a user runs it: a real-size Qwen2.5-VL-3B with random weights
(`qvl tiny-model --like`), generated data, the CLI in a subprocess. The default fast LoRA step, `fast: false`, full
fine-tuning, QLoRA, packing, SIGKILL then `--resume`, DDP and FSDP on 2 GPUs, and `qvl export` whose merged
checkpoint loads with transformers and generates. Each run's logged memory peak is within 8% of what `qvl estimate`
says of the same config and data (1 and 2 GPUs).

Each run is recorded (losses, steady-state speed, memory peaks) in the JSON-lines file named by `QVL_GPU_REPORT`
when it is set: benchmarks/train_gpu.py turns it into benchmarks/train_gpu.md."""
import json, math, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest
import yaml

from conftest import run_qvl

pytestmark = pytest.mark.gpu
MODEL = 'Qwen2.5-VL-3B'
SIDE = 448            # 256 visual tokens a sample: a fraction of a second a step, every code path
STEPS = 12            # LoRA runs


def gpus() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    "The random real-size checkpoint (written once, through the CLI) and generated data with SIDE x SIDE images."
    from qvl.sample import write_sample_data
    root, t0 = tmp_path_factory.mktemp('gpu'), time.time()
    run_qvl('tiny-model', root / MODEL, '--like', MODEL, timeout=900)
    print(f"[setup] {MODEL} with random weights written in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    data = write_sample_data(root / 'data', n=24, seed=0, min_side=SIDE, max_side=SIDE, mark=24, task='colour', progress=False)
    return root, data


def config(setup, name, **kw) -> Path:
    root, data = setup
    cfg = dict(model=str(root / MODEL), data=str(data / 'train.json'), out_dir=str(root / 'runs' / name), method='lora',
               learning_rate=1e-4, schedule='constant', steps=STEPS, batch_size=2, cutoff_len=2048, log_every=1, save_every=0,
               cache_dir=str(root / 'cache'), seed=0) | kw
    p = root / 'configs' / f'{name}.yaml'
    p.parent.mkdir(exist_ok=True)
    p.write_text(yaml.safe_dump(cfg))
    return p


def run_dir(setup, name) -> Path: return setup[0] / 'runs' / name


def log(setup, name) -> list[dict]:
    return [json.loads(l) for l in (run_dir(setup, name) / 'log.jsonl').read_text().splitlines()]


def losses(setup, name) -> list[float]: return [r['loss'] for r in log(setup, name)]


_estimates = {}

def peak_vs_estimate(setup, name, gpus=1, cfg=None) -> dict:
    """The largest memory peak the run logged (GB, every step) beside `qvl estimate` of the same config (`cfg`: the one it
    trained, when it is not its config file) and data (its largest micro-batch, on `gpus` GPUs), each taken once."""
    from qvl.core import GB
    if name not in _estimates:
        cfg = cfg or setup[0] / 'configs' / f'{name}.yaml'
        e = json.loads(run_qvl('estimate', cfg, '--gpus', gpus, '--json', timeout=600).stdout)['peak_allocated_bytes'] / GB
        m = max(r['max_allocated_gb'] for r in log(setup, name))
        _estimates[name] = dict(measured_gb=round(m, 3), estimated_gb=round(e, 3), estimate_error=round(e / m - 1, 4))
    return _estimates[name]


def estimate_holds(setup, name, gpus=1, rel=0.08, cfg=None):
    "The goal for memory estimates on settings nothing was fitted on: within 8%."
    p = peak_vs_estimate(setup, name, gpus, cfg)
    assert abs(p['estimate_error']) < rel, p


def record(setup, name, gpus_used=1, cfg=None, **extra):
    "Append the run's losses, summary and memory peak beside its estimate to QVL_GPU_REPORT (when set)."
    dst = os.environ.get('QVL_GPU_REPORT')
    if not dst: return
    import torch
    summary = json.loads((run_dir(setup, name) / 'summary.json').read_text())
    rec = dict(run=name, gpu=torch.cuda.get_device_name(0), gpus=gpus_used, losses=losses(setup, name), summary=summary,
               config=yaml.safe_load((setup[0] / 'configs' / f'{name}.yaml').read_text()),
               memory=peak_vs_estimate(setup, name, gpus_used, cfg), **extra)
    with open(dst, 'a') as f: f.write(json.dumps(rec, default=str) + '\n')


def close(a, b, rel):
    assert len(a) == len(b), (a, b)
    worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
    assert worst <= rel, f"largest relative difference {worst:.2e} > {rel}: {a} vs {b}"
    return worst


def torchrun(cfg: Path, n: int = 2):
    exe = Path(sys.executable).parent / 'torchrun'
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-m', 'torch.distributed.run']
    r = subprocess.run(cmd + ['--nproc_per_node', str(n), '-m', 'qvl.cli', 'train', str(cfg)], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


@pytest.fixture(scope='module')
def lora_run(setup):
    "The default: `qvl train` with the fast step, LoRA, pure bf16, checkpointing, batch 2, a checkpoint every 2 steps."
    r = run_qvl('train', config(setup, 'lora', save_every=2), timeout=900)
    record(setup, 'lora')
    return r


@pytest.fixture(scope='module')
def full_run(setup):
    r = run_qvl('train', config(setup, 'full', method='full', learning_rate=1e-5, steps=6), timeout=900)
    record(setup, 'full')
    return r


def test_default_fast_lora_step_trains(setup, lora_run):
    out = lora_run.stdout
    routes = next(l for l in out.splitlines() if l.startswith('fast step:'))
    for route in ('vision_attention', 'frozen_vision', 'labeled_loss', 'causal_attention', 'fused_kernels', 'aligned_matmuls',
                  'fused_lora', 'compiled_layers'):
        assert route in routes, out
    rows = log(setup, 'lora')
    assert [r['step'] for r in rows] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r['loss']) for r in rows) and rows[-1]['loss'] < rows[0]['loss']
    # warm-up (compilation) is reported apart from the steady state, which has tokens/s, MFU and both memory peaks
    assert 'warmup_s' in rows[0] and all('warmup_s' not in r for r in rows[1:])
    s = json.loads((run_dir(setup, 'lora') / 'summary.json').read_text())
    assert s['warmup_s'] > s['steady_s_per_step'] > 0 and 0 < s['mfu'] < 1 and s['tokens_per_s'] > 0
    assert s['mfu'] < s['hfu'] < 1        # checkpointing recomputes every layer's forward: the hardware does more
    assert all(r['max_allocated_gb'] > 7 and r['max_reserved_gb'] >= r['max_allocated_gb'] for r in rows)
    assert 'warm-up' in out and 'steady state' in out
    assert (run_dir(setup, 'lora') / 'adapter' / 'adapter_config.json').is_file()
    estimate_holds(setup, 'lora')


def test_plain_step_trains_the_same_losses(setup, lora_run):
    run_qvl('train', config(setup, 'plain', fast=False, save_every=2), timeout=900)
    worst = close(losses(setup, 'plain'), losses(setup, 'lora'), 0.03)
    record(setup, 'plain', largest_rel_diff_vs_fast=worst)
    s = {n: json.loads((run_dir(setup, n) / 'summary.json').read_text()) for n in ('plain', 'lora')}
    assert s['lora']['steady_s_per_step'] < s['plain']['steady_s_per_step']
    estimate_holds(setup, 'plain')


def test_full_fine_tuning_trains(setup, full_run):
    rows = log(setup, 'full')
    assert all(math.isfinite(r['loss']) for r in rows) and rows[-1]['loss'] < 0.8 * rows[0]['loss']
    assert (run_dir(setup, 'full') / 'model' / 'config.json').is_file()
    estimate_holds(setup, 'full')


def test_qlora_trains(setup):
    pytest.importorskip('bitsandbytes')
    r = run_qvl('train', config(setup, 'qlora', method='qlora', steps=4), timeout=900)
    record(setup, 'qlora')
    rows = log(setup, 'qlora')
    assert 'compiled_layers off: 4-bit' in r.stdout
    assert len(rows) == 4 and all(math.isfinite(r['loss']) for r in rows)
    assert max(r['max_allocated_gb'] for r in rows) < 6      # 4-bit base weights: far below the 7 GB of bf16 ones
    assert (run_dir(setup, 'qlora') / 'adapter' / 'adapter_config.json').is_file()
    estimate_holds(setup, 'qlora')


def test_packing_trains_the_same_losses(setup, lora_run):
    run_qvl('train', config(setup, 'packed', packing=True), timeout=900)
    worst = close(losses(setup, 'packed'), losses(setup, 'lora'), 0.03)
    record(setup, 'packed', largest_rel_diff_vs_padding=worst)


def test_sigkill_then_resume_gives_the_uninterrupted_losses(setup, lora_run):
    cfg = config(setup, 'killed', save_every=2)
    exe = shutil.which('qvl', path=str(Path(sys.executable).parent))
    p = subprocess.Popen([exe, 'train', str(cfg)] if exe else [sys.executable, '-m', 'qvl.cli', 'train', str(cfg)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = run_dir(setup, 'killed') / 'checkpoints'
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:
        if ck.is_dir() and any((c / 'trainer.json').exists() for c in ck.glob('step-*')) and len(log(setup, 'killed')) >= 3: break
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL); p.wait()
    killed_at = len(log(setup, 'killed'))
    assert killed_at < STEPS, 'the run finished before it could be killed'
    run_qvl('train', cfg, '--resume', timeout=900)
    rows = log(setup, 'killed')
    assert [r['step'] for r in rows] == list(range(1, STEPS + 1))
    worst = close(losses(setup, 'killed'), losses(setup, 'lora'), 0.02)   # bf16 kernels with atomics: not bitwise
    record(setup, 'killed', killed_after_step=killed_at, largest_rel_diff_vs_uninterrupted=worst)


@pytest.mark.skipif(gpus() < 2, reason='needs 2 GPUs')
def test_ddp_on_two_gpus_matches_one(setup, lora_run):
    "torchrun, 2 GPUs with batch 1 each: the global batch of the 1-GPU run with batch 2, the same losses."
    torchrun(config(setup, 'ddp', batch_size=1))
    worst = close(losses(setup, 'ddp'), losses(setup, 'lora'), 0.02)
    record(setup, 'ddp', gpus_used=2, largest_rel_diff_vs_one_gpu=worst)
    estimate_holds(setup, 'ddp', gpus=2)


@pytest.mark.skipif(gpus() < 2, reason='needs 2 GPUs')
def test_fsdp_on_two_gpus_matches_one(setup, full_run):
    torchrun(config(setup, 'fsdp', method='full', learning_rate=1e-5, steps=6, batch_size=1, sharding='fsdp'))
    worst = close(losses(setup, 'fsdp'), losses(setup, 'full'), 0.02)
    record(setup, 'fsdp', gpus_used=2, largest_rel_diff_vs_one_gpu=worst)
    one, two = (max(r['max_allocated_gb'] for r in log(setup, n)[1:]) for n in ('full', 'fsdp'))
    assert two < 0.7 * one, (one, two)          # weights, gradients and AdamW states are sharded
    assert (run_dir(setup, 'fsdp') / 'model' / 'config.json').is_file()
    estimate_holds(setup, 'fsdp', gpus=2)


def test_export_merged_loads_with_transformers_and_generates(setup, lora_run):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    out = setup[0] / 'merged'
    run_qvl('export', run_dir(setup, 'lora'), out, timeout=900)
    proc = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.bfloat16).to('cuda').eval()
    msgs = [dict(role='user', content=[dict(type='image'), dict(type='text', text='what colour is the mark?')])]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    batch = proc(text=[text], images=[Image.new('RGB', (SIDE, SIDE), 'red')], return_tensors='pt').to('cuda')
    with torch.no_grad(): gen = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] == batch['input_ids'].shape[1] + 8 or gen[0, -1] == proc.tokenizer.convert_tokens_to_ids('<|im_end|>')
    assert gen.shape[1] > batch['input_ids'].shape[1]


PLAN_SIDE = 1344      # 2,304 visual tokens an image: no resize budget in the run, so the planner must read the data


@pytest.mark.parametrize('budget', [24, 40])
def test_train_plan_keeps_the_budget_on_the_runs_own_data(setup, budget):
    """`qvl train RUN.yaml --plan GB` on 1344 px JPEGs with no resize budget: the run trains what `qvl plan` chose on the
    run's own data, its logged reserved peak plus what the GPU holds outside PyTorch's allocator stays within GB, and its
    steady s/step is within 15% of the plan's prediction."""
    from qvl.sample import write_sample_data
    root = setup[0]
    data = root / f'data{PLAN_SIDE}'
    if not data.exists():
        write_sample_data(data, n=24, seed=0, min_side=PLAN_SIDE, max_side=PLAN_SIDE, progress=False)
    name, t0 = f'plan{budget}', time.time()
    cfg = config(setup, name, data=str(data / 'train.json'), batch_size=8, cutoff_len=8192, steps=6)
    plan = json.loads(run_qvl('plan', cfg, '--gpu-memory', budget, '--json', '--out', root / f'{name}.plan.yaml', timeout=900).stdout)
    print(f"[{name}] qvl plan {time.time() - t0:.0f} s: {plan['chosen']}", file=sys.stderr, flush=True)
    assert plan['planned_on'].startswith("the run's data") and f'largest image {PLAN_SIDE}x{PLAN_SIDE}' in plan['planned_on']
    c = plan['chosen']
    r = run_qvl('train', cfg, '--plan', budget, timeout=900)
    print(f"[{name}] qvl train --plan {time.time() - t0:.0f} s:\n{r.stdout}", file=sys.stderr, flush=True)
    assert "planned on the run's data" in r.stdout, r.stdout
    saved = json.loads((run_dir(setup, name) / 'config.json').read_text())
    assert (saved['batch_size'], saved['grad_accum']) == (c['micro_batch'], c['grad_accum'])
    assert (saved['checkpoint_layers'] or (36 if saved['gradient_checkpointing'] else 0)) == c['checkpoint_layers']
    rows = log(setup, name)
    used = max(r['max_reserved_gb'] + r['outside_allocator_gb'] for r in rows)
    s = json.loads((run_dir(setup, name) / 'summary.json').read_text())
    record(setup, name, cfg=root / f'{name}.plan.yaml', budget_gb=budget, used_gb=round(used, 3), planned=c,
           time_error=round(c['s_per_step'] / s['steady_s_per_step'] - 1, 4))
    assert used <= budget, (used, budget, c)
    estimate_holds(setup, name, cfg=root / f'{name}.plan.yaml')
    assert abs(c['s_per_step'] / s['steady_s_per_step'] - 1) < 0.15, (c['s_per_step'], s)
