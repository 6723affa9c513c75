"""The toy sea: a Black-Sea-like enclosed basin with temperature, salinity, oxygen and
chlorophyll in 3-D, for regional-ocean inverse problems.

A kinematic model, not an ocean model: the flow is prescribed, the tracers respond to it. It
runs on a laptop CPU and writes the canonical gridded layout (dims ``(time, level, latitude,
longitude)``, latitude and longitude ascending, daily states, CF attributes) with ``level`` the
depth of the cell centres in metres, positive down.

Basin. A box of 40.5-47 N, 27.5-42 E; the sea is a main ellipse with a north-western lobe and
Crimea cut out of it. Depth grows away from the coast to a shelf break of about 100 m (the
north-western shelf, some 200 km wide, stays shallower than that) and drops over a steep
slope to an abyssal plain. A level is sea where the depth of its top is above the sea floor;
values are NaN below the sea floor and on land.

Flow (surface-intensified, decaying as ``exp(-z / velocity_decay_m)``): a streamfunction made
of a cyclonic rim current that follows the isobaths over the slope (stronger in winter) and
mesoscale eddies, an Ornstein-Uhlenbeck process in time of a Gaussian-filtered white noise in
space, tapered to zero at the coast. It advects temperature, salinity, oxygen and surface
chlorophyll (semi-Lagrangian, bilinear, two steps a day) and heaves the pycnocline: isopycnals
dome under cyclonic flow (low streamfunction) and sink under anticyclonic flow. The rim's mean
doming is part of the state (the profiles it relaxes to), so the pycnocline and the oxycline
are shallow in the middle of the basin and deep near its rim; the departures of the flow from
its mean (eddies, the rim's seasons) displace the written columns vertically, a reversible
heave that does not mix the water column.

Mixed layer. Its depth follows a monthly climatology (deep in winter, shallow in summer),
modulated by weather (cold spells deepen it) and eddies, and limited by the sea floor and by
the halocline (it never reaches the halocline's middle); within
it temperature, salinity and oxygen are mixed, and convection extends it while it is denser
than the water below. The surface exchanges heat with an atmosphere (seasonal, cooler to the
north, with weather), receives fresh water from the Danube, Dniester and Dnieper and relaxes
to a mean surface salinity; below the mixed layer everything relaxes slowly to a permanent
profile: fresh surface water (~18 g/kg) over salty deep water (~22 g/kg) through a halocline
at ~120 m, a cold intermediate layer at ~70 m and ~9 C deep water.

Oxygen. The mixed layer exchanges oxygen with the air (piston velocity) towards saturation
(:func:`oxygen_solubility`, the Garcia and Gordon 1992 fit) and gains a little from
production where chlorophyll is high. Below it, respiration of sinking organic matter (set by
the chlorophyll of the past month) consumes oxygen, and ventilation along isopycnals relaxes
it towards a profile that falls to zero across the oxycline (a density range): the deep basin
is anoxic. At the sea floor, the sediment demands oxygen at a rate set by the organic matter
it received (the surface chlorophyll of the past months, through a 30-day export memory and a
60-day sediment memory), the bottom temperature (Q10) and a random factor drawn each year
(unobserved, smooth in space): on the shelf, where summer stratification isolates the bottom
water, this depletes it over the summer, and in some years the bottom turns hypoxic in late
summer and autumn; mixing resets it when the deepening mixed layer reaches the floor.

Chlorophyll. Its logarithm at the surface relaxes towards a climatology (winter-spring and
autumn blooms offshore, river-fed enrichment on the north-western shelf scaled by each year's
discharge) with stochastic anomalies, and is advected by the surface current; it is uniform
in the mixed layer and decays below.

Sea-surface height: steric height relative to ``ssh_reference_depth_m`` (or the sea floor,
where shallower) from the density anomaly to a fixed reference profile, plus the geostrophic
height of the flow at that depth, ``f psi(z_ref) / g``, minus their mean over the sea (the
basin's volume is fixed).

Density: the simplified equation of state of Roquet et al. (2015), as NEMO's S-EOS, at the
surface (potential density; no thermobaric term). Temperature is stored in K (SI, like the
atmosphere), salinity as absolute salinity in g/kg.

Determinism: the time stepping uses only operations whose results IEEE 754 fixes
(``appa.data.portable`` for elementary functions and normal variates, exact matrix products
for the spatial filters, reductions as fixed-order loops or ``math.fsum``), so the same seed
gives the same bytes with other numpy SIMD kernels, BLAS kernels and thread counts (tested on
one machine). The basin's distances to the coast come from ``scipy.ndimage`` (compiled code
without run-time dispatch); no hash is committed, as nothing guarantees another build of it
the same last bits.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from pydantic import Field, field_validator, model_validator

from appa.config import DateText, StrictModel
from appa.data import portable
from appa.data.generated import states_dataset, write_states
from appa.files import PRODUCT_ATTR, claim_output

__all__ = [
    "HYPOXIA_THRESHOLD",
    "SHELF_DEPTH_M",
    "STATIC_VARIABLES",
    "SURFACE_VARIABLES",
    "THREE_D_VARIABLES",
    "ToySea",
    "ToySeaConfig",
    "bottom_values",
    "generate_toy_sea",
    "mixed_layer_depth",
    "oxygen_solubility",
    "potential_density",
    "shelf_cells",
    "steric_height",
    "toy_sea_dataset",
]

EARTH_RADIUS = 6.371e6  # m
OMEGA = 7.292e-5  # rad/s
GRAVITY = 9.80665  # m/s^2
RHO0 = 1026.0  # kg/m^3, reference density of the equation of state
CP = 3991.87  # J/(kg K), heat capacity of sea water
KELVIN = 273.15
DAY = 86400.0
YEAR_DAYS = 365.2425

LATITUDE_RANGE = (40.5, 47.0)  # degrees north, cell edges
LONGITUDE_RANGE = (27.5, 42.0)  # degrees east, cell edges
HYPOXIA_THRESHOLD = 63.0  # mmol m^-3 of dissolved oxygen
SHELF_DEPTH_M = 100.0  # where the sea floor is shallower, a cell is on the shelf

# (name, latitude, longitude, mean discharge in m^3/s) of the rivers of the north-west.
RIVERS = (
    ("Danube", 45.2, 29.7, 6500.0),
    ("Dniester", 46.3, 30.4, 300.0),
    ("Dnieper", 46.5, 31.9, 1600.0),
)

THREE_D_VARIABLES = ("temperature", "salinity", "oxygen", "chlorophyll")
SURFACE_VARIABLES = ("sea_surface_height",)
STATIC_VARIABLES = ("sea_floor_depth", "sea_mask")

# CF attributes of each variable: (units, standard_name, long_name).
CF_ATTRS = {
    "temperature": ("K", "sea_water_potential_temperature", "Sea water potential temperature"),
    "salinity": ("g kg**-1", "sea_water_salinity", "Sea water absolute salinity"),
    "oxygen": (
        "mmol m**-3",
        "mole_concentration_of_dissolved_molecular_oxygen_in_sea_water",
        "Dissolved oxygen",
    ),
    "chlorophyll": (
        "mg m**-3",
        "mass_concentration_of_chlorophyll_in_sea_water",
        "Chlorophyll",
    ),
    "sea_surface_height": ("m", "sea_surface_height_above_geoid", "Sea surface height"),
    "sea_floor_depth": ("m", "sea_floor_depth_below_geoid", "Sea floor depth"),
    "sea_mask": ("1", "sea_binary_mask", "Sea mask of each level (1 sea, 0 land or sea floor)"),
}

# Garcia and Gordon (1992), Table 1, fit to the data of Benson and Krause (1984), in umol/kg:
# ln C = A0 + A1 Ts + ... + A5 Ts^5 + S (B0 + B1 Ts + B2 Ts^2 + B3 Ts^3) + C0 S^2,
# Ts = ln((298.15 - t) / (273.15 + t)), t in degrees C, S practical salinity.
_GG_A = (5.80871, 3.20291, 4.17887, 5.10006, -9.86643e-2, 3.80369)
_GG_B = (-7.01577e-3, -7.70028e-3, -1.13864e-2, -9.51519e-3)
_GG_C0 = -2.75915e-7
# Practical salinity from absolute salinity (the reference composition's ratio).
_SP_PER_SA = 35.0 / 35.16504

# Roquet et al. (2015) simplified equation of state (NEMO's S-EOS), surface-referenced.
_EOS_A0, _EOS_B0 = 1.6550e-1, 7.6554e-1
_EOS_LAMBDA1, _EOS_LAMBDA2, _EOS_NU = 5.9520e-2, 7.4914e-4, 2.4341e-3


class ToySeaConfig(StrictModel):
    """Settings of the toy sea: grid, period, seed and the parameters of its physics."""

    # Grid and period.
    nlat: int = Field(32, ge=16, le=256, description="latitudes over 40.5-47 N")
    nlon: int = Field(64, ge=32, le=512, description="longitudes over 27.5-42 E")
    n_levels: int = Field(22, ge=8, le=60, description="depth levels")
    max_depth_m: float = Field(2000.0, ge=500.0, le=3000.0, description="bottom of the grid")
    stretching: float = Field(
        4.5,
        gt=0,
        le=8,
        description="level interfaces at max_depth (exp(s k/n) - 1) / (exp(s) - 1): larger is "
        "finer near the surface",
    )
    start: DateText = Field("2000-01-01", description="date of the first written state")
    days: int = Field(365, ge=1, description="daily states written")
    spinup_days: int = Field(365, ge=0, description="days run from climatology and discarded")
    steps_per_day: int = Field(2, ge=1, le=24)
    seed: int = Field(0, description="eddies, weather, chlorophyll and the yearly factors")
    # Basin.
    abyssal_depth_m: float = Field(2000.0, gt=0, description="depth of the abyssal plain")
    shelf_break_m: float = Field(110.0, gt=0, description="depth the shelf tends to offshore")
    shelf_scale_km: float = Field(100.0, gt=0, description="e-folding of the shelf's slope")
    # Flow.
    rim_streamfunction_m2_s: float = Field(
        2.0e4, ge=0, description="streamfunction drop from coast to basin centre (rim current)"
    )
    rim_seasonal_fraction: float = Field(
        0.3, ge=0, lt=1, description="rim current stronger by this fraction in winter"
    )
    eddy_streamfunction_m2_s: float = Field(6.0e3, ge=0, description="eddy standard deviation")
    eddy_length_km: float = Field(35.0, gt=0, description="Gaussian filter of the eddy field")
    eddy_days: float = Field(15.0, gt=0, description="eddy correlation time")
    coastal_taper_km: float = Field(25.0, gt=0, description="eddies vanish at the coast")
    velocity_decay_m: float = Field(250.0, gt=0, description="e-folding depth of the flow")
    heave_m: float = Field(
        25.0, ge=0, description="isopycnal depression per 1e4 m^2/s of streamfunction"
    )
    # Mixed layer and heat.
    mixed_layer_monthly_m: list[float] = Field(
        default_factory=lambda: [55, 65, 58, 40, 20, 12, 11, 12, 17, 30, 45, 52],
        description="mixed-layer depth climatology, January to December (mid-month)",
    )
    mixed_layer_weather: float = Field(
        0.25, ge=0, description="log-std of the mixed-layer depth from weather"
    )
    mixed_layer_eddy: float = Field(
        0.15, ge=0, description="log change of the mixed-layer depth per eddy std"
    )
    air_temperature_c: float = Field(15.0, description="annual mean at 43.75 N")
    air_temperature_amplitude_k: float = Field(10.5, ge=0)
    air_temperature_peak_day: float = Field(200.0, description="day of year of the warmest air")
    air_temperature_gradient_k_per_deg: float = Field(0.6, ge=0, description="cooler northward")
    weather_std_k: float = Field(1.5, ge=0)
    weather_days: float = Field(5.0, gt=0)
    weather_length_km: float = Field(150.0, gt=0)
    heat_exchange_w_m2_k: float = Field(35.0, gt=0, description="air-sea heat flux per K")
    # Permanent stratification (the relaxation profile below the mixed layer).
    surface_salinity: float = Field(18.3, gt=0, description="g/kg")
    deep_salinity: float = Field(22.3, gt=0, description="g/kg")
    halocline_depth_m: float = Field(120.0, gt=0)
    halocline_width_m: float = Field(60.0, gt=0)
    deep_temperature_c: float = Field(8.9)
    intermediate_temperature_c: float = Field(7.2, description="cold intermediate layer")
    intermediate_depth_m: float = Field(70.0, gt=0)
    deep_relaxation_days: float = Field(365.0, gt=0)
    surface_salinity_days: float = Field(180.0, gt=0)
    river_discharge_factor: float = Field(1.0, ge=0, description="times the rivers' means")
    river_year_std: float = Field(0.3, ge=0, description="log-std of each year's discharge")
    plume_km: float = Field(40.0, gt=0, description="radius the river water enters over")
    vertical_diffusivity_m2_s: float = Field(1.0e-5, ge=0, le=1.0e-3)
    # Oxygen.
    piston_velocity_m_day: float = Field(5.0, gt=0, description="air-sea gas transfer")
    production_per_chlorophyll: float = Field(
        0.5, ge=0, description="mixed-layer O2 production, mmol m^-3 day^-1 per mg m^-3"
    )
    intermediate_oxygen: float = Field(280.0, gt=0, description="above the oxycline, mmol/m^3")
    oxycline_sigma: tuple[float, float] = Field(
        (14.0, 15.0),
        description="potential density anomalies (kg/m^3, of this equation of state) over "
        "which ventilated oxygen falls to zero",
    )
    ventilation_days: float = Field(120.0, gt=0, description="below the mixed layer, offshore")
    respiration_mmol_m3_day: float = Field(
        0.4, ge=0, description="just below the mixed layer at reference chlorophyll"
    )
    respiration_depth_m: float = Field(30.0, gt=0, description="e-folding below the mixed layer")
    sediment_demand_mmol_m2_day: float = Field(
        32.0, ge=0, description="sediment oxygen demand at reference chlorophyll and 10 C"
    )
    bottom_layer_m: float = Field(
        10.0, gt=0, description="least thickness the sediment demand is spread over"
    )
    sediment_days: float = Field(
        60.0, gt=0, description="the sediment's memory of the exported chlorophyll"
    )
    sediment_q10: float = Field(2.0, ge=1)
    demand_std: float = Field(0.3, ge=0, description="log-std of the yearly demand factor")
    demand_length_km: float = Field(80.0, gt=0)
    oxygen_half_saturation: float = Field(8.0, gt=0, description="mmol/m^3, respiration")
    # Chlorophyll.
    chlorophyll_offshore: float = Field(0.35, gt=0, description="mg/m^3, summer offshore")
    chlorophyll_shelf: float = Field(3.0, ge=0, description="river-fed enrichment, mg/m^3")
    chlorophyll_reference: float = Field(3.0, gt=0, description="of respiration and demand")
    chlorophyll_std: float = Field(0.35, ge=0, description="log-std of the anomalies")
    chlorophyll_days: float = Field(10.0, gt=0, description="anomaly correlation time")
    chlorophyll_length_km: float = Field(40.0, gt=0)
    chlorophyll_memory_days: float = Field(30.0, gt=0, description="organic matter export")
    chlorophyll_decay_m: float = Field(12.0, gt=0, description="below the mixed layer")
    ssh_reference_depth_m: float = Field(500.0, gt=0)
    # Storage.
    time_chunk: int = Field(32, ge=1)
    zarr_format: Literal[2, 3] = 2

    @field_validator("mixed_layer_monthly_m")
    @classmethod
    def _monthly(cls, value: list[float]) -> list[float]:
        if len(value) != 12 or any(not 1.0 <= v <= 500.0 for v in value):
            raise ValueError(
                f"mixed_layer_monthly_m needs 12 depths (January to December) in [1, 500] m, "
                f"got {value}"
            )
        return value

    @field_validator("oxycline_sigma")
    @classmethod
    def _oxycline(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise ValueError(f"oxycline_sigma must be increasing (top, bottom), got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ToySeaConfig:
        interfaces = level_interfaces(self.n_levels, self.max_depth_m, self.stretching)
        if interfaces[1] > 10.0:
            raise ValueError(
                f"the first level is {interfaces[1]:.1f} m thick: the mixed layer needs levels "
                "finer than 10 m at the surface (more n_levels or a larger stretching)"
            )
        if self.deep_salinity <= self.surface_salinity:
            raise ValueError(
                f"deep_salinity ({self.deep_salinity}) must exceed surface_salinity "
                f"({self.surface_salinity}): the halocline holds the stratification"
            )
        if max(self.mixed_layer_monthly_m) >= self.halocline_depth_m + self.halocline_width_m:
            raise ValueError(
                f"mixed_layer_monthly_m reaches {max(self.mixed_layer_monthly_m)} m, through the "
                f"halocline ({self.halocline_depth_m} +- {self.halocline_width_m} m)"
            )
        if self.shelf_break_m >= self.abyssal_depth_m:
            raise ValueError("shelf_break_m must be shallower than abyssal_depth_m")
        return self


def level_interfaces(n_levels: int, max_depth_m: float, stretching: float) -> NDArray:
    """Depths (m, positive down) of the ``n_levels + 1`` level interfaces, 0 to
    ``max_depth_m``, stretched: ``max_depth (exp(s k / n) - 1) / (exp(s) - 1)``."""
    k = np.arange(n_levels + 1, dtype=np.float64)
    grow = portable.exp(stretching * k / n_levels) - 1.0
    out = max_depth_m * grow / grow[-1]
    out[0], out[-1] = 0.0, max_depth_m
    return out


# ------------------------------------------------------------------------------ sea water
def potential_density(temperature_c: NDArray, salinity: NDArray) -> NDArray:
    """Potential density (kg m^-3) at the surface from temperature (C) and absolute salinity
    (g/kg): the simplified equation of state of Roquet et al. (2015), NEMO's S-EOS, which
    keeps the nonlinearity in temperature (cabbeling) and the T-S term."""
    dt = np.asarray(temperature_c) - 10.0
    ds = np.asarray(salinity) - 35.0
    return (
        RHO0
        - _EOS_A0 * (1.0 + 0.5 * _EOS_LAMBDA1 * dt) * dt
        + _EOS_B0 * (1.0 - 0.5 * _EOS_LAMBDA2 * ds) * ds
        - _EOS_NU * dt * ds
    )


def oxygen_solubility(temperature_c: NDArray, salinity: NDArray) -> NDArray:
    """Oxygen concentration (mmol m^-3) in equilibrium with water-saturated air at 1 atm,
    from temperature (C) and absolute salinity (g/kg).

    Garcia and Gordon (1992), their fit to the data of Benson and Krause (1984), gives umol/kg
    of practical salinity; it is converted to a concentration with the density of
    :func:`potential_density`.
    """
    t = np.asarray(temperature_c, dtype=np.float64)
    sa = np.asarray(salinity, dtype=np.float64)
    sp = sa * _SP_PER_SA
    ts = portable.log((298.15 - t) / (KELVIN + t))
    a = _GG_A[5]
    for c in reversed(_GG_A[:5]):
        a = a * ts + c
    b = _GG_B[3]
    for c in reversed(_GG_B[:3]):
        b = b * ts + c
    umol_kg = portable.exp(a + sp * b + _GG_C0 * (sp * sp))
    return umol_kg * potential_density(t, sa) * 1e-3


# ------------------------------------------------------------------------------ helpers
def _smoothstep(x: NDArray) -> NDArray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _tanh(x: NDArray) -> NDArray:
    x = np.asarray(x, dtype=np.float64)
    e = portable.exp(-2.0 * np.abs(x))
    return np.sign(x) * (1.0 - e) / (1.0 + e)


def _periodic_monthly(values: list[float], day_of_year: float) -> float:
    """Linear interpolation through mid-month values, periodic over the year."""
    month = YEAR_DAYS / 12.0
    position = day_of_year / month - 0.5
    k = math.floor(position)
    w = position - k
    return (1.0 - w) * values[k % 12] + w * values[(k + 1) % 12]


def _day_of_year(time: pd.Timestamp) -> float:
    return time.day_of_year - 1 + (time.hour + time.minute / 60.0) / 24.0


def _gaussian_rows(coordinate_km: NDArray, length_km: float) -> NDArray:
    """Gaussian filter matrix whose rows have unit sum of squares (unit output variance for
    white-noise input)."""
    d = (coordinate_km[:, None] - coordinate_km[None, :]) / length_km
    g = portable.exp(-0.5 * (d * d))
    norms = np.array([math.sqrt(math.fsum(row * row)) for row in g])
    return g / norms[:, None]


class _Filter:
    """Separable Gaussian filter of a ``(lat, lon)`` field by exact matrix products."""

    def __init__(self, y_km: NDArray, x_km: NDArray, length_km: float) -> None:
        self.lat = portable.ExactMatrix(_gaussian_rows(y_km, length_km).T)
        self.lon = portable.ExactMatrix(_gaussian_rows(x_km, length_km).T)

    def __call__(self, noise: NDArray) -> NDArray:
        along_lon = noise @ self.lon
        return (along_lon.T @ self.lat).T


def _column_sum(values: NDArray) -> NDArray:
    """Sum over the first axis in a fixed order (elementwise adds)."""
    out = values[0].copy()
    for k in range(1, values.shape[0]):
        out += values[k]
    return out


def _ordered_sum(values: NDArray) -> float:
    return math.fsum(np.asarray(values, dtype=np.float64).ravel().tolist())


# ------------------------------------------------------------------------------ basin
def _basin(latitude: NDArray, longitude: NDArray, cfg: ToySeaConfig) -> tuple[NDArray, NDArray]:
    """Sea-floor depth (m, 0 on land) and distance to the coast (km) on the grid."""
    from scipy import ndimage

    lat, lon = np.meshgrid(latitude, longitude, indexing="ij")

    def ellipse(lon0, lat0, a, b):
        x, y = (lon - lon0) / a, (lat - lat0) / b
        return x * x + y * y

    sea = (ellipse(34.8, 43.2, 6.6, 2.0) < 1.0) | (ellipse(30.6, 45.0, 2.6, 1.6) < 1.0)
    sea &= ellipse(34.2, 45.45, 1.5, 0.85) >= 1.0  # Crimea
    labels, n = ndimage.label(sea)
    if n == 0:
        raise ValueError("the grid resolves no sea")
    sizes = ndimage.sum(sea, labels, index=np.arange(1, n + 1))
    sea = labels == 1 + int(np.argmax(sizes))
    dy_km = (LATITUDE_RANGE[1] - LATITUDE_RANGE[0]) / len(latitude) * 111.195
    mid = np.radians(np.array([0.5 * sum(LATITUDE_RANGE)]))
    dx_km = float(
        (LONGITUDE_RANGE[1] - LONGITUDE_RANGE[0]) / len(longitude) * 111.195 * portable.cos(mid)[0]
    )
    # half a cell: the coast lies between a sea cell and its land neighbour
    coast_km = ndimage.distance_transform_edt(sea, sampling=(dy_km, dx_km)) - 0.5 * min(
        dy_km, dx_km
    )
    coast_km = np.where(sea, coast_km, 0.0)
    shelf = 5.0 + (cfg.shelf_break_m - 5.0) * (1.0 - portable.exp(-coast_km / cfg.shelf_scale_km))
    r_deep = np.sqrt(ellipse(35.0, 43.0, 5.3, 1.5))
    deep = (cfg.abyssal_depth_m - cfg.shelf_break_m) * _smoothstep((1.1 - r_deep) / 0.3)
    floor = np.where(sea, np.minimum(shelf + deep, cfg.max_depth_m), 0.0)
    return floor, coast_km


# ------------------------------------------------------------------------------ the model
class ToySea:
    """The toy sea: state, time stepping and diagnostics on the output grid.

    Arguments:
        config: A :class:`ToySeaConfig`.
    """

    def __init__(self, config: ToySeaConfig) -> None:
        from scipy import ndimage

        self.config = cfg = config
        ny, nx, L = cfg.nlat, cfg.nlon, cfg.n_levels
        self.shape = (L, ny, nx)
        dlat = (LATITUDE_RANGE[1] - LATITUDE_RANGE[0]) / ny
        dlon = (LONGITUDE_RANGE[1] - LONGITUDE_RANGE[0]) / nx
        self.latitude = LATITUDE_RANGE[0] + dlat * (np.arange(ny) + 0.5)
        self.longitude = LONGITUDE_RANGE[0] + dlon * (np.arange(nx) + 0.5)
        self.dt = 1.0 / cfg.steps_per_day  # days

        # Vertical grid.
        self.interfaces = level_interfaces(L, cfg.max_depth_m, cfg.stretching)
        # centres to the centimetre: short level names (temperature@8.23), the same everywhere
        self.depth = np.round(0.5 * (self.interfaces[:-1] + self.interfaces[1:]), 2)
        top, bottom = self.interfaces[:-1, None, None], self.interfaces[1:, None, None]

        # Basin: sea floor, masks, wet thicknesses (a partial bottom cell keeps at least a
        # quarter of its level, so that the bottom fluxes stay bounded).
        self.floor, coast_km = _basin(self.latitude, self.longitude, cfg)
        self.sea = self.floor > 0
        self.mask = top < self.floor[None]
        self.bottom_level = np.where(self.sea, self.mask.sum(axis=0) - 1, 0)
        wet = np.minimum(bottom, self.floor[None]) - top
        self.dzw = np.where(self.mask, np.maximum(wet, 0.25 * (bottom - top)), 0.0)
        self.is_bottom = (np.arange(L)[:, None, None] == self.bottom_level[None]) & self.mask
        self.top = np.broadcast_to(top, self.shape)
        self.span = np.where(self.mask, np.maximum(wet, 1e-6), 1.0)
        # Index of the nearest sea cell of the same level, for advection near the coast.
        fill = np.arange(L * ny * nx).reshape(self.shape)
        for k in range(L):
            if self.mask[k].any() and not self.mask[k].all():
                _, (ii, jj) = ndimage.distance_transform_edt(~self.mask[k], return_indices=True)
                fill[k] = k * ny * nx + ii * nx + jj
        self.fill = fill.ravel()

        # Horizontal metrics (km and m).
        self.y_km = (self.latitude - self.latitude[0]) * 111.195
        cos_lat = portable.cos(np.radians(self.latitude))
        mid = np.radians(np.array([0.5 * sum(LATITUDE_RANGE)]))
        self.x_km = (self.longitude - self.longitude[0]) * 111.195 * float(portable.cos(mid)[0])
        self.dy_m = dlat * math.pi / 180.0 * EARTH_RADIUS
        self.dx_m = (dlon * math.pi / 180.0 * EARTH_RADIUS) * cos_lat[:, None]  # (ny, 1)
        self.f = 2 * OMEGA * portable.sin(np.radians(self.latitude))[:, None]

        # Flow: rim streamfunction (follows the isobaths, low in the middle: cyclonic), eddy
        # taper, vertical structures of velocity and heave.
        deep_log = float(portable.log(np.array([cfg.abyssal_depth_m / 20.0]))[0])
        shape_rim = (
            np.clip(portable.log(np.maximum(self.floor, 1e-3) / 20.0) / deep_log, 0.0, 1.0)
            * self.sea
        )
        self.psi_rim = -cfg.rim_streamfunction_m2_s * shape_rim
        offshore = _smoothstep((self.floor - 30.0) / 470.0)
        self.eddy_taper = (
            (1.0 - portable.exp(-coast_km / cfg.coastal_taper_km)) * (0.3 + 0.7 * offshore)
        ) * self.sea
        # Heave relative to the rim's mean over the deep basin: columns dome in the middle.
        deep = self.floor > 1000.0
        self.psi_center = _ordered_sum(self.psi_rim[deep]) / max(int(deep.sum()), 1)
        self.velocity_profile = portable.exp(-self.depth / cfg.velocity_decay_m)
        self.advected_levels = max(1, int((self.velocity_profile >= 0.02).sum()))
        z = self.depth
        # heave acts below the seasonal mixed layer, strongest across the pycnocline
        self.heave_profile = _smoothstep((z - 30.0) / 90.0) * portable.exp(-z / 1000.0)
        self.heave_per_psi = cfg.heave_m / 1.0e4
        self.log_q10 = float(portable.log(np.array([cfg.sediment_q10]))[0])
        self.psi_ref_profile = float(
            portable.exp(np.array([-cfg.ssh_reference_depth_m / cfg.velocity_decay_m]))[0]
        )

        # Filters of the random fields.
        self.eddy_filter = _Filter(self.y_km, self.x_km, cfg.eddy_length_km)
        self.weather_filter = _Filter(self.y_km, self.x_km, cfg.weather_length_km)
        self.chl_filter = _Filter(self.y_km, self.x_km, cfg.chlorophyll_length_km)
        self.demand_filter = _Filter(self.y_km, self.x_km, cfg.demand_length_km)

        # Rivers: plume weights (per m^2, summing to one over the sea) and the shelf's
        # enrichment pattern.
        lat2, _ = np.meshgrid(self.latitude, self.longitude, indexing="ij")
        y2 = (lat2 - self.latitude[0]) * 111.195
        x2 = self.x_km[None, :] + 0.0 * lat2
        area = self.dy_m * self.dx_m * np.ones((1, nx))
        self.river_flux = np.zeros((ny, nx))  # m/day of fresh water at mean discharge
        enrichment = np.zeros((ny, nx))
        total = sum(q for *_, q in RIVERS)
        for _, rlat, rlon, q in RIVERS:
            i = int(np.argmin(np.abs(self.latitude - rlat)))
            j = int(np.argmin(np.abs(self.longitude - rlon)))
            d2 = (y2 - y2[i, j]) ** 2 + (x2 - x2[i, j]) ** 2
            w = portable.exp(-d2 / (cfg.plume_km**2)) * self.sea
            w = w / _ordered_sum(w * area)
            self.river_flux += w * (q * cfg.river_discharge_factor * DAY)
            enrichment += (q / total) * portable.exp(-np.sqrt(d2) / 150.0)
        self.enrichment = enrichment * self.sea * (self.floor < 150.0)

        # Reference profiles (horizontally uniform, at zero heave).
        self.reference_density = potential_density(
            self._t_profile(self.depth), self._s_profile(self.depth)
        )

        # State.
        self.rng = np.random.default_rng(cfg.seed)
        self.time = pd.Timestamp(cfg.start) - pd.Timedelta(days=cfg.spinup_days)
        self.eddy = self.eddy_filter(portable.standard_normal(self.rng, (ny, nx)))
        self.weather = self.weather_filter(portable.standard_normal(self.rng, (ny, nx)))
        self.chl_noise = self.chl_filter(portable.standard_normal(self.rng, (ny, nx)))
        self._new_year()
        # the rim's mean doming is in the state (its relaxation profiles); the departures of
        # the flow from the mean heave the columns at output (a reversible displacement, so
        # that eddies do not mix the water column)
        self.mean_heave = self.heave_per_psi * (self.psi_rim - self.psi_center)
        zeta = self.mean_heave[None] * self.heave_profile[:, None, None]
        zd = np.maximum(self.depth[:, None, None] - zeta, 0.0)
        self.t_target = self._t_profile(zd) * np.ones(self.shape)
        self.s_target = self._s_profile(zd) * np.ones(self.shape)
        self.T, self.S = self.t_target.copy(), self.s_target.copy()
        self.O2 = self._oxygen_target(self.T, self.S)
        log_chl = self._log_chlorophyll_climatology()
        self.log_chl = log_chl.copy()
        self.chl_memory = portable.exp(log_chl)
        self.sediment_memory = self.chl_memory.copy()
        self.mld = np.minimum(self._mld_climatology(), self.floor)

    # --------------------------------------------------------------------- climatologies
    def _t_profile(self, z: NDArray) -> NDArray:
        cfg = self.config
        a = (z - cfg.intermediate_depth_m) / 110.0
        dip = portable.exp(-(a * a))
        return cfg.deep_temperature_c - (
            cfg.deep_temperature_c - cfg.intermediate_temperature_c
        ) * (np.where(z < cfg.intermediate_depth_m, 1.0, dip))

    def _s_profile(self, z: NDArray) -> NDArray:
        cfg = self.config
        jump = 0.5 * (1.0 + _tanh((z - cfg.halocline_depth_m) / cfg.halocline_width_m))
        return cfg.surface_salinity + (cfg.deep_salinity - cfg.surface_salinity) * jump

    def _oxygen_target(self, T: NDArray, S: NDArray) -> NDArray:
        lo, hi = self.config.oxycline_sigma
        sigma = potential_density(T, S) - 1000.0
        return self.config.intermediate_oxygen * _smoothstep((hi - sigma) / (hi - lo))

    def _season(self) -> float:
        """``cos`` of the year's phase: 1 in mid-January, -1 in mid-July."""
        phase = 2 * portable.PI * (_day_of_year(self.time) - 15.0) / YEAR_DAYS
        return float(portable.cos(np.array([phase]))[0])

    def _mld_climatology(self) -> NDArray:
        cfg = self.config
        h = _periodic_monthly(cfg.mixed_layer_monthly_m, _day_of_year(self.time))
        # cold spells deepen the layer, anticyclones (high streamfunction) too
        log_factor = -cfg.mixed_layer_weather * self.weather + cfg.mixed_layer_eddy * (
            self.eddy * self.eddy_taper
        )
        return h * portable.exp(log_factor)

    def _air_temperature(self) -> NDArray:
        cfg = self.config
        phase = (
            2 * portable.PI * (_day_of_year(self.time) - cfg.air_temperature_peak_day) / YEAR_DAYS
        )
        cycle = float(portable.cos(np.array([phase]))[0])
        lat = self.latitude[:, None] - 43.75
        return (
            cfg.air_temperature_c
            + cfg.air_temperature_amplitude_k * cycle
            - cfg.air_temperature_gradient_k_per_deg * lat
            + cfg.weather_std_k * self.weather
        )

    def _river_season(self) -> float:
        """Discharge relative to the mean: high in April-May."""
        phase = 2 * portable.PI * (_day_of_year(self.time) - 120.0) / YEAR_DAYS
        return 1.0 + 0.5 * float(portable.cos(np.array([phase]))[0])

    def _log_chlorophyll_climatology(self) -> NDArray:
        cfg = self.config
        doy = _day_of_year(self.time)

        def bump(centre: float, width: float) -> float:
            d = (doy - centre + YEAR_DAYS / 2) % YEAR_DAYS - YEAR_DAYS / 2
            return float(portable.exp(np.array([-0.5 * (d / width) ** 2]))[0])

        offshore = cfg.chlorophyll_offshore * (
            1.0 + 1.5 * bump(60.0, 25.0) + 0.8 * bump(315.0, 20.0)
        )
        # the shelf follows the rivers' nutrients, a month behind the discharge
        phase = 2 * portable.PI * (doy - 150.0) / YEAR_DAYS
        shelf_season = 1.0 + 0.6 * float(portable.cos(np.array([phase]))[0])
        shelf = cfg.chlorophyll_shelf * self.river_year * shelf_season * self.enrichment
        return portable.log(offshore + shelf)

    def _streamfunction(self) -> NDArray:
        """Surface streamfunction (m^2/s) ``(lat, lon)``."""
        cfg = self.config
        rim = 1.0 + cfg.rim_seasonal_fraction * self._season()
        return rim * self.psi_rim + cfg.eddy_streamfunction_m2_s * self.eddy * self.eddy_taper

    def _new_year(self) -> None:
        """Draws the year's river discharge and the (unobserved) sediment-demand factor."""
        cfg = self.config
        ny, nx = self.shape[1:]
        n = portable.standard_normal(self.rng, (1,))[0]
        self.river_year = float(
            portable.exp(np.array([cfg.river_year_std * n - 0.5 * cfg.river_year_std**2]))[0]
        )
        field = self.demand_filter(portable.standard_normal(self.rng, (ny, nx)))
        common = portable.standard_normal(self.rng, (1,))[0]
        s = cfg.demand_std
        self.demand_factor = portable.exp(s * (0.6 * common + 0.8 * field) - 0.5 * s * s)
        self.year = self.time.year

    # --------------------------------------------------------------------- dynamics
    def _ou(self, field: NDArray, days: float, filt: _Filter) -> NDArray:
        a = float(portable.exp(np.array([-self.dt / days]))[0])
        noise = filt(portable.standard_normal(self.rng, field.shape))
        return a * field + math.sqrt(1.0 - a * a) * noise

    def _velocity(self, psi: NDArray) -> tuple[NDArray, NDArray]:
        """Surface velocity in cells per day ``(di/dt, dj/dt)`` from the streamfunction."""
        p = np.pad(psi, 1)
        dpsi_dy = (p[2:, 1:-1] - p[:-2, 1:-1]) / (2 * self.dy_m)
        dpsi_dx = (p[1:-1, 2:] - p[1:-1, :-2]) / (2 * self.dx_m)
        u, v = -dpsi_dy, dpsi_dx  # m/s
        return v * DAY / self.dy_m, u * DAY / self.dx_m

    def _advect(self, psi: NDArray) -> None:
        """Semi-Lagrangian advection of T, S, O2 (each level with its own speed) and of the
        surface chlorophyll, with a midpoint departure point. Levels where the flow is below
        a fiftieth of its surface speed are left in place."""
        ny, nx = self.shape[1:]
        La = self.advected_levels
        shape = (La, ny, nx)
        vi, uj = self._velocity(psi)
        prof = self.velocity_profile[:La, None, None]
        ii = np.arange(ny, dtype=np.float64)[None, :, None] + np.zeros(shape)
        jj = np.arange(nx, dtype=np.float64)[None, None, :] + np.zeros(shape)
        half = 0.5 * self.dt
        mid_i, mid_j = ii - half * prof * vi, jj - half * prof * uj
        w = _weights(mid_i, mid_j, ny, nx)
        vel = np.stack([vi, uj]).reshape(2, 1, -1)
        base = w[0] * nx + w[1]  # level 0 indices into (ny, nx)
        vm = _bilinear(vel, base, w[2], w[3], nx)[:, 0]
        dep_i = ii - self.dt * prof * vm[0]
        dep_j = jj - self.dt * prof * vm[1]
        i0, j0, wi, wj = _weights(dep_i, dep_j, ny, nx)
        levels = np.arange(La)[:, None, None] * (ny * nx)
        index = levels + i0 * nx + j0
        fill = self.fill[: La * ny * nx]
        fields = np.stack([self.T[:La], self.S[:La], self.O2[:La]]).reshape(3, -1)[:, fill]
        out = _bilinear(fields[:, None, :], index, wi, wj, nx)
        self.T, self.S, self.O2 = self.T.copy(), self.S.copy(), self.O2.copy()
        self.T[:La], self.S[:La], self.O2[:La] = out[0, 0], out[1, 0], out[2, 0]
        surface = self.log_chl.reshape(1, 1, -1)[:, :, fill[: ny * nx]]
        self.log_chl = _bilinear(surface, index[0], wi[0], wj[0], nx)[0, 0]

    def _displaced(self, fields: list[NDArray]) -> list[NDArray]:
        """``fields`` ``(level, lat, lon)`` with each column moved down by the heave of the
        flow's departure from its mean (eddies, the rim's seasonal cycle): a value at depth
        ``z`` is the state's at ``z - heave(z)``, linear between levels, within the column."""
        L = self.shape[0]
        anomaly = self.heave_per_psi * (self._streamfunction() - self.psi_rim)
        shift = anomaly[None] * self.heave_profile[:, None, None]
        z = self.depth
        deepest = z[self.bottom_level]
        target = np.clip(self.depth[:, None, None] - shift, z[0], deepest[None])
        k0 = np.clip(np.searchsorted(z, target, side="right") - 1, 0, L - 2)
        w = np.clip((target - z[k0]) / (z[k0 + 1] - z[k0]), 0.0, 1.0)
        k1 = np.minimum(k0 + 1, self.bottom_level[None])
        k0 = np.minimum(k0, self.bottom_level[None])
        ny, nx = self.shape[1:]
        col = np.arange(ny * nx).reshape(ny, nx)[None]
        out = []
        for field in fields:
            flat = field.reshape(L, -1)
            lo, hi = flat[k0, col], flat[k1, col]
            out.append(np.where(self.mask, lo + w * (hi - lo), field))
        return out

    def _mixed_layer(self, mld: NDArray, air: NDArray) -> None:
        """Surface fluxes into the mixed layer, mixing, then convection."""
        cfg = self.config
        dt = self.dt
        frac = np.clip((mld[None] - self.top) / self.span, 0.0, 1.0) * self.mask
        frac[0] = np.where(self.sea, np.maximum(frac[0], 1.0), 0.0)
        weight = frac * self.dzw
        depth = _column_sum(weight)
        depth = np.where(self.sea, depth, 1.0)
        share = frac / depth  # of a surface flux per m of each level's weight
        ts, ss = self.T[0], self.S[0]
        heat = cfg.heat_exchange_w_m2_k * (air - ts) * (dt * DAY / (RHO0 * CP))  # K m
        fresh = self.river_flux * (self._river_season() * self.river_year * dt)  # m
        salt = (cfg.surface_salinity - ss) * (dt / cfg.surface_salinity_days) * depth - ss * fresh
        saturation = oxygen_solubility(ts, ss)
        chl = portable.exp(self.log_chl)
        gas = cfg.piston_velocity_m_day * dt * (saturation - self.O2[0])
        production = cfg.production_per_chlorophyll * chl * dt * depth
        self.T = self.T + heat * share
        self.S = self.S + salt * share
        self.O2 = self.O2 + (gas + production) * share
        # mix what lies in the layer (partial cells by their fraction)
        for name in ("T", "S", "O2"):
            field = getattr(self, name)
            mean = _column_sum(weight * field) / depth
            setattr(self, name, frac * mean[None] + (1.0 - frac) * field)
        # convection: extend the layer while its base is denser than the level below
        L = self.shape[0]
        inside = frac[0] >= 1.0
        sums = {name: self.dzw[0] * getattr(self, name)[0] for name in ("T", "S", "O2")}
        thickness = self.dzw[0].copy()
        rho_above = potential_density(self.T[0], self.S[0])
        for k in range(1, L):
            for name in sums:
                sums[name] = sums[name] + self.dzw[k] * getattr(self, name)[k]
            thickness = thickness + self.dzw[k]
            rho_k = potential_density(self.T[k], self.S[k])
            unstable = inside & self.mask[k] & (rho_above > rho_k)
            if unstable.any():
                safe = np.where(thickness > 0, thickness, 1.0)
                for name in sums:
                    field = getattr(self, name)
                    mean = sums[name] / safe
                    field[: k + 1] = np.where(unstable[None], mean[None], field[: k + 1])
                rho_k = np.where(unstable, potential_density(self.T[k], self.S[k]), rho_k)
            inside = (unstable | (frac[k] >= 1.0)) & inside & self.mask[k]
            rho_above = rho_k
        self.mixing_fraction = frac

    def _interior(self, mld: NDArray) -> None:
        """Below the mixed layer: relaxation, respiration, sediment demand, diffusion."""
        cfg = self.config
        dt = self.dt
        below = 1.0 - self.mixing_fraction
        relax = dt / cfg.deep_relaxation_days
        self.T = self.T + below * relax * (self.t_target - self.T)
        self.S = self.S + below * relax * (self.s_target - self.S)
        # oxygen: ventilation along isopycnals offshore (the shelf's bottom water is isolated
        # in summer), respiration of sinking matter, sediment demand at the floor
        ventilated = _smoothstep((self.floor - 60.0) / 120.0)[None]
        target = self._oxygen_target(self.T, self.S)
        o2 = self.O2
        limit = np.maximum(o2, 0.0) / (np.maximum(o2, 0.0) + cfg.oxygen_half_saturation)
        export = self.chl_memory / cfg.chlorophyll_reference
        below_mld = np.maximum(self.depth[:, None, None] - mld[None], 0.0)
        respiration = (
            cfg.respiration_mmol_m3_day
            * export[None]
            * portable.exp(-below_mld / cfg.respiration_depth_m)
        )
        t_bottom = np.take_along_axis(self.T, self.bottom_level[None], axis=0)[0]
        q10 = portable.exp((t_bottom - 10.0) / 10.0 * self.log_q10)
        deposit = self.sediment_memory / cfg.chlorophyll_reference
        demand = cfg.sediment_demand_mmol_m2_day * deposit * self.demand_factor * q10
        layer = np.maximum(self.dzw, cfg.bottom_layer_m)
        sediment = np.where(self.is_bottom, demand[None] / layer, 0.0)
        o2 = o2 + below * ventilated * (dt / cfg.ventilation_days) * (target - o2)
        o2 = o2 - dt * limit * (below * respiration + sediment)
        self.O2 = np.maximum(o2, 0.0)
        # vertical diffusion (explicit; stable for the diffusivities allowed)
        kz = cfg.vertical_diffusivity_m2_s * DAY * dt
        if kz > 0:
            L = self.shape[0]
            for name in ("T", "S", "O2"):
                field = getattr(self, name)
                new = field.copy()
                for k in range(L - 1):
                    both = self.mask[k + 1]
                    dist = 0.5 * (self.dzw[k] + self.dzw[k + 1])
                    flux = np.where(
                        both, kz * (field[k + 1] - field[k]) / np.where(both, dist, 1.0), 0.0
                    )
                    new[k] += flux / np.where(self.mask[k], self.dzw[k], 1.0)
                    new[k + 1] -= flux / np.where(both, self.dzw[k + 1], 1.0)
                setattr(self, name, new)

    def step(self) -> None:
        """One time step of ``1 / steps_per_day`` days."""
        cfg = self.config
        dt = self.dt
        self.eddy = self._ou(self.eddy, cfg.eddy_days, self.eddy_filter)
        self.weather = self._ou(self.weather, cfg.weather_days, self.weather_filter)
        self.chl_noise = self._ou(self.chl_noise, cfg.chlorophyll_days, self.chl_filter)
        psi = self._streamfunction()
        self._advect(psi)
        # surface chlorophyll: relaxation to the climatology plus correlated anomalies
        target = self._log_chlorophyll_climatology() + cfg.chlorophyll_std * self.chl_noise
        self.log_chl = self.log_chl + (dt / cfg.chlorophyll_days) * (target - self.log_chl)
        chl = portable.exp(self.log_chl)
        self.chl_memory = self.chl_memory + (dt / cfg.chlorophyll_memory_days) * (
            chl - self.chl_memory
        )
        # organic matter reaches the sediment and is consumed there over months
        self.sediment_memory = self.sediment_memory + (dt / cfg.sediment_days) * (
            self.chl_memory - self.sediment_memory
        )
        # the halocline stops the mixing: the layer never reaches its middle
        deepest = cfg.halocline_depth_m - 0.5 * cfg.halocline_width_m
        mld = np.clip(self._mld_climatology(), 5.0, deepest)
        self.mld = np.where(self.sea, np.minimum(mld, self.floor), 0.0)
        self._mixed_layer(self.mld, self._air_temperature())
        self._interior(self.mld)
        self.time = self.time + pd.Timedelta(days=dt)
        if self.time.year != self.year:
            self._new_year()

    def advance(self) -> None:
        """Integrates over one day."""
        day = self.time + pd.Timedelta(days=1)
        for _ in range(self.config.steps_per_day):
            self.step()
        self.time = day  # no rounding drift of the sub-daily steps
        if not (np.all(np.isfinite(self.T)) and np.all(np.isfinite(self.O2))):
            raise FloatingPointError(f"toy sea blew up at {self.time}; raise steps_per_day")

    def spin_up(self) -> None:
        """Runs from the climatology up to ``config.start`` (discarded)."""
        start = pd.Timestamp(self.config.start)
        while self.time < start - pd.Timedelta(seconds=1):
            self.advance()

    # --------------------------------------------------------------------- outputs
    def sea_surface_height(self, temperature_c: NDArray, salinity: NDArray) -> NDArray:
        """Sea-surface height (m) ``(lat, lon)`` over the water columns of temperature (C) and
        salinity (g/kg) ``(level, lat, lon)``; NaN on land."""
        cfg = self.config
        rho = potential_density(temperature_c, salinity)
        steric = steric_height(
            rho, self.reference_density, self.interfaces, self.floor, cfg.ssh_reference_depth_m
        )
        psi = self._streamfunction()
        eta = steric + self.f * psi * self.psi_ref_profile / GRAVITY
        mean = _ordered_sum(eta[self.sea]) / int(self.sea.sum())
        return np.where(self.sea, eta - mean, np.nan)

    def fields(self) -> dict[str, NDArray]:
        """The state at the current time: 3-D fields ``(level, lat, lon)`` and the surface
        height ``(lat, lon)``, canonical names and units, NaN on land and below the floor."""
        cfg = self.config
        chl_s = portable.exp(self.log_chl)
        below = np.maximum(self.depth[:, None, None] - self.mld[None], 0.0)
        chl = chl_s[None] * portable.exp(-below / cfg.chlorophyll_decay_m)
        T, S, O2 = self._displaced([self.T, self.S, self.O2])
        out = {"temperature": T + KELVIN, "salinity": S, "oxygen": O2, "chlorophyll": chl}
        out = {name: np.where(self.mask, value, np.nan) for name, value in out.items()}
        out["sea_surface_height"] = self.sea_surface_height(T, S)
        return out

    def statics(self) -> dict[str, NDArray]:
        """Sea-floor depth (m, NaN on land) ``(lat, lon)`` and the sea mask of each level
        ``(level, lat, lon)``."""
        return {
            "sea_floor_depth": np.where(self.sea, self.floor, np.nan),
            "sea_mask": self.mask.astype(np.int8),
        }

    def fingerprint(self) -> str:
        """SHA-256 of the current state and its diagnostics: equal on two runs exactly when
        they computed the same bits."""
        digest = hashlib.sha256(str(self.time).encode())
        for value in (self.T, self.S, self.O2, self.log_chl, self.chl_memory, self.sediment_memory):
            digest.update(np.ascontiguousarray(value).tobytes())
        for name, value in sorted(self.fields().items()):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(value, dtype=np.float64).tobytes())
        return digest.hexdigest()

    def run(self, n: int) -> Iterator[tuple[pd.Timestamp, dict[str, NDArray]]]:
        """Yields ``n`` daily states ``(time, fields)``, starting with the current state."""
        for i in range(n):
            if i > 0:
                self.advance()
            yield self.time, self.fields()


def _weights(ii: NDArray, jj: NDArray, ny: int, nx: int):
    ii = np.clip(ii, 0.0, ny - 1.0)
    jj = np.clip(jj, 0.0, nx - 1.0)
    i0 = np.minimum(np.floor(ii), ny - 2).astype(np.int64)
    j0 = np.minimum(np.floor(jj), nx - 2).astype(np.int64)
    return i0, j0, ii - i0, jj - j0


def _bilinear(fields: NDArray, index: NDArray, wi: NDArray, wj: NDArray, nx: int) -> NDArray:
    """Bilinear interpolation of flattened ``fields`` ``(n, 1, cells)`` at ``index`` (the
    lower-left cell) with weights ``wi, wj``; returns ``(n, 1, *index.shape)``."""
    f = fields[:, 0]
    a, b = f[:, index], f[:, index + 1]
    c, d = f[:, index + nx], f[:, index + nx + 1]
    return ((a * (1.0 - wj) + b * wj) * (1.0 - wi) + (c * (1.0 - wj) + d * wj) * wi)[:, None]


# ------------------------------------------------------------------------------ diagnostics
def steric_height(
    density: NDArray,
    reference_density: NDArray,
    interfaces: NDArray,
    floor: NDArray,
    reference_depth_m: float,
) -> NDArray:
    """Steric height (m) ``(..., lat, lon)``: ``-(1/rho0)`` times the integral of the density
    anomaly ``density - reference_density`` (``(..., level, lat, lon)`` and ``(level,)``, kg
    m^-3) from the surface to ``reference_depth_m`` or the sea floor ``floor`` (m), whichever
    is shallower; levels are weighted by their wet thickness above that depth."""
    density = np.asarray(density, dtype=np.float64)
    L = len(interfaces) - 1
    limit = np.minimum(floor, reference_depth_m)
    out = np.zeros(density.shape[:-3] + density.shape[-2:])
    for k in range(L):
        thickness = np.clip(np.minimum(interfaces[k + 1], limit) - interfaces[k], 0.0, None)
        anomaly = np.nan_to_num(density[..., k, :, :] - reference_density[k])
        out = out - thickness * anomaly / RHO0
    return out


def mixed_layer_depth(
    temperature_k: NDArray,
    salinity: NDArray,
    depth: NDArray,
    threshold: float = 0.03,
    reference_depth: float = 10.0,
) -> NDArray:
    """Mixed-layer depth (m) ``(..., lat, lon)`` from temperature (K) and salinity (g/kg)
    ``(..., level, lat, lon)`` on levels ``depth`` (m): the depth where the potential density
    first exceeds its value at ``reference_depth`` by ``threshold`` kg m^-3 (de Boyer
    Montegut et al. 2004), interpolated linearly between levels; the deepest sea level where
    it never does; NaN on land."""
    rho = potential_density(np.asarray(temperature_k) - KELVIN, np.asarray(salinity))
    depth = np.asarray(depth, dtype=np.float64)
    k = int(np.searchsorted(depth, reference_depth)) - 1
    if k < 0 or k + 1 >= len(depth):
        raise ValueError(f"reference depth {reference_depth} m lies outside the levels")
    w = (reference_depth - depth[k]) / (depth[k + 1] - depth[k])
    ref = rho[..., k, :, :] * (1 - w) + rho[..., k + 1, :, :] * w
    out = np.full(ref.shape, np.nan)
    done = np.zeros(ref.shape, dtype=bool)
    previous = ref
    previous_z = reference_depth
    for level in range(k + 1, len(depth)):
        current = rho[..., level, :, :]
        valid = np.isfinite(current)
        crossed = valid & ~done & (current - ref > threshold)
        fraction = (ref + threshold - previous) / np.where(crossed, current - previous, 1.0)
        z = previous_z + np.clip(fraction, 0.0, 1.0) * (depth[level] - previous_z)
        out = np.where(crossed, z, out)
        done |= crossed
        deepest = valid & ~done
        out = np.where(deepest, depth[level], out)
        previous = np.where(valid, current, previous)
        previous_z = depth[level]
    return np.where(np.isfinite(ref), out, np.nan)


def bottom_values(field: NDArray, mask: NDArray) -> NDArray:
    """Values ``(..., lat, lon)`` of ``field`` ``(..., level, lat, lon)`` at the deepest sea
    level of ``mask`` ``(level, lat, lon)``; NaN on land."""
    mask = np.asarray(mask, dtype=bool)
    bottom = np.clip(mask.sum(axis=0) - 1, 0, None)
    field = np.asarray(field)
    index = np.broadcast_to(bottom, (*field.shape[:-3], 1, *bottom.shape))
    out = np.take_along_axis(field, index, axis=-3)[..., 0, :, :]
    return np.where(mask.any(axis=0), out, np.nan)


def shelf_cells(mask: NDArray, floor_depth: NDArray) -> NDArray:
    """``(lat, lon)`` bool: the sea's columns (any level of ``mask`` ``(level, lat, lon)``) whose
    floor (``floor_depth`` ``(lat, lon)``, m; NaN or 0 on land) is shallower than
    :data:`SHELF_DEPTH_M`: where shelf hypoxia is looked for."""
    return np.asarray(mask, dtype=bool).any(axis=0) & (np.nan_to_num(floor_depth) < SHELF_DEPTH_M)


# ------------------------------------------------------------------------------ writing
def _dataset(model: ToySea, times: list[pd.Timestamp], states: list[dict[str, NDArray]]):
    coords = {
        "level": ("level", model.depth.astype(np.float64)),
        "latitude": ("latitude", model.latitude.astype(np.float64)),
        "longitude": ("longitude", model.longitude.astype(np.float64)),
    }
    dims = {name: ("level", "latitude", "longitude") for name in THREE_D_VARIABLES}
    dims.update({name: ("latitude", "longitude") for name in SURFACE_VARIABLES})
    return _coordinate_attrs(states_dataset(times, coords, dims, states, CF_ATTRS), model)


def _coordinate_attrs(ds, model: ToySea):
    ds["latitude"].attrs = {
        "units": "degrees_north",
        "standard_name": "latitude",
        "long_name": "latitude",
        "axis": "Y",
    }
    ds["longitude"].attrs = {
        "units": "degrees_east",
        "standard_name": "longitude",
        "long_name": "longitude",
        "axis": "X",
    }
    bounds = np.stack([model.interfaces[:-1], model.interfaces[1:]], axis=1)
    ds = ds.assign_coords(level_bounds=(("level", "bounds"), bounds))
    ds["level"].attrs = {
        "units": "m",
        "standard_name": "depth",
        "long_name": "depth of the level's centre",
        "positive": "down",
        "axis": "Z",
        "bounds": "level_bounds",
    }
    ds["level_bounds"].attrs = {"units": "m", "long_name": "depths of the level's top and bottom"}
    ds["time"].attrs = {"standard_name": "time", "long_name": "time", "axis": "T"}
    return ds


def _with_statics(ds, model: ToySea):
    statics = model.statics()
    ds["sea_floor_depth"] = (
        ("latitude", "longitude"),
        statics["sea_floor_depth"].astype(np.float32),
    )
    ds["sea_mask"] = (("level", "latitude", "longitude"), statics["sea_mask"])
    for name in STATIC_VARIABLES:
        units, standard, long = CF_ATTRS[name]
        ds[name].attrs = {"units": units, "standard_name": standard, "long_name": long}
    ds["sea_floor_depth"].attrs["positive"] = "down"
    ds.attrs = {
        "Conventions": "CF-1.8",
        "title": "Appa toy sea",
        "source": "appa.data.toy_sea: kinematic model of a Black-Sea-like basin "
        f"({model.shape[1]}x{model.shape[2]} cells, {model.shape[0]} levels to "
        f"{model.config.max_depth_m:g} m)",
        "history": f"created {pd.Timestamp.now(tz='UTC').isoformat()} by appa",
        "appa_toy_sea_config": json.dumps(model.config.model_dump()),
        PRODUCT_ATTR: "toy-sea",
    }
    return ds


def toy_sea_dataset(config: ToySeaConfig, progress: bool = False):
    """Runs the toy sea and returns its ``config.days`` daily states as an in-memory
    ``xarray.Dataset`` in the layout :func:`generate_toy_sea` writes."""
    from tqdm.auto import tqdm

    model = ToySea(config)
    with tqdm(total=config.spinup_days + config.days, desc="toy sea", disable=not progress) as bar:
        start = pd.Timestamp(config.start)
        while model.time < start - pd.Timedelta(seconds=1):
            model.advance()
            bar.update(1)
        times, states = [], []
        for t, fields in model.run(config.days):
            times.append(t)
            states.append({k: v.astype(np.float32) for k, v in fields.items()})
            bar.update(1)
    return _with_statics(_dataset(model, times, states), model)


def generate_toy_sea(
    config: ToySeaConfig, out: str | Path, progress: bool = True, overwrite: bool = False
) -> Path:
    """Runs the toy sea and writes a Zarr store of its daily states.

    The store is written to a temporary sibling path and renamed into place when complete, so
    ``out`` is either absent or whole. ``out`` must be free (absent, an empty directory) or,
    with ``overwrite``, a toy-sea store; anything else raises
    :class:`~appa.files.OutputExistsError` naming what is there, before the run. Returns
    ``out``.
    """
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    out = Path(out)
    claim_output(out, "toy-sea", overwrite=overwrite)
    model = ToySea(config)
    bar = tqdm(
        total=config.spinup_days + config.days,
        desc="toy sea",
        unit="day",
        disable=not progress,
        mininterval=1.0,
    )
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            start = pd.Timestamp(config.start)
            while model.time < start - pd.Timedelta(seconds=1):
                model.advance()
                bar.update(1)
            write_states(
                out, "toy-sea", model.run(config.days), config.days,
                lambda times, states: _dataset(model, times, states),
                lambda ds: _with_statics(ds, model), config.time_chunk, config.zarr_format,
                overwrite=overwrite, on_state=lambda: bar.update(1),
                # the level bounds (no time axis) are in the store from the first block
                later_block=lambda ds: ds.drop_vars("level_bounds"),
            )  # fmt: skip
    finally:
        bar.close()
    return out
