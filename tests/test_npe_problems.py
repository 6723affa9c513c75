"""The sbibm tasks written here, checked against the reference observations and posterior
samples that the sbibm package ships (skipped when it is not installed)."""

from __future__ import annotations

import math

import pytest
import torch
from npe_utils import needs_sbibm

from appa.npe import make_problem
from appa.npe.problems import PROBLEMS


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_tasks_simulate_with_declared_shapes_and_reproducibly(name):
    task = make_problem(name)
    theta, x = task.sample_joint(64, seed=3)
    assert theta.shape == (64, task.dim_theta) and x.shape == (64, *task.x_shape)
    assert torch.isfinite(x).all()
    assert torch.equal(task.sample_joint(64, seed=3)[1], x)
    with pytest.raises(ValueError, match="must end with"):
        task.simulate(torch.zeros(2, task.dim_theta + 1))


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="unknown task 'three_moons'"):
        make_problem("three_moons")


@needs_sbibm
def test_gaussian_linear_reference_is_the_analytic_posterior():
    """Prior N(0, 0.1 I), likelihood N(theta, 0.1 I): posterior N(x / 2, 0.05 I)."""
    task = make_problem("gaussian_linear")
    for obs in (1, 7):
        x, theta, ref = task.reference(obs)
        assert ref.shape == (10000, 10) and x.shape == (10,) and theta.shape == (10,)
        assert torch.allclose(ref.mean(0), x / 2, atol=0.012)
        assert torch.allclose(ref.var(0), torch.full((10,), 0.05), rtol=0.06)
        # our prior and simulator put x at the same distance from theta as sbibm's
        assert float(((x - theta) ** 2).mean()) == pytest.approx(0.1, rel=0.9)


@needs_sbibm
def test_two_moons_reference_lies_on_the_simulators_ring():
    """Inverting our map at reference draws leaves points at radius r ~ N(0.1, 0.01^2) to the
    right of the offset: a wrong rotation or sign would scatter them."""
    task = make_problem("two_moons")
    for obs in (1, 4):
        x, _, ref = task.reference(obs)
        c = math.sqrt(0.5)
        z0 = c * ref[:, 0] + c * ref[:, 1]
        z1 = -c * ref[:, 0] + c * ref[:, 1]
        u = x[0] + z0.abs() - 0.25
        v = x[1] - z1
        r = (u**2 + v**2).sqrt()
        assert (u > -0.01).float().mean() > 0.99
        assert r.mean() == pytest.approx(0.1, abs=0.005)
        assert r.std() == pytest.approx(0.01, abs=0.005)


@needs_sbibm
def test_gaussian_mixture_and_uniform_references():
    mix = make_problem("gaussian_mixture")
    x, _, ref = mix.reference(6)
    # far from the +-10 bounds the posterior is 0.5 N(x, I) + 0.5 N(x, 0.01 I)
    assert torch.allclose(ref.mean(0), x, atol=0.05)
    assert torch.allclose(ref.var(0), torch.full((2,), 0.505), rtol=0.1)
    assert ((ref - x).norm(dim=1) < 0.3).float().mean() == pytest.approx(
        0.5 * 0.99 + 0.5 * 0.044, abs=0.03
    )
    glu = make_problem("gaussian_linear_uniform")
    x, _, ref = glu.reference(1)
    assert (ref.abs() <= 1).all()
    far = x.abs() < 0.2
    if far.any():
        assert torch.allclose(ref.mean(0)[far], x[far], atol=0.03)


@needs_sbibm
def test_slcp_observation_is_likely_under_its_true_parameters():
    """Our SLCP likelihood (4 iid 2-D Gaussians) ranks sbibm's true parameters above nearly all
    prior draws for its observation, and our simulator's covariance is the stated one."""
    task = make_problem("slcp")

    def log_lik(theta, x):
        s1, s2, rho = theta[:, 2] ** 2, theta[:, 3] ** 2, torch.tanh(theta[:, 4])
        cov = torch.stack(
            [
                torch.stack([s1**2 + 1e-6, rho * s1 * s2], -1),
                torch.stack([rho * s1 * s2, s2**2 + 1e-6], -1),
            ],
            -2,
        )
        dist = torch.distributions.MultivariateNormal(theta[:, None, :2], cov[:, None])
        return dist.log_prob(x.reshape(1, 4, 2)).sum(-1)

    x, theta_true, ref = task.reference(1)
    prior_draws = task.prior.sample(2000, torch.Generator().manual_seed(0))
    assert (log_lik(prior_draws, x) < log_lik(theta_true[None], x)).float().mean() > 0.99
    assert log_lik(ref[:500], x).mean() > torch.quantile(log_lik(prior_draws, x), 0.99)
    theta = torch.tensor([[0.5, -1.0, 1.2, -0.9, 0.7]]).expand(20000, 5)
    pts = task.simulate(theta, torch.Generator().manual_seed(1)).reshape(-1, 2)
    emp = torch.cov(pts.T)
    s1, s2, rho = 1.2**2, 0.9**2, math.tanh(0.7)
    want = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]])
    assert torch.allclose(emp, want, rtol=0.05, atol=0.02)
