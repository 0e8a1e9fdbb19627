"""Notebook 04 (Xu et al.: DAL-Net, Softmax-MSE, two-stage transfer, active incremental learning) as data and calls:
its data, source models, job lists, tables, takeaways and scorecard claims. The notebook explains; this computes.

The regime (what the cpu profile is sized for)
----------------------------------------------
* The source model must recognise faces before transfer can be measured: 200 SynthFER identities x 30 images, a
  quarter-width DAL-Net with BatchNorm after each conv (the paper's has none; without it, 1,000 steps on 400
  identities reached 0.38 held-out identity accuracy, with it 0.53; measured on SynthFER v3), 1,000 steps, trained
  once and loaded from its checkpoint afterwards (named by its settings and its data's fingerprint).
* Fine-tuned arms must learn: `stage1_steps` + `stage2_steps` steps of 64 on 1,000 labeled images (stage 2 at
  lr1 / 3; at lr1 / 10 a fully frozen stage 1, k = 5, could not recover in stage 2).
* Web images must matter: each incremental round fine-tunes on H u Z plus as many replayed training images as there
  are web images (half of what the round trains on is web data), against two same-steps controls without web images:
  one on the whole training set, one on a round-sized sample of it (`incremental.REPLAY_ONLY`), so that what a small
  round costs or adds on its own is not read as the web images' doing.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from .. import engine, parallel, paths
from .. import scorecard as sc
from ..data import synthfer as S
from ..data.sources import has_clean_labels, load_splits
from . import incremental as I
from . import transfer as T
from .adacm import COLLAPSE_SHARE, top_class_share

# ---------------------------------------------------------------------------------------------------------------
# The paper's numbers (papers/003), as data: Tables 3-4 (stage 1, stage 2 per frozen-layer count k), Table 9 and
# Table 10 (FER2013 and SFEW 2.0)
# ---------------------------------------------------------------------------------------------------------------
CITATION = ("Ying Xu, Jian Liu, Yikui Zhai, Junying Gan, Junying Zeng, He Cao, Fabio Scotti, Vincenzo Piuri, Ruggero "
            "Donida Labati. *Weakly Supervised Facial Expression Recognition via Transferred DAL-CNN and Active "
            "Incremental Learning* (papers/003)")
PAPER_T34 = {"FER2013": {0: (61.50, 64.70), 1: (62.28, 64.45), 2: (62.44, 64.76), 3: (62.30, 65.04),
                         4: (60.74, 63.76), 5: (58.54, 63.87)},
             "SFEW 2.0": {0: (46.49, 46.67), 1: (46.25, 46.01), 2: (44.35, 44.17), 3: (44.52, 44.94),
                          4: (47.68, 48.21), 5: (46.01, 47.26)}}
PAPER_T9 = {"FER2013": {"DAL + Softmax-MSE (DAL-Net)": (62.30, 65.04),
                        "relu + cross-entropy (without DAL and Softmax-MSE)": (60.35, 63.34)},
            "SFEW 2.0": {"DAL + Softmax-MSE (DAL-Net)": (47.68, 48.21),
                         "relu + cross-entropy (without DAL and Softmax-MSE)": (45.12, 47.38)}}
PAPER_T10 = {"FER2013": [65.49, 66.57, 67.08], "SFEW 2.0": [48.15, 52.02, 51.90]}
DALNET = "DAL + Softmax-MSE (DAL-Net)"
NO_WEB_ALL = "no web images (same steps, whole training set)"
NO_WEB_REPLAY = "no web images (same steps and round size)"
CONTROL_NAMES = {I.NO_WEB: NO_WEB_ALL, I.REPLAY_ONLY: NO_WEB_REPLAY}


def load_data(P, dataset: str = "synthfer", data_root=None, seed: int = 0, web_noise: float = 0.4,
              web_nonfaces: float = 0.2) -> SimpleNamespace:
    """The FER pool / val / test (grey), each seed's training subset, the web pool and the identity pool."""
    d = SimpleNamespace(dataset=dataset, seeds=list(P.seeds))
    d.pool, d.val, d.test = load_splits(dataset, data_root, size=P.image_size, channels=1, seed=seed,
                                        n_train=P.n_pool, n_val=P.n_val, n_test=P.n_test)
    d.web = S.synthfer_web(P.n_web, size=P.image_size, channels=1, num_classes=d.pool.num_classes, seed=seed,
                           noise_rate=web_noise, nonface_fraction=web_nonfaces)
    if tuple(d.web.classes) != tuple(d.pool.classes):
        raise ValueError(f"the SynthFER web pool's classes {d.web.classes} differ from {dataset}'s {d.pool.classes}")
    d.identities = S.synthfer("identity", P.pretrain_images, size=P.image_size, channels=1, seed=seed,
                              num_identities=P.pretrain_identities)
    d.train = {s: T.stratified_subset(d.pool, P.n_train, seed=s) for s in d.seeds}
    d.truth = "clean labels" if has_clean_labels(d.test) else "the annotators' labels"
    d.wrong_web = d.web.is_face & (d.web.labels != d.web.clean_labels)
    d.column = {"synthfer": "FER2013", "fer2013": "FER2013", "sfew": "SFEW 2.0"}.get(dataset)
    d.web_noise, d.web_nonfaces = web_noise, web_nonfaces
    return d


def describe_data(d, P) -> str:
    return (f"**Data.** {d.dataset}: {len(d.train[d.seeds[0]])} training images per seed (drawn from a pool of "
            f"{len(d.pool)}), {len(d.val)} validation, {len(d.test)} test, {P.image_size} px grey. Web pool: "
            f"{len(d.web)} candidates, {int((~d.web.is_face).sum())} non-faces and {int(d.wrong_web.sum())} faces "
            f"with a wrong label. Source task: {P.pretrain_identities} SynthFER identities, {len(d.identities)} "
            f"images. Seeds {d.seeds}.")


# ---------------------------------------------------------------------------------------------------------------
# Source models, loaded from their checkpoints when they exist
# ---------------------------------------------------------------------------------------------------------------
def source_models(identities, activations, P, device=None, checkpoint_dir=None, seed: int = 0) -> dict:
    """{activation: PretrainResult}: one face-recognition source per head activation (the DAL and the
    single-activation controls of Table 9), trained once with softmax cross-entropy; with `checkpoint_dir`, a
    finished one is loaded from its checkpoint (named by its settings, `seed` and the identity data's fingerprint)."""
    out = {}
    for act in activations:
        ckpt = None if checkpoint_dir is None else paths.keyed(
            checkpoint_dir, f"source-{act}-{P.pretrain_steps}", P.model, dict(P.model_kwargs), P.pretrain_lr,
            P.pretrain_batch, seed, identities.fingerprint())
        out[act] = T.pretrain_face_recognition(
            identities, model_name=P.model, model_kwargs={"activation": act, **P.model_kwargs},
            steps=P.pretrain_steps, lr=P.pretrain_lr, batch_size=P.pretrain_batch, device=device, seed=seed,
            checkpoint=ckpt)
    return out


def source_table(sources: dict, P) -> pd.DataFrame:
    return pd.DataFrame({act: {"held-out identity accuracy": r.identity_accuracy, "identities": r.num_identities,
                               "training images": r.n_train, "steps": P.pretrain_steps,
                               "seconds": round(r.seconds, 1)} for act, r in sources.items()}).T


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning jobs (run side by side through fernb.parallel.run_many)
# ---------------------------------------------------------------------------------------------------------------
def finetune_config(P, activation: str = "dal", loss: str = "softmax_mse") -> T.FinetuneConfig:
    return T.FinetuneConfig(model_name=P.model, model_kwargs={"activation": activation, **P.model_kwargs},
                            stage1_steps=P.stage1_steps, stage2_steps=P.stage2_steps, lr1=P.lr1, lr2=P.lr2,
                            batch_size=P.batch_size, loss=loss)


def _finetune_job(train, val, test, cfg, pretrained, k, mode, seed, keep_state, tag, device=None):
    run = T.run_finetune(train, val, test, cfg=cfg, pretrained=pretrained, k=k, mode=mode, seed=seed,
                         device=device, keep_state=keep_state)
    run.tag = tag
    return run


def run_finetunes(jobs, d, sources, P, device=None) -> list:
    """jobs: (tag, mode, k, activation, loss, seed, keep_state) -> FinetuneRuns (with `.tag`), in job order."""
    kw = [dict(train=d.train[s], val=d.val, test=d.test, cfg=finetune_config(P, act, loss),
               pretrained=sources[act].state, k=k, mode=mode, seed=s, keep_state=keep, tag=tag)
          for tag, mode, k, act, loss, s, keep in jobs]
    return parallel.run_many(_finetune_job, kw, device=device, workers=P.workers)


def sweep_jobs(P, seeds) -> list:
    """Tables 3-4: two-stage at every k (the states kept: M_0 of the incremental rounds), plus the one-stage and
    scratch controls at the same step budget."""
    jobs = [(f"k={k}", "two-stage", k, "dal", "softmax_mse", s, True) for k in P.ks for s in seeds]
    return jobs + [(m, m, None, "dal", "softmax_mse", s, False) for m in ("one-stage", "scratch") for s in seeds]


ARMS = {DALNET: ("dal", "softmax_mse"), "relu + Softmax-MSE": ("relu", "softmax_mse"),
        "maxout + Softmax-MSE": ("maxout", "softmax_mse"), "DAL + cross-entropy": ("dal", "ce"),
        "DAL + Softmax-MSE, exact derivative": ("dal", "exact_mse"),
        "relu + cross-entropy (without DAL and Softmax-MSE)": ("relu", "ce")}


def ablation_jobs(P, seeds, k: int) -> list:
    """Table 9 and its controls at the chosen k (DAL-Net itself is the sweep's run at k)."""
    return [(name, "two-stage", k, act, loss, s, False) for name, (act, loss) in ARMS.items()
            if name != DALNET and act in ("dal", *P.activations) for s in seeds]


def frame_of(runs) -> pd.DataFrame:
    frame = T.runs_frame(runs)
    frame["tag"] = [r.tag for r in runs for _ in r.stages]
    return frame


def collapsed_seeds(runs, seeds) -> list:
    """The seeds whose run predicts one class for >= COLLAPSE_SHARE of the test images (adacm.top_class_share)."""
    return [s for s, r in zip(seeds, runs) if top_class_share(r.final.confusion) >= COLLAPSE_SHARE]


# ---------------------------------------------------------------------------------------------------------------
# Tables and takeaways
# ---------------------------------------------------------------------------------------------------------------
def sweep_table(frame, K: int, column: str | None) -> pd.DataFrame:
    two = frame[frame["mode"] == "two-stage"]
    t = two.pivot_table(index="k", columns="stage", values=["val_accuracy", "test_accuracy"], aggfunc="mean")
    t.columns = [f"{stage} {metric.replace('_accuracy', '')}" for metric, stage in t.columns]
    for i, stage in enumerate(("stage 1", "stage 2")):
        t[f"paper {stage} ({column or '-'})"] = [PAPER_T34.get(column, {}).get(k, (None, None))[i] for k in t.index]
    return t


def expression_probe(source, train, test, device=None, seed: int = 0) -> dict:
    """Is expression still readable from the source's features? A linear probe (scikit-learn's logistic regression on
    standardised features) of the expression labels on the frozen penultimate features of the face-recognition source,
    against the same network with random weights (seeded): {"face-recognition source": test accuracy, "random
    weights": test accuracy}. Fit on `train`, scored on `test` (clean labels where known)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .. import models

    truth = lambda data: (data.clean_labels if data.clean_labels is not None else data.labels).cpu().numpy()
    out = {}
    for name, state in (("face-recognition source", source.state), ("random weights", None)):
        torch.manual_seed(seed)
        net = models.create(source.config["model"], source.num_identities, in_chans=train.channels,
                            img_size=train.image_size, **source.config["model_kwargs"])
        if state is not None:
            net.load_state_dict(state)
        feats = [engine.predict(net, data, embeddings=True, device=device).embeddings.numpy() for data in (train, test)]
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(feats[0], truth(train))
        out[name] = float(probe.score(feats[1], truth(test)))
    return out


def paper_transfer_gain(column: str | None, paper_k: int) -> float | None:
    """The paper's own two-stage gain, stage 2 against stage 2: its k = `paper_k` minus its k = 0 (Tables 3-4)."""
    table = PAPER_T34.get(column or "")
    return None if not table or paper_k not in table else round(table[paper_k][1] - table[0][1], 2)


def transfer_takeaway(frame, seeds, K: int, sources: dict, paper_k: int, probe: dict | None = None,
                      column: str | None = "FER2013", probe_tol: float = 0.02) -> str:
    """The transfer section's reading. `probe` (`expression_probe`) decides the 'why': probes within `probe_tol`
    (about two binomial standard errors of an accuracy near 0.3 on 2,000 test images) read as equal."""
    per = lambda **w: float(np.mean(T.per_seed(frame, seeds, **w)))
    two, one, scratch = per(mode="two-stage", k=K, stage="stage2"), per(mode="one-stage", k=None), \
        per(mode="scratch", k=None)
    best_test_k = int(frame[(frame["mode"] == "two-stage") & (frame["stage"] == "stage2")]
                      .groupby("k")["test_accuracy"].mean().idxmax())
    helps = two > scratch
    text = (f"Chosen on validation: **k = {K}** (the paper's best: {paper_k}; the best on test here: {best_test_k}). "
            f"Test accuracy, mean over {len(seeds)} seeds: two-stage at k = {K} {two:.3f}, one-stage fine-tuning "
            f"{one:.3f}, scratch {scratch:.3f}. ")
    if helps:
        text += "Starting from the face-recognition source beats starting from random weights here. "
    else:
        text += (f"**Transfer does not help here**, although the source model recognises "
                 f"{sources['dal'].identity_accuracy:.0%} of held-out identities. A face-recognition network is "
                 "trained to give the same answer whatever the expression (each SynthFER identity is rendered with "
                 "every expression). ")
    if probe:
        src, rnd = probe["face-recognition source"], probe["random weights"]
        text += (f"A linear probe of expression on the frozen features reads {src:.3f} from the source's and "
                 f"{rnd:.3f} from the same network with random weights: ")
        if abs(src - rnd) <= probe_tol:
            text += ("face-recognition training left as much expression in its features as random weights hold, "
                     "and added none: the source gives FER no head start, which fits transfer not helping, but it "
                     "does not show that these features discard expression. ")
        elif src < rnd:
            text += ("the source's features keep less expression than random ones, so they are built to discard "
                     "what FER needs, and freezing more of them costs more. ")
        else:
            text += ("the source's features keep more expression than random ones, so discarded expression does "
                     "not explain the result; what does is not measured here. ")
    gain = paper_transfer_gain(column, paper_k)
    if gain is not None:
        text += (f"The paper's own gain from its chosen k is small (Tables 3-4, {column}: stage 2 at k = {paper_k} "
                 f"is {gain:.2f} points above k = 0).")
    return text


def table9(ablation: dict, column: str | None) -> pd.DataFrame:
    return pd.DataFrame({name: {"stage 1": np.mean([r.stages["stage1"].test_accuracy for r in runs]),
                                "stage 2": np.mean([r.final.test_accuracy for r in runs]),
                                "collapsed seeds": len(collapsed_seeds(runs, range(len(runs)))),
                                f"paper stage 1 ({column or '-'})": PAPER_T9.get(column, {}).get(name, (None, None))[0],
                                f"paper stage 2 ({column or '-'})": PAPER_T9.get(column, {}).get(name, (None, None))[1]}
                         for name, runs in ablation.items()}).T


def ablation_takeaway(final: dict) -> str:
    same = np.array(final[DALNET]) - np.array(final["DAL + cross-entropy"])
    exact = final["DAL + Softmax-MSE, exact derivative"]
    return (f"Softmax-MSE minus cross-entropy on the same DAL-Net, per seed: {', '.join(f'{x:+.4f}' for x in same)} "
            f"(identical gradients, §2: what remains is floating-point rounding that the training amplifies). "
            f"Exact derivative: {np.mean(exact):.3f} against {np.mean(final[DALNET]):.3f} with Eq. 6.")


def worthiness_report(W, web, wrong_web, w: float, b: int) -> dict:
    """How well worthiness W separates the web pool's kinds: mean W/e/d per kind, shares in the top w*b, and the
    area under the ROC curve of W for (non-faces vs faces), (wrong-label faces vs right-label faces) and (right-label
    faces vs the rest): 0.5 = no separation, 1 = W ranks every first-named candidate above every other."""
    from sklearn.metrics import roc_auc_score

    face = web.is_face.numpy()
    wrong = wrong_web.numpy()
    kind = np.where(~face, "non-face", np.where(wrong, "face, wrong web label", "face, right web label"))
    frame = pd.DataFrame({"W": W.W.numpy(), "e": W.entropy.numpy(), "d": W.diversity.numpy(), "kind": kind})
    order = torch.sort(W.W, descending=True, stable=True).indices.numpy()
    top = frame.iloc[order[: int(round(w * b))]]
    kinds = pd.DataFrame({"mean W": frame.groupby("kind")["W"].mean(), "mean e": frame.groupby("kind")["e"].mean(),
                          "mean d": frame.groupby("kind")["d"].mean(),
                          "share of pool": frame["kind"].value_counts(normalize=True),
                          f"share of the top w*b = {len(top)}": top["kind"].value_counts(normalize=True)}).fillna(0)
    Wv = frame["W"].to_numpy()
    aucs = {"non-faces vs faces": roc_auc_score(~face, Wv),
            "wrong-label faces vs right-label faces": roc_auc_score(wrong[face], Wv[face]),
            "right-label faces vs the rest": roc_auc_score(face & ~wrong, Wv)}
    return {"frame": frame, "kinds": kinds, "order": order, "top": top, "aucs": aucs}


def run_incremental_arms(d, sweep_runs: dict, K: int, P, params: dict, device=None) -> list:
    """Alg. 1 from each seed's M_0 (two-stage at k = K) for every selector of the profile and the two no-web controls
    (`CONTROL_NAMES`), side by side; params: w, lambda1, lambda2, alpha, grid, fraction."""
    cfg = finetune_config(P)
    jobs = [dict(start_state=sweep_runs[(K, s)].state, train=d.train[s], web=d.web, test=d.test, cfg=cfg,
                 selector=sel, rounds=P.rounds, b=P.b, steps=P.ail_steps, replay_train=P.replay, seed=s, **params)
            for s in d.seeds for sel in (*P.selectors, *I.CONTROLS)]
    if P.no_annotation:
        jobs += [dict(j, annotate=False) for j in jobs if j["selector"] == "worthiness"]
    runs = parallel.run_many(I.run_incremental, jobs, device=device, workers=P.workers)
    for run, job in zip(runs, jobs):
        if not job.get("annotate", True):
            run.selector = "worthiness, web labels as given"
        elif run.selector in CONTROL_NAMES:
            run.selector = CONTROL_NAMES[run.selector]
    return runs


def incremental_tables(runs, P, column: str | None) -> dict:
    rounds = pd.concat([r.frame() for r in runs], ignore_index=True)
    t10 = rounds.pivot_table(index="round", columns="selector", values="accuracy", aggfunc="mean")
    t10[f"paper ({column or '-'}, stage 2 column)"] = [PAPER_T10.get(column, [None] * 3)[r] if r < 3 else None
                                                      for r in t10.index]
    looked = rounds[(rounds["round"] > 0) & (rounds["looks"] > 0)]
    spent = looked.groupby("selector").agg(looks=("looks", "sum"), nonfaces=("nonfaces", "sum"),
                                           wrong_web_labels=("wrong_web_labels", "sum"), used=("used", "sum"),
                                           used_wrong=("used_wrong", "sum"), hard=("hard", "sum"))
    spent = spent.assign(**{"non-face share of looks": spent["nonfaces"] / spent["looks"],
                            "usable labels per look": (spent["used"] - spent["used_wrong"]) / spent["looks"]})
    share = {r.selector: float(np.mean(r.web_share)) for r in runs if r.web_share}
    spent["web share of the fine-tuning data"] = pd.Series(share)
    return {"rounds": rounds, "table10": t10, "spent": spent}


def incremental_takeaway(tables: dict, P, web) -> str:
    rounds, spent = tables["rounds"], tables["spent"]
    last = rounds[rounds["round"] == P.rounds].groupby("selector")["accuracy"].mean()
    start = float(rounds[rounds["round"] == 0]["accuracy"].mean())
    share = spent["web share of the fine-tuning data"].get("worthiness", float("nan"))
    return (f"After {P.rounds} round(s) ({P.rounds * P.b} looks per seed): "
            + ", ".join(f"{k} {v:.3f}" for k, v in last.items())
            + f" (start {start:.3f}). Web images are {share:.0%} of each worthiness round's fine-tuning data. "
            + "Non-faces take "
            + ", ".join(f"{k} {v:.0%}" for k, v in spent["non-face share of looks"].items())
            + f" of the looks (the pool holds {float((~web.is_face).float().mean()):.0%}). "
            + _web_reading(last, start))


def _web_reading(last, start: float) -> str:
    """What the controls say about the web images (means over seeds; the scorecard gives the interval)."""
    replay, whole = last.get(NO_WEB_REPLAY), last.get(NO_WEB_ALL)
    if "worthiness" not in last or (replay is None and whole is None):
        return ""
    w = float(last["worthiness"])
    selectors = [k for k in last.index if k not in (NO_WEB_REPLAY, NO_WEB_ALL)]
    text = ""
    if replay is not None:
        gap = w - float(replay)
        gap = 0.0 if abs(gap) < 5e-4 else gap                     # no "-0.000"
        text += (f"Against the same steps on a round-sized sample of training images the model has already seen "
                 f"({float(replay):.3f}), worthiness-selected web images change accuracy by {gap:+.3f}: "
                 + ("that is what the web images themselves add. " if gap > 0 else
                    "the web images add nothing a round of old images does not. "))
        small = float(replay) < start
        text += (f"A round this small {'costs' if small else 'adds'} {float(replay) - start:+.3f} against M_0 "
                 f"({start:.3f}) on its own{' (many steps on a few hundred images)' if small else ''}. ")
    if whole is not None:
        above = all(float(last[k]) < whole for k in selectors)
        text += (f"The same steps on the whole training set reach {float(whole):.3f}"
                 + (", above every selector: more distinct images, not web images, is what those steps needed."
                    if above else "."))
    return text


# ---------------------------------------------------------------------------------------------------------------
# The scorecard, declared as data
# ---------------------------------------------------------------------------------------------------------------
def claims(card: sc.Scorecard, c: dict) -> None:
    """Every claim of the paper the notebook tests (c: the notebook's results, keys named below)."""
    P, d, frame, K, final = c["P"], c["d"], c["frame"], c["K"], c["final"]
    seeds, n_test, col = d.seeds, len(d.test), d.column
    per = lambda **w: T.per_seed(frame, seeds, **w)
    pT, p9 = PAPER_T34.get(col, {}), PAPER_T9.get(col, {})
    fmt = lambda a, b: f"{a:.2f} vs {b:.2f} ({col})" if col else "-"
    setup = (f"{P.model} {P.image_size} px grey, {P.n_train} training images, {P.stage1_steps}+{P.stage2_steps} "
             f"steps, k = {K} chosen on validation")
    card.claim("Softmax-MSE trains with the softmax loss's gradient (Eq. 6)", "Eq. 6",
               sc.exact(c["eq6_vs_ce"] < 1e-6, f"max |Eq. 6 backward - cross-entropy gradient| = {c['eq6_vs_ce']:.1e} "
                        "on 256 rows", "equal within 1e-6"), "fernb's Softmax-MSE backward against autograd's CE")
    card.claim("the source model recognises faces (held-out identity accuracy >= 0.70)", ">= 0.70",
               sc.bootstrap_against(c["identity_correct"], 0.70, name="identity accuracy", reference_name="0.70"),
               f"{P.pretrain_identities} SynthFER identities, {P.pretrain_steps} steps; the regime transfer needs")

    def paired(a, b, names, **kw):
        ev = sc.paired(final[a], final[b], seeds, n_test=n_test, names=names, **kw)
        bad = [f"{n} (seeds {collapsed_seeds(c['ablation'][n], seeds)})" for n in (a, b)
               if collapsed_seeds(c["ablation"][n], seeds)]
        return sc.invalid_run(ev, "collapsed onto one class: " + "; ".join(bad)) if bad else ev

    card.claim("DAL helps: DAL vs a single ReLU, both with Softmax-MSE (Table 9, DAL alone)", "-",
               paired(DALNET, "relu + Softmax-MSE", ("DAL", "ReLU")), setup + "; one source model per activation")
    if "maxout + Softmax-MSE" in final:
        card.claim("DAL helps: DAL vs Maxout alone, both with Softmax-MSE", "-",
                   paired(DALNET, "maxout + Softmax-MSE", ("DAL", "Maxout")), setup)
    else:
        card.claim("DAL helps: DAL vs Maxout alone, both with Softmax-MSE", "-",
                   sc.not_measurable("Maxout-only arm not run in this profile", "profile scope (gpu and paper run it)"))
    card.claim("Softmax-MSE helps: Softmax-MSE vs cross-entropy on the same DAL-Net (Table 9, loss alone)", "-",
               paired(DALNET, "DAL + cross-entropy", ("Softmax-MSE", "CE"), digits=4),
               "same seeds, same gradients up to rounding (§2)")
    card.claim("Table 9: DAL-Net beats DAL-Net without DAL and Softmax-MSE",
               fmt(*[p9.get(n, (0, 0))[1] for n in (DALNET, "relu + cross-entropy (without DAL and Softmax-MSE)")])
               if p9 else "-", paired(DALNET, "relu + cross-entropy (without DAL and Softmax-MSE)",
                                      ("DAL-Net", "ReLU + CE")), setup)
    card.claim("the softmax gradient (Eq. 6) beats the exact derivative of Eq. 5", "-",
               paired(DALNET, "DAL + Softmax-MSE, exact derivative", ("Eq. 6", "exact")),
               "the reason the paper gives for Eq. 6")
    best2 = per(mode="two-stage", k=K, stage="stage2")
    card.claim(f"stage 2 beats stage 1 (Tables 3-4, at the chosen k = {K})", fmt(pT[K][1], pT[K][0]) if K in pT else "-",
               sc.paired(best2, per(mode="two-stage", k=K, stage="stage1"), seeds, n_test=n_test,
                         names=("stage 2", "stage 1")), f"stage 2 adds {P.stage2_steps} steps at lr2")
    paper_k = c["paper_k"]
    card.claim("two-stage transfer beats one-stage fine-tuning at the same step budget",
               fmt(pT[paper_k][1], pT[0][1]) + f" (paper: k={paper_k} vs k=0, both stage 2)" if pT else "-",
               sc.paired(best2, per(mode="one-stage", k=None), seeds, n_test=n_test, names=("two-stage", "one-stage")),
               setup + ("; with k = 0 chosen, nothing is frozen and the two differ only by stage 2's smaller rate"
                        if K == 0 else ""))
    card.claim("face-recognition pre-training helps: two-stage transfer vs training from scratch", "-",
               sc.paired(best2, per(mode="scratch", k=None), seeds, n_test=n_test, names=("two-stage", "scratch")),
               f"source: {P.pretrain_identities} SynthFER identities, held-out identity accuracy "
               f"{c['identity_accuracy']:.3f}")
    sweep = {k: per(mode="two-stage", k=k, stage="stage2") for k in P.ks}
    card.claim(f"the paper's k = {paper_k} is among the best frozen-layer counts (Tables 3-4)",
               "k = 3 (FER2013), 4 (SFEW 2.0)", sc.optimum(sweep, seeds, paper_k, n_test=n_test, name="k"),
               "stage 2 test accuracy per k")
    rounds = c["incremental"]["rounds"]
    acc = lambda sel, t: rounds[(rounds["selector"] == sel) & (rounds["round"] == t)].set_index("seed") \
        .loc[seeds, "accuracy"].tolist()
    p10 = PAPER_T10.get(col)
    for t in range(1, P.rounds + 1):
        card.claim(f"active incremental round {t} adds accuracy (Table 10)",
                   f"{p10[t]:.2f} vs {p10[t - 1]:.2f} ({col})" if p10 and t < 3 else "-",
                   sc.paired(acc("worthiness", t), acc("worthiness", t - 1), seeds, n_test=n_test,
                             names=(f"round {t}", f"round {t - 1}")), f"{P.b} looks per round, {P.ail_steps} steps")
    if NO_WEB_REPLAY in set(rounds["selector"]):
        card.claim("the web images are what the rounds add: worthiness vs the same steps on as many training "
                   "images the model has seen", "-",
                   sc.paired(acc("worthiness", P.rounds), acc(NO_WEB_REPLAY, P.rounds), seeds, n_test=n_test,
                             names=("worthiness", "round-sized replay")),
                   "the paper has no such control; both rounds take the same steps on sets of the same expected size")
    for other in [s for s in P.selectors if s != "worthiness"]:
        card.claim(f"worthiness selection beats {other} selection at equal annotation cost", "-",
                   sc.paired(acc("worthiness", P.rounds), acc(other, P.rounds), seeds, n_test=n_test,
                             names=("worthiness", other)), f"{P.rounds * P.b} looks per seed each")
    looked = rounds[(rounds["round"] > 0) & (rounds["looks"] > 0)]
    nf = lambda sel: (looked[looked["selector"] == sel].groupby("seed")[["nonfaces", "looks"]].sum().loc[seeds]
                      .pipe(lambda f: (f["nonfaces"] / f["looks"]).tolist()))
    if "random" in P.selectors:
        card.claim("worthiness spends fewer looks on non-faces than random selection", "-",
                   sc.paired(nf("worthiness"), nf("random"), seeds, direction="<", names=("worthiness", "random")),
                   "share of the looks that were rejected non-faces")
    if P.no_annotation:
        card.claim("the expert's labels beat the web labels as given (same worthiness selection)", "-",
                   sc.paired(acc("worthiness", P.rounds), acc("worthiness, web labels as given", P.rounds), seeds,
                             n_test=n_test, names=("annotated", "web labels")), "")
    card.claim("67.08 % on FER2013 and 51.90 % on SFEW 2.0 (Tables 10-11)", "67.08 / 51.90",
               sc.not_measurable(f"{d.dataset} test accuracy {float(np.mean(acc('worthiness', P.rounds))):.3f}",
                                 "needs FER2013 / SFEW 2.0, a CASIA-WebFace source model and the UFEDW web pool"))
    card.metric("dalnet_accuracy", float(np.mean(best2)))
    card.metric("scratch_accuracy", float(np.mean(per(mode="scratch", k=None))))
    card.metric("ail_final_accuracy", float(np.mean(acc("worthiness", P.rounds))))
    card.metric("identity_accuracy", c["identity_accuracy"])
    for name, value in c["aucs"].items():
        card.context[f"worthiness AUC, {name}"] = round(float(value), 4)


def identity_correct(source, identities, device=None) -> np.ndarray:
    """Per-image correctness of the source model on its held-out identity images (the split
    `transfer.pretrain_face_recognition` holds out), for a bootstrap of its identity accuracy."""
    from ..data.splits import label_fraction_mask
    from .. import models

    held = label_fraction_mask(identities.labels, 0.1, seed=source.config["seed"])
    val = identities.subset(held)
    net = models.create(source.config["model"], identities.num_classes, in_chans=identities.channels,
                        img_size=identities.image_size, **source.config["model_kwargs"])
    net.load_state_dict(source.state)
    pred = engine.predict(net, val, device=device).labels
    return (pred == val.labels.cpu()).numpy().astype(float)


# ---------------------------------------------------------------------------------------------------------------
# Sections 1-2: the network and the loss, computed
# ---------------------------------------------------------------------------------------------------------------
def layer_tables(P, num_classes: int):
    """Table 1's network (144 px) and the one trained here, as layer tables, and whether the widths match."""
    from .. import models
    from ..models import dalnet as D

    full = models.create("dalnet", 7, in_chans=1, img_size=144)
    here = models.create(P.model, num_classes, in_chans=1, img_size=P.image_size, **P.model_kwargs)
    match = [b.conv.out_channels for b in full.blocks] == [c for c, _ in D.TABLE1["convs"]] and \
        full.ip1.out_features == D.TABLE1["ip1"]
    return D.layer_table(full), D.layer_table(here), match, here


def softmax_mse_demo(classes, seed: int = 0) -> dict:
    """Eq. 3-6 on one face whose true class is fear (index 4), and on 256 random logit rows: the Eq. 6 backward
    against autograd's cross-entropy gradient, the exact derivative's direction, and gradcheck of the exact one."""
    from ..losses.softmax_mse import cross_entropy_gradient, expected_class_index, softmax_mse

    logits, target = torch.tensor([[2.0, 0.5, -1.0, 0.3, 1.2, -0.4, 0.1]]), torch.tensor([4])
    grads = {}
    for name in ("softmax", "mse"):
        z = logits.clone().requires_grad_(True)
        softmax_mse(z, target, name).backward()
        grads[name] = z.grad[0]
    example = pd.DataFrame({"p (Eq. 3)": torch.softmax(logits, 1)[0], "Eq. 6 gradient": grads["softmax"],
                            "cross-entropy gradient": cross_entropy_gradient(logits, target)[0],
                            "exact derivative of Eq. 5": grads["mse"]}, index=list(classes)[:7]).T
    gen = torch.Generator().manual_seed(seed)
    batch, labels = torch.randn(256, 7, generator=gen) * 3, torch.randint(7, (256,), generator=gen)
    zb, zx = batch.clone().requires_grad_(True), batch.clone().requires_grad_(True)
    softmax_mse(zb, labels, "softmax").backward()
    softmax_mse(zx, labels, "mse").backward()
    cosine = torch.nn.functional.cosine_similarity(zb.grad, zx.grad, dim=1)
    check = torch.autograd.gradcheck(lambda t: softmax_mse(t, labels[:8], "mse"),
                                     (batch[:8].double().requires_grad_(True),))
    y_hat = float(expected_class_index(logits)[0])
    return {"example": example, "grads": grads, "y_hat": y_hat, "value": (y_hat - 4) ** 2, "gradcheck": check,
            "eq6_vs_ce": float((zb.grad - cross_entropy_gradient(batch, labels)).abs().max()),
            "cosine_median": float(cosine.median()), "opposite": float((cosine < 0).float().mean())}


def softmax_mse_takeaway(demo: dict) -> str:
    return (f"Here $\\hat y$ = {demo['y_hat']:.2f} against $y$ = 4, so Eq. 5's value is {demo['value']:.3f}. On 256 "
            f"random logit rows the Eq. 6 backward differs from autograd's cross-entropy gradient by at most "
            f"**{demo['eq6_vs_ce']:.1e}**, while the exact derivative points elsewhere (median cosine with Eq. 6: "
            f"{demo['cosine_median']:.2f}; {demo['opposite']:.0%} of rows point the opposite way). `gradcheck` of "
            f"the exact backward passes: {demo['gradcheck']}. So **training with Softmax-MSE is training with "
            f"cross-entropy**; only the reported loss value differs. §6 measures both facts' consequences.")


def first_layer_maps(source, P, face):
    """Conv1 of the source model on one face, through a ReLU and through MFM; the share of zeros / negatives."""
    from .. import models
    from ..data import augment as aug
    from ..models import dalnet as D

    net = models.create(P.model, source.num_identities, in_chans=1, img_size=P.image_size, activation="dal",
                        **P.model_kwargs)
    net.load_state_dict(source.state)
    net.eval()
    with torch.no_grad():
        conv1 = net.blocks[0].conv(aug.to_input(face[None]))[0]
    mfm = D.max_feature_map(conv1[None])[0]
    return {"Conv1 → ReLU": torch.relu(conv1), "Conv1 → MFM": mfm}, float((torch.relu(conv1) == 0).float().mean()), \
        float((mfm < 0).float().mean())


def load_start_model(state: dict, P, num_classes: int, device=None):
    """M_0 (a two-stage run's final weights) as an eval-mode DAL-Net on `device`."""
    from .. import models

    net = models.create(P.model, num_classes, in_chans=1, img_size=P.image_size, activation="dal", **P.model_kwargs)
    net.load_state_dict(state)
    return net.to(engine.resolve_device(device)).eval()


def reading(counts: dict, n_claims: int, P, d, sources: dict, final: dict, wall: float, cpu: float) -> str:
    """The 'reading this scorecard' paragraph, formatted from the run."""
    d_loss = np.array(final[DALNET]) - np.array(final["DAL + cross-entropy"])
    return f"""
**Reading this scorecard.** {counts["holds"]} claims hold, {counts["does not hold"]} do not, {counts["inconclusive"]}
are inconclusive (of {n_claims}).

- *Regime.* {P.model} at {P.image_size} px grey, {P.n_train} training images per seed, {P.stage1_steps} + {P.stage2_steps}
  fine-tuning steps, a source model trained for {P.pretrain_steps} steps on {P.pretrain_identities} SynthFER identities
  (held-out identity accuracy {sources["dal"].identity_accuracy:.3f}). The paper fine-tunes the full DAL-Net at 144 px
  from a CASIA-WebFace model on FER2013's 28,709 images. The one-stage and scratch controls get the same step budget,
  and the active-learning selectors and the two no-web controls the same number of steps (the selectors also the same
  number of looks). The gpu and paper profiles can change any row.
- *Softmax-MSE.* Its backward is the cross-entropy gradient (exact check), so Softmax-MSE against cross-entropy
  measures rounding noise (per-seed differences {", ".join(f"{x:+.4f}" for x in d_loss)}).
- *Web pool.* SynthFER's web pool has {d.web_noise:.0%} wrong labels and {d.web_nonfaces:.0%} non-faces; the annotator is
  exact (it knows the {d.truth} of the faces). The paper reports no random-selection or no-web control; those rows
  are this notebook's.
- *Seeds.* {len(d.seeds)} seeds; the source model and the test set are shared by all of them, so the intervals see
  training and subset noise, not source-model noise.
- *Time.* {wall:.0f} s wall, {cpu:.0f} s CPU time of the notebook's own process (worker processes not counted) on
  {P.name} profile settings.
"""


def auc_reading(aucs: dict, kinds: pd.DataFrame | None = None, margin: float = 0.05) -> str:
    """The worthiness AUCs in words: which way W ranks each pair of kinds (within `margin` of 0.5: no separation).
    Worthiness (Eq. 9) is meant to rank high the candidates worth an expert's look; a non-face is worth none."""
    def way(key, first, second):
        v = aucs[key]
        if abs(v - 0.5) <= margin:
            return f"W does not separate {first} from {second} ({v:.3f})"
        return f"W ranks {first} {'above' if v > 0.5 else 'below'} {second} ({v:.3f})"

    parts = [way("non-faces vs faces", "non-faces", "faces"),
             way("wrong-label faces vs right-label faces", "faces with a wrong web label", "right-label faces"),
             way("right-label faces vs the rest", "right-label faces", "the rest")]
    text = "; ".join(parts) + "."
    if aucs["non-faces vs faces"] > 0.5 + margin:
        text += (" Ranking non-faces above faces means worthiness spends more of its looks on candidates that yield "
                 "no label")
        if kinds is not None and "non-face" in kinds.index:
            faces = kinds.drop(index="non-face")
            text += (f": a non-face's patches are less certain (mean entropy e {kinds.loc['non-face', 'mean e']:.3f} "
                     f"against {faces['mean e'].min():.3f}-{faces['mean e'].max():.3f} for faces), and Eq. 9 "
                     "rewards uncertainty")
        text += "."
    return text
