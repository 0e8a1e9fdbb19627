"""Notebook 01 (FUCLE) as data and calls: its data, the shared warm start, the job lists, the mechanism checks,
tables, takeaways and scorecard claims.

The notebook explains; this module computes. Every number a takeaway prints is formatted here from the runs it
describes, and every scorecard row is declared in `claims`, where an idle mechanism becomes "not measurable"
through the scorecard API rather than a verdict.

The regime (why every arm starts from one warm start per seed)
--------------------------------------------------------------
FUCLE's backbones start from pre-trained weights; nothing may be downloaded here, so each seed trains one stand-in
(`warm_starts`): resnet_mini fitted with cross-entropy on `n_source` SynthFER images of *other people* (rendered with
seed + `SOURCE_SEED`, never in the pool), loaded from its checkpoint when it exists. Every arm of the seed starts
from it: each active-learning strategy's fits, FUCLE's SupCon pre-training, and the every-label fit. That is what
lets the mechanisms act at this budget:

* SupCon from random weights collapses here (`supcon_diagnosis`): at 48 px an expression is a few pixels of a face
  whose identity, skin, hair, background and light differ from image to image, so at the start same-class views are
  no closer than any two views; pulling every positive together then pulls every view together, and the loss sits
  on ln(2B - 1), its value when all similarities are equal. It does so for every learning rate, temperature and
  view augmentation tried, and after label-free NT-Xent pre-training too. From the warm start, whose features
  already separate expressions, it stays below that value (the positive control also ran on more images and
  epochs than the diagnosis runs; `diagnosis_text` says so).
* Active learning needs a model that is right often enough for its uncertainty to mean something: in the run that
  issue 18 audited (random weights, a 5 % initial set), every strategy ended near chance. This notebook does not
  re-run that arm.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from .. import engine, models, parallel
from .. import scorecard as sc
from ..data import synthfer as S
from ..data.sources import has_clean_labels
from . import active, fucle
from .pretrain import contrastive_pretrain
from .scl_experiments import knn_accuracy

SOURCE_SEED = 1000          # the warm start's images: SynthFER train rendered with seed + SOURCE_SEED
CORE = ("random", "least_confidence")
ALL_STRATEGIES = ("random", "least_confidence", "margin", "entropy", "bald", "coreset", "badge", "glister",
                  "deepfool")


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
def load_data(P, dataset: str, data_root, seeds, noise: float, noise_kind: str) -> dict:
    """{seed: (pool, val, test)} (`fucle.seed_data`), each seed its own render, noise and split."""
    return {s: fucle.seed_data(dataset, data_root, seed=s, n_pool=P.n_train, n_val=P.n_val, n_test=P.n_test,
                               size=P.image_size, channels=P.channels, noise_rate=noise, noise_kind=noise_kind)
            for s in seeds}


def describe_data(data: dict, noise: float, noise_kind: str) -> str:
    pool, val, test = next(iter(data.values()))
    realised = np.mean([float((d[0].labels != d[0].clean_labels).float().mean()) for d in data.values()])
    truth = "clean labels" if has_clean_labels(pool) else "annotators' labels"
    return (f"Each seed: a pool of **{len(pool)}** images with **{noise:.0%}** injected *{noise_kind}* label noise "
            f"(realised {realised:.1%}), a validation split of {len(val)} and a test split of **{len(test)}** images "
            f"({pool.num_classes} classes, chance {1 / pool.num_classes:.3f}). The relabel audits compare with the "
            f"**{truth}**" + ("." if has_clean_labels(pool) else
                              ": on real data that is agreement with the annotators, not correctness."))


def source_data(P, dataset: str, seed: int):
    """The warm start's labeled images: SynthFER only (other people than the pool's); None on real data, where the
    notebook starts from random weights (nothing pre-trained may be downloaded)."""
    if dataset != "synthfer":
        return None
    return S.synthfer("train", P.n_source, size=P.image_size, channels=P.channels, seed=seed + SOURCE_SEED)


# ---------------------------------------------------------------------------------------------------------------
# The warm start: one per seed, loaded from its checkpoint when it exists
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class WarmStart:
    path: Path | None         # None: no warm start (random initialization)
    accuracy: float           # its test accuracy on the seed's test split
    seconds: float            # training time (0 when loaded)
    loaded: bool


def _key(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def warm_starts(P, data: dict, dataset: str, checkpoint_dir, device=None) -> dict:
    """{seed: WarmStart}: `P.model` trained with cross-entropy for `P.warm_steps` steps of 64 at `P.warm_lr` on the
    seed's `source_data`. The checkpoint's name carries a fingerprint of everything that shapes it (model, size,
    steps, lr, source size, SynthFER version, seed), so a changed setting trains a new one instead of loading a
    stale one."""
    out = {}
    checkpoint_dir = Path(checkpoint_dir)
    for seed, (pool, _, test) in data.items():
        source = source_data(P, dataset, seed)
        if source is None:
            out[seed] = WarmStart(None, float("nan"), 0.0, False)
            continue
        key = _key(P.model, P.image_size, P.channels, P.n_source, P.warm_steps, P.warm_lr, S.VERSION, seed)
        path = checkpoint_dir / f"warm-seed{seed}-{key}.pt"
        meta = path.with_suffix(".json")
        if path.exists() and meta.exists():
            info = json.loads(meta.read_text())
            out[seed] = WarmStart(path, info["accuracy"], 0.0, True)
            continue
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        net = models.create(P.model, pool.num_classes, in_chans=pool.channels, img_size=pool.image_size)
        engine.fit(net, source, steps=P.warm_steps, batch_size=64, lr=P.warm_lr, device=device, seed=seed,
                   progress=False, desc="warm start")
        accuracy = engine.evaluate(net, test, device=device)["accuracy"]
        fucle.save_weights(net, path)
        meta.write_text(json.dumps({"accuracy": accuracy}))
        out[seed] = WarmStart(path, accuracy, time.perf_counter() - t0, False)
    return out


def describe_warm(warm: dict, P) -> str:
    ws = [w for w in warm.values() if w.path is not None]
    if not ws:
        return "No warm start on this dataset: every arm starts from random weights."
    loaded = sum(w.loaded for w in ws)
    return (f"Warm start per seed: {P.model} after {P.warm_steps} steps of 64 on {P.n_source} SynthFER images of "
            f"other people, test accuracy {np.mean([w.accuracy for w in ws]):.3f} "
            f"({', '.join(f'{w.accuracy:.3f}' for w in ws)}); {loaded} of {len(ws)} loaded from checkpoints, "
            f"{sum(w.seconds for w in ws):.0f} s spent training.")


def warm_reference(warm: dict) -> dict:
    """{"warm start": mean test accuracy} for a learning-curve figure's reference lines ({} without a warm start):
    the model every AL arm starts from."""
    accs = [w.accuracy for w in warm.values() if w.path is not None]
    return {"warm start": float(np.mean(accs))} if accs else {}


# ---------------------------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------------------------
def full_steps(P, n_pool: int, cycles: int, steps: int) -> int:
    """Optimizer steps of the every-label fit: FUCLE's step 1 (SupCon and DRM steps) plus its AL fits, so the
    fit trains at least as many steps as FUCLE does."""
    supcon = P.pretrain_epochs * (n_pool // P.batch_size)
    drm = P.drm_epochs * math.ceil(n_pool / P.drm_batch_size)
    return supcon + drm + (cycles + 1) * steps


def strategies_for(seed_index: int, P, strategies) -> tuple:
    """The strategies seed number `seed_index` runs: all of `strategies` on the first `P.strategy_seeds` seeds,
    random and least confidence (the paper's baseline and its chosen strategy) on every seed."""
    if seed_index < P.strategy_seeds:
        return tuple(strategies)
    return tuple(s for s in strategies if s in CORE)


def settings(P, *, temperature, strategies, initial_fraction, al_budget, cycles, steps_per_cycle, sigma, beta,
             delta1, delta2, gamma, relabel_start_epoch, Td, delta2_step) -> SimpleNamespace:
    """The notebook's parameters resolved against the profile (None = the profile's value), with the DRM's keyword
    arguments (Eq. 4-7) gathered for `fucle.run_seed`."""
    from ..data import augment

    start = P.drm_epochs // 2 if relabel_start_epoch is None else relabel_start_epoch
    return SimpleNamespace(
        temperature=temperature, strategies=tuple(strategies or P.strategies),
        initial_fraction=initial_fraction or P.initial_fraction, budget=al_budget or P.budget_fraction,
        cycles=cycles or P.cycles, steps=steps_per_cycle or P.steps, sigma=P.sigma if sigma is None else sigma,
        drm_kwargs=dict(beta=beta, delta1=delta1, delta2=delta2, gamma=gamma, augment=augment.weak,
                        relabel_start_epoch=start, Td=Td, increase=delta2_step, decrease=delta2_step))


def seed_jobs(P, data: dict, warm: dict, a: SimpleNamespace, checkpoint_dir, device=None) -> list[dict]:
    """One `fucle.run_seed` job per seed. `a`: the notebook's parameters (temperature, drm_kwargs, strategies,
    initial_fraction, budget, cycles, steps, sigma)."""
    jobs = []
    for i, (seed, (pool, val, test)) in enumerate(data.items()):
        w = warm[seed]
        arms = fucle.arms_for(strategies_for(i, P, a.strategies), controls=P.control_arms,
                              sigma=a.sigma is not None, base="warm" if w.path is not None else None)
        jobs.append(dict(pool=pool, val=val, test=test, seed=seed, arms=arms, model_name=P.model,
                         checkpoint_dir=checkpoint_dir, pretrain_epochs=P.pretrain_epochs, drm_epochs=P.drm_epochs,
                         batch_size=P.batch_size, drm_batch_size=P.drm_batch_size, lr=P.lr,
                         pretrain_lr=P.pretrain_lr, fit_lr=P.fit_lr, temperature=a.temperature,
                         drm_kwargs=a.drm_kwargs, initial_fraction=a.initial_fraction, budget=a.budget,
                         cycles=a.cycles, steps=a.steps, al_batch_size=P.al_batch_size,
                         sigma=a.sigma if a.sigma is not None else 0.95,
                         strategy_kwargs={"deepfool": {"candidates": P.deepfool_candidates}},
                         controls=P.step1_controls, warm=w.path,
                         full_steps=full_steps(P, len(pool), a.cycles, a.steps), device=device))
    return jobs


def run(P, data: dict, warm: dict, a: SimpleNamespace, checkpoint_dir, device=None) -> list:
    """Every seed's `fucle.run_seed`, one after another on a CPU (side by side in worker processes on a GPU)."""
    jobs = seed_jobs(P, data, warm, a, checkpoint_dir, device)
    return parallel.run_many(fucle.run_seed, jobs, device=device, progress=P.progress, desc="seeds")


# ---------------------------------------------------------------------------------------------------------------
# Is each mechanism acting? SupCon, the DRM, active learning
# ---------------------------------------------------------------------------------------------------------------
def collapse_value(batch_size: int, views: int = 2) -> float:
    """SupCon's loss (Eq. 1) when every similarity is equal: each positive has probability 1 / (views * B - 1)."""
    return math.log(views * batch_size - 1)


def embeddings(net, data, device=None) -> np.ndarray:
    return engine.predict(net, data, embeddings=True, device=device).embeddings.numpy()


def backbones(r, test, warm: dict, P) -> dict:
    """{name: model} for one seed's result `r`: random weights (seeded with the seed), the warm start when there is
    one, and the SupCon checkpoint, shaped for `test`."""
    K, C, size = test.num_classes, test.channels, test.image_size
    torch.manual_seed(r.seed)
    nets = {"random weights": models.create(P.model, K, in_chans=C, img_size=size)}
    if warm[r.seed].path is not None:
        nets["warm start"] = models.create(P.model, K, in_chans=C, img_size=size, checkpoint=warm[r.seed].path)
    nets["SupCon"] = models.create(P.model, K, in_chans=C, img_size=size, checkpoint=r.step1.checkpoints["supcon"])
    return nets


def knn_table(results, data: dict, warm: dict, P, device=None, n: int = 600) -> pd.DataFrame:
    """Per seed: 5-NN accuracy (5-fold cross-validation, `knn_accuracy`) of the trunk's embeddings of `n` test
    images from random weights, from the warm start and after SupCon, and SupCon's first and last epoch loss beside
    its collapse value ln(2B - 1)."""
    rows = []
    for r in results:
        test = data[r.seed][2]
        sub = test.subset(torch.arange(min(n, len(test))))
        nets = backbones(r, test, warm, P)
        row = {"seed": r.seed}
        for name, net in nets.items():
            row[f"5-NN, {name}"] = knn_accuracy(embeddings(net, sub, device), sub.labels.numpy())
        loss = r.step1.pretrain_history.train_loss
        row.update({"SupCon loss, first epoch": loss[0], "SupCon loss, last epoch": loss[-1],
                    "collapse value ln(2B-1)": collapse_value(P.batch_size)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("seed")


DIAGNOSIS = (   # (start, views, lr, temperature): SupCon runs from random weights unless start says otherwise
    ("random weights", "contrastive", 3e-3, 0.1),
    ("random weights", "contrastive", 1e-3, 0.1),
    ("random weights", "weak", 1e-3, 0.1),
    ("random weights", "contrastive", 1e-3, 0.5),
    ("NT-Xent features", "contrastive", 1e-3, 0.1),
)


def supcon_diagnosis(pool, test, seed: int, P, device=None, n: int = 1500, epochs: int = 4,
                     configs=DIAGNOSIS) -> pd.DataFrame:
    """Where SupCon collapses: short SupCon runs on `n` pool images (given labels) from random weights under each
    learning rate, temperature and view augmentation of `configs`, and after `epochs` of label-free NT-Xent; per
    run its images and epochs, the first and last epoch loss, the collapse value ln(2B - 1), the 5-NN accuracy of
    the features on 600 test images, and for the run that starts from NT-Xent features the NT-Xent loss of its
    first and last epoch (NaN for the others; NT-Xent's collapse value is the same ln(2B - 1): one positive among
    2B - 1 others)."""
    sub = pool.subset(torch.arange(min(n, len(pool))))
    probe = test.subset(torch.arange(min(600, len(test))))
    K, C, size = pool.num_classes, pool.channels, pool.image_size
    rows = []
    for start, views, lr, tau in configs:
        torch.manual_seed(seed)
        net = models.create(P.model, K, in_chans=C, img_size=size)
        ntxent = [math.nan]
        if start == "NT-Xent features":
            ntxent = contrastive_pretrain(net, sub, epochs=epochs, batch_size=P.batch_size, lr=lr, temperature=tau,
                                          use_labels=False, device=device, seed=seed,
                                          progress=False).history.train_loss
        hist = contrastive_pretrain(net, sub, epochs=epochs, batch_size=P.batch_size, lr=lr, temperature=tau,
                                    view_augment=views, use_labels=True, device=device, seed=seed,
                                    progress=False).history
        rows.append({"start": start, "views": views, "lr": lr, "τ": tau, "images": len(sub), "epochs": epochs,
                     "loss, first epoch": hist.train_loss[0], "loss, last epoch": hist.train_loss[-1],
                     "collapse value": collapse_value(P.batch_size),
                     "5-NN": knn_accuracy(embeddings(net, probe, device), probe.labels.numpy()),
                     "NT-Xent loss, first epoch": ntxent[0], "NT-Xent loss, last epoch": ntxent[-1]})
    return pd.DataFrame(rows)


def collapsed(frame: pd.DataFrame, tolerance: float = 0.05) -> pd.Series:
    """Rows whose last loss is within `tolerance` nats of (or above) the collapse value."""
    return frame["loss, last epoch"] > frame["collapse value"] - tolerance


def regime_table(results, noise: float) -> pd.DataFrame:
    """Per seed, the number beside each mechanism: the DRM model's validation accuracy against its labels'
    accuracy (1 - noise), the relabels, their precision, the noise before and after, P(α_noisy < α_clean), and the
    lowest test accuracy any AL cycle of any arm reached."""
    rows = []
    for r in results:
        rows.append({"seed": r.seed, "DRM val accuracy": r.step1.drm.history["val_acc"][-1],
                     "label accuracy": 1 - r.noise_before if r.noise_before == r.noise_before else 1 - noise,
                     "relabels": r.relabels, "relabel precision": r.relabel_precision,
                     "noise before": r.noise_before, "noise after": r.noise_after,
                     "P(α_noisy < α_clean)": r.alpha_auc,
                     "lowest AL cycle accuracy": min(c["accuracy"] for run in r.al.values() for c in run.cycles)})
    return pd.DataFrame(rows).set_index("seed")


def second_regime(P, dataset: str, data_root, seed: int, warm: WarmStart, drm_kwargs: dict, device=None):
    """A pool whose DRM model can be more accurate than its labels: `P.scale_pool` images with `P.scale_noise`
    *symmetric* noise (its errors fall on clear faces too, where annotator noise picks ambiguous ones), the
    DRM trained from the warm start for `P.drm_epochs` and relabeling from its middle epoch. Returns its per-epoch
    audit (`fucle.relabel_frame`) and what sets it apart from the main pool besides the noise kind: its size, noise
    rate, initialization and its one seed (`regime_text` prints them as confounds)."""
    pool, val, _ = fucle.seed_data(dataset, data_root, seed=seed, n_pool=P.scale_pool, n_val=P.n_val,
                                   n_test=P.n_val, size=P.image_size, channels=P.channels,
                                   noise_rate=P.scale_noise, noise_kind="symmetric")
    frame = fucle.scale_run(pool, val=val, model_name=P.model, epochs=P.drm_epochs, batch_size=P.drm_batch_size,
                            lr=P.lr, drm_kwargs=drm_kwargs, seed=seed, device=device, init=warm.path,
                            relabel_start_epoch=P.drm_epochs // 2)
    label_accuracy = 1 - float((pool.labels != pool.clean_labels).float().mean())
    return frame, {"pool": len(pool), "noise": P.scale_noise, "label_accuracy": label_accuracy, "seeds": 1,
                   "init": "the warm start" if warm.path is not None else "random weights"}


def regime_summary(frame: pd.DataFrame, label_accuracy: float) -> dict:
    """The last relabeling epoch of a `relabel_frame`: the model's val accuracy, relabel precision, the noise
    after it, and whether the model was more accurate than its labels."""
    audited = frame.dropna(subset=["precision"])
    last = (audited if len(audited) else frame).iloc[-1]
    noise0 = 1 - label_accuracy
    return {"val_accuracy": float(last["val_accuracy"]), "precision": float(last["precision"]),
            "noise_before": noise0, "noise_after": float(frame["noise_rate"].iloc[-1]),
            "relabeled": int(frame["relabeled"].sum()), "above_labels": float(last["val_accuracy"]) > label_accuracy,
            "label_accuracy": label_accuracy,
            "precision_all": float(frame["correct"].sum() / max(frame["relabeled"].sum(), 1))}


def _trend(before: float, after: float) -> str:
    """The word for a change in label noise, "stays" when it does not show at 3 decimals."""
    if abs(after - before) < 5e-4:
        return "stays"
    return "falls" if after < before else "rises"


def regime_text(main: dict, second: dict, info: dict, noise: float, noise_kind: str) -> str:
    """The two-regime takeaway, from the numbers: each pool's model against its labels, its relabels' precision and
    the noise before and after; on the main pool, in how many seeds the noise fell and, from the per-change
    breakdown (`fucle.relabel_transitions`), why a precision under 0.5 can still lower it; and the differences
    between the two pools other than the noise kind, which keep the comparison from naming a cause."""
    def one(name, s):
        where = "more" if s["above_labels"] else "less"
        trend = _trend(s["noise_before"], s["noise_after"])
        noise = (f"the label noise stays at {s['noise_after']:.3f}" if trend == "stays" else
                 f"the label noise {trend} from {s['noise_before']:.3f} to {s['noise_after']:.3f}")
        relabels = (f"its {s['relabeled']} relabels are right {s['precision_all']:.0%} of the time and"
                    if s["relabeled"] > 0 else "it relabels (almost) nothing and")
        return (f"{name}: the DRM model ends at validation accuracy {s['val_accuracy']:.2f}, **{where} accurate than "
                f"its labels** ({s['label_accuracy']:.2f}); {relabels} {noise}")
    out = "**Takeaway.** " + one(f"Main pool ({noise:.0%} {noise_kind} noise, mean of {main['seeds']} seeds)", main)
    if "noise_fell" in main:
        out += f" (it fell in {main['noise_fell']} of {main['seeds']} seeds)"
    out += ". "
    moved = sum(main.get(k, 0) for k in ("wrong_to_right", "right_to_wrong", "wrong_to_wrong"))
    if moved >= 0.5:
        w2r, r2w, w2w = main["wrong_to_right"], main["right_to_wrong"], main["wrong_to_wrong"]
        out += (f"Its changes per seed (mean) were {w2r:.0f} wrong → right, {r2w:.0f} right → wrong and {w2w:.0f} "
                "wrong → wrong: a change that makes a right label wrong adds an error, one that makes a wrong label "
                "right removes one, and one that moves a wrong label to another wrong class leaves the count as it "
                "was. ")
        if main["precision_all"] < 0.5 and main["noise_after"] < main["noise_before"]:
            out += (f"So a precision under 0.5 still lowers the noise here: {w2w:.0f} of the changes that are not "
                    f"right hit labels that were already wrong, and only the {r2w:.0f} right → wrong ones add "
                    f"errors, fewer than the {w2r:.0f} it fixes. ")
    rose = main.get("noise_rose", [])
    hurt = "; ".join(f"seed {seed}: {b:.3f} → {a:.3f}" for seed, b, a in rose)
    if main["relabeled"] == 0 and moved < 0.5:
        out += "The DRM relabeled (almost) nothing on the main pool, so neither regime acts there. "
    elif main["noise_after"] <= main["noise_before"]:
        below = " even with the model below its labels" if not main["above_labels"] else ""
        out += (f"On average relabeling lowers the main pool's noise{below}, so the mean shows no arm where "
                "relabeling hurts" + (f"; single seeds do ({hurt})" if rose else "") + ". Section 7-8's δ2 sweep "
                "tests the threshold that relabels most. ")
    else:
        out += (f"Here relabeling hurts: on average it raises the main pool's noise"
                + (f" ({hurt})" if rose else "") + ". ")
    out += one(f"{info['pool']}-image pool with {info['noise']:.0%} symmetric noise", second) + ". "
    comparison = ("more" if second["precision_all"] > main["precision_all"] else
                  "less" if second["precision_all"] < main["precision_all"] else "as")
    out += (f"Relabels are right {comparison} often on the second pool ({second['precision_all']:.0%} vs "
            f"{main['precision_all']:.0%}), but the pools differ in more than the noise kind (symmetric vs "
            f"{noise_kind}): in size ({info['pool']} vs {main.get('pool', 'the main pool')} images), noise rate "
            f"({info['noise']:.0%} vs {noise:.0%}), initialization ({info.get('init', 'the warm start')} vs the "
            f"SupCon checkpoint) and seeds ({info.get('seeds', 1)} vs {main['seeds']}), so this run does not say "
            "which of them makes the difference.")
    return out


def regime_frame(main: dict, second: dict) -> pd.DataFrame:
    """The two regimes side by side, with readable column names."""
    names = {"val_accuracy": "model val accuracy", "label_accuracy": "label accuracy", "above_labels":
             "model above labels", "relabeled": "relabels", "precision_all": "precision, all relabels",
             "precision": "precision, last relabeling epoch", "noise_before": "noise before",
             "noise_after": "noise after"}
    return pd.DataFrame({"main pool (mean of seeds)": main, "second pool": second}).T[list(names)].rename(
        columns=names)


def main_regime(results) -> dict:
    """`regime_summary` averaged over the main pool's seeds (the numbers `regime_text` prints), with the number of
    seeds, the pool size, the seeds whose noise fell, and the mean per-seed count of each kind of label change
    (`fucle.relabel_transitions` of the DRM's log)."""
    parts = [regime_summary(r.relabel_epochs, 1 - r.noise_before) for r in results]
    out = {k: float(np.mean([p[k] for p in parts])) for k in ("val_accuracy", "precision", "noise_before",
                                                             "noise_after", "label_accuracy", "precision_all")}
    out["relabeled"] = int(round(np.mean([p["relabeled"] for p in parts])))
    out["above_labels"] = out["val_accuracy"] > out["label_accuracy"]
    out["seeds"], out["pool"] = len(results), results[0].pool_size
    out["noise_fell"] = int(sum(r.noise_after < r.noise_before for r in results))
    out["noise_rose"] = [(r.seed, r.noise_before, r.noise_after) for r in results if r.noise_after > r.noise_before]
    moves = [fucle.relabel_transitions(r.step1.drm.log.tensors()) for r in results]
    out.update({k: float(np.mean([m[k] for m in moves])) for k in moves[0]})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Sensitivity sweeps (Fig. 3 and Fig. 4)
# ---------------------------------------------------------------------------------------------------------------
def delta_sweeps(results, data: dict, P, drm_kwargs: dict, device=None) -> pd.DataFrame:
    """Fig. 4: the DRM stage re-run from each seed's SupCon checkpoint with δ1 at each of `P.delta1_values` (every
    seed) and δ2 at each of `P.delta2_values` (the first `P.delta2_seeds` seeds); `fucle.drm_sweep` rows (accuracy,
    relabels, their precision, the label noise before and after). The δ1 of the main run is not re-run: with the
    same settings and seed its DRM is that point (deterministic)."""
    frames = []
    common = dict(model_name=P.model, drm_epochs=P.drm_epochs, batch_size=P.drm_batch_size, lr=P.lr,
                  drm_kwargs=drm_kwargs, device=device)
    main = drm_kwargs.get("delta1", 0.15)
    for i, r in enumerate(results):
        pool, val, test = data[r.seed]
        others = [v for v in P.delta1_values if v != main]
        frames.append(fucle.drm_sweep(r, pool, val=val, test=test, param="delta1", values=others, **common))
        if main in P.delta1_values:     # the seed's own DRM run is that point: same settings, same seed
            frames.append(pd.DataFrame([{"param": "delta1", "value": main, "seed": r.seed,
                                         "accuracy": r.step1.test_accuracy["drm"], "relabeled": r.relabels,
                                         "precision": r.relabel_precision, "noise_before": r.noise_before,
                                         "noise_after": r.noise_after}]))
        if i < P.delta2_seeds:
            frames.append(fucle.drm_sweep(r, pool, val=val, test=test, param="delta2", values=P.delta2_values,
                                          **common))
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["param", "seed", "value"], ignore_index=True)


def al_sweeps(results, data: dict, P, a: SimpleNamespace, device=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fig. 3 on the first `P.sweep_seeds` seeds, from each seed's DRM checkpoint (FUCLE's AL phase):
    (a) initial labeled fraction in `P.initial_fractions` with the notebook's budget and cycles;
    (b) one run of `P.max_cycles` cycles read cycle by cycle (accuracy after c cycles, c = 0 .. max_cycles)."""
    rows_a, rows_b = [], []
    common = dict(model_name=P.model, steps=a.steps, al_batch_size=P.al_batch_size, lr=P.fit_lr, device=device)
    for r in results[:P.sweep_seeds]:
        pool, val, test = data[r.seed]
        settings = [dict(initial_fraction=f, budget=a.budget, cycles=a.cycles) for f in P.initial_fractions
                    if f != a.initial_fraction]
        if settings:
            rows_a.append(fucle.al_sweep(r, pool, test=test, val=val, settings=settings, **common))
        main = r.al[fucle.FUCLE]
        rows_a.append(pd.DataFrame([{"initial_fraction": a.initial_fraction, "budget": a.budget, "cycles": a.cycles,
                                     "seed": r.seed, "accuracy": main.final_accuracy,
                                     "final labeled": main.labeled_counts[-1]}]))
        model_fn = fucle.model_factory(P.model, pool.num_classes, pool.channels, pool.image_size,
                                       r.step1.checkpoints["drm"])
        long = active.run_active_learning("least_confidence", pool.with_labels(r.step1.drm.labels), test,
                                          model_fn=model_fn, initial_fraction=a.initial_fraction, budget=a.budget,
                                          cycles=P.max_cycles, seed=r.seed, val=val, device=device,
                                          fit_kwargs=dict(steps=a.steps, batch_size=P.al_batch_size, lr=P.fit_lr,
                                                          augment="weak"))
        rows_b += [{"seed": r.seed, "cycles": c["cycle"], "n_labeled": c["n_labeled"], "accuracy": c["accuracy"]}
                   for c in long.cycles]
    return pd.concat(rows_a, ignore_index=True), pd.DataFrame(rows_b)


# ---------------------------------------------------------------------------------------------------------------
# Tables and takeaways
# ---------------------------------------------------------------------------------------------------------------
def shared_runs(results, strategies) -> list:
    """The seeds' results that ran every one of `strategies`: the only seeds on which strategies may be compared
    (the first `strategy_seeds` seeds run them all, the others only random and least confidence)."""
    return [r for r in results if all(s in r.al for s in strategies)]


def table1(results, strategies, dataset: str, sigma: bool) -> pd.DataFrame:
    """Table 1: every strategy and FUCLE, mean and std of the final accuracy over the seeds that ran it, the mean
    on the seeds every strategy ran (`shared_runs`, comparable across rows), the AULC, the seeds, the labels read
    and the paper's number."""
    rows = [*strategies, fucle.FUCLE] + (["FUCLE + sigma data addition"] if sigma else [])
    shared = shared_runs(results, strategies)
    out = []
    for name in rows:
        ran = [r for r in results if name in r.al]
        final = np.array(fucle.per_seed(ran, name))
        both = [r for r in shared if name in r.al]
        out.append({"method": name, "accuracy": final.mean(), "std": final.std(ddof=1) if len(final) > 1 else np.nan,
                    "accuracy, shared seeds": np.mean(fucle.per_seed(both, name)) if both else np.nan,
                    "aulc": np.mean(fucle.per_seed(ran, name, "aulc")), "seeds": len(final),
                    "labels read": fucle._labels_read(ran[0], name, ran[0].al[name].labeled_counts[-1]),
                    "paper": fucle.paper_number(name, dataset)})
    return pd.DataFrame(out).set_index("method")


def strategies_text(results, strategies) -> str:
    """Which strategies ran on which seeds in this run, read from the results."""
    groups: dict[tuple, list] = {}
    for name in strategies:
        groups.setdefault(tuple(r.seed for r in results if name in r.al), []).append(name)
    return "; ".join(f"{', '.join(names)} on {_seeds(seeds)}" for seeds, names in groups.items())


def table1_text(t1: pd.DataFrame, results, strategies, warm: dict, t2: pd.DataFrame, cycles: int,
                pool_size: int) -> str:
    """Table 1's takeaway: which strategies ran where; the strategies compared on the seeds they share, with the
    scorecard's best set (`best_phrase`); random, LC and FUCLE on every seed against the warm start every arm
    starts from (its test accuracy on the same seeds and test splits); and the every-label fit (`every_label_text`)."""
    strategies = list(strategies)
    out = f"**Takeaway.** This run: {strategies_text(results, strategies)}. "
    shared = shared_runs(results, strategies)
    ids = [r.seed for r in shared]
    if shared:
        res = {s: fucle.per_seed(shared, s) for s in strategies}
        keep, _ = sc.best_set(res, ids)
        out += (f"After {cycles} cycle{'s' if cycles != 1 else ''}, on the {_seeds(ids)} that every strategy ran: "
                f"{best_phrase(res, ids)}"
                + (f"; the scorecard puts all {len(strategies)} in one best set" if len(keep) == len(strategies)
                   and len(ids) >= 2 else "") + ". ")
    names = [n for n in ("random", "least_confidence", fucle.FUCLE) if n in t1.index]
    out += "On all the seeds that ran them: " + ", ".join(
        f"{n} {t1.loc[n, 'accuracy']:.3f} ({int(t1.loc[n, 'seeds'])} seeds)" for n in names) + ". "
    ws = {s: w.accuracy for s, w in warm.items() if w.path is not None}
    if ws:
        pair = {}
        for n in dict.fromkeys([*names, *strategies]):
            ran = [r for r in results if n in r.al and r.seed in ws]
            pair[n] = (float(np.mean(fucle.per_seed(ran, n))), float(np.mean([ws[r.seed] for r in ran])))
        below = [n for n in strategies if pair[n][0] <= pair[n][1]]
        out += ("Every arm starts from the warm start; against its test accuracy on the same seeds: "
                + ", ".join(f"{n} {pair[n][0]:.3f} vs {pair[n][1]:.3f} ({pair[n][0] - pair[n][1]:+.3f})"
                            for n in names)
                + f"; {len(below)} of {len(strategies)} strategies end at or below it (means over their seeds)"
                + (", so no strategy's active learning ends above the model it starts from in this run"
                   if len(below) == len(strategies) else "") + ". ")
    out += every_label_text(t2) + (f" FUCLE's curve starts high because its step 1 has already read all {pool_size} "
                                   "pool labels (section 5 separates what that is worth).")
    return out


def table2(results, dataset: str) -> pd.DataFrame:
    """Table 2 and its controls (`fucle.final_table` rows that exist in this run)."""
    table = fucle.final_table(results)
    rows = [n for n in ("least_confidence", "SupCon + LC", fucle.FUCLE, "control: SupCon + CE + LC",
                        "control: SupCon + DRM, relabeling off + LC", "control: NT-Xent (no labels) + LC",
                        "step-1 DRM model, no AL", "control: step-1 SupCon + CE model, no AL",
                        fucle.NO_RELABEL_STEP1, fucle.EVERY_LABEL) if n in table.index]
    out = table.loc[rows, ["accuracy", "std", "seeds", "labels read", "reads pool in step 1"]].copy()
    out["paper"] = [fucle.paper_number(m, dataset) for m in out.index]
    return out


def every_label_text(t2: pd.DataFrame) -> str:
    """The every-label fit (`fucle.EVERY_LABEL`: every pool label, as many optimizer steps as FUCLE's step 1 and AL
    fits) beside the other rows that read every pool label: an upper bound only where none of them beats it."""
    if fucle.EVERY_LABEL not in t2.index:
        return ""
    a = t2["accuracy"]
    e = a[fucle.EVERY_LABEL]
    peers = t2[t2["reads pool in step 1"].astype(bool) & (t2.index != fucle.EVERY_LABEL)]
    above = [n for n in peers.index if a[n] > e]
    out = f"One fit on every pool label at FUCLE's optimizer steps reaches {e:.3f}"
    if above:
        return (out + ": below " + "; ".join(f"{n} {a[n]:.3f}" for n in above) + " (arms that read the same labels), "
                "so it is not an upper bound here, only one fit at that budget.")
    return out + ", at or above every other arm that reads every pool label."


def table2_text(t2: pd.DataFrame, warm_start: bool = True) -> str:
    """Table 2's takeaway: the ablation rows and controls, why SupCon + LC may trail LC (a reason not measured), and
    the every-label fit beside the rows that read the same labels."""
    a = t2["accuracy"]
    get = lambda k: f"{a[k]:.3f}" if k in a else "not run"
    out = (f"**Takeaway.** Pre-training + LC {get('SupCon + LC')} vs LC {get('least_confidence')}; FUCLE "
           f"{get(fucle.FUCLE)}. Controls: plain CE instead of the DRM {get('control: SupCon + CE + LC')}; step 1 "
           f"alone, no active learning: DRM {get('step-1 DRM model, no AL')}, CE "
           f"{get('control: step-1 SupCon + CE model, no AL')}, DRM with relabeling off "
           f"{get(fucle.NO_RELABEL_STEP1)}. ")
    if warm_start and "SupCon + LC" in a and "least_confidence" in a:
        trails = a["SupCon + LC"] < a["least_confidence"]
        out += (("SupCon + LC trails LC. A possible reason, not measured here: " if trails else
                 "Note on SupCon + LC: ") + "its AL fits start from the warm start's classifier head on a backbone "
                "SupCon has changed (SupCon trains the backbone and its own projection head and leaves the "
                "classifier as it was), so the head may no longer fit the features it reads; LC's fits start from "
                "the warm start's backbone and head, trained together. ")
    return out + every_label_text(t2) + " The scorecard turns each difference into a verdict with its interval."


def cost_table(results, t2: pd.DataFrame, warm: dict) -> pd.DataFrame:
    """Table 3 on this machine: wall time per seed of each pipeline's stages and its peak memory."""
    stage = lambda key: float(np.mean([r.step1.seconds[key] for r in results]))
    al = lambda arm: float(np.mean(fucle.per_seed([r for r in results if arm in r.al], arm, "seconds")))
    peak = lambda arm, keys: max([r.step1.peak_mb[k] for r in results for k in keys] +
                                 [fucle.peak_mb(r.al[arm]) for r in results if arm in r.al])
    warm_s = float(np.mean([w.seconds for w in warm.values()]))
    cost = pd.DataFrame({
        "Least confidence": {"pre-training s": 0.0, "DRM s": 0.0, "AL s": al("least_confidence"),
                             "peak MB": peak("least_confidence", [])},
        "Pre-training + LC": {"pre-training s": stage("supcon"), "DRM s": 0.0, "AL s": al("SupCon + LC"),
                              "peak MB": peak("SupCon + LC", ["supcon"])},
        "Pre-training + DRM + LC": {"pre-training s": stage("supcon"), "DRM s": stage("drm"),
                                    "AL s": al(fucle.FUCLE), "peak MB": peak(fucle.FUCLE, ["supcon", "drm"])},
    }).T
    cost["total s"] = cost[["pre-training s", "DRM s", "AL s"]].sum(axis=1)
    cost["accuracy"] = [t2.loc[k, "accuracy"] for k in ("least_confidence", "SupCon + LC", fucle.FUCLE)]
    cost["paper s / epoch (KDEF)"] = [427, 446.56, 449.05]
    cost.attrs["warm_seconds"] = warm_s
    return cost


def cost_text(cost: pd.DataFrame) -> str:
    total = cost["total s"]
    return (f"**Takeaway.** On this machine step 1 multiplies the pipeline's time by {total.iloc[-1] / total.iloc[0]:.1f}x "
            f"({total.iloc[0]:.0f} s -> {total.iloc[-1]:.0f} s per seed; the shared warm start, "
            f"{cost.attrs['warm_seconds']:.0f} s per seed when trained, is not counted: every arm uses it). The "
            "paper reports +5 % per epoch on a GPU, where its pre-training cost is spread over far longer AL "
            "training.")


def sweep_optima(sweep: pd.DataFrame, sweep_a: pd.DataFrame, sweep_b: pd.DataFrame) -> dict:
    """{name: (results, seeds)} for Fig. 4's δ1 and Fig. 3's initial fraction and cycles: `results` maps each setting
    to its accuracy on each of `seeds` (the seeds that ran every setting, in order). `claims` scores these with
    `sc.optimum` and `sweep_text` reads the same best sets, so the text and the scorecard agree."""
    out = {}
    for name, frame, col, cast in (("δ1", sweep[sweep.param == "delta1"], "value", float),
                                   ("initial fraction", sweep_a, "initial_fraction", float),
                                   ("cycles", sweep_b, "cycles", int)):
        values = sorted(frame[col].unique())
        seeds = sorted(set.intersection(*(set(frame[frame[col] == v].seed) for v in values))) if values else []
        out[name] = ({cast(v): [float(frame[(frame[col] == v) & (frame.seed == s)]["accuracy"].iloc[0])
                                for s in seeds] for v in values}, [int(s) for s in seeds])
    return out


def best_phrase(results: dict, seeds, fmt=str) -> str:
    """"highest mean X (acc over n seeds)" and whether the paired 95 % interval (`sc.best_set`, the scorecard's
    rule) separates X from the other settings: never "best" where the interval does not say so."""
    keep, best = sc.best_set(results, seeds)
    n = len(seeds)
    out = f"highest mean {fmt(best)} ({np.mean(results[best]):.3f} over {n} seed{'s' if n != 1 else ''})"
    others = [k for k in results if k != best]
    inside = [fmt(k) for k in others if k in keep]
    outside = [fmt(k) for k in others if k not in keep]
    if not others:
        return out
    if n < 2:
        return out + "; one seed gives no interval, so nothing separates it from the other values"
    if not outside:
        return (out + "; the paired 95 % interval does not separate it from any other value tried "
                f"({', '.join(inside)})")
    if not inside:
        return out + "; the paired 95 % interval separates it from every other value tried"
    return (out + f"; the paired 95 % interval separates it from {', '.join(outside)} but not from "
            f"{', '.join(inside)}")


def _seeds(seeds) -> str:
    return f"seed{'s' if len(seeds) != 1 else ''} {', '.join(str(int(s)) for s in seeds)}"


def delta2_text(sweep: pd.DataFrame, off: dict) -> str:
    """Fig. 4's δ2 rows: relabels, precision and the label noise after each threshold (does any δ2 raise the noise,
    i.e. make relabeling hurt?), and the DRM with relabeling off on the same seeds."""
    d2 = sweep[sweep.param == "delta2"]
    if d2.empty:
        return ""
    seeds = sorted(d2.seed.unique())
    g = d2.groupby("value")[["accuracy", "relabeled", "precision", "noise_before", "noise_after"]].mean()
    lo, hi, most = g.index[0], g.index[-1], g["relabeled"].idxmax()
    prec = lambda v: f"{g.loc[v, 'precision']:.2f}" if g.loc[v, "precision"] == g.loc[v, "precision"] else "none"
    out = (f"δ2 ({_seeds(seeds)}, Eq. 7 off): relabels fall from {g.loc[lo, 'relabeled']:.0f} at δ2 = {lo:g} to "
           f"{g.loc[hi, 'relabeled']:.0f} at δ2 = {hi:g} while their precision goes from {prec(lo)} to {prec(hi)}"
           + (" (none: no relabels to score). " if "none" in (prec(lo), prec(hi)) else ". "))
    if g["noise_after"].notna().all():
        before = float(g["noise_before"].mean())
        hurt = [v for v in g.index if g.loc[v, "noise_after"] > g.loc[v, "noise_before"]]
        lowest = " and the lowest precision" if g["precision"].idxmin() == most else ""
        out += (f"The label noise, {before:.3f} before, ends at "
                + ", ".join(f"{g.loc[v, 'noise_after']:.3f} (δ2 = {v:g})" for v in g.index) + f". δ2 = {most:g} "
                f"(the most relabels{lowest}) {'raises' if most in hurt else 'does not raise'} it")
        out += (": " + ", ".join(f"δ2 = {v:g}" for v in hurt) + " is where relabeling hurts. " if hurt else
                "; no δ2 tried raises it, so no arm of this sweep shows relabeling that hurts. ")
    same = [off[s] for s in seeds if s in off and off[s] == off[s]]
    if same:
        out += (f"The DRM with relabeling off scores {np.mean(same):.3f} on the same {_seeds(seeds)} (δ2 points "
                f"{g['accuracy'].min():.3f} to {g['accuracy'].max():.3f}). ")
    return out


def sweep_text(sweep: pd.DataFrame, sweep_a: pd.DataFrame, sweep_b: pd.DataFrame, off: dict) -> str:
    """Fig. 3 and 4's takeaway: each sweep's highest mean and whether the interval separates it (`best_phrase`, the
    scorecard's rule), the δ2 rows (`delta2_text`), and relabeling off on the same seeds as the points beside it.
    `off`: {seed: test accuracy of the step-1 DRM with relabeling off}."""
    opt = sweep_optima(sweep, sweep_a, sweep_b)
    (d1, s1), (fr, sf), (cy, sc_) = opt["δ1"], opt["initial fraction"], opt["cycles"]
    out = f"**Takeaway.** δ1: {best_phrase(d1, s1, lambda v: f'{v:g}')} (the paper: 0.15)"
    off1 = [off[s] for s in s1 if s in off and off[s] == off[s]]
    out += (f"; with relabeling off the DRM scores {np.mean(off1):.3f} on the same {_seeds(s1)}. " if off1 else ". ")
    out += delta2_text(sweep, off)
    labels = sweep_a.groupby("initial_fraction")["final labeled"].mean()
    out += (f"Initial fraction: {best_phrase(fr, sf, lambda v: f'{v:.0%}')}; a larger initial set also ends with more "
            "labels in its AL set (" + ", ".join(f"{f:.0%}: {n:.0f}" for f, n in labels.items()) + ") (the paper: "
            "5 % on FER13 and RAF-DB, 15 % on KDEF). ")
    n_lab = sweep_b.groupby("cycles")["n_labeled"].mean()
    after = lambda c: "after " + _plural(c, "cycle")
    out += (f"Cycles: {best_phrase(cy, sc_, after)}; each cycle adds labels "
            f"({n_lab.iloc[0]:.0f} after {_plural(n_lab.index[0], 'cycle')}, {n_lab.iloc[-1]:.0f} after "
            f"{n_lab.index[-1]}), so later cycles also read more (the paper: 7 is best).")
    return out


# ---------------------------------------------------------------------------------------------------------------
# The scorecard, declared as data
# ---------------------------------------------------------------------------------------------------------------
def claims(card: sc.Scorecard, c: SimpleNamespace) -> None:
    """Every row of notebook 01's scorecard. `c` carries: results, seeds, dataset, n_test, strategies, knn (the
    `knn_table`), diagnosis, main (`main_regime`), second (its `regime_summary`), sweep, sweep_a, sweep_b, t1, t2."""
    R, seeds, ds, n_test = c.results, c.seeds, c.dataset, c.n_test
    acc = lambda arm, rs=R: fucle.per_seed(rs, arm)
    on = lambda arm: [r for r in R if arm in r.al]
    ids = lambda rs: [r.seed for r in rs]
    pair = lambda a, b, rs=R, **kw: sc.paired(acc(a, rs), acc(b, rs), ids(rs), n_test=n_test, **kw)
    knn = c.knn
    # SupCon (Eq. 1)
    collapse = float(knn["collapse value ln(2B-1)"].iloc[0])
    card.claim("SupCon pre-training learns: its loss ends below the collapse value ln(2B - 1)", f"< {collapse:.2f}",
               sc.against(knn["SupCon loss, last epoch"].to_numpy(), collapse, seeds, direction="<",
                          name="last-epoch loss", reference_name="ln(2B-1)"),
               "not in the paper: the check that Eq. 1 did not collapse")
    card.claim("SupCon features separate expressions: 5-NN at least 0.10 above random weights", "-",
               sc.against(knn["5-NN, SupCon"].to_numpy() - knn["5-NN, random weights"].to_numpy(), 0.10, seeds,
                          name="5-NN(SupCon) - 5-NN(random)", reference_name="0.10"),
               "not in the paper; 5-fold CV on 600 test images per seed")
    if "5-NN, warm start" in knn:
        card.claim("SupCon adds to the warm start's features (5-NN)", "-",
                   sc.paired(knn["5-NN, SupCon"].to_numpy(), knn["5-NN, warm start"].to_numpy(), seeds,
                             names=("SupCon", "warm start")),
                   "not in the paper: SupCon runs on the pool's noisy labels")
    diag = c.diagnosis
    runs = ", ".join(f"{row['views']} views, lr {row['lr']:g}, τ {row['τ']:g}, from {row['start']}: "
                     f"{row['loss, last epoch']:.3f}" for _, row in diag.iterrows())
    card.claim("without a warm start SupCon collapses under every setting tried (the cause measured here)", "-",
               sc.exact(bool(collapsed(diag).all()),
                        f"{int(collapsed(diag).sum())} of {len(diag)} runs end within 0.05 of ln(2B-1) = "
                        f"{collapse:.3f}; {runs}", "last-epoch loss > ln(2B-1) - 0.05 in every diagnosis run"),
               "one seed, short runs on a slice of the pool (section 1)")
    # the DRM (Eq. 2-7)
    m, s2 = c.main, c.second
    where = (f"{c.second_info['pool']} images, {c.second_info['noise']:.0%} symmetric noise, one seed: model "
             f"{s2['val_accuracy']:.3f} vs labels {s2['label_accuracy']:.3f}, noise {s2['noise_before']:.3f} -> "
             f"{s2['noise_after']:.3f}")
    outcomes = fucle.relabel_outcomes(c.second_frame)
    evidence = sc.bootstrap_against(outcomes, 0.5, name="relabel precision") if len(outcomes) else None
    if not s2["above_labels"] or evidence is None:
        evidence = sc.not_measurable(where, "the DRM model did not beat its labels, or relabeled nothing")
    card.claim("where the DRM model beats its labels, its relabels are right more often than not", "SCN / FUCLE: "
               "relabeling fixes noisy labels", evidence, where)
    relabeled = [r for r in R if r.relabels > 0]
    note = f"DRM model {m['val_accuracy']:.3f} vs label accuracy {m['label_accuracy']:.3f}"
    card.claim("on the main pool the DRM's relabels are right more often than not", "-",
               sc.against(fucle.per_seed(relabeled, "relabel_precision"), 0.5, ids(relabeled),
                          name="relabel precision", reference_name="0.5") if len(relabeled) >= 2 else
               sc.not_measurable(f"{len(relabeled)} of {len(R)} seeds relabeled anything", "needs >= 2 seeds "
                                 "with relabels"), note)
    noise_b, noise_a = fucle.per_seed(R, "noise_before"), fucle.per_seed(R, "noise_after")
    card.claim("the DRM lowers the main pool's label noise", "-",
               sc.paired(noise_a, noise_b, seeds, direction="<", names=("noise after", "noise before")))
    card.claim("α ranks wrongly labeled images below correctly labeled ones", "-",
               sc.against(fucle.per_seed(R, "alpha_auc"), 0.5, seeds, name="P(α_noisy < α_clean)",
                          reference_name="0.5"), "not in the paper: α's signal, Eq. 2")
    # active learning (Table 1)
    lowest = min(cy["accuracy"] for r in R for run in r.al.values() for cy in run.cycles)
    card.claim("every AL cycle runs on a working model (test accuracy >= 0.5)", "-",
               sc.exact(lowest >= 0.5, f"lowest cycle accuracy {lowest:.3f}", "every cycle of every arm >= 0.5"))
    reads = f"FUCLE's step 1 read all {R[0].pool_size} pool labels; LC read {c.t1.loc['least_confidence', 'labels read']}"
    card.claim("FUCLE beats least confidence at the same AL budget (Table 1)",
               fucle.paper_pair(fucle.FUCLE, "least_confidence", ds),
               pair(fucle.FUCLE, "least_confidence", names=("FUCLE", "LC")), reads)
    card.claim("least confidence beats random sampling (Table 1, final accuracy)",
               fucle.paper_pair("least_confidence", "random", ds),
               pair("least_confidence", "random", names=("LC", "random")))
    card.claim("least confidence beats random over the whole budget (AULC)", "-",
               sc.paired(fucle.per_seed(R, "least_confidence", "aulc"), fucle.per_seed(R, "random", "aulc"), seeds,
                         n_test=n_test, names=("LC AULC", "random AULC")), "not in the paper")
    full = shared_runs(R, c.strategies)
    if len(c.strategies) >= 3 and len(full) >= 2:
        card.claim("least confidence is the best existing strategy (Table 1, KDEF)", "best of 9",
                   sc.optimum({s: acc(s, full) for s in c.strategies}, ids(full), "least_confidence", n_test=n_test,
                              name="strategy"), f"{len(c.strategies)} strategies x {len(full)} seeds")
    else:
        card.claim("least confidence is the best existing strategy (Table 1, KDEF)", "best of 9",
                   sc.not_measurable(f"{len(c.strategies)} strategies on {len(full)} seeds",
                                     "needs >= 3 strategies on >= 2 seeds"))
    # Table 2 and the controls
    card.claim("pre-training improves least confidence (Table 2)",
               fucle.paper_pair("SupCon + LC", "least_confidence", ds),
               pair("SupCon + LC", "least_confidence", names=("SupCon + LC", "LC")))
    card.claim("the DRM improves pre-training + LC (Table 2)", fucle.paper_pair(fucle.FUCLE, "SupCon + LC", ds),
               pair(fucle.FUCLE, "SupCon + LC", names=("FUCLE", "SupCon + LC")))
    if on("control: SupCon + CE + LC"):
        card.claim("control: the DRM beats plain CE fine-tuning on the same labels", "-",
                   pair(fucle.FUCLE, "control: SupCon + CE + LC", names=("FUCLE", "SupCon + CE + LC")),
                   "not in the paper: isolates the DRM's loss and relabeling from extra supervised epochs")
    if all("drm_no_relabel" in r.step1.test_accuracy for r in R):
        evidence = sc.paired(fucle.per_seed(R, "step1:drm"), fucle.per_seed(R, "step1:drm_no_relabel"), seeds,
                             n_test=n_test, names=("DRM", "relabeling off"))
        if m["relabeled"] == 0:
            evidence = sc.not_measurable(evidence.measured, "the DRM relabeled nothing on the main pool")
        card.claim("control: relabeling (Eq. 6) adds to the DRM's step-1 model", "-", evidence,
                   "not in the paper: the same DRM with Eq. 6 switched off, before AL")
    card.claim("control: active learning adds to the step-1 model (two-step scheme)", "-",
               sc.paired(acc(fucle.FUCLE), fucle.per_seed(R, "step1:drm"), seeds, n_test=n_test,
                         names=("FUCLE after AL", "step-1 DRM model")), "not in the paper")
    card.claim("control: FUCLE beats one fit on every pool label (equal label reads, at least its steps)", "-",
               sc.paired(acc(fucle.FUCLE), fucle.per_seed(R, "full_pool"), seeds, n_test=n_test,
                         names=("FUCLE", "every pool label")),
               "not in the paper: both read every pool label; the every-label fit trains as many steps as step 1 + AL")
    # Fig. 4 and Fig. 3 (the same best sets `sweep_text` prints)
    opt = sweep_optima(c.sweep, c.sweep_a, c.sweep_b)
    res, d1_seeds = opt["δ1"]
    card.claim("δ1 = 0.15 is among the best margins (Fig. 4)", 0.15,
               sc.optimum(res, d1_seeds, 0.15, n_test=n_test, name="δ1") if len(d1_seeds) >= 2 else
               sc.not_measurable(f"{len(d1_seeds)} seed", "needs >= 2 seeds"))
    res, fr_seeds = opt["initial fraction"]
    card.claim("a 5 % initial labeled set is among the best (Fig. 3, FER13 / RAF-DB)", 0.05,
               sc.optimum(res, fr_seeds, 0.05, n_test=n_test, name="initial fraction")
               if len(fr_seeds) >= 2 and len(res) >= 2 else sc.not_measurable(f"{len(res)} fractions on "
                                                                              f"{len(fr_seeds)} seeds",
                                                                              "needs >= 2 of each"),
               "a larger initial set also ends with more labels in its AL set")
    res, b_seeds = opt["cycles"]
    card.claim("7 AL cycles are among the best (Fig. 3)", 7,
               sc.optimum(res, b_seeds, 7, n_test=n_test, name="cycles") if len(b_seeds) >= 2 else
               sc.not_measurable(f"{len(b_seeds)} seed", "needs >= 2 seeds"),
               "each budget adds labels, so later cycles also read more labels")


# ---------------------------------------------------------------------------------------------------------------
# Figures and the texts beside them (each from the numbers it shows)
# ---------------------------------------------------------------------------------------------------------------
def supcon_loss_figure(results, P):
    """SupCon's loss per epoch for every seed, with the collapse value ln(2B - 1) drawn."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for r in results:
        loss = r.step1.pretrain_history.train_loss
        ax.plot(range(1, len(loss) + 1), loss, marker="o", label=f"seed {r.seed}")
    ax.axhline(collapse_value(P.batch_size), color="k", ls="--", lw=1,
               label=f"collapse ln(2B-1) = {collapse_value(P.batch_size):.2f}")
    ax.set_xlabel("SupCon epoch"); ax.set_ylabel("loss (Eq. 1)"); ax.legend(fontsize=7); ax.grid(alpha=0.3)
    ax.set_title("SupCon pre-training from the warm start")
    return fig


def _kept(m) -> float:
    """Share of the warm start's 5-NN gain over random weights that SupCon's features keep."""
    return ((m["5-NN, SupCon"] - m["5-NN, random weights"])
            / (m["5-NN, warm start"] - m["5-NN, random weights"]))


def _plural(n, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def knn_text(knn: pd.DataFrame) -> str:
    m = knn.mean()
    warm = f", {m['5-NN, warm start']:.3f} from the warm start" if "5-NN, warm start" in m else ""
    return (f"**Takeaway.** SupCon's loss goes from {m['SupCon loss, first epoch']:.3f} to "
            f"{m['SupCon loss, last epoch']:.3f} (mean of {len(knn)} seeds) against the collapse value "
            f"{m['collapse value ln(2B-1)']:.3f}: "
            + ("it ended below it, so it did not collapse. " if m["SupCon loss, last epoch"] < m["collapse value ln(2B-1)"]
               - 0.05 else "it sits on it: the embedding collapsed. ")
            + f"The 5-NN accuracy of the trunk's features is "
            f"{m['5-NN, random weights']:.3f} with random weights{warm} and {m['5-NN, SupCon']:.3f} after SupCon. "
            + ("SupCon reads the pool's noisy labels and at this budget "
               + ("lowers the 5-NN accuracy of the warm start's features"
                  + (f" (it keeps {_kept(m):.0%} of the warm start's gain over random weights)."
                     if m["5-NN, warm start"] > m["5-NN, random weights"] else ".")
                  if "5-NN, warm start" in m and m["5-NN, SupCon"] < m["5-NN, warm start"] else
                  "raises the 5-NN accuracy above the warm start's." if "5-NN, warm start" in m else
                  "is the only pre-training here.")))


def diagnosis_text(diag: pd.DataFrame, chance: float, main_images: int | None = None,
                   main_epochs: int | None = None) -> str:
    """The diagnosis takeaway: how many runs without a warm start sat on the collapse value, label-free NT-Xent's
    own loss (from the table), and what else differs between these runs and the positive control (SupCon from the
    warm start on `main_images` pool images for `main_epochs` epochs)."""
    flags = collapsed(diag)
    n, collapse = int(flags.sum()), diag["collapse value"].iloc[0]
    out = (f"**Takeaway.** {n} of {len(diag)} SupCon runs without a warm start end within 0.05 of the collapse "
           f"value {collapse:.3f} (last-epoch losses {diag['loss, last epoch'].min():.3f} to "
           f"{diag['loss, last epoch'].max():.3f}; their 5-NN {diag['5-NN'].min():.2f}-{diag['5-NN'].max():.2f}, "
           f"chance {chance:.2f}). ")
    nt = diag.dropna(subset=["NT-Xent loss, last epoch"]) if "NT-Xent loss, last epoch" in diag else diag.iloc[:0]
    for _, row in nt.iterrows():
        first, last = row["NT-Xent loss, first epoch"], row["NT-Xent loss, last epoch"]
        then = "still collapsed. " if collapsed(pd.DataFrame([row])).iloc[0] else "did not collapse. "
        if int(row.get("epochs", 2)) < 2:
            out += (f"Label-free NT-Xent ran one epoch (loss {first:.3f}), too short to show whether it learns; "
                    "SupCon from its features " + then)
        else:
            out += (f"Label-free NT-Xent's own loss went from {first:.3f} to {last:.3f} (its collapse value is the "
                    "same ln(2B-1)): " + ("it fell, so NT-Xent learned its own task, and SupCon from its features "
                                          if last < first - 0.05 else
                                          "it barely moved, and SupCon from its features ") + then)
    if n == len(diag):
        out += ("Neither the learning rate, the temperature, the views nor label-free NT-Xent features get SupCon out "
                "of it here; section 1's first table gives SupCon from the warm start against the same value. ")
    else:
        out += "Runs that did not collapse: " + "; ".join(
            f"{r['start']}, {r['views']} views, lr {r['lr']:g}, τ {r['τ']:g}" for _, r in diag[~flags].iterrows())
        out += ". "
    if main_images is not None and "images" in diag:
        images, epochs = int(diag["images"].iloc[0]), int(diag["epochs"].iloc[0])
        more = [w for w, bigger in (("more data", main_images > images), ("more epochs", main_epochs > epochs))
                if bigger]
        out += (f"The positive control, SupCon from the warm start, ran on {main_images} pool images for "
                f"{_plural(main_epochs, 'epoch')}, these runs on {images} images for {_plural(epochs, 'epoch')}"
                + (f", so it differs in more than its start: {' and '.join(more)} may have helped it too."
                   if more else "."))
    return out


def tsne_figure(results, data: dict, warm: dict, P, device=None, n: int = 600):
    """t-SNE (scikit-learn) of the first seed's test embeddings from random weights, the warm start and SupCon."""
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    r = results[0]
    test = data[r.seed][2]
    sub = test.subset(torch.arange(min(n, len(test))))
    K = test.num_classes
    nets = backbones(r, test, warm, P)
    fig, axes = plt.subplots(1, len(nets), figsize=(4.6 * len(nets), 4.2))
    y = sub.labels.numpy()
    for ax, (name, net) in zip(axes, nets.items()):
        emb = embeddings(net, sub, device)
        xy = TSNE(2, init="pca", perplexity=30, random_state=r.seed).fit_transform(emb)
        for k in range(K):
            ax.scatter(xy[y == k, 0], xy[y == k, 1], s=5, label=test.classes[k])
        ax.set_title(f"{name}: 5-NN {knn_accuracy(emb, y):.2f} (seed {r.seed})", fontsize=9)
        ax.set_xticks([]); ax.set_yticks([])
    axes[-1].legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    return fig


def toy_text(toy_losses: dict, toy_table: pd.DataFrame, beta: float, delta1: float, delta2: float) -> str:
    n_rel = int((toy_table["relabeled to"] != "").sum())
    n_high = int(beta * len(toy_table))
    gap = toy_losses["alpha_H"] - toy_losses["alpha_L"]
    rr = (f"meets δ1 = {delta1}, so L_RR = 0" if toy_losses["L_RR"] == 0 else
          f"falls short of δ1 = {delta1}, so L_RR = {toy_losses['L_RR']:.3f}")
    return (f"**Takeaway.** β = {beta} puts the {n_high} largest α in the high group (mean α_H = "
            f"{toy_losses['alpha_H']:.3f}) and the rest in the low group (α_L = {toy_losses['alpha_L']:.3f}); the "
            f"margin α_H − α_L = {gap:.3f} {rr}. Eq. 6 relabels {n_rel} of the {len(toy_table) - n_high} low-group "
            f"samples at δ2 = {delta2}.")


def drm_audit(results, pool, truth: str):
    """The DRM over the whole pool: a figure (α by rank group, α by label correctness for the first seed, its
    per-epoch relabel audit, and every seed's δ2 trace), the per-seed audit table and its takeaway."""
    import matplotlib.pyplot as plt

    drm0 = results[0].step1.drm
    stats0 = drm0.relabel_stats()
    noisy0 = drm0.initial_labels != pool.clean_labels
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.3))
    axes[0].hist([drm0.alpha[drm0.high_mask].numpy(), drm0.alpha[~drm0.high_mask].numpy()], bins=30,
                 label=["high group", "low group"])
    axes[0].set_xlabel("α (last epoch)"); axes[0].set_ylabel("images"); axes[0].set_title("α by rank group")
    axes[1].hist([drm0.alpha[~noisy0].numpy(), drm0.alpha[noisy0].numpy()], bins=30, density=True,
                 label=["given label right", "given label wrong"])
    axes[1].set_xlabel("α (last epoch)"); axes[1].set_ylabel("density")
    axes[1].set_title(f"α by label correctness (vs {truth})")
    for col in ("precision", "recall", "noise_rate"):
        axes[2].plot(stats0["epoch"], stats0[col], marker="o", label=col.replace("_", " "))
    axes[2].set_xlabel("DRM epoch"); axes[2].set_ylim(0, 1); axes[2].set_title(f"relabel audit, seed {results[0].seed}")
    for r in results:
        axes[3].plot(range(len(r.step1.drm.delta2_trace)), r.step1.drm.delta2_trace, marker="o", label=f"seed {r.seed}")
    axes[3].set_xlabel("DRM epoch"); axes[3].set_ylabel("δ2"); axes[3].set_title("dynamic δ2 (Eq. 7)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    audit = regime_table(results, float(np.mean([r.noise_before for r in results])))
    return fig, audit, drm_text(audit, len(results))


def drm_text(audit: pd.DataFrame, n_seeds: int) -> str:
    """drm_audit's takeaway from its per-seed table (a DRM that changed no label has no precision to report)."""
    changed, before, after = audit["relabels"].mean(), audit["noise before"].mean(), audit["noise after"].mean()
    what = (f"changed {changed:.0f} labels per pool with precision {audit['relabel precision'].mean():.2f}, moving "
            f"the label noise from {before:.3f} to {after:.3f}" if changed > 0 else
            f"changed no label (no precision to measure), leaving the label noise at {before:.3f}")
    return (f"**Takeaway.** Over {n_seeds} seeds the DRM {what}; α ranks a wrongly labeled "
            f"image below a correctly labeled one with probability {audit['P(α_noisy < α_clean)'].mean():.2f} "
            f"(0.5 = no signal). The DRM model's validation accuracy is {audit['DRM val accuracy'].mean():.2f}, "
            f"against {audit['label accuracy'].mean():.2f} for the labels it corrects (section 3).")


def sweep_figures(sweep: pd.DataFrame, sweep_a: pd.DataFrame, sweep_b: pd.DataFrame, off: dict, truth: str,
                  chance: float):
    """Fig. 4 (δ1, δ2: DRM test accuracy, relabels, their precision and the label noise after them) and Fig. 3
    (initial fraction, cycles). `off`: {seed: test accuracy of the DRM with relabeling off}, drawn as the mean over
    the δ1 seeds and, where they differ, over the δ2 seeds (each line beside the points of the same seeds)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(22, 3.3))
    for name, frame in sweep.groupby("param"):
        st = frame.groupby("value")["accuracy"].agg(["mean", "std"]).reset_index()
        axes[0].errorbar(st["value"], st["mean"], st["std"].fillna(0), marker="o", capsize=3,
                         label=f"{name.replace('delta', 'δ')} ({frame.seed.nunique()} seeds)")
    lines = {}
    for name, style in (("delta1", "--"), ("delta2", ":")):
        seeds = tuple(sorted(int(s) for s in sweep[sweep.param == name].seed.unique()
                             if s in off and off[s] == off[s]))
        if seeds and seeds not in lines:
            lines[seeds] = style
            axes[0].axhline(np.mean([off[s] for s in seeds]), color="k", ls=style, lw=1,
                            label=f"relabeling off ({_seeds(seeds)})")
    axes[0].set_title("Fig. 4: DRM model test accuracy"); axes[0].set_xlabel("margin value"); axes[0].legend(fontsize=7)
    d2 = sweep[sweep.param == "delta2"].groupby("value")[["relabeled", "precision", "noise_before",
                                                          "noise_after"]].mean().reset_index()
    axes[1].plot(d2["value"], d2["relabeled"], marker="o", color="tab:orange")
    axes[1].set_title("relabels vs δ2 (Eq. 7 off)"); axes[1].set_xlabel("δ2")
    axes[2].plot(d2["value"], d2["precision"], marker="o", color="tab:orange", label="relabel precision")
    if d2["noise_after"].notna().any():
        axes[2].plot(d2["value"], d2["noise_after"], marker="s", color="tab:red", label="label noise after")
        axes[2].axhline(d2["noise_before"].mean(), color="tab:red", ls="--", lw=1, label="label noise before")
    axes[2].set_title(f"precision and noise vs δ2 (vs {truth})"); axes[2].set_xlabel("δ2"); axes[2].set_ylim(0, 1)
    axes[2].legend(fontsize=7)
    for ax, frame, x, label in ((axes[3], sweep_a, "initial_fraction", "initial labeled fraction"),
                                (axes[4], sweep_b, "cycles", "AL cycles (one run read cycle by cycle)")):
        st = frame.groupby(x)["accuracy"].agg(["mean", "std"]).reset_index()
        ax.errorbar(st[x], st["mean"], st["std"].fillna(0), marker="o", capsize=3)
        ax.set_xlabel(label); ax.set_title(f"Fig. 3 ({frame.seed.nunique()} seeds)")
    axes[3].set_ylabel("final test accuracy"); axes[4].set_ylabel("test accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def ablation_figure(curves: pd.DataFrame, t2: pd.DataFrame, pool_size: int, K: int):
    """Table 2's arms against AL labels and against labels read, with the step-1 model and the every-label fit."""
    import matplotlib.pyplot as plt

    from .. import viz

    arms = [n for n in ("least_confidence", "SupCon + LC", fucle.FUCLE, "control: SupCon + CE + LC",
                        "control: SupCon + DRM, relabeling off + LC", "control: NT-Xent (no labels) + LC")
            if n in set(curves.method)]
    bound = t2.loc[fucle.EVERY_LABEL]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
    viz.plot_al_curves(curves, ax=axes[0], methods=arms, highlight=(fucle.FUCLE,),
                       references={"chance": 1 / K, "every pool label, FUCLE's steps": bound["accuracy"]},
                       title="vs labels in the AL set")
    viz.plot_al_curves(curves, ax=axes[1], methods=arms, highlight=(fucle.FUCLE,), x="labels_read",
                       references={"chance": 1 / K}, title="vs distinct labels read (step 1 + AL)")
    axes[1].errorbar([pool_size], [bound["accuracy"]], [bound["std"]], marker="*", ms=12, color="k",
                     label=fucle.EVERY_LABEL)
    s1 = t2.loc["step-1 DRM model, no AL"]
    axes[1].errorbar([pool_size], [s1["accuracy"]], [s1["std"]], marker="D", ms=7, color="tab:red",
                     label="step-1 DRM model, no AL")
    axes[1].set_xscale("log"); axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def scorecard_text(counts: dict, P, seeds, pool_size: int, noise: float, n_test: int, truth: str, main: dict,
                   second: dict, claims: list | None = None) -> str:
    """The scorecard's reading: verdict counts (with how many inconclusive rows are "not measurable here", from
    `claims`, the card's rows), the regime of each pool, and what FUCLE's step 1 reads."""
    idle = sum(c.get("kind") == "not measured" for c in claims or [])
    return (f"**Reading this scorecard.** Holds: {counts['holds']}, does not hold: {counts['does not hold']}, "
            f"inconclusive: {counts['inconclusive']}"
            + (f" ({idle} of them not measurable here, each with its reason in the rule)" if claims is not None else "")
            + f", in the **{P.name}** profile ({len(seeds)} seeds, a pool of "
            f"{pool_size} with {noise:.0%} noise, {n_test} test images, {truth}). The regime of each pool, beside the "
            f"DRM's rows: on the main pool its model is {'more' if main['above_labels'] else 'less'} accurate than its "
            f"labels ({main['val_accuracy']:.2f} vs {main['label_accuracy']:.2f}); on the second pool "
            f"{'more' if second['above_labels'] else 'less'} ({second['val_accuracy']:.2f} vs "
            f"{second['label_accuracy']:.2f}). FUCLE's step 1 reads every pool label, which the AL baselines never "
            "see: the controls (CE, relabeling off, step-1 models without AL, every pool label) say how much of its "
            "gain comes from that.")
