"""Multi-head self-attention over the token grid: windowed (8 x 8 windows) or global.

Both variants use ``qkv = Linear(D -> 3D, bias)``, scale ``head_dim ** -0.5`` (the default of
``scaled_dot_product_attention``) and ``proj = Linear(D -> D)``. The windowed variant partitions
the ``(Hg, Wg)`` token grid into non-overlapping windows, batched as one attention call (no Python
loop over windows). When the grid is not a multiple of the window, the real tokens are projected
and their q, k, v are zero-padded at the bottom/right; padded keys are masked out, so every real
token attends to exactly the real tokens of its window (and qkv is never computed for padding).
With ``padding="original"`` the original code's function is computed instead: the normalised
tokens are zero-padded *before* the qkv projection and the padded positions (whose q, k, v are the
projection biases) take part in every softmax of their window unmasked.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class Attention(nn.Module):
    """Self-attention on tokens ``(B, N, D)`` laid out row-major on a ``grid_size`` grid.

    Args:
        dim: embedding dimension D.
        num_heads: number of heads (D must be divisible by it).
        grid_size: token grid ``(Hg, Wg)`` with ``Hg * Wg = N``.
        window_size: ``(wh, ww)`` for windowed attention, or None for global attention.
        padding: ``masked`` or ``original`` (see the module docstring); matters only when the
            grid is not a multiple of the window.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: Sequence[int],
        window_size: Sequence[int] | None = None,
        padding: str = "masked",
    ):
        super().__init__()
        if padding not in ("masked", "original"):
            raise ValueError(f"attn_padding must be 'masked' or 'original', got {padding!r}")
        self.padding = padding
        self.num_heads = num_heads
        self.grid_size = tuple(grid_size)
        self.window_size = None if window_size is None else tuple(window_size)
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def _attend(self, qkv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention within each row of the projected ``qkv``: ``(B', L, 3D)`` -> ``(B', L, D)``.

        q, k and v are strided views of ``qkv`` (no copy); the output of
        ``scaled_dot_product_attention`` is laid out ``(B', L, heads, head_dim)`` in memory on
        the CPU and flash/efficient CUDA kernels, so merging the heads back is a view there.
        """
        q, k, v = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return rearrange(out, "b h l d -> b l (h d)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window_size is None:
            return self.proj(self._attend(self.qkv(x)))
        b = x.shape[0]
        hg, wg = self.grid_size
        wh, ww = self.window_size
        pad_h, pad_w = (-hg) % wh, (-wg) % ww
        if (pad_h or pad_w) and self.padding == "masked":
            # Project the real tokens only, then pad the projections: padded keys are masked and
            # padded queries dropped, so their (zero) q, k, v never reach a real token.
            grid = rearrange(self.qkv(x), "b (h w) c -> b h w c", h=hg, w=wg)
            grid = F.pad(grid, (0, 0, 0, pad_w, 0, pad_h))
            qkv = rearrange(grid, "b (nh wh) (nw ww) c -> (b nh nw) (wh ww) c", wh=wh, ww=ww)
            mask = self._padding_mask(hg, wg, x.device).repeat(b, 1, 1, 1)
        else:
            # Partition the D-wide tokens (cheaper to move than the 3D-wide projections). With
            # the original padding the zero tokens are projected too and never masked.
            grid = rearrange(x, "b (h w) d -> b h w d", h=hg, w=wg)
            if pad_h or pad_w:
                grid = F.pad(grid, (0, 0, 0, pad_w, 0, pad_h))
            windows = rearrange(grid, "b (nh wh) (nw ww) d -> (b nh nw) (wh ww) d", wh=wh, ww=ww)
            qkv, mask = self.qkv(windows), None
        out = self._attend(qkv, mask)
        out = rearrange(
            out,
            "(b nh nw) (wh ww) d -> b (nh wh) (nw ww) d",
            b=b,
            nh=(hg + pad_h) // wh,
            wh=wh,
            ww=ww,
        )
        return self.proj(rearrange(out[:, :hg, :wg], "b h w d -> b (h w) d"))

    def _padding_mask(self, hg: int, wg: int, device) -> torch.Tensor:
        """Boolean key mask ``(n_windows, 1, 1, wh * ww)``, False at padded positions."""
        wh, ww = self.window_size
        valid = torch.zeros(hg + (-hg) % wh, wg + (-wg) % ww, dtype=torch.bool, device=device)
        valid[:hg, :wg] = True
        return rearrange(valid, "(nh wh) (nw ww) -> (nh nw) 1 1 (wh ww)", wh=wh, ww=ww)
