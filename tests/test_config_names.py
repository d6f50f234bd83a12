"""Config key names: the code's names, the original code's keys as aliases, checked ignored keys,
and checkpoints that carry their configuration (``inference.py --weights`` without ``--config``)."""

import json
import os

import pytest
import torch

import inference
from networks.vamoe import VAMoE
from tests.conftest import CONFIG, make_params
from utils.training.checkpoint import atomic_save, load_checkpoint, params_of_checkpoint
from utils.YParams import ConfigError, YParams, load_section


def _yaml_with(tmp_path, extra: str) -> str:
    path = tmp_path / "old.yaml"
    path.write_text(open(CONFIG).read() + f"\nold_style:\n  <<: *TINY\n{extra}", encoding="utf-8")
    return str(path)


def test_original_keys_are_aliases_of_the_code_names(tmp_path):
    path = _yaml_with(tmp_path, "  num_blocks: 8\n  topk: 4\n  nettype: vit\n")
    params = YParams(path, "old_style")
    assert params.num_heads == 8 and params.expert_channels_divisor == 4
    for gone in ("num_blocks", "topk", "nettype", "N_in_channels", "N_out_channels"):
        assert gone not in params
    over = YParams(CONFIG, "tiny", ["num_blocks=2", "topk=1"])
    assert over.num_heads == 2 and over.expert_channels_divisor == 1
    assert VAMoE.from_params(over).blocks[0].ffn.k == over.embed_dim


def test_nettype_other_than_vit_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="'nettype' must be 'vit'"):
        YParams(_yaml_with(tmp_path, "  nettype: swin\n"), "old_style")


@pytest.fixture
def seed_ckpt(synthetic_root, tmp_path):
    """A seed-0 tiny checkpoint as train.py writes it (model, names, resolved params)."""
    params = make_params(synthetic_root, "tiny", ["num_data_workers=0"])
    torch.manual_seed(0)
    path = str(tmp_path / "best_ckpt.tar")
    atomic_save(
        {
            "model": VAMoE.from_params(params).state_dict(),
            "config_name": "tiny",
            "channel_names": params.layout.names,
            "params": json.loads(json.dumps(params.to_dict())),
        },
        path,
    )
    return path


def test_inference_without_config_uses_the_checkpoints_configuration(seed_ckpt, tmp_path):
    out = tmp_path / "results"
    inference.main(["--weights", seed_ckpt, "--out_dir", str(out), "--max_batches", "1"])
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header == "forecaster,variable,level,lead_hours,rmse,acc,rmse_ic_mean"
    assert json.loads((out / "metrics.json").read_text())["config"] == "tiny"


def test_old_checkpoint_keys_and_missing_keys_are_filled(seed_ckpt):
    ckpt = load_checkpoint(seed_ckpt)
    recorded = ckpt["params"]
    recorded["num_blocks"] = recorded.pop("num_heads")
    recorded["topk"] = recorded.pop("expert_channels_divisor")
    recorded["nettype"] = "vit"
    del recorded["headline_days"]  # a key added after the checkpoint was written
    params = params_of_checkpoint(ckpt, seed_ckpt, CONFIG, None, ["max_epochs=3"])
    assert params.num_heads == 4 and params.expert_channels_divisor == 2
    assert params.headline_days == load_section(CONFIG, "full_field")["headline_days"]
    assert params.max_epochs == 3 and params.config_name == "tiny"


def test_explicit_config_that_disagrees_is_an_error_naming_the_difference(
    seed_ckpt, synthetic_root, tmp_path, capsys
):
    ckpt = load_checkpoint(seed_ckpt)
    with pytest.raises(
        ConfigError, match=r"h_size=32 grid, but config section 'tiny' gives h_size=16"
    ):
        params_of_checkpoint(ckpt, seed_ckpt, CONFIG, "tiny", ["h_size=16"])
    with pytest.raises(SystemExit) as stop:
        inference.main(
            ["--weights", seed_ckpt, "--config", "tiny_initial", "--override_dir", str(tmp_path)]
        )
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "trained on channels" in err and "t2m" in err
    assert not os.path.exists(tmp_path / "metrics.csv")


def test_checkpoint_without_configuration_needs_config(seed_ckpt):
    ckpt = load_checkpoint(seed_ckpt)
    del ckpt["params"]
    with pytest.raises(ConfigError, match="pass --config"):
        params_of_checkpoint(ckpt, seed_ckpt, CONFIG)
    assert params_of_checkpoint(ckpt, seed_ckpt, CONFIG, "tiny").config_name == "tiny"
