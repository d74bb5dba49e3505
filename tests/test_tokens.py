"""The doctor and the fixes, end to end: the real processor + model error, real CLI processes, real images."""
import json, shutil

import numpy as np
import pytest
from PIL import Image

from conftest import run_qvl
from qvl.formats import SPECS, convert, format_sample, parse_sample, read_records, write_records
from qvl.doctor import doctor

CUTOFF = 1024


def jpeg(path, w, h, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def turns(q, a='3'):
    return [dict(role='user', content=q), dict(role='assistant', content=a)]


def trainer_batch(processor, record, root, cutoff):
    "What a trainer does with a sharegpt record: template, processor (images expanded), then cut at cutoff."
    from qvl.doctor import _template_parts
    s = parse_sample(record, SPECS['sharegpt'])
    text = processor.apply_chat_template(_template_parts(s), tokenize=False)
    images = [Image.open(root / p).convert('RGB') for p in s.images]
    b = processor(text=[text], images=images or None, return_tensors='pt')
    b['input_ids'] = b['input_ids'][:, :cutoff]
    b['attention_mask'] = b['attention_mask'][:, :cutoff]
    return b


def test_real_error_then_fix_trains(tiny_model, tmp_path):
    """A 2000x2000 image at cutoff 1024 with the checkpoint's default max_pixels crashes the real model;
    `qvl fix` output trains on the same model."""
    import torch
    from qvl.families import load_tiny
    data = tmp_path / 'data'
    jpeg(data / 'img/big.jpg', 2000, 2000)
    jpeg(data / 'img/small.jpg', 500, 400, 1)
    recs = [dict(id='big', messages=turns('<image>How many red marks?'), images=['img/big.jpg']),
            dict(id='small', messages=turns('<image>Colour?', 'red'), images=['img/small.jpg'])]
    write_records(recs, data / 'train.json')
    processor, model = load_tiny(tiny_model)
    b = trainer_batch(processor, recs[0], data, CUTOFF)
    with pytest.raises(ValueError, match='Image features and image tokens do not match'):
        model(**b, labels=b['input_ids'])

    r = run_qvl('doctor', data / 'train.json', '--model', tiny_model, '--cutoff-len', CUTOFF, '--json', check=False)
    assert r.returncode == 1
    assert [(f['id'], f['code']) for f in json.loads(r.stdout)['samples']] == [('big', 'image_tokens_truncated')]

    run_qvl('fix', data / 'train.json', tmp_path / 'fixed', '--model', tiny_model, '--cutoff-len', CUTOFF)
    fixed = read_records(tmp_path / 'fixed' / 'train.json')
    assert [f['id'] for f in fixed] == ['big', 'small']
    assert run_qvl('doctor', tmp_path / 'fixed', '--model', tiny_model, '--cutoff-len', CUTOFF).returncode == 0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for rec in fixed:
        b = trainer_batch(processor, rec, tmp_path / 'fixed', CUTOFF)
        n_img = int((b['input_ids'] == model.config.image_token_id).sum())
        assert n_img == int(b['image_grid_thw'].prod(-1).sum()) // 4 and b['input_ids'].shape[1] <= CUTOFF
        loss = model(**b, labels=b['input_ids']).loss
        loss.backward(); opt.step(); opt.zero_grad()
        assert torch.isfinite(loss)
    assert (data / 'img/big.jpg').stat().st_size > 0 and read_records(data / 'train.json') == recs  # source untouched


def planted_dataset(d):
    """Clean samples plus one of each sample problem the doctor knows (`qvl.sample.write_problem_data`, its ids shortened),
    and a clean sample that writes the model's own tokens, has a system turn and a field no format knows."""
    from qvl.sample import write_problem_data
    short = dict(clean0='c0', clean1='c1', clean2='c2', count='p', missing='m', broken='u', thin='a', big='t', long='s', clean3='c4')
    recs = [dict(r, id=short[r['id']]) for r in write_problem_data(d)]
    recs.insert(3, dict(id='c3', messages=[dict(role='system', content='Be brief.')] + turns('<|vision_start|><|image_pad|><|vision_end|>Colour?', 'red'),
                        images=['img/ok3.jpg'], extra_field=[1, 2]))
    write_records(recs, d / 'train.json')
    return recs


def test_doctor_flags_exactly_the_planted_problems(tiny_model, tmp_path):
    planted_dataset(tmp_path)
    r = run_qvl('doctor', tmp_path / 'train.json', '--model', tiny_model, '--cutoff-len', CUTOFF, '--json',
                '--placeholder', '<img>', check=False)
    # with <img> as the placeholder, `<image>` is plain text: every sample using it becomes a mismatch, leaving
    # c2 (no image) and c3 (the model's own tokens, recognised whatever the placeholder)
    assert r.returncode == 1 and json.loads(r.stdout)['summary']['clean'] == 2
    r = run_qvl('doctor', tmp_path / 'train.json', '--model', tiny_model, '--cutoff-len', CUTOFF, '--json', check=False)
    report = json.loads(r.stdout)
    assert r.returncode == 1 and report['model'] == []
    found = {(f['index'], f['id'], f['code']) for f in report['samples']}
    assert found == {(4, 'p', 'placeholder_count_mismatch'), (5, 'm', 'missing_image'), (6, 'u', 'unreadable_image'),
                     (7, 'a', 'aspect_ratio_too_large'), (8, 't', 'image_tokens_truncated'), (9, 's', 'sequence_too_long')}
    assert all(f['message'] and f['fix'] for f in report['samples'])
    assert report['summary']['clean'] == 5 and report['summary']['samples'] == 11
    text = run_qvl('doctor', tmp_path / 'train.json', '--model', tiny_model, '--cutoff-len', CUTOFF, check=False).stdout
    assert 'image_tokens_truncated: 1 sample(s)' in text and '#8 (id t)' in text


def test_doctor_counts_what_the_processor_produces(tmp_path):
    "Every clean sample's token count equals the real processor's input_ids length, for both model families."
    from qvl.families import build_tiny_model, load_tiny
    from qvl.doctor import analyse, inspect_model, load_dataset, model_budget
    recs = planted_dataset(tmp_path / 'data')
    for family in ('qwen2_5_vl', 'qwen2_vl'):
        m = build_tiny_model(tmp_path / family, family)
        info = inspect_model(m)
        checks = analyse(load_dataset(tmp_path / 'data' / 'train.json'), info, model_budget(info), None, progress=False)
        processor, _ = load_tiny(m)
        for c in checks:
            if c.findings: continue
            b = trainer_batch(processor, recs[c.index], tmp_path / 'data', 10 ** 6)
            assert c.total_tokens == b['input_ids'].shape[1], (family, c.id)
        assert sum(c.total_tokens is not None for c in checks) >= 6


def test_doctor_finds_model_problems_and_fix_model_repairs_them(tiny_model, tmp_path):
    planted = tmp_path / 'data'
    planted.mkdir()
    jpeg(planted / 'a.jpg', 300, 300)
    write_records([dict(messages=turns('<image>x'), images=['a.jpg'])], planted / 'd.jsonl')
    bad = shutil.copytree(tiny_model, tmp_path / 'bad')
    cfg = json.loads((bad / 'config.json').read_text())
    cfg['image_token_id'] = 151655
    (bad / 'config.json').write_text(json.dumps(cfg))
    tj = json.loads((bad / 'tokenizer.json').read_text())    # a tokenizer that lost <|video_pad|>
    tj['added_tokens'] = [t for t in tj['added_tokens'] if t['content'] != '<|video_pad|>']
    (bad / 'tokenizer.json').write_text(json.dumps(tj))
    tc = json.loads((bad / 'tokenizer_config.json').read_text())
    tc.pop('video_token')
    (bad / 'tokenizer_config.json').write_text(json.dumps(tc))
    r = run_qvl('doctor', planted / 'd.jsonl', '--model', bad, '--json', check=False)
    codes = sorted(f['code'] for f in json.loads(r.stdout)['model'])
    assert r.returncode == 1 and codes == ['image_token_id_mismatch', 'special_token_missing']
    before = (bad / 'config.json').read_bytes()
    out = run_qvl('fix-model', bad, tmp_path / 'good').stdout
    assert 'image_token_id: 151655 ->' in out and 'added special token <|video_pad|>' in out
    assert (bad / 'config.json').read_bytes() == before                   # never in place
    assert run_qvl('doctor', planted / 'd.jsonl', '--model', tmp_path / 'good').returncode == 0
    from qvl.families import load_tiny                                       # and it still loads and runs
    processor, model = load_tiny(tmp_path / 'good')
    b = trainer_batch(processor, dict(messages=turns('<image>x'), images=['a.jpg']), planted, 4096)
    assert model(**b).logits.shape[1] == b['input_ids'].shape[1]


def test_fix_drop_strategy_and_placeholders(tiny_model, tmp_path):
    d = tmp_path / 'data'
    planted_dataset(d)
    recs = read_records(d / 'train.json')
    recs.append(dict(id='n', messages=turns('How many red marks?'), images=['img/ok1.jpg']))
    write_records(recs, d / 'train.json')
    r = run_qvl('fix', d / 'train.json', tmp_path / 'out', '--model', tiny_model, '--cutoff-len', CUTOFF,
                '--strategy', 'drop')
    assert 'dropped #8 (id t): image_tokens_truncated' in r.stdout
    dropped = (tmp_path / 'out' / 'dropped.csv').read_text()
    assert all(f',{i},' in dropped for i in 'pmuats')
    kept = read_records(tmp_path / 'out' / 'train.json')
    assert [k['id'] for k in kept] == ['c0', 'c1', 'c2', 'c3', 'c4', 'n']
    assert kept[-1]['messages'][0]['content'] == '<image>How many red marks?'
    assert kept[3]['extra_field'] == [1, 2]                                  # unknown fields kept
    assert run_qvl('doctor', tmp_path / 'out' / 'train.json', '--model', tiny_model, '--cutoff-len', CUTOFF).returncode == 0
    r = run_qvl('fix', d / 'train.json', tmp_path / 'out', '--model', tiny_model, '--cutoff-len', CUTOFF, check=False)
    assert r.returncode == 2 and 'not empty' in r.stderr


def test_messages_format_and_dataset_info(tiny_model, tmp_path):
    "Qwen/OpenAI messages JSONL in, LLaMA-Factory dataset_info out, same findings either way."
    d = tmp_path / 'data'
    planted_dataset(d)
    skipped = convert(d / 'train.json', d / 'msgs.jsonl', to='messages')
    assert [(s['id'], s['reason']) for s in skipped] == [('p', '2 image placeholders for 1 images')]
    a = doctor(d / 'train.json', tiny_model, CUTOFF, progress=False)
    b = doctor(d / 'msgs.jsonl', tiny_model, CUTOFF, progress=False)
    assert [(f['id'], f['code']) for f in a.samples if f['id'] != 'p'] == [(f['id'], f['code']) for f in b.samples]
    fx = run_qvl('fix', d / 'msgs.jsonl', tmp_path / 'fixed', '--model', tiny_model, '--cutoff-len', CUTOFF)
    assert 'shrunk #7: 5041 ->' in fx.stdout   # 't', one place earlier once 'p' is left out
    assert doctor(tmp_path / 'fixed' / 'msgs.jsonl', tiny_model, CUTOFF, progress=False).ok
    # a LLaMA-Factory folder with custom column names and tags
    lf = tmp_path / 'lf'
    shutil.copytree(d / 'img', lf / 'img')
    recs = [dict(conv=[dict(speaker='person', text='<image>How many?'), dict(speaker='bot', text='2')], pics=['img/ok0.jpg'])]
    write_records(recs, lf / 'mine.json')
    (lf / 'dataset_info.json').write_text(json.dumps(dict(mine=dict(file_name='mine.json', formatting='sharegpt',
        columns=dict(messages='conv', images='pics'),
        tags=dict(role_tag='speaker', content_tag='text', user_tag='person', assistant_tag='bot')))))
    assert doctor(lf, tiny_model, CUTOFF, progress=False).ok
    s = parse_sample(recs[0], __import__('qvl.doctor').doctor.load_dataset(lf).spec)
    assert format_sample(s, SPECS['sharegpt-conversations'])['conversations'][0] == {'from': 'human', 'value': '<image>How many?'}


def test_bad_input_is_a_clear_error(tiny_model, tmp_path):
    (tmp_path / 'x.json').write_text('{"not": "a list"}')
    for args, msg in [(('doctor', tmp_path / 'x.json', '--model', tiny_model), 'expected a JSON list'),
                      (('doctor', tmp_path / 'nope.json', '--model', tiny_model), 'dataset not found'),
                      (('doctor', tmp_path / 'x.json', '--model', 'Qwen9-VL'), 'Qwen2.5-VL-7B'),
                      (('fix', tmp_path / 'x.json', tmp_path / 'o', '--model', 'Qwen2.5-VL-7B', '--cutoff-len', 10),
                       'needs a checkpoint directory')]:
        r = run_qvl(*args, check=False)
        assert r.returncode == 2 and r.stderr.startswith('qvl: error:') and msg in r.stderr, r.stderr
        assert 'Traceback' not in r.stderr
