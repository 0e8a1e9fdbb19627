"""Active learning: the query strategies compared in FUCLE's Table 1, and the loop that runs them.

FUCLE (the paper behind notebook 01) compares nine strategies on FER13, RAF-DB and KDEF before adding its own
pre-training: random sampling, entropy, margin, least confidence, BADGE, GLISTER, CoreSet, BALD and adversarial
DeepFool. This module gives all nine one interface,

    strategy = get("least_confidence", seed=0)
    picked = strategy.query(model, pool, labeled_mask, n)        # LongTensor of n distinct unlabeled pool rows

and keeps the selection rules as pure functions on tensors (`least_confidence_scores`, `kcenter_greedy`,
`badge_select`, `glister_select`, ...) so a student can call them on a hand-made example and a benchmark can time
them without a network. `run_active_learning` is the usual pool-based loop: train on the labeled rows, query a
batch, "ask the oracle" (reveal those rows' labels), retrain, repeat.

Conventions used throughout:

* Scores are "higher = query first" for every uncertainty measure.
* The model follows `fernb.models.features_and_logits`: embedding e = pooled penultimate features (D numbers),
  logits z = classifier(e) (K numbers), p = softmax(z). CoreSet, BADGE, GLISTER and BALD all work on (e, p).
* A strategy may read `pool.labels` only where `labeled_mask` is True. `run_active_learning` enforces it by
  passing a view of the pool in which unlabeled rows carry label -1 and no clean/soft labels.
* Nothing builds an N x N matrix (DESIGN.md, performance rules): CoreSet, BADGE and GLISTER keep O(N) running
  vectors and touch the (N, D) embeddings through matrix-vector products or chunked blocks.

References
----------
Settles, B. "Active Learning Literature Survey". Univ. of Wisconsin-Madison, CS Tech. Report 1648, 2009
    (least confidence, margin and entropy sampling).
Wang, D. & Shang, Y. "A new active labeling method for deep learning". IJCNN 2014 (FUCLE's ref. [23]).
Houlsby, N. et al. "Bayesian Active Learning for Classification and Preference Learning". arXiv:1112.5745, 2011.
Gal, Y., Islam, R. & Ghahramani, Z. "Deep Bayesian Active Learning with Image Data". ICML 2017 (BALD + MC dropout).
Sener, O. & Savarese, S. "Active Learning for Convolutional Neural Networks: A Core-Set Approach". ICLR 2018.
Ash, J. T. et al. "Deep Batch Active Learning by Diverse, Uncertain Gradient Lower Bounds". ICLR 2020 (BADGE).
Arthur, D. & Vassilvitskii, S. "k-means++: The Advantages of Careful Seeding". SODA 2007.
Killamsetty, K. et al. "GLISTER: Generalization based Data Subset Selection for Efficient and Robust Learning".
    AAAI 2021.
Ducoffe, M. & Precioso, F. "Adversarial Active Learning for Deep Networks: a Margin Based Approach".
    arXiv:1802.09841, 2018 (DFAL).
Moosavi-Dezfooli, S.-M., Fawzi, A. & Frossard, P. "DeepFool: a simple and accurate method to fool deep neural
    networks". CVPR 2016.
Huang, K.-H. "DeepAL: Deep Active Learning in Python". arXiv:2111.15258, 2021 (the toolkit whose loop design,
    retraining from the initialization each round, is followed here).
"""
from __future__ import annotations

import contextlib
import copy
import threading
import time
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.nn import functional as F

from .. import engine
from ..data.dataset import UNLABELED, FERDataset

__all__ = [
    "Strategy", "RandomSampling", "LeastConfidence", "MarginSampling", "EntropySampling", "BALDDropout",
    "CoreSet", "BADGE", "GLISTER", "AdversarialDeepFool", "STRATEGIES", "get",
    "least_confidence_scores", "margin_scores", "entropy_scores", "bald_scores", "mc_dropout_probs",
    "kcenter_greedy", "gradient_embeddings", "gradient_sq_distances", "badge_select", "glister_select",
    "deepfool_perturbation_norms", "Measurement", "measure", "ALResult", "run_active_learning",
]


# ---------------------------------------------------------------------------------------------------------------
# Uncertainty scores (pure functions; higher = more informative)
# ---------------------------------------------------------------------------------------------------------------
def least_confidence_scores(probs: torch.Tensor) -> torch.Tensor:
    """Least confidence (Settles 2009): 1 - max_k p(k|x). probs (N, K) -> (N,)."""
    return 1.0 - probs.max(dim=1).values


def margin_scores(probs: torch.Tensor) -> torch.Tensor:
    """Margin sampling (Settles 2009; Scheffer et al. 2001): the negated margin -(p(y1|x) - p(y2|x)), y1/y2 the two
    most probable classes, so a sample between two classes (margin near 0) scores highest. probs (N, K>=2) -> (N,).

    Negation is exact in floating point, so the ranking is that of the margins themselves; the textbook
    1 - margin rounds in float32 and ties margins up to ~3e-8 apart."""
    top2 = probs.topk(2, dim=1).values
    return -(top2[:, 0] - top2[:, 1])


def entropy_scores(probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy (Settles 2009; Shannon): H[p] = -sum_k p_k log p_k in nats, 0 log 0 = 0. (N, K) -> (N,)."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def bald_scores(mc_probs: torch.Tensor) -> torch.Tensor:
    """BALD (Houlsby et al. 2011; Gal et al. 2017, eq. for the mutual information I[y; w | x, D]).

    mc_probs (T, N, K): softmax outputs of T stochastic forward passes (MC dropout samples of the weights w).
    I = H[ mean_t p_t ] - mean_t H[p_t]: the entropy of the averaged prediction minus the average entropy. It is high
    when the passes are individually confident but disagree with each other (epistemic uncertainty), and ~0 when
    every pass says the same thing, however uncertain that thing is.
    """
    mean_entropy = entropy_scores(mc_probs).mean(dim=0)
    return (entropy_scores(mc_probs.mean(dim=0)) - mean_entropy).clamp_min(0.0)


def mc_dropout_probs(classifier: nn.Module, embeddings: torch.Tensor, *, T: int = 20, p: float = 0.5,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """(T, N, K) softmax outputs of classifier(dropout(embeddings, p)) with seeded inverted-dropout masks."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    out = []
    for _ in range(T):
        keep = (torch.rand(embeddings.shape, generator=g, device=g.device) >= p).to(embeddings)
        out.append(classifier(embeddings * keep / (1.0 - p)).float().softmax(dim=1))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------------------------
# CoreSet: k-center greedy
# ---------------------------------------------------------------------------------------------------------------
def _sq_norms(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    return torch.cat([c.pow(2).sum(dim=1) for c in x.split(chunk_size)])


@torch.no_grad()
def kcenter_greedy(embeddings: torch.Tensor, labeled_mask: torch.Tensor, n: int, *, chunk_size: int = 4096,
                   generator: torch.Generator | None = None) -> torch.LongTensor:
    """k-center greedy of Sener & Savarese (2018, Alg. 1) on `embeddings` (N, D); returns n unlabeled row indices.

    Each step adds u = argmax_{i unlabeled} min_{j in centers} ||x_i - x_j||, the point worst covered by the labeled
    set plus the picks so far (a 2-approximation of the k-center problem that bounds the core-set loss). The min over
    centers is kept in one running vector `delta` of length N:

    * initialisation: delta_i = min_{j labeled} ||x_i - x_j||^2, computed block by block (chunk_size rows x
      chunk_size labeled columns at a time, ||a-b||^2 = ||a||^2 + ||b||^2 - 2 a.b);
    * after picking u: delta <- min(delta, ||x - x_u||^2), one matrix-vector product x @ x_u.

    Memory is O(N + chunk_size^2) beyond the embeddings themselves, never N x N. Squared distances rank the same as
    distances. If nothing is labeled, the first center is a uniformly random unlabeled point drawn from `generator`
    (seed 0 if None). The paper's robust (outlier-tolerant MIP) variant is not implemented; the greedy one is what
    the toolkits FUCLE compares against use.
    """
    x = embeddings if embeddings.dtype in (torch.float32, torch.float64) else embeddings.float()
    device = x.device
    labeled = torch.as_tensor(labeled_mask, dtype=torch.bool).to(device)
    N = x.shape[0]
    if labeled.shape[0] != N:
        raise ValueError(f"labeled_mask has {labeled.shape[0]} rows for {N} embeddings")
    n = min(int(n), int((~labeled).sum()))
    if n <= 0:
        return torch.empty(0, dtype=torch.long)
    sq = _sq_norms(x, chunk_size)
    delta = torch.full((N,), float("inf"), dtype=x.dtype, device=device)
    centers = labeled.nonzero().flatten()
    for r0 in range(0, N if centers.numel() else 0, chunk_size):
        rows = slice(r0, min(r0 + chunk_size, N))
        for cols in centers.split(chunk_size):
            block = torch.addmm(sq[rows, None] + sq[cols][None, :], x[rows], x[cols].T, alpha=-2.0)
            delta[rows] = torch.minimum(delta[rows], block.min(dim=1).values)
    # Labeled and already-picked rows are taken out of the argmax by -inf; torch.minimum keeps them there.
    delta[labeled] = float("-inf")
    picked = torch.empty(n, dtype=torch.long, device=device)
    start = 0
    if centers.numel() == 0:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        unlabeled = (~labeled).nonzero().flatten()
        first = unlabeled[int(torch.randint(len(unlabeled), (1,), generator=g))]
        picked[0] = first
        _kcenter_update(delta, x, sq, first)
        start = 1
    for k in range(start, n):
        u = delta.argmax()  # a 0-d tensor: no host sync on CUDA
        picked[k] = u
        _kcenter_update(delta, x, sq, u)
    return picked.cpu()


def _kcenter_update(delta: torch.Tensor, x: torch.Tensor, sq: torch.Tensor, u: torch.Tensor) -> None:
    """delta <- min(delta, ||x - x_u||^2) in place (one matrix-vector product), then take u out (-inf)."""
    d = torch.addmv(sq, x, x[u], alpha=-2.0).add_(sq[u]).clamp_(min=0.0)
    torch.minimum(delta, d, out=delta)
    delta[u] = float("-inf")


# ---------------------------------------------------------------------------------------------------------------
# BADGE: k-means++ seeding on last-layer gradient embeddings, without materializing them
# ---------------------------------------------------------------------------------------------------------------
def _hypothesis_residual(probs: torch.Tensor) -> torch.Tensor:
    """a = p - onehot(argmax p): d(cross-entropy)/d(logits) at the hypothesized label y_hat = argmax p."""
    a = (probs if probs.dtype in (torch.float32, torch.float64) else probs.float()).clone()
    a[torch.arange(len(a), device=a.device), a.argmax(dim=1)] -= 1.0
    return a


def gradient_embeddings(probs: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """BADGE's gradient embedding g_i = (p_i - onehot(y_hat_i)) (x) e_i, materialized as (N, K*D).

    g_i is the gradient of the cross-entropy at the hypothesized label with respect to the last layer's weight W
    (K x D), flattened row-major. Only for teaching and tests: `badge_select` never builds it (K*D numbers a row).
    """
    a = _hypothesis_residual(probs)
    return (a[:, :, None] * embeddings.float()[:, None, :]).flatten(1)


def gradient_sq_distances(probs: torch.Tensor, embeddings: torch.Tensor, center: int) -> torch.Tensor:
    """||g_i - g_c||^2 for every row i to row `center`, through the rank-one identity

        ||a_i (x) e_i - a_c (x) e_c||^2 = ||a_i||^2 ||e_i||^2 + ||a_c||^2 ||e_c||^2 - 2 (a_i . a_c)(e_i . e_c),

    which costs O(N (K + D)) instead of O(N K D) and never forms g."""
    a, e = _hypothesis_residual(probs), embeddings.float()
    gn = a.pow(2).sum(1) * e.pow(2).sum(1)
    return (gn + gn[center] - 2.0 * (a @ a[center]) * (e @ e[center])).clamp_min(0.0)


def _sample_proportional(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index drawn with probability weights_i / sum(weights) (weights >= 0, sum > 0), seeded by `generator`.

    Inverse-CDF sampling with the uniform drawn on the generator's device, so a CPU generator can drive CUDA data.
    """
    cdf = weights.double().cumsum(0)
    u = torch.rand((), generator=generator, device=generator.device, dtype=torch.float64).to(weights.device)
    i = torch.searchsorted(cdf, (u * cdf[-1]).reshape(1), right=True)
    return i.clamp_max(len(weights) - 1)[0]


@torch.no_grad()
def badge_select(probs: torch.Tensor, embeddings: torch.Tensor, labeled_mask: torch.Tensor, n: int,
                 generator: torch.Generator | None = None, *, chunk_size: int = 65536) -> torch.LongTensor:
    """BADGE (Ash et al. 2020, Alg. 1): k-means++ seeding over gradient embeddings of the unlabeled rows.

    g_i = (p_i - onehot(y_hat_i)) (x) e_i (see `gradient_embeddings`); its norm measures uncertainty (a confident
    prediction has a ~ 0) and k-means++ spreads the picks over different directions (diversity). As in the authors'
    code, the first center is the row with the largest ||g_i||; each next center is drawn with probability
    proportional to D^2(g_i) = min over chosen centers of ||g_i - g_c||^2 (Arthur & Vassilvitskii 2007).

    D^2 is kept as a running vector and updated per new center with the identity of `gradient_sq_distances`:
    two matrix-vector products (a @ a_c, e @ e_c), processed in row chunks of `chunk_size`. Memory O(N (K + D))
    for the candidate rows, never the (N, K*D) gradient embeddings and never N x N. Only unlabeled rows are
    candidates (BADGE's labeled set plays no part in the seeding). If every remaining D^2 is 0 (duplicates), the
    next center is drawn uniformly among the unchosen rows.
    """
    labeled = torch.as_tensor(labeled_mask, dtype=torch.bool).to(probs.device)
    candidates = (~labeled).nonzero().flatten()
    n = min(int(n), len(candidates))
    if n <= 0:
        return torch.empty(0, dtype=torch.long)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    e = embeddings[candidates]
    e = e if e.dtype in (torch.float32, torch.float64) else e.float()
    a = _hypothesis_residual(probs[candidates]).to(e.dtype)
    gn = a.pow(2).sum(1) * _sq_norms(e, chunk_size)
    M = len(candidates)
    d2 = torch.full((M,), float("inf"), dtype=e.dtype, device=e.device)
    chosen = torch.zeros(M, dtype=torch.bool, device=e.device)
    picked = torch.empty(n, dtype=torch.long, device=e.device)
    c = gn.argmax()
    for k in range(n):
        picked[k] = c
        chosen[c] = True
        if k == n - 1:
            break
        a_c, e_c, gn_c = a[c], e[c], gn[c]
        for r0 in range(0, M, chunk_size):
            rows = slice(r0, min(r0 + chunk_size, M))
            dist = (e[rows] @ e_c).mul_(a[rows] @ a_c).mul_(-2.0).add_(gn[rows]).add_(gn_c).clamp_(min=0.0)
            torch.minimum(d2[rows], dist, out=d2[rows])
        weights = torch.where(chosen, torch.zeros_like(d2), d2)
        if not bool(weights.sum() > 0):
            weights = (~chosen).to(d2)
        c = _sample_proportional(weights, g)
    return candidates[picked].cpu()


# ---------------------------------------------------------------------------------------------------------------
# GLISTER (active variant, last layer, first-order Taylor, online update of the validation gradient)
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def glister_select(probs: torch.Tensor, embeddings: torch.Tensor, labeled_mask: torch.Tensor, n: int,
                   val_logits: torch.Tensor, val_embeddings: torch.Tensor, val_labels: torch.Tensor, *,
                   eta: float = 1e-3, bias: bool = True, picks_per_update: int = 1,
                   chunk_size: int = 65536) -> torch.LongTensor:
    """GLISTER-ACTIVE (Killamsetty et al. 2021): greedy subset selection that maximizes the drop of the validation
    loss after one gradient step on the chosen rows, with the first-order Taylor approximation of GLISTER-ONLINE.

    Bi-level objective: argmin_{S, |S| <= n} L_V(argmin_theta L_T(theta, S)). GLISTER-ONLINE replaces
    the inner argmin by one step theta_S = theta - eta * sum_{j in S} grad L_T^j(theta), and the outer loss by its
    Taylor expansion, so the gain of adding row i to S is

        G_theta_S(i) ~ eta * grad L_T^i(theta_S) . grad L_V(theta_S).

    Greedily: pick argmax_i g_i . G_V, update theta_S <- theta_S - eta * g_i, recompute G_V = grad L_V(theta_S),
    repeat. Here, as in the DISTIL/cords active-learning implementations:

    * theta is only the last layer (W: K x D, and the bias if `bias`), so per-row gradients are rank-one,
      g_i = a_i (x) e~_i with a_i = p_i - onehot(y_hat_i) and e~_i = [e_i, 1]; the hypothesized label y_hat_i of an
      unlabeled row is the model's prediction argmax p_i (labels are what active learning does not have).
    * the gain is a_i^T G_V e~_i, i.e. rowsum((E~ @ G_V^T) * A) over candidate rows in chunks of `chunk_size`:
      N x K numbers per step, never the N x K(D+1) gradients.
    * the online update moves only the validation logits: z_v <- z_v - eta * sum_{s picked} a_s (e~_s . e~_v),
      exactly the effect of the one-step update of W on a linear last layer; G_V = mean_v (softmax(z_v) -
      onehot(y_v)) (x) e~_v is then recomputed (M x K(D+1), M = #validation rows).

    Simplifications (documented, not in the paper): the backbone is frozen (no full-network gradients); the
    labeled rows' own gradient step that DISTIL applies to theta before the greedy loop is skipped (the model was
    just trained to convergence on them); no regularizer (the paper's random / facility-location / diversity
    variants) and no stochastic or lazy greedy. `picks_per_update` > 1 takes that many top-gain rows per
    validation update (a speed knob; 1 is GLISTER-ONLINE's greedy). Each step costs O(N K (D+1) + M K (D+1)).
    """
    labeled = torch.as_tensor(labeled_mask, dtype=torch.bool).to(probs.device)
    candidates = (~labeled).nonzero().flatten()
    n = min(int(n), len(candidates))
    if n <= 0:
        return torch.empty(0, dtype=torch.long)
    K = probs.shape[1]
    a = _hypothesis_residual(probs[candidates])
    e = embeddings[candidates].float()
    ev = val_embeddings.float().to(e.device)
    if bias:
        e = torch.cat([e, e.new_ones(len(e), 1)], dim=1)
        ev = torch.cat([ev, ev.new_ones(len(ev), 1)], dim=1)
    zv = val_logits.float().to(e.device).clone()
    yv = F.one_hot(val_labels.long().to(e.device), K).float()
    if len(zv) == 0:
        raise ValueError("glister_select needs at least one validation row")

    def val_gradient() -> torch.Tensor:  # G_V (K, D~): mean over validation rows of (p_v - y_v) (x) e~_v
        return (zv.softmax(dim=1) - yv).T @ ev / len(ev)

    M = len(candidates)
    taken = torch.zeros(M, dtype=torch.bool, device=e.device)
    # Buffers reused every step: per-step temporaries interleaved with small long-lived tensors fragment the CPU
    # heap (measured: RSS grew by ~1.3 MB per pick on a 50,000-row pool before this).
    gains = torch.empty(M, dtype=e.dtype, device=e.device)
    work = torch.empty(min(chunk_size, M), K, dtype=e.dtype, device=e.device)
    picked = torch.empty(n, dtype=torch.long, device=e.device)
    count = 0
    grad_v = val_gradient()
    while count < n:
        grad_t = grad_v.T  # a transposed view: BLAS reads it as is (faster here than a contiguous copy)
        for r0 in range(0, M, chunk_size):
            r1 = min(r0 + chunk_size, M)
            buf = work[: r1 - r0]
            torch.mm(e[r0:r1], grad_t, out=buf)
            torch.sum(buf.mul_(a[r0:r1]), dim=1, out=gains[r0:r1])
        gains.masked_fill_(taken, float("-inf"))
        k = min(max(1, int(picks_per_update)), n - count)
        # argmax / stable sort: ties go to the lower row, so picks do not depend on topk's internal order
        best = gains.argmax().view(1) if k == 1 else torch.sort(gains, descending=True, stable=True).indices[:k]
        picked[count:count + k] = best
        taken[best] = True
        count += k
        if count < n:
            zv -= eta * (ev @ e[best].T) @ a[best]
            grad_v = val_gradient()
    return candidates[picked].cpu()


# ---------------------------------------------------------------------------------------------------------------
# DeepFool (batched, all K classes)
# ---------------------------------------------------------------------------------------------------------------
def _input_jacobian(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d logits[b, k] / d x[b] for every row b and class k, (B, K, *x.shape[1:]).

    One vmapped backward pass over the K one-hot output directions (`is_grads_batched`); falls back to K ordinary
    backward passes for models with an op that has no batching rule.
    """
    K = logits.shape[1]
    directions = torch.eye(K, dtype=logits.dtype, device=logits.device)[:, None, :].expand(K, *logits.shape)
    try:
        grads = torch.autograd.grad(logits, x, grad_outputs=directions, is_grads_batched=True,
                                    retain_graph=True)[0]
    except RuntimeError:
        grads = torch.stack([torch.autograd.grad(logits[:, k].sum(), x, retain_graph=k < K - 1)[0]
                             for k in range(K)])
    return grads.transpose(0, 1)


def deepfool_perturbation_norms(model: nn.Module, x: torch.Tensor, *, max_iter: int = 50,
                                overshoot: float = 0.02) -> torch.Tensor:
    """L2 norm of the DeepFool perturbation (Moosavi-Dezfooli et al. 2016, Alg. 2, multi-class) for each row of x.

    For the current label k0 and every other class k: w_k = grad f_k - grad f_k0, f'_k = f_k - f_k0; step to the
    nearest linearized boundary l = argmin_k |f'_k| / ||w_k||, r_i = (|f'_l| / ||w_l|| + 1e-4) w_l / ||w_l||,
    r_tot += r_i, and re-evaluate at x + (1 + overshoot) r_tot until the label changes or `max_iter` is reached.
    Returns ||(1 + overshoot) r_tot|| (the perturbation that flips the label), shape (B,), on x's device.
    A row whose input gradients are all zero (a dead input: saturated units, a constant image) cannot be moved
    towards any boundary: its norm is +inf, so DFAL queries it last rather than first.

    DFAL (Ducoffe & Precioso 2018) uses this norm as a proxy of the distance to the decision boundary and queries
    the smallest ones. Batched: all rows step together (a row leaves the batch once its label flips); the K input
    gradients come from one vmapped backward pass over the K outputs (`_input_jacobian`), summed over rows, valid
    because rows do not interact in eval mode (BatchNorm uses running statistics). Rows that have not flipped after `max_iter` keep the norm reached (a
    lower bound on their distance). For a linear binary model one step is exact: the norm is
    (1 + overshoot)(|w.x + b| / ||w|| + 1e-4). The model must be in eval mode (callers set it).
    """
    x0 = x.detach().float()
    B = len(x0)
    r_tot = torch.zeros_like(x0)
    with torch.no_grad():
        k0 = model(x0).argmax(dim=1)
    active = torch.arange(B, device=x0.device)
    dead = torch.zeros(B, dtype=torch.bool, device=x0.device)
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        xa = (x0[active] + (1.0 + overshoot) * r_tot[active]).requires_grad_(True)
        with torch.enable_grad():
            logits = model(xa).float()
            grads = _input_jacobian(logits, xa)  # (b, K, ...)
        logits = logits.detach()
        still = logits.argmax(dim=1) == k0[active]
        if not bool(still.any()):
            break
        active, logits, grads = active[still], logits[still], grads[still]
        k_orig = k0[active]
        rows = torch.arange(len(active), device=x0.device)
        f = logits - logits[rows, k_orig][:, None]                     # f'_k, (b, K)
        w = grads - grads[rows, k_orig][:, None]                       # w_k, (b, K, ...)
        w_norm = w.flatten(2).norm(dim=2)                              # (b, K); 0 in the k0 column
        dead[active] |= w_norm.amax(dim=1) <= 1e-12                    # no direction moves any logit gap
        w_norm = w_norm.clamp_min(1e-12)
        dist = f.abs() / w_norm
        dist[rows, k_orig] = float("inf")
        l = dist.argmin(dim=1)
        step = (dist[rows, l] + 1e-4) / w_norm[rows, l]
        r_tot[active] += step.view(-1, *[1] * (x0.dim() - 1)) * w[rows, l]
    norms = ((1.0 + overshoot) * r_tot).flatten(1).norm(dim=1)
    return norms.masked_fill(dead, float("inf"))


# ---------------------------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------------------------
class Strategy:
    """Base class: `query(model, pool, labeled_mask, n)` -> n distinct unlabeled row indices of `pool`.

    Subclasses implement `_select` for the case 0 < n < #unlabeled; `query` handles the edges (n <= 0: nothing;
    n >= #unlabeled: every unlabeled row) and checks the contract. Randomness comes from `self.generator`, seeded
    with `seed` and advanced by every query, so a strategy built with the same seed and called in the same order
    returns the same picks; `reset()` rewinds it.
    """
    name = "strategy"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        self.generator.manual_seed(self.seed)

    def query(self, model: nn.Module, pool: FERDataset, labeled_mask: torch.Tensor, n: int, *, device=None,
              val: FERDataset | None = None, batch_size: int = 256) -> torch.LongTensor:
        labeled_mask = torch.as_tensor(labeled_mask, dtype=torch.bool).cpu()
        if labeled_mask.shape != (len(pool),):
            raise ValueError(f"labeled_mask must have shape ({len(pool)},), got {tuple(labeled_mask.shape)}")
        unlabeled = (~labeled_mask).nonzero().flatten()
        n = int(n)
        if n <= 0:
            return torch.empty(0, dtype=torch.long)
        if n >= len(unlabeled):
            return unlabeled.clone()
        device = engine.resolve_device(device)
        picked = self._select(model, pool, labeled_mask, unlabeled, n, device=device, val=val,
                              batch_size=batch_size).cpu().long()
        if len(picked) != n or len(picked.unique()) != n or bool(labeled_mask[picked].any()):
            raise RuntimeError(f"{self.name}: query broke the contract (n={n}, got {len(picked)} rows)")
        return picked

    def _select(self, model, pool, labeled_mask, unlabeled, n, *, device, val, batch_size) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, seed={self.seed})"


def _top(scores: torch.Tensor, n: int, descending: bool = True) -> torch.Tensor:
    """Positions of the n best scores; ties go to the lower position (stable sort) so picks are deterministic."""
    return torch.sort(scores, descending=descending, stable=True).indices[:n]


class RandomSampling(Strategy):
    """Uniform random sampling of the unlabeled rows (FUCLE Table 1's baseline), seeded."""
    name = "random"

    def _select(self, model, pool, labeled_mask, unlabeled, n, **_):
        return unlabeled[torch.randperm(len(unlabeled), generator=self.generator)[:n]]


class _ScoreSampling(Strategy):
    """Top-n unlabeled rows by an uncertainty score of the softmax output."""

    @staticmethod
    def scores(probs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _select(self, model, pool, labeled_mask, unlabeled, n, *, device, batch_size, **_):
        probs = engine.predict(model, pool.subset(unlabeled), batch_size=batch_size, device=device).probs
        return unlabeled[_top(self.scores(probs), n)]


class LeastConfidence(_ScoreSampling):
    """Least confidence (Settles 2009; Wang & Shang 2014): query the rows whose top probability is lowest."""
    name = "least_confidence"
    scores = staticmethod(least_confidence_scores)


class MarginSampling(_ScoreSampling):
    """Margin sampling (Settles 2009): query the rows with the smallest gap between the two top probabilities."""
    name = "margin"
    scores = staticmethod(margin_scores)


class EntropySampling(_ScoreSampling):
    """Entropy sampling (Settles 2009): query the rows with the highest predictive entropy."""
    name = "entropy"
    scores = staticmethod(entropy_scores)


class BALDDropout(Strategy):
    """BALD with MC dropout (Gal et al. 2017): query the rows with the highest mutual information `bald_scores`.

    The T (default 20) stochastic passes drop units of the *embedding* (p = 0.5) in front of the classifier:
    embeddings are computed once with the whole model in eval mode, then classifier(dropout(e)) runs T times.
    BatchNorm therefore never sees train mode (switching the model to train() for MC dropout would also switch BN
    to batch statistics and update its running buffers), and the T passes cost T linear layers instead of T
    backbones. This is also where dropout sits in timm's heads (`drop_rate`, applied functionally just before the
    classifier), which is why the model's own dropout is not used even when present: timm's head dropout is a
    functional call that no module switch reaches, nn.Dropout layers inside ViT blocks would need T full forward
    passes, and fernb's models default to drop_rate = 0. It is MC dropout on the last layer, an approximation of
    Gal et al.'s full-network posterior; masks are drawn from the strategy's seeded generator.
    """
    name = "bald"

    def __init__(self, seed: int = 0, T: int = 20, dropout: float = 0.5, chunk_size: int = 8192):
        super().__init__(seed)
        self.T, self.dropout, self.chunk_size = T, dropout, chunk_size

    def _select(self, model, pool, labeled_mask, unlabeled, n, *, device, batch_size, **_):
        emb = engine.predict(model, pool.subset(unlabeled), batch_size=batch_size, device=device,
                             embeddings=True).embeddings
        classifier = copy.deepcopy(model.get_classifier()).float().cpu().eval()
        with torch.no_grad():
            scores = torch.cat([bald_scores(mc_dropout_probs(classifier, chunk, T=self.T, p=self.dropout,
                                                             generator=self.generator))
                                for chunk in emb.split(self.chunk_size)])
        return unlabeled[_top(scores, n)]


class CoreSet(Strategy):
    """CoreSet (Sener & Savarese 2018): k-center greedy on the embeddings of the whole pool (labeled rows are the
    initial centers); see `kcenter_greedy`."""
    name = "coreset"

    def __init__(self, seed: int = 0, chunk_size: int = 4096):
        super().__init__(seed)
        self.chunk_size = chunk_size

    def _select(self, model, pool, labeled_mask, unlabeled, n, *, device, batch_size, **_):
        emb = engine.predict(model, pool, batch_size=batch_size, device=device, embeddings=True).embeddings
        return kcenter_greedy(emb.to(device), labeled_mask, n, chunk_size=self.chunk_size,
                              generator=self.generator)


class BADGE(Strategy):
    """BADGE (Ash et al. 2020): k-means++ seeding over last-layer gradient embeddings; see `badge_select`."""
    name = "badge"

    def _select(self, model, pool, labeled_mask, unlabeled, n, *, device, batch_size, **_):
        pred = engine.predict(model, pool.subset(unlabeled), batch_size=batch_size, device=device, embeddings=True)
        none = torch.zeros(len(unlabeled), dtype=torch.bool)
        return unlabeled[badge_select(pred.probs.to(device), pred.embeddings.to(device), none, n, self.generator)]


class GLISTER(Strategy):
    """GLISTER-ACTIVE (Killamsetty et al. 2021) on the last layer; see `glister_select` for the simplifications.

    The validation loss L_V uses `val` (its labeled rows) when given. Without one, as DISTIL does, it uses the pool
    itself: labeled rows with their labels and unlabeled rows with the model's predicted labels. `eta` is the step
    size of the one-step inner update (GLISTER uses the training learning rate; 1e-3 is fernb.engine.fit's default).
    """
    name = "glister"

    def __init__(self, seed: int = 0, eta: float = 1e-3, picks_per_update: int = 1):
        super().__init__(seed)
        self.eta, self.picks_per_update = eta, picks_per_update

    def _select(self, model, pool, labeled_mask, unlabeled, n, *, device, val, batch_size, **_):
        pred = engine.predict(model, pool, batch_size=batch_size, device=device, embeddings=True)
        if val is not None:
            keep = (val.labels >= 0).nonzero().flatten().cpu()
            vpred = engine.predict(model, val.subset(keep), batch_size=batch_size, device=device, embeddings=True)
            val_logits, val_emb, val_labels = vpred.logits, vpred.embeddings, val.labels.cpu()[keep]
        else:
            val_logits, val_emb = pred.logits, pred.embeddings
            val_labels = torch.where(labeled_mask, pool.labels.cpu(), pred.labels)
        classifier = model.get_classifier()
        bias = getattr(classifier, "bias", None) is not None
        return glister_select(pred.probs.to(device), pred.embeddings.to(device), labeled_mask, n,
                              val_logits.to(device), val_emb.to(device), val_labels.to(device), eta=self.eta,
                              bias=bias, picks_per_update=self.picks_per_update)


def deepfool_batch_size(model: nn.Module, pool: FERDataset, rows: torch.Tensor, device=None, *,
                        fraction: float = 0.25, probe_rows: int = 16, cpu: int = 64, cap: int = 4096) -> int:
    """Rows per DeepFool batch on `device`: `cpu` (64) on the CPU, where a larger batch gains nothing; on CUDA as
    many as fit in `fraction` of the GPU's free memory (a quarter: other runs may share the GPU, see
    `fernb.parallel`), from the peak memory per row of one DeepFool iteration on a probe of `probe_rows` rows of
    `rows`, rounded down to a multiple of 64 and kept within [64, cap]. The K input gradients per row make DeepFool
    memory-hungry, and on a GPU the fixed batch of 64 left it launch-bound (13 s of a 15 s cycle in the issue)."""
    device = engine.resolve_device(device)
    if device.type != "cuda":
        return cpu
    probe = rows[:probe_rows]
    x = engine.batch_input(pool, probe, device)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    _restart_cuda_peak(device)
    deepfool_perturbation_norms(model, x, max_iter=1)
    torch.cuda.synchronize(device)
    per_row = max(1.0, (torch.cuda.max_memory_allocated(device) - base) / max(1, len(probe)))
    free, _ = torch.cuda.mem_get_info(device)
    rows_fit = int(fraction * free / per_row) // 64 * 64
    return int(min(cap, max(64, rows_fit)))


class AdversarialDeepFool(Strategy):
    """DFAL (Ducoffe & Precioso 2018): query the unlabeled rows with the smallest DeepFool perturbation, i.e. the
    ones closest to the decision boundary in input space; see `deepfool_perturbation_norms`.

    Only the query rule is implemented (as in the DeepAL toolkit): DFAL additionally adds the adversarial images
    with the queried labels to the training set, which is not done here. Perturbations live in the network's
    normalized input space. DeepFool needs K input gradients per iteration, so it runs in batches of
    `deepfool_batch_size` rows (None: sized to the device by `deepfool_batch_size`, 64 on the CPU); rows do not
    interact (eval mode), so the batch size changes the speed, not the norms. `candidates` (optional) restricts it
    to a seeded random subset of the unlabeled rows for large pools.
    """
    name = "deepfool"

    def __init__(self, seed: int = 0, max_iter: int = 50, overshoot: float = 0.02,
                 deepfool_batch_size: int | None = None, candidates: int | None = None):
        super().__init__(seed)
        self.max_iter, self.overshoot = max_iter, overshoot
        self.deepfool_batch_size, self.candidates = deepfool_batch_size, candidates

    def _select(self, model, pool, labeled_mask, unlabeled, n, *, device, **_):
        if self.candidates is not None and self.candidates < len(unlabeled):
            keep = torch.randperm(len(unlabeled), generator=self.generator)[:max(self.candidates, n)]
            unlabeled = unlabeled[keep.sort().values]
        model = model.to(device).eval()
        batch = self.deepfool_batch_size or deepfool_batch_size(model, pool, unlabeled, device)
        norms = []
        for index in unlabeled.split(batch):
            x = engine.batch_input(pool, index, device)
            norms.append(deepfool_perturbation_norms(model, x, max_iter=self.max_iter, overshoot=self.overshoot))
        return unlabeled[_top(torch.cat(norms).cpu(), n, descending=False)]


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    RandomSampling, LeastConfidence, MarginSampling, EntropySampling, BALDDropout, CoreSet, BADGE, GLISTER,
    AdversarialDeepFool)}


def get(name: str, **kwargs) -> Strategy:
    """A strategy by name (see `STRATEGIES`), built with `kwargs` (seed=..., and the strategy's own knobs)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; available: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Measuring time and memory
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """Filled in when the `measure()` block exits. Memory figures are increases over the start of the block, MiB."""
    seconds: float = float("nan")
    peak_rss_mb: float = float("nan")
    peak_cuda_mb: float | None = None
    rss_start_mb: float = float("nan")
    method: str = ""


_OPEN_CUDA: list[dict] = []   # CUDA measurements in progress (blocks nest: a run's total wraps its fits)


def _restart_cuda_peak(device: torch.device) -> None:
    """Reset CUDA's peak-memory counter, first handing the peak so far to every open `measure` block on that device,
    so a nested block (or DeepFool's probe) does not erase its enclosing block's peak."""
    peak = torch.cuda.max_memory_allocated(device)
    for frame in _OPEN_CUDA:
        if frame["device"] == device:
            frame["peak"] = max(frame["peak"], peak)
    torch.cuda.reset_peak_memory_stats(device)


def _lifetime_peak_rss() -> int:
    import resource
    import sys
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


@contextlib.contextmanager
def measure(device=None, interval: float = 0.01):
    """Wall time and peak memory of the block: `with measure() as m: ...; m.seconds, m.peak_rss_mb`.

    `device` ("auto", "cpu", "cuda", "cuda:1", resolved by `fernb.engine.resolve_device`) says what runs inside.
    On the CPU: the peak resident set size (RSS) of this process above its value at entry, from a daemon thread
    that samples RSS every `interval` seconds (10 ms; a spike shorter than that can be missed); without psutil,
    resource.getrusage's lifetime maximum RSS, which only shows a peak that exceeds every earlier one.
    tracemalloc is not used: it does not see torch's allocations.
    On CUDA: torch.cuda.max_memory_allocated above the allocation at entry (nested blocks keep their own peaks),
    and for the CPU side a coarse reading with no sampler thread, which would take the interpreter from the
    training loop every 10 ms: the RSS at exit, or the lifetime peak RSS when that rose inside the block.
    """
    m = Measurement()
    device = engine.resolve_device(device)
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.cuda.synchronize(device)
        cuda_start = torch.cuda.memory_allocated(device)
        _restart_cuda_peak(device)
        frame = {"device": device, "peak": 0}
        _OPEN_CUDA.append(frame)
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a transitive dependency of the notebook stack
        psutil = None
    stop = threading.Event()
    sampler = psutil is not None and not use_cuda
    lifetime_start = _lifetime_peak_rss()
    if psutil is not None:
        proc = psutil.Process()
        start = proc.memory_info().rss
        peak = [start]
    else:
        start = lifetime_start
    if sampler:
        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                stop.wait(interval)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        m.method = f"psutil RSS sampled every {interval * 1000:.0f} ms"
    elif psutil is not None:
        m.method = "RSS at exit or lifetime peak RSS if it rose (CUDA: no sampler thread); GPU: max_memory_allocated"
    else:
        m.method = "resource.getrusage ru_maxrss"
    m.rss_start_mb = start / 2**20
    t0 = time.perf_counter()
    try:
        yield m
    finally:
        if use_cuda:
            torch.cuda.synchronize(device)
        m.seconds = time.perf_counter() - t0
        if sampler:
            stop.set()
            thread.join()
            peak[0] = max(peak[0], proc.memory_info().rss)
            m.peak_rss_mb = (peak[0] - start) / 2**20
        elif psutil is not None:
            lifetime = _lifetime_peak_rss()
            top = max(proc.memory_info().rss, lifetime if lifetime > lifetime_start else 0)
            m.peak_rss_mb = max(0, top - start) / 2**20
        else:
            m.peak_rss_mb = max(0, _lifetime_peak_rss() - start) / 2**20
        if use_cuda:
            _OPEN_CUDA.remove(frame)
            top = max(frame["peak"], torch.cuda.max_memory_allocated(device))
            m.peak_cuda_mb = (top - cuda_start) / 2**20


# ---------------------------------------------------------------------------------------------------------------
# The active-learning loop
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ALResult:
    """What `run_active_learning` measured. `cycles` holds one dict per evaluation (cycle 0 = initial set)."""
    strategy: str
    cycles: list[dict] = field(default_factory=list)
    selected: list[torch.Tensor] = field(default_factory=list)   # rows added before each cycle's training
    labeled_mask: torch.Tensor | None = None                     # final labeled set
    wall_seconds: float = float("nan")
    peak_rss_mb: float = float("nan")
    peak_cuda_mb: float | None = None
    config: dict = field(default_factory=dict)

    def as_frame(self):
        """One row per cycle: cycle, n_labeled, accuracy, mean_class_accuracy, query/train seconds, ... selected."""
        import pandas as pd
        frame = pd.DataFrame(self.cycles)
        frame["selected"] = [s.tolist() for s in self.selected]
        return frame

    @property
    def final_accuracy(self) -> float:
        return self.cycles[-1]["accuracy"] if self.cycles else float("nan")

    @property
    def final_mean_class_accuracy(self) -> float:
        return self.cycles[-1]["mean_class_accuracy"] if self.cycles else float("nan")

    @property
    def labeled_counts(self) -> list[int]:
        return [c["n_labeled"] for c in self.cycles]


def _count(value, total: int, what: str) -> int:
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{what} as a fraction must be in [0, 1], got {value}")
        return max(1, round(value * total))
    return int(value)


def labeled_view(pool: FERDataset, mask: torch.Tensor) -> FERDataset:
    """What the learner may see: the oracle's labels (`pool.labels`) where `mask` is set, -1 elsewhere, and no
    clean or soft labels, so no strategy or training run can read a label it has not paid for."""
    oracle = pool.labels.cpu()
    labels = torch.where(mask.cpu(), oracle, torch.full_like(oracle, UNLABELED))
    return replace(pool, labels=labels.to(pool.labels.device), clean_labels=None, soft_labels=None)


@torch.no_grad()
def _pseudo_labels(model, pool: FERDataset, mask: torch.Tensor, threshold: float, device, batch_size: int):
    """Predicted labels of the unlabeled rows whose top probability exceeds `threshold` (-1 elsewhere)."""
    unlabeled = (~mask).nonzero().flatten()
    out = torch.full((len(pool),), UNLABELED, dtype=torch.long)
    if len(unlabeled) == 0:
        return out
    probs = engine.predict(model, pool.subset(unlabeled), batch_size=batch_size, device=device).probs
    confident = probs.max(1).values > threshold
    out[unlabeled[confident]] = probs.argmax(1)[confident]
    return out


def run_active_learning(strategy: Strategy | str, pool: FERDataset, test: FERDataset, *, model_fn,
                        initial_fraction: float = 0.1, initial_size: int | None = None, budget: int | float = 0.05,
                        cycles: int = 7, fit_kwargs: dict | None = None, seed: int = 0,
                        val: FERDataset | None = None, device=None, progress: bool = False,
                        initial_mask: torch.Tensor | None = None, batch_size: int = 256,
                        pseudo_label_threshold: float | None = None) -> ALResult:
    """Pool-based active learning: cycle 0 trains on the initial labeled set, then `cycles` rounds of
    query `budget` rows -> reveal their labels -> retrain -> evaluate on `test` (cycles + 1 evaluations).

    * Oracle: `pool.labels` are the annotator's answers. Training and querying see a view of the pool in which
      unlabeled rows carry label -1 (`fernb.engine.fit` skips them) and clean/soft labels are dropped, so no
      strategy can peek at labels it has not paid for.
    * Initial set: `initial_mask` if given, else `initial_size` rows (or `initial_fraction` of the pool) drawn
      uniformly at random with `seed`. Not stratified: a real active learner does not know the classes of the
      rows it has not labeled yet.
    * Budget per cycle: an int, or a float fraction of the pool. FUCLE's sensitivity study (Fig. 3) finds 5-15%
      initial sets and 7 cycles best, hence the defaults; its per-cycle budget is not stated.
    * Retraining: every cycle starts again from `model_fn()` (called after torch.manual_seed(seed), so a randomly
      initialized model is the same initialization every cycle; a pre-trained one loads its checkpoint inside
      model_fn), as the DeepAL toolkit does, rather than fine-tuning the previous cycle's model. It keeps cycles
      comparable and avoids the warm-start generalization gap, at the cost of training from scratch each time.
    * `fit_kwargs` go to `fernb.engine.fit` (epochs, batch_size, lr, augment, ...); `seed` is the fit seed unless
      given there. `val` is used by strategies that need a validation set (GLISTER), not for model selection.
    * `pseudo_label_threshold` = sigma (FUCLE Sec. 3.1, "incrementally add data with predictive values p-bar
      more significant than the threshold sigma to the training dataset"): after each cycle's fit, the unlabeled
      rows whose top predicted probability exceeds sigma join the next cycle's training set with the model's
      predicted label. They are recomputed every cycle, cost no label reads, and are audited against the pool's
      clean labels where those exist (`n_pseudo`, `pseudo_accuracy` per cycle). None (default) turns it off.

    Recorded per cycle: n_labeled, test accuracy and mean class accuracy (`fernb.engine.evaluate`), query and
    train wall time, query peak RSS increase, and the rows selected; overall wall time and peak memory (`measure`).
    """
    device = engine.resolve_device(device)
    fit_kwargs = dict(fit_kwargs or {})
    fit_kwargs.setdefault("seed", seed)
    fit_kwargs.setdefault("progress", progress)
    if isinstance(strategy, str):
        strategy = get(strategy, seed=seed)
    strategy.reset()
    N = len(pool)
    if initial_mask is not None:
        mask = torch.as_tensor(initial_mask, dtype=torch.bool).cpu().clone()
        if mask.shape != (N,):
            raise ValueError(f"initial_mask must have shape ({N},), got {tuple(mask.shape)}")
    else:
        size = _count(initial_size if initial_size is not None else float(initial_fraction), N, "initial_fraction")
        mask = torch.zeros(N, dtype=torch.bool)
        mask[torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:min(size, N)]] = True
    per_cycle = _count(budget, N, "budget")

    result = ALResult(strategy=strategy.name, config={
        "pool_size": N, "test_size": len(test), "initial_size": int(mask.sum()), "budget": per_cycle,
        "cycles": cycles, "seed": seed, "fit_kwargs": {k: v for k, v in fit_kwargs.items() if k != "progress"},
        "device": str(device), "strategy": repr(strategy)})
    from tqdm.auto import tqdm
    model = None
    pseudo = torch.full((N,), UNLABELED, dtype=torch.long)      # sigma data addition: predicted labels, -1 = none
    clean = pool.clean_labels.cpu() if pool.clean_labels is not None else None
    with measure(device) as total:
        for cycle in tqdm(range(cycles + 1), desc=f"AL {strategy.name}", disable=not progress):
            picked = torch.empty(0, dtype=torch.long)
            query = Measurement(seconds=0.0, peak_rss_mb=0.0)
            if cycle > 0:
                with measure(device) as query:
                    picked = strategy.query(model, labeled_view(pool, mask), mask, per_cycle, device=device, val=val,
                                            batch_size=batch_size)
                mask[picked] = True
                if pseudo_label_threshold is not None:
                    pseudo = _pseudo_labels(model, pool, mask, pseudo_label_threshold, device, batch_size)
            train = labeled_view(pool, mask)
            added = pseudo >= 0
            if bool(added.any()):
                labels = torch.where(added & ~mask, pseudo, train.labels.cpu())
                train = replace(train, labels=labels.to(train.labels.device))
            torch.manual_seed(seed)
            model = model_fn()
            with measure(device) as fitting:
                history = engine.fit(model, train, device=device, **fit_kwargs)
            metrics = engine.evaluate(model, test, batch_size=batch_size, device=device)
            result.selected.append(picked)
            n_pseudo = int((added & ~mask).sum())
            result.cycles.append({
                "cycle": cycle, "n_labeled": int(mask.sum()), "n_selected": len(picked),
                "accuracy": metrics["accuracy"], "mean_class_accuracy": metrics["mean_class_accuracy"],
                "query_seconds": query.seconds, "query_peak_rss_mb": query.peak_rss_mb,
                "train_seconds": fitting.seconds, "n_pseudo": n_pseudo,
                # the fit's first step, torch.compile's compilation included when it compiled (`History.compile`)
                "train_first_step_seconds": history.first_step_seconds, "compile": history.compile,
                "pseudo_accuracy": (float((pseudo[added & ~mask] == clean[added & ~mask]).float().mean())
                                    if n_pseudo and clean is not None else float("nan"))})
    result.labeled_mask = mask
    result.wall_seconds, result.peak_rss_mb, result.peak_cuda_mb = total.seconds, total.peak_rss_mb, \
        total.peak_cuda_mb
    return result
