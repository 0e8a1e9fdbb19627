"""fit / evaluate / predict over a `FERDataset` held in memory.

The training loop indexes batches straight out of the uint8 image tensor on the device, augments them batched
(`fernb.data.augment`), and keeps running sums on the device (no `.item()` per step). It uses channels_last
everywhere and mixed precision by capability on CUDA (`amp_dtype`: bf16, or fp16 with a GradScaler on GPUs
without bf16; CPU stays float32: exact and deterministic). Each epoch draws its shuffle and augmentation randomness from (seed, epoch), and a
checkpoint written atomically at the end of each epoch holds model, optimizer, scheduler and history, so a run killed
mid-way and restarted with `resume=True` ends with the same weights as one that never stopped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .data import augment as aug
from .data.dataset import FERDataset
from .models import features_and_logits
from .paths import atomic_save

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_device(device=None) -> torch.device:
    """The one place a device name is resolved: None or "auto" -> CUDA when available, else CPU; "cpu", "cuda",
    "cuda:1" or a torch.device as given. Every function in fernb that takes `device` passes it through here."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}") \
            from err


def amp_dtype(device) -> torch.dtype | None:
    """Mixed-precision dtype by capability: bfloat16 on a CUDA GPU that supports it (Ampere and newer), float16
    (with a gradient scaler, `make_scaler`) on older GPUs such as T4 / P100, None (float32) on the CPU, where
    float32 is exact and deterministic."""
    device = resolve_device(device)
    if device.type != "cuda":
        return None
    with torch.cuda.device(device):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def precision_name(device) -> str:
    """"bf16 autocast", "fp16 autocast + GradScaler" or "float32": what `autocast` and `make_scaler` will do."""
    dtype = amp_dtype(device)
    return {None: "float32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler"}[dtype]


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    # channels_last on every device: oneDNN convolutions on CPU run ~1.4x faster with it, cuDNN with AMP too.
    return model.to(device).to(memory_format=torch.channels_last)


def autocast(device):
    """Autocast in `amp_dtype(device)` on CUDA; a no-op context on CPU (float32 there: exact and deterministic)."""
    device = resolve_device(device)
    dtype = amp_dtype(device)
    if dtype is not None:
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def make_scaler(device) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only where fp16 autocast needs one (a GPU without bf16); disabled elsewhere,
    where `optimizer_step` then does a plain backward and step."""
    device = resolve_device(device)
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(device) == torch.float16)


def make_optimizer(params, *, name: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.0,
                   device=None, **kwargs) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD (Nesterov momentum 0.9) for `params`, with the fused CUDA kernels on a GPU (one launch
    for all parameters instead of several per tensor) and the default implementation on the CPU."""
    device = resolve_device(device)
    params = list(params)
    fused = {"fused": True} if device.type == "cuda" else {}
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fused, **kwargs)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **fused, **kwargs)
    if name == "sgd":
        kwargs = {"momentum": 0.9, "nesterov": True, **kwargs}
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, **fused, **kwargs)
    raise ValueError(f"optimizer must be 'adamw', 'adam' or 'sgd', got {name!r}")


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None = None) -> None:
    """zero_grad, backward and step, through `scaler` when it is enabled (fp16): the one training step every
    fernb loop (engine.fit, DRM, the semi-supervised and contrastive trainers) uses."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def batch_input(data: FERDataset, index: torch.Tensor, device: torch.device, augment=None) -> torch.Tensor:
    """Network input for rows `index`: uint8 -> float [0, 1] -> augment (batched) -> normalized, on `device`."""
    x = data.images[index.to(data.images.device)].to(device, non_blocking=True).float().div_(255.0)
    if augment is not None:
        x = augment(x)
    return aug.to_input(x).contiguous(memory_format=torch.channels_last)


def cross_entropy_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor):
    """Default loss: cross-entropy on the logits. Returns (loss, logits)."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits


@dataclass
class History:
    """Per-epoch records for plotting (`as_frame()` gives a pandas DataFrame)."""
    epoch: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    train_acc: list = field(default_factory=list)
    val_acc: list = field(default_factory=list)
    val_mean_class_acc: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    precision: str = ""          # what `precision_name` said for the device the run trained on

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()}

    def as_frame(self):
        import pandas as pd
        return pd.DataFrame({k: v for k, v in self.as_dict().items() if isinstance(v, list)})

    @property
    def best_val_acc(self) -> float:
        vals = [v for v in self.val_acc if v is not None]
        return max(vals) if vals else float("nan")


def fit(model: nn.Module, train: FERDataset, *, val: FERDataset | None = None, epochs: int = 10,
        batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 5e-4, optimizer: str = "adamw",
        scheduler: str | None = "cosine", augment="weak", loss_fn: Callable | None = None,
        extra_modules: tuple[nn.Module, ...] = (), device=None, seed: int = 0,
        checkpoint: str | Path | None = None, resume: bool = True, progress: bool = True,
        callbacks: tuple[Callable, ...] = (), desc: str = "fit", steps: int | None = None) -> History:
    """Train `model` on the labeled rows of `train` (label >= 0).

    `steps` (optional) fixes the number of optimizer steps instead of `epochs`: passes over the labeled rows are
    repeated until exactly `steps` batches have been trained on (the last pass cut short), so runs with 150 and
    750 labels get the same optimization budget, where a fixed epoch count would give the small set 5x fewer
    updates. The learning-rate schedule spans the `steps`.

    loss_fn(model, x, y, index) -> (loss, logits) lets a method swap the objective (DRM, SupCon ...) while keeping
    the loop, checkpointing and metrics (logits may be None, then train accuracy is not recorded);
    `extra_modules` are trained alongside (heads the loss uses).
    callbacks(epoch, history) run after each epoch's checkpoint; raising from one stops the run (tests use this to
    simulate a kill). Returns the History; the model is left in eval mode on `device`.
    """
    device = resolve_device(device)
    model = _prepare(model, device)
    for m in extra_modules:
        m.to(device)
    loss_fn = loss_fn or cross_entropy_step
    augment = aug.get(augment)
    labeled = (train.labels >= 0).nonzero().flatten().cpu()
    if len(labeled) == 0:
        raise ValueError(f"{train.name}: no labeled rows to train on")
    data = train.to(device)
    params = [p for m in (model, *extra_modules) for p in m.parameters() if p.requires_grad]
    opt = make_optimizer(params, name=optimizer, lr=lr, weight_decay=weight_decay, device=device)
    scaler = make_scaler(device)
    batch_size = min(batch_size, len(labeled))  # a tiny labeled pool (an AL start) is one full batch
    steps_per_epoch = max(1, len(labeled) // batch_size)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        epochs = -(-int(steps) // steps_per_epoch)
    total_steps = int(steps) if steps is not None else epochs * steps_per_epoch
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps,
                                                 pct_start=0.15) if scheduler == "cosine" else None)
    history = History()
    start = 0
    ckpt_path = Path(checkpoint) if checkpoint else None
    if ckpt_path is not None and resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        for m, s in zip(extra_modules, state.get("extra", [])):
            m.load_state_dict(s)
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = History(**state["history"])
        start = state["epoch"] + 1
    history.precision = precision_name(device)

    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        model.train()
        for m in extra_modules:
            m.train()
        # Randomness keyed by (seed, epoch): a resumed run sees exactly the batches and crops it would have seen.
        torch.manual_seed(seed * 100_003 + epoch)
        order = labeled[torch.randperm(len(labeled))]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        predicted = False
        batches = order[: steps_per_epoch * batch_size].view(steps_per_epoch, batch_size)
        batches = batches[: total_steps - epoch * steps_per_epoch]     # the last pass of a `steps` run is cut
        bar = tqdm(batches, desc=f"{desc} {epoch + 1}/{epochs}", leave=False, disable=not progress)
        for index in bar:
            index = index.to(device)
            x = batch_input(data, index, device, augment)
            y = data.labels[index]
            with autocast(device):
                loss, logits = loss_fn(model, x, y, index)
            optimizer_step(loss, opt, scaler)
            if sched is not None:
                sched.step()
            loss_sum += loss.detach() * len(index)
            if logits is not None:  # a representation-learning loss (SupCon) has no class predictions
                correct += (logits.detach().argmax(1) == y).sum()
                predicted = True
            seen += len(index)
        history.epoch.append(epoch + 1)
        history.train_loss.append(float(loss_sum) / seen)
        history.train_acc.append(float(correct) / seen if predicted else None)
        history.lr.append(opt.param_groups[0]["lr"])
        if val is not None:
            metrics = evaluate(model, val, device=device)
            history.val_acc.append(metrics["accuracy"])
            history.val_mean_class_acc.append(metrics["mean_class_accuracy"])
        else:
            history.val_acc.append(None)
            history.val_mean_class_acc.append(None)
        history.seconds.append(time.perf_counter() - t0)
        if ckpt_path is not None:
            atomic_save({"model": model.state_dict(), "extra": [m.state_dict() for m in extra_modules],
                          "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else None,
                          "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                          "history": history.as_dict(), "epoch": epoch}, ckpt_path)
        for cb in callbacks:
            cb(epoch, history)
    model.eval()
    return history


@dataclass
class Prediction:
    logits: torch.Tensor
    embeddings: torch.Tensor | None = None

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(1)

    @property
    def labels(self) -> torch.Tensor:
        return self.logits.argmax(1)


@torch.no_grad()
def predict(model: nn.Module, data: FERDataset, *, batch_size: int = 256, device=None,
            embeddings: bool = False, augment=None) -> Prediction:
    """Logits (and the embeddings of `fernb.models.features_and_logits`) for every row, returned on the CPU."""
    device = resolve_device(device)
    model = _prepare(model, device).eval()
    augment = aug.get(augment)
    logits, embs = [], []
    for index in torch.arange(len(data)).split(batch_size):
        x = batch_input(data, index, device, augment)
        with autocast(device):
            emb, out = features_and_logits(model, x)
        logits.append(out.float().cpu())
        if embeddings:
            embs.append(emb.float().cpu())
    return Prediction(torch.cat(logits), torch.cat(embs) if embeddings else None)


def metrics_from_predictions(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict:
    """Accuracy, mean per-class accuracy (classes present in `target`) and the raw confusion matrix (rows = true)."""
    pred, target = pred.cpu().long(), target.cpu().long()
    keep = target >= 0
    pred, target = pred[keep], target[keep]
    confusion = torch.bincount(target * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)
    support = confusion.sum(1)
    per_class = confusion.diag().float() / support.clamp(min=1)
    present = support > 0
    return {
        "accuracy": float((pred == target).float().mean()) if len(target) else float("nan"),
        "mean_class_accuracy": float(per_class[present].mean()) if present.any() else float("nan"),
        "per_class_accuracy": per_class.tolist(),
        "confusion": confusion.numpy(),
    }


def evaluate(model: nn.Module, data: FERDataset, *, batch_size: int = 256, device=None,
             target: str = "labels") -> dict:
    """Metrics against `data.labels` (or `target="clean_labels"`), plus the predictions and probabilities."""
    prediction = predict(model, data, batch_size=batch_size, device=device)
    truth = getattr(data, target)
    if truth is None:
        raise ValueError(f"{data.name} has no {target}")
    out = metrics_from_predictions(prediction.labels, truth, data.num_classes)
    out["predictions"] = prediction.labels
    out["probs"] = prediction.probs
    return out
