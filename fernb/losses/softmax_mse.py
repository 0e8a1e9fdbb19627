"""Softmax-MSE (Xu et al., Sec. 3.1.2, Eq. 3-6): a loss whose *value* is a regression error and whose *gradient*
is the softmax (cross-entropy) gradient.

For logits X = (x_0, ..., x_{m-1}) of one image:

    p_k = exp(x_k - max X) / sum_i exp(x_i - max X)                      (3)  the softmax
    y_hat = sum_k k p_k                                                  (4)  the expected class index
    L = 1/n sum_j (y_hat_j - y_j)^2                                      (5)  over the n images of the batch
    dL_j/dx_i = p_i - 1 if i = y_j, p_i otherwise                        (6)  the softmax loss's gradient

**The paper's point, and what it means in practice.** Eq. 6 is not the derivative of Eq. 5. The true derivative of
the forward value is

    dL_j/dx_i = 2 (y_hat_j - y_j) p_i (i - y_hat_j)                      (exact; `gradient="mse"`)

which treats the class index as a number on a line (predicting "fear" for "disgust" costs less than predicting
"happiness" for it, purely because of where the classes sit in the order) and vanishes whenever the expected index
happens to equal the label, even for a flat, uncertain prediction. The paper keeps Eq. 6 "to maintain the advantage
of Softmax loss": the network is *trained* by the cross-entropy gradient, while the number the loss layer reports
is the cost-sensitive regression error. With the batch mean of Eq. 5, the gradient of Softmax-MSE with respect to
the logits is (p - onehot(y)) / n, exactly the gradient of the mean cross-entropy. An optimizer therefore takes the
same steps as with cross-entropy (up to floating-point rounding), so any accuracy difference between the two is
training noise, not the loss; what changes is the reported loss value (and anything that reads it, such as model
selection on the loss). `fernb.losses.softmax_mse` is a custom autograd Function so both gradients are available
side by side, and the tests check each: `gradient="mse"` passes `torch.autograd.gradcheck` (it is the derivative of
the forward value), `gradient="softmax"` equals autograd's cross-entropy gradient and fails gradcheck (it is not).

The value depends on the class order (Eq. 4 weighs class k by its index k): fernb's canonical order is neutral,
happiness, sadness, surprise, fear, disgust, anger; the paper's (FER2013's) is angry, disgust, fear, happy, sad,
surprise, neutral, so values differ between the two orders while the Eq. 6 gradient does not.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["SoftmaxMSE", "softmax_mse", "softmax_mse_value", "expected_class_index", "cross_entropy_gradient",
           "GRADIENTS"]

GRADIENTS = ("softmax", "mse")


def expected_class_index(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 3-4: y_hat = sum_k k p_k with p = softmax(logits) (max-subtracted, Eq. 3). (n, m) -> (n,)."""
    p = torch.softmax(logits, dim=1)
    k = torch.arange(logits.shape[1], dtype=p.dtype, device=p.device)
    return p @ k


def softmax_mse_value(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 5 in plain autograd ops: mean_j (y_hat_j - y_j)^2. Its autograd gradient is the exact MSE derivative."""
    return (expected_class_index(logits) - target.to(logits.dtype)).pow(2).mean()


class SoftmaxMSE(torch.autograd.Function):
    """Forward: Eq. 3-5. Backward: Eq. 6 (`gradient="softmax"`, the paper) or the exact derivative of the forward
    value (`gradient="mse"`). Computed in float32 (float64 stays float64, for gradcheck); the gradient comes back
    in the logits' dtype (bf16/fp16 under autocast on a GPU)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, gradient: str = "softmax") -> torch.Tensor:
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
        if logits.ndim != 2 or target.shape != logits.shape[:1]:
            raise ValueError(f"logits must be (n, m) and target (n,), got {tuple(logits.shape)} and "
                             f"{tuple(target.shape)}")
        x = logits if logits.dtype == torch.float64 else logits.float()
        p = torch.softmax(x, dim=1)                                                   # Eq. 3 (max-subtracted)
        k = torch.arange(x.shape[1], dtype=x.dtype, device=x.device)
        y_hat = p @ k                                                                 # Eq. 4
        residual = y_hat - target.to(x.dtype)
        ctx.save_for_backward(p, target, residual, k)
        ctx.gradient, ctx.dtype = gradient, logits.dtype
        return residual.pow(2).mean()                                                 # Eq. 5

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        p, target, residual, k = ctx.saved_tensors
        n = p.shape[0]
        if ctx.gradient == "softmax":                                                 # Eq. 6, averaged as Eq. 5
            grad = p.clone()
            grad[torch.arange(n, device=p.device), target] -= 1.0
        else:                                                                         # d/dx_i of Eq. 5, exact
            y_hat = (p @ k)[:, None]
            grad = 2.0 * residual[:, None] * p * (k[None, :] - y_hat)
        grad = grad * (grad_output / n)
        return grad.to(ctx.dtype), None, None


def softmax_mse(logits: torch.Tensor, target: torch.Tensor, gradient: str = "softmax") -> torch.Tensor:
    """Softmax-MSE loss of a batch (Eq. 5's value) with the backward of Eq. 6 (default) or the exact derivative.

    logits (n, m), target (n,) class indices. See the module docstring for why the default trains like
    cross-entropy."""
    return SoftmaxMSE.apply(logits, target.long(), gradient)


def cross_entropy_gradient(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Autograd's gradient of mean cross-entropy w.r.t. the logits: (softmax - onehot) / n, for comparisons."""
    x = logits.detach().clone().requires_grad_(True)
    F.cross_entropy(x, target.long()).backward()
    return x.grad
