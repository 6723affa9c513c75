"""Climatology and persistence: the two reference forecasts every method must beat.

Climatology (the WeatherBench2 choice, by day of year and hour of day, smoothed): for each
hour of day ``h`` and day of year ``d``, the mean of every training state at hour ``h`` whose
day of year lies within ``+-window_days`` of ``d`` (circularly across the new year). Sums and
counts are smoothed separately, so the result is the exact mean over that set of states; days
never seen in training (e.g. day 366) borrow from their neighbours the same way. Only states in
the training period are used, so held-out years stay out.

Persistence: the state at initialisation repeated over the lead times.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["climatology_at", "compute_climatology", "persistence"]

DAYS = 366


def compute_climatology(
    truth: xr.Dataset,
    period: tuple[str, str],
    window_days: int = 15,
    variables: Sequence[str] | None = None,
) -> xr.Dataset:
    """Smoothed climatology ``(dayofyear, hour, [level,] latitude, longitude)`` (dayofyear
    1..366, the hours of day present in the training states) of ``truth`` over ``period``
    (inclusive dates). NaN cells (e.g. SST over land) are skipped; cells with no valid value
    stay NaN. The training states are read into memory one variable at a time."""
    if window_days < 0 or window_days > DAYS // 2:
        raise ValueError(f"window_days={window_days} must lie in [0, {DAYS // 2}]")
    names = list(variables) if variables is not None else list(truth.data_vars)
    missing = [v for v in names if v not in truth.data_vars]
    if missing:
        raise KeyError(f"variables {missing} not in the truth; it has {sorted(truth.data_vars)}")
    names = [v for v in names if "time" in truth[v].dims]
    sub = truth[names].sel(time=slice(*period))
    if sub.sizes.get("time", 0) == 0:
        times = truth["time"].values
        raise ValueError(
            f"training period {period} holds no truth time ({times[0]} to {times[-1]})"
        )
    times = pd.DatetimeIndex(sub["time"].values)
    hours = np.unique(times.hour)
    key = (times.day_of_year.values - 1) * hours.size + np.searchsorted(hours, times.hour)
    # Sums and counts per (day of year, hour) slot with one sorted segment reduction per
    # variable (xarray's groupby without flox loops over the 366 x 4 groups in Python).
    order = np.argsort(key, kind="stable")
    slots, starts = np.unique(key[order], return_index=True)
    sums, counts = {}, {}
    for name in names:
        var = sub[name].transpose("time", ...)
        values = np.asarray(var.values, dtype=np.float64)[order]
        valid = ~np.isnan(values)
        shape = (DAYS * hours.size, *values.shape[1:])
        s, c = np.zeros(shape), np.zeros(shape)
        s[slots] = np.add.reduceat(np.where(valid, values, 0.0), starts, axis=0)
        c[slots] = np.add.reduceat(valid.astype(np.float64), starts, axis=0)
        dims = ("dayofyear", "hour", *var.dims[1:])
        split = (DAYS, hours.size, *values.shape[1:])
        sums[name] = (dims, s.reshape(split))
        counts[name] = (dims, c.reshape(split))
    coords = {"dayofyear": np.arange(1, DAYS + 1), "hour": hours}
    coords.update({d: sub[d].values for d in sub.dims if d != "time"})
    sums = _circular_sum(xr.Dataset(sums, coords=coords), window_days)
    counts = _circular_sum(xr.Dataset(counts, coords=coords), window_days)
    clim = (sums / counts.where(counts > 0)).astype(np.float32)
    for name in names:
        clim[name].attrs = dict(truth[name].attrs)
    order = ("dayofyear", "hour", "level", "latitude", "longitude")
    clim = clim.transpose(*[d for d in order if d in clim.dims])
    clim.attrs = {"period": f"{times[0]} to {times[-1]}", "window_days": window_days}
    return clim


def _circular_sum(ds: xr.Dataset, half: int) -> xr.Dataset:
    if half == 0:
        return ds
    padded = xr.concat(
        [ds.isel(dayofyear=slice(-half, None)), ds, ds.isel(dayofyear=slice(0, half))],
        dim="dayofyear",
    )
    rolled = padded.rolling(dayofyear=2 * half + 1, center=True).sum()
    out = rolled.isel(dayofyear=slice(half, half + DAYS))
    return out.assign_coords(dayofyear=ds["dayofyear"])


def climatology_at(
    clim: xr.Dataset, times: Sequence | np.ndarray, lead_times: Sequence | None = None
) -> xr.Dataset:
    """The climatology at ``times`` (dims ``(time, ...)``), or for forecasts at the valid times
    ``time + lead_time`` (dims ``(time, lead_time, ...)``). Hours of day absent from the
    climatology are an error."""
    times = pd.DatetimeIndex(np.atleast_1d(times))
    if lead_times is None:
        valid = times.values[:, None]
        leads = None
    else:
        leads = pd.to_timedelta(list(lead_times)).values
        valid = times.values[:, None] + leads[None, :]
    flat = pd.DatetimeIndex(valid.ravel())
    have = clim["hour"].values
    bad = sorted(set(flat.hour) - set(int(h) for h in have))
    if bad:
        raise ValueError(f"hours {bad} are not in the climatology (it has {list(have)})")
    shape = ("time",) if leads is None else ("time", "lead_time")
    doy = xr.DataArray(flat.day_of_year.values.reshape(valid.shape[: len(shape)]), dims=shape)
    hour = xr.DataArray(flat.hour.values.reshape(valid.shape[: len(shape)]), dims=shape)
    out = clim.sel(dayofyear=doy, hour=hour).drop_vars(["dayofyear", "hour"])
    out = out.assign_coords(time=times.values)
    if leads is not None:
        out = out.assign_coords(lead_time=leads)
    return out


def persistence(
    truth: xr.Dataset,
    times: Sequence | np.ndarray,
    lead_times: Sequence,
    variables: Sequence[str] | None = None,
    source: str = "truth",
) -> xr.Dataset:
    """The state at each initialisation ``time`` repeated over ``lead_times``: dims ``(time,
    lead_time, ...)``. ``truth`` may also be an analysis (``source`` names it in errors).
    Initialisation times missing from it are an error."""
    times = pd.DatetimeIndex(np.atleast_1d(times))
    names = list(variables) if variables is not None else list(truth.data_vars)
    have = pd.DatetimeIndex(truth["time"].values)
    missing = times.difference(have)
    if len(missing):
        raise ValueError(
            f"{len(missing)} initialisation time(s) not in the {source} (first {missing[0]}); "
            f"it spans {have[0]} to {have[-1]}"
        )
    leads = pd.to_timedelta(list(lead_times)).values
    if len(leads) == 0:
        raise ValueError("persistence needs at least one lead time")
    state = truth[[v for v in names if "time" in truth[v].dims]].sel(time=times.values)
    out = state.expand_dims(lead_time=leads, axis=1)
    return out
