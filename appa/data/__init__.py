"""Gridded data: sources and layouts, the toy Earth and the toy sea, state specs, statistics
and datasets.

Heavy modules (xarray, zarr, dask) load on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ERA5_PRESETS": "appa.data.sources",
    "SelectionError": "appa.data.sources",
    "StoreConfig": "appa.data.sources",
    "from_earthkit": "appa.data.sources",
    "open_era5": "appa.data.sources",
    "select": "appa.data.sources",
    "LayoutError": "appa.data.layout",
    "check_canonical": "appa.data.layout",
    "normalize": "appa.data.layout",
    "StateSpec": "appa.data.spec",
    "stack": "appa.data.spec",
    "unstack": "appa.data.spec",
    "Statistics": "appa.data.stats",
    "compute_statistics": "appa.data.stats",
    "default_stats_path": "appa.data.stats",
    "WindowStoreDataset": "appa.data.datasets",
    "write_window_store": "appa.data.datasets",
    "WindowDataset": "appa.data.datasets",
    "date_features": "appa.data.datasets",
    "ToyEarth": "appa.data.toy_earth",
    "ToyEarthConfig": "appa.data.toy_earth",
    "write_toy_earth": "appa.data.toy_earth",
    "ToySea": "appa.data.toy_sea",
    "ToySeaConfig": "appa.data.toy_sea",
    "generate_toy_sea": "appa.data.toy_sea",
    "toy_sea_dataset": "appa.data.toy_sea",
    "area_weights": "appa.data.grids",
    "equiangular_grid": "appa.data.grids",
    "latitude_bounds": "appa.data.grids",
    "regular_longitudes": "appa.data.grids",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'appa.data' has no attribute {name!r}")
