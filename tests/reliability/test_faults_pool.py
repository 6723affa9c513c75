"""The Ray actor pool: units computed by actors and written straight into the archive, an actor
crash retried, a unit that keeps failing named, bad data refused, and a job killed with SIGKILL
then rerun that ends with the archive of an uninterrupted run and no finished unit computed
twice. The dummy worker's fields are a deterministic function of (member, time, seed)."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pool_utils
import pytest
import xarray as xr
from pool_utils import (
    DummyWorker,
    done_units,
    expected,
    job_archive,
    read_gpu_log,
    read_log,
    template,
)

from appa.config import ConfigError
from appa.distributed.pool import UnitActor, UnitFailedError, run_units
from appa.distributed.runner import RayConfig
from appa.io.archive import Archive, ArchiveError, create_archive
from appa.observations.schema import ObservationError

CONFIG = {"job": "pool", "seed": 3}
POOL = RayConfig(progress=False, stall_timeout_s=120, max_attempts=3)


@pytest.fixture
def ray_pool(ray_cluster):
    # actors receive the dummy worker by value: they cannot import tests/
    ray_cluster.cloudpickle.register_pickle_by_value(pool_utils)
    return ray_cluster


def _archive(path, **kwargs):
    return create_archive(
        path, template(members=2, steps=8), units={"member": 1, "time": 4}, config=CONFIG,
        allow_nan=["sea_surface_temperature"], **kwargs,
    )  # fmt: skip


def test_pool_writes_every_unit_and_the_archive_reads_back(tmp_path, ray_pool):
    archive = _archive(tmp_path / "a.zarr")
    log = tmp_path / "log.txt"
    report = run_units(archive, functools.partial(DummyWorker, seed=3, log=str(log)), POOL)
    assert sorted(r.key for r in report.records) == sorted(u.key for u in archive.units)
    assert all(r.written and r.attempt == 1 and r.seconds >= 0 for r in report.records)
    assert len({r.actor for r in report.records}) <= 2  # one actor per core
    assert report.skipped == 0 and report.failures == [] and report.actors == 2
    archive.finalize()
    ds = xr.open_zarr(tmp_path / "a.zarr")
    xr.testing.assert_identical(ds.load().drop_attrs(), expected(template(2, 8), 3).drop_attrs())
    # a rerun of the finished job computes nothing
    again = run_units(archive, functools.partial(DummyWorker, seed=3, log=str(log)), POOL)
    assert again.records == [] and again.skipped == 4
    assert len(read_log(log)) == 4


def test_a_pool_kept_across_calls_builds_its_workers_once(tmp_path, ray_pool):
    from appa.distributed.pool import ActorPool

    log = tmp_path / "log.txt"
    factory = functools.partial(pool_utils.CountingWorker, seed=3, log=str(log))
    first, second = _archive(tmp_path / "a.zarr"), _archive(tmp_path / "b.zarr")
    with ActorPool() as pool:
        one = run_units(first, factory, POOL, pool=pool)
        two = run_units(second, factory, POOL, pool=pool)
        assert len(pool.actors) == 2
    assert len((tmp_path / "log.txt.built").read_text().split()) == 2  # one build per actor
    assert {r.actor for r in two.records} <= {r.actor for r in one.records}
    for archive, path in ((first, "a.zarr"), (second, "b.zarr")):
        archive.finalize()
        ds = xr.open_zarr(tmp_path / path).load().drop_attrs()
        xr.testing.assert_identical(ds, expected(template(2, 8), 3).drop_attrs())


def test_an_actor_that_dies_is_restarted_and_its_unit_retried(tmp_path, ray_pool):
    archive = _archive(tmp_path / "a.zarr")
    victim = archive.units[2].key
    log = tmp_path / "log.txt"
    factory = functools.partial(DummyWorker, seed=3, log=str(log), crash_once=victim)
    report = run_units(archive, factory, POOL)
    assert [k for k, _ in report.failures] == [victim]
    assert report.failures[0][1].split(":")[0] in ("ActorDiedError", "ActorUnavailableError")
    record = next(r for r in report.records if r.key == victim)
    assert record.attempt == 2 and record.written
    assert [k for k, _ in read_log(log)].count(victim) == 2
    archive.finalize()
    ds = xr.open_zarr(tmp_path / "a.zarr").load()
    xr.testing.assert_identical(ds.drop_attrs(), expected(template(2, 8), 3).drop_attrs())


def test_a_unit_that_keeps_failing_ends_the_job_naming_it(tmp_path, ray_pool):
    archive = _archive(tmp_path / "a.zarr")
    bad = archive.units[1].key
    factory = functools.partial(DummyWorker, seed=3, fail=bad)
    with pytest.raises(UnitFailedError, match=rf"unit {bad} .* failed 3 times.*cannot compute"):
        run_units(archive, factory, POOL.model_copy(update={"workers": 1}))
    assert not archive.done_mask()[1]


@pytest.mark.slow
@pytest.mark.parametrize("restarts", [1, 0])
def test_a_unit_that_keeps_crashing_its_actor_ends_the_job_naming_it(tmp_path, ray_pool, restarts):
    archive = _archive(tmp_path / "a.zarr")
    bad = archive.units[0].key
    factory = functools.partial(DummyWorker, seed=3, crash_always=bad)
    config = POOL.model_copy(update={"workers": 1, "max_restarts": restarts, "max_attempts": 2})
    # restarts=1: the unit uses up its two attempts; restarts=0: the only actor is gone
    match = (
        rf"unit {bad} .* failed 2 times" if restarts else rf"every actor died .*while running {bad}"
    )
    with pytest.raises(UnitFailedError, match=match):
        run_units(archive, factory, config)
    assert not archive.done_mask()[0]


@pytest.mark.parametrize(
    "flaw, error, match",
    [
        ("nan", ArchiveError, r"unit {bad}: 2m_temperature holds .* NaN"),
        ("unobservable", ObservationError, r"temperature at 700\.0 hPa"),
    ],
)
def test_bad_inputs_from_a_worker_end_the_job_at_once(tmp_path, ray_pool, flaw, error, match):
    """Bad data, or observations the state cannot see: every try would fail alike."""
    archive = _archive(tmp_path / "a.zarr")
    bad = archive.units[0].key
    log = tmp_path / "log.txt"
    factory = functools.partial(DummyWorker, seed=3, log=str(log), **{flaw: bad})
    with pytest.raises(error, match=match.format(bad=bad)):
        run_units(archive, factory, POOL.model_copy(update={"workers": 1}))
    assert [k for k, _ in read_log(log)].count(bad) == 1  # not retried
    assert not archive.done_mask()[0]


def test_resources_no_node_has_are_refused(tmp_path, ray_pool):
    archive = _archive(tmp_path / "a.zarr")
    with pytest.raises(ConfigError, match=r"needs 1\.0 CPUs and 1\.0 GPUs; the cluster has 2 CPUs"):
        run_units(archive, DummyWorker, POOL.model_copy(update={"gpus_per_worker": 1.0}))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, ray_pool):
    address = ray_pool.get_runtime_context().gcs_address
    script = Path(__file__).parents[1] / "pool_job.py"
    out, log = tmp_path / "killed.zarr", tmp_path / "log.txt"

    command = [sys.executable, str(script), str(out), str(log), "--address", address]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [*command, "--delay", "0.4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no unit done within 120 s"
            if done_units(out) >= 3:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # the dead driver's actors die with it (Ray kills the actors of a dead owner)
    pids = {pid for _, pid in read_log(log)}
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, "the killed job's actors are still alive"
        time.sleep(0.1)
    archive = job_archive(out)
    done_at_kill = {u.key for u, d in zip(archive.units, archive.done_mask(), strict=True) if d}
    total = len(archive.units)
    if len(done_at_kill) == total:
        pytest.skip("the job finished before it could be killed (machine too fast)")
    assert not archive.complete

    # the rerun, by another driver (this process)
    log_at_kill = read_log(log)
    rerun = run_units(archive, functools.partial(DummyWorker, seed=5, log=str(log)), POOL)
    archive.finalize()
    assert rerun.skipped == len(done_at_kill)
    assert {r.key for r in rerun.records} == {u.key for u in archive.units} - done_at_kill
    computed = [key for key, _ in read_log(log)]
    assert computed[: len(log_at_kill)] == [k for k, _ in log_at_kill]
    for key in done_at_kill:
        assert computed.count(key) == 1, f"finished unit {key} computed again"
    assert {u.key for u in archive.units} <= set(computed)

    # the uninterrupted reference, with the same config and seeds: the actors' own code, unit
    # after unit in this process (test_pool_writes_every_unit... covers the pool itself)
    reference = job_archive(tmp_path / "straight.zarr")
    actor = UnitActor(functools.partial(DummyWorker, seed=5), reference)
    assert all(actor.run(unit).written for unit in reference.units)
    reference.finalize()
    killed = xr.open_zarr(out).load()
    straight = xr.open_zarr(tmp_path / "straight.zarr").load()
    xr.testing.assert_identical(killed, straight)
    assert np.isfinite(killed["2m_temperature"].values).all()
    print(f"killed with {len(done_at_kill)} of {total} units done; rerun finished the rest")


@pytest.mark.slow
def test_one_gpu_per_actor_on_a_cluster_declaring_gpus(tmp_path):
    # its own cluster (a subprocess): the shared test cluster has no GPUs
    out, log = tmp_path / "gpu.zarr", tmp_path / "log.txt"
    script = Path(__file__).parents[1] / "pool_job.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    run = subprocess.run(
        [sys.executable, str(script), str(out), str(log), "--fake-gpus", "3"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    # three actors: one per GPU, not per CPU (each needs half a CPU), each with its own GPU
    assert "computed 8 units on 3 actors" in run.stdout
    gpus = list(read_gpu_log(log).values())
    assert gpus and len(set(gpus)) == len(gpus) and set(gpus) <= {"0", "1", "2"}
    assert Archive(out).complete
