"""WeatherBench2 metrics: cross-checked against hand computations in numpy, and known limits."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from appa.data.grids import equiangular_grid
from appa.metrics.wb2 import (
    EvaluationError,
    align_truth,
    check_finite,
    crps_fair,
    evaluate,
    latitude_weights,
    time_mean,
)

LAT, LON = equiangular_grid("8x4")
TIMES = pd.date_range("2003-01-01", periods=5, freq="6h")
LEVELS = [500, 850]


def _truth(rng, times=TIMES):
    t, h, w = len(times), LAT.size, LON.size
    return xr.Dataset(
        {
            "2m_temperature": (("time", "latitude", "longitude"), rng.normal(280, 5, (t, h, w))),
            "temperature": (
                ("time", "level", "latitude", "longitude"),
                rng.normal(250, 5, (t, 2, h, w)),
            ),
        },
        coords={"time": times, "level": LEVELS, "latitude": LAT, "longitude": LON},
    )


def _archive(truth, rng, members=4, noise=2.0, times=None):
    times = truth["time"].values if times is None else times
    data = {}
    for name in truth.data_vars:
        base = truth[name].sel(time=times).values
        x = base[None] + rng.normal(0, noise, (members, *base.shape))
        data[name] = (("member", *truth[name].dims), x.astype(np.float32))
    return xr.Dataset(
        data,
        coords={
            "member": np.arange(members),
            "time": times,
            "level": LEVELS,
            "latitude": LAT,
            "longitude": LON,
        },
    )


def _hand(x, y, w):
    """x (M, T, H, W), y (T, H, W), w (H,) -> metrics with loops and explicit formulas."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    m, t = x.shape[:2]
    ww = np.broadcast_to(w[:, None], y.shape[1:])
    mse, var, crps, bias, mae = [], [], [], [], []
    for k in range(t):
        valid = ~np.isnan(y[k])
        wk = np.where(valid, ww, 0.0)
        yk = np.where(valid, y[k], 0.0)
        xk = np.where(valid, x[:, k], 0.0)
        mean = xk.mean(0)
        s2 = xk.var(0, ddof=1) if m > 1 else np.zeros_like(mean)
        skill = np.abs(xk - yk).mean(0)
        pairs = sum(np.abs(xk[i] - xk[j]) for i in range(m) for j in range(m))
        crps_k = skill - (pairs / (2 * m * (m - 1)) if m > 1 else 0.0)

        def avg(f, wk=wk):
            return (f * wk).sum() / wk.sum()

        mse.append(avg((mean - yk) ** 2))
        var.append(avg(s2))
        crps.append(avg(crps_k))
        bias.append(avg(mean - yk))
        mae.append(avg(np.abs(mean - yk)))
    rmse, spread = np.sqrt(np.mean(mse)), np.sqrt(np.mean(var))
    ratio = np.sqrt((m + 1) / m) * spread / rmse if m > 1 else np.nan
    return {
        "rmse": rmse,
        "spread": spread,
        "spread_skill": ratio,
        "crps": np.mean(crps),
        "bias": np.mean(bias),
        "mae": np.mean(mae),
    }


def _area(lat):
    edges = np.radians(np.concatenate([[-90], (lat[1:] + lat[:-1]) / 2, [90]]))
    w = np.sin(edges[1:]) - np.sin(edges[:-1])
    return w / w.mean()


def test_latitude_weights_are_cell_areas_with_mean_one():
    w = latitude_weights(LAT).values
    np.testing.assert_allclose(w.mean(), 1.0)
    np.testing.assert_allclose(w, _area(LAT))
    # On a grid without poles each cell spans 45 degrees here: areas sin(-45)-sin(-90) etc.
    np.testing.assert_allclose(w[0] / w[1], (1 - np.sqrt(0.5)) / np.sqrt(0.5))
    with pytest.raises(ValueError, match="ascending"):
        latitude_weights(LAT[::-1])


def test_crps_fair_matches_pair_sum_and_gaussian_limit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 30))
    y = rng.normal(size=30)
    got = crps_fair(xr.DataArray(x, dims=("member", "n")), xr.DataArray(y, dims="n")).values
    pairs = np.abs(x[:, None] - x[None, :]).sum((0, 1))
    want = np.abs(x - y).mean(0) - pairs / (2 * 7 * 6)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # Unbiased: for a standard normal forecast of y = 0, CRPS = 2 phi(0) - 1/sqrt(pi)
    # (Gneiting & Raftery) whatever the ensemble size, here M = 3.
    x = rng.normal(size=(3, 200_000))
    got = crps_fair(xr.DataArray(x, dims=("member", "n")), xr.DataArray(0.0)).mean()
    exact = 2 / np.sqrt(2 * np.pi) - 1 / np.sqrt(np.pi)
    assert float(got) == pytest.approx(exact, abs=4e-3)


@pytest.mark.parametrize("members", [1, 2, 5])
def test_analysis_metrics_match_hand_computation(members):
    rng = np.random.default_rng(members)
    truth = _truth(rng)
    truth["2m_temperature"][1, 0, :3] = np.nan  # masked cells, as SST over land
    pred = _archive(truth, rng, members=members)
    table = evaluate(pred, truth)
    w = _area(LAT)
    for name in ("2m_temperature", "temperature"):
        if name == "temperature":
            for i, p in enumerate(LEVELS):
                want = _hand(pred[name].values[:, :, i], truth[name].values[:, i], w)
                for metric, value in want.items():
                    got = float(table[name].sel(metric=metric, level=p))
                    np.testing.assert_allclose(got, value, rtol=1e-9, err_msg=f"{name} {metric}")
        else:
            want = _hand(pred[name].values, truth[name].values, w)
            for metric, value in want.items():
                got = float(table[name].sel(metric=metric))
                np.testing.assert_allclose(got, value, rtol=1e-9, err_msg=f"{name} {metric}")
    assert table.attrs["ensemble_size"] == members
    if members == 1:
        assert np.all(table["2m_temperature"].sel(metric="spread") == 0)
        # CRPS of a point mass is the absolute error: equals the MAE of the (single) mean.
        np.testing.assert_allclose(
            table["temperature"].sel(metric="crps"), table["temperature"].sel(metric="mae")
        )


def test_by_time_and_dask_give_the_same_numbers():
    rng = np.random.default_rng(3)
    truth = _truth(rng)
    pred = _archive(truth, rng, members=3)
    eager = evaluate(pred, truth, by_time=True)
    lazy = evaluate(pred.chunk({"time": 2}), truth.chunk({"time": 3}), by_time=True, compute=False)
    assert lazy["temperature"].chunks is not None
    xr.testing.assert_allclose(eager, lazy.compute())
    # The time mean of squared per-time RMSEs is the squared RMSE; time_mean redoes evaluate's.
    mean = evaluate(pred, truth)
    xr.testing.assert_allclose(time_mean(eager), mean)
    rmse_t = eager["2m_temperature"].sel(metric="rmse")
    np.testing.assert_allclose(
        np.sqrt((rmse_t**2).mean("time")), mean["2m_temperature"].sel(metric="rmse")
    )


def test_forecast_alignment_uses_valid_times():
    rng = np.random.default_rng(4)
    times = pd.date_range("2003-01-01", periods=12, freq="6h")
    truth = _truth(rng, times)
    init = times[:3].values
    leads = pd.to_timedelta([6, 12, 24], unit="h").values
    # A "forecast" equal to the truth at valid time plus noise growing with lead time.
    fields = {}
    for name in truth.data_vars:
        t = truth[name]
        per_lead = [t.sel(time=init + lead).values for lead in leads]
        base = np.stack(per_lead, axis=1)  # (time, lead, ...)
        scale = np.array([1.0, 2.0, 4.0]).reshape((1, 3) + (1,) * (base.ndim - 2))
        x = base[None] + scale[None] * rng.normal(size=(6, *base.shape))
        dims = ("member", "time", "lead_time", *t.dims[1:])
        fields[name] = (dims, x)
    pred = xr.Dataset(
        fields,
        coords={"member": np.arange(6), "time": init, "lead_time": leads, "level": LEVELS,
                "latitude": LAT, "longitude": LON},
    )  # fmt: skip
    aligned = align_truth(pred, truth)
    assert aligned["temperature"].dims == ("time", "lead_time", "level", "latitude", "longitude")
    np.testing.assert_array_equal(
        aligned["2m_temperature"].isel(time=1, lead_time=2),
        truth["2m_temperature"].sel(time=init[1] + leads[2]),
    )
    table = evaluate(pred, truth)
    rmse = table["2m_temperature"].sel(metric="rmse").values
    assert rmse.shape == (3,) and np.all(np.diff(rmse) > 0)
    w = _area(LAT)
    for j in range(3):
        x = pred["2m_temperature"].values[:, :, j]
        y = aligned["2m_temperature"].values[:, j]
        np.testing.assert_allclose(rmse[j], _hand(x, y, w)["rmse"], rtol=1e-9)


def test_calibrated_gaussian_ensemble_has_spread_skill_one():
    # Truth and members exchangeable: y, x_1..x_M iid N(mu, sigma^2) per cell and time.
    rng = np.random.default_rng(5)
    times = pd.date_range("2003-01-01", periods=200, freq="6h")
    mu = rng.normal(280, 10, (len(times), LAT.size, LON.size))
    sigma = rng.uniform(0.5, 3.0, (1, LAT.size, LON.size))
    y = mu + sigma * rng.normal(size=mu.shape)
    x = mu[None] + sigma[None] * rng.normal(size=(4, *mu.shape))
    coords = {"time": times, "latitude": LAT, "longitude": LON}
    truth = xr.Dataset({"2m_temperature": (("time", "latitude", "longitude"), y)}, coords=coords)
    pred = xr.Dataset(
        {"2m_temperature": (("member", "time", "latitude", "longitude"), x)},
        coords={**coords, "member": np.arange(4)},
    )
    table = evaluate(pred, truth)["2m_temperature"]
    assert float(table.sel(metric="spread_skill")) == pytest.approx(1.0, abs=0.03)
    # Members with f times the truth's spread: skill^2 = sigma^2 (1 + f^2 / M), spread^2 =
    # f^2 sigma^2, so the ratio is sqrt((M+1)/M) f / sqrt(1 + f^2/M).
    for factor in (0.5, 2.0):
        xs = mu[None] + factor * sigma[None] * rng.normal(size=(4, *mu.shape))
        bad = pred.copy(data={"2m_temperature": xs})
        ratio = float(evaluate(bad, truth)["2m_temperature"].sel(metric="spread_skill"))
        want = np.sqrt(5 / 4) * factor / np.sqrt(1 + factor**2 / 4)
        assert ratio == pytest.approx(want, rel=0.03), (factor, ratio)


def test_mask_restricts_the_average():
    rng = np.random.default_rng(6)
    truth = _truth(rng)
    pred = _archive(truth, rng, members=2)
    north = xr.DataArray(LAT > 0, dims="latitude", coords={"latitude": LAT})
    table = evaluate(pred, truth, mask=north)
    # The full grid's area weights, zero in the south.
    want = _hand(pred["2m_temperature"].values, truth["2m_temperature"].values,
                 _area(LAT) * (LAT > 0))  # fmt: skip
    for metric, value in want.items():
        np.testing.assert_allclose(float(table["2m_temperature"].sel(metric=metric)), value)
    assert float(table["2m_temperature"].sel(metric="rmse")) != pytest.approx(
        float(evaluate(pred, truth)["2m_temperature"].sel(metric="rmse"))
    )


def test_clear_errors():
    rng = np.random.default_rng(7)
    truth = _truth(rng)
    pred = _archive(truth, rng, members=2)
    with pytest.raises(EvaluationError, match="not in the truth"):
        evaluate(pred, truth.drop_vars("temperature"))
    with pytest.raises(EvaluationError, match="valid time"):
        evaluate(pred, truth.isel(time=slice(0, 3)))
    with pytest.raises(EvaluationError, match="grids differ in latitude"):
        evaluate(pred, truth.assign_coords(latitude=LAT + 1))
    with pytest.raises(EvaluationError, match=r"levels \[850\]"):
        evaluate(pred, truth.sel(level=[500]))
    truth["2m_temperature"].attrs["units"] = "K"
    pred["2m_temperature"].attrs["units"] = "degC"
    with pytest.raises(EvaluationError, match="degC"):
        evaluate(pred, truth)
    pred["2m_temperature"].attrs["units"] = "K"
    pred["temperature"][0, 0, 0, 0, 0] = np.nan
    with pytest.raises(EvaluationError, match="temperature"):
        check_finite(evaluate(pred, truth))
