"""ipywidgets explorers. Each has a static twin (`plot_*`) that the notebook shows first, so an executed notebook
read on GitHub or run headless by papermill still carries the figure; the widget is the live extra.

An explorer is displayed through `Explorer`, whose text fallback (what an untrusted notebook, GitHub and a plain-text
reader show instead of the widget) says what the widget is and that it needs a live kernel, instead of the widget
tree's repr. Its figure is a PNG in an `ipywidgets.Image` sized to the PNG's own pixels, so no flex row or column
stretches it."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from .data import synthfer
from .data.labels import SHORT
from .methods.drm import relabel


# What each explorer is, in the words its text fallback uses (fernb.nbclean also reads this for notebooks executed
# before the fallback existed).
EXPLORERS = {
    "au_explorer": "AU explorer (interactive widget: a prototype menu and sliders for identity, yaw, roll and each "
                   "action unit, over a rendered face)",
    "relabel_explorer": "Relabeling explorer (interactive widget: δ2 and β sliders over one batch, FUCLE Eq. 6)",
    "worthiness_explorer": "Worthiness explorer (interactive widget: λ1, λ2 and α sliders re-rank the candidate pool "
                           "by Eq. 9)",
    "mask_ratio_explorer": "Mask-ratio explorer (interactive widget: the MAE's reconstruction of one face as the mask "
                           "ratio moves)",
    "cuem_theta_explorer": "CUEM θ explorer (interactive widget: a θ slider over CUEM's relabeling rule)",
    "margin_schedule_explorer": "Margin-schedule explorer (interactive widget: B, γ, T_c and floor sliders over "
                                "Ada-CM's margin schedules)",
}


def fallback_text(name: str) -> str:
    """The text an explorer's output carries for readers that cannot draw the widget."""
    what = EXPLORERS.get(name, f"{name} (interactive widget)")
    return f"{what}: it needs a live Jupyter kernel; the figure above is its static twin."


class Explorer:
    """An explorer's widget, displayed with `fallback_text` as its text/plain. The widget-view entry of the bundle is
    the widget's own, so a live kernel and a saved widget state still draw the widget."""

    def __init__(self, widget, name: str):
        self.widget, self.name = widget, name

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = dict(self.widget._repr_mimebundle_(include=include, exclude=exclude))
        bundle["text/plain"] = fallback_text(self.name)
        return bundle

    def __repr__(self):
        return fallback_text(self.name)


def _show(widget, name: str) -> None:
    from IPython.display import display

    display(Explorer(widget, name))


def _image():
    """An Image widget that keeps the size of the PNG it shows (`_draw_png`): without an explicit size a flex row
    stretches it to the height of the controls beside it, and a flex column to the width of the output."""
    import ipywidgets as W

    return W.Image(format="png", layout=W.Layout(align_self="flex-start", flex="0 0 auto", max_width="100%",
                                                 height="auto", object_fit="contain"))


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, read from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _draw_png(image, fig) -> None:
    """Render `fig` into `image` at the PNG's own pixel size (max-width 100 % and height auto keep its aspect
    ratio where the output is narrower)."""
    png = _png(fig)
    width, _ = png_size(png)
    image.layout.width = f"{width}px"
    image.value = png


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

    sliders = {au: W.FloatSlider(0.0, min=0, max=1, step=0.05, description=f"AU{au}",
                                 tooltip=synthfer.AU_NAMES[au], continuous_update=False,
                                 layout=W.Layout(width="240px")) for au in synthfer.AUS}
    ident = W.IntSlider(identity, min=0, max=199, description="identity", continuous_update=False)
    yaw = W.FloatSlider(0.0, min=-40, max=40, step=2, description="yaw °", continuous_update=False)
    roll = W.FloatSlider(0.0, min=-25, max=25, step=1, description="roll °", continuous_update=False)
    preset = W.Dropdown(options=["(custom)"] + list(synthfer.PROTOTYPES), description="prototype")
    out = _image()

    def draw(*_):
        img = synthfer.render_face({k: s.value for k, s in sliders.items()}, identity=ident.value, size=size,
                                   yaw_deg=yaw.value, roll_deg=roll.value)
        fig, ax = plt.subplots(figsize=(3, 3))
        ax.imshow(img.permute(1, 2, 0).numpy())
        ax.axis("off")
        _draw_png(out, fig)

    def apply_preset(change):
        if change["new"] in synthfer.PROTOTYPES:
            for k, s in sliders.items():
                s.value = 1.0 if k in synthfer.PROTOTYPES[change["new"]] else 0.0

    preset.observe(apply_preset, names="value")
    for w in (*sliders.values(), ident, yaw, roll):
        w.observe(draw, names="value")
    grid = W.GridBox(list(sliders.values()), layout=W.Layout(grid_template_columns="repeat(2, 245px)"))
    draw()
    # controls and face side by side in ~750 px (a site's text column); narrower, the face wraps below
    _show(W.HBox([W.VBox([preset, ident, yaw, roll, grid]), out], layout=W.Layout(flex_flow="row wrap")),
          "au_explorer")


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

    delta2 = W.FloatSlider(0.2, min=0, max=0.5, step=0.025, description="δ2", continuous_update=False)
    beta_s = W.FloatSlider(beta, min=0.3, max=0.9, step=0.05, description="β", continuous_update=False)
    out = _image()

    def draw(*_):
        _draw_png(out, plot_relabel_batch(images, probs, labels, alpha, clean_labels, classes, beta=beta_s.value,
                                          delta2=delta2.value))

    delta2.observe(draw, names="value")
    beta_s.observe(draw, names="value")
    draw()
    _show(W.VBox([W.HBox([delta2, beta_s]), out]), "relabel_explorer")


def plot_worthiness_ranking(images, P, is_face=None, wrong_label=None, lambda1: float = 1.0, lambda2: float = 0.5,
                            alpha: float = 0.25, n: int = 16, ncols: int = 8):
    """Static: the `n` most worthy candidates of a pool under Eq. 9 with (lambda1, lambda2, alpha), ranked.

    images (N, C, H, W) uint8, P (N, m, K) patch probabilities (`fernb.methods.incremental.patch_probs`).
    Titles: rank, W, e, d; red = non-face, orange = a face whose web label is wrong, black = a correctly labeled
    face. The suptitle counts those kinds among the top n and the top 10 %."""
    from .methods.incremental import worthiness

    w = worthiness(P, lambda1, lambda2, alpha)
    order = torch.sort(w.W, descending=True, stable=True).indices
    top = order[:n]
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.35, nrows * 1.75), squeeze=False)
    kind = lambda i: ("non-face" if is_face is not None and not bool(is_face[i]) else
                      "wrong label" if wrong_label is not None and bool(wrong_label[i]) else "ok")
    colors = {"non-face": "red", "wrong label": "darkorange", "ok": "black"}
    for r, ax in enumerate(axes.flat):
        ax.axis("off")
        if r >= len(top):
            continue
        i = int(top[r])
        img = images[i].float().div(255).permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"#{r + 1} W={float(w.W[i]):.2f}\ne={float(w.entropy[i]):.2f} d={float(w.diversity[i]):.2f}",
                     fontsize=6.5, color=colors[kind(i)])
    tenth = order[: max(1, len(order) // 10)]
    share = lambda rows, what: sum(kind(int(i)) == what for i in rows) / max(1, len(rows))
    fig.suptitle(f"λ1={lambda1:g}, λ2={lambda2:g}, α={alpha:g}: top 10 % of the pool holds "
                 f"{share(tenth, 'non-face'):.0%} non-faces (red), {share(tenth, 'wrong label'):.0%} wrong web "
                 f"labels (orange)", fontsize=8)
    fig.tight_layout()
    return fig


def worthiness_explorer(images, P, is_face=None, wrong_label=None, n: int = 16):
    """Live: λ1, λ2 and α sliders re-rank the candidate pool by Eq. 9 (static twin: `plot_worthiness_ranking`)."""
    import ipywidgets as W

    l1 = W.FloatSlider(1.0, min=0, max=2, step=0.1, description="λ1 (entropy)", continuous_update=False)
    l2 = W.FloatSlider(0.5, min=0, max=2, step=0.1, description="λ2 (diversity)", continuous_update=False)
    al = W.FloatSlider(0.25, min=0.12, max=1.0, step=0.11, description="α (patches)", continuous_update=False)
    out = _image()

    def draw(*_):
        _draw_png(out, plot_worthiness_ranking(images, P, is_face, wrong_label, l1.value, l2.value, al.value, n))

    for s in (l1, l2, al):
        s.observe(draw, names="value")
    draw()
    _show(W.VBox([W.HBox([l1, l2, al]), out]), "worthiness_explorer")


def mask_ratio_explorer(mae, images: torch.Tensor, ratios=(0.25, 0.95), device=None):
    """Live: the MAE's reconstruction of one face as the mask ratio r moves (SSFER Fig. 3), one seeded mask per
    "mask seed": the decoder's own prediction in the loss's space (per-patch normalized pixels) beside the usual
    view that borrows each masked patch's true mean and std (labelled so). `images` are normalized network inputs (N, C, H, W); the static twin is
    `viz.plot_mae_predictions`."""
    import ipywidgets as W

    from . import engine
    from .data import augment as aug

    device = engine.resolve_device(device)
    mae = mae.to(device).eval()
    ratio = W.FloatSlider(0.75, min=ratios[0], max=ratios[1], step=0.05, description="mask ratio r",
                          continuous_update=False)
    index = W.IntSlider(0, min=0, max=len(images) - 1, description="face", continuous_update=False)
    seed = W.IntSlider(0, min=0, max=20, description="mask seed", continuous_update=False)
    out = _image()

    def draw(*_):
        x = images[index.value: index.value + 1].to(device)
        torch.manual_seed(seed.value)
        noise = torch.rand(1, mae.num_patches, generator=torch.Generator().manual_seed(seed.value)).to(device)
        masked, borrowed, _ = mae.reconstruct(x, ratio.value, noise=noise)
        target, own, loss = mae.reconstruct_normalized(x, ratio.value, noise=noise)
        shown = [aug.from_input(v.float().cpu()) for v in (x, masked)] + [target.cpu(), own.cpu(),
                                                                           aug.from_input(borrowed.float().cpu())]
        fig, axes = plt.subplots(1, 5, figsize=(9, 2.2))
        for ax, img, title in zip(axes, shown, ("original", f"visible ({ratio.value:.0%} masked)",
                                                "target (per-patch normalized)",
                                                f"decoder's own (loss {float(loss[0]):.2f})",
                                                "true patch stats (borrowed)")):
            ax.imshow(img[0].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
        _draw_png(out, fig)

    for w in (ratio, index, seed):
        w.observe(draw, names="value")
    draw()
    _show(W.VBox([W.HBox([ratio, index, seed]), out]), "mask_ratio_explorer")


def plot_cuem_batch(images, similarity, labels, clean_labels, classes, theta: float = 0.1, ncols: int = 8,
                    summary: str = ""):
    """Static: which images of a batch CUEM relabels at `theta` (Hu et al., Fig. 3), sorted by u = S_max - S_label
    (most uncertain first). Orange frame = relabeled; title: u, given -> new label; green / red = the new label is
    right / wrong against the clean label."""
    from .methods.cuem import cuem_relabel

    new, changed, u = cuem_relabel(similarity.cpu(), labels.cpu(), theta)
    n = len(images)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.35, nrows * 1.7), squeeze=False)
    short = [SHORT.get(c, c) for c in classes]
    order = torch.argsort(torch.nan_to_num(u, nan=-1.0), descending=True)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        i = int(order[k])
        img = images[i].float().div(255).permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", interpolation="nearest")
        title = f"u={float(u[i]):.2f}\n{short[int(labels[i])]}"
        color = "black"
        if changed[i]:
            title += f"→{short[int(new[i])]}"
            color = "green" if int(new[i]) == int(clean_labels[i]) else "red"
            ax.axis("on")
            for spine in ax.spines.values():
                spine.set_edgecolor("orange")
                spine.set_linewidth(3)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(title, fontsize=7, color=color)
    fig.suptitle(f"θ = {theta}: {int(changed.sum())} of {n} relabeled" + (f"; {summary}" if summary else ""),
                 fontsize=9)
    fig.tight_layout()
    return fig


def cuem_theta_explorer(images, similarity, labels, clean_labels, classes, all_similarity=None, all_labels=None,
                        all_clean=None):
    """Live: a θ slider over CUEM's rule. Shows the batch's decisions and, when the whole training set's
    similarities are given, the precision and recall of the rule at this θ on all of it."""
    import ipywidgets as W

    from .methods.cuem import relabel_curve

    theta = W.FloatSlider(0.1, min=0.0, max=0.5, step=0.01, description="θ", continuous_update=False)
    out = _image()

    def draw(*_):
        summary = ""
        if all_similarity is not None:
            row = relabel_curve(all_similarity, all_labels, all_clean, [theta.value]).iloc[0]
            summary = (f"whole training set: {int(row['relabeled'])} relabeled, precision {row['precision']:.2f}, "
                       f"recall {row['recall']:.2f}, noise {row['noise_before']:.2f} → {row['noise_after']:.2f}")
        _draw_png(out, plot_cuem_batch(images, similarity, labels, clean_labels, classes, theta=theta.value,
                                       summary=summary))

    theta.observe(draw, names="value")
    draw()
    _show(W.VBox([theta, out]), "cuem_theta_explorer")


def plot_margin_schedules(T: float = 0.95, B: float = 0.97, gamma: float = 2.718281828459045, epochs: int = 20,
                          floor: float | None = 0.8, reference: float = 0.95, ax=None):
    """Static: Ada-CM's margin T_c^t against the epoch t for a class with T_c = `T`: Eq. 2 with (B, gamma), the
    report's Eq. 6-8 (same B), and each with the authors' code floor (dotted) when `floor` is set; FixMatch's fixed
    threshold for reference."""
    from .methods.adacm import margin_schedule

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ts = list(range(1, epochs + 1))
    for name, label in (("eq2", f"Eq. 2 (B={B:.2f}, γ={gamma:.2f})"), ("eq6", "Eq. 6"), ("eq7", "Eq. 7"),
                        ("eq8", "Eq. 8")):
        ys = [margin_schedule(T, t, name, B=B, gamma=gamma) for t in ts]
        line, = ax.plot(ts, ys, marker="o", ms=2.5, label=label)
        if floor is not None:
            ax.plot(ts, [max(floor, y) for y in ys], ls=":", lw=2.2, color=line.get_color())
    ax.axhline(reference, color="k", ls="--", lw=0.9, label=f"FixMatch {reference}")
    if floor is not None:
        ax.axhline(floor, color="gray", lw=0.6)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("epoch t (completed)")
    ax.set_ylabel("margin $T_c^t$")
    ax.set_title(f"margin schedules for $T_c$ = {T:.2f}" + (f"; dotted: with the code's floor {floor}"
                                                              if floor is not None else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig or ax.figure


def margin_schedule_explorer(T: float = 0.95, epochs: int = 20):
    """Live: B, gamma, T_c and the floor as sliders over `plot_margin_schedules`."""
    import ipywidgets as W

    B = W.FloatSlider(0.97, min=0.5, max=1.2, step=0.01, description="B", continuous_update=False)
    gamma = W.FloatSlider(2.718, min=1.05, max=5.0, step=0.05, description="γ", continuous_update=False)
    Tc = W.FloatSlider(T, min=0.1, max=1.0, step=0.01, description="T_c", continuous_update=False)
    floor = W.FloatSlider(0.8, min=0.0, max=0.95, step=0.05, description="floor", continuous_update=False)
    out = _image()

    def draw(*_):
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        plot_margin_schedules(Tc.value, B.value, gamma.value, epochs, floor.value or None, ax=ax)
        _draw_png(out, fig)

    for w in (B, gamma, Tc, floor):
        w.observe(draw, names="value")
    draw()
    _show(W.VBox([W.HBox([B, gamma]), W.HBox([Tc, floor]), out]), "margin_schedule_explorer")
