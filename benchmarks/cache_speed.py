"""Tokenization cache: building the examples of a 2,000-sample dataset against loading them from the cache.

Building reads every image's header, renders the chat template, tokenizes (on worker processes), expands
image tokens and masks labels; loading checks the cache key (the data file's hash, every image's size and
modification time, the model files' hashes, the budget, cutoff and placeholder) and reads safetensors + JSON.
The key is computed on every load, so the timing includes the staleness check.

    python benchmarks/cache_speed.py [--n 2000]
"""
import argparse, os, platform, shutil, tempfile, time
from pathlib import Path

from qvl.families import default_tiny_model
from qvl.data import cached_examples
from qvl.resize import Budget
from qvl.sample import write_sample_data
from qvl.formats import load_dataset


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n', type=int, default=2000)
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix='qvl-cache-bench-'))
    try:
        data = write_sample_data(d / 'data', n=a.n, seed=0, min_side=224, max_side=900, test_fraction=0.0001, progress=False)
        ds = load_dataset(data / 'train.json')
        model, budget = default_tiny_model(), Budget(target=(448, 448))
        builds, loads = [], []
        for i in range(3):
            cache = d / f'cache{i}'
            t0 = time.perf_counter(); ex, hit = cached_examples(ds, model, budget, 2048, cache_dir=cache, progress=False)
            builds.append(time.perf_counter() - t0); assert not hit
            t0 = time.perf_counter(); ex2, hit = cached_examples(ds, model, budget, 2048, cache_dir=cache, progress=False)
            loads.append(time.perf_counter() - t0); assert hit and ex2.offsets == ex.offsets
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores; dataset: {len(ds.records)} samples, {ex.tokens:,} tokens")
        print(f"build (first run): {min(builds):.3f} s (best of 3)")
        print(f"load (second run, key checked): {min(loads):.3f} s (best of 3)")
        print(f"speedup: {min(builds) / min(loads):.1f}x")
    finally:
        shutil.rmtree(d)


if __name__ == '__main__':
    main()
