"""How closely analyses fit their observations: observation minus the ensemble mean's value at
each observation (O - A), root-mean-square per network and variable, for one or more archives
against one observation store.

The archives' states go through the reanalysis' own observation operator
(:class:`appa.observations.operator.ObservationOperator`: bilinear in the horizontal, box means
for footprints, linear in depth, or in log-pressure, between two of the archive's levels), so
the misfit is what the posterior saw. An analysis that fits a network far above the
network's error standard deviation has not used it; adding a network should not make another's
misfit grow.

    python benchmarks/observation_misfit.py --observations outputs/ocean_comparison/obs_floats \\
        surface=outputs/reanalysis_surface.zarr floats=outputs/reanalysis_floats.zarr

Prints a Markdown table (rows: platform and variable, with the number of observations and the
RMS of their stated error standard deviations; a column per archive).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch
import xarray as xr

from appa.data import StateSpec, stack
from appa.io.archive import open_archive
from appa.observations.operator import ObservationOperator
from appa.observations.schema import read_observations


def archive_spec(ds: xr.Dataset, vertical: str) -> StateSpec:
    """The state spec of an archive's variables: those with a ``level`` dimension are 3-D."""
    names = [v for v in ds.data_vars if "time" in ds[v].dims]
    upper = [v for v in names if "level" in ds[v].dims]
    surface = [v for v in names if v not in upper]
    levels = ds["level"].values.tolist() if upper else []
    kind = "depth" if vertical == "depth" else "pressure"
    return StateSpec(surface=surface, atmospheric=upper, levels=levels, vertical=kind, masked=names)


def misfits(
    archive: xr.Dataset, table: xr.Dataset, vertical: str
) -> tuple[np.ndarray, ObservationOperator]:
    """``y - A(mean)`` ``(m,)`` of the archive's ensemble mean, and the operator (which holds
    the observations that lie in the archive's variables and times)."""
    spec = archive_spec(archive, vertical)
    op = ObservationOperator(
        table, spec, archive["latitude"].values, archive["longitude"].values,
        archive["time"].values, vertical=vertical,
    )  # fmt: skip
    mean = archive.mean("member") if "member" in archive.dims else archive
    x, _ = stack(mean.load(), spec, fill_value=0.0)
    model = op(torch.as_tensor(np.asarray(x), dtype=torch.float64)[None])[0].numpy()
    return table["value"].values - model, op


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archives", nargs="+", help="NAME=PATH of each archive")
    parser.add_argument("--observations", required=True, help="observation store")
    parser.add_argument(
        "--vertical", choices=["exact", "log_pressure", "depth"], default=None,
        help="how an observation between two levels is read (default: depth when the "
        "archive's levels are in metres, else exact)",
    )  # fmt: skip
    args = parser.parse_args()
    named = dict(item.split("=", 1) for item in args.archives)
    archives = {name: open_archive(path) for name, path in named.items()}
    first = next(iter(archives.values()))
    times = pd.DatetimeIndex(first["time"].values)
    for name, ds in archives.items():
        if not pd.DatetimeIndex(ds["time"].values).equals(times):
            parser.error(f"{name}: its times differ from the first archive's")
    vertical = args.vertical or ("depth" if first["level"].attrs.get("units") == "m" else "exact")
    spec = archive_spec(first, vertical)
    end = times[-1] + pd.Timedelta(seconds=1)
    table = read_observations(args.observations, str(times[0]), str(end))
    keep = np.isin(table["variable"].values, spec.variables) & np.isin(
        table["time"].values, times.values
    )
    table = table.isel(obs=np.flatnonzero(keep))
    if table.sizes["obs"] == 0:
        parser.error("no observation of the archives' variables at their times")
    residuals = {name: misfits(ds, table, vertical)[0] for name, ds in archives.items()}
    platform, variable = table["platform"].values, table["variable"].values
    error = table["error_std"].values
    print(f"{table.sizes['obs']} observations, {times[0]} to {times[-1]}")
    print("| platform, variable | observations | error std | " + " | ".join(named) + " |")
    print("| --- " * (3 + len(named)) + "|")
    for p in np.unique(platform):
        for v in np.unique(variable[platform == p]):
            k = (platform == p) & (variable == v)
            cells = [f"{np.sqrt(np.mean(r[k] ** 2)):.3g}" for r in residuals.values()]
            rms_error = np.sqrt(np.mean(error[k] ** 2))
            print(f"| {p}, {v} | {k.sum()} | {rms_error:.3g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
