"""Metrics: distances between sample sets and climate statistics of trajectories (here);
WeatherBench2 scores in :mod:`appa.metrics.wb2`, score tables in :mod:`appa.metrics.report` and
figures in :mod:`appa.metrics.plots` (imported on use: they load xarray and matplotlib).

Names load on first use, so scoring archives (``appa.metrics.report``, e.g. in a notebook)
does not import torch, which only the sample distances need.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClimateComparison": "appa.metrics.climate",
    "channel_moments": "appa.metrics.climate",
    "compare_climate": "appa.metrics.climate",
    "lag_autocorrelation": "appa.metrics.climate",
    "zonal_power_spectrum": "appa.metrics.climate",
    "gaussian_w2": "appa.metrics.distances",
    "sliced_wasserstein": "appa.metrics.distances",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'appa.metrics' has no attribute {name!r}")
