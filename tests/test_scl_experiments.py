"""Notebook 03's experiment helpers (fernb.methods.scl_experiments) on crafted inputs: the regime numbers (S_cos gap,
queue share, CUEM's relabels with precision and recall in both CUEM runs), the padding-erosion reading (one-sided,
ring, none, uneven), the scorecard rules that withhold a verdict where CUEM stayed idle or SCL did not act and
report an exact no-change as exact, and the texts formatted from the numbers (seeds line, Fig. 4, Grad-CAM
localisation, the θ at which precision first reaches 0.5, the profile's model)."""
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


def _summary(top, bottom, left, right, interior):
    return {"top row": top, "bottom row": bottom, "left column": left, "right column": right, "interior": interior}


def test_erosion_text_one_sided_top_and_left_from_a_crafted_map():
    m = torch.zeros(4, 4)
    m[0, :] = 0.6                                                  # top row
    m[:, 0] = 0.5                                                  # left column
    m[1:3, 1:3] = 0.05
    s = X.erosion_summary(m)
    # edges are read without their corners: the eroded left column does not lift the bottom row
    assert s == pytest.approx(_summary(0.6, 0.0, 0.5, 0.0, 0.05))
    e = X.eroded_edges(s)
    assert e["strongest"] == ["top row", "left column"] and e["weaker"] == [] and e["shape"] == "one-sided"
    text = X.erosion_text(s, 4)
    assert "**top row and left column**" in text and "bottom row" not in text.split("(")[0]
    assert "one-sided: the bottom row and right column are no further off than the interior; with stride-2" in text
    # notebook 03's cpu trunk (SynthFER v3): the bottom and right lie below the interior, so one-sided too
    trained = _summary(1.31, 0.67, 1.26, 0.74, 0.85)
    assert "**top row and left column**" in X.erosion_text(trained, 3) and "one-sided" in X.erosion_text(trained, 3)


def test_erosion_text_all_four_edges_is_an_even_ring_never_one_sided():
    ring = torch.full((4, 4), 0.5)
    ring[1:3, 1:3] = 0.0
    text = X.erosion_text(X.erosion_summary(ring), 4)
    assert X.eroded_edges(X.erosion_summary(ring))["shape"] == "ring"
    assert "**top row and bottom row and left column and right column**" in text and "even ring" in text
    assert "one-sided" not in text
    near = _summary(0.52, 0.48, 0.5, 0.47, 0.1)                    # within a third of each other: still a ring
    assert X.eroded_edges(near)["shape"] == "ring"


def test_erosion_text_with_no_eroded_edge_names_none():
    flat = torch.full((4, 4), 0.3)
    text = X.erosion_text(X.erosion_summary(flat), 4)
    assert X.eroded_edges(X.erosion_summary(flat)) == {"strongest": [], "weaker": [], "shape": "none",
                                                       "clear": ["top row", "bottom row", "left column",
                                                                 "right column"]}
    assert "no edge is clearly further" in text and "**" not in text and "one-sided" not in text
    # edges only slightly above the interior (by less than a third of it) do not count either
    assert X.eroded_edges(_summary(0.35, 0.33, 0.34, 0.32, 0.3))["shape"] == "none"


def test_erosion_text_all_edges_above_the_interior_but_top_left_strongest_is_uneven_not_one_sided():
    v4 = _summary(0.90, 0.48, 0.78, 0.51, 0.30)                    # the SynthFER v4 cpu trunk that was misread
    e = X.eroded_edges(v4)
    assert e["strongest"] == ["top row", "left column"] and e["weaker"] == ["bottom row", "right column"]
    assert e["shape"] == "uneven"
    text = X.erosion_text(v4, 3)
    head = text.split("(")[0]
    assert "**top row and left column**" in head and "bottom row" not in head and "right column" not in head
    assert "one-sided" in text and "not one-sided" in text and "The erosion is one-sided" not in text
    assert "the bottom row and right column are also further off than the interior, but clearly less" in text
    assert "top row 90%, bottom row 48%, left column 78%, right column 51%, interior 30%" in text
    # top and bottom alike, left column only: the pair is named alike, the lone right column as clear
    mixed = X.erosion_text(_summary(0.8, 0.75, 0.8, 0.1, 0.1), 4)
    assert "**top row and bottom row and left column**" in mixed and "the top row and bottom row are eroded alike" \
        in mixed and "the right column is no further off than the interior" in mixed and "stride-2" in mixed


def _run(acc, relabeled=0, precision=float("nan"), before=0.2, after=0.2):
    return {"accuracy": acc, "relabeled": relabeled, "relabel_precision": precision, "noise_before": before,
            "noise_after": after, "confusion": np.eye(7, dtype=int) * 10 + 1,
            "relabel_correct": int(round(relabeled * precision)) if relabeled else 0,
            "relabel_recall": 0.1 if relabeled else 0.0, "relabel_broken": relabeled // 2}


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


def test_scl_plus_cuem_improves_the_baseline_is_withheld_like_the_other_cuem_and_scl_rows():
    claim = "SCL + CUEM improves the baseline (Table II)"
    # proposed - baseline is +0.03 in every seed: measured, it would hold
    card = sc.Scorecard("03_test", "smoke", "synthfer")
    X.claims(card, _context(relabeled=40, after=0.18))
    row = {r["claim"]: r for r in card.claims}[claim]
    assert row["verdict"] == "holds" and row["kind"] == "paired seeds"
    # CUEM changed nothing: withheld, numbers kept
    card = sc.Scorecard("03_test", "smoke", "synthfer")
    X.claims(card, _context(relabeled=0, after=0.2))
    row = {r["claim"]: r for r in card.claims}[claim]
    assert row["verdict"] == "inconclusive" and "CUEM changed no label in seeds [0, 1, 2]" in row["rule"]
    assert row["estimate"] == pytest.approx(0.03)
    # SCL idle (collapsed space in seed 2): withheld too
    c = _context(relabeled=40, after=0.18)
    c["regime"] = pd.DataFrame({"L_sup steps with a full queue": [0.8] * 3, "S_cos gap": [0.15, 0.1, 0.0]},
                               index=[0, 1, 2])
    card = sc.Scorecard("03_test", "smoke", "synthfer")
    X.claims(card, c)
    row = {r["claim"]: r for r in card.claims}[claim]
    assert row["verdict"] == "inconclusive" and "SCL did not act: S_cos gap <= 0.01 in seeds [2]" in row["rule"]


def test_cuem_notes_carry_relabels_precision_and_recall_of_both_cuem_runs():
    c = _context(relabeled=40, after=0.18)
    for s in c["d"].seeds:                                          # + CUEM: other numbers than the proposed runs
        c["R"][("table", X.CUEM, s)].update(relabeled=100 + s, relabel_precision=0.3, relabel_recall=0.2 + 0.1 * s)
    card = sc.Scorecard("03_test", "smoke", "synthfer")
    X.claims(card, c)
    by = {r["claim"]: r for r in card.claims}
    note = by["CUEM improves the baseline (Table II)"]["note"]
    assert "+ CUEM: 303 CUEM relabels (per seed {0: 100, 1: 101, 2: 102}), precision 0.30, recall 0.30" in note
    assert "(proposed): 120 CUEM relabels (per seed {0: 40, 1: 40, 2: 40}), precision 0.40, recall 0.10" in \
        by["SCL + CUEM improves the baseline (Table II)"]["note"]
    prec_row = by["CUEM relabels mostly correctly (share of changes right against the clean labels > 0.5)"]
    assert "recall 0.10" in prec_row["note"] and "recall 0.30" in prec_row["note"]


def _tiny_split(n, K, seed):
    g = torch.Generator().manual_seed(seed)
    clean = torch.arange(n) % K
    labels = clean.clone()
    labels[:n // 5] = (clean[:n // 5] + 1) % K                      # a fifth of the labels wrong
    return SimpleNamespace(labels=labels, clean_labels=clean), g


def test_regime_table_and_audit_report_both_cuem_runs_with_precision_and_recall():
    K, seeds = 3, [0, 1]
    R, data, warm = {}, {}, {}
    for s in seeds:
        train, g = _tiny_split(60, K, s)
        test_labels = torch.arange(40) % K
        emb = torch.nn.functional.one_hot(test_labels, K).float() * 5 + torch.randn(40, K, generator=g) * 0.1
        sim = torch.full((60, K), 0.2)
        sim[torch.arange(60), train.clean_labels] = 0.7
        data[s] = {"train": train, "test": SimpleNamespace(labels=test_labels)}
        warm[(0.2, s, "arm")] = {"accuracy": 0.5}
        hist = {"sup_on_steps": 10, "sup_on_full_queue_steps": 8}
        R[("table", X.BASE, s)] = {"accuracy": 0.6, "embeddings": emb}
        R[("table", X.SCL, s)] = {"accuracy": 0.62, "embeddings": emb, "similarity": sim, "history": hist}
        for name, made, prec, rec in ((X.PROPOSED, 10, 0.6, 0.25), (X.CUEM, 30 + s, 0.3, 0.4)):
            R[("table", name, s)] = {"accuracy": 0.61, "relabeled": made, "relabel_precision": prec,
                                     "relabel_recall": rec, "relabel_correct": int(made * prec),
                                     "relabel_broken": 2, "noise_before": 0.2, "noise_after": 0.19}
    d = SimpleNamespace(seeds=seeds, data=data, truth="clean labels", noise=0.2)
    t = X.regime_table(R, d, warm)
    assert t.loc[1, "CUEM relabels (+ CUEM)"] == 31 and t.loc[0, "relabel recall (+ CUEM)"] == pytest.approx(0.4)
    assert t.loc[0, "relabel precision (proposed)"] == pytest.approx(0.6)
    assert t["S_cos gap"].iloc[0] == pytest.approx(0.5)
    assert t["5-NN, SCL features"].min() == pytest.approx(1.0) and t["L_sup steps with a full queue"].iloc[0] == 0.8
    text = X.regime_text(t, K)
    assert ("20 relabels in the proposed runs, precision 0.60, recall 0.25; 61 relabels in the + CUEM runs, "
            "precision 0.30, recall 0.40") in text and "**CUEM acts**" in text
    audit = X.relabel_audit(R, d)
    assert list(audit.index) == [(X.CUEM, 0), (X.CUEM, 1), (X.PROPOSED, 0), (X.PROPOSED, 1)]
    assert audit.loc[(X.CUEM, 1), "relabeled"] == 31 and audit.loc[(X.PROPOSED, 0), "recall"] == pytest.approx(0.25)
    assert {"precision", "recall", "broken", "noise before", "noise after"} <= set(audit.columns)


def _paired_row(claim, est, low, high, verdict):
    return {"claim": claim, "kind": "paired seeds", "estimate": est, "interval": [low, high], "verdict": verdict}


def test_resolution_text_names_the_resolved_differences_from_the_card():
    rows = [_paired_row("CUEM improves the baseline", -0.008, -0.016, -0.001, "does not hold"),
            _paired_row("SCL improves the baseline", -0.003, -0.021, 0.015, "inconclusive"),
            _paired_row("knn", 0.033, 0.020, 0.046, "holds"),
            _paired_row("proposed vs CUEM", 0.02, 0.01, 0.03, "inconclusive"),     # resolved, verdict withheld
            {"claim": "exact one", "kind": "exact", "estimate": None, "interval": [None, None], "verdict": "holds"}]
    text = X.resolution_text(rows, 3)
    assert text.startswith("3 seeds, paired 95 % t intervals (2 degrees of freedom). Of 4 paired comparisons, 3 "
                           "exclude 0, the smallest at |difference| 0.008")
    assert "CUEM improves the baseline (-0.008 [-0.016, -0.001])" in text
    assert "proposed vs CUEM (+0.020 [+0.010, +0.030], verdict withheld)" in text
    assert "The other 1 contains 0, with half-width 0.018: differences below that are not resolved" in text
    assert "point or two" not in text
    none = X.resolution_text(rows[1:2] + rows[1:2], 2)
    assert "(1 degree of freedom). Of 2 paired comparisons, none excludes 0. All 2 contain 0, with half-widths " \
           "0.018 to 0.018" in none
    assert X.resolution_text(rows[4:], 3).endswith("no comparison has an interval.")


def test_reading_formats_the_seeds_line_and_both_cuem_audits():
    c = _context(relabeled=40, after=0.18)
    card = sc.Scorecard("03_test", "smoke", "synthfer")
    X.claims(card, c)
    regime = pd.DataFrame({"warm start": [0.5] * 3, "5-NN, SCL features": [0.6] * 3, "S_cos gap": [0.15] * 3,
                           "L_sup steps with a full queue": [0.8] * 3, "CUEM relabels (proposed)": [40] * 3,
                           "relabel precision (proposed)": [0.4] * 3, "relabel recall (proposed)": [0.1] * 3,
                           "CUEM relabels (+ CUEM)": [50] * 3, "relabel precision (+ CUEM)": [0.3] * 3,
                           "relabel recall (+ CUEM)": [0.2] * 3}, index=[0, 1, 2])
    P = SimpleNamespace(name="cpu", warm_epochs=10, epochs=5)
    text = X.reading(card.claims, P, c["d"], c["acc"], regime, 0.58, 700, 20)
    counts = card.counts()
    assert f"Of the {len(card.claims)} claims: holds\n{counts['holds']}," in text
    assert "120 relabels in the proposed runs, precision 0.40, recall 0.10; 150 relabels in the + CUEM runs" in text
    assert "paired comparisons" in text and "exclude" in text and "point or two" not in text


def test_fig4_text_gives_every_class_difference_and_says_when_the_interval_contains_0():
    classes = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger")
    gain = pd.Series([-0.016, -0.010, -0.007, 0.002, 0.012, 0.005, 0.0], index=classes)
    ev = sc.paired([0.60, 0.62, 0.58], [0.61, 0.60, 0.59], [0, 1, 2])            # contains 0
    text = X.fig4_text(gain, ev, 3)
    assert "neutral -0.016, happiness -0.010, sadness -0.007, surprise +0.002, fear +0.012, disgust +0.005, " \
           "anger +0.000" in text
    assert "On the paper's 4 classes (surprise, disgust, happiness, neutral)" in text
    assert "the interval contains 0, so the difference on these classes is not resolved" in text
    assert "higher on surprise, fear" not in text
    up = X.fig4_text(gain, sc.paired([0.65, 0.66, 0.64], [0.60, 0.60, 0.60], [0, 1, 2]), 3)
    assert "excludes 0: higher on those classes" in up


def test_fig4_evidence_matches_the_scorecard_row():
    c = _context(relabeled=40, after=0.18)
    card = sc.Scorecard("03_test", "smoke", "synthfer")
    X.claims(card, c)
    row = {r["claim"]: r for r in card.claims}[X.FIG4_CLAIM]
    ev = X.fig4_evidence(c["R"], c["d"])
    assert row["estimate"] == pytest.approx(ev.estimate, abs=1e-4) and row["verdict"] == ev.verdict


def test_localisation_text_reads_the_scores_against_an_even_spread():
    rng = np.random.default_rng(0)
    even = np.r_[rng.normal(1.0, 0.1, 200), [np.nan] * 20]        # NaN: neutral faces, not scored
    low = even - 0.1
    cams = {"baseline": {"scores": torch.tensor(even), "layer": "trunk.layer2", "side": 6},
            "proposed": {"scores": torch.tensor(low), "layer": "trunk.layer2", "side": 6}}
    text = X.localisation_text(cams)
    assert "baseline: localisation score **1.00**" in text and "over 200 expressive test faces" in text
    assert "no better than an even spread (the interval contains 1.0)" in text
    assert "proposed: localisation score **0.90**" in text and "less on the action-unit regions than an even" in text
    assert "proposed minus baseline on the same faces: -0.10 [-0.10, -0.10]." in text
    high = {"m": {"scores": torch.tensor(np.r_[np.full(50, 1.4), np.full(50, 1.6)]), "layer": "l", "side": 6}}
    assert "1.50 times an even spread's share" in X.localisation_text(high)
    assert X.localisation_text({}) == "Localisation needs SynthFER's masks."


def _curve(thetas, precision, noise):
    return pd.DataFrame({"theta": thetas, "precision": precision, "relabeled": [100 - 10 * i for i in
                                                                                range(len(thetas))],
                         "noise_before": noise})


def test_theta_text_says_where_precision_first_reaches_one_half_per_noise_level():
    th = [0.0, 0.05, 0.1, 0.13, 0.2]
    curves = {"0% noise": _curve(th, [0.0] * 5, 0.0),
              "20% noise": _curve(th, [0.30, 0.40, 0.45, 0.52, 0.48], 0.2),
              "30% noise": _curve(th, [0.2, 0.3, 0.35, 0.4, np.nan], 0.3),
              "40% noise": _curve(th, [np.nan] * 5, 0.4)}
    text = X.theta_text(curves, 0.1)
    assert "0% noise: never (no given label is wrong" in text
    assert "20% noise: first at θ = 0.13 (70 relabels; at θ = 0.1: 0.45)" in text
    assert "30% noise: never for θ in 0-0.2 (at most 0.40, at θ = 0.13; at θ = 0.1: 0.35)" in text
    assert "40% noise: never (no relabel at any θ swept)" in text and "paper's θ = 0.1" in text


def test_model_text_names_the_profiles_model():
    P = SimpleNamespace(name="cpu", model="resnet_mini_arm", model_kwargs={}, image_size=48)
    text = X.model_text(P)
    assert "**Model of the cpu profile:** `resnet_mini_arm`: ResNet-18 with one block per stage" in text
    gpu = X.model_text(SimpleNamespace(name="gpu", model="resnet18_arm", model_kwargs={"output_stride": 16},
                                       image_size=64))
    assert "`resnet18_arm` (output_stride=16): ResNet-18, ARM in place of pooling" in gpu
