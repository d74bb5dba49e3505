"""Every dataset format: resize, the doctor and training find the same images in the same order."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qvl.formats import SPECS, format_sample, image_refs, info_entry, load_dataset, parse_sample, write_records

SIZES = {'img/a.png': (640, 320), 'img/b.png': (200, 480), 'img/c.png': (300, 300)}   # (width, height)


def _messages(images: list[str], question: str, answer: str) -> list[dict]:
    return [dict(role='user', content=''.join('<image>' for _ in images) + question), dict(role='assistant', content=answer)]


def write_dataset(root: Path, fmt: str) -> Path:
    "Two samples (two images, then one) in format `fmt`; `alpaca` and `sharegpt` read through dataset_info.json."
    for rel, (w, h) in SIZES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(w).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / rel)
    rows = [(['img/a.png', 'img/b.png'], 'Which is wider?', 'the first'), (['img/c.png'], 'How many marks?', '3')]
    spec = SPECS[fmt if fmt != 'messages-url' else 'messages']
    records = []
    for i, (imgs, q, a) in enumerate(rows):
        sample = parse_sample(dict(id=f's{i}', messages=_messages(imgs, q, a), images=imgs), SPECS['sharegpt'])
        records.append(format_sample(sample, spec))
    if fmt == 'messages-url':    # OpenAI's spelling: image_url parts with file:// URLs
        for r in records:
            for p in r['messages'][0]['content']:
                if p['type'] == 'image': p.update(type='image_url', image_url=dict(url='file://' + p.pop('image')))
    if fmt == 'alpaca':          # a renamed images column, known only from dataset_info.json
        for r in records: r['pictures'] = r.pop('images')
        spec = SPECS['alpaca'].__class__(**{**SPECS['alpaca'].__dict__, 'images': 'pictures'})
    path = root / 'train.json'
    write_records(records, path)
    if fmt in ('alpaca', 'sharegpt'):
        (root / 'dataset_info.json').write_text(json.dumps({'train': info_entry(spec, 'train.json')}))
    return path


@pytest.mark.parametrize('fmt', ['sharegpt', 'sharegpt-conversations', 'alpaca', 'messages', 'messages-url'])
def test_resize_doctor_and_training_see_the_same_images(fmt, tiny_model, tmp_path):
    from qvl.data import build_examples
    from qvl.resize import Budget
    from qvl.folders import resize_dataset
    from qvl.doctor import analyse, inspect_model, model_budget
    path = write_dataset(tmp_path / 'data', fmt)
    ds = load_dataset(path)
    want = [['img/a.png', 'img/b.png'], ['img/c.png']]
    assert [image_refs(r, ds.spec) for r in ds.records] == want
    root = path.parent.resolve()
    # the doctor
    info = inspect_model(tiny_model)
    budget = model_budget(info, Budget(max_pixels=200 * 200))
    checks = analyse(ds, info, budget, progress=False)
    assert [[Path(p) for p in c.paths] for c in checks] == [[root / r for r in refs] for refs in want]
    assert all(not c.findings for c in checks), [c.findings for c in checks]
    # training
    ex = build_examples(ds, tiny_model, budget, progress=False)
    assert [[Path(p) for p, _, _ in ex[i]['images']] for i in range(len(ex))] == [[root / r for r in refs] for refs in want]
    f = budget.factor
    assert [[h * w // f // f for _, h, w in ex[i]['images']] for i in range(len(ex))] == [c.tokens for c in checks]
    # resize: every image is resized, and the written dataset names the resized files where the original named them
    out = tmp_path / 'small'
    manifest = resize_dataset(path, out, Budget(max_pixels=100 * 100), progress=False)
    assert sorted(manifest.path) == sorted(SIZES) and set(manifest.status) == {'ok'}
    small = load_dataset(out / path.name)
    assert small.spec == ds.spec
    refs = [image_refs(r, small.spec) for r in small.records]
    assert [[manifest.set_index('path').output[r] for r in refs_] for refs_ in want] == refs
    for r in sum(refs, []):
        w, h = Image.open(out / r).size
        assert w * h <= 100 * 100 * 1.0 and (w, h) != SIZES[[k for k in SIZES if Path(k).stem in r][0]]
