"""Spherical-harmonic transforms on a sphere, in numpy, for the toy Earth's spectral solver.

Fields are expanded in fully normalised associated Legendre functions ``P_l^m(mu)`` (``mu`` =
sin(latitude), ``int_{-1}^{1} P_l^m^2 dmu = 1``) times ``exp(i m lambda)``, with a triangular
truncation ``T`` (``0 <= m <= l <= T``). Spectral arrays have shape ``(..., T + 1, T + 1)``
indexed ``[m, l]`` (entries with ``l < m`` are zero). The model works on a Gaussian grid, where
the transforms are exact for band-limited fields; the same coefficients can be synthesised on
any other latitudes (e.g. the equiangular cell centres of WeatherBench2 grids) exactly.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["SphericalHarmonics", "band_limit_projection", "legendre_functions"]


def legendre_functions(mu: NDArray, lmax: int, mmax: int) -> NDArray:
    """Fully normalised ``P_l^m(mu)``, shape ``(mmax + 1, lmax + 1, len(mu))`` (zero for l < m).

    Normalised so that ``int_{-1}^{1} P_l^m(mu)^2 dmu = 1``; stable three-term recursion in l.
    """
    mu = np.asarray(mu, dtype=np.float64)
    s = np.sqrt(np.clip(1.0 - mu**2, 0.0, None))
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
        e = np.sqrt(np.clip(l**2 - m**2, 0.0, None) / (4 * l**2 - 1))
    return np.nan_to_num(e)


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
        mu, w = np.polynomial.legendre.leggauss(nlat)
        self.mu, self.weights = mu, w
        self.latitude = np.degrees(np.arcsin(mu))
        self.longitude = np.arange(nlon) * 360.0 / nlon
        self.m = np.arange(T + 1)[:, None] * np.ones((1, T + 1))
        self.l = np.ones((T + 1, 1)) * np.arange(T + 1)[None, :]
        self.mask = self.l >= self.m
        # -l(l+1)/a^2: eigenvalues of the Laplacian.
        self.laplacian = -self.l * (self.l + 1) / radius**2
        P, H = self.basis(mu)
        self._P, self._H = P, H
        # Analysis matrices include the quadrature weights (and 1/(1-mu^2) for divergences).
        self._Pw = P * w
        self._Pw_c = P * (w / (1 - mu**2))
        self._Hw_c = H * (w / (1 - mu**2))

    def basis(self, mu: NDArray) -> tuple[NDArray, NDArray]:
        """``P_l^m(mu)`` and ``H_l^m(mu) = (1 - mu^2) dP_l^m/dmu``, each ``(T+1, T+1, len(mu))``."""
        T = self.T
        P_ext = legendre_functions(mu, T + 1, T)
        P = P_ext[:, : T + 1]
        l = self.l[..., None]
        m = self.m[..., None]
        P_up = P_ext[:, 1 : T + 2]
        P_down = np.concatenate([np.zeros_like(P[:, :1]), P_ext[:, :T]], axis=1)
        H = -l * _eps(l + 1, m) * P_up + (l + 1) * _eps(l, m) * P_down
        return P, H * self.mask[..., None]

    # ----------------------------------------------------------------------------- synthesis
    def _fourier_to_grid(self, F: NDArray, nlon: int) -> NDArray:
        """``F[..., m, lat]`` -> grid ``[..., lat, lon]`` on ``nlon`` longitudes from 0."""
        F = np.swapaxes(F, -1, -2)
        full = np.zeros((*F.shape[:-1], nlon // 2 + 1), dtype=np.complex128)
        full[..., : self.T + 1] = F
        return np.fft.irfft(full, n=nlon, axis=-1) * nlon

    def to_grid(self, coeffs: NDArray, basis: NDArray | None = None, nlon: int | None = None):
        """Synthesis: coefficients ``(..., T+1, T+1)`` -> grid ``(..., nlat, nlon)``.

        ``basis`` (from :meth:`basis`) and ``nlon`` evaluate on other latitudes/longitudes.
        """
        P = self._P if basis is None else basis
        F = np.einsum("...ml,mlj->...mj", coeffs, P)
        return self._fourier_to_grid(F, nlon or self.nlon)

    def _grid_to_fourier(self, grid: NDArray) -> NDArray:
        """grid ``[..., lat, lon]`` -> ``F[..., m, lat]`` for ``m <= T``."""
        F = np.fft.rfft(grid, axis=-1)[..., : self.T + 1] / self.nlon
        return np.swapaxes(F, -1, -2)

    def to_spectral(self, grid: NDArray) -> NDArray:
        """Analysis: grid ``(..., nlat, nlon)`` -> coefficients ``(..., T+1, T+1)``."""
        F = self._grid_to_fourier(np.asarray(grid, dtype=np.float64))
        return np.einsum("...mj,mlj->...ml", F, self._Pw)

    # ----------------------------------------------------------------------------- operators
    def winds(self, psi: NDArray, basis: tuple[NDArray, NDArray] | None = None, nlon=None):
        """``(U, V) = (u cos(lat), v cos(lat))`` in m/s on the grid from a streamfunction (m^2/s).

        ``u = -(1/a) dpsi/dphi``, ``v = (1/(a cos phi)) dpsi/dlambda``.
        """
        P, H = (self._P, self._H) if basis is None else basis
        U = -self.to_grid(psi, H, nlon) / self.radius
        V = self.to_grid(1j * self.m * psi, P, nlon) / self.radius
        return U, V

    def divergence_flux(self, A: NDArray, B: NDArray) -> NDArray:
        """Coefficients of ``(1/(a(1-mu^2))) [dA/dlambda + (1 - mu^2) dB/dmu]`` from grids A, B.

        With ``A = U q`` and ``B = V q`` this is the flux divergence ``div(u q)``, equal to the
        advection ``u . grad q`` when ``u`` is non-divergent (integration by parts in ``mu``).
        """
        FA = self._grid_to_fourier(A)
        FB = self._grid_to_fourier(B)
        out = np.einsum("...mj,mlj->...ml", 1j * np.arange(self.T + 1)[:, None] * FA, self._Pw_c)
        out -= np.einsum("...mj,mlj->...ml", FB, self._Hw_c)
        return out / self.radius
