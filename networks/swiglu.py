"""SwiGLU feed-forward layer: ``W_down(SiLU(W_gate x) * W_up x)``, all three linears without bias."""

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """SwiGLU mapping ``(..., in_features)`` to ``(..., out_features)`` through ``hidden_features``."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.w_gate = nn.Linear(in_features, hidden_features, bias=False)
        self.w_up = nn.Linear(in_features, hidden_features, bias=False)
        self.w_down = nn.Linear(hidden_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))
