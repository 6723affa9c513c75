"""The state autoencoder: a convolutional ResNet between atmospheric states ``(C, lat, lon)``
and soft-clipped latents ``(latent_channels, h, w)``.

Stages of residual blocks (norm, conv, SiLU, conv; the last conv initialised small), pixel
(un)shuffle between stages, circular padding in longitude. Latitude sizes that do not divide the
downsampling factor (721 rows at 0.25 deg) are padded explicitly before encoding and cropped
after decoding; with ``lon_margin=0`` and a longitude count divisible by the factor, a roll by
the factor in longitude commutes with encoding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from appa.nn.layers import ChannelNorm, GridConv, pole_pad, saturate, upcast
from appa.nn.presets import AutoencoderConfig

__all__ = ["ResBlock", "StateAutoencoder"]


class ResBlock(nn.Module):
    """``x + conv(SiLU(conv(norm(x))))``, the last conv initialised at 1 % scale."""

    def __init__(self, channels: int, kernel_size: int = 3, checkpointing: bool = False) -> None:
        super().__init__()
        self.norm = ChannelNorm(channels)
        self.conv1 = GridConv(channels, channels, kernel_size)
        self.conv2 = GridConv(channels, channels, kernel_size, init_scale=1e-2)
        self.checkpointing = checkpointing

    def _branch(self, x: Tensor) -> Tensor:
        return self.conv2(F.silu(self.conv1(self.norm(x))))

    def forward(self, x: Tensor) -> Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return x + checkpoint(self._branch, x, use_reentrant=False)
        return x + self._branch(x)


class _Down(nn.Module):
    """Pixel-unshuffle by ``r`` then a conv to the next stage's channels."""

    def __init__(self, cin: int, cout: int, kernel_size: int, r: int) -> None:
        super().__init__()
        self.r = r
        self.conv = GridConv(r * r * cin, cout, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pixel_unshuffle(x, self.r))


class _Up(nn.Module):
    """A conv to ``r^2`` times the previous stage's channels, then pixel-shuffle by ``r``."""

    def __init__(self, cin: int, cout: int, kernel_size: int, r: int) -> None:
        super().__init__()
        self.r = r
        self.conv = GridConv(cin, r * r * cout, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(x), self.r)


class StateAutoencoder(nn.Module):
    """Encoder/decoder between states ``(..., C, H, W)`` and latents ``(..., c, h, w)``.

    Leading dimensions (batch, time) are flattened for the convolutions and restored.

    Arguments:
        config: The :class:`~appa.nn.presets.AutoencoderConfig`.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        k, ch, nb = config.kernel_size, config.channels, config.blocks
        ckpt = config.checkpointing

        enc: list[nn.Module] = [GridConv(config.in_channels, ch[0], k)]
        for i, (c, n) in enumerate(zip(ch, nb, strict=True)):
            if i > 0:
                enc.append(_Down(ch[i - 1], c, k, config.stride))
            enc.extend(ResBlock(c, k, ckpt) for _ in range(n))
        enc += [ChannelNorm(ch[-1]), GridConv(ch[-1], config.latent_channels, k)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [GridConv(config.latent_channels, ch[-1], k)]
        for i in reversed(range(len(ch))):
            dec.extend(ResBlock(ch[i], k, ckpt) for _ in range(nb[i]))
            if i > 0:
                dec.append(_Up(ch[i], ch[i - 1], k, config.stride))
        dec += [ChannelNorm(ch[0]), GridConv(ch[0], config.in_channels, k)]
        self.decoder = nn.Sequential(*dec)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(latent_channels, h, w)``."""
        return self.config.latent_shape

    def _check(self, x: Tensor, shape: tuple[int, ...], what: str) -> None:
        if x.ndim < 4 or tuple(x.shape[-3:]) != tuple(shape):
            raise ValueError(
                f"{what} must have shape (B, ..., {', '.join(map(str, shape))}), "
                f"got {tuple(x.shape)}"
            )

    def pad(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, C, H', W')`` with ``H', W'`` multiples of the factor."""
        top, bottom, left, right = self.config.padding
        # over the pole first: the half-turn is a half-turn of the true (periodic) longitudes
        x = pole_pad(x, top, bottom, self.config.lat_padding)
        if left or right:
            x = F.pad(x, (left, right, 0, 0), mode="circular")
        return x

    def crop(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`pad` on the grid axes."""
        top, _, left, _ = self.config.padding
        H, W = self.config.grid
        return x[..., top : top + H, left : left + W]

    def encode(self, x: Tensor) -> Tensor:
        """States ``(..., C, H, W)`` (standardised) to latents ``(..., c, h, w)`` in
        ``(-bound, bound)``."""
        cfg = self.config
        self._check(x, (cfg.in_channels, *cfg.grid), "state")
        lead = x.shape[:-3]
        z = self.encoder(self.pad(x.reshape(-1, *x.shape[-3:])))
        z = saturate(upcast(z), cfg.saturation, cfg.saturation_bound).to(z.dtype)
        return z.reshape(*lead, *z.shape[1:])

    def decode(self, z: Tensor, noise: bool | None = None) -> Tensor:
        """Latents ``(..., c, h, w)`` to states ``(..., C, H, W)``.

        Arguments:
            noise: Add Gaussian noise of std ``latent_noise`` to the latents first, which makes
                the decoder robust to imperfect latents from the diffusion prior. Defaults to
                ``self.training``.
        """
        self._check(z, self.latent_shape, "latent")
        if noise is None:
            noise = self.training
        if noise and self.config.latent_noise > 0:
            z = z + self.config.latent_noise * torch.randn_like(z)
        lead = z.shape[:-3]
        x = self.crop(self.decoder(z.reshape(-1, *z.shape[-3:])))
        return x.reshape(*lead, *x.shape[1:])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, decode(z))`` with ``z = encode(x)``."""
        z = self.encode(x)
        return z, self.decode(z)
