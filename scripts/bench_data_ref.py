#!/usr/bin/python3
"""Reference side of scripts/bench_data.sh.

  bench_data_ref.py make-images DIR N      write N 640x480 JPEGs (quality 90, seeded) into DIR
  bench_data_ref.py pil DIR                decode + CLIP-336 preprocessing with Pillow + numpy, 1 thread
  bench_data_ref.py make-text FILE MB      a JSONL file of about MB megabytes of mixed text

The PIL recipe is the Hugging Face CLIPImageProcessor one (as in tests/fixtures/images/make_reference.py):
convert("RGB"), resize shortest edge to 336 (BICUBIC), centre crop 336, x*(1/255) -> float32,
(x - mean) / std, HWC -> CHW.
"""
import json
import os
import sys
import time

import numpy as np
from PIL import Image

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def make_images(d, n):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    for i in range(n):
        a, b, c = rng.uniform(5, 40, 3)
        img = np.stack([128 + 100 * np.sin(x / a + i), 128 + 100 * np.cos(y / b), (x + y) * c / 10 % 256], -1)
        img += rng.normal(0, 12, img.shape)  # texture, so the JPEGs are photo-sized (~100 KB)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(d, f"{i:04d}.jpg"), quality=90)


def clip336(path):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = 336
    if w <= h:
        rw, rh = s, int(s * h / w)
    else:
        rw, rh = int(s * w / h), s
    arr = np.array(img.resize((rw, rh), resample=Image.BICUBIC))
    top, left = (rh - s) // 2, (rw - s) // 2
    arr = arr[top:top + s, left:left + s]
    x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
    return np.ascontiguousarray(((x - MEAN) / STD).transpose(2, 0, 1))


def bench_pil(d):
    files = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".jpg"))
    for f in files[:5]:
        clip336(f)  # warm-up
    t0 = time.perf_counter()
    for f in files:
        clip336(f)
    dt = time.perf_counter() - t0
    print(f"PIL+numpy: {len(files)} images in {dt:.3f} s = {len(files) / dt:.1f} images/s/core")


def make_text(path, mb):
    here = os.path.dirname(os.path.abspath(__file__))
    corpus = [json.loads(l) for l in open(os.path.join(here, "..", "tests", "fixtures", "tokenizer", "corpus.jsonl"))]
    words = ("the image shows a large red bus driving down a city street next to tall buildings while people "
             "walk on the sidewalk and a dog sits near the corner of the road under a cloudy sky").split()
    rng = np.random.default_rng(1)
    size = 0
    with open(path, "w") as f:
        while size < mb * 1e6:
            if rng.random() < 0.2:
                t = corpus[rng.integers(len(corpus))]
            else:
                t = " ".join(words[j] for j in rng.integers(0, len(words), rng.integers(8, 80))).capitalize() + "."
            line = json.dumps(t, ensure_ascii=False)
            f.write(line + "\n")
            size += len(t.encode())


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "make-images":
        make_images(sys.argv[2], int(sys.argv[3]))
    elif cmd == "pil":
        bench_pil(sys.argv[2])
    elif cmd == "make-text":
        make_text(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit(__doc__)
