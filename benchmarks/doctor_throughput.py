"""Doctor throughput on a 10,000-sample dataset, against counting tokens through the processor.

The dataset: sharegpt samples with one or two JPEGs each (sides 300 to 2000 px, every file distinct) and
a few planted problems. qvl's doctor reads image sizes from file headers and tokenizes the templated text
in batches. The baseline is what a user otherwise runs to learn a sample's length: decode the images and
call the processor on the sample, as a trainer's preprocessing does; it is timed on the first `--baseline`
samples (it is too slow for all of them) and both are reported in samples per second.

    python benchmarks/doctor_throughput.py [--n 10000] [--baseline 300] [--cutoff 2048]
"""
import argparse, os, platform, shutil, tempfile, time
from pathlib import Path

import numpy as np
from PIL import Image

from qvl.families import default_tiny_model, load_tiny
from qvl.formats import SPECS, parse_sample, write_records
from qvl.doctor import _template_parts, doctor


def make_dataset(d: Path, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    bases = []
    for i in range(64):                          # 64 distinct sizes; files are distinct copies with a changed comment
        w, h = (int(v) for v in rng.integers(300, 2001, 2))
        img = Image.fromarray(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h))
        p = d / f'base{i}.jpg'
        img.save(p, quality=85)
        bases.append(p.read_bytes())
    (d / 'img').mkdir()
    recs = []
    for i in range(n):
        k = 1 + (i % 5 == 0)
        names = []
        for j in range(k):
            name = f'img/{i:05d}_{j}.jpg'
            b = bases[(i * 7 + j) % len(bases)]
            (d / name).write_bytes(b[:2] + b'\xff\xfe\x00\x08' + i.to_bytes(4, 'big') + b[2:])  # a COM segment
            names.append(name)
        q = ('Compare ' + ' and '.join(['<image>'] * k) if k > 1 else '<image>Describe the marks.')
        recs.append(dict(id=f's{i}', messages=[dict(role='user', content=q + ' ' + 'detail ' * int(rng.integers(5, 60))),
                                               dict(role='assistant', content='answer ' * int(rng.integers(1, 40)))],
                         images=names))
    recs[7]['images'] = ['img/missing.jpg']      # a few planted problems, so the report has something to say
    recs[11]['messages'][0]['content'] += '<image>'
    write_records(recs, d / 'train.json')
    return recs


def baseline(model_dir, recs, root, n):
    processor, _ = load_tiny(model_dir)
    t0, lengths = time.perf_counter(), []
    for r in recs[:n]:
        s = parse_sample(r, SPECS['sharegpt'])
        try: images = [Image.open(root / p).convert('RGB') for p in s.images]
        except OSError: continue
        text = processor.apply_chat_template(_template_parts(s), tokenize=False)
        try: lengths.append(processor(text=[text], images=images)['input_ids'][0].__len__())
        except ValueError: continue
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n', type=int, default=10_000)
    ap.add_argument('--baseline', type=int, default=300)
    ap.add_argument('--cutoff', type=int, default=2048)
    a = ap.parse_args()
    model = default_tiny_model()
    d = Path(tempfile.mkdtemp(prefix='qvl-doctor-bench-'))
    try:
        t0 = time.perf_counter(); recs = make_dataset(d, a.n); gen = time.perf_counter() - t0
        print(f"dataset: {a.n} samples, {sum(len(r['images']) for r in recs)} JPEG files ({gen:.1f} s to write)")
        doctor(d / 'train.json', model, a.cutoff, progress=False)      # warm: imports, tokenizer load
        os.system('sync')
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            r = doctor(d / 'train.json', model, a.cutoff, progress=False)
            runs.append(time.perf_counter() - t0)
        best = min(runs)
        base = baseline(model, recs, d, a.baseline)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
        print(f"qvl doctor: {a.n} samples in {best:.2f} s (best of 3, model load included) = {a.n / best:,.0f} samples/s; "
              f"{r.summary['flagged']} flagged: {r.summary['by_code']}")
        print(f"baseline (decode + processor per sample, first {a.baseline}): {base:,.1f} samples/s")
        print(f"speedup: {a.n / best / base:,.0f}x")
    finally:
        shutil.rmtree(d)


if __name__ == '__main__':
    main()
