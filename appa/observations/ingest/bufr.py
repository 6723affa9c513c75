"""WMO BUFR reports decoded into a reports frame (:mod:`~appa.observations.ingest.reports`).

Read by BUFR data category (section 1), whatever the template, by the ecCodes key names of
the WMO table B elements:

============ ========== ===================================================================
category     platform   values
============ ========== ===================================================================
0 (land)     ``synop``  ``airTemperature`` -> ``2m_temperature``, ``dewpointTemperature`` ->
                        ``2m_dewpoint_temperature``, ``pressureReducedToMeanSeaLevel`` ->
1 (sea)      ``ship``   ``mean_sea_level_pressure``, ``nonCoordinatePressure`` (station
                        pressure, 010004) -> ``surface_pressure``, ``windDirection`` and
                        ``windSpeed`` -> ``10m_u/v_component_of_wind``; the first of each
                        in a report (e.g. templates 307080, 307096, 308009)
2 (sounding) ``temp``   per level of the replicated level sequence (e.g. 309052, standard
                        and significant levels alike): ``airTemperature`` ->
                        ``temperature``, ``nonCoordinateGeopotentialHeight`` (gpm) ->
                        ``geopotential``, wind -> ``u/v_component_of_wind``, on the level's
                        ``pressure``; time and position are the launch's plus the level's
                        ``timePeriod`` and ``latitude/longitudeDisplacement`` when given
4 (aircraft) ``aircraft`` ``airTemperature`` -> ``temperature`` and wind at ``pressure``, else
                        at the pressure of ``flightLevel`` (or of ``height``, the pressure
                        altitude of 311001) in the ICAO standard atmosphere
============ ========== ===================================================================

Stations: the WIGOS identifier (``0-20000-0-10384``) when a report has its four parts, else
block and station numbers (``10384``), else the ship's or mobile station's call sign, else
(aircraft) the registration, else the flight number. Times: ``year`` ... ``minute`` (and
``second``) of the report. A missing BUFR value is no observation (no row); a value present but
implausible is kept for quality control. Rows whose position, time or level cannot be placed
are kept with a ``reason`` (``no_position``, ``no_time``, ``no_level``, ``wind_direction`` for
a direction outside [0, 360]). Messages of other categories are skipped and counted.

ecCodes is used directly rather than through pdbufr: the values are read as whole arrays per
message (all subsets of a compressed message at once), several times faster than pdbufr's
per-subset tree walk for the same keys (``benchmarks/bench_ingest_bufr.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from appa.observations.ingest.convert import (
    pressure_from_pressure_altitude,
    to_si,
    wind_components,
)
from appa.observations.ingest.reports import REPORT_COLUMNS, check_reports, empty_reports
from appa.observations.schema import ObservationError

__all__ = ["BufrCounts", "read_bufr"]

PLATFORMS: dict[int, str] = {0: "synop", 1: "ship", 2: "temp", 4: "aircraft"}

# Units of the WMO table B elements as ecCodes decodes them (fixed by the table, whatever the
# template), converted by to_si
_SURFACE: dict[str, tuple[str, str]] = {
    "airTemperature": ("2m_temperature", "K"),
    "dewpointTemperature": ("2m_dewpoint_temperature", "K"),
    "pressureReducedToMeanSeaLevel": ("mean_sea_level_pressure", "Pa"),
    "nonCoordinatePressure": ("surface_pressure", "Pa"),
}
_SURFACE_WIND = ("10m_u_component_of_wind", "10m_v_component_of_wind")
_UPPER_WIND = ("u_component_of_wind", "v_component_of_wind")
_WIND_UNITS = "m s**-1"
_DATE_KEYS = ("year", "month", "day", "hour", "minute", "second")
_WIGOS_KEYS = ("wigosIdentifierSeries", "wigosIssuerOfIdentifier", "wigosIssueNumber")
# per-level elements of a sounding's level sequence (they occur in no other sequence of 309052)
_LEVEL_ONLY = (
    "airTemperature",
    "dewpointTemperature",
    "nonCoordinateGeopotentialHeight",
    "windDirection",
    "windSpeed",
)
# elements of the level sequence that later sequences (wind shear) repeat: their first
# occurrences are the levels'
_LEVEL_SHARED = ("pressure", "timePeriod", "latitudeDisplacement", "longitudeDisplacement")


@dataclass
class BufrCounts:
    """What :func:`read_bufr` found in one file: messages and reports (subsets) read per
    platform, and messages skipped per BUFR data category."""

    messages: Counter[str] = field(default_factory=Counter)
    reports: Counter[str] = field(default_factory=Counter)
    skipped: Counter[int] = field(default_factory=Counter)


def _eccodes() -> Any:
    try:
        import eccodes
    except ImportError:
        raise ObservationError("reading BUFR needs ecCodes: pip install 'appa[earthkit]'") from None
    return eccodes


class _Message:
    """Values of one unpacked BUFR message by subset: ``first`` gives the first occurrence of
    an element in each subset, ``occurrences`` all of them."""

    def __init__(self, codes: Any, handle: int, label: str) -> None:
        self.codes, self.handle, self.label = codes, handle, label
        self.subsets = int(codes.codes_get(handle, "numberOfSubsets"))
        self.compressed = bool(codes.codes_get(handle, "compressedData"))

    def _doubles(self, key: str) -> np.ndarray:
        values = np.asarray(self.codes.codes_get_double_array(self.handle, key), np.float64)
        return np.where(values == self.codes.CODES_MISSING_DOUBLE, np.nan, values)

    def _defined(self, key: str) -> bool:
        return bool(self.codes.codes_is_defined(self.handle, key))

    def _per_subset(self, values: np.ndarray, key: str) -> np.ndarray:
        # a compressed message stores an element equal in all subsets once
        if values.size == 1:
            return np.repeat(values, self.subsets)
        if values.size != self.subsets:
            raise ObservationError(
                f"{self.label}: {key} has {values.size} values for {self.subsets} subsets"
            )
        return values

    def first(self, key: str) -> np.ndarray:
        """``(subsets,)`` the first value of ``key`` in each subset, NaN where missing or absent."""
        if not self._defined(f"#1#{key}"):
            return np.full(self.subsets, np.nan)
        if self.compressed or self.subsets == 1:
            return self._per_subset(self._doubles(f"#1#{key}"), key)
        every = self._doubles(key)
        if every.size == self.subsets:  # one occurrence per subset
            return every
        out = np.full(self.subsets, np.nan)
        for s, values in enumerate(self.occurrences(key)):
            out[s] = values[0] if values.size else np.nan
        return out

    def _in_subset(self, s: int, key: str) -> np.ndarray:
        # codes_is_defined does not understand the subset selection
        try:
            return self._doubles(f"/subsetNumber={s + 1}/{key}")
        except self.codes.KeyValueNotFoundError:
            return np.zeros(0)

    def occurrences(self, key: str) -> list[np.ndarray]:
        """Every value of ``key`` in each subset, in message order (one array per subset)."""
        if not self._defined(f"#1#{key}"):
            return [np.zeros(0)] * self.subsets
        if self.subsets == 1:
            return [self._doubles(key)]
        if not self.compressed:
            return [self._in_subset(s, key) for s in range(self.subsets)]
        # compressed subsets share one structure: occurrence r of every subset at once
        ranks = []
        while self._defined(f"#{len(ranks) + 1}#{key}"):
            ranks.append(self._per_subset(self._doubles(f"#{len(ranks) + 1}#{key}"), key))
        matrix = np.stack(ranks, axis=1) if ranks else np.zeros((self.subsets, 0))
        return list(matrix)

    def strings(self, key: str) -> np.ndarray:
        """``(subsets,)`` the first string of ``key`` in each subset, ``""`` where missing."""
        if not self._defined(f"#1#{key}"):
            return np.full(self.subsets, "", dtype=object)
        if self.compressed or self.subsets == 1:
            values = self.codes.codes_get_string_array(self.handle, f"#1#{key}")
        else:
            values = self.codes.codes_get_string_array(self.handle, key)
            if len(values) != self.subsets:
                values = [self._string_in_subset(s, key) for s in range(self.subsets)]
        values = np.array([v.strip() for v in values], dtype=object)
        return np.repeat(values, self.subsets) if values.size == 1 else values

    def _string_in_subset(self, s: int, key: str) -> str:
        try:
            values = self.codes.codes_get_string_array(self.handle, f"/subsetNumber={s + 1}/{key}")
        except self.codes.KeyValueNotFoundError:
            return ""
        return values[0] if len(values) else ""

    def times(self) -> np.ndarray:
        """``(subsets, 6)`` year, month, day, hour, minute, second of each report (NaN where
        missing; a missing minute or second is 0)."""
        parts = np.stack([self.first(k) for k in _DATE_KEYS], axis=1)
        parts[:, 4:] = np.where(np.isnan(parts[:, 4:]), 0.0, parts[:, 4:])
        return parts

    def stations(self) -> np.ndarray:
        """``(subsets,)`` station identifiers: WIGOS, else block and station, else call sign."""
        wigos = [self.first(k) for k in _WIGOS_KEYS]
        local = self.strings("wigosLocalIdentifierCharacter")
        block, number = self.first("blockNumber"), self.first("stationNumber")
        call_sign = self.strings("shipOrMobileLandStationIdentifier")
        out = np.empty(self.subsets, dtype=object)
        for s in range(self.subsets):
            parts = [w[s] for w in wigos]
            if local[s] and not np.isnan(parts).any():
                out[s] = "-".join(str(int(p)) for p in parts) + f"-{local[s]}"
            elif not (np.isnan(block[s]) or np.isnan(number[s])):
                out[s] = f"{int(block[s]):02d}{int(number[s]):03d}"
            else:
                out[s] = call_sign[s]
        return out


def _datetimes(parts: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """datetime64[ns] of date ``parts`` ``(n, 6)`` plus ``offset`` seconds; NaT where a part is
    missing or the date impossible."""
    complete = ~np.isnan(parts).any(axis=1)
    out = np.full(len(parts), np.datetime64("NaT"), dtype="datetime64[ns]")
    if complete.any():
        good = pd.DataFrame(parts[complete].astype(np.int64), columns=list(_DATE_KEYS))
        dates = pd.to_datetime(good, errors="coerce").to_numpy("datetime64[ns]")
        out[complete] = dates + (offset[complete] * 1e9).astype("timedelta64[ns]")
    return out


class _Rows:
    """Columns of decoded values gathered message by message; times, SI units and reasons are
    made once for all in :meth:`frame`."""

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []
        self.units: dict[str, str] = {}

    def add(
        self,
        *,
        station: np.ndarray,
        platform: str,
        time: np.ndarray,
        latitude: np.ndarray,
        longitude: np.ndarray,
        level: np.ndarray,
        variable: str,
        value: np.ndarray,
        units: str,
        offset: np.ndarray | None = None,
        elevation: np.ndarray | None = None,
        reason: np.ndarray | None = None,
    ) -> None:
        """One variable at ``n`` places (arrays ``(n,)``, ``time``: date parts ``(n, 6)``,
        ``offset``: seconds after them): a NaN value is no row, unless a ``reason`` rejects it
        (a value the reader could not convert)."""
        keep = ~np.isnan(value) if reason is None else ~np.isnan(value) | (reason != "")
        if not keep.any():
            return
        n = int(keep.sum())
        if self.units.setdefault(variable, units) != units:  # one conversion per variable
            raise ValueError(f"{variable} is read in {units} and {self.units[variable]}")
        self.parts.append(
            {
                "station": station[keep],
                "platform": np.full(n, platform, dtype=object),
                "parts": time[keep],
                "offset": np.zeros(n) if offset is None else offset[keep],
                "latitude": latitude[keep],
                "longitude": longitude[keep],
                "elevation": np.full(n, np.nan) if elevation is None else elevation[keep],
                "level": level[keep],
                "variable": np.full(n, variable, dtype=object),
                "value": value[keep],
                "reason": np.full(n, "", dtype=object) if reason is None else reason[keep],
            }
        )

    def add_wind(
        self, names: tuple[str, str], speed: np.ndarray, direction: np.ndarray, **where: Any
    ) -> None:
        """Eastward and northward components from speed (m/s) and direction (degrees); a calm
        (speed 0) needs no direction; a direction outside [0, 360] is rejected."""
        u, v = wind_components(speed, direction)
        observed = ~np.isnan(speed) & (~np.isnan(direction) | (speed == 0))
        bad = observed & np.isnan(u)
        reason = np.where(bad, "wind_direction", "").astype(object)
        for name, component in zip(names, (u, v), strict=True):
            value = np.where(observed & ~bad, component, np.nan)
            self.add(variable=name, value=value, units=_WIND_UNITS, reason=reason, **where)

    def frame(self, source: str) -> pd.DataFrame:
        """The checked reports frame of every value added."""
        if not self.parts:
            return empty_reports()
        columns = {c: np.concatenate([p[c] for p in self.parts]) for c in self.parts[0]}
        value, variable = columns["value"], columns["variable"]
        for name, units in self.units.items():
            rows = variable == name
            value[rows] = to_si(value[rows], units, name)
        time = _datetimes(columns.pop("parts"), columns.pop("offset"))
        lat, lon, level = columns["latitude"], columns["longitude"], columns["level"]
        upper = np.isin(columns["platform"], ["temp", "aircraft"])
        why = columns["reason"]
        for good, name in (
            (~np.isnat(time), "no_time"),
            ((np.abs(lat) <= 90) & np.isfinite(lon), "no_position"),
            (~upper | (level > 0), "no_level"),
        ):
            why = np.where((why == "") & ~good, name, why)
        columns.update(time=time, reason=why)
        columns["error_std"] = np.full(len(value), np.nan)
        columns["footprint"] = np.zeros(len(value))
        return check_reports(pd.DataFrame(columns)[list(REPORT_COLUMNS)], source=source)


def _surface(message: _Message, platform: str, rows: _Rows) -> None:
    where = {
        "station": message.stations(),
        "platform": platform,
        "time": message.times(),
        "latitude": message.first("latitude"),
        "longitude": message.first("longitude"),
        "elevation": message.first("heightOfStationGroundAboveMeanSeaLevel"),
        "level": np.full(message.subsets, np.nan),
    }
    for key, (variable, units) in _SURFACE.items():
        rows.add(variable=variable, value=message.first(key), units=units, **where)
    speed, direction = message.first("windSpeed"), message.first("windDirection")
    rows.add_wind(_SURFACE_WIND, speed, direction, **where)


def _sounding(message: _Message, rows: _Rows) -> None:
    stations, launch = message.stations(), message.times()
    latitude, longitude = message.first("latitude"), message.first("longitude")
    per_level = {k: message.occurrences(k) for k in _LEVEL_ONLY + _LEVEL_SHARED}
    for s in range(message.subsets):
        counts = {k: per_level[k][s].size for k in _LEVEL_ONLY if per_level[k][s].size}
        n = max(counts.values(), default=0)
        short = sorted(k for k, c in counts.items() if c != n)
        short += [k for k in ("pressure",) if per_level[k][s].size < n]
        if short:
            raise ObservationError(
                f"{message.label}, subset {s + 1}: a sounding of {n} levels with fewer values of"
                f" {short}; the levels cannot be matched"
            )
        if n == 0:
            continue

        def level_values(key: str, fill: float, s: int = s, n: int = n) -> np.ndarray:
            values = per_level[key][s][:n]
            values = np.concatenate([values, np.full(n - values.size, np.nan)])
            return np.where(np.isnan(values), fill, values)

        where = {
            "station": np.full(n, stations[s], dtype=object),
            "platform": "temp",
            "time": np.repeat(launch[s : s + 1], n, axis=0),
            "offset": level_values("timePeriod", 0.0),
            "latitude": latitude[s] + level_values("latitudeDisplacement", 0.0),
            "longitude": longitude[s] + level_values("longitudeDisplacement", 0.0),
            "level": level_values("pressure", np.nan) / 100.0,  # Pa to hPa
        }
        rows.add(variable="temperature", value=level_values("airTemperature", np.nan),
                 units="K", **where)  # fmt: skip
        height = level_values("nonCoordinateGeopotentialHeight", np.nan)
        rows.add(variable="geopotential", value=height, units="gpm", **where)
        speed = level_values("windSpeed", np.nan)
        direction = level_values("windDirection", np.nan)
        rows.add_wind(_UPPER_WIND, speed, direction, **where)


def _aircraft(message: _Message, rows: _Rows) -> None:
    registration = message.strings("aircraftRegistrationNumberOrOtherIdentification")
    flight = message.strings("aircraftFlightNumber")
    pressure = message.first("pressure")
    for key in ("flightLevel", "height"):  # pressure altitudes
        missing = np.isnan(pressure)
        if not missing.any():
            break
        pressure[missing] = pressure_from_pressure_altitude(message.first(key)[missing])
    where = {
        "station": np.where(registration != "", registration, flight),
        "platform": "aircraft",
        "time": message.times(),
        "latitude": message.first("latitude"),
        "longitude": message.first("longitude"),
        "level": pressure / 100.0,  # Pa to hPa
    }
    rows.add(variable="temperature", value=message.first("airTemperature"), units="K", **where)
    speed, direction = message.first("windSpeed"), message.first("windDirection")
    rows.add_wind(_UPPER_WIND, speed, direction, **where)


_READERS: dict[str, Callable[[_Message, _Rows], None]] = {
    "synop": lambda m, rows: _surface(m, "synop", rows),
    "ship": lambda m, rows: _surface(m, "ship", rows),
    "temp": _sounding,
    "aircraft": _aircraft,
}


def _read_file(codes: Any, path: Path, rows: _Rows, counts: BufrCounts) -> None:
    try:
        stream = open(path, "rb")
    except OSError as error:
        raise ObservationError(f"{path}: cannot be read ({error.strerror})") from None
    number = 0
    with stream:
        while True:
            label = f"{path}, message {number + 1}"
            try:
                handle = codes.codes_bufr_new_from_file(stream)
            except codes.GribInternalError as error:
                raise ObservationError(f"{label}: truncated or corrupt BUFR ({error})") from None
            if handle is None:
                break
            number += 1
            try:
                category = int(codes.codes_get(handle, "dataCategory"))
                platform = PLATFORMS.get(category)
                if platform is None:
                    counts.skipped[category] += 1
                    continue
                codes.codes_set(handle, "skipExtraKeyAttributes", 1)
                codes.codes_set(handle, "unpack", 1)
                message = _Message(codes, handle, label)
                _READERS[platform](message, rows)
            except codes.GribInternalError as error:
                raise ObservationError(f"{label}: corrupt BUFR ({error})") from None
            finally:
                codes.codes_release(handle)
            counts.messages[platform] += 1
            counts.reports[platform] += message.subsets
    if number == 0:
        raise ObservationError(f"{path}: not a BUFR file (no BUFR message in it)")


def read_bufr(
    paths: Sequence[str | Path], counts: dict[str, BufrCounts] | None = None
) -> pd.DataFrame:
    """Decoded reports (:func:`~appa.observations.ingest.reports.check_reports`) of the SYNOP,
    SHIP, TEMP and aircraft messages in the BUFR files ``paths`` (see the module docstring for
    what is read).

    Arguments:
        counts: When given, filled with one :class:`BufrCounts` per file (keyed by the path as
            given): messages and reports read per platform, messages skipped per category.

    Raises:
        ObservationError: naming the file (and the message) that is not BUFR, is truncated or
            corrupt, or whose soundings' levels cannot be matched.
    """
    codes = _eccodes()
    rows = _Rows()
    for path in paths:
        found = BufrCounts()
        _read_file(codes, Path(path), rows, found)
        if counts is not None:
            counts[str(path)] = found
    return rows.frame(source=", ".join(str(p) for p in paths) or "BUFR")
