"""The synthetic ERA5 generator: layout, magnitudes, determinism, learnable motion."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from utils.data.npy_layout import statistic_path, surface_path, upper_path
from utils.data.synthetic import SyntheticERA5, generate
from utils.times import to_hours

T = to_hours("2020-01-10") + 6


def test_layout_and_statistics_files(synthetic_root):
    day = os.path.join(synthetic_root, "2020", "2020-01-05")
    names = sorted(os.listdir(day))
    assert len(names) == 4 * 5 * 3
    assert "00:00:00-z-500.0.npy" in names and "18:00:00-q-850.0.npy" in names
    assert sorted(
        os.listdir(os.path.join(synthetic_root, "single", "2020", "2020-01-05"))
    ) == sorted(
        f"{h:02d}:00:00-{v}.npy" for h in (0, 6, 12, 18) for v in ("t2m", "u10", "v10", "msl", "sp")
    )
    assert not os.path.exists(os.path.join(day, "03:00:00-z-500.0.npy"))
    arr = np.load(upper_path(synthetic_root, T, "z", 500))
    assert arr.dtype == np.float32 and arr.shape == (32, 64)
    with open(statistic_path(synthetic_root)) as f:
        stats = json.load(f)
    assert sorted(stats["mean"]) == ["q", "t", "u", "v", "z"]
    assert sum(x is not None for x in stats["std"]["t"]) == 3
    assert os.path.isfile(os.path.join(synthetic_root, "statistic", "climatology", "meta.json"))


@pytest.mark.parametrize(
    "name,low,high",
    [
        ("z500", 4.0e4, 6.0e4),
        ("z850", 0.5e4, 1.8e4),
        ("t850", 240, 310),
        ("t250", 195, 245),
        ("q850", 1e-5, 3e-2),
        ("q250", 1e-7, 1e-3),
        ("u250", -60, 60),
        ("v500", -40, 40),
        ("t2m", 225, 315),
        ("msl", 9.5e4, 1.06e5),
        ("sp", 6.0e4, 1.06e5),
        ("u10", -30, 30),
    ],
)
def test_physical_magnitudes(synthetic_root, name, low, high):
    for t in (T, T + 24 * 7 + 12):
        path = (
            upper_path(synthetic_root, t, name[0], int(name[1:]))
            if name[0] in "zqtuv" and name not in ("t2m", "u10")
            else surface_path(synthetic_root, t, name)
        )
        arr = np.load(path)
        assert np.isfinite(arr).all()
        assert low <= arr.min() and arr.max() <= high, (name, arr.min(), arr.max())
        assert arr.std() > 0


def test_sp_mean_and_z500_mean():
    f = SyntheticERA5(32, 64).fields(T)
    assert 9.6e4 < f["sp"].mean() < 1.0e5
    assert 5.0e4 < f["z500"].mean() < 5.9e4


def test_deterministic_given_seed():
    a, b, c = SyntheticERA5(seed=3), SyntheticERA5(seed=3), SyntheticERA5(seed=4)
    fa, fb, fc = a.fields(T), b.fields(T), c.fields(T)
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k])
    assert not np.allclose(fa["z500"], fc["z500"])


def test_waves_move_east_so_persistence_is_beatable():
    gen = SyntheticERA5(32, 64)
    z0 = gen.fields(T)["z500"].astype(np.float64)
    z1 = gen.fields(T + 6)["z500"].astype(np.float64)
    a0, a1 = z0 - z0.mean(1, keepdims=True), z1 - z1.mean(1, keepdims=True)
    mid = slice(4, 12)  # northern mid-latitudes
    errors = [np.sqrt(((np.roll(a0, k, axis=1) - a1)[mid] ** 2).mean()) for k in range(6)]
    best = int(np.argmin(errors))
    assert best >= 1, errors  # eastward displacement of a few cells per 6 h
    assert errors[best] < 0.5 * errors[0], errors
    assert np.sqrt(((z1 - z0) ** 2).mean()) > 0.05 * z0.std()


def test_seasonal_and_diurnal_cycles():
    gen = SyntheticERA5(32, 64)
    jan, jul = (
        gen.fields(to_hours("2020-01-15"), waves=False),
        gen.fields(to_hours("2020-07-15"), waves=False),
    )
    assert jul["t850"][5].mean() > jan["t850"][5].mean() + 5  # northern summer warmer
    day0 = gen.fields(to_hours("2020-01-15"), waves=False)["t2m"]
    day12 = gen.fields(to_hours("2020-01-15") + 12, waves=False)["t2m"]
    assert np.abs(day12 - day0).max() > 3


def test_refuses_non_empty_root(tmp_path):
    root = str(tmp_path / "r")
    generate(root, "2021-03-01", 1, 8, 16, levels=(500,), statistics=False, climatology=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate(root, "2021-03-01", 1, 8, 16, levels=(500,))
    generate(root, "2021-03-01", 1, 8, 16, levels=(500,), overwrite=True)
    assert os.path.isfile(statistic_path(root))


def test_cli(tmp_path):
    root = str(tmp_path / "cli")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.make_synthetic_era5",
            "--root_dir",
            root,
            "--start",
            "2019-12-31",
            "--days",
            "2",
            "--h_size",
            "8",
            "--w_size",
            "16",
            "--levels",
            "1000",
            "50",
            "--seed",
            "1",
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["n_times"] == 8
    assert os.path.isfile(os.path.join(root, "2020", "2020-01-01", "18:00:00-t-50.0.npy"))
    assert os.path.isfile(os.path.join(root, "single", "2019", "2019-12-31", "00:00:00-sp.npy"))
