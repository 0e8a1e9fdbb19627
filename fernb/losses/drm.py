"""Losses of the Dynamic Re-labeling Module (FUCLE section 3.3, following SCN by Wang et al. 2020).

* Eq. 3, logit-weighted cross entropy: each sample's logits are scaled by its importance weight alpha_i before the
  softmax, so a low alpha_i flattens that sample's prediction instead of simply switching its loss off (multiplying
  the *loss* by alpha_i would let every alpha_i collapse to 0).
* Eq. 4, rank regularization: sort the batch's alpha_i in descending order, call the first beta fraction the
  high-importance group and the rest the low-importance group, and ask the group means to differ by a margin delta1.
* Eq. 5, the total loss L_all = gamma * L_RR + (1 - gamma) * L_WCE.
"""
from __future__ import annotations


import torch
from torch.nn import functional as F


def high_group_size(batch_size: int, beta: float) -> int:
    """Size of the high-importance group: SCN's `int(batch_size * beta)`, float product and all.

    The float product is kept on purpose, so the split is SCN's to the sample: 0.7 * 90 is 62.99999999999999 in
    floating point, so SCN's high group at B = 90 (and 170, 180, 330, ...) has 62 samples, not 63. Raises
    ValueError if either group would be empty.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta (the high-importance ratio) must lie strictly between 0 and 1, got {beta}")
    if batch_size < 2:
        raise ValueError(f"rank regularization needs at least 2 samples in a batch to form a high and a low group, "
                         f"got {batch_size}")
    k = int(beta * batch_size)
    if k < 1 or k >= batch_size:
        raise ValueError(f"beta={beta} with a batch of {batch_size} leaves the "
                         f"{'high' if k < 1 else 'low'}-importance group empty (high group size = floor(beta * B) "
                         f"= {k}); use a larger batch or a beta further from 0 and 1")
    return k


def high_importance_mask(alpha: torch.Tensor, beta: float) -> torch.Tensor:
    """Boolean (B,) mask of the high-importance group: the floor(beta * B) largest alpha_i (Eq. 4's ranking)."""
    alpha = alpha.reshape(-1)
    k = high_group_size(alpha.numel(), beta)
    mask = torch.zeros(alpha.numel(), dtype=torch.bool, device=alpha.device)
    mask[torch.topk(alpha.detach(), k).indices] = True
    return mask


def weighted_cross_entropy(logits: torch.Tensor, alpha: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Logit-weighted cross entropy L_WCE, FUCLE Eq. 3: mean_i CE(alpha_i * W^T x_i, y_i).

    Args:
        logits: (B, C) classifier outputs W_j^T x_i.
        alpha: (B,) or (B, 1) importance weights alpha_i in (0, 1) (Eq. 2); gradients flow into them.
        targets: (B,) labels y_i.
    """
    return F.cross_entropy(alpha.reshape(-1, 1) * logits, targets)


def rank_regularization_loss(alpha: torch.Tensor, beta: float = 0.7, delta1: float = 0.15) -> torch.Tensor:
    """Rank regularization L_RR, FUCLE Eq. 4: max{0, delta1 - (alpha_H - alpha_L)}.

    alpha is sorted in descending order; the high-importance group is the first floor(beta * B) samples (SCN's
    `int(beta * B)`), the low-importance group is the rest, and alpha_H, alpha_L are the two group means (the paper
    writes them alpha_s and alpha_u). delta1 is the margin the group means must keep.
    Defaults beta = 0.7, delta1 = 0.15 are SCN's and the paper's sensitivity optimum for delta1.

    Raises ValueError if a group would be empty (B < 2, or beta not in (0, 1), or beta * B rounding to 0 or B).
    """
    alpha = alpha.reshape(-1)
    k = high_group_size(alpha.numel(), beta)
    ranked = torch.sort(alpha, descending=True).values
    alpha_high = ranked[:k].mean()
    alpha_low = ranked[k:].mean()
    return torch.clamp(delta1 - (alpha_high - alpha_low), min=0.0)


def drm_loss(logits: torch.Tensor, alpha: torch.Tensor, targets: torch.Tensor, beta: float = 0.7,
             delta1: float = 0.15, gamma: float = 0.5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total DRM loss, FUCLE Eq. 5: L_all = gamma * L_RR + (1 - gamma) * L_WCE.

    gamma = 0.5 (the paper does not give its value) weighs the two terms equally, which is SCN's `CE + RR` up to a
    factor 1/2 (irrelevant under Adam-type optimizers up to epsilon and weight decay).
    Returns (L_all, {"loss": L_all, "rr": L_RR, "wce": L_WCE}) with the parts detached.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma (the trade-off ratio of Eq. 5) must lie in [0, 1], got {gamma}")
    wce = weighted_cross_entropy(logits, alpha, targets)
    rr = rank_regularization_loss(alpha, beta, delta1)
    loss = gamma * rr + (1.0 - gamma) * wce
    return loss, {"loss": loss.detach(), "rr": rr.detach(), "wce": wce.detach()}
