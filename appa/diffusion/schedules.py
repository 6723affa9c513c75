"""Variance-exploding noise schedules.

A schedule maps a diffusion time ``t`` in [0, 1] to a noise level ``sigma(t)``, increasing from
``sigma_min`` at ``t = 0`` to ``sigma_max`` at ``t = 1``. The perturbation kernel is
``x_t = x + sigma(t) * z`` with ``z ~ N(0, I)`` (no signal scaling).

:class:`ScheduleConfig` names a schedule and its bounds; it holds the only defaults, and
``ScheduleConfig(...).build()`` makes the schedule.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from appa.config import StrictModel

__all__ = [
    "LogLinearSchedule",
    "LogLogitSchedule",
    "NoiseSchedule",
    "RectifiedSchedule",
    "ScheduleConfig",
    "ScheduleName",
]

ScheduleName = Literal["rectified", "loglinear", "loglogit"]


class NoiseSchedule(ABC):
    """Abstract VE schedule ``sigma(t)``, monotonically increasing on [0, 1]."""

    def __init__(self, sigma_min: float, sigma_max: float) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"noise schedule needs 0 < sigma_min < sigma_max, got {sigma_min=}, {sigma_max=}"
            )
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Noise level for times ``t`` (any shape, values in [0, 1]); same shape as ``t``."""

    def __call__(self, t: Tensor) -> Tensor:
        return self.sigma(t)

    def sigmas(self, steps: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """The ``steps + 1`` noise levels of a sampler's grid, from ``sigma_max`` down to
        ``sigma_min`` (uniform in ``t``), shape ``(steps + 1,)``."""
        if steps < 1:
            raise ValueError(f"a sampler needs at least one step, got steps={steps}")
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        return self.sigma(t).to(dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g})"


class LogLinearSchedule(NoiseSchedule):
    """``log sigma`` linear in ``t``: ``sigma(t) = sigma_min^(1-t) * sigma_max^t``."""

    def sigma(self, t: Tensor) -> Tensor:
        log_min, log_max = math.log(self.sigma_min), math.log(self.sigma_max)
        return torch.exp(log_min + (log_max - log_min) * t)


class RectifiedSchedule(NoiseSchedule):
    """Appa's rectified schedule, the VE image of the rectified-flow path ``alpha = 1 - t``:

    ``sigma(t) = (t + (1 - t) sigma_min) / (1 + t (1 / sigma_max - 1))``.
    """

    def sigma(self, t: Tensor) -> Tensor:
        return (t + (1 - t) * self.sigma_min) / (1 + t * (1 / self.sigma_max - 1))


class LogLogitSchedule(NoiseSchedule):
    """``log sigma`` linear in ``logit(t)``, which concentrates steps at intermediate noise:

    ``sigma(t) = sqrt(sigma_min sigma_max) exp(spread * logit(eps + (1 - 2 eps) t))``, with
    ``eps`` chosen so that the end points are exactly ``sigma_min`` and ``sigma_max``.
    """

    def __init__(self, sigma_min: float, sigma_max: float, spread: float = 2.0):
        super().__init__(sigma_min, sigma_max)
        if spread <= 0:
            raise ValueError(f"log-logit schedule needs spread > 0, got {spread}")
        self.spread = float(spread)
        # logit(eps) = log(sigma_min / sigma_max) / (2 spread)
        self._eps = 1.0 / (1.0 + math.sqrt(sigma_max / sigma_min) ** (1.0 / spread))
        self._log_mid = 0.5 * math.log(sigma_min * sigma_max)

    def sigma(self, t: Tensor) -> Tensor:
        u = self._eps + (1 - 2 * self._eps) * t
        return torch.exp(self._log_mid + self.spread * torch.logit(u))


_SCHEDULES: dict[str, type[NoiseSchedule]] = {
    "rectified": RectifiedSchedule,
    "loglinear": LogLinearSchedule,
    "loglogit": LogLogitSchedule,
}


class ScheduleConfig(StrictModel):
    """A noise schedule: its ``kind`` and the noise levels it spans."""

    kind: ScheduleName = Field("loglinear", description="shape of sigma(t)")
    sigma_min: float = Field(1e-3, gt=0, description="noise level at t = 0")
    sigma_max: float = Field(1e3, gt=0, description="noise level at t = 1")

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleConfig:
        if not self.sigma_min < self.sigma_max:
            raise ValueError(
                f"sigma_min must be below sigma_max, got {self.sigma_min} and {self.sigma_max}"
            )
        return self

    def build(self) -> NoiseSchedule:
        """The schedule."""
        return _SCHEDULES[self.kind](self.sigma_min, self.sigma_max)
