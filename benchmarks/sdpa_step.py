"""One step of 7B LoRA 1344 px b4 without checkpointing (`qvl.profile.profile_trainer`, synthetic samples), with SDPA's
backends restricted by QVL_EXP_SDPA (default, flash, efficient): step time, MFU, GPU busy time and the attention
kernels' time under torch.profiler. OUT/step_MODE_bB.json.

    QVL_EXP_SDPA=flash OUT=DIR python benchmarks/sdpa_step.py     # one CUDA GPU

`step_time/causal/masked_step_b4.json` is its default run before the fast step's causal_attention (revision 3fb91f0):
the masked attention's kernels. Under compiled decoder layers the global backend flags did not move the language
model's attention off cuDNN."""
import os, json, time, torch, statistics
mode = os.environ.get('QVL_EXP_SDPA', 'default')
if mode == 'flash': torch.backends.cuda.enable_cudnn_sdp(False); torch.backends.cuda.enable_mem_efficient_sdp(False)
if mode == 'efficient': torch.backends.cuda.enable_cudnn_sdp(False); torch.backends.cuda.enable_flash_sdp(False)
from qvl.core import ImageSize
from qvl.profile import profile_config, profile_trainer
B = int(os.environ.get('QVL_EXP_B', 4))
t0 = time.time()
cfg = profile_config('Qwen2.5-VL-7B', 'lora', False, True)
tr = profile_trainer(cfg, ImageSize(1344, 1344), B)
for _ in range(2): tr.train_step()
warm = time.time() - t0
rs = [tr.train_step() for _ in range(3)]
s = statistics.median(r['seconds'] for r in rs)
mfu = statistics.median(r['flops'] / r['seconds'] for r in rs) / tr.peak_flops
from torch.profiler import ProfilerActivity, profile as tprofile
with tprofile(activities=[ProfilerActivity.CUDA]) as p: tr.train_step()
ev = p.key_averages()
busy = sum(e.self_device_time_total for e in ev) / 1e3
attn = {e.key[:110]: round(e.self_device_time_total / 1e3, 2) for e in ev
        if any(w in e.key.lower() for w in ('attention', 'sdpa', 'flash', 'fmha', 'cudnn')) and e.self_device_time_total > 0}
top = sorted(((e.key[:110], round(e.self_device_time_total / 1e3, 2), e.count) for e in ev if e.self_device_time_total > 0), key=lambda x: -x[1])[:25]
r = dict(mode=mode, batch=B, step_s=s, mfu=mfu, warmup_s=warm, gpu_busy_ms=busy, attention_ms=attn, top=top, peak_gb=torch.cuda.max_memory_allocated() / 1e9)
print(json.dumps(r, indent=1))
json.dump(r, open(f"{os.environ.get('OUT', '.')}/step_{mode}_b{B}.json", 'w'), indent=1)
