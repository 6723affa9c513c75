"""The committed tiny toy-Earth prior on held-out toy-Earth data.

The held-out data are a toy-Earth trajectory from another initial perturbation (seed 7) than the
training run (seed 0), for the first quarter of 2003: the same planet and climate, weather the
prior never saw. The bounds asserted here hold on every one of the six held-out trajectories of
``benchmarks/bench_trajectories.py`` (their winters, in this test's configuration) with margin,
so that their verdict does not depend on the weather; the figures themselves, with the
tolerances of ``appa prior-check``, are in docs/results.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from appa.assimilation import LatentPrior
from appa.assimilation.quality import prior_quality, reconstruction_rmse, truth_states
from appa.data.sources import open_era5
from appa.data.toy_earth import ToyEarthConfig, write_toy_earth

PRIOR = Path(__file__).resolve().parents[1] / "pipelines" / "priors" / "toy-earth-tiny"


@pytest.fixture(scope="module")
def prior() -> LatentPrior:
    return LatentPrior.from_checkpoints(str(PRIOR / "autoencoder"), str(PRIOR / "diffusion"))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory, prior):
    path = tmp_path_factory.mktemp("held_out") / "toy_earth.zarr"
    config = ToyEarthConfig(years=0.25, seed=7, start="2003-01-01")
    write_toy_earth(config, str(path), progress=False)
    return open_era5(str(path), spec=prior.spec).load()


def test_committed_prior_loads_with_its_provenance(prior):
    assert prior.spec.channel_names() == [
        "2m_temperature",
        "mean_sea_level_pressure",
        "sea_surface_temperature",
        "geopotential@500",
        "temperature@500",
    ]
    assert prior.window == 8 and prior.latent_shape == (8, 8, 16)
    assert prior.provenance  # checkpoint paths and steps


def test_autoencoder_reconstructs_held_out_states(prior, held_out):
    states, times = truth_states(prior, held_out)
    rmse = reconstruction_rmse(prior, states, times=times)
    print({k: round(v, 4) for k, v in rmse.items()})
    assert np.mean(list(rmse.values())) <= 0.1
    # the error measure sees errors: white noise of 0.3 channel std is not reconstructed
    std = np.asarray(prior.statistics.std)[:, None, None]
    noisy = states + 0.3 * std * np.random.default_rng(0).normal(size=states.shape)
    shifted = reconstruction_rmse(prior, noisy, times=times)
    assert shifted.keys() == rmse.keys()
    assert all(shifted[k] > rmse[k] + 0.1 for k in rmse), shifted


@pytest.fixture(scope="module")
def quality(prior, held_out):
    torch.manual_seed(0)
    quality = prior_quality(prior, held_out, samples=32, window=8, seed=0)
    print(quality.report())
    return quality


def test_autoencoder_keeps_the_zonal_spectrum(quality):
    """The data's own trajectories through the autoencoder keep the data's zonal power within a
    factor 4 at every resolved wavenumber (the spectral term of its training loss; 0.41-2.48 on
    the six winters). An autoencoder trained on the MSE alone was off by factors of 0.12-65 at
    wavenumbers 11-21."""
    codec = quality.codec_climate
    ratio = codec.spectrum_ratio[codec.resolved()]
    assert np.all((ratio > 0.25) & (ratio < 4.0)), codec.table()


def test_prior_samples_stay_near_the_data_climate(quality):
    """Bounds whose failure points at a broken prior (wrong weights, decoder or date
    conditioning), not at the weather. On the six winters (32 trajectories each): means within
    0.12 data standard deviations, standard deviations 0.84-1.04 of the data's, lag-1
    autocorrelation within 0.041, zonal power 0.35-2.38 of the data's."""
    c = quality.climate
    assert np.all(c.mean_error <= 0.25), c.table()
    assert np.all(np.abs(c.std_ratio - 1) <= 0.3), c.table()
    assert np.all(c.lag1_error <= 0.1), c.table()
    ratio = c.spectrum_ratio[c.resolved()]
    assert np.all((ratio < 5) & (ratio > 0.15)), c.table()


def test_quality_checks_catch_a_broken_prior(prior, held_out):
    """The checks of ``appa prior-check`` flag a prior whose latent statistics are off (samples
    inflated), and its latent spectra say so."""
    broken = LatentPrior(
        codec=prior.codec,
        denoiser=prior.denoiser,
        schedule=prior.schedule,
        spec=prior.spec,
        statistics=prior.statistics,
        latent_shape=prior.latent_shape,
        window=prior.window,
        latitude=prior.latitude,
        longitude=prior.longitude,
        latent_mean=prior.standardizer.mean,
        latent_std=[1.5 * s for s in prior.standardizer.std],
        date_conditioning=prior.date_conditioning,
        sigma_data=prior.sigma_data,
    )
    quality = prior_quality(broken, held_out, samples=8, window=8, seed=0, steps=16)
    assert quality.climate.departures()
    # the same standardised draws (the denoiser never sees latent_std) against data latents
    # standardised 1.5 times smaller: the latent power ratio is 2.25 times the plain prior's
    # at every latent wavenumber, and the report shows it
    plain = prior_quality(prior, held_out, samples=8, window=8, seed=0, steps=16)
    c, _, w = prior.latent_shape
    assert plain.latent_spectrum_ratio.shape == (c, w // 2)
    np.testing.assert_allclose(
        quality.latent_spectrum_ratio / plain.latent_spectrum_ratio, 2.25, rtol=1e-4
    )
    assert "encoded latents, by latent wavenumber" in plain.report()


@pytest.mark.slow
def test_the_prior_statistics_are_what_any_machine_makes(tmp_path, prior):
    """The toy Earth writes the same bytes on every machine, so the normalisation statistics
    in the committed checkpoints (2000-2001 of seed 0) are those recomputed from a fresh run
    (about a minute: spin-up and two simulated years)."""
    from appa.data.stats import compute_statistics

    config = ToyEarthConfig(years=2, seed=0)
    path = write_toy_earth(config, tmp_path / "toy_earth.zarr", progress=False)
    data = open_era5(str(path), spec=prior.spec)
    period = tuple(prior.statistics.period)
    assert pd.Timestamp(period[1]) <= pd.Timestamp(data.time.values[-1]), period
    fresh = compute_statistics(data, prior.spec, period=period)
    np.testing.assert_allclose(fresh.mean, prior.statistics.mean, rtol=1e-12, atol=0)
    np.testing.assert_allclose(fresh.std, prior.statistics.std, rtol=1e-12, atol=0)
