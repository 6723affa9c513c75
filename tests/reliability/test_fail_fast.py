"""A job fails fast on its driver, with one message: a broken prior checkpoint or observation
store, an unreachable cluster or a path the system refuses is reported in one line naming the
culprit, before any worker starts and before the archive is created."""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appa.cli import app
from appa.distributed.runner import ClusterUnreachableError, RayConfig, check_cluster
from appa.io.checkpoints import CheckpointError
from appa.jobs.assimilate import AssimilateConfig, plan_archive
from appa.observations.schema import ObservationError, read_observations

ROOT = Path(__file__).resolve().parents[2]
PRIOR = ROOT / "pipelines" / "priors" / "toy-earth-tiny"
DN = "diffusion/step-000005000"
AE = "autoencoder/step-000001800"


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _run(config: dict, tmp_path: Path, *args: str):
    """``appa reanalysis`` on ``config`` (a JSON file is YAML), as a user runs it."""
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(config))
    return CliRunner().invoke(app, ["reanalysis", "--config", str(path), *args])


def _one_line(result, *parts: str) -> str:
    """The command failed with one line, ``error: ...``, holding ``parts``."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


BROKEN_CHECKPOINTS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "truncated weights": (
        f"{DN}/model.safetensors",
        lambda p: _truncate(p, 700_000),
        "700000 bytes, the manifest says",
    ),
    "corrupt weights": (f"{DN}/model.safetensors", _flip, "SHA-256 differs"),
    "missing weights": (f"{AE}/model.safetensors", Path.unlink, "listed in the manifest but"),
    "truncated manifest": (
        f"{DN}/checkpoint.json",
        lambda p: _truncate(p, 3000),
        "not valid JSON",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CHECKPOINTS))
def test_a_broken_checkpoint_stops_the_job_before_its_archive(case, base, tmp_path):
    """A truncated, corrupt or missing tensor file, or a manifest that is not JSON, is found
    by the driver before any worker loads it: one line naming the file, no archive."""
    where, damage, reason = BROKEN_CHECKPOINTS[case]
    prior = Path(shutil.copytree(PRIOR, tmp_path / "prior"))
    damage(prior / where)
    base["prior"]["path"] = str(prior)
    with pytest.raises(CheckpointError, match=reason):
        plan_archive(AssimilateConfig.model_validate(base))
    _one_line(_run(base, tmp_path), str(prior / where), reason)
    assert not Path(base["output"]).exists()


BROKEN_STORES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated index": (
        lambda s: _truncate(s / "observations.json", 200),
        "observations.json: not a valid observation store index",
    ),
    "truncated partition metadata": (
        lambda s: _truncate(s / "2003-03-02T0000" / ".zmetadata", 300),
        "partition 2003-03-02T0000 cannot be read",
    ),
    "missing partition": (
        lambda s: shutil.rmtree(s / "2003-03-02T0000"),
        "partition 2003-03-02T0000 cannot be read",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_STORES))
def test_a_broken_observation_store_stops_the_job_before_its_archive(case, world, base, tmp_path):
    """A truncated index or partition metadata, or a lost partition, of an observation store
    is an ObservationError naming the store and the partition, from the driver's check: one
    line, no archive."""
    damage, reason = BROKEN_STORES[case]
    store = Path(shutil.copytree(world["observations"], tmp_path / "obs"))
    damage(store)
    with pytest.raises(ObservationError, match=reason):
        read_observations(store, "2003-03-01", "2003-03-03")
    base["observations"] = [str(store)]
    with pytest.raises(ObservationError, match=reason):
        plan_archive(AssimilateConfig.model_validate(base))
    line = _one_line(_run(base, tmp_path), str(store), reason)
    assert f"{store}: {store}" not in line, line  # named once, not twice in a row
    assert not Path(base["output"]).exists()


def test_an_os_error_on_the_output_is_one_line_naming_the_path(base, tmp_path):
    """An output under a file (where a folder is expected) is reported as `error: <path>:
    <reason>`, not as a traceback."""
    (tmp_path / "plain-file").write_text("not a folder")
    base["output"] = str(tmp_path / "plain-file" / "reanalysis.zarr")
    line = _one_line(_run(base, tmp_path), base["output"], "Not a directory")
    assert line == f"error: {base['output']}: Not a directory"


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A local port that never completes a TCP handshake (a listener whose backlog is full:
    further connections are dropped, as a firewalled host's are)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fill = []
    for _ in range(4):
        client = socket.socket()
        client.setblocking(False)
        try:
            client.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fill.append(client)
    time.sleep(0.2)
    yield port
    for client in fill:
        client.close()
    server.close()


def _closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connections are refused
    return port


def test_an_unreachable_cluster_is_one_line_within_its_timeout(black_hole, base, tmp_path):
    """Joining a cluster that does not answer (packets dropped, connection refused, a name
    that does not resolve) fails within runner.connect_timeout_s with one line naming the
    address, instead of Ray's retries until killed; the archive is not created."""
    for address, reason in (
        (f"127.0.0.1:{black_hole}", "within 1 s (runner.connect_timeout_s): no answer"),
        (f"127.0.0.1:{_closed_port()}", "refused"),
        ("ray://nohost.invalid:10001", "cannot reach the Ray cluster at ray://nohost.invalid"),
    ):
        start = time.monotonic()
        with pytest.raises(ClusterUnreachableError, match=re.escape(reason)):
            check_cluster(RayConfig(address=address, connect_timeout_s=1))
        assert time.monotonic() - start < 30  # bounded by the timeout, not Ray's retries
    check_cluster(RayConfig())  # a local cluster is started, not reached
    address = f"127.0.0.1:{black_hole}"
    result = _run(base, tmp_path, "--address", address, "--set", "runner.connect_timeout_s=1")
    _one_line(result, f"cannot reach the Ray cluster at {address} within 1 s")
    assert not Path(base["output"]).exists()


def test_the_committed_prior_and_the_demo_network_pass_the_driver_checks(base):
    """The checks accept the committed prior and the demo's kind of observations unchanged."""
    archive = plan_archive(AssimilateConfig.model_validate(base))
    assert Path(archive.url).exists()


def test_dates_are_reported_naming_the_culprit_not_the_whole_config(base, tmp_path):
    """A date that is not one, or an end before the start, is reported naming the dates,
    without echoing the whole config back, and before anything is created."""
    result = _run(base, tmp_path, "--start", "2003-13-01")
    _one_line(result, "start", "2003-13-01")
    result = _run(base, tmp_path, "--start", "2003-03-05")
    assert result.exit_code == 2
    assert "end 2003-03-02T18:00:00 is before start 2003-03-05" in result.output
    assert "observations" not in result.output  # the rest of the config is not echoed
    assert not Path(base["output"]).exists()
