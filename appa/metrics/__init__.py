"""Metrics: distances between sample sets and climate statistics of trajectories (here);
WeatherBench2 scores in :mod:`appa.metrics.wb2`, score tables in :mod:`appa.metrics.report` and
figures in :mod:`appa.metrics.plots` (imported on use: they load xarray and matplotlib)."""

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
