"""Networks of the Earth-system prior: the state autoencoder, the latent trajectory
transformer, their losses and named presets from ``tiny`` (CPU) to ``paper`` scale; and a
generic image U-Net for pixel-space priors."""

from appa.nn.attention import (
    LocalChunks,
    MultiheadSelfAttention,
    RotaryEmbedding3d,
    attention,
    math_attention,
    math_attention_enabled,
)
from appa.nn.autoencoder import ResBlock, StateAutoencoder
from appa.nn.losses import WeightedMSE, ZonalSpectrumLoss, cell_area_weights, level_weights
from appa.nn.presets import (
    PRESETS,
    AutoencoderConfig,
    DenoiserConfig,
    NetworkPreset,
    get_preset,
    preset_names,
)
from appa.nn.transformer import DiTBlock, LatentDiT, known_frames_input
from appa.nn.unet import ImageUNet, UNetConfig

__all__ = [
    "PRESETS",
    "AutoencoderConfig",
    "DenoiserConfig",
    "DiTBlock",
    "ImageUNet",
    "LatentDiT",
    "LocalChunks",
    "MultiheadSelfAttention",
    "NetworkPreset",
    "ResBlock",
    "RotaryEmbedding3d",
    "StateAutoencoder",
    "UNetConfig",
    "WeightedMSE",
    "ZonalSpectrumLoss",
    "attention",
    "cell_area_weights",
    "get_preset",
    "known_frames_input",
    "level_weights",
    "math_attention",
    "math_attention_enabled",
    "preset_names",
]
