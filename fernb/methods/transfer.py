"""Face-recognition pre-training and two-stage transfer to FER (Xu et al., Sec. 3.2, Fig. 5, Tables 3-9).

The paper pre-trains DAL-Net on CASIA-WebFace (face recognition: one class per identity), transfers every layer but
the classifier to the expression task, and fine-tunes in two stages:

* **Stage 1**: the bottom k conv layers are frozen ("lr_mult" 0 in Caffe), the rest train on the FER data until
  they converge. k = 0 transfers everything and freezes nothing (Tables 3-4 sweep k = 0..5).
* **Stage 2**: every layer is unfrozen and the whole network re-trains from the stage-1 model with a smaller
  learning rate.

Here SynthFER's identity pool (as many identities as the profile's `pretrain_identities`) stands in for CASIA-WebFace. Frozen means frozen: the layer's
parameters get no gradient and are not handed to the optimizer (so weight decay cannot move them either), and a
frozen layer's BatchNorm, if the network has one, stays in eval mode so its running statistics do not drift
(`freeze_bottom`; DAL-Net's `train()` honours it).

Everything trains through `fernb.engine.fit` with a fixed number of optimizer steps per stage (`steps=`), and
the loss plugs in through `loss_fn` (`LOSS_STEPS`: cross-entropy, Softmax-MSE with the paper's Eq. 6 gradient, or
Softmax-MSE with the exact derivative of its value). The controls the notebook compares against use the same
step budget: **one-stage** fine-tuning (nothing frozen, stage-1 and stage-2 steps in one run at the stage-1
learning rate) and **scratch** (the same, from a random initialization).

`run_finetune` is one whole run (pre-trained weights -> stage 1 -> stage 2, or a control) as a module-level
function of picklable arguments, so `fernb.parallel.run_many` can run seeds x k side by side on a GPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import engine, models
from ..data.dataset import FERDataset
from ..losses.softmax_mse import softmax_mse

__all__ = ["LOSS_STEPS", "softmax_mse_step", "exact_mse_step", "loss_step", "freeze_bottom", "unfreeze",
           "frozen_parameter_names", "transfer_state", "pretrain_face_recognition", "PretrainResult",
           "FinetuneConfig", "StageResult", "FinetuneRun", "run_finetune", "stratified_subset", "runs_frame",
           "choose_k", "per_seed"]


# ---------------------------------------------------------------------------------------------------------------
# Losses as engine.fit loss_fn steps (module-level functions: torch.compile caches one graph per function)
# ---------------------------------------------------------------------------------------------------------------
def softmax_mse_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor):
    """Softmax-MSE (Eq. 3-5) with the paper's Eq. 6 gradient. Returns (loss, logits)."""
    logits = model(x)
    return softmax_mse(logits, y, "softmax"), logits


def exact_mse_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor):
    """Softmax-MSE trained by the exact derivative of its value (a control: what Eq. 6 avoids)."""
    logits = model(x)
    return softmax_mse(logits, y, "mse"), logits


LOSS_STEPS = {"ce": engine.cross_entropy_step, "softmax_mse": softmax_mse_step, "exact_mse": exact_mse_step}


def loss_step(name: str):
    """The engine loss step for `name`: "ce", "softmax_mse" (the paper) or "exact_mse"."""
    if name not in LOSS_STEPS:
        raise ValueError(f"loss must be one of {', '.join(LOSS_STEPS)}, got {name!r}")
    return LOSS_STEPS[name]


# ---------------------------------------------------------------------------------------------------------------
# Freezing
# ---------------------------------------------------------------------------------------------------------------
def _conv_layers(model: nn.Module) -> list[nn.Module]:
    if not hasattr(model, "conv_layers"):
        raise TypeError(f"{type(model).__name__} does not list its conv layers (a `conv_layers()` method bottom to "
                        f"top, as fernb.models.DALNet has), so there is no 'bottom k' to freeze")
    return list(model.conv_layers())


def freeze_bottom(model: nn.Module, k: int) -> nn.Module:
    """Freeze the bottom `k` conv layers of `model` (Stage 1, Fig. 5a) and unfreeze everything above them.

    A frozen layer's parameters get requires_grad=False (engine.fit hands only trainable parameters to the
    optimizer, so neither the update nor weight decay reaches them) and its modules stay in eval mode through the
    model's own `train()` (`model.frozen_convs = k`), so BatchNorm running statistics stay as transferred.
    k = 0 freezes nothing; k = number of conv layers freezes every conv layer (the fully connected layers train).
    """
    layers = _conv_layers(model)
    if not 0 <= int(k) <= len(layers):
        raise ValueError(f"k must lie in 0..{len(layers)} (conv layers to freeze), got {k}")
    if not hasattr(model, "frozen_convs"):
        raise TypeError(f"{type(model).__name__} has no `frozen_convs`: its train() cannot keep frozen layers in "
                        "eval mode")
    model.requires_grad_(True)
    for layer in layers[: int(k)]:
        layer.requires_grad_(False)
    model.frozen_convs = int(k)
    model.train(model.training)           # re-apply the mode so the frozen layers switch to eval now
    return model


def unfreeze(model: nn.Module) -> nn.Module:
    """Stage 2: every parameter trainable again, every layer follows the model's mode."""
    return freeze_bottom(model, 0)


def frozen_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not p.requires_grad]


def transfer_state(source: dict, model: nn.Module, skip: tuple[str, ...] = ("ip2.",)) -> nn.Module:
    """Copy every tensor of the pre-trained `source` state dict into `model` except the classifier (`skip`
    prefixes: IP2, whose width is the number of identities there and of expressions here). Shapes must match."""
    own = model.state_dict()
    keep = {k: v for k, v in source.items() if not k.startswith(skip)}
    missing = [k for k in own if not k.startswith(skip) and k not in keep]
    if missing:
        raise ValueError(f"pre-trained state lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}: it was "
                         f"trained for another architecture")
    bad = [k for k, v in keep.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"pre-trained tensors {bad[:5]} have other shapes than the model's: another width or "
                         f"input size")
    model.load_state_dict(keep, strict=False)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Face-recognition pre-training (CASIA-WebFace -> SynthFER's identity pool)
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    """The source model: its weights (CPU), training curve and identity accuracy on held-out images."""
    state: dict
    history: engine.History
    identity_accuracy: float
    num_identities: int
    n_train: int
    seconds: float
    config: dict = field(default_factory=dict)


def stratified_subset(data: FERDataset, n: int | None, seed: int) -> FERDataset:
    """A seeded, stratified subset of `n` labeled rows (all of them when n is None or >= the count)."""
    from ..data.splits import label_fraction_mask

    if n is None or n >= len(data):
        return data
    mask = label_fraction_mask(data.labels, n / len(data), seed=seed)
    return data.subset(mask)


def pretrain_face_recognition(identity: FERDataset, *, model_name: str = "dalnet", model_kwargs: dict | None = None,
                              steps: int = 1000, lr: float = 2e-3, batch_size: int = 128, holdout: float = 0.1,
                              device=None, seed: int = 0, progress: bool = False, checkpoint=None,
                              augment="weak") -> PretrainResult:
    """Train `model_name` to recognise the identities of `identity` (labels = identity numbers) with softmax CE,
    holding out a stratified `holdout` fraction of each identity's images to measure identity accuracy.

    The paper pre-trains on CASIA-WebFace (10,575 identities); SynthFER's identity pool renders each identity with
    varying expression, pose, lighting and occluders, so the network must learn what stays fixed across them.
    `checkpoint` (optional path) makes the run resumable (engine.fit's atomic checkpoints)."""
    from ..data.splits import label_fraction_mask

    device = engine.resolve_device(device)
    held = label_fraction_mask(identity.labels, holdout, seed=seed)
    train, val = identity.subset(~held), identity.subset(held)
    torch.manual_seed(seed)
    model = models.create(model_name, identity.num_classes, in_chans=identity.channels,
                          img_size=identity.image_size, **(model_kwargs or {}))
    t0 = time.perf_counter()
    history = engine.fit(model, train, steps=steps, batch_size=batch_size, lr=lr, augment=augment, device=device,
                         seed=seed, progress=progress, desc="face-recognition pre-training", checkpoint=checkpoint)
    seconds = time.perf_counter() - t0
    accuracy = engine.evaluate(model, val, device=device)["accuracy"]
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return PretrainResult(state, history, accuracy, identity.num_classes, len(train), seconds,
                          config={"model": model_name, "model_kwargs": dict(model_kwargs or {}), "steps": steps,
                                  "lr": lr, "batch_size": batch_size, "seed": seed})


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning: two stages, or a one-stage / scratch control
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class FinetuneConfig:
    """The FER fine-tuning recipe shared by every run of a comparison (plain values: it pickles).

    stage1_steps at lr1 with the bottom k conv layers frozen, then stage2_steps at lr2 (< lr1, the paper's
    "smaller learning rate") with everything trainable. Controls spend stage1_steps + stage2_steps at lr1."""
    model_name: str = "dalnet_mini"
    model_kwargs: dict = field(default_factory=dict)
    stage1_steps: int = 300
    stage2_steps: int = 150
    lr1: float = 2e-3
    lr2: float = 2e-4
    batch_size: int = 64
    weight_decay: float = 5e-4
    augment: str = "weak"
    loss: str = "softmax_mse"
    record_curves: bool = False       # evaluate val after every pass (training curves); off = cheaper


@dataclass
class StageResult:
    val_accuracy: float
    test_accuracy: float
    test_mean_class_accuracy: float
    confusion: object                 # numpy (K, K) test confusion counts, rows = true
    history: dict
    seconds: float
    test_correct: object = None       # numpy bool (n_test,): per-image correctness


@dataclass
class FinetuneRun:
    """One run: `mode` "two-stage" (stages "stage1", "stage2"), "one-stage" or "scratch" (stage "final")."""
    mode: str
    k: int | None
    seed: int
    loss: str
    activation: str
    stages: dict
    state: dict | None = None         # final weights on the CPU (kept when asked: the AIL start model M_0)

    @property
    def final(self) -> StageResult:
        return self.stages["stage2"] if "stage2" in self.stages else self.stages["final"]


def _stage(model, train, val, test, *, steps, lr, cfg: FinetuneConfig, device, seed, progress, desc) -> StageResult:
    t0 = time.perf_counter()
    history = engine.fit(model, train, val=val if cfg.record_curves else None, steps=steps,
                         batch_size=cfg.batch_size, lr=lr, weight_decay=cfg.weight_decay, augment=cfg.augment,
                         loss_fn=loss_step(cfg.loss), device=device, seed=seed, progress=progress, desc=desc)
    seconds = time.perf_counter() - t0
    val_acc = engine.evaluate(model, val, device=device)["accuracy"] if val is not None else float("nan")
    metrics = engine.evaluate(model, test, device=device)
    correct = (metrics["predictions"] == test.labels.cpu()).numpy()
    return StageResult(val_acc, metrics["accuracy"], metrics["mean_class_accuracy"], metrics["confusion"],
                       history.as_dict(), seconds, correct)


def run_finetune(train: FERDataset, val: FERDataset | None, test: FERDataset, *, cfg: FinetuneConfig,
                 pretrained: dict | None, k: int = 0, mode: str = "two-stage", seed: int = 0, device=None,
                 progress: bool = False, keep_state: bool = False) -> FinetuneRun:
    """One fine-tuning run on `train`, evaluated on `val` and `test` after each stage.

    mode: "two-stage" (Fig. 5: stage 1 with the bottom `k` conv layers frozen at lr1, stage 2 all unfrozen at lr2),
    "one-stage" (the pre-trained model fine-tuned whole, stage1 + stage2 steps at lr1) or "scratch" (the same
    from a random initialization; `pretrained` is ignored). `seed` drives the new classifier's initialization (all
    of the network's for scratch), the batch order and the augmentation; the caller varies the data subset with it.
    """
    if mode not in ("two-stage", "one-stage", "scratch"):
        raise ValueError(f"mode must be 'two-stage', 'one-stage' or 'scratch', got {mode!r}")
    if mode != "scratch" and pretrained is None:
        raise ValueError(f"mode {mode!r} needs the pre-trained state")
    device = engine.resolve_device(device)
    torch.manual_seed(seed)
    model = models.create(cfg.model_name, train.num_classes, in_chans=train.channels, img_size=train.image_size,
                          **cfg.model_kwargs)
    if mode != "scratch":
        transfer_state(pretrained, model)       # IP2 keeps the fresh seeded initialization above
    stages = {}
    if mode == "two-stage":
        freeze_bottom(model, k)
        stages["stage1"] = _stage(model, train, val, test, steps=cfg.stage1_steps, lr=cfg.lr1, cfg=cfg,
                                  device=device, seed=seed, progress=progress, desc=f"stage 1 (k={k})")
        unfreeze(model)
        stages["stage2"] = _stage(model, train, val, test, steps=cfg.stage2_steps, lr=cfg.lr2, cfg=cfg,
                                  device=device, seed=seed + 7919, progress=progress, desc="stage 2")
    else:
        stages["final"] = _stage(model, train, val, test, steps=cfg.stage1_steps + cfg.stage2_steps, lr=cfg.lr1,
                                 cfg=cfg, device=device, seed=seed, progress=progress, desc=mode)
    state = {k_: v.detach().cpu().clone() for k_, v in model.state_dict().items()} if keep_state else None
    return FinetuneRun(mode, k if mode == "two-stage" else None, seed, cfg.loss,
                       getattr(model, "activation", ""), stages, state)


# ---------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------
def runs_frame(runs, **tags):
    """One row per (run, stage): mode, k, seed, loss, activation, stage, val/test accuracy, test mean class
    accuracy, seconds, plus constant `tags` columns. Two-stage runs give "stage1" and "stage2" rows, controls a
    "final" row."""
    import pandas as pd

    rows = []
    for run in runs:
        for stage, res in run.stages.items():
            rows.append({"mode": run.mode, "k": run.k, "seed": run.seed, "loss": run.loss,
                         "activation": run.activation, "stage": stage, "val_accuracy": res.val_accuracy,
                         "test_accuracy": res.test_accuracy, "test_mean_class_accuracy": res.test_mean_class_accuracy,
                         "seconds": res.seconds, **tags})
    return pd.DataFrame(rows)


def choose_k(frame, stage: str = "stage2", metric: str = "val_accuracy") -> int:
    """The k with the best mean `metric` over seeds among two-stage rows of `stage` (ties: the smaller k). The
    notebook picks k on the validation split so the test comparison against the controls is not a maximum over
    one noisy test number per k tried."""
    f = frame[(frame["mode"] == "two-stage") & (frame["stage"] == stage)]
    if f.empty:
        raise ValueError(f"no two-stage rows for {stage}")
    means = f.groupby("k")[metric].mean()
    return int(means[means == means.max()].index.min())


def per_seed(frame, seeds, **where) -> list[float]:
    """Test accuracies of the rows matching `where` (column=value), one per seed in `seeds` order (for the
    paired evidence of fernb.scorecard). Raises if a seed has no row or several."""
    f = frame
    for col, value in where.items():
        f = f[f[col].isna()] if value is None else f[f[col] == value]
    out = []
    for s in seeds:
        rows = f[f["seed"] == s]
        if len(rows) != 1:
            raise ValueError(f"{len(rows)} rows for seed {s} where {where}")
        out.append(float(rows["test_accuracy"].iloc[0]))
    return out
