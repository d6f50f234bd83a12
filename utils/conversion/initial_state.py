"""Initial states from analysis files: some times of netCDF / Zarr inputs on any global grid,
brought onto a model's channels and grid (``python -m tools.forecast --input``).

The inputs are found and read as the converter reads them (:func:`utils.conversion.sources.find_inputs`
and :func:`utils.conversion.normalise_input.normalise`: every variable, dimension and coordinate
name and convention they know, e.g. the one time of a Copernicus download with CF names and
latitudes from south to north) and regridded by the converter's first-order conservative
regridder (:func:`utils.conversion.request.input_regridders`). Every channel of the layout must be
in the inputs at every requested time; what is missing is one error listing it all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from utils.channels import ChannelLayout
from utils.conversion.normalise_input import InputOptions, NormalisedInput, normalise
from utils.conversion.request import input_regridders
from utils.conversion.sources import find_inputs
from utils.conversion.variable_names import ConversionError
from utils.times import format_hours


def _holdings(opened: Sequence[NormalisedInput]) -> str:
    return "\n".join(f"  {inp.where}: {inp.holdings()}" for inp in opened)


def _owners(opened: Sequence[NormalisedInput], layout: ChannelLayout) -> dict[str, int]:
    """``{variable: index of the first input holding it (every level of the layout)}``; an
    error listing every variable and level the inputs lack."""
    owners, missing = {}, []
    for var in layout.higher_features + layout.surface_features:
        lacking = None
        for index, inp in enumerate(opened):
            if var not in inp.variables:
                continue
            upper = var in layout.higher_features
            absent = [p for p in layout.pressure_level if upper and p not in inp.levels(var)]
            if not absent:
                owners[var] = index
                break
            lacking = f"{var} at {absent} hPa"
        if var not in owners:
            missing.append(lacking or var)
    if missing:
        raise ConversionError(
            f"the input(s) lack {', '.join(missing)} (the model needs {layout.names}); they "
            f"hold:\n{_holdings(opened)}"
        )
    return owners


def _times(opened, owners: dict[str, int], times: Sequence[int] | None) -> list[int]:
    """The requested ``times`` (hours since 1970), each held by every input used; without
    ``times``, the one time the inputs hold."""
    used = sorted(set(owners.values()))
    held = [set(np.round(opened[i].times).astype(np.int64).tolist()) for i in used]
    if times is None:
        every = sorted(set.union(*held))
        if len(every) != 1:
            shown = ", ".join(format_hours(t) for t in every[:6])
            raise ConversionError(
                f"the input(s) hold {len(every)} times ({shown}{', ...' if len(every) > 6 else ''}"
                "); choose the start(s) with --init"
            )
        return every
    absent = sorted({int(t) for t in times if not all(int(t) in h for h in held)})
    if absent:
        raise ConversionError(
            f"start(s) {[format_hours(t) for t in absent]} not in the input(s) "
            f"{[opened[i].where for i in used]}"
        )
    return [int(t) for t in times]


def read_initial_states(
    inputs: Sequence[str],
    layout: ChannelLayout,
    times: Sequence[int] | None,
    lat,
    lon,
    options: InputOptions | None = None,
) -> tuple[np.ndarray, list[int]]:
    """The states at ``times`` (hours since 1970; None: the inputs' one time) of ``inputs``
    (paths, globs, directories, Zarr URLs) on the grid ``lat`` ``(H,)`` north to south, ``lon``
    ``(W,)``: float32 ``(N, C, H, W)`` in ``layout``'s channel order, physical units, and the
    times. ``options``: how the inputs are read (ensemble member, time coordinate, ...)."""
    opened = [
        normalise(s.open(), s.location, options or InputOptions())
        for s in find_inputs(list(inputs))
    ]
    owners = _owners(opened, layout)
    times = _times(opened, owners, times)
    regridders = input_regridders(opened, sorted(set(owners.values())), lat, lon)
    states = np.empty((len(times), layout.n_channels, len(lat), len(lon)), dtype=np.float32)
    for i, t in enumerate(times):
        for var, index in owners.items():
            inp = opened[index]
            da = inp.variables[var].isel(time=int(np.argmin(np.abs(inp.times - t))))
            if var in layout.higher_features:
                da, channels = da.sel(level=layout.pressure_level), layout.channels_of_group(var)
            else:
                channels = [layout.index(var)]
            values = np.asarray(da.values, dtype=np.float64).reshape(len(channels), *da.shape[-2:])
            if regridders[index] is not None:
                values = regridders[index](values)
            if not np.isfinite(values).all():
                raise ConversionError(f"{inp.where}: {var} at {format_hours(t)} has NaN/inf values")
            states[i, channels] = values
    return states, times
