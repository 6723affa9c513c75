"""A sea's baselines: the profile regression exact on a linear case, the surface OI and the
fitted correlation length against constructed fields, and the climatology and regression
ensembles (with and without floats) on a short toy sea and through ``appa baseline``."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from appa.baselines.climatology import climatology_at, compute_climatology
from appa.baselines.enoi import great_circle_km
from appa.baselines.ocean import (
    SeaRegressionConfig,
    SurfaceOI,
    correlation_length_km,
    fit_profile_regression,
    sea_climatology,
    sea_regression,
    season_features,
)
from appa.data.toy_sea import ToySeaConfig, toy_sea_dataset
from appa.observations.ocean import FloatsConfig, SeaSurfaceConfig, argo_floats, sea_surface_fields
from appa.observations.schema import concat_tables


def test_profile_regression_is_exact_on_a_linear_case():
    rng = np.random.default_rng(0)
    n, L, ny, nx, p = 60, 5, 2, 3, 4
    levels = np.array([[5, 5, 3], [0, 5, 2]])  # columns of 5, 3 and 2 levels; one land cell
    doy = rng.integers(1, 366, n).astype(float)
    predictors = rng.standard_normal((n, ny * nx, p))
    features = np.stack([season_features(predictors[i], np.full(ny * nx, doy[i]))
                         for i in range(n)])  # fmt: skip
    assert features.shape == (n, ny * nx, 3 * p + 3)
    # targets linear in the features through a map of rank 3 per column type
    targets = np.full((n, 3, L, ny * nx), np.nan)
    for k in (5, 3, 2):
        cells = np.flatnonzero(levels.ravel() == k)
        B = rng.standard_normal((features.shape[2], 3)) @ rng.standard_normal((3, 3 * k))
        y = features[:, cells] @ B  # (n, c, 3k)
        targets[:, :, :k, cells] = y.reshape(n, len(cells), 3, k).transpose(0, 2, 3, 1)
    targets = targets.reshape(n, 3, L, ny, nx)
    model = fit_profile_regression(features, targets, levels, modes=3, ridge=0.0)
    predicted = model.predict(features)
    sea = np.isfinite(targets)
    np.testing.assert_array_equal(np.isfinite(predicted), sea)
    np.testing.assert_allclose(predicted[sea], targets[sea], atol=1e-8)
    # too few modes for the rank: no longer exact
    short = fit_profile_regression(features, targets, levels, modes=1, ridge=0.0)
    assert np.nanmax(np.abs(short.predict(features) - targets)) > 1e-3
    # NaN above the floor is refused, naming the column type
    targets[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="columns of 5 levels"):
        fit_profile_regression(features, targets, levels, modes=3, ridge=0.0)


def grid():
    lat = np.arange(41.0, 45.0, 0.5)
    lon = np.arange(30.0, 35.0, 0.5)
    return lat, lon


def test_surface_oi_spreads_one_box_by_the_gaussian_correlation():
    lat, lon = grid()
    sea = np.ones((lat.size, lon.size), bool)
    sea[0, 0] = False
    sigma = np.full(sea.shape, 2.0)
    oi = SurfaceOI(lat, lon, sea, sigma, length_km=100.0)
    # one box of 2 x 2 cells and one point observation at a cell centre
    oi.prepare(np.array([42.25, 44.0]), np.array([31.25, 34.0]), np.array([1.0, 0.0]))
    box = oi.box_index(np.array([44.0]), np.array([34.0]))
    field = np.arange(sea.size, dtype=float).reshape(sea.shape)
    assert oi.box_means(field, oi.box_index(np.array([42.25]), np.array([31.25])))[0] == (
        pytest.approx(np.average(field[2:4, 2:4], weights=np.cos(np.radians(lat[2:4]))[:, None]
                                 * np.ones((2, 2))))
    )  # fmt: skip
    analysis, std = oi.analyse(np.array([3.0]), np.array([0.5]), box)
    # one observation: x(c) = sigma^2 rho(c) d / (sigma^2 + r), var = sigma^2 (1 - ...)
    gain = 4.0 / (4.0 + 0.25)
    assert analysis[6, 8] == pytest.approx(3.0 * gain)
    d = great_circle_km(44.0, 34.0, lat[3], lon[5])
    assert analysis[3, 5] == pytest.approx(3.0 * gain * np.exp(-0.5 * (d / 100.0) ** 2))
    assert std[6, 8] == pytest.approx(np.sqrt(4.0 * (1 - gain)))
    assert np.isnan(analysis[0, 0]) and np.isnan(std[0, 0])
    empty, prior = oi.analyse(np.zeros(0), np.zeros(0), np.zeros(0, np.int64))
    assert np.all(empty[sea] == 0) and np.all(prior[sea] == 2.0)


def test_correlation_length_recovers_a_gaussian_field():
    lat, lon = grid()
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    d = great_circle_km(lat2.ravel()[:, None], lon2.ravel()[:, None], lat2.ravel(), lon2.ravel())
    cov = np.exp(-0.5 * (d / 80.0) ** 2) + 1e-6 * np.eye(d.shape[0])
    rng = np.random.default_rng(1)
    fields = (rng.standard_normal((2000, d.shape[0])) @ np.linalg.cholesky(cov).T).reshape(
        2000, *lat2.shape
    )
    assert correlation_length_km(fields, lat, lon) == 80.0


# ------------------------------------------------------------------------------ a toy sea
@pytest.fixture(scope="module")
def sea():
    """Summer of a coarse sea: 16 x 32 cells, 14 levels, 70 days."""
    cfg = ToySeaConfig(nlat=16, nlon=32, n_levels=14, start="2000-06-01", days=70, spinup_days=10)
    truth = toy_sea_dataset(cfg)
    surface = sea_surface_fields(truth, SeaSurfaceConfig(enabled=True), seed=0)
    floats = argo_floats(truth, FloatsConfig(enabled=True, count=12), seed=0)
    return truth, concat_tables([surface, floats])


TRAIN = ("2000-06-01", "2000-07-20")
TARGET = pd.date_range("2000-07-21", "2000-08-09")


def test_sea_climatology_members_carry_training_anomalies(sea):
    truth, _ = sea
    names = ["temperature", "oxygen"]
    one = sea_climatology(truth, TRAIN, TARGET, window_days=30, members=1, variables=names)
    clim = compute_climatology(truth[names].sel(time=slice(*TRAIN)), TRAIN, 30)
    expected = climatology_at(clim, TARGET)
    np.testing.assert_array_equal(one["oxygen"].values[0], expected["oxygen"].values)
    below = truth["sea_mask"].values == 0
    assert np.isnan(one["temperature"].values[..., below]).all()
    ens = sea_climatology(truth, TRAIN, TARGET, window_days=30, members=4, variables=names)
    assert ens.sizes["member"] == 4 and set(ens.data_vars) == set(names)
    # each member is the climatology plus one training day's anomaly
    anomaly = ens["oxygen"].values[2, 0] - expected["oxygen"].values[0]
    train = truth["oxygen"].sel(time=slice(*TRAIN))
    train_anomaly = (train - climatology_at(clim, train["time"].values)["oxygen"]).values
    gaps = [np.nanmax(np.abs(anomaly - a)) for a in train_anomaly]
    assert min(gaps) < 1e-3
    with pytest.raises(ValueError, match=r"no training day within \+-10 days of .* 2000-07-31"):
        sea_climatology(truth, TRAIN, pd.date_range("2000-07-21", "2000-08-20"), 10, 1, 0, names)


def test_sea_regression_with_and_without_floats(sea):
    truth, table = sea
    cfg = SeaRegressionConfig(members=3, train_every=1, modes=4)
    without, facts0 = sea_regression(
        truth, table, TRAIN, TARGET, window_days=30, config=cfg.model_copy(update={"floats": False})
    )
    with_floats, facts = sea_regression(truth, table, TRAIN, TARGET, window_days=30, config=cfg)
    assert set(with_floats.data_vars) == {"temperature", "salinity", "oxygen"}
    assert with_floats["oxygen"].dims == ("member", "time", "level", "latitude", "longitude")
    mask = truth["sea_mask"].values.astype(bool)
    values = with_floats["temperature"].values
    assert np.isfinite(values[..., mask]).all() and np.isnan(values[..., ~mask]).all()
    assert facts["float_profiles_used"] > 0 and "float_profiles_used" not in facts0
    # the surface is analysed from the observations: better than the climatology at 2.5 m
    clim = sea_climatology(truth, TRAIN, TARGET, 30, 1, variables=["temperature"])
    true = truth["temperature"].sel(time=TARGET.values).values
    err_reg = np.nanmean((without["temperature"].values.mean(0)[:, 0] - true[:, 0]) ** 2)
    err_clim = np.nanmean((clim["temperature"].values[0, :, 0] - true[:, 0]) ** 2)
    assert err_reg < err_clim
    # the floats pull the mean towards what they measured, where they measured it
    argo = table.isel(obs=np.flatnonzero(table["platform"].values.astype(str) == "argo"))
    day = pd.DatetimeIndex(argo["time"].values).normalize()
    argo = argo.isel(obs=np.flatnonzero(day.isin(TARGET) & (argo["variable"] == "oxygen")))
    t = np.searchsorted(TARGET.values, pd.DatetimeIndex(argo["time"].values).normalize().values)
    k = np.searchsorted(truth["level"].values, argo["level"].values)
    iy = np.abs(truth.latitude.values[None] - argo.latitude.values[:, None]).argmin(1)
    ix = np.abs(truth.longitude.values[None] - argo.longitude.values[:, None]).argmin(1)
    gap = {name: np.abs(ds["oxygen"].values.mean(0)[t, k, iy, ix] - argo["value"].values).mean()
           for name, ds in (("without", without), ("with", with_floats))}  # fmt: skip
    assert gap["with"] < 0.5 * gap["without"]
    # observations of the target days only cannot train the regression
    later = table.isel(obs=np.flatnonzero(table["time"].values >= TARGET[0].to_datetime64()))
    with pytest.raises(ValueError, match="on 0 of the 50 training days"):
        sea_regression(truth, later, TRAIN, TARGET, window_days=30, config=cfg)


def test_appa_baseline_sea_kinds_write_archives(sea, tmp_path):
    from appa.cli import app
    from appa.io.archive import open_archive
    from appa.observations.schema import write_observations

    truth, table = sea
    store = tmp_path / "sea.zarr"
    truth.to_zarr(store, zarr_format=2, consolidated=True)
    obs = tmp_path / "obs"
    write_observations(table, obs)
    runner = CliRunner()
    common = ["--truth", str(store), "--start", "2000-07-21", "--end", "2000-08-09",
              "--members", "2", "--set", f"train_start={TRAIN[0]}",
              "--set", f"train_end={TRAIN[1]}", "--set", "window_days=30"]  # fmt: skip
    result = runner.invoke(app, ["baseline", "sea-climatology", "--out", str(tmp_path / "c"),
                                 *common])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["baseline", "sea-regression", "--out", str(tmp_path / "r"),
                                 "--observations", str(obs), *common,
                                 "--set", "sea.modes=3"])  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("c", "r"):
        ds = open_archive(tmp_path / name)
        assert ds.sizes["member"] == 2 and ds.sizes["time"] == 20
        assert ds["level"].attrs.get("units") == "m"
        xr.testing.assert_allclose(ds["level"], truth["level"].astype(float), atol=1e-6)
    missing = runner.invoke(app, ["baseline", "sea-regression", "--out", str(tmp_path / "x"),
                                  *common])  # fmt: skip
    assert missing.exit_code == 2 and "needs observations" in missing.output


def test_persistence_and_climatology_of_a_sea_read_the_whole_store(sea, tmp_path):
    """``spec: null``: the forecast baselines of a sea read its own variables and depth levels
    (the default spec is an atmosphere's); EnOI, which needs a spec, says so."""
    from appa.cli import app
    from appa.io.archive import open_archive

    truth, _ = sea
    store = tmp_path / "sea.zarr"
    truth.to_zarr(store, zarr_format=2, consolidated=True)
    runner = CliRunner()
    common = ["--truth", str(store), "--start", "2000-07-21", "--end", "2000-07-24",
              "--lead-time", "1D", "--lead-time", "3D", "--set", "spec=null",
              "--set", f"train_start={TRAIN[0]}", "--set", f"train_end={TRAIN[1]}"]  # fmt: skip
    result = runner.invoke(app, ["baseline", "persistence", "--out", str(tmp_path / "p"),
                                 *common])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["baseline", "climatology", "--out", str(tmp_path / "c"),
                                 *common, "--set", "window_days=30"])  # fmt: skip
    assert result.exit_code == 0, result.output
    p = open_archive(tmp_path / "p")
    assert p.sizes["level"] == truth.sizes["level"] and p.sizes["lead_time"] == 2
    # persistence at lead 3 days of the start 2000-07-21 is the truth of that day
    got = p["oxygen"].isel(time=0, lead_time=1).squeeze(drop=True).values
    want = truth["oxygen"].sel(time="2000-07-21").values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-6)
    assert open_archive(tmp_path / "c").sizes["level"] == truth.sizes["level"]
    enoi = runner.invoke(app, ["baseline", "enoi", "--out", str(tmp_path / "e"),
                               *common[:6], "--set", "spec=null"])  # fmt: skip
    assert enoi.exit_code == 2 and "needs a state spec" in enoi.output
