"""The diffusion core: schedules, denoisers, samplers, posterior denoisers, windows. Pure torch."""

from appa.diffusion.denoisers import (
    Denoiser,
    EDMDenoiser,
    denoising_loss,
    expand_sigma,
    sample_lognormal_sigma,
    sample_training_sigma,
)
from appa.diffusion.exact import (
    GaussianMixturePrior,
    GaussianPrior,
    LowRankGaussianPrior,
    linear_gaussian_posterior,
)
from appa.diffusion.krylov import assemble, cg, direct_solve, gmres
from appa.diffusion.posterior import (
    DiagonalGaussianDenoiser,
    DPSDenoiser,
    GaussianObservation,
    MMPSDenoiser,
)
from appa.diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    EulerSampler,
    HeunSampler,
    LMSSampler,
    PCSampler,
    Sampler,
    make_sampler,
)
from appa.diffusion.schedules import (
    LogLinearSchedule,
    LogLogitSchedule,
    NoiseSchedule,
    RectifiedSchedule,
    ScheduleConfig,
)
from appa.diffusion.smc import SMCSampler, systematic_resample
from appa.diffusion.windows import WindowedDenoiser, WindowLayout

__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "DPSDenoiser",
    "Denoiser",
    "DiagonalGaussianDenoiser",
    "EDMDenoiser",
    "EulerSampler",
    "GaussianMixturePrior",
    "GaussianObservation",
    "GaussianPrior",
    "HeunSampler",
    "LMSSampler",
    "LogLinearSchedule",
    "LogLogitSchedule",
    "LowRankGaussianPrior",
    "MMPSDenoiser",
    "NoiseSchedule",
    "PCSampler",
    "RectifiedSchedule",
    "SMCSampler",
    "Sampler",
    "ScheduleConfig",
    "WindowLayout",
    "WindowedDenoiser",
    "assemble",
    "cg",
    "denoising_loss",
    "direct_solve",
    "expand_sigma",
    "gmres",
    "linear_gaussian_posterior",
    "make_sampler",
    "sample_lognormal_sigma",
    "sample_training_sigma",
    "systematic_resample",
]
