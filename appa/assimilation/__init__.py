"""Posterior sampling of latent trajectories: the latent prior loaded from training checkpoints,
observations through the decoder, and reanalysis, filtering and forecasting with MMPS."""

from appa.assimilation.operator import WindowObservation
from appa.assimilation.prior import Codec, LatentPrior, PriorMismatchError
from appa.assimilation.tasks import (
    SamplingSettings,
    derive_seed,
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
    "SamplingSettings",
    "WindowObservation",
    "derive_seed",
    "filtering",
    "forecast",
    "reanalysis",
    "sample_latents",
    "select_observations",
]
