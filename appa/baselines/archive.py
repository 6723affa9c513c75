"""Baseline products in the archive layout, written with plain ``to_zarr`` (atomically).

Layout (shared with the sampling jobs): analyses ``(member, time, [level,] latitude,
longitude)``, forecasts ``(member, time, lead_time, [level,] latitude, longitude)`` with
``time`` the initialisation; float32, physical units, CF attributes copied from the truth,
``member`` from 0 with ``standard_name: realization``, provenance in root attributes as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import appa
from appa.files import written_whole

__all__ = ["ARCHIVE_ORDER", "to_archive_layout", "write_archive"]

ARCHIVE_ORDER = ("member", "time", "lead_time", "level", "latitude", "longitude")


def to_archive_layout(
    ds: xr.Dataset,
    truth: xr.Dataset | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Orders dims as the archive does, casts to float32, adds a ``member`` dim of size 1 when
    absent, copies CF attributes of variables and coordinates from ``truth`` and stores
    ``provenance`` (values JSON-encoded) in the root attributes."""
    if "member" not in ds.dims:
        ds = ds.expand_dims(member=[0])
    out = xr.Dataset(coords={k: v for k, v in ds.coords.items() if k in ds.dims})
    for name in ds.data_vars:
        var = ds[name]
        order = [d for d in ARCHIVE_ORDER if d in var.dims]
        extra = [d for d in var.dims if d not in ARCHIVE_ORDER]
        if extra:
            raise ValueError(f"{name} has dims {extra} outside the archive layout")
        out[name] = var.transpose(*order).astype(np.float32)
        attrs = dict(truth[name].attrs) if truth is not None and name in truth else {}
        out[name].attrs = {
            k: v for k, v in attrs.items() if k in ("units", "long_name", "standard_name")
        }
    out["member"] = ("member", np.arange(out.sizes["member"], dtype=np.int64))
    out["member"].attrs = {"standard_name": "realization", "long_name": "ensemble member"}
    if truth is not None:
        for coord in ("latitude", "longitude", "level", "time"):
            if coord in out.coords and coord in truth.coords:
                out[coord].attrs = dict(truth[coord].attrs)
    if "level" in out.coords:
        out["level"] = out["level"].astype(np.int64)
        out["level"].attrs.setdefault("units", "hPa")
    if "lead_time" in out.coords:
        out["lead_time"].attrs = {"long_name": "lead time (valid time = time + lead_time)"}
    attrs = {"Conventions": "CF-1.8", "appa_version": appa.__version__}
    for key, value in (provenance or {}).items():
        attrs[key] = value if isinstance(value, str) else json.dumps(value, default=str)
    out.attrs = attrs
    return out


def write_archive(ds: xr.Dataset, out: str | Path, overwrite: bool = False) -> Path:
    """Writes ``ds`` to the Zarr store ``out`` via a temporary sibling and a rename, so ``out``
    is either absent or whole (Zarr format 2, consolidated metadata)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    # the source store's encodings (its codecs, its Zarr format) do not belong to the archive
    ds = ds.drop_encoding()
    with written_whole(out) as tmp:
        encoding = {name: {"chunks": _chunks(ds[name])} for name in ds.data_vars}
        if any(ds[name].chunks is not None for name in ds.data_vars):
            # dask chunks must tile the Zarr chunks
            ds = ds.chunk({d: 1 for d in ("member", "time") if d in ds.dims})
        ds.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True, encoding=encoding)
    return out


def _chunks(var: xr.DataArray) -> tuple[int, ...]:
    # One member, one time and (for forecasts) every lead time per chunk: the unit of work.
    return tuple(1 if d in ("member", "time") else n for d, n in var.sizes.items())
