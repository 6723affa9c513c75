"""The pixel-space diffusion prior of galaxy images: an image U-Net (``appa.nn.unet``) inside an
EDM denoiser (``appa.diffusion``), its training loop, checkpoints and samples.

The prior lives in standardised units ``z = x / scale`` (``scale``: the training pixels' standard
deviation). The map is linear, so ``A(scale z)`` stays a linear observation. Checkpoints are the
project's format (safetensors plus a JSON manifest, :mod:`appa.io.checkpoints`); their metadata
is a :class:`GalaxyPriorCard`: the network's shape, ``scale``, the noise range, the stamp's pixel
size and the training record, named, typed and checked in one place.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError, model_validator
from torch import Tensor

from appa.config import StrictModel, differing_keys
from appa.diffusion import (
    EDMDenoiser,
    ScheduleConfig,
    denoising_loss,
    make_sampler,
    sample_lognormal_sigma,
)
from appa.files import written_whole
from appa.io.cards import CardError, card_error
from appa.io.checkpoints import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_module_state,
    save_checkpoint,
)
from appa.nn.unet import ImageUNet, UNetConfig

__all__ = [
    "SIGMA_MAX",
    "SIGMA_MIN",
    "GalaxyPrior",
    "GalaxyPriorCard",
    "PriorExport",
    "ResumeRecord",
    "TrainResult",
    "TrainSettings",
    "build_denoiser",
    "export_prior",
    "read_prior_card",
    "train_prior",
]

KIND = "lensing-galaxy-prior"
# The noise range (units of z) a prior is trained on unless told otherwise; posterior sampling
# and the job configs default to it too, so that sampling stays within the trained range.
SIGMA_MIN = 1e-2
SIGMA_MAX = 1e2
# the card's entries that build the network and give its weights their meaning: digested into
# the manifest when saved, so an edit of one after the weights were written is refused on load
NETWORK_KEYS = ("kind", "unet", "scale", "size", "pixel", "sigma_min", "sigma_max")


def build_denoiser(unet: UNetConfig | dict, autocast_dtype: torch.dtype | None = None):
    """``EDMDenoiser(ImageUNet(unet), sigma_data=1)``: the prior's denoiser of ``z``."""
    return EDMDenoiser(ImageUNet(unet), sigma_data=1.0, autocast_dtype=autocast_dtype)


@dataclass
class TrainResult:
    """What training did: losses by step, seconds (wall and process CPU) and the threads."""

    train_loss: list[tuple[int, float]]
    validation_loss: list[tuple[int, float]]
    wall_seconds: float
    cpu_seconds: float
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ResumeRecord(StrictModel):
    """What a training checkpoint needs beside its tensors to be resumed."""

    fingerprint: dict[str, Any] = Field(description="settings it must be resumed with")
    running: float = Field(description="sum of the training losses since the last record")
    count: int = Field(ge=0, description="steps in that sum")


class PriorExport(StrictModel):
    """The training checkpoint an exported prior was copied from."""

    path: str
    step: int = Field(ge=0)
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class GalaxyPriorCard(StrictModel):
    """The metadata of a prior checkpoint.

    The network entries (``kind`` to ``sigma_max``, :data:`NETWORK_KEYS`) are required and
    digested into the manifest; the others are absent (None) where they do not apply: ``resume``
    only in a training checkpoint, the export entries only in an exported copy.
    """

    kind: Literal["lensing-galaxy-prior"] = Field(description="what the checkpoint holds")
    unet: UNetConfig = Field(description="the U-Net's shape")
    scale: float = Field(gt=0, strict=True, description="x = scale z (surface brightness)")
    size: int = Field(ge=1, strict=True, description="stamp width (pixels)")
    pixel: float = Field(gt=0, strict=True, description="source-plane pixel size (arcsec)")
    sigma_min: float = Field(gt=0, strict=True, description="lowest trained noise (units of z)")
    sigma_max: float = Field(gt=0, strict=True, description="highest trained noise (units of z)")
    config: dict[str, Any] | None = Field(None, description="the job config it was trained by")
    data: dict[str, Any] | None = Field(None, description="the training stamps and their attrs")
    training: TrainResult | None = Field(None, description="losses and seconds so far")
    resume: ResumeRecord | None = None
    weights: Literal["EMA"] | None = Field(None, description="the weights an export kept")
    dtype: Literal["float16", "bfloat16", "float32"] | None = Field(
        None, description="the exported weights' dtype"
    )
    schedule_steps: int | None = Field(None, ge=1, description="the run's planned steps")
    complete: bool | None = Field(None, description="whether the run reached them")
    state: str | None = Field(None, description="a sentence saying what the weights are")
    exported_from: PriorExport | None = None

    @model_validator(mode="after")
    def _noise_range(self) -> GalaxyPriorCard:
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min {self.sigma_min} must be below sigma_max {self.sigma_max}")
        return self


def read_prior_card(metadata: dict[str, Any], source: str = "checkpoint") -> GalaxyPriorCard:
    """Parses a prior checkpoint's metadata; ``source`` names it in errors.

    Raises:
        CardError: another kind of checkpoint, a missing entry, one of the wrong type or an
            unknown one, each named.
    """
    kind = metadata.get("kind")
    if kind != KIND:
        raise CardError(f"{source}: not a lensing galaxy prior (kind {kind!r})")
    try:
        return GalaxyPriorCard.model_validate(metadata)
    except ValidationError as error:
        raise card_error(source, error) from None


@dataclass
class GalaxyPrior:
    """A trained galaxy prior: the denoiser of ``z = x / scale`` and its card.

    Attributes:
        denoiser: ``D(z_t, sigma) -> E[z | z_t]``, event ``(1, size, size)``.
        card: What it is (:class:`GalaxyPriorCard`): ``scale`` (``x = scale z``), ``size``
            (stamp width in pixels), ``pixel`` (source-plane pixel size, arcsec), the noise
            range it was trained on (units of ``z``) and the training record.
        step, path: The checkpoint it was loaded from (None: not loaded).
    """

    denoiser: EDMDenoiser
    card: GalaxyPriorCard
    step: int | None = None
    path: str | None = None

    @property
    def scale(self) -> float:
        """Surface brightness per unit of ``z``."""
        return self.card.scale

    @property
    def size(self) -> int:
        """Stamp width (pixels)."""
        return self.card.size

    @property
    def pixel(self) -> float:
        """Source-plane pixel size (arcsec)."""
        return self.card.pixel

    @property
    def sigma_min(self) -> float:
        """Lowest trained noise level (units of ``z``)."""
        return self.card.sigma_min

    @property
    def sigma_max(self) -> float:
        """Highest trained noise level (units of ``z``)."""
        return self.card.sigma_max

    @property
    def event_shape(self) -> tuple[int, int, int]:
        return (1, self.size, self.size)

    def save(
        self,
        root: str | Path,
        step: int,
        dtype: torch.dtype = torch.float32,
        groups: dict[str, dict[str, Tensor]] | None = None,
        states: dict[str, Any] | None = None,
        resume: ResumeRecord | None = None,
        keep: int | None = 1,
    ) -> str:
        """Writes the weights (in ``dtype``: float16 halves a committed prior) and the card
        under ``root/step-<step>/`` (with other tensor ``groups``, nested ``states`` and their
        ``resume`` record, e.g. a training state; the newest ``keep`` checkpoints kept);
        returns the path. The card's own ``resume`` is not written: it describes tensors of the
        checkpoint it was read from."""
        if self.card.unet != self.denoiser.backbone.config:
            raise ValueError(
                f"the card's U-Net {self.card.unet} is not the denoiser's "
                f"{self.denoiser.backbone.config}"
            )
        metadata = self.card.model_copy(update={"resume": resume}).model_dump(mode="json")
        state = {k: v.to(dtype) for k, v in self.denoiser.backbone.state_dict().items()}
        tensors = {"model": state, **(groups or {})}
        return save_checkpoint(
            str(root), step, tensors, metadata=metadata, states=states or {}, keep=keep,
            network=NETWORK_KEYS,
        )  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> GalaxyPrior:
        """Loads a prior checkpoint (a ``step-*`` folder or the folder holding it); weights come
        back in float32 whatever they were stored in.

        Raises:
            CardError: its card is not a prior's, or misses, mistypes or adds an entry.
            CheckpointError: its files are missing or corrupt, or it has no ``model`` weights.
        """
        ckpt = load_checkpoint(str(path))
        card = read_prior_card(ckpt.metadata, f"{ckpt.path}/checkpoint.json")
        if "model" not in ckpt.tensors:
            raise CheckpointError(f"{ckpt.path}: no 'model' weights")
        denoiser = build_denoiser(card.unet)
        state = {k: v.float() for k, v in ckpt.tensors["model"].items()}
        load_module_state(denoiser.backbone, state, f"{ckpt.path}/model.safetensors")
        denoiser.eval().requires_grad_(False)
        return cls(denoiser=denoiser, card=card, step=ckpt.step, path=ckpt.path)

    @torch.no_grad()
    def sample(
        self, n: int, steps: int = 64, seed: int = 0, batch: int = 16, sampler: str = "heun"
    ) -> Tensor:
        """``n`` prior draws ``(n, size, size)`` in surface-brightness units."""
        schedule = ScheduleConfig(sigma_min=self.sigma_min, sigma_max=self.sigma_max).build()
        out = []
        for k, start in enumerate(range(0, n, batch)):
            count = min(batch, n - start)
            s = make_sampler(sampler, self.denoiser, schedule, steps)
            z = s.sample(count, self.event_shape, seed=seed + k)
            out.append(self.scale * z[:, 0])
        return torch.cat(out)


@dataclass
class TrainSettings:
    """Training of the prior.

    Arguments:
        steps: Optimiser steps.
        batch: Images per step.
        lr: Peak learning rate (Adam), reached after ``warmup`` steps, then cosine decay to
            ``lr * final_lr``.
        ema: Decay of the weights' exponential moving average (the saved weights).
        sigma_log_mean, sigma_log_std: Training noise levels are log-normal (EDM) with these
            parameters, clipped to ``[sigma_min, sigma_max]`` (units of ``z``).
        precision: ``"bf16"`` (the network under bfloat16 autocast: about 1.6 times faster on
            CPUs with AVX512-BF16) or ``"fp32"``.
        validate_every: Steps between validation losses (fixed noise, fixed images).
        seed: Seed of the initial weights, batches and noise.
        threads: Torch intra-op threads.
    """

    steps: int = 4000
    batch: int = 32
    lr: float = 2e-4
    warmup: int = 200
    final_lr: float = 0.05
    ema: float = 0.999
    sigma_log_mean: float = -0.7
    sigma_log_std: float = 1.5
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    grad_clip: float = 1.0
    precision: str = "bf16"
    validate_every: int = 500
    seed: int = 0
    threads: int = 2


def _validation_loss(
    denoiser, images: Tensor, seed: int, sigma_range: tuple[float, float]
) -> float:
    g = torch.Generator().manual_seed(seed)
    # a fixed grid of noise levels over the training range, the same at every validation
    low, high = (math.log10(s) for s in sigma_range)
    sigma = torch.logspace(low, high, images.shape[0], dtype=torch.float64).float()
    noise = torch.randn(images.shape, generator=g)
    with torch.no_grad():
        return float(denoising_loss(denoiser, images, sigma, noise=noise).mean())


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def train_prior(
    train: Tensor,
    validation: Tensor,
    unet: UNetConfig | dict,
    settings: TrainSettings,
    pixel: float,
    log: Callable[[str], None] = print,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1000,
    config: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    fingerprint: dict[str, Any] | None = None,
    resume: bool = True,
    keep: int = 2,
    callback: Callable[[int, TrainResult], None] | None = None,
) -> tuple[GalaxyPrior, TrainResult]:
    """Trains a galaxy prior on stamps ``(n, size, size)`` (surface brightness), resuming from
    the newest checkpoint under ``checkpoint_dir`` when there is one.

    Batches are random stamps in random rotations and reflections. ``scale`` is the training
    pixels' standard deviation.

    Checkpoints (every ``checkpoint_every`` steps and at the end, the newest ``keep`` kept) are
    the project's format (:func:`appa.io.checkpoints.save_checkpoint`, written atomically): a
    loadable :class:`GalaxyPrior` (``model``: the EMA weights, and its card) plus the whole
    training state: ``raw`` (the optimised weights), the optimiser's state, the batch generator's
    and torch's RNG states, the step, the running loss and the record so far. A run stopped or
    killed at any point and started again continues from its newest checkpoint and ends with
    the weights and record of an uninterrupted run. ``history.json`` beside the checkpoints
    holds the record.

    Arguments:
        checkpoint_dir: Folder of the checkpoints (None: none written, nothing resumed).
        config, data: The card's ``config`` (the job's, JSON) and ``data`` (what the stamps
            say of themselves).
        fingerprint: JSON facts a checkpoint must match to be resumed from, besides the
            settings (but ``threads``), the network, the pixel size and the data's shape and
            scale; a mismatch raises :class:`CheckpointError` naming the differing keys.
        resume: Continue from the newest checkpoint (else start over; older checkpoints are
            replaced as new ones are written).
        callback: ``callback(step, result)`` after every step.

    Returns:
        The prior with the EMA weights and the record.
    """
    if train.ndim != 3 or train.shape[1] != train.shape[2]:
        raise ValueError(f"training stamps must be (n, size, size), got {tuple(train.shape)}")
    if settings.precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {settings.precision!r}")
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    size = train.shape[-1]
    scale = float(train.double().std())
    z_train = (train / scale)[:, None].float()
    z_val = (validation / scale)[:, None].float()
    autocast = torch.bfloat16 if settings.precision == "bf16" else None
    denoiser = build_denoiser(unet, autocast)
    ema = copy.deepcopy(denoiser).requires_grad_(False)
    ema.autocast_dtype = None
    optimiser = torch.optim.Adam(denoiser.parameters(), lr=settings.lr)
    unet_dict = denoiser.backbone.config.to_dict()
    # checked before the first step: a card that cannot be written fails now, not at a checkpoint
    card = GalaxyPriorCard(
        kind=KIND,
        unet=denoiser.backbone.config,
        scale=scale,
        size=size,
        pixel=pixel,
        sigma_min=settings.sigma_min,
        sigma_max=settings.sigma_max,
        config=config,
        data=data,
    )
    facts = _json(
        {
            "settings": {k: v for k, v in asdict(settings).items() if k != "threads"},
            "unet": unet_dict,
            "pixel": pixel,
            "data": {"shape": list(train.shape), "scale": scale},
            "config": fingerprint or {},
        }
    )

    def lr_at(step: int) -> float:
        if step < settings.warmup:
            return settings.lr * (step + 1) / settings.warmup
        progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
        floor = settings.final_lr
        return settings.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    g = torch.Generator().manual_seed(settings.seed + 1)
    result = TrainResult([], [], 0.0, 0.0, settings.threads)
    running, count, done = 0.0, 0, 0

    def prior_of(module) -> GalaxyPrior:
        return GalaxyPrior(module, card.model_copy(update={"training": copy.deepcopy(result)}))

    latest = latest_checkpoint(str(checkpoint_dir)) if checkpoint_dir and resume else None
    if latest is not None:
        ckpt = load_checkpoint(latest)
        found = read_prior_card(ckpt.metadata, f"{ckpt.path}/checkpoint.json")
        state, record = found.resume, found.training
        if state is None or record is None or "raw" not in ckpt.tensors:
            raise CheckpointError(
                f"{ckpt.path}: holds no training state (raw weights, optimiser, generator), "
                "only a prior's weights; it cannot be resumed. Export it (appa lensing export) "
                "or move it aside to train from scratch"
            )
        differ = differing_keys(state.fingerprint, facts)
        if differ:
            raise CheckpointError(
                f"{ckpt.path}: written for other settings; they differ in {differ} (restore "
                "them, or train into another out folder)"
            )
        load_module_state(denoiser.backbone, ckpt.tensors["raw"], f"{ckpt.path}/raw.safetensors")
        load_module_state(ema.backbone, ckpt.tensors["model"], f"{ckpt.path}/model.safetensors")
        try:
            optimiser.load_state_dict(ckpt.states["optimizer"])
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"{ckpt.path}/state-optimizer.safetensors: {error}") from None
        g.set_state(ckpt.states["rng"]["generator"])
        torch.set_rng_state(ckpt.states["rng"]["torch"])
        done, running, count = ckpt.step, state.running, state.count
        result = TrainResult(
            list(record.train_loss),
            list(record.validation_loss),
            record.wall_seconds,
            record.cpu_seconds,
            settings.threads,
        )
        log(f"resumed from {ckpt.path} (step {done}/{settings.steps})")
    wall0 = time.perf_counter() - result.wall_seconds
    cpu0 = time.process_time() - result.cpu_seconds

    def save(step: int) -> None:
        result.wall_seconds = time.perf_counter() - wall0
        result.cpu_seconds = time.process_time() - cpu0
        prior_of(ema).save(
            checkpoint_dir,
            step,
            resume=ResumeRecord(fingerprint=facts, running=running, count=count),
            groups={"raw": denoiser.backbone.state_dict()},
            states={
                "optimizer": optimiser.state_dict(),
                "rng": {"generator": g.get_state(), "torch": torch.get_rng_state()},
            },
            keep=keep,
        )
        history = Path(checkpoint_dir) / "history.json"
        with written_whole(history) as tmp:
            tmp.write_text(json.dumps(result.to_dict(), indent=2))

    for step in range(done + 1, settings.steps + 1):
        index = torch.randint(0, z_train.shape[0], (settings.batch,), generator=g)
        batch = z_train[index]
        # one of the 8 rotations/reflections per image
        k = int(torch.randint(0, 4, (), generator=g))
        batch = torch.rot90(batch, k, dims=(-2, -1))
        flip = torch.rand(settings.batch, generator=g) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        sigma = sample_lognormal_sigma(
            settings.batch,
            settings.sigma_log_mean,
            settings.sigma_log_std,
            settings.sigma_min,
            settings.sigma_max,
            generator=g,
        )
        noise = torch.randn(batch.shape, generator=g)
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step - 1)
        loss = denoising_loss(denoiser, batch, sigma, noise=noise).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), settings.grad_clip)
        optimiser.step()
        with torch.no_grad():
            decay = min(settings.ema, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), denoiser.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        running += float(loss.detach())
        count += 1
        if step % 50 == 0 or step == settings.steps or step % settings.validate_every == 0:
            result.train_loss.append((step, running / count))
            running, count = 0.0, 0
        if step % settings.validate_every == 0 or step == settings.steps:
            bounds = (settings.sigma_min, settings.sigma_max)
            val = _validation_loss(ema, z_val, settings.seed + 2, bounds)
            result.validation_loss.append((step, val))
            result.wall_seconds = time.perf_counter() - wall0
            result.cpu_seconds = time.process_time() - cpu0
            log(
                f"step {step}/{settings.steps}: train {result.train_loss[-1][1]:.4f}, "
                f"validation (EMA) {val:.4f}, {result.wall_seconds:.0f} s wall, "
                f"{result.cpu_seconds:.0f} s CPU"
            )
        if checkpoint_dir is not None and (step % checkpoint_every == 0 or step == settings.steps):
            save(step)
        if callback is not None:
            callback(step, result)
    if done < settings.steps:
        result.wall_seconds = time.perf_counter() - wall0
        result.cpu_seconds = time.process_time() - cpu0
    else:
        log(f"already trained: {settings.steps} steps")
    ema.eval()
    return prior_of(ema), result


def export_prior(source: str | Path, destination: str | Path, dtype=torch.float16) -> str:
    """Copies a prior checkpoint's EMA weights (the ones it samples with) in ``dtype`` to
    ``destination/step-<N>/`` for distribution, without the training state; returns the path.

    The card keeps the source's (network, units, config, data, training record) and adds
    ``weights`` ("EMA"), ``dtype``, ``schedule_steps`` (the training run's planned steps),
    ``complete`` (whether the run reached them), a sentence saying so (``state``) and
    ``exported_from`` (path, step and SHA-256 of the source's manifest).
    """
    import hashlib

    from appa.io.checkpoints import MANIFEST, list_checkpoints

    prior = GalaxyPrior.load(source)
    step = int(prior.step)
    planned = (prior.card.config or {}).get("train", {}).get("steps")
    complete = planned is None or step >= int(planned)
    state = f"EMA weights at step {step}"
    if planned is not None:
        state += (
            f" of a {planned}-step schedule"
            if complete
            else f" of a {planned}-step schedule (the run stopped there)"
        )
    origin = Path(prior.path)
    manifest = origin / MANIFEST
    if origin.is_absolute() and origin.is_relative_to(Path.cwd()):
        origin = origin.relative_to(Path.cwd())
    try:
        prior.card = GalaxyPriorCard.model_validate(
            {
                **prior.card.model_dump(),
                "weights": "EMA",
                "dtype": str(dtype).removeprefix("torch."),
                "schedule_steps": planned,
                "complete": complete,
                "state": state,
                "exported_from": {
                    "path": str(origin),
                    "step": step,
                    "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
                },
            }
        )
    except ValidationError as error:
        raise card_error(f"{prior.path}: exported card", error) from None
    path = prior.save(destination, step, dtype=dtype)
    for other_step, other in list_checkpoints(str(destination)):
        if other_step != step:
            shutil.rmtree(other)
    return path
