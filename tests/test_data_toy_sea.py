"""The toy sea: canonical layout, masks, sea-water physics, the seasonal mixed layer, oxygen,
shelf hypoxia, sea-surface height, determinism and atomic writes."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from appa.config import ConfigError, load_config
from appa.data.toy_sea import (
    HYPOXIA_THRESHOLD,
    KELVIN,
    SHELF_DEPTH_M,
    STATIC_VARIABLES,
    SURFACE_VARIABLES,
    THREE_D_VARIABLES,
    ToySea,
    ToySeaConfig,
    bottom_values,
    generate_toy_sea,
    level_interfaces,
    mixed_layer_depth,
    oxygen_solubility,
    potential_density,
    steric_height,
    toy_sea_dataset,
)
from appa.files import OutputExistsError, what_is

# A coarse sea for the year-long checks (16 x 32 cells, 16 levels).
COARSE = {"nlat": 16, "nlon": 32, "n_levels": 16, "stretching": 4.5}


@pytest.fixture(scope="module")
def year():
    """A year and two months of the coarse sea after a month of spin-up (seed 0: a year whose
    shelf turns hypoxic in late summer)."""
    cfg = ToySeaConfig(**COARSE, start="2001-01-01", days=365 + 59, spinup_days=31)
    return toy_sea_dataset(cfg)


# ----------------------------------------------------------------------------- layout
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_layout_is_canonical(tmp_path, zarr_format):
    cfg = ToySeaConfig(days=12, spinup_days=0, time_chunk=5, zarr_format=zarr_format)
    path = generate_toy_sea(cfg, tmp_path / "sea.zarr", progress=False)
    ds = xr.open_zarr(path, zarr_format=zarr_format, consolidated=zarr_format == 2)
    assert set(ds.data_vars) == {*THREE_D_VARIABLES, *SURFACE_VARIABLES, *STATIC_VARIABLES}
    for name in THREE_D_VARIABLES:
        assert ds[name].dims == ("time", "level", "latitude", "longitude")
        assert ds[name].shape == (12, 22, 32, 64)
        assert ds[name].dtype == np.float32
    assert ds.sea_surface_height.dims == ("time", "latitude", "longitude")
    assert ds.sea_floor_depth.dims == ("latitude", "longitude")
    assert ds.sea_mask.dims == ("level", "latitude", "longitude")
    lat, lon, level = ds.latitude.values, ds.longitude.values, ds.level.values
    assert np.all(np.diff(lat) > 0) and np.all(np.diff(lon) > 0) and np.all(np.diff(level) > 0)
    assert lat[0] > 40.5 and lat[-1] < 47.0 and lon[0] > 27.5 and lon[-1] < 42.0
    assert ds.level.attrs == {
        "units": "m",
        "standard_name": "depth",
        "long_name": "depth of the level's centre",
        "positive": "down",
        "axis": "Z",
        "bounds": "level_bounds",
    }
    bounds = ds.level_bounds.values
    np.testing.assert_allclose(bounds[:, 0], level_interfaces(22, 2000.0, 4.5)[:-1])
    assert bounds[0, 0] == 0 and bounds[-1, 1] == 2000.0
    assert np.all((bounds[:, 0] < level) & (level < bounds[:, 1]))
    assert bounds[0, 1] < 10.0 and level[-1] > 1000.0
    standard = {name: ds[name].attrs["standard_name"] for name in ds.data_vars}
    assert standard["temperature"] == "sea_water_potential_temperature"
    assert standard["oxygen"] == "mole_concentration_of_dissolved_molecular_oxygen_in_sea_water"
    assert standard["chlorophyll"] == "mass_concentration_of_chlorophyll_in_sea_water"
    assert standard["sea_surface_height"] == "sea_surface_height_above_geoid"
    assert standard["sea_floor_depth"] == "sea_floor_depth_below_geoid"
    units = {name: ds[name].attrs["units"] for name in ds.data_vars}
    assert units["temperature"] == "K" and units["salinity"] == "g kg**-1"
    assert units["oxygen"] == "mmol m**-3" and units["chlorophyll"] == "mg m**-3"
    times = ds.time.values
    assert times[0] == np.datetime64("2000-01-01T00:00")
    assert np.all(np.diff(times) == np.timedelta64(1, "D"))
    assert ds.attrs["Conventions"].startswith("CF")
    assert what_is(path).kind == "toy-sea"
    # Physical ranges in the stored units.
    assert 270 < float(ds.temperature.min()) and float(ds.temperature.max()) < 305
    assert 10 < float(ds.salinity.min()) and float(ds.salinity.max()) < 23
    assert float(ds.oxygen.min()) >= 0 and float(ds.oxygen.max()) < 450
    assert float(ds.chlorophyll.min()) >= 0 and float(ds.chlorophyll.isel(level=0).min()) > 0.05


def test_basin_shape_and_masks():
    model = ToySea(ToySeaConfig(spinup_days=0))
    floor, mask, top = model.floor, model.mask, model.interfaces[:-1]
    sea = floor > 0
    # A wide shallow shelf (the north-west) and a deep basin, both substantial.
    shelf = sea & (floor < SHELF_DEPTH_M)
    assert shelf.sum() > 0.25 * sea.sum() and (floor > 1000).sum() > 0.25 * sea.sum()
    north_west = (model.latitude[:, None] > 45.0) & (model.longitude[None, :] < 32.0)
    assert np.all(floor[north_west & sea] < 120)
    assert floor.max() > 1500 and floor[sea].min() < 30
    # Land all around the box: an enclosed sea.
    assert not sea[0].any() and not sea[-1].any() and not sea[:, 0].any() and not sea[:, -1].any()
    # A level is sea where its top lies above the sea floor.
    np.testing.assert_array_equal(mask, top[:, None, None] < floor[None])
    assert np.all(mask[0] == sea)
    # The bathymetry is smooth: neighbours on the shelf differ by metres, not tens of metres.
    plain = north_west & sea
    both = plain[:, 1:] & plain[:, :-1]
    assert np.abs(np.diff(floor, axis=1))[both].max() < 20


def test_nan_exactly_below_the_sea_floor_and_on_land():
    cfg = ToySeaConfig(**COARSE, days=3, spinup_days=2)
    ds = toy_sea_dataset(cfg)
    mask = ds.sea_mask.values.astype(bool)
    for name in THREE_D_VARIABLES:
        values = ds[name].values
        assert np.isnan(values[:, ~mask]).all(), name
        assert np.isfinite(values[:, mask]).all(), name
    sea = mask[0]
    assert np.isnan(ds.sea_surface_height.values[:, ~sea]).all()
    assert np.isfinite(ds.sea_surface_height.values[:, sea]).all()
    floor = ds.sea_floor_depth.values
    assert np.isnan(floor[~sea]).all() and (floor[sea] > 0).all()
    # Every sea column reaches its bottom level, and only that deep.
    top = ds.level_bounds.values[:, 0]
    np.testing.assert_array_equal(mask, top[:, None, None] < np.nan_to_num(floor)[None])


# ----------------------------------------------------------------------------- sea water
def test_oxygen_solubility_matches_published_values():
    # Garcia and Gordon (1992): 274.610 umol/kg at 10 C and practical salinity 35.
    sa = 35.16504
    umol_kg = oxygen_solubility(10.0, sa) / potential_density(10.0, sa) * 1e3
    assert abs(umol_kg - 274.610) < 0.005
    # Fresh water at 1 atm (Benson and Krause 1984, as tabulated in mg/L by the USGS).
    for t, mg_l in [(0.0, 14.62), (10.0, 11.29), (20.0, 9.09), (30.0, 7.56)]:
        assert oxygen_solubility(t, 0.0) * 31.9988e-3 == pytest.approx(mg_l, rel=3e-3)
    # Less oxygen dissolves in warmer and in saltier water.
    t = np.linspace(0, 30, 7)
    assert np.all(np.diff(oxygen_solubility(t, 18.0)) < 0)
    assert oxygen_solubility(10.0, 18.0) > oxygen_solubility(10.0, 35.0)


def test_density_expands_with_heat_and_contracts_with_salt():
    rho = potential_density(10.0, 35.0)
    assert rho == 1026.0
    # Thermal expansion and haline contraction at (10 C, 35 g/kg) close to TEOS-10's.
    alpha = -(potential_density(10.5, 35.0) - potential_density(9.5, 35.0)) / rho
    beta = (potential_density(10.0, 35.5) - potential_density(10.0, 34.5)) / rho
    assert 1.5e-4 < alpha < 1.8e-4 and 7.2e-4 < beta < 7.8e-4
    # Cold water expands less (the equation is nonlinear in temperature).
    cold = -(potential_density(2.5, 35.0) - potential_density(1.5, 35.0)) / rho
    assert cold < 0.6 * alpha


def test_mixed_layer_depth_and_bottom_values_on_a_known_column():
    depth = np.array([5.0, 15.0, 25.0, 35.0, 45.0])
    temperature = np.full((5, 1, 2), 15.0 + KELVIN)
    salinity = np.full((5, 1, 2), 18.0)
    salinity[3:, 0, 0] = 19.0  # a halocline between 25 and 35 m in the first column
    mld = mixed_layer_depth(temperature, salinity, depth)
    drho = potential_density(15.0, 19.0) - potential_density(15.0, 18.0)
    assert mld[0, 0] == pytest.approx(25.0 + 10.0 * 0.03 / drho)
    assert mld[0, 1] == 45.0  # mixed to the bottom
    mask = np.ones((5, 1, 2), dtype=bool)
    mask[3:, 0, 1] = False
    values = np.arange(10.0).reshape(5, 1, 2)
    np.testing.assert_array_equal(bottom_values(values, mask), [[8.0, 5.0]])
    with pytest.raises(ValueError, match="reference depth"):
        mixed_layer_depth(temperature, salinity, depth, reference_depth=1.0)


# ----------------------------------------------------------------------------- physics
def _monthly(values, month, where):
    return np.array([np.nanmean(values[month == m][:, where]) for m in range(1, 13)])


def test_mixed_layer_deep_in_winter_and_shallow_in_summer(year):
    mld = mixed_layer_depth(year.temperature.values, year.salinity.values, year.level.values)
    sea = np.isfinite(year.sea_floor_depth.values)
    deep = year.sea_floor_depth.values > 1000
    month = year.time.dt.month.values
    basin = _monthly(mld, month, sea)
    offshore = _monthly(mld, month, deep)
    assert 40 < offshore[1] < 100 and 40 < offshore[0] < 100  # January, February
    assert 8 < offshore[6] < 25 and 8 < basin[6] < 25  # July
    assert basin[1] > 3 * basin[6]
    # Spring shoaling and autumn deepening.
    assert basin[2] > basin[4] > basin[6] and basin[6] < basin[9] < basin[11]


def test_fresh_surface_over_salty_deep_water(year):
    s = year.salinity.values
    deep = year.sea_floor_depth.values > 1000
    z = year.level.values
    surface = np.nanmean(s[:, 0][:, deep])
    at_500 = np.nanmean(s[:, np.argmin(abs(z - 500))][:, deep])
    assert 17 < surface < 19.5 and 21.5 < at_500 < 23
    # The rivers freshen the north-western shelf.
    sea = np.isfinite(year.sea_floor_depth.values)
    north_west = sea & (year.latitude.values[:, None] > 44.8) & (year.longitude.values < 31)
    assert np.nanmean(s[:, 0][:, north_west]) < surface - 0.5
    # Summer surface is warm, the cold intermediate layer stays cold below it.
    t = year.temperature.values - KELVIN
    august = year.time.dt.month.values == 8
    assert np.nanmean(t[august, 0][:, deep]) > 20
    at_80 = np.argmin(abs(z - 80))
    assert np.nanmean(t[august, at_80][:, deep]) < 10


def test_surface_oxygen_near_saturation(year):
    sea = np.isfinite(year.sea_floor_depth.values)
    t = year.temperature.values[:, 0] - KELVIN
    ratio = (year.oxygen.values[:, 0] / oxygen_solubility(t, year.salinity.values[:, 0]))[:, sea]
    assert abs(np.median(ratio) - 1) < 0.02
    assert np.percentile(np.abs(ratio - 1), 95) < 0.06


def test_deep_basin_is_anoxic_below_the_oxycline(year):
    o2 = year.oxygen.values
    z = year.level.values
    deep = year.sea_floor_depth.values > 1000
    assert np.nanmax(o2[:, z > 250][..., deep]) < 1.0
    assert np.nanmin(o2[:, z < 30][..., deep]) > 200
    # The oxycline (O2 falls below 20 mmol/m^3) lies around 100-200 m in the deep basin.
    profile = np.nanmean(o2[..., deep], axis=(0, 2))
    oxycline = z[np.argmax(profile < 20)]
    assert 90 < oxycline < 220


def test_bottom_hypoxia_only_on_the_shelf_in_late_summer_and_autumn(year):
    mask = year.sea_mask.values.astype(bool)
    floor = np.nan_to_num(year.sea_floor_depth.values)
    bottom = bottom_values(year.oxygen.values, mask)
    shelf = (floor > 0) & (floor < SHELF_DEPTH_M)
    hypoxic = (bottom < HYPOXIA_THRESHOLD) & shelf[None]
    month = np.where(year.time.dt.year.values == 2001, year.time.dt.month.values, 0)
    by_month = np.array([hypoxic[month == m].sum(axis=(1, 2)).max() for m in range(1, 13)])
    assert by_month[7:10].max() > 0.05 * shelf.sum()  # August to October
    assert by_month[:6].sum() == 0  # never from January to June
    # The shallowest shelf is mixed to the floor all year: never hypoxic.
    assert not hypoxic[:, (floor > 0) & (floor < 12)].any()
    # Cells that turn hypoxic recover when the winter mixed layer reaches the floor.
    ever = hypoxic.any(axis=0)
    assert ever.sum() > 5 and np.all(bottom[-1][ever] > 200)


def test_the_unobserved_demand_changes_the_bottom_but_not_the_surface():
    """The sediment's yearly random factor is drawn whatever its spread, so two runs that
    differ by its spread see the same surface (temperature, salinity, chlorophyll, height) and
    different bottom oxygen on the shelf."""
    base = {**COARSE, "start": "2001-04-01", "days": 150, "spinup_days": 0}
    a = toy_sea_dataset(ToySeaConfig(**base, demand_std=0.0))
    b = toy_sea_dataset(ToySeaConfig(**base, demand_std=0.8))
    for name in ("temperature", "salinity", "chlorophyll"):
        np.testing.assert_array_equal(a[name].values[:, 0], b[name].values[:, 0])
    np.testing.assert_array_equal(a.sea_surface_height.values, b.sea_surface_height.values)
    mask = a.sea_mask.values.astype(bool)
    floor = np.nan_to_num(a.sea_floor_depth.values)
    shelf = (floor > 30) & (floor < SHELF_DEPTH_M)
    diff = np.abs(bottom_values(a.oxygen.values, mask) - bottom_values(b.oxygen.values, mask))
    assert np.median(diff[-1][shelf]) > 10


def test_sea_surface_height_follows_density(year):
    """The height's steric part is the density's: high over light (warm, fresh) columns; it
    explains most of the height's variance, the flow at the reference depth the rest."""
    mask = year.sea_mask.values.astype(bool)
    sea = mask[0]
    floor = np.nan_to_num(year.sea_floor_depth.values)
    rho = potential_density(year.temperature.values - KELVIN, year.salinity.values)
    interfaces = np.append(year.level_bounds.values[:, 0], year.level_bounds.values[-1, 1])
    reference = ToySea(ToySeaConfig(**COARSE)).reference_density
    steric = steric_height(rho, reference, interfaces, floor, 500.0)
    steric = steric - np.nanmean(np.where(sea, steric, np.nan), axis=(1, 2), keepdims=True)
    ssh = year.sea_surface_height.values
    x, y = steric[:, sea].ravel(), ssh[:, sea].ravel()
    assert np.corrcoef(x, y)[0, 1] > 0.7
    slope = np.polyfit(x, y, 1)[0]
    assert 0.6 < slope < 1.5
    # The cyclonic rim current: the middle of the basin stands low, its domed pycnocline
    # below it.
    periphery = (floor > 200) & (floor < 1000)
    assert np.nanmean(ssh[:, periphery]) > np.nanmean(ssh[:, floor > 1500]) + 0.01


# ----------------------------------------------------------------------------- determinism
def _last_state(seed):
    model = ToySea(ToySeaConfig(**COARSE, seed=seed, spinup_days=0))
    *_, (_, fields) = model.run(6)
    return fields


def test_deterministic_by_seed():
    a, b, c = _last_state(3), _last_state(3), _last_state(4)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert np.nanmax(np.abs(a["temperature"] - c["temperature"])) > 1e-3
    assert np.nanmax(np.abs(a["sea_surface_height"] - c["sea_surface_height"])) > 1e-4


REFERENCE_RUN = "from appa.data.toy_sea import ToySea, ToySeaConfig\n" + (
    "model = ToySea(ToySeaConfig(nlat=16, nlon=32, n_levels=16, stretching=4.5, spinup_days=4))\n"
    "model.spin_up()\n"
    "model.advance()\n"
    "print(model.time, model.fingerprint())\n"
)


def _cpu_dispatch_targets() -> list[str]:
    from numpy._core import _multiarray_umath as umath

    return [name for name in umath.__cpu_dispatch__ if umath.__cpu_features__.get(name)]


def test_same_bits_with_other_simd_kernels_and_threads():
    """Elementary functions, normal variates and matrix products that IEEE 754 fixes: the same
    run under numpy's baseline kernels and another BLAS kernel and thread count gives the same
    bytes as this process (on this machine; no hash is committed)."""
    import os
    import subprocess
    import sys

    namespace: dict = {}
    lines: list[str] = []
    namespace["print"] = lambda *args: lines.append(" ".join(map(str, args)))
    exec(REFERENCE_RUN, namespace)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NPY_", "OPENBLAS_"))}
    env.update(
        NPY_DISABLE_CPU_FEATURES=" ".join(_cpu_dispatch_targets()),
        OPENBLAS_CORETYPE="Nehalem",
        OPENBLAS_NUM_THREADS="2",
        OMP_NUM_THREADS="2",
    )
    result = subprocess.run(
        [sys.executable, "-c", REFERENCE_RUN], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == lines[0]


# ----------------------------------------------------------------------------- writing
def test_write_is_atomic_and_claims_its_path(tmp_path, monkeypatch):
    cfg = ToySeaConfig(**COARSE, days=3, spinup_days=0)
    out = tmp_path / "sea.zarr"
    generate_toy_sea(cfg, out, progress=False)
    with pytest.raises(OutputExistsError, match="exists"):
        generate_toy_sea(cfg, out, progress=False)
    generate_toy_sea(cfg, out, progress=False, overwrite=True)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not an Appa toy-sea store"):
        generate_toy_sea(cfg, other, progress=False)
    calls = {"n": 0}
    original = ToySea.fields

    def failing(self):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("simulated crash")
        return original(self)

    monkeypatch.setattr(ToySea, "fields", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_toy_sea(cfg, tmp_path / "fresh.zarr", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "sea.zarr"]


def test_in_memory_matches_the_store(tmp_path):
    cfg = ToySeaConfig(**COARSE, days=4, spinup_days=1, time_chunk=3)
    path = generate_toy_sea(cfg, tmp_path / "sea.zarr", progress=False)
    stored = xr.open_zarr(path).load()
    memory = toy_sea_dataset(cfg)
    for name in memory.data_vars:
        np.testing.assert_array_equal(stored[name].values, memory[name].values)
    assert pd.Timestamp(stored.time.values[0]) == pd.Timestamp(cfg.start)


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mixed_layer_monthly_m": [50] * 11}, "12 depths"),
        ({"mixed_layer_monthly_m": [50] * 11 + [0]}, "12 depths"),
        ({"mixed_layer_monthly_m": [200] * 12}, "through the halocline"),
        ({"oxycline_sigma": (15.0, 14.0)}, "increasing"),
        ({"deep_salinity": 17.0}, "deep_salinity"),
        ({"n_levels": 8, "stretching": 0.5}, "finer than 10 m"),
        ({"nlat": 8}, "greater than or equal to 16"),
        ({"days": 0}, "greater than or equal to 1"),
        ({"start": "someday"}, "not a date"),
        ({"shelf_break_m": 3000.0}, "shelf_break_m"),
    ],
)
def test_bad_configs_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        ToySeaConfig(**settings)


def test_config_from_yaml_overrides():
    cfg = load_config(ToySeaConfig, None, ["start=2003-06-01", "days=10", "seed=4"])
    assert cfg.start == "2003-06-01" and cfg.days == 10 and cfg.seed == 4
    with pytest.raises(ConfigError, match="rim_speed: unknown key"):
        load_config(ToySeaConfig, None, ["rim_speed=1"])
