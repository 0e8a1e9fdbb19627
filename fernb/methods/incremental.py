"""Weakly supervised active incremental learning (Xu et al., Sec. 3.3, Alg. 1, Eq. 7-12, Fig. 6, Table 10).

The paper crawls a noisy web pool (UFEDW: wrong labels, images without a real face) and, round after round, asks
an expert to label only the candidates most worth it, then fine-tunes the current best model on them. A candidate's
worth comes from how its *patches* disagree under the current model (after AFT*, Zhou et al. 2018, the paper's
ref. [37]):

1. Cut candidate C_i into m patches x_i^1..x_i^m (a 3 x 3 grid, Fig. 6) and predict each: p_i^j = M_{T-1}(x_i^j).
2. Dominant class (Eq. 10): y_hat = argmax_y sum_j p_i^{j,y}.
3. Sort the patches by their confidence in y_hat, keep the top alpha x 100 % (the informative ones).
4. Entropy (Eq. 7):   e_i = -1/m sum_k sum_j p_i^{j,k} log p_i^{j,k}             (uncertainty of each patch)
   Diversity (Eq. 8): d_i = sum_k sum_j sum_{l >= j} (p_i^{j,k} - p_i^{l,k}) log(p_i^{j,k} / p_i^{l,k})
                                                                            (disagreement between patches)
   Worthiness (Eq. 9): W_i = lambda1 e_i + lambda2 d_i, lambda1 = 1, lambda2 = 0.5 (the paper's values).
5. Randomized selection (Eq. 11-12): sort W descending, keep the top w*b, rescale
   W'_i <- (W'_i - W'_wb) / (W'_1 - W'_wb) and normalize W^s_i = W'_i / sum W', then draw b candidates with
   probabilities W^s (without replacement). w ("random extension") trades exploitation for exploration.
6. The annotator labels Z (here: `Annotator`, a simulated expert who reveals the clean label, or rejects a non-face;
   every look costs, a rejection too). H = the already-labeled candidates L that M_{T-1} misclassifies.
7. Fine-tune M_{T-1} on H u Z -> M_T; L <- L u Z; repeat (rounds).

Choices the paper leaves open, and what is done here:

* **Patches.** Fig. 6 shows a 3 x 3 grid; the crops here are `fraction` (2/3) of the image side placed on that
  grid (overlapping), each resized to the network's input, so every patch still shows most of a face. fraction=1/3
  gives the literal non-overlapping tiles, which a network trained on whole faces cannot classify.
* **alpha** is not given; 0.25 is AFT*'s value (ceil(0.25 * 9) = 3 patches). **w** is not given; 3 by default.
* **m in Eq. 7** is read as the number of patches kept (the mean entropy over them).
* **Fine-tuning data.** Alg. 1 fine-tunes on H u Z; the introduction says all annotated samples join the training.
  `replay_train=True` fine-tunes on the whole original FER training set plus H u Z, so a round of a few hundred web
  images cannot make the model forget the FER data it was built on, but the web images are then a small share of
  what it trains on (100 of 1,100 images); a number r replays a seeded random sample of the training set r times
  the size of H u Z (r = 1: half of each round's data is web images); `replay_train=False` is Alg. 1's literal
  H u Z. Each round fine-tunes from M_{T-1} for a fixed number of steps at a small learning rate.
* **The no-web controls.** `selector="none"`: the same rounds and steps from M_0 on the whole training set, no
  candidate looked at: what the steps buy without the web images. `selector="replay"`: the same rounds and steps on
  a fresh seeded sample of the training set as large as a round of web data is expected to be ((1 + r) x b x the
  pool's face share, r the replay ratio): what the steps buy on a round-sized set of images the model has already
  seen, so a gap between a selector and it is the web images' own (a small set fine-tuned for many steps can cost
  accuracy whatever it holds).
* **Cost.** One unit per candidate looked at: a face is labeled (its clean label, whether the web label was right
  or not), a non-face is rejected and yields nothing. Every selector looks at b candidates a round, so selectors
  are compared at equal annotation cost; what differs is how many of those looks buy a usable label.

The selectors compared (Table 10 and its controls): "worthiness" (Eq. 9, the paper), "entropy" (lambda2 = 0),
"diversity" (lambda1 = 0), both with the same randomized top-w*b selection, and "random" (b uniformly drawn
candidates). `annotate=False` is the weakly supervised control without an expert: the web labels are taken as
given and non-faces go into training, at zero annotation cost.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from .. import engine, models
from ..data import augment as aug
from ..data.dataset import UNLABELED, FERDataset
from .transfer import FinetuneConfig, loss_step

__all__ = ["patch_boxes", "cut_patches", "patch_probs", "dominant_class", "top_alpha_patches", "patch_entropy",
           "patch_diversity", "Worthiness", "worthiness", "sampling_probabilities", "randomized_select",
           "Annotator", "SELECTORS", "NO_WEB", "REPLAY_ONLY", "CONTROLS", "RoundRecord", "IncrementalResult", "run_incremental", "concat"]

SELECTORS = ("worthiness", "entropy", "diversity", "random")
NO_WEB = "none"   # the control: the same rounds and steps without web images, on the whole training set
REPLAY_ONLY = "replay"   # the control: the same rounds and steps on a round-sized sample of the training set
CONTROLS = (NO_WEB, REPLAY_ONLY)


# ---------------------------------------------------------------------------------------------------------------
# Patches (Fig. 6)
# ---------------------------------------------------------------------------------------------------------------
def patch_boxes(size: int, grid: int = 3, fraction: float = 2 / 3) -> list[tuple[int, int, int]]:
    """(top, left, side) of the grid x grid square crops of a `size` image: side = round(fraction * size), the
    crops' corners evenly spaced from the image's top-left to its bottom-right (row-major, m = grid^2 crops).
    fraction = 1/grid gives non-overlapping tiles."""
    if grid < 1 or not 0 < fraction <= 1:
        raise ValueError(f"need grid >= 1 and 0 < fraction <= 1, got grid={grid}, fraction={fraction}")
    side = max(1, int(round(fraction * size)))
    if grid == 1:
        starts = [(size - side) // 2]
    else:
        starts = [int(round(i * (size - side) / (grid - 1))) for i in range(grid)]
    return [(top, left, side) for top in starts for left in starts]


def cut_patches(images: torch.Tensor, grid: int = 3, fraction: float = 2 / 3, out_size: int | None = None):
    """Images (N, C, H, W) -> patches (N, m, C, out, out), each crop resized (bilinear) to `out_size` (default:
    the image side). Works on uint8 (returned as float in [0, 1]) or float images."""
    x = images.float().div(255.0) if images.dtype == torch.uint8 else images
    n, c, h, w = x.shape
    out_size = out_size or h
    crops = []
    for top, left, side in patch_boxes(h, grid, fraction):
        crop = x[:, :, top:top + side, left:left + side]
        if side != out_size:
            crop = F.interpolate(crop, size=(out_size, out_size), mode="bilinear", align_corners=False,
                                 antialias=side > out_size)
        crops.append(crop)
    return torch.stack(crops, dim=1)


@torch.no_grad()
def patch_probs(model, data: FERDataset, rows=None, *, grid: int = 3, fraction: float = 2 / 3,
                batch_size: int = 64, device=None) -> torch.Tensor:
    """Softmax predictions of `model` on every patch of the candidates `rows` of `data`: (N, m, K) on the CPU.
    `batch_size` counts candidates (each brings m patches)."""
    device = engine.resolve_device(device)
    model = model.to(device).eval()
    rows = torch.arange(len(data)) if rows is None else torch.as_tensor(rows).long()
    out = []
    for chunk in rows.split(batch_size):
        imgs = data.images[chunk.to(data.images.device)].to(device)
        patches = cut_patches(imgs, grid, fraction)                              # (b, m, C, S, S) in [0, 1]
        b, m = patches.shape[:2]
        x = aug.to_input(patches.flatten(0, 1)).contiguous(memory_format=torch.channels_last)
        with engine.autocast(device):
            logits = model(x)
        out.append(logits.float().softmax(1).view(b, m, -1).cpu())
    K = data.num_classes
    return torch.cat(out) if out else torch.empty(0, (grid * grid), K)


# ---------------------------------------------------------------------------------------------------------------
# Worthiness (Eq. 7-10)
# ---------------------------------------------------------------------------------------------------------------
def dominant_class(P: torch.Tensor) -> torch.Tensor:
    """Eq. 10: y_hat_i = argmax_y sum_j p_i^{j,y}. P (N, m, K) -> (N,)."""
    return P.sum(dim=1).argmax(dim=1)


def top_alpha_patches(P: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Alg. 1: sort each candidate's patches by their probability of the dominant class (descending) and keep the
    top ceil(alpha * m) (at least 1). Returns (kept patches (N, m', K), their patch indices (N, m'))."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    m = P.shape[1]
    keep = max(1, math.ceil(alpha * m - 1e-9))
    y_hat = dominant_class(P)
    conf = P.gather(2, y_hat[:, None, None].expand(-1, m, 1)).squeeze(2)             # (N, m): p^{j, y_hat}
    order = torch.sort(conf, dim=1, descending=True, stable=True).indices[:, :keep]
    return P.gather(1, order[:, :, None].expand(-1, -1, P.shape[2])), order


def patch_entropy(P: torch.Tensor) -> torch.Tensor:
    """Eq. 7: e_i = -1/m sum_k sum_j p^{j,k} log p^{j,k} (nats, 0 log 0 = 0), m = the patches given. (N, m, K) ->
    (N,)."""
    return -torch.special.xlogy(P, P).sum(dim=(1, 2)) / P.shape[1]


def patch_diversity(P: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 8: d_i = sum_k sum_j sum_{l >= j} (p^{j,k} - p^{l,k}) log(p^{j,k} / p^{l,k}): the symmetric KL divergence
    summed over every pair of patches (the l = j terms are 0). Probabilities are clamped at `eps` inside the log.
    (N, m, K) -> (N,), computed as half the sum over all ordered pairs (the summand is symmetric in j, l)."""
    logp = P.clamp_min(eps).log()
    diff = P[:, :, None, :] - P[:, None, :, :]
    logdiff = logp[:, :, None, :] - logp[:, None, :, :]
    return 0.5 * (diff * logdiff).sum(dim=(1, 2, 3))


@dataclass
class Worthiness:
    """Per candidate: entropy e (Eq. 7), diversity d (Eq. 8), worthiness W (Eq. 9), dominant class y_hat (Eq. 10),
    and the indices of the patches kept (top alpha, Alg. 1)."""
    entropy: torch.Tensor
    diversity: torch.Tensor
    W: torch.Tensor
    y_hat: torch.Tensor
    kept: torch.Tensor
    lambda1: float
    lambda2: float
    alpha: float


def worthiness(P: torch.Tensor, lambda1: float = 1.0, lambda2: float = 0.5, alpha: float = 0.25) -> Worthiness:
    """Eq. 9 on the top-alpha patches: W_i = lambda1 e_i + lambda2 d_i (paper: lambda1 = 1, lambda2 = 0.5)."""
    kept_p, kept = top_alpha_patches(P, alpha)
    e, d = patch_entropy(kept_p), patch_diversity(kept_p)
    return Worthiness(e, d, lambda1 * e + lambda2 * d, dominant_class(P), kept, lambda1, lambda2, alpha)


# ---------------------------------------------------------------------------------------------------------------
# Randomized selection (Eq. 11-12)
# ---------------------------------------------------------------------------------------------------------------
def sampling_probabilities(W_sorted: torch.Tensor) -> torch.Tensor:
    """Eq. 11-12 on the w*b largest worthiness values, sorted descending: W'_i = (W_i - W_wb) / (W_1 - W_wb), then
    W^s = W' / sum W'. The first has the largest probability, the last (W_wb) probability 0; all equal -> uniform.
    Returns float64 probabilities that sum to 1."""
    W = W_sorted.double()
    if W.numel() == 0:
        return W
    if bool((W[:-1] < W[1:]).any()):
        raise ValueError("sampling_probabilities needs the worthiness values sorted in descending order")
    span = W[0] - W[-1]
    if span <= 0:
        return torch.full_like(W, 1.0 / W.numel())
    scaled = (W - W[-1]) / span                                                   # Eq. 11
    return scaled / scaled.sum()                                                  # Eq. 12


def randomized_select(W: torch.Tensor, b: int, w: float = 3.0, generator: torch.Generator | None = None,
                      eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Alg. 1's Q(W^s, b): b distinct candidates drawn from the top w*b by worthiness with Eq. 11-12's
    probabilities (without replacement). `eligible` (bool mask) excludes candidates already labeled. When fewer
    than b candidates have non-zero probability (w close to 1), the rest are filled in descending worthiness, so
    w = 1 is exactly the top b. Returns positions into W (LongTensor, CPU)."""
    W = W.detach().cpu().double()
    pos = torch.arange(len(W)) if eligible is None else torch.as_tensor(eligible).cpu().nonzero().flatten()
    b = min(int(b), len(pos))
    if b <= 0:
        return torch.empty(0, dtype=torch.long)
    if w < 1:
        raise ValueError(f"the random extension w must be >= 1, got {w}")
    pool_size = min(len(pos), max(b, int(round(w * b))))
    order = pos[torch.sort(W[pos], descending=True, stable=True).indices[:pool_size]]
    probs = sampling_probabilities(W[order])
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n_positive = int((probs > 0).sum())
    picked = []
    if n_positive > 0:
        draw = torch.multinomial(probs.float(), min(b, n_positive), replacement=False, generator=g)
        picked = order[draw].tolist()
    if len(picked) < b:
        chosen = set(picked)
        picked += [int(i) for i in order.tolist() if int(i) not in chosen][: b - len(picked)]
    return torch.tensor(picked, dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------------
# The simulated annotator
# ---------------------------------------------------------------------------------------------------------------
class Annotator:
    """An expert who looks at web candidates: a non-face is rejected (label -1), a face gets its true label.

    The truth is the pool's `clean_labels` (SynthFER knows them); a pool without them (a real web pool) is
    answered with its given labels, so the audit then measures agreement with the crawl, not correctness.
    `is_face` None means every candidate is a face. Cost: `cost_per_look` per candidate looked at, a rejection
    included. Looking at a candidate twice is an error (Alg. 1 removes Z from U)."""

    def __init__(self, pool: FERDataset, cost_per_look: float = 1.0):
        self.truth = (pool.clean_labels if pool.clean_labels is not None else pool.labels).cpu().clone()
        self.given = pool.labels.cpu().clone()
        self.is_face = (pool.is_face.cpu().clone() if pool.is_face is not None
                        else torch.ones(len(pool), dtype=torch.bool))
        self.cost_per_look = float(cost_per_look)
        self.seen = torch.zeros(len(pool), dtype=torch.bool)
        self.looks = 0
        self.rejected = 0
        self.corrected = 0
        self.confirmed = 0

    def annotate(self, rows) -> torch.Tensor:
        """Labels for `rows`: the true label of each face, -1 for each rejected non-face; counts the cost."""
        rows = torch.as_tensor(rows).long().cpu()
        if len(rows.unique()) != len(rows):
            raise ValueError("a candidate appears twice in one request")
        if bool(self.seen[rows].any()):
            again = rows[self.seen[rows]][:5].tolist()
            raise ValueError(f"candidates {again} were already annotated: a look is paid once")
        self.seen[rows] = True
        face = self.is_face[rows]
        labels = torch.where(face, self.truth[rows], torch.full_like(rows, UNLABELED))
        self.looks += len(rows)
        self.rejected += int((~face).sum())
        wrong = face & (self.given[rows] != self.truth[rows])
        self.corrected += int(wrong.sum())
        self.confirmed += int((face & ~wrong).sum())
        return labels

    @property
    def cost(self) -> float:
        return self.looks * self.cost_per_look

    def summary(self) -> dict:
        return {"looks": self.looks, "cost": self.cost, "rejected non-faces": self.rejected,
                "corrected labels": self.corrected, "confirmed labels": self.confirmed}


# ---------------------------------------------------------------------------------------------------------------
# The rounds (Alg. 1)
# ---------------------------------------------------------------------------------------------------------------
def concat(parts: list[tuple[FERDataset, torch.Tensor]], name: str = "train+web") -> FERDataset:
    """One dataset from (dataset, labels) parts of equal image size, channels and classes (labels -1 = skip)."""
    first = parts[0][0]
    for data, _ in parts:
        if data.images.shape[1:] != first.images.shape[1:] or data.classes != first.classes:
            raise ValueError(f"cannot join {data.name} {tuple(data.images.shape[1:])} with {first.name} "
                             f"{tuple(first.images.shape[1:])}: image size, channels and classes must match")
    images = torch.cat([d.images.cpu() for d, _ in parts])
    labels = torch.cat([torch.as_tensor(y).long().cpu() for _, y in parts])
    return FERDataset(images=images, labels=labels, classes=first.classes, name=name)


@dataclass
class RoundRecord:
    round: int
    accuracy: float
    mean_class_accuracy: float
    looks: int                 # this round
    cost: float                # cumulative
    selected: int
    nonfaces: int              # of the selected: non-faces (rejected; wasted looks)
    wrong_web_labels: int      # of the selected faces: web label wrong (the annotator corrected it)
    used: int                  # samples added to training this round (Z's faces; with annotate=False all of Z)
    used_wrong: int            # of those: wrong label or non-face going into training (0 with the annotator)
    hard: int                  # |H|: labeled candidates the previous model misclassified
    seconds: float


@dataclass
class IncrementalResult:
    selector: str
    seed: int
    rounds: list = field(default_factory=list)
    selected: list = field(default_factory=list)       # web rows looked at, per round
    annotator: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    state: dict | None = None                           # M_T on the CPU (when asked)
    web_share: list = field(default_factory=list)       # share of web images in each round's fine-tuning data

    def frame(self):
        import pandas as pd
        frame = pd.DataFrame([r.__dict__ for r in self.rounds])
        frame.insert(0, "selector", self.selector)
        frame.insert(1, "seed", self.seed)
        return frame

    @property
    def final_accuracy(self) -> float:
        return self.rounds[-1].accuracy


def expected_round_size(b: int, web: FERDataset, replay_train, n_train: int) -> int:
    """How many images a round of web data trains on, expected: the b looks' faces (the pool's face share of b; a
    non-face yields no label) plus the replayed training images (r times as many for a ratio r; all `n_train` for
    True; none for False). The replay-only control trains on this many training images."""
    faces = b * (float(web.is_face.float().mean()) if web.is_face is not None else 1.0)
    if replay_train is True:
        return int(round(faces)) + n_train
    ratio = 0.0 if replay_train is False else float(replay_train)
    return int(round(faces * (1 + ratio)))


def _fit_round(model, data, *, cfg: FinetuneConfig, steps, lr, device, seed, progress):
    return engine.fit(model, data, steps=steps, batch_size=cfg.batch_size, lr=lr, weight_decay=cfg.weight_decay,
                      augment=cfg.augment, loss_fn=loss_step(cfg.loss), device=device, seed=seed,
                      progress=progress, desc="incremental fine-tune")


def run_incremental(start_state: dict, train: FERDataset, web: FERDataset, test: FERDataset, *,
                    cfg: FinetuneConfig, selector: str = "worthiness", rounds: int = 2, b: int = 200,
                    w: float = 3.0, lambda1: float = 1.0, lambda2: float = 0.5, alpha: float = 0.25,
                    grid: int = 3, fraction: float = 2 / 3, steps: int = 150, lr: float | None = None,
                    replay_train: bool | float = True, annotate: bool = True, seed: int = 0, device=None,
                    progress: bool = False, keep_state: bool = False) -> IncrementalResult:
    """Alg. 1 from M_0 = `start_state` (the two-stage model): `rounds` rounds of select b web candidates ->
    annotate -> fine-tune M_{T-1} on H u Z plus the replayed training images (`replay_train`: True = all of them,
    a number r = a random r x |H u Z| of them, False = none) for `steps` steps at `lr` (default cfg.lr2, the
    stage-2 rate). Round 0 records M_0 itself; `selector="none"` / `"replay"` are the no-web controls (whole training
    set / a round-sized sample of it, `expected_round_size`). See the module docstring
    for the selectors and the choices made. `seed` drives the randomized selection, the replay sample and the
    fine-tuning batches."""
    if selector not in SELECTORS + CONTROLS:
        raise ValueError(f"selector must be one of {SELECTORS + CONTROLS}, got {selector!r}")
    if replay_train is not True and replay_train is not False and float(replay_train) < 0:
        raise ValueError(f"replay_train must be True, False or a ratio >= 0, got {replay_train!r}")
    device = engine.resolve_device(device)
    lr = cfg.lr2 if lr is None else lr
    torch.manual_seed(seed)
    model = models.create(cfg.model_name, train.num_classes, in_chans=train.channels, img_size=train.image_size,
                          **cfg.model_kwargs)
    model.load_state_dict(start_state)
    model = model.to(device).eval()
    annotator = Annotator(web)
    g = torch.Generator().manual_seed(seed * 7_919 + 3)
    lam = {"worthiness": (lambda1, lambda2), "entropy": (1.0, 0.0), "diversity": (0.0, 1.0)}.get(selector)
    labeled = torch.full((len(web),), UNLABELED, dtype=torch.long)   # L: annotated labels (-1 = none/rejected)
    looked = torch.zeros(len(web), dtype=torch.bool)
    given = web.labels.cpu()
    truth = web.clean_labels.cpu() if web.clean_labels is not None else given
    is_face = web.is_face.cpu() if web.is_face is not None else torch.ones(len(web), dtype=torch.bool)
    result = IncrementalResult(selector, seed, config={
        "rounds": rounds, "b": b, "w": w, "lambda1": lambda1, "lambda2": lambda2, "alpha": alpha, "grid": grid,
        "fraction": fraction, "steps": steps, "lr": lr, "replay_train": replay_train, "annotate": annotate})
    metrics = engine.evaluate(model, test, device=device)
    result.rounds.append(RoundRecord(0, metrics["accuracy"], metrics["mean_class_accuracy"], 0, 0.0, 0, 0, 0, 0, 0,
                                     0, 0.0))
    result.selected.append(torch.empty(0, dtype=torch.long))
    for T in range(1, rounds + 1):
        t0 = time.perf_counter()
        if selector in CONTROLS:        # the controls: the same steps on training images only, no web image
            data = train
            if selector == REPLAY_ONLY:
                n = min(len(train), expected_round_size(b, web, replay_train, len(train)))
                data = train.subset(torch.randperm(len(train), generator=g)[:n])
            model.train()
            _fit_round(model, data, cfg=cfg, steps=steps, lr=lr, device=device, seed=seed * 101 + T,
                       progress=progress)
            metrics = engine.evaluate(model, test, device=device)
            result.rounds.append(RoundRecord(T, metrics["accuracy"], metrics["mean_class_accuracy"], 0, 0.0, 0, 0,
                                             0, 0, 0, 0, time.perf_counter() - t0))
            result.selected.append(torch.empty(0, dtype=torch.long))
            continue
        # H <- J(M_{T-1}(L), L): labeled candidates the current model gets wrong (before this round's fine-tune)
        have = (labeled >= 0).nonzero().flatten()
        hard = torch.empty(0, dtype=torch.long)
        if len(have):
            pred = engine.predict(model, web.subset(have), device=device).labels
            hard = have[pred != labeled[have]]
        # Z <- Q(W^s, b)
        unlooked = ~looked
        if selector == "random":
            cand = unlooked.nonzero().flatten()
            picked = cand[torch.randperm(len(cand), generator=g)[:b]]
        else:
            rows = unlooked.nonzero().flatten()
            P = patch_probs(model, web, rows, grid=grid, fraction=fraction, device=device)
            W = worthiness(P, lam[0], lam[1], alpha).W
            picked = rows[randomized_select(W, b, w, g)]
        looked[picked] = True
        if annotate:
            answers = annotator.annotate(picked)
            labeled[picked] = answers
            use = picked[answers >= 0]
            use_labels = answers[answers >= 0]
            used_wrong = 0
        else:           # no expert: the crawl's labels as given, non-faces included
            use, use_labels = picked, given[picked]
            labeled[picked] = use_labels
            used_wrong = int(((~is_face[picked]) | (given[picked] != truth[picked])).sum())
        rows_ft = torch.cat([use, hard[~torch.isin(hard, use)]])
        labels_ft = labeled[rows_ft]
        parts = [(web.subset(rows_ft), labels_ft)]
        if replay_train is True:
            parts.insert(0, (train, train.labels))
        elif replay_train is not False and float(replay_train) > 0:
            n_replay = min(len(train), int(round(float(replay_train) * len(rows_ft))))
            sample = torch.randperm(len(train), generator=g)[:n_replay]
            parts.insert(0, (train.subset(sample), train.labels[sample]))
        data = concat(parts)
        result.web_share.append(len(rows_ft) / max(1, len(data)))
        model.train()
        _fit_round(model, data, cfg=cfg, steps=steps, lr=lr, device=device, seed=seed * 101 + T, progress=progress)
        metrics = engine.evaluate(model, test, device=device)
        face = is_face[picked]
        result.rounds.append(RoundRecord(
            T, metrics["accuracy"], metrics["mean_class_accuracy"], len(picked),
            annotator.cost if annotate else 0.0, len(picked), int((~face).sum()),
            int((face & (given[picked] != truth[picked])).sum()), len(use), used_wrong, len(hard),
            time.perf_counter() - t0))
        result.selected.append(picked)
    result.annotator = annotator.summary()
    if keep_state:
        result.state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return result
