"""Reanalysis, filtering and forecasting: posterior sampling of latent trajectories with MMPS.

Every task draws ``M`` members, member ``m`` from its own seed: its noise comes from its own
generator (:func:`appa.diffusion.samplers.randn`) and every solve is per sample, so a member's
result depends only on its seed (and the task's inputs), never on which members share its batch.
Results are decoded physical states.

- :func:`reanalysis`: one joint sample of ``x_{1:L}`` given all observations, in overlapping
  windows stitched symmetrically, each window conditioned on its own observations.
- :func:`filtering`: cycles in time; the analysis at ``t_i`` is the last state of a window ending
  at ``t_i`` whose earlier states are the member's previous analyses (latent conditions) and
  whose observations are those at ``t_i``: nothing after ``t_i`` is ever read.
- :func:`forecast`: from known initial states (e.g. a reanalysis) or from observations before
  the initialisation time; autoregressive (condition on the last states, sample the next ones,
  slide) or all-at-once (a context window followed by free states, one joint sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
import xarray as xr
from pydantic import Field, model_validator
from torch import Tensor

from appa.assimilation.operator import WindowObservation
from appa.assimilation.prior import LatentPrior, regular_step
from appa.config import StrictModel
from appa.diffusion import MMPSDenoiser, WindowedDenoiser, make_sampler
from appa.nn import known_frames_input
from appa.observations.operator import VerticalRule
from appa.observations.screening import TimeRule, assign_times, time_tolerance
from appa.seeds import derive_seed

__all__ = [
    "SamplingConfig",
    "filtering",
    "forecast",
    "reanalysis",
    "reanalysis_continued",
    "sample_latents",
    "select_observations",
]


class SamplingConfig(StrictModel):
    """How posterior trajectories are drawn.

    Attributes:
        sampler: ``pc`` (predictor-corrector, Appa's), ``ddpm``, ``ddim``, ``euler``, ``heun``
            or ``lms``; steps: its steps; corrections, delta: Langevin corrections (pc only).
        solver, iterations: MMPS's linear solver (``cg``, ``gmres`` or ``direct``) and Krylov
            iterations; covariance: ``tweedie`` or ``heuristic``.
        stride: Window stride ``S`` (None: ``K // 2``); stitching is symmetric.
        condition_std: Standard deviation with which known latent states are matched
            (standardised latent units).
        frames: Decode only the ``observed`` frames in the operator, or ``all`` (Appa's way).
        member_batch: Members sampled together (None: all at once).
        time_rule, time_tolerance: Which state an observation belongs to
            (:func:`appa.observations.screening.assign_times`): ``nearest``: the nearest state
            time (halfway between two: the later), when within ``time_tolerance`` (None: half
            the step, so every observation between the first and last state is used);
            ``exact``: only observations at a state's time. Jobs count the observations each
            rule drops (:mod:`appa.assimilation.screening`).
        vertical: Which levels an observation reads
            (:func:`appa.observations.operator.vertical_weights`): ``exact`` (one of the
            state's levels), ``log_pressure`` (between two pressure levels, linearly in
            ``log p``: soundings' significant levels, aircraft at their flight pressure) or
            ``depth`` (between two depth levels, linearly in depth: profiling floats).
        representation_error: Add the autoencoder's per-channel reconstruction RMSE (from its
            checkpoint's validation) to observation errors in quadrature: the decoder cannot
            fit observations closer than that, and pretending it can makes ensembles
            overconfident.
        error_inflation: Multiplies every observation's error standard deviation (with the
            representation error): the usual remedy of an under-dispersed ensemble.
    """

    sampler: Literal["pc", "ddpm", "ddim", "euler", "heun", "lms"] = "pc"
    steps: int = Field(32, ge=1)
    corrections: int = Field(2, ge=0)
    delta: float = Field(0.1, gt=0)
    solver: Literal["cg", "gmres", "direct"] = "gmres"
    iterations: int = Field(2, ge=1)
    covariance: Literal["tweedie", "heuristic"] = "tweedie"
    stride: int | None = Field(None, ge=1)
    condition_std: float = Field(1e-2, gt=0)
    frames: Literal["observed", "all"] = "observed"
    member_batch: int | None = Field(None, ge=1)
    time_rule: TimeRule = "nearest"
    time_tolerance: str | None = None
    vertical: VerticalRule = "exact"
    representation_error: bool = False
    error_inflation: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _time_rule(self) -> SamplingConfig:
        try:
            time_tolerance(self.time_rule, self.time_tolerance, None)
        except ValueError as error:
            raise ValueError(f"sampling: {error}") from None
        return self

    def tolerance(self, step: pd.Timedelta | None) -> pd.Timedelta:
        """How far an observation may lie from its state, for states ``step`` apart."""
        return time_tolerance(self.time_rule, self.time_tolerance, step)

    def sampler_options(self) -> dict:
        if self.sampler == "pc":
            return {"corrections": self.corrections, "delta": self.delta}
        return {}


def _generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    gens = []
    for seed in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(seed))
        gens.append(g)
    return gens


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("give at least one member seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"member seeds must be distinct, got {seeds}")
    return seeds


def select_observations(
    table: xr.Dataset | None,
    times: Sequence | np.ndarray,
    settings: SamplingConfig | None = None,
    step: str | pd.Timedelta | None = None,
) -> xr.Dataset | None:
    """The observations that belong to one of ``times`` under the settings' time rule
    (:func:`appa.observations.screening.assign_times`; ``step``: the states' step, None: their
    spacing), None when none."""
    if table is None or table.sizes.get("obs", 0) == 0:
        return None
    settings = settings or SamplingConfig()
    times = pd.DatetimeIndex(np.atleast_1d(times))
    if step is None and len(times) > 1:
        step = regular_step(times)
    index = assign_times(table["time"].values, times, settings.tolerance(step), step)
    keep = np.flatnonzero(index >= 0)
    return table.isel(obs=keep) if keep.size else None


def _batches(n: int, size: int | None) -> list[slice]:
    size = n if size is None else size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _representation_std(prior: LatentPrior, settings: SamplingConfig) -> list[float] | None:
    if not settings.representation_error:
        return None
    if prior.reconstruction_rmse is None:
        raise ValueError(
            "sampling.representation_error needs the autoencoder's validation RMSE per channel; "
            "this prior has none (train the autoencoder with validation)"
        )
    return prior.reconstruction_rmse


def sample_latents(
    prior: LatentPrior,
    times: Sequence | np.ndarray,
    generators: Sequence[torch.Generator],
    settings: SamplingConfig,
    table: xr.Dataset | None = None,
    observable: np.ndarray | None = None,
    known: np.ndarray | None = None,
    known_values: Tensor | None = None,
) -> Tensor:
    """One posterior sample of a latent trajectory per generator: ``(B, L, c, h, w)``
    standardised latents at ``times``.

    Arguments:
        table: Observations (already within ``times``); observable: ``(L,)`` frames whose
            observations count; known: ``(L,)`` frames conditioned on ``known_values``
            ``(B, L, c, h, w)`` (standardised latents): through the denoiser's known-frame
            input when it has one (:attr:`LatentPrior.known_frames`; the sample then holds
            those values exactly), else by guidance with ``settings.condition_std``.
    """
    times = pd.DatetimeIndex(np.atleast_1d(times))
    B, L = len(generators), len(times)
    device = prior.device
    cond = prior.conditioning(times, B)
    held = None
    if known is not None and np.any(known) and prior.known_frames:
        # a denoiser trained with known frames takes them as an input: exact conditioning
        # on them, no guidance (which an approximate covariance makes weak)
        if known_values is None:
            raise ValueError("known frames need known_values")
        held = torch.as_tensor(np.asarray(known, bool), device=device)
        values = known_values.to(device)
        cond["known"] = known_frames_input(held.expand(B, L), values)
        known = None
    stride = settings.stride or max(1, prior.window // 2)
    windowed = WindowedDenoiser(prior.denoiser, prior.window, stride, "symmetric")
    layout = windowed.layout(L)
    obs = WindowObservation(
        prior, layout, times, table, observable, known,
        condition_std=settings.condition_std, frames=settings.frames,
        time_tolerance=settings.tolerance(regular_step(times) if L > 1 else None),
        representation_std=_representation_std(prior, settings),
        error_scale=settings.error_inflation, vertical=settings.vertical,
    )  # fmt: skip
    if obs.size:
        guided = MMPSDenoiser(
            prior.denoiser,
            obs.observation(B, known_values),
            solver=settings.solver,
            iterations=settings.iterations,
            covariance=settings.covariance,
            sigma_data=prior.sigma_data,
        )
        windowed = WindowedDenoiser(guided, prior.window, stride, "symmetric")
    sampler = make_sampler(
        settings.sampler, windowed, prior.schedule, settings.steps, **settings.sampler_options()
    )
    x_T = sampler.init((B, L, *prior.latent_shape), list(generators), device=device)
    u = sampler(x_T, generator=list(generators), **cond)
    if held is not None:
        u[:, held] = values[:, held].to(u.dtype)
    bad = ~torch.isfinite(u).flatten(1).all(dim=1)
    if bad.any():
        # never hand back a silent wrong answer: name the members and what to change
        raise FloatingPointError(
            f"posterior sampling diverged (NaN/inf) for {int(bad.sum())} of {B} members over "
            f"{times[0]} .. {times[-1]} with {obs.m_obs} observations per window; try "
            f"solver='gmres' (the denoiser's Jacobian is not symmetric, which CG assumes), more "
            f"iterations, or covariance='heuristic' (settings: {settings.model_dump()})"
        )
    return u


def reanalysis(
    prior: LatentPrior,
    observations: xr.Dataset | None,
    times: Sequence | np.ndarray,
    seeds: Sequence[int],
    settings: SamplingConfig | None = None,
) -> Tensor:
    """Reanalysis of ``times`` (regular, ``T`` of them): ``M = len(seeds)`` joint posterior
    samples given every observation within them, physical ``(M, T, C, H, W)`` on the CPU.

    Windows of ``K`` states with the settings' stride are denoised together and stitched
    symmetrically; each window conditions on the observations on its frames."""
    settings = settings or SamplingConfig()
    seeds = _check_seeds(seeds)
    times = pd.DatetimeIndex(np.atleast_1d(times))
    if len(times) > 1:
        regular_step(times)
    table = select_observations(observations, times, settings)
    out = []
    for part in _batches(len(seeds), settings.member_batch):
        gens = _generators(seeds[part], prior.device)
        u = sample_latents(prior, times, gens, settings, table)
        out.append(prior.decode(u, times=times).cpu())
    return torch.cat(out)


def reanalysis_continued(
    prior: LatentPrior,
    observations: xr.Dataset | None,
    times: Sequence | np.ndarray,
    keep: int,
    seeds: Sequence[int],
    settings: SamplingConfig | None = None,
    context: Tensor | None = None,
    context_fit: int = 100,
) -> Tensor:
    """A reanalysis of ``times`` that continues known states: physical ``(M, keep, C, H, W)``,
    the first ``keep`` of ``times`` (the later ones, a lag, are sampled with their
    observations so that the kept states see them, and not returned).

    ``context``: physical ``(M, n_ctx, C, H, W)``, member ``m``'s states just before
    ``times`` (e.g. what an archive holds of the member), held as known frames as forecasts
    hold their initial states: their latents are fitted through the decoder
    (:meth:`LatentPrior.fit_latents`, ``context_fit`` steps), then conditioned on (the
    denoiser's known-frame input, or guidance). None: no context (the first period)."""
    settings = settings or SamplingConfig()
    seeds = _check_seeds(seeds)
    times = pd.DatetimeIndex(np.atleast_1d(times))
    step = regular_step(times) if len(times) > 1 else None
    if not 1 <= keep <= len(times):
        raise ValueError(f"keep must lie in [1, {len(times)}], got {keep}")
    n_ctx = 0 if context is None else context.shape[1]
    if context is not None:
        if context.ndim != 5 or context.shape[0] != len(seeds):
            raise ValueError(
                f"context must be (M={len(seeds)}, n_ctx, C, H, W), got {tuple(context.shape)}"
            )
        if step is None:
            raise ValueError("a continued reanalysis needs at least two times")
        context_times = pd.DatetimeIndex([times[0] - step * (n_ctx - j) for j in range(n_ctx)])
        axis = context_times.append(times)
    else:
        axis = times
    table = select_observations(observations, times, settings, step)
    L = len(axis)
    known = np.arange(L) < n_ctx
    out = []
    for part in _batches(len(seeds), settings.member_batch):
        gens = _generators(seeds[part], prior.device)
        values = None
        if context is not None:
            # each member's frames are fitted alone: the result does not depend on the batch
            fitted = prior.fit_latents(
                context[part].to(prior.device), iterations=context_fit, times=context_times
            )
            values = torch.zeros(len(gens), L, *prior.latent_shape, device=prior.device)
            values[:, :n_ctx] = fitted
        u = sample_latents(
            prior, axis, gens, settings, table, ~known, known if n_ctx else None, values
        )
        kept = u[:, n_ctx : n_ctx + keep]
        out.append(prior.decode(kept, times=times[:keep]).cpu())
    return torch.cat(out)


def filtering(
    prior: LatentPrior,
    observations: xr.Dataset | None,
    times: Sequence | np.ndarray,
    seeds: Sequence[int],
    settings: SamplingConfig | None = None,
) -> Tensor:
    """Filtering analyses at each of ``times`` (regular, ``T``): physical ``(M, T, C, H, W)``.

    Cycle ``i`` samples a window of ``K`` states ending at ``t_i`` (the first ``K`` times while
    ``i < K - 1``): the states before ``t_i`` are the member's earlier analyses, held as latent
    conditions; the observations at ``t_i`` are assimilated; later frames are free. The
    analysis at ``t_i`` is the window's state at ``t_i``; only observations up to ``t_i`` are
    read (``select_observations`` is applied per cycle)."""
    settings = settings or SamplingConfig()
    seeds = _check_seeds(seeds)
    times = pd.DatetimeIndex(np.atleast_1d(times))
    T, K = len(times), prior.window
    if T > 1:
        step = regular_step(times)
        axis = (
            times
            if T >= K
            else times.append(pd.DatetimeIndex([times[-1] + step * (j + 1) for j in range(K - T)]))
        )
    else:
        if K > 1:
            raise ValueError("filtering one time needs a window of 1; give at least two times")
        axis = times
    out = []
    for part in _batches(len(seeds), settings.member_batch):
        gens = _generators(seeds[part], prior.device)
        B = len(gens)
        analyses = torch.zeros(B, T, *prior.latent_shape, device=prior.device)
        for i in range(T):
            start = max(0, min(i - K + 1, len(axis) - K))
            window = axis[start : start + K]
            pos = i - start
            known = np.arange(K) < pos
            observable = np.arange(K) == pos
            values = None
            if known.any():
                values = torch.zeros(B, K, *prior.latent_shape, device=prior.device)
                values[:, :pos] = analyses[:, start:i]
            # the cycle sees the observations of t_i only (earlier ones are in its conditions;
            # the step puts one halfway between two cycles in the later one only)
            table = select_observations(
                observations, window[pos : pos + 1], settings, step if T > 1 else None
            )
            u = sample_latents(prior, window, gens, settings, table, observable, known, values)
            analyses[:, i] = u[:, pos]
        out.append(prior.decode(analyses, times=times).cpu())
    return torch.cat(out)


def forecast(
    prior: LatentPrior,
    init_times: Sequence | np.ndarray,
    lead_steps: int,
    step: str | pd.Timedelta,
    seeds: Sequence[int],
    initial: Tensor | None = None,
    observations: xr.Dataset | None = None,
    context: int | None = None,
    mode: Literal["autoregressive", "all_at_once"] = "autoregressive",
    new_states: int | None = None,
    settings: SamplingConfig | None = None,
    initial_fit: int = 100,
) -> tuple[Tensor, pd.TimedeltaIndex]:
    """Forecasts from each initialisation time: physical ``(M, n_init, lead_steps, C, H, W)``
    and the lead times ``step * (1 .. lead_steps)``.

    The context is the ``n_ctx`` states ending at the initialisation time (inclusive), either
    known (``initial``, physical ``(M, n_init, n_ctx, C, H, W)`` per member, e.g. a reanalysis,
    or ``(n_init, n_ctx, C, H, W)`` shared by all members) or observed (``observations`` on the
    context frames, none after the initialisation time, with ``context`` states).

    Arguments:
        mode: ``autoregressive``: windows of ``K`` states, the first ``K - new_states`` known
            (the context, then the latest sampled states), the next ``new_states`` sampled;
            slide by ``new_states``. ``all_at_once``: one joint sample of the context followed
            by ``lead_steps`` free states (stitched windows when longer than ``K``).
        new_states: States sampled per autoregressive window (default ``K // 2``).
        initial_fit: Steps that fit the latents of the known context to ``initial`` through
            the decoder (:meth:`LatentPrior.fit_latents`; 0: the encoder's latents, which for
            decoded states such as a reanalysis lie far off them).
    """
    settings = settings or SamplingConfig()
    seeds = _check_seeds(seeds)
    init_times = pd.DatetimeIndex(np.atleast_1d(init_times))
    step = pd.Timedelta(step)
    if step <= pd.Timedelta(0):
        raise ValueError(f"step must be positive, got {step}")
    if lead_steps < 1:
        raise ValueError(f"lead_steps must be >= 1, got {lead_steps}")
    if mode not in ("autoregressive", "all_at_once"):
        raise ValueError(f"mode must be 'autoregressive' or 'all_at_once', got {mode!r}")
    K, M, n_init = prior.window, len(seeds), len(init_times)
    new = new_states if new_states is not None else max(1, K // 2)
    if mode == "autoregressive" and not 1 <= new < K:
        raise ValueError(f"new_states must lie in [1, K - 1 = {K - 1}], got {new}")
    if initial is None and observations is None:
        raise ValueError("give initial states or observations to start from")
    if initial is not None:
        if initial.ndim == 5:
            initial = initial[None].expand(M, *initial.shape)
        if initial.ndim != 6 or tuple(initial.shape[:2]) != (M, n_init):
            raise ValueError(
                f"initial must be (M={M}, n_init={n_init}, n_ctx, C, H, W) or (n_init, n_ctx, "
                f"C, H, W), got {tuple(initial.shape)}"
            )
        n_ctx = initial.shape[2]
        if context is not None and context != n_ctx:
            raise ValueError(f"context={context} but initial holds {n_ctx} states")
    else:
        n_ctx = (
            context if context is not None else (K - new if mode == "autoregressive" else K // 2)
        )
    if n_ctx < 1:
        raise ValueError(f"the context needs at least one state, got {n_ctx}")
    if mode == "autoregressive" and initial is not None and n_ctx < K - new:
        raise ValueError(
            f"autoregressive windows of {K} with {new} new states condition on {K - new} "
            f"states; initial holds {n_ctx}"
        )
    leads = pd.TimedeltaIndex([step * (j + 1) for j in range(lead_steps)])
    out = torch.zeros(M, n_init, lead_steps, *prior.state_shape)
    for n, t0 in enumerate(init_times):
        ctx_times = pd.DatetimeIndex([t0 - step * (n_ctx - 1 - j) for j in range(n_ctx)])
        known_ctx = None
        if initial is not None:
            known_ctx = prior.fit_latents(
                initial[:, n].to(prior.device), iterations=initial_fit, times=ctx_times
            )
        table = select_observations(observations, ctx_times, settings, step)
        for part in _batches(M, settings.member_batch):
            # each (member, initialisation) draws from its own seed: units of any shape agree
            gens = _generators(
                [derive_seed(s, int(t0.value // 10**9)) for s in seeds[part]], prior.device
            )
            ctx = None if known_ctx is None else known_ctx[part]
            if mode == "all_at_once":
                u = _all_at_once(prior, ctx_times, lead_steps, step, gens, settings, table, ctx)
            else:
                u = _autoregressive(
                    prior, ctx_times, lead_steps, step, new, gens, settings, table, ctx
                )
            out[part, n] = prior.decode(u, times=t0 + leads).cpu()
    return out, leads


def _all_at_once(prior, ctx_times, lead_steps, step, gens, settings, table, ctx) -> Tensor:
    n_ctx = len(ctx_times)
    L = n_ctx + lead_steps
    times = ctx_times.append(
        pd.DatetimeIndex([ctx_times[-1] + step * (j + 1) for j in range(lead_steps)])
    )
    frames = np.arange(L) < n_ctx
    values = None
    if ctx is not None:
        values = torch.zeros(len(gens), L, *prior.latent_shape, device=prior.device)
        values[:, :n_ctx] = ctx
    u = sample_latents(
        prior, times, gens, settings,
        table=None if ctx is not None else table,
        observable=frames, known=frames if ctx is not None else None, known_values=values,
    )  # fmt: skip
    return u[:, n_ctx:]


def _autoregressive(prior, ctx_times, lead_steps, step, new, gens, settings, table, ctx) -> Tensor:
    K = prior.window
    keep = K - new
    B = len(gens)
    if ctx is None:
        # the first window: the context observed, the rest free
        n_ctx = len(ctx_times)
        if n_ctx >= K:
            raise ValueError(f"an observed context of {n_ctx} states leaves no room in K={K}")
        times = ctx_times.append(
            pd.DatetimeIndex([ctx_times[-1] + step * (j + 1) for j in range(K - n_ctx)])
        )
        first = sample_latents(prior, times, gens, settings, table, np.arange(K) < n_ctx)
        trajectory = first
        done = K - n_ctx
        last_time = times[-1]
    else:
        trajectory = ctx[:, -keep:]
        done = 0
        last_time = ctx_times[-1]
    while done < lead_steps:
        times = pd.DatetimeIndex([last_time - step * (keep - 1 - j) for j in range(K)])
        known = np.arange(K) < keep
        values = torch.zeros(B, K, *prior.latent_shape, device=prior.device)
        values[:, :keep] = trajectory[:, -keep:]
        u = sample_latents(prior, times, gens, settings, None, None, known, values)
        trajectory = torch.cat([trajectory, u[:, keep:]], dim=1)
        done += new
        last_time = times[-1]
    leads_total = trajectory.shape[1]
    # the lead states are the last ``done`` ones; keep the first ``lead_steps`` of them
    start = leads_total - done
    return trajectory[:, start : start + lead_steps]
