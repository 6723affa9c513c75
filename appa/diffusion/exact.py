"""Priors whose denoiser ``E[x | x_t]`` is closed form: references for tests and benchmarks.

All act on flat events of size ``d``: ``x_t`` has shape ``(B, *event)`` with ``prod(event) = d``.
Parameters are stored in float64; the denoisers compute in the dtype of their input and are
differentiable, so posterior denoisers can take JVPs and VJPs through them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from appa.diffusion.denoisers import expand_sigma

__all__ = [
    "GaussianMixturePrior",
    "GaussianPrior",
    "LowRankGaussianPrior",
    "linear_gaussian_posterior",
]


def _as_matrix_variance(noise_variance: Tensor | float, m: int) -> Tensor:
    var = torch.as_tensor(noise_variance, dtype=torch.float64)
    if var.ndim == 0:
        var = var.expand(m)
    if var.shape == (m,):
        return torch.diag(var)
    if var.shape == (m, m):
        return var
    raise ValueError(
        f"noise_variance must be a scalar, ({m},) or ({m}, {m}); got {tuple(var.shape)}"
    )


def linear_gaussian_posterior(
    mean: Tensor, cov: Tensor, A: Tensor, y: Tensor, noise_variance: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact posterior of ``x ~ N(mean, cov)`` given ``y = A x + e``, ``e ~ N(0, R)``.

    Arguments:
        mean: ``(d,)``; cov: ``(d, d)``; A: ``(m, d)``; y: ``(m,)``;
        noise_variance: scalar, ``(m,)`` (diagonal R) or ``(m, m)``.

    Returns:
        Posterior mean ``(d,)``, posterior covariance ``(d, d)`` and the log evidence
        ``log N(y | A mean, A cov A^T + R)`` (scalar), all float64.
    """
    mean, cov, A, y = (t.to(torch.float64) for t in (mean, cov, A, y))
    R = _as_matrix_variance(noise_variance, A.shape[0])
    S = A @ cov @ A.T + R
    L = torch.linalg.cholesky(S)
    K = torch.cholesky_solve(A @ cov, L).T  # cov A^T S^-1, (d, m)
    r = y - A @ mean
    post_mean = mean + K @ r
    post_cov = cov - K @ A @ cov
    post_cov = (post_cov + post_cov.T) / 2
    white = torch.linalg.solve_triangular(L, r[:, None], upper=False)[:, 0]
    log_evidence = (
        -0.5 * white.square().sum()
        - torch.log(torch.diagonal(L)).sum()
        - 0.5 * A.shape[0] * math.log(2 * math.pi)
    )
    return post_mean, post_cov, log_evidence


class GaussianPrior(nn.Module):
    """``N(mean, cov)`` with a dense covariance; ``E[x | x_t] = mean + cov (cov + s^2 I)^-1 (x_t -
    mean)``, computed through the eigendecomposition ``cov = Q diag(lam) Q^T``.

    Arguments:
        mean: ``(d,)``.
        cov: ``(d, d)``, symmetric positive semi-definite.
    """

    def __init__(self, mean: Tensor, cov: Tensor) -> None:
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float64)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        d = mean.shape[-1]
        if mean.shape != (d,) or cov.shape != (d, d):
            raise ValueError(
                f"mean must be (d,) and cov (d, d); got {tuple(mean.shape)}, {tuple(cov.shape)}"
            )
        cov = (cov + cov.T) / 2
        lam, Q = torch.linalg.eigh(cov)
        if lam.min() < -1e-8 * lam.abs().max():
            raise ValueError(
                f"cov is not positive semi-definite (smallest eigenvalue {lam.min():.3g})"
            )
        self.register_buffer("mean", mean)
        self.register_buffer("cov", cov)
        self.register_buffer("eigvals", lam.clamp(min=0))
        self.register_buffer("eigvecs", Q)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def forward(self, x_t: Tensor, sigma: Tensor, **_: object) -> Tensor:
        shape = x_t.shape
        x = x_t.reshape(shape[0], -1)
        s2 = expand_sigma(sigma, x) ** 2
        Q, lam, mu = (t.to(x.dtype) for t in (self.eigvecs, self.eigvals, self.mean))
        z = (x - mu) @ Q
        return (mu + (z * lam / (lam + s2)) @ Q.T).reshape(shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent draws, shape ``(n, d)``, float64."""
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.mean + (z * self.eigvals.sqrt()) @ self.eigvecs.T

    def posterior(self, A: Tensor, y: Tensor, noise_variance: Tensor | float) -> GaussianPrior:
        """The exact posterior given ``y = A x + e`` as a new :class:`GaussianPrior`."""
        mean, cov, _ = linear_gaussian_posterior(self.mean, self.cov, A, y, noise_variance)
        return GaussianPrior(mean, cov)


class LowRankGaussianPrior(nn.Module):
    """``N(mean, diag(D) + U U^T)``: the denoiser uses the Woodbury identity, ``O(B d r^2)``.

    Arguments:
        mean: ``(d,)``; diag: ``(d,)`` positive; factor: ``(d, r)``.
    """

    def __init__(self, mean: Tensor, diag: Tensor, factor: Tensor) -> None:
        super().__init__()
        mean, diag, factor = (torch.as_tensor(t, dtype=torch.float64) for t in (mean, diag, factor))
        d = mean.shape[0]
        if diag.shape != (d,) or factor.ndim != 2 or factor.shape[0] != d:
            raise ValueError("LowRankGaussianPrior needs mean (d,), diag (d,) and factor (d, r)")
        if (diag <= 0).any():
            raise ValueError("LowRankGaussianPrior needs a positive diagonal")
        self.register_buffer("mean", mean)
        self.register_buffer("diag", diag)
        self.register_buffer("factor", factor)

    @property
    def cov(self) -> Tensor:
        return torch.diag(self.diag) + self.factor @ self.factor.T

    def forward(self, x_t: Tensor, sigma: Tensor, **_: object) -> Tensor:
        shape = x_t.shape
        x = x_t.reshape(shape[0], -1)
        s2 = expand_sigma(sigma, x) ** 2
        mu, D, U = (t.to(x.dtype) for t in (self.mean, self.diag, self.factor))
        # E[x | x_t] = x_t - s^2 (Sigma + s^2 I)^-1 (x_t - mu), inverse by Woodbury
        inv_d = 1.0 / (D + s2)  # (B, d)
        v = (x - mu) * inv_d
        capacitance = torch.eye(U.shape[1], dtype=x.dtype, device=x.device) + torch.einsum(
            "dr,bd,dk->brk", U, inv_d, U
        )
        w = torch.linalg.solve(capacitance, (v @ U).unsqueeze(-1)).squeeze(-1)
        solved = v - inv_d * (w @ U.T)
        return (x - s2 * solved).reshape(shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        d, r = self.factor.shape
        z = torch.randn(n, d + r, generator=generator, dtype=torch.float64)
        return self.mean + z[:, :d] * self.diag.sqrt() + z[:, d:] @ self.factor.T

    def to_dense(self) -> GaussianPrior:
        return GaussianPrior(self.mean, self.cov)


class GaussianMixturePrior(nn.Module):
    """``sum_k w_k N(m_k, C_k)``; ``E[x | x_t] = sum_k r_k(x_t) E_k[x | x_t]`` with responsibilities
    ``r_k ~ w_k N(x_t | m_k, C_k + s^2 I)``.

    Arguments:
        weights: ``(K,)`` non-negative (normalised here).
        means: ``(K, d)``.
        covs: ``(K, d, d)`` full covariances, or ``(K,)`` isotropic variances (``C_k = c_k I``),
            or ``None`` for identity covariances.
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor | None = None) -> None:
        super().__init__()
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        K, d = means.shape
        if weights.shape != (K,) or (weights < 0).any() or not weights.sum() > 0:
            raise ValueError(f"weights must be ({K},), non-negative and not all zero")
        # a posterior can give far components exactly zero weight: log 0 = -inf is fine below
        self.register_buffer("log_weights", torch.log(weights / weights.sum()))
        self.register_buffer("means", means)
        if covs is None:
            covs = torch.ones(K, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        self.isotropic = covs.shape == (K,)
        if self.isotropic:
            if (covs <= 0).any():
                raise ValueError("isotropic variances must be positive")
            self.register_buffer("variances", covs)
        elif covs.shape == (K, d, d):
            covs = (covs + covs.transpose(-1, -2)) / 2
            lam, Q = torch.linalg.eigh(covs)
            self.register_buffer("eigvals", lam.clamp(min=0))
            self.register_buffer("eigvecs", Q)
        else:
            raise ValueError(
                f"covs must be None, ({K},) or ({K}, {d}, {d}); got {tuple(covs.shape)}"
            )

    @property
    def weights(self) -> Tensor:
        return self.log_weights.exp()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def covs(self) -> Tensor:
        """Component covariances ``(K, d, d)``."""
        if self.isotropic:
            eye = torch.eye(self.dim, dtype=torch.float64, device=self.means.device)
            return self.variances[:, None, None] * eye
        return self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(-1, -2)

    def forward(self, x_t: Tensor, sigma: Tensor, **_: object) -> Tensor:
        shape = x_t.shape
        x = x_t.reshape(shape[0], -1)
        d = x.shape[1]
        s2 = expand_sigma(sigma, x)[:, :, None] ** 2  # (B, 1, 1)
        m = self.means.to(x.dtype)
        diff = x[:, None, :] - m  # (B, K, d)
        if self.isotropic:
            c = self.variances.to(x.dtype)[None, :, None]  # (1, K, 1)
            total = c + s2  # (B, K, 1)
            log_lik = -0.5 * (diff.square().sum(-1, keepdim=True) / total + d * total.log())
            comp_means = m + c / total * diff
        else:
            lam = self.eigvals.to(x.dtype)[None]  # (1, K, d)
            Q = self.eigvecs.to(x.dtype)
            z = torch.einsum("bkd,kde->bke", diff, Q)
            total = lam + s2  # (B, K, d)
            log_lik = -0.5 * (z.square() / total + total.log()).sum(-1, keepdim=True)
            comp_means = m + torch.einsum("bke,kde->bkd", z * lam / total, Q)
        resp = torch.softmax(self.log_weights.to(x.dtype)[None, :, None] + log_lik, dim=1)
        return (resp * comp_means).sum(1).reshape(shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent draws, shape ``(n, d)``, float64."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        if self.isotropic:
            return self.means[k] + z * self.variances[k, None].sqrt()
        return self.means[k] + torch.einsum(
            "nd,ned->ne", z * self.eigvals[k].sqrt(), self.eigvecs[k]
        )

    def posterior(
        self, A: Tensor, y: Tensor, noise_variance: Tensor | float
    ) -> GaussianMixturePrior:
        """The exact posterior given ``y = A x + e``: again a Gaussian mixture."""
        means, covs, log_ev = [], [], []
        for k in range(self.means.shape[0]):
            mk, ck, lk = linear_gaussian_posterior(
                self.means[k], self.covs[k], A, y, noise_variance
            )
            means.append(mk)
            covs.append(ck)
            log_ev.append(lk)
        log_w = self.log_weights + torch.stack(log_ev)
        return GaussianMixturePrior(torch.softmax(log_w, 0), torch.stack(means), torch.stack(covs))
