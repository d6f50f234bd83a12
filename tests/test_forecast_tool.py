"""``python -m tools.forecast``: forecasts from the dataset or from an analysis file on another grid,
in the WeatherBench 2 layout with maps; bf16 autocast; what a file lacks is one error."""

import os

import numpy as np
import pytest
import torch
from conftest import make_params

from networks.vamoe import VAMoE
from tools import forecast as forecast_tool
from utils.data.dataset import ERA5Dataset
from utils.evaluation.forecasting import dataset_states
from utils.evaluation.stepper import Stepper
from utils.times import to_hours

xr = pytest.importorskip("xarray")
pytest.importorskip("netCDF4")
pytest.importorskip("scipy")

START = "2020-01-28T00"  # the first test sample of the tiny config


def _run(weights, root, output, *extra):
    forecast_tool.main(
        ["--weights", weights, "--set", f"root_dir={root}", "--output", str(output), *extra]
    )


CF_NAMES = {
    "z": "geopotential",
    "q": "specific_humidity",
    "u": "eastward_wind",
    "v": "northward_wind",
    "t": "air_temperature",
    "t2m": "air_temperature",
    "u10": "eastward_wind",
    "v10": "northward_wind",
    "msl": "air_pressure_at_mean_sea_level",
    "sp": "surface_air_pressure",
}


def analysis_file(root, path, drop=(), levels=(850, 500, 250)) -> np.ndarray:
    """Write the dataset's state at ``START`` as a CF netCDF file of another grid, and return the
    state ``(C, H, W)``: variables known by their ``standard_name`` only, ``valid_time`` and
    ``pressure_level`` (hPa, descending as Copernicus writes them), latitudes south to north,
    longitudes -180..180, every cell of the dataset split in 2 x 2 (so regridding back to the
    dataset's grid gives the state again, up to rounding). ``drop``: surface variables left
    out; ``levels``: the pressure levels in the file."""
    params = make_params(root, "tiny")
    layout = params.layout
    state = dataset_states(params, [to_hours(START)])[0]
    fine = np.repeat(np.repeat(state, 2, axis=1), 2, axis=2)[:, ::-1]  # south to north
    lon = (np.arange(128) * 2.8125 - 1.40625 + 180) % 360 - 180
    order = np.argsort(lon)
    fine, lon = fine[..., order], lon[order]
    coords = {
        "valid_time": [np.datetime64(START, "ns")],
        "latitude": ("latitude", -90 + (np.arange(64) + 0.5) * 2.8125, {"units": "degrees_north"}),
        "longitude": ("longitude", lon, {"units": "degrees_east"}),
    }
    ds = xr.Dataset(coords=coords)
    for i, var in enumerate(layout.higher_features):
        values = fine[[layout.index(var, p) for p in levels]][None]
        dims = ("valid_time", "pressure_level", "latitude", "longitude")
        da = xr.DataArray(values, dims=dims, coords={"pressure_level": list(levels)})
        ds[f"field{i}"] = da.assign_attrs(standard_name=CF_NAMES[var])
    for j, var in enumerate(layout.surface_features):
        if var not in drop:
            da = xr.DataArray(fine[layout.index(var)][None], dims=dims[:1] + dims[2:])
            ds[f"single{j}"] = da.assign_attrs(standard_name=CF_NAMES[var])
    ds["pressure_level"].attrs["units"] = "hPa"
    ds.to_netcdf(path)
    return state


def test_forecast_from_a_cf_file_on_another_grid(random_tiny_weights, synthetic_root, tmp_path):
    state = analysis_file(synthetic_root, tmp_path / "analysis.nc")
    out = tmp_path / "run" / "fc.nc"
    _run(
        random_tiny_weights,
        synthetic_root,
        out,
        "--input",
        str(tmp_path / "analysis.nc"),
        "--lead_hours",
        "24",
    )
    assert sorted(os.listdir(out.parent)) == ["fc.nc", "maps.png"]
    assert (out.parent / "maps.png").stat().st_size > 10_000
    with xr.open_dataset(out) as fc:
        assert str(fc.time.values[0])[:13] == START and fc.prediction_timedelta.size == 5
        assert fc.latitude.size == 32 and np.all(np.diff(fc.latitude.values) > 0)
        z = fc.geopotential.sel(level=[850, 500, 250]).values[0, 0, :, ::-1]
        t2m = fc["2m_temperature"].values[0, 0, ::-1]
    np.testing.assert_allclose(z, state[:3], rtol=1e-6)  # lead 0: the file's state, regridded
    np.testing.assert_allclose(t2m, state[15], rtol=1e-6)


def test_forecast_from_the_dataset_is_the_steppers_rollout(
    random_tiny_weights, synthetic_root, tmp_path
):
    out = tmp_path / "fc.zarr"
    _run(
        random_tiny_weights,
        synthetic_root,
        out,
        "--init",
        START,
        "--lead_hours",
        "12",
        "--variables",
        "z500",
        "t2m",
        "--maps",
        str(tmp_path / "m.png"),
    )
    params = make_params(synthetic_root, "tiny", ["num_data_workers=0"])
    dataset = ERA5Dataset(params, "test")
    inp = dataset.read_batch([0])[0]
    model = _model(params, random_tiny_weights)
    stepper = Stepper(lambda x: model(x).forecast, dataset.mean, dataset.std, "cpu")
    with torch.inference_mode():
        steps = [stepper.denormalise(s.forecast)[0].float() for s in stepper.rollout(inp, 2)]
    with xr.open_zarr(out) as fc:
        assert list(fc.data_vars) == ["2m_temperature", "geopotential"]
        z500 = fc.geopotential.sel(level=500).values[0, :, ::-1]
        t2m = fc["2m_temperature"].values[0, :, ::-1]
    for k in (1, 2):
        np.testing.assert_array_equal(z500[k], steps[k - 1][1].numpy())
        np.testing.assert_array_equal(t2m[k], steps[k - 1][15].numpy())


def _model(params, weights):
    model = VAMoE.from_params(params)
    model.load_state_dict(torch.load(weights, weights_only=True)["model"])
    return model.eval()


def test_bf16_autocast_on_the_cpu(random_tiny_weights, synthetic_root, tmp_path):
    common = ["--init", START, "--lead_hours", "6", "--variables", "z500"]
    _run(
        random_tiny_weights,
        synthetic_root,
        tmp_path / "fp32.nc",
        *common,
        "--maps",
        str(tmp_path / "a.png"),
    )
    _run(
        random_tiny_weights,
        synthetic_root,
        tmp_path / "bf16.nc",
        *common,
        "--maps",
        str(tmp_path / "b.png"),
        "--amp",
        "bf16",
    )
    with xr.open_dataset(tmp_path / "fp32.nc") as a, xr.open_dataset(tmp_path / "bf16.nc") as b:
        full, half = a.geopotential.values[0, 1], b.geopotential.values[0, 1]
        np.testing.assert_array_equal(a.geopotential.values[0, 0], b.geopotential.values[0, 0])
    change = np.abs(half - full).max() / np.abs(full - a.geopotential.values[0, 0]).max()
    assert 0 < change < 0.1  # bf16 rounding: another forecast, close to the fp32 one


def test_what_a_file_lacks_is_one_error(random_tiny_weights, synthetic_root, tmp_path, capsys):
    analysis_file(synthetic_root, tmp_path / "a.nc", drop=("sp",), levels=(850, 500))
    with pytest.raises(SystemExit) as code:
        _run(
            random_tiny_weights,
            synthetic_root,
            tmp_path / "fc.nc",
            "--input",
            str(tmp_path / "a.nc"),
        )
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.count("\n") == err.count("  ") + 1
    assert (
        "the input(s) lack z at [250] hPa, q at [250] hPa, u at [250] hPa, v at [250] hPa, t at [250] hPa, sp (the model needs"
        in err
    )
    analysis_file(synthetic_root, tmp_path / "b.nc")
    with pytest.raises(SystemExit):
        _run(
            random_tiny_weights,
            synthetic_root,
            tmp_path / "fc.nc",
            "--input",
            str(tmp_path / "b.nc"),
            "--init",
            "2020-01-29T00",
        )
    assert "start(s) ['2020-01-29T00'] not in the input(s)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(
            random_tiny_weights,
            synthetic_root,
            tmp_path / "fc.nc",
            "--init",
            START,
            "--lead_hours",
            "10",
        )
    assert "--lead_hours 10 must be a positive multiple of 6 h" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "fc.nc")
