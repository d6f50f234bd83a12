"""User config files list only what they change: ``base: <section>`` or ``full_field`` fills the
rest; unknown keys are errors naming the closest valid key."""

import pytest
from conftest import CONFIG

from utils.YParams import ConfigError, YParams, load_section


def write(tmp_path, text):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return str(path)


def test_base_from_the_shipped_file_and_from_the_same_file(tmp_path):
    path = write(
        tmp_path,
        "short:\n  base: tiny\n  max_epochs: 2\n"
        "shorter:\n  base: short\n  lr: 1.0e-3\n"
        "tiny:\n  base: tiny\n  depth: 1\n",
    )
    shipped = load_section(CONFIG, "tiny")
    tiny = {**shipped, "depth": 1}  # a base of the same name is the shipped one
    assert load_section(path, "tiny") == tiny
    assert load_section(path, "short") == {**tiny, "max_epochs": 2}  # the same file first
    assert load_section(path, "shorter") == {**tiny, "max_epochs": 2, "lr": 1.0e-3}
    params = YParams(path, "shorter", ["max_epochs=3"])
    assert (params.max_epochs, params.depth, params.h_size, params.layout.n_channels) == (
        3,
        1,
        32,
        20,
    )


def test_missing_keys_fall_back_to_full_field(tmp_path):
    path = write(tmp_path, "mine:\n  embed_dim: 128\n  num_exports: 6\n")
    full = load_section(CONFIG, "full_field")
    assert load_section(path, "mine") == {**full, "embed_dim": 128}
    assert YParams(path, "mine").depth == full["depth"]


def test_unknown_keys_missing_bases_and_cycles_are_errors(tmp_path):
    path = write(tmp_path, "mine:\n  base: tiny\n  embed_dims: 128\n  zzz: 1\n")
    with pytest.raises(
        ConfigError, match=r"unknown key\(s\) 'embed_dims' \(did you mean 'embed_dim'\?\), 'zzz'"
    ):
        YParams(path, "mine")
    path = write(tmp_path, "mine:\n  base: tinyy\n")
    with pytest.raises(ConfigError, match="base section 'tinyy' is neither"):
        load_section(path, "mine")
    path = write(tmp_path, "a:\n  base: b\nb:\n  base: a\n")
    with pytest.raises(ConfigError, match="cycle: a -> b -> a"):
        load_section(path, "a")
    with pytest.raises(
        ConfigError, match=r"unknown config key 'max_epoch' .*did you mean 'max_epochs'"
    ):
        YParams(CONFIG, "tiny", ["max_epoch=3"])
