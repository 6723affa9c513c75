"""Observation simulators, the partitioned store and ``appa observe``."""

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from appa.cli import app
from appa.data.sources import open_era5
from appa.data.spec import StateSpec, stack
from appa.data.toy_earth import ToyEarthConfig, write_toy_earth
from appa.observations import (
    ObservationError,
    ObservationOperator,
    make_table,
    read_observations,
    write_observations,
)
from appa.observations.simulators import (
    CoarseConfig,
    ObserveConfig,
    SatelliteConfig,
    StationsConfig,
    coarse_grained,
    ground_track,
    satellite_swath,
    surface_stations,
)

TINY = 1e-9  # error_std for noise-free checks


@pytest.fixture(scope="module")
def truth_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("truth") / "toy.zarr"
    return write_toy_earth(ToyEarthConfig(years=0.006, spinup_days=2), path, progress=False)


@pytest.fixture(scope="module")
def truth(truth_path):
    return open_era5(truth_path).load()


def _operator_values(truth, table, spec):
    op = ObservationOperator(
        table, spec, truth.latitude.values, truth.longitude.values, truth.time.values,
        dtype=torch.float64,
    )  # fmt: skip
    x, _ = stack(truth, spec, fill_value=0.0, dtype=torch.float64)
    return op(x[None])[0].numpy()


def test_simulators_agree_with_the_operator(truth):
    """Noise-free simulated values are exactly the operator applied to the truth."""
    rng = np.random.default_rng(0)
    stations = surface_stations(
        truth,
        StationsConfig(
            variables=["2m_temperature", "sea_surface_temperature"], density=0.5,
            error_std={"2m_temperature": TINY, "sea_surface_temperature": TINY},
        ),
        rng,
    )  # fmt: skip
    sat = satellite_swath(
        truth,
        SatelliteConfig(variables=["temperature", "u_component_of_wind"],
                        error_std={"temperature": TINY, "u_component_of_wind": TINY}),
        rng,
    )  # fmt: skip
    coarse = coarse_grained(
        truth,
        CoarseConfig(enabled=True, variables=["geopotential", "2m_temperature"], every_hours=6,
                     error_std={"geopotential": TINY, "2m_temperature": TINY}),
        rng,
    )  # fmt: skip
    spec = StateSpec(
        surface=["2m_temperature", "sea_surface_temperature"],
        atmospheric=["temperature", "u_component_of_wind", "geopotential"],
        levels=[250, 500, 700],
        masked=["sea_surface_temperature"],
    )
    for table in (stations, sat, coarse):
        np.testing.assert_allclose(
            _operator_values(truth, table, spec), table.value.values, rtol=1e-6, atol=1e-5
        )
    # Stations over land see no SST (NaN there): those observations are simply absent.
    sst = stations.variable.values == "sea_surface_temperature"
    assert 0 < sst.sum() < (stations.variable.values == "2m_temperature").sum()
    assert set(np.unique(sat.level.values)) == {250.0, 500.0, 700.0}
    assert np.isnan(stations.level.values).all()


def test_station_network_density_land_and_noise(truth):
    rng = np.random.default_rng(1)
    cfg = StationsConfig(
        variables=["2m_temperature"], density=1.0, error_std={"2m_temperature": 2.0}
    )
    table = surface_stations(truth, cfg, rng)
    n_stations = table.sizes["obs"] // truth.sizes["time"]
    assert n_stations == round(4 * np.pi * 6371.0**2 / 1e6)
    clean = surface_stations(
        truth,
        cfg.model_copy(update={"error_std": {"2m_temperature": TINY}}),
        np.random.default_rng(1),
    )
    noise = table.value.values - clean.value.values
    assert noise.std() == pytest.approx(2.0, rel=0.1)
    land = surface_stations(
        truth, cfg.model_copy(update={"land_only": True}), np.random.default_rng(2)
    )
    mask = truth.land_sea_mask.interp(
        latitude=xr.DataArray(land.latitude.values), longitude=xr.DataArray(land.longitude.values)
    )
    assert (mask.fillna(1).values > 0.4).mean() > 0.95
    fixed = surface_stations(
        truth,
        cfg.model_copy(update={"latitudes": [0.0, 45.0], "longitudes": [10.0, 350.0]}),
        rng,
    )
    assert fixed.sizes["obs"] == 2 * truth.sizes["time"]
    with pytest.raises(ObservationError, match="not a surface variable"):
        surface_stations(
            truth, StationsConfig(variables=["temperature"], error_std={"temperature": 1}), rng
        )
    with pytest.raises(ObservationError, match="no error_std"):
        surface_stations(truth, StationsConfig(variables=["2m_temperature"], error_std={}), rng)


def test_ground_track_orbit_and_earth_rotation():
    cfg = SatelliteConfig(altitude_km=800, inclination_deg=75)
    period = 2 * np.pi * np.sqrt(((6371 + 800) * 1e3) ** 3 / 3.986004418e14)
    assert period / 60 == pytest.approx(100.7, abs=0.3)
    t = np.linspace(0, 86400, 20000)
    lat, _ = ground_track(t, cfg)
    assert np.abs(lat).max() == pytest.approx(75.0, abs=0.1)
    # Successive ascending equator crossings drift west by the Earth's rotation in one period.
    _, lon0 = ground_track(np.array([0.0]), cfg)
    _, lon1 = ground_track(np.array([period]), cfg)
    drift = (lon0[0] - lon1[0]) % 360
    assert drift == pytest.approx(360 * period / 86164.0905, rel=1e-6)


def test_satellite_swath_geometry(truth):
    cfg = SatelliteConfig(variables=["temperature"], levels=[500], swath_radius_deg=5.0)
    table = satellite_swath(truth, cfg, np.random.default_rng(0))
    t0 = table.time.values == truth.time.values[0]
    lat, lon = np.radians(table.latitude.values[t0]), np.radians(table.longitude.values[t0])
    epoch = pd.Timestamp("2000-01-01")
    start = (pd.Timestamp(truth.time.values[0]) - pd.Timedelta("3h") - epoch).total_seconds()
    tlat, tlon = (np.radians(a) for a in ground_track(start + np.arange(0, 21600, 60.0), cfg))
    cos_d = np.sin(lat)[:, None] * np.sin(tlat)[None] + np.cos(lat)[:, None] * np.cos(tlat)[
        None
    ] * np.cos(lon[:, None] - tlon[None])
    dist = np.degrees(np.arccos(np.clip(cos_d, -1, 1))).min(axis=1)
    assert dist.max() <= 5.0 + 1e-9
    # Roughly 4 orbits of a ~10 deg wide swath in 6 hours: a sizeable but partial coverage.
    assert 0.1 < t0.sum() / (32 * 64) < 0.6


def test_store_partitions_and_time_window(tmp_path, monkeypatch):
    times = pd.date_range("2000-01-01", periods=12, freq="12h")
    table = make_table(
        times, np.linspace(-60, 60, 12), np.linspace(0, 330, 12), "2m_temperature",
        np.arange(12.0) + 270, 0.5, "station",
    )  # fmt: skip
    path = write_observations(table, tmp_path / "obs.zarr", partition="1D")
    assert len([p for p in path.iterdir() if p.is_dir()]) == 6
    opened = []
    original = xr.open_zarr

    def counting(store, **kwargs):
        opened.append(str(store))
        return original(store, **kwargs)

    monkeypatch.setattr(xr, "open_zarr", counting)
    window = read_observations(path, "2000-01-02T12", "2000-01-04")
    assert len(opened) == 2  # only the partitions of 2 and 3 January
    np.testing.assert_array_equal(window.time.values, times[3:6].values)
    np.testing.assert_array_equal(window.value.values, table.value.values[3:6])
    assert window.variable.values.tolist() == ["2m_temperature"] * 3
    assert read_observations(path).sizes["obs"] == 12
    levels = read_observations(path, "2000-01-02T12", "2000-01-04", fields=["variable", "level"])
    assert sorted(levels.data_vars) == ["level", "time", "variable"]
    np.testing.assert_array_equal(levels.time.values, times[3:6].values)
    with pytest.raises(ObservationError, match="no observations"):
        read_observations(path, "2001-01-01", "2001-02-01")
    with pytest.raises(FileExistsError):
        write_observations(table, path)


def test_cli_observe(truth_path, tmp_path):
    config = tmp_path / "observe.yaml"
    config.write_text(
        "seed: 3\nstations:\n  density: 0.2\nsatellite:\n  variables: [temperature]\n"
        "  levels: [500]\n  error_std: {temperature: 1.0}\n"
    )
    out = tmp_path / "obs.zarr"
    runner = CliRunner()
    result = runner.invoke(
        app, ["observe", "--truth", str(truth_path), "--config", str(config), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    table = read_observations(out)
    assert set(np.unique(table.platform.values)) == {"station", "satellite"}
    bad = runner.invoke(
        app,
        ["observe", "--truth", str(truth_path), "--out", str(tmp_path / "x.zarr"),
         "--set", "satellite.variables=[specific_humidity]"],
    )  # fmt: skip
    assert bad.exit_code == 2 and "specific_humidity" in bad.output
    assert ObserveConfig(end="2000-01-03").end == "2000-01-03T00:00:00"
