"""Figures of gridded stores (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_snapshot"]


def plot_snapshot(store: str | Path, out: str | Path, time_index: int = -1) -> Path:
    """Maps of 500 hPa geopotential, 2 m temperature, sea-level pressure and SST at one time,
    plus the time-mean zonal-mean zonal wind, from a canonical store."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from appa.data.sources import open_era5

    ds = open_era5(store)
    snap = ds.isel(time=time_index).load()
    lat, lon = ds.latitude.values, ds.longitude.values
    fig, axes = plt.subplots(2, 3, figsize=(15, 6.5), constrained_layout=True)
    level = 500 if 500 in ds.level.values else int(ds.level.values[len(ds.level) // 2])
    panels = [
        ("geopotential", snap.geopotential.sel(level=level) / 9.80665, f"Z{level} (m)", "viridis"),
        ("2m_temperature", snap["2m_temperature"], "2 m temperature (K)", "RdBu_r"),
        ("mean_sea_level_pressure", snap.mean_sea_level_pressure / 100, "MSLP (hPa)", "PuOr_r"),
        ("sea_surface_temperature", snap.sea_surface_temperature, "SST (K; land NaN)", "magma"),
        (
            "u_component_of_wind",
            snap.u_component_of_wind.sel(level=level),
            f"u{level} (m/s)",
            "RdBu_r",
        ),
    ]
    for ax, (_, field, title, cmap) in zip(axes.flat, panels, strict=False):
        mesh = ax.pcolormesh(lon, lat, np.asarray(field), cmap=cmap, shading="nearest")
        fig.colorbar(mesh, ax=ax, shrink=0.8)
        ax.set_title(title)
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
    ax = axes.flat[5]
    n = min(ds.sizes["time"], 2000)
    u = ds.u_component_of_wind.isel(time=slice(-n, None)).mean(("time", "longitude")).load()
    for p in ds.level.values:
        ax.plot(lat, u.sel(level=p), label=f"{int(p)} hPa")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(f"zonal-mean u, mean of the last {n} states")
    ax.set_xlabel("latitude")
    ax.set_ylabel("m/s")
    ax.legend()
    fig.suptitle(f"{Path(str(store)).name} at {str(snap.time.values)[:16]}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
