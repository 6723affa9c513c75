"""appa.lensing.fit: the Gaussian evidence of a lens equals the closed form, and maximising it
recovers an Einstein radius given 5 % off."""

import math

import pytest
import torch

from appa.lensing import LensingOperator, PixelGrid, gaussian_psf
from appa.lensing.fit import LensFit, fit_lens, log_evidence
from appa.lensing.galaxies import generate_galaxies
from appa.lensing.posterior import (
    GaussianSource,
    gaussian_process_covariance,
    gaussian_source_posterior,
)

F64 = torch.float64
TRUTH = {
    "theta_e": 1.0,
    "q": 0.7,
    "phi": 0.5,
    "x0": 0.03,
    "y0": -0.02,
    "gamma1": 0.02,
    "gamma2": -0.01,
}


@pytest.fixture(scope="module")
def problem():
    source_grid, image_grid = PixelGrid((16, 16), 0.1), PixelGrid((24, 24), 0.15)
    lenses = LensFit(TRUTH, []).lenses()
    psf = gaussian_psf(0.2, 0.15, dtype=F64)
    operator = LensingOperator(lenses, source_grid, image_grid, psf=psf, supersample=2, dtype=F64)
    source = generate_galaxies(1, seed=5, size=16)[0][0].double()
    g = torch.Generator().manual_seed(0)
    image = operator(source[None])[0] + 0.05 * torch.randn(24, 24, generator=g, dtype=F64)
    cov = gaussian_process_covariance(source_grid, 2 * float(source.std()), 0.2)
    prior = GaussianSource(torch.zeros(256, dtype=F64), cov)
    return operator, lenses, prior, image


def test_log_evidence_is_the_closed_form_one(problem):
    operator, lenses, prior, image = problem
    value = log_evidence(operator, lenses, prior, image, 0.05**2)
    _, closed = gaussian_source_posterior(
        prior, operator.matrix(), operator.flatten(image), 0.05**2
    )
    assert float(value) == pytest.approx(closed, rel=1e-9)


def test_fit_recovers_the_einstein_radius(problem):
    operator, _, prior, image = problem
    start = {**TRUTH, "theta_e": 1.05, "q": 0.75, "gamma1": 0.0, "gamma2": 0.0}
    fit = fit_lens(operator, prior, image, 0.05**2, start, steps=30, lr=0.01)
    assert abs(fit.params["theta_e"] - 1.0) < 0.01  # from 5 % off to under 1 %
    assert max(fit.history) > fit.history[0] + 100
    assert all(math.isfinite(v) for v in fit.history)
    with pytest.raises(ValueError, match=r"misses \['gamma2'\]"):
        fit_lens(operator, prior, image, 0.05**2, {k: v for k, v in TRUTH.items() if k != "gamma2"})
