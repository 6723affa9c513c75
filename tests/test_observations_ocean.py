"""A sea's observing networks: satellite box means against hand computation, clouds (seasonal,
spatially correlated), floats (counts, inside the sea, above the floor, drifting), errors as
stated, the operator exact on the truth, determinism, and ``appa toy-sea`` / ``appa observe``."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from appa.data.spec import StateSpec, stack
from appa.data.toy_sea import ToySeaConfig, toy_sea_dataset
from appa.observations.ocean import (
    FloatsConfig,
    SeaSurfaceConfig,
    argo_floats,
    box_footprint,
    box_means,
    cloud_cover,
    sea_surface_fields,
)
from appa.observations.operator import ObservationOperator, interpolation_weights
from appa.observations.schema import ObservationError, read_observations
from appa.observations.simulators import ObserveConfig, simulate

ROOT = Path(__file__).resolve().parents[1]
TINY = 1e-9  # an error small enough to read the noiseless value


@pytest.fixture(scope="module")
def truth():
    """30 days of a coarse sea in July (16 x 32 cells, 16 levels)."""
    cfg = ToySeaConfig(nlat=16, nlon=32, n_levels=16, start="2000-07-01", days=30, spinup_days=10)
    return toy_sea_dataset(cfg)


def sea_spec(truth) -> StateSpec:
    names = ["temperature", "salinity", "oxygen", "chlorophyll"]
    return StateSpec(
        surface=["sea_surface_height"],
        atmospheric=names,
        levels=truth["level"].values.tolist(),
        vertical="depth",
        masked=["sea_surface_height", *names],
    )


def noiseless_surface(**changes) -> SeaSurfaceConfig:
    fields = {
        name: {"factor": f, "error_std": TINY, "clouds": c}
        for name, f, c in (("sst", 2, True), ("sss", 4, False), ("chlorophyll", 2, True),
                           ("ssh", 4, False))
    }  # fmt: skip
    return SeaSurfaceConfig(enabled=True, **{**fields, **changes})


def model_equivalent(truth, table, vertical="exact") -> np.ndarray:
    """The operator applied to the truth (NaN filled with 0: observations never read it)."""
    spec = sea_spec(truth)
    x, _ = stack(truth, spec, fill_value=0.0, dtype=torch.float64)
    op = ObservationOperator(
        table, spec, truth.latitude.values, truth.longitude.values, truth.time.values,
        vertical=vertical, dtype=torch.float64,
    )  # fmt: skip
    return op(x[None]).numpy()[0]


# ------------------------------------------------------------------------------ satellites
def test_box_means_match_a_hand_computation(truth):
    table = sea_surface_fields(truth, noiseless_surface(), seed=1)
    glat, glon = truth.latitude.values, truth.longitude.values
    sst = table.isel(obs=np.flatnonzero(table["platform"].values == "sst"))
    k = sst.sizes["obs"] // 2
    t, lat, lon = sst["time"].values[k], sst["latitude"].values[k], sst["longitude"].values[k]
    rows = np.argsort(np.abs(glat - lat))[:2]
    cols = np.argsort(np.abs(glon - lon))[:2]
    np.testing.assert_allclose(glat[rows].mean(), lat)
    np.testing.assert_allclose(glon[cols].mean(), lon)
    cells = truth.temperature.sel(time=t).isel(level=0).values[np.ix_(rows, cols)]
    w = np.cos(np.radians(glat[rows]))[:, None] * np.ones((1, 2))
    np.testing.assert_allclose(sst["value"].values[k], (cells * w).sum() / w.sum(), rtol=1e-9)
    assert sst["level"].values[k] == truth.level.values[0]
    # the footprint holds exactly the block's cells under the operator's box rule
    side = sst["footprint"].values[k]
    assert side == box_footprint(glat, glon, 2)
    inside = (np.abs(glat[:, None] - lat) <= side / 2) & (np.abs(glon[None, :] - lon) <= side / 2)
    assert inside.sum() == 4 and inside[np.ix_(rows, cols)].all()
    # boxes touching land are not observed; every other box of SSH (no clouds) is, every day
    ssh_means, _, _ = box_means(truth.sea_surface_height.values, glat, glon, 4)
    ssh = table["platform"].values == "altimetry"
    assert ssh.sum() == np.isfinite(ssh_means).sum() > 0
    assert np.isnan(table["level"].values[ssh]).all()


def test_the_operator_reads_every_network_exactly_from_the_truth(truth):
    config = ObserveConfig(
        stations={"enabled": False}, satellite={"enabled": False},
        sea_surface=noiseless_surface(),
        floats=FloatsConfig(enabled=True, error_std={"temperature": TINY, "salinity": TINY,
                                                     "oxygen": TINY}),
    )  # fmt: skip
    table = simulate(truth, config)
    got = model_equivalent(truth, table)
    np.testing.assert_allclose(got, table["value"].values, rtol=1e-6, atol=1e-6)
    assert set(np.unique(table["platform"].values)) == {
        "sst", "sss", "ocean_colour", "altimetry", "argo",
    }  # fmt: skip


def test_errors_are_as_stated(truth):
    table = sea_surface_fields(truth, SeaSurfaceConfig(enabled=True), seed=3)
    expected = model_equivalent(truth, table)
    platform = table["platform"].values
    for name, std in (("sst", 0.4), ("sss", 0.3), ("altimetry", 0.03)):
        at = platform == name
        assert np.all(table["error_std"].values[at] == std)
        residual = table["value"].values[at] - expected[at]
        assert abs(residual.std() / std - 1) < 0.15, name
        assert abs(residual.mean()) < 4 * std / np.sqrt(at.sum()), name
    # chlorophyll: log-normal, a factor 10**0.15; the table's relative error follows the value
    at = platform == "ocean_colour"
    ratio = np.log10(table["value"].values[at] / expected[at])
    assert abs(ratio.std() / 0.15 - 1) < 0.15 and abs(ratio.mean()) < 0.03
    np.testing.assert_allclose(
        table["error_std"].values[at], np.log(10) * 0.15 * table["value"].values[at]
    )
    logged = sea_surface_fields(
        truth, SeaSurfaceConfig(enabled=True, chlorophyll={
            "factor": 2, "error_std": 0.15, "clouds": True, "representation": "log10"}), seed=3,
    )  # fmt: skip
    at = logged["platform"].values == "ocean_colour"
    assert set(logged["variable"].values[at]) == {"log10_chlorophyll"}
    assert np.all(logged["error_std"].values[at] == 0.15)
    np.testing.assert_allclose(logged["value"].values[at], np.log10(table["value"].values[at]))


def test_clouds_are_seasonal_and_spatially_correlated():
    config = SeaSurfaceConfig(enabled=True)
    times = pd.date_range("2001-01-01", "2002-12-31", freq="1D")
    glat = np.linspace(40.7, 46.8, 16)
    glon = np.linspace(27.7, 41.8, 32)
    lat, lon = glat.reshape(-1, 2).mean(1), glon.reshape(-1, 2).mean(1)
    rng = np.random.default_rng(0)
    cover = cloud_cover(times, lat, lon, glat, glon, config, rng)
    assert cover.shape == (len(times), 8, 16)
    by_month = np.array([cover[times.month == m].mean() for m in range(1, 13)])
    np.testing.assert_allclose(by_month, config.cloud_fraction_monthly, atol=0.12)
    assert by_month[[0, 1, 11]].mean() > by_month[[5, 6, 7]].mean() + 0.35
    # neighbours agree far more often than independent boxes would (2 f (1 - f) disagree)
    f = cover.mean()
    disagree = (cover[:, :, 1:] != cover[:, :, :-1]).mean()
    assert disagree < 0.5 * 2 * f * (1 - f)
    # and so do consecutive days
    assert (cover[1:] != cover[:-1]).mean() < 0.8 * 2 * f * (1 - f)


def test_clouds_hide_infrared_and_colour_alike_but_not_salinity(truth):
    table = sea_surface_fields(truth, SeaSurfaceConfig(enabled=True), seed=5)
    platform = table["platform"].values
    key = pd.DataFrame({
        "time": table["time"].values, "lat": table["latitude"].values,
        "lon": table["longitude"].values,
    })  # fmt: skip
    sst = set(map(tuple, key[platform == "sst"].to_numpy()))
    colour = set(map(tuple, key[platform == "ocean_colour"].to_numpy()))
    assert sst == colour and len(sst) > 0
    glat, glon = truth.latitude.values, truth.longitude.values
    sea_boxes = np.isfinite(box_means(truth.temperature.isel(level=0).values, glat, glon, 2)[0])
    assert len(sst) < 0.95 * sea_boxes.sum()  # clouds hide some of the sea (July: ~20 %)
    sss_means = box_means(truth.salinity.isel(level=0).values, glat, glon, 4)[0]
    assert (platform == "sss").sum() == np.isfinite(sss_means).sum()


# ------------------------------------------------------------------------------ floats
def test_floats_profile_on_schedule_inside_the_sea_above_the_floor(truth):
    config = FloatsConfig(enabled=True, count=10, cycle_days=5, parking_depth_m=600.0)
    table = argo_floats(truth, config, seed=2)
    assert set(table["platform"].values) == {"argo"}
    station = table["station"].values.astype(str)
    profiles = pd.DataFrame({"time": table["time"].values, "station": station}).drop_duplicates()
    # 30 days, a profile every 5: each float profiles exactly 6 times
    assert len(profiles) == 60
    assert profiles.groupby("station").size().tolist() == [6] * 10
    glat, glon = truth.latitude.values, truth.longitude.values
    lat, lon = table["latitude"].values, table["longitude"].values
    index, weights = interpolation_weights(lat, lon, glat, glon)
    floor = np.nan_to_num(truth.sea_floor_depth.values).reshape(-1)
    assert np.all(floor[index] > 0)  # every neighbour cell is sea
    bottom = (floor[index] * weights).sum(1)
    assert np.all(bottom >= config.min_depth_m)
    level = table["level"].values
    assert np.all(level < bottom) and np.all(level <= 600.0)
    assert set(level) <= set(truth.level.values)
    # whole profiles: every variable from the first level down, without gaps
    first = table.isel(
        obs=np.flatnonzero(
            (station == station[0]) & (table["time"].values == table["time"].values[0])
        )
    )
    for v in config.variables:
        depths = first["level"].values[first["variable"].values == v]
        np.testing.assert_array_equal(depths, truth.level.values[: depths.size])
    assert depths[-1] > 100.0
    # they drift: positions change between profiles, by kilometres, not hundreds
    frame = pd.DataFrame({"station": station, "time": table["time"].values, "lat": lat})
    track = frame.drop_duplicates(["station", "time"]).sort_values(["station", "time"])
    steps = track.groupby("station")["lat"].diff().dropna().to_numpy() * 111.195
    rms = np.sqrt(np.mean(steps**2))
    assert 0.3 * 3.0 * np.sqrt(5) < rms < 2.0 * 3.0 * np.sqrt(5)


def test_floats_between_levels_use_the_depth_rule(truth):
    depths = [5.0, 20.0, 50.0, 150.0]
    config = FloatsConfig(
        enabled=True,
        count=4,
        depths_m=depths,
        error_std={"temperature": TINY, "salinity": TINY, "oxygen": TINY},
    )
    table = argo_floats(truth, config, seed=4)
    assert set(table["level"].values) <= set(depths)
    got = model_equivalent(truth, table, vertical="depth")
    np.testing.assert_allclose(got, table["value"].values, rtol=1e-6, atol=1e-6)
    with pytest.raises(ObservationError, match="outside the state's levels"):
        argo_floats(truth, FloatsConfig(enabled=True, depths_m=[1.0, 20.0]), seed=4)


def test_networks_are_reproducible_and_independent(truth):
    def run(seed, floats=True):
        return simulate(truth, ObserveConfig(
            seed=seed, stations={"enabled": False}, satellite={"enabled": False},
            sea_surface={"enabled": True}, floats={"enabled": floats},
        ))  # fmt: skip

    a, b, c = run(7), run(7), run(8)
    xr.testing.assert_identical(a, b)
    assert not np.array_equal(a["value"].values[:50], c["value"].values[:50])
    surface_only = run(7, floats=False)
    n = surface_only.sizes["obs"]
    xr.testing.assert_identical(a.isel(obs=slice(0, n)).drop_vars("station"), surface_only)
    assert ObserveConfig().sea_surface.enabled is False and ObserveConfig().floats.enabled is False


# ------------------------------------------------------------------------------ the CLI
def test_toy_sea_and_observe_from_the_command_line(tmp_path):
    from appa.cli import app

    runner = CliRunner()
    store = tmp_path / "sea.zarr"
    result = runner.invoke(app, [
        "toy-sea", "--out", str(store), "--years", "0.02", "--seed", "3", "--no-progress",
        "--set", "nlat=16", "--set", "nlon=32", "--set", "n_levels=16", "--set", "spinup_days=0",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    ds = xr.open_zarr(store)
    assert ds.sizes["time"] == 7 and ds.sizes["level"] == 16
    assert '"seed": 3' in ds.attrs["appa_toy_sea_config"]
    # the atmosphere's default networks on a sea: told what to do instead
    result = runner.invoke(app, ["observe", "--truth", str(store), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "is a sea (depth levels)" in result.output
    out = tmp_path / "obs"
    config = ROOT / "pipelines" / "configs" / "observe_sea.yaml"
    result = runner.invoke(app, [
        "observe", "--truth", str(store), "--out", str(out), "--config", str(config),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    table = read_observations(out)
    assert set(np.unique(table["platform"].values)) >= {"sst", "sss", "altimetry", "argo"}
    assert table["station"].values[table["platform"].values == "argo"][0].startswith("argo-")
