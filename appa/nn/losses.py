"""The autoencoder's reconstruction losses: MSE weighted by grid-cell area and level,
and a zonal power spectrum term that keeps the small scales' variance."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["WeightedMSE", "ZonalSpectrumLoss", "cell_area_weights", "level_weights"]


def cell_area_weights(latitudes: Sequence[float] | Tensor) -> Tensor:
    """Relative areas of the cells of a regular latitude-longitude grid, normalised to mean 1.

    ``w_i = sin(phi_{i+1/2}) - sin(phi_{i-1/2})`` with cell bounds at the midpoints between rows
    and, at the ends, the poles on a global grid (WeatherBench2's definition: the row one
    spacing beyond the edge row would lie at or past the pole) or half a spacing beyond the
    edge rows on a regional one (:func:`appa.data.grids.latitude_bounds`).

    Arguments:
        latitudes: Row latitudes in degrees, strictly monotonic (ascending or descending),
            within [-90, 90].

    Returns:
        ``(H,)`` float64 weights in the order of ``latitudes``.
    """
    lat = torch.as_tensor(latitudes, dtype=torch.float64).flatten()
    if lat.numel() < 1:
        raise ValueError("latitudes are empty")
    if not torch.isfinite(lat).all() or lat.abs().max() > 90:
        raise ValueError("latitudes must be finite and within [-90, 90] degrees")
    descending = lat.numel() > 1 and bool(lat[0] > lat[-1])
    ordered = lat.flip(0) if descending else lat
    if lat.numel() > 1 and not bool((ordered.diff() > 0).all()):
        raise ValueError("latitudes must be strictly monotonic")
    mid = (ordered[1:] + ordered[:-1]) / 2
    low, high = -90.0, 90.0
    if lat.numel() > 1:
        # a regional grid (the row one spacing beyond an edge row is short of the pole) ends
        # half a spacing beyond its edge rows, not at the poles
        south, north = float(ordered[1] - ordered[0]), float(ordered[-1] - ordered[-2])
        if float(ordered[0]) - south > -90.0:
            low = float(ordered[0]) - south / 2
        if float(ordered[-1]) + north < 90.0:
            high = float(ordered[-1]) + north / 2
    bounds = torch.cat([ordered.new_tensor([low]), mid, ordered.new_tensor([high])])
    w = torch.sin(torch.deg2rad(bounds[1:])) - torch.sin(torch.deg2rad(bounds[:-1]))
    w = w / w.mean()
    return w.flip(0) if descending else w


def level_weights(
    levels: Sequence[float | None],
    surface_weight: float = 1.0,
    power: float = 1.0,
    vertical: str = "pressure",
) -> Tensor:
    """Per-channel weights for the levels of a state spec's channels (``None``: a surface
    channel, weighted ``surface_weight``).

    ``vertical="pressure"`` (hPa): proportional to ``pressure ** power``, normalised to mean 1
    over those channels; upper levels hold less mass, so they weigh less.
    ``vertical="depth"`` (m, positive down): every depth level weighs 1. Each channel is
    standardised by its own statistics, so equal weights give every level's errors, relative to
    its own variability, the same say; weighting by layer thickness (the water's mass) would
    hand most of the loss to the few thick, slow deep layers, while the variability, the
    observations and the questions asked (the mixed layer, the shelf's bottom water) lie in the
    thin upper ones.

    Returns:
        ``(C,)`` float64.
    """
    if len(levels) == 0:
        raise ValueError("levels are empty")
    if vertical not in ("pressure", "depth"):
        raise ValueError(f"vertical must be 'pressure' or 'depth', got {vertical!r}")
    values = [p for p in levels if p is not None]
    if any(not p > 0 for p in values):
        unit = "hPa" if vertical == "pressure" else "m"
        raise ValueError(f"{vertical} levels must be positive ({unit}), got {values}")
    if surface_weight < 0:
        raise ValueError(f"surface_weight must be >= 0, got {surface_weight}")
    out = torch.full((len(levels),), float(surface_weight), dtype=torch.float64)
    if values:
        if vertical == "depth":
            p = torch.ones(len(values), dtype=torch.float64)
        else:
            p = torch.tensor(values, dtype=torch.float64) ** power
            p = p / p.mean()
        index = torch.tensor([i for i, lv in enumerate(levels) if lv is not None])
        out[index] = p
    return out


class WeightedMSE(nn.Module):
    """``sum_{c,i,j} w_c a_i (x_hat - x)^2 / sum_{c,i,j} w_c a_i`` per sample.

    A uniform error ``e`` gives ``e^2`` whatever the weights.

    Arguments:
        latitudes: Row latitudes (degrees) for the cell-area weights ``a_i``.
        channel_weights: ``(C,)`` weights ``w_c`` (e.g. :func:`level_weights`); ones if None.
    """

    def __init__(
        self, latitudes: Sequence[float] | Tensor, channel_weights: Sequence[float] | Tensor | None
    ) -> None:
        super().__init__()
        area = cell_area_weights(latitudes).float()
        self.register_buffer("area", area, persistent=False)
        if channel_weights is None:
            cw = None
        else:
            cw = torch.as_tensor(channel_weights, dtype=torch.float32).flatten()
            if (cw < 0).any() or not torch.isfinite(cw).all() or cw.sum() <= 0:
                raise ValueError("channel weights must be finite, non-negative, not all zero")
        self.register_buffer("channel", cw, persistent=False)

    def forward(self, x_hat: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x_hat``, ``x``: ``(B, ..., C, H, W)``; returns the per-sample loss ``(B,)``.

        ``mask`` (bool, broadcastable to ``x``, True where valid) restricts the loss to valid
        points: ``sum w m (x_hat - x)^2 / sum w m`` per sample. Invalid points contribute
        neither value nor gradient, whatever they hold (NaN included); a sample without any
        valid point has loss 0.
        """
        if x_hat.shape != x.shape:
            raise ValueError(f"shapes differ: x_hat {tuple(x_hat.shape)} vs x {tuple(x.shape)}")
        if x.ndim < 4 or x.shape[-2] != self.area.numel():
            raise ValueError(
                f"expected (B, ..., C, {self.area.numel()}, W) tensors, got {tuple(x.shape)}"
            )
        w = self.area[:, None]
        if self.channel is not None:
            if x.shape[-3] != self.channel.numel():
                raise ValueError(
                    f"{self.channel.numel()} channel weights for {x.shape[-3]} channels"
                )
            w = self.channel[:, None, None] * w
            w = w / self.channel.mean()
        diff = x_hat.float() - x.float()
        if mask is None:
            return (diff.square() * w).flatten(1).mean(dim=1)
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool (True where valid), got {mask.dtype}")
        mask = mask.expand_as(x)
        # where, not a product: 0 * NaN would be NaN, and the gradient must not reach
        # invalid points at all
        se = torch.where(mask, diff, torch.zeros_like(diff)).square() * w
        weight = (mask * w).flatten(1).sum(dim=1)
        return se.flatten(1).sum(dim=1) / weight.clamp_min(torch.finfo(weight.dtype).tiny)


def _fill_rows(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with invalid points set to the mean of their row's valid points (0 for rows
    without any)."""
    valid = torch.where(mask, x, torch.zeros_like(x))
    count = mask.sum(dim=-1, keepdim=True)
    mean = valid.sum(dim=-1, keepdim=True) / count.clamp_min(1)
    return torch.where(mask, x, mean)


class ZonalSpectrumLoss(nn.Module):
    """Squared log ratio of reconstructed to true zonal power, per channel and wavenumber.

    Over the batch, ``P_ck`` is the area-weighted mean over samples and latitude rows of
    ``|FFT_lon(x)_k|^2`` (channel ``c``, wavenumber ``k = 1 ... W / 2``), likewise ``Q_ck`` of
    ``x_hat``; the loss is the mean over ``c, k`` of ``(log(Q_ck + f_c) - log(P_ck + f_c))^2``
    with the floor ``f_c = floor * sum_k P_ck``.

    A mean squared error alone lets an autoencoder smooth the small scales away (they hold
    little of the variance): their power can be off by orders of magnitude for a tiny error.
    This term weighs every resolved wavenumber alike, so the decoded states keep the data's
    spectrum; the floor stops it from chasing rounding noise beyond a band-limited truth's
    cut-off. It compares batch-mean spectra, not single states: phases are the MSE's task.

    Arguments:
        latitudes: Row latitudes (degrees) for the cell-area weights.
        floor: Relative power floor (of each channel's total zonal power).
    """

    def __init__(self, latitudes: Sequence[float] | Tensor, floor: float = 1e-6) -> None:
        super().__init__()
        if not floor > 0:
            raise ValueError(f"floor must be positive, got {floor}")
        self.floor = float(floor)
        self.register_buffer("area", cell_area_weights(latitudes).float(), persistent=False)

    def _power(self, x: Tensor) -> Tensor:
        """``(C, W // 2)``: batch- and area-weighted mean zonal power of ``(N, C, H, W)``."""
        power = torch.fft.rfft(x, dim=-1, norm="forward").abs().square()[..., 1:]
        w = self.area / self.area.sum()
        return torch.einsum("nchk,h->ck", power, w) / x.shape[0]

    def forward(self, x_hat: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x_hat``, ``x``: ``(B, ..., C, H, W)``; returns the batch's loss, a scalar.

        ``mask`` (bool, True where valid) leaves invalid points out: on each latitude row of
        each field they take the mean of the row's valid points (as
        :func:`appa.metrics.zonal_power_spectrum` fills NaN), so neither what they hold nor the
        steps at their edges (coastlines) count, and they pass no gradient.
        """
        if x_hat.shape != x.shape:
            raise ValueError(f"shapes differ: x_hat {tuple(x_hat.shape)} vs x {tuple(x.shape)}")
        if x.ndim < 4 or x.shape[-2] != self.area.numel():
            raise ValueError(
                f"expected (B, ..., C, {self.area.numel()}, W) tensors, got {tuple(x.shape)}"
            )
        x_hat, x = x_hat.float(), x.float()
        if mask is not None:
            mask = mask.expand_as(x)
            x_hat, x = _fill_rows(x_hat, mask), _fill_rows(x, mask)
        x_hat, x = x_hat.flatten(0, -4), x.flatten(0, -4)
        target = self._power(x).detach()
        # a constant channel (a sea's anoxic deep water) has no power at all: its floor stays
        # positive so that its ratio is 1, not 0 / 0
        floor = (self.floor * target.sum(dim=1, keepdim=True)).clamp_min(
            torch.finfo(target.dtype).tiny
        )
        ratio = (self._power(x_hat) + floor).log() - (target + floor).log()
        return ratio.square().mean()
