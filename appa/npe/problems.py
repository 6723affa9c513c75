"""Simulation-based inference problems: the cheap sbibm benchmark tasks (Lueckmann et al. 2021),
written here in torch, the exoplanet atmosphere (:mod:`appa.npe.exoplanet`), and a reader of the
reference posterior samples and observations that the sbibm package ships.

The sbibm package is never imported (its dependencies are heavy): its installed files are found
with ``importlib.util.find_spec`` and read as CSV. Install it with ``pip install --no-deps sbibm``.

Tasks (parameters -> data):

- ``two_moons``: ``theta ~ U(-1, 1)^2``; ``a ~ U(-pi/2, pi/2)``, ``r ~ N(0.1, 0.01^2)``,
  ``x = (r cos a + 0.25 - |z0|, r sin a + z1)`` with ``z = R(-pi/4) theta``.
- ``gaussian_linear``: ``theta ~ N(0, 0.1 I_10)``, ``x ~ N(theta, 0.1 I_10)`` (variances).
- ``gaussian_linear_uniform``: ``theta ~ U(-1, 1)^10``, ``x ~ N(theta, 0.1 I_10)``.
- ``gaussian_mixture``: ``theta ~ U(-10, 10)^2``, ``x ~ 0.5 N(theta, I) + 0.5 N(theta, 0.01 I)``.
- ``slcp``: ``theta ~ U(-3, 3)^5``; four iid 2-D Gaussian draws with mean ``(t1, t2)``, standard
  deviations ``t3^2, t4^2`` and correlation ``tanh(t5)``, flattened to 8 numbers.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from appa.npe.exoplanet import ExoplanetSimulator
from appa.npe.priors import BoxUniform, DiagonalGaussian, Prior

__all__ = [
    "PROBLEMS",
    "Problem",
    "ReferenceUnavailable",
    "make_exoplanet_problem",
    "make_problem",
    "sbibm_files",
]

Simulator = Callable[[Tensor, torch.Generator | None], Tensor]


class ReferenceUnavailable(RuntimeError):
    """The sbibm reference files are not installed."""


@dataclass
class Problem:
    """A simulation-based inference problem: a prior, a simulator and (optionally) references.

    Attributes:
        name: Problem name.
        prior: The prior over ``dim_theta`` parameters.
        simulator: ``(theta (B, dim_theta), generator) -> x (B, *x_shape)``.
        x_shape: Shape of one observation.
        parameter_names: Names of the parameters (for plots and files).
    """

    name: str
    prior: Prior
    simulator: Simulator
    x_shape: tuple[int, ...]
    parameter_names: list[str]

    @property
    def dim_theta(self) -> int:
        return self.prior.dim

    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Runs the simulator on ``theta`` ``(B, dim_theta)``; returns ``(B, *x_shape)``."""
        self.prior.check(theta)
        return self.simulator(theta.float(), generator)

    def sample_joint(self, n: int, seed: int = 0, chunk: int = 100_000) -> tuple[Tensor, Tensor]:
        """``n`` draws of ``(theta, x)`` from the joint, reproducible from ``seed``."""
        g = torch.Generator().manual_seed(seed)
        theta = self.prior.sample(n, g)
        x = torch.cat([self.simulate(t, g) for t in theta.split(chunk)])
        return theta, x

    def reference(self, num_observation: int) -> tuple[Tensor, Tensor, Tensor]:
        """sbibm's ``(observation (x_shape), true_parameters (dim_theta,),
        reference_posterior_samples (10000, dim_theta))`` for observation 1-10."""
        folder = sbibm_files(self.name) / f"num_observation_{num_observation}"
        if not folder.is_dir():
            raise ValueError(f"task {self.name}: no reference observation {num_observation} (1-10)")
        x = _read_csv(folder / "observation.csv").reshape(self.x_shape)
        theta = _read_csv(folder / "true_parameters.csv").reshape(self.dim_theta)
        samples = _read_csv(folder / "reference_posterior_samples.csv.bz2")
        return x, theta, samples.reshape(-1, self.dim_theta)


def _read_csv(path: Path) -> Tensor:
    # numpy opens .bz2 transparently; the first row holds column names
    return torch.from_numpy(np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)).float()


def sbibm_files(task: str) -> Path:
    """Folder ``<sbibm>/tasks/<task>/files`` of the installed sbibm package (never imported)."""
    spec = importlib.util.find_spec("sbibm")
    if spec is None or not spec.submodule_search_locations:
        raise ReferenceUnavailable(
            "the sbibm reference files are not installed: run `pip install --no-deps sbibm`"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tasks" / task / "files"
    if not folder.is_dir():
        raise ReferenceUnavailable(f"sbibm has no reference files for task {task!r} ({folder})")
    return folder


def _two_moons(theta: Tensor, g: torch.Generator | None) -> Tensor:
    n = theta.shape[0]
    a = (torch.rand(n, generator=g) - 0.5) * math.pi
    r = 0.1 + 0.01 * torch.randn(n, generator=g)
    c = s = math.sqrt(0.5)  # rotation by -pi/4
    z0 = c * theta[:, 0] + s * theta[:, 1]
    z1 = -s * theta[:, 0] + c * theta[:, 1]
    return torch.stack([r * a.cos() + 0.25 - z0.abs(), r * a.sin() + z1], dim=-1)


def _gaussian_linear(theta: Tensor, g: torch.Generator | None) -> Tensor:
    return theta + math.sqrt(0.1) * torch.randn(theta.shape, generator=g)


def _gaussian_mixture(theta: Tensor, g: torch.Generator | None) -> Tensor:
    wide = torch.rand(theta.shape[0], 1, generator=g) < 0.5
    scale = torch.where(wide, 1.0, 0.1)
    return theta + scale * torch.randn(theta.shape, generator=g)


def _slcp(theta: Tensor, g: torch.Generator | None) -> Tensor:
    n = theta.shape[0]
    s1, s2 = theta[:, 2] ** 2, theta[:, 3] ** 2
    rho = torch.tanh(theta[:, 4])
    z = torch.randn(n, 4, 2, generator=g)
    # Cholesky factor of [[s1^2, rho s1 s2], [rho s1 s2, s2^2]] (+1e-6 on the diagonal, as sbibm)
    eps = 1e-6
    l11 = (s1**2 + eps).sqrt()
    l21 = rho * s1 * s2 / l11
    l22 = (s2**2 + eps - l21**2).clamp(min=0).sqrt()
    x0 = theta[:, None, 0] + l11[:, None] * z[..., 0]
    x1 = theta[:, None, 1] + l21[:, None] * z[..., 0] + l22[:, None] * z[..., 1]
    return torch.stack([x0, x1], dim=-1).reshape(n, 8)


def _names(d: int) -> list[str]:
    return [f"theta_{i + 1}" for i in range(d)]


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "two_moons": lambda: Problem(
        "two_moons", BoxUniform([-1.0] * 2, [1.0] * 2), _two_moons, (2,), _names(2)
    ),
    "gaussian_linear": lambda: Problem(
        "gaussian_linear",
        DiagonalGaussian([0.0] * 10, [math.sqrt(0.1)] * 10),
        _gaussian_linear,
        (10,),
        _names(10),
    ),
    "gaussian_linear_uniform": lambda: Problem(
        "gaussian_linear_uniform",
        BoxUniform([-1.0] * 10, [1.0] * 10),
        _gaussian_linear,
        (10,),
        _names(10),
    ),
    "gaussian_mixture": lambda: Problem(
        "gaussian_mixture",
        BoxUniform([-10.0] * 2, [10.0] * 2),
        _gaussian_mixture,
        (2,),
        _names(2),
    ),
    "slcp": lambda: Problem("slcp", BoxUniform([-3.0] * 5, [3.0] * 5), _slcp, (8,), _names(5)),
}


def make_problem(name: str) -> Problem:
    """A problem by name: the sbibm tasks above or ``exoplanet`` (see :mod:`appa.npe.exoplanet`)."""
    if name == "exoplanet":
        return make_exoplanet_problem()
    try:
        return PROBLEMS[name]()
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; choose one of {[*sorted(PROBLEMS), 'exoplanet']}"
        ) from None


def make_exoplanet_problem(wavelengths: int = 128, relative_noise: float = 0.05) -> Problem:
    """The exoplanet :class:`Problem`; its simulator's owner is available as
    ``problem.model`` (noiseless spectra, ``noise_std``, wavelengths)."""
    sim = ExoplanetSimulator(wavelengths, relative_noise=relative_noise)
    problem = Problem("exoplanet", sim.prior, sim.simulate, (wavelengths,), list(sim.names))
    problem.model = sim  # type: ignore[attr-defined]
    return problem
