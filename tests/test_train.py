"""Training end to end on the tiny model: learning, exact resume after SIGKILL, peft adapters, DDP, bad input."""
import json, math, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import pandas as pd
import yaml

from conftest import run_qvl


@pytest.fixture(scope='module')
def colour_data(tmp_path_factory):
    from qvl.sample import write_sample_data
    return write_sample_data(tmp_path_factory.mktemp('train') / 'colour', n=40, seed=5, min_side=224, max_side=336,
                             mark=40, task='colour', progress=False)


def write_config(path, **kw):
    path.write_text(yaml.safe_dump(kw))
    return path


def base_config(tiny_model, data, out, **kw):
    return dict(model=str(tiny_model), data=str(data / 'train.json'), eval_data=str(data / 'test.json'), out_dir=str(out),
                method='full', freeze_vision=False, learning_rate=2e-3, steps=12, batch_size=4, target=[224, 224],
                cutoff_len=1024, gradient_checkpointing=False, log_every=1, save_every=4, eval_every=6,
                cache_dir=str(out.parent / 'cache'), seed=1) | kw


def losses(run):
    return [(r['step'], r['loss']) for r in map(json.loads, (run / 'log.jsonl').read_text().splitlines())]


def test_tiny_default_learns_and_detail_check_falls(tmp_path):
    "The built-in default run: loss falls, held-out accuracy far above the 25% chance, lower at tiny budgets."
    r = run_qvl('train', '--out', tmp_path / 'run', timeout=1500)
    assert 'detail check' in r.stdout
    log = [json.loads(l) for l in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()]
    assert log[-1]['loss'] < 0.5 * log[0]['loss']
    import pandas as pd
    dc = pd.read_csv(tmp_path / 'run' / 'detail_check.csv').set_index('side')
    assert dc.loc[336, 'accuracy'] >= 0.6, dc
    assert dc.loc[56, 'accuracy'] < dc.loc[336, 'accuracy'] - 0.2, dc
    assert dc.loc[336, 'visual_tokens'] > 10 * dc.loc[56, 'visual_tokens']


def test_sigkill_and_resume_gives_the_same_loss_curve(tiny_model, colour_data, tmp_path):
    full = write_config(tmp_path / 'a.yaml', **base_config(tiny_model, colour_data, tmp_path / 'a'))
    run_qvl('train', full)
    cfg = write_config(tmp_path / 'b.yaml', **base_config(tiny_model, colour_data, tmp_path / 'b'))
    exe = [str(Path(sys.executable).parent / 'qvl'), 'train', str(cfg)]
    p = subprocess.Popen(exe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / 'b' / 'log.jsonl'
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 7: break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    assert len(log.read_text().splitlines()) < 12, 'the run finished before it could be killed'
    # a half-written checkpoint (no trainer.json) must never be picked
    (tmp_path / 'b' / 'checkpoints' / 'step-0000011').mkdir(parents=True)
    run_qvl('train', cfg, '--resume')
    a, b = losses(tmp_path / 'a'), losses(tmp_path / 'b')
    assert [s for s, _ in b] == list(range(1, 13))
    for (sa, la), (sb, lb) in zip(a, b):
        assert sa == sb and abs(la - lb) < 1e-5 * max(1, abs(la)), (sa, la, lb)


def test_adapter_loads_with_peft_and_matches(tiny_model, colour_data, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText
    from qvl.data import collate
    from qvl.train import Trainer
    from qvl.config import config_from_dict
    cfg = config_from_dict(base_config(tiny_model, colour_data, tmp_path / 'lora', method='lora', steps=4, save_every=0,
                                       learning_rate=5e-3, eval_every=0))
    tr = Trainer(cfg, progress=False, plot=False)
    tr.fit()
    base = AutoModelForImageTextToText.from_pretrained(tiny_model)
    peft_model = PeftModel.from_pretrained(base, tmp_path / 'lora' / 'adapter').eval()
    b = collate([tr.train_set[i] for i in range(3)], tr.pad_id, image_token_id=tr.image_type_id)
    tr.module.eval()
    with torch.no_grad():
        ours, theirs = tr.module(**b).logits, peft_model(**b).logits
        plain = AutoModelForImageTextToText.from_pretrained(tiny_model).eval()(**b).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)       # the adapter changed something
    run_qvl('export', tmp_path / 'lora', tmp_path / 'merged')
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / 'merged').eval()
    with torch.no_grad(): assert torch.allclose(merged(**b).logits, ours, atol=1e-4)
    # a Hugging Face artifact: the processor with the training's pixel limits beside the adapter and in the export,
    # a model card with base, data hash and final loss, and the export generates
    from transformers import AutoProcessor
    from qvl.core import file_digest
    limits = cfg.budget().processor_limits()
    for d in (tmp_path / 'lora' / 'adapter', tmp_path / 'merged'):
        ip = AutoProcessor.from_pretrained(d).image_processor
        assert (ip.size['shortest_edge'], ip.size['longest_edge']) == (limits['min_pixels'], limits['max_pixels'])
    card = (tmp_path / 'lora' / 'adapter' / 'README.md').read_text()
    assert f'base_model: {tiny_model}' in card and file_digest(colour_data / 'train.json')[:16] in card
    assert f"final loss {tr.history[-1]['loss']:.4f}" in card
    gen = merged.generate(**{k: v for k, v in b.items() if k != 'labels'}, min_new_tokens=3, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == b['input_ids'].shape[1] + 3
    # TensorBoard (the default report_to), read back with TensorBoard's own event reader: every logged step and value
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(tmp_path / 'lora' / 'tensorboard')); ev.Reload()
    assert [(e.step, round(e.value, 5)) for e in ev.Scalars('train/loss')] == [(s, round(l, 5)) for s, l in losses(tmp_path / 'lora')]
    assert {'train/lr', 'train/tokens_per_s', 'eval/loss'} <= set(ev.Tags()['scalars'])


@pytest.mark.parametrize('sharding', ['ddp', 'fsdp'])
def test_two_processes_match_one(tiny_model, colour_data, tmp_path, sharding):
    """torchrun with 2 processes (gloo, CPU) and batch 1 each gives the losses of 1 process with batch 2, replicated (DDP)
    or sharded layer by layer (FSDP), and saves the same full weights."""
    import torch
    from safetensors.torch import load_file
    one = write_config(tmp_path / 'one.yaml', **base_config(tiny_model, colour_data, tmp_path / 'one', batch_size=2,
                                                          steps=4, save_every=0, eval_every=0))
    two = write_config(tmp_path / 'two.yaml', **base_config(tiny_model, colour_data, tmp_path / 'two', batch_size=1,
                                                          steps=4, save_every=0, eval_every=0, sharding=sharding))
    run_qvl('train', one)
    torchrun = Path(sys.executable).parent / 'torchrun'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run([str(torchrun), '--nproc_per_node', '2', '-m', 'qvl.cli', 'train', str(two)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'terminate called' not in r.stderr       # every rank tears its process group down before leaving
    assert f'(2 processes, {sharding})' in r.stdout
    for (s1, l1), (s2, l2) in zip(losses(tmp_path / 'one'), losses(tmp_path / 'two')):
        assert s1 == s2 and abs(l1 - l2) < 1e-4 * max(1, abs(l1)), (s1, l1, l2)
    w1, w2 = (load_file(tmp_path / run / 'model' / 'model.safetensors') for run in ('one', 'two'))
    assert w1.keys() == w2.keys()
    assert all(torch.allclose(w1[k].float(), w2[k].float(), atol=1e-4) for k in w1)


def test_broken_samples_are_skipped_and_listed(tiny_model, colour_data, tmp_path):
    data = json.loads((colour_data / 'train.json').read_text())
    data[1]['images'] = ['images/missing.jpg']
    data[2]['messages'][0]['content'] = '<image><image>' + data[2]['messages'][0]['content']
    bad = colour_data / 'broken.json'
    bad.write_text(json.dumps(data))
    cfg = base_config(tiny_model, colour_data, tmp_path / 'run', steps=2, save_every=0, eval_every=0) | dict(data=str(bad))
    r = run_qvl('train', write_config(tmp_path / 'c.yaml', **cfg))
    assert '2 skipped' in r.stdout
    skipped = json.loads((tmp_path / 'run' / 'skipped.json').read_text())
    assert [(s['index'], s['codes']) for s in skipped] == [(1, ['missing_image']), (2, ['placeholder_count_mismatch'])]
    r = run_qvl('train', write_config(tmp_path / 's.yaml', **cfg, strict=True), check=False)
    assert r.returncode == 2 and 'strict mode' in r.stderr


@pytest.mark.parametrize('change,needle', [(dict(learning_rat=1e-3), 'unknown config key(s) learning_rat'),
                                           (dict(steps='ten'), "'steps' should be int"),
                                           (dict(method='dora'), 'choose one of lora, full, qlora'),
                                           (dict(batch_size=0), 'batch_size must be at least 1')])
def test_bad_config_fails_before_any_work(tiny_model, colour_data, tmp_path, change, needle):
    cfg = write_config(tmp_path / 'c.yaml', **base_config(tiny_model, colour_data, tmp_path / 'run') | change)
    t0 = time.time()
    r = run_qvl('train', cfg, check=False)
    assert r.returncode == 2 and needle in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path / 'run').exists() and time.time() - t0 < 30


def test_packing_trains_the_same_losses_as_padding(tiny_model, colour_data, tmp_path):
    "Padding-free packing (one row per micro-batch, attention kept inside each example) changes no loss."
    for packing in (False, True):
        cfg = base_config(tiny_model, colour_data, tmp_path / f'p{packing}', steps=4, save_every=0, eval_every=0, packing=packing)
        run_qvl('train', write_config(tmp_path / f'p{packing}.yaml', **cfg))
    for (s1, l1), (s2, l2) in zip(losses(tmp_path / 'pFalse'), losses(tmp_path / 'pTrue')):
        assert s1 == s2 and abs(l1 - l2) < 1e-4 * max(1, abs(l1)), (s1, l1, l2)


def test_cuda_decisions_are_made_by_functions_a_cpu_can_call(tiny_model):
    "Every choice `Trainer` makes only on a GPU, taken for a stated device: a mistake in a CUDA-only branch fails here."
    import torch
    from qvl.families import load_tiny
    from qvl.fast import device_routes, disable, enable
    from qvl.config import config_from_dict, resolve_precision, sharding_mode
    from qvl.model import decoder_layers
    from qvl.train import make_optimizer, optimizer_options
    lora = config_from_dict(dict(model=str(tiny_model), data='d.json'))
    full = config_from_dict(dict(model=str(tiny_model), data='d.json', method='full', sharding='fsdp'))
    assert resolve_precision('auto', 'cuda') == 'bf16' and resolve_precision('auto', torch.device('cpu')) == 'fp32'
    assert [sharding_mode(full, 1), sharding_mode(full, 2), sharding_mode(lora, 2)] == [None, 'fsdp', 'ddp']
    assert optimizer_options(lora, 'cuda', None) == {'fused': True} == optimizer_options(lora, 'cuda', 'ddp')
    assert optimizer_options(lora, 'cpu', None) == {} == optimizer_options(full, 'cuda', 'fsdp')
    assert optimizer_options(config_from_dict(dict(model='m', data='d', fast=False)), 'cuda', None) == {}
    _, m = load_tiny(tiny_model)
    opt = make_optimizer([p for p in m.parameters()], lora, 'cuda', None)     # the GPU's optimizer, built here
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults['fused'] is True
    assert len(decoder_layers(m)) == m.config.text_config.num_hidden_layers
    # the fast step's GPU routes: on for a CUDA device with triton, off with the reason otherwise
    assert device_routes('cuda', triton=True) == dict(fused_kernels=None, aligned_matmuls=None, compiled_layers=None)
    assert 'triton is not installed' in device_routes('cuda', triton=False)['compiled_layers']
    assert all('no CUDA GPU' in why for why in device_routes('cpu', triton=True).values())
    fp = enable(m, device_type='cuda')          # installs (compiles lazily; nothing runs here)
    import importlib.util
    if importlib.util.find_spec('triton'): assert {'fused_kernels', 'compiled_layers'} <= set(fp.on), fp
    disable(m)
    # Qwen3.5: its linear-attention layers stay eager on a GPU, its full-attention layers are compiled
    from qvl.families import default_tiny_model
    from qvl.fast import compilable_layers
    _, q35 = load_tiny(default_tiny_model('qwen3_5'))
    layers = decoder_layers(q35)
    kinds = q35.config.text_config.layer_types
    assert [l in compilable_layers(layers) for l in layers] == [k == 'full_attention' for k in kinds] and 'linear_attention' in kinds
    if importlib.util.find_spec('triton'):           # and the fast step says so
        fp = enable(q35, device_type='cuda')
        n_lin = kinds.count('linear_attention')
        assert f'{n_lin} of {len(kinds)} decoder layers (linear attention) stay eager' in str(fp), fp
        disable(q35)


def test_log_keeps_warmup_apart_and_reports_speed_and_mfu(tiny_model, colour_data, tmp_path):
    "The first step (compilation, autotuning) is reported apart; every logged step has tokens/s and TFLOP/s."
    from qvl.trackers import step_rates
    rows = [dict(seconds=10.0, tokens=100, flops=1e12, warmup=True), dict(seconds=1.0, tokens=100, flops=1e12),
            dict(seconds=1.0, tokens=100, flops=1e12)]
    r = step_rates(rows, peak_flops=2e12)
    assert r == dict(tokens_per_s=100.0, tflops=1.0, mfu=0.5, hfu=0.5, warmup_s=10.0)
    assert step_rates(rows[:1])['tokens_per_s'] == 10.0         # a window of the warm-up alone: its own rate
    cfg = base_config(tiny_model, colour_data, tmp_path / 'run', steps=4, save_every=0, eval_every=0, log_every=2)
    out = run_qvl('train', write_config(tmp_path / 'c.yaml', **cfg)).stdout
    log = [json.loads(l) for l in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()]
    assert [r['step'] for r in log] == [2, 4] and 'warmup_s' in log[0] and 'warmup_s' not in log[1]
    assert all(r['tokens_per_s'] > 0 and r['tflops'] > 0 for r in log)
    s = json.loads((tmp_path / 'run' / 'summary.json').read_text())
    assert s['steady_steps'] == 3 and s['warmup_s'] > 0 and s['steady_s_per_step'] > 0 and 'mfu' not in s   # no GPU peak on a CPU
    assert 'warm-up' in out and 'steady state' in out


@pytest.mark.parametrize('family', ['qwen2_vl', 'qwen2_5_vl', 'qwen3_vl', 'qwen3_5'])
def test_the_default_run_trains_each_family_and_checks_detail(family, tmp_path):
    "`qvl train --family F`: the built-in default run on each family's tiny model; the detail check counts visual tokens with its factor."
    out = tmp_path / family
    r = run_qvl('train', '--family', family, '--steps', '4', '--out', out, '--set', 'batch_size=4', '--set', 'log_every=1',
                '--set', 'eval_every=0', '--set', 'save_every=0', '--set', 'warmup_steps=0', '--set', 'detail_budgets=[100]')
    cfg = json.loads((out / 'config.json').read_text())
    assert family in Path(cfg['model']).name and 'detail check' in r.stdout
    assert len(losses(out)) == 4 and all(math.isfinite(l) for _, l in losses(out))
    dc = pd.read_csv(out / 'detail_check.csv')
    # the visual tokens of each held-out image at a 100x100 pixel budget, in the family's own tokens (28 or 32 pixels)
    from qvl.families import image_factor
    from qvl.families import model_config
    from qvl.formats import image_refs, load_dataset
    from qvl.resize import Budget, image_size
    f = image_factor(model_config(cfg['model']))
    assert f == (32 if family.startswith('qwen3') else 28)
    ds = load_dataset(cfg['eval_data'])
    want = [Budget(target=(100, 100), factor=f).tokens(*reversed(image_size(ds.root / image_refs(r, ds.spec)[0]))) for r in ds.records]
    assert abs(dc.visual_tokens.iloc[0] - sum(want) / len(want)) < 1e-6 and dc.samples.iloc[0] == len(want), dc


def _wandb_records(path: Path) -> list:
    """The records of a W&B run file (`run-ID.wandb`), parsed with W&B's own protobuf messages. The file is a
    LevelDB-style log: a 7-byte header, then in 32 KiB blocks chunks of [crc32 (4), length (2), type (1), data]."""
    import struct
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b':W&B', data[:8]
    pos, part, records = 7, b'', []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7: pos += left; continue                    # a block's zero-filled tail
        _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
        if kind == 0: pos += left; continue
        part += data[pos + 7:pos + 7 + length]; pos += 7 + length
        if kind in (1, 4):                                    # a full record, or the last chunk of one
            rec = pb.Record(); rec.ParseFromString(part); records.append(rec); part = b''
    return records


def test_trackers_record_every_logged_step_and_resume_the_same_run(tiny_model, colour_data, tmp_path):
    """report_to mlflow / wandb: every logged step (loss, lr, tokens/s, eval loss) under the same names, read back with
    MLflow's client and W&B's own record format; the config goes along; `--resume` continues the same tracker run."""
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    base = base_config(tiny_model, colour_data, tmp_path / 'x', steps=4, save_every=2, eval_every=2)
    for tracker in ('mlflow', 'wandb'):
        out = tmp_path / tracker
        cfg = base | dict(out_dir=str(out), report_to=tracker, tracking_uri=uri)
        run_qvl('train', write_config(tmp_path / f'{tracker}-2.yaml', **cfg | dict(steps=2)))
        run_qvl('train', write_config(tmp_path / f'{tracker}.yaml', **cfg), '--resume')     # steps 3-4 into the same run
        logged = [json.loads(l) for l in (out / 'log.jsonl').read_text().splitlines()]
        assert [r['step'] for r in logged] == [1, 2, 3, 4]
        run_id = json.loads((out / 'tracker.json').read_text())[tracker]
        if tracker == 'mlflow':
            c = MlflowClient(tracking_uri=uri)
            run = c.get_run(run_id)
            assert run.info.status == 'FINISHED' and run.data.params['method'] == '"full"'
            assert [(m.step, round(m.value, 5)) for m in sorted(c.get_metric_history(run_id, 'train/loss'), key=lambda m: m.step)] \
                == [(r['step'], round(r['loss'], 5)) for r in logged]
            assert {'train/lr', 'train/tokens_per_s', 'eval/loss', 'summary/steady_s_per_step'} <= set(run.data.metrics)
            assert len(c.search_runs([run.info.experiment_id])) == 1          # resumed, not a second run
        else:
            files = sorted(out.glob('wandb/offline-run-*/run-*.wandb'))
            assert files and all(run_id in f.name for f in files)
            history = {}
            for f in files:
                for rec in _wandb_records(f):
                    if rec.WhichOneof('record_type') == 'history':
                        items = {i.key or '/'.join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                        history[items['_step']] = items
            assert [(s, round(h['train/loss'], 5)) for s, h in sorted(history.items())] == \
                [(r['step'], round(r['loss'], 5)) for r in logged]
            assert 'eval/loss' in history[2] and 'train/tokens_per_s' in history[4]
            config = {i.key: json.loads(i.value_json) for rec in _wandb_records(files[0]) if rec.WhichOneof('record_type') == 'run'
                      for i in rec.run.config.update}
            assert config['method'] == 'full' and config['steps'] == 2
