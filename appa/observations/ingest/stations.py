"""Station tables: delimited text files of surface observations, one row per station and time.

:func:`read_station_table` decodes one file into decoded reports
(:mod:`~appa.observations.ingest.reports`) following a :class:`StationColumns`: which columns
hold the station, the time, the coordinates and each variable, in which units and scale, and
how missing values are written. Coordinates come from the table or from a separate station
list joined on the station identifier (:class:`StationList`). Presets: :func:`isd_lite`
(NOAA's ISD-Lite) and :func:`ghcnh` (NOAA's GHCNh, pipe-separated).

Missing values (a marker of :attr:`StationColumns.missing`, or an empty field) yield no row;
anything else that is not a number is an error naming the file, line and column, as are
missing columns, unparseable times and units that cannot be converted. Rows the table itself
marks as bad (a quality code outside :attr:`StationColumns.good_quality`) are kept with the
reason ``source_flag``; rows without usable coordinates, ambiguous local times and wind
directions outside [0, 360] are kept with their own reasons (see :func:`read_station_table`).
"""

from __future__ import annotations

import functools
import os
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from appa.observations.ingest.convert import to_si, wind_components
from appa.observations.ingest.reports import check_reports, empty_reports
from appa.observations.schema import ObservationError
from appa.observations.screening import CANONICAL_UNITS

__all__ = [
    "Measured",
    "StationColumns",
    "StationList",
    "Wind",
    "ghcnh",
    "isd_lite",
    "read_station_table",
]

# reasons of the rows a station table itself invalidates (quality control adds its own)
SOURCE_FLAG = "source_flag"
NO_COORDINATES = "no_position"
STATION_NOT_LISTED = "station_not_listed"
AMBIGUOUS_TIME = "ambiguous_local_time"
BAD_DIRECTION = "wind_direction"

_OFFSET = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2}):?(\d{2})?$", re.IGNORECASE)


@dataclass(frozen=True)
class Measured:
    """One value column of a table.

    Attributes:
        variable: The canonical variable (:data:`CANONICAL_UNITS`).
        units: Units of ``raw * scale`` (e.g. ``degC``, ``hPa``, ``mm``, ``kt``).
        scale: Factor from the stored numbers to ``units`` (0.1 for values in tenths).
        error: Column holding each value's uncertainty (standard deviation), stored with the
            same units and scale; None: the table gives none (the error table fills it).
        codes: Stored numbers that stand for another value, replaced before scaling (ISD-Lite
            writes a trace of precipitation as -1: ``{-1: 0}``).
    """

    variable: str
    units: str
    scale: float = 1.0
    error: str | None = None
    codes: Mapping[float, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Wind:
    """Wind given as speed and the direction it blows from, converted to components.

    Attributes:
        speed, direction: Columns of the speed and of the direction (degrees clockwise from
            north, the direction the wind comes from; a calm wind has speed 0).
        units: Units of ``speed * scale`` (``m/s``, ``kt``, ``km/h``).
        scale: Factor from the stored speeds to ``units``.
        u, v: The canonical variables of the eastward and northward components.
    """

    speed: str
    direction: str
    units: str = "m/s"
    scale: float = 1.0
    u: str = "10m_u_component_of_wind"
    v: str = "10m_v_component_of_wind"


@dataclass(frozen=True)
class StationList:
    """A file of station coordinates joined on the station identifier.

    Attributes:
        path: The list (delimited text with a header line).
        station: Columns whose stripped text, joined by ``-``, is the identifier (ISD's
            station history: ``("USAF", "WBAN")`` gives ``010010-99999``).
        latitude, longitude: Columns in degrees (longitudes in any range).
        elevation: Column of the station height above mean sea level (m), or None.
        delimiter: The field separator; None: runs of whitespace.
        missing: Markers of unknown coordinates.
    """

    path: str | os.PathLike
    station: tuple[str, ...]
    latitude: str
    longitude: str
    elevation: str | None = None
    delimiter: str | None = ","
    missing: tuple[str, ...] = ("",)


@dataclass(frozen=True)
class StationColumns:
    """Where a station table keeps what, and how it writes it.

    Attributes:
        variables: Value column -> :class:`Measured` (canonical variable, units, scale).
            Wind components given as columns are ordinary variables here.
        time: The column holding the time, or several (date and hour; year, month, day and
            hour) whose stripped texts joined by single spaces ``time_format`` reads.
        time_format: A :func:`time.strptime` format (``%Y-%m-%d %H:%M``), or ``ISO8601``.
        time_zone: Zone of times written without an offset: ``UTC``, an offset (``+05:30``)
            or an IANA name (``Europe/Brussels``, daylight saving included). Times written
            with their own offset keep it.
        station: Column of the station identifier; None: ``station_from_name``.
        station_from_name: A regular expression whose first group, searched in the file name,
            is the identifier of the one station the file holds (ISD-Lite's
            ``010010-99999-2020.gz``).
        latitude, longitude, elevation: Coordinate columns (degrees, degrees, m above mean sea
            level); None with ``stations``: from the station list.
        stations: A station list joined on the identifier, for tables without coordinates.
        wind: Wind as speed and direction (:class:`Wind`), or None.
        quality: Value column (or wind speed/direction column) -> the column of its quality
            code; a code not in ``good_quality`` keeps the row with reason ``source_flag``.
        good_quality: Quality codes (stripped text) of values the source vouches for.
        missing: Markers of missing values (compared as stripped text, and as numbers when
            they are numbers: ``-9999`` also matches ``-9999.0``); empty fields are missing.
        delimiter: The field separator; None: runs of whitespace (fixed-width tables whose
            fields never touch, as ISD-Lite).
        names: Column names of a file without a header line; None: the first line names them.
        platform: The ``platform`` of the reports.
    """

    variables: Mapping[str, Measured]
    time: tuple[str, ...]
    time_format: str = "ISO8601"
    time_zone: str = "UTC"
    station: str | None = None
    station_from_name: str | None = None
    latitude: str | None = None
    longitude: str | None = None
    elevation: str | None = None
    stations: StationList | None = None
    wind: Wind | None = None
    quality: Mapping[str, str] = field(default_factory=dict)
    good_quality: tuple[str, ...] = ("",)
    missing: tuple[str, ...] = ("", "NA", "NaN", "nan")
    delimiter: str | None = ","
    names: tuple[str, ...] | None = None
    platform: str = "station"

    def __post_init__(self) -> None:
        if isinstance(self.time, str):
            object.__setattr__(self, "time", (self.time,))
        if not self.time:
            raise ObservationError("StationColumns: no time column")
        if (self.station is None) == (self.station_from_name is None):
            raise ObservationError(
                "StationColumns: give the station identifier as a column (station) or as a "
                "pattern of the file name (station_from_name), one of the two"
            )
        if self.station_from_name is not None:
            pattern = re.compile(self.station_from_name)
            if pattern.groups < 1:
                raise ObservationError(
                    f"StationColumns: station_from_name {self.station_from_name!r} has no group "
                    "for the identifier"
                )
        if self.stations is None and (self.latitude is None or self.longitude is None):
            raise ObservationError(
                "StationColumns: coordinates need latitude and longitude columns or a station list"
            )
        if not self.variables and self.wind is None:
            raise ObservationError("StationColumns: no variables and no wind")
        _zone(self.time_zone)
        for column, measured in self.variables.items():
            _check_measured(column, measured, "StationColumns")
        if self.wind is not None:
            for variable in (self.wind.u, self.wind.v):
                to_si(np.zeros(0), self.wind.units, variable)
        unknown = set(self.quality) - self._value_columns()
        if unknown:
            raise ObservationError(
                f"StationColumns: quality codes given for {sorted(unknown)}, which are not value "
                f"or wind columns ({sorted(self._value_columns())})"
            )

    def _value_columns(self) -> set[str]:
        wind = {self.wind.speed, self.wind.direction} if self.wind is not None else set()
        return set(self.variables) | wind

    def required(self) -> list[str]:
        """Every column the table must have."""
        columns = [*self.time]
        columns += [c for c in (self.station, self.latitude, self.longitude, self.elevation) if c]
        for column, measured in self.variables.items():
            columns += [column] + ([measured.error] if measured.error else [])
        if self.wind is not None:
            columns += [self.wind.speed, self.wind.direction]
        columns += list(self.quality.values())
        return list(dict.fromkeys(columns))


def _check_measured(column: str, measured: Measured, where: str) -> None:
    if measured.variable not in CANONICAL_UNITS:
        raise ObservationError(
            f"{where}: column {column!r} maps to {measured.variable!r}, which has no canonical "
            f"units (known: {sorted(CANONICAL_UNITS)})"
        )
    if not (np.isfinite(measured.scale) and measured.scale != 0):
        raise ObservationError(f"{where}: column {column!r} has scale {measured.scale}")
    try:
        to_si(np.zeros(0), measured.units, measured.variable)
    except ObservationError as error:
        raise ObservationError(f"{where}: column {column!r}: {error}") from None


# --- presets ---------------------------------------------------------------------------------

ISD_LITE_NAMES = (
    "year",
    "month",
    "day",
    "hour",
    "air_temperature",
    "dew_point_temperature",
    "sea_level_pressure",
    "wind_direction",
    "wind_speed",
    "sky_cover",
    "precipitation_1h",
    "precipitation_6h",
)


def isd_lite(station_list: str | os.PathLike) -> StationColumns:
    """NOAA's ISD-Lite: one file per station and year named ``USAF-WBAN-YEAR`` (gzipped or
    not), twelve whitespace-separated fields per line, no header, ``-9999`` for missing: year,
    month, day, hour (UTC, to the nearest hour), air temperature and dew point (degC x 10),
    sea-level pressure (hPa x 10), wind direction (degrees, 0 when calm), wind speed (m/s x 10),
    sky cover (a code), 1-hour and 6-hour precipitation (mm x 10, a trace written -1).

    Decoded: 2 m temperature, 2 m dew point, mean-sea-level pressure, 10 m wind components and
    the 1-hour precipitation as ``total_precipitation`` (a trace as 0). Sky cover and the
    6-hour precipitation have no canonical variable and are not decoded.

    Arguments:
        station_list: ISD's station history (``isd-history.csv``: ``USAF``, ``WBAN``, ``LAT``,
            ``LON``, ``ELEV(M)``; unknown heights written -999.0 or -999.9).
    """
    return StationColumns(
        variables={
            "air_temperature": Measured("2m_temperature", "degC", 0.1),
            "dew_point_temperature": Measured("2m_dewpoint_temperature", "degC", 0.1),
            "sea_level_pressure": Measured("mean_sea_level_pressure", "hPa", 0.1),
            "precipitation_1h": Measured("total_precipitation", "mm", 0.1, codes={-1.0: 0.0}),
        },
        wind=Wind(speed="wind_speed", direction="wind_direction", units="m/s", scale=0.1),
        time=("year", "month", "day", "hour"),
        time_format="%Y %m %d %H",
        station_from_name=r"^([0-9A-Za-z]{6}-[0-9]{5})-[0-9]{4}",
        stations=StationList(
            path=station_list,
            station=("USAF", "WBAN"),
            latitude="LAT",
            longitude="LON",
            elevation="ELEV(M)",
            missing=("", "-999", "-999.0", "-999.9"),
        ),
        missing=("-9999",),
        delimiter=None,
        names=ISD_LITE_NAMES,
    )


_GHCNH_VALUES = {
    "temperature": Measured("2m_temperature", "degC"),
    "dew_point_temperature": Measured("2m_dewpoint_temperature", "degC"),
    "sea_level_pressure": Measured("mean_sea_level_pressure", "hPa"),
    "station_level_pressure": Measured("surface_pressure", "hPa"),
}


def ghcnh() -> StationColumns:
    """NOAA's GHCNh (Global Historical Climatology Network hourly) by-station files:
    pipe-separated with a header line, ``Station_ID``, ``Year``, ``Month``, ``Day``, ``Hour``,
    ``Minute`` (UTC), ``Latitude``, ``Longitude``, ``Elevation`` (m), then each variable
    followed by its ``_Measurement_Code``, ``_Quality_Code``, ``_Report_Type``,
    ``_Source_Code`` and ``_Source_Station_ID`` columns; empty fields are missing.

    Decoded: ``temperature`` and ``dew_point_temperature`` (degC), ``sea_level_pressure`` and
    ``station_level_pressure`` (hPa, as mean-sea-level and surface pressure), and
    ``wind_speed`` (m/s) with ``wind_direction`` (degrees) as 10 m wind components. A value
    whose quality code is not empty or one of the legacy codes of a passed check (0, 1, 4,
    5) is kept with reason ``source_flag``. Precipitation is not decoded: its accumulation
    period varies with the report (:func:`dataclasses.replace` adds columns).
    """
    quality = {column: f"{column}_Quality_Code" for column in _GHCNH_VALUES}
    quality.update(wind_speed="wind_speed_Quality_Code")
    quality.update(wind_direction="wind_direction_Quality_Code")
    return StationColumns(
        variables=dict(_GHCNH_VALUES),
        wind=Wind(speed="wind_speed", direction="wind_direction", units="m/s"),
        time=("Year", "Month", "Day", "Hour", "Minute"),
        time_format="%Y %m %d %H %M",
        station="Station_ID",
        latitude="Latitude",
        longitude="Longitude",
        elevation="Elevation",
        quality=quality,
        good_quality=("", "0", "1", "4", "5"),
        missing=("",),
        delimiter="|",
    )


# --- reading -------------------------------------------------------------------------------


def _zone(zone: str) -> pd.Timedelta | zoneinfo.ZoneInfo | None:
    """None for UTC, a fixed offset, or a zone with its rules."""
    text = zone.strip()
    if text.upper() in ("UTC", "Z", "GMT"):
        return None
    match = _OFFSET.match(text)
    if match:
        sign, hours, minutes = match.groups()
        offset = pd.Timedelta(hours=int(hours), minutes=int(minutes or 0))
        return -offset if sign == "-" else offset
    try:
        return zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ObservationError(
            f"time zone {zone!r} is neither UTC, an offset (+05:30) nor a known zone name"
        ) from None


def _read_text(
    path: str | os.PathLike,
    delimiter: str | None,
    names: tuple[str, ...] | None,
    usecols: list[str] | None = None,
) -> pd.DataFrame:
    """Every field as stripped text, blank lines kept (so that row ``i`` is line ``i + 1``,
    or ``i + 2`` below a header)."""
    try:
        frame = pd.read_csv(
            path,
            sep=r"\s+" if delimiter is None else delimiter,
            header=None if names is not None else 0,
            names=list(names) if names is not None else None,
            usecols=usecols,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,
            compression="infer",
        )
    except FileNotFoundError:
        raise ObservationError(f"{path}: no such file") from None
    except ValueError as error:  # pandas' ParserError, bad usecols, undecodable text
        raise ObservationError(f"{path}: cannot be read as a table ({error})") from None
    return frame.fillna("").apply(lambda column: column.str.strip())


class _Table:
    """A table's text with the line number of each row, for messages."""

    def __init__(self, path: str | os.PathLike, frame: pd.DataFrame, first_line: int):
        self.path = path
        self.lines = np.arange(len(frame)) + first_line
        blank = (frame == "").all(axis=1).to_numpy() if frame.shape[1] else np.zeros(0, bool)
        self.frame = frame[~blank].reset_index(drop=True) if blank.any() else frame
        self.lines = self.lines[~blank]

    def require(self, columns: list[str]) -> None:
        absent = [c for c in columns if c not in self.frame.columns]
        if absent:
            raise ObservationError(
                f"{self.path}: no columns {absent} (columns: {list(self.frame.columns)})"
            )

    def numbers(self, column: str, missing: tuple[str, ...]) -> np.ndarray:
        """The column as float64, NaN where missing; an error naming the first field that is
        neither a number nor a missing marker."""
        text = self.frame[column]
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        values = values.copy()
        marks = [m.strip() for m in missing]
        numeric_marks = pd.to_numeric(pd.Series(marks, dtype=object), errors="coerce").dropna()
        absent = text.isin(marks).to_numpy() | (text == "").to_numpy()
        absent |= np.isin(values, numeric_marks.to_numpy(dtype=np.float64))
        bad = ~np.isfinite(values) & ~absent
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ObservationError(
                f"{self.path}, line {self.lines[k]}, column {column!r}: {text.iloc[k]!r} is "
                f"not a number nor a missing marker ({marks}); {int(bad.sum())} such fields"
            )
        values[absent] = np.nan
        return values


def _times(table: _Table, columns: StationColumns) -> tuple[np.ndarray, np.ndarray]:
    """UTC times (datetime64[ns]) and whether each is an ambiguous or skipped local time."""
    frame = table.frame
    text = frame[columns.time[0]]
    for column in columns.time[1:]:
        text = text + " " + frame[column]
    empty = (text.str.strip() == "").to_numpy()
    if empty.any():
        k = int(np.flatnonzero(empty)[0])
        raise ObservationError(
            f"{table.path}, line {table.lines[k]}, columns {list(columns.time)}: the time is "
            f"missing ({int(empty.sum())} rows)"
        )
    fmt = columns.time_format
    zone = _zone(columns.time_zone)
    try:
        times = pd.to_datetime(text, format=fmt, errors="coerce", utc=zone is None)
    except ValueError:  # offsets that differ between rows: each row keeps its own
        times = pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
    index = pd.DatetimeIndex(times)
    bad = index.isna()
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ObservationError(
            f"{table.path}, line {table.lines[k]}, columns {list(columns.time)}: time "
            f"{text.iloc[k]!r} does not match the format {fmt!r} ({int(bad.sum())} rows)"
        )
    ambiguous = np.zeros(len(index), dtype=bool)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    elif isinstance(zone, pd.Timedelta):
        index = index - zone
    elif zone is not None:
        local = index.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
        ambiguous = np.asarray(local.isna())
        index = local.tz_convert("UTC").tz_localize(None)
    return index.values.astype("datetime64[ns]"), ambiguous


@functools.lru_cache(maxsize=4)
def _listed(stations: StationList, stamp: tuple[int, int]) -> pd.DataFrame:
    """The station list indexed by identifier: latitude, longitude, elevation."""
    columns = [*stations.station, stations.latitude, stations.longitude]
    columns += [stations.elevation] if stations.elevation else []
    frame = _read_text(stations.path, stations.delimiter, None)
    table = _Table(stations.path, frame, first_line=2)
    table.require(columns)
    ids = frame[stations.station[0]]
    for column in stations.station[1:]:
        ids = ids + "-" + frame[column]
    out = pd.DataFrame(
        {
            "latitude": table.numbers(stations.latitude, stations.missing),
            "longitude": table.numbers(stations.longitude, stations.missing),
            "elevation": (
                table.numbers(stations.elevation, stations.missing)
                if stations.elevation
                else np.full(len(frame), np.nan)
            ),
        },
        index=pd.Index(ids.to_numpy(dtype=object), name="station"),
    )
    out = out[ids.to_numpy() != ""].drop_duplicates()
    twice = out.index.duplicated()
    if twice.any():
        station = out.index[twice][0]
        raise ObservationError(
            f"{stations.path}: station {station!r} is listed with different coordinates "
            f"({int(twice.sum())} such stations)"
        )
    return out


def _station_list(stations: StationList) -> pd.DataFrame:
    try:
        info = os.stat(stations.path)
    except FileNotFoundError:
        raise ObservationError(f"{stations.path}: no such station list") from None
    return _listed(stations, (info.st_mtime_ns, info.st_size))


def read_station_table(path: str | os.PathLike, columns: StationColumns) -> pd.DataFrame:
    """Decoded reports (:mod:`~appa.observations.ingest.reports`) of a station table: one row
    per value present, in canonical names and SI units, ``footprint`` 0 and ``level`` NaN.

    Rows are kept with a reason where the table cannot vouch for them: ``source_flag`` (a
    quality code outside ``columns.good_quality``), ``station_not_listed`` (the station is not
    in the station list), ``no_position`` (missing or impossible coordinates),
    ``ambiguous_local_time`` (a local time that daylight saving repeats or skips) and
    ``wind_direction`` (a direction outside [0, 360] with a non-zero speed).

    Raises:
        ObservationError: Naming the file, line and column: a missing column, a time that does
            not match the format, a field that is neither a number nor a missing marker, units
            that cannot be converted; or a station list that lists a station twice.
    """
    name = Path(path).name
    station_id = None
    if columns.station_from_name is not None:
        match = re.search(columns.station_from_name, name)
        if match is None:
            raise ObservationError(
                f"{path}: the file name does not match the station pattern "
                f"{columns.station_from_name!r}"
            )
        station_id = match.group(1)
    for column, measured in columns.variables.items():
        _check_measured(column, measured, str(path))

    frame = _read_text(path, columns.delimiter, columns.names)
    table = _Table(path, frame, first_line=1 if columns.names is not None else 2)
    table.require(columns.required())
    frame = table.frame
    n = len(frame)
    if n == 0:
        return empty_reports()

    times, ambiguous = _times(table, columns)
    if station_id is not None:
        stations = np.full(n, station_id, dtype=object)
    else:
        stations = frame[columns.station].to_numpy(dtype=object)
    coordinate_reason = np.full(n, "", dtype=object)
    if columns.latitude is not None and columns.longitude is not None:
        latitude = table.numbers(columns.latitude, columns.missing)
        longitude = table.numbers(columns.longitude, columns.missing)
        elevation = (
            table.numbers(columns.elevation, columns.missing)
            if columns.elevation
            else np.full(n, np.nan)
        )
    else:
        listed = _station_list(columns.stations).reindex(pd.Index(stations, dtype=object))
        latitude = listed["latitude"].to_numpy(dtype=np.float64)
        longitude = listed["longitude"].to_numpy(dtype=np.float64)
        elevation = listed["elevation"].to_numpy(dtype=np.float64)
        if columns.elevation is not None:  # the table's own height wins where it gives one
            own = table.numbers(columns.elevation, columns.missing)
            elevation = np.where(np.isnan(own), elevation, own)
        absent = ~pd.Index(stations, dtype=object).isin(_station_list(columns.stations).index)
        coordinate_reason[absent] = STATION_NOT_LISTED
    unusable = ~(np.abs(latitude) <= 90) | ~np.isfinite(longitude)
    coordinate_reason[unusable & (coordinate_reason == "")] = NO_COORDINATES
    row_reason = np.where(ambiguous, AMBIGUOUS_TIME, coordinate_reason)

    def flagged(column: str) -> np.ndarray:
        quality = columns.quality.get(column)
        if quality is None:
            return np.zeros(n, dtype=bool)
        return ~frame[quality].isin([g.strip() for g in columns.good_quality]).to_numpy()

    parts: list[dict[str, np.ndarray]] = []

    def add(rows: np.ndarray, variable: str, value, error, reason) -> None:
        parts.append(
            {
                "row": rows,
                "variable": np.full(rows.size, variable, dtype=object),
                "value": value[rows],
                "error_std": error[rows],
                "reason": reason[rows],
            }
        )

    for column, measured in columns.variables.items():
        raw = table.numbers(column, columns.missing)
        for code, replacement in measured.codes.items():
            raw = np.where(raw == code, replacement, raw)
        value = to_si(raw * measured.scale, measured.units, measured.variable)
        error = np.full(n, np.nan)
        if measured.error is not None:
            sigma = table.numbers(measured.error, columns.missing) * measured.scale
            zero = to_si(np.zeros(1), measured.units, measured.variable)[0]
            error = to_si(sigma, measured.units, measured.variable) - zero  # a difference
        reason = np.where(flagged(column) & (row_reason == ""), SOURCE_FLAG, row_reason)
        add(np.flatnonzero(~np.isnan(raw)), measured.variable, value, error, reason)

    if columns.wind is not None:
        wind = columns.wind
        speed = table.numbers(wind.speed, columns.missing) * wind.scale
        direction = table.numbers(wind.direction, columns.missing)
        present = ~np.isnan(speed) & ~np.isnan(direction)
        u, v = wind_components(speed, direction)
        bad = present & np.isnan(u)
        reason = np.where(
            (flagged(wind.speed) | flagged(wind.direction)) & (row_reason == ""),
            SOURCE_FLAG,
            row_reason,
        )
        reason = np.where(bad & (reason == ""), BAD_DIRECTION, reason)
        nothing = np.full(n, np.nan)
        rows = np.flatnonzero(present)
        add(rows, wind.u, to_si(u, wind.units, wind.u), nothing, reason)
        add(rows, wind.v, to_si(v, wind.units, wind.v), nothing, reason)

    if not parts:
        return empty_reports()
    joined = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    order = np.argsort(joined["row"], kind="stable")  # the table's order, variables within
    rows = joined["row"][order]
    reports = pd.DataFrame(
        {
            "station": stations[rows],
            "platform": columns.platform,
            "time": times[rows],
            "latitude": latitude[rows],
            "longitude": longitude[rows],
            "elevation": elevation[rows],
            "level": np.nan,
            "variable": joined["variable"][order],
            "value": joined["value"][order],
            "error_std": joined["error_std"][order],
            "footprint": 0.0,
            "reason": joined["reason"][order],
        }
    )
    return check_reports(reports, source=str(path))
