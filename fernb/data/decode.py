"""Decoding real-dataset images once into a uint8 tensor cache: every PIL mode to the right 8-bit image, in
parallel, with a progress bar, resumable, and with a stated cost.

Image modes (`to_8bit`)
-----------------------
PIL opens images in many modes; ``convert("L")`` alone clips 16-bit values to 255 (a 16-bit PNG comes out white).
Here each mode is scaled to 8 bits by what its numbers mean:

========================  ===================================================================================
mode                      8-bit image
========================  ===================================================================================
1                         0 / 255
L, RGB                    as stored
P (palette)               the palette's colours
I;16, I;16B, I;16L, I;16N  16-bit: v * 255 / 65535 (rounded)
I (32-bit integer)        values in 0..255 as they are; in 0..65535 as 16-bit; otherwise min..max -> 0..255
F (32-bit float)          values in [0, 1] times 255; in [0, 255] as they are; otherwise min..max -> 0..255
LA, La, PA, RGBA, RGBa,   alpha-composited over black (a transparent pixel's colour is undefined; black is
P/L/RGB + transparency    what premultiplied alpha gives), then as above
CMYK, YCbCr, LAB, HSV     PIL's conversion to RGB
========================  ===================================================================================

Then ``channels=1`` takes the ITU-R 601 luma (PIL's ``convert("L")``), ``channels=3`` RGB.

The decode (`decode_items`)
---------------------------
Items are decoded in chunks by a thread pool (PIL releases the GIL while it decodes and resizes), with a
``tqdm.auto`` bar (quiet when ``FERNB_HEADLESS=1`` or ``progress=False``). JPEGs much larger than the target are
decoded at 1/2, 1/4 or 1/8 scale by the JPEG decoder itself (``Image.draft``), which is most of the cost of a
full-size decode. With a cache folder each finished chunk is written atomically (`fernb.paths.atomic_save`) to
``<cache>/<name>-<size>px-<C>ch-<key>.parts/``; a run killed or interrupted mid-decode resumes from the chunks on
disk, and the last chunk turns the parts into one file ``<name>-<size>px-<C>ch-<key>.pt``, which later runs
load memory-mapped. The key hashes the item list (paths and face boxes, or csv lines), the size, the channels and
the size and time of the csv files whose contents are the pixels; replacing image files in place is not detected:
delete the cache folder (or pass ``cache=False``) after editing images.

Cost (`cache_bytes`)
--------------------
The images of N samples take N * C * H * W bytes (uint8) in memory and on disk, plus 8 bytes per sample for the
int64 labels, plus a few hundred bytes of container per file; data/README.md tabulates it per 1,000 images.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..paths import atomic_save
from .errors import (REASONS, SKIPPABLE, BadFaceBoxError, CorruptImageError, DatasetError, MissingImageError)

__all__ = ["to_8bit", "load_image", "image_loader", "decode_items", "Decoded", "cache_bytes", "cache_dir",
           "DECODE_VERSION", "CHUNK_BYTES"]

DECODE_VERSION = 1            # bump when decoding changes, so caches are rebuilt
CHUNK_BYTES = 32 * 2 ** 20    # a resumable chunk holds about this many bytes of pixels ...
CHUNK_MIN, CHUNK_MAX = 256, 8192   # ... and this many images at least / at most
PARALLEL_MIN = 64             # fewer items than this decode in the calling thread
PROGRESS_MIN = 512            # no bar for fewer images than this left to decode (it would only flash)
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


# ---- one image ------------------------------------------------------------------------------------------------
def _scaled(a: np.ndarray, white: float) -> np.ndarray:
    return np.clip(np.rint(a * (255.0 / white)), 0, 255).astype(np.uint8)


def _stretched(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def to_8bit(im: Image.Image, channels: int) -> Image.Image:
    """`im` as an 8-bit "L" (channels=1) or "RGB" (channels=3) image, each mode scaled by what its values mean
    (table in the module docstring). Raises ValueError for a mode with no meaningful 8-bit form."""
    target = "L" if channels == 1 else "RGB"
    mode = im.mode
    if mode == target and "transparency" not in im.info:
        return im
    if mode.startswith("I;16"):
        im = Image.fromarray(_scaled(np.asarray(im).astype(np.float64), 65535.0), "L")
    elif mode == "I":
        a = np.asarray(im).astype(np.float64)
        lo, hi = a.min(), a.max()
        if lo >= 0 and hi <= 255:
            a8 = a.astype(np.uint8)
        elif lo >= 0 and hi <= 65535:
            a8 = _scaled(a, 65535.0)
        else:
            a8 = _stretched(a)
        im = Image.fromarray(a8, "L")
    elif mode == "F":
        a = np.nan_to_num(np.asarray(im).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = a.min(), a.max()
        if lo >= 0 and hi <= 1:
            a8 = _scaled(a, 1.0)
        elif lo >= 0 and hi <= 255:
            a8 = _scaled(a, 255.0)
        else:
            a8 = _stretched(a)
        im = Image.fromarray(a8, "L")
    elif mode in _ALPHA_MODES or "transparency" in im.info:
        if mode == "La":
            im = im.convert("LA")
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba).convert("RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "L"):
        im = im.convert("RGB") if mode != "L" else im
    else:
        raise ValueError(f"image mode {mode!r} has no 8-bit form fernb knows how to make")
    return im if im.mode == target else im.convert(target)


def _face_region(width: int, height: int, box, path, where) -> tuple[int, int, int, int]:
    """The face box clamped to the image; BadFaceBoxError when it is empty or outside the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    source = f" (from {where})" if where else ""
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 - x0 < 1 or y1 - y0 < 1:
        raise BadFaceBoxError(f"face box x0,y0,x1,y1 = {x0:g},{y0:g},{x1:g},{y1:g}{source} is empty for image "
                              f"{path} (pass skip_bad=True to skip such rows; they are counted in "
                              f"info['skipped_reasons'])")
    cx0, cy0 = max(0, int(round(x0))), max(0, int(round(y0)))
    cx1, cy1 = min(width, int(round(x1))), min(height, int(round(y1)))
    if cx1 - cx0 < 2 or cy1 - cy0 < 2:
        raise BadFaceBoxError(f"face box x0,y0,x1,y1 = {x0:g},{y0:g},{x1:g},{y1:g}{source} lies outside the "
                              f"{width}x{height} image {path} (pass skip_bad=True to skip such rows; they are "
                              f"counted in info['skipped_reasons'])")
    return cx0, cy0, cx1, cy1


def _square(region):
    x0, y0, x1, y1 = region
    w, h = x1 - x0, y1 - y0
    side = min(w, h)
    left, top = x0 + (w - side) // 2, y0 + (h - side) // 2
    return left, top, left + side, top + side


def to_chw(im: Image.Image, size: int, channels: int) -> np.ndarray:
    """An already-cropped square image -> uint8 (C, size, size): 8-bit conversion, then bilinear resize."""
    im = to_8bit(im, channels)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_image(path, size: int, channels: int, box=None, where: str | None = None,
               draft: bool = True) -> np.ndarray:
    """Decode one image file -> uint8 (C, size, size): crop to `box` (x0, y0, x1, y1, clamped to the image),
    centre-crop to a square (faces keep their aspect ratio), convert to 8 bits (`to_8bit`), resize (bilinear,
    anti-aliased). A JPEG at least twice the target size is decoded at reduced scale (`Image.draft`).

    Raises MissingImageError, BadFaceBoxError (naming the box, `where` it comes from and the image size) or
    CorruptImageError, each naming `path`."""
    listed = f" (listed in {where})" if where else ""
    if not os.path.isfile(path):
        raise MissingImageError(f"image {path}{listed} is missing (pass skip_bad=True to skip missing images; "
                                f"they are counted in info['skipped_reasons'])")
    try:
        with Image.open(path) as im:
            width, height = im.size
            region = (0, 0, width, height) if box is None else _face_region(width, height, box, path, where)
            region = _square(region)
            side = region[2] - region[0]
            if draft and im.format == "JPEG" and side >= 2 * size:
                reduce = side / size
                im.draft(im.mode, (math.ceil(width / reduce), math.ceil(height / reduce)))
                fx, fy = im.size[0] / width, im.size[1] / height
                if (fx, fy) != (1.0, 1.0):
                    x0, y0 = int(region[0] * fx), int(region[1] * fy)
                    s = max(1, min(int(round(side * fx)), im.size[0] - x0, im.size[1] - y0))
                    region = (x0, y0, x0 + s, y0 + s)
            im.load()                       # decode fully now: a truncated file fails here, not later
            if region != (0, 0) + im.size:
                im = im.crop(region)
            return to_chw(im, size, channels)
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as e:
        raise CorruptImageError(f"cannot decode image {path}{listed}: {e} (pass skip_bad=True to skip unreadable "
                                f"images; they are counted in info['skipped_reasons'])") from e


def image_loader(size: int, channels: int) -> Callable:
    """item = (path, box or None, where or None) -> uint8 (C, size, size) via `load_image`."""
    def load(item):
        path, box, where = item
        return load_image(path, size, channels, box, where)
    return load


# ---- the cache ------------------------------------------------------------------------------------------------
def cache_bytes(n: int, size: int, channels: int, label_bytes: int = 8) -> int:
    """Memory (and, within a small container overhead, disk) taken by the images and labels of `n` samples:
    n * (channels * size * size + label_bytes) bytes. Other per-sample fields add their own rows (boxes 16 B,
    identities 8 B, soft labels 4 * K B, ...)."""
    return int(n) * (int(channels) * int(size) * int(size) + int(label_bytes))


def cache_dir(cache) -> Path | None:
    """The folder decoded images are cached in: None for ``cache=False``, the given folder for a path, else
    ``<FERNB_CACHE or data/cache>/decoded``."""
    if cache is False or cache is None:
        return None
    if cache is True:
        from .synthfer import default_cache_dir

        return default_cache_dir() / "decoded"
    return Path(cache).expanduser()


def _chunk_size(size: int, channels: int) -> int:
    return int(min(CHUNK_MAX, max(CHUNK_MIN, CHUNK_BYTES // (channels * size * size))))


def _key(keys: Sequence[str], size: int, channels: int, sources: Sequence) -> str:
    h = hashlib.sha1()
    stats = []
    for s in sources:
        st = os.stat(s)
        stats.append([str(Path(s).resolve()), st.st_size, st.st_mtime_ns])
    h.update(json.dumps([DECODE_VERSION, int(size), int(channels), stats]).encode())
    for k in keys:
        h.update(k.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()[:20]


@dataclass
class Decoded:
    images: torch.Tensor            # uint8 (len(keep), C, H, W)
    keep: np.ndarray                # indexes of the decoded items
    skipped: list = field(default_factory=list)          # descriptions of skipped items
    skipped_reasons: dict = field(default_factory=dict)  # reason -> count
    uniform: list = field(default_factory=list)          # descriptions of images of one flat colour (kept)
    decoded_now: int = 0            # items decoded by this call (the rest came from the cache)
    cache_file: str | None = None


def _progress_on(progress) -> bool:
    if progress is None:
        return os.environ.get("FERNB_HEADLESS") != "1"
    return bool(progress)


def _rebuild(record) -> Exception:
    _, cls_name, message = record
    return REASONS.get(cls_name, CorruptImageError)(message)


def decode_items(items: Sequence, loader: Callable, *, size: int, channels: int, keys: Sequence[str],
                 describe: Callable, name: str, skip_bad: bool = False, cache=None, sources: Sequence = (),
                 progress=None, workers: int | None = None, chunk_size: int | None = None) -> Decoded:
    """Decode every item with `loader` (item -> uint8 (C, size, size)) into one uint8 tensor.

    Chunked and resumable when `cache` names a folder (see the module docstring); parallel over `workers` threads
    (default: min(8, CPUs)); a progress bar unless `progress` is False (None: on unless FERNB_HEADLESS=1).
    Per-image errors (`errors.SKIPPABLE`) raise the first one, or with `skip_bad` skip those items, listed in
    ``skipped`` and counted per reason. Items that failed in an earlier run are tried again (the file may have
    been fixed). Any other exception (an interrupt, a bug) propagates; the chunks already written stay.
    """
    n = len(items)
    chunk = int(chunk_size or _chunk_size(size, channels))
    folder = cache_dir(cache)
    final = parts = None
    if folder is not None:
        key = _key(keys, size, channels, sources)
        stem = f"{name}-{size}px-{channels}ch-{key}"
        final, parts = folder / f"{stem}.pt", folder / f"{stem}.parts"
    errors: dict[int, list] = {}         # index -> [index, error class name, message]
    uniform: set[int] = set()
    decoded_now = 0

    def decode_one(i):
        try:
            return loader(items[i]), None
        except SKIPPABLE as e:
            return None, [i, type(e).__name__, str(e)]

    if final is not None and final.is_file():
        state = torch.load(final, map_location="cpu", weights_only=True, mmap=True)
        images = state["images"]
        errors = {int(r[0]): list(r) for r in state["errors"]}
        uniform = {int(i) for i in state["uniform"]}
        if errors:                       # retry: the user may have fixed or restored the file since
            images = images.clone()
            for i in sorted(errors):
                arr, err = decode_one(i)
                decoded_now += 1
                if err is None:
                    images[i] = torch.from_numpy(arr)
                    del errors[i]
                    _flag_uniform(images[i:i + 1].numpy(), [i], uniform)
            if len(errors) < len(state["errors"]):
                atomic_save(dict(state, images=images, errors=[errors[i] for i in sorted(errors)],
                                 uniform=sorted(uniform)), final)
        out = images
    else:
        out_np = np.zeros((n, channels, size, size), dtype=np.uint8)
        ranges = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
        done = set()
        if parts is not None and parts.is_dir():
            for start, stop in ranges:
                part = parts / f"part-{start:09d}-{stop:09d}.pt"
                if not part.is_file():
                    continue
                try:
                    state = torch.load(part, map_location="cpu", weights_only=True)
                except Exception:        # noqa: BLE001 - an unreadable part is decoded again
                    continue
                out_np[start:stop] = state["images"].numpy()
                for r in state["errors"]:
                    errors[int(r[0])] = list(r)
                uniform.update(int(i) for i in state["uniform"])
                done.add(start)
            for i in sorted(errors):     # retry what failed before
                arr, err = decode_one(i)
                decoded_now += 1
                if err is None:
                    out_np[i] = arr
                    del errors[i]
                    _flag_uniform(out_np[i:i + 1], [i], uniform)
        todo = [(s, e) for s, e in ranges if s not in done]
        left = sum(e - s for s, e in todo)
        n_workers = max(1, int(workers or min(8, os.cpu_count() or 1)))
        parallel = n_workers > 1 and left >= PARALLEL_MIN
        bar = None
        if _progress_on(progress) and left >= PROGRESS_MIN:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, initial=n - left, desc=f"decoding {name}", unit="img", smoothing=0.05)
        pool = ThreadPoolExecutor(max_workers=n_workers) if parallel else None
        complete = True
        try:
            for position, (start, stop) in enumerate(todo):
                results = pool.map(decode_one, range(start, stop)) if pool else map(decode_one, range(start, stop))
                chunk_errors = []
                for i, (arr, err) in zip(range(start, stop), results):
                    if err is None:
                        out_np[i] = arr
                    else:
                        chunk_errors.append(err)
                        errors[i] = err
                    if bar is not None:
                        bar.update(1)
                decoded_now += stop - start
                good = [i for i in range(start, stop) if i not in errors]
                chunk_uniform: set[int] = set()
                _flag_uniform(out_np[good], good, chunk_uniform)
                uniform |= chunk_uniform
                last = position == len(todo) - 1
                if parts is not None and not last:       # the last chunk goes straight into the final file
                    atomic_save({"start": start, "stop": stop, "images": torch.from_numpy(out_np[start:stop].copy()),
                                 "errors": chunk_errors, "uniform": sorted(chunk_uniform)},
                                parts / f"part-{start:09d}-{stop:09d}.pt")
                if chunk_errors and not skip_bad:
                    complete = last
                    break                # fail fast: this chunk is saved, the rest waits for the next run
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if bar is not None:
                bar.close()
        out = torch.from_numpy(out_np)
        if final is not None and complete:
            atomic_save({"images": out, "errors": [errors[i] for i in sorted(errors)], "uniform": sorted(uniform),
                         "n": n, "version": DECODE_VERSION}, final)
            shutil.rmtree(parts, ignore_errors=True)
    bad = sorted(errors)
    if bad and not skip_bad:
        raise _rebuild(errors[bad[0]])
    reasons: dict[str, int] = {}
    for i in bad:
        reason = REASONS.get(errors[i][1], CorruptImageError).reason
        reasons[reason] = reasons.get(reason, 0) + 1
    skipped = [describe(items[i]) for i in bad]
    if skipped:
        warnings.warn(f"{name}: skipped {len(skipped)} image(s) (skip_bad=True): "
                      f"{', '.join(f'{v} {k}' for k, v in reasons.items())}; listed in info['skipped']; first: "
                      f"{errors[bad[0]][2]}", stacklevel=4)
    keep = np.setdiff1d(np.arange(n), np.asarray(bad, dtype=np.int64))
    images = out if not bad else out[torch.from_numpy(keep)]
    return Decoded(images=images, keep=keep, skipped=skipped, skipped_reasons=reasons,
                   uniform=[describe(items[i]) for i in sorted(uniform) if i not in errors],
                   decoded_now=decoded_now, cache_file=str(final) if final is not None else None)


def _flag_uniform(block: np.ndarray, index: Sequence[int], into: set) -> None:
    """Add to `into` the indexes whose image is one flat colour (a blank frame: kept, but reported)."""
    if len(index) == 0:
        return
    flat = block.reshape(len(index), -1)
    same = flat.min(axis=1) == flat.max(axis=1)
    into.update(int(index[j]) for j in np.flatnonzero(same))
