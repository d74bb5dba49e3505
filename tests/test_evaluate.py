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
    """`qvl export RUN OUT --quantize nf4|int8|fp8|w4a16` from a full and a LoRA run; `qvl eval` gives each export's
    accuracy per budget beside the bf16 model's, with speed and memory, and writes every answer."""
    import torch
    from transformers import AutoModelForImageTextToText
    made, data = runs
    outs = {'bf16': made['full'] / 'model'}
    held = dict(nf4=lambda l: type(l).__name__ == 'Linear4bit', int8=lambda l: type(l).__name__ == 'Linear8bitLt',
                fp8=lambda l: getattr(l, 'weight', torch.empty(0)).dtype == torch.float8_e4m3fn,
                w4a16=lambda l: hasattr(l, 'weight_packed'))       # how each format's layers hold their weights on load
    for q, run in (('nf4', made['full']), ('int8', made['lora']), ('fp8', made['lora']), ('w4a16', made['full'])):
        r = run_qvl('export', run, tmp_path / q, '--quantize', q, '--calib-samples', 16)
        assert f'{q} checkpoint written to' in r.stdout and 'visual' in r.stdout
        m = AutoModelForImageTextToText.from_pretrained(tmp_path / q)
        assert held[q](m.model.language_model.layers[0].mlp.up_proj) and held[q](m.model.language_model.layers[1].self_attn.o_proj)
        assert not any(held[q](mod) or hasattr(mod, 'quantization_scheme') for n, mod in m.named_modules()
                       if 'visual' in n or n == 'lm_head')
        outs[q] = tmp_path / q
    info = json.loads((tmp_path / 'w4a16' / 'quantization.json').read_text())
    train = yaml.safe_load((made['full'].parent / 'full.yaml').read_text())
    assert info['calibration']['samples'] == 16 and info['calibration']['data'] == train['data'] and info['group_size'] == 64
    rows = {}
    for fmt, d in outs.items():
        r = json.loads(run_qvl('eval', d, data / 'test.json', '--budgets', '224,56', '--batch-size', '4', '--json').stdout)
        assert [x['budget'] for x in r['rows']] == ['224x224', '56x56'] and r['skipped'] == []
        rows[fmt] = r['rows']
        assert all(x['format'] == fmt and x['samples'] == 8 and 0 <= x['exact'] <= x['contains'] <= 1 and x['latency_s'] > 0
                   for x in r['rows'])
    assert rows['nf4'][0]['weight_gb'] < rows['bf16'][0]['weight_gb']
    assert all(rows[q][0]['disk_gb'] < rows['bf16'][0]['disk_gb'] for q in ('nf4', 'int8', 'fp8', 'w4a16'))
    assert rows['w4a16'][0]['runs_as'] == 'dequantized to bf16'     # on a CPU; fp8 too (its kernels need a GPU)
    # the trained answers survive: the full run's 4-bit exports within 1 in 8 answers of it at the training budget
    assert all(abs(rows[q][0]['exact'] - rows['bf16'][0]['exact']) <= 1 / 8 for q in ('nf4', 'w4a16')), rows
    text = run_qvl('eval', outs['nf4'], data / 'test.json', '--budgets', '224', '--out', tmp_path / 'ev').stdout
    assert 'nf4' in text and '224x224' in text and (tmp_path / 'ev' / 'answers.csv').read_text().count('\n') == 9


def test_bad_input_gets_one_clear_line_and_nothing_half_written(runs, tmp_path):
    made, data = runs
    empty_run = tmp_path / 'empty-run'
    empty_run.mkdir()
    (empty_run / 'config.json').write_text((made['full'] / 'config.json').read_text())     # a run that saved no model
    cases = [(('export', empty_run, tmp_path / 'o1', '--quantize', 'nf4'), 'has no model/ yet: train it first'),
             (('export', made['full'], tmp_path / 'o2', '--quantize', 'gguf'), 'choose one of nf4, int8, fp8, w4a16'),
             (('export', made['full'] / 'model', tmp_path / 'o4', '--quantize', 'w4a16'), 'give a training run, or --calib-data'),
             (('export', tmp_path, tmp_path / 'o3', '--quantize', 'nf4'), 'no config.json'),
             (('eval', made['full'] / 'model', data / 'test.json', '--budgets', '224,big'), 'expected image sides')]
    for args, needle in cases:
        r = run_qvl(*args, check=False)
        assert r.returncode == 2 and needle in r.stderr and 'Traceback' not in r.stderr, (args, r.stderr)
    assert not any((tmp_path / o).exists() for o in ('o1', 'o2', 'o3', 'o4'))
    # an evaluation set with broken samples: they are left out and listed, the others evaluated
    records = json.loads((data / 'test.json').read_text())
    records[1]['images'] = ['images/missing.jpg']
    (data / 'broken.json').write_text(json.dumps(records))
    r = json.loads(run_qvl('eval', made['full'] / 'model', data / 'broken.json', '--budgets', '224', '--json').stdout)
    assert r['rows'][0]['samples'] == len(records) - 1
    assert [(s['index'], s['codes']) for s in r['skipped']] == [(1, ['missing_image'])]
    # a calibration set with broken samples: each left out with one line, the export made from the rest
    r = run_qvl('export', made['full'] / 'model', tmp_path / 'o5', '--quantize', 'w4a16', '--calib-data', data / 'broken.json')
    assert 'calibration: sample #1 left out: missing_image' in r.stdout
    assert json.loads((tmp_path / 'o5' / 'quantization.json').read_text())['calibration']['samples'] == len(records) - 1
    # none usable: one line, nothing written
    for rec in records: rec['images'] = ['images/missing.jpg']
    (data / 'all-broken.json').write_text(json.dumps(records))
    r = run_qvl('export', made['full'] / 'model', tmp_path / 'o6', '--quantize', 'w4a16', '--calib-data', data / 'all-broken.json',
                check=False)
    assert r.returncode == 2 and 'none of the first 8 calibration samples can be used' in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path / 'o6').exists()


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
