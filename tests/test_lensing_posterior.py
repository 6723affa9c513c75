"""appa.lensing posterior: with a Gaussian source prior, MMPS through the lensing operator is the
closed-form posterior (denoiser exactly, samples within sampling error); Gaussian baselines."""

import math

import pytest
import torch

from appa.diffusion import GaussianPrior, MMPSDenoiser
from appa.lensing import SIE, ExternalShear, LensingOperator, PixelGrid, gaussian_psf
from appa.lensing.posterior import (
    GaussianSource,
    SamplingConfig,
    dihedral,
    empirical_gaussian,
    fit_gaussian_process,
    gaussian_process_covariance,
    gaussian_source_posterior,
    sample_source_posterior,
)

F64 = torch.float64
SOURCE, IMAGE = PixelGrid((8, 8), 0.12), PixelGrid((10, 10), 0.15)
NOISE = 0.02


def _operator(dense: bool, mask: torch.Tensor | None = None) -> LensingOperator:
    return LensingOperator(
        [SIE(0.5, 0.7, 0.3), ExternalShear(0.02, 0.01)],
        SOURCE,
        IMAGE,
        psf=gaussian_psf(0.2, 0.15, dtype=F64),
        supersample=2,
        mask=mask,
        dtype=F64,
        dense=dense,
    )


@pytest.fixture(scope="module")
def problem():
    """A GP source behind an SIE + shear, seen through a PSF with noise variance 0.02 on 90 of
    100 pixels; the closed-form posterior."""
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(10, 10, dtype=torch.bool)
    mask.view(-1)[torch.randperm(100, generator=g)[:10]] = False
    operator = _operator(dense=True, mask=mask)
    prior = GaussianSource(torch.zeros(64, dtype=F64), gaussian_process_covariance(SOURCE, 1, 0.3))
    truth = torch.linalg.cholesky(prior.cov) @ torch.randn(64, generator=g, dtype=F64)
    clean = operator(truth.reshape(1, 8, 8))[0]
    image = clean + math.sqrt(NOISE) * torch.randn(10, 10, generator=g, dtype=F64)
    image[~mask] = math.nan  # hidden pixels may hold anything
    A = operator.matrix()
    posterior, _ = gaussian_source_posterior(prior, A, operator.flatten(image), NOISE)
    return operator, prior, image, posterior


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "ray-traced"])
def test_mmps_denoiser_is_the_exact_posterior_denoiser(problem, dense):
    operator, prior, image, posterior = problem
    if not dense:
        operator = _operator(dense=False, mask=operator.mask)
    clean = torch.where(operator.mask, image, torch.zeros_like(image))
    observation = operator.observation(clean, NOISE)
    mmps = MMPSDenoiser(GaussianPrior(prior.mean, prior.cov), observation, iterations=48)
    exact = GaussianPrior(posterior.mean, posterior.cov)
    g = torch.Generator().manual_seed(1)
    x_t = 3 * torch.randn(5, 8, 8, generator=g, dtype=F64)
    sigma = torch.tensor([1e-2, 0.1, 1.0, 10.0, 100.0], dtype=F64)
    torch.testing.assert_close(mmps(x_t, sigma), exact(x_t, sigma), rtol=1e-6, atol=1e-6)


def _cov_error(samples, cov):
    return float((torch.cov(samples.T) - cov).norm() / cov.norm())


def test_mmps_samples_match_the_closed_form_posterior(problem):
    operator, prior, image, posterior = problem
    n = 2000
    config = SamplingConfig(
        sampler="heun", steps=32, iterations=32, batch=n, sigma_min=1e-3, sigma_max=1e2
    )
    samples = sample_source_posterior(
        GaussianPrior(prior.mean, prior.cov),
        operator,
        image,
        NOISE,
        n,
        config,
        event_shape=(8, 8),
        dtype=F64,
    ).reshape(n, 64)
    # mean: every pixel within 4.5 standard errors
    z = (samples.mean(0) - posterior.mean) / (posterior.std / math.sqrt(n))
    assert z.abs().max() < 4.5, z.abs().max()
    ratio = samples.var(0) / posterior.std**2
    assert ratio.min() > 0.85 and ratio.max() < 1.15, (ratio.min(), ratio.max())
    # covariance: as close as n exact draws are (their own sampling error, plus a little)
    g = torch.Generator().manual_seed(5)
    exact = (
        posterior.mean
        + torch.randn(n, 64, generator=g, dtype=F64) @ torch.linalg.cholesky(posterior.cov).T
    )
    reference = _cov_error(exact, posterior.cov)
    assert _cov_error(samples, posterior.cov) < 1.3 * reference + 0.02
    # the prior is far from the posterior by the same measure: the check can fail
    assert _cov_error(GaussianPrior(prior.mean, prior.cov).sample(n, g), posterior.cov) > 1.0


def test_dps_and_mmps_pull_samples_towards_the_data(problem):
    operator, prior, image, posterior = problem
    base = {"sampler": "ddpm", "steps": 32, "batch": 64, "sigma_min": 1e-3, "sigma_max": 1e2}
    gaussian = GaussianPrior(prior.mean, prior.cov)
    prior_error = float((posterior.mean - prior.mean).norm())
    for method in ("mmps", "dps"):
        config = SamplingConfig(method=method, iterations=16, zeta=0.5, **base)
        samples = sample_source_posterior(
            gaussian, operator, image, NOISE, 64, config, event_shape=(8, 8), dtype=F64
        )
        error = float((samples.reshape(64, -1).mean(0) - posterior.mean).norm())
        assert error < 0.5 * prior_error, (method, error, prior_error)


def test_gaussian_process_fit_recovers_its_length_and_amplitude():
    grid = PixelGrid((12, 12), 0.1)
    cov = gaussian_process_covariance(grid, 2.0, 0.3)
    g = torch.Generator().manual_seed(2)
    draws = torch.randn(400, 144, generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T
    fitted, info = fit_gaussian_process(draws.reshape(-1, 12, 12), grid, [0.15, 0.3, 0.6])
    assert info["length"] == 0.3
    assert info["amplitude"] == pytest.approx(2.0, rel=0.1)
    assert fitted.cov.shape == (144, 144)


def test_empirical_gaussian_is_symmetric_under_rotations_and_reflections():
    g = torch.Generator().manual_seed(3)
    images = torch.rand(20, 6, 6, generator=g, dtype=F64)
    assert dihedral(images).shape == (160, 6, 6)
    source = empirical_gaussian(images)
    index = torch.arange(36).reshape(6, 6)
    for turned in (torch.rot90(index, 1), index.flip(-1)):
        p = turned.flatten()
        torch.testing.assert_close(source.mean[p], source.mean)
        torch.testing.assert_close(source.cov[p][:, p], source.cov)


def test_sampling_rejects_bad_settings(problem):
    operator, prior, image, _ = problem
    gaussian = GaussianPrior(prior.mean, prior.cov)
    with pytest.raises(ValueError, match="unknown posterior method 'map'"):
        sample_source_posterior(
            gaussian, operator, image, NOISE, 2, SamplingConfig(method="map"), event_shape=(8, 8)
        )
    with pytest.raises(ValueError, match="samples must be >= 1"):
        sample_source_posterior(gaussian, operator, image, NOISE, 0, event_shape=(8, 8))
    with pytest.raises(ValueError, match="unknown GP kernel"):
        gaussian_process_covariance(SOURCE, 1.0, 0.3, kernel="rbf")
