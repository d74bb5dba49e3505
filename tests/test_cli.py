"""The `qvl` command, run as a real process."""
import re, subprocess, sys

import pytest
from conftest import run_qvl

SUBCOMMANDS = ['demo', 'info', 'tiny-model', 'sample-data', 'resize', 'doctor', 'fix', 'fix-model', 'convert', 'plan']


def test_help_lists_subcommands():
    out = run_qvl('--help').stdout
    for cmd in SUBCOMMANDS:
        assert cmd in out


@pytest.mark.parametrize('cmd', SUBCOMMANDS)
def test_each_subcommand_has_help(cmd):
    out = run_qvl(cmd, '--help').stdout
    assert f'usage: qvl {cmd}' in out and len(out.splitlines()) > 4


def test_light_imports_do_not_pull_torch():
    code = "import sys, qvl, qvl.core, qvl.resize, qvl.boxes, qvl.folders, qvl.sample, qvl.doctor, qvl.fixes, qvl.cli; " \
           "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not heavy, heavy"
    subprocess.run([sys.executable, '-c', code], check=True)


@pytest.mark.parametrize('args,needle', [(['info', 'Qwen9-VL-1B'], 'Qwen2.5-VL-7B'),
                                         (['info', '.'], 'no config.json'),
                                         (['tiny-model', 'x', '--family', 'llama'], 'invalid choice'),
                                         (['resize', 'no/such/dir', 'out'], 'not a directory')])
def test_bad_input_is_one_line_no_traceback(args, needle, tmp_path):
    r = run_qvl(*args, check=False, cwd=tmp_path)
    assert r.returncode == 2
    assert needle in r.stderr and 'Traceback' not in r.stderr
    # the last line is the error itself: ours (`qvl: error:`) or argparse's (`qvl SUBCOMMAND: error:`)
    assert re.match(r'qvl( [a-z-]+)?: error: ', r.stderr.strip().splitlines()[-1]), r.stderr


def test_info_known_model():
    out = run_qvl('info', 'Qwen/Qwen2.5-VL-3B-Instruct').stdout
    assert '3,754,622,976 parameters' in out and 'image 151655' in out


def test_tiny_model_cli_writes_a_loadable_checkpoint(tmp_path):
    run_qvl('tiny-model', tmp_path / 'm', '--family', 'qwen2_vl')
    from qvl.families import load_tiny
    processor, model = load_tiny(tmp_path / 'm')
    assert model.config.model_type == 'qwen2_vl' and processor.image_token == '<|image_pad|>'
    r = run_qvl('tiny-model', tmp_path / 'm', check=False)
    assert r.returncode == 2 and 'not empty' in r.stderr


def test_demo_runs_end_to_end(tmp_path):
    r = run_qvl('demo', '--out', tmp_path / 'demo', '--n', '8')
    assert 'loss' in r.stdout and '600x600' in r.stdout
    assert (tmp_path / 'demo' / 'tokens_by_side.png').stat().st_size > 10_000
    assert (tmp_path / 'demo' / 'sample-data-600' / 'manifest.csv').exists()


def test_every_example_config_is_a_valid_run_that_fits_what_it_says(tmp_path):
    "`qvl examples NAME --out` writes a config `qvl train` reads; the estimate of its step fits the GPUs its header names."
    import re
    from qvl.config import example_configs, load_config
    from qvl.core import ImageSize
    from qvl.plan import PLAN_MARGIN
    from qvl.estimate import Setup, estimate_setup
    listed = run_qvl('examples').stdout
    for name in example_configs():
        assert name in listed
        out = tmp_path / f'{name}.yaml'
        run_qvl('examples', name, '--out', out)
        cfg = load_config(out)
        n, gb = map(int, re.search(r'# fits: (\d+) x (\d+) GB', out.read_text()).groups())
        e = estimate_setup(Setup.of(cfg, image_size=ImageSize(*cfg.target), gpus=n))
        assert e.fits(gb * 1e9, PLAN_MARGIN), (name, e.peak_reserved_bytes / 1e9, gb)
        assert cfg.batch_size * cfg.grad_accum * n >= 8, name
    r = run_qvl('examples', 'full-3b', '--out', tmp_path / 'full-3b.yaml', check=False)
    assert r.returncode == 2 and 'exists' in r.stderr


def test_train_has_a_flag_for_every_run_key_with_its_help(tmp_path, tiny_model, sample_data):
    import dataclasses
    from qvl.config import TrainConfig, key_help
    out = run_qvl('train', '--help').stdout
    helps = key_help()
    for f in dataclasses.fields(TrainConfig):
        flag = '--' + f.name.replace('_', '-')
        assert flag in out, flag
        assert helps[f.name].split()[0] in out, (f.name, helps[f.name])
    run_qvl('train', '--model', tiny_model, '--data', sample_data / 'train.json', '--out', tmp_path / 'run', '--steps', '1',
            '--lora-rank', '4', '--no-gradient-checkpointing', '--target', '56x56', '--report-to', 'none')
    import json
    saved = json.loads((tmp_path / 'run' / 'config.json').read_text())
    assert (saved['lora_rank'], saved['gradient_checkpointing'], saved['target'], saved['steps']) == (4, False, [56, 56], 1)
