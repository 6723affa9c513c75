"""Samplers that integrate the reverse diffusion from ``sigma_max`` to ``sigma_min``.

Every sampler runs any denoiser (prior or posterior) through ``D(x_t, sigma, **cond)``, is
batched, and is reproducible from a seed or a ``torch.Generator``. With ``t`` the current and
``s`` the next noise level and ``x_hat = D(x_t, t)``:

- DDPM (ancestral): ``x_s = x_hat + (s/t)^2 (x_t - x_hat) + s sqrt(1 - (s/t)^2) z``;
- DDIM: ``x_s = x_hat + sqrt(s^2 - c^2)/t (x_t - x_hat) + c z``, ``c = eta s sqrt(1 - (s/t)^2)``;
- Euler and Heun: the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``;
- predictor-corrector: a DDIM predictor, then Langevin corrections at the new level,
  ``x <- x + delta (D(x, s) - x) + sqrt(2 delta) s z``;
- LMS: Adams-Bashforth on the same ODE with up to ``order`` past derivatives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from appa.diffusion.denoisers import Denoiser
from appa.diffusion.schedules import NoiseSchedule, ScheduleConfig

__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "EulerSampler",
    "HeunSampler",
    "LMSSampler",
    "PCSampler",
    "Sampler",
    "SamplerName",
    "make_sampler",
    "randn",
]

SamplerName = Literal["ddpm", "ddim", "euler", "heun", "pc", "lms"]
Generators = torch.Generator | Sequence[torch.Generator] | None


class Sampler:
    """Base sampler: a grid of ``steps + 1`` noise levels from the schedule and a ``step`` rule.

    Arguments:
        denoiser: Any denoiser ``D(x_t, sigma, **cond)``.
        schedule: The noise schedule (``ScheduleConfig()``'s by default).
        steps: Number of steps.
    """

    def __init__(
        self, denoiser: Denoiser, schedule: NoiseSchedule | None = None, steps: int = 64
    ) -> None:
        self.denoiser = denoiser
        self.schedule = schedule if schedule is not None else ScheduleConfig().build()
        self.steps = steps
        self.sigmas = self.schedule.sigmas(steps)  # float64, host

    def levels_like(self, x: Tensor) -> list[Tensor]:
        """The grid's noise levels as ``(B,)`` tensors in ``x``'s dtype and device, made once
        per call so that the loop does no host-to-device copies."""
        B = x.shape[0]
        return [torch.full((B,), float(v), dtype=x.dtype, device=x.device) for v in self.sigmas]

    def step(
        self, x_t: Tensor, t: Tensor, s: Tensor, index: int, generator, cond: dict[str, Any]
    ) -> Tensor:
        raise NotImplementedError

    def _noise(self, x: Tensor, generator: Generators) -> Tensor:
        return randn(x.shape, generator, device=x.device, dtype=x.dtype)

    def init(
        self,
        shape: tuple[int, ...],
        generator: Generators = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """A draw of ``N(0, sigma_max^2 I)`` of shape ``shape = (B, *event)``."""
        z = randn(shape, generator, device=device, dtype=dtype)
        return self.schedule.sigma_max * z

    @torch.no_grad()
    def __call__(self, x_T: Tensor, generator: Generators = None, **cond: Any) -> Tensor:
        """Integrates from ``x_T`` (at ``sigma_max``) to ``sigma_min``; returns ``(B, *event)``.
        ``generator``: one for the batch or one per sample (see :func:`randn`)."""
        levels = self.levels_like(x_T)
        x = x_T
        for i in range(self.steps):
            x = self.step(x, levels[i], levels[i + 1], i, generator, cond)
        return x

    def sample(
        self,
        n: int,
        event_shape: tuple[int, ...],
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        **cond: Any,
    ) -> Tensor:
        """``n`` samples of shape ``(n, *event_shape)``, reproducible from ``seed``."""
        generator = torch.Generator(device=device or "cpu")
        generator.manual_seed(seed if seed is not None else torch.seed())
        x_T = self.init((n, *event_shape), generator=generator, device=device, dtype=dtype)
        return self(x_T, generator=generator, **cond)


def randn(
    shape: tuple[int, ...],
    generator: Generators = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal draws of ``shape = (B, *event)``. ``generator`` is one generator for the
    batch, or a sequence of ``B`` generators, one per sample: then sample ``b`` depends only on
    its own generator, whatever else shares the batch (ensemble members that can be rerun alone
    or batched differently)."""
    if isinstance(generator, list | tuple):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack(
            [torch.randn(shape[1:], generator=g, device=device, dtype=dtype) for g in generator]
        )
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def _ratio(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
    return (a / b).reshape(-1, *([1] * (x.ndim - 1)))


class DDIMSampler(Sampler):
    """DDIM with stochasticity ``eta`` (0: deterministic, 1: DDPM)."""

    def __init__(self, denoiser, schedule=None, steps: int = 64, eta: float = 0.0) -> None:
        super().__init__(denoiser, schedule, steps)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        self.eta = eta

    def step(self, x_t, t, s, index, generator, cond):
        x_hat = self.denoiser(x_t, t, **cond)
        ratio = _ratio(s, t, x_t)
        s_ = s.reshape(ratio.shape)
        if self.eta == 0.0:
            return x_hat + ratio * (x_t - x_hat)
        c = self.eta * s_ * (1 - ratio**2).clamp(min=0).sqrt()
        keep = (s_**2 - c**2).clamp(min=0).sqrt() / t.reshape(ratio.shape)
        return x_hat + keep * (x_t - x_hat) + c * self._noise(x_t, generator)


class DDPMSampler(DDIMSampler):
    """Ancestral sampling: the exact Gaussian bridge between consecutive noise levels."""

    def __init__(self, denoiser, schedule=None, steps: int = 64) -> None:
        super().__init__(denoiser, schedule, steps, eta=1.0)


class EulerSampler(DDIMSampler):
    """Euler integration of the probability-flow ODE (equal to deterministic DDIM under VE)."""

    def __init__(self, denoiser, schedule=None, steps: int = 64) -> None:
        super().__init__(denoiser, schedule, steps, eta=0.0)


class HeunSampler(Sampler):
    """Heun's second-order method on the probability-flow ODE (EDM, Karras et al. 2022)."""

    def step(self, x_t, t, s, index, generator, cond):
        t_, s_ = (v.reshape(-1, *([1] * (x_t.ndim - 1))) for v in (t, s))
        d_t = (x_t - self.denoiser(x_t, t, **cond)) / t_
        x_e = x_t + (s_ - t_) * d_t
        d_s = (x_e - self.denoiser(x_e, s, **cond)) / s_
        return x_t + (s_ - t_) * (d_t + d_s) / 2


class PCSampler(Sampler):
    """Predictor-corrector: a DDIM predictor then ``corrections`` Langevin steps of relative
    size ``delta`` at the new noise level (Song et al. 2021; Appa uses 2 corrections, delta 0.1).
    """

    def __init__(
        self,
        denoiser,
        schedule=None,
        steps: int = 64,
        corrections: int = 2,
        delta: float = 0.1,
        eta: float = 0.0,
    ) -> None:
        super().__init__(denoiser, schedule, steps)
        if corrections < 0 or delta <= 0:
            raise ValueError(f"need corrections >= 0 and delta > 0, got {corrections}, {delta}")
        self.corrections = corrections
        self.delta = delta
        self.predictor = DDIMSampler(denoiser, self.schedule, steps, eta=eta)

    def step(self, x_t, t, s, index, generator, cond):
        x = self.predictor.step(x_t, t, s, index, generator, cond)
        s_ = s.reshape(-1, *([1] * (x.ndim - 1)))
        for _ in range(self.corrections):
            x_hat = self.denoiser(x, s, **cond)
            x = (
                x
                + self.delta * (x_hat - x)
                + (2 * self.delta) ** 0.5 * s_ * self._noise(x, generator)
            )
        return x


class LMSSampler(Sampler):
    """Linear multistep (Adams-Bashforth) on ``dx/dsigma = (x - D(x, sigma)) / sigma``: the
    derivative is interpolated by a polynomial through the last ``order`` noise levels and
    integrated exactly over the step. Coefficients are computed once, on the host."""

    def __init__(self, denoiser, schedule=None, steps: int = 64, order: int = 3) -> None:
        super().__init__(denoiser, schedule, steps)
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        self.order = order
        sig = self.sigmas.numpy()
        self.coefficients: list[list[float]] = []
        for i in range(steps):
            nodes = sig[max(0, i - order + 1) : i + 1][::-1]  # newest first
            coefs = []
            for j, node in enumerate(nodes):
                basis = np.poly1d([1.0])
                for k, other in enumerate(nodes):
                    if k != j:
                        basis = basis * np.poly1d([1.0, -other]) / (node - other)
                integral = basis.integ()
                coefs.append(float(integral(sig[i + 1]) - integral(sig[i])))
            self.coefficients.append(coefs)
        self._history: list[Tensor] = []

    def __call__(self, x_T, generator=None, **cond):
        self._history = []
        try:
            return super().__call__(x_T, generator, **cond)
        finally:
            self._history = []

    def step(self, x_t, t, s, index, generator, cond):
        t_ = t.reshape(-1, *([1] * (x_t.ndim - 1)))
        derivative = (x_t - self.denoiser(x_t, t, **cond)) / t_
        self._history = [derivative, *self._history[: self.order - 1]]
        update = sum(c * d for c, d in zip(self.coefficients[index], self._history, strict=True))
        return x_t + update


_SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "euler": EulerSampler,
    "heun": HeunSampler,
    "pc": PCSampler,
    "lms": LMSSampler,
}


def make_sampler(
    name: str,
    denoiser: Denoiser,
    schedule: NoiseSchedule | None = None,
    steps: int = 64,
    **options: Any,
) -> Sampler:
    """Builds a sampler by name (``ddpm``, ``ddim``, ``euler``, ``heun``, ``pc``, ``lms``)."""
    try:
        cls = _SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(_SAMPLERS)}") from None
    return cls(denoiser, schedule, steps, **options)
