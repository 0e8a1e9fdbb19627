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
    # accepted-weighted within a run (0.3 at 0.8 and 0.5 at 0.9; 0.2 at 0.6 and 0.2 at 0.7), then the mean of seeds
    assert table.loc["FixMatch", "precision"] == pytest.approx(((0.24 + 0.45) / 0.8 + (0.12 + 0.14) / 0.4) / 2)


def _table1(means, seeds=None):
    import pandas as pd

    seeds = seeds or {}
    return pd.DataFrame({"mean": means, "seeds": {k: seeds.get(k, 3) for k in means},
                         "collapsed": {k: 0 for k in means}})


def test_table1_takeaway_names_the_highest_multi_seed_row_the_bound_and_chance():
    table = _table1({"Ada-CM": 0.66, "FixMatch": 0.65, "supervised only": 0.62, "MixMatch": 0.70, X.BOUND: 0.74},
                    {"MixMatch": 1})
    text = X.table1_takeaway(table, 2000, "default", num_classes=7)
    assert "**Ada-CM** (0.660)" in text                             # MixMatch's one seed is not ranked first
    assert "**MixMatch**" not in text and "shared by" not in text
    assert "every label 0.740" in text and "2000 default test images" in text
    assert "chance (1 of 7 expressions) 0.143" in text
    assert "chance" not in X.table1_takeaway(table, 2000, "default")


def test_table1_takeaway_reports_a_near_tie_as_shared_not_as_a_winner():
    # FixMatch 0.3530 vs supervised only 0.3528: one printed digit apart from nothing; Ada-CM 0.346 is not tied
    table = _table1({"Ada-CM": 0.3460, "FixMatch": 0.3530, "supervised only": 0.3528})
    text = X.table1_takeaway(table, 2000, "default", num_classes=7)
    assert "shared by **FixMatch** (0.353), **supervised only** (0.353), within 0.001" in text
    assert "**Ada-CM**" not in text and "Highest mean here (rows with 3 seeds)" in text
    assert list(X.best_rows(table).index) == ["FixMatch", "supervised only"]
    # just outside the tolerance: one winner again
    apart = _table1({"Ada-CM": 0.3460, "FixMatch": 0.3540, "supervised only": 0.3528})
    assert "**FixMatch** (0.354);" in X.table1_takeaway(apart, 2000, "default")
    # a tie at the edge of the tolerance is still a tie; the bound never takes part
    edge = _table1({"Ada-CM": 0.600, "FixMatch": 0.601, "supervised only": 0.590, X.BOUND: 0.70})
    assert list(X.best_rows(edge).index) == ["FixMatch", "Ada-CM"]


def test_schedule_note_says_the_report_schedules_sit_below_the_code_floor():
    assert X.schedules_below_floor(0.8)
    below = X.schedule_note(0.8)
    assert "All stay below the code's floor 0.8" in below
    assert below.endswith("every epoch.") and not below.endswith("..")    # one period, not two
    above = X.schedule_note(0.3)
    assert "All stay below" not in above and above.endswith(".") and not above.endswith("..")


def _margin_run(margins, subset1, T=None, seed=0):
    T = T or [[float("nan")] * len(margins[0])] + [[0.9] * len(margins[0])] * (len(margins) - 1)
    return _run("Ada-CM", seed, 0.5, log={"margins": margins, "T": T},
                history={"extra": {"subset1_rate": subset1}})


def test_subset1_trend_compares_the_floor_epochs_with_the_last_and_says_why():
    floor = [0.8, 0.8, 0.8]
    margins = [floor, floor, [0.8, 0.85, 0.8], [0.86, 0.9, 0.84], [0.88, 0.93, 0.86]]
    T = [[float("nan")] * 3, [0.87, 0.99, 0.9], [0.88, 0.99, 0.9], [0.9, 0.98, 0.89], [0.91, 0.99, 0.9]]
    state = X.margin_state(_margin_run(margins, [0.50, 0.48, 0.45, 0.41, 0.38], T), floor=0.8)
    text = X.subset1_trend(state)
    # the first two epochs have every margin at the floor: their mean share (0.49) against the last epoch's (0.38)
    assert text.startswith("Subset I shrinks within the run: 49.0% of the unlabeled batch in epochs 1-2 "
                           "(every margin at the floor 0.8), 38.0% in epoch 5 (mean margin 0.89)")
    assert "T_c is high (0.87 to 0.99 after the first epoch), so every margin ends above the floor" in text
    grows = X.margin_state(_margin_run(margins, [0.30, 0.31, 0.35, 0.40, 0.45], T), floor=0.8)
    assert "Subset I grows" in X.subset1_trend(grows) and "T_c is high" not in X.subset1_trend(grows)
    level = X.margin_state(_margin_run(margins, [0.40, 0.40, 0.41, 0.40, 0.402], T), floor=0.8)
    assert "stays about level" in X.subset1_trend(level)
    # no floor (the paper's rule): the first third of the epochs, described by their mean margin
    free = X.margin_state(_margin_run([[0.8] * 3, [0.6] * 3, [0.7] * 3, [0.8] * 3, [0.85] * 3, [0.86] * 3],
                                      [0.6, 0.7, 0.6, 0.5, 0.45, 0.4]), floor=None)
    assert "65.0% of the unlabeled batch in epochs 1-2 (mean margin 0.70), 40.0% in epoch 6" in X.subset1_trend(free)
    assert X.subset1_trend(X.margin_state(_margin_run([floor], [0.5]), 0.8)) == ""


def test_margin_takeaway_names_its_seed_and_carries_the_trend():
    floor = [0.8, 0.8]
    state = X.margin_state(_margin_run([floor, [0.82, 0.9], [0.84, 0.95]], [0.5, 0.45, 0.4], seed=2), floor=0.8)
    text = X.margin_takeaway(state, ["a", "b"])
    assert text.startswith("Seed 2 (the key figure's run): margins in the last epoch: a 0.84, b 0.95")
    assert "Subset I shrinks within the run: 50.0% of the unlabeled batch in epoch 1" in text


def test_contrast_note_keeps_the_claim_unmeasurable_but_reports_the_fall():
    runs = [_run("Ada-CM", 0, 0.5, history={"extra": {"contrastive_loss": [0.73, 0.52]}})]
    state = X.contrastive_state(runs, batch_size=32, uratio=1)
    note = X.contrast_note(state)
    assert note.startswith(f"L_c starts at 0.73 of the {math.log(63):.2f} of features that match no view")
    assert "still falls to 0.52" in note and f"({0.25 * math.log(63):.2f})" in note
    assert "nothing left to learn" not in note
    fresh = X.contrastive_state([_run("Ada-CM", 0, 0.5, history={"extra": {"contrastive_loss": [3.9, 2.0]}})], 32, 1)
    assert "has something to learn" in X.contrast_note(fresh)


def test_one_precision_rule_for_the_pseudo_label_table_and_the_audit():
    # per epoch: Ada-CM's subset I share and its correct share; the table's precision is the audit's ratio
    rates, correct = [0.2, 0.5, 0.3, 0.4], [0.1, 0.4, 0.15, 0.36]
    hist = {"mask_rate": rates, "pseudo_acc": [c / r for c, r in zip(correct, rates)],
            "extra": {"subset1_rate": rates, "subset1_correct_rate": correct, "reference_rate": rates,
                      "reference_correct_rate": correct, "subset2_correct_rate": [0.0] * 4}}
    runs = [_run("Ada-CM", 0, 0.6, method="adacm", history=hist)]
    hist1 = dict(hist, mask_rate=[0.1, 0.1, 0.3, 0.1], pseudo_acc=[0.5, 0.9, 0.5, 0.9],
                 extra=dict(hist["extra"], subset1_rate=[0.1, 0.1, 0.3, 0.1],
                            subset1_correct_rate=[0.05, 0.09, 0.15, 0.09]))
    runs.append(_run("Ada-CM", 1, 0.6, method="adacm", history=hist1))
    d = type("D", (), {"N1": 10, "source": "t"})()
    table = X.pseudo_label_table(runs, d, 10)
    per_seed = [A.audit(r)["subset1_precision"] for r in runs]
    assert per_seed[0] == pytest.approx((0.4 + 0.15 + 0.36) / (0.5 + 0.3 + 0.4))        # accepted-weighted
    assert per_seed[1] == pytest.approx((0.09 + 0.15 + 0.09) / 0.5)
    assert table.loc["Ada-CM", "precision"] == pytest.approx(np.mean(per_seed))         # then the mean of seeds
    assert table.loc["Ada-CM", "accepted"] == pytest.approx(np.mean([1.2 / 3, 0.5 / 3]))


def test_audit_display_has_readable_column_names():
    import pandas as pd

    audits = pd.DataFrame([{"seed": 0, **{k: 0.5 for k in X.audit_columns()}, "FixMatch run: accepted": 0.3,
                            "FixMatch run: accepted and correct": 0.2}]).set_index("seed")
    shown = X.audit_display(audits, 0.95)
    assert not [c for c in shown.data.columns if "_" in c]
    assert "fixed 0.95: precision" in shown.data.columns and "subset I: admitted" in shown.data.columns
    assert "50.0%" in shown.to_html()


def test_floor_note_finds_the_epochs_where_eq2_falls_below_the_floor():
    extra = lambda s1: {"subset1_rate": s1, "subset1_correct_rate": [v * 0.8 for v in s1],
                        "reference_rate": s1, "reference_correct_rate": s1, "subset2_correct_rate": [0.0] * len(s1)}
    T = [[float("nan")] * 2] + [[0.9, 0.95]] * 3
    free = _run("Eq. 2 without the code's floor", 0, 0.6, method="adacm",
                log={"margins": [[0.8, 0.8], [0.64, 0.67], [0.77, 0.81], [0.84, 0.88]], "T": T},
                history={"extra": extra([0.5, 0.7, 0.55, 0.4])})
    floored = _run("Ada-CM", 0, 0.6, method="adacm",
                   log={"margins": [[0.8, 0.8], [0.8, 0.8], [0.8, 0.81], [0.84, 0.88]], "T": T},
                   history={"extra": extra([0.5, 0.5, 0.45, 0.4])})
    text = X.floor_note(free, floored, 0.8, math.e, "Eq. 2 without the code's floor")
    assert "3 of 6 class-epochs fall below the code's floor 0.8, in epochs 2-3" in text
    assert (f"factor 1/(1 + γ^-t) is {1 / (1 + math.e ** -1):.2f} to {1 / (1 + math.e ** -2):.2f} "
            f"(and {1 / (1 + math.e ** -3):.2f} in the last epoch)") in text
    assert "subset I holds 62.5% of the unlabeled batch without the floor against 47.5% with it" in text
    assert "T_c 0.90 to 0.95" in text
    same = X.floor_note(floored, floored, 0.8)
    assert "never fall below" in same
    empty = _run("Ada-CM", 0, 0.6, method="adacm", log=floored.log, history={"extra": extra([0.0] * 4)})
    assert "subset I 55.0% (precision 80.0%) without the floor" in text
    assert "0.0% (none admitted) with it" in X.floor_note(free, empty, 0.8)       # nothing admitted: no precision
    assert X._ranges([2, 3, 4, 7]) == "2-4, 7"


def test_the_backbone_checkpoint_is_named_by_its_settings_and_its_data(tmp_path):
    from types import SimpleNamespace

    ids = S.synthfer("identity", 40, size=48, cache=False, seed=1, num_identities=8)
    same = S.synthfer("identity", 40, size=48, cache=False, seed=1, num_identities=8)
    other = S.synthfer("identity", 40, size=48, cache=False, seed=2, num_identities=8)
    kw = dict(model="resnet_mini", steps=2, lr=3e-3, batch_size=8, seed=0)
    path = X.backbone_checkpoint(tmp_path, ids, **kw)
    assert path.parent == tmp_path and path.name.startswith("backbone-") and path.suffix == ".pt"
    assert path == X.backbone_checkpoint(tmp_path, same, **kw)
    assert path != X.backbone_checkpoint(tmp_path, other, **kw)                 # re-rendered data: a new model
    for change in (dict(steps=3), dict(lr=1e-3), dict(batch_size=16), dict(seed=1), dict(model="resnet18")):
        assert path != X.backbone_checkpoint(tmp_path, ids, **dict(kw, **change)), change
    P = SimpleNamespace(model="resnet_mini", pretrain_steps=2, pretrain_identities=8)
    backbone = X.pretrain_backbone(ids, P, device="cpu", checkpoint_dir=tmp_path, seed=0, batch_size=8, lr=3e-3)
    assert path.is_file() and list(tmp_path.glob("*.pt")) == [path]             # trained into its keyed name
    assert "8 identities, 40 images, 2 steps" in X.describe_backbone(backbone, ids, P)


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
