"""``appa encode``: a gridded or window store through an autoencoder into a latent store,
block by block on Ray Data actors or in this process, resumably."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field

from appa.distributed.runner import RayConfig
from appa.training.encode import (
    BlockEncoder,
    LatentEncodingConfig,
    finalize_latent_store,
    prepare_latent_store,
)

__all__ = ["EncodeConfig", "run_encode"]


class EncodeConfig(LatentEncodingConfig):
    """What to encode (:class:`~appa.training.encode.LatentEncodingConfig`) and where it runs
    (``runner``: encoder actors on Ray Data, or ``backend: local``)."""

    runner: RayConfig = Field(default_factory=RayConfig)


def _absolute(job: EncodeConfig) -> EncodeConfig:
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


def run_encode(job: EncodeConfig) -> dict[str, Any]:
    """Encodes the blocks not yet done and writes the latent statistics; returns
    ``{"encoded": blocks encoded now, "skipped": blocks already done, **statistics}``."""
    import zarr

    job = _absolute(job)
    todo = prepare_latent_store(job)
    total = -(-int(zarr.open_group(job.output, mode="r")["latent"].shape[0]) // job.block)
    settings = LatentEncodingConfig.model_validate(job.model_dump(exclude={"runner"}))
    kwargs = {"job": settings.model_dump(mode="json"), "threads": job.runner.torch_threads}
    if todo and job.runner.backend == "local":
        encoder = BlockEncoder(**kwargs)
        for block in todo:
            encoder.encode_block(block)
    elif todo:
        from appa.distributed.encode import map_blocks

        done = map_blocks(BlockEncoder, kwargs, todo, job.runner)
        if done != sorted(todo):
            raise RuntimeError(f"{job.output}: Ray Data returned blocks {done}, not {todo}")
    stats = finalize_latent_store(job)
    return {"encoded": len(todo), "skipped": total - len(todo), **stats}
