"""Spherical-harmonic transforms on a sphere, in numpy, for the toy Earth's spectral solver.

Fields are expanded in fully normalised associated Legendre functions ``P_l^m(mu)`` (``mu`` =
sin(latitude), ``int_{-1}^{1} P_l^m^2 dmu = 1``) times ``exp(i m lambda)``, with a triangular
truncation ``T`` (``0 <= m <= l <= T``). Spectral arrays have shape ``(..., T + 1, T + 1)``
indexed ``[m, l]`` (entries with ``l < m`` are zero). The model works on a Gaussian grid, where
the transforms are exact for band-limited fields; the same coefficients can be synthesised on
any other latitudes (e.g. the equiangular cell centres of WeatherBench2 grids) exactly.

The transforms give the same bits on every machine: the Gaussian latitudes come from
:func:`appa.data.portable.gauss_legendre`, and the Legendre and Fourier sums are exact products
(:class:`appa.data.portable.ExactMatrix`, a discrete Fourier transform by matrix instead of an
FFT), so that a chaotic model built on them runs the same trajectory on any CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from appa.data.portable import PI, ExactMatrix, cos, gauss_legendre, sin

__all__ = ["Basis", "SphericalHarmonics", "band_limit_projection", "legendre_functions"]


def legendre_functions(mu: NDArray, lmax: int, mmax: int) -> NDArray:
    """Fully normalised ``P_l^m(mu)``, shape ``(mmax + 1, lmax + 1, len(mu))`` (zero for l < m).

    Normalised so that ``int_{-1}^{1} P_l^m(mu)^2 dmu = 1``; stable three-term recursion in l.
    """
    mu = np.asarray(mu, dtype=np.float64)
    s = np.sqrt(np.clip(1.0 - mu * mu, 0.0, None))
    P = np.zeros((mmax + 1, lmax + 1, mu.size))
    pmm = np.full(mu.size, np.sqrt(0.5))
    for m in range(mmax + 1):
        if m > 0:
            pmm = np.sqrt((2 * m + 1) / (2 * m)) * s * pmm
        if m > lmax:
            break
        P[m, m] = pmm
        if m + 1 <= lmax:
            P[m, m + 1] = np.sqrt(2 * m + 3) * mu * pmm
        for l in range(m + 2, lmax + 1):
            P[m, l] = (mu * P[m, l - 1] - _eps(l - 1, m) * P[m, l - 2]) / _eps(l, m)
    return P


def band_limit_projection(latitude: NDArray, truncation: int) -> NDArray:
    """Per zonal wavenumber ``m <= T``, the ``(lat, lat)`` matrix that projects a row of
    Fourier coefficients onto ``P_l^m(sin(latitude))``, ``m <= l <= T``: least squares with
    cell-area weights, so fields synthesised from such harmonics at these latitudes pass
    unchanged. Returns ``(T + 1, lat, lat)``.

    Raises:
        ValueError: when there are too few latitudes for degree ``T`` (the projection onto
            ``T + 1`` functions of latitude at ``m = 0`` needs ``lat > T``).
    """
    latitude = np.asarray(latitude, dtype=np.float64)
    T = int(truncation)
    if latitude.ndim != 1 or latitude.size <= T:
        raise ValueError(f"band limit T{T} needs more than {T} latitudes, got {latitude.size}")
    edges = np.concatenate([[-90.0], (latitude[1:] + latitude[:-1]) / 2, [90.0]])
    w = np.abs(np.diff(np.sin(np.radians(edges))))
    P = legendre_functions(np.sin(np.radians(latitude)), T, T)
    out = np.zeros((T + 1, latitude.size, latitude.size))
    for m in range(T + 1):
        B = P[m, m:].T  # (lat, T + 1 - m)
        out[m] = B @ np.linalg.solve(B.T @ (w[:, None] * B), B.T * w[None])
    return out


def _eps(l: int | NDArray, m: int | NDArray) -> NDArray:
    """``sqrt((l^2 - m^2) / (4 l^2 - 1))``, from ``mu P_{l-1} = eps_l P_l + eps_{l-1} P_{l-2}``."""
    l = np.asarray(l, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = np.sqrt(np.clip(l * l - m * m, 0.0, None) / (4 * l * l - 1))
    return np.nan_to_num(e)


@dataclass(frozen=True)
class Basis:
    """``P_l^m`` and ``H_l^m = (1 - mu^2) dP_l^m/dmu`` at some latitudes, each
    ``(T+1, T+1, nlat)`` indexed ``[m, l, lat]``, with their exact products."""

    P: NDArray
    H: NDArray
    exact_P: ExactMatrix = field(init=False, repr=False)
    #: ``[P | H]`` along latitude, ``(T+1, T+1, 2 nlat)``: both syntheses in one product
    exact_PH: ExactMatrix = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exact_P", ExactMatrix(self.P))
        object.__setattr__(self, "exact_PH", ExactMatrix(np.concatenate([self.P, self.H], -1)))


class SphericalHarmonics:
    """Transforms between a ``(nlat, nlon)`` grid and triangular-truncation-``T`` coefficients.

    Arguments:
        truncation: ``T``; aliasing-free quadratic products need ``nlon >= 3 T + 1``.
        nlat: Number of Gaussian latitudes of the transform grid (default ``nlon // 2``).
        nlon: Number of equally spaced longitudes starting at 0 (default ``3 T + 1`` rounded up
            to an even number).
        radius: Sphere radius in metres (scales the derivative operators).
    """

    def __init__(
        self,
        truncation: int,
        nlat: int | None = None,
        nlon: int | None = None,
        radius: float = 6.371e6,
    ) -> None:
        T = int(truncation)
        if T < 1:
            raise ValueError(f"truncation must be >= 1, got {T}")
        nlon = nlon or 2 * ((3 * T + 2) // 2)
        nlat = nlat or nlon // 2
        if nlon < 2 * T + 1 or nlat < T + 1:
            raise ValueError(f"grid {nlon}x{nlat} too coarse for truncation T{T}")
        self.T, self.nlat, self.nlon, self.radius = T, nlat, nlon, radius
        mu, w = gauss_legendre(nlat)
        self.mu, self.weights = mu, w
        self.latitude = np.degrees(np.arcsin(mu))  # for display; the transforms use mu
        self.longitude = np.arange(nlon) * 360.0 / nlon
        self.m = np.arange(T + 1)[:, None] * np.ones((1, T + 1))
        self.l = np.ones((T + 1, 1)) * np.arange(T + 1)[None, :]
        self.mask = self.l >= self.m
        # -l(l+1)/a^2: eigenvalues of the Laplacian.
        self.laplacian = -self.l * (self.l + 1) / (radius * radius)
        self.grid_basis = basis = self.basis(mu)
        # Analysis matrices include the quadrature weights (and 1/(1-mu^2) for divergences),
        # transposed to [m, lat, l] for products over latitude.
        self._analysis = ExactMatrix(np.swapaxes(basis.P * w, -1, -2))
        c = w / (1 - mu * mu)
        self._divergence = ExactMatrix(
            np.concatenate([np.swapaxes(basis.P * c, -1, -2), -np.swapaxes(basis.H * c, -1, -2)], 1)
        )
        self._fourier: dict[int, tuple[ExactMatrix, ExactMatrix]] = {}

    def basis(self, mu: NDArray) -> Basis:
        """``P_l^m(mu)`` and ``H_l^m(mu) = (1 - mu^2) dP_l^m/dmu``, each ``(T+1, T+1, len(mu))``."""
        T = self.T
        P_ext = legendre_functions(mu, T + 1, T)
        P = P_ext[:, : T + 1]
        l = self.l[..., None]
        m = self.m[..., None]
        P_up = P_ext[:, 1 : T + 2]
        P_down = np.concatenate([np.zeros_like(P[:, :1]), P_ext[:, :T]], axis=1)
        H = -l * _eps(l + 1, m) * P_up + (l + 1) * _eps(l, m) * P_down
        return Basis(P=np.ascontiguousarray(P), H=H * self.mask[..., None])

    # ----------------------------------------------------------------------------- Fourier
    def _fourier_matrices(self, nlon: int) -> tuple[ExactMatrix, ExactMatrix]:
        """Synthesis ``(2 (T+1), nlon)`` and analysis ``(nlon, 2 (T+1))`` matrices of the real
        discrete Fourier transform on ``nlon`` longitudes from 0 (rows or columns: the cosine
        parts of wavenumbers 0..T, then their sine parts)."""
        if nlon not in self._fourier:
            if nlon < 2 * self.T + 1:
                raise ValueError(f"{nlon} longitudes cannot resolve wavenumber {self.T}")
            m = np.arange(self.T + 1)[:, None]
            k = np.arange(nlon)[None, :]
            # reduced to one turn with integers, so that the angles are exact multiples of 2 pi/n
            angle = (2.0 * PI / nlon) * ((m * k) % nlon)
            c, s = cos(angle), sin(angle)
            double = np.where(m > 0, 2.0, 1.0)  # a real field's negative wavenumbers
            synthesis = np.concatenate([double * c, -double * s])
            analysis = np.concatenate([c, -s]).T / nlon
            self._fourier[nlon] = (ExactMatrix(synthesis), ExactMatrix(analysis))
        return self._fourier[nlon]

    def fourier_to_grid(self, F: NDArray, nlon: int | None = None) -> NDArray:
        """``F[..., m, lat]`` (complex, ``m <= T``) -> real grid ``[..., lat, lon]`` on ``nlon``
        longitudes from 0; the imaginary part of ``m = 0`` is ignored."""
        synthesis, _ = self._fourier_matrices(nlon or self.nlon)
        parts = np.concatenate([F.real, F.imag], axis=-2)  # (..., 2 (T+1), lat)
        return np.swapaxes(parts, -1, -2) @ synthesis

    def grid_to_fourier(self, grid: NDArray) -> NDArray:
        """Real grid ``[..., lat, lon]`` -> ``F[..., m, lat]`` for ``m <= T``."""
        grid = np.asarray(grid, dtype=np.float64)
        _, analysis = self._fourier_matrices(grid.shape[-1])
        parts = grid @ analysis  # (..., lat, 2 (T+1))
        return np.swapaxes(_complex(parts[..., : self.T + 1], parts[..., self.T + 1 :]), -1, -2)

    # ----------------------------------------------------------------------------- synthesis
    def to_grid(self, coeffs: NDArray, basis: Basis | None = None, nlon: int | None = None):
        """Synthesis: coefficients ``(..., T+1, T+1)`` -> grid ``(..., nlat, nlon)``.

        ``basis`` (from :meth:`basis`) and ``nlon`` evaluate on other latitudes/longitudes.
        """
        basis = basis or self.grid_basis
        return self.fourier_to_grid(_per_wavenumber(coeffs, basis.exact_P), nlon)

    def to_spectral(self, grid: NDArray) -> NDArray:
        """Analysis: grid ``(..., nlat, nlon)`` -> coefficients ``(..., T+1, T+1)``."""
        return _per_wavenumber(self.grid_to_fourier(grid), self._analysis)

    # ----------------------------------------------------------------------------- operators
    def winds(self, psi: NDArray, basis: Basis | None = None, nlon: int | None = None):
        """``(U, V) = (u cos(lat), v cos(lat))`` in m/s on the grid from a streamfunction (m^2/s).

        ``u = -(1/a) dpsi/dphi``, ``v = (1/(a cos phi)) dpsi/dlambda``.
        """
        _, U, V = self.to_grid_with_winds(np.zeros((0, *psi.shape[-2:])), psi, basis, nlon)
        return U, V

    def to_grid_with_winds(
        self,
        scalars: NDArray,
        psi: NDArray,
        basis: Basis | None = None,
        nlon: int | None = None,
    ) -> tuple[NDArray, NDArray, NDArray]:
        """Grids of the coefficients ``scalars`` (``(S..., T+1, T+1)``) and the winds ``(U, V)``
        of the streamfunctions ``psi`` (``(W..., T+1, T+1)``, m^2/s, as :meth:`winds`), in one
        Legendre and one Fourier product."""
        basis = basis or self.grid_basis
        lead_s, lead_w = scalars.shape[:-2], psi.shape[:-2]
        scalars = scalars.reshape(-1, *scalars.shape[-2:])
        psi = psi.reshape(-1, *psi.shape[-2:])
        ns, nw = len(scalars), len(psi)
        F = _per_wavenumber(np.concatenate([scalars, self.d_dlambda(psi), psi]), basis.exact_PH)
        J = F.shape[-1] // 2  # [P | H] along latitude: P for the first two, H for psi
        g = self.fourier_to_grid(np.concatenate([F[: ns + nw, :, :J], F[ns + nw :, :, J:]]), nlon)
        grid_shape = g.shape[-2:]
        return (
            g[:ns].reshape(*lead_s, *grid_shape),
            (g[ns + nw :] / -self.radius).reshape(*lead_w, *grid_shape),
            (g[ns : ns + nw] / self.radius).reshape(*lead_w, *grid_shape),
        )

    def d_dlambda(self, coeffs: NDArray) -> NDArray:
        """Coefficients of the longitude derivative, ``i m c``, without complex products."""
        m = np.arange(coeffs.shape[-2], dtype=np.float64)[:, None]
        return _complex(-m * coeffs.imag, m * coeffs.real)

    def divergence_flux(self, A: NDArray, B: NDArray) -> NDArray:
        """Coefficients of ``(1/(a(1-mu^2))) [dA/dlambda + (1 - mu^2) dB/dmu]`` from grids A, B.

        With ``A = U q`` and ``B = V q`` this is the flux divergence ``div(u q)``, equal to the
        advection ``u . grad q`` when ``u`` is non-divergent (integration by parts in ``mu``).
        """
        FA, FB = self.grid_to_fourier(np.stack([A, B]))
        F = np.concatenate([self.d_dlambda(FA), FB], axis=-1)  # (..., m, 2 nlat)
        return _per_wavenumber(F, self._divergence) / self.radius


def _complex(real: NDArray, imag: NDArray) -> NDArray:
    """A complex array from its parts, without arithmetic."""
    out = np.empty(np.broadcast_shapes(real.shape, imag.shape), dtype=np.complex128)
    out.real, out.imag = real, imag
    return out


def _per_wavenumber(coeffs: NDArray, matrix: ExactMatrix) -> NDArray:
    """``out[..., m, n] = sum_k coeffs[..., m, k] W[m, k, n]`` for complex ``coeffs``, as one
    exact real product per wavenumber ``m``."""
    coeffs = np.asarray(coeffs)
    lead = coeffs.shape[:-2]
    M, K = coeffs.shape[-2:]
    parts = np.stack([coeffs.real, coeffs.imag])  # (2, ..., M, K)
    rows = np.moveaxis(parts, -2, 0).reshape(M, -1, K)  # (M, 2 * prod(lead), K)
    out = (rows @ matrix).reshape(M, 2, *lead, -1)
    return np.moveaxis(_complex(out[:, 0], out[:, 1]), 0, -2)
