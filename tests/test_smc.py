"""Sequential Monte Carlo with MMPS proposals: resampling and multimodal posteriors."""

import pytest
import torch

from appa.diffusion import (
    GaussianPrior,
    MMPSDenoiser,
    SMCSampler,
    make_sampler,
    systematic_resample,
)
from appa.diffusion.testproblems import gaussian_mixture_problem
from appa.metrics import sliced_wasserstein

f64 = torch.float64


def test_systematic_resampling_follows_the_weights():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(1000, generator=g, dtype=f64) ** 3
    w = w / w.sum()
    counts = torch.bincount(systematic_resample(w.log(), g), minlength=1000).double()
    # systematic resampling gives each particle floor(N w) or ceil(N w) copies
    expected = 1000 * w
    assert ((counts >= expected.floor()) & (counts <= expected.ceil())).all()
    assert counts.sum() == 1000
    degenerate = torch.full((10,), -1e9, dtype=f64)
    degenerate[3] = 0.0
    assert (systematic_resample(degenerate) == 3).all()


def test_smc_needs_a_direct_mmps_denoiser():
    prior = GaussianPrior(torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="MMPSDenoiser"):
        SMCSampler(prior)
    p = gaussian_mixture_problem(d=8, m=1, seed=0)
    with pytest.raises(ValueError, match="direct"):
        SMCSampler(MMPSDenoiser(p.prior, p.observation, solver="cg"))


def test_smc_log_likelihood_is_the_exact_evidence_for_gaussian_priors():
    """For a Gaussian prior and linear operator, MMPS's p(y | x_t) is exact: at sigma -> large the
    weights are flat, and at the smallest level the likelihood is N(y | A x, Sigma_y)."""
    from appa.diffusion.testproblems import linear_gaussian_problem

    p = linear_gaussian_problem(d=16, m=4, seed=1)
    mmps = MMPSDenoiser(p.prior, p.observation, solver="direct")
    x = p.prior.sample(3, torch.Generator().manual_seed(2))
    sigma = torch.full((3,), 0.7, dtype=f64)
    _, _, log_lik = mmps.moments(x, sigma, log_likelihood=True)
    # exact: y | x_t ~ N(A E[x|x_t], Sigma_y + A Cov[x|x_t] A^T), Cov = C - C (C + s^2)^-1 C
    C = p.prior.cov
    cov_t = C - C @ torch.linalg.solve(C + 0.49 * torch.eye(16, dtype=f64), C)
    S = p.A @ cov_t @ p.A.T + torch.diag(p.noise_variance)
    mean = p.prior(x, sigma) @ p.A.T
    expected = torch.distributions.MultivariateNormal(mean, S).log_prob(p.y)
    torch.testing.assert_close(log_lik, expected)


def test_smc_recovers_a_multimodal_posterior_that_mmps_misses():
    """d_y = 1: the posterior is a multimodal mixture; moment matching alone misweights modes."""
    p = gaussian_mixture_problem(d=8, m=1, seed=0)
    n = 600
    ref = p.posterior.sample(n, torch.Generator().manual_seed(0))
    floor = sliced_wasserstein(p.posterior.sample(n, torch.Generator().manual_seed(1)), ref)
    mmps = MMPSDenoiser(p.prior, p.observation, solver="direct")
    plain = make_sampler("ddpm", mmps, steps=50).sample(n, (8,), seed=0, dtype=f64)
    smc = SMCSampler(mmps, steps=50)
    particles = smc.sample(n, (8,), seed=0, dtype=f64)
    sw_plain, sw_smc = sliced_wasserstein(plain, ref), sliced_wasserstein(particles, ref)
    assert sw_smc < 0.5 * sw_plain, (sw_smc, sw_plain, floor)
    assert sw_smc < 2.5 * floor + 0.3, (sw_smc, floor)
    assert len(smc.last_ess) == 50 and min(smc.last_ess) > 1
