"""Encoding states (a gridded store or a window store) into a latent window store, block by block,
resumably.

The output is a Zarr group with ``latent`` ``(T, c, h, w)`` float32 (chunked by ``block`` time
steps), ``time``, a ``done`` flag per block (one chunk each, so concurrent writers never share
a chunk), and attributes: provenance (autoencoder checkpoint, step and the SHA-256 of the
weights encoded with, source store, its state spec and statistics when present, time range,
appa version) and, once every block is done, the per-channel ``latent_mean`` / ``latent_std``
that diffusion training reads with ``latent_stats: store``. Re-running skips finished blocks.
The output path must be free (absent, an empty directory) or a latent store of the same
settings (marked ``appa_product: "latents"``): anything else is refused, never replaced. Pure
torch and zarr: the Ray Data pipeline that spreads blocks over an actor pool is
:mod:`appa.distributed.encode`, the ``appa encode`` job :mod:`appa.jobs.encode`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

import appa
from appa.config import ConfigError, Period, StrictModel
from appa.data.datasets import period_index
from appa.data.spec import StateSpec
from appa.data.stats import channel_moments
from appa.dates import date_features
from appa.files import PRODUCT_ATTR, claim_output
from appa.io.archive import create_done_flags, pending_indices
from appa.io.cards import AutoencoderCard, CardError, read_card
from appa.io.checkpoints import load_checkpoint, load_module_state
from appa.nn import StateAutoencoder

__all__ = [
    "BlockEncoder",
    "LatentEncodingConfig",
    "checkpoint_spec_and_statistics",
    "finalize_latent_store",
    "load_autoencoder",
    "prepare_latent_store",
]


class LatentEncodingConfig(StrictModel):
    """What to encode: ``source`` through the autoencoder of ``checkpoint`` (a checkpoint
    folder or a run's ``checkpoints`` folder) into ``output``; latent statistics over
    the dates of ``stats_period`` (inclusive; None: all the output's times).

    ``source_format="window"``: a window store of standardised states (``variable``).
    ``"gridded"``: a store in the canonical ERA5 layout (path, URL or ERA5 preset) read through
    :class:`appa.data.WindowDataset` over ``period`` (dates, inclusive; None: all), standardised
    with the state spec and statistics the checkpoint carries. ``spec`` / ``statistics`` (a
    JSON file) are used only for checkpoints without them; given alongside a checkpoint that
    has them, they must agree with it.
    """

    checkpoint: str
    source: str
    source_format: Literal["window", "gridded"] = "window"
    variable: str = "state"
    spec: StateSpec | None = None
    statistics: str | None = None
    period: Period | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)
    output: str
    block: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    stats_period: Period | None = None


def checkpoint_spec_and_statistics(job: LatentEncodingConfig, meta: dict[str, Any]):
    """The :class:`~appa.data.StateSpec` and :class:`~appa.data.Statistics` to encode with:
    the checkpoint's when it carries them (the config's must then agree), else the config's.
    Raises :class:`ConfigError` naming the mismatch or what is missing."""
    from appa.data.stats import Statistics

    card: AutoencoderCard = meta["card"]
    where = meta.get("path", job.checkpoint)
    if card.state_spec is not None:
        spec = card.state_spec
        if job.spec is not None and job.spec != spec:
            fields = [k for k in StateSpec.model_fields if getattr(job.spec, k) != getattr(spec, k)]
            raise ConfigError(
                f"spec: the config's state spec differs from the one {where} was trained with "
                f"in {fields}: config {job.spec.model_dump()} vs checkpoint {spec.model_dump()}"
            )
    elif job.spec is not None:
        spec = job.spec
    else:
        raise ConfigError(f"{where} carries no state spec; give one as spec")
    saved_stats = card.statistics
    given = None
    if job.statistics is not None:
        try:
            given = Statistics.load(job.statistics).for_spec(spec)
        except (FileNotFoundError, KeyError) as error:
            raise ConfigError(f"statistics: {error}") from None
    if saved_stats is not None:
        stats = Statistics.from_json(saved_stats).for_spec(spec)
        if given is not None and not (
            np.allclose(given.mean, stats.mean, rtol=1e-6, atol=0)
            and np.allclose(given.std, stats.std, rtol=1e-6, atol=0)
        ):
            raise ConfigError(
                f"statistics: {job.statistics} differs from the statistics {where} was "
                "trained with (leave statistics unset to use the checkpoint's)"
            )
    elif given is not None:
        stats = given
    else:
        raise ConfigError(f"{where} carries no statistics; give a statistics file")
    return spec, stats


class _Source:
    """Standardised states ``(n, C, H, W)`` of either source format, by output time index."""

    def __init__(self, job: LatentEncodingConfig, meta: dict[str, Any]) -> None:
        import zarr

        self.job = job
        self.attrs: dict[str, Any] = {}
        if job.source_format == "window":
            try:
                group = zarr.open_group(job.source, mode="r")
            except FileNotFoundError:
                raise ConfigError(f"no window store at {job.source}") from None
            if job.variable not in group:
                raise ConfigError(f"{job.source}: no array {job.variable!r}")
            self.array = group[job.variable]
            self.times = np.asarray(group["time"][:]).astype("datetime64[ns]")
            self.attrs = dict(group.attrs)
            self.shape = tuple(self.array.shape[1:])
            self.dataset = None
            return
        from appa.data.datasets import WindowDataset
        from appa.data.sources import SelectionError

        spec, stats = checkpoint_spec_and_statistics(job, meta)
        try:
            self.dataset = WindowDataset(
                job.source, spec, stats, window=1, period=job.period,
                storage_options=job.storage_options or None,
            )  # fmt: skip
        except (SelectionError, ValueError) as error:
            raise ConfigError(f"source ({job.source}): {error}") from None
        self.times = self.dataset.times[self.dataset.starts].astype("datetime64[ns]")
        first = self.dataset[0]["state"]
        self.shape = tuple(first.shape[1:])
        self.attrs = {
            "state_spec": spec.model_dump(mode="json"),
            "statistics": stats.to_json(),
            "channel_names": spec.channel_names(),
        }

    def __len__(self) -> int:
        return int(self.times.shape[0])

    def read(self, start: int, stop: int) -> torch.Tensor:
        if self.dataset is None:
            return torch.from_numpy(np.asarray(self.array[start:stop], dtype=np.float32))
        # masked points hold the fill value 0, as in training (AutoencoderObjective zeroes them)
        return torch.cat([self.dataset[i]["state"] for i in range(start, stop)])


def load_autoencoder(
    path: str, device: torch.device | str = "cpu"
) -> tuple[StateAutoencoder, dict[str, Any]]:
    """The autoencoder of a checkpoint (eval mode) and what it says of itself: ``card``
    (:class:`~appa.io.cards.AutoencoderCard`), ``path``, ``step`` and ``sha256`` (of the
    weights file it encodes with, ``model.safetensors``)."""
    ckpt = load_checkpoint(path)
    try:
        card = read_card(ckpt.metadata, ckpt.path, kind="autoencoder").card
    except CardError as error:
        raise ConfigError(str(error)) from None
    model = StateAutoencoder(card.autoencoder)
    load_module_state(model, ckpt.tensors["model"], f"{ckpt.path}/model.safetensors")
    # the digest of the weights encoded with: a denoiser trained on these latents names its
    # autoencoder by it, and loading a prior checks the pair (export copies the file unchanged)
    sha256 = ckpt.files["model.safetensors"]["sha256"]
    meta = {"card": card, "path": ckpt.path, "step": ckpt.step, "sha256": sha256}
    return model.to(device).eval(), meta


def prepare_latent_store(job: LatentEncodingConfig) -> list[int]:
    """Creates the output store (or checks the existing one against ``job``); returns the
    blocks still to encode."""
    import zarr

    # a latent store is resumed; a free path is written; anything else is refused untouched,
    # before any work
    found = claim_output(job.output, "latents", resumable=True)
    model, meta = load_autoencoder(job.checkpoint)
    source = _Source(job, meta)
    cfg = model.config
    if source.shape != (cfg.in_channels, *cfg.grid):
        raise ConfigError(
            f"{job.source} holds states {source.shape}, the "
            f"autoencoder of {meta['path']} expects {(cfg.in_channels, *cfg.grid)}"
        )
    T = len(source)
    n_blocks = -(-T // job.block)
    provenance = {
        "checkpoint": meta["path"],
        "checkpoint_step": meta["step"],
        "checkpoint_sha256": meta["sha256"],
        "source": job.source,
        "source_format": job.source_format,
        "source_variable": job.variable if job.source_format == "window" else None,
        "period": None if job.period is None else list(job.period),
        "block": job.block,
        "appa_version": appa.__version__,
    }
    out = None if found.free else zarr.open_group(job.output, mode="r+")
    if out is not None:
        saved = dict(out.attrs.get("provenance", {}))
        differ = [
            k
            for k in ("checkpoint", "checkpoint_step", "source", "block", "period")
            if saved.get(k) != provenance[k]
        ]
        # stores encoded before the weights' digest was recorded resume without it
        if saved.get("checkpoint_sha256", meta["sha256"]) != meta["sha256"]:
            differ.append("checkpoint_sha256")
        if differ:
            raise ConfigError(
                f"{job.output} was encoded with other settings ({differ}); "
                "choose a new output or delete it"
            )
        return pending_indices(out["done"])
    out = zarr.open_group(job.output, mode="w")
    c, h, w = cfg.latent_shape
    out.create_array("latent", shape=(T, c, h, w), chunks=(job.block, c, h, w), dtype="float32")
    times = source.times
    out.create_array("time", data=times.astype(np.int64))
    create_done_flags(out, n_blocks)
    attrs = source.attrs
    out.attrs.update(
        {
            PRODUCT_ATTR: "latents",
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

    ``job`` is a :class:`LatentEncodingConfig` in its JSON form (what an actor receives).
    Calling it with ``{"block": array of block indices}`` encodes those blocks, writes their
    latents and flags, and returns the indices done (the Ray Data batch format)."""

    def __init__(
        self, job: dict[str, Any], device: str | None = None, threads: int | None = None
    ) -> None:
        import zarr

        self.job = LatentEncodingConfig.model_validate(job)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if threads:
            torch.set_num_threads(threads)
        self.model, meta = load_autoencoder(self.job.checkpoint, self.device)
        self.source = _Source(self.job, meta)
        out = zarr.open_group(self.job.output, mode="r+")
        self.latent, self.done = out["latent"], out["done"]

    @torch.no_grad()
    def encode_block(self, block: int) -> None:
        b = self.job.block
        start, stop = block * b, min((block + 1) * b, len(self.source))
        x = self.source.read(start, stop)
        dates = date_features(self.source.times[start:stop]).to(self.device)
        conditioned = self.model.config.date_context
        parts = []
        for i in range(0, x.shape[0], self.job.batch_size):
            chunk = x[i : i + self.job.batch_size].to(self.device)
            date = dates[i : i + self.job.batch_size] if conditioned else None
            parts.append(self.model.encode(chunk, date).float().cpu())
        self.latent[start:stop] = torch.cat(parts).numpy()
        self.done[block] = 1  # after the data: a crash in between re-encodes the block

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blocks = np.asarray(batch["block"]).astype(np.int64)
        for block in blocks:
            self.encode_block(int(block))
        return {"block": blocks}


def finalize_latent_store(job: LatentEncodingConfig) -> dict[str, Any]:
    """Checks every block is done and writes per-channel ``latent_mean`` / ``latent_std`` over
    ``stats_period`` (and the time indices ``[start, stop)`` it covers); returns them."""
    import zarr

    out = zarr.open_group(job.output, mode="r+")
    missing = pending_indices(out["done"])
    if missing:
        raise RuntimeError(f"{job.output}: blocks {missing[:10]} are not encoded")
    latent = out["latent"]
    times = np.asarray(out["time"][:]).astype("datetime64[ns]")
    try:
        index = period_index(times, job.stats_period)
    except ValueError as error:
        raise ConfigError(f"stats_period: {error}") from None
    start, stop = int(index[0]), int(index[-1]) + 1
    mean, std = channel_moments(latent, start, stop, block=job.block)
    stats = {
        "latent_mean": mean.tolist(),
        "latent_std": std.tolist(),
        "latent_stats_period": None if job.stats_period is None else list(job.stats_period),
        "latent_stats_span": [start, stop],
    }
    out.attrs.update(stats)
    return stats
