"""Posterior denoisers and samplers against exact posteriors."""

import pytest
import torch

from appa.diffusion import (
    DiagonalGaussianDenoiser,
    DPSDenoiser,
    GaussianObservation,
    GaussianPrior,
    MMPSDenoiser,
    make_sampler,
)
from appa.diffusion.testproblems import gaussian_mixture_problem, linear_gaussian_problem
from appa.metrics import sliced_wasserstein

f64 = torch.float64


@pytest.fixture(scope="module")
def dense_problem():
    return linear_gaussian_problem(d=64, m=16, noise_variance=1e-2, operator="dense", seed=0)


@pytest.mark.parametrize(("solver", "iterations"), [("direct", 0), ("cg", 32), ("gmres", 16)])
def test_mmps_is_exact_for_gaussian_priors(dense_problem, solver, iterations):
    """For a Gaussian prior and a linear operator, E[x | x_t, y] is the denoiser of the exact
    posterior, and MMPS with a converged solve must return it."""
    p = dense_problem
    mmps = MMPSDenoiser(p.prior, p.observation, solver=solver, iterations=iterations)
    x_t = p.prior.sample(5, torch.Generator().manual_seed(1)) + torch.randn(5, 64, dtype=f64)
    sigma = torch.tensor([1e-2, 0.1, 1.0, 10.0, 100.0], dtype=f64)
    torch.testing.assert_close(mmps(x_t, sigma), p.posterior(x_t, sigma), rtol=1e-7, atol=1e-7)


def test_mmps_nonlinear_path_matches_linear_path(dense_problem):
    p = dense_problem
    as_nonlinear = GaussianObservation(
        y=p.y, operator=p.observation.operator, noise_variance=p.noise_variance, linear=False
    )
    x_t = torch.randn(3, 64, dtype=f64)
    sigma = torch.tensor([0.05, 0.5, 5.0], dtype=f64)
    linear = MMPSDenoiser(p.prior, p.observation, solver="direct")(x_t, sigma)
    jvp = MMPSDenoiser(p.prior, as_nonlinear, solver="direct")(x_t, sigma)
    torch.testing.assert_close(jvp, linear)


def test_mmps_callable_noise_covariance_matches_diagonal(dense_problem):
    p = dense_problem
    as_callable = GaussianObservation(
        y=p.y,
        operator=p.observation.operator,
        noise_covariance=lambda v: v * p.noise_variance.to(v),
        linear=True,
    )
    x_t = torch.randn(2, 64, dtype=f64)
    sigma = torch.tensor([0.3, 3.0], dtype=f64)
    torch.testing.assert_close(
        MMPSDenoiser(p.prior, as_callable, solver="cg", iterations=32)(x_t, sigma),
        p.posterior(x_t, sigma),
        rtol=1e-6,
        atol=1e-6,
    )


def _moment_errors(samples, posterior):
    mean_err = (samples.mean(0) - posterior.mean).norm() / posterior.mean.norm()
    cov_err = (torch.cov(samples.T) - posterior.cov).norm() / posterior.cov.norm()
    return mean_err.item(), cov_err.item()


@pytest.mark.parametrize("operator", ["dense", pytest.param("mask", marks=pytest.mark.slow)])
def test_linear_gaussian_posterior_samples_match_closed_form(operator):
    """d = 64 GP prior, 16 observations with variance 1e-2: 4,000 MMPS samples match the exact
    posterior (mean within 2 %, covariance within 6 % in Frobenius norm; with sampler seeds 0-2
    the errors are 0.4-0.6 % and 2.7-3.6 %, the sampling error of 4,000 exact draws)."""
    p = linear_gaussian_problem(d=64, m=16, noise_variance=1e-2, operator=operator, seed=0)
    mmps = MMPSDenoiser(p.prior, p.observation, solver="cg", iterations=16)
    samples = make_sampler("heun", mmps, steps=64).sample(4_000, (64,), seed=0, dtype=f64)
    mean_err, cov_err = _moment_errors(samples, p.posterior)
    assert mean_err < 0.02, mean_err
    assert cov_err < 0.06, cov_err
    # the prior is far from the posterior in the same metric: the check can fail
    _, prior_cov_err = _moment_errors(p.prior.sample(4_000), p.posterior)
    assert prior_cov_err > 0.2


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler", "heun", "pc", "lms"])
def test_every_sampler_draws_the_prior(name):
    cov = torch.tensor([[1.0, 0.8], [0.8, 2.0]], dtype=f64)
    prior = GaussianPrior(torch.tensor([1.0, -2.0], dtype=f64), cov)
    # first-order steps shrink variances by O(1/steps) (ancestral steps plug in E[x|x_t] for x;
    # Euler steps under-shoot the flow's expansion), so they get more steps than Heun, PC, LMS
    steps = 512 if name in ("ddpm", "ddim", "euler") else 64
    x = make_sampler(name, prior, steps=steps).sample(20_000, (2,), seed=1, dtype=f64)
    torch.testing.assert_close(x.mean(0), prior.mean, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.08, rtol=0)


def test_samplers_are_reproducible_from_a_seed():
    prior = GaussianPrior(torch.zeros(3), torch.eye(3))
    for name in ("ddpm", "pc"):
        sampler = make_sampler(name, prior, steps=8)
        a = sampler.sample(4, (3,), seed=7)
        torch.testing.assert_close(a, sampler.sample(4, (3,), seed=7))
        assert not torch.allclose(a, sampler.sample(4, (3,), seed=8))


def test_sampler_errors():
    prior = GaussianPrior(torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("ancestral", prior)
    with pytest.raises(ValueError, match="eta"):
        make_sampler("ddim", prior, eta=2.0)
    with pytest.raises(ValueError, match="at least one step"):
        make_sampler("pc", prior, steps=0)


def test_dps_normalises_per_sample():
    """A sample's DPS update must not depend on the rest of the batch."""
    p = gaussian_mixture_problem(d=8, m=2, seed=0)
    dps = DPSDenoiser(p.prior, p.observation, zeta=1.0)
    x_t = 5 * torch.randn(4, 8, dtype=f64)
    sigma = torch.full((4,), 2.0, dtype=f64)
    batch = dps(x_t, sigma)
    for i in range(4):
        torch.testing.assert_close(batch[i : i + 1], dps(x_t[i : i + 1], sigma[i : i + 1]))


def test_observation_validation():
    with pytest.raises(ValueError, match="exactly one"):
        GaussianObservation(y=torch.zeros(2), operator=lambda x: x)
    with pytest.raises(ValueError, match="NaN"):
        GaussianObservation(
            y=torch.tensor([0.0, float("nan")]), operator=lambda x: x, noise_variance=1.0
        )
    with pytest.raises(ValueError, match="positive"):
        GaussianObservation(y=torch.zeros(2), operator=lambda x: x, noise_variance=0.0)
    obs = GaussianObservation(y=torch.zeros(3), operator=lambda x: x[:, :2], noise_variance=1.0)
    prior = GaussianPrior(torch.zeros(4), torch.eye(4))
    with pytest.raises(ValueError, match="operator returned shape"):
        MMPSDenoiser(prior, obs)(torch.zeros(1, 4), torch.ones(1))
    with pytest.raises(ValueError, match="unknown solver"):
        MMPSDenoiser(prior, obs, solver="lu")


def test_nonlinear_observation_improves_over_the_prior():
    """y = tanh(x[mask]) + noise on a Gaussian prior: MMPS (JVP path) moves the samples' mean
    close to the importance-sampling reference posterior mean."""
    d, idx = 8, torch.tensor([0, 3, 5])
    g = torch.Generator().manual_seed(5)
    L = torch.randn(d, d, generator=g, dtype=f64) / d**0.5
    prior = GaussianPrior(torch.zeros(d, dtype=f64), L @ L.T + 0.2 * torch.eye(d, dtype=f64))
    noise_var = 0.05**2

    def operator(x):
        return torch.tanh(x.reshape(x.shape[0], -1)[:, idx])

    x_true = prior.sample(1, g)
    y = operator(x_true)[0] + 0.05 * torch.randn(3, generator=g, dtype=f64)
    obs = GaussianObservation(y=y, operator=operator, noise_variance=noise_var)
    # reference: self-normalised importance sampling of prior draws
    draws = prior.sample(400_000, torch.Generator().manual_seed(6))
    log_w = -0.5 * ((operator(draws) - y) ** 2).sum(-1) / noise_var
    w = torch.softmax(log_w, 0)
    ref_mean = (w[:, None] * draws).sum(0)
    mmps = MMPSDenoiser(prior, obs, solver="gmres", iterations=3)
    samples = make_sampler("pc", mmps, steps=64, corrections=1).sample(
        2000, (d,), seed=0, dtype=f64
    )
    post_err = (samples.mean(0) - ref_mean).norm()
    prior_err = (prior.mean - ref_mean).norm()
    assert post_err < 0.25 * prior_err, (post_err, prior_err)
    assert (operator(samples) - y).abs().mean() < 0.15


@pytest.mark.parametrize(("d", "m"), [(8, 2), pytest.param(80, 4, marks=pytest.mark.slow)])
def test_gaussian_mixture_benchmark_mmps_beats_guidance_baselines(d, m):
    p = gaussian_mixture_problem(d=d, m=m, seed=1)
    reference = p.posterior.sample(1000, torch.Generator().manual_seed(0))
    results = {}
    for name, denoiser in {
        "mmps": MMPSDenoiser(p.prior, p.observation, solver="direct"),
        "diag": DiagonalGaussianDenoiser(p.prior, p.observation),
    }.items():
        samples = make_sampler("ddpm", denoiser, steps=100).sample(1000, (d,), seed=0, dtype=f64)
        results[name] = sliced_wasserstein(samples, reference)
    results["prior"] = sliced_wasserstein(p.prior.sample(1000), reference)
    assert results["mmps"] < 0.5 * results["prior"], results
    assert results["mmps"] < results["diag"], results


def test_mmps_through_a_bf16_autocast_network_keeps_a_float64_solve():
    """The network runs in bf16 under autocast; MMPS's outputs stay float32 and close to the
    full-precision result, and the Krylov iterations see float64 vectors."""
    from torch import nn

    from appa.diffusion import EDMDenoiser, krylov

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(9, 32), nn.SiLU(), nn.Linear(32, 8))

        def forward(self, x, c_noise):
            return self.net(torch.cat([x, c_noise[:, None]], dim=-1))

    torch.manual_seed(0)
    backbone = Backbone()
    A = torch.randn(3, 8)
    obs = GaussianObservation.from_matrix(A, torch.randn(3), 0.1)
    x_t = torch.randn(4, 8)
    sigma = torch.full((4,), 0.8)
    full = MMPSDenoiser(EDMDenoiser(backbone), obs, solver="cg", iterations=3)(x_t, sigma)
    seen = []
    original = krylov._dot

    def spy(a, b):
        seen.append(a.dtype)
        return original(a, b)

    krylov._dot = spy
    try:
        mixed_den = EDMDenoiser(backbone, autocast_dtype=torch.bfloat16)
        mixed = MMPSDenoiser(mixed_den, obs, solver="cg", iterations=3)(x_t, sigma)
    finally:
        krylov._dot = original
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    assert set(seen) == {torch.float64}
    torch.testing.assert_close(mixed, full, rtol=0.05, atol=0.05)
    assert not torch.equal(mixed, full)  # bf16 really ran


def test_mmps_heuristic_covariance_is_exact_for_a_standard_normal_prior():
    """For N(0, s_d^2 I), Cov[x | x_t] = sigma^2 s_d^2 / (sigma^2 + s_d^2) I: the heuristic is
    exact there and needs no VJP through the denoiser; for a correlated prior it is not exact."""
    g = torch.Generator().manual_seed(3)
    d, m = 12, 5
    A = torch.randn(m, d, generator=g, dtype=f64)
    y = torch.randn(m, generator=g, dtype=f64)
    x_t = torch.randn(3, d, generator=g, dtype=f64)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=f64)
    white = GaussianPrior(torch.zeros(d, dtype=f64), 4.0 * torch.eye(d, dtype=f64))
    obs = GaussianObservation.from_matrix(A, y, 0.05)
    heuristic = MMPSDenoiser(white, obs, solver="direct", covariance="heuristic", sigma_data=2.0)
    exact = white.posterior(A, y, 0.05)
    torch.testing.assert_close(heuristic(x_t, sigma), exact(x_t, sigma))
    p = linear_gaussian_problem(d=d, m=m, seed=2)
    approx = MMPSDenoiser(p.prior, p.observation, solver="direct", covariance="heuristic")
    assert not torch.allclose(approx(x_t, sigma), p.posterior(x_t, sigma), atol=1e-3)
