"""FUCLE's two-step scheme (Wang, Zhang, Sun 2024, Fig. 2) assembled from fernb's pieces, with the controls that
let a reader attribute a gain to the component the paper credits, run once per seed.

Step 1 (on the whole labeled pool I): contrastive pre-training (`methods.pretrain`, Eq. 1), then the Dynamic
Re-labeling Module (`methods.drm`, Eq. 2-7) fine-tunes that backbone and relabels low-importance samples.
Step 2 (active learning on I_s, grown cycle by cycle): least-confidence sampling (`methods.active`), every cycle
retrained from the step-1 checkpoint with a fixed number of optimizer steps.

Step 1 reads the labels of the whole pool (the paper pre-trains "using the entire labeled set", Sec. 3.1), which
the active-learning baselines never see. So one seed of `run_seed` trains, besides FUCLE itself:

* step-1 controls on the same SupCon backbone: plain cross-entropy fine-tuning for the DRM's epochs (no DRM), and
  the DRM with relabeling off; each then starts the same least-confidence loop (`ARMS`);
* a label-free control: NT-Xent (SimCLR) pre-training + least confidence;
* the step-1 models evaluated with no active learning at all, and one fit on every pool label for as many optimizer
  steps as FUCLE's step 1 and AL fits together (`EVERY_LABEL`; not necessarily an upper bound: it is one fit at a
  fixed budget, and other arms that read every label may score above it).

Every arm records the labels it read (step 1 + active learning), so curves can be compared at equal label reads.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import engine, models, parallel
from ..data.dataset import FERDataset
from ..paths import atomic_save
from . import active
from .drm import DRMResult, train_drm
from .pretrain import contrastive_pretrain

__all__ = ["Arm", "ARMS", "FUCLE", "EVERY_LABEL", "NO_RELABEL_STEP1", "arms_for", "Step1", "step1", "SeedResult",
           "run_seed", "final_table", "curves_frame", "per_seed", "aulc", "relabel_frame", "drm_sweep", "al_sweep",
           "scale_run", "seed_data", "paper_number", "paper_pair", "relabel_outcomes", "relabel_transitions",
           "noise_rate", "peak_mb", "model_factory", "final_model", "save_weights"]


def model_factory(name: str, num_classes: int, in_chans: int, img_size: int,
                  checkpoint: str | Path | None = None) -> Callable[[], nn.Module]:
    """A `model_fn` for `active.run_active_learning`: a fresh model, from `checkpoint` when given (the stated
    initialization every cycle restarts from). A partial of `models.create`, so it pickles into the worker
    processes of `fernb.parallel.run_many`."""
    return functools.partial(models.create, name, num_classes, in_chans=in_chans, img_size=img_size,
                             checkpoint=checkpoint)


def save_weights(model: nn.Module, path: str | Path) -> Path:
    return atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def peak_mb(m) -> float:
    """Peak memory increase of a Measurement or ALResult: GPU memory on CUDA, else process RSS (MiB)."""
    return m.peak_cuda_mb if m.peak_cuda_mb is not None else m.peak_rss_mb


# ---------------------------------------------------------------------------------------------------------------
# Step 1 and its controls
# ---------------------------------------------------------------------------------------------------------------
CONTROLS = ("ce", "drm_no_relabel", "ntxent")   # the step-1 controls `step1` can train besides SupCon and the DRM

@dataclass
class Step1:
    """What step 1 produced for one seed: checkpoints per variant, the DRM runs, costs, and each step-1 model's test
    accuracy without any active learning.

    Variants (keys of `checkpoints`): "supcon" (SupCon pre-training, Eq. 1), "drm" (SupCon + DRM, FUCLE's step 1),
    and with controls: "ce" (SupCon + plain cross-entropy for the DRM's epochs), "drm_no_relabel" (SupCon + DRM
    with Eq. 6 never applied), "ntxent" (label-free SimCLR pre-training)."""
    checkpoints: dict = field(default_factory=dict)
    drm: DRMResult | None = None
    drm_no_relabel: DRMResult | None = None
    pretrain_history: engine.History | None = None
    seconds: dict = field(default_factory=dict)
    peak_mb: dict = field(default_factory=dict)
    test_accuracy: dict = field(default_factory=dict)


def step1(pool: FERDataset, *, val: FERDataset, test: FERDataset, model_name: str, checkpoint_dir: Path,
          pretrain_epochs: int, drm_epochs: int, batch_size: int, lr: float, temperature: float = 0.1,
          drm_kwargs: dict | None = None, controls=True, device=None, seed: int = 0,
          progress: bool = False, init: str | Path | None = None, pretrain_lr: float | None = None,
          drm_batch_size: int | None = None) -> Step1:
    """FUCLE step 1 on `pool` (given labels, possibly noisy) for one seed, plus the controls when `controls`
    (True: every control of `CONTROLS`; False: none; or a collection of their names).

    `init`: a checkpoint every variant starts from (the paper's backbones start from pre-trained weights; None = a
    random initialization). `pretrain_lr`: SupCon's and NT-Xent's learning rate (None: `lr`). `drm_batch_size`: the
    batch of the DRM and the CE control (None: `batch_size`, SupCon's).
    Every variant draws its randomness from `seed` (initialization, batches, augmentation). The DRM and CE runs
    use the same optimizer (AdamW, constant lr, weight decay 1e-4), batches, epochs and weak augmentation, so they
    differ only by the DRM's loss (Eq. 3-5) and relabeling (Eq. 6-7). DRM relabels a copy of the labels; its final
    label vector is `step1(...).drm.labels`.
    """
    device = engine.resolve_device(device)
    checkpoint_dir = Path(checkpoint_dir)
    drm_kwargs = dict(drm_kwargs or {})
    out = Step1()
    K, C, S = pool.num_classes, pool.channels, pool.image_size
    tag = f"seed{seed}"

    controls = set(CONTROLS if controls is True else (controls or ()))
    unknown = controls - set(CONTROLS)
    if unknown:
        raise ValueError(f"unknown step-1 controls {sorted(unknown)}; known: {', '.join(CONTROLS)}")
    pretrain_lr = lr if pretrain_lr is None else pretrain_lr

    def fresh():
        torch.manual_seed(seed)
        return models.create(model_name, K, in_chans=C, img_size=S, checkpoint=init)

    def timed(name, fn):
        with active.measure(device) as m:
            result = fn()
        out.seconds[name], out.peak_mb[name] = m.seconds, peak_mb(m)
        return result

    supcon = fresh()
    out.pretrain_history = timed("supcon", lambda: contrastive_pretrain(
        supcon, pool, epochs=pretrain_epochs, batch_size=batch_size, lr=pretrain_lr, temperature=temperature,
        use_labels=True, device=device, seed=seed, progress=progress)).history
    out.checkpoints["supcon"] = save_weights(supcon, checkpoint_dir / f"{tag}-supcon.pt")

    def from_supcon():
        return models.create(model_name, K, in_chans=C, img_size=S, checkpoint=out.checkpoints["supcon"])

    drm_batch_size = drm_batch_size or batch_size
    drm_common = dict(val=val, epochs=drm_epochs, batch_size=drm_batch_size, lr=lr, device=device, seed=seed,
                      progress=progress, inplace=False)
    net = from_supcon()
    out.drm = timed("drm", lambda: train_drm(net, pool, **drm_common, **drm_kwargs))
    out.checkpoints["drm"] = save_weights(net, checkpoint_dir / f"{tag}-drm.pt")
    out.test_accuracy["drm"] = engine.evaluate(net, test, device=device)["accuracy"]
    if "ce" in controls:
        net = from_supcon()
        timed("ce", lambda: engine.fit(net, pool, epochs=drm_epochs, batch_size=drm_batch_size, lr=lr,
                                       weight_decay=drm_kwargs.get("weight_decay", 1e-4), scheduler=None,
                                       augment=drm_kwargs.get("augment", "weak"), device=device, seed=seed,
                                       progress=progress, desc="CE"))
        out.checkpoints["ce"] = save_weights(net, checkpoint_dir / f"{tag}-ce.pt")
        out.test_accuracy["ce"] = engine.evaluate(net, test, device=device)["accuracy"]
    if "drm_no_relabel" in controls:
        net = from_supcon()
        off = {**drm_kwargs, "relabel_start_epoch": drm_epochs}          # Eq. 6 never runs
        out.drm_no_relabel = timed("drm_no_relabel", lambda: train_drm(net, pool, **drm_common, **off))
        out.checkpoints["drm_no_relabel"] = save_weights(net, checkpoint_dir / f"{tag}-drm_no_relabel.pt")
        out.test_accuracy["drm_no_relabel"] = engine.evaluate(net, test, device=device)["accuracy"]
    if "ntxent" in controls:
        ntxent = fresh()
        timed("ntxent", lambda: contrastive_pretrain(
            ntxent, pool, epochs=pretrain_epochs, batch_size=batch_size, lr=pretrain_lr, temperature=temperature,
            use_labels=False, device=device, seed=seed, progress=progress))
        out.checkpoints["ntxent"] = save_weights(ntxent, checkpoint_dir / f"{tag}-ntxent.pt")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Active-learning arms
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    """One active-learning run per seed: which step-1 checkpoint each cycle restarts from (None = random
    initialization, "warm" = the shared warm start `run_seed` is given, standing in for pre-trained weights), whose
    labels the oracle returns ("given", or "drm" = the DRM's corrected labels, which step 1
    has already read), the query strategy, and whether sigma data addition (Sec. 3.1) is on."""
    init: str | None
    labels: str = "given"
    strategy: str = "least_confidence"
    sigma: bool = False

    @property
    def reads_pool_in_step1(self) -> bool:
        """Step-1 variants trained on the pool's labels: SupCon, DRM, CE (NT-Xent reads none)."""
        return self.init in ("supcon", "drm", "ce", "drm_no_relabel")


FUCLE = "FUCLE (SupCon + DRM + LC)"
EVERY_LABEL = "every pool label, one fit at FUCLE's steps"     # the Table 2 row of `SeedResult.full_pool_accuracy`
NO_RELABEL_STEP1 = "control: step-1 SupCon + DRM, relabeling off, no AL"
ARMS = {
    "SupCon + LC": Arm("supcon"),
    FUCLE: Arm("drm", labels="drm"),
    "control: SupCon + CE + LC": Arm("ce"),
    "control: SupCon + DRM, relabeling off + LC": Arm("drm_no_relabel"),
    "control: NT-Xent (no labels) + LC": Arm("ntxent"),
}


def arms_for(strategies, controls=True, sigma: bool = False, base: str | None = None) -> dict[str, Arm]:
    """The arms a notebook runs: each AL strategy from `base` (None: a random initialization; "warm": the shared
    warm start) on the given labels, FUCLE, and the Table 2 rows and controls (`controls`: True for all of `ARMS`,
    False for none, or a collection of arm names); with `sigma`, FUCLE + sigma data addition too."""
    out = {name: Arm(base, strategy=name) for name in strategies}
    chosen = set(ARMS) if controls is True else set(controls or ())
    unknown = chosen - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}; known: {', '.join(ARMS)}")
    for name, arm in ARMS.items():
        if name in chosen or name in ("SupCon + LC", FUCLE):
            out[name] = arm
    if sigma:
        out["FUCLE + sigma data addition"] = Arm("drm", labels="drm", sigma=True)
    return out


@dataclass
class SeedResult:
    """Everything one seed produced (`run_seed`)."""
    seed: int
    pool_size: int
    step1: Step1
    al: dict                       # arm name -> active.ALResult
    arms: dict                     # arm name -> Arm
    full_pool_accuracy: float      # every pool label read, one fit of `full_steps` steps (`EVERY_LABEL`)
    noise_before: float            # label noise of the pool (against the clean labels, if known)
    noise_after: float             # after the DRM's relabeling
    relabel_precision: float       # share of the DRM's label changes that are correct
    relabels: int
    alpha_auc: float               # P(alpha of a noisy-label sample < alpha of a clean one); 0.5 = no signal
    relabel_epochs: pd.DataFrame   # per-epoch audit joined with the model's val accuracy


def _alpha_auc(alpha: torch.Tensor, noisy: torch.Tensor) -> float:
    """P(alpha of a noisy-label sample < alpha of a clean one), ties counted half: the ROC AUC of -alpha as a
    detector of noisy labels (scikit-learn). 0.5 means alpha carries no information about label noise."""
    from sklearn.metrics import roc_auc_score

    noisy = noisy.bool().numpy()
    if noisy.all() or not noisy.any():
        return math.nan
    return float(roc_auc_score(noisy, -alpha.double().numpy()))


def relabel_outcomes(frame: pd.DataFrame, last_epoch: bool = False) -> np.ndarray:
    """One 0/1 entry per label change in a `relabel_frame` (1 = the new label is right), over every epoch or only
    the last relabeling epoch: the items a bootstrap over relabel decisions resamples."""
    f = frame.dropna(subset=["precision"])
    if last_epoch:
        f = f.iloc[-1:]
    correct, total = int(f["correct"].sum()), int(f["relabeled"].sum())
    return np.repeat([1.0, 0.0], [correct, total - correct])


def relabel_transitions(changes: dict) -> dict:
    """Every label change of a `RelabelLog.tensors()` record by what it did to a label's correctness (changes whose
    clean label is unknown, -1, are left out): wrong_to_right (removes an error), right_to_wrong (adds one) and
    wrong_to_wrong (moves a wrong label to another wrong class: no change in the error count). Precision is
    wrong_to_right / all three, and the pool's error count moves by right_to_wrong - wrong_to_right, so precision
    under 0.5 still lowers the noise whenever wrong_to_right > right_to_wrong."""
    known = changes["clean"] >= 0
    old, new, clean = changes["old"][known], changes["new"][known], changes["clean"][known]
    old_right, new_right = old == clean, new == clean
    return {"wrong_to_right": int((~old_right & new_right).sum()),
            "right_to_wrong": int((old_right & ~new_right).sum()),
            "wrong_to_wrong": int((~old_right & ~new_right).sum())}


def noise_rate(labels: torch.Tensor, clean_labels: torch.Tensor | None) -> float:
    """Share of `labels` that differ from `clean_labels` (NaN when the clean labels are unknown)."""
    if clean_labels is None:
        return math.nan
    return float((labels.cpu() != clean_labels.cpu()).float().mean())


def relabel_frame(drm: DRMResult) -> pd.DataFrame:
    """The DRM's per-epoch relabel audit (`RelabelLog.precision_recall`) joined with the model's val accuracy in
    that epoch, the x-axis of the scale figure: relabeling helps once the model is more accurate than the labels
    it corrects."""
    audit = drm.relabel_stats()
    acc = pd.DataFrame({"epoch": range(len(drm.history["val_acc"])), "val_accuracy": drm.history["val_acc"]})
    return audit.merge(acc, on="epoch", how="left")


def run_seed(pool: FERDataset, *, val: FERDataset, test: FERDataset, seed: int, model_name: str,
             checkpoint_dir: Path, pretrain_epochs: int, drm_epochs: int, batch_size: int, lr: float,
             temperature: float, drm_kwargs: dict, arms: dict, initial_fraction: float, budget, cycles: int,
             steps: int, al_batch_size: int, sigma: float = 0.95, strategy_kwargs: dict | None = None,
             controls: bool = True, device=None, progress: bool = False, workers: int | None = None,
             warm: str | Path | None = None, pretrain_lr: float | None = None, fit_lr: float | None = None,
             full_steps: int | None = None, drm_batch_size: int | None = None) -> SeedResult:
    """One seed of notebook 01: step 1 (and its controls), every active-learning arm, and the full-pool bound.

    The arms are independent runs: `fernb.parallel.run_many` runs them side by side in `workers` processes on a
    GPU (None: its default, several per GPU; 1 on the CPU), with the numbers one process gives.

    Active learning: every arm of the seed starts from the same initial labeled set (drawn from `seed`) and fits
    exactly `steps` optimizer steps of `al_batch_size` per cycle, from its stated initialization. The oracle
    answers with the pool's given labels, or for FUCLE's arms with the DRM's corrected labels.

    `warm`: a checkpoint (the shared warm start) that step 1, the arms with init "warm" and the every-label bound
    start from. `fit_lr`: the learning rate of every AL fit and of the bound (None: `lr`). `full_steps`: the
    bound's optimizer steps of `al_batch_size` (None: `steps`, one AL fit's).
    `controls`: as `step1`'s (True: the controls the arms need).
    """
    device = engine.resolve_device(device)
    strategy_kwargs = strategy_kwargs or {}
    needs = {arm.init for arm in arms.values()}
    if controls is True:
        controls = needs & set(CONTROLS)
    s1 = step1(pool, val=val, test=test, model_name=model_name, checkpoint_dir=checkpoint_dir,
               pretrain_epochs=pretrain_epochs, drm_epochs=drm_epochs, batch_size=batch_size, lr=lr,
               temperature=temperature, drm_kwargs=drm_kwargs, controls=controls or (), device=device, seed=seed,
               progress=progress, init=warm, pretrain_lr=pretrain_lr, drm_batch_size=drm_batch_size)
    if warm is not None:
        s1.checkpoints["warm"] = Path(warm)
    K, C, S = pool.num_classes, pool.channels, pool.image_size
    fit_kwargs = dict(steps=steps, batch_size=al_batch_size, lr=lr if fit_lr is None else fit_lr, augment="weak")
    labels = {"given": pool, "drm": pool.with_labels(s1.drm.labels)}
    jobs = [dict(strategy=active.get(arm.strategy, seed=seed, **strategy_kwargs.get(arm.strategy, {})),
                 pool=labels[arm.labels], test=test,
                 model_fn=model_factory(model_name, K, C, S, s1.checkpoints[arm.init] if arm.init else None),
                 initial_fraction=initial_fraction, budget=budget, cycles=cycles, fit_kwargs=fit_kwargs, seed=seed,
                 val=val, device=device, pseudo_label_threshold=sigma if arm.sigma else None)
            for arm in arms.values()]
    results = dict(zip(arms, parallel.run_many(active.run_active_learning, jobs, device=device, workers=workers)))
    torch.manual_seed(seed)
    full = models.create(model_name, K, in_chans=C, img_size=S, checkpoint=warm)
    engine.fit(full, pool, device=device, seed=seed, progress=False,
               **{**fit_kwargs, "steps": full_steps or steps})
    full_acc = engine.evaluate(full, test, device=device)["accuracy"]

    drm = s1.drm
    if pool.clean_labels is not None:
        clean = pool.clean_labels.cpu()
        noisy = drm.initial_labels != clean
        noise_before, noise_after = float(noisy.float().mean()), float((drm.labels != clean).float().mean())
        alpha_auc = _alpha_auc(drm.alpha, noisy)
    else:
        noise_before = noise_after = alpha_auc = math.nan
    changes = drm.log.tensors()
    known = changes["clean"] >= 0
    precision = float((changes["new"][known] == changes["clean"][known]).float().mean()) if bool(known.any()) \
        else math.nan
    return SeedResult(seed=seed, pool_size=len(pool), step1=s1, al=results, arms=dict(arms),
                      full_pool_accuracy=full_acc, noise_before=noise_before, noise_after=noise_after,
                      relabel_precision=precision, relabels=int(len(changes["new"])), alpha_auc=alpha_auc,
                      relabel_epochs=relabel_frame(drm))


# ---------------------------------------------------------------------------------------------------------------
# Tables over seeds
# ---------------------------------------------------------------------------------------------------------------
def _labels_read(result: SeedResult, arm: str, n_labeled: int) -> int:
    """Distinct pool labels an arm has read: its AL set, or the whole pool when its step 1 read it (the AL set is
    part of the pool, so it adds no new label to those)."""
    return result.pool_size if result.arms[arm].reads_pool_in_step1 else n_labeled


def curves_frame(results: list[SeedResult]) -> pd.DataFrame:
    """Long table, one row per (arm, seed, cycle): n_labeled (the AL set), labels_read (distinct pool labels read:
    the AL set, or the whole pool for arms whose step 1 read it), accuracy, mean_class_accuracy."""
    rows = []
    for r in results:
        for name, run in r.al.items():
            for c in run.cycles:
                rows.append({"method": name, "seed": r.seed, "cycle": c["cycle"], "n_labeled": c["n_labeled"],
                             "labels_read": _labels_read(r, name, c["n_labeled"]), "accuracy": c["accuracy"],
                             "mean_class_accuracy": c["mean_class_accuracy"]})
    return pd.DataFrame(rows)


def aulc(frame: pd.DataFrame, x: str = "n_labeled", metric: str = "accuracy") -> float:
    """Area under one learning curve (one method, one seed), divided by its x-range: the mean accuracy over the
    labeling budget, by the trapezoid rule (Settles 2009's area under the learning curve, normalized)."""
    f = frame.sort_values(x)
    xs, ys = f[x].to_numpy(dtype=float), f[metric].to_numpy(dtype=float)
    if len(xs) < 2 or xs[-1] == xs[0]:
        return float(ys.mean())
    trapezoid = getattr(np, "trapezoid", None) or np.trapz       # numpy 2 renamed it
    return float(trapezoid(ys, xs) / (xs[-1] - xs[0]))


def per_seed(results: list[SeedResult], what: str, metric: str = "final") -> list[float]:
    """One number per seed, in the order of `results`, for the scorecard's paired comparisons.

    what: an arm name (metric "final" = final test accuracy, "first" = after cycle 0, "aulc" = area under the
    curve vs AL labels, "seconds" = wall time of the AL run), "step1:<variant>" (a step-1 model's test accuracy
    without AL), "full_pool", or a SeedResult field ("relabel_precision", "noise_after", ...)."""
    out = []
    for r in results:
        if what in r.al:
            run = r.al[what]
            value = {"final": run.final_accuracy, "first": run.cycles[0]["accuracy"],
                     "aulc": aulc(pd.DataFrame(run.cycles)), "seconds": run.wall_seconds}[metric]
        elif what.startswith("step1:"):
            value = r.step1.test_accuracy[what.split(":", 1)[1]]
        elif what == "full_pool":
            value = r.full_pool_accuracy
        else:
            value = getattr(r, what)
        out.append(float(value))
    return out


def final_table(results: list[SeedResult]) -> pd.DataFrame:
    """Table 1 / Table 2: per arm, mean and std of the final test accuracy over the seeds that ran it (std NaN with
    one seed), the AULC over the AL budget, distinct labels read, AL wall time; then the step-1 models without
    active learning and the full-pool bound."""
    rows = []
    first = results[0]
    for name in first.al:
        ran = [r for r in results if name in r.al]          # an arm may run on only some of the seeds
        final = np.array(per_seed(ran, name, "final"))
        rows.append({"method": name, "accuracy": final.mean(), "std": final.std(ddof=1) if len(final) > 1 else
                     math.nan, "aulc": np.mean(per_seed(ran, name, "aulc")), "seeds": len(final),
                     "labels read": _labels_read(first, name, first.al[name].labeled_counts[-1]),
                     "reads pool in step 1": first.arms[name].reads_pool_in_step1,
                     "AL seconds": np.mean(per_seed(ran, name, "seconds"))})
    extra = [("step-1 DRM model, no AL", "step1:drm"), ("control: step-1 SupCon + CE model, no AL", "step1:ce"),
             (NO_RELABEL_STEP1, "step1:drm_no_relabel"), (EVERY_LABEL, "full_pool")]
    for label, key in extra:
        if key.startswith("step1:") and key.split(":")[1] not in first.step1.test_accuracy:
            continue
        values = np.array(per_seed(results, key))
        rows.append({"method": label, "accuracy": values.mean(),
                     "std": values.std(ddof=1) if len(values) > 1 else math.nan, "aulc": math.nan,
                     "seeds": len(values), "labels read": first.pool_size, "reads pool in step 1": True,
                     "AL seconds": math.nan})
    return pd.DataFrame(rows).set_index("method")


def final_model(result: active.ALResult, pool: FERDataset, model_fn: Callable[[], nn.Module], fit_kwargs: dict,
                device=None) -> nn.Module:
    """The model of `result`'s last cycle, rebuilt deterministically: the same initialization (torch.manual_seed of
    the run's seed, then `model_fn`), the same final labeled set and the same fit arguments as
    `active.run_active_learning` used, so the confusion matrix shown is that of the reported accuracy."""
    seed = result.config["seed"]
    train = active.labeled_view(pool, result.labeled_mask)
    torch.manual_seed(seed)
    model = model_fn()
    kwargs = {"seed": seed, "progress": False, **fit_kwargs}
    engine.fit(model, train, device=engine.resolve_device(device), **kwargs)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Sensitivity sweeps (Fig. 3 and Fig. 4)
# ---------------------------------------------------------------------------------------------------------------
def drm_sweep(result: SeedResult, pool: FERDataset, *, val: FERDataset, test: FERDataset, param: str, values,
              model_name: str, drm_epochs: int, batch_size: int, lr: float, drm_kwargs: dict, device=None,
              ) -> pd.DataFrame:
    """Fig. 4: re-run the DRM stage of `result`'s seed from its SupCon checkpoint with one margin changed, and
    report the DRM model's test accuracy (the margins act only in step 1) with the number and precision of its
    relabels and the pool's label noise before and after the run (NaN without clean labels): where noise_after
    exceeds noise_before, relabeling hurt. delta2 is held fixed (Eq. 7 off) while it is swept, so each point is
    the threshold it names."""
    device = engine.resolve_device(device)
    rows = []
    K, C, S = pool.num_classes, pool.channels, pool.image_size
    for value in values:
        net = models.create(model_name, K, in_chans=C, img_size=S, checkpoint=result.step1.checkpoints["supcon"])
        kw = {**drm_kwargs, param: value}
        if param == "delta2":
            kw["dynamic_delta2"] = False
        res = train_drm(net, pool, val=val, epochs=drm_epochs, batch_size=batch_size, lr=lr, device=device,
                        seed=result.seed, progress=False, inplace=False, **kw)
        changes = res.log.tensors()
        known = changes["clean"] >= 0
        rows.append({"param": param, "value": value, "seed": result.seed,
                     "accuracy": engine.evaluate(net, test, device=device)["accuracy"],
                     "relabeled": int(len(changes["new"])),
                     "precision": float((changes["new"][known] == changes["clean"][known]).float().mean())
                     if bool(known.any()) else math.nan,
                     "noise_before": noise_rate(res.initial_labels, pool.clean_labels),
                     "noise_after": noise_rate(res.labels, pool.clean_labels)})
    return pd.DataFrame(rows)


def al_sweep(result: SeedResult, pool: FERDataset, *, test: FERDataset, val: FERDataset, settings: list[dict],
             model_name: str, steps: int, al_batch_size: int, lr: float, device=None,
             workers: int | None = None) -> pd.DataFrame:
    """Fig. 3: FUCLE's active-learning phase (the DRM checkpoint + least confidence on the DRM's labels) of
    `result`'s seed re-run under each of `settings` (dicts of initial_fraction, budget, cycles); one row per
    setting with the final test accuracy and the labels in the final AL set. The settings run side by side on a
    GPU (`fernb.parallel.run_many`, `workers` processes)."""
    device = engine.resolve_device(device)
    K, C, S = pool.num_classes, pool.channels, pool.image_size
    model_fn = model_factory(model_name, K, C, S, result.step1.checkpoints["drm"])
    corrected = pool.with_labels(result.step1.drm.labels)
    jobs = [dict(strategy="least_confidence", pool=corrected, test=test, model_fn=model_fn, seed=result.seed,
                 val=val, device=device, fit_kwargs=dict(steps=steps, batch_size=al_batch_size, lr=lr,
                                                         augment="weak"), **setting) for setting in settings]
    runs = parallel.run_many(active.run_active_learning, jobs, device=device, workers=workers)
    rows = [{**setting, "seed": result.seed, "accuracy": run.final_accuracy, "final labeled": run.labeled_counts[-1]}
            for setting, run in zip(settings, runs)]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------
# The paper's numbers, by dataset
# ---------------------------------------------------------------------------------------------------------------
PAPER_DATASETS = {"fer2013": "FER13", "rafdb": "RAF-DB", "kdef": "KDEF"}
PAPER = {   # Tables 1-2 (accuracy, %), Table 3 (KDEF, one epoch)
    "random": (63.16, 73.82, 83.77), "entropy": (65.88, 76.99, 81.78), "margin": (65.97, 76.88, 83.55),
    "least_confidence": (65.83, 77.33, 87.03), "badge": (64.22, 76.88, 84.22), "glister": (64.13, 76.88, 84.71),
    "coreset": (64.90, 75.11, 81.22), "bald": (65.22, 75.32, 79.88), "deepfool": (64.21, 78.01, 80.11),
    FUCLE: (66.81, 80.70, 94.17), "SupCon + LC": (66.17, 78.36, 92.71),
}


def paper_number(key: str, dataset: str) -> str:
    """The paper's accuracy for `key` (an arm of Tables 1-2) on `dataset`: that dataset's number when the paper
    reports it, all three ("FER13 66.81 / RAF-DB 80.70 / KDEF 94.17") on SynthFER, which the paper never saw, and
    "-" when the paper has no such row or dataset."""
    values = PAPER.get(key)
    if values is None:
        return "-"
    if dataset in PAPER_DATASETS:
        return f"{values[list(PAPER_DATASETS).index(dataset)]:.2f}"
    if dataset == "synthfer":
        return " / ".join(f"{name} {v:.2f}" for name, v in zip(PAPER_DATASETS.values(), values))
    return "-"


def paper_pair(a: str, b: str, dataset: str) -> str:
    """"A vs B" in the paper's numbers for `dataset` (see `paper_number`)."""
    if dataset in PAPER_DATASETS:
        return f"{paper_number(a, dataset)} vs {paper_number(b, dataset)}"
    if dataset == "synthfer" and a in PAPER and b in PAPER:
        return "; ".join(f"{name} {x:.2f} vs {y:.2f}" for name, x, y in zip(PAPER_DATASETS.values(), PAPER[a],
                                                                             PAPER[b]))
    return "-"


# ---------------------------------------------------------------------------------------------------------------
# Data for one seed
# ---------------------------------------------------------------------------------------------------------------
def seed_data(dataset: str, data_root=None, *, seed: int, n_pool: int | None, n_val: int | None,
              n_test: int | None, size: int, channels: int, noise_rate: float = 0.0, noise_kind: str = "confusion"
              ) -> tuple[FERDataset, FERDataset, FERDataset]:
    """(pool, val, test) for one seed: `fernb.data.load_splits` with that seed (SynthFER renders every split
    afresh from it; a real dataset keeps its official test set and re-draws val and any subsample), then
    `noise_rate` of the pool's labels flipped (seeded, `kind` = symmetric or confusion-structured), keeping the
    labels before the flip in `pool.clean_labels`. With noise_rate 0 the pool is returned with clean_labels set to
    its own labels, so the relabel audit still runs (on real data it then measures agreement with annotators)."""
    from ..data import load_splits, splits

    train, val, test = load_splits(dataset, data_root, size=size, channels=channels, seed=seed, n_train=n_pool,
                                   n_val=n_val, n_test=n_test)
    pool = (splits.with_label_noise(train, noise_rate, kind=noise_kind, seed=seed) if noise_rate > 0
            else train.with_labels(train.labels))
    return pool, val, test


def scale_run(pool: FERDataset, *, val: FERDataset, model_name: str, epochs: int, batch_size: int, lr: float,
              drm_kwargs: dict, seed: int, device=None, init: str | Path | None = None,
              relabel_start_epoch: int = 1) -> pd.DataFrame:
    """The DRM trained on `pool` from `init` (None: a random initialization), relabeling from
    `relabel_start_epoch` on, so its per-epoch audit (`relabel_frame`) spans a range of model accuracies: a second
    regime beside the main pool's."""
    torch.manual_seed(seed)
    net = models.create(model_name, pool.num_classes, in_chans=pool.channels, img_size=pool.image_size,
                        checkpoint=init)
    kw = {**drm_kwargs, "relabel_start_epoch": relabel_start_epoch}
    res = train_drm(net, pool, val=val, epochs=epochs, batch_size=batch_size, lr=lr, device=device, seed=seed,
                    progress=False, inplace=False, **kw)
    return relabel_frame(res)
