"""Neural posterior estimation ``p(theta | x)`` for low-dimensional parameters: conditional flows
and diffusion models, simulators (sbibm tasks, a simplified exoplanet atmosphere), training,
checkpoints and calibration diagnostics."""

from appa.npe.estimators import (
    DiffusionEstimator,
    EmbeddingConfig,
    Ensemble,
    EstimatorConfig,
    FlowEstimator,
    NeuralPosterior,
    build_estimator,
    probability_flow_log_prob,
)
from appa.npe.priors import BoxUniform, DiagonalGaussian, Prior
from appa.npe.problems import Problem, make_problem
from appa.npe.training import (
    GaussianNoise,
    NPETrainingConfig,
    load_estimator,
    load_pairs,
    save_estimator,
    save_pairs,
    train_ensemble,
    train_estimator,
)

__all__ = [
    "BoxUniform",
    "DiagonalGaussian",
    "DiffusionEstimator",
    "EmbeddingConfig",
    "Ensemble",
    "EstimatorConfig",
    "FlowEstimator",
    "GaussianNoise",
    "NPETrainingConfig",
    "NeuralPosterior",
    "Prior",
    "Problem",
    "build_estimator",
    "load_estimator",
    "load_pairs",
    "make_problem",
    "probability_flow_log_prob",
    "save_estimator",
    "save_pairs",
    "train_ensemble",
    "train_estimator",
]
