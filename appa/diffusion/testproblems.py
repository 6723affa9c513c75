"""Reference inverse problems with exact posteriors, shared by tests, benchmarks and demos."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from appa.diffusion.exact import GaussianMixturePrior, GaussianPrior
from appa.diffusion.posterior import GaussianObservation

__all__ = [
    "InverseProblem",
    "gaussian_mixture_problem",
    "linear_gaussian_problem",
    "squared_exponential_covariance",
]


@dataclass
class InverseProblem:
    """A prior with a closed-form denoiser, a linear observation and the exact posterior."""

    prior: GaussianPrior | GaussianMixturePrior
    observation: GaussianObservation
    posterior: GaussianPrior | GaussianMixturePrior
    A: Tensor  # (m, d)
    y: Tensor  # (m,)
    noise_variance: Tensor  # (m,)
    x_true: Tensor  # (d,)


def squared_exponential_covariance(
    d: int, length_scale: float = 4.0, nugget: float = 1e-2
) -> Tensor:
    """``C_ij = exp(-(i - j)^2 / (2 l^2)) + nugget delta_ij`` on a 1-D grid of ``d`` points."""
    i = torch.arange(d, dtype=torch.float64)
    return torch.exp(-((i[:, None] - i[None]) ** 2) / (2 * length_scale**2)) + nugget * torch.eye(
        d, dtype=torch.float64
    )


def linear_gaussian_problem(
    d: int = 64,
    m: int = 16,
    noise_variance: float = 1e-2,
    operator: str = "dense",
    length_scale: float = 4.0,
    seed: int = 0,
) -> InverseProblem:
    """A Gaussian-process prior on ``d`` points (dense, non-diagonal covariance, smooth mean)
    observed through a random Gaussian ``m x d`` matrix (``operator="dense"``, entries of
    variance ``1/m``) or a 0/1 mask of ``m`` random points (``operator="mask"``)."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.arange(d, dtype=torch.float64)
    prior = GaussianPrior(torch.sin(grid / 6), squared_exponential_covariance(d, length_scale))
    if operator == "dense":
        A = torch.randn(m, d, generator=g, dtype=torch.float64) / m**0.5
    elif operator == "mask":
        A = torch.eye(d, dtype=torch.float64)[torch.randperm(d, generator=g)[:m].sort().values]
    else:
        raise ValueError(f"operator must be 'dense' or 'mask', got {operator!r}")
    return _observe(prior, A, torch.full((m,), noise_variance, dtype=torch.float64), g)


def gaussian_mixture_problem(d: int = 8, m: int = 2, seed: int = 0) -> InverseProblem:
    """The Gaussian-mixture benchmark of Cardoso et al. (MCGdiff, ICLR 2024).

    25 unit-covariance components with means ``(-8i, -8j, -8i, -8j, ...)`` for ``i, j`` in
    ``-2..2``, weights proportional to squared standard normals; ``A = U diag(s) V[:m]`` from the
    SVDs of Gaussian matrices with ``s`` sorted uniform; noise std uniform times ``max(s)``;
    ``y`` from one prior draw.
    """
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    pattern = torch.tensor([list(c) for c in itertools.product(range(-2, 3), repeat=2)], dtype=f64)
    means = -8.0 * pattern.repeat(1, (d + 1) // 2)[:, :d]
    weights = torch.randn(25, generator=g, dtype=f64).square().clamp(min=1e-12)
    prior = GaussianMixturePrior(weights, means)
    U = torch.linalg.svd(torch.randn(m, m, generator=g, dtype=f64))[0]
    V = torch.linalg.svd(torch.randn(d, d, generator=g, dtype=f64))[2]
    s = torch.rand(m, generator=g, dtype=f64).sort(descending=True).values
    A = U @ torch.diag(s) @ V[:m]
    std = float(torch.rand((), generator=g, dtype=f64)) * float(s.max())
    return _observe(prior, A, torch.full((m,), std**2, dtype=f64), g)


def _observe(prior, A: Tensor, var: Tensor, g: torch.Generator) -> InverseProblem:
    """Draws a truth from the prior and observes it through ``A`` with noise variances ``var``."""
    x_true = prior.sample(1, g)[0]
    y = A @ x_true + var.sqrt() * torch.randn(A.shape[0], generator=g, dtype=torch.float64)
    return InverseProblem(
        prior=prior,
        observation=GaussianObservation.from_matrix(A, y, var),
        posterior=prior.posterior(A, y, var),
        A=A,
        y=y,
        noise_variance=var,
        x_true=x_true,
    )
