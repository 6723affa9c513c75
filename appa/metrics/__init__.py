"""Metrics: distances between sample sets and (later) WeatherBench2 scores."""

from appa.metrics.distances import gaussian_w2, sliced_wasserstein

__all__ = ["gaussian_w2", "sliced_wasserstein"]
