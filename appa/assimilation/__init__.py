"""Posterior sampling of latent trajectories: the latent prior loaded from training checkpoints,
observations through the decoder, and reanalysis, filtering and forecasting with MMPS."""

from appa.assimilation.operator import WindowObservation
from appa.assimilation.prior import Codec, LatentPrior, PriorMismatchError
from appa.assimilation.tasks import (
    SamplingConfig,
    filtering,
    forecast,
    reanalysis,
    sample_latents,
    select_observations,
)

__all__ = [
    "Codec",
    "LatentPrior",
    "PriorMismatchError",
    "SamplingConfig",
    "WindowObservation",
    "filtering",
    "forecast",
    "reanalysis",
    "sample_latents",
    "select_observations",
]
