"""``appa train autoencoder`` and ``appa train diffusion``: their configs and run function.

A config names a network preset (with ``key=value`` overrides), its data (a gridded store read
through :class:`appa.data.WindowDataset`, or a window store through
:class:`appa.data.WindowStoreDataset`), the loop and optimiser settings, the run folder (local
or fsspec URL) and where it runs (:class:`~appa.distributed.runner.RayConfig`: in this
process, or on Ray Train workers).
:func:`build_trainer` turns a config into a ready :class:`~appa.training.loop.Trainer` on the
calling process; it is what each Ray worker runs. :func:`run_training` runs a config.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from appa.config import ConfigError, Period, StrictModel
from appa.data.datasets import WindowStoreDataset
from appa.data.sources import StoreConfig
from appa.data.spec import StateSpec
from appa.data.stats import channel_moments
from appa.distributed.runner import RayConfig
from appa.io.cards import RunRecord
from appa.nn.presets import get_preset
from appa.training.config import LoopConfig, OptimizerConfig
from appa.training.loop import Callback, Trainer
from appa.training.objectives import (
    AutoencoderLossConfig,
    AutoencoderObjective,
    DiffusionObjective,
    DiffusionObjectiveConfig,
)

__all__ = [
    "GriddedSourceConfig",
    "TrainAutoencoderConfig",
    "TrainDiffusionConfig",
    "TrainingDataConfig",
    "build_trainer",
    "ensure_statistics",
    "parse_job",
    "prepare_job",
    "run_training",
]


class GriddedSourceConfig(StoreConfig):
    """A gridded store (:class:`appa.data.StoreConfig`: path, URL or ERA5 preset and its
    ``storage_options``) in the canonical ERA5 layout, read through
    :class:`appa.data.WindowDataset` (standardised on the fly, masked variables NaN-filled with
    a validity mask), and what training takes from it.

    Attributes:
        spec: The state spec (variables, levels, masked variables; channel order).
        statistics: JSON statistics (:class:`appa.data.Statistics`); None: ``<store>.stats.json``
            beside a local store. Missing files are computed over ``stats_period`` and written
            there before training.
        stats_period: Dates (inclusive) the statistics are computed over; default ``train``.
        train, val: Dates (inclusive) of the training and validation windows.
        static: Static fields of the store given to the autoencoder as context (e.g.
            ``[land_sea_mask, geopotential_at_surface]``; the preset's
            ``autoencoder.static_channels`` must match).
        std_floor: Each channel's standard deviation is at least this fraction of the largest
            of its variable over the spec's levels (:func:`appa.data.compute_statistics`; for
            a sea's nearly constant deep water); 0: none.
    """

    store: str = Field(description="preset name, path or URL")
    spec: StateSpec
    static: list[str] = Field(default_factory=list)
    statistics: str | None = None
    stats_period: Period | None = None
    std_floor: float = Field(0.0, ge=0, lt=1)
    train: Period
    val: Period | None = None

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


class TrainingDataConfig(StrictModel):
    """Either a window store (``path``, with the dates of ``train`` and ``val``, inclusive; None
    trains on every time) or a gridded ``source`` (:class:`GriddedSourceConfig`, which holds
    its own periods)."""

    path: str | None = None
    source: GriddedSourceConfig | None = None
    variable: str | None = None  # default: "state" (autoencoder) or "latent" (diffusion)
    train: Period | None = None
    val: Period | None = None
    stride: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> TrainingDataConfig:
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


class _TrainConfig(StrictModel):
    preset: str = "tiny"
    overrides: list[str] = Field(default_factory=list)
    data: TrainingDataConfig
    loop: LoopConfig = Field(default_factory=LoopConfig)
    optim: OptimizerConfig = Field(default_factory=OptimizerConfig)
    run_dir: str = "runs/train"
    log_dir: str | None = None
    resume: bool = True
    runner: RayConfig = Field(default_factory=RayConfig)


class TrainAutoencoderConfig(_TrainConfig, AutoencoderLossConfig):
    """Autoencoder training: the job's settings and the loss's
    (:class:`~appa.training.objectives.AutoencoderLossConfig`). ``window`` states per item
    (flattened into the batch); ``channel_weights`` default to the gridded spec's
    :func:`appa.nn.level_weights`, or a window store's ``channel_weights`` attribute, else
    equal."""

    kind: Literal["autoencoder"] = "autoencoder"
    window: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _tendency_needs_pairs(self) -> TrainAutoencoderConfig:
        if self.tendency_weight > 0 and self.window < 2:
            raise ValueError(
                f"tendency_weight={self.tendency_weight} compares consecutive states: set "
                f"window >= 2 (got window={self.window})"
            )
        return self


class TrainDiffusionConfig(_TrainConfig, DiffusionObjectiveConfig):
    """Latent diffusion training on windows of the preset's ``denoiser.window`` latents: the
    job's settings and the objective's
    (:class:`~appa.training.objectives.DiffusionObjectiveConfig`: schedule, training noise,
    validation).

    ``latent_stats="store"`` standardises latents with the store's ``latent_mean`` /
    ``latent_std`` attributes, ``"compute"`` with per-channel statistics of the training span,
    ``"none"`` leaves them as they are."""

    kind: Literal["diffusion"] = "diffusion"
    latent_stats: Literal["store", "compute", "none"] = "compute"
    latent_mean: list[float] | None = None  # when both are given, used as they are
    latent_std: list[float] | None = None


TrainConfig = TrainAutoencoderConfig | TrainDiffusionConfig


def _datasets(
    job: TrainConfig, window: int, variable: str
) -> tuple[WindowStoreDataset, WindowStoreDataset | None]:
    d = job.data
    train = WindowStoreDataset(d.path, window, variable, d.train, d.stride)
    val = (
        WindowStoreDataset(d.path, window, variable, d.val, d.stride) if d.val is not None else None
    )
    return train, val


def _is_local(store: str) -> bool:
    from appa.data.sources import ERA5_PRESETS

    return "://" not in store and store.removeprefix("preset:") not in ERA5_PRESETS


def ensure_statistics(source: GriddedSourceConfig):
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
        floor = float(stats.extra.get("std_floor", 0.0))
        if floor != source.std_floor:
            raise ConfigError(
                f"{path} holds statistics with std_floor {floor}, the config asks for "
                f"{source.std_floor} (data.source.std_floor); delete the file or point "
                "data.source.statistics elsewhere"
            )
    else:
        try:
            ds = open_era5(
                source.store, spec=source.spec, storage_options=source.storage_options or None
            )
            stats = compute_statistics(
                ds, source.spec, period, source=source.store, std_floor=source.std_floor
            )
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

    def __init__(self, job: TrainAutoencoderConfig, expected: tuple[int, int, int]) -> None:
        from appa.data.datasets import WindowDataset
        from appa.data.sources import SelectionError, open_era5

        src = job.data.source
        assert src is not None
        self.source = src
        options = src.storage_options or None
        try:
            ds = open_era5(src.store, spec=src.spec, storage_options=options, chunks=None)
            self.latitudes = [float(v) for v in ds["latitude"].values]
            self.longitudes = [float(v) for v in ds["longitude"].values]
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


def _latent_stats(
    job: TrainDiffusionConfig, data: WindowStoreDataset
) -> tuple[list | None, list | None]:
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
    mean, std = channel_moments(array, *data.span, block=256)
    return mean.tolist(), std.tolist()


def _open_data(job: TrainConfig) -> tuple[Any, Any]:
    """The job's datasets, checked against its preset (raises :class:`ConfigError`); for a
    gridded source, the :class:`_Gridded` view instead of its training set as the first."""
    preset = get_preset(job.preset, job.overrides)
    if isinstance(job, TrainAutoencoderConfig):
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


def prepare_job(job: TrainConfig) -> TrainConfig:
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
    if isinstance(job, TrainDiffusionConfig):
        mean, std = _latent_stats(job, train)
        if mean is not None:
            job = job.model_copy(update={"latent_mean": mean, "latent_std": std})
    return job


def _loss(job: TrainAutoencoderConfig, weights: list[float] | None) -> AutoencoderLossConfig:
    """The job's loss settings with the channel weights resolved."""
    fields = set(AutoencoderLossConfig.model_fields)
    loss = AutoencoderLossConfig.model_validate(job.model_dump(include=fields))
    return loss.model_copy(update={"channel_weights": weights})


def build_trainer(job: TrainConfig, callbacks: Iterable[Callback] = (), device=None) -> Trainer:
    """The :class:`Trainer` of ``job`` on this process (any rank of a process group).

    Seeds torch with the job's seed before building the network, so every rank starts from the
    same weights."""
    preset = get_preset(job.preset, job.overrides)
    train, val = _open_data(job)
    torch.manual_seed(job.loop.seed)
    if isinstance(train, _Gridded):
        from appa.nn import level_weights

        spec = train.source.spec
        levels = [p for _, p in spec.channels]
        weights = job.channel_weights or level_weights(levels, vertical=spec.vertical).tolist()
        task = AutoencoderObjective(
            preset.autoencoder,
            train.latitudes,
            loss=_loss(job, weights),
            channel_names=spec.channel_names(),
            state_spec=spec.model_dump(mode="json"),
            statistics=train.stats.to_json(),
            static=train.static,
            longitudes=train.longitudes,
            valid=train.train.valid_cells(),
        )
        store = {"source": train.source.store, "statistics_path": train.source.statistics}
        if train.static is not None:
            store["static"] = train.static_moments
        train = train.train
    elif isinstance(job, TrainAutoencoderConfig):
        weights = job.channel_weights or train.attrs.get("channel_weights")
        task = AutoencoderObjective(
            preset.autoencoder,
            train.attrs["latitudes"],
            loss=_loss(job, weights),
            channel_names=train.attrs.get("channel_names"),
            key=train.variable,
            state_spec=train.attrs.get("state_spec"),
            statistics=train.attrs.get("statistics"),
        )
        store = {k: train.attrs[k] for k in sorted(train.attrs)}
    else:
        mean, std = _latent_stats(job, train)
        settings = DiffusionObjectiveConfig.model_validate(
            job.model_dump(include=set(DiffusionObjectiveConfig.model_fields))
        )
        task = DiffusionObjective(
            preset.denoiser, settings, latent_mean=mean, latent_std=std, key=train.variable
        )
        store = {k: train.attrs[k] for k in sorted(train.attrs)}
    run = RunRecord(job=job.model_dump(mode="json"), data=store)
    return Trainer(
        task,
        train,
        job.loop,
        job.optim,
        run_dir=job.run_dir,
        log_dir=job.log_dir,
        val_data=val,
        run=run,
        device=device,
        strategy=job.runner.strategy if job.runner.backend == "ray" else "none",
        resume=job.resume,
        callbacks=callbacks,
    )


def parse_job(data: dict[str, Any]) -> TrainConfig:
    """A job config from its JSON form (``kind`` picks the model)."""
    kind = data.get("kind")
    if kind == "autoencoder":
        return TrainAutoencoderConfig.model_validate(data)
    if kind == "diffusion":
        return TrainDiffusionConfig.model_validate(data)
    raise ConfigError(f"unknown job kind {kind!r}; expected autoencoder or diffusion")


def _absolute(job: TrainConfig) -> TrainConfig:
    """Local paths made absolute: Ray workers need not share the driver's working folder."""
    import os

    def fix(path: str | None) -> str | None:
        if path is None or "://" in path:
            return path
        return os.path.abspath(path)

    data = job.data.model_copy(update={"path": fix(job.data.path)})
    return job.model_copy(
        update={"data": data, "run_dir": fix(job.run_dir), "log_dir": fix(job.log_dir)}
    )


def _build_from_json(job: dict[str, Any], callbacks: Iterable[Callback] = (), device=None):
    """:func:`build_trainer` of a config in its JSON form (what Ray workers receive)."""
    return build_trainer(parse_job(job), callbacks=callbacks, device=device)


def run_training(job: TrainConfig) -> dict[str, float]:
    """Runs ``job`` where its runner says: in this process (``backend: local``) or on Ray Train
    workers; returns the last metrics (those of the newest checkpoint on Ray)."""
    import functools
    import os

    if job.runner.backend == "local":
        if job.runner.torch_threads:
            torch.set_num_threads(job.runner.torch_threads)
        return build_trainer(job).fit()
    from appa.distributed.train import fit_on_ray
    from appa.io.cards import read_card
    from appa.io.checkpoints import latest_checkpoint, read_metadata

    job = prepare_job(_absolute(job))  # fail fast on the driver, before starting workers
    storage = job.run_dir if "://" in job.run_dir else os.path.join(job.run_dir, "ray")
    build = functools.partial(_build_from_json, job.model_dump(mode="json"))
    fit_on_ray(build, job.runner, job.kind, storage)
    # the loop stores its last metrics in each checkpoint (Ray keeps metrics with its own
    # checkpoints only)
    latest = latest_checkpoint(f"{job.run_dir}/checkpoints")
    return {} if latest is None else dict(read_card(read_metadata(latest), latest).run.metrics)
