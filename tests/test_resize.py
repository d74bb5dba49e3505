"""Resizing: exact agreement with the Qwen processor, bad files, resume after a kill."""
import csv, json, signal, subprocess, sys, time

import numpy as np
import pytest
from conftest import run_qvl
from hypothesis import given, settings, strategies as st
from PIL import Image

from qvl.resize import AspectRatioError, Budget, image_tokens, smart_resize, vision_patches


@settings(max_examples=5000, deadline=None)
@given(h=st.integers(1, 20000), w=st.integers(1, 20000), factor=st.sampled_from([28, 32]),
       lo=st.integers(1, 200_000), span=st.integers(0, 30_000_000))
def test_smart_resize_matches_transformers(h, w, factor, lo, span):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference
    try: expected = reference(h, w, factor, lo, lo + span)
    except ValueError:
        with pytest.raises(AspectRatioError): smart_resize(h, w, factor, lo, lo + span)
        return
    assert smart_resize(h, w, factor, lo, lo + span) == expected


def test_image_tokens_match_the_processor_grid():
    "Thousands of random sizes and budgets through the real image processor's image_grid_thw."
    from transformers import Qwen2VLImageProcessor
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(2500):
        h, w = (int(v) for v in rng.integers(1, 1400, 2))
        if rng.random() < 0.1: h = max(1, w // int(rng.integers(50, 200)))   # thin images near the limit
        lo = int(rng.integers(28 * 28, 60_000)); hi = int(rng.integers(lo, 600_000))
        patch = int(rng.choice([14, 16])); factor = patch * 2
        if max(h, w) / min(h, w) > 200: continue
        proc = Qwen2VLImageProcessor(size=dict(shortest_edge=lo, longest_edge=hi), patch_size=patch, merge_size=2)
        img = Image.new('RGB', (w, h), (int(h) % 255, 90, 200))
        t, gh, gw = proc(images=[img], return_tensors='pt')['image_grid_thw'][0].tolist()
        assert gh * gw == vision_patches(h, w, factor, lo, hi), (h, w, lo, hi, factor)
        assert gh * gw // 4 == image_tokens(h, w, factor, lo, hi)
        assert (gh * patch, gw * patch) == smart_resize(h, w, factor, lo, hi)
        checked += 1
    assert checked > 2000


def test_budget_output_is_kept_by_the_processor():
    from transformers import Qwen2VLImageProcessor
    rng = np.random.default_rng(2)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(60, 2500, 2))
        b = Budget(max_tokens=int(rng.integers(64, 2000)), max_side=int(rng.integers(224, 2000)),
                   target=(int(rng.integers(200, 900)),) * 2)
        H, W = b.fit(h, w)
        assert H * W <= b.pixel_cap() and max(H, W) <= max(b.max_side, 28) and b.tokens(h, w) <= b.max_tokens
        assert abs(np.log((H / W) / (h / w))) < 0.35 or min(H, W) == 28   # aspect kept up to factor rounding
        lim = b.processor_limits()
        proc = Qwen2VLImageProcessor(size=dict(shortest_edge=lim['min_pixels'], longest_edge=lim['max_pixels']))
        grid = proc(images=[Image.new('RGB', (W, H))], return_tensors='pt')['image_grid_thw'][0].tolist()
        assert (grid[1] * 14, grid[2] * 14) == (H, W)


def _bad_files(src):
    (src / 'zero.jpg').write_bytes(b'')
    (src / 'notes.jpg').write_text('this is not a picture')
    Image.new('RGB', (800, 800), 'red').save(src / 'whole.jpg')
    (src / 'truncated.jpg').write_bytes((src / 'whole.jpg').read_bytes()[:-400])
    (src / 'whole.jpg').unlink()
    Image.new('L', (4200, 20)).save(src / 'thin.png')
    Image.new('RGB', (3000, 3000)).save(src / 'bomb.png')


def test_cli_resize_folder_lists_bad_files_and_exits_1(tmp_path):
    src = tmp_path / 'src'; (src / 'nested').mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (2000, 2000, 3), dtype=np.uint8)).save(src / 'nested' / f'{i}.jpg')
    Image.new('RGBA', (1000, 500), (0, 0, 0, 0)).save(src / 'alpha.png')
    _bad_files(src)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in src.rglob('*') if p.is_file()}
    r = run_qvl('resize', src, tmp_path / 'dst', '--target', '600x600', '--workers', '2',
                '--max-image-pixels', '5000000', check=False)
    assert r.returncode == 1, r.stderr
    rows = {row['path']: row for row in csv.DictReader(open(tmp_path / 'dst' / 'manifest.csv'))}
    assert set(rows) == {'nested/0.jpg', 'nested/1.jpg', 'nested/2.jpg', 'alpha.png', 'zero.jpg', 'notes.jpg',
                         'truncated.jpg', 'thin.png', 'bomb.png'}
    reasons = {k: v['error'] for k, v in rows.items() if v['status'] == 'failed'}
    assert 'empty' in reasons['zero.jpg'] and 'not an image' in reasons['notes.jpg']
    assert 'truncated' in reasons['truncated.jpg'] and 'aspect ratio' in reasons['thin.png']
    assert 'decompression bomb' in reasons['bomb.png'] and len(reasons) == 5
    for name in reasons: assert name in r.stdout
    assert rows['nested/0.jpg']['width'] == '588' and rows['nested/0.jpg']['tokens'] == str(21 * 21)
    assert Image.open(tmp_path / 'dst' / 'nested' / '0.jpg').size == (588, 588)
    assert Image.open(tmp_path / 'dst' / 'alpha.png').getpixel((10, 10)) == (255, 255, 255)
    assert before == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in src.rglob('*') if p.is_file()}
    assert not list((tmp_path / 'dst').rglob('*.part'))


def test_resize_resumes_after_sigkill(tmp_path):
    src = tmp_path / 'src'; src.mkdir()
    for i in range(40):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)).save(src / f'{i:02d}.png')
    dst = tmp_path / 'dst'
    exe = [sys.executable, '-m', 'qvl.cli', 'resize', str(src), str(dst), '--max-tokens', '256', '--workers', '1']
    p = subprocess.Popen(exe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = dst / '.manifest.jsonl'
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 5): time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (dst / 'manifest.csv').exists(), 'the run finished before it could be killed'
    done_before = len(log.read_text().splitlines())
    assert 5 <= done_before < 40
    r = run_qvl('resize', src, dst, '--max-tokens', '256', '--workers', '2')
    assert f'{40 - done_before} resized, {done_before} already done, 0 failed' in r.stdout
    rows = list(csv.DictReader(open(dst / 'manifest.csv')))
    assert len(rows) == 40 and all(int(r['tokens']) <= 256 for r in rows)
    assert not list(dst.glob('.*.part'))


def test_cli_resize_dataset_json(tmp_path, sample_data):
    r = run_qvl('resize', sample_data / 'train.json', tmp_path / 'out', '--max-tokens', '300')
    data = json.loads((tmp_path / 'out' / 'train.json').read_text())
    original = json.loads((sample_data / 'train.json').read_text())
    assert len(data) == len(original)
    for new, old in zip(data, original):
        assert new['messages'] == old['messages'] and new['answer'] == old['answer']
        w, h = Image.open(tmp_path / 'out' / new['images'][0]).size
        assert (w // 28) * (h // 28) <= 300
    assert 'already done' in r.stdout


def test_saved_processor_sees_the_training_resolution(tmp_path, tiny_model, sample_data):
    from transformers import AutoProcessor
    b = Budget(max_tokens=400)
    run_qvl('resize', sample_data / 'test.json', tmp_path / 'out', '--max-tokens', '400', '--processor', tiny_model)
    proc = AutoProcessor.from_pretrained(tmp_path / 'out' / 'processor')
    grid = proc.image_processor(images=[Image.new('RGB', (2000, 1500))], return_tensors='pt')['image_grid_thw'][0]
    assert int(grid.prod()) // 4 == b.tokens(1500, 2000) <= 400


def test_resize_messages_with_image_url_parts_and_the_doctor_sees_the_result(tmp_path, tiny_model):
    "Every image spelling the doctor reads is resized too: `image_url` parts (a string or {'url'}, file:// or not)."
    d = tmp_path / 'd'; (d / 'img').mkdir(parents=True)
    for i in range(3): Image.new('RGB', (1600, 1200), (i * 80, 0, 0)).save(d / 'img' / f'{i}.jpg')
    parts = [dict(type='image_url', image_url=dict(url='file://img/0.jpg')), dict(type='image_url', image_url='img/1.jpg'),
             dict(type='image', image='img/2.jpg')]
    recs = [dict(messages=[dict(role='user', content=[p, dict(type='text', text='colour?')]),
                           dict(role='assistant', content=[dict(type='text', text='red')])]) for p in parts]
    (d / 'data.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
    r = run_qvl('resize', d / 'data.jsonl', tmp_path / 'out', '--max-pixels', '200000')
    assert '3 resized' in r.stdout, r.stdout
    doc = json.loads(run_qvl('doctor', tmp_path / 'out' / 'data.jsonl', '--model', tiny_model, '--json').stdout)
    assert doc['summary']['flagged'] == 0 and doc['summary']['samples'] == 3
    from qvl.formats import image_part
    for rec in map(json.loads, (tmp_path / 'out' / 'data.jsonl').read_text().splitlines()):
        w, h = Image.open(tmp_path / 'out' / image_part(rec['messages'][0]['content'][0])).size
        assert w * h <= 200000
