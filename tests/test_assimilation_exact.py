"""Posterior sampling of latent trajectories against exact answers: a linear codec and Gaussian
window priors, whose posteriors are closed form."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from assimilation_utils import (
    LATENT,
    SPEC,
    STATE,
    STATS,
    TIMES,
    affine_map,
    exact_prior,
    station_table,
)

from appa.assimilation import (
    SamplingConfig,
    WindowObservation,
    filtering,
    forecast,
    reanalysis,
)
from appa.diffusion import GaussianObservation, MMPSDenoiser, WindowLayout
from appa.observations import ObservationOperator


def _observation_matrix(prior, obs: WindowObservation, K: int):
    """The affine operator ``u -> A(u)`` of a single-window observation as ``(a, A)``."""
    return affine_map(lambda u: obs(u.float()).double(), (K, *LATENT))


def test_posterior_denoiser_is_the_exact_one():
    K = 3
    prior = exact_prior(K)
    times = TIMES[:K]
    table = station_table(times, n_per_time=3)
    layout = WindowLayout(K, K, 1)
    obs = WindowObservation(prior, layout, times, table)
    assert obs.size == 9 and obs.decoded_frames == K
    B = 4
    gaussian = obs.observation(B)
    mmps = MMPSDenoiser(prior.denoiser, gaussian, solver="direct")
    a, A = _observation_matrix(prior, obs, K)
    y = gaussian.y[0].double() - a
    exact = prior.denoiser.posterior(A, y, gaussian.noise_variance[0].double())
    g = torch.Generator().manual_seed(0)
    for s in (0.05, 1.0, 20.0):
        x_t = s * torch.randn(B, K, *LATENT, generator=g)
        sigma = torch.full((B,), s)
        got = mmps(x_t, sigma)
        want = exact(x_t.double(), sigma.double()).float()
        torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_reanalysis_matches_the_closed_form_posterior():
    K = 3
    prior = exact_prior(K)
    times = TIMES[:K]
    table = station_table(times, n_per_time=2, seed=1, error_std=1.0)
    M = 1200
    settings = SamplingConfig(sampler="ddpm", steps=96, solver="direct")
    x = reanalysis(prior, table, times, seeds=range(M), settings=settings).double()
    assert x.shape == (M, K, *STATE)

    obs = WindowObservation(prior, WindowLayout(K, K, 1), times, table)
    gaussian = obs.observation(1)
    a, A = _observation_matrix(prior, obs, K)
    post = prior.denoiser.posterior(A, gaussian.y[0].double() - a, gaussian.noise_variance[0])
    # physical states are affine in the latents: x = c + D u
    c, D = affine_map(lambda u: prior.decode(u.float()).double(), (K, *LATENT))
    mean = c + D @ post.mean
    cov = D @ post.cov @ D.T
    flat = x.reshape(M, -1)
    std = cov.diagonal().sqrt()
    z = (flat.mean(0) - mean) / (std / M**0.5)
    assert z.abs().max() < 4.5, z
    emp = torch.cov(flat.T)
    # compare the covariance in whitened coordinates of the exact one (on its range)
    lam, Q = torch.linalg.eigh(cov)
    keep = lam > 1e-9 * lam.max()
    W = Q[:, keep] / lam[keep].sqrt()
    white = W.T @ emp @ W
    assert (white - torch.eye(int(keep.sum()), dtype=white.dtype)).abs().max() < 0.2
    # the observations pull the posterior: its spread is below the prior's
    prior_cov = D @ prior.denoiser.cov @ D.T
    assert cov.trace() < 0.9 * prior_cov.trace()


def test_padded_window_observation_equals_each_unpadded_one():
    K, L = 3, 7
    prior = exact_prior(K, gain=0.3)  # a nonlinear decoder: MMPS takes JVPs
    times = TIMES[:L]
    table = station_table(times[[0, 1, 6]], n_per_time=2, seed=2)
    layout = WindowLayout(L, K, 1)
    obs = WindowObservation(prior, layout, times, table)
    counts = obs.obs_counts
    assert len(set(counts)) > 1 and min(counts) == 0  # windows differ; one holds nothing
    B, W = 2, layout.num_windows
    gaussian = obs.observation(B)
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(B * W, K, *LATENT, generator=g)
    sigma = torch.full((B * W,), 0.7)
    for solver in ("cg", "gmres", "direct"):
        padded = MMPSDenoiser(prior.denoiser, gaussian, solver=solver, iterations=3)(x_t, sigma)
        for w in range(W):
            frames = times[layout.index[w].numpy()]
            sub = table.isel(obs=np.flatnonzero(np.isin(table["time"].values, frames.values)))
            rows = [b * W + w for b in range(B)]
            if sub.sizes["obs"] == 0:
                want = prior.denoiser(x_t[rows], sigma[rows])
            else:
                op = ObservationOperator(sub, SPEC, prior.latitude, prior.longitude, frames, STATS)
                single = GaussianObservation(
                    y=op.y,
                    operator=lambda u, op=op: op(prior.decode_standardized(u)),
                    noise_variance=op.noise_variance,
                )
                den = MMPSDenoiser(prior.denoiser, single, solver=solver, iterations=3)
                want = den(x_t[rows], sigma[rows])
            torch.testing.assert_close(padded[rows], want, atol=1e-5, rtol=1e-5)


def test_decoding_observed_frames_equals_decoding_all():
    K, L = 4, 7
    prior = exact_prior(K, gain=0.3)
    times = TIMES[:L]
    table = station_table(times[[1, 5]], n_per_time=3, seed=4)
    layout = WindowLayout(L, K, 2)
    observed = WindowObservation(prior, layout, times, table, frames="observed")
    everything = WindowObservation(prior, layout, times, table, frames="all")
    assert observed.decoded_frames < everything.decoded_frames
    u = torch.randn(3 * layout.num_windows, K, *LATENT)
    torch.testing.assert_close(observed(u), everything(u))
    # and a JVP through either (the decoder is nonlinear)
    v = torch.randn_like(u)
    jo = torch.func.jvp(observed, (u,), (v,))[1]
    ja = torch.func.jvp(everything, (u,), (v,))[1]
    torch.testing.assert_close(jo, ja)


def test_members_depend_only_on_their_seed():
    K = 3
    prior = exact_prior(K)
    times = TIMES[:5]
    table = station_table(times, n_per_time=2, seed=5)
    settings = SamplingConfig(steps=8, solver="cg", iterations=3)
    together = reanalysis(prior, table, times, [11, 12, 13], settings)
    alone = reanalysis(prior, table, times, [12], settings)
    batched = reanalysis(
        prior, table, times, [13, 11, 12], settings.model_copy(update={"member_batch": 2})
    )
    torch.testing.assert_close(alone[0], together[1], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(batched[2], together[1], atol=1e-4, rtol=1e-5)
    assert not torch.allclose(together[0], together[1])


def test_filtering_never_reads_future_observations():
    K, T = 3, 6
    prior = exact_prior(K)
    times = TIMES[:T]
    table = station_table(times, n_per_time=2, seed=6)
    settings = SamplingConfig(sampler="ddpm", steps=12, solver="direct")
    seeds = [0, 1]
    base = filtering(prior, table, times, seeds, settings)
    assert base.shape == (2, T, *STATE)
    cut = times[3]
    changed = table.copy(deep=True)
    future = changed["time"].values >= cut.to_datetime64()
    changed["value"].values[future] += 15.0
    other = filtering(prior, changed, times, seeds, settings)
    torch.testing.assert_close(other[:, :3], base[:, :3], atol=0, rtol=0)
    assert (other[:, 3:] - base[:, 3:]).abs().max() > 1e-3


def test_filter_analysis_is_the_exact_filter_for_one_state():
    """At the first valid time the window holds no past: the analysis is the exact posterior
    of that state given its own observations (marginal of the window prior)."""
    K = 3
    prior = exact_prior(K)
    times = TIMES[:K]
    table = station_table(times[:1], n_per_time=3, seed=7, error_std=1.0)
    M = 800
    settings = SamplingConfig(sampler="ddpm", steps=64, solver="direct")
    x = filtering(prior, table, times, range(M), settings)[:, 0].double().reshape(M, -1)
    obs = WindowObservation(prior, WindowLayout(1, 1, 1), times[:1], table)
    gaussian = obs.observation(1)
    a, A = affine_map(lambda u: obs(u.float()).double(), (1, *LATENT))
    n = int(np.prod(LATENT))
    from appa.diffusion import GaussianPrior

    marginal = GaussianPrior(prior.denoiser.mean[:n], prior.denoiser.cov[:n, :n])
    post = marginal.posterior(A, gaussian.y[0].double() - a, gaussian.noise_variance[0])
    c, D = affine_map(lambda u: prior.decode(u.float()).double(), (1, *LATENT))
    mean, cov = c + D @ post.mean, D @ post.cov @ D.T
    z = (x.mean(0) - mean) / (cov.diagonal().sqrt() / M**0.5)
    assert z.abs().max() < 4.5, z


@pytest.mark.parametrize("mode", ["autoregressive", "all_at_once"])
def test_forecast_of_an_ar1_prior(mode):
    """Conditioned on its last state, an AR(1) process's lead-``n`` state is
    ``N(phi^n u0, 1 - phi^(2n))``. Autoregressive windows of K = 3 (2 known, 1 new) are exact
    for a Markov prior at every lead; all-at-once is exact while the trajectory fits one
    window (longer ones are stitched, an approximation)."""
    K, phi = 3, 0.8
    prior = exact_prior(K, phi=phi, spatial_corr=0.0)
    M, n_lead = 600, (3 if mode == "autoregressive" else 1)
    # initial latents u0 (standardised) at two context times; physical states by decoding
    u0 = torch.tensor([1.5, -1.0, 0.5, 2.0]).reshape(1, 1, *LATENT)
    ctx = torch.cat([torch.zeros_like(u0), u0], dim=1)  # (1, 2, c, h, w)
    initial = prior.decode(ctx)  # (n_init=1, n_ctx=2, C, H, W)
    # DDPM needs many steps to reach the variance of a stiff conditional; PC gets there sooner
    settings = SamplingConfig(sampler="pc", steps=32, solver="direct", condition_std=1e-3)
    states, leads = forecast(
        prior, TIMES[1:2], n_lead, "6h", range(M), initial=initial, mode=mode,
        new_states=1, settings=settings,
    )  # fmt: skip
    assert states.shape == (M, 1, n_lead, *STATE)
    assert list(leads) == [pd.Timedelta(hours=6 * (j + 1)) for j in range(n_lead)]
    u = prior.encode(states[:, 0]).double().reshape(M, n_lead, -1)
    for j in range(n_lead):
        mean = phi ** (j + 1) * u0.reshape(-1).double()
        var = 1 - phi ** (2 * (j + 1))
        z = (u[:, j].mean(0) - mean) / (var / M) ** 0.5
        assert z.abs().max() < 4.5, (j, z)
        ratio = u[:, j].var(0) / var
        assert ((ratio - 1).abs() < 0.25).all(), (j, ratio)


def test_forecast_from_observations_uses_only_the_context():
    K = 3
    prior = exact_prior(K)
    table = station_table(TIMES[:4], n_per_time=2, seed=8)
    settings = SamplingConfig(sampler="ddpm", steps=8, solver="direct")
    a, _ = forecast(
        prior, TIMES[1:2], 2, "6h", [0, 1], observations=table, context=2, settings=settings
    )
    changed = table.copy(deep=True)
    changed["value"].values[changed["time"].values > TIMES[1].to_datetime64()] += 20.0
    b, _ = forecast(
        prior, TIMES[1:2], 2, "6h", [0, 1], observations=changed, context=2, settings=settings
    )
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ValueError, match="initial states or observations"):
        forecast(prior, TIMES[1:2], 2, "6h", [0], settings=settings)


def test_a_diverging_sample_is_an_error_not_a_silent_nan():
    K = 3
    prior = exact_prior(K)
    times = TIMES[:K]

    class Broken(torch.nn.Module):
        def forward(self, x_t, sigma, **_):
            return x_t * float("nan")

    prior.denoiser = Broken()
    with pytest.raises(FloatingPointError, match="diverged"):
        reanalysis(prior, station_table(times), times, [0], SamplingConfig(steps=2))


def test_representation_error_adds_to_each_observation_error_by_channel():
    K = 3
    prior = exact_prior(K)
    times = TIMES[:K]
    table = station_table(times, n_per_time=2, seed=5)
    layout = WindowLayout(K, K, 1)
    plain = WindowObservation(prior, layout, times, table)
    rep = np.linspace(0.1, 0.5, SPEC.num_channels)
    widened = WindowObservation(prior, layout, times, table, representation_std=rep)
    op = ObservationOperator(table, SPEC, prior.latitude, prior.longitude, times, STATS)
    channel = np.asarray(op.channel)
    m = plain.obs_counts[0]
    torch.testing.assert_close(
        widened._var[0, :m].double(),
        plain._var[0, :m].double() + torch.as_tensor(rep[channel] ** 2),
        rtol=1e-5,
        atol=1e-7,
    )
    torch.testing.assert_close(widened._y, plain._y)
    with pytest.raises(ValueError, match="representation_std must hold"):
        WindowObservation(prior, layout, times, table, representation_std=[0.1])
    # inflation multiplies every error standard deviation, the representation error's too
    inflated = WindowObservation(
        prior, layout, times, table, representation_std=rep, error_scale=1.5
    )
    torch.testing.assert_close(
        inflated._var[0, :m].double(), 2.25 * widened._var[0, :m].double(), rtol=1e-6, atol=0
    )
    with pytest.raises(ValueError, match="error_scale must be positive"):
        WindowObservation(prior, layout, times, table, error_scale=0.0)
