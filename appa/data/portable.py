"""Floating-point results that are the same bits on every machine.

numpy's transcendental ufuncs (``sin``, ``exp``, ``log``, ``power`` ...) dispatch at run time
to SIMD kernels chosen for the CPU (AVX2, AVX-512, ...) or fall back to the C library, and BLAS
kernels, ``einsum`` and FFTs change their order of operations, and their use of fused
multiply-add, with the vector width and the library build. Each gives results a few units in the
last place apart from machine to machine, and a chaotic model turns such a difference into other
weather within weeks.

IEEE 754 fixes the result of the basic operations (``+ - * /`` and ``sqrt``, correctly rounded)
and of the exact ones (``rint``, ``floor``, ``ldexp``, ``frexp``, comparisons, ``abs``), and
numpy applies one ufunc at a time (never fused), so everything here is built from those alone:

- elementary functions (:func:`sin`, :func:`cos`, :func:`exp`, :func:`log`, :func:`power`) by
  argument reduction and fixed polynomials, accurate to a few units in the last place;
- Gauss-Legendre nodes and weights by Newton's method on the three-term recurrence;
- Gaussian variates from a ``numpy.random.Generator``'s integer-exact uniforms;
- matrix products made exact (:class:`ExactMatrix`): both operands are split into integer-valued
  slices, small enough that every product and partial sum inside BLAS is exactly representable,
  so whatever order, blocking or fused multiply-add a BLAS kernel uses, each slice product is
  the same; the slice products are then combined in a fixed order.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "ExactMatrix",
    "cos",
    "exp",
    "gauss_legendre",
    "log",
    "power",
    "sin",
    "standard_normal",
]

PI = 3.141592653589793

# Cody-Waite splits of pi/2 and ln 2 (the leading parts have trailing zero bits, so that k times
# them is exact for the |k| allowed below).
_PIO2_1 = 1.57079632673412561417e00  # first 33 bits of pi/2
_PIO2_2 = 6.07710050630396597660e-11  # next 33 bits
_PIO2_3 = 2.02226624879595063154e-21  # the rest
_TWO_OVER_PI = 6.36619772367581382433e-01
_LN2_HI = 6.93147180369123816490e-01  # first 32 bits of ln 2
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_SQRT_HALF = 0.7071067811865476
_MAX_REDUCED = 2.0**19  # |x| bound for sin and cos (k * _PIO2_1 stays exact)

# Taylor coefficients, each a correctly rounded quotient of integers.
_SIN = [(-1) ** k / math.factorial(2 * k + 1) for k in range(1, 11)]  # x^3 ... x^21
_COS = [(-1) ** k / math.factorial(2 * k) for k in range(2, 12)]  # x^4 ... x^22
_EXP = [1 / math.factorial(k) for k in range(2, 18)]  # x^2 ... x^17
_ATANH = [1 / (2 * k + 1) for k in range(1, 14)]  # s^3 ... s^27 (over s)


def _horner(z: NDArray, coefficients: list[float]) -> NDArray:
    """``c0 + z (c1 + z (c2 + ...))`` with separate multiplies and adds."""
    out = np.full_like(z, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        out = out * z + c
    return out


def _reduce_quarter_turns(x: NDArray) -> tuple[NDArray, NDArray]:
    """``x = k pi/2 + r`` with ``|r| <= pi/4`` (about); returns ``(r, k mod 4)``."""
    if x.size and not np.all(np.abs(x) < _MAX_REDUCED):
        raise ValueError(f"sin/cos arguments must lie within +-{_MAX_REDUCED:g} radians")
    k = np.rint(x * _TWO_OVER_PI)
    r = ((x - k * _PIO2_1) - k * _PIO2_2) - k * _PIO2_3
    quadrant = (k - 4.0 * np.floor(k * 0.25)).astype(np.int64)
    return r, quadrant


def _sin_cos_kernels(r: NDArray) -> tuple[NDArray, NDArray]:
    z = r * r
    s = r + r * (z * _horner(z, _SIN))
    c = (1.0 - 0.5 * z) + (z * z) * _horner(z, _COS)
    return s, c


def sin(x: ArrayLike) -> NDArray:
    """``sin(x)`` (x in radians, ``|x| < 2^19``), the same bits on every machine."""
    x = np.asarray(x, dtype=np.float64)
    r, q = _reduce_quarter_turns(x)
    s, c = _sin_cos_kernels(r)
    return np.choose(q, [s, c, -s, -c])


def cos(x: ArrayLike) -> NDArray:
    """``cos(x)`` (x in radians, ``|x| < 2^19``), the same bits on every machine."""
    x = np.asarray(x, dtype=np.float64)
    r, q = _reduce_quarter_turns(x)
    s, c = _sin_cos_kernels(r)
    return np.choose(q, [c, -s, -c, s])


def exp(x: ArrayLike) -> NDArray:
    """``exp(x)``, the same bits on every machine (0 below -745, inf above 709.8)."""
    x = np.asarray(x, dtype=np.float64)
    clipped = np.where(np.isnan(x), 0.0, np.clip(x, -746.0, 710.0))
    k = np.rint(clipped * _INV_LN2)
    r = (clipped - k * _LN2_HI) - k * _LN2_LO
    p = 1.0 + (r + (r * r) * _horner(r, _EXP))
    # two steps, so that 2^k for k near the ends of the range neither overflows nor underflows
    # before the last, correctly rounded scaling
    half = np.floor(k * 0.5)
    with np.errstate(over="ignore"):
        out = np.ldexp(np.ldexp(p, half.astype(np.int64)), (k - half).astype(np.int64))
    return np.where(np.isnan(x), x, out)


def log(x: ArrayLike) -> NDArray:
    """Natural logarithm of ``x > 0`` (NaN below 0, -inf at 0), the same bits on every machine."""
    x = np.asarray(x, dtype=np.float64)
    m, e = np.frexp(np.where((x > 0) & (x < np.inf), x, 1.0))
    small = m < _SQRT_HALF
    m = np.where(small, m * 2.0, m)
    e = (e - small).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    log_m = 2.0 * s + (2.0 * s) * (z * _horner(z, _ATANH))
    out = e * _LN2_HI + (log_m + e * _LN2_LO)
    out = np.where(x == 0, -np.inf, out)
    out = np.where(x == np.inf, np.inf, out)
    return np.where((x < 0) | np.isnan(x), np.nan, out)


def power(x: ArrayLike, a: float) -> NDArray:
    """``x ** a`` for ``x > 0``, as ``exp(a log x)``, the same bits on every machine."""
    return exp(a * log(x))


def gauss_legendre(n: int) -> tuple[NDArray, NDArray]:
    """Gauss-Legendre nodes in ``(-1, 1)`` (ascending, exactly antisymmetric) and weights
    (summing to 2), by Newton's method on the Legendre recurrence."""
    if n < 1:
        raise ValueError(f"need at least one node, got {n}")
    half = (n + 1) // 2
    i = np.arange(1, half + 1, dtype=np.float64)
    x = cos(PI * (i - 0.25) / (n + 0.5))  # descending, positive half
    for _ in range(12):  # quadratic convergence: 4 suffice from this guess; more are harmless
        p, dp = _legendre_and_derivative(x, n)
        x = x - p / dp
    if n % 2:
        x[-1] = 0.0
    _, dp = _legendre_and_derivative(x, n)
    w = 2.0 / ((1.0 - x * x) * (dp * dp))
    nodes = np.concatenate([-x, x[: n // 2][::-1]])
    if n % 2:
        nodes[half - 1] = 0.0  # not -0.0
    weights = np.concatenate([w, w[: n // 2][::-1]])
    return nodes, weights


def _legendre_and_derivative(x: NDArray, n: int) -> tuple[NDArray, NDArray]:
    p_prev, p = np.ones_like(x), x.copy()
    if n == 0:
        return p_prev, np.zeros_like(x)
    for k in range(2, n + 1):
        p_prev, p = p, ((2 * k - 1) * x * p - (k - 1) * p_prev) / k
    return p, n * (x * p - p_prev) / (x * x - 1.0)


def standard_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> NDArray:
    """Standard normal variates by the Box-Muller transform of ``rng``'s uniforms.

    The uniforms are exact (53 random bits scaled by a power of 2), and the transform uses only
    the functions of this module, whereas ``Generator.standard_normal`` calls the C library's
    ``exp`` and ``log`` in its rare slow paths.
    """
    size = math.prod(shape)
    u = rng.random((2, (size + 1) // 2))
    radius = np.sqrt(-2.0 * log(1.0 - u[0]))  # 1 - u in (0, 1]
    angle = (2.0 * PI) * u[1]
    z = np.concatenate([radius * cos(angle), radius * sin(angle)])
    return z[:size].reshape(shape)


class ExactMatrix:
    """A fixed matrix ``W`` (``(..., K, N)``) prepared for products ``x @ W`` that are the same
    bits on every machine and with every BLAS.

    ``W`` is rounded once to an integer-valued matrix with a power-of-2 scale per column, and
    each ``x`` is split into two integer-valued slices with a power-of-2 scale per row; the bit
    budgets leave ``log2 K`` bits of headroom below 2^53, so every product and partial sum
    inside BLAS is an exactly representable integer, which any summation order, blocking or
    fused multiply-add computes exactly. The two slice products come from one BLAS call and are
    combined in a fixed order. The result is ``x @ W`` to about ``2^-31`` (5e-10) of the
    largest terms of each sum, for entries of ``x`` and ``W`` between about ``2^-900`` and
    ``2^900``.

    Arguments:
        w: Real matrix or stack of matrices ``(..., K, N)``; ``x`` of :meth:`__rmatmul__`
            broadcasts against its leading dimensions.
    """

    __array_ufunc__ = None  # so that ``ndarray @ ExactMatrix`` calls :meth:`__rmatmul__`

    def __init__(self, w: ArrayLike) -> None:
        w = np.array(w, dtype=np.float64)
        if w.ndim < 2 or not np.all(np.isfinite(w)):
            raise ValueError("ExactMatrix needs a finite (..., K, N) matrix")
        K = w.shape[-2]
        budget = 53 - math.ceil(math.log2(max(K, 2)))
        # x carries two slices of x_bits: balanced precisions of x (2 x_bits) and W (w_bits)
        self.x_bits = budget // 3
        self.w_bits = budget - self.x_bits
        self.matrix = w
        self.shape = w.shape
        _, e = np.frexp(np.abs(w).max(axis=-2, keepdims=True))  # (..., 1, N)
        self._w = np.rint(np.ldexp(w, self.w_bits - e))
        self._column_scale = np.ldexp(1.0, e - (self.x_bits + self.w_bits))

    def __rmatmul__(self, x: ArrayLike) -> NDArray:
        """``x @ W`` for real ``x`` of shape ``(..., M, K)``."""
        x = np.asarray(x, dtype=np.float64)
        K, N = self.shape[-2:]
        if x.shape[-1] != K:
            raise ValueError(f"x @ W: x has {x.shape[-1]} columns, W has {K} rows")
        shape = x.shape
        if len(self.shape) == 2:  # one product for every row of every leading index
            x = x.reshape(-1, K)
        M = x.shape[-2]
        # Multiplying by powers of 2 is exact (as ldexp, and faster).
        _, e = np.frexp(np.abs(x).max(axis=-1, keepdims=True))  # (..., M, 1)
        slices = np.empty((*x.shape[:-2], 2 * M, K))
        scaled = x * np.ldexp(1.0, self.x_bits - e)
        high = np.rint(scaled, out=slices[..., :M, :])
        scaled -= high
        scaled *= 2.0**self.x_bits
        np.rint(scaled, out=slices[..., M:, :])
        products = slices @ self._w  # (..., 2M, N): the high slice's, then the low one's
        out = products[..., M:, :] * 2.0**-self.x_bits
        out += products[..., :M, :]
        out *= self._column_scale
        out *= np.ldexp(1.0, e)
        return out.reshape(*shape[:-1], N)
