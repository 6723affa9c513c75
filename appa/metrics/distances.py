"""Distances between distributions given by samples or moments."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gaussian_w2", "sliced_wasserstein"]


def _sqrtm_psd(matrix: Tensor) -> Tensor:
    lam, Q = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (Q * lam.clamp(min=0).sqrt()) @ Q.T


def gaussian_w2(mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor) -> float:
    """2-Wasserstein distance between ``N(mean_a, cov_a)`` and ``N(mean_b, cov_b)`` (closed form):
    ``W2^2 = |m_a - m_b|^2 + tr(C_a + C_b - 2 (C_b^1/2 C_a C_b^1/2)^1/2)``."""
    a, b = cov_a.to(torch.float64), cov_b.to(torch.float64)
    root_b = _sqrtm_psd(b)
    cross = _sqrtm_psd(root_b @ a @ root_b)
    w2 = (mean_a - mean_b).to(torch.float64).square().sum() + torch.trace(a + b - 2 * cross)
    return float(w2.clamp(min=0).sqrt())


def sliced_wasserstein(
    x: Tensor, y: Tensor, projections: int = 1024, seed: int = 0, p: int = 2
) -> float:
    """Sliced p-Wasserstein distance between two sample sets ``(n, d)`` and ``(n', d)``.

    Random unit directions (fixed by ``seed``); per direction the 1-D distance between empirical
    quantiles (on a common grid when ``n != n'``); averaged over directions, then ``1/p`` power.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need (n, d) and (n', d) samples, got {tuple(x.shape)}, {tuple(y.shape)}")
    x, y = x.to(torch.float64), y.to(torch.float64)
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], projections, generator=g, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    if px.shape[0] != py.shape[0]:
        n = max(px.shape[0], py.shape[0])
        q = (torch.arange(n, dtype=torch.float64, device=x.device) + 0.5) / n
        px = torch.quantile(px, q, dim=0)
        py = torch.quantile(py, q, dim=0)
    return float(((px - py).abs() ** p).mean() ** (1 / p))
