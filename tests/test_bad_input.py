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
    from qvl.families import default_tiny_model
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


# -- a third probe, by class: writes that leave their folder or go through links ---------------------------------------
def _chat(ref, answer='red', role='assistant', user='<image>What colour is it?'):
    return dict(messages=[dict(role='user', content=user), dict(role=role, content=answer)], images=[ref] if ref else [])


def test_fix_of_a_ref_that_climbs_out_and_back_in_writes_only_into_its_output(tmp_path, tiny_model):
    src = tmp_path / 'src' / 'data'
    image(src / 'img' / 'a.jpg', (2000, 2000), 1)
    (src / 'train.json').write_text(json.dumps([_chat('../../src/data/img/a.jpg')]))
    before = tree(tmp_path / 'src')
    run_qvl('fix', src / 'train.json', tmp_path / 'fixed', '--model', tiny_model, '--cutoff-len', '600')
    assert tree(tmp_path / 'src') == before                                  # nothing landed in the source folder
    ref = json.loads((tmp_path / 'fixed' / 'train.json').read_text())[0]['images'][0]
    out = (tmp_path / 'fixed' / ref).resolve()
    assert (tmp_path / 'fixed').resolve() in out.parents and Image.open(out).size[0] < 2000, ref


def test_two_images_of_one_name_given_by_absolute_paths_keep_two_shrunk_files(tmp_path, tiny_model):
    d = tmp_path / 'd'
    a, b = image(d / 'x' / 'a.jpg', (2000, 2000), 1), image(d / 'y' / 'a.jpg', (2000, 2000), 2)
    (d / 'train.json').write_text(json.dumps([_chat(str(a)), _chat(str(b))]))
    run_qvl('fix', d / 'train.json', tmp_path / 'fixed', '--model', tiny_model, '--cutoff-len', '600')
    refs = [s['images'][0] for s in json.loads((tmp_path / 'fixed' / 'train.json').read_text())]
    assert refs[0] != refs[1], refs
    got = [np.asarray(Image.open(tmp_path / 'fixed' / r)).mean() for r in refs]
    want = [np.asarray(Image.open(p).resize(Image.open(tmp_path / 'fixed' / r).size)).mean() for p, r in zip((a, b), refs)]
    assert np.allclose(got, want, atol=2), (got, want)                      # each sample keeps its own image


def test_fix_model_never_writes_into_the_source_checkpoint(tmp_path, tiny_model):
    import shutil
    src = tmp_path / 'm'; shutil.copytree(tiny_model, src)
    (src / 'chat_template.jinja').unlink(missing_ok=True)
    tc = json.loads((src / 'tokenizer_config.json').read_text()); tc.pop('chat_template', None)
    (src / 'tokenizer_config.json').write_text(json.dumps(tc))
    c = json.loads((src / 'config.json').read_text()); c['image_token_id'] = c['vision_end_token_id']
    (src / 'config.json').write_text(json.dumps(c))
    before = tree(src)
    r = run_qvl('fix-model', src, tmp_path / 'fixed')
    assert tree(src) == before, 'the source checkpoint changed'
    assert 'image_token_id' in r.stdout and (tmp_path / 'fixed' / 'config.json').is_file()


def _train_cfg(tmp_path, tiny_model, sample_data, **kw):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text(yaml.safe_dump(_cfg(tiny_model, sample_data, tmp_path / 'run', steps=2, save_every=1) | kw))
    return cfg


def test_train_writes_through_no_link_in_its_out_dir(tmp_path, tiny_model, sample_data):
    victim = tmp_path / 'victim.txt'; victim.write_text('keep')
    (tmp_path / 'run').mkdir(); (tmp_path / 'run' / 'config.json').symlink_to(victim)
    r = run_qvl('train', _train_cfg(tmp_path, tiny_model, sample_data), check=False)
    assert r.returncode == 2 and 'symbolic link' in r.stderr, r.stderr
    one_line_error(r)
    assert victim.read_text() == 'keep'
    (tmp_path / 'run' / 'config.json').unlink(); (tmp_path / 'run' / 'log.jsonl').symlink_to(victim)
    run_qvl('train', _train_cfg(tmp_path, tiny_model, sample_data), '--resume')     # the link is replaced, never followed
    assert victim.read_text() == 'keep' and not (tmp_path / 'run' / 'log.jsonl').is_symlink()


def test_train_into_its_model_or_data_folder_is_refused(tmp_path, tiny_model, sample_data):
    before = tree(tiny_model)
    for out, needle in ((tiny_model, 'is the model'), (tiny_model / 'run', 'is inside the model'), (sample_data, 'holds the data')):
        r = run_qvl('train', _train_cfg(tmp_path, tiny_model, sample_data, out_dir=str(out)), check=False)
        assert r.returncode == 2 and needle in r.stderr, (out, r.stderr)
        one_line_error(r)
    assert tree(tiny_model) == before


def test_eval_out_writes_through_no_link(tmp_path, tiny_model):
    d = tmp_path / 'd'; image(d / 'a.jpg', (300, 300))
    (d / 'test.json').write_text(json.dumps([_chat('a.jpg')]))
    victim = tmp_path / 'victim.csv'; victim.write_text('keep')
    (tmp_path / 'ev').mkdir(); (tmp_path / 'ev' / 'eval.csv').symlink_to(victim)
    r = run_qvl('eval', tiny_model, d / 'test.json', '--budgets', '56', '--max-new-tokens', '2', '--out', tmp_path / 'ev', check=False)
    assert r.returncode == 2 and 'symbolic link' in r.stderr, r.stderr
    assert victim.read_text() == 'keep'
    r = run_qvl('eval', tiny_model, d / 'test.json', '--out', d, check=False)          # into the data's own folder
    assert r.returncode == 2 and 'holds the data' in r.stderr, r.stderr


def test_convert_onto_the_sources_dataset_info_is_refused_and_changes_nothing(tmp_path):
    d = tmp_path / 'd'; image(d / 'a.jpg')
    (d / 'train.json').write_text(json.dumps([dict(conversations=[dict(**{'from': 'human', 'value': '<image>hi'}),
                                                                 dict(**{'from': 'gpt', 'value': 'yo'})], images=['a.jpg'])]))
    (d / 'other.json').write_text((d / 'train.json').read_text())
    (d / 'dataset_info.json').write_text(json.dumps({'train': dict(file_name='train.json', formatting='sharegpt'),
                                                     'other': dict(file_name='other.json', formatting='sharegpt')}))
    before = tree(d)
    for dst, needle in ((d / 'dataset_info.json', 'describes datasets'), (d / 'other.json', 'write to a new file')):
        r = run_qvl('convert', d / 'train.json', dst, '--to', 'alpaca', check=False)
        assert r.returncode == 2 and needle in r.stderr, r.stderr
        one_line_error(r)
    assert tree(d) == before
    run_qvl('convert', d / 'train.json', d / 'train_alpaca.json', '--to', 'alpaca')   # beside it: the entry added
    info = json.loads((d / 'dataset_info.json').read_text())
    assert set(info) == {'train', 'other', 'train_alpaca'} and (d / 'other.json').read_bytes() == before[d / 'other.json']


def test_plan_out_onto_its_own_config_is_refused(tmp_path, tiny_model, sample_data):
    cfg = _train_cfg(tmp_path, tiny_model, sample_data)
    before = cfg.read_bytes()
    r = run_qvl('plan', cfg, '--gpu-memory', '80', '--out', cfg, check=False)
    assert r.returncode == 2 and 'is the config' in r.stderr and cfg.read_bytes() == before, r.stderr


def test_a_sweep_parameter_used_as_a_path_is_checked_before_anything_is_removed(tmp_path):
    other = tmp_path / 'runs' / 'eval' / 'keep.txt'; other.parent.mkdir(parents=True); other.write_text('keep')
    r = run_qvl('sweep', 'eval', '-p', 'formats', '../..', '--runs-dir', tmp_path / 'runs', check=False, timeout=600)
    assert r.returncode == 2 and "unknown --quantize '../..'" in r.stderr, r.stderr
    assert other.read_text() == 'keep'


# -- stale state -------------------------------------------------------------------------------------------------------
def test_a_fresh_run_into_an_old_out_dir_is_refused_and_overwrite_starts_clean(tmp_path, tiny_model, sample_data):
    cfg = _train_cfg(tmp_path, tiny_model, sample_data)
    run_qvl('train', cfg)
    r = run_qvl('train', cfg, '--set', 'seed=5', check=False)
    assert r.returncode == 2 and 'holds another run (checkpoints/step-0000002)' in r.stderr, r.stderr
    one_line_error(r)
    r = run_qvl('train', cfg, '--set', 'seed=5', '--set', 'steps=1', '--overwrite')
    assert sorted(p.name for p in (tmp_path / 'run' / 'checkpoints').iterdir()) == ['step-0000001']
    assert json.loads((tmp_path / 'run' / 'config.json').read_text())['seed'] == 5


def test_two_runs_into_one_out_dir_at_once_one_is_refused(tmp_path, tiny_model, sample_data):
    import fcntl
    (tmp_path / 'run').mkdir()
    with open(tmp_path / 'run' / '.lock', 'w') as held:           # what a live run holds
        fcntl.flock(held, fcntl.LOCK_EX); held.write('4242'); held.flush()
        r = run_qvl('train', _train_cfg(tmp_path, tiny_model, sample_data), check=False)
    assert r.returncode == 2 and 'in use by another run (process 4242)' in r.stderr, r.stderr
    assert not (tmp_path / 'run' / 'log.jsonl').exists()


def test_sigterm_during_fix_leaves_no_temporary_folder(tmp_path, tiny_model):
    d = tmp_path / 'd'
    for i in range(40): image(d / 'img' / f'{i}.jpg', (1600, 1600), i)
    (d / 'train.json').write_text(json.dumps([_chat(f'img/{i}.jpg') for i in range(40)]))
    exe = [sys.executable, '-m', 'qvl.cli', 'fix', str(d / 'train.json'), str(tmp_path / 'fixed'), '--model', str(tiny_model),
           '--cutoff-len', '600', '--workers', '1']
    p = subprocess.Popen(exe, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(q.name.startswith('.fixed.') for q in tmp_path.iterdir()): time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and 'interrupted' in err, err
    assert sorted(q.name for q in tmp_path.iterdir()) == ['d'], list(tmp_path.iterdir())


def test_a_torn_last_log_line_does_not_block_resume(tmp_path, tiny_model, sample_data):
    cfg = _train_cfg(tmp_path, tiny_model, sample_data)
    run_qvl('train', cfg)
    with open(tmp_path / 'run' / 'log.jsonl', 'a') as f: f.write('{"step": 3, "lo')
    r = run_qvl('train', cfg, '--resume', '--steps', '3')
    assert 'damaged line(s) dropped' in r.stdout
    assert [json.loads(l)['step'] for l in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()] == [1, 2, 3]


# -- numbers that pass the checks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize('change,needle', [('learning_rate=.nan', 'learning_rate must be a finite number'),
                                           ('max_grad_norm=.inf', 'max_grad_norm must be a finite number'),
                                           ('max_pixels=-5', 'max_pixels must be positive'),
                                           ('lora_dropout=[1', '--set lora_dropout is not valid YAML')])
def test_non_finite_negative_and_malformed_values_are_one_line_errors(tmp_path, tiny_model, sample_data, change, needle):
    r = run_qvl('train', _train_cfg(tmp_path, tiny_model, sample_data), '--set', change, check=False)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    one_line_error(r)
    assert not (tmp_path / 'run').exists()


def test_budgets_and_gpu_sizes_are_checked_alike(tmp_path, sample_data):
    r = run_qvl('resize', sample_data / 'images', tmp_path / 'o', '--max-pixels', '-5', check=False)
    assert r.returncode == 2 and 'expected a positive whole number' in r.stderr and 'math' not in r.stderr, r.stderr
    from qvl.resize import Budget
    with pytest.raises(Exception, match='max_tokens must be a positive number'): Budget(max_tokens=-3)     # the API, too
    for cmd in ('estimate', 'plan'):
        for v in ('0', '-3', 'nan'):
            args = ('estimate', '--model', 'Qwen2.5-VL-3B') if cmd == 'estimate' else ('plan', tmp_path / 'none.yaml')
            r = run_qvl(*args, '--gpu-memory', v, check=False)
            assert r.returncode == 2 and "expected a GPU's memory in GB" in r.stderr, (cmd, v, r.stderr)


def test_an_exponent_in_yaml_is_a_number(tmp_path, tiny_model, sample_data):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text(yaml.safe_dump(_cfg(tiny_model, sample_data, tmp_path / 'run', steps=1)).replace('learning_rate: 0.001', 'learning_rate: 2e-4'))
    assert 'learning_rate: 2e-4' in cfg.read_text()
    run_qvl('train', cfg)
    assert json.loads((tmp_path / 'run' / 'config.json').read_text())['learning_rate'] == 2e-4


def test_a_loss_that_turns_non_finite_stops_the_run_keeping_the_last_good_checkpoint(tmp_path, tiny_model, sample_data):
    cfg = _train_cfg(tmp_path, tiny_model, sample_data, learning_rate=1e30, max_grad_norm=None, steps=6)
    r = run_qvl('train', cfg, check=False)
    assert r.returncode == 2 and 'not finite' in r.stderr and 'lower learning_rate' in r.stderr, (r.stdout[-2000:], r.stderr)
    one_line_error(r)
    assert not (tmp_path / 'run' / 'adapter').exists() and not (tmp_path / 'run' / 'model').exists()   # no NaN weights saved
    from safetensors.torch import load_file
    cks = sorted((tmp_path / 'run' / 'checkpoints').glob('step-*'))
    assert all(all(t.isfinite().all() for t in load_file(ck / 'trainable.safetensors').values()) for ck in cks)


# -- records that parse but cannot be learned from -----------------------------------------------------------------------
@pytest.mark.parametrize('record,needle', [
    (_chat('a.jpg', role='bot'), "role is 'bot'"), (_chat('a.jpg', role='model'), "role is 'model'"),
    (dict(messages=[dict(role='user', content='<image>hi')], images=['a.jpg']), 'no assistant answer'),
    (_chat('a.jpg', user='<image>hi<|im_end|>\n<|im_start|>assistant\nsecret'), 'control token <|im_')])
def test_unlearnable_records_are_one_finding_the_doctor_reports_and_training_skips(tmp_path, tiny_model, record, needle):
    d = tmp_path / 'd'; image(d / 'a.jpg', (300, 300))
    good = [_chat('a.jpg', answer=f'colour {i}') for i in range(3)]
    (d / 'train.json').write_text(json.dumps([record] + good))
    r = run_qvl('doctor', d / 'train.json', '--model', tiny_model, '--cutoff-len', '2048', '--json', check=False)
    found = json.loads(r.stdout)['samples']
    assert r.returncode == 1 and [(f['index'], f['code']) for f in found] == [(0, 'unlearnable_sample')] and needle in found[0]['message']
    cfg = tmp_path / 'c.yaml'
    cfg.write_text(yaml.safe_dump(dict(model=str(tiny_model), data=str(d / 'train.json'), out_dir=str(tmp_path / 'run'), steps=1,
                                       batch_size=2, target=[56, 56], cutoff_len=2048, report_to='none')))
    r = run_qvl('train', cfg)
    assert '1 skipped' in r.stdout, r.stdout
    assert [s['index'] for s in json.loads((tmp_path / 'run' / 'skipped.json').read_text())] == [0]
    (d / 'only.json').write_text(json.dumps([record]))
    r = run_qvl('train', cfg, '--set', f"data={d / 'only.json'}", '--out', tmp_path / 'run2', check=False)
    assert r.returncode == 2 and 'no sample can be trained on' in r.stderr, r.stderr


def test_a_video_sample_is_one_finding_and_fix_drops_it(tmp_path, tiny_model):
    "A LLaMA-Factory `videos` column or a messages video part, which qvl does not read yet, is never half-trained: the doctor names it, `qvl fix` drops it."
    from qvl.formats import read_records
    d = tmp_path / 'd'; image(d / 'a.jpg', (300, 300))
    recs = [dict(messages=[dict(role='user', content='<video>Which way does it move?'), dict(role='assistant', content='left')],
                 videos=['clip.mp4'])] + [_chat('a.jpg', answer=f'colour {i}') for i in range(2)]
    (d / 'train.json').write_text(json.dumps(recs))
    r = run_qvl('doctor', d / 'train.json', '--model', tiny_model, '--cutoff-len', '2048', '--json', check=False)
    assert r.returncode == 1 and [(f['index'], f['code']) for f in json.loads(r.stdout)['samples']] == [(0, 'video_not_read')]
    r = run_qvl('fix', d / 'train.json', tmp_path / 'fixed', '--model', tiny_model, '--cutoff-len', '2048')
    assert 'video_not_read' in r.stdout and len(read_records(tmp_path / 'fixed' / 'train.json')) == 2


def test_a_malformed_alpaca_history_is_one_unparseable_sample(tmp_path, tiny_model):
    from qvl.formats import read_records
    d = tmp_path / 'd'; image(d / 'a.jpg', (300, 300))
    recs = [dict(instruction='<image>hi', output='yo', history='not a list', images=['a.jpg']),
            dict(instruction='<image>hi', output='yo', history=[['q', 'a', 'extra']], images=['a.jpg']),
            dict(instruction='<image>hi', output='yo', history=[['q', 'a']], images=['a.jpg'])]
    (d / 'train.json').write_text(json.dumps(recs))
    (d / 'dataset_info.json').write_text(json.dumps({'train': dict(file_name='train.json', formatting='alpaca',
                                                                    columns=dict(prompt='instruction', response='output', history='history', images='images'))}))
    r = run_qvl('doctor', d / 'train.json', '--model', tiny_model, '--cutoff-len', '2048', '--json', check=False)
    assert [(f['index'], f['code']) for f in json.loads(r.stdout)['samples']] == [(0, 'unparseable_sample'), (1, 'unparseable_sample')]
    r = run_qvl('fix', d / 'train.json', tmp_path / 'fixed', '--model', tiny_model, '--cutoff-len', '2048')
    assert len(json.loads((tmp_path / 'fixed' / 'train.json').read_text())) == 1
    r = run_qvl('convert', d / 'train.json', tmp_path / 'c' / 'out.jsonl', '--to', 'messages', check=False)
    assert r.returncode == 1 and '2 sample(s) left out' in r.stdout and 'history must be a list' in r.stdout, r.stdout
    assert len(read_records(tmp_path / 'c' / 'out.jsonl')) == 1


# -- evaluation of multi-turn samples ------------------------------------------------------------------------------------
def test_eval_of_a_two_turn_sample_with_a_second_image_answers_the_last_turn(tmp_path, tiny_model):
    d = tmp_path / 'd'; image(d / 'a.jpg', (300, 300), 1); image(d / 'b.jpg', (300, 300), 2)
    rec = dict(messages=[dict(role='user', content='<image>first?'), dict(role='assistant', content='one'),
                         dict(role='user', content='<image>second?'), dict(role='assistant', content='two')], images=['a.jpg', 'b.jpg'])
    (d / 'test.json').write_text(json.dumps([rec]))
    run_qvl('eval', tiny_model, d / 'test.json', '--budgets', '56', '--max-new-tokens', '2', '--out', tmp_path / 'ev')
    import pandas as pd
    answers = pd.read_csv(tmp_path / 'ev' / 'answers.csv')
    assert answers.answer.tolist() == ['two'], answers


# -- boxes: one convention -----------------------------------------------------------------------------------------------
def test_resize_of_a_two_image_sample_with_boxes_moves_them_or_says_why_not(tmp_path):
    from qvl.boxes import box_frame
    d = tmp_path / 'd'; image(d / 'a.jpg', (2000, 1000), 1); image(d / 'b.jpg', (2000, 1000), 2); image(d / 'c.jpg', (800, 800), 3)
    box = '{"bbox_2d": [100, 100, 500, 300]}'
    same = dict(messages=[dict(role='user', content='<image><image>where?'), dict(role='assistant', content=box)], images=['a.jpg', 'b.jpg'])
    mixed = dict(messages=[dict(role='user', content='<image><image>where?'), dict(role='assistant', content=box)], images=['a.jpg', 'c.jpg'])
    (d / 'train.json').write_text(json.dumps([same, mixed]))
    r = run_qvl('resize', d / 'train.json', tmp_path / 'o', '--max-pixels', '200000', check=False)
    out = json.loads((tmp_path / 'o' / 'train.json').read_text())
    assert len(out) == 1 and 'sample #1' in r.stdout and 'which image a box is on' in r.stdout, r.stdout
    new = Image.open(tmp_path / 'o' / out[0]['images'][0]).size
    (fw, fh), (nw, nh) = box_frame(2000, 1000), box_frame(*new)
    want = [round(v * s) for v, s in zip([100, 100, 500, 300], [nw / fw, nh / fh] * 2)]
    assert json.loads(out[0]['messages'][1]['content'])['bbox_2d'] == want, (out[0], want)


def test_resize_and_convert_read_boxes_in_one_frame(tmp_path):
    "A 4000 px image: its boxes (in the processor's frame) land on the same spot of the resized file either way."
    from qvl.boxes import box_frame
    d = tmp_path / 'd'; image(d / 'a.jpg', (4000, 3000), 1)
    rec = dict(messages=[dict(role='user', content='<image>where?'), dict(role='assistant', content='{"bbox_2d": [1000, 800, 2000, 1600]}')],
               images=['a.jpg'])
    (d / 'train.json').write_text(json.dumps([rec]))
    run_qvl('resize', d / 'train.json', tmp_path / 'o', '--max-pixels', '1000000')
    resized = json.loads((tmp_path / 'o' / 'train.json').read_text())[0]
    size = Image.open(tmp_path / 'o' / resized['images'][0]).size
    via_resize = [v / s for v, s in zip(json.loads(resized['messages'][1]['content'])['bbox_2d'], box_frame(*size) * 2)]
    run_qvl('convert', d / 'train.json', tmp_path / 'g' / 'train.json', '--boxes', 'qwen3_vl')
    from qvl.formats import read_records, text_slots
    from qvl.boxes import find_boxes
    (grid,) = [b[2] for r in read_records(tmp_path / 'g' / 'train.json') for c, k in text_slots(r) for b in find_boxes(c[k])]
    assert np.allclose(via_resize, [v / 1000 for v in grid], atol=0.004), (via_resize, grid)


# -- files qvl writes or users have ----------------------------------------------------------------------------------------
def test_jsonl_qvl_writes_reads_back_with_line_separators_in_text(tmp_path):
    from qvl.formats import read_records, write_records
    recs = [dict(messages=[dict(role='user', content='a\u2028b\u2029c\x85d\x0ce'), dict(role='assistant', content='x')])]
    write_records(recs, tmp_path / 'a.jsonl')
    assert read_records(tmp_path / 'a.jsonl') == recs
    r = run_qvl('convert', tmp_path / 'a.jsonl', tmp_path / 'b.jsonl', '--to', 'sharegpt')
    assert 'skipped' not in r.stdout or '0 skipped' in r.stdout, r.stdout


def test_folder_resize_reads_every_kind_pillow_opens(tmp_path):
    d = tmp_path / 'd'
    for ext in ('.jfif', '.ppm', '.tga', '.jpe'):
        Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(d / f'x{ext}' if d.exists() else (d.mkdir() or d / f'x{ext}'),
                                                                 format={'.jfif': 'JPEG', '.jpe': 'JPEG', '.ppm': 'PPM', '.tga': 'TGA'}[ext])
    run_qvl('resize', d, tmp_path / 'o', '--max-pixels', '50000')
    import pandas as pd
    m = pd.read_csv(tmp_path / 'o' / 'manifest.csv')
    assert sorted(m.path) == ['x.jfif', 'x.jpe', 'x.ppm', 'x.tga'] and (m.status == 'ok').all(), m


def test_file_uri_refs_work_in_every_command(tmp_path, tiny_model):
    d = tmp_path / 'd'; image(d / 'a.jpg', (300, 300))
    (d / 'train.json').write_text(json.dumps([dict(conversations=[{'from': 'human', 'value': '<image>hi'}, {'from': 'gpt', 'value': 'yo'}],
                                                   images=[f"file://{d / 'a.jpg'}"])]))
    r = run_qvl('doctor', d / 'train.json', '--model', tiny_model, '--cutoff-len', '2048', '--allow-outside', '--json')
    assert json.loads(r.stdout)['summary']['flagged'] == 0, r.stdout


def test_yaml_aliases_and_malformed_sweep_values_are_short_one_line_errors(tmp_path, tiny_model, sample_data):
    bomb = tmp_path / 'bomb.yaml'
    bomb.write_text('a: &a ["x","x","x","x","x","x","x","x","x"]\n' + ''.join(
        f'{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n' for p, c in zip('abcdefgh', 'bcdefghi')) + 'model: *i\n')
    r = run_qvl('train', bomb, check=False)
    assert r.returncode == 2 and 'aliases' in r.stderr and len(r.stderr) < 500, r.stderr[:500]
    r = run_qvl('sweep', 'token_budget', '-p', 'sides', '[1,', '--runs-dir', tmp_path / 'runs', check=False)
    assert r.returncode == 2 and len(r.stderr) < 500, r.stderr


# -- options that do what they say -------------------------------------------------------------------------------------------
def test_lazy_without_strict_skips_a_bad_sample_and_with_strict_stops(tmp_path, tiny_model):
    d = tmp_path / 'd'; image(d / 'a.jpg', (300, 300))
    (d / 'train.json').write_text(json.dumps([_chat('a.jpg'), _chat('missing.jpg'), _chat('a.jpg', answer='blue')]))
    cfg = tmp_path / 'c.yaml'
    cfg.write_text(yaml.safe_dump(dict(model=str(tiny_model), data=str(d / 'train.json'), out_dir=str(tmp_path / 'run'), steps=3,
                                       batch_size=1, target=[56, 56], cutoff_len=2048, lazy=True, report_to='none', data_workers=0)))
    run_qvl('train', cfg)
    assert [s['index'] for s in json.loads((tmp_path / 'run' / 'skipped.json').read_text())] == [1]
    r = run_qvl('train', cfg, '--set', 'strict=true', '--out', tmp_path / 'run2', check=False)
    assert r.returncode == 2 and 'sample 1 cannot be trained on' in r.stderr, r.stderr


def test_an_empty_sweep_parameter_reaches_the_notebook_as_empty_text():
    from qvl.experiments import _as_type
    assert _as_type('formats', '', 'nf4') == '' and _as_type('formats', None, 'nf4') == ''


def test_max_image_pixels_raises_pillows_own_limit(tmp_path):
    from PIL import Image as PILImage
    big = tmp_path / 'd' / 'big.png'; big.parent.mkdir()
    PILImage.new('L', (20000, 10000)).save(big)             # 200 M pixels: over Pillow's default bomb limit (179 M)
    r = run_qvl('resize', big.parent, tmp_path / 'o', '--max-pixels', '50000', '--max-image-pixels', '300000000', timeout=600)
    assert '1 resized' in r.stdout, r.stdout + r.stderr


def test_outputs_get_the_mode_the_umask_gives(tmp_path, sample_data):
    old = os.umask(0o022)
    try: run_qvl('resize', sample_data / 'images', tmp_path / 'o', '--max-pixels', '50000')
    finally: os.umask(old)
    f = next((tmp_path / 'o').glob('*.jpg'))
    assert f.stat().st_mode & 0o777 == 0o644 and (tmp_path / 'o' / 'manifest.csv').stat().st_mode & 0o777 == 0o644


def test_a_missing_adapter_weights_file_is_named(tmp_path, tiny_model, sample_data):
    cfg = _train_cfg(tmp_path, tiny_model, sample_data, steps=1, save_every=0)
    run_qvl('train', cfg)
    (tmp_path / 'run' / 'adapter' / 'adapter_model.safetensors').unlink()
    r = run_qvl('export', tmp_path / 'run', tmp_path / 'merged', check=False)
    assert r.returncode == 2 and 'adapter weights are missing' in r.stderr, r.stderr


def test_a_rerun_reuses_the_merged_export_of_the_same_adapter(tmp_path, tiny_model, sample_data):
    "What the eval template does first: a second run (after a failure) takes the merged model back instead of refusing."
    from qvl.evaluate import export_source
    run_qvl('train', _train_cfg(tmp_path, tiny_model, sample_data, steps=1, save_every=0))
    first = export_source(tmp_path / 'run', tmp_path / 'exports')
    stamp = (first / 'config.json').stat().st_mtime_ns
    again = export_source(tmp_path / 'run', tmp_path / 'exports')
    assert again == first and (again / 'config.json').stat().st_mtime_ns == stamp


def test_a_failed_eval_sweep_runs_again_and_an_empty_parameter_is_empty_text(tmp_path, tiny_model, sample_data):
    "Through `qvl sweep`: the same parameters after a failure go on (the merged export reused); `-p data ''` is ''."
    import shutil
    run_qvl('train', _train_cfg(tmp_path, tiny_model, sample_data, steps=1, save_every=0))
    later = tmp_path / 'later' / 'test.json'                  # the evaluation data, not there on the first try
    args = ('sweep', 'eval', '-p', 'run_dir', tmp_path / 'run', '-p', 'formats', '', '-p', 'data', later, '-p', 'budgets', '56',
            '-p', 'limit', '2', '-p', 'batch_size', '2', '--runs-dir', tmp_path / 'runs')
    r = run_qvl(*args, check=False, timeout=900)
    assert r.returncode == 2 and 'eval failed in cell' in r.stderr, r.stderr[-1500:]
    assert list((tmp_path / 'runs' / 'eval').glob('*/exports/bf16-merged/merged/config.json'))     # merged before failing
    later.parent.mkdir(); shutil.copy(sample_data / 'test.json', later)
    shutil.copytree(sample_data / 'images', later.parent / 'images')
    r = run_qvl(*args, timeout=900)
    d = next((tmp_path / 'runs' / 'eval').iterdir())
    assert (d / 'done.json').exists() and (d / 'results.csv').exists(), r.stdout
    r = run_qvl('sweep', 'token_budget', '-p', 'data', '', '-p', 'n', '4', '--runs-dir', tmp_path / 'runs', timeout=900)
    params = yaml.safe_load(next((tmp_path / 'runs' / 'token_budget').glob('*/params.yaml')).read_text())
    assert params['data'] == '', params
