"""Posterior sources ``p(x | y)`` for a lensed image ``y = A x + e``: diffusion posterior sampling
(MMPS, DPS) through the shared prior interface, and closed-form Gaussian baselines.

The diffusion prior may live in standardised units ``z = x / scale``: the observation then sees
``A(scale z)``, still linear, and samples are scaled back. Gaussian baselines (a Gaussian process
with hyperparameters fitted to training galaxies, or the training set's own mean and covariance)
give exact posteriors by linear algebra; with one of them as the prior denoiser, MMPS must match
its closed form (:func:`gaussian_source_posterior`) up to sampling error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from appa.diffusion import (
    Denoiser,
    DPSDenoiser,
    GaussianObservation,
    MMPSDenoiser,
    ScheduleConfig,
    linear_gaussian_posterior,
    make_sampler,
)
from appa.diffusion.schedules import ScheduleName
from appa.lensing.operator import LensingOperator, PixelGrid
from appa.lensing.prior import SIGMA_MAX, SIGMA_MIN

__all__ = [
    "GaussianSource",
    "SamplingConfig",
    "dihedral",
    "empirical_gaussian",
    "fit_gaussian_process",
    "gaussian_process_covariance",
    "gaussian_source_moments",
    "gaussian_source_posterior",
    "sample_source_posterior",
]

Method = Literal["mmps", "dps"]


@dataclass
class GaussianSource:
    """A Gaussian over sources on a grid: ``mean`` ``(d,)`` and ``cov`` ``(d, d)`` float64 (row-
    major pixels of an ``(Hs, Ws)`` source), with a name for reports."""

    mean: Tensor
    cov: Tensor
    name: str = "gaussian"

    @property
    def std(self) -> Tensor:
        return torch.diagonal(self.cov).clamp_min(0).sqrt()


def dihedral(images: Tensor) -> Tensor:
    """The 8 rotations and reflections of images ``(n, H, W)`` (square): ``(8 n, H, W)``. The
    generator's galaxies are equally likely in any of them."""
    turns = [torch.rot90(images, k, dims=(-2, -1)) for k in range(4)]
    return torch.cat(turns + [t.flip(-1) for t in turns])


def gaussian_process_covariance(
    grid: PixelGrid,
    amplitude: float,
    length: float,
    kernel: Literal["matern32", "squared_exponential"] = "matern32",
    jitter: float = 1e-6,
) -> Tensor:
    """The covariance ``(d, d)`` of a stationary Gaussian process on the pixel centres of ``grid``:
    ``amplitude^2 k(r / length)`` (``length`` in arcsec) plus ``jitter amplitude^2`` on the
    diagonal (keeps it invertible)."""
    if amplitude <= 0 or length <= 0:
        raise ValueError(f"GP amplitude and length must be positive, got {amplitude}, {length}")
    x, y = grid.coordinates(dtype=torch.float64)
    points = torch.stack([x.flatten(), y.flatten()], dim=1)
    r = torch.cdist(points, points) / length
    if kernel == "matern32":
        k = (1 + math.sqrt(3) * r) * torch.exp(-math.sqrt(3) * r)
    elif kernel == "squared_exponential":
        k = torch.exp(-0.5 * r**2)
    else:
        raise ValueError(
            f"unknown GP kernel {kernel!r}; choose 'matern32' or 'squared_exponential'"
        )
    return amplitude**2 * (k + jitter * torch.eye(k.shape[0], dtype=torch.float64))


def fit_gaussian_process(
    images: Tensor,
    grid: PixelGrid,
    lengths: Sequence[float],
    kernel: Literal["matern32", "squared_exponential"] = "matern32",
) -> tuple[GaussianSource, dict[str, float]]:
    """The Gaussian process of largest likelihood for training sources ``(n, Hs, Ws)`` among the
    given length scales (arcsec), with its amplitude at its maximum-likelihood value and the
    training mean image as its mean. Returns it and ``{"length", "amplitude", "log_likelihood"}``
    (mean per image)."""
    x = images.to(torch.float64).flatten(1)
    mean = x.mean(0)
    centred = x - mean
    d = x.shape[1]
    best = None
    for length in lengths:
        unit = gaussian_process_covariance(grid, 1.0, length, kernel)
        lam, Q = torch.linalg.eigh(unit)
        lam = lam.clamp_min(1e-12)
        quad = ((centred @ Q) ** 2 / lam).sum(1).mean()
        amp2 = float(quad / d)  # the amplitude's maximum-likelihood value
        loglik = float(
            -0.5 * (quad / amp2 + d * math.log(amp2) + lam.log().sum() + d * math.log(2 * math.pi))
        )
        if best is None or loglik > best[2]:
            best = (length, amp2, loglik)
    length, amp2, loglik = best
    cov = gaussian_process_covariance(grid, math.sqrt(amp2), length, kernel)
    info = {"length": length, "amplitude": math.sqrt(amp2), "log_likelihood": loglik}
    return GaussianSource(mean, cov, f"GP ({kernel}, length {length:g} arcsec)"), info


def empirical_gaussian(images: Tensor, shrinkage: float = 1e-3) -> GaussianSource:
    """The Gaussian with the mean and covariance of training sources ``(n, Hs, Ws)`` over their
    8 rotations and reflections, shrunk towards its diagonal by ``shrinkage`` (a sample
    covariance of ``8 n`` images in ``d`` dimensions is singular when ``8 n < d``)."""
    x = dihedral(images.to(torch.float64)).flatten(1)
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / (x.shape[0] - 1)
    cov = (1 - shrinkage) * cov + shrinkage * torch.diag(torch.diagonal(cov).clamp_min(1e-12))
    return GaussianSource(mean, cov, "empirical Gaussian")


def gaussian_source_posterior(
    prior: GaussianSource, matrix: Tensor, y: Tensor, noise_variance: Tensor | float
) -> tuple[GaussianSource, float]:
    """The exact posterior of a Gaussian source prior given ``y = A x + e``: ``A`` ``(m, d)``
    (:meth:`LensingOperator.matrix`), ``y`` ``(m,)``, noise variance scalar or ``(m,)``.
    Returns the posterior (float64) and the log evidence ``log p(y)``."""
    mean, cov, log_evidence = linear_gaussian_posterior(
        prior.mean, prior.cov, matrix, y, noise_variance
    )
    return GaussianSource(mean, cov, f"{prior.name} posterior"), float(log_evidence)


def gaussian_source_moments(
    prior: GaussianSource, matrix: Tensor, y: Tensor, noise_variance: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Mean and per-pixel standard deviation ``(d,)`` of the same exact posterior, without the
    ``(d, d)`` posterior covariance (four ``O(d^3)`` products instead of six).

    With ``M = A C``, ``S = M A^T + R = L L^T`` and ``W = L^-1 M``: the mean is
    ``mu + W^T L^-1 (y - A mu)`` and the variances ``diag(C) - sum_rows(W^2)``."""
    A = matrix.to(torch.float64)
    C = prior.cov.to(torch.float64)
    var = torch.as_tensor(noise_variance, dtype=torch.float64)
    M = A @ C
    S = M @ A.T
    S.diagonal().add_(var.expand(S.shape[0]) if var.ndim == 0 else var)
    L = torch.linalg.cholesky(S)
    W = torch.linalg.solve_triangular(L, M, upper=False)
    r = y.to(torch.float64) - A @ prior.mean
    white = torch.linalg.solve_triangular(L, r[:, None], upper=False)[:, 0]
    mean = prior.mean + W.T @ white
    variance = torch.diagonal(C) - (W**2).sum(0)
    return mean, variance.clamp_min(0).sqrt()


class _Scaled:
    """``x -> A(scale x)``: the observation of a prior in standardised units."""

    def __init__(self, operator: LensingOperator, scale: float) -> None:
        self.operator = operator
        self.scale = scale

    def __call__(self, z: Tensor) -> Tensor:
        return self.operator.observe(self.scale * z)


@dataclass
class SamplingConfig:
    """How posterior samples are drawn.

    Arguments:
        method: ``"mmps"`` (moment matching, Tweedie covariance by VJP, conjugate gradients) or
            ``"dps"`` (diffusion posterior sampling, the baseline).
        sampler: Any of :func:`appa.diffusion.make_sampler`'s names.
        steps: Sampler steps.
        corrections: Langevin corrections per step (``pc`` only).
        delta: Langevin step size (``pc`` only).
        iterations: Conjugate-gradient iterations per MMPS denoiser call.
        zeta: DPS guidance strength.
        schedule: Noise schedule name; ``sigma_min``, ``sigma_max`` in the prior's units
            (default: the range a prior is trained on by default).
        batch: Samples drawn together.
    """

    method: Method = "mmps"
    sampler: str = "pc"
    steps: int = 64
    corrections: int = 1
    delta: float = 0.1
    iterations: int = 8
    zeta: float = 1.0
    schedule: ScheduleName = "loglinear"
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    batch: int = 8


def sample_source_posterior(
    prior: Denoiser,
    operator: LensingOperator,
    image: Tensor,
    noise_variance: Tensor | float,
    samples: int,
    config: SamplingConfig | None = None,
    scale: float = 1.0,
    event_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Posterior source samples for an observed image, zero-shot from a prior denoiser.

    Arguments:
        prior: Denoiser of ``z = x / scale`` (a trained network, or an exact Gaussian prior).
        operator: The lensing operator ``A``.
        image: Observed image ``(H, W)`` (masked pixels are ignored; NaN allowed there).
        noise_variance: Pixel noise variance, scalar or ``(H, W)``, in the image's units.
        samples: Number of samples.
        config: :class:`SamplingConfig`.
        scale: Units of the prior: ``x = scale z``.
        event_shape: The prior's event shape (default ``(1, Hs, Ws)``).
        seed: Seed; batch ``k`` draws from ``seed + k``.

    Returns:
        Samples ``(samples, Hs, Ws)`` in the image's units.
    """
    config = config or SamplingConfig()
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    image = torch.as_tensor(image)
    if operator.mask is not None:
        image = torch.where(operator.mask, image, torch.zeros_like(image))
    observation = operator.observation(image.to(dtype), noise_variance)
    observation = GaussianObservation(
        y=observation.y,
        operator=_Scaled(operator, scale),
        noise_variance=observation.noise_variance,
        linear=True,
    )
    if config.method == "mmps":
        denoiser = MMPSDenoiser(prior, observation, solver="cg", iterations=config.iterations)
    elif config.method == "dps":
        denoiser = DPSDenoiser(prior, observation, zeta=config.zeta)
    else:
        raise ValueError(f"unknown posterior method {config.method!r}; choose 'mmps' or 'dps'")
    schedule = ScheduleConfig(
        kind=config.schedule, sigma_min=config.sigma_min, sigma_max=config.sigma_max
    ).build()
    options = {"corrections": config.corrections, "delta": config.delta}
    sampler = make_sampler(
        config.sampler,
        denoiser,
        schedule,
        config.steps,
        **(options if config.sampler == "pc" else {}),
    )
    shape = event_shape or (1, *operator.source_shape)
    out = []
    for k, start in enumerate(range(0, samples, config.batch)):
        count = min(config.batch, samples - start)
        z = sampler.sample(count, shape, seed=seed + k, dtype=dtype)
        out.append((scale * z).reshape(count, *operator.source_shape))
    return torch.cat(out)
