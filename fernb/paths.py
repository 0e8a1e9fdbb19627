"""Where things are written: figures/<notebook>/ (FERNB_FIGURES redirects it, as test runs do)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def figures_root() -> Path:
    return Path(os.environ.get("FERNB_FIGURES") or REPO / "figures")


def figure_dir(notebook: str) -> Path:
    path = figures_root() / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


def keyed(folder, stem: str, *parts, suffix: str = ".pt") -> Path:
    """`folder/<stem>-<12 hex>.pt`: a checkpoint named by a hash of everything that shapes it (settings, seed, a
    dataset's `FERDataset.fingerprint()`), so a changed setting or re-rendered data trains anew instead of loading a
    checkpoint made for something else."""
    import hashlib
    import json

    key = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(folder) / f"{stem}-{key}{suffix}"


def checkpoint_dir() -> Path:
    path = Path(os.environ.get("FERNB_CHECKPOINTS") or REPO / "data" / "checkpoints")
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_save(obj, path) -> Path:
    """torch.save to a temporary file beside `path`, then rename: a run killed mid-write never leaves a half-written
    checkpoint or cache behind."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
