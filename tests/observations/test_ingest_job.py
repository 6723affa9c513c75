"""`appa ingest` as a user runs it: BUFR surface and upper-air reports of a toy Earth into one
store, its account per platform, new partitions only, and a reanalysis that reads the store."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from bufr_messages import MISSING, encode
from typer.testing import CliRunner

from appa.cli import app
from appa.observations.ingest.convert import G0
from appa.observations.ingest.prepare import GridField
from appa.observations.schema import read_observations, store_partitions

ROOT = Path(__file__).resolve().parents[2]
PRIOR = ROOT / "pipelines" / "priors" / "toy-earth-tiny"
LAPSE = 0.0065


def _field(truth: xr.Dataset, name: str, time, level=None) -> GridField:
    da = truth[name].sel(time=time)
    if level is not None:
        da = da.sel(level=level)
    return GridField(da.values, truth["latitude"].values, truth["longitude"].values)


def _synop_messages(truth: xr.Dataset, times, rng) -> list[bytes]:
    """Land stations reporting 2 m temperature (at their own height, which differs from the
    model's ground), sea-level pressure and dew point, 50 per compressed message; the same
    stations every day."""
    n = 150
    sites = np.random.default_rng(1)
    lat = sites.uniform(-70, 70, n)
    lon = sites.uniform(0, 360, n)
    orography = GridField(
        truth["geopotential_at_surface"].values / G0,
        truth["latitude"].values,
        truth["longitude"].values,
    ).at(lat, lon)
    elevation = np.round(np.maximum(orography + sites.normal(0, 150, n), 0.0))
    messages = []
    for t in times:
        t = pd.Timestamp(t)
        t2m = _field(truth, "2m_temperature", t).at(lat, lon)
        t2m_station = t2m - LAPSE * (elevation - orography) + rng.normal(0, 0.5, n)
        msl = _field(truth, "mean_sea_level_pressure", t).at(lat, lon) + rng.normal(0, 50, n)
        for chunk in np.array_split(np.arange(n), 3):
            k = chunk.size
            first = {
                "blockNumber": [int(10 + i // 1000) for i in chunk],
                "stationNumber": [int(i % 1000) for i in chunk],
                "year": [t.year] * k,
                "month": [t.month] * k,
                "day": [t.day] * k,
                "hour": [t.hour] * k,
                "minute": [10] * k,  # ten minutes after the state time
                "latitude": np.round(lat[chunk], 4).tolist(),
                "longitude": np.round(lon[chunk], 4).tolist(),
                "heightOfStationGroundAboveMeanSeaLevel": elevation[chunk].tolist(),
                "airTemperature": np.round(t2m_station[chunk], 2).tolist(),
                "dewpointTemperature": np.round(t2m_station[chunk] - 3.0, 2).tolist(),
                "pressureReducedToMeanSeaLevel": np.round(msl[chunk], -1).tolist(),
                "nonCoordinatePressure": [MISSING] * k,
                "windDirection": [270] * k,
                "windSpeed": [5.0] * k,
            }
            messages.append(encode([307080], 0, k, first=first, compressed=True))
    return messages


def _temp_messages(truth: xr.Dataset, times, rng) -> list[bytes]:
    """Soundings of 500 hPa temperature (a state level) and 850 hPa (not one)."""
    messages = []
    sites = np.random.default_rng(2)
    lat = sites.uniform(-60, 60, 20)
    lon = sites.uniform(0, 360, 20)
    for t in times:
        t = pd.Timestamp(t)
        t500 = _field(truth, "temperature", t, 500).at(lat, lon)
        for i in range(lat.size):
            values = {
                "blockNumber": 20,
                "stationNumber": i,
                "year": t.year,
                "month": t.month,
                "day": t.day,
                "hour": t.hour,
                "minute": 0,
                "second": 0,
                "latitude": round(float(lat[i]), 4),
                "longitude": round(float(lon[i]), 4),
                "pressure": [85000.0, 50000.0],
                "airTemperature": [round(float(t500[i]) + 25.0, 2), round(float(t500[i]), 2)],
            }
            messages.append(
                encode(
                    [309052],
                    2,
                    1,
                    values,
                    replications={
                        "inputExtendedDelayedDescriptorReplicationFactor": [2],
                        "inputDelayedDescriptorReplicationFactor": [0],
                    },
                )
            )
    return messages


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Two days of toy Earth and BUFR files of its stations and soundings, one per day."""
    from worlds import toy_world

    folder = tmp_path_factory.mktemp("ingest")
    truth_path, _ = toy_world(folder, days=3)
    truth = xr.open_zarr(truth_path).load()
    rng = np.random.default_rng(0)
    files = {}
    for day in ("2003-03-01", "2003-03-02"):
        times = pd.date_range(day, periods=4, freq="6h")
        path = folder / f"synop-{day}.bufr"
        path.write_bytes(b"".join(_synop_messages(truth, times, rng)))
        temp = folder / f"temp-{day}.bufr"
        temp.write_bytes(b"".join(_temp_messages(truth, times, rng)))
        files[day] = [str(path), str(temp)]
    return {"truth": truth_path, "files": files, "folder": folder}


def _ingest(*args: str):
    return CliRunner().invoke(app, ["ingest", *args], catch_exceptions=False)


def test_ingest_corrects_heights_accounts_per_platform_and_adds_partitions(reports, tmp_path):
    store = tmp_path / "obs"
    day1, day2 = reports["files"]["2003-03-01"], reports["files"]["2003-03-02"]
    result = _ingest("bufr", *day1, "--out", str(store), "--grid", reports["truth"],
                     "--set", "time_step=6h")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "synop" in result.output and "temp" in result.output
    table = read_observations(store, rejected=True)
    synop_t2m = table.where(
        (table["platform"] == "synop") & (table["variable"] == "2m_temperature"), drop=True
    )
    assert synop_t2m.sizes["obs"] == 4 * 150
    # the station's 2 m temperature is brought back to the model's ground: within the noise
    truth = xr.open_zarr(reports["truth"]).load()
    at = [
        _field(truth, "2m_temperature", pd.Timestamp(t)).at(np.array([la]), np.array([lo]))[0]
        for t, la, lo in zip(
            synop_t2m["time"].values,
            synop_t2m["latitude"].values,
            synop_t2m["longitude"].values,
            strict=True,
        )
    ]
    departure = synop_t2m["value"].values - np.array(at)
    assert abs(departure.mean()) < 0.15 and departure.std() < 0.8
    assert np.any(np.abs(synop_t2m["height_correction"].values) > 0.5)
    assert set(np.unique(synop_t2m["time_offset"].values)) == {600.0}
    meta = json.loads((store / "observations.json").read_text())
    account = meta["history"][0]["account"]
    assert account["synop"]["kept"] == 4 * 150 * 5  # t2m, dew point, msl, u, v
    assert account["temp"]["kept"] == 4 * 20 * 2
    # a second day adds its partition; the first day again is refused, naming it
    assert _ingest("bufr", *day2, "--out", str(store), "--set", "time_step=6h").exit_code == 0
    assert store_partitions(store)[1] == ["2003-03-01T0000", "2003-03-02T0000"]
    again = _ingest("bufr", *day1, "--out", str(store), "--set", "time_step=6h")
    assert again.exit_code == 2 and "2003-03-01T0000" in again.output


def test_a_reanalysis_reads_the_ingested_reports(reports, tmp_path, ray_cluster):
    from appa.io.archive import open_archive
    from appa.jobs.assimilate import AssimilateConfig, run_assimilation

    store = tmp_path / "obs"
    files = reports["files"]["2003-03-01"] + reports["files"]["2003-03-02"]
    result = _ingest("bufr", *files, "--out", str(store), "--grid", reports["truth"],
                     "--set", "time_step=6h")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = {
        "task": "reanalysis", "prior": {"path": str(PRIOR), "device": "cpu"},
        "observations": [str(store)], "start": "2003-03-01T00:00", "end": "2003-03-02T18:00",
        "members": 2, "seed": 0,
        "sampling": {"sampler": "pc", "steps": 3, "corrections": 1, "iterations": 1},
        "observation_use": {"outside_state": "skip"},
        "output": str(tmp_path / "reanalysis.zarr"),
        "runner": {"cpus_per_worker": 1, "progress": False, "stall_timeout_s": 300},
    }  # fmt: skip
    archive, _ = run_assimilation(AssimilateConfig.model_validate(doc))
    assert archive.complete
    summary = json.loads(open_archive(archive.url).attrs["observation_summary"])
    channels = summary["stores"][0]["channels"]
    assert channels["2m_temperature"]["used"] > 1000
    assert channels["temperature@500"]["used"] == 8 * 20
    assert channels["temperature@850"]["dropped"] == {"not_in_state": 8 * 20}
    assert channels["2m_dewpoint_temperature"]["dropped"] == {"not_in_state": 8 * 150}


def test_bufr_a_station_table_and_a_swath_go_into_one_store(reports, tmp_path):
    """Three formats in one ingest, configured in YAML as a user writes it."""
    import yaml

    truth = xr.open_zarr(reports["truth"]).load()
    t = pd.Timestamp("2003-03-01T06:00")
    # a station table in degrees Celsius and hPa, one station reporting twice an hour
    t2m = _field(truth, "2m_temperature", t).at(np.array([48.0]), np.array([2.0]))[0]
    table = tmp_path / "stations.csv"
    table.write_text(
        "id,when,lat,lon,height,temp_c,slp_hpa\n"
        f"PARIS,2003-03-01 05:50,48.0,2.0,,{t2m - 273.15:.2f},1012.5\n"
        f"PARIS,2003-03-01 06:20,48.0,2.0,,{t2m - 273.15 + 60:.2f},1012.0\n"  # out of range
    )
    # a swath of 500 hPa temperature: 2-D coordinates along scan lines, a quality flag
    lat = np.linspace(-30, 30, 40)[:, None] + np.zeros((1, 10))
    lon = np.linspace(350, 370, 10)[None, :] + np.zeros((40, 1))
    t500 = _field(truth, "temperature", t, 500).at(lat.ravel(), lon.ravel()).reshape(lat.shape)
    flag = np.zeros(lat.shape, dtype=np.int8)
    flag[:, 0] = 1
    swath = xr.Dataset(
        {
            "t500": (("scanline", "pixel"), t500, {"units": "K"}),
            "qc": (("scanline", "pixel"), flag),
            "latitude": (("scanline", "pixel"), lat),
            "longitude": (("scanline", "pixel"), lon),
        },
        attrs={"time_coverage_start": "2003-03-01T06:05:00"},
    )
    swath.to_netcdf(tmp_path / "swath.nc")
    config = {
        "out": str(tmp_path / "obs"),
        "grid": reports["truth"],
        "time_step": "6h",
        "sources": [
            {"format": "bufr", "paths": reports["files"]["2003-03-01"]},
            {
                "format": "csv",
                "paths": [str(table)],
                "columns": {
                    "variables": {
                        "temp_c": {"variable": "2m_temperature", "units": "degC"},
                        "slp_hpa": {"variable": "mean_sea_level_pressure", "units": "hPa"},
                    },
                    "time": ["when"],
                    "time_format": "%Y-%m-%d %H:%M",
                    "station": "id",
                    "latitude": "lat",
                    "longitude": "lon",
                    "elevation": "height",
                },
            },
            {
                "format": "swath",
                "paths": [str(tmp_path / "swath.nc")],
                "swath": {
                    "variables": {
                        "t500": {"variable": "temperature", "level": 500, "pixel_error": 1.0}
                    },
                    "time": "time_coverage_start",
                    "quality": "qc",
                    "good_values": [0],
                    "instrument": "toy-sounder",
                },
            },
        ],
    }
    path = tmp_path / "ingest.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["ingest", "--config", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for platform in ("synop", "temp", "station", "satellite"):
        assert platform in result.output
    table = read_observations(tmp_path / "obs", rejected=True)
    station = table.where(table["station"] == "PARIS", drop=True)
    assert sorted(station["reason"].values.tolist()) == ["", "", "duplicate", "out_of_range"]
    kept = station.where(
        (station["reason"] == "") & (station["variable"] == "2m_temperature"), drop=True
    )
    assert kept["value"].values[0] == pytest.approx(t2m, abs=0.01)
    satellite = table.where(table["platform"] == "satellite", drop=True)
    assert satellite.sizes["obs"] > 0 and np.all(satellite["footprint"].values > 0)
    assert "quality_flag (pixels)" in result.output


def test_the_background_check_uses_the_climatology_of_a_gridded_store(reports, tmp_path):
    truth = xr.open_zarr(reports["truth"]).load()
    t = pd.Timestamp("2003-03-01T12:00")
    msl = _field(truth, "mean_sea_level_pressure", t).at(np.array([10.0]), np.array([20.0]))[0]
    table = tmp_path / "stations.csv"
    table.write_text(
        "id,when,lat,lon,slp\n"
        f"A,2003-03-01 12:00,10.0,20.0,{msl:.1f}\n"
        f"B,2003-03-01 12:00,10.0,20.0,{msl + 6000:.1f}\n"  # possible, but not there and then
    )
    columns = {
        "variables": {"slp": {"variable": "mean_sea_level_pressure", "units": "Pa"}},
        "time": ["when"], "time_format": "%Y-%m-%d %H:%M", "station": "id",
        "latitude": "lat", "longitude": "lon",
    }  # fmt: skip
    config = {
        "out": str(tmp_path / "obs"),
        "time_step": "6h",
        "sources": [{"format": "csv", "paths": [str(table)], "columns": columns}],
        "quality": {
            "background": {
                "store": reports["truth"], "period": ["2003-03-01", "2003-03-03"], "k": 5.0
            }
        },
    }  # fmt: skip
    path = tmp_path / "ingest.yaml"
    path.write_text(__import__("yaml").safe_dump(config))
    result = CliRunner().invoke(app, ["ingest", "--config", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stored = read_observations(tmp_path / "obs", rejected=True)
    reasons = dict(zip(stored["station"].values, stored["reason"].values, strict=True))
    assert reasons == {"A": "", "B": "background"}


def test_the_background_check_can_use_an_ensemble_archive(reports, tmp_path):
    """The prior's own states as the reference: an archive's ensemble mean and spread."""
    from appa.io.archive import write_dataset

    truth = xr.open_zarr(reports["truth"]).load()
    times = pd.date_range("2003-03-01", periods=4, freq="6h")
    members = [truth[["mean_sea_level_pressure"]].sel(time=times) + 100.0 * k for k in (-1, 0, 1)]
    ensemble = xr.concat(members, dim="member").assign_coords(member=[0, 1, 2])
    write_dataset(ensemble, tmp_path / "ensemble.zarr")
    t = pd.Timestamp("2003-03-01T12:00")
    msl = _field(truth, "mean_sea_level_pressure", t).at(np.array([10.0]), np.array([20.0]))[0]
    table = tmp_path / "stations.csv"
    table.write_text(
        "id,when,lat,lon,slp\n"
        f"A,2003-03-01 12:00,10.0,20.0,{msl + 300:.1f}\n"  # 2.1 of sqrt(100^2 + 100^2) Pa
        f"B,2003-03-01 12:00,10.0,20.0,{msl + 2000:.1f}\n"  # 14: possible, not then and there
    )
    columns = {
        "variables": {"slp": {"variable": "mean_sea_level_pressure", "units": "Pa"}},
        "time": ["when"], "time_format": "%Y-%m-%d %H:%M", "station": "id",
        "latitude": "lat", "longitude": "lon",
    }  # fmt: skip
    config = {
        "out": str(tmp_path / "obs"), "time_step": "6h",
        "sources": [{"format": "csv", "paths": [str(table)], "columns": columns}],
        "quality": {"background": {"archive": str(tmp_path / "ensemble.zarr"), "k": 5.0}},
    }  # fmt: skip
    path = tmp_path / "ingest.yaml"
    path.write_text(__import__("yaml").safe_dump(config))
    result = CliRunner().invoke(app, ["ingest", "--config", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stored = read_observations(tmp_path / "obs", rejected=True)
    reasons = dict(zip(stored["station"].values, stored["reason"].values, strict=True))
    assert reasons == {"A": "", "B": "background"}
