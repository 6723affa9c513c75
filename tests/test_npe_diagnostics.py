"""Calibration diagnostics on posteriors whose calibration is known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from appa.npe.diagnostics import (
    c2st,
    c2st_many,
    coverage_from_ranks,
    expected_coverage,
    plot_corner,
    plot_coverage,
    plot_sbc,
    sbc_ranks,
    sbc_uniformity,
    tarp,
)


class GaussianPosterior:
    """theta ~ N(0, I_2), x = theta + N(0, I): the exact posterior is N(x / 2, I / 2); ``scale``
    != 1 makes it over- (< 1) or under-confident (> 1)."""

    def __init__(self, scale: float = 1.0) -> None:
        self.std = scale * math.sqrt(0.5)

    def sample(self, x, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        return x / 2 + self.std * torch.randn((n, *x.shape), generator=g)

    def log_prob(self, theta, x):
        return torch.distributions.Normal(x / 2, self.std).log_prob(theta).sum(-1)


def _pairs(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, 2, generator=g)
    return theta, theta + torch.randn(n, 2, generator=g)


def test_expected_coverage_exact_and_overconfident():
    theta, x = _pairs()
    levels, cov = expected_coverage(GaussianPosterior(), theta, x, (0.5, 0.9, 0.95), 400)
    # binomial standard error with 400 pairs is at most 0.025
    assert torch.allclose(cov, levels, atol=0.075)
    _, narrow = expected_coverage(GaussianPosterior(0.6), theta, x, (0.5, 0.9, 0.95), 400)
    assert (narrow < levels - 0.1).all()
    _, wide = expected_coverage(GaussianPosterior(1.6), theta, x, (0.5, 0.9), 400)
    assert (wide > levels[:2] + 0.05).all()
    assert torch.equal(
        coverage_from_ranks(torch.tensor([0.1, 0.6, 0.95]), [0.5, 1.0]),
        torch.tensor([1 / 3, 1.0], dtype=torch.float64),
    )


def test_sbc_ranks_uniform_only_when_calibrated():
    theta, x = _pairs(600)
    ranks = sbc_ranks(GaussianPosterior(), theta, x, 99)
    assert ranks.shape == (600, 2) and ranks.min() >= 0 and ranks.max() <= 99
    assert (sbc_uniformity(ranks, 99) > 1e-3).all()
    bad = sbc_ranks(GaussianPosterior(0.5), theta, x, 99)
    assert (sbc_uniformity(bad, 99) < 1e-6).all()


def test_tarp_flags_overconfidence():
    theta, x = _pairs(500)
    good = GaussianPosterior().sample(x, 300, seed=1)
    alpha, ecp, atc = tarp(good, theta)
    assert alpha.shape == ecp.shape == (51,)
    assert abs(atc) < 0.04 and (ecp - alpha).abs().max() < 0.1
    # over-confidence bends the curve into an S: judge by its largest departure
    alpha, ecp_bad, _ = tarp(GaussianPosterior(0.4).sample(x, 300, seed=1), theta)
    assert (ecp_bad - alpha).abs().max() > 0.15
    with pytest.raises(ValueError, match="theta must be"):
        tarp(good, theta[:10])


def test_c2st_chance_for_equal_and_high_for_shifted_samples():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, 2, generator=g), torch.randn(1000, 2, generator=g)
    assert c2st(a, b) == pytest.approx(0.5, abs=0.05)
    assert c2st(a, b + torch.tensor([3.0, 0.0])) > 0.9
    with pytest.raises(ValueError, match="NaN"):
        c2st(a, b * float("nan"))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        c2st(a, b[:, :1])


def test_c2st_reaches_the_bayes_accuracy_and_agrees_with_scikit_learn():
    """Two unit Gaussians a distance s apart are told apart at best with accuracy Phi(s / 2);
    the batched classifiers must get there, and score as scikit-learn's MLPClassifier (the
    sbibm reference implementation) does on the same folds."""
    from scipy.stats import norm
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    shifts = [0.5, 1.0, 2.0]
    pairs = []
    for s in shifts:
        a, b = rng.standard_normal((2000, 2)), rng.standard_normal((2000, 2))
        pairs.append((a, b + np.array([s, 0.0])))
    scores = c2st_many(pairs)
    for s, score in zip(shifts, scores, strict=True):
        assert score == pytest.approx(norm.cdf(s / 2), abs=0.025)

    a, b = pairs[1]
    mean, std = a.mean(0), a.std(0, ddof=1)
    data = np.concatenate([(a - mean) / std, (b - mean) / std])
    target = np.r_[np.zeros(len(a)), np.ones(len(b))]
    clf = MLPClassifier(hidden_layer_sizes=(20, 20), max_iter=10000, random_state=1)
    folds = KFold(n_splits=5, shuffle=True, random_state=1)
    reference = cross_val_score(clf, data, target, cv=folds, scoring="accuracy").mean()
    assert scores[1] == pytest.approx(reference, abs=0.02)


def test_plots_are_written(tmp_path):
    theta, x = _pairs(50)
    post = GaussianPosterior()
    ranks = sbc_ranks(post, theta, x, 30)
    grid = np.linspace(0, 1, 5)
    paths = [
        plot_coverage(
            {"exact": (grid, grid)}, tmp_path / "cov.png", tarp_curves={"t": (grid, grid)}
        ),
        plot_sbc(ranks, 30, tmp_path / "sbc.png", ["a", "b"]),
        plot_corner({"q": post.sample(x[0], 200)}, tmp_path / "corner.png", truth=theta[0]),
    ]
    for p in paths:
        assert p.stat().st_size > 5000
