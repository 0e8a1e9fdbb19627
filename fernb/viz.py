"""Figures: row-normalized confusion matrices, training curves, labeled image grids, Grad-CAM overlays.

Every `plot_*` returns the matplotlib Figure; `save(fig, notebook, name)` writes figures/<notebook>/<name>.png.
Grad-CAM comes from the grad-cam package (pytorch_grad_cam); `gradcam_target_layers` and `vit_reshape_transform`
adapt it to timm CNNs and ViTs.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from .data import augment as aug
from .data.labels import SHORT
from .paths import figure_dir


def save(fig, notebook: str, name: str, dpi: int = 120):
    path = figure_dir(notebook) / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _short(classes):
    return [SHORT.get(c, c[:6]) for c in classes]


def plot_confusion(confusion, classes, title: str = "", ax=None, normalize: bool = True):
    """Row-normalized confusion matrix (rows: true class, columns: predicted), seaborn heatmap."""
    cm = np.asarray(confusion, dtype=float)
    if normalize:
        cm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
    sns.heatmap(cm, annot=True, fmt=".2f" if normalize else "g", cmap="Blues", vmin=0, vmax=1 if normalize else None,
                xticklabels=_short(classes), yticklabels=_short(classes), cbar=False, ax=ax, annot_kws={"size": 7})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig or ax.figure


def plot_confusions(confusions: dict, classes, suptitle: str = ""):
    """Several confusion matrices side by side ({title: matrix})."""
    fig, axes = plt.subplots(1, len(confusions), figsize=(4.2 * len(confusions), 3.8))
    for ax, (title, cm) in zip(np.atleast_1d(axes), confusions.items()):
        plot_confusion(cm, classes, title, ax=ax)
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_history(histories: dict, keys=("train_loss", "val_acc"), title: str = ""):
    """Training curves for one or more runs ({label: History or dict of lists})."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2))
    for ax, key in zip(np.atleast_1d(axes), keys):
        for label, h in histories.items():
            h = h.as_dict() if hasattr(h, "as_dict") else h
            ys = [y for y in h.get(key, []) if y is not None]
            if ys:
                ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _as_hwc(img: torch.Tensor) -> np.ndarray:
    img = img.detach().cpu()
    if img.dtype == torch.uint8:
        img = img.float() / 255
    img = img.clamp(0, 1).permute(1, 2, 0).numpy()
    return img[..., 0] if img.shape[2] == 1 else img


def plot_image_grid(images, labels=None, classes=None, clean_labels=None, boxes=None, ncols: int = 8,
                    titles=None, size: float = 1.3, suptitle: str = ""):
    """Images with their label; where `clean_labels` differ from the given label the title shows both, in red."""
    n = len(images)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * (size + 0.25)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(_as_hwc(images[i]), cmap="gray" if images[i].shape[0] == 1 else None, vmin=0, vmax=1)
        if boxes is not None:
            x0, y0, x1, y1 = [float(v) for v in boxes[i]]
            ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1))
        title, color = "", "black"
        if titles is not None:
            title = titles[i]
        elif labels is not None and classes is not None:
            y = int(labels[i])
            title = _short(classes)[y] if y >= 0 else "?"
            if clean_labels is not None and int(clean_labels[i]) != y:
                title = f"{title} (true {_short(classes)[int(clean_labels[i])]})"
                color = "red"
        ax.set_title(title, fontsize=7, color=color)
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def vit_reshape_transform(tokens: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """ViT tokens (B, prefix + h*w, D) -> (B, D, h, w) so Grad-CAM can treat them as a feature map."""
    x = tokens[:, num_prefix_tokens:]
    side = int(math.isqrt(x.shape[1]))
    return x.reshape(x.shape[0], side, side, x.shape[2]).permute(0, 3, 1, 2)


def gradcam_target_layers(model):
    """(target layers, reshape transform) for a timm ResNet or ViT."""
    if hasattr(model, "layer4"):
        return [model.layer4[-1]], None
    if hasattr(model, "blocks"):
        prefix = getattr(model, "num_prefix_tokens", 1)
        return [model.blocks[-1].norm1], (lambda t: vit_reshape_transform(t, prefix))
    raise ValueError(f"no Grad-CAM target layer known for {type(model).__name__}; pass target_layers")


def gradcam(model, images_uint8: torch.Tensor, targets=None, target_layers=None, reshape_transform=None):
    """Grad-CAM maps (N, H, W) in [0, 1] for uint8 images; `targets` = class per image (default: predicted)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if target_layers is None:
        target_layers, reshape_transform = gradcam_target_layers(model)
    model = model.eval()
    device = next(model.parameters()).device
    x = aug.to_input(images_uint8.to(device))
    cam_targets = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
    with GradCAM(model=model, target_layers=target_layers, reshape_transform=reshape_transform) as cam:
        return torch.from_numpy(cam(input_tensor=x, targets=cam_targets))


def plot_gradcam_grid(model, data, indices, classes=None, ncols: int = 8, suptitle: str = "", targets=None):
    """Grad-CAM overlays (jet, alpha 0.45) for rows `indices` of a FERDataset; titles: true -> predicted."""
    idx = torch.as_tensor(indices)
    images = data.images[idx]
    with torch.no_grad():
        device = next(model.parameters()).device
        pred = model.eval()(aug.to_input(images.to(device))).argmax(1).cpu()
    maps = gradcam(model, images, targets=targets)
    classes = classes or data.classes
    n = len(idx)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.4, nrows * 1.65), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(_as_hwc(images[i]), cmap="gray" if images.shape[1] == 1 else None)
        ax.imshow(maps[i].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        truth = int(data.labels[idx[i]])
        ok = int(pred[i]) == truth
        ax.set_title(f"{_short(classes)[truth]}→{_short(classes)[int(pred[i])]}", fontsize=7,
                     color="black" if ok else "red")
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_al_curves(curves, title: str = "", metric: str = "accuracy", ax=None, highlight=()):
    """Accuracy vs number of labeled samples, one line per method (mean over seeds, band = +-1 std).

    `curves` is `fernb.methods.fucle.curves_frame(...)`; methods in `highlight` are drawn thicker.
    """
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    for method, frame in curves.groupby("method", sort=False):
        stats = frame.groupby("n_labeled")[metric].agg(["mean", "std"]).reset_index()
        lw = 2.8 if method in highlight else 1.3
        line, = ax.plot(stats["n_labeled"], stats["mean"], marker="o", ms=3, lw=lw, label=method)
        if stats["std"].notna().any():
            ax.fill_between(stats["n_labeled"], stats["mean"] - stats["std"].fillna(0),
                            stats["mean"] + stats["std"].fillna(0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("labeled samples")
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title)
    return fig or ax.figure


# ---- SSFER (notebook 02): MAE patches and reconstructions, FaceMix pairs, attacked images ---------------------------
def plot_patch_grid(image: torch.Tensor, patch_size: int, mask: torch.Tensor | None = None, ax=None, title: str = ""):
    """One image (C, H, W) in [0, 1] with its p x p patch grid; patches where `mask` (L,) is 1 are greyed out."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(2.4, 2.4))
    img = _as_hwc(image)
    h, w = img.shape[:2]
    gh, gw = h // patch_size, w // patch_size
    if mask is not None:
        shade = np.asarray(mask, dtype=float).reshape(gh, gw).repeat(patch_size, 0).repeat(patch_size, 1)
        img = img.copy()
        if img.ndim == 3:
            shade = shade[..., None]
        img = img * (1 - 0.85 * shade) + 0.5 * 0.85 * shade
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    for k in range(1, gw):
        ax.axvline(k * patch_size - 0.5, color="white", lw=0.6)
    for k in range(1, gh):
        ax.axhline(k * patch_size - 0.5, color="white", lw=0.6)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    return fig or ax.figure


def plot_mae_reconstructions(originals: torch.Tensor, results: dict, suptitle: str = ""):
    """MAE at several mask ratios (SSFER Fig. 3): rows = images; per ratio, the masked input and the reconstruction.

    originals: (N, C, H, W) in [0, 1]; results: {ratio: (masked (N, C, H, W), reconstruction (N, C, H, W),
    per-image loss (N,))}, images in [0, 1]."""
    n = len(originals)
    cols = 1 + 2 * len(results)
    fig, axes = plt.subplots(n, cols, figsize=(cols * 1.25, n * 1.35), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(_as_hwc(originals[i]), cmap="gray" if originals.shape[1] == 1 else None)
        for k, (ratio, (masked, recon, loss)) in enumerate(results.items()):
            axes[i, 1 + 2 * k].imshow(_as_hwc(masked[i]), cmap="gray" if masked.shape[1] == 1 else None)
            axes[i, 2 + 2 * k].imshow(_as_hwc(recon[i]), cmap="gray" if recon.shape[1] == 1 else None)
            axes[i, 2 + 2 * k].set_xlabel(f"loss {float(loss[i]):.2f}", fontsize=7)
            if i == 0:
                axes[i, 1 + 2 * k].set_title(f"masked {ratio:.0%}", fontsize=8)
                axes[i, 2 + 2 * k].set_title("reconstruction", fontsize=8)
    axes[0, 0].set_title("original", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def plot_facemix_pairs(x_i: torch.Tensor, x_j: torch.Tensor, boxes_i, boxes_j, lam: float, kappa, titles=None,
                       suptitle: str = ""):
    """FaceMix on pairs (SSFER Fig. 5-6): each row shows x_i and x_j with their face boxes, the Mixup image
    lam x_i + (1 - lam) x_j with both boxes, and the pair's IoU and kappa = 1 - IoU (the weight of the real-image
    losses in Eq. 10). Images (N, C, H, W) in [0, 1]."""
    n = len(x_i)
    fig, axes = plt.subplots(n, 3, figsize=(5.4, 1.9 * n), squeeze=False)
    for r in range(n):
        mixed = lam * x_i[r] + (1 - lam) * x_j[r]
        for c, (img, boxes) in enumerate(((x_i[r], [(boxes_i[r], "lime")]), (x_j[r], [(boxes_j[r], "orange")]),
                                          (mixed, [(boxes_i[r], "lime"), (boxes_j[r], "orange")]))):
            ax = axes[r, c]
            ax.imshow(_as_hwc(img), cmap="gray" if img.shape[0] == 1 else None)
            for box, color in boxes:
                x0, y0, x1, y1 = [float(v) for v in box]
                ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=color, lw=1.2))
            ax.set_xticks([])
            ax.set_yticks([])
        k = float(kappa[r])
        axes[r, 2].set_title(f"IoU {1 - k:.2f}, κ = {k:.2f}", fontsize=8)
        axes[r, 0].set_title(titles[r] if titles is not None else "x_i", fontsize=8)
        axes[r, 1].set_title("x_j", fontsize=8)
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def plot_attack_examples(images: torch.Tensor, cams: torch.Tensor, focused: torch.Tensor, attacked: dict,
                         suptitle: str = ""):
    """SSFER Fig. 8-9: per image, the Grad-CAM overlay, the focused region (cam > threshold; the rest black), and
    the images attacked in that region at increasing eps ({eps: (N, C, H, W) in [0, 1]})."""
    n = len(images)
    cols = 3 + len(attacked)
    fig, axes = plt.subplots(n, cols, figsize=(cols * 1.3, n * 1.4), squeeze=False)
    for i in range(n):
        img = _as_hwc(images[i])
        gray = images.shape[1] == 1
        axes[i, 0].imshow(img, cmap="gray" if gray else None)
        axes[i, 1].imshow(img, cmap="gray" if gray else None)
        axes[i, 1].imshow(cams[i].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        keep = focused[i].numpy().astype(float)
        axes[i, 2].imshow(img * (keep[..., None] if img.ndim == 3 else keep), cmap="gray" if gray else None)
        for k, (eps, adv) in enumerate(attacked.items()):
            axes[i, 3 + k].imshow(_as_hwc(adv[i]), cmap="gray" if gray else None)
            if i == 0:
                axes[i, 3 + k].set_title(f"ε = {eps:g}", fontsize=8)
    if n:
        for k, t in enumerate(("image", "Grad-CAM", "focused region")):
            axes[0, k].set_title(t, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig
