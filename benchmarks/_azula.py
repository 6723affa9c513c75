"""Adapters that run Appa's exact reference priors through azula's MMPS (benchmarks only).

azula is not a runtime dependency. Install it without its dependencies (it asks for torchvision,
which would replace the CPU torch build): ``pip install --no-deps azula==0.11.1 tqdm``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def require_azula():
    try:
        import azula  # noqa: F401
        from azula.denoise import Denoiser, DiracPosterior  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise SystemExit(
            f"azula is needed for this comparison ({error}); install it with\n"
            "  .venv/bin/pip install --no-deps azula==0.11.1 tqdm"
        ) from None


def azula_mmps_sampler(
    prior,
    A: Tensor,
    y: Tensor,
    noise_variance: Tensor,
    iterations: int,
    steps: int,
    sigma_min: float = 1e-3,
    sigma_max: float = 1e3,
    sampler: str = "ddpm",
):
    """azula's MMPS (GMRES, ``iterations``) around ``prior`` with azula's VE (log-linear)
    schedule, which is the same noise grid as Appa's ``LogLinearSchedule``."""
    from azula.denoise import Denoiser, DiracPosterior
    from azula.guidance import MMPSDenoiser
    from azula.linalg.covariance import DiagonalCovariance
    from azula.noise import VESchedule
    from azula.sample import DDPMSampler, HeunSampler

    class Exact(Denoiser):
        def __init__(self):
            super().__init__()
            self.prior = prior
            self.schedule = VESchedule(sigma_min, sigma_max)

        def forward(self, x_t, t, **kwargs):
            sigma = self.schedule.sigma(t).to(x_t).expand(x_t.shape[0])
            return DiracPosterior(mean=self.prior(x_t, sigma))

    A = A.to(torch.float64)

    def operator(x):
        return x @ A.T

    guided = MMPSDenoiser(
        Exact(),
        y=y,
        A=operator,
        cov_y=DiagonalCovariance(noise_variance),
        solver="gmres",
        iterations=iterations,
    )
    cls = {"ddpm": DDPMSampler, "heun": HeunSampler}[sampler]
    return cls(guided, steps=steps, silent=True)


def azula_sample(sampler, n: int, d: int, seed: int) -> Tensor:
    torch.manual_seed(seed)
    x1 = sampler.init((n, d), dtype=torch.float64)
    return sampler(x1)
