"""Training on Ray Train workers (``TorchTrainer``). Orchestration only: every worker builds its
trainer with the picklable ``build`` it is given and runs the same loop.

Ray Train sets up the process group (gloo on CPU, NCCL on GPU); the loop wraps the network in
DDP (or FSDP2), reads its shard of the data stream, writes Appa checkpoints (rank 0; shared
storage such as ``gs://`` or NFS on multi-node clusters) and reports its metrics to Ray at every
log step. A restarted worker group (``max_failures``) or a rerun resumes from the newest
checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appa.distributed.runner import RayConfig, init_ray

__all__ = ["fit_on_ray"]


def _worker(config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs."""
    import ray.train
    import ray.train.torch
    import torch

    torch.set_num_threads(int(config["threads"]))

    def report(step: int, metrics: dict[str, float]) -> None:
        # a barrier across ranks; the loop calls it on every rank at the same steps
        ray.train.report({k: float(v) for k, v in metrics.items()})

    device = ray.train.torch.get_device()
    config["build"](callbacks=[report], device=device).fit()


def fit_on_ray(build: Callable[..., Any], runner: RayConfig, name: str, storage: str) -> None:
    """Runs ``build(callbacks=..., device=...).fit()`` (``build`` returns a
    :class:`~appa.training.loop.Trainer`; it must pickle) on ``runner.workers`` Ray Train
    workers (1 when None). Ray keeps its own run records under ``storage`` (a local folder or
    URL). Starts a local Ray cluster unless one is running or an address is given."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = init_ray(runner)
    try:
        resources: dict[str, float] = {"CPU": runner.cpus_per_worker}
        if runner.use_gpu:
            resources["GPU"] = runner.gpus_per_worker
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"build": build, "threads": runner.threads()},
            torch_config=TorchConfig(backend="nccl" if runner.use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=runner.workers or 1,
                use_gpu=runner.use_gpu,
                resources_per_worker=resources,
            ),
            run_config=RunConfig(
                name=name,
                storage_path=storage,
                failure_config=FailureConfig(max_failures=runner.max_failures),
            ),
        )
        result = trainer.fit()
        if result.error is not None:
            raise RuntimeError(f"Ray training of {name} failed: {result.error}")
    finally:
        if started:
            import ray

            ray.shutdown()
