"""Backbones over timm, and the one convention every method relies on to get both the embedding and the logits.

Convention (`features_and_logits`): for any model made by `create`,

    embedding = model.forward_head(model.forward_features(x), pre_logits=True)   # (B, D), pooled, before the classifier
    logits    = model.get_classifier()(embedding)                                 # (B, K)

This is timm's own split for CNNs and ViTs alike, so methods that need the penultimate features (SupCon projection,
DRM attention weights, CoreSet/BADGE embeddings) never special-case an architecture. `model.num_features` is D.

Nothing is downloaded: `pretrained` is always False, and weights come only from a local `checkpoint` loaded with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from .dalnet import DALNet
from .arm import ARM, ARMNet
from .heads import AttentionWeight, ProjectionHead

__all__ = ["create", "features_and_logits", "available", "load_checkpoint", "count_parameters",
           "ProjectionHead", "AttentionWeight", "DALNet", "ARM", "ARMNet"]

# name -> (timm architecture, extra kwargs). The *_mini variants are narrow/shallow versions for CPU profiles.
_REGISTRY = {
    "resnet18": ("resnet18", {}),
    "resnet50": ("resnet50", {}),
    "resnet_mini": ("resnet18", {"layers": (1, 1, 1, 1), "channels": (32, 64, 128, 256)}),
    "vit_tiny": ("vit_tiny_patch16_224", {}),
    "vit_small": ("vit_small_patch16_224", {}),
    "vit_base": ("vit_base_patch16_224", {}),
    "vit_mini": ("vit_tiny_patch16_224", {"patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4}),
    # DAL-Net (Xu et al., Table 1; fernb's own module, not timm): the paper's widths, and a quarter-width one for CPU
    "dalnet": ("dalnet", {}),
    "dalnet_mini": ("dalnet", {"width": 0.25}),
    # ResNet + ARM in place of pooling (Shi et al. 2021; Hu et al.'s backbone; fernb.models.arm). pooling="avg" gives
    # the same trunk with plain pooling. The mini one keeps a 4 x 4 map at 64 px (output stride 16).
    "resnet18_arm": ("arm", {"trunk": "resnet18"}),
    "resnet_mini_arm": ("arm", {"trunk": "resnet_mini", "output_stride": 16}),
}


def available() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, num_classes: int, in_chans: int = 3, checkpoint: str | Path | None = None,
           img_size: int | None = None, drop_rate: float = 0.0, **kwargs) -> nn.Module:
    """Build backbone `name` with a `num_classes`-way classifier, randomly initialized or from a local checkpoint.

    ViTs take `img_size` (their position embeddings depend on it; default 224 for the full-size ones, 64 for
    vit_mini). `checkpoint` may be a bare state_dict or an engine checkpoint (a dict with a "model" entry).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    arch, extra = _REGISTRY[name]
    extra = dict(extra)
    if arch == "arm":  # img_size: the input side the ARM is sized for (default 224 for resnet18_arm, 64 for mini)
        model = _arm_model(name, num_classes, in_chans, img_size, drop_rate, {**extra, **kwargs})
    elif arch == "dalnet":  # img_size: the input side it is built for (Table 1: 144); see fernb.models.dalnet
        model = DALNet(num_classes, in_chans, img_size=img_size or 144, drop_rate=drop_rate, **{**extra, **kwargs})
    elif arch.startswith("resnet") and "layers" in extra:
        from timm.models.resnet import BasicBlock, ResNet
        model = ResNet(BasicBlock, layers=extra.pop("layers"), channels=extra.pop("channels"),
                       num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, **kwargs)
        model.default_cfg = {"architecture": name}
    else:
        if arch.startswith("vit"):
            extra["img_size"] = img_size or (64 if name == "vit_mini" else 224)
        extra.update(kwargs)
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                  drop_rate=drop_rate, **extra)
    model.fernb_name = name
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def _arm_model(name: str, num_classes: int, in_chans: int, img_size: int | None, drop_rate: float,
               kwargs: dict) -> ARMNet:
    """A ResNet trunk (no pooling, no classifier) with ARM or plain pooling; see `fernb.models.arm.ARMNet`."""
    trunk_name = kwargs.pop("trunk")
    pooling = kwargs.pop("pooling", "arm")
    affinity_eval = kwargs.pop("affinity_eval", "running")
    img_size = img_size or (224 if trunk_name == "resnet18" else 64)
    trunk = create(trunk_name, num_classes=0, in_chans=in_chans, global_pool="", **kwargs)
    return ARMNet(trunk, num_classes, in_chans, img_size, pooling=pooling, drop_rate=drop_rate,
                  affinity_eval=affinity_eval)


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load a local checkpoint into `model` (weights only; never a pickle of arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (fernb never downloads weights; train one first)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model.load_state_dict(state, strict=strict)
    return model


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding (B, D), logits (B, K)) in one forward pass; see the module docstring for the convention."""
    embedding = model.forward_head(model.forward_features(x), pre_logits=True)
    return embedding, model.get_classifier()(embedding)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
