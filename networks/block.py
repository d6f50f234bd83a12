"""One pre-norm transformer block: attention, then the feed-forward layer (channel MoE, MLP or
token MoE), each as a residual branch with stochastic depth."""

from collections.abc import Sequence

import torch
from timm.layers import DropPath
from torch import nn

from networks.attention import Attention
from networks.channel_moe import ChannelMoE
from networks.mlp import Mlp
from networks.token_moe import TokenMoE


class Block(nn.Module):
    """``x = x + DropPath(Attn(LN1(x)))``; ``x = x + DropPath(FFN(LN2(x), e))`` on ``(B, N, D)``.

    Args:
        ffn: ``channelmoe``, ``mlp`` or ``moe`` (token-routed).
        window_size: attention window in tokens, or None for global attention.
        attn_padding: ``masked`` or ``original`` padding of windowed attention.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: Sequence[int],
        window_size: Sequence[int] | None,
        ffn: str,
        num_experts: int,
        expert_channels_divisor: int,
        mlp_ratio: float,
        moe_topk_tokens: int = 2,
        drop_path: float = 0.0,
        eps: float = 1e-6,
        moe_impl: str = "fast",
        attn_padding: str = "masked",
    ):
        super().__init__()
        self.ffn_kind = ffn
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, grid_size, window_size, attn_padding)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        if ffn == "channelmoe":
            self.ffn = ChannelMoE(dim, num_experts, expert_channels_divisor, eps=eps, impl=moe_impl)
        elif ffn == "mlp":
            self.ffn = Mlp(dim, int(dim * mlp_ratio))
        elif ffn == "moe":
            self.ffn = TokenMoE(dim, int(dim * mlp_ratio), num_experts, moe_topk_tokens)
        else:
            raise ValueError(f"unknown feed-forward kind {ffn!r}")
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, var_embed: torch.Tensor):
        """Returns the new tokens ``(B, N, D)`` and this block's auxiliary loss (a scalar)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        h = self.norm2(x)
        aux = x.new_zeros(())
        if self.ffn_kind == "channelmoe":
            h = self.ffn(h, var_embed)
        elif self.ffn_kind == "moe":
            h, aux = self.ffn(h)
        else:
            h = self.ffn(h)
        return x + self.drop_path(h), aux
