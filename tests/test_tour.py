"""Notebook 00's helpers (fernb.methods.tour) on crafted inputs."""
import numpy as np
import pytest
import torch

from fernb.data import synthfer as S
from fernb.data.labels import CLASSES_7
from fernb.methods import tour


def test_recall_statistic_is_macro_or_lowest_recall_minus_the_target():
    labels = np.array([0, 0, 1, 1, 1, 1])
    correct = np.array([1, 0, 1, 1, 1, 0], dtype=float)     # class 0: 1/2, class 1: 3/4
    macro = tour.recall_statistic(0.5, [0, 1], "mean")
    lowest = tour.recall_statistic(0.5, [0, 1], "min")
    assert macro(correct[None], labels[None])[0] == pytest.approx((0.5 + 0.75) / 2 - 0.5)
    assert lowest(correct[None], labels[None])[0] == pytest.approx(0.0)
    # vectorised over resamples: two rows at once
    both = macro(np.stack([correct, np.ones(6)]), np.stack([labels, labels]))
    assert both == pytest.approx([0.125, 0.5])


def test_top_confusions_ranks_two_way_rates():
    cm = np.array([[8, 2, 0], [1, 9, 0], [0, 5, 5]])
    frame = tour.top_confusions(cm, ("a", "b", "c"))
    assert list(frame.iloc[0][["class a", "class b"]]) == ["b", "c"]       # 0.5 + 0
    assert frame.iloc[0]["two-way confusion"] == pytest.approx(0.5)
    assert frame.iloc[1]["two-way confusion"] == pytest.approx(0.2 + 0.1)  # a->b 0.2, b->a 0.1


def test_intensity_ladder_runs_from_weak_to_strong_within_each_class():
    ds = S.synthfer("train", 140, size=48, cache=False)
    order = tour.intensity_ladder(ds, steps=4)
    assert len(order) == 7 * 4
    for c in range(7):
        rows = order[4 * c: 4 * c + 4]
        assert all(int(ds.labels[r]) == c for r in rows)
        inten = ds.meta["intensity"][rows]
        assert (inten[1:] >= inten[:-1]).all()
        assert inten[0] == ds.meta["intensity"][ds.labels == c].min()


def test_noise_audit_reports_exact_rates_and_flips_by_intensity():
    ds = S.synthfer("train", 700, size=48, cache=False)
    audit = tour.noise_audit(ds, 0.3, seed=1)
    assert set(audit["realised"]) == {"symmetric", "confusion", "annotator"}
    assert all(v == pytest.approx(0.3, abs=1 / 1400) for v in audit["realised"].values())
    by = audit["by_intensity"]
    assert by["annotator"].iloc[0] > by["annotator"].iloc[-1]                 # weak faces flip more
    for kind, T in audit["transition"].items():
        assert T.sum() == 700 and np.trace(T) == 700 - round(0.3 * 700)


def test_judge_notes_are_formatted_from_the_reports():
    cm = np.eye(7, dtype=int) * 10
    cm[5, 5], cm[5, 6] = 2, 8                                                 # disgust read as anger
    recall = {c: 1.0 for c in CLASSES_7}
    recall["disgust"] = 0.2
    rep = {"recall": recall, "macro_recall": float(np.mean(list(recall.values()))), "confusion": cm}
    notes = tour.judge_notes({"prototypes": rep, "test": rep})
    assert "weakest class disgust (0.20), most often read as anger" in notes["text"]
    assert notes["claims"]["test"].startswith(f"v{tour.JUDGE_BEFORE['version']}")


def test_pairs_reading_places_each_real_fer_pair_among_all_pairs():
    classes = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"]
    cm = np.full((7, 7), 1.0)
    np.fill_diagonal(cm, 50.0)
    i = {c: k for k, c in enumerate(classes)}
    cm[i["sadness"], i["neutral"]] = 40                       # sadness-neutral: the most confused pair
    cm[i["fear"], i["surprise"]] = 10                         # fear-surprise: above the others' mean (2)
    cm[i["anger"], i["disgust"]] = cm[i["disgust"], i["anger"]] = 0.5  # anger-disgust: below it
    pairs = tour.top_confusions(cm, classes)
    text = tour.pairs_reading(pairs)
    assert "sadness-neutral" in text and "(rank 1 of 21)" in text and "anger-disgust" in text
    assert "only fear-surprise and sadness-neutral are confused more than that" in text
    real = {frozenset(p) for p in tour.REAL_FER_PAIRS}
    others = pairs[[frozenset((a, b)) not in real for a, b in zip(pairs["class a"], pairs["class b"])]]
    assert f"the other pairs average {others['two-way confusion'].mean():.3f}" in text
