"""Seeded splits and label noise (fernb.data.splits) on plain label tensors with known class counts."""
import pytest
import torch

from fernb.data import splits
from fernb.data.dataset import UNLABELED, FERDataset
from fernb.data.labels import CLASSES_7, CLASSES_8

COUNTS = (120, 80, 60, 200, 40, 100, 50)  # deliberately unbalanced


def _labels(counts=COUNTS, seed=0):
    y = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def _dataset(labels):
    n = len(labels)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return FERDataset(images=images, labels=labels.clone(), classes=CLASSES_7, name="toy")


# ---- label fractions ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5])
def test_label_fraction_mask_size_and_stratification(fraction):
    y = _labels()
    mask = splits.label_fraction_mask(y, fraction, seed=3)
    assert mask.dtype == torch.bool and mask.shape == y.shape
    assert int(mask.sum()) == round(fraction * len(y))
    for c, k in enumerate(COUNTS):
        assert abs(int(mask[y == c].sum()) - fraction * k) <= 1, (c, int(mask[y == c].sum()), fraction * k)


def test_label_fraction_mask_is_seeded():
    y = _labels()
    a = splits.label_fraction_mask(y, 0.1, seed=0)
    assert torch.equal(a, splits.label_fraction_mask(y, 0.1, seed=0))
    assert not torch.equal(a, splits.label_fraction_mask(y, 0.1, seed=1))


def test_label_fraction_mask_edges():
    y = _labels()
    assert splits.label_fraction_mask(y, 1.0).all()
    tiny = splits.label_fraction_mask(y, 0.001)
    assert set(y[tiny].tolist()) == set(range(7))  # at least one per class, even the rare ones ...
    assert int(tiny.sum()) == 7                     # ... at exactly max(round(fraction * n), classes) rows
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            splits.label_fraction_mask(y, bad)


# ---- labels per class -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 10, 40])
def test_labels_per_class_mask_exact_counts(k):
    y = _labels()
    y_with_unlabeled = torch.cat([y, torch.full((30,), UNLABELED)])
    mask = splits.labels_per_class_mask(y_with_unlabeled, k, seed=2)
    assert int(mask.sum()) == 7 * k
    assert torch.equal(torch.bincount(y_with_unlabeled[mask], minlength=7), torch.full((7,), k))
    assert not mask[len(y):].any()  # unlabeled rows are never picked
    assert torch.equal(mask, splits.labels_per_class_mask(y_with_unlabeled, k, seed=2))


def test_labels_per_class_mask_rejects_a_class_too_small():
    y = _labels()
    with pytest.raises(ValueError, match="class 4 has 40 rows"):
        splits.labels_per_class_mask(y, 41)


# ---- k-fold -----------------------------------------------------------------------------------------------------
def test_kfold_partitions_rows_with_disjoint_test_folds():
    y = _labels()
    folds = splits.kfold_indices(y, k=5, seed=0)
    assert len(folds) == 5
    tests = torch.cat([test for _, test in folds])
    assert torch.equal(tests.sort().values, torch.arange(len(y)))  # each row in exactly one test fold
    for train, test in folds:
        assert len(set(train.tolist()) & set(test.tolist())) == 0
        assert len(train) + len(test) == len(y)
        # stratified: each class's share of the test fold is within one row of a fifth
        for c, k in enumerate(COUNTS):
            assert abs(int((y[test] == c).sum()) - k / 5) <= 1


def test_kfold_with_groups_keeps_each_identity_on_one_side():
    y = _labels()
    groups = torch.randint(60, (len(y),), generator=torch.Generator().manual_seed(1))
    folds = splits.kfold_indices(y, k=5, seed=0, groups=groups)
    tests = torch.cat([test for _, test in folds])
    assert torch.equal(tests.sort().values, torch.arange(len(y)))
    for train, test in folds:
        assert not set(groups[train].tolist()) & set(groups[test].tolist())
        assert len(train) + len(test) == len(y)


# ---- label noise ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["symmetric", "confusion"])
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.45])
def test_inject_label_noise_exact_rate_and_real_flips(rate, kind):
    y = _labels()
    noisy = splits.inject_label_noise(y, rate, num_classes=7, kind=kind, seed=4)
    flipped = noisy != y
    assert int(flipped.sum()) == round(rate * len(y))
    assert flipped.double().mean().item() == round(rate * len(y)) / len(y)
    assert ((noisy >= 0) & (noisy < 7)).all()
    assert torch.equal(noisy, splits.inject_label_noise(y, rate, num_classes=7, kind=kind, seed=4))
    assert not torch.equal(noisy, splits.inject_label_noise(y, rate, num_classes=7, kind=kind, seed=5))


def test_inject_label_noise_leaves_unlabeled_rows_alone():
    y = torch.cat([_labels(), torch.full((50,), UNLABELED)])
    noisy = splits.inject_label_noise(y, 0.3, num_classes=7, seed=0)
    assert (noisy[-50:] == UNLABELED).all()
    assert int((noisy != y).sum()) == round(0.3 * (len(y) - 50))
    assert torch.equal(splits.inject_label_noise(y, 0.0, num_classes=7), y)


def test_confusion_noise_sends_fear_to_surprise():
    fear, surprise = CLASSES_8.index("fear"), CLASSES_8.index("surprise")
    assert (fear, surprise) == (4, 3)
    y = _labels((300,) * 7)
    noisy = splits.inject_label_noise(y, 0.4, num_classes=7, kind="confusion", seed=0)
    fear_flips = noisy[(y == fear) & (noisy != y)]
    assert len(fear_flips) > 50
    assert (fear_flips == surprise).float().mean() > 0.55  # 70 % expected
    symmetric = splits.inject_label_noise(y, 0.4, num_classes=7, kind="symmetric", seed=0)
    sym_flips = symmetric[(y == fear) & (symmetric != y)]
    assert (sym_flips == surprise).float().mean() < 0.35  # ~1/6 expected


def test_with_label_noise_keeps_clean_labels():
    y = _labels()
    data = _dataset(y)
    noisy = splits.with_label_noise(data, 0.3, kind="confusion", seed=1)
    assert torch.equal(noisy.clean_labels, y)
    assert torch.equal(data.labels, y)  # the input is not modified
    assert int((noisy.labels != noisy.clean_labels).sum()) == round(0.3 * len(y))
    assert noisy.info["noise_rate"] == 0.3 and noisy.info["noise_kind"] == "confusion"


# ---- annotator-like noise: errors concentrate on ambiguous faces ---------------------------------------------------
def _ambiguous_dataset(n=4000, seed=0):
    """A crafted SynthFER-like dataset: intensity uniform in [0.3, 1], every 4th face a blend with a known partner."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 7
    intensity = 0.3 + 0.7 * torch.rand(n, generator=g)
    partner = (labels + 1 + torch.randint(6, (n,), generator=g)) % 7
    w2 = torch.where(torch.arange(n) % 4 == 0, 0.2 + 0.25 * torch.rand(n, generator=g), torch.zeros(n))
    soft = torch.zeros(n, 7)
    soft[torch.arange(n), labels] = 1 - w2
    soft[torch.arange(n), partner] += w2
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    data = FERDataset(images=images, labels=labels, classes=CLASSES_7, soft_labels=soft, name="crafted",
                      meta={"intensity": intensity})
    return data, w2 > 0, partner


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.45])
def test_annotator_noise_has_the_exact_rate_and_flips_ambiguous_faces_more(rate):
    data, blend, partner = _ambiguous_dataset()
    noisy = splits.with_label_noise(data, rate, kind="annotator", seed=3)
    flipped = noisy.labels != data.labels
    assert int(flipped.sum()) == round(rate * len(data))                  # the rate asked for, exactly
    ambiguity, _ = splits.ambiguity_and_partner(data)
    quartile = torch.bucketize(ambiguity, torch.quantile(ambiguity, torch.tensor([0.25, 0.5, 0.75])))
    by_quartile = [flipped[quartile == q].float().mean().item() for q in range(4)]
    assert all(b > a for a, b in zip(by_quartile, by_quartile[1:])), by_quartile   # rises with ambiguity
    assert by_quartile[3] > 3 * by_quartile[0]
    # a flipped blend takes its partner expression
    assert torch.equal(noisy.labels[blend & flipped], partner[blend & flipped])
    again = splits.with_label_noise(data, rate, kind="annotator", seed=3)
    assert torch.equal(noisy.labels, again.labels)                         # seeded


def test_annotator_noise_ambiguity_formula_and_errors():
    data, blend, partner = _ambiguous_dataset(n=8)
    ambiguity, found = splits.ambiguity_and_partner(data)
    expected = 1 - data.meta["intensity"] * data.soft_labels[torch.arange(8), data.labels]
    assert torch.allclose(ambiguity, expected)
    assert torch.equal(found, torch.where(blend, partner, torch.full_like(partner, -1)))
    # a full-intensity prototype has no ambiguity, and flips only at the floor's propensity
    w = splits.annotator_flip_weights(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(w, torch.tensor([splits.ANNOTATOR_FLOOR, splits.ANNOTATOR_FLOOR + 0.25,
                                           splits.ANNOTATOR_FLOOR + 1.0]))
    with pytest.raises(ValueError, match="ambiguity"):
        splits.with_label_noise(_dataset(_labels()), 0.2, kind="annotator")   # a real dataset knows no ambiguity
    with pytest.raises(ValueError, match="ambiguity"):
        splits.inject_label_noise(_labels(), 0.2, num_classes=7, kind="annotator")
    with pytest.raises(ValueError, match="kind"):
        splits.inject_label_noise(_labels(), 0.2, num_classes=7, kind="pairwise")


def test_annotator_noise_on_synthfer_follows_intensity():
    from fernb.data import synthfer as S

    ds = S.synthfer("train", 1500, size=48, cache=False)
    noisy = splits.with_label_noise(ds, 0.3, kind="annotator", seed=0)
    flipped = (noisy.labels != ds.labels)
    assert int(flipped.sum()) == 450
    weak = ds.meta["intensity"] < 0.7
    strong = ds.meta["intensity"] > 0.9
    assert flipped[weak].float().mean() > 2 * flipped[strong].float().mean()

@pytest.mark.parametrize("k", [7, 8])
@pytest.mark.parametrize("kind", ["symmetric", "confusion", "annotator"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.6])
def test_noise_transition_matrix_is_row_stochastic(k, kind, rate):
    T = splits.noise_transition_matrix(k, rate, kind)
    assert T.shape == (k, k)
    assert (T >= 0).all()
    assert torch.allclose(T.sum(1), torch.ones(k), atol=1e-6)
    assert torch.allclose(T.diag(), torch.full((k,), 1 - rate))


def test_noise_transition_matrix_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rate"):
        splits.noise_transition_matrix(7, 1.0)
    with pytest.raises(ValueError, match="kind"):
        splits.noise_transition_matrix(7, 0.2, "pairwise")


def test_hide_labels():
    y = _labels()
    data = _dataset(y)
    mask = splits.labels_per_class_mask(y, 10, seed=0)
    partial = splits.hide_labels(data, mask)
    assert torch.equal(partial.labels[mask], y[mask])
    assert (partial.labels[~mask] == UNLABELED).all()
    assert torch.equal(partial.clean_labels, y)
    assert torch.equal(data.labels, y)
    assert torch.equal(partial.class_counts(), torch.full((7,), 10))


def test_fingerprint_follows_pixels_labels_and_version_and_names_checkpoints(tmp_path):
    from fernb import paths

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 7, (300,), generator=g)
    ds = FERDataset(images, labels, CLASSES_7, clean_labels=labels.clone(), name="x", info={"version": 4})
    same = FERDataset(images.clone(), labels.clone(), CLASSES_7, clean_labels=labels.clone(), name="x",
                      info={"version": 4})
    assert ds.fingerprint() == same.fingerprint() and len(ds.fingerprint()) == 12
    swapped = labels.clone()
    swapped[[0, 1]] = swapped[[1, 0]] if swapped[0] != swapped[1] else (swapped[[0, 1]] + 1) % 7
    changed = [FERDataset(images, labels, CLASSES_7, clean_labels=labels.clone(), name="x", info={"version": 5}),
               FERDataset(images, swapped, CLASSES_7, clean_labels=labels.clone(), name="x", info={"version": 4}),
               FERDataset(images.flip(0), labels, CLASSES_7, clean_labels=labels.clone(), name="x",
                          info={"version": 4})]
    assert len({ds.fingerprint(), *(c.fingerprint() for c in changed)}) == 4   # re-render, noise, other pixels
    a = paths.keyed(tmp_path, "source-dal", "resnet", 0.1, ds.fingerprint())
    assert a.parent == tmp_path and a.name.startswith("source-dal-") and a.suffix == ".pt"
    assert a == paths.keyed(tmp_path, "source-dal", "resnet", 0.1, same.fingerprint())
    assert a != paths.keyed(tmp_path, "source-dal", "resnet", 0.1, changed[0].fingerprint())
