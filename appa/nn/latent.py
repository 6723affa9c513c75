"""The latent denoiser as training builds it and sampling loads it: one definition of the EDM
wrapper around :class:`~appa.nn.LatentDiT` and of the per-channel latent standardisation, so a
denoiser sees at inference exactly the inputs it was trained on."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from appa.diffusion import EDMDenoiser
from appa.nn.presets import DenoiserConfig
from appa.nn.transformer import LatentDiT

__all__ = ["LatentStandardizer", "latent_denoiser"]


def latent_denoiser(
    config: DenoiserConfig, sigma_data: float = 1.0, autocast_dtype: torch.dtype | None = None
) -> EDMDenoiser:
    """``EDMDenoiser(LatentDiT(config), sigma_data)``: the denoiser over standardised latent
    windows ``(B, K, c, h, w)`` (its ``backbone`` holds the weights checkpoints save)."""
    return EDMDenoiser(LatentDiT(config), sigma_data=sigma_data, autocast_dtype=autocast_dtype)


class LatentStandardizer:
    """Per-channel standardisation of latents ``(..., c, h, w)``: ``(z - mean) / std``.

    Arguments:
        channels: Latent channels ``c``.
        mean, std: ``(c,)`` statistics, or None (no shift / no scaling).
    """

    def __init__(
        self,
        channels: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        for name, v in (("latent_mean", mean), ("latent_std", std)):
            if v is not None and len(v) != channels:
                raise ValueError(f"{name} has {len(v)} entries for {channels} latent channels")
        if std is not None and min(std) <= 0:
            raise ValueError("latent_std must be positive")
        self.channels = channels
        self.mean = None if mean is None else [float(v) for v in mean]
        self.std = None if std is None else [float(v) for v in std]
        # made once: building tensors from lists inside a sampler's inner loop (and under
        # torch.func transforms) costs more than the arithmetic
        self._tensors = {
            name: None if v is None else torch.tensor(v, dtype=torch.float64)[:, None, None]
            for name, v in (("mean", self.mean), ("std", self.std))
        }
        self._cache: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}

    def _stat(self, name: str, like: Tensor) -> Tensor | None:
        base = self._tensors[name]
        if base is None:
            return None
        key = (name, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = base.to(dtype=like.dtype, device=like.device)
        return self._cache[key]

    def _check(self, z: Tensor) -> None:
        if z.ndim < 3 or z.shape[-3] != self.channels:
            raise ValueError(f"latents must be (..., {self.channels}, h, w), got {tuple(z.shape)}")

    def standardize(self, z: Tensor) -> Tensor:
        """Raw latents (the encoder's output) to the diffusion model's space."""
        self._check(z)
        mean, std = self._stat("mean", z), self._stat("std", z)
        if mean is not None:
            z = z - mean
        if std is not None:
            z = z / std
        return z

    def unstandardize(self, u: Tensor) -> Tensor:
        """Inverse of :meth:`standardize`."""
        self._check(u)
        mean, std = self._stat("mean", u), self._stat("std", u)
        if std is not None:
            u = u * std
        if mean is not None:
            u = u + mean
        return u
