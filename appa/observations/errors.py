"""Observation errors: the default standard deviation per platform, variable and level, and how
a report's own uncertainty, the table and a user's overrides combine.

The defaults are the magnitudes operational assimilation assigns to conventional observations
(instrument plus representativeness error at a grid of about 50 km): the order of the
radiosonde, surface and aircraft errors of the NCEP GSI conventional error table and of the
ECMWF IFS documentation (Part II, observation errors), rounded. They are starting points, not
measurements of any network: a user with better knowledge overrides them in the ingest config.

Representativeness: a point observation sees scales that a coarse grid cannot hold (a valley
station's temperature, a gust); on a grid of a few degrees (the toy Earth's 5.6 degrees) its
disagreement with the grid-box value is larger than the table's error, which assumes about
50 km. The config's ``representativeness`` adds a term per variable in quadrature
(``sqrt(error^2 + r^2)``) for such grids. Superobservations of satellite swaths carry their own
error (the mean of the pixels in a box) and are not inflated by it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from appa.observations.schema import ObservationError

__all__ = ["DEFAULT_ERRORS", "ErrorEntry", "fill_errors", "table_error"]

# (levels in hPa, standard deviations) for upper-air variables, interpolated in log-pressure
# and held constant beyond the ends; a single value for surface variables
ErrorEntry = float | tuple[Sequence[float], Sequence[float]]

_SONDE_T = (
    (1000, 850, 700, 500, 300, 250, 200, 100, 50),
    (1.2, 1.0, 0.9, 0.8, 0.9, 1.0, 1.1, 1.2, 1.4),
)
_SONDE_WIND = (
    (1000, 850, 700, 500, 300, 250, 200, 100, 50),
    (1.4, 1.6, 1.8, 2.2, 2.8, 2.8, 2.7, 2.4, 2.3),
)
# geopotential (m2 s-2): 10 m of geopotential height near the ground to 40 m at 50 hPa
_SONDE_Z = ((1000, 850, 500, 250, 100, 50), (98.0, 110.0, 147.0, 245.0, 343.0, 392.0))
_AIRCRAFT_T = ((1000, 700, 500, 300, 200), (1.5, 1.3, 1.1, 1.0, 1.0))
_AIRCRAFT_WIND = ((1000, 700, 500, 300, 200), (2.5, 2.7, 3.0, 3.3, 3.5))

DEFAULT_ERRORS: dict[str, dict[str, ErrorEntry]] = {
    "synop": {
        "2m_temperature": 1.5,
        "2m_dewpoint_temperature": 2.0,
        "mean_sea_level_pressure": 100.0,
        "surface_pressure": 100.0,
        "10m_u_component_of_wind": 2.5,
        "10m_v_component_of_wind": 2.5,
    },
    "ship": {
        "2m_temperature": 1.5,
        "2m_dewpoint_temperature": 2.0,
        "mean_sea_level_pressure": 150.0,
        "surface_pressure": 150.0,
        "10m_u_component_of_wind": 3.0,
        "10m_v_component_of_wind": 3.0,
        "sea_surface_temperature": 1.0,
    },
    "temp": {
        "temperature": _SONDE_T,
        "u_component_of_wind": _SONDE_WIND,
        "v_component_of_wind": _SONDE_WIND,
        "geopotential": _SONDE_Z,
    },
    "aircraft": {
        "temperature": _AIRCRAFT_T,
        "u_component_of_wind": _AIRCRAFT_WIND,
        "v_component_of_wind": _AIRCRAFT_WIND,
    },
}
# station tables are surface stations: the synoptic errors
DEFAULT_ERRORS["station"] = dict(DEFAULT_ERRORS["synop"])


def table_error(entry: ErrorEntry, level: np.ndarray) -> np.ndarray:
    """The error of a table ``entry`` at ``level`` ``(n,)`` (hPa; NaN for surface): a constant,
    or a profile interpolated linearly in ``log p`` and held beyond its ends."""
    level = np.asarray(level, dtype=np.float64)
    if isinstance(entry, int | float):
        return np.full(level.shape, float(entry))
    levels, stds = (np.asarray(x, dtype=np.float64) for x in entry)
    order = np.argsort(levels)
    return np.interp(np.log(level), np.log(levels[order]), stds[order])


def fill_errors(
    frame: pd.DataFrame,
    table: Mapping[str, Mapping[str, ErrorEntry]] = DEFAULT_ERRORS,
    representativeness: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """``frame`` (decoded reports) with ``error_std`` filled where the report gave none (NaN),
    from ``table[platform][variable]`` at the row's level, then inflated in quadrature by
    ``representativeness[variable]`` for point observations (footprint 0).

    Raises:
        ObservationError: naming the platform and variable of kept rows that have neither
            their own error nor a table entry (``table`` must be completed in the config).
    """
    out = frame.copy()
    error = out["error_std"].to_numpy(dtype=np.float64).copy()
    need = ~np.isfinite(error)
    platforms = out["platform"].to_numpy().astype(str)
    variables = out["variable"].to_numpy().astype(str)
    level = out["level"].to_numpy(dtype=np.float64)
    missing = set()
    for platform, variable in set(zip(platforms[need], variables[need], strict=True)):
        at = need & (platforms == platform) & (variables == variable)
        entry = table.get(platform, {}).get(variable)
        if entry is None:
            if np.any(at & (out["reason"].to_numpy() == "")):
                missing.add(f"{platform}/{variable}")
            continue
        error[at] = table_error(entry, level[at])
    if missing:
        raise ObservationError(
            f"no observation error for {sorted(missing)}: the reports give none and the error "
            "table has no entry; add one under errors.table in the config"
        )
    if representativeness:
        point = out["footprint"].to_numpy() == 0
        for variable, r in representativeness.items():
            at = point & (variables == variable) & np.isfinite(error)
            error[at] = np.sqrt(error[at] ** 2 + float(r) ** 2)
    bad = np.isfinite(error) & ~(error > 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ObservationError(
            f"observation error {error[row]} of {platforms[row]}/{variables[row]} is not positive"
        )
    out["error_std"] = error
    return out
