"""Neural posterior estimators ``q(theta | x)``: a conditional normalizing flow (zuko) and a
conditional diffusion model (``appa.diffusion``), both with an embedding network for ``x``, and
ensembles of either.

Every estimator works on standardised unbounded parameters ``z``: box-bounded dimensions go
through a logit map (see :mod:`appa.npe.priors`), then every dimension is shifted and scaled by
the training statistics. ``log_prob`` adds the log-determinant of that map, so densities are
densities over the original ``theta``. Observations are standardised elementwise.

Posterior objects answer two questions:

- ``sample(x, n)``: ``n`` draws, ``(n, dim)`` for one observation ``x`` of shape ``x_shape`` or
  ``(n, B, dim)`` for a batch ``(B, *x_shape)``;
- ``log_prob(theta, x)``: ``log q(theta | x)`` with ``theta`` ``(..., dim)`` broadcast against the
  batch of ``x``.

Densities of the diffusion estimator come from the probability-flow ODE with an exact trace of
the denoiser's Jacobian (``dim`` backward passes per step: fine for O(10) parameters).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import zuko
from pydantic import Field
from torch import Tensor, nn

from appa.config import StrictModel
from appa.diffusion import EDMDenoiser, ScheduleConfig, denoising_loss, make_sampler
from appa.diffusion import sample_training_sigma as _sample_sigma
from appa.diffusion.schedules import ScheduleName
from appa.nn.mlp import MLP, Conv1dEmbedding, ResMLP, TimeConditionedMLP
from appa.npe.priors import Prior, prior_from_spec

__all__ = [
    "DiffusionConfig",
    "DiffusionEstimator",
    "EmbeddingConfig",
    "Ensemble",
    "EstimatorConfig",
    "FlowConfig",
    "FlowEstimator",
    "NeuralPosterior",
    "ParameterTransform",
    "build_estimator",
    "probability_flow_log_prob",
]

_EPS = 1e-6


class EmbeddingConfig(StrictModel):
    """The network that summarises ``x`` into ``features`` numbers (``identity``: none)."""

    kind: Literal["identity", "mlp", "resmlp", "conv1d"] = "identity"
    features: int = Field(32, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [64, 64])
    blocks: int = Field(2, ge=1)
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64])
    kernel_size: int = Field(5, ge=1)


class FlowConfig(StrictModel):
    """A zuko flow: ``nsf`` (neural spline), ``maf`` (affine autoregressive) or ``naf``."""

    flow: Literal["nsf", "maf", "naf"] = "nsf"
    transforms: int = Field(5, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [64, 64])
    bins: int = Field(8, ge=2)


class DiffusionConfig(StrictModel):
    """A conditional denoiser over ``theta`` given the embedded ``x`` and how it is sampled."""

    width: int = Field(128, ge=8)
    blocks: int = Field(3, ge=1)
    schedule: ScheduleConfig = Field(
        default_factory=lambda: ScheduleConfig(sigma_max=100.0),
        description="sampling schedule (its bounds also bound the training noise)",
    )
    train_schedule: ScheduleName = Field("loglogit", description="how training noise is drawn")
    sampler: Literal["ddpm", "ddim", "euler", "heun", "pc", "lms"] = "heun"
    steps: int = Field(64, ge=2)
    ode_steps: int = Field(64, ge=2, description="steps of the probability-flow ODE for log_prob")


class EstimatorConfig(StrictModel):
    """What estimator to build (``flow`` or ``diffusion``) and its parts."""

    kind: Literal["flow", "diffusion"] = "flow"
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)


class ParameterTransform(nn.Module):
    """``theta -> z``: logit on box-bounded dimensions, then standardisation; bijective."""

    def __init__(self, low: Tensor, high: Tensor) -> None:
        super().__init__()
        low, high = low.double(), high.double()
        bounded = torch.isfinite(low) & torch.isfinite(high)
        if (torch.isfinite(low) != torch.isfinite(high)).any():
            raise ValueError(
                "half-bounded parameters are not supported: bound both sides or neither"
            )
        self.register_buffer("bounded", bounded)
        self.register_buffer("low", torch.where(bounded, low, 0.0))
        self.register_buffer("width", torch.where(bounded, high - low, 1.0))
        self.register_buffer("shift", torch.zeros_like(low))
        self.register_buffer("scale", torch.ones_like(low))

    def _to_u(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        t = theta.double()
        p = ((t - self.low) / self.width).clamp(_EPS, 1 - _EPS)
        u = torch.where(self.bounded, torch.log(p) - torch.log1p(-p), t)
        # d u / d theta = 1 / (width p (1 - p)) on bounded dimensions
        ladj = torch.where(self.bounded, -(self.width * p * (1 - p)).log(), 0.0)
        return u, ladj.sum(dim=-1)

    @torch.no_grad()
    def fit(self, theta: Tensor) -> None:
        """Sets the standardisation from training parameters ``(N, dim)``."""
        u, _ = self._to_u(theta)
        self.shift.copy_(u.mean(dim=0))
        self.scale.copy_(u.std(dim=0).clamp(min=1e-6))

    def forward(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log|det dz/dtheta|)``: ``(..., dim)`` float32 and ``(...)`` float64."""
        u, ladj = self._to_u(theta)
        z = (u - self.shift) / self.scale
        return z.float(), ladj - self.scale.log().sum()

    def inverse(self, z: Tensor) -> Tensor:
        """``z (..., dim) -> theta``, float32."""
        u = z.double() * self.scale + self.shift
        theta = torch.where(self.bounded, self.low + self.width * torch.sigmoid(u), u)
        return theta.float()

    def inside(self, theta: Tensor) -> Tensor:
        """Whether ``theta (..., dim)`` lies in the support, ``(...)`` bool."""
        t = theta.double()
        ok = (t >= self.low) & (t <= self.low + self.width)
        return torch.where(self.bounded, ok, True).all(dim=-1)


class DataTransform(nn.Module):
    """Elementwise standardisation of observations ``(..., *x_shape)``."""

    def __init__(self, x_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.register_buffer("mean", torch.zeros(self.x_shape))
        self.register_buffer("std", torch.ones(self.x_shape))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        self.mean.copy_(x.mean(dim=0))
        std = x.std(dim=0)
        # constant features keep a unit scale rather than blowing up
        self.std.copy_(torch.where(std > 1e-8 * std.max().clamp(min=1e-30), std, 1.0))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def make_embedding(cfg: EmbeddingConfig, x_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    """The embedding network and its output width."""
    flat = math.prod(x_shape)
    if cfg.kind == "identity":
        return nn.Flatten(start_dim=-len(x_shape)), flat
    if cfg.kind == "conv1d":
        if len(x_shape) not in (1, 2):
            raise ValueError(f"a conv1d embedding needs x of shape (L,) or (C, L), got {x_shape}")
        in_channels = 1 if len(x_shape) == 1 else x_shape[0]
        net = Conv1dEmbedding(x_shape[-1], cfg.features, cfg.channels, in_channels, cfg.kernel_size)
        return net, cfg.features
    head: nn.Module
    if cfg.kind == "mlp":
        head = MLP(flat, cfg.features, cfg.hidden)
    else:
        head = ResMLP(flat, cfg.features, max(cfg.hidden or [64]), cfg.blocks)
    return nn.Sequential(nn.Flatten(start_dim=-len(x_shape)), head), cfg.features


class NeuralPosterior(nn.Module):
    """Base class: parameter/observation transforms, embedding, and the posterior interface."""

    def __init__(self, prior: Prior, x_shape: tuple[int, ...], cfg: EstimatorConfig) -> None:
        super().__init__()
        self.prior = prior
        self.x_shape = tuple(int(s) for s in x_shape)
        self.dim = prior.dim
        self.config = cfg
        self.theta_transform = ParameterTransform(prior.low, prior.high)
        self.x_transform = DataTransform(self.x_shape)
        self.embedding, self.context_features = make_embedding(cfg.embedding, self.x_shape)

    def fit_transforms(self, theta: Tensor, x: Tensor) -> None:
        """Standardisation statistics from training data ``(N, dim)``, ``(N, *x_shape)``."""
        self.theta_transform.fit(theta)
        self.x_transform.fit(x)

    def spec(self) -> dict:
        """What :func:`build_estimator` needs to rebuild this estimator (weights aside)."""
        return {
            "prior": self.prior.spec(),
            "x_shape": list(self.x_shape),
            "estimator": self.config.model_dump(),
        }

    def _check_x(self, x: Tensor) -> tuple[Tensor, bool]:
        x = torch.as_tensor(x, dtype=torch.float32)
        single = tuple(x.shape) == self.x_shape
        if single:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != self.x_shape:
            raise ValueError(
                f"x must have shape {self.x_shape} or (B, *{self.x_shape}), got {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or infinite values")
        return x, single

    def context(self, x: Tensor) -> Tensor:
        """Embedded standardised observations ``(B, context_features)``."""
        return self.embedding(self.x_transform(x))

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        """Training loss per sample ``(B,)`` for a batch of pairs."""
        raise NotImplementedError

    def _log_prob_z(self, z: Tensor, context: Tensor) -> Tensor:
        raise NotImplementedError

    def _sample_z(self, context: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """``(n, B, dim)`` standardised draws for contexts ``(B, E)``."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, x: Tensor, n: int, seed: int | None = None) -> Tensor:
        """``n`` posterior draws: ``(n, dim)`` for one ``x``, ``(n, B, dim)`` for a batch."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        x, single = self._check_x(x)
        device = next(self.parameters()).device
        g = torch.Generator(device=device)
        g.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
        z = self._sample_z(self.context(x.to(device)), n, g)
        theta = self.theta_transform.inverse(z)
        return theta[:, 0] if single else theta

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        """``log q(theta | x)`` in parameter space; ``theta (..., dim)`` broadcast against the
        batch of ``x`` (``x`` alone: any leading shape of ``theta``); ``-inf`` outside the prior's
        support."""
        theta = self.prior.check(torch.as_tensor(theta, dtype=torch.float32))
        x, single = self._check_x(x)
        context = self.context(x)
        if single:
            context = context[0]
        shape = torch.broadcast_shapes(theta.shape[:-1], context.shape[:-1])
        theta = theta.expand(*shape, self.dim)
        context = context.expand(*shape, context.shape[-1])
        z, ladj = self.theta_transform(theta)
        flat = self._log_prob_z(z.reshape(-1, self.dim), context.reshape(-1, context.shape[-1]))
        out = flat.reshape(shape).double() + ladj
        inside = self.theta_transform.inside(theta)
        return torch.where(inside, out, -math.inf).float()


class FlowEstimator(NeuralPosterior):
    """Amortised NPE with a conditional zuko flow on standardised parameters."""

    def __init__(self, prior: Prior, x_shape: tuple[int, ...], cfg: EstimatorConfig) -> None:
        super().__init__(prior, x_shape, cfg)
        f = cfg.flow
        if f.flow == "nsf":
            self.flow = zuko.flows.NSF(
                self.dim,
                self.context_features,
                bins=f.bins,
                transforms=f.transforms,
                hidden_features=f.hidden,
            )
        elif f.flow == "maf":
            self.flow = zuko.flows.MAF(
                self.dim, self.context_features, transforms=f.transforms, hidden_features=f.hidden
            )
        else:
            self.flow = zuko.flows.NAF(
                self.dim, self.context_features, transforms=f.transforms, hidden_features=f.hidden
            )

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        z, _ = self.theta_transform(theta)
        return -self.flow(self.context(x)).log_prob(z)

    def _log_prob_z(self, z: Tensor, context: Tensor) -> Tensor:
        return self.flow(context).log_prob(z)

    def _sample_z(self, context: Tensor, n: int, generator: torch.Generator) -> Tensor:
        # zuko samples with the global generator: fork it so a seed gives reproducible draws
        # without disturbing the caller's random state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
            return self.flow(context).sample((n,))


class DiffusionEstimator(NeuralPosterior):
    """A conditional denoiser ``D(z_t, sigma, context)`` over standardised parameters: the
    backbone is a residual MLP conditioned on the noise level and the embedded ``x``, wrapped in
    :class:`appa.diffusion.EDMDenoiser`, trained with :func:`appa.diffusion.denoising_loss` and
    sampled with any sampler of :func:`appa.diffusion.make_sampler`."""

    def __init__(self, prior: Prior, x_shape: tuple[int, ...], cfg: EstimatorConfig) -> None:
        super().__init__(prior, x_shape, cfg)
        d = cfg.diffusion
        backbone = TimeConditionedMLP(self.dim, self.context_features, d.width, d.blocks)
        self.denoiser = EDMDenoiser(backbone, sigma_data=1.0)
        self.schedule = d.schedule.build()
        self.train_schedule = d.schedule.model_copy(update={"kind": d.train_schedule}).build()

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        z, _ = self.theta_transform(theta)
        sigma = _sample_sigma(self.train_schedule, z.shape[0], device=z.device)
        return denoising_loss(self.denoiser, z, sigma, context=self.context(x))

    def _sample_z(self, context: Tensor, n: int, generator: torch.Generator) -> Tensor:
        d = self.config.diffusion
        B = context.shape[0]
        sampler = make_sampler(d.sampler, self.denoiser, self.schedule, d.steps)
        seed = int(torch.randint(2**62, (), generator=generator))
        ctx = context.unsqueeze(0).expand(n, B, -1).reshape(n * B, -1)
        z = sampler.sample(n * B, (self.dim,), seed=seed, device=context.device, context=ctx)
        return z.reshape(n, B, self.dim)

    def _log_prob_z(self, z: Tensor, context: Tensor) -> Tensor:
        d = self.config.diffusion
        return probability_flow_log_prob(
            self.denoiser,
            z,
            d.schedule.sigma_min,
            d.schedule.sigma_max,
            d.ode_steps,
            context=context,
        )


def probability_flow_log_prob(
    denoiser: nn.Module,
    x: Tensor,
    sigma_min: float,
    sigma_max: float,
    steps: int = 64,
    sigma_data: float = 1.0,
    **cond: Tensor,
) -> Tensor:
    """``log p(x)`` of a VE diffusion model by its probability-flow ODE.

    ``dx/dsigma = f = (x - D(x, sigma)) / sigma`` is integrated from ``sigma_min`` to
    ``sigma_max`` (Heun, steps uniform in ``log sigma``) while accumulating the divergence
    ``div f = (d - tr dD/dx) / sigma`` with an exact trace (``d`` backward passes); then
    ``log p_min(x) = log N(x_T; D(x_T, sigma_max), (sigma_max^2 + sigma_data^2) I) + int div f
    dsigma``.
    The result is the density of the data convolved with ``N(0, sigma_min^2 I)``.

    Arguments:
        x: Points ``(B, d)``.
        cond: Conditioning passed to the denoiser, e.g. ``context`` ``(B, E)``.

    Returns:
        ``(B,)`` float64 log densities.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be (B, d), got {tuple(x.shape)}")
    B, dim = x.shape
    sigmas = torch.logspace(math.log10(sigma_min), math.log10(sigma_max), steps + 1)

    def drift_and_div(y: Tensor, s: float) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            sigma = torch.full((B,), s, dtype=y.dtype, device=y.device)
            out = denoiser(y, sigma, **cond)
            trace = torch.zeros(B, dtype=torch.float64, device=y.device)
            for i in range(dim):
                (grad,) = torch.autograd.grad(out[:, i].sum(), y, retain_graph=i < dim - 1)
                trace = trace + grad[:, i].double()
        drift = (y.detach() - out.detach()) / s
        return drift, (dim - trace) / s

    y = x.detach().float()
    integral = torch.zeros(B, dtype=torch.float64, device=x.device)
    for i in range(steps):
        s0, s1 = float(sigmas[i]), float(sigmas[i + 1])
        h = s1 - s0
        f0, div0 = drift_and_div(y, s0)
        y_euler = y + h * f0
        f1, div1 = drift_and_div(y_euler, s1)
        y = y + h * (f0 + f1) / 2
        integral = integral + h * (div0 + div1) / 2
    # at sigma_max the marginal is nearly N(E[x], sigma_max^2 + sigma_data^2); the denoiser's
    # own estimate of E[x] removes the first-order error of a zero-mean base
    with torch.no_grad():
        mean = denoiser(y, torch.full((B,), sigma_max, dtype=y.dtype, device=y.device), **cond)
    var = sigma_max**2 + sigma_data**2
    r2 = (y - mean).double().square().sum(dim=-1)
    base = -0.5 * r2 / var - 0.5 * dim * math.log(2 * math.pi * var)
    return base + integral


class Ensemble(nn.Module):
    """An equally weighted mixture of estimators: ``q(theta | x) = mean_k q_k(theta | x)``."""

    def __init__(self, members: list[NeuralPosterior]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        dims = {(m.dim, m.x_shape) for m in members}
        if len(dims) != 1:
            raise ValueError(f"ensemble members disagree on (dim, x_shape): {sorted(dims)}")
        self.members = nn.ModuleList(members)
        self.dim = members[0].dim
        self.x_shape = members[0].x_shape
        self.prior = members[0].prior

    @torch.no_grad()
    def sample(self, x: Tensor, n: int, seed: int | None = None) -> Tensor:
        """``n`` draws of the mixture, ``(n, dim)`` or ``(n, B, dim)`` like the members."""
        g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**62)
        K = len(self.members)
        # each draw picks a member uniformly: counts are multinomial
        counts = torch.bincount(torch.randint(K, (n,), generator=g), minlength=K)
        parts = [
            m.sample(x, int(c), seed=int(torch.randint(2**62, (), generator=g)))
            for m, c in zip(self.members, counts.tolist(), strict=True)
            if c > 0
        ]
        out = torch.cat(parts, dim=0)
        return out[torch.randperm(n, generator=g)]

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        """``log mean_k exp(log q_k(theta | x))``."""
        values = torch.stack([m.log_prob(theta, x) for m in self.members])
        return torch.logsumexp(values.double(), dim=0).float() - math.log(len(self.members))

    def spec(self) -> dict:
        return {"ensemble": [m.spec() for m in self.members]}


def build_estimator(
    prior: Prior | dict, x_shape: tuple[int, ...], cfg: EstimatorConfig | dict
) -> NeuralPosterior:
    """A fresh (untrained) estimator for ``prior`` and observations of shape ``x_shape``."""
    if isinstance(prior, dict):
        prior = prior_from_spec(prior)
    if isinstance(cfg, dict):
        cfg = EstimatorConfig.model_validate(cfg)
    cls = FlowEstimator if cfg.kind == "flow" else DiffusionEstimator
    return cls(prior, tuple(x_shape), cfg)
