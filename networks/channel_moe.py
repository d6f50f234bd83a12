"""Channel-adaptive mixture of experts: the feed-forward layer of every VA-MoE block.

Inputs are tokens ``h`` of shape ``(B, N, D)`` and the variable embedding ``e`` of shape ``(E, D)``
(one row per variable group). With ``k = D / topk``:

- gate distribution per group: ``g = softmax(W_pos e + b_pos, dim=-1)``, ``(E, D)``;
- shared expert: ``y = SwiGLU_shared(h)`` (hidden 2D);
- for each expert j: ``f = W_gate (h * g[j]) + b_gate`` ``(B, N, D)``; top-k of ``f`` along the
  channel axis gives values ``v`` and indices ``idx`` ``(B, N, k)``; ``w = softmax(v)``;
  ``s = gather(h, idx) * w``; ``y += SwiGLU_j(s)`` (k -> D -> D);
- output: ``Linear -> SiLU -> Linear`` of ``LayerNorm(y)``.

Every expert sees every token (channels are routed, not tokens), so the cost is dense. Two
implementations compute the same function from the same parameters:

- ``loop``: the formulas above, one expert after another (the tested reference);
- ``fast``: all experts at once. The gate scaling folds into the weight,
  ``W_gate (h * g[j]) = h (W_gate * g[j])^T``, so all gate logits are one ``(BN, D) x (D, E D)``
  matmul; top-k, softmax and gather are batched over experts; the experts' SwiGLUs are batched
  matmuls over weights stacked on the fly (the parameters stay per expert, so single experts can
  be frozen or loaded), and the sum over experts is folded into one down-projection matmul.
"""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from networks.swiglu import SwiGLU


class ChannelMoE(nn.Module):
    """Channel-routed MoE ``(B, N, D), (E, D) -> (B, N, D)``.

    Args:
        dim: embedding dimension D.
        num_experts: number of experts E (= variable groups).
        topk: D / topk channels are routed to each expert.
        eps: LayerNorm epsilon.
        impl: ``fast`` or ``loop``.
    """

    def __init__(self, dim: int, num_experts: int, topk: int, eps: float = 1e-6,
                 impl: str = "fast"):
        super().__init__()
        if dim % topk:
            raise ValueError(f"embed_dim ({dim}) must be divisible by topk ({topk})")
        if impl not in ("fast", "loop"):
            raise ValueError(f"moe_impl must be 'fast' or 'loop', got {impl!r}")
        self.dim = dim
        self.k = dim // topk
        self.impl = impl
        self.pos_proj = nn.Linear(dim, dim)
        self.gate_proj = nn.Linear(dim, dim)
        self.shared_expert = SwiGLU(dim, 2 * dim, dim)
        self.experts = nn.ModuleList(SwiGLU(self.k, dim, dim) for _ in range(num_experts))
        self.out_norm = nn.LayerNorm(dim, eps=eps)
        self.out_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def gate_distribution(self, var_embed: torch.Tensor) -> torch.Tensor:
        """``softmax(W_pos e + b_pos)``: ``(E, D)`` -> ``(E, D)``."""
        return torch.softmax(self.pos_proj(var_embed), dim=-1)

    def forward(self, h: torch.Tensor, var_embed: torch.Tensor) -> torch.Tensor:
        if var_embed.shape[0] != self.num_experts:
            raise ValueError(f"variable embedding has {var_embed.shape[0]} groups but the MoE has "
                             f"{self.num_experts} experts")
        g = self.gate_distribution(var_embed)
        y = self.shared_expert(h)
        y = y + (self._experts_fast(h, g) if self.impl == "fast" else self._experts_loop(h, g))
        return self.out_mlp(self.out_norm(y))

    def _experts_loop(self, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Sum of the routed experts, one at a time: ``(B, N, D)`` -> ``(B, N, D)``."""
        total = torch.zeros_like(h)
        for j, expert in enumerate(self.experts):
            logits = self.gate_proj(h * g[j])
            values, idx = logits.topk(self.k, dim=-1)
            routed = torch.gather(h, -1, idx) * torch.softmax(values, dim=-1)
            total = total + expert(routed)
        return total

    def _experts_fast(self, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Sum of the routed experts, batched over experts: ``(B, N, D)`` -> ``(B, N, D)``."""
        n_exp, k = self.num_experts, self.k
        tokens = rearrange(h, "b n d -> (b n) d")
        # (E, D_out, D_in) gate weights with each group's distribution folded into the input axis.
        gate_w = self.gate_proj.weight.unsqueeze(0) * g.unsqueeze(1)
        logits = tokens @ rearrange(gate_w, "e o i -> i (e o)") + self.gate_proj.bias.repeat(n_exp)
        values, idx = rearrange(logits, "t (e o) -> t e o", e=n_exp).topk(k, dim=-1)
        routed = torch.gather(tokens.unsqueeze(1).expand(-1, n_exp, -1), -1, idx)
        routed = rearrange(routed * torch.softmax(values, dim=-1), "t e k -> e t k")
        w_gate = torch.stack([e.w_gate.weight for e in self.experts])   # (E, D_hidden, k)
        w_up = torch.stack([e.w_up.weight for e in self.experts])       # (E, D_hidden, k)
        hidden = F.silu(torch.bmm(routed, w_gate.transpose(1, 2))) \
            * torch.bmm(routed, w_up.transpose(1, 2))                    # (E, T, D_hidden)
        w_down = torch.cat([e.w_down.weight for e in self.experts], 1)  # (D, E * D_hidden)
        out = rearrange(hidden, "e t f -> t (e f)") @ w_down.t()
        return out.view_as(h)
