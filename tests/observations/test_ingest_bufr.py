"""The BUFR reader against messages encoded with known values (bufr_messages): identifiers,
times, positions, levels and every conversion checked against values computed by hand."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("eccodes")

import bufr_messages as bm

from appa.observations.ingest.bufr import read_bufr
from appa.observations.ingest.convert import pressure_from_pressure_altitude
from appa.observations.ingest.reports import REPORT_COLUMNS
from appa.observations.schema import ObservationError

G0 = 9.80665


@pytest.fixture
def write(tmp_path):
    def _write(name: str, *messages: bytes) -> str:
        path = tmp_path / name
        path.write_bytes(b"".join(messages))
        return str(path)

    return _write


def _value(frame: pd.DataFrame, station: str, variable: str, level: float | None = None):
    rows = frame[(frame.station == station) & (frame.variable == variable)]
    if level is not None:
        rows = rows[np.isclose(rows.level, level)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_icao_pressure_altitude_matches_the_standard_atmosphere_table():
    # ICAO Doc 7488 pressures at geopotential altitudes (m): sea level, in each layer and at
    # the layers' boundaries (11, 20, 32 km), and at 30000 ft
    altitude = np.array([0.0, 1000.0, 5000.0, 9144.0, 11000.0, 15000.0, 20000.0, 32000.0])
    table_hpa = np.array([1013.25, 898.746, 540.199, 300.896, 226.321, 120.446, 54.7489, 8.68019])
    np.testing.assert_allclose(
        pressure_from_pressure_altitude(altitude) / 100, table_hpa, rtol=2e-5
    )
    # continuous across the layers' boundaries, NaN above the model's top and for NaN
    for boundary in (11000.0, 20000.0, 32000.0):
        below, above = pressure_from_pressure_altitude(boundary + np.array([-1e-6, 1e-6]))
        assert 0 < below - above < 1e-4
    assert np.isnan(pressure_from_pressure_altitude(np.array([47001.0, np.nan]))).all()


@pytest.mark.parametrize("compressed", [True, False])
def test_synop_stations_times_values_and_winds(write, compressed):
    counts = {}
    path = write("synop.bufr", bm.synop(compressed))
    frame = read_bufr([path], counts=counts)
    assert list(frame.columns) == list(REPORT_COLUMNS)
    assert set(frame.station) == set(bm.SYNOP_STATIONS)
    assert (frame.platform == "synop").all() and (frame.reason == "").all()
    assert frame.level.isna().all() and frame.error_std.isna().all()
    assert (frame.footprint == 0).all()
    wigos, plain, calm = bm.SYNOP_STATIONS

    t = _value(frame, wigos, "2m_temperature")
    assert t.value == pytest.approx(275.15)
    assert t.time == pd.Timestamp("2026-01-15 06:00")
    assert (t.latitude, t.longitude, t.elevation) == pytest.approx((52.5, 13.25, 48.0))
    assert _value(frame, wigos, "2m_dewpoint_temperature").value == pytest.approx(272.0)
    assert _value(frame, wigos, "mean_sea_level_pressure").value == pytest.approx(100810.0)
    assert _value(frame, wigos, "surface_pressure").value == pytest.approx(100230.0)
    # a wind from the west (270 deg) blows eastward: u = +5, v = 0
    assert _value(frame, wigos, "10m_u_component_of_wind").value == pytest.approx(5.0)
    assert _value(frame, wigos, "10m_v_component_of_wind").value == pytest.approx(0.0, abs=1e-12)
    # from the east (90 deg) at 2 m/s: u = -2
    assert _value(frame, plain, "10m_u_component_of_wind").value == pytest.approx(-2.0)
    assert _value(frame, plain, "2m_temperature").elevation == pytest.approx(110.0)
    # calm: zero components; its time has minutes; its longitude is kept as given
    row = _value(frame, calm, "10m_v_component_of_wind")
    assert row.value == 0.0 and row.time == pd.Timestamp("2026-01-15 06:30")
    assert row.longitude == pytest.approx(200.0) and np.isnan(row.elevation)
    # missing values are no rows: 10385's dew point, 10386's mean-sea-level pressure
    assert not ((frame.station == plain) & (frame.variable == "2m_dewpoint_temperature")).any()
    assert not ((frame.station == calm) & (frame.variable == "mean_sea_level_pressure")).any()
    assert len(frame) == 3 * 6 - 2
    assert counts[path].messages == {"synop": 1} and counts[path].reports == {"synop": 3}


def test_ship_call_sign_and_no_station_pressure(write):
    frame = read_bufr([write("ship.bufr", bm.ship())])
    assert set(frame.station) == {"DBBH"} and set(frame.platform) == {"ship"}
    assert set(frame.variable) == {
        "2m_temperature",
        "2m_dewpoint_temperature",
        "mean_sea_level_pressure",
        "10m_u_component_of_wind",
        "10m_v_component_of_wind",
    }
    assert frame.elevation.isna().all()
    # from the south at 10 m/s: northward
    assert _value(frame, "DBBH", "10m_v_component_of_wind").value == pytest.approx(10.0)
    assert _value(frame, "DBBH", "10m_u_component_of_wind").value == pytest.approx(0.0, abs=1e-9)
    row = _value(frame, "DBBH", "2m_temperature")
    assert (row.latitude, row.longitude) == pytest.approx((54.2, -30.1))
    assert row.time == pd.Timestamp("2026-01-15 12:00")


def test_temp_levels_geopotential_winds_and_drift(write):
    frame = read_bufr([write("temp.bufr", bm.temp())])
    assert set(frame.station) == {"10393"} and set(frame.platform) == {"temp"}
    assert (frame.reason == "").all() and frame.elevation.isna().all()
    levels = bm.TEMP_LEVELS
    temperature = frame[frame.variable == "temperature"].sort_values("level", ascending=False)
    # the surface, the standard levels and the significant 700 hPa level, in hPa; not the
    # pressure of the wind-shear level that follows them
    np.testing.assert_allclose(temperature.level, [1005.0, 925.0, 850.0, 700.0, 500.0])
    np.testing.assert_allclose(temperature.value, levels["airTemperature"])
    assert bm.TEMP_SHEAR_PRESSURE / 100 not in set(frame.level)
    launch = pd.Timestamp("2026-01-15 05:45")
    expected = [launch + pd.Timedelta(seconds=s) for s in levels["timePeriod"]]
    assert list(temperature.time) == expected
    np.testing.assert_allclose(temperature.latitude, 52.21 + np.array([0, 0.01, 0.02, 0.05, 0.1]))
    np.testing.assert_allclose(temperature.longitude, 14.12 + np.array([0, 0.02, 0.05, 0.1, 0.3]))
    # geopotential = g0 * geopotential height, where the height is given
    z = frame[frame.variable == "geopotential"].sort_values("level", ascending=False)
    np.testing.assert_allclose(z.level, [925.0, 850.0, 500.0])
    np.testing.assert_allclose(z.value, [780 * G0, 1490 * G0, 5550 * G0])
    # 225 deg (from the south-west) at 8 m/s: u = v = 8 / sqrt(2)
    u = _value(frame, "10393", "u_component_of_wind", 925.0)
    v = _value(frame, "10393", "v_component_of_wind", 925.0)
    assert (u.value, v.value) == pytest.approx((8 / np.sqrt(2), 8 / np.sqrt(2)))
    # 300 deg at 25 m/s: u = 25 sin(60 deg), v = -25 cos(60 deg)
    u = _value(frame, "10393", "u_component_of_wind", 500.0)
    v = _value(frame, "10393", "v_component_of_wind", 500.0)
    assert (u.value, v.value) == pytest.approx((25 * np.sqrt(3) / 2, -12.5))
    assert u.time == launch + pd.Timedelta(seconds=1500)
    assert set(frame[frame.variable == "u_component_of_wind"].level) == {925.0, 850.0, 500.0}


@pytest.mark.parametrize("compressed", [True, False])
def test_temp_subsets_keep_their_own_levels(write, compressed):
    frame = read_bufr([write("temps.bufr", bm.temps(compressed))])
    got = {
        (r.station, r.level): r.value for r in frame[frame.variable == "temperature"].itertuples()
    }
    expected = {("10393", 850.0): 266.0, ("10393", 500.0): 240.0, ("10184", 850.0): 265.0}
    if compressed:
        expected[("10184", 500.0)] = 239.0
    assert got == pytest.approx(expected)
    assert (frame.time == pd.Timestamp("2026-01-15 06:00")).all()


@pytest.mark.parametrize("compressed", [True, False])
def test_aircraft_identifiers_and_flight_level_pressure(write, compressed):
    frame = read_bufr([write("amdar.bufr", bm.aircraft(compressed))])
    assert set(frame.platform) == {"aircraft"} and (frame.reason == "").all()
    # the registration where given, else the flight number
    assert set(frame.station) == {"EU1234", "BA200"}
    t = frame[frame.variable == "temperature"].sort_values("time")
    np.testing.assert_allclose(t.value, [223.0, 268.0])
    # ICAO standard atmosphere: 10000 m -> 264.36 hPa, 3000 m -> 701.09 hPa
    np.testing.assert_allclose(t.level, [264.3624, 701.0853], rtol=1e-6)
    assert list(t.time) == [pd.Timestamp("2026-01-15 07:10:20"), pd.Timestamp("2026-01-15 07:20")]
    # the report without temperature still gives its wind, at 11000 m (226.32 hPa); 45 deg
    u = _value(frame, "BA200", "u_component_of_wind")
    assert u.level == pytest.approx(226.3204, rel=1e-6)
    assert u.value == pytest.approx(-30 / np.sqrt(2))
    assert not ((frame.station == "BA200") & (frame.variable == "temperature")).any()
    # a wind from the north (360 deg) blows southward
    v = frame[(frame.variable == "v_component_of_wind") & np.isclose(frame.level, 701.0853)]
    assert v.value.item() == pytest.approx(-10.0)


def test_aircraft_height_is_the_pressure_altitude_of_311001(write):
    frame = read_bufr([write("airep.bufr", bm.airep())])
    assert set(frame.station) == {"KL641"}
    # 9000 m: 307.42 hPa in the standard atmosphere
    np.testing.assert_allclose(frame.level, 307.42, rtol=2e-5)
    assert _value(frame, "KL641", "temperature").value == pytest.approx(228.2)


def test_impossible_values_are_kept_and_unplaceable_rows_rejected(write):
    values = {
        "blockNumber": [10, 10, 10],
        "stationNumber": [1, 2, 3],
        "year": 2026,
        "month": 1,
        "day": 15,
        "hour": [6, 6, bm.MISSING_LONG],
        "latitude": [50.0, 95.0, 50.0],
        "longitude": 10.0,
        "airTemperature": [400.0, 280.0, 280.0],  # 400 K: quality control's to reject
        "windDirection": [400, bm.MISSING_LONG, bm.MISSING_LONG],
        "windSpeed": [5.0, 3.0, bm.MISSING],
    }
    frame = read_bufr([write("odd.bufr", bm.encode([307080], 0, 3, first=values))])
    reasons = {(r.station, r.variable): r.reason for r in frame.itertuples()}
    assert reasons == {
        ("10001", "2m_temperature"): "",
        ("10001", "10m_u_component_of_wind"): "wind_direction",
        ("10001", "10m_v_component_of_wind"): "wind_direction",
        ("10002", "2m_temperature"): "no_position",
        ("10003", "2m_temperature"): "no_time",
    }
    assert _value(frame, "10001", "2m_temperature").value == pytest.approx(400.0)


def test_skipped_categories_are_counted(write):
    path = write(
        "mixed.bufr",
        bm.other_category(21),
        bm.synop(True),
        bm.other_category(21),
        bm.other_category(3),
        bm.temp(),
    )
    counts = {}
    frame = read_bufr([path], counts=counts)
    assert set(frame.platform) == {"synop", "temp"}
    assert counts[path].skipped == {21: 2, 3: 1}
    assert counts[path].messages == {"synop": 1, "temp": 1}
    assert counts[path].reports == {"synop": 3, "temp": 1}
    # a file of skipped messages only gives no rows
    only = write("other.bufr", bm.other_category(21))
    assert read_bufr([only], counts=counts).empty and counts[only].skipped == {21: 1}


def test_files_that_are_not_bufr_or_truncated_are_named(write, tmp_path):
    text = write("notes.txt", b"station,value\n10384,280.1\n" * 20)
    with pytest.raises(ObservationError, match=r"notes\.txt: not a BUFR file"):
        read_bufr([text])
    message = bm.synop(True)
    cut = write("cut.bufr", message, message[: len(message) // 2])
    with pytest.raises(ObservationError, match=r"cut\.bufr, message 2: truncated or corrupt"):
        read_bufr([cut])
    broken_end = write("end.bufr", message[:-4] + b"XXXX")
    with pytest.raises(ObservationError, match=r"end\.bufr, message 1: truncated or corrupt"):
        read_bufr([broken_end])
    garbled = bytearray(message)
    garbled[40:60] = b"\xff" * 20  # the template's descriptors
    garbled = write("garbled.bufr", bm.temp(), bytes(garbled))
    with pytest.raises(ObservationError, match=r"garbled\.bufr, message 2: corrupt"):
        read_bufr([garbled])
    with pytest.raises(ObservationError, match=r"absent\.bufr: cannot be read"):
        read_bufr([str(tmp_path / "absent.bufr")])


def test_without_eccodes_the_error_says_what_to_install(write, monkeypatch):
    path = write("synop.bufr", bm.synop(True))
    monkeypatch.setitem(sys.modules, "eccodes", None)
    with pytest.raises(ObservationError, match=r"pip install 'appa\[earthkit\]'"):
        read_bufr([path])


def test_no_files_give_an_empty_frame():
    frame = read_bufr([])
    assert frame.empty and list(frame.columns) == list(REPORT_COLUMNS)
