"""The toy Earth: a forced-dissipative two-layer quasi-geostrophic atmosphere on the sphere.

A small global model that runs on a laptop CPU and writes exactly the canonical ERA5 layout
(dims ``(time, level, latitude, longitude)``, latitude ascending, longitude in [0, 360),
WeatherBench2 names, SI units, level in hPa, CF attributes, a real date axis), so that every
later stage runs unchanged on it.

Dynamics (own spectral transform solver, triangular truncation T21 for 64x32 and T43 for 128x64,
Gaussian grid, third-order Adams-Bashforth steps of one hour at T21): potential vorticity

    q1 = lap(psi1) - F (psi1 - psi2) + f
    q2 = lap(psi2) + F (psi1 - psi2) + f + f h / H2

is advected by the non-divergent winds of each layer. Newtonian cooling relaxes the layer
thickness ``psi1 - psi2`` (temperature, by hydrostatic balance) towards a radiative equilibrium
with an equator-to-pole contrast and a seasonal cycle (constant deformation radius; thickness
and geopotential use the local Coriolis parameter, so that both hemispheres have westerly jets
and cold poles); the lower layer feels Ekman drag and synthetic orography; scale-selective
hyperdiffusion removes enstrophy at the truncation. The jets are baroclinically unstable, so the
flow is chaotic and, after spin-up, statistically stationary (cyclostationary with the seasons).

Diagnostics on pressure levels use a vertical structure linear in ``log p`` through the two
layers (250 and 750 hPa): streamfunction ``psi(p) = psi_bt + psi_bc S(p)``; geopotential ``Phi =
Phi_std(p) + f psi(p)`` (geostrophic); winds from ``psi(p)``; temperature from the hydrostatic
relation ``T = -(1/R) dPhi/dlog p`` (so from the layer thickness). Surface fields come from the
lower layer (the one under Ekman drag): mean sea-level pressure from its geostrophic pressure, 2
m temperature from the 1000 hPa temperature with a lapse-rate correction over orography and a
diurnal cycle stronger over land, 10 m winds from its winds reduced by surface friction, and a
slab-ocean sea-surface temperature (NaN over land, as in ERA5).

Same seed, same data, on every machine: the model and its diagnostics use only operations whose
results IEEE 754 fixes (``appa.data.portable``: its own elementary functions, Gaussian
latitudes, normal variates and exact matrix products instead of numpy's SIMD-dispatched ufuncs,
``einsum``, BLAS and FFT), so any CPU writes the same bytes.
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
from pydantic import Field, field_validator

from appa.config import DateText, StrictModel
from appa.data import portable
from appa.data.generated import states_dataset, write_states
from appa.data.grids import equiangular_grid, parse_grid
from appa.data.spectral import SphericalHarmonics
from appa.files import PRODUCT_ATTR, claim_output

__all__ = [
    "ATMOSPHERIC_VARIABLES",
    "STATIC_VARIABLES",
    "SURFACE_VARIABLES",
    "ToyEarth",
    "ToyEarthConfig",
    "write_toy_earth",
]

EARTH_RADIUS = 6.371e6  # m
OMEGA = 7.292e-5  # rad/s
GRAVITY = 9.80665  # m/s^2
R_DRY = 287.05  # J/(kg K)
T0, P0, LAPSE = 288.15, 101325.0, 0.0065  # standard atmosphere: K, Pa, K/m
P_UPPER, P_LOWER = 250.0, 750.0  # hPa: the two layers
DAY = 86400.0
LOG_LAYERS = float(portable.log(P_LOWER / P_UPPER))  # ln(p2 / p1) of the two layers
KAPPA_LAPSE = R_DRY * LAPSE / GRAVITY  # exponent of the standard atmosphere's T(p)
YEAR_DAYS = 365.2425

ATMOSPHERIC_VARIABLES = (
    "geopotential",
    "temperature",
    "u_component_of_wind",
    "v_component_of_wind",
)
SURFACE_VARIABLES = (
    "2m_temperature",
    "mean_sea_level_pressure",
    "10m_u_component_of_wind",
    "10m_v_component_of_wind",
    "sea_surface_temperature",
)
STATIC_VARIABLES = ("geopotential_at_surface", "land_sea_mask")

# CF attributes of each variable: (units, standard_name, long_name).
CF_ATTRS = {
    "geopotential": ("m**2 s**-2", "geopotential", "Geopotential"),
    "temperature": ("K", "air_temperature", "Temperature"),
    "u_component_of_wind": ("m s**-1", "eastward_wind", "U component of wind"),
    "v_component_of_wind": ("m s**-1", "northward_wind", "V component of wind"),
    "2m_temperature": ("K", "air_temperature", "2 metre temperature"),
    "mean_sea_level_pressure": (
        "Pa",
        "air_pressure_at_mean_sea_level",
        "Mean sea level pressure",
    ),
    "10m_u_component_of_wind": ("m s**-1", "eastward_wind", "10 metre U wind component"),
    "10m_v_component_of_wind": ("m s**-1", "northward_wind", "10 metre V wind component"),
    "sea_surface_temperature": ("K", "sea_surface_temperature", "Sea surface temperature"),
    "geopotential_at_surface": ("m**2 s**-2", "surface_geopotential", "Geopotential at surface"),
    "land_sea_mask": ("1", "land_binary_mask", "Land-sea mask"),
}


class ToyEarthConfig(StrictModel):
    """Settings of the toy Earth (``appa toy-earth``)."""

    grid: str = Field("64x32", description="output grid NLONxNLAT (WB2 equiangular, no poles)")
    years: float = Field(1.0, gt=0, description="simulated years written after spin-up")
    start: DateText = Field("2000-01-01T00:00", description="date of the first written state")
    step_hours: Literal[1, 3, 6, 12, 24] = 6
    seed: int = Field(0, description="initial perturbation; the planet is fixed by planet_seed")
    planet_seed: int = Field(1, description="continents and orography")
    spinup_days: float = Field(300.0, ge=0)
    levels: list[int] = Field(default_factory=lambda: [250, 500, 700])
    truncation: int | None = Field(None, ge=5, description="spectral T; default nlat // 1.5")
    dt_minutes: float | None = Field(None, gt=0, description="time step; default 60 at T21")
    # Physics.
    deformation_radius_km: float = Field(500.0, gt=0)
    equator_pole_contrast_k: float = Field(80.0, ge=0, description="radiative equilibrium")
    polar_weight: float = Field(0.3, ge=0, le=1, description="share of sin^4 in the profile")
    seasonal_contrast_k: float = Field(20.0, ge=0, description="hemispheric, at the solstices")
    radiative_days: float = Field(30.0, gt=0)
    ekman_days: float = Field(3.0, gt=0)
    hyperdiffusion_hours: float = Field(12.0, gt=0, description="e-folding at the truncation")
    mountain_height_m: float = Field(1500.0, ge=0)
    land_fraction: float = Field(0.3, ge=0, le=1)
    diurnal_amplitude_land_k: float = Field(6.0, ge=0)
    diurnal_amplitude_sea_k: float = Field(0.5, ge=0)
    ocean_days: float = Field(30.0, gt=0, description="slab-ocean relaxation time")
    # Storage.
    time_chunk: int = Field(32, ge=1)
    zarr_format: Literal[2, 3] = 2

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: str) -> str:
        parse_grid(value)
        return value

    @field_validator("levels")
    @classmethod
    def _levels(cls, value: list[int]) -> list[int]:
        if not value or len(set(value)) != len(value):
            raise ValueError("levels must be a non-empty list of distinct pressures in hPa")
        if any(not P_UPPER <= p <= P_LOWER for p in value):
            raise ValueError(
                f"levels must lie between the model layers, [{P_UPPER:g}, {P_LOWER:g}] hPa, "
                f"got {value}"
            )
        return sorted(value)


def _standard_temperature(p_hpa: NDArray | float) -> NDArray:
    """Standard-atmosphere temperature (K) at pressure ``p`` (hPa), troposphere."""
    return T0 * portable.power(np.asarray(p_hpa) * 100.0 / P0, KAPPA_LAPSE)


def _standard_geopotential(p_hpa: NDArray | float) -> NDArray:
    """Standard-atmosphere geopotential (m^2/s^2), hydrostatically consistent with the above."""
    return (
        GRAVITY * T0 / LAPSE * (1.0 - portable.power(np.asarray(p_hpa) * 100.0 / P0, KAPPA_LAPSE))
    )


def _structure(p_hpa: float) -> float:
    """Vertical structure ``S(p)`` of the baroclinic mode: +1 at 250 hPa, -1 at 750 hPa."""
    return 1.0 - 2.0 * float(portable.log(p_hpa / P_UPPER)) / LOG_LAYERS


class ToyEarth:
    """The two-layer model: state, time stepping and diagnostics on the output grid.

    Arguments:
        config: A :class:`ToyEarthConfig`.
    """

    def __init__(self, config: ToyEarthConfig) -> None:
        self.config = cfg = config
        nlon, nlat = parse_grid(cfg.grid)
        T = cfg.truncation or round(nlat / 1.5)
        self.sh = sh = SphericalHarmonics(T, nlat=nlat, nlon=nlon, radius=EARTH_RADIUS)
        if cfg.dt_minutes is not None:
            self.dt = cfg.dt_minutes * 60.0
        else:
            self.dt = 3600.0 * 21 / T
        steps = cfg.step_hours * 3600.0 / self.dt
        self.steps_per_output = max(1, math.ceil(steps - 1e-9))
        self.dt = cfg.step_hours * 3600.0 / self.steps_per_output

        # Output grid (equiangular cell centres) and its transform bases.
        self.latitude, self.longitude = equiangular_grid(cfg.grid)
        self.nlon_out = nlon
        mu_out = portable.sin(np.radians(self.latitude))
        self.basis_out = sh.basis(mu_out)
        self.cos_out = portable.cos(np.radians(self.latitude))[:, None]
        self.f_out = 2 * OMEGA * mu_out[:, None]

        # Constants in spectral space.
        lap = sh.laplacian
        radius = cfg.deformation_radius_km * 1e3
        self.F = 1.0 / (2.0 * radius * radius)
        self.lap = lap
        mu_grid = sh.mu[:, None] * np.ones((1, sh.nlon))
        f_spec = sh.to_spectral(2 * OMEGA * mu_grid)
        self.planet_field_out, planet_field = self._planet()
        thr = np.quantile(planet_field, 1 - cfg.land_fraction) if cfg.land_fraction > 0 else np.inf
        top = planet_field.max()
        h_grid = cfg.mountain_height_m * np.clip((planet_field - thr) / (top - thr + 1e-12), 0, 1)
        self.h_spec = sh.to_spectral(h_grid)
        self.land = (self.planet_field_out > thr).astype(np.float64)
        self.orography = np.clip(self.to_output(self.h_spec), 0.0, None) * self.land
        # Orography enters the lower-layer PV as f h / H2 (H2 = 5 km).
        topo = sh.to_spectral(2 * OMEGA * mu_grid * h_grid / 5000.0)
        self.qbar = np.stack([f_spec, f_spec + topo])
        # Radiative equilibrium of the thickness psi1 - psi2 = R ln(p2/p1) T_e / f: an odd profile
        # in mu, so that the thermal-wind shear is westerly in both hemispheres, and the
        # temperature f (psi1 - psi2) / (R ln(p2/p1)) is -dT ((1 - w) mu^2 + w mu^4) (+ seasons).
        scale = R_DRY * LOG_LAYERS / (2 * OMEGA)
        w = cfg.polar_weight
        self.te_mean = scale * sh.to_spectral(
            -cfg.equator_pole_contrast_k * ((1 - w) * mu_grid + w * (mu_grid * mu_grid * mu_grid))
        )
        self.te_season = scale * sh.to_spectral(cfg.seasonal_contrast_k * (mu_grid * mu_grid))
        # The equilibrium profile's global mean, -dT ((1 - w) / 3 + w / 5), is added back.
        self.t_offset = cfg.equator_pole_contrast_k * ((1 - w) / 3 + w / 5)
        # Hyperdiffusion (del^8) as an exact integrating factor per step.
        ratio = sh.l * (sh.l + 1) / (T * (T + 1))
        rate = (ratio * ratio) * (ratio * ratio) / (cfg.hyperdiffusion_hours * 3600.0)
        self.damp = portable.exp(-rate * self.dt) * sh.mask
        with np.errstate(divide="ignore"):
            self.inv_lap = np.where(sh.l > 0, 1.0 / np.where(lap == 0, 1, lap), 0.0)
        self.inv_bc = 1.0 / (lap - 2 * self.F)

        # State: PV anomaly q - qbar per layer, spectral; slab-ocean temperature on output grid.
        rng = np.random.default_rng(cfg.seed)
        parts = portable.standard_normal(rng, (2, 2, T + 1, T + 1))
        parts[1, :, 0, :] = 0.0  # m = 0 coefficients of a real field are real
        noise = np.empty(parts.shape[1:], dtype=np.complex128)
        noise.real, noise.imag = parts
        # Streamfunction noise of ~1e5 m^2/s (1e-3 of the mature flow) seeds the instability.
        psi = noise * sh.mask * (sh.l >= 1) * 1e5
        self.Q = self._pv(psi)
        self.time = pd.Timestamp(cfg.start) - pd.Timedelta(days=cfg.spinup_days)
        self._t1000_std = float(_standard_temperature(1000.0))
        # (S(p), standard geopotential, standard temperature) of each output level
        self._level_profile = [
            (_structure(p), float(_standard_geopotential(p)), float(_standard_temperature(p)))
            for p in cfg.levels
        ]
        self.sst = np.full(self.land.shape, self._t1000_std)
        self._history: list[NDArray] = []

    # ----------------------------------------------------------------------------- planet
    def _planet(self) -> tuple[NDArray, NDArray]:
        """A smooth random field (l <= 6, fixed by planet_seed) on the output and model grids;
        its upper quantile is land, with orography rising inland."""
        rng = np.random.default_rng(self.config.planet_seed)
        L = min(6, self.sh.T)
        c = np.zeros((self.sh.T + 1, self.sh.T + 1), dtype=np.complex128)
        for m in range(L + 1):
            for l in range(max(m, 1), L + 1):
                re, im = portable.standard_normal(rng, (2,))
                c[m, l] = complex(re, im if m else 0.0)
        return self.to_output(c), self.sh.to_grid(c)

    def to_output(self, coeffs: NDArray) -> NDArray:
        """Synthesises spectral coefficients on the output grid ``(..., lat, lon)``."""
        return self.sh.to_grid(coeffs, self.basis_out, self.nlon_out)

    # ----------------------------------------------------------------------------- dynamics
    def _pv(self, psi: NDArray) -> NDArray:
        """PV anomaly ``q - qbar`` (spectral) from layer streamfunctions."""
        stretch = self.F * (psi[0] - psi[1])
        return np.stack([self.lap * psi[0] - stretch, self.lap * psi[1] + stretch])

    def invert(self, Q: NDArray) -> NDArray:
        """Layer streamfunctions (m^2/s, spectral) from the PV anomaly."""
        bt = self.inv_lap * (Q[0] + Q[1])  # psi1 + psi2
        bc = self.inv_bc * (Q[0] - Q[1])  # psi1 - psi2
        return np.stack([0.5 * (bt + bc), 0.5 * (bt - bc)])

    def _equilibrium(self, time: pd.Timestamp) -> NDArray:
        phase = 2 * portable.PI * (_day_of_year(time) - 172.0) / YEAR_DAYS
        return self.te_mean + float(portable.cos(phase)) * self.te_season

    def tendency(self, Q: NDArray, thickness_eq: NDArray) -> NDArray:
        """``dQ/dt`` without hyperdiffusion: advection, Newtonian cooling and Ekman drag."""
        sh = self.sh
        psi = self.invert(Q)
        q, U, V = sh.to_grid_with_winds(Q + self.qbar, psi)
        dQ = -sh.divergence_flux(U * q, V * q)
        heating = (self.F / (self.config.radiative_days * DAY)) * (psi[0] - psi[1] - thickness_eq)
        dQ[0] += heating
        dQ[1] -= heating
        dQ[1] -= self.lap * psi[1] / (self.config.ekman_days * DAY)
        return dQ * sh.mask

    def step(self) -> None:
        """One third-order Adams-Bashforth step (integrating factor for the hyperdiffusion)."""
        eq = self._equilibrium(self.time)
        N = self.tendency(self.Q, eq)
        h, E = self._history, self.damp
        dt = self.dt
        if len(h) == 0:
            self.Q = E * (self.Q + dt * N)
        elif len(h) == 1:
            self.Q = E * (self.Q + dt * (1.5 * N - 0.5 * E * h[0]))
        else:
            self.Q = E * (self.Q + dt * (23 * N - 16 * E * h[-1] + 5 * E * E * h[-2]) / 12)
        self._history = [*h[-1:], N]
        self.time = self.time + pd.Timedelta(seconds=dt)

    def advance(self) -> None:
        """Integrates over one output interval and updates the slab ocean."""
        for _ in range(self.steps_per_output):
            self.step()
        if not np.all(np.isfinite(self.Q)):
            raise FloatingPointError(f"toy Earth blew up at {self.time}; reduce dt_minutes")
        hours = self.config.step_hours * 3600.0
        t1000 = self._temperature_anomaly() + self._t1000_std
        self.sst += (hours / (self.config.ocean_days * DAY)) * (t1000 + 1.0 - self.sst)
        np.maximum(self.sst, 271.35, out=self.sst)  # sea water freezes

    def spin_up(self) -> None:
        """Runs from the initial perturbation up to ``config.start`` (discarded)."""
        start = pd.Timestamp(self.config.start)
        while self.time < start - pd.Timedelta(seconds=1):
            self.advance()

    # ----------------------------------------------------------------------------- outputs
    def _temperature_anomaly(self) -> NDArray:
        psi = self.invert(self.Q)
        thickness = self.to_output(psi[0] - psi[1])
        return self.f_out * thickness / (R_DRY * LOG_LAYERS) + self.t_offset

    def fields(self) -> dict[str, NDArray]:
        """Diagnostics at the current time on the output grid, canonical names and SI units.

        Atmospheric fields are ``(level, lat, lon)``, surface fields ``(lat, lon)``.
        """
        cfg = self.config
        psi = self.invert(self.Q)
        grids, U, V = self.sh.to_grid_with_winds(psi, psi, self.basis_out, self.nlon_out)
        u, v = U / self.cos_out, V / self.cos_out
        bt, bc = 0.5 * (grids[0] + grids[1]), 0.5 * (grids[0] - grids[1])
        ubt, ubc = 0.5 * (u[0] + u[1]), 0.5 * (u[0] - u[1])
        vbt, vbc = 0.5 * (v[0] + v[1]), 0.5 * (v[0] - v[1])
        t_anom = 2.0 * self.f_out * bc / (R_DRY * LOG_LAYERS) + self.t_offset
        out: dict[str, list[NDArray] | NDArray] = {name: [] for name in ATMOSPHERIC_VARIABLES}
        for S, phi_std, t_std in self._level_profile:
            out["geopotential"].append(phi_std + self.f_out * (bt + S * bc))
            out["temperature"].append(t_std + t_anom)
            out["u_component_of_wind"].append(ubt + S * ubc)
            out["v_component_of_wind"].append(vbt + S * vbc)
        for name in ATMOSPHERIC_VARIABLES:
            out[name] = np.stack(out[name])
        # Surface fields come from the lower layer, which feels the Ekman drag (the boundary
        # layer); its temperature is the thickness temperature at the 1000 hPa reference.
        rho0 = P0 / (R_DRY * T0)
        t1000 = self._t1000_std + t_anom
        hour = self.time.hour + self.time.minute / 60.0
        local = 2 * portable.PI * (hour + self.longitude[None, :] / 15.0 - 14.0) / 24.0
        amplitude = np.where(
            self.land > 0.5, cfg.diurnal_amplitude_land_k, cfg.diurnal_amplitude_sea_k
        )
        out["2m_temperature"] = (
            t1000 - LAPSE * self.orography + amplitude * self.cos_out * portable.cos(local)
        )
        out["mean_sea_level_pressure"] = P0 + rho0 * self.f_out * grids[1]
        out["10m_u_component_of_wind"] = 0.7 * u[1]
        out["10m_v_component_of_wind"] = 0.7 * v[1]
        out["sea_surface_temperature"] = np.where(self.land > 0.5, np.nan, self.sst)
        return out

    def statics(self) -> dict[str, NDArray]:
        """Static fields ``(lat, lon)``: surface geopotential and land-sea mask."""
        return {
            "geopotential_at_surface": GRAVITY * self.orography,
            "land_sea_mask": self.land.copy(),
        }

    def fingerprint(self) -> str:
        """SHA-256 of the current state (time, potential vorticity, slab ocean) and of its
        diagnostics: equal on two machines exactly when they computed the same bits."""
        digest = hashlib.sha256(str(self.time).encode())
        digest.update(np.ascontiguousarray(self.Q).tobytes())
        digest.update(self.sst.tobytes())
        for name, value in sorted(self.fields().items()):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(value, dtype=np.float64).tobytes())
        return digest.hexdigest()

    def run(self, n: int) -> Iterator[tuple[pd.Timestamp, dict[str, NDArray]]]:
        """Yields ``n`` states ``(time, fields)`` every ``step_hours``, starting with the
        current state."""
        for i in range(n):
            if i > 0:
                self.advance()
            yield self.time, self.fields()


def _day_of_year(time: pd.Timestamp) -> float:
    return time.day_of_year - 1 + (time.hour + time.minute / 60.0) / 24.0


# --------------------------------------------------------------------------------- writing
def _dataset(model: ToyEarth, times: list[pd.Timestamp], states: list[dict[str, NDArray]]):
    cfg = model.config
    coords = {
        "level": ("level", np.asarray(cfg.levels, dtype=np.int64)),
        "latitude": ("latitude", model.latitude.astype(np.float64)),
        "longitude": ("longitude", model.longitude.astype(np.float64)),
    }
    dims = {name: ("level", "latitude", "longitude") for name in ATMOSPHERIC_VARIABLES}
    dims.update({name: ("latitude", "longitude") for name in SURFACE_VARIABLES})
    return _coordinate_attrs(states_dataset(times, coords, dims, states, CF_ATTRS))


def _coordinate_attrs(ds):
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
    if "level" in ds.coords:
        ds["level"].attrs = {
            "units": "hPa",
            "standard_name": "air_pressure",
            "long_name": "pressure_level",
            "positive": "down",
            "axis": "Z",
        }
    if "time" in ds.coords:
        ds["time"].attrs = {"standard_name": "time", "long_name": "time", "axis": "T"}
    return ds


def write_toy_earth(
    config: ToyEarthConfig, out: str | Path, progress: bool = True, overwrite: bool = False
) -> Path:
    """Runs the toy Earth and writes a Zarr store in the canonical ERA5 layout.

    The store is written to a temporary sibling path and renamed into place when complete, so
    ``out`` is either absent or whole. ``out`` must be free (absent, an empty directory) or,
    with ``overwrite``, a toy-Earth store; anything else raises
    :class:`~appa.files.OutputExistsError` naming what is there, before the run. Returns
    ``out``.
    """
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    out = Path(out)
    claim_output(out, "toy-earth", overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = ToyEarth(config)
    n_total = round(config.years * YEAR_DAYS * 24 / config.step_hours)
    if n_total < 1:
        raise ValueError("years too small: no state to write")
    spin_outputs = math.ceil(config.spinup_days * 24 / config.step_hours)
    bar = tqdm(
        total=spin_outputs + n_total,
        desc="toy Earth",
        unit="state",
        disable=not progress,
        mininterval=1.0,
    )

    def first_block(ds):
        for name, value in model.statics().items():
            units, standard, long = CF_ATTRS[name]
            ds[name] = (("latitude", "longitude"), value.astype(np.float32))
            ds[name].attrs = {"units": units, "standard_name": standard, "long_name": long}
        ds.attrs = {
            "Conventions": "CF-1.8",
            "title": "Appa toy Earth",
            "source": "appa.data.toy_earth: two-layer quasi-geostrophic spectral model "
            f"T{model.sh.T} on a {model.sh.nlon}x{model.sh.nlat} Gaussian grid",
            "history": f"created {pd.Timestamp.now(tz='UTC').isoformat()} by appa",
            "appa_toy_earth_config": json.dumps(config.model_dump()),
            PRODUCT_ATTR: "toy-earth",
        }
        return ds

    try:
        # The model's matrices are small: BLAS threads cost CPU time and save no wall time, and
        # exact products give the same bits with any number of them.
        with threadpool_limits(limits=1, user_api="blas"):
            start = pd.Timestamp(config.start)
            while model.time < start - pd.Timedelta(seconds=1):
                model.advance()
                bar.update(1)
            write_states(
                out, "toy-earth", model.run(n_total), n_total,
                lambda times, states: _dataset(model, times, states), first_block,
                config.time_chunk, config.zarr_format, overwrite=overwrite,
                on_state=lambda: bar.update(1),
            )  # fmt: skip
    finally:
        bar.close()
    return out
