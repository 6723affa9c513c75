"""From an observation table to a differentiable, linear torch operator on gridded states.

Each observation is a weighted sum of grid values of one channel at one time: bilinear
interpolation (periodic in longitude; latitudes beyond the outermost cell centres take the
nearest row) for point observations, or the area-weighted mean over a latitude-longitude box
for observations with a ``footprint``; with ``vertical="log_pressure"``, an observation between
two of the state's pressure levels reads both, linearly in ``log p``, and with
``vertical="depth"`` an observation between two of the state's depth levels (a profiling
float's sample) reads both, linearly in depth. The weights sum to one, so on standardised states
the operator stays linear: observations and variances are standardised instead (by the
channel's statistics, or for an observation between two levels by the interpolated mean and
spread, the weights rescaled to match).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import Tensor

from appa.data.layout import level_key
from appa.data.spec import StateSpec
from appa.data.stats import Statistics
from appa.observations.schema import ObservationError, validate_table
from appa.observations.screening import assign_times

__all__ = [
    "ObservationOperator",
    "VerticalRule",
    "interpolation_weights",
    "observation_channels",
    "vertical_weights",
]


def interpolation_weights(
    latitude: np.ndarray, longitude: np.ndarray, grid_lat: np.ndarray, grid_lon: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear weights of points on a grid regular in longitude: a global grid (periodic in
    longitude) or a regional one (a regular run of longitudes short of 360 degrees, e.g. a sea).

    Returns flat cell indices ``(n, 4)`` into ``(lat, lon)`` and weights ``(n, 4)`` summing
    to 1. ``grid_lat`` ascending; latitudes beyond its ends use the nearest row. On a regional
    grid, longitudes within half a cell beyond its ends use the nearest column; a point
    further outside is an :class:`ObservationError`.
    """
    nlat, nlon = grid_lat.size, grid_lon.size
    dlon = 360.0 / nlon
    if np.allclose(np.diff(grid_lon), dlon) and 0 <= grid_lon[0] < dlon:
        lon = np.mod(longitude - grid_lon[0], 360.0)
        x = lon / dlon
        i0 = np.floor(x).astype(np.int64) % nlon
        i1 = (i0 + 1) % nlon
        fx = x - np.floor(x)
    else:
        step = (grid_lon[-1] - grid_lon[0]) / max(nlon - 1, 1)
        if nlon < 2 or not np.allclose(np.diff(grid_lon), step) or step <= 0:
            raise ObservationError(
                "the grid's longitudes must be regular: spanning [0, 360) or a regional run"
            )
        # regional: east of the grid's first column, measured within (-180, 180]
        east = np.mod(longitude - grid_lon[0] + 180.0, 360.0) - 180.0
        x = east / step
        outside = (x < -0.5) | (x > nlon - 0.5)
        if outside.any():
            first = int(np.flatnonzero(outside)[0])
            raise ObservationError(
                f"{int(outside.sum())} point(s) outside the grid's longitudes "
                f"[{grid_lon[0]:g}, {grid_lon[-1]:g}]; first at longitude {longitude[first]:g}"
            )
        x = np.clip(x, 0.0, nlon - 1.0)
        i0 = np.minimum(np.floor(x).astype(np.int64), nlon - 2)
        i1 = i0 + 1
        fx = x - i0
    lat = np.clip(latitude, grid_lat[0], grid_lat[-1])
    j1 = np.clip(np.searchsorted(grid_lat, lat, side="right"), 1, nlat - 1)
    j0 = j1 - 1
    fy = (lat - grid_lat[j0]) / (grid_lat[j1] - grid_lat[j0])
    index = np.stack([j0 * nlon + i0, j0 * nlon + i1, j1 * nlon + i0, j1 * nlon + i1], axis=1)
    weights = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], axis=1)
    return index, weights


VerticalRule = Literal["exact", "log_pressure", "depth"]
_VERTICAL_OF_RULE = {"log_pressure": "pressure", "depth": "depth"}
_UNITS = {"pressure": "hPa", "depth": "m"}


def vertical_weights(
    table: xr.Dataset, spec: StateSpec, vertical: VerticalRule = "exact"
) -> tuple[np.ndarray, np.ndarray]:
    """The state channels each observation reads and their weights, ``(m, 2)`` each.

    Under ``exact`` an observation's variable and level must be a channel (weights ``(1, 0)``,
    both columns that channel). Under ``log_pressure`` an observation of an atmospheric
    variable at a pressure between two of the state's levels reads both, linearly in
    ``log p`` (weights ``(1 - f, f)``); under ``depth`` (a state with ``vertical: depth``) an
    observation at a depth between two of the state's levels reads both, linearly in depth. A
    level outside the state's range is an error (a float's sample above the first cell centre
    or below the last is not extrapolated).

    Raises:
        ObservationError: naming the variable (and level) the state does not hold, and how
            many observations ask for it.
    """
    if vertical not in ("exact", "log_pressure", "depth"):
        raise ObservationError(
            f"vertical must be 'exact', 'log_pressure' or 'depth', got {vertical!r}"
        )
    if vertical in _VERTICAL_OF_RULE and spec.atmospheric:
        if _VERTICAL_OF_RULE[vertical] != spec.vertical:
            raise ObservationError(
                f"vertical {vertical!r} interpolates between {_VERTICAL_OF_RULE[vertical]} "
                f"levels; the state's levels are {spec.vertical} (use "
                f"{'depth' if spec.vertical == 'depth' else 'log_pressure'} or exact)"
            )
    unit = _UNITS[spec.vertical]
    channels = {(v, p): c for c, (v, p) in enumerate(spec.channels)}
    levels_sorted = np.array(sorted(spec.levels), dtype=np.float64)
    variables = table["variable"].values.astype(str)
    levels = table["level"].values
    m = variables.size
    channel = np.empty((m, 2), dtype=np.int64)
    weight = np.zeros((m, 2), dtype=np.float64)
    weight[:, 0] = 1.0
    pairs = {
        (str(v), None if np.isnan(p) else float(p)) for v, p in zip(variables, levels, strict=True)
    }
    # in a fixed order, so that the first problem named is the same in every run
    for var, lev in sorted(pairs, key=lambda pair: (pair[0], -1.0 if pair[1] is None else pair[1])):
        sel = (variables == var) & (np.isnan(levels) if lev is None else levels == lev)
        if var not in spec.variables:
            raise ObservationError(
                f"{int(sel.sum())} observation(s) of unknown variable {var!r}; the state has "
                f"{spec.variables}"
            )
        if lev is None and var in spec.atmospheric:
            raise ObservationError(f"observations of {var} need a level (one of {spec.levels})")
        if lev is not None and var in spec.surface:
            raise ObservationError(f"{var} is a surface variable; its level must be NaN")
        c = channels.get((var, None if lev is None else level_key(lev)))
        if c is not None:
            channel[sel] = c
            continue
        inside = levels_sorted.size > 1 and levels_sorted[0] < lev < levels_sorted[-1]
        if vertical == "exact" or not inside:
            how = "" if vertical == "exact" else " (outside the range they interpolate)"
            raise ObservationError(
                f"{int(sel.sum())} observation(s) of {var} at {lev} {unit}; the state has levels "
                f"{spec.levels}{how}"
            )
        upper = int(np.searchsorted(levels_sorted, lev))
        p0, p1 = levels_sorted[upper - 1], levels_sorted[upper]
        if vertical == "depth":
            f = (lev - p0) / (p1 - p0)
        else:
            f = (np.log(lev) - np.log(p0)) / (np.log(p1) - np.log(p0))
        channel[sel, 0] = channels[(var, level_key(p0))]
        channel[sel, 1] = channels[(var, level_key(p1))]
        weight[sel] = (1.0 - f, f)
    return channel, weight


def observation_channels(
    table: xr.Dataset, spec: StateSpec, vertical: VerticalRule = "exact"
) -> np.ndarray:
    """The state channel of each observation ``(m,)``, from its ``variable`` and ``level``:
    under ``log_pressure`` or ``depth`` the nearer (in ``log p``, in depth) of the two levels it
    is interpolated from (for what is set per channel: a gross check's spread, a
    representation error).

    Raises:
        ObservationError: as :func:`vertical_weights`.
    """
    channel, weight = vertical_weights(table, spec, vertical)
    return np.where(weight[:, 1] > weight[:, 0], channel[:, 1], channel[:, 0])


def _box_weights(lat: float, lon: float, size: float, grid_lat, grid_lon, area):
    """Cells whose centres lie in the box of side ``size`` degrees, area-weighted."""
    dlat = np.abs(grid_lat - lat) <= size / 2 + 1e-9
    dlon = np.abs((grid_lon - lon + 180.0) % 360.0 - 180.0) <= size / 2 + 1e-9
    jj, ii = np.nonzero(dlat[:, None] & dlon[None, :])
    if jj.size == 0:
        return None
    w = area[jj]
    return jj * grid_lon.size + ii, w / w.sum()


class ObservationOperator:
    """``A``: states ``(B, T, C, lat, lon)`` (or ``(B, C, lat, lon)`` when ``T = 1`` and
    ``time_axis=False``) -> observations ``(B, m)``, with ``y`` and noise variances.

    Arguments:
        table: An observation table (:mod:`appa.observations.schema`).
        spec: The state spec: channel of each observation from ``variable`` and ``level``.
        latitude, longitude: The state's grid (ascending latitudes, longitudes from 0).
        times: The state's times (sorted); each observation must belong to one of them
            within ``time_tolerance`` (:func:`appa.observations.screening.assign_times`).
        stats: When given, the operator acts on standardised states: ``y`` and the variances
            are standardised per channel (exact, since the weights sum to one).
        time_axis: Whether states carry a time axis (``(B, T, C, H, W)``).
        vertical: ``exact`` (each observation on one of the state's levels),
            ``log_pressure`` (between two pressure levels, linearly in ``log p``) or ``depth``
            (between two depth levels, linearly in depth): :func:`vertical_weights`.
    """

    def __init__(
        self,
        table: xr.Dataset,
        spec: StateSpec,
        latitude: Sequence[float] | np.ndarray,
        longitude: Sequence[float] | np.ndarray,
        times: Sequence | np.ndarray,
        stats: Statistics | None = None,
        time_tolerance: str | pd.Timedelta = "0s",
        time_axis: bool = True,
        dtype: torch.dtype = torch.float32,
        vertical: VerticalRule = "exact",
    ) -> None:
        validate_table(table)
        grid_lat = np.asarray(latitude, dtype=np.float64)
        grid_lon = np.asarray(longitude, dtype=np.float64)
        if grid_lat.ndim != 1 or not np.all(np.diff(grid_lat) > 0):
            raise ObservationError("grid latitudes must be 1-D and ascending")
        times = pd.DatetimeIndex(np.atleast_1d(times))
        if not time_axis and len(times) != 1:
            raise ObservationError("time_axis=False needs exactly one state time")
        self.spec = spec
        self.shape = (len(times), spec.num_channels, grid_lat.size, grid_lon.size)
        self.time_axis = time_axis
        m = table.sizes["obs"]

        vchannel, vweight = vertical_weights(table, spec, vertical)
        channel = np.where(vweight[:, 1] > vweight[:, 0], vchannel[:, 1], vchannel[:, 0])

        # Time index of each observation: the rule every reader shares (appa.observations.
        # screening: nearest state, ties to the later one)
        obs_t = pd.DatetimeIndex(table["time"].values)
        tol = pd.Timedelta(time_tolerance)
        t_index = assign_times(obs_t, times, tol)
        outside = t_index < 0
        if outside.any():
            first = obs_t[np.flatnonzero(outside)[0]]
            raise ObservationError(
                f"{int(outside.sum())} observation(s) outside the state's times "
                f"({times[0]} to {times[-1]}, tolerance {tol}); first at {first}"
            )

        # Spatial weights: bilinear for points, box means for footprints.
        lat = table["latitude"].values
        lon = table["longitude"].values
        cell, weight = interpolation_weights(lat, lon, grid_lat, grid_lon)
        rows = np.repeat(np.arange(m), 4)
        cells = cell.reshape(-1)
        weights = weight.reshape(-1)
        if "footprint" in table.variables:
            fp = table["footprint"].values
            boxed = np.flatnonzero(fp > 0)
            if boxed.size:
                area = np.cos(np.radians(grid_lat))
                keep = ~np.isin(rows, boxed)
                rows, cells, weights = [rows[keep]], [cells[keep]], [weights[keep]]
                for k in boxed:
                    got = _box_weights(lat[k], lon[k], fp[k], grid_lat, grid_lon, area)
                    if got is None:
                        raise ObservationError(
                            f"observation {k}: footprint {fp[k]} deg holds no grid cell"
                        )
                    rows.append(np.full(got[0].size, k))
                    cells.append(got[0])
                    weights.append(got[1])
                rows, cells, weights = (np.concatenate(a) for a in (rows, cells, weights))
        # Vertical weights: each spatial entry once per level it reads (a second level only
        # for observations between two of the state's levels)
        entry_channel = vchannel[rows, 0]
        between = vweight[rows, 1] > 0
        if between.any():
            upper = np.flatnonzero(between)
            weights = np.concatenate(
                [weights * vweight[rows, 0], weights[upper] * vweight[rows[upper], 1]]
            )
            entry_channel = np.concatenate([entry_channel, vchannel[rows[upper], 1]])
            rows, cells = np.concatenate([rows, rows[upper]]), np.concatenate([cells, cells[upper]])
        hw = grid_lat.size * grid_lon.size
        flat = (t_index[rows] * spec.num_channels + entry_channel) * hw + cells
        self.num_obs = m
        self.channel = channel
        self.time_index = t_index

        y = table["value"].values.astype(np.float64)
        var = table["error_std"].values.astype(np.float64) ** 2
        if stats is not None:
            stats = stats.for_spec(spec)
            mixed = vweight[:, 1] > 0
            one = ~mixed
            y[one] = (y[one] - stats.mean[channel[one]]) / stats.std[channel[one]]
            var[one] = var[one] / stats.std[channel[one]] ** 2
            if mixed.any():
                # A(x) = sum_e w_e (mu_e + s_e z_e): standardised by the interpolated spread
                # s = sum_e w_e s_e, so that y and the weights stay O(1) and the weights of
                # an observation still sum to one
                scale_e = stats.std[entry_channel]
                spread = np.bincount(rows, weights * scale_e, minlength=m)
                offset = np.bincount(rows, weights * stats.mean[entry_channel], minlength=m)
                y[mixed] = (y[mixed] - offset[mixed]) / spread[mixed]
                var[mixed] = var[mixed] / spread[mixed] ** 2
                rescale = mixed[rows]
                weights = np.where(rescale, weights * scale_e / spread[rows], weights)
        self._rows = torch.as_tensor(rows, dtype=torch.long)
        self._index = torch.as_tensor(flat, dtype=torch.long)
        self._weights = torch.as_tensor(weights, dtype=torch.float64)
        self.y = torch.as_tensor(y, dtype=dtype)
        self.noise_variance = torch.as_tensor(var, dtype=dtype)

    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """The operator as sparse entries ``(row, flat_index, weight)``: observation ``row``
        gets ``weight`` times the value at ``flat_index`` of the flattened state
        ``(T, C, lat, lon)``, summed; each a 1-D tensor (long, long, float64)."""
        return self._rows.clone(), self._index.clone(), self._weights.clone()

    def __call__(self, x: Tensor) -> Tensor:
        """``A(x)``: ``(B, *state)`` -> ``(B, m)``; linear and differentiable."""
        event = self.shape if self.time_axis else self.shape[1:]
        if tuple(x.shape[1:]) != tuple(event):
            raise ObservationError(f"state shape {tuple(x.shape[1:])}, expected {tuple(event)}")
        flat = x.reshape(x.shape[0], -1)
        values = flat[:, self._index.to(x.device)] * self._weights.to(x)
        out = torch.zeros(x.shape[0], self.num_obs, dtype=x.dtype, device=x.device)
        return out.index_add(1, self._rows.to(x.device), values)

    def observation(self):
        """The :class:`appa.diffusion.GaussianObservation` ``y = A(x) + e``."""
        from appa.diffusion import GaussianObservation

        return GaussianObservation(
            y=self.y, operator=self, noise_variance=self.noise_variance, linear=True
        )
