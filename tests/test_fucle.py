"""FUCLE experiment bookkeeping (fernb.methods.fucle): arms, per-seed data, learning-curve areas, the tables the
scorecard reads, the relabel outcomes a bootstrap resamples, and the paper's numbers by dataset. The training
itself (SupCon, DRM, the AL loop) is tested in test_losses / test_drm / test_active and end to end by the notebook
smoke run."""
import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from fernb.methods import active, fucle


def test_arms_for_lists_strategies_fucle_and_controls():
    arms = fucle.arms_for(("random", "least_confidence"), controls=True, sigma=False)
    assert list(arms)[:2] == ["random", "least_confidence"]
    assert arms["random"].init is None and arms["random"].strategy == "random"
    assert arms[fucle.FUCLE].init == "drm" and arms[fucle.FUCLE].labels == "drm"
    assert "control: NT-Xent (no labels) + LC" in arms and "FUCLE + sigma data addition" not in arms
    # label reads: the DRM / SupCon / CE step 1 read every pool label, NT-Xent and random initializations none
    assert arms[fucle.FUCLE].reads_pool_in_step1 and arms["control: SupCon + CE + LC"].reads_pool_in_step1
    assert not arms["control: NT-Xent (no labels) + LC"].reads_pool_in_step1
    assert not arms["least_confidence"].reads_pool_in_step1

    lean = fucle.arms_for(("least_confidence",), controls=False, sigma=True)
    assert set(lean) == {"least_confidence", "SupCon + LC", fucle.FUCLE, "FUCLE + sigma data addition"}
    assert lean["FUCLE + sigma data addition"].sigma


def test_aulc_is_the_normalized_trapezoid_area():
    frame = pd.DataFrame({"n_labeled": [40, 10, 20], "accuracy": [0.5, 0.2, 0.4]})   # unsorted on purpose
    # (0.2 + 0.4) / 2 * 10 + (0.4 + 0.5) / 2 * 20 = 3 + 9 = 12, over the range 30
    assert fucle.aulc(frame) == pytest.approx(0.4)
    assert fucle.aulc(pd.DataFrame({"n_labeled": [10], "accuracy": [0.3]})) == pytest.approx(0.3)


def _fake_results():
    """Two seeds with two arms each, built from ALResult records as run_active_learning fills them."""
    out = []
    for seed, (lc, fu) in enumerate([((0.2, 0.3), (0.4, 0.5)), ((0.25, 0.35), (0.45, 0.6))]):
        al = {}
        for name, accs in (("least_confidence", lc), (fucle.FUCLE, fu)):
            run = active.ALResult(strategy="least_confidence", wall_seconds=10.0 + seed)
            run.cycles = [{"cycle": i, "n_labeled": 100 * (i + 1), "accuracy": a, "mean_class_accuracy": a}
                          for i, a in enumerate(accs)]
            al[name] = run
        arms = fucle.arms_for(("least_confidence",), controls=False)
        step1 = SimpleNamespace(test_accuracy={"drm": 0.55 + seed / 100})
        out.append(SimpleNamespace(seed=seed, pool_size=1000, al=al, arms=arms, step1=step1,
                                   full_pool_accuracy=0.7, relabel_precision=0.25 * (seed + 1)))
    return out


def test_per_seed_reads_every_kind_of_number_in_seed_order():
    results = _fake_results()
    assert fucle.per_seed(results, fucle.FUCLE) == [0.5, 0.6]
    assert fucle.per_seed(results, "least_confidence", "first") == [0.2, 0.25]
    assert fucle.per_seed(results, "least_confidence", "aulc") == pytest.approx([0.25, 0.3])
    assert fucle.per_seed(results, "least_confidence", "seconds") == [10.0, 11.0]
    assert fucle.per_seed(results, "step1:drm") == pytest.approx([0.55, 0.56])
    assert fucle.per_seed(results, "full_pool") == [0.7, 0.7]
    assert fucle.per_seed(results, "relabel_precision") == [0.25, 0.5]


def test_curves_count_the_pool_as_read_for_arms_whose_step1_read_it():
    curves = fucle.curves_frame(_fake_results())
    lc = curves[curves.method == "least_confidence"]
    fu = curves[curves.method == fucle.FUCLE]
    assert (lc.labels_read == lc.n_labeled).all()
    assert (fu.labels_read == 1000).all()        # its AL labels are among the pool labels step 1 read
    assert len(curves) == 2 * 2 * 2


def test_final_table_means_and_sample_std_over_seeds():
    table = fucle.final_table(_fake_results())
    assert table.loc[fucle.FUCLE, "accuracy"] == pytest.approx(0.55)
    assert table.loc[fucle.FUCLE, "std"] == pytest.approx(np.std([0.5, 0.6], ddof=1))
    assert table.loc[fucle.FUCLE, "labels read"] == 1000
    assert table.loc["least_confidence", "labels read"] == 200
    assert table.loc["step-1 DRM model, no AL", "accuracy"] == pytest.approx(0.555)
    assert "control: step-1 SupCon + CE model, no AL" not in table.index     # that variant was not run
    assert table.loc[fucle.EVERY_LABEL, "labels read"] == 1000


def test_relabel_outcomes_expand_counts_to_decisions():
    frame = pd.DataFrame({"epoch": [0, 1, 2, 3], "relabeled": [0, 4, 10, 5], "correct": [0, 1, 6, 5],
                          "precision": [math.nan, 0.25, 0.6, 1.0]})
    every = fucle.relabel_outcomes(frame)
    assert len(every) == 19 and every.sum() == 12
    last = fucle.relabel_outcomes(frame, last_epoch=True)
    assert last.tolist() == [1.0] * 5


def test_paper_numbers_follow_the_dataset():
    assert fucle.paper_number(fucle.FUCLE, "kdef") == "94.17"
    assert fucle.paper_number("least_confidence", "fer2013") == "65.83"
    assert fucle.paper_number("random", "synthfer") == "FER13 63.16 / RAF-DB 73.82 / KDEF 83.77"
    assert fucle.paper_number("random", "affectnet") == "-"            # a dataset the paper did not use
    assert fucle.paper_number("control: SupCon + CE + LC", "kdef") == "-"  # a row the paper does not have
    assert fucle.paper_pair(fucle.FUCLE, "least_confidence", "rafdb") == "80.70 vs 77.33"
    assert fucle.paper_pair(fucle.FUCLE, "least_confidence", "synthfer").startswith("FER13 66.81 vs 65.83")


def test_seed_data_varies_with_the_seed_and_keeps_the_clean_labels():
    kw = dict(n_pool=280, n_val=70, n_test=70, size=48, channels=1, noise_kind="symmetric")
    pool0, val0, test0 = fucle.seed_data("synthfer", seed=0, noise_rate=0.3, **kw)
    pool1, _, test1 = fucle.seed_data("synthfer", seed=1, noise_rate=0.3, **kw)
    assert len(pool0) == 280 and len(val0) == 70 and len(test0) == 70
    assert not torch.equal(pool0.images, pool1.images)                   # every seed draws its own data
    assert not torch.equal(test0.images, test1.images)
    flipped = float((pool0.labels != pool0.clean_labels).float().mean())
    assert 0.15 < flipped < 0.4                                          # about 30 % (symmetric, can hit itself)
    clean, _, _ = fucle.seed_data("synthfer", seed=0, noise_rate=0.0, **kw)
    assert torch.equal(clean.labels, clean.clean_labels)
    assert torch.equal(clean.clean_labels, pool0.clean_labels)           # same seed, same images and truth


def test_final_table_names_the_every_label_fit_and_the_relabeling_off_step1_model():
    results = _fake_results()
    assert fucle.EVERY_LABEL in fucle.final_table(results).index
    assert "upper bound: every pool label, one fit" not in fucle.final_table(results).index
    assert fucle.NO_RELABEL_STEP1 not in fucle.final_table(results).index        # not run: no row
    for r, acc in zip(results, (0.6, 0.7)):
        r.step1.test_accuracy["drm_no_relabel"] = acc
    table = fucle.final_table(results)
    assert table.loc[fucle.NO_RELABEL_STEP1, "accuracy"] == pytest.approx(0.65)
    assert table.loc[fucle.NO_RELABEL_STEP1, "reads pool in step 1"]


def test_relabel_transitions_split_changes_by_what_they_do_to_the_error_count():
    # per change (old -> new, clean): wrong->right, right->wrong, wrong->wrong twice, and one with no clean label
    changes = {"old": torch.tensor([1, 2, 3, 4, 0]), "new": torch.tensor([2, 0, 5, 6, 1]),
               "clean": torch.tensor([2, 2, 1, 1, -1])}
    assert fucle.relabel_transitions(changes) == {"wrong_to_right": 1, "right_to_wrong": 1, "wrong_to_wrong": 2}
    # precision 1/3 (< 0.5), yet the error count falls: the two changes that are not right hit wrong labels
    clean = torch.tensor([0, 0, 0, 3, 3])
    before = torch.tensor([1, 1, 1, 3, 3])                            # 3 of 5 wrong
    after = torch.tensor([0, 4, 5, 3, 3])                             # index 0 fixed, 1 and 2 moved wrong -> wrong
    m = fucle.relabel_transitions({"old": before[:3], "new": after[:3], "clean": clean[:3]})
    assert m == {"wrong_to_right": 1, "right_to_wrong": 0, "wrong_to_wrong": 2}
    delta = fucle.noise_rate(after, clean) - fucle.noise_rate(before, clean)
    assert delta == pytest.approx((m["right_to_wrong"] - m["wrong_to_right"]) / len(clean)) and delta < 0
    assert math.isnan(fucle.noise_rate(before, None))


def test_drm_sweep_records_the_label_noise_before_and_after(tmp_path):
    from fernb import models
    pool, val, test = fucle.seed_data("synthfer", seed=0, n_pool=64, n_val=16, n_test=16, size=48, channels=1,
                                      noise_rate=0.4, noise_kind="symmetric")
    torch.manual_seed(0)
    path = fucle.save_weights(models.create("resnet_mini", 7, in_chans=1, img_size=48), tmp_path / "supcon.pt")
    result = SimpleNamespace(seed=0, step1=SimpleNamespace(checkpoints={"supcon": path}))
    kw = dict(val=val, test=test, model_name="resnet_mini", drm_epochs=2, batch_size=32, lr=1e-2,
              drm_kwargs={"relabel_start_epoch": 0})
    rows = fucle.drm_sweep(result, pool, param="delta2", values=[0.0, 0.99], **kw)
    given = float((pool.labels != pool.clean_labels).float().mean())
    assert rows["noise_before"].tolist() == pytest.approx([given, given])
    for _, row in rows.iterrows():      # each change moves the error count by at most one
        assert abs(row["noise_after"] - row["noise_before"]) <= row["relabeled"] / len(pool) + 1e-9
    assert rows["relabeled"].iloc[0] > 0                               # δ2 = 0: a random model relabels freely
    assert rows["relabeled"].iloc[1] == 0 and rows["noise_after"].iloc[1] == rows["noise_before"].iloc[1]
    unknown = dataclasses.replace(pool, clean_labels=None)
    assert rows.columns.tolist()[-2:] == ["noise_before", "noise_after"]
    assert fucle.drm_sweep(result, unknown, param="delta1", values=[0.1], **kw)["noise_after"].isna().all()
