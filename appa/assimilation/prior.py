"""The latent trajectory prior as sampling uses it: codec, window denoiser, statistics, grid.

Three spaces, from the user's to the sampler's:

- physical states ``(..., C, H, W)`` in SI units (the channel order of the state spec);
- standardised states ``(x - mean) / std`` per channel (the autoencoder's input and output, and
  the space the observation operator acts on with standardised observations);
- standardised latents ``u = (encode(x) - latent_mean) / latent_std`` ``(..., c, h, w)``: the
  diffusion model's space, where windows ``(B, K, c, h, w)`` are denoised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from appa.data.spec import StateSpec
from appa.data.stats import Statistics
from appa.dates import DATE_FEATURES, date_features
from appa.diffusion import NoiseSchedule, WindowedDenoiser, make_sampler
from appa.diffusion.windows import StitchMode
from appa.io.cards import AutoencoderCard, CardError, CheckpointCard, DenoiserCard, read_card
from appa.io.checkpoints import (
    VALID_GROUP,
    CheckpointError,
    check_tensor_shapes,
    inspect_checkpoint,
    load_checkpoint,
    load_module_state,
)
from appa.nn import StateAutoencoder
from appa.nn.latent import LatentStandardizer, latent_denoiser

__all__ = [
    "Codec",
    "LatentPrior",
    "PriorMismatchError",
    "PriorParts",
    "inspect_prior",
    "regular_step",
]


class PriorMismatchError(ValueError):
    """An autoencoder and a denoiser that do not belong together, or bad prior parts."""


class Codec(Protocol):
    """Maps standardised states ``(..., C, H, W)`` to raw latents ``(..., c, h, w)`` and back
    (:class:`~appa.nn.StateAutoencoder`, or a linear map in tests). A codec whose
    ``config.date_context`` is true also takes the states' date features ``(..., 4)``."""

    def encode(self, x: Tensor, *args: Any) -> Tensor: ...

    def decode(self, z: Tensor, *args: Any) -> Tensor: ...


def regular_step(times: pd.DatetimeIndex) -> pd.Timedelta:
    """The constant step of increasing ``times`` (a clear error when they are irregular)."""
    if len(times) < 2:
        raise ValueError("need at least two times to know the time step")
    steps = np.unique(np.diff(times.values))
    if steps.size != 1 or steps[0] <= np.timedelta64(0):
        raise ValueError(f"times must be regular and increasing, got steps {steps[:4]}")
    return pd.Timedelta(steps[0])


def _validation_rmse(metrics: dict[str, Any], spec: StateSpec) -> list[float] | None:
    """Per-channel validation RMSE of an autoencoder checkpoint (standardised), if logged."""
    values = [metrics.get(f"val_rmse_{name}") for name in spec.channel_names()]
    return None if any(v is None for v in values) else [float(v) for v in values]


# how a user goes on with a denoiser that does not name its autoencoder's weights
_UNRECORDED = (
    "{dn} does not record the SHA-256 of the autoencoder weights its latents were encoded "
    "with{made}, so its pairing with {ae} cannot be checked: add that autoencoder's "
    "model.safetensors sha256 to its checkpoint.json as run.data.provenance.checkpoint_sha256, "
    "retrain it on latents of `appa encode`, or accept the pair unverified with "
    "prior.unverified_pair: true (unverified_pair=True; the archive records it)"
)


def _check_pair(
    ae_card: CheckpointCard,
    dn_card: CheckpointCard,
    ae_path: str,
    dn_path: str,
    ae_sha256: str,
    unverified_pair: bool,
) -> tuple[StateSpec, Statistics, str]:
    """Checks that an autoencoder (whose ``model.safetensors`` has SHA-256 ``ae_sha256``) and a
    denoiser belong together; returns the state spec, its statistics and the pair's status,
    ``"verified"`` (the denoiser was trained on latents of exactly these weights) or
    ``"unverified"`` (it records no digest and ``unverified_pair`` accepts that).

    Raises:
        PriorMismatchError: naming both checkpoints and what differs.
    """
    ae, dn = ae_card.card, dn_card.card
    if not isinstance(ae, AutoencoderCard) or not isinstance(dn, DenoiserCard):
        raise PriorMismatchError(f"{ae_path} and {dn_path}: expected an autoencoder and a denoiser")
    if dn.denoiser.channels != ae.autoencoder.latent_channels:
        raise PriorMismatchError(
            f"{dn_path}: the denoiser has {dn.denoiser.channels} latent channels, the "
            f"autoencoder of {ae_path} makes {ae.autoencoder.latent_channels}"
        )
    if dn.denoiser.date_features not in (0, DATE_FEATURES):
        raise PriorMismatchError(
            f"{dn_path}: the denoiser takes {dn.denoiser.date_features} date "
            f"features; appa.dates makes {DATE_FEATURES}"
        )
    try:
        spec, stats = ae.spec_and_statistics()
    except CardError as error:
        raise PriorMismatchError(f"{ae_path}: {error}") from None
    # the latent store the denoiser was trained on records the autoencoder's spec, statistics
    # and weights (appa encode): they must be this autoencoder's
    made = dn_card.run.data.get("provenance", {})
    if made.get("state_spec") is not None:
        other = StateSpec.model_validate(made["state_spec"])
        if other != spec:
            raise PriorMismatchError(
                f"{dn_path} was trained on latents of states {other.channel_names()}, "
                f"the autoencoder of {ae_path} encodes {spec.channel_names()}"
            )
    if made.get("statistics") is not None:
        other_stats = Statistics.from_json(made["statistics"]).for_spec(spec)
        if not (
            np.allclose(other_stats.mean, stats.mean, rtol=1e-6)
            and np.allclose(other_stats.std, stats.std, rtol=1e-6)
        ):
            raise PriorMismatchError(
                f"{dn_path} was trained on latents of states standardised with other "
                f"statistics than those of {ae_path}"
            )
    if len(ae.latitudes) != ae.autoencoder.grid[0]:
        raise PriorMismatchError(
            f"{ae_path} carries {len(ae.latitudes)} latitudes for a grid of "
            f"{ae.autoencoder.grid[0]} rows"
        )
    recorded = made.get("checkpoint_sha256")
    if recorded is None:
        if not unverified_pair:
            raise PriorMismatchError(
                _UNRECORDED.format(
                    dn=dn_path,
                    ae=ae_path,
                    made=(
                        f" ({made['checkpoint']} step {made.get('checkpoint_step')})"
                        if made.get("checkpoint")
                        else ""
                    ),
                )
            )
        return spec, stats, "unverified"
    if recorded != ae_sha256:
        raise PriorMismatchError(
            f"{dn_path} was trained on latents of the autoencoder {made.get('checkpoint')} "
            f"step {made.get('checkpoint_step')} (weights SHA-256 {recorded}), not of {ae_path} "
            f"(model.safetensors SHA-256 {ae_sha256}): give the autoencoder it was trained with"
        )
    return spec, stats, "verified"


def _denoiser_group(
    card: CheckpointCard, groups: Sequence[str], weights: str | None, path: str
) -> str:
    """The denoiser's tensor group to sample with (``weights``, else the one an exported copy
    names, else ``ema``), which must be among ``groups``."""
    group = weights or card.weights or "ema"
    if group not in groups:
        hint = (
            " (trained without loop.ema_decay, or exported with -g model): ask for its "
            "final weights with weights='model' (prior.weights: model)"
            if group == "ema"
            else ""
        )
        raise CheckpointError(f"{path}: no {group}.safetensors{hint}")
    return group


def _valid_cells(tensors: dict[str, dict[str, Tensor]], path: str) -> Tensor | None:
    """The ``valid`` group's ``cells`` of an autoencoder checkpoint as bool, or None."""
    if VALID_GROUP not in tensors:
        return None
    cells = tensors[VALID_GROUP].get("cells")
    if cells is None or cells.dtype != torch.uint8 or cells.ndim != 3:
        got = "nothing" if cells is None else f"{cells.dtype} {tuple(cells.shape)}"
        raise CheckpointError(
            f"{path}/{VALID_GROUP}.safetensors: 'cells' must be uint8 (C, H, W), got {got}"
        )
    return cells.bool()


def _autoencoder_sha256(files: dict[str, dict[str, Any]], path: str) -> str:
    """The SHA-256 of an autoencoder's weights file (the manifest's entry)."""
    if "model.safetensors" not in files:
        raise CheckpointError(f"{path}: no model.safetensors (the autoencoder's weights)")
    return str(files["model.safetensors"]["sha256"])


@dataclass(frozen=True)
class PriorParts:
    """A prior's checkpoints as :func:`inspect_prior` found them, without their weights.

    Attributes:
        autoencoder, diffusion: The checkpoint folders (``step-*``).
        autoencoder_card, diffusion_card: Their cards.
        weights: The denoiser's tensor group that sampling takes.
        pair: ``"verified"`` or ``"unverified"`` (see :meth:`LatentPrior.from_checkpoints`).
        valid: Whether the autoencoder carries its data's valid cells (decoded states are NaN
            outside them).
    """

    autoencoder: str
    diffusion: str
    autoencoder_card: CheckpointCard
    diffusion_card: CheckpointCard
    weights: str
    pair: str
    valid: bool = False


# networks whose weights are smaller than this are built on the CPU to learn their parameter
# shapes (0.04 s for the committed prior's two); larger ones on the meta device, which
# allocates nothing but costs about 1 s the first time (torch imports its compiler for the
# meta kernels written in Python)
_META_BYTES = 64 << 20


def _shapes(build: Any, nbytes: int) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of the network ``build()`` makes (the global RNG is left as
    it was: initialising weights draws from it)."""
    if nbytes >= _META_BYTES:
        with torch.device("meta"):
            module = build()
    else:
        with torch.random.fork_rng(devices=[]):
            module = build()
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def inspect_prior(
    autoencoder: str,
    diffusion: str,
    weights: Literal["ema", "model"] | None = None,
    unverified_pair: bool = False,
) -> PriorParts:
    """Checks a prior's two checkpoints as :meth:`LatentPrior.from_checkpoints` would load
    them, without loading their weights: each manifest parses and its card is valid and
    unedited, each tensor file is there with the manifest's size and SHA-256 and its header
    holds the parameter names and shapes of the network the card describes (built without
    its weights: on the meta device when large), and the two belong together (the denoiser's
    record of the autoencoder weights it was trained on). What a job's driver runs before any
    worker starts.

    Raises:
        CheckpointError: a missing, truncated or corrupt file, or a card that does not match
            its weights.
        CardError: a missing or invalid card.
        PriorMismatchError: parts that do not belong together.
    """
    ae_head = inspect_checkpoint(autoencoder)
    dn_head = inspect_checkpoint(diffusion)
    ae_card = read_card(ae_head.metadata, ae_head.path, kind="autoencoder")
    dn_card = read_card(dn_head.metadata, dn_head.path, kind="diffusion")
    ae_sha = _autoencoder_sha256(ae_head.files, ae_head.path)
    _, _, pair = _check_pair(ae_card, dn_card, ae_head.path, dn_head.path, ae_sha, unverified_pair)
    group = _denoiser_group(dn_card, list(dn_head.shapes), weights, dn_head.path)
    ae, dn = ae_card.card, dn_card.card
    assert isinstance(ae, AutoencoderCard) and isinstance(dn, DenoiserCard)
    codec = _shapes(
        lambda: StateAutoencoder(ae.autoencoder), ae_head.files["model.safetensors"]["bytes"]
    )
    check_tensor_shapes(codec, ae_head.shapes["model"], f"{ae_head.path}/model.safetensors")
    backbone = _shapes(
        lambda: latent_denoiser(dn.denoiser, sigma_data=dn.sigma_data).backbone,
        dn_head.files[f"{group}.safetensors"]["bytes"],
    )
    check_tensor_shapes(backbone, dn_head.shapes[group], f"{dn_head.path}/{group}.safetensors")
    valid = ae_head.shapes.get(VALID_GROUP)
    if valid is not None:
        state = (ae.autoencoder.in_channels, *ae.autoencoder.grid)
        if tuple(valid.get("cells", ())) != state:
            raise CheckpointError(
                f"{ae_head.path}/{VALID_GROUP}.safetensors: 'cells' must be {state}, got "
                f"{valid.get('cells', 'nothing')}"
            )
    return PriorParts(ae_head.path, dn_head.path, ae_card, dn_card, group, pair, valid is not None)


class LatentPrior:
    """A frozen autoencoder and latent window denoiser, with everything needed to use them.

    Arguments:
        codec: Encoder/decoder between standardised states and raw latents (eval mode; frozen).
        denoiser: ``D(u_t, sigma, date=...)`` over standardised latent windows
            ``(B, K, c, h, w)`` (e.g. :func:`appa.nn.latent.latent_denoiser` with EMA weights).
        schedule: The noise schedule the denoiser was trained with.
        spec: The state spec (channel order of states).
        statistics: Per-channel normalisation statistics of the states (physical units).
        latent_shape: ``(c, h, w)``.
        window: ``K``, the denoiser's window length.
        latitude, longitude: The state grid (ascending degrees; longitudes in [0, 360)).
        latent_mean, latent_std: Per-channel latent statistics (None: identity).
        date_conditioning: Whether the denoiser takes date features (``date=(B, K, 4)``).
        sigma_data: The EDM data standard deviation (MMPS's heuristic covariance uses it).
        reconstruction_rmse: Per-channel RMSE of the autoencoder on held-out states
            (standardised units), when known: the decoder's representation error, which
            :class:`~appa.assimilation.tasks.SamplingConfig` can add to observation errors.
        provenance: JSON facts about where the parts came from (checkpoint paths and steps).
        valid: ``(C, H, W)`` bool, the cells where the autoencoder's data held values (the
            ``valid`` group of its checkpoint); :meth:`decode` leaves the others NaN (land,
            cells below the sea floor). None: every decoded cell is kept.
    """

    def __init__(
        self,
        codec: Codec,
        denoiser: nn.Module,
        schedule: NoiseSchedule,
        spec: StateSpec,
        statistics: Statistics,
        latent_shape: Sequence[int],
        window: int,
        latitude: Sequence[float],
        longitude: Sequence[float],
        latent_mean: Sequence[float] | None = None,
        latent_std: Sequence[float] | None = None,
        date_conditioning: bool = False,
        sigma_data: float = 1.0,
        provenance: dict[str, Any] | None = None,
        reconstruction_rmse: Sequence[float] | None = None,
        valid: Tensor | None = None,
    ) -> None:
        self.codec = codec
        self.denoiser = denoiser
        self.schedule = schedule
        self.spec = spec
        self.statistics = statistics.for_spec(spec)
        self.latent_shape = tuple(int(v) for v in latent_shape)
        if len(self.latent_shape) != 3:
            raise PriorMismatchError(f"latent_shape must be (c, h, w), got {latent_shape}")
        self.window = int(window)
        if self.window < 1:
            raise PriorMismatchError(f"window must be positive, got {window}")
        self.latitude = np.asarray(latitude, dtype=np.float64)
        self.longitude = np.asarray(longitude, dtype=np.float64)
        if self.latitude.ndim != 1 or not np.all(np.diff(self.latitude) > 0):
            raise PriorMismatchError("latitudes must be 1-D and ascending")
        if self.longitude.ndim != 1 or not np.all(np.diff(self.longitude) > 0):
            raise PriorMismatchError("longitudes must be 1-D and ascending")
        self.standardizer = LatentStandardizer(self.latent_shape[0], latent_mean, latent_std)
        self.date_conditioning = bool(date_conditioning)
        self.sigma_data = float(sigma_data)
        self.provenance = dict(provenance or {})
        if reconstruction_rmse is not None and len(reconstruction_rmse) != spec.num_channels:
            raise PriorMismatchError(
                f"{len(reconstruction_rmse)} reconstruction RMSEs for {spec.num_channels} channels"
            )
        self.reconstruction_rmse = (
            None if reconstruction_rmse is None else [float(v) for v in reconstruction_rmse]
        )
        self.valid = None
        if valid is not None:
            if tuple(valid.shape) != self.state_shape:
                raise PriorMismatchError(
                    f"the valid cells are {tuple(valid.shape)}, the states {self.state_shape}"
                )
            self.valid = valid.to(torch.bool).cpu()
        for module in (codec, denoiser):
            if isinstance(module, nn.Module):
                module.eval().requires_grad_(False)

    # ------------------------------------------------------------------ shapes and devices
    @property
    def known_frames(self) -> bool:
        """Whether the denoiser takes clean known frames as an input (``known_frames`` of its
        config), so tasks condition on known states through it rather than by guidance."""
        config = getattr(getattr(self.denoiser, "backbone", None), "config", None)
        return bool(getattr(config, "known_frames", False))

    @property
    def state_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return (self.spec.num_channels, self.latitude.size, self.longitude.size)

    @property
    def device(self) -> torch.device:
        for module in (self.denoiser, self.codec):
            if isinstance(module, nn.Module):
                for p in (*module.parameters(), *module.buffers()):
                    return p.device
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> LatentPrior:
        """Moves the networks to ``device`` (in place); returns self."""
        for module in (self.codec, self.denoiser):
            if isinstance(module, nn.Module):
                module.to(device)
        return self

    # ------------------------------------------------------------------ codec
    def _check_states(self, x: Tensor) -> None:
        if x.ndim < 3 or tuple(x.shape[-3:]) != self.state_shape:
            raise ValueError(f"states must be (..., {self.state_shape}), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("states hold NaN or infinite values (fill masked points first)")

    def _check_latents(self, u: Tensor) -> None:
        if u.ndim < 3 or tuple(u.shape[-3:]) != self.latent_shape:
            raise ValueError(f"latents must be (..., {self.latent_shape}), got {tuple(u.shape)}")

    @property
    def codec_dates(self) -> bool:
        """Whether the codec is conditioned on the states' dates (then :meth:`encode` and
        :meth:`decode` need ``times``)."""
        return bool(getattr(getattr(self.codec, "config", None), "date_context", False))

    def frame_dates(self, times: Sequence | np.ndarray | None, lead: Sequence[int]) -> Tensor:
        """Date features ``(N, 4)`` of ``N = prod(lead)`` frames whose times ``times`` fill
        the last axes of ``lead`` (broadcast over the first ones, e.g. members)."""
        if times is None:
            raise ValueError("this prior's autoencoder is conditioned on dates: pass the times")
        values = np.asarray(pd.DatetimeIndex(np.ravel(times)).values).reshape(np.shape(times))
        shape = tuple(lead)
        if values.ndim > len(shape) or shape[len(shape) - values.ndim :] != values.shape:
            raise ValueError(f"times of shape {values.shape} do not fit frames of shape {shape}")
        dates = date_features(values).to(self.device)
        return dates.expand(*shape, DATE_FEATURES).reshape(-1, DATE_FEATURES)

    def encode(
        self, x: Tensor, batch_size: int = 64, times: Sequence | np.ndarray | None = None
    ) -> Tensor:
        """Physical states ``(..., C, H, W)`` to standardised latents ``(..., c, h, w)``,
        batched over frames (``batch_size`` frames at a time). Masked points (NaN) must be
        filled first: use :meth:`fill_masked`. ``times``: the states' times (the trailing
        axes of ``...``), needed when :attr:`codec_dates`."""
        self._check_states(x)
        lead = x.shape[:-3]
        flat = x.reshape(-1, *self.state_shape)
        dates = self.frame_dates(times, lead) if self.codec_dates else None
        with torch.no_grad():
            parts = []
            for i in range(0, flat.shape[0], batch_size):
                args = () if dates is None else (dates[i : i + batch_size],)
                x_std = self.statistics.standardize(flat[i : i + batch_size])
                parts.append(self.standardizer.standardize(self.codec.encode(x_std, *args)))
        return torch.cat(parts).reshape(*lead, *self.latent_shape)

    def fit_latents(
        self,
        x: Tensor,
        iterations: int = 100,
        learning_rate: float = 0.05,
        batch_size: int = 64,
        times: Sequence | np.ndarray | None = None,
    ) -> Tensor:
        """Standardised latents ``(..., c, h, w)`` whose decoding matches the physical states
        ``x`` ``(..., C, H, W)``: the encoder's latents, refined by ``iterations`` Adam steps
        (``learning_rate`` in standardised latent units) on the squared error of the decoded
        states in standardised units. NaN points of ``x`` (masked variables) do not count.

        The encoder is a good inverse only on states like those it was trained on. States that
        are themselves decodings (a reanalysis from this prior) come back from it far off: for
        the toy Earth's prior, 1.2 K of 500 hPa temperature from 1.1 K analyses, where 100
        steps bring them within 0.03 K. Each frame's steps depend on that frame alone (summed
        error, per-element Adam), so results do not depend on ``batch_size``."""
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        filled = self.fill_masked(x)
        u0 = self.encode(filled, batch_size, times)
        if iterations == 0:
            return u0
        lead = x.shape[:-3]
        target = self.statistics.standardize(filled.reshape(-1, *self.state_shape))
        valid = ~torch.isnan(x.reshape(-1, *self.state_shape))
        start = u0.reshape(-1, *self.latent_shape)
        dates = self.frame_dates(times, lead) if self.codec_dates else None
        parts = []
        for i in range(0, start.shape[0], batch_size):
            part = slice(i, i + batch_size)
            date = None if dates is None else dates[part]
            u = start[part].clone().requires_grad_(True)
            optimizer = torch.optim.Adam([u], lr=learning_rate)
            with torch.enable_grad():
                for _ in range(iterations):
                    error = self.decode_standardized(u, date) - target[part]
                    loss = torch.where(valid[part], error, torch.zeros_like(error)).square().sum()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            parts.append(u.detach())
        return torch.cat(parts).reshape(*lead, *self.latent_shape)

    def decode_standardized(self, u: Tensor, date: Tensor | None = None) -> Tensor:
        """Standardised latents ``(N, c, h, w)`` to standardised states ``(N, C, H, W)``, one
        batch, differentiable (what the observation operator goes through). ``date``: the
        frames' date features ``(N, 4)``, needed when :attr:`codec_dates`."""
        z = self.standardizer.unstandardize(u)
        if not self.codec_dates:
            return self.codec.decode(z)
        if date is None:
            raise ValueError("this prior's autoencoder is conditioned on dates: pass them")
        return self.codec.decode(z, date.to(z.device))

    def decode(
        self, u: Tensor, batch_size: int = 64, times: Sequence | np.ndarray | None = None
    ) -> Tensor:
        """Standardised latents ``(..., c, h, w)`` to physical states ``(..., C, H, W)``,
        batched over frames, NaN outside :attr:`valid` (where the data never hold values).
        ``times``: the frames' times (the trailing axes of ``...``), needed when
        :attr:`codec_dates`."""
        self._check_latents(u)
        lead = u.shape[:-3]
        flat = u.reshape(-1, *self.latent_shape)
        dates = self.frame_dates(times, lead) if self.codec_dates else None
        with torch.no_grad():
            parts = []
            for i in range(0, flat.shape[0], batch_size):
                date = None if dates is None else dates[i : i + batch_size]
                decoded = self.decode_standardized(flat[i : i + batch_size], date)
                parts.append(self.statistics.unstandardize(decoded))
        x = torch.cat(parts)
        if self.valid is not None:
            x = x.masked_fill(~self.valid.to(x.device), float("nan"))
        return x.reshape(*lead, *self.state_shape)

    @property
    def masked_variables(self) -> list[str]:
        """Variables whose decoded states hold NaN somewhere (cells outside :attr:`valid`)."""
        if self.valid is None:
            return []
        invalid = (~self.valid).flatten(1).any(1).tolist()
        return sorted({v for (v, _), bad in zip(self.spec.channels, invalid, strict=True) if bad})

    def fill_masked(self, x: Tensor) -> Tensor:
        """Replaces NaN (masked variables, e.g. sea-surface temperature over land) by the
        channel mean, the standardised 0 the autoencoder was trained with there."""
        mean, _ = self.statistics.tensors(x.dtype)
        return torch.where(torch.isnan(x), mean.to(x.device).expand_as(x), x)

    # ------------------------------------------------------------------ conditioning
    def conditioning(self, times: Sequence | np.ndarray, batch: int) -> dict[str, Tensor]:
        """The denoiser's conditioning for a trajectory at ``times`` (``L`` of them), repeated
        for ``batch`` samples: ``{"date": (batch, L, 4)}`` or ``{}``."""
        if not self.date_conditioning:
            return {}
        dates = date_features(pd.DatetimeIndex(np.atleast_1d(times)).values).to(self.device)
        return {"date": dates[None].expand(batch, -1, -1).contiguous()}

    def windowed(
        self,
        denoiser: nn.Module | None = None,
        stride: int | None = None,
        mode: StitchMode = "symmetric",
    ) -> WindowedDenoiser:
        """``denoiser`` (default: the prior's) run over trajectories of any length in windows of
        ``K`` with ``stride`` (default ``K // 2``, at least 1) and stitching ``mode``."""
        stride = max(1, self.window // 2) if stride is None else stride
        return WindowedDenoiser(denoiser or self.denoiser, self.window, stride, mode)

    def unconditional_latents(
        self,
        n: int,
        times: Sequence | np.ndarray,
        seed: int,
        sampler: str = "pc",
        steps: int = 32,
        stride: int | None = None,
        **options: Any,
    ) -> Tensor:
        """``n`` prior trajectories at ``times`` (regular), standardised latents
        ``(n, L, c, h, w)``.

        Windows of ``K`` are stitched when ``L > K``; ``options`` go to the sampler."""
        times = pd.DatetimeIndex(np.atleast_1d(times))
        if len(times) > 1:
            regular_step(times)
        denoiser = self.windowed(stride=stride)
        smp = make_sampler(sampler, denoiser, self.schedule, steps, **options)
        return smp.sample(
            n,
            (len(times), *self.latent_shape),
            seed=seed,
            device=self.device,
            **self.conditioning(times, n),
        )

    def unconditional(
        self, n: int, times: Sequence | np.ndarray, seed: int, **sampling: Any
    ) -> Tensor:
        """``n`` prior trajectories at ``times`` (regular), decoded: physical
        ``(n, L, C, H, W)``; ``sampling``: the options of :meth:`unconditional_latents`."""
        u = self.unconditional_latents(n, times, seed, **sampling)
        return self.decode(u, times=pd.DatetimeIndex(np.atleast_1d(times)))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoints(
        cls,
        autoencoder: str,
        diffusion: str,
        device: torch.device | str = "cpu",
        weights: Literal["ema", "model"] | None = None,
        unverified_pair: bool = False,
    ) -> LatentPrior:
        """Loads the prior from an autoencoder and a diffusion checkpoint as ``appa train``
        writes them (a ``step-*`` folder, or a run's ``checkpoints`` folder: the latest).

        The autoencoder takes its trained weights, those the latents were encoded with: the
        denoiser's card records their SHA-256 (``appa encode`` writes it into the latent
        store, diffusion training copies it), and another autoencoder, even of the same
        architecture, spec and statistics, is refused. A denoiser without that record is
        refused too unless ``unverified_pair`` (``prior.unverified_pair: true``) accepts it;
        :attr:`provenance` then says ``"pair": "unverified"``.

        The denoiser takes ``weights``: ``"ema"`` (the moving average of training), ``"model"``
        (the final weights) or None, the group an exported copy names (``appa
        export-checkpoint -g``), else ``"ema"``. Asking for EMA weights the checkpoint does not
        hold is an error.

        Raises:
            PriorMismatchError: when the two do not belong together (the autoencoder weights
                the denoiser was trained on, latent channels or grid, state spec, statistics)
                or a checkpoint is of the wrong kind.
            CheckpointError: when the asked-for weights are not in the checkpoint, or a card
                does not match its weights.
        """
        ae_ckpt = load_checkpoint(autoencoder)
        dn_ckpt = load_checkpoint(diffusion)
        try:
            ae_card = read_card(ae_ckpt.metadata, ae_ckpt.path, kind="autoencoder")
            dn_card = read_card(dn_ckpt.metadata, dn_ckpt.path, kind="diffusion")
        except CardError as error:
            raise PriorMismatchError(str(error)) from None
        ae_sha = _autoencoder_sha256(ae_ckpt.files, ae_ckpt.path)
        spec, stats, pair = _check_pair(
            ae_card, dn_card, ae_ckpt.path, dn_ckpt.path, ae_sha, unverified_pair
        )
        ae, dn = ae_card.card, dn_card.card
        assert isinstance(ae, AutoencoderCard) and isinstance(dn, DenoiserCard)
        made = dn_card.run.data.get("provenance", {})

        codec = StateAutoencoder(ae.autoencoder)
        load_module_state(codec, ae_ckpt.tensors["model"], f"{ae_ckpt.path}/model.safetensors")
        denoiser = latent_denoiser(dn.denoiser, sigma_data=dn.sigma_data)
        group = _denoiser_group(dn_card, list(dn_ckpt.tensors), weights, dn_ckpt.path)
        load_module_state(
            denoiser.backbone, dn_ckpt.tensors[group], f"{dn_ckpt.path}/{group}.safetensors"
        )
        provenance = {
            "autoencoder": {"path": ae_ckpt.path, "step": ae_ckpt.step},
            "diffusion": {"path": dn_ckpt.path, "step": dn_ckpt.step, "weights": group},
            "latents_encoded_with": {
                "path": made.get("checkpoint"),
                "step": made.get("checkpoint_step"),
                "sha256": made.get("checkpoint_sha256"),
            },
            "pair": pair,
        }
        prior = cls(
            codec,
            denoiser,
            dn.schedule.build(),
            spec,
            stats,
            ae.autoencoder.latent_shape,
            dn.denoiser.window,
            ae.latitudes,
            ae.longitudes,
            latent_mean=dn.latent_mean,
            latent_std=dn.latent_std,
            date_conditioning=dn.denoiser.date_features > 0,
            sigma_data=dn.sigma_data,
            provenance=provenance,
            reconstruction_rmse=_validation_rmse(ae_card.run.metrics, spec),
            valid=_valid_cells(ae_ckpt.tensors, ae_ckpt.path),
        )
        return prior.to(device)
