"""Window composition: exact folding, and long-trajectory posteriors from window denoisers."""

import pytest
import torch

from appa.diffusion import (
    GaussianObservation,
    GaussianPrior,
    MMPSDenoiser,
    WindowedDenoiser,
    make_sampler,
)
from appa.diffusion.windows import WindowLayout

f64 = torch.float64


@pytest.mark.parametrize("mode", ["symmetric", "causal", "average"])
@pytest.mark.parametrize(
    ("L", "K", "S"), [(24, 8, 4), (25, 8, 3), (7, 8, 4), (48, 24, 12), (10, 4, 1), (9, 3, 3)]
)
def test_fold_unfold_roundtrip(mode, L, K, S):
    layout = WindowLayout(L, K, S, mode)
    x = torch.randn(2, L, 3, 5, dtype=f64)
    windows = layout.unfold(x)
    assert windows.shape == (2, layout.num_windows, min(K, L), 3, 5)
    # selection modes are bit-exact; averaging equal values is exact up to one rounding
    tol = 0 if mode != "average" else 1e-15
    torch.testing.assert_close(layout.fold(windows), x, rtol=tol, atol=tol)
    assert layout.index.max() == L - 1 and layout.index.min() == 0


def _tagged_windows(layout):
    # value at (w, k) = window index w, so the fold tells which window each frame came from
    W, K = layout.index.shape
    return torch.arange(W, dtype=f64)[None, :, None].expand(1, W, K).clone()


def test_symmetric_and_causal_pick_the_expected_windows():
    # Appa's blankets: K=24, S=12; symmetric takes the central 12 states of inner windows
    layout = WindowLayout(48, 24, 12, "symmetric")
    source = layout.fold(_tagged_windows(layout))[0]
    expected = torch.tensor([0] * 18 + [1] * 12 + [2] * 18, dtype=f64)
    torch.testing.assert_close(source, expected)
    causal = WindowLayout(48, 24, 12, "causal")
    source = causal.fold(_tagged_windows(causal))[0]
    expected = torch.tensor([0] * 24 + [1] * 12 + [2] * 12, dtype=f64)
    torch.testing.assert_close(source, expected)
    average = WindowLayout(48, 24, 12, "average")
    source = average.fold(_tagged_windows(average))[0]
    torch.testing.assert_close(source[12:24], torch.full((12,), 0.5, dtype=f64))


def test_layout_errors():
    with pytest.raises(ValueError, match="stride"):
        WindowLayout(10, 4, 5)
    with pytest.raises(ValueError, match="mode"):
        WindowLayout(10, 4, 2, "median")
    with pytest.raises(ValueError, match="length"):
        WindowLayout(10, 4, 2).unfold(torch.zeros(1, 9))


def test_windowed_denoiser_passes_per_frame_conditioning():
    seen = {}

    def inner(x_t, sigma, date=None, scale=1.0):
        seen["date"], seen["sigma"] = date, sigma
        return scale * x_t + date

    den = WindowedDenoiser(inner, window=4, stride=2)
    x = torch.randn(3, 10, 2)
    date = torch.randn(3, 10, 2)
    out = den(x, torch.full((3,), 0.5), date=date, scale=2.0)
    torch.testing.assert_close(out, 2.0 * x + date)
    assert seen["date"].shape == (3 * 4, 4, 2) and seen["sigma"].shape == (12,)


def _ar1_covariance(n, rho):
    i = torch.arange(n, dtype=f64)
    return rho ** (i[:, None] - i[None]).abs()


class _PerWindowGaussian(torch.nn.Module):
    """Exact posterior denoisers, one Gaussian per window, on the (samples * W, K) batch layout."""

    def __init__(self, posteriors):
        super().__init__()
        self.W = len(posteriors)
        self.mean = torch.stack([p.mean for p in posteriors])  # (W, K)
        self.Q = torch.stack([p.eigvecs for p in posteriors])  # (W, K, K)
        self.lam = torch.stack([p.eigvals for p in posteriors])  # (W, K)

    def forward(self, x_t, sigma):
        x = x_t.reshape(-1, self.W, x_t.shape[1])
        s2 = sigma.reshape(-1, self.W, 1) ** 2
        z = torch.einsum("nwk,wkj->nwj", x - self.mean, self.Q)
        out = self.mean + torch.einsum("nwj,wkj->nwk", z * self.lam / (self.lam + s2), self.Q)
        return out.reshape(x_t.shape)


def _ar1_problem(L, rho=0.9, noise_var=0.1, every=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    truth = GaussianPrior(torch.zeros(L, dtype=f64), _ar1_covariance(L, rho))
    observed = torch.zeros(L, dtype=torch.bool)
    observed[::every] = True
    y_full = truth.sample(1, g)[0] + noise_var**0.5 * torch.randn(L, generator=g, dtype=f64)
    exact = truth.posterior(torch.eye(L, dtype=f64)[observed], y_full[observed], noise_var)
    return observed, y_full, exact


def _window_posteriors(layout, observed, y_full, rho=0.9, noise_var=0.1):
    K = layout.index.shape[1]
    prior = GaussianPrior(torch.zeros(K, dtype=f64), _ar1_covariance(K, rho))
    posteriors = []
    for frames in layout.index:
        seen = observed[frames]
        posteriors.append(
            prior.posterior(torch.eye(K, dtype=f64)[seen], y_full[frames][seen], noise_var)
        )
    return posteriors


def test_mmps_with_per_window_observations_equals_window_posteriors():
    L, K, S, n = 20, 8, 4, 3
    observed, y_full, _ = _ar1_problem(L)
    den = WindowedDenoiser(None, window=K, stride=S)
    layout = den.layout(L)
    # per-window observations: every frame, with a huge variance where nothing was observed
    y_w = y_full[layout.index].repeat(n, 1)
    var_w = torch.where(observed[layout.index], 0.1, 1e10).to(f64).repeat(n, 1)
    obs = GaussianObservation(
        y=y_w, operator=lambda z: z.reshape(z.shape[0], -1), noise_variance=var_w, linear=True
    )
    prior = GaussianPrior(torch.zeros(K, dtype=f64), _ar1_covariance(K, 0.9))
    den.denoiser = MMPSDenoiser(prior, obs, solver="direct")
    exact = WindowedDenoiser(_PerWindowGaussian(_window_posteriors(layout, observed, y_full)), K, S)
    x_t = torch.randn(n, L, dtype=f64)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=f64)
    torch.testing.assert_close(den(x_t, sigma), exact(x_t, sigma), rtol=1e-6, atol=1e-6)


def ar1_window_errors(L, K, S, samples=4000, seed=0):
    """Relative errors (in norm) of the mean and marginal variances of windowed exact-posterior
    denoisers against the exact posterior of a long AR(1) trajectory observed every 3 states."""
    observed, y_full, exact = _ar1_problem(L, seed=seed)
    layout = WindowLayout(L, K, S, "symmetric")
    den = WindowedDenoiser(_PerWindowGaussian(_window_posteriors(layout, observed, y_full)), K, S)
    draws = make_sampler("heun", den, steps=64).sample(samples, (L,), seed=seed, dtype=f64)
    mean_err = ((draws.mean(0) - exact.mean).norm() / exact.mean.norm()).item()
    var_err = ((draws.var(0) - exact.cov.diagonal()).norm() / exact.cov.diagonal().norm()).item()
    return mean_err, var_err


def test_windowed_posterior_of_ar1_trajectory_improves_with_window_size():
    L = 36
    errors = {K: ar1_window_errors(L, K, K // 2) for K in (4, 12, 36)}
    mean_small, var_small = errors[4]
    mean_mid, var_mid = errors[12]
    mean_full, var_full = errors[36]
    # one window covering the whole trajectory is exact up to sampling error
    assert mean_full < 0.03 and var_full < 0.06, errors
    assert mean_mid < mean_small and var_mid < var_small, errors
    assert mean_full <= mean_mid + 0.01, errors
