"""An observation table written as WMO BUFR edition 4: surface reports as SYNOP, soundings as
TEMP, the messages :func:`~appa.observations.ingest.bufr.read_bufr` reads back.

============== ====================================== ========================================
rows           BUFR                                   values
============== ====================================== ========================================
``synop``,     SYNOP: 301150 (WIGOS) + 307080, data   ``2m_temperature`` -> ``airTemperature``,
``station``,   category 0; one subset per station     ``2m_dewpoint_temperature`` ->
no level       and time, up to ``subsets_per_message`` ``dewpointTemperature``,
               subsets of one time per message        ``mean_sea_level_pressure`` ->
                                                      ``pressureReducedToMeanSeaLevel``,
                                                      ``surface_pressure`` ->
                                                      ``nonCoordinatePressure``, 10 m wind
                                                      components -> ``windDirection`` and
                                                      ``windSpeed``
``temp``, at   TEMP: 301150 + 309052, data category   per level (``pressure``, Pa):
a level (hPa)  2; one message per sounding (station   ``temperature`` -> ``airTemperature``,
               and launch time)                       ``geopotential`` -> geopotential height
                                                      (gpm, over g0 = 9.80665), wind as above
============== ====================================== ========================================

Every other row is refused, naming its platform and variable. Stations: a ``station`` field
holding WIGOS identifiers (``0-20000-0-10384``) or WMO block and station numbers (``10384``);
without one, each distinct position is a station, numbered ``0-20000-0-01001`` onwards in
order of first appearance. An observation is made at ``time`` (plus ``time_offset`` where the
table has one); ``elevation`` (m) is the station's height.

BUFR holds each element to a fixed decimal precision, and values are rounded to it as ecCodes
encodes them: temperatures to 0.01 K, pressures to 10 Pa, geopotential heights to 1 gpm (9.8
m2/s2 of geopotential), wind speed to 0.1 m/s and direction to 1 degree, positions to 1e-5
degrees, station heights to 0.1 m; SYNOP times to the minute (307080 holds no seconds), TEMP
times to the second. A value outside an element's range is an error naming the row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from appa.observations.ingest.convert import G0
from appa.observations.schema import ObservationError, validate_table

__all__ = ["SURFACE_VARIABLES", "UPPER_AIR_VARIABLES", "write_bufr"]

SYNOP_TEMPLATE = (301150, 307080)
TEMP_TEMPLATE = (301150, 309052)
# WMO table B elements the values go to (units as table B fixes them: K, Pa, gpm, m/s, degree)
_SURFACE_KEYS = {
    "2m_temperature": "airTemperature",
    "2m_dewpoint_temperature": "dewpointTemperature",
    "mean_sea_level_pressure": "pressureReducedToMeanSeaLevel",
    "surface_pressure": "nonCoordinatePressure",
}
_SURFACE_WIND = ("10m_u_component_of_wind", "10m_v_component_of_wind")
_UPPER_KEYS = {"temperature": "airTemperature", "geopotential": "nonCoordinateGeopotentialHeight"}
_UPPER_WIND = ("u_component_of_wind", "v_component_of_wind")
SURFACE_VARIABLES = (*_SURFACE_KEYS, *_SURFACE_WIND)
UPPER_AIR_VARIABLES = (*_UPPER_KEYS, *_UPPER_WIND)
SURFACE_PLATFORMS = ("synop", "station")
UPPER_AIR_PLATFORMS = ("temp",)
# elements set as integers (code and flag tables, counts, dates); the rest as doubles
_INTEGER_KEYS = {
    "wigosIdentifierSeries",
    "wigosIssuerOfIdentifier",
    "wigosIssueNumber",
    "blockNumber",
    "stationNumber",
    "year",
    "month",
    "day",
    "hour",
    "minute",
    "second",
    "windDirection",
    "extendedVerticalSoundingSignificance",
    "timePeriod",
    "nonCoordinateGeopotentialHeight",
}
# the WMO standard isobaric surfaces (hPa); other levels of a sounding are significant levels
STANDARD_LEVELS = (1000, 925, 850, 700, 500, 400, 300, 250, 200, 150, 100, 70, 50, 30, 20, 10)
# flag table 008042 (18 bits, bit 1 the leftmost): standard level, significant temperature
# level, significant wind level
_STANDARD, _SIGNIFICANT_TEMPERATURE, _SIGNIFICANT_WIND = 1 << 16, 1 << 12, 1 << 9
_WIGOS = re.compile(r"^(\d{1,2})-(\d{1,5})-(\d{1,5})-([!-~]{1,16})$")
_WMO_INDEX = re.compile(r"^\d{5}$")
# common table C-11: originating centre unknown (these reports are made, not received)
_MISSING_CENTRE = 255


def _eccodes() -> Any:
    try:
        import eccodes
    except ImportError:
        raise ObservationError("writing BUFR needs ecCodes: pip install 'appa[earthkit]'") from None
    return eccodes


def _station_parts(station: str) -> dict[str, Any]:
    """The identification elements of a station identifier (WIGOS or block and station)."""
    found = _WIGOS.match(station)
    if found:
        series, issuer, issue = (int(p) for p in found.groups()[:3])
        local = found.group(4)
        if series > 14 or issuer > 65534 or issue > 65534:
            raise ObservationError(
                f"station {station!r}: a WIGOS identifier's series is at most 14, its issuer and"
                " issue number at most 65534"
            )
        parts: dict[str, Any] = {
            "wigosIdentifierSeries": series,
            "wigosIssuerOfIdentifier": issuer,
            "wigosIssueNumber": issue,
            "wigosLocalIdentifierCharacter": local,
        }
        if (series, issuer, issue) == (0, 20000, 0) and _WMO_INDEX.match(local):
            parts.update(blockNumber=int(local[:2]), stationNumber=int(local[2:]))
        return parts
    if _WMO_INDEX.match(station):
        return {"blockNumber": int(station[:2]), "stationNumber": int(station[2:])}
    raise ObservationError(
        f"station {station!r} is neither a WIGOS identifier (0-20000-0-10384) nor a WMO block "
        "and station number (10384): BUFR SYNOP and TEMP reports cannot name it"
    )


def _direction_speed(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wind direction (degrees the wind blows from, whole, in [1, 360]; 0 for a calm) and speed
    (m/s, to 0.1) of eastward and northward components."""
    speed = np.round(np.hypot(u, v), 1)
    direction = np.round(np.mod(270.0 - np.degrees(np.arctan2(v, u)), 360.0))
    direction = np.where(direction == 0, 360.0, direction)  # a north wind is 360, a calm 0
    return np.where(speed == 0, 0.0, direction), speed


def _frame(table: xr.Dataset) -> pd.DataFrame:
    """The table's rows with their observation time, station and elevation; refuses rows that
    are neither SYNOP nor TEMP values, and rejected ones."""
    validate_table(table)
    n = table.sizes["obs"]
    if "reason" in table.variables:
        reasons = table["reason"].values.astype(str)
        if (reasons != "").any():
            first = int(np.flatnonzero(reasons != "")[0])
            raise ObservationError(
                f"{int((reasons != '').sum())} rejected observation(s) (first at obs={first}, "
                f"{reasons[first]}): write the accepted ones (appa.observations.schema.accepted)"
            )
    time = table["time"].values.astype("datetime64[ns]")
    if "time_offset" in table.variables:
        time = time + (table["time_offset"].values * 1e9).astype("timedelta64[ns]")
    frame = pd.DataFrame(
        {
            "time": time,
            "latitude": table["latitude"].values.astype(np.float64),
            "longitude": table["longitude"].values.astype(np.float64),
            "level": table["level"].values.astype(np.float64),
            "variable": table["variable"].values.astype(str),
            "value": table["value"].values.astype(np.float64),
            "platform": table["platform"].values.astype(str),
            "elevation": (
                table["elevation"].values.astype(np.float64)
                if "elevation" in table.variables
                else np.full(n, np.nan)
            ),
        }
    )
    # longitudes in [-180, 180), BUFR's range
    frame["longitude"] = np.mod(frame["longitude"] + 180.0, 360.0) - 180.0
    surface = (
        frame["platform"].isin(SURFACE_PLATFORMS)
        & frame["level"].isna()
        & frame["variable"].isin(SURFACE_VARIABLES)
    )
    upper = (
        frame["platform"].isin(UPPER_AIR_PLATFORMS)
        & frame["level"].notna()
        & frame["variable"].isin(UPPER_AIR_VARIABLES)
    )
    frame["kind"] = np.where(surface, "synop", np.where(upper, "temp", ""))
    refused = frame["kind"] == ""
    if refused.any():
        what = frame.loc[refused].assign(at=np.where(frame.loc[refused, "level"].isna(), "", "@"))
        groups = (
            what.groupby(["platform", "variable", "at"]).size().sort_values(ascending=False)[:5]
        )
        named = ", ".join(
            f"{n} {p} {v}{' at a level' if a else ''}" for (p, v, a), n in groups.items()
        )
        raise ObservationError(
            f"{int(refused.sum())} observation(s) cannot be written as BUFR (first at "
            f"obs={int(np.flatnonzero(refused)[0])}): {named}. SYNOP takes {SURFACE_PLATFORMS} "
            f"rows without a level of {list(SURFACE_VARIABLES)}; TEMP takes "
            f"{UPPER_AIR_PLATFORMS} rows at a level of {list(UPPER_AIR_VARIABLES)}"
        )
    frame["station"] = _stations(table, frame)
    return frame


def _stations(table: xr.Dataset, frame: pd.DataFrame) -> np.ndarray:
    """Each row's station: the table's ``station``, or one per distinct position."""
    if "station" in table.variables:
        stations = table["station"].values.astype(str)
        empty = stations == ""
        if not empty.any():
            return stations
        if not empty.all():
            raise ObservationError(
                f"{int(empty.sum())} observation(s) without a station (first at "
                f"obs={int(np.flatnonzero(empty)[0])}) among named ones"
            )
    position = pd.MultiIndex.from_arrays([frame["latitude"].round(5), frame["longitude"].round(5)])
    codes, _ = pd.factorize(position)
    return np.array([f"0-20000-0-{1001 + c:05d}" for c in codes], dtype=object)


def _reports(frame: pd.DataFrame, freq: str) -> pd.DataFrame:
    """The rows with times rounded to ``freq``; a value given twice in a report (station and
    time, and level), or a report whose rows disagree on position or elevation, is an error
    naming it."""
    frame = frame.assign(time=frame["time"].dt.round(freq))
    keys = ["station", "time"]
    twice = frame.duplicated([*keys, "variable", "level"], keep=False)
    if twice.any():
        row = frame.loc[twice].iloc[0]
        raise ObservationError(
            f"station {row['station']} at {row['time']}: {int(twice.sum())} values of "
            f"{row['variable']} (level {row['level']}) where a report holds one"
        )
    place = frame.groupby(keys)[["latitude", "longitude", "elevation"]].agg(["min", "max"])
    for name in ("latitude", "longitude", "elevation"):
        spread = (place[(name, "max")] - place[(name, "min")]).to_numpy()
        if (spread > 1e-6).any():
            station, time = place.index[int(np.flatnonzero(spread > 1e-6)[0])]
            raise ObservationError(
                f"station {station} at {time}: the rows of one report differ in {name}"
            )
    return frame


def _wind(
    values: pd.DataFrame, names: tuple[str, str], where: Callable[[int], str]
) -> dict[str, np.ndarray]:
    """``windDirection`` and ``windSpeed`` of the columns ``names`` (u, v) of ``values``."""
    if not any(name in values for name in names):
        return {}
    n = len(values)
    u, v = (
        values[name].to_numpy(dtype=np.float64) if name in values else np.full(n, np.nan)
        for name in names
    )
    half = np.isnan(u) != np.isnan(v)
    if half.any():
        raise ObservationError(
            f"{where(int(np.flatnonzero(half)[0]))}: one wind component without the other; "
            "BUFR holds wind as direction and speed"
        )
    direction, speed = _direction_speed(u, v)
    return {"windDirection": direction, "windSpeed": speed}


class _Encoder:
    """Packs messages with ecCodes, checking each value against its element's range."""

    def __init__(self) -> None:
        self.codes = _eccodes()
        self.ranges: dict[str, tuple[float, float]] = {}

    def _range(self, handle: int, key: str) -> tuple[float, float]:
        if key not in self.ranges:
            scale, reference, width = (
                int(self.codes.codes_get(handle, f"#1#{key}->{a}"))
                for a in ("scale", "reference", "width")
            )
            # all bits set is BUFR's missing value
            low, high = reference, reference + 2**width - 2
            self.ranges[key] = (low / 10.0**scale, high / 10.0**scale)
        return self.ranges[key]

    def message(
        self,
        *,
        template: tuple[int, ...],
        category: int,
        subcategory: int,
        when: pd.Timestamp,
        values: dict[str, np.ndarray],
        where: Callable[[int], str],
        compressed: bool = False,
        levels: dict[str, np.ndarray] | None = None,
    ) -> bytes:
        """One message: ``values`` maps an element to one value per subset (NaN and ``""``
        are missing), ``levels`` (a sounding, one subset) an element of the level sequence
        to one value per level."""
        codes = self.codes
        subsets = len(next(iter(values.values())))
        handle = codes.codes_bufr_new_from_samples("BUFR4")
        try:
            header = {
                "masterTableNumber": 0,
                "masterTablesVersionNumber": 40,  # WIGOS identifiers (301150)
                "bufrHeaderCentre": _MISSING_CENTRE,
                "dataCategory": category,
                "internationalDataSubCategory": subcategory,
                "typicalYear": when.year,
                "typicalMonth": when.month,
                "typicalDay": when.day,
                "typicalHour": when.hour,
                "typicalMinute": when.minute,
                "typicalSecond": when.second,
                "numberOfSubsets": subsets,
                "observedData": 1,
                "compressedData": int(compressed),
            }
            for key, value in header.items():
                codes.codes_set(handle, key, value)
            if levels is not None:
                count = len(next(iter(levels.values())))
                codes.codes_set_array(
                    handle, "inputExtendedDelayedDescriptorReplicationFactor", [count]
                )
                codes.codes_set_array(handle, "inputDelayedDescriptorReplicationFactor", [0])
            codes.codes_set_array(handle, "unexpandedDescriptors", list(template))
            for key, column in values.items():
                self._set(handle, key, column, subsets, compressed, where)
            for key, column in (levels or {}).items():
                # the level sequence's elements occur once per level (no wind shear follows)
                self._set(handle, key, column, subsets, compressed, where, every=True)
            codes.codes_set(handle, "pack", 1)
            return codes.codes_get_message(handle)
        finally:
            codes.codes_release(handle)

    def _set(
        self,
        handle: int,
        key: str,
        column: np.ndarray,
        subsets: int,
        compressed: bool,
        where: Callable[[int], str],
        every: bool = False,
    ) -> None:
        codes = self.codes
        if column.dtype == object:  # strings
            if compressed or subsets == 1:
                codes.codes_set_string_array(handle, f"#1#{key}", [str(s) for s in column])
            else:
                per = codes.codes_get_size(handle, key) // subsets
                for s, text in enumerate(column):
                    if text:
                        codes.codes_set(handle, f"#{s * per + 1}#{key}", str(text))
            return
        column = np.asarray(column, dtype=np.float64)
        low, high = self._range(handle, key)
        outside = ~np.isnan(column) & ((column < low) | (column > high))
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise ObservationError(
                f"{where(i)}: {key} {column[i]:g} is outside the range BUFR holds "
                f"[{low:g}, {high:g}]"
            )
        if every:
            name, full = key, column
        elif compressed or subsets == 1:
            name, full = f"#1#{key}", column
        else:  # uncompressed: the occurrences run through the subsets in order
            per = codes.codes_get_size(handle, key) // subsets
            name, full = key, np.full(subsets * per, np.nan)
            full[::per] = column
        if key in _INTEGER_KEYS:
            filled = np.where(np.isnan(full), codes.CODES_MISSING_LONG, np.round(full))
            codes.codes_set_long_array(handle, name, filled.astype(np.int64).tolist())
        else:
            filled = np.where(np.isnan(full), codes.CODES_MISSING_DOUBLE, full)
            codes.codes_set_double_array(handle, name, filled.tolist())


def _identification(stations: np.ndarray) -> dict[str, np.ndarray]:
    """Per-report identification elements of ``stations`` (missing where a station lacks
    one)."""
    parts = [_station_parts(str(s)) for s in stations]
    out: dict[str, np.ndarray] = {}
    for key in ("wigosIdentifierSeries", "wigosIssuerOfIdentifier", "wigosIssueNumber"):
        out[key] = np.array([p.get(key, np.nan) for p in parts], dtype=np.float64)
    out["wigosLocalIdentifierCharacter"] = np.array(
        [p.get("wigosLocalIdentifierCharacter", "") for p in parts], dtype=object
    )
    for key in ("blockNumber", "stationNumber"):
        out[key] = np.array([p.get(key, np.nan) for p in parts], dtype=np.float64)
    return out


def _dates(time: pd.Timestamp, n: int, seconds: bool) -> dict[str, np.ndarray]:
    parts = ["year", "month", "day", "hour", "minute", *(["second"] if seconds else [])]
    return {k: np.full(n, float(getattr(time, k))) for k in parts}


def _synop_messages(
    frame: pd.DataFrame, encoder: _Encoder, per_message: int, compressed: bool
) -> Iterator[bytes]:
    if frame.empty:
        return
    frame = _reports(frame, "min")
    keys = ["time", "station"]
    wide = frame.pivot_table(index=keys, columns="variable", values="value", aggfunc="first")
    places = frame.groupby(keys)[["latitude", "longitude", "elevation"]].first()
    wide = wide.join(places).sort_index()
    for time, reports in wide.groupby(level="time", sort=True):
        time = pd.Timestamp(time)
        for start in range(0, len(reports), per_message):
            chunk = reports.iloc[start : start + per_message]
            stations = chunk.index.get_level_values("station").to_numpy()

            def where(i: int, stations=stations, time=time) -> str:
                return f"SYNOP of station {stations[i]} at {time}"

            values: dict[str, np.ndarray] = {
                **_identification(stations),
                **_dates(time, len(chunk), seconds=False),
                "latitude": chunk["latitude"].to_numpy(),
                "longitude": chunk["longitude"].to_numpy(),
                "heightOfStationGroundAboveMeanSeaLevel": chunk["elevation"].to_numpy(),
            }
            for variable, key in _SURFACE_KEYS.items():
                if variable in chunk:
                    values[key] = chunk[variable].to_numpy(dtype=np.float64)
            values.update(_wind(chunk, _SURFACE_WIND, where))
            yield encoder.message(
                template=SYNOP_TEMPLATE,
                category=0,
                # common table C-13: main (00, 06, 12, 18 UTC), intermediate, hourly SYNOP
                subcategory=2 if time.hour % 6 == 0 else 1 if time.hour % 3 == 0 else 0,
                when=time,
                values=values,
                where=where,
                compressed=compressed and len(chunk) > 1,
            )


def _temp_messages(frame: pd.DataFrame, encoder: _Encoder) -> Iterator[bytes]:
    if frame.empty:
        return
    frame = _reports(frame, "s")
    for (time, station), sounding in frame.groupby(["time", "station"], sort=True):
        time = pd.Timestamp(time)
        wide = sounding.pivot_table(index="level", columns="variable", values="value")
        wide = wide.sort_index(ascending=False)  # from the ground up
        pressure = wide.index.to_numpy(dtype=np.float64)
        n = len(pressure)

        def where(i: int, station=station, time=time, pressure=pressure) -> str:
            return f"TEMP of station {station} at {time}, level {pressure[i]:g} hPa"

        temperature = (
            wide["temperature"].notna().to_numpy() if "temperature" in wide else np.zeros(n, bool)
        )
        significance = np.where(
            np.isin(pressure, STANDARD_LEVELS),
            _STANDARD,
            np.where(temperature, _SIGNIFICANT_TEMPERATURE, _SIGNIFICANT_WIND),
        )
        first = sounding.iloc[0]
        site = {
            **_identification(np.array([station], dtype=object)),
            **_dates(time, 1, seconds=True),
            "latitude": np.array([first["latitude"]]),
            "longitude": np.array([first["longitude"]]),
            "heightOfStationGroundAboveMeanSeaLevel": np.array([first["elevation"]]),
        }
        # one time and place per sounding: no time since launch, no drift
        levels: dict[str, np.ndarray] = {
            "timePeriod": np.zeros(n),
            "extendedVerticalSoundingSignificance": significance.astype(np.float64),
            "pressure": pressure * 100.0,  # hPa to Pa
            "latitudeDisplacement": np.zeros(n),
            "longitudeDisplacement": np.zeros(n),
        }
        if "temperature" in wide:
            levels["airTemperature"] = wide["temperature"].to_numpy(dtype=np.float64)
        if "geopotential" in wide:
            levels["nonCoordinateGeopotentialHeight"] = (
                wide["geopotential"].to_numpy(dtype=np.float64) / G0
            )
        levels.update(_wind(wide, _UPPER_WIND, where))
        yield encoder.message(
            template=TEMP_TEMPLATE,
            category=2,
            subcategory=4,  # common table C-13: TEMP from a fixed land station
            when=time,
            values=site,
            where=where,
            levels=levels,
        )


def write_bufr(
    table: xr.Dataset,
    path: str | Path,
    subsets_per_message: int = 100,
    compressed: bool = True,
) -> int:
    """Writes the observations of ``table`` (:mod:`appa.observations.schema`, optionally with
    ``station``, ``elevation`` and ``time_offset``) to the BUFR edition 4 file ``path``
    (written whole): surface rows as SYNOP reports, up to ``subsets_per_message`` per message
    (``compressed`` or not), each sounding as one TEMP message (see the module docstring for
    what is written and the precision BUFR keeps).

    Returns:
        The number of messages written.

    Raises:
        ObservationError: naming what BUFR cannot hold (rows of another platform or
            variable, rejected observations, one wind component without the other, a value
            outside its element's range, a station identifier), or an empty table.
    """
    from appa.files import written_whole

    if subsets_per_message < 1:
        raise ValueError(f"subsets_per_message must be positive, got {subsets_per_message}")
    frame = _frame(table)
    if frame.empty:
        raise ObservationError(f"{path}: no observations to write")
    encoder = _Encoder()
    surface, upper = frame[frame["kind"] == "synop"], frame[frame["kind"] == "temp"]
    messages = [
        *_synop_messages(surface, encoder, subsets_per_message, compressed),
        *_temp_messages(upper, encoder),
    ]
    with written_whole(path) as tmp, open(tmp, "wb") as stream:
        for message in messages:
            stream.write(message)
    return len(messages)
