"""The state autoencoder: a convolutional ResNet between atmospheric states ``(C, lat, lon)``
and soft-clipped latents ``(latent_channels, h, w)``.

Stages of residual blocks (norm, conv, SiLU, conv; the last conv initialised small), pixel
(un)shuffle between stages, circular padding in longitude (zeros on a regional grid,
``periodic_lon=False``). Latitude sizes that do not divide the
downsampling factor (721 rows at 0.25 deg) are padded explicitly before encoding and cropped
after decoding; with ``lon_margin=0`` and a longitude count divisible by the factor, a roll by
the factor in longitude commutes with encoding.

With context (``static_channels``, ``date_context``), context maps ``(K, lat, lon)`` (static
fields held as a buffer, saved with the weights, and the date's year phase and local solar time)
enter the encoder's first convolution beside the state and are added, area-pooled to each
stage's grid and passed through a small per-cell MLP, at the start of every decoder stage.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from appa.nn.layers import BandLimit, ChannelNorm, GridConv, pole_pad, saturate, upcast
from appa.nn.presets import AutoencoderConfig

__all__ = ["ResBlock", "StateAutoencoder"]


class ResBlock(nn.Module):
    """``x + conv(SiLU(conv(norm(x))))``, the last conv initialised at 1 % scale."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        checkpointing: bool = False,
        periodic: bool = True,
    ) -> None:
        super().__init__()
        self.norm = ChannelNorm(channels)
        self.conv1 = GridConv(channels, channels, kernel_size, periodic=periodic)
        self.conv2 = GridConv(channels, channels, kernel_size, init_scale=1e-2, periodic=periodic)
        self.checkpointing = checkpointing

    def _branch(self, x: Tensor) -> Tensor:
        return self.conv2(F.silu(self.conv1(self.norm(x))))

    def forward(self, x: Tensor) -> Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return x + checkpoint(self._branch, x, use_reentrant=False)
        return x + self._branch(x)


class _Down(nn.Module):
    """Pixel-unshuffle by ``r`` then a conv to the next stage's channels."""

    def __init__(self, cin: int, cout: int, kernel_size: int, r: int, periodic: bool) -> None:
        super().__init__()
        self.r = r
        self.conv = GridConv(r * r * cin, cout, kernel_size, periodic=periodic)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pixel_unshuffle(x, self.r))


class _Up(nn.Module):
    """A conv to ``r^2`` times the previous stage's channels, then pixel-shuffle by ``r``."""

    def __init__(self, cin: int, cout: int, kernel_size: int, r: int, periodic: bool) -> None:
        super().__init__()
        self.r = r
        self.conv = GridConv(cin, r * r * cout, kernel_size, periodic=periodic)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(x), self.r)


class _ContextEmbedding(nn.Module):
    """Per-cell MLP of context maps ``(N, K, h, w) -> (N, channels, h, w)``, output zero at
    initialisation (a conditioned network starts as the unconditioned one)."""

    def __init__(self, context: int, channels: int) -> None:
        super().__init__()
        self.hidden = nn.Conv2d(context, channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, c: Tensor) -> Tensor:
        return self.out(F.silu(self.hidden(c)))


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
        ckpt, per = config.checkpointing, config.periodic_lon

        enc: list[nn.Module] = [GridConv(config.in_channels, ch[0], k, periodic=per)]
        for i, (c, n) in enumerate(zip(ch, nb, strict=True)):
            if i > 0:
                enc.append(_Down(ch[i - 1], c, k, config.stride, per))
            enc.extend(ResBlock(c, k, ckpt, per) for _ in range(n))
        enc += [ChannelNorm(ch[-1]), GridConv(ch[-1], config.latent_channels, k, periodic=per)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [GridConv(config.latent_channels, ch[-1], k, periodic=per)]
        self._stage_at: dict[int, int] = {}  # index of a stage's first decoder module -> stage
        for i in reversed(range(len(ch))):
            self._stage_at[len(dec)] = i
            dec.extend(ResBlock(ch[i], k, ckpt, per) for _ in range(nb[i]))
            if i > 0:
                dec.append(_Up(ch[i], ch[i - 1], k, config.stride, per))
        dec += [ChannelNorm(ch[0]), GridConv(ch[0], config.in_channels, k, periodic=per)]
        self.decoder = nn.Sequential(*dec)

        K = config.context_channels
        if K:
            # the context's first conv, added to the state's: a conv of both concatenated
            self.encoder_context = GridConv(K, ch[0], k, periodic=per)
            self.decoder_context = nn.ModuleList(_ContextEmbedding(K, c) for c in ch)
        if config.static_channels:
            self.register_buffer("static", torch.zeros(config.static_channels, *config.grid))
        self.band_limit = (
            BandLimit(config.band_limit, config.band_limited, config.grid[0])
            if config.band_limit is not None
            else None
        )
        if config.date_context:
            angle = torch.arange(config.grid[1], dtype=torch.float64) * 2 * math.pi
            angle = angle / config.grid[1]
            self.register_buffer(
                "lon_phase", torch.stack([angle.cos(), angle.sin()]).float(), persistent=False
            )

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

    def set_static(self, fields: Tensor) -> None:
        """Stores the static context fields ``(static_channels, H, W)`` (standardised, finite)
        that every encoding and decoding sees; they are saved with the weights."""
        shape = (self.config.static_channels, *self.config.grid)
        if not self.config.static_channels:
            raise ValueError("this autoencoder takes no static fields (static_channels=0)")
        if tuple(fields.shape) != shape:
            raise ValueError(f"static fields must have shape {shape}, got {tuple(fields.shape)}")
        if not torch.isfinite(fields).all():
            raise ValueError("static fields hold NaN or infinite values")
        self.static.copy_(fields)

    def set_band_limit(self, matrices: Tensor) -> None:
        """Stores the band-limit projections ``(T + 1, lat, lat)`` of the grid (see
        :class:`~appa.nn.layers.BandLimit`); saved with the weights."""
        if self.band_limit is None:
            raise ValueError("this autoencoder has no band limit (band_limit=None)")
        self.band_limit.set(matrices)

    def context(self, date: Tensor | None, count: int) -> Tensor | None:
        """Context maps ``(count, K, H, W)`` for ``count`` states with date features ``date``
        (``(count, 4)``, :func:`appa.dates.date_features`; needed with ``date_context``)."""
        cfg = self.config
        if not cfg.context_channels:
            return None
        H, W = cfg.grid
        maps = []
        if cfg.static_channels:
            maps.append(self.static[None].expand(count, -1, -1, -1))
        if cfg.date_context:
            if date is None:
                raise ValueError("this autoencoder is conditioned on dates: pass date features")
            if tuple(date.shape) != (count, 4):
                raise ValueError(f"date must have shape ({count}, 4), got {tuple(date.shape)}")
            date = date.to(self.lon_phase)
            year = date[:, :2, None, None].expand(-1, -1, H, W)
            # local solar time: the UTC hour's phase turned by each longitude's
            s, c = date[:, 2, None], date[:, 3, None]
            cos_l, sin_l = self.lon_phase
            local = torch.stack([s * cos_l + c * sin_l, c * cos_l - s * sin_l], dim=1)
            maps += [year, local[:, :, None, :].expand(-1, -1, H, -1)]
        return torch.cat(maps, dim=1)

    def pad(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, C, H', W')`` with ``H', W'`` multiples of the factor."""
        top, bottom, left, right = self.config.padding
        # over the pole first: the half-turn is a half-turn of the true (periodic) longitudes
        x = pole_pad(x, top, bottom, self.config.lat_padding)
        if left or right:
            x = F.pad(
                x, (left, right, 0, 0), mode="circular" if self.config.periodic_lon else "constant"
            )
        return x

    def crop(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`pad` on the grid axes."""
        top, _, left, _ = self.config.padding
        H, W = self.config.grid
        return x[..., top : top + H, left : left + W]

    def encode(self, x: Tensor, date: Tensor | None = None) -> Tensor:
        """States ``(..., C, H, W)`` (standardised) to latents ``(..., c, h, w)`` in
        ``(-bound, bound)``. ``date``: ``(..., 4)`` date features of the states (needed with
        ``date_context``)."""
        cfg = self.config
        self._check(x, (cfg.in_channels, *cfg.grid), "state")
        lead = x.shape[:-3]
        flat = self.pad(x.reshape(-1, *x.shape[-3:]))
        context = self.context(_flat_date(date, lead), flat.shape[0])
        if context is None:
            z = self.encoder(flat)
        else:
            first = self.encoder[0](flat) + self.encoder_context(self.pad(context).to(flat))
            z = self.encoder[1:](first)
        z = saturate(upcast(z), cfg.saturation, cfg.saturation_bound).to(z.dtype)
        return z.reshape(*lead, *z.shape[1:])

    def decode(self, z: Tensor, date: Tensor | None = None, noise: bool | None = None) -> Tensor:
        """Latents ``(..., c, h, w)`` to states ``(..., C, H, W)``.

        Arguments:
            date: ``(..., 4)`` date features of the states (needed with ``date_context``).
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
        h = z.reshape(-1, *z.shape[-3:])
        context = self.context(_flat_date(date, lead), h.shape[0])
        if context is None:
            h = self.decoder(h)
        else:
            context = self.pad(context).to(h)
            for index, module in enumerate(self.decoder):
                stage = self._stage_at.get(index)
                if stage is not None:
                    factor = self.config.stride**stage
                    pooled = F.avg_pool2d(context, factor) if factor > 1 else context
                    h = h + self.decoder_context[stage](pooled)
                h = module(h)
        x = self.crop(h)
        if self.band_limit is not None:
            x = self.band_limit(x)
        return x.reshape(*lead, *x.shape[1:])

    def forward(self, x: Tensor, date: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(z, decode(z))`` with ``z = encode(x)``."""
        z = self.encode(x, date)
        return z, self.decode(z, date)


def _flat_date(date: Tensor | None, lead: torch.Size) -> Tensor | None:
    if date is None:
        return None
    if tuple(date.shape[:-1]) != tuple(lead):
        raise ValueError(
            f"date features must have shape ({', '.join(map(str, lead))}, 4), "
            f"got {tuple(date.shape)}"
        )
    return date.reshape(-1, date.shape[-1])
