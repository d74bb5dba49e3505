"""Resize a folder of 2000x2000 JPEGs to a 600x600 pixel budget: qvl against the plain Pillow loop.

The plain loop is what people write: `Image.open(p).convert("RGB").resize(size, BICUBIC)` one file at a
time, saved as JPEG. qvl runs `resize_folder` (reduced-scale JPEG decoding, integer `reduce`, parallel
workers) on the same files with the same output quality. Both are timed in the same run; quality is the
PSNR of qvl's resized pixels against the plain full-decode result.

    python benchmarks/resize_throughput.py [--n 48] [--workers N]
"""
import argparse, os, platform, shutil, tempfile, time
from pathlib import Path

import numpy as np
from PIL import Image

from qvl.resize import Budget, load_resized

from qvl.folders import resize_folder


def photo_like(rng, side=2000):
    "Smooth structure, edges and sensor-like grain: closer to a photo than noise or flat colour."
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    img = np.zeros((side, side, 3), np.float32)
    for c in range(3):
        for _ in range(6):
            fx, fy, ph = rng.uniform(0.5, 12, 2).tolist() + [rng.uniform(0, 6.3)]
            img[..., c] += rng.uniform(10, 40) * np.sin(2 * np.pi * (fx * x + fy * y) + ph)
    for _ in range(25):   # hard-edged shapes
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.01, 0.15)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] += rng.uniform(-60, 60, 3)
    img += 128 + rng.normal(0, 6, img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def psnr(a, b):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float('inf') if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n', type=int, default=96, help='number of 2000x2000 JPEGs')
    ap.add_argument('--repeats', type=int, default=3, help='timed runs of each path, alternating; the best counts')
    ap.add_argument('--workers', type=int, default=os.cpu_count(), help='qvl worker processes')
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix='qvl-bench-'))
    src = root / 'src'; src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(a.n): photo_like(rng).save(src / f'{i:04d}.jpg', quality=90)
    budget = Budget(target=(600, 600))
    h, w = budget.fit(2000, 2000)
    files = sorted(src.glob('*.jpg'))

    plain_out = root / 'plain'; plain_out.mkdir()
    plain_runs, qvl_runs = [], []
    for r in range(a.repeats):
        t = time.perf_counter()
        for p in files:
            Image.open(p).convert('RGB').resize((w, h), Image.BICUBIC).save(plain_out / p.name, quality=95)
        plain_runs.append(time.perf_counter() - t)
        shutil.rmtree(root / 'qvl', ignore_errors=True)   # a fresh run each time, not a resume
        t = time.perf_counter()
        manifest = resize_folder(src, root / 'qvl', budget, workers=a.workers, quality=95, progress=False)
        qvl_runs.append(time.perf_counter() - t)
        assert (manifest.status == 'ok').all()
    plain_s, qvl_s = min(plain_runs), min(qvl_runs)

    pixels = [psnr(load_resized(p, budget)[0], Image.open(p).convert('RGB').resize((w, h), Image.BICUBIC)) for p in files]
    saved = [psnr(Image.open(root / 'qvl' / p.name), Image.open(plain_out / p.name)) for p in files]
    rows = [('plain Pillow loop (1 process)', a.n / plain_s, plain_s), (f'qvl resize_folder ({a.workers} workers)', a.n / qvl_s, qvl_s)]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, Pillow {Image.__version__}")
    print(f"{a.n} JPEGs 2000x2000 -> {w}x{h} (600x600 pixel budget), JPEG quality 95 out")
    print(f"{'path':<34}{'images/s':>10}{'seconds':>10}")
    for name, ips, s in rows: print(f"{name:<34}{ips:>10.1f}{s:>10.2f}")
    print(f"speed-up: {plain_s / qvl_s:.2f}x (best of {a.repeats}; every run: plain "
          + ', '.join(f'{x:.2f}' for x in plain_runs) + ' s, qvl ' + ', '.join(f'{x:.2f}' for x in qvl_runs) + ' s)')
    print(f"PSNR of qvl's resized pixels vs plain full decode + bicubic: min {min(pixels):.1f} dB, mean {np.mean(pixels):.1f} dB")
    print(f"PSNR of the saved JPEGs (both re-encoded at quality 95): min {min(saved):.1f} dB, mean {np.mean(saved):.1f} dB")
    shutil.rmtree(root)


if __name__ == '__main__':
    main()
