"""Training jobs from typed configs: ``appa train autoencoder`` and ``appa train diffusion``.

A job config names a network preset (with ``key=value`` overrides), its data (a gridded store
read through :class:`appa.data.WindowDataset`, or a window store of :mod:`appa.training.data`),
the loop and optimiser settings, the run folder (local or fsspec
URL) and how to run it (:class:`RunnerConfig`: in-process, or on Ray Train workers; the
launching lives in :mod:`appa.distributed.train`). :func:`build_trainer` turns a config into a ready
:class:`~appa.training.loop.Trainer` on the calling process; it is what each Ray worker runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from appa.config import ConfigError, StrictModel
from appa.data.spec import StateSpec
from appa.nn.presets import get_preset
from appa.training.config import LoopConfig, OptimizerConfig
from appa.training.data import ZarrWindows
from appa.training.loop import Callback, Trainer
from appa.training.tasks import AutoencoderTask, DiffusionTask

__all__ = [
    "AutoencoderJob",
    "DataConfig",
    "DiffusionJob",
    "GriddedSource",
    "RunnerConfig",
    "build_trainer",
    "ensure_statistics",
    "parse_job",
    "prepare_job",
]


Period = tuple[str, str]


class GriddedSource(StrictModel):
    """A gridded store in the canonical ERA5 layout read through :class:`appa.data.WindowDataset`
    (standardised on the fly, masked variables NaN-filled with a validity mask).

    Attributes:
        store: Local path, ``gs://`` / ``s3://`` URL or ERA5 preset name
            (:data:`appa.data.ERA5_PRESETS`), e.g. a toy Earth store.
        spec: The state spec (variables, levels, masked variables; channel order).
        statistics: JSON statistics (:class:`appa.data.Statistics`); None: ``<store>.stats.json``
            beside a local store. Missing files are computed over ``stats_period`` and written
            there before training.
        stats_period: Dates (inclusive) the statistics are computed over; default ``train``.
        train, val: Dates (inclusive) of the training and validation windows.
        static: Static fields of the store given to the autoencoder as context (e.g.
            ``[land_sea_mask, geopotential_at_surface]``; the preset's
            ``autoencoder.static_channels`` must match).
        storage_options: fsspec options of remote stores.
    """

    store: str
    spec: StateSpec
    static: list[str] = Field(default_factory=list)
    statistics: str | None = None
    stats_period: Period | None = None
    train: Period
    val: Period | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("train", "val", "stats_period", mode="before")
    @classmethod
    def _dates(cls, value):
        # YAML reads 2000-01-01 as a date: keep ISO strings
        if value is None:
            return None
        return tuple(str(v) for v in value)

    def statistics_path(self) -> str:
        """Where the statistics live (the configured path, else beside the store)."""
        if self.statistics is not None:
            return self.statistics
        from appa.data.sources import ERA5_PRESETS
        from appa.data.stats import default_stats_path

        if self.store.removeprefix("preset:") in ERA5_PRESETS or "://" in self.store:
            raise ConfigError(
                f"data.source.statistics: {self.store} is remote; give a local statistics path"
            )
        return str(default_stats_path(self.store))


class DataConfig(StrictModel):
    """Either a window store (``path``, with time-index spans ``[start, stop)`` ``train`` and
    ``val``) or a gridded ``source`` (:class:`GriddedSource`, with date periods)."""

    path: str | None = None
    source: GriddedSource | None = None
    variable: str | None = None  # default: "state" (autoencoder) or "latent" (diffusion)
    train: tuple[int, int] | None = None
    val: tuple[int, int] | None = None
    stride: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.path is None) == (self.source is None):
            raise ValueError("give exactly one of data.path (window store) and data.source")
        if self.source is not None:
            given = [k for k in ("variable", "train", "val") if getattr(self, k) is not None]
            if given:
                raise ValueError(
                    f"data.{given[0]} belongs to window stores; with data.source give the "
                    "periods as data.source.train / data.source.val"
                )
        return self


class RunnerConfig(StrictModel):
    """Where the job runs.

    ``backend="ray"`` runs the loop on ``num_workers`` Ray Train workers (DDP over gloo on CPU,
    NCCL on GPU; ``strategy="fsdp"`` shards with FSDP2) against ``address`` (None: a local
    cluster started by ``ray.init()``). ``backend="local"`` runs it in this process.
    """

    backend: Literal["ray", "local"] = "ray"
    address: str | None = None
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    max_failures: int = Field(0, ge=0)
    num_cpus: int | None = Field(None, ge=1)  # for a local cluster only
    object_store_memory: int | None = Field(None, ge=78643200)
    torch_threads: int | None = Field(None, ge=1)


class _Job(StrictModel):
    preset: str = "tiny"
    overrides: list[str] = Field(default_factory=list)
    data: DataConfig
    loop: LoopConfig = Field(default_factory=LoopConfig)
    optim: OptimizerConfig = Field(default_factory=OptimizerConfig)
    run_dir: str = "runs/train"
    log_dir: str | None = None
    resume: bool = True
    runner: RunnerConfig = Field(default_factory=RunnerConfig)


class AutoencoderJob(_Job):
    """Autoencoder training. ``window`` states per item (flattened into the batch);
    ``channel_weights`` weigh the loss per channel (default: the store's ``channel_weights``
    attribute, else equal)."""

    kind: Literal["autoencoder"] = "autoencoder"
    window: int = Field(1, ge=1)
    channel_weights: list[float] | None = None
    # weight of appa.nn.ZonalSpectrumLoss beside the MSE (0: MSE only), and its power floor
    spectral_weight: float = Field(0.0, ge=0)
    spectral_floor: float = Field(1e-6, gt=0)
    # weight of the MSE of reconstructed changes between consecutive states (needs window >= 2)
    tendency_weight: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _tendency_needs_pairs(self) -> AutoencoderJob:
        if self.tendency_weight > 0 and self.window < 2:
            raise ValueError(
                f"tendency_weight={self.tendency_weight} compares consecutive states: set "
                f"window >= 2 (got window={self.window})"
            )
        return self


class DiffusionJob(_Job):
    """Latent diffusion training on windows of the preset's ``denoiser.window`` latents.

    ``latent_stats="store"`` standardises latents with the store's ``latent_mean`` /
    ``latent_std`` attributes, ``"compute"`` with per-channel statistics of the training span,
    ``"none"`` leaves them as they are."""

    kind: Literal["diffusion"] = "diffusion"
    schedule: Literal["loglinear", "rectified", "loglogit"] = "loglinear"
    sigma_min: float = Field(1e-3, gt=0)
    sigma_max: float = Field(1e3, gt=0)
    sigma_data: float = Field(1.0, gt=0)
    # how training noise levels are drawn: uniform time through the schedule, or EDM's
    # log-normal (log sigma ~ N(sigma_log_mean, sigma_log_std^2), clipped to the bounds)
    train_sigma: Literal["schedule", "lognormal"] = "schedule"
    sigma_log_mean: float = -1.2
    sigma_log_std: float = Field(1.2, gt=0)
    # with denoiser.known_frames: the share of training windows whose first frames are given
    # clean (the forecast's situation); the rest train the joint prior
    known_probability: float = Field(0.0, ge=0, le=1)
    latent_stats: Literal["store", "compute", "none"] = "compute"
    latent_mean: list[float] | None = None  # when both are given, used as they are
    latent_std: list[float] | None = None
    val_sigmas: int = Field(6, ge=1)
    val_samples: int = Field(0, ge=0)  # windows generated per worker at each validation
    val_sampler: Literal["ddpm", "ddim", "euler", "heun", "pc", "lms"] = "heun"
    val_steps: int = Field(16, ge=1)


Job = AutoencoderJob | DiffusionJob


def _datasets(job: Job, window: int, variable: str) -> tuple[ZarrWindows, ZarrWindows | None]:
    d = job.data
    train = ZarrWindows(d.path, window, variable, d.train, d.stride)
    val = ZarrWindows(d.path, window, variable, d.val, d.stride) if d.val is not None else None
    return train, val


def _is_local(store: str) -> bool:
    from appa.data.sources import ERA5_PRESETS

    return "://" not in store and store.removeprefix("preset:") not in ERA5_PRESETS


def ensure_statistics(source: GriddedSource):
    """The :class:`appa.data.Statistics` of ``source`` for its spec: read from its statistics
    file, or computed over ``stats_period`` (default: the training period) and written there
    (atomically) when the file does not exist yet. A file computed over another requested
    period is an error rather than silently reused."""
    from pathlib import Path

    from appa.data.sources import SelectionError, open_era5
    from appa.data.stats import Statistics, compute_statistics

    path = Path(source.statistics_path())
    period = source.stats_period or source.train
    if path.is_file():
        stats = Statistics.load(path)
        requested = stats.extra.get("requested_period")
        if requested is not None and tuple(requested) != tuple(period):
            raise ConfigError(
                f"{path} holds statistics over {tuple(requested)}, the config asks for "
                f"{tuple(period)} (data.source.stats_period); delete the file or point "
                "data.source.statistics elsewhere"
            )
    else:
        try:
            ds = open_era5(
                source.store, spec=source.spec, storage_options=source.storage_options or None
            )
            stats = compute_statistics(ds, source.spec, period, source=source.store)
        except (SelectionError, ValueError) as error:
            raise ConfigError(f"data.source ({source.store}): {error}") from None
        stats.extra["requested_period"] = list(period)
        path.parent.mkdir(parents=True, exist_ok=True)
        stats.save(path)
    try:
        return stats.for_spec(source.spec)
    except KeyError as error:
        raise ConfigError(f"{path}: {error.args[0]}") from None


class _Gridded:
    """The datasets of a gridded source and the facts the task needs."""

    def __init__(self, job: AutoencoderJob, expected: tuple[int, int, int]) -> None:
        from appa.data.datasets import WindowDataset
        from appa.data.sources import SelectionError, open_era5

        src = job.data.source
        assert src is not None
        self.source = src
        options = src.storage_options or None
        try:
            ds = open_era5(src.store, spec=src.spec, storage_options=options, chunks=None)
            self.latitudes = [float(v) for v in ds["latitude"].values]
            self.shape = (src.spec.num_channels, ds.sizes["latitude"], ds.sizes["longitude"])
            if self.shape != expected:  # before computing statistics for a spec of no use
                raise ConfigError(
                    f"data.source: the spec on {src.store} gives states {self.shape} (channels "
                    f"{src.spec.channel_names()}), preset {job.preset!r} expects (channels, "
                    f"lat, lon) = {expected}"
                )
            self.static = None
            if src.static:
                from appa.data.sources import read_static

                self.static, moments = read_static(src.store, src.static, options)
                self.static_moments = dict(zip(src.static, moments, strict=True))
            self.stats = ensure_statistics(src)
            self.train = WindowDataset(
                src.store, src.spec, self.stats, job.window, src.train, job.data.stride,
                storage_options=options,
            )  # fmt: skip
            self.val = None
            if src.val is not None:
                self.val = WindowDataset(
                    src.store, src.spec, self.stats, job.window, src.val, job.data.stride,
                    storage_options=options,
                )  # fmt: skip
        except (SelectionError, ValueError) as error:
            raise ConfigError(f"data.source ({src.store}): {error}") from None


def _latent_stats(job: DiffusionJob, data: ZarrWindows) -> tuple[list | None, list | None]:
    if job.latent_mean is not None and job.latent_std is not None:
        return job.latent_mean, job.latent_std
    if job.latent_stats == "none":
        return None, None
    if job.latent_stats == "store":
        try:
            return list(data.attrs["latent_mean"]), list(data.attrs["latent_std"])
        except KeyError:
            raise ConfigError(
                f"latent_stats=store but {data.path} has no latent_mean/latent_std attributes"
            ) from None
    import zarr

    array = zarr.open_group(data.path, mode="r")[data.variable]
    start, stop = job.data.train or (0, array.shape[0])
    # one pass in blocks of time: float64 sums per channel
    s = np.zeros(array.shape[1])
    s2 = np.zeros(array.shape[1])
    n = 0
    for i in range(start, stop, 256):
        block = np.asarray(array[i : min(i + 256, stop)], dtype=np.float64)
        s += block.sum(axis=(0, 2, 3))
        s2 += np.square(block).sum(axis=(0, 2, 3))
        n += block.shape[0] * block.shape[2] * block.shape[3]
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def _open_data(job: Job) -> tuple[Any, Any]:
    """The job's datasets, checked against its preset (raises :class:`ConfigError`); for a
    gridded source, the :class:`_Gridded` view instead of its training set as the first."""
    preset = get_preset(job.preset, job.overrides)
    if isinstance(job, AutoencoderJob):
        cfg = preset.autoencoder
        expected = (cfg.in_channels, *cfg.grid)
        given = len(job.data.source.static) if job.data.source is not None else 0
        if given != cfg.static_channels:
            raise ConfigError(
                f"data.source.static names {given} static fields, preset {job.preset!r} "
                f"takes autoencoder.static_channels={cfg.static_channels}"
            )
        if job.data.source is not None:
            gridded = _Gridded(job, expected)
            return gridded, gridded.val
        variable = job.data.variable or "state"
        train, val = _datasets(job, job.window, variable)
        if tuple(train.shape[1:]) != expected:
            raise ConfigError(
                f"{job.data.path}/{variable} holds states {tuple(train.shape[1:])}, preset "
                f"{job.preset!r} expects (channels, lat, lon) = {expected}"
            )
        if "latitudes" not in train.attrs:
            raise ConfigError(f"{job.data.path} has no 'latitudes' attribute (area weights)")
    else:
        if job.data.source is not None:
            raise ConfigError(
                "data.source: diffusion trains on a latent store; encode the gridded store "
                "with `appa encode` and give its path as data.path"
            )
        variable = job.data.variable or "latent"
        train, val = _datasets(job, preset.denoiser.window, variable)
        if train.shape[1] != preset.denoiser.channels:
            raise ConfigError(
                f"{job.data.path}/{variable} has {train.shape[1]} channels, preset "
                f"{job.preset!r} expects denoiser.channels={preset.denoiser.channels}"
            )
    return train, val


def prepare_job(job: Job) -> Job:
    """Checks ``job`` against its data on the launching process and resolves what every worker
    would otherwise recompute (latent statistics; the statistics of a gridded source, written
    beside it, with local paths made absolute); returns the job to send to workers."""
    import os

    src = job.data.source
    if src is not None:
        update: dict[str, Any] = {"statistics": os.path.abspath(src.statistics_path())}
        if _is_local(src.store):
            update["store"] = os.path.abspath(src.store)
        data = job.data.model_copy(update={"source": src.model_copy(update=update)})
        job = job.model_copy(update={"data": data})
    train, _ = _open_data(job)
    if isinstance(job, DiffusionJob):
        mean, std = _latent_stats(job, train)
        if mean is not None:
            job = job.model_copy(update={"latent_mean": mean, "latent_std": std})
    return job


def build_trainer(job: Job, callbacks: Iterable[Callback] = (), device=None) -> Trainer:
    """The :class:`Trainer` of ``job`` on this process (any rank of a process group).

    Seeds torch with the job's seed before building the network, so every rank starts from the
    same weights."""
    preset = get_preset(job.preset, job.overrides)
    train, val = _open_data(job)
    torch.manual_seed(job.loop.seed)
    if isinstance(train, _Gridded):
        from appa.nn import level_weights

        spec = train.source.spec
        weights = job.channel_weights or level_weights([p for _, p in spec.channels]).tolist()
        task = AutoencoderTask(
            preset.autoencoder,
            train.latitudes,
            channel_weights=weights,
            channel_names=spec.channel_names(),
            state_spec=spec.model_dump(mode="json"),
            statistics=train.stats.to_json(),
            static=train.static,
            spectral_weight=job.spectral_weight,
            spectral_floor=job.spectral_floor,
            tendency_weight=job.tendency_weight,
        )
        store = {"source": train.source.store, "statistics_path": train.source.statistics}
        if train.static is not None:
            store["static"] = train.static_moments
        train = train.train
    elif isinstance(job, AutoencoderJob):
        weights = job.channel_weights or train.attrs.get("channel_weights")
        task = AutoencoderTask(
            preset.autoencoder,
            train.attrs["latitudes"],
            channel_weights=weights,
            channel_names=train.attrs.get("channel_names"),
            key=train.variable,
            state_spec=train.attrs.get("state_spec"),
            statistics=train.attrs.get("statistics"),
            spectral_weight=job.spectral_weight,
            spectral_floor=job.spectral_floor,
            tendency_weight=job.tendency_weight,
        )
        store = {k: train.attrs[k] for k in sorted(train.attrs)}
    else:
        mean, std = _latent_stats(job, train)
        task = DiffusionTask(
            preset.denoiser,
            schedule=job.schedule,
            sigma_min=job.sigma_min,
            sigma_max=job.sigma_max,
            sigma_data=job.sigma_data,
            latent_mean=mean,
            latent_std=std,
            val_sigmas=job.val_sigmas,
            known_probability=job.known_probability,
            train_sigma=job.train_sigma,
            sigma_log_mean=job.sigma_log_mean,
            sigma_log_std=job.sigma_log_std,
            val_samples=job.val_samples,
            val_sampler=job.val_sampler,
            val_steps=job.val_steps,
            key=train.variable,
        )
        store = {k: train.attrs[k] for k in sorted(train.attrs)}
    metadata: dict[str, Any] = {
        "job": job.model_dump(mode="json"),
        "preset": job.preset,
        "store": store,
    }
    return Trainer(
        task,
        train,
        job.loop,
        job.optim,
        run_dir=job.run_dir,
        log_dir=job.log_dir,
        val_data=val,
        metadata=metadata,
        device=device,
        strategy=job.runner.strategy if job.runner.backend == "ray" else "none",
        resume=job.resume,
        callbacks=callbacks,
    )


def parse_job(data: dict[str, Any]) -> Job:
    """A job config from its JSON form (``kind`` picks the model)."""
    kind = data.get("kind")
    if kind == "autoencoder":
        return AutoencoderJob.model_validate(data)
    if kind == "diffusion":
        return DiffusionJob.model_validate(data)
    raise ConfigError(f"unknown job kind {kind!r}; expected autoencoder or diffusion")
