"""The Dynamic Re-labeling Module (DRM) of FUCLE (section 3.3), built on SCN (Wang et al. 2020), as training machinery.

Pieces, in the paper's order:

* `DRMHead` / `DRM`: the self-attention importance weight alpha_i = sigma(W_a^T x_i) (Eq. 2) on the backbone
  embedding x_i, trained with L_all = gamma * L_RR + (1 - gamma) * L_WCE (Eq. 3-5, `fernb.losses.drm_loss`).
* `relabel`: Eq. 6, applied to the low-importance group of each batch: y' = l_max if P_max - P_gt > delta2.
* `update_delta2`: Eq. 7, the dynamic relabeling margin.
* `RelabelLog`: every label change, so a notebook can measure what the paper could only assume: the precision and
  recall of relabeling against the clean labels SynthFER knows.
* `train_drm`: a compact training loop tying them together over a `FERDataset`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..data.dataset import FERDataset
from ..engine import autocast, batch_input, make_optimizer, make_scaler, optimizer_step, resolve_device
from ..losses.drm import drm_loss, high_group_size, high_importance_mask
from ..models import AttentionWeight, features_and_logits

__all__ = ["relabel", "update_delta2", "RelabelLog", "DRMHead", "DRM", "DRMResult", "train_drm",
           "evaluate_drm", "compute_alpha", "explain_batch"]


# ---- Eq. 6 and Eq. 7 ---------------------------------------------------------------------------------------------
def relabel(probs: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor, beta: float = 0.7,
            delta2: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic-threshold relabeling, FUCLE Eq. 6, on the low-importance group of one batch.

        y' = l_max   if P_max - P_gt > delta2   (and sample i is in the low-importance group)
        y' = l_org   otherwise

    Args:
        probs: (B, C) softmax probabilities (in `train_drm`: of the alpha-weighted logits, the output L_WCE trains,
            as SCN does).
        labels: (B,) the current labels l_org.
        alpha: (B,) importance weights alpha_i; the low-importance group is everyone outside the floor(beta * B)
            largest alpha_i (the same split as rank regularization, Eq. 4).
        beta: ratio of the high-importance group.
        delta2: the relabeling margin.

    Returns (new_labels y', changed_mask); changed_mask is True exactly where y' != l_org.
    """
    labels = labels.reshape(-1)
    p_max, l_max = probs.max(dim=1)
    p_gt = probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    low = ~high_importance_mask(alpha, beta)
    changed = low & (p_max - p_gt > delta2) & (l_max != labels)
    return torch.where(changed, l_max, labels), changed


def update_delta2(delta2: float, best_val: float, Td: float, increase: float = 0.01,
                  decrease: float = 0.01) -> float:
    """Dynamic relabeling margin, FUCLE Eq. 7.

        delta2 <- delta2 + increase             if bestval > Td
        delta2 <- max(0, delta2 - decrease)     otherwise

    A larger delta2 relabels less often (fewer but safer corrections); a smaller one relabels more (and risks a
    rough model making wrong corrections). The paper gives no values for Td, increase and decrease; see `train_drm`
    for the defaults used there.
    """
    if best_val > Td:
        return float(delta2 + increase)
    return float(max(0.0, delta2 - decrease))


# ---- the relabeling log ------------------------------------------------------------------------------------------
class RelabelLog:
    """Every relabel decision: (epoch, sample index, old label, new label, clean label or -1 when unknown).

    Only actual changes (new != old) count. Records are kept as lists of tensors (possibly on the GPU, so the
    training loop never synchronizes) and concatenated and filtered on the CPU when read.

    `initial_labels` (the given labels before any relabeling) and `clean_labels` (the true labels, when the data
    source knows them) are optional; `precision_recall` needs both for recall.
    """

    columns = ("epoch", "index", "old", "new", "clean")

    def __init__(self, initial_labels: torch.Tensor | None = None, clean_labels: torch.Tensor | None = None):
        self.initial_labels = None if initial_labels is None else initial_labels.detach().cpu().long().clone()
        self.clean_labels = None if clean_labels is None else clean_labels.detach().cpu().long().clone()
        self._epochs: set[int] = set()
        self._parts: dict[str, list[torch.Tensor]] = {c: [] for c in self.columns}

    def begin_epoch(self, epoch: int) -> None:
        """Register an epoch in which relabeling ran, so it gets a row in `precision_recall` even with no changes."""
        self._epochs.add(int(epoch))

    def record(self, epoch: int, index: torch.Tensor, old: torch.Tensor, new: torch.Tensor,
               clean: torch.Tensor | None = None) -> None:
        """Record the decisions of one batch; entries with new == old are dropped. `clean` defaults to the
        `clean_labels` given at construction, else -1."""
        index, old, new = index.reshape(-1).long(), old.reshape(-1).long(), new.reshape(-1).long()
        if clean is None:
            clean = (self.clean_labels.to(index.device)[index] if self.clean_labels is not None
                     else torch.full_like(index, -1))
        clean = clean.reshape(-1).long()
        self.begin_epoch(epoch)
        # Stored unfiltered and filtered on read: a boolean-mask index here would synchronize a GPU every batch.
        self._parts["epoch"].append(torch.full_like(index, int(epoch)))
        for name, value in (("index", index), ("old", old), ("new", new), ("clean", clean)):
            self._parts[name].append(value)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The records (changes only) as CPU int64 tensors, one per column."""
        out = {}
        for name in self.columns:
            parts = [t.detach().cpu() for t in self._parts[name]]
            out[name] = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        keep = out["new"] != out["old"]
        out = {k: v[keep] for k, v in out.items()}
        self._parts = {k: [v] for k, v in out.items()}      # compact, so repeated reads stay cheap
        return out

    def __len__(self) -> int:
        return int(self.tensors()["index"].numel())

    @property
    def epochs(self) -> list[int]:
        return sorted(self._epochs)

    def to_frame(self):
        """A pandas DataFrame with columns epoch, index, old, new, clean (-1 = unknown), one row per change."""
        import pandas as pd
        return pd.DataFrame({k: v.numpy() for k, v in self.tensors().items()}, columns=list(self.columns))

    def precision_recall(self, initial_labels: torch.Tensor | None = None,
                         clean_labels: torch.Tensor | None = None):
        """Per-epoch quality of relabeling against the clean labels, as a pandas DataFrame.

        Columns, for each epoch e in which relabeling ran:
          relabeled:   number of label changes in epoch e.
          correct:     changes whose new label equals the clean label.
          precision:   correct / (changes whose clean label is known); NaN when there is none.
          noisy_before: training samples whose current label differs from the clean label at the start of epoch e
                       (replaying the log from `initial_labels`).
          corrected:   of those, the samples whose label equals the clean label at the end of epoch e.
          recall:      corrected / noisy_before, i.e. the fraction of the noisy samples present at the start of
                       epoch e that epoch e corrected; NaN when there is none (or without clean/initial labels).
          broken:      samples that were clean at the start of epoch e and are wrong at its end.
          noise_rate:  fraction of training samples whose label differs from the clean label at the end of epoch e.
        The replay assumes each sample is relabeled at most once per epoch (true for `train_drm`, which visits every
        sample once per epoch).
        """
        import pandas as pd
        rec = self.tensors()
        initial = initial_labels if initial_labels is not None else self.initial_labels
        clean = clean_labels if clean_labels is not None else self.clean_labels
        can_replay = initial is not None and clean is not None
        if can_replay:
            labels = initial.detach().cpu().long().clone()
            clean = clean.detach().cpu().long()
        rows = []
        for epoch in sorted(self._epochs | set(rec["epoch"].tolist())):
            sel = rec["epoch"] == epoch
            new, known = rec["new"][sel], rec["clean"][sel] >= 0
            correct = int((new[known] == rec["clean"][sel][known]).sum())
            row = {"epoch": epoch, "relabeled": int(sel.sum()), "correct": correct,
                   "precision": correct / int(known.sum()) if int(known.sum()) else math.nan}
            if can_replay:
                noisy_before = labels != clean
                labels[rec["index"][sel]] = new
                wrong_after = labels != clean
                n_noisy = int(noisy_before.sum())
                corrected = int((noisy_before & ~wrong_after).sum())
                row.update(noisy_before=n_noisy, corrected=corrected,
                           recall=corrected / n_noisy if n_noisy else math.nan,
                           broken=int((~noisy_before & wrong_after).sum()),
                           noise_rate=float(wrong_after.float().mean()))
            else:
                row.update(noisy_before=math.nan, corrected=math.nan, recall=math.nan, broken=math.nan,
                           noise_rate=math.nan)
            rows.append(row)
        return pd.DataFrame(rows, columns=["epoch", "relabeled", "correct", "precision", "noisy_before",
                                           "corrected", "recall", "broken", "noise_rate"])

    def __repr__(self) -> str:
        return f"RelabelLog({len(self)} changes over epochs {self.epochs})"


# ---- the module --------------------------------------------------------------------------------------------------
class DRMHead(nn.Module):
    """The self-attention importance weighting of FUCLE Eq. 2, alpha_i = sigma(W_a^T x_i), on the embedding x_i."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.attention = AttentionWeight(in_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.attention(embedding)


class DRM(nn.Module):
    """A backbone (any `fernb.models.create` model) plus the DRM attention head.

    `forward(x)` returns (alpha (B,), logits (B, C)) with the plain classifier logits W^T x_i; Eq. 3 scales them by
    alpha_i inside the loss. Because alpha_i > 0, argmax(alpha_i * logits) = argmax(logits): predictions do not
    depend on alpha. `loss(x, y)` returns (L_all, parts, alpha, logits) for one batch (Eq. 5).
    """

    def __init__(self, backbone: nn.Module, beta: float = 0.7, delta1: float = 0.15, gamma: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.head = DRMHead(backbone.num_features)
        self.beta, self.delta1, self.gamma = beta, delta1, gamma

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, logits = features_and_logits(self.backbone, x)
        return self.head(embedding), logits

    def loss(self, x: torch.Tensor, y: torch.Tensor):
        alpha, logits = self(x)
        loss, parts = drm_loss(logits.float(), alpha.float(), y, self.beta, self.delta1, self.gamma)
        return loss, parts, alpha, logits


# ---- training ----------------------------------------------------------------------------------------------------
@dataclass
class DRMResult:
    """What `train_drm` returns.

    model: the trained `DRM` (backbone trained in place, plus the attention head).
    labels: (N,) the training labels after the last epoch's relabeling; initial_labels: before any.
    log: every relabel decision (`RelabelLog`).
    delta2_trace: the delta2 in force during each epoch (length = epochs), then the value after the last update.
    alpha: (N,) alpha_i of every training sample as computed in its last-epoch training batch (train mode,
        augmented), for histograms; high_mask: (N,) whether it fell in that batch's high-importance group.
    history: per-epoch lists: train_loss, rr, wce, train_acc (against the labels in use), val_acc (NaN without val),
        relabeled (changes in the epoch), delta2.
    """
    model: DRM
    labels: torch.Tensor
    initial_labels: torch.Tensor
    log: RelabelLog
    delta2_trace: list[float]
    alpha: torch.Tensor
    high_mask: torch.Tensor
    history: dict[str, list[float]] = field(default_factory=dict)

    def relabel_stats(self):
        """Per-epoch precision / recall of relabeling (`RelabelLog.precision_recall`)."""
        return self.log.precision_recall()


def _batches(n: int, batch_size: int, beta: float, generator: torch.Generator) -> list[torch.Tensor]:
    """Seeded shuffled batches. A last batch too small to split into a non-empty high and low group (Eq. 4) is
    folded into the previous one."""
    order = torch.randperm(n, generator=generator)
    chunks = list(order.split(batch_size))
    k = int(beta * chunks[-1].numel())    # high_group_size's rule (SCN's int(beta * B))
    if len(chunks) > 1 and not 1 <= k < chunks[-1].numel():
        last = chunks.pop()
        chunks[-1] = torch.cat([chunks[-1], last])
    return chunks


@torch.no_grad()
def compute_alpha(drm: DRM, data: FERDataset, batch_size: int = 256, device=None) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """(alpha (N,), logits (N, C)) for every sample of `data`, in eval mode, returned on the CPU.

    The whole DRM (backbone and attention head) is moved to `device` ("auto" = CUDA when available) first."""
    device = resolve_device(device)
    drm.to(device)
    was_training = drm.training
    drm.eval()
    alphas, logits = [], []
    for index in torch.arange(len(data), device=data.device).split(batch_size):
        x = batch_input(data, index, device)  # the engine's normalization, so a DRM backbone fine-tunes as-is
        with autocast(device):
            a, z = drm(x)
        alphas.append(a.float())
        logits.append(z.float())
    drm.train(was_training)
    return torch.cat(alphas).cpu(), torch.cat(logits).cpu()    # one transfer, not one per batch


def evaluate_drm(drm: DRM, data: FERDataset, batch_size: int = 256, device=None) -> float:
    """Accuracy of argmax(logits) against `data.labels`."""
    _, logits = compute_alpha(drm, data, batch_size, device)
    return float((logits.argmax(1) == data.labels.cpu()).float().mean())


def train_drm(model: nn.Module, train: FERDataset, val: FERDataset | None = None, epochs: int = 20,
              batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4, beta: float = 0.7,
              delta1: float = 0.15, gamma: float = 0.5, delta2: float = 0.2, relabel_start_epoch: int = 9,
              dynamic_delta2: bool = True, Td: float | None = None, increase: float = 0.01, decrease: float = 0.01,
              augment: Callable[[torch.Tensor], torch.Tensor] | None = None, device=None, seed: int = 0,
              progress: bool = True, inplace: bool = True) -> DRMResult:
    """Train `model` with the DRM (FUCLE Eq. 2-7) on `train`, relabeling low-importance samples as it goes.

    The images, the working labels and the clean labels live on `device` for the whole run and each epoch's batch
    indices are copied there once, so no step waits on a host-device copy (the model, the attention head and the
    optimizer use `fernb.engine`'s device, precision and optimizer step).

    Each epoch (numbered from 0): shuffled batches (seeded `torch.randperm`) of float images, `augment(x)` if given,
    L_all (Eq. 5) with AdamW. From epoch `relabel_start_epoch` on, every batch's low-importance group is relabeled by
    Eq. 6 using the softmax of the alpha-weighted logits of the same forward pass (as SCN), and the changes are
    written into the label vector by sample index and into the `RelabelLog`. After the epoch, the val accuracy is
    measured and, if `dynamic_delta2`, delta2 is updated by Eq. 7 (only in relabeling epochs, so the margin does
    not drift before it is used; never without `val`).

    Defaults and why:
      beta = 0.7, delta1 = 0.15, delta2 = 0.2: SCN's defaults; the FUCLE sensitivity study (Fig. 4) also finds
        delta1 ~ 0.15 and delta2 ~ 0.2 best.
      gamma = 0.5: not given by the paper; equal weights are SCN's `CE + RR` up to an overall factor 1/2.
      relabel_start_epoch = 9: SCN relabels from its epoch 10 counted from 1, i.e. after 9 warm-up epochs.
        Notebooks with fewer epochs pass a smaller value.
      Td = None: the paper gives no threshold. None means "the best val accuracy before this epoch", so
        bestval > Td reads "val accuracy improved this epoch": while relabeling helps, delta2 grows (fewer, safer
        changes); when it stalls, delta2 shrinks (more corrections). A float is used as a fixed accuracy threshold
        in [0, 1], compared with the best val accuracy so far, as Eq. 7 is written.
      increase = decrease = 0.01: small steps so delta2 stays within the paper's studied range [0, 0.35] over a
        few tens of epochs.
      lr = 1e-3, weight_decay = 1e-4: Adam-family defaults (SCN uses Adam with weight decay 1e-4).

    `inplace=True` writes the relabeled labels into `train.labels` itself at the end of every relabeling epoch
    (so the dataset carries the current labels); pass False to leave `train` untouched (e.g. when several runs
    share one dataset). Either way `DRMResult.labels` holds the final labels and `DRMResult.initial_labels` the
    given ones.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if bool((train.labels < 0).any()):
        raise ValueError(f"{train.name}: DRM trains on labeled data, but some labels are -1 (unlabeled)")
    high_group_size(min(batch_size, len(train)), beta)      # fail early, with Eq. 4's message, on a bad beta / B
    device = resolve_device(device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    drm = DRM(model, beta=beta, delta1=delta1, gamma=gamma).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(drm.parameters(), name="adamw", lr=lr, weight_decay=weight_decay, device=device)
    scaler = make_scaler(device)

    initial_labels = train.labels.detach().clone().cpu()
    data = train.to(device)                   # images, labels and clean labels resident on the device
    labels = data.labels.clone()              # the working labels, relabeled in place batch by batch
    clean = data.clean_labels
    log = RelabelLog(initial_labels, clean)
    n = len(train)
    alpha_all = torch.zeros(n, device=device)
    high_all = torch.zeros(n, dtype=torch.bool, device=device)
    history: dict[str, list[float]] = {k: [] for k in ("train_loss", "rr", "wce", "train_acc", "val_acc",
                                                       "relabeled", "delta2")}
    delta2_trace: list[float] = []
    best_val = -math.inf

    from tqdm.auto import tqdm
    bar = tqdm(range(epochs), desc="DRM", disable=not progress)
    for epoch in bar:
        relabeling = epoch >= relabel_start_epoch
        if relabeling:
            log.begin_epoch(epoch)
        delta2_trace.append(float(delta2))
        drm.train()
        sums = torch.zeros(5, device=device)     # loss, rr, wce, correct, relabeled: summed on device, read once
        batches = _batches(n, batch_size, beta, generator)
        for index in torch.cat(batches).to(device).split([len(b) for b in batches]):   # one copy per epoch
            x = batch_input(data, index, device, augment)
            y = labels[index]
            with autocast(device):
                loss, parts, alpha, logits = drm.loss(x, y)
            optimizer_step(loss, optimizer, scaler)

            with torch.no_grad():
                alpha, logits = alpha.detach().float(), logits.detach().float()
                alpha_all[index] = alpha
                high_all[index] = high_importance_mask(alpha, beta)
                bsz = index.numel()
                sums[:3] += torch.stack([parts["loss"], parts["rr"], parts["wce"]]) * bsz
                sums[3] += (logits.argmax(1) == y).sum()
                if relabeling:
                    probs = torch.softmax(alpha.unsqueeze(1) * logits, dim=1)
                    new_y, changed = relabel(probs, y, alpha, beta, delta2)
                    labels[index] = new_y
                    log.record(epoch, index, y, new_y, clean[index] if clean is not None else None)
                    sums[4] += changed.sum()
        if inplace and relabeling:            # the dataset carries the current labels, updated once per epoch
            train.labels.copy_(labels.to(train.labels.device))

        totals = (sums / torch.tensor([n, n, n, n, 1], device=device)).tolist()
        for key, value in zip(("train_loss", "rr", "wce", "train_acc", "relabeled"), totals):
            history[key].append(int(value) if key == "relabeled" else value)
        history["delta2"].append(float(delta2))
        val_acc = evaluate_drm(drm, val, batch_size=max(batch_size, 256), device=device) if val is not None \
            else math.nan
        history["val_acc"].append(val_acc)
        if val is not None:
            previous_best = best_val
            best_val = max(best_val, val_acc)
            if dynamic_delta2 and relabeling:
                threshold = previous_best if Td is None else Td
                delta2 = update_delta2(delta2, best_val, threshold, increase, decrease)
        bar.set_postfix(loss=f"{totals[0]:.3f}", val=f"{val_acc:.3f}", delta2=f"{delta2:.2f}",
                        relabeled=int(totals[4]))
    delta2_trace.append(float(delta2))

    return DRMResult(model=drm, labels=labels.detach().clone().cpu(), initial_labels=initial_labels, log=log,
                     delta2_trace=delta2_trace, alpha=alpha_all.cpu(), high_mask=high_all.cpu(), history=history)


# ---- a worked example ---------------------------------------------------------------------------------------------
def explain_batch(alpha: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                  clean_labels: torch.Tensor | None = None, *, beta: float = 0.7, delta1: float = 0.15,
                  gamma: float = 0.5, delta2: float = 0.2, classes=None):
    """Eq. 2-7 on one small batch, step by step, for teaching: a per-sample table and the batch's losses.

    Given the attention weights alpha_i (Eq. 2) and classifier logits W^T x_i of B samples with labels l_org:
    the rank group of each sample (Eq. 4's split at floor(beta * B)), its weighted-CE term (Eq. 3), P_max and
    P_gt of softmax(alpha_i * logits) (what Eq. 6 reads), and the relabel decision of Eq. 6 with `delta2`.
    Returns (table, losses) where losses = {"L_WCE", "alpha_H", "alpha_L", "L_RR", "L_all"} (Eq. 3-5), computed with
    the same functions training uses.
    """
    import pandas as pd
    from torch.nn import functional as F

    from ..losses.drm import rank_regularization_loss, weighted_cross_entropy

    alpha, logits, labels = alpha.detach().float().reshape(-1), logits.detach().float(), labels.reshape(-1).long()
    high = high_importance_mask(alpha, beta)
    probs = torch.softmax(alpha[:, None] * logits, dim=1)
    new, changed = relabel(probs, labels, alpha, beta, delta2)
    name = (lambda k: classes[int(k)]) if classes is not None else int
    table = pd.DataFrame({
        "alpha": alpha.numpy(), "group": ["high" if h else "low" for h in high.tolist()],
        "label": [name(k) for k in labels], "P_gt": probs.gather(1, labels[:, None]).squeeze(1).numpy(),
        "prediction": [name(k) for k in probs.argmax(1)], "P_max": probs.max(1).values.numpy(),
        "WCE term": F.cross_entropy(alpha[:, None] * logits, labels, reduction="none").numpy(),
        "relabeled to": [name(n) if c else "" for n, c in zip(new, changed.tolist())]})
    table["P_max - P_gt"] = table["P_max"] - table["P_gt"]
    if clean_labels is not None:
        table["clean label"] = [name(k) for k in clean_labels.reshape(-1)]
    table = table.sort_values("alpha", ascending=False, kind="stable")
    k = high_group_size(len(alpha), beta)
    ranked = alpha.sort(descending=True).values
    wce, rr = weighted_cross_entropy(logits, alpha, labels), rank_regularization_loss(alpha, beta, delta1)
    losses = {"L_WCE": float(wce), "alpha_H": float(ranked[:k].mean()), "alpha_L": float(ranked[k:].mean()),
              "L_RR": float(rr), "L_all": float(gamma * rr + (1 - gamma) * wce)}
    return table, losses
