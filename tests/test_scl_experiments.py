"""Notebook 03's experiment helpers (fernb.methods.scl_experiments) on crafted inputs: the regime numbers (S_cos gap,
queue share), the padding-erosion reading, and the scorecard rules that withhold a verdict where CUEM stayed idle
and report an exact no-change as exact."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from fernb import scorecard as sc
from fernb.methods import scl_experiments as X


def test_similarity_gap_is_zero_for_a_collapsed_space_and_positive_for_separated_classes():
    labels = torch.tensor([0, 1, 2, 0])
    collapsed = torch.full((4, 3), 0.9)
    assert X.similarity_gap(collapsed, labels)["gap"] == pytest.approx(0.0)
    separated = torch.full((4, 3), 0.2)
    separated[torch.arange(4), labels] = 0.8
    g = X.similarity_gap(separated, labels)
    assert g["own"] == pytest.approx(0.8) and g["other"] == pytest.approx(0.2) and g["gap"] == pytest.approx(0.6)
    with_nan = separated.clone()
    with_nan[:, 2] = float("nan")                                  # a class with no queue entry is skipped
    assert X.similarity_gap(with_nan[:3], labels[:3])["other"] == pytest.approx(0.2)


def test_queue_share_counts_lsup_steps_with_a_full_queue():
    assert X.queue_share({"sup_on_steps": 70, "sup_on_full_queue_steps": 53}) == pytest.approx(53 / 70)
    assert np.isnan(X.queue_share({"sup_on_steps": 0}))           # a CE run: L_sup never on


def test_erosion_text_names_the_eroded_edges_from_the_map():
    m = torch.zeros(4, 4)
    m[0, :] = 0.6                                                  # top row
    m[:, 0] = 0.5                                                  # left column
    m[1:3, 1:3] = 0.05
    s = X.erosion_summary(m)
    assert s["top row"] > s["bottom row"] and s["left column"] > s["right column"]
    text = X.erosion_text(s, 4)
    assert "top row and left column" in text and "bottom row" not in text.split("(")[0]
    ring = torch.full((4, 4), 0.5)
    ring[1:3, 1:3] = 0.0
    assert "one-sided: with stride-2" in text
    ring_text = X.erosion_text(X.erosion_summary(ring), 4)
    assert "top row and bottom row and left column and right column" in ring_text and "even ring" in ring_text
    trained = {"top row": 1.31, "bottom row": 0.67, "left column": 1.26, "right column": 0.74, "interior": 0.85}
    assert "**top row and left column**" in X.erosion_text(trained, 3)          # notebook 03's cpu trunk


def _run(acc, relabeled=0, precision=float("nan"), before=0.2, after=0.2):
    return {"accuracy": acc, "relabeled": relabeled, "relabel_precision": precision, "noise_before": before,
            "noise_after": after, "confusion": np.eye(7, dtype=int) * 10 + 1}


def _context(relabeled: int, after: float):
    seeds = [0, 1, 2]
    names = (X.PLAIN, X.BASE, X.CUEM, X.SCL, X.PROPOSED, X.UPPER)
    R = {}
    for s in seeds:
        for i, name in enumerate(names):
            cuem_like = name in (X.CUEM, X.PROPOSED)
            R[("table", name, s)] = _run(0.6 + 0.01 * i + 0.001 * s, relabeled if cuem_like else 0,
                                         0.4 if relabeled else float("nan"), 0.2, after if cuem_like else 0.2)
    d = SimpleNamespace(seeds=seeds, test0=np.zeros(2000), dataset="synthfer", noise=0.2, noise_kind="annotator",
                        train0=np.zeros(3000), truth="clean labels", S0=0, K=7,
                        classes=("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"))
    acc = {n: [R[("table", n, s)]["accuracy"] for s in seeds] for n in names}
    regime = pd.DataFrame({"L_sup steps with a full queue": [0.8] * 3, "S_cos gap": [0.15] * 3}, index=seeds)
    P = SimpleNamespace(model="resnet_mini_arm", warm_epochs=10, epochs=5)
    sweep = {v: [0.6, 0.61, 0.62] for v in (20, 30)}
    bt = pd.DataFrame({"batch affinity, batch 256": [0.6, 0.61, 0.62], "batch affinity, batch 1": [0.5, 0.52, 0.5]})
    return dict(P=P, d=d, R=R, acc=acc, params={"alpha": 30, "beta": 1e-4, "theta": 0.1},
                knn={X.SCL: [0.6, 0.61, 0.6], X.BASE: [0.5, 0.52, 0.5]}, regime=regime, alpha_res=sweep,
                beta_res={1e-4: [0.6, 0.61, 0.62], 1e-1: [0.6, 0.6, 0.61]}, u_wrong=np.full(50, 0.2),
                u_right=np.full(200, 0.01), same_running=True, batch_table=bt)


def test_claims_withhold_cuem_verdicts_when_cuem_changed_nothing_and_report_the_exact_no_change():
    card = sc.Scorecard("03_test", "smoke", "synthfer")
    X.claims(card, _context(relabeled=0, after=0.2))
    by = {c["claim"]: c for c in card.claims}
    assert "CUEM changed no label" in by["CUEM improves the baseline (Table II)"]["rule"]
    assert by["CUEM improves the baseline (Table II)"]["verdict"] == "inconclusive"
    noise = by["CUEM lowers the label noise of the training set"]
    assert noise["kind"] == "exact" and "exact no-change" in noise["measured"] and noise["verdict"] == "does not hold"
    assert by["CUEM relabels mostly correctly (share of changes right against the clean labels > 0.5)"]["kind"] \
        == "not measured"
    assert by["SCL improves the baseline (Table II)"]["kind"] == "paired seeds"      # SCL acted: measured


def test_claims_measure_cuem_once_it_relabels():
    card = sc.Scorecard("03_test", "smoke", "synthfer")
    X.claims(card, _context(relabeled=40, after=0.25))
    by = {c["claim"]: c for c in card.claims}
    assert by["CUEM improves the baseline (Table II)"]["kind"] == "paired seeds"
    prec = by["CUEM relabels mostly correctly (share of changes right against the clean labels > 0.5)"]
    assert prec["verdict"] == "does not hold"                      # 0.4 in every seed
    assert by["CUEM lowers the label noise of the training set"]["verdict"] == "does not hold"   # 0.2 -> 0.25
    assert by["ARM with the running affinity: one face at a time gives the batch-256 accuracy (our inference rule)"][
        "verdict"] == "holds"


def test_scl_rows_lose_their_verdict_when_the_queue_was_rarely_full():
    c = _context(relabeled=40, after=0.25)
    c["regime"] = pd.DataFrame({"L_sup steps with a full queue": [0.8, 0.12, 0.9], "S_cos gap": [0.15, 0.2, 0.1]},
                               index=[0, 1, 2])
    assert X.scl_acting(c["regime"]) == (False, "L_sup read a full queue in under 50% of its steps in seeds [1]")
    card = sc.Scorecard("03_test", "smoke", "synthfer")
    X.claims(card, c)
    row = {r["claim"]: r for r in card.claims}["SCL improves the baseline (Table II)"]
    assert row["verdict"] == "inconclusive" and "SCL did not act" in row["rule"]
