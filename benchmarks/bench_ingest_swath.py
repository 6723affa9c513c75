"""Throughput of ``read_swath`` (decode, quality masks, thinning into superobservations) vs a
plain xarray load of the same variables from the same file (the I/O floor).

A synthetic polar-orbiter swath (2-D latitude and longitude along scan lines, a time per scan
line, a quality flag, a per-pixel error, a few percent of fill values) is written to a
temporary NetCDF file (or Zarr store), then both paths read it, interleaved, best of
``--repeats``. Prints pixels per second, superobservations per second and the ratio of the
two throughputs (1 = thinning costs nothing beyond reading).

    python benchmarks/bench_ingest_swath.py [--lines 30000] [--pixels 100] [--grid 1440x721]
        [--format nc|zarr] [--repeats 3] [--out outputs/benchmarks/ingest_swath.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from appa.observations.ingest.swath import SwathSpec, SwathVariable, read_swath

VARIABLES = ["tskin", "tskin_err", "qf", "lat", "lon", "time"]


def synthetic_swath(lines: int, pixels: int, seed: int = 0) -> xr.Dataset:
    """A sun-synchronous-like orbit (98.7 deg inclination, 0.2 s per scan line, +-15 deg
    across track) over a rotating Earth."""
    rng = np.random.default_rng(seed)
    seconds = np.arange(lines) * 0.2
    theta = 2 * np.pi * seconds / (101 * 60.0)  # orbital angle, 101 min per orbit
    incl = np.radians(98.7)
    lat0 = np.degrees(np.arcsin(np.sin(incl) * np.sin(theta)))
    lon0 = np.degrees(np.arctan2(np.cos(incl) * np.sin(theta), np.cos(theta)))
    lon0 = lon0 - 360.0 * seconds / 86164.0  # the Earth turns under the orbit
    across = np.linspace(-15.0, 15.0, pixels)[None, :]
    lat = np.broadcast_to(lat0[:, None], (lines, pixels))
    coslat = np.maximum(np.cos(np.radians(lat)), 0.05)
    lon = (lon0[:, None] + across / coslat + 180.0) % 360.0 - 180.0
    value = 280.0 + 20.0 * np.cos(np.radians(lat)) + rng.normal(0, 1, lat.shape)
    value[rng.random(lat.shape) < 0.03] = np.nan  # fill values
    flag = (rng.random(lat.shape) < 0.1).astype(np.int8)  # 10% flagged bad
    error = rng.uniform(0.3, 1.0, lat.shape)
    dims = ("scanline", "pixel")
    t0 = np.datetime64("2021-03-01T00:00", "ns")
    return xr.Dataset(
        {
            "tskin": (dims, value.astype(np.float32), {"units": "K"}),
            "tskin_err": (dims, error.astype(np.float32), {"units": "K"}),
            "qf": (dims, flag),
            "lat": (dims, lat.astype(np.float32)),
            "lon": (dims, lon.astype(np.float32)),
            "time": (("scanline",), t0 + (seconds * 1e9).astype("timedelta64[ns]")),
        }
    )


def plain_load(path: Path, zarr: bool) -> int:
    """The baseline: open and load the same variables into memory."""
    engine = "zarr" if zarr else None
    with xr.open_dataset(path, engine=engine, chunks=None) as ds:
        arrays = [ds[v].values for v in VARIABLES]
    return arrays[0].size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=30000)
    parser.add_argument("--pixels", type=int, default=100)
    parser.add_argument("--grid", default="1440x721", help="NLONxNLAT, latitudes with poles")
    parser.add_argument("--format", choices=["nc", "zarr"], default="nc")
    parser.add_argument("--step", default="1h")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    nlon, nlat = (int(x) for x in args.grid.split("x"))
    grid_lat = np.linspace(-90.0, 90.0, nlat)
    grid_lon = np.arange(nlon) * (360.0 / nlon)
    spec = SwathSpec(
        {"tskin": SwathVariable("skin_temperature", error="tskin_err")},
        latitude="lat",
        longitude="lon",
        quality="qf",
        good_values=(0,),
        instrument="synthetic/imager",
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"swath.{args.format}"
        ds = synthetic_swath(args.lines, args.pixels)
        ds.to_netcdf(path) if args.format == "nc" else ds.to_zarr(path, zarr_format=2)
        n = args.lines * args.pixels
        print(f"swath {args.lines} x {args.pixels} = {n:,} pixels, {args.format}, grid {args.grid}")
        read = read_swath(path, spec, grid_lat, grid_lon, args.step)  # warm the caches
        plain_load(path, args.format == "zarr")
        t_ours, t_plain = np.inf, np.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            read = read_swath(path, spec, grid_lat, grid_lon, args.step)
            t1 = time.perf_counter()
            plain_load(path, args.format == "zarr")
            t2 = time.perf_counter()
            t_ours, t_plain = min(t_ours, t1 - t0), min(t_plain, t2 - t1)
    superobs = len(read.reports)
    rejected = {k: v for k, v in read.rejected_pixels.items() if v}
    print(f"superobservations: {superobs:,} ({n / superobs:.1f} pixels each); rejected {rejected}")
    print(f"read_swath:        {t_ours:7.3f} s  {n / t_ours / 1e6:7.2f} M pixels/s", end="")
    print(f"  {superobs / t_ours / 1e3:8.1f} k superobs/s")
    print(f"plain xarray load: {t_plain:7.3f} s  {n / t_plain / 1e6:7.2f} M pixels/s")
    print(f"ratio read_swath / plain load throughput: {t_plain / t_ours:.2f}")
    row = {
        "date": str(pd.Timestamp.now().date()),
        "pixels": n,
        "grid": args.grid,
        "format": args.format,
        "superobs": superobs,
        "read_swath_s": t_ours,
        "plain_load_s": t_plain,
        "pixels_per_s": n / t_ours,
        "superobs_per_s": superobs / t_ours,
        "ratio": t_plain / t_ours,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
