"""Semi-supervised fine-tuning: one trainer loop, pluggable methods.

The loop (`SemiSupervisedTrainer`) is shared by SSFER (notebook 02: EMA teacher vs FixMatch, Song et al. Sec. 3.3,
Eq. 1-5) and Ada-CM (notebook 05: adaptive confidence margin, Pseudo-Labeling, MixMatch, ReMixMatch). It owns
everything that is not the method: the engine's batched, device-resident data path, the weak and strong views,
autocast / optimizer / scaler (`fernb.engine`), a fixed number of optimizer steps, seeding, the EMA model,
checkpoint + resume, evaluation, and the audit of pseudo-labels against clean labels. A *method* owns the loss.

One optimizer step
------------------
1. A labeled batch (x^l, y^l) of B rows and an unlabeled batch x^u of `uratio` x B rows (FixMatch's mu) are indexed
   out of the uint8 caches on the device.
2. The trainer draws the views the method asks for: the labeled batch once with the weak augmentation; the
   unlabeled batch `method.weak_views` (k) times weak and `method.strong_views` (s) times strong
   (`fernb.data.augment.weak` / `strong`: random resized crop + flip, then RandAugment).
3. It hands the method a `StepContext`. Its outputs are computed lazily, on first use, in as few forward passes as
   possible: the student once over [x^l, (the k weak views if `method.student_weak`), the s strong views], with
   gradients; the teacher (the EMA model) once over the k weak views, without gradients.
4. `method.loss(ctx) -> (loss, stats)`; the trainer steps the optimizer on `loss` (`engine.optimizer_step`), steps
   the schedule, and updates the EMA model: theta_t <- m * theta_t + (1 - m) * theta_s (SSFER Eq. 1).
5. It accumulates `stats` on the device (no `.item()` per step) and, at the end of each epoch (a block of
   `steps_per_epoch` steps), writes the history, evaluates on `val`, calls the method's epoch hooks and saves a
   checkpoint atomically.

The method interface (subclass `SemiSupMethod`)
-----------------------------------------------
* class attributes: `weak_views` (k), `strong_views` (s), `student_weak` (the student's forward includes the weak
  views: FixMatch labels itself from them, Ada-CM contrasts their features), `needs_teacher` (the trainer must keep
  an EMA model and `ctx.teacher_weak` is its output).
* `unsup_loss(ctx) -> (loss, stats)`: the unsupervised term. The default `loss(ctx)` returns
  L = L_l + weight * L_u with L_l the cross-entropy on the labeled batch (SSFER Eq. 2, 5).
* `loss(ctx) -> (loss, stats)`: override it to own the whole step (MixMatch / ReMixMatch mix labeled and unlabeled
  inputs: `ctx.raw_l`, `ctx.raw_u` are the un-augmented batches and `ctx.student(x)` runs any input).
* `stats` is a dict of tensors. Two keys are read by the audit: "mask" (bool, one per unlabeled row: the
  pseudo-label was accepted) and "pseudo_labels" (long, one per unlabeled row); every 0-dim tensor is averaged over
  the epoch into `history.extra[key]`.
* hooks: `on_train_start(trainer)`, `on_epoch_start(trainer, epoch)` (Ada-CM's per-class thresholds from the
  correctly predicted labeled samples: `trainer.predict(trainer.labeled, which="teacher")`),
  `on_epoch_end(trainer, epoch)`; `state_dict()` / `load_state_dict()` carry the method's state (thresholds) in the
  checkpoint, so a resumed run equals an uninterrupted one.

The audit: where the unlabeled rows have clean labels (SynthFER, or hidden labels of a real dataset: then it is
named "agreement with annotators"), the history records per epoch the mask rate (share of accepted pseudo-labels),
the accuracy of the accepted pseudo-labels and of all pseudo-labels against those labels.

Randomness is keyed by (seed, epoch): a run killed after an epoch and resumed from its checkpoint ends with the same
weights as one that never stopped (tested).

Scope: one process on one device (CPU or a GPU, AMP by capability). The loop runs eagerly: the per-step views and
the method's Python-level choices (thresholds, subsets) make a captured graph a poor fit, and the semi-supervised
stage is short next to MAE pre-training, which runs through `engine.fit` (torch.compile, DDP under torchrun).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from timm.utils.model_ema import ModelEmaV3
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .. import engine
from ..data import augment as aug
from ..data.dataset import FERDataset
from ..models import features_and_logits
from ..paths import atomic_save

__all__ = ["Output", "StepContext", "SemiSupMethod", "EMATeacher", "FixMatch", "SemiSupHistory",
           "SemiSupervisedTrainer", "SemiSupResult", "train_semisup", "confidence_mask", "pseudo_label_loss"]


@dataclass
class Output:
    """One forward pass: the pooled embedding (B, D) and the logits (B, K) (`fernb.models.features_and_logits`)."""
    features: torch.Tensor
    logits: torch.Tensor


def _forward(model: nn.Module, x: torch.Tensor) -> Output:
    return Output(*features_and_logits(model, x))


def confidence_mask(probs: torch.Tensor, tau: float) -> torch.Tensor:
    """I(max(p) > tau) of SSFER Eq. 4: strictly greater, as the paper writes it (a confidence equal to tau is
    rejected; FixMatch's code uses >=, which differs only on that boundary)."""
    return probs.max(dim=1).values > tau


def pseudo_label_loss(strong_logits: torch.Tensor, pseudo_labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_u = 1/N_U * sum_i I(max(p_i) > tau) * CE(A_strong(x_i^u), y_hat_i)  (SSFER Eq. 4).

    The mean runs over all N_U unlabeled rows (rejected rows count as 0), as in the paper and in FixMatch, so the
    term grows as the teacher becomes confident rather than being re-normalized by the number accepted."""
    ce = F.cross_entropy(strong_logits, pseudo_labels, reduction="none")
    return (ce * mask.to(ce.dtype)).mean()


class StepContext:
    """What a method sees in one step. Inputs are normalized, channels_last tensors on the device.

    x_l, y_l: the weak-augmented labeled batch and its labels; weak / strong: lists of the k weak and s strong views
    of the unlabeled batch; raw_l / raw_u: the un-augmented batches as float in [0, 1] (for methods that build their
    own views or mix inputs); index_l / index_u: their rows; step / epoch: where the run is.
    Lazily computed (one forward each, cached): `student_l`, `student_weak`, `student_strong` (with gradients) and
    `teacher_weak` (the EMA model, no gradients). `student(x)` / `teacher(x)` run any other input.
    """

    def __init__(self, trainer: "SemiSupervisedTrainer", x_l, y_l, raw_l, raw_u, weak, strong, index_l, index_u,
                 step: int, epoch: int):
        self.trainer = trainer
        self.method = trainer.method
        self.x_l, self.y_l, self.raw_l, self.raw_u = x_l, y_l, raw_l, raw_u
        self.weak, self.strong = list(weak), list(strong)
        self.index_l, self.index_u = index_l, index_u
        self.step, self.epoch = step, epoch
        self._student = None
        self._teacher = None

    @property
    def num_classes(self) -> int:
        return self.trainer.num_classes

    def student(self, x: torch.Tensor) -> Output:
        """A forward pass of the student (with gradients) on any input."""
        return _forward(self.trainer.student, x)

    @torch.no_grad()
    def teacher(self, x: torch.Tensor) -> Output:
        """A forward pass of the teacher (the EMA model; the student itself when there is none), no gradients."""
        net = self.trainer.teacher if self.trainer.teacher is not None else self.trainer.student
        out = _forward(net, x)
        return Output(out.features.detach(), out.logits.detach())

    def _run_student(self):
        parts = [self.x_l] + (self.weak if self.method.student_weak else []) + self.strong
        out = self.student(torch.cat(parts))
        sizes = [len(p) for p in parts]
        outs = [Output(f, l) for f, l in zip(out.features.split(sizes), out.logits.split(sizes))]
        k = len(self.weak) if self.method.student_weak else 0
        self._student = (outs[0], outs[1:1 + k], outs[1 + k:])

    @property
    def student_l(self) -> Output:
        if self._student is None:
            self._run_student()
        return self._student[0]

    @property
    def student_weak(self) -> list[Output]:
        if not self.method.student_weak:
            raise AttributeError(f"{type(self.method).__name__}.student_weak is False: the student's forward does "
                                 "not include the weak views (set it True to read them)")
        if self._student is None:
            self._run_student()
        return self._student[1]

    @property
    def student_strong(self) -> list[Output]:
        if self._student is None:
            self._run_student()
        return self._student[2]

    @property
    def teacher_weak(self) -> list[Output]:
        if self._teacher is None:
            if not self.weak:
                self._teacher = []
            else:
                out = self.teacher(torch.cat(self.weak))
                n = len(self.weak[0])
                self._teacher = [Output(f, l) for f, l in zip(out.features.split(n), out.logits.split(n))]
        return self._teacher

    def supervised_loss(self) -> torch.Tensor:
        """L_l = 1/N_L * sum CE(x^l, y^l)  (SSFER Eq. 2) on the weak-augmented labeled batch."""
        return F.cross_entropy(self.student_l.logits, self.y_l)


class SemiSupMethod:
    """Base class of a semi-supervised method; see the module docstring for the interface."""
    name = "supervised only"
    weak_views = 1          # k weak views of the unlabeled batch
    strong_views = 1        # s strong views
    student_weak = False    # include the weak views in the student's (gradient) forward
    needs_teacher = False   # the trainer must maintain an EMA teacher

    def __init__(self, weight: float = 1.0):
        self.weight = float(weight)

    def unsup_loss(self, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        return torch.zeros((), device=ctx.x_l.device), {}

    def loss(self, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        """L = L_l + weight * L_u  (SSFER Eq. 5, weight = mu there)."""
        sup = ctx.supervised_loss()
        unsup, stats = self.unsup_loss(ctx)
        stats = dict(stats, sup_loss=sup.detach(), unsup_loss=unsup.detach())
        return sup + self.weight * unsup, stats

    # hooks ----------------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: "SemiSupervisedTrainer") -> None:
        pass

    def on_epoch_start(self, trainer: "SemiSupervisedTrainer", epoch: int) -> None:
        pass

    def on_epoch_end(self, trainer: "SemiSupervisedTrainer", epoch: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def describe(self) -> str:
        return self.name


class EMATeacher(SemiSupMethod):
    """SSFER's semi-supervised stage (Sec. 3.3): the EMA teacher labels, the student learns.

    theta_t <- m * theta_t + (1 - m) * theta_s                         (Eq. 1; m = the trainer's `ema_momentum`)
    p = softmax f(A_weak(x^u); theta_t),  y_hat = argmax_c p_c          (Eq. 3; mean of p over the k weak views)
    L_u = 1/N_U * sum I(max(p) > tau) * CE(f(A_strong(x^u); theta_s), y_hat)   (Eq. 4; mean over the s strong views)
    L = L_l + mu * L_u                                                  (Eq. 5; mu = `weight`)

    The teacher never receives gradients: it changes only through Eq. 1. (A widely copied mean-teacher
    implementation feeds the teacher's own prediction back as its target, so its consistency loss is identically 0;
    here the target comes from the teacher and the prediction from the student, and the test suite checks that the
    unsupervised loss is non-zero and that only the student gets gradients.)
    """
    name = "EMA teacher"
    needs_teacher = True
    labeler = "teacher"

    def __init__(self, tau: float = 0.95, weight: float = 1.0, weak_views: int = 1, strong_views: int = 1):
        super().__init__(weight)
        if not 0 <= tau < 1:
            raise ValueError(f"tau must be in [0, 1), got {tau}")
        self.tau = float(tau)
        self.weak_views, self.strong_views = int(weak_views), int(strong_views)
        if self.weak_views < 1 or self.strong_views < 1:
            raise ValueError("EMA teacher / FixMatch need at least one weak and one strong view")

    def pseudo_probs(self, ctx: StepContext) -> torch.Tensor:
        outs = ctx.teacher_weak if self.labeler == "teacher" else ctx.student_weak
        return torch.stack([o.logits.detach().float().softmax(1) for o in outs]).mean(0)

    def unsup_loss(self, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        probs = self.pseudo_probs(ctx)
        confidence, pseudo = probs.max(1)
        mask = confidence > self.tau
        loss = torch.stack([pseudo_label_loss(o.logits, pseudo, mask) for o in ctx.student_strong]).mean()
        return loss, {"mask": mask, "pseudo_labels": pseudo, "confidence": confidence.mean()}

    def describe(self) -> str:
        return f"{self.name} (tau={self.tau}, mu={self.weight})"


class FixMatch(EMATeacher):
    """FixMatch (Sohn et al. 2020): Eq. 3-5 with theta_t = theta_s, the student labels itself from its own weak-view
    prediction (detached) in the same forward pass as its strong views. The trainer may still keep an EMA model for
    evaluation (`evaluate_with="ema"`), but it plays no part in training."""
    name = "FixMatch"
    needs_teacher = False
    student_weak = True
    labeler = "student"


@dataclass
class SemiSupHistory:
    """Per-epoch records (an epoch = `steps_per_epoch` optimizer steps) plus per-step loss and mask rate."""
    epoch: list = field(default_factory=list)
    step: list = field(default_factory=list)             # optimizer steps done at the end of the epoch
    train_loss: list = field(default_factory=list)
    sup_loss: list = field(default_factory=list)
    unsup_loss: list = field(default_factory=list)
    mask_rate: list = field(default_factory=list)        # share of unlabeled rows whose pseudo-label was accepted
    pseudo_acc: list = field(default_factory=list)       # accuracy of the accepted pseudo-labels vs `audit`
    pseudo_acc_all: list = field(default_factory=list)   # accuracy of every pseudo-label (accepted or not)
    lr: list = field(default_factory=list)
    val_acc: list = field(default_factory=list)          # of the evaluated model (`evaluated`)
    val_mean_class_acc: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    step_loss: list = field(default_factory=list)
    step_mask_rate: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)            # other 0-dim stats of the method, averaged per epoch
    audit: str = ""                                      # "clean labels", "agreement with annotators" or ""
    evaluated: str = ""                                  # "ema" or "student"
    method: str = ""
    precision: str = ""

    def as_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                for k, v in self.__dict__.items()}

    def as_frame(self):
        import pandas as pd
        per_epoch = {k: v for k, v in self.as_dict().items()
                     if isinstance(v, list) and not k.startswith("step_") and len(v) == len(self.epoch)}
        per_epoch.update({k: v for k, v in self.extra.items() if len(v) == len(self.epoch)})
        return pd.DataFrame(per_epoch)


@dataclass
class SemiSupResult:
    history: SemiSupHistory
    student: nn.Module
    teacher: nn.Module | None

    @property
    def model(self) -> nn.Module:
        """The model to evaluate: the EMA model when the run evaluated with it, else the student."""
        return self.teacher if self.history.evaluated == "ema" and self.teacher is not None else self.student


def _audit_labels(unlabeled: FERDataset) -> tuple[torch.Tensor | None, str]:
    if unlabeled.clean_labels is None:
        return None, ""
    name = "clean labels" if unlabeled.info.get("source") == "SynthFER" else "agreement with annotators"
    return unlabeled.clean_labels, name


def _cycled_batches(n_rows: int, batch: int, count: int) -> torch.Tensor:
    """`count` batches of `batch` row positions, walking seeded permutations of range(n_rows) end to end."""
    need = batch * count
    perms = [torch.randperm(n_rows) for _ in range(-(-need // n_rows))]
    return torch.cat(perms)[:need].view(count, batch)


class SemiSupervisedTrainer:
    """Semi-supervised fine-tuning of `model` with `method`; see the module docstring.

    labeled: the rows with label >= 0 are the labeled set; unlabeled: every row is unlabeled data (None: the rows of
    `labeled` whose label is -1). steps: optimizer steps in total; steps_per_epoch: the unit of history, evaluation,
    hooks and checkpoints. batch_size: B labeled rows per step; uratio: the unlabeled batch is uratio x B rows.
    ema_momentum: m of Eq. 1 (None: no EMA model; methods with `needs_teacher` require one). evaluate_with: "ema"
    or "student" (which model `val` and `result.model` use). weak_augment / strong_augment: `fernb.data.augment`
    names or callables on float [0, 1] batches.
    """

    def __init__(self, model: nn.Module, labeled: FERDataset, unlabeled: FERDataset | None, method: SemiSupMethod, *,
                 steps: int = 1000, steps_per_epoch: int = 100, batch_size: int = 32, uratio: int = 2,
                 lr: float = 1.5e-4, weight_decay: float = 5e-4, optimizer: str = "adamw",
                 scheduler: str | None = "cosine", ema_momentum: float | None = 0.999, evaluate_with: str = "ema",
                 val: FERDataset | None = None, device=None, seed: int = 0, checkpoint: str | Path | None = None,
                 resume: bool = True, progress: bool = True, callbacks: tuple[Callable, ...] = (),
                 weak_augment="weak", strong_augment="strong", desc: str = "semi-sup"):
        if steps < 1 or steps_per_epoch < 1:
            raise ValueError(f"steps and steps_per_epoch must be >= 1, got {steps}, {steps_per_epoch}")
        if method.needs_teacher and ema_momentum is None:
            raise ValueError(f"{type(method).__name__} needs an EMA teacher: pass ema_momentum (m of SSFER Eq. 1)")
        if ema_momentum is not None and not 0 <= ema_momentum < 1:
            raise ValueError(f"ema_momentum must be in [0, 1), got {ema_momentum}")
        if evaluate_with not in ("ema", "student"):
            raise ValueError(f"evaluate_with must be 'ema' or 'student', got {evaluate_with!r}")
        if evaluate_with == "ema" and ema_momentum is None:
            evaluate_with = "student"
        self.device = engine.resolve_device(device)
        self.method = method
        self.steps, self.steps_per_epoch = int(steps), int(steps_per_epoch)
        self.epochs = -(-self.steps // self.steps_per_epoch)
        self.lr, self.seed, self.val = lr, seed, val
        self.callbacks, self.progress, self.desc = tuple(callbacks), progress, desc
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.resume = resume
        self.weak_augment, self.strong_augment = aug.get(weak_augment), aug.get(strong_augment)

        labeled_rows = (labeled.labels >= 0).nonzero().flatten().cpu()
        if len(labeled_rows) == 0:
            raise ValueError(f"{labeled.name}: no labeled rows")
        if unlabeled is None:
            unlabeled = labeled.subset(labeled.labels < 0)
        if len(unlabeled) == 0:
            if method.weak_views or method.strong_views:
                raise ValueError("no unlabeled rows")
            # a labels-only method (the every-label bound) views no unlabeled image: one labeled row stands in
            unlabeled = labeled.subset(labeled_rows[:1])
        self.labeled = labeled.subset(labeled_rows).to(self.device)
        self.unlabeled = unlabeled.to(self.device)
        self.num_classes = labeled.num_classes
        self.batch_size = min(int(batch_size), len(self.labeled))
        self.ubatch = min(int(uratio) * self.batch_size, len(self.unlabeled))
        audit, self.audit_name = _audit_labels(unlabeled)
        self.audit_labels = audit.to(self.device) if audit is not None else None

        self.student = engine._prepare(model, self.device)
        self.ema = None
        if ema_momentum is not None:
            self.ema = ModelEmaV3(self.student, decay=ema_momentum, foreach=True, stochastic_rounding=False)
            self.ema.module.requires_grad_(False)
        self.evaluate_with = evaluate_with
        params = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = engine.make_optimizer(params, name=optimizer, lr=lr, weight_decay=weight_decay,
                                               device=self.device)
        self.scaler = engine.make_scaler(self.device)
        self.scheduler = (torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=lr, total_steps=self.steps,
                                                              pct_start=0.15) if scheduler == "cosine" else None)
        self.history = SemiSupHistory(audit=self.audit_name, evaluated=self.evaluate_with, method=method.describe(),
                                      precision=engine.precision_name(self.device))
        self.epoch = 0

    # ---- helpers a method may call ----------------------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module | None:
        return self.ema.module if self.ema is not None else None

    @property
    def model_to_evaluate(self) -> nn.Module:
        return self.teacher if self.evaluate_with == "ema" else self.student

    def predict(self, data: FERDataset, which: str = "student", batch_size: int = 256) -> engine.Prediction:
        """Logits and embeddings of `which` ("student", "teacher", "evaluated") on every row of `data`; the student
        is put back in train mode afterwards."""
        net = {"student": self.student, "teacher": self.teacher or self.student,
               "evaluated": self.model_to_evaluate}[which]
        out = engine.predict(net, data, batch_size=batch_size, device=self.device, embeddings=True)
        self.student.train()
        return out

    # ---- checkpoint -----------------------------------------------------------------------------------------------
    def _save(self, epoch: int) -> None:
        atomic_save({"model": self.student.state_dict(),
                     "teacher": self.ema.module.state_dict() if self.ema is not None else None,
                     "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                     "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                     "method": self.method.state_dict(), "history": self.history.as_dict(), "epoch": epoch},
                    self.checkpoint)

    def _load(self) -> int:
        state = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
        self.student.load_state_dict(state["model"])
        if self.ema is not None and state.get("teacher") is not None:
            self.ema.module.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state.get("method") or {})
        self.history = SemiSupHistory(**state["history"])
        return state["epoch"] + 1

    # ---- the loop ---------------------------------------------------------------------------------------------------
    def _views(self, raw: torch.Tensor, augment, count: int) -> list[torch.Tensor]:
        return [aug.to_input(augment(raw) if augment is not None else raw.clone())
                .contiguous(memory_format=torch.channels_last) for _ in range(count)]

    def context(self, index_l: torch.Tensor, index_u: torch.Tensor, step: int = 0, epoch: int = 0) -> StepContext:
        """The `StepContext` of one step on labeled rows `index_l` and unlabeled rows `index_u` (positions in
        `self.labeled` / `self.unlabeled`): the views are drawn here, the forward passes when a method reads them."""
        dev = self.device
        index_l, index_u = index_l.to(dev), index_u.to(dev)
        raw_l = self.labeled.images[index_l].float().div_(255.0)
        raw_u = self.unlabeled.images[index_u].float().div_(255.0)
        x_l = self._views(raw_l, self.weak_augment, 1)[0]
        weak = self._views(raw_u, self.weak_augment, self.method.weak_views)
        strong = self._views(raw_u, self.strong_augment, self.method.strong_views)
        return StepContext(self, x_l, self.labeled.labels[index_l], raw_l, raw_u, weak, strong, index_l, index_u,
                           step=step, epoch=epoch)

    def run(self) -> SemiSupResult:
        start = 0
        if self.checkpoint is not None and self.resume and self.checkpoint.is_file():
            start = self._load()
        dev = self.device
        if start == 0:
            self.method.on_train_start(self)
        for epoch in range(start, self.epochs):
            self.epoch = epoch
            t0 = time.perf_counter()
            # Randomness keyed by (seed, epoch): a resumed run draws exactly the batches and views it would have.
            torch.manual_seed(self.seed * 100_003 + epoch)
            self.method.on_epoch_start(self, epoch)
            self.student.train()
            n_steps = min(self.steps_per_epoch, self.steps - epoch * self.steps_per_epoch)
            # one host-to-device copy of the epoch's batch indices, none per step
            lab = _cycled_batches(len(self.labeled), self.batch_size, n_steps).to(dev)
            unl = _cycled_batches(len(self.unlabeled), self.ubatch, n_steps).to(dev)
            sums: dict[str, torch.Tensor] = {}
            step_loss = torch.zeros(n_steps, device=dev)
            step_mask = torch.full((n_steps,), float("nan"), device=dev)
            counts = {k: torch.zeros((), device=dev) for k in ("masked", "rows", "correct_acc", "correct_all")}
            bar = tqdm(range(n_steps), desc=f"{self.desc} {epoch + 1}/{self.epochs}", leave=False,
                       disable=not self.progress)
            for i in bar:
                index_l, index_u = lab[i], unl[i]
                ctx = self.context(index_l, index_u, step=epoch * self.steps_per_epoch + i, epoch=epoch)
                with engine.autocast(dev):
                    loss, stats = self.method.loss(ctx)
                engine.optimizer_step(loss, self.optimizer, self.scaler)
                if self.scheduler is not None:
                    self.scheduler.step()
                if self.ema is not None:
                    self.ema.update(self.student)          # theta_t <- m theta_t + (1 - m) theta_s  (Eq. 1)
                step_loss[i] = loss.detach().float()
                for key, value in stats.items():
                    if torch.is_tensor(value) and value.ndim == 0:
                        sums[key] = sums.get(key, torch.zeros((), device=dev)) + value.detach().float()
                if "mask" in stats:
                    mask = stats["mask"].detach()
                    step_mask[i] = mask.float().mean()
                    counts["masked"] += mask.sum()
                    counts["rows"] += mask.numel()
                    if self.audit_labels is not None and "pseudo_labels" in stats:
                        hit = stats["pseudo_labels"].detach() == self.audit_labels[index_u]
                        counts["correct_acc"] += (hit & mask).sum()
                        counts["correct_all"] += hit.sum()
            self._record(epoch, n_steps, step_loss, step_mask, sums, counts, t0)
            self.method.on_epoch_end(self, epoch)
            if self.checkpoint is not None:
                self._save(epoch)
            for cb in self.callbacks:
                cb(epoch, self.history)
        self.student.eval()
        return SemiSupResult(self.history, self.student, self.teacher)

    def _record(self, epoch, n_steps, step_loss, step_mask, sums, counts, t0) -> None:
        h = self.history
        h.epoch.append(epoch + 1)
        h.step.append(epoch * self.steps_per_epoch + n_steps)
        h.step_loss.extend(step_loss.cpu().tolist())
        h.step_mask_rate.extend(step_mask.cpu().tolist())
        h.train_loss.append(float(step_loss.mean()))
        means = {k: float(v) / n_steps for k, v in sums.items()}
        h.sup_loss.append(means.pop("sup_loss", None))
        h.unsup_loss.append(means.pop("unsup_loss", None))
        for key, value in means.items():
            h.extra.setdefault(key, []).append(value)
        rows, masked = float(counts["rows"]), float(counts["masked"])
        h.mask_rate.append(masked / rows if rows else None)
        audited = rows and self.audit_labels is not None
        h.pseudo_acc.append(float(counts["correct_acc"]) / masked if audited and masked else None)
        h.pseudo_acc_all.append(float(counts["correct_all"]) / rows if audited else None)
        h.lr.append(self.optimizer.param_groups[0]["lr"])
        if self.val is not None:
            metrics = engine.evaluate(self.model_to_evaluate, self.val, device=self.device)
            h.val_acc.append(metrics["accuracy"])
            h.val_mean_class_acc.append(metrics["mean_class_accuracy"])
            self.student.train()
        else:
            h.val_acc.append(None)
            h.val_mean_class_acc.append(None)
        h.seconds.append(time.perf_counter() - t0)


def train_semisup(model: nn.Module, labeled: FERDataset, unlabeled: FERDataset | None, method: SemiSupMethod,
                  **kwargs) -> SemiSupResult:
    """`SemiSupervisedTrainer(model, labeled, unlabeled, method, **kwargs).run()`."""
    return SemiSupervisedTrainer(model, labeled, unlabeled, method, **kwargs).run()
