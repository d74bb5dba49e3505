"""Video frames and tokens as transformers' own video processors count them: which frames Qwen2-VL's and Qwen3-VL's
`sample_frames` keep, and the grid (so the tokens) their processing gives, on a few hundred random settings."""
import random

import numpy as np
import pytest

from qvl.families import FAMILIES
from qvl.video import frame_size, sample_frames, video_grid, video_tokens

RULES = {'qwen2': 'qwen2_5_vl', 'qwen3': 'qwen3_vl'}       # one family of each rule: the others share its processor


def processor(model_type, **kw):
    import importlib
    where, name = FAMILIES[model_type].video_processor.rsplit('.', 1)
    return getattr(importlib.import_module(f'transformers.models.{where}'), name)(**kw)


@pytest.mark.parametrize('rule', RULES)
def test_sampled_frames_are_the_processors(rule):
    from transformers.video_utils import VideoMetadata
    m = RULES[rule]
    rng = random.Random(0)
    for _ in range(300):
        total, vfps = rng.randint(1, 6000), rng.choice([8.0, 10.0, 23.976, 24.0, 25.0, 29.97, 30.0, 60.0])
        lo = rng.randint(1, 16); hi = rng.randint(lo, 800)
        p = processor(m, min_frames=lo, max_frames=hi)
        by_count = rng.random() < 0.3
        kw = dict(fps=None, frames=rng.randint(1, 900)) if by_count else dict(fps=rng.choice([0.25, 0.5, 1.0, 2.0, 4.0]))
        meta = VideoMetadata(total_num_frames=total, fps=vfps)
        try: want = [int(i) for i in p.sample_frames(meta, num_frames=kw.get('frames'), fps=kw['fps'])]
        except ValueError: want = None
        try: got = sample_frames(total, vfps, m, min_frames=lo, max_frames=hi, **kw)
        except Exception: got = None
        assert got == want, (rule, total, vfps, lo, hi, kw)


@pytest.mark.parametrize('rule', RULES)
def test_grid_and_tokens_are_the_processors(rule):
    "Random frame counts, sizes and pixel limits, with and without the per-frame cap: `video_grid` is `video_grid_thw`."
    import torch
    from transformers.video_utils import VideoMetadata
    m = RULES[rule]
    f = FAMILIES[m]
    rng = random.Random(1)
    clip = f.video_rules == 'qwen3'
    for i in range(150):
        n, h, w = rng.randint(2, 12), rng.randint(8, 420), rng.randint(8, 420)
        lo = rng.randint(f.factor ** 2 // 2, 40_000 * (n if clip else 1))
        hi = rng.randint(lo, 180_000 * (n if clip else 1))
        cap, tokens = rng.random() < 0.5, rng.randint(16, 4000)
        p = processor(m, size=dict(shortest_edge=lo, longest_edge=hi), max_video_tokens=tokens)
        video = torch.from_numpy(np.random.default_rng(i).integers(0, 255, (n, h, w, 3), dtype=np.uint8))
        kw = dict(video_metadata=[VideoMetadata(total_num_frames=n, fps=2.0)]) if clip else {}
        try:
            want = tuple(p(videos=[video], do_sample_frames=False, cap_pixels_per_frame=cap, return_tensors='pt', **kw)['video_grid_thw'][0].tolist())
        except ValueError: want = None            # an aspect ratio over 200
        limits = dict(min_pixels=lo, max_pixels=hi, cap_pixels_per_frame=cap, max_video_tokens=tokens)
        try: got = video_grid(n, h, w, m, **limits)
        except Exception: got = None
        assert got == want, (rule, n, h, w, limits)
        if got: assert video_tokens(n, h, w, m, **limits) == got[0] * got[1] * got[2] // f.merge ** 2


def test_checkpoint_limits_on_a_real_size_clip():
    "10 s of 1280x720 at 2 fps with the checkpoints' limits, against the processors run on the frames."
    import torch
    from transformers.video_utils import VideoMetadata
    video = torch.zeros(20, 720, 1280, 3, dtype=torch.uint8)
    for m, want in (('qwen2_5_vl', 11960), ('qwen3_vl', 8800)):
        f = FAMILIES[m]
        p = processor(m, size=dict(shortest_edge=f.video_pixels[0], longest_edge=f.video_pixels[1]))
        kw = dict(video_metadata=[VideoMetadata(total_num_frames=20, fps=2.0)]) if f.video_rules == 'qwen3' else {}
        thw = p(videos=[video], do_sample_frames=False, cap_pixels_per_frame=False, return_tensors='pt', **kw)['video_grid_thw'][0]
        assert tuple(thw.tolist()) == video_grid(20, 720, 1280, m) and video_tokens(20, 720, 1280, m) == want
    assert frame_size(20, 720, 1280, 'qwen3_vl', cap_pixels_per_frame=True) == (640, 1152)


@pytest.mark.parametrize('model_type', ['qwen2_vl', 'qwen2_5_vl', 'qwen3_vl', 'qwen3_5'])
def test_the_text_and_the_timing_are_the_processors(model_type, tmp_path):
    """A real family processor (tiny, built offline) on sampled frames: its grid is `video_grid`, its input ids those of
    `video_text` (Qwen3-VL's timestamps included) and Qwen2.5-VL's `second_per_grid_ts` is `second_per_grid_ts`."""
    from transformers import AutoProcessor
    from transformers.video_utils import VideoMetadata
    from qvl.families import build_tiny_model
    from qvl.video import second_per_grid_ts, video_text, VIDEO_PAD, VISION_END, VISION_START
    proc = AutoProcessor.from_pretrained(build_tiny_model(tmp_path / model_type, model_type))
    vp = proc.video_processor
    rng = random.Random(2)
    for i in range(25):
        total, vfps = rng.randint(4, 900), rng.choice([10.0, 24.0, 29.97, 30.0])
        idx = sample_frames(total, vfps, model_type, fps=rng.choice([0.5, 1.0, 2.0]), min_frames=2, max_frames=12)
        n, h, w = len(idx), rng.randint(20, 200), rng.randint(20, 200)
        o = proc(text=[f'{VISION_START}{VIDEO_PAD}{VISION_END}x'], videos=[np.zeros((n, h, w, 3), np.uint8)],
                 video_metadata=[VideoMetadata(total_num_frames=total, fps=vfps, frames_indices=idx)], do_sample_frames=False,
                 return_tensors='pt')
        grid = tuple(o['video_grid_thw'][0].tolist())
        limits = dict(min_pixels=vp.size['shortest_edge'], max_pixels=vp.size['longest_edge'], max_video_tokens=vp.max_video_tokens)
        assert grid == video_grid(n, h, w, model_type, **limits), (total, vfps, n, h, w)
        want = proc.tokenizer(VISION_START + video_text(grid, model_type, idx, vfps) + VISION_END + 'x').input_ids
        assert o['input_ids'][0].tolist() == want, (total, vfps, idx)
        s = second_per_grid_ts(n, total, vfps, model_type)
        if s is None: assert 'second_per_grid_ts' not in o
        else: assert abs(float(o['second_per_grid_ts'][0]) - s) < 1e-6
