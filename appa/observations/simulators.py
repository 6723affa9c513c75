"""Observation simulators from any gridded truth in the canonical layout.

- Surface stations: given coordinates or a random network of a configured density, surface
  variables at every state time.
- A low-Earth-orbit satellite: circular orbit (altitude, inclination), Earth rotating below
  it; grid cells within a swath radius of the ground track observe atmospheric variables on
  all requested levels, assigned to the nearest state time.
- Coarse-grained fields: area-weighted means over boxes of ``factor x factor`` cells.
- A sea's networks (:mod:`appa.observations.ocean`): satellite surface fields (SST, SSS, ocean
  colour, altimetry) under clouds, and Argo-like profiling floats.
- Radiosondes: fixed sites launching at given hours of the day, upper-air variables at the
  truth's levels and at significant levels between them.

Values are the truth seen through the same weights as the operator in
:mod:`appa.observations.operator` (so the operator is exact on the truth), plus Gaussian noise
of standard deviation ``error_std``.

``format: bufr`` writes the station and radiosonde reports as WMO BUFR files instead of an
observation store, the way real reports arrive (read back by ``appa ingest``): each station
stands at its own elevation, the model's ground plus a sub-grid departure, and reports the 2 m
temperature of that height.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import Field

from appa.config import StrictModel, Timestamp
from appa.observations.ocean import (
    SEA_SURFACE_SOURCES,
    FloatsConfig,
    SeaSurfaceConfig,
    argo_floats,
)
from appa.observations.ocean import sea_surface_fields as sea_surface
from appa.observations.schema import ObservationError, concat_tables, make_table

__all__ = [
    "CoarseConfig",
    "ObserveConfig",
    "RadiosondesConfig",
    "SatelliteConfig",
    "StationsConfig",
    "coarse_grained",
    "ground_track",
    "radiosondes",
    "satellite_swath",
    "simulate",
    "surface_stations",
]

EARTH_RADIUS_KM = 6371.0
GM = 3.986004418e14  # m^3/s^2
SIDEREAL_DAY = 86164.0905  # s
EARTH_AREA_MKM2 = 4 * np.pi * EARTH_RADIUS_KM**2 / 1e6  # million km^2


class StationsConfig(StrictModel):
    """Surface stations."""

    enabled: bool = True
    variables: list[str] = Field(
        default_factory=lambda: ["2m_temperature", "mean_sea_level_pressure"]
    )
    density: float = Field(2.0, gt=0, description="stations per million km^2 (random network)")
    latitudes: list[float] | None = Field(None, description="fixed network (with longitudes)")
    longitudes: list[float] | None = None
    land_only: bool = Field(False, description="keep random stations on land (land_sea_mask)")
    error_std: dict[str, float] = Field(
        default_factory=lambda: {"2m_temperature": 0.5, "mean_sea_level_pressure": 100.0}
    )
    elevation_std: float = Field(
        150.0,
        ge=0,
        description="format bufr: m, spread of station heights about the model's ground",
    )


class SatelliteConfig(StrictModel):
    """A low-Earth-orbit satellite with a swath."""

    enabled: bool = True
    variables: list[str] = Field(default_factory=lambda: ["temperature"])
    levels: list[int] | None = Field(None, description="default: all levels of the truth")
    altitude_km: float = Field(800.0, gt=100, lt=5000)
    inclination_deg: float = Field(75.0, ge=0, le=180)
    swath_radius_deg: float = Field(5.0, gt=0, le=60, description="great-circle radius")
    ascending_node_deg: float = 0.0
    sample_seconds: float = Field(60.0, gt=0, description="ground-track sampling")
    error_std: dict[str, float] = Field(default_factory=lambda: {"temperature": 1.0})


class CoarseConfig(StrictModel):
    """Coarse-grained fields."""

    enabled: bool = False
    variables: list[str] = Field(default_factory=lambda: ["geopotential"])
    levels: list[int] | None = None
    factor: int = Field(4, ge=2)
    every_hours: float = Field(24.0, gt=0)
    error_std: dict[str, float] = Field(default_factory=lambda: {"geopotential": 50.0})


class RadiosondesConfig(StrictModel):
    """Radiosondes: fixed sites, one sounding per site at each of ``hours`` (UTC)."""

    enabled: bool = False
    sites: int = Field(30, ge=1, description="random sites, uniform on the sphere")
    hours: list[int] = Field(default_factory=lambda: [0, 12])
    variables: list[str] = Field(default_factory=lambda: ["temperature", "geopotential"])
    levels: list[int] | None = Field(None, description="default: all levels of the truth")
    significant_levels: int = Field(
        1, ge=0, description="levels between each pair of neighbouring levels, per sounding"
    )
    error_std: dict[str, float] = Field(
        default_factory=lambda: {"temperature": 0.8, "geopotential": 100.0}
    )


class ObserveConfig(StrictModel):
    """Settings of ``appa observe``: the atmosphere's networks (stations, satellite, coarse,
    radiosondes) and a sea's (sea_surface, floats; off by default, see
    ``pipelines/configs/observe_sea.yaml``).

    ``format``: ``zarr``, an observation store; ``bufr``, a folder of WMO BUFR files, one per
    day and kind (``synop-YYYY-MM-DD.bufr`` of the stations, ``temp-YYYY-MM-DD.bufr`` of the
    radiosondes), for ``appa ingest``.
    """

    seed: int = 0
    format: Literal["zarr", "bufr"] = "zarr"
    start: Timestamp | None = Field(None, description="first truth time observed (inclusive)")
    end: Timestamp | None = Field(None, description="last truth time observed (inclusive)")

    partition: str = "1D"
    stations: StationsConfig = Field(default_factory=StationsConfig)
    satellite: SatelliteConfig = Field(default_factory=SatelliteConfig)
    coarse: CoarseConfig = Field(default_factory=CoarseConfig)
    sea_surface: SeaSurfaceConfig = Field(default_factory=SeaSurfaceConfig)
    floats: FloatsConfig = Field(default_factory=FloatsConfig)
    radiosondes: RadiosondesConfig = Field(default_factory=RadiosondesConfig)


def _errors(variables: Sequence[str], error_std: Mapping[str, float], what: str) -> dict:
    missing = [v for v in variables if v not in error_std]
    if missing:
        raise ObservationError(f"{what}: no error_std for {missing}")
    bad = {v: error_std[v] for v in variables if not error_std[v] > 0}
    if bad:
        raise ObservationError(f"{what}: error_std must be positive, got {bad}")
    return {v: float(error_std[v]) for v in variables}


def _check_truth(truth: xr.Dataset, variables: Sequence[str], surface: bool | None, what: str):
    missing = [v for v in variables if v not in truth.data_vars]
    if missing:
        raise ObservationError(f"{what}: truth lacks {missing}; it has {sorted(truth.data_vars)}")
    for v in variables:
        has_level = "level" in truth[v].dims
        if surface is True and has_level:
            raise ObservationError(f"{what}: {v} is not a surface variable")
        if surface is False and not has_level:
            raise ObservationError(f"{what}: {v} has no levels")


def _bilinear(field: np.ndarray, lat: np.ndarray, lon: np.ndarray, grid_lat, grid_lon):
    from appa.observations.operator import interpolation_weights

    index, weights = interpolation_weights(lat, lon, grid_lat, grid_lon)
    flat = field.reshape(*field.shape[:-2], -1)
    return (flat[..., index] * weights).sum(-1)


def surface_stations(
    truth: xr.Dataset, config: StationsConfig, rng: np.random.Generator
) -> xr.Dataset:
    """Stations observing surface variables at every time of ``truth``."""
    errors = _errors(config.variables, config.error_std, "stations")
    _check_truth(truth, config.variables, True, "stations")
    if config.latitudes is not None or config.longitudes is not None:
        if config.latitudes is None or config.longitudes is None:
            raise ObservationError("stations: give both latitudes and longitudes")
        lat = np.asarray(config.latitudes, dtype=np.float64)
        lon = np.asarray(config.longitudes, dtype=np.float64)
        if lat.shape != lon.shape:
            raise ObservationError("stations: latitudes and longitudes differ in length")
    else:
        n = max(1, round(config.density * EARTH_AREA_MKM2))
        # Uniform on the sphere: sin(latitude) uniform.
        lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 4 * n if config.land_only else n)))
        lon = rng.uniform(0, 360, lat.size)
        if config.land_only:
            if "land_sea_mask" not in truth:
                raise ObservationError("stations: land_only needs land_sea_mask in the truth")
            mask = truth["land_sea_mask"].values
            on_land = _bilinear(mask, lat, lon, truth.latitude.values, truth.longitude.values) > 0.5
            lat, lon = lat[on_land][:n], lon[on_land][:n]
    times = truth["time"].values
    glat, glon = truth.latitude.values, truth.longitude.values
    tables = []
    for v in config.variables:
        values = _bilinear(truth[v].values, lat, lon, glat, glon)  # (time, station)
        keep = np.isfinite(values)  # e.g. SST seen from a station on land: no observation
        tt = np.broadcast_to(times[:, None], values.shape)[keep]
        la = np.broadcast_to(lat[None, :], values.shape)[keep]
        lo = np.broadcast_to(lon[None, :], values.shape)[keep]
        noisy = values[keep] + errors[v] * rng.standard_normal(int(keep.sum()))
        tables.append(make_table(tt, la, lo, v, noisy, errors[v], "station"))
    return concat_tables(tables)


def ground_track(seconds: np.ndarray, config: SatelliteConfig) -> tuple[np.ndarray, np.ndarray]:
    """Sub-satellite latitude and longitude (degrees) at ``seconds`` since the epoch of the
    orbit: circular Kepler orbit, Earth rotating eastward underneath."""
    a = (EARTH_RADIUS_KM + config.altitude_km) * 1e3
    period = 2 * np.pi * np.sqrt(a**3 / GM)
    u = 2 * np.pi * seconds / period  # argument of latitude
    inc = np.radians(config.inclination_deg)
    lat = np.arcsin(np.sin(inc) * np.sin(u))
    lon = np.radians(config.ascending_node_deg) + np.arctan2(np.cos(inc) * np.sin(u), np.cos(u))
    lon -= 2 * np.pi * seconds / SIDEREAL_DAY
    return np.degrees(lat), np.mod(np.degrees(lon), 360.0)


def satellite_swath(
    truth: xr.Dataset, config: SatelliteConfig, rng: np.random.Generator
) -> xr.Dataset:
    """Grid cells under the swath during each state's interval, on all requested levels."""
    errors = _errors(config.variables, config.error_std, "satellite")
    _check_truth(truth, config.variables, False, "satellite")
    levels = config.levels if config.levels is not None else truth["level"].values.tolist()
    missing = [p for p in levels if p not in truth["level"].values]
    if missing:
        raise ObservationError(f"satellite: truth lacks levels {missing}")
    times = pd.DatetimeIndex(truth["time"].values)
    step = (times[1] - times[0]) if len(times) > 1 else pd.Timedelta(hours=1)
    epoch = pd.Timestamp("2000-01-01")
    glat, glon = truth.latitude.values, truth.longitude.values
    cell_lat = np.radians(glat)[:, None] * np.ones((1, glon.size))
    cell_lon = np.radians(glon)[None, :] * np.ones((glat.size, 1))
    cos_r = np.cos(np.radians(config.swath_radius_deg))
    tables = []
    for k, t in enumerate(times):
        # Track during [t - step/2, t + step/2): these cells are assigned to state t.
        s0 = (t - step / 2 - epoch).total_seconds()
        secs = s0 + np.arange(0, step.total_seconds(), config.sample_seconds)
        tlat, tlon = (np.radians(a) for a in ground_track(secs, config))
        seen = np.zeros(cell_lat.shape, dtype=bool)
        for la, lo in zip(tlat, tlon, strict=True):
            cos_d = np.sin(la) * np.sin(cell_lat) + np.cos(la) * np.cos(cell_lat) * np.cos(
                cell_lon - lo
            )
            seen |= cos_d >= cos_r
        jj, ii = np.nonzero(seen)
        if jj.size == 0:
            continue
        for v in config.variables:
            field = truth[v].isel(time=k).sel(level=levels).values  # (level, lat, lon)
            vals = field[:, jj, ii]  # (level, n)
            n = vals.size
            noisy = vals + errors[v] * rng.standard_normal(vals.shape)
            tables.append(
                make_table(
                    np.full(n, t.to_datetime64()),
                    np.broadcast_to(glat[jj], vals.shape).reshape(-1),
                    np.broadcast_to(glon[ii], vals.shape).reshape(-1),
                    v,
                    noisy.reshape(-1),
                    errors[v],
                    "satellite",
                    level=np.repeat(np.asarray(levels, dtype=np.float64), jj.size),
                )
            )
    if not tables:
        raise ObservationError("satellite: the swath saw no grid cell")
    return concat_tables(tables)


def coarse_grained(truth: xr.Dataset, config: CoarseConfig, rng: np.random.Generator) -> xr.Dataset:
    """Area-weighted means over ``factor x factor`` cell boxes, every ``every_hours``."""
    errors = _errors(config.variables, config.error_std, "coarse")
    _check_truth(truth, config.variables, None, "coarse")
    glat, glon = truth.latitude.values, truth.longitude.values
    f = config.factor
    if glat.size % f or glon.size % f:
        raise ObservationError(
            f"coarse: factor {f} does not divide the grid {glon.size}x{glat.size}"
        )
    dlat, dlon = np.diff(glat).mean(), 360.0 / glon.size
    if not np.isclose(dlat, dlon):
        raise ObservationError("coarse: boxes need an equiangular grid")
    times = pd.DatetimeIndex(truth["time"].values)
    hours = np.asarray((times - times[0]) / pd.Timedelta(hours=1))
    pick = np.flatnonzero(np.isclose(np.mod(hours, config.every_hours), 0))
    area = np.cos(np.radians(glat))
    box_w = area.reshape(-1, f)
    centre_lat = (glat.reshape(-1, f)).mean(1)
    centre_lon = (glon.reshape(-1, f)).mean(1)
    tables = []
    for v in config.variables:
        da = truth[v].isel(time=pick)
        levels = [None]
        if "level" in da.dims:
            levels = config.levels if config.levels is not None else da["level"].values.tolist()
        for p in levels:
            x = (da if p is None else da.sel(level=p)).values  # (time, lat, lon)
            blocks = x.reshape(x.shape[0], -1, f, glon.size // f, f)
            w = box_w[None, :, :, None, None]
            mean = (blocks * w).sum((2, 4)) / (w.sum((2, 4)) * f)
            # Boxes touching NaN (masked fields) are not observed.
            keep = np.isfinite(mean)
            tt = np.broadcast_to(times[pick].values[:, None, None], mean.shape)[keep]
            la = np.broadcast_to(centre_lat[None, :, None], mean.shape)[keep]
            lo = np.broadcast_to(centre_lon[None, None, :], mean.shape)[keep]
            noisy = mean[keep] + errors[v] * rng.standard_normal(int(keep.sum()))
            tables.append(
                make_table(
                    tt,
                    la,
                    lo,
                    v,
                    noisy,
                    errors[v],
                    "coarse",
                    level=np.nan if p is None else float(p),
                    footprint=f * dlon * (1 - 1e-6),
                )
            )
    return concat_tables(tables)


def radiosondes(
    truth: xr.Dataset, config: RadiosondesConfig, rng: np.random.Generator
) -> xr.Dataset:
    """Soundings of fixed sites at the truth's times whose hour is one of ``config.hours``:
    the truth at its levels and, at ``significant_levels`` pressures (whole hPa) drawn per
    sounding between each pair of neighbouring levels, the truth interpolated linearly in
    log-pressure between them (the truth holds nothing in between)."""
    errors = _errors(config.variables, config.error_std, "radiosondes")
    _check_truth(truth, config.variables, False, "radiosondes")
    have = truth["level"].values.tolist()
    levels = sorted(config.levels if config.levels is not None else have, reverse=True)
    missing = [p for p in levels if p not in have]
    if missing:
        raise ObservationError(f"radiosondes: truth lacks levels {missing}")
    times = pd.DatetimeIndex(truth["time"].values)
    launch = np.flatnonzero(np.isin(times.hour, config.hours) & (times.minute == 0))
    if launch.size == 0:
        raise ObservationError(f"radiosondes: no truth time at the hours {config.hours} UTC")
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, config.sites)))
    lon = rng.uniform(0, 360, config.sites)
    # per sounding (launch, site): significant pressures, ascending in altitude per layer
    layers = list(itertools.pairwise(levels))
    extra = []
    for below, above in layers:
        low, high = int(above) + 1, int(below) - 1
        k = min(config.significant_levels, max(high - low + 1, 0))
        # k distinct whole-hPa pressures of the layer per sounding
        order = np.argsort(rng.random((launch.size, config.sites, high - low + 1)), axis=-1)
        drawn = np.sort(order[..., :k] + low, axis=-1)[..., ::-1]
        extra.append(drawn.astype(np.float64))
    glat, glon = truth.latitude.values, truth.longitude.values
    tables = []
    for v in config.variables:
        field = truth[v].isel(time=launch).sel(level=levels).values  # (launch, level, lat, lon)
        at = _bilinear(field, lat, lon, glat, glon)  # (launch, level, site)
        columns, pressures = [], []
        for j, p in enumerate(levels):
            columns.append(at[:, j])
            pressures.append(np.full(at[:, j].shape, float(p)))
            if j < len(layers):
                below, above = np.log(levels[j]), np.log(levels[j + 1])
                w = (np.log(extra[j]) - below) / (above - below)  # (launch, site, k)
                inside = at[:, j, :, None] * (1 - w) + at[:, j + 1, :, None] * w
                columns += list(np.moveaxis(inside, -1, 0))
                pressures += list(np.moveaxis(extra[j], -1, 0))
        values = np.stack(columns, axis=-1)  # (launch, site, level of the sounding)
        level = np.stack(pressures, axis=-1)
        shape = values.shape
        tt = np.broadcast_to(times.values[launch][:, None, None], shape)
        la = np.broadcast_to(lat[None, :, None], shape)
        lo = np.broadcast_to(lon[None, :, None], shape)
        noisy = values + errors[v] * rng.standard_normal(shape)
        tables.append(
            make_table(
                tt.ravel(),
                la.ravel(),
                lo.ravel(),
                v,
                noisy.ravel(),
                errors[v],
                "temp",
                level=level.ravel(),
            )
        )
    return concat_tables(tables)


def simulate(truth: xr.Dataset, config: ObserveConfig) -> xr.Dataset:
    """All enabled simulators on ``truth`` (canonical, in memory) within start/end."""
    if config.start is not None or config.end is not None:
        truth = truth.sel(time=slice(config.start, config.end))
    if truth.sizes.get("time", 0) == 0:
        raise ObservationError(f"no truth time between {config.start} and {config.end}")
    rng = np.random.default_rng(config.seed)
    tables = []
    if config.stations.enabled:
        tables.append(surface_stations(truth, config.stations, rng))
    if config.satellite.enabled:
        tables.append(satellite_swath(truth, config.satellite, rng))
    if config.coarse.enabled:
        tables.append(coarse_grained(truth, config.coarse, rng))
    if config.radiosondes.enabled:
        tables.append(radiosondes(truth, config.radiosondes, rng))
    # the sea's networks draw from streams of their own (the seed and the network's name)
    if config.sea_surface.enabled:
        tables.append(sea_surface(truth, config.sea_surface, config.seed))
    if config.floats.enabled:
        tables.append(argo_floats(truth, config.floats, config.seed))
    if not tables:
        raise ObservationError("all simulators are disabled")
    return concat_tables(tables)


def _refuse_sea_for_atmosphere(truth: str) -> None:
    """A clear error for the atmosphere's networks pointed at a sea (depth levels)."""
    from appa.data.layout import level_kind
    from appa.data.sources import open_era5

    ds = open_era5(truth, chunks=None)
    if "level" in ds.coords and level_kind(ds["level"]) == "depth":
        raise ObservationError(
            f"{truth} is a sea (depth levels): turn off stations, satellite and coarse, and "
            "turn on sea_surface and floats (e.g. --config pipelines/configs/observe_sea.yaml)"
        )


def observe_store(
    truth: str, config: ObserveConfig, out: str, overwrite: bool = False
) -> tuple[str, int]:
    """Simulates observations of a gridded store and writes an observation store (or, with
    ``config.format == "bufr"``, a folder of BUFR files: :func:`write_bufr_reports`).

    Returns the output path and the number of observations. ``out`` is checked first (see
    :func:`~appa.observations.schema.write_observations`), before any work.
    """
    from appa.data.sources import open_era5
    from appa.files import claim_output
    from appa.observations.schema import write_observations

    bufr = config.format == "bufr"
    if bufr and (config.satellite.enabled or config.coarse.enabled):
        raise ObservationError(
            "format bufr writes stations (SYNOP) and radiosondes (TEMP) only: disable the "
            "satellite and coarse simulators (satellite.enabled=false, coarse.enabled=false)"
        )
    claim_output(out, "bufr" if bufr else "observations", overwrite=overwrite)
    variables = set()
    for part in (config.stations, config.satellite, config.coarse, config.radiosondes):
        if part.enabled:
            variables |= set(part.variables)
    if config.stations.enabled and config.stations.land_only:
        variables.add("land_sea_mask")
    if variables:
        _refuse_sea_for_atmosphere(truth)
    if config.sea_surface.enabled:
        for name, (source, *_) in SEA_SURFACE_SOURCES.items():
            if getattr(config.sea_surface, name).enabled:
                variables.add(source)
    if config.floats.enabled:
        variables |= {*config.floats.variables, "sea_floor_depth"}
    if bufr:
        variables.add("geopotential_at_surface")
    time = slice(config.start, config.end) if config.start or config.end else None
    ds = open_era5(truth, variables=sorted(variables), time=time).load()
    table = simulate(ds, config)
    if bufr:
        path = write_bufr_reports(table, ds, config, out, overwrite=overwrite)
        return str(path), int(table.sizes["obs"])
    path = write_observations(table, out, partition=config.partition, overwrite=overwrite)
    return str(path), int(table.sizes["obs"])


BUFR_MANIFEST = "bufr_reports.json"


def station_elevations(
    table: xr.Dataset, truth: xr.Dataset, elevation_std: float, seed: int
) -> xr.Dataset:
    """``table`` with ``station`` (WIGOS identifiers ``0-20000-0-01001`` onwards, one per
    distinct position of a station or radiosonde) and ``elevation`` (m: the model's ground,
    ``geopotential_at_surface / g0`` of ``truth`` bilinear at the station, plus a normal
    departure of ``elevation_std``, whole metres, at least 0); surface stations' 2 m
    temperatures are moved to that height by the standard lapse rate, the one height
    correction ``appa ingest`` makes."""
    from appa.observations.ingest.convert import G0, STANDARD_LAPSE_RATE

    if "geopotential_at_surface" not in truth:
        raise ObservationError(
            "format bufr: the truth has no geopotential_at_surface (the model's ground, from "
            "which station heights are drawn)"
        )
    platform = table["platform"].values.astype(str)
    positions = pd.MultiIndex.from_arrays(
        [platform == "temp", table["latitude"].values, table["longitude"].values]
    )
    codes, unique = pd.factorize(positions)
    lat = unique.get_level_values(1).to_numpy()
    lon = unique.get_level_values(2).to_numpy()
    orography = _bilinear(
        truth["geopotential_at_surface"].values / G0,
        lat,
        lon,
        truth.latitude.values,
        truth.longitude.values,
    )
    # a generator of its own: the observations equal those of format zarr with the same seed
    draws = np.random.default_rng([seed, 1]).standard_normal(lat.size)
    elevation = np.maximum(np.round(orography + elevation_std * draws), 0.0)
    value = table["value"].values.copy()
    t2m = (platform == "station") & (table["variable"].values.astype(str) == "2m_temperature")
    value[t2m] -= STANDARD_LAPSE_RATE * (elevation[codes] - orography[codes])[t2m]
    stations = np.array([f"0-20000-0-{1001 + c:05d}" for c in range(lat.size)])
    return table.assign(
        value=("obs", value),
        station=("obs", stations[codes]),
        elevation=("obs", elevation[codes]),
    )


def write_bufr_reports(
    table: xr.Dataset,
    truth: xr.Dataset,
    config: ObserveConfig,
    out: str | Path,
    overwrite: bool = False,
) -> Path:
    """Writes the station and radiosonde rows of ``table`` (simulated from ``truth``) to the
    folder ``out`` (written whole) as BUFR, one SYNOP file and one TEMP file per day
    (:func:`~appa.observations.ingest.bufr_write.write_bufr`), stations at their own heights
    (:func:`station_elevations`), and an index of the files (``bufr_reports.json``)."""
    import json

    from appa.files import written_whole
    from appa.observations.ingest.bufr_write import write_bufr

    table = station_elevations(table, truth, config.stations.elevation_std, config.seed)
    days = pd.DatetimeIndex(table["time"].values).normalize()
    platform = table["platform"].values.astype(str)
    files = {}
    with written_whole(out, "bufr", overwrite=overwrite) as tmp:
        tmp.mkdir()
        for day in days.unique().sort_values():
            for name, rows in (("synop", platform == "station"), ("temp", platform == "temp")):
                at = np.flatnonzero(rows & (days == day))
                if at.size == 0:
                    continue
                path = tmp / f"{name}-{day:%Y-%m-%d}.bufr"
                messages = write_bufr(table.isel(obs=at), path)
                files[path.name] = {"messages": messages, "observations": int(at.size)}
        index = {
            "appa_product": "bufr",
            "files": files,
            "observations": int(table.sizes["obs"]),
            "config": config.model_dump(mode="json"),
        }
        (tmp / BUFR_MANIFEST).write_text(json.dumps(index, indent=1))
    return Path(out)
