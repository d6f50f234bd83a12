"""Plain transformer MLP, the feed-forward layer of the ``use_moe: false`` ablation."""

import torch
from torch import nn


class Mlp(nn.Module):
    """``Linear(D -> hidden) -> GELU -> Linear(hidden -> D)`` on ``(..., D)``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
