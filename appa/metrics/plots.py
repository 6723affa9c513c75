"""Figures of archives and scores (matplotlib, Agg): maps of truth, ensemble mean, error,
spread and observations for one time and variable; metric curves against lead time or time
for several methods; for a sea, its surface observations of a day, sections of the ensemble
mean and spread along a line, and bottom-oxygen maps with the hypoxic areas."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "SEA_SECTION",
    "plot_bottom_oxygen",
    "plot_maps",
    "plot_metric_curves",
    "plot_sea_observations",
    "plot_sea_section",
]

# From the north-western shelf across the slope to the middle of the basin (lat, lon).
SEA_SECTION = ((46.2, 30.6), (42.8, 35.0))


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


def _day(ds: xr.Dataset, time) -> np.datetime64:
    t = pd.Timestamp(time).to_datetime64()
    if t not in set(ds["time"].values):
        have = ds["time"].values
        raise ValueError(
            f"{pd.Timestamp(time)} is not a time of the data ({have[0]} .. {have[-1]})"
        )
    return t


def plot_sea_observations(
    observations: xr.Dataset, time, out: str | Path, title: str | None = None
) -> Path:
    """The sea's observations of one day (``time``'s date): SST, SSS, chlorophyll and SSH at
    their boxes' centres, the float profiles' positions on each panel. Returns ``out``."""
    day = pd.Timestamp(time).normalize()
    t = pd.DatetimeIndex(observations["time"].values).normalize()
    obs = observations.isel(obs=np.flatnonzero(t == day))
    platform = obs["platform"].values.astype(str)
    plt, fig, axes = _figure(2, 2, (12, 6.5))
    panels = (("sst", "SST (K)"), ("sss", "SSS (g/kg)"),
              ("ocean_colour", "log10 chlorophyll (mg/m3)"), ("altimetry", "SSH (m)"))  # fmt: skip
    floats = platform == "argo"
    for ax, (name, label) in zip(axes.flat, panels, strict=True):
        sel = np.flatnonzero(platform == name)
        values = obs["value"].values[sel]
        if name == "ocean_colour" and "chlorophyll" in set(obs["variable"].values[sel].astype(str)):
            values = np.log10(np.clip(values, 1e-6, None))
        if sel.size:
            im = ax.scatter(obs["longitude"].values[sel], obs["latitude"].values[sel], c=values,
                            s=30, marker="s", cmap="viridis")  # fmt: skip
            fig.colorbar(im, ax=ax, shrink=0.85)
        if floats.any():
            ax.scatter(obs["longitude"].values[floats], obs["latitude"].values[floats],
                       marker="x", c="red", s=25, label="float samples")  # fmt: skip
            ax.legend(loc="lower left", fontsize=7)
        ax.set_title(f"{label}: {sel.size} boxes")
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
    fig.suptitle(title or f"observations of {day:%Y-%m-%d}")
    return _save(plt, fig, out)


def _section_cells(latitude, longitude, line, n: int = 80):
    (lat0, lon0), (lat1, lon1) = line
    f = np.linspace(0.0, 1.0, n)
    la, lo = lat0 + f * (lat1 - lat0), lon0 + f * (lon1 - lon0)
    iy = np.abs(np.asarray(latitude)[None, :] - la[:, None]).argmin(axis=1)
    ix = np.abs(np.asarray(longitude)[None, :] - lo[:, None]).argmin(axis=1)
    keep = np.ones(n, dtype=bool)
    keep[1:] = (np.diff(iy) != 0) | (np.diff(ix) != 0)
    iy, ix = iy[keep], ix[keep]
    from appa.observations.quality import great_circle_km

    la, lo = np.asarray(latitude)[iy], np.asarray(longitude)[ix]
    step = great_circle_km(la[:-1], lo[:-1], la[1:], lo[1:])
    return iy, ix, np.concatenate([[0.0], np.cumsum(step)])


def plot_sea_section(
    prediction: xr.Dataset,
    truth: xr.Dataset,
    variable: str,
    time,
    out: str | Path,
    *,
    line=SEA_SECTION,
    max_depth_m: float | None = 400.0,
    title: str | None = None,
) -> Path:
    """Depth-distance sections of ``variable`` at ``time`` along ``line`` (two (lat, lon)
    points, nearest cells): truth, ensemble mean, mean minus truth and ensemble spread
    (``ddof=1``); depths to ``max_depth_m`` (None: all). Returns ``out``."""
    from appa.metrics.ocean import truth_on_levels

    t = _day(prediction, time)
    truth = truth_on_levels(prediction, truth)
    iy, ix, dist = _section_cells(truth["latitude"].values, truth["longitude"].values, line)
    pick = {"latitude": xr.DataArray(iy, dims="x"), "longitude": xr.DataArray(ix, dims="x")}
    pred = prediction[variable].sel(time=t).isel(pick).load()
    true = truth[variable].sel(time=t).isel(pick).load().values
    mean = pred.mean("member").values
    spread = pred.std("member", ddof=1).values if pred.sizes["member"] > 1 else 0 * mean
    depth = truth["level"].values
    units = truth[variable].attrs.get("units", "")
    vmin, vmax = np.nanpercentile(true, [1, 99])
    err = mean - true
    emax = float(np.nanmax(np.abs(err))) if np.isfinite(err).any() else 1.0
    smax = float(np.nanmax(spread)) if np.isfinite(spread).any() else 1.0
    plt, fig, axes = _figure(2, 2, (13, 7))
    panels = [("truth", true, "viridis", (vmin, vmax)),
              (f"ensemble mean ({pred.sizes['member']} members)", mean, "viridis", (vmin, vmax)),
              ("mean - truth", err, "RdBu_r", (-emax or -1, emax or 1)),
              ("spread (std)", spread, "magma", (0, smax or 1))]  # fmt: skip
    for ax, (name, field, cmap, (lo, hi)) in zip(axes.flat, panels, strict=True):
        im = ax.pcolormesh(dist, depth, field, cmap=cmap, vmin=lo, vmax=hi, shading="nearest")
        ax.set_ylim(max_depth_m or depth[-1], 0)
        ax.set_title(name)
        ax.set_xlabel("distance along the section (km)")
        ax.set_ylabel("depth (m)")
        fig.colorbar(im, ax=ax, label=units, shrink=0.85)
    fig.suptitle(title or f"{variable} at {pd.Timestamp(t):%Y-%m-%d}, {line[0]} to {line[1]}")
    return _save(plt, fig, out)


def plot_bottom_oxygen(
    prediction: xr.Dataset,
    truth: xr.Dataset,
    time,
    out: str | Path,
    *,
    flag_threshold: float = 0.5,
    sigma: float | None = None,
    title: str | None = None,
) -> Path:
    """Bottom oxygen at ``time``: the truth's, the ensemble mean's and the probability of
    hypoxia, with the truth's hypoxic area (black contour) and the cells the archive flags
    (probability >= ``flag_threshold``, red contour) on the shelf. Returns ``out``."""
    from appa.data.toy_sea import HYPOXIA_THRESHOLD, bottom_values, shelf_cells
    from appa.metrics.ocean import hypoxia_probability, truth_on_levels

    t = _day(prediction, time)
    truth = truth_on_levels(prediction, truth)
    mask = truth["sea_mask"].values.astype(bool)
    shelf = shelf_cells(mask, truth["sea_floor_depth"].values)
    true = bottom_values(truth["oxygen"].sel(time=t).values, mask)
    members = bottom_values(prediction["oxygen"].sel(time=t).values, mask)
    mean = members.mean(axis=0)
    prob = hypoxia_probability(members, sigma=sigma)
    lat, lon = truth["latitude"].values, truth["longitude"].values
    hyp_true = ((true < HYPOXIA_THRESHOLD) & shelf).astype(float)
    flagged = ((prob >= flag_threshold) & shelf).astype(float)
    plt, fig, axes = _figure(1, 3, (17, 4.6))
    vmax = float(np.nanpercentile(true, 99))
    panels = [("truth", true, "viridis", (0, vmax), "mmol m**-3"),
              (f"ensemble mean ({members.shape[0]} members)", mean, "viridis", (0, vmax),
               "mmol m**-3"),
              ("probability of hypoxia", np.where(shelf, prob, np.nan), "Reds", (0, 1),
               "1")]  # fmt: skip
    for ax, (name, field, cmap, (lo, hi), units) in zip(axes.flat, panels, strict=True):
        im = ax.pcolormesh(lon, lat, field, cmap=cmap, vmin=lo, vmax=hi, shading="nearest")
        fig.colorbar(im, ax=ax, label=units, shrink=0.85)
        if hyp_true.any():
            ax.contour(lon, lat, hyp_true, levels=[0.5], colors="black", linewidths=1.2)
        if flagged.any():
            ax.contour(lon, lat, flagged, levels=[0.5], colors="red", linewidths=1.0)
        ax.contour(lon, lat, shelf.astype(float), levels=[0.5], colors="grey", linewidths=0.6,
                   linestyles="dotted")  # fmt: skip
        ax.set_title(name)
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
    fig.suptitle(
        title
        or f"bottom oxygen at {pd.Timestamp(t):%Y-%m-%d}: hypoxic (<{HYPOXIA_THRESHOLD:g}) in "
        f"the truth (black), flagged p >= {flag_threshold:.2g} (red); shelf edge dotted"
    )
    return _save(plt, fig, out)
