"""Encoding a window store of states into a latent window store, block by block, resumably.

The output is a Zarr group with ``latent`` ``(T, c, h, w)`` float32 (chunked by ``block`` time
steps), ``time``, a ``done`` flag per block (one chunk each, so concurrent writers never share
a chunk), and attributes: provenance (autoencoder checkpoint and step, source store, its state
spec and statistics when present, time range, appa version) and, once every block is done, the
per-channel ``latent_mean`` / ``latent_std`` that :class:`~appa.training.jobs.DiffusionJob`
reads with ``latent_stats: store``. Re-running skips finished blocks. Pure torch and zarr: the
Ray Data pipeline that spreads blocks over an actor pool is :mod:`appa.distributed.encode`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

import appa
from appa.config import ConfigError, StrictModel
from appa.io.checkpoints import load_checkpoint, load_module_state
from appa.nn import StateAutoencoder
from appa.nn.presets import AutoencoderConfig

__all__ = [
    "BlockEncoder",
    "EncodeJob",
    "EncodeRunner",
    "finalize_latent_store",
    "load_autoencoder",
    "prepare_latent_store",
]


class EncodeRunner(StrictModel):
    """``backend="ray"``: Ray Data ``map_batches`` over blocks with ``concurrency`` encoder
    actors (``gpus_per_actor`` each when ``use_gpu``); ``"local"``: this process."""

    backend: Literal["ray", "local"] = "ray"
    address: str | None = None
    concurrency: int = Field(2, ge=1)
    use_gpu: bool = False
    gpus_per_actor: float = Field(1.0, gt=0)
    cpus_per_actor: float = Field(1.0, gt=0)
    num_cpus: int | None = Field(None, ge=1)
    object_store_memory: int | None = Field(None, ge=78643200)
    torch_threads: int | None = Field(None, ge=1)


class EncodeJob(StrictModel):
    """``appa encode``: ``source`` (window store of standardised states) through the
    autoencoder of ``checkpoint`` (a checkpoint folder or a run's ``checkpoints`` folder) into
    ``output``; latent statistics over ``stats_span`` time indices (None: all)."""

    checkpoint: str
    source: str
    variable: str = "state"
    output: str
    block: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    stats_span: tuple[int, int] | None = None
    runner: EncodeRunner = Field(default_factory=EncodeRunner)


def load_autoencoder(
    path: str, device: torch.device | str = "cpu"
) -> tuple[StateAutoencoder, dict[str, Any]]:
    """The autoencoder of a checkpoint (eval mode) and the checkpoint's metadata (with
    ``path`` and ``step``)."""
    ckpt = load_checkpoint(path)
    if ckpt.metadata.get("kind") != "autoencoder":
        raise ConfigError(f"{ckpt.path} is a {ckpt.metadata.get('kind')!r} checkpoint")
    config = AutoencoderConfig.model_validate(ckpt.metadata["task"]["autoencoder"])
    model = StateAutoencoder(config)
    load_module_state(model, ckpt.tensors["model"], f"{ckpt.path}/model.safetensors")
    meta = {**ckpt.metadata, "path": ckpt.path, "step": ckpt.step}
    return model.to(device).eval(), meta


def prepare_latent_store(job: EncodeJob) -> list[int]:
    """Creates the output store (or checks the existing one against ``job``); returns the
    blocks still to encode."""
    import zarr

    model, meta = load_autoencoder(job.checkpoint)
    try:
        source = zarr.open_group(job.source, mode="r")
    except FileNotFoundError:
        raise ConfigError(f"no window store at {job.source}") from None
    if job.variable not in source:
        raise ConfigError(f"{job.source}: no array {job.variable!r}")
    states = source[job.variable]
    cfg = model.config
    if tuple(states.shape[1:]) != (cfg.in_channels, *cfg.grid):
        raise ConfigError(
            f"{job.source}/{job.variable} holds states {tuple(states.shape[1:])}, the "
            f"autoencoder of {meta['path']} expects {(cfg.in_channels, *cfg.grid)}"
        )
    T = states.shape[0]
    n_blocks = -(-T // job.block)
    provenance = {
        "checkpoint": meta["path"],
        "checkpoint_step": meta["step"],
        "source": job.source,
        "source_variable": job.variable,
        "block": job.block,
        "appa_version": appa.__version__,
    }
    try:
        out = zarr.open_group(job.output, mode="r+")
    except FileNotFoundError:
        out = None
    if out is not None:
        saved = dict(out.attrs.get("provenance", {}))
        differ = [
            k
            for k in ("checkpoint", "checkpoint_step", "source", "block")
            if saved.get(k) != provenance[k]
        ]
        if differ:
            raise ConfigError(
                f"{job.output} was encoded with other settings ({differ}); "
                "choose a new output or delete it"
            )
        done = np.asarray(out["done"][:])
        return [i for i in range(n_blocks) if not done[i]]
    out = zarr.open_group(job.output, mode="w")
    c, h, w = cfg.latent_shape
    out.create_array("latent", shape=(T, c, h, w), chunks=(job.block, c, h, w), dtype="float32")
    out.create_array("time", data=np.asarray(source["time"][:]))
    out.create_array("done", shape=(n_blocks,), chunks=(1,), dtype="int8", fill_value=0)
    times = np.asarray(source["time"][:]).astype("datetime64[ns]")
    attrs = dict(source.attrs)
    out.attrs.update(
        {
            "variable": "latent",
            "provenance": {
                **provenance,
                "time_range": [str(times[0]), str(times[-1])],
                "state_spec": attrs.get("state_spec"),
                "statistics": attrs.get("statistics"),
                "channel_names": attrs.get("channel_names"),
            },
        }
    )
    return list(range(n_blocks))


class BlockEncoder:
    """Encodes whole blocks of time steps; one per process or Ray actor (loads the model once).

    Calling it with ``{"block": array of block indices}`` encodes those blocks, writes their
    latents and flags, and returns the indices done (the Ray Data batch format)."""

    def __init__(self, job: dict[str, Any], device: str | None = None) -> None:
        import zarr

        self.job = EncodeJob.model_validate(job)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.job.runner.torch_threads:
            torch.set_num_threads(self.job.runner.torch_threads)
        self.model, _ = load_autoencoder(self.job.checkpoint, self.device)
        self.states = zarr.open_group(self.job.source, mode="r")[self.job.variable]
        out = zarr.open_group(self.job.output, mode="r+")
        self.latent, self.done = out["latent"], out["done"]

    @torch.no_grad()
    def encode_block(self, block: int) -> None:
        b = self.job.block
        start, stop = block * b, min((block + 1) * b, self.states.shape[0])
        x = torch.from_numpy(np.asarray(self.states[start:stop], dtype=np.float32))
        parts = []
        for i in range(0, x.shape[0], self.job.batch_size):
            chunk = x[i : i + self.job.batch_size].to(self.device)
            parts.append(self.model.encode(chunk).float().cpu())
        self.latent[start:stop] = torch.cat(parts).numpy()
        self.done[block] = 1  # after the data: a crash in between re-encodes the block

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blocks = np.asarray(batch["block"]).astype(np.int64)
        for block in blocks:
            self.encode_block(int(block))
        return {"block": blocks}


def finalize_latent_store(job: EncodeJob) -> dict[str, Any]:
    """Checks every block is done and writes per-channel ``latent_mean`` / ``latent_std`` over
    ``stats_span``; returns them."""
    import zarr

    out = zarr.open_group(job.output, mode="r+")
    done = np.asarray(out["done"][:])
    if not done.all():
        missing = np.flatnonzero(done == 0).tolist()
        raise RuntimeError(f"{job.output}: blocks {missing[:10]} are not encoded")
    latent = out["latent"]
    start, stop = job.stats_span or (0, latent.shape[0])
    s = np.zeros(latent.shape[1])
    s2 = np.zeros(latent.shape[1])
    n = 0
    for i in range(start, stop, job.block):
        z = np.asarray(latent[i : min(i + job.block, stop)], dtype=np.float64)
        s += z.sum(axis=(0, 2, 3))
        s2 += np.square(z).sum(axis=(0, 2, 3))
        n += z.shape[0] * z.shape[2] * z.shape[3]
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 1e-12))
    stats = {
        "latent_mean": mean.tolist(),
        "latent_std": std.tolist(),
        "latent_stats_span": [start, stop],
    }
    out.attrs.update(stats)
    return stats
