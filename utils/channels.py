"""Channel layout of a VA-MoE state, derived from the variable lists of a config.

A state ``x`` has shape ``(B, C, H, W)``. Channels are ordered upper-air variables first, each with
all of its pressure levels (channel of (variable i, level j) = ``i * n_levels + j``), then the
surface variables. A *variable group* is one upper-air variable (all its levels), plus one group
holding every surface variable if there are any; each group owns one channel-MoE expert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# ERA5's 37 pressure levels, from the surface up; statistics files list values in this order.
ERA5_LEVELS = (
    1000,
    975,
    950,
    925,
    900,
    875,
    850,
    825,
    800,
    775,
    750,
    700,
    650,
    600,
    550,
    500,
    450,
    400,
    350,
    300,
    250,
    225,
    200,
    175,
    150,
    125,
    100,
    70,
    50,
    30,
    20,
    10,
    7,
    5,
    3,
    2,
    1,
)

SURFACE_GROUP = "surface"


@dataclass(frozen=True)
class Channel:
    """One channel: an upper-air variable at a pressure level, or a surface variable (level None)."""

    variable: str
    level: int | None = None

    @property
    def name(self) -> str:
        """Short name, e.g. ``z500`` or ``t2m``."""
        return self.variable if self.level is None else f"{self.variable}{self.level}"

    @property
    def group(self) -> str:
        """Variable group this channel belongs to (its upper-air variable, or ``surface``)."""
        return SURFACE_GROUP if self.level is None else self.variable


def _as_level(value) -> int:
    level = float(value)
    if not level.is_integer():
        raise ValueError(f"pressure level {value!r} is not a whole number of hPa")
    return int(level)


class ChannelLayout:
    """The ordered channels and variable groups of one configuration.

    Args:
        higher_features: upper-air variable names, e.g. ``["z", "q", "u", "v", "t"]``.
        pressure_level: pressure levels in hPa, in channel order.
        surface_features: surface variable names, e.g. ``["t2m", "u10"]``.
    """

    def __init__(
        self,
        higher_features: Sequence[str],
        pressure_level: Sequence,
        surface_features: Sequence[str],
    ):
        self.higher_features = list(higher_features or [])
        self.pressure_level = [_as_level(p) for p in (pressure_level or [])]
        self.surface_features = list(surface_features or [])
        for key, values in (
            ("higher_features", self.higher_features),
            ("pressure_level", self.pressure_level),
            ("surface_features", self.surface_features),
        ):
            if len(set(values)) != len(values):
                raise ValueError(f"config key '{key}' has repeated entries: {values}")
        if self.higher_features and not self.pressure_level:
            raise ValueError("config key 'pressure_level' is empty but 'higher_features' is not")
        self.channels = tuple(
            [Channel(v, p) for v in self.higher_features for p in self.pressure_level]
            + [Channel(s) for s in self.surface_features]
        )
        if not self.channels:
            raise ValueError("config keys 'higher_features' and 'surface_features' are both empty")
        self._index = {c: i for i, c in enumerate(self.channels)}

    @classmethod
    def from_params(cls, params, prefix: str = "") -> ChannelLayout:
        """Layout of a config (``prefix="old_"`` gives the old variable set of an incremental run)."""
        return cls(
            params[f"{prefix}higher_features"],
            params[f"{prefix}pressure_level"],
            params[f"{prefix}surface_features"],
        )

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.channels]

    @property
    def group_names(self) -> list[str]:
        """Variable groups in expert order: upper-air variables, then ``surface`` if present."""
        return self.higher_features + ([SURFACE_GROUP] if self.surface_features else [])

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    def index(self, variable: str, level=None) -> int:
        """Channel index of ``variable`` at ``level`` (None for a surface variable)."""
        key = Channel(variable, None if level is None else _as_level(level))
        if key not in self._index:
            raise KeyError(f"channel {key.name!r} is not in this configuration ({self.names})")
        return self._index[key]

    def index_of_name(self, name: str) -> int:
        """Channel index from a short name such as ``z500`` or ``t2m`` (surface names win ties)."""
        if name in self.surface_features:
            return self._index[Channel(name)]
        for i, c in enumerate(self.channels):
            if c.name == name:
                return i
        raise KeyError(f"channel {name!r} is not in this configuration ({self.names})")

    def channels_of_group(self, group: str) -> list[int]:
        return [i for i, c in enumerate(self.channels) if c.group == group]

    def index_matrix(self, dtype=torch.float32) -> torch.Tensor:
        """Variable index matrix ``P`` of shape ``(E, C)``: ``P[g, c] = 1`` iff channel c is in group g."""
        matrix = torch.zeros(self.n_groups, self.n_channels, dtype=dtype)
        for g, group in enumerate(self.group_names):
            matrix[g, self.channels_of_group(group)] = 1
        return matrix

    def __contains__(self, channel: Channel) -> bool:
        return channel in self._index

    def __repr__(self) -> str:
        return f"ChannelLayout({self.n_channels} channels, groups={self.group_names})"


# Surface variables whose names look like an upper-air variable at a level (u10: 10 m wind, not u
# at 10 hPa); channel names are read with them in mind.
SURFACE_CHANNEL_NAMES = ("t2m", "u10", "v10", "u100", "v100", "msl", "sp", "tp", "tcwv")


def channel_from_name(name: str) -> Channel:
    """The channel of a short name: ``z500`` -> ``Channel("z", 500)``; ``t2m``, ``u10`` and any
    name that is not a variable followed by an ERA5 pressure level -> a surface channel."""
    stem = name.rstrip("0123456789")
    digits = name[len(stem) :]
    if name in SURFACE_CHANNEL_NAMES or not stem or not digits or int(digits) not in ERA5_LEVELS:
        return Channel(name)
    return Channel(stem, int(digits))
