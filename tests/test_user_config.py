"""User config files list only what they change: ``base: <section>`` or ``full_field`` fills the
rest; unknown keys are errors naming the closest valid key."""

import pytest
from conftest import CONFIG

from utils.YParams import ConfigError, YParams, load_section, validate


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


def test_validate_reports_every_problem_of_a_round_in_one_error():
    """First the type and range of each key; only when those hold, how the keys fit together."""
    tiny = load_section(CONFIG, "tiny")
    with pytest.raises(ConfigError) as err:
        validate({**tiny, "h_size": 0, "lr": 0, "num_heads": 5, "window_size": [4]}, "tiny")
    assert str(err.value) == (
        "invalid config (section 'tiny'): 'h_size' must be a positive integer, got 0; "
        "'lr' must be a number in (0.0, inf), got 0; 'min_lr' (0.0001) must not exceed 'lr' (0)"
    )
    fitting = {"num_heads": 5, "window_size": [4], "data_step": 0, "pressure_level": [505, 500]}
    with pytest.raises(ConfigError) as err:
        validate({**tiny, **fitting})
    problems = str(err.value).removeprefix("invalid config: ").split("; ")
    assert [p.split(" ")[0] for p in problems] == [
        "'pressure_level'",
        "'embed_dim'",
        "'window_size'",
        "'data_step'",
    ]
    assert problems[0].startswith("'pressure_level' has [505], which are not ERA5 levels (1000,")
    assert problems[1:] == [
        "'embed_dim' (64) is not divisible by 'num_heads' (5)",
        "'window_size' must be two positive integers, got [4]",
        "'data_step' must be null or a positive integer (hours), got 0",
    ]
