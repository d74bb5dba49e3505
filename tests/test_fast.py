"""The fast step trains exactly as the plain one: same losses from the CLI, on LoRA and full fine-tuning; routes fall back
with a reason; on a GPU the compiled kernels and bf16 give the plain step's loss and gradients."""
import json

import pytest
import yaml

from conftest import run_qvl


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from qvl.sample import write_sample_data
    return write_sample_data(tmp_path_factory.mktemp('fast') / 'colour', n=16, seed=2, min_side=224, max_side=336,
                             mark=40, task='colour', progress=False)


def train(tiny_model, data, out, **kw):
    cfg = dict(model=str(tiny_model), data=str(data / 'train.json'), eval_data=str(data / 'test.json'), out_dir=str(out),
               method='lora', learning_rate=5e-3, steps=6, batch_size=2, target=[308, 224], cutoff_len=1024,
               gradient_checkpointing=True, log_every=1, eval_every=0, cache_dir=str(out.parent / 'cache'), seed=3) | kw
    (out.parent / f'{out.name}.yaml').write_text(yaml.safe_dump(cfg))
    r = run_qvl('train', out.parent / f'{out.name}.yaml')
    log = [json.loads(l) for l in (out / 'log.jsonl').read_text().splitlines()]
    return r, [x['loss'] for x in log if 'loss' in x], [x['eval_loss'] for x in log if 'eval_loss' in x]


@pytest.mark.parametrize('method', ['lora', 'full'])
def test_fast_step_trains_like_the_plain_step(tiny_model, data, tmp_path, method):
    "Same data, same seed: the default (fast) run and `fast: false` give the same loss at every step and the same eval loss."
    extra = dict(freeze_vision=False) if method == 'full' else {}
    r_fast, fast, ev_fast = train(tiny_model, data, tmp_path / 'fast', method=method, **extra)
    r_plain, plain, ev_plain = train(tiny_model, data, tmp_path / 'plain', method=method, fast=False, **extra)
    assert 'fast step: vision_attention' in r_fast.stdout and 'fast step' not in r_plain.stdout
    if method == 'full':   # the vision tower trains: its graph stays, and the run says so
        assert 'frozen_vision off: part of the vision tower trains' in r_fast.stdout
    assert len(fast) == len(plain) == 6
    for f, p in zip(fast, plain): assert abs(f - p) <= 1e-4 * abs(p), (fast, plain)
    assert fast[-1] < fast[0]
    assert ev_fast and abs(ev_fast[-1] - ev_plain[-1]) <= 1e-4 * ev_plain[-1]


@pytest.mark.parametrize('family', ['qwen3_vl', 'qwen3_5'])
def test_qwen3_families_fast_step_trains_like_the_plain_step(family, tiny_qwen3, data, tmp_path):
    """Qwen3-VL (16-pixel patches, one attention over each image, DeepStack) and Qwen3.5 (linear-attention layers
    among full ones): the fast step's losses are the plain step's."""
    from qvl.families import build_tiny_model, image_factor
    from qvl.families import model_config
    model = tiny_qwen3 if family == 'qwen3_vl' else build_tiny_model(tmp_path / 'tiny35', family='qwen3_5')
    assert image_factor(model_config(model)) == 32
    r_fast, fast, ev_fast = train(model, data, tmp_path / 'fast')
    r_plain, plain, ev_plain = train(model, data, tmp_path / 'plain', fast=False)
    assert 'fast step: vision_attention' in r_fast.stdout and len(fast) == len(plain) == 6
    for f, p in zip(fast, plain): assert abs(f - p) <= 1e-4 * abs(p), (fast, plain)
    assert fast[-1] < fast[0] and abs(ev_fast[-1] - ev_plain[-1]) <= 1e-4 * ev_plain[-1]


def test_fast_false_from_the_command_line(tiny_model, data, tmp_path):
    r, losses, _ = train(tiny_model, data, tmp_path / 'a', steps=1)
    cfg = tmp_path / 'a.yaml'
    r2 = run_qvl('train', cfg, '--set', 'fast=false', '--set', f'out_dir={tmp_path / "b"}')
    assert 'fast step' in r.stdout and 'fast step' not in r2.stdout
    bad = run_qvl('train', cfg, '--set', 'fast=maybe', check=False)
    assert bad.returncode == 2 and 'fast' in bad.stderr


@pytest.mark.gpu
def test_fast_step_on_cuda_bf16_matches_plain(tiny_model):
    "On CUDA in bf16 with every route (compiled norms and SwiGLU included): the plain step's loss and gradients."
    import torch
    from peft import LoraConfig, get_peft_model
    from qvl.families import load_tiny
    from qvl.fast import enable, disable, ROUTES
    from qvl.model import llm_linear_names
    from PIL import Image
    import numpy as np
    proc, m = load_tiny(tiny_model)
    m = m.to('cuda', torch.bfloat16)
    torch.manual_seed(0)
    m = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=llm_linear_names(m), init_lora_weights=False),
                       autocast_adapter_dtype=False)
    m.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(use_reentrant=False))
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (252, 364, 3), dtype=np.uint8)) for _ in range(2)]
    b = dict(proc(text=['<|vision_start|><|image_pad|><|vision_end|>what colour is the square? red'] * 2, images=imgs,
                  return_tensors='pt'))
    b['labels'] = b['input_ids'].clone(); b['labels'][:, :-4] = -100
    b['mm_token_type_ids'] = (b['input_ids'] == m.config.image_token_id).int()
    b = {k: v.to('cuda') for k, v in b.items()}
    b['pixel_values'] = b['pixel_values'].to(torch.bfloat16)

    def step():
        m.zero_grad()
        loss = m(**b, use_cache=False).loss
        loss.backward()
        return loss.item(), {n: p.grad.float().clone() for n, p in m.named_parameters() if p.requires_grad}
    ref = step()
    fp = enable(m)
    assert fp.on == [r for r in ROUTES if r != 'aligned_matmuls'], fp     # the tiny vision MLP is 64 wide: aligned already
    assert 'compiled_layers' in fp.on
    assert 'multiple of 8' in fp.off['aligned_matmuls']
    got = step()
    assert abs(got[0] - ref[0]) <= 2e-2 * abs(ref[0])
    for n, g in ref[1].items():
        err = (got[1][n] - g).norm() / g.norm().clamp_min(1e-12)
        assert err < 5e-2, (n, float(err))
    disable(m)
    assert abs(step()[0] - ref[0]) <= 1e-3 * abs(ref[0])
