"""What is trained: the loss and validation metrics of the autoencoder and the latent denoiser.

A task owns its network and knows the batch layout; the loop (:mod:`appa.training.loop`) owns
optimisation, data order, precision, checkpoints and logs. Batches are dicts of tensors as the
window datasets yield them (collated): states ``(B, K, C, H, W)`` (or ``(B, C, H, W)``), latents
``(B, K, c, h, w)``, date features ``(B, K, F)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from appa.diffusion import EDMDenoiser, denoising_loss, make_schedule, sample_training_sigma
from appa.nn import LatentDiT, StateAutoencoder, WeightedMSE
from appa.nn.presets import AutoencoderConfig, DenoiserConfig

__all__ = ["AutoencoderTask", "DiffusionTask", "Task"]


class Task(Protocol):
    """The loop's view of a task."""

    kind: str
    module: nn.Module  # what the loop calls (and wraps for DDP/FSDP)
    network: nn.Module  # whose weights are saved (the module or a part of it)

    def loss(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator
    ) -> Tensor:
        """Per-sample training loss ``(B,)`` of ``model`` (the possibly wrapped module)."""
        ...

    def validate_batch(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """``name -> (sum, count)`` of validation quantities; the loop reduces over batches and
        workers and passes the means to :meth:`finalize`."""
        ...

    def finalize(self, means: dict[str, float]) -> dict[str, float]:
        """Validation metrics from the reduced means."""
        ...

    def metadata(self) -> dict[str, Any]:
        """JSON-able facts a checkpoint must carry to be used (configs, statistics)."""
        ...


def _get(batch: dict[str, Tensor], key: str) -> Tensor:
    if key not in batch:
        raise KeyError(f"batch has no {key!r}; it has {sorted(batch)}")
    return batch[key]


class AutoencoderTask:
    """Reconstruction of standardised states through the autoencoder, loss
    :class:`~appa.nn.WeightedMSE` (cell area x channel weights).

    Arguments:
        config: The autoencoder config (a preset's ``autoencoder``).
        latitudes: Row latitudes in degrees (``config.grid[0]`` of them).
        channel_weights: ``(C,)`` loss weights, e.g. :func:`appa.nn.level_weights`.
        channel_names: Names for the per-channel validation RMSE columns.
        key: The batch entry holding states.
    """

    kind = "autoencoder"

    def __init__(
        self,
        config: AutoencoderConfig,
        latitudes: Sequence[float],
        channel_weights: Sequence[float] | None = None,
        channel_names: Sequence[str] | None = None,
        key: str = "state",
    ) -> None:
        if len(latitudes) != config.grid[0]:
            raise ValueError(f"{len(latitudes)} latitudes for a grid of {config.grid[0]} rows")
        names = list(channel_names or [f"c{i}" for i in range(config.in_channels)])
        if len(names) != config.in_channels:
            raise ValueError(f"{len(names)} channel names for {config.in_channels} channels")
        self.config = config
        self.module = StateAutoencoder(config)
        self.network = self.module
        self.criterion = WeightedMSE(latitudes, channel_weights)
        self.latitudes = [float(v) for v in latitudes]
        self.channel_weights = (
            None if channel_weights is None else list(map(float, channel_weights))
        )
        self.channel_names = names
        self.key = key

    def _states(self, batch: dict[str, Tensor]) -> Tensor:
        x = _get(batch, self.key)
        C, H, W = self.config.in_channels, *self.config.grid
        if x.ndim not in (4, 5) or tuple(x.shape[-3:]) != (C, H, W):
            raise ValueError(f"{self.key} must be (B, [K,] {C}, {H}, {W}), got {tuple(x.shape)}")
        return x.reshape(-1, C, H, W)

    def loss(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator
    ) -> Tensor:
        x = self._states(batch)
        _, x_hat = model(x)
        return self.criterion.to(x.device)(x_hat, x)

    @torch.no_grad()
    def validate_batch(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator
    ) -> dict[str, tuple[Tensor, Tensor]]:
        x = self._states(batch)
        criterion = self.criterion.to(x.device)
        _, x_hat = model(x)  # the loop validates in eval mode: no latent noise
        x_hat = x_hat.float()
        n = x.new_tensor(float(x.shape[0]))
        out = {"loss": (criterion(x_hat, x).sum(), n)}
        # area-weighted squared error per channel (the area weights have mean 1)
        se = ((x_hat - x.float()).square() * criterion.area[:, None]).mean(dim=(-2, -1))
        for name, column in zip(self.channel_names, se.sum(0), strict=True):
            out[f"mse_{name}"] = (column, n)
        return out

    def finalize(self, means: dict[str, float]) -> dict[str, float]:
        out = {"loss": means["loss"]}
        rmse = {n: math.sqrt(means[f"mse_{n}"]) for n in self.channel_names}
        out["rmse"] = sum(rmse.values()) / len(rmse)
        out.update({f"rmse_{n}": v for n, v in rmse.items()})
        return out

    def metadata(self) -> dict[str, Any]:
        return {
            "autoencoder": self.config.model_dump(mode="json"),
            "latitudes": self.latitudes,
            "channel_weights": self.channel_weights,
            "channel_names": self.channel_names,
        }


class DiffusionTask:
    """Denoising score matching of latent windows with :class:`~appa.diffusion.EDMDenoiser`
    around :class:`~appa.nn.LatentDiT`.

    Latents are standardised by ``latent_mean`` / ``latent_std`` (per latent channel) when
    given. Validation reports the denoising loss at fixed noise levels (``val_sigmas``,
    geometric between the schedule's bounds) with fixed noise, so successive validations
    compare.

    Arguments:
        config: The denoiser config (a preset's ``denoiser``).
        schedule: Noise schedule name for training noise levels.
        sigma_min, sigma_max: Its bounds.
        sigma_data: EDM data standard deviation (1 for standardised latents).
        latent_mean, latent_std: ``(c,)`` latent statistics, or None.
        val_sigmas: Number of validation noise levels.
        key, date_key: Batch entries of latents and date features.
    """

    kind = "diffusion"

    def __init__(
        self,
        config: DenoiserConfig,
        schedule: str = "loglinear",
        sigma_min: float = 1e-3,
        sigma_max: float = 1e3,
        sigma_data: float = 1.0,
        latent_mean: Sequence[float] | None = None,
        latent_std: Sequence[float] | None = None,
        val_sigmas: int = 6,
        key: str = "latent",
        date_key: str = "date",
    ) -> None:
        self.config = config
        self.network = LatentDiT(config)
        self.module = EDMDenoiser(self.network, sigma_data=sigma_data)
        self.schedule_name = schedule
        self.schedule = make_schedule(schedule, sigma_min=sigma_min, sigma_max=sigma_max)
        self.sigma_data = float(sigma_data)
        c = config.channels
        for name, v in (("latent_mean", latent_mean), ("latent_std", latent_std)):
            if v is not None and len(v) != c:
                raise ValueError(f"{name} has {len(v)} entries for {c} latent channels")
        if latent_std is not None and min(latent_std) <= 0:
            raise ValueError("latent_std must be positive")
        self.latent_mean = None if latent_mean is None else [float(v) for v in latent_mean]
        self.latent_std = None if latent_std is None else [float(v) for v in latent_std]
        self.val_sigmas = torch.logspace(
            math.log10(sigma_min), math.log10(sigma_max), val_sigmas + 2, dtype=torch.float64
        )[1:-1].tolist()
        self.key, self.date_key = key, date_key

    def _inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        z = _get(batch, self.key)
        cfg = self.config
        if z.ndim != 5 or z.shape[1] != cfg.window or z.shape[2] != cfg.channels:
            raise ValueError(
                f"{self.key} must be (B, {cfg.window}, {cfg.channels}, h, w), got {tuple(z.shape)}"
            )
        z = z.float()
        if self.latent_mean is not None:
            z = z - z.new_tensor(self.latent_mean)[:, None, None]
        if self.latent_std is not None:
            z = z / z.new_tensor(self.latent_std)[:, None, None]
        cond = {}
        if cfg.date_features:
            cond["date"] = _get(batch, self.date_key).float()
        return z, cond

    def loss(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator
    ) -> Tensor:
        x, cond = self._inputs(batch)
        sigma = sample_training_sigma(self.schedule, x.shape[0], generator, device=x.device)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return denoising_loss(model, x, sigma, noise=noise, sigma_data=self.sigma_data, **cond)

    @torch.no_grad()
    def validate_batch(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator
    ) -> dict[str, tuple[Tensor, Tensor]]:
        x, cond = self._inputs(batch)
        n = x.new_tensor(float(x.shape[0]))
        out = {}
        for s in self.val_sigmas:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            sigma = x.new_full((x.shape[0],), s)
            losses = denoising_loss(
                model, x, sigma, noise=noise, sigma_data=self.sigma_data, **cond
            )
            out[f"loss_sigma_{s:.3g}"] = (losses.sum(), n)
        return out

    def finalize(self, means: dict[str, float]) -> dict[str, float]:
        return {"loss": sum(means.values()) / len(means), **means}

    def metadata(self) -> dict[str, Any]:
        return {
            "denoiser": self.config.model_dump(mode="json"),
            "schedule": self.schedule_name,
            "sigma_min": self.schedule.sigma_min,
            "sigma_max": self.schedule.sigma_max,
            "sigma_data": self.sigma_data,
            "latent_mean": self.latent_mean,
            "latent_std": self.latent_std,
        }
