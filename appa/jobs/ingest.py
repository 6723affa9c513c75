"""``appa ingest``: real observations (BUFR reports, station tables, satellite swaths) into an
observation store, through one path of conversions and quality control.

Each source is read by its format's reader into decoded reports (canonical names, SI units);
then every report, whatever its format, gets its state time, the height correction of 2 m
temperature against the grid's orography, an observation error and the quality-control flags
(:func:`appa.observations.ingest.prepare.prepare_reports`). Accepted and rejected observations
go to the store, the rejected with their reason; the account per platform is printed and kept
in the store's index. A store gains whole partitions, never rewrites one: an ingest covers whole
partitions (its ``period`` aligned with them), so the daily job appends the same way.
"""

from __future__ import annotations

import glob
import time as clock
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import Field, model_validator

from appa.config import ConfigError, Duration, StrictModel
from appa.observations.errors import DEFAULT_ERRORS
from appa.observations.ingest.prepare import GridField, IngestAccount, prepare_reports
from appa.observations.quality import DEFAULT_MAX_SPEED, DEFAULT_SPIKE_LIMITS, QualityRules
from appa.observations.schema import ObservationError

__all__ = ["IngestConfig", "IngestResult", "run_ingest"]

FORMATS = ("bufr", "csv", "isd-lite", "swath")


class SourceConfig(StrictModel):
    """One source of reports.

    Attributes:
        format: ``bufr`` (WMO BUFR: SYNOP, SHIP, TEMP, aircraft), ``csv`` (a station table
            described by ``columns``), ``isd-lite`` (NOAA ISD-lite files with their station
            list ``stations``), ``swath`` (a satellite swath or grid, NetCDF or Zarr,
            described by ``swath``).
        paths: Files (or Zarr stores) of this format; shell patterns are expanded.
        columns: For ``csv``: the column mapping (the fields of
            :class:`appa.observations.ingest.stations.StationColumns`).
        stations: For ``isd-lite``: the station list (CSV with id, latitude, longitude,
            elevation).
        swath: For ``swath``: what to read (the fields of
            :class:`appa.observations.ingest.swath.SwathSpec`).
    """

    format: Literal["bufr", "csv", "isd-lite", "swath"]
    paths: list[str] = Field(min_length=1)

    def files(self) -> list[str]:
        """``paths`` with shell patterns (``reports/*.bufr``) expanded, sorted; a pattern
        matching nothing is an error naming it."""
        out = []
        for path in self.paths:
            if glob.has_magic(path):
                found = sorted(glob.glob(path))
                if not found:
                    raise ObservationError(f"{self.format} source {path!r} matches no file")
                out += found
            else:
                out.append(path)
        return out

    columns: dict[str, Any] | None = None
    stations: str | None = None
    swath: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> SourceConfig:
        if self.format == "csv" and self.columns is None:
            raise ValueError("a csv source needs its column mapping (columns)")
        if self.format == "isd-lite" and self.stations is None:
            raise ValueError("an isd-lite source needs its station list (stations)")
        if self.format == "swath" and self.swath is None:
            raise ValueError("a swath source needs what to read (swath)")
        return self


class BackgroundConfig(StrictModel):
    """The reference of the background check, one of: the climatology of a gridded ``store``
    (mean and standard deviation by day of year and hour, over ``period``, smoothed over
    ``window_days``), or the prior's own states: an Appa ``archive`` with members (a
    forecast or earlier reanalysis over the observations' times: its ensemble mean and
    spread)."""

    store: str | None = None
    period: tuple[str, str] | None = None
    archive: str | None = None
    window_days: int = Field(15, ge=0, le=183)
    k: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _one(self) -> BackgroundConfig:
        if (self.store is None) == (self.archive is None):
            raise ValueError("give the background as a gridded store or an archive, not both")
        if self.store is not None and self.period is None:
            raise ValueError("a climatology background needs its period")
        return self


class QualityConfig(StrictModel):
    """Quality-control settings (:class:`appa.observations.quality.QualityRules`)."""

    blacklist: list[tuple[str, str]] = Field(default_factory=list)
    station_move_km: float = Field(10.0, gt=0)
    max_speed: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MAX_SPEED))
    spike_limits: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_SPIKE_LIMITS))
    spike_max_gap_hours: float = Field(6.0, gt=0)
    background: BackgroundConfig | None = None

    def rules(self) -> QualityRules:
        return QualityRules(
            blacklist=tuple(tuple(pair) for pair in self.blacklist),
            station_move_km=self.station_move_km,
            max_speed=dict(self.max_speed),
            spike_limits=dict(self.spike_limits),
            spike_max_gap=self.spike_max_gap_hours,
            background_k=self.background.k if self.background else 5.0,
        )


class ErrorsConfig(StrictModel):
    """Observation errors: entries of ``table`` (``{platform: {variable: std or [[levels hPa],
    [stds]]}}``) replace the defaults; ``representativeness`` (per variable, SI units) is
    added in quadrature to point observations."""

    table: dict[str, dict[str, float | tuple[list[float], list[float]]]] = Field(
        default_factory=dict
    )
    representativeness: dict[str, float] = Field(default_factory=dict)

    def merged(self) -> dict[str, dict[str, Any]]:
        out = {platform: dict(entries) for platform, entries in DEFAULT_ERRORS.items()}
        for platform, entries in self.table.items():
            out.setdefault(platform, {}).update(entries)
        return out


class IngestConfig(StrictModel):
    """The ``appa ingest`` job.

    Attributes:
        out: The observation store (created, or extended by new partitions).
        sources: What to read.
        period: ``[start, end)`` of the observations to ingest (state times), aligned with
            ``partition``; by default the whole partitions the reports fall in.
        partition: The store's partition span (a new store's; an existing store keeps its own).
        time_step: The states' time step: observations are rounded to its multiples.
        time_window: How far an observation may lie from its state time (default: half the
            step, every observation belongs to one state).
        grid: A gridded store (the state's grid): swaths are thinned to its boxes and 2 m
            temperatures corrected to its ``geopotential_at_surface``.
        lapse_rate: K per metre for that correction.
    """

    out: str
    sources: list[SourceConfig] = Field(default_factory=list)
    period: tuple[str, str] | None = None
    partition: Duration = "1D"
    time_step: Duration = "1h"
    time_window: str | None = None
    grid: str | None = None
    lapse_rate: float = Field(0.0065, ge=0, le=0.0098)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    errors: ErrorsConfig = Field(default_factory=ErrorsConfig)

    def window(self) -> pd.Timedelta:
        step = pd.Timedelta(self.time_step)
        return step / 2 if self.time_window is None else pd.Timedelta(self.time_window)


class IngestResult(StrictModel):
    """What an ingest did: the store, the partitions it added, the account per platform
    (``{platform: {"read": n, "kept": n, reason: n}}``), seconds spent reading and in all."""

    store: str
    partitions: list[str]
    account: dict[str, dict[str, int]]
    read_seconds: float
    seconds: float


def _grid(path: str) -> tuple[np.ndarray, np.ndarray, GridField | None]:
    """Latitudes, longitudes and orography (m; None without ``geopotential_at_surface``)."""
    from appa.data.sources import open_era5

    ds = open_era5(path, chunks=None)
    lat = ds["latitude"].values.astype(np.float64)
    lon = ds["longitude"].values.astype(np.float64)
    orography = None
    if "geopotential_at_surface" in ds:
        from appa.observations.ingest.convert import G0

        field = ds["geopotential_at_surface"]
        if set(field.dims) != {"latitude", "longitude"}:
            raise ObservationError(f"{path}: geopotential_at_surface has dims {field.dims}")
        values = field.transpose("latitude", "longitude").values / G0
        orography = GridField(values, lat, lon)
    return lat, lon, orography


def _background(config: BackgroundConfig, times: np.ndarray) -> tuple[xr.Dataset, xr.Dataset]:
    """Mean and standard deviation of the reference at the state ``times``."""
    from appa.baselines.climatology import climatology_at, compute_climatology
    from appa.data.sources import open_era5

    unique = pd.DatetimeIndex(np.unique(times))
    if config.archive is not None:
        from appa.io.archive import open_archive

        ds = open_archive(config.archive)
        if "member" not in ds.dims or "time" not in ds.dims or "lead_time" in ds.dims:
            raise ConfigError(
                f"quality.background.archive {config.archive}: needs members along time "
                f"(a reanalysis or filter archive), found dims {dict(ds.sizes)}"
            )
        ds = ds.sel(time=ds["time"].values[np.isin(ds["time"].values, unique.values)])
        if ds.sizes["member"] < 2:
            raise ConfigError(
                f"quality.background.archive {config.archive}: one member has no spread"
            )
        ds = ds.load()
        return ds.mean("member"), ds.std("member", ddof=1)

    ds = open_era5(config.store, chunks=None)
    ds = ds[[v for v in ds.data_vars if "time" in ds[v].dims]]
    mean = compute_climatology(ds, config.period, config.window_days)
    square = compute_climatology(ds**2, config.period, config.window_days)
    m = climatology_at(mean, unique)
    s = np.sqrt(np.maximum(climatology_at(square, unique) - m**2, 0.0))
    return m, s


def _dataclass(kind: type, settings: dict[str, Any] | None, where: str) -> Any:
    """A reader's settings (a dataclass with nested ones) from a config mapping."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(kind).validate_python(settings or {})
    except ValidationError as error:
        raise ConfigError(f"sources: {where}: {error}") from None


def _read(
    source: SourceConfig,
    job: IngestConfig,
    grid,
    account: IngestAccount,
    echo: Callable[[str], None],
) -> pd.DataFrame:
    """The decoded reports of one source."""
    if source.format == "bufr":
        from appa.observations.ingest.bufr import read_bufr

        counts: dict = {}
        frame = read_bufr(source.files(), counts=counts)
        for path, c in counts.items():
            messages = ", ".join(f"{n} {p}" for p, n in sorted(c.messages.items())) or "none"
            line = f"{path}: messages {messages}"
            if c.skipped:
                skipped = ", ".join(f"{n} of category {k}" for k, n in sorted(c.skipped.items()))
                line += f"; skipped {skipped}"
            echo(line)
        return frame
    if source.format in ("csv", "isd-lite"):
        from appa.observations.ingest import stations

        if source.format == "csv":
            columns = _dataclass(stations.StationColumns, source.columns, "columns")
        else:
            columns = stations.isd_lite(source.stations)
        frames = [stations.read_station_table(path, columns) for path in source.files()]
        return pd.concat(frames, ignore_index=True)
    from appa.observations.ingest import swath

    if grid is None:
        raise ConfigError("a swath source needs the state's grid (grid: a gridded store)")
    spec = _dataclass(swath.SwathSpec, source.swath, "swath")
    frames = []
    for path in source.files():
        read = swath.read_swath(path, spec, grid[0], grid[1], time_step=job.time_step)
        account.add_rejected_before("satellite", read.rejected_pixels)
        frames.append(read.reports)
    return pd.concat(frames, ignore_index=True)


def _in_period(frame: pd.DataFrame, job: IngestConfig, span: pd.Timedelta) -> np.ndarray:
    if job.period is None:
        return np.ones(len(frame), dtype=bool)
    start, end = (pd.Timestamp(t) for t in job.period)
    epoch = pd.Timestamp("1970-01-01")
    for name, t in (("start", start), ("end", end)):
        if (t - epoch) % span != pd.Timedelta(0):
            raise ConfigError(
                f"period {name} {t} is not on a partition boundary ({span}): a partition is "
                "written whole, once"
            )
    state = frame["time"].to_numpy()
    return (state >= start.to_datetime64()) & (state < end.to_datetime64())


def run_ingest(job: IngestConfig, echo: Callable[[str], None] = print) -> IngestResult:
    """Reads every source, prepares and checks the reports, and writes them to ``job.out``
    (a new store, or new partitions of an existing one). Prints the account per platform.

    Raises:
        ObservationError: a file that cannot be read, reports that break the schema, a
            partition the store already holds.
        ConfigError: a source that cannot be read with its settings.
    """
    from appa.observations.ingest.prepare import reports_to_table
    from appa.observations.schema import add_partitions, store_partitions, write_observations

    if not job.sources:
        raise ConfigError("nothing to ingest: give a FORMAT and SOURCE files, or sources")
    t0 = clock.perf_counter()
    out = Path(job.out)
    exists = (out / "observations.json").is_file()
    span = store_partitions(out)[0] if exists else pd.Timedelta(job.partition)
    grid = _grid(job.grid) if job.grid else None
    account = IngestAccount()
    frames = []
    for source in job.sources:
        frame = _read(source, job, grid, account, echo)
        if len(frame):
            frames.append(frame)
        echo(f"read {len(frame)} values from {len(source.files())} {source.format} file(s)")
    read_seconds = clock.perf_counter() - t0
    if not frames:
        raise ObservationError("the sources hold no observations")
    reports = pd.concat(frames, ignore_index=True)
    background = None
    if job.quality.background is not None:
        from appa.observations.ingest.convert import round_times

        state = round_times(reports["time"].to_numpy(), job.time_step, job.window())[0]
        background = _background(job.quality.background, state)
    prepared = prepare_reports(
        reports,
        job.time_step,
        job.window(),
        job.quality.rules(),
        orography=grid[2] if grid else None,
        error_table=job.errors.merged(),
        representativeness=job.errors.representativeness,
        background=background,
        lapse_rate=job.lapse_rate,
    )
    inside = _in_period(prepared, job, span)
    if not inside.all():
        echo(f"left out {int((~inside).sum())} values outside the period {job.period}")
    prepared = prepared.loc[inside].reset_index(drop=True)
    if prepared.empty:
        raise ObservationError(f"no observations in the period {job.period}")
    account.add(prepared)
    table = reports_to_table(prepared)
    record = {
        "ingested": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
        "sources": [{"format": s.format, "paths": s.paths} for s in job.sources],
        "account": account.counts,
    }
    if exists:
        partitions = add_partitions(table, out, record=record)
    else:
        write_observations(table, out, partition=job.partition, record=record)
        partitions = store_partitions(out)[1]
    summary = account.table()
    echo(summary.to_string())
    return IngestResult(
        store=str(out),
        partitions=partitions,
        account=account.counts,
        read_seconds=read_seconds,
        seconds=clock.perf_counter() - t0,
    )
