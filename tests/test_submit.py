"""appa submit / appa jobs: submission ids, the runtime environment, argument handling, the
attach-or-submit rule (against an in-memory job server), and, marked slow, a real private Ray
head node that runs a submitted job once although it is submitted twice."""

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appa.cli import _job_identity, app
from appa.distributed import submit as sub

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--years", "0.01", "--set", "spinup_days=0", "--no-progress"]


def test_the_same_job_gets_the_same_id_and_another_job_another():
    a = _job_identity(["toy-earth", "--out", "/x/a.zarr", *TOY])
    assert a == _job_identity(["toy-earth", "--no-progress", "--out", "/x/a.zarr", *TOY[:4]])
    assert a != _job_identity(["toy-earth", "--out", "/x/b.zarr", *TOY])
    assert a != _job_identity(["toy-earth", "--out", "/x/a.zarr", *TOY, "--set", "seed=1"])
    path, digest, period = a
    assert sub.submission_id(path, digest, period) == f"appa-toy-earth-{digest[:12]}"


def test_an_assimilation_id_names_its_period_and_ignores_where_it_runs():
    config = str(ROOT / "pipelines/configs/reanalysis_toy_earth.yaml")
    path, digest, period = _job_identity(["reanalysis", "--config", config])
    moved = _job_identity(
        ["reanalysis", "--config", config, "--set", "runner.workers=3", "--address", "ray://h:1"]
    )
    assert moved == (path, digest, period)
    job_id = sub.submission_id(path, digest, period)
    assert job_id.startswith("appa-reanalysis-20030301-20030307t180000-")
    other = _job_identity(["filter", "--config", config])
    assert other[1] != digest
    later = _job_identity(["reanalysis", "--config", config, "--end", "2003-03-06T18:00"])
    assert later[2] == (period[0], "2003-03-06T18:00") and later[1] != digest


def test_a_daily_run_gets_one_id_per_calendar_day(monkeypatch):
    """A scheduler submits the same daily config every day: the same day attaches, the next
    day is a new job."""
    import pandas as pd

    config = str(ROOT / "pipelines/configs/daily_toy_earth.yaml")
    now = pd.Timestamp("2026-12-06T23:50", tz="UTC")
    monkeypatch.setattr(pd.Timestamp, "now", classmethod(lambda cls, tz=None: now))
    path, digest, period = _job_identity(["daily", "--config", config])
    assert period == ("2026-12-06", "2026-12-06")
    assert _job_identity(["daily", "--config", config]) == (path, digest, period)
    now = pd.Timestamp("2026-12-07T00:10", tz="UTC")
    assert _job_identity(["daily", "--config", config])[2] == ("2026-12-07", "2026-12-07")
    assert sub.submission_id(path, digest, period).startswith("appa-daily-20261206-20261206-")


def test_the_runtime_env_uploads_the_package_without_data_runs_or_git():
    from ray._private.thirdparty.pathspec import PathSpec

    env = sub.runtime_env(ROOT, {"A": "1"}, ["numpy==2.0.0"])
    assert env["working_dir"] == str(ROOT)
    assert env["env_vars"] == {"PYTHONUNBUFFERED": "1", "A": "1"}
    assert env["pip"] == {"packages": ["numpy==2.0.0"]}
    spec = PathSpec.from_lines("gitwildmatch", env["excludes"])  # as Ray matches them
    for kept in ("appa/data/toy_earth.py", "appa/io/archive.py", "pipelines/priors/x/a.bin"):
        assert not spec.match_file(kept), kept
    for dropped in (".git/HEAD", ".venv/bin/python", "data/toy_earth.zarr/a", "runs/x/ckpt"):
        assert spec.match_file(dropped), dropped
    assert "pip" not in sub.runtime_env(ROOT)


def test_the_entrypoint_is_the_appa_command_line():
    args = ["reanalysis", "--set", "name=a b", "--out", "gs://b/x.zarr"]
    assert shlex.split(sub.entrypoint(args)) == ["python", "-m", "appa.cli", *args]


def test_the_token_comes_from_the_file_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert sub.read_token() == (None, None)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home\n")
    assert sub.read_token() == ("home", "~/.ray/auth_token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env")
    assert sub.read_token() == ("env", "RAY_AUTH_TOKEN")
    (tmp_path / "t").write_text("file")
    assert sub.read_token(tmp_path / "t")[0] == "file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(sub.JobsError, match="empty"):
        sub.read_token(tmp_path / "empty")
    with pytest.raises(sub.JobsError, match="missing"):
        sub.read_token(tmp_path / "missing")


def test_a_ray_client_address_is_refused():
    with pytest.raises(sub.JobsError, match="http://HEAD:8265"):
        sub.connect("ray://head:10001")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "name the command"),
        (["nope"], "no appa command 'nope'"),
        (["train", "--address", "http://h:8265"], "name a command"),
        (["toy-earth", "--out", "/x.zarr", "--bogus"], "--bogus"),
        (["toy-earth", "--out", "/x.zarr", "--set", "years=-1"], "years"),
        (["submit", "toy-earth"], "no appa command 'submit'"),
        (["toy-earth", "--out", "/x.zarr", "--env", "NOEQUALS"], "KEY=VALUE"),
    ],
)
def test_a_bad_command_is_refused_before_any_cluster_is_asked(args, message):
    # no --address and no job server: the command is checked first
    result = CliRunner().invoke(app, ["submit", *args], env={"RAY_API_SERVER_ADDRESS": ""})
    assert result.exit_code == 3, result.output
    assert message in result.output


class _Server:
    """An in-memory job server: the calls of Ray's JobSubmissionClient that submit() makes."""

    def __init__(self, statuses):
        self.statuses = dict(statuses)
        self.submitted = []

    def get_job_status(self, job_id):
        if job_id not in self.statuses:
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")
        return type("S", (), {"value": self.statuses[job_id]})()

    def submit_job(self, *, submission_id, **kwargs):
        if submission_id in self.statuses:
            raise RuntimeError(f"Job with submission_id {submission_id} already exists.")
        self.submitted.append(submission_id)
        self.statuses[submission_id] = "PENDING"


@pytest.mark.parametrize("status", ["PENDING", "RUNNING", "SUCCEEDED"])
def test_a_live_or_succeeded_job_is_attached_to(status):
    server = _Server({"appa-x-1": status})
    done = sub.submit(server, "appa-x-1", "python -m appa.cli x", {})
    assert done == sub.Submission("appa-x-1", attached=True, status=status)
    assert server.submitted == []


def test_a_new_job_is_submitted_once():
    server = _Server({})
    assert not sub.submit(server, "appa-x-1", "c", {}).attached
    assert sub.submit(server, "appa-x-1", "c", {}).attached
    assert server.submitted == ["appa-x-1"]


@pytest.mark.parametrize("status", ["FAILED", "STOPPED"])
def test_a_failed_job_is_refused_unless_new(status):
    server = _Server({"appa-x-1": status})
    with pytest.raises(sub.JobsError, match=f"appa-x-1 {status.lower()}.*--new"):
        sub.submit(server, "appa-x-1", "c", {})
    assert sub.submit(server, "appa-x-1", "c", {}, new=True).submission_id == "appa-x-1-r2"
    # the retry is the job now: submitted again, it attaches to the retry
    again = sub.submit(server, "appa-x-1", "c", {})
    assert again == sub.Submission("appa-x-1-r2", attached=True, status="PENDING")
    assert server.submitted == ["appa-x-1-r2"]


class _RaceServer(_Server):
    """The job does not exist when checked, and exists (another submitter's) when submitted."""

    def __init__(self):
        super().__init__({})
        self.checked = False

    def get_job_status(self, job_id):
        if not self.checked:
            self.checked = True
            return super().get_job_status(job_id)
        return type("S", (), {"value": "RUNNING"})()

    def submit_job(self, *, submission_id, **kwargs):
        raise RuntimeError(f"Job with submission_id {submission_id} already exists.")


def test_a_submission_that_loses_the_race_attaches():
    done = sub.submit(_RaceServer(), "appa-x-1", "c", {})
    assert done == sub.Submission("appa-x-1", attached=True, status="RUNNING")


def test_exit_codes():
    assert [sub.exit_code(s) for s in ("SUCCEEDED", "FAILED", "STOPPED")] == [0, 1, 2]
    with pytest.raises(sub.JobsError):
        sub.exit_code("RUNNING")


# --- a real private head node --------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture
def head(tmp_path_factory):
    """A private Ray head node (its own temp dir, ports and token), stopped by its process
    group: never ``ray stop``, which would end every Ray process on the machine."""
    import tempfile

    temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Unix socket paths
    token = secrets.token_hex(16)
    gcs, dash, client, agent, grpc, env_agent, metrics = _free_ports(7)
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(
        PATH=f"{bin_dir}:{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        HOME=str(temp),  # the head writes nothing into the user's ~/.ray
    )
    log = open(temp / "head.log", "w")
    command = [
        f"{bin_dir}/ray", "start", "--head", "--block", f"--temp-dir={temp}",
        f"--port={gcs}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={grpc}", f"--runtime-env-agent-port={env_agent}",
        f"--metrics-export-port={metrics}", "--num-cpus=1", "--include-dashboard=true",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", dash), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((temp / "head.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        token_file = temp / "token"
        token_file.write_text(token)
        yield address, token_file, temp
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _appa(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "appa.cli", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_a_job_submitted_twice_runs_once_on_a_real_head(head, tmp_path):
    address, token_file, _ = head
    out = tmp_path / "earth.zarr"
    job = ["toy-earth", "--out", str(out), *TOY]
    connection = ["--address", address, "--token-file", str(token_file)]
    # a stray RAY_ADDRESS / RAY_API_SERVER_ADDRESS does not replace the address given
    stray = {"RAY_ADDRESS": "127.0.0.1:1", "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:1"}

    first = _appa("submit", *job, *connection, "--wait", env_extra=stray)
    assert first.returncode == 0, first.stdout + first.stderr
    job_id = first.stdout.split()[1]
    assert first.stdout.startswith(f"submitted {job_id}")
    assert f"wrote {out}" in first.stdout and f"{job_id}: succeeded" in first.stdout
    assert (out / "zarr.json").exists() or (out / ".zmetadata").exists()
    written = sorted(p.stat().st_mtime_ns for p in out.rglob("*"))

    second = _appa("submit", *job, *connection, "--wait")
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.startswith(f"attached to {job_id} (succeeded)")
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*")) == written  # not run again

    listed = _appa("jobs", "list", *connection)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [job_id]
    status = _appa("jobs", "status", job_id, *connection)
    assert status.stdout.startswith(f"{job_id}: succeeded")
    logs = _appa("jobs", "logs", job_id, *connection)
    assert logs.stdout.count(f"wrote {out}") == 1

    (tmp_path / "wrong").write_text("not-the-token")
    refused = _appa("jobs", "list", "--address", address, "--token-file", str(tmp_path / "wrong"))
    assert refused.returncode == 3 and "refused the token" in refused.stderr
    missing = _appa("jobs", "list", "--address", address, env_extra={"HOME": str(tmp_path)})
    assert missing.returncode == 3 and "requires a token" in missing.stderr
