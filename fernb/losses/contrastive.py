"""Supervised contrastive loss (FUCLE Eq. 1; Khosla et al. 2020) and its label-free special case, SimCLR's NT-Xent.

FUCLE Eq. 1, for anchor i with positive set P(i) = {p : y_p = y_i, p != i}:

    L_i = 1/|P(i)| * sum_{p in P(i)} -log( exp(sim(z_i, z_p)/tau) / sum_{a != i} exp(sim(z_i, z_a)/tau) )

This is Khosla et al.'s "L^sup_out" form: the mean over positives sits outside the log. With several augmented views
per sample, the anchors are all B*V view embeddings, and the other views of the same image count as positives
(they share its label). Without labels, the only positives are the other views of the same image, which is
SimCLR's NT-Xent (normalized temperature-scaled cross entropy).
"""
from __future__ import annotations

import torch


def supcon_loss(features: torch.Tensor, labels: torch.Tensor | None = None, temperature: float = 0.1,
                base_temperature: float | None = None) -> torch.Tensor:
    """Supervised contrastive loss, FUCLE Eq. 1, averaged over every anchor that has at least one positive.

    Args:
        features: (B, V, D) L2-normalized embeddings z, V views per sample (a (B, D) tensor is read as V = 1).
            sim(z_i, z_a) is the dot product, so the caller normalizes (`ProjectionHead` already does).
        labels: (B,) class labels y. None gives the label-free case (SimCLR NT-Xent): positives are only the
            other views of the same sample.
        temperature: tau in Eq. 1.
        base_temperature: the loss is scaled by tau / base_temperature, as in Khosla et al.'s code; None means
            base_temperature = tau (no scaling, Eq. 1 as written).

    An anchor with no positive in the batch (e.g. V = 1 and a label seen once) has an empty sum in Eq. 1; it is left
    out of the mean instead of producing 0/0. If no anchor has a positive, the loss is 0, still attached to the
    graph so `backward()` works. The log-softmax subtracts each row's maximum over a != i before exponentiating.
    """
    if features.ndim == 2:
        features = features.unsqueeze(1)
    if features.ndim != 3:
        raise ValueError(f"features must be (B, V, D) or (B, D), got shape {tuple(features.shape)}")
    batch, views, _ = features.shape
    device = features.device
    if labels is None:
        sample_ids = torch.arange(batch, device=device)           # each sample its own class: NT-Xent
    else:
        sample_ids = labels.to(device).reshape(-1)
        if sample_ids.numel() != batch:
            raise ValueError(f"labels has {sample_ids.numel()} entries for {batch} samples")
    scale = temperature / (base_temperature if base_temperature is not None else temperature)

    # All B*V view embeddings act as anchors and as contrast samples; row r = view (r // B) of sample (r % B).
    z = features.transpose(0, 1).reshape(batch * views, -1)
    ids = sample_ids.repeat(views)
    n = z.shape[0]
    if n < 2:
        return 0.0 * features.sum()
    not_self = ~torch.eye(n, dtype=torch.bool, device=device)          # the indicator 1[a != i]
    positive = (ids.unsqueeze(0) == ids.unsqueeze(1)) & not_self        # p in P(i)
    num_positive = positive.sum(1)
    has_positive = num_positive > 0

    logits = (z @ z.T) / temperature                                     # sim(z_i, z_a) / tau
    logits = logits.masked_fill(~not_self, float("-inf"))
    # Stable log-softmax over a != i: subtract the row maximum (over a != i, so every row keeps a term exp(0) = 1).
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    log_denominator = torch.log(torch.exp(logits).sum(dim=1, keepdim=True))
    log_prob = torch.where(positive, logits - log_denominator, torch.zeros_like(logits))
    # Masked means instead of boolean indexing: no host-device sync, and anchors without positives add exactly 0.
    mean_log_prob_pos = log_prob.sum(1) / num_positive.clamp(min=1)
    num_anchors = has_positive.sum().clamp(min=1)
    return -scale * mean_log_prob_pos.sum() / num_anchors


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent on two views z1, z2 (each (B, D), L2-normalized): `supcon_loss` without labels.

    Every one of the 2B embeddings is an anchor; its positive is the other view of the same image and the remaining
    2B - 2 embeddings are negatives (the denominator of Eq. 1 runs over all a != i).
    """
    return supcon_loss(torch.stack([z1, z2], dim=1), labels=None, temperature=temperature)
