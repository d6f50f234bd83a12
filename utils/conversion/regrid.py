"""First-order conservative regridding between global regular latitude-longitude grids.

Every target cell gets the area-weighted mean of the source cells it overlaps, with weights equal
to the exact spherical area of each overlap. On a latitude-longitude grid the overlap of two cells
factorises into a latitude part (the difference of ``sin(lat)`` over the common latitude band) and
a longitude part (the common longitude interval, periodic), so the regridding is two small matrices: ``out = A @ field @ B.T`` with ``A`` of shape ``(h, H)``
and ``B`` of shape ``(w, W)``, each row summing to 1 (applied as sparse matrices: a target cell
overlaps only a few source rows and columns). Hence a constant field stays constant and the area-weighted global mean
is preserved up to rounding.

Cell edges lie half-way between neighbouring centres; the outer edges are extrapolated by half a
spacing and clipped to ±90°, so a grid with rows on the poles (ERA5 0.25°: 721 rows from 90° to
-90°) has half-height polar cells and a cell-centre grid (1.40625°: 128 rows from 89.296875°)
reaches the poles exactly.

Why not ``xarray-regrid``: its conservative method (0.4) weights each source row by the area of
a band centred on the row, which is zero for a row on a pole, and approximates partial overlaps
linearly in latitude. On our grids that loses the global mean by 4e-6 (1.5° -> 1.40625°) and
leaves polar target rows without data when the source's rows stop short of the poles (5.625°).
"""

from __future__ import annotations

import numpy as np


def cell_edges(centres, lower: float | None = None, upper: float | None = None) -> np.ndarray:
    """Edges ``(N + 1,)`` of cells around monotonic ``centres`` ``(N,)``: midpoints inside, half a
    spacing beyond the outer centres, clipped to ``[lower, upper]`` when given."""
    c = np.asarray(centres, dtype=np.float64)
    if c.size < 2:
        raise ValueError("a grid needs at least two centres along each axis")
    mid = (c[1:] + c[:-1]) / 2
    edges = np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])
    if lower is not None or upper is not None:
        edges = np.clip(edges, lower, upper)
    return edges


def _intervals(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.minimum(edges[:-1], edges[1:]), np.maximum(edges[:-1], edges[1:])


def _overlap(src: tuple, dst: tuple, shifts=(0.0,)) -> np.ndarray:
    """Length of the overlap of each target interval with each source interval, ``(n_dst, n_src)``,
    summed over the source shifted by each of ``shifts``."""
    (s_lo, s_hi), (d_lo, d_hi) = src, dst
    total = np.zeros((d_lo.size, s_lo.size))
    for shift in shifts:
        top = np.minimum(d_hi[:, None], s_hi[None, :] + shift)
        bottom = np.maximum(d_lo[:, None], s_lo[None, :] + shift)
        total += np.maximum(top - bottom, 0.0)
    return total


def _normalise_rows(overlap: np.ndarray, what: str) -> np.ndarray:
    sums = overlap.sum(axis=1, keepdims=True)
    uncovered = np.flatnonzero(sums[:, 0] <= 0)
    if uncovered.size:
        raise ValueError(f"target {what} rows {uncovered.tolist()[:5]} lie outside the source grid")
    return overlap / sums


def latitude_weights_matrix(src_lat, dst_lat) -> np.ndarray:
    """``(h, H)`` weights: target row j is ``sum_i A[j, i] * source row i`` (rows sum to 1)."""
    src = _intervals(np.sin(np.deg2rad(cell_edges(src_lat, -90.0, 90.0))))
    dst = _intervals(np.sin(np.deg2rad(cell_edges(dst_lat, -90.0, 90.0))))
    return _normalise_rows(_overlap(src, dst), "latitude")


def longitude_weights_matrix(src_lon, dst_lon) -> np.ndarray:
    """``(w, W)`` weights over periodic longitudes (both grids global, ascending, in degrees)."""
    src_edges, dst_edges = cell_edges(src_lon), cell_edges(dst_lon)
    for name, edges in (("source", src_edges), ("target", dst_edges)):
        if not np.isclose(edges[-1] - edges[0], 360.0, atol=1e-6):
            raise ValueError(
                f"the {name} grid's longitudes span {edges[-1] - edges[0]:.4f} degrees, not 360: "
                "only global grids are regridded"
            )
    overlap = _overlap(_intervals(src_edges), _intervals(dst_edges), (-360.0, 0.0, 360.0))
    return _normalise_rows(overlap, "longitude")


class ConservativeRegridder:
    """Regrid fields from one global lat-lon grid to another (see the module docstring).

    Args:
        src_lat, src_lon: source centres in degrees, ``(H,)`` and ``(W,)``, each monotonic.
        dst_lat, dst_lon: target centres in degrees, ``(h,)`` and ``(w,)``.
    """

    def __init__(self, src_lat, src_lon, dst_lat, dst_lon):
        from scipy import sparse

        self.lat_matrix = latitude_weights_matrix(src_lat, dst_lat)
        self.lon_matrix = longitude_weights_matrix(src_lon, dst_lon)
        self._lat_sparse = sparse.csr_matrix(self.lat_matrix)
        self._lon_sparse = sparse.csr_matrix(self.lon_matrix)

    @property
    def source_shape(self) -> tuple[int, int]:
        return self.lat_matrix.shape[1], self.lon_matrix.shape[1]

    @property
    def target_shape(self) -> tuple[int, int]:
        return self.lat_matrix.shape[0], self.lon_matrix.shape[0]

    def __call__(self, fields) -> np.ndarray:
        """``(..., H, W)`` fields to ``(..., h, w)``, computed in float64."""
        data = np.asarray(fields, dtype=np.float64)
        if data.shape[-2:] != self.source_shape:
            raise ValueError(
                f"fields of shape {data.shape} do not match the source grid {self.source_shape}"
            )
        (h, w), (src_h, src_w) = self.target_shape, self.source_shape
        lead = data.shape[:-2]
        stack = data.reshape(-1, src_h, src_w)  # (N, H, W)
        n = stack.shape[0]
        rows = self._lat_sparse @ stack.transpose(1, 0, 2).reshape(src_h, n * src_w)  # (h, N W)
        rows = rows.reshape(h, n, src_w).transpose(1, 0, 2).reshape(n * h, src_w)  # (N h, W)
        out = (self._lon_sparse @ rows.T).T  # (N h, w)
        return np.ascontiguousarray(out).reshape(*lead, h, w)
