"""A reanalysis that grows by one day at a time: which days are ready, what each day reads, and
the worker that computes one day of some members into the archive.

Day ``D`` holds the states ``D 00:00 .. D + 1 day - step``. It is sampled as one trajectory
over the day and the ``lag`` days after it, with the observations of all of them, continuing
the archive's states of the day before (member ``m`` continues member ``m``), and only the
day's own states are kept: a fixed-lag smoother, frozen once written. Everything a day reads
is fixed once its observations are final, so a day computed today or in a catch-up after an
outage is the same, bit for bit. No Ray here: :mod:`appa.jobs.daily` runs the days.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from appa.assimilation.units import (
    AssimilationConfig,
    AssimilationWorker,
    PriorLayout,
    input_digests,
)
from appa.config import ConfigError
from appa.io.archive import (
    Archive,
    ArchiveError,
    check_inputs,
    open_archive,
    read_errors_named,
)
from appa.seeds import derive_seed

__all__ = [
    "DailyWorker",
    "day_digests",
    "day_job",
    "day_of",
    "day_seeds",
    "day_times",
    "states_per_day",
]

DAY = pd.Timedelta("1D")


def states_per_day(step: str) -> int:
    """States of one day at ``step``; raises :class:`ConfigError` unless ``step`` divides a
    day."""
    span = pd.Timedelta(step)
    if DAY % span != pd.Timedelta(0):
        raise ConfigError(f"step {step} does not divide a day")
    return int(DAY // span)


def day_of(time: Any) -> pd.Timestamp:
    """The day (midnight) a state belongs to."""
    return pd.Timestamp(time).normalize()


def day_times(day: pd.Timestamp, step: str) -> pd.DatetimeIndex:
    """The states of ``day``."""
    return pd.date_range(day, periods=states_per_day(step), freq=pd.Timedelta(step))


def day_job(base: AssimilationConfig, day: pd.Timestamp, lag_days: int) -> AssimilationConfig:
    """The reanalysis that day ``day`` samples: its states and those of the ``lag_days`` after
    it, with ``base``'s prior, stores, members, sampling and observation checks. Its
    observation period (:func:`~appa.assimilation.units.observation_period`) is what the day
    reads: ``[day - step, day + 1 + lag_days)``."""
    step = pd.Timedelta(base.step)
    end = day + DAY * (1 + lag_days) - step
    return base.model_copy(update={"task": "reanalysis", "start": day, "end": end, "segment": None})


def day_digests(job: AssimilationConfig, layout: PriorLayout, day: pd.Timestamp) -> dict[str, str]:
    """The input digests of one day's units: the prior's, and each store's over the period the
    day reads, named ``observations[i]@YYYY-MM-DD``: a store that gains partitions later leaves
    them as they are, a partition of the day rewritten changes them."""
    digests = input_digests(job, layout)
    stamp = day.strftime("%Y-%m-%d")
    return {
        (f"{name}@{stamp}" if name.startswith("observations[") else name): value
        for name, value in digests.items()
    }


def day_seeds(seed: int, members: Any, day: pd.Timestamp) -> list[int]:
    """The seed of member ``m`` on ``day``: ``derive_seed(seed, m, day in seconds since
    1970)``, the same whichever run computes the day."""
    return [derive_seed(seed, int(m), int(day.value // 10**9)) for m in members]


class DailyWorker:
    """Computes units (a block of members over one day) of a daily archive: loads the prior
    once, and for each day the observations that day reads.

    Arguments:
        base: The assimilation settings every day shares (its ``start``/``end`` are unused).
        first_day: The archive's first day, which starts from no states.
        lag_days: Days of later observations each day is sampled with.
        context_fit: Steps fitting the latents of the day before's states
            (:meth:`~appa.assimilation.LatentPrior.fit_latents`).
        inputs: The input digests the archive records: a unit whose day's inputs differ now
            is refused, so that no day mixes inputs.
        threads: torch CPU threads (None: leave torch's default).
    """

    def __init__(
        self,
        base: AssimilationConfig,
        first_day: pd.Timestamp,
        lag_days: int,
        context_fit: int,
        inputs: dict[str, str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.base = base
        self.first_day = day_of(first_day)
        self.lag_days = lag_days
        self.context_fit = context_fit
        self.expected = inputs
        # the prior and the screening every job uses; the observations are read per day
        self.inner = AssimilationWorker(day_job(base, self.first_day, lag_days), threads=threads)
        self.prior = self.inner.prior
        self._day: pd.Timestamp | None = None
        self._observations = None

    def use_archive(self, archive: Archive) -> None:
        """Checks the next units against ``archive``'s recorded input digests (an actor kept
        across days hears of each day's archive)."""
        self.expected = dict(archive.records["inputs"])

    def _observations_of(self, day: pd.Timestamp):
        if self._day != day:
            self.inner.job = day_job(self.base, day, self.lag_days)
            self._observations = self.inner._observations()
            self._day = day
        return self._observations

    def _context(self, members: np.ndarray, day: pd.Timestamp, n_ctx: int) -> torch.Tensor:
        """``(M, n_ctx, C, H, W)``: each member's last ``n_ctx`` states before ``day``, as the
        archive holds them."""
        from appa.data.spec import stack

        step = pd.Timedelta(self.base.step)
        times = pd.DatetimeIndex([day - step * (n_ctx - j) for j in range(n_ctx)])
        url, options = self.base.output, self.base.storage_options or None
        ds = open_archive(url, options)
        try:
            sel = ds.sel(member=[int(m) for m in members], time=times.values)
        except KeyError:
            raise ArchiveError(f"{url} lacks the states {times[0]} .. {times[-1]}") from None
        with read_errors_named(url, options):
            try:
                x, _ = stack(sel, self.prior.spec, dtype=torch.float32)
            except ValueError as error:  # NaN: cells never written
                raise ArchiveError(
                    f"{url}: the states {times[0]} .. {times[-1]} that {day.date()} continues "
                    f"are not all written ({error})"
                ) from None
        return x

    def __call__(self, unit: Any, coords: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from appa.assimilation import tasks
        from appa.assimilation.units import _to_variables, prior_layout

        members = coords["member"]
        times = pd.DatetimeIndex(coords["time"])
        day = day_of(times[0])
        job = day_job(self.base, day, self.lag_days)
        if self.expected is not None:
            now = day_digests(job, prior_layout(job.prior), day)
            check_inputs(self.base.output, {k: self.expected.get(k) for k in now}, now)
        observations = self._observations_of(day)
        step = pd.Timedelta(self.base.step)
        period = pd.date_range(job.start, job.end, freq=step)
        context = None
        if day > self.first_day:
            n_ctx = max(1, self.prior.window - len(times))
            context = self._context(members, day, min(n_ctx, len(times)))
        x = tasks.reanalysis_continued(
            self.prior,
            observations,
            period,
            len(times),
            day_seeds(self.base.seed, members, day),
            self.base.sampling,
            context=context,
            context_fit=self.context_fit,
        )
        return _to_variables(x.cpu().numpy(), self.prior.spec, forecast=False)
