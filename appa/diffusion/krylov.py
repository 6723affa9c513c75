"""Fixed-iteration Krylov solvers for batched linear systems ``A u = b``.

The operator acts on ``(B, m)`` tensors in the caller's dtype; the iterations themselves run in
``dtype`` (float64 by default). Every iteration runs regardless of convergence, so no value is
ever read back to the host and a GPU never waits; denominators are clamped so that a converged
system stays finite.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["assemble", "cg", "direct_solve", "gmres"]

Operator = Callable[[Tensor], Tensor]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1, keepdim=True)


def cg(A: Operator, b: Tensor, iterations: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Conjugate gradients for a symmetric positive (semi-)definite ``A``.

    Arguments:
        A: ``(B, m) -> (B, m)``.
        b: Right-hand side ``(B, m)``.
        iterations: Number of iterations (``m`` iterations solve exactly in exact arithmetic).

    Returns:
        ``u`` of shape ``(B, m)`` in the dtype of ``b``.
    """
    tiny = torch.finfo(dtype).tiny
    r = b.to(dtype)
    u = torch.zeros_like(r)
    p = r
    rr = _dot(r, r)
    for _ in range(iterations):
        Ap = A(p.to(b.dtype)).to(dtype)
        alpha = rr / _dot(p, Ap).clamp(min=tiny)
        u = u + alpha * p
        r = r - alpha * Ap
        rr_new = _dot(r, r)
        p = r + (rr_new / rr.clamp(min=tiny)) * p
        rr = rr_new
    return u.to(b.dtype)


def gmres(A: Operator, b: Tensor, iterations: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """GMRES (Arnoldi with modified Gram-Schmidt, least squares by QR) for any square ``A``.

    Same arguments and result as :func:`cg`.
    """
    eps = torch.finfo(dtype).eps
    r = b.to(dtype)
    beta = torch.linalg.vector_norm(r, dim=-1, keepdim=True)
    basis = [r / beta.clamp(min=eps)]
    H = r.new_zeros(r.shape[0], iterations + 1, iterations)
    for j in range(iterations):
        w = A(basis[j].to(b.dtype)).to(dtype)
        for i, v in enumerate(basis):
            h = _dot(w, v)
            H[:, i, j] = h[:, 0]
            w = w - h * v
        norm = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
        H[:, j + 1, j] = norm[:, 0]
        basis.append(w / norm.clamp(min=eps))
    V = torch.stack(basis[:iterations], dim=-1)  # (B, m, k)
    rhs = torch.zeros_like(H[:, :, 0])
    rhs[:, 0] = beta[:, 0]
    Q, R = torch.linalg.qr(H)  # reduced: (B, k+1, k), (B, k, k)
    # A Krylov space exhausted early leaves zero columns; the shift keeps R invertible and their
    # coefficients multiply zero basis vectors.
    R = R + eps * torch.eye(iterations, dtype=dtype, device=R.device)
    coef = torch.linalg.solve_triangular(R, (Q.transpose(-1, -2) @ rhs[..., None]), upper=True)
    return (V @ coef).squeeze(-1).to(b.dtype)


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
