"""Small heads that the papers add on top of a backbone's embedding."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ProjectionHead(nn.Module):
    """MLP projection g(.) from the embedding to the contrastive space, L2-normalized at the output.

    SimCLR / SupCon use a 2-layer MLP (hidden = embedding width); the SCL paper (Hu et al.) uses 3 layers to 128-d.
    """

    def __init__(self, in_dim: int, out_dim: int = 128, hidden_dim: int | None = None, num_layers: int = 2):
        super().__init__()
        if num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        hidden_dim = hidden_dim or in_dim
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(embedding), dim=1)


class AttentionWeight(nn.Module):
    """Self-attention importance weight alpha_i = sigma(W_a^T x_i)  (FUCLE Eq. 2; SCN's attention branch)."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, 1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(embedding)).squeeze(1)
