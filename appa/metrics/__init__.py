"""Metrics: distances between sample sets (here); WeatherBench2 scores in
:mod:`appa.metrics.wb2`, score tables in :mod:`appa.metrics.report` and figures in
:mod:`appa.metrics.plots` (imported on use: they load xarray and matplotlib)."""

from appa.metrics.distances import gaussian_w2, sliced_wasserstein

__all__ = ["gaussian_w2", "sliced_wasserstein"]
