"""WeatherBench2 scores of ensemble archives against a gridded truth (xarray in, xarray out).

Definitions (WeatherBench2, Rasp et al. 2024; the spread/skill correction as in Appa):

- latitude weights ``w_j`` = cell areas ``sin(phi_{j+1/2}) - sin(phi_{j-1/2})`` normalised to
  mean 1 (:func:`appa.data.grids.area_weights`); the spatial mean of a field ``f`` at one time
  is ``<f> = sum_ij w_j f_ij / sum_ij w_j`` over the valid cells;
- ``rmse`` = ``sqrt(mean_t <(xbar - y)^2>)`` with ``xbar`` the ensemble mean (the skill);
- ``spread`` = ``sqrt(mean_t <s^2>)`` with ``s^2`` the unbiased (``ddof=1``) ensemble variance;
- ``spread_skill`` = ``sqrt((M + 1) / M) * spread / rmse`` (1 for a calibrated ensemble of
  ``M`` members, since ``E (xbar - y)^2 = (1 + 1/M) sigma^2`` when truth and members are
  exchangeable);
- ``crps`` = ``mean_t < (1/M) sum_i |x_i - y| - 1/(2 M (M-1)) sum_ij |x_i - x_j| >``, the fair
  (unbiased) ensemble estimator;
- ``bias`` = ``mean_t <xbar - y>``; ``mae`` = ``mean_t <|xbar - y|>``.

With one member (deterministic products) the spread is 0, ``spread_skill`` is undefined (NaN)
and ``crps`` is the absolute error of that member (the CRPS of a point mass).

Scores are per variable, level and lead time. Forecast archives (with ``lead_time``) are
compared at valid time ``time + lead_time``. Cells where the truth is NaN (e.g.
``sea_surface_temperature`` over land) or outside an optional mask get weight 0, for every
metric alike; a prediction that is NaN where the truth is valid gives NaN (and
:func:`check_finite` names it), never a silently smaller average.

Everything is expressed with xarray operations, so dask-backed inputs stay lazy until the
(small) result is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from appa.data.grids import area_weights

__all__ = [
    "METRICS",
    "EvaluationError",
    "align_truth",
    "check_finite",
    "crps_fair",
    "evaluate",
    "latitude_weights",
    "open_truth",
    "spatial_mean",
    "time_mean",
]

METRICS = ("rmse", "spread", "spread_skill", "crps", "bias", "mae")
SPATIAL = ("latitude", "longitude")
CHUNK_BYTES = 64 * 2**20
IN_MEMORY_BYTES = 512 * 2**20


class EvaluationError(ValueError):
    """A prediction and a truth that cannot be compared; the message names the culprit."""


def open_truth(truth: str | Path | xr.Dataset) -> tuple[str, xr.Dataset]:
    """The truth as a dataset (a store :func:`appa.data.open_era5` reads, or a dataset as
    given) and how to name it in messages and attributes (its path, or ``"dataset"``)."""
    if isinstance(truth, xr.Dataset):
        return "dataset", truth
    from appa.data.sources import open_era5

    return str(truth), open_era5(truth)


def latitude_weights(latitude: xr.DataArray | Sequence[float] | np.ndarray) -> xr.DataArray:
    """Cell-area weights ``(latitude,)`` normalised to mean 1 (ascending latitudes, degrees)."""
    lat = latitude.values if isinstance(latitude, xr.DataArray) else np.asarray(latitude)
    return xr.DataArray(area_weights(lat), dims=("latitude",), coords={"latitude": lat})


def spatial_mean(field: xr.DataArray, weights: xr.DataArray) -> xr.DataArray:
    """Weighted mean over ``(latitude, longitude)``: ``sum w f / sum w``.

    ``weights`` broadcasts against ``field`` (e.g. ``(latitude,)`` area weights times a
    validity mask); cells with weight 0 are ignored even where ``field`` is NaN there.
    """
    w, field = xr.broadcast(weights, field)
    num = (field.where(w > 0, 0.0) * w).sum(SPATIAL, skipna=False)
    return num / w.sum(SPATIAL)


def crps_fair(ensemble: xr.DataArray, truth: xr.DataArray, dim: str = "member") -> xr.DataArray:
    """Pointwise fair CRPS ``(1/M) sum_i |x_i - y| - 1/(2 M (M-1)) sum_ij |x_i - x_j|``.

    The pair sum uses the sorted members: ``sum_ij |x_i - x_j| = 2 sum_k (2k - M - 1) x_(k)``
    (``k = 1..M``), O(M log M). With ``M = 1`` it is ``|x - y|``.
    """
    m = ensemble.sizes[dim]
    skill = abs(ensemble - truth).mean(dim, skipna=False)
    if m == 1:
        return skill
    sorted_members = xr.apply_ufunc(
        np.sort,
        ensemble.chunk({dim: -1}) if ensemble.chunks else ensemble,
        input_core_dims=[[dim]],
        output_core_dims=[[dim]],
        kwargs={"axis": -1},
        dask="parallelized",
        output_dtypes=[ensemble.dtype],
    )
    k = xr.DataArray(2.0 * np.arange(1, m + 1) - m - 1, dims=(dim,))
    pair_sum = 2.0 * (sorted_members * k).sum(dim, skipna=False)
    return skill - pair_sum / (2.0 * m * (m - 1))


def _valid_times(prediction: xr.Dataset) -> pd.DatetimeIndex:
    times = pd.DatetimeIndex(prediction["time"].values)
    if "lead_time" not in prediction.dims:
        return times
    leads = pd.TimedeltaIndex(prediction["lead_time"].values)
    return pd.DatetimeIndex(np.unique((times.values[:, None] + leads.values[None, :]).ravel()))


def align_truth(
    prediction: xr.Dataset, truth: xr.Dataset, variables: Sequence[str] | None = None
) -> xr.Dataset:
    """The truth on the prediction's times (valid times ``time + lead_time`` for forecasts),
    grid and levels, with the prediction's dims minus ``member``.

    Raises :class:`EvaluationError` when a variable, level or time is missing from the truth,
    when the grids differ, or when the units disagree.
    """
    names = list(variables) if variables is not None else _scored_variables(prediction)
    missing = [v for v in names if v not in truth.data_vars]
    if missing:
        raise EvaluationError(
            f"variables {missing} are not in the truth; it has {sorted(truth.data_vars)}"
        )
    absent = [v for v in names if v not in prediction.data_vars]
    if absent:
        raise EvaluationError(f"variables {absent} are not in the prediction")
    for axis in SPATIAL:
        a, b = prediction[axis].values, truth[axis].values
        if a.shape != b.shape or not np.allclose(a, b, atol=1e-6):
            raise EvaluationError(
                f"grids differ in {axis}: prediction has {a.size} values "
                f"[{a.min():g} .. {a.max():g}], truth has {b.size} [{b.min():g} .. {b.max():g}]"
            )
    for name in names:
        pu, tu = prediction[name].attrs.get("units"), truth[name].attrs.get("units")
        if pu and tu and pu != tu:
            raise EvaluationError(f"{name}: prediction in {pu!r}, truth in {tu!r}")
    truth = truth[names].assign_coords(latitude=prediction.latitude, longitude=prediction.longitude)
    if any("level" in prediction[v].dims for v in names):
        from appa.data.layout import level_key, level_kind

        have = [level_key(p) for p in truth["level"].values]
        want = [level_key(p) for p in prediction["level"].values]
        lacking = [p for p in want if p not in have]
        if lacking:
            unit = "m" if level_kind(truth["level"]) == "depth" else "hPa"
            raise EvaluationError(f"levels {lacking} {unit} are not in the truth; it has {have}")
        truth = truth.isel(level=[have.index(p) for p in want])
    valid = _valid_times(prediction)
    have_t = pd.DatetimeIndex(truth["time"].values)
    outside = valid.difference(have_t)
    if len(outside):
        span = f"{have_t[0]} to {have_t[-1]}" if len(have_t) else "no times"
        raise EvaluationError(
            f"{len(outside)} valid time(s) of the prediction are not in the truth "
            f"(first {outside[0]}); the truth spans {span}"
        )
    if "lead_time" not in prediction.dims:
        return truth.sel(time=prediction["time"].values)
    index = xr.DataArray(
        prediction["time"].values[:, None] + prediction["lead_time"].values[None, :],
        dims=("init", "lead_time"),
    )
    out = truth.sel(time=index).drop_vars("time").rename({"init": "time"})
    return out.assign_coords(time=prediction["time"].values, lead_time=prediction["lead_time"])


def _scored_variables(prediction: xr.Dataset) -> list[str]:
    names = [v for v in prediction.data_vars if {"member", "time"} <= set(prediction[v].dims)]
    if not names:
        raise EvaluationError(
            f"the prediction has no variable with dims (member, time, ...); it has "
            f"{ {v: prediction[v].dims for v in prediction.data_vars} }"
        )
    return names


def _per_time(
    pred: xr.DataArray, truth: xr.DataArray, weights: xr.DataArray
) -> dict[str, xr.DataArray]:
    """Spatial means at each time (and lead time, level) of the quantities the metrics need."""
    m = pred.sizes["member"]
    pred = pred.astype(np.float64)
    truth = truth.astype(np.float64)
    w = weights * truth.notnull()
    mean = pred.mean("member", skipna=False)
    err = mean - truth
    var = pred.var("member", ddof=1, skipna=False) if m > 1 else xr.zeros_like(mean)
    return {
        "mse": spatial_mean(err**2, w),
        "var": spatial_mean(var, w),
        "crps": spatial_mean(crps_fair(pred, truth), w),
        "bias": spatial_mean(err, w),
        "mae": spatial_mean(abs(err), w),
    }


def _finish(parts: dict[str, xr.DataArray], m: int, reduce_time: bool) -> xr.DataArray:
    def tmean(a: xr.DataArray) -> xr.DataArray:
        return a.mean("time", skipna=False) if reduce_time else a

    rmse = np.sqrt(tmean(parts["mse"]))
    spread = np.sqrt(tmean(parts["var"]))
    ratio = np.sqrt((m + 1) / m) * spread / rmse if m > 1 else xr.full_like(rmse, np.nan)
    values = [rmse, spread, ratio, tmean(parts["crps"]), tmean(parts["bias"]), tmean(parts["mae"])]
    return xr.concat(values, dim=xr.DataArray(list(METRICS), dims="metric", name="metric"))


def evaluate(
    prediction: xr.Dataset,
    truth: xr.Dataset,
    *,
    variables: Sequence[str] | None = None,
    mask: xr.DataArray | None = None,
    by_time: bool = False,
    compute: bool = True,
) -> xr.Dataset:
    """Scores of an archive-layout ``prediction`` against a canonical ``truth``.

    Arguments:
        prediction: ``(member, time, [lead_time,] [level,] latitude, longitude)`` variables.
        truth: Canonical dataset (``(time, [level,] latitude, longitude)``) holding every valid
            time of the prediction on the same grid.
        variables: Which variables to score (default: every ``(member, time, ...)`` variable).
        mask: Optional weights or booleans over ``(latitude, longitude)`` (e.g. a region);
            multiplies the area weights.
        by_time: Keep the ``time`` dimension (per-time scores, e.g. for curves against time)
            instead of averaging over it.
        compute: Load the (small) result; ``False`` keeps it lazy.

    Returns a dataset with one data variable per scored variable, dims ``(metric,
    [time,] [lead_time,] [level])`` and the ``metric`` coordinate :data:`METRICS`; attributes
    give the ensemble size ``ensemble_size`` and the number of times ``num_times``.
    """
    names = list(variables) if variables is not None else _scored_variables(prediction)
    target = align_truth(prediction, truth, names)
    lazy = any(prediction[v].chunks is not None for v in names)
    if lazy and compute and sum(prediction[v].nbytes for v in names) <= IN_MEMORY_BYTES:
        # Small archives (the toy Earth) are scored in memory: the dask graph of a few dozen
        # element-wise steps costs more to build than the numbers do to compute.
        prediction, target = prediction[names].load(), target.load()
    elif lazy:
        # Archives are stored one member and one time per chunk (the unit of work); scoring
        # on such small blocks spends its time building the graph. Whole members, lead times,
        # levels and grids per block, times grouped up to ~64 MiB.
        prediction = prediction[names]
        per_time = max(prediction[v].nbytes // prediction.sizes["time"] for v in names)
        step = int(max(1, min(prediction.sizes["time"], CHUNK_BYTES // max(per_time, 1))))
        chunks = {d: -1 for d in prediction.dims}
        prediction = prediction.chunk({**chunks, "time": step})
        target = target.chunk({**{d: -1 for d in target.dims}, "time": step})
    m = prediction.sizes["member"]
    weights = latitude_weights(prediction["latitude"])
    if mask is not None:
        bad = set(mask.dims) - set(SPATIAL)
        if bad:
            raise EvaluationError(f"mask dims {mask.dims}: only latitude/longitude are allowed")
        weights = weights * mask.astype(np.float64)
    out = {}
    for name in names:
        parts = _per_time(prediction[name], target[name], weights)
        out[name] = _finish(parts, m, reduce_time=not by_time)
        out[name].attrs = {
            k: prediction[name].attrs[k]
            for k in ("units", "long_name")
            if k in prediction[name].attrs
        }
    table = xr.Dataset(out)
    table.attrs = {"ensemble_size": m, "num_times": prediction.sizes["time"]}
    table["metric"].attrs["long_name"] = (
        "rmse: RMSE of the ensemble mean; spread: sqrt of the mean ensemble variance; "
        "spread_skill: sqrt((M+1)/M) spread / rmse; crps: fair CRPS; bias; mae: of the mean"
    )
    return table.compute() if compute else table


def check_finite(table: xr.Dataset) -> None:
    """Raises :class:`EvaluationError` naming the variables whose RMSE or CRPS is NaN (a
    prediction that is NaN where the truth is valid)."""
    bad = [
        name
        for name in table.data_vars
        if bool(table[name].sel(metric=["rmse", "crps"]).isnull().any())
    ]
    if bad:
        raise EvaluationError(
            f"scores of {bad} are NaN: the prediction has NaN (or inf) where the truth is "
            "valid (an unfinished archive?)"
        )


def time_mean(table: xr.Dataset) -> xr.Dataset:
    """The time-mean table from a ``by_time`` one, exactly as :func:`evaluate` computes it:
    ``rmse`` and ``spread`` are root-mean-squares over time, ``spread_skill`` is recomputed
    from them, the other metrics are plain means."""
    if "time" not in table.dims:
        return table
    if "ensemble_size" in table.coords:
        m = table["ensemble_size"].astype(np.float64)  # per system
    else:
        m = xr.DataArray(float(table.attrs["ensemble_size"]))
    out = {}
    for name in table.data_vars:
        var = table[name]
        rms = np.sqrt((var.sel(metric=["rmse", "spread"]) ** 2).mean("time", skipna=False))
        ratio = np.sqrt((m + 1) / m) * rms.sel(metric="spread") / rms.sel(metric="rmse")
        ratio = ratio.where(m > 1)
        plain = var.sel(metric=["crps", "bias", "mae"]).mean("time", skipna=False)
        ratio = ratio.expand_dims(metric=["spread_skill"])
        merged = xr.concat([rms, ratio, plain], dim="metric").sel(metric=list(METRICS))
        merged.attrs = var.attrs
        out[name] = merged
    result = xr.Dataset(out)
    result.attrs = {k: v for k, v in table.attrs.items() if k != "num_times"}
    return result
