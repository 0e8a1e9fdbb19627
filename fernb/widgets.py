"""ipywidgets explorers. Each has a static twin (`plot_*`) that the notebook shows first, so an executed notebook
read on GitHub or run headless by papermill still carries the figure; the widget is the live extra."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from .data import synthfer
from .data.labels import SHORT
from .methods.drm import relabel


def _png(fig) -> bytes:
    """Render and close a figure, returning PNG bytes for an `ipywidgets.Image`.

    The explorers show their figure through an Image widget rather than capturing `plt.show()` in an Output
    widget: nbclient (papermill) stalls on large figures captured inside Output widgets, which would hang a
    headless run."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_au_faces(settings: dict, identity: int = 3, size: int = 112):
    """Static: one face per named AU setting ({title: {AU: intensity}})."""
    fig, axes = plt.subplots(1, len(settings), figsize=(1.9 * len(settings), 2.2))
    for ax, (title, aus) in zip(axes, settings.items()):
        ax.imshow(synthfer.render_face(aus, identity=identity, size=size).permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def au_explorer(identity: int = 3, size: int = 160):
    """Live: one slider per action unit, plus identity, yaw and roll; the face re-renders on every change."""
    import ipywidgets as W
    from IPython.display import display

    sliders = {au: W.FloatSlider(0.0, min=0, max=1, step=0.05, description=f"AU{au}",
                                 tooltip=synthfer.AU_NAMES[au], continuous_update=False,
                                 layout=W.Layout(width="260px")) for au in synthfer.AUS}
    ident = W.IntSlider(identity, min=0, max=199, description="identity", continuous_update=False)
    yaw = W.FloatSlider(0.0, min=-40, max=40, step=2, description="yaw °", continuous_update=False)
    roll = W.FloatSlider(0.0, min=-25, max=25, step=1, description="roll °", continuous_update=False)
    preset = W.Dropdown(options=["(custom)"] + list(synthfer.PROTOTYPES), description="prototype")
    out = W.Image(format="png", layout=W.Layout(width="300px"))

    def draw(*_):
        img = synthfer.render_face({k: s.value for k, s in sliders.items()}, identity=ident.value, size=size,
                                   yaw_deg=yaw.value, roll_deg=roll.value)
        fig, ax = plt.subplots(figsize=(3, 3))
        ax.imshow(img.permute(1, 2, 0).numpy())
        ax.axis("off")
        out.value = _png(fig)

    def apply_preset(change):
        if change["new"] in synthfer.PROTOTYPES:
            for k, s in sliders.items():
                s.value = 1.0 if k in synthfer.PROTOTYPES[change["new"]] else 0.0

    preset.observe(apply_preset, names="value")
    for w in (*sliders.values(), ident, yaw, roll):
        w.observe(draw, names="value")
    grid = W.GridBox(list(sliders.values()), layout=W.Layout(grid_template_columns="repeat(2, 270px)"))
    draw()
    display(W.HBox([W.VBox([preset, ident, yaw, roll, grid]), out]))


def plot_relabel_batch(images, probs, labels, alpha, clean_labels, classes, beta=0.7, delta2=0.2, ncols=8):
    """Static: which samples of a batch FUCLE Eq. 6 relabels at `delta2` (orange frame = relabeled; title
    given -> new label; green/red = the new label is right/wrong against the clean label)."""
    new, changed = relabel(probs, labels, alpha, beta=beta, delta2=delta2)
    n = len(images)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.35, nrows * 1.7), squeeze=False)
    short = [SHORT.get(c, c) for c in classes]
    order = torch.argsort(alpha, descending=True)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        i = int(order[k])
        img = images[i].float().div(255).permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray")
        title = f"α={float(alpha[i]):.2f}\n{short[int(labels[i])]}"
        color = "black"
        if changed[i]:
            title += f"→{short[int(new[i])]}"
            color = "green" if int(new[i]) == int(clean_labels[i]) else "red"
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_edgecolor("orange")
                spine.set_linewidth(3)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(title, fontsize=7, color=color)
    fig.suptitle(f"batch sorted by α (high group = first {int(beta * n)}); β={beta}, δ2={delta2}: "
                 f"{int(changed.sum())} relabeled", fontsize=9)
    fig.tight_layout()
    return fig


def relabel_explorer(images, probs, labels, alpha, clean_labels, classes, beta=0.7):
    """Live: δ2 and β sliders over one batch; shows which samples get relabeled."""
    import ipywidgets as W
    from IPython.display import display

    delta2 = W.FloatSlider(0.2, min=0, max=0.5, step=0.025, description="δ2", continuous_update=False)
    beta_s = W.FloatSlider(beta, min=0.3, max=0.9, step=0.05, description="β", continuous_update=False)
    out = W.Image(format="png")

    def draw(*_):
        out.value = _png(plot_relabel_batch(images, probs, labels, alpha, clean_labels, classes, beta=beta_s.value,
                                            delta2=delta2.value))

    delta2.observe(draw, names="value")
    beta_s.observe(draw, names="value")
    draw()
    display(W.VBox([W.HBox([delta2, beta_s]), out]))


def mask_ratio_explorer(mae, images: torch.Tensor, ratios=(0.25, 0.95), device=None):
    """Live: the MAE's reconstruction of one face as the mask ratio r moves (SSFER Fig. 3), with a fresh random
    mask per draw. `images` are normalized network inputs (N, C, H, W); the static twin is
    `viz.plot_mae_reconstructions`."""
    import ipywidgets as W
    from IPython.display import display

    from . import engine
    from .data import augment as aug

    device = engine.resolve_device(device)
    mae = mae.to(device).eval()
    ratio = W.FloatSlider(0.75, min=ratios[0], max=ratios[1], step=0.05, description="mask ratio r",
                          continuous_update=False)
    index = W.IntSlider(0, min=0, max=len(images) - 1, description="face", continuous_update=False)
    seed = W.IntSlider(0, min=0, max=20, description="mask seed", continuous_update=False)
    out = W.Image(format="png")

    def draw(*_):
        x = images[index.value: index.value + 1].to(device)
        torch.manual_seed(seed.value)
        masked, recon, loss = mae.reconstruct(x, ratio.value)
        fig, axes = plt.subplots(1, 3, figsize=(6, 2.3))
        for ax, img, title in zip(axes, (x, masked, recon), ("original", f"masked {ratio.value:.0%}",
                                                            f"reconstruction (loss {float(loss):.2f})")):
            ax.imshow(aug.from_input(img[0].float().cpu()).permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        out.value = _png(fig)

    for w in (ratio, index, seed):
        w.observe(draw, names="value")
    draw()
    display(W.VBox([W.HBox([ratio, index, seed]), out]))
