"""The denoiser interface, EDM preconditioning and the denoising score-matching loss.

A denoiser is any callable ``D(x_t, sigma, **cond) -> E[x | x_t]`` where ``x_t`` has shape
``(B, *event)`` and ``sigma`` shape ``(B,)``; the output has the shape of ``x_t``. Samplers,
posterior denoisers and window composition only rely on this signature.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from appa.diffusion.schedules import NoiseSchedule

__all__ = [
    "Denoiser",
    "EDMDenoiser",
    "denoising_loss",
    "expand_sigma",
    "sample_lognormal_sigma",
    "sample_training_sigma",
]


@runtime_checkable
class Denoiser(Protocol):
    """``E[x | x_t]`` for a VE perturbation ``x_t = x + sigma z``."""

    def __call__(self, x_t: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        """``x_t``: ``(B, *event)``; ``sigma``: ``(B,)``; returns ``(B, *event)``."""
        ...


def expand_sigma(sigma: Tensor, x: Tensor) -> Tensor:
    """Reshapes per-sample noise levels ``(B,)`` (or a scalar) to broadcast against ``x``."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must have shape ({x.shape[0]},) or (), got {tuple(sigma.shape)}")
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class EDMDenoiser(nn.Module):
    """EDM preconditioning (Karras et al. 2022) around a backbone network.

    ``D(x_t, sigma) = c_skip x_t + c_out F(c_in x_t, c_noise)`` with ``c_skip = s_d^2 / (s^2 +
    s_d^2)``, ``c_out = s s_d / sqrt(s^2 + s_d^2)``, ``c_in = 1 / sqrt(s^2 + s_d^2)`` and
    ``c_noise = log(s) / 4``, where ``s_d`` is the data standard deviation.

    Arguments:
        backbone: ``F(x, c_noise, **cond)``, ``x`` of shape ``(B, *event)``, ``c_noise`` ``(B,)``.
        sigma_data: Standard deviation of the (standardised) data.
        autocast_dtype: If set (``torch.bfloat16`` or ``torch.float16``), the backbone runs under
            autocast in that dtype while preconditioning and outputs stay in the input dtype, so
            posterior solvers keep their precision.
    """

    def __init__(
        self,
        backbone: nn.Module,
        sigma_data: float = 1.0,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if autocast_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(
                f"autocast_dtype must be None, bfloat16 or float16, not {autocast_dtype}"
            )
        self.backbone = backbone
        self.sigma_data = float(sigma_data)
        self.autocast_dtype = autocast_dtype

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma`` (any shape)."""
        sd2 = self.sigma_data**2
        total = sigma**2 + sd2
        return sd2 / total, sigma * self.sigma_data / total.sqrt(), total.rsqrt(), sigma.log() / 4

    def forward(self, x_t: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        s = expand_sigma(sigma, x_t)
        c_skip, c_out, c_in, c_noise = self.coefficients(s)
        if self.autocast_dtype is None:
            context = contextlib.nullcontext()
        else:
            context = torch.autocast(x_t.device.type, dtype=self.autocast_dtype)
        with context:
            out = self.backbone(c_in * x_t, c_noise.reshape(-1), **cond)
        return c_skip * x_t + c_out * out.to(x_t.dtype)


def sample_training_sigma(
    schedule: NoiseSchedule, batch: int, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """Training noise levels: ``t ~ U(0, 1)`` mapped through the schedule; shape ``(batch,)``."""
    t = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    return schedule.sigma(t).float()


def sample_lognormal_sigma(
    batch: int,
    log_mean: float,
    log_std: float,
    sigma_min: float,
    sigma_max: float,
    generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """Training noise levels ``exp(log_mean + log_std z)``, ``z ~ N(0, 1)``, clipped to
    ``[sigma_min, sigma_max]``; shape ``(batch,)``.

    EDM's choice: a log-uniform draw over many decades spends most steps where denoising is
    trivial (``sigma`` far below the data's finest structure, or far above its scale); a
    log-normal one concentrates them where the network has something to learn.
    """
    z = torch.randn(batch, generator=generator, device=device, dtype=torch.float64)
    return (log_mean + log_std * z).exp().clamp(sigma_min, sigma_max).float()


def denoising_loss(
    denoiser: nn.Module | Denoiser,
    x: Tensor,
    sigma: Tensor,
    noise: Tensor | None = None,
    sigma_data: float = 1.0,
    counted: Tensor | None = None,
    **cond: Any,
) -> Tensor:
    """Weighted denoising score-matching loss, per sample.

    ``lambda(s) || D(x + s z, s) - x ||^2`` averaged over event dimensions, with the EDM weight
    ``lambda(s) = (s^2 + s_d^2) / (s s_d)^2`` that makes every noise level contribute O(1).

    Arguments:
        x: Clean data ``(B, *event)``.
        sigma: Noise levels ``(B,)``.
        noise: Optional fixed ``z`` of the shape of ``x``.
        counted: Optional bool mask broadcastable to ``x``: the average runs over these
            elements only (e.g. the frames a forecast samples).

    Returns:
        Loss per sample, shape ``(B,)``.
    """
    if noise is None:
        noise = torch.randn_like(x)
    s = expand_sigma(sigma, x)
    x_hat = denoiser(x + s * noise, sigma, **cond)
    weight = (s**2 + sigma_data**2) / (s * sigma_data) ** 2
    error = weight * (x_hat - x) ** 2
    if counted is None:
        return error.flatten(1).mean(dim=1)
    counted = counted.expand_as(x)
    error = torch.where(counted, error, torch.zeros_like(error))
    return error.flatten(1).sum(dim=1) / counted.flatten(1).sum(dim=1).clamp_min(1)
