"""``appa baseline climatology|persistence|enoi``: configs and runners writing archives."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import xarray as xr
from pydantic import Field, field_validator

from appa.baselines.archive import to_archive_layout, write_archive
from appa.baselines.climatology import climatology_at, compute_climatology, persistence
from appa.baselines.enoi import EnOI
from appa.config import StrictModel
from appa.data.spec import StateSpec, stack, unstack
from appa.data.stats import compute_statistics

__all__ = ["BaselineJob", "run_baseline"]


def _tiny_spec() -> StateSpec:
    return StateSpec(
        surface=["2m_temperature", "mean_sea_level_pressure", "sea_surface_temperature"],
        atmospheric=["geopotential", "temperature"],
        levels=[500],
        masked=["sea_surface_temperature"],
    )


class BaselineJob(StrictModel):
    """Settings of ``appa baseline``. Times are inclusive ISO dates."""

    truth: str = Field("data/toy_earth.zarr", description="gridded store (open_era5)")
    start: str = Field("2003-01-01", description="first analysis / initialisation time")
    end: str = Field("2003-01-07T18:00", description="last analysis / initialisation time")
    train_start: str = "2000-01-01"
    train_end: str = "2001-12-31T23:59"
    spec: StateSpec = Field(default_factory=_tiny_spec)
    lead_times: list[str] = Field(
        default_factory=list,
        description="e.g. ['6h', '1D']: forecast layout (climatology, persistence)",
    )
    every: int = Field(
        1, ge=1, description="one time in every `every` of [start, end], e.g. 4: daily from 6 h"
    )
    window_days: int = Field(15, ge=0, le=183, description="climatology smoothing, +- days")
    # Persistence only.
    initial: str | None = Field(
        None,
        description="persist this archive's ensemble mean (e.g. the reanalysis a forecast "
        "starts from) instead of the truth",
    )
    # EnOI only.
    observations: str | None = Field(None, description="observation store (appa observe)")
    ensemble_size: int = Field(96, ge=2, description="static ensemble of anomalies (N)")
    members: int = Field(8, ge=1, description="analysis members (1: deterministic EnOI)")
    localisation_km: float | None = Field(2000.0, gt=0, description="Gaspari-Cohn half-width")
    alpha: float = Field(1.0, gt=0, description="ensemble covariance scaling")
    seed: int = 0

    @field_validator("start", "end", "train_start", "train_end", mode="before")
    @classmethod
    def _date(cls, value):
        try:
            return pd.Timestamp(str(value)).isoformat()
        except (ValueError, TypeError) as error:
            raise ValueError(f"{value!r} is not a date: {error}") from None

    @field_validator("lead_times")
    @classmethod
    def _leads(cls, value: list[str]) -> list[str]:
        for lead in value:
            try:
                if pd.Timedelta(lead) <= pd.Timedelta(0):
                    raise ValueError
            except ValueError:
                raise ValueError(f"lead time {lead!r} is not a positive duration") from None
        return value


Kind = Literal["climatology", "persistence", "enoi"]


def _open(job: BaselineJob) -> xr.Dataset:
    from appa.data.sources import open_era5

    return open_era5(job.truth, spec=job.spec)


def _target_times(ds: xr.Dataset, job: BaselineJob) -> pd.DatetimeIndex:
    times = pd.DatetimeIndex(ds["time"].sel(time=slice(job.start, job.end)).values)
    if len(times) == 0:
        have = ds["time"].values
        raise ValueError(
            f"no truth time between {job.start} and {job.end}; the truth spans "
            f"{have[0]} to {have[-1]}"
        )
    train_end = pd.Timestamp(job.train_end)
    if times[0] <= train_end and times[-1] >= pd.Timestamp(job.train_start):
        raise ValueError(
            f"the target window {job.start} .. {job.end} overlaps the training period "
            f"{job.train_start} .. {job.train_end}"
        )
    return times[:: job.every]


def _analysis_mean(job: BaselineJob, truth: xr.Dataset) -> xr.Dataset:
    """The ensemble mean of the archive ``job.initial``, with the truth's time-dependent
    variables (all of them: persistence of an analysis must cover what it is scored on)."""
    path = str(job.initial)
    if "://" not in path and not Path(path).exists():
        raise FileNotFoundError(f"no initial archive at {path}")
    analysis = xr.open_zarr(path, consolidated=None)
    wanted = [v for v in truth.data_vars if "time" in truth[v].dims]
    missing = [v for v in wanted if v not in analysis.data_vars]
    if missing:
        raise ValueError(f"initial archive {job.initial} lacks the variables {missing}")
    analysis = analysis[wanted]
    return analysis.mean("member") if "member" in analysis.dims else analysis


def run_baseline(kind: Kind, job: BaselineJob, out: str | Path, overwrite: bool = False) -> Path:
    """Computes one baseline over ``[start, end]`` and writes it as an archive at ``out``."""
    ds = _open(job)
    times = _target_times(ds, job)
    period = (job.train_start, job.train_end)
    provenance = {"appa_config": job.model_dump(), "appa_baseline": kind, "seeds": [job.seed]}
    leads = job.lead_times or None
    if kind == "climatology":
        train = ds.sel(time=slice(*period)).load()
        clim = compute_climatology(train, period, job.window_days)
        product = climatology_at(clim, times, leads)
    elif kind == "persistence":
        if not leads:
            raise ValueError("persistence is a forecast: give lead_times (e.g. ['6h', '1D'])")
        source = ds if job.initial is None else _analysis_mean(job, ds)
        name = "truth" if job.initial is None else f"initial archive {job.initial}"
        product = persistence(source, times, leads, source=name).load()
        if job.initial is not None:
            provenance["initial"] = job.initial
    elif kind == "enoi":
        if leads:
            raise ValueError("enoi writes analyses: lead_times must be empty")
        if job.observations is None:
            raise ValueError("enoi needs observations (an observation store)")
        product = enoi_analyses(ds, times, job)
        provenance["observation_sources"] = [str(job.observations)]
    else:
        raise ValueError(f"unknown baseline {kind!r}: climatology, persistence or enoi")
    archive = to_archive_layout(product, truth=ds, provenance=provenance)
    return write_archive(archive, out, overwrite=overwrite)


def enoi_analyses(ds: xr.Dataset, times: pd.DatetimeIndex, job: BaselineJob) -> xr.Dataset:
    """EnOI analyses ``(member, time, ...)`` of ``ds``'s grid at ``times`` from the
    observations of ``job.observations`` (background: climatology of the training period;
    static ensemble and member perturbations: training anomalies; see
    :mod:`appa.baselines.enoi`). Observations of channels outside the spec are left out."""
    from tqdm.auto import tqdm

    from appa.observations import ObservationError, ObservationOperator, read_observations

    spec = job.spec
    period = (job.train_start, job.train_end)
    train = ds.sel(time=slice(*period)).load()
    clim = compute_climatology(train, period, job.window_days)
    stats = compute_statistics(train, spec, period)
    mean, std = stats.mean[:, None, None], stats.std[:, None, None]

    rng = np.random.default_rng(job.seed)
    n_train = train.sizes["time"]
    need = job.ensemble_size + (job.members if job.members > 1 else 0)
    if n_train < need:
        raise ValueError(f"{n_train} training states; EnOI needs at least {need}")
    order = rng.permutation(n_train)
    static, pool = order[: job.ensemble_size], order[job.ensemble_size :]

    def anomalies(index: np.ndarray) -> np.ndarray:
        sub = train.isel(time=np.sort(index))
        x, _ = stack(sub, spec)
        c, _ = stack(climatology_at(clim, sub["time"].values), spec)
        z = (x.numpy().astype(np.float64) - c.numpy()) / std
        return np.nan_to_num(z, nan=0.0)

    enoi = EnOI(
        anomalies(static), ds.latitude.values, ds.longitude.values, job.localisation_km, job.alpha
    )
    step = (
        pd.Timedelta(ds["time"].values[1] - ds["time"].values[0])
        if ds.sizes["time"] > 1
        else (pd.Timedelta(hours=6))
    )
    table = read_observations(job.observations, times[0] - step / 2, times[-1] + step / 2)
    keep = np.zeros(table.sizes["obs"], dtype=bool)
    variables = table["variable"].values.astype(str)
    levels = table["level"].values
    for name, level in spec.channels:
        match = variables == name
        keep |= match & (np.isnan(levels) if level is None else levels == level)
    table = table.isel(obs=np.flatnonzero(keep))
    obs_times = pd.DatetimeIndex(table["time"].values)

    background, _ = stack(climatology_at(clim, times), spec)
    background = background.numpy().astype(np.float64)
    land = np.isnan(background)
    zb = np.nan_to_num((background - mean) / std, nan=0.0)
    out = np.empty((job.members, len(times), *zb.shape[1:]), dtype=np.float32)
    for k, t in enumerate(tqdm(times, desc="EnOI", unit="analysis", mininterval=1.0)):
        sel = np.flatnonzero(np.abs(obs_times - t) < step / 2)
        perturbations = None
        if job.members > 1:
            perturbations = anomalies(rng.choice(pool, job.members, replace=False))
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
        "member": np.arange(job.members),
        "time": times.values,
        "latitude": ds.latitude.values,
        "longitude": ds.longitude.values,
    }
    return unstack(out, spec, coords)
