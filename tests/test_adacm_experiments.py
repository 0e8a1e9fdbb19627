"""Notebook 05's experiment helpers (fernb.methods.adacm_experiments) on crafted runs, and the two mechanisms they
rely on: a supervised warm start that every method of a seed continues from, and the every-label bound."""
import math

import numpy as np
import pytest
import torch

from fernb import scorecard as sc
from fernb.data import synthfer as S
from fernb.methods import adacm as A
from fernb.methods import adacm_experiments as X


def _run(name, seed, acc, *, method=None, n=10, source="t", history=None, log=None, confusion=None):
    confusion = confusion if confusion is not None else (np.eye(3, dtype=int) * 10 + 1)
    return A.RunResult(name=name, method=method or name, seed=seed, n_labeled=n, source=source,
                       history=history or {}, log=log or {},
                       tests={"t": {"accuracy": acc, "confusion": confusion.tolist(), "correct": np.ones(33)}},
                       seconds=1.0)


def test_the_bound_is_filed_under_the_budget_it_starts_from_and_pairs_by_seed():
    bound = X.as_budget([_run(X.BOUND, 0, 0.80, n=3000), _run(X.BOUND, 1, 0.82, n=3000)], 10)
    assert [r.n_labeled for r in bound] == [10, 10]
    rows = bound + [_run("supervised only", 0, 0.60), _run("supervised only", 1, 0.61),
                    _run("supervised only", 0, 0.40, n=5), _run("supervised only", 1, 0.41, n=5)]
    ev = A.compare(rows, X.BOUND, "supervised only", "t", n_labeled=10, source="t")
    assert ev.kind == "paired seeds" and ev.estimate == pytest.approx(0.205)   # the 10-label runs, not the 5-label


def test_ranking_with_one_seed_is_not_measurable_and_quotes_no_interval():
    rows = [_run("Ada-CM", 0, 0.7), _run("FixMatch", 0, 0.6)]
    ev = A.ranking(rows, ["Ada-CM", "FixMatch"], "t")
    assert ev.kind == "not measured" and ev.verdict == "inconclusive" and "one seed" in ev.rule
    assert "interval" not in ev.measured and "Ada-CM: 0.700" in ev.measured
    two = rows + [_run("Ada-CM", 1, 0.71), _run("FixMatch", 1, 0.61)]
    assert A.ranking(two, ["Ada-CM", "FixMatch"], "t").kind == "optimum"


def test_margin_state_counts_class_epochs_above_the_floor():
    log = {"margins": [[0.8, 0.8, 0.8], [0.8, 0.85, 0.8], [0.9, 0.95, 0.8]], "T": [[1, 1, 1], [1, 1, 1],
                                                                                  [0.9, 0.95, 0.6]]}
    state = X.margin_state(_run("Ada-CM", 0, 0.5, log=log), floor=0.8)
    assert state["share_above"] == pytest.approx(3 / 6)       # epochs after the first: 3 of 6 class-epochs
    assert state["classes_above"] == 2 and state["T_last"] == pytest.approx((0.9 + 0.95 + 0.6) / 3)
    idle = X.margin_state(_run("Ada-CM", 0, 0.5, log={"margins": [[0.8] * 3] * 3, "T": [[0.5] * 3] * 3}), 0.8)
    assert idle["share_above"] == 0 and idle["classes_above"] == 0


def test_contrastive_state_compares_with_unmatched_features():
    runs = [_run("Ada-CM", s, 0.5, history={"extra": {"contrastive_loss": [first, 0.3]}})
            for s, first in ((0, 0.5), (1, 0.7))]
    state = X.contrastive_state(runs, batch_size=32, uratio=1)
    assert state["chance"] == pytest.approx(math.log(63))           # one positive among 2N - 1 = 63
    assert state["first"] == pytest.approx(0.6) and state["saturated"]
    fresh = [_run("Ada-CM", 0, 0.5, history={"extra": {"contrastive_loss": [3.9, 2.0]}})]
    assert not X.contrastive_state(fresh, 32, 1)["saturated"]


def test_pseudo_label_table_reads_accepted_shares_and_precisions_after_the_first_epoch():
    hist = lambda rates, accs: {"mask_rate": rates, "pseudo_acc": accs}
    rows = [_run("FixMatch", 0, 0.6, method="fixmatch", history=hist([0.1, 0.3, 0.5], [0.5, 0.8, 0.9])),
            _run("FixMatch", 1, 0.6, method="fixmatch", history=hist([0.0, 0.2, 0.2], [None, 0.6, 0.7])),
            _run("supervised only", 0, 0.5, method="supervised", history=hist([0, 0, 0], [0, 0, 0]))]
    d = type("D", (), {"N1": 10, "source": "t"})()
    table = X.pseudo_label_table(rows, d, 10)
    assert list(table.index) == ["FixMatch"]                        # a labels-only row accepts nothing to audit
    assert table.loc["FixMatch", "accepted"] == pytest.approx((0.4 + 0.2) / 2)
    assert table.loc["FixMatch", "precision"] == pytest.approx((0.85 + 0.65) / 2)


def test_table1_takeaway_names_the_highest_multi_seed_row_and_the_bound():
    import pandas as pd

    table = pd.DataFrame({"mean": {"Ada-CM": 0.66, "FixMatch": 0.65, "supervised only": 0.62, "MixMatch": 0.70,
                                   X.BOUND: 0.74},
                          "seeds": {"Ada-CM": 3, "FixMatch": 3, "supervised only": 3, "MixMatch": 1, X.BOUND: 3},
                          "collapsed": {k: 0 for k in ("Ada-CM", "FixMatch", "supervised only", "MixMatch", X.BOUND)}})
    text = X.table1_takeaway(table, 2000, "default")
    assert "**Ada-CM** (0.660)" in text                             # MixMatch's one seed is not ranked first
    assert "every label 0.740" in text and "2000 default test images" in text


def test_schedule_note_says_the_report_schedules_sit_below_the_code_floor():
    assert X.schedules_below_floor(0.8)
    assert "All stay below the code's floor 0.8" in X.schedule_note(0.8)
    assert "All stay below" not in X.schedule_note(0.3)


def test_every_method_of_a_seed_continues_from_its_warm_start(tmp_path):
    pool = S.synthfer("train", 70, size=48, cache=False, seed=4)
    test = S.synthfer("test", 30, size=48, cache=False, seed=4)
    source = A.create_model("resnet_mini", 7, 3, 48, seed=9).state_dict()
    warm = X.warm_starts(source, pool, 21, [0, 1], test, model="resnet_mini", steps=3, batch_size=8, lr=1e-3,
                         device="cpu", checkpoint_dir=tmp_path)
    assert set(warm) == {0, 1} and 0 <= warm[0].accuracy <= 1
    assert not torch.equal(warm[0].state["fc.weight"], warm[1].state["fc.weight"])   # each seed its own
    again = X.warm_starts(source, pool, 21, [0], test, model="resnet_mini", steps=3, batch_size=8, lr=1e-3,
                          device="cpu", checkpoint_dir=tmp_path)               # loaded from its checkpoint
    assert torch.equal(again[0].state["fc.weight"], warm[0].state["fc.weight"])
    net = A.create_model("resnet_mini", 7, 3, 48, seed=5, warm_start=warm[1].state)
    assert torch.equal(net.fc.weight, warm[1].state["fc.weight"])             # classifier too, not reseeded
    kw = dict(model="resnet_mini", steps=2, steps_per_epoch=1, batch_size=8, uratio=1, lr=1e-3, ema_momentum=0.9,
              device="cpu")
    bound = A.run(A.Spec(X.BOUND, "supervised"), pool, len(pool), 1, {"default": test},
                  warm_start=X.states(warm), **kw)                            # every row labeled: no unlabeled rows
    assert bound.n_labeled == 70 and bound.history["mask_rate"][0] in (0, None, 0.0)
    with pytest.raises(ValueError, match="no unlabeled rows"):
        A.run(A.Spec("FixMatch", "fixmatch"), pool, len(pool), 1, {"default": test}, **kw)
