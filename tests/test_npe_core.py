"""appa.npe: priors, parameter maps, estimators' densities, ensembles, checkpoints, stored pairs."""

from __future__ import annotations

import math

import pytest
import torch
import zuko

from appa.diffusion import GaussianPrior
from appa.io.checkpoints import CheckpointError, load_checkpoint
from appa.nn.mlp import MLP, Conv1dEmbedding, ResMLP, TimeConditionedMLP
from appa.npe import (
    BoxUniform,
    DiagonalGaussian,
    Ensemble,
    EstimatorConfig,
    GaussianNoise,
    NPETrainingConfig,
    build_estimator,
    load_estimator,
    load_pairs,
    probability_flow_log_prob,
    save_estimator,
    save_pairs,
    train_estimator,
)
from appa.npe.estimators import ParameterTransform
from appa.npe.priors import prior_from_spec


def test_box_uniform_density_and_errors():
    prior = BoxUniform([-1.0, 0.0], [1.0, 4.0])
    theta = prior.sample(1000, torch.Generator().manual_seed(0))
    assert theta.shape == (1000, 2)
    assert ((theta >= prior.low.float()) & (theta <= prior.high.float())).all()
    assert torch.allclose(prior.log_prob(theta), torch.full((1000,), -math.log(8.0)))
    assert prior.log_prob(torch.tensor([[2.0, 1.0]])).item() == -math.inf
    with pytest.raises(ValueError, match="low < high"):
        BoxUniform([0.0], [0.0])
    with pytest.raises(ValueError, match="end with 2"):
        prior.check(torch.zeros(3, 3))


def test_priors_are_torch_distributions():
    """Priors work wherever a torch distribution does (zuko's box uniform, torch's normal),
    while their own draws come from the generator they are given."""
    box = BoxUniform([-1.0, 0.0], [1.0, 4.0])
    gauss = DiagonalGaussian([0.0, 1.0], [1.0, 2.0])
    assert isinstance(box, zuko.distributions.BoxUniform)
    assert isinstance(gauss, torch.distributions.Distribution)
    assert box.event_shape == gauss.event_shape == (2,)
    torch.testing.assert_close(box.mean, torch.tensor([0.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(gauss.variance, torch.tensor([1.0, 4.0], dtype=torch.float64))
    theta = gauss.sample(5, torch.Generator().manual_seed(3))
    assert torch.equal(theta, gauss.sample(5, torch.Generator().manual_seed(3)))
    torch.testing.assert_close(
        gauss.log_prob(theta.double()),
        torch.distributions.Normal(gauss.loc, gauss.scale).log_prob(theta.double()).sum(-1),
    )
    assert prior_from_spec(box.spec()).spec() == box.spec()


def test_parameter_transform_roundtrip_and_exact_log_det():
    low = torch.tensor([-1.0, -math.inf, 2.0])
    high = torch.tensor([1.0, math.inf, 5.0])
    tr = ParameterTransform(low, high)
    g = torch.Generator().manual_seed(1)
    theta = torch.stack(
        [
            torch.rand(64, generator=g) * 1.8 - 0.9,
            torch.randn(64, generator=g) * 3,
            2.1 + 2.8 * torch.rand(64, generator=g),
        ],
        dim=-1,
    ).double()
    tr.fit(theta)
    z, ladj = tr(theta)
    assert torch.allclose(tr.inverse(z).double(), theta, atol=1e-5)
    # the Jacobian is diagonal: compare with autograd, dimension by dimension
    t = theta.clone().requires_grad_(True)
    u = (tr._to_u(t)[0] - tr.shift) / tr.scale
    diag = torch.stack(
        [torch.autograd.grad(u[:, i].sum(), t, retain_graph=True)[0][:, i] for i in range(3)], -1
    )
    assert torch.allclose(ladj, diag.abs().log().sum(-1), atol=1e-8)
    with pytest.raises(ValueError, match="half-bounded"):
        ParameterTransform(torch.tensor([0.0]), torch.tensor([math.inf]))


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_log_prob_normalised_over_a_bounded_box(kind):
    """An (untrained) estimator's log_prob integrates to one over the prior box: the logit map
    and the standardisation are accounted for. The diffusion density comes from the
    probability-flow ODE, so its integral is approximate."""
    prior = BoxUniform([-1.0, 0.0], [1.0, 3.0])
    cfg = EstimatorConfig(kind=kind)
    cfg.diffusion.ode_steps = 64
    cfg.diffusion.width = 32
    est = build_estimator(prior, (2,), cfg)
    g = torch.Generator().manual_seed(0)
    est.fit_transforms(prior.sample(500, g), torch.randn(500, 2, generator=g))
    n = 60 if kind == "flow" else 32
    a = torch.linspace(-1, 1, n + 1)
    b = torch.linspace(0, 3, n + 1)
    ca, cb = (a[1:] + a[:-1]) / 2, (b[1:] + b[:-1]) / 2
    grid = torch.stack(torch.meshgrid(ca, cb, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        lp = est.log_prob(grid, torch.tensor([0.3, -0.2]))
    mass = float(lp.double().exp().sum() * (2 / n) * (3 / n))
    assert mass == pytest.approx(1.0, abs=0.05 if kind == "flow" else 0.08)
    outside = est.log_prob(torch.tensor([[1.5, 1.0]]), torch.tensor([0.3, -0.2]))
    assert outside.item() == -math.inf


def test_probability_flow_log_prob_matches_gaussian():
    """With the exact denoiser of N(m, C), the ODE density equals N(m, C + s_min^2 I)."""
    m = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64)
    A = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.1, -0.3, 0.5]], dtype=torch.float64)
    C = A @ A.T
    prior = GaussianPrior(m, C)
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [0.3, 0.1, -0.4]], dtype=torch.float64)
    lp = probability_flow_log_prob(prior, x.float(), 1e-3, 100.0, steps=128)
    exact = torch.distributions.MultivariateNormal(m, C + 1e-6 * torch.eye(3)).log_prob(x)
    assert torch.allclose(lp, exact, atol=2e-2), (lp, exact)


def _gaussian_problem(n: int, seed: int = 0):
    """theta ~ N(0, I_2), x = theta + N(0, 0.25 I): posterior N(0.8 x, 0.2 I)."""
    prior = DiagonalGaussian([0.0, 0.0], [1.0, 1.0])
    g = torch.Generator().manual_seed(seed)
    theta = prior.sample(n, g)
    x = theta + 0.5 * torch.randn(theta.shape, generator=g)
    return prior, theta, x


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_trained_estimator_recovers_gaussian_posterior(kind):
    prior, theta, x = _gaussian_problem(1000)
    cfg = EstimatorConfig(kind=kind)
    cfg.flow.transforms, cfg.flow.hidden = 2, [32, 32]
    cfg.diffusion.width, cfg.diffusion.blocks, cfg.diffusion.steps = 64, 2, 32
    torch.manual_seed(0)
    est = build_estimator(prior, (2,), cfg)
    result = train_estimator(
        est, theta, x, NPETrainingConfig(max_epochs=60, patience=10, batch_size=64)
    )
    assert result.best_validation == min(result.validation_loss)
    x_o = torch.tensor([1.0, -0.5])
    draws = est.sample(x_o, 4000, seed=1)
    assert draws.shape == (4000, 2)
    # 1000 simulations: estimator error of a few tenths of a posterior std across seeds; a
    # posterior that ignored x (the prior) would be off by 0.8 in mean and 2.2x in std
    assert torch.allclose(draws.mean(0), 0.8 * x_o, atol=0.2)
    assert torch.allclose(draws.std(0), torch.full((2,), math.sqrt(0.2)), rtol=0.3)
    batch = est.sample(torch.stack([x_o, -x_o]), 10, seed=2)
    assert batch.shape == (10, 2, 2)
    if kind == "flow":
        # Monte Carlo KL(q || p) from the estimator's own draws and densities
        exact = torch.distributions.Normal(0.8 * x_o, math.sqrt(0.2)).log_prob(draws).sum(-1)
        with torch.no_grad():
            kl = float((est.log_prob(draws, x_o) - exact).mean())
        assert -0.02 < kl < 0.15, kl


def test_ensemble_mixture_density_checkpoint_and_seeds(tmp_path):
    prior = BoxUniform([-1.0, -1.0], [1.0, 1.0])
    g = torch.Generator().manual_seed(0)
    members = []
    for k in range(3):
        torch.manual_seed(k)
        m = build_estimator(prior, (2,), EstimatorConfig())
        m.fit_transforms(prior.sample(100, g), torch.randn(100, 2, generator=g))
        members.append(m.eval())
    ens = Ensemble(members)
    theta = prior.sample(5, g)
    x = torch.randn(5, 2, generator=g)
    with torch.no_grad():
        each = torch.stack([m.log_prob(theta, x) for m in members]).double()
        mixed = ens.log_prob(theta, x)
    assert torch.allclose(mixed.double(), each.exp().mean(0).log(), atol=1e-5)
    assert ens.sample(x[0], 50, seed=3).shape == (50, 2)
    assert torch.equal(ens.sample(x[0], 50, seed=3), ens.sample(x[0], 50, seed=3))
    save_estimator(tmp_path / "ckpt", ens, {"note": "test"})
    loaded, extra = load_estimator(tmp_path / "ckpt")
    assert extra == {"note": "test"} and isinstance(loaded, Ensemble)
    with torch.no_grad():
        assert torch.allclose(loaded.log_prob(theta, x), mixed, atol=1e-6)
    assert torch.equal(loaded.sample(x[0], 50, seed=3), ens.sample(x[0], 50, seed=3))
    assert isinstance(load_checkpoint(str(tmp_path / "ckpt")).tensors["member2"], dict)
    next((tmp_path / "ckpt").glob("step-*/member1.safetensors")).unlink()
    with pytest.raises(CheckpointError, match=r"member1\.safetensors"):
        load_estimator(tmp_path / "ckpt")


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_stored_pairs_roundtrip_and_errors(tmp_path, suffix):
    theta, x = torch.randn(50, 3), torch.randn(50, 4, 6)
    path = save_pairs(tmp_path / f"sims{suffix}", theta, x, {"task": "toy"})
    t2, x2, attrs = load_pairs(path)
    assert torch.equal(t2, theta) and torch.equal(x2, x) and attrs == {"task": "toy"}
    save_pairs(path, theta[:10], x[:10])  # overwrite in place
    assert load_pairs(path)[0].shape == (10, 3)
    with pytest.raises(ValueError, match=r"\.zarr store or an \.h5"):
        save_pairs(tmp_path / "sims.txt", theta, x)
    with pytest.raises(FileNotFoundError):
        load_pairs(tmp_path / f"missing{suffix}")


def test_training_rejects_bad_data_and_noise_is_fresh():
    prior, theta, x = _gaussian_problem(100)
    est = build_estimator(prior, (2,), EstimatorConfig())
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x has NaN"):
        train_estimator(est, theta, bad, NPETrainingConfig(max_epochs=1))
    with pytest.raises(ValueError, match="x must be"):
        train_estimator(est, theta, x[:, :1], NPETrainingConfig(max_epochs=1))
    box = BoxUniform([-1.0, -1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="outside the prior support"):
        train_estimator(
            build_estimator(box, (2,), EstimatorConfig()),
            theta * 5,
            x,
            NPETrainingConfig(max_epochs=1),
        )
    noise = GaussianNoise(torch.tensor([0.0, 1.0]))
    g = torch.Generator().manual_seed(0)
    a, b = noise(x, g), noise(x, g)
    assert torch.equal(a[:, 0], x[:, 0]) and not torch.equal(a[:, 1], b[:, 1])
    r = train_estimator(est, theta, x, NPETrainingConfig(max_epochs=3), noise=noise)
    assert len(r.validation_loss) == 3
    with pytest.raises(ValueError, match="x must have shape"):
        est.sample(torch.zeros(3), 5)


def test_plateau_schedule_halves_the_rate_only_after_stale_epochs():
    prior, theta, x = _gaussian_problem(200)
    cfg = EstimatorConfig()
    cfg.flow.transforms, cfg.flow.hidden = 1, [8]
    runs = {}
    for schedule in ("constant", "plateau"):
        torch.manual_seed(0)
        est = build_estimator(prior, (2,), cfg)
        train = NPETrainingConfig(
            max_epochs=80, patience=8, learning_rate=3e-2, lr_schedule=schedule
        )
        runs[schedule] = train_estimator(est, theta, x, train)
    assert set(runs["constant"].learning_rate) == {3e-2}
    rates, losses = runs["plateau"].learning_rate, runs["plateau"].validation_loss
    assert len(rates) == len(losses) and rates[0] == 3e-2
    drops = [e for e in range(1, len(rates)) if rates[e] < rates[e - 1]]
    assert drops, "a rate this high must stall, and the schedule must then lower it"
    for e in drops:
        assert rates[e] == rates[e - 1] / 2
        # a drop follows more than patience // 4 = 2 epochs that did not beat the best so far
        assert e >= 4 and min(losses[e - 3 : e]) >= min(losses[: e - 3])


def test_small_networks_shapes_and_errors():
    assert MLP(3, 2, [8])(torch.zeros(4, 3)).shape == (4, 2)
    res = ResMLP(3, 2, width=16, blocks=2)
    assert res(torch.zeros(4, 3)).shape == (4, 2)
    conv = Conv1dEmbedding(50, 7)
    assert conv(torch.zeros(4, 50)).shape == (4, 7)
    with pytest.raises(ValueError, match="Conv1dEmbedding expects"):
        conv(torch.zeros(4, 49))
    net = TimeConditionedMLP(3, context_features=5, width=16)
    assert net(torch.zeros(4, 3), torch.zeros(4), torch.zeros(4, 5)).shape == (4, 3)
    with pytest.raises(ValueError, match="context of shape"):
        net(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(3, 2, activation_name="swishy")
