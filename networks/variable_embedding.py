"""Variable embedding: the variable index matrix ``P`` (E x C) mapped to one vector per group."""

import torch
from torch import nn


class VariableEmbedding(nn.Module):
    """``Linear(C -> D) -> SiLU -> Linear(D -> D)`` applied to ``P``: ``(E, C)`` -> ``(E, D)``."""

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )

    def forward(self, index_matrix: torch.Tensor) -> torch.Tensor:
        return self.mlp(index_matrix)
