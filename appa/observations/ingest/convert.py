"""Conversions from the units and conventions of observation formats to Appa's canonical ones.

Every function is vectorised over NumPy arrays and exact (no fitted constants): units through
Pint, wind components by the meteorological convention, geopotential from geopotential height
with the WMO standard gravity, times rounded to a regular grid of states with the offset kept,
longitudes wrapped, and the lapse-rate correction of 2 m temperature between a station's height
and the model's orography.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import pint

from appa.observations.schema import ObservationError
from appa.observations.screening import CANONICAL_UNITS

__all__ = [
    "G0",
    "ICAO_P0",
    "ICAO_R",
    "ICAO_T0",
    "STANDARD_LAPSE_RATE",
    "geopotential_from_height",
    "lapse_rate_correction",
    "pressure_from_pressure_altitude",
    "round_times",
    "to_si",
    "wind_components",
    "wrap_longitude",
]

G0 = 9.80665  # m s-2, the WMO standard gravity that defines geopotential metres
STANDARD_LAPSE_RATE = 0.0065  # K m-1, the ICAO standard atmosphere's below 11 km

# The ICAO standard atmosphere (ICAO Doc 7488): sea-level pressure and temperature, the gas
# constant of dry air it defines, and its layers up to 47 km as (base geopotential height m,
# lapse rate K m-1, where the temperature falls with height for a positive rate)
ICAO_P0 = 101325.0  # Pa
ICAO_T0 = 288.15  # K
ICAO_R = 287.05287  # J kg-1 K-1
_ICAO_LAYERS = ((0.0, STANDARD_LAPSE_RATE), (11000.0, 0.0), (20000.0, -0.001), (32000.0, -0.0028))
_ICAO_TOP = 47000.0

# spellings of observation formats that Pint does not read as meant
_ALIASES = {
    "c": "degC",
    "degc": "degC",
    "deg c": "degC",
    "°c": "degC",
    "celsius": "degC",
    "degrees celsius": "degC",
    "f": "degF",
    "degf": "degF",
    "°f": "degF",
    "k": "K",
    "mb": "hPa",
    "mbar": "hPa",
    "gpm": "m",  # geopotential metres: converted to geopotential by geopotential_from_height
    "kt": "knot",
    "kts": "knot",
    "knots": "knot",
    "m**2 s**-2": "m**2/s**2",
    "m s**-1": "m/s",
    "kg kg**-1": "kg/kg",
    "pa s**-1": "Pa/s",
    "kg m**-2": "kg/m**2",
}


@functools.cache
def _registry() -> pint.UnitRegistry:
    return pint.UnitRegistry(autoconvert_offset_to_baseunit=True)


def _unit(units: str, what: str) -> pint.Unit:
    spelled = _ALIASES.get(units.strip().lower(), units.strip())
    try:
        return _registry().Unit(spelled)
    except (pint.errors.UndefinedUnitError, ValueError, TypeError, AttributeError) as error:
        raise ObservationError(f"{what}: units {units!r} are not known ({error})") from None


def to_si(values: np.ndarray, units: str, variable: str) -> np.ndarray:
    """``values`` given in ``units`` converted to the canonical SI units of ``variable``
    (:data:`CANONICAL_UNITS`), e.g. degrees Celsius to K, hPa to Pa, knots to m/s.
    Geopotential given as a height (``m``, ``gpm``, ``dam``) goes through
    :func:`geopotential_from_height`. Raises :class:`ObservationError` naming the variable and
    the units when they cannot be converted (a temperature in hPa)."""
    canonical = CANONICAL_UNITS.get(variable)
    if canonical is None:
        raise ObservationError(f"{variable}: no canonical units (known: {sorted(CANONICAL_UNITS)})")
    values = np.asarray(values, dtype=np.float64)
    source = _unit(units, variable)
    target = _unit(canonical, variable)
    if variable in ("geopotential", "geopotential_at_surface") and source.dimensionality == (
        _registry().Unit("m").dimensionality
    ):
        metres = _registry().Quantity(values, source).to("m").magnitude
        return geopotential_from_height(metres)
    try:
        return _registry().Quantity(values, source).to(target).magnitude
    except pint.errors.DimensionalityError:
        raise ObservationError(
            f"{variable}: values in {units!r} cannot be converted to {canonical}"
        ) from None


def geopotential_from_height(height: np.ndarray) -> np.ndarray:
    """Geopotential (m2 s-2) from geopotential height (geopotential metres): ``g0 * h``."""
    return G0 * np.asarray(height, dtype=np.float64)


def wind_components(speed: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eastward and northward wind ``(u, v)`` (m/s) from speed (m/s) and the direction the wind
    blows from (degrees clockwise from north): a wind from the north (0 deg) has ``v < 0``.
    Calm (speed 0) gives zero components whatever the direction; a direction outside
    [0, 360] gives NaN."""
    speed = np.asarray(speed, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64)
    radians = np.deg2rad(np.where((direction >= 0) & (direction <= 360), direction, np.nan))
    u = np.where(speed == 0, 0.0, -speed * np.sin(radians))
    v = np.where(speed == 0, 0.0, -speed * np.cos(radians))
    return u, v


def wrap_longitude(longitude: np.ndarray) -> np.ndarray:
    """Longitudes (degrees) in [0, 360)."""
    wrapped = np.mod(np.asarray(longitude, dtype=np.float64), 360.0)
    return np.where(wrapped >= 360.0, 0.0, wrapped)  # mod of -1e-17 rounds to 360


def round_times(
    times: np.ndarray | pd.DatetimeIndex, step: str | pd.Timedelta, window: str | pd.Timedelta
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times rounded to the nearest multiple of ``step`` since 1970-01-01 (a time halfway goes
    to the later one, as :func:`appa.observations.screening.assign_times` does).

    Returns:
        ``(rounded, offset_s, inside)``: the rounded times (datetime64[ns]), the observation's
        offset from them in seconds (observed minus rounded) and whether ``|offset|`` is within
        ``window``.
    """
    step = pd.Timedelta(step)
    window = pd.Timedelta(window)
    if step <= pd.Timedelta(0):
        raise ObservationError(f"time step {step} must be positive")
    if window < pd.Timedelta(0):
        raise ObservationError(f"time window {window} must not be negative")
    ns = pd.DatetimeIndex(times).values.astype("datetime64[ns]").astype(np.int64)
    k = step.value
    rounded = np.floor_divide(ns + k // 2, k) * k
    offset = ns - rounded
    inside = np.abs(offset) <= window.value
    return rounded.astype("datetime64[ns]"), offset / 1e9, inside


def lapse_rate_correction(
    temperature: np.ndarray,
    station_height: np.ndarray,
    model_height: np.ndarray,
    lapse_rate: float = STANDARD_LAPSE_RATE,
) -> np.ndarray:
    """2 m temperature (K) observed at ``station_height`` (m) brought to ``model_height`` (m,
    the model's orography at the station): ``T + lapse_rate * (station - model)``. A station
    above the model's ground is colder than the model's 2 m level, so its value is raised.
    Stations of unknown height (NaN) keep their value."""
    temperature = np.asarray(temperature, dtype=np.float64)
    dz = np.asarray(station_height, dtype=np.float64) - np.asarray(model_height, dtype=np.float64)
    return np.where(np.isfinite(dz), temperature + lapse_rate * dz, temperature)


def pressure_from_pressure_altitude(altitude: np.ndarray) -> np.ndarray:
    """Pressure (Pa) at a pressure altitude (geopotential metres, e.g. an aircraft's flight
    level) in the ICAO standard atmosphere: ``p_b ((T_b - L (H - H_b)) / T_b)^(g0 / (R L))``
    in a layer of lapse rate ``L`` from base ``H_b``, ``p_b exp(-g0 (H - H_b) / (R T_b))`` in an
    isothermal one; 101325 Pa at 0 m, about 300.9 hPa at 30000 ft. Altitudes below 0 m extend
    the lowest layer; above 47 km, or not finite, give NaN."""
    altitude = np.asarray(altitude, dtype=np.float64)
    pressure = np.full(altitude.shape, np.nan)
    base_p, base_t = ICAO_P0, ICAO_T0
    for k, (base_h, rate) in enumerate(_ICAO_LAYERS):
        top_h = _ICAO_LAYERS[k + 1][0] if k + 1 < len(_ICAO_LAYERS) else _ICAO_TOP
        inside = (altitude <= top_h) & (altitude >= base_h if k else np.isfinite(altitude))
        dh = np.where(inside, altitude, base_h) - base_h
        if rate == 0.0:
            layer_p = base_p * np.exp(-G0 * dh / (ICAO_R * base_t))
            top_p = base_p * math.exp(-G0 * (top_h - base_h) / (ICAO_R * base_t))
        else:
            exponent = G0 / (ICAO_R * rate)
            layer_p = base_p * ((base_t - rate * dh) / base_t) ** exponent
            top_p = base_p * ((base_t - rate * (top_h - base_h)) / base_t) ** exponent
        pressure = np.where(inside & np.isnan(pressure), layer_p, pressure)
        base_p, base_t = top_p, base_t - rate * (top_h - base_h)
    return pressure
