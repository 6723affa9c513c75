"""Regular latitude-longitude grids of the canonical layout and their area weights."""

from __future__ import annotations

import re

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "area_weights",
    "equiangular_grid",
    "latitude_bounds",
    "parse_grid",
    "regular_longitudes",
]


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


def latitude_bounds(latitude: NDArray) -> NDArray:
    """Bounds ``(H + 1,)`` in degrees of the rows of ascending ``latitude`` (degrees): midpoints
    between rows, and at each end either the pole or half a row spacing beyond the edge row.

    A grid reaches a pole when the row one spacing beyond its edge row would lie at or past that
    pole (global grids with or without poles: the bound is the pole itself, WeatherBench2's
    definition); otherwise it is regional (a sea's box) and its edge cells are as wide as their
    neighbours.
    """
    lat = np.asarray(latitude, dtype=np.float64)
    if lat.ndim != 1 or lat.size < 2 or not np.all(np.diff(lat) > 0):
        raise ValueError("latitude_bounds needs a 1-D ascending latitude array")
    if not np.all(np.isfinite(lat)) or np.abs(lat).max() > 90:
        raise ValueError("latitudes must be finite and within [-90, 90] degrees")
    south, north = lat[1] - lat[0], lat[-1] - lat[-2]
    low = -90.0 if lat[0] - south <= -90.0 else lat[0] - south / 2
    high = 90.0 if lat[-1] + north >= 90.0 else lat[-1] + north / 2
    return np.concatenate([[low], 0.5 * (lat[1:] + lat[:-1]), [high]])


def area_weights(latitude: NDArray) -> NDArray:
    """Cell-area weights of ascending latitudes (degrees), normalised to mean 1.

    ``w_i = sin(phi_{i+1/2}) - sin(phi_{i-1/2})`` with the bounds of :func:`latitude_bounds`:
    midpoints between rows, and the poles at the ends of a global grid (the WeatherBench2
    definition) or half a spacing beyond the edge rows of a regional one.
    """
    lat = np.asarray(latitude, dtype=np.float64)
    if lat.ndim != 1 or lat.size < 2 or not np.all(np.diff(lat) > 0):
        raise ValueError("area_weights needs a 1-D ascending latitude array")
    w = np.diff(np.sin(np.radians(latitude_bounds(lat))))
    return w / w.mean()
