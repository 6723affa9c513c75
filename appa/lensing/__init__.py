"""Strong lensing: source galaxies recovered from lensed images with a diffusion prior.

The forward model (lens mass models, ray tracing, PSF, noise) is :mod:`appa.lensing.lenses` and
:mod:`appa.lensing.operator`; the galaxy generator, the prior, posterior sampling, the classical
baselines and diagnostics sit beside them; :mod:`appa.jobs.lensing` holds the job configs.
"""

from appa.lensing.lenses import (
    SIE,
    SIS,
    ExternalShear,
    Lens,
    PointMass,
    convergence,
    deflection,
    lens_from_dict,
    lenses_from_dicts,
    lenses_to_dicts,
    magnification,
    ray_trace,
)
from appa.lensing.operator import LensingOperator, PixelGrid, gaussian_psf

__all__ = [
    "SIE",
    "SIS",
    "ExternalShear",
    "Lens",
    "LensingOperator",
    "PixelGrid",
    "PointMass",
    "convergence",
    "deflection",
    "gaussian_psf",
    "lens_from_dict",
    "lenses_from_dicts",
    "lenses_to_dicts",
    "magnification",
    "ray_trace",
]
