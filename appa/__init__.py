"""Appa: calibrated posterior ensembles p(x|y) with deep generative priors."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("appa")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
