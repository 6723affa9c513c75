"""``appa reanalysis | filter | forecast``: the job config and its run function. The archive is
planned here; every actor of the pool (:mod:`appa.distributed.pool`) holds one
:class:`~appa.assimilation.units.AssimilationWorker` (the prior loaded once) and writes its
units into the archive itself; the driver sees only small records of finished units.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from pydantic import Field

from appa.assimilation.units import (
    AssimilationConfig,
    AssimilationWorker,
    check_observations,
    input_digests,
    job_identity,
    job_times,
    prior_layout,
    provenance,
)
from appa.distributed.pool import PoolReport, run_units
from appa.distributed.runner import RayConfig, check_cluster
from appa.io.archive import Archive, create_archive, template_from_spec

__all__ = ["AssimilateConfig", "plan_archive", "run_assimilation"]


class AssimilateConfig(AssimilationConfig):
    """An :class:`~appa.assimilation.units.AssimilationConfig` and the actor pool it runs on
    (``runner``: a local Ray cluster by default, ``runner.address`` for an existing one)."""

    runner: RayConfig = Field(default_factory=RayConfig)


def _worker(
    settings: AssimilationConfig, threads: int | None, inputs: dict[str, str]
) -> AssimilationWorker:
    return AssimilationWorker(settings, threads=threads, inputs=inputs)


def plan_archive(job: AssimilateConfig) -> Archive:
    """Creates the job's archive (or reopens it to resume: same config only), once the prior's
    checkpoints are checked, the job's observations are known to fit its states and pass their
    checks (their summary goes into the archive's root attributes) and the cluster of
    ``runner.address`` (if any) answers."""
    import pandas as pd

    layout = prior_layout(job.prior)
    times = job_times(job)
    observations = check_observations(job, layout)
    lead = None
    if job.task == "forecast":
        step = pd.Timedelta(job.step)
        lead = [step * (j + 1) for j in range(job.forecast.lead_steps)]
    template = template_from_spec(
        layout.spec,
        members=job.members,
        time=times.values,
        latitude=layout.latitude,
        longitude=layout.longitude,
        lead_time=None if lead is None else pd.TimedeltaIndex(lead).values,
    )
    digests = input_digests(job, layout)
    units: dict[str, int] = {"member": job.members_per_unit}
    if job.segment is not None:
        units["time"] = job.segment
    check_cluster(job.runner)  # last of the checks: an unreachable cluster leaves no archive
    return create_archive(
        job.output,
        template,
        units=units,
        # what the archive holds, not where it lives or runs: a moved archive resumes elsewhere
        config=job_identity(job),
        inputs=digests,
        provenance={**provenance(job, layout, times, observations), "input_digests": digests},
        allow_nan=layout.masked,
        overwrite=job.overwrite,
        storage_options=job.storage_options or None,
    )


def run_assimilation(
    job: AssimilateConfig, echo: Callable[[str], None] | None = None
) -> tuple[Archive, PoolReport]:
    """Plans the archive, computes its pending units on Ray actors and finalises it. A rerun
    of a finished or killed job skips the units already written and read back whole, and
    computes again those that do not read back; ``echo`` hears what planning found (a
    damaged unit, a stub replaced: :attr:`~appa.io.archive.Archive.notes`)."""
    archive = plan_archive(job)
    for note in archive.notes:
        (echo or print)(note)
    runner = job.runner
    threads = None if runner.use_gpu else runner.threads()
    settings = AssimilationConfig.model_validate(job.model_dump(exclude={"runner"}))
    inputs = dict(archive.records["inputs"])
    report = run_units(archive, functools.partial(_worker, settings, threads, inputs), runner)
    archive.finalize()
    return archive, report
