"""Typed network configurations and the named presets, from ``tiny`` (CPU tests) to ``paper``.

A preset is a :class:`NetworkPreset`: one :class:`AutoencoderConfig` and one
:class:`DenoiserConfig` whose latent channels agree. Training configs refer to a preset by name
and override fields with the usual ``key.sub=value`` strings::

    preset = get_preset("small", ["denoiser.depth=12", "autoencoder.latent_noise=0.05"])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

from pydantic import Field, ValidationError, model_serializer, model_validator

from appa.config import ConfigError, StrictModel, apply_overrides

__all__ = [
    "PRESETS",
    "AutoencoderConfig",
    "DenoiserConfig",
    "NetworkPreset",
    "get_preset",
    "preset_names",
]


class AutoencoderConfig(StrictModel):
    """The state autoencoder: ``(C, lat, lon)`` states to ``(latent_channels, h, w)`` latents.

    Each stage after the first divides both grid axes by ``stride`` (pixel-unshuffle), so the
    downsampling factor is ``stride ** (len(channels) - 1)``. Latitude is padded up to a
    multiple of the factor and cropped back on decoding (``lat_padding``: ``zeros``, or the field
    continued over the pole: ``pole`` for grids whose edge rows lie on the poles, ``pole-half``
    for grids whose edge rows lie half a cell from them; see :func:`appa.nn.layers.pole_pad`).
    Longitude is padded circularly to a multiple of the factor plus ``lon_margin`` latent
    columns on each side (0 keeps the latent exactly periodic in longitude). A regional grid
    (a sea's box, ``periodic_lon=False``) is not periodic: every convolution pads its longitude
    with zeros instead, so its east and west edges do not see each other; it needs
    ``lat_padding: zeros`` and no ``date_context`` (whose local solar time assumes longitudes
    around the globe).

    Context (as Appa's autoencoder has it): ``static_channels`` fixed fields (land-sea mask,
    orography, ...) stored with the weights, and with ``date_context`` the date of each state
    (year phase and local solar time per longitude), both fed to the encoder's input and added
    at every decoder stage. Known forcings, such as the diurnal cycle over land, then need not
    be carried by the latent.

    ``band_limit`` (a triangular truncation ``T``) projects the decoded ``band_limited``
    channels onto the spherical harmonics of degree and order up to ``T``, for fields that a
    spectral model wrote (ERA5's upper air at T639, the toy Earth's at T21): the decoder then
    cannot put power where such data have none. The projection (``T + 1`` matrices of
    ``lat x lat``) is a buffer of the weights, set from the grid's latitudes by the training
    task (:meth:`StateAutoencoder.set_band_limit`); it suits small grids (at T639 on 721
    latitudes it would hold 1.3 GB).
    """

    in_channels: int = Field(71, gt=0)
    grid: tuple[int, int] = (721, 1440)
    channels: list[int] = Field(default_factory=lambda: [64, 128, 256, 512, 768, 1024])
    blocks: list[int] = Field(default_factory=lambda: [3, 3, 3, 3, 3, 3])
    latent_channels: int = Field(128, gt=0)
    stride: int = Field(2, ge=2)
    kernel_size: int = Field(3, gt=0)
    lat_padding: Literal["zeros", "pole", "pole-half"] = "pole"
    lon_margin: int = Field(0, ge=0)
    periodic_lon: bool = True
    saturation: Literal["softclip", "softclip2", "tanh", "none"] = "softclip2"
    saturation_bound: float = Field(5.0, gt=0)
    latent_noise: float = Field(0.0, ge=0)
    static_channels: int = Field(0, ge=0)
    date_context: bool = False
    checkpointing: bool = False
    band_limit: int | None = Field(None, ge=1)
    band_limited: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> AutoencoderConfig:
        if not self.channels:
            raise ValueError("channels must list at least one stage")
        if len(self.channels) != len(self.blocks):
            raise ValueError(
                f"channels ({len(self.channels)} stages) and blocks ({len(self.blocks)} stages) "
                "must have the same length"
            )
        if any(c <= 0 for c in self.channels) or any(b < 0 for b in self.blocks):
            raise ValueError("channels must be positive and blocks non-negative")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if min(self.grid) <= 0:
            raise ValueError(f"grid must be positive, got {self.grid}")
        if (self.band_limit is None) != (not self.band_limited):
            raise ValueError("band_limit and band_limited go together (a truncation, channels)")
        bad = [c for c in self.band_limited if not 0 <= c < self.in_channels]
        if bad or len(set(self.band_limited)) != len(self.band_limited):
            raise ValueError(
                f"band_limited must list distinct channel indices below in_channels="
                f"{self.in_channels}, got {self.band_limited}"
            )
        if self.band_limit is not None and (
            self.band_limit > self.grid[1] // 2 or self.band_limit >= self.grid[0]
        ):
            raise ValueError(
                f"band_limit T{self.band_limit} exceeds what the {self.grid[0]} x {self.grid[1]} "
                "grid resolves (at most lon // 2 and fewer than lat)"
            )
        if not self.periodic_lon and (self.lat_padding != "zeros" or self.date_context):
            raise ValueError(
                "a regional grid (periodic_lon=false) needs lat_padding='zeros' (no pole to "
                "pad over) and date_context=false (local solar time assumes a global grid)"
            )
        if self.lat_padding != "zeros" and self.grid[1] % 2:
            raise ValueError(f"lat_padding={self.lat_padding!r} needs an even number of longitudes")
        return self

    @model_serializer(mode="wrap")
    def _drop_periodic(self, handler):
        # a global grid's config is dumped as it was before regional grids (checkpoint cards
        # and the settings a run resumes with compare these documents)
        data = handler(self)
        if self.periodic_lon and isinstance(data, dict):
            data.pop("periodic_lon", None)
        return data

    @property
    def factor(self) -> int:
        """Downsampling factor of each grid axis."""
        return self.stride ** (len(self.channels) - 1)

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` rows/columns added before encoding."""
        H, W = self.grid
        f = self.factor
        dh = -H % f
        dw = -W % f + 2 * self.lon_margin * f
        return dh // 2, dh - dh // 2, dw // 2, dw - dw // 2

    @property
    def context_channels(self) -> int:
        """Context maps per state: static fields, then 4 date maps with ``date_context``."""
        return self.static_channels + (4 if self.date_context else 0)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(latent_channels, h, w)``."""
        top, bottom, left, right = self.padding
        H, W = self.grid
        f = self.factor
        return self.latent_channels, (H + top + bottom) // f, (W + left + right) // f

    @property
    def compression(self) -> float:
        """Numbers in a state over numbers in its latent."""
        c, h, w = self.latent_shape
        return self.in_channels * self.grid[0] * self.grid[1] / (c * h * w)


class DenoiserConfig(StrictModel):
    """The latent trajectory transformer over windows ``(T, C, h, w)``.

    Tokens are patches of ``patch = (frames, rows, columns)``. ``local_window`` optionally limits
    attention to tokens within that many tokens along (time, lat, lon) (None on an axis: no
    limit); ``attention="math"`` always uses the math attention path (JVP, double backward).
    ``known_frames`` adds an input of clean frames that are known (``channels + 1`` maps per
    frame: a known-flag map and the frame's latent, or where unknown the latest known frame's),
    so one network is both the joint prior (nothing known: zeros) and a conditional one (e.g. a
    forecast from past states). ``head_channels > 0`` maps each token to that many channels per
    latent cell of its patch, then a 3 x 3 convolution on the latent grid (circular in longitude)
    forms the output (padded with zeros in longitude when not ``periodic_lon``), so
    neighbouring tokens shape each other's edge cells; 0 maps tokens
    linearly to their own cells only. ``head_skip`` adds a 3 x 3 convolution of the input cells
    (the noisy latents and any context) to the head's channels: a full-resolution path past the
    tokens, which only see their own cells.
    """

    channels: int = Field(128, gt=0)
    window: int = Field(24, gt=0)
    width: int = Field(1024, gt=0)
    depth: int = Field(16, gt=0)
    heads: int = Field(8, gt=0)
    ffn_factor: int = Field(4, gt=0)
    mod_features: int = Field(256, gt=0)
    patch: tuple[int, int, int] = (2, 1, 1)
    date_features: int = Field(4, ge=0)
    context_channels: int = Field(0, ge=0)
    known_frames: bool = False
    qk_norm: bool = True
    rope_base: float = Field(100.0, gt=1)
    periodic_lon: bool = True
    local_window: tuple[int | None, int | None, int | None] | None = None
    attention: Literal["sdpa", "math"] = "sdpa"
    checkpointing: bool = False
    head_channels: int = Field(0, ge=0)
    head_skip: bool = False

    @model_validator(mode="after")
    def _check(self) -> DenoiserConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        head_dim = self.width // self.heads
        if head_dim % 2 or head_dim // 2 < 3:
            raise ValueError(f"head dimension {head_dim} must be even and at least 6 (3-D RoPE)")
        if self.mod_features % 2:
            raise ValueError(f"mod_features must be even, got {self.mod_features}")
        if self.head_skip and not self.head_channels:
            raise ValueError("head_skip needs a convolution head (head_channels > 0)")
        if min(self.patch) <= 0:
            raise ValueError(f"patch sizes must be positive, got {self.patch}")
        if self.window % self.patch[0]:
            raise ValueError(f"window {self.window} is not divisible by patch[0]={self.patch[0]}")
        if self.local_window is not None and any(
            w is not None and w < 0 for w in self.local_window
        ):
            raise ValueError(f"local_window entries must be >= 0, got {self.local_window}")
        return self

    def tokens(self, latent_grid: tuple[int, int]) -> int:
        """Tokens per window for a latent grid ``(h, w)``."""
        pt, ph, pw = self.patch
        h, w = latent_grid
        return (self.window // pt) * (h // ph) * (w // pw)


class NetworkPreset(StrictModel):
    """An autoencoder and a latent denoiser that fit together."""

    description: str = ""
    autoencoder: AutoencoderConfig
    denoiser: DenoiserConfig

    @model_validator(mode="after")
    def _check(self) -> NetworkPreset:
        c, h, w = self.autoencoder.latent_shape
        if self.denoiser.channels != c:
            raise ValueError(
                f"denoiser.channels={self.denoiser.channels} must equal "
                f"autoencoder.latent_channels={c}"
            )
        _, ph, pw = self.denoiser.patch
        if h % ph or w % pw:
            raise ValueError(
                f"latent grid {h}x{w} is not divisible by the denoiser patch {ph}x{pw}"
            )
        if self.denoiser.periodic_lon and not self.autoencoder.periodic_lon:
            raise ValueError(
                "denoiser.periodic_lon needs a periodic autoencoder (the latent of a regional "
                "grid, autoencoder.periodic_lon=false, is not periodic)"
            )
        if self.denoiser.periodic_lon and self.autoencoder.lon_margin:
            raise ValueError(
                "denoiser.periodic_lon needs autoencoder.lon_margin=0 (a latent with margins "
                "is not periodic)"
            )
        return self


def _tiny() -> NetworkPreset:
    return NetworkPreset(
        description="CPU tests and demos: 5 channels on a 32 x 64 grid",
        autoencoder=AutoencoderConfig(
            in_channels=5,
            grid=(32, 64),
            channels=[16, 32, 64],
            blocks=[1, 1, 1],
            latent_channels=8,
            lat_padding="pole-half",
        ),
        denoiser=DenoiserConfig(
            channels=8,
            window=4,
            width=64,
            depth=2,
            heads=4,
            mod_features=64,
            patch=(1, 2, 2),
        ),
    )


def _small() -> NetworkPreset:
    return NetworkPreset(
        description="one-GPU experiments: 71 channels on the 1.5 deg 121 x 240 grid",
        autoencoder=AutoencoderConfig(
            in_channels=71,
            grid=(121, 240),
            channels=[64, 128, 256, 256],
            blocks=[2, 2, 2, 2],
            latent_channels=32,
        ),
        denoiser=DenoiserConfig(
            channels=32,
            window=8,
            width=384,
            depth=8,
            heads=6,
            mod_features=128,
            patch=(2, 1, 1),
        ),
    )


def _appa_release() -> NetworkPreset:
    # The shapes of Appa's public release: 32x down-sampling of 721 x 1440 with one latent
    # column of circular margin on each side gives the 23 x 47 latent.
    return NetworkPreset(
        description="shapes of Appa's public release (0.25 deg, 71 channels)",
        autoencoder=AutoencoderConfig(
            in_channels=71,
            grid=(721, 1440),
            channels=[64, 128, 256, 512, 768, 1024],
            blocks=[3, 3, 3, 3, 3, 3],
            latent_channels=128,
            lon_margin=1,
        ),
        denoiser=DenoiserConfig(
            channels=128,
            window=24,
            width=1024,
            depth=16,
            heads=8,
            mod_features=256,
            patch=(2, 1, 1),
            periodic_lon=False,
        ),
    )


def _paper() -> NetworkPreset:
    return NetworkPreset(
        description="flagship: ~500M autoencoder, ~1B latent denoiser (0.25 deg, 71 channels)",
        autoencoder=AutoencoderConfig(
            in_channels=71,
            grid=(721, 1440),
            channels=[96, 192, 384, 640, 960, 1280],
            blocks=[3, 3, 3, 3, 3, 3],
            latent_channels=144,
        ),
        denoiser=DenoiserConfig(
            channels=144,
            window=24,
            width=1536,
            depth=30,
            heads=12,
            mod_features=512,
            patch=(2, 1, 1),
            checkpointing=True,
        ),
    )


PRESETS: dict[str, Callable[[], NetworkPreset]] = {
    "tiny": _tiny,
    "small": _small,
    "appa-release": _appa_release,
    "paper": _paper,
}


def preset_names() -> list[str]:
    """Names of the presets."""
    return list(PRESETS)


def get_preset(name: str, overrides: Iterable[str] = ()) -> NetworkPreset:
    """The preset ``name`` with ``key.sub=value`` overrides applied (validated)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown network preset {name!r}; choose one of {preset_names()}")
    base = PRESETS[name]().model_dump()
    data = apply_overrides(base, overrides)
    try:
        return NetworkPreset.model_validate(data)
    except ValidationError as error:
        lines = [f"invalid overrides of preset {name!r}:"]
        for item in error.errors():
            key = ".".join(str(p) for p in item["loc"]) or "<root>"
            lines.append(f"  {key}: {item['msg']}")
        raise ConfigError("\n".join(lines)) from None
