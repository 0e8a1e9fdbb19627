"""Notebook 03 (Hu et al.: SCL + CUEM + ARM) as data and calls: its data, the shared warm starts, the job list of
every run, the regime numbers, the tables and the scorecard claims. The notebook explains; this computes.

The regime (what the cpu profile is sized for)
----------------------------------------------
* The paper fine-tunes an ImageNet-pretrained ResNet-18. Nothing downloads here, so each seed first trains a
  **shared warm start**: the ARM baseline with cross-entropy on that seed's given (noisy) labels, `warm_epochs` at
  a constant rate, once, checkpointed and loaded on a re-run. Every configuration of that seed continues from it for
  `epochs` with its own components, exactly as Table II's rows continue from one pre-trained backbone. Measured on
  the 2-core machine (resnet_mini_arm, 48 px, 3,000 images with 20 % annotator noise, seed 0): warm start 0.60; from
  it, 5 epochs of the baseline 0.67 and of + SCL 0.67 (5-NN on the SCL features 0.55-0.57), where the same 5 epochs
  from random weights leave every arm near 0.3.
* The learning rate decays by the paper's 10 % per epoch *mapped onto the run like alpha* (per paper epoch of 100),
  so the run ends at 0.9^100 of the start rate, as the paper's does.
* The queue holds 1,024 keys (paper: 8,192 of RAF-DB's 12,271 images), so it is full after 16 steps and L_sup reads
  a full queue for most of the steps where lambda > beta (the table in section 3 counts them).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from .. import parallel
from .. import scorecard as sc
from ..data import load_splits, splits
from ..data.sources import has_clean_labels
from . import cuem, scl

CITATION = ("Lin Hu, Yujie Yang, Chen Zu, Qixiang Zhang, Wu Xi, Jiliu Zhou, Yan Wang. *Facial Expression Recognition "
            "with Supervised Contrastive Learning and Uncertainty Estimation* (papers/002)")
BASE, SCL, CUEM, PROPOSED, PLAIN = ("baseline: ARM (CE)", "+ SCL", "+ CUEM", "+ SCL + CUEM (proposed)",
                                    "plain pooling (CE)")
UPPER = "upper bound: ARM (CE) on clean labels"
# Table II (AffectNet) and the proposed / baseline rows of Table I (RAF-DB, FERPlus)
PAPER = {"affectnet": {BASE: 59.45, CUEM: 60.21, SCL: 60.44, PROPOSED: 60.94},
         "rafdb": {BASE: 92.05, PROPOSED: 92.41}, "ferplus": {BASE: 87.50, PROPOSED: 88.56}}
ARM_PAPER = {"rafdb": "Res18+ARM 92.05; no plain-pooling number", "affectnet": "Res18+ARM 59.45; no plain-pooling "
             "number", "ferplus": "Res18+ARM 87.50; no plain-pooling number"}
FIG4_CLASSES = ("surprise", "disgust", "happiness", "neutral")


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
def load_data(P, dataset: str = "synthfer", data_root=None, seed: int = 0, noise_rate=None,
              noise_kind: str = "annotator") -> SimpleNamespace:
    """Per seed (seed, seed + 1, ...): its own subset, noise, initialization and batches. `noise_rate` None: the
    profile's on SynthFER, 0 on real data. The noise-level sets of the theta figure are drawn on the first seed."""
    d = SimpleNamespace(dataset=dataset, seeds=[seed + s for s in P.seeds], noise_kind=noise_kind)
    d.noise = (P.noise_rate if dataset == "synthfer" else 0.0) if noise_rate is None else float(noise_rate)
    d.data = {}
    for s in d.seeds:
        train, val, test = load_splits(dataset, data_root, size=P.image_size, channels=P.channels, seed=s,
                                       n_train=P.n_train, n_val=P.n_val, n_test=P.n_test)
        d.data[s] = {"train": _noisy(train, d.noise, noise_kind, s), "clean": train, "val": val, "test": test}
    d.S0 = d.seeds[0]
    d.train0, d.test0 = d.data[d.S0]["train"], d.data[d.S0]["test"]
    d.K, d.C, d.classes = d.train0.num_classes, d.train0.channels, d.train0.classes
    d.truth = "clean labels" if has_clean_labels(d.train0) else "annotators' labels"
    d.noise_sets = {d.noise: d.train0}
    for rate in P.noise_levels:
        if rate != d.noise:
            d.noise_sets[rate] = _noisy(d.data[d.S0]["clean"], rate, noise_kind, d.S0)
    return d


def _noisy(train, rate: float, kind: str, seed: int):
    return splits.with_label_noise(train, rate, kind=kind, seed=seed) if rate > 0 else train.with_labels(train.labels)


def describe_data(d) -> str:
    t = d.train0
    realised = float((t.labels != t.clean_labels).float().mean()) if t.clean_labels is not None else float("nan")
    return (f"**Data.** {d.dataset}: {len(t)} training, {len(d.data[d.S0]['val'])} validation and {len(d.test0)} "
            f"test images per seed ({t.image_size} px, seeds {d.seeds}); {d.noise:.0%} {d.noise_kind} label noise "
            f"on train (realised on seed {d.S0}: {realised:.1%} against the {d.truth}); split rule: "
            f"{d.test0.info.get('split_rule', '-')}. The θ figure also uses seed {d.S0}'s training set at "
            f"{', '.join(f'{r:.0%}' for r in sorted(d.noise_sets))} noise.")


# ---------------------------------------------------------------------------------------------------------------
# Shared warm starts: one per (noise rate, seed), trained once, loaded when its checkpoint exists
# ---------------------------------------------------------------------------------------------------------------
def common_kwargs(P, params: dict) -> dict:
    """What every run of the notebook shares (params: the notebook's temperature, theta, alpha, beta, lr_decay,
    cuem_start)."""
    return dict(model_name=P.model, img_size=P.image_size, epochs=P.epochs, batch_size=P.batch_size, lr=P.lr,
                weight_decay=1e-4, queue_size=P.queue_size, decay_in_paper_epochs=True, progress=False, **params)


def warm_config(P) -> dict:
    return dict(model_name=P.model, model_kwargs=dict(P.model_kwargs), img_size=P.image_size, epochs=P.warm_epochs,
                batch_size=P.batch_size, lr=P.warm_lr, lr_decay=1.0, weight_decay=1e-4, use_scl=False,
                use_cuem=False, progress=False)


def _fingerprint(cfg: dict, data) -> str:
    text = json.dumps(cfg, sort_keys=True, default=str) + data.fingerprint()
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def warm_starts(d, P, device=None, checkpoint_dir=None) -> dict:
    """{(noise rate, seed, pooling): {"state", "accuracy", "seconds"}}: the baseline trained with cross-entropy on
    the given labels for P.warm_epochs: with ARM for every seed of the tables (and seed S0 at the other noise levels),
    and with plain average pooling for the plain-pooling control (its classifier reads 256 pooled values, ARM's
    (2h - 3)^2, so it cannot share ARM's). Missing ones are trained side by side (fernb.parallel.run_many) and saved
    to `checkpoint_dir`."""
    wanted = {(d.noise, s, pool): (d.data[s]["train"], d.data[s]["test"], s) for s in d.seeds
              for pool in ("arm", "avg")}
    wanted.update({(r, d.S0, "arm"): (data, d.test0, d.S0) for r, data in d.noise_sets.items() if r != d.noise})
    out, todo = {}, []
    for key, (train, test, s) in wanted.items():
        cfg = warm_config(P)
        if key[2] == "avg":
            cfg["model_kwargs"] = {**cfg["model_kwargs"], "pooling": "avg"}
        path = None if checkpoint_dir is None else \
            Path(checkpoint_dir) / f"warm-{key[2]}-{key[0]:g}-{s}-{_fingerprint({**cfg, 'seed': s}, train)}.pt"
        if path is not None and path.exists():
            out[key] = torch.load(path, weights_only=False)
        else:
            todo.append((key, path, dict(cfg, train=train, test=test, seed=s, keep_model_state=True)))
    runs = parallel.run_many(scl.run_job, [job for _, _, job in todo], device=device, workers=P.workers)
    for (key, path, _), run in zip(todo, runs):
        out[key] = {"state": run["model_state"], "accuracy": run["accuracy"], "seconds": run["seconds"]}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(out[key], path)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The runs: Table II, its controls, the Fig. 5 sweeps and the noise levels of the theta figure
# ---------------------------------------------------------------------------------------------------------------
def configs(P, noise: float) -> dict:
    mk = dict(P.model_kwargs)
    out = {PLAIN: dict(model_kwargs={**mk, "pooling": "avg"}, use_scl=False, use_cuem=False),
           BASE: dict(model_kwargs=mk, use_scl=False, use_cuem=False),
           CUEM: dict(model_kwargs=mk, use_scl=False, use_cuem=True),
           SCL: dict(model_kwargs=mk, use_scl=True, use_cuem=False),
           PROPOSED: dict(model_kwargs=mk, use_scl=True, use_cuem=True)}
    if noise > 0:
        out[UPPER] = dict(model_kwargs=mk, use_scl=False, use_cuem=False)
    return out


# what a run keeps besides its accuracy: test features (k-NN), train similarities (u, theta, S_cos gap), weights
EXTRA = {BASE: dict(embed_test=True, batch_eval=(1, 256)), SCL: dict(embed_test=True, similarity_on_train=True),
         CUEM: dict(with_val=True), PROPOSED: dict(with_val=True, similarity_on_train=True)}
FIRST = {BASE: dict(keep_state=True), SCL: dict(keep_state=True), PROPOSED: dict(keep_state=True)}


def sweep_values(P, alpha: float, beta: float) -> tuple[list, list]:
    return sorted(set(P.alphas) | {alpha}), sorted(set(P.betas) | {beta})


def build_jobs(d, P, params: dict, warm: dict) -> tuple[list, list]:
    """(keys, jobs) for fernb.parallel.run_many(scl.run_job): ("table", config, seed), ("alpha", a, seed),
    ("beta", b, seed) and ("noise", rate, S0), each continuing from its (noise, seed) warm start."""
    common, conf = common_kwargs(P, params), configs(P, d.noise)
    alphas, betas = sweep_values(P, params["alpha"], params["beta"])
    keys, jobs = [], []

    def add(key, config, train, s, rate, **extra):
        extra = dict(extra)
        val = d.data[s]["val"] if extra.pop("with_val", False) else None
        keys.append(key)
        pool = "avg" if config == PLAIN else "arm"
        jobs.append(dict(common, **{**conf[config], **extra}, train=train, val=val, test=d.data[s]["test"], seed=s,
                         init_state=warm[(rate, s, pool)]["state"]))

    for s in d.seeds:
        for name in conf:
            add(("table", name, s), name, d.data[s]["clean" if name == UPPER else "train"], s, d.noise,
                **EXTRA.get(name, {}), **(FIRST.get(name, {}) if s == d.S0 else {}))
        for a in alphas:
            if a != params["alpha"]:
                add(("alpha", a, s), PROPOSED, d.data[s]["train"], s, d.noise, alpha=a)
        for b in betas:
            if b != params["beta"]:
                add(("beta", b, s), PROPOSED, d.data[s]["train"], s, d.noise, beta=b)
    for rate, data in d.noise_sets.items():
        if rate != d.noise:
            add(("noise", rate, d.S0), SCL, data, d.S0, rate, similarity_on_train=True)
    return keys, jobs


def run_all(keys, jobs, P, device=None) -> dict:
    return dict(zip(keys, parallel.run_many(scl.run_job, jobs, device=device, workers=P.workers,
                                            progress=P.progress)))


def accuracies(R, d, names) -> dict:
    return {name: [R[("table", name, s)]["accuracy"] for s in d.seeds] for name in names}


# ---------------------------------------------------------------------------------------------------------------
# Is each mechanism acting? (section 1's regime table)
# ---------------------------------------------------------------------------------------------------------------
def knn_accuracy(embeddings, labels, k: int = 5) -> float:
    """5-fold cross-validated k-NN accuracy of `embeddings` (scikit-learn)."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return float(cross_val_score(KNeighborsClassifier(k), np.asarray(embeddings), np.asarray(labels), cv=5).mean())


def similarity_gap(similarity: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean S_cos of each image to its own class's queue entries and to the other classes' (NaN classes skipped),
    and their gap: 0 when the contrastive space does not separate classes (a collapsed space)."""
    y = labels.reshape(-1).long()
    own = similarity.gather(1, y[:, None]).squeeze(1)
    others = similarity.clone()
    others.scatter_(1, y[:, None], float("nan"))
    other = others.nanmean(dim=1)
    return {"own": float(own.nanmean()), "other": float(other.nanmean()), "gap": float((own - other).nanmean())}


def queue_share(history: dict) -> float:
    """Share of the steps with lambda > beta (L_sup on) whose queue was full."""
    on = history.get("sup_on_steps", 0)
    return history.get("sup_on_full_queue_steps", 0) / on if on else float("nan")


def regime_table(R, d, warm: dict) -> pd.DataFrame:
    """One row per seed: the warm start, the arms, 5-NN of CE and SCL features, the S_cos gap, the queue, CUEM."""
    rows = {}
    for s in d.seeds:
        scl_run, prop = R[("table", SCL, s)], R[("table", PROPOSED, s)]
        labels = d.data[s]["train"].clean_labels if d.truth == "clean labels" else d.data[s]["train"].labels
        y_test = d.data[s]["test"].labels.numpy()
        gap = similarity_gap(scl_run["similarity"], labels)
        rows[s] = {"warm start": warm[(d.noise, s, "arm")]["accuracy"], "baseline": R[("table", BASE, s)]["accuracy"],
                   "+ SCL": scl_run["accuracy"], "proposed": prop["accuracy"],
                   "5-NN, CE features": knn_accuracy(R[("table", BASE, s)]["embeddings"], y_test),
                   "5-NN, SCL features": knn_accuracy(scl_run["embeddings"], y_test),
                   "S_cos own class": gap["own"], "S_cos other classes": gap["other"],
                   "L_sup steps with a full queue": queue_share(scl_run["history"]),
                   "CUEM relabels (proposed)": prop["relabeled"], "relabel precision": prop["relabel_precision"],
                   "CUEM relabels (+ CUEM)": R[("table", CUEM, s)]["relabeled"]}
    t = pd.DataFrame(rows).T
    t.index.name = "seed"
    t["S_cos gap"] = t["S_cos own class"] - t["S_cos other classes"]
    return t


MIN_GAP, MIN_QUEUE_SHARE = 0.01, 0.5


def scl_acting(t: pd.DataFrame) -> tuple[bool, str]:
    """Whether SCL acted in every seed: S_cos gap above MIN_GAP (the space separates classes) and L_sup reading a
    full queue in at least MIN_QUEUE_SHARE of the steps it was on. Returns (acting, what failed)."""
    bad = []
    if (t["S_cos gap"] <= MIN_GAP).any():
        bad.append(f"S_cos gap <= {MIN_GAP} in seeds {t.index[t['S_cos gap'] <= MIN_GAP].tolist()}")
    share = t["L_sup steps with a full queue"]
    if (share.isna() | (share < MIN_QUEUE_SHARE)).any():
        bad.append(f"L_sup read a full queue in under {MIN_QUEUE_SHARE:.0%} of its steps in seeds "
                   f"{t.index[share.isna() | (share < MIN_QUEUE_SHARE)].tolist()}")
    return not bad, "; ".join(bad)


def regime_text(t: pd.DataFrame, K: int) -> str:
    m = t.mean()
    acting, why = scl_acting(t)
    idle_cuem = t.index[(t["CUEM relabels (proposed)"] == 0) | (t["CUEM relabels (+ CUEM)"] == 0)].tolist()
    return (f"Mean over {len(t)} seeds: warm start {m['warm start']:.3f}, baseline {m['baseline']:.3f}, + SCL "
            f"{m['+ SCL']:.3f}, proposed {m['proposed']:.3f} (chance {1 / K:.3f}). "
            + ("**SCL shapes the space**" if acting else f"**SCL did not act** ({why})")
            + f": 5-NN on its features {m['5-NN, SCL features']:.3f} (CE features {m['5-NN, CE features']:.3f}); a "
            f"training image is {m['S_cos gap']:+.3f} more similar to its own class's queue entries than to the "
            f"others' ({m['S_cos own class']:.3f} vs {m['S_cos other classes']:.3f}; 0 would be a collapsed space); "
            f"L_sup read a full queue in {m['L_sup steps with a full queue']:.0%} of the steps it was on. "
            + ("**CUEM acts**" if not idle_cuem else f"**CUEM changed no label in seeds {idle_cuem}**")
            + f": {int(t['CUEM relabels (proposed)'].sum())} relabels in the proposed runs "
            f"({int(t['CUEM relabels (+ CUEM)'].sum())} in + CUEM), precision {m['relabel precision']:.2f} against "
            f"the clean labels.")


# ---------------------------------------------------------------------------------------------------------------
# Padding erosion (section 2): which edges of the last map are eroded
# ---------------------------------------------------------------------------------------------------------------
def erosion_summary(last: torch.Tensor) -> dict:
    """Mean distance from the padding-free value of the last map's top row, bottom row, left and right columns and
    interior (corners count in both their row and column)."""
    m = torch.as_tensor(last, dtype=torch.float32)
    inner = m[1:-1, 1:-1]
    return {"top row": float(m[0].mean()), "bottom row": float(m[-1].mean()), "left column": float(m[:, 0].mean()),
            "right column": float(m[:, -1].mean()),
            "interior": float(inner.mean()) if inner.numel() else float("nan")}


def erosion_text(summary: dict, side: int) -> str:
    """The reading of `erosion_summary`: the edges eroded more than the interior (and at least half the worst), and
    whether the erosion is one-sided (top and left above bottom and right by a third) or an even ring."""
    edges = {k: v for k, v in summary.items() if k != "interior"}
    worst, inner = max(edges.values()), summary["interior"]
    eroded = [k for k, v in edges.items() if v >= 0.5 * worst and (np.isnan(inner) or v > inner)]
    first, last = (summary["top row"] + summary["left column"]) / 2, (summary["bottom row"] + summary["right column"]) / 2
    if first > 4 / 3 * last:
        shape = ("one-sided: with stride-2 convolutions that pad one pixel on each side, the sampling grid starts on "
                 "the top and left padding and may end inside the image on the bottom and right.")
    elif last > 4 / 3 * first:
        shape = "one-sided, toward the bottom and right."
    else:
        shape = "an even ring around the map."
    where = " and ".join(eroded) if eroded else "no edge (the interior is as far off as the border)"
    return (f"On the {side} x {side} map that pooling reads, the cells furthest from their padding-free value lie "
            f"along the **{where}** (" + ", ".join(f"{k} {v:.0%}" for k, v in summary.items())
            + f"). The erosion is {shape}")


# ---------------------------------------------------------------------------------------------------------------
# Table II and Fig. 5
# ---------------------------------------------------------------------------------------------------------------
def table2(acc: dict, d, n_test: int) -> tuple[pd.DataFrame, dict]:
    paper_here = PAPER.get(d.dataset, {})
    diffs = {name: sc.paired(acc[name], acc[BASE], d.seeds, n_test=n_test, names=(name, "baseline"))
             for name in acc if name != BASE}
    t = pd.DataFrame({"accuracy": {k: np.mean(v) for k, v in acc.items()},
                      "std": {k: np.std(v, ddof=1) if len(v) > 1 else np.nan for k, v in acc.items()},
                      "per seed": {k: " ".join(f"{x:.3f}" for x in v) for k, v in acc.items()}})
    t["vs baseline [95 % CI]"] = [f"{diffs[k].estimate:+.3f} [{diffs[k].low:+.3f}, {diffs[k].high:+.3f}]"
                                  if k in diffs else "" for k in acc]
    t[f"paper ({d.dataset})"] = [paper_here.get(k, "-") for k in acc]
    t["paper (AffectNet)"] = [PAPER["affectnet"].get(k, "-") for k in acc]
    return t, diffs


def table2_text(t: pd.DataFrame, diffs: dict, changes: dict) -> str:
    order = t["accuracy"].sort_values(ascending=False)
    p, a = diffs[PROPOSED], diffs[PLAIN]
    return (f"Highest mean: **{order.index[0]}** ({order.iloc[0]:.3f}); baseline {t.loc[BASE, 'accuracy']:.3f}, "
            f"proposed {t.loc[PROPOSED, 'accuracy']:.3f} (paired difference {p.estimate:+.3f} [{p.low:+.3f}, "
            f"{p.high:+.3f}]); ARM vs plain pooling {-a.estimate:+.3f} [{-a.high:+.3f}, {-a.low:+.3f}]. CUEM "
            f"changed {sum(changes.values())} labels in the + CUEM and proposed runs of {len(changes)} seeds. "
            f"+ CUEM trains no projection head: without L_sup nothing sends it a gradient, so CUEM reads a fixed "
            f"random projection of the CE trunk (what Table II's '+ CUEM without SCL' row implies).")


def sweep(R, d, kind: str, values, current) -> dict:
    return {v: [R[("table", PROPOSED, s)]["accuracy"] if v == current else R[(kind, v, s)]["accuracy"]
                for s in d.seeds] for v in values}


def class_gain(R, s, classes) -> tuple[float, float]:
    """Mean per-class accuracy of the proposed and the baseline run on Fig. 4's four classes."""
    idx = [classes.index(c) for c in FIG4_CLASSES if c in classes]
    cm_p, cm_b = (np.asarray(R[("table", n, s)]["confusion"]) for n in (PROPOSED, BASE))
    rate = lambda cm: np.diag(cm)[idx] / np.clip(cm.sum(1)[idx], 1, None)
    return float(rate(cm_p).mean()), float(rate(cm_b).mean())


# ---------------------------------------------------------------------------------------------------------------
# The scorecard, declared as data
# ---------------------------------------------------------------------------------------------------------------
def _paper_number(dataset: str, key, fallback="-"):
    if dataset in PAPER:
        return PAPER[dataset].get(key, fallback)
    return f"- (AffectNet: {PAPER['affectnet'][key]})" if key in PAPER["affectnet"] else fallback


def claims(card: sc.Scorecard, c: dict) -> None:
    """Every claim the notebook tests (c: the notebook's results, keys named below). A comparison whose mechanism
    stayed idle (CUEM changed nothing, L_sup never read a full queue) keeps its numbers but not its verdict."""
    P, d, R, acc, params = c["P"], c["d"], c["R"], c["acc"], c["params"]
    seeds, n_test, ds = d.seeds, len(d.test0), d.dataset
    setup = (f"{P.model}, warm start {P.warm_epochs} epochs + {P.epochs} epochs, {len(d.train0)} train images, "
             f"{d.noise:.0%} {d.noise_kind} noise")
    changes = {s: R[("table", CUEM, s)]["relabeled"] + R[("table", PROPOSED, s)]["relabeled"] for s in seeds}
    cuem_idle = [s for s in seeds if R[("table", CUEM, s)]["relabeled"] == 0 or
                 R[("table", PROPOSED, s)]["relabeled"] == 0]
    knn, regime = c["knn"], c["regime"]
    acting, why_not = scl_acting(regime)

    def cuem_row(ev):
        return sc.invalid_run(ev, f"CUEM changed no label in seeds {cuem_idle}") if cuem_idle else ev

    def scl_row(ev):
        return ev if acting else sc.invalid_run(ev, f"SCL did not act: {why_not}")

    pair = lambda a, b, names: sc.paired(acc[a], acc[b], seeds, n_test=n_test, names=names)
    card.claim("ARM beats plain average pooling on the same trunk (Shi et al.; Hu et al.'s backbone)",
               ARM_PAPER.get(ds, "- (Res18+ARM on RAF-DB: 92.05, no plain-pooling number)"),
               pair(BASE, PLAIN, ("ARM", "plain")), setup + "; each from its own warm start, trained the same way")
    note = f"CUEM label changes per seed (+ CUEM and proposed runs): {changes}"
    card.claim("CUEM improves the baseline (Table II)", _paper_number(ds, CUEM),
               cuem_row(pair(CUEM, BASE, ("+CUEM", "baseline"))), note + "; + CUEM's projection head is untrained")
    card.claim("SCL improves the baseline (Table II)", _paper_number(ds, SCL),
               scl_row(pair(SCL, BASE, ("+SCL", "baseline"))), setup)
    card.claim("SCL + CUEM improves the baseline (Table II)", _paper_number(ds, PROPOSED),
               pair(PROPOSED, BASE, ("proposed", "baseline")), note)
    card.claim("SCL + CUEM beats SCL alone (Table II: together most)", _paper_number(ds, PROPOSED),
               cuem_row(pair(PROPOSED, SCL, ("proposed", "+SCL"))), note)
    card.claim("SCL + CUEM beats CUEM alone (Table II: together most)", _paper_number(ds, PROPOSED),
               scl_row(cuem_row(pair(PROPOSED, CUEM, ("proposed", "+CUEM")))), note)
    card.claim("α = 30 is among the best α, β = 1e-4 (Fig. 5a, RAF-DB)", "best at 30 of 20-35 (92.41)",
               scl_row(sc.optimum(c["alpha_res"], seeds, params["alpha"], n_test=n_test, name="α")),
               "α in paper epochs, mapped onto the run")
    card.claim("β = 1e-4 is among the best β, α = 30 (Fig. 5b, RAF-DB)", "best at 1e-4 of 1e-5 - 1e-1",
               scl_row(sc.optimum(c["beta_res"], seeds, params["beta"], n_test=n_test, name="β")))
    prec = [R[("table", PROPOSED, s)]["relabel_precision"] for s in seeds]
    made = [R[("table", PROPOSED, s)]["relabeled"] for s in seeds]
    what = "right against the clean labels" if d.truth == "clean labels" else "agreeing with the annotators"
    claim = f"CUEM relabels mostly correctly (share of changes {what} > 0.5)"
    if all(m > 0 for m in made):
        card.claim(claim, "- (assumed by Fig. 3)", sc.against(prec, 0.5, seeds, name="relabel precision"),
                   f"{sum(made)} changes over {len(seeds)} seeds")
    else:
        card.claim(claim, "- (assumed by Fig. 3)",
                   sc.not_measurable(f"changes per seed: {made}", f"CUEM changed no label at θ = {params['theta']} "
                                                                  "in some seeds"))
    if d.noise > 0 and d.truth == "clean labels":
        before = [R[("table", PROPOSED, s)]["noise_before"] for s in seeds]
        after = [R[("table", PROPOSED, s)]["noise_after"] for s in seeds]
        if before == after:
            ev = sc.exact(False, f"label noise unchanged in every seed ({before[0]:.3f}): an exact no-change",
                          "noise after < noise before in every seed")
        else:
            ev = sc.paired(after, before, seeds, direction="<", names=("noise after", "noise before"))
        card.claim("CUEM lowers the label noise of the training set", "-", ev)
        u_w, u_r = c["u_wrong"], c["u_right"]
        card.claim("u is larger for images whose given label is wrong (CUEM's premise, Fig. 3)", "-",
                   sc.bootstrap_groups(u_w, u_r, names=("u, wrong labels", "u, right labels"), run_seed=d.S0),
                   "+ SCL run without relabeling; empty-class u counted as 0")
        card.claim("control: the clean-label upper bound beats the baseline (the most relabeling could recover)",
                   "-", pair(UPPER, BASE, ("clean labels", "given labels")),
                   "both continue from the same warm start, trained on the given labels")
    card.claim("SCL makes the trunk features more class-separable (5-NN accuracy; Sec. II-A)", "-",
               sc.paired(knn[SCL], knn[BASE], seeds, names=("+SCL", "baseline")))
    gains = [class_gain(R, s, list(d.classes)) for s in seeds]
    card.claim("the proposed model is more accurate on surprise, disgust, happiness and neutral (Fig. 4, RAF-DB)",
               "higher on those 4", sc.paired([g[0] for g in gains], [g[1] for g in gains], seeds,
                                              names=("proposed", "baseline")), "mean per-class accuracy of the 4")
    card.claim("ARM with the running affinity: one face at a time gives the batch-256 accuracy (our inference rule)",
               "-", sc.exact(c["same_running"], f"identical over {len(seeds)} seeds" if c["same_running"]
                             else "different", "test accuracy at batch 1 == at batch 256, every seed"))
    bt = c["batch_table"]
    card.claim("ARM with the authors' batch affinity: accuracy at batch 256 differs from batch 1", "-",
               sc.paired(bt["batch affinity, batch 256"], bt["batch affinity, batch 1"], seeds, n_test=n_test,
                         names=("batch 256", "batch 1")), "the authors evaluate at 256")
    for name, key in ((BASE, "baseline_accuracy"), (PROPOSED, "proposed_accuracy"), (SCL, "scl_accuracy"),
                      (PLAIN, "plain_pooling_accuracy")):
        card.metric(key, np.mean(acc[name]))
    card.metric("accuracy_over_chance", np.mean(acc[PROPOSED]) - 1 / d.K)
    card.metric("knn_scl", np.mean(knn[SCL]))


def reading(counts: dict, n_claims: int, P, d, acc: dict, regime: pd.DataFrame, sim_acc: float, wall: float,
            cpu: float) -> str:
    """The 'reading this scorecard' paragraph, formatted from the run."""
    m = regime.mean()
    verdict = "helps" if sim_acc > 1 - d.noise else "hurts"
    acting, why_not = scl_acting(regime)
    scl_line = ("the contrastive space separates classes in every seed, so the rows that need SCL carry verdicts."
                if acting else f"SCL did not act ({why_not}), so the rows that need it keep their numbers but no "
                               "verdict.")
    return f"""**Reading this scorecard** ({P.name} profile, {d.dataset}). Of the {n_claims} claims: holds
{counts['holds']}, does not hold {counts['does not hold']}, inconclusive {counts['inconclusive']}.

- *Regime.* Every arm continues from a shared warm start (CE on the given labels, {P.warm_epochs} epochs; test
  accuracy {m['warm start']:.3f}) for {P.epochs} epochs; the proposed model reaches {np.mean(acc[PROPOSED]):.3f}
  (chance {1 / d.K:.3f}). The paper fine-tunes an ImageNet ResNet-18 for 100 epochs on 12,000-280,000 real faces.
- *SCL.* 5-NN on the SCL features {m['5-NN, SCL features']:.3f}, S_cos gap {m['S_cos gap']:+.3f}, a full queue in
  {m['L_sup steps with a full queue']:.0%} of the L_sup steps: {scl_line}
- *CUEM's regime.* argmax S_cos is right for {sim_acc:.1%} of the training images (seed {d.S0}, + SCL), the given
  labels for {1 - d.noise:.0%}: the relabeling-**{verdict}** regime. CUEM made {int(regime['CUEM relabels (proposed)'].sum())}
  changes in the proposed runs at precision {m['relabel precision']:.2f}; where a comparison needs CUEM and it
  changed nothing in a seed, the verdict is withheld.
- *Seeds.* {len(d.seeds)} seeds, paired 95 % t intervals ({len(d.seeds) - 1} degrees of freedom): differences of a
  point or two cannot be resolved.
- *Time.* {wall:.0f} s wall, {cpu:.0f} s CPU of the notebook's own process (worker processes not counted).
"""


# ---------------------------------------------------------------------------------------------------------------
# Sections 3-4: t-SNE, the relabel audit and the precision-vs-accuracy points
# ---------------------------------------------------------------------------------------------------------------
def tsne_figure(R, d, knn: dict, n_points: int):
    """t-SNE (scikit-learn) of the pooled trunk features of the first seed's test images, CE vs + SCL."""
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    n = min(len(d.test0), n_points)
    y = d.test0.labels[:n].numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, name in zip(axes, (BASE, SCL)):
        xy = TSNE(2, init="pca", perplexity=30, random_state=d.S0).fit_transform(
            R[("table", name, d.S0)]["embeddings"][:n].numpy())
        for c in range(d.K):
            ax.scatter(xy[y == c, 0], xy[y == c, 1], s=5, label=d.classes[c])
        ax.set_title(f"{name}: 5-NN accuracy {np.mean(knn[name]):.3f} (mean of {len(d.seeds)} seeds)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    return fig


def noise_runs(R, d) -> dict:
    """{noise rate: the + SCL run of seed S0 trained at that rate (no relabeling)}."""
    return {rate: R[("table", SCL, d.S0)] if rate == d.noise else R[("noise", rate, d.S0)] for rate in d.noise_sets}


def precision_points(R, d, curves: dict, theta: float) -> pd.DataFrame:
    """One point per setting for the precision-vs-accuracy figure: the rule at theta on every training image at the
    end of training (per noise level), and each relabeling epoch of the proposed runs."""
    rows = []
    for rate, run in noise_runs(R, d).items():
        f = curves[f"{rate:.0%} noise"].set_index("theta").loc[round(theta, 3)]
        rows.append({"group": f"{rate:.0%} noise, end of training", "label_accuracy": 1 - rate,
                     "similarity_accuracy": cuem.similarity_accuracy(run["similarity"], d.noise_sets[rate].clean_labels),
                     "precision": f["precision"], "noise_change": f["noise_after"] - f["noise_before"]})
    for s in d.seeds:
        run, n = R[("table", PROPOSED, s)], len(d.data[s]["train"])
        for _, e in run["relabel"].iterrows():
            if e["relabeled"] > 0:
                rows.append({"group": "proposed, per relabeling epoch", "label_accuracy": 1 - d.noise,
                             "similarity_accuracy": run["history"]["val_similarity_acc"][int(e["epoch"])],
                             "precision": e["precision"], "noise_change": e["noise_rate"] - e["noisy_before"] / n})
    return pd.DataFrame(rows)


def relabel_audit(R, d) -> pd.DataFrame:
    """Per seed: CUEM's changes in the proposed run, their precision, and the label noise before and after."""
    t = pd.DataFrame({s: {"relabeled": R[("table", PROPOSED, s)]["relabeled"],
                          "right (vs clean)": R[("table", PROPOSED, s)]["relabel_correct"],
                          "precision": R[("table", PROPOSED, s)]["relabel_precision"],
                          "noise before": R[("table", PROPOSED, s)]["noise_before"],
                          "noise after": R[("table", PROPOSED, s)]["noise_after"]} for s in d.seeds}).T
    t.index.name = "seed"
    return t


def schedule_figure(alphas, alpha: float, beta: float, lr_decay: float, epochs: int):
    """Eq. 4's lambda for each alpha and the learning rate's decay, both over the run mapped onto 100 paper epochs."""
    import matplotlib.pyplot as plt

    T = 1000
    x = np.arange(1, T + 1) / T * epochs
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    for a in alphas:
        lam = [scl.lambda_schedule(scl.paper_epoch(i, T), a, beta) for i in range(T)]
        axes[0].plot(x, lam, lw=2.5 if a == alpha else 1, label=f"α = {a}")
    axes[0].set_yscale("symlog", linthresh=1e-4)
    axes[0].set_ylabel("λ (symlog)")
    axes[0].set_title(f"Eq. 4 with β = {beta:g}", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].plot(x, [lr_decay ** np.floor(100 * i / T) for i in range(T)])
    axes[1].set_yscale("log")
    axes[1].set_ylabel("learning rate / its start")
    axes[1].set_title(f"{1 - lr_decay:.0%} decay per paper epoch, mapped like α", fontsize=9)
    for ax in axes:
        ax.set_xlabel(f"epoch of this run ({epochs} epochs = the paper's 100)")
    fig.tight_layout()
    return fig
