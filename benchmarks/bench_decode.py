"""Real-dataset decode: images per second of the first decode, what the tensor cache costs, and what resuming costs.

    .venv/bin/python benchmarks/bench_decode.py            # full (~2-3 min on 2 idle cores)
    .venv/bin/python benchmarks/bench_decode.py --quick    # smoke check (< 60 s)

(a) Decode rate. JPEG folders shaped like three real datasets (faces rendered by SynthFER, upscaled, with mild
    camera-like noise, saved at JPEG quality 90): RAF-DB aligned (100 x 100 -> 64 px), KDEF (562 x 762 -> 64 px)
    and AffectNet (640 x 480 with a 300 x 300 face box -> 112 px). fernb's `decode_items` (JPEG draft decode, a
    thread pool over the usable cores, no cache) against the baseline a plain loader does: PIL open, full decode,
    crop, convert, resize, one image after another. Also fernb with one worker, to separate the two gains.
    Synthetic faces compress better than photographs, so absolute rates on real photos are lower; the ratio is
    what transfers.
(b) The cost of resumability: the same decode writing its chunks and final file (cache on) vs cache off, and the
    reload of the finished cache (memory-mapped).
(c) The cache cost per 1,000 images at 48 / 64 / 112 / 144 / 224 px, grey and RGB: the formula
    N * (C * H * W + 8) bytes (`fernb.data.decode.cache_bytes`) against the size of a real saved `FERDataset`
    file and the measured tensor memory, and what 290,000 images (about AffectNet's training set) would take.
The script never asserts; it prints tables (and the medians' min..max range over rounds).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from fernb.data import decode as D  # noqa: E402
from fernb.data import synthfer as S  # noqa: E402
from fernb.data.dataset import FERDataset  # noqa: E402

from _common import fmt, machine, quiet_note, spread, table, wait_quiet  # noqa: E402

SHAPES = {   # name: (width, height, face box or None, target size)
    "RAF-DB aligned 100x100 -> 64": (100, 100, None, 64),
    "KDEF 562x762 -> 64": (562, 762, None, 64),
    "AffectNet 640x480, box 300 -> 112": (640, 480, (170, 90, 470, 390), 112),
}
AFFECTNET_TRAIN = 290_000          # about AffectNet's usable training images


def make_folder(folder: Path, n: int, width: int, height: int) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    faces = S.synthfer("test", n, size=224, channels=3, seed=5, cache=False).images
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        im = Image.fromarray(faces[i].permute(1, 2, 0).numpy()).resize((width, height), Image.Resampling.BICUBIC)
        a = np.asarray(im).astype(np.int16) + rng.normal(0, 3, (height, width, 3)).astype(np.int16)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def baseline_decode(paths, box, size):
    """What a plain loader does: full decode, crop, convert, resize; one image after another."""
    out = np.empty((len(paths), 3, size, size), np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            im = im.convert("RGB")
            if box is not None:
                im = im.crop(box)
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(im).transpose(2, 0, 1)
    return out


def fernb_decode(paths, box, size, workers, cache=None):
    items = [(p, box, None) for p in paths]
    return D.decode_items(items, D.image_loader(size, 3), size=size, channels=3, keys=[f"{p}|{box}" for p in paths],
                          describe=str, name="bench", cache=cache, progress=False, workers=workers)


def rate(fn, n) -> float:
    wait_quiet(20)
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, rounds = (120, 1) if args.quick else (600, 3)
    cores = len(__import__("os").sched_getaffinity(0))
    print(machine())
    print()
    tmp = Path(tempfile.mkdtemp(prefix="fernb-bench-decode-"))
    folders = {name: make_folder(tmp / str(i), n, w, h) for i, (name, (w, h, _, _)) in enumerate(SHAPES.items())}

    # (a) decode rate
    rows = []
    for name, (w, h, box, size) in SHAPES.items():
        paths = folders[name]
        sides = {"fernb": lambda: fernb_decode(paths, box, size, cores),
                 "fernb 1 worker": lambda: fernb_decode(paths, box, size, 1),
                 "baseline": lambda: baseline_decode(paths, box, size)}
        got = {k: [] for k in sides}
        for r in range(rounds):
            for k in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                got[k].append(rate(sides[k], n))
        med = {k: statistics.median(v) for k, v in got.items()}
        full = fernb_decode(paths, box, size, cores).images.numpy().astype(int)
        diff = np.abs(full - baseline_decode(paths, box, size).astype(int)).mean()
        rows.append({"dataset shape": name, "fernb img/s": f"{fmt(med['fernb'])} ({spread(got['fernb'])})",
                     "fernb 1 worker": fmt(med["fernb 1 worker"]),
                     "baseline img/s": f"{fmt(med['baseline'])} ({spread(got['baseline'])})",
                     "ratio": f"{med['fernb'] / med['baseline']:.1f}x",
                     "mean abs pixel diff vs baseline": f"{diff:.2f}"})
    print(f"(a) first decode, {n} JPEGs per shape, {cores} workers, medians of {rounds} round(s)")
    print(table(rows, list(rows[0])))
    print()

    # (b) resumability: chunk files + final file vs no cache; reload of the final file
    name = "KDEF 562x762 -> 64"
    w, h, box, size = SHAPES[name]
    paths = folders[name]
    with_cache, without, reload = [], [], []
    for r in range(rounds):
        cache = tmp / f"cache{r}"
        without.append(rate(lambda: fernb_decode(paths, box, size, cores), n))
        with_cache.append(rate(lambda: fernb_decode(paths, box, size, cores, cache=cache), n))
        reload.append(rate(lambda: fernb_decode(paths, box, size, cores, cache=cache), n))
    print(f"(b) {name}: cache off {fmt(statistics.median(without))} img/s, cache on (chunks + final file written) "
          f"{fmt(statistics.median(with_cache))} img/s ({statistics.median(with_cache) / statistics.median(without):.2f}x); "
          f"reload of the finished cache {fmt(statistics.median(reload))} img/s")
    print()

    # (c) cache cost per 1,000 images
    rows = []
    for size in (48, 64, 112, 144, 224):
        for channels in (1, 3):
            k = 1000
            ds = FERDataset(images=torch.randint(0, 256, (k, channels, size, size), dtype=torch.uint8),
                            labels=torch.randint(0, 7, (k,)), name="cost")
            path = tmp / f"cost-{size}-{channels}.pt"
            ds.save(path)
            memory = ds.images.nbytes + ds.labels.nbytes
            formula = D.cache_bytes(k, size, channels)
            rows.append({"size": f"{size} px", "channels": channels, "formula MB": f"{formula / 1e6:.2f}",
                         "tensor memory MB": f"{memory / 1e6:.2f}",
                         "saved file MB": f"{path.stat().st_size / 1e6:.3f}",
                         "file - formula (bytes)": f"{path.stat().st_size - formula:,}",
                         "290,000 images (~AffectNet train) GB": f"{D.cache_bytes(AFFECTNET_TRAIN, size, channels) / 1e9:.1f}"})
    print("(c) cache cost per 1,000 images (uint8 images + int64 labels)")
    print(table(rows, list(rows[0])))
    print()
    print(quiet_note())


if __name__ == "__main__":
    main()
