"""The HDF5 backend (data_format: h5): conversion, bit-identical samples, plain FourCastNet
files, errors naming both sides, resumable and parallel conversion, and training and evaluation
across formats."""

import json
import os

import h5py
import numpy as np
import pytest
import torch
from conftest import make_params

import inference
import train
from utils.data import h5_reader, h5_year_writer, npy_to_h5
from utils.data.dataset import ERA5Dataset
from utils.data.h5_layout import channel_indices, describe, runs, year_path
from utils.data.loader import get_data_loader
from utils.data.npy_layout import DataFileError, MissingDataError
from utils.data.synthetic import generate
from utils.grid import GridError
from utils.times import to_hours
from utils.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def h5_root(synthetic_root, tmp_path_factory):
    """The session's synthetic set converted to h5 in a separate root (statistics copied)."""
    out = str(tmp_path_factory.mktemp("h5") / "era5")
    summary = npy_to_h5.convert(synthetic_root, out, make_params(synthetic_root).layout)
    assert [y["status"] for y in summary["years"]] == ["written"]
    return out


def pair(npy_root, h5_root, mode, *overrides):
    base = ["num_data_workers=0", *overrides]
    a = ERA5Dataset(make_params(npy_root, "tiny", base), mode)
    b = ERA5Dataset(make_params(h5_root, "tiny", base + ["data_format=h5"]), mode)
    return a, b


def assert_same_batches(a, b, indices):
    for x, y in zip(a.read_batch(indices), b.read_batch(indices), strict=True):
        assert torch.equal(x, y)


def test_converted_file_describes_itself(h5_root):
    info = describe(year_path(h5_root, 2020))
    with h5py.File(info.path, "r") as f:
        assert f["fields"].shape == (124, 20, 32, 64) and f["fields"].chunks == (1, 20, 32, 64)
        assert f["time"].dtype == np.int64 and bool(f.attrs["complete"])
    assert info.self_describing and info.channels[:2] == ["z850", "z500"]
    assert info.times[0] == to_hours("2020-01-01") and np.all(np.diff(info.times) == 6)
    assert info.latitude[0] > 0 > info.latitude[-1]
    assert np.all(np.diff(info.row_offsets) > 0)  # raw rows: read with preadv
    assert runs([4, 5, 6, 0, 2, 3]) == [(0, 4, 3), (3, 0, 1), (4, 2, 2)]


@pytest.mark.parametrize("mode,block_channels", [("train", 64), ("test", 3)])
def test_same_samples_bit_identical_from_both_formats(
    synthetic_root, h5_root, mode, block_channels, monkeypatch
):
    monkeypatch.setattr(h5_reader, "BLOCK_BYTES", block_channels * 32 * 64 * 4)
    a, b = pair(synthetic_root, h5_root, mode)
    assert [n for _, _, n in b.reader._blocks([(0, 0, 20)])] == (
        [20] if mode == "train" else [3] * 6 + [2]
    )
    assert len(a) == len(b) and np.array_equal(a.times, b.times)
    assert_same_batches(a, b, [0, 2, len(a) - 1])


def test_plain_fourcastnet_file_compressed_and_reordered(synthetic_root, tmp_path):
    """No names, no time axis, channels in another order plus one the config does not use, gzip
    (read through h5py): the stated order picks exactly the config's channels."""
    root = str(tmp_path / "plain")
    params = make_params(synthetic_root, "tiny", ["num_data_workers=0"])
    names = params.layout.names
    order = ["extra"] + names[::-1]
    times = np.arange(to_hours("2020-01-01"), to_hours("2021-01-01"), 24)  # 366 daily rows
    src = ERA5Dataset(params, "test")
    os.makedirs(os.path.join(root, "train"))
    with h5py.File(os.path.join(root, "train", "2020.h5"), "w") as f:
        d = f.create_dataset(
            "fields", (len(times), 21, 32, 64), "f4", chunks=(1, 21, 32, 64), compression="gzip"
        )
        state = np.empty((20, 32, 64), np.float32)
        for i, t in enumerate(times[:31]):  # January only: the rest stays empty
            src.reader.read(int(t), state)
            d[i] = np.concatenate([np.full((1, 32, 64), -1.0, np.float32), state[::-1]])
    os.symlink(os.path.join(synthetic_root, "statistic"), os.path.join(root, "statistic"))
    daily = ["train_interval=24", "lead_time=24", "train_period=['2020-01-01', '2020-01-10']"]
    plain = make_params(root, "tiny", ["num_data_workers=0", "data_format=h5", *daily])
    with pytest.raises(DataFileError, match="h5_channels"):
        ERA5Dataset(plain, "train")
    plain["h5_channels"] = order
    b = ERA5Dataset(plain, "train")
    assert b.reader._year(2020)[0].row_offsets is None  # compressed: h5py path
    a = ERA5Dataset(make_params(synthetic_root, "tiny", ["num_data_workers=0", *daily]), "train")
    assert len(a) == len(b) == 9
    assert_same_batches(a, b, list(range(9)))


def test_wrong_channels_grid_and_missing_times_name_both_sides(synthetic_root, h5_root):
    with pytest.raises(DataFileError) as err:
        ERA5Dataset(
            make_params(h5_root, "tiny", ["data_format=h5", "h5_channels=[z500, z850]"]), "train"
        )
    assert (
        "2020.h5" in str(err.value)
        and "['z500', 'z850']" in str(err.value)
        and "'z850', 'z500'" in str(err.value)
    )
    with pytest.raises(GridError, match=r"32 x 64 grid but the config has h_size: 16"):
        ERA5Dataset(make_params(h5_root, "tiny", ["data_format=h5", "h_size=16"]), "train")
    info = describe(year_path(h5_root, 2020))
    with pytest.raises(DataFileError, match=r"32 x 64.*16 x 64"):
        channel_indices(info, ["z500"], (16, 64))
    with pytest.raises(DataFileError, match=r"\['w500'\] of the config are not in the file"):
        channel_indices(info, ["z500", "w500"], (32, 64))
    upper_only = ["surface_features=[]", "num_experts=5"]  # a subset of the file's channels
    assert_same_batches(*pair(synthetic_root, h5_root, "train", *upper_only), [1, 7])
    with pytest.raises(MissingDataError) as err:
        ERA5Dataset(
            make_params(
                h5_root,
                "tiny",
                [
                    "data_format=h5",
                    "train_period=['2020-01-30', '2020-02-02']",
                    "allow_overlapping_periods=true",
                ],
            ),
            "train",
        )
    assert "2020.h5: no time step 2020-02-01 00:00" in str(err.value)
    assert "2020-02-02" in str(err.value)


def test_conversion_resumes_a_partial_year_and_runs_years_in_parallel(tmp_path, monkeypatch):
    src = str(tmp_path / "npy")
    generate(src, "2019-12-30", 4, h_size=8, w_size=16, levels=(850,), climatology=False)
    fresh = npy_to_h5.convert(src, str(tmp_path / "fresh"), workers=2)
    assert [(y["year"], y["rows"], y["status"]) for y in fresh["years"]] == [
        (2019, 8, "written"),
        (2020, 8, "written"),
    ]

    small = ["h_size=8", "w_size=16", "pressure_level=[850]", "num_data_workers=0"]
    small.append("train_period=['2019-12-30', '2020-01-02']")  # across the two year files
    assert_same_batches(*pair(src, str(tmp_path / "fresh"), "train", *small), [0, 6, 7, 14])

    out = str(tmp_path / "out")
    monkeypatch.setattr(h5_year_writer, "FLUSH_EVERY", 3)
    reads = {"n": 0}
    from utils.data.npy_reader import NpyStateReader

    original = NpyStateReader.read

    def dying(self, *args):
        reads["n"] += 1
        if reads["n"] == 13:  # 2019 done, 2020 interrupted after rows 0-3 (3 recorded)
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(NpyStateReader, "read", dying)
    with pytest.raises(KeyboardInterrupt):
        npy_to_h5.convert(src, out)
    monkeypatch.setattr(NpyStateReader, "read", original)
    final, partial = year_path(out, 2020), h5_year_writer.partial_path(year_path(out, 2020))
    assert os.path.exists(year_path(out, 2019)) and not os.path.exists(final)
    with h5py.File(partial, "r") as f:
        assert f.attrs["rows_written"] == 3 and not f.attrs["complete"]
    resumed = npy_to_h5.convert(src, out)
    assert [y["status"] for y in resumed["years"]] == ["skipped", "resumed"]
    assert not os.path.exists(partial)
    for year in (2019, 2020):
        with (
            h5py.File(year_path(out, year), "r") as f,
            h5py.File(year_path(str(tmp_path / "fresh"), year), "r") as g,
        ):
            assert np.array_equal(f["fields"][...], g["fields"][...]) and bool(f.attrs["complete"])


def test_process_workers_read_h5_after_fork(h5_root):
    params = make_params(
        h5_root, "tiny", ["data_format=h5", "num_data_workers=2", "loader_backend=processes"]
    )
    loader, ds, sampler = get_data_loader(params, False, "train")
    sampler.set_epoch(1)
    got = list(loader)
    threads = make_params(h5_root, "tiny", ["data_format=h5", "num_data_workers=2"])
    loader2, _, sampler2 = get_data_loader(threads, False, "train")
    sampler2.set_epoch(1)
    for a, b in zip(got, loader2, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def test_synthetic_generator_writes_h5(tmp_path):
    root = str(tmp_path / "syn")
    result = generate(
        root,
        "2020-01-01",
        2,
        h_size=8,
        w_size=16,
        levels=(850,),
        climatology=False,
        data_format="h5",
    )
    assert result["data_format"] == "h5"
    assert sorted(os.listdir(root)) == ["all", "statistic"]
    info = describe(year_path(root, 2020))
    assert info.channels == [
        "z850",
        "q850",
        "u850",
        "v850",
        "t850",
        "t2m",
        "u10",
        "v10",
        "msl",
        "sp",
    ]
    assert len(info.times) == 8


SHORT = [
    "train_period=['2020-01-01', '2020-01-04']",
    "valid_period=['2020-01-05', '2020-01-05']",
    "test_period=['2020-01-06', '2020-01-07']",
    "t_out_test=4",
]


@pytest.mark.slow
def test_training_is_identical_on_both_formats_and_checkpoints_cross_over(
    synthetic_root, h5_root, tmp_path
):
    """One epoch of tiny from the same seed on each format: the same losses and weights; the
    checkpoint trained on npy scores the same on h5 data as on npy data."""
    runs_dir = {}
    for fmt, root in (("npy", synthetic_root), ("h5", h5_root)):
        argv = ["--config", "tiny", "--exp_dir", str(tmp_path / fmt), "--set", f"root_dir={root}"]
        for item in ("num_data_workers=1", "max_epochs=1", f"data_format={fmt}", *SHORT):
            argv += ["--set", item]
        train.main(argv)
        runs_dir[fmt] = os.path.join(str(tmp_path / fmt), "tiny", "0")
    metrics = {}
    for fmt, run in runs_dir.items():
        with open(os.path.join(run, "metrics.jsonl")) as f:
            metrics[fmt] = [json.loads(line) for line in f]
    keys = [k for k in metrics["npy"][0] if "loss" in k]
    assert "train_loss" in keys and len(metrics["npy"]) == 1
    assert [r[k] for r in metrics["npy"] for k in keys] == [
        r[k] for r in metrics["h5"] for k in keys
    ]
    ckpts = {
        f: os.path.join(r, "training_checkpoints", "best_ckpt.tar") for f, r in runs_dir.items()
    }
    a, b = (load_checkpoint(ckpts[f])["model"] for f in ("npy", "h5"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    scores = {}
    for fmt, root in (("npy", synthetic_root), ("h5", h5_root)):
        params = make_params(root, "tiny", ["num_data_workers=0", f"data_format={fmt}", *SHORT])
        inference.evaluate(params, ckpts["npy"], str(tmp_path / f"eval_{fmt}"), max_batches=1)
        scores[fmt] = np.load(tmp_path / f"eval_{fmt}" / "denormalized_lat_weight_rmse.npy")
    assert scores["h5"].shape == (20, 5) and np.isfinite(scores["h5"]).all()
    assert np.array_equal(scores["npy"], scores["h5"])
