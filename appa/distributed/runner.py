"""Where a job runs: one Ray config for training (Ray Train), encoding (Ray Data) and the actor
pool of sampling jobs, and the one place that joins or starts a Ray cluster."""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import Field

from appa.config import StrictModel

__all__ = ["ClusterUnreachableError", "RayConfig", "check_cluster", "init_ray"]

# the ports Ray listens on when an address names none: the GCS, and the Ray Client server
_GCS_PORT, _CLIENT_PORT = 6379, 10001


class ClusterUnreachableError(ConnectionError):
    """The Ray cluster of ``runner.address`` does not answer; the message names it."""


class RayConfig(StrictModel):
    """How a job uses Ray (the ``runner`` section of every job config).

    A worker is a Ray Train worker (training), an encoder actor (encoding) or a pool actor
    (reanalysis, filtering, forecasting); each takes ``cpus_per_worker`` CPUs and
    ``gpus_per_worker`` GPUs (0: CPU only) and runs torch on ``torch_threads`` threads (None:
    ``cpus_per_worker``, at least 1).
    """

    backend: Literal["ray", "local"] = Field(
        "ray", description="ray, or local: in this process without Ray (training, encoding)"
    )
    address: str | None = Field(
        None, description="Ray cluster to join, e.g. ray://head:10001 (None: start a local one)"
    )
    connect_timeout_s: float = Field(
        30.0, gt=0, description="seconds to reach the cluster at address before failing"
    )
    cluster_cpus: int | None = Field(
        None, ge=1, description="CPUs of a local cluster (None: all the machine's)"
    )
    object_store_memory: int | None = Field(
        None, ge=78643200, description="object store bytes of a local cluster"
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="training workers (None: 1); encoder or pool actors (None: as many as fit)",
    )
    cpus_per_worker: float = Field(1.0, ge=0, description="CPUs each worker reserves")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs each worker reserves")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per worker")
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="training: DDP when several workers, or FSDP2 sharding"
    )
    max_failures: int = Field(0, ge=0, description="training: restarts of the worker group")
    max_restarts: int = Field(3, ge=0, description="pool: Ray restarts of a dead actor")
    max_attempts: int = Field(3, ge=1, description="pool: tries of a unit before the job fails")
    stall_timeout_s: float | None = Field(
        None, gt=0, description="pool: fail when no unit finishes for this long (None: wait)"
    )
    progress: bool = Field(True, description="pool: a progress bar of units")

    @property
    def use_gpu(self) -> bool:
        """Whether workers hold GPUs."""
        return self.gpus_per_worker > 0

    def threads(self) -> int:
        """torch threads of each worker."""
        return self.torch_threads or max(int(self.cpus_per_worker), 1)


def _endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` a Ray address connects to first, or None for ``auto`` / ``local``."""
    client = address.startswith("ray://")
    rest = address.removeprefix("ray://").split("/", 1)[0]
    if rest in ("auto", "local", ""):
        return None
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():  # no port: Ray's default
        host, port = rest, str(_CLIENT_PORT if client else _GCS_PORT)
    return host.strip("[]"), int(port)


def check_cluster(config: RayConfig) -> None:
    """Checks that the cluster at ``config.address`` (if any) accepts a TCP connection within
    ``config.connect_timeout_s``: ``ray.init`` itself retries an unreachable address for a
    long time (a host that drops packets: until killed). Local clusters pass.

    Raises:
        ClusterUnreachableError: one line naming the address and why.
    """
    if config.address is None:
        return
    endpoint = _endpoint(config.address)
    if endpoint is None:
        return
    timeout = config.connect_timeout_s
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            pass
    except TimeoutError:
        raise ClusterUnreachableError(
            f"cannot reach the Ray cluster at {config.address} within {timeout:g} s "
            "(runner.connect_timeout_s): no answer"
        ) from None
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise ClusterUnreachableError(
            f"cannot reach the Ray cluster at {config.address} within {timeout:g} s: {reason}"
        ) from None


def init_ray(config: RayConfig) -> bool:
    """Joins the cluster at ``config.address`` (once :func:`check_cluster` reached it) or
    starts a local one (no dashboard); returns whether this call started Ray (and so should
    shut it down).

    Raises:
        ClusterUnreachableError: one line naming the address, when it cannot be joined.
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if config.address is not None:
        check_cluster(config)
        try:
            ray.init(address=config.address)
        except (ConnectionError, RuntimeError, TimeoutError) as error:
            # something answers at the address, but not a Ray cluster this Ray can join
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ClusterUnreachableError(
                f"cannot join the Ray cluster at {config.address}: {first}"
            ) from None
    else:
        ray.init(
            num_cpus=config.cluster_cpus,
            include_dashboard=False,
            object_store_memory=config.object_store_memory,
        )
    return True
