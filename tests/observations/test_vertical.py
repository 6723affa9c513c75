"""Observations between the state's pressure levels: interpolation in log-pressure, exact on
profiles linear in log p, and the same residuals on standardised states."""

import numpy as np
import pytest
import torch

from appa.data.spec import StateSpec
from appa.data.stats import Statistics
from appa.observations.operator import ObservationOperator, vertical_weights
from appa.observations.schema import ObservationError, make_table

SPEC = StateSpec(surface=["2m_temperature"], atmospheric=["temperature"], levels=[850, 500, 250])
LAT = np.array([-45.0, 0.0, 45.0])
LON = np.array([0.0, 90.0, 180.0, 270.0])
TIME = ["2026-01-01T00:00"]


def table(levels, variables=None, values=None):
    n = len(levels)
    return make_table(
        time=TIME * n,
        latitude=np.linspace(-30, 30, n),
        longitude=np.linspace(10, 300, n),
        variable=variables or ["temperature"] * n,
        level=levels,
        value=np.zeros(n) if values is None else values,
        error_std=1.0,
        platform="temp",
    )


def profile_state(a: float = 300.0, b: float = 20.0) -> torch.Tensor:
    """(1, 1, C, H, W): temperature ``a + b log(p / 1000)`` at every cell, 2 m 290 K."""
    x = torch.zeros(1, 1, 4, LAT.size, LON.size, dtype=torch.float64)
    x[:, :, 0] = 290.0
    for c, p in enumerate([850, 500, 250], start=1):
        x[:, :, c] = a + b * np.log(p / 1000)
    return x


def test_weights_are_linear_in_log_pressure():
    channel, weight = vertical_weights(table([700.0, 500.0, 300.0]), SPEC, "log_pressure")
    f = np.log(700 / 850) / np.log(500 / 850)  # the share of 500 hPa
    read = {int(c): w for c, w in zip(channel[0], weight[0], strict=True)}
    np.testing.assert_allclose([read[1], read[2]], [1 - f, f])
    assert weight[1].tolist() == [1.0, 0.0] and channel[1, 0] == 2
    assert sorted(channel[2].tolist()) == [2, 3]


def test_levels_outside_the_state_or_under_exact_are_refused():
    with pytest.raises(ObservationError, match=r"700\.0 hPa"):
        vertical_weights(table([700.0]), SPEC, "exact")
    with pytest.raises(ObservationError, match="outside the range"):
        vertical_weights(table([925.0]), SPEC, "log_pressure")


def test_a_profile_linear_in_log_pressure_is_observed_exactly():
    levels = [700.0, 400.0, 850.0]
    op = ObservationOperator(
        table(levels), SPEC, LAT, LON, TIME, vertical="log_pressure", dtype=torch.float64
    )
    got = op(profile_state()).numpy()[0]
    np.testing.assert_allclose(got, 300.0 + 20.0 * np.log(np.array(levels) / 1000), rtol=1e-12)


def test_standardised_residuals_equal_physical_ones_over_the_spread():
    stats = Statistics(
        mean=np.array([288.0, 280.0, 250.0, 220.0]), std=np.array([10.0, 8.0, 5.0, 4.0]),
        channels=SPEC.channel_names(), period=("2000-01-01", "2000-12-31"),
    )  # fmt: skip
    levels = [700.0, 500.0, 300.0]
    values = [290.0, 255.0, 228.0]
    t = table(levels, values=values)
    x = profile_state() + torch.randn(1, 1, 4, LAT.size, LON.size, dtype=torch.float64)
    z = (x - torch.as_tensor(stats.mean)[:, None, None]) / torch.as_tensor(stats.std)[:, None, None]
    phys = ObservationOperator(t, SPEC, LAT, LON, TIME, vertical="log_pressure",
                               dtype=torch.float64)  # fmt: skip
    std = ObservationOperator(t, SPEC, LAT, LON, TIME, stats=stats, vertical="log_pressure",
                              dtype=torch.float64)  # fmt: skip
    residual_phys = (phys(x) - phys.y).numpy()[0]
    residual_std = (std(z) - std.y).numpy()[0]
    spread = residual_phys / residual_std
    f = np.log(700 / 850) / np.log(500 / 850)
    g = np.log(300 / 500) / np.log(250 / 500)
    np.testing.assert_allclose(spread, [(1 - f) * 8 + f * 5, 5.0, (1 - g) * 5 + g * 4])
    np.testing.assert_allclose(std.noise_variance.numpy(), 1 / spread**2)


def test_observations_on_levels_are_unchanged_by_the_rule():
    stats = Statistics(
        mean=np.array([288.0, 280.0, 250.0, 220.0]), std=np.array([10.0, 8.0, 5.0, 4.0]),
        channels=SPEC.channel_names(), period=("2000-01-01", "2000-12-31"),
    )  # fmt: skip
    t = table([850.0, 250.0], values=[281.0, 219.0])
    a = ObservationOperator(t, SPEC, LAT, LON, TIME, stats=stats)
    b = ObservationOperator(t, SPEC, LAT, LON, TIME, stats=stats, vertical="log_pressure")
    for u, v in zip(a.entries(), b.entries(), strict=True):
        assert torch.equal(u, v)
    assert torch.equal(a.y, b.y) and torch.equal(a.noise_variance, b.noise_variance)


def test_a_job_uses_levels_between_its_own_and_skips_those_beyond():
    import pandas as pd

    from appa.assimilation.screening import screen_observations

    t = table([700.0, 925.0, 500.0], values=[265.0, 280.0, 255.0])
    args = (t, pd.DatetimeIndex(TIME), pd.Timedelta("6h"), pd.Timedelta("3h"), SPEC,
            [288.0, 280.0, 250.0, 220.0], [10.0, 8.0, 5.0, 4.0], 10.0)  # fmt: skip
    exact = screen_observations(*args, outside_state="skip")
    assert exact.reason.tolist() == ["not_in_state", "not_in_state", "used"]
    interpolated = screen_observations(*args, outside_state="skip", vertical="log_pressure")
    assert interpolated.reason.tolist() == ["used", "not_in_state", "used"]
