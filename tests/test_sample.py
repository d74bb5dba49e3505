"""Generated sample data: both formats, answers tied to image detail."""
import json

from conftest import run_qvl
from PIL import Image

from qvl.resize import Budget
from qvl.sample import answer_survival, load_samples, read_answer, sample_image_path


def test_sharegpt_and_messages_formats(tmp_path):
    run_qvl('sample-data', tmp_path / 'sg', '--n', '10', '--max-side', '2000', '--min-side', '1800')
    run_qvl('sample-data', tmp_path / 'msg', '--n', '10', '--format', 'messages', '--max-side', '900')
    info = json.loads((tmp_path / 'sg' / 'dataset_info.json').read_text())
    assert info['qvl_sample_train']['formatting'] == 'sharegpt'
    train = json.loads((tmp_path / 'sg' / 'train.json').read_text())
    assert len(train) == 8 and len(json.loads((tmp_path / 'sg' / 'test.json').read_text())) == 2
    for r in train:
        assert r['messages'][0]['content'].count('<image>') == len(r['images']) == 1
        img = Image.open(tmp_path / 'sg' / r['images'][0])
        assert 1800 <= max(img.size) <= 2000
        assert read_answer(img, r['task']) == r['answer']
    msgs = load_samples(tmp_path / 'msg')
    assert len(msgs) == 10 and all(m['messages'][0]['content'][0]['type'] == 'image' for m in msgs)
    assert all((tmp_path / 'msg' / sample_image_path(m)).exists() for m in msgs)


def test_same_seed_same_data(tmp_path):
    run_qvl('sample-data', tmp_path / 'a', '--n', '3', '--max-side', '600', '--seed', '7')
    run_qvl('sample-data', tmp_path / 'b', '--n', '3', '--max-side', '600', '--seed', '7')
    assert (tmp_path / 'a' / 'train.json').read_text() == (tmp_path / 'b' / 'train.json').read_text()
    assert (tmp_path / 'a' / 'images' / '000000.jpg').read_bytes() == (tmp_path / 'b' / 'images' / '000000.jpg').read_bytes()


def test_answers_fade_when_images_shrink_too_far(sample_data):
    surv = answer_survival(sample_data, {'full': Budget(), 'tiny': Budget(target=(196, 196))})
    assert (surv.loc['full'] == 1.0).all()
    assert surv.loc['tiny'].mean() <= 0.5
