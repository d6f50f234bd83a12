"""Patch embedding of a state and the linear decoder head that maps tokens back to a state.

A grid that is not a multiple of the patch size (e.g. 121 x 240 or 721 x 1440 with both poles) is
padded before the patch embedding and the decoded state is cropped back: columns are added at the
east end by wrapping around in longitude (``circular``: the first columns repeat), rows at the south
end by repeating the southernmost row (``replicate``). The padded cells exist only inside the
network; its outputs (forecast and reconstruction) have the input's ``(H, W)``, so they never enter
a loss or a metric. A grid that is already a multiple is not padded at all.
"""

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def padded_size(img_size, patch_size: int) -> tuple[int, int]:
    """``(H, W)`` rounded up to multiples of ``patch_size``."""
    return tuple(math.ceil(int(s) / patch_size) * patch_size for s in img_size)


def pad_to_patches(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, H', W')`` with ``H', W'`` multiples of ``patch_size``: columns
    wrapped around at the east, the last row repeated at the south (``x`` itself when no padding
    is needed)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % patch_size, (-w) % patch_size
    if pad_w:
        x = F.pad(x, (0, pad_w, 0, 0), mode="circular")
    if pad_h:
        x = F.pad(x, (0, 0, 0, pad_h), mode="replicate")
    return x


class PatchEmbed(nn.Module):
    """``Conv2d(C, D, kernel=p, stride=p)`` on the input padded by :func:`pad_to_patches`:
    ``(B, C, H, W)`` -> tokens ``(B, ceil(H/p) ceil(W/p), D)``."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(pad_to_patches(x, self.patch_size)), "b d h w -> b (h w) d")


class DecoderHead(nn.Module):
    """``Linear(D -> C p p, bias=False)`` then unpatchify ``b (h w) (p1 p2 c) -> b c (h p1) (w p2)``
    and crop to ``img_size`` (the padding of :func:`pad_to_patches` removed).

    Args:
        grid_size: token grid ``(ceil(H/p), ceil(W/p))``.
        img_size: ``(H, W)`` of the output (default: the token grid times ``p``).
    """

    def __init__(
        self, embed_dim: int, out_channels: int, patch_size: int, grid_size, img_size=None
    ):
        super().__init__()
        self.patch_size = patch_size
        self.grid_size = tuple(grid_size)
        full = (self.grid_size[0] * patch_size, self.grid_size[1] * patch_size)
        self.img_size = full if img_size is None else tuple(img_size)
        self.proj = nn.Linear(embed_dim, out_channels * patch_size * patch_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` -> ``(B, C, H, W)``."""
        p = self.patch_size
        out = rearrange(
            self.proj(tokens),
            "b (h w) (p1 p2 c) -> b c (h p1) (w p2)",
            h=self.grid_size[0],
            w=self.grid_size[1],
            p1=p,
            p2=p,
        )
        h, w = self.img_size
        if out.shape[-2:] != (h, w):
            out = out[..., :h, :w]
        return out
