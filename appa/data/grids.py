"""Regular latitude-longitude grids of the canonical layout and their area weights."""

from __future__ import annotations

import re

import numpy as np
from numpy.typing import NDArray

__all__ = ["area_weights", "equiangular_grid", "parse_grid", "regular_longitudes"]


def parse_grid(grid: str | tuple[int, int]) -> tuple[int, int]:
    """``"64x32"`` (longitudes x latitudes, as WeatherBench2 names its grids) -> ``(64, 32)``."""
    if isinstance(grid, tuple):
        nlon, nlat = grid
    else:
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(grid))
        if match is None:
            raise ValueError(f"grid {grid!r} is not of the form NLONxNLAT, e.g. '64x32'")
        nlon, nlat = int(match[1]), int(match[2])
    if nlon < 4 or nlat < 2 or nlon != 2 * nlat:
        raise ValueError(f"grid {nlon}x{nlat}: need nlon = 2 * nlat >= 4 (equiangular cells)")
    return nlon, nlat


def equiangular_grid(grid: str | tuple[int, int]) -> tuple[NDArray, NDArray]:
    """Latitudes (ascending) and longitudes in degrees of WeatherBench2's equiangular grids
    without poles: cell centres, e.g. 64x32 -> latitudes -87.1875 ... 87.1875 by 5.625 and
    longitudes 0 ... 354.375."""
    nlon, nlat = parse_grid(grid)
    dlat = 180.0 / nlat
    latitude = -90.0 + dlat * (np.arange(nlat) + 0.5)
    return latitude, regular_longitudes(nlon)


def regular_longitudes(nlon: int) -> NDArray:
    """``nlon`` equally spaced longitudes from 0 (degrees, ascending, in [0, 360))."""
    if nlon < 1:
        raise ValueError(f"need at least one longitude, got {nlon}")
    return np.arange(nlon) * (360.0 / nlon)


def area_weights(latitude: NDArray) -> NDArray:
    """Cell-area weights of ascending latitudes (degrees), normalised to mean 1.

    ``w_i = sin(phi_{i+1/2}) - sin(phi_{i-1/2})`` with bounds at midpoints and +-90 at the
    ends (the WeatherBench2 definition).
    """
    lat = np.asarray(latitude, dtype=np.float64)
    if lat.ndim != 1 or lat.size < 2 or not np.all(np.diff(lat) > 0):
        raise ValueError("area_weights needs a 1-D ascending latitude array")
    bounds = np.concatenate([[-90.0], 0.5 * (lat[1:] + lat[:-1]), [90.0]])
    w = np.diff(np.sin(np.radians(bounds)))
    return w / w.mean()
