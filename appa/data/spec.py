"""The state spec (variables, levels, grid) and exact stacking between xarray and tensors.

Channel order: surface variables first (in the given order), then each variable with levels on
each level (variable-major, levels in the given order). Tensors are ``(time, channel, lat, lon)``.
Levels are pressures in hPa (the atmosphere, ``vertical: pressure``) or depths of cell centres
in metres, positive down (a regional ocean, ``vertical: depth``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from pydantic import Field, field_validator, model_validator

from appa.config import StrictModel
from appa.data.layout import check_canonical, level_key, level_kind

__all__ = ["DEPTH_ATTRS", "Channel", "StateSpec", "Vertical", "stack", "unstack"]

# CF attributes of a depth level coordinate (what the layout recognises as depth)
DEPTH_ATTRS = {"units": "m", "standard_name": "depth", "positive": "down", "axis": "Z"}

Channel = tuple[str, int | float | None]

Vertical = Literal["pressure", "depth"]
_LEVEL_UNITS = {"pressure": "hPa", "depth": "m"}


class StateSpec(StrictModel):
    """Which fields make a state, in which order.

    Attributes:
        surface: Surface variables (dims ``(time, latitude, longitude)``).
        atmospheric: Variables on levels (``(time, level, latitude, longitude)``); for a sea,
            its 3-D variables.
        levels: Pressure levels in hPa, or depths in m (positive down) under ``vertical:
            depth``; integral values are kept as ``int`` (channel ``temperature@500``), others
            as ``float`` (``temperature@2.5``).
        vertical: What ``levels`` measure: ``pressure`` (hPa) or ``depth`` (m, positive down);
            data whose level coordinate measures the other is refused.
        grid: Optional grid name (``"64x32"``) checked against data.
        masked: Variables allowed to hold NaN (e.g. ``sea_surface_temperature`` over land);
            NaN anywhere else is an error.
    """

    surface: list[str] = Field(default_factory=list)
    atmospheric: list[str] = Field(default_factory=list)
    levels: list[int | float] = Field(default_factory=list)
    grid: str | None = None
    masked: list[str] = Field(default_factory=list)
    vertical: Vertical = "pressure"

    @field_validator("levels")
    @classmethod
    def _level_keys(cls, value: list[int | float]) -> list[int | float]:
        # 500.0 and 500 are one level (and one channel name): integral values become ints
        bad = [v for v in value if not (np.isfinite(v) and v > 0)]
        if bad:
            raise ValueError(f"levels must be positive (hPa or m of depth), got {bad}")
        return [level_key(v) for v in value]

    @model_validator(mode="after")
    def _check(self) -> StateSpec:
        names = self.surface + self.atmospheric
        if not names:
            raise ValueError("a state spec needs at least one variable")
        if len(set(names)) != len(names):
            raise ValueError(f"variables repeat in the state spec: {names}")
        if self.atmospheric and not self.levels:
            raise ValueError("atmospheric variables need levels")
        if len(set(self.levels)) != len(self.levels):
            raise ValueError(f"levels repeat: {self.levels}")
        unknown = [v for v in self.masked if v not in names]
        if unknown:
            raise ValueError(f"masked variables {unknown} are not in the spec")
        return self

    @property
    def variables(self) -> list[str]:
        return [*self.surface, *self.atmospheric]

    @property
    def channels(self) -> list[Channel]:
        """``(variable, level)`` per channel; ``level`` is None for surface variables."""
        return [(v, None) for v in self.surface] + [
            (v, p) for v in self.atmospheric for p in self.levels
        ]

    @property
    def num_channels(self) -> int:
        return len(self.surface) + len(self.atmospheric) * len(self.levels)

    def channel_names(self) -> list[str]:
        """``"2m_temperature"``, ``"temperature@500"``, ``"salinity@2.5"`` (depth), ..."""
        return [v if p is None else f"{v}@{p}" for v, p in self.channels]

    def channel_mask(self) -> list[bool]:
        """Whether each channel may hold NaN."""
        return [v in self.masked for v, _ in self.channels]


def stack(
    ds: xr.Dataset,
    spec: StateSpec,
    fill_value: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stacks a canonical dataset into ``(time, channel, lat, lon)`` in the spec's order
    (``(member, time, channel, lat, lon)`` when it has a member dimension).

    NaN is an error outside the spec's ``masked`` variables. Within them NaN is kept unless
    ``fill_value`` is given; then it is replaced and the validity mask ``(time, channel, lat,
    lon)`` (True where observed) is returned as well, else the mask is None.
    """
    arrays = _channel_arrays(ds, spec)
    x = np.stack(arrays, axis=-3)
    nan = np.isnan(x)
    if nan.any():
        allowed = np.asarray(spec.channel_mask())
        others = tuple(a for a in range(x.ndim) if a != x.ndim - 3)
        bad = nan.any(axis=others) & ~allowed
        if bad.any():
            names = [n for n, b in zip(spec.channel_names(), bad, strict=True) if b]
            raise ValueError(f"NaN in channels {names}, which are not declared masked")
    mask = None
    if fill_value is not None:
        mask = torch.from_numpy(~nan)
        x = np.where(nan, fill_value, x)
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype), mask


def _channel_arrays(ds: xr.Dataset, spec: StateSpec) -> list[np.ndarray]:
    missing = [v for v in spec.variables if v not in ds.data_vars]
    if missing:
        raise KeyError(f"variables {missing} not in dataset; it has {sorted(ds.data_vars)}")
    check_canonical(ds, spec.variables)
    if spec.grid is not None:
        want = tuple(int(n) for n in spec.grid.lower().split("x"))
        have = (ds.sizes["longitude"], ds.sizes["latitude"])
        if have != want:
            raise ValueError(f"grid is {have[0]}x{have[1]}, the spec says {spec.grid}")
    if spec.atmospheric:
        kind = level_kind(ds["level"])
        if kind != spec.vertical:
            raise ValueError(
                f"the dataset's levels are {kind} ({_LEVEL_UNITS[kind]}), the spec's "
                f"{spec.vertical} ({_LEVEL_UNITS[spec.vertical]})"
            )
        have = [level_key(p) for p in ds["level"].values]
        missing_levels = [p for p in spec.levels if p not in have]
        if missing_levels:
            unit = _LEVEL_UNITS[spec.vertical]
            raise KeyError(f"levels {missing_levels} {unit} not in dataset; it has {have}")
        index = [have.index(p) for p in spec.levels]
    arrays = []
    for name in spec.surface:
        var = ds[name]
        if "level" in var.dims or "time" not in var.dims:
            raise ValueError(f"surface variable {name} has dims {var.dims}")
        arrays.append(np.asarray(var.values))
    for name in spec.atmospheric:
        var = ds[name]
        if var.dims[-3:] != ("level", "latitude", "longitude") or "time" not in var.dims:
            raise ValueError(f"atmospheric variable {name} has dims {var.dims}")
        values = np.asarray(var.values)
        arrays.extend(values[..., i, :, :] for i in index)
    return arrays


def unstack(
    x: torch.Tensor | np.ndarray,
    spec: StateSpec,
    coords: dict[str, Any],
    attrs: dict[str, dict] | None = None,
) -> xr.Dataset:
    """The inverse of :func:`stack`: ``(time, channel, lat, lon)`` -> canonical dataset.

    ``coords`` needs ``time``, ``latitude`` and ``longitude``; ``level`` comes from the spec
    (int64 hPa, or float64 metres of depth with their CF attributes).
    A leading member dimension ``(member, time, channel, lat, lon)`` is kept as ``member``.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    lead = ("member", "time") if x.ndim == 5 else ("time",)
    if x.ndim not in (4, 5) or x.shape[-3] != spec.num_channels:
        raise ValueError(
            f"expected (time, {spec.num_channels}, lat, lon) or with a member dim, got {x.shape}"
        )
    data = {}
    for c, name in enumerate(spec.surface):
        data[name] = ((*lead, "latitude", "longitude"), x[..., c, :, :])
    offset = len(spec.surface)
    nl = len(spec.levels)
    for k, name in enumerate(spec.atmospheric):
        block = x[..., offset + k * nl : offset + (k + 1) * nl, :, :]
        data[name] = ((*lead, "level", "latitude", "longitude"), block)
    coords = {k: v for k, v in coords.items() if k in ("member", "time", "latitude", "longitude")}
    if spec.atmospheric and spec.vertical == "depth":
        coords["level"] = ("level", np.asarray(spec.levels, dtype=np.float64), DEPTH_ATTRS)
    elif spec.atmospheric:
        coords["level"] = np.asarray(spec.levels, dtype=np.int64)
    ds = xr.Dataset(data, coords=coords)
    for name, value in (attrs or {}).items():
        if name in ds.variables:
            ds[name].attrs = dict(value)
    return ds
