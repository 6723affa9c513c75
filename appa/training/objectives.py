"""What is trained: the loss and validation metrics of the autoencoder and the latent denoiser.

A task owns its network and knows the batch layout; the loop (:mod:`appa.training.loop`) owns
optimisation, data order, precision, checkpoints and logs. Batches are dicts of tensors as the
window datasets yield them (collated): states ``(B, K, C, H, W)`` (or ``(B, C, H, W)``), latents
``(B, K, c, h, w)``, date features ``(B, K, F)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from appa.config import StrictModel
from appa.data.grids import regular_longitudes
from appa.data.spectral import band_limit_projection
from appa.diffusion import (
    ScheduleConfig,
    denoising_loss,
    make_sampler,
    sample_lognormal_sigma,
    sample_training_sigma,
)
from appa.io.cards import AutoencoderCard, DenoiserCard
from appa.io.checkpoints import VALID_GROUP
from appa.nn import StateAutoencoder, WeightedMSE, ZonalSpectrumLoss, known_frames_input
from appa.nn.latent import LatentStandardizer, latent_denoiser
from appa.nn.presets import AutoencoderConfig, DenoiserConfig

__all__ = [
    "AutoencoderLossConfig",
    "AutoencoderObjective",
    "DiffusionObjective",
    "DiffusionObjectiveConfig",
    "Objective",
]


class Objective(Protocol):
    """The loop's view of what it trains: the network, its loss and validation."""

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

    def card(self) -> AutoencoderCard | DenoiserCard:
        """What a checkpoint of the network must carry to be used (configs, statistics)."""
        ...

    def tensor_groups(self) -> dict[str, dict[str, Tensor]]:
        """Tensors beside the weights that every checkpoint carries (e.g. ``valid``)."""
        ...


class AutoencoderLossConfig(StrictModel):
    """The autoencoder's loss: an area- and channel-weighted MSE and two optional terms."""

    channel_weights: list[float] | None = Field(
        None, description="loss weight of each channel (None: equal)"
    )
    spectral_weight: float = Field(
        0.0, ge=0, description="weight of appa.nn.ZonalSpectrumLoss beside the MSE (0: none)"
    )
    spectral_floor: float = Field(1e-6, gt=0, description="its relative power floor")
    tendency_weight: float = Field(
        0.0, ge=0, description="weight of the MSE of changes between consecutive states"
    )


class DiffusionObjectiveConfig(StrictModel):
    """How the latent denoiser is trained and validated."""

    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    sigma_data: float = Field(1.0, gt=0, description="EDM data std (1: standardised latents)")
    train_sigma: Literal["schedule", "lognormal"] = Field(
        "schedule",
        description="training noise: uniform time through the schedule, or EDM's log-normal "
        "(log sigma ~ N(sigma_log_mean, sigma_log_std^2), clipped to the bounds)",
    )
    sigma_log_mean: float = -1.2
    sigma_log_std: float = Field(1.2, gt=0)
    known_probability: float = Field(
        0.0,
        ge=0,
        le=1,
        description="with denoiser.known_frames: the share of training windows whose first "
        "frames are given clean (the forecast's situation)",
    )
    val_sigmas: int = Field(6, ge=1, description="validation noise levels")
    val_samples: int = Field(0, ge=0, description="windows generated per worker at validation")
    val_sampler: Literal["ddpm", "ddim", "euler", "heun", "pc", "lms"] = "heun"
    val_steps: int = Field(16, ge=1)


def _get(batch: dict[str, Tensor], key: str) -> Tensor:
    if key not in batch:
        raise KeyError(f"batch has no {key!r}; it has {sorted(batch)}")
    return batch[key]


class AutoencoderObjective:
    """Reconstruction of standardised states through the autoencoder, loss
    :class:`~appa.nn.WeightedMSE` (cell area x channel weights), plus ``spectral_weight``
    times :class:`~appa.nn.ZonalSpectrumLoss` (the batch's log zonal power ratios), which
    keeps the small scales that an MSE alone lets the decoder smooth away. Validation reports
    that term (``spectrum``) whatever its weight.

    When batches carry a validity ``mask`` (masked variables such as sea-surface temperature
    over land, as :class:`appa.data.WindowDataset` yields them), invalid points are set to 0
    (the standardised mean) before encoding and left out of the loss and of the validation
    errors, so whatever the store holds there changes neither the loss nor its gradients.

    Arguments:
        config: The autoencoder config (a preset's ``autoencoder``).
        latitudes: Row latitudes in degrees (``config.grid[0]`` of them).
        loss: The loss (:class:`AutoencoderLossConfig`; ``channel_weights`` e.g.
            :func:`appa.nn.level_weights`). Its ``tendency_weight`` weighs a term on
            consecutive states (batches of windows of ``K >= 2`` states): the same weighted MSE
            of the reconstructed changes ``x_hat[k+1] - x_hat[k]`` against the true ones.
            Frame-by-frame errors that come and go make reconstructed trajectories change
            faster than the truth (slow fields most: sea-surface temperature), which the MSE
            alone does not see. Validation reports it (``tendency``) whenever windows hold two
            states or more.
        channel_names: Names for the per-channel validation RMSE columns.
        key: The batch entry holding states.
        mask_key: The batch entry holding the validity mask (used when present).
        state_spec, statistics: JSON documents of the :class:`appa.data.StateSpec` and
            :class:`appa.data.Statistics` the states were made with, carried into checkpoints.
        static: ``(static_channels, H, W)`` standardised static fields of a context-conditioned
            autoencoder (stored in its weights). With ``date_context``, batches must carry
            ``date`` features ``(B, [K,] 4)``.
        date_key: The batch entry holding date features.
        longitudes: The grid's longitudes (degrees); a regional grid's are carried into
            checkpoints (a global grid's, equally spaced from 0, are implied).
        valid: ``(C, H, W)`` bool, the cells where the data hold values
            (:meth:`appa.data.WindowDataset.valid_cells`); carried into checkpoints as the
            ``valid`` tensor group, so that decoded states are NaN where the data never are.
    """

    kind = "autoencoder"

    def __init__(
        self,
        config: AutoencoderConfig,
        latitudes: Sequence[float],
        loss: AutoencoderLossConfig | None = None,
        channel_names: Sequence[str] | None = None,
        key: str = "state",
        mask_key: str = "mask",
        state_spec: dict[str, Any] | None = None,
        statistics: dict[str, Any] | None = None,
        static: np.ndarray | None = None,
        date_key: str = "date",
        longitudes: Sequence[float] | None = None,
        valid: np.ndarray | None = None,
    ) -> None:
        loss = loss if loss is not None else AutoencoderLossConfig()
        if len(latitudes) != config.grid[0]:
            raise ValueError(f"{len(latitudes)} latitudes for a grid of {config.grid[0]} rows")
        names = list(channel_names or [f"c{i}" for i in range(config.in_channels)])
        if len(names) != config.in_channels:
            raise ValueError(f"{len(names)} channel names for {config.in_channels} channels")
        self.config = config
        self.module = StateAutoencoder(config)
        if config.static_channels:
            if static is None:
                raise ValueError(
                    f"the autoencoder takes {config.static_channels} static fields; none given"
                )
            self.module.set_static(torch.as_tensor(static, dtype=torch.float32))
        elif static is not None:
            raise ValueError("static fields given to an autoencoder with static_channels=0")
        if config.band_limit is not None:
            projection = band_limit_projection(np.asarray(latitudes), config.band_limit)
            self.module.set_band_limit(torch.as_tensor(projection, dtype=torch.float32))
        self.network = self.module
        self.date_key = date_key
        self.loss_config = loss
        self.criterion = WeightedMSE(latitudes, loss.channel_weights)
        self.spectral_weight = float(loss.spectral_weight)
        self.spectrum = ZonalSpectrumLoss(latitudes, loss.spectral_floor)
        self.tendency_weight = float(loss.tendency_weight)
        self.latitudes = [float(v) for v in latitudes]
        self.channel_weights = loss.channel_weights
        self.channel_names = names
        self.key, self.mask_key = key, mask_key
        self.state_spec, self.statistics = state_spec, statistics
        self.regional_longitudes = None
        if longitudes is not None:
            lon = [float(v) for v in longitudes]
            if len(lon) != config.grid[1]:
                raise ValueError(f"{len(lon)} longitudes for a grid of {config.grid[1]} columns")
            if not np.allclose(lon, regular_longitudes(config.grid[1]), rtol=0, atol=1e-9):
                self.regional_longitudes = lon
        self.valid = None
        if valid is not None:
            valid = np.asarray(valid)
            if valid.dtype != bool or valid.shape != (config.in_channels, *config.grid):
                raise ValueError(
                    f"valid must be bool ({config.in_channels}, {config.grid[0]}, "
                    f"{config.grid[1]}), got {valid.dtype} {valid.shape}"
                )
            self.valid = torch.from_numpy(valid.astype(np.uint8))

    def _states(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """States ``(N, C, H, W)`` with invalid points zeroed, and the mask (or None)."""
        x = _get(batch, self.key)
        C, H, W = self.config.in_channels, *self.config.grid
        if x.ndim not in (4, 5) or tuple(x.shape[-3:]) != (C, H, W):
            raise ValueError(f"{self.key} must be (B, [K,] {C}, {H}, {W}), got {tuple(x.shape)}")
        mask = batch.get(self.mask_key)
        x = x.reshape(-1, C, H, W)
        if mask is None:
            return x, None
        if mask.shape != batch[self.key].shape or mask.dtype != torch.bool:
            raise ValueError(
                f"{self.mask_key} must be bool with the shape of {self.key} "
                f"{tuple(batch[self.key].shape)}, got {mask.dtype} {tuple(mask.shape)}"
            )
        mask = mask.reshape(-1, C, H, W)
        return torch.where(mask, x, torch.zeros_like(x)), mask

    def _window(self, batch: dict[str, Tensor]) -> int:
        """States per window ``K`` of the batch (1 for flat ``(B, C, H, W)`` batches)."""
        x = batch[self.key]
        return x.shape[1] if x.ndim == 5 else 1

    def _tendency(self, x_hat: Tensor, x: Tensor, mask: Tensor | None, K: int) -> Tensor:
        """Per-window weighted MSE of the changes between consecutive states, ``(B,)``."""
        x_hat, x = x_hat.unflatten(0, (-1, K)), x.unflatten(0, (-1, K))
        step_mask = None
        if mask is not None:
            mask = mask.unflatten(0, (-1, K))
            step_mask = mask[:, 1:] & mask[:, :-1]
        return self.criterion.to(x.device)(x_hat.diff(dim=1), x.diff(dim=1), step_mask)

    def _dates(self, batch: dict[str, Tensor]) -> Tensor | None:
        """Date features ``(N, 4)`` of the flattened states, when the network takes them."""
        if not self.config.date_context:
            return None
        return _get(batch, self.date_key).reshape(-1, 4).float()

    def loss(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator
    ) -> Tensor:
        x, mask = self._states(batch)
        K = self._window(batch)
        if self.tendency_weight and K < 2:
            raise ValueError(
                "tendency_weight needs windows of at least 2 consecutive states (the "
                f"autoencoder job's window), got batches of {K}"
            )
        _, x_hat = model(x, self._dates(batch))
        loss = self.criterion.to(x.device)(x_hat, x, mask)
        if self.spectral_weight:
            loss = loss + self.spectral_weight * self.spectrum.to(x.device)(x_hat, x, mask)
        if self.tendency_weight:
            loss = loss.unflatten(0, (-1, K)).mean(dim=1)
            loss = loss + self.tendency_weight * self._tendency(x_hat, x, mask, K)
        return loss

    @torch.no_grad()
    def validate_batch(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator
    ) -> dict[str, tuple[Tensor, Tensor]]:
        x, mask = self._states(batch)
        criterion = self.criterion.to(x.device)
        _, x_hat = model(x, self._dates(batch))  # validated in eval mode: no latent noise
        x_hat = x_hat.float()
        n = x.new_tensor(float(x.shape[0]))
        out = {"loss": (criterion(x_hat, x, mask).sum(), n)}
        spectrum = self.spectrum.to(x.device)(x_hat, x, mask)
        if self.spectral_weight:
            out["loss"] = (out["loss"][0] + self.spectral_weight * spectrum * n, n)
        out["spectrum"] = (spectrum, x.new_tensor(1.0))
        K = self._window(batch)
        if K >= 2:
            tendency = self._tendency(x_hat, x.float(), mask, K)
            out["tendency"] = (tendency.sum(), x.new_tensor(float(tendency.shape[0])))
            if self.tendency_weight:
                out["loss"] = (out["loss"][0] + self.tendency_weight * tendency.sum() * K, n)
        # area-weighted squared error per channel over valid points (sum and total weight)
        w = criterion.area[:, None].expand(x.shape[-2:])
        w = w.expand_as(x) if mask is None else w * mask
        se = ((x_hat - x.float()).square() * w).sum(dim=(0, 2, 3))
        total = w.sum(dim=(0, 2, 3))
        for c, name in enumerate(self.channel_names):
            out[f"mse_{name}"] = (se[c], total[c])
        return out

    def finalize(self, means: dict[str, float]) -> dict[str, float]:
        out = {"loss": means["loss"], "spectrum": means["spectrum"]}
        if "tendency" in means:
            out["tendency"] = means["tendency"]
        rmse = {n: math.sqrt(means[f"mse_{n}"]) for n in self.channel_names}
        out["rmse"] = sum(rmse.values()) / len(rmse)
        out.update({f"rmse_{n}": v for n, v in rmse.items()})
        return out

    def card(self) -> AutoencoderCard:
        return AutoencoderCard(
            autoencoder=self.config,
            latitudes=self.latitudes,
            channel_weights=self.channel_weights,
            channel_names=self.channel_names,
            spectral_weight=self.spectral_weight,
            spectral_floor=self.spectrum.floor,
            tendency_weight=self.tendency_weight,
            state_spec=self.state_spec,
            statistics=self.statistics,
            regional_longitudes=self.regional_longitudes,
        )

    def tensor_groups(self) -> dict[str, dict[str, Tensor]]:
        return {} if self.valid is None else {VALID_GROUP: {"cells": self.valid}}


class DiffusionObjective:
    """Denoising score matching of latent windows with :class:`~appa.diffusion.EDMDenoiser`
    around :class:`~appa.nn.LatentDiT`.

    Latents are standardised by ``latent_mean`` / ``latent_std`` (per latent channel) when
    given. Validation reports the denoising loss at fixed noise levels (``val_sigmas``,
    geometric between the schedule's bounds) with fixed noise, so successive validations
    compare.

    Arguments:
        config: The denoiser config (a preset's ``denoiser``).
        settings: How it is trained (:class:`DiffusionObjectiveConfig`): the noise schedule
            of training noise levels and sampling, ``sigma_data``, how training noise is
            drawn; with a ``known_frames`` denoiser, ``known_probability``, the share of
            training windows whose first ``n`` frames (``n`` uniform in ``1 ... K - 1``) are
            given clean as known frames (the forecast's situation; validation then also reports
            ``forecast_loss``, the loss on the second half of windows whose first half is
            known); ``val_sigmas`` validation noise levels; ``val_samples`` windows generated
            at each validation (per worker, dated like the first validation windows) by
            ``val_sampler`` in ``val_steps``, whose per-channel mean, standard deviation and
            lag-1 autocorrelation along time are compared with the validation data's.
        latent_mean, latent_std: ``(c,)`` latent statistics, or None.
        key, date_key: Batch entries of latents and date features.
    """

    kind = "diffusion"

    def __init__(
        self,
        config: DenoiserConfig,
        settings: DiffusionObjectiveConfig | None = None,
        latent_mean: Sequence[float] | None = None,
        latent_std: Sequence[float] | None = None,
        key: str = "latent",
        date_key: str = "date",
    ) -> None:
        settings = settings if settings is not None else DiffusionObjectiveConfig()
        if settings.known_probability and not config.known_frames:
            raise ValueError("known_probability > 0 needs a denoiser with known_frames")
        if config.known_frames and config.window < 2:
            raise ValueError("known frames need windows of at least 2 frames")
        self.config, self.settings = config, settings
        self.module = latent_denoiser(config, sigma_data=settings.sigma_data)
        self.network = self.module.backbone
        self.schedule_config = settings.schedule
        self.schedule = settings.schedule.build()
        self.sigma_data = float(settings.sigma_data)
        self.train_sigma = settings.train_sigma
        self.known_probability = float(settings.known_probability)
        self.sigma_log_mean = float(settings.sigma_log_mean)
        self.sigma_log_std = float(settings.sigma_log_std)
        self.standardizer = LatentStandardizer(config.channels, latent_mean, latent_std)
        self.latent_mean, self.latent_std = self.standardizer.mean, self.standardizer.std
        self.val_sigmas = torch.logspace(
            math.log10(self.schedule.sigma_min),
            math.log10(self.schedule.sigma_max),
            settings.val_sigmas + 2,
            dtype=torch.float64,
        )[1:-1].tolist()
        self.val_samples = settings.val_samples
        self.val_sampler, self.val_steps = settings.val_sampler, settings.val_steps
        self.key, self.date_key = key, date_key

    def _inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        z = _get(batch, self.key)
        cfg = self.config
        if z.ndim != 5 or z.shape[1] != cfg.window or z.shape[2] != cfg.channels:
            raise ValueError(
                f"{self.key} must be (B, {cfg.window}, {cfg.channels}, h, w), got {tuple(z.shape)}"
            )
        z = self.standardizer.standardize(z.float())
        cond = {}
        if cfg.date_features:
            cond["date"] = _get(batch, self.date_key).float()
        return z, cond

    def loss(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator
    ) -> Tensor:
        x, cond = self._inputs(batch)
        if self.train_sigma == "lognormal":
            sigma = sample_lognormal_sigma(
                x.shape[0],
                self.sigma_log_mean,
                self.sigma_log_std,
                self.schedule.sigma_min,
                self.schedule.sigma_max,
                generator,
                device=x.device,
            )
        else:
            sigma = sample_training_sigma(self.schedule, x.shape[0], generator, device=x.device)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if self.known_probability:
            B, K = x.shape[:2]
            n = torch.randint(1, K, (B,), generator=generator, device=x.device)
            used = torch.rand(B, generator=generator, device=x.device) < self.known_probability
            mask = (torch.arange(K, device=x.device) < n[:, None]) & used[:, None]
            cond["known"] = known_frames_input(mask, x)
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
            if self.config.known_frames:
                out[f"forecast_sigma_{s:.3g}"] = (
                    self._forecast_loss(model, x, sigma, noise, cond).sum(),
                    n,
                )
        return out

    def _forecast_loss(
        self, model: nn.Module, x: Tensor, sigma: Tensor, noise: Tensor, cond: dict[str, Tensor]
    ) -> Tensor:
        """The weighted denoising loss ``(B,)`` on the second half of windows ``x`` whose
        first half is known."""
        B, K = x.shape[:2]
        known = torch.arange(K, device=x.device) < K // 2
        return denoising_loss(
            model, x, sigma, noise=noise, sigma_data=self.sigma_data,
            counted=~known[None, :, None, None, None],
            known=known_frames_input(known.expand(B, K), x), **cond,
        )  # fmt: skip

    @torch.no_grad()
    def validate_samples(
        self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """Moments of ``val_samples`` generated windows and of the batch's windows, per latent
        channel: ``E[x]``, ``E[x^2]`` and ``E[x_t x_{t+1}]`` (sums and counts)."""
        if self.val_samples <= 0:
            return {}
        x, cond = self._inputs(batch)
        n = min(self.val_samples, x.shape[0])
        cond = {k: v[:n] for k, v in cond.items()}
        sampler = make_sampler(self.val_sampler, model, self.schedule, self.val_steps)
        seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        samples = sampler.sample(n, tuple(x.shape[1:]), seed=seed, device=x.device, **cond)
        out: dict[str, tuple[Tensor, Tensor]] = {}
        for tag, y in (("gen", samples.float()), ("data", x)):
            # y: (B, T, C, h, w); moments per channel
            count = y.new_tensor(float(y.numel() // y.shape[2]))
            lag_count = y.new_tensor(float(y[:, 1:].numel() // y.shape[2]))
            m1 = y.transpose(0, 2).flatten(1).sum(1)
            m2 = y.square().transpose(0, 2).flatten(1).sum(1)
            l1 = (y[:, 1:] * y[:, :-1]).transpose(0, 2).flatten(1).sum(1)
            for c in range(y.shape[2]):
                out[f"{tag}_m1_{c}"] = (m1[c], count)
                out[f"{tag}_m2_{c}"] = (m2[c], count)
                out[f"{tag}_l1_{c}"] = (l1[c], lag_count)
        return out

    def finalize(self, means: dict[str, float]) -> dict[str, float]:
        losses = {k: v for k, v in means.items() if k.startswith("loss_sigma_")}
        out = {"loss": sum(losses.values()) / len(losses), **losses}
        forecast = {k: v for k, v in means.items() if k.startswith("forecast_sigma_")}
        if forecast:
            out["forecast_loss"] = sum(forecast.values()) / len(forecast)
            out.update(forecast)
        if "gen_m1_0" in means:
            stats: dict[str, list[tuple[float, float, float]]] = {"gen": [], "data": []}
            for tag in stats:
                for c in range(self.config.channels):
                    m1, m2, l1 = (means[f"{tag}_{k}_{c}"] for k in ("m1", "m2", "l1"))
                    var = max(m2 - m1 * m1, 1e-12)
                    stats[tag].append((m1, math.sqrt(var), (l1 - m1 * m1) / var))
            gen, data = stats["gen"], stats["data"]
            C = len(gen)
            out["sample_mean_error"] = (
                sum(abs(g[0] - d[0]) / d[1] for g, d in zip(gen, data, strict=True)) / C
            )
            out["sample_std_ratio"] = sum(g[1] / d[1] for g, d in zip(gen, data, strict=True)) / C
            out["sample_lag1"] = sum(g[2] for g in gen) / C
            out["data_lag1"] = sum(d[2] for d in data) / C
        return out

    def card(self) -> DenoiserCard:
        return DenoiserCard(
            denoiser=self.config,
            schedule=self.schedule_config,
            sigma_data=self.sigma_data,
            latent_mean=self.latent_mean,
            latent_std=self.latent_std,
        )

    def tensor_groups(self) -> dict[str, dict[str, Tensor]]:
        return {}
