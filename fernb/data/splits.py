"""Seeded splits and label-noise injection.

- `label_fraction_mask`: a stratified 1/5/10/25 % labeled subset (scikit-learn's StratifiedShuffleSplit).
- `labels_per_class_mask`: exactly k labels per class (10/25/100/250 in the SSFER paper's Table 3).
- `kfold_indices`: stratified k-fold (scikit-learn's StratifiedKFold), or grouped by subject when identities exist.
- `inject_label_noise`: symmetric or confusion-structured noise; the caller keeps the clean labels beside the noisy
  ones (`FERDataset.with_labels`), so relabeling can be audited.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, StratifiedShuffleSplit

from .dataset import UNLABELED, FERDataset
from .labels import CLASSES_8

# The class each expression is most often mistaken for in real FER confusion matrices (RAF-DB, FER2013, AffectNet):
# fear <-> surprise, anger <-> disgust, sadness <-> neutral, happiness -> neutral, contempt -> neutral.
CONFUSION_PARTNER = {"neutral": "sadness", "happiness": "neutral", "sadness": "neutral", "surprise": "fear",
                     "fear": "surprise", "disgust": "anger", "anger": "disgust", "contempt": "neutral"}


def _labels_np(labels) -> np.ndarray:
    return (labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)).astype(np.int64)


def label_fraction_mask(labels, fraction: float, seed: int = 0) -> torch.Tensor:
    """Bool mask selecting a stratified `fraction` of the rows (at least one per class)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    y = _labels_np(labels)
    mask = torch.zeros(len(y), dtype=torch.bool)
    if fraction == 1:
        return mask.fill_(True)
    n_keep = max(int(round(fraction * len(y))), len(np.unique(y)))
    sss = StratifiedShuffleSplit(n_splits=1, train_size=n_keep, random_state=seed)
    keep, _ = next(sss.split(np.zeros(len(y)), y))
    mask[torch.from_numpy(keep)] = True
    # StratifiedShuffleSplit rounds a rare class down to zero rows at tiny fractions; swap one of its rows in for a
    # row of the most-picked class so every class keeps a label and the size stays n_keep.
    rng = np.random.default_rng(seed)
    picked = mask.numpy()
    for c in np.unique(y):
        if not picked[y == c].any():
            present, counts = np.unique(y[picked], return_counts=True)
            donor = present[counts.argmax()]
            picked[rng.choice(np.flatnonzero(picked & (y == donor)))] = False
            picked[rng.choice(np.flatnonzero(y == c))] = True
    return mask


def labels_per_class_mask(labels, per_class: int, seed: int = 0) -> torch.Tensor:
    """Bool mask with exactly `per_class` rows of each class (error if a class has fewer)."""
    y = _labels_np(labels)
    rng = np.random.default_rng(seed)
    mask = torch.zeros(len(y), dtype=torch.bool)
    for c in np.unique(y[y >= 0]):
        rows = np.flatnonzero(y == c)
        if len(rows) < per_class:
            raise ValueError(f"class {c} has {len(rows)} rows, fewer than the {per_class} asked for")
        mask[torch.from_numpy(rng.choice(rows, per_class, replace=False))] = True
    return mask


def kfold_indices(labels, k: int = 5, seed: int = 0, groups=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(train_idx, test_idx) pairs of a stratified k-fold; subject-independent when `groups` (identities) given."""
    y = _labels_np(labels)
    if groups is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y)
    else:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y, _labels_np(groups))
    return [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in splits]


def hide_labels(data: FERDataset, labeled_mask: torch.Tensor) -> FERDataset:
    """A copy where rows outside `labeled_mask` are unlabeled (-1); the clean labels are kept."""
    labels = data.labels.clone()
    labels[~labeled_mask.to(labels.device)] = UNLABELED
    return data.with_labels(labels)


def noise_transition_matrix(num_classes: int, rate: float, kind: str = "symmetric") -> torch.Tensor:
    """T[i, j] = P(given = j | clean = i).

    symmetric: the flipped mass spread evenly over the other classes.
    confusion: 70 % of the flipped mass goes to the class's real-FER confusion partner (`CONFUSION_PARTNER`), the
    rest evenly over the others.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")
    k = num_classes
    T = torch.full((k, k), rate / (k - 1))
    if kind == "confusion":
        names = CLASSES_8[:k]
        T = torch.full((k, k), 0.3 * rate / (k - 2))
        for i, name in enumerate(names):
            T[i, names.index(CONFUSION_PARTNER[name])] = 0.7 * rate
    elif kind != "symmetric":
        raise ValueError(f"kind must be 'symmetric' or 'confusion', got {kind!r}")
    T.fill_diagonal_(1 - rate)
    return T


def inject_label_noise(labels: torch.Tensor, rate: float, *, num_classes: int, kind: str = "symmetric",
                       seed: int = 0) -> torch.Tensor:
    """Noisy copy of `labels`: each labeled row is flipped with probability `rate` per the transition matrix.

    The realised flip count is exactly round(rate * n_labeled) (chosen rows are always flipped to another class), so
    a notebook's "40 % noise" is 40 %, not 40 % give or take sampling error.
    """
    labels = labels.cpu().long()
    noisy = labels.clone()
    if rate == 0:
        return noisy
    g = torch.Generator().manual_seed(seed)
    rows = (labels >= 0).nonzero().flatten()
    n_flip = int(round(rate * len(rows)))
    flip = rows[torch.randperm(len(rows), generator=g)[:n_flip]]
    T = noise_transition_matrix(num_classes, rate, kind)
    off = T.clone().fill_diagonal_(0)
    off = off / off.sum(1, keepdim=True)
    noisy[flip] = torch.multinomial(off[labels[flip]], 1, generator=g).flatten()
    return noisy


def with_label_noise(data: FERDataset, rate: float, kind: str = "symmetric", seed: int = 0) -> FERDataset:
    """`data` with noisy given labels and the clean labels kept (`data.clean_labels`)."""
    noisy = inject_label_noise(data.labels, rate, num_classes=data.num_classes, kind=kind, seed=seed)
    out = data.with_labels(noisy)
    out.info = dict(out.info, noise_rate=rate, noise_kind=kind)
    return out
