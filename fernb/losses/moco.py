"""The labeled MoCo queue and the supervised contrastive loss against it (Hu et al., Sec. II-A and Eq. 2).

MoCo (He et al. 2020; Chen et al. 2020, "MoCo v2") keeps a queue of keys z^k made by a *momentum* copy of the
encoder, so the contrastive loss sees thousands of negatives without a huge batch. Hu et al. store each key with
its expression label, Q = [(z^k_1, y_1), ..., (z^k_K, y_K)] with K = 8,192 slots, and contrast each query z^q with
the queue: an entry with the query's label is a positive, any other entry a negative. Their Eq. 2:

    L_sup = sum_i  -1/|P| sum_{p in P}  log  exp(z_i . z_p / tau) / ( exp(z_i . z_p / tau) + sum_{a in A} exp(z_i . z_a / tau) )

with P = {p in Q : y_p = y_i}, A = {a in Q : y_a != y_i}, tau = 0.1 (the printed Eq. 2 writes z_i^k . z_p^q; the
text defines P and A over Q, which holds keys, so the anchor is the query z_i^q and p, a run over queue keys).
Note the denominator: each positive competes with the negatives only, not with the other positives (unlike
SupCon's Eq. 1 in `contrastive.supcon_loss`).

Pieces here (the model-side bundle, query projection plus momentum key encoder, is `fernb.methods.scl`):

* `LabeledQueue`: a ring buffer of K (key, label) slots that fills up, then overwrites its oldest entries; slots
  never written have label -1 and take no part in any loss or similarity.
* `supcon_queue_loss`: Eq. 2, averaged over the anchors that have at least one positive (the paper's sum over i
  would scale the loss with the batch size, and with it the meaning of lambda in Eq. 3; L_FER, Eq. 1, is a mean).
* `momentum_update`: theta_k <- m theta_k + (1 - m) theta_q (MoCo's Eq. 2).
* `gather_across_ranks`: under torchrun, the keys and labels of every rank, concatenated in rank order, so every
  rank enqueues the same global batch (MoCo's `concat_all_gather`); the tensor itself in a single process.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["LabeledQueue", "supcon_queue_loss", "momentum_update", "gather_across_ranks"]


class LabeledQueue(nn.Module):
    """K slots of (L2-normalized key z^k (D,), label y); buffers, so it moves with `.to(device)` and its state
    goes into a state_dict. `enqueue` writes at the pointer and wraps around: once full, each new key replaces the
    oldest one, with its label. The write position and the number of keys ever enqueued are plain Python ints
    (no device read is needed to index the buffer); `get_extra_state` saves them."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and key dim must be >= 1, got {size}, {dim}")
        self.size, self.dim = int(size), int(dim)
        self.register_buffer("keys", torch.zeros(self.size, self.dim))
        self.register_buffer("labels", torch.full((self.size,), -1, dtype=torch.long))
        self.ptr = 0                 # next slot to write
        self.total = 0               # keys enqueued so far (saturates nothing: it counts every key)

    def __len__(self) -> int:
        """Slots holding a key (<= K)."""
        return min(self.total, self.size)

    @property
    def full(self) -> bool:
        return self.total >= self.size

    def valid(self) -> torch.Tensor:
        """(K,) bool: slots that hold a key."""
        return self.labels >= 0

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Write a batch of keys (B, D) and labels (B,) at the pointer, wrapping around the end; with B > K only
        the last K are kept (they would overwrite the earlier ones anyway)."""
        keys = keys.detach()
        labels = labels.detach().reshape(-1)
        if keys.ndim != 2 or keys.shape[1] != self.dim or keys.shape[0] != labels.shape[0]:
            raise ValueError(f"enqueue needs keys (B, {self.dim}) and labels (B,), got {tuple(keys.shape)} and "
                             f"{tuple(labels.shape)}")
        n = keys.shape[0]
        if n == 0:
            return
        if n > self.size:
            self.ptr = (self.ptr + n - self.size) % self.size
            self.total += n - self.size
            keys, labels, n = keys[-self.size:], labels[-self.size:], self.size
        slots = (self.ptr + torch.arange(n, device=self.keys.device)) % self.size
        self.keys[slots] = keys.to(self.keys.dtype)
        self.labels[slots] = labels.to(self.labels.device).long()
        self.ptr = (self.ptr + n) % self.size
        self.total += n

    def class_counts(self, num_classes: int) -> torch.Tensor:
        """Entries per class (the queue's class balance), on the CPU."""
        lab = self.labels[self.labels >= 0].cpu()
        return torch.bincount(lab, minlength=num_classes)

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, labels) of the filled slots, oldest first."""
        if not self.full:
            return self.keys[: self.ptr], self.labels[: self.ptr]
        order = (self.ptr + torch.arange(self.size, device=self.keys.device)) % self.size
        return self.keys[order], self.labels[order]

    def get_extra_state(self):
        return {"ptr": self.ptr, "total": self.total}

    def set_extra_state(self, state):
        self.ptr, self.total = int(state["ptr"]), int(state["total"])

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, filled={len(self)}"


def supcon_queue_loss(queries: torch.Tensor, labels: torch.Tensor, queue_keys: torch.Tensor,
                      queue_labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Hu et al.'s Eq. 2 for queries z^q (B, D) with labels y (B,) against a labeled queue (K, D), (K,).

    Both sides are L2-normalized by the caller (dot product = cosine similarity). Queue slots with label -1 are
    empty and ignored. For anchor i and each positive p (same label):
        l_ip = -log( exp(s_ip) / (exp(s_ip) + sum_{a in A_i} exp(s_ia)) ),   s = z^q . z^k / tau
             = logaddexp(s_ip, logsumexp_{a in A_i} s_ia) - s_ip,
    L_i = mean over p of l_ip, and the loss is the mean of L_i over anchors with at least one positive; 0 (attached
    to the graph, so backward works) when no anchor has one. Computed in float32 for a stable log-sum-exp under
    autocast.
    """
    if queries.ndim != 2 or queue_keys.ndim != 2 or queries.shape[1] != queue_keys.shape[1]:
        raise ValueError(f"queries (B, D) and queue keys (K, D) must share D, got {tuple(queries.shape)} and "
                         f"{tuple(queue_keys.shape)}")
    q = queries.float()
    k = queue_keys.to(q.device).float()
    y = labels.reshape(-1).to(q.device)
    qy = queue_labels.reshape(-1).to(q.device)
    valid = qy >= 0
    logits = q @ k.T / temperature                                     # s_ij, (B, K)
    positive = (y[:, None] == qy[None, :]) & valid[None, :]
    negative = (y[:, None] != qy[None, :]) & valid[None, :]
    neg_lse = torch.logsumexp(logits.masked_fill(~negative, float("-inf")), dim=1, keepdim=True)   # -inf if no A_i
    per_pair = torch.logaddexp(logits, neg_lse) - logits                                             # l_ip
    n_pos = positive.sum(1)
    per_anchor = torch.where(positive, per_pair, torch.zeros_like(per_pair)).sum(1) / n_pos.clamp(min=1)
    has_pos = n_pos > 0
    return (per_anchor * has_pos).sum() / has_pos.sum().clamp(min=1) + 0.0 * q.sum()


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """theta_target <- m * theta_target + (1 - m) * theta_online, parameter by parameter (MoCo's momentum update;
    m = 0 copies). Buffers (BatchNorm statistics) are not averaged: the key encoder keeps its own, as in MoCo."""
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    online_params = list(online.parameters())
    target_params = list(target.parameters())
    if len(online_params) != len(target_params):
        raise ValueError("momentum_update needs two copies of the same architecture")
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)


@torch.no_grad()
def gather_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (first dim = the local batch) from every rank in rank order, on every rank; the tensor
    itself without a process group. Ranks may hold different batch sizes (the sizes are exchanged first)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    padded = tensor
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, pad])
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])
