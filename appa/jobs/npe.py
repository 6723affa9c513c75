"""``appa npe train | sample | diagnose``: one config (:class:`NPEConfig`) and the run functions.

- ``train``: simulates ``simulations`` pairs from the task (or reads stored pairs from ``data``),
  trains ``members`` estimators and writes a checkpoint to ``<out>/checkpoint``.
- ``sample``: draws ``sample.samples`` posterior samples for observation ``sample.observation``
  (an sbibm reference observation 1-10; for the exoplanet task a synthetic observation drawn
  with that seed) or ``sample.observation_file`` (.npy or .csv), writes ``samples.npy`` and a
  corner plot (plus a posterior predictive plot for the exoplanet task).
- ``diagnose``: expected coverage (HPD ranks), SBC ranks and TARP on fresh simulations, C2ST
  against sbibm's reference draws when the task has them; ``diagnostics.json`` and plots.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from appa.config import StrictModel
from appa.npe.estimators import EstimatorConfig, build_estimator
from appa.npe.problems import Problem, make_problem
from appa.npe.training import (
    GaussianNoise,
    NPETrainingConfig,
    load_estimator,
    load_pairs,
    save_estimator,
    train_ensemble,
)

__all__ = [
    "NPEConfig",
    "NPEDiagnoseConfig",
    "NPESampleConfig",
    "run_diagnose",
    "run_sample",
    "run_train",
]


class NPESampleConfig(StrictModel):
    observation: int = Field(1, ge=1, description="sbibm reference number, or exoplanet seed")
    observation_file: Path | None = None
    samples: int = Field(10000, ge=1)
    seed: int = 0


class NPEDiagnoseConfig(StrictModel):
    pairs: int = Field(200, ge=10, description="fresh (theta, x) pairs for coverage/SBC/TARP")
    posterior_samples: int = Field(500, ge=10)
    levels: list[float] = Field(default_factory=lambda: [0.5, 0.68, 0.9, 0.95])
    c2st_observations: list[int] = Field(default_factory=lambda: [1])
    c2st_samples: int = Field(10000, ge=100)
    seed: int = 12345


class NPEConfig(StrictModel):
    """Settings of ``appa npe``."""

    task: str = "two_moons"
    data: Path | None = Field(None, description="stored (theta, x) pairs (.zarr, .h5) to train on")
    simulations: int = Field(1000, ge=10)
    noise: float | None = Field(
        None, ge=0, description="std of Gaussian noise added to x on the fly (exoplanet: automatic)"
    )
    members: int = Field(1, ge=1, description="ensemble members")
    seed: int = 0
    threads: int = Field(1, ge=1)
    out: Path = Path("outputs/npe")
    estimator: EstimatorConfig = Field(default_factory=EstimatorConfig)
    training: NPETrainingConfig = Field(default_factory=NPETrainingConfig)
    sample: NPESampleConfig = Field(default_factory=NPESampleConfig)
    diagnose: NPEDiagnoseConfig = Field(default_factory=NPEDiagnoseConfig)


def _noise(cfg: NPEConfig, task: Problem):
    if cfg.noise is not None:
        return GaussianNoise(cfg.noise) if cfg.noise > 0 else None
    model = getattr(task, "model", None)
    return GaussianNoise(model.noise_std) if model is not None else None


def training_pairs(cfg: NPEConfig, task: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs to train on: stored ones, or fresh simulations (noiseless for the exoplanet
    task, whose noise is added on the fly)."""
    if cfg.data is not None:
        theta, x, _ = load_pairs(cfg.data)
        return theta, x
    g = torch.Generator().manual_seed(cfg.seed)
    theta = task.prior.sample(cfg.simulations, g)
    model = getattr(task, "model", None)
    if model is not None and cfg.noise is None:
        return theta, model.noiseless(theta)
    return theta, task.simulate(theta, g)


def run_train(cfg: NPEConfig) -> Path:
    """Trains and writes ``<out>/checkpoint``; returns its path."""
    from rich.console import Console

    console = Console()
    torch.set_num_threads(cfg.threads)
    task = make_problem(cfg.task)
    theta, x = training_pairs(cfg, task)
    console.print(
        f"npe train: task {task.name}, {theta.shape[0]} pairs, {cfg.members} member(s), "
        f"{cfg.estimator.kind}"
    )
    ensemble, results = train_ensemble(
        lambda: build_estimator(task.prior, task.x_shape, cfg.estimator),
        theta,
        x,
        cfg.members,
        cfg.training.model_copy(update={"seed": cfg.training.seed + cfg.seed, "threads": 0}),
        _noise(cfg, task),
    )
    estimator = ensemble if cfg.members > 1 else ensemble.members[0]
    history = [
        {
            "best_epoch": r.best_epoch,
            "best_validation": r.best_validation,
            "seconds": r.seconds,
            "train_loss": r.train_loss,
            "validation_loss": r.validation_loss,
            "learning_rate": r.learning_rate,
        }
        for r in results
    ]
    path = save_estimator(
        cfg.out / "checkpoint",
        estimator,
        {"task": task.name, "config": cfg.model_dump(mode="json")},
    )
    (cfg.out / "history.json").write_text(json.dumps(history))
    for k, r in enumerate(results):
        console.print(
            f"  member {k}: best validation loss {r.best_validation:.4f} at epoch "
            f"{r.best_epoch} ({r.seconds:.1f} s)"
        )
    console.print(f"checkpoint: {path}")
    return path


def _observation(
    cfg: NPEConfig, task: Problem
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(x_o, theta_true or None, reference samples or None)``."""
    s = cfg.sample
    if s.observation_file is not None:
        path = s.observation_file
        if not path.is_file():
            raise FileNotFoundError(f"observation file not found: {path}")
        data = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=1)
        x = torch.as_tensor(data, dtype=torch.float32).reshape(-1)
        if x.numel() != int(np.prod(task.x_shape)):
            raise ValueError(f"{path}: {x.numel()} values, task {task.name} needs {task.x_shape}")
        return x.reshape(task.x_shape), None, None
    if task.name == "exoplanet":
        g = torch.Generator().manual_seed(1_000_000 + s.observation)
        theta = task.prior.sample(1, g)
        return task.simulate(theta, g)[0], theta[0], None
    x, theta, ref = task.reference(s.observation)
    return x, theta, ref


def run_sample(cfg: NPEConfig) -> Path:
    """Writes ``samples.npy`` (``(n, dim)``) and ``corner.png`` under ``<out>/sample``."""
    from appa.npe.diagnostics import plot_corner

    torch.set_num_threads(cfg.threads)
    task = make_problem(cfg.task)
    estimator, _ = load_estimator(cfg.out / "checkpoint")
    x, theta, ref = _observation(cfg, task)
    samples = estimator.sample(x, cfg.sample.samples, seed=cfg.sample.seed)
    out = cfg.out / "sample"
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "samples.npy", samples.numpy())
    sets = {"estimator": samples}
    if ref is not None:
        sets["reference"] = ref
    plot_corner(sets, out / "corner.png", truth=theta, names=task.parameter_names)
    if task.name == "exoplanet":
        from appa.npe.exoplanet import plot_posterior_predictive

        inside = plot_posterior_predictive(
            task.model, x, samples[:500], out / "posterior_predictive.png", truth=theta
        )
        print(f"posterior predictive: {inside:.1%} of observed bins inside the 90% band")
    print(f"samples: {out / 'samples.npy'} {tuple(samples.shape)}; corner: {out / 'corner.png'}")
    return out


def run_diagnose(cfg: NPEConfig) -> dict:
    """Coverage, SBC, TARP (and C2ST where references exist); writes ``<out>/diagnose``."""
    from appa.npe import diagnostics as dg
    from appa.npe.problems import ReferenceUnavailable

    torch.set_num_threads(cfg.threads)
    task = make_problem(cfg.task)
    estimator, _ = load_estimator(cfg.out / "checkpoint")
    d = cfg.diagnose
    out = cfg.out / "diagnose"
    out.mkdir(parents=True, exist_ok=True)
    theta, x = task.sample_joint(d.pairs, seed=d.seed)
    ranks = dg.hpd_ranks(estimator, theta, x, d.posterior_samples, seed=d.seed)
    grid = torch.linspace(0, 1, 41, dtype=torch.float64)
    coverage = dg.coverage_from_ranks(ranks, d.levels)
    samples = estimator.sample(x, d.posterior_samples, seed=d.seed + 1)  # (n, B, dim)
    sbc = (samples < theta[None]).sum(dim=0)
    pvalues = dg.sbc_uniformity(sbc, d.posterior_samples)
    alpha, ecp, atc = dg.tarp(samples, theta, seed=d.seed)
    dg.plot_coverage(
        {"HPD coverage": (grid, dg.coverage_from_ranks(ranks, grid))},
        out / "coverage.png",
        title=task.name,
        tarp_curves={"TARP": (alpha, ecp)},
    )
    dg.plot_sbc(sbc, d.posterior_samples, out / "sbc.png", task.parameter_names)
    report = {
        "task": task.name,
        "pairs": d.pairs,
        "coverage": {f"{lv:g}": float(c) for lv, c in zip(d.levels, coverage, strict=True)},
        "sbc_pvalues": dict(zip(task.parameter_names, pvalues.tolist(), strict=True)),
        "tarp_atc": atc,
    }
    try:
        pairs = []
        for o in d.c2st_observations:
            x_o, _, ref = task.reference(o)
            pairs.append((ref[: d.c2st_samples], estimator.sample(x_o, d.c2st_samples, seed=o)))
        scores = dg.c2st_many(pairs) if pairs else []
        report["c2st"] = {str(o): s for o, s in zip(d.c2st_observations, scores, strict=True)}
    except (ReferenceUnavailable, FileNotFoundError) as error:
        report["c2st"] = f"skipped: {error}"
    (out / "diagnostics.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report
