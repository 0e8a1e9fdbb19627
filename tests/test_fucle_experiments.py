"""Notebook 01's experiment module (fernb.methods.fucle_experiments) and the warm-start options of fernb.methods.fucle:
the collapse value against the loss itself, the regime summaries on crafted audits, the step budget of the
every-label bound, which seeds run which strategies, and the load-or-train warm start."""
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from fernb.losses import supcon_loss
from fernb.methods import fucle, fucle_experiments as X


def test_collapse_value_is_supcon_loss_of_identical_embeddings():
    """Every similarity equal -> each positive has probability 1 / (2B - 1): Eq. 1 equals ln(2B - 1)."""
    B = 16
    z = torch.nn.functional.normalize(torch.ones(B, 2, 8), dim=-1)
    labels = torch.arange(B) % 4
    assert supcon_loss(z, labels, temperature=0.1).item() == pytest.approx(X.collapse_value(B), rel=1e-5)
    assert X.collapse_value(128) == pytest.approx(math.log(255))


def test_collapsed_flags_runs_on_or_above_the_collapse_value():
    frame = pd.DataFrame({"loss, last epoch": [5.54, 5.50, 5.30, 5.9], "collapse value": [5.541] * 4})
    assert X.collapsed(frame).tolist() == [True, True, False, True]


def test_full_steps_cover_step1_and_every_al_fit():
    P = SimpleNamespace(pretrain_epochs=6, batch_size=128, drm_epochs=6, drm_batch_size=64)
    # SupCon 6 * (3000 // 128) = 138, DRM 6 * ceil(3000 / 64) = 282, AL (4 + 1) * 60 = 300
    assert X.full_steps(P, 3000, cycles=4, steps=60) == 138 + 282 + 300


def test_all_strategies_on_the_first_seeds_and_the_core_two_on_every_seed():
    P = SimpleNamespace(strategy_seeds=2)
    every = X.ALL_STRATEGIES
    assert X.strategies_for(0, P, every) == every and X.strategies_for(1, P, every) == every
    assert X.strategies_for(2, P, every) == ("random", "least_confidence")


def test_arms_start_from_the_warm_start_and_controls_are_checked():
    arms = fucle.arms_for(("random", "margin"), controls=("control: SupCon + CE + LC",), base="warm")
    assert arms["random"].init == "warm" and arms["margin"].init == "warm"
    assert not arms["random"].reads_pool_in_step1
    assert set(arms) == {"random", "margin", "SupCon + LC", fucle.FUCLE, "control: SupCon + CE + LC"}
    with pytest.raises(ValueError, match="unknown arms"):
        fucle.arms_for(("random",), controls=("control: nothing",))


def test_step1_rejects_an_unknown_control_before_training(tmp_path):
    pool = SimpleNamespace(num_classes=7, channels=3, image_size=48)
    with pytest.raises(ValueError, match="unknown step-1 controls"):
        fucle.step1(pool, val=None, test=None, model_name="resnet_mini", checkpoint_dir=tmp_path, pretrain_epochs=1,
                    drm_epochs=1, batch_size=8, lr=1e-3, controls=("ce", "mixup"))


def _audit(acc, precision, relabeled, noise):
    return pd.DataFrame({"epoch": range(len(acc)), "val_accuracy": acc, "precision": precision,
                         "relabeled": relabeled, "correct": [round(p * r) if p == p else 0
                                                             for p, r in zip(precision, relabeled)],
                         "noise_rate": noise})


def test_regime_summary_reads_the_last_relabeling_epoch():
    nan = float("nan")
    frame = _audit([0.5, 0.62, 0.66, 0.68], [nan, 0.6, 0.7, 0.8], [0, 10, 10, 10], [0.4, 0.38, 0.36, 0.34])
    s = X.regime_summary(frame, label_accuracy=0.6)
    assert s["val_accuracy"] == 0.68 and s["precision"] == 0.8 and s["above_labels"]
    assert s["relabeled"] == 30 and s["precision_all"] == pytest.approx(21 / 30)
    assert s["noise_before"] == pytest.approx(0.4) and s["noise_after"] == 0.34
    low = X.regime_summary(_audit([0.6, 0.65], [0.3, 0.35], [20, 20], [0.31, 0.32]), label_accuracy=0.7)
    low.update(seeds=3, pool=3000)
    assert not low["above_labels"] and low["noise_after"] > low["noise_before"] - 1e-9
    text = X.regime_text(low, s, {"pool": 4000, "noise": 0.4}, 0.3, "annotator")
    assert "less accurate than its labels" in text and "more accurate than its labels" in text
    assert "rises from 0.300 to 0.320" in text and "falls from 0.400 to 0.340" in text


def test_warm_start_is_trained_once_and_then_loaded(tmp_path):
    P = SimpleNamespace(model="resnet_mini", image_size=48, channels=3, n_source=32, warm_steps=2, warm_lr=1e-3)
    test = fucle.seed_data("synthfer", seed=0, n_pool=16, n_val=8, n_test=16, size=48, channels=3)[2]
    data = {0: (test, test, test)}
    first = X.warm_starts(P, data, "synthfer", tmp_path)[0]
    assert first.path.is_file() and not first.loaded and 0 <= first.accuracy <= 1
    again = X.warm_starts(P, data, "synthfer", tmp_path)[0]
    assert again.loaded and again.path == first.path and again.accuracy == first.accuracy
    P.warm_steps = 3                                   # a changed setting trains a new checkpoint
    assert X.warm_starts(P, data, "synthfer", tmp_path)[0].path != first.path
    assert X.warm_starts(P, data, "kdef", tmp_path)[0].path is None       # no warm start on real data


# ---------------------------------------------------------------------------------------------------------------
# Takeaways formatted from crafted results: what the text may and may not say
# ---------------------------------------------------------------------------------------------------------------
def _run(accs):
    from fernb.methods import active
    r = active.ALResult(strategy="x", wall_seconds=1.0)
    r.cycles = [{"cycle": i, "n_labeled": 100 * (i + 1), "accuracy": a, "mean_class_accuracy": a}
                for i, a in enumerate(accs)]
    return r


def _log(w2r, r2w, w2w):
    """A relabel log with w2r wrong->right, r2w right->wrong and w2w wrong->wrong changes (clean label 0)."""
    old = torch.tensor([1] * w2r + [0] * r2w + [1] * w2w)
    new = torch.tensor([0] * w2r + [2] * r2w + [3] * w2w)
    changes = {"old": old, "new": new, "clean": torch.zeros(len(old), dtype=torch.long)}
    return SimpleNamespace(tensors=lambda: changes)


def _seed(seed, finals, fucle_acc, moves=(30, 20, 10), after=0.29, no_relabel=0.70):
    al = {n: _run([a - 0.02, a]) for n, a in finals.items()}
    al[fucle.FUCLE], al["SupCon + LC"] = _run([0.6, fucle_acc]), _run([0.5, 0.55])
    al["control: SupCon + CE + LC"] = _run([0.6, 0.68])
    arms = fucle.arms_for(tuple(finals), controls=("control: SupCon + CE + LC",), base="warm")
    n = sum(moves)
    frame = pd.DataFrame({"epoch": [0, 1], "val_accuracy": [0.6, 0.62], "precision": [float("nan"), moves[0] / n],
                          "relabeled": [0, n], "correct": [0, moves[0]], "noise_rate": [0.3, after]})
    step1 = SimpleNamespace(test_accuracy={"drm": 0.6, "ce": 0.61, "drm_no_relabel": no_relabel},
                            drm=SimpleNamespace(log=_log(*moves)))
    return SimpleNamespace(seed=seed, pool_size=1000, al=al, arms=arms, step1=step1, full_pool_accuracy=0.65,
                           noise_before=0.3, noise_after=after, relabels=n, relabel_precision=moves[0] / n,
                           relabel_epochs=frame)


def _results():
    three = {"random": 0.60, "least_confidence": 0.62, "entropy": 0.64}
    return [_seed(0, three, 0.66, after=0.31), _seed(1, {k: v + 0.01 for k, v in three.items()}, 0.67),
            _seed(2, {"random": 0.50, "least_confidence": 0.51}, 0.68)]      # seed 2 runs only the core two


def test_table1_compares_strategies_on_shared_seeds_and_against_the_warm_start():
    R = _results()
    strategies = ("random", "least_confidence", "entropy")
    t1, t2 = X.table1(R, strategies, "synthfer", sigma=False), X.table2(R, "synthfer")
    # seed 2's low random / LC pull their all-seed means down; on the shared seeds 0, 1 they are comparable
    assert t1.loc["random", "seeds"] == 3 and t1.loc["entropy", "seeds"] == 2
    assert t1.loc["random", "accuracy, shared seeds"] == pytest.approx(0.605)
    assert t1.loc["random", "accuracy"] == pytest.approx((0.60 + 0.61 + 0.50) / 3)
    warm = {s: X.WarmStart(Path("w.pt"), 0.63, 0.0, True) for s in (0, 1, 2)}
    text = X.table1_text(t1, R, strategies, warm, t2, cycles=1, pool_size=1000)
    assert "random, least_confidence on seeds 0, 1, 2; entropy on seeds 0, 1" in text
    assert "on the seeds 0, 1 that every strategy ran: highest mean entropy (0.645 over 2 seeds)" in text
    assert "best strategy" not in text
    # against the warm start on the same seeds: random (0.570 vs 0.630) ends below it, FUCLE above
    assert "random 0.570 vs 0.630 (-0.060)" in text and "FUCLE (SupCon + DRM + LC) 0.670 vs 0.630 (+0.040)" in text
    assert "2 of 3 strategies end at or below it" in text      # entropy (0.645) ends above


def test_every_label_fit_is_called_an_upper_bound_only_where_nothing_beats_it():
    R = _results()
    t2 = X.table2(R, "synthfer")
    assert fucle.EVERY_LABEL in t2.index and fucle.NO_RELABEL_STEP1 in t2.index
    text = X.every_label_text(t2)           # 0.65 < FUCLE 0.67, CE + LC 0.68, relabeling off 0.70
    assert "reaches 0.650: below" in text and "control: SupCon + CE + LC 0.680" in text
    assert f"{fucle.NO_RELABEL_STEP1} 0.700" in text and "not an upper bound here" in text
    assert "least_confidence" not in text                      # LC does not read the pool: not its peer
    for r in R:
        r.full_pool_accuracy = 0.9
    assert "at or above every other arm" in X.every_label_text(X.table2(R, "synthfer"))
    two = X.table2_text(t2, warm_start=True)
    assert "SupCon + LC trails LC. A possible reason, not measured here" in two and "classifier head" in two
    assert "classifier head" not in X.table2_text(t2, warm_start=False)


def test_regime_text_explains_low_precision_falling_noise_and_names_the_confounds():
    R = _results()
    for r in R:      # 50 wrong->right, 20 right->wrong, 40 wrong->wrong: precision 0.45, the error count falls
        r.step1.drm.log = _log(50, 20, 40)
        r.relabel_epochs.loc[1, ["relabeled", "correct", "precision"]] = [110, 50, 50 / 110]
    main = X.main_regime(R)
    assert main["seeds"] == 3 and main["pool"] == 1000 and main["noise_fell"] == 2
    assert main["noise_rose"] == [(0, 0.3, 0.31)] and main["wrong_to_wrong"] == 40
    second = X.regime_summary(_audit([0.5, 0.66], [float("nan"), 0.6], [0, 50], [0.4, 0.35]), label_accuracy=0.6)
    info = {"pool": 4000, "noise": 0.4, "seeds": 1, "init": "the warm start"}
    text = X.regime_text(main, second, info, 0.3, "annotator")
    assert "right 45% of the time and the label noise falls from 0.300 to 0.297 (it fell in 2 of 3 seeds)" in text
    assert "50 wrong → right, 20 right → wrong and 40 wrong → wrong" in text
    assert "So a precision under 0.5 still lowers the noise here" in text
    assert "seed 0: 0.300 → 0.310" in text
    assert "in size (4000 vs 1000 images), noise rate (40% vs 30%), initialization (the warm start vs the SupCon " \
           "checkpoint) and seeds (1 vs 3)" in text
    assert "about as often" not in text and "sits on clear faces" not in text
    idle = {**main, "relabeled": 0, "wrong_to_right": 0.0, "right_to_wrong": 0.0, "wrong_to_wrong": 0.0,
            "noise_after": 0.3, "noise_rose": []}
    text = X.regime_text(idle, second, info, 0.3, "annotator")
    assert "it relabels (almost) nothing and the label noise stays at 0.300" in text
    assert "neither regime acts there" in text and "wrong → right" not in text


def _sweeps(d2_after=(0.32, 0.30)):
    rows = [dict(param="delta1", value=v, seed=s, accuracy=a + 0.01 * s, relabeled=100, precision=0.5,
                 noise_before=0.3, noise_after=0.29) for s in (0, 1, 2) for v, a in ((0.05, 0.62), (0.15, 0.61))]
    rows += [dict(param="delta2", value=v, seed=0, accuracy=0.6, relabeled=n, precision=p, noise_before=0.3,
                  noise_after=na) for (v, n, p), na in zip(((0.0, 900, 0.3), (0.5, 100, 0.6)), d2_after)]
    sweep_a = pd.DataFrame([{"initial_fraction": f, "seed": s, "accuracy": a, "final labeled": int(1000 * (f + 0.2))}
                            for f, s, a in ((0.05, 0, 0.60), (0.05, 1, 0.63), (0.15, 0, 0.62), (0.15, 1, 0.64))])
    sweep_b = pd.DataFrame([{"seed": s, "cycles": c, "n_labeled": 50 * (c + 1), "accuracy": 0.5 + 0.05 * c + 0.001 * s}
                            for s in (0, 1) for c in range(3)])
    return pd.DataFrame(rows), sweep_a, sweep_b


def test_sweep_text_says_highest_mean_with_its_interval_and_compares_on_the_same_seeds():
    sweep, sweep_a, sweep_b = _sweeps()
    off = {0: 0.65, 1: 0.70, 2: 0.75}
    opt = X.sweep_optima(sweep, sweep_a, sweep_b)
    assert opt["δ1"] == ({0.05: [0.62, 0.63, 0.64], 0.15: [0.61, 0.62, 0.63]}, [0, 1, 2])
    text = X.sweep_text(sweep, sweep_a, sweep_b, off)
    assert "best 0" not in text and "at best" not in text
    # δ1: 0.05 beats 0.15 by exactly 0.01 on every seed: the interval separates them
    assert "δ1: highest mean 0.05 (0.630 over 3 seeds); the paired 95 % interval separates it from every other" in text
    assert "relabeling off the DRM scores 0.700 on the same seeds 0, 1, 2" in text
    assert "relabeling off scores 0.650 on the same seed 0" in text            # the δ2 seed only
    assert "ends at 0.320 (δ2 = 0), 0.300 (δ2 = 0.5)" in text
    assert "δ2 = 0 (the most relabels and the lowest precision) raises it: δ2 = 0 is where relabeling hurts" in text
    # initial fraction: 15 % is higher on both seeds by different amounts; two seeds cannot separate it
    assert "Initial fraction: highest mean 15% (0.630 over 2 seeds); the paired 95 % interval does not separate" in text
    assert "(5%: 250, 15%: 350)" in text
    assert "Cycles: highest mean after 2 cycles" in text and "50 after 0 cycles, 150 after 2" in text
    calm = X.sweep_text(*_sweeps(d2_after=(0.29, 0.30)), off)
    assert "no δ2 tried raises it" in calm


def test_diagnosis_text_reads_ntxent_loss_and_says_the_positive_control_had_more_data():
    row = {"start": "random weights", "views": "contrastive", "lr": 1e-3, "τ": 0.1, "images": 500, "epochs": 2,
           "loss, first epoch": 5.9, "loss, last epoch": 5.54, "collapse value": 5.541, "5-NN": 0.15,
           "NT-Xent loss, first epoch": float("nan"), "NT-Xent loss, last epoch": float("nan")}
    nt = {**row, "start": "NT-Xent features", "loss, last epoch": 5.56, "NT-Xent loss, first epoch": 5.0,
          "NT-Xent loss, last epoch": 4.2}
    text = X.diagnosis_text(pd.DataFrame([row, nt]), 1 / 7, main_images=3000, main_epochs=6)
    assert "2 of 2 SupCon runs" in text and "chance 0.14" in text
    assert "NT-Xent's own loss went from 5.000 to 4.200" in text and "it fell, so NT-Xent learned its own task" in text
    assert "and SupCon from its features still collapsed" in text
    assert ("ran on 3000 pool images for 6 epochs, these runs on 500 images for 2 epochs, so it differs in more than "
            "its start: more data and more epochs may have helped it too") in text
    assert "people and backgrounds" not in text
    assert "chance 0.25" in X.diagnosis_text(pd.DataFrame([row]), 1 / 4)
    one = {**nt, "epochs": 1, "NT-Xent loss, last epoch": 5.0}        # one epoch: no curve to read
    short = X.diagnosis_text(pd.DataFrame([one]), 1 / 7, main_images=500, main_epochs=1)
    assert "ran one epoch (loss 5.000), too short to show whether it learns" in short
    assert "for 1 epoch, these runs on 500 images for 1 epoch." in short and "more data" not in short


def test_knn_text_formats_what_supcon_keeps_of_the_warm_start():
    knn = pd.DataFrame({"5-NN, random weights": [0.1, 0.1], "5-NN, warm start": [0.6, 0.5],
                        "5-NN, SupCon": [0.4, 0.4], "SupCon loss, first epoch": [5.7, 5.7],
                        "SupCon loss, last epoch": [5.4, 5.4], "collapse value ln(2B-1)": [5.54, 5.54]})
    text = X.knn_text(knn)      # (0.4 - 0.1) / (0.55 - 0.1)
    assert "it keeps 67% of the warm start's gain over random weights" in text and "most of" not in text


def test_scorecard_text_counts_the_rows_that_are_not_measurable():
    from fernb import scorecard as sc
    card = sc.Scorecard("01_test", "smoke", "synthfer")
    card.claim("a", "-", sc.against([0.6, 0.61, 0.62], 0.5, [0, 1, 2]))
    card.claim("b", "-", sc.not_measurable("0 relabels", "the DRM relabeled nothing"))
    regime = {"above_labels": False, "val_accuracy": 0.6, "label_accuracy": 0.7}
    text = X.scorecard_text(card.counts(), SimpleNamespace(name="smoke"), [0, 1], 600, 0.3, 300, "clean labels",
                            regime, {**regime, "above_labels": True}, card.claims)
    assert "Holds: 1" in text and "inconclusive: 1 (1 of them not measurable here" in text
    assert "The regime decides" not in text


def test_drm_text_reports_no_precision_when_nothing_changed():
    audit = pd.DataFrame({"relabels": [571.0, 600.0], "relabel precision": [0.45, 0.47], "noise before": [0.3, 0.3],
                          "noise after": [0.29, 0.28], "P(α_noisy < α_clean)": [0.51, 0.52],
                          "DRM val accuracy": [0.64, 0.65], "label accuracy": [0.7, 0.7]})
    text = X.drm_text(audit, 2)
    assert "changed 586 labels per pool with precision 0.46, moving the label noise from 0.300 to 0.285" in text
    idle = audit.assign(relabels=0.0, **{"relabel precision": 1.0, "noise after": 0.3})
    text = X.drm_text(idle, 2)
    assert "changed no label (no precision to measure), leaving the label noise at 0.300;" in text
    assert "precision 1.00" not in text
