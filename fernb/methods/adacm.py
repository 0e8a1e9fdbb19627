"""Ada-CM: semi-supervised FER with an adaptive, per-class confidence margin (Li et al., CVPR 2022), as described by
the reproduction report that notebook 05 follows (papers/004), which builds on the authors' code (hangyu94/Ada-CM).

The margin (Sec. 3.2)
---------------------
After each epoch, the model (the EMA model, the one evaluated) predicts every labeled training image. Only the
images it predicts *correctly* count (a wrongly predicted labeled image says nothing about how confident a right
answer for its class is), and each class gets the mean confidence s_i = max_c p_c(x_i) of its correct predictions:

    T_c = 1 / N_st^c * sum_{i in correct} 1(y_hat_i = c) * s_i                                       (Eq. 1)

which then grows with the epoch t (number of epochs completed):

    T_c^t = B * T_c / (1 + gamma^-t)                                                                   (Eq. 2)

`class_thresholds` is Eq. 1 and `margin_schedule` Eq. 2 plus the report's variants:

    eq6:  T_c^t = B * T_c / (1 + (t + 1) / t)          (report Eq. 6, t >= 1)
    eq7:  T_c^t = B * T_c / (1 + (t + 1) / (2 t))      (report Eq. 7, t >= 1)
    eq8:  T_c^t = B * T_c / (1 + e^{log2(t + 1)})      (report Eq. 8; note: it *decreases* with t)

B = 0.97 and gamma = e are the constants of the authors' code, which writes Eq. 2 as
``mean_conf * 0.97 / (1 + exp(-epoch))`` and then applies two rules the paper does not state: a floor of 0.8 (the
margin is never below 0.8) and a reset to 0.8 for a class with no correct prediction. `adaptive_margins` has both as
options (`floor`, `fallback`); `CODE_VARIANT` sets them as the code does. Before the first epoch has ended no model
exists to measure, and every class starts at `initial` = 0.8 (the code's initial list).

A class with no correctly predicted labeled image has no T_c. Our default fallback for Eq. 1 is T_c = 1, the
strictest value: a class the model never gets right on labeled data earns no leniency, so its margin is the largest
the schedule gives at epoch t. (The code instead resets the *margin* to its 0.8 floor, the most lenient value it
allows; `fallback=0.0` with `floor=0.8` reproduces that exactly.)

Note on the report's schedules: for any T_c <= 1, Eq. 6 stays below B / 2 = 0.485, Eq. 7 below B / 1.5 = 0.647 and
Eq. 8 below B / 2, at every t. Under the code's 0.8 floor all three are therefore the constant margin 0.8.

The unlabeled data (Sec. 3.3)
-----------------------------
Two weak views u1, u2 of each unlabeled image pass through the student; their mean prediction
P_avg2 = (softmax f(u1) + softmax f(u2)) / 2 gives the confidence and the pseudo-label y~ = argmax P_avg2.
Subset I: confidence >= T^t_{y~} (not below its class margin); subset II: the rest (`split_subsets`).

    L_s = CE(f(x^l), y^l)                                       on a weak view of the labeled batch   (Eq. 3)
    L_u = 1/N * sum_{i in I} CE(f(x_i^s), y~_i)                 strong view, pseudo-label of subset I (Eq. 4)
    L_c = InfoNCE between the features of u1 and u2 over subset II
    L   = l1 * L_s + l2 * L_u + l3 * L_c,  l1, l2, l3 = 0.5, 1, 0.1                                     (Eq. 5)

Eq. 4 writes the mean over the N_h samples of subset I; the authors' code (and FixMatch) divides by the whole
unlabeled batch, rejected rows counting 0. We follow the code (the shared `pseudo_label_loss`), so L_u grows as
subset I grows rather than being re-normalized. L_c is SimCLR's NT-Xent (`fernb.losses.nt_xent_loss`) on the
L2-normalized pooled features with tau = 0.07, the code's SupConLoss without labels (the authors' backbone
normalizes its features before the classifier; timm's does not, so we normalize for L_c only).

`AdaCM` is a method of the shared semi-supervised trainer (`fernb.methods.semisup`): the trainer owns the loop, the
views, the EMA model (the evaluated one) and the audit of pseudo-labels against clean labels; this module owns the
margin and the loss. The report's variants: `weak_views=3` (P_avg3), `strong_views=2` (L_u averaged over two strong
views), `schedule="eq6" | "eq7" | "eq8"`; the control `contrastive=False` sets l3 = 0 (subset II unused).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .. import engine, models
from ..data import splits as data_splits
from ..data.dataset import FERDataset
from ..losses.contrastive import supcon_loss
from . import semisup
from . import ssl_baselines as baselines
from .semisup import SemiSupMethod, StepContext, pseudo_label_loss

__all__ = ["SCHEDULES", "CODE_VARIANT", "class_thresholds", "margin_schedule", "adaptive_margins",
           "average_probs", "split_subsets", "fixed_threshold_mask", "subset_contrastive_loss", "AdaCM",
           "label_budget", "make_method", "Spec", "RunResult", "labeled_view", "create_model",
           "classifier_prefix", "run", "run_grid", "select", "summary", "audit", "compare", "ranking",
           "COLLAPSE_SHARE", "top_class_share", "is_collapsed", "collapse_note"]

SCHEDULES = ("eq2", "eq6", "eq7", "eq8", "fixed")
# The rules of the authors' code on top of Eq. 1-2: B = 0.97, gamma = e, margin floored at 0.8, reset to the floor
# for a class with no correct prediction (fallback 0 -> scheduled 0 -> lifted to the floor), 0.8 before epoch 1.
CODE_VARIANT = dict(schedule="eq2", B=0.97, gamma=math.e, floor=0.8, fallback=0.0, initial=0.8)


def class_thresholds(probs: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     fallback: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """T_c of Eq. 1 from the labeled images' predicted probabilities `probs` (N, K) and their labels (N,).

    Only correctly predicted images count: T_c is the mean of s_i = max_k p_ik over the images with
    argmax p_i = y_i = c. Returns (T (K,), N_st (K,) the number of correct predictions per class); a class with
    N_st^c = 0 gets T_c = `fallback` (see the module docstring for why 1.0 by default)."""
    probs = probs.detach().float()
    labels = labels.to(probs.device).long()
    confidence, predicted = probs.max(1)
    correct = (predicted == labels) & (labels >= 0)
    cls = predicted[correct]
    n_st = torch.bincount(cls, minlength=num_classes)[:num_classes]
    total = torch.zeros(num_classes, device=probs.device).index_add_(0, cls, confidence[correct])
    thresholds = torch.where(n_st > 0, total / n_st.clamp(min=1), torch.full_like(total, float(fallback)))
    return thresholds, n_st


def margin_schedule(T, t: float, schedule: str = "eq2", B: float = 0.97, gamma: float = math.e):
    """T_c^t, the margin at epoch t (epochs completed) from T_c: Eq. 2, the report's Eq. 6-8, or "fixed" (T as given,
    for a constant threshold such as FixMatch's 0.95). Works on floats and tensors alike."""
    if schedule == "fixed":
        return T
    if schedule == "eq2":
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        return B * T / (1 + gamma ** (-t))
    if schedule in ("eq6", "eq7"):
        if t < 1:
            raise ValueError(f"{schedule} divides by t: it needs t >= 1 (epochs completed), got {t}")
        ratio = (t + 1) / t if schedule == "eq6" else (t + 1) / (2 * t)
        return B * T / (1 + ratio)
    if schedule == "eq8":
        return B * T / (1 + math.exp(math.log2(t + 1)))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def adaptive_margins(probs: torch.Tensor, labels: torch.Tensor, num_classes: int, t: float, *,
                     schedule: str = "eq2", B: float = 0.97, gamma: float = math.e, floor: float | None = None,
                     fallback: float = 1.0) -> dict:
    """Eq. 1 then the schedule, then the optional floor: {"margins": T^t (K,), "T": T (K,), "n_correct": N_st (K,),
    "labeled_accuracy": per-class accuracy on the labeled images (K,)}. `CODE_VARIANT` gives the authors' rules."""
    T, n_st = class_thresholds(probs, labels, num_classes, fallback=fallback)
    margins = margin_schedule(T, t, schedule, B, gamma)
    if floor is not None:
        margins = margins.clamp(min=float(floor))
    labels = labels.to(probs.device).long()
    support = torch.bincount(labels[labels >= 0], minlength=num_classes)[:num_classes]
    return {"margins": margins, "T": T, "n_correct": n_st, "labeled_accuracy": n_st / support.clamp(min=1)}


def average_probs(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """P_avg: the mean softmax over the weak views (P_avg2 for two views, P_avg3 for three), detached, float32."""
    return torch.stack([lg.detach().float().softmax(1) for lg in logits]).mean(0)


def split_subsets(probs: torch.Tensor, margins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(confidence, pseudo-label, in subset I) for each row of P_avg: subset I holds the rows whose confidence is
    not below the margin of their pseudo-label's class (>=, as the code's `ge`); subset II is the complement."""
    confidence, pseudo = probs.max(1)
    return confidence, pseudo, confidence >= margins.to(probs.device)[pseudo]


def fixed_threshold_mask(probs: torch.Tensor, tau: float = 0.95) -> torch.Tensor:
    """The rows a fixed threshold would accept (FixMatch's reference point; strictly greater, as SSFER Eq. 4 and
    `semisup.confidence_mask`)."""
    return probs.max(1).values > tau


def subset_contrastive_loss(features: Sequence[torch.Tensor], member: torch.Tensor,
                            temperature: float = 0.07) -> torch.Tensor:
    """L_c: InfoNCE (NT-Xent; `supcon_loss` without labels) between the weak views' features of the rows in
    `member` (subset II). Features are L2-normalized here. With two views this is exactly
    `fernb.losses.nt_xent_loss(z1[II], z2[II])`; with three (P_avg3) every other view of the same image is a
    positive. An empty subset II gives 0 (attached to the graph)."""
    z = torch.stack([F.normalize(f.float(), dim=1) for f in features], dim=1)       # (B, V, D)
    if not bool(member.any()):
        return 0.0 * z.sum()
    return supcon_loss(z[member], labels=None, temperature=temperature)


class AdaCM(SemiSupMethod):
    """Ada-CM as a method of `semisup.SemiSupervisedTrainer` (see the module docstring for Eq. 1-5).

    schedule, B, gamma, floor, fallback, initial: the margin (`adaptive_margins`; `CODE_VARIANT` for the code's
    rules). lambdas: (l1, l2, l3) of Eq. 5. contrastive: False drops L_c (the control). weak_views: 2 (P_avg2) or 3
    (P_avg3); strong_views: 1, or 2 (the report's variant; L_u is averaged over them). temperature: tau of L_c.
    margin_views: how the labeled images are viewed when Eq. 1 is measured ("weak": one weak augmentation, as the
    code measures on its augmented training loader; None: un-augmented). reference_tau: a fixed threshold whose
    acceptances are audited on the same P_avg, step by step, next to the adaptive margin (no effect on training).

    `log` holds per epoch: the margins used, T_c, N_st and the labeled per-class accuracy they came from, and (when
    `track_val` and the trainer has `val`) the per-class validation accuracy of the evaluated model.
    """
    name = "Ada-CM"
    student_weak = True
    needs_teacher = False

    def __init__(self, schedule: str = "eq2", B: float = 0.97, gamma: float = math.e, floor: float | None = None,
                 fallback: float = 1.0, initial: float = 0.8, lambdas=(0.5, 1.0, 0.1), contrastive: bool = True,
                 weak_views: int = 2, strong_views: int = 1, temperature: float = 0.07,
                 margin_views: str | None = "weak", reference_tau: float = 0.95, track_val: bool = False,
                 label: str | None = None):
        super().__init__(weight=float(lambdas[1]))
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if weak_views < 1 or strong_views < 1:
            raise ValueError("Ada-CM needs at least one weak and one strong view")
        self.schedule, self.B, self.gamma, self.floor = schedule, float(B), float(gamma), floor
        self.fallback, self.initial = float(fallback), float(initial)
        self.lambdas = tuple(float(v) for v in lambdas)
        self.contrastive = bool(contrastive)
        self.weak_views, self.strong_views = int(weak_views), int(strong_views)
        self.temperature = float(temperature)
        self.margin_views, self.reference_tau, self.track_val = margin_views, float(reference_tau), track_val
        self.label = label
        self.margins: torch.Tensor | None = None
        self.log: dict[str, list] = {"epoch": [], "margins": [], "T": [], "n_correct": [], "labeled_accuracy": [],
                                     "val_per_class_accuracy": []}

    # ---- the margin, once per epoch ---------------------------------------------------------------------------
    def on_epoch_start(self, trainer, epoch: int) -> None:
        K = trainer.num_classes
        if epoch == 0:
            self.margins = torch.full((K,), self.initial, device=trainer.device)
            rec = {"T": [float("nan")] * K, "n_correct": [0] * K, "labeled_accuracy": [float("nan")] * K}
        else:
            # The model to evaluate (the EMA model when there is one), as the code measures Eq. 1 with ema_model.
            pred = engine.predict(trainer.model_to_evaluate, trainer.labeled, device=trainer.device,
                                  augment=self.margin_views)
            trainer.student.train()
            out = adaptive_margins(pred.probs, trainer.labeled.labels.cpu(), K, t=epoch, schedule=self.schedule,
                                   B=self.B, gamma=self.gamma, floor=self.floor, fallback=self.fallback)
            self.margins = out["margins"].to(trainer.device)
            rec = {k: out[k].tolist() for k in ("T", "n_correct", "labeled_accuracy")}
        self.log["epoch"].append(epoch)
        self.log["margins"].append(self.margins.tolist())
        for key, value in rec.items():
            self.log[key].append(value)

    def on_epoch_end(self, trainer, epoch: int) -> None:
        if self.track_val and trainer.val is not None:
            metrics = engine.evaluate(trainer.model_to_evaluate, trainer.val, device=trainer.device)
            trainer.student.train()
            self.log["val_per_class_accuracy"].append(metrics["per_class_accuracy"])

    # ---- one step ---------------------------------------------------------------------------------------------
    def loss(self, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        l1, l2, l3 = self.lambdas
        if self.margins is None:          # a step outside `run` (tests): the initial margin
            self.margins = torch.full((ctx.num_classes,), self.initial, device=ctx.x_l.device)
        weak = ctx.student_weak
        probs = average_probs([o.logits for o in weak])                       # P_avg2 (or P_avg3)
        confidence, pseudo, subset1 = split_subsets(probs, self.margins)
        sup = F.cross_entropy(ctx.student_l.logits, ctx.y_l)                  # L_s (Eq. 3)
        unsup = torch.stack([pseudo_label_loss(o.logits, pseudo, subset1)     # L_u (Eq. 4)
                             for o in ctx.student_strong]).mean()
        subset2 = ~subset1
        if self.contrastive and l3 > 0:
            contrast = subset_contrastive_loss([o.features for o in weak], subset2, self.temperature)
        else:
            contrast = torch.zeros((), device=sup.device)
        loss = l1 * sup + l2 * unsup + l3 * contrast                          # Eq. 5
        stats = {"mask": subset1, "pseudo_labels": pseudo, "sup_loss": sup.detach(), "unsup_loss": unsup.detach(),
                 "contrastive_loss": contrast.detach(), "confidence": confidence.mean()}
        stats.update(self._audit(ctx, probs, pseudo, subset1))
        return loss, stats

    def _audit(self, ctx: StepContext, probs, pseudo, subset1) -> dict:
        """Per-step shares of the unlabeled batch (0-dim tensors, averaged per epoch by the trainer): subset I, the
        fixed `reference_tau` threshold on the same P_avg, and, where the trainer has audit labels, how many of each
        are correct, and how many of subset II's pseudo-labels would have been correct."""
        fixed = fixed_threshold_mask(probs, self.reference_tau)
        out = {"subset1_rate": subset1.float().mean(), "reference_rate": fixed.float().mean()}
        audit = ctx.trainer.audit_labels
        if audit is not None:
            hit = pseudo == audit[ctx.index_u]
            out.update(subset1_correct_rate=(hit & subset1).float().mean(),
                       subset2_correct_rate=(hit & ~subset1).float().mean(),
                       reference_correct_rate=(hit & fixed).float().mean())
        return out

    # ---- checkpoint -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"margins": None if self.margins is None else self.margins.detach().cpu(),
                "log": {k: list(v) for k, v in self.log.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("margins") is not None:
            self.margins = state["margins"]
        if state.get("log"):
            self.log = {k: list(v) for k, v in state["log"].items()}

    def describe(self) -> str:
        if self.label:
            return self.label
        parts = [f"margin {self.schedule}" + (f", floor {self.floor}" if self.floor is not None else "")]
        if self.weak_views != 2:
            parts.append(f"{self.weak_views} weak views")
        if self.strong_views != 1:
            parts.append(f"{self.strong_views} strong views")
        if not self.contrastive:
            parts.append("no L_c")
        return f"{self.name} ({', '.join(parts)})"


# ---------------------------------------------------------------------------------------------------------------
# Experiments of notebook 05: every method on the same trainer, data, budget and evaluated EMA model
# ---------------------------------------------------------------------------------------------------------------
# The report's per-dataset label counts come from the authors' README (RAF-DB: 100, 400, 1,000, 2,000 and 4,000
# labels of its 12,271 training images; main.py's default is 4,000). `label_budget` scales a count to a pool.
RAFDB_TRAIN = 12271


def label_budget(count: int, pool_size: int, paper_pool: int = RAFDB_TRAIN) -> int:
    """`count` labels of a `paper_pool`-image training set, scaled to a pool of `pool_size` images."""
    return max(1, int(round(count / paper_pool * pool_size)))


def make_method(method: str, **kwargs) -> semisup.SemiSupMethod:
    """A method object by name: supervised, pseudo_label, mixmatch, remixmatch, fixmatch, ema_teacher, adacm."""
    factories = {"supervised": baselines.SupervisedOnly, "pseudo_label": baselines.PseudoLabeling,
                 "mixmatch": baselines.MixMatch, "remixmatch": baselines.ReMixMatch, "fixmatch": semisup.FixMatch,
                 "ema_teacher": semisup.EMATeacher, "adacm": AdaCM}
    if method not in factories:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(factories)}")
    return factories[method](**kwargs)


@dataclass
class Spec:
    """One row of a table: a display `name`, a `method` of `make_method` and its keyword arguments."""
    name: str
    method: str
    kwargs: dict = field(default_factory=dict)


@dataclass
class RunResult:
    """What a notebook keeps of one run (no model): history, method log, per-test-set metrics and per-image
    correctness (for bootstraps over test images)."""
    name: str
    method: str
    seed: int
    n_labeled: int
    source: str
    history: dict
    log: dict
    tests: dict
    seconds: float
    describe: str = ""

    def accuracy(self, test: str, metric: str = "accuracy") -> float:
        return self.tests[test][metric]


def labeled_view(pool: FERDataset, n_labeled: int, seed: int) -> FERDataset:
    """`pool` with all labels hidden but a stratified, seeded `n_labeled` (the clean labels are kept: audit)."""
    mask = data_splits.label_fraction_mask(pool.labels, n_labeled / len(pool), seed=seed)
    return data_splits.hide_labels(pool, mask)


def classifier_prefix(net) -> str:
    """The state-dict prefix of `net`'s classifier ("fc." for timm ResNets, "head." for ViTs)."""
    head = net.get_classifier()
    for name, module in net.named_modules():
        if module is head:
            return f"{name}."
    raise ValueError(f"{type(net).__name__}: no classifier module found")


def create_model(model_name: str, num_classes: int, channels: int, image_size: int, seed: int,
                 pretrained: dict | None = None, warm_start: dict | None = None):
    """A fresh model for one run: `torch.manual_seed(seed)` then `models.create`; with `pretrained` (a state dict,
    e.g. `transfer.pretrain_face_recognition(...).state`), every weight but the classifier comes from it
    (`transfer.transfer_state`) and the classifier stays seeded-random; with `warm_start` (a whole state dict of the
    same network, e.g. a supervised model of the same seed: `warm_start_model`), every weight comes from it."""
    from .transfer import transfer_state

    torch.manual_seed(seed)
    net = models.create(model_name, num_classes, in_chans=channels, img_size=image_size)
    if warm_start is not None:
        net.load_state_dict(warm_start)
    elif pretrained is not None:
        transfer_state(pretrained, net, skip=(classifier_prefix(net),))
    return net


def _metrics(model, data: FERDataset, device) -> dict:
    out = engine.evaluate(model, data, device=device)
    return {"accuracy": out["accuracy"], "mean_class_accuracy": out["mean_class_accuracy"],
            "per_class_accuracy": out["per_class_accuracy"], "confusion": out["confusion"].tolist(),
            "correct": (out["predictions"] == data.labels.cpu()).numpy().astype(np.uint8)}


def _fingerprint(state: dict | None) -> str:
    if state is None:
        return "none"
    h = hashlib.sha1()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().float().sum().numpy().tobytes())
    return h.hexdigest()[:12]


def run(spec: Spec, pool: FERDataset, n_labeled: int, seed: int, tests: dict, *, model: str, steps: int,
        steps_per_epoch: int, batch_size: int, uratio: int, lr: float, ema_momentum: float,
        val: FERDataset | None = None, pretrained=None, warm_start=None, device=None, checkpoint_dir=None,
        source: str = "default", progress: bool = False) -> RunResult:
    """Train `spec` on `pool` with `n_labeled` labels and evaluate its EMA model on every set in `tests`.

    The seed varies every random part: the labeled subset (`labeled_view`), the classifier's (and, without
    `pretrained`, the whole network's) initialization, the batches and the augmentations (the trainer's seed).
    With `checkpoint_dir`, the run checkpoints there each epoch and a finished run is reloaded, not retrained;
    `seconds` is the training time its epochs recorded (validation included), so it survives a reload."""
    data = labeled_view(pool, n_labeled, seed)
    method = make_method(spec.method, **spec.kwargs)
    if isinstance(warm_start, dict) and seed in warm_start and not torch.is_tensor(warm_start[seed]):
        warm_start = warm_start[seed]            # {seed: state}: each seed continues from its own warm start
    net = create_model(model, pool.num_classes, pool.channels, pool.image_size, seed, pretrained, warm_start)
    ckpt = None
    if checkpoint_dir is not None:
        key = json.dumps({"spec": [spec.method, spec.kwargs], "n": n_labeled, "seed": seed, "source": source,
                          "pool": [pool.name, len(pool), pool.fingerprint()], "model": model, "steps": steps,
                          "spe": steps_per_epoch, "bs": batch_size, "u": uratio, "lr": lr, "ema": ema_momentum,
                          "pre": _fingerprint(pretrained), "warm": _fingerprint(warm_start)},
                         sort_keys=True, default=str)
        ckpt = Path(checkpoint_dir) / f"{spec.method}-{seed}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
    trainer = semisup.SemiSupervisedTrainer(net, data, None, method, steps=steps, steps_per_epoch=steps_per_epoch,
                                            batch_size=batch_size, uratio=uratio, lr=lr, ema_momentum=ema_momentum,
                                            evaluate_with="ema", val=val, device=device, seed=seed,
                                            checkpoint=ckpt, progress=progress, desc=f"{spec.name} s{seed}")
    result = trainer.run()
    # training time from the per-epoch record (the checkpoint carries it): a run reloaded from a finished
    # checkpoint reports the time it took to train, not the time it took to load
    seconds = float(sum(result.history.seconds))
    tested = {name: _metrics(result.model, ds, trainer.device) for name, ds in tests.items()}
    log = getattr(method, "log", {})
    return RunResult(spec.name, spec.method, seed, n_labeled, source, result.history.as_dict(),
                     {k: list(v) for k, v in log.items()}, tested, seconds, method.describe())


def run_grid(specs, seeds, pool: FERDataset, n_labeled: int, tests: dict, progress_bar: bool = False,
             workers: int | None = None, **kwargs) -> list[RunResult]:
    """`run` for every spec and seed, through `fernb.parallel.run_many`: one after another on the CPU, several at
    once on a GPU (worker processes sharing it). Results come back in job order (seed-major)."""
    from .. import parallel

    jobs = [dict(spec=spec, pool=pool, n_labeled=n_labeled, seed=seed, tests=tests, **kwargs)
            for seed in seeds for spec in specs]
    return parallel.run_many(run, jobs, device=kwargs.get("device", "auto"), workers=workers,
                             progress=progress_bar, desc="runs")


def select(results, name: str | None = None, **where) -> list[RunResult]:
    """The results of row `name` (and matching fields, e.g. n_labeled=..., source=...), ordered by seed."""
    out = [r for r in results if (name is None or r.name == name)
           and all(getattr(r, k) == v for k, v in where.items())]
    return sorted(out, key=lambda r: r.seed)


COLLAPSE_SHARE = 0.9


def top_class_share(confusion) -> float:
    """Share of the test predictions that fall in the most-predicted class (the confusion matrix's columns are the
    predictions): about 1/K for a classifier that uses every class, 1.0 for a run that collapsed onto one class.
    A collapsed row in a table is a failed run, not a measurement of its method."""
    pred = np.asarray(confusion, dtype=float).sum(axis=0)
    if pred.sum() <= 0:
        raise ValueError("empty confusion matrix: no test predictions")
    return float(pred.max() / pred.sum())


def is_collapsed(run: RunResult, test: str, collapse_share: float = COLLAPSE_SHARE) -> bool:
    """Whether `run` put at least `collapse_share` of its `test` predictions in one class (False when the run kept
    no confusion matrix for `test`)."""
    return "confusion" in run.tests[test] and top_class_share(run.tests[test]["confusion"]) >= collapse_share


def summary(results, test: str, metric: str = "accuracy", collapse_share: float = COLLAPSE_SHARE):
    """Mean, std and seeds of `metric` on `test` per row name (first-seen order) as a DataFrame, with `collapsed`:
    the number of a row's seeds whose predictions put at least `collapse_share` of the test images in one class
    (see `top_class_share`)."""
    import pandas as pd

    rows, collapsed = {}, {}
    for r in results:
        rows.setdefault(r.name, []).append(r.tests[test][metric])
        collapsed[r.name] = collapsed.get(r.name, 0) + int(is_collapsed(r, test, collapse_share))
    return pd.DataFrame({"mean": {k: float(np.mean(v)) for k, v in rows.items()},
                         "std": {k: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
                                 for k, v in rows.items()},
                         "seeds": {k: len(v) for k, v in rows.items()},
                         "collapsed": collapsed})


def collapse_note(table, collapse_share: float = COLLAPSE_SHARE) -> str:
    """One sentence naming the rows of a `summary` table with collapsed seeds ("" when none), for the takeaway under
    the table and the scorecard notes of claims against those rows."""
    bad = table[table["collapsed"] > 0]
    if bad.empty:
        return ""
    rows = ", ".join(f"{name} ({int(r['collapsed'])} of {int(r['seeds'])} seeds)" for name, r in bad.iterrows())
    return (f"collapsed onto one class (at least {collapse_share:.0%} of the test predictions in one class): {rows}; "
            f"such a row is a run that failed in this regime, not a measurement of its method")


def audit(result: RunResult, last: int | None = None) -> dict:
    """Pseudo-label audit of one Ada-CM run over its epochs (the `last` ones, or all but the first, where the
    margin is the initial 0.8): shares of the unlabeled batch admitted and correct for the adaptive margin (subset
    I) and for the fixed reference threshold on the same predictions, their precisions, and the share of subset II
    whose pseudo-label is correct. Means of per-epoch shares (every step has the same unlabeled batch size)."""
    extra = result.history["extra"]
    first = 1 if last is None else -last
    mean = lambda key: float(np.mean(extra[key][first:])) if key in extra and extra[key][first:] else float("nan")
    out = {"subset1_rate": mean("subset1_rate"), "reference_rate": mean("reference_rate"),
           "subset1_correct": mean("subset1_correct_rate"), "reference_correct": mean("reference_correct_rate"),
           "subset2_correct": mean("subset2_correct_rate")}
    ratio = lambda a, b: a / b if b > 0 else float("nan")
    out["subset1_precision"] = ratio(out["subset1_correct"], out["subset1_rate"])
    out["reference_precision"] = ratio(out["reference_correct"], out["reference_rate"])
    out["subset2_precision"] = ratio(out["subset2_correct"], 1 - out["subset1_rate"])
    return out


def compare(results, a: str, b: str, test: str, *, direction: str = ">", metric: str = "accuracy", **where):
    """Evidence for "row a vs row b on `test`" (`fernb.scorecard`): paired over the seeds both rows share when there
    are two or more, else a paired bootstrap over the test images of the one shared seed (test-set noise only).
    When a run of either row collapsed onto one class on `test` (`top_class_share` >= COLLAPSE_SHARE) the verdict
    is withheld (`scorecard.invalid_run`): beating a failed run says nothing about the method it failed to run."""
    from .. import scorecard as sc

    ev = _compare(results, a, b, test, direction=direction, metric=metric, **where)
    seeds = set(ev.seeds) if ev.seeds else None
    failed = []
    for name in (a, b):
        runs = [r for r in select(results, name, **where) if seeds is None or r.seed in seeds]
        bad = [r.seed for r in runs if is_collapsed(r, test)]
        if bad:
            failed.append(f"{name} collapsed onto one class (at least {COLLAPSE_SHARE:.0%} of the test predictions) "
                          f"in seed(s) {bad}")
    return sc.invalid_run(ev, "; ".join(failed)) if failed else ev


def _compare(results, a: str, b: str, test: str, *, direction: str = ">", metric: str = "accuracy", **where):
    """`compare` before the validity check."""
    from .. import scorecard as sc

    ra = {r.seed: r for r in select(results, a, **where)}
    rb = {r.seed: r for r in select(results, b, **where)}
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
        return sc.not_measurable(f"{a}: seeds {sorted(ra)}, {b}: seeds {sorted(rb)}", "no run of both with one seed")
    n_test = len(ra[seeds[0]].tests[test]["correct"])
    if len(seeds) >= 2:
        return sc.paired([ra[s].tests[test][metric] for s in seeds], [rb[s].tests[test][metric] for s in seeds],
                         seeds, direction=direction, n_test=n_test, names=(a, b))
    s = seeds[0]
    return sc.bootstrap_paired(ra[s].tests[test]["correct"], rb[s].tests[test]["correct"], direction=direction,
                               names=(a, b), run_seed=s)


def ranking(results, names, test: str, paper_value: str = "Ada-CM", metric: str = "accuracy", **where):
    """Evidence for "`paper_value` is among the best of `names` on `test`" (`scorecard.optimum`). The rows compared
    are those run with every seed `paper_value` has (rows with fewer seeds are left out rather than cutting the
    comparison down to their seeds); with one seed there is no interval, and the claim is not measurable."""
    from .. import scorecard as sc

    per = {n: {r.seed: r.tests[test][metric] for r in select(results, n, **where)} for n in names}
    if not per.get(paper_value):
        return sc.not_measurable(f"rows {sorted(n for n, v in per.items() if v)}", f"no run of {paper_value}")
    seeds = sorted(per[paper_value])
    kept = {n: [v[s] for s in seeds] for n, v in per.items() if set(seeds) <= set(v)}
    if len(seeds) < 2:
        measured = ", ".join(f"{n}: {v[0]:.3f}" for n, v in kept.items())
        return sc.not_measurable(measured, "one seed per method: no interval to rank them with")
    n_test = len(select(results, paper_value, **where)[0].tests[test]["correct"])
    return sc.optimum(kept, seeds, paper_value, n_test=n_test, name="method")
