"""Small networks for low-dimensional problems: MLPs, residual MLPs and 1-D convolutional
embeddings for spectra. They serve as embedding nets and as denoiser backbones in ``appa.npe``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP", "Conv1dEmbedding", "ResMLP", "ResidualBlock", "TimeConditionedMLP"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    """An activation module by name (``relu``, ``silu``, ``gelu``, ``elu``, ``tanh``)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}"
        ) from None


class MLP(nn.Sequential):
    """A multi-layer perceptron ``(B, in_features) -> (B, out_features)``.

    Arguments:
        in_features: Input width.
        out_features: Output width.
        hidden_features: Widths of the hidden layers (may be empty: a linear map).
        activation_name: Name of the activation between layers.
        layer_norm: Layer normalisation after each hidden linear layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: Sequence[int] = (64, 64),
        activation_name: str = "silu",
        layer_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_features:
            layers.append(nn.Linear(width, hidden))
            if layer_norm:
                layers.append(nn.LayerNorm(hidden))
            layers.append(activation(activation_name))
            width = hidden
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features


class ResidualBlock(nn.Module):
    """``x + W2 act(W1 LN(x))``, width preserved; the last layer starts at zero so the block
    begins as the identity (stable deep stacks)."""

    def __init__(self, features: int, activation_name: str = "silu", dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(features)
        self.net = nn.Sequential(
            nn.Linear(features, features),
            activation(activation_name),
            nn.Dropout(dropout),
            nn.Linear(features, features),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(self.norm(x))


class ResMLP(nn.Module):
    """Residual MLP ``(B, in_features) -> (B, out_features)``: a linear lift to ``width``,
    ``blocks`` residual blocks, a normalised linear head."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: int = 128,
        blocks: int = 3,
        activation_name: str = "silu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.lift = nn.Linear(in_features, width)
        self.blocks = nn.Sequential(
            *[ResidualBlock(width, activation_name, dropout) for _ in range(blocks)]
        )
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_features))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.lift(x)))


class Conv1dEmbedding(nn.Module):
    """Embedding of 1-D signals (spectra) ``(B, length)`` or ``(B, channels, length)`` into
    ``(B, out_features)``: strided convolutions (each halves the length), global average and max
    pooling, then a linear head.

    Arguments:
        length: Number of samples along the signal (wavelength bins).
        out_features: Embedding width.
        channels: Channel counts of the convolution stages.
        in_channels: Input channels (1 for a bare spectrum; 2 for flux and its error, say).
        kernel_size: Convolution kernel size (odd).
    """

    def __init__(
        self,
        length: int,
        out_features: int = 32,
        channels: Sequence[int] = (16, 32, 64),
        in_channels: int = 1,
        kernel_size: int = 5,
        activation_name: str = "silu",
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.length = length
        self.in_channels = in_channels
        self.out_features = out_features
        layers: list[nn.Module] = []
        width = in_channels
        for c in channels:
            layers += [
                nn.Conv1d(width, c, kernel_size, stride=2, padding=kernel_size // 2),
                activation(activation_name),
            ]
            width = c
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(2 * width, out_features))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            x = x.unsqueeze(1)
        if x.ndim != 3 or x.shape[1] != self.in_channels or x.shape[2] != self.length:
            raise ValueError(
                f"Conv1dEmbedding expects (B, {self.length}) or (B, {self.in_channels}, "
                f"{self.length}), got {tuple(x.shape)}"
            )
        h = self.convs(x)
        return self.head(torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=-1))


class TimeConditionedMLP(nn.Module):
    """Denoiser backbone ``F(x, c_noise, context) -> (B, features)`` for low-dimensional ``x``:
    ``x``, a sinusoidal embedding of ``c_noise`` and a context vector are concatenated and passed
    through a residual MLP.

    Arguments:
        features: Dimension of ``x``.
        context_features: Dimension of the context (0: unconditional).
        width: Width of the residual MLP.
        blocks: Number of residual blocks.
        noise_embedding: Size of the sinusoidal noise-level embedding (even).
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        width: int = 128,
        blocks: int = 3,
        noise_embedding: int = 16,
        activation_name: str = "silu",
    ) -> None:
        super().__init__()
        if noise_embedding % 2:
            raise ValueError(f"noise_embedding must be even, got {noise_embedding}")
        self.features = features
        self.context_features = context_features
        self.register_buffer(
            "frequencies",
            torch.exp(torch.linspace(0.0, 4.0, noise_embedding // 2)),
            persistent=False,
        )
        self.net = ResMLP(
            features + noise_embedding + context_features, features, width, blocks, activation_name
        )

    def forward(self, x: Tensor, c_noise: Tensor, context: Tensor | None = None) -> Tensor:
        angles = c_noise.reshape(-1, 1).to(x.dtype) * self.frequencies.to(x.dtype)
        parts = [x, angles.sin(), angles.cos()]
        if self.context_features:
            if context is None or context.shape != (x.shape[0], self.context_features):
                got = None if context is None else tuple(context.shape)
                raise ValueError(
                    f"context of shape ({x.shape[0]}, {self.context_features}) needed, got {got}"
                )
            parts.append(context.to(x.dtype))
        return self.net(torch.cat(parts, dim=-1))
