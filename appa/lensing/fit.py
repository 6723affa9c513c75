"""Lens parameters from the image itself: the SIE + shear that maximises the evidence
``p(y | lens) = N(y | A mu, A C A^T + R)`` of a Gaussian source prior ``N(mu, C)``, with the
source integrated out (empirical Bayes; Suyu et al. 2006 did the same with regularised
sources). Sources are marginalised on a coarse grid, so one evaluation costs a ``d x d``
Cholesky factorisation (Woodbury, ``d`` source pixels) and a gradient by autograd through the
ray tracing; the fitted lens then conditions the diffusion posterior.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from appa.lensing.lenses import SIE, ExternalShear, Lens
from appa.lensing.operator import LensingOperator
from appa.lensing.posterior import GaussianSource

__all__ = ["LensFit", "fit_lens", "log_evidence"]

FIELDS = ("theta_e", "q", "phi", "x0", "y0", "gamma1", "gamma2")


def log_evidence(
    operator: LensingOperator,
    lenses: list[Lens],
    prior: GaussianSource,
    image: Tensor,
    noise_variance: Tensor | float,
    chunk: int = 256,
) -> Tensor:
    """``log N(y | A mu, A C A^T + R)`` for the operator's grids under ``lenses`` (differentiable
    in their parameters), computed in source space:
    ``-(r^T R^-1 r - b^T P^-1 b + log det P + log det C + log det R + m log 2 pi) / 2`` with
    ``P = C^-1 + A^T R^-1 A``, ``b = A^T R^-1 r``, ``r = y - A mu``."""
    Hs, Ws = operator.source_shape
    d = Hs * Ws
    dtype = torch.float64
    columns = []
    for start in range(0, d, chunk):
        stop = min(d, start + chunk)
        basis = torch.zeros(stop - start, d, dtype=dtype)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1
        columns.append(operator.flatten(operator(basis.reshape(-1, Hs, Ws), lenses=lenses)))
    A = torch.cat(columns).T  # (m, d)
    m = A.shape[0]
    y = operator.flatten(image.to(dtype))
    var = torch.as_tensor(noise_variance, dtype=dtype)
    var = var.expand(m) if var.ndim == 0 else operator.flatten(var)
    C = prior.cov.to(dtype)
    chol_c = torch.linalg.cholesky(C)
    c_inv = torch.cholesky_inverse(chol_c)
    r = y - A @ prior.mean.to(dtype)
    weighted = A / var[:, None]
    P = c_inv + A.T @ weighted
    chol_p = torch.linalg.cholesky((P + P.T) / 2)
    b = weighted.T @ r
    solved = torch.cholesky_solve(b[:, None], chol_p)[:, 0]
    return -0.5 * (
        (r**2 / var).sum()
        - b @ solved
        + 2 * torch.log(torch.diagonal(chol_p)).sum()
        + 2 * torch.log(torch.diagonal(chol_c)).sum()
        + torch.log(var).sum()
        + m * math.log(2 * math.pi)
    )


@dataclass
class LensFit:
    """A fitted SIE + shear: ``params`` (``theta_e``, ``q``, ``phi``, ``x0``, ``y0``, ``gamma1``,
    ``gamma2``) and the log evidence along the optimisation."""

    params: dict[str, float]
    history: list[float]

    def lenses(self) -> list[Lens]:
        p = self.params
        return [
            SIE(p["theta_e"], p["q"], p["phi"], p["x0"], p["y0"]),
            ExternalShear(p["gamma1"], p["gamma2"], p["x0"], p["y0"]),
        ]


def fit_lens(
    operator: LensingOperator,
    prior: GaussianSource,
    image: Tensor,
    noise_variance: Tensor | float,
    start: dict[str, float],
    steps: int = 60,
    lr: float = 0.01,
    log: Callable[[str], None] | None = None,
) -> LensFit:
    """Maximises :func:`log_evidence` over an SIE + external shear (sharing one centre) from
    ``start`` with Adam (learning rate ``lr`` decaying to a tenth); returns the parameters of
    the best evaluation. ``q`` is kept in ``(0.05, 1)`` and ``theta_e`` positive by
    reparametrisation. ``operator`` fixes the grids, PSF and mask (its own lenses are ignored;
    a coarse source grid keeps each step cheap)."""
    missing = [k for k in FIELDS if k not in start]
    if missing:
        raise ValueError(f"lens fit start misses {missing}")
    f64 = torch.float64
    q0 = min(max(start["q"], 0.06), 0.99)
    free = {
        "log_theta_e": torch.tensor(math.log(start["theta_e"]), dtype=f64),
        "logit_q": torch.tensor(math.log((q0 - 0.05) / (1 - q0)), dtype=f64),
        **{k: torch.tensor(start[k], dtype=f64) for k in ("phi", "x0", "y0", "gamma1", "gamma2")},
    }
    for t in free.values():
        t.requires_grad_(True)
    optimiser = torch.optim.Adam(list(free.values()), lr=lr)

    def params() -> dict[str, Tensor]:
        return {
            "theta_e": free["log_theta_e"].exp(),
            "q": 0.05 + 0.95 * torch.sigmoid(free["logit_q"]),
            **{k: free[k] for k in ("phi", "x0", "y0", "gamma1", "gamma2")},
        }

    history = []
    best = (-math.inf, None)
    for step in range(steps):
        p = params()
        lenses = [
            SIE(p["theta_e"], p["q"], p["phi"], p["x0"], p["y0"]),
            ExternalShear(p["gamma1"], p["gamma2"], p["x0"], p["y0"]),
        ]
        value = log_evidence(operator, lenses, prior, image, noise_variance)
        history.append(float(value.detach()))
        if history[-1] > best[0]:
            best = (history[-1], {k: float(v.detach()) for k, v in p.items()})
        optimiser.zero_grad()
        (-value).backward()
        # cosine decay to a tenth: large first moves, then settling into the maximum
        for group in optimiser.param_groups:
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        optimiser.step()
        if log is not None and (step % 10 == 0 or step == steps - 1):
            log(
                f"lens fit step {step}: log evidence {history[-1]:.2f}, theta_e "
                f"{float(p['theta_e'].detach()):.4f}"
            )
    return LensFit(best[1], history)
