"""`FERDataset`: the one in-memory dataset type every fernb source returns (SynthFER and the real readers).

Images are decoded once into a uint8 tensor (N, C, H, W); everything per-sample lives beside them as tensors, so a
batch is a tensor index on whatever device the dataset sits on. Fields a source cannot know are None
(`clean_labels` for a real dataset, `boxes` for a pre-cropped one).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..paths import atomic_save
from .labels import classes as class_names

UNLABELED = -1


@dataclass
class FERDataset:
    images: torch.Tensor                      # uint8 (N, C, H, W)
    labels: torch.Tensor                      # int64 (N,), the *given* label; UNLABELED (-1) where none
    classes: tuple[str, ...] = class_names(7)
    clean_labels: torch.Tensor | None = None  # int64 (N,), the true label when the source knows it (SynthFER)
    soft_labels: torch.Tensor | None = None   # float32 (N, K): label distribution (blends, FERPlus votes)
    boxes: torch.Tensor | None = None         # float32 (N, 4): face box x0, y0, x1, y1 in pixels
    identities: torch.Tensor | None = None    # int64 (N,): subject / identity id
    is_face: torch.Tensor | None = None       # bool (N,): False for non-face distractors (web pool)
    meta: dict = field(default_factory=dict)  # extra per-sample tensors (first dim N), e.g. AU intensities, pose
    name: str = "dataset"
    info: dict = field(default_factory=dict)  # dataset-level facts: source, root, split, skipped files ...

    def __post_init__(self):
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be a uint8 (N, C, H, W) tensor, got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        for key in ("labels", "clean_labels", "soft_labels", "boxes", "identities", "is_face"):
            value = getattr(self, key)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"{self.name}: {key} has {value.shape[0]} rows for {n} images")
        for key, value in self.meta.items():
            if value.shape[0] != n:
                raise ValueError(f"{self.name}: meta[{key!r}] has {value.shape[0]} rows for {n} images")

    # ---- basics -------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def _per_sample(self) -> dict:
        return {k: getattr(self, k) for k in
                ("images", "labels", "clean_labels", "soft_labels", "boxes", "identities", "is_face")}

    def subset(self, index) -> "FERDataset":
        """Rows `index` (int tensor, bool mask or list) as a new dataset sharing nothing mutable with this one."""
        if not torch.is_tensor(index):
            index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index = index.to(self.images.device)
        parts = {k: (v[index] if v is not None else None) for k, v in self._per_sample().items()}
        return replace(self, **parts, meta={k: v[index.to(v.device)] for k, v in self.meta.items()},
                       info=dict(self.info))

    def to(self, device) -> "FERDataset":
        parts = {k: (v.to(device) if v is not None else None) for k, v in self._per_sample().items()}
        return replace(self, **parts, meta={k: v.to(device) for k, v in self.meta.items()})

    def with_labels(self, labels: torch.Tensor) -> "FERDataset":
        """A copy whose given labels are `labels` (the clean labels, if known, are kept)."""
        clean = self.clean_labels if self.clean_labels is not None else self.labels
        return replace(self, labels=labels.to(self.labels.device).long(), clean_labels=clean)

    def class_counts(self) -> torch.Tensor:
        valid = self.labels[self.labels >= 0]
        return torch.bincount(valid.cpu(), minlength=self.num_classes)

    def fingerprint(self) -> str:
        """A short hash of what a model trained on this dataset depends on: name, size, image shape, the given and
        clean labels, a strided checksum of the pixels and the dataset-level version (SynthFER's `VERSION`). Checkpoint
        names carry it, so a re-render, new label noise or another subset trains a new model instead of loading one
        trained on other data."""
        import hashlib
        import json

        step = max(1, len(self) // 256)
        sums = self.images[::step].to(torch.int64).flatten(1).sum(1)       # per image, weighted by position
        probe = int((sums * torch.arange(1, len(sums) + 1, device=sums.device)).sum())
        labels = [int((self.labels.cpu().to(torch.int64) * torch.arange(1, len(self) + 1)).sum())]
        if self.clean_labels is not None:
            labels.append(int((self.clean_labels.cpu().to(torch.int64) * torch.arange(1, len(self) + 1)).sum()))
        spec = [self.name, tuple(self.images.shape), probe, labels, self.info.get("version")]
        return hashlib.sha1(json.dumps(spec, default=str).encode()).hexdigest()[:12]

    def float_images(self, index=None, device=None) -> torch.Tensor:
        """Images as float32 in [0, 1] (a batch when `index` is given)."""
        x = self.images if index is None else self.images[index]
        if device is not None:
            x = x.to(device, non_blocking=True)
        return x.float().div_(255.0)

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        labeled = int((self.labels >= 0).sum())
        return (f"FERDataset({self.name!r}, n={n}, {c}x{h}x{w}, classes={self.num_classes}, labeled={labeled}, "
                f"clean_labels={'yes' if self.clean_labels is not None else 'no'})")

    # ---- cache --------------------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write atomically (temp file + rename) so an interrupted run never leaves a half-written cache."""
        state = {k: v for k, v in self._per_sample().items() if v is not None}
        state.update(classes=list(self.classes), meta=self.meta, name=self.name, info=_plain(self.info))
        atomic_save(state, path)

    @classmethod
    def load(cls, path) -> "FERDataset":
        state = torch.load(path, map_location="cpu", weights_only=True)
        state["classes"] = tuple(state["classes"])
        return cls(**state)


def _plain(obj):
    """Keep only what `torch.load(weights_only=True)` accepts back (tensors, numbers, strings, lists, dicts)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if torch.is_tensor(obj) or obj is None or isinstance(obj, (int, float, str, bool)):
        return obj
    return str(obj)
