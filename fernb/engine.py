"""fit / evaluate / predict over a `FERDataset` held in memory.

The training loop indexes batches straight out of the uint8 image tensor on the device, augments them batched
(`fernb.data.augment`), and keeps running sums on the device (no `.item()` and no host-device copy per step). It uses
channels_last everywhere and mixed precision by capability on CUDA (`amp_dtype`: bf16, or fp16 with a GradScaler on
GPUs without bf16; CPU stays float32: exact and deterministic). Each epoch draws its shuffle and augmentation
randomness from (seed, epoch), and a checkpoint written atomically at the end of each epoch holds model, optimizer,
scheduler and history, so a run killed mid-way and restarted with `resume=True` ends with the same weights as one
that never stopped.

On a GPU the work of these notebooks is many short fits of small models on small images: launch-bound. `fit`
therefore compiles the loss with `torch.compile` on CUDA (CUDA graphs by default, `compile_mode`), reuses the
compiled graph across fits of the same architecture, and steps a fused AdamW (`make_optimizer`). Under `torchrun`
it trains with DistributedDataParallel (`fernb.distributed`): each rank takes its shard of every global batch.
Independent fits run concurrently on one GPU through `fernb.parallel.run_many`.
"""
from __future__ import annotations

import os
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import distributed
from .data import augment as aug
from .data.dataset import FERDataset
from .models import features_and_logits
from .paths import atomic_save

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_device(device=None) -> torch.device:
    """The one place a device name is resolved: "cpu", "cuda", "cuda:1" or a torch.device as given; None or "auto"
    -> the `FERNB_DEVICE` environment variable when set (e.g. `FERNB_DEVICE=cuda:1` to pick a GPU, `cpu` to keep a
    GPU machine off its GPU), else under `torchrun` this process's GPU `cuda:LOCAL_RANK`, else CUDA when available,
    else the CPU. Every function in fernb that takes `device` passes it through here, moves every module it uses
    to the result, and never reads the device off a parameter."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        chosen = os.environ.get("FERNB_DEVICE", "").strip()
        if chosen and chosen != "auto":
            return resolve_device(chosen)
        if torch.cuda.is_available():
            if "LOCAL_RANK" in os.environ:
                return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % max(1, torch.cuda.device_count()))
            return torch.device("cuda")
        return torch.device("cpu")
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


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_OFF = ("0", "off", "false", "no", "none", "eager", "")
_ON = ("1", "on", "true", "yes")


def compile_mode(compile=None, device=None) -> str | None:
    """What `fit(compile=...)` does on `device`: a `torch.compile` mode name, or None for eager execution.

    compile=None (the default) reads the `FERNB_COMPILE` environment variable (a mode name, or on / off; the
    notebook runner sets it from the profile) and otherwise picks "reduce-overhead" (Inductor kernels replayed as
    CUDA graphs: these fits are launch-bound, not compute-bound) on CUDA and eager on the CPU, where compiling
    changes float32 results bit for bit and has not been measured to pay. True means "reduce-overhead" on CUDA
    and "default" on the CPU; False or "off" means eager; a mode name is used as given."""
    device = resolve_device(device)
    if compile is None:
        env = os.environ.get("FERNB_COMPILE")
        compile = None if env is None else env.strip().lower()
        if compile is None:
            return "reduce-overhead" if device.type == "cuda" else None
    if compile is True or compile in _ON:
        return "reduce-overhead" if device.type == "cuda" else "default"
    if compile is False or compile in _OFF:
        return None
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be True, False, 'off' or one of {COMPILE_MODES}, got {compile!r}")
    if device.type != "cuda" and compile in ("reduce-overhead", "max-autotune"):
        return "default"                                # CUDA graphs need CUDA
    return compile


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled(fn: Callable, mode: str) -> Callable:
    """`torch.compile(fn, mode=mode)`, one wrapper per (function, mode). Dynamo keeps its graphs on the function's
    code object and guards on the model's structure, not its identity, so the fresh model of every active-learning
    cycle reuses the graph the first fit compiled (one compilation per architecture and batch shape)."""
    per_fn = _COMPILED.setdefault(fn, {}) if _weakrefable(fn) else {}
    if mode not in per_fn:
        per_fn[mode] = torch.compile(fn, mode=mode)
    return per_fn[mode]


def _weakrefable(fn) -> bool:
    try:
        weakref.ref(fn)
        return not hasattr(fn, "__self__")              # a bound method is a new object at every access
    except TypeError:
        return False


class _Step(nn.Module):
    """The training step as one module, so DistributedDataParallel sees every parameter the loss touches (the
    model and `extra_modules`) even when the loss calls model methods other than forward (`forward_features`)."""

    def __init__(self, model: nn.Module, extra_modules, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.extra = nn.ModuleList(extra_modules)
        self.loss_fn = loss_fn

    def forward(self, x, y, index):
        return self.loss_fn(self.model, x, y, index)


def batch_input(data: FERDataset, index: torch.Tensor, device, augment=None) -> torch.Tensor:
    """Network input for rows `index`: uint8 -> float [0, 1] -> augment (batched) -> normalized, on `device`.
    `augment`: a callable on float [0, 1] batches or a `fernb.data.augment` name ("weak", ...)."""
    device = resolve_device(device)
    augment = aug.get(augment)
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
    samples: list = field(default_factory=list)   # training samples seen in each epoch, over all ranks
    precision: str = ""          # what `precision_name` said for the device the run trained on
    compile: str = ""            # the torch.compile mode of the training step, or "off"
    world_size: int = 1          # DistributedDataParallel processes (1 = a single process)
    first_step_seconds: float | None = None   # wall time of the first step (includes compiling, when compiled)

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
        callbacks: tuple[Callable, ...] = (), desc: str = "fit", steps: int | None = None,
        compile: bool | str | None = None, ddp: bool | None = None) -> History:
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

    compile: the loss step through `torch.compile` (`compile_mode`: by default CUDA graphs on CUDA, eager on the
    CPU; False turns it off). The first step's time, compilation included, is `History.first_step_seconds`. A
    step that fails to compile falls back to eager execution with a warning.

    ddp: under `torchrun` (a process group with more than one process; `fernb.distributed`) the step runs in
    DistributedDataParallel (None = whenever there is such a group; False = train this process alone).
    `batch_size` is then the global batch: every rank draws the same seeded permutation and trains on its
    1/world_size share of each batch, gradients are averaged over ranks, the epoch's loss, accuracy and sample
    count are all-reduced, and rank 0 alone writes the checkpoint (resume works as in one process).
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
    world = distributed.world_size() if ddp is not False else 1
    rank = distributed.rank() if world > 1 else 0
    data = train.to(device)
    params = [p for m in (model, *extra_modules) for p in m.parameters() if p.requires_grad]
    opt = make_optimizer(params, name=optimizer, lr=lr, weight_decay=weight_decay, device=device)
    scaler = make_scaler(device)
    batch_size = min(batch_size, len(labeled))  # a tiny labeled pool (an AL start) is one full batch
    if world > 1:
        if batch_size < world:
            raise ValueError(f"the global batch ({batch_size}) must hold at least one row per rank ({world} ranks)")
        batch_size -= batch_size % world          # the global batch splits evenly over the ranks
    local_batch = batch_size // world
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
    mode = compile_mode(compile, device)
    history.precision = precision_name(device)
    history.world_size = world
    history.compile = mode or "off"
    first = True

    def make_runner(step_fn):
        if world == 1:
            return lambda x, y, index: step_fn(model, x, y, index)
        from torch.nn.parallel import DistributedDataParallel
        # static_graph: a loss may leave parameters unused (SupCon never touches the classifier), always the same
        return DistributedDataParallel(_Step(model, extra_modules, step_fn), static_graph=True,
                                       device_ids=[device.index if device.index is not None
                                                   else torch.cuda.current_device()]
                                       if device.type == "cuda" else None)

    runner = make_runner(compiled(loss_fn, mode) if mode else loss_fn)

    def train_step(x, y, index):
        if mode in ("reduce-overhead", "max-autotune"):
            torch.compiler.cudagraph_mark_step_begin()   # a new iteration: earlier graph outputs may be reused
        with autocast(device):
            loss, logits = runner(x, y, index)
        optimizer_step(loss, opt, scaler)
        return loss, logits

    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        model.train()
        for m in extra_modules:
            m.train()
        # Randomness keyed by (seed, epoch): a resumed run sees exactly the batches and crops it would have seen.
        torch.manual_seed(seed * 100_003 + epoch)
        order = labeled[torch.randperm(len(labeled))]
        if world > 1:   # the same permutation on every rank; each rank's crops from its own stream
            torch.manual_seed(seed * 100_003 + epoch + 1_000_003 * (rank + 1))
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        predicted = False
        batches = order[: steps_per_epoch * batch_size].view(steps_per_epoch, batch_size)
        batches = batches[: total_steps - epoch * steps_per_epoch]     # the last pass of a `steps` run is cut
        if world > 1:
            batches = batches[:, rank * local_batch:(rank + 1) * local_batch]
        batches = batches.to(device)            # one copy per epoch: no host-device transfer inside the loop
        bar = tqdm(batches, desc=f"{desc} {epoch + 1}/{epochs}", leave=False,
                   disable=not progress or rank != 0)
        for index in bar:
            x = batch_input(data, index, device, augment)
            y = data.labels[index]
            if first:           # timed, compilation included; a compiled step that fails falls back to eager
                first, t_first = False, time.perf_counter()
                try:
                    loss, logits = train_step(x, y, index)
                except Exception as err:  # noqa: BLE001 - eager errors are re-raised by the retry below
                    if mode is None or world > 1:
                        raise
                    warnings.warn(f"torch.compile(mode={mode!r}) failed on the first step "
                                  f"({type(err).__name__}: {err}); this fit continues eagerly", RuntimeWarning,
                                  stacklevel=2)
                    opt.zero_grad(set_to_none=True)
                    mode, runner = None, make_runner(loss_fn)
                    history.compile = "off"
                    loss, logits = train_step(x, y, index)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)     # once per fit: the step's time, not its launch's
                history.first_step_seconds = time.perf_counter() - t_first
            else:
                loss, logits = train_step(x, y, index)
            if sched is not None:
                sched.step()
            loss_sum += loss.detach() * len(index)
            if logits is not None:  # a representation-learning loss (SupCon) has no class predictions
                correct += (logits.detach().argmax(1) == y).sum()
                predicted = True
            seen += len(index)
        if world > 1:       # every rank ends the epoch with rank 0's BatchNorm statistics: one model everywhere
            for m in (model, *extra_modules):
                distributed.broadcast_buffers(m)
        # One read of the device per epoch (summed over ranks under DDP).
        totals = torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device)])
        loss_total, correct_total, seen_total = distributed.all_reduce_sum(totals).tolist() if world > 1 \
            else totals.tolist()
        history.epoch.append(epoch + 1)
        history.train_loss.append(loss_total / seen_total)
        history.train_acc.append(correct_total / seen_total if predicted else None)
        history.samples.append(int(seen_total))
        history.lr.append(opt.param_groups[0]["lr"])
        if val is not None:
            metrics = evaluate(model, val, device=device)
            history.val_acc.append(metrics["accuracy"])
            history.val_mean_class_acc.append(metrics["mean_class_accuracy"])
        else:
            history.val_acc.append(None)
            history.val_mean_class_acc.append(None)
        history.seconds.append(time.perf_counter() - t0)
        if ckpt_path is not None and rank == 0:
            atomic_save({"model": model.state_dict(), "extra": [m.state_dict() for m in extra_modules],
                          "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else None,
                          "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                          "history": history.as_dict(), "epoch": epoch}, ckpt_path)
        if world > 1:
            distributed.barrier()               # no rank runs ahead of the checkpoint it may resume from
        for cb in callbacks:
            cb(epoch, history)
    del runner
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
    """Logits (and the embeddings of `fernb.models.features_and_logits`) for every row, returned on the CPU.
    The data goes to `device` in one copy (as in `fit`), not batch by batch: a copy from pageable host memory
    makes the host wait for the GPU, once per predict instead of once per batch."""
    device = resolve_device(device)
    model = _prepare(model, device).eval()
    data = data.to(device)
    augment = aug.get(augment)
    logits, embs = [], []
    # Outputs stay on the device until the end: one transfer, not one synchronizing copy per batch.
    for index in torch.arange(len(data), device=data.device).split(batch_size):
        x = batch_input(data, index, device, augment)
        with autocast(device):
            emb, out = features_and_logits(model, x)
        logits.append(out.float())
        if embeddings:
            embs.append(emb.float())
    return Prediction(torch.cat(logits).cpu(), torch.cat(embs).cpu() if embeddings else None)


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
