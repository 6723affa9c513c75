"""Climate statistics checked against closed forms: Parseval, AR(1) correlations, weights."""

import numpy as np
import pytest

from appa.data.grids import area_weights, equiangular_grid
from appa.metrics import channel_moments, compare_climate, lag_autocorrelation, zonal_power_spectrum

LAT, LON = equiangular_grid("64x32")


def test_zonal_spectrum_of_a_cosine_puts_its_power_at_its_wavenumber():
    lon = np.radians(LON)
    k, amplitude = 5, 3.0
    field = amplitude * np.cos(k * lon + 0.7) + 2.0  # mean 2, power A^2/2 at k
    x = np.broadcast_to(field, (2, 3, 1, LAT.size, LON.size))
    power = zonal_power_spectrum(x, LAT)[0]
    assert power.shape == (LON.size // 2 + 1,)
    np.testing.assert_allclose(power[0], 4.0)
    np.testing.assert_allclose(power[k], amplitude**2 / 2)
    np.testing.assert_allclose(np.delete(power, [0, k]), 0.0, atol=1e-20)


def test_zonal_spectrum_sums_to_the_mean_square():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 2, LAT.size, LON.size))
    power = zonal_power_spectrum(x, LAT)
    w = area_weights(LAT)[:, None]
    mean_square = ((x**2).mean(-1) * w[:, 0]).mean((0, 1, 3)) / w.mean()
    np.testing.assert_allclose(power.sum(1), mean_square, rtol=1e-12)


def test_moments_weigh_by_area_and_skip_nan():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 2, LAT.size, LON.size))
    x[:, :, 1, :, :10] = np.nan
    mean, std = channel_moments(x, LAT)
    w = np.broadcast_to(area_weights(LAT)[:, None], x.shape[3:])
    for c in range(2):
        values = x[:, :, c]
        valid = np.isfinite(values)
        ww = np.broadcast_to(w, values.shape)[valid]
        m = np.average(values[valid], weights=ww)
        s = np.sqrt(np.average((values[valid] - m) ** 2, weights=ww))
        np.testing.assert_allclose([mean[c], std[c]], [m, s], rtol=1e-12)


def test_lag_autocorrelation_of_an_ar1_process():
    rng = np.random.default_rng(2)
    rho, T = 0.8, 400
    x = np.empty((4, T, 1, LAT.size, 8))
    x[:, 0] = rng.normal(size=x[:, 0].shape)
    for t in range(1, T):
        x[:, t] = rho * x[:, t - 1] + np.sqrt(1 - rho**2) * rng.normal(size=x[:, t].shape)
    x += np.linspace(0, 50, LAT.size)[:, None]  # a fixed spatial pattern must not count
    lat = np.linspace(-80, 80, LAT.size)
    r = lag_autocorrelation(x, lat)[0]
    assert r == pytest.approx(rho, abs=0.01)
    r2 = lag_autocorrelation(x, lat, lag=2)[0]
    assert r2 == pytest.approx(rho**2, abs=0.02)


def test_compare_climate_flags_what_differs():
    rng = np.random.default_rng(3)
    data = rng.normal(size=(4, 8, 2, LAT.size, LON.size))
    same = rng.normal(size=(4, 8, 2, LAT.size, LON.size))
    cmp = compare_climate(same, data, LAT, ["a", "b"])
    assert cmp.departures() == []
    wide = same.copy()
    wide[:, :, 1] *= 1.5
    departures = compare_climate(wide, data, LAT, ["a", "b"]).departures()
    assert any(f.startswith("b: std ratio") for f in departures)
    assert any(f.startswith("b: zonal power") for f in departures)
    assert not any(f.startswith("a:") for f in departures)
    with pytest.raises(ValueError, match=r"\(C, lat, lon\)"):
        compare_climate(same[:, :, :1], data, LAT, ["a", "b"])


def test_spectra_are_judged_only_where_the_data_hold_power():
    """Band-limited data: wavenumbers beyond their truncation hold rounding errors only."""
    rng = np.random.default_rng(4)
    lon = np.radians(LON)
    amplitudes = rng.normal(size=(6, 2, 1, LAT.size, 9))
    k = np.arange(9)
    data = np.einsum("ntclk,kx->ntclx", amplitudes, np.cos(k[:, None] * lon[None]))
    samples = data + 1e-9 * rng.normal(size=data.shape)  # white noise far above roundoff
    cmp = compare_climate(samples, data, LAT, ["x"])
    assert cmp.resolved()[0].tolist() == [True] * 8 + [False] * 24
    assert cmp.departures() == []
    samples += 2.0 * np.cos(3 * lon)  # a real error inside the band is caught
    assert any("zonal power" in f for f in compare_climate(samples, data, LAT, ["x"]).departures())
