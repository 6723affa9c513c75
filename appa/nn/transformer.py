"""The latent trajectory denoiser: a diffusion transformer (DiT) over latent windows.

A backbone for :class:`appa.diffusion.EDMDenoiser`: ``forward(x, c_noise, date=None,
context=None, times=None)`` with ``x`` of shape ``(B, T, C, h, w)`` (a window of ``T`` latent
states) and ``c_noise`` ``(B,)``. Tokens are ``(frames, rows, columns)`` patches; positions enter
through rotary embeddings over (time, lat, lon), so only relative positions matter, plus a
learned latitude embedding (latitudes differ physically, times and longitudes do not). The noise
level modulates every block (adaLN-zero); per-frame date features are added to the tokens of
their frames; optional conditioning channels (static fields) are concatenated to the input.
Tokens return to their patches through a linear map, or (``head_channels``) through per-cell
channels and a 3 x 3 convolution on the latent grid that lets neighbouring tokens meet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from appa.nn.attention import LocalChunks, MultiheadSelfAttention, RotaryEmbedding3d
from appa.nn.layers import GridConv, sinusoidal_embedding
from appa.nn.presets import DenoiserConfig

__all__ = ["DiTBlock", "LatentDiT", "known_frames_input"]


def known_frames_input(mask: Tensor, frames: Tensor) -> Tensor:
    """The ``known`` input of a :class:`LatentDiT` with ``known_frames``: ``(B, T, C + 1, h, w)``
    from a ``(B, T)`` bool ``mask`` of known frames and ``frames`` ``(B, T, C, h, w)`` (their
    values where known; whatever elsewhere).

    Map 0 flags the known frames. The others carry each frame's latest known frame before it
    (persistence; zeros before the first known frame), so a network that forecasts learns a
    correction to persistence where it stands, token by token, instead of having to fetch the
    past through attention first.
    """
    if mask.shape != frames.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match frames {tuple(frames.shape)}")
    T = frames.shape[1]
    steps = torch.arange(T, device=frames.device).expand_as(mask)
    latest = torch.where(mask, steps, -1).cummax(dim=1).values  # (B, T): -1 before any
    index = latest.clamp_min(0)[:, :, None, None, None].expand_as(frames)
    values = frames.gather(1, index) * (latest >= 0)[:, :, None, None, None].to(frames.dtype)
    flag = mask.to(frames.dtype)[:, :, None, None, None]
    return torch.cat([flag.expand(*frames.shape[:2], 1, *frames.shape[3:]), values], dim=2)


def _append_maps(x: Tensor, maps: Tensor, name: str, channels: int) -> Tensor:
    """``x`` ``(B, T, C, H, W)`` with ``maps`` ``(B, T, channels, H, W)`` appended along C."""
    B, T, _, H, W = x.shape
    if maps.shape != (B, T, channels, H, W):
        raise ValueError(
            f"{name} must have shape ({B}, {T}, {channels}, {H}, {W}), got {tuple(maps.shape)}"
        )
    return torch.cat([x, maps.to(x.dtype)], dim=2)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-zero modulation from a conditioning vector.

    ``x + g1 * attn(mod(norm(x)))`` then ``x + g2 * mlp(mod(norm(x)))``, where the shifts,
    scales and gates come from a zero-initialised linear map of the conditioning, so every block
    starts as the identity.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        mod_features: int,
        ffn_factor: int = 4,
        qk_norm: bool = True,
        rope: RotaryEmbedding3d | None = None,
        math_path: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = MultiheadSelfAttention(width, heads, qk_norm, rope, math_path)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(width, ffn_factor * width),
            nn.GELU(approximate="tanh"),
            nn.Linear(ffn_factor * width, width),
        )
        self.ada = nn.Linear(mod_features, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(
        self,
        x: Tensor,
        mod: Tensor,
        coords: Tensor,
        periods: tuple[int, int, int],
        layout: Tensor | LocalChunks | None,
    ) -> Tensor:
        """``x``: ``(B, L, D)``; ``mod``: ``(B, M)`` (already passed through SiLU); ``layout``:
        None (full attention), a boolean mask or :class:`LocalChunks`."""
        s1, b1, g1, s2, b2, g2 = self.ada(mod).chunk(6, dim=-1)
        h = _modulate(self.norm1(x), b1, s1)
        if isinstance(layout, LocalChunks):
            h = self.attn(h, coords, periods, chunks=layout)
        else:
            h = self.attn(h, coords, periods, mask=layout)
        x = x + g1[:, None] * h
        return x + g2[:, None] * self.mlp(_modulate(self.norm2(x), b2, s2))


class LatentDiT(nn.Module):
    """Diffusion transformer over latent trajectory windows.

    Arguments:
        config: The :class:`~appa.nn.presets.DenoiserConfig`.
    """

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        D, M = config.width, config.mod_features
        pt, ph, pw = config.patch
        patch_numel = pt * ph * pw
        known = config.channels + 1 if config.known_frames else 0
        self.in_proj = nn.Linear(
            patch_numel * (config.channels + config.context_channels + known), D
        )
        self.date_proj = (
            nn.Linear(pt * config.date_features, D) if config.date_features > 0 else None
        )
        self.lat_features = 32
        self.lat_proj = nn.Linear(self.lat_features, D)
        self.noise_mlp = nn.Sequential(nn.Linear(M, M), nn.SiLU(), nn.Linear(M, M), nn.SiLU())
        rope = RotaryEmbedding3d(
            D // config.heads,
            base=config.rope_base,
            periodic=(False, False, config.periodic_lon),
        )
        self.blocks = nn.ModuleList(
            DiTBlock(
                D,
                config.heads,
                M,
                config.ffn_factor,
                config.qk_norm,
                rope,
                math_path=config.attention == "math",
            )
            for _ in range(config.depth)
        )
        self.out_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.out_ada = nn.Linear(M, 2 * D)
        if config.head_channels:
            # the convolution starts at zero, so the network still starts as the zero map
            self.out_proj = nn.Linear(D, patch_numel * config.head_channels)
            per = config.periodic_lon
            self.head = GridConv(config.head_channels, config.channels, 3, periodic=per)
            inputs = config.channels + config.context_channels + known
            self.skip = (
                GridConv(inputs, config.head_channels, 3, periodic=per)
                if config.head_skip
                else None
            )
            zeroed = (self.out_ada, self.head)
        else:
            self.out_proj = nn.Linear(D, patch_numel * config.channels)
            self.head = self.skip = None
            zeroed = (self.out_ada, self.out_proj)
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _coords(self, B: int, t: int, h: int, w: int, times: Tensor | None, device) -> Tensor:
        """Token coordinates ``(B or 1, t*h*w, 3)`` in token units."""
        pt = self.config.patch[0]
        if times is None:
            tc = torch.arange(t, device=device, dtype=torch.float32).expand(1, t)
        else:
            # relative to the first frame before any float32 cast: absolute hours since an
            # epoch (~1e5) would lose the sub-frame precision rotary angles need
            rel = times - times[:, :1]
            tc = rel.reshape(times.shape[0], t, pt).mean(-1).float() / pt
        hc = torch.arange(h, device=device, dtype=torch.float32)
        wc = torch.arange(w, device=device, dtype=torch.float32)
        n = tc.shape[0]
        grid = torch.stack(
            [
                tc[:, :, None, None].expand(n, t, h, w),
                hc[None, None, :, None].expand(n, t, h, w),
                wc[None, None, None, :].expand(n, t, h, w),
            ],
            dim=-1,
        )
        return grid.reshape(n, t * h * w, 3)

    def _cross_mask(self, qc: Tensor, kc: Tensor, periods: tuple[int, int, int]) -> Tensor:
        """``(..., Lq, Lk)`` local-window mask between query and key coordinates."""
        delta = (qc[..., :, None, :] - kc[..., None, :, :]).abs()  # (..., Lq, Lk, 3)
        mask = torch.ones(delta.shape[:-1], dtype=torch.bool, device=qc.device)
        for axis, half in enumerate(self.config.local_window or ()):
            if half is None:
                continue
            d = delta[..., axis]
            if axis == 2 and self.config.periodic_lon:
                d = torch.minimum(d, periods[2] - d)
            mask = mask & (d <= half + 1e-4)
        return mask

    def _layout(
        self, coords: Tensor, periods: tuple[int, int, int], ordered: bool
    ) -> Tensor | LocalChunks | None:
        """The attention restriction: None (full), a ``(n, 1, L, L)`` mask, or block-local
        chunks along time when the tokens are in time order and chunking saves work."""
        window = self.config.local_window
        if window is None or all(w is None for w in window):
            return None
        t, h, w = periods
        half_t = window[0]
        if ordered and half_t is not None:
            # smallest chunk >= the time half-width that divides t into at least 4 chunks
            for chunk in range(max(half_t, 1), t // 4 + 1):
                if t % chunk == 0:
                    s = h * w
                    local = coords[0, : chunk * s]  # times 0 .. chunk-1
                    keys = torch.cat([local - local.new_tensor([chunk, 0, 0]), local], 0)
                    keys = torch.cat([keys, local + local.new_tensor([chunk, 0, 0])], 0)
                    rel = self._cross_mask(local, keys, periods)  # (Lq, 3 Lq)
                    n = t // chunk
                    valid = torch.ones(n, 3, chunk * s, dtype=torch.bool, device=coords.device)
                    valid[0, 0] = False  # no chunk before the first
                    valid[-1, 2] = False  # nor after the last
                    return LocalChunks(chunk, s, rel[None] & valid.reshape(n, 1, -1))
        return self._cross_mask(coords, coords, periods)[:, None]  # (n, 1, L, L)

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        date: Tensor | None = None,
        context: Tensor | None = None,
        times: Tensor | None = None,
        known: Tensor | None = None,
    ) -> Tensor:
        """
        Arguments:
            x: Latent windows ``(B, T, C, h, w)``.
            c_noise: Noise conditioning ``(B,)`` (``log(sigma) / 4`` from EDM).
            date: Date features per frame ``(B, T, F)`` (see :func:`appa.dates.date_features`);
                required when ``config.date_features > 0``.
            context: Conditioning channels ``(B, Cc, h, w)`` (static) or ``(B, T, Cc, h, w)``.
                Through :class:`appa.diffusion.WindowedDenoiser`, which unfolds every tensor
                shaped ``(B, L, ...)``, pass per-frame context ``(B, L, Cc, h, w)``: a static
                ``(B, Cc, h, w)`` with ``Cc == L`` would be unfolded as if it were frames.
            times: Frame times ``(B, T)`` in frames (default ``0 .. T-1``); only differences
                matter. Lets a shuffled or gapped window keep its true temporal geometry.
            known: With ``config.known_frames``: clean known frames ``(B, T, C + 1, h, w)``,
                :func:`known_frames_input` of a ``(B, T)`` mask and the frames; None: nothing
                known (the joint prior).

        Returns:
            ``(B, T, C, h, w)``.
        """
        cfg = self.config
        if x.ndim != 5 or x.shape[2] != cfg.channels:
            raise ValueError(
                f"x must have shape (B, T, {cfg.channels}, h, w), got {tuple(x.shape)}"
            )
        B, T, _, H, W = x.shape
        pt, ph, pw = cfg.patch
        if T % pt or H % ph or W % pw:
            raise ValueError(f"window shape (T={T}, h={H}, w={W}) is not divisible by {cfg.patch}")
        if c_noise.shape != (B,):
            raise ValueError(f"c_noise must have shape ({B},), got {tuple(c_noise.shape)}")
        if cfg.context_channels:
            if context is None:
                raise ValueError(f"this denoiser needs {cfg.context_channels} context channels")
            if context.ndim == 4:
                context = context[:, None].expand(B, T, *context.shape[1:])
            x = _append_maps(x, context, "context", cfg.context_channels)
        elif context is not None:
            raise ValueError("context given but config.context_channels is 0")
        if cfg.known_frames:
            if known is None:
                known = x.new_zeros(B, T, cfg.channels + 1, H, W)
            x = _append_maps(x, known, "known", cfg.channels + 1)
        elif known is not None:
            raise ValueError("known frames given but config.known_frames is off")
        t, h, w = T // pt, H // ph, W // pw
        periods = (t, h, w)

        tokens = rearrange(
            x, "B (t pt) C (h ph) (w pw) -> B t h w (pt ph pw C)", pt=pt, ph=ph, pw=pw
        )
        tokens = self.in_proj(tokens)
        if self.date_proj is not None:
            if date is None or date.shape != (B, T, cfg.date_features):
                got = None if date is None else tuple(date.shape)
                raise ValueError(f"date must have shape ({B}, {T}, {cfg.date_features}), got {got}")
            d = self.date_proj(rearrange(date.to(tokens.dtype), "B (t pt) F -> B t (pt F)", pt=pt))
            tokens = tokens + d[:, :, None, None]
        rows = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h
        lat = sinusoidal_embedding(rows * 2 * torch.pi * 8, self.lat_features, max_period=64.0)
        tokens = tokens + self.lat_proj(lat.to(tokens.dtype))[None, None, :, None]
        tokens = tokens.reshape(B, t * h * w, -1)

        if times is not None and times.shape != (B, T):
            raise ValueError(f"times must have shape ({B}, {T}), got {tuple(times.shape)}")
        coords = self._coords(B, t, h, w, times, x.device)
        layout = self._layout(coords, periods, ordered=times is None)

        emb = sinusoidal_embedding(c_noise * 100, cfg.mod_features, max_period=100.0)
        mod = self.noise_mlp(emb.to(tokens.dtype))
        for block in self.blocks:
            if cfg.checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(
                    block, tokens, mod, coords, periods, layout, use_reentrant=False
                )
            else:
                tokens = block(tokens, mod, coords, periods, layout)

        shift, scale = self.out_ada(mod).chunk(2, dim=-1)
        tokens = self.out_proj(_modulate(self.out_norm(tokens), shift, scale))
        out = rearrange(
            tokens.reshape(B, t, h, w, -1),
            "B t h w (pt ph pw C) -> B (t pt) C (h ph) (w pw)",
            pt=pt,
            ph=ph,
            pw=pw,
        )
        if self.head is not None:
            cells = out.reshape(B * T, cfg.head_channels, H, W)
            if self.skip is not None:
                cells = cells + self.skip(x.reshape(B * T, x.shape[2], H, W))
            cells = F.silu(cells)
            out = self.head(cells).reshape(B, T, cfg.channels, H, W)
        return out
