"""Notebook 01's experiment module (fernb.methods.fucle_experiments) and the warm-start options of fernb.methods.fucle:
the collapse value against the loss itself, the regime summaries on crafted audits, the step budget of the
every-label bound, which seeds run which strategies, and the load-or-train warm start."""
import math
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
