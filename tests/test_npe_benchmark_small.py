"""The small version of the NPE benchmark (benchmarks/bench_npe_sbibm.py): one flow per task
trained on 10^3 simulations, scored by C2ST against sbibm's reference posterior of observation 1
(skipped when the sbibm reference files are not installed)."""

from __future__ import annotations

import pytest
import torch
from npe_utils import needs_sbibm

from appa.npe import (
    EstimatorConfig,
    NPETrainingConfig,
    build_estimator,
    make_problem,
    train_estimator,
)
from appa.npe.diagnostics import c2st_many

TASKS = ["two_moons", "gaussian_mixture", "gaussian_linear"]
DRAWS = 3000


@pytest.mark.slow
@needs_sbibm
def test_flows_trained_on_a_thousand_simulations_approach_the_reference_posteriors():
    pairs, names = [], []
    for name in TASKS:
        task = make_problem(name)
        x_o, _, reference = task.reference(1)
        # the benchmark's simulations for this budget (seed + budget) and its default flow
        theta, x = task.sample_joint(1000, seed=1000)
        torch.manual_seed(0)
        estimator = build_estimator(task.prior, task.x_shape, EstimatorConfig())
        train_estimator(estimator, theta, x, NPETrainingConfig(seed=0, threads=0))
        draws = estimator.sample(x_o, DRAWS, seed=1).reshape(DRAWS, -1)
        prior = task.prior.sample(DRAWS, generator=torch.Generator().manual_seed(2))
        pairs += [(reference[:DRAWS], draws), (reference[:DRAWS], prior.reshape(DRAWS, -1))]
        names += [name, f"{name} prior"]
    scores = dict(zip(names, c2st_many(pairs), strict=True))
    print({k: round(v, 3) for k, v in scores.items()})
    for name in TASKS:
        # measured here: 0.69 (two_moons), 0.77 (gaussian_mixture), 0.65 (gaussian_linear),
        # as with 10^4 draws in the benchmark (0.74, 0.77, 0.66 on observation 1); the prior,
        # which ignores the observation, scores 0.94-0.99
        assert scores[name] < 0.82, scores
        assert scores[f"{name} prior"] > 0.9, scores
