"""Gridded sources: ERA5-like Zarr stores (gs://, s3://, local, file://) and earthkit-data.

Every reader returns the canonical layout (see :mod:`appa.data.layout`), lazily: stores are
opened without dask (``chunks=None``, which costs nothing however large the store), variables,
levels and times are selected first, and only the selection is wrapped in dask arrays with
chunks aligned to the storage chunks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import xarray as xr
from pydantic import BeforeValidator, Field

from appa.config import StrictModel
from appa.data.layout import (
    LayoutError,
    level_key,
    level_kind,
    normalize,
    normalize_arrays,
    normalize_coords,
)

__all__ = [
    "ERA5_PRESETS",
    "SelectionError",
    "Store",
    "StoreConfig",
    "from_earthkit",
    "open_era5",
    "read_static",
    "resolve_store",
    "select",
]

# Known public ERA5 stores (all Zarr format 2 with consolidated metadata).
ERA5_PRESETS: dict[str, str] = {
    "wb2-0p25-6h-13": "gs://weatherbench2/datasets/era5/"
    "1959-2023_01_10-wb13-6h-1440x721_with_derived_variables.zarr",
    "wb2-1p5-6h": "gs://weatherbench2/datasets/era5/"
    "1959-2023_01_10-6h-240x121_equiangular_with_poles_conservative.zarr",
    "wb2-5p625-6h": "gs://weatherbench2/datasets/era5/"
    "1959-2023_01_10-6h-64x32_equiangular_conservative.zarr",
    "wb2-0p25-1h-37": "gs://weatherbench2/datasets/era5/"
    "1959-2023_01_10-full_37-1h-0p25deg-chunk-1.zarr",
    "arco-0p25-1h-37": "gs://gcp-public-data-arco-era5/ar/full_37-1h-0p25deg-chunk-1.zarr-v3",
}

# Upper bound on the bytes of one dask chunk when storage chunks are grouped along time.
TARGET_CHUNK_BYTES = 64 * 2**20


class SelectionError(KeyError):
    """A requested variable, level or time is not in the source; the message lists what is."""

    def __str__(self) -> str:
        return str(self.args[0])


def resolve_store(store: str | Path) -> tuple[str, dict[str, Any]]:
    """Resolves a preset name (``wb2-5p625-6h`` or ``preset:wb2-5p625-6h``) or a path/URL to a
    URL and default storage options (anonymous access for ``gs://`` and ``s3://``)."""
    text = str(store)
    name = text.removeprefix("preset:")
    if name in ERA5_PRESETS:
        text = ERA5_PRESETS[name]
    elif text.startswith("preset:"):
        raise SelectionError(f"unknown ERA5 preset {name!r}; known: {sorted(ERA5_PRESETS)}")
    if text.startswith("gs://") or text.startswith("gcs://"):
        return text, {"token": "anon"}
    if text.startswith("s3://"):
        return text, {"anon": True}
    if text.startswith("file://"):
        return text.removeprefix("file://"), {}
    return text, {}


def _open_raw(url: str, storage_options, zarr_format, consolidated) -> xr.Dataset:
    is_local = "://" not in url
    if is_local and not Path(url).exists():
        raise FileNotFoundError(f"no store at {url}")
    kwargs: dict[str, Any] = {"chunks": None}
    if storage_options and not is_local:
        kwargs["storage_options"] = storage_options
    if zarr_format is not None:
        kwargs["zarr_format"] = zarr_format
    if consolidated is None:
        # Use consolidated metadata when present, fall back to listing the store.
        try:
            return xr.open_zarr(url, consolidated=True, **kwargs)
        except (KeyError, FileNotFoundError, ValueError):
            return xr.open_zarr(url, consolidated=False, **kwargs)
    return xr.open_zarr(url, consolidated=consolidated, **kwargs)


def open_era5(
    store: str | Path,
    *,
    variables: Sequence[str] | None = None,
    levels: Sequence[int | float] | None = None,
    time: slice | str | Sequence | None = None,
    spec=None,
    storage_options: dict[str, Any] | None = None,
    zarr_format: int | None = None,
    consolidated: bool | None = None,
    chunks: str | dict[str, int] | None = "storage",
) -> xr.Dataset:
    """Opens an ERA5-like Zarr store in the canonical layout.

    Arguments:
        store: Local path, ``file://``, ``gs://`` (anonymous by default), ``s3://`` URL, or a
            preset name from :data:`ERA5_PRESETS`.
        variables, levels, time: Selection (``time`` a slice of dates, a date or a list);
            ``spec`` (a :class:`~appa.data.spec.StateSpec`) gives variables and levels.
        storage_options: fsspec options, merged over the anonymous defaults.
        zarr_format, consolidated: Forced when given; by default detected (consolidated
            metadata used when present).
        chunks: ``"storage"`` (dask chunks aligned with the stored chunks, grouped along time
            up to 64 MiB), a dict of chunk sizes, or ``None`` for lazy arrays without dask.

    Raises :class:`SelectionError` listing what the store has when a variable, level or time
    is missing.
    """
    url, options = resolve_store(store)
    options = {**options, **(storage_options or {})}
    raw = _open_raw(url, options, zarr_format, consolidated)
    if spec is not None:
        variables = list(spec.variables) if variables is None else variables
        levels = list(spec.levels) if levels is None and spec.atmospheric else levels
    # Names and coordinates first (free), then the selection, then dask chunks over the
    # selection only, then the array reorderings (graph rewrites on dask arrays).
    ds = normalize_coords(raw, source=str(store))
    ds = select(ds, variables=variables, levels=levels, time=time, source=str(store))
    if chunks == "storage":
        ds = ds.chunk(_storage_chunks(raw, ds))
    elif chunks is not None:
        ds = ds.chunk(chunks)
    return normalize_arrays(ds, source=str(store))


def read_static(
    store: str | Path,
    names: Sequence[str],
    storage_options: dict[str, Any] | None = None,
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Static fields of a store (variables without ``time``, e.g. ``land_sea_mask`` and
    ``geopotential_at_surface``), standardised over the grid for a network's context.

    Returns:
        ``(S, lat, lon)`` float32 fields in the canonical layout, each ``(f - mean) / std``
        (std 1 for a constant field), and the ``(mean, std)`` of each in its units.

    Raises :class:`SelectionError` when a name is missing and ``ValueError`` when a field has a
    time axis or non-finite values.
    """
    ds = open_era5(store, variables=list(names), storage_options=storage_options, chunks=None)
    fields, moments = [], []
    for name in names:
        da = ds[name]
        if set(da.dims) != {"latitude", "longitude"}:
            raise ValueError(f"{store}: static field {name!r} has dims {da.dims}, not (lat, lon)")
        values = np.asarray(da.transpose("latitude", "longitude").values, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"{store}: static field {name!r} holds NaN or infinite values")
        mean, std = float(values.mean()), float(values.std())
        std = std if std > 0 else 1.0
        fields.append((values - mean) / std)
        moments.append((mean, std))
    return np.stack(fields).astype(np.float32), moments


def _storage_chunks(raw: xr.Dataset, ds: xr.Dataset) -> dict[str, int]:
    """Dask chunks: whole spatial/level extent, time grouped by the stored time chunk."""
    time_chunk = 1
    bytes_per_step = 1
    for name in ds.data_vars:
        enc = raw[name].encoding if name in raw else {}
        stored = enc.get("preferred_chunks", {})
        for alias in ("time", "valid_time", "forecast_reference_time"):
            if alias in stored:
                time_chunk = max(time_chunk, int(stored[alias]))
        var = ds[name]
        n = int(np.prod([s for d, s in var.sizes.items() if d != "time"]))
        bytes_per_step = max(bytes_per_step, n * var.dtype.itemsize)
    chunks: dict[str, int] = {d: -1 for d in ds.dims if d != "time"}
    if "time" in ds.dims:
        group = max(1, TARGET_CHUNK_BYTES // (bytes_per_step * time_chunk))
        chunks["time"] = min(ds.sizes["time"], time_chunk * group) or 1
    return chunks


def select(
    ds: xr.Dataset,
    variables: Iterable[str] | None = None,
    levels: Iterable[int | float] | None = None,
    time: slice | str | Sequence | None = None,
    source: str = "dataset",
) -> xr.Dataset:
    """Selects variables, levels and times of a canonical dataset; missing ones are errors
    that list what ``ds`` has."""
    if variables is not None:
        variables = list(variables)
        missing = [v for v in variables if v not in ds.data_vars]
        if missing:
            raise SelectionError(
                f"{source}: variables {missing} not found; it has {sorted(ds.data_vars)}"
            )
        ds = ds[variables]
    if levels is not None:
        levels = [level_key(p) for p in levels]
        if "level" not in ds.coords:
            if any("level" in ds[v].dims for v in ds.data_vars):
                raise SelectionError(f"{source}: has no level coordinate")
        else:
            have = [level_key(p) for p in np.asarray(ds["level"].values)]
            missing = [p for p in levels if p not in have]
            if missing:
                unit = "m" if level_kind(ds["level"]) == "depth" else "hPa"
                raise SelectionError(f"{source}: levels {missing} {unit} not found; it has {have}")
            index = [have.index(p) for p in levels]
            if index != list(range(len(have))):
                # A contiguous run stays a slice (basic indexing, cheaper on stores).
                contiguous = index == list(range(index[0], index[0] + len(index)))
                ds = ds.isel(level=slice(index[0], index[-1] + 1) if contiguous else index)
    if time is not None:
        if "time" not in ds.dims:
            raise SelectionError(f"{source}: has no time dimension")
        times = ds["time"].values
        span = f"{times[0]} to {times[-1]}" if len(times) else "no times"
        try:
            sub = ds.sel(time=time)
        except KeyError:
            raise SelectionError(f"{source}: times {time} not found; it spans {span}") from None
        if "time" in sub.dims and sub.sizes["time"] == 0:
            raise SelectionError(f"{source}: no time in {time}; it spans {span}")
        ds = sub
    return ds


class StoreConfig(StrictModel):
    """A gridded store in a config file: a preset name (see :data:`ERA5_PRESETS`), a local
    path, ``file://``, ``gs://`` or ``s3://`` URL, and how to open it. Every job that reads a
    gridded store for its data names it this way (the training source extends it)."""

    store: str = Field("wb2-5p625-6h", description="preset name, path or URL")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options of remote stores"
    )

    @property
    def url(self) -> str:
        return resolve_store(self.store)[0]

    def open(self, spec=None, time=None, **kwargs: Any) -> xr.Dataset:
        """:func:`open_era5` of the store (``time``: a slice of dates, inclusive; ``kwargs``:
        more of its arguments)."""
        return open_era5(
            self.store, spec=spec, time=time, storage_options=self.storage_options or None,
            **kwargs,
        )  # fmt: skip


def _store_shorthand(value: Any) -> Any:
    return {"store": str(value)} if isinstance(value, str | Path) else value


# A StoreConfig field that also takes a bare path, URL or preset name (``truth: data/x.zarr``).
Store = Annotated[StoreConfig, BeforeValidator(_store_shorthand)]


def from_earthkit(source: Any, *, member_dim: str | None = None) -> xr.Dataset:
    """Converts an earthkit-data source (GRIB, NetCDF, CDS, Zarr via ``from_source``) or the
    xarray dataset it returns to the canonical layout and names.

    ecCodes short names (``t``, ``z``, ``2t``, ``msl``, ...) become WB2 names, ``isobaricInhPa``
    becomes ``level``, ``forecast_reference_time``/``valid_time`` becomes ``time``, and the
    ensemble dimension (``number``, ``realization``, ... or ``member_dim``) becomes ``member``.
    """
    if isinstance(source, xr.Dataset):
        ds = source
    elif hasattr(source, "to_xarray"):
        ds = source.to_xarray()
    else:
        raise TypeError(f"expected an earthkit-data source or an xarray Dataset, got {source!r}")
    if member_dim is not None:
        if member_dim not in ds.dims:
            raise LayoutError(f"earthkit source has no {member_dim!r} dimension: {sorted(ds.dims)}")
        ds = ds.rename({member_dim: "member"})
    if "time" in ds.dims and "valid_time" in ds.coords and "step" in ds.dims:
        if ds.sizes["step"] == 1:
            ds = ds.isel(step=0).swap_dims({"time": "valid_time"}).drop_vars("time")
    return normalize(ds, source="earthkit source")
