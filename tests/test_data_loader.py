"""The npy-per-variable loader against a hand-made dataset whose every file holds a known constant."""

import json
import os
import shutil
import threading

import numpy as np
import pytest
import torch
from conftest import make_params

from utils.channels import ERA5_LEVELS
from utils.data.dataset import ERA5Dataset
from utils.data.loader import ShardedEpochSampler, get_data_loader
from utils.data.npy_layout import channel_paths, statistic_path, surface_path, upper_path
from utils.data.statistics import StatisticsError, load_mean_std
from utils.errors import DataFileError, MissingDataError
from utils.times import to_hours

H, W = 4, 8
UPPER, LEVELS, SURFACE = ["z", "t"], [850, 500], ["t2m"]
NAMES = ["z850", "z500", "t850", "t500", "t2m"]
T0 = to_hours("2020-01-01")
DAYS = 4
HAND_OVERRIDES = [
    f"h_size={H}",
    f"w_size={W}",
    "higher_features=[z, t]",
    "pressure_level=[850, 500]",
    "surface_features=[t2m]",
    "num_experts=3",
    "train_period=['2020-01-01', '2020-01-02']",
    "valid_period=['2020-01-03', '2020-01-04']",
    "test_period=['2020-01-03', '2020-01-04']",
    "t_out_test=3",
    "num_data_workers=0",
    "check_data_values=false",
    "batch_size=2",
    "valid_batch_size=2",
    "eval_batch_size=1",
]
MEAN = {"z850": 10.0, "z500": 20.0, "t850": 30.0, "t500": 40.0, "t2m": 50.0}
STD = {"z850": 2.0, "z500": 4.0, "t850": 5.0, "t500": 8.0, "t2m": 10.0}


def value(t_hours: int, name: str) -> float:
    """Constant written in the file of channel ``name`` at time ``t_hours``."""
    return (t_hours - T0) * 100.0 + NAMES.index(name) + 1


def write_hand_dataset(root):
    for step in range(DAYS * 4):
        t = T0 + 6 * step
        for v in UPPER:
            for p in LEVELS:
                path = upper_path(root, t, v, p)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                np.save(path, np.full((H, W), value(t, f"{v}{p}"), np.float32))
        for s in SURFACE:
            path = surface_path(root, t, s)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.save(path, np.full((H, W), value(t, s), np.float32))
    os.makedirs(os.path.join(root, "statistic"))
    upper = {k: {v: [None] * 37 for v in UPPER} for k in ("mean", "std")}
    for v in UPPER:
        for p in LEVELS:
            upper["mean"][v][ERA5_LEVELS.index(p)] = MEAN[f"{v}{p}"]
            upper["std"][v][ERA5_LEVELS.index(p)] = STD[f"{v}{p}"]
    with open(statistic_path(root), "w") as f:
        json.dump(upper, f)
    with open(statistic_path(root, "mean_std_single.json"), "w") as f:
        json.dump({"mean": {"t2m": MEAN["t2m"], "u10": 0.0}, "std": {"t2m": STD["t2m"]}}, f)


@pytest.fixture(scope="module")
def hand_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("hand") / "era5")
    write_hand_dataset(root)
    return root


@pytest.fixture
def hand_copy(hand_root, tmp_path):
    root = str(tmp_path / "era5")
    shutil.copytree(hand_root, root)
    return root


def hand_params(root, *overrides):
    return make_params(root, "tiny", HAND_OVERRIDES + list(overrides))


def expected_state(t):
    return np.stack([np.full((H, W), (value(t, n) - MEAN[n]) / STD[n], np.float32) for n in NAMES])


# ------------------------------------------------------------------------------ contents
def test_item_files_times_order_and_normalisation(hand_root):
    ds = ERA5Dataset(hand_params(hand_root), "train")
    assert ds.layout.names == NAMES
    np.testing.assert_allclose(ds.mean, [MEAN[n] for n in NAMES])
    np.testing.assert_allclose(ds.std, [STD[n] for n in NAMES])
    for i in (0, 3, len(ds) - 1):
        inp, tar, t = ds[i]
        assert isinstance(t, int) and t == T0 + 6 * i
        assert inp.dtype == torch.float32 and inp.shape == (5, H, W) and tar.shape == (1, 5, H, W)
        np.testing.assert_allclose(inp.numpy(), expected_state(t), rtol=1e-6)
        np.testing.assert_allclose(tar[0].numpy(), expected_state(t + 6), rtol=1e-6)
    assert ds.paths(T0 + 6)[0].endswith(os.path.join("2020", "2020-01-01", "06:00:00-z-850.0.npy"))
    assert ds.paths(T0 + 6)[-1].endswith(
        os.path.join("single", "2020", "2020-01-01", "06:00:00-t2m.npy")
    )


def test_multi_step_targets_and_inputs(hand_root):
    ds = ERA5Dataset(hand_params(hand_root), "test")
    inp, tar, t = ds[1]
    assert t == to_hours("2020-01-03") + 12
    assert tar.shape == (3, 5, H, W)
    for k in range(3):
        np.testing.assert_allclose(tar[k].numpy(), expected_state(t + 6 * (k + 1)), rtol=1e-6)
    ds2 = ERA5Dataset(hand_params(hand_root, "t_in=2"), "train")
    inp, tar, t = ds2[0]
    assert inp.shape == (2, 5, H, W) and t == T0 + 6
    np.testing.assert_allclose(inp[0].numpy(), expected_state(T0), rtol=1e-6)
    np.testing.assert_allclose(inp[1].numpy(), expected_state(T0 + 6), rtol=1e-6)
    assert tar.shape == (1, 5, H, W)
    np.testing.assert_allclose(tar[0].numpy(), expected_state(T0 + 12), rtol=1e-6)


@pytest.mark.parametrize(
    "mode,overrides,expected",
    [
        ("train", [], 7),  # Jan 1 00 .. Jan 2 12 every 6 h (+6 h <= Jan 2 18)
        ("train", ["train_interval=12"], 4),
        ("train", ["t_in=2"], 6),
        ("train", ["t_out_train=2"], 6),
        ("valid", [], 4),  # every 12 h over two days
        ("test", [], 3),  # 3 steps of 6 h must fit: Jan 3 00, 12, Jan 4 00
        ("test", ["test_interval=6"], 5),
    ],
)
def test_lengths(hand_root, mode, overrides, expected):
    ds = ERA5Dataset(hand_params(hand_root, *overrides), mode)
    assert len(ds) == expected
    assert ds.times[-1] + int(ds._offsets[-1]) <= to_hours(ds.period[1]) + 23


def test_tiny_synthetic_lengths_and_loader(synthetic_root):
    params = make_params(synthetic_root, "tiny", ["num_data_workers=0"])
    lengths = {m: len(get_data_loader(params, False, m)[1]) for m in ("train", "valid", "test")}
    assert lengths == {"train": 95, "valid": 6, "test": 4}
    loader, ds, sampler = get_data_loader(params, False, "train")
    assert sampler.world == 1 and sampler.shuffle and len(loader) == 95 // 8
    n = 0
    for inp, tar, t in loader:
        assert inp.shape == (8, 20, 32, 64) and tar.shape == (8, 1, 20, 32, 64) and t.shape == (8,)
        assert torch.isfinite(inp).all()
        n += 1
    assert n == 11
    _, test_ds, _ = get_data_loader(params, False, "test")
    assert test_ds[0][1].shape == (8, 20, 32, 64)


# ------------------------------------------------------------------------------ loaders
def test_loader_batches_match_items_and_seeded_shuffle(hand_root):
    params = hand_params(hand_root)
    loader, ds, _ = get_data_loader(params, False, "train")
    order = torch.cat([t for _, _, t in loader]).tolist()
    assert (
        order == torch.cat([t for _, _, t in get_data_loader(params, False, "train")[0]]).tolist()
    )
    assert len(order) == 6 and order != sorted(order)  # drop_last, shuffled
    inp, tar, t = next(iter(loader))
    for b in range(len(t)):
        np.testing.assert_allclose(inp[b].numpy(), expected_state(int(t[b])), rtol=1e-6)
        np.testing.assert_allclose(tar[b, 0].numpy(), expected_state(int(t[b]) + 6), rtol=1e-6)
    valid = get_data_loader(params, False, "valid")[0]
    assert torch.cat([t for _, _, t in valid]).tolist() == list(
        get_data_loader(params, False, "valid")[1].times
    )


def test_loader_with_worker_matches(hand_root):
    params = hand_params(hand_root, "num_data_workers=1")
    loader, ds, _ = get_data_loader(params, False, "test")
    batches = list(loader)
    assert len(batches) == len(ds)
    for inp, tar, t in batches:
        assert tar.shape == (1, 3, 5, H, W)
        np.testing.assert_allclose(inp[0].numpy(), expected_state(int(t[0])), rtol=1e-6)


def test_distributed_sampler_and_batch_divisibility(hand_root, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    loader, ds, sampler = get_data_loader(hand_params(hand_root), True, "train")
    assert sampler.shuffle and (sampler.world, sampler.rank) == (2, 1)
    assert loader.batch_size == 1 and len(sampler) == len(ds) // 2
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="batch_size"):
        get_data_loader(hand_params(hand_root), True, "train")


def test_sampler_order_is_a_function_of_seed_and_epoch_and_resumable():
    a, b = (
        ShardedEpochSampler(50, shuffle=True, seed=3),
        ShardedEpochSampler(50, shuffle=True, seed=3),
    )
    for epoch in (4, 0, 4):  # any history gives the same order
        a.set_epoch(epoch)
    b.set_epoch(4)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(5)
    assert list(a) != list(b)
    a.start = 7
    full = ShardedEpochSampler(50, shuffle=True, seed=3)
    full.set_epoch(4)
    assert list(a) == list(full)[7:] and len(a) == 43
    ranks = [ShardedEpochSampler(11, world=3, rank=r, shuffle=True, seed=1) for r in range(3)]
    shards = [list(r) for r in ranks]
    assert [len(s) for s in shards] == [3, 3, 3] and len(set(sum(shards, []))) == 9
    evals = [list(ShardedEpochSampler(11, world=3, rank=r)) for r in range(3)]
    assert sorted(sum(evals, [])) == list(range(11))  # evaluation: every sample exactly once
    for n, world, shuffle, start in [
        (0, 1, True, 0),
        (11, 3, True, 2),
        (11, 3, False, 9),
        (7, 2, False, 1),
    ]:
        for rank in range(world):
            s = ShardedEpochSampler(n, world, rank, shuffle=shuffle, seed=1)
            s.start = start
            assert len(s) == len(list(s))


# ------------------------------------------------------------------------------ errors
def test_missing_files_all_listed(hand_copy):
    gone = [
        upper_path(hand_copy, T0 + 6, "t", 500),
        surface_path(hand_copy, T0 + 24, "t2m"),
        upper_path(hand_copy, T0 + 30, "z", 850),
    ]
    for p in gone:
        os.remove(p)
    with pytest.raises(MissingDataError) as err:
        ERA5Dataset(hand_params(hand_copy), "train")
    msg = str(err.value)
    assert "3 data file(s) missing" in msg and "2020-01-01" in msg and "2020-01-02" in msg
    for p in gone:
        assert p in msg


def test_missing_day_directory_and_skip_incomplete(hand_copy):
    shutil.rmtree(os.path.dirname(surface_path(hand_copy, T0 + 24, "t2m")))  # Jan 2 surface
    with pytest.raises(MissingDataError, match="4 data file"):
        ERA5Dataset(hand_params(hand_copy), "train")
    ds = ERA5Dataset(hand_params(hand_copy, "skip_incomplete_samples=true"), "train")
    assert list(ds.times) == [T0 + 6 * k for k in range(3)]  # Jan 1 18 -> Jan 2 00 is incomplete


def test_nan_names_file(hand_copy):
    bad = upper_path(hand_copy, T0 + 12, "t", 850)
    arr = np.load(bad)
    arr[1, 2] = np.nan
    np.save(bad, arr)
    ds = ERA5Dataset(hand_params(hand_copy), "train")
    ds[0]
    with pytest.raises(DataFileError, match="NaN") as err:
        ds[1]  # its target is the bad time
    assert bad in str(err.value)
    with pytest.raises(DataFileError) as err:
        ERA5Dataset(hand_params(hand_copy, "check_data_values=true"), "train")
    assert bad in str(err.value)


@pytest.mark.parametrize(
    "bad_array,match",
    [
        (np.zeros((H + 1, W), np.float32), r"\(5, 8\)"),
        (np.zeros((H, W), np.float64), "float64"),
    ],
)
def test_bad_shape_or_dtype_names_file(hand_copy, bad_array, match):
    bad = surface_path(hand_copy, T0 + 12, "t2m")
    np.save(bad, bad_array)
    ds = ERA5Dataset(hand_params(hand_copy), "train")  # start-up reads sample 0 only
    with pytest.raises(DataFileError, match=match) as err:
        ds[1]
    assert bad in str(err.value)


def test_garbage_file_names_file(hand_copy):
    bad = upper_path(hand_copy, T0, "z", 500)
    with open(bad, "wb") as f:
        f.write(b"not an npy file")
    with pytest.raises(DataFileError) as err:
        ERA5Dataset(hand_params(hand_copy), "train")  # start-up reads the first sample
    assert bad in str(err.value)


def test_missing_statistics_key_and_level(hand_copy):
    params = hand_params(hand_copy)
    single = statistic_path(hand_copy, "mean_std_single.json")
    with open(single) as f:
        data = json.load(f)
    del data["std"]["t2m"]
    with open(single, "w") as f:
        json.dump(data, f)
    with pytest.raises(StatisticsError) as err:
        ERA5Dataset(params, "train")
    assert "mean_std_single.json" in str(err.value) and "t2m" in str(err.value)
    other = hand_params(
        hand_copy, "pressure_level=[850, 250]", "surface_features=[]", "num_experts=2"
    )
    with pytest.raises(StatisticsError) as err:
        load_mean_std(hand_copy, other.layout)
    assert "mean_std.json" in str(err.value) and "'z'" in str(err.value) and "250" in str(err.value)


def test_missing_root_is_clear(tmp_path):
    with pytest.raises(MissingDataError, match="make_synthetic_era5"):
        ERA5Dataset(hand_params(str(tmp_path / "nowhere")), "train")


def test_channel_paths_helper(hand_root):
    params = hand_params(hand_root)
    assert channel_paths(hand_root, params.layout, T0) == ERA5Dataset(params, "train").paths(T0)


@pytest.mark.parametrize("workers", [0, 2])
def test_thread_and_process_loaders_give_the_same_batches(synthetic_root, workers):
    def batches(backend):
        params = make_params(
            synthetic_root, "tiny", [f"num_data_workers={workers}", f"loader_backend={backend}"]
        )
        loader, _, sampler = get_data_loader(params, False, "train")
        sampler.set_epoch(3)
        return len(loader), list(loader)

    (n_threads, threads), (n_procs, procs) = batches("threads"), batches("processes")
    assert n_threads == n_procs == len(threads) == len(procs) == 95 // 8
    for a, b in zip(threads, procs, strict=False):
        for x, y in zip(a, b, strict=False):
            assert torch.equal(x, y)


def test_thread_loader_stops_cleanly_when_abandoned(synthetic_root):
    params = make_params(synthetic_root, "tiny", ["num_data_workers=2", "loader_backend=threads"])
    loader, _, _ = get_data_loader(params, False, "train")
    iterator = iter(loader)
    first = next(iterator)
    iterator.close()  # e.g. max_steps_per_epoch reached
    assert first[0].shape == (8, 20, 32, 64)
    assert not [t for t in threading.enumerate() if t.name.startswith("era5-reader")]


def test_unknown_loader_backend_is_named(synthetic_root):
    with pytest.raises(ValueError, match="'loader_backend'"):
        make_params(synthetic_root, "tiny", ["loader_backend=fibers"])
