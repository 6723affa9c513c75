"""Reanalysis jobs end to end with the committed tiny prior: config errors, the archive a job
writes, and a job killed midway and rerun (same seeds) that ends equal to an uninterrupted run
without computing a finished unit twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from pool_utils import done_units
from typer.testing import CliRunner

from appa.assimilation.units import AssimilationWorker, member_seeds
from appa.cli import app
from appa.config import ConfigError, load_config
from appa.data.toy_earth import ToyEarthConfig, write_toy_earth
from appa.io.archive import Archive
from appa.jobs.assimilate import AssimilateConfig, plan_archive, run_assimilation
from appa.observations.schema import ObservationError, make_table, write_observations
from appa.observations.simulators import ObserveConfig, observe_store

ROOT = Path(__file__).resolve().parents[1]
PRIOR = ROOT / "pipelines" / "priors" / "toy-earth-tiny"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """Three days of toy Earth (a short spin-up: a wiring test, not a skill test) and
    stations observing them."""
    folder = tmp_path_factory.mktemp("world")
    truth = folder / "truth.zarr"
    config = ToyEarthConfig(years=3 / 365, spinup_days=5, seed=3, start="2003-03-01")
    write_toy_earth(config, truth, progress=False)
    observe = ObserveConfig.model_validate(
        {"seed": 2, "stations": {"density": 0.3}, "satellite": {"enabled": False}}
    )
    obs, _ = observe_store(str(truth), observe, str(folder / "obs"))
    return {"truth": str(truth), "observations": str(obs)}


def _job_doc(world: dict[str, str], out: Path) -> dict:
    return {
        "task": "reanalysis",
        "prior": {"path": str(PRIOR), "device": "cpu"},
        "observations": [world["observations"]],
        "start": "2003-03-01T00:00",
        "end": "2003-03-03T18:00",  # 12 states: two windows of 8 with stride 4
        "members": 4,
        "seed": 11,
        "sampling": {"sampler": "pc", "steps": 3, "corrections": 1, "iterations": 1},
        "output": str(out),
        "runner": {"cpus_per_worker": 1, "progress": False, "stall_timeout_s": 300},
    }


def test_config_errors_name_the_culprit(tmp_path, world):
    doc = _job_doc(world, tmp_path / "a.zarr")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**doc, "observations": []}))
    with pytest.raises(ConfigError, match="needs observation stores"):
        load_config(AssimilateConfig, path)
    path.write_text(yaml.safe_dump({**doc, "end": "2003-02-01"}))
    with pytest.raises(ConfigError, match="is before start"):
        load_config(AssimilateConfig, path)
    path.write_text(yaml.safe_dump({**doc, "prior": {"path": str(tmp_path / "none")}}))
    job = load_config(AssimilateConfig, path)
    with pytest.raises(ConfigError, match=r"prior\.autoencoder: .*none/autoencoder does not"):
        plan_archive(job)


@pytest.mark.parametrize(
    ("time", "variable", "level", "error", "message"),
    [
        ("2003-03-01T06:00", "temperature", 850.0, ObservationError, r"temperature at 850\.0 hPa"),
        ("2003-03-01T06:00", "specific_humidity", None, ObservationError, "unknown variable"),
        ("2003-02-01T06:00", "temperature", 500.0, ObservationError, "no observations in"),
        (None, None, None, FileNotFoundError, "is not an observation store"),
    ],
)
def test_observations_the_prior_cannot_use_stop_the_job_before_any_unit(
    tmp_path, world, time, variable, level, error, message
):
    """Levels or variables the prior's states lack, a store with nothing in the job's
    period, or a path that is no store: the driver names the store before it plans a unit
    (the workers would fail alike on every try), and writes no archive."""
    store = tmp_path / "obs"
    if time is not None:
        table = make_table(time, 10.0, 20.0, variable, 250.0, 1.0, "sonde", level=level)
        write_observations(table, store)
    doc = _job_doc(world, tmp_path / "a.zarr")
    job = AssimilateConfig.model_validate(
        {**doc, "observations": [world["observations"], str(store)]}
    )
    with pytest.raises(error, match=message) as raised:
        plan_archive(job)
    if error is ObservationError:
        assert str(raised.value).startswith(f"observations {store}: ")
    assert not (tmp_path / "a.zarr").exists()


def test_cli_names_observations_the_prior_cannot_use(tmp_path, world):
    store = tmp_path / "obs"
    table = make_table("2003-03-01T06:00", 10.0, 20.0, "temperature", 250.0, 1.0, "sonde", 850.0)
    write_observations(table, store)
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump({**_job_doc(world, tmp_path / "a.zarr"), "observations": [str(store)]})
    )
    result = CliRunner().invoke(app, ["reanalysis", "--config", str(config)])
    assert result.exit_code == 2
    assert f"error: observations {store}: 1 observation(s) of temperature at 850.0" in result.output
    assert not (tmp_path / "a.zarr").exists()


def _reference(job: AssimilateConfig) -> dict[str, np.ndarray]:
    """The uninterrupted run: the actors' own worker, unit after unit, in this process."""
    archive = Archive(job.output)
    worker = AssimilationWorker(job, threads=1)
    parts = [worker(u, archive.coords(u)) for u in archive.units]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.mark.slow
def test_killed_reanalysis_reruns_to_the_uninterrupted_archive(tmp_path, world, ray_cluster):
    out = tmp_path / "reanalysis.zarr"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(_job_doc(world, out)))
    address = ray_cluster.get_runtime_context().gcs_address
    command = [str(Path(sys.executable).parent / "appa"), "reanalysis", "-c", str(config)]
    command += ["--address", address]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no unit done within 300 s"
            if done_units(out) >= 1:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # Ray kills the actors of a dead driver; wait until no unit lands any more
    mask, stable_since = Archive(out).done_mask(), time.monotonic()
    while time.monotonic() - stable_since < 8:
        time.sleep(0.5)
        now = Archive(out).done_mask()
        if not np.array_equal(now, mask):
            mask, stable_since = now, time.monotonic()
    done_at_kill = int(mask.sum())
    if done_at_kill == len(mask):
        pytest.skip("the job finished before it could be killed (machine too fast)")
    assert not Archive(out).complete

    job = load_config(AssimilateConfig, config)
    job = job.model_copy(update={"runner": job.runner.model_copy(update={"address": None})})
    archive, report = run_assimilation(job)  # the rerun, on this process's cluster
    assert report.skipped == done_at_kill
    assert sum(r.written for r in report.records) == len(mask) - done_at_kill
    assert archive.complete

    result = xr.open_zarr(out)
    assert dict(result.sizes) == {
        "member": 4, "time": 12, "latitude": 32, "longitude": 64, "level": 1,
    }  # fmt: skip
    assert result["member"].attrs["standard_name"] == "realization"
    assert result["time"].values[0] == np.datetime64("2003-03-01T00:00")
    assert result.attrs["seeds"]  # provenance: seeds, checkpoints, code version
    assert "sha256" in result.attrs["checkpoints"]
    reference = _reference(job)
    for name, values in reference.items():
        np.testing.assert_array_equal(result[name].values, values, err_msg=name)


def test_members_depend_on_their_own_seed_only(world, tmp_path):
    """Member 2 computed alone equals member 2 computed with others (units may group
    members any way)."""
    job = AssimilateConfig.model_validate(_job_doc(world, tmp_path / "x.zarr"))
    worker = AssimilationWorker(job, threads=1)
    times = pd.date_range(job.start, job.end, freq="6h").values
    together = worker(None, {"member": np.array([1, 2]), "time": times})
    alone = worker(None, {"member": np.array([2]), "time": times})
    for name in together:  # to rounding: batched kernels may sum in another order
        np.testing.assert_allclose(together[name][1:], alone[name], rtol=1e-4, err_msg=name)
    assert member_seeds(job, [1, 2]) != member_seeds(job.model_copy(update={"seed": 12}), [1, 2])


def test_forecast_members_start_from_their_own_initial_member(world, tmp_path):
    """A forecast job reads member m's context from member m of the initial archive and fits
    its latents through the decoder (``forecast.initial_fit``): changing member 1's initial
    states changes member 1's forecast only."""
    truth = xr.open_zarr(world["truth"]).load()
    for variable in truth.variables.values():
        variable.encoding = {}  # the source store's codecs belong to its zarr format
    warmer = truth.assign(temperature=truth["temperature"] + 3.0)
    times = np.array(["2003-03-02T18:00"], dtype="datetime64[ns]")
    doc = _job_doc(world, tmp_path / "fc.zarr")
    doc.update(task="forecast", observations=[], start="2003-03-02T18:00", end="2003-03-02T18:00")

    def run(second: xr.Dataset, name: str, fit: int = 100) -> dict[str, np.ndarray]:
        path = tmp_path / name
        xr.concat([truth, second], dim=pd.Index([0, 1], name="member")).to_zarr(path)
        doc["forecast"] = {
            "lead_steps": 2, "new_states": 1, "initial": str(path), "initial_fit": fit,
        }  # fmt: skip
        job = AssimilateConfig.model_validate(doc)
        return AssimilationWorker(job, threads=1)(None, {"member": np.array([0, 1]), "time": times})

    same, warm = run(truth, "same.zarr"), run(warmer, "warm.zarr")
    assert same["temperature"].shape == (2, 1, 2, 1, 32, 64)  # (member, time, lead, level, ...)
    np.testing.assert_allclose(warm["temperature"][0], same["temperature"][0], rtol=1e-5)
    assert np.mean(warm["temperature"][1] - same["temperature"][1]) > 0.2  # 0.45 K
    unfitted = run(truth, "unfitted.zarr", fit=0)
    assert not np.allclose(unfitted["temperature"], same["temperature"])
