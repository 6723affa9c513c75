"""Diagnostics of source reconstructions and of the galaxy prior, and their figures.

- Fit: reduced chi-square of an estimate's residuals ``(y - A x) / sigma`` on observed pixels.
- Error: source-plane RMSE against the truth (over all pixels and over the galaxy's own).
- Calibration: per-pixel coverage of central intervals, from the rank of the truth among
  posterior samples (calibrated samples give uniform ranks, so every level is met on average);
  spread/skill of the per-pixel posterior.
- Prior quality: morphology statistics of prior draws against the training stamps', with the
  same comparison between two halves of held-out stamps as the scale of sampling noise.

Samples drawn down to a final noise level ``s`` are draws of ``x + s z``: ranks are taken
against the truth with the same noise added (``final_noise``), else a background of exact
zeros would look over-covered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from appa.files import written_whole
from appa.lensing.galaxies import adaptive_moments, background_rms, morphology, radial_profile
from appa.lensing.operator import LensingOperator

__all__ = [
    "compare_morphology",
    "galaxy_pixels",
    "plot_coverage",
    "plot_prior_quality",
    "plot_reconstruction",
    "rank_coverage",
    "reduced_chi_square",
    "save_figure",
    "source_rmse",
    "spread_skill",
]


def reduced_chi_square(
    operator: LensingOperator, source: Tensor, image: Tensor, noise_variance: Tensor | float
) -> float:
    """``sum(((y - A x) / sigma)^2) / m`` over observed pixels for a source ``(Hs, Ws)``."""
    y = operator.flatten(image.to(torch.float64))
    var = torch.as_tensor(noise_variance, dtype=torch.float64)
    if var.ndim == 2:
        var = operator.flatten(var)
    model = operator.observe(source.to(operator.grid.dtype)[None])[0].to(torch.float64)
    return float(((y - model) ** 2 / var).mean())


def galaxy_pixels(truth: Tensor, fraction: float = 0.01) -> Tensor:
    """Bool mask of the pixels where the true source exceeds ``fraction`` of its peak."""
    return truth > fraction * truth.max()


def source_rmse(estimate: Tensor, truth: Tensor, where: Tensor | None = None) -> float:
    """Root-mean-square error of a source estimate (over ``where`` if given)."""
    err = (estimate.double() - truth.double()) ** 2
    return float(err[where].mean().sqrt() if where is not None else err.mean().sqrt())


def rank_coverage(
    samples: Tensor,
    truth: Tensor,
    levels: Sequence[float],
    where: Tensor | None = None,
    final_noise: float = 0.0,
    seed: int = 0,
) -> dict[str, float]:
    """Per-pixel coverage of central intervals at ``levels``.

    The truth's rank ``r`` among ``n`` samples, jittered to ``u = (r + U) / (n + 1)``, is
    uniform on ``(0, 1)`` for a calibrated posterior; the truth is inside the central interval
    of level ``l`` when ``|u - 1/2| <= l / 2``.

    Arguments:
        samples: ``(n, *pixels)``; truth: ``(*pixels)``.
        where: Bool mask of the pixels to count (default: all).
        final_noise: Standard deviation added to the truth (the samples' final noise level).
        seed: Seed of the jitter and of the added noise.

    Returns:
        ``{f"{level:g}": coverage}``.
    """
    g = torch.Generator().manual_seed(seed)
    truth = truth.double() + final_noise * torch.randn(
        truth.shape, generator=g, dtype=torch.float64
    )
    n = samples.shape[0]
    below = (samples.double() < truth).sum(0).double()
    u = (below + torch.rand(below.shape, generator=g, dtype=torch.float64)) / (n + 1)
    if where is not None:
        u = u[where]
    return {f"{lv:g}": float(((u - 0.5).abs() <= lv / 2).double().mean()) for lv in levels}


def spread_skill(samples: Tensor, truth: Tensor, where: Tensor | None = None) -> float:
    """``sqrt(mean var) sqrt((n + 1) / n) / RMSE(mean)``: 1 for a calibrated ensemble of
    ``n`` members (the factor accounts for the finite ensemble)."""
    n = samples.shape[0]
    var = samples.double().var(0)
    err = (samples.double().mean(0) - truth.double()) ** 2
    if where is not None:
        var, err = var[where], err[where]
    return float(var.mean().sqrt() * math.sqrt((n + 1) / n) / err.mean().sqrt())


def _ks(a: Tensor, b: Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b])
    fa = torch.searchsorted(a, grid, right=True).double() / a.numel()
    fb = torch.searchsorted(b, grid, right=True).double() / b.numel()
    return float((fa - fb).abs().max())


def compare_morphology(
    samples: Tensor, training: Tensor, reference: Tensor
) -> dict[str, dict[str, float]]:
    """Morphology of prior draws against training stamps (all ``(n, H, W)``, the same units).

    For each statistic (flux, ellipticity, half-light radius, peak): the two-sample KS statistic
    of samples against training, the same for ``reference`` (held-out stamps, as many as the
    samples: the level that sampling noise alone reaches), and the medians. Also the largest
    relative difference of mean radial profiles (``profile``), against the reference's, and the
    background in the stamps' corners (``background``: median RMS, where every generated stamp
    is 0; as a fraction of the training pixels' standard deviation too)."""
    sets = {"s": samples, "t": training, "r": reference}
    # the adaptive moments (iterations over every stamp) serve the statistics and the profiles
    adaptive = {k: adaptive_moments(v) for k, v in sets.items()}
    stats = {k: morphology(v, adaptive[k]) for k, v in sets.items()}
    out: dict[str, dict[str, float]] = {}
    for key in stats["s"]:
        # a shape that could not be measured (no light, or a single bright pixel) is counted
        s, t, r = (v[key][torch.isfinite(v[key])] for v in (stats["s"], stats["t"], stats["r"]))
        out[key] = {
            "ks": _ks(s, t),
            "ks_reference": _ks(r, t),
            "median_samples": float(s.median()),
            "median_training": float(t.median()),
            "unmeasured_samples": int(samples.shape[0] - s.numel()),
            "unmeasured_training": int(training.shape[0] - t.numel()),
        }
    profiles = {k: radial_profile(v, centroid=adaptive[k][0]).mean(0) for k, v in sets.items()}
    peak = profiles["t"].max()
    out["profile"] = {
        "max_difference": float((profiles["s"] - profiles["t"]).abs().max() / peak),
        "max_difference_reference": float((profiles["r"] - profiles["t"]).abs().max() / peak),
    }
    scale = float(training.double().std())
    background = {
        k: float(background_rms(v).median()) for k, v in (("s", samples), ("t", training))
    }
    out["background"] = {
        "median_samples": background["s"],
        "median_training": background["t"],
        "median_samples_relative": background["s"] / scale,
    }
    return out


def save_figure(fig, path: Path) -> None:
    """Writes a matplotlib figure to ``path`` (PNG) whole and closes it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with written_whole(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_reconstruction(
    path: Path,
    image: Tensor,
    samples: Tensor,
    operator: LensingOperator,
    noise_std: Tensor | float,
    truth: Tensor | None = None,
    baselines: Mapping[str, Tensor] | None = None,
    title: str = "",
) -> None:
    """One figure: observed image, truth, posterior mean, three samples, per-pixel std,
    normalised residuals of the posterior mean, and baseline means (sources on a square-root
    stretch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    mean = samples.mean(0)
    std = samples.std(0)
    model = operator(mean[None].to(operator.grid.dtype))[0]
    residual = (image - model) / torch.as_tensor(noise_std)
    if operator.mask is not None:
        residual = torch.where(operator.mask, residual, torch.full_like(residual, math.nan))
    panels: list[tuple[str, Tensor, str, str]] = [("observed image", image, "image", "magma")]
    vmax = float((truth if truth is not None else mean).max())
    if truth is not None:
        panels.append(("true source", truth, "source", "magma"))
    panels.append(("posterior mean", mean, "source", "magma"))
    panels += [
        (f"sample {k + 1}", samples[k], "source", "magma") for k in range(min(3, len(samples)))
    ]
    panels.append(("posterior std", std, "source", "viridis"))
    if truth is not None:
        panels.append(
            (
                "|mean - truth| / std",
                (mean - truth).abs() / std.clamp_min(1e-12),
                "source",
                "viridis",
            )
        )
    panels.append(("residual / noise", residual, "image", "RdBu_r"))
    for name, est in (baselines or {}).items():
        panels.append((f"{name} mean", est, "source", "magma"))
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, data, plane, cmap) in zip(axes.flat, panels, strict=False):
        grid = operator.image_grid if plane == "image" else operator.source_grid
        kwargs: dict = {"origin": "lower", "extent": grid.extent, "cmap": cmap}
        arr = data.detach().double().numpy()
        if cmap == "magma" and plane == "source":
            # a square-root stretch shows faint discs and arms beside bright cores
            kwargs.update(norm=PowerNorm(0.5, vmin=0, vmax=vmax))
        elif cmap == "RdBu_r":
            kwargs.update(vmin=-4, vmax=4)
        elif name.startswith("|mean"):
            kwargs.update(vmin=0, vmax=3)
        im = ax.imshow(arr, **kwargs)
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def plot_coverage(path: Path, curves: Mapping[str, Mapping[str, float]], title: str = "") -> None:
    """Empirical against nominal coverage, one curve per name (``{level: coverage}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    ax.fill_between([0, 1], [-0.05, 0.95], [0.05, 1.05], color="0.9", label="within 0.05")
    for name, curve in curves.items():
        levels = sorted(curve, key=float)
        ax.plot([float(v) for v in levels], [curve[v] for v in levels], marker="o", label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal level")
    ax.set_ylabel("per-pixel coverage")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def plot_prior_quality(
    path: Path, samples: Tensor, training: Tensor, pixel: float | None = None
) -> None:
    """Prior draws beside training stamps (asinh stretch), histograms of the morphology
    statistics and mean radial profiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(14, 8))
    outer = fig.add_gridspec(2, 1, height_ratios=[1.1, 1])
    top = outer[0].subgridspec(2, 8, wspace=0.05, hspace=0.1)
    stretch = float(training.double().std()) * 0.2
    for row, (name, data) in enumerate((("prior", samples), ("training", training))):
        for k in range(8):
            ax = fig.add_subplot(top[row, k])
            ax.imshow(
                np.arcsinh(data[k].double().numpy() / stretch),
                origin="lower",
                cmap="magma",
                vmin=0,
                vmax=np.arcsinh(float(training.max()) / stretch) * 0.8,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(name)
    bottom = outer[1].subgridspec(1, 5, wspace=0.35)
    ms, mt = morphology(samples), morphology(training)
    for k, key in enumerate(ms):
        ax = fig.add_subplot(bottom[0, k])
        both = torch.cat([ms[key], mt[key]])
        bins = np.linspace(float(both.quantile(0.01)), float(both.quantile(0.99)), 25)
        ax.hist(mt[key].numpy(), bins=bins, density=True, alpha=0.5, label="training")
        ax.hist(ms[key].numpy(), bins=bins, density=True, histtype="step", lw=1.5, label="prior")
        ax.set_title(key.replace("_", " "), fontsize=9)
        if k == 0:
            ax.legend(fontsize=7)
    ax = fig.add_subplot(bottom[0, 4])
    for name, data in (("training", training), ("prior", samples)):
        prof = radial_profile(data)
        r = (torch.arange(prof.shape[1]) + 0.5) * (data.shape[-1] / 2) / prof.shape[1]
        r = r * pixel if pixel else r
        ax.semilogy(r.numpy(), prof.mean(0).clamp_min(1e-6).numpy(), label=name)
    ax.set_xlabel("radius (arcsec)" if pixel else "radius (pixels)")
    ax.set_title("mean radial profile", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)
