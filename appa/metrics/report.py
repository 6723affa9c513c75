"""``appa evaluate``: score archives against a truth store, side by side, as a table.

The table is an :class:`xarray.Dataset` with one data variable per scored variable, dims
``(system, metric, [time,] [lead_time,] [level])`` (see :mod:`appa.metrics.wb2`), and the
coordinate ``ensemble_size(system)``; it is written as NetCDF (``.nc``) or Zarr (``.zarr``),
marked ``appa_product: "scores"``, and replaces only a score table (with ``overwrite``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from appa.data.layout import level_key
from appa.files import PRODUCT_ATTR, written_whole
from appa.io.archive import ArchiveError, open_archive, read_errors_named
from appa.metrics.wb2 import EvaluationError, check_finite, evaluate, open_truth, time_mean

__all__ = ["evaluate_archives", "summary_table", "write_table"]


def evaluate_archives(
    archives: Mapping[str, str | Path | xr.Dataset],
    truth: str | Path | xr.Dataset,
    *,
    variables: Sequence[str] | None = None,
    by_time: bool = False,
) -> xr.Dataset:
    """Scores each archive (name -> path or dataset) against the truth (a store
    :func:`appa.data.open_era5` reads, or a canonical dataset); the tables are concatenated
    along ``system`` in the given order (lead times or levels a system lacks are NaN)."""
    if not archives:
        raise EvaluationError("no archive to evaluate")
    source, truth = open_truth(truth)
    tables = []
    for name, archive in archives.items():
        try:
            ds = archive if isinstance(archive, xr.Dataset) else open_archive(archive)
        except ArchiveError as error:
            raise EvaluationError(str(error)) from None
        names = variables
        if names is None:
            names = [v for v in ds.data_vars if {"member", "time"} <= set(ds[v].dims)]
        try:
            if isinstance(archive, xr.Dataset):
                table = evaluate(ds, truth, variables=names, by_time=by_time)
                check_finite(table)
            else:
                # a damaged chunk is named, not left to a decoder's traceback
                with read_errors_named(archive, expected=(EvaluationError, KeyError)):
                    table = evaluate(ds, truth, variables=names, by_time=by_time)
                # NaN scores of a complete archive: a chunk file is missing
                with read_errors_named(archive):
                    check_finite(table)
        except (EvaluationError, ArchiveError) as error:
            raise EvaluationError(f"{name}: {error}") from None
        size = table.attrs.pop("ensemble_size")
        table = table.expand_dims(system=[name]).assign_coords(ensemble_size=("system", [size]))
        tables.append(table)
    out = xr.concat(tables, dim="system", join="outer", combine_attrs="drop")
    out.attrs = {"truth": source}
    return out


def write_table(table: xr.Dataset, out: str | Path, overwrite: bool = False) -> Path:
    """Writes the table atomically: NetCDF for ``.nc``, Zarr otherwise. ``out`` must be free
    (absent, an empty directory) or, with ``overwrite``, a score table; anything else raises
    :class:`~appa.files.OutputExistsError` naming what is there."""
    out = Path(out)
    table = table.assign_attrs({PRODUCT_ATTR: "scores"})
    with written_whole(out, "scores", overwrite=overwrite) as tmp:
        if out.suffix == ".nc":
            encoded = table.copy()
            for coord in ("system", "metric"):
                encoded[coord] = encoded[coord].astype(str)
            encoded.to_netcdf(tmp)
        else:
            table.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True)
    return out


def _label(name: str, level, lead) -> str:
    text = name if level is None else f"{name}@{level_key(level)}"
    if lead is not None:
        hours = pd.Timedelta(lead).total_seconds() / 3600
        text += f" +{hours:g}h"
    return text


def summary_table(table: xr.Dataset, metrics: Sequence[str] = ("rmse", "spread_skill", "crps")):
    """A :class:`rich.table.Table`: one row per variable, level and lead time, columns per
    metric and system (``by_time`` tables are reduced with :func:`time_mean`)."""
    from rich.table import Table

    table = time_mean(table)
    methods = [str(m) for m in table["system"].values]
    out = Table(title="WeatherBench2 scores (time mean)")
    out.add_column("variable")
    short = {"rmse": "RMSE", "spread_skill": "SSR", "crps": "CRPS", "spread": "spread",
             "bias": "bias", "mae": "MAE"}  # fmt: skip
    for metric in metrics:
        for method in methods:
            out.add_column(f"{short.get(metric, metric)}\n{method}", justify="right")
    for name in table.data_vars:
        var = table[name]
        levels = var["level"].values if "level" in var.dims else [None]
        leads = var["lead_time"].values if "lead_time" in var.dims else [None]
        for level in levels:
            for lead in leads:
                sel = {}
                if level is not None:
                    sel["level"] = level
                if lead is not None:
                    sel["lead_time"] = lead
                cells = []
                for metric in metrics:
                    values = var.sel(metric=metric, **sel).values
                    cells += ["-" if not np.isfinite(v) else f"{v:.4g}" for v in values]
                out.add_row(_label(name, level, lead), *cells)
    return out
