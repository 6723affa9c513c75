"""Blocks of work on Ray Data: block indices flow through ``map_batches`` to a pool of actors
that each build their worker once (for ``appa encode``: the encoder, the model loaded once) and
write their own chunks. Orchestration only."""

from __future__ import annotations

from typing import Any

from appa.distributed.runner import RayConfig, init_ray

__all__ = ["map_blocks"]


def _fitting_actors(runner: RayConfig) -> int:
    """Actors the cluster holds at the runner's CPUs and GPUs each."""
    import ray

    resources = ray.cluster_resources()
    fits = [resources.get("CPU", 0.0) / max(runner.cpus_per_worker, 1e-9)]
    if runner.use_gpu:
        fits.append(resources.get("GPU", 0.0) / runner.gpus_per_worker)
    return max(1, int(min(fits)))


def map_blocks(
    worker: type, kwargs: dict[str, Any], blocks: list[int], runner: RayConfig
) -> list[int]:
    """Calls ``worker(**kwargs)({"block": [b]})`` for every block on ``runner.workers`` actors
    (None: as many as the cluster holds) and returns the blocks they report done, sorted.
    ``worker`` must pickle and return ``{"block": indices}``."""
    import ray.data

    started = init_ray(runner)
    try:
        options: dict[str, Any] = {"num_cpus": runner.cpus_per_worker}
        if runner.use_gpu:
            options["num_gpus"] = runner.gpus_per_worker
        done = (
            ray.data.from_items([{"block": b} for b in blocks])
            .map_batches(
                worker,
                fn_constructor_kwargs=kwargs,
                batch_size=1,
                concurrency=min(runner.workers or _fitting_actors(runner), len(blocks)),
                **options,
            )
            .take_all()
        )
    finally:
        if started:
            import ray

            ray.shutdown()
    return sorted(int(r["block"]) for r in done)
