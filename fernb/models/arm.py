"""The Amending Representation Module (ARM) of Shi, Zhu and Liang, "Learning to Amend Facial Expression
Representation via De-albino and Affinity" (arXiv 2103.10189, 2021), used by Hu et al. (SCL + CUEM) as the pooling
layer of their ResNet-18. Written from the paper and the formulas of the authors' public code (whose module is
CUDA-only); this one runs on any device.

Padding erosion. Every 3x3 convolution with zero padding mixes zeros into the border of its output; after the
dozens of padded convolutions of a ResNet, the border cells of the last feature map (for a 224 px face: 24 of the
49 cells of the 7x7 map) are computed partly from padding. Shi et al. call these eroded cells *albino* features.
Global average pooling weights every cell equally, so the eroded border dilutes the representation. ARM replaces
the pooling layer in three steps:

1. **Feature arrangement**: the (C, h, w) map is rearranged by a pixel shuffle with factor r into
   G = C / r^2 maps of size (h r, w r): each cell of the original map becomes an r x r tile of its channels.
   (Authors: ResNet-18's 512 x 7 x 7 -> 2 x 112 x 112, r = 16.)
2. **De-albino kernel**: one *single-channel* convolution kernel, shared by the G maps, of size k = 2r and stride
   s = r / 2, no padding and no bias (authors: k = 32, s = 8 -> 2 x 11 x 11). It is a learned weighting of 2 x 2
   neighbouring cells and their channels, so it can give eroded border content a low weight, which plain
   averaging cannot. A BatchNorm over the G maps follows.
3. **Affinity**: the G maps are averaged, and the mean of the normalized maps over the *mini-batch* (the
   "affinity" shared by all expressions) is added with a learnable weight alpha (initialized to 1):

       x_i = mean_g BN(D * A(F_i))_g  +  alpha * mean_{j in batch} mean_g BN(D * A(F_j))_g

   with A the arrangement, D the de-albino kernel, F_i the feature map of image i. The output, flattened, is the
   embedding (authors: 121 values) that the classifier reads.

Single-image inference (our decision; the paper is silent). Step 3 makes a prediction depend on the other images
of the batch: the authors' test script averages over each test batch of 256, and with one image the affinity is
the image's own map, i.e. x = (1 + alpha) * x_i. A deployed model sees one face at a time, so we treat the
affinity like a BatchNorm statistic: training uses the batch mean (as the authors do) and keeps a running average
of it (`running_affinity`, momentum 0.1); evaluation uses that running average (`affinity_eval="running"`, the
default), which makes a prediction independent of the batch: batch 1 and batch 256 give the same logits.
`affinity_eval="batch"` reproduces the authors' batch-dependent evaluation, so notebook 03 can measure the
difference.

Sizes on other inputs. The authors' k = 2r, s = r / 2 are kept as ratios of the tile size r, so a map of side h
gives an ARM output of side 2h - 3 (h = 7 -> 11, h = 4 -> 5, h = 3 -> 3). r is the largest power of two with
C / r^2 >= 2 maps (the paper's "two channels": 512 -> r = 16, 256 -> r = 8 and 4 maps).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ARM", "ARMNet", "arrangement_factor", "arm_output_side"]


def arrangement_factor(channels: int) -> int:
    """The pixel-shuffle factor r: the largest power of two with channels / r^2 >= 2 maps (512 -> 16, 256 -> 8)."""
    r = 1
    while channels % ((2 * r) ** 2) == 0 and channels // ((2 * r) ** 2) >= 2:
        r *= 2
    if r < 2:
        raise ValueError(f"ARM needs a feature map with at least 8 channels divisible by 4, got {channels}")
    return r


def arm_output_side(side: int, r: int) -> int:
    """Side of the ARM output for a feature map of side `side` >= 3: (side r - 2r) / (r / 2) + 1 = 2 side - 3."""
    kernel, stride = 2 * r, max(1, r // 2)
    if side < 3:
        raise ValueError(f"ARM needs a feature map of side >= 3 (got {side}): the de-albino kernel spans 2 x 2 "
                         "cells, so a 2 x 2 map leaves a single output value; use a larger input or a backbone "
                         "with a smaller output stride (output_stride=16)")
    return (side * r - kernel) // stride + 1


class ARM(nn.Module):
    """Amending Representation Module in place of global average pooling: (B, C, h, w) -> (B, (2h-3)(2w-3)).

    Args:
        channels: C of the backbone's last feature map.
        side: h (= w) of that map for the input size the model is built for.
        upscale: the pixel-shuffle factor r (default `arrangement_factor(C)`).
        affinity_eval: "running" (default: the running mean of the training batches' affinity, batch-independent)
            or "batch" (the authors' code: the mean over the evaluation batch).
        affinity_momentum: update rate of `running_affinity`, as BatchNorm's momentum.
    """

    def __init__(self, channels: int, side: int, upscale: int | None = None, affinity_eval: str = "running",
                 affinity_momentum: float = 0.1):
        super().__init__()
        if affinity_eval not in ("running", "batch"):
            raise ValueError(f"affinity_eval must be 'running' or 'batch', got {affinity_eval!r}")
        self.r = upscale or arrangement_factor(channels)
        if channels % (self.r ** 2):
            raise ValueError(f"{channels} channels do not split into r^2 = {self.r ** 2} tiles")
        self.channels, self.side = channels, side
        self.groups = channels // self.r ** 2                       # G maps after the arrangement
        self.kernel, self.stride = 2 * self.r, max(1, self.r // 2)
        self.out_side = arm_output_side(side, self.r)
        self.out_features = self.out_side ** 2
        self.arrangement = nn.PixelShuffle(self.r)
        # One single-channel kernel shared by the G maps: the "de-albino kernel" (no padding: that is the point).
        self.de_albino = nn.Conv2d(1, 1, kernel_size=self.kernel, stride=self.stride, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(self.groups)
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.affinity_eval = affinity_eval
        self.affinity_momentum = affinity_momentum
        self.register_buffer("running_affinity", torch.zeros(self.out_side, self.out_side))

    def amend(self, fmap: torch.Tensor) -> torch.Tensor:
        """Steps 1-2 and the per-image channel mean: (B, C, h, w) -> (B, h', w'), before the affinity."""
        b = fmap.shape[0]
        x = self.arrangement(fmap)                                   # (B, G, h r, w r)
        x = x.reshape(b * self.groups, 1, *x.shape[-2:])             # each map through the same single-channel kernel
        x = self.de_albino(x).reshape(b, self.groups, self.out_side, -1)
        return self.bn(x).mean(dim=1)                                # (B, h', w')

    def affinity(self, amended: torch.Tensor) -> torch.Tensor:
        """The shared term mean_{j in batch} of the amended maps, or its running average (see the module doc)."""
        if self.training:
            batch_mean = amended.mean(dim=0)
            with torch.no_grad():
                self.running_affinity.lerp_(batch_mean.detach().float(), self.affinity_momentum)
            return batch_mean
        if self.affinity_eval == "batch":
            return amended.mean(dim=0)
        return self.running_affinity.to(amended.dtype)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        if fmap.shape[-1] != self.side or fmap.shape[-2] != self.side:
            raise ValueError(f"ARM was built for a {self.side}x{self.side} feature map, got "
                             f"{tuple(fmap.shape[-2:])}: build the model with the img_size you feed it")
        amended = self.amend(fmap)
        return (amended + self.alpha * self.affinity(amended)).flatten(1)


class ARMNet(nn.Module):
    """A timm ResNet trunk with ARM (or, as the control, global average pooling) and a linear classifier.

    It keeps timm's split that `fernb.models.features_and_logits` relies on: `forward_features(x)` is the trunk's
    last feature map (B, C, h, w); `forward_head(fmap, pre_logits=True)` the pooled embedding (B, num_features);
    `get_classifier()` the linear layer. `pooling="avg"` gives the same trunk with plain pooling (Table II's
    "plain pooling vs ARM" control). `gap(fmap)` is the global-average-pooled trunk feature r (512-d for
    ResNet-18), which Hu et al.'s contrastive branches read whatever the pooling of the top branch.
    """

    def __init__(self, trunk: nn.Module, num_classes: int, in_chans: int, img_size: int, pooling: str = "arm",
                 drop_rate: float = 0.0, affinity_eval: str = "running"):
        super().__init__()
        if pooling not in ("arm", "avg"):
            raise ValueError(f"pooling must be 'arm' or 'avg', got {pooling!r}")
        self.trunk = trunk
        self.pooling, self.img_size = pooling, img_size
        self.trunk_channels = trunk.num_features
        was_training = trunk.training
        trunk.eval()                                 # a dry run for the map side, without touching BN statistics
        with torch.no_grad():
            side = trunk.forward_features(torch.zeros(1, in_chans, img_size, img_size)).shape[-1]
        trunk.train(was_training)
        self.feature_side = side
        if pooling == "arm":
            self.pool = ARM(self.trunk_channels, side, affinity_eval=affinity_eval)
            self.num_features = self.pool.out_features
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
            self.num_features = self.trunk_channels
        self.drop_rate = drop_rate
        self.fc = nn.Linear(self.num_features, num_classes)

    @property
    def layer4(self):
        """The trunk's last stage (Grad-CAM's default target layer, as for a plain ResNet)."""
        return self.trunk.layer4

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_features(x)

    @staticmethod
    def gap(fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean(dim=(2, 3))

    def forward_head(self, fmap: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        embedding = self.pool(fmap)
        if self.drop_rate > 0:
            embedding = F.dropout(embedding, p=self.drop_rate, training=self.training)
        return embedding if pre_logits else self.fc(embedding)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def set_affinity_eval(self, mode: str) -> None:
        """"running" (batch-independent) or "batch" (the authors' evaluation); no-op with plain pooling."""
        if isinstance(self.pool, ARM):
            if mode not in ("running", "batch"):
                raise ValueError(f"affinity_eval must be 'running' or 'batch', got {mode!r}")
            self.pool.affinity_eval = mode
