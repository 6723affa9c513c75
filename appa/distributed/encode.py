"""``appa encode`` on Ray Data: blocks of time steps flow through ``map_batches`` to a pool of
encoder actors (:class:`appa.training.encode.BlockEncoder`, the model loaded once per actor),
each writing its own chunks of the latent store. Orchestration only."""

from __future__ import annotations

import os
from typing import Any

from appa.distributed.train import init_ray
from appa.training.encode import (
    BlockEncoder,
    EncodeJob,
    finalize_latent_store,
    prepare_latent_store,
)

__all__ = ["run_encode"]


def _absolute(job: EncodeJob) -> EncodeJob:
    from appa.data.sources import ERA5_PRESETS

    def fix(path: str | None) -> str | None:
        if path is None or "://" in path or path.removeprefix("preset:") in ERA5_PRESETS:
            return path  # URLs and ERA5 preset names stay as they are
        return os.path.abspath(path)

    return job.model_copy(
        update={
            "checkpoint": fix(job.checkpoint),
            "source": fix(job.source),
            "statistics": fix(job.statistics),
            "output": fix(job.output),
        }
    )


def run_encode(job: EncodeJob) -> dict[str, Any]:
    """Encodes the blocks not yet done and writes the latent statistics; returns
    ``{"encoded": blocks encoded now, "skipped": blocks already done, **statistics}``."""
    job = _absolute(job)
    todo = prepare_latent_store(job)
    total = -(-_time_steps(job) // job.block)
    if todo and job.runner.backend == "local":
        encoder = BlockEncoder(job.model_dump(mode="json"))
        for block in todo:
            encoder.encode_block(block)
    elif todo:
        import ray.data

        runner = job.runner
        started = init_ray(runner.address, runner.num_cpus, runner.object_store_memory)
        try:
            options: dict[str, Any] = {"num_cpus": runner.cpus_per_actor}
            if runner.use_gpu:
                options["num_gpus"] = runner.gpus_per_actor
            blocks = ray.data.from_items([{"block": b} for b in todo])
            done = blocks.map_batches(
                BlockEncoder,
                fn_constructor_kwargs={"job": job.model_dump(mode="json")},
                batch_size=1,
                concurrency=min(runner.concurrency, len(todo)),
                **options,
            ).take_all()
            if sorted(int(r["block"]) for r in done) != sorted(todo):
                raise RuntimeError(f"{job.output}: Ray Data returned blocks {done}, not {todo}")
        finally:
            if started:
                ray.shutdown()
    stats = finalize_latent_store(job)
    return {"encoded": len(todo), "skipped": total - len(todo), **stats}


def _time_steps(job: EncodeJob) -> int:
    import zarr

    return int(zarr.open_group(job.output, mode="r")["latent"].shape[0])
