"""Quality checks of a trained latent prior on held-out data.

Two questions, both answered against a held-out period of the gridded truth:

- does the autoencoder reconstruct states? (area-weighted RMSE per channel in standardised units,
  over valid cells; the training validation's definition);
- do unconditional trajectories of the latent prior, decoded, have the data's climate? (per
  channel mean and standard deviation, lag-1 autocorrelation along time and zonal power spectra,
  :func:`appa.metrics.compare_climate`).

Beside the checks, the zonal power of the sampled latents against the data's encoded latents per
latent channel tells whether a departure comes from the denoiser (its latents are off) or from the
decoder (it turns small latent errors into power the data do not have).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import xarray as xr

from appa.assimilation.prior import LatentPrior
from appa.data.grids import area_weights, latitude_bounds
from appa.data.spec import stack
from appa.metrics.climate import ClimateComparison, compare_climate, zonal_power_spectrum

__all__ = ["PriorQuality", "prior_quality", "reconstruct", "reconstruction_rmse", "truth_states"]


def truth_states(prior: LatentPrior, truth: xr.Dataset) -> tuple[np.ndarray, pd.DatetimeIndex]:
    """The prior's channels of a canonical dataset: physical ``(T, C, H, W)`` float64 (NaN
    over masked cells) and its times. The grid must be the prior's."""
    for name, coord, own in (
        ("latitude", truth.latitude.values, prior.latitude),
        ("longitude", truth.longitude.values, prior.longitude),
    ):
        if coord.shape != own.shape or not np.allclose(coord, own):
            raise ValueError(f"the truth's {name} grid differs from the prior's")
    x, _ = stack(truth, prior.spec, dtype=torch.float64)
    return x.numpy(), pd.DatetimeIndex(truth.time.values)


def reconstruct(
    prior: LatentPrior,
    states: np.ndarray,
    batch_size: int = 64,
    times: pd.DatetimeIndex | None = None,
    latents: torch.Tensor | None = None,
) -> np.ndarray:
    """``decode(encode(x))`` of physical states ``(T, C, H, W)`` at ``times`` (needed by an
    autoencoder conditioned on dates), float64 with NaN where the states are NaN. ``latents``:
    their standardised latents ``(T, c, h, w)`` when already encoded."""
    if latents is None:
        x = torch.as_tensor(states, dtype=torch.float32)
        latents = prior.encode(prior.fill_masked(x), batch_size, times=times)
    out = prior.decode(latents, batch_size, times=times).double().numpy()
    return np.where(np.isfinite(states), out, np.nan)


def reconstruction_rmse(
    prior: LatentPrior,
    states: np.ndarray,
    batch_size: int = 64,
    times: pd.DatetimeIndex | None = None,
    reconstructed: np.ndarray | None = None,
) -> dict[str, float]:
    """Autoencoder reconstruction error per channel on physical states ``(T, C, H, W)`` at
    ``times`` (needed by an autoencoder conditioned on dates); ``reconstructed`` when already
    computed (:func:`reconstruct`).

    Returns the area-weighted RMSE over valid (non-NaN) cells, in units of each channel's
    standard deviation (the normalisation statistics), keyed by channel name.
    """
    x = torch.as_tensor(states, dtype=torch.float32)
    valid = torch.isfinite(x)
    if reconstructed is None:
        reconstructed = reconstruct(prior, states, batch_size, times)
    reconstructed = torch.as_tensor(reconstructed, dtype=torch.float32)
    _, std = prior.statistics.tensors(torch.float32)
    error = ((reconstructed - x) / std).double().nan_to_num(0.0)
    w = torch.from_numpy(area_weights(prior.latitude))[:, None].expand(x.shape[-2:])
    w = w * valid
    se = (error.square() * w).sum((0, 2, 3))
    rmse = (se / w.sum((0, 2, 3))).sqrt()
    return dict(zip(prior.spec.channel_names(), rmse.tolist(), strict=True))


@dataclass
class PriorQuality:
    """Reconstruction errors and the climate of decoded prior samples against the data."""

    reconstruction: dict[str, float]
    climate: ClimateComparison
    samples: int
    window: int
    codec_climate: ClimateComparison | None = None
    latent_spectrum_ratio: np.ndarray | None = None

    def departures(self, rmse_tolerance: float = 0.1) -> list[str]:
        """Every check outside its tolerance (autoencoder RMSE, then
        :meth:`~appa.metrics.climate.ClimateComparison.departures`), as readable lines."""
        out = []
        mean_rmse = float(np.mean(list(self.reconstruction.values())))
        if mean_rmse > rmse_tolerance:
            out.append(f"autoencoder RMSE {mean_rmse:.3f} > {rmse_tolerance} (standardised)")
        return out + self.climate.departures()

    def report(self) -> str:
        """A plain-text report."""
        rec = "  ".join(f"{k} {v:.3f}" for k, v in self.reconstruction.items())
        mean_rmse = float(np.mean(list(self.reconstruction.values())))
        text = (
            f"autoencoder RMSE (standardised): mean {mean_rmse:.3f}; {rec}\n"
            f"{self.samples} prior trajectories of {self.window} states against the data:\n"
            f"{self.climate.table()}"
        )
        if self.codec_climate is not None:
            # what the decoder alone allows: a prior cannot do better than its autoencoder
            text += (
                "\nthe data's own trajectories through the autoencoder against the data:\n"
                f"{self.codec_climate.table()}"
            )
        if self.latent_spectrum_ratio is not None:
            ratio = self.latent_spectrum_ratio
            head = " ".join(f"{k:>5d}" for k in range(1, ratio.shape[1] + 1))
            rows = "\n".join(
                f"latent {c:<21d}" + " ".join(f"{r:5.2f}" for r in row)
                for c, row in enumerate(ratio)
            )
            text += (
                "\nzonal power of the sampled latents over the data's encoded latents, by "
                f"latent wavenumber:\n{'channel':28s} {head}\n{rows}"
            )
        return text


def prior_quality(
    prior: LatentPrior,
    truth: xr.Dataset,
    samples: int = 32,
    window: int = 8,
    seed: int = 0,
    sampler: str = "heun",
    steps: int = 32,
    batch: int = 8,
) -> PriorQuality:
    """Measures ``prior`` against a held-out period of ``truth`` (canonical layout, the
    prior's grid, 6-hourly or whatever step the prior was trained on).

    ``samples`` trajectories of ``window`` consecutive states are drawn unconditionally, in
    groups of ``batch`` dated at evenly spread start times of the period (the prior is
    conditioned on the date), decoded, and compared with every ``window``-state trajectory of
    the data (non-overlapping).
    """
    states, times = truth_states(prior, truth)
    if len(times) < window:
        raise ValueError(f"the truth holds {len(times)} states, fewer than window={window}")
    x = torch.as_tensor(states, dtype=torch.float32)
    encoded = prior.encode(prior.fill_masked(x), times=times)
    reconstructed = reconstruct(prior, states, times=times, latents=encoded)
    reconstruction = reconstruction_rmse(prior, states, reconstructed=reconstructed)
    n_data = len(times) // window
    data = states[: n_data * window].reshape(n_data, window, *states.shape[1:])
    through_codec = reconstructed[: n_data * window].reshape(data.shape)

    groups = -(-samples // batch)
    starts = np.linspace(0, len(times) - window, groups).round().astype(int)
    drawn, drawn_latents = [], []
    for g, start in enumerate(starts):
        n = min(batch, samples - g * batch)
        span = times[start : start + window]
        u = prior.unconditional_latents(n, span, seed=seed + g, sampler=sampler, steps=steps)
        drawn_latents.append(u.double().cpu().numpy())
        drawn.append(prior.decode(u, times=span).double().cpu().numpy())
    generated = np.concatenate(drawn)
    names = prior.spec.channel_names()
    climate = compare_climate(generated, data, prior.latitude, names)
    codec_climate = compare_climate(through_codec, data, prior.latitude, names)
    # latent rows weighted as equal latitude bands over the grid's span (pole to pole on a
    # global grid, the box on a regional one), which they roughly cover
    h = prior.latent_shape[1]
    south, north = latitude_bounds(prior.latitude)[[0, -1]]
    rows = south + (north - south) * (np.arange(h) + 0.5) / h
    latent_ratio = (
        zonal_power_spectrum(np.concatenate(drawn_latents), rows)
        / zonal_power_spectrum(encoded.double().cpu().numpy()[None], rows)
    )[:, 1:]
    return PriorQuality(
        reconstruction,
        climate,
        len(generated),
        window,
        codec_climate=codec_climate,
        latent_spectrum_ratio=latent_ratio,
    )
