"""Latitude-weighted RMSE / ACC against an independent float64 loop implementation."""

import math

import numpy as np
import pytest
import torch

from utils.grid import latitudes
from utils.weighted_acc_rmse import (
    aggregate_acc,
    aggregate_rmse,
    lat_weights_torch,
    weighted_acc_torch_channels,
    weighted_mse_torch_channels,
    weighted_rmse_torch_channels,
)


def _ref_weights(lat):
    w = [math.cos(math.radians(x)) for x in lat]
    s = sum(w) / len(w)
    return [x / s for x in w]


def _ref_rmse(pred, target, lat):
    n, c, h, w = pred.shape
    wts = _ref_weights(lat)
    out = np.zeros((n, c))
    for i in range(n):
        for j in range(c):
            acc = 0.0
            for y in range(h):
                for x in range(w):
                    acc += wts[y] * (float(pred[i, j, y, x]) - float(target[i, j, y, x])) ** 2
            out[i, j] = math.sqrt(acc / (h * w))
    return out


def _ref_acc(pred, target, clim, lat):
    n, c, h, w = pred.shape
    wts = _ref_weights(lat)
    out = np.zeros((n, c))
    for i in range(n):
        for j in range(c):
            num = da = db = 0.0
            for y in range(h):
                for x in range(w):
                    a = float(pred[i, j, y, x]) - float(clim[j, y, x])
                    b = float(target[i, j, y, x]) - float(clim[j, y, x])
                    num += wts[y] * a * b
                    da += wts[y] * a * a
                    db += wts[y] * b * b
            out[i, j] = num / math.sqrt(da * db)
    return out


@pytest.fixture
def fields():
    g = np.random.default_rng(0)
    n, c, h, w = 3, 2, 8, 16
    lat = latitudes(h)
    clim = g.normal(size=(c, h, w)) * 3 + 10
    target = clim + g.normal(size=(n, c, h, w))
    pred = target + 0.5 * g.normal(size=(n, c, h, w)) + 0.3  # biased: mean not removed
    return pred.astype(np.float32), target.astype(np.float32), clim.astype(np.float32), lat


def test_latitude_weights_mean_one_and_cell_centres():
    # Cell centres 90 - (i + 0.5) * 180 / H: half a cell (0.703125 deg) from the pole for the
    # 128-row 1.40625 deg grid. (88.59375 = 90 - 2.8125 / 2 is the first row of the 64-row grid.)
    lat = latitudes(128)
    assert lat[0] == pytest.approx(89.296875, abs=1e-12)
    assert lat[-1] == pytest.approx(-89.296875, abs=1e-12)
    assert np.allclose(np.diff(lat), -1.40625)
    assert latitudes(64)[0] == pytest.approx(88.59375, abs=1e-12)
    w = lat_weights_torch(lat)
    assert w.shape == (128, 1)
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-12)
    assert float(w[0, 0]) > 0  # no zero weight at a pole row
    np.testing.assert_allclose(w[:, 0].numpy(), _ref_weights(lat), rtol=1e-12)


def test_rmse_matches_reference(fields):
    pred, target, _, lat = fields
    got = weighted_rmse_torch_channels(torch.from_numpy(pred), torch.from_numpy(target), lat)
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got.numpy(), _ref_rmse(pred, target, lat), rtol=1e-10)
    mse = weighted_mse_torch_channels(
        torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(lat)
    )
    np.testing.assert_allclose(mse.numpy(), _ref_rmse(pred, target, lat) ** 2, rtol=1e-10)


def test_acc_matches_reference_without_mean_removal(fields):
    pred, target, clim, lat = fields
    got = weighted_acc_torch_channels(
        torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(clim), list(lat)
    )
    ref = _ref_acc(pred, target, clim, lat)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10)
    # A centred (mean-removed) correlation would differ noticeably for this biased forecast.
    a = pred - clim - (pred - clim).mean(axis=(-2, -1), keepdims=True)
    b = target - clim - (target - clim).mean(axis=(-2, -1), keepdims=True)
    centred = _ref_acc(a, b, np.zeros_like(clim), lat)
    assert np.abs(centred - ref).max() > 1e-3


def test_perfect_forecast_rmse_zero_acc_one(fields):
    _, target, clim, lat = fields
    t = torch.from_numpy(target)
    assert torch.all(weighted_rmse_torch_channels(t, t.clone(), lat) == 0)
    acc = weighted_acc_torch_channels(t, t.clone(), torch.from_numpy(clim), lat)
    np.testing.assert_allclose(acc.numpy(), 1.0, atol=1e-12)


def test_climatology_forecast_acc_is_nan_not_inf(fields):
    _, target, clim, lat = fields
    c = torch.from_numpy(clim)
    pred = c.expand(3, -1, -1, -1).clone()
    acc = weighted_acc_torch_channels(pred, torch.from_numpy(target), c, lat)
    assert acc.shape == (3, 2)
    assert torch.isnan(acc).all()
    assert not torch.isinf(acc).any()
    # Mixed: one IC undefined, others defined -> nan-aware mean with a count.
    mixed = weighted_acc_torch_channels(
        torch.cat([pred[:1], torch.from_numpy(target[1:]) + 0.1]), torch.from_numpy(target), c, lat
    )
    mean, undefined = aggregate_acc(mixed)
    assert undefined.tolist() == [1, 1]
    np.testing.assert_allclose(mean, mixed[1:].mean(0).numpy(), rtol=1e-12)
    mean_all_nan, n_all = aggregate_acc(acc)
    assert np.isnan(mean_all_nan).all() and n_all.tolist() == [3, 3]


def test_rmse_aggregation_is_sqrt_of_mean_mse():
    h, w = 4, 8
    lat = latitudes(h)
    target = torch.zeros(2, 1, h, w)
    pred = torch.stack([torch.full((1, h, w), 1.0), torch.full((1, h, w), 3.0)])
    mse = weighted_mse_torch_channels(pred, target, lat)  # 1 and 9
    np.testing.assert_allclose(mse[:, 0].numpy(), [1.0, 9.0], rtol=1e-12)
    agg = aggregate_rmse(mse)
    assert agg.shape == (1,)
    assert agg[0] == pytest.approx(math.sqrt(5.0))  # not (1 + 3) / 2 = 2
    assert agg[0] != pytest.approx(2.0)


def test_shape_checks(fields):
    pred, target, _, lat = fields
    with pytest.raises(ValueError):
        weighted_rmse_torch_channels(torch.from_numpy(pred), torch.from_numpy(target), lat[:-1])
    with pytest.raises(ValueError):
        weighted_rmse_torch_channels(torch.from_numpy(pred), torch.from_numpy(target[:2]), lat)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(fields):
    pred, target, clim, lat = fields
    p, t, c = (torch.from_numpy(x) for x in (pred, target, clim))
    cpu = weighted_acc_torch_channels(p, t, c, lat)
    gpu = weighted_acc_torch_channels(p.cuda(), t.cuda(), c.cuda(), lat)
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), rtol=1e-10)
