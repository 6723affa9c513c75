"""Calibration and accuracy diagnostics for posterior estimators, with plots.

- Expected coverage (HPD-rank based): for pairs ``(theta*, x)`` from the joint, the credibility
  level of the smallest highest-density region containing ``theta*`` is estimated as the
  fraction of posterior draws with a higher density than ``theta*``; the coverage at level
  ``a`` is the fraction of pairs with that rank below ``a``. A calibrated estimator lies on the
  diagonal; above it is conservative, below it over-confident.
- SBC ranks (Talts et al. 2018): per parameter, the number of draws below ``theta*``; uniform
  for a calibrated estimator (checked with a chi-square test on binned ranks).
- TARP (Lemos et al. 2023): coverage of balls around random reference points; needs no density.
- C2ST (sbibm protocol, Lueckmann et al. 2021): a classifier told to separate estimator draws
  from reference draws; 0.5 means indistinguishable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import stats
from torch import Tensor

__all__ = [
    "c2st",
    "c2st_many",
    "coverage_from_ranks",
    "expected_coverage",
    "hpd_ranks",
    "plot_corner",
    "plot_coverage",
    "plot_sbc",
    "sbc_ranks",
    "sbc_uniformity",
    "tarp",
]


def _draws_and_truths(posterior, theta: Tensor, x: Tensor, n: int, seed: int) -> Tensor:
    if theta.ndim != 2 or theta.shape[0] != x.shape[0]:
        raise ValueError(
            f"need theta (B, dim) matching x (B, ...), got {tuple(theta.shape)}, {tuple(x.shape)}"
        )
    return posterior.sample(x, n, seed=seed)  # (n, B, dim)


@torch.no_grad()
def hpd_ranks(
    posterior, theta: Tensor, x: Tensor, n_samples: int = 1000, seed: int = 0, chunk: int = 64
) -> Tensor:
    """HPD ranks in [0, 1], shape ``(B,)``: the fraction of ``n_samples`` posterior draws whose
    density exceeds that of ``theta`` ``(B, dim)`` given ``x`` ``(B, *x_shape)``."""
    out = []
    for i in range(0, theta.shape[0], chunk):
        t, xb = theta[i : i + chunk], x[i : i + chunk]
        draws = _draws_and_truths(posterior, t, xb, n_samples, seed + i)
        lp_draws = posterior.log_prob(draws, xb)  # (n, b)
        lp_true = posterior.log_prob(t, xb)  # (b,)
        out.append((lp_draws > lp_true).double().mean(dim=0))
    return torch.cat(out)


def coverage_from_ranks(ranks: Tensor, levels: Sequence[float] | Tensor) -> Tensor:
    """Empirical coverage at credibility ``levels``: the fraction of ranks below each level."""
    levels = torch.as_tensor(levels, dtype=torch.float64)
    return (ranks.double()[None, :] < levels[:, None]).double().mean(dim=1)


def expected_coverage(
    posterior,
    theta: Tensor,
    x: Tensor,
    levels: Sequence[float] | Tensor = (0.5, 0.9, 0.95),
    n_samples: int = 1000,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """``(levels, coverage)`` from HPD ranks of pairs ``theta (B, dim)``, ``x (B, ...)``."""
    ranks = hpd_ranks(posterior, theta, x, n_samples, seed)
    levels = torch.as_tensor(levels, dtype=torch.float64)
    return levels, coverage_from_ranks(ranks, levels)


@torch.no_grad()
def sbc_ranks(
    posterior, theta: Tensor, x: Tensor, n_samples: int = 1000, seed: int = 0, chunk: int = 256
) -> Tensor:
    """SBC ranks ``(B, dim)``: per parameter, how many of ``n_samples`` draws lie below the
    true value (integers in ``[0, n_samples]``)."""
    out = []
    for i in range(0, theta.shape[0], chunk):
        t, xb = theta[i : i + chunk], x[i : i + chunk]
        draws = _draws_and_truths(posterior, t, xb, n_samples, seed + i)
        out.append((draws < t[None]).sum(dim=0))
    return torch.cat(out)


def sbc_uniformity(ranks: Tensor, n_samples: int, bins: int = 20) -> Tensor:
    """Per-parameter chi-square p-values of the SBC ranks against uniformity, ``(dim,)``."""
    r = ranks.numpy() if isinstance(ranks, Tensor) else np.asarray(ranks)
    pvalues = []
    for j in range(r.shape[1]):
        counts, _ = np.histogram(r[:, j], bins=bins, range=(0, n_samples + 1))
        pvalues.append(stats.chisquare(counts).pvalue)
    return torch.tensor(pvalues)


@torch.no_grad()
def tarp(
    samples: Tensor,
    theta: Tensor,
    references: Tensor | None = None,
    levels: int = 51,
    seed: int = 0,
) -> tuple[Tensor, Tensor, float]:
    """TARP expected coverage (Lemos et al. 2023).

    Arguments:
        samples: Posterior draws ``(n, B, dim)`` for ``B`` observations.
        theta: True parameters ``(B, dim)``.
        references: Reference points ``(B, dim)``; default: uniform in the box spanned by
            ``theta`` (after standardising every dimension by ``theta``'s statistics).

    Returns:
        ``(alpha, ecp, atc)``: credibility levels ``(levels,)``, expected coverage ``(levels,)``
        and the mean of ``ecp - alpha`` (0 when calibrated; < 0 over-confident).
    """
    _, B, dim = samples.shape
    if theta.shape != (B, dim):
        raise ValueError(f"theta must be ({B}, {dim}), got {tuple(theta.shape)}")
    mean, std = theta.mean(dim=0), theta.std(dim=0).clamp(min=1e-12)
    s, t = (samples - mean) / std, (theta - mean) / std
    if references is None:
        # a seed of its own: a generator seeded like the one that drew theta would make the
        # references correlate with the true parameters and bias the curve
        g = torch.Generator().manual_seed(seed ^ 0x5DEECE66D)
        lo, hi = t.min(dim=0).values, t.max(dim=0).values
        references = lo + (hi - lo) * torch.rand(B, dim, generator=g)
    else:
        references = (references - mean) / std
    d_samples = (s - references[None]).norm(dim=-1)  # (n, B)
    d_true = (t - references).norm(dim=-1)  # (B,)
    f = (d_samples < d_true[None]).double().mean(dim=0)  # (B,)
    alpha = torch.linspace(0, 1, levels, dtype=torch.float64)
    ecp = (f[None, :] < alpha[:, None]).double().mean(dim=1)
    return alpha, ecp, float((ecp - alpha).mean())


def c2st(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    seed: int = 1,
    folds: int = 5,
    max_iter: int = 10000,
) -> float:
    """Classifier two-sample test accuracy (sbibm protocol); see :func:`c2st_many`.

    Arguments:
        x: reference samples ``(n, d)``.
        y: samples to test ``(m, d)``.

    Returns:
        The ``folds``-fold cross-validated accuracy: 0.5 indistinguishable, 1.0 separable.
    """
    return c2st_many([(x, y)], seed=seed, folds=folds, max_iter=max_iter)[0]


def c2st_many(
    pairs: Sequence[tuple[Tensor | np.ndarray, Tensor | np.ndarray]],
    seed: int = 1,
    folds: int = 5,
    max_iter: int = 10000,
    dtype: torch.dtype = torch.float32,
) -> list[float]:
    """C2ST accuracies of several ``(reference (n, d), samples (m, d))`` pairs, sbibm protocol.

    Per pair, both sets are z-scored with the statistics of the reference, labelled 0 and 1 and
    split by shuffled ``folds``-fold cross-validation (scikit-learn's ``KFold``, seeded). On each
    fold an MLP with two hidden layers of ``10 * d`` ReLU units and a logistic output is trained
    as scikit-learn's ``MLPClassifier(solver="adam")`` trains it (Glorot-uniform initialisation,
    mini-batches of 200 reshuffled every epoch, L2 penalty 1e-4, Adam with learning rate 1e-3,
    stopping once the epoch's training loss has not improved by 1e-4 for more than 10 epochs,
    at most ``max_iter`` epochs) and scored by test accuracy. The classifiers of all pairs and
    folds train together as one batched network (they stay independent), which is what makes a
    whole benchmark table affordable on a CPU; ``tests/test_npe_diagnostics.py`` checks the
    accuracies against ``MLPClassifier`` and against the Bayes-optimal accuracy.

    Each fold's classifier starts from its own random weights (``seed`` seeds them all), where
    sbibm's ``MLPClassifier(random_state=seed)`` starts every fold from the same ones. The
    protocol's classifier often stops on a plateau, so one initialisation moves a score by a
    few hundredths (two-moons draws, one fold: 0.67-0.75 over ``random_state`` 1-5); averaging
    over independent starts gives the protocol's expected score rather than one draw of it.
    ``dtype``: float32 (default) or float64 arithmetic of the classifiers.
    """
    from sklearn.model_selection import KFold

    groups: dict[tuple[int, int], list[tuple[int, NDArray, NDArray, NDArray, NDArray]]] = {}
    for i, (x, y) in enumerate(pairs):
        a = np.asarray(x, dtype=np.float64)
        b = np.asarray(y, dtype=np.float64)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
            raise ValueError(f"c2st needs (n, d) and (m, d) samples, got {a.shape}, {b.shape}")
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ValueError(f"c2st samples of pair {i} contain NaN or infinite values")
        mean, std = a.mean(axis=0), a.std(axis=0, ddof=1)
        std = np.where(std > 0, std, 1.0)
        data = np.concatenate([(a - mean) / std, (b - mean) / std])
        target = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
        for train, test in KFold(n_splits=folds, shuffle=True, random_state=seed).split(data):
            key = (data.shape[1], len(train))
            groups.setdefault(key, []).append(
                (i, data[train], target[train], data[test], target[test])
            )

    correct = np.zeros(len(pairs))
    total = np.zeros(len(pairs))
    for (dim, _), jobs in groups.items():
        weights = _fit_mlp_classifiers(
            torch.as_tensor(np.stack([j[1] for j in jobs]), dtype=dtype),
            torch.as_tensor(np.stack([j[2] for j in jobs]), dtype=dtype),
            hidden=10 * dim,
            max_iter=max_iter,
            seed=seed,
        )
        for k, (i, _, _, x_test, t_test) in enumerate(jobs):
            logits = _mlp_logits([w[k : k + 1] for w in weights], torch.as_tensor(x_test)[None])
            predicted = (logits[0, :, 0] > 0).double().numpy()
            correct[i] += (predicted == t_test).sum()
            total[i] += len(t_test)
    return (correct / total).tolist()


def _mlp_logits(weights: Sequence[Tensor], x: Tensor) -> Tensor:
    """Logits ``(B, n, 1)`` of ``B`` ReLU MLPs ``[W1, b1, W2, b2, W3, b3]`` on ``x (B, n, d)``."""
    w1, b1, w2, b2, w3, b3 = weights
    h = torch.baddbmm(b1[:, None], x.to(w1.dtype), w1).relu_()
    h = torch.baddbmm(b2[:, None], h, w2).relu_()
    return torch.baddbmm(b3[:, None], h, w3)


def _fit_mlp_classifiers(
    x: Tensor,
    target: Tensor,
    hidden: int,
    max_iter: int,
    seed: int,
    batch_size: int = 200,
    alpha: float = 1e-4,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    tol: float = 1e-4,
    n_iter_no_change: int = 10,
) -> list[Tensor]:
    """Trains ``B`` independent binary MLP classifiers on ``x (B, n, d)``, ``target (B, n)``
    exactly as scikit-learn's ``MLPClassifier(solver="adam")`` does (see :func:`c2st_many`),
    with the gradients written out by hand. Returns ``[W1, b1, W2, b2, W3, b3]``, each with a
    leading ``B`` axis."""
    g = torch.Generator().manual_seed(seed)
    count, n, dim = x.shape
    sizes = [(dim, hidden), (hidden, hidden), (hidden, 1)]
    params: list[Tensor] = []
    for fan_in, fan_out in sizes:
        bound = float(np.sqrt(6.0 / (fan_in + fan_out)))
        params.append((torch.rand(count, fan_in, fan_out, generator=g) * 2 - 1).to(x) * bound)
        params.append((torch.rand(count, fan_out, generator=g) * 2 - 1).to(x) * bound)
    final = [p.clone() for p in params]
    first = [torch.zeros_like(p) for p in params]
    second = [torch.zeros_like(p) for p in params]
    active = torch.arange(count)
    best = torch.full((count,), float("inf"), dtype=torch.float64)
    stalls = torch.zeros(count, dtype=torch.int64)
    step = 0
    for _ in range(max_iter):
        order = torch.rand(len(active), n, generator=g).argsort(dim=1)
        rows = torch.arange(len(active))[:, None]
        epoch_loss = torch.zeros(len(active), dtype=torch.float64)
        for start in range(0, n, batch_size):
            idx = order[:, start : start + batch_size]
            xb, tb = x[rows, idx], target[rows, idx][..., None]
            size = idx.shape[1]
            w1, b1, w2, b2, w3, b3 = params
            z1 = torch.baddbmm(b1[:, None], xb, w1)
            a1 = z1.relu()
            z2 = torch.baddbmm(b2[:, None], a1, w2)
            a2 = z2.relu()
            z3 = torch.baddbmm(b3[:, None], a2, w3)
            # log-loss of a logistic output, computed stably from the logit
            nll = (torch.nn.functional.softplus(z3) - tb * z3).mean(dim=(1, 2))
            penalty = sum(w.square().sum(dim=(1, 2)) for w in (w1, w2, w3))
            epoch_loss += (nll + 0.5 * alpha * penalty / size).double() * size
            d3 = (torch.sigmoid(z3) - tb) / size
            d2 = torch.bmm(d3, w3.transpose(1, 2)) * (z2 > 0)
            d1 = torch.bmm(d2, w2.transpose(1, 2)) * (z1 > 0)
            grads = [
                torch.bmm(xb.transpose(1, 2), d1) + alpha * w1 / size,
                d1.sum(1),
                torch.bmm(a1.transpose(1, 2), d2) + alpha * w2 / size,
                d2.sum(1),
                torch.bmm(a2.transpose(1, 2), d3) + alpha * w3 / size,
                d3.sum(1),
            ]
            step += 1
            rate = lr * np.sqrt(1 - betas[1] ** step) / (1 - betas[0] ** step)
            for p, m, v, grad in zip(params, first, second, grads, strict=True):
                m.mul_(betas[0]).add_(grad, alpha=1 - betas[0])
                v.mul_(betas[1]).addcmul_(grad, grad, value=1 - betas[1])
                p.addcdiv_(m, v.sqrt().add_(eps), value=-rate)
        epoch_loss /= n
        improved = epoch_loss <= best[active] - tol
        stalls[active] = torch.where(improved, 0, stalls[active] + 1)
        best[active] = torch.minimum(best[active], epoch_loss)
        done = stalls[active] > n_iter_no_change
        if done.any():
            for f, p in zip(final, params, strict=True):
                f[active[done]] = p[done]
            keep = ~done
            active = active[keep]
            x, target = x[keep], target[keep]
            params = [p[keep] for p in params]
            first = [m[keep] for m in first]
            second = [v[keep] for v in second]
            if len(active) == 0:
                break
    for f, p in zip(final, params, strict=True):
        f[active] = p
    return final


# ---------------------------------------------------------------------------------------------
# plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Writes a figure as PNG (folders made as needed) and closes it."""
    plt = _plt()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_coverage(
    curves: dict[str, tuple[Tensor, Tensor]],
    path: str | Path,
    title: str = "Expected coverage",
    tarp_curves: dict[str, tuple[Tensor, Tensor]] | None = None,
) -> Path:
    """Coverage against credibility level (one curve per name), with the diagonal; with
    ``tarp_curves``, a second panel for TARP."""
    plt = _plt()
    panels = 2 if tarp_curves else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4), squeeze=False)
    for ax, data, name in zip(axes[0], [curves, tarp_curves or {}], ["HPD", "TARP"], strict=False):
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        for label, (lv, cov) in data.items():
            ax.plot(
                np.asarray(lv), np.asarray(cov), marker="o" if len(lv) < 25 else None, label=label
            )
        ax.set_xlabel("credibility level")
        ax.set_ylabel("empirical coverage")
        ax.set_title(f"{title} ({name})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_sbc(
    ranks: Tensor, n_samples: int, path: str | Path, names: list[str] | None = None
) -> Path:
    """Histograms of SBC ranks per parameter with the uniform band (99% of binomial counts)."""
    plt = _plt()
    B, dim = ranks.shape
    cols = min(dim, 5)
    rows = -(-dim // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows), squeeze=False)
    bins = 20
    lo, hi = stats.binom.ppf([0.005, 0.995], B, 1 / bins)
    for j in range(rows * cols):
        ax = axes[j // cols][j % cols]
        if j >= dim:
            ax.axis("off")
            continue
        ax.axhspan(lo, hi, color="0.85")
        ax.hist(ranks[:, j].numpy(), bins=bins, range=(0, n_samples + 1), color="tab:blue")
        ax.set_title(names[j] if names else f"theta_{j + 1}", fontsize=9)
        ax.set_yticks([])
    return _save(fig, path)


def plot_corner(
    samples: dict[str, Tensor],
    path: str | Path,
    truth: Tensor | None = None,
    names: list[str] | None = None,
    limits: Sequence[tuple[float, float]] | None = None,
    max_points: int = 4000,
) -> Path:
    """Corner plot: 1-D histograms on the diagonal, 2-D scatter below, one colour per set."""
    plt = _plt()
    first = next(iter(samples.values()))
    dim = first.shape[-1]
    fig, axes = plt.subplots(dim, dim, figsize=(1.9 * dim + 1, 1.9 * dim + 1), squeeze=False)
    colors = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple"]
    for k, (label, s) in enumerate(samples.items()):
        s = s.reshape(-1, dim)[:max_points].numpy()
        c = colors[k % len(colors)]
        for i in range(dim):
            for j in range(dim):
                ax = axes[i][j]
                if j > i:
                    ax.axis("off")
                elif i == j:
                    rng = limits[i] if limits else None
                    ax.hist(
                        s[:, i],
                        bins=40,
                        range=rng,
                        density=True,
                        histtype="step",
                        color=c,
                        label=label,
                    )
                else:
                    ax.scatter(s[:, j], s[:, i], s=1, alpha=0.2, color=c, rasterized=True)
    for i in range(dim):
        for j in range(i + 1):
            ax = axes[i][j]
            if truth is not None:
                ax.axvline(float(truth[j]), color="k", lw=0.7)
                if i != j:
                    ax.axhline(float(truth[i]), color="k", lw=0.7)
            if limits:
                ax.set_xlim(*limits[j])
                if i != j:
                    ax.set_ylim(*limits[i])
            if i == dim - 1:
                ax.set_xlabel(names[j] if names else f"theta_{j + 1}", fontsize=8)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i] if names else f"theta_{i + 1}", fontsize=8)
            else:
                ax.set_yticklabels([])
            ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.05, 1.0))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
