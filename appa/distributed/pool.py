"""Runs the units of an archive on a pool of Ray actors. Orchestration only.

Each actor builds its worker once from a picklable factory (in a real job: loads the
autoencoder and the denoiser), then, per unit, computes the unit's fields and writes them into
the archive itself (:meth:`appa.io.archive.Archive.write_unit`); the driver receives small
:class:`UnitRecord` s (unit key, seconds, actor), never fields.

Failures: an actor that dies (a crash, an out-of-memory kill, a lost node) is restarted by Ray
up to ``max_restarts`` times, and its unit goes back in the queue for whichever actor is free
next; a unit that fails ``max_attempts`` times ends the job with :class:`UnitFailedError`
naming it. Bad data (:class:`~appa.io.archive.ArchiveError` from the write) ends the job at once:
it would fail again. Units already done are skipped at the start, and again by the actor that
receives one (so a rerun of a finished or killed job computes only what is missing).

The same code runs on a local cluster (``ray.init()``, one CPU actor per core by default) and
on a cluster (``address``; ``gpus_per_worker: 1`` for one GPU per actor), as
:class:`~appa.distributed.runner.RayConfig` says.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from appa.config import ConfigError
from appa.distributed.runner import RayConfig, init_ray
from appa.io.archive import Archive, ArchiveError, Unit
from appa.observations.schema import ObservationError

__all__ = [
    "ActorPool",
    "PoolReport",
    "UnitActor",
    "UnitFailedError",
    "UnitRecord",
    "UnitWorker",
    "WorkerFactory",
    "run_units",
]


@dataclass(frozen=True)
class UnitRecord:
    """What the driver hears of one finished unit: ``written`` is False when the actor found
    it already done; ``attempt`` counts from 1; ``seconds`` of compute and write."""

    key: str
    index: int
    seconds: float
    actor: str
    attempt: int
    written: bool


@dataclass
class PoolReport:
    """The outcome of :func:`run_units`: a record per unit run now, the number of units
    already done at the start, the failed attempts (unit key and error) and the pool size."""

    records: list[UnitRecord] = field(default_factory=list)
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    actors: int = 0


class UnitFailedError(RuntimeError):
    """A unit kept failing (or every actor died); the message names the unit."""


class UnitWorker(Protocol):
    """Computes one unit: ``coords`` are the unit's ``member`` / ``time`` (/ ``lead_time``)
    values; returns ``{variable: array}`` or a dataset shaped like the unit's region."""

    def __call__(self, unit: Unit, coords: dict[str, np.ndarray]) -> Mapping[str, Any]: ...


WorkerFactory = Callable[[], UnitWorker]

# probes of a restarting actor before it is given up (one every 0.1 s at least)
MAX_PROBES = 600
# a worker's errors about its inputs (a bad archive region, observations the prior cannot
# see, a bad config): every try fails alike, so the job ends at the first, naming the culprit
BAD_INPUT = (ArchiveError, ConfigError, ObservationError)


class UnitActor:
    """The body of each pool actor: builds the worker once, then computes and writes units."""

    def __init__(self, factory: WorkerFactory, archive: Archive) -> None:
        self.archive = archive
        self.worker = factory()
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, unit: Unit, attempt: int = 1, archive: Archive | None = None) -> UnitRecord:
        """Computes and writes ``unit`` of ``archive`` (default: the archive the actor was
        built with); a worker with a ``use_archive`` method hears of a new archive first."""
        if archive is not None and archive is not self.archive:
            self.archive = archive
            use = getattr(self.worker, "use_archive", None)
            if use is not None:
                use(archive)
        start = time.perf_counter()
        written = False
        if not self.archive.is_done(unit):
            data = self.worker(unit, self.archive.coords(unit))
            written = self.archive.write_unit(unit, data)
        seconds = time.perf_counter() - start
        return UnitRecord(unit.key, unit.index, seconds, self.name, attempt, written)

    def ready(self) -> str:
        """Answers once the actor is up (after a restart, once the worker is built again)."""
        return self.name


@dataclass
class ActorPool:
    """Actors that outlive one :func:`run_units` call, for a job that fills an archive in steps
    (the daily job's days) or several archives: each builds its worker once (loads the prior
    once), and every call hands them its archive with each unit. :meth:`close` ends them; a
    pool is also a context manager. Actors given up for good stay given up."""

    actors: list[Any] = field(default_factory=list)
    dead: dict[int, str] = field(default_factory=dict)

    def close(self) -> None:
        """Ends the actors (without restarts)."""
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors.clear()
        self.dead.clear()

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pool_size(config: RayConfig, n_units: int) -> int:
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    need_cpus, need_gpus = config.cpus_per_worker, config.gpus_per_worker
    if need_gpus > gpus or need_cpus > cpus:
        # Ray would wait forever for an actor no node can hold
        raise ConfigError(
            f"runner: an actor needs {need_cpus} CPUs and {need_gpus} GPUs; the "
            f"cluster has {cpus:g} CPUs and {gpus:g} GPUs"
        )
    if config.workers is not None:
        size = config.workers
    else:
        fits = [cpus // need_cpus if need_cpus else np.inf]
        fits.append(gpus // need_gpus if need_gpus else np.inf)
        size = int(min(fits)) if np.isfinite(min(fits)) else int(cpus) or 1
    return max(1, min(size, n_units))


def run_units(
    archive: Archive,
    factory: WorkerFactory,
    config: RayConfig | None = None,
    units: Sequence[Unit] | None = None,
    before_each: Callable[[], None] | None = None,
    pool: ActorPool | None = None,
) -> PoolReport:
    """Computes and writes ``units`` (default: all of the archive's) that are not done yet on a
    pool of Ray actors, each built once by ``factory`` (picklable, called in the actor): the
    actors of ``pool`` when given (built on its first use and kept for the next call), else
    actors of this call only.
    ``before_each`` is called before each unit is handed to an actor (a writer's lease check:
    what it raises ends the pool).
    Raises :class:`UnitFailedError` naming a unit that keeps failing, and
    :class:`~appa.io.archive.ArchiveError` when a worker returns bad data. Does not finalize
    the archive."""
    import ray
    from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayTaskError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    config = config or RayConfig()
    if config.backend != "ray":
        raise ConfigError("runner.backend: the actor pool runs on Ray (backend: ray)")
    units = list(archive.units if units is None else units)
    done = archive.done_mask()
    pending = [u for u in units if not done[u.index]]
    report = PoolReport(skipped=len(units) - len(pending))
    if not pending:
        return report
    started = init_ray(config)
    own = pool is None
    pool = ActorPool() if pool is None else pool
    try:
        if not pool.actors:
            remote = ray.remote(UnitActor).options(
                num_cpus=config.cpus_per_worker,
                num_gpus=config.gpus_per_worker,
                max_restarts=config.max_restarts,
                max_task_retries=0,  # retried by the loop below, on whichever actor is free
            )
            size = _pool_size(config, len(pending))
            pool.actors.extend(remote.remote(factory, archive) for _ in range(size))
        actors, dead = pool.actors, pool.dead
        size = report.actors = len(actors)
        # every unit travels with this archive: an actor built for an earlier one (or
        # restarted by Ray with its first arguments) writes into this one
        shared = ray.put(archive)
        queue = deque(pending)
        attempts: Counter[int] = Counter()
        deaths: Counter[int] = Counter()
        idle = deque(i for i in range(size) if i not in dead)
        probes: Counter[int] = Counter()
        running: dict[Any, tuple[int, Unit | None]] = {}

        def fail(unit: Unit, error: Exception) -> None:
            # a worker's exception rather than Ray's wrapper (its traceback stays on `from`)
            cause = getattr(error, "cause", None) or error
            report.failures.append((unit.key, f"{type(cause).__name__}: {cause}"))
            if attempts[unit.index] >= config.max_attempts:
                raise UnitFailedError(
                    f"unit {unit.key} of {archive.url} failed {attempts[unit.index]} times; "
                    f"last error: {type(cause).__name__}: {cause}"
                ) from error
            queue.append(unit)

        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not config.progress,
        )
        with progress:
            bar = progress.add_task(
                f"units ({size} actors)", total=len(units), completed=report.skipped
            )
            while queue or running:
                while idle and queue:
                    if before_each is not None:
                        before_each()
                    actor, unit = idle.popleft(), queue.popleft()
                    attempts[unit.index] += 1
                    ref = actors[actor].run.remote(unit, attempts[unit.index], shared)
                    running[ref] = (actor, unit)
                if not running:
                    last = list(dead.values())[-1] if dead else "unknown"
                    raise UnitFailedError(
                        f"every actor died ({len(queue)} units left); the last while {last}"
                    )
                ready, _ = ray.wait(list(running), num_returns=1, timeout=config.stall_timeout_s)
                if not ready:
                    keys = [u.key for _, u in running.values() if u is not None]
                    raise GetTimeoutError(
                        f"no unit finished within {config.stall_timeout_s} s (running {keys})"
                    )
                actor, unit = running.pop(ready[0])
                if unit is None:  # a probe of a restarted actor
                    try:
                        ray.get(ready[0])
                    except ActorDiedError as error:
                        dead[actor] = f"restarting: {type(error).__name__}: {error}"  # for good
                        continue
                    except RayActorError:
                        probes[actor] += 1
                        if probes[actor] <= MAX_PROBES:  # still restarting: ask again
                            time.sleep(0.1)
                            running[actors[actor].ready.remote()] = (actor, None)
                        continue
                    probes[actor] = 0
                    idle.append(actor)
                    continue
                try:
                    record = ray.get(ready[0])
                except RayActorError as error:
                    deaths[actor] += 1
                    if deaths[actor] > config.max_restarts:
                        dead[actor] = f"running {unit.key}: {type(error).__name__}: {error}"
                    else:
                        # Ray restarts it; it gets units again once it answers a probe
                        running[actors[actor].ready.remote()] = (actor, None)
                    fail(unit, error)
                    continue
                except RayTaskError as error:
                    if isinstance(error.cause, BAD_INPUT):
                        raise error.cause from None  # bad data: another try would fail too
                    idle.append(actor)
                    fail(unit, error)
                    continue
                idle.append(actor)
                report.records.append(record)
                progress.advance(bar)
    finally:
        if own:
            pool.close()
        if started:
            ray.shutdown()
    return report
