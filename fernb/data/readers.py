"""Readers for the real FER datasets, each from its layout as actually downloaded into one `FERDataset`.

Nothing here downloads anything: every dataset is licensed per user, so you fetch it yourself and point fernb at
it. **One convention** (data/README.md): ``root`` (a notebook's ``data_root``) is the dataset's *own* folder, the
one that holds its label files (``.../RAF-DB`` with ``EmoLabel/`` inside); when it is None the dataset is looked
for at ``$FERNB_DATA/<default folder>`` (`DEFAULT_FOLDERS`), so ``FERNB_DATA`` is the *parent* folder holding one
folder per dataset. Pointing ``root`` at that parent by mistake names the subfolder you meant.

Every reader:

* maps the dataset's official label codes onto the canonical order of `fernb.data.labels`
  (0 neutral, 1 happiness, 2 sadness, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt);
* decodes each image once (`fernb.data.decode`): crop (AffectNet face box), centre-crop to a square, every PIL
  mode to the right 8-bit image (16-bit, float, palette, alpha, CMYK ...), resize to ``size`` x ``size``, giving a
  uint8 (N, C, size, size) tensor; in parallel with a progress bar, cached under ``data/cache/decoded`` and
  resumable (a killed first decode of AffectNet's 290,000 images continues where it stopped);
* handles the known quirks of real downloads by name, never by failing or dropping silently: macOS ``._*`` and
  ``.DS_Store`` files and ``__MACOSX/`` folders are skipped and counted (``info["hidden_files"]``); KDEF's two
  misnamed images are read under their right names (``info["quirks"]``); SFEW's nested ``Train_Aligned_Faces``
  folders are read; label files with a byte-order mark (UTF-8/16/32) are read;
* never drops anything silently: samples excluded by the dataset's own protocol (AffectNet codes 8-10, FERPlus
  unknown/NF majorities, contempt in a 7-class problem) are counted in ``info["excluded"]``; a missing root, a wrong
  layout, a malformed csv row, a corrupt image, a face box outside its image or an unknown label raises an error
  that names the file (and line) and the expected layout. With ``skip_bad=True`` missing and unreadable images and
  bad face boxes are skipped instead, listed in ``info["skipped"]``, counted per reason in
  ``info["skipped_reasons"]`` and announced by a warning. Images of one flat colour (blank frames) are kept and
  listed in ``info["uniform_images"]``.

Each reader is two steps, also available separately: ``plan_<dataset>(...)`` reads the label files into a
`ReadPlan` (items, labels, subjects; nothing decoded yet) and ``ReadPlan.decode(size, channels)`` decodes it.
`fernb.data.load_splits` uses the plans to split and subsample *before* decoding.

``info`` holds ``source``, ``root``, ``split``, ``excluded`` (reason -> count), ``skipped`` (paths),
``skipped_reasons``, ``uniform_images``, ``quirks`` and a few dataset-specific facts. ``clean_labels`` is always
None: the true labels of a real dataset are unknown.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import labels as L
from .dataset import FERDataset
from .decode import decode_items, image_loader, to_chw
from .errors import (BadFaceBoxError, BadPixelRowError, CorruptImageError, DatasetError, DatasetLayoutError,
                     DatasetNotFoundError, MissingImageError, UnknownLabelError)
from .files import decode_error, is_hidden, open_text, read_text

__all__ = [
    "DATASETS", "DEFAULT_FOLDERS", "LAYOUTS", "ENV_VAR", "KDEF_MISNAMED",
    "DatasetError", "DatasetNotFoundError", "DatasetLayoutError", "MissingImageError", "CorruptImageError",
    "BadPixelRowError", "BadFaceBoxError", "UnknownLabelError",
    "ReadPlan", "load", "plan", "resolve_root",
    "load_rafdb", "load_fer2013", "load_ferplus", "load_affectnet", "load_kdef", "load_sfew", "load_ckplus",
    "plan_rafdb", "plan_fer2013", "plan_ferplus", "plan_affectnet", "plan_kdef", "plan_sfew", "plan_ckplus",
]

ENV_VAR = "FERNB_DATA"
DATASETS = ("rafdb", "fer2013", "ferplus", "affectnet", "affectnet8", "kdef", "sfew", "ckplus")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# ---- layouts ------------------------------------------------------------------------------------------------------
DEFAULT_FOLDERS = {
    "rafdb": "RAF-DB", "fer2013": "FER2013", "ferplus": "FERPlus", "affectnet": "AffectNet",
    "affectnet8": "AffectNet", "kdef": "KDEF", "sfew": "SFEW2", "ckplus": "CK+",
}

LAYOUTS = {
    "rafdb": """\
RAF-DB/                                    root: the folder holding EmoLabel/ and Image/ (the release's basic/)
  EmoLabel/list_patition_label.txt         lines "train_00001.jpg 5", "test_0001.jpg 1" (codes 1..7)
  Image/aligned/train_00001_aligned.jpg    aligned=True (100x100 aligned faces, from Image/aligned.zip)
  Image/original/train_00001.jpg           aligned=False (from Image/original.zip)""",
    "fer2013": """\
FER2013/                                   root: the folder holding fer2013.csv
  fer2013.csv                              header "emotion,pixels,Usage"; pixels = 2304 ints 0..255 (48x48)
                                           Usage Training / PublicTest / PrivateTest -> split train / val / test
                                           (Kaggle's icml_face_data.csv, same columns, is read when fer2013.csv
                                           is absent)""",
    "ferplus": """\
FERPlus/                                   root: the folder holding fer2013new.csv (the FERPlus repository)
  fer2013new.csv                           header "Usage,Image name,neutral,happiness,surprise,sadness,anger,
                                           disgust,fear,contempt,unknown,NF" (10 vote counts per row)
  fer2013.csv                              the original FER2013 csv, rows aligned 1:1 with fer2013new.csv
                                           (or ../FER2013/fer2013.csv, or pass fer2013_csv=...)""",
    "affectnet": """\
AffectNet/                                 root: the folder holding Manually_Annotated_file_lists/
  Manually_Annotated_file_lists/
    training.csv                           header "subDirectory_filePath,face_x,face_y,face_width,
    validation.csv                         face_height,facial_landmarks,expression,valence,arousal"
  Manually_Annotated_Images/               (unzipped from Manually_Annotated_compressed/)
    689/737db2483489148d783ef278f43f486c0a97e140fc4b6b61b84363ca.jpg   (= subDirectory_filePath)""",
    "kdef": """\
KDEF/                                      root: the KDEF/ folder inside KDEF_and_AKDEF/
  AF01/AF01AFS.JPG                         <session A|B><gender F|M><id 01..35>/<same><expr><angle>.JPG
  AF01/AF01AFFL.JPG                        expr AF AN DI HA NE SA SU; angle FL HL S HR FR
  ...
  AF31/AF31V.JPG                           release quirk: read as AF31SAHL (and AM31/AM31H.JPG as AM31SUHR)
  BM35/BM35SUHR.JPG""",
    "sfew": """\
SFEW2/                                     root: the folder holding Train/ and Val/
  Train/Train_Aligned_Faces/Angry/*.png    as distributed; class folders Angry Disgust Fear Happy Neutral Sad
  Train/Train_Aligned_Faces/Disgust/...    Surprise (Train/<Class>/ and Train_Aligned_Faces/<Class>/ are read too)
  Val/Val_Aligned_Faces/Angry/...          split train -> Train, val -> Val (the test labels are not public)""",
    "ckplus": """\
CK+/                                       root: the folder holding cohn-kanade-images/ and Emotion/
  cohn-kanade-images/S005/001/S005_001_00000001.png ... S005_001_00000011.png
  Emotion/S005/001/S005_001_00000011_emotion.txt      one float, e.g. "   3.0000000e+00" (codes 0..7)""",
}
LAYOUTS["affectnet8"] = LAYOUTS["affectnet"]

_KDEF_SUBJECT = re.compile(r"^[AB][FM]\d{2}$", re.IGNORECASE)


def _sfew_signature(root: Path) -> bool:
    names = {d.name.lower() for d in root.iterdir() if d.is_dir()}
    return bool(names & {"train", "val", "train_aligned_faces", "val_aligned_faces"})


# What the dataset's own folder contains: used to tell a parent folder (or a wrapper folder) from the root.
_SIGNATURES = {
    "rafdb": lambda r: (r / "EmoLabel").is_dir(),
    "fer2013": lambda r: (r / "fer2013.csv").is_file() or (r / "icml_face_data.csv").is_file(),
    "ferplus": lambda r: (r / "fer2013new.csv").is_file(),
    "affectnet": lambda r: (r / "Manually_Annotated_file_lists").is_dir(),
    "kdef": lambda r: any(d.is_dir() and _KDEF_SUBJECT.match(d.name) for d in r.iterdir()),
    "sfew": _sfew_signature,
    "ckplus": lambda r: (r / "Emotion").is_dir() or (r / "cohn-kanade-images").is_dir(),
}
_SIGNATURES["affectnet8"] = _SIGNATURES["affectnet"]


def _layout(key: str) -> str:
    return "Expected layout:\n" + LAYOUTS[key]


def _find_nested(root: Path, key: str, depth: int = 2, budget: int = 400) -> Path | None:
    """The first folder at most `depth` levels below `root` that holds dataset `key` (the default folder name
    first), or None. Only called when `root` itself does not hold it."""
    level, seen = [root], 0
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                children = sorted((c for c in d.iterdir() if c.is_dir() and not is_hidden(c)),
                                  key=lambda c: (c.name != DEFAULT_FOLDERS[key], c.name))
            except OSError:
                continue
            for c in children:
                seen += 1
                if seen > budget:
                    return None
                try:
                    if _SIGNATURES[key](c):
                        return c
                except OSError:
                    pass
                nxt.append(c)
        level = nxt
    return None


def resolve_root(name: str, root=None) -> Path:
    """The dataset's own folder: ``root`` when given (a notebook's ``data_root``), else ``$FERNB_DATA/<default
    folder>`` (`DEFAULT_FOLDERS`). Raises DatasetNotFoundError (naming the path tried and the expected layout)
    when it does not exist, and DatasetLayoutError naming the right folder when ``root`` is a parent or wrapper
    of the dataset (e.g. ``/data`` instead of ``/data/RAF-DB``, ``KDEF_and_AKDEF`` instead of its ``KDEF``)."""
    key = _canonical_name(name)
    folder = DEFAULT_FOLDERS[key]
    if root is None:
        env = os.environ.get(ENV_VAR)
        if not env:
            raise DatasetNotFoundError(
                f"{folder}: no dataset root given and ${ENV_VAR} is not set. Pass the dataset's own folder "
                f"(data_root= / root=) or set {ENV_VAR} to the folder holding {folder}/ (fernb never downloads "
                f"datasets).\n{_layout(key)}")
        root, how = Path(env).expanduser() / folder, f"${ENV_VAR}={env} joined with {folder!r}"
    else:
        how = "the dataset root passed"
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"{folder}: dataset root {root} does not exist or is not a folder ({how}). Point data_root / root= at "
            f"your local copy of the dataset's own folder, or {ENV_VAR} at the folder holding {folder}/ (fernb "
            f"never downloads datasets).\n{_layout(key)}")
    if not _SIGNATURES[key](root):
        nested = _find_nested(root, key)
        if nested is not None:
            raise DatasetLayoutError(
                f"{folder}: {root} ({how}) does not hold the dataset, but {nested} does: pass {nested}. The "
                f"dataset root is the dataset's own folder, not a folder above it.\n{_layout(key)}")
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
    _check_split(split, splits)


def _check_split(split, splits):
    if split not in splits:
        raise ValueError(f"split must be one of {', '.join(map(repr, splits))}, got {split!r}")


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


# ---- the plan: what to decode, with its labels --------------------------------------------------------------------
def _path_describe(item) -> str:
    return str(item[0])


def _path_key(item) -> str:
    return f"{item[0]}|{item[1]}"


def _image_loader_factory(size: int, channels: int) -> Callable:
    return image_loader(size, channels)


@dataclass
class ReadPlan:
    """A dataset split read from its label files, not yet decoded: one item per sample (what to decode) beside
    its label and per-sample facts. `take` subsets it (before paying for decoding), `decode` makes the
    `FERDataset`. ``groups`` are the units a subject-independent split must keep together (KDEF and CK+
    subjects, SFEW movies), or None."""

    key: str
    split: str
    root: Path
    source: str
    name: str
    items: list
    labels: np.ndarray
    classes: tuple
    excluded: dict
    describe: Callable = _path_describe
    item_key: Callable = _path_key
    make_loader: Callable = _image_loader_factory
    soft: np.ndarray | None = None
    boxes: np.ndarray | None = None
    identities: np.ndarray | None = None
    groups: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    sources: tuple = ()

    def __post_init__(self):
        if not self.items:
            raise DatasetLayoutError(f"{self.name}: no samples found under {self.root} for split "
                                     f"{self.split!r}.\n{_layout(self.key)}")
        self.labels = np.asarray(self.labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def take(self, index) -> "ReadPlan":
        """The samples at `index` (int array), in that order."""
        index = np.asarray(index, dtype=np.int64)

        def rows(v):
            return None if v is None else np.asarray(v)[index]

        return replace(self, items=[self.items[i] for i in index], labels=self.labels[index],
                       soft=rows(self.soft), boxes=rows(self.boxes), identities=rows(self.identities),
                       groups=rows(self.groups), meta={k: np.asarray(v)[index] for k, v in self.meta.items()},
                       info=dict(self.info))

    def decode(self, size: int = 64, channels: int = 3, *, skip_bad: bool = False, cache=True, progress=None,
               workers: int | None = None) -> FERDataset:
        """Decode every item into a `FERDataset` (uint8 (N, channels, size, size)); see `fernb.data.decode`."""
        _check_args(size, channels, self.split, (self.split,))
        decoded = decode_items(self.items, self.make_loader(int(size), int(channels)), size=int(size),
                               channels=int(channels), keys=[self.item_key(it) for it in self.items],
                               describe=self.describe, name=self.name, skip_bad=skip_bad, cache=cache,
                               sources=self.sources, progress=progress, workers=workers)
        keep = torch.from_numpy(decoded.keep)

        def rows(values, dtype):
            return None if values is None else torch.as_tensor(np.asarray(values), dtype=dtype)[keep]

        info = {"source": self.source, "root": str(self.root), "split": self.split,
                "excluded": dict(self.excluded), "skipped": decoded.skipped,
                "skipped_reasons": decoded.skipped_reasons, "uniform_images": decoded.uniform,
                "quirks": [], "cache_file": decoded.cache_file}
        info.update(self.info)
        return FERDataset(
            images=decoded.images, labels=rows(self.labels, torch.int64), classes=tuple(self.classes),
            clean_labels=None, soft_labels=rows(self.soft, torch.float32), boxes=rows(self.boxes, torch.float32),
            identities=rows(self.identities, torch.int64),
            meta={k: rows(v, torch.float32 if np.asarray(v).dtype.kind == "f" else torch.int64)
                  for k, v in self.meta.items()},
            name=self.name, info=info)


# ---- text and csv files -------------------------------------------------------------------------------------------
_SPANS_LINES = ("one row runs over several lines: a double quote (\") opens a field that no quote closes on its "
                "line; no field of this file may hold a line break")


def _read_csv(path: Path, required: Sequence[str], key: str, default_header: Sequence[str] | None = None):
    """-> (header, list of (line number, row dict)). The header must name `required`; a file whose first line is
    data of `default_header`'s width, with numbers in fields 1..4 (AffectNet's validation.csv ships without a
    header in some copies), is read with `default_header`. Every row must have the header's number of fields
    (trailing empty fields aside) and sit on one line (no field of the FER2013, FERPlus or AffectNet files holds
    a line break; a stray double quote makes a field swallow the lines after it): otherwise DatasetLayoutError
    names the file and the line the row starts on (first and last line when it spans several). Read as UTF-8, or
    UTF-8/16/32 with a byte-order mark."""
    f, encoding = open_text(path, newline="")
    reader = csv.reader(f)
    rows = []
    start = 1

    def where() -> str:
        return f"line {start}" if reader.line_num <= start else f"lines {start}-{reader.line_num}"

    try:
        with f:
            first = next(reader, None) or []
            header = [h.strip() for h in first]
            if (default_header is not None and len(first) == len(default_header)
                    and all(_is_number(v) for v in first[1:5])):          # numbers where a header has names
                header = list(default_header)
                rows.append((1, dict(zip(header, first))))
            else:
                missing = [c for c in required if c not in header]
                if missing:
                    raise DatasetLayoutError(f"{path}: header {','.join(header)!r} lacks column(s) "
                                             f"{', '.join(missing)}; expected {','.join(required)!r}.\n"
                                             f"{_layout(key)}")
            width = len(header)
            while True:
                start = reader.line_num + 1                # the line this row starts on
                row = next(reader, None)
                if row is None:
                    break
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) > width and not any(c.strip() for c in row[width:]):
                    row = row[:width]
                spans = reader.line_num > start
                if len(row) != width or spans:
                    got = ",".join(row)
                    fields = f" with {len(row)} field(s), expected {width} ({','.join(header)})"
                    problem = (fields if len(row) != width else "") + (f"; {_SPANS_LINES}" if spans else "")
                    raise DatasetLayoutError(
                        f"{path} {where()}: malformed row{problem}; the row reads "
                        f"{got[:120]!r}{'...' if len(got) > 120 else ''}.\n{_layout(key)}")
                rows.append((start, dict(zip(header, row))))
    except UnicodeDecodeError as e:
        raise decode_error(path, encoding, e) from None
    except csv.Error as e:
        hint = f"; {_SPANS_LINES}" if reader.line_num > start else ""
        raise DatasetLayoutError(f"{path} {where()}: malformed csv ({e}){hint}.\n{_layout(key)}") from None
    return header, rows


# ---- RAF-DB -------------------------------------------------------------------------------------------------------
def plan_rafdb(root=None, split="train", aligned=True) -> ReadPlan:
    """The RAF-DB `ReadPlan` (labels read, nothing decoded); `load_rafdb` documents the layout."""
    _check_split(split, ("train", "test"))
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
    for line_no, line in enumerate(read_text(label_file).splitlines(), 1):
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
        items.append((str(path), None, f"{label_file} line {line_no}"))
        labels.append(L.RAFDB[code])
    return ReadPlan(key="rafdb", split=split, root=root, source="RAF-DB basic", name=f"rafdb-{split}",
                    items=items, labels=labels, classes=L.classes(7), excluded={},
                    info={"aligned": bool(aligned), "label_file": str(label_file)})


def load_rafdb(root=None, split="train", size=64, channels=3, aligned=True, skip_bad=False, cache=True,
               progress=None, workers=None) -> FERDataset:
    """RAF-DB basic emotion set (Li et al., CVPR 2017): 12,271 train / 3,068 test images, 7 classes.

    Layout (root: the release's ``basic/`` folder; default $FERNB_DATA/RAF-DB)::

        RAF-DB/
          EmoLabel/list_patition_label.txt         lines "train_00001.jpg 5", "test_0001.jpg 1"
          Image/aligned/train_00001_aligned.jpg    aligned=True (100x100 aligned faces)
          Image/original/train_00001.jpg           aligned=False

    (``list_partition_label.txt`` is accepted too; a label file with a byte-order mark is read.) The split comes
    from the file-name prefix (train_/test_). Codes: 1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness,
    6 anger, 7 neutral (`labels.RAFDB`). ``cache``, ``progress``, ``workers``: see `fernb.data.decode`.
    """
    _check_args(size, channels, split, ("train", "test"))
    return plan_rafdb(root, split, aligned).decode(size, channels, skip_bad=skip_bad, cache=cache,
                                                   progress=progress, workers=workers)


# ---- FER2013 / FERPlus --------------------------------------------------------------------------------------------
FER2013_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FERPLUS_HEADER = ("Usage", "Image name") + L.FERPLUS_COLUMNS + ("unknown", "NF")


def _fer_pixels(item) -> np.ndarray:
    """item = (csv path, line number, pixel string) -> uint8 (48, 48); BadPixelRowError naming file and line."""
    path, line_no, text = item
    tokens = (text or "").split()
    try:
        pixels = np.asarray(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next((t for t in tokens if not t.lstrip("-").isdigit()), None) or max(tokens, key=len)
        raise BadPixelRowError(f"{path} row at line {line_no}: pixel value {bad!r} is not an integer 0..255 "
                               f"(pass skip_bad=True to skip bad rows)") from None
    if pixels.size != 48 * 48:
        raise BadPixelRowError(f"{path} row at line {line_no}: {pixels.size} pixel values, expected 2304 (48x48) "
                               f"(pass skip_bad=True to skip bad rows)")
    if pixels.min() < 0 or pixels.max() > 255:
        raise BadPixelRowError(f"{path} row at line {line_no}: pixel values must lie in 0..255, got "
                               f"{pixels.min()}..{pixels.max()} (pass skip_bad=True to skip bad rows)")
    return pixels.astype(np.uint8).reshape(48, 48)


def _fer_loader_factory(size: int, channels: int) -> Callable:
    from PIL import Image

    def load(item):
        img = _fer_pixels(item)
        if size == 48 and channels == 1:
            return img[None]
        return to_chw(Image.fromarray(img, mode="L"), size, channels)
    return load


def _fer_describe(item) -> str:
    return f"{item[0]}:line {item[1]}"


def _fer_usage(path, line_no, row, key):
    usage = (row.get("Usage") or "").strip()
    if usage not in FER2013_USAGE:
        raise DatasetLayoutError(f"{path} row at line {line_no}: Usage {usage!r} is not one of "
                                 f"{', '.join(FER2013_USAGE)}.\n{_layout(key)}")
    return FER2013_USAGE[usage]


def _fer2013_csv(root: Path) -> Path:
    for name in ("fer2013.csv", "icml_face_data.csv"):
        if (root / name).is_file():
            return root / name
    return _need_file(root / "fer2013.csv", "fer2013", "FER2013 csv")


def plan_fer2013(root=None, split="train") -> ReadPlan:
    """The FER2013 `ReadPlan`; `load_fer2013` documents the layout."""
    _check_split(split, ("train", "val", "test", "all"))
    root = resolve_root("fer2013", root)
    csv_path = _fer2013_csv(root)
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
    return ReadPlan(key="fer2013", split=split, root=root, source="FER2013", name=f"fer2013-{split}", items=items,
                    labels=labels, classes=L.classes(7), excluded={}, describe=_fer_describe,
                    item_key=_fer_describe, make_loader=_fer_loader_factory, info={"csv": str(csv_path)},
                    sources=(str(csv_path),))


def load_fer2013(root=None, split="train", size=64, channels=1, skip_bad=False, cache=True, progress=None,
                 workers=None) -> FERDataset:
    """FER2013 (Goodfellow et al., 2013): 35,887 48x48 grayscale faces, 7 classes.

    Layout (root default $FERNB_DATA/FER2013)::

        FER2013/
          fer2013.csv      header "emotion,pixels,Usage"; pixels = 2304 space-separated ints 0..255

    (Kaggle's ``icml_face_data.csv``, the same columns in another order, is read when fer2013.csv is absent.)
    Usage Training / PublicTest / PrivateTest -> split "train" (28,709) / "val" (3,589) / "test" (3,589);
    split="all" takes every row. Codes: 0 anger, 1 disgust, 2 fear, 3 happiness, 4 sadness, 5 surprise,
    6 neutral (`labels.FER2013`). A row with the wrong number of fields raises DatasetLayoutError naming the line;
    a row whose pixels are not 2304 integers 0..255 raises BadPixelRowError naming the line (skipped with
    skip_bad=True); an unknown emotion code raises UnknownLabelError.
    """
    _check_args(size, channels, split, ("train", "val", "test", "all"))
    return plan_fer2013(root, split).decode(size, channels, skip_bad=skip_bad, cache=cache, progress=progress,
                                            workers=workers)


_FERPLUS_TO_CANON = [L.index(c) for c in L.FERPLUS_COLUMNS]     # FERPlus column j -> canonical index


def plan_ferplus(root=None, split="train", mode="majority", fer2013_csv=None) -> ReadPlan:
    """The FERPlus `ReadPlan`; `load_ferplus` documents the layout and the label rules."""
    _check_split(split, ("train", "val", "test", "all"))
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
    items, labels, soft = [], [], []
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
        if (votes < 0).any() or not np.isfinite(votes).all():
            raise DatasetLayoutError(f"{new_path} line {line_no}: vote counts must be finite and >= 0, got "
                                     f"{votes.tolist()}.\n{_layout('ferplus')}")
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
    return ReadPlan(key="ferplus", split=split, root=root, source=f"FERPlus ({mode} labels)",
                    name=f"ferplus-{split}", items=items, labels=labels, classes=L.classes(8), excluded=excluded,
                    describe=_fer_describe, item_key=_fer_describe, make_loader=_fer_loader_factory,
                    soft=np.asarray(soft, dtype=np.float32).reshape(-1, 8),
                    info={"mode": mode, "label_file": str(new_path), "csv": str(fer_path)},
                    sources=(str(fer_path),))


def load_ferplus(root=None, split="train", size=64, channels=1, mode="majority", fer2013_csv=None,
                 skip_bad=False, cache=True, progress=None, workers=None) -> FERDataset:
    """FERPlus (Barsoum et al., ICMI 2016): the FER2013 images relabelled by 10 annotators, 8 classes.

    Layout (root: the FERPlus repository's folder; default $FERNB_DATA/FERPlus)::

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
    (plurality mode, only when such rows occur). A row of either csv with the wrong number of fields raises
    DatasetLayoutError naming the file and line.
    """
    _check_args(size, channels, split, ("train", "val", "test", "all"))
    return plan_ferplus(root, split, mode, fer2013_csv).decode(size, channels, skip_bad=skip_bad, cache=cache,
                                                               progress=progress, workers=workers)


# ---- AffectNet ----------------------------------------------------------------------------------------------------
AFFECTNET_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")
AFFECTNET_HEADER = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                    "expression", "valence", "arousal")


def _float_or_nan(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def plan_affectnet(root=None, split="train", num_classes=7) -> ReadPlan:
    """The AffectNet `ReadPlan`; `load_affectnet` documents the layout."""
    _check_split(split, ("train", "val", "test"))
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
                                     f".\n{_layout(key)}") from None
        rel = (row.get("subDirectory_filePath") or "").strip()
        if not rel:
            raise DatasetLayoutError(f"{csv_path} row at line {line_no}: empty subDirectory_filePath.\n"
                                     f"{_layout(key)}")
        box = (x, y, x + w, y + h)
        items.append((str(image_dir / rel), box, f"{csv_path} line {line_no}"))
        labels.append(label)
        boxes.append(box)
        valence.append(_float_or_nan(row.get("valence")))
        arousal.append(_float_or_nan(row.get("arousal")))
    return ReadPlan(key=key, split=split, root=root, source=f"AffectNet ({num_classes} classes)",
                    name=f"{key}-{split}", items=items, labels=labels, classes=L.classes(num_classes),
                    excluded=excluded, boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                    meta={"valence": np.asarray(valence, dtype=np.float32),
                          "arousal": np.asarray(arousal, dtype=np.float32)},
                    info={"file_list": str(csv_path),
                          "boxes": "face box x0,y0,x1,y1 in original-image pixels; images are its crop"})


def load_affectnet(root=None, split="train", size=64, channels=3, num_classes=7, skip_bad=False, cache=True,
                   progress=None, workers=None) -> FERDataset:
    """AffectNet, manually annotated part (Mollahosseini et al., 2017): 7 classes (contempt dropped) or 8.

    Layout (root default $FERNB_DATA/AffectNet)::

        AffectNet/
          Manually_Annotated_file_lists/training.csv     header "subDirectory_filePath,face_x,face_y,face_width,
          Manually_Annotated_file_lists/validation.csv   face_height,facial_landmarks,expression,valence,arousal"
          Manually_Annotated_Images/<subDirectory_filePath>   e.g. 689/737db24...jpg

    split "train" reads training.csv (roughly 290,000 images of the 8 expressions); "val" and "test" both
    read validation.csv (the official test set is not public, so papers report on the validation set); a file
    list without a header row is read with the standard columns. Codes 0 neutral, 1 happiness, 2 sadness,
    3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt (= canonical order). Codes 8 none, 9 uncertain,
    10 non-face are excluded by the protocol (so is 7 when num_classes=7), counted in info["excluded"]; any
    other code raises UnknownLabelError. Each image is cropped to its face box before resizing; ``boxes`` keeps
    that box (x0, y0, x1, y1) in the original image's pixels, ``meta`` holds valence and arousal. A box that is
    empty or lies outside its image raises BadFaceBoxError naming the box, the csv line and the image size
    (skip_bad=True skips it, counted under "face box outside image").
    """
    _check_args(size, channels, split, ("train", "val", "test"))
    return plan_affectnet(root, split, num_classes).decode(size, channels, skip_bad=skip_bad, cache=cache,
                                                           progress=progress, workers=workers)


# ---- KDEF ---------------------------------------------------------------------------------------------------------
KDEF_ANGLES = ("FL", "HL", "S", "HR", "FR")
_KDEF_NAME = re.compile(r"^([AB])([FM])(\d{2})([A-Z]{2})([A-Z]{1,2})$", re.IGNORECASE)
# Files misnamed in the KDEF release, by the name they carry -> the name they should have. AF31 lacks its SA-HL
# image and holds an extra "AF31V"; AM31 lacks SU-HR and holds "AM31H" (public loaders rename them the same way).
KDEF_MISNAMED = {"AF31V": "AF31SAHL", "AM31H": "AM31SUHR"}


def plan_kdef(root=None, split="all", angles=KDEF_ANGLES) -> ReadPlan:
    """The KDEF `ReadPlan`; `load_kdef` documents the layout and the release quirks."""
    _check_split(split, ("all",))
    angles = (angles,) if isinstance(angles, str) else tuple(angles)
    bad = [a for a in angles if a.upper() not in KDEF_ANGLES]
    if bad or not angles:
        raise ValueError(f"angles must be a non-empty subset of {KDEF_ANGLES}, got {angles!r}")
    wanted = {a.upper() for a in angles}
    root = resolve_root("kdef", root)
    hidden = ignored = 0
    files = []
    for d in sorted(root.iterdir()):
        if is_hidden(d):
            hidden += 1
            continue
        if not d.is_dir():
            ignored += 1
            continue
        for p in sorted(d.iterdir()):
            if is_hidden(p):
                hidden += 1
            elif p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(p)
            else:
                ignored += 1
    if not files:
        raise DatasetLayoutError(f"no KDEF images found in the subject folders under {root}.\n{_layout('kdef')}")
    present = {p.stem.upper() for p in files}
    records, quirks, excluded = [], [], {}
    for p in files:
        stem = p.stem.upper()
        if stem in KDEF_MISNAMED:
            right = KDEF_MISNAMED[stem]
            if right in present:
                excluded["misnamed duplicate"] = excluded.get("misnamed duplicate", 0) + 1
                quirks.append(f"{p.parent.name}/{p.name}: a known misnamed file of the KDEF release, left out "
                              f"because {right} is present too")
                continue
            quirks.append(f"{p.parent.name}/{p.name} read as {right} (a known misnamed file of the KDEF release)")
            stem = right
        m = _KDEF_NAME.match(stem)
        if not m:
            raise DatasetLayoutError(f"KDEF file name {p} does not follow <session><gender><id><expression>"
                                     f"<angle>, e.g. AF01AFS.JPG.\n{_layout('kdef')}")
        session, gender, sid, expr, angle = m.groups()
        if expr not in L.KDEF:
            raise UnknownLabelError(f"KDEF file {p}: unknown expression code {expr!r}; expected one of "
                                    f"{', '.join(L.KDEF)}")
        if angle not in KDEF_ANGLES:
            raise DatasetLayoutError(f"KDEF file {p}: unknown angle {angle!r}; expected one of "
                                     f"{', '.join(KDEF_ANGLES)}.\n{_layout('kdef')}")
        if angle in wanted:
            records.append((p, session, gender + sid, L.KDEF[expr], angle))
    subjects = sorted({r[2] for r in records})
    subject_index = {s: i for i, s in enumerate(subjects)}
    identities = np.asarray([subject_index[r[2]] for r in records], dtype=np.int64)
    return ReadPlan(key="kdef", split=split, root=root, source="KDEF", name=f"kdef-{split}",
                    items=[(str(r[0]), None, f"KDEF folder {root}") for r in records],
                    labels=[r[3] for r in records], classes=L.classes(7), excluded=excluded,
                    identities=identities, groups=identities,
                    meta={"angle": np.asarray([KDEF_ANGLES.index(r[4]) for r in records], dtype=np.int64),
                          "session": np.asarray([0 if r[1] == "A" else 1 for r in records], dtype=np.int64)},
                    info={"subjects": subjects, "angles": list(KDEF_ANGLES),
                          "angles_used": [a for a in KDEF_ANGLES if a in wanted], "quirks": quirks,
                          "hidden_files": hidden, "ignored_files": ignored})


def load_kdef(root=None, split="all", size=64, channels=3, angles=KDEF_ANGLES, skip_bad=False, cache=True,
              progress=None, workers=None) -> FERDataset:
    """KDEF (Lundqvist et al., 1998): 70 subjects x 7 expressions x 5 angles x 2 sessions = 4,900 images.

    Layout (root: the ``KDEF/`` folder of ``KDEF_and_AKDEF/``; default $FERNB_DATA/KDEF)::

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
    exists: `fernb.data.load_splits` makes a seeded subject-independent train/val/test split.

    Release quirks: the two misnamed files ``AF31/AF31V.JPG`` and ``AM31/AM31H.JPG`` (`KDEF_MISNAMED`) are read as
    AF31SAHL and AM31SUHR and noted in ``info["quirks"]`` (left out, and counted in ``info["excluded"]``, if a
    correctly named copy is present too); hidden files (``._*``, ``.DS_Store``, ``__MACOSX/``) are skipped and
    counted in ``info["hidden_files"]``, other non-image files in ``info["ignored_files"]``; the release's
    blank (one flat colour) images are kept and listed in ``info["uniform_images"]``. Any other file name that
    does not parse raises DatasetLayoutError, an unknown expression code UnknownLabelError, naming the file.
    """
    _check_args(size, channels, split, ("all",))
    return plan_kdef(root, split, angles).decode(size, channels, skip_bad=skip_bad, cache=cache, progress=progress,
                                                 workers=workers)


# ---- SFEW 2.0 -----------------------------------------------------------------------------------------------------
_SFEW_LOWER = {k.lower(): k for k in L.SFEW}
_SFEW_FRAME = re.compile(r"(_\d+)+$")


def _sfew_class_root(root: Path, split: str, aligned) -> Path:
    """The folder holding SFEW's class folders for `split`.
    Looks at <Split>/<Split>_Aligned_Faces/, <Split>_Aligned_Faces/ and <Split>/ (case-insensitive)."""
    want = split.lower()

    def child(folder: Path, name: str):
        if folder is None or not folder.is_dir():
            return None
        return next((d for d in sorted(folder.iterdir()) if d.is_dir() and d.name.lower() == name), None)

    split_dir = child(root, want)
    aligned_dirs = [d for d in (child(split_dir, f"{want}_aligned_faces"), child(root, f"{want}_aligned_faces"))
                    if d is not None]
    has_classes = split_dir is not None and any(
        d.is_dir() and d.name.lower() in _SFEW_LOWER for d in split_dir.iterdir())
    if aligned is not False and aligned_dirs:
        return aligned_dirs[0]
    if aligned is not True and has_classes:
        return split_dir
    name = split.capitalize()
    if aligned is True:
        raise DatasetLayoutError(f"SFEW aligned faces for split {split!r} not found: expected "
                                 f"{root / name / f'{name}_Aligned_Faces'} or {root / f'{name}_Aligned_Faces'}.\n"
                                 f"{_layout('sfew')}")
    if split_dir is None:
        raise DatasetLayoutError(f"SFEW split folder not found: expected {root / name}/{name}_Aligned_Faces/"
                                 f"<Class>/ or {root / name}/<Class>/.\n{_layout('sfew')}")
    return split_dir


def plan_sfew(root=None, split="train", aligned=None) -> ReadPlan:
    """The SFEW 2.0 `ReadPlan`; `load_sfew` documents the layouts."""
    _check_split(split, ("train", "val"))
    root = resolve_root("sfew", root)
    class_root = _sfew_class_root(root, split, aligned)
    items, labels, movies, hidden, ignored = [], [], [], 0, 0
    for d in sorted(class_root.iterdir()):
        if is_hidden(d):
            hidden += 1
            continue
        if not d.is_dir():
            ignored += 1
            continue
        if d.name.lower().endswith("_aligned_faces"):      # the other variant, beside Train/<Class>/ (aligned=False)
            continue
        cls = _SFEW_LOWER.get(d.name.lower())
        if cls is None:
            raise UnknownLabelError(f"SFEW class folder {d} is unknown; expected one of {', '.join(L.SFEW)} "
                                    f"(under {class_root})")
        for p in sorted(d.iterdir()):
            if is_hidden(p):
                hidden += 1
            elif p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                items.append((str(p), None, f"folder {d}"))
                labels.append(L.SFEW[cls])
                movies.append(_SFEW_FRAME.sub("", p.stem) or p.stem)
            else:
                ignored += 1
    titles = sorted(set(movies))
    index = {t: i for i, t in enumerate(titles)}
    return ReadPlan(key="sfew", split=split, root=root, source="SFEW 2.0", name=f"sfew-{split}", items=items,
                    labels=labels, classes=L.classes(7), excluded={},
                    groups=np.asarray([index[t] for t in movies], dtype=np.int64),
                    meta={"movie": np.asarray([index[t] for t in movies], dtype=np.int64)},
                    info={"layout": str(class_root.relative_to(root)), "movies": titles,
                          "hidden_files": hidden, "ignored_files": ignored})


def load_sfew(root=None, split="train", size=64, channels=3, aligned=None, skip_bad=False, cache=True,
              progress=None, workers=None) -> FERDataset:
    """SFEW 2.0 (Dhall et al., 2015): movie frames, 7 classes; the test split has no public labels.

    Layout as distributed (root: the folder holding Train/ and Val/; default $FERNB_DATA/SFEW2)::

        SFEW2/
          Train/Train_Aligned_Faces/Angry/*.png   class folders Angry Disgust Fear Happy Neutral Sad Surprise
          Train/Train_Aligned_Faces/Disgust/...
          Val/Val_Aligned_Faces/Angry/...

    Also read: ``Train/<Class>/`` (class folders directly under the split) and ``Train_Aligned_Faces/<Class>/``
    (the aligned folder unpacked at the top). ``aligned=None`` takes the aligned faces when they exist, else the
    class folders under Train/; True or False insists on one. Folder names match case-insensitively;
    ``info["layout"]`` says which folder was read. Folder -> class via `labels.SFEW`; an unknown class folder
    raises UnknownLabelError naming it. Hidden files (``._*``, ``.DS_Store``) are skipped and counted in
    ``info["hidden_files"]``, other non-image files in ``info["ignored_files"]``. ``meta["movie"]`` indexes
    ``info["movies"]``: the file name without its trailing frame numbers (``Airheads_000519240.png`` ->
    ``Airheads``), which `fernb.data.load_splits` keeps on one side of a split.
    """
    _check_args(size, channels, split, ("train", "val"))
    return plan_sfew(root, split, aligned).decode(size, channels, skip_bad=skip_bad, cache=cache,
                                                  progress=progress, workers=workers)


# ---- CK+ ----------------------------------------------------------------------------------------------------------
_CK_SEQ = re.compile(r"^S(\d+)$", re.IGNORECASE)


def _visible_dirs(folder: Path, counter: list) -> list[Path]:
    out = []
    for d in sorted(folder.iterdir()):
        if is_hidden(d):
            counter[0] += 1
        elif d.is_dir():
            out.append(d)
    return out


def plan_ckplus(root=None, split="all", peak_frames=3, include_neutral_first_frame=False,
                num_classes=8) -> ReadPlan:
    """The CK+ `ReadPlan`; `load_ckplus` documents the layout."""
    _check_split(split, ("all",))
    if num_classes not in (7, 8):
        raise ValueError(f"num_classes must be 7 or 8, got {num_classes!r}")
    if int(peak_frames) < 1:
        raise ValueError(f"peak_frames must be >= 1, got {peak_frames!r}")
    root = resolve_root("ckplus", root)
    image_root, emotion_root = root / "cohn-kanade-images", root / "Emotion"
    for folder in (image_root, emotion_root):
        if not folder.is_dir():
            raise DatasetLayoutError(f"CK+ folder not found: expected {folder}.\n{_layout('ckplus')}")
    hidden = [0]
    emotion_files = []
    for subject in _visible_dirs(emotion_root, hidden):
        for seq in _visible_dirs(subject, hidden):
            for ef in sorted(seq.iterdir()):
                if is_hidden(ef):
                    hidden[0] += 1
                elif ef.is_file() and ef.name.endswith("_emotion.txt"):
                    emotion_files.append(ef)
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
        text = read_text(ef).split()
        code = _int(text[0]) if len(text) == 1 else None
        if code not in L.CKPLUS:
            raise UnknownLabelError(f"CK+ emotion file {ef}: unknown code {' '.join(text)!r}; expected one float "
                                    f"0..7 (0 neutral 1 anger 2 contempt 3 disgust 4 fear 5 happy 6 sadness "
                                    f"7 surprise)")
        seq_dir = image_root / subject / seq
        frames = []
        if seq_dir.is_dir():
            for p in sorted(seq_dir.iterdir()):
                if is_hidden(p):
                    hidden[0] += 1
                elif p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                    frames.append(p)
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
            items.append((str(p), None, f"{image_root}"))
            labels.append(lab)
            identities.append(int(m.group(1)))
            sequences.append(int(m.group(1)) * 1000 + int(seq))
    identities = np.asarray(identities, dtype=np.int64)
    return ReadPlan(key="ckplus", split=split, root=root, source="CK+", name=f"ckplus-{split}", items=items,
                    labels=labels, classes=L.classes(num_classes), excluded=excluded, identities=identities,
                    groups=identities, meta={"sequence": np.asarray(sequences, dtype=np.int64)},
                    info={"peak_frames": int(peak_frames),
                          "include_neutral_first_frame": bool(include_neutral_first_frame),
                          "hidden_files": hidden[0]})


def load_ckplus(root=None, split="all", size=64, channels=1, peak_frames=3, include_neutral_first_frame=False,
                num_classes=8, skip_bad=False, cache=True, progress=None, workers=None) -> FERDataset:
    """CK+ (Lucey et al., 2010): 593 posed sequences of 123 subjects, 327 of them labelled with an emotion.

    Layout (root: the folder holding both unzipped parts; default $FERNB_DATA/CK+)::

        CK+/
          cohn-kanade-images/S005/001/S005_001_00000001.png ... S005_001_00000011.png
          Emotion/S005/001/S005_001_00000011_emotion.txt      one float, e.g. "   3.0000000e+00"

    Codes 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise (`labels.CKPLUS`).
    Only sequences with an emotion file are used: the last ``peak_frames`` frames of each get its label, and with
    ``include_neutral_first_frame=True`` its first frame is added as neutral. num_classes=8 keeps contempt;
    num_classes=7 drops the contempt samples and counts them in info["excluded"]["contempt"]. ``identities`` is
    the subject number (S005 -> 5); ``meta["sequence"]`` = subject * 1000 + sequence number. Only split "all"
    exists: `fernb.data.load_splits` makes a seeded subject-independent split. Hidden files (``._*_emotion.txt``,
    ``._*.png``, ``.DS_Store``) are skipped and counted in ``info["hidden_files"]``; frames in any image mode
    (grey or RGB) are converted to the requested channels.
    """
    _check_args(size, channels, split, ("all",))
    return plan_ckplus(root, split, peak_frames, include_neutral_first_frame, num_classes).decode(
        size, channels, skip_bad=skip_bad, cache=cache, progress=progress, workers=workers)


# ---- dispatcher ---------------------------------------------------------------------------------------------------
_READERS = {
    "rafdb": (load_rafdb, plan_rafdb, {}), "fer2013": (load_fer2013, plan_fer2013, {}),
    "ferplus": (load_ferplus, plan_ferplus, {}),
    "affectnet": (load_affectnet, plan_affectnet, {"num_classes": 7}),
    "affectnet8": (load_affectnet, plan_affectnet, {"num_classes": 8}),
    "kdef": (load_kdef, plan_kdef, {}), "sfew": (load_sfew, plan_sfew, {}), "ckplus": (load_ckplus, plan_ckplus, {}),
}
DEFAULT_SPLITS = {"rafdb": "train", "fer2013": "train", "ferplus": "train", "affectnet": "train",
                  "affectnet8": "train", "kdef": "all", "sfew": "train", "ckplus": "all"}


def _dispatch(name, kw, which):
    if "data_root" in kw:
        raise TypeError("readers take the dataset's own folder as root= (a notebook's data_root is passed there); "
                        "the parent folder holding every dataset is the FERNB_DATA environment variable")
    key = _canonical_name(name)
    loader, planner, fixed = _READERS[key]
    for k, v in fixed.items():
        if k in kw and kw[k] != v:
            raise ValueError(f"{name!r} fixes {k}={v}; got {k}={kw[k]}")
    kw.update(fixed)
    return key, (loader if which == "load" else planner)


def load(name: str, root=None, split: str | None = None, **kw) -> FERDataset:
    """Read dataset `name` (one of DATASETS) with its reader. ``root`` is the dataset's own folder (None:
    ``$FERNB_DATA/<default folder>``). ``split`` None means the reader's default (`DEFAULT_SPLITS`: "train", or
    "all" for KDEF and CK+). Other keywords go to the reader (size, channels, skip_bad, cache, ...)."""
    key, reader = _dispatch(name, kw, "load")
    return reader(root=root, split=split or DEFAULT_SPLITS[key], **kw)


def plan(name: str, root=None, split: str | None = None, **kw) -> ReadPlan:
    """The `ReadPlan` of dataset `name`: labels read, nothing decoded (see `load` for the arguments)."""
    key, planner = _dispatch(name, kw, "plan")
    return planner(root=root, split=split or DEFAULT_SPLITS[key], **kw)
