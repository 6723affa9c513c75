"""Small building blocks shared by the networks: spherical-grid convolutions, channel norms,
latent saturation and sinusoidal embeddings.

Grids are ``(..., lat, lon)`` with longitude periodic (global) or not (regional); convolutions pad
longitude circularly (or with zeros) and latitude with zeros, explicitly, so the padding is the
same on every device (meta included).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BandLimit",
    "ChannelNorm",
    "GridConv",
    "LatPadding",
    "Saturation",
    "pole_pad",
    "saturate",
    "sinusoidal_embedding",
    "upcast",
]

Saturation = Literal["softclip", "softclip2", "tanh", "none"]


def upcast(x: Tensor) -> Tensor:
    """``x`` in float32 if it is in a half-precision dtype, else unchanged (float64 stays)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class GridConv(nn.Conv2d):
    """A 2-D convolution over ``(B, C, lat, lon)`` with circular padding in longitude (zeros on
    a regional grid, ``periodic=False``) and zero padding in latitude ("same" output size for
    odd kernels).

    Arguments:
        in_channels, out_channels: Channels.
        kernel_size: Odd kernel size.
        init_scale: Multiplies the default initialisation (e.g. ``1e-2`` for the last conv of a
            residual branch, so blocks start close to the identity).
        periodic: Whether longitude is periodic (a global grid); False pads it with zeros, so
            a regional grid's east and west edges do not see each other.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        init_scale: float = 1.0,
        periodic: bool = True,
    ) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=0)
        self.half = kernel_size // 2
        self.periodic = bool(periodic)
        if init_scale != 1.0 and not self.weight.is_meta:
            with torch.no_grad():
                self.weight.mul_(init_scale)

    def forward(self, x: Tensor) -> Tensor:
        if self.half:
            if self.periodic:
                x = F.pad(x, (self.half, self.half, 0, 0), mode="circular")
                x = F.pad(x, (0, 0, self.half, self.half))
            else:
                x = F.pad(x, (self.half, self.half, self.half, self.half))
        return super().forward(x)


class BandLimit(nn.Module):
    """Projects channels of ``(N, C, lat, lon)`` grids onto a space of zonal wavenumbers
    ``0 ... T``, with a ``lat x lat`` projection per wavenumber (e.g. onto the spherical
    harmonics of degree up to ``T``: :func:`appa.data.spectral.band_limit_projection`).

    The matrices are a buffer (saved with the weights) that starts as NaN: :meth:`set` fills
    it, and projecting before that is an error, not zeros.

    Arguments:
        truncation: ``T``.
        channels: Indices of the projected channels; the others pass unchanged.
        lat: Number of latitudes.
    """

    def __init__(self, truncation: int, channels: list[int], lat: int) -> None:
        super().__init__()
        self.truncation = int(truncation)
        self.channels = list(channels)
        self.register_buffer("matrices", torch.full((self.truncation + 1, lat, lat), math.nan))
        self.register_buffer("index", torch.tensor(self.channels), persistent=False)
        # checked until the matrices are first seen set: decoding sits inside solver loops,
        # where a host sync per call would cost on a GPU
        self._checked = False

    def set(self, matrices: Tensor) -> None:
        """Stores the projections ``(T + 1, lat, lat)`` (finite)."""
        if tuple(matrices.shape) != tuple(self.matrices.shape):
            raise ValueError(
                f"band-limit matrices must have shape {tuple(self.matrices.shape)}, got "
                f"{tuple(matrices.shape)}"
            )
        if not torch.isfinite(matrices).all():
            raise ValueError("band-limit matrices hold NaN or infinite values")
        self.matrices.copy_(matrices)
        self._checked = True

    def forward(self, x: Tensor) -> Tensor:
        if not self._checked and not self.matrices.is_meta:
            if torch.isnan(self.matrices[0, 0, 0]):
                raise RuntimeError(
                    "the band-limit projection was never set: build it from the grid's "
                    "latitudes (appa.data.spectral.band_limit_projection) and call set(), or "
                    "load weights"
                )
            self._checked = True
        part = upcast(x.index_select(1, self.index))
        T, nlon = self.truncation, x.shape[-1]
        coeffs = torch.fft.rfft(part, dim=-1)[..., : T + 1]  # (N, c, lat, T + 1)
        kept = torch.einsum("mij,ncjm->ncim", self.matrices.to(coeffs.dtype), coeffs)
        projected = torch.fft.irfft(kept, n=nlon, dim=-1).to(x.dtype)
        return x.index_copy(1, self.index, projected)


class ChannelNorm(nn.Module):
    """Layer normalisation over the channel dimension ``1`` of ``(B, C, *spatial)``, per
    position (no coupling across the globe, so it commutes with longitude rolls), computed in
    float32 for half-precision inputs."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = upcast(x)
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).square().mean(dim=1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x * self.weight.view(shape) + self.bias.view(shape)).to(dtype)


def saturate(z: Tensor, kind: Saturation, bound: float) -> Tensor:
    """Soft-clips latents to ``(-bound, bound)`` elementwise, smoothly and monotonically:

    - ``softclip``: ``z / (1 + |z| / c)``;
    - ``softclip2``: ``z / sqrt(1 + (z / c)^2)`` (identity to second order near 0);
    - ``tanh``: ``c tanh(z / c)``; ``none``: identity.
    """
    if kind == "none":
        return z
    if kind == "softclip":
        return z / (1 + z.abs() / bound)
    if kind == "softclip2":
        return z * torch.rsqrt(1 + (z / bound).square())
    if kind == "tanh":
        return bound * torch.tanh(z / bound)
    raise ValueError(f"unknown saturation {kind!r}; choose softclip, softclip2, tanh or none")


LatPadding = Literal["zeros", "pole", "pole-half"]


def pole_pad(x: Tensor, top: int, bottom: int, mode: LatPadding) -> Tensor:
    """Pads the latitude axis (``-2``) of ``(..., lat, lon)`` by ``top`` rows before the first
    row and ``bottom`` rows after the last.

    ``zeros`` fills with zeros. ``pole`` and ``pole-half`` continue the field over the pole: a
    point beyond the pole is the point as far on the other side of it, half a revolution away in
    longitude (needs an even number of longitudes). ``pole``: the edge rows lie on the poles
    (grids "with poles", e.g. 721 x 1440), so the row ``d`` cells beyond an edge is the row
    ``d`` cells inside it; ``pole-half``: the edge rows lie half a cell from the poles (e.g. the
    32 x 64 equiangular grid), so the row ``d`` cells beyond is the row ``d - 1`` cells inside.
    All commute with longitude rolls.
    """
    if top < 0 or bottom < 0:
        raise ValueError(f"padding must be non-negative, got top={top}, bottom={bottom}")
    if top == 0 and bottom == 0:
        return x
    if mode == "zeros":
        return F.pad(x, (0, 0, top, bottom))
    if mode not in ("pole", "pole-half"):
        raise ValueError(f"unknown latitude padding {mode!r}; choose zeros, pole or pole-half")
    H, W = x.shape[-2:]
    if W % 2:
        raise ValueError(f"pole padding needs an even number of longitudes, got {W}")
    skip = 1 if mode == "pole" else 0  # whether the edge row itself is the pole
    if max(top, bottom) + skip > H:
        raise ValueError(f"cannot pad {max(top, bottom)} rows over the pole of a {H}-row grid")
    half = W // 2
    parts = []
    if top:
        parts.append(x[..., skip : skip + top, :].flip(-2).roll(half, dims=-1))
    parts.append(x)
    if bottom:
        parts.append(x[..., H - skip - bottom : H - skip, :].flip(-2).roll(half, dims=-1))
    return torch.cat(parts, dim=-2)


def sinusoidal_embedding(x: Tensor, features: int, max_period: float = 1e4) -> Tensor:
    """Sine/cosine features of a scalar per element: ``(*) -> (*, features)`` (float32).

    Frequencies are geometric from ``1`` down to ``1 / max_period``.
    """
    if features % 2:
        raise ValueError(f"features must be even, got {features}")
    half = features // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half
    )
    angles = upcast(x)[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)
