"""Bad or awkward input through the CLI: sources are never written over, reruns redo what changed, damaged artifacts
are passed over or rebuilt, every error is one line with no traceback, killed runs leave no workers or debris; and a
fuzz-style run over generated bad files, datasets and configs."""
import csv, json, os, random, re, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import run_qvl


def tree(root: Path) -> dict:
    "Every file under `root` with its bytes: to assert sources are byte-identical."
    return {p: p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def image(path: Path, size=(400, 300), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def one_line_error(r):
    "A failure says one `qvl: error:` line on stderr and never shows a traceback."
    assert 'Traceback' not in r.stderr, r.stderr
    errors = [l for l in r.stderr.splitlines() if l.startswith('qvl: error:')]
    assert len(errors) == (1 if r.returncode == 2 else len(errors)) and len(errors) <= 1, r.stderr
    return errors[0] if errors else ''


# -- sources are never written over --------------------------------------------------------------------------------
def test_resize_dataset_with_outside_images_never_touches_them(tmp_path):
    data = tmp_path / 'data'
    outside = image(tmp_path / 'elsewhere' / 'far.jpg', (900, 600), 1)
    image(data / 'images' / 'near.jpg', (900, 600), 2)
    samples = [dict(messages=[dict(role='user', content='<image>what?'), dict(role='assistant', content='a')], images=[ref])
               for ref in (str(outside), '../elsewhere/far.jpg', 'images/near.jpg', 'images/../images/near.jpg')]
    (data / 'train.json').write_text(json.dumps(samples))
    before = tree(tmp_path)
    r = run_qvl('resize', data / 'train.json', tmp_path / 'out', '--max-pixels', '100000', '--allow-outside')
    assert tree(tmp_path / 'elsewhere') == {p: b for p, b in before.items() if 'elsewhere' in p.parts}
    assert all(tree(tmp_path)[p] == b for p, b in before.items())            # every source byte-identical
    new = json.loads((tmp_path / 'out' / 'train.json').read_text())
    refs = [s['images'][0] for s in new]
    for ref in refs:
        out = (tmp_path / 'out' / ref).resolve()
        assert (tmp_path / 'out').resolve() in out.parents and out.is_file(), ref
        w, h = Image.open(out).size
        assert w * h <= 100000
    assert refs[0].startswith('_outside/') and refs[0] == refs[1] and refs[2] == 'images/near.jpg', refs
    assert 'failed' not in r.stdout.split('\n')[0] or '0 failed' in r.stdout


def test_resize_into_a_folder_that_holds_the_source_is_refused(tmp_path):
    photos = tmp_path / 'photos'
    image(photos / 'x' / 'x' / 'a.jpg'); image(photos / 'x' / 'b.jpg', seed=1)
    before = tree(photos)
    for dst in (photos, photos / 'x', photos / 'x' / 'x'):
        r = run_qvl('resize', photos / 'x', dst, '--max-pixels', '50000', check=False)
        assert r.returncode == 2 and ('contains the source' in r.stderr or 'inside the source' in r.stderr), r.stderr
        one_line_error(r)
    assert tree(photos) == before


def test_two_sources_that_share_a_name_keep_two_outputs(tmp_path):
    src = tmp_path / 'src'
    image(src / 'a.png', (400, 300), 1); image(src / 'a.jpg', (300, 400), 2)
    before = tree(src)
    run_qvl('resize', src, tmp_path / 'dst', '--format', 'jpeg', '--max-pixels', '1000000')
    rows = {r['path']: r for r in csv.DictReader(open(tmp_path / 'dst' / 'manifest.csv'))}
    assert rows['a.png']['output'] != rows['a.jpg']['output']
    assert Image.open(tmp_path / 'dst' / rows['a.png']['output']).size == (392, 308)      # a.png's pixels
    assert Image.open(tmp_path / 'dst' / rows['a.jpg']['output']).size == (308, 392)      # a.jpg's pixels
    # a dataset naming both points each sample at its own image
    d = tmp_path / 'ds'; image(d / 'a.png', (400, 300), 1); image(d / 'a.jpg', (300, 400), 2)
    (d / 'data.json').write_text(json.dumps([dict(messages=[], images=['a.png']), dict(messages=[], images=['a.jpg'])]))
    run_qvl('resize', d / 'data.json', tmp_path / 'dout', '--format', 'jpeg', '--max-pixels', '1000000')
    new = json.loads((tmp_path / 'dout' / 'data.json').read_text())
    sizes = [Image.open(tmp_path / 'dout' / s['images'][0]).size for s in new]
    assert sizes == [(392, 308), (308, 392)]
    assert tree(src) == before


# -- reruns redo what changed ----------------------------------------------------------------------------------------
def test_resize_rerun_redoes_what_changed(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    for i in range(3): image(src / f'{i}.jpg', (800, 800), i)
    def rows(): return {r['path']: r for r in csv.DictReader(open(dst / 'manifest.csv'))}
    run_qvl('resize', src, dst, '--max-pixels', '200000')
    assert {r['status'] for r in rows().values()} == {'ok'}
    r = run_qvl('resize', src, dst, '--max-pixels', '200000')
    assert '0 resized, 3 already done' in r.stdout
    # another budget: everything again, at the new size
    r = run_qvl('resize', src, dst, '--max-pixels', '100000')
    assert '3 resized, 0 already done' in r.stdout
    assert all(int(x['width']) * int(x['height']) <= 100000 for x in rows().values())
    # a source replaced by another image, its modification time restored (as cp -p, rsync -a, tar x do)
    st = (src / '1.jpg').stat()
    image(src / '1.jpg', (400, 200), 9)
    os.utime(src / '1.jpg', ns=(st.st_atime_ns, st.st_mtime_ns))
    # a new source, and an output edited by hand
    image(src / 'new.jpg', (640, 480), 5)
    Image.new('RGB', (10, 10)).save(dst / '2.jpg')
    r = run_qvl('resize', src, dst, '--max-pixels', '100000')
    assert '3 resized, 1 already done, 0 failed' in r.stdout, r.stdout
    m = rows()
    assert (m['1.jpg']['orig_width'], m['1.jpg']['orig_height']) == ('400', '200') and m['0.jpg']['status'] == 'skipped'
    assert Image.open(dst / '2.jpg').size != (10, 10)


def test_tokenization_cache_sees_a_replaced_image_and_a_damaged_cache(tmp_path, tiny_model, sample_data):
    import shutil
    from qvl.data import cache_key, cached_examples
    from qvl.formats import load_dataset
    data = tmp_path / 'd'; shutil.copytree(sample_data, data)
    ds = load_dataset(data / 'train.json')
    key = cache_key(ds, tiny_model, None, 2048, '<image>')
    img = data / ds.records[0]['images'][0]
    st = img.stat()
    Image.open(img).convert('RGB').resize((300, 200)).save(img, format='JPEG')
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))           # the old modification time
    assert cache_key(load_dataset(data / 'train.json'), tiny_model, None, 2048, '<image>') != key
    cache = tmp_path / 'cache'
    ex, hit = cached_examples(ds, tiny_model, cutoff_len=2048, cache_dir=cache, progress=False)
    assert not hit and cached_examples(ds, tiny_model, cutoff_len=2048, cache_dir=cache, progress=False)[1]
    tokens = next(cache.rglob('tokens.safetensors'))
    raw = bytearray(tokens.read_bytes()); raw[-8:] = b'\xff' * 8      # the header intact, the numbers not
    tokens.write_bytes(bytes(raw))
    again, hit = cached_examples(ds, tiny_model, cutoff_len=2048, cache_dir=cache, progress=False)
    assert not hit and (again.input_ids == ex.input_ids).all()


# -- training: damaged checkpoints, changed configs, bad values --------------------------------------------------------
def _cfg(tiny_model, data, out, **kw):
    return dict(model=str(tiny_model), data=str(data / 'train.json'), out_dir=str(out), method='lora', steps=4,
                batch_size=2, learning_rate=1e-3, save_every=2, log_every=1, cutoff_len=2048, target=[224, 224],
                cache_dir=str(out.parent / 'cache')) | kw


def test_resume_passes_over_a_damaged_checkpoint_and_refuses_a_changed_config(tmp_path, tiny_model, sample_data):
    cfg = tmp_path / 'c.yaml'; cfg.write_text(yaml.safe_dump(_cfg(tiny_model, sample_data, tmp_path / 'run')))
    run_qvl('train', cfg)
    last = tmp_path / 'run' / 'checkpoints' / 'step-0000004' / 'trainable.safetensors'
    raw = bytearray(last.read_bytes()); raw[-16:] = b'\x7f' * 16; last.write_bytes(bytes(raw))
    (tmp_path / 'run' / 'checkpoints' / '.step-0000006.abc').mkdir()          # what a killed checkpoint write leaves
    r = run_qvl('train', cfg, '--resume', '--steps', '5')
    assert 'step-0000004 is damaged' in r.stdout and 'using an earlier one' in r.stdout
    assert not list((tmp_path / 'run' / 'checkpoints').glob('.step-*'))
    assert [json.loads(l)['step'] for l in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()] == [1, 2, 3, 4, 5]
    for change in ('learning_rate=0.01', 'seed=7'):
        r = run_qvl('train', cfg, '--resume', '--set', change, check=False)
        assert r.returncode == 2 and 'differs from the run' in r.stderr and change.split('=')[0] in r.stderr, r.stderr
        one_line_error(r)


@pytest.mark.parametrize('change,needle', [(dict(save_every=-2), 'save_every must not be negative'),
                                           (dict(max_grad_norm=0), 'max_grad_norm must be positive'),
                                           (dict(lora_dropout=1.5), 'lora_dropout'),
                                           (dict(model='/no/such/checkpoint'), 'model directory /no/such/checkpoint not found')])
def test_bad_config_values_are_one_line_errors(tmp_path, tiny_model, sample_data, change, needle):
    cfg = tmp_path / 'c.yaml'; cfg.write_text(yaml.safe_dump(_cfg(tiny_model, sample_data, tmp_path / 'run') | change))
    r = run_qvl('train', cfg, check=False)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    one_line_error(r)


def test_os_and_encoding_errors_are_one_line(tmp_path, tiny_model, sample_data):
    (tmp_path / 'file').write_text('x')
    r = run_qvl('resize', sample_data / 'images', tmp_path / 'file', check=False)    # the destination is a file
    assert r.returncode == 2 and 'is a file' in r.stderr; one_line_error(r)
    bad = tmp_path / 'latin1.yaml'; bad.write_bytes('model: caf\xe9\n'.encode('latin-1'))
    r = run_qvl('train', bad, check=False)
    assert r.returncode in (1, 2); one_line_error(r)
    broken = tmp_path / 'broken-model'; broken.mkdir(); (broken / 'config.json').write_text('{not json')
    cfg = tmp_path / 'b.yaml'; cfg.write_text(yaml.safe_dump(_cfg(broken, sample_data, tmp_path / 'run')))
    r = run_qvl('train', cfg, check=False)
    assert r.returncode == 2 and 'config.json cannot be read as a transformers config' in r.stderr; one_line_error(r)
    odd = tmp_path / 'odd'; image(odd / 'ok.jpg'); image(Path(os.fsdecode(bytes(odd) + b'/caf\xe9.jpg')), seed=2)
    r = run_qvl('resize', odd, tmp_path / 'odd-out', '--max-pixels', '50000')      # a file name that is not UTF-8
    assert '2 resized' in r.stdout and len(list((tmp_path / 'odd-out').glob('*.jpg'))) == 2
    nul = tmp_path / 'nul'; image(nul / 'a.jpg')
    (nul / 'd.json').write_text(json.dumps([dict(messages=[], images=['a\x00.jpg']), dict(messages=[], images=['a.jpg'])]))
    r = run_qvl('resize', nul / 'd.json', tmp_path / 'nul-out', '--max-pixels', '50000', check=False)
    assert r.returncode == 1 and 'NUL' in r.stdout; one_line_error(r)


# -- killed runs leave no workers and no debris --------------------------------------------------------------------------
def _children(pid: int) -> set[int]:
    out = set()
    for task in Path(f'/proc/{pid}/task').glob('*'):
        try: out |= {int(c) for c in (task / 'children').read_text().split()}
        except OSError: pass
    return out


@pytest.mark.skipif(not Path('/proc/self/task').exists(), reason='needs Linux /proc')
def test_sigkill_of_resize_ends_its_workers_and_the_next_run_cleans_up(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    for i in range(30): image(src / f'{i:02d}.png', (1200, 1200), i)
    p = subprocess.Popen([sys.executable, '-m', 'qvl.cli', 'resize', str(src), str(dst), '--max-tokens', '256', '--workers', '2'],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, deadline, workers = dst / '.manifest.jsonl', time.time() + 120, set()
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        workers |= _children(p.pid); time.sleep(0.05)
    workers |= _children(p.pid)
    p.send_signal(signal.SIGKILL); p.wait()
    assert workers, 'no worker processes were seen'
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f'/proc/{w}').exists() for w in workers): time.sleep(0.1)
    alive = [w for w in workers if Path(f'/proc/{w}').exists() and 'Z' not in Path(f'/proc/{w}/stat').read_text().split()[2]]
    assert not alive, f'workers still running after the command was killed: {alive}'
    (dst / '.05.png.abc123.part').write_bytes(b'half a file')      # what a killed atomic write leaves
    r = run_qvl('resize', src, dst, '--max-tokens', '256', '--workers', '2')
    assert '0 failed' in r.stdout and not list(dst.rglob('*.part'))


def test_a_sweep_killed_mid_row_resumes(tmp_path):
    from qvl.experiments import grid, measure_cpu, point_config   # noqa: F401
    from qvl.core import default_tiny_model
    pts = grid([str(default_tiny_model())], ['lora'], [224], [1, 2])
    out = tmp_path / 'measured-cpu.csv'
    measure_cpu(pts[:1], out, progress=False)
    with open(out, 'a') as f: f.write(f"{pts[1]['model']},lora,224,2,Tr")           # a row cut by SIGKILL
    measure_cpu(pts, out, progress=False)
    import pandas as pd
    df = pd.read_csv(out)
    assert len(df) == 2 and (df.status == 'ok').all() and sorted(df.batch_size) == [1, 2]


# -- fuzz: generated bad inputs, every command ---------------------------------------------------------------------------
def _bad_inputs(root: Path, rng: random.Random) -> list[Path]:
    "Files, datasets and configs a careless or unlucky user might give."
    root.mkdir(parents=True)
    image(root / 'ok.jpg', (300, 300), 1)
    good = (root / 'ok.jpg').read_bytes()
    blobs = dict(empty=b'', text=b'not an image at all', truncated=good[:len(good) // 3], zeros=b'\0' * 500,
                 latin1='caf\xe9: [1, 2'.encode('latin-1'), huge_line=b'[' + b'1,' * 200000 + b'1]')
    paths = []
    for name, data in blobs.items():
        for ext in ('.jpg', '.json', '.jsonl', '.yaml'):
            p = root / f'{name}{ext}'; p.write_bytes(data); paths.append(p)
    samples = [[dict(messages='oops', images=['ok.jpg'])], [dict(messages=[dict(role='user', content='<image><image>')], images=['ok.jpg'])],
               [dict(messages=[dict(role='user', content='<image>')], images=['/etc/passwd'])], [1, 'two', None],
               [dict(messages=[dict(role='user', content='<image>')], images=[rng.choice(['missing.jpg', 'empty.jpg', 'text.jpg', '../ok.jpg'])])],
               {'not': 'a list'}]
    for i, s in enumerate(samples):
        p = root / f'ds{i}.json'; p.write_text(json.dumps(s)); paths.append(p)
    configs = [dict(model=123), dict(model=str(root), data=str(root / 'ds0.json')), ['a', 'list'], dict(steps='many'),
               dict(model=str(root / 'nope'), data=str(root / 'ds1.json'), steps=1)]
    for i, c in enumerate(configs):
        p = root / f'cfg{i}.yaml'; p.write_text(yaml.safe_dump(c)); paths.append(p)
    return paths


def test_fuzz_bad_inputs_exit_cleanly_and_leave_sources_alone(tmp_path, tiny_model):
    rng = random.Random(0)
    src = tmp_path / 'inputs'
    inputs = _bad_inputs(src, rng)
    before = tree(src)
    cases = []
    for p in inputs:
        if p.suffix in ('.json', '.jsonl'):
            cases += [('doctor', p, '--model', tiny_model, '--cutoff-len', '512'), ('resize', p, tmp_path / 'o' / p.stem, '--max-pixels', '50000'),
                      ('convert', p, tmp_path / 'c' / f'{p.stem}.jsonl', '--to', 'messages')]
        elif p.suffix == '.yaml': cases.append(('train', p))
        else: cases.append(('info', p))
    cases += [('resize', src, tmp_path / 'folder-out', '--max-pixels', '50000'), ('estimate', '--image-size', '0x5'),
              ('estimate', '--model', src / 'nope'), ('fix-model', src, tmp_path / 'fm'), ('export', src, tmp_path / 'ex')]
    rng.shuffle(cases)
    for args in cases:
        r = run_qvl(*args, check=False, timeout=300)
        assert r.returncode in (0, 1, 2), (args, r.returncode, r.stderr[-2000:])
        assert 'Traceback' not in r.stderr, (args, r.stderr[-3000:])
        # qvl's own errors, or argparse's usage line and `qvl CMD: error:` line for a bad flag
        errors = [l for l in r.stderr.splitlines() if re.match(r'qvl( [\w-]+)?: error:', l)]
        assert len(errors) <= 1, (args, r.stderr)
        if r.returncode == 2: assert errors, (args, r.stderr)
    assert tree(src) == before, 'a source changed'


# -- the doctor and fixes see the model as it is ------------------------------------------------------------------------
def _one_sample(d: Path, ref='images/a.jpg', size=(2000, 2000)):
    image(d / 'images' / 'a.jpg', size, 3)
    (d / 'train.json').write_text(json.dumps([dict(messages=[dict(role='user', content='<image>What colour is it?'),
                                                           dict(role='assistant', content='red')], images=[ref])]))
    return d / 'train.json'


def _model_copy(tiny_model, dst: Path, edit):
    import shutil
    shutil.copytree(tiny_model, dst)
    edit(dst)
    return dst


def test_doctor_reads_pixel_limits_from_processor_config(tmp_path, tiny_model):
    "`qvl tiny-model` (and newer transformers) keep the image processor inside processor_config.json."
    def lower(d):
        c = json.loads((d / 'processor_config.json').read_text()); c['image_processor']['size']['longest_edge'] = 200704
        (d / 'processor_config.json').write_text(json.dumps(c))
    m = _model_copy(tiny_model, tmp_path / 'm', lower)
    assert not (m / 'preprocessor_config.json').exists()
    data = _one_sample(tmp_path / 'd')
    r = run_qvl('doctor', data, '--model', m, '--cutoff-len', '600', '--json')
    s = json.loads(r.stdout)['summary']
    assert s['max_pixels'] == 200704 and s['flagged'] == 0 and s['tokens']['max'] < 600        # 2000 px -> 448 px: 256 tokens
    r = run_qvl('doctor', data, '--model', tiny_model, '--cutoff-len', '600', '--json', check=False)
    assert r.returncode == 1 and 'image_tokens_truncated' in r.stdout                           # the checkpoint default: 5041


def test_a_wrong_image_token_id_does_not_hide_a_truncated_sample(tmp_path, tiny_model):
    def wrong(d):
        c = json.loads((d / 'config.json').read_text()); c['image_token_id'] = c['vision_end_token_id']
        (d / 'config.json').write_text(json.dumps(c))
    m = _model_copy(tiny_model, tmp_path / 'm', wrong)
    data = _one_sample(tmp_path / 'd')
    r = run_qvl('doctor', data, '--model', m, '--cutoff-len', '600', '--json', check=False)
    codes = {f['code'] for f in json.loads(r.stdout)['samples']} | {f['code'] for f in json.loads(r.stdout)['model']}
    assert r.returncode == 1 and {'image_tokens_truncated', 'image_token_id_mismatch'} <= codes, codes
    r = run_qvl('fix', data, tmp_path / 'fixed', '--model', m, '--cutoff-len', '600', check=False)
    assert r.returncode == 1 and 'qvl fix-model' in r.stdout and 'image_token_id_mismatch' in r.stdout


def test_fix_writes_the_file_a_symlinked_image_is_named_by(tmp_path, tiny_model):
    d = tmp_path / 'd'
    data = _one_sample(d, 'images/link.jpg', (300, 300))
    (d / 'images' / 'link.jpg').symlink_to('a.jpg')
    before = tree(d)
    run_qvl('fix', data, tmp_path / 'fixed', '--model', tiny_model, '--cutoff-len', '2048')
    new = json.loads((tmp_path / 'fixed' / 'train.json').read_text())
    ref = new[0]['images'][0]
    assert (tmp_path / 'fixed' / ref).is_file() and Image.open(tmp_path / 'fixed' / ref).size == (300, 300)
    assert tree(d) == before


def test_a_huge_sample_is_flagged_without_tokenizing_it(tmp_path, tiny_model):
    "A 20 MB line (a 100 MB one took 19 GB of memory when tokenized): flagged from its length alone."
    d = tmp_path / 'd'; image(d / 'images' / 'a.jpg')
    recs = [dict(messages=[dict(role='user', content='<image>' + 'word ' * 4_000_000), dict(role='assistant', content='x')],
                 images=['images/a.jpg']), dict(messages=[dict(role='user', content='<image>hi'), dict(role='assistant', content='x')],
                                                images=['images/a.jpg'])]
    (d / 'train.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
    r = run_qvl('doctor', d / 'train.jsonl', '--model', tiny_model, '--cutoff-len', '2048', '--json', check=False)
    out = json.loads(r.stdout)
    assert r.returncode == 1 and [(f['index'], f['code']) for f in out['samples']] == [(0, 'sequence_too_long')]
    assert 'characters of text' in out['samples'][0]['message'] and out['summary']['clean'] == 1


def test_sweep_with_an_unknown_measure_is_an_error(tmp_path):
    r = run_qvl('sweep', 'vram_sweep', '-p', 'measure', 'bogus', '-p', 'models', 'Qwen2.5-VL-3B', '-p', 'sides', '448',
                '-p', 'batches', '1', '--runs-dir', tmp_path, check=False, timeout=600)
    assert r.returncode == 2 and "measure='bogus'" in r.stderr, r.stderr
    one_line_error(r)
