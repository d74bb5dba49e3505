"""From a trained run to production, through the command: `qvl export --quantize` and `qvl eval`, bad input included."""
import json

import pytest
import yaml

from conftest import run_qvl


@pytest.fixture(scope='module')
def runs(tiny_model, tmp_path_factory):
    "A full fine-tuning run and a LoRA run of the tiny model on generated colour data, trained by `qvl train`."
    from qvl.sample import write_sample_data
    root = tmp_path_factory.mktemp('eval')
    data = write_sample_data(root / 'colour', n=40, seed=7, min_side=224, max_side=336, mark=40, task='colour', progress=False)
    made = {}
    for method, lr in (('full', 3e-3), ('lora', 1e-2)):
        cfg = dict(model=str(tiny_model), data=str(data / 'train.json'), out_dir=str(root / method), method=method,
                   freeze_vision=False, learning_rate=lr, steps=30, batch_size=4, target=[224, 224], cutoff_len=1024,
                   gradient_checkpointing=False, report_to='none', cache_dir=str(root / 'cache'))
        (root / f'{method}.yaml').write_text(yaml.safe_dump(cfg))
        run_qvl('train', root / f'{method}.yaml')
        made[method] = root / method
    return made, data


def test_quantized_exports_load_and_evaluate_beside_bf16(runs, tmp_path):
    """`qvl export RUN OUT --quantize nf4|int8` from a full and a LoRA run; `qvl eval` gives each export's accuracy per
    budget beside the bf16 model's, with speed and memory, and writes every answer."""
    from transformers import AutoModelForImageTextToText
    made, data = runs
    outs = {'bf16': made['full'] / 'model'}
    for q, run in (('nf4', made['full']), ('int8', made['lora'])):
        r = run_qvl('export', run, tmp_path / q, '--quantize', q)
        assert f'{q} checkpoint written to' in r.stdout and 'visual' in r.stdout
        m = AutoModelForImageTextToText.from_pretrained(tmp_path / q)
        assert type(m.model.language_model.layers[0].mlp.up_proj).__name__ == ('Linear4bit' if q == 'nf4' else 'Linear8bitLt')
        outs[q] = tmp_path / q
    rows = {}
    for fmt, d in outs.items():
        r = json.loads(run_qvl('eval', d, data / 'test.json', '--budgets', '224,56', '--batch-size', '4', '--json').stdout)
        assert [x['budget'] for x in r['rows']] == ['224x224', '56x56'] and r['skipped'] == []
        rows[fmt] = r['rows']
        assert all(x['format'] == fmt and x['samples'] == 8 and 0 <= x['exact'] <= x['contains'] <= 1 and x['latency_s'] > 0
                   for x in r['rows'])
    assert rows['nf4'][0]['weight_gb'] < rows['bf16'][0]['weight_gb']
    text = run_qvl('eval', outs['nf4'], data / 'test.json', '--budgets', '224', '--out', tmp_path / 'ev').stdout
    assert 'nf4' in text and '224x224' in text and (tmp_path / 'ev' / 'answers.csv').read_text().count('\n') == 9


def test_bad_input_gets_one_clear_line_and_nothing_half_written(runs, tmp_path):
    made, data = runs
    empty_run = tmp_path / 'empty-run'
    empty_run.mkdir()
    (empty_run / 'config.json').write_text((made['full'] / 'config.json').read_text())     # a run that saved no model
    cases = [(('export', empty_run, tmp_path / 'o1', '--quantize', 'nf4'), 'has no model/ yet: train it first'),
             (('export', made['full'], tmp_path / 'o2', '--quantize', 'fp8'), 'choose one of nf4, int8'),
             (('export', tmp_path, tmp_path / 'o3', '--quantize', 'nf4'), 'no config.json'),
             (('eval', made['full'] / 'model', data / 'test.json', '--budgets', '224,big'), 'expected image sides')]
    for args, needle in cases:
        r = run_qvl(*args, check=False)
        assert r.returncode == 2 and needle in r.stderr and 'Traceback' not in r.stderr, (args, r.stderr)
    assert not any((tmp_path / o).exists() for o in ('o1', 'o2', 'o3'))
    # an evaluation set with broken samples: they are left out and listed, the others evaluated
    records = json.loads((data / 'test.json').read_text())
    records[1]['images'] = ['images/missing.jpg']
    (data / 'broken.json').write_text(json.dumps(records))
    r = json.loads(run_qvl('eval', made['full'] / 'model', data / 'broken.json', '--budgets', '224', '--json').stdout)
    assert r['rows'][0]['samples'] == len(records) - 1
    assert [(s['index'], s['codes']) for s in r['skipped']] == [(1, ['missing_image'])]


def test_eval_template_compares_bf16_with_each_export(runs, tmp_path):
    "`qvl sweep eval` on a LoRA run: the merged bf16 model and its nf4 export, side by side per budget, with a figure."
    import pandas as pd
    from PIL import Image
    made, data = runs
    run_qvl('sweep', 'eval', '-p', 'run_dir', made['lora'], '-p', 'formats', 'nf4', '-p', 'budgets', '224,56',
            '-p', 'data', data / 'test.json', '--runs-dir', tmp_path / 'runs', timeout=900)
    d = next(p for p in (tmp_path / 'runs' / 'eval').iterdir() if (p / 'done.json').exists())
    res = pd.read_csv(d / 'results.csv')
    assert list(zip(res.format, res.budget)) == [('bf16', '224x224'), ('bf16', '56x56'), ('nf4', '224x224'), ('nf4', '56x56')]
    assert (res.samples == 8).all() and res.exact.between(0, 1).all()
    answers = pd.read_csv(d / 'answers.csv')
    assert len(answers) == 4 * 8 and set(answers.format) == {'bf16', 'nf4'}
    assert Image.open(d / 'accuracy.png').size[0] > 400
