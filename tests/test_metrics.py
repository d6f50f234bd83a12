"""Latitude-weighted RMSE / ACC (the one scoring implementation, ``score_fields``, and its
aggregation over initial conditions, ``MetricAccumulator``) against an independent float64 loop."""

import math

import numpy as np
import pytest
import torch

from utils.evaluation.metrics import MetricAccumulator, lat_weights_torch, score_fields
from utils.grid import latitudes


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


def scores(pred, target, lat, clim=None, device="cpu"):
    """``score_fields`` of numpy/tensor fields: ``(mse, acc)``, each ``(N, C)`` float64."""

    def t(x):
        return torch.as_tensor(x).to(device, torch.float64)

    w = lat_weights_torch(lat, device)
    return score_fields(t(pred), t(target), w, None if clim is None else t(clim))


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
    mse, acc = scores(pred, target, lat)
    assert mse.shape == acc.shape == (3, 2)
    np.testing.assert_allclose(mse.sqrt().numpy(), _ref_rmse(pred, target, lat), rtol=1e-10)
    assert torch.isnan(acc).all()  # no climatology: ACC undefined


def test_acc_matches_reference_without_mean_removal(fields):
    pred, target, clim, lat = fields
    _, got = scores(pred, target, list(lat), clim)
    ref = _ref_acc(pred, target, clim, lat)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10)
    # A centred (mean-removed) correlation would differ noticeably for this biased forecast.
    a = pred - clim - (pred - clim).mean(axis=(-2, -1), keepdims=True)
    b = target - clim - (target - clim).mean(axis=(-2, -1), keepdims=True)
    centred = _ref_acc(a, b, np.zeros_like(clim), lat)
    assert np.abs(centred - ref).max() > 1e-3


def test_perfect_forecast_rmse_zero_acc_one(fields):
    _, target, clim, lat = fields
    mse, acc = scores(target, target.copy(), lat, clim)
    assert torch.all(mse == 0)
    np.testing.assert_allclose(acc.numpy(), 1.0, atol=1e-12)


def test_climatology_forecast_acc_is_nan_not_inf_and_excluded_from_the_mean(fields):
    _, target, clim, lat = fields
    pred = np.broadcast_to(clim, target.shape).copy()
    _, acc = scores(pred, target, lat, clim)
    assert acc.shape == (3, 2)
    assert torch.isnan(acc).all()
    assert not torch.isinf(acc).any()
    # Mixed: one IC undefined, others defined -> nan-aware mean with a count.
    mixed_pred = np.concatenate([pred[:1], target[1:] + 0.1])
    mse, mixed = scores(mixed_pred, target, lat, clim)
    total = MetricAccumulator(2, 1)
    total.add(0, mse, mixed)
    assert total.acc_undefined()[:, 0].tolist() == [1, 1]
    np.testing.assert_allclose(total.acc()[:, 0], mixed[1:].mean(0).numpy(), rtol=1e-12)
    all_nan = MetricAccumulator(2, 1)
    all_nan.add(0, mse, acc)
    assert np.isnan(all_nan.acc()).all() and all_nan.acc_undefined()[:, 0].tolist() == [3, 3]


def test_rmse_over_ics_is_sqrt_of_mean_mse_and_ic_mean_is_separate():
    h, w = 4, 8
    lat = latitudes(h)
    target = torch.zeros(2, 1, h, w)
    pred = torch.stack([torch.full((1, h, w), 1.0), torch.full((1, h, w), 3.0)])
    mse, acc = scores(pred, target, lat)
    np.testing.assert_allclose(mse[:, 0].numpy(), [1.0, 9.0], rtol=1e-12)
    total = MetricAccumulator(1, 2)
    total.add(1, mse, acc)
    assert total.rmse().shape == (1, 2) and np.isnan(total.rmse()[0, 0])  # lead 0: nothing
    assert total.rmse()[0, 1] == pytest.approx(math.sqrt(5.0))  # not (1 + 3) / 2 = 2
    assert total.rmse_ic_mean()[0, 1] == pytest.approx(2.0)
    assert total.n_samples() == 0
    one_by_one = MetricAccumulator(1, 2)
    one_by_one.add(1, mse[:1], acc[:1])
    one_by_one.add(1, mse[1:], acc[1:])
    np.testing.assert_array_equal(one_by_one.rmse(), total.rmse())


def test_non_finite_errors_propagate_into_the_rmse():
    total = MetricAccumulator(1, 1)
    total.add(0, torch.tensor([[1.0], [float("nan")]]), torch.tensor([[0.5], [0.5]]))
    assert np.isnan(total.rmse()).all()


def test_shape_checks(fields):
    pred, target, _, lat = fields
    with pytest.raises(ValueError, match="latitude weights"):
        scores(pred, target, lat[:-1])
    with pytest.raises(ValueError, match="differ"):
        scores(pred, target[:2], lat)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(fields):
    pred, target, clim, lat = fields
    cpu = scores(pred, target, lat, clim)
    gpu = scores(pred, target, lat, clim, device="cuda")
    assert gpu[1].device.type == "cuda"
    for a, b in zip(gpu, cpu, strict=True):
        np.testing.assert_allclose(a.cpu().numpy(), b.numpy(), rtol=1e-10)
