"""The canonical gridded layout and the normalisation of every known layout to it.

Canonical: dims ``([member,] time, level, latitude, longitude)`` (surface variables without
``level``, static ones without ``time``), latitude ascending, longitude in [0, 360) ascending,
WeatherBench2/ARCO variable names, SI units, level in hPa (the atmosphere) or in metres of depth,
positive down (the ocean: a level coordinate with units ``m`` or ``standard_name: depth``).
Normalisation is lazy: it only renames, reverses, rolls and transposes, so it runs on dask
arrays without reading data.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xarray as xr

__all__ = [
    "CANONICAL_DIMS",
    "ECCODES_NAMES",
    "LayoutError",
    "check_canonical",
    "level_key",
    "level_kind",
    "normalize",
    "normalize_arrays",
    "normalize_coords",
]

CANONICAL_DIMS = ("member", "time", "level", "latitude", "longitude")

# Dimension and coordinate aliases found in ERA5 stores, forecast stores and earthkit/cfgrib.
DIM_ALIASES = {
    "lat": "latitude",
    "lon": "longitude",
    "y": None,  # ambiguous: never renamed
    "pressure_level": "level",
    "isobaricInhPa": "level",
    "plev": "level",
    "lev": "level",
    "valid_time": "time",
    "forecast_reference_time": "time",
    "number": "member",
    "realization": "member",
    "ensemble": "member",
    "sample": "member",
}

# ecCodes short names (as earthkit/cfgrib return them) -> WeatherBench2/ARCO names.
ECCODES_NAMES = {
    "t": "temperature",
    "z": "geopotential",
    "u": "u_component_of_wind",
    "v": "v_component_of_wind",
    "q": "specific_humidity",
    "w": "vertical_velocity",
    "r": "relative_humidity",
    "2t": "2m_temperature",
    "t2m": "2m_temperature",
    "10u": "10m_u_component_of_wind",
    "u10": "10m_u_component_of_wind",
    "10v": "10m_v_component_of_wind",
    "v10": "10m_v_component_of_wind",
    "msl": "mean_sea_level_pressure",
    "sst": "sea_surface_temperature",
    "sp": "surface_pressure",
    "tp": "total_precipitation",
    "lsm": "land_sea_mask",
    "2d": "2m_dewpoint_temperature",
    "d2m": "2m_dewpoint_temperature",
    "tcwv": "total_column_water_vapour",
}


class LayoutError(ValueError):
    """A dataset cannot be brought to (or is not in) the canonical layout."""


_METRES = ("m", "metre", "metres", "meter", "meters")


def level_key(level: float) -> int | float:
    """A level as the key of its channel: an integral value as ``int`` (``500.0`` -> ``500``,
    so pressure channels stay ``temperature@500``), any other as ``float`` (``2.5``)."""
    value = float(level)
    return int(value) if value.is_integer() else value


def level_kind(level: xr.DataArray) -> str:
    """``"depth"`` for a level coordinate in metres of depth (units ``m`` or ``standard_name:
    depth``), else ``"pressure"`` (CF pressure levels say ``positive: down`` too, so that
    attribute alone decides nothing)."""
    attrs = level.attrs
    units = str(attrs.get("units", "")).strip().lower()
    if units in _METRES or str(attrs.get("standard_name", "")).lower() == "depth":
        return "depth"
    return "pressure"


def normalize(ds: xr.Dataset, source: str = "dataset") -> xr.Dataset:
    """Brings a dataset in any known layout to the canonical one (lazily).

    Handles: ``lat``/``lon``/``pressure_level``/``isobaricInhPa`` names, ensemble dims
    (``number``, ``realization``, ...) -> ``member``, ARCO's ``valid_time_start``/
    ``valid_time_stop`` attributes (time restricted to the valid range), level in Pa -> hPa
    (depth levels, see :func:`level_kind`, stay in metres, positive down),
    latitude descending -> ascending, longitude in [-180, 180) -> [0, 360), ``(longitude,
    latitude)`` storage order -> ``(latitude, longitude)``, ecCodes short names -> WB2 names,
    and a length-1 ``step`` dimension from forecast sources.
    """
    return normalize_arrays(normalize_coords(ds, source), source)


def normalize_coords(ds: xr.Dataset, source: str = "dataset") -> xr.Dataset:
    """The first stage of :func:`normalize`: names, valid time range, level units; touches
    no data array, so it is free on any store and selection can follow."""
    ds = _rename(ds, source)
    ds = _valid_time_range(ds)
    if "step" in ds.dims:
        if ds.sizes["step"] != 1:
            raise LayoutError(
                f"{source}: has {ds.sizes['step']} forecast steps; select one step first"
            )
        ds = ds.isel(step=0, drop=True)
    for required in ("latitude", "longitude"):
        if required not in ds.dims:
            raise LayoutError(f"{source}: no {required!r} dimension (dims: {sorted(ds.dims)})")
    if "level" in ds.coords:
        if level_kind(ds["level"]) == "depth":
            ds = _levels_in_metres(ds, source)
        else:
            ds = _levels_in_hpa(ds, source)
    return ds


def normalize_arrays(ds: xr.Dataset, source: str = "dataset") -> xr.Dataset:
    """The second stage of :func:`normalize`: latitude order, longitude range, dim order.
    Best applied to dask arrays (after selection), where it only rewrites the graph."""
    lat = np.asarray(ds["latitude"].values)
    if lat.size > 1 and np.all(np.diff(lat) < 0):
        ds = ds.isel(latitude=slice(None, None, -1))
    elif lat.size > 1 and not np.all(np.diff(lat) > 0):
        raise LayoutError(f"{source}: latitude is not monotonic")
    ds = _longitude_0_360(ds, source)
    order = [d for d in CANONICAL_DIMS if d in ds.dims]
    extra = [d for d in ds.dims if d not in CANONICAL_DIMS]
    if any(
        ds[v].dims != tuple(d for d in (*extra, *order) if d in ds[v].dims) for v in ds.variables
    ):
        ds = ds.transpose(*extra, *order)
    return ds


def _rename(ds: xr.Dataset, source: str) -> xr.Dataset:
    names = {}
    for old, new in DIM_ALIASES.items():
        if new is None or (old not in ds.variables and old not in ds.dims):
            continue
        if new in ds.variables or new in ds.dims:
            # A store with both (e.g. ``time`` and ``valid_time``): keep the canonical one.
            if old in ds.dims:
                raise LayoutError(f"{source}: has both {old!r} and {new!r} dimensions")
            continue
        names[old] = new
    ds = ds.rename(names)
    var_names = {
        name: ECCODES_NAMES[name]
        for name in ds.data_vars
        if name in ECCODES_NAMES and ECCODES_NAMES[name] not in ds.data_vars
    }
    ds = ds.rename(var_names)
    if "member" in ds.dims:
        ds["member"].attrs.setdefault("standard_name", "realization")
    return ds


def _valid_time_range(ds: xr.Dataset) -> xr.Dataset:
    start, stop = ds.attrs.get("valid_time_start"), ds.attrs.get("valid_time_stop")
    if "time" not in ds.dims or (start is None and stop is None):
        return ds
    return ds.sel(time=slice(start, stop))


def _levels_in_hpa(ds: xr.Dataset, source: str) -> xr.Dataset:
    level = ds["level"]
    units = str(level.attrs.get("units", "")).strip().lower()
    values = np.asarray(level.values, dtype=np.float64)
    if units in ("pa", "pascal", "pascals") or (not units and values.size and values.max() > 2000):
        values = values / 100.0
    elif units not in ("", "hpa", "millibars", "mbar", "mb"):
        raise LayoutError(f"{source}: level units {units!r} are not pressure (hPa or Pa)")
    if np.allclose(values, np.round(values)):
        values = np.round(values).astype(np.int64)
    attrs = {**level.attrs, "units": "hPa"}
    ds = ds.assign_coords(level=("level", values, attrs))
    return ds


def _levels_in_metres(ds: xr.Dataset, source: str) -> xr.Dataset:
    level = ds["level"]
    units = str(level.attrs.get("units", "m")).strip().lower()
    if units not in _METRES:
        raise LayoutError(f"{source}: depth levels in {units!r}; expected metres (m)")
    if str(level.attrs.get("positive", "down")).lower() != "down":
        raise LayoutError(f"{source}: depth levels must be positive down (level has positive: up)")
    values = np.asarray(level.values, dtype=np.float64)
    if values.size and not (np.all(np.isfinite(values)) and values.min() >= 0):
        raise LayoutError(f"{source}: depth levels must be finite and >= 0 m, got {values}")
    attrs = {**level.attrs, "units": "m", "positive": "down", "standard_name": "depth"}
    return ds.assign_coords(level=("level", values, attrs))


def _longitude_0_360(ds: xr.Dataset, source: str) -> xr.Dataset:
    lon = np.asarray(ds["longitude"].values, dtype=np.float64)
    wrapped = np.mod(lon, 360.0)
    wrapped[np.isclose(wrapped, 360.0)] = 0.0
    order = np.argsort(wrapped, kind="stable")
    if len(np.unique(wrapped)) != len(wrapped):
        raise LayoutError(f"{source}: duplicate longitudes after wrapping to [0, 360)")
    if np.array_equal(wrapped, lon) and np.all(order == np.arange(lon.size)):
        return ds
    attrs = ds["longitude"].attrs
    if np.all(order == np.arange(lon.size)):
        return ds.assign_coords(longitude=("longitude", wrapped, attrs))
    # A permutation index stays lazy (outer indexing of stores; on dask, at most two pieces
    # per chunk for the common [-180, 180) rotation).
    ds = ds.isel(longitude=order)
    return ds.assign_coords(longitude=("longitude", wrapped[order], attrs))


def check_canonical(ds: xr.Dataset, variables: Iterable[str] | None = None) -> None:
    """Raises :class:`LayoutError` unless ``ds`` is in the canonical layout."""
    problems = []
    for dim in ("latitude", "longitude"):
        if dim not in ds.dims:
            problems.append(f"missing dimension {dim!r}")
    if not problems:
        lat = ds["latitude"].values
        lon = ds["longitude"].values
        if not np.all(np.diff(lat) > 0):
            problems.append("latitude is not ascending")
        if lat.min() < -90 or lat.max() > 90:
            problems.append("latitude outside [-90, 90]")
        if not np.all(np.diff(lon) > 0) or lon.min() < 0 or lon.max() >= 360:
            problems.append("longitude is not ascending in [0, 360)")
    if "level" in ds.coords:
        units = str(ds["level"].attrs.get("units", "hPa"))
        if level_kind(ds["level"]) == "depth":
            if units != "m" or str(ds["level"].attrs.get("positive", "")) != "down":
                problems.append("depth levels must be in m, positive down")
        elif units != "hPa":
            problems.append(f"level units are {units!r}, not hPa")
    for name in variables if variables is not None else ds.data_vars:
        dims = ds[name].dims
        canonical = tuple(d for d in CANONICAL_DIMS if d in dims)
        if dims != canonical:
            problems.append(f"{name} has dims {dims}, expected {canonical}")
    if problems:
        raise LayoutError("not in the canonical layout: " + "; ".join(problems))
