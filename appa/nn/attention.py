"""Multi-head self-attention with 3-D rotary position embeddings and QK normalisation.

Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention` so GPUs get
fused kernels. The fused kernels (flash / memory-efficient on GPU, flash on CPU) implement
neither forward-mode AD (``torch.func.jvp``) nor double backward; :func:`math_attention` (or a
model's ``attention="math"`` option) switches to a plain softmax path made of differentiable ops
that supports both, for posterior samplers that take JVPs or VJPs of VJPs through the prior.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from appa.nn.layers import upcast

__all__ = [
    "LocalChunks",
    "MultiheadSelfAttention",
    "RotaryEmbedding3d",
    "attention",
    "math_attention",
    "math_attention_enabled",
]

# A plain module global rather than a ContextVar so torch.compile can guard on it.
_FORCE_MATH = False


@contextlib.contextmanager
def math_attention(enabled: bool = True) -> Iterator[None]:
    """Within this context every :func:`attention` call uses the math path (supports
    ``torch.func.jvp`` and double backward). Process-wide, not thread-local."""
    global _FORCE_MATH
    previous = _FORCE_MATH
    _FORCE_MATH = enabled
    try:
        yield
    finally:
        _FORCE_MATH = previous


def math_attention_enabled() -> bool:
    """Whether :func:`math_attention` is active."""
    return _FORCE_MATH


def attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, math_path: bool = False
) -> Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v`` over ``(B, heads, L, d)`` tensors.

    Arguments:
        mask: Optional boolean mask broadcastable to ``(B, heads, L, L)``; ``True`` = attend.
            Every query must attend to at least one key.
        math_path: Use the math path even outside :func:`math_attention`.
    """
    if not (math_path or _FORCE_MATH):
        if q.device.type == "meta":
            return _fused_on_meta(q, k, v, mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(upcast(q), upcast(k).transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights.to(v.dtype), v)


def _fused_on_meta(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """On the meta device, SDPA would decompose into the math path and save ``L x L`` scores;
    the fused GPU kernels it stands for save only ``q, k, v``, the output and the log-sum-exp.
    Calling them directly keeps meta-device memory and FLOP estimates faithful."""
    if mask is None:
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, -1e4)
    bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True)[0]


class RotaryEmbedding3d(nn.Module):
    """Rotary position embeddings over three token axes (time, latitude, longitude).

    The ``head_dim / 2`` rotation pairs are shared out among the axes. Non-periodic axes use
    geometric frequencies ``base^(-j / n)``; the periodic (longitude) axis uses integer harmonics
    ``2 pi m / P`` of its period ``P`` in tokens, so attention is exactly equivariant to rolls
    of whole tokens along it. Only coordinate differences matter (relative encoding).

    Arguments:
        head_dim: Per-head channels (even).
        base: Longest period, in tokens, of the geometric frequencies.
        periodic: Per axis, whether it wraps around.
    """

    def __init__(
        self,
        head_dim: int,
        base: float = 100.0,
        periodic: Sequence[bool] = (False, False, True),
    ) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
        self.pairs = head_dim // 2
        self.periodic = tuple(bool(p) for p in periodic)
        per_axis = self.pairs // len(self.periodic)
        if per_axis < 1:
            raise ValueError(f"head_dim {head_dim} is too small for {len(periodic)} rotary axes")
        self.per_axis = per_axis
        self.base = float(base)

    def frequencies(self, periods: Sequence[int], device: torch.device) -> Tensor:
        """``(axes, pairs)`` angular frequencies (float32); ``periods``: tokens per axis."""
        n = self.per_axis
        freqs = torch.zeros(len(self.periodic), self.pairs, device=device)
        j = torch.arange(n, device=device, dtype=torch.float32)
        for axis, periodic in enumerate(self.periodic):
            sl = slice(axis * n, (axis + 1) * n)
            if periodic:
                P = int(periods[axis])
                top = max(P // 2, 1)
                # integer harmonics 1..P/2, geometrically spread (repeats allowed when P is small)
                m = torch.round(top ** (j / max(n - 1, 1))).clamp(1, top)
                freqs[axis, sl] = 2 * math.pi * m / P
            else:
                freqs[axis, sl] = self.base ** (-j / n)
        return freqs

    def forward(self, x: Tensor, coords: Tensor, periods: Sequence[int]) -> Tensor:
        """Rotates ``x`` ``(B, heads, L, head_dim)`` by token coordinates ``coords``
        ``(B or 1, L, axes)``; computed in float32, returned in ``x``'s dtype."""
        xf = upcast(x)
        freqs = self.frequencies(periods, x.device).to(xf.dtype)
        angles = torch.einsum("bla,ap->blp", coords.to(xf.dtype), freqs)[:, None]  # (B,1,L,P)
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = xf[..., : self.pairs], xf[..., self.pairs :]
        out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        return out.to(x.dtype)


@dataclass
class LocalChunks:
    """Block-local attention along time for time-major token sequences ``(t, s)``.

    The ``t`` time tokens are cut into chunks of ``chunk`` consecutive time tokens; each chunk's
    queries attend only to the keys of the chunk and its two neighbours (``3 x chunk`` time
    tokens) under ``mask``, so the cost is ``3 chunk / t`` of full attention. With ``chunk`` at
    least the time half-width of the local window, this is exactly the full masked attention.

    Attributes:
        chunk: Time tokens per chunk; spatial: tokens per time step.
        mask: ``(n, chunk * spatial, 3 * chunk * spatial)`` boolean, ``n = t / chunk``.
    """

    chunk: int
    spatial: int
    mask: Tensor

    def attend(self, q: Tensor, k: Tensor, v: Tensor, math_path: bool) -> Tensor:
        """``(B, heads, L, d)`` tensors with ``L = n * chunk * spatial`` -> ``(B, heads, L, d)``."""
        B, H, L, d = q.shape
        Lq = self.chunk * self.spatial
        n = L // Lq

        def chunks(x: Tensor) -> Tensor:  # (B, H, L, d) -> (B * n, H, Lq, d)
            return x.reshape(B, H, n, Lq, d).transpose(1, 2).reshape(B * n, H, Lq, d)

        def neighbours(x: Tensor) -> Tensor:  # (B, H, L, d) -> (B * n, H, 3 Lq, d)
            x = x.reshape(B, H, n, Lq, d).transpose(1, 2)
            x = F.pad(x, (0, 0, 0, 0, 0, 0, 1, 1))  # an empty chunk at each end
            x = torch.cat([x[:, :-2], x[:, 1:-1], x[:, 2:]], dim=3)
            return x.reshape(B * n, H, 3 * Lq, d)

        mask = self.mask[None, :, None].expand(B, n, 1, Lq, 3 * Lq).reshape(B * n, 1, Lq, -1)
        y = attention(chunks(q), neighbours(k), neighbours(v), mask, math_path)
        return y.reshape(B, n, H, Lq, d).transpose(1, 2).reshape(B, H, L, d)


class MultiheadSelfAttention(nn.Module):
    """Self-attention over ``(B, L, D)`` tokens with QK RMS-normalisation and 3-D RoPE.

    Arguments:
        dim: Token channels ``D``; heads: number of heads (``D % heads == 0``).
        qk_norm: Normalise queries and keys per head (learned scale), which bounds the attention
            logits and keeps bf16 training stable.
        rope: The rotary embedding, or None for none.
        math_path: Always use the math attention path.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        qk_norm: bool = True,
        rope: RotaryEmbedding3d | None = None,
        math_path: bool = False,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_scale = nn.Parameter(torch.ones(self.head_dim))
            self.k_scale = nn.Parameter(torch.ones(self.head_dim))
        self.rope = rope
        self.math_path = math_path

    @staticmethod
    def _rms(x: Tensor, scale: Tensor) -> Tensor:
        xf = upcast(x)
        return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + 1e-6) * scale).to(x.dtype)

    def forward(
        self,
        x: Tensor,
        coords: Tensor | None = None,
        periods: Sequence[int] = (),
        mask: Tensor | None = None,
        chunks: LocalChunks | None = None,
    ) -> Tensor:
        """``x``: ``(B, L, D)``; ``coords``: ``(B or 1, L, 3)`` token coordinates for RoPE;
        ``mask``: boolean, broadcastable to ``(B, heads, L, L)``; ``chunks``: block-local
        attention instead (then ``mask`` is ignored)."""
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.qk_norm:
            q, k = self._rms(q, self.q_scale), self._rms(k, self.k_scale)
        if self.rope is not None:
            if coords is None:
                raise ValueError("rotary embeddings need token coordinates")
            q, k = self.rope(q, coords, periods), self.rope(k, coords, periods)
        if chunks is not None:
            y = chunks.attend(q, k, v, self.math_path)
        else:
            y = attention(q, k, v, mask, math_path=self.math_path)
        return self.out(y.transpose(1, 2).reshape(B, L, D))
