"""The Contrastive Uncertainty Estimation Module (CUEM) of Hu et al. (Sec. II-B, Fig. 3).

For each query z^q of a batch, the cosine similarity to every entry of the labeled queue Q is averaged per class:

    S_cos(c) = mean_{j in Q, y_j = c} cos(z^q, z^k_j)                        (one value per class c)

the uncertainty is the gap between the best class and the given label,

    u = S_cos_max - S_cos_zq,          S_cos_max = max_c S_cos(c),   S_cos_zq = S_cos(label)

and a sample with u > theta (0.1 in the paper) is relabeled to argmax_c S_cos(c). A class with no entry in the
queue has no mean; it can neither win the max nor be judged (a sample whose label has no queue entry keeps it).

Relabeling replaces a label by a nearest-class-mean prediction in the contrastive space: it can only help where
that prediction is more accurate than the labels it overrides. SynthFER knows every clean label, so each decision
is recorded in a `fernb.methods.drm.RelabelLog` (the same audit as FUCLE's DRM) and measured: precision, recall,
label noise before and after, per epoch. On a real dataset the same audit is "agreement with the annotators".

`relabel_curve` applies the rule at every theta of a grid to one set of similarities, for the precision/recall vs
theta figure; `similarity_accuracy` is the accuracy of argmax_c S_cos(c) itself (the ceiling of relabel precision).
"""
from __future__ import annotations

import torch

__all__ = ["class_similarity", "uncertainty", "cuem_relabel", "relabel_curve", "similarity_accuracy",
           "queue_similarity"]


def class_similarity(queries: torch.Tensor, queue_keys: torch.Tensor, queue_labels: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """S_cos: (B, num_classes) mean cosine similarity of each query to the queue entries of each class.

    Queries and keys are L2-normalized here (cosine similarity by definition); empty slots (label -1) are ignored;
    a class with no entry gets NaN. One matrix product and one scatter: no per-class loop. Empty slots get a zero
    one-hot row rather than being cut out with a boolean mask, whose data-dependent size would make a GPU's host
    wait at every training step (a full queue, the training loop's case, gives the same numbers either way)."""
    q = torch.nn.functional.normalize(queries.float(), dim=1)
    k = torch.nn.functional.normalize(queue_keys.to(q.device).float(), dim=1)
    lab = queue_labels.reshape(-1).to(q.device)
    valid = lab >= 0
    sims = q @ k.T                                                           # (B, K)
    one_hot = torch.nn.functional.one_hot(lab.clamp(min=0), num_classes).float() * valid[:, None]   # (K, C)
    counts = one_hot.sum(0)
    sums = sims @ one_hot                                                    # (B, C)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))


def uncertainty(similarity: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, argmax class): u = S_cos_max - S_cos_zq per sample (NaN where the label's class has no queue entry).
    Classes with no entry (NaN) never win the max."""
    labels = labels.reshape(-1).to(similarity.device).long()
    filled = torch.nan_to_num(similarity, nan=float("-inf"))
    s_max, best = filled.max(dim=1)
    s_label = similarity.gather(1, labels[:, None]).squeeze(1)
    return s_max - s_label, best


def cuem_relabel(similarity: torch.Tensor, labels: torch.Tensor, theta: float = 0.1
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CUEM rule (Fig. 3) on one batch: (new labels, changed mask, u).

        y' = argmax_c S_cos(c)   if u = S_cos_max - S_cos_zq > theta
        y' = y                    otherwise (and where u is undefined)

    `changed` is True exactly where y' != y (u > theta >= 0 implies the argmax is another class)."""
    if theta < 0:
        raise ValueError(f"theta must be >= 0, got {theta}")
    labels = labels.reshape(-1).to(similarity.device).long()
    u, best = uncertainty(similarity, labels)
    relabel = torch.nan_to_num(u, nan=-1.0) > theta
    new = torch.where(relabel, best, labels)
    return new, new != labels, u


@torch.no_grad()
def queue_similarity(queries: torch.Tensor, queue_keys: torch.Tensor, queue_labels: torch.Tensor,
                     num_classes: int, chunk: int = 4096) -> torch.Tensor:
    """`class_similarity` for many queries (a whole training set), in chunks; returned on the CPU."""
    parts = [class_similarity(q, queue_keys, queue_labels, num_classes).cpu() for q in queries.split(chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, num_classes)


def relabel_curve(similarity: torch.Tensor, labels: torch.Tensor, clean_labels: torch.Tensor, thetas):
    """The CUEM rule at each theta, applied once to every sample with the same similarities: a pandas DataFrame
    with theta, relabeled (count), relabel_rate, precision (new label == clean label, NaN with no relabel),
    recall (noisy samples corrected / noisy samples, NaN without noise), noise_before, noise_after, broken
    (clean labels made wrong)."""
    import math

    import pandas as pd

    labels = labels.reshape(-1).cpu().long()
    clean = clean_labels.reshape(-1).cpu().long()
    similarity = similarity.cpu()
    noisy = labels != clean
    rows = []
    for theta in thetas:
        new, changed, _ = cuem_relabel(similarity, labels, float(theta))
        n_changed = int(changed.sum())
        correct = int((new[changed] == clean[changed]).sum())
        corrected = int((noisy & (new == clean)).sum())
        rows.append({"theta": float(theta), "relabeled": n_changed, "relabel_rate": n_changed / max(1, len(labels)),
                     "precision": correct / n_changed if n_changed else math.nan,
                     "recall": corrected / int(noisy.sum()) if int(noisy.sum()) else math.nan,
                     "noise_before": float(noisy.float().mean()), "noise_after": float((new != clean).float().mean()),
                     "broken": int((~noisy & (new != clean)).sum())})
    return pd.DataFrame(rows)


def similarity_accuracy(similarity: torch.Tensor, clean_labels: torch.Tensor) -> float:
    """Accuracy of argmax_c S_cos(c) against the clean labels: how often the class CUEM would relabel *to* is right,
    whatever theta; relabel precision tends to it as theta -> 0."""
    filled = torch.nan_to_num(similarity.cpu(), nan=float("-inf"))
    return float((filled.argmax(1) == clean_labels.reshape(-1).cpu()).float().mean())
