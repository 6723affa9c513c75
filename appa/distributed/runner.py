"""Where a job runs: one Ray config for training (Ray Train), encoding (Ray Data) and the actor
pool of sampling jobs, and the one place that joins or starts a Ray cluster."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from appa.config import StrictModel

__all__ = ["RayConfig", "init_ray"]


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


def init_ray(config: RayConfig) -> bool:
    """Joins the cluster at ``config.address`` or starts a local one (no dashboard); returns
    whether this call started Ray (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if config.address is not None:
        ray.init(address=config.address)
    else:
        ray.init(
            num_cpus=config.cluster_cpus,
            include_dashboard=False,
            object_store_memory=config.object_store_memory,
        )
    return True
