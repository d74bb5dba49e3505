"""The tiny model round-trips through the loading code a real checkpoint uses, and trains."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from qvl.core import QvlError
from qvl.families import SPECIAL_TOKENS, build_tiny_model, count_parameters, load_tiny, model_config


def chat(question, answer):
    return [dict(role='user', content=[dict(type='image'), dict(type='text', text=question)]),
            dict(role='assistant', content=[dict(type='text', text=answer)])]


@pytest.mark.parametrize('family', ['qwen2_5_vl', 'qwen2_vl'])
def test_tiny_model_round_trip_trains_on_a_2000px_image(tmp_path, family, sample_data):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    path = build_tiny_model(tmp_path / family, family=family, seed=1)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert model.config.model_type == family
    tok = processor.tokenizer
    cfg = json.loads((path / 'config.json').read_text())
    for key, token in [('image_token_id', '<|image_pad|>'), ('video_token_id', '<|video_pad|>'),
                       ('vision_start_token_id', '<|vision_start|>'), ('vision_end_token_id', '<|vision_end|>')]:
        assert cfg[key] == tok.convert_tokens_to_ids(token)
    for t in SPECIAL_TOKENS:
        assert len(tok(t).input_ids) == 1, t

    # a real 2000x2000 JPEG from the sample generator, through the processor
    from qvl.sample import make_image
    import random
    s = make_image(random.Random(0), 2000, 2000, 'count')
    s.image.save(tmp_path / 'big.jpg', quality=92)
    img = Image.open(tmp_path / 'big.jpg')
    text = processor.apply_chat_template(chat('How many red marks are in the image?', s.answer))
    batch = processor(text=[text], images=[img], return_tensors='pt')
    assert batch['image_grid_thw'].tolist() == [[1, 142, 142]]
    assert int((batch['input_ids'] == cfg['image_token_id']).sum()) == 71 * 71

    labels = batch['input_ids'].clone()
    labels[labels == cfg['image_token_id']] = -100
    out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_tiny_model_is_deterministic(tmp_path):
    from safetensors.torch import load_file
    a = load_file(build_tiny_model(tmp_path / 'a', seed=5) / 'model.safetensors')
    b = load_file(build_tiny_model(tmp_path / 'b', seed=5) / 'model.safetensors')
    c = load_file(build_tiny_model(tmp_path / 'c', seed=6) / 'model.safetensors')
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize('name,params', [('Qwen2.5-VL-7B', 8_292_166_656), ('Qwen2.5-VL-3B', 3_754_622_976),
                                         ('Qwen/Qwen2.5-VL-7B-Instruct', 8_292_166_656)])
def test_shipped_configs_have_published_parameter_counts(name, params):
    assert count_parameters(model_config(name)) == params


def test_model_config_reads_a_checkpoint_directory(tiny_model):
    cfg = model_config(tiny_model)
    assert cfg.model_type == 'qwen2_5_vl' and cfg.text_config.hidden_size == 64


@pytest.mark.parametrize('bad', ['Qwen2.5-VL-9B', 'llava-hf/llava-1.5-7b-hf'])
def test_unknown_name_is_one_line_naming_choices(bad):
    with pytest.raises(QvlError) as e:
        model_config(bad)
    msg = str(e.value)
    assert '\n' not in msg and 'Qwen2.5-VL-7B' in msg and 'Qwen2-VL-2B' in msg and bad in msg


def test_directory_without_config_is_one_line(tmp_path):
    with pytest.raises(QvlError) as e:
        model_config(tmp_path)
    assert '\n' not in str(e.value) and 'no config.json' in str(e.value)


@pytest.mark.gpu
def test_tiny_model_trains_on_gpu_in_bf16(tiny_model):
    processor, model = load_tiny(tiny_model)
    model = model.to('cuda', torch.bfloat16)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (896, 896, 3), dtype=np.uint8))
    batch = processor(text=[processor.apply_chat_template(chat('What colour?', 'red'))], images=[img],
                      return_tensors='pt').to('cuda')
    batch['pixel_values'] = batch['pixel_values'].to(torch.bfloat16)
    out = model(**batch, labels=batch['input_ids'])
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_a_sigterm_a_library_swallowed_still_stops_the_write(tmp_path):
    import os, signal
    from qvl import core
    old = signal.getsignal(signal.SIGTERM)
    try:
        core.on_sigterm()
        try: os.kill(os.getpid(), signal.SIGTERM); [None for _ in range(10**5)]     # the handler runs in this loop
        except KeyboardInterrupt: pass                                             # ... and a library eats it
        with pytest.raises(KeyboardInterrupt): core.write_text(tmp_path / 'a.txt', 'x')
        with pytest.raises(KeyboardInterrupt): core.atomic_dir(tmp_path / 'd', lambda t: (t / 'x').write_text('x'))
        assert list(tmp_path.iterdir()) == []          # neither the file nor the folder nor a temporary sibling
    finally:
        core._SIGNALLED.clear(); signal.signal(signal.SIGTERM, old)
