"""Small synthetic data and tasks shared by the training tests (no data layer, no files)."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from appa.nn import get_preset
from appa.training.objectives import (
    AutoencoderLossConfig,
    AutoencoderObjective,
    DiffusionObjective,
    DiffusionObjectiveConfig,
)


def smooth_fields(n: int, channels: int, grid: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """``(n, C, H, W)`` smooth periodic-in-longitude fields: random low-order Fourier modes with
    a slow drift along the first axis (so consecutive items look like a trajectory)."""
    g = torch.Generator().manual_seed(seed)
    H, W = grid
    lat = torch.linspace(-math.pi / 2, math.pi / 2, H)[:, None]
    lon = torch.linspace(0, 2 * math.pi, W + 1)[:-1][None, :]
    t = torch.arange(n, dtype=torch.float32)[:, None, None, None]
    out = torch.zeros(n, channels, H, W)
    for k in range(1, 4):
        for m in range(0, 3):
            amp = torch.randn(1, channels, 1, 1, generator=g) / (k + m)
            phase = 2 * math.pi * torch.rand(1, channels, 1, 1, generator=g)
            speed = 0.1 * torch.randn(1, channels, 1, 1, generator=g)
            out += amp * torch.cos(k * lon + phase + speed * t) * torch.cos((m + 0.5) * lat)
    return (out - out.mean()) / out.std()


class Windows(Dataset):
    """Windows of ``K`` consecutive items of a trajectory tensor ``(N, C, H, W)``, as the data
    layer yields them: ``{key: (K, C, H, W), "date": (K, 4)}``."""

    def __init__(self, series: torch.Tensor, window: int, key: str = "state") -> None:
        self.series, self.window, self.key = series, window, key
        hours = torch.arange(series.shape[0], dtype=torch.float64) * 6
        self.date = torch.stack(
            [
                torch.sin(2 * math.pi * hours / 8766),
                torch.cos(2 * math.pi * hours / 8766),
                torch.sin(2 * math.pi * hours / 24),
                torch.cos(2 * math.pi * hours / 24),
            ],
            -1,
        ).float()

    def __len__(self) -> int:
        return self.series.shape[0] - self.window + 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = slice(i, i + self.window)
        return {self.key: self.series[s], "date": self.date[s]}


def tiny_autoencoder_objective(latent_noise: float = 0.0) -> AutoencoderObjective:
    """The tiny preset's autoencoder, slimmed (2 input channels, 8 x 16 grid) for speed."""
    preset = get_preset(
        "tiny",
        [
            "autoencoder.in_channels=2",
            "autoencoder.grid=[8,16]",
            "autoencoder.channels=[8,16]",
            "autoencoder.blocks=[1,1]",
            "autoencoder.latent_channels=4",
            f"autoencoder.latent_noise={latent_noise}",
            "denoiser.channels=4",
        ],
    )
    lat = torch.linspace(-78.75, 78.75, 8).tolist()
    loss = AutoencoderLossConfig(channel_weights=[1.0, 0.5])
    return AutoencoderObjective(preset.autoencoder, lat, loss, channel_names=["a", "b"])


def tiny_diffusion_objective() -> DiffusionObjective:
    preset = get_preset(
        "tiny",
        [
            "denoiser.channels=4",
            "denoiser.width=24",
            "denoiser.heads=2",
            "denoiser.depth=1",
            "denoiser.mod_features=16",
            "denoiser.window=4",
            "autoencoder.latent_channels=4",
        ],
    )
    settings = DiffusionObjectiveConfig(val_sigmas=3)
    return DiffusionObjective(
        preset.denoiser, settings, latent_mean=[0.0] * 4, latent_std=[1.0] * 4
    )
