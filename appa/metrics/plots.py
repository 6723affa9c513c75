"""Figures of archives and scores (matplotlib, Agg): maps of truth, ensemble mean, error,
spread and observations for one time and variable; metric curves against lead time or time
for several methods."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["plot_maps", "plot_metric_curves"]


def _figure(nrows: int, ncols: int, size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(nrows, ncols, figsize=size, squeeze=False, layout="constrained")


def _save(plt, fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_maps(
    prediction: xr.Dataset,
    truth: xr.Dataset,
    variable: str,
    time: str | np.datetime64 | pd.Timestamp,
    out: str | Path,
    *,
    level: int | None = None,
    lead_time: str | pd.Timedelta | None = None,
    observations: xr.Dataset | None = None,
    title: str | None = None,
) -> Path:
    """Five maps of ``variable`` at ``time`` (valid time; for forecasts the initialisation is
    ``time - lead_time``): truth, ensemble mean, mean minus truth, ensemble spread (standard
    deviation, ``ddof=1``) and the observations of that variable and level within the time
    step (scatter, truth's colour scale). Returns ``out`` (PNG)."""
    t = pd.Timestamp(time)
    pred = prediction[variable]
    if "lead_time" in pred.dims:
        if lead_time is None:
            raise ValueError("a forecast archive needs lead_time for its maps")
        lead = pd.Timedelta(lead_time)
        pred = pred.sel(time=(t - lead).to_datetime64(), lead_time=lead.to_timedelta64())
    else:
        pred = pred.sel(time=t.to_datetime64())
    true = truth[variable].sel(time=t.to_datetime64())
    if "level" in pred.dims:
        if level is None:
            raise ValueError(f"{variable} has levels {pred['level'].values.tolist()}: give level")
        pred, true = pred.sel(level=level), true.sel(level=level)
    pred, true = pred.load(), true.load()
    mean = pred.mean("member")
    spread = pred.std("member", ddof=1) if pred.sizes["member"] > 1 else xr.zeros_like(mean)
    lat, lon = true["latitude"].values, true["longitude"].values
    vmin, vmax = np.nanpercentile(true.values, [1, 99])
    err = (mean - true).values
    emax = float(np.nanmax(np.abs(err))) or 1.0
    units = truth[variable].attrs.get("units", "")
    plt, fig, axes = _figure(2, 3, (15, 6.2))
    panels = [
        ("truth", true.values, "viridis", (vmin, vmax)),
        (f"ensemble mean ({pred.sizes['member']} members)", mean.values, "viridis", (vmin, vmax)),
        ("mean - truth", err, "RdBu_r", (-emax, emax)),
        ("spread (std)", spread.values, "magma", (0, float(np.nanmax(spread.values)) or 1.0)),
    ]
    for ax, (name, field, cmap, (lo, hi)) in zip(axes.flat, panels, strict=False):
        im = ax.pcolormesh(lon, lat, field, cmap=cmap, vmin=lo, vmax=hi, shading="nearest")
        ax.set_title(name)
        fig.colorbar(im, ax=ax, label=units, shrink=0.85)
    ax = axes.flat[4]
    ax.set_title("observations")
    ax.set_xlim(lon[0], 360)
    ax.set_ylim(-90, 90)
    if observations is not None and observations.sizes.get("obs", 0):
        obs = observations
        times = pd.DatetimeIndex(obs["time"].values)
        step = (
            pd.Timedelta(truth["time"].values[1] - truth["time"].values[0])
            if (truth.sizes["time"] > 1)
            else pd.Timedelta(hours=6)
        )
        keep = (obs["variable"].values.astype(str) == variable) & (abs(times - t) < step / 2)
        levels = obs["level"].values
        keep &= np.isnan(levels) if level is None else levels == level
        sel = np.flatnonzero(keep)
        im = ax.scatter(
            np.mod(obs["longitude"].values[sel], 360), obs["latitude"].values[sel],
            c=obs["value"].values[sel], cmap="viridis", vmin=vmin, vmax=vmax, s=8,
        )  # fmt: skip
        fig.colorbar(im, ax=ax, label=units, shrink=0.85)
        ax.set_title(f"observations ({sel.size})")
    axes.flat[5].axis("off")
    for ax in axes.flat[:5]:
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
    name = variable if level is None else f"{variable}@{level} hPa"
    suffix = f" (+{lead_time})" if lead_time is not None else ""
    fig.suptitle(title or f"{name} at {t:%Y-%m-%d %H:%M}{suffix}")
    return _save(plt, fig, out)


def plot_metric_curves(
    table: xr.Dataset,
    variables: Sequence[str] | str,
    out: str | Path,
    *,
    metrics: Sequence[str] = ("rmse", "spread_skill", "crps"),
    level: int | None = None,
) -> Path:
    """Metric curves of every system of an :func:`appa.metrics.report.evaluate_archives`
    table: against lead time (hours) when the table has ``lead_time``, else against ``time``
    (a ``by_time`` table). One row per variable, one column per metric (metrics that are NaN
    for every system, e.g. spread/skill of deterministic products, are left out)."""
    variables = [variables] if isinstance(variables, str) else list(variables)
    if "lead_time" in table.dims:
        axis = "lead_time"
    elif "time" in table.dims:
        axis = "time"
    else:
        raise ValueError("the table has neither lead_time nor time: evaluate with by_time=True")
    # Metrics undefined for every system (spread/skill of deterministic products) are left out.
    metrics = [
        m for m in metrics if any(bool(table[v].sel(metric=m).notnull().any()) for v in variables)
    ] or list(metrics)
    size = (4.6 * len(metrics), 3.2 * len(variables))
    plt, fig, axes = _figure(len(variables), len(metrics), size)
    for i, name in enumerate(variables):
        var = table[name]
        if "level" in var.dims:
            if level is None:
                raise ValueError(f"{name} has levels: give level")
            var = var.sel(level=level)
        if axis == "time" and "lead_time" in var.dims:
            var = var.isel(lead_time=0)
        x = var[axis].values
        x = x / np.timedelta64(1, "h") if axis == "lead_time" else pd.DatetimeIndex(x)
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            for method in var["system"].values:
                ax.plot(x, var.sel(system=method, metric=metric).values, marker=".", label=method)
            if metric == "spread_skill":
                ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            label = name if level is None or "level" not in table[name].dims else f"{name}@{level}"
            ax.set_title(f"{label}: {metric}")
            ax.set_xlabel("lead time (h)" if axis == "lead_time" else "time")
            if axis == "time":
                ax.tick_params(axis="x", labelrotation=30)
            ax.legend(fontsize="small")
    return _save(plt, fig, out)
