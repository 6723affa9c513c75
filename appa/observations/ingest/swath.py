"""Satellite swaths and gridded products (NetCDF or Zarr), thinned into superobservations on
the state grid.

A swath is a set of pixels along scan lines: data variables of dims such as ``(scanline,
pixel)`` with 2-D latitude and longitude of the same dims, a time per file, per scan line or
per pixel, a per-pixel quality flag and uncertainty. A gridded product is the same with 1-D
latitude and longitude. :func:`read_swath` reads the variables a :class:`SwathSpec` names and
averages the good pixels of each grid box and time into one superobservation.

Thinning: every good pixel goes to the grid box of its nearest cell centre (longitudes
periodic, latitudes clamped to the outermost rows: near a pole, the polar row), and to its
time rounded to the caller's step (:func:`~appa.observations.ingest.convert.round_times`).
A superobservation lies at its cell centre and rounded time, with ``footprint`` the grid
spacing so that the observation operator averages the box. Its value is the mean of its
``n`` pixels; its error is that of a mean of ``n`` errors of standard deviations ``sigma_i``
with a common correlation ``rho`` (:attr:`SwathSpec.error_correlation`)::

    error_std**2 = ((1 - rho) * sum(sigma_i**2) + rho * sum(sigma_i)**2) / n**2

With ``rho = 0`` (independent errors) this is ``sqrt(sum(sigma_i**2)) / n``, which shrinks
like ``1 / sqrt(n)`` without limit; but the errors of neighbouring pixels of one retrieval
share the same prior, calibration and forward-model errors, and that part does not average
out: with ``rho > 0`` a box of equal errors ``sigma`` tends to ``sqrt(rho) * sigma`` however
many pixels it holds, and a single pixel keeps ``sigma``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from appa.observations.ingest.convert import round_times, to_si, wrap_longitude
from appa.observations.ingest.reports import check_reports, empty_reports
from appa.observations.schema import ObservationError
from appa.observations.screening import CANONICAL_UNITS

__all__ = ["REJECTIONS", "SwathRead", "SwathSpec", "SwathVariable", "read_swath"]

# why pixels are not superobbed, in the order they are tested (a pixel counts under the first)
REJECTIONS = (
    "no_location",  # latitude or longitude missing or impossible
    "no_time",  # the time is missing
    "quality_flag",  # the flag says bad
    "missing",  # the value is missing (fill value, NaN)
    "outside_valid_range",  # outside the variable's valid range
    "missing_error",  # the pixel's uncertainty is missing or not positive
    "sparse_box",  # in a box and time with fewer than SwathSpec.min_pixels good pixels
)


@dataclass(frozen=True)
class SwathVariable:
    """One data variable of a swath.

    Attributes:
        variable: The canonical variable (:data:`CANONICAL_UNITS`).
        units: Units of the stored (decoded) values; None: the variable's ``units`` attribute.
        level: Pressure level (hPa) of a product on one level; None for a surface or
            column quantity, or when :attr:`SwathSpec.vertical` gives the levels.
        error: Variable of the per-pixel uncertainty (a standard deviation, in its own
            ``units`` attribute, else in the value's units).
        pixel_error: One uncertainty for every pixel (in the value's units), when the product
            gives none per pixel. Without ``error`` and ``pixel_error`` the superobservations
            have no error (NaN: the default error table fills it).
        valid_range: ``(low, high)`` valid values in the value's units; None: the variable's
            CF ``valid_range`` or ``valid_min``/``valid_max`` attributes, if any.
    """

    variable: str
    units: str | None = None
    level: float | None = None
    error: str | None = None
    pixel_error: float | None = None
    valid_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class SwathSpec:
    """What a swath or gridded product holds and where.

    Attributes:
        variables: Data variable -> :class:`SwathVariable`.
        latitude, longitude: Coordinate variables (degrees): 2-D along scan lines (dims such
            as ``(scanline, pixel)``) or 1-D for a regular grid; longitudes in any range.
        time: The time variable (CF-decoded; per file, per scan line or per pixel), or a
            global attribute holding one time for the file (``time_coverage_start``).
        vertical: Dimension of the pressure levels of a multi-level product (its coordinate
            in hPa or Pa by its ``units`` attribute), or None.
        levels: Levels (hPa) selected along ``vertical``; None: all of them.
        quality: The per-pixel quality flag variable, or None.
        good_values: Flag values of good pixels; None: any value.
        bad_bits: Bit mask of flag bits that mark a bad pixel (good: ``flag & bad_bits == 0``).
        instrument: Satellite and instrument, the reports' ``station`` (``metop-b/iasi``).
        error_correlation: Correlation ``rho`` in [0, 1] of the pixel errors within a box
            (see the module docstring).
        min_pixels: Fewest good pixels of a superobservation; boxes with fewer are dropped
            and their pixels counted as ``sparse_box``.
    """

    variables: Mapping[str, SwathVariable]
    latitude: str = "latitude"
    longitude: str = "longitude"
    time: str = "time"
    vertical: str | None = None
    levels: tuple[float, ...] | None = None
    quality: str | None = None
    good_values: tuple[int, ...] | None = None
    bad_bits: int = 0
    instrument: str = "satellite"
    error_correlation: float = 0.2
    min_pixels: int = 1

    def __post_init__(self) -> None:
        if not self.variables:
            raise ObservationError("SwathSpec: no variables")
        for name, spec in self.variables.items():
            if spec.variable not in CANONICAL_UNITS:
                raise ObservationError(
                    f"SwathSpec: {name!r} maps to {spec.variable!r}, which has no canonical "
                    f"units (known: {sorted(CANONICAL_UNITS)})"
                )
            if spec.units is not None:
                to_si(np.zeros(0), spec.units, spec.variable)
            if spec.error is not None and spec.pixel_error is not None:
                raise ObservationError(f"SwathSpec: {name!r} has both error and pixel_error")
            if spec.pixel_error is not None and not spec.pixel_error > 0:
                raise ObservationError(f"SwathSpec: {name!r} pixel_error must be positive")
            if spec.level is not None and self.vertical is not None:
                raise ObservationError(
                    f"SwathSpec: {name!r} has a level while levels come from {self.vertical!r}"
                )
        if not 0.0 <= self.error_correlation <= 1.0:
            raise ObservationError(
                f"SwathSpec: error_correlation {self.error_correlation} is not in [0, 1]"
            )
        if self.min_pixels < 1:
            raise ObservationError(f"SwathSpec: min_pixels {self.min_pixels} must be >= 1")
        if self.quality is None and (self.good_values is not None or self.bad_bits):
            raise ObservationError("SwathSpec: good_values or bad_bits without a quality flag")


@dataclass
class SwathRead:
    """What :func:`read_swath` returns.

    Attributes:
        reports: Decoded reports (:mod:`~appa.observations.ingest.reports`), one per variable,
            level, grid box and time.
        rejected_pixels: Pixel values not superobbed, by reason (:data:`REJECTIONS`).
        pixels_read: Pixel values read (pixels x variables x levels).
    """

    reports: pd.DataFrame
    rejected_pixels: dict[str, int] = field(default_factory=dict)
    pixels_read: int = 0


def _open(path: str | os.PathLike) -> xr.Dataset:
    p = Path(path)
    if not p.exists():
        raise ObservationError(f"{path}: no such file or store")
    try:
        if p.is_dir() or p.suffix == ".zarr":
            return xr.open_dataset(p, engine="zarr", chunks=None)
        return xr.open_dataset(p, chunks=None, cache=False)
    except (OSError, ValueError, KeyError) as error:
        raise ObservationError(f"{path}: cannot be opened as NetCDF or Zarr ({error})") from None


class _Grid:
    """Nearest cell centres of a latitude-longitude grid."""

    def __init__(self, latitude: np.ndarray, longitude: np.ndarray):
        lat = np.asarray(latitude, dtype=np.float64)
        lon = np.asarray(longitude, dtype=np.float64)
        if lat.ndim != 1 or lat.size < 1 or np.any(np.diff(lat) <= 0) or np.any(np.abs(lat) > 90):
            raise ObservationError("grid latitudes must be 1-D, ascending and within [-90, 90]")
        if lon.ndim != 1 or lon.size < 1 or np.any(np.diff(lon) <= 0):
            raise ObservationError("grid longitudes must be 1-D and ascending")
        if lon[0] < 0 or lon[-1] >= 360:
            raise ObservationError("grid longitudes must lie in [0, 360)")
        self.latitude, self.longitude = lat, lon
        # periodic neighbours on both sides, so that a search never falls off an end
        self._lon = np.concatenate([[lon[-1] - 360.0], lon, [lon[0] + 360.0]])
        spacings = [*np.diff(lat), *np.diff(self._lon)]
        # the smallest spacing: a box of that side around a centre holds no other centre
        self.spacing = float(min(spacings)) if spacings else 360.0
        # regular axes are indexed by arithmetic instead of a search (several times faster)
        self._dlat = _regular_step(lat)
        self._dlon = _regular_step(self._lon)

    def cells(self, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
        """Flat index ``j * nlon + i`` of the nearest cell centre (halfway: the northern,
        the eastern)."""
        lat = self.latitude
        if lat.size == 1:
            j = np.zeros(np.shape(latitude), dtype=np.int64)
        elif self._dlat is not None:
            j = np.floor((latitude - lat[0]) / self._dlat + 0.5).astype(np.int64)
            j = np.clip(j, 0, lat.size - 1)
        else:
            j = np.clip(np.searchsorted(lat, latitude), 1, lat.size - 1)
            j = np.where(latitude - lat[j - 1] < lat[j] - latitude, j - 1, j)
        wrapped = wrap_longitude(longitude)
        ext = self._lon
        if self._dlon is not None:
            i = np.floor((wrapped - ext[0]) / self._dlon + 0.5).astype(np.int64)
        else:
            i = np.clip(np.searchsorted(ext, wrapped), 1, ext.size - 1)
            i = np.where(wrapped - ext[i - 1] < ext[i] - wrapped, i - 1, i)
        i = (i - 1) % self.longitude.size
        return j * self.longitude.size + i


def _regular_step(axis: np.ndarray) -> float | None:
    """The spacing of an evenly spaced axis, or None."""
    if axis.size < 2:
        return None
    step = np.diff(axis)
    return float(step.mean()) if np.allclose(step, step.mean(), rtol=1e-9, atol=0) else None


def _levels_hpa(coord: xr.DataArray, source: str) -> np.ndarray:
    values = np.asarray(coord.values, dtype=np.float64)
    units = coord.attrs.get("units")
    if units is None:
        if values.size and np.nanmax(values) > 1100:
            raise ObservationError(
                f"{source}: levels {coord.name!r} have no units and exceed 1100 (Pa?); "
                "give them a units attribute"
            )
        return values
    return to_si(values, str(units), "surface_pressure") / 100.0


def _valid_range(da: xr.DataArray, spec: SwathVariable) -> tuple[float, float] | None:
    """The valid range in decoded units: CF ranges are written in the stored (packed)
    units, so they go through the variable's scale and offset."""
    if spec.valid_range is not None:
        return float(spec.valid_range[0]), float(spec.valid_range[1])
    attrs = {**da.encoding, **da.attrs}
    if "valid_range" in attrs:
        low, high = (float(x) for x in np.asarray(attrs["valid_range"]).ravel()[:2])
    elif "valid_min" in attrs or "valid_max" in attrs:
        low = float(attrs.get("valid_min", -np.inf))
        high = float(attrs.get("valid_max", np.inf))
    else:
        return None
    scale = float(da.encoding.get("scale_factor", 1.0))
    offset = float(da.encoding.get("add_offset", 0.0))
    low, high = low * scale + offset, high * scale + offset
    return (min(low, high), max(low, high))


def _times(ds: xr.Dataset, spec: SwathSpec, source: str) -> xr.DataArray:
    if spec.time in ds.variables:
        time = ds[spec.time]
        if time.dtype.kind != "M":
            raise ObservationError(
                f"{source}: time {spec.time!r} is not decoded to times (dtype {time.dtype}); "
                "it needs CF units such as 'seconds since 2000-01-01'"
            )
        return time.astype("datetime64[ns]")
    if spec.time in ds.attrs:
        try:
            stamp = pd.Timestamp(str(ds.attrs[spec.time]))
        except ValueError:
            raise ObservationError(
                f"{source}: attribute {spec.time!r} = {ds.attrs[spec.time]!r} is not a time"
            ) from None
        if stamp.tzinfo is not None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        return xr.DataArray(np.datetime64(stamp.as_unit("ns").asm8))
    raise ObservationError(
        f"{source}: no time variable or attribute {spec.time!r} (variables: "
        f"{sorted(map(str, ds.variables))})"
    )


def _flat(da: xr.DataArray, like: xr.DataArray) -> np.ndarray:
    extra = set(da.dims) - set(like.dims)
    if extra:
        raise ObservationError(
            f"{da.name!r} has dims {da.dims} beyond those of the data {like.dims}"
        )
    return np.ascontiguousarray(da.broadcast_like(like).transpose(*like.dims).values).ravel()


def read_swath(
    path: str | os.PathLike,
    spec: SwathSpec,
    grid_latitude: np.ndarray,
    grid_longitude: np.ndarray,
    time_step: str | pd.Timedelta,
) -> SwathRead:
    """Superobservations of a swath or gridded product on a state grid (see the module
    docstring for the thinning and the error rule).

    Arguments:
        path: A NetCDF file or a Zarr store (a directory, or a name ending in ``.zarr``).
        spec: What the product holds (:class:`SwathSpec`).
        grid_latitude: The state's latitudes ``(H,)``, ascending (degrees, cell centres).
        grid_longitude: The state's longitudes ``(W,)``, ascending in [0, 360).
        time_step: The states' time step: pixels are grouped by their time rounded to it.

    Returns:
        :class:`SwathRead`: the reports (``station`` the instrument, ``platform``
        ``satellite``, ``footprint`` the grid spacing), pixel values rejected by reason,
        pixel values read.

    Raises:
        ObservationError: Naming the file and the variable: a variable, coordinate or level
            that is not there, units that are missing or cannot be converted, a time that is
            not a time.
    """
    source = str(path)
    grid = _Grid(grid_latitude, grid_longitude)
    nlon = grid.longitude.size
    ncell = grid.latitude.size * nlon
    rho = spec.error_correlation
    rejected = dict.fromkeys(REJECTIONS, 0)
    pixels_read = 0
    frames = []
    with _open(path) as ds:
        needed = [spec.latitude, spec.longitude, *spec.variables]
        needed += [spec.quality] if spec.quality else []
        needed += [v.error for v in spec.variables.values() if v.error]
        absent = [name for name in needed if name not in ds.variables]
        if absent:
            raise ObservationError(
                f"{source}: no variables {absent} (variables: {sorted(map(str, ds.variables))})"
            )
        latitude, longitude = ds[spec.latitude], ds[spec.longitude]
        time = _times(ds, spec, source)
        flag = ds[spec.quality] if spec.quality else None
        for name, var in spec.variables.items():
            da = ds[name]
            units = var.units if var.units is not None else da.attrs.get("units")
            if units is None:
                raise ObservationError(
                    f"{source}: variable {name!r} has no units attribute; give its units"
                )
            try:
                zero = to_si(np.zeros(1), str(units), var.variable)[0]
            except ObservationError as error:
                raise ObservationError(f"{source}: variable {name!r}: {error}") from None
            error_units = units
            if var.error is not None:
                error_units = ds[var.error].attrs.get("units", units)
                try:
                    error_zero = to_si(np.zeros(1), str(error_units), var.variable)[0]
                except ObservationError as error:
                    raise ObservationError(f"{source}: variable {var.error!r}: {error}") from None
            else:
                error_zero = zero
            valid = _valid_range(da, var)
            if spec.vertical is not None and spec.vertical in da.dims:
                if spec.vertical not in ds.variables:
                    raise ObservationError(
                        f"{source}: dimension {spec.vertical!r} has no coordinate of levels"
                    )
                have = _levels_hpa(ds[spec.vertical], source)
                wanted = have if spec.levels is None else np.asarray(spec.levels, np.float64)
                picks = []
                for level in wanted:
                    hit = np.flatnonzero(np.isclose(have, level))
                    if hit.size == 0:
                        raise ObservationError(
                            f"{source}: variable {name!r} has no level {level:g} hPa "
                            f"(levels: {[float(h) for h in have]})"
                        )
                    picks.append((float(level), int(hit[0])))
            else:
                picks = [(var.level, None)]
            for level, k in picks:
                data = da if k is None else da.isel({spec.vertical: k})
                try:
                    lat = _flat(latitude, data)
                    lon = _flat(longitude, data)
                    times = _flat(time, data)
                    values = np.asarray(data.values, dtype=np.float64).ravel()
                    sigma = None
                    if var.error is not None:
                        err = ds[var.error]
                        if spec.vertical in err.dims and k is not None:
                            err = err.isel({spec.vertical: k})
                        sigma = np.asarray(_flat(err, data), dtype=np.float64)
                    flags = _flat(flag, data) if flag is not None else None
                except ObservationError as error:
                    raise ObservationError(f"{source}: variable {name!r}: {error}") from None
                pixels_read += values.size

                reason = np.zeros(values.size, dtype=np.int8)  # 0: good, else 1 + REJECTIONS

                def reject(bad: np.ndarray, why: str, reason=reason) -> None:
                    reason[bad & (reason == 0)] = 1 + REJECTIONS.index(why)

                reject(~(np.abs(lat) <= 90) | ~np.isfinite(lon), "no_location")
                reject(np.isnat(times), "no_time")
                if flags is not None:
                    reject(_bad_flags(flags, spec), "quality_flag")
                reject(np.isnan(values), "missing")
                if valid is not None:
                    with np.errstate(invalid="ignore"):
                        reject((values < valid[0]) | (values > valid[1]), "outside_valid_range")
                if sigma is not None:
                    reject(~(sigma > 0), "missing_error")

                good = np.flatnonzero(reason == 0)
                frame, sparse = _superobs(
                    grid,
                    ncell,
                    good,
                    lat,
                    lon,
                    times,
                    values,
                    sigma,
                    var.pixel_error,
                    rho,
                    spec.min_pixels,
                    time_step,
                )
                counts = np.bincount(reason, minlength=1 + len(REJECTIONS))[1:]
                for why, count in zip(REJECTIONS, counts, strict=True):
                    rejected[why] += int(count)
                rejected["sparse_box"] += sparse
                if frame is None:
                    continue
                frame["value"] = to_si(frame["value"].to_numpy(), str(units), var.variable)
                frame["error_std"] = (
                    to_si(frame["error_std"].to_numpy(), str(error_units), var.variable)
                    - error_zero
                )
                frame["variable"] = var.variable
                frame["level"] = np.nan if level is None else level
                frames.append(frame)
    if not frames:
        return SwathRead(empty_reports(), rejected, pixels_read)
    reports = pd.concat(frames, ignore_index=True)
    reports["station"] = spec.instrument
    reports["platform"] = "satellite"
    reports["elevation"] = np.nan
    reports["footprint"] = grid.spacing
    reports["reason"] = ""
    return SwathRead(check_reports(reports, source=source), rejected, pixels_read)


def _bad_flags(flags: np.ndarray, spec: SwathSpec) -> np.ndarray:
    """Pixels whose flag is missing or says bad."""
    flags = np.asarray(flags)
    if flags.dtype.kind == "f":  # a flag with a fill value decodes to floats with NaN
        missing = ~np.isfinite(flags)
        codes = np.where(missing, 0, flags).astype(np.int64)
    else:
        missing = np.zeros(flags.shape, dtype=bool)
        codes = flags.astype(np.int64)
    bad = missing
    if spec.good_values is not None:
        bad = bad | ~np.isin(codes, np.asarray(spec.good_values, dtype=np.int64))
    if spec.bad_bits:
        bad = bad | ((codes & int(spec.bad_bits)) != 0)
    return bad


def _superobs(
    grid: _Grid,
    ncell: int,
    good: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    times: np.ndarray,
    values: np.ndarray,
    sigma: np.ndarray | None,
    pixel_error: float | None,
    rho: float,
    min_pixels: int,
    time_step: str | pd.Timedelta,
) -> tuple[pd.DataFrame | None, int]:
    """Means per box and rounded time of the ``good`` pixels (values and errors in the
    source units), and the number of pixels dropped in sparse boxes."""
    if good.size == 0:
        return None, 0
    cell = grid.cells(lat[good], lon[good])
    rounded, _, _ = round_times(times[good], time_step, time_step)
    t_code, t_values = pd.factorize(rounded.astype(np.int64), sort=True)
    key = t_code.astype(np.int64) * ncell + cell
    code, boxes = pd.factorize(key, sort=True)
    n = np.bincount(code).astype(np.float64)
    value = np.bincount(code, weights=values[good]) / n
    if sigma is not None or pixel_error is not None:
        s = sigma[good] if sigma is not None else np.full(good.size, float(pixel_error))
        s1 = np.bincount(code, weights=s)
        s2 = np.bincount(code, weights=s * s)
        error = np.sqrt(np.maximum((1.0 - rho) * s2 + rho * s1 * s1, 0.0)) / n
    else:
        error = np.full(n.size, np.nan)
    keep = n >= min_pixels
    sparse = int(n[~keep].sum())
    if not keep.any():
        return None, sparse
    boxes = np.asarray(boxes)[keep]
    cells = boxes % ncell
    frame = pd.DataFrame(
        {
            "time": np.asarray(t_values)[boxes // ncell].astype("datetime64[ns]"),
            "latitude": grid.latitude[cells // grid.longitude.size],
            "longitude": grid.longitude[cells % grid.longitude.size],
            "value": value[keep],
            "error_std": error[keep],
        }
    )
    return frame, sparse
