"""Classical baselines: Gaspari-Cohn, EnOI against the closed-form Kalman update, climatology
and persistence against hand computations, archives in the agreed layout."""

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from appa.baselines import (
    EnOI,
    climatology_at,
    compute_climatology,
    gaspari_cohn,
    great_circle_km,
    persistence,
)
from appa.data.grids import equiangular_grid
from appa.data.spec import StateSpec
from appa.io.archive import archive_dataset, open_archive, write_dataset
from appa.observations import ObservationOperator, make_table

LAT, LON = equiangular_grid("8x4")
SPEC = StateSpec(surface=["2m_temperature"], atmospheric=["temperature"], levels=[500])
T0 = pd.Timestamp("2003-01-01")


def test_gaspari_cohn_values_continuity_and_positive_definiteness():
    c = 1000.0
    assert gaspari_cohn(np.array([0.0]), c)[0] == 1.0
    assert gaspari_cohn(np.array([c]), c)[0] == pytest.approx(5 / 24, rel=1e-12)
    assert np.all(gaspari_cohn(np.array([2 * c, 2.5 * c, 1e9]), c) == 0)
    z = np.array([c * (1 - 1e-9), c * (1 + 1e-9), 2 * c * (1 - 1e-9)])
    v = gaspari_cohn(z, c)
    assert v[0] == pytest.approx(v[1], abs=1e-7) and v[2] == pytest.approx(0, abs=1e-7)
    assert np.all(np.diff(gaspari_cohn(np.linspace(0, 2 * c, 50), c)) <= 0)
    # A correlation function on the sphere: the matrix on random points is positive semi-definite.
    rng = np.random.default_rng(0)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 150)))
    lon = rng.uniform(0, 360, 150)
    d = great_circle_km(lat[:, None], lon[:, None], lat, lon)
    assert np.linalg.eigvalsh(gaspari_cohn(d, 2000.0)).min() > -1e-9


def test_great_circle_distances():
    quarter = np.pi * 6371.0 / 2
    assert great_circle_km(0.0, 0.0, 90.0, 123.0) == pytest.approx(quarter)
    assert great_circle_km(0.0, 350.0, 0.0, 10.0) == pytest.approx(quarter * 20 / 90)
    assert great_circle_km(10.0, 20.0, 10.0, 20.0) == pytest.approx(0.0, abs=1e-9)


def _operator(n_obs, rng, on_centres=False, error_std=0.5):
    if on_centres:
        j = rng.integers(0, LAT.size, n_obs)
        i = rng.choice(LON.size, n_obs, replace=False)
        lat, lon = LAT[j], LON[i]
    else:
        lat, lon = rng.uniform(-80, 80, n_obs), rng.uniform(0, 360, n_obs)
    variable = np.where(np.arange(n_obs) % 2 == 0, "2m_temperature", "temperature")
    level = np.where(variable == "temperature", 500.0, np.nan)
    table = make_table(
        T0, lat, lon, variable, rng.normal(size=n_obs), error_std, "test", level=level
    )
    op = ObservationOperator(table, SPEC, LAT, LON, [T0], time_axis=False, dtype=torch.float64)
    return op, lat, lon


def _dense(op, n):
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 2, LAT.size, LON.size)
    return op(basis).numpy().T  # (m, n)


def test_enoi_without_localisation_is_the_kalman_update():
    rng = np.random.default_rng(1)
    n = 2 * LAT.size * LON.size
    anomalies = rng.normal(size=(20, 2, LAT.size, LON.size))
    op, lat, lon = _operator(7, rng)
    xb = rng.normal(size=(2, LAT.size, LON.size))
    got = EnOI(anomalies, LAT, LON).analyse(xb, op, lat, lon)
    a = anomalies.reshape(20, -1)
    p = a.T @ a / 19
    h = _dense(op, n)
    r = np.diag(op.noise_variance.numpy())
    k = p @ h.T @ np.linalg.inv(h @ p @ h.T + r)
    want = xb.ravel() + k @ (op.y.numpy() - h @ xb.ravel())
    np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-9, atol=1e-10)


def test_enoi_localisation_is_the_schur_product_for_observations_on_cells():
    rng = np.random.default_rng(2)
    hw = LAT.size * LON.size
    anomalies = rng.normal(size=(10, 2, LAT.size, LON.size))
    op, lat, lon = _operator(5, rng, on_centres=True)
    xb = np.zeros((2, LAT.size, LON.size))
    got = EnOI(anomalies, LAT, LON, localisation_km=3000.0).analyse(xb, op, lat, lon)
    glat, glon = np.meshgrid(LAT, LON, indexing="ij")
    d = great_circle_km(glat.ravel()[:, None], glon.ravel()[:, None], glat.ravel(), glon.ravel())
    rho = np.tile(gaspari_cohn(d, 3000.0), (2, 2))  # same horizontal taper in every block
    a = anomalies.reshape(10, -1)
    p = rho * (a.T @ a / 9)
    h = _dense(op, 2 * hw)
    r = np.diag(op.noise_variance.numpy())
    want = p @ h.T @ np.linalg.solve(h @ p @ h.T + r, op.y.numpy())
    np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-9, atol=1e-10)
    # Far from every observation (beyond twice the half-width) nothing changes.
    far = gaspari_cohn(
        great_circle_km(glat.ravel()[:, None], glon.ravel()[:, None], lat, lon), 3000.0
    ).max(1)
    assert np.all(got.reshape(2, -1)[:, far == 0] == 0)


def test_stochastic_enoi_samples_the_gaussian_posterior():
    # Gaussian prior N(xb, B); static ensemble and member perturbations drawn from it; the
    # perturbed-observation ensemble must have the Kalman mean and covariance (I - K H) B.
    rng = np.random.default_rng(3)
    n = 2 * LAT.size * LON.size
    root = rng.normal(size=(n, 6)) / 2
    b = root @ root.T + 0.05 * np.eye(n)
    chol = np.linalg.cholesky(b)

    def draw(k):
        return (rng.normal(size=(k, n)) @ chol.T).reshape(k, 2, LAT.size, LON.size)

    op, lat, lon = _operator(6, rng, error_std=0.3)
    xb = rng.normal(size=(2, LAT.size, LON.size))
    members = EnOI(draw(4000), LAT, LON).analyse(xb, op, lat, lon, draw(4000), rng)
    h = _dense(op, n)
    r = np.diag(op.noise_variance.numpy())
    k = b @ h.T @ np.linalg.inv(h @ b @ h.T + r)
    mean = xb.ravel() + k @ (op.y.numpy() - h @ xb.ravel())
    cov = (np.eye(n) - k @ h) @ b
    x = members.reshape(4000, -1)
    scale = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(x.mean(0), mean, atol=float(0.1 * scale.max()))
    got = np.cov(x.T)
    np.testing.assert_allclose(np.diag(got), np.diag(cov), rtol=0.12)
    assert np.abs(got - cov).max() < 0.12 * np.abs(cov).max()


def _seasonal_truth(years=2, start="2000-01-01", seed=0):
    times = pd.date_range(start, periods=int(years * 365.25 * 4), freq="6h")
    rng = np.random.default_rng(seed)
    doy = times.day_of_year.values
    hour = times.hour.values
    cycle = 10 * np.sin(2 * np.pi * doy / 365.25) + 2 * (hour == 12)
    t2m = 280 + cycle[:, None, None] + rng.normal(0, 1, (len(times), LAT.size, LON.size))
    t2m[:, 0, :2] = np.nan  # masked cells stay NaN
    ta = 250 + cycle[:, None, None, None] + rng.normal(0, 1, (len(times), 1, LAT.size, LON.size))
    ds = xr.Dataset(
        {
            "2m_temperature": (("time", "latitude", "longitude"), t2m),
            "temperature": (("time", "level", "latitude", "longitude"), ta),
        },
        coords={"time": times, "level": [500], "latitude": LAT, "longitude": LON},
    )
    ds["2m_temperature"].attrs = {"units": "K", "long_name": "2 metre temperature"}
    return ds


def test_climatology_is_the_windowed_mean_by_day_and_hour():
    truth = _seasonal_truth()
    period = ("2000-01-01", "2001-12-31")
    clim = compute_climatology(truth, period, window_days=3)
    assert clim["temperature"].dims == ("dayofyear", "hour", "level", "latitude", "longitude")
    assert clim["hour"].values.tolist() == [0, 6, 12, 18]
    times = pd.DatetimeIndex(truth["time"].values)
    for d, h in ((1, 0), (200, 12), (366, 18), (60, 6)):
        dist = np.abs(times.day_of_year.values - d)
        dist = np.minimum(dist, 366 - dist)
        sel = (times.hour.values == h) & (dist <= 3)
        want = truth["temperature"].values[sel].mean(0)
        np.testing.assert_allclose(clim["temperature"].sel(dayofyear=d, hour=h), want, rtol=1e-6)
    assert np.isnan(clim["2m_temperature"].values[..., 0, :2]).all()
    assert np.isfinite(clim["2m_temperature"].values[..., 1:, :]).all()
    assert clim["2m_temperature"].attrs["units"] == "K"
    # At target times: picks day of year and hour; forecasts use valid times.
    target = pd.date_range("2003-03-05", periods=3, freq="6h")
    at = climatology_at(clim, target)
    np.testing.assert_array_equal(
        at["temperature"].isel(time=2), clim["temperature"].sel(dayofyear=64, hour=12)
    )
    fc = climatology_at(clim, target[:1], ["6h", "1D"])
    assert fc["temperature"].dims[:2] == ("time", "lead_time")
    np.testing.assert_array_equal(
        fc["temperature"].isel(time=0, lead_time=1), clim["temperature"].sel(dayofyear=65, hour=0)
    )
    with pytest.raises(ValueError, match="hours"):
        climatology_at(clim, [pd.Timestamp("2003-01-01T03:00")])
    with pytest.raises(ValueError, match="training period"):
        compute_climatology(truth, ("1990-01-01", "1990-12-31"))


def test_persistence_and_archive_layout(tmp_path):
    truth = _seasonal_truth(years=0.05)
    init = truth["time"].values[[2, 5]]
    fc = persistence(truth, init, ["6h", "12h"])
    np.testing.assert_array_equal(
        fc["temperature"].isel(time=1, lead_time=1), truth["temperature"].sel(time=init[1])
    )
    archive = archive_dataset(fc, truth=truth, provenance={"seeds": [0], "appa_config": "x"})
    assert archive["temperature"].dims == (
        "member", "time", "lead_time", "level", "latitude", "longitude",
    )  # fmt: skip
    assert archive["temperature"].dtype == np.float32
    assert archive["member"].attrs["standard_name"] == "realization"
    assert archive["2m_temperature"].attrs["units"] == "K"
    path = write_dataset(archive, tmp_path / "persistence.zarr")
    back = open_archive(path)
    xr.testing.assert_equal(back.load(), archive)
    assert back.attrs["seeds"] == "[0]"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(FileExistsError):
        write_dataset(archive, path)
    with pytest.raises(ValueError, match="not in the truth"):
        persistence(truth, [pd.Timestamp("2010-01-01")], ["6h"])
