"""Priors over low-dimensional parameters and the maps that send bounded parameters to R.

Flows and denoisers live on the real line, so a box-uniform prior is handled by a per-dimension
logit map ``u = logit((theta - low) / (high - low))``; densities are carried back to parameter
space with the log-determinant of its Jacobian, so ``log_prob`` is correct in the original
space and no probability mass leaks outside the prior's support.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BoxUniform", "DiagonalGaussian", "Prior"]


def _as_vector(value: Sequence[float] | Tensor, name: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    if not torch.isfinite(t).all():
        raise ValueError(f"prior {name} must be finite, got {t.tolist()}")
    return t


class Prior:
    """A prior ``p(theta)`` over ``dim`` parameters with optional per-dimension bounds.

    ``low``/``high`` are ``(dim,)`` tensors with ``-inf``/``+inf`` for unbounded dimensions; the
    estimators use them to choose the map to R.
    """

    dim: int
    low: Tensor
    high: Tensor

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws, shape ``(n, dim)``, float32."""
        raise NotImplementedError

    def log_prob(self, theta: Tensor) -> Tensor:
        """Log density at ``theta`` ``(..., dim)``; ``-inf`` outside the support."""
        raise NotImplementedError

    def check(self, theta: Tensor, name: str = "theta") -> Tensor:
        """Validates the trailing dimension and finiteness of ``theta``; returns it."""
        if theta.shape[-1] != self.dim:
            raise ValueError(
                f"{name} must end with {self.dim} parameters, got {tuple(theta.shape)}"
            )
        if not torch.isfinite(theta).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        return theta

    def spec(self) -> dict:
        """A JSON-serialisable description that :func:`prior_from_spec` rebuilds."""
        raise NotImplementedError


class BoxUniform(Prior):
    """Independent uniform priors on ``[low_i, high_i]``."""

    def __init__(self, low: Sequence[float] | Tensor, high: Sequence[float] | Tensor) -> None:
        self.low = _as_vector(low, "low")
        self.high = _as_vector(high, "high")
        if self.low.shape != self.high.shape or not (self.high > self.low).all():
            raise ValueError(
                f"BoxUniform needs low < high elementwise, got {self.low.tolist()}, "
                f"{self.high.tolist()}"
            )
        self.dim = self.low.numel()
        self._log_volume = float((self.high - self.low).log().sum())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.low + (self.high - self.low) * u).float()

    def log_prob(self, theta: Tensor) -> Tensor:
        low, high = self.low.to(theta), self.high.to(theta)
        inside = ((theta >= low) & (theta <= high)).all(dim=-1)
        value = torch.full(inside.shape, -self._log_volume, dtype=theta.dtype, device=theta.device)
        return torch.where(inside, value, torch.full_like(value, -math.inf))

    def spec(self) -> dict:
        return {"type": "box_uniform", "low": self.low.tolist(), "high": self.high.tolist()}

    def __repr__(self) -> str:
        return f"BoxUniform(low={self.low.tolist()}, high={self.high.tolist()})"


class DiagonalGaussian(Prior):
    """Independent Gaussian priors ``N(loc_i, scale_i^2)``."""

    def __init__(self, loc: Sequence[float] | Tensor, scale: Sequence[float] | Tensor) -> None:
        self.loc = _as_vector(loc, "loc")
        self.scale = _as_vector(scale, "scale")
        if self.loc.shape != self.scale.shape or not (self.scale > 0).all():
            raise ValueError("DiagonalGaussian needs loc and scale of one shape with scale > 0")
        self.dim = self.loc.numel()
        self.low = torch.full((self.dim,), -math.inf, dtype=torch.float64)
        self.high = torch.full((self.dim,), math.inf, dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.loc + self.scale * z).float()

    def log_prob(self, theta: Tensor) -> Tensor:
        loc, scale = self.loc.to(theta), self.scale.to(theta)
        z = (theta - loc) / scale
        return (-0.5 * z**2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(dim=-1)

    def spec(self) -> dict:
        return {"type": "diagonal_gaussian", "loc": self.loc.tolist(), "scale": self.scale.tolist()}

    def __repr__(self) -> str:
        return f"DiagonalGaussian(loc={self.loc.tolist()}, scale={self.scale.tolist()})"


def prior_from_spec(spec: dict) -> Prior:
    """Rebuilds a prior from :meth:`Prior.spec`."""
    kind = spec.get("type")
    if kind == "box_uniform":
        return BoxUniform(spec["low"], spec["high"])
    if kind == "diagonal_gaussian":
        return DiagonalGaussian(spec["loc"], spec["scale"])
    raise ValueError(f"unknown prior type {kind!r} (box_uniform or diagonal_gaussian)")
