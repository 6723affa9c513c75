"""Priors over low-dimensional parameters, as torch distributions.

:class:`BoxUniform` is zuko's box-uniform distribution and :class:`DiagonalGaussian` torch's
independent normal, each with what the estimators need beside: per-dimension bounds ``low`` /
``high`` (``-inf`` / ``+inf`` where unbounded), a parameter check, draws from a given generator,
and a JSON description that :func:`prior_from_spec` rebuilds for checkpoints.

Flows and denoisers live on the real line, so a box-uniform prior is handled by a per-dimension
logit map ``u = logit((theta - low) / (high - low))``; densities are carried back to parameter
space with the log-determinant of its Jacobian, so ``log_prob`` is correct in the original
space and no probability mass leaks outside the prior's support.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import zuko.distributions
from torch import Tensor
from torch.distributions import Independent, Normal

__all__ = ["BoxUniform", "DiagonalGaussian", "Prior", "prior_from_spec"]


def _as_vector(value: Sequence[float] | Tensor, name: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    if not torch.isfinite(t).all():
        raise ValueError(f"prior {name} must be finite, got {t.tolist()}")
    return t


def _draw_shape(sample_shape: int | Sequence[int] | torch.Size) -> tuple[int, ...]:
    return (sample_shape,) if isinstance(sample_shape, int) else tuple(sample_shape)


class _Bounded:
    """What the estimators ask of a prior beside the distribution."""

    low: Tensor
    high: Tensor

    @property
    def dim(self) -> int:
        """Number of parameters."""
        return int(self.low.numel())

    def check(self, theta: Tensor, name: str = "theta") -> Tensor:
        """Validates the trailing dimension and finiteness of ``theta``; returns it."""
        if theta.shape[-1] != self.dim:
            raise ValueError(
                f"{name} must end with {self.dim} parameters, got {tuple(theta.shape)}"
            )
        if not torch.isfinite(theta).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        return theta


class BoxUniform(_Bounded, zuko.distributions.BoxUniform):
    """Independent uniform priors on ``[low_i, high_i]`` (float64 bounds).

    ``sample(n, generator)`` draws ``(n, dim)`` float32 values from ``generator``;
    ``log_prob`` is ``-log volume`` inside the closed box and ``-inf`` outside it (no error).
    """

    def __init__(self, low: Sequence[float] | Tensor, high: Sequence[float] | Tensor) -> None:
        low, high = _as_vector(low, "low"), _as_vector(high, "high")
        if low.shape != high.shape or not (high > low).all():
            raise ValueError(
                f"BoxUniform needs low < high elementwise, got {low.tolist()}, {high.tolist()}"
            )
        super().__init__(low, high)
        self.low, self.high = low, high
        self._log_volume = float((high - low).log().sum())

    def sample(
        self, sample_shape: int | Sequence[int] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        u = torch.rand(
            *_draw_shape(sample_shape), self.dim, generator=generator, dtype=torch.float64
        )
        return (self.low + (self.high - self.low) * u).float()

    def log_prob(self, theta: Tensor) -> Tensor:
        low, high = self.low.to(theta), self.high.to(theta)
        inside = ((theta >= low) & (theta <= high)).all(dim=-1)
        value = torch.full(inside.shape, -self._log_volume, dtype=theta.dtype, device=theta.device)
        return torch.where(inside, value, torch.full_like(value, -math.inf))

    def spec(self) -> dict:
        """A JSON description :func:`prior_from_spec` rebuilds."""
        return {"type": "box_uniform", "low": self.low.tolist(), "high": self.high.tolist()}

    def __repr__(self) -> str:
        return f"BoxUniform(low={self.low.tolist()}, high={self.high.tolist()})"


class DiagonalGaussian(_Bounded, Independent):
    """Independent Gaussian priors ``N(loc_i, scale_i^2)`` (float64 parameters)."""

    def __init__(self, loc: Sequence[float] | Tensor, scale: Sequence[float] | Tensor) -> None:
        loc, scale = _as_vector(loc, "loc"), _as_vector(scale, "scale")
        if loc.shape != scale.shape or not (scale > 0).all():
            raise ValueError("DiagonalGaussian needs loc and scale of one shape with scale > 0")
        super().__init__(Normal(loc, scale), 1)
        self.loc, self.scale = loc, scale
        self.low = torch.full(loc.shape, -math.inf, dtype=torch.float64)
        self.high = torch.full(loc.shape, math.inf, dtype=torch.float64)

    def sample(
        self, sample_shape: int | Sequence[int] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        z = torch.randn(
            *_draw_shape(sample_shape), self.dim, generator=generator, dtype=torch.float64
        )
        return (self.loc + self.scale * z).float()

    def log_prob(self, theta: Tensor) -> Tensor:
        loc, scale = self.loc.to(theta), self.scale.to(theta)
        z = (theta - loc) / scale
        return (-0.5 * z**2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(dim=-1)

    def spec(self) -> dict:
        """A JSON description :func:`prior_from_spec` rebuilds."""
        return {"type": "diagonal_gaussian", "loc": self.loc.tolist(), "scale": self.scale.tolist()}

    def __repr__(self) -> str:
        return f"DiagonalGaussian(loc={self.loc.tolist()}, scale={self.scale.tolist()})"


Prior = BoxUniform | DiagonalGaussian


def prior_from_spec(spec: dict) -> Prior:
    """Rebuilds a prior from its ``spec()``."""
    kind = spec.get("type")
    if kind == "box_uniform":
        return BoxUniform(spec["low"], spec["high"])
    if kind == "diagonal_gaussian":
        return DiagonalGaussian(spec["loc"], spec["scale"])
    raise ValueError(f"unknown prior type {kind!r} (box_uniform or diagonal_gaussian)")
