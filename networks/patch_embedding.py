"""Patch embedding of a state and the linear decoder head that maps tokens back to a state."""

import torch
from einops import rearrange
from torch import nn


class PatchEmbed(nn.Module):
    """``Conv2d(C, D, kernel=p, stride=p)``: ``(B, C, H, W)`` -> tokens ``(B, (H/p)(W/p), D)``."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(x), "b d h w -> b (h w) d")


class DecoderHead(nn.Module):
    """``Linear(D -> C p p, bias=False)`` then unpatchify ``b (h w) (p1 p2 c) -> b c (h p1) (w p2)``.

    Args:
        grid_size: token grid ``(H/p, W/p)``.
    """

    def __init__(self, embed_dim: int, out_channels: int, patch_size: int, grid_size):
        super().__init__()
        self.patch_size = patch_size
        self.grid_size = tuple(grid_size)
        self.proj = nn.Linear(embed_dim, out_channels * patch_size * patch_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` -> ``(B, C, H, W)``."""
        p = self.patch_size
        return rearrange(
            self.proj(tokens),
            "b (h w) (p1 p2 c) -> b c (h p1) (w p2)",
            h=self.grid_size[0],
            w=self.grid_size[1],
            p1=p,
            p2=p,
        )
