"""The observation operator: exact interpolation, batching, adjoints, standardisation, errors."""

import numpy as np
import pandas as pd
import pytest
import torch

from appa.data.grids import equiangular_grid
from appa.data.spec import StateSpec
from appa.data.stats import Statistics
from appa.diffusion import GaussianObservation, MMPSDenoiser
from appa.observations import ObservationError, ObservationOperator, make_table

LAT, LON = equiangular_grid("16x8")
TIMES = pd.date_range("2000-01-01", periods=3, freq="6h")
SPEC = StateSpec(surface=["2m_temperature"], atmospheric=["temperature"], levels=[500, 850])


def _table(**overrides):
    fields = dict(
        time=[TIMES[0], TIMES[2], TIMES[1]],
        latitude=[10.0, -45.0, 60.0],
        longitude=[355.0, 100.0, -20.0],
        variable=["2m_temperature", "temperature", "temperature"],
        level=[np.nan, 850.0, 500.0],
        value=[280.0, 260.0, 250.0],
        error_std=[1.0, 2.0, 0.5],
        platform="test",
    )
    fields.update(overrides)
    return make_table(**fields)


def test_bilinear_is_exact_on_bilinear_fields_and_periodic():
    op = ObservationOperator(_table(), SPEC, LAT, LON, TIMES)
    x = torch.zeros(1, 3, 3, 8, 16, dtype=torch.float64)
    lat = torch.tensor(LAT)[:, None]
    # A field linear in latitude and in cos/sin-free periodic longitude: 360-periodic sawtooth
    # is not smooth at 0, so use a plane in latitude times a per-column value instead.
    col = torch.arange(16, dtype=torch.float64)
    x[0, 0, 0] = 3.0 * lat + col  # 2m_temperature at time 0
    x[0, 2, 2] = -2.0 * lat  # temperature@850 at time 2
    x[0, 1, 1] = 5.0 + 0 * lat + 0 * col  # temperature@500 at time 1
    y = op(x)[0]
    # lon 355 lies between column 15 (351.5625) and column 0 (360 = 0): periodic wrap.
    f = (355.0 - 15 * 22.5) / 22.5
    assert y[0].item() == pytest.approx(3.0 * 10.0 + (1 - f) * 15 + f * 0, rel=1e-12)
    assert y[1].item() == pytest.approx(-2.0 * -45.0, rel=1e-12)
    assert y[2].item() == pytest.approx(5.0, rel=1e-12)
    assert op.time_index.tolist() == [0, 2, 1]


def test_batched_linear_adjoint_and_standardised():
    op = ObservationOperator(_table(), SPEC, LAT, LON, TIMES, dtype=torch.float64)
    x = torch.randn(4, 3, 3, 8, 16, dtype=torch.float64)
    y = op(x)
    assert y.shape == (4, 3)
    for b in range(4):
        torch.testing.assert_close(op(x[b : b + 1])[0], y[b])
    torch.testing.assert_close(op(2 * x + x.flip(0)), 2 * y + y.flip(0))
    # <A x, u> = <x, A^T u> with A^T from autograd (the VJP the posterior denoisers use).
    u = torch.randn(4, 3, dtype=torch.float64)
    x.requires_grad_(True)
    (At_u,) = torch.autograd.grad(op(x), x, u)
    assert (op(x) * u).sum().item() == pytest.approx((x * At_u).sum().item(), rel=1e-12)
    # On standardised states, y and variances are standardised: A(z) matches y exactly when
    # the physical state reproduces the observations.
    stats = Statistics(SPEC.channel_names(), [270.0, 240.0, 265.0], [10.0, 5.0, 4.0], ("a", "b"))
    phys = ObservationOperator(_table(), SPEC, LAT, LON, TIMES, dtype=torch.float64)
    std = ObservationOperator(_table(), SPEC, LAT, LON, TIMES, stats=stats, dtype=torch.float64)
    state = torch.randn(1, 3, 3, 8, 16, dtype=torch.float64) * 5 + 260
    z = stats.standardize(state)
    s = torch.tensor(stats.std)[std.channel]
    m = torch.tensor(stats.mean)[std.channel]
    torch.testing.assert_close(std(z)[0], (phys(state)[0] - m) / s)
    torch.testing.assert_close(std.noise_variance, phys.noise_variance / s**2)
    torch.testing.assert_close(std.y, (phys.y - m) / s)


def test_gaussian_observation_with_mmps_is_exact():
    """MMPS with a direct solve is exact for a Gaussian prior and a linear operator."""
    op = ObservationOperator(_table(), SPEC, LAT, LON, TIMES, dtype=torch.float64)
    obs = op.observation()
    assert isinstance(obs, GaussianObservation) and obs.linear
    s2 = 4.0

    def prior(x_t, sigma):  # N(0, s2 I): E[x | x_t] = x_t s2 / (s2 + sigma^2)
        return x_t * (s2 / (s2 + sigma.view(-1, 1, 1, 1, 1) ** 2))

    denoiser = MMPSDenoiser(prior, obs, solver="direct")
    x_t = torch.randn(2, 3, 3, 8, 16, dtype=torch.float64) * 3
    sigma = torch.tensor([0.5, 2.0], dtype=torch.float64)
    got = denoiser(x_t, sigma)
    d = x_t[0].numel()
    A = torch.stack([op(e.view(1, *x_t.shape[1:]))[0] for e in torch.eye(d, dtype=torch.float64)]).T
    for b in range(2):
        var = 1 / (1 / s2 + 1 / sigma[b] ** 2)
        mu = x_t[b].reshape(-1) * s2 / (s2 + sigma[b] ** 2)
        K = var * A.T @ torch.linalg.inv(torch.diag(obs.noise_variance) + var * A @ A.T)
        expected = mu + K @ (obs.y - A @ mu)
        torch.testing.assert_close(got[b].reshape(-1), expected)


def test_footprint_box_mean():
    table = make_table(
        time=[TIMES[0]], latitude=[0.0], longitude=[0.0], variable="2m_temperature",
        value=[1.0], error_std=1.0, platform="coarse", footprint=45.0 * (1 - 1e-6),
    )  # fmt: skip
    op = ObservationOperator(table, SPEC, LAT, LON, TIMES)
    x = torch.zeros(1, 3, 3, 8, 16)
    x[0, 0, 0, 3:5, [14, 15, 0, 1]] = 2.0  # the 2x... box of cells around (0, 0)
    x[0, 0, 0, :, 5:13] = 100.0  # far away: not in the box
    assert op(x)[0, 0].item() == pytest.approx(2.0)


def test_clear_errors():
    with pytest.raises(ObservationError, match="unknown variable 'specific_humidity'"):
        ObservationOperator(
            _table(variable="specific_humidity", level=np.nan), SPEC, LAT, LON, TIMES
        )
    with pytest.raises(ObservationError, match=r"at 700.0 hPa; the state has levels \[500, 850\]"):
        ObservationOperator(_table(variable="temperature", level=700.0), SPEC, LAT, LON, TIMES)
    with pytest.raises(ObservationError, match="need a level"):
        ObservationOperator(_table(variable="temperature", level=np.nan), SPEC, LAT, LON, TIMES)
    with pytest.raises(ObservationError, match="outside the state's times"):
        late = [TIMES[0], TIMES[2] + pd.Timedelta("1h"), TIMES[1]]
        ObservationOperator(_table(time=late), SPEC, LAT, LON, TIMES)
    ok = ObservationOperator(_table(time=late), SPEC, LAT, LON, TIMES, time_tolerance="1h")
    assert ok.time_index.tolist() == [0, 2, 1]
    with pytest.raises(ObservationError, match="value is NaN"):
        _table(value=[1.0, np.nan, 2.0])
    with pytest.raises(ObservationError, match="error_std is not positive"):
        _table(error_std=[1.0, 0.0, 1.0])
    with pytest.raises(ObservationError, match=r"latitude outside \[-90, 90\]"):
        _table(latitude=[10.0, 95.0, 0.0])
    op = ObservationOperator(_table(), SPEC, LAT, LON, TIMES)
    with pytest.raises(ObservationError, match="state shape"):
        op(torch.zeros(1, 3, 8, 16))
