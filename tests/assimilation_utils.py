"""Small exact priors and codecs for the assimilation tests: linear (or mildly nonlinear) codecs
and Gaussian window priors whose posteriors are closed form."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from appa.assimilation import LatentPrior
from appa.data.spec import StateSpec
from appa.data.stats import Statistics
from appa.diffusion import GaussianPrior, ScheduleConfig

SPEC = StateSpec(surface=["2m_temperature", "mean_sea_level_pressure"])
STATS = Statistics(
    channels=SPEC.channel_names(),
    mean=np.array([280.0, 101000.0]),
    std=np.array([10.0, 1000.0]),
    period=("2000-01-01", "2000-12-31"),
)
LAT = [-45.0, 45.0]
LON = [0.0, 90.0, 180.0, 270.0]
STATE = (2, 2, 4)
LATENT = (1, 2, 2)
TIMES = pd.date_range("2003-01-01", periods=8, freq="6h")


class LinearCodec(nn.Module):
    """``decode(z) = D z (+ gain * tanh(D z))`` on flattened frames; ``encode`` the
    pseudo-inverse of the linear part (exact on the decoder's range when ``gain = 0``)."""

    def __init__(self, seed: int = 0, gain: float = 0.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n_out, n_in = int(np.prod(STATE)), int(np.prod(LATENT))
        D = torch.randn(n_out, n_in, generator=g) / n_in**0.5
        self.register_buffer("D", D)
        self.register_buffer("P", torch.linalg.pinv(D))
        self.gain = gain

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-3]
        x = z.reshape(-1, int(np.prod(LATENT))) @ self.D.to(z.dtype).T
        if self.gain:
            x = x + self.gain * torch.tanh(x)
        return x.reshape(*lead, *STATE)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        z = x.reshape(-1, int(np.prod(STATE))) @ self.P.to(x.dtype).T
        return z.reshape(*lead, *LATENT)


def ar1_prior(window: int, phi: float = 0.8, spatial_corr: float = 0.3) -> GaussianPrior:
    """A stationary Gaussian window prior over ``(window, *LATENT)``: AR(1) in time with
    coefficient ``phi`` and unit variance, times an exponential spatial correlation."""
    k = torch.arange(window, dtype=torch.float64)
    time_cov = phi ** (k[:, None] - k[None]).abs()
    n = int(np.prod(LATENT))
    i = torch.arange(n, dtype=torch.float64)
    space_cov = spatial_corr ** (i[:, None] - i[None]).abs()
    cov = torch.kron(time_cov, space_cov)
    return GaussianPrior(torch.zeros(window * n, dtype=torch.float64), cov)


def exact_prior(window: int = 3, gain: float = 0.0, **kwargs) -> LatentPrior:
    return LatentPrior(
        codec=LinearCodec(gain=gain),
        denoiser=ar1_prior(window, **kwargs),
        schedule=ScheduleConfig(sigma_max=1e2).build(),
        spec=SPEC,
        statistics=STATS,
        latent_shape=LATENT,
        window=window,
        latitude=LAT,
        longitude=LON,
        latent_mean=[0.5],
        latent_std=[2.0],
    )


def station_table(times, n_per_time: int = 3, seed: int = 0, error_std: float = 0.5):
    """Point observations of 2m temperature (and one pressure) at random places and times."""
    from appa.observations import make_table

    rng = np.random.default_rng(seed)
    times = pd.DatetimeIndex(times)
    t = np.repeat(times.values, n_per_time)
    n = t.size
    variable = np.where(np.arange(n) % 3 == 2, "mean_sea_level_pressure", "2m_temperature")
    value = np.where(variable == "2m_temperature", 280 + 10 * rng.standard_normal(n), 101000.0)
    value = value + np.where(variable == "2m_temperature", 0.0, 800 * rng.standard_normal(n))
    err = np.where(variable == "2m_temperature", error_std, 100 * error_std)
    return make_table(
        time=t,
        latitude=rng.uniform(-60, 60, n),
        longitude=rng.uniform(0, 360, n),
        variable=variable,
        value=value,
        error_std=err,
        platform="station",
    )


def affine_map(fn, shape, dtype=torch.float64):
    """``fn(u) = a + B u`` on flattened inputs of ``shape``: returns ``(a, B)``."""
    d = int(np.prod(shape))
    zero = torch.zeros(1, *shape, dtype=dtype)
    a = fn(zero).reshape(-1).to(torch.float64)
    eye = torch.eye(d, dtype=dtype).reshape(d, *shape)
    B = (fn(eye).reshape(d, -1).to(torch.float64) - a).T
    return a, B
