"""Sequential Monte Carlo over the diffusion path with MMPS proposals and twisting.

Moment-matching posterior denoisers are biased when ``p(x | x_t, y)`` is far from Gaussian
(e.g. a multimodal posterior). This sampler corrects them asymptotically, in the spirit of the
twisted diffusion sampler (Wu et al. 2023): particles move by ancestral steps whose mean uses the
MMPS posterior denoiser (the proposal ``q``), are weighted against the prior's ancestral
transition ``p`` and MMPS's likelihood approximation ``L_t(x_t) ~ p(y | x_t)`` (the twist),

``w <- w * p(x_s | x_t) L_s(x_s) / (q(x_s | x_t) L_t(x_t))``,

and are resampled (systematically) when the effective sample size falls below a threshold. As
the number of particles grows the weighted particles target ``p(x | y)`` whatever the quality of
the twist; a good twist (MMPS) keeps the weights even. The particles of one call form one
population: they are not independent draws, and the batch size is the particle count.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from appa.diffusion.posterior import MMPSDenoiser
from appa.diffusion.samplers import Sampler
from appa.diffusion.schedules import NoiseSchedule

__all__ = ["SMCSampler", "systematic_resample"]


def systematic_resample(log_weights: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Indices ``(N,)`` of a systematic resampling of ``N`` particles with ``log_weights (N,)``."""
    n = log_weights.shape[0]
    w = torch.softmax(log_weights.to(torch.float64), dim=0)
    cdf = torch.cumsum(w, dim=0)
    u0 = torch.rand((), generator=generator, device=w.device, dtype=torch.float64)
    positions = (u0 + torch.arange(n, device=w.device, dtype=torch.float64)) / n
    return torch.searchsorted(cdf, positions).clamp(max=n - 1)


class SMCSampler(Sampler):
    """Twisted SMC with MMPS proposals (see module docstring).

    Arguments:
        denoiser: An :class:`MMPSDenoiser` with ``solver="direct"`` (its likelihood needs the
            observation-space covariance, so it suits up to a few hundred observations).
        schedule: The noise schedule.
        steps: Number of steps.
        ess_threshold: Resample when the effective sample size drops below this fraction.
    """

    def __init__(
        self,
        denoiser: MMPSDenoiser,
        schedule: NoiseSchedule | None = None,
        steps: int = 64,
        ess_threshold: float = 0.5,
    ) -> None:
        if not isinstance(denoiser, MMPSDenoiser) or denoiser.solver != "direct":
            raise ValueError("SMCSampler needs an MMPSDenoiser with solver='direct'")
        if not 0.0 < ess_threshold <= 1.0:
            raise ValueError(f"ess_threshold must lie in (0, 1], got {ess_threshold}")
        super().__init__(denoiser, schedule, steps)
        self.ess_threshold = ess_threshold
        self.last_ess: list[float] = []

    @torch.no_grad()
    def __call__(
        self, x_T: Tensor, generator: torch.Generator | None = None, **cond: Any
    ) -> Tensor:
        B = x_T.shape[0]
        levels = self.levels_like(x_T)
        mmps: MMPSDenoiser = self.denoiser
        x = x_T
        post, prior, log_twist = mmps.moments(x, levels[0], log_likelihood=True, **cond)
        log_w = torch.zeros(B, dtype=torch.float64, device=x.device)
        ess_trace = []
        for i in range(self.steps):
            t, s = float(self.sigmas[i]), float(self.sigmas[i + 1])
            keep = (s / t) ** 2
            var = s**2 * (1 - keep)
            mean_q = post + keep * (x - post)
            mean_p = prior + keep * (x - prior)
            x_new = mean_q + var**0.5 * self._noise(x, generator)
            log_ratio = (
                ((x_new - mean_q) ** 2 - (x_new - mean_p) ** 2).flatten(1).sum(-1) / (2 * var)
            ).to(torch.float64)
            post, prior, log_twist_new = mmps.moments(
                x_new, levels[i + 1], log_likelihood=True, **cond
            )
            log_w = log_w + log_ratio + log_twist_new - log_twist
            x, log_twist = x_new, log_twist_new
            # resample without a host sync: always draw indices, keep them where ESS is low
            w = torch.softmax(log_w, 0)
            ess = 1.0 / (w**2).sum()
            ess_trace.append(ess)
            low = ess < self.ess_threshold * B
            last = i == self.steps - 1
            idx = systematic_resample(log_w, generator)
            idx = torch.where(low | last, idx, torch.arange(B, device=x.device))
            x, post, prior, log_twist = x[idx], post[idx], prior[idx], log_twist[idx]
            log_w = torch.where(low | last, torch.zeros_like(log_w), log_w[idx])
        self.last_ess = [float(e) for e in torch.stack(ess_trace)]
        return x
