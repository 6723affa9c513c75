"""The BUFR writer: observation tables written as SYNOP and TEMP and read back by the reader
equal within BUFR's precision (values, stations, times, elevations), and what BUFR cannot hold
refused by name."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from appa.observations.ingest.bufr import read_bufr
from appa.observations.ingest.bufr_write import write_bufr
from appa.observations.ingest.convert import G0
from appa.observations.schema import ObservationError, concat_tables, make_table

pytest.importorskip("eccodes")

# the precision BUFR keeps (half its step): temperatures 0.01 K, pressures 10 Pa,
# geopotential 1 gpm; wind from direction (1 degree) and speed (0.1 m/s)
PRECISION = {
    "2m_temperature": 0.005,
    "2m_dewpoint_temperature": 0.005,
    "mean_sea_level_pressure": 5.0,
    "surface_pressure": 5.0,
    "temperature": 0.005,
    "geopotential": G0 / 2,
}
WIND = (
    "10m_u_component_of_wind",
    "10m_v_component_of_wind",
    "u_component_of_wind",
    "v_component_of_wind",
)


def _wind_precision(speed: np.ndarray) -> np.ndarray:
    return 0.05 + speed * np.sin(np.radians(0.5)) + 1e-9


def _surface(n_stations: int, times: list[str], rng, stations: list[str] | None = None):
    """A table of every SYNOP variable at ``n_stations`` stations and ``times``."""
    lat = rng.uniform(-80, 80, n_stations)
    lon = rng.uniform(0, 360, n_stations)
    elevation = np.round(rng.uniform(0, 2500, n_stations), 1)
    rows = []
    for t in times:
        for variable, mean, std in (
            ("2m_temperature", 285.0, 10.0),
            ("2m_dewpoint_temperature", 280.0, 10.0),
            ("mean_sea_level_pressure", 101000.0, 1500.0),
            ("surface_pressure", 95000.0, 3000.0),
            ("10m_u_component_of_wind", 0.0, 6.0),
            ("10m_v_component_of_wind", 0.0, 6.0),
        ):
            table = make_table(
                np.full(n_stations, np.datetime64(t, "ns")),
                lat,
                lon,
                variable,
                mean + std * rng.standard_normal(n_stations),
                1.0,
                "station",
            )
            table = table.assign(elevation=("obs", elevation))
            if stations is not None:
                table = table.assign(station=("obs", np.array(stations)))
            rows.append(table)
    return concat_tables(rows)


def _soundings(rng):
    """Two stations' soundings at 00 and 12 UTC (the second launched at 11:05:30 with a
    time offset): standard levels with temperature, geopotential and wind, significant levels
    of temperature alone between them."""
    tables = []
    sites = {"0-20000-0-72215": (32.5, 278.2), "0-22000-1-SONDE7": (-45.0, 170.0)}
    for station, (lat, lon) in sites.items():
        for time, offset in (("2003-03-01T00:00", 0.0), ("2003-03-01T11:00", 330.0)):
            levels = np.array([1000.0, 850.0, 700.0, 612.3, 500.0, 250.0])
            standard = levels != 612.3
            for variable, values in (
                ("temperature", 290.0 - 60.0 * np.log(1000.0 / levels)),
                ("geopotential", G0 * 7000.0 * np.log(1000.0 / levels) + 1000.0),
                ("u_component_of_wind", rng.normal(10, 8, levels.size)),
                ("v_component_of_wind", rng.normal(0, 8, levels.size)),
            ):
                keep = standard | (variable == "temperature")
                k = int(keep.sum())
                table = make_table(
                    np.full(k, np.datetime64(time, "ns")),
                    np.full(k, lat),
                    np.full(k, lon),
                    variable,
                    values[keep] + rng.normal(0, 0.3, k),
                    1.0,
                    "temp",
                    level=levels[keep],
                )
                tables.append(
                    table.assign(
                        station=("obs", np.full(k, station)),
                        elevation=("obs", np.full(k, 151.0)),
                        time_offset=("obs", np.full(k, offset)),
                    )
                )
    return concat_tables(tables)


def _compare(table: xr.Dataset, read: pd.DataFrame) -> None:
    """Every value of ``table`` read back once, at its station, time, position, level (and for
    surface reports elevation), within BUFR's precision."""
    offset = table["time_offset"].values if "time_offset" in table else 0.0
    time = table["time"].values + (np.asarray(offset) * 1e9).astype("timedelta64[ns]")
    written = pd.DataFrame(
        {
            "station": table["station"].values.astype(str),
            "variable": table["variable"].values.astype(str),
            "time": time,
            "level": table["level"].values,
            "expected": table["value"].values,
            "latitude": table["latitude"].values,
            "longitude": table["longitude"].values,
            "elevation": table["elevation"].values,
        }
    )
    assert len(read) == len(written)
    both = written.merge(
        read.rename(columns={"latitude": "lat", "longitude": "lon", "elevation": "elev"}),
        on=["station", "variable", "time", "level"],
        how="left",
        validate="one_to_one",
    )
    assert both["value"].notna().all()
    error = np.abs(both["value"] - both["expected"]).to_numpy()
    variable = both["variable"].to_numpy()
    for name, tolerance in PRECISION.items():
        assert np.all(error[variable == name] <= tolerance + 1e-9), name
    # each wind component within the error of the wind vector its speed allows
    wind = np.isin(variable, WIND)
    squares = (both["expected"] ** 2).where(wind, 0.0)
    report = [both["station"], both["time"], both["level"]]
    speed = np.sqrt(squares.groupby(report, dropna=False).transform("sum"))
    assert wind.any() and np.all(error[wind] <= _wind_precision(speed.to_numpy()[wind]))
    assert np.allclose(both["lat"], both["latitude"], atol=5e-6)
    assert np.allclose(np.mod(both["lon"] - both["longitude"] + 180, 360) - 180, 0, atol=5e-6)
    # the reader gives a sounding's levels no elevation (they are at a pressure)
    surface = both["level"].isna()
    assert np.allclose(both["elev"][surface], both["elevation"][surface], atol=0.05)
    assert both["elev"][~surface].isna().all()


@pytest.mark.parametrize("compressed", [True, False])
def test_synop_reports_round_trip(tmp_path, compressed):
    rng = np.random.default_rng(0)
    stations = [f"0-20000-0-{10000 + i}" for i in range(10)] + ["0-22000-1-LOCAL_ID", "72215"]
    table = _surface(12, ["2003-03-01T00:00", "2003-03-01T06:00"], rng, stations)
    path = tmp_path / "synop.bufr"
    # 12 reports per time, 5 per message: 3 messages per time
    assert write_bufr(table, path, subsets_per_message=5, compressed=compressed) == 6
    read = read_bufr([path])
    assert set(read["platform"]) == {"synop"}
    assert set(read["station"]) == set(stations)
    _compare(table, read)


def test_winds_round_trip_within_the_precision_of_direction_and_speed(tmp_path):
    u = np.array([0.0, 0.0, 5.0, -5.0, 0.0, 0.04, 30.0, -12.3])
    v = np.array([0.0, -7.0, 0.0, 0.0, 7.0, 0.0, 30.0, 4.56])
    n = u.size
    lat, lon = np.linspace(-60, 60, n), np.linspace(0, 300, n)
    table = concat_tables(
        [
            make_table(
                np.full(n, np.datetime64("2003-03-01T12:00")), lat, lon, name, x, 1.0, "synop"
            )
            for name, x in (("10m_u_component_of_wind", u), ("10m_v_component_of_wind", v))
        ]
    )
    write_bufr(table, tmp_path / "wind.bufr")
    read = read_bufr([tmp_path / "wind.bufr"]).sort_values(["station", "variable"])
    got_u = read.loc[read["variable"] == "10m_u_component_of_wind", "value"].to_numpy()
    got_v = read.loc[read["variable"] == "10m_v_component_of_wind", "value"].to_numpy()
    speed = np.hypot(u, v)
    assert np.all(np.hypot(got_u - u, got_v - v) <= _wind_precision(speed))
    # a calm and a wind too weak for 0.1 m/s read back as zero
    assert got_u[0] == got_v[0] == 0.0 and got_u[5] == got_v[5] == 0.0


def test_soundings_round_trip_with_standard_and_significant_levels(tmp_path):
    table = _soundings(np.random.default_rng(1))
    path = tmp_path / "temp.bufr"
    assert write_bufr(table, path) == 4  # one message per sounding
    read = read_bufr([path])
    assert set(read["platform"]) == {"temp"}
    _compare(table, read)
    # the significant level keeps its pressure to BUFR's 10 Pa
    assert 612.3 in set(read["level"].round(1))
    assert pd.Timestamp("2003-03-01T11:05:30") in set(read["time"])


def test_values_and_times_are_rounded_as_bufr_holds_them(tmp_path):
    t = np.datetime64("2003-03-01T06:00:40")  # SYNOP holds minutes: 06:01
    table = concat_tables(
        [
            make_table([t], [10.0], [20.0], "2m_temperature", [280.1234], 1.0, "synop"),
            make_table([t], [10.0], [20.0], "mean_sea_level_pressure", [101234.0], 1.0, "synop"),
            make_table([t], [10.0], [20.0], "geopotential", [55000.0], 1.0, "temp", level=[500]),
        ]
    )
    write_bufr(table, tmp_path / "x.bufr")
    read = read_bufr([tmp_path / "x.bufr"]).set_index("variable")
    assert read.loc["2m_temperature", "value"] == pytest.approx(280.12, abs=1e-9)
    assert read.loc["mean_sea_level_pressure", "value"] == 101230.0
    assert read.loc["geopotential", "value"] == pytest.approx(G0 * round(55000.0 / G0))
    assert read.loc["2m_temperature", "time"] == pd.Timestamp("2003-03-01T06:01")
    assert read.loc["geopotential", "time"] == pd.Timestamp("2003-03-01T06:00:40")


def test_without_station_ids_each_position_is_one_station(tmp_path):
    rng = np.random.default_rng(2)
    table = _surface(5, ["2003-03-01T00:00", "2003-03-01T06:00"], rng)
    write_bufr(table, tmp_path / "s.bufr", compressed=False)
    read = read_bufr([tmp_path / "s.bufr"])
    ids = read.groupby("station")[["latitude", "longitude"]].nunique()
    assert len(ids) == 5 and (ids == 1).all().all()
    assert sorted(ids.index) == [f"0-20000-0-{1001 + i:05d}" for i in range(5)]


def _one(variable="2m_temperature", value=280.0, platform="synop", level=None, **fields):
    table = make_table(["2003-03-01T00:00"], [10.0], [20.0], variable, [value], 1.0, platform,
                       level=level)  # fmt: skip
    return table.assign({k: ("obs", [v]) for k, v in fields.items()})


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (_one("temperature", 250.0, "satellite", level=[500]), "1 satellite temperature at a"),
        (_one("sea_surface_temperature"), "1 synop sea_surface_temperature"),
        (_one("specific_humidity", 0.01, "temp", level=[500]), "temp specific_humidity"),
        (_one("10m_u_component_of_wind", 3.0), "one wind component without the other"),
        (_one(reason="out_of_range"), "rejected observation"),
        (_one(station="PARIS"), "station 'PARIS' is neither a WIGOS identifier"),
        (_one(value=700.0, station="10384"), "SYNOP of station 10384 at 2003-03-01 00:00:00"),
    ],
)
def test_what_bufr_cannot_hold_is_refused_by_name(tmp_path, table, message):
    with pytest.raises(ObservationError, match=message):
        write_bufr(table, tmp_path / "x.bufr")
    assert not (tmp_path / "x.bufr").exists()
