"""Which observations a job uses, and the account of every one it reads.

:func:`screen_observations` gives each observation of a table one verdict, in this order:

1. ``outside_period``: its nearest state time is not a state of the job; ``off_time``: it lies
   further from that state than the time rule allows (``sampling.time_rule`` and
   ``sampling.time_tolerance``, :func:`appa.observations.screening.assign_times`);
2. ``out_of_bounds``: its value lies outside the physical bounds of its variable
   (:func:`appa.observations.quality.outside_bounds`, the range check of ingest's quality
   control);
3. ``gross_deviation``: its value departs from the prior's climatological mean of its channel
   by more than ``gross_std`` times ``sqrt(std^2 + error_std^2)`` (the prior's spread of that
   channel and the observation's error): ingest's background check
   (:func:`appa.observations.quality.departure_exceeds`) with the prior's climatology as the
   background;
4. ``used`` otherwise.

The driver summarises the verdicts (:class:`ObservationSummary`) and refuses a store whose
observations of a channel are mostly rejected, naming the likely unit mistake; every worker
assimilates the ``used`` observations of the same verdicts, each at its state's time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import Field

from appa.config import StrictModel
from appa.data.spec import StateSpec
from appa.observations.operator import VerticalRule, observation_channels
from appa.observations.quality import departure_exceeds, outside_bounds
from appa.observations.schema import ObservationError
from appa.observations.screening import (
    CANONICAL_UNITS,
    OFF_TIME,
    OUTSIDE_PERIOD,
    assign_times,
    physical_bounds,
    unit_mistakes,
)

__all__ = [
    "REASONS",
    "ObservationSummary",
    "ObservationUseConfig",
    "Screening",
    "StoreSummary",
    "check_plausible",
    "screen_observations",
]

# why an observation is not used, in the order the checks apply
REASONS: dict[str, str] = {
    "outside_period": "outside the period",
    "off_time": "off the state times",
    "out_of_bounds": "outside physical bounds",
    "gross_deviation": "far from the prior's climatology",
    "not_in_state": "of a variable or level the prior's state lacks",
}
REJECTED = ("out_of_bounds", "gross_deviation")


class ObservationUseConfig(StrictModel):
    """How a job checks its observations before assimilating them (which state an observation
    belongs to is ``sampling.time_rule``).

    Attributes:
        unobserved: Days of the period on which no observation is used: ``refuse`` (an error
            naming them: those days would be prior samples written as analyses) or ``flag``
            (run, and list them in the archive's ``unobserved_days`` and the summary).
        gross_std: An observation departing from the prior's climatological mean of its
            channel by more than ``gross_std * sqrt(std^2 + error_std^2)`` is rejected.
        max_rejected: A store whose observations of one channel are rejected (physical bounds
            or ``gross_std``) more often than this fraction stops the job, naming the likely
            unit mistake.
        outside_state: Observations of a variable or level the prior's state lacks:
            ``refuse`` (an error naming them: a misspelt variable, a store made for another
            state) or ``skip`` (counted as ``not_in_state``: a store of real reports holds
            dew points, station pressures and significant levels of soundings that a state
            of a few variables on standard levels has no channel for).
    """

    unobserved: Literal["refuse", "flag"] = "refuse"
    outside_state: Literal["refuse", "skip"] = "refuse"
    gross_std: float = Field(10.0, gt=0)
    max_rejected: float = Field(0.5, ge=0, le=1)


def _labels(table: xr.Dataset) -> np.ndarray:
    """``variable`` or ``variable@level`` of each observation (the state's channel names)."""
    variables = table["variable"].values.astype(str)
    levels = table["level"].values
    out = variables.astype(object)
    for level in np.unique(levels[np.isfinite(levels)]):
        at = levels == level
        text = str(int(level)) if float(level).is_integer() else str(float(level))
        out[at] = np.char.add(variables[at], f"@{text}")
    return out.astype(str)


@dataclass
class Screening:
    """The verdict on each observation ``(m,)`` of ``table``: ``reason`` (``used`` or a key of
    :data:`REASONS`), ``state`` (index into ``states``, -1 for none), ``label`` (its channel's
    name)."""

    table: xr.Dataset
    states: pd.DatetimeIndex
    state: np.ndarray
    reason: np.ndarray
    label: np.ndarray

    @property
    def num_used(self) -> int:
        return int(np.sum(self.reason == "used"))

    def used(self) -> xr.Dataset | None:
        """The used observations, in the table's order, each at its state's time (None when
        none): what a worker assimilates."""
        keep = np.flatnonzero(self.reason == "used")
        if keep.size == 0:
            return None
        table = self.table.isel(obs=keep)
        return table.assign(time=("obs", self.states.values[self.state[keep]]))

    def counts(self) -> dict[str, dict[str, Any]]:
        """``{label: {"read": n, "used": n, "dropped": {reason: n}}}``, labels sorted."""
        out: dict[str, dict[str, Any]] = {}
        for label in sorted(set(self.label.tolist())):
            at = self.label == label
            reasons, n = np.unique(self.reason[at], return_counts=True)
            found = dict(zip(reasons.tolist(), n.tolist(), strict=True))
            out[label] = {
                "read": int(at.sum()),
                "used": int(found.pop("used", 0)),
                "dropped": {r: int(found[r]) for r in REASONS if r in found},
            }
        return out


def screen_observations(
    table: xr.Dataset,
    states: pd.DatetimeIndex,
    step: pd.Timedelta,
    tolerance: pd.Timedelta,
    spec: StateSpec,
    mean: Sequence[float] | np.ndarray,
    std: Sequence[float] | np.ndarray,
    gross_std: float,
    outside_state: Literal["refuse", "skip"] = "refuse",
    vertical: VerticalRule = "exact",
) -> Screening:
    """The verdict on each observation of ``table`` (see the module docstring).

    Arguments:
        states: The states at which the job uses observations (sorted, on a grid of ``step``).
        tolerance: How far an observation may lie from its state (the time rule's).
        spec, mean, std: The prior's channels and their climatological mean and standard
            deviation ``(C,)`` (physical units).
        outside_state: ``skip``: observations of a variable or level the state lacks are
            ``not_in_state``; ``refuse``: an error.
        vertical: ``log_pressure`` or ``depth``: a level between two of the state's levels is
            in the state
            (:func:`appa.observations.operator.vertical_weights`); its gross check uses the
            nearer level's statistics.

    Raises:
        ObservationError: for a used-in-time observation of a variable or level the prior's
            states lack (naming them), unless ``outside_state`` is ``skip``.
    """
    m = table.sizes["obs"]
    state = assign_times(table["time"].values, states, tolerance, step)
    reason = np.full(m, "used", dtype=object)
    reason[state == OUTSIDE_PERIOD] = "outside_period"
    reason[state == OFF_TIME] = "off_time"
    if outside_state == "skip":
        inside = np.isin(_labels(table), spec.channel_names())
        if vertical in ("log_pressure", "depth") and spec.levels:
            levels = table["level"].values.astype(np.float64)
            atmospheric = np.isin(table["variable"].values.astype(str), spec.atmospheric)
            with np.errstate(invalid="ignore"):
                between = (levels > min(spec.levels)) & (levels < max(spec.levels))
            inside |= atmospheric & between
        reason[(state >= 0) & ~inside] = "not_in_state"
        state = np.where(inside, state, OUTSIDE_PERIOD)
    timely = np.flatnonzero(state >= 0)
    if timely.size:
        sub = table.isel(obs=timely)
        channel = observation_channels(sub, spec, vertical)
        value = sub["value"].values.astype(np.float64)
        error = sub["error_std"].values.astype(np.float64)
        mean = np.asarray(mean, dtype=np.float64)[channel]
        std = np.asarray(std, dtype=np.float64)[channel]
        verdict = np.full(timely.size, "used", dtype=object)
        verdict[departure_exceeds(value, mean, std, error, gross_std)] = "gross_deviation"
        outside = outside_bounds(sub["variable"].values, sub["level"].values, value, error)
        verdict[outside] = "out_of_bounds"
        reason[timely] = verdict
    return Screening(table, states, state, reason.astype(str), _labels(table))


def _nearest_channel(screening: Screening, at: np.ndarray, spec: StateSpec) -> int:
    """The channel nearest (in log-pressure, or in depth) to the level of the observations
    ``at``."""
    first = screening.table.isel(obs=[int(np.flatnonzero(at)[0])])
    rule = "depth" if spec.vertical == "depth" else "log_pressure"
    return int(observation_channels(first, spec, rule)[0])


def _units(variable: str) -> str:
    units = CANONICAL_UNITS.get(variable, "")
    return {"m**2 s**-2": "m2/s2", "m s**-1": "m/s"}.get(units, units)


def check_plausible(
    screening: Screening,
    spec: StateSpec,
    mean: Sequence[float] | np.ndarray,
    std: Sequence[float] | np.ndarray,
    use: ObservationUseConfig,
) -> None:
    """Refuses (:class:`ObservationError`) a table whose observations of a channel are
    rejected by the gross checks more often than ``use.max_rejected``, naming the likely unit
    mistake when undoing one (``unit_mistakes`` of :mod:`appa.observations.screening`) makes
    most of its values plausible, else the counts, the median and the prior's mean."""
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    names = spec.channel_names()
    for label in sorted(set(screening.label.tolist())):
        at = screening.label == label
        judged = at & np.isin(screening.reason, ["used", *REJECTED])
        rejected = at & np.isin(screening.reason, REJECTED)
        n, r = int(judged.sum()), int(rejected.sum())
        if n == 0 or r <= use.max_rejected * n:
            continue
        # a level between two of the state's is judged by the nearer one's statistics
        c = names.index(label) if label in names else _nearest_channel(screening, at, spec)
        variable, level = spec.channels[c]
        value = screening.table["value"].values[judged].astype(np.float64)
        error = screening.table["error_std"].values[judged].astype(np.float64)
        spread = np.sqrt(std[c] ** 2 + error**2)
        bounds = physical_bounds(variable, None if level is None else float(level))
        units = _units(variable)

        def plausible(v: np.ndarray, c: int = c, bounds=bounds, spread=spread) -> np.ndarray:
            ok = np.abs(v - mean[c]) <= use.gross_std * spread
            return ok if bounds is None else ok & (v >= bounds[0]) & (v <= bounds[1])

        # the mistakes that make most values plausible, with how far (in std) their median
        # lands from the prior's mean; values near the mean may fit two (degC and degF near
        # 0 degC): name the first listed (the most common) of those within 1 std of the best
        fits = []
        for description, to_si in unit_mistakes(variable):
            converted = to_si(value)
            if plausible(converted).mean() > 0.5:
                fits.append((description, abs(float(np.median(converted)) - mean[c]) / std[c]))
        closest = min((gap for _, gap in fits), default=np.inf)
        best = next((d for d, gap in fits if gap <= closest + 1.0), None)
        median = float(np.median(value))
        prior = f"the prior's mean is {mean[c]:.4g} {units}".rstrip()
        if best is not None:
            raise ObservationError(f"{label} looks like {best} (median {median:.4g}; {prior})")
        counts = screening.counts()[label]["dropped"]
        parts = []
        if counts.get("out_of_bounds"):
            parts.append(
                f"{counts['out_of_bounds']} outside the physical bounds "
                f"{bounds[0]:.4g} .. {bounds[1]:.4g} {units}".rstrip()
                if bounds is not None
                else f"{counts['out_of_bounds']} outside the physical bounds"
            )
        if counts.get("gross_deviation"):
            parts.append(
                f"{counts['gross_deviation']} more than {use.gross_std:g} std from the prior's mean"
            )
        raise ObservationError(
            f"{r} of {n} {label} observations ({r / n:.0%}) fail the gross checks "
            f"({', '.join(parts)}; median {median:.4g}, {prior}, std {std[c]:.4g}); check the "
            f"store's units and values, or raise observation_use.max_rejected "
            f"({use.max_rejected:g}) to drop them and go on"
        )


class Counts(StrictModel):
    """Observations read, used, and dropped by reason (keys of :data:`REASONS`)."""

    read: int = 0
    used: int = 0
    dropped: dict[str, int] = Field(default_factory=dict)

    def describe(self) -> str:
        dropped = sum(self.dropped.values())
        text = f"{self.read} read, {self.used} used"
        if dropped:
            why = ", ".join(f"{n} {REASONS.get(r, r)}" for r, n in self.dropped.items())
            text += f", {dropped} dropped ({why})"
        return text


class StoreSummary(Counts):
    """One store's counts, in all and per channel (``variable`` or ``variable@level``)."""

    path: str
    channels: dict[str, Counts] = Field(default_factory=dict)

    @classmethod
    def of(cls, path: str, screenings: Sequence[Screening]) -> StoreSummary:
        channels: dict[str, Counts] = {}
        for screening in screenings:
            for label, c in screening.counts().items():
                into = channels.setdefault(label, Counts())
                into.read += c["read"]
                into.used += c["used"]
                for r, n in c["dropped"].items():
                    into.dropped[r] = into.dropped.get(r, 0) + n
        total = Counts()
        for c in channels.values():
            total.read += c.read
            total.used += c.used
            for r, n in c.dropped.items():
                total.dropped[r] = total.dropped.get(r, 0) + n
        total.dropped = {r: total.dropped[r] for r in REASONS if r in total.dropped}
        for c in channels.values():
            c.dropped = {r: c.dropped[r] for r in REASONS if r in c.dropped}
        return cls(path=path, channels=channels, **total.model_dump())


class ObservationSummary(StrictModel):
    """What a job does with every observation it reads: the rules, per store and channel the
    counts read (the store's partitions that overlap the period), used and dropped by reason,
    and the days of the period without a used observation. Written into the archive's root
    attributes (``observation_summary``, ``unobserved_days``) and printed by the CLI."""

    time_rule: str
    gross_checks: str
    states: int
    days: list[str]
    unobserved: Literal["refuse", "flag"]
    unobserved_days: list[str] = Field(default_factory=list)
    stores: list[StoreSummary] = Field(default_factory=list)
    note: str | None = None

    def lines(self) -> list[str]:
        """The summary for people, one line each."""
        out = [f"observations: {self.time_rule}; gross checks: {self.gross_checks}"]
        if self.note:
            out.append(f"  {self.note}")
        for store in self.stores:
            out.append(f"  {store.path}: {store.describe()}")
            out += [f"    {name}: {c.describe()}" for name, c in store.channels.items()]
        if self.unobserved_days:
            out.append(
                f"  unobserved days (no observation used; prior samples there): "
                f"{', '.join(self.unobserved_days)}"
            )
        return out

    def attributes(self) -> dict[str, Any]:
        """Root attributes of the job's archive."""
        return {
            "observation_summary": self.model_dump(mode="json"),
            "unobserved_days": list(self.unobserved_days),
        }

    @classmethod
    def from_attributes(cls, attrs: Mapping[str, Any]) -> ObservationSummary | None:
        """The summary an archive's root attributes hold (None when they hold none)."""
        value = attrs.get("observation_summary")
        if value is None:
            return None
        return cls.model_validate(json.loads(value) if isinstance(value, str) else value)
