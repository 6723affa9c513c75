"""Submitting ``appa`` commands to a Ray cluster as Ray Jobs: the job server's client (address,
token), idempotent submission ids, the runtime environment that carries the working directory,
and following a job to its end. No math and no job of its own: the command line decides what
runs (``appa submit``, ``appa jobs``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EXCLUDES",
    "JobsError",
    "Submission",
    "call",
    "connect",
    "entrypoint",
    "exit_code",
    "follow",
    "job_digest",
    "read_token",
    "runtime_env",
    "stop",
    "submission_id",
    "submit",
]

# Folders and files that never travel with the working directory: version control, virtual
# environments, run outputs and data (they belong in buckets or shared storage), caches. A
# leading slash anchors a pattern at the working directory's top, so the package appa/data
# still travels while the top-level data/ does not.
EXCLUDES = [
    "/.git",
    "/.venv",
    "/venv",
    "/runs",
    "/outputs",
    "/data",
    "/build",
    "/dist",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
    "*.zarr",
]

# Ray Jobs statuses: those still running, and what a finished job's status means to a shell.
LIVE = ("PENDING", "RUNNING")
_EXIT = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 2}
# a resubmission with ``new`` runs under the base id plus "-r2", "-r3"...
_RETRY = "-r"
_MAX_RETRIES = 1000
_TOKEN_SOURCES = "--token-file, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"


class JobsError(RuntimeError):
    """A submission or a query the job server refused or could not answer; one line."""


@dataclass(frozen=True)
class Submission:
    """What :func:`submit` did: the job's id, whether it attached to an existing job instead of
    starting one, and the job's status then."""

    submission_id: str
    attached: bool
    status: str


def read_token(token_file: str | Path | None = None) -> tuple[str | None, str | None]:
    """The cluster's authentication token and where it came from: ``token_file``, else the
    ``RAY_AUTH_TOKEN`` variable, else the file ``RAY_AUTH_TOKEN_PATH`` names, else
    ``~/.ray/auth_token`` (where ``ray start`` keeps a local cluster's); ``(None, None)`` when
    there is none.

    Raises:
        JobsError: ``token_file`` (or ``RAY_AUTH_TOKEN_PATH``) cannot be read or is empty.
    """
    candidates: list[tuple[Path, str, bool]] = []
    if token_file is not None:
        candidates.append((Path(token_file), f"--token-file {token_file}", True))
    else:
        value = os.environ.get("RAY_AUTH_TOKEN", "").strip()
        if value:
            return value, "RAY_AUTH_TOKEN"
        if os.environ.get("RAY_AUTH_TOKEN_PATH"):
            path = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
            candidates.append((path, f"RAY_AUTH_TOKEN_PATH {path}", True))
        candidates.append((Path.home() / ".ray" / "auth_token", "~/.ray/auth_token", False))
    for path, name, required in candidates:
        try:
            token = path.read_text().strip()
        except OSError as error:
            if not required and isinstance(error, FileNotFoundError):
                continue
            raise JobsError(f"{path}: cannot read the token: {error.strerror or error}") from None
        if not token:
            raise JobsError(f"{path}: the token file is empty")
        return token, name
    return None, None


@contextlib.contextmanager
def _without(names: Sequence[str]) -> Iterator[None]:
    """Hides environment variables for the duration (Ray's client lets RAY_ADDRESS and
    RAY_API_SERVER_ADDRESS replace the address it is given; the one given must win)."""
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str, token: str | None = None) -> Any:
    """A ``JobSubmissionClient`` for the job server at ``address`` (``http://HEAD:8265``),
    sending ``token`` (if any) as a bearer ``Authorization`` header.

    Raises:
        JobsError: the address is not an http(s) address, or the server does not answer or
            refuses the token; one line naming the address.
    """
    if not re.match(r"^https?://[^/]+", address):
        raise JobsError(
            f"--address {address!r}: give the job server's address, http://HEAD:8265 "
            "(the dashboard port), not a ray:// or GCS address"
        )
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise JobsError(
            "submitting needs Ray's job client: pip install 'appa[ray]' (ray[default])"
        ) from None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with _without(("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")):
        try:
            return JobSubmissionClient(address, headers=headers)
        except (*_client_errors(), ValueError) as error:
            raise JobsError(f"{address}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    if "Authentication required" in text or "401" in text.split("\n", 1)[0]:
        return f"the job server requires a token ({_TOKEN_SOURCES})"
    if "Authentication failed" in text or "Invalid authentication token" in text:
        return "the job server refused the token"
    return text.splitlines()[0] if text else type(error).__name__


def job_digest(command: Sequence[str], config_digest: str | None, args: Sequence[str]) -> str:
    """SHA-256 (hex) of what a job computes: its command path, the hash of its loaded config
    (None for a command without one) and the rest of its arguments (paths, flags)."""
    text = "\0".join([*command, "config", config_digest or "-", "args", *args])
    return hashlib.sha256(text.encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def submission_id(
    command: Sequence[str], digest: str, period: tuple[str, str] | None = None
) -> str:
    """The job's submission id, the same for the same job: ``appa-<command>[-<start>-<end>]-
    <12 hex digits of digest>``, e.g. ``appa-reanalysis-20030301-20030307t18-3f2a...``."""
    parts = ["appa", *(_slug(c) for c in command)]
    if period is not None:  # 2003-03-01T00:00:00 as 20030301, 2003-03-07T18:00 as 20030307t1800
        compact = [re.sub(r"T00(:00)*$", "", p).replace("-", "").replace(":", "") for p in period]
        parts += [_slug(p) for p in compact]
    return "-".join([*parts, digest[:12]])


def entrypoint(args: Sequence[str]) -> str:
    """The shell command a job runs: the ``appa`` command line as ``python -m appa.cli``, so
    the Appa of the uploaded working directory (first on the driver's path) runs, not one the
    cluster's image may hold."""
    return shlex.join(["python", "-m", "appa.cli", *args])


def runtime_env(
    working_dir: str | Path,
    env_vars: Mapping[str, str] | None = None,
    requirements: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Ray's ``runtime_env`` of a job: ``working_dir`` uploaded without :data:`EXCLUDES`,
    ``env_vars`` (plus unbuffered Python output, for live logs) and, when given,
    ``requirements`` (pinned pip lines) installed in a job environment that inherits the
    cluster's packages; without them the job uses the cluster image's packages."""
    env = {"PYTHONUNBUFFERED": "1", **dict(env_vars or {})}
    found: dict[str, Any] = {
        "working_dir": str(Path(working_dir).resolve()),
        "excludes": list(EXCLUDES),
        "env_vars": env,
    }
    if requirements:
        found["pip"] = {"packages": list(requirements)}
    return found


def _client_errors() -> tuple[type[BaseException], ...]:
    """What Ray's job client raises: a refused request (RuntimeError), a refused or missing
    token (Ray's AuthenticationError), an unreachable server (OSError, as requests raises)."""
    try:
        from ray.exceptions import AuthenticationError
    except ImportError:  # a Ray without token authentication
        return (RuntimeError, OSError)
    return (RuntimeError, OSError, AuthenticationError)


def call(what: str, method: Callable[..., Any], *args: Any) -> Any:
    """``method(*args)`` of the job client, its errors as one-line :class:`JobsError`
    errors naming ``what`` (a job id or the address)."""
    try:
        return method(*args)
    except _client_errors() as error:
        raise JobsError(f"{what}: {_first_line(error)}") from None


def _status(client: Any, job_id: str) -> str | None:
    """The job's status, or None when the cluster knows no such job."""
    try:
        return str(client.get_job_status(job_id).value)
    except _client_errors() as error:
        if "does not exist" in str(error) or "404" in str(error):
            return None
        raise JobsError(f"{job_id}: {_first_line(error)}") from None


def submit(
    client: Any,
    base_id: str,
    command: str,
    env: Mapping[str, Any],
    *,
    new: bool = False,
    metadata: Mapping[str, str] | None = None,
    entrypoint_num_cpus: float | None = None,
) -> Submission:
    """Submits ``command`` as the job ``base_id``, or attaches to it: the status is checked
    first (as KubeRay's submitter does), and a pending, running or succeeded job of that id is
    attached to, never started again. A failed or stopped one is refused (naming it) unless
    ``new``, which submits under the first free id ``base_id-r2``, ``-r3``... (or attaches to
    the live or succeeded one among them).

    Raises:
        JobsError: the earlier job failed or was stopped (without ``new``), or the server
            refused the submission.
    """
    last: tuple[str, str] | None = None
    for n in range(1, _MAX_RETRIES + 1):
        job_id = base_id if n == 1 else f"{base_id}{_RETRY}{n}"
        status = _status(client, job_id)
        if status is None:
            break
        if status in LIVE or status == "SUCCEEDED":
            return Submission(job_id, attached=True, status=status)
        last = (job_id, status)
    else:
        raise JobsError(f"{base_id}: {_MAX_RETRIES} earlier submissions failed or were stopped")
    if last is not None and not new:
        job_id_, status_ = last
        raise JobsError(
            f"{job_id_} {status_.lower()} earlier on this cluster (appa jobs logs {job_id_}); "
            "fix the cause and rerun with --new to submit it again under a fresh id"
        )
    try:
        client.submit_job(
            entrypoint=command,
            submission_id=job_id,
            runtime_env=dict(env),
            metadata=dict(metadata or {}),
            entrypoint_num_cpus=entrypoint_num_cpus,
        )
    except _client_errors() as error:
        # another submitter got there first: attach to its job
        status = _status(client, job_id)
        if status is not None and (status in LIVE or status == "SUCCEEDED"):
            return Submission(job_id, attached=True, status=status)
        raise JobsError(f"{job_id}: the job server refused it: {_first_line(error)}") from None
    return Submission(job_id, attached=False, status=_status(client, job_id) or "PENDING")


def follow(client: Any, job_id: str, echo: Callable[[str], None] = print) -> str:
    """Streams the job's logs (from its start) until it ends; returns its final status."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            text = lines.rstrip("\n")
            if text:
                echo(text)

    try:
        asyncio.run(tail())
    except _client_errors() as error:
        raise JobsError(f"{job_id}: {_first_line(error)}") from None
    status = _status(client, job_id)
    if status is None:
        raise JobsError(f"{job_id}: no such job on this cluster")
    return status


def stop(client: Any, job_id: str) -> bool:
    """Asks the cluster to stop the job; False when it had already ended."""
    if _status(client, job_id) is None:
        raise JobsError(f"{job_id}: no such job on this cluster")
    return bool(call(job_id, client.stop_job, job_id))


def exit_code(status: str) -> int:
    """The shell's exit status of a finished job: 0 succeeded, 1 failed, 2 stopped."""
    if status not in _EXIT:
        raise JobsError(f"the job has not finished: {status}")
    return _EXIT[status]
