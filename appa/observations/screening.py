"""Rules on observation tables that need neither a prior nor a job: which state an observation
belongs to (the time rule), physical bounds of the canonical variables, declared units, and the
usual unit mistakes.

The time rule: states lie on a regular grid of ``step``; an observation belongs to the nearest
time of that grid, an observation exactly halfway between two to the later one (as the
satellite simulator's ``[t - step/2, t + step/2)`` intervals do), and is used when that time is
one of the states and lies within ``tolerance`` of it. The grid, not the states at hand, decides,
so an observation between two units (time segments, filter cycles) belongs to exactly one of
them. Checks against a prior's statistics live in :mod:`appa.assimilation.screening`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from appa.observations.schema import ObservationError

__all__ = [
    "CANONICAL_UNITS",
    "OFF_TIME",
    "OUTSIDE_PERIOD",
    "TimeRule",
    "assign_times",
    "check_units",
    "declared_units",
    "physical_bounds",
    "time_tolerance",
    "unit_mistakes",
]

TimeRule = Literal["nearest", "exact"]

# assign_times' codes of observations that belong to no state
OUTSIDE_PERIOD = -1  # the nearest grid time is not one of the states
OFF_TIME = -2  # the nearest grid time is a state, but further than the tolerance


def time_tolerance(
    rule: TimeRule, tolerance: str | pd.Timedelta | None, step: pd.Timedelta | None
) -> pd.Timedelta:
    """How far an observation may lie from its state: 0 under ``exact``; under ``nearest``
    ``tolerance``, by default half the step (0 when the step is unknown: a single state)."""
    if rule == "exact":
        tol = pd.Timedelta(0) if tolerance is None else pd.Timedelta(tolerance)
        if tol != pd.Timedelta(0):
            raise ValueError(f"time_rule 'exact' takes no time_tolerance, got {tolerance!r}")
        return tol
    if rule != "nearest":
        raise ValueError(f"time_rule must be 'nearest' or 'exact', got {rule!r}")
    if tolerance is not None:
        tol = pd.Timedelta(tolerance)
        if tol < pd.Timedelta(0):
            raise ValueError(f"time_tolerance must not be negative, got {tolerance!r}")
        return tol
    return pd.Timedelta(0) if step is None else pd.Timedelta(step) / 2


def _ns(times) -> np.ndarray:
    return pd.DatetimeIndex(np.atleast_1d(times)).values.astype("datetime64[ns]").astype(np.int64)


def assign_times(
    obs_times: Sequence | np.ndarray,
    states: Sequence | np.ndarray,
    tolerance: str | pd.Timedelta,
    step: str | pd.Timedelta | None = None,
) -> np.ndarray:
    """The state of each observation ``(m,)``: an index into ``states`` (sorted), or
    :data:`OUTSIDE_PERIOD` / :data:`OFF_TIME` (see the module docstring).

    Arguments:
        states: Times on a regular grid of ``step`` (gaps allowed, e.g. forecast contexts).
        step: The grid's step; None: the spacing of ``states`` when regular. Without one (a
            single state, irregular states) an observation belongs to its nearest state (ties:
            the later) and is off time beyond ``tolerance``.
    """
    t = _ns(obs_times) if len(np.atleast_1d(obs_times)) else np.zeros(0, np.int64)
    s = _ns(states)
    if s.size == 0:
        raise ValueError("assign_times needs at least one state")
    if np.any(np.diff(s) <= 0):
        raise ValueError("states must be sorted and distinct")
    tol = pd.Timedelta(tolerance).value
    if step is None and s.size > 1 and np.all(np.diff(s) == s[1] - s[0]):
        step = pd.Timedelta(int(s[1] - s[0]), "ns")
    if step is not None:
        d = pd.Timedelta(step).value
        if d <= 0:
            raise ValueError(f"step must be positive, got {step}")
        if np.any((s - s[0]) % d):
            raise ValueError(f"states do not lie on a grid of {pd.Timedelta(step)}")
        # nearest grid time, ties to the later: floor((t - s0) / d + 1/2), in integers
        grid = s[0] + ((2 * (t - s[0]) + d) // (2 * d)) * d
        pos = np.minimum(np.searchsorted(s, grid), s.size - 1)
        index = np.where(s[pos] == grid, pos, OUTSIDE_PERIOD)
    else:
        pos = np.minimum(np.searchsorted(s, t), s.size - 1)  # first state at or after t
        prev = np.maximum(pos - 1, 0)
        index = np.where(np.abs(t - s[prev]) < np.abs(s[pos] - t), prev, pos)
        grid = s[index]
    off = (index >= 0) & (np.abs(t - grid) > tol)
    return np.where(off, OFF_TIME, index).astype(np.int64)


# --- physical bounds -----------------------------------------------------------------------

# SI units of the canonical (ERA5 / WeatherBench2) names, as their CF attributes spell them
CANONICAL_UNITS: dict[str, str] = {
    "2m_temperature": "K",
    "2m_dewpoint_temperature": "K",
    "skin_temperature": "K",
    "sea_surface_temperature": "K",
    "temperature": "K",
    "mean_sea_level_pressure": "Pa",
    "surface_pressure": "Pa",
    "geopotential": "m**2 s**-2",
    "geopotential_at_surface": "m**2 s**-2",
    "u_component_of_wind": "m s**-1",
    "v_component_of_wind": "m s**-1",
    "10m_u_component_of_wind": "m s**-1",
    "10m_v_component_of_wind": "m s**-1",
    "10m_wind_speed": "m s**-1",
    "vertical_velocity": "Pa s**-1",
    "specific_humidity": "kg kg**-1",
    "relative_humidity": "%",
    "total_column_water_vapour": "kg m**-2",
    "total_precipitation": "m",
    "land_sea_mask": "1",
    # the sea's (appa.data.toy_sea); its temperature is ``temperature``, in K
    "salinity": "g kg**-1",
    "oxygen": "mmol m**-3",
    "chlorophyll": "mg m**-3",
    "log10_chlorophyll": "1",
    "sea_surface_height": "m",
}

# Generous bounds (beyond any observed record, and beyond the toy Earth's extremes: its
# mean-sea-level pressure spans 901-1105 hPa, its 250 hPa temperature reaches 153 K)
_BOUNDS: dict[str, tuple[float, float]] = {
    "2m_temperature": (150.0, 350.0),
    "2m_dewpoint_temperature": (150.0, 350.0),
    "skin_temperature": (150.0, 370.0),
    "sea_surface_temperature": (260.0, 320.0),
    "temperature": (120.0, 350.0),
    "mean_sea_level_pressure": (80000.0, 115000.0),
    "surface_pressure": (40000.0, 115000.0),
    "geopotential_at_surface": (-5000.0, 90000.0),
    "u_component_of_wind": (-200.0, 200.0),
    "v_component_of_wind": (-200.0, 200.0),
    "10m_u_component_of_wind": (-100.0, 100.0),
    "10m_v_component_of_wind": (-100.0, 100.0),
    "10m_wind_speed": (0.0, 100.0),
    "vertical_velocity": (-100.0, 100.0),
    "specific_humidity": (0.0, 0.05),
    "relative_humidity": (0.0, 150.0),
    "total_column_water_vapour": (0.0, 150.0),
    "total_precipitation": (0.0, 1.0),
    "land_sea_mask": (0.0, 1.0),
    # absolute salinity: fresh river plumes to the saltiest open seas (the Red Sea's ~41 g/kg)
    "salinity": (0.0, 45.0),
    "oxygen": (0.0, 500.0),
    "chlorophyll": (0.0, 100.0),
    "log10_chlorophyll": (-3.0, 2.0),
    "sea_surface_height": (-5.0, 5.0),
}
_R_DRY = 287.05  # J kg-1 K-1


def physical_bounds(variable: str, level: float | None = None) -> tuple[float, float] | None:
    """``(low, high)`` plausible values of ``variable`` (at ``level`` hPa) in SI units, or None
    for a variable without a bound. Geopotential: the hypsometric thickness from a surface
    pressure of 870-1090 hPa to ``level`` through a column at 170-330 K."""
    if variable == "geopotential":
        if level is None or not level > 0:
            return None
        # lowest: the warmest column below a 870 hPa surface, the coldest above it
        low_t = 330.0 if level > 870.0 else 170.0
        low = _R_DRY * low_t * math.log(870.0 / level)
        high = _R_DRY * 330.0 * math.log(1090.0 / level)
        return low, high
    return _BOUNDS.get(variable)


# --- declared units ------------------------------------------------------------------------


def _spelling(units: str) -> str:
    """A units string reduced for comparison: ``m**2 s**-2``, ``m^2 s^-2`` -> ``m2s-2``."""
    return re.sub(r"[\s*^.·]", "", units.strip().lower())


_SAME_UNITS: dict[str, set[str]] = {
    "K": {"k", "kelvin", "kelvins", "degk"},
    "Pa": {"pa", "pascal", "pascals"},
    "m**2 s**-2": {"m2s-2", "m2/s2", "jkg-1", "j/kg"},
    "m s**-1": {"ms-1", "m/s"},
    "Pa s**-1": {"pas-1", "pa/s"},
    "kg kg**-1": {"kgkg-1", "kg/kg", "1"},
    "%": {"%", "percent"},
    "kg m**-2": {"kgm-2", "kg/m2"},
    "m": {"m", "metre", "meter", "metres", "meters"},
    "g kg**-1": {"gkg-1", "g/kg"},
    "mmol m**-3": {"mmolm-3", "mmol/m3", "umol/l", "µmol/l", "umoll-1", "µmoll-1"},
    "mg m**-3": {"mgm-3", "mg/m3", "ug/l", "µg/l", "ugl-1", "µgl-1"},
    "1": {"1", "", "dimensionless", "fraction", "0-1"},
}

_CELSIUS = "K = degC + 273.15"
_FAHRENHEIT = "K = (degF - 32) * 5/9 + 273.15"
_HPA = "Pa = hPa * 100"
# how to convert common non-SI units, per canonical unit
_CONVERSIONS: dict[str, dict[str, str]] = {
    "K": {
        **dict.fromkeys(["degc", "celsius", "degreescelsius", "°c", "c"], _CELSIUS),
        **dict.fromkeys(["degf", "fahrenheit", "degreesfahrenheit", "°f", "f"], _FAHRENHEIT),
    },
    "Pa": {**dict.fromkeys(["hpa", "mb", "mbar", "millibar"], _HPA), "kpa": "Pa = kPa * 1000"},
    "m**2 s**-2": {
        **dict.fromkeys(["m", "gpm"], "m**2 s**-2 = m * 9.80665 (geopotential, not its height)"),
        "dam": "m**2 s**-2 = dam * 98.0665",
    },
    "kg kg**-1": dict.fromkeys(["g/kg", "gkg-1"], "kg kg**-1 = g/kg / 1000"),
}


def declared_units(table: xr.Dataset) -> dict[str, str]:
    """The units a table declares per variable: the ``value`` field's ``units`` attribute (a
    string for every variable, or a mapping ``{variable: units}``) and the table's own
    ``units`` attribute (a mapping), the latter taking precedence."""
    variables = sorted({str(v) for v in np.unique(table["variable"].values.astype(str))})
    found: dict[str, str] = {}
    for attrs in (table["value"].attrs, table.attrs):
        units = attrs.get("units")
        if isinstance(units, str):
            found.update({v: units for v in variables})
        elif isinstance(units, dict):
            found.update({str(k): str(u) for k, u in units.items() if str(k) in variables})
    return found


def check_units(table: xr.Dataset) -> None:
    """Refuses (:class:`ObservationError`) a table that declares units other than the SI
    units of a canonical variable (:data:`CANONICAL_UNITS`), naming the variable, the units and
    the conversion; variables without canonical units are not judged."""
    for variable, units in sorted(declared_units(table).items()):
        canonical = CANONICAL_UNITS.get(variable)
        if canonical is None or _spelling(units) in _SAME_UNITS.get(canonical, {canonical}):
            continue
        hint = _CONVERSIONS.get(canonical, {}).get(_spelling(units))
        raise ObservationError(
            f"{variable} values are declared in {units!r} (units attribute); observations must "
            f"be in SI units, {canonical}" + (f": convert them, {hint}" if hint else "")
        )


# --- the usual unit mistakes ---------------------------------------------------------------

_G = 9.80665
_TEMPERATURE = [
    ("degrees Celsius", lambda v: v + 273.15),
    ("degrees Fahrenheit", lambda v: (v - 32.0) * 5.0 / 9.0 + 273.15),
]
_PRESSURE = [("hPa instead of Pa", lambda v: v * 100.0), ("kPa instead of Pa", lambda v: v * 1e3)]
_GEOPOTENTIAL = [
    ("geopotential height (m) instead of geopotential (m2/s2)", lambda v: v * _G),
    ("geopotential height (dam) instead of geopotential (m2/s2)", lambda v: v * 10 * _G),
]
_MISTAKES: dict[str, list[tuple[str, Callable[[np.ndarray], np.ndarray]]]] = {
    **{
        v: _TEMPERATURE
        for v in (
            "2m_temperature",
            "2m_dewpoint_temperature",
            "skin_temperature",
            "sea_surface_temperature",
            "temperature",
        )
    },
    "mean_sea_level_pressure": _PRESSURE,
    "surface_pressure": _PRESSURE,
    "geopotential": _GEOPOTENTIAL,
    "geopotential_at_surface": _GEOPOTENTIAL,
    "specific_humidity": [("g/kg instead of kg/kg", lambda v: v / 1e3)],
}


def unit_mistakes(variable: str) -> list[tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """The usual unit mistakes for ``variable``: ``(description, to_si)`` pairs, where
    ``to_si`` maps values made with that mistake to SI units (e.g. ``degrees Celsius``,
    ``v + 273.15``); empty for a variable without known mistakes."""
    return list(_MISTAKES.get(variable, []))
