"""Runs reanalysis, filtering and forecasting jobs on a pool of Ray actors. Orchestration only:
the archive is planned here, every actor holds one
:class:`~appa.assimilation.jobs.AssimilationWorker` (the prior loaded once) and writes its
units into the archive itself; the driver sees only small records of finished units.
"""

from __future__ import annotations

import functools

from pydantic import Field

from appa.assimilation.jobs import (
    AssimilationConfig,
    AssimilationWorker,
    check_observations,
    job_times,
    prior_layout,
    provenance,
)
from appa.distributed.pool import PoolConfig, PoolReport, run_units
from appa.io.archive import Archive, create_archive, template_from_spec

__all__ = ["AssimilationJob", "plan_archive", "run_assimilation"]


class AssimilationJob(AssimilationConfig):
    """An :class:`~appa.assimilation.jobs.AssimilationConfig` and the actor pool it runs on
    (``runner``: a local Ray cluster by default, ``runner.address`` for an existing one)."""

    runner: PoolConfig = Field(default_factory=PoolConfig)


def _worker(job: AssimilationJob, threads: int | None) -> AssimilationWorker:
    return AssimilationWorker(job, threads=threads)


def plan_archive(job: AssimilationJob) -> Archive:
    """Creates the job's archive (or reopens it to resume: same config only), once the job's
    observations are known to fit the prior's states."""
    import pandas as pd

    layout = prior_layout(job.prior)
    times = job_times(job)
    check_observations(job, layout.spec, layout.window)
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
    units: dict[str, int] = {"member": job.members_per_unit}
    if job.segment is not None:
        units["time"] = job.segment
    return create_archive(
        job.output,
        template,
        units=units,
        # what the archive holds, not where it lives or runs: a moved archive resumes elsewhere
        config=job.model_dump(
            mode="json", exclude={"runner", "overwrite", "output", "storage_options"}
        ),
        provenance=provenance(job, layout, times),
        overwrite=job.overwrite,
        storage_options=job.storage_options or None,
    )


def run_assimilation(job: AssimilationJob) -> tuple[Archive, PoolReport]:
    """Plans the archive, computes its pending units on Ray actors and finalises it. A rerun
    of a finished or killed job skips the units already written."""
    archive = plan_archive(job)
    runner = job.runner
    threads = max(1, int(runner.num_cpus)) if runner.num_gpus == 0 else None
    report = run_units(archive, functools.partial(_worker, job, threads), runner)
    archive.finalize()
    return archive, report
