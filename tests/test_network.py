"""The VA-MoE network of docs/design.md (sections 1-3), checked against independent computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from networks.attention import Attention
from networks.channel_moe import ChannelMoE, sortable_int32_keys, sorted_topk
from networks.losses import L2Loss, TrainL2Loss
from networks.summary import summarize
from networks.vamoe import VAMoE
from utils.channels import ChannelLayout
from utils.YParams import ConfigError, YParams

CONFIG = "config/vamoe.yaml"


def tiny_model(name="tiny", *overrides, seed=0):
    torch.manual_seed(seed)
    params = YParams(CONFIG, name, list(overrides))
    return VAMoE.from_params(params), params


@pytest.mark.parametrize("name,channels", [("tiny", 20), ("tiny_initial", 15)])
def test_output_shapes(name, channels):
    model, params = tiny_model(name)
    x = torch.randn(3, channels, params.h_size, params.w_size)
    out = model(x, torch.randn_like(x))
    assert out.forecast.shape == (3, channels, 32, 64)
    assert out.recons.shape == (3, channels, 32, 64)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert set(out.terms) == {"forecast", "recons", "aux"}
    assert model(x).loss is None


def test_reconstruction_is_head_of_encoder_output():
    model, params = tiny_model()
    x = torch.randn(2, 20, 32, 64)
    tokens = model.patch_embed.proj(x).flatten(2).transpose(1, 2) + model.pos_embed
    p, hg, wg = 2, 16, 32
    y = tokens @ model.head.proj.weight.t()  # (B, N, p*p*C) in (p1 p2 c)
    y = y.view(2, hg, wg, p, p, 20).permute(0, 5, 1, 3, 2, 4).reshape(2, 20, 32, 64)
    torch.testing.assert_close(model(x).recons, y)


def _reference_window_attention(attn, x, grid, window):
    """Global softmax attention computed separately inside each window (explicit loops)."""
    hg, wg = grid
    wh, ww = window
    b, n, d = x.shape
    heads = attn.num_heads
    qkv = x @ attn.qkv.weight.t() + attn.qkv.bias
    out = torch.zeros_like(x)
    for i0 in range(0, hg, wh):
        for j0 in range(0, wg, ww):
            ids = [
                i * wg + j for i in range(i0, min(i0 + wh, hg)) for j in range(j0, min(j0 + ww, wg))
            ]
            q, k, v = qkv[:, ids].view(b, len(ids), 3, heads, d // heads).unbind(2)
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // heads)
            out[:, ids] = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(
                b, len(ids), d
            )
    return out @ attn.proj.weight.t() + attn.proj.bias


@pytest.mark.parametrize("grid,window", [((8, 16), (4, 4)), ((6, 10), (4, 4)), ((5, 7), (8, 8))])
def test_windowed_attention_equals_attention_within_each_window(grid, window):
    torch.manual_seed(1)
    attn = Attention(32, 4, grid, window).double()
    x = torch.randn(2, grid[0] * grid[1], 32, dtype=torch.float64)
    torch.testing.assert_close(attn(x), _reference_window_attention(attn, x, grid, window))


def _reference_original_padding(attn, x, grid, window):
    """The original code's padding, with explicit loops: every window holds wh x ww positions;
    the positions past the grid are zero tokens (so their q, k, v are the qkv bias) and their keys
    take part in the softmax of the real queries unmasked."""
    hg, wg = grid
    wh, ww = window
    b, n, d = x.shape
    heads = attn.num_heads
    qkv = x @ attn.qkv.weight.t() + attn.qkv.bias
    out = torch.zeros_like(x)
    for i0 in range(0, hg, wh):
        for j0 in range(0, wg, ww):
            ids = [
                i * wg + j for i in range(i0, min(i0 + wh, hg)) for j in range(j0, min(j0 + ww, wg))
            ]
            n_pad = wh * ww - len(ids)
            window_qkv = torch.cat([qkv[:, ids], attn.qkv.bias.expand(b, n_pad, 3 * d)], dim=1)
            q, k, v = window_qkv.view(b, wh * ww, 3, heads, d // heads).unbind(2)
            q = q[:, : len(ids)]
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // heads)
            out[:, ids] = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(
                b, len(ids), d
            )
    return out @ attn.proj.weight.t() + attn.proj.bias


@pytest.mark.parametrize("grid,window", [((6, 10), (4, 4)), ((5, 7), (8, 8))])
def test_original_padding_lets_padded_tokens_into_the_softmax(grid, window):
    torch.manual_seed(3)
    original = Attention(32, 4, grid, window, padding="original").double()
    with torch.no_grad():
        original.qkv.bias.normal_()  # padded keys differ from zero keys
    masked = Attention(32, 4, grid, window, padding="masked").double()
    masked.load_state_dict(original.state_dict())
    x = torch.randn(2, grid[0] * grid[1], 32, dtype=torch.float64)
    expected = _reference_original_padding(original, x, grid, window)
    torch.testing.assert_close(original(x), expected)
    assert not torch.allclose(masked(x), expected)


def test_original_padding_equals_masked_on_a_multiple_of_the_window():
    torch.manual_seed(4)
    original = Attention(32, 4, (8, 8), (4, 4), padding="original")
    masked = Attention(32, 4, (8, 8), (4, 4))
    masked.load_state_dict(original.state_dict())
    x = torch.randn(2, 64, 32)
    assert torch.equal(original(x), masked(x))


def test_global_attention_is_one_window_over_the_whole_grid():
    torch.manual_seed(2)
    attn = Attention(32, 4, (6, 8), None).double()
    x = torch.randn(2, 48, 32, dtype=torch.float64)
    torch.testing.assert_close(attn(x), _reference_window_attention(attn, x, (6, 8), (6, 8)))


def _reference_channel_moe(moe, h, e, topk):
    """The channel MoE of docs/design.md (section 2) written out directly: per expert gate, top-k, softmax, gather, SwiGLU."""
    d = h.shape[-1]
    k = d // topk
    g = torch.softmax(e @ moe.pos_proj.weight.t() + moe.pos_proj.bias, dim=-1)

    def swiglu(x, layer):
        return (
            F.silu(x @ layer.w_gate.weight.t()) * (x @ layer.w_up.weight.t())
        ) @ layer.w_down.weight.t()

    y = swiglu(h, moe.shared_expert)
    for j, expert in enumerate(moe.experts):
        f = (h * g[j]) @ moe.gate_proj.weight.t() + moe.gate_proj.bias
        v, idx = torch.topk(f, k, dim=-1)
        s = torch.gather(h, -1, idx) * torch.softmax(v, dim=-1)
        y = y + swiglu(s, expert)
    y = F.layer_norm(y, (d,), moe.out_norm.weight, moe.out_norm.bias, eps=moe.out_norm.eps)
    lin1, lin2 = moe.out_mlp[0], moe.out_mlp[2]
    return F.silu(y @ lin1.weight.t() + lin1.bias) @ lin2.weight.t() + lin2.bias


def _randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("impl", ["loop", "fast"])
@pytest.mark.parametrize("dim,experts,topk", [(16, 3, 2), (24, 5, 1), (32, 6, 4)])
def test_channel_moe_equals_spec_formulas(impl, dim, experts, topk):
    torch.manual_seed(dim + experts + topk)
    moe = ChannelMoE(dim, experts, topk, impl=impl).double()
    _randomise(moe)
    h = torch.randn(2, 7, dim, dtype=torch.float64)
    e = torch.randn(experts, dim, dtype=torch.float64)
    torch.testing.assert_close(moe(h, e), _reference_channel_moe(moe, h, e, topk))


@pytest.mark.parametrize("dim,experts,topk", [(16, 3, 1), (32, 6, 2), (64, 4, 4)])
def test_fast_and_loop_moe_agree_on_outputs_and_gradients(dim, experts, topk):
    torch.manual_seed(7)
    loop = ChannelMoE(dim, experts, topk, impl="loop").double()
    _randomise(loop)
    fast = ChannelMoE(dim, experts, topk, impl="fast").double()
    fast.load_state_dict(loop.state_dict())
    h = torch.randn(3, 11, dim, dtype=torch.float64)
    e = torch.randn(experts, dim, dtype=torch.float64)
    h1, h2 = h.clone().requires_grad_(), h.clone().requires_grad_()
    out_loop, out_fast = loop(h1, e), fast(h2, e)
    torch.testing.assert_close(out_fast, out_loop)
    grad_out = torch.randn_like(out_loop)
    out_loop.backward(grad_out)
    out_fast.backward(grad_out)
    torch.testing.assert_close(h2.grad, h1.grad)
    for (name, p_loop), p_fast in zip(loop.named_parameters(), fast.parameters(), strict=False):
        torch.testing.assert_close(p_fast.grad, p_loop.grad, msg=name)


def test_sortable_int32_keys_order_like_the_floats():
    values = torch.tensor(
        [
            -float("inf"),
            -3e38,
            -2.5,
            -1.0,
            -1e-30,
            -1e-45,
            0.0,
            1e-45,
            1e-30,
            1.0,
            2.5,
            3e38,
            float("inf"),
        ]
    )
    keys = sortable_int32_keys(values)
    assert torch.all(keys[1:] > keys[:-1])
    shuffled = values[torch.randperm(len(values), generator=torch.Generator().manual_seed(0))]
    assert torch.equal(sortable_int32_keys(shuffled).argsort(), shuffled.argsort())
    with pytest.raises(TypeError, match="float32"):
        sortable_int32_keys(values.double())


@pytest.mark.parametrize("k", [1, 8, 16, 31])
def test_sorted_topk_equals_float_topk(k):
    torch.manual_seed(k)
    logits = torch.randn(5, 3, 32) * torch.logspace(-20, 20, 32)  # mixed signs and scales
    expected = logits.topk(k, dim=-1)
    values, indices = sorted_topk(logits, k)
    assert torch.equal(indices, expected.indices) and torch.equal(values, expected.values)
    # A strided view (a slice of a wider matrix), as the MoE's logits can be.
    wide = torch.randn(15, 40)
    view = wide[:, 4:36].view(5, 3, 32)
    assert torch.equal(sorted_topk(view, k)[1], view.topk(k, dim=-1).indices)


def test_variable_index_matrix_default_lists():
    params = YParams(CONFIG, "vamoe")
    matrix = params.layout.index_matrix()
    assert matrix.shape == (6, 70)
    expected = torch.zeros(6, 70)
    for g in range(5):
        expected[g, g * 13 : (g + 1) * 13] = 1
    expected[5, 65:70] = 1
    assert torch.equal(matrix, expected)
    assert params.layout.index("t", 850) == 4 * 13 + 2
    assert params.layout.index("msl") == 68
    assert params.layout.names[:3] == ["z1000", "z925", "z850"]
    assert ChannelLayout(["z"], [500], []).index_matrix().tolist() == [[1.0]]


def test_trainl2_equals_formula_and_log_variances_get_gradients():
    torch.manual_seed(3)
    loss = TrainL2Loss(4)
    with torch.no_grad():
        loss.log_var.copy_(torch.tensor([0.0, 0.5, -0.3, 1.2]))
    pred, target = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    value = loss(pred, target)
    s = loss.log_var.detach()
    expected = (
        sum(
            ((pred[b, c] - target[b, c]) ** 2).mean() / math.exp(s[c]) + s[c]
            for b in range(2)
            for c in range(4)
        )
        / 8
    )
    torch.testing.assert_close(value, expected)
    value.backward()
    assert loss.log_var.grad is not None and torch.all(loss.log_var.grad != 0)
    torch.testing.assert_close(L2Loss(4)(pred, target), ((pred - target) ** 2).mean())


def test_latitude_weighted_loss_uses_cosine_weights():
    w = torch.tensor([0.5, 1.5])
    pred, target = torch.zeros(1, 1, 2, 3), torch.ones(1, 1, 2, 3)
    target[0, 0, 1] = 2.0
    assert L2Loss(1, w)(pred, target).item() == pytest.approx((0.5 * 1 + 1.5 * 4) / 2)


def test_total_loss_combines_forecast_and_reconstruction():
    model, params = tiny_model()
    x, y = torch.randn(2, 20, 32, 64), torch.randn(2, 20, 32, 64)
    out = model(x, y)
    lam = params.loss_weight
    torch.testing.assert_close(
        out.loss,
        (1 - lam) * model.forecast_loss(out.forecast, y) + lam * model.recons_loss(out.recons, x),
    )
    model_t, _ = tiny_model("tiny", "recons_target=target")
    out_t = model_t(x, y)
    torch.testing.assert_close(out_t.terms["recons"], model_t.recons_loss(out_t.recons, y).detach())


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("use_moe=false",),
        ("use_moe=moe", "num_experts=3"),
        ("moe_impl=loop",),
        ("checkpoint_blocks=true",),
    ],
)
def test_forward_backward_gives_finite_gradients_to_every_parameter(overrides):
    model, _ = tiny_model("tiny", *overrides)
    model.train()
    x = torch.randn(2, 20, 32, 64)
    model(x, torch.randn_like(x)).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if "use_moe=moe" not in overrides:  # a token-routed expert may get no token
            assert p.grad.abs().sum() > 0, name


def test_checkpointed_blocks_match_plain_blocks():
    plain, _ = tiny_model("tiny", seed=5)
    ckpt, _ = tiny_model("tiny", "checkpoint_blocks=true", seed=5)
    x, y = torch.randn(2, 20, 32, 64), torch.randn(2, 20, 32, 64)
    plain.train(), ckpt.train()
    loss_a, loss_b = plain(x, y).loss, ckpt(x, y).loss
    torch.testing.assert_close(loss_a, loss_b)
    loss_a.backward(), loss_b.backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=False):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_token_moe_adds_balancing_loss():
    model, params = tiny_model("tiny", "use_moe=moe", "num_experts=4")
    model.train()
    x = torch.randn(2, 20, 32, 64)
    out = model(x, torch.randn_like(x))
    assert out.terms["aux"].item() >= params.depth * 0.99  # E * sum f_i P_i >= 1 per block
    expected = (
        (1 - params.loss_weight) * out.terms["forecast"]
        + params.loss_weight * out.terms["recons"]
        + params.moe_aux_loss_weight * out.terms["aux"]
    )
    torch.testing.assert_close(out.loss.detach(), expected)


@pytest.mark.parametrize(
    "name,total",
    [("vamoe", 375_675_788), ("vamoe_initial", 347_329_666), ("vamoe_1024", 664_741_004)],
)
def test_paper_parameter_counts(name, total):
    summary = summarize(YParams(CONFIG, name))
    assert summary["total_params"] == total
    assert summary["trainable_params"] == total


def test_recipe_of_the_paper_sections():
    recipe = summarize(YParams(CONFIG, "vamoe"))["recipe"]
    assert (recipe["lr"], recipe["min_lr"], recipe["betas"], recipe["weight_decay"]) == (
        2e-4,
        3e-7,
        [0.9, 0.999],
        0.01,
    )
    assert (recipe["max_epochs"], recipe["batch_size"], recipe["drop_path"]) == (100, 32, 0.0)
    assert recipe["clip_grad_norm"] == 20.0
    for name in ("vamoe_initial", "vamoe_1024"):
        params = YParams(CONFIG, name)
        assert {key: params[key] for key in recipe} == recipe, name
    assert YParams(CONFIG, "vamoe_incremental").lr == 5e-5


def test_attn_padding_reaches_every_windowed_block():
    model = VAMoE.from_params(YParams(CONFIG, "tiny", ["attn_padding=original"]))
    assert {b.attn.padding for b in model.blocks} == {"original"}


def test_paper_component_counts():
    c = summarize(YParams(CONFIG, "vamoe"))["components"]
    assert c["blocks.ffn.experts"]["params"] == 6 * 24 * 1_179_648
    assert c["blocks.ffn.shared_expert"]["params"] == 84_934_656
    assert c["blocks.attn.qkv"]["params"] == 42_522_624
    assert c["pos_embed"]["params"] == 6_291_456
    assert c["forecast_loss"]["params"] == c["recons_loss"]["params"] == 70


@pytest.mark.parametrize(
    "override,keys",
    [
        ("num_experts=4", ["num_experts", "higher_features"]),
        ("num_heads=5", ["embed_dim", "num_heads"]),
        ("expert_channels_divisor=3", ["embed_dim", "expert_channels_divisor"]),
        ("pressure_level=[500, 505]", ["pressure_level"]),
        ("use_moe=sparse", ["use_moe"]),
        ("loss=l1", ["loss"]),
        ("attn_padding=zeros", ["attn_padding"]),
    ],
)
def test_config_errors_name_the_keys(override, keys):
    with pytest.raises(ConfigError) as err:
        YParams(CONFIG, "tiny", [override])
    for key in keys:
        assert f"'{key}'" in str(err.value)


def test_config_accepts_num_exports_spelling(tmp_path):
    path = tmp_path / "c.yaml"
    text = open(CONFIG).read() + "\nalias_test:\n  <<: *TINY\n  num_exports: 6\n"
    path.write_text(
        text.replace("  num_experts: 6                     # channelmoe", "  num_exports: 6  #")
    )
    assert YParams(str(path), "alias_test").num_experts == 6
    with pytest.raises(ConfigError, match="'num_experts'"):
        YParams(str(path), "alias_test", ["num_exports=2"])


def test_unknown_section_and_set_key_are_errors():
    with pytest.raises(ConfigError, match="'nope'"):
        YParams(CONFIG, "nope")
    with pytest.raises(ConfigError, match="unknown config key 'max_epoch'"):
        YParams(CONFIG, "tiny", ["max_epoch=3"])
    params = YParams(
        CONFIG, "tiny", ["max_epochs=3", "lr=1e-3", "betas=[0.8, 0.9]", "compile=true"]
    )
    assert (params.max_epochs, params.lr, params.betas, params.compile) == (
        3,
        1e-3,
        [0.8, 0.9],
        True,
    )


def test_set_dates_stay_strings():
    params = YParams(CONFIG, "tiny", ["train_period=[2020-01-13, 2020-01-24]"])
    assert params.train_period == ["2020-01-13", "2020-01-24"]


# The paper grid's forward output before grids of any size were padded (computed with the code of
# that time): tiny network at 128 x 256 with 8 x 8 windows, seed 0, inputs from generator seed 1.
PAPER_GRID_PARAMS = 862_312
PAPER_GRID_SUMS = (283.75908431485482, 47046.423712650962, 369.46269031704196, 47012.199971760856)
PAPER_GRID_FORECAST_ROW0 = [
    "0x1.a872220000000p-6", "0x1.10a7820000000p-6", "0x1.9896e60000000p-5",
    "-0x1.7113f80000000p-4", "0x1.8a80c40000000p-5", "-0x1.721a020000000p-4",
    "-0x1.528dc60000000p-5", "-0x1.df926c0000000p-5", "-0x1.7d3f820000000p-3",
    "-0x1.ad241e0000000p-5", "-0x1.e1fcbc0000000p-4", "0x1.0fc6f40000000p-5",
]  # fmt: skip


def _paper_grid_model():
    torch.manual_seed(0)
    params = YParams(CONFIG, "tiny", ["h_size=128", "w_size=256", "window_size=[8, 8]"])
    model = VAMoE.from_params(params).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 20, 128, 256, generator=g)
    return model, x, torch.randn(1, 20, 128, 256, generator=g)


def test_paper_grid_output_unchanged_by_padding_support():
    model, x, t = _paper_grid_model()
    assert sum(p.numel() for p in model.parameters()) == PAPER_GRID_PARAMS
    assert model.pos_embed.shape == (1, 64 * 128, 64)
    with torch.no_grad():
        out = model(x, t)
    f64, r64 = out.forecast.double(), out.recons.double()
    sums = (f64.sum(), f64.abs().sum(), r64.sum(), r64.abs().sum())
    for got, want in zip(sums, PAPER_GRID_SUMS, strict=True):
        assert float(got) == pytest.approx(want, rel=1e-6)
    want = torch.tensor([float.fromhex(v) for v in PAPER_GRID_FORECAST_ROW0])
    torch.testing.assert_close(out.forecast[0, ::5, 0, :3].flatten(), want, rtol=1e-5, atol=1e-7)
    # Bit for bit: on a grid of whole patches the embedding is the bare convolution and the head
    # the bare unpatchify (nothing padded, nothing cropped).
    p = model.patch_embed.proj
    assert torch.equal(model.patch_embed(x), p(x).flatten(2).transpose(1, 2))
    tokens = model.encode(x)
    y = (tokens @ model.head.proj.weight.t()).view(1, 64, 128, 2, 2, 20)
    assert torch.equal(model.head(tokens), y.permute(0, 5, 1, 3, 2, 4).reshape(1, 20, 128, 256))


@pytest.mark.parametrize("size", [(31, 64), (33, 62), (9, 14)])
def test_any_grid_size_is_padded_and_cropped(size):
    h, w = size
    model, params = tiny_model("tiny", f"h_size={h}", f"w_size={w}")
    assert model.grid_size == (-(-h // 2), -(-w // 2))
    x = torch.randn(2, 20, h, w)
    out = model(x, torch.randn_like(x))
    assert out.forecast.shape == out.recons.shape == (2, 20, h, w)
    # The padding: east columns wrap around, south rows repeat the last row.
    padded = torch.cat([x, x[..., : w % 2]], -1)
    padded = torch.cat([padded, padded[..., -1:, :].expand(-1, -1, h % 2, -1)], -2)
    conv = model.patch_embed.proj
    torch.testing.assert_close(model.patch_embed(x), conv(padded).flatten(2).transpose(1, 2))


def test_padded_cells_do_not_enter_the_loss():
    model, _ = tiny_model("tiny", "h_size=31", "w_size=63", "loss=l2", "loss_weight=0")
    x = torch.randn(1, 20, 31, 63)
    t = torch.randn_like(x)
    out = model(x, t)
    torch.testing.assert_close(out.loss, ((out.forecast - t) ** 2).mean())


def test_latitude_weighted_loss_uses_the_given_latitudes():
    from utils.grid import latitude_weights, pole_latitudes

    lat = pole_latitudes(33)
    torch.manual_seed(0)
    params = YParams(CONFIG, "tiny", ["h_size=33", "lat_weight_loss=true", "loss=l2"])
    model = VAMoE.from_params(params, lat=lat)
    w = torch.as_tensor(latitude_weights(lat), dtype=torch.float32)
    torch.testing.assert_close(model.forecast_loss.lat_weights, w)
    pred, target = torch.randn(2, 20, 33, 64), torch.randn(2, 20, 33, 64)
    want = (((pred - target) ** 2) * w.view(1, 1, -1, 1)).mean()
    torch.testing.assert_close(model.forecast_loss(pred, target), want)
    with pytest.raises(ValueError, match="32 latitudes for a grid of 33 rows"):
        VAMoE.from_params(params, lat=lat[:32])


def test_token_moe_dense_dispatch_equals_per_token_top_k_experts():
    from networks.token_moe import TokenMoE

    torch.manual_seed(0)
    moe = TokenMoE(dim=16, hidden_dim=24, num_experts=4, topk=2).eval()
    x = torch.randn(2, 5, 16)
    out, _ = moe(x)
    tokens = x.reshape(-1, 16)
    values, idx = moe.router(tokens).topk(2, dim=-1)
    weights = torch.softmax(values, dim=-1)
    expected = torch.stack(
        [
            sum(weights[t, s] * moe.experts[int(idx[t, s])](tokens[t]) for s in range(2))
            for t in range(tokens.shape[0])
        ]
    )
    torch.testing.assert_close(out.reshape(-1, 16), expected, rtol=1e-5, atol=1e-6)
