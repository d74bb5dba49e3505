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
    code = "import sys, qvl, qvl.core, qvl.resize, qvl.sample, qvl.tokens, qvl.cli; " \
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
    from qvl.core import load_tiny
    processor, model = load_tiny(tmp_path / 'm')
    assert model.config.model_type == 'qwen2_vl' and processor.image_token == '<|image_pad|>'
    r = run_qvl('tiny-model', tmp_path / 'm', check=False)
    assert r.returncode == 2 and 'not empty' in r.stderr


def test_demo_runs_end_to_end(tmp_path):
    r = run_qvl('demo', '--out', tmp_path / 'demo', '--n', '8')
    assert 'loss' in r.stdout and '600x600' in r.stdout
    assert (tmp_path / 'demo' / 'tokens_by_side.png').stat().st_size > 10_000
    assert (tmp_path / 'demo' / 'sample-data-600' / 'manifest.csv').exists()
