"""Token-routed sparse MoE (the ``use_moe: moe`` ablation).

Noisy top-k softmax gating (Shazeer et al., 2017): ``logits = x W_g + eps * softplus(x W_noise)``
with ``eps ~ N(0, 1)`` during training only; each token keeps its top-k experts, whose weights are
the softmax of the kept logits. The load-balancing auxiliary loss (Switch Transformer form) is
``E * sum_i f_i P_i`` with ``f_i`` the fraction of token-slots routed to expert i and ``P_i`` the
mean gate probability of expert i; it is 1 for a perfectly balanced router.

Dispatch is dense with fixed shapes: every expert runs on every token (one batched matmul over the
experts' weights) and its output is weighted by the token's routing weight, which is 0 for the
experts the token was not routed to. Output and gradients are those of sparse dispatch, but no
tensor has a data-dependent shape: no ``nonzero``, no host synchronisation, one graph under
``torch.compile``. The price is ``E / top-k`` times the expert FLOPs of sparse dispatch
(``networks/flops.py`` counts the top-k experts only, the useful work).
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

    def routing(self, tokens: torch.Tensor):
        """Router logits ``(T, E)`` (noisy in training), top-k expert indices ``(T, k)`` and the
        combine weights ``(T, E)``: softmax of the kept logits, 0 for the other experts."""
        logits = self.router(tokens)
        if self.training:
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(tokens))
        top_values, top_idx = logits.topk(self.topk, dim=-1)
        combine = torch.zeros_like(logits).scatter(-1, top_idx, torch.softmax(top_values, dim=-1))
        return logits, top_idx, combine

    def forward(self, x: torch.Tensor):
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # (T, D)
        logits, top_idx, combine = self.routing(tokens)
        n_experts, n_tok = len(self.experts), tokens.shape[0]
        # fc1 of all experts: (E, H, D) weights -> hidden (E, T, H).
        w1 = torch.stack([ex.fc1.weight for ex in self.experts])
        b1 = torch.stack([ex.fc1.bias for ex in self.experts])
        hidden = F.gelu(torch.matmul(tokens, w1.transpose(1, 2)) + b1.unsqueeze(1))
        # sum_j c_j (W2_j h_j + b2_j) = [c_1 h_1, ..., c_E h_E] @ [W2_1, ..., W2_E]^T + c @ b2.
        hidden = hidden * combine.t().unsqueeze(-1)
        w2 = torch.cat([ex.fc2.weight for ex in self.experts], 1)  # (D, E H)
        b2 = torch.stack([ex.fc2.bias for ex in self.experts])  # (E, D)
        out = hidden.transpose(0, 1).reshape(n_tok, -1) @ w2.t() + combine @ b2
        probs = torch.softmax(logits, dim=-1)
        routed_fraction = F.one_hot(top_idx, n_experts).float().sum(1).mean(0) / self.topk
        aux_loss = n_experts * (routed_fraction * probs.mean(0)).sum()
        return out.view(shape), aux_loss
