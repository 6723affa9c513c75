"""`appa observe --format bufr`: the simulated stations and radiosondes as SYNOP and TEMP BUFR
files, stations at their own heights; `appa ingest` of them gives back the observations that
`appa observe` writes as a store, within BUFR's precision."""

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from appa.cli import app
from appa.observations.ingest.convert import G0
from appa.observations.schema import read_observations

pytest.importorskip("eccodes")

SETTINGS = {
    "seed": "4",
    "stations.density": "0.25",
    "satellite.enabled": "false",
    "radiosondes.enabled": "true",
    "radiosondes.sites": "12",
    "radiosondes.significant_levels": "2",
}
NETWORK = [a for k, v in SETTINGS.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def truth(tmp_path_factory) -> str:
    """Two days of smooth 6-hourly fields on a 32 x 64 grid with mountains up to 3 km."""
    times = pd.date_range("2003-03-01", periods=8, freq="6h")
    lat = np.linspace(-87.1875, 87.1875, 32)
    lon = np.arange(64) * 5.625
    levels = np.array([250, 500, 700])
    la, lo = np.meshgrid(np.radians(lat), np.radians(lon), indexing="ij")
    phase = np.arange(times.size)[:, None, None] * 0.3
    t2m = 288.0 - 30.0 * np.sin(la) ** 2 + 3.0 * np.sin(lo - phase)
    msl = 101000.0 + 1200.0 * np.cos(2 * lo + phase) * np.cos(la)
    factor = (np.log(levels / 1000.0) * 40.0)[None, :, None, None]
    temperature = t2m[:, None] + factor + 2.0 * np.cos(lo + phase)[:, None]
    geopotential = G0 * (7000.0 * np.log(1000.0 / levels))[None, :, None, None] + 300.0 * (
        temperature - temperature.mean()
    )
    mountains = np.clip(3000.0 * np.sin(3 * lo) * np.cos(la) ** 2, 0.0, None)
    ds = xr.Dataset(
        {
            "2m_temperature": (("time", "latitude", "longitude"), t2m),
            "mean_sea_level_pressure": (("time", "latitude", "longitude"), msl),
            "temperature": (("time", "level", "latitude", "longitude"), temperature),
            "geopotential": (("time", "level", "latitude", "longitude"), geopotential),
            "geopotential_at_surface": (("latitude", "longitude"), G0 * mountains),
        },
        coords={"time": times, "latitude": lat, "longitude": lon, "level": levels},
    )
    path = tmp_path_factory.mktemp("truth") / "truth.zarr"
    ds.astype(np.float32).to_zarr(path, consolidated=False)
    return str(path)


def _run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _frame(store) -> pd.DataFrame:
    frame = read_observations(store).to_dataframe()
    frame["longitude"] = np.mod(frame["longitude"], 360.0)
    frame["level"] = frame["level"].fillna(0.0)
    return frame


def test_ingested_bufr_reports_equal_the_store_of_the_same_network(truth, tmp_path):
    bufr, store, ingested = tmp_path / "bufr", tmp_path / "obs", tmp_path / "ingested"
    result = _run("observe", "--truth", truth, "--out", str(bufr), "--format", "bufr", *NETWORK)
    assert result.exit_code == 0, result.output
    assert "as 4 BUFR files" in result.output
    assert sorted(p.name for p in bufr.glob("*.bufr")) == [
        "synop-2003-03-01.bufr", "synop-2003-03-02.bufr",
        "temp-2003-03-01.bufr", "temp-2003-03-02.bufr",
    ]  # fmt: skip
    assert _run("observe", "--truth", truth, "--out", str(store), *NETWORK).exit_code == 0
    result = _run(
        "ingest", "bufr", *map(str, sorted(bufr.glob("*.bufr"))), "--out", str(ingested),
        "--grid", truth, "--set", "time_step=6h",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    direct, read = _frame(store), _frame(ingested)
    assert len(read) == len(direct)
    assert set(read["platform"]) == {"synop", "temp"}
    # soundings at 00 and 12 UTC: 3 levels and 2 significant levels between each pair
    temp = read[read["platform"] == "temp"]
    assert len(temp) == 12 * 4 * 2 * (3 + 2 * 2)
    assert set(temp["time"].dt.hour) == {0, 12}
    # the same observations, row for row: the rows of each (time, variable) in the order of
    # their positions; values within BUFR's precision
    keys = ["time", "variable", "level", "latitude", "longitude"]
    direct = direct.assign(latitude=direct["latitude"].round(5), longitude=direct["longitude"]
                           .round(5)).sort_values(keys)  # fmt: skip
    read = read.assign(latitude=read["latitude"].round(5), longitude=read["longitude"]
                       .round(5)).sort_values(keys)  # fmt: skip
    for name in ("time", "variable"):
        assert (direct[name].to_numpy() == read[name].to_numpy()).all()
    np.testing.assert_allclose(read["level"], direct["level"], atol=0.05)
    difference = np.abs(read["value"].to_numpy() - direct["value"].to_numpy())
    tolerance = read["variable"].map(
        {
            "2m_temperature": 0.005 + 1e-6,
            "mean_sea_level_pressure": 5.0,
            "temperature": 0.005,
            "geopotential": G0 / 2,
        }
    )
    assert np.all(difference <= tolerance.to_numpy() + 1e-6)
    # stations stand off the model's ground, so their 2 m temperatures were corrected back
    t2m = read[read["variable"] == "2m_temperature"]
    assert t2m["height_correction"].abs().max() > 0.3
    assert t2m["elevation"].min() >= 0.0
    index = json.loads((bufr / "bufr_reports.json").read_text())
    assert index["observations"] == len(direct)
    assert sum(f["observations"] for f in index["files"].values()) == len(direct)


def test_station_heights_depart_from_the_model_ground(truth, tmp_path):
    bufr = tmp_path / "bufr"
    _run("observe", "--truth", truth, "--out", str(bufr), "--format", "bufr", *NETWORK)
    from appa.observations.ingest.bufr import read_bufr
    from appa.observations.ingest.prepare import GridField

    frame = read_bufr(sorted(bufr.glob("synop-*.bufr")))
    stations = frame.drop_duplicates("station")
    orography = xr.open_zarr(truth, consolidated=False)["geopotential_at_surface"].load()
    model = GridField(
        orography.values / G0, orography["latitude"].values, orography["longitude"].values
    ).at(stations["latitude"].to_numpy(), stations["longitude"].to_numpy())
    departure = stations["elevation"].to_numpy() - model
    above = stations["elevation"].to_numpy() > 0  # heights are clipped at sea level
    assert 100.0 < np.std(departure[above]) < 200.0
    assert np.all(stations["elevation"].to_numpy() == np.round(stations["elevation"]))


def test_bufr_output_refuses_what_it_cannot_write_and_a_user_folder(truth, tmp_path):
    with_satellite = [a for k, v in SETTINGS.items() if k != "satellite.enabled"
                      for a in ("--set", f"{k}={v}")]  # fmt: skip
    result = _run("observe", "--truth", truth, "--out", str(tmp_path / "b"), "--format", "bufr",
                  *with_satellite)  # fmt: skip
    assert result.exit_code == 2 and "satellite.enabled=false" in result.output
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = _run("observe", "--truth", truth, "--out", str(mine), "--format", "bufr",
                  "--overwrite", *NETWORK)  # fmt: skip
    assert result.exit_code == 2 and (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "again"
    for _ in range(2):  # its own folder is replaced with --overwrite
        result = _run("observe", "--truth", truth, "--out", str(out), "--format", "bufr",
                      "--overwrite", *NETWORK)  # fmt: skip
        assert result.exit_code == 0, result.output
    assert _run("observe", "--truth", truth, "--out", str(out), "--format", "bufr",
                *NETWORK).exit_code == 2  # fmt: skip
