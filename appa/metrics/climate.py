"""Climate statistics of gridded trajectories, to compare a generative prior's samples with data.

Every function takes trajectories ``x`` shaped ``(N, T, C, lat, lon)`` (N trajectories of T
consecutive states, C channels on an equiangular grid with ascending latitudes) as numpy arrays
in any units; NaN marks cells without data (sea-surface temperature over land) and is left out.
Spatial means weigh cells by area (:func:`appa.data.grids.area_weights`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from appa.data.grids import area_weights

__all__ = [
    "ClimateComparison",
    "channel_moments",
    "compare_climate",
    "lag_autocorrelation",
    "zonal_power_spectrum",
]


def _check(x: NDArray, latitude: NDArray | None = None) -> NDArray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 5:
        raise ValueError(f"trajectories must be (N, T, C, lat, lon), got shape {x.shape}")
    if latitude is not None and len(latitude) != x.shape[3]:
        raise ValueError(f"{len(latitude)} latitudes for a grid of {x.shape[3]} rows")
    return x


def _weighted_mean(x: NDArray, weights: NDArray, axes: tuple[int, ...]) -> NDArray:
    valid = np.isfinite(x)
    w = np.broadcast_to(weights, x.shape) * valid
    return (np.where(valid, x, 0.0) * w).sum(axes) / w.sum(axes)


def channel_moments(x: NDArray, latitude: NDArray) -> tuple[NDArray, NDArray]:
    """Area-weighted mean and standard deviation per channel over trajectories, times and cells.

    Returns ``(C,)`` arrays, in the units of ``x``.
    """
    x = _check(x, latitude)
    w = area_weights(latitude)[:, None]
    axes = (0, 1, 3, 4)
    mean = _weighted_mean(x, w, axes)
    var = _weighted_mean((x - mean[:, None, None]) ** 2, w, axes)
    return mean, np.sqrt(var)


def lag_autocorrelation(x: NDArray, latitude: NDArray, lag: int = 1) -> NDArray:
    """Lag-``lag`` autocorrelation along time per channel, ``(C,)``.

    Anomalies are taken about each cell's mean over trajectories and times, so the correlation
    measures temporal persistence rather than the fixed spatial pattern; products and variances
    are pooled over cells with area weights.
    """
    x = _check(x, latitude)
    if not 1 <= lag < x.shape[1]:
        raise ValueError(f"lag must lie in [1, {x.shape[1] - 1}] for {x.shape[1]} states")
    with warnings.catch_warnings():  # cells without data (land) have no mean: NaN is right
        warnings.simplefilter("ignore", RuntimeWarning)
        anomaly = x - np.nanmean(x, axis=(0, 1), keepdims=True)
    w = area_weights(latitude)[:, None]
    a, b = anomaly[:, lag:], anomaly[:, :-lag]
    axes = (0, 1, 3, 4)
    cov = _weighted_mean(a * b, w, axes)
    var_a = _weighted_mean(a * a, w, axes)
    var_b = _weighted_mean(b * b, w, axes)
    return cov / np.sqrt(var_a * var_b)


def zonal_power_spectrum(x: NDArray, latitude: NDArray) -> NDArray:
    """Zonal power spectrum per channel, ``(C, lon // 2 + 1)``, wavenumbers 0 ... lon / 2.

    The power of wavenumber ``k`` on a latitude row is ``|F_k|^2 / lon^2`` (doubled for
    ``0 < k < lon / 2``, so the wavenumbers' powers sum to the row's mean square), averaged over
    trajectories, times and rows with area weights. Rows with NaN cells (land, for masked
    channels) have those cells set to the row's mean of valid cells first, which removes them
    from every wavenumber but zero; compare spectra of arrays that share one mask.
    """
    x = _check(x, latitude)
    nlon = x.shape[-1]
    with warnings.catch_warnings():  # rows without data have no mean: they drop out below
        warnings.simplefilter("ignore", RuntimeWarning)
        row_mean = np.nanmean(x, axis=-1, keepdims=True)
    filled = np.where(np.isfinite(x), x, row_mean)
    power = np.abs(np.fft.rfft(filled, axis=-1)) ** 2 / nlon**2
    power[..., 1 : (nlon + 1) // 2] *= 2.0
    w = area_weights(latitude)
    rows = np.isfinite(row_mean[..., 0])  # rows without any valid cell drop out
    weights = np.where(rows, w, 0.0)[..., None]
    return (power * weights).sum((0, 1, 3)) / weights.sum((0, 1, 3))


@dataclass
class ClimateComparison:
    """Statistics of samples against data per channel (all ``(C,)`` but the spectra).

    ``mean_error`` is ``|mean_s - mean_d| / std_d``; ``std_ratio`` is ``std_s / std_d``;
    ``lag1_error`` is ``|r_s - r_d|``; ``spectrum_ratio`` is ``(C, K)`` over wavenumbers
    1 ... lon / 2, judged only where the data resolve them (:meth:`resolved`).
    """

    channels: list[str]
    mean_samples: NDArray
    mean_data: NDArray
    std_samples: NDArray
    std_data: NDArray
    lag1_samples: NDArray
    lag1_data: NDArray
    spectrum_samples: NDArray
    spectrum_data: NDArray

    @property
    def mean_error(self) -> NDArray:
        return np.abs(self.mean_samples - self.mean_data) / self.std_data

    @property
    def std_ratio(self) -> NDArray:
        return self.std_samples / self.std_data

    @property
    def lag1_error(self) -> NDArray:
        return np.abs(self.lag1_samples - self.lag1_data)

    @property
    def spectrum_ratio(self) -> NDArray:
        return self.spectrum_samples[:, 1:] / self.spectrum_data[:, 1:]

    def resolved(self, floor: float = 1e-9) -> NDArray:
        """``(C, K)``: wavenumbers 1 ... lon / 2 where the data hold power above ``floor``
        times their power summed over those wavenumbers. Band-limited data (e.g. a spectral
        model truncated below the grid's Nyquist wavenumber) hold only rounding errors beyond
        their truncation; ratios there compare noise with noise and are left out."""
        power = self.spectrum_data[:, 1:]
        return power > floor * power.sum(axis=1, keepdims=True)

    def departures(
        self,
        mean_tolerance: float = 0.1,
        std_tolerance: float = 0.1,
        lag1_tolerance: float = 0.05,
        spectrum_factor: float = 2.0,
    ) -> list[str]:
        """Where the samples depart from the data beyond the tolerances, as readable lines
        (empty when every channel is within them). Channels constant in the data are not
        judged (their errors are in units of a zero spread)."""
        out = []
        for c, name in enumerate(self.channels):
            if not self.std_data[c] > 0:
                # constant in the data (a sea's anoxic deep water): no spread to measure the
                # samples in; the table shows them
                continue
            if self.mean_error[c] > mean_tolerance:
                out.append(f"{name}: mean off by {self.mean_error[c]:.3f} data std")
            if abs(self.std_ratio[c] - 1) > std_tolerance:
                out.append(f"{name}: std ratio {self.std_ratio[c]:.3f}")
            if self.lag1_error[c] > lag1_tolerance:
                out.append(
                    f"{name}: lag-1 autocorrelation {self.lag1_samples[c]:.3f} vs "
                    f"{self.lag1_data[c]:.3f}"
                )
            ratio = self.spectrum_ratio[c]
            off = (ratio > spectrum_factor) | (ratio < 1 / spectrum_factor)
            bad = np.nonzero(off & self.resolved()[c])[0]
            if bad.size:
                k = int(bad[np.argmax(np.abs(np.log(ratio[bad])))]) + 1
                out.append(
                    f"{name}: zonal power off by more than {spectrum_factor}x at "
                    f"{bad.size} wavenumbers (worst k={k}: ratio {ratio[k - 1]:.2f})"
                )
        return out

    def table(self) -> str:
        """A plain-text table of the comparison."""
        lines = [
            f"{'channel':<28}{'mean err':>9}{'std ratio':>10}{'lag1 s':>8}{'lag1 d':>8}"
            f"{'spec min':>9}{'spec max':>9}"
        ]
        for c, name in enumerate(self.channels):
            r = self.spectrum_ratio[c][self.resolved()[c]]
            # a field without resolved power (constant in the data) has no spectrum to compare
            spectrum = f"{r.min():>9.2f}{r.max():>9.2f}" if r.size else f"{'-':>9}{'-':>9}"
            lines.append(
                f"{name:<28}{self.mean_error[c]:>9.3f}{self.std_ratio[c]:>10.3f}"
                f"{self.lag1_samples[c]:>8.3f}{self.lag1_data[c]:>8.3f}{spectrum}"
            )
        return "\n".join(lines)


def compare_climate(
    samples: NDArray, data: NDArray, latitude: NDArray, channels: Sequence[str]
) -> ClimateComparison:
    """Moments, lag-1 autocorrelation and zonal spectra of ``samples`` against ``data``.

    Both ``(N, T, C, lat, lon)`` in the same units (N may differ). Cells where the data are
    NaN in every trajectory and time (land, for masked channels) are masked in the samples too,
    so both are compared over the same cells.
    """
    samples, data = _check(samples, latitude), _check(data, latitude)
    if samples.shape[2:] != data.shape[2:]:
        raise ValueError(f"samples {samples.shape} and data {data.shape} differ in (C, lat, lon)")
    if len(channels) != data.shape[2]:
        raise ValueError(f"{len(channels)} channel names for {data.shape[2]} channels")
    land = np.isnan(data).all(axis=(0, 1))
    samples = np.where(land, np.nan, samples)
    data = np.where(land, np.nan, data)
    (ms, ss), (md, sd) = channel_moments(samples, latitude), channel_moments(data, latitude)
    return ClimateComparison(
        channels=list(channels),
        mean_samples=ms,
        mean_data=md,
        std_samples=ss,
        std_data=sd,
        lag1_samples=lag_autocorrelation(samples, latitude),
        lag1_data=lag_autocorrelation(data, latitude),
        spectrum_samples=zonal_power_spectrum(samples, latitude),
        spectrum_data=zonal_power_spectrum(data, latitude),
    )
