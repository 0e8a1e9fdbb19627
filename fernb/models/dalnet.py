"""DAL-Net (Xu et al., "Weakly Supervised FER via Transferred DAL-CNN and Active Incremental Learning", Sec. 3.1).

Table 1 of the paper, on a 144 x 144 grey input:

    Conv1 96, 5x5 | Conv2 192, 3x3 | Conv3 384, 3x3 | Conv4 384, 3x3 | Conv5 256, 3x3 | IP1 512 | IP2 7 | Softmax-MSE

Every convolution is followed by a Max-Feature-Map (MFM) layer (Fig. 2; the LightCNN of Wu et al., the paper's
ref. [35]): the conv's output maps are split into two halves and the element-wise maximum is kept, so a conv with
96 output maps hands 48 to the next layer. Between IP1 and IP2 sits the *double activation layer* (DAL, Sec. 3.1.1,
Fig. 3): IP1's 512 outputs are split into two halves X1, X2, Maxout keeps Y = max(X1, X2) (Eq. 1), then a ReLU
keeps max(0, Y) (Eq. 2), and "the output of the ReLU layer is connected to IP2".

Choices the paper leaves open, and what is done here (also printed by `describe`):

* **Table 1's numbers are the conv output maps, before MFM halves them** ("the first convolution layer's kernel is
  5, and output 96 feature maps ... Then, a MFM layer was used to process these feature maps"), as in LightCNN.
* **Where the DAL sits.** The text says both that the "Last Conv" maps are split in two groups and that the ReLU's
  output feeds IP2. Only the second is consistent with IP1 = 512 and IP2 = 7, so the DAL acts on IP1's outputs
  (512 -> Maxout -> 256 -> ReLU -> IP2), which is LightCNN's MFM fully connected layer plus a ReLU.
* **Pooling.** 2x2 max pooling after Conv1, Conv2, Conv3 and Conv5 (LightCNN-9's positions; Fig. 2 shows Pool
  layers without saying where): 144 -> 72 -> 36 -> 18 -> 9, so IP1 sees 128 x 9 x 9 numbers. The last pool is
  adaptive to an `img_size / 16` grid, which is the same 2x2 pool at `img_size` and lets the network accept other
  input sizes (a reduced-size CPU profile builds the network for its own size).
* **No BatchNorm** (LightCNN and the paper have none); `batch_norm=True` adds it after each conv for experiments,
  and the freeze helper of `fernb.methods.transfer` keeps a frozen layer's statistics frozen too.
* `activation` = "dal" (the paper), "relu" (IP1 -> ReLU -> IP2, the "without DAL" ablation of Table 9) or "maxout"
  (IP1 -> Maxout -> IP2, LightCNN's own head): the two single activations are the controls that attribute a DAL
  gain to the pair rather than to either half.
* `width` scales every conv width and IP1 (1.0 = Table 1) for CPU profiles.

The model follows fernb's convention (`fernb.models.features_and_logits`): forward_features -> conv maps,
forward_head(pre_logits=True) -> the DAL output (the embedding), get_classifier() -> IP2.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["max_feature_map", "double_activation", "MaxFeatureMap", "DoubleActivation", "ConvMFM", "DALNet",
           "TABLE1", "layer_table"]

# Table 1 of the paper: conv output maps and kernels, IP1 width; input 144 x 144 grey, IP2 = 7 classes.
TABLE1 = {"input": 144, "convs": ((96, 5), (192, 3), (384, 3), (384, 3), (256, 3)), "ip1": 512, "ip2": 7}
POOL_AFTER = (0, 1, 2, 4)  # 2x2 max pooling after Conv1, Conv2, Conv3, Conv5 (LightCNN-9's positions)


def max_feature_map(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Max-Feature-Map / Maxout over two halves (Eq. 1): split `x` along `dim` into X1, X2 and keep max(X1, X2).

    (B, 2C, ...) -> (B, C, ...). An odd size along `dim` is an error (the halves must pair up)."""
    n = x.shape[dim]
    if n % 2:
        raise ValueError(f"Max-Feature-Map needs an even number of channels along dim {dim}, got {n}")
    if x.dim() == 4 and dim in (1, -3) and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous():
        # channels_last: the halves are contiguous runs of the innermost dim, so the max reads memory in order and
        # the result is channels_last again (measured ~2x faster forward + backward than split + torch.maximum)
        return x.permute(0, 2, 3, 1).unflatten(3, (2, n // 2)).max(3).values.permute(0, 3, 1, 2)
    return x.unflatten(dim, (2, n // 2)).max(dim if dim >= 0 else dim - 1).values


def double_activation(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The double activation layer (DAL, Eq. 1-2): Maxout over two halves, then ReLU: max(0, max(X1, X2))."""
    return F.relu(max_feature_map(x, dim))


class MaxFeatureMap(nn.Module):
    """`max_feature_map` as a module (channels dim 1): the MFM layer that follows every conv of DAL-Net."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_feature_map(x, 1)


class DoubleActivation(nn.Module):
    """`double_activation` as a module: Maxout over two halves of the features, then ReLU (Fig. 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return double_activation(x, 1)


class ConvMFM(nn.Module):
    """One conv layer of Table 1: Conv(k x k, `out_maps`, 'same' padding) [-> BatchNorm] -> MFM [-> max pool].

    `out_maps` is the conv's output count (Table 1's number); MFM hands out_maps / 2 maps on."""

    def __init__(self, in_maps: int, out_maps: int, kernel: int, pool: nn.Module | None = None,
                 batch_norm: bool = False):
        super().__init__()
        if out_maps % 2:
            raise ValueError(f"a conv followed by MFM needs an even number of output maps, got {out_maps}")
        self.conv = nn.Conv2d(in_maps, out_maps, kernel, padding=kernel // 2, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(out_maps) if batch_norm else nn.Identity()
        self.mfm = MaxFeatureMap()
        self.pool = pool if pool is not None else nn.Identity()
        self.out_maps = out_maps // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.mfm(self.bn(self.conv(x))))


class DALNet(nn.Module):
    """DAL-Net of Table 1 (see the module docstring for the layout and the choices made).

    Args:
        num_classes: IP2's width (7 expressions; the number of identities for face-recognition pre-training).
        in_chans: 1 (grey, the paper) or 3.
        img_size: the input side the network is built for (144 in the paper); sets the last pool's grid.
        width: multiplier of every conv width and of IP1 (rounded to even numbers; 1.0 = Table 1).
        activation: "dal" (Maxout + ReLU), "relu" or "maxout" between IP1 and IP2.
        batch_norm: BatchNorm after each conv (not in the paper).
        drop_rate: dropout on the embedding before IP2 (LightCNN uses 0.5 there; 0 by default).
    """

    def __init__(self, num_classes: int = 7, in_chans: int = 1, img_size: int = 144, width: float = 1.0,
                 activation: str = "dal", batch_norm: bool = False, drop_rate: float = 0.0,
                 convs=TABLE1["convs"], ip1: int = TABLE1["ip1"]):
        super().__init__()
        if activation not in ("dal", "relu", "maxout"):
            raise ValueError(f"activation must be 'dal', 'relu' or 'maxout', got {activation!r}")
        if img_size < 16:
            raise ValueError(f"DAL-Net pools four times by 2: img_size must be >= 16, got {img_size}")
        even = lambda v: max(2, 2 * int(round(v * width / 2)))
        self.img_size, self.in_chans, self.width = img_size, in_chans, width
        self.activation, self.batch_norm, self.drop_rate = activation, batch_norm, drop_rate
        self.grid = math.ceil(img_size / 16)
        blocks, maps = [], in_chans
        for i, (out, kernel) in enumerate(convs):
            if i == len(convs) - 1:
                pool = nn.AdaptiveMaxPool2d(self.grid)
            else:
                pool = nn.MaxPool2d(2, 2, ceil_mode=True) if i in POOL_AFTER else None
            blocks.append(ConvMFM(maps, even(out), kernel, pool, batch_norm))
            maps = blocks[-1].out_maps
        self.blocks = nn.ModuleList(blocks)
        self.ip1 = nn.Linear(maps * self.grid * self.grid, even(ip1))
        self.act = {"dal": DoubleActivation, "maxout": MaxFeatureMap, "relu": nn.ReLU}[activation]()
        self.num_features = self.ip1.out_features // (1 if activation == "relu" else 2)
        self.ip2 = nn.Linear(self.num_features, num_classes)
        self.num_classes = num_classes
        self.frozen_convs = 0  # set by fernb.methods.transfer.freeze_bottom; frozen blocks stay in eval mode

    # ---- fernb's model convention -------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.act(self.ip1(torch.flatten(x, 1)))
        x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.ip2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.ip2

    def reset_classifier(self, num_classes: int) -> None:
        """A new, randomly initialized IP2 with `num_classes` outputs (transfer to a new task)."""
        self.ip2 = nn.Linear(self.num_features, num_classes).to(self.ip1.weight.device)
        self.num_classes = num_classes

    def conv_layers(self) -> list[nn.Module]:
        """The five conv layers bottom to top (each with its BatchNorm and MFM): what `freeze_bottom` counts."""
        return list(self.blocks)

    def gradcam_layers(self) -> list[nn.Module]:
        """Grad-CAM target: the last conv layer's MFM output (before its pool, so the map keeps its resolution)."""
        return [self.blocks[-1].mfm]

    def train(self, mode: bool = True) -> "DALNet":
        """As nn.Module.train, except that the bottom `frozen_convs` conv layers stay in eval mode: a frozen layer
        keeps its BatchNorm running statistics too, not only its weights."""
        super().train(mode)
        for block in self.blocks[: self.frozen_convs]:
            block.eval()
        return self


def layer_table(model: DALNet, paper: dict = TABLE1):
    """Per-layer parameter counts and output shapes of `model`, beside Table 1's settings, as a DataFrame."""
    import pandas as pd

    rows = []
    x = torch.zeros(1, model.in_chans, model.img_size, model.img_size)
    training = model.training
    model.eval()
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            x = block(x)
            maps, kernel = paper["convs"][i]
            rows.append({"layer": f"Conv{i + 1} + MFM" + (" + pool" if not isinstance(block.pool, nn.Identity)
                                                            else ""),
                         "Table 1": f"{maps}, {kernel}x{kernel}", "here": f"{block.conv.out_channels}, "
                         f"{kernel}x{kernel} -> MFM {block.out_maps}",
                         "output": "x".join(str(s) for s in x.shape[1:]),
                         "parameters": sum(p.numel() for p in block.parameters())})
    rows.append({"layer": "IP1 + " + {"dal": "DAL (Maxout + ReLU)", "relu": "ReLU", "maxout": "Maxout"}[
        model.activation], "Table 1": str(paper["ip1"]), "here": f"{model.ip1.out_features} -> {model.num_features}",
                 "output": str(model.num_features), "parameters": sum(p.numel() for p in model.ip1.parameters())})
    rows.append({"layer": "IP2", "Table 1": str(paper["ip2"]), "here": str(model.ip2.out_features),
                 "output": str(model.ip2.out_features), "parameters": sum(p.numel() for p in model.ip2.parameters())})
    model.train(training)
    frame = pd.DataFrame(rows)
    total = {"layer": "total", "Table 1": "", "here": "", "output": "", "parameters": int(frame["parameters"].sum())}
    return pd.concat([frame, pd.DataFrame([total])], ignore_index=True)
