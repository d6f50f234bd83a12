"""Analytic FLOP count of the VA-MoE network from its configuration.

Counted: the matrix products of the *model function* (docs/design.md), one multiply-add = 2
FLOPs, so a ``(m x k) @ (k x n)`` product is ``2 m k n``. Not counted: element-wise work (biases,
LayerNorm, softmax, SiLU/GELU, top-k, gather, residual adds, the loss, the optimiser). The count
belongs to the function, not to an implementation: the ``fast`` and ``loop`` channel MoE have the
same count (folding the gate scaling into the gate weight is element-wise work on ``E x D x D``
numbers and is not counted).

Notation: batch ``B``; token grid ``Hg x Wg = ceil(H/p) x ceil(W/p)`` (the input padded to whole
patches), ``N = Hg Wg`` tokens per sample, ``T = B N`` tokens; ``C`` channels; embedding ``D``;
``E`` experts (variable groups); ``k = D / expert_channels_divisor`` routed channels per expert; ``p`` patch size;
``L`` depth.

Forward FLOPs, per component::

    patch_embed        2 T (C p^2) D                    Conv2d(C, D, p, stride p) = per-patch linear
    var_embed          2 E C D + 2 E D D                Linear(C->D), Linear(D->D) on the E rows of P
    head               2 x 2 T D (C p^2)                the head runs twice: forecast and recons
    per block:
      attn.qkv         2 T D (3D)
      attn.proj        2 T D D
      attn.core        windowed: 4 B nW (wh ww)^2 D     scores Q K^T (2 l^2 D) + A V (2 l^2 D) per
                       global:   4 B N^2 D              window of l tokens, summed over the heads;
                                                        nW = ceil(Hg/wh) ceil(Wg/ww): padded windows
                                                        are computed in full, as the code does
      channel MoE (use_moe: channelmoe):
        pos_proj       2 E D D                          W_pos e on the E rows (batch independent)
        gate           2 T E D D                        E gate matmuls of D x D per token
        shared_expert  2 T 3 D (2D)                     SwiGLU D -> 2D -> D
        experts        2 T E (2 k D + D D)              E SwiGLUs k -> D -> D
        out_mlp        2 T 2 D D                        Linear(D->D), Linear(D->D)
      plain MLP (use_moe: false), hidden F = D mlp_ratio:
        mlp            2 T 2 D F
      token MoE (use_moe: moe), hidden F, top-k_t experts per token:
        router         2 T D E (+ 2 T D E for the noise linear, training only)
        experts        2 T k_t 2 D F                    every token visits k_t experts

A training step is counted as 3 x the forward count (the backward pass computes the input and the
weight gradient of every product, 2 x its forward FLOPs) -- the usual "model FLOPs" convention of
MFU. It over-counts by the input gradients nobody needs (the patch-embed conv and the first
var-embed linear, whose inputs are data: ``2 T C p^2 D + 2 E C D``, < 0.1 % at every config here)
and does not count work an implementation adds: attention backward recomputing the scores,
activation-checkpointing recomputation, the optimiser.

The count is affine in the batch: everything scales with ``B`` except ``var_embed`` and the
blocks' ``pos_proj`` (``2 E C D + 2 E D D + L 2 E D D``).
"""

from __future__ import annotations

import math
from collections import OrderedDict


def forward_flops_by_component(
    params, batch_size: int = 1, training: bool = True
) -> dict[str, int]:
    """Forward FLOPs of one batch, by component (summed over blocks), as an ordered dict.

    Args:
        params: a :class:`utils.YParams.YParams` (or a mapping with the same keys and ``layout``).
        batch_size: B.
        training: counts the token-MoE noise linear, which only runs in training.
    """
    b = int(batch_size)
    h, w, p = params["h_size"], params["w_size"], params["patch_size"]
    d = params["embed_dim"]
    depth = params["depth"]
    c = params["layout"].n_channels
    hg, wg = -(-h // p), -(-w // p)  # the input is padded to whole patches
    n = hg * wg
    t = b * n
    use_moe = params["use_moe"]
    wh, ww = params["window_size"]
    every = params["global_attn_every"]

    f: dict[str, int] = OrderedDict()
    f["patch_embed"] = 2 * t * (c * p * p) * d
    if use_moe == "channelmoe":
        e = params["num_experts"]
        f["var_embed"] = 2 * e * c * d + 2 * e * d * d
    f["head"] = 2 * (2 * t * d * (c * p * p))

    n_windows = math.ceil(hg / wh) * math.ceil(wg / ww)
    for key in ("attn.qkv", "attn.proj", "attn.core_windowed", "attn.core_global"):
        f[key] = 0
    for i in range(depth):
        f["attn.qkv"] += 2 * t * d * 3 * d
        f["attn.proj"] += 2 * t * d * d
        if (i + 1) % every == 0:
            f["attn.core_global"] += 4 * b * n * n * d
        else:
            f["attn.core_windowed"] += 4 * b * n_windows * (wh * ww) ** 2 * d

    if use_moe == "channelmoe":
        for key, value in channel_moe_flops_by_component(
            t, d, params["num_experts"], params["expert_channels_divisor"]
        ).items():
            f[f"moe.{key}"] = depth * value
    elif use_moe is False:
        hidden = int(d * params["mlp_ratio"])
        f["mlp"] = depth * 2 * t * 2 * d * hidden
    else:  # token-routed MoE
        e = params["num_experts"]
        hidden = int(d * params["mlp_ratio"])
        f["token_moe.router"] = depth * 2 * t * d * e * (2 if training else 1)
        f["token_moe.experts"] = depth * 2 * t * params["moe_topk_tokens"] * 2 * d * hidden
    return f


def forward_flops(params, batch_size: int = 1, training: bool = True) -> int:
    """Total forward FLOPs of one batch."""
    return sum(forward_flops_by_component(params, batch_size, training).values())


def training_step_flops(params, batch_size: int = 1) -> int:
    """Model FLOPs of one training step (forward + backward) = 3 x the forward count."""
    return 3 * forward_flops(params, batch_size, training=True)


def channel_moe_flops_by_component(
    tokens: int, dim: int, num_experts: int, expert_channels_divisor: int
) -> dict[str, int]:
    """Forward FLOPs of one channel-MoE layer on ``tokens`` tokens, by component."""
    t, d, e, k = tokens, dim, num_experts, dim // expert_channels_divisor
    return OrderedDict(
        [
            ("pos_proj", 2 * e * d * d),
            ("gate", 2 * t * e * d * d),
            ("shared_expert", 2 * t * 3 * d * (2 * d)),
            ("experts", 2 * t * e * (2 * k * d + d * d)),
            ("out_mlp", 2 * t * 2 * d * d),
        ]
    )


def channel_moe_flops(tokens: int, dim: int, num_experts: int, expert_channels_divisor: int) -> int:
    """Forward FLOPs of one channel-MoE layer on ``tokens`` tokens (pos_proj included)."""
    parts = channel_moe_flops_by_component(tokens, dim, num_experts, expert_channels_divisor)
    return sum(parts.values())
