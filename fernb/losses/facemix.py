"""FaceMix (Song et al., SSFER Sec. 3.4, Eq. 6-10; variants L1-L4 of Eq. 11-14 / Table 15), with Mixup and CutMix.

Mixup builds a virtual sample from two real ones (Eq. 6) with lambda ~ Beta(alpha, alpha):

    x~ = lambda x_i + (1 - lambda) x_j,      y~ = lambda y_i + (1 - lambda) y_j                          (6)
    L_v = -1/N sum y~ . log p^(x~)                                                                         (7)

When the two faces sit differently in their frames (head pose, scale, position) the blend is not a plausible face.
FaceMix measures that with the face boxes B_i, B_j and trains on the real images too, weighted by it:

    IoU = area(B_i intersect B_j) / area(B_i union B_j)                                                      (8)
    kappa = 1 - IoU                                                                                          (9)
    L = L_v + kappa (L_i + L_j)        (L4, the paper's choice)                                              (10)

L_i, L_j are the cross-entropies of the two real images. Table 15's variants: L1 = (1 - kappa) L_v + L_i + L_j,
L2 = L_v + (1 - kappa)(L_i + L_j), L3 = kappa L_v + L_i + L_j, L4 = Eq. 10. kappa is per pair, so each term is
weighted per pair and averaged over the batch: L = mean_n [ a_n L_v,n + b_n (L_i,n + L_j,n) ].

kappa alternatives (Table 14), each a *dissimilarity* in [0, 1] (0 = the two images are the same, as IoU = 1 gives
kappa = 0), computed between the two real images x_i, x_j in [0, 1]:
  * IoU:  kappa = 1 - IoU of the face boxes (Eq. 9).
  * PSNR: kappa = 10^(-PSNR / 20) = the root-mean-square difference of the two images (PSNR = 20 log10(1 / RMSE)
    for a data range of 1): 0 for identical images, 1 for black against white. (torchmetrics)
  * SSIM: kappa = (1 - SSIM) / 2, the structural dissimilarity (DSSIM), SSIM in [-1, 1]. (torchmetrics)
  * FSIM: kappa = 1 - clamp(FSIM, 0, 1); FSIM lies in [0, 1] (it can exceed 1 by a hair for contrast-boosted
    inputs, hence the clamp). (piq; FSIMc on RGB)
The paper does not say how it maps PSNR / SSIM / FSIM to kappa; these are the natural monotone maps onto [0, 1].

In a batch, x_j is the batch itself in a random order (j = perm(i)), as in Mixup implementations, so the logits of
the real images are computed once for the batch and L_j reads them through the permutation. One lambda per batch
(Zhang et al.'s Mixup and timm's default "batch" mode).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

__all__ = ["box_iou_pairs", "kappa_from_boxes", "kappa_from_images", "KAPPA_SOURCES", "sample_lambda",
           "mixup_batch", "cutmix_batch", "MixBatch", "soft_cross_entropy", "facemix_loss", "VARIANTS"]

KAPPA_SOURCES = ("iou", "psnr", "ssim", "fsim")
VARIANTS = ("L1", "L2", "L3", "L4")


def box_iou_pairs(boxes_i: torch.Tensor, boxes_j: torch.Tensor) -> torch.Tensor:
    """IoU of each pair (B_i[n], B_j[n]) (Eq. 8); boxes (N, 4) as x0, y0, x1, y1. Empty unions give IoU 0."""
    lt = torch.maximum(boxes_i[:, :2], boxes_j[:, :2])
    rb = torch.minimum(boxes_i[:, 2:], boxes_j[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = lambda b: (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    union = area(boxes_i) + area(boxes_j) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def kappa_from_boxes(boxes_i: torch.Tensor, boxes_j: torch.Tensor) -> torch.Tensor:
    """kappa = 1 - IoU(B_i, B_j)  (Eq. 9): 0 for identical boxes, 1 for disjoint ones."""
    return 1.0 - box_iou_pairs(boxes_i, boxes_j)


def kappa_from_images(x_i: torch.Tensor, x_j: torch.Tensor, metric: str) -> torch.Tensor:
    """kappa per pair from an image-similarity metric (Table 14); images float (N, C, H, W) in [0, 1].
    See the module docstring for each map onto [0, 1]."""
    x_i, x_j = x_i.float().clamp(0, 1), x_j.float().clamp(0, 1)
    if metric == "psnr":
        from torchmetrics.functional.image import peak_signal_noise_ratio
        psnr = peak_signal_noise_ratio(x_i, x_j, data_range=1.0, reduction="none", dim=(1, 2, 3))
        return torch.pow(10.0, -psnr / 20.0).clamp(0, 1)
    if metric == "ssim":
        from torchmetrics.functional.image import structural_similarity_index_measure
        ssim = structural_similarity_index_measure(x_i, x_j, data_range=1.0, reduction="none")
        return ((1.0 - ssim) / 2.0).clamp(0, 1)
    if metric == "fsim":
        import piq
        fsim = piq.fsim(x_i, x_j, data_range=1.0, reduction="none", chromatic=x_i.shape[1] == 3)
        return (1.0 - fsim.clamp(0, 1)).clamp(0, 1)
    raise ValueError(f"metric must be one of {KAPPA_SOURCES[1:]} (IoU uses kappa_from_boxes), got {metric!r}")


def sample_lambda(alpha: float) -> float:
    """lambda ~ Beta(alpha, alpha) (Eq. 6), drawn from torch's global generator (a seeded run repeats exactly);
    alpha <= 0 means no mixing (lambda = 1)."""
    if alpha <= 0:
        return 1.0
    return float(torch.distributions.Beta(float(alpha), float(alpha)).sample())


@dataclass
class MixBatch:
    """A mixed batch: virtual inputs x~, the partner permutation j = perm[i], and the mixing weight of x_i."""
    x: torch.Tensor
    perm: torch.Tensor
    lam: float


def mixup_batch(x: torch.Tensor, lam: float, perm: torch.Tensor | None = None) -> MixBatch:
    """x~ = lambda x + (1 - lambda) x[perm]  (Eq. 6); perm defaults to a random permutation of the batch."""
    perm = torch.randperm(len(x), device=x.device) if perm is None else perm.to(x.device)
    return MixBatch(lam * x + (1.0 - lam) * x[perm], perm, float(lam))


def cutmix_batch(x: torch.Tensor, lam: float, perm: torch.Tensor | None = None) -> MixBatch:
    """CutMix (Yun et al. 2019): a random rectangle of area (1 - lambda) from x[perm] pasted into x; lambda is then
    corrected to the exact kept area (box clipped at the border), as in the reference implementation."""
    perm = torch.randperm(len(x), device=x.device) if perm is None else perm.to(x.device)
    h, w = x.shape[-2:]
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, w)
    mixed = x.clone()
    mixed[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return MixBatch(mixed, perm, float(lam))


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample -y~ . log p^ (the summand of Eq. 7); target (N, K) rows sum to 1."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1)


def _weights(kappa: torch.Tensor, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    one = torch.ones_like(kappa)
    return {"L1": (1 - kappa, one), "L2": (one, 1 - kappa), "L3": (kappa, one), "L4": (one, kappa)}[variant]


def facemix_loss(logits_virtual: torch.Tensor, logits_real: torch.Tensor, y: torch.Tensor, perm: torch.Tensor,
                 lam: float, kappa: torch.Tensor, variant: str = "L4", num_classes: int | None = None,
                 return_parts: bool = False):
    """FaceMix loss over a batch (Eq. 7, 10; Table 15 variants).

    logits_virtual: the model on x~ = lam x + (1 - lam) x[perm]; logits_real: the model on the real batch x;
    y: labels of x; kappa (N,): of each pair (x_n, x_perm[n]). For pair n:
      L_v,n = -y~_n . log p^(x~_n),   L_i,n = CE(x_n, y_n),   L_j,n = CE(x_perm[n], y_perm[n])
    and L = mean_n [a(kappa_n) L_v,n + b(kappa_n)(L_i,n + L_j,n)] with (a, b) = (1, kappa) for L4 (Eq. 10),
    (1 - kappa, 1) for L1, (1, 1 - kappa) for L2, (kappa, 1) for L3.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    k = num_classes or logits_virtual.shape[1]
    onehot = F.one_hot(y, k).float()
    y_tilde = lam * onehot + (1.0 - lam) * onehot[perm]                                   # Eq. 6
    l_v = soft_cross_entropy(logits_virtual, y_tilde)                                     # Eq. 7 (per sample)
    ce = F.cross_entropy(logits_real.float(), y, reduction="none")
    l_i, l_j = ce, ce[perm]
    a, b = _weights(kappa.to(l_v.dtype), variant)
    loss = (a * l_v + b * (l_i + l_j)).mean()
    if return_parts:
        return loss, {"L_v": l_v.mean().detach(), "L_i": l_i.mean().detach(), "L_j": l_j.mean().detach(),
                      "kappa": kappa.float().mean().detach()}
    return loss
