"""A generic image U-Net: a denoiser backbone ``F(x, c_noise) -> x`` for pixel-space priors.

``(B, C, H, W) -> (B, C_out, H, W)`` with ``H`` and ``W`` divisible by ``2^(levels - 1)``. Each
level has residual blocks whose group norms are modulated by the noise embedding (scale and
shift), optional self-attention, and skip connections across the bottleneck. Convolutions pad
with zeros (images, not periodic grids). The last layer starts at zero, so the backbone starts
as ``F = 0`` and an EDM denoiser around it as ``D(x_t) = c_skip x_t``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from appa.nn.layers import sinusoidal_embedding

__all__ = ["ImageUNet", "UNetConfig"]


@dataclass
class UNetConfig:
    """Shape of an :class:`ImageUNet`.

    Arguments:
        in_channels: Image channels in.
        out_channels: Image channels out (default: ``in_channels``).
        channels: Feature channels per level, finest first (one level per entry).
        blocks: Residual blocks per level on the way down (the way up has one more).
        attention: Per level, whether its blocks end with self-attention.
        embedding: Width of the noise embedding.
        groups: Group-norm groups (must divide every entry of ``channels``).
        heads: Attention heads.
        dropout: Dropout inside residual blocks.
        patch: Side of the square patches folded into channels before the first level and
            unfolded after the last (pixel unshuffle / shuffle): the levels run on an image
            ``patch`` times smaller, for a fraction of the cost.
    """

    in_channels: int = 1
    out_channels: int | None = None
    channels: Sequence[int] = field(default_factory=lambda: [32, 64, 96])
    blocks: int = 1
    attention: Sequence[bool] = field(default_factory=lambda: [False, False, True])
    embedding: int = 128
    groups: int = 8
    heads: int = 4
    dropout: float = 0.0
    patch: int = 1

    def __post_init__(self) -> None:
        self.channels = [int(c) for c in self.channels]
        self.attention = [bool(a) for a in self.attention]
        if not self.channels or self.in_channels < 1 or self.blocks < 1 or self.patch < 1:
            raise ValueError("a U-Net needs channels, in_channels, blocks and patch >= 1")
        if len(self.attention) != len(self.channels):
            raise ValueError(
                f"attention has {len(self.attention)} entries for {len(self.channels)} levels"
            )
        bad = [c for c in self.channels if c % self.groups]
        if bad:
            raise ValueError(f"groups={self.groups} must divide every channel count, not {bad}")
        if any(c % self.heads for c, a in zip(self.channels, self.attention, strict=True) if a):
            raise ValueError(f"heads={self.heads} must divide the channels of attention levels")

    def to_dict(self) -> dict:
        return asdict(self)


class _Block(nn.Module):
    """GroupNorm - SiLU - conv, GroupNorm modulated by the embedding - SiLU - conv, plus skip."""

    def __init__(self, cin: int, cout: int, emb: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.modulation = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        # residual branches start near zero: a deep stack starts near the identity
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.modulation(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Multi-head self-attention over the pixels of a level (residual, pre-norm)."""

    def __init__(self, channels: int, groups: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        self.heads = heads
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        h = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )
        return x + self.out(h.transpose(-1, -2).reshape(B, C, H, W))


class _Level(nn.Module):
    def __init__(self, blocks: list[_Block], attention: bool, channels: int, cfg: UNetConfig):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attention = nn.ModuleList(
            [_Attention(channels, cfg.groups, cfg.heads) for _ in blocks] if attention else []
        )

    def forward(self, x: Tensor, emb: Tensor, skips: list[Tensor] | None = None):
        outs = []
        for i, block in enumerate(self.blocks):
            if skips is not None:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
            if len(self.attention):
                x = self.attention[i](x)
            outs.append(x)
        return x, outs


class ImageUNet(nn.Module):
    """The U-Net backbone ``F(x, c_noise)``: ``x`` ``(B, C, H, W)``, ``c_noise`` ``(B,)`` (EDM's
    ``log(sigma) / 4``); returns ``(B, C_out, H, W)``.

    Arguments:
        config: :class:`UNetConfig` (or its fields as a dict).
    """

    def __init__(self, config: UNetConfig | dict | None = None) -> None:
        super().__init__()
        if config is None:
            config = UNetConfig()
        elif isinstance(config, dict):
            config = UNetConfig(**config)
        self.config = cfg = config
        emb = cfg.embedding
        self.embed = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = cfg.channels
        self.stem = nn.Conv2d(cfg.in_channels * cfg.patch**2, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        widths = [ch[0]]  # channels of every skip, in order
        width = ch[0]
        for i, c in enumerate(ch):
            blocks = []
            for _ in range(cfg.blocks):
                blocks.append(_Block(width, c, emb, cfg.groups, cfg.dropout))
                width = c
                widths.append(c)
            self.down.append(_Level(blocks, cfg.attention[i], c, cfg))
            if i < len(ch) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                widths.append(c)
        self.middle = _Level(
            [_Block(width, width, emb, cfg.groups, cfg.dropout) for _ in range(2)],
            True,
            width,
            cfg,
        )
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(ch))):
            c = ch[i]
            blocks = []
            for _ in range(cfg.blocks + 1):
                blocks.append(_Block(width + widths.pop(), c, emb, cfg.groups, cfg.dropout))
                width = c
            self.up.append(_Level(blocks, cfg.attention[i], c, cfg))
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.head_norm = nn.GroupNorm(cfg.groups, width)
        out = (cfg.out_channels or cfg.in_channels) * cfg.patch**2
        self.head = nn.Conv2d(width, out, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.factor = 2 ** (len(ch) - 1) * cfg.patch

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"ImageUNet expects (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(
                f"image sizes {tuple(x.shape[-2:])} must be divisible by {self.factor}"
            )
        emb = self.embed(sinusoidal_embedding(c_noise.reshape(-1), self.config.embedding))
        emb = emb.to(x.dtype)
        patch = self.config.patch
        h = self.stem(F.pixel_unshuffle(x, patch) if patch > 1 else x)
        skips = [h]
        for i, level in enumerate(self.down):
            h, outs = level(h, emb)
            skips.extend(outs)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        h, _ = self.middle(h, emb)
        for i, level in enumerate(self.up):
            h, _ = level(h, emb, skips)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.head(F.silu(self.head_norm(h)))
        return F.pixel_shuffle(out, patch) if patch > 1 else out
