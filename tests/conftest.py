"""Shared fixtures: a tiny model and sample data built once per session, and the `gpu` marker."""
import shutil, subprocess, sys
from pathlib import Path

import pytest

QVL = [sys.executable, '-m', 'qvl.cli']   # the installed console script runs the same code


def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA GPU; skipped without one')


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available(): return
    skip = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'gpu' in item.keywords: item.add_marker(skip)


def run_qvl(*args, check=True, **kw):
    "Run the real `qvl` command in a subprocess."
    exe = shutil.which('qvl', path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else QVL
    r = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"qvl {' '.join(map(str, args))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope='session')
def tiny_model(tmp_path_factory):
    from qvl.families import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp('models') / 'tiny25')


@pytest.fixture(scope='session')
def tiny_qwen3(tmp_path_factory):
    "The offline tiny Qwen3-VL: 16-pixel patches (an image factor of 32), no vision windows, DeepStack."
    from qvl.families import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp('models') / 'tiny3', family='qwen3_vl')


@pytest.fixture(scope='session')
def sample_data(tmp_path_factory):
    from qvl.sample import write_sample_data
    return write_sample_data(tmp_path_factory.mktemp('data') / 'sample', n=12, seed=3, progress=False)
