"""Contrastive pre-training of a backbone (FUCLE Sec. 3.2, Eq. 1): two augmented views per image, the backbone's
embedding projected by an MLP head g(.) to an L2-normalized z, and the supervised contrastive loss over the batch
(SimCLR's NT-Xent when `use_labels=False`).

It runs inside `fernb.engine.fit` (checkpoint + resume, progress bars, AMP on CUDA, torch.compile and
DistributedDataParallel where the engine uses them): the engine hands the loss a normalized batch with no
augmentation, and the loss draws the two views itself. Under DDP the loss contrasts the global batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import distributed, engine
from ..data import augment as aug
from ..data.dataset import FERDataset
from ..losses import supcon_loss
from ..models import ProjectionHead


@dataclass
class PretrainResult:
    history: engine.History
    head: ProjectionHead


def gather_batch(feats: torch.Tensor, labels: torch.Tensor | None):
    """Under DistributedDataParallel, every rank's (features, labels) concatenated in rank order, so a contrastive
    loss contrasts each anchor with the whole global batch and not just its rank's shard (SimCLR and SupCon gather
    across devices the same way). The features keep their gradient (`fernb.distributed.all_gather_with_grad`); with
    one process they are returned as they are. With G ranks each rank computes the same global loss, whose gradient
    reaches its own rows G times over the gather, and DDP's average over ranks divides that G back out."""
    if distributed.world_size() == 1:
        return feats, labels
    feats = distributed.all_gather_with_grad(feats)
    if labels is not None:
        parts = [torch.empty_like(labels) for _ in range(distributed.world_size())]
        torch.distributed.all_gather(parts, labels.contiguous())
        labels = torch.cat(parts)
    return feats, labels


def two_view_contrastive_step(head: nn.Module, temperature: float, use_labels: bool, view_augment):
    """A `loss_fn` for `engine.fit`: views v1, v2 = augment(x), augment(x); z = g(f(v)); L = SupCon(z, y), over the
    global batch under DDP (`gather_batch`)."""

    def step(model, x, y, index):
        images = aug.from_input(x)
        views = [aug.to_input(view_augment(images)) for _ in range(2)]
        z = [head(model.forward_head(model.forward_features(v), pre_logits=True)) for v in views]
        feats, labels = gather_batch(torch.stack(z, dim=1).float(), y if use_labels else None)
        return supcon_loss(feats, labels, temperature=temperature), None

    return step


def contrastive_pretrain(model: nn.Module, data: FERDataset, *, epochs: int = 10, batch_size: int = 128,
                         lr: float = 1e-3, temperature: float = 0.1, use_labels: bool = True,
                         projection_dim: int = 128, view_augment="contrastive", device=None, seed: int = 0,
                         checkpoint=None, progress: bool = True) -> PretrainResult:
    """Pre-train `model`'s backbone in place with SupCon (labels) or NT-Xent (no labels) on `data`.

    With use_labels=True, rows with label -1 would have no valid class, so the data must be fully labeled; with
    use_labels=False every row is used (labels are ignored, so an unlabeled pool works: pass it with any labels >= 0).
    The two views use SimCLR's augmentation (`augment.contrastive`: crop, flip, colour jitter, greyscale).
    The classifier of `model` is left untouched (fine-tuning trains it).
    Under torchrun (DDP) the loss contrasts the global batch (`gather_batch`) and the projection head's BatchNorm
    normalizes with global-batch statistics (`distributed.GlobalBatchNorm1d`), so the loss and the update are the
    single process's with the same global batch; BatchNorm layers inside the backbone keep per-rank statistics, as in
    every `engine.fit` under DDP.
    """
    head = ProjectionHead(model.num_features, projection_dim)
    if distributed.world_size() > 1:
        head = distributed.global_batchnorm(head)   # the head's BatchNorm over the global batch, as the loss is
    if not use_labels:
        data = data.with_labels((data.labels * 0).clamp(min=0))  # every row counts; labels are not read
    history = engine.fit(model, data, epochs=epochs, batch_size=batch_size, lr=lr, augment=None,
                         loss_fn=two_view_contrastive_step(head, temperature, use_labels, aug.get(view_augment)),
                         extra_modules=(head,), device=device, seed=seed, checkpoint=checkpoint, progress=progress,
                         desc="SupCon" if use_labels else "SimCLR")
    return PretrainResult(history, head)
