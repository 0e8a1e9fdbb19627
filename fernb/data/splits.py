"""Seeded splits and label-noise injection.

- `label_fraction_mask`: a stratified 1/5/10/25 % labeled subset (scikit-learn's StratifiedShuffleSplit).
- `labels_per_class_mask`: exactly k labels per class (10/25/100/250 in the SSFER paper's Table 3).
- `kfold_indices`: stratified k-fold (scikit-learn's StratifiedKFold), or grouped by subject when identities exist.
- `inject_label_noise`: symmetric, confusion-structured (pair) or annotator-like noise; the caller keeps the clean
  labels beside the noisy ones (`FERDataset.with_labels`), so relabeling can be audited.
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


NOISE_KINDS = ("symmetric", "confusion", "annotator")


def noise_transition_matrix(num_classes: int, rate: float, kind: str = "symmetric") -> torch.Tensor:
    """T[i, j] = P(given = j | clean = i).

    symmetric: the flipped mass spread evenly over the other classes.
    confusion: 70 % of the flipped mass goes to the class's real-FER confusion partner (`CONFUSION_PARTNER`), the
    rest evenly over the others. (The "annotator" kind draws its wrong labels from this matrix too, for faces that
    are not blends; its rows are not uniform in which faces flip, so no matrix describes it fully.)
    """
    if not 0 <= rate < 1:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")
    k = num_classes
    T = torch.full((k, k), rate / (k - 1))
    if kind in ("confusion", "annotator"):
        names = CLASSES_8[:k]
        T = torch.full((k, k), 0.3 * rate / (k - 2))
        for i, name in enumerate(names):
            T[i, names.index(CONFUSION_PARTNER[name])] = 0.7 * rate
    elif kind != "symmetric":
        raise ValueError(f"kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
    T.fill_diagonal_(1 - rate)
    return T


ANNOTATOR_FLOOR = 0.02  # flip propensity of a face with no ambiguity at all (annotators slip on clear faces too)


def annotator_flip_weights(ambiguity: torch.Tensor) -> torch.Tensor:
    """How much more likely an annotator is to mislabel each face: ANNOTATOR_FLOOR + ambiguity ** 2 (ambiguity in
    [0, 1]; the square concentrates the errors on the most ambiguous faces)."""
    return ANNOTATOR_FLOOR + ambiguity.clamp(0, 1) ** 2


def ambiguity_and_partner(data: FERDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ambiguity in [0, 1] and the blend partner (-1 when none) of a SynthFER dataset.

    ambiguity = 1 - intensity x (weight of the labeled class in the soft label): a full-intensity prototype is 0, a
    weak face or one mixed with a second expression is ambiguous. The partner is the soft label's other class."""
    if "intensity" not in data.meta or data.soft_labels is None:
        raise ValueError(f"{data.name}: annotator-like noise needs each face's ambiguity (SynthFER's expression "
                         f"intensity and blend soft labels); use kind='symmetric' or 'confusion' on this dataset")
    labels = (data.clean_labels if data.clean_labels is not None else data.labels).cpu().long()
    soft = data.soft_labels.cpu().float()
    rows = torch.arange(len(labels))
    own = torch.where(labels >= 0, soft[rows, labels.clamp(min=0)], torch.ones(len(labels)))
    ambiguity = (1 - data.meta["intensity"].cpu().float() * own).clamp(0, 1)
    other = soft.clone()
    other[rows, labels.clamp(min=0)] = 0
    partner = torch.where(other.amax(1) > 0, other.argmax(1), torch.full_like(labels, -1))
    return ambiguity, partner


def inject_label_noise(labels: torch.Tensor, rate: float, *, num_classes: int, kind: str = "symmetric",
                       seed: int = 0, ambiguity: torch.Tensor | None = None,
                       partner: torch.Tensor | None = None) -> torch.Tensor:
    """Noisy copy of `labels`: each labeled row is flipped with probability `rate` per the transition matrix.

    The realised flip count is exactly round(rate * n_labeled) (chosen rows are always flipped to another class), so
    a notebook's "40 % noise" is 40 %, not 40 % give or take sampling error.

    kind="annotator" (needs `ambiguity`, and optionally `partner`, from `ambiguity_and_partner`): the flipped rows
    are drawn without replacement with weights `annotator_flip_weights(ambiguity)`, so ambiguous faces are
    mislabeled far more often than clear ones, as human annotators' errors are; a flipped blend takes its partner
    expression, any other face a label from the confusion matrix (70 % its real-FER confusion partner).
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
    labels = labels.cpu().long()
    noisy = labels.clone()
    if rate == 0:
        return noisy
    g = torch.Generator().manual_seed(seed)
    rows = (labels >= 0).nonzero().flatten()
    n_flip = int(round(rate * len(rows)))
    if kind == "annotator":
        if ambiguity is None:
            raise ValueError("kind='annotator' needs the per-row ambiguity (splits.ambiguity_and_partner)")
        weights = annotator_flip_weights(ambiguity.cpu().float()[rows])
        flip = rows[torch.multinomial(weights, n_flip, replacement=False, generator=g)] if n_flip else rows[:0]
    else:
        flip = rows[torch.randperm(len(rows), generator=g)[:n_flip]]
    T = noise_transition_matrix(num_classes, rate, kind)
    off = T.clone().fill_diagonal_(0)
    off = off / off.sum(1, keepdim=True)
    noisy[flip] = torch.multinomial(off[labels[flip]], 1, generator=g).flatten()
    if kind == "annotator" and partner is not None:
        to_partner = partner.cpu().long()[flip]
        noisy[flip] = torch.where(to_partner >= 0, to_partner, noisy[flip])
    return noisy


def with_label_noise(data: FERDataset, rate: float, kind: str = "symmetric", seed: int = 0) -> FERDataset:
    """`data` with noisy given labels and the clean labels kept (`data.clean_labels`); kind "symmetric",
    "confusion" (pair noise toward real-FER confusion partners) or "annotator" (SynthFER only: errors on ambiguous
    faces, toward the blend partner or a confusable class; see `inject_label_noise`)."""
    ambiguity = partner = None
    if kind == "annotator":
        ambiguity, partner = ambiguity_and_partner(data)
    noisy = inject_label_noise(data.labels, rate, num_classes=data.num_classes, kind=kind, seed=seed,
                               ambiguity=ambiguity, partner=partner)
    out = data.with_labels(noisy)
    out.info = dict(out.info, noise_rate=rate, noise_kind=kind)
    return out
