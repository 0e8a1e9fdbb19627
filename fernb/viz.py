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


def save(fig, notebook: str, name: str, dpi: int = 120) -> None:
    """Write `fig` to figures/<notebook>/<name>.png (`fernb.paths.figure_dir`). Returns nothing, so a cell that
    ends with it prints no path of the machine that ran it."""
    fig.savefig(figure_dir(notebook) / f"{name}.png", dpi=dpi, bbox_inches="tight")


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


def _gradcam_candidates(model) -> list[tuple[str, list]]:
    """(name, layers) candidates for Grad-CAM, deepest first."""
    if hasattr(model, "gradcam_layers"):
        return [("gradcam_layers()", list(model.gradcam_layers()))]
    trunk = getattr(model, "trunk", model)  # fernb's ARMNet wraps a timm ResNet trunk
    if all(hasattr(trunk, f"layer{i}") for i in (1, 2, 3, 4)):
        prefix = "trunk." if trunk is not model else ""
        return [(f"{prefix}layer{i}", [getattr(trunk, f"layer{i}")[-1]]) for i in (4, 3, 2, 1)]
    if hasattr(model, "blocks"):
        return [("blocks[-1].norm1", [model.blocks[-1].norm1])]
    raise ValueError(f"no Grad-CAM target layer known for {type(model).__name__}; pass target_layers")


def _map_side(model, layers, img_size: int) -> int:
    """The smaller side of the feature map `layers[0]` outputs for an img_size input (ViT: the token grid)."""
    if hasattr(model, "patch_embed"):
        return img_size // model.patch_embed.patch_size[0]
    seen = []
    hook = layers[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    param = next(model.parameters())
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, model_in_chans(model), img_size, img_size, device=param.device,
                                     dtype=param.dtype))
    finally:
        hook.remove()
        model.train(was_training)
    return int(min(seen[0][-2:]))


def model_in_chans(model) -> int:
    """Input channels of a fernb / timm model (its first conv's, or the patch embedding's)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.in_channels
    raise ValueError(f"cannot tell the input channels of {type(model).__name__}")


MIN_CAM_SIDE = 6  # Grad-CAM maps coarser than 6 x 6 cannot point at a brow or a mouth corner


def gradcam_target_layers(model, img_size: int | None = None, min_side: int = MIN_CAM_SIDE):
    """(target layers, reshape transform, name, map side) for Grad-CAM: the deepest layer whose map is at least
    `min_side` x `min_side` at `img_size` (a timm ResNet's layer4, else layer3, layer2 ...; a ViT's last block; a
    fernb model naming its own via `gradcam_layers()`, e.g. DAL-Net's last conv layer). Without `img_size` the
    deepest layer is taken."""
    candidates = _gradcam_candidates(model)
    reshape = None
    if hasattr(model, "blocks") and not hasattr(model, "gradcam_layers"):
        prefix = getattr(model, "num_prefix_tokens", 1)
        reshape = lambda t: vit_reshape_transform(t, prefix)
    if img_size is None:
        name, layers = candidates[0]
        return layers, reshape, name, None
    for name, layers in candidates:
        side = _map_side(model, layers, img_size)
        if side >= min_side:
            return layers, reshape, name, side
    return layers, reshape, name, side  # none is fine enough: the finest one there is


def gradcam(model, images_uint8: torch.Tensor, targets=None, target_layers=None, reshape_transform=None,
            min_side: int = MIN_CAM_SIDE):
    """Grad-CAM maps (N, H, W) in [0, 1] for uint8 images; `targets` = class per image (default: predicted). The
    layer is `gradcam_target_layers(model, image size, min_side)` unless `target_layers` is given."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if target_layers is None:
        target_layers, reshape_transform, _, _ = gradcam_target_layers(model, images_uint8.shape[-1], min_side)
    model = model.eval()
    device = next(model.parameters()).device
    x = aug.to_input(images_uint8.to(device))
    cam_targets = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
    with GradCAM(model=model, target_layers=target_layers, reshape_transform=reshape_transform) as cam:
        return torch.from_numpy(cam(input_tensor=x, targets=cam_targets))


def localisation_score(cams: torch.Tensor, region: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """Per image: the share of Grad-CAM energy inside `region` (within the face) divided by the region's share of
    the face: (sum cam*region / sum cam*face) / (sum region / sum face). 1.0 = no better than a map spread evenly
    over the face, 2.0 = twice as concentrated on the region; NaN where the region is empty (neutral faces).
    cams, region, face: (N, H, W); region is clipped to the face."""
    cams, face = cams.float(), face.float().clamp(0, 1)
    region = region.float().clamp(0, 1) * face
    energy_face = (cams * face).flatten(1).sum(1)
    share = (cams * region).flatten(1).sum(1) / energy_face.clamp(min=1e-12)
    area = region.flatten(1).sum(1) / face.flatten(1).sum(1).clamp(min=1e-12)
    score = share / area
    return torch.where((area > 0) & (energy_face > 0), score, torch.full_like(score, float("nan")))


def gradcam_localisation(model, data, index, targets=None, min_side: int = MIN_CAM_SIDE) -> dict:
    """Grad-CAM on rows `index` of a SynthFER split, scored against the renderer's own masks: for each face, the
    regions where its true expression's action units act (`synthfer.expression_regions` of its clean label) against
    the whole face (`localisation_score`). Returns {"cams", "scores" (NaN for neutral), "mean" (over the
    expressive faces), "layer", "side" (the map's side in cells)}."""
    from .data import synthfer

    idx = torch.as_tensor(index)
    images = data.images[idx.to(data.images.device)]
    layers, reshape, name, side = gradcam_target_layers(model, images.shape[-1], min_side)
    cams = gradcam(model, images, targets=targets, target_layers=layers, reshape_transform=reshape)
    masks = synthfer.region_masks(data, idx)
    truth = (data.clean_labels if data.clean_labels is not None else data.labels)[idx.to(data.labels.device)]
    region = synthfer.expression_regions(masks, truth.cpu(), data.classes)
    scores = localisation_score(cams, region, masks["face"])
    valid = scores[~scores.isnan()]
    return {"cams": cams, "scores": scores, "mean": float(valid.mean()) if len(valid) else float("nan"),
            "layer": name, "side": side}


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


def plot_al_curves(curves, title: str = "", metric: str = "accuracy", ax=None, highlight=(), x: str = "n_labeled",
                   references: dict | None = None, methods=None):
    """Accuracy vs labels, one line per method (mean over seeds, band = +-1 std across seeds).

    `curves` is `fernb.methods.fucle.curves_frame(...)`; `x` is "n_labeled" (the active-learning set, the paper's
    axis) or "labels_read" (AL labels plus every label a method's step 1 read: the equal-budget view).
    `references` draws horizontal lines, e.g. {"chance": 1/7, "every pool label": 0.52}; `methods` restricts and
    orders the lines; methods in `highlight` are drawn thicker.
    """
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    groups = dict(tuple(curves.groupby("method", sort=False)))
    for method in (methods if methods is not None else groups):
        if method not in groups:
            continue
        stats = groups[method].groupby(x)[metric].agg(["mean", "std"]).reset_index()
        lw = 2.8 if method in highlight else 1.3
        line, = ax.plot(stats[x], stats["mean"], marker="o", ms=3, lw=lw, label=method)
        if stats["std"].notna().any():
            ax.fill_between(stats[x], stats["mean"] - stats["std"].fillna(0),
                            stats["mean"] + stats["std"].fillna(0), color=line.get_color(), alpha=0.15)
    for i, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, color="0.35", ls=(0, (4, 2)) if i % 2 == 0 else ":", lw=1)
        ax.annotate(f"{name} {value:.2f}", (1.0, value), xycoords=("axes fraction", "data"), ha="right",
                    va="bottom", fontsize=7, color="0.3")
    ax.set_xlabel({"n_labeled": "labels in the active-learning set",
                   "labels_read": "labels read (step 1 + active learning)"}.get(x, x))
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title)
    return fig or ax.figure


def plot_relabel_vs_accuracy(frames: dict, label_accuracy: float, ax=None, truth: str = "clean labels"):
    """The scale figure: per DRM epoch, the precision of its label changes and the label noise after the epoch,
    against the model's own validation accuracy; one colour per run (e.g. pool size).

    `frames` maps a run name to `fernb.methods.fucle.relabel_frame(...)` (one row per relabeling epoch).
    Relabeling replaces a label by the model's prediction, so it can only help once the model is more accurate
    than the labels it corrects: the dashed line marks the accuracy of the given labels (1 - noise). Pools with
    different noise pass `label_accuracy` as {run name: accuracy}: one dashed line per distinct value, in the
    colour of the first run that has it.
    """
    fig = None
    if ax is None:
        fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, frame) in enumerate(frames.items()):
        f = frame.dropna(subset=["val_accuracy"])
        c = colors[i % len(colors)]
        ax[0].plot(f["val_accuracy"], f["precision"], marker="o", color=c, label=name)
        ax[1].plot(f["val_accuracy"], f["noise_rate"], marker="o", color=c, label=name)
    accuracies = label_accuracy if isinstance(label_accuracy, dict) else {None: label_accuracy}
    names = list(frames)
    lines = {}
    for name, acc in accuracies.items():
        i = names.index(name) if name in names else None
        lines.setdefault(round(float(acc), 6), "0.3" if i is None or len(accuracies) == 1 else colors[i % len(colors)])
    for a in ax:
        for acc, c in lines.items():
            a.axvline(acc, color=c, ls="--", lw=1)
        a.set_xlabel("model accuracy on the validation split (this epoch)")
        a.grid(alpha=0.3)
    ax[0].axhline(0.5, color="0.6", ls=":", lw=1)
    ax[0].set_ylabel(f"relabel precision (vs {truth})")
    ax[0].set_title("share of label changes that are right")
    for acc, c in lines.items():
        ax[1].axhline(1 - acc, color=c, ls=":", lw=1)
    ax[1].set_ylabel("label noise after the epoch")
    ax[1].set_title("noise of the training labels")
    ax[0].legend(fontsize=7)
    for acc, c in lines.items():
        ax[1].annotate("accuracy of the\ngiven labels", (acc, 0.02), xycoords=("data", "axes fraction"),
                       fontsize=7, ha="right", color=c)
    return fig or ax[0].figure


# ---------------------------------------------------------------------------------------------------------------
# Notebook 04 (DAL-Net, two-stage transfer, active incremental learning)
# ---------------------------------------------------------------------------------------------------------------
def plot_double_activation(ax=None):
    """The double activation layer on a 1-d input: two linear units X1 = x, X2 = 0.5 - 0.5 x (the two halves a
    Maxout compares), Maxout max(X1, X2) (Eq. 1), ReLU of x (Eq. 2) and DAL = ReLU(Maxout) (Fig. 3)."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.6, 3.0))
    x = np.linspace(-3, 3, 241)
    x1, x2 = x, 0.5 - 0.5 * x
    maxout = np.maximum(x1, x2)
    ax.plot(x, x1, color="0.6", ls=":", lw=1, label="X1 = x")
    ax.plot(x, x2, color="0.6", ls="--", lw=1, label="X2 = 0.5 - 0.5x")
    ax.plot(x, np.maximum(0, x), color="tab:blue", lw=1.5, label="ReLU(x)  (Eq. 2)")
    ax.plot(x, maxout, color="tab:orange", lw=1.5, label="Maxout max(X1, X2)  (Eq. 1)")
    ax.plot(x, np.maximum(0, maxout), color="tab:red", lw=2.5, alpha=0.7, label="DAL = ReLU(Maxout)")
    ax.axhline(0, color="0.8", lw=0.8)
    ax.set_xlabel("input")
    ax.set_ylabel("output")
    ax.set_ylim(-1.5, 3.2)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    return fig or ax.figure


def plot_feature_maps(image, rows: dict, n: int = 8, suptitle: str = ""):
    """One input image and, per row, the first `n` feature maps of a (C, H, W) tensor ({row title: maps}), each
    map scaled to its own range; the share of exactly-zero activations is printed per row."""
    fig, axes = plt.subplots(len(rows), n + 1, figsize=(1.25 * (n + 1), 1.4 * len(rows)), squeeze=False)
    for r, (title, maps) in enumerate(rows.items()):
        maps = maps.detach().float().cpu()
        axes[r, 0].imshow(_as_hwc(image), cmap="gray")
        axes[r, 0].set_title("input", fontsize=7)
        zero = float((maps == 0).float().mean())
        axes[r, 1].set_title(f"{title} (zeros {zero:.0%})", fontsize=7, loc="left")
        for c in range(n):
            axes[r, c + 1].imshow(maps[c].numpy(), cmap="magma")
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def plot_k_sweep(frame, references: dict | None = None, ax=None, title: str = ""):
    """Tables 3-4 as a figure: stage-1 and stage-2 test accuracy against the number k of frozen conv layers (mean
    over seeds, error bar = 95 % t interval of the mean); `references` draws horizontal lines ({name: value}).
    `frame` has columns k, stage ("stage1"/"stage2"), seed, test_accuracy."""
    from scipy import stats as st

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.6))
    for stage, color in (("stage1", "tab:blue"), ("stage2", "tab:red")):
        f = frame[frame["stage"] == stage].groupby("k")["test_accuracy"]
        mean, sd, n = f.mean(), f.std().fillna(0), f.count()
        half = [st.t.ppf(0.975, c - 1) * s / np.sqrt(c) if c > 1 else 0 for s, c in zip(sd, n)]
        ax.errorbar(mean.index, mean.values, yerr=half, marker="o", capsize=3, color=color,
                    label=stage.replace("stage", "stage "))
    for i, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, color=["0.3", "tab:green", "tab:purple"][i % 3], ls="--", lw=1, label=name)
    ax.set_xlabel("frozen conv layers k in stage 1")
    ax.set_ylabel("test accuracy")
    ax.set_xticks(sorted(frame["k"].unique()))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    return fig or ax.figure


def plot_candidate_patches(image, patch_images, probs, kept, classes, entropy: float, diversity: float, W: float,
                           title: str = ""):
    """Fig. 6 for one candidate: the image, its m patches (grid order) with each patch's top class and
    confidence, the top-alpha patches framed in orange, and e (Eq. 7), d (Eq. 8), W (Eq. 9) in the title.

    patch_images (m, C, h, w) float in [0, 1]; probs (m, K); kept: indices of the top-alpha patches."""
    m = len(patch_images)
    grid = int(round(math.sqrt(m)))
    fig = plt.figure(figsize=(2.2 + 1.15 * grid, 1.25 * grid + 0.3))
    gs = fig.add_gridspec(grid, grid + 2, width_ratios=[2.2 / 1.15, 0.05] + [1] * grid)
    ax0 = fig.add_subplot(gs[:, 0])
    ax0.imshow(_as_hwc(image), cmap="gray")
    ax0.axis("off")
    ax0.set_title(title, fontsize=8)
    short = _short(classes)
    kept = set(int(k) for k in kept)
    y_hat = int(probs.sum(0).argmax())
    for j in range(m):
        ax = fig.add_subplot(gs[j // grid, 2 + j % grid])
        ax.imshow(_as_hwc(patch_images[j]), cmap="gray", vmin=0, vmax=1)
        top = int(probs[j].argmax())
        ax.set_title(f"{short[top]} {float(probs[j, top]):.2f} | {short[y_hat]} {float(probs[j, y_hat]):.2f}",
                     fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("orange" if j in kept else "0.7")
            spine.set_linewidth(2.5 if j in kept else 0.5)
    fig.suptitle(f"dominant class {classes[y_hat]}; e = {entropy:.3f}, d = {diversity:.3f}, W = {W:.3f}",
                 fontsize=8, y=1.0)
    return fig


def plot_cost_curves(frame, metric: str = "accuracy", ax=None, title: str = "", references: dict | None = None):
    """Accuracy after each round against the cumulative annotation cost, one line per selector (mean over seeds,
    band = +-1 std). `frame` holds `fernb.methods.incremental.IncrementalResult.frame()` rows (selector, seed,
    round, cost, accuracy, ...)."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.6))
    for selector, f in frame.groupby("selector", sort=False):
        s = f.groupby("round").agg(cost=("cost", "mean"), mean=(metric, "mean"), std=(metric, "std")).fillna(0)
        line, = ax.plot(s["cost"], s["mean"], marker="o", ms=4, lw=2.2 if selector == "worthiness" else 1.3,
                        label=selector)
        ax.fill_between(s["cost"], s["mean"] - s["std"], s["mean"] + s["std"], color=line.get_color(), alpha=0.12)
    for name, value in (references or {}).items():
        ax.axhline(value, color="0.4", ls="--", lw=1)
        ax.annotate(f"{name} {value:.3f}", (1.0, value), xycoords=("axes fraction", "data"), ha="right",
                    va="bottom", fontsize=7, color="0.3")
    ax.set_xlabel("annotation cost (candidates looked at)")
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    return fig or ax.figure


def plot_gradcam_images(model, images_uint8, titles, colors=None, ncols: int = 8, suptitle: str = "",
                        targets=None):
    """Grad-CAM overlays for raw uint8 images (no dataset needed) with the given titles (and title colours)."""
    maps = gradcam(model, images_uint8, targets=targets)
    n = len(images_uint8)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.4, nrows * 1.7), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(_as_hwc(images_uint8[i]), cmap="gray" if images_uint8.shape[1] == 1 else None)
        ax.imshow(maps[i].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(titles[i], fontsize=6.5, color=(colors[i] if colors is not None else "black"))
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


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


def plot_mae_predictions(originals: torch.Tensor, normalized_target: torch.Tensor, results: dict,
                         suptitle: str = ""):
    """MAE at several mask ratios (SSFER Fig. 3), the decoder's own output beside the common borrowed view.

    Columns: the original, every patch in the loss's space (each patch normalized by its own mean and std:
    what the decoder is asked to predict), then per ratio the visible patches, the decoder's prediction in that
    space at every masked position (nothing borrowed), and the reconstruction that borrows each masked patch's
    true mean and std (labelled "true patch stats": the usual MAE figure, brightness taken from the ground truth).
    originals (N, C, H, W) in [0, 1]; normalized_target (N, C, H, W) in [0, 1] (`mae.normalized_display`);
    results: {ratio: (masked input, prediction, borrowed reconstruction, per-image loss)}, images in [0, 1]."""
    n = len(originals)
    cols = 2 + 3 * len(results)
    fig, axes = plt.subplots(n, cols, figsize=(cols * 1.15, n * 1.3), squeeze=False)
    cmap = "gray" if originals.shape[1] == 1 else None
    for i in range(n):
        axes[i, 0].imshow(_as_hwc(originals[i]), cmap=cmap)
        axes[i, 1].imshow(_as_hwc(normalized_target[i]), cmap=cmap)
        for k, (ratio, (masked, own, borrowed, loss)) in enumerate(results.items()):
            for j, (img, title) in enumerate(((masked, f"visible at {ratio:.0%}"), (own, "decoder's own"),
                                              (borrowed, "true patch stats"))):
                axes[i, 2 + 3 * k + j].imshow(_as_hwc(img[i]), cmap=cmap)
                if i == 0:
                    axes[i, 2 + 3 * k + j].set_title(title, fontsize=7)
            axes[i, 3 + 3 * k].set_xlabel(f"loss {float(loss[i]):.2f}", fontsize=7)
    axes[0, 0].set_title("original", fontsize=7)
    axes[0, 1].set_title("target (per-patch\nnormalized)", fontsize=7)
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


# ---- notebook 03 (Hu et al.: ARM, SCL with a labeled queue, CUEM) -------------------------------------------------
@torch.no_grad()
def padding_erosion_maps(trunk, img_size: int, in_chans: int = 3, reference_size: int = 512, device=None):
    """How far each cell of each stage's feature map is from its padding-free value, for a uniform grey input.

    A convolution is translation-equivariant, so on a uniform image every cell of a stage would hold the same
    vector if there were no borders; zero padding makes the cells near the border differ (Shi et al.'s "albino"
    features). The padding-free vector is read at the centre of the same stage for a much larger uniform image
    (`reference_size`), far from any border. Returns {stage name: (h, w) map of ||F(cell) - F_ref|| / ||F_ref||}
    for a timm ResNet trunk (stem, layer1-4), in eval mode, on `device` (resolved by `fernb.engine`)."""
    from .engine import resolve_device

    device = resolve_device(device)
    was = trunk.training
    trunk.to(device).eval()

    def stages(x):
        out = {}
        x = trunk.maxpool(trunk.act1(trunk.bn1(trunk.conv1(x))))
        out["stem"] = x
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(trunk, name)(x)
            out[name] = x
        return out

    # a light grey (0.75 in [0, 1], 0.5 after normalization): not 0, which a bias-free first convolution maps to 0
    grey = lambda s: torch.full((1, in_chans, s, s), 0.5, device=device)
    small, large = stages(grey(img_size)), stages(grey(reference_size))
    maps = {}
    for name, fmap in small.items():
        big = large[name][0]
        ref = big[:, big.shape[1] // 2, big.shape[2] // 2]                # (C,), the padding-free cell
        dev = (fmap[0] - ref[:, None, None]).norm(dim=0) / ref.norm().clamp(min=1e-8)
        maps[name] = dev.float().cpu()
    trunk.train(was)
    return maps


def plot_padding_erosion(maps: dict, title: str = ""):
    """One heatmap per stage of `padding_erosion_maps`: 0 = the cell equals its padding-free value."""
    fig, axes = plt.subplots(1, len(maps), figsize=(2.3 * len(maps), 2.6))
    vmax = max(float(m.max()) for m in maps.values())
    for ax, (name, m) in zip(np.atleast_1d(axes), maps.items()):
        im = ax.imshow(m.numpy(), cmap="magma", vmin=0, vmax=vmax)
        h, w = m.shape
        ax.set_title(f"{name} ({h}x{w})\nmean {float(m.mean()):.2f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=np.atleast_1d(axes).tolist(), shrink=0.8, label="relative deviation from padding-free")
    fig.suptitle(title, fontsize=9)
    return fig


@torch.no_grad()
def plot_arm_stages(model, image_uint8: torch.Tensor, title: str = "", device=None):
    """What ARM does to one face (an `ARMNet` in eval mode): the trunk's map (mean |F| over channels), one
    arranged map (pixel shuffle), the learned de-albino kernel, the amended map before the affinity, the
    running affinity, and the output the classifier reads."""
    from .engine import resolve_device

    device = resolve_device(device)
    arm = model.pool
    model.to(device).eval()
    x = aug.to_input(image_uint8[None].to(device))
    fmap = model.forward_features(x)
    arranged = arm.arrangement(fmap)[0, 0]
    amended = arm.amend(fmap)[0]
    affinity = arm.affinity(amended[None])
    out = (amended + arm.alpha * affinity).float().cpu()
    panels = [("input", _as_hwc(image_uint8), None),
              (f"trunk map, mean |F| ({fmap.shape[-1]}x{fmap.shape[-1]}x{fmap.shape[1]})",
               fmap[0].abs().mean(0).float().cpu(), "viridis"),
              (f"arranged: map 1 of {arm.groups} ({arranged.shape[-1]}x{arranged.shape[-1]})",
               arranged.float().cpu(), "viridis"),
              (f"de-albino kernel ({arm.kernel}x{arm.kernel}, stride {arm.stride})",
               arm.de_albino.weight[0, 0].float().cpu(), "coolwarm"),
              (f"amended, before affinity ({arm.out_side}x{arm.out_side})", amended.float().cpu(), "viridis"),
              (f"affinity x alpha={float(arm.alpha):.2f}", (arm.alpha * affinity).float().cpu(), "viridis"),
              ("ARM output (to the classifier)", out, "viridis")]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.1 * len(panels), 2.5))
    for ax, (name, img, cmap) in zip(axes, panels):
        if cmap is None:
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        else:
            lim = float(img.abs().max()) if cmap == "coolwarm" else None
            ax.imshow(img.numpy(), cmap=cmap, vmin=-lim if lim else None, vmax=lim)
        ax.set_title(name, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_queue_fill(history: dict, classes, title: str = ""):
    """The labeled queue during training: slots filled per epoch, and its class composition per epoch."""
    counts = np.array([c for c in history["queue_counts"] if len(c)], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    epochs = np.arange(1, len(history["queue_filled"]) + 1)
    axes[0].plot(epochs, history["queue_filled"], marker="o")
    axes[0].axhline(history.get("queue_size", 0), color="0.4", ls="--", lw=1, label="K (slots)")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("keys in the queue")
    axes[0].legend(fontsize=8)
    axes[0].set_title("filling up")
    if counts.size:
        share = counts / counts.sum(1, keepdims=True)
        axes[1].stackplot(epochs[-len(share):], share.T, labels=_short(classes))
        axes[1].axhline(1 / len(classes), color="white", ls=":", lw=1)
        axes[1].set_ylim(0, 1)
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("share of the queue")
        axes[1].legend(fontsize=7, ncol=4, loc="lower center")
        axes[1].set_title("class balance (labels as stored, after relabeling)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_similarity_matrix(similarity, labels, classes, clean_labels=None, theta: float = 0.1, title: str = ""):
    """CUEM on one batch: S_cos (rows: images, columns: classes). Boxes mark the given label, dots the clean label
    (where known); the row title gives u = S_max - S_label and the new label where u > theta."""
    from .methods.cuem import cuem_relabel

    sim = similarity.detach().cpu().float()
    labels = labels.reshape(-1).cpu()
    new, changed, u = cuem_relabel(sim, labels, theta)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * sim.shape[1], 0.8 + 0.3 * sim.shape[0]))
    sns.heatmap(sim.numpy(), annot=True, fmt=".2f", cmap="mako", cbar=False, ax=ax, annot_kws={"size": 6},
                xticklabels=_short(classes))
    short = _short(classes)
    rows = []
    for i in range(sim.shape[0]):
        ax.add_patch(plt.Rectangle((int(labels[i]), i), 1, 1, fill=False, ec="orange", lw=2))
        if clean_labels is not None:
            ax.plot(int(clean_labels[i]) + 0.85, i + 0.2, "o", color="lime", ms=4)
        txt = f"u={float(u[i]):.2f}" + (f" → {short[int(new[i])]}" if changed[i] else "")
        rows.append(txt)
    ax.set_yticks(np.arange(sim.shape[0]) + 0.5)
    ax.set_yticklabels(rows, fontsize=6, rotation=0)
    ax.set_xlabel("class c: mean cosine similarity to the queue entries of c")
    ax.set_title(title or f"S_cos of one batch (orange: given label, green: clean label; θ = {theta})", fontsize=8)
    fig.tight_layout()
    return fig


def plot_u_histogram(u, noisy, theta: float = 0.1, ax=None, title: str = ""):
    """u = S_max - S_label for samples whose given label is right vs wrong (against the clean labels)."""
    u = np.asarray(u, dtype=float)
    noisy = np.asarray(noisy, dtype=bool)
    keep = np.isfinite(u)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
    bins = np.linspace(0, max(float(u[keep].max()), theta * 2), 40)
    ax.hist(u[keep & ~noisy], bins=bins, alpha=0.6, density=True, label=f"given label right (n={int((keep & ~noisy).sum())})")
    ax.hist(u[keep & noisy], bins=bins, alpha=0.6, density=True, label=f"given label wrong (n={int((keep & noisy).sum())})")
    ax.axvline(theta, color="k", ls="--", lw=1, label=f"θ = {theta}")
    ax.set_xlabel("u = S_max - S_label")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return fig or ax.figure


def plot_relabel_curves(curves: dict, theta: float = 0.1, title: str = ""):
    """CUEM's rule at each theta: precision, recall and relabel rate, one line per injected noise rate
    (`curves` maps a name to `fernb.methods.cuem.relabel_curve(...)`)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.3))
    for name, frame in curves.items():
        axes[0].plot(frame["theta"], frame["precision"], marker=".", label=name)
        axes[1].plot(frame["theta"], frame["recall"], marker=".", label=name)
        axes[2].plot(frame["theta"], frame["relabel_rate"], marker=".", label=name)
    for ax, name in zip(axes, ("relabel precision (new label right)", "recall (noisy labels corrected)",
                               "share of training labels changed")):
        ax.axvline(theta, color="k", ls="--", lw=1)
        ax.set_xlabel("θ")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.5, color="0.6", ls=":", lw=1)
    axes[0].set_ylim(0, 1)
    axes[1].set_ylim(0, 1)
    axes[2].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_precision_vs_accuracy(points, title: str = ""):
    """Relabel precision against the accuracy of the class CUEM relabels to (argmax S_cos), and the change of the
    label noise, one point per (run, epoch) or per setting. `points` is a DataFrame with columns
    similarity_accuracy, precision, noise_change, label_accuracy and group (the legend). Relabeling replaces a
    label by that argmax: it lowers the noise only where the argmax is more often right than the labels it
    replaces (dashed line: the accuracy of the given labels)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (group, frame) in enumerate(points.groupby("group", sort=False)):
        c = colors[i % len(colors)]
        axes[0].scatter(frame["similarity_accuracy"], frame["precision"], color=c, s=18, label=group)
        axes[1].scatter(frame["similarity_accuracy"], frame["noise_change"], color=c, s=18, label=group)
        for acc in frame["label_accuracy"].unique():
            for ax in axes:
                ax.axvline(acc, color=c, ls="--", lw=0.8, alpha=0.7)
    axes[0].plot([0, 1], [0, 1], color="0.6", ls=":", lw=1)
    axes[0].set_ylabel("relabel precision")
    axes[0].set_title("precision of the label changes", fontsize=9)
    axes[1].axhline(0, color="0.3", lw=1)
    axes[1].set_ylabel("label noise after - before")
    axes[1].set_title("below 0: relabeling cleaned the labels", fontsize=9)
    for ax in axes:
        ax.set_xlabel("accuracy of argmax S_cos (the class CUEM relabels to)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_sweep(results: dict, keep, paper_value, xlabel: str, ax=None, log: bool = False, title: str = ""):
    """Fig. 5 style: mean test accuracy per setting with its 95 % t interval over seeds; settings in the best set
    (`fernb.scorecard.best_set`) filled, the paper's value marked."""
    from .scorecard import t_interval

    keys = list(results)
    stats = [t_interval(results[k]) if len(results[k]) > 1 else (float(np.mean(results[k])), np.nan, np.nan)
             for k in keys]
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
    xs = np.asarray(keys, dtype=float)
    means = np.array([s[0] for s in stats])
    err = np.array([[s[0] - s[1], s[2] - s[0]] for s in stats]).T
    ax.errorbar(xs, means, yerr=np.nan_to_num(err), color="tab:blue", capsize=3, lw=1)
    for x, m, k in zip(xs, means, keys):
        ax.plot(x, m, "o", color="tab:blue", mfc="tab:blue" if k in keep else "white", ms=7)
    ax.axvline(float(paper_value), color="tab:red", ls="--", lw=1, label=f"paper: {paper_value}")
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (mean, 95 % CI)")
    ax.legend(fontsize=7, title="filled: best set", title_fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    return fig or ax.figure


def plot_ablation(per_seed: dict, paper: dict | None = None, title: str = ""):
    """Test accuracy per configuration: mean bar, one dot per seed (lines join a seed across configurations).
    per_seed: {configuration: [accuracy per seed]}; a configuration run on fewer seeds has its first ones."""
    names = list(per_seed)
    width = max(len(per_seed[n]) for n in names)
    values = np.full((len(names), width), np.nan)                      # (configs, seeds), NaN where not run
    for i, n in enumerate(names):
        values[i, : len(per_seed[n])] = per_seed[n]
    means = np.nanmean(values, 1)
    fig, ax = plt.subplots(figsize=(1.5 + 1.35 * len(names), 3.4))
    ax.bar(range(len(names)), means, color="tab:blue", alpha=0.35)
    for s in range(values.shape[1]):
        ax.plot(range(len(names)), values[:, s], "o-", color="0.3", ms=3, lw=0.6, alpha=0.7)
    for i, v in enumerate(means):
        ax.annotate(f"{v:.3f}", (i, v), ha="center", va="bottom", fontsize=7, xytext=(0, 3),
                    textcoords="offset points")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    lo = float(np.nanmin(values))
    ax.set_ylim(max(0.0, lo - 0.08), min(1.0, float(np.nanmax(values)) + 0.06))
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_per_class_curves(values, classes, ax=None, title: str = "", ylabel: str = "", epochs=None,
                          reference: dict | None = None):
    """One line per class over epochs: `values` is (epochs, K) (e.g. Ada-CM's per-class margins T_c^t, or per-class
    accuracy); `reference` draws labelled horizontal lines ({"FixMatch 0.95": 0.95})."""
    v = np.asarray(values, dtype=float)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
    x = np.arange(v.shape[0]) if epochs is None else np.asarray(epochs)
    for c in range(v.shape[1]):
        ax.plot(x, v[:, c], marker="o", ms=2.5, lw=1.3, label=_short(classes)[c])
    for name, y in (reference or {}).items():
        ax.axhline(y, color="k", ls="--", lw=0.9)
        ax.text(x[0], y, f" {name}", va="bottom", fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return fig or ax.figure


def plot_margin_audit(margins, val_per_class, history: dict, classes, reference_tau: float = 0.95,
                      smooth: int = 5, title: str = ""):
    """Ada-CM's key figure (2 x 2): per-class margins over epochs; per-class validation accuracy over epochs;
    the share of each unlabeled batch in subset I and II over steps (moving average of `smooth` steps) with the
    share a fixed `reference_tau` would accept; per epoch, the precision of subset I's pseudo-labels, of the fixed
    threshold's, and the share of subset II whose pseudo-label is right. `history` is a SemiSupHistory dict with
    Ada-CM's audit shares in `extra`."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.4))
    plot_per_class_curves(margins, classes, ax=axes[0, 0], ylabel="margin $T_c^t$",
                          title="per-class margins (used during each epoch)",
                          reference={f"fixed {reference_tau}": reference_tau})
    if val_per_class is not None and len(val_per_class):
        plot_per_class_curves(val_per_class, classes, ax=axes[0, 1], epochs=np.arange(1, len(val_per_class) + 1),
                              ylabel="accuracy", title="per-class validation accuracy (EMA model, end of epoch)")
    else:
        axes[0, 1].axis("off")
    rate = np.asarray(history["step_mask_rate"], dtype=float)
    kernel = np.ones(smooth) / smooth
    rate_s = np.convolve(rate, kernel, mode="valid") if len(rate) >= smooth else rate
    steps = np.arange(len(rate_s)) + (len(rate) - len(rate_s))
    ax = axes[1, 0]
    ax.stackplot(steps, rate_s, 1 - rate_s, labels=["subset I (CE on strong view)", "subset II (InfoNCE)"],
                 colors=["tab:green", "tab:gray"], alpha=0.6)
    extra = history["extra"]
    spe = history["step"][0] if history["step"] else 1
    ep_steps = np.asarray(history["step"]) - spe / 2
    if "reference_rate" in extra:
        ax.plot(ep_steps, extra["reference_rate"], "k--", marker="o", ms=3, label=f"fixed {reference_tau} (same predictions)")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_ylabel("share of the unlabeled batch")
    ax.set_title("subset sizes over training", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[1, 1]
    ratio = lambda a, b: [x / y if y and y > 0 else np.nan for x, y in zip(a, b)]
    if "subset1_correct_rate" in extra:
        epochs = np.asarray(history["epoch"])
        ax.plot(epochs, ratio(extra["subset1_correct_rate"], extra["subset1_rate"]), marker="o",
                color="tab:green", label="subset I: pseudo-labels correct")
        ax.plot(epochs, ratio(extra["reference_correct_rate"], extra["reference_rate"]), marker="s", ls="--",
                color="k", label=f"fixed {reference_tau}: pseudo-labels correct")
        ax.plot(epochs, ratio(extra["subset2_correct_rate"], [1 - r for r in extra["subset1_rate"]]), marker="^",
                color="tab:gray", label="subset II: share actually correct")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"precision vs {history.get('audit') or 'labels'}")
    ax.set_title("pseudo-label audit", fontsize=9)
    ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---- DAL-Net (notebook 04): the Softmax-MSE gradients and the worthiness ranking -----------------------------------
def plot_softmax_mse_gradients(grads: dict, classes, title: str = "gradient on one image, true class fear (index 4)"):
    """Bars of dL/d logit per class for Eq. 6 (= cross-entropy) and the exact derivative of Eq. 5."""
    fig, ax = plt.subplots(figsize=(7, 2.8))
    width = 0.27
    for i, (name, g) in enumerate((("Eq. 6 (= cross-entropy)", grads["softmax"]),
                                   ("exact derivative of Eq. 5", grads["mse"]))):
        ax.bar(np.arange(len(g)) + (i - 0.5) * width, g.numpy(), width, label=name)
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=20, fontsize=8)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_ylabel("dL / d logit")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def plot_worthiness_ranks(report: dict, probs, b: int):
    """Left: the web pool ranked by worthiness, coloured by kind (dashed: the top w*b); right: the selection
    probabilities W^s of Eq. 11-12 within the top w*b. `report` from `dalnet_experiments.worthiness_report`."""
    colors = {"non-face": "tab:red", "face, wrong web label": "tab:orange", "face, right web label": "tab:blue"}
    ranked = report["frame"].iloc[report["order"]].reset_index(drop=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    for name, c in colors.items():
        sel = ranked[ranked["kind"] == name]
        axes[0].scatter(sel.index, sel["W"], s=4, color=c, label=name)
    axes[0].axvline(len(report["top"]), color="0.3", ls="--", lw=1)
    axes[0].set_xlabel("rank")
    axes[0].set_ylabel("W (Eq. 9)")
    axes[0].legend(fontsize=7)
    axes[0].set_title("the pool ranked by worthiness; dashed: top w*b", fontsize=9)
    axes[1].bar(range(len(probs)), np.asarray(probs), color=[colors[k] for k in report["top"]["kind"]])
    axes[1].set_xlabel("rank within the top w*b")
    axes[1].set_ylabel("$W^s$ (Eq. 11-12)")
    axes[1].set_title(f"selection probabilities; b = {b} are drawn", fontsize=9)
    fig.tight_layout()
    return fig
