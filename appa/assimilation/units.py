"""Reanalysis, filtering and forecasting jobs: configs, the plan of units, and the worker that
computes one unit (members x times) with the tasks of :mod:`appa.assimilation.tasks`.

No Ray here: :mod:`appa.jobs.assimilate` hands the units to a pool of actors, each
holding one :class:`AssimilationWorker` (the prior loaded once) and writing its units straight
into the output archive.

Member ``m`` of a job draws from ``derive_seed(seed, m)`` alone, so any member can be recomputed
by itself, and units may group members in any way without changing the result.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import xarray as xr
from pydantic import Field, field_validator, model_validator

import appa
from appa.assimilation.tasks import SamplingConfig
from appa.config import ConfigError, StrictModel, Timestamp
from appa.data.spec import StateSpec, stack, unstack
from appa.io.archive import open_archive, read_errors_named
from appa.seeds import derive_seed

__all__ = [
    "AssimilationConfig",
    "AssimilationWorker",
    "ForecastConfig",
    "PriorConfig",
    "PriorLayout",
    "check_observations",
    "job_times",
    "member_seeds",
    "observation_period",
    "prior_layout",
    "provenance",
]


class PriorConfig(StrictModel):
    """Where the prior's checkpoints are: ``path`` holds ``autoencoder/`` and ``diffusion/``
    (each a checkpoint folder or a run's ``checkpoints`` folder); either may be given
    explicitly instead. ``weights``: the denoiser's weights, ``ema`` or ``model`` (None: those
    an exported copy names, else ``ema``). ``device``: ``auto`` takes the GPU when the actor
    has one."""

    path: str | None = "pipelines/priors/toy-earth-tiny"
    autoencoder: str | None = None
    diffusion: str | None = None
    weights: Literal["ema", "model"] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def resolved(self) -> tuple[str, str]:
        """``(autoencoder, diffusion)`` checkpoint paths."""
        parts = []
        for name in ("autoencoder", "diffusion"):
            value = getattr(self, name)
            if value is None:
                if self.path is None:
                    raise ConfigError(f"prior.{name}: give it, or prior.path holding {name}/")
                value = f"{self.path.rstrip('/')}/{name}"
            parts.append(value)
        return parts[0], parts[1]


class ForecastConfig(StrictModel):
    """Forecasts start every ``init_every`` states from ``start`` to ``end`` and run
    ``lead_steps`` states ahead. ``initial``: a reanalysis archive whose member ``m`` gives
    member ``m``'s ``context`` states up to each initialisation (None: start from the
    observations on those context states); ``initial_fit``: steps that fit the context's
    latents to those states through the decoder (0: the encoder's latents; see
    :meth:`~appa.assimilation.LatentPrior.fit_latents`)."""

    lead_steps: int = Field(8, ge=1)
    mode: Literal["autoregressive", "all_at_once"] = "autoregressive"
    new_states: int | None = Field(None, ge=1)
    context: int | None = Field(None, ge=1)
    init_every: int = Field(4, ge=1)
    initial: str | None = None
    initial_fit: int = Field(100, ge=0)


class AssimilationConfig(StrictModel):
    """What ``appa reanalysis|filter|forecast`` computes: the task over ``[start, end]``
    (inclusive, states every ``step``) with ``members`` members, written to the archive
    ``output``. Where it runs is added by :class:`appa.jobs.assimilate.AssimilateConfig`.

    Units: ``members_per_unit`` members each; reanalysis units also split time into
    ``segment`` states (None: the whole period, one joint trajectory per member; segments are
    sampled independently, so choose them long)."""

    task: Literal["reanalysis", "filter", "forecast"] = "reanalysis"
    prior: PriorConfig = Field(default_factory=PriorConfig)
    observations: list[str] = Field(default_factory=list)
    start: Timestamp
    end: Timestamp
    step: str = "6h"
    members: int = Field(8, ge=1)
    seed: int = 0
    members_per_unit: int = Field(1, ge=1)
    segment: int | None = Field(None, ge=1)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    forecast: ForecastConfig = Field(default_factory=ForecastConfig)
    output: str
    overwrite: bool = False
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("step")
    @classmethod
    def _step(cls, value: str) -> str:
        try:
            step = pd.Timedelta(value)
        except ValueError as error:
            raise ValueError(f"{value!r} is not a time step: {error}") from None
        if step <= pd.Timedelta(0):
            raise ValueError(f"step must be positive, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check(self) -> AssimilationConfig:
        if pd.Timestamp(self.end) < pd.Timestamp(self.start):
            raise ValueError(f"end {self.end} is before start {self.start}")
        if self.segment is not None and self.task != "reanalysis":
            raise ValueError("segment splits reanalysis periods only")
        if self.task != "forecast" and not self.observations:
            raise ValueError(f"a {self.task} needs observation stores (observations: [...])")
        return self


def job_times(job: AssimilationConfig) -> pd.DatetimeIndex:
    """The states of the job: analysis times, or initialisation times for forecasts."""
    times = pd.date_range(job.start, job.end, freq=pd.Timedelta(job.step))
    if job.task == "forecast":
        times = times[:: job.forecast.init_every]
    if len(times) == 0:
        raise ConfigError(f"no {job.step} states between {job.start} and {job.end}")
    return times


def member_seeds(job: AssimilationConfig, members: np.ndarray | list[int]) -> list[int]:
    """The seed of each member (``derive_seed(job.seed, m)``)."""
    return [derive_seed(job.seed, int(m)) for m in members]


class PriorLayout(StrictModel):
    """What the archive needs to know of the prior, read from checkpoint metadata only (no
    weights): state spec, statistics, grid, the denoiser's window and the checkpoints'
    digests."""

    spec: StateSpec
    latitude: list[float]
    longitude: list[float]
    window: int
    checkpoints: dict[str, dict[str, Any]]


def _digest(path: str) -> dict[str, Any]:
    """A checkpoint's path, step and the SHA-256 of its manifest (which lists the SHA-256 of
    every tensor file, so it pins the weights)."""
    import fsspec

    from appa.io.checkpoints import latest_checkpoint, list_checkpoints

    folder = path if list_checkpoints(path) == [] else latest_checkpoint(path)
    fs, local = fsspec.core.url_to_fs(folder)
    manifest = fs.cat_file(f"{local}/checkpoint.json")
    return {"path": str(folder), "sha256": hashlib.sha256(manifest).hexdigest()}


def prior_layout(prior: PriorConfig) -> PriorLayout:
    """The layout of the prior's states, from the autoencoder checkpoint's metadata."""
    from appa.io.cards import AutoencoderCard, CardError, DenoiserCard, read_card
    from appa.io.checkpoints import read_metadata

    autoencoder, diffusion = prior.resolved()
    for name, path in (("autoencoder", autoencoder), ("diffusion", diffusion)):
        if not Path(path).exists() and "://" not in path:
            raise ConfigError(f"prior.{name}: {path} does not exist")
    try:
        ae = read_card(read_metadata(autoencoder), autoencoder, kind="autoencoder").card
        dn = read_card(read_metadata(diffusion), diffusion, kind="diffusion").card
    except CardError as error:
        raise ConfigError(str(error)) from None
    assert isinstance(ae, AutoencoderCard) and isinstance(dn, DenoiserCard)
    if ae.state_spec is None:
        raise ConfigError(f"{autoencoder} carries no state spec")
    return PriorLayout(
        spec=ae.state_spec,
        latitude=ae.latitudes,
        longitude=ae.longitudes,
        window=dn.denoiser.window,
        checkpoints={"autoencoder": _digest(autoencoder), "diffusion": _digest(diffusion)},
    )


def observation_period(job: AssimilationConfig, window: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    """``[first, last)``: the times of the observations a job reads (a forecast from
    observations also reads its ``context`` states, ``window`` by default, before ``start``)."""
    step = pd.Timedelta(job.step)
    context = (job.forecast.context or window) if job.task == "forecast" else 0
    # the store's end bound is exclusive: one step more keeps observations at job.end
    return pd.Timestamp(job.start) - step * context, pd.Timestamp(job.end) + step


def check_observations(job: AssimilationConfig, spec: StateSpec, window: int) -> None:
    """Checks, before any unit starts, that every observation store of the job has
    observations in its period and that the prior's states hold every variable and level they
    observe (reads only those fields).

    Raises:
        ObservationError: naming the store and what its observations ask for.
        FileNotFoundError: for a path that is not an observation store.
    """
    from appa.observations.operator import observation_channels
    from appa.observations.schema import ObservationError, read_observations

    first, last = observation_period(job, window)
    for path in job.observations:
        try:
            table = read_observations(path, first, last, fields=("variable", "level"))
            observation_channels(table, spec)
        except ObservationError as error:
            raise ObservationError(f"observations {path}: {error}") from None


def _device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


class AssimilationWorker:
    """Computes units of ``job``: loads the prior and the job's observations once, then maps a
    unit's members and times to ``{variable: array}`` in the archive layout (physical units).

    Arguments:
        job: The job.
        threads: torch CPU threads (None: leave torch's default).
    """

    def __init__(self, job: AssimilationConfig, threads: int | None = None) -> None:
        from appa.assimilation.prior import LatentPrior

        if threads is not None:
            torch.set_num_threads(threads)
        self.job = job
        autoencoder, diffusion = job.prior.resolved()
        self.prior = LatentPrior.from_checkpoints(
            autoencoder, diffusion, device=_device(job.prior.device), weights=job.prior.weights
        )
        self.step = pd.Timedelta(job.step)
        self.observations = self._observations()
        self.initial = (
            None
            if job.forecast.initial is None
            else open_archive(job.forecast.initial, job.storage_options or None)
        )

    def _observations(self) -> xr.Dataset | None:
        from appa.observations.schema import concat_tables, read_observations

        job = self.job
        if not job.observations:
            return None
        first, last = observation_period(job, self.prior.window)
        # read_observations raises on a store with nothing in the period (as the driver's
        # check_observations did before any unit), so every table holds observations
        tables = [read_observations(path, start=first, end=last) for path in job.observations]
        return concat_tables(tables).load()

    def _initial(self, members: np.ndarray, inits: pd.DatetimeIndex, n_ctx: int) -> torch.Tensor:
        """``(M, n_init, n_ctx, C, H, W)`` context states of each member from the initial
        archive."""
        ds = self.initial
        out = []
        for m in members:
            per_init = []
            for t0 in inits:
                times = pd.DatetimeIndex([t0 - self.step * (n_ctx - 1 - j) for j in range(n_ctx)])
                try:
                    sel = ds.sel(member=int(m), time=times.values)
                except KeyError as error:
                    raise ConfigError(
                        f"forecast.initial {self.job.forecast.initial} lacks member {m} or the "
                        f"context times {times[0]} .. {times[-1]} ({error})"
                    ) from None
                # a damaged chunk of the initial archive is named, not a decoder's traceback
                with read_errors_named(
                    self.job.forecast.initial, self.job.storage_options or None, (ConfigError,)
                ):
                    x, _ = stack(sel, self.prior.spec, dtype=torch.float32)
                per_init.append(x)
            out.append(torch.stack(per_init))
        return torch.stack(out)

    def __call__(self, unit: Any, coords: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from appa.assimilation import tasks

        job, prior = self.job, self.prior
        members = coords["member"]
        times = pd.DatetimeIndex(coords["time"])
        seeds = member_seeds(job, members)
        if job.task == "reanalysis":
            x = tasks.reanalysis(prior, self.observations, times, seeds, job.sampling)
        elif job.task == "filter":
            x = tasks.filtering(prior, self.observations, times, seeds, job.sampling)
        else:
            f = job.forecast
            initial = None
            if self.initial is not None:
                n_ctx = f.context or (
                    prior.window - (f.new_states or max(1, prior.window // 2))
                    if f.mode == "autoregressive"
                    else prior.window // 2
                )
                initial = self._initial(members, times, n_ctx)
            x, _ = tasks.forecast(
                prior,
                times,
                f.lead_steps,
                self.step,
                seeds,
                initial=initial,
                observations=None if initial is not None else self.observations,
                context=None if initial is not None else f.context,
                mode=f.mode,
                new_states=f.new_states,
                settings=job.sampling,
                initial_fit=f.initial_fit,
            )
        return _to_variables(x.cpu().numpy(), prior.spec, forecast=job.task == "forecast")


def _to_variables(x: np.ndarray, spec: StateSpec, forecast: bool) -> dict[str, np.ndarray]:
    """``(M, T, [lead,] C, H, W)`` to ``{variable: (M, T, [lead,] [level,] H, W)}``."""
    if forecast:
        M, T, L = x.shape[:3]
        flat = unstack(x.reshape(M, T * L, *x.shape[3:]), spec, coords={})
        return {
            name: flat[name].values.reshape(M, T, L, *flat[name].shape[2:])
            for name in spec.variables
        }
    ds = unstack(x, spec, coords={})
    return {name: ds[name].values for name in spec.variables}


def provenance(job: AssimilationConfig, layout: PriorLayout, times: pd.DatetimeIndex) -> dict:
    """Root attributes of the job's archive."""
    return {
        "appa_version": appa.__version__,
        "task": job.task,
        "checkpoints": layout.checkpoints,
        "observation_sources": list(job.observations),
        "seeds": {str(m): s for m, s in enumerate(member_seeds(job, list(range(job.members))))},
        "seed_rule": "member m draws from appa.seeds.derive_seed(seed, m)",
        "period": [str(times[0]), str(times[-1])],
        "torch_version": torch.__version__,
    }
