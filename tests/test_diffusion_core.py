"""Schedules, preconditioning, exact priors and Krylov solvers against closed forms."""

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from appa.diffusion import (
    EDMDenoiser,
    GaussianMixturePrior,
    GaussianPrior,
    LogLinearSchedule,
    LowRankGaussianPrior,
    ScheduleConfig,
    cg,
    denoising_loss,
    direct_solve,
    gmres,
    linear_gaussian_posterior,
)

f64 = torch.float64


@pytest.mark.parametrize("name", ["rectified", "loglinear", "loglogit"])
def test_schedules_span_and_increase(name):
    schedule = ScheduleConfig(kind=name, sigma_min=1e-3, sigma_max=1e3).build()
    t = torch.linspace(0, 1, 1001, dtype=f64)
    sigma = schedule(t)
    assert sigma[0].item() == pytest.approx(1e-3, rel=1e-9)
    assert sigma[-1].item() == pytest.approx(1e3, rel=1e-9)
    assert (sigma.diff() > 0).all()
    grid = schedule.sigmas(16)
    assert grid.shape == (17,) and grid[0] > grid[-1]


def test_schedule_errors():
    with pytest.raises(ValidationError, match="kind"):
        ScheduleConfig(kind="cosine")
    with pytest.raises(ValidationError, match="sigma_min must be below sigma_max"):
        ScheduleConfig(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        LogLinearSchedule(1.0, 0.5)


def test_rectified_schedule_matches_appa_formula():
    schedule = ScheduleConfig(kind="rectified").build()
    t = torch.tensor([0.25, 0.5, 0.75], dtype=f64)
    expected = (t + (1 - t) * 1e-3) / (t * (1 / 1e3 - 1) + 1)
    torch.testing.assert_close(schedule(t), expected)


class _Zero(nn.Module):
    def forward(self, x, c_noise):
        return torch.zeros_like(x)


def test_edm_preconditioning_coefficients():
    sigma = torch.tensor([0.1, 1.0, 10.0])
    den = EDMDenoiser(_Zero(), sigma_data=0.5)
    x = torch.randn(3, 4)
    c_skip, c_out, c_in, c_noise = den.coefficients(sigma)
    torch.testing.assert_close(den(x, sigma), c_skip[:, None] * x)
    # EDM's defining property: the network's effective target has unit variance for data of
    # std s_d, i.e. c_out^2 = c_skip^2 s^2 + (1 - c_skip)^2 s_d^2.
    torch.testing.assert_close(c_skip**2 * sigma**2 + (1 - c_skip) ** 2 * 0.25, c_out**2)
    torch.testing.assert_close(c_in, 1 / torch.sqrt(sigma**2 + 0.25))
    torch.testing.assert_close(c_noise, sigma.log() / 4)


def test_denoising_loss_is_minimised_by_the_exact_denoiser():
    # For N(0, 1) data the optimal denoiser is x_t / (1 + s^2); a scaled one has a larger loss.
    prior = GaussianPrior(torch.zeros(3), torch.eye(3))
    x = torch.randn(20000, 3, dtype=f64)
    sigma = torch.full((20000,), 0.7, dtype=f64)
    noise = torch.randn_like(x)
    best = denoising_loss(prior, x, sigma, noise=noise).mean()
    worse = denoising_loss(lambda x_t, s: 1.2 * prior(x_t, s), x, sigma, noise=noise).mean()
    # E || x_t/(1+s^2) - x ||^2 per dim = s^2 / (1 + s^2); weight (s^2 + 1) / s^2 -> 1
    assert best.item() == pytest.approx(1.0, rel=0.03)
    assert worse > best


def test_denoising_loss_over_counted_elements_only():
    x = torch.randn(4, 6, 2, dtype=f64)
    sigma = torch.tensor([0.1, 0.5, 1.0, 3.0], dtype=f64)
    noise = torch.randn_like(x)

    def denoiser(x_t, s):
        return 0.5 * x_t

    s = sigma[:, None, None]
    elementwise = (s**2 + 1) / s**2 * (0.5 * (x + s * noise) - x) ** 2
    later = torch.arange(6)[None, :, None] >= 4  # the last 2 of 6 frames
    loss = denoising_loss(denoiser, x, sigma, noise=noise, counted=later)
    torch.testing.assert_close(loss, elementwise[:, 4:].mean(dim=(1, 2)))
    everything = denoising_loss(denoiser, x, sigma, noise=noise, counted=torch.ones_like(later))
    torch.testing.assert_close(everything, denoising_loss(denoiser, x, sigma, noise=noise))
    torch.testing.assert_close(everything, elementwise.mean(dim=(1, 2)))


def test_edm_autocast_keeps_output_dtype():
    net = nn.Sequential(nn.Linear(5, 16), nn.SiLU(), nn.Linear(16, 5))

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, c_noise):
            return self.net(x)

    den = EDMDenoiser(Backbone(), autocast_dtype=torch.bfloat16)
    out = den(torch.randn(4, 5), torch.ones(4))
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="autocast_dtype"):
        EDMDenoiser(Backbone(), autocast_dtype=torch.int8)


def _random_cov(d, seed):
    g = torch.Generator().manual_seed(seed)
    L = torch.randn(d, d, generator=g, dtype=f64)
    return L @ L.T / d + 0.1 * torch.eye(d, dtype=f64)


def test_gaussian_denoiser_is_the_conditional_mean():
    d = 6
    cov = _random_cov(d, 0)
    mean = torch.arange(d, dtype=f64)
    prior = GaussianPrior(mean, cov)
    x_t = torch.randn(3, d, dtype=f64)
    sigma = torch.tensor([0.1, 1.0, 5.0], dtype=f64)
    for i in range(3):
        post_mean, _, _ = linear_gaussian_posterior(
            mean, cov, torch.eye(d, dtype=f64), x_t[i], sigma[i] ** 2
        )
        torch.testing.assert_close(prior(x_t, sigma)[i], post_mean)


def test_low_rank_prior_matches_dense():
    g = torch.Generator().manual_seed(1)
    d, r = 10, 3
    U = torch.randn(d, r, generator=g, dtype=f64)
    D = torch.rand(d, generator=g, dtype=f64) + 0.1
    low = LowRankGaussianPrior(torch.ones(d, dtype=f64), D, U)
    dense = low.to_dense()
    x_t = torch.randn(4, d, dtype=f64)
    sigma = torch.tensor([1e-3, 0.3, 2.0, 100.0], dtype=f64)
    torch.testing.assert_close(low(x_t, sigma), dense(x_t, sigma))
    samples = low.sample(40000, torch.Generator().manual_seed(0))
    assert (torch.cov(samples.T) - dense.cov).norm() / dense.cov.norm() < 0.05


@pytest.mark.parametrize("full", [False, True])
def test_mixture_denoiser_is_the_conditional_mean(full):
    g = torch.Generator().manual_seed(2)
    K, d = 4, 3
    means = 3 * torch.randn(K, d, generator=g, dtype=f64)
    covs = (
        torch.stack([_random_cov(d, k) for k in range(K)])
        if full
        else torch.rand(K, dtype=f64) + 0.5
    )
    prior = GaussianMixturePrior(torch.rand(K, generator=g, dtype=f64) + 0.1, means, covs)
    x_t = torch.randn(5, d, dtype=f64) * 3
    sigma = torch.tensor([0.05, 0.5, 1.0, 3.0, 30.0], dtype=f64)
    out = prior(x_t, sigma)
    for i in range(5):
        # x_t is an observation of x with identity operator and noise sigma^2
        post = prior.posterior(torch.eye(d, dtype=f64), x_t[i], sigma[i] ** 2)
        expected = (post.weights[:, None] * post.means).sum(0)
        torch.testing.assert_close(out[i], expected)


def test_mixture_sampling_moments():
    prior = GaussianMixturePrior(
        torch.tensor([1.0, 3.0]), torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), torch.tensor([0.5, 1.0])
    )
    x = prior.sample(200000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.mean(0), torch.tensor([1.0, 0.75], dtype=f64), atol=0.02, rtol=0)


def test_krylov_solvers_match_dense_solve():
    g = torch.Generator().manual_seed(3)
    B, m = 4, 12
    M = torch.stack([_random_cov(m, s) for s in range(B)]).float()
    b = torch.randn(B, m, generator=g).float()
    expected = torch.linalg.solve(M.double(), b.double()[..., None])[..., 0].float()

    def op(u):
        return (M @ u[..., None])[..., 0]

    # float32 operator products: CG loses orthogonality, so m iterations are exact to ~1e-3 and
    # 2m to float32 precision; GMRES orthogonalises explicitly.
    torch.testing.assert_close(cg(op, b, iterations=m), expected, rtol=5e-3, atol=5e-3)
    torch.testing.assert_close(gmres(op, b, iterations=m), expected, rtol=1e-4, atol=1e-4)
    for solver in (cg, gmres):  # running past convergence stays finite and exact
        torch.testing.assert_close(solver(op, b, iterations=2 * m), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(direct_solve(op, b), expected, rtol=1e-5, atol=1e-5)
    # fewer iterations: a worse but finite answer
    partial = cg(op, b, iterations=2)
    assert torch.isfinite(partial).all()
    assert (partial - expected).norm() > (cg(op, b, iterations=6) - expected).norm()


def test_cg_stops_at_negative_curvature_and_leaves_other_systems_alone():
    g = torch.Generator().manual_seed(5)
    m = 12
    good = _random_cov(m, 0).double()
    q, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    # symmetric, indefinite: one eigenvalue far below zero (a network's Jacobian can be)
    eigenvalues = torch.ones(m, dtype=torch.float64)
    eigenvalues[0] = -1e3
    bad = q @ torch.diag(eigenvalues) @ q.T
    M = torch.stack([good, bad])
    b = torch.randn(2, m, generator=g, dtype=torch.float64)

    def op(u):
        return (M @ u[..., None])[..., 0]

    u = cg(op, b, iterations=2 * m)
    assert torch.isfinite(u).all()
    # the first system solves as it would alone (bitwise: the batch does not mix)
    alone = cg(lambda v: (good @ v[..., None])[..., 0], b[:1], iterations=2 * m)
    assert torch.equal(u[:1], alone)
    # the indefinite one keeps its iterate from before the negative curvature: a descent on
    # the residual of the first step at least
    assert (op(u)[1] - b[1]).norm() < b[1].norm() * 10


def test_cg_floor_stops_where_the_covariance_part_is_negative():
    """``Sigma_y + K`` with ``K`` (a Tweedie covariance) negative in one direction, nearly
    cancelling the noise there: positive definite, so plain CG takes a step of ~1/1e-4 along
    it; with the noise as floor, CG stops before it. A positive semi-definite ``K`` never
    trips the floor (bitwise the same iterates)."""
    g = torch.Generator().manual_seed(6)
    B, m = 2, 12
    noise = torch.full((m,), 0.5, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    psd = q @ torch.diag(torch.linspace(0.1, 4.0, m, dtype=torch.float64)) @ q.T
    eigenvalues = torch.linspace(0.1, 4.0, m, dtype=torch.float64)
    eigenvalues[0] = -0.5 + 1e-4  # noise + K: eigenvalue 1e-4 along q[:, 0]
    indefinite = q @ torch.diag(eigenvalues) @ q.T
    K = torch.stack([psd, indefinite])
    b = torch.randn(B, m, generator=g, dtype=torch.float64)

    def system(u):
        return noise * u + (K @ u[..., None])[..., 0]

    def floor(u):
        return noise * u

    plain = cg(system, b, iterations=m)
    guarded = cg(system, b, iterations=m, floor=floor)
    assert torch.equal(guarded[0], plain[0])  # a true covariance: untouched
    assert plain[1].norm() > 100 * b[1].norm()  # the near-cancelling direction blows up
    assert torch.isfinite(guarded).all()
    # stopped: no larger than a solve of the noise alone could make it
    assert guarded[1].norm() <= b[1].norm() / noise.min() * 1.0001


def test_gmres_solves_non_symmetric_systems():
    g = torch.Generator().manual_seed(4)
    m = 8
    M = torch.eye(m, dtype=f64) * 3 + torch.randn(m, m, generator=g, dtype=f64)
    b = torch.randn(2, m, generator=g, dtype=f64)

    def op(u):
        return u @ M.T

    torch.testing.assert_close(gmres(op, b, iterations=m), torch.linalg.solve(M, b.T).T)


def test_gaussian_prior_rejects_bad_covariance():
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianPrior(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match=r"\(d, d\)"):
        GaussianPrior(torch.zeros(3), torch.eye(2))
    assert math.isfinite(
        GaussianPrior(torch.zeros(2), torch.eye(2))(torch.ones(1, 2), torch.ones(1)).sum()
    )
