"""``appa daily``: the reanalysis a scheduler runs every day. It works out which days are pending
from the archive's own record (``complete_through``) and the observation stores (a day is ready
once every partition it reads is final), computes them in order, extends the archive along
``time`` for each (a resize to the day's end, never an append), and records the new end. A
catch-up after an outage computes the missed days one after another; a rerun of a finished day
computes nothing; one writer at a time (:func:`appa.files.writer_lock`: a ``flock`` beside a
local archive, a lease renewed by a heartbeat beside an archive on an object store, checked
before every write).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from pydantic import Field, field_validator, model_validator

from appa.assimilation.daily import (
    DAY,
    DailyWorker,
    day_digests,
    day_job,
    day_of,
    states_per_day,
)
from appa.assimilation.screening import ObservationUseConfig
from appa.assimilation.tasks import SamplingConfig
from appa.assimilation.units import (
    AssimilationConfig,
    PriorConfig,
    check_observations,
    job_identity,
    prior_layout,
    provenance,
)
from appa.config import StrictModel, Timestamp
from appa.distributed.runner import RayConfig, check_cluster, init_ray
from appa.files import writer_lock
from appa.io.archive import (
    Archive,
    ArchiveError,
    create_archive,
    reopen_archive,
    template_from_spec,
)
from appa.observations.schema import missing_partitions

__all__ = ["DailyConfig", "DailyReport", "pending_days", "run_daily"]


class DailyConfig(StrictModel):
    """What ``appa daily`` extends: the archive ``output`` from ``first_day`` on, one day per
    day, with the assimilation settings of ``appa reanalysis`` (prior, stores, members,
    sampling, observation checks) and where it runs (``runner``; ``backend: local`` computes
    in this process).

    Each day is sampled with the observations of the ``lag_days`` days after it (a fixed-lag
    smoother) and continues the archive's states of the day before, whose latents are fitted
    with ``context_fit`` steps. A store's partition counts as final once a later one is
    listed, or ``partition_final_after`` after its end. A second run on the same archive
    waits ``lock_wait_s`` seconds for the first, then refuses. ``output`` may be an fsspec URL
    (``gs://``, ``s3://``, with ``storage_options``): its writer holds a lease of ``lease_s``
    seconds renewed every ``lease_renew_s`` seconds (:class:`appa.files.ObjectLease`)."""

    prior: PriorConfig = Field(default_factory=PriorConfig)
    observations: list[str]
    first_day: Timestamp
    lag_days: int = Field(1, ge=0)
    step: str = "6h"
    members: int = Field(8, ge=1)
    seed: int = 0
    members_per_unit: int = Field(1, ge=1)
    context_fit: int = Field(100, ge=0)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    observation_use: ObservationUseConfig = Field(default_factory=ObservationUseConfig)
    partition_final_after: str = "1D"
    lock_wait_s: float = Field(0.0, ge=0)
    lease_s: float = Field(60.0, gt=0)
    lease_renew_s: float = Field(20.0, gt=0)
    output: str
    storage_options: dict[str, Any] = Field(default_factory=dict)
    runner: RayConfig = Field(default_factory=RayConfig)

    @field_validator("first_day")
    @classmethod
    def _midnight(cls, value: str) -> str:
        if pd.Timestamp(value) != pd.Timestamp(value).normalize():
            raise ValueError(f"first_day must be a day (midnight), got {value}")
        return value

    @field_validator("partition_final_after")
    @classmethod
    def _duration(cls, value: str) -> str:
        try:
            pd.Timedelta(value)
        except ValueError as error:
            raise ValueError(f"{value!r} is not a duration: {error}") from None
        return value

    @model_validator(mode="after")
    def _renewed_in_time(self) -> DailyConfig:
        # the holder counts itself lost a sixth of the lease before it expires
        if self.lease_renew_s >= self.lease_s * 5 / 6:
            raise ValueError(
                f"lease_renew_s ({self.lease_renew_s}) must be shorter than five sixths of "
                f"lease_s ({self.lease_s}): the lease would expire between two renewals"
            )
        return self

    def base(self) -> AssimilationConfig:
        """The assimilation settings every day shares (``start``/``end``: the first day)."""
        day = pd.Timestamp(self.first_day)
        fields = self.model_dump(
            exclude={"first_day", "lag_days", "context_fit", "partition_final_after",
                     "lock_wait_s", "lease_s", "lease_renew_s", "runner"}
        )  # fmt: skip
        end = day + DAY - pd.Timedelta(self.step)
        return AssimilationConfig.model_validate({**fields, "start": day, "end": end})


def daily_identity(job: DailyConfig) -> dict[str, Any]:
    """What a daily archive holds, as JSON (its config hash): the shared settings without the
    period, where it runs or writes and the paths of its inputs (their per-day digests are
    recorded instead), plus the first day, the lag and the context fit."""
    identity = job_identity(job.base())
    for name in ("start", "end", "task", "segment", "forecast"):
        identity.pop(name, None)
    identity["daily"] = {
        "first_day": str(pd.Timestamp(job.first_day)),
        "lag_days": job.lag_days,
        "context_fit": job.context_fit,
    }
    return identity


@dataclass
class DailyReport:
    """What a run did: the days computed (``days``), units computed and already done, and
    why it stopped where it did (``waiting``: the partition not yet final)."""

    days: list[str] = field(default_factory=list)
    computed: int = 0
    skipped: int = 0
    complete_through: str | None = None
    waiting: str | None = None


def _ready(job: DailyConfig, day: pd.Timestamp, now: pd.Timestamp) -> str | None:
    """Why ``day`` cannot be computed yet (a store lacks a final partition it reads), or None."""
    end = day + DAY * (1 + job.lag_days)
    for path in job.observations:
        why = missing_partitions(path, day, end, job.partition_final_after, now)
        if why is not None:
            return why
    return None


def pending_days(
    job: DailyConfig, complete_through: pd.Timestamp | None, now: pd.Timestamp
) -> tuple[list[pd.Timestamp], str | None]:
    """The days after ``complete_through`` (from ``first_day`` when None) whose observations
    are final by ``now``, in order, and why the next one is not."""
    day = pd.Timestamp(job.first_day) if complete_through is None else complete_through + DAY
    days = []
    while (why := _ready(job, day, now)) is None:
        days.append(day)
        day += DAY
    return days, why


def _daily_worker(
    base: AssimilationConfig,
    first_day: str,
    lag_days: int,
    context_fit: int,
    inputs: dict[str, str],
    threads: int | None,
) -> DailyWorker:
    return DailyWorker(base, pd.Timestamp(first_day), lag_days, context_fit, inputs, threads)


def _check_recorded(
    archive: Archive, job: DailyConfig, layout: Any, days: list[pd.Timestamp]
) -> None:
    """Refuses a run whose new days read partitions that a day already written read
    differently: the recorded days whose periods overlap those of ``days``."""
    from appa.io.archive import check_inputs

    if not days:
        return
    saved = archive.records.get("inputs", {})
    base = job.base()
    for back in range(job.lag_days + 1, 0, -1):
        day = days[0] - DAY * back
        stamp = day.strftime("%Y-%m-%d")
        if not any(k.endswith(f"@{stamp}") for k in saved):
            continue
        now = day_digests(day_job(base, day, job.lag_days), layout, day)
        check_inputs(archive.url, {k: saved.get(k) for k in now}, now)


def run_daily(
    job: DailyConfig,
    echo: Callable[[str], None] | None = None,
    now: pd.Timestamp | None = None,
) -> DailyReport:
    """Extends the archive by every pending day (see the module docstring) and returns what
    it did. ``now``: the clock that decides which partitions are final (default: now, UTC).

    Raises:
        WriterBusyError: another run holds the archive (after ``lock_wait_s``);
            :class:`~appa.files.WriterLostError` when this run lost its lease (it stops
            before its next write).
        ArchiveError: the archive is another config's, not a daily archive, or a day already
            written read observations that changed since.
        ObservationError, ConfigError: as ``appa reanalysis``.
    """
    say = echo or print
    now = pd.Timestamp.now(tz="UTC").tz_localize(None) if now is None else pd.Timestamp(now)
    base = job.base()
    per_day = states_per_day(job.step)
    identity = daily_identity(job)
    report = DailyReport()
    options = job.storage_options or None
    with writer_lock(
        job.output,
        job.lock_wait_s,
        storage_options=options,
        lease_s=job.lease_s,
        renew_s=job.lease_renew_s,
    ) as held:
        layout = prior_layout(job.prior)
        archive = _open_existing(job, identity, say)
        through = None
        if archive is not None and archive.records.get("complete_through"):
            through = pd.Timestamp(archive.records["complete_through"])
        repair = []
        if archive is not None:
            # units of days already published that failed their read-back: recomputed first
            repair = sorted({day_of(archive.coords(u)["time"][0]) for u in archive.pending_units()})
            repair = [d for d in repair if through is not None and d <= through]
        days, report.waiting = pending_days(job, through, now)
        report.complete_through = None if through is None else str(through.date())
        if not days and not repair:
            return report
        if archive is not None:
            _check_recorded(archive, job, layout, days)
        if job.runner.backend == "ray":
            check_cluster(job.runner)
        threads = None if job.runner.use_gpu else job.runner.threads()
        started = job.runner.backend == "ray" and init_ray(job.runner)
        local: DailyWorker | None = None
        actors = None  # the Ray actor pool, kept across days
        try:
            for day in [*repair, *days]:
                djob = day_job(base, day, job.lag_days)
                summary = check_observations(djob, layout)
                digests = day_digests(djob, layout, day)
                held.check()
                times = pd.date_range(job.first_day, day + DAY - pd.Timedelta(job.step),
                                      freq=pd.Timedelta(job.step))  # fmt: skip
                if archive is None:
                    template = template_from_spec(
                        layout.spec,
                        members=job.members,
                        time=times.values,
                        latitude=layout.latitude,
                        longitude=layout.longitude,
                    )
                    facts = provenance(base, layout, times, summary)
                    facts["seed_rule"] = (
                        "member m of day D draws from appa.seeds.derive_seed(seed, m, D in "
                        "seconds since 1970)"
                    )
                    facts.pop("seeds", None)
                    facts.pop("period", None)
                    archive = create_archive(
                        job.output,
                        template,
                        units={"member": job.members_per_unit, "time": per_day},
                        config=identity,
                        inputs=digests,
                        provenance=facts,
                        allow_nan=layout.masked,
                        extensible=True,
                        storage_options=options,
                    )
                else:
                    # a resize to the day's end (nothing to do when it is there already) and a
                    # check of the day's digests against any recorded for it
                    times = times.union(pd.DatetimeIndex(archive.coords(archive.units[-1])["time"]))
                    archive.extend_time(times.values, digests)
                index = (day - pd.Timestamp(job.first_day)) // DAY
                units = [u for u in archive.units if u.region["time"].start // per_day == index]
                inputs = dict(archive.records["inputs"])
                computed, skipped = 0, 0
                if job.runner.backend == "local":
                    if local is None:
                        local = _daily_worker(
                            base, job.first_day, job.lag_days, job.context_fit, inputs, threads
                        )
                    local.expected = inputs
                    done = archive.done_mask()
                    for unit in units:
                        if done[unit.index]:
                            skipped += 1
                            continue
                        data = local(unit, archive.coords(unit))
                        held.check()  # a writer that lost its lease writes nothing more
                        computed += archive.write_unit(unit, data)
                else:
                    from appa.distributed.pool import ActorPool, run_units

                    factory = functools.partial(
                        _daily_worker, base, job.first_day, job.lag_days, job.context_fit,
                        inputs, threads,
                    )  # fmt: skip
                    # one pool for every day of the run: the prior loads once per actor, and
                    # each day's units bring that day's archive (and its recorded inputs)
                    actors = actors or ActorPool()
                    ran = run_units(
                        archive, factory, job.runner, units=units, before_each=held.check,
                        pool=actors,
                    )  # fmt: skip
                    computed, skipped = sum(r.written for r in ran.records), ran.skipped
                report.computed += computed
                report.skipped += skipped
                stamp = str(day.date())
                log = dict(archive.records.get("days", {}))
                log[stamp] = {
                    "written": datetime.now(UTC).isoformat(timespec="seconds"),
                    "inputs": {k: v for k, v in digests.items() if k.endswith(f"@{stamp}")},
                    "observations_used": {s.path: s.used for s in summary.stores},
                    "units_computed": computed,
                }
                last = max(stamp, archive.records.get("complete_through") or stamp)
                held.check()
                archive.record(
                    {"complete_through": last, "days": log},
                    attrs={"daily_complete_through": last, "daily_log": log},
                )
                archive.finalize()
                report.days.append(stamp)
                report.complete_through = last
                say(f"{stamp}: {computed} units computed, {skipped} already done")
        finally:
            if actors is not None:
                actors.close()
            if started:
                import ray

                ray.shutdown()
    return report


def _open_existing(job: DailyConfig, identity: dict, say: Callable[[str], None]) -> Archive | None:
    """The daily archive already at ``job.output`` (its done units read back; damaged ones
    pending again), or None when there is none. Refuses another product or config."""
    archive = reopen_archive(
        job.output, config=identity, storage_options=job.storage_options or None
    )
    if archive is None:
        return None
    if not archive.extensible:
        raise ArchiveError(f"{archive.url} is not a daily archive (it cannot grow along time)")
    for line in archive.notes:
        say(line)
    return archive
