"""Statistics files, streaming moments and the climatology."""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import SYNTHETIC_DAYS, SYNTHETIC_START, make_params

from utils.channels import ERA5_LEVELS, ChannelLayout
from utils.data.climatology import Climatology, ClimatologyWriter, default_climatology_path
from utils.data.npy_layout import statistic_path, surface_path, upper_path
from utils.data.statistics import RunningMoments, StatisticsError, compute_statistics, load_mean_std
from utils.data.synthetic import SyntheticERA5
from utils.errors import DataError
from utils.times import day_of_year_index, period_times, to_hours

LEVELS = (850, 500, 250)


def _all_fields(root, var, level, times):
    return np.stack(
        [
            np.load(
                upper_path(root, t, var, level) if level is not None else surface_path(root, t, var)
            )
            for t in times
        ]
    ).astype(np.float64)


def test_statistics_match_numpy_on_synthetic_set(synthetic_root):
    end = to_hours(SYNTHETIC_START) + 24 * SYNTHETIC_DAYS - 24
    times = period_times(SYNTHETIC_START, f"2020-01-{SYNTHETIC_DAYS:02d}", 6)
    assert times[-1] == end + 18
    with open(statistic_path(synthetic_root)) as f:
        upper = json.load(f)
    with open(statistic_path(synthetic_root, "mean_std_single.json")) as f:
        single = json.load(f)
    for var in ("z", "q", "t"):
        assert len(upper["mean"][var]) == 37
        for p in LEVELS:
            data = _all_fields(synthetic_root, var, p, times)
            i = ERA5_LEVELS.index(p)
            np.testing.assert_allclose(upper["mean"][var][i], data.mean(), rtol=1e-6)
            np.testing.assert_allclose(upper["std"][var][i], data.std(), rtol=1e-6)
        assert upper["mean"][var][ERA5_LEVELS.index(1000)] is None
    for var in ("t2m", "sp"):
        data = _all_fields(synthetic_root, var, None, times)
        np.testing.assert_allclose(single["mean"][var], data.mean(), rtol=1e-6)
        np.testing.assert_allclose(single["std"][var], data.std(), rtol=1e-6)
    layout = make_params(synthetic_root).layout
    mean, std = load_mean_std(synthetic_root, layout)
    assert mean.dtype == np.float32 and mean.shape == (20,)
    assert mean[layout.index("z", 500)] == np.float32(upper["mean"]["z"][ERA5_LEVELS.index(500)])
    assert std[layout.index("t2m")] == np.float32(single["std"]["t2m"])


def test_running_moments_large_offset():
    rng = np.random.default_rng(0)
    chunks = [1.0e5 + rng.normal(0, 3.0, size=(7, 11)).astype(np.float32) for _ in range(50)]
    m = RunningMoments()
    for c in chunks:
        m.update(c)
    data = np.concatenate([c.ravel() for c in chunks]).astype(np.float64)
    assert m.n == data.size
    np.testing.assert_allclose(m.mean, data.mean(), rtol=1e-12)
    np.testing.assert_allclose(m.std, data.std(), rtol=1e-9)


def test_load_mean_std_errors(tmp_path):
    layout = ChannelLayout(["z"], [500], ["t2m"])
    with pytest.raises(FileNotFoundError, match="mean_std.json"):
        load_mean_std(str(tmp_path), layout)
    os.makedirs(tmp_path / "statistic")
    values = [1.0] * 37
    values[ERA5_LEVELS.index(500)] = None
    with open(tmp_path / "statistic" / "mean_std.json", "w") as f:
        json.dump({"mean": {"z": [1.0] * 37}, "std": {"z": values}}, f)
    with open(tmp_path / "statistic" / "mean_std_single.json", "w") as f:
        json.dump({"mean": {"t2m": 280.0}, "std": {"t2m": 0.0}}, f)
    with pytest.raises(StatisticsError, match=r"std of 'z' at level 500 hPa is null"):
        load_mean_std(str(tmp_path), layout)
    with pytest.raises(StatisticsError, match=r"mean_std_single.json: std of 't2m' is invalid"):
        load_mean_std(str(tmp_path), ChannelLayout([], [], ["t2m"]))
    with pytest.raises(StatisticsError, match="surface variable 'msl'"):
        load_mean_std(str(tmp_path), ChannelLayout([], [], ["msl"]))


def test_data_climatology_and_cli_refuse_overwrite(synthetic_root, tmp_path, capsys):
    root = str(tmp_path / "era5")
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns("statistic"))
    compute_statistics(
        root, "2020-01-02", "2020-01-04", 6, upper={"z": [500]}, surface=["t2m"], progress=False
    )
    layout = ChannelLayout(["z"], [500], ["t2m"])
    clim = Climatology(root, layout)
    assert clim.by_day_of_year and list(clim.hours) == [0, 6, 12, 18]
    t = to_hours("2020-01-03") + 12
    np.testing.assert_allclose(clim.field(t)[0], np.load(upper_path(root, t, "z", 500)), rtol=1e-6)
    times = period_times("2020-01-02", "2020-01-04", 6)
    np.testing.assert_allclose(
        clim.mean_field()[1], _all_fields(root, "t2m", None, times).mean(0), rtol=1e-6
    )
    # a day of year outside the period: an error naming it, or the time mean when allowed
    with pytest.raises(DataError, match=r"day of year 152 \(06-01\) is not stored"):
        clim.field(to_hours("2020-06-01"))
    lenient = Climatology(root, layout, allow_fallback=True)
    np.testing.assert_array_equal(lenient.field(to_hours("2020-06-01")), lenient.mean_field())
    assert lenient.fallbacks == {
        "every channel: time-mean climatology used (day of year 152 (06-01) is not stored)"
    }
    with pytest.raises(FileExistsError):
        compute_statistics(
            root, "2020-01-02", "2020-01-04", 6, upper={"z": [500]}, surface=["t2m"], progress=False
        )
    from tools.statistics import main

    main(
        [
            "--root_dir",
            root,
            "--start",
            "2020-01-02",
            "--end",
            "2020-01-02",
            "--variables",
            "z",
            "--levels",
            "500",
            "--surface",
            "--overwrite",
        ]
    )
    with open(statistic_path(root)) as f:
        assert list(json.load(f)["mean"]) == ["z"]
    os.remove(upper_path(root, to_hours("2020-01-02") + 6, "z", 500))
    with pytest.raises(SystemExit) as exit_info:
        main(["--root_dir", root, "--start", "2020-01-02", "--end", "2020-01-02", "--overwrite"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: " in err and "06:00:00-z-500.0.npy" in err and "Traceback" not in err


def test_synthetic_climatology_is_background_state(synthetic_root):
    params = make_params(synthetic_root)
    assert default_climatology_path(params) == os.path.join(
        synthetic_root, "statistic", "climatology"
    )
    clim = Climatology(default_climatology_path(params), params.layout)
    gen = SyntheticERA5(32, 64, LEVELS, seed=0)
    t = to_hours("2020-01-29") + 18
    background = gen.fields(t, waves=False)
    field = clim.field(t)
    assert field.shape == (20, 32, 64) and field.dtype == np.float32
    for c, name in enumerate(params.layout.names):
        np.testing.assert_allclose(field[c], background[name], rtol=1e-5)
    # the data differ from the climatology by the waves
    data = np.load(upper_path(synthetic_root, t, "z", 500))
    assert np.abs(data - field[params.layout.index("z", 500)]).max() > 300.0


def test_climatology_nearest_hour_and_time_mean_only(tmp_path):
    layout = ChannelLayout([], [], ["t2m"])
    w = ClimatologyWriter(str(tmp_path / "c"), (2, 3), hours=[0, 12], doys=[0, 59])
    cube = np.arange(2 * 2 * 6, dtype=np.float32).reshape(2, 2, 2, 3)
    w.add("t2m", np.full((2, 3), -1.0), cube)
    w.close()
    clim = Climatology(str(tmp_path / "c"), layout)
    feb29 = to_hours("2024-02-29")
    assert day_of_year_index(feb29) == 59 and day_of_year_index(to_hours("2023-03-01")) == 60
    np.testing.assert_array_equal(clim.field(feb29 + 14)[0], cube[1, 1])  # 14 h -> 12 h
    np.testing.assert_array_equal(clim.field(feb29 + 22)[0], cube[1, 0])  # 22 h -> 00 h
    np.testing.assert_array_equal(clim.field(to_hours("2021-01-01") + 5)[0], cube[0, 0])
    only_mean = ClimatologyWriter(str(tmp_path / "m"), (2, 3))
    only_mean.add("t2m", np.full((2, 3), 7.0))
    only_mean.close()
    clim = Climatology(str(tmp_path / "m"), layout, allow_fallback=True)
    assert not clim.by_day_of_year
    np.testing.assert_array_equal(clim.field(feb29), np.full((1, 2, 3), 7.0, np.float32))
    with pytest.raises(DataError, match="msl"):
        Climatology(str(tmp_path / "m"), ChannelLayout([], [], ["msl"]))
    with pytest.raises(FileExistsError):
        ClimatologyWriter(str(tmp_path / "m"), (2, 3))


def test_climatology_rewrite_keeps_the_old_one_until_complete(tmp_path):
    layout = ChannelLayout([], [], ["t2m"])
    out = str(tmp_path / "climatology")
    first = ClimatologyWriter(out, (2, 3), overwrite=False)
    first.add("t2m", np.full((2, 3), 1.0))
    first.close()
    second = ClimatologyWriter(out, (2, 3), overwrite=True)
    second.add("t2m", np.full((2, 3), 2.0))
    assert Climatology(out, layout).mean_field()[0, 0, 0] == 1.0  # old one intact meanwhile
    second.close()
    assert Climatology(out, layout).mean_field()[0, 0, 0] == 2.0
    assert sorted(os.listdir(tmp_path)) == ["climatology"]  # no .partial / .old left
    with pytest.raises(FileExistsError, match="overwrite"):
        ClimatologyWriter(out, (2, 3))
