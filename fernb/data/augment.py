"""Batched, device-resident augmentation (no per-sample PIL in the training loop).

`to_input` turns a uint8 batch into the network's input: float in [0, 1], then normalized to [-1, 1].
`weak` is a per-sample random resized crop + horizontal flip done as one `affine_grid`/`grid_sample` call on the
whole batch: torchvision's v2 transforms draw *one* set of parameters per call, so applied to a batch they would
crop every image the same way. `strong` is `weak` followed by torchvision.transforms.v2.RandAugment, applied per
group of `group_size` images (each group draws its own ops) so a batch still sees many different ops at a small
fraction of the per-sample cost.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F
from torchvision.transforms import v2

MEAN, STD = 0.5, 0.5


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> normalized float input; float input in [0, 1] is normalized only."""
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images
    return (x - MEAN) / STD


def from_input(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_input` for display: normalized float -> [0, 1]."""
    return (x * STD + MEAN).clamp(0, 1)


def weak(x: torch.Tensor, scale=(0.75, 1.0), ratio=(0.9, 1.1), flip: float = 0.5,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample random resized crop (area fraction `scale`, aspect `ratio`) + horizontal flip, batched.

    x: float (B, C, H, W) in [0, 1]. The crop is expressed as an affine map of the output grid onto the input, so
    crop, resize and flip cost one interpolation for the whole batch.
    """
    b = x.shape[0]
    dev = x.device
    # Drawn on the generator's device (the data's when there is none): a CPU draw copied to a GPU is a blocking
    # copy that would synchronize the host with the GPU five times per batch. On the CPU nothing changes.
    draw_on = generator.device if generator is not None else dev
    rand = lambda *s: torch.rand(*s, generator=generator, device=draw_on).to(dev)
    area = scale[0] + (scale[1] - scale[0]) * rand(b)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * rand(b)
    aspect = torch.exp(log_r)
    sx = torch.sqrt(area * aspect).clamp(max=1.0)      # half-extent of the crop in normalized coordinates
    sy = torch.sqrt(area / aspect).clamp(max=1.0)
    tx = (1 - sx) * (2 * rand(b) - 1)                  # keep the crop inside the image
    ty = (1 - sy) * (2 * rand(b) - 1)
    sign = torch.where(rand(b) < flip, -1.0, 1.0)
    # The map is axis-aligned (scale, shift, flip), so the sampling grid is an outer sum of two per-image vectors:
    # ~7x cheaper on CPU than F.affine_grid's batched matmul, and identical to it.
    h, w = x.shape[-2:]
    base_x = (torch.arange(w, device=dev, dtype=x.dtype) * 2 + 1) / w - 1
    base_y = (torch.arange(h, device=dev, dtype=x.dtype) * 2 + 1) / h - 1
    gx = (sx * sign)[:, None] * base_x[None] + tx[:, None]           # (B, W)
    gy = sy[:, None] * base_y[None] + ty[:, None]                     # (B, H)
    grid = torch.stack([gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class Strong:
    """weak + RandAugment(num_ops, magnitude), one draw of ops per group of `group_size` images."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, group_size: int = 16):
        self.randaugment = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
        self.group_size = group_size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = weak(x)
        x8 = (x * 255).round_().to(torch.uint8)  # RandAugment's colour ops are defined on uint8 ranges
        out = torch.cat([self.randaugment(chunk) for chunk in x8.split(self.group_size)])
        return out.float().div_(255.0)


_LUMA: dict = {}


def _luma_weights(device: torch.device) -> torch.Tensor:
    """ITU-R 601 luma weights (1, 3, 1, 1) on `device`, built once per device: a `torch.tensor(..., device=cuda)`
    at every step is a host-to-device copy from pageable memory, which makes the host wait for the GPU."""
    if device not in _LUMA:
        _LUMA[device] = torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)
    return _LUMA[device]


def contrastive(x: torch.Tensor, strength: float = 0.5, gray_prob: float = 0.2) -> torch.Tensor:
    """SimCLR's view augmentation (Chen et al. 2020, Sec. 3 / App. A), batched with per-sample parameters:
    random resized crop (area 0.35-1) + flip, colour jitter (brightness, contrast, saturation by up to
    `0.8 * strength`, applied in that fixed order), random greyscale with probability `gray_prob`.
    About 4x cheaper than `strong` on CPU because every step is one tensor op over the batch."""
    x = weak(x, scale=(0.35, 1.0), ratio=(0.8, 1.25))
    b = x.shape[0]
    jitter = lambda: 1 + (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * 0.8 * strength
    x = x * jitter()                                                        # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * jitter() + mean                                        # contrast
    if x.shape[1] == 3:
        gray = (x * _luma_weights(x.device)).sum(1, keepdim=True)
        x = (x - gray) * jitter() + gray                                    # saturation
        to_gray = torch.rand(b, 1, 1, 1, device=x.device) < gray_prob
        x = torch.where(to_gray, gray.expand_as(x), x)
    return x.clamp_(0, 1)


def strong(x: torch.Tensor) -> torch.Tensor:
    return _STRONG(x)


_STRONG = Strong()


def get(name):
    """Augmentation by name: None/'none', 'weak', 'strong', 'contrastive', or a callable passed through."""
    if name is None or name == "none":
        return None
    if callable(name):
        return name
    return {"weak": weak, "strong": strong, "contrastive": contrastive}[name]
