"""The toy sea's cost and physics: seconds per simulated year, and the seasonal cycles a
regional-ocean inverse problem leans on.

Generates ``--years`` of daily states (after a year of spin-up) in memory on one BLAS thread
and prints: the generation time; the mixed-layer depth (density criterion, 0.03 kg/m^3 from
10 m) by month, over the sea and over the deep basin; the hypoxic shelf area (bottom oxygen
below 63 mmol/m^3 where the floor is shallower than 100 m) by month of each year; surface
oxygen against saturation. ``--figure`` also saves a map of bottom oxygen and a section of
oxygen and temperature across the basin in late summer.

    python benchmarks/bench_toy_sea.py --years 5 --figure outputs/benchmarks/toy_sea.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from appa.data.toy_sea import (
    HYPOXIA_THRESHOLD,
    KELVIN,
    LATITUDE_RANGE,
    LONGITUDE_RANGE,
    ToySeaConfig,
    bottom_values,
    mixed_layer_depth,
    oxygen_solubility,
    shelf_cells,
    toy_sea_dataset,
)


def cell_areas_km2(latitude: np.ndarray, nlon: int) -> np.ndarray:
    """Area (km^2) of the cells of each latitude row ``(lat, 1)``."""
    dlat = (LATITUDE_RANGE[1] - LATITUDE_RANGE[0]) / len(latitude)
    dlon = (LONGITUDE_RANGE[1] - LONGITUDE_RANGE[0]) / nlon
    return (dlat * 111.195) * (dlon * 111.195 * np.cos(np.radians(latitude)))[:, None]


def summarise(ds) -> dict:
    """Monthly mixed-layer depth, hypoxic area by year and month, surface saturation."""
    month = ds.time.dt.month.values
    year = ds.time.dt.year.values
    floor = np.nan_to_num(ds.sea_floor_depth.values)
    sea, deep = floor > 0, floor > 1000
    mask = ds.sea_mask.values.astype(bool)
    t, s, o2 = ds.temperature.values, ds.salinity.values, ds.oxygen.values
    mld = mixed_layer_depth(t, s, ds.level.values)

    def monthly(values, where, digits=1):
        return [
            round(float(np.nanmean(values[month == m][:, where])), digits) for m in range(1, 13)
        ]

    shelf = shelf_cells(mask, floor)
    hypoxic = (bottom_values(o2, mask) < HYPOXIA_THRESHOLD) & shelf[None]
    area = (hypoxic * cell_areas_km2(ds.latitude.values, ds.sizes["longitude"])).sum(axis=(1, 2))
    by_year = {
        int(y): [
            round(float(area[(year == y) & (month == m)].mean()) / 1e3, 1) for m in range(1, 13)
        ]
        for y in np.unique(year)
    }
    sst = t[:, 0] - KELVIN
    ratio = (o2[:, 0] / oxygen_solubility(sst, s[:, 0]))[:, sea]
    return {
        "mixed_layer_depth_m_by_month": {
            "sea": monthly(mld, sea),
            "deep_basin": monthly(mld, deep),
        },
        "sea_surface_temperature_c_by_month": monthly(sst, sea),
        "shelf_area_km2": round(
            float((shelf * cell_areas_km2(ds.latitude.values, ds.sizes["longitude"])).sum())
        ),
        "hypoxic_shelf_area_1e3_km2_by_month": by_year,
        "surface_oxygen_over_saturation": {
            "mean": round(float(ratio.mean()), 4),
            "median": round(float(np.median(ratio)), 4),
            "p1": round(float(np.percentile(ratio, 1)), 4),
            "p99": round(float(np.percentile(ratio, 99)), 4),
            "abs_deviation_p95": round(float(np.percentile(np.abs(ratio - 1), 95)), 4),
            "by_month": monthly(o2[:, 0] / oxygen_solubility(sst, s[:, 0]), sea, 3),
        },
    }


def figure(ds, path: Path) -> Path:
    """Bottom oxygen in the year's worst hypoxic day and an east-west section of oxygen and
    temperature through the middle of the basin on that day."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = ds.sea_mask.values.astype(bool)
    bottom = bottom_values(ds.oxygen.values, mask)
    shelf = shelf_cells(mask, ds.sea_floor_depth.values)
    day = int(np.argmax(((bottom < HYPOXIA_THRESHOLD) & shelf[None]).sum(axis=(1, 2))))
    row = int(np.argmin(np.abs(ds.latitude.values - 43.5)))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), constrained_layout=True)
    lon, lat, z = ds.longitude.values, ds.latitude.values, ds.level.values
    im = axes[0].pcolormesh(lon, lat, bottom[day], cmap="RdYlBu", vmin=0, vmax=350)
    axes[0].contour(lon, lat, bottom[day], levels=[HYPOXIA_THRESHOLD], colors="k")
    axes[0].axhline(lat[row], color="grey", lw=0.8)
    axes[0].set_title(f"bottom O2 (mmol/m3), {str(ds.time.values[day])[:10]}")
    fig.colorbar(im, ax=axes[0])
    for ax, name, cmap, scale in (
        (axes[1], "oxygen", "viridis", 1.0),
        (axes[2], "temperature", "inferno", 1.0),
    ):
        values = ds[name].values[day, :, row] * scale
        if name == "temperature":
            values = values - KELVIN
        im = ax.pcolormesh(lon, z, values, cmap=cmap, shading="nearest")
        ax.set_ylim(400, 0)
        ax.set_ylabel("depth (m)")
        ax.set_title(f"{name} at {lat[row]:.2f} N" + (" (C)" if name == "temperature" else ""))
        fig.colorbar(im, ax=ax)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--years", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/toy_sea.json"))
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    cfg = ToySeaConfig(days=round(args.years * 365.25), spinup_days=365, seed=args.seed)
    with threadpool_limits(limits=1, user_api="blas"):
        t0 = time.perf_counter()
        ds = toy_sea_dataset(cfg)
        seconds = time.perf_counter() - t0
    simulated = (cfg.days + cfg.spinup_days) / 365.25
    result = {
        "grid": f"{cfg.nlat}x{cfg.nlon}x{cfg.n_levels}",
        "simulated_years": round(simulated, 2),
        "seconds": round(seconds, 1),
        "seconds_per_simulated_year": round(seconds / simulated, 1),
        **summarise(ds),
    }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    if args.figure is not None:
        print(f"figure: {figure(ds, args.figure)}")


if __name__ == "__main__":
    main()
