"""Quality control: for every rule an observation it rejects and one it keeps, the order of the
rules, the default errors, and the path from reports to a store table."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from appa.observations.errors import fill_errors, table_error
from appa.observations.ingest.prepare import (
    GridField,
    IngestAccount,
    prepare_reports,
    reports_to_table,
)
from appa.observations.ingest.reports import check_reports
from appa.observations.quality import (
    QualityRules,
    departure_exceeds,
    quality_control,
    reject_blacklisted,
    reject_duplicates,
    reject_impossible_motion,
    reject_out_of_range,
    reject_spikes,
    reject_station_moved,
)
from appa.observations.schema import ObservationError, read_observations, write_observations


def reports(rows: list[dict]) -> pd.DataFrame:
    base = {
        "station": "10384",
        "platform": "synop",
        "time": "2026-01-01T00:00",
        "latitude": 52.0,
        "longitude": 13.0,
        "elevation": np.nan,
        "level": np.nan,
        "variable": "2m_temperature",
        "value": 280.0,
        "error_std": np.nan,
        "footprint": 0.0,
        "reason": "",
    }
    return check_reports(pd.DataFrame([{**base, **r} for r in rows]))


def times(frame):
    return frame["time"].to_numpy().astype("datetime64[ns]")


def test_range_check_rejects_the_impossible_and_keeps_the_extreme():
    frame = reports(
        [
            {"value": 400.0},
            {"value": 330.0},
            {"variable": "geopotential", "level": 500.0, "value": 1000.0, "platform": "temp"},
        ]
    )
    assert reject_out_of_range(frame).tolist() == [True, False, True]


def test_blacklist_matches_station_and_variable_patterns():
    frame = reports(
        [
            {"station": "0-20000-0-10384"},
            {"station": "0-20000-0-10384", "variable": "mean_sea_level_pressure", "value": 1e5},
            {"station": "0-20000-0-10385"},
        ]
    )
    bad = reject_blacklisted(frame, [("0-20000-0-10384", "2m_*")])
    assert bad.tolist() == [True, False, False]


def test_duplicates_keep_the_report_closest_to_the_state_time_then_the_last():
    frame = reports(
        [
            {"time": "2026-01-01T00:20", "value": 281.0},
            {"time": "2026-01-01T00:00", "value": 280.0},  # closest to 00:00: kept
            {"time": "2026-01-01T01:00", "value": 279.0},  # another state time: kept
            {"time": "2026-01-01T01:00", "value": 279.5},  # same again, later: kept over it
        ]
    )
    state = np.array(
        ["2026-01-01T00:00", "2026-01-01T00:00", "2026-01-01T01:00", "2026-01-01T01:00"],
        dtype="datetime64[ns]",
    )
    assert reject_duplicates(frame, state).tolist() == [True, False, True, False]


def test_a_fixed_station_reporting_from_elsewhere_is_rejected_a_mobile_one_is_not():
    rows = [{"time": f"2026-01-01T0{h}:00"} for h in range(4)]
    rows.append({"time": "2026-01-01T05:00", "latitude": 53.0})  # 111 km north
    rows.append({"time": "2026-01-01T06:00", "latitude": 52.02})  # 2 km
    frame = reports(rows)
    assert reject_station_moved(frame, 10.0).tolist() == [False] * 4 + [True, False]
    ships = frame.assign(platform="ship")
    assert not reject_station_moved(ships, 10.0).any()


def test_station_positions_across_the_dateline_are_one_place():
    frame = reports([{"longitude": 179.99}, {"longitude": -179.99, "time": "2026-01-01T01:00"}])
    assert not reject_station_moved(frame, 10.0).any()


def test_an_isolated_impossible_ship_position_is_rejected_the_track_kept():
    track = [
        {"time": "2026-01-01T00:00", "latitude": 40.0, "longitude": -30.0},
        {"time": "2026-01-01T01:00", "latitude": 40.1, "longitude": -30.0},  # 11 km/h
        {"time": "2026-01-01T02:00", "latitude": 45.0, "longitude": -30.0},  # 540 km in 1 h
        {"time": "2026-01-01T03:00", "latitude": 40.3, "longitude": -30.0},
        {"time": "2026-01-01T04:00", "latitude": 40.4, "longitude": -30.0},
    ]
    frame = reports([{**r, "platform": "ship", "station": "DBBH"} for r in track])
    assert reject_impossible_motion(frame, {"ship": 40.0}).tolist() == [
        False,
        False,
        True,
        False,
        False,
    ]
    # an aircraft covers it easily
    flights = frame.assign(platform="aircraft")
    assert not reject_impossible_motion(flights, {"aircraft": 350.0}).any()


def test_a_spike_is_rejected_a_front_passing_is_not():
    values = [280.0, 280.5, 295.0, 281.0, 281.5]  # up 14.5 K and back in an hour
    frame = reports([{"time": f"2026-01-01T0{h}:00", "value": v} for h, v in enumerate(values)])
    assert reject_spikes(frame, {"2m_temperature": 10.0}, 6.0).tolist() == [
        False,
        False,
        True,
        False,
        False,
    ]
    front = [280.0, 280.5, 268.0, 267.0, 266.5]  # a 12.5 K drop that stays
    frame = reports([{"time": f"2026-01-01T0{h}:00", "value": v} for h, v in enumerate(front)])
    assert not reject_spikes(frame, {"2m_temperature": 10.0}, 6.0).any()


def test_background_departures_are_judged_with_both_errors():
    value = np.array([290.0, 284.0, 300.0])
    bad = departure_exceeds(value, np.full(3, 280.0), np.full(3, 1.0), np.full(3, 1.0), 5.0)
    assert bad.tolist() == [True, False, True]
    assert not departure_exceeds(value, np.full(3, np.nan), np.ones(3), np.ones(3), 5.0).any()


def test_rules_apply_in_order_and_never_overwrite_a_reason():
    frame = reports(
        [
            {"value": 400.0, "station": "BAD"},  # out of range first, though blacklisted
            {"station": "BAD"},
            {"value": 281.0},
        ]
    )
    frame = fill_errors(frame)
    out = quality_control(frame, QualityRules(blacklist=(("BAD", "*"),)), times(frame))
    assert out["reason"].tolist() == ["out_of_range", "blacklisted", ""]
    assert out["value"].tolist() == frame["value"].tolist()  # rejected values are kept


def test_default_errors_interpolate_in_log_pressure_and_fill_only_missing():
    sonde = table_error(((1000, 500), (1.2, 0.8)), np.array([1000.0, 707.1068, 500.0, 300.0]))
    np.testing.assert_allclose(sonde, [1.2, 1.0, 0.8, 0.8], atol=1e-6)
    frame = reports(
        [
            {"error_std": 0.3},
            {},
            {"platform": "aircraft", "variable": "temperature", "level": 250.0, "value": 220.0},
        ]
    )
    out = fill_errors(frame, representativeness={"2m_temperature": 2.0})
    np.testing.assert_allclose(out["error_std"], [np.hypot(0.3, 2.0), 2.5, 1.0])


def test_a_report_without_error_or_table_entry_is_named():
    frame = reports([{"platform": "buoy"}])
    with pytest.raises(ObservationError, match="buoy/2m_temperature"):
        fill_errors(frame)


def test_prepared_reports_go_to_a_store_with_their_reasons(tmp_path):
    orography = GridField(
        np.full((3, 4), 100.0), np.array([-60.0, 0.0, 60.0]), np.array([0.0, 90.0, 180.0, 270.0])
    )
    frame = reports(
        [
            {"time": "2026-01-01T00:10", "elevation": 600.0},
            {"time": "2026-01-01T00:40", "value": 400.0, "station": "10385"},
            {"time": "2026-01-01T02:25", "station": "10386", "longitude": -10.0},
        ]
    )
    out = prepare_reports(frame, "1h", "20min", QualityRules(), orography=orography)
    assert out["reason"].tolist() == ["", "out_of_range", "off_time"]
    np.testing.assert_allclose(out["height_correction"], [0.0065 * 500, 0.0, 0.0])
    assert out["value"].iloc[0] == pytest.approx(280.0 + 3.25)
    assert out["time_offset"].tolist() == [600.0, -1200.0, 1500.0]
    assert out["longitude"].iloc[2] == 350.0
    account = IngestAccount()
    account.add(out)
    summary = account.table()
    assert summary.loc["synop"].to_dict() == {
        "read": 3,
        "kept": 1,
        "off_time": 1,
        "out_of_range": 1,
    }
    table = reports_to_table(out)
    write_observations(table, tmp_path / "obs")
    accepted = read_observations(tmp_path / "obs")
    assert accepted.sizes["obs"] == 1 and accepted["reason"].values.tolist() == [""]
    everything = read_observations(tmp_path / "obs", rejected=True)
    assert sorted(everything["reason"].values.tolist()) == ["", "off_time", "out_of_range"]
    assert everything["station"].values.tolist().count("10385") == 1


def test_background_check_samples_the_reference_at_the_state_time():
    lat, lon = np.array([-45.0, 45.0]), np.array([0.0, 180.0])
    t = pd.to_datetime(["2026-01-01T00:00", "2026-01-01T06:00"])
    mean = xr.Dataset(
        {
            "2m_temperature": (
                ("time", "latitude", "longitude"),
                np.stack([np.full((2, 2), 280.0), np.full((2, 2), 290.0)]),
            )
        },
        coords={"time": t, "latitude": lat, "longitude": lon},
    )
    std = mean.copy(deep=True)
    std["2m_temperature"][:] = 1.0
    frame = reports(
        [{"time": "2026-01-01T00:00", "value": 289.0}, {"time": "2026-01-01T06:00", "value": 289.0}]
    )
    out = prepare_reports(frame, "6h", "3h", QualityRules(background_k=3.0), background=(mean, std))
    assert out["reason"].tolist() == ["background", ""]


def test_a_job_skips_or_refuses_observations_its_state_lacks():
    from appa.assimilation.screening import screen_observations
    from appa.data.spec import StateSpec
    from appa.observations.schema import make_table

    spec = StateSpec(surface=["2m_temperature"], atmospheric=["temperature"], levels=[500])
    table = make_table(
        time=["2026-01-01T00:00"] * 4,
        latitude=[0.0] * 4,
        longitude=[0.0] * 4,
        variable=["2m_temperature", "temperature", "temperature", "2m_dewpoint_temperature"],
        level=[np.nan, 500.0, 923.0, np.nan],
        value=[280.0, 250.0, 275.0, 270.0],
        error_std=1.0,
        platform="synop",
    )
    states = pd.DatetimeIndex(["2026-01-01T00:00"])
    args = (table, states, pd.Timedelta("6h"), pd.Timedelta("3h"), spec, [280.0, 250.0],
            [10.0, 10.0], 10.0)  # fmt: skip
    with pytest.raises(ObservationError, match="2m_dewpoint_temperature"):
        screen_observations(*args)
    screening = screen_observations(*args, outside_state="skip")
    assert screening.reason.tolist() == ["used", "used", "not_in_state", "not_in_state"]
    assert screening.used()["variable"].values.tolist() == ["2m_temperature", "temperature"]


def test_a_satellite_or_aircraft_at_two_places_is_not_a_duplicate():
    rows = [{"platform": p, "station": "x", "latitude": la} for p in ("satellite", "synop")
            for la in (10.0, 11.0)]  # fmt: skip
    frame = reports(rows)
    assert reject_duplicates(frame, times(frame)).tolist() == [False, False, True, False]


def test_a_noisy_reading_of_a_value_at_its_bound_is_kept():
    frame = reports(
        [
            {"variable": "oxygen", "level": 500.0, "value": -3.0, "error_std": 3.0,
             "platform": "argo"},
            {"variable": "oxygen", "level": 500.0, "value": -10.0, "error_std": 3.0,
             "platform": "argo"},
        ]
    )  # fmt: skip
    assert reject_out_of_range(frame).tolist() == [False, True]
