"""The spherical-harmonic transforms of the toy Earth against exact answers.

The transforms are exact products accurate to about 1e-9 of their largest terms
(``appa.data.portable.ExactMatrix``), which sets the tolerances below (sums of up to 64 terms
for coefficients of order 1: a few 1e-8).
"""

import numpy as np
import pytest

from appa.data.grids import area_weights, equiangular_grid, parse_grid
from appa.data.spectral import SphericalHarmonics, band_limit_projection, legendre_functions


def _random_coeffs(sh, rng, fields=()):
    shape = (*fields, sh.T + 1, sh.T + 1)
    c = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * sh.mask
    c[..., 0, :] = c[..., 0, :].real  # m = 0 coefficients of a real field are real
    return c


def test_legendre_orthonormal_and_closed_forms():
    mu, w = np.polynomial.legendre.leggauss(40)
    P = legendre_functions(mu, 12, 12)
    for m in range(13):
        gram = (P[m, m:] * w) @ P[m, m:].T
        np.testing.assert_allclose(gram, np.eye(13 - m), atol=1e-12)
    np.testing.assert_allclose(P[0, 1], np.sqrt(1.5) * mu, atol=1e-14)
    np.testing.assert_allclose(P[0, 2], np.sqrt(2.5) * (3 * mu**2 - 1) / 2, atol=1e-14)
    np.testing.assert_allclose(P[1, 1], np.sqrt(0.75) * np.sqrt(1 - mu**2), atol=1e-14)


def test_round_trip_and_laplacian():
    rng = np.random.default_rng(0)
    sh = SphericalHarmonics(15)
    c = _random_coeffs(sh, rng, (3,))
    np.testing.assert_allclose(sh.to_spectral(sh.to_grid(c)), c, atol=1e-8)
    # Y_2^0 ~ 3 mu^2 - 1 is an eigenfunction of the Laplacian with eigenvalue -6 / a^2.
    mu = sh.mu[:, None] * np.ones((1, sh.nlon))
    spec = sh.to_spectral(3 * mu**2 - 1)
    assert np.count_nonzero(np.abs(spec) > 1e-8) == 1
    assert abs(spec[0, 2]) > 1.0
    assert sh.laplacian[0, 2] == pytest.approx(-6 / sh.radius**2)


def test_solid_body_winds_and_advection():
    rng = np.random.default_rng(1)
    sh = SphericalHarmonics(21, radius=1.0)
    omega = 0.3
    mu = sh.mu[:, None] * np.ones((1, sh.nlon))
    psi = sh.to_spectral(-omega * mu)  # u = omega cos(lat), v = 0
    U, V = sh.winds(psi)
    np.testing.assert_allclose(U, omega * (1 - mu**2), atol=1e-9)
    np.testing.assert_allclose(V, 0.0, atol=1e-9)
    q = _random_coeffs(sh, rng)
    qg = sh.to_grid(q)
    # u . grad q = omega dq/dlambda for solid-body rotation.
    adv = sh.divergence_flux(U * qg, V * qg)
    np.testing.assert_allclose(adv, 1j * omega * sh.m * q, atol=1e-7)


def test_synthesis_on_other_latitudes_is_exact():
    sh = SphericalHarmonics(10)
    lat, lon = equiangular_grid("64x32")
    basis = sh.basis(np.sin(np.radians(lat)))
    # f = mu (1 - mu^2)^(1/2) cos(lambda) is in the span (l = 2, m = 1).
    mu = sh.mu[:, None]
    c = sh.to_spectral(mu * np.sqrt(1 - mu**2) * np.cos(np.radians(sh.longitude))[None, :])
    out = sh.to_grid(c, basis, len(lon))
    mu_o = np.sin(np.radians(lat))[:, None]
    expected = mu_o * np.sqrt(1 - mu_o**2) * np.cos(np.radians(lon))[None, :]
    np.testing.assert_allclose(out, expected, atol=1e-9)


def test_grids():
    lat, lon = equiangular_grid("64x32")
    assert lat[0] == pytest.approx(-87.1875) and lat[-1] == pytest.approx(87.1875)
    assert lon[0] == 0 and lon[-1] == pytest.approx(354.375)
    assert parse_grid("128x64") == (128, 64)
    with pytest.raises(ValueError, match="NLONxNLAT"):
        parse_grid("64-32")
    with pytest.raises(ValueError, match="nlon = 2"):
        parse_grid("64x64")
    w = area_weights(lat)
    assert w.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(w, w[::-1])
    assert w[16] > w[0]
    with pytest.raises(ValueError, match="ascending"):
        area_weights(lat[::-1])


def test_band_limit_projection_keeps_harmonics_and_removes_the_rest():
    """On the 64 x 32 equiangular grid: fields synthesised from harmonics of degree <= T pass
    unchanged, the projection is idempotent and area-weighted orthogonal, and a field made
    only of higher degrees (or of zonal wavenumbers above T) is removed."""
    rng = np.random.default_rng(3)
    latitude, _ = equiangular_grid("64x32")
    T = 12
    sh = SphericalHarmonics(T, nlat=32, nlon=64)
    basis = sh.basis(np.sin(np.radians(latitude)))
    inside = sh.to_grid(_random_coeffs(sh, rng, (2,)), basis, 64)  # (2, 32, 64)
    Q = band_limit_projection(latitude, T)
    assert Q.shape == (T + 1, 32, 32)

    def project(x):
        F = np.fft.rfft(x, axis=-1)
        out = np.zeros_like(F)
        out[..., : T + 1] = np.einsum("mij,...jm->...im", Q, F[..., : T + 1])
        return np.fft.irfft(out, n=64, axis=-1)

    np.testing.assert_allclose(project(inside), inside, rtol=0, atol=1e-9 * np.abs(inside).max())
    noise = rng.standard_normal((3, 32, 64))
    once = project(noise)
    np.testing.assert_allclose(project(once), once, atol=1e-9)
    w = area_weights(latitude)[:, None]
    assert abs(np.sum(w * once * (noise - once))) < 1e-8 * np.sum(w * noise**2)
    higher = SphericalHarmonics(T + 4, nlat=32, nlon=64)
    c = _random_coeffs(higher, rng)
    c[: T + 1, : T + 1] = 0  # degrees above T only
    outside = higher.to_grid(c, higher.basis(np.sin(np.radians(latitude))), 64)
    assert np.abs(project(outside)).max() < 0.3 * np.abs(outside).max()
    # exactly zero where only the wavenumbers above T are (their rows pass no coefficient)
    c[: T + 1] = 0
    far = higher.to_grid(c, higher.basis(np.sin(np.radians(latitude))), 64)
    np.testing.assert_allclose(project(far), 0, atol=1e-8 * np.abs(far).max())
    with pytest.raises(ValueError, match="needs more than 12 latitudes"):
        band_limit_projection(latitude[:12], T)
