"""The sample description (``utils.data.samples``) against hand-computed sample times."""

import dataclasses
import os

import numpy as np
import pytest
from conftest import make_params

from utils.data.dataset import ERA5Dataset
from utils.data.npy_layout import MissingDataError, surface_path, upper_path
from utils.data.samples import SampleDescription, resolve_samples
from utils.data.statistics import write_mean_std
from utils.errors import ConfigError, DataError
from utils.grid import grid_latitudes, longitudes, write_grid
from utils.times import to_hours

H, W = 2, 4
T0 = to_hours("2020-01-01")
MEAN = {"z500": 10.0, "t500": 20.0, "t2m": 30.0}
STD = {"z500": 2.0, "t500": 4.0, "t2m": 5.0}
OVERRIDES = [
    f"h_size={H}",
    f"w_size={W}",
    "higher_features=[z, t]",
    "pressure_level=[500]",
    "surface_features=[t2m]",
    "num_experts=3",
    "allow_overlapping_periods=true",
    "num_data_workers=0",
    "check_data_values=false",
    "t_in=1",
    "t_out_train=1",
    "lead_time=1",
    "train_interval=1",
    "train_period=['2020-01-01', '2020-01-02']",
]


def write_dataset(root, times):
    """Fields at ``times`` (hours) whose every value is ``time - T0`` plus the channel number."""
    for t in times:
        for k, (v, p) in enumerate((("z", 500), ("t", 500))):
            path = upper_path(root, int(t), v, p)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.save(path, np.full((H, W), t - T0 + k, np.float32))
        path = surface_path(root, int(t), "t2m")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path, np.full((H, W), t - T0 + 2, np.float32))
    write_grid(root, grid_latitudes("centres", H), longitudes(W))
    write_mean_std(
        root,
        {"z": {500: MEAN["z500"]}, "t": {500: MEAN["t500"]}},
        {"z": {500: STD["z500"]}, "t": {500: STD["t500"]}},
        {"t2m": MEAN["t2m"]},
        {"t2m": STD["t2m"]},
    )
    return root


@pytest.fixture(scope="module")
def hourly(tmp_path_factory):
    """Every hour of 2020-01-01 and 2020-01-02."""
    return write_dataset(str(tmp_path_factory.mktemp("hourly")), T0 + np.arange(48))


@pytest.fixture(scope="module")
def six_hourly_from_one(tmp_path_factory):
    """2020-01-01T01 and every 6 h after it, to the end of 2020-01-02."""
    return write_dataset(str(tmp_path_factory.mktemp("six")), T0 + np.arange(1, 48, 6))


def resolve(root, *overrides, mode="train"):
    return resolve_samples(make_params(root, "tiny", OVERRIDES + list(overrides)), mode)


@pytest.mark.parametrize(
    "overrides, times, offsets",
    [
        # every 6 h from 00; a sample's target (+1 h) must still lie in the day: 00 .. 18
        (["train_period=['2020-01-01', '2020-01-01']", "train_interval=6"], [0, 6, 12, 18], [0, 1]),
        # two targets 1 h apart: the last sample at 21 (targets 22 and 23)
        (
            ["train_period=['2020-01-01', '2020-01-01']", "t_out_train=2", "train_interval=3"],
            [0, 3, 6, 9, 12, 15, 18, 21],
            [0, 1, 2],
        ),
        # three inputs 2 h apart: the first sample at 04 (inputs 00, 02, 04), the last at 20
        (
            [
                "train_period=['2020-01-01', '2020-01-01']",
                "t_in=3",
                "lead_time=2",
                "train_interval=4",
            ],
            [4, 8, 12, 16, 20],
            [-4, -2, 0, 2],
        ),
        # date-time ends: 03 .. 12 inclusive
        (
            ["train_period=['2020-01-01T03', '2020-01-01T12']", "train_interval=3"],
            [3, 6, 9],
            [0, 1],
        ),
        # two days, 12 h apart: the last sample at 24 (a sample at 36 would target 48, past 47)
        (
            ["train_period=['2020-01-01', '2020-01-02']", "lead_time=12", "train_interval=12"],
            [0, 12, 24],
            [0, 12],
        ),
    ],
)
def test_sample_times_of_a_period_are_the_hand_computed_ones(hourly, overrides, times, offsets):
    samples = resolve(hourly, *overrides)
    assert samples.times.dtype == np.int64 and samples.offsets.dtype == np.int64
    assert (samples.times - T0).tolist() == times
    assert samples.offsets.tolist() == offsets
    assert samples.data_step == 1
    t_in = samples.t_in
    first_inputs, first_targets = samples.sample_times(0)
    assert first_inputs == [T0 + times[0] + o for o in offsets[:t_in]]
    assert first_targets == [T0 + times[0] + o for o in offsets[t_in:]]
    expected_states = sorted({T0 + t + o for t in times for o in offsets})
    assert samples.state_times().tolist() == expected_states


def test_the_data_step_and_its_phase_are_read_from_the_stored_times(six_hourly_from_one):
    samples = resolve(
        six_hourly_from_one,
        "train_period=['2020-01-01', '2020-01-02']",
        "lead_time=6",
        "train_interval=6",
    )
    assert samples.data_step == 6
    # stored at 01, 07, ...; the last target (+6 h) at 2020-01-02T19
    assert (samples.times - T0).tolist() == [1, 7, 13, 19, 25, 31, 37]

    twelve = resolve(
        six_hourly_from_one,
        "train_period=['2020-01-01', '2020-01-02']",
        "lead_time=12",
        "train_interval=12",
        "t_in=2",
    )
    # the first sample's inputs at 01 and 13
    assert (twelve.times - T0).tolist() == [13, 25]
    assert twelve.offsets.tolist() == [-12, 0, 12]

    step = r"'lead_time' \(3 h\) is not a multiple of the data step \(6 h, read from the train"
    with pytest.raises(ConfigError, match=step):
        resolve(six_hourly_from_one, "lead_time=3", "train_interval=3")


def test_the_data_step_is_read_from_the_first_three_days_unless_they_hold_one_time(tmp_path):
    # 6-hourly over the first three days, then hourly: the step of the first three days
    root = write_dataset(str(tmp_path / "a"), [*range(T0, T0 + 72, 6), *range(T0 + 72, T0 + 96)])
    config = ["train_period=['2020-01-01', '2020-01-04']", "lead_time=6", "train_interval=6"]
    samples = resolve(root, *config)
    assert samples.data_step == 6
    assert (samples.times - T0).tolist() == list(range(0, 90, 6))  # the last target at 90
    # one time in the first three days (at 70), then every 3 h: the step of the whole period
    root = write_dataset(str(tmp_path / "b"), [T0 + 70, *range(T0 + 73, T0 + 96, 3)])
    with pytest.raises(ConfigError, match=r"'lead_time' \(4 h\) .* data step \(3 h, read from"):
        resolve(
            root, "train_period=['2020-01-01', '2020-01-04']", "lead_time=4", "train_interval=4"
        )


def test_irregular_stored_steps_are_an_error_naming_them_and_the_setting(tmp_path):
    root = write_dataset(str(tmp_path / "irregular"), [T0 + h for h in (0, 7, 15, 22, 29, 37)])
    config = ["train_period=['2020-01-01', '2020-01-02']", "lead_time=7", "train_interval=7"]
    config += ["valid_interval=7", "test_interval=7"]
    with pytest.raises(DataError) as err:
        resolve(root, *config)
    message = str(err.value)
    assert "step irregularly: steps of 7 h (x3), 8 h (x2)" in message
    assert "2020-01-01T00 -> 2020-01-01T07 -> 2020-01-01T15" in message
    assert "'data_step'" in message and "'skip_incomplete_samples: true'" in message
    # the setting it names: samples every 7 h from the first time, the incomplete ones skipped
    samples = resolve(root, *config, "data_step=7", "skip_incomplete_samples=true")
    assert samples.data_step == 7 and (samples.times - T0).tolist() == [0]


def test_a_configured_data_step_starts_at_the_first_fitting_time(hourly):
    samples = resolve(
        hourly,
        "train_period=['2020-01-01T05', '2020-01-01T20']",
        "data_step=2",
        "lead_time=4",
        "train_interval=4",
        "t_in=2",
    )
    assert samples.data_step == 2
    # inputs from 05 on: the first sample at 09 (inputs 05, 09, target 13), the last at 13
    assert (samples.times - T0).tolist() == [9, 13]
    params = make_params(hourly, "tiny", OVERRIDES + ["lead_time=6", "train_interval=3"])
    params["data_step"] = 2  # past the configuration's own check
    with pytest.raises(ConfigError, match=r"'train_interval' \(3 h\) .* \(2 h, data_step\)"):
        resolve_samples(params, "train")


def test_skip_incomplete_samples_drops_exactly_the_samples_using_a_missing_file(tmp_path):
    root = write_dataset(str(tmp_path), [T0 + t for t in range(1, 48, 6) if t != 7])
    config = ["train_period=['2020-01-01', '2020-01-02']", "lead_time=6", "train_interval=6"]
    with pytest.raises(MissingDataError, match="3 data file.s. missing .* 2020-01-01"):
        resolve(root, *config)
    samples = resolve(root, *config, "skip_incomplete_samples=true")
    # 01 (target 07) and 07 (input) are gone
    assert (samples.times - T0).tolist() == [13, 19, 25, 31, 37]
    assert samples.data_step == 6


def test_description_fields_and_repr(hourly, tmp_path):
    samples = resolve(
        hourly,
        "valid_period=['2020-01-02', '2020-01-02']",
        "t_out_valid=2",
        "valid_interval=8",
        mode="valid",
    )
    assert isinstance(samples, SampleDescription)
    assert samples.mode == "valid" and samples.root == samples.stats_root == hourly
    assert samples.period == ["2020-01-02", "2020-01-02"]
    assert samples.layout.names == ["z500", "t500", "t2m"]
    assert (samples.h, samples.w, samples.t_in, samples.t_out) == (H, W, 1, 2)
    np.testing.assert_array_equal(samples.lat, grid_latitudes("centres", H))
    np.testing.assert_array_equal(samples.lon, longitudes(W))
    np.testing.assert_array_equal(samples.mean, np.float32([10, 20, 30]))
    np.testing.assert_array_equal(samples.std, np.float32([2, 4, 5]))
    assert repr(samples) == (
        "SampleDescription(valid, 3 samples 2020-01-02T00..2020-01-02T16 every 8 h, "
        "states at [0, 1, 2] h (1 in, 2 out), data step 1 h, 3 channels, 2x4, "
        f"root={hourly!r}, stats_root={hourly!r})"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        samples.data_step = 2
    with pytest.raises(ValueError, match="mode must be one of .* got 'eval'"):
        resolve(hourly, mode="eval")
    with pytest.raises(MissingDataError, match="does not exist"):
        resolve(str(tmp_path / "nowhere"))


def test_the_dataset_reads_the_samples_its_description_lists(hourly):
    params = make_params(
        hourly, "tiny", OVERRIDES + ["train_period=['2020-01-01', '2020-01-01']", "t_in=2"]
    )
    dataset = ERA5Dataset(params, "train")
    samples = dataset.samples
    assert dataset.times is samples.times and dataset.reader is samples.reader
    assert len(dataset) == len(samples.times) == 22  # inputs from 00 and 01, the last target at 23
    assert dataset.sample_times(3) == samples.sample_times(3) == ([T0 + 3, T0 + 4], [T0 + 5])

    subset = ERA5Dataset.from_description(dataclasses.replace(samples, times=samples.times[3:5]))
    assert len(subset) == 2
    inp, tar, t = subset[0]
    assert t == T0 + 4
    expected = np.stack(
        [
            np.full((H, W), (t_hours - T0 + k - m) / s, np.float32)
            for t_hours in (T0 + 3, T0 + 4, T0 + 5)
            for k, (m, s) in enumerate(zip(MEAN.values(), STD.values(), strict=True))
        ]
    ).reshape(3, 3, H, W)
    np.testing.assert_allclose(inp.numpy(), expected[:2], rtol=1e-6)
    np.testing.assert_allclose(tar.numpy(), expected[2:], rtol=1e-6)
    batch = dataset.read_batch([3])
    np.testing.assert_array_equal(batch[0].numpy()[0], inp.numpy())
