"""The evidence standard: the verdict rule on crafted per-seed numbers, intervals against hand computations, optima,
bootstraps, and that a notebook cannot record a verdict without its numbers."""
import json
import math

import numpy as np
import pytest

from fernb import scorecard as sc


SEEDS = [0, 1, 2, 3, 4]


def test_clear_win_holds_clear_loss_does_not_hold_overlap_is_inconclusive():
    base = [0.50, 0.52, 0.49, 0.51, 0.50]
    win = [v + 0.05 + e for v, e in zip(base, (0.004, -0.003, 0.002, 0.0, -0.002))]
    loss = [v - 0.05 + e for v, e in zip(base, (0.004, -0.003, 0.002, 0.0, -0.002))]
    overlap = [v + e for v, e in zip(base, (0.03, -0.03, 0.02, -0.02, 0.001))]
    assert sc.paired(win, base, SEEDS).verdict == "holds"
    assert sc.paired(loss, base, SEEDS).verdict == "does not hold"
    assert sc.paired(overlap, base, SEEDS).verdict == "inconclusive"
    # the paper's direction flips the reading of the same interval
    assert sc.paired(loss, base, SEEDS, direction="<").verdict == "holds"
    assert sc.paired(win, base, SEEDS, direction="<").verdict == "does not hold"


def test_paired_interval_matches_a_hand_computed_t_interval():
    a, b = [0.30, 0.32, 0.35], [0.28, 0.31, 0.30]
    d = np.array([0.02, 0.01, 0.05])
    half = 4.302652729911275 * d.std(ddof=1) / math.sqrt(3)    # t_{0.975, 2}
    ev = sc.paired(a, b, [0, 1, 2])
    assert ev.estimate == pytest.approx(d.mean())
    assert ev.low == pytest.approx(d.mean() - half)
    assert ev.high == pytest.approx(d.mean() + half)
    assert ev.seeds == [0, 1, 2]
    assert "paired t over 3 seeds" in ev.rule


def test_pairing_matters_a_consistent_small_gain_is_detected_unpaired_spread_would_hide_it():
    # seed-to-seed spread of 5 points, but B is always 1 point below A: the paired interval sees it
    a = [0.40, 0.45, 0.50, 0.55, 0.60]
    b = [x - 0.01 for x in a]
    ev = sc.paired(a, b, SEEDS)
    assert ev.verdict == "holds"
    assert ev.low == pytest.approx(0.01) and ev.high == pytest.approx(0.01)


def test_one_seed_gives_no_interval_and_no_verdict():
    ev = sc.paired([0.9], [0.1], [0])
    assert math.isnan(ev.low) and ev.verdict == "inconclusive"
    assert "no interval" in ev.rule


def test_paired_rejects_mismatched_or_repeated_seeds_and_bad_direction():
    with pytest.raises(ValueError, match="must match"):
        sc.paired([1, 2], [1, 2, 3], [0, 1])
    with pytest.raises(ValueError, match="distinct"):
        sc.paired([1, 2], [1, 2], [0, 0])
    with pytest.raises(ValueError, match="direction"):
        sc.paired([1, 2], [1, 2], [0, 1], direction="better")
    with pytest.raises(ValueError, match="finite"):
        sc.paired([1, float("nan")], [1, 2], [0, 1])


def test_against_a_reference_value():
    ev = sc.against([0.52, 0.49, 0.51, 0.50, 0.48], 0.5, SEEDS)
    assert ev.verdict == "inconclusive"
    assert sc.against([0.62, 0.60, 0.61], 0.5, [0, 1, 2]).verdict == "holds"
    assert sc.against([0.40, 0.41, 0.39], 0.5, [0, 1, 2]).verdict == "does not hold"


def test_bootstrap_paired_detects_a_real_gap_and_not_a_null_one():
    rng = np.random.default_rng(1)
    n = 3000
    a = (rng.random(n) < 0.70).astype(float)
    b = a.copy()
    flip = rng.choice(n, 150, replace=False)            # B loses 150 of A's answers: a 5-point gap
    b[flip] = 1 - b[flip]
    b[flip] = np.minimum(b[flip], a[flip])               # only ever worse
    ev = sc.bootstrap_paired(a, b)
    assert ev.verdict == "holds" and ev.n_test == n
    assert ev.low > 0
    same = sc.bootstrap_paired(a, a.copy())
    assert same.estimate == 0 and same.verdict == "inconclusive"
    noise = sc.bootstrap_paired(a, (rng.random(n) < 0.70).astype(float))
    assert noise.low < 0 < noise.high                   # two independent 70 % coins: no detectable gap


def test_bootstrap_is_deterministic_and_the_interval_covers_the_estimate():
    x = np.r_[np.ones(60), np.zeros(40)]
    y = np.r_[np.ones(50), np.zeros(50)]
    e1, e2 = sc.bootstrap_groups(x, y), sc.bootstrap_groups(x, y)
    assert (e1.low, e1.high) == (e2.low, e2.high)
    assert e1.estimate == pytest.approx(0.1)
    assert e1.low <= e1.estimate <= e1.high


def test_bootstrap_against_chance():
    out = np.r_[np.ones(300), np.zeros(700)]            # 30 % correct on 1,000 items
    assert sc.bootstrap_against(out, 1 / 7).verdict == "holds"
    assert sc.bootstrap_against(out, 0.5).verdict == "does not hold"
    assert sc.bootstrap_against(out, 0.3).verdict == "inconclusive"


def test_optimum_is_the_set_within_the_interval_of_the_best():
    seeds = [0, 1, 2]
    results = {0.0: [0.50, 0.51, 0.49], 0.15: [0.60, 0.61, 0.59], 0.2: [0.595, 0.605, 0.598], 0.3: [0.55, 0.56, 0.54]}
    keep, best = sc.best_set(results, seeds)
    assert best == 0.15 and set(keep) == {0.15, 0.2}
    assert sc.optimum(results, seeds, 0.2).verdict == "holds"
    assert sc.optimum(results, seeds, 0.3).verdict == "does not hold"
    assert sc.optimum(results, seeds, 0.25).verdict == "inconclusive"        # not tried
    flat = {0.0: [0.52, 0.48, 0.50], 0.1: [0.51, 0.49, 0.505], 0.2: [0.49, 0.51, 0.50]}
    assert sc.optimum(flat, seeds, 0.1).verdict == "inconclusive"           # nothing separates the settings
    assert sc.optimum(results, seeds, 0.0, higher_is_better=False).verdict == "holds"


def test_generic_bootstrap_of_a_difference_statistic():
    x = np.r_[np.ones(80), np.zeros(20)]
    ev = sc.bootstrap(lambda v: v.mean(axis=-1) - 0.5, x, measured="80 % vs 50 %", what="mean - 0.5")
    assert ev.estimate == pytest.approx(0.3) and ev.verdict == "holds" and ev.n_test == 100
    assert sc.against([1010.0, 1100.0, 1050.0], 1000, [0, 1, 2], unit="repeats").rule.startswith("t over 3 repeats")


def test_exact_checks_and_not_measurable():
    assert sc.exact(True, "identical", "torch.equal").verdict == "holds"
    assert sc.exact(False, "differs", "torch.equal").verdict == "does not hold"
    assert sc.not_measurable("-", "smoke profile").verdict == "inconclusive"


def test_a_claim_cannot_be_recorded_without_evidence(tmp_path, monkeypatch):
    monkeypatch.setenv("FERNB_FIGURES", str(tmp_path))
    card = sc.Scorecard("nb", "smoke", "synthfer")
    with pytest.raises(TypeError, match="Evidence"):
        card.claim("A beats B", "90 vs 80", "holds")
    with pytest.raises(ValueError, match="verdict word"):
        card.claim("A beats B", "90 vs 80", sc.paired([1, 2, 3], [0, 1, 2], [0, 1, 2]), note="holds within tolerance")
    card.claim("A beats B", "90 vs 80", sc.paired([0.6, 0.62, 0.61], [0.5, 0.52, 0.5], [0, 1, 2]), note="3 seeds")
    card.claim("same seed, same tensor", "identical", sc.exact(True, "identical", "torch.equal"))
    card.metric("accuracy", np.float64(0.4567891))
    card.metric("undefined", float("nan"))
    path = card.save()
    saved = json.loads(path.read_text())
    row = saved["claims"][0]
    assert row["verdict"] == "holds" and row["seeds"] == [0, 1, 2]
    assert set(row) >= {"interval", "rule", "n_test", "estimate", "a", "b"}
    assert saved["counts"] == {"holds": 2, "does not hold": 0, "inconclusive": 0}
    assert saved["metrics"]["accuracy"] == pytest.approx(0.4568, abs=1e-4)
    assert saved["metrics"]["undefined"] is None  # NaN is written as null: the file stays valid JSON
    frame = card.frame()
    assert list(frame.columns) == sc.COLUMNS
    assert frame.loc[0, "difference [95 % CI]"].startswith("+0.103 [")
    assert frame.loc[1, "difference [95 % CI]"] == ""


def test_verdict_from_interval_edges():
    assert sc.verdict_from_interval(0.001, 0.2) == "holds"
    assert sc.verdict_from_interval(-0.2, -0.001) == "does not hold"
    assert sc.verdict_from_interval(0.0, 0.2) == "inconclusive"       # touching 0 is not excluding it
    assert sc.verdict_from_interval(float("nan"), float("nan")) == "inconclusive"


def test_pair_confusion_gap_on_a_crafted_confusion():
    # 3 classes; class 0 is mistaken for 1 a third of the time, nothing else is confused
    y = np.repeat([0, 1, 2], 300)
    p = y.copy()
    p[:100] = 1
    ev = sc.pair_confusion_gap(p, y, [(0, 1)], 3)
    # two-way rate of {0,1} = 1/3; others {0,2}, {1,2} = 0; gap = 1/3
    assert ev.estimate == pytest.approx(1 / 3)
    assert ev.verdict == "holds"
    assert sc.pair_confusion_gap(p, y, [(1, 2)], 3).verdict == "does not hold"
    with pytest.raises(ValueError, match="named and other"):
        sc.pair_confusion_gap(p, y, [(0, 1), (0, 2), (1, 2)], 3)


def test_invalid_run_withholds_the_verdict_and_keeps_the_numbers():
    ev = sc.paired([0.9, 0.91, 0.92], [0.3, 0.31, 0.3], [0, 1, 2], names=("A", "B"))
    assert ev.verdict == "holds"
    out = sc.invalid_run(ev, "B diverged in seed 1")
    assert out.verdict == "inconclusive" and ev.verdict == "holds"            # a copy; the original is untouched
    assert out.interval == ev.interval and out.seeds == ev.seeds and out.measured == ev.measured
    assert out.rule.startswith(ev.rule) and out.rule.endswith("B diverged in seed 1")


def test_stored_numbers_keep_small_values_and_round_the_rest():
    card = sc.Scorecard("00_clean_test", "smoke", "synthfer")
    card.context.update(betas=[1e-5, 1e-4, 0.1], acc=0.123456, zero=0.0)
    row = sc._clean(card.context)
    assert row["betas"] == [1e-5, 1e-4, 0.1]            # not [0.0, 0.0001, 0.1]
    assert row["acc"] == 0.1235 and row["zero"] == 0.0
    assert sc._clean(float("nan")) is None and sc._clean(2.34567e-10) == 2.346e-10
