"""End to end on a small synthetic Earth: ``appa baseline`` (climatology, persistence, EnOI),
``appa evaluate`` with baselines side by side, ``appa plot`` maps and curves."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from appa.cli import app
from appa.data.grids import equiangular_grid
from appa.observations import write_observations
from appa.observations.simulators import ObserveConfig, simulate

LAT, LON = equiangular_grid("16x8")
SURFACE = ["2m_temperature", "mean_sea_level_pressure", "sea_surface_temperature"]
UNITS = {"2m_temperature": "K", "mean_sea_level_pressure": "Pa", "sea_surface_temperature": "K",
         "geopotential": "m**2 s**-2", "temperature": "K"}  # fmt: skip


def _modes():
    """Smooth spatial patterns on the grid: zonal wavenumbers 0-2 times low-order latitude
    shapes."""
    lat = np.radians(LAT)[:, None]
    lon = np.radians(LON)[None, :]
    shapes = [np.ones_like(lat), np.sin(lat), np.cos(lat), np.sin(2 * lat)]
    waves = [np.ones_like(lon), np.cos(lon), np.sin(lon), np.cos(2 * lon), np.sin(2 * lon)]
    return np.stack([s * w for s in shapes for w in waves])  # (20, H, W)


def _synthetic_earth(path, seed=0):
    """2000-01-01 .. 2002-01-15, 6-hourly: a seasonal and diurnal cycle plus stationary
    Gaussian anomalies (AR(1) in time on smooth modes, correlated across variables)."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2000-01-01", "2002-01-15T18:00", freq="6h")
    modes = _modes()
    k = modes.shape[0]
    coef = np.zeros((len(times), k))
    phi = 0.9
    amp = rng.uniform(0.3, 1.0, k)
    for t in range(1, len(times)):
        coef[t] = phi * coef[t - 1] + np.sqrt(1 - phi**2) * amp * rng.normal(size=k)
    anomaly = np.einsum("tk,khw->thw", coef, modes)
    season = np.sin(2 * np.pi * times.day_of_year.values / 365.25)[:, None, None]
    hemi = np.sin(np.radians(LAT))[None, :, None]
    diurnal = np.cos(2 * np.pi * times.hour.values / 24)[:, None, None]
    land = rng.uniform(size=(LAT.size, LON.size)) < 0.3
    base = 30 * np.cos(np.radians(LAT))[None, :, None]
    mix = rng.normal(size=(5, 2))
    second = np.einsum("tk,khw->thw", np.roll(coef, 3, axis=1), modes)
    fields = {}
    scales = {"2m_temperature": (250, 1.0), "mean_sea_level_pressure": (101000, 300.0),
              "sea_surface_temperature": (275, 0.5), "geopotential": (54000, 300.0),
              "temperature": (245, 1.0)}  # fmt: skip
    for i, (name, (offset, scale)) in enumerate(scales.items()):
        x = offset + scale * (base + 8 * season * hemi + diurnal * (i == 0))
        x = x + scale * 3 * (mix[i, 0] * anomaly + mix[i, 1] * second)
        if name == "sea_surface_temperature":
            x = np.where(land[None], np.nan, x)
        fields[name] = x.astype(np.float32)
    data = {n: (("time", "latitude", "longitude"), fields[n]) for n in SURFACE}
    for name in ("geopotential", "temperature"):
        data[name] = (("time", "level", "latitude", "longitude"), fields[name][:, None])
    ds = xr.Dataset(data, coords={"time": times, "level": [500], "latitude": LAT, "longitude": LON})
    for name in ds.data_vars:
        ds[name].attrs = {"units": UNITS[name], "long_name": name.replace("_", " ")}
    ds.to_zarr(path, zarr_format=2, consolidated=True)
    return ds


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    truth = _synthetic_earth(root / "truth.zarr")
    config = ObserveConfig.model_validate(
        {
            "seed": 1,
            "start": "2002-01-01",
            "end": "2002-01-03T18:00",
            "stations": {"density": 0.3},
            "satellite": {"variables": ["temperature"], "error_std": {"temperature": 1.0}},
        }
    )
    table = simulate(truth.load(), config)
    write_observations(table, root / "obs")
    return root, truth


def _run(args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_baselines_evaluate_and_plots(world):
    root, truth = world
    common = ["--truth", root / "truth.zarr", "--start", "2002-01-01", "--end", "2002-01-03T18"]
    _run(["baseline", "climatology", *common, "--out", root / "clim.zarr"])
    _run(["baseline", "climatology", *common, "--lead-time", "6h", "--lead-time", "1D",
          "--out", root / "clim_fc.zarr"])  # fmt: skip
    _run(["baseline", "persistence", *common, "--lead-time", "6h", "--lead-time", "1D",
          "--out", root / "pers.zarr"])  # fmt: skip
    _run(["baseline", "enoi", *common, "--observations", root / "obs", "--members", "8",
          "--set", "enoi.ensemble_size=64", "--out", root / "enoi.zarr"])  # fmt: skip

    enoi = xr.open_zarr(root / "enoi.zarr")
    assert enoi["temperature"].dims == ("member", "time", "level", "latitude", "longitude")
    assert enoi.sizes["member"] == 8 and enoi.sizes["time"] == 12
    assert "observation_sources" in enoi.attrs and "appa_config" in enoi.attrs
    sst = enoi["sea_surface_temperature"].isel(member=0, time=0).values
    np.testing.assert_array_equal(np.isnan(sst), np.isnan(truth["sea_surface_temperature"][0]))

    clim = f"climatology={root / 'clim.zarr'}"
    out = _run(["evaluate", root / "enoi.zarr", "--truth", root / "truth.zarr",
                "--baseline", clim, "--out", root / "table.nc"])  # fmt: skip
    assert "enoi" in out and "climatology" in out and "RMSE" in out
    table = xr.open_dataset(root / "table.nc").load()
    assert table["system"].values.tolist() == ["enoi", "climatology"]
    assert table["ensemble_size"].values.tolist() == [8, 1]
    rmse = table["2m_temperature"].sel(metric="rmse")
    # Observed by stations: EnOI well below climatology; calibrated within loose bounds.
    assert float(rmse.sel(system="enoi")) < 0.6 * float(rmse.sel(system="climatology"))
    ratio = float(table["2m_temperature"].sel(metric="spread_skill", system="enoi"))
    assert 0.6 < ratio < 1.5, ratio
    t500 = table["temperature"].sel(metric="rmse", level=500)
    assert float(t500.sel(system="enoi")) < float(t500.sel(system="climatology"))

    clim = f"climatology={root / 'clim_fc.zarr'}"
    _run(["evaluate", root / "pers.zarr", "--truth", root / "truth.zarr", "--name", "persistence",
          "--baseline", clim, "--out", root / "fc.zarr"])  # fmt: skip
    fc = xr.open_zarr(root / "fc.zarr").load()
    pers = fc["temperature"].sel(metric="rmse", system="persistence", level=500).values
    assert pers[0] < pers[1]  # persistence degrades with lead time

    clim = f"climatology={root / 'clim.zarr'}"
    out = _run(["evaluate", root / "enoi.zarr", "--truth", root / "truth.zarr", "--by-time",
                "--baseline", clim, "--out", root / "t.zarr"])  # fmt: skip
    by_time = xr.open_zarr(root / "t.zarr").load()
    assert by_time.sizes["time"] == 12
    # The printed summary of a per-time table is the time-mean table.
    value = float(table["temperature"].sel(metric="spread_skill", system="enoi", level=500))
    assert f"{value:.4g}" in out
    _run(["plot", "curves", root / "t.zarr", "--variable", "temperature", "--level", "500",
          "--out", root / "time.png"])  # fmt: skip

    _run(["plot", "maps", root / "enoi.zarr", "--truth", root / "truth.zarr", "--variable",
          "2m_temperature", "--time", "2002-01-02T06", "--observations", root / "obs",
          "--out", root / "maps.png"])  # fmt: skip
    _run(["plot", "curves", root / "fc.zarr", "--variable", "2m_temperature", "--variable",
          "temperature", "--level", "500", "--out", root / "curves.png"])  # fmt: skip
    _run(["plot", "maps", root / "pers.zarr", "--truth", root / "truth.zarr", "--variable",
          "temperature", "--level", "500", "--time", "2002-01-03T06", "--lead-time", "1D",
          "--out", root / "fc_maps.png"])  # fmt: skip
    for name in ("maps.png", "curves.png", "time.png", "fc_maps.png"):
        assert (root / name).stat().st_size > 10_000


def test_clear_errors(world):
    root, _ = world
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(root / "missing.zarr"), "--truth",
                                 str(root / "truth.zarr")])  # fmt: skip
    assert result.exit_code == 2 and "no archive" in result.output
    result = runner.invoke(app, ["baseline", "persistence", "--truth", str(root / "truth.zarr"),
                                 "--start", "2002-01-01", "--end", "2002-01-02",
                                 "--out", str(root / "x.zarr")])  # fmt: skip
    assert result.exit_code == 2 and "lead_times" in result.output
    result = runner.invoke(app, ["baseline", "climatology", "--truth", str(root / "truth.zarr"),
                                 "--start", "2001-06-01", "--end", "2001-06-02",
                                 "--out", str(root / "x.zarr")])  # fmt: skip
    assert result.exit_code == 2 and "overlaps the training period" in result.output


def test_persistence_of_an_analysis_at_chosen_initialisations(world):
    """``initial``: persistence of an archive's ensemble mean (the analysis a forecast starts
    from) instead of the truth; ``every``: one initialisation in every 4 states (daily)."""
    root, truth = world
    period = truth.sel(time=slice("2002-01-01", "2002-01-03T18")).load()
    rng = np.random.default_rng(0)
    members = [period + float(rng.normal()) for _ in range(3)]
    analysis = xr.concat(members, dim=pd.Index([0, 1, 2], name="member"))
    for variable in analysis.variables.values():
        variable.encoding = {}
    analysis.to_zarr(root / "analysis.zarr")
    common = ["--truth", root / "truth.zarr", "--lead-time", "6h", "--lead-time", "1D",
              "--set", "every=4", "--start", "2002-01-01", "--end", "2002-01-03T18"]  # fmt: skip
    _run(["baseline", "persistence", *common, "--set", f"initial={root / 'analysis.zarr'}",
          "--out", root / "pers_analysis.zarr"])  # fmt: skip
    out = xr.open_zarr(root / "pers_analysis.zarr").load()
    days = pd.date_range("2002-01-01", periods=3, freq="1D").values
    np.testing.assert_array_equal(out["time"].values, days)
    mean = analysis["temperature"].mean("member").sel(time=days)
    np.testing.assert_allclose(out["temperature"].isel(member=0, lead_time=1), mean, rtol=1e-6)
    assert not np.allclose(out["temperature"].isel(member=0, lead_time=1),
                           truth["temperature"].sel(time=days))  # fmt: skip
    assert "analysis.zarr" in out.attrs["initial"]

    runner = CliRunner()
    late = [str(a) for a in common[:-4]] + ["--start", "2002-01-05", "--end", "2002-01-06"]
    for initial, message in (("analysis.zarr", "not in the initial archive"),
                             ("none.zarr", "no initial archive")):  # fmt: skip
        args = ["baseline", "persistence", *late, "--set", f"initial={root / initial}"]
        result = runner.invoke(app, [*args, "--out", str(root / "y.zarr")])
        assert result.exit_code == 2 and message in result.output, result.output
