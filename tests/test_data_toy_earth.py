"""The toy Earth: canonical layout, determinism, atomic writes, chaos and stationarity."""

import copy

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from appa.data.grids import area_weights, equiangular_grid
from appa.data.toy_earth import (
    ATMOSPHERIC_VARIABLES,
    STATIC_VARIABLES,
    SURFACE_VARIABLES,
    ToyEarth,
    ToyEarthConfig,
    write_toy_earth,
)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_layout_is_canonical(tmp_path, zarr_format):
    cfg = ToyEarthConfig(years=0.02, spinup_days=2, zarr_format=zarr_format, time_chunk=8)
    path = write_toy_earth(cfg, tmp_path / "toy.zarr", progress=False)
    ds = xr.open_zarr(path, zarr_format=zarr_format, consolidated=zarr_format == 2)
    n = round(0.02 * 365.2425 * 4)
    assert set(ds.data_vars) == {*ATMOSPHERIC_VARIABLES, *SURFACE_VARIABLES, *STATIC_VARIABLES}
    for name in ATMOSPHERIC_VARIABLES:
        assert ds[name].dims == ("time", "level", "latitude", "longitude")
        assert ds[name].shape == (n, 3, 32, 64)
        assert ds[name].dtype == np.float32
    for name in SURFACE_VARIABLES:
        assert ds[name].dims == ("time", "latitude", "longitude")
    for name in STATIC_VARIABLES:
        assert ds[name].dims == ("latitude", "longitude")
    lat, lon = equiangular_grid("64x32")
    np.testing.assert_array_equal(ds.latitude.values, lat)
    np.testing.assert_array_equal(ds.longitude.values, lon)
    assert ds.level.values.tolist() == [250, 500, 700]
    assert ds.level.attrs["units"] == "hPa"
    assert ds.latitude.attrs["units"] == "degrees_north"
    assert ds.attrs["Conventions"].startswith("CF")
    times = ds.time.values
    assert times[0] == np.datetime64("2000-01-01T00:00")
    assert np.all(np.diff(times) == np.timedelta64(6, "h"))
    units = {name: ds[name].attrs["units"] for name in ds.data_vars}
    assert units["geopotential"] == "m**2 s**-2" and units["mean_sea_level_pressure"] == "Pa"
    # Physical ranges in SI units.
    z = ds.geopotential.sel(level=500).values
    assert 4.0e4 < z.mean() < 7.0e4
    assert 180 < ds["2m_temperature"].mean() < 320
    assert 9.0e4 < ds.mean_sea_level_pressure.mean() < 1.1e5
    assert np.isfinite(ds.temperature.values).all()
    # Sea-surface temperature is NaN exactly over land.
    land = ds.land_sea_mask.values > 0.5
    sst = ds.sea_surface_temperature.values
    assert np.isnan(sst[:, land]).all() and np.isfinite(sst[:, ~land]).all()
    assert 0.1 < land.mean() < 0.5


def test_deterministic_by_seed():
    def run(seed):
        model = ToyEarth(ToyEarthConfig(seed=seed, spinup_days=0))
        states = list(model.run(40))
        return states[-1][1]["temperature"]

    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-6


def test_write_is_atomic(tmp_path, monkeypatch):
    cfg = ToyEarthConfig(years=0.01, spinup_days=1)
    out = tmp_path / "toy.zarr"
    write_toy_earth(cfg, out, progress=False)
    with pytest.raises(FileExistsError, match="exists"):
        write_toy_earth(cfg, out, progress=False)
    calls = {"n": 0}
    original = ToyEarth.fields

    def failing(self):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("simulated crash")
        return original(self)

    monkeypatch.setattr(ToyEarth, "fields", failing)
    fresh = tmp_path / "fresh.zarr"
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_toy_earth(cfg, fresh, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.zarr"]


def test_config_errors():
    with pytest.raises(ValueError, match="levels"):
        ToyEarthConfig(levels=[850])
    with pytest.raises(ValueError, match="NLONxNLAT"):
        ToyEarthConfig(grid="64")
    with pytest.raises(ValueError, match="not a date"):
        ToyEarthConfig(start="yesterday")


def test_start_given_as_a_yaml_date():
    """`appa toy-earth --set start=2003-01-01` (or a config file) hands YAML's date object."""
    from appa.config import load_config

    config = load_config(ToyEarthConfig, None, ["start=2003-01-01"])
    assert config.start == "2003-01-01"
    assert pd.Timestamp(config.start) == pd.Timestamp("2003-01-01")


@pytest.fixture(scope="module")
def spun_up():
    """A model without seasons after 200 days of spin-up (12-hourly states)."""
    model = ToyEarth(ToyEarthConfig(seasonal_contrast_k=0, spinup_days=200, step_hours=12))
    model.spin_up()
    return model


def _z500(model):
    return model.fields()["geopotential"][1]


def test_chaotic(spun_up):
    a, b = copy.deepcopy(spun_up), copy.deepcopy(spun_up)
    b.Q = b.Q * (1 + 1e-6)
    scale = []
    diffs = []
    for day in range(1, 121):
        a.advance(), a.advance(), b.advance(), b.advance()
        if day % 10 == 0:
            diffs.append(np.sqrt(np.mean((_z500(a) - _z500(b)) ** 2)))
            scale.append(_z500(a))
    clim = np.std(np.stack(scale), axis=0).mean()
    diffs = np.array(diffs)
    # Nearby states diverge: a 1e-6 relative perturbation grows by orders of magnitude to the
    # size of the natural variability.
    assert diffs[0] < 1e-3 * clim
    assert diffs[-1] > 0.3 * clim
    assert diffs[-1] > 1e4 * diffs[0]


def test_stationary(spun_up):
    model = copy.deepcopy(spun_up)
    w = area_weights(model.latitude)[:, None]
    stats = []
    for _ in range(730):  # one year of 12-hourly states
        model.advance()
        f = model.fields()
        stats.append(
            [f[name][1] for name in ("geopotential", "temperature", "u_component_of_wind")]
        )
    x = np.array(stats)  # (time, channel, lat, lon)
    half = len(x) // 2
    for ch in range(x.shape[1]):
        a, b = x[:half, ch], x[half:, ch]
        mean_a, mean_b = (a * w).mean(), (b * w).mean()
        std_a = np.sqrt((((a - mean_a) ** 2) * w).mean())
        std_b = np.sqrt((((b - mean_b) ** 2) * w).mean())
        assert abs(mean_a - mean_b) < 0.1 * (std_a + std_b) / 2, ch
        spread = 1.33 if ch == 0 else 1.05
        assert 1 / spread < std_a / std_b < spread, ch


def test_cli_toy_earth(tmp_path):
    from typer.testing import CliRunner

    from appa.cli import app

    out = tmp_path / "toy.zarr"
    args = ["toy-earth", "--out", str(out), "--years", "0.005", "--seed", "2", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--set", "spinup_days=1"])
    assert result.exit_code == 0, result.output
    ds = xr.open_zarr(out)
    assert ds.sizes["time"] == round(0.005 * 365.2425 * 4)
    assert '"seed": 2' in ds.attrs["appa_toy_earth_config"]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "exists" in again.output
    bad = CliRunner().invoke(
        app, ["toy-earth", "--out", str(tmp_path / "x.zarr"), "--grid", "64x64"]
    )
    assert bad.exit_code == 2 and "nlon = 2 * nlat" in bad.output


@pytest.mark.slow
def test_stationary_with_seasons():
    """With the seasonal cycle: two consecutive years have the same channel statistics, and
    the winter hemisphere is colder (the date features carry information).

    Between the two years of seeds 0-4 the means differ by at most 0.026 std; the temperatures'
    std ratios lie in [0.985, 1.012], z500's in [0.869, 1.013] (its slow, low-frequency
    variability): the bounds below hold on all of them with margin."""
    model = ToyEarth(ToyEarthConfig(spinup_days=300, step_hours=12))
    model.spin_up()
    w = area_weights(model.latitude)[:, None]
    n = 2 * 730
    stats, north_t2m = [], []
    for _ in range(n):
        model.advance()
        f = model.fields()
        stats.append([f["geopotential"][1], f["temperature"][1], f["2m_temperature"]])
        north = model.latitude > 30
        north_t2m.append((model.time.month, f["2m_temperature"][north].mean()))
    x = np.array(stats)
    for ch in range(x.shape[1]):
        a, b = x[: n // 2, ch], x[n // 2 :, ch]
        mean_a, mean_b = (a * w).mean(), (b * w).mean()
        std_a = np.sqrt((((a - mean_a) ** 2) * w).mean())
        std_b = np.sqrt((((b - mean_b) ** 2) * w).mean())
        assert abs(mean_a - mean_b) < 0.1 * (std_a + std_b) / 2, ch
        spread = 1.33 if ch == 0 else 1.05
        assert 1 / spread < std_a / std_b < spread, ch
    january = np.mean([t for m, t in north_t2m if m == 1])
    july = np.mean([t for m, t in north_t2m if m == 7])
    assert july > january + 5


# The state after 60 days from the default configuration (seed 0) and 8 six-hourly states:
# time, potential vorticity, slab ocean and every diagnostic, as ToyEarth.fingerprint hashes
# them. Every machine must compute these bits; a change of the model's arithmetic changes them,
# and then the committed data statistics and prior must be made again with it.
REFERENCE_RUN = "from appa.data.toy_earth import ToyEarth, ToyEarthConfig\n" + (
    "model = ToyEarth(ToyEarthConfig(spinup_days=60))\n"
    "model.spin_up()\n"
    "for _ in range(8):\n"
    "    model.advance()\n"
    "print(model.time, model.fingerprint())\n"
)
FINGERPRINT = "2000-01-03 00:00:00 3669f89c4a1f9c82b94e15f17d7332766b7b45d83eaa005765f8cfd88121f9ad"


def _cpu_dispatch_targets() -> list[str]:
    """numpy's run-time SIMD targets that this CPU has (those above the build's baseline)."""
    from numpy._core import _multiarray_umath as umath

    return [name for name in umath.__cpu_dispatch__ if umath.__cpu_features__.get(name)]


def test_reference_run_matches_the_committed_fingerprint():
    namespace: dict = {}
    lines = []
    namespace["print"] = lambda *args: lines.append(" ".join(map(str, args)))
    exec(REFERENCE_RUN, namespace)
    assert lines == [FINGERPRINT]


@pytest.mark.parametrize(
    "environment",
    [
        {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
        {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
        # what a CPU without AVX2/AVX-512 runs: numpy's baseline kernels, an SSE4.2 BLAS kernel
        {"NPY_DISABLE_CPU_FEATURES": "__targets__", "OPENBLAS_CORETYPE": "Nehalem"},
    ],
    ids=["one-thread", "two-threads", "baseline-simd"],
)
def test_same_bits_with_other_simd_kernels_and_threads(environment):
    """A chaotic model turns one rounding difference into other weather: the same run under
    other numpy SIMD kernels, BLAS kernels and thread counts gives identical bytes."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("NPY_", "OPENBLAS_"))}
    for key, value in environment.items():
        env[key] = " ".join(_cpu_dispatch_targets()) if value == "__targets__" else value
    result = subprocess.run(
        [sys.executable, "-c", REFERENCE_RUN], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == FINGERPRINT
