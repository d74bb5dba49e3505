"""SDPA's kernels (cuDNN, flash, memory-efficient and the default choice) alone, at the shapes of Qwen2.5-VL-7B's step at
1344 px: the language model's causal attention over 4 or 8 rows of 2,500 tokens (28 query and 4 key/value heads, GQA by
`enable_gqa` or by repeated heads), forward and forward + backward; the vision tower's full and windowed attention,
forward. Prints one JSON line per case (milliseconds, TFLOP/s counted as causal where it is) and writes them to
OUT/sdpa_bench.json.

    OUT=DIR python benchmarks/sdpa_backends.py      # one CUDA GPU, about a minute
"""
import torch, json, os, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
dev = 'cuda'; bf = torch.bfloat16
def timeit(fn, n=8):
    for _ in range(2): fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n): fn()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / n / 1e3
BK = dict(default=None, cudnn=SDPBackend.CUDNN_ATTENTION, flash=SDPBackend.FLASH_ATTENTION, efficient=SDPBackend.EFFICIENT_ATTENTION)
rows = []
def run(name, B, Hq, Hkv, L, D, causal, grad, gqa):
    mk = lambda H: torch.randn(B, L, H, D, device=dev, dtype=bf).transpose(1, 2).requires_grad_(grad)
    q, k, v = mk(Hq), mk(Hkv), mk(Hkv)
    g = torch.randn(B, L, Hq, D, device=dev, dtype=bf).transpose(1, 2)
    fl = 4 * B * Hq * L * L * D * (0.5 if causal else 1)
    for bk, b in BK.items():
        def fwd():
            kk, vv = (k, v)
            kw = {}
            if Hkv != Hq:
                if gqa: kw['enable_gqa'] = True
                else:
                    r = Hq // Hkv
                    kk = k[:, :, None].expand(B, Hkv, r, L, D).reshape(B, Hq, L, D); vv = v[:, :, None].expand(B, Hkv, r, L, D).reshape(B, Hq, L, D)
            if b is None: return F.scaled_dot_product_attention(q, kk, vv, is_causal=causal, **kw)
            with sdpa_kernel([b]): return F.scaled_dot_product_attention(q, kk, vv, is_causal=causal, **kw)
        try:
            if grad:
                def both():
                    o = fwd(); o.backward(g); q.grad = k.grad = v.grad = None
                t = timeit(both); tf = timeit(fwd)
                r = dict(case=name, backend=bk, gqa=gqa, fwd_ms=tf * 1e3, fwdbwd_ms=t * 1e3, bwd_ms=(t - tf) * 1e3,
                         fwd_tflops=fl / tf / 1e12, bwd_tflops=2.5 * fl / (t - tf) / 1e12)
            else:
                with torch.no_grad(): tf = timeit(fwd)
                r = dict(case=name, backend=bk, gqa=gqa, fwd_ms=tf * 1e3, fwd_tflops=fl / tf / 1e12)
        except Exception as ex:
            r = dict(case=name, backend=bk, gqa=gqa, error=f'{type(ex).__name__}: {str(ex).splitlines()[0][:150]}')
        print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}), flush=True); rows.append(r)
print(torch.__version__, torch.cuda.get_device_name(), 'cudnn', torch.backends.cudnn.version())
for B in (4, 8):
    for gqa in (True, False): run(f'llm b{B} L2500', B, 28, 4, 2500, 128, True, True, gqa)
run('vision full 4x9216', 4, 16, 16, 9216, 80, False, False, False)
run('vision window 576x64', 576, 16, 16, 64, 80, False, False, False)
out = os.environ.get('OUT', '.'); json.dump(rows, open(f'{out}/sdpa_bench.json', 'w'), indent=1)
