"""Token-routed sparse MoE (the ``use_moe: moe`` ablation).

Noisy top-k softmax gating (Shazeer et al., 2017): ``logits = x W_g + eps * softplus(x W_noise)``
with ``eps ~ N(0, 1)`` during training only; each token keeps its top-k experts, whose weights are
the softmax of the kept logits, and is processed by those experts only. The load-balancing
auxiliary loss (Switch Transformer form) is ``E * sum_i f_i P_i`` with ``f_i`` the fraction of
token-slots routed to expert i and ``P_i`` the mean gate probability of expert i; it is 1 for a
perfectly balanced router.
"""

import torch
import torch.nn.functional as F
from torch import nn

from networks.mlp import Mlp


class TokenMoE(nn.Module):
    """``(B, N, D) -> ((B, N, D), aux_loss)`` with ``num_experts`` MLP experts of hidden ``hidden_dim``."""

    def __init__(self, dim: int, hidden_dim: int, num_experts: int, topk: int):
        super().__init__()
        if not 1 <= topk <= num_experts:
            raise ValueError(f"moe_topk_tokens ({topk}) must be in [1, num_experts={num_experts}]")
        self.topk = topk
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.noise = nn.Linear(dim, num_experts, bias=False)
        self.experts = nn.ModuleList(Mlp(dim, hidden_dim) for _ in range(num_experts))

    def forward(self, x: torch.Tensor):
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        logits = self.router(tokens)
        if self.training:
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(tokens))
        top_values, top_idx = logits.topk(self.topk, dim=-1)  # (T, k)
        weights = torch.softmax(top_values, dim=-1)
        out = torch.zeros_like(tokens)
        for j, expert in enumerate(self.experts):
            token_ids, slot = (top_idx == j).nonzero(as_tuple=True)
            if token_ids.numel():
                out.index_add_(
                    0, token_ids, expert(tokens[token_ids]) * weights[token_ids, slot, None]
                )
        n_experts = len(self.experts)
        probs = torch.softmax(logits, dim=-1)
        routed_fraction = F.one_hot(top_idx, n_experts).float().sum(1).mean(0) / self.topk
        aux_loss = n_experts * (routed_fraction * probs.mean(0)).sum()
        return out.view(shape), aux_loss
