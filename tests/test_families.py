"""A model family is one registry entry: a made-up family added in one `Family` (its transformers classes registered as
any custom model's are) is seen by `qvl info`, `qvl tiny-model --family`, the doctor, the box conventions, the estimator
and a training step, with nothing else changed."""
import json

import pytest

from qvl.families import FAMILIES, QWEN_TOKEN_IDS, Family


@pytest.fixture(scope='module')
def made_up():
    "Family `made_up_vl`: Qwen2.5-VL's code under another model_type, 16-pixel patches, 128-pixel windows."
    from transformers import AutoConfig, AutoModelForImageTextToText, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    class MadeUpConfig(Qwen2_5_VLConfig):
        model_type = 'made_up_vl'

    class MadeUpForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
        config_class = MadeUpConfig

    AutoConfig.register('made_up_vl', MadeUpConfig, exist_ok=True)
    AutoModelForImageTextToText.register(MadeUpConfig, MadeUpForConditionalGeneration, exist_ok=True)
    tiny = dict(FAMILIES['qwen2_5_vl'].tiny_vision, patch_size=16, window_size=128)
    FAMILIES['made_up_vl'] = Family('made_up_vl', 'Made-Up-VL', 'MadeUpForConditionalGeneration', 'Qwen2_5_VLProcessor',
                                    'qwen2_vl.video_processing_qwen2_vl.Qwen2VLVideoProcessor', 16, QWEN_TOKEN_IDS,
                                    text=dict, vision=dict, tiny_vision=tiny, boxes=('json', 'pixels'))
    yield 'made_up_vl'
    del FAMILIES['made_up_vl']


def test_a_made_up_family_is_one_entry(made_up, tmp_path, capsys):
    from qvl.cli import main
    from qvl.estimate import Setup, estimate_setup
    from qvl.boxes import box_style
    from qvl.sample import write_sample_data
    from qvl.doctor import doctor, inspect_model
    from qvl.train import Trainer, tiny_run_config
    ckpt = tmp_path / 'tiny'
    assert main(['tiny-model', str(ckpt), '--family', made_up]) == 0                  # the CLI offers the new family
    assert json.loads((ckpt / 'config.json').read_text())['model_type'] == made_up
    capsys.readouterr()
    assert main(['info', str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert f'{made_up},' in out and 'pixels per image token 32' in out
    info = inspect_model(ckpt)
    assert (info.family, info.factor) == (made_up, 32) and box_style(made_up) == box_style('qwen2_5_vl')
    data = write_sample_data(tmp_path / 'data', n=6, seed=0, min_side=64, max_side=96, progress=False)
    r = doctor(data / 'train.json', ckpt, 512)
    assert r.ok, r
    e = estimate_setup(Setup(model=str(ckpt), method='lora', image_size=96, batch_size=2))
    assert e.peak_allocated_bytes > 0 and e.features['patches'] == 2 * (96 // 32) ** 2 * 4
    cfg = tiny_run_config(out_dir=str(tmp_path / 'run'), model=str(ckpt), data=str(data / 'train.json'), eval_data=None,
                          steps=2, batch_size=2, log_every=1, eval_every=0, save_every=0, detail_budgets=[],
                          target=[96, 96], report_to='none')
    hist = Trainer(cfg, progress=False, plot=False).fit()
    assert len(hist) == 2 and hist['loss'].notna().all()
