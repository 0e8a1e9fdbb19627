"""One entry point for every notebook: `load_splits` gives train / val / test of any dataset, SynthFER or real.

The data_root convention (data/README.md says the same): ``data_root`` is the dataset's *own* folder, the one that
holds its label files (``/data/RAF-DB``, with ``EmoLabel/`` inside); None means ``$FERNB_DATA/<default folder>``
(`fernb.data.readers.DEFAULT_FOLDERS`), so the environment variable ``FERNB_DATA`` is the *parent* folder holding
one folder per dataset. SynthFER is rendered, not read: its ``data_root`` must stay None.

How each dataset is split (`SPLIT_RULES`; the rule is stored in every returned dataset's ``info["split_rule"]``):

* SynthFER: its own train / val / test, subject-independent by construction (disjoint identity ranges).
* FER2013, FERPlus: the official Usage column: Training / PublicTest / PrivateTest.
* RAF-DB: the official train / test; val is a stratified, seeded ``val_fraction`` of train.
* AffectNet: train from training.csv, val a stratified, seeded ``val_fraction`` of it; test is validation.csv
  (the official test set is not public; the papers report on the validation set).
* SFEW 2.0: test is the official Val (the test labels are not public); val is a seeded ``val_fraction`` of Train
  made of whole movies (StratifiedGroupKFold over movie titles), so frames of one film never straddle val and train.
* KDEF, CK+ (no official split): subject-independent and seeded. Test is one fold of a stratified group k-fold over
  subjects (`fernb.data.splits.kfold_indices` with ``groups``), k = round(1 / test_fraction) (5 folds: 20 %);
  val is one fold of the same over the remaining subjects, k = round((1 - test_fraction) / val_fraction) (8 folds:
  10 % of the whole); train is the rest. No subject appears in two splits.

``n_train`` / ``n_val`` / ``n_test`` then cap each split with a stratified, seeded subsample (None keeps it whole,
as the paper profile does and the papers' numbers assume). Splitting and subsampling happen on the label files,
*before* any image is decoded, so a cpu-profile run on AffectNet decodes 9,000 images, not 290,000.
"""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np
from sklearn.model_selection import StratifiedShuffleSplit

from . import readers
from .dataset import FERDataset
from .splits import kfold_indices

__all__ = ["load_splits", "Splits", "SPLIT_RULES", "has_clean_labels", "DATASETS"]

DATASETS = ("synthfer",) + readers.DATASETS

SPLIT_RULES = {
    "synthfer": "SynthFER's own train / val / test: disjoint identity ranges (subject-independent), rendered "
                "with the seed",
    "fer2013": "official Usage column: train = Training, val = PublicTest, test = PrivateTest",
    "ferplus": "official Usage column: train = Training, val = PublicTest, test = PrivateTest",
    "rafdb": "official train / test; val = a stratified {val:.0%} of the official train (seed {seed})",
    "affectnet": "train = training.csv minus val; val = a stratified {val:.0%} of training.csv (seed {seed}); "
                 "test = validation.csv (the official test set is not public)",
    "sfew": "test = the official Val (the test labels are not public); val = {val:.0%} of Train in whole movies "
            "(stratified group k-fold over movie titles, seed {seed}); train = the rest of Train",
    "kdef": "no official split: subject-independent (seed {seed}): test = 1 of {k_test} stratified group folds over "
            "subjects ({test:.0%}), val = 1 of {k_val} folds over the other subjects ({val:.0%} of all), "
            "train = the rest; no subject in two splits",
}
SPLIT_RULES["affectnet8"] = SPLIT_RULES["affectnet"]
SPLIT_RULES["ckplus"] = SPLIT_RULES["kdef"]


class Splits(NamedTuple):
    train: FERDataset
    val: FERDataset
    test: FERDataset


def has_clean_labels(data: FERDataset) -> bool:
    """True when ``data.clean_labels`` are the true labels (SynthFER knows them). False for a real dataset, even
    after `with_labels` / `splits.with_label_noise` copied the annotators' labels into ``clean_labels``: there an
    audit against them measures agreement with the annotators, not correctness."""
    return data.clean_labels is not None and data.info.get("source") == "SynthFER"


def _stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held-out) indexes, the held-out part a stratified `fraction` (exact size), both sorted."""
    n = len(labels)
    n_out = int(round(fraction * n))
    if not 0 < n_out < n:
        raise ValueError(f"a {fraction:.0%} holdout of {n} samples is empty or everything")
    try:
        rest, out = next(StratifiedShuffleSplit(n_splits=1, test_size=n_out, random_state=seed)
                         .split(np.zeros(n), labels))
    except ValueError:                 # a class with one sample, or fewer samples than classes: unstratified
        perm = np.random.default_rng(seed).permutation(n)
        rest, out = perm[n_out:], perm[:n_out]
    return np.sort(rest), np.sort(out)


def _group_holdout(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held-out) indexes: fold 0 of a seeded stratified group k-fold (no group on both sides)."""
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise ValueError(f"a subject-independent split into {k} folds needs at least {k} subjects (or movies); "
                         f"this dataset has {n_groups}")
    rest, out = kfold_indices(labels, k=k, seed=seed, groups=groups)[0]
    return np.sort(rest.numpy()), np.sort(out.numpy())


def _cap(plan: readers.ReadPlan, n: int | None, seed: int) -> readers.ReadPlan:
    """At most `n` samples of `plan`: a stratified, seeded subsample in file order (all of it when n is None)."""
    plan.info["n_available"] = len(plan)
    if n is None or n >= len(plan):
        return plan
    if n < 1:
        raise ValueError(f"a split needs at least one sample, got n={n}")
    rest, keep = _stratified_holdout(plan.labels, n / len(plan), seed)
    return plan.take(keep)


def load_splits(dataset: str, data_root=None, *, size: int = 64, channels: int = 3, seed: int = 0,
                n_train: int | None = None, n_val: int | None = None, n_test: int | None = None,
                val_fraction: float = 0.1, test_fraction: float = 0.2, skip_bad: bool = False, cache=True,
                progress=None, workers: int | None = None, **reader_kw) -> Splits:
    """(train, val, test) of `dataset` ("synthfer" or one of `fernb.data.readers.DATASETS`) as `FERDataset`s.

    data_root: the dataset's own folder (None: ``$FERNB_DATA/<default folder>``; must be None for SynthFER).
    size, channels: image side (48..224) and 1 (grey) or 3 (RGB). seed: drives every random choice (val carve,
    subject-independent split, subsamples, SynthFER rendering). n_train / n_val / n_test: cap each split
    (stratified, seeded); None keeps it whole (SynthFER: its default split sizes). val_fraction / test_fraction:
    see the module docstring for where each applies. skip_bad, cache, progress, workers: passed to the decode
    (`fernb.data.decode`). Other keywords go to the reader (``angles=("S",)`` for KDEF, ``mode="plurality"`` for
    FERPlus, ``num_classes=7`` for CK+, ...) or, for SynthFER, to `synthfer.synthfer` (``num_classes``,
    ``domain``).

    Every returned dataset's ``info`` holds ``split`` ("train" / "val" / "test"), ``split_rule`` (the rule above,
    in words, with its numbers) and, for real data, ``n_available`` (its size before the cap).
    """
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction and test_fraction must lie in (0, 1) with a sum below 1, got "
                         f"{val_fraction}, {test_fraction}")
    if "split" in reader_kw:
        raise TypeError("load_splits makes the splits itself; do not pass split=")
    name = str(dataset).strip().lower()
    if name == "synthfer":
        return _synthfer_splits(data_root, size, channels, seed, n_train, n_val, n_test, cache, reader_kw)
    key = readers._canonical_name(name)
    root = readers.resolve_root(key, data_root)
    k_test = max(2, int(round(1 / test_fraction)))
    k_val = max(2, int(round((1 - test_fraction) / val_fraction)))
    rule = SPLIT_RULES[key].format(val=val_fraction, test=test_fraction, seed=seed, k_test=k_test, k_val=k_val)

    def plan(split):
        return readers.plan(key, root, split, **reader_kw)

    if key in ("fer2013", "ferplus"):
        train, val, test = plan("train"), plan("val"), plan("test")
    elif key in ("rafdb", "affectnet", "affectnet8"):
        full = plan("train")
        test = plan("test")                       # AffectNet: validation.csv
        rest, held = _stratified_holdout(full.labels, val_fraction, seed)
        train, val = full.take(rest), full.take(held)
    elif key == "sfew":
        full = plan("train")
        test = plan("val")
        rest, held = _group_holdout(full.labels, full.groups, max(2, int(round(1 / val_fraction))), seed)
        train, val = full.take(rest), full.take(held)
    else:                                          # kdef, ckplus: no official split
        full = plan("all")
        rest, test_idx = _group_holdout(full.labels, full.groups, k_test, seed)
        rest_plan = full.take(rest)
        train_idx, val_idx = _group_holdout(rest_plan.labels, rest_plan.groups, k_val, seed)
        train, val, test = rest_plan.take(train_idx), rest_plan.take(val_idx), full.take(test_idx)
    out = []
    for split, p, n in (("train", train, n_train), ("val", val, n_val), ("test", test, n_test)):
        p = _cap(p, n, seed)
        p = replace(p, name=f"{key}-{split}",
                    info={**p.info, "split_rule": rule, "official_split": p.split, "seed": seed})
        ds = p.decode(size, channels, skip_bad=skip_bad, cache=cache, progress=progress, workers=workers)
        ds.info["split"] = split
        out.append(ds)
    return Splits(*out)


def _synthfer_splits(data_root, size, channels, seed, n_train, n_val, n_test, cache, kw) -> Splits:
    from . import synthfer as S

    if data_root is not None:
        raise ValueError(f"SynthFER is rendered, not read from disk: data_root must be None, got {data_root!r} "
                         f"(set dataset to a real dataset's name to read {data_root})")
    if cache is not True and cache is not False:      # a folder: SynthFER's cache goes there too
        kw = dict(kw, cache_dir=cache)
    else:
        kw = dict(kw, cache=cache)
    out = []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        ds = S.synthfer(split, n, size=size, channels=channels, seed=seed, **kw)
        ds.info = dict(ds.info, split=split, split_rule=SPLIT_RULES["synthfer"])
        out.append(ds)
    return Splits(*out)
