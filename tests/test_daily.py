"""``appa daily``: an archive extended day by day equals one catch-up run bit for bit, reruns and
missing partitions compute nothing, one writer at a time, a killed run resumes.

A few days of toy Earth, observed as the demo does; the observation stores grow one daily
partition at a time (:func:`appa.observations.schema.add_partitions`). Small settings: 2
members, 3 sampler steps, a lag of one day."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from worlds import toy_world

ROOT = Path(__file__).resolve().parents[1]
PRIOR = ROOT / "pipelines" / "priors" / "toy-earth-tiny"
DAYS = [f"2003-03-0{d}" for d in range(1, 6)]


@pytest.fixture(scope="module")
def observed(tmp_path_factory) -> xr.Dataset:
    """Five days of toy Earth from 2003-03-01 seen by stations and a polar orbiter: the table
    of every observation."""
    from appa.observations.schema import read_observations

    _, store = toy_world(tmp_path_factory.mktemp("daily-world"), days=5)
    return read_observations(store).load()


def _day(table: xr.Dataset, day: str) -> xr.Dataset:
    t = table["time"].values
    t0 = np.datetime64(pd.Timestamp(day))
    return table.isel(obs=np.flatnonzero((t >= t0) & (t < t0 + np.timedelta64(1, "D"))))


def grow(table: xr.Dataset, store: Path, *days: str) -> None:
    """Adds the partitions of ``days`` to ``store`` (created with the first ones)."""
    from appa.observations.schema import add_partitions, concat_tables, write_observations

    part = concat_tables([_day(table, d) for d in days])
    if not (store / "observations.json").exists():
        write_observations(part, store)
    else:
        add_partitions(part, store)


def config(store: Path, out: Path, **changes) -> dict:
    doc = {
        "prior": {"path": str(PRIOR), "device": "cpu"},
        "observations": [str(store)],
        "first_day": "2003-03-01",
        "lag_days": 1,
        "members": 2,
        "context_fit": 5,
        "sampling": {"sampler": "pc", "steps": 3, "corrections": 1, "iterations": 1},
        "output": str(out),
        "runner": {"backend": "local", "progress": False},
    }
    doc.update(changes)
    return doc


def daily(doc: dict, **kwargs):
    from appa.jobs.daily import DailyConfig, run_daily

    return run_daily(DailyConfig.model_validate(doc), echo=lambda _: None, **kwargs)


def fields(path: Path) -> xr.Dataset:
    from appa.io.archive import open_archive

    return open_archive(path).load()


@pytest.fixture(scope="module")
def catch_up(observed, tmp_path_factory) -> Path:
    """One run over days 1-3 (the store holds days 1-4: day 3 reads day 4)."""
    folder = tmp_path_factory.mktemp("catch-up")
    grow(observed, folder / "obs", *DAYS[:4])
    report = daily(config(folder / "obs", folder / "daily.zarr"))
    assert report.days == DAYS[:3]
    assert report.computed == 6
    assert "2003-03-05T0000" in report.waiting
    return folder / "daily.zarr"


def test_days_one_at_a_time_equal_one_catch_up(observed, catch_up, tmp_path):
    from appa.io.archive import Archive

    store, out = tmp_path / "obs", tmp_path / "daily.zarr"
    grow(observed, store, *DAYS[:2])
    doc = config(store, out)
    for n, day in enumerate(DAYS[:3]):
        report = daily(doc)
        assert report.days == [day] and report.computed == 2
        ds = fields(out)
        assert ds.sizes["time"] == 4 * (n + 1)
        assert str(ds["time"].values[-1])[:16] == f"{day}T18:00"
        # a rerun before the next partition arrives computes nothing
        again = daily(doc)
        assert again.days == [] and again.computed == 0
        assert again.complete_through == day
        grow(observed, store, DAYS[n + 2])
    one, whole = fields(out), fields(catch_up)
    assert one.sizes == whole.sizes
    # values wherever the prior's autoencoder saw data; sea-surface temperature NaN on land
    from appa.io import load_checkpoint

    cells = load_checkpoint(str(PRIOR / "autoencoder")).tensors["valid"]["cells"].bool().numpy()
    assert (~cells[2]).any() and np.delete(cells, 2, axis=0).all()
    for name in whole.data_vars:
        np.testing.assert_array_equal(one[name].values, whole[name].values)
        held = np.broadcast_to(cells[2] if name == "sea_surface_temperature" else True,
                               one[name].shape)  # fmt: skip
        assert np.isfinite(one[name].values[held]).all() and np.isnan(one[name].values[~held]).all()
    archive = Archive(out)
    assert archive.records["complete_through"] == DAYS[2]
    assert archive.check_units() == [] and archive.complete
    assert sorted(json.loads(one.attrs["daily_log"])) == DAYS[:3]


def test_members_continue_their_own_trajectories(catch_up):
    ds = fields(catch_up)["2m_temperature"]
    # the members differ, and each day starts near where the member ended the day before
    assert not np.array_equal(ds.isel(member=0).values, ds.isel(member=1).values)
    step_within = np.abs(ds.diff("time")).mean().item()
    seam = np.abs(ds.isel(time=4) - ds.isel(time=3)).mean().item()
    assert seam < 3 * step_within


def test_missing_partition_means_nothing_to_do(observed, tmp_path):
    store, out = tmp_path / "obs", tmp_path / "daily.zarr"
    grow(observed, store, DAYS[0], DAYS[2], DAYS[3])  # day 2's partition never came
    report = daily(config(store, out))
    assert report.days == [] and report.computed == 0
    assert "no partition 2003-03-02T0000" in report.waiting
    assert not out.exists()


def test_a_partition_is_final_once_a_later_one_exists_or_its_time_passed(observed, tmp_path):
    store, out = tmp_path / "obs", tmp_path / "daily.zarr"
    grow(observed, store, *DAYS[:2])
    # by a clock of 2003-03-03T12, day 2's partition may still receive observations
    report = daily(config(store, out), now=pd.Timestamp("2003-03-03T12:00"))
    assert report.days == [] and "not final before 2003-03-04" in report.waiting


def test_a_rewritten_partition_of_a_written_day_is_refused(observed, tmp_path):
    from appa.io.archive import ArchiveError

    store, out = tmp_path / "obs", tmp_path / "daily.zarr"
    grow(observed, store, *DAYS[:2])
    doc = config(store, out)
    daily(doc)
    grow(observed, store, DAYS[2])
    partition = store / "2003-03-02T0000"
    table = xr.open_zarr(partition).load()
    shutil.rmtree(partition)
    table.assign(value=table["value"] + 1.0).to_zarr(partition, zarr_format=2, consolidated=True)
    with pytest.raises(ArchiveError, match=r"observations\[0\]@2003-03-01 .*changed since"):
        daily(doc)


def test_a_second_writer_waits_or_is_refused(observed, catch_up, tmp_path):
    from appa.files import WriterBusyError, writer_lock

    store, out = tmp_path / "obs", tmp_path / "daily.zarr"
    grow(observed, store, *DAYS[:2])
    with writer_lock(out):
        with pytest.raises(WriterBusyError, match="being written by another process"):
            daily(config(store, out))
    assert not out.exists()


def test_an_archive_on_an_object_store_with_a_lost_lease_then_resumed(observed, catch_up, tmp_path):
    """On ``memory://`` (in-process runs): the lease refuses a second writer; a run whose lease
    is taken over after day 1 stops before writing day 2, and the next run resumes it."""
    import fsspec

    from appa.files import WriterBusyError, WriterLostError, writer_lock
    from appa.jobs.daily import DailyConfig, run_daily

    folder = f"/daily-{uuid.uuid4().hex}"
    url = f"memory://{folder}/daily.zarr"
    store = tmp_path / "obs"
    grow(observed, store, *DAYS[:3])
    doc = config(store, url, lease_s=5.0, lease_renew_s=0.5)
    fs = fsspec.filesystem("memory")
    try:
        with writer_lock(url), pytest.raises(WriterBusyError, match=f'"pid": {os.getpid()}'):
            daily(doc)
        assert not fs.exists(f"{folder}/daily.zarr")

        def take_over(line: str) -> None:
            # once day 1 is written, another writer takes the next lease record (as after an
            # expiry) and is killed: its record expired at once
            if line.startswith(DAYS[0]):
                (top,) = fs.ls(f"{folder}/daily.zarr.lease", detail=False)
                record = json.loads(fs.cat_file(top))
                epoch = record["epoch"] + 1
                other = record | {"token": "another", "pid": 1, "epoch": epoch}
                other["expires"] = time.time() - 60
                fs.pipe_file(top.replace(f"{epoch - 1:012d}", f"{epoch:012d}"),
                             json.dumps(other).encode())  # fmt: skip

        job = DailyConfig.model_validate(doc)
        with pytest.raises(WriterLostError, match="lease was lost"):
            run_daily(job, echo=take_over)
        written = fields(url)
        assert written.sizes["time"] == 4  # day 2 never began
        # the other writer's lease expired: the next run takes it over and resumes
        report = daily(doc)
        assert report.days == [DAYS[1]] and report.computed == 2
        one, whole = fields(url), fields(catch_up).isel(time=slice(0, 8))
        for name in whole.data_vars:
            np.testing.assert_array_equal(one[name].values, whole[name].values)
        (top,) = fs.ls(f"{folder}/daily.zarr.lease", detail=False)
        assert json.loads(fs.cat_file(top))["released"]
    finally:
        if fs.exists(folder):
            fs.rm(folder, recursive=True)


def _cli(doc: dict, path: Path) -> subprocess.Popen:
    import yaml

    path.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "appa.cli", "daily", "--config", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_concurrent_runs_leave_one_correct_archive(observed, catch_up, tmp_path):
    store, out = tmp_path / "obs", tmp_path / "daily.zarr"
    grow(observed, store, *DAYS[:2])
    doc = config(store, out, lock_wait_s=300)
    runs = [_cli(doc, tmp_path / f"daily{i}.yaml") for i in range(2)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    # one computed the day, the other waited for it and found nothing to do
    assert sorted("2 units computed" in o for o in outputs) == [False, True], outputs
    assert any("nothing to do" in o for o in outputs), outputs
    one, whole = fields(out), fields(catch_up).isel(time=slice(0, 4))
    for name in whole.data_vars:
        np.testing.assert_array_equal(one[name].values, whole[name].values)


@pytest.mark.slow
def test_sigkill_mid_day_then_rerun_equals_an_uninterrupted_run(observed, catch_up, tmp_path):
    from appa.io.archive import Archive

    store, out = tmp_path / "obs", tmp_path / "daily.zarr"
    grow(observed, store, *DAYS[:3])
    doc = config(store, out)
    run = _cli(doc, tmp_path / "daily.yaml")
    # kill it once day 2 has begun: its first unit written, its second not
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if Archive(out).done_mask().sum() >= 3:
                break
        except Exception:  # not created yet
            pass
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert Archive(out).done_mask().sum() < 4
    rerun = _cli(doc, tmp_path / "daily.yaml")
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output
    one, whole = fields(out), fields(catch_up).isel(time=slice(0, 8))
    for name in whole.data_vars:
        np.testing.assert_array_equal(one[name].values, whole[name].values)


@pytest.mark.slow
def test_daily_through_the_cli_on_ray(observed, catch_up, ray_cluster, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from appa.cli import app

    store, out = tmp_path / "obs", tmp_path / "daily.zarr"
    grow(observed, store, *DAYS[:2])
    doc = config(store, out, runner={"cpus_per_worker": 1, "progress": False})
    path = tmp_path / "daily.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["daily", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "2003-03-01: 2 units computed" in result.output
    again = CliRunner().invoke(app, ["daily", "--config", str(path)])
    assert again.exit_code == 0 and "nothing to do" in again.output
    one, whole = fields(out), fields(catch_up).isel(time=slice(0, 4))
    for name in whole.data_vars:
        np.testing.assert_array_equal(one[name].values, whole[name].values)
