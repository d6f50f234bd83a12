"""Incremental stage: channel mapping, expert mapping, freezing and trainable counts."""

import os

import pytest
import torch

import train
from networks.freezing import expand_freeze_patterns, freeze_from_params
from networks.summary import summarize
from networks.vamoe import VAMoE
from utils.channels import ChannelLayout
from utils.training.checkpoint import atomic_save, load_checkpoint
from utils.training.incremental import grow_state_dict, load_initial_stage
from utils.YParams import ConfigError, YParams

CONFIG = "config/vamoe.yaml"


def _marked_initial_checkpoint(path, old_overrides):
    """A tiny initial-stage model whose channel-indexed tensors carry their channel number + 1."""
    params = YParams(CONFIG, "tiny_initial", old_overrides)
    torch.manual_seed(0)
    model = VAMoE.from_params(params)
    c, p = params.layout.n_channels, params.patch_size
    marks = torch.arange(1, c + 1, dtype=torch.float32)
    with torch.no_grad():
        model.patch_embed.proj.weight.copy_(
            marks.view(1, c, 1, 1).expand_as(model.patch_embed.proj.weight)
        )
        model.head.proj.weight.view(p, p, c, -1).copy_(marks.view(1, 1, c, 1).expand(p, p, c, 64))
        model.var_embed.mlp[0].weight.copy_(marks.view(1, c).expand(64, c))
        model.forecast_loss.log_var.copy_(marks)
        model.recons_loss.log_var.copy_(-marks)
        for block in model.blocks:
            for j, expert in enumerate(block.ffn.experts):
                expert.w_gate.weight.fill_(100 + j)
    atomic_save({"model": model.state_dict(), "channel_names": params.layout.names}, path)
    return params


def test_every_old_channel_lands_at_its_new_index(tmp_path):
    path = str(tmp_path / "initial.tar")
    old = _marked_initial_checkpoint(
        path, ["higher_features=[z, t]", "pressure_level=[850, 250]", "num_experts=2"]
    )
    # New set: a new upper-air variable between the old ones, a new level, and surface variables.
    new = YParams(
        CONFIG,
        "tiny_incremental",
        [
            "higher_features=[z, q, t]",
            "pressure_level=[850, 500, 250]",
            "surface_features=[t2m, msl]",
            "num_experts=4",
            f"cl_ckpt_path={path}",
            "old_higher_features=[z, t]",
            "old_pressure_level=[850, 250]",
            "old_surface_features=[]",
        ],
    )
    torch.manual_seed(1)
    model = VAMoE.from_params(new)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_initial_stage(model, new)
    layout, p = new.layout, new.patch_size
    old_names = old.layout.names  # z850 z250 t850 t250
    head = model.head.proj.weight.view(p, p, layout.n_channels, -1)
    for i, channel in enumerate(old.layout.channels):
        j = layout.index(channel.variable, channel.level)
        assert layout.names[j] == old_names[i]
        assert torch.all(model.patch_embed.proj.weight[:, j] == i + 1)
        assert torch.all(head[:, :, j] == i + 1)
        assert torch.all(model.var_embed.mlp[0].weight[:, j] == i + 1)
        assert model.forecast_loss.log_var[j] == i + 1 and model.recons_loss.log_var[j] == -(i + 1)
    new_only = [j for j, c in enumerate(layout.channels) if c.name not in old_names]
    assert [layout.names[j] for j in new_only] == [
        "z500",
        "q850",
        "q500",
        "q250",
        "t500",
        "t2m",
        "msl",
    ]
    for j in new_only:
        assert torch.equal(
            model.patch_embed.proj.weight[:, j], fresh["patch_embed.proj.weight"][:, j]
        )
        assert model.forecast_loss.log_var[j] == 0
    # Experts follow their variable group: old z (0) -> 0, old t (1) -> 2; q and surface are new.
    ffn = model.blocks[0].ffn
    assert torch.all(ffn.experts[0].w_gate.weight == 100)
    assert torch.all(ffn.experts[2].w_gate.weight == 101)
    assert torch.equal(ffn.experts[1].w_gate.weight, fresh["blocks.0.ffn.experts.1.w_gate.weight"])
    assert "blocks.0.ffn.experts.3.w_up.weight" in report.new
    assert "head.proj.weight" in report.mapped and "pos_embed" in report.copied
    assert expand_freeze_patterns(["blocks.*.ffn.experts.{old_experts}.*"], new) == [
        "blocks.*.ffn.experts.0.*",
        "blocks.*.ffn.experts.2.*",
    ]
    table = report.format(freeze_from_params(model, new))
    assert "mapped by channel" in table and "frozen" in table


def test_unmatched_old_variables_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"\['w500'\]|w500"):
        YParams(CONFIG, "tiny_incremental", ["old_higher_features=[z, w]"])
    with pytest.raises(ConfigError, match="sst"):
        YParams(CONFIG, "tiny_incremental", ["old_surface_features=[sst]"])
    old, new = ChannelLayout(["z"], [850, 700], []), ChannelLayout(["z"], [850], ["t2m"])
    model = VAMoE(new, img_size=(8, 16), embed_dim=16, depth=1, num_heads=2, window_size=(2, 2))
    with pytest.raises(ValueError, match="z700"):
        grow_state_dict({}, model, old, new, 2)


def test_checkpoint_from_other_variables_is_refused(tmp_path):
    path = str(tmp_path / "initial.tar")
    _marked_initial_checkpoint(path, ["higher_features=[z, t]", "num_experts=2"])
    params = YParams(CONFIG, "tiny_incremental", [f"cl_ckpt_path={path}"])
    with pytest.raises(ValueError, match="trained on channels"):
        load_initial_stage(VAMoE.from_params(params), params)


def test_trainable_counts():
    paper = summarize(YParams(CONFIG, "vamoe_incremental"))
    assert (paper["total_params"], paper["trainable_params"]) == (375_675_788, 92_412_812)
    big = summarize(YParams(CONFIG, "vamoe_incremental", ["embed_dim=1024"]))
    assert (big["total_params"], big["trainable_params"]) == (664_741_004, 161_227_916)
    tiny = summarize(YParams(CONFIG, "tiny_incremental"))
    d, depth, old_experts = 64, 3, 5
    frozen_per_block = (
        4 * d  # norm1, norm2
        + 3 * d * d
        + 3 * d
        + d * d
        + d  # qkv, proj
        + 3 * d * 2 * d  # shared SwiGLU
        + old_experts * (2 * (d // 2) * d + d * d)
    )
    assert tiny["frozen_params"] == depth * frozen_per_block
    assert tiny["trainable_params"] == tiny["total_params"] - depth * frozen_per_block


def test_freeze_pattern_typo_is_an_error():
    params = YParams(CONFIG, "tiny_incremental", ["freeze=['blocks.*.atn.*']"])
    with pytest.raises(ValueError, match="atn"):
        freeze_from_params(VAMoE.from_params(params), params)


def test_frozen_tensors_unchanged_after_incremental_training(synthetic_root, tmp_path):
    initial_run = os.path.join(tmp_path, "tiny_initial", "0")
    train.main(
        [
            "--config",
            "tiny_initial",
            "--exp_dir",
            str(tmp_path),
            "--set",
            f"root_dir={synthetic_root}",
            "--set",
            "num_data_workers=0",
            "--set",
            "max_epochs=1",
            "--set",
            "max_steps_per_epoch=3",
        ]
    )
    initial_path = os.path.join(initial_run, "training_checkpoints", "best_ckpt.tar")
    train.main(
        [
            "--config",
            "tiny_incremental",
            "--exp_dir",
            str(tmp_path),
            "--set",
            f"root_dir={synthetic_root}",
            "--set",
            "num_data_workers=0",
            "--set",
            "max_epochs=1",
            "--set",
            "max_steps_per_epoch=4",
            "--set",
            f"cl_ckpt_path={initial_path}",
        ]
    )
    before = load_checkpoint(initial_path)["model"]
    after_ckpt = load_checkpoint(
        os.path.join(tmp_path, "tiny_incremental", "0", "training_checkpoints", "ckpt.tar")
    )
    after = after_ckpt["model"]
    params = YParams(CONFIG, "tiny_incremental")
    model = VAMoE.from_params(params)
    frozen = set(freeze_from_params(model, params))
    assert frozen and all(
        ".attn." in n or ".norm" in n or "shared_expert" in n or ".experts." in n for n in frozen
    )
    for name in frozen:
        assert torch.equal(after[name], before[name]), name
    assert not torch.equal(
        after["blocks.0.ffn.gate_proj.weight"], before["blocks.0.ffn.gate_proj.weight"]
    )
    # Frozen parameters are not in the optimiser.
    n_opt = sum(len(g["params"]) for g in after_ckpt["optimizer"]["param_groups"])
    assert n_opt == len(list(model.parameters())) - len(frozen)
