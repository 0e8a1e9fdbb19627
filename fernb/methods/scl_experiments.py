"""Notebook 03 (Hu et al.: SCL + CUEM + ARM) as data and calls: its data, the shared warm starts, the job list of
every run, the regime numbers, the tables and the scorecard claims. The notebook explains; this computes.

The regime (what the cpu profile is sized for)
----------------------------------------------
* The paper fine-tunes an ImageNet-pretrained ResNet-18. Nothing downloads here, so each seed first trains a
  **shared warm start**: the ARM baseline with cross-entropy on that seed's given (noisy) labels, `warm_epochs` at
  a constant rate, once, checkpointed and loaded on a re-run. Every configuration of that seed continues from it for
  `epochs` with its own components, exactly as Table II's rows continue from one pre-trained backbone. From random
  weights the same few epochs leave every arm of the cpu profile near chance and no component can act; the
  notebook's regime table (section 1) shows, per run, the warm start, the arms and the numbers that say whether
  SCL and CUEM acted (5-NN, S_cos gap, full queue, relabels with their precision and recall).
* The learning rate decays by the paper's 10 % per epoch *mapped onto the run like alpha* (per paper epoch of 100),
  so the run ends at 0.9^100 of the start rate, as the paper's does.
* The queue holds the profile's `queue_size` keys (paper: 8,192 of RAF-DB's 12,271 images); a queue much smaller
  than the training set is full after a few steps, so L_sup reads a full queue for most of the steps where
  lambda > beta (section 3 counts them; `scl_acting` withholds the SCL verdicts when it does not).
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


MODELS = {"resnet_mini_arm": "ResNet-18 with one block per stage at half width (32-256 channels), output stride 16, "
                              "ARM in place of pooling",
          "resnet18_arm": "ResNet-18, ARM in place of pooling: the paper's backbone, without its ImageNet weights"}


def model_text(P) -> str:
    """The profile's model in words (the paper's is an ImageNet-pretrained ResNet-18 + ARM)."""
    kw = ", ".join(f"{k}={v}" for k, v in dict(P.model_kwargs).items())
    return (f"**Model of the {P.name} profile:** `{P.model}`{f' ({kw})' if kw else ''}: "
            f"{MODELS.get(P.model, 'a fernb.models backbone')}, on {P.image_size} px faces, from a shared warm start "
            f"(section 1). The paper: an ImageNet-pretrained ResNet-18 + ARM at 224 px.")


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
    """One row per seed: the warm start, the arms, 5-NN of CE and SCL features, the S_cos gap, the queue, and CUEM's
    relabels in the proposed and the + CUEM runs with their precision (share of changes that are right) and recall
    (share of the wrong given labels that end right), both against the clean labels (`scl.relabel_audit`)."""
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
                   "L_sup steps with a full queue": queue_share(scl_run["history"])}
        for tag, name in (("proposed", PROPOSED), ("+ CUEM", CUEM)):
            run = R[("table", name, s)]
            rows[s].update({f"CUEM relabels ({tag})": run["relabeled"],
                            f"relabel precision ({tag})": run["relabel_precision"],
                            f"relabel recall ({tag})": run["relabel_recall"]})
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


def cuem_audit_text(t: pd.DataFrame, truth: str = "clean labels") -> str:
    """CUEM's relabels, precision and recall in the proposed and the + CUEM runs (summed / averaged over seeds)."""
    parts = []
    for tag in ("proposed", "+ CUEM"):
        prec, rec = t[f"relabel precision ({tag})"].mean(), t[f"relabel recall ({tag})"].mean()
        parts.append(f"{int(t[f'CUEM relabels ({tag})'].sum())} relabels in the {tag} runs, precision {prec:.2f}, "
                     f"recall {rec:.2f}")
    return "; ".join(parts) + f" (against the {truth}; recall: the share of wrong given labels that end right)"


def regime_text(t: pd.DataFrame, K: int, truth: str = "clean labels") -> str:
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
            + f": {cuem_audit_text(t, truth)}.")


# ---------------------------------------------------------------------------------------------------------------
# Padding erosion (section 2): which edges of the last map are eroded
# ---------------------------------------------------------------------------------------------------------------
def erosion_summary(last: torch.Tensor) -> dict:
    """Mean distance from the padding-free value of the last map's top row, bottom row, left and right columns and
    interior. From a 3 x 3 map on, an edge is read without its two corners: a corner belongs to two edges, and an
    eroded left column would otherwise lift the bottom row's mean through their shared corner. On a 2 x 2 map (no
    interior, every cell a corner) the corners count in both their row and column."""
    m = torch.as_tensor(last, dtype=torch.float32)
    inner = m[1:-1, 1:-1]
    mid = slice(1, -1) if min(m.shape) >= 3 else slice(None)
    return {"top row": float(m[0, mid].mean()), "bottom row": float(m[-1, mid].mean()),
            "left column": float(m[mid, 0].mean()), "right column": float(m[mid, -1].mean()),
            "interior": float(inner.mean()) if inner.numel() else float("nan")}


OPPOSITE = {"top row": "bottom row", "bottom row": "top row", "left column": "right column",
            "right column": "left column"}
EROSION_MARGIN, EROSION_FLOOR = 1 / 3, 0.02


def clearly_above(a: float, b: float) -> bool:
    """a exceeds b by a clear margin: by more than a third of b and by more than 0.02 (2 % of the padding-free
    value). A NaN b (a map with no interior) is exceeded by anything."""
    return bool(np.isnan(b) or a - b > max(EROSION_MARGIN * abs(b), EROSION_FLOOR))


def eroded_edges(summary: dict) -> dict:
    """Which edges of `erosion_summary` are eroded. "strongest": clearly above the interior and not clearly below
    the opposite edge; "weaker": clearly above the interior but clearly below the opposite edge; "clear": the
    rest. "shape": none (no edge clearly above the interior), ring (all four strongest), one-sided (no strongest
    edge has an eroded opposite), or uneven (anything else)."""
    inner = summary["interior"]
    above = {e: clearly_above(summary[e], inner) for e in OPPOSITE}
    strongest = [e for e in OPPOSITE if above[e] and not clearly_above(summary[OPPOSITE[e]], summary[e])]
    weaker = [e for e in OPPOSITE if above[e] and e not in strongest]
    clear = [e for e in OPPOSITE if not above[e]]
    if not strongest:
        shape = "none"
    elif len(strongest) == 4:
        shape = "ring"
    elif all(not above[OPPOSITE[e]] for e in strongest):
        shape = "one-sided"
    else:
        shape = "uneven"
    return {"strongest": strongest, "weaker": weaker, "clear": clear, "shape": shape}


def _edges(names: list) -> str:
    return " and ".join(names)


def erosion_text(summary: dict, side: int) -> str:
    """The reading of `erosion_summary` from `eroded_edges`: names only the edges clearly further from their
    padding-free value than the interior, says which opposite edge is clearly less eroded, and calls the erosion
    one-sided only when the edges opposite the eroded ones are no further off than the interior."""
    e = eroded_edges(summary)
    values = ", ".join(f"{k} {v:.0%}" for k, v in summary.items()) + ("; edges without their corners" if side >= 3
                                                                       else "")
    head = f"On the {side} x {side} map that pooling reads"
    if e["shape"] == "none":
        return (f"{head}, no edge is clearly further from its padding-free value than the interior ({values}): no "
                f"padding erosion to undo on this map.")
    text = (f"{head}, the cells furthest from their padding-free value lie along the **{_edges(e['strongest'])}** "
            f"({values}). ")
    lonely = [k for k in e["strongest"] if OPPOSITE[k] not in e["strongest"]]
    stride = ("; with stride-2 convolutions that pad one pixel on each side, the sampling grid starts on the top "
              "and left padding and may end inside the image on the bottom and right"
              if lonely and set(lonely) <= {"top row", "left column"} else "")
    if e["shape"] == "ring":
        return text + "All four edges are eroded alike: an even ring around the map."
    if e["shape"] == "one-sided":
        return (text + f"The erosion is one-sided: the {_edges([OPPOSITE[k] for k in e['strongest']])} "
                f"{'is' if len(e['strongest']) == 1 else 'are'} no further off than the interior{stride}.")
    parts = []
    if e["weaker"]:
        parts.append(f"the {_edges(e['weaker'])} {'is' if len(e['weaker']) == 1 else 'are'} also further off than "
                     f"the interior, but clearly less than the opposite edge")
    alike = [k for k in e["strongest"] if OPPOSITE[k] in e["strongest"]]
    if alike:
        parts.append(f"the {_edges(alike)} are eroded alike")
    gone = [OPPOSITE[k] for k in lonely if OPPOSITE[k] in e["clear"]]
    if gone:
        parts.append(f"the {_edges(gone)} {'is' if len(gone) == 1 else 'are'} no further off than the interior")
    return (text + f"The erosion is uneven, not one-sided: {'; '.join(parts)}. It is strongest on the "
            f"{_edges(e['strongest'])}{stride}.")


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
# Section 7: Fig. 4's per-class differences and Grad-CAM's localisation, read against their intervals
# ---------------------------------------------------------------------------------------------------------------
FIG4_CLAIM = "the proposed model is more accurate on surprise, disgust, happiness and neutral (Fig. 4, RAF-DB)"


def fig4_evidence(R, d) -> sc.Evidence:
    """The scorecard's Fig. 4 comparison: mean per-class accuracy of the proposed model vs the baseline on the
    paper's four classes (`class_gain`), paired over the seeds."""
    gains = [class_gain(R, s, list(d.classes)) for s in d.seeds]
    return sc.paired([g[0] for g in gains], [g[1] for g in gains], d.seeds, names=("proposed", "baseline"))


def fig4_text(gain: pd.Series, ev: sc.Evidence, n_seeds: int) -> str:
    """Fig. 4's reading: every class's difference (proposed - baseline, from the summed confusions), then the
    scorecard's interval on the paper's four classes and whether it contains 0."""
    diffs = ", ".join(f"{c} {v:+.3f}" for c, v in gain.items())
    four = [c for c in FIG4_CLASSES if c in gain.index]
    text = (f"Proposed minus baseline, per class (summed confusions of {n_seeds} seeds): {diffs} (the paper, "
            f"RAF-DB: higher on surprise, disgust, happiness and neutral, level on the others). On the paper's "
            f"{len(four)} classes ({', '.join(four)}) the mean per-class difference is **{ev.estimate:+.3f}**")
    if np.isnan(ev.low):
        return text + f" with no interval ({n_seeds} seed), so it is not resolved."
    text += f" [{ev.low:+.3f}, {ev.high:+.3f}] over {n_seeds} seeds (the scorecard's row): "
    if ev.low <= 0 <= ev.high:
        return text + ("the interval contains 0, so the difference on these classes is not resolved at this "
                       "number of seeds, and the signs of the per-class differences above are no evidence of a "
                       "higher or lower accuracy.")
    return text + f"the interval excludes 0: {'higher' if ev.low > 0 else 'lower'} on those classes on average."


def localisation_text(cams: dict) -> str:
    """Grad-CAM's localisation scores (`viz.gradcam_localisation`) read against 1.0 (no better than an even spread
    over the face): each model's mean over the expressive faces with its 95 % t interval over faces, and the paired
    difference of the last model minus the first on the faces both scored."""
    if not cams:
        return "Localisation needs SynthFER's masks."
    parts, valid = [], {}
    for name, c in cams.items():
        v = np.asarray(c["scores"], dtype=float)
        valid[name] = v
        if np.isnan(v).all():
            parts.append(f"{name}: no expressive face scored")
            continue
        m, low, high = sc.t_interval(v[~np.isnan(v)])
        where = ("one face: no interval" if np.isnan(low) else
                 f"{m:.2f} times an even spread's share on the expression's action-unit regions" if low > 1 else
                 "less on the action-unit regions than an even spread" if high < 1 else
                 "no better than an even spread (the interval contains 1.0)")
        parts.append(f"{name}: localisation score **{m:.2f}** [{low:.2f}, {high:.2f}] over "
                     f"{int((~np.isnan(v)).sum())} expressive test faces at {c['layer']} ({c['side']} x {c['side']}): "
                     f"{where}")
    text = "; ".join(parts) + " (1.0 = no better than an even spread over the face)."
    (a, va), (b, vb) = list(valid.items())[0], list(valid.items())[-1]
    both = ~np.isnan(va) & ~np.isnan(vb) if len(cams) == 2 else np.zeros(0, bool)
    if both.any():
        est, low, high = sc.t_interval(vb[both] - va[both])
        text += (f" {b} minus {a} on the same faces: {est:+.2f} [{low:+.2f}, {high:+.2f}]"
                 + (", not resolved." if np.isnan(low) or low <= 0 <= high else "."))
    return text


# ---------------------------------------------------------------------------------------------------------------
# The scorecard, declared as data
# ---------------------------------------------------------------------------------------------------------------
def _paper_number(dataset: str, key, fallback="-"):
    if dataset in PAPER:
        return PAPER[dataset].get(key, fallback)
    return f"- (AffectNet: {PAPER['affectnet'][key]})" if key in PAPER["affectnet"] else fallback


def _nanmean(values) -> float:
    v = np.asarray(values, dtype=float)
    return float(v[~np.isnan(v)].mean()) if (~np.isnan(v)).any() else float("nan")


def audit_note(R, seeds, name: str, truth: str = "clean labels") -> str:
    """The CUEM audit of run `name` over the seeds, for a scorecard note: relabels per seed, and the mean precision
    and recall against `truth` (`scl.relabel_audit`)."""
    runs = [R[("table", name, s)] for s in seeds]
    made = {s: r["relabeled"] for s, r in zip(seeds, runs)}
    prec, rec = (_nanmean([r[key] for r in runs]) for key in ("relabel_precision", "relabel_recall"))
    return (f"{name}: {sum(made.values())} CUEM relabels (per seed {made}), precision {prec:.2f}, recall {rec:.2f} "
            f"against the {truth}")


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
    audit = {name: audit_note(R, seeds, name, d.truth) for name in (CUEM, PROPOSED)}
    card.claim("CUEM improves the baseline (Table II)", _paper_number(ds, CUEM),
               cuem_row(pair(CUEM, BASE, ("+CUEM", "baseline"))),
               f"{audit[CUEM]}; + CUEM's projection head is untrained")
    card.claim("SCL improves the baseline (Table II)", _paper_number(ds, SCL),
               scl_row(pair(SCL, BASE, ("+SCL", "baseline"))), setup)
    card.claim("SCL + CUEM improves the baseline (Table II)", _paper_number(ds, PROPOSED),
               scl_row(cuem_row(pair(PROPOSED, BASE, ("proposed", "baseline")))), audit[PROPOSED])
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
                   f"{audit[PROPOSED]}; {audit[CUEM]}")
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
        card.claim("CUEM lowers the label noise of the training set", "-", ev, audit[PROPOSED])
        u_w, u_r = c["u_wrong"], c["u_right"]
        card.claim("u is larger for images whose given label is wrong (CUEM's premise, Fig. 3)", "-",
                   sc.bootstrap_groups(u_w, u_r, names=("u, wrong labels", "u, right labels"), run_seed=d.S0),
                   "+ SCL run without relabeling; empty-class u counted as 0")
        card.claim("control: the clean-label upper bound beats the baseline (the most relabeling could recover)",
                   "-", pair(UPPER, BASE, ("clean labels", "given labels")),
                   "both continue from the same warm start, trained on the given labels")
    card.claim("SCL makes the trunk features more class-separable (5-NN accuracy; Sec. II-A)", "-",
               sc.paired(knn[SCL], knn[BASE], seeds, names=("+SCL", "baseline")))
    card.claim(FIG4_CLAIM, "higher on those 4", fig4_evidence(R, d), "mean per-class accuracy of the 4")
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


def resolution_text(claims: list, n_seeds: int) -> str:
    """Which paired-seed comparisons of the scorecard were resolved (their 95 % interval excludes 0) and how wide
    the others are: the seeds line of the reading, formatted from the card's rows."""
    rows = [c for c in claims if c.get("kind") == "paired seeds" and None not in (c["interval"][0], c["interval"][1])]
    head = f"{n_seeds} seeds, paired 95 % t intervals ({n_seeds - 1} degree{'s' if n_seeds != 2 else ''} of freedom)"
    if not rows:
        return head + ": no comparison has an interval."
    resolved = [c for c in rows if c["interval"][0] > 0 or c["interval"][1] < 0]
    open_ = [c for c in rows if c not in resolved]
    fmt = lambda c: (f"{c['claim']} ({c['estimate']:+.3f} [{c['interval'][0]:+.3f}, {c['interval'][1]:+.3f}]"
                     + (", verdict withheld" if c["verdict"] == "inconclusive" else "") + ")")
    text = f"{head}. Of {len(rows)} paired comparisons, "
    if resolved:
        small = min(abs(c["estimate"]) for c in resolved)
        text += (f"{len(resolved)} exclude{'s' if len(resolved) == 1 else ''} 0, the smallest at |difference| "
                 f"{small:.3f}: " + "; ".join(fmt(c) for c in resolved) + ".")
    else:
        text += "none excludes 0."
    if open_:
        half = sorted((c["interval"][1] - c["interval"][0]) / 2 for c in open_)
        which = f"The other {len(open_)}" if resolved else ("It" if len(open_) == 1 else f"All {len(open_)}")
        text += (f" {which} contain{'s' if len(open_) == 1 else ''} 0, with half-width{'s' if len(open_) > 1 else ''} "
                 f"{half[0]:.3f}{f' to {half[-1]:.3f}' if len(open_) > 1 else ''}: differences below "
                 f"{'those' if len(open_) > 1 else 'that'} are not resolved at {n_seeds} seeds.")
    return text


def reading(claims: list, P, d, acc: dict, regime: pd.DataFrame, sim_acc: float, wall: float, cpu: float) -> str:
    """The 'reading this scorecard' paragraph, formatted from the run and the card's rows (`Scorecard.claims`)."""
    m = regime.mean()
    counts = {v: sum(c["verdict"] == v for c in claims) for v in sc.VERDICTS}
    verdict = "helps" if sim_acc > 1 - d.noise else "hurts"
    acting, why_not = scl_acting(regime)
    scl_line = ("the contrastive space separates classes in every seed, so the rows that need SCL carry verdicts."
                if acting else f"SCL did not act ({why_not}), so the rows that need it keep their numbers but no "
                               "verdict.")
    return f"""**Reading this scorecard** ({P.name} profile, {d.dataset}). Of the {len(claims)} claims: holds
{counts['holds']}, does not hold {counts['does not hold']}, inconclusive {counts['inconclusive']}.

- *Regime.* Every arm continues from a shared warm start (CE on the given labels, {P.warm_epochs} epochs; test
  accuracy {m['warm start']:.3f}) for {P.epochs} epochs; the proposed model reaches {np.mean(acc[PROPOSED]):.3f}
  (chance {1 / d.K:.3f}). The paper fine-tunes an ImageNet ResNet-18 for 100 epochs on 12,000-280,000 real faces.
- *SCL.* 5-NN on the SCL features {m['5-NN, SCL features']:.3f}, S_cos gap {m['S_cos gap']:+.3f}, a full queue in
  {m['L_sup steps with a full queue']:.0%} of the L_sup steps: {scl_line}
- *CUEM's regime.* argmax S_cos is right for {sim_acc:.1%} of the training images (seed {d.S0}, + SCL), the given
  labels for {1 - d.noise:.0%}: the relabeling-**{verdict}** regime. During training CUEM made
  {cuem_audit_text(regime, d.truth)}; where a comparison needs CUEM and it changed nothing in a seed, the
  verdict is withheld.
- *Seeds.* {resolution_text(claims, len(d.seeds))}
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


def theta_text(curves: dict, theta: float, level: float = 0.5) -> str:
    """From the θ sweep (`cuem.relabel_curve` per noise level): the smallest θ at which the precision of the rule
    first reaches `level`, or that it never does, for each noise level, beside the precision at the notebook's θ."""
    parts = []
    for name, f in curves.items():
        f = f.sort_values("theta")
        at = f.loc[np.isclose(f["theta"], theta), "precision"]
        here = f"{float(at.iloc[0]):.2f}" if len(at) and not np.isnan(at.iloc[0]) else "no relabel"
        hit = f[f["precision"] >= level]
        if len(hit):
            first = hit.iloc[0]
            parts.append(f"{name}: first at θ = {first['theta']:.2f} ({int(first['relabeled'])} relabels; at "
                         f"θ = {theta:g}: {here})")
        elif f["noise_before"].iloc[0] == 0:
            parts.append(f"{name}: never (no given label is wrong, so every change is a mistake)")
        elif f["precision"].notna().any():
            best = f.loc[f["precision"].idxmax()]
            parts.append(f"{name}: never for θ in {f['theta'].min():g}-{f['theta'].max():g} (at most "
                         f"{best['precision']:.2f}, at θ = {best['theta']:.2f}; at θ = {theta:g}: {here})")
        else:
            parts.append(f"{name}: never (no relabel at any θ swept)")
    return (f"Where does the rule's precision first reach {level}? " + "; ".join(parts)
            + f". The runs keep the paper's θ = {theta:g}.")


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
    """Per CUEM run (+ CUEM, proposed) and seed: the label changes made during training, how many are right, their
    precision, the recall (share of the wrong given labels that end right), the right labels made wrong, and the
    label noise before and after, against the clean labels (`scl.relabel_audit`)."""
    rows = {}
    for name in (CUEM, PROPOSED):
        for s in d.seeds:
            r = R[("table", name, s)]
            rows[(name, s)] = {"relabeled": r["relabeled"], f"right (vs {d.truth})": r["relabel_correct"],
                               "precision": r["relabel_precision"], "recall": r["relabel_recall"],
                               "broken": r["relabel_broken"], "noise before": r["noise_before"],
                               "noise after": r["noise_after"]}
    t = pd.DataFrame(rows).T
    t.index.names = ["run", "seed"]
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
