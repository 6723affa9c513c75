"""Metrics: distances between sample sets, climate statistics of trajectories and (later)
WeatherBench2 scores."""

from appa.metrics.climate import (
    ClimateComparison,
    channel_moments,
    compare_climate,
    lag_autocorrelation,
    zonal_power_spectrum,
)
from appa.metrics.distances import gaussian_w2, sliced_wasserstein

__all__ = [
    "ClimateComparison",
    "channel_moments",
    "compare_climate",
    "gaussian_w2",
    "lag_autocorrelation",
    "sliced_wasserstein",
    "zonal_power_spectrum",
]
