"""Classical baselines of a sea's 3-D state from its surface: climatology and the regression
of vertical profiles on the surface fields, with or without profiling floats.

Both write ensembles, so spread/skill and probabilities (of bottom hypoxia) exist for them as
for sampled archives.

**Climatology** (:func:`sea_climatology`): the smoothed climatology by day of year of the
training period (:func:`appa.baselines.climatology.compute_climatology`; NaN below the sea
floor stays NaN). Member ``k`` adds to it the anomaly (state minus climatology) of a training
day drawn within ``+-window_days`` of the target's day of year, so the members carry the
climatological spread with its spatial and vertical structure.

**Profile regression** (:class:`ProfileRegression`, :func:`sea_regression`):

1. Surface analysis of each day: an optimal interpolation (OI) of the day's satellite boxes
   (SST, SSS, log10 chlorophyll, SSH) as anomalies from the climatology, with a Gaussian
   correlation in distance whose length is fitted to the training anomalies of each field
   (:func:`correlation_length_km`), background variances those of the training anomalies per
   cell, each observation the area-weighted mean of the cells of its box. Cloud gaps are
   filled by the neighbouring boxes' anomalies where the correlation reaches, and fall back to
   the climatology (anomaly 0) beyond; climatology alone would throw away the information of
   the nearby clear boxes, and the OI costs a small solve per field and day.
2. Predictors per column: the four standardised surface anomalies, each also times the sine
   and cosine of the day of year (the surface-to-depth link changes with the season: a summer
   mixed layer hides the subsurface from the surface), plus those two harmonics and a
   constant: 15 features.
3. Targets per column type (the columns with the same number of sea levels): the
   concatenated standardised anomalies of temperature, salinity and oxygen on those levels;
   their leading EOFs over all columns and training days of the type; a ridge regression of
   the EOF amplitudes on the predictors. The training predictors come from the same surface
   analysis of the training days' observations, so noise and cloud gaps are part of the fit.
4. Members: the prediction plus the regression residual (full 3-D field, truth minus
   prediction) of a training day drawn within ``+-window_days`` of the day of year.
5. Floats (optional): a local correction of the residual, level by level and variable by
   variable. The innovations (float minus prediction at the float's cell, in units of the
   residual's standard deviation there) of the profiles within ``+-float_window_days`` are
   spread by an OI with a correlation ``exp(-d^2 / 2 L^2) exp(-|dt| / tau)`` (``L`` fitted
   to the training residuals, ``tau`` configured); members are shrunk towards the corrected
   mean by the square root of the OI's posterior variance ratio. Floats never reach the
   shelf (they drift over water deeper than 200 m), so they correct the basin, not the
   shelf's bottom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import Field

from appa.baselines.climatology import climatology_at, compute_climatology
from appa.baselines.enoi import great_circle_km
from appa.config import StrictModel

__all__ = [
    "PROFILE_VARIABLES",
    "SURFACE_FIELDS",
    "ProfileRegression",
    "SeaRegressionConfig",
    "SurfaceOI",
    "correlation_length_km",
    "fit_profile_regression",
    "sea_climatology",
    "sea_regression",
    "season_features",
]

PROFILE_VARIABLES = ("temperature", "salinity", "oxygen")
# surface field -> (platform, table variable)
SURFACE_FIELDS = {
    "sst": ("sst", "temperature"),
    "sss": ("sss", "salinity"),
    "log10_chlorophyll": ("ocean_colour", "chlorophyll"),
    "ssh": ("altimetry", "sea_surface_height"),
}
FLOAT_PLATFORM = "argo"
YEAR_DAYS = 365.2425


class SeaRegressionConfig(StrictModel):
    """The profile regression's settings (see :mod:`appa.baselines.ocean`)."""

    modes: int = Field(8, ge=1, description="EOFs of the profile anomalies per column type")
    ridge: float = Field(
        1e-3, ge=0, description="ridge penalty per sample on standardised predictors"
    )
    members: int = Field(16, ge=1, description="members: prediction + drawn training residuals")
    floats: bool = Field(True, description="correct the residual with the float profiles")
    float_window_days: float = Field(5.0, ge=0, description="floats used within +- these days")
    float_time_scale_days: float = Field(10.0, gt=0, description="tau of the float correction")
    train_every: int = Field(2, ge=1, description="one training day in this many for the fit")
    seed: int = Field(0, description="seed of the members' draws")


# ------------------------------------------------------------------------------ helpers
def _day_of_year(times: Sequence | np.ndarray) -> np.ndarray:
    return pd.DatetimeIndex(np.atleast_1d(times)).day_of_year.values.astype(np.float64)


def season_features(predictors: np.ndarray, day_of_year: np.ndarray) -> np.ndarray:
    """Regression features ``(n, 3 p + 3)`` from standardised surface anomalies ``(n, p)`` at
    days of year ``(n,)``: the anomalies, the anomalies times ``sin`` and ``cos`` of the year's
    phase, those two harmonics and a constant."""
    phase = 2 * np.pi * np.asarray(day_of_year, dtype=np.float64) / YEAR_DAYS
    s, c = np.sin(phase)[:, None], np.cos(phase)[:, None]
    p = np.asarray(predictors, dtype=np.float64)
    return np.concatenate([p, p * s, p * c, s, c, np.ones_like(s)], axis=1)


def _draw_days(
    target_doy: np.ndarray, pool_doy: np.ndarray, window_days: int, n: int, rng
) -> np.ndarray:
    """For each target day, ``n`` indices into the pool whose day of year lies within
    ``+-window_days`` (circularly); without replacement when enough are there."""
    out = np.empty((len(target_doy), n), dtype=np.int64)
    for i, d in enumerate(target_doy):
        gap = np.abs(pool_doy - d)
        gap = np.minimum(gap, 366 - gap)
        near = np.flatnonzero(gap <= window_days)
        if near.size == 0:
            near = np.argsort(gap)[: max(n, 1)]
        out[i] = rng.choice(near, n, replace=near.size < n)
    return out


def correlation_length_km(
    anomalies: np.ndarray,
    latitude: np.ndarray,
    longitude: np.ndarray,
    candidates_km: Sequence[float] = (20, 30, 40, 60, 80, 100, 130, 160, 200, 260, 330, 400),
    max_distance_km: float = 600.0,
    cells: int = 400,
    seed: int = 0,
) -> float:
    """The length ``L`` (km) among ``candidates_km`` whose Gaussian ``exp(-d^2 / 2 L^2)`` fits
    best (least squares) the correlations over time of ``anomalies`` ``(n, lat, lon)`` (NaN
    off the sea) between pairs of up to ``cells`` sea cells closer than ``max_distance_km``."""
    a = np.asarray(anomalies, dtype=np.float64)
    if a.ndim != 3 or a.shape[0] < 3:
        raise ValueError(f"anomalies must be (n >= 3, lat, lon), got {a.shape}")
    lat2, lon2 = np.meshgrid(latitude, longitude, indexing="ij")
    sea = np.isfinite(a).all(axis=0) & (a.std(axis=0) > 0)
    index = np.flatnonzero(sea.ravel())
    if index.size < 3:
        raise ValueError("fewer than 3 sea cells with varying anomalies")
    rng = np.random.default_rng(seed)
    if index.size > cells:
        index = np.sort(rng.choice(index, cells, replace=False))
    z = a.reshape(a.shape[0], -1)[:, index]
    z = (z - z.mean(axis=0)) / z.std(axis=0)
    corr = z.T @ z / z.shape[0]
    la, lo = lat2.ravel()[index], lon2.ravel()[index]
    d = great_circle_km(la[:, None], lo[:, None], la[None, :], lo[None, :])
    pairs = (d > 0) & (d < max_distance_km)
    errors = [
        np.sum((corr[pairs] - np.exp(-0.5 * (d[pairs] / L) ** 2)) ** 2) for L in candidates_km
    ]
    return float(candidates_km[int(np.argmin(errors))])


# ------------------------------------------------------------------------------ climatology
def _time_dependent(ds: xr.Dataset) -> list[str]:
    return [v for v in ds.data_vars if "time" in ds[v].dims]


def _covered(clim_at: xr.Dataset, name: str, sea: np.ndarray, window_days: int) -> None:
    """Raises naming the first day whose climatology is NaN on the sea: no training day of
    that day of year within the window."""
    values = clim_at[name].values
    hole = np.isnan(values[..., sea]).reshape(values.shape[0], -1).any(axis=1)
    if hole.any():
        day = pd.Timestamp(clim_at["time"].values[np.argmax(hole)])
        raise ValueError(
            f"no training day within +-{window_days} days of the day of year of {day:%Y-%m-%d}: "
            "widen window_days or the training period"
        )


def sea_climatology(
    truth: xr.Dataset,
    period: tuple[str, str],
    times: Sequence | np.ndarray,
    window_days: int = 15,
    members: int = 16,
    seed: int = 0,
    variables: Sequence[str] | None = None,
) -> xr.Dataset:
    """Climatology ensemble ``(member, time, [level,] latitude, longitude)`` of ``variables``
    (default: every time-dependent variable of ``truth``) at ``times``: the smoothed
    climatology of ``period`` plus, for each member, the anomaly of a training day near the
    same day of year (one member: the climatology alone). NaN where the truth is (land, below
    the sea floor)."""
    names = list(variables) if variables is not None else _time_dependent(truth)
    missing = [v for v in names if v not in truth.data_vars]
    if missing:
        raise KeyError(f"variables {missing} not in the truth")
    train = truth[names].sel(time=slice(*period)).load()
    clim = compute_climatology(train, period, window_days)
    times = pd.DatetimeIndex(np.atleast_1d(times))
    mean = climatology_at(clim, times).load()
    sea = np.isfinite(train[names[0]].values).any(axis=0)
    _covered(mean, names[0], sea, window_days)
    if members == 1:
        return mean.expand_dims(member=[0])
    train_times = train["time"].values
    rng = np.random.default_rng(seed)
    draws = _draw_days(_day_of_year(times), _day_of_year(train_times), window_days, members, rng)
    out = {}
    for name in names:
        anomaly = (train[name] - climatology_at(clim[[name]], train_times)[name]).values
        base = mean[name].values
        out[name] = (
            ("member", *mean[name].dims),
            np.stack([base + anomaly[draws[:, k]] for k in range(members)]).astype(np.float32),
        )
    coords = {"member": np.arange(members), **{k: v for k, v in mean.coords.items()}}
    return xr.Dataset(out, coords=coords)


# ------------------------------------------------------------------------------ surface OI
@dataclass
class _Boxes:
    """The boxes a surface field is observed on: cells each averages (``matrix`` ``(nbox,
    nsea)``, area weights summing to 1) and a key per box."""

    keys: dict[tuple[float, float], int]
    matrix: np.ndarray


class SurfaceOI:
    """Optimal interpolation of one surface field's box observations onto the sea's cells.

    Arguments:
        latitude, longitude: The grid (degrees).
        sea: Sea cells ``(lat, lon)`` (bool).
        sigma: Background error standard deviation per cell ``(lat, lon)`` (field units).
        length_km: Gaussian correlation length.
    """

    def __init__(
        self,
        latitude: np.ndarray,
        longitude: np.ndarray,
        sea: np.ndarray,
        sigma: np.ndarray,
        length_km: float,
    ) -> None:
        self.lat2, self.lon2 = np.meshgrid(latitude, longitude, indexing="ij")
        self.sea = np.asarray(sea, dtype=bool)
        self.cells = np.flatnonzero(self.sea.ravel())
        la, lo = self.lat2.ravel()[self.cells], self.lon2.ravel()[self.cells]
        d = great_circle_km(la[:, None], lo[:, None], la[None, :], lo[None, :])
        s = np.asarray(sigma, dtype=np.float64).ravel()[self.cells]
        if not np.all(np.isfinite(s)):
            raise ValueError("background standard deviation is NaN on a sea cell")
        self.sigma = s
        self.B = s[:, None] * np.exp(-0.5 * (d / length_km) ** 2) * s[None, :]
        self.length_km = length_km
        self._boxes: _Boxes | None = None
        self._BHt: np.ndarray | None = None
        self._HBHt: np.ndarray | None = None

    def _box_rows(self, lat: np.ndarray, lon: np.ndarray, footprint: np.ndarray) -> np.ndarray:
        la, lo = self.lat2.ravel()[self.cells], self.lon2.ravel()[self.cells]
        half = np.where(np.isfinite(footprint), footprint, 0.0)[:, None] / 2 + 1e-6
        inside = (np.abs(la[None, :] - lat[:, None]) <= half) & (
            np.abs(lo[None, :] - lon[:, None]) <= half
        )
        # a point observation (footprint 0) reads its nearest cell
        empty = ~inside.any(axis=1)
        if empty.any():
            d = great_circle_km(lat[empty, None], lon[empty, None], la[None, :], lo[None, :])
            inside[np.flatnonzero(empty), np.argmin(d, axis=1)] = True
        w = inside * np.cos(np.radians(la))[None, :]
        return w / w.sum(axis=1, keepdims=True)

    def prepare(self, lat: np.ndarray, lon: np.ndarray, footprint: np.ndarray) -> None:
        """Fixes the set of boxes (every distinct observation location of the field)."""
        keys: dict[tuple[float, float], int] = {}
        first = []
        for i, (a, b) in enumerate(zip(np.round(lat, 5), np.round(lon, 5), strict=True)):
            if (a, b) not in keys:
                keys[(a, b)] = len(keys)
                first.append(i)
        first = np.asarray(first, dtype=np.int64)
        H = self._box_rows(lat[first], lon[first], np.asarray(footprint)[first])
        self._boxes = _Boxes(keys, H)
        self._BHt = self.B @ H.T
        self._HBHt = H @ self._BHt

    def box_index(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Index of each observation's box (``prepare`` must have seen it)."""
        if self._boxes is None:
            raise RuntimeError("call prepare() with the field's observation locations first")
        keys = self._boxes.keys
        return np.array(
            [keys[(a, b)] for a, b in zip(np.round(lat, 5), np.round(lon, 5), strict=True)],
            dtype=np.int64,
        )

    def box_means(self, field: np.ndarray, index: np.ndarray) -> np.ndarray:
        """The boxes' means ``(n,)`` of a field ``(lat, lon)``."""
        return self._boxes.matrix[index] @ np.asarray(field, np.float64).ravel()[self.cells]

    def analyse(self, innovation: np.ndarray, error_std: np.ndarray, index: np.ndarray):
        """The analysed anomaly ``(lat, lon)`` (NaN off the sea; 0 without observations) from
        innovations ``(n,)`` (observation minus the background's box mean) on boxes
        ``index``, and the posterior standard deviation ``(lat, lon)``."""
        out = np.full(self.sea.size, np.nan)
        std = np.full(self.sea.size, np.nan)
        if len(index) == 0:
            out[self.cells] = 0.0
            std[self.cells] = self.sigma
            return out.reshape(self.sea.shape), std.reshape(self.sea.shape)
        # several observations of one box (a day's repeats) are averaged first
        boxes, inverse = np.unique(index, return_inverse=True)
        count = np.bincount(inverse)
        d = np.bincount(inverse, weights=innovation) / count
        r = np.bincount(inverse, weights=np.asarray(error_std) ** 2) / count**2
        S = self._HBHt[np.ix_(boxes, boxes)] + np.diag(r)
        G = self._BHt[:, boxes]
        chol = np.linalg.cholesky(S)
        w = np.linalg.solve(chol.T, np.linalg.solve(chol, d))
        out[self.cells] = G @ w
        v = np.linalg.solve(chol, G.T)
        std[self.cells] = np.sqrt(np.clip(self.sigma**2 - (v * v).sum(axis=0), 0.0, None))
        return out.reshape(self.sea.shape), std.reshape(self.sea.shape)


def _surface_fields(ds: xr.Dataset) -> xr.Dataset:
    """The four surface fields ``(time, lat, lon)`` of a sea's states: the first level's
    temperature, salinity and log10 chlorophyll, and the sea-surface height."""
    top = ds.isel(level=0)
    missing = [v for v in ("temperature", "salinity", "chlorophyll", "sea_surface_height")
               if v not in ds.data_vars]  # fmt: skip
    if missing:
        raise KeyError(f"the sea's states lack {missing}")
    chl = top["chlorophyll"]
    return xr.Dataset(
        {
            "sst": top["temperature"].drop_vars("level", errors="ignore"),
            "sss": top["salinity"].drop_vars("level", errors="ignore"),
            "log10_chlorophyll": np.log10(chl.where(chl > 0)).drop_vars("level", errors="ignore"),
            "ssh": ds["sea_surface_height"],
        }
    )


def _field_observations(table: xr.Dataset, field: str) -> dict[str, np.ndarray]:
    platform, variable = SURFACE_FIELDS[field]
    p = table["platform"].values.astype(str)
    v = table["variable"].values.astype(str)
    if field == "log10_chlorophyll":
        sel = (p == platform) & ((v == "chlorophyll") | (v == "log10_chlorophyll"))
    else:
        sel = (p == platform) & (v == variable)
    idx = np.flatnonzero(sel)
    value = table["value"].values[idx].astype(np.float64)
    error = table["error_std"].values[idx].astype(np.float64)
    if field == "log10_chlorophyll":
        relative = v[idx] == "chlorophyll"
        if np.any(value[relative] <= 0):
            raise ValueError("ocean colour: a chlorophyll observation <= 0")
        # the first-order error of a log-normal written as relative: ln(10) sigma value
        error = np.where(relative, error / (np.log(10.0) * np.abs(value)), error)
        value = np.where(relative, np.log10(np.abs(value)), value)
    footprint = (
        table["footprint"].values[idx] if "footprint" in table else np.zeros(idx.size)
    ).astype(np.float64)
    return {
        "day": pd.DatetimeIndex(table["time"].values[idx]).normalize().values,
        "lat": table["latitude"].values[idx].astype(np.float64),
        "lon": table["longitude"].values[idx].astype(np.float64),
        "footprint": footprint,
        "value": value,
        "error": error,
    }


# ------------------------------------------------------------------------------ regression
@dataclass
class _ColumnType:
    levels: int  # sea levels of these columns
    cells: np.ndarray  # flat indices of the columns
    mean: np.ndarray  # (3 * levels,) of the standardised-anomaly targets (about 0)
    std: np.ndarray  # (3 * levels,) physical units per target
    eofs: np.ndarray  # (3 * levels, K)
    coefficients: np.ndarray  # (features, K)


@dataclass
class ProfileRegression:
    """EOF-ridge regressions of the profile anomalies (temperature, salinity, oxygen) on the
    surface features, one per column type (number of sea levels)."""

    types: list[_ColumnType]
    shape: tuple[int, int, int]  # (level, lat, lon)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Profile anomalies ``(n, 3, level, lat, lon)`` (NaN off the sea) from features
        ``(n, lat * lon, F)``."""
        L, ny, nx = self.shape
        n = features.shape[0]
        out = np.full((n, 3, L, ny * nx), np.nan, dtype=np.float64)
        for t in self.types:
            f = features[:, t.cells]  # (n, c, F)
            z = (f @ t.coefficients) @ t.eofs.T  # (n, c, 3 k)
            x = (z + t.mean) * t.std
            x = x.reshape(n, len(t.cells), 3, t.levels).transpose(0, 2, 3, 1)
            out[:, :, : t.levels, t.cells] = x
        return out.reshape(n, 3, L, ny, nx)


def fit_profile_regression(
    features: np.ndarray,
    targets: np.ndarray,
    sea_levels: np.ndarray,
    modes: int,
    ridge: float,
) -> ProfileRegression:
    """Fits :class:`ProfileRegression` on training features ``(n, lat * lon, F)`` and profile
    anomalies ``targets`` ``(n, 3, level, lat, lon)`` (NaN below the floor), with
    ``sea_levels`` ``(lat, lon)`` the number of sea levels of each column (0 on land).

    For each column type: targets standardised per element, EOFs from the eigenvectors of
    their covariance (the leading ``modes``, fewer when the profile is shorter), amplitudes
    regressed by ridge (``(F^T F + ridge n I)^-1 F^T A``). Exact, with ``ridge = 0``, when the
    targets are linear in the features with a rank of at most ``modes``."""
    n, _, L, ny, nx = targets.shape
    if features.shape[:2] != (n, ny * nx):
        raise ValueError(f"features {features.shape} do not match targets {targets.shape}")
    flat = targets.reshape(n, 3, L, ny * nx)
    levels = np.asarray(sea_levels).ravel()
    types = []
    for k in np.unique(levels[levels > 0]):
        cells = np.flatnonzero(levels == k)
        y = flat[:, :, :k, cells].transpose(0, 3, 1, 2).reshape(n * len(cells), 3 * k)
        if not np.all(np.isfinite(y)):
            raise ValueError(f"profile targets hold NaN above the floor in columns of {k} levels")
        mean = y.mean(axis=0)
        std = y.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        z = (y - mean) / std
        cov = z.T @ z / z.shape[0]
        _values, vectors = np.linalg.eigh(cov)
        keep = min(modes, 3 * k)
        eofs = vectors[:, ::-1][:, :keep]
        amplitudes = z @ eofs
        f = features[:, cells].reshape(n * len(cells), -1)
        gram = f.T @ f + ridge * f.shape[0] * np.eye(f.shape[1])
        coefficients = np.linalg.lstsq(gram, f.T @ amplitudes, rcond=None)[0]
        types.append(_ColumnType(int(k), cells, mean / std, std, eofs, coefficients))
    return ProfileRegression(types, (L, ny, nx))


# ------------------------------------------------------------------------------ the baseline
@dataclass
class _Surface:
    """Surface analyses of a set of days: standardised anomalies ``(n, 4, lat, lon)``."""

    anomalies: np.ndarray
    days: np.ndarray


class _SurfaceAnalyser:
    def __init__(self, train_surface: xr.Dataset, clim: xr.Dataset, table: xr.Dataset) -> None:
        self.clim = clim
        lat, lon = train_surface["latitude"].values, train_surface["longitude"].values
        anomalies = train_surface - climatology_at(clim, train_surface["time"].values)
        self.std = {}
        self.oi = {}
        self.obs = {}
        self.lengths = {}
        for field in SURFACE_FIELDS:
            a = anomalies[field].values
            sea = np.isfinite(a).all(axis=0)
            std = np.full(sea.shape, np.nan)
            std[sea] = a[:, sea].std(axis=0)
            self.std[field] = std
            self.lengths[field] = correlation_length_km(a, lat, lon)
            self.oi[field] = SurfaceOI(lat, lon, sea, std, self.lengths[field])
            obs = _field_observations(table, field)
            if obs["value"].size:
                self.oi[field].prepare(obs["lat"], obs["lon"], obs["footprint"])
                obs["box"] = self.oi[field].box_index(obs["lat"], obs["lon"])
            self.obs[field] = obs

    def analyse(self, days: pd.DatetimeIndex) -> _Surface:
        days = pd.DatetimeIndex(days).normalize()
        clim = climatology_at(self.clim, days)
        out = np.empty((len(days), len(SURFACE_FIELDS), *self.std["sst"].shape))
        for j, field in enumerate(SURFACE_FIELDS):
            obs, oi = self.obs[field], self.oi[field]
            order = np.argsort(obs["day"], kind="stable")
            sorted_days = obs["day"][order]
            background = clim[field].values
            for i, day in enumerate(days.values):
                lo, hi = np.searchsorted(sorted_days, [day, day + np.timedelta64(1, "D")])
                sel = order[lo:hi]
                if sel.size:
                    box = obs["box"][sel]
                    innovation = obs["value"][sel] - oi.box_means(background[i], box)
                    anomaly, _ = oi.analyse(innovation, obs["error"][sel], box)
                else:
                    anomaly, _ = oi.analyse(np.zeros(0), np.zeros(0), np.zeros(0, np.int64))
                out[i, j] = anomaly / self.std[field]
        return _Surface(out, days.values)


def _features(surface: _Surface) -> np.ndarray:
    n, p, ny, nx = surface.anomalies.shape
    predictors = np.nan_to_num(surface.anomalies).transpose(0, 2, 3, 1).reshape(n * ny * nx, p)
    doy = np.repeat(_day_of_year(surface.days), ny * nx)
    return season_features(predictors, doy).reshape(n, ny * nx, -1)


def _profiles(ds: xr.Dataset) -> np.ndarray:
    return np.stack([ds[v].values for v in PROFILE_VARIABLES], axis=1).astype(np.float64)


def _float_correction(
    mean: np.ndarray,
    times: pd.DatetimeIndex,
    table: xr.Dataset,
    residual_std: np.ndarray,
    lengths: Sequence[float],
    levels: np.ndarray,
    latitude: np.ndarray,
    longitude: np.ndarray,
    config: SeaRegressionConfig,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Corrected mean ``(n, 3, L, lat, lon)``, the ratio of posterior to prior residual
    standard deviation (same shape, 1 without floats nearby) and the profiles used."""
    p = table["platform"].values.astype(str)
    v = table["variable"].values.astype(str)
    idx = np.flatnonzero(p == FLOAT_PLATFORM)
    ratio = np.ones_like(mean, dtype=np.float32)
    if idx.size == 0:
        return mean, ratio, 0
    days = pd.DatetimeIndex(table["time"].values[idx]).normalize().values
    lat = table["latitude"].values[idx].astype(np.float64)
    lon = table["longitude"].values[idx].astype(np.float64)
    level = table["level"].values[idx].astype(np.float64)
    value = table["value"].values[idx].astype(np.float64)
    error = table["error_std"].values[idx].astype(np.float64)
    day_index = {d: i for i, d in enumerate(pd.DatetimeIndex(times).normalize().values)}
    in_period = np.array([d in day_index for d in days])
    k_level = np.searchsorted(levels, level)
    exact = (k_level < len(levels)) & np.isclose(levels[np.minimum(k_level, len(levels) - 1)],
                                                  level)  # fmt: skip
    if not np.all(exact | ~in_period):
        bad = level[~exact & in_period][0]
        raise ValueError(f"float sample at {bad} m is not on a state level (use the levels)")
    iy = np.abs(latitude[None, :] - lat[:, None]).argmin(axis=1)
    ix = np.abs(longitude[None, :] - lon[:, None]).argmin(axis=1)
    lat2, lon2 = np.meshgrid(latitude, longitude, indexing="ij")
    out = mean.copy()
    tau = config.float_time_scale_days
    profiles = {(d, a, b) for d, a, b, keep in zip(days, lat, lon, in_period, strict=True) if keep}
    for c, name in enumerate(PROFILE_VARIABLES):
        L = lengths[c]
        var_sel = in_period & (v[idx] == name)
        for k in range(len(levels)):
            sel = np.flatnonzero(var_sel & (k_level == k))
            if sel.size == 0:
                continue
            t_obs = np.array([day_index[d] for d in days[sel]])
            sigma_obs = residual_std[c, k, iy[sel], ix[sel]]
            good = np.isfinite(sigma_obs) & (sigma_obs > 0)
            sel, t_obs, sigma_obs = sel[good], t_obs[good], sigma_obs[good]
            if sel.size == 0:
                continue
            innovation = (value[sel] - mean[t_obs, c, k, iy[sel], ix[sel]]) / sigma_obs
            if not np.all(np.isfinite(innovation)):
                raise ValueError(f"float {name} at {levels[k]} m falls below the floor")
            r = (error[sel] / sigma_obs) ** 2
            d_oo = great_circle_km(lat[sel, None], lon[sel, None], lat[None, sel], lon[None, sel])
            sea = np.isfinite(residual_std[c, k]) & (residual_std[c, k] > 0)
            cy, cx = np.nonzero(sea)
            d_xo = great_circle_km(lat2[sea][:, None], lon2[sea][:, None], lat[sel], lon[sel])
            space_oo = np.exp(-0.5 * (d_oo / L) ** 2)
            space_xo = np.exp(-0.5 * (d_xo / L) ** 2)
            for t in range(len(times)):
                near = np.flatnonzero(np.abs(t_obs - t) <= config.float_window_days)
                if near.size == 0:
                    continue
                time_o = np.exp(-np.abs(t_obs[near] - t_obs[near, None]) / tau)
                S = space_oo[np.ix_(near, near)] * time_o + np.diag(r[near])
                cxo = space_xo[:, near] * np.exp(-np.abs(t_obs[near] - t) / tau)[None, :]
                chol = np.linalg.cholesky(S)
                w = np.linalg.solve(chol.T, np.linalg.solve(chol, innovation[near]))
                out[t, c, k, cy, cx] += residual_std[c, k, cy, cx] * (cxo @ w)
                q = np.linalg.solve(chol, cxo.T)
                ratio[t, c, k, cy, cx] = np.sqrt(np.clip(1 - (q * q).sum(axis=0), 0.0, 1.0))
    return out, ratio, len(profiles)


def sea_regression(
    truth: xr.Dataset,
    observations: xr.Dataset,
    period: tuple[str, str],
    times: Sequence | np.ndarray,
    window_days: int = 15,
    config: SeaRegressionConfig | None = None,
) -> tuple[xr.Dataset, dict]:
    """The profile-regression ensemble ``(member, time, level, latitude, longitude)`` of
    temperature, salinity and oxygen at ``times`` (see the module docstring) from the
    observation table ``observations`` (which must cover the training period and ``times``),
    trained on ``truth`` over ``period``; and a dict of facts (fitted lengths, modes, floats
    used) for the archive's provenance."""
    config = config or SeaRegressionConfig()
    times = pd.DatetimeIndex(np.atleast_1d(times))
    if "sea_mask" not in truth:
        raise KeyError("the truth lacks sea_mask (a toy-sea store has it)")
    mask = truth["sea_mask"].values.astype(bool)
    levels = truth["level"].values.astype(np.float64)
    lat, lon = truth["latitude"].values, truth["longitude"].values
    names = [*list(PROFILE_VARIABLES), "chlorophyll", "sea_surface_height"]
    train = truth[names].sel(time=slice(*period))
    if train.sizes["time"] < 3:
        raise ValueError(f"training period {period} holds {train.sizes['time']} states")
    train_surface = _surface_fields(train).load()
    surface_clim = compute_climatology(train_surface, period, window_days)
    profile_clim = compute_climatology(train[list(PROFILE_VARIABLES)].load(), period, window_days)
    analyser = _SurfaceAnalyser(train_surface, surface_clim, observations)
    # a regression trained without its predictors would fit noise to zeros, silently
    seen = np.unique(np.concatenate([analyser.obs[f]["day"] for f in SURFACE_FIELDS]))
    train_days = pd.DatetimeIndex(train["time"].values).normalize()
    covered = int(train_days.isin(seen).sum())
    if covered < 0.5 * len(train_days):
        raise ValueError(
            f"the observations hold satellite fields on {covered} of the {len(train_days)} "
            f"training days {period[0]} .. {period[1]}: observe the training period too"
        )

    fit_times = pd.DatetimeIndex(train["time"].values)[:: config.train_every]
    fit = train[list(PROFILE_VARIABLES)].sel(time=fit_times.values).load()
    targets = _profiles(fit) - _profiles(climatology_at(profile_clim, fit_times))
    features = _features(analyser.analyse(fit_times))
    model = fit_profile_regression(features, targets, mask.sum(axis=0), config.modes, config.ridge)
    residuals = (targets - model.predict(features)).astype(np.float32)
    del targets, fit

    at = climatology_at(profile_clim, times)
    _covered(at, "temperature", mask, window_days)
    background = _profiles(at)
    mean = (background + model.predict(_features(analyser.analyse(times)))).astype(np.float32)
    del background
    facts: dict = {
        "surface_correlation_km": analyser.lengths,
        "modes": config.modes,
        "column_types": len(model.types),
    }
    ratio = np.ones((1,) * mean.ndim, dtype=np.float32)
    if config.floats:
        residual_std = np.sqrt(np.mean(residuals.astype(np.float64) ** 2, axis=0))
        lengths = []
        mid = int(np.searchsorted(levels, 150.0))
        for c in range(3):
            lengths.append(correlation_length_km(residuals[:, c, mid], lat, lon))
        mean, ratio, used = _float_correction(
            mean, times, observations, residual_std, lengths, levels, lat, lon, config
        )
        facts["float_correlation_km"] = dict(zip(PROFILE_VARIABLES, lengths, strict=True))
        facts["float_profiles_used"] = used
    rng = np.random.default_rng(config.seed)
    M = config.members
    data = np.empty((M, len(times), 3, *mask.shape), dtype=np.float32)
    if M == 1:
        data[0] = mean
    else:
        draws = _draw_days(_day_of_year(times), _day_of_year(fit_times), window_days, M, rng)
        for m in range(M):
            data[m] = mean + ratio * residuals[draws[:, m]]
    data[..., ~mask] = np.nan
    coords = {"member": np.arange(M), "time": times.values, "level": levels,
              "latitude": lat, "longitude": lon}  # fmt: skip
    dims = ("member", "time", "level", "latitude", "longitude")
    out = xr.Dataset(
        {name: (dims, data[:, :, c]) for c, name in enumerate(PROFILE_VARIABLES)}, coords=coords
    )
    return out, facts
