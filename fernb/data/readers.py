"""Readers for the real FER datasets, each from its official on-disk layout into one `FERDataset`.

Nothing here downloads anything: every dataset is licensed per user, so you fetch it yourself and point fernb at
it, either with an explicit ``root=`` (the dataset's own folder) or with the environment variable ``FERNB_DATA``
(a folder holding every dataset under its default folder name, e.g. ``$FERNB_DATA/RAF-DB``). `load(name,
data_root=...)` does the same with ``data_root`` in place of ``FERNB_DATA``. See data/README.md for the layouts and
the label-code tables.

Every reader:

* maps the dataset's official label codes onto the canonical order of `fernb.data.labels`
  (0 neutral, 1 happiness, 2 sadness, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt);
* decodes each image once with PIL: crop (AffectNet face box), centre-crop to a square (non-square images keep
  their aspect ratio), convert to grayscale (``channels=1``) or RGB (``channels=3``), resize to ``size`` x ``size``
  (bilinear, anti-aliased), giving a uint8 (N, C, size, size) tensor;
* never drops anything silently: samples excluded by the dataset's own protocol (AffectNet codes 8-10, FERPlus
  unknown/NF majorities, contempt in a 7-class problem) are counted in ``info["excluded"]``; a missing root, a wrong
  layout, a corrupt image or an unknown label raises an error that names the file (and row) and the expected
  layout. With ``skip_bad=True`` corrupt or missing images are skipped instead, listed in ``info["skipped"]`` and
  announced by a warning.

``info`` holds ``source``, ``root``, ``split``, ``excluded`` (reason -> count) and ``skipped`` (paths) plus a few
dataset-specific facts. ``clean_labels`` is always None: the true labels of a real dataset are unknown.
"""
from __future__ import annotations

import csv
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from . import labels as L
from .dataset import FERDataset
from .labels import UnknownLabelError

__all__ = [
    "DATASETS", "DEFAULT_FOLDERS", "LAYOUTS", "ENV_VAR",
    "DatasetError", "DatasetNotFoundError", "DatasetLayoutError", "CorruptImageError", "UnknownLabelError",
    "load", "resolve_root",
    "load_rafdb", "load_fer2013", "load_ferplus", "load_affectnet", "load_kdef", "load_sfew", "load_ckplus",
]

ENV_VAR = "FERNB_DATA"
DATASETS = ("rafdb", "fer2013", "ferplus", "affectnet", "affectnet8", "kdef", "sfew", "ckplus")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
PARALLEL_MIN = 64            # decode with a thread pool from this many images on (PIL releases the GIL)


# ---- errors -------------------------------------------------------------------------------------------------------
class DatasetError(Exception):
    """Base class of the reader errors (UnknownLabelError, from labels.py, is a ValueError)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset root does not exist (the message names the path tried and the expected layout)."""


class DatasetLayoutError(DatasetError, ValueError):
    """The root exists but does not hold the official layout (missing label file, malformed line, missing image)."""


class CorruptImageError(DatasetError, ValueError):
    """An image PIL cannot decode (corrupt, truncated), or a FER2013 pixel row that is not 48x48 bytes."""


# ---- layouts ------------------------------------------------------------------------------------------------------
DEFAULT_FOLDERS = {
    "rafdb": "RAF-DB", "fer2013": "FER2013", "ferplus": "FERPlus", "affectnet": "AffectNet",
    "affectnet8": "AffectNet", "kdef": "KDEF", "sfew": "SFEW2", "ckplus": "CK+",
}

LAYOUTS = {
    "rafdb": """\
RAF-DB/                                    (root; basic emotion set)
  EmoLabel/list_patition_label.txt         lines "train_00001.jpg 5", "test_0001.jpg 1" (codes 1..7)
  Image/aligned/train_00001_aligned.jpg    aligned=True (100x100 aligned faces)
  Image/original/train_00001.jpg           aligned=False""",
    "fer2013": """\
FER2013/                                   (root)
  fer2013.csv                              header "emotion,pixels,Usage"; pixels = 2304 ints 0..255 (48x48)
                                           Usage Training / PublicTest / PrivateTest -> split train / val / test""",
    "ferplus": """\
FERPlus/                                   (root)
  fer2013new.csv                           header "Usage,Image name,neutral,happiness,surprise,sadness,anger,
                                           disgust,fear,contempt,unknown,NF" (10 vote counts per row)
  fer2013.csv                              the original FER2013 csv, rows aligned 1:1 with fer2013new.csv
                                           (or ../FER2013/fer2013.csv, or pass fer2013_csv=...)""",
    "affectnet": """\
AffectNet/                                 (root)
  Manually_Annotated_file_lists/
    training.csv                           header "subDirectory_filePath,face_x,face_y,face_width,
    validation.csv                         face_height,facial_landmarks,expression,valence,arousal"
  Manually_Annotated_Images/
    689/737db2483489148d783ef278f43f486c0a97e140fc4b6b61b84363ca.jpg   (= subDirectory_filePath)""",
    "kdef": """\
KDEF/                                      (root)
  AF01/AF01AFS.JPG                         <session A|B><gender F|M><id 01..35>/<same><expr><angle>.JPG
  AF01/AF01AFFL.JPG                        expr AF AN DI HA NE SA SU; angle FL HL S HR FR
  ...
  BM35/BM35SUHR.JPG""",
    "sfew": """\
SFEW2/                                     (root)
  Train/Angry/*.png|jpg                    class folders Angry Disgust Fear Happy Neutral Sad Surprise
  Train/Disgust/...
  Val/Angry/...                            split train -> Train/, val -> Val/""",
    "ckplus": """\
CK+/                                       (root)
  cohn-kanade-images/S005/001/S005_001_00000001.png ... S005_001_00000011.png
  Emotion/S005/001/S005_001_00000011_emotion.txt      one float, e.g. "   3.0000000e+00" (codes 0..7)""",
}
LAYOUTS["affectnet8"] = LAYOUTS["affectnet"]


def _layout(key: str) -> str:
    return "Expected layout:\n" + LAYOUTS[key]


def resolve_root(name: str, root=None, data_root=None) -> Path:
    """The dataset folder: ``root`` if given, else ``data_root / <default folder>``, else ``$FERNB_DATA / <default
    folder>``. Raises DatasetNotFoundError (naming the path tried and the expected layout) when it does not exist."""
    key = _canonical_name(name)
    folder = DEFAULT_FOLDERS[key]
    how = "root argument"
    if root is None and data_root is not None:
        root, how = Path(data_root).expanduser() / folder, f"data_root={data_root!s} joined with {folder!r}"
    if root is None:
        env = os.environ.get(ENV_VAR)
        if not env:
            raise DatasetNotFoundError(
                f"{folder}: no root given and ${ENV_VAR} is not set. Pass root=<path to {folder}> or set "
                f"{ENV_VAR} to the folder holding {folder}/ (fernb never downloads datasets).\n{_layout(key)}")
        root, how = Path(env).expanduser() / folder, f"${ENV_VAR}={env} joined with {folder!r}"
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"{folder}: dataset root {root} does not exist or is not a folder (from {how}). Point root= or "
            f"${ENV_VAR} at your local copy (fernb never downloads datasets).\n{_layout(key)}")
    return root


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    key = {"raf": "rafdb", "fer": "fer2013", "fer+": "ferplus", "ck": "ckplus", "ck+": "ckplus",
           "sfew2": "sfew", "sfew2.0": "sfew"}.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return key


def _need_file(path: Path, key: str, what: str) -> Path:
    if not path.is_file():
        raise DatasetLayoutError(f"{what} not found: expected {path}.\n{_layout(key)}")
    return path


def _check_args(size, channels, split, splits):
    if not isinstance(size, (int, np.integer)) or not 48 <= int(size) <= 224:
        raise ValueError(f"size must be an integer in 48..224, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if split not in splits:
        raise ValueError(f"split must be one of {', '.join(map(repr, splits))}, got {split!r}")


# ---- decoding -----------------------------------------------------------------------------------------------------
def _to_chw(im: Image.Image, size: int, channels: int, box=None) -> np.ndarray:
    """Crop (box, clamped to the image), centre-crop to a square, convert, resize; -> uint8 (C, size, size)."""
    if box is not None:
        x0, y0, x1, y1 = box
        x0, y0 = max(0, int(round(x0))), max(0, int(round(y0)))
        x1, y1 = min(im.width, int(round(x1))), min(im.height, int(round(y1)))
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise ValueError(f"face box {tuple(box)} lies outside the {im.width}x{im.height} image")
        im = im.crop((x0, y0, x1, y1))
    if im.width != im.height:
        side = min(im.width, im.height)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side))
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _image_loader(size: int, channels: int, listed_in: str, key: str) -> Callable:
    """item = (path, box or None) -> uint8 (C, size, size)."""
    def load(item):
        path, box = item
        if not os.path.isfile(path):
            raise DatasetLayoutError(f"image {path} (listed in {listed_in}) is missing (pass skip_bad=True to skip "
                                     f"missing images).\n{_layout(key)}")
        try:
            with Image.open(path) as im:
                im.load()                     # decode fully now: a truncated file fails here, not later
                return _to_chw(im, size, channels, box)
        except DatasetError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise CorruptImageError(f"cannot decode image {path}: {e} (pass skip_bad=True to skip unreadable "
                                    f"images; they are then listed in info['skipped'])") from e
    return load


def _decode_all(items: Sequence, loader: Callable, describe: Callable, size: int, channels: int,
                skip_bad: bool, name: str):
    """Decode every item into one preallocated uint8 array; returns (images, kept indexes, skipped descriptions)."""
    n = len(items)
    out = np.empty((n, channels, size, size), dtype=np.uint8)
    errors: list = [None] * n
    stop = [False]

    def work(i):
        if stop[0]:
            return
        try:
            out[i] = loader(items[i])
        except (CorruptImageError, DatasetLayoutError) as e:
            errors[i] = e
            if not skip_bad:
                stop[0] = True

    workers = min(8, os.cpu_count() or 1)
    if n >= PARALLEL_MIN and workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, range(n), chunksize=32))
    else:
        for i in range(n):
            work(i)
            if stop[0]:
                break
    bad = [i for i in range(n) if errors[i] is not None]
    if bad and not skip_bad:
        raise errors[bad[0]]
    skipped = [describe(items[i]) for i in bad]
    if skipped:
        warnings.warn(f"{name}: skipped {len(skipped)} unreadable image(s) (skip_bad=True), listed in "
                      f"info['skipped']; first: {errors[bad[0]]}", stacklevel=4)
    keep = np.setdiff1d(np.arange(n), np.asarray(bad, dtype=np.int64))
    images = out if not bad else out[keep]
    return torch.from_numpy(np.ascontiguousarray(images)), keep, skipped


def _assemble(*, key, split, root, source, items, loader, describe, labels, classes, size, channels, skip_bad,
              excluded, soft=None, boxes=None, identities=None, meta=None, extra_info=None, name=None):
    name = name or f"{key}-{split}"
    if not items:
        raise DatasetLayoutError(f"{name}: no samples found under {root} for split {split!r}.\n{_layout(key)}")
    images, keep, skipped = _decode_all(items, loader, describe, size, channels, skip_bad, name)
    keep_t = torch.from_numpy(keep)

    def rows(values, dtype):
        return None if values is None else torch.as_tensor(np.asarray(values), dtype=dtype)[keep_t]

    info = {"source": source, "root": str(root), "split": split, "excluded": dict(excluded), "skipped": skipped}
    info.update(extra_info or {})
    return FERDataset(
        images=images, labels=rows(labels, torch.int64), classes=tuple(classes), clean_labels=None,
        soft_labels=rows(soft, torch.float32), boxes=rows(boxes, torch.float32),
        identities=rows(identities, torch.int64),
        meta={k: rows(v, torch.float32 if np.asarray(v).dtype.kind == "f" else torch.int64)
              for k, v in (meta or {}).items()},
        name=name, info=info)


def _path_describe(item) -> str:
    return str(item[0])


def _is_number(text) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def _int(text: str):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return int(value) if value.is_integer() else None


# ---- RAF-DB -------------------------------------------------------------------------------------------------------
def load_rafdb(root=None, split="train", size=64, channels=3, aligned=True, skip_bad=False) -> FERDataset:
    """RAF-DB basic emotion set (Li et al., CVPR 2017): 12,271 train / 3,068 test images, 7 classes.

    Layout (root defaults to $FERNB_DATA/RAF-DB)::

        RAF-DB/
          EmoLabel/list_patition_label.txt         lines "train_00001.jpg 5", "test_0001.jpg 1"
          Image/aligned/train_00001_aligned.jpg    aligned=True (100x100 aligned faces)
          Image/original/train_00001.jpg           aligned=False

    (``list_partition_label.txt`` is accepted too.) The split comes from the file-name prefix (train_/test_).
    Codes: 1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness, 6 anger, 7 neutral (`labels.RAFDB`).
    """
    _check_args(size, channels, split, ("train", "test"))
    root = resolve_root("rafdb", root)
    emo = root / "EmoLabel"
    label_file = emo / "list_patition_label.txt"
    if not label_file.is_file() and (emo / "list_partition_label.txt").is_file():
        label_file = emo / "list_partition_label.txt"
    _need_file(label_file, "rafdb", "RAF-DB label file")
    image_dir = root / "Image" / ("aligned" if aligned else "original")
    if not image_dir.is_dir():
        raise DatasetLayoutError(f"RAF-DB image folder not found: expected {image_dir} (aligned={aligned}).\n"
                                 f"{_layout('rafdb')}")
    items, labels = [], []
    with open(label_file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DatasetLayoutError(f"{label_file} line {line_no}: expected '<image name> <code>', got "
                                         f"{line.strip()!r}.\n{_layout('rafdb')}")
            fname, code_text = parts
            code = _int(code_text)
            if code not in L.RAFDB:
                raise UnknownLabelError(f"{label_file} line {line_no}: unknown RAF-DB label {code_text!r} for "
                                        f"{fname}; expected 1..7 (1 surprise 2 fear 3 disgust 4 happiness "
                                        f"5 sadness 6 anger 7 neutral)")
            prefix = fname.split("_", 1)[0]
            if prefix not in ("train", "test"):
                raise DatasetLayoutError(f"{label_file} line {line_no}: image name {fname!r} does not start with "
                                         f"train_ or test_.\n{_layout('rafdb')}")
            if prefix != split:
                continue
            stem, ext = os.path.splitext(fname)
            path = image_dir / (f"{stem}_aligned{ext}" if aligned else fname)
            items.append((str(path), None))
            labels.append(L.RAFDB[code])
    return _assemble(key="rafdb", split=split, root=root, source="RAF-DB basic", items=items,
                     loader=_image_loader(size, channels, str(label_file), "rafdb"), describe=_path_describe,
                     labels=labels, classes=L.classes(7), size=size, channels=channels, skip_bad=skip_bad,
                     excluded={}, extra_info={"aligned": bool(aligned), "label_file": str(label_file)})


# ---- FER2013 / FERPlus --------------------------------------------------------------------------------------------
FER2013_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FERPLUS_HEADER = ("Usage", "Image name") + L.FERPLUS_COLUMNS + ("unknown", "NF")


def _read_csv(path: Path, required: Sequence[str], key: str, default_header: Sequence[str] | None = None):
    """-> (header, list of (line number, row dict)). Checks that the header names `required`; a file whose first
    line is data of `default_header`'s width, with numbers in fields 1..4 (AffectNet's validation.csv ships
    without a header in some copies), is read with `default_header`."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        first = next(reader, None) or []
        header = [h.strip() for h in first]
        rows = []
        if (default_header is not None and len(first) == len(default_header)
                and all(_is_number(v) for v in first[1:5])):          # numbers where a header has names
            header = list(default_header)
            rows.append((reader.line_num, dict(zip(header, first))))
        else:
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetLayoutError(f"{path}: header {','.join(header)!r} lacks column(s) {', '.join(missing)}"
                                         f"; expected {','.join(required)!r}.\n{_layout(key)}")
        for row in reader:
            if row:
                rows.append((reader.line_num, dict(zip(header, row))))
    return header, rows


def _fer_pixels_loader(size: int, channels: int) -> Callable:
    """item = (csv path, line number, pixel string) -> uint8 (C, size, size)."""
    def load(item):
        path, line_no, text = item
        text = text or ""
        try:
            pixels = np.fromstring(text, dtype=np.int64, sep=" ")
        except ValueError:
            pixels = None
        if pixels is None or pixels.size != 48 * 48:
            tokens = text.split()
            for t in tokens:
                if not t.isdigit():
                    raise CorruptImageError(f"{path} row at line {line_no}: pixel value {t!r} is not an integer "
                                            f"0..255 (pass skip_bad=True to skip bad rows)")
            raise CorruptImageError(f"{path} row at line {line_no}: {len(tokens)} pixel values, expected 2304 "
                                    f"(48x48) (pass skip_bad=True to skip bad rows)")
        if pixels.min() < 0 or pixels.max() > 255:
            raise CorruptImageError(f"{path} row at line {line_no}: pixel values must lie in 0..255, got "
                                    f"{pixels.min()}..{pixels.max()}")
        img = pixels.astype(np.uint8).reshape(48, 48)
        if size == 48 and channels == 1:
            return img[None]
        return _to_chw(Image.fromarray(img, mode="L"), size, channels)
    return load


def _fer_describe(item) -> str:
    return f"{item[0]}:line {item[1]}"


def _fer_usage(path, line_no, row, key):
    usage = (row.get("Usage") or "").strip()
    if usage not in FER2013_USAGE:
        raise DatasetLayoutError(f"{path} row at line {line_no}: Usage {usage!r} is not one of "
                                 f"{', '.join(FER2013_USAGE)}.\n{_layout(key)}")
    return FER2013_USAGE[usage]


def load_fer2013(root=None, split="train", size=64, channels=1, skip_bad=False) -> FERDataset:
    """FER2013 (Goodfellow et al., 2013): 35,887 48x48 grayscale faces, 7 classes.

    Layout (root defaults to $FERNB_DATA/FER2013)::

        FER2013/
          fer2013.csv      header "emotion,pixels,Usage"; pixels = 2304 space-separated ints 0..255

    Usage Training / PublicTest / PrivateTest -> split "train" (28,709) / "val" (3,589) / "test" (3,589);
    split="all" takes every row. Codes: 0 anger, 1 disgust, 2 fear, 3 happiness, 4 sadness, 5 surprise,
    6 neutral (`labels.FER2013`). A row whose pixels are not 2304 integers 0..255 raises CorruptImageError naming
    the CSV line (skipped with skip_bad=True); an unknown emotion code raises UnknownLabelError.
    """
    _check_args(size, channels, split, ("train", "val", "test", "all"))
    root = resolve_root("fer2013", root)
    csv_path = _need_file(root / "fer2013.csv", "fer2013", "FER2013 csv")
    _, rows = _read_csv(csv_path, ("emotion", "pixels", "Usage"), "fer2013")
    items, labels = [], []
    for line_no, row in rows:
        if split != "all" and _fer_usage(csv_path, line_no, row, "fer2013") != split:
            continue
        code_text = (row.get("emotion") or "").strip()
        code = _int(code_text)
        if code not in L.FER2013:
            raise UnknownLabelError(f"{csv_path} row at line {line_no}: unknown FER2013 emotion {code_text!r}; "
                                    f"expected 0..6 (0 angry 1 disgust 2 fear 3 happy 4 sad 5 surprise 6 neutral)")
        items.append((str(csv_path), line_no, row.get("pixels")))
        labels.append(L.FER2013[code])
    return _assemble(key="fer2013", split=split, root=root, source="FER2013", items=items,
                     loader=_fer_pixels_loader(size, channels), describe=_fer_describe, labels=labels,
                     classes=L.classes(7), size=size, channels=channels, skip_bad=skip_bad, excluded={},
                     extra_info={"csv": str(csv_path)})


_FERPLUS_TO_CANON = [L.index(c) for c in L.FERPLUS_COLUMNS]     # FERPlus column j -> canonical index


def load_ferplus(root=None, split="train", size=64, channels=1, mode="majority", fer2013_csv=None,
                 skip_bad=False) -> FERDataset:
    """FERPlus (Barsoum et al., ICMI 2016): the FER2013 images relabelled by 10 annotators, 8 classes.

    Layout (root defaults to $FERNB_DATA/FERPlus)::

        FERPlus/
          fer2013new.csv   header "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,
                           contempt,unknown,NF" (vote counts), rows aligned 1:1 with fer2013.csv
          fer2013.csv      the original FER2013 csv (or ../FER2013/fer2013.csv, or pass fer2013_csv=...)

    Images come from fer2013.csv's pixels, the split from its Usage column (train / val / test / all).
    ``soft_labels`` is each row's vote distribution over the 8 emotions (raw counts, unknown and NF left out),
    in canonical order. ``labels``:

    * ``mode="majority"`` (the official FERPlus script): votes of 1 are dropped as outliers, then a class needs
      more than half of the remaining votes; a row with no such class, or whose majority is unknown/NF, is
      excluded.
    * ``mode="plurality"``: the class with the most votes, ties broken by the first in canonical order
      (neutral, happiness, sadness, surprise, fear, disgust, anger, contempt); a row is excluded when unknown or
      NF gets strictly more votes than every emotion.

    Rows with an empty image name (dropped by the FERPlus authors) are excluded too. Every exclusion is counted in
    ``info["excluded"]``: "no image name", "majority unknown/NF", "no majority" (majority mode), "no votes"
    (plurality mode, only when such rows occur).
    """
    _check_args(size, channels, split, ("train", "val", "test", "all"))
    if mode not in ("majority", "plurality"):
        raise ValueError(f"mode must be 'majority' or 'plurality', got {mode!r}")
    root = resolve_root("ferplus", root)
    new_path = _need_file(root / "fer2013new.csv", "ferplus", "FERPlus label file")
    if fer2013_csv is not None:
        fer_path = _need_file(Path(fer2013_csv).expanduser(), "ferplus", "FER2013 csv (fer2013_csv argument)")
    else:
        candidates = [root / "fer2013.csv", root.parent / DEFAULT_FOLDERS["fer2013"] / "fer2013.csv"]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise DatasetLayoutError(f"FERPlus needs the original FER2013 csv for its pixels: looked for "
                                     f"{' and '.join(map(str, candidates))}; pass fer2013_csv=... otherwise.\n"
                                     f"{_layout('ferplus')}")
        fer_path = found[0]
    _, new_rows = _read_csv(new_path, FERPLUS_HEADER, "ferplus")
    _, fer_rows = _read_csv(fer_path, ("pixels", "Usage"), "fer2013")
    if len(new_rows) != len(fer_rows):
        raise DatasetLayoutError(f"{new_path} has {len(new_rows)} rows but {fer_path} has {len(fer_rows)}; the "
                                 f"two files must be aligned row by row.\n{_layout('ferplus')}")
    excluded = {"no image name": 0, "majority unknown/NF": 0}
    if mode == "majority":
        excluded["no majority"] = 0
    items, labels, soft, image_names = [], [], [], []
    for (line_no, row), (fer_line, fer_row) in zip(new_rows, fer_rows):
        usage = _fer_usage(fer_path, fer_line, fer_row, "fer2013")
        if (row.get("Usage") or "").strip() != (fer_row.get("Usage") or "").strip():
            raise DatasetLayoutError(f"{new_path} line {line_no} has Usage {row.get('Usage')!r} but {fer_path} "
                                     f"line {fer_line} has {fer_row.get('Usage')!r}: the files are not aligned.\n"
                                     f"{_layout('ferplus')}")
        if split != "all" and usage != split:
            continue
        try:
            votes = np.array([float(row[c]) for c in FERPLUS_HEADER[2:]], dtype=np.float64)
        except (TypeError, ValueError):
            raise DatasetLayoutError(f"{new_path} line {line_no}: vote counts must be numbers, got "
                                     f"{[row.get(c) for c in FERPLUS_HEADER[2:]]}.\n{_layout('ferplus')}") from None
        if (votes < 0).any():
            raise DatasetLayoutError(f"{new_path} line {line_no}: negative vote count {votes.tolist()}")
        image_name = (row.get("Image name") or "").strip()
        if not image_name:
            excluded["no image name"] += 1
            continue
        canon = np.zeros(10)
        canon[_FERPLUS_TO_CANON] = votes[:8]            # canonical order, then unknown, NF
        canon[8:] = votes[8:]
        if mode == "majority":
            v = np.where(canon <= 1.0, 0.0, canon)      # official outlier removal: single votes dropped
            top = int(np.argmax(v))
            if not v[top] > 0.5 * v.sum():
                excluded["no majority"] += 1
                continue
        else:
            top = int(np.argmax(canon))
            if canon[top] == 0:
                excluded["no votes"] = excluded.get("no votes", 0) + 1
                continue
        if top >= 8:
            excluded["majority unknown/NF"] += 1
            continue
        items.append((str(fer_path), fer_line, fer_row.get("pixels")))
        labels.append(top)
        soft.append(canon[:8] / canon[:8].sum())
        image_names.append(image_name)
    ds = _assemble(key="ferplus", split=split, root=root, source=f"FERPlus ({mode} labels)", items=items,
                   loader=_fer_pixels_loader(size, channels), describe=_fer_describe, labels=labels,
                   classes=L.classes(8), size=size, channels=channels, skip_bad=skip_bad, excluded=excluded,
                   soft=np.asarray(soft, dtype=np.float32).reshape(-1, 8),
                   extra_info={"mode": mode, "label_file": str(new_path), "csv": str(fer_path)})
    return ds


# ---- AffectNet ----------------------------------------------------------------------------------------------------
AFFECTNET_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")
AFFECTNET_HEADER = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                    "expression", "valence", "arousal")


def load_affectnet(root=None, split="train", size=64, channels=3, num_classes=7, skip_bad=False) -> FERDataset:
    """AffectNet, manually annotated part (Mollahosseini et al., 2017): 7 classes (contempt dropped) or 8.

    Layout (root defaults to $FERNB_DATA/AffectNet)::

        AffectNet/
          Manually_Annotated_file_lists/training.csv     header "subDirectory_filePath,face_x,face_y,face_width,
          Manually_Annotated_file_lists/validation.csv   face_height,facial_landmarks,expression,valence,arousal"
          Manually_Annotated_Images/<subDirectory_filePath>   e.g. 689/737db24...jpg

    split "train" reads training.csv; "val" and "test" both read validation.csv (the official test set is not
    public, so papers report on the validation set); a file list without a header row is read with the standard
    columns. Codes 0 neutral, 1 happiness, 2 sadness, 3 surprise, 4 fear,
    5 disgust, 6 anger, 7 contempt (= canonical order). Codes 8 none, 9 uncertain, 10 non-face are excluded by the
    protocol (so is 7 when num_classes=7), counted in info["excluded"]; any other code raises UnknownLabelError.
    Each image is cropped to its face box before resizing; ``boxes`` keeps that box (x0, y0, x1, y1) in the
    original image's pixels, ``meta`` holds valence and arousal.
    """
    _check_args(size, channels, split, ("train", "val", "test"))
    if num_classes not in (7, 8):
        raise ValueError(f"num_classes must be 7 or 8, got {num_classes!r}")
    key = "affectnet" if num_classes == 7 else "affectnet8"
    root = resolve_root(key, root)
    csv_path = _need_file(root / "Manually_Annotated_file_lists" / ("training.csv" if split == "train"
                                                                     else "validation.csv"), key,
                          "AffectNet file list")
    image_dir = root / "Manually_Annotated_Images"
    if not image_dir.is_dir():
        raise DatasetLayoutError(f"AffectNet image folder not found: expected {image_dir}.\n{_layout(key)}")
    _, rows = _read_csv(csv_path, AFFECTNET_COLUMNS, key, default_header=AFFECTNET_HEADER)
    excluded = {name: 0 for name in L.AFFECTNET_NON_EXPRESSION.values()}
    if num_classes == 7:
        excluded["contempt"] = 0
    items, labels, boxes, valence, arousal = [], [], [], [], []
    for line_no, row in rows:
        code_text = (row.get("expression") or "").strip()
        code = _int(code_text)
        if code in L.AFFECTNET_NON_EXPRESSION:
            excluded[L.AFFECTNET_NON_EXPRESSION[code]] += 1
            continue
        if code not in L.AFFECTNET:
            raise UnknownLabelError(f"{csv_path} row at line {line_no}: unknown AffectNet expression "
                                    f"{code_text!r}; expected 0..7 (or 8 none, 9 uncertain, 10 non-face)")
        label = L.AFFECTNET[code]
        if label >= num_classes:
            excluded["contempt"] += 1
            continue
        try:
            x, y, w, h = (float(row[c]) for c in ("face_x", "face_y", "face_width", "face_height"))
        except (TypeError, ValueError):
            raise DatasetLayoutError(f"{csv_path} row at line {line_no}: face box must be numbers, got "
                                     f"{[row.get(c) for c in ('face_x', 'face_y', 'face_width', 'face_height')]}"
                                     ) from None
        rel = (row.get("subDirectory_filePath") or "").strip()
        box = (x, y, x + w, y + h)
        items.append((str(image_dir / rel), box))
        labels.append(label)
        boxes.append(box)
        valence.append(_float_or_nan(row.get("valence")))
        arousal.append(_float_or_nan(row.get("arousal")))
    return _assemble(key=key, split=split, root=root, source=f"AffectNet ({num_classes} classes)", items=items,
                     loader=_image_loader(size, channels, str(csv_path), key), describe=_path_describe, labels=labels,
                     classes=L.classes(num_classes), size=size, channels=channels, skip_bad=skip_bad,
                     excluded=excluded, boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                     meta={"valence": np.asarray(valence, dtype=np.float32),
                           "arousal": np.asarray(arousal, dtype=np.float32)},
                     extra_info={"file_list": str(csv_path),
                                 "boxes": "face box x0,y0,x1,y1 in original-image pixels; images are its crop"})


def _float_or_nan(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


# ---- KDEF ---------------------------------------------------------------------------------------------------------
KDEF_ANGLES = ("FL", "HL", "S", "HR", "FR")
_KDEF_NAME = re.compile(r"^([AB])([FM])(\d{2})([A-Z]{2})([A-Z]{1,2})$", re.IGNORECASE)


def load_kdef(root=None, split="all", size=64, channels=3, angles=KDEF_ANGLES, skip_bad=False) -> FERDataset:
    """KDEF (Lundqvist et al., 1998): 70 subjects x 7 expressions x 5 angles x 2 sessions = 4,900 images.

    Layout (root defaults to $FERNB_DATA/KDEF)::

        KDEF/
          AF01/AF01AFS.JPG      <session A|B><gender F|M><id 01..35> / <same><expression><angle>.JPG
          AF01/AF01AFFL.JPG
          ...
          BM35/BM35SUHR.JPG

    Expression codes AF afraid (fear), AN angry, DI disgusted, HA happy, NE neutral, SA sad, SU surprised
    (`labels.KDEF`); angles FL full left, HL half left, S straight, HR half right, FR full right. All five
    angles are read by default (the FUCLE paper uses all 4,900 images); ``angles=("S",)`` keeps frontal faces only.
    ``identities`` index ``info["subjects"]`` (gender + id, e.g. "F01": both sessions of a person share it);
    ``meta`` holds ``angle`` (index into ``info["angles"]``) and ``session`` (0 = A, 1 = B). Only split "all"
    exists: subject-independent and k-fold splits come from `fernb.data.splits`. A file name whose expression code
    is unknown raises UnknownLabelError naming the file.
    """
    _check_args(size, channels, split, ("all",))
    angles = (angles,) if isinstance(angles, str) else tuple(angles)
    bad = [a for a in angles if a.upper() not in KDEF_ANGLES]
    if bad or not angles:
        raise ValueError(f"angles must be a non-empty subset of {KDEF_ANGLES}, got {angles!r}")
    wanted = {a.upper() for a in angles}
    root = resolve_root("kdef", root)
    files = sorted(p for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                   for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    records = []
    for p in files:
        m = _KDEF_NAME.match(p.stem)
        if not m:
            raise DatasetLayoutError(f"KDEF file name {p} does not follow <session><gender><id><expression>"
                                     f"<angle>, e.g. AF01AFS.JPG.\n{_layout('kdef')}")
        session, gender, sid, expr, angle = (g.upper() for g in m.groups())
        if expr not in L.KDEF:
            raise UnknownLabelError(f"KDEF file {p}: unknown expression code {expr!r}; expected one of "
                                    f"{', '.join(L.KDEF)}")
        if angle not in KDEF_ANGLES:
            raise DatasetLayoutError(f"KDEF file {p}: unknown angle {angle!r}; expected one of "
                                     f"{', '.join(KDEF_ANGLES)}.\n{_layout('kdef')}")
        if angle in wanted:
            records.append((p, session, gender + sid, L.KDEF[expr], angle))
    if not files:
        raise DatasetLayoutError(f"no KDEF images found in the subject folders under {root}.\n{_layout('kdef')}")
    subjects = sorted({r[2] for r in records})
    subject_index = {s: i for i, s in enumerate(subjects)}
    return _assemble(key="kdef", split=split, root=root, source="KDEF", items=[(str(r[0]), None) for r in records],
                     loader=_image_loader(size, channels, f"KDEF folder {root}", "kdef"), describe=_path_describe,
                     labels=[r[3] for r in records], classes=L.classes(7), size=size, channels=channels,
                     skip_bad=skip_bad, excluded={},
                     identities=[subject_index[r[2]] for r in records],
                     meta={"angle": np.asarray([KDEF_ANGLES.index(r[4]) for r in records], dtype=np.int64),
                           "session": np.asarray([0 if r[1] == "A" else 1 for r in records], dtype=np.int64)},
                     extra_info={"subjects": subjects, "angles": list(KDEF_ANGLES),
                                 "angles_used": [a for a in KDEF_ANGLES if a in wanted]})


# ---- SFEW 2.0 -----------------------------------------------------------------------------------------------------
def load_sfew(root=None, split="train", size=64, channels=3, skip_bad=False) -> FERDataset:
    """SFEW 2.0 (Dhall et al., 2015): movie frames, 7 classes; the test split has no public labels.

    Layout (root defaults to $FERNB_DATA/SFEW2)::

        SFEW2/
          Train/Angry/*.png|jpg      class folders Angry Disgust Fear Happy Neutral Sad Surprise
          Train/Disgust/...
          Val/Angry/...

    split "train" reads Train/, "val" reads Val/ (folder names are matched case-insensitively). Folder -> class
    via `labels.SFEW`; an unknown class folder raises UnknownLabelError naming it. Files that are not images
    (extensions other than png/jpg/jpeg/bmp/tif) are ignored and counted in info["ignored_files"].
    """
    _check_args(size, channels, split, ("train", "val"))
    root = resolve_root("sfew", root)
    want = {"train": "train", "val": "val"}[split]
    split_dirs = [d for d in root.iterdir() if d.is_dir() and d.name.lower() == want]
    if not split_dirs:
        raise DatasetLayoutError(f"SFEW split folder not found: expected {root / want.capitalize()}.\n"
                                 f"{_layout('sfew')}")
    split_dir = split_dirs[0]
    sfew_lower = {k.lower(): k for k in L.SFEW}
    items, labels, ignored = [], [], 0
    for d in sorted(split_dir.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        cls = sfew_lower.get(d.name.lower())
        if cls is None:
            raise UnknownLabelError(f"SFEW class folder {d} is unknown; expected one of {', '.join(L.SFEW)}")
        for p in sorted(d.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                items.append((str(p), None))
                labels.append(L.SFEW[cls])
            elif not p.name.startswith("."):
                ignored += 1
    return _assemble(key="sfew", split=split, root=root, source="SFEW 2.0", items=items,
                     loader=_image_loader(size, channels, f"folder {split_dir}", "sfew"), describe=_path_describe,
                     labels=labels, classes=L.classes(7), size=size, channels=channels, skip_bad=skip_bad,
                     excluded={}, extra_info={"ignored_files": ignored})


# ---- CK+ ----------------------------------------------------------------------------------------------------------
_CK_SEQ = re.compile(r"^S(\d+)$", re.IGNORECASE)


def load_ckplus(root=None, split="all", size=64, channels=1, peak_frames=3, include_neutral_first_frame=False,
                num_classes=8, skip_bad=False) -> FERDataset:
    """CK+ (Lucey et al., 2010): 593 posed sequences of 123 subjects, 327 of them labelled with an emotion.

    Layout (root defaults to $FERNB_DATA/CK+)::

        CK+/
          cohn-kanade-images/S005/001/S005_001_00000001.png ... S005_001_00000011.png
          Emotion/S005/001/S005_001_00000011_emotion.txt      one float, e.g. "   3.0000000e+00"

    Codes 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise (`labels.CKPLUS`).
    Only sequences with an emotion file are used: the last ``peak_frames`` frames of each get its label, and with
    ``include_neutral_first_frame=True`` its first frame is added as neutral. num_classes=8 keeps contempt;
    num_classes=7 drops the contempt samples and counts them in info["excluded"]["contempt"]. ``identities`` is
    the subject number (S005 -> 5); ``meta["sequence"]`` = subject * 1000 + sequence number (for split by
    sequence). Only split "all" exists: subject-independent folds come from `fernb.data.splits`.
    """
    _check_args(size, channels, split, ("all",))
    if num_classes not in (7, 8):
        raise ValueError(f"num_classes must be 7 or 8, got {num_classes!r}")
    if int(peak_frames) < 1:
        raise ValueError(f"peak_frames must be >= 1, got {peak_frames!r}")
    root = resolve_root("ckplus", root)
    image_root, emotion_root = root / "cohn-kanade-images", root / "Emotion"
    for folder in (image_root, emotion_root):
        if not folder.is_dir():
            raise DatasetLayoutError(f"CK+ folder not found: expected {folder}.\n{_layout('ckplus')}")
    emotion_files = sorted(emotion_root.glob("*/*/*_emotion.txt"))
    if not emotion_files:
        raise DatasetLayoutError(f"no *_emotion.txt files under {emotion_root}/<subject>/<sequence>/.\n"
                                 f"{_layout('ckplus')}")
    excluded = {"contempt": 0} if num_classes == 7 else {}
    items, labels, identities, sequences = [], [], [], []
    for ef in emotion_files:
        subject, seq = ef.parent.parent.name, ef.parent.name
        m = _CK_SEQ.match(subject)
        if not m or not seq.isdigit():
            raise DatasetLayoutError(f"CK+ emotion file {ef} is not under Emotion/S<subject>/<sequence>/.\n"
                                     f"{_layout('ckplus')}")
        text = ef.read_text(encoding="utf-8", errors="replace").split()
        code = _int(text[0]) if len(text) == 1 else None
        if code not in L.CKPLUS:
            raise UnknownLabelError(f"CK+ emotion file {ef}: unknown code {' '.join(text)!r}; expected one float "
                                    f"0..7 (0 neutral 1 anger 2 contempt 3 disgust 4 fear 5 happy 6 sadness "
                                    f"7 surprise)")
        seq_dir = image_root / subject / seq
        frames = sorted(p for p in seq_dir.glob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS) \
            if seq_dir.is_dir() else []
        if not frames:
            raise DatasetLayoutError(f"CK+ emotion file {ef} has no image sequence: expected frames in {seq_dir}.\n"
                                     f"{_layout('ckplus')}")
        label = L.CKPLUS[code]
        chosen = [(p, label) for p in frames[-int(peak_frames):]]
        if include_neutral_first_frame and frames[0] not in [p for p, _ in chosen]:
            chosen.insert(0, (frames[0], L.index("neutral")))
        for p, lab in chosen:
            if lab >= num_classes:
                excluded["contempt"] += 1
                continue
            items.append((str(p), None))
            labels.append(lab)
            identities.append(int(m.group(1)))
            sequences.append(int(m.group(1)) * 1000 + int(seq))
    return _assemble(key="ckplus", split=split, root=root, source="CK+", items=items,
                     loader=_image_loader(size, channels, f"{image_root}", "ckplus"), describe=_path_describe,
                     labels=labels, classes=L.classes(num_classes), size=size, channels=channels,
                     skip_bad=skip_bad, excluded=excluded, identities=identities,
                     meta={"sequence": np.asarray(sequences, dtype=np.int64)},
                     extra_info={"peak_frames": int(peak_frames),
                                 "include_neutral_first_frame": bool(include_neutral_first_frame)})


# ---- dispatcher ---------------------------------------------------------------------------------------------------
_READERS = {
    "rafdb": (load_rafdb, {}), "fer2013": (load_fer2013, {}), "ferplus": (load_ferplus, {}),
    "affectnet": (load_affectnet, {"num_classes": 7}), "affectnet8": (load_affectnet, {"num_classes": 8}),
    "kdef": (load_kdef, {}), "sfew": (load_sfew, {}), "ckplus": (load_ckplus, {}),
}


def load(name: str, root=None, split: str | None = None, data_root=None, **kw) -> FERDataset:
    """Read dataset `name` (one of DATASETS) with its reader. ``root`` is the dataset's own folder; ``data_root``
    (like $FERNB_DATA) a folder holding it under its default name (DEFAULT_FOLDERS). ``split`` None means the
    reader's default ("train", or "all" for KDEF and CK+). Other keywords go to the reader (size, channels, ...)."""
    key = _canonical_name(name)
    reader, fixed = _READERS[key]
    if root is None and data_root is not None:
        root = resolve_root(key, None, data_root)
    for k, v in fixed.items():
        if k in kw and kw[k] != v:
            raise ValueError(f"{name!r} fixes {k}={v}; got {k}={kw[k]}")
    kw.update(fixed)
    if split is not None:
        kw["split"] = split
    return reader(root=root, **kw)
