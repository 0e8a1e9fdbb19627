"""Notebook 04's experiment helpers (fernb.methods.dalnet_experiments) on crafted runs: the job lists, the collapse
flag and the verdict it withholds, the worthiness report's AUCs, the transfer takeaway's two readings and the
Softmax-MSE demonstration."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from fernb import scorecard as sc
from fernb.methods import dalnet_experiments as X
from fernb.methods import transfer as T


def _stage(acc, confusion=None):
    confusion = np.eye(7, dtype=int) * 10 + 1 if confusion is None else confusion
    return T.StageResult(val_accuracy=acc, test_accuracy=acc, test_mean_class_accuracy=acc, confusion=confusion,
                         history={}, seconds=1.0)


def _run(mode, k, seed, acc, confusion=None, act="dal", loss="softmax_mse", tag=None):
    stages = {"stage1": _stage(acc - 0.02), "stage2": _stage(acc, confusion)} if mode == "two-stage" \
        else {"final": _stage(acc, confusion)}
    run = T.FinetuneRun(mode=mode, k=k, seed=seed, loss=loss, activation=act, stages=stages)
    run.tag = tag or (f"k={k}" if mode == "two-stage" else mode)
    return run


def test_job_lists_cover_every_k_seed_and_control_and_skip_unrun_activations():
    P = SimpleNamespace(ks=(0, 3, 5), activations=("relu",))
    jobs = X.sweep_jobs(P, [0, 1])
    assert len(jobs) == 3 * 2 + 2 * 2
    assert [j for j in jobs if j[0] == "k=3"] == [("k=3", "two-stage", 3, "dal", "softmax_mse", s, True) for s in (0, 1)]
    assert {j[1] for j in jobs if not j[6]} == {"one-stage", "scratch"}          # only M_0 candidates keep weights
    arms = {j[0] for j in X.ablation_jobs(P, [0, 1, 2], k=3)}
    assert X.DALNET not in arms and "maxout + Softmax-MSE" not in arms          # DAL-Net is the sweep's run at k
    assert {"relu + Softmax-MSE", "DAL + cross-entropy", "DAL + Softmax-MSE, exact derivative"} <= arms
    assert all(j[2] == 3 for j in X.ablation_jobs(P, [0], k=3))


def test_a_run_predicting_one_class_is_flagged_in_table9():
    collapsed = np.zeros((7, 7), dtype=int)
    collapsed[:, 2] = 10                                                         # every face read as class 2
    assert X.top_class_share(collapsed) == pytest.approx(1.0)
    assert X.top_class_share(np.eye(7) * 5) == pytest.approx(1 / 7)
    ablation = {X.DALNET: [_run("two-stage", 3, s, 0.6) for s in (0, 1, 2)],
                "DAL + Softmax-MSE, exact derivative": [_run("two-stage", 3, 0, 0.143, collapsed),
                                                        _run("two-stage", 3, 1, 0.5), _run("two-stage", 3, 2, 0.5)]}
    t = X.table9(ablation, "FER2013")
    assert t.loc["DAL + Softmax-MSE, exact derivative", "collapsed seeds"] == 1
    assert t.loc[X.DALNET, "collapsed seeds"] == 0
    assert t.loc[X.DALNET, "paper stage 2 (FER2013)"] == pytest.approx(65.04)


def test_worthiness_report_measures_separation_with_aucs():
    n = 60
    is_face = torch.ones(n, dtype=torch.bool)
    is_face[:20] = False                                                         # 20 non-faces
    wrong = torch.zeros(n, dtype=torch.bool)
    wrong[20:40] = True                                                          # 20 faces with a wrong label
    W = torch.cat([torch.full((20,), 0.1), torch.full((20,), 0.5), torch.full((20,), 0.9)])
    Wv = SimpleNamespace(W=W, entropy=W, diversity=W)
    rep = X.worthiness_report(Wv, SimpleNamespace(is_face=is_face), wrong, w=2.0, b=10)
    # W ranks non-faces below faces and wrong labels below right ones: the first AUC is 0 (inverted), the others 1
    assert rep["aucs"]["non-faces vs faces"] == pytest.approx(0.0)
    assert rep["aucs"]["right-label faces vs the rest"] == pytest.approx(1.0)
    assert rep["aucs"]["wrong-label faces vs right-label faces"] == pytest.approx(0.0)
    assert len(rep["top"]) == 20 and set(rep["top"]["kind"]) == {"face, right web label"}
    assert rep["kinds"].loc["non-face", "share of pool"] == pytest.approx(1 / 3)
    shuffled = SimpleNamespace(W=torch.ones(n), entropy=torch.ones(n), diversity=torch.ones(n))
    flat = X.worthiness_report(shuffled, SimpleNamespace(is_face=is_face), wrong, w=2.0, b=10)
    assert all(v == pytest.approx(0.5) for v in flat["aucs"].values())          # a constant W separates nothing


def _frame(two, one, scratch, seeds=(0, 1, 2)):
    runs = [_run("two-stage", k, s, two + 0.01 * k) for k in (0, 3) for s in seeds]
    runs += [_run("one-stage", None, s, one) for s in seeds] + [_run("scratch", None, s, scratch) for s in seeds]
    return X.frame_of(runs)


def test_transfer_takeaway_reads_the_numbers_both_ways():
    sources = {"dal": SimpleNamespace(identity_accuracy=0.74)}
    helps = X.transfer_takeaway(_frame(0.70, 0.68, 0.60), [0, 1, 2], 3, sources, 3)
    assert "k = 3" in helps and "0.730" in helps and "beats starting from random weights" in helps
    hurts = X.transfer_takeaway(_frame(0.60, 0.62, 0.70), [0, 1, 2], 0, sources, 3)
    assert "Transfer does not help here" in hurts and "74%" in hurts and "scratch 0.700" in hurts
    assert "0.34 points above k = 0" in hurts                                    # 65.04 - 64.70, Tables 3-4
    assert X.paper_transfer_gain("SFEW 2.0", 3) == pytest.approx(44.94 - 46.67)
    assert X.paper_transfer_gain(None, 3) is None
    lost = X.transfer_takeaway(_frame(0.60, 0.62, 0.70), [0, 1, 2], 0, sources, 3,
                               probe={"face-recognition source": 0.41, "random weights": 0.52})
    assert "0.410 from the source's and 0.520" in lost and "built to discard" in lost
    kept = X.transfer_takeaway(_frame(0.60, 0.62, 0.70), [0, 1, 2], 0, sources, 3,
                               probe={"face-recognition source": 0.58, "random weights": 0.52})
    assert "does not explain" in kept and "discard what" not in kept
    same = X.transfer_takeaway(_frame(0.60, 0.62, 0.70), [0, 1, 2], 0, sources, 3,
                               probe={"face-recognition source": 0.260, "random weights": 0.2595})
    assert "0.260 from the source's and 0.260" in same and "added none" in same and "keep more" not in same


def test_expression_probe_reads_a_face_recognition_feature_space_and_random_weights():
    from fernb.data import synthfer as S
    from fernb import models

    train, test = S.synthfer("train", 140, size=48, seed=0), S.synthfer("test", 70, size=48, seed=0)
    torch.manual_seed(1)
    net = models.create("dalnet_mini", 5, in_chans=3, img_size=48)
    source = SimpleNamespace(state=net.state_dict(), num_identities=5, config={"model": "dalnet_mini",
                                                                                "model_kwargs": {}})
    probe = X.expression_probe(source, train, test, seed=0)
    assert set(probe) == {"face-recognition source", "random weights"}
    assert all(0.0 <= v <= 1.0 for v in probe.values())
    torch.manual_seed(0)
    same = models.create("dalnet_mini", 5, in_chans=3, img_size=48).state_dict()
    source.state = same                                    # the source IS the seed-0 random network: equal probes
    probe = X.expression_probe(source, train, test, seed=0)
    assert probe["face-recognition source"] == pytest.approx(probe["random weights"])


def test_claims_withhold_the_verdict_against_a_collapsed_arm():
    seeds = [0, 1, 2]
    collapsed = np.zeros((7, 7), dtype=int)
    collapsed[:, 0] = 10
    ablation = {X.DALNET: [_run("two-stage", 3, s, 0.6 + 0.01 * s) for s in seeds]}
    for name in X.ARMS:
        if name not in (X.DALNET, "maxout + Softmax-MSE"):
            ablation[name] = [_run("two-stage", 3, s, 0.143 if "exact" in name else 0.55 + 0.01 * s,
                                   collapsed if "exact" in name else None) for s in seeds]
    final = {n: [r.final.test_accuracy for r in runs] for n, runs in ablation.items()}
    frame = X.frame_of([r for runs in [ablation[X.DALNET]] for r in runs]
                       + [_run("two-stage", k, s, 0.58) for k in (0, 5) for s in seeds]
                       + [_run(m, None, s, 0.57) for m in ("one-stage", "scratch") for s in seeds])
    rounds = pd.DataFrame([{"selector": sel, "round": t, "seed": s, "accuracy": 0.6 + 0.01 * t, "looks": 10 * (t > 0),
                            "nonfaces": 2, "wrong_web_labels": 1, "used": 7, "used_wrong": 0, "hard": 0}
                           for sel in ("worthiness", "random", X.NO_WEB_REPLAY) for t in (0, 1)
                           for s in seeds])
    P = SimpleNamespace(model="dalnet_mini", image_size=48, n_train=100, stage1_steps=5, stage2_steps=5,
                        pretrain_identities=10, pretrain_steps=5, ks=(0, 3, 5), rounds=1, b=10, ail_steps=5,
                        selectors=("worthiness", "random"), no_annotation=False)
    d = SimpleNamespace(seeds=seeds, test=np.zeros(2000), column="FER2013", dataset="synthfer")
    card = sc.Scorecard("04_test", "smoke", "synthfer")
    X.claims(card, dict(P=P, d=d, frame=frame, K=3, final=final, ablation=ablation, paper_k=3, eq6_vs_ce=1e-8,
                        identity_correct=np.ones(500), identity_accuracy=1.0, incremental={"rounds": rounds},
                        aucs={"non-faces vs faces": 0.8}))
    by = {c["claim"]: c for c in card.claims}
    exact = by["the softmax gradient (Eq. 6) beats the exact derivative of Eq. 5"]
    assert exact["verdict"] == "inconclusive" and "collapsed" in str(exact)
    assert by["Softmax-MSE trains with the softmax loss's gradient (Eq. 6)"]["verdict"] == "holds"
    relu = by["DAL helps: DAL vs a single ReLU, both with Softmax-MSE (Table 9, DAL alone)"]
    assert "collapsed" not in str(relu)
    assert "0.34" not in by["two-stage transfer beats one-stage fine-tuning at the same step budget"]["paper"]
    assert by["two-stage transfer beats one-stage fine-tuning at the same step budget"]["paper"].startswith("65.04 vs 64.70")


def test_softmax_mse_demo_matches_cross_entropy_and_the_exact_derivative_differs():
    demo = X.softmax_mse_demo([f"c{i}" for i in range(7)])
    assert demo["eq6_vs_ce"] < 1e-6
    assert demo["gradcheck"] is True
    assert demo["cosine_median"] < 0.99                                          # the exact derivative points elsewhere
    assert demo["value"] == pytest.approx((demo["y_hat"] - 4) ** 2)


def test_incremental_takeaway_reads_both_no_web_controls():
    def rounds_with(accs):
        return pd.DataFrame([{"selector": sel, "round": t, "seed": s, "accuracy": acc if t == 1 else 0.70,
                              "looks": 10 * t if sel in ("worthiness", "random") else 0, "nonfaces": 2 * t,
                              "wrong_web_labels": 0, "used": 8 * t, "used_wrong": 0, "hard": 0}
                             for sel, acc in accs.items() for t in (0, 1) for s in (0, 1)])
    spent = pd.DataFrame({"non-face share of looks": {"worthiness": 0.2, "random": 0.2},
                          "web share of the fine-tuning data": {"worthiness": 0.5, "random": 0.5}})
    web, P = SimpleNamespace(is_face=torch.tensor([True, True, True, False])), SimpleNamespace(rounds=1, b=10)
    accs = {"worthiness": 0.66, "random": 0.65, X.NO_WEB_REPLAY: 0.66, X.NO_WEB_ALL: 0.71}
    text = X.incremental_takeaway({"rounds": rounds_with(accs), "spent": spent}, P, web)
    assert "change accuracy by +0.000" in text and "add nothing a round of old images does not" in text
    assert "A round this small costs -0.040 against M_0 (0.700)" in text
    assert "whole training set reach 0.710, above every selector" in text
    accs.update(worthiness=0.69, **{X.NO_WEB_REPLAY: 0.64})
    text = X.incremental_takeaway({"rounds": rounds_with(accs), "spent": spent}, P, web)
    assert "change accuracy by +0.050: that is what the web images themselves add" in text


def test_auc_reading_says_which_way_w_ranks():
    text = X.auc_reading({"non-faces vs faces": 0.625, "wrong-label faces vs right-label faces": 0.492,
                          "right-label faces vs the rest": 0.40})
    assert "W ranks non-faces above faces (0.625)" in text and "spends more of its looks" in text
    assert "W does not separate faces with a wrong web label from right-label faces (0.492)" in text
    assert "W ranks right-label faces below the rest (0.400)" in text
    kinds = pd.DataFrame({"mean e": {"face, right web label": 0.766, "face, wrong web label": 0.783,
                                     "non-face": 1.058}})
    text = X.auc_reading({"non-faces vs faces": 0.625, "wrong-label faces vs right-label faces": 0.492,
                          "right-label faces vs the rest": 0.40}, kinds)
    assert "(mean entropy e 1.058 against 0.766-0.783 for faces)" in text
    calm = X.auc_reading({"non-faces vs faces": 0.30, "wrong-label faces vs right-label faces": 0.5,
                          "right-label faces vs the rest": 0.5})
    assert "below faces" in calm and "spends more" not in calm
