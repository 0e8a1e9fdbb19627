"""The baselines of Ada-CM's Table 1 as methods of the shared semi-supervised trainer (`fernb.methods.semisup`):
supervised only, Pseudo-Labeling, MixMatch and ReMixMatch. FixMatch (fixed threshold 0.95) is `semisup.FixMatch`.

All of them see the same trainer, data path, batches, optimizer budget and evaluated EMA model as Ada-CM; only the
loss differs. What each one is, and what is simplified:

* `SupervisedOnly`: L = CE on the labeled batch; no unlabeled views are drawn or forwarded.
* `PseudoLabeling` (Lee 2013): the model labels a weak view of each unlabeled image with its own argmax
  (detached) and is trained with CE on that same view: L = L_s + w(t) * 1/N * sum 1(max p > tau) CE(f(u), y^).
  Lee used no threshold and ramped w from 0 to 3 over chosen epochs; our defaults (tau = 0.95, w = 1 reached after
  the first 40 % of the steps) are the ones common in SSL benchmark code, so PL differs from FixMatch only in
  training the weak view rather than a strong one.
* `MixMatch` (Berthelot et al. 2019): K = 2 weak views of each unlabeled image; the guess is the mean prediction,
  sharpened with T = 0.5 (`sharpen`); labeled (one-hot) and unlabeled (guess) rows are shuffled together and mixed
  with lambda' = max(lambda, 1 - lambda), lambda ~ Beta(0.75, 0.75) (`mixup`); L = CE(mixed labeled) +
  lambda_u * MSE(mixed unlabeled), lambda_u = 75 ramped up linearly over the first 16/1024 of the steps (16k of
  the paper's 1,024k); `MIXMATCH_SETTINGS["finetune"]` gives USB's values for a pretrained backbone and a short
  run (lambda_u = 10, warm-up 40 %, alpha = 0.5). The original interleaves labeled and unlabeled batches so
  BatchNorm sees one distribution; here every mixed row goes through the network in a single forward, which does
  the same.
* `ReMixMatch` (Berthelot et al. 2020): *distribution alignment*: the guess on a weak "anchor" view is
  q = Normalize(p * p(y) / p~(y)) with p(y) the labeled class distribution and p~(y) the running mean of the model's
  unlabeled predictions over the last 128 steps (`distribution_alignment`), then sharpened; *augmentation
  anchoring*: K strong views of each unlabeled image are trained towards that anchor guess. Labeled rows are
  strongly augmented (the paper's Algorithm 1; `labeled_view="weak"` keeps the trainer's weak view, as USB does);
  mixup as in MixMatch over the labeled and the K strong views (`mix_anchor=True` mixes the weak anchor view in
  too, as USB does); L = CE(mixed labeled) + 1.5 * CE(mixed unlabeled) + 0.5 * CE(first strong view, unmixed)
  (the pre-mixup term), the unlabeled weights ramped up like MixMatch's. **Simplified**: RandAugment (the project's
  `strong`) instead of CTAugment (no learned augmentation magnitudes); K = 2 strong views instead of 8 (CPU
  budget); no rotation self-supervision loss (it needs a second head; the paper's ablation credits it with the
  smallest share of the gain); p~(y) over a 128-step ring buffer, as the paper says (USB keeps an EMA).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..data import augment as aug
from .semisup import SemiSupMethod, StepContext, pseudo_label_loss

__all__ = ["SupervisedOnly", "PseudoLabeling", "MixMatch", "ReMixMatch", "sharpen", "mixup", "linear_rampup",
           "distribution_alignment", "soft_cross_entropy", "MIXMATCH_SETTINGS", "REMIXMATCH_SETTINGS"]

# MixMatch's hyperparameters by regime (keyword arguments of `MixMatch`).
# "paper": Berthelot et al.'s CIFAR-10 values, trained from scratch for ~1M steps: lambda_u = 75, warm-up 16/1024 of
#   the run, mixup alpha = 0.75 (the class defaults).
# "finetune": USB's (Wang et al., NeurIPS 2022, microsoft/Semi-supervised-learning, config/usb_cv/mixmatch) values for
#   a *pretrained* backbone fine-tuned for a short run: lambda_u = 10, warm-up over the first 40 % of the steps,
#   alpha = 0.5. Why this matters for a short fine-tuning run: with "paper", the 75-weighted consistency term
#   reaches full weight after 2 % of the steps, before the model has learned the labels, and a run can collapse
#   onto one class (notebook 05 flags such runs under its tables, from the runs it made).
MIXMATCH_SETTINGS = {"paper": {}, "finetune": {"lambda_u": 10.0, "rampup": 0.4, "alpha": 0.5}}

# ReMixMatch's settings by regime (keyword arguments of `ReMixMatch`).
# "paper": Algorithm 1 of Berthelot et al. 2020: labeled rows strongly augmented, only the strong views mixed.
# "finetune": USB's layout for a pretrained backbone (semilearn/algorithms/remixmatch): labeled rows weakly
#   augmented and the weak anchor view mixed in with the strong ones; its usb_cv weights are the paper's (1.5, 0.5,
#   alpha 0.75, warm-up 1/64), so only the layout changes.
REMIXMATCH_SETTINGS = {"paper": {}, "finetune": {"labeled_view": "weak", "mix_anchor": True}}


# ---- pure functions -------------------------------------------------------------------------------------------
def sharpen(p: torch.Tensor, T: float = 0.5) -> torch.Tensor:
    """MixMatch's Sharpen(p, T)_i = p_i^(1/T) / sum_j p_j^(1/T), computed in log space (no underflow)."""
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    return torch.softmax(torch.log(p.clamp(min=1e-12)) / T, dim=1)


def mixup(x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MixMatch's MixUp with lambda' = max(lambda, 1 - lambda): each row stays closer to itself than to its
    partner x[perm]. Returns (lambda' x + (1 - lambda') x[perm], the same mix of the targets y)."""
    lam = max(float(lam), 1.0 - float(lam))
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]


def linear_rampup(step: int, total_steps: int, fraction: float) -> float:
    """A weight that grows linearly from 0 to 1 over the first `fraction` of `total_steps`, then stays at 1."""
    length = fraction * total_steps
    return 1.0 if length <= 0 else min(1.0, step / length)


def distribution_alignment(probs: torch.Tensor, p_labeled: torch.Tensor, p_model: torch.Tensor) -> torch.Tensor:
    """ReMixMatch's distribution alignment: q~ = Normalize(q * p(y) / p~(y)) row by row."""
    q = probs * (p_labeled / p_model.clamp(min=1e-12)).to(probs)
    return q / q.sum(1, keepdim=True)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-mean_i sum_c y_ic log softmax(z_i)_c for soft targets."""
    return -(torch.log_softmax(logits.float(), 1) * targets).sum(1).mean()


def _beta(alpha: float) -> float:
    return float(torch.distributions.Beta(alpha, alpha).sample())


# ---- methods --------------------------------------------------------------------------------------------------
class SupervisedOnly(SemiSupMethod):
    """L = CE(f(x^l), y^l) only. No unlabeled views are drawn or forwarded."""
    name = "supervised only"
    weak_views = 0
    strong_views = 0


class PseudoLabeling(SemiSupMethod):
    """Lee (2013): the model's own argmax on a weak view is the target for that same view (see module docstring)."""
    name = "Pseudo-Labeling"
    weak_views, strong_views = 1, 0
    student_weak = True

    def __init__(self, tau: float | None = 0.95, weight: float = 1.0, rampup: float = 0.4):
        super().__init__(weight)
        self.tau, self.rampup = tau, float(rampup)

    def unsup_loss(self, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        logits = ctx.student_weak[0].logits
        confidence, pseudo = logits.detach().float().softmax(1).max(1)
        mask = confidence > self.tau if self.tau is not None else torch.ones_like(pseudo, dtype=torch.bool)
        ramp = linear_rampup(ctx.step, ctx.trainer.steps, self.rampup)
        return ramp * pseudo_label_loss(logits, pseudo, mask), {"mask": mask, "pseudo_labels": pseudo,
                                                                 "rampup": torch.tensor(ramp)}

    def describe(self) -> str:
        return f"{self.name} (tau={self.tau})"


class MixMatch(SemiSupMethod):
    """Berthelot et al. 2019 (see module docstring). Owns the whole step: guess, sharpen, mix, one forward."""
    name = "MixMatch"
    strong_views = 0

    def __init__(self, K: int = 2, T: float = 0.5, alpha: float = 0.75, lambda_u: float = 75.0,
                 rampup: float = 16 / 1024):
        super().__init__(weight=lambda_u)
        self.weak_views = int(K)
        self.T, self.alpha, self.rampup = float(T), float(alpha), float(rampup)

    def guess(self, ctx: StepContext, views) -> torch.Tensor:
        with torch.no_grad():
            logits = ctx.student(torch.cat(views)).logits.float()
        return torch.stack([lg.softmax(1) for lg in logits.split(len(views[0]))]).mean(0)

    def loss(self, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        p = self.guess(ctx, ctx.weak)
        q = sharpen(p, self.T)
        x_l = ctx.x_l
        y_l = F.one_hot(ctx.y_l, ctx.num_classes).float()
        x = torch.cat([x_l, *ctx.weak])
        y = torch.cat([y_l, *([q] * len(ctx.weak))])
        x_mix, y_mix = mixup(x, y, _beta(self.alpha), torch.randperm(len(x), device=x.device))
        logits = ctx.student(x_mix.contiguous(memory_format=torch.channels_last)).logits.float()
        n = len(x_l)
        sup = soft_cross_entropy(logits[:n], y_mix[:n])
        unsup = F.mse_loss(logits[n:].softmax(1), y_mix[n:])
        ramp = linear_rampup(ctx.step, ctx.trainer.steps, self.rampup)
        confidence, pseudo = p.max(1)
        return sup + self.weight * ramp * unsup, {
            "sup_loss": sup.detach(), "unsup_loss": unsup.detach(), "pseudo_labels": pseudo,
            "mask": torch.ones_like(pseudo, dtype=torch.bool), "confidence": confidence.mean()}


class ReMixMatch(MixMatch):
    """Berthelot et al. 2020 with distribution alignment and augmentation anchoring (simplified: see the module
    docstring). The running mean p~(y) is method state, saved in checkpoints."""
    name = "ReMixMatch"

    def __init__(self, K: int = 2, T: float = 0.5, alpha: float = 0.75, lambda_u: float = 1.5,
                 lambda_u1: float = 0.5, rampup: float = 16 / 1024, history: int = 128,
                 labeled_view: str = "strong", mix_anchor: bool = False):
        super().__init__(K=K, T=T, alpha=alpha, lambda_u=lambda_u, rampup=rampup)
        if labeled_view not in ("strong", "weak"):
            raise ValueError(f"labeled_view must be 'strong' or 'weak', got {labeled_view!r}")
        self.weak_views, self.strong_views = 1, int(K)
        self.lambda_u1, self.history = float(lambda_u1), int(history)
        self.labeled_view, self.mix_anchor = labeled_view, bool(mix_anchor)
        self.p_labeled: torch.Tensor | None = None
        self.queue: torch.Tensor | None = None      # (history, K) recent mean predictions
        self.filled = 0

    def p_model(self, probs: torch.Tensor) -> torch.Tensor:
        """Push this step's mean prediction into the ring buffer; return the mean of the filled part (p~(y))."""
        if self.queue is None:
            self.queue = torch.zeros(self.history, probs.shape[1], device=probs.device)
        self.queue = self.queue.to(probs.device)
        self.queue[self.filled % self.history] = probs.mean(0)
        self.filled += 1
        return self.queue[:min(self.filled, self.history)].mean(0)

    def loss(self, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        if self.p_labeled is None:
            counts = torch.bincount(ctx.trainer.labeled.labels.cpu(), minlength=ctx.num_classes).float()
            self.p_labeled = counts / counts.sum()
        p = self.guess(ctx, ctx.weak)                                         # the weak anchor
        q = sharpen(distribution_alignment(p, self.p_labeled.to(p.device), self.p_model(p)), self.T)
        x_l = (aug.to_input(aug.strong(ctx.raw_l)).contiguous(memory_format=torch.channels_last)
               if self.labeled_view == "strong" else ctx.x_l)
        y_l = F.one_hot(ctx.y_l, ctx.num_classes).float()
        views = ctx.strong + (ctx.weak if self.mix_anchor else [])       # the unlabeled rows that are mixed
        x = torch.cat([x_l, *views])
        y = torch.cat([y_l, *([q] * len(views))])
        x_mix, y_mix = mixup(x, y, _beta(self.alpha), torch.randperm(len(x), device=x.device))
        n, nu = len(x_l), len(ctx.strong[0])
        logits = ctx.student(torch.cat([x_mix, ctx.strong[0]]).contiguous(memory_format=torch.channels_last)).logits
        logits = logits.float()
        sup = soft_cross_entropy(logits[:n], y_mix[:n])
        unsup = soft_cross_entropy(logits[n:len(x)], y_mix[n:])
        unsup1 = soft_cross_entropy(logits[len(x):], q)                      # pre-mixup term on strong view 1
        ramp = linear_rampup(ctx.step, ctx.trainer.steps, self.rampup)
        confidence, pseudo = q.max(1)
        loss = sup + ramp * (self.weight * unsup + self.lambda_u1 * unsup1)
        return loss, {"sup_loss": sup.detach(), "unsup_loss": unsup.detach(), "unsup1_loss": unsup1.detach(),
                      "pseudo_labels": pseudo, "mask": torch.ones(nu, dtype=torch.bool, device=q.device),
                      "confidence": confidence.mean()}

    def state_dict(self) -> dict:
        return {"queue": None if self.queue is None else self.queue.detach().cpu(), "filled": self.filled,
                "p_labeled": self.p_labeled}

    def load_state_dict(self, state: dict) -> None:
        self.queue, self.filled, self.p_labeled = state.get("queue"), int(state.get("filled", 0)), \
            state.get("p_labeled")
