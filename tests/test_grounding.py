"""Grounding boxes in each family's convention, on generated images whose box content is known: a red rectangle.
Resizing and `qvl fix --strategy shrink` carry absolute boxes with their image, `qvl convert --boxes` rewrites a
convention as another, and the doctor flags boxes in the wrong syntax or past the image."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_qvl
from qvl.formats import read_records, text_slots, write_records
from qvl.boxes import find_boxes

RED = (300, 200, 660, 440)      # x1, y1, x2, y2 of the red rectangle in the 1200x800 original
# ... as a Qwen2.5-VL answer writes it: in the image as the processor resizes it (1204x812), the one convention
FRAMED = tuple(round(v * f / s) for v, f, s in zip(RED, (1204, 812) * 2, (1200, 800) * 2))


def red_box(path) -> tuple:
    "The bounding box of the red pixels of an image (x1, y1, x2, y2, exclusive ends)."
    a = np.asarray(Image.open(path).convert('RGB')).astype(int)
    ys, xs = np.nonzero((a[..., 0] > 150) & (a[..., 1] < 100) & (a[..., 2] < 100))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def dataset(root: Path, answer: str, n: int = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    img = np.full((800, 1200, 3), 255, np.uint8)
    img[RED[1]:RED[3], RED[0]:RED[2]] = (220, 20, 20)
    Image.fromarray(img).save(root / 'scene.png')
    recs = [dict(id=f'g{i}', messages=[dict(role='user', content='<image>Where is the red box?'),
                                      dict(role='assistant', content=answer)], images=['scene.png']) for i in range(n)]
    return write_records(recs, root / 'data.json')


def boxes_of(path: Path) -> list:
    return [b[2] for r in read_records(path) for c, k in text_slots(r) for b in find_boxes(c[k])]


def test_resize_then_convert_keeps_each_box_on_its_red_rectangle(tiny_model, tmp_path):
    "Qwen2.5-VL's absolute box follows the image through `qvl resize`; `qvl convert --boxes` puts it on Qwen3-VL's 0-1000 grid."
    data = dataset(tmp_path / 'd', '{"bbox_2d": [%d, %d, %d, %d], "label": "red box"}' % FRAMED)
    run_qvl('resize', data, tmp_path / 'small', '--max-pixels', str(400 * 300), '--model', tiny_model)
    small = tmp_path / 'small' / 'data.json'
    (box,) = boxes_of(small)
    img = tmp_path / 'small' / read_records(small)[0]['images'][0]
    w, h = Image.open(img).size
    assert (w, h) != (1200, 800) and np.allclose(box, red_box(img), atol=2), (box, red_box(img))
    run_qvl('convert', small, tmp_path / 'q3.jsonl', '--boxes', 'qwen3_vl')
    (grid,) = boxes_of(tmp_path / 'q3.jsonl')
    want = [v * 1000 / s for v, s in zip(red_box(img), (w, h, w, h))]
    assert np.allclose(grid, want, atol=6), (grid, want)
    # a relative box does not move when its image is resized for a Qwen3-VL model
    q3 = dataset(tmp_path / 'd3', '{"bbox_2d": [%d, %d, %d, %d]}' % tuple(round(v) for v in want))
    run_qvl('resize', q3, tmp_path / 'small3', '--max-pixels', str(400 * 300), '--model', 'Qwen3-VL-8B')
    assert boxes_of(tmp_path / 'small3' / 'data.json') == boxes_of(q3)


def test_doctor_flags_boxes_in_the_wrong_convention_or_past_the_image(tiny_model, tmp_path):
    codes = lambda data, *extra: {f['code'] for f in json.loads(run_qvl('doctor', data, '--model', tiny_model, '--json', *extra,
                                                                        check=False).stdout)['samples']}
    ok = dataset(tmp_path / 'ok', '{"bbox_2d": [%d, %d, %d, %d]}' % RED)
    assert not codes(ok) & {'box_convention_mismatch', 'box_outside_image', 'box_in_original_pixels'}
    q2 = dataset(tmp_path / 'q2', '<|box_start|>(250,250),(550,550)<|box_end|>')      # Qwen2-VL's tokens for a Qwen2.5-VL model
    assert 'box_convention_mismatch' in codes(q2)
    past = dataset(tmp_path / 'past', '{"bbox_2d": [300, 200, 1900, 440]}')
    assert 'box_outside_image' in codes(past)
    # under a 300x300 pixel budget the processor shrinks the image: a box in the original's pixels is past the resized one
    assert 'box_in_original_pixels' in codes(ok, '--max-pixels', str(300 * 300))


def test_fix_shrink_carries_boxes_with_their_image(tiny_model, tmp_path):
    "`qvl fix --strategy shrink` writes a smaller image for a sample over cutoff_len; its absolute box is rescaled to it."
    data = dataset(tmp_path / 'd', '{"bbox_2d": [%d, %d, %d, %d], "label": "red box"}' % FRAMED)
    r = run_qvl('fix', data, tmp_path / 'fixed', '--model', tiny_model, '--cutoff-len', '300', '--floor-tokens', '16')
    report = json.loads((tmp_path / 'fixed' / 'fix_report.json').read_text())
    assert len(report['shrunk']) == 1, r.stdout
    out = tmp_path / 'fixed' / 'data.json'
    (box,) = boxes_of(out)
    img = tmp_path / 'fixed' / read_records(out)[0]['images'][0]
    assert Image.open(img).size == tuple(report['shrunk'][0]['sizes'][0])
    assert np.allclose(box, red_box(img), atol=2), (box, red_box(img))


@pytest.mark.parametrize('family', ['qwen2_vl', 'qwen2_5_vl', 'qwen3_vl'])
def test_each_family_has_its_convention(family):
    from qvl.boxes import box_style
    s = box_style(family)
    assert (s.syntax, s.scale) == {'qwen2_vl': ('tokens', 'grid1000'), 'qwen2_5_vl': ('json', 'pixels'),
                                   'qwen3_vl': ('json', 'grid1000')}[family]
