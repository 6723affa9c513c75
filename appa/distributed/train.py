"""Runs training jobs on Ray Train workers (``TorchTrainer``). Orchestration only: every worker
builds its trainer with :func:`appa.training.jobs.build_trainer` and runs the same loop.

Ray Train sets up the process group (gloo on CPU, NCCL on GPU); the loop wraps the network in
DDP (or FSDP2), reads its shard of the data stream, writes Appa checkpoints under the job's
``run_dir`` (rank 0; shared storage such as ``gs://`` or NFS on multi-node clusters) and
reports its metrics to Ray at every log step. A restarted worker group (``max_failures``) or a
rerun of the command resumes from the newest checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

from appa.training.jobs import (
    AutoencoderJob,
    DiffusionJob,
    build_trainer,
    parse_job,
    prepare_job,
)

__all__ = ["fit_on_ray", "init_ray", "run_training"]

Job = AutoencoderJob | DiffusionJob


def _absolute(job: Job) -> Job:
    """Local paths made absolute: Ray workers need not share the driver's working folder."""

    def fix(path: str | None) -> str | None:
        if path is None or "://" in path:
            return path
        return os.path.abspath(path)

    data = job.data.model_copy(update={"path": fix(job.data.path)})
    return job.model_copy(
        update={"data": data, "run_dir": fix(job.run_dir), "log_dir": fix(job.log_dir)}
    )


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
) -> bool:
    """Connects to the cluster at ``address`` or starts a local one (no dashboard); returns
    whether this call started Ray (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is not None:
        ray.init(address=address)
    else:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            object_store_memory=object_store_memory,
        )
    return True


def _worker(config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs."""
    import ray.train
    import ray.train.torch
    import torch

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    job = parse_job(config["job"])

    def report(step: int, metrics: dict[str, float]) -> None:
        # a barrier across ranks; the loop calls it on every rank at the same steps
        ray.train.report({k: float(v) for k, v in metrics.items()})

    device = ray.train.torch.get_device()
    trainer = build_trainer(job, callbacks=[report], device=device)
    trainer.fit()


def fit_on_ray(job: Job) -> dict[str, float]:
    """Trains ``job`` on ``job.runner.num_workers`` Ray Train workers; returns the last
    reported metrics. Starts a local Ray cluster unless one is running or an address is
    given."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    runner = job.runner
    job = prepare_job(_absolute(job))  # fail fast on the driver, before starting workers
    started = init_ray(runner.address, runner.num_cpus, runner.object_store_memory)
    try:
        resources: dict[str, float] = {"CPU": runner.cpus_per_worker}
        if runner.use_gpu:
            resources["GPU"] = runner.gpus_per_worker
        threads = runner.torch_threads or max(int(runner.cpus_per_worker), 1)
        storage = job.run_dir if "://" in job.run_dir else os.path.join(job.run_dir, "ray")
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"job": job.model_dump(mode="json"), "threads": threads},
            torch_config=TorchConfig(backend="nccl" if runner.use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=runner.num_workers,
                use_gpu=runner.use_gpu,
                resources_per_worker=resources,
            ),
            run_config=RunConfig(
                name=job.kind,
                storage_path=storage if "://" in job.run_dir else os.path.abspath(storage),
                failure_config=FailureConfig(max_failures=runner.max_failures),
            ),
        )
        result = trainer.fit()
        if result.error is not None:
            raise RuntimeError(f"Ray training of {job.kind} failed: {result.error}")
    finally:
        if started:
            import ray

            ray.shutdown()
    # the loop stores its last metrics in each checkpoint (Ray keeps metrics with its own
    # checkpoints only)
    from appa.io.checkpoints import latest_checkpoint, read_metadata

    latest = latest_checkpoint(f"{job.run_dir}/checkpoints")
    return {} if latest is None else dict(read_metadata(latest).get("metrics", {}))


def run_training(job: Job) -> dict[str, float]:
    """Runs ``job`` where its runner says: in this process (``backend="local"``) or on Ray."""
    if job.runner.backend == "local":
        import torch

        if job.runner.torch_threads:
            torch.set_num_threads(job.runner.torch_threads)
        return build_trainer(job).fit()
    return fit_on_ray(job)
