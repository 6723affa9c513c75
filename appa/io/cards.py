"""The card of a checkpoint: what a trained network says about itself, as one typed model.

A checkpoint's ``checkpoint.json`` holds, beside the manifest of its tensor files,

- ``card``: an :class:`AutoencoderCard` or a :class:`DenoiserCard`, everything needed to build
  the network again and use it (its config, the state spec and statistics, the grid, the noise
  schedule, the latent statistics);
- ``run``: how it was trained (:class:`RunRecord`: the job config, the data it read, the
  training loop's position, the last metrics) and, for an exported copy, where it came from.

Training writes the card with :meth:`CheckpointCard.dump`; every reader (the prior, the
encoder, the archive layout, the Ray driver) parses it with :func:`read_card`, so a field is named,
typed and defaulted in one place.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_serializer, model_validator

from appa.config import StrictModel
from appa.data.grids import regular_longitudes
from appa.data.spec import StateSpec
from appa.data.stats import Statistics
from appa.diffusion.schedules import ScheduleConfig
from appa.nn.presets import AutoencoderConfig, DenoiserConfig

__all__ = [
    "AutoencoderCard",
    "CardError",
    "CheckpointCard",
    "DenoiserCard",
    "ExportRecord",
    "LoopRecord",
    "RunRecord",
    "card_error",
    "read_card",
]


class CardError(ValueError):
    """A checkpoint's card is missing, malformed, or of the wrong kind."""


def card_error(source: str, error: ValidationError, limit: int = 8) -> CardError:
    """A :class:`CardError` naming ``source`` and, one a line, each invalid field's dotted
    path and what is wrong with it (the first ``limit``)."""
    lines = [f"{source}: invalid card:"]
    for item in error.errors()[:limit]:
        key = ".".join(str(p) for p in item["loc"])
        # a check across fields (a model validator) has no location of its own
        lines.append(f"  {key}: {item['msg']}" if key else f"  {item['msg']}")
    if error.error_count() > limit:
        lines.append(f"  ... and {error.error_count() - limit} more")
    return CardError("\n".join(lines))


class AutoencoderCard(StrictModel):
    """An autoencoder between standardised states ``(C, H, W)`` and raw latents."""

    kind: Literal["autoencoder"] = "autoencoder"
    autoencoder: AutoencoderConfig = Field(description="the network's config")
    latitudes: list[float] = Field(description="row latitudes of the state grid (degrees)")
    channel_names: list[str] = Field(description="state channels, in order")
    channel_weights: list[float] | None = Field(description="loss weight of each channel")
    spectral_weight: float = Field(description="weight of the zonal-spectrum loss term")
    spectral_floor: float = Field(description="relative power floor of that term")
    tendency_weight: float = Field(description="weight of the loss on consecutive changes")
    state_spec: StateSpec | None = Field(description="variables and levels of the states")
    statistics: dict[str, Any] | None = Field(description="per-channel mean and std (SI)")
    regional_longitudes: list[float] | None = Field(
        None,
        description="longitudes of a regional grid (degrees, ascending); None: the global "
        "grid's, equally spaced from 0",
    )

    @model_validator(mode="after")
    def _check_longitudes(self) -> AutoencoderCard:
        lon = self.regional_longitudes
        if lon is not None and (
            len(lon) != self.autoencoder.grid[1] or any(b <= a for a, b in itertools.pairwise(lon))
        ):
            raise ValueError(
                f"regional_longitudes: {len(lon)} values for a grid of "
                f"{self.autoencoder.grid[1]} columns, or not ascending"
            )
        return self

    @model_serializer(mode="wrap")
    def _drop_global(self, handler):
        # a global grid's card stays as it was before regional grids (resuming compares cards)
        data = handler(self)
        if self.regional_longitudes is None:
            data.pop("regional_longitudes", None)
        return data

    @property
    def longitudes(self) -> list[float]:
        """Longitudes of the state grid (degrees in [0, 360), ascending): a regional grid's
        as trained, else equally spaced from 0 around the globe."""
        if self.regional_longitudes is not None:
            return list(self.regional_longitudes)
        return regular_longitudes(self.autoencoder.grid[1]).tolist()

    def spec_and_statistics(self) -> tuple[StateSpec, Statistics]:
        """The state spec and its statistics (raises :class:`CardError` when absent: an
        autoencoder trained on a window store of standardised states does not know them)."""
        if self.state_spec is None or self.statistics is None:
            raise CardError(
                "the autoencoder carries no state spec or statistics; retrain it from a "
                "gridded source (data.source) so that it is self-describing"
            )
        return self.state_spec, Statistics.from_json(self.statistics).for_spec(self.state_spec)


class DenoiserCard(StrictModel):
    """A latent window denoiser ``D(u_t, sigma)`` over standardised latents ``(K, c, h, w)``."""

    kind: Literal["diffusion"] = "diffusion"
    denoiser: DenoiserConfig = Field(description="the network's config")
    schedule: ScheduleConfig = Field(description="the noise schedule it was trained on")
    sigma_data: float = Field(gt=0, description="EDM data standard deviation")
    latent_mean: list[float] | None = Field(description="per-channel latent mean (None: 0)")
    latent_std: list[float] | None = Field(description="per-channel latent std (None: 1)")


Card = Annotated[AutoencoderCard | DenoiserCard, Field(discriminator="kind")]


class LoopRecord(StrictModel):
    """Where the training loop stood when the checkpoint was written (resuming checks it)."""

    step: int
    samples_seen: int
    seed: int
    batch_size: int
    accumulation: int
    world_size: int
    dataset_size: int
    ema_updates: int | None


class ExportRecord(StrictModel):
    """The checkpoint an exported copy was made from."""

    path: str
    step: int
    sha256: dict[str, str] = Field(description="SHA-256 of each kept tensor file")


class RunRecord(StrictModel):
    """How the network was trained: the job config, the data it read (the store's attributes
    or the gridded source and its statistics) and the last logged metrics."""

    job: dict[str, Any] = Field(default_factory=dict, description="the job config (JSON)")
    data: dict[str, Any] = Field(default_factory=dict, description="what the data says of itself")
    metrics: dict[str, Any] = Field(default_factory=dict, description="last logged metrics")
    loop: LoopRecord | None = None


class CheckpointCard(StrictModel):
    """Everything a checkpoint carries beside its tensors.

    ``fingerprint`` is what must not change for a run to resume from it (the card and the
    objective's settings). ``weights`` names the tensor group to sample with when a copy was
    exported with one group only (None: the EMA weights, an error when they are absent).
    """

    card: Card
    fingerprint: dict[str, Any] = Field(default_factory=dict)
    run: RunRecord = Field(default_factory=RunRecord)
    exported_from: ExportRecord | None = None
    weights: Literal["ema", "model"] | None = None

    def dump(self) -> dict[str, Any]:
        """The JSON form written into ``checkpoint.json``."""
        return self.model_dump(mode="json")


_ADAPTER = TypeAdapter(CheckpointCard)


def read_card(
    metadata: dict[str, Any], source: str = "checkpoint", kind: str | None = None
) -> CheckpointCard:
    """Parses a checkpoint's metadata (:attr:`appa.io.checkpoints.Checkpoint.metadata`),
    checking its kind (``autoencoder`` or ``diffusion``) when given; ``source`` names it in
    errors."""
    if "card" not in metadata:
        raise CardError(
            f"{source} has no card: it was written by an older appa (keys "
            f"{sorted(metadata)[:6]}); retrain it, or export it again with this version"
        )
    try:
        card = _ADAPTER.validate_python(metadata)
    except ValidationError as error:
        raise card_error(source, error) from None
    if kind is not None and card.card.kind != kind:
        raise CardError(f"{source} is a {card.card.kind!r} checkpoint, expected {kind!r}")
    return card
