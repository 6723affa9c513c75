"""Posterior denoisers: ``E[x | x_t, y]`` from a prior denoiser and an observation.

Each wraps a prior denoiser ``D(x_t, sigma)`` and a :class:`GaussianObservation` ``y = A(x) + e``
and is itself a denoiser, so any sampler runs it. Under the VE perturbation the exact posterior
denoiser is ``E[x | x_t] + sigma^2 grad_{x_t} log p(y | x_t)``; the methods differ in how they
approximate ``p(y | x_t)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from appa.diffusion.denoisers import Denoiser, expand_sigma
from appa.diffusion.krylov import assemble, cg, gmres

__all__ = [
    "DPSDenoiser",
    "DiagonalGaussianDenoiser",
    "GaussianObservation",
    "MMPSDenoiser",
]

Operator = Callable[[Tensor], Tensor]


@dataclass
class GaussianObservation:
    """An observation ``y = A(x) + e`` with Gaussian noise ``e ~ N(0, Sigma_y)``.

    Arguments:
        y: Observed values, ``(m,)`` (shared by the batch) or ``(B, m)`` (one per sample).
        operator: ``A``, differentiable, ``(B, *event) -> (B, m)``.
        noise_variance: Diagonal of ``Sigma_y``: a scalar, ``(m,)`` or ``(B, m)``. Exclusive with
            ``noise_covariance``.
        noise_covariance: ``v -> Sigma_y v`` on ``(B, m)``, for correlated noise.
        linear: Whether ``A`` is linear, so that its Jacobian-vector product is ``A(v)`` itself
            (saves a forward-mode pass per solver iteration).
    """

    y: Tensor
    operator: Operator
    noise_variance: Tensor | float | None = None
    noise_covariance: Operator | None = None
    linear: bool = False

    def __post_init__(self) -> None:
        if (self.noise_variance is None) == (self.noise_covariance is None):
            raise ValueError("give exactly one of noise_variance and noise_covariance")
        self.y = torch.as_tensor(self.y)
        if self.y.ndim not in (1, 2):
            raise ValueError(f"y must be (m,) or (B, m), got shape {tuple(self.y.shape)}")
        if not torch.isfinite(self.y).all():
            raise ValueError("y contains NaN or infinite values")
        if self.noise_variance is not None:
            var = torch.as_tensor(self.noise_variance, dtype=self.y.dtype)
            if not (var > 0).all():
                raise ValueError("noise_variance must be positive")
            self.noise_variance = var

    @classmethod
    def from_matrix(
        cls, A: Tensor, y: Tensor, noise_variance: Tensor | float
    ) -> GaussianObservation:
        """A linear observation ``y = A x + e`` with ``A`` of shape ``(m, d)`` on flat events."""

        def operator(x: Tensor) -> Tensor:
            return x.reshape(x.shape[0], -1) @ A.to(x.dtype).T

        return cls(y=y, operator=operator, noise_variance=noise_variance, linear=True)

    def residual(self, y_hat: Tensor) -> Tensor:
        """``y - y_hat`` for predictions ``(B, m)``."""
        return self.y.to(y_hat) - y_hat

    def noise_cov(self, v: Tensor) -> Tensor:
        """``Sigma_y v`` for ``v`` of shape ``(B, m)``."""
        if self.noise_covariance is not None:
            return self.noise_covariance(v)
        return self.noise_variance.to(v) * v

    def noise_precision(self, v: Tensor) -> Tensor:
        """``Sigma_y^-1 v`` (diagonal noise only)."""
        if self.noise_variance is None:
            raise ValueError("this posterior denoiser needs a diagonal noise_variance")
        return v / self.noise_variance.to(v)


def _check_prediction(y_hat: Tensor, obs: GaussianObservation) -> None:
    if y_hat.ndim != 2 or y_hat.shape[-1] != obs.y.shape[-1]:
        raise ValueError(
            f"operator returned shape {tuple(y_hat.shape)}; "
            f"expected (B, {obs.y.shape[-1]}) to match y"
        )


class _Guided(nn.Module):
    def __init__(self, prior: Denoiser, observation: GaussianObservation) -> None:
        super().__init__()
        self.prior = prior
        self.observation = observation

    def _predict(self, x_t: Tensor, sigma: Tensor, cond: dict[str, Any]):
        x_t = x_t.detach().requires_grad_(True)
        x_hat = self.prior(x_t, sigma, **cond)
        y_hat = self.observation.operator(x_hat)
        _check_prediction(y_hat, self.observation)
        return x_t, x_hat, y_hat


class MMPSDenoiser(_Guided):
    """Moment-matching posterior sampling (Rozet et al. 2024).

    ``p(x | x_t) ~ N(x_hat, Sigma_t)`` with Tweedie's covariance ``Sigma_t = sigma^2 dx_hat/dx_t``
    gives ``E[x | x_t, y] = x_hat + Sigma_t A^T (Sigma_y + A Sigma_t A^T)^-1 (y - A(x_hat))``, where
    ``A`` is the Jacobian of the operator at ``x_hat``. ``Sigma_t A^T u`` is one VJP through the
    operator and the denoiser together; ``A v`` is a JVP (or ``A(v)`` for linear operators).

    Arguments:
        prior: The prior denoiser.
        observation: The observation.
        solver: ``"cg"`` (symmetric positive definite systems; a system's iterations end
            where its curvature falls below the noise's), ``"gmres"`` or ``"direct"``
            (exact, materialises the ``m x m`` system; for small ``m``).
        iterations: Krylov iterations (ignored by ``"direct"``).
        covariance: ``"tweedie"`` (the denoiser's Jacobian) or ``"heuristic"``:
            ``Sigma_t = sigma^2 s_d^2 / (sigma^2 + s_d^2) I``, the covariance of a Gaussian prior
            with variance ``s_d^2``; no VJP through the denoiser, much cheaper, less accurate.
        sigma_data: ``s_d`` of the heuristic.
    """

    def __init__(
        self,
        prior: Denoiser,
        observation: GaussianObservation,
        solver: Literal["cg", "gmres", "direct"] = "cg",
        iterations: int = 4,
        covariance: Literal["tweedie", "heuristic"] = "tweedie",
        sigma_data: float = 1.0,
    ) -> None:
        super().__init__(prior, observation)
        if solver not in ("cg", "gmres", "direct"):
            raise ValueError(f"unknown solver {solver!r}; choose 'cg', 'gmres' or 'direct'")
        if covariance not in ("tweedie", "heuristic"):
            raise ValueError(f"unknown covariance {covariance!r}; choose 'tweedie' or 'heuristic'")
        if solver != "direct" and iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.solver = solver
        self.iterations = iterations
        self.covariance = covariance
        self.sigma_data = sigma_data

    def forward(self, x_t: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        return self.moments(x_t, sigma, **cond)[0]

    def moments(
        self, x_t: Tensor, sigma: Tensor, log_likelihood: bool = False, **cond: Any
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The posterior denoiser, the prior denoiser and, on request (``solver="direct"``
        only), ``log N(y | A(x_hat), Sigma_y + A Sigma_t A^T)``, MMPS's approximation of
        ``log p(y | x_t)``; shapes ``(B, *event)``, ``(B, *event)``, ``(B,)``."""
        if log_likelihood and self.solver != "direct":
            raise ValueError("the MMPS log-likelihood needs solver='direct'")
        obs = self.observation
        var_t = expand_sigma(sigma, x_t) ** 2
        with torch.enable_grad():
            x_t, x_hat, y_hat = self._predict(x_t, sigma, cond)
        x_lin = x_hat.detach()

        if self.covariance == "tweedie":

            def cov_At(u: Tensor, retain: bool = True) -> Tensor:
                return var_t * torch.autograd.grad(y_hat, x_t, u, retain_graph=retain)[0]
        else:
            var_heur = var_t * self.sigma_data**2 / (var_t + self.sigma_data**2)

            def cov_At(u: Tensor, retain: bool = True) -> Tensor:
                return var_heur * torch.autograd.grad(y_hat, x_hat, u, retain_graph=retain)[0]

        if obs.linear:
            jvp = obs.operator
        else:

            def jvp(v: Tensor) -> Tensor:
                return torch.func.jvp(obs.operator, (x_lin,), (v,))[1]

        def system(u: Tensor) -> Tensor:
            return obs.noise_cov(u) + jvp(cov_At(u))

        r = obs.residual(y_hat.detach())
        log_lik = None
        if self.solver == "cg":
            # a Tweedie covariance of a network can be indefinite in some direction; there the
            # system's curvature falls below the noise's and CG would step without bound
            u = cg(system, r, self.iterations, floor=obs.noise_cov)
        elif self.solver == "gmres":
            u = gmres(system, r, self.iterations)
        else:
            matrix = assemble(system, r)
            if log_likelihood:
                # a network's Jacobian is only nearly symmetric; the likelihood uses the
                # symmetric part, which is what Tweedie's covariance is
                chol = torch.linalg.cholesky((matrix + matrix.transpose(-1, -2)) / 2)
                r64 = r.to(chol.dtype)[..., None]
                u64 = torch.cholesky_solve(r64, chol)[..., 0]
                log_lik = (
                    -0.5 * (r64[..., 0] * u64).sum(-1)
                    - torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
                    - 0.5 * r.shape[-1] * math.log(2 * math.pi)
                )
                u = u64.to(r.dtype)
            else:
                u = torch.linalg.solve(matrix, r.to(matrix.dtype)[..., None])[..., 0].to(r.dtype)
        return x_lin + cov_At(u, retain=False), x_lin, log_lik


class DPSDenoiser(_Guided):
    """Diffusion posterior sampling (Chung et al. 2023) as a denoiser.

    ``E[x | x_t, y] ~ x_hat - zeta sigma^2 grad_{x_t} ||Sigma_y^-1/2 (y - A(x_hat))||``: the
    Gaussian log-likelihood gradient normalised by the residual norm, per sample (never over the
    batch, so a sample's result does not depend on the others).

    Arguments:
        zeta: Guidance strength.
    """

    def __init__(self, prior: Denoiser, observation: GaussianObservation, zeta: float = 1.0):
        super().__init__(prior, observation)
        self.zeta = zeta

    def forward(self, x_t: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        var_t = expand_sigma(sigma, x_t) ** 2
        with torch.enable_grad():
            x_t, x_hat, y_hat = self._predict(x_t, sigma, cond)
            r = self.observation.residual(y_hat)
            white = r * self.observation.noise_precision(torch.ones_like(r)).sqrt()
            norms = torch.linalg.vector_norm(white, dim=-1)
            (grad,) = torch.autograd.grad(norms.sum(), x_t)
        return x_hat.detach() - self.zeta * var_t * grad


class DiagonalGaussianDenoiser(_Guided):
    """The diagonal Gaussian approximation of score-based data assimilation (Rozet & Louppe 2023):
    ``p(y | x_t) ~ N(y | A(x_hat), Sigma_y + gamma sigma^2 I)``.

    ``gamma sigma^2 I`` stands for ``A Sigma_t A^T``; it is right when the operator has unit gain
    and the data unit variance. Too small a ``gamma`` for the problem makes the guidance overshoot
    and diverge (its update multiplies the residual by ``~ |A Sigma_t A^T| / (gamma sigma^2)``).

    Arguments:
        gamma: Scale of the prior's contribution to the observation-space variance.
    """

    def __init__(self, prior: Denoiser, observation: GaussianObservation, gamma: float = 1.0):
        super().__init__(prior, observation)
        self.gamma = gamma

    def forward(self, x_t: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        var_t = expand_sigma(sigma, x_t) ** 2
        with torch.enable_grad():
            x_t, x_hat, y_hat = self._predict(x_t, sigma, cond)
        r = self.observation.residual(y_hat.detach())
        obs_var = self.observation.noise_variance.to(r) + self.gamma * var_t.reshape(-1, 1)
        (grad,) = torch.autograd.grad(y_hat, x_t, r / obs_var)
        return x_hat.detach() + var_t * grad
