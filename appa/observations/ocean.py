"""Ocean observing networks simulated from a sea's gridded truth (canonical layout with depth
levels, e.g. :mod:`appa.data.toy_sea`): satellite surface fields and Argo-like profiling floats.

Satellite fields (:func:`sea_surface_fields`), once per state time, each an area-weighted box
mean over ``factor x factor`` state cells (a ``footprint`` the operator reads as the same box
mean, so it is exact on the truth), plus Gaussian noise:

- ``sst``: infrared sea-surface temperature, variable ``temperature`` at the state's first
  depth level, lost under clouds;
- ``sss``: L-band microwave sea-surface salinity, ``salinity`` at the first level, coarse and
  noisy but seen through clouds;
- ``chlorophyll``: ocean colour at the first level, lost under clouds, with log-normal errors
  (a factor ``10**error_std``). An additive-Gaussian table holds them either as
  ``log10_chlorophyll`` (exactly Gaussian, for a state that carries log10 chlorophyll) or as
  ``chlorophyll`` with a relative error (``ln(10) error_std`` times the observed value, the
  first-order error of the log-normal; for a state that carries chlorophyll);
- ``ssh``: a gridded altimetry product (sea-surface height mapped from the altimeters' tracks
  daily, as in operational L4 products), not cloud-masked.

Boxes touching land (NaN anywhere in the box) are not observed, as coastal pixels are flagged
in real products. Clouds: a Gaussian random field, smooth in space (a Gaussian filter of
``cloud_length_km``) and red in time (correlation ``exp(-dt / cloud_days)``), the same for
every cloud-masked field on a day, thresholded so that the expected cloud fraction is the
month's ``cloud_fraction_monthly`` (more cloud in winter).

Floats (:func:`argo_floats`): deployed at random positions over water deeper than
``min_depth_m``, they drift by a random walk of ``drift_km_per_day`` per axis and day (a step
that would leave such water is not taken) and profile every ``cycle_days`` (phases drawn at
random): temperature, salinity and oxygen, bilinear in space (every cell read deeper than
``min_depth_m``), at the state's depth levels (or at ``depths_m``, linear in depth between two
levels) from the surface down to the parking depth or the sea floor, platform ``argo``, one
``station`` identifier per float.

Every network draws from its own random stream (the seed and the network's name), so turning
one on or off leaves the others' observations unchanged.
"""

from __future__ import annotations

import zlib
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import Field, field_validator

from appa.config import StrictModel
from appa.observations.schema import ObservationError, concat_tables, make_table

__all__ = [
    "SEA_SURFACE_SOURCES",
    "ChlorophyllConfig",
    "FloatsConfig",
    "SeaSurfaceConfig",
    "SurfaceFieldConfig",
    "argo_floats",
    "box_footprint",
    "box_means",
    "cloud_cover",
    "sea_surface_fields",
]

KM_PER_DEGREE = 111.195  # great-circle km per degree on a sphere of radius 6371 km
LN10 = float(np.log(10.0))


class SurfaceFieldConfig(StrictModel):
    """One satellite surface field: box size, error and whether clouds hide it."""

    enabled: bool = True
    factor: int = Field(2, ge=1, le=16, description="state cells per box side")
    error_std: float = Field(gt=0, description="Gaussian error, in the field's SI units")
    clouds: bool = Field(description="lost under clouds (infrared, visible sensors)")


class ChlorophyllConfig(SurfaceFieldConfig):
    """Ocean colour: log-normal errors, ``error_std`` in decades (log10)."""

    representation: Literal["relative", "log10"] = Field(
        "relative",
        description="chlorophyll with a relative error, or log10_chlorophyll (Gaussian)",
    )


def _monthly_fractions(value: list[float]) -> list[float]:
    if len(value) != 12 or any(not 0.0 <= v <= 1.0 for v in value):
        raise ValueError(f"cloud_fraction_monthly needs 12 fractions in [0, 1], got {value}")
    return value


class SeaSurfaceConfig(StrictModel):
    """Satellite surface fields of a sea (see the module docstring)."""

    enabled: bool = False
    sst: SurfaceFieldConfig = Field(
        default_factory=lambda: SurfaceFieldConfig(factor=2, error_std=0.4, clouds=True)
    )
    sss: SurfaceFieldConfig = Field(
        default_factory=lambda: SurfaceFieldConfig(factor=4, error_std=0.3, clouds=False)
    )
    chlorophyll: ChlorophyllConfig = Field(
        default_factory=lambda: ChlorophyllConfig(factor=2, error_std=0.15, clouds=True)
    )
    ssh: SurfaceFieldConfig = Field(
        default_factory=lambda: SurfaceFieldConfig(factor=4, error_std=0.03, clouds=False)
    )
    cloud_fraction_monthly: list[float] = Field(
        default_factory=lambda: [0.75, 0.72, 0.65, 0.55, 0.4, 0.3, 0.2, 0.2, 0.3, 0.45, 0.6, 0.72],
        description="expected cloud fraction, January to December",
    )
    cloud_length_km: float = Field(120.0, gt=0, description="Gaussian filter of the clouds")
    cloud_days: float = Field(2.0, gt=0, description="correlation time of the clouds")

    _fractions = field_validator("cloud_fraction_monthly")(_monthly_fractions)


class FloatsConfig(StrictModel):
    """Argo-like profiling floats (see the module docstring)."""

    enabled: bool = False
    count: int = Field(12, ge=1, description="floats at sea")
    cycle_days: float = Field(5.0, gt=0, description="days between a float's profiles")
    parking_depth_m: float = Field(1000.0, gt=0, description="deepest sample of a profile")
    min_depth_m: float = Field(200.0, ge=0, description="floats stay over deeper water")
    drift_km_per_day: float = Field(3.0, ge=0, description="random-walk std per axis and day")
    variables: list[str] = Field(default_factory=lambda: ["temperature", "salinity", "oxygen"])
    error_std: dict[str, float] = Field(
        default_factory=lambda: {"temperature": 0.01, "salinity": 0.01, "oxygen": 3.0}
    )
    depths_m: list[float] | None = Field(
        None, description="sample depths (m); default: the state's levels"
    )


def _rng(seed: int, network: str) -> np.random.Generator:
    """The random stream of one network: independent of which other networks run."""
    return np.random.default_rng([seed, zlib.crc32(network.encode())])


def _state_step_days(times: pd.DatetimeIndex) -> float:
    if len(times) < 2:
        return 1.0
    steps = np.diff(times.values).astype("timedelta64[s]").astype(np.float64) / 86400.0
    if not np.allclose(steps, steps[0]):
        raise ObservationError("ocean networks need regularly spaced truth times")
    return float(steps[0])


# ---------------------------------------------------------------------------- boxes, clouds
def box_footprint(grid_lat: np.ndarray, grid_lon: np.ndarray, factor: int) -> float:
    """The side (degrees) of the square ``footprint`` whose box, centred on a block of
    ``factor x factor`` cells, holds exactly those cells' centres (the operator's box rule) on
    a grid regular in latitude and longitude, with spacings that may differ."""
    dlat = float(np.mean(np.diff(grid_lat)))
    dlon = float(np.mean(np.diff(grid_lon)))
    low = (factor - 1) * max(dlat, dlon)  # reaches the block's outer centres
    high = (factor + 1) * min(dlat, dlon)  # stops short of the next row and column
    if not low < high:
        raise ObservationError(
            f"boxes of {factor} cells cannot be square footprints on a grid of "
            f"{dlat:g} x {dlon:g} degrees (the spacings differ too much)"
        )
    return 0.5 * (low + high)


def box_means(
    field: np.ndarray, grid_lat: np.ndarray, grid_lon: np.ndarray, factor: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area-weighted (``cos(latitude)``) means of ``field`` ``(..., lat, lon)`` over blocks of
    ``factor x factor`` cells, NaN where a block holds NaN: ``(..., lat / f, lon / f)``, with
    the blocks' centre latitudes and longitudes (the means of their cells' centres)."""
    ny, nx = field.shape[-2:]
    if ny % factor or nx % factor:
        raise ObservationError(f"a box of {factor} cells does not divide the grid {nx}x{ny}")
    weight = np.cos(np.radians(grid_lat)).reshape(-1, factor)  # (lat / f, f)
    blocks = field.reshape(*field.shape[:-2], ny // factor, factor, nx // factor, factor)
    w = weight[:, :, None, None]
    mean = (blocks * w).sum((-3, -1)) / (w.sum((-3, -1)) * factor)
    return mean, grid_lat.reshape(-1, factor).mean(1), grid_lon.reshape(-1, factor).mean(1)


def _filter_rows(points: np.ndarray, grid: np.ndarray, km_per_degree: float, length_km: float):
    """Gaussian weights ``(points, grid)`` with unit L2 norm per row (unit variance)."""
    d = (points[:, None] - grid[None, :]) * km_per_degree / length_km
    rows = np.exp(-0.5 * d**2)
    return rows / np.sqrt((rows**2).sum(1, keepdims=True))


def cloud_cover(
    times: pd.DatetimeIndex,
    latitude: np.ndarray,
    longitude: np.ndarray,
    grid_lat: np.ndarray,
    grid_lon: np.ndarray,
    config: SeaSurfaceConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Whether clouds hide each point of the tensor grid ``latitude x longitude`` at each time,
    ``(time, lat, lon)`` bool.

    White noise on the state grid ``grid_lat x grid_lon``, red in time (AR(1) of correlation
    ``exp(-dt / cloud_days)``, stationary), filtered by a Gaussian of ``cloud_length_km``
    (rows of unit norm: a standard normal field at every point) and thresholded at the normal
    quantile of the month's clear fraction, so the expected cloud fraction is the month's.
    """
    from scipy.stats import norm

    rho = float(np.exp(-_state_step_days(times) / config.cloud_days))
    mid = np.radians(0.5 * (grid_lat[0] + grid_lat[-1]))
    fy = _filter_rows(np.asarray(latitude), grid_lat, KM_PER_DEGREE, config.cloud_length_km)
    fx = _filter_rows(
        np.asarray(longitude), grid_lon, KM_PER_DEGREE * np.cos(mid), config.cloud_length_km
    )
    noise = rng.standard_normal((grid_lat.size, grid_lon.size))
    out = np.empty((len(times), len(latitude), len(longitude)), dtype=bool)
    for k, t in enumerate(times):
        if k:
            noise = rho * noise + np.sqrt(1.0 - rho**2) * rng.standard_normal(noise.shape)
        fraction = config.cloud_fraction_monthly[t.month - 1]
        out[k] = fy @ noise @ fx.T > norm.ppf(1.0 - fraction)
    return out


# ---------------------------------------------------------------------------- satellites
SEA_SURFACE_SOURCES = {
    # network: (truth variable, table variable, platform, at the first depth level)
    "sst": ("temperature", "temperature", "sst", True),
    "sss": ("salinity", "salinity", "sss", True),
    "chlorophyll": ("chlorophyll", "chlorophyll", "ocean_colour", True),
    "ssh": ("sea_surface_height", "sea_surface_height", "altimetry", False),
}


def sea_surface_fields(truth: xr.Dataset, config: SeaSurfaceConfig, seed: int) -> xr.Dataset:
    """Satellite fields of a sea's ``truth`` (canonical, in memory, depth levels) at each of
    its times (see the module docstring)."""
    times = pd.DatetimeIndex(truth["time"].values)
    glat, glon = truth["latitude"].values, truth["longitude"].values
    first_level = float(truth["level"].values[0]) if "level" in truth.coords else None
    clouds: dict[int, np.ndarray] = {}  # cloud cover on the boxes of each factor
    tables = []
    for name, (source, variable, platform, surface_level) in SEA_SURFACE_SOURCES.items():
        field = getattr(config, name)
        if not field.enabled:
            continue
        if source not in truth.data_vars:
            raise ObservationError(f"sea_surface.{name}: truth lacks {source}")
        da = truth[source]
        if surface_level:
            if "level" not in da.dims:
                raise ObservationError(f"sea_surface.{name}: {source} has no depth levels")
            da = da.isel(level=0)
        values = np.asarray(da.transpose("time", "latitude", "longitude").values, np.float64)
        mean, blat, blon = box_means(values, glat, glon, field.factor)
        keep = np.isfinite(mean)
        if field.clouds:
            if field.factor not in clouds:
                # the same noise history for every cloud-masked field: the same clouds
                rng = _rng(seed, "clouds")
                clouds[field.factor] = cloud_cover(times, blat, blon, glat, glon, config, rng)
            keep &= ~clouds[field.factor]
        rng = _rng(seed, name)
        true = mean[keep]
        n = int(keep.sum())
        if n == 0:
            continue
        level = np.nan if not surface_level else first_level
        if name == "chlorophyll":
            if np.any(true <= 0):
                raise ObservationError("sea_surface.chlorophyll: truth holds chlorophyll <= 0")
            log_value = np.log10(true) + field.error_std * rng.standard_normal(n)
            if field.representation == "log10":
                variable, value = "log10_chlorophyll", log_value
                error = np.full(n, field.error_std)
            else:
                value = 10.0**log_value
                error = LN10 * field.error_std * value
        else:
            value = true + field.error_std * rng.standard_normal(n)
            error = np.full(n, field.error_std)
        shape = mean.shape
        tables.append(
            make_table(
                np.broadcast_to(times.values[:, None, None], shape)[keep],
                np.broadcast_to(blat[None, :, None], shape)[keep],
                np.broadcast_to(blon[None, None, :], shape)[keep],
                variable,
                value,
                error,
                platform,
                level=level,
                footprint=box_footprint(glat, glon, field.factor),
            )
        )
    if not tables:
        raise ObservationError("sea_surface: no field observed anything")
    return concat_tables(tables)


# ---------------------------------------------------------------------------- floats
def _errors(config: FloatsConfig) -> dict[str, float]:
    missing = [v for v in config.variables if v not in config.error_std]
    if missing:
        raise ObservationError(f"floats: no error_std for {missing}")
    bad = {v: config.error_std[v] for v in config.variables if not config.error_std[v] > 0}
    if bad:
        raise ObservationError(f"floats: error_std must be positive, got {bad}")
    return {v: float(config.error_std[v]) for v in config.variables}


def argo_floats(truth: xr.Dataset, config: FloatsConfig, seed: int) -> xr.Dataset:
    """Profiles of drifting floats in a sea's ``truth`` (canonical, in memory, depth levels,
    with ``sea_floor_depth``); see the module docstring."""
    from appa.observations.operator import interpolation_weights

    errors = _errors(config)
    needed = [*config.variables, "sea_floor_depth"]
    missing = [v for v in needed if v not in truth.data_vars]
    if missing:
        raise ObservationError(f"floats: truth lacks {missing}; it has {sorted(truth.data_vars)}")
    rng = _rng(seed, "argo")
    times = pd.DatetimeIndex(truth["time"].values)
    step_days = _state_step_days(times)
    glat, glon = truth["latitude"].values, truth["longitude"].values
    levels = np.asarray(truth["level"].values, dtype=np.float64)
    floor = np.nan_to_num(np.asarray(truth["sea_floor_depth"].values, np.float64))
    flat_floor = floor.reshape(-1)

    def floor_at(lat, lon):
        """The sea floor's depth at each position (bilinear), 0 where a neighbour cell is land."""
        index, weights = interpolation_weights(lat, lon, glat, glon)
        depth = (flat_floor[index] * weights).sum(1)
        return np.where((flat_floor[index] > 0).all(1), depth, 0.0)

    def deep_enough(lat, lon):
        """Whether every cell a position reads lies deeper than ``min_depth_m`` (so a float
        over the slope does not read a shelf column)."""
        index, _ = interpolation_weights(lat, lon, glat, glon)
        return flat_floor[index].min(1) >= max(config.min_depth_m, 1e-9)

    def inside(lat, lon):
        return (glat[0] <= lat) & (lat <= glat[-1]) & (glon[0] <= lon) & (lon <= glon[-1])

    lat = np.empty(0)
    lon = np.empty(0)
    for _ in range(1000):
        cand_lat = rng.uniform(glat[0], glat[-1], 4 * config.count)
        cand_lon = rng.uniform(glon[0], glon[-1], 4 * config.count)
        ok = deep_enough(cand_lat, cand_lon)
        lat = np.concatenate([lat, cand_lat[ok]])[: config.count]
        lon = np.concatenate([lon, cand_lon[ok]])[: config.count]
        if lat.size == config.count:
            break
    else:
        raise ObservationError(f"floats: no water deeper than min_depth_m={config.min_depth_m}")
    cycle = max(1, round(config.cycle_days / step_days))
    phase = rng.integers(0, cycle, config.count)
    stations = np.array([f"argo-{k:03d}" for k in range(config.count)])
    wanted = levels if config.depths_m is None else np.asarray(config.depths_m, np.float64)
    wanted = np.sort(wanted[wanted <= config.parking_depth_m])
    if config.depths_m is not None:
        out_of_range = (wanted < levels[0]) | (wanted > levels[-1])
        if out_of_range.any():
            raise ObservationError(
                f"floats: depths_m {wanted[out_of_range].tolist()} lie outside the state's "
                f"levels [{levels[0]:g}, {levels[-1]:g}] m"
            )
    # each wanted depth between two levels: upper index and weight of the lower level
    upper = np.clip(np.searchsorted(levels, wanted, side="left"), 1, max(levels.size - 1, 1))
    exact = np.isin(wanted, levels)
    frac = np.where(exact, 0.0, (wanted - levels[upper - 1]) / (levels[upper] - levels[upper - 1]))
    lo = np.where(exact, np.searchsorted(levels, wanted), upper - 1)
    hi = np.where(exact, lo, upper)
    sigma_deg = config.drift_km_per_day * np.sqrt(step_days) / KM_PER_DEGREE
    columns: dict[str, list] = {k: [] for k in ("time", "lat", "lon", "level", "var", "value")}
    station_of: list[np.ndarray] = []
    fields = {v: np.asarray(truth[v].transpose("time", "level", "latitude", "longitude").values)
              for v in config.variables}  # fmt: skip
    for k, t in enumerate(times):
        if k and sigma_deg > 0:
            new_lat = lat + sigma_deg * rng.standard_normal(lat.size)
            new_lon = lon + sigma_deg * rng.standard_normal(lon.size) / np.cos(np.radians(lat))
            ok = inside(new_lat, new_lon)
            ok[ok] = deep_enough(new_lat[ok], new_lon[ok])
            lat, lon = np.where(ok, new_lat, lat), np.where(ok, new_lon, lon)
        active = np.flatnonzero((k + phase) % cycle == 0)
        if active.size == 0:
            continue
        index, weights = interpolation_weights(lat[active], lon[active], glat, glon)
        bottom = floor_at(lat[active], lon[active])
        for v in config.variables:
            column = fields[v][k].reshape(levels.size, -1)[:, index]  # (level, float, 4)
            at_levels = (column * weights[None]).sum(-1)  # NaN below a neighbour's floor
            values = (1.0 - frac)[:, None] * at_levels[lo] + frac[:, None] * at_levels[hi]
            # from the surface down to the first sample below the floor (or parking depth)
            valid = np.isfinite(values) & (wanted[:, None] < bottom[None, :])
            valid = np.cumprod(valid, axis=0).astype(bool)
            d, f = np.nonzero(valid)
            n = d.size
            columns["time"].append(np.full(n, t.to_datetime64()))
            columns["lat"].append(lat[active][f])
            columns["lon"].append(lon[active][f])
            columns["level"].append(wanted[d])
            columns["var"].append(np.full(n, v))
            columns["value"].append(values[d, f] + errors[v] * rng.standard_normal(n))
            station_of.append(stations[active][f])
    if not station_of or sum(s.size for s in station_of) == 0:
        raise ObservationError("floats: no profile in the truth's period")
    variable = np.concatenate(columns["var"])
    table = make_table(
        np.concatenate(columns["time"]),
        np.concatenate(columns["lat"]),
        np.concatenate(columns["lon"]),
        variable,
        np.concatenate(columns["value"]),
        np.array([errors[v] for v in variable]),
        "argo",
        level=np.concatenate(columns["level"]),
    )
    return table.assign(station=("obs", np.concatenate(station_of)))
