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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import xarray as xr
from pydantic import Field, field_validator, model_validator

import appa
from appa.assimilation.screening import (
    ObservationSummary,
    ObservationUseConfig,
    Screening,
    StoreSummary,
)
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
    "input_digests",
    "job_identity",
    "job_times",
    "member_seeds",
    "observation_period",
    "observation_states",
    "prior_layout",
    "provenance",
    "screen_store",
]


class PriorConfig(StrictModel):
    """Where the prior's checkpoints are: ``path`` holds ``autoencoder/`` and ``diffusion/``
    (each a checkpoint folder or a run's ``checkpoints`` folder); either may be given
    explicitly instead. ``weights``: the denoiser's weights, ``ema`` or ``model`` (None: those
    an exported copy names, else ``ema``). ``device``: ``auto`` takes the GPU when the actor
    has one. ``unverified_pair``: accept a denoiser that does not record the SHA-256 of the
    autoencoder weights it was trained on (the archive's provenance says ``prior_pair:
    unverified``); a recorded digest that differs is refused regardless."""

    path: str | None = "pipelines/priors/toy-earth-tiny"
    autoencoder: str | None = None
    diffusion: str | None = None
    weights: Literal["ema", "model"] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    unverified_pair: bool = False

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
    sampled independently, so choose them long).

    Observations: each belongs to the nearest state (``sampling.time_rule``), is checked
    against physical bounds and the prior's climatology (``observation_use``), and every one
    read is accounted for in the job's :class:`~appa.assimilation.screening.
    ObservationSummary`."""

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
    observation_use: ObservationUseConfig = Field(default_factory=ObservationUseConfig)
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
        half = pd.Timedelta(self.step) / 2
        if self.sampling.time_rule == "nearest" and self.sampling.tolerance(None) > half:
            raise ValueError(
                f"sampling.time_tolerance {self.sampling.time_tolerance} exceeds half the step "
                f"({half}): an observation belongs to its nearest state"
            )
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
    """What the archive needs to know of the prior, read without loading its weights: state
    spec, statistics (``mean``, ``std`` per channel of ``spec``, physical units), grid, the
    denoiser's window, the checkpoints' digests, whether the pair is verified (``verified``
    or ``unverified``) and ``masked``: the variables whose decoded states may hold NaN (the
    spec's masked variables when the autoencoder carries its data's valid cells)."""

    spec: StateSpec
    mean: list[float]
    std: list[float]
    latitude: list[float]
    longitude: list[float]
    window: int
    checkpoints: dict[str, dict[str, Any]]
    pair: str = "verified"
    masked: list[str] = Field(default_factory=list)


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
    """The layout of the prior's states, once its checkpoints are checked as the workers will
    load them (:func:`~appa.assimilation.prior.inspect_prior`: files, digests, cards against
    weights, the pair), without loading the weights."""
    from appa.assimilation.prior import inspect_prior
    from appa.io.cards import AutoencoderCard, CardError, DenoiserCard

    autoencoder, diffusion = prior.resolved()
    for name, path in (("autoencoder", autoencoder), ("diffusion", diffusion)):
        if not Path(path).exists() and "://" not in path:
            raise ConfigError(f"prior.{name}: {path} does not exist")
    try:
        parts = inspect_prior(autoencoder, diffusion, prior.weights, prior.unverified_pair)
    except CardError as error:
        raise ConfigError(str(error)) from None
    ae, dn = parts.autoencoder_card.card, parts.diffusion_card.card
    assert isinstance(ae, AutoencoderCard) and isinstance(dn, DenoiserCard)
    try:
        spec, stats = ae.spec_and_statistics()
    except CardError as error:
        raise ConfigError(f"{autoencoder}: {error}") from None
    return PriorLayout(
        spec=spec,
        mean=stats.mean.tolist(),
        std=stats.std.tolist(),
        latitude=ae.latitudes,
        longitude=ae.longitudes,
        window=dn.denoiser.window,
        checkpoints={"autoencoder": _digest(autoencoder), "diffusion": _digest(diffusion)},
        pair=parts.pair,
        masked=list(spec.masked) if parts.valid else [],
    )


def _context_length(job: AssimilationConfig, window: int) -> int:
    """States of a forecast's context (as :func:`appa.assimilation.tasks.forecast` counts)."""
    f = job.forecast
    if f.context is not None:
        return f.context
    if f.mode == "autoregressive":
        return window - (f.new_states or max(1, window // 2))
    return window // 2


def observation_states(job: AssimilationConfig, window: int) -> pd.DatetimeIndex:
    """The states at which the job assimilates observations: its analysis times, or for a
    forecast from observations the context states before each initialisation (empty for a
    forecast from ``forecast.initial``, which reads none)."""
    times = job_times(job)
    if job.task != "forecast":
        return times
    if job.forecast.initial is not None:
        return pd.DatetimeIndex([])
    step = pd.Timedelta(job.step)
    n_ctx = _context_length(job, window)
    return pd.DatetimeIndex(sorted({t0 - step * j for t0 in times for j in range(n_ctx)}))


def observation_period(job: AssimilationConfig, window: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    """``[first, last)``: the times a job reads observations for (every partition of a store
    that overlaps them is read): its observation states, one step more on each side."""
    step = pd.Timedelta(job.step)
    states = observation_states(job, window)
    if len(states) == 0:
        states = job_times(job)
    return states[0] - step, states[-1] + step


def screen_store(
    job: AssimilationConfig,
    path: str,
    spec: StateSpec,
    mean: Sequence[float] | np.ndarray,
    std: Sequence[float] | np.ndarray,
    window: int,
) -> Screening:
    """The verdict on every observation a job reads from the store ``path`` (see
    :mod:`appa.assimilation.screening`): what the driver summarises and what every worker
    assimilates, one function for both.

    Raises:
        ObservationError: units declared other than SI, variables or levels the prior lacks,
            a store with nothing near the period (not prefixed with the path).
        FileNotFoundError: for a path that is not an observation store.
    """
    from appa.assimilation.screening import screen_observations
    from appa.observations.schema import read_observations
    from appa.observations.screening import check_units

    first, last = observation_period(job, window)
    table = read_observations(path, first, last, whole_partitions=True)
    check_units(table)
    step = pd.Timedelta(job.step)
    return screen_observations(
        table,
        observation_states(job, window),
        step,
        job.sampling.tolerance(step),
        spec,
        mean,
        std,
        job.observation_use.gross_std,
        job.observation_use.outside_state,
        job.sampling.vertical,
    )


def _duration(value: pd.Timedelta) -> str:
    """``3h``, ``1h30m``, ``0s``."""
    seconds = int(value.total_seconds())
    parts = [(seconds // 86400, "d"), (seconds // 3600 % 24, "h"), (seconds // 60 % 60, "m")]
    text = "".join(f"{n}{u}" for n, u in parts if n) + (f"{seconds % 60}s" if seconds % 60 else "")
    return text or "0s"


def check_observations(job: AssimilationConfig, layout: PriorLayout) -> ObservationSummary:
    """Checks, before any unit starts, the observations of every store of the job and returns
    the account of them: the prior's states hold every variable and level they observe, no
    store declares units other than SI or holds mostly implausible values of a channel, each
    store has observations used, and every day of the period has some (or
    ``observation_use.unobserved`` is ``flag``).

    Raises:
        ObservationError: naming the store (or the days) and what is wrong.
        FileNotFoundError: for a path that is not an observation store.
    """
    from appa.assimilation.screening import REASONS, check_plausible
    from appa.observations.schema import ObservationError

    sampling, use = job.sampling, job.observation_use
    step = pd.Timedelta(job.step)
    tolerance = sampling.tolerance(step)
    states = observation_states(job, layout.window)
    rule = (
        f"each at the nearest {job.step} state within {_duration(tolerance)} (halfway: the later)"
        if sampling.time_rule == "nearest"
        else f"each at a {job.step} state's exact time"
    )
    summary = ObservationSummary(
        time_rule=rule,
        gross_checks=(
            f"physical bounds, and at most {use.gross_std:g} sqrt(std^2 + error^2) from the "
            f"prior's mean; a store stops the job above {use.max_rejected:.0%} rejected"
        ),
        states=len(states),
        days=sorted({str(t.date()) for t in states}),
        unobserved=use.unobserved,
    )
    if len(states) == 0:
        summary.note = f"a forecast from {job.forecast.initial} reads no observations" + (
            f"; not read: {', '.join(job.observations)}" if job.observations else ""
        )
        return summary
    used_days: set[str] = set()
    for path in job.observations:
        try:
            screening = screen_store(job, path, layout.spec, layout.mean, layout.std, layout.window)
            check_plausible(screening, layout.spec, layout.mean, layout.std, use)
        except ObservationError as error:
            # the store's own errors (an unreadable index or partition) already name it
            named = str(error).startswith(str(Path(path)))
            raise ObservationError(f"observations{'' if named else f' {path}'}: {error}") from None
        store = StoreSummary.of(path, [screening])
        if store.used == 0:
            why = ", ".join(f"{n} {REASONS[r]}" for r, n in store.dropped.items())
            raise ObservationError(
                f"observations {path}: none of its {store.read} observations near the period "
                f"is used ({why}; time rule: {rule})"
            )
        summary.stores.append(store)
        used = screening.state[screening.reason == "used"]
        used_days |= {str(t.date()) for t in states[np.unique(used)]}
    summary.unobserved_days = [d for d in summary.days if d not in used_days]
    if summary.unobserved_days and use.unobserved == "refuse":
        dropped = "; ".join(f"{s.path}: {s.describe()}" for s in summary.stores)
        raise ObservationError(
            f"observations: none is used on {', '.join(summary.unobserved_days)} (of "
            f"{summary.days[0]} .. {summary.days[-1]}), so those days would be prior samples "
            f"({dropped}); observe them, shorten the period, or set "
            "observation_use.unobserved=flag to run and flag them"
        )
    return summary


def job_identity(job: AssimilationConfig) -> dict[str, Any]:
    """What an archive of ``job`` holds, as JSON: the config without where it runs or writes
    and without the paths of its inputs, whose contents :func:`input_digests` pins instead (a
    moved prior, store or archive resumes; one changed in place does not)."""
    identity = job.model_dump(
        mode="json",
        exclude={
            "runner": True,
            "overwrite": True,
            "output": True,
            "storage_options": True,
            "observations": True,
            # where the prior is, and the acceptance of an unverified pair, which changes no
            # value (the archive's provenance records it)
            "prior": {"path", "autoencoder", "diffusion", "unverified_pair"},
            "forecast": {"initial"},
        },
    )
    identity["observation_stores"] = len(job.observations)
    identity["forecast"]["from_archive"] = job.forecast.initial is not None
    return identity


def input_digests(job: AssimilationConfig, layout: PriorLayout) -> dict[str, str]:
    """SHA-256 of each input of ``job`` by name: the prior's checkpoints (their manifests, which
    hold the SHA-256 of every tensor file), each observation store over the period the job
    reads (:func:`~appa.observations.schema.store_digest`) and a forecast's initial archive
    (its own identity: config and input digests)."""
    from appa.observations.schema import store_digest

    digests = {f"prior.{name}": info["sha256"] for name, info in layout.checkpoints.items()}
    first, last = observation_period(job, layout.window)
    for i, path in enumerate(job.observations):
        digests[f"observations[{i}]"] = store_digest(path, first, last)
    if job.forecast.initial is not None and job.task == "forecast":
        from appa.io.archive import archive_identity

        digests["forecast.initial"] = archive_identity(
            job.forecast.initial, job.storage_options or None
        )
    return digests


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
        inputs: The input digests the archive was started from (:func:`input_digests`): a
            worker started later (a restarted actor) that finds other inputs at the job's paths
            refuses every unit, so that no archive mixes inputs.
    """

    def __init__(
        self,
        job: AssimilationConfig,
        threads: int | None = None,
        inputs: dict[str, str] | None = None,
    ) -> None:
        from appa.assimilation.prior import LatentPrior

        if threads is not None:
            torch.set_num_threads(threads)
        self.job = job
        autoencoder, diffusion = job.prior.resolved()
        self.prior = LatentPrior.from_checkpoints(
            autoencoder, diffusion, device=_device(job.prior.device), weights=job.prior.weights,
            unverified_pair=job.prior.unverified_pair,
        )  # fmt: skip
        self.step = pd.Timedelta(job.step)
        self.observations = self._observations()
        self.initial = (
            None
            if job.forecast.initial is None
            else open_archive(job.forecast.initial, job.storage_options or None)
        )
        # read after loading: what this worker computes from is what it digests
        self.expected_inputs = inputs
        self.inputs = None if inputs is None else input_digests(job, prior_layout(job.prior))

    def _observations(self) -> xr.Dataset | None:
        from appa.observations.schema import concat_tables

        job, prior = self.job, self.prior
        if not job.observations or len(observation_states(job, prior.window)) == 0:
            return None
        # the driver's check_observations screened the same stores with the same function
        # before any unit, so every store has observations used, each at its state's time
        mean, std = prior.statistics.mean, prior.statistics.std
        tables = [
            screen_store(job, path, prior.spec, mean, std, prior.window).used()
            for path in job.observations
        ]
        return concat_tables([t for t in tables if t is not None]).load()

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
        from appa.io.archive import check_inputs

        if self.inputs is not None:
            check_inputs(self.job.output, self.expected_inputs, self.inputs)
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
                initial = self._initial(members, times, _context_length(job, prior.window))
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


def provenance(
    job: AssimilationConfig,
    layout: PriorLayout,
    times: pd.DatetimeIndex,
    observations: ObservationSummary | None = None,
) -> dict:
    """Root attributes of the job's archive (with ``observations``: its summary and
    ``unobserved_days``)."""
    return {
        **(observations.attributes() if observations is not None else {}),
        "appa_version": appa.__version__,
        "task": job.task,
        "checkpoints": layout.checkpoints,
        "prior_pair": layout.pair,
        "observation_sources": list(job.observations),
        "seeds": {str(m): s for m, s in enumerate(member_seeds(job, list(range(job.members))))},
        "seed_rule": "member m draws from appa.seeds.derive_seed(seed, m)",
        "period": [str(times[0]), str(times[-1])],
        "torch_version": torch.__version__,
    }
