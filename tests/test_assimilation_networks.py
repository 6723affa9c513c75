"""The latent prior loaded from training checkpoints, and the tasks run end to end through tiny
networks (random weights: a smoke test of shapes, gradients and JVPs through the real
autoencoder and transformer)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from assimilation_utils import SPEC, STATS, station_table

from appa.assimilation import (
    LatentPrior,
    PriorMismatchError,
    SamplingConfig,
    filtering,
    forecast,
    reanalysis,
)
from appa.data.spec import StateSpec
from appa.io import CheckpointError, inspect_checkpoint, save_checkpoint
from appa.io.cards import CheckpointCard, RunRecord
from appa.nn import get_preset
from appa.training import AutoencoderObjective, DiffusionObjective

GRID = (8, 16)
LAT = np.linspace(-78.75, 78.75, 8)
OVERRIDES = [
    "autoencoder.in_channels=2",
    "autoencoder.grid=[8,16]",
    "autoencoder.channels=[8,16]",
    "autoencoder.blocks=[1,1]",
    "autoencoder.latent_channels=4",
    "denoiser.channels=4",
    "denoiser.width=24",
    "denoiser.heads=2",
    "denoiser.depth=1",
    "denoiser.mod_features=16",
    "denoiser.window=4",
]
TIMES = pd.date_range("2003-02-01", periods=6, freq="6h")


def _write(
    tmp_path, denoiser_channels=4, spec=SPEC, stats=STATS, known_frames=False, trained_on=None
):
    """An autoencoder and a denoiser checkpoint; the denoiser records the SHA-256 of the
    autoencoder weights its latents were encoded with (``appa encode``'s provenance): those of
    the autoencoder written here, or of the checkpoint ``trained_on``."""
    preset = get_preset("tiny", OVERRIDES)
    torch.manual_seed(0)
    ae = AutoencoderObjective(
        preset.autoencoder, LAT.tolist(), channel_names=spec.channel_names(),
        state_spec=spec.model_dump(mode="json"), statistics=stats.to_json(),
    )  # fmt: skip
    ae_root = str(tmp_path / "ae" / "checkpoints")
    ae_path = save_checkpoint(
        ae_root, 5, {"model": ae.network.state_dict()},
        metadata=CheckpointCard(card=ae.card()).dump(),
    )  # fmt: skip
    encoded_with = inspect_checkpoint(trained_on or ae_path).files["model.safetensors"]["sha256"]
    cfg = preset.denoiser.model_copy(
        update={"channels": denoiser_channels, "known_frames": known_frames}
    )
    dn = DiffusionObjective(
        cfg, latent_mean=[0.1] * denoiser_channels, latent_std=[0.5] * denoiser_channels
    )
    store = {
        "provenance": {
            "state_spec": spec.model_dump(mode="json"),
            "statistics": stats.to_json(),
            "checkpoint_sha256": encoded_with,
        }
    }
    dn_root = str(tmp_path / "dn" / "checkpoints")
    save_checkpoint(
        dn_root, 7, {"model": dn.network.state_dict(), "ema": dn.network.state_dict()},
        metadata=CheckpointCard(card=dn.card(), run=RunRecord(data=store)).dump(),
    )  # fmt: skip
    return ae_root, dn_root


@pytest.fixture
def tiny_prior(tmp_path) -> LatentPrior:
    ae, dn = _write(tmp_path)
    return LatentPrior.from_checkpoints(ae, dn)


def test_prior_loads_from_checkpoints(tiny_prior):
    prior = tiny_prior
    assert prior.latent_shape == (4, 4, 8) and prior.window == 4 and prior.state_shape == (2, 8, 16)
    assert prior.date_conditioning and prior.provenance["diffusion"]["weights"] == "ema"
    assert prior.provenance["diffusion"]["step"] == 7
    x = torch.tensor(STATS.mean, dtype=torch.float32)[:, None, None] + torch.randn(3, 5, 2, *GRID)
    u = prior.encode(x, batch_size=4)
    assert u.shape == (3, 5, 4, 4, 8)
    back = prior.decode(u, batch_size=4)
    assert back.shape == x.shape and torch.isfinite(back).all()
    # decode is batched over frames: the batch size changes nothing
    torch.testing.assert_close(prior.decode(u, batch_size=64), back, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        prior.encode(torch.full((1, 2, *GRID), float("nan")))
    filled = prior.fill_masked(torch.full((1, 2, *GRID), float("nan")))
    assert torch.allclose(filled[0, :, 0, 0].double(), torch.tensor(STATS.mean))
    trajectories = prior.unconditional(2, TIMES, seed=0, sampler="ddim", steps=3)
    assert trajectories.shape == (2, 6, 2, *GRID) and torch.isfinite(trajectories).all()


def test_checkpoints_that_do_not_belong_together(tmp_path):
    ae, _ = _write(tmp_path / "a")
    _, dn_channels = _write(tmp_path / "b", denoiser_channels=3)
    with pytest.raises(PriorMismatchError, match="3 latent channels"):
        LatentPrior.from_checkpoints(ae, dn_channels)
    other = StateSpec(surface=["2m_temperature", "sea_surface_temperature"])
    _, dn_spec = _write(
        tmp_path / "c",
        spec=other,
        stats=STATS.__class__(
            channels=other.channel_names(), mean=STATS.mean, std=STATS.std, period=STATS.period
        ),
    )
    with pytest.raises(PriorMismatchError, match="trained on latents of states"):
        LatentPrior.from_checkpoints(ae, dn_spec)
    with pytest.raises(PriorMismatchError, match="expected 'autoencoder'"):
        LatentPrior.from_checkpoints(dn_spec, dn_spec)


def test_the_denoiser_weights_are_the_ema_unless_asked_or_named(tmp_path):
    """No silent fallback: a checkpoint without EMA weights loads only when the final weights
    are asked for, or when its exported card names them."""
    from appa.io import export_checkpoint, load_checkpoint

    ae, dn = _write(tmp_path)
    ema = LatentPrior.from_checkpoints(ae, dn)
    assert ema.provenance["diffusion"]["weights"] == "ema"
    final = LatentPrior.from_checkpoints(ae, dn, weights="model")
    assert final.provenance["diffusion"]["weights"] == "model"
    ckpt = load_checkpoint(dn)
    bare = str(tmp_path / "bare")
    save_checkpoint(bare, 7, {"model": ckpt.tensors["model"]}, metadata=ckpt.metadata)
    with pytest.raises(CheckpointError, match=r"no ema\.safetensors.*weights='model'"):
        LatentPrior.from_checkpoints(ae, bare)
    assert LatentPrior.from_checkpoints(ae, bare, weights="model").window == 4
    exported = export_checkpoint(dn, str(tmp_path / "exported"), ["model"])
    named = LatentPrior.from_checkpoints(ae, exported)
    assert named.provenance["diffusion"]["weights"] == "model"
    with pytest.raises(CheckpointError, match=r"no ema\.safetensors"):
        LatentPrior.from_checkpoints(ae, exported, weights="ema")


def test_decoded_states_are_nan_where_the_autoencoders_data_never_hold_values(tmp_path):
    """An autoencoder exported with its data's valid cells (land, cells below a sea floor)
    decodes NaN there and nowhere else; its weights, and so the pair, are unchanged."""
    from appa.assimilation.prior import inspect_prior
    from appa.io import export_checkpoint, load_checkpoint

    ae, dn = _write(tmp_path)
    valid = torch.ones(2, *GRID, dtype=torch.uint8)
    valid[1, :3, 5:9] = 0
    exported = export_checkpoint(ae, str(tmp_path / "masked"), add={"valid": {"cells": valid}})
    assert (
        load_checkpoint(exported).files["model.safetensors"]
        == load_checkpoint(ae).files["model.safetensors"]
    )
    assert inspect_prior(exported, dn).valid and not inspect_prior(ae, dn).valid
    masked = LatentPrior.from_checkpoints(exported, dn)
    plain = LatentPrior.from_checkpoints(ae, dn)
    assert masked.masked_variables == ["mean_sea_level_pressure"] and plain.masked_variables == []
    u = torch.randn(3, 2, *masked.latent_shape)
    back, full = masked.decode(u), plain.decode(u)
    hole = ~valid.bool().expand_as(back)
    assert torch.isnan(back[hole]).all() and torch.equal(back[~hole], full[~hole])
    # a later export keeps the group; a group that does not fit the states is refused
    again = export_checkpoint(exported, str(tmp_path / "again"))
    assert torch.equal(load_checkpoint(again).tensors["valid"]["cells"], valid)
    wrong = export_checkpoint(ae, str(tmp_path / "wrong"), add={"valid": {"cells": valid[:1]}})
    with pytest.raises(CheckpointError, match=r"valid\.safetensors: 'cells' must be \(2, 8, 16\)"):
        inspect_prior(wrong, dn)
    with pytest.raises(PriorMismatchError, match=r"valid cells are \(1, 8, 16\)"):
        LatentPrior.from_checkpoints(wrong, dn)
    with pytest.raises(CheckpointError, match="weights are only copied"):
        export_checkpoint(ae, str(tmp_path / "no"), add={"model": {"cells": valid}})


def test_checkpoints_without_a_card_are_refused(tmp_path):
    from appa.io import load_checkpoint

    ae, dn = _write(tmp_path)
    ckpt = load_checkpoint(dn)
    old = {"kind": "diffusion", "task": ckpt.metadata["card"]}  # the former layout
    save_checkpoint(str(tmp_path / "old"), 7, ckpt.tensors, metadata=old)
    with pytest.raises(PriorMismatchError, match="has no card: it was written by an older"):
        LatentPrior.from_checkpoints(ae, str(tmp_path / "old"))
    broken = {**ckpt.metadata, "card": {**ckpt.metadata["card"], "sigma_data": -1.0}}
    save_checkpoint(str(tmp_path / "broken"), 7, ckpt.tensors, metadata=broken)
    with pytest.raises(PriorMismatchError, match=r"invalid card:\n  card\.diffusion\.sigma_data"):
        LatentPrior.from_checkpoints(ae, str(tmp_path / "broken"))


def test_tasks_run_through_tiny_networks(tiny_prior):
    prior = tiny_prior
    table = station_table(TIMES, n_per_time=4, seed=0)
    # station_table draws positions for the 4 x 8 test grid's latitudes; all in range here
    settings = SamplingConfig(steps=3, corrections=1, iterations=2, stride=2)
    x = reanalysis(prior, table, TIMES, [0, 1], settings)
    assert x.shape == (2, 6, 2, *GRID) and torch.isfinite(x).all()
    assert not torch.allclose(x[0], x[1])
    f = filtering(prior, table, TIMES[:5], [3], settings.model_copy(update={"steps": 2}))
    assert f.shape == (1, 5, 2, *GRID) and torch.isfinite(f).all()
    fc, leads = forecast(
        prior, TIMES[3:4], 3, "6h", [0, 1], initial=x[:, None, 1:4], mode="autoregressive",
        new_states=2, settings=settings.model_copy(update={"steps": 2}),
    )  # fmt: skip
    assert fc.shape == (2, 1, 3, 2, *GRID) and torch.isfinite(fc).all()
    assert list(leads) == [pd.Timedelta(hours=h) for h in (6, 12, 18)]


def test_fitted_latents_decode_to_the_states_the_encoder_misses(tiny_prior):
    """States that are decodings (a reanalysis of this prior) come back from the encoder off;
    fitting through the decoder finds latents that decode to them, ignoring NaN points, and the
    fit of a frame does not depend on which frames share its batch."""
    prior = tiny_prior
    torch.manual_seed(3)
    x = prior.decode(torch.randn(3, 2, *prior.latent_shape))  # (member, time, C, H, W)
    stats = prior.statistics

    def off(states):  # RMSE in standardised units over the finite points of x
        e = stats.standardize(states) - stats.standardize(x)
        return float(e[torch.isfinite(e)].square().mean().sqrt())

    encoded = prior.encode(x)
    torch.testing.assert_close(prior.fit_latents(x, iterations=0), encoded)
    fitted = prior.fit_latents(x, iterations=300)
    assert off(prior.decode(fitted)) < 0.1 * off(prior.decode(encoded))
    assert not torch.allclose(prior.fit_latents(x, iterations=300, learning_rate=0.01), fitted)
    torch.testing.assert_close(
        prior.fit_latents(x, iterations=300, batch_size=2), fitted, rtol=0, atol=1e-4
    )
    holes = x.clone()
    holes[..., 0, :2, :] = float("nan")  # a masked variable's points, e.g. SST over land
    filled = prior.fit_latents(holes, iterations=300)
    assert torch.isfinite(filled).all()
    decoded = prior.decode(filled)
    decoded[..., 0, :2, :] = float("nan")
    assert off(decoded) < 0.1 * off(prior.decode(encoded))
    with pytest.raises(ValueError, match="iterations"):
        prior.fit_latents(x, iterations=-1)


def test_a_known_frames_denoiser_conditions_on_known_states_as_an_input(tmp_path):
    """With a denoiser trained on known frames, tasks hand it the known latents as an input:
    the sample holds them exactly, what follows depends on them, and a forecast runs."""
    from appa.assimilation.tasks import _generators, sample_latents

    prior = LatentPrior.from_checkpoints(*_write(tmp_path, known_frames=True))
    assert prior.known_frames
    assert not LatentPrior.from_checkpoints(*_write(tmp_path / "plain")).known_frames
    torch.manual_seed(1)
    for p in prior.denoiser.backbone.parameters():
        if not p.any():  # zero at initialisation (outputs, adaLN gates): frames would not mix
            torch.nn.init.normal_(p, std=0.1)
    settings = SamplingConfig(sampler="ddim", steps=3)
    known = np.array([True, True, False, False])
    values = torch.randn(2, 4, *prior.latent_shape)
    times = TIMES[:4]

    def draw(v):
        return sample_latents(prior, times, _generators([1, 2], prior.device), settings,
                              known=known, known_values=v)  # fmt: skip

    u = draw(values)
    torch.testing.assert_close(u[:, :2], values[:, :2])
    assert torch.isfinite(u).all()
    other = draw(values + torch.randn_like(values))
    assert not torch.allclose(u[:, 2:], other[:, 2:])  # the known frames reach the network
    with pytest.raises(ValueError, match="known_values"):
        sample_latents(prior, times, _generators([1], prior.device), settings, known=known)
    x = prior.unconditional(2, TIMES, seed=0, sampler="ddim", steps=2)
    fc, _ = forecast(
        prior, TIMES[3:4], 2, "6h", [0, 1], initial=x[:, None, 1:4], mode="autoregressive",
        new_states=2, settings=settings,
    )  # fmt: skip
    assert fc.shape == (2, 1, 2, 2, *GRID) and torch.isfinite(fc).all()


def test_a_date_conditioned_autoencoder_decodes_every_frame_at_its_own_time(tmp_path):
    """With an autoencoder conditioned on dates (and static fields), the observation operator
    decodes each observed frame with that frame's date: decoding only observed frames gives
    what decoding all of them gives, and both equal decoding the trajectory at its times. The
    tasks run through it."""
    from appa.assimilation.operator import WindowObservation
    from appa.diffusion import WindowLayout

    overrides = [*OVERRIDES, "autoencoder.static_channels=1", "autoencoder.date_context=true"]
    preset = get_preset("tiny", overrides)
    torch.manual_seed(0)
    land = (torch.rand(1, *GRID) > 0.7).float()
    ae = AutoencoderObjective(
        preset.autoencoder, LAT.tolist(), channel_names=SPEC.channel_names(),
        state_spec=SPEC.model_dump(mode="json"), statistics=STATS.to_json(), static=land,
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking weights: the context embeddings start at zero
        for name, p in ae.network.named_parameters():
            if "context" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    ae_root = str(tmp_path / "ae" / "checkpoints")
    save_checkpoint(
        ae_root, 5, {"model": ae.network.state_dict()},
        metadata=CheckpointCard(card=ae.card()).dump(),
    )  # fmt: skip
    _, dn_root = _write(tmp_path / "other", trained_on=ae_root)
    prior = LatentPrior.from_checkpoints(ae_root, dn_root)
    assert prior.codec_dates
    assert torch.equal(prior.codec.static, land)

    table = station_table(TIMES, n_per_time=4, seed=0)
    table = table.isel(obs=np.flatnonzero(table.time.values != TIMES[2].to_datetime64()))
    layout = WindowLayout(len(TIMES), prior.window, 2)
    u = torch.randn(2, layout.num_windows, prior.window, *prior.latent_shape)
    windows = u.reshape(-1, prior.window, *prior.latent_shape)
    observed = WindowObservation(prior, layout, TIMES, table, frames="observed")
    every = WindowObservation(prior, layout, TIMES, table, frames="all")
    assert observed.decoded_frames < every.decoded_frames
    with torch.no_grad():
        assert torch.allclose(observed(windows), every(windows), atol=1e-5)
        # a shifted clock changes what the decoder makes of the same latents
        shifted = WindowObservation(prior, layout, TIMES + pd.Timedelta("3h"), None)
        assert shifted.num_obs == 0
        frames = prior.decode(windows[:1, :2], times=TIMES[:2])
        later = prior.decode(windows[:1, :2], times=TIMES[:2] + pd.Timedelta("6h"))
        assert (frames - later).abs().max() > 1e-4

    settings = SamplingConfig(steps=2, corrections=1, iterations=2, stride=2)
    x = reanalysis(prior, table, TIMES, [0], settings)
    assert x.shape == (1, 6, 2, *GRID) and torch.isfinite(x).all()
    fc, _ = forecast(
        prior, TIMES[3:4], 2, "6h", [0], initial=x[:, None, 1:4], mode="autoregressive",
        new_states=2, settings=settings,
    )  # fmt: skip
    assert torch.isfinite(fc).all()
