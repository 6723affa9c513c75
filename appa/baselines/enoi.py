"""Ensemble optimal interpolation (EnOI, Evensen 2003), the classical baseline.

The background is the climatology at the analysis time; its error covariance is the sample
covariance ``P = A^T A / (N - 1)`` of a static ensemble of ``N`` climatological anomalies
``A`` (training states minus the climatology at their time), localised in the horizontal by a
Gaspari-Cohn function of great-circle distance (Schur product; all channels share it, cross-
channel covariances are kept). States are standardised per channel (``(x - mean) / std``, the
statistics of the training period), on which the observation operator of
:mod:`appa.observations` is linear with standardised ``y`` and variances ``R``.

Update: ``K = (rho_xo o P H^T) (rho_oo o H P H^T + R)^-1``. The analysis is
``x_a = x_b + K (y - H x_b)``; the stochastic version (perturbed observations) draws ``M``
members ``x_b^k = x_b + a_k`` (``a_k`` further anomalies, independent of ``A``) and
``y^k = y + e_k`` (``e_k ~ N(0, R)``) and updates each the same way, so the ensemble samples
the analysis distribution ``N(x_a, (I - K H) P)`` when the prior is Gaussian.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from pydantic import Field

from appa.baselines.climatology import climatology_at, compute_climatology
from appa.config import StrictModel
from appa.data.spec import StateSpec, stack, unstack
from appa.data.stats import compute_statistics

__all__ = [
    "EARTH_RADIUS_KM",
    "EnOI",
    "EnOIConfig",
    "enoi_analyses",
    "gaspari_cohn",
    "great_circle_km",
]

EARTH_RADIUS_KM = 6371.0


def gaspari_cohn(distance: np.ndarray, half_width: float) -> np.ndarray:
    """Gaspari & Cohn (1999, eq. 4.10) fifth-order compactly supported correlation: 1 at 0,
    ``5/24`` at ``half_width``, 0 beyond ``2 * half_width`` (same units as ``distance``)."""
    if not half_width > 0:
        raise ValueError(f"half_width must be positive, got {half_width}")
    z = np.abs(np.asarray(distance, dtype=np.float64)) / half_width
    out = np.zeros_like(z)
    near = z <= 1
    zn = z[near]
    out[near] = -0.25 * zn**5 + 0.5 * zn**4 + 0.625 * zn**3 - 5 / 3 * zn**2 + 1
    far = (z > 1) & (z < 2)
    zf = z[far]
    out[far] = zf**5 / 12 - 0.5 * zf**4 + 0.625 * zf**3 + 5 / 3 * zf**2 - 5 * zf + 4 - 2 / (3 * zf)
    return np.clip(out, 0.0, 1.0)


def great_circle_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distances (km) between points ``(lat1, lon1)`` and ``(lat2, lon2)`` in
    degrees (broadcasting; haversine formula, stable at short range)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


class EnOI:
    """EnOI analyses on standardised states ``(C, H, W)`` of one grid.

    Arguments:
        anomalies: Static ensemble ``(N, C, H, W)`` of standardised anomalies (NaN not allowed:
            fill masked cells with 0, i.e. no background variance there).
        latitude, longitude: The grid (degrees), for the localisation distances.
        localisation_km: Gaspari-Cohn half-width (support twice that); ``None`` for none.
        alpha: Scales the ensemble covariance (``P = alpha^2 A^T A / (N - 1)``).
    """

    def __init__(
        self,
        anomalies: np.ndarray,
        latitude: np.ndarray,
        longitude: np.ndarray,
        localisation_km: float | None = None,
        alpha: float = 1.0,
    ) -> None:
        a = np.asarray(anomalies, dtype=np.float64)
        if a.ndim != 4 or a.shape[0] < 2:
            raise ValueError(f"anomalies must be (N >= 2, C, H, W), got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("anomalies contain NaN or inf: fill masked cells with 0")
        if a.shape[2:] != (len(latitude), len(longitude)):
            raise ValueError(f"anomalies {a.shape} do not match the grid")
        self.shape = a.shape[1:]
        self.size = a.shape[0]
        self.anomalies = torch.from_numpy(alpha * a.reshape(a.shape[0], -1))
        lat2, lon2 = np.meshgrid(latitude, longitude, indexing="ij")
        self.cell_lat, self.cell_lon = lat2.ravel(), lon2.ravel()
        self.localisation_km = localisation_km

    def analyse(
        self,
        background: np.ndarray,
        operator,
        obs_latitude: np.ndarray,
        obs_longitude: np.ndarray,
        perturbations: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Analysis ``(M, C, H, W)`` from the standardised ``background`` ``(C, H, W)``.

        ``operator`` maps ``(B, C, H, W)`` to ``(B, m)`` and carries standardised ``y`` and
        ``noise_variance`` (an :class:`appa.observations.ObservationOperator` built with
        ``stats`` and ``time_axis=False``). Without ``perturbations`` the result is the single
        deterministic analysis (``M = 1``); with ``perturbations`` ``(M, C, H, W)`` each member
        gets its background perturbation and a draw of observation noise (``rng``).
        """
        xb = torch.as_tensor(np.asarray(background, dtype=np.float64)).reshape(1, -1)
        if xb.shape[1] != self.anomalies.shape[1]:
            raise ValueError(f"background {np.shape(background)} does not match {self.shape}")
        y = operator.y.to(torch.float64)
        r = operator.noise_variance.to(torch.float64)
        m = y.numel()
        if perturbations is None:
            states = xb
            noise = torch.zeros(1, m, dtype=torch.float64)
        else:
            p = torch.as_tensor(np.asarray(perturbations, dtype=np.float64))
            states = xb + p.reshape(p.shape[0], -1)
            rng = rng if rng is not None else np.random.default_rng()
            noise = torch.from_numpy(rng.standard_normal((states.shape[0], m))) * r.sqrt()
        if m == 0:
            return states.reshape(-1, *self.shape).numpy()

        def apply(x: torch.Tensor) -> torch.Tensor:
            return operator(x.reshape(x.shape[0], *self.shape))

        ha = apply(self.anomalies)  # (N, m)
        innovation = (y + noise) - apply(states)  # (M, m)
        n1 = self.size - 1
        hpht = ha.T @ ha / n1
        if self.localisation_km is not None:
            d_oo = great_circle_km(
                obs_latitude[:, None], obs_longitude[:, None], obs_latitude, obs_longitude
            )
            hpht = hpht * torch.from_numpy(gaspari_cohn(d_oo, self.localisation_km))
        s = hpht + torch.diag(r)
        chol = torch.linalg.cholesky(s)
        w = torch.cholesky_solve(innovation.T, chol)  # (m, M)
        hw = int(np.prod(self.shape[1:]))
        channels = self.shape[0]
        rho = None
        if self.localisation_km is not None:
            d_xo = great_circle_km(
                self.cell_lat[:, None], self.cell_lon[:, None], obs_latitude, obs_longitude
            )
            rho = torch.from_numpy(gaspari_cohn(d_xo, self.localisation_km))  # (HW, m)
        increments = torch.empty(channels, hw, w.shape[1], dtype=torch.float64)
        for c in range(channels):
            a_c = self.anomalies[:, c * hw : (c + 1) * hw]  # (N, HW)
            pht = a_c.T @ ha / n1  # (HW, m)
            if rho is not None:
                pht = pht * rho
            increments[c] = pht @ w
        inc = increments.permute(2, 0, 1).reshape(w.shape[1], -1)
        return (states + inc).reshape(-1, *self.shape).numpy()


class EnOIConfig(StrictModel):
    """The EnOI baseline's ensemble and its draws."""

    ensemble_size: int = Field(96, ge=2, description="static ensemble of anomalies (N)")
    members: int = Field(8, ge=1, description="analysis members (1: deterministic EnOI)")
    localisation_km: float | None = Field(2000.0, gt=0, description="Gaspari-Cohn half-width")
    alpha: float = Field(1.0, gt=0, description="ensemble covariance scaling")
    seed: int = Field(0, description="seed of the ensemble's draws")


def enoi_analyses(
    ds: xr.Dataset,
    times: pd.DatetimeIndex,
    observations: str | Path,
    spec: StateSpec,
    train_period: tuple[str, str],
    window_days: int,
    config: EnOIConfig,
) -> xr.Dataset:
    """EnOI analyses ``(member, time, ...)`` of ``ds``'s grid at ``times`` from the observation
    store ``observations`` (background: climatology of ``train_period``, smoothed over
    ``window_days``; static ensemble and member perturbations: anomalies of that period).
    Observations of channels outside ``spec`` are left out."""
    from tqdm.auto import tqdm

    from appa.observations import (
        ObservationError,
        ObservationOperator,
        assign_times,
        read_observations,
    )

    period = train_period
    train = ds.sel(time=slice(*period)).load()
    clim = compute_climatology(train, period, window_days)
    stats = compute_statistics(train, spec, period)
    mean, std = stats.mean[:, None, None], stats.std[:, None, None]

    rng = np.random.default_rng(config.seed)
    n_train = train.sizes["time"]
    need = config.ensemble_size + (config.members if config.members > 1 else 0)
    if n_train < need:
        raise ValueError(f"{n_train} training states; EnOI needs at least {need}")
    order = rng.permutation(n_train)
    static, pool = order[: config.ensemble_size], order[config.ensemble_size :]

    def anomalies(index: np.ndarray) -> np.ndarray:
        sub = train.isel(time=np.sort(index))
        x, _ = stack(sub, spec)
        c, _ = stack(climatology_at(clim, sub["time"].values), spec)
        z = (x.numpy().astype(np.float64) - c.numpy()) / std
        return np.nan_to_num(z, nan=0.0)

    enoi = EnOI(
        anomalies(static),
        ds.latitude.values,
        ds.longitude.values,
        config.localisation_km,
        config.alpha,
    )
    step = (
        pd.Timedelta(ds["time"].values[1] - ds["time"].values[0])
        if ds.sizes["time"] > 1
        else (pd.Timedelta(hours=6))
    )
    table = read_observations(observations, times[0] - step / 2, times[-1] + step / 2)
    keep = np.zeros(table.sizes["obs"], dtype=bool)
    variables = table["variable"].values.astype(str)
    levels = table["level"].values
    for name, level in spec.channels:
        match = variables == name
        keep |= match & (np.isnan(levels) if level is None else levels == level)
    table = table.isel(obs=np.flatnonzero(keep))
    # the time rule every reader shares: the nearest analysis, halfway between two the later
    state = assign_times(table["time"].values, times, step / 2, step)

    background, _ = stack(climatology_at(clim, times), spec)
    background = background.numpy().astype(np.float64)
    land = np.isnan(background)
    zb = np.nan_to_num((background - mean) / std, nan=0.0)
    out = np.empty((config.members, len(times), *zb.shape[1:]), dtype=np.float32)
    for k, t in enumerate(tqdm(times, desc="EnOI", unit="analysis", mininterval=1.0)):
        sel = np.flatnonzero(state == k)
        perturbations = None
        if config.members > 1:
            perturbations = anomalies(rng.choice(pool, config.members, replace=False))
        if sel.size == 0:
            z = zb[k][None] + (0 if perturbations is None else perturbations)
        else:
            sub = table.isel(obs=sel)
            try:
                op = ObservationOperator(
                    sub, spec, ds.latitude.values, ds.longitude.values, [t], stats=stats,
                    time_tolerance=step / 2, time_axis=False, dtype=torch.float64,
                )  # fmt: skip
            except ObservationError as error:
                raise ObservationError(f"analysis at {t}: {error}") from None
            z = enoi.analyse(
                zb[k], op, sub["latitude"].values, sub["longitude"].values, perturbations, rng
            )
        x = z * std + mean
        x[:, land[k]] = np.nan
        out[:, k] = x
    coords = {
        "member": np.arange(config.members),
        "time": times.values,
        "latitude": ds.latitude.values,
        "longitude": ds.longitude.values,
    }
    return unstack(out, spec, coords)
