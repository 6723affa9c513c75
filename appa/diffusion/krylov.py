"""Fixed-iteration Krylov solvers for batched linear systems ``A u = b``.

The operator acts on ``(B, m)`` tensors in the caller's dtype; the iterations themselves run in
``dtype`` (float64 by default). Every iteration runs regardless of convergence, so no value is
ever read back to the host and a GPU never waits; denominators are clamped so that a converged
system stays finite, and CG stops a system's iterations at a direction of non-positive
curvature (an indefinite ``A``), keeping its iterate. Given a ``floor`` ``F`` whose curvature
``A`` must exceed (MMPS: the system ``Sigma_y + H Sigma_t H^T`` with ``F = Sigma_y``), CG also
stops where ``p.A p < p.F p``: a direction in which the model of ``A - F`` (there, a
covariance) is wrong, and in which a positive but tiny ``p.A p`` would take a step without
bound.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["assemble", "cg", "direct_solve", "gmres"]

Operator = Callable[[Tensor], Tensor]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1, keepdim=True)


def cg(
    A: Operator,
    b: Tensor,
    iterations: int,
    dtype: torch.dtype = torch.float64,
    floor: Operator | None = None,
    floor_tolerance: float = 1e-3,
) -> Tensor:
    """Conjugate gradients for a symmetric positive (semi-)definite ``A``.

    Arguments:
        A: ``(B, m) -> (B, m)``.
        b: Right-hand side ``(B, m)``.
        iterations: Number of iterations (``m`` iterations solve exactly in exact arithmetic).
        floor: ``F``, ``(B, m) -> (B, m)``, with ``A - F`` positive semi-definite when ``A`` is
            right; a direction with ``p.A p < (1 - floor_tolerance) p.F p`` ends that system's
            iterations. The tolerance absorbs rounding of ``A`` in the caller's dtype.

    Returns:
        ``u`` of shape ``(B, m)`` in the dtype of ``b``.
    """
    tiny = torch.finfo(dtype).tiny
    r = b.to(dtype)
    u = torch.zeros_like(r)
    p = r
    rr = _dot(r, r)
    active = torch.ones_like(rr, dtype=torch.bool)
    for _ in range(iterations):
        Ap = A(p.to(b.dtype)).to(dtype)
        pAp = _dot(p, Ap)
        # a direction of non-positive (or non-finite) curvature, where A is not positive definite
        # (MMPS's Tweedie covariance is a network's Jacobian), ends that system's iterations:
        # it keeps its iterate so far instead of a step of rr / tiny
        active = active & (pAp > 0)
        if floor is not None:
            pFp = _dot(p, floor(p.to(b.dtype)).to(dtype))
            active = active & (pAp >= (1 - floor_tolerance) * pFp)
        alpha = rr / pAp.clamp(min=tiny)
        u = torch.where(active, u + alpha * p, u)
        r = torch.where(active, r - alpha * Ap, r)
        rr_new = _dot(r, r)
        p = r + (rr_new / rr.clamp(min=tiny)) * p
        rr = rr_new
    return u.to(b.dtype)


def gmres(A: Operator, b: Tensor, iterations: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """GMRES for any square ``A``: Arnoldi with modified Gram-Schmidt, the Hessenberg
    least-squares problem reduced by Givens rotations as it grows, then one batched triangular
    solve. The small quantities are kept per sample as ``(B,)`` vectors, so nothing loops over
    the batch.

    Same arguments and result as :func:`cg`.
    """
    eps = torch.finfo(dtype).eps
    k = iterations
    r = b.to(dtype)
    beta = torch.linalg.vector_norm(r, dim=-1)
    basis = [r / beta.clamp(min=eps)[:, None]]
    zero = torch.zeros_like(beta)
    R = [[zero] * k for _ in range(k)]  # the rotated Hessenberg matrix, upper triangular
    cos: list[Tensor] = []
    sin: list[Tensor] = []
    g = [beta] + [zero] * k  # the rotated right-hand side beta e1
    for j in range(k):
        w = A(basis[j].to(b.dtype)).to(dtype)
        column = []
        for v in basis:
            h = torch.linalg.vecdot(w, v)
            w = w - h[:, None] * v
            column.append(h)
        norm = torch.linalg.vector_norm(w, dim=-1)
        basis.append(w / norm.clamp(min=eps)[:, None])
        for i in range(j):  # earlier rotations act on the new column
            upper, lower = column[i], column[i + 1]
            column[i] = cos[i] * upper - sin[i] * lower
            column[i + 1] = sin[i] * upper + cos[i] * lower
        # a Krylov space exhausted early gives rho ~ 0 and g ~ 0 there; the clamp keeps the
        # solve finite and those coefficients multiply zero basis vectors
        rho = torch.sqrt(column[j] ** 2 + norm**2).clamp(min=eps)
        cos.append(column[j] / rho)
        sin.append(-norm / rho)
        column[j] = rho
        g[j], g[j + 1] = cos[j] * g[j] - sin[j] * g[j + 1], sin[j] * g[j] + cos[j] * g[j + 1]
        for i in range(j + 1):
            R[i][j] = column[i]
    triangle = torch.stack([torch.stack(row, dim=-1) for row in R], dim=-2)  # (B, k, k)
    rhs = torch.stack(g[:k], dim=-1)[..., None]
    coef = torch.linalg.solve_triangular(triangle, rhs, upper=True)  # (B, k, 1)
    V = torch.stack(basis[:k], dim=-1)  # (B, m, k)
    return (V @ coef)[..., 0].to(b.dtype)


def assemble(A: Operator, like: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """Materialises the batched operator column by column (``m`` calls): ``(B, m, m)``.

    ``like`` is a ``(B, m)`` tensor giving the batch, size, dtype and device of the operator's
    input."""
    m = like.shape[-1]
    eye = torch.eye(m, dtype=like.dtype, device=like.device)
    columns = [A(eye[i].expand_as(like).contiguous()).to(dtype) for i in range(m)]
    return torch.stack(columns, dim=-1)


def direct_solve(A: Operator, b: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """Exact solve: materialises ``A`` (``m`` operator calls) and solves densely.

    Meant for small observation counts (a few hundred at most). Same result as :func:`cg`.
    """
    matrix = assemble(A, b, dtype)
    return torch.linalg.solve(matrix, b.to(dtype)[..., None]).squeeze(-1).to(b.dtype)
