"""The analytic FLOP count of networks/flops.py, checked against hand counts and FlopCounterMode."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from networks.channel_moe import ChannelMoE
from networks.flops import forward_flops, forward_flops_by_component, training_step_flops
from networks.vamoe import VAMoE
from utils.YParams import YParams

CONFIG = "config/vamoe.yaml"


def test_tiny_config_against_hand_count():
    # tiny: 32 x 64 grid, p = 2 -> 16 x 32 tokens (N = 512); C = 5 x 3 + 5 = 20 channels; D = 64;
    # depth 3 (blocks 0, 1 windowed with 4 x 4 windows, block 2 global); E = 6; k = 64 / 2 = 32.
    params = YParams(CONFIG, "tiny")
    assert (params.layout.n_channels, params.embed_dim, params.depth, params.num_experts) == (
        20,
        64,
        3,
        6,
    )
    B, N, C, D, E, k, P2 = 1, 512, 20, 64, 6, 32, 4
    T = B * N
    hand = {
        "patch_embed": 2 * T * (C * P2) * D,  # 5,242,880
        "var_embed": 2 * E * C * D + 2 * E * D * D,  # 15,360 + 49,152
        "head": 2 * (2 * T * D * (C * P2)),  # forecast + recons
        "attn.qkv": 3 * (2 * T * D * 3 * D),  # 3 x 12,582,912
        "attn.proj": 3 * (2 * T * D * D),  # 3 x 4,194,304
        "attn.core_windowed": 2 * (4 * B * (4 * 8) * 16**2 * D),  # 32 windows of 16 tokens
        "attn.core_global": 1 * (4 * B * N * N * D),  # 67,108,864
        "moe.pos_proj": 3 * (2 * E * D * D),
        "moe.gate": 3 * (2 * T * E * D * D),  # 3 x 25,165,824
        "moe.shared_expert": 3 * (2 * T * 3 * D * 2 * D),  # 3 x 25,165,824
        "moe.experts": 3 * (2 * T * E * (2 * k * D + D * D)),  # 3 x 50,331,648
        "moe.out_mlp": 3 * (2 * T * 2 * D * D),  # 3 x 8,388,608
    }
    assert hand["attn.core_windowed"] == 4_194_304
    assert hand["moe.experts"] == 150_994_944
    counted = forward_flops_by_component(params, batch_size=1)
    assert dict(counted) == hand
    assert forward_flops(params, 1) == sum(hand.values()) == 464_731_136
    assert training_step_flops(params, 1) == 3 * 464_731_136


def test_windowed_and_global_attention_counts():
    base = ["depth=6", "global_attn_every=3"]
    mixed = forward_flops_by_component(YParams(CONFIG, "tiny", base), 2)
    all_global = forward_flops_by_component(
        YParams(CONFIG, "tiny", ["depth=6", "global_attn_every=1"]), 2
    )
    all_window = forward_flops_by_component(
        YParams(CONFIG, "tiny", ["depth=6", "global_attn_every=100"]), 2
    )
    B, N, D, l = 2, 512, 64, 16  # noqa: E741
    per_global, per_window = 4 * B * N * N * D, 4 * B * (N // l) * l * l * D
    assert (
        mixed["attn.core_global"] == 2 * per_global
        and mixed["attn.core_windowed"] == 4 * per_window
    )
    assert (
        all_global["attn.core_global"] == 6 * per_global and all_global["attn.core_windowed"] == 0
    )
    assert (
        all_window["attn.core_windowed"] == 6 * per_window and all_window["attn.core_global"] == 0
    )
    # Global attention costs N / l = 32 times the windowed core; nothing else changes.
    assert per_global == 32 * per_window
    diff = sum(all_global.values()) - sum(all_window.values())
    assert diff == 6 * 4 * B * N * D * (N - l)
    # Padded windows are computed in full: 16 x 32 grid, 5 x 5 windows -> 4 x 7 windows of 25.
    padded = forward_flops_by_component(YParams(CONFIG, "tiny", ["window_size=[5, 5]"]), 1)
    assert padded["attn.core_windowed"] == 2 * 4 * 1 * 28 * 25**2 * 64


def test_count_is_affine_in_batch_with_only_embedding_rows_fixed():
    params = YParams(CONFIG, "tiny")
    f1, f2, f4 = (forward_flops(params, b) for b in (1, 2, 4))
    fixed = 2 * 6 * 20 * 64 + 2 * 6 * 64 * 64 + 3 * 2 * 6 * 64 * 64  # var_embed + pos_proj
    assert f2 - f1 == f1 - fixed
    assert f4 - fixed == 4 * (f1 - fixed)
    for name, value in forward_flops_by_component(params, 3).items():
        if name not in ("var_embed", "moe.pos_proj"):
            assert value == 3 * forward_flops_by_component(params, 1)[name], name


def _sdpa_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs):
    """Scores and A V of one (CPU flash) attention call from the actual tensor shapes."""
    b, h, lq, d = q_shape
    lk, dv = k_shape[-2], v_shape[-1]
    return 2 * b * h * lq * lk * d + 2 * b * h * lq * lk * dv


@pytest.mark.parametrize(
    "overrides", [(), ("moe_impl=loop",), ("window_size=[5, 5]",), ("use_moe=false",)]
)
def test_count_equals_flop_counter_mode_on_tiny_model(overrides):
    """FlopCounterMode counts conv/mm/addmm/bmm exactly; CPU flash attention has no formula in
    torch, so it is counted from the shapes of each actual call (which checks the window layout).
    The analytic count must agree exactly (tolerance 0)."""
    torch.manual_seed(0)
    params = YParams(CONFIG, "tiny", list(overrides))
    model = VAMoE.from_params(params).eval()
    x = torch.randn(2, 20, 32, 64)
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(x)
    assert counter.get_total_flops() == forward_flops(params, 2, training=False)


def test_fast_moe_respects_frozen_experts():
    torch.manual_seed(3)
    moe = ChannelMoE(32, 4, 2, impl="fast")
    for p in moe.experts[1].parameters():
        p.requires_grad_(False)
    moe(torch.randn(2, 5, 32), torch.randn(4, 32)).sum().backward()
    assert all(p.grad is None for p in moe.experts[1].parameters())
    for j in (0, 2, 3):
        assert all(
            p.grad is not None and p.grad.abs().sum() > 0 for p in moe.experts[j].parameters()
        )
