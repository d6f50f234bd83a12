"""First-order conservative regridding: constants, global means, smooth fields, a hand example."""

import numpy as np
import pytest

pytest.importorskip("scipy")  # an optional requirement of the converter

from utils.conversion.regrid import ConservativeRegridder, cell_edges
from utils.grid import latitudes, longitudes


def poles_grid(h, w):
    """ERA5-style grid: ``h`` rows from 90 to -90 (rows on the poles), ``w`` columns from 0."""
    return np.linspace(90.0, -90.0, h), np.arange(w) * 360.0 / w


def centre_grid(h, w):
    return latitudes(h), longitudes(w)


def global_mean(field, lat):
    """Area-weighted mean with cells bounded half-way between rows, clipped at the poles."""
    edges = np.deg2rad(np.clip(cell_edges(lat), -90, 90))
    area = np.abs(np.sin(edges[1:]) - np.sin(edges[:-1]))
    return float((field.mean(axis=-1) * area).sum() / area.sum())


def smooth(lat, lon):
    """A smooth field at points ``(H, W)``; its gradient is at most 30 + 10 + 3 per radian."""
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    return 250.0 + 30.0 * np.cos(la) ** 2 + 5.0 * np.sin(2 * lo) * np.cos(la) + 3.0 * np.sin(la)


def smooth_cell_means(lat, lon):
    """Exact area means of :func:`smooth` over each cell (integrated by hand in sin(lat))."""
    phi = np.deg2rad(np.clip(cell_edges(lat), -90, 90))
    s, lam = np.sin(phi), np.deg2rad(cell_edges(lon))
    ds = np.diff(s)
    cos2 = np.diff(s - s**3 / 3) / ds  # mean of cos^2
    cos1 = np.diff(phi / 2 + np.sin(2 * phi) / 4) / ds  # mean of cos
    sin1 = np.diff(s**2 / 2) / ds  # mean of sin
    sin2lam = np.diff(-np.cos(2 * lam) / 2) / np.diff(lam)
    return 250.0 + 30.0 * cos2[:, None] + 5.0 * cos1[:, None] * sin2lam + 3.0 * sin1[:, None]


GRIDS = [
    # (source, target): 0.25 deg ERA5 (poles) -> 1.40625 deg cell centres (128 x 256), the
    # WeatherBench 2 1.5 deg grid (poles) and 5.625 deg grid (no poles) -> 128 x 256, a coarsening
    (poles_grid(721, 1440), centre_grid(128, 256)),
    (poles_grid(121, 240), centre_grid(128, 256)),
    (centre_grid(32, 64), centre_grid(128, 256)),
    (centre_grid(128, 256), poles_grid(33, 64)),
]


@pytest.mark.parametrize(
    "src,dst", GRIDS, ids=["0.25-128x256", "1.5-128x256", "5.625-128x256", "128x256-poles"]
)
def test_conservation_constant_and_smooth_field(src, dst):
    regrid = ConservativeRegridder(*src, *dst)
    assert regrid.source_shape == (src[0].size, src[1].size)
    assert regrid.target_shape == (dst[0].size, dst[1].size)
    np.testing.assert_allclose(regrid(np.full(regrid.source_shape, 7.5)), 7.5, rtol=1e-13)
    field = smooth(*src)
    out = regrid(field)
    assert out.shape == regrid.target_shape
    mean_in, mean_out = global_mean(field, src[0]), global_mean(out, dst[0])
    assert abs(mean_out - mean_in) <= 1e-6 * abs(mean_in)
    # the target cells' exact means, to second order in the source spacing when the source is
    # finer and to first order (half a source cell times the largest gradient) when coarser
    dx_src, dx_dst = (np.deg2rad(abs(g[0][0] - g[0][1])) for g in (src, dst))
    tolerance = 300.0 * dx_src**2 if dx_src <= dx_dst else 0.5 * 43.0 * dx_src
    assert np.abs(out - smooth_cell_means(*dst)).max() < tolerance


def test_coarsening_by_two_is_the_area_weighted_mean_by_hand():
    src_lat, src_lon = centre_grid(4, 8)  # rows 90..45..0..-45..-90, columns 45 degrees wide
    field = np.arange(32, dtype=np.float64).reshape(4, 8) ** 1.5
    out = ConservativeRegridder(src_lat, src_lon, *centre_grid(2, 4))(field)
    # target row 0 is rows 0 and 1 of areas sin 90 - sin 45 and sin 45; target column 0
    # (-45..45 degrees) is source column 0 and halves of columns 1 and 7
    a, b = 1 - np.sin(np.pi / 4), np.sin(np.pi / 4)
    columns = (field[:, 0] + 0.5 * field[:, 1] + 0.5 * field[:, 7]) / 2
    np.testing.assert_allclose(out[0, 0], (a * columns[0] + b * columns[1]) / (a + b), rtol=1e-12)
    np.testing.assert_allclose(out[1, 0], (b * columns[2] + a * columns[3]) / (a + b), rtol=1e-12)


def test_periodic_longitudes_and_a_regional_grid_is_refused():
    # target column 0 (-90..90 degrees) is source column 0 and halves of columns 1 and 3 (-135..-45)
    out = ConservativeRegridder(
        *centre_grid(2, 4), np.array([45.0, -45.0]), np.array([0.0, 180.0])
    )(np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]]))
    np.testing.assert_allclose(out[:, 0], (1.0 + 0.5 * 2.0 + 0.5 * 4.0) / 2)
    np.testing.assert_allclose(out[:, 1], (3.0 + 0.5 * 2.0 + 0.5 * 4.0) / 2)
    with pytest.raises(ValueError, match="span .* not 360"):
        ConservativeRegridder(*centre_grid(4, 8), latitudes(2), np.array([0.0, 10.0, 20.0]))
