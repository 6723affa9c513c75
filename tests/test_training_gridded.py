"""Training straight from a gridded store (the toy Earth) through appa.data, the masked
reconstruction loss, and encoding with the spec and statistics a checkpoint carries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
import zarr

from appa.config import ConfigError
from appa.io import load_checkpoint, save_checkpoint
from appa.io.cards import read_card
from appa.nn import WeightedMSE
from appa.nn.presets import get_preset
from appa.training.objectives import AutoencoderLossConfig, AutoencoderObjective

ROOT = Path(__file__).resolve().parents[1]
SMALL_AE = [
    "autoencoder.in_channels=3",
    "autoencoder.grid=[8,16]",
    "autoencoder.channels=[4,8]",
    "autoencoder.blocks=[1,1]",
    "autoencoder.latent_channels=2",
    "denoiser.channels=2",
]


def test_masked_mse_is_the_weighted_mean_over_valid_points():
    lat = [-45.0, 45.0]
    cw = [1.0, 3.0]
    x = torch.randn(2, 2, 2, 3)
    x_hat = torch.randn(2, 2, 2, 3)
    mask = torch.rand(2, 2, 2, 3) > 0.4
    mask[0, 0, 0, 0] = True
    loss = WeightedMSE(lat, cw)(x_hat, x, mask)
    area = torch.tensor([1.0, 1.0])  # symmetric rows: equal areas
    w = torch.tensor(cw)[:, None, None] * area[:, None] * torch.ones(2, 2, 3)
    for b in range(2):
        m = mask[b].double()
        want = ((x_hat[b] - x[b]).double() ** 2 * w * m).sum() / (w * m).sum()
        assert loss[b].item() == pytest.approx(want.item(), rel=1e-5)
    # an all-valid mask is the unmasked loss
    full = torch.ones_like(mask)
    assert torch.allclose(WeightedMSE(lat, cw)(x_hat, x, full), WeightedMSE(lat, cw)(x_hat, x))
    with pytest.raises(ValueError, match="bool"):
        WeightedMSE(lat, cw)(x_hat, x, mask.float())


def test_band_limited_autoencoder_task_builds_its_projection_from_the_latitudes():
    """The task fills the decoder's band-limit buffer from its latitudes, so a trained and
    saved autoencoder carries it; the loss then trains through the projection."""
    from appa.data.spectral import band_limit_projection

    cfg = get_preset(
        "tiny", [*SMALL_AE, "autoencoder.band_limit=3", "autoencoder.band_limited=[1]"]
    )
    lat = np.linspace(-78.75, 78.75, 8)
    task = AutoencoderObjective(cfg.autoencoder, lat)
    want = torch.as_tensor(band_limit_projection(lat, 3), dtype=torch.float32)
    assert torch.equal(task.module.band_limit.matrices, want)
    batch = {"state": torch.randn(2, 3, 8, 16)}
    loss = task.loss(task.module, batch, torch.Generator().manual_seed(0)).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert "band_limit.matrices" in task.module.state_dict()


def _task() -> AutoencoderObjective:
    torch.manual_seed(0)
    cfg = get_preset("tiny", SMALL_AE).autoencoder
    loss = AutoencoderLossConfig(channel_weights=[1.0, 2.0, 0.5])
    return AutoencoderObjective(cfg, np.linspace(-78.75, 78.75, 8), loss)


def test_values_at_masked_points_change_neither_loss_nor_gradients():
    task = _task()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 3, 8, 16)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[:, :, 1, :3, :5] = False  # "land" in channel 1
    other = x.clone()
    other[~mask] = torch.randn(int((~mask).sum())) * 100.0
    other[0, 0, 1, 0, 0] = float("nan")  # stores hold NaN there

    def loss_and_grads(states):
        task.module.zero_grad()
        loss = task.loss(task.module, {"state": states, "mask": mask}, generator).sum()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in task.module.parameters()]

    task.module.eval()  # no latent noise: the two passes see identical networks
    loss_a, grads_a = loss_and_grads(x)
    loss_b, grads_b = loss_and_grads(other)
    assert torch.isfinite(loss_a) and loss_a == loss_b
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
    # values at valid points do matter
    changed = x.clone()
    changed[0, 0, 0, 4, 4] += 1.0
    assert loss_and_grads(changed)[0] != loss_a
    # and validation errors ignore masked points too
    task.module.eval()
    va = task.validate_batch(task.module, {"state": x, "mask": mask}, generator)
    vb = task.validate_batch(task.module, {"state": other, "mask": mask}, generator)
    assert all(torch.equal(va[k][0], vb[k][0]) for k in va)


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory) -> Path:
    """Four days of toy Earth (6-hourly, no spin-up): 16 states on the 64 x 32 grid."""
    from appa.data import ToyEarthConfig, write_toy_earth

    out = tmp_path_factory.mktemp("toy") / "toy_earth.zarr"
    config = ToyEarthConfig(years=4 / 365.2425, spinup_days=0, seed=3, time_chunk=8)
    return write_toy_earth(config, out, progress=False)


def _train_args(store: Path, run: Path, *extra: str) -> list[str]:
    args = [
        "train",
        "autoencoder",
        "--config",
        str(ROOT / "pipelines" / "configs" / "train_autoencoder_toy_earth.yaml"),
    ]
    for item in (
        f"data.source.store={store}",
        "data.source.stats_period=[2000-01-01,2000-01-03T18]",
        "data.source.train=[2000-01-01,2000-01-03T18]",
        "data.source.val=[2000-01-04,2000-01-04T18]",
        "loop.steps=3",
        "loop.batch_size=2",
        "loop.val_every=3",
        "loop.val_batches=1",
        "loop.checkpoint_every=3",
        "loop.progress=false",
        f"run_dir={run}",
        "runner.backend=local",
        *extra,
    ):
        args += ["--set", item]
    return args


def _encode_args(run: Path, store: Path, out: Path) -> list[str]:
    args = ["encode", "--config", str(ROOT / "pipelines/configs/encode_toy_earth.yaml")]
    for item in (
        f"checkpoint={run / 'checkpoints'}",
        f"source={store}",
        f"output={out}",
        "block=5",
        "batch_size=4",
        "stats_period=[2000-01-01,2000-01-03T18]",
        "runner.backend=local",
    ):
        args += ["--set", item]
    return args


@pytest.mark.slow
def test_toy_earth_train_then_encode_end_to_end(toy_store: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from appa.cli import app
    from appa.data import Statistics

    run = tmp_path / "run"
    result = CliRunner().invoke(app, _train_args(toy_store, run))
    assert result.exit_code == 0, result.output
    assert "autoencoder: step=3" in result.output

    # statistics computed over the configured period, stored beside the data
    stats_path = Path(f"{toy_store}.stats.json")
    stats = Statistics.load(stats_path)
    assert stats.extra["requested_period"] == ["2000-01-01", "2000-01-03T18"]
    assert stats.count == 12  # 3 days of 6-hourly states
    config = yaml.safe_load(
        (ROOT / "pipelines/configs/train_autoencoder_toy_earth.yaml").read_text()
    )
    names = ["2m_temperature", "mean_sea_level_pressure", "sea_surface_temperature"]
    assert stats.channels == [*names, "geopotential@500", "temperature@500"]

    # the checkpoint describes itself: spec and statistics
    ckpt = load_checkpoint(str(run / "checkpoints"))
    card = read_card(ckpt.metadata).card
    expected = {**config["data"]["source"]["spec"], "grid": None, "vertical": "pressure"}
    assert card.state_spec.model_dump() == expected
    assert card.statistics["mean"] == pytest.approx(stats.mean.tolist())
    assert card.channel_names == stats.channels
    val = read_card(ckpt.metadata).run.metrics
    assert np.isfinite(val["val_rmse_sea_surface_temperature"])
    # it carries the cells its data hold (sea-surface temperature: the sea), and an export
    # of an older checkpoint without them adds the same from the store
    land = np.isnan(xr.open_zarr(toy_store)["sea_surface_temperature"].isel(time=0).values)
    cells = ckpt.tensors["valid"]["cells"]
    assert cells.dtype == torch.uint8 and cells.shape == (5, 32, 64)
    np.testing.assert_array_equal(cells[2].numpy(), ~land)
    assert cells[[0, 1, 3, 4]].all()
    bare = str(tmp_path / "bare")
    save_checkpoint(bare, 3, {"model": ckpt.tensors["model"]}, metadata=ckpt.metadata)
    args = ["export-checkpoint", bare, str(tmp_path / "added"), "--valid-from", str(toy_store),
            "--period", "2000-01-01", "2000-01-03T18"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    added = load_checkpoint(str(tmp_path / "added"))
    assert torch.equal(added.tensors["valid"]["cells"], cells)
    assert added.files["model.safetensors"] == ckpt.files["model.safetensors"]
    result = CliRunner().invoke(
        app,
        ["export-checkpoint", bare, str(tmp_path / "x"), "--period", "2000-01-01", "2000-01-02"],
    )
    assert result.exit_code == 2 and "--period goes with --valid-from" in result.output

    out = tmp_path / "latents.zarr"
    result = CliRunner().invoke(app, _encode_args(run, toy_store, out))
    assert result.exit_code == 0, result.output
    group = zarr.open_group(str(out), mode="r")
    latent_shape = get_preset("tiny").autoencoder.latent_shape
    assert group["latent"].shape == (16, *latent_shape)
    assert np.isfinite(np.asarray(group["latent"][:])).all()
    times = np.asarray(group["time"][:]).astype("datetime64[ns]")
    assert times[0] == np.datetime64("2000-01-01T00") and times[-1] == np.datetime64(
        "2000-01-04T18"
    )
    provenance = dict(group.attrs["provenance"])
    assert provenance["source_format"] == "gridded"
    assert provenance["checkpoint_step"] == 3
    assert provenance["state_spec"] == card.state_spec.model_dump(mode="json")
    assert provenance["statistics"]["std"] == pytest.approx(stats.std.tolist())
    assert provenance["time_range"] == [
        "2000-01-01T00:00:00.000000000",
        "2000-01-04T18:00:00.000000000",
    ]
    assert len(group.attrs["latent_std"]) == latent_shape[0]

    # the latents are the checkpoint's encoder applied to the standardised, filled states
    from appa.data import WindowDataset
    from appa.training.encode import load_autoencoder

    model, _ = load_autoencoder(str(run / "checkpoints"))
    item = WindowDataset(toy_store, card.state_spec, stats, window=1)[7]
    with torch.no_grad():
        z = model.encode(item["state"], item["date"])
    assert np.allclose(z.numpy(), group["latent"][7:8], atol=1e-5)

    # a config spec that disagrees with the checkpoint's is an error naming it
    spec_args = [
        f"output={tmp_path / 'other.zarr'}",
        "spec={surface: [2m_temperature], atmospheric: [geopotential], levels: [500]}",
    ]
    args = _encode_args(run, toy_store, out)
    result = CliRunner().invoke(app, [*args, *(a for s in spec_args for a in ("--set", s))])
    assert result.exit_code == 2
    assert "spec" in result.output and "differs" in result.output


def test_gridded_config_errors_name_the_culprit(toy_store: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from appa.cli import app

    stats = tmp_path / "stats.json"
    # a spec the preset cannot take: 4 channels for the tiny autoencoder's 5
    result = CliRunner().invoke(
        app,
        _train_args(
            toy_store, tmp_path / "a", f"data.source.statistics={stats}",
            "data.source.spec.levels=[]", "data.source.spec.atmospheric=[]",
            "data.source.spec.surface=[2m_temperature,mean_sea_level_pressure,"
            "sea_surface_temperature,10m_u_component_of_wind]",
        ),
    )  # fmt: skip
    assert result.exit_code == 2 and "expects (channels, lat, lon)" in result.output
    assert not stats.exists()  # no statistics computed for a spec the preset cannot take
    # (eager steps: compiling is not what this test is about, and costs most of its time)
    result = CliRunner().invoke(
        app,
        _train_args(
            toy_store, tmp_path / "a", f"data.source.statistics={stats}", "loop.compile=false"
        ),
    )
    assert result.exit_code == 0, result.output
    # statistics stored for another period are not silently reused
    result = CliRunner().invoke(
        app,
        _train_args(
            toy_store, tmp_path / "b", f"data.source.statistics={stats}",
            "data.source.stats_period=[2000-01-02,2000-01-03]",
        ),
    )  # fmt: skip
    assert result.exit_code == 2 and "stats_period" in result.output
    # a variable the store lacks
    result = CliRunner().invoke(
        app, _train_args(toy_store, tmp_path / "c", "data.source.spec.masked=[]",
                         f"data.source.statistics={tmp_path / 's2.json'}",
                         "data.source.spec.surface=[2m_temperature,total_precipitation,sea_surface_temperature]")
    )  # fmt: skip
    assert result.exit_code == 2 and "total_precipitation" in result.output
    # window-store spans next to a source
    with pytest.raises(ConfigError, match=r"data\.source\.train"):
        from appa.config import load_config
        from appa.jobs.train import TrainAutoencoderConfig

        load_config(
            TrainAutoencoderConfig,
            ROOT / "pipelines/configs/train_autoencoder_toy_earth.yaml",
            ["data.train=[2000-01-01,2000-01-01T18]"],
        )
    assert json.loads(stats.read_text())["channels"][0] == "2m_temperature"


@pytest.mark.slow
def test_autoencoder_with_static_and_date_context_trains_encodes_and_decodes(
    toy_store: Path, tmp_path: Path
):
    """The land-sea mask and orography of the store and the states' dates condition the
    autoencoder (as the toy-Earth config asks; said again here so the test does not depend on
    it): the fields are stored in its weights, encoding passes each state's date, and the prior
    decodes only with times."""
    import pandas as pd
    from typer.testing import CliRunner

    from appa.assimilation import LatentPrior
    from appa.cli import app
    from appa.data.sources import read_static
    from appa.dates import date_features
    from appa.training.encode import load_autoencoder

    static = ["land_sea_mask", "geopotential_at_surface"]
    context = [
        "overrides=[autoencoder.static_channels=2,autoencoder.date_context=true]",
        f"data.source.static=[{','.join(static)}]",
    ]
    run = tmp_path / "run"
    result = CliRunner().invoke(app, _train_args(toy_store, run, *context))
    assert result.exit_code == 0, result.output
    model, meta = load_autoencoder(str(run / "checkpoints"))
    fields, moments = read_static(str(toy_store), static)
    assert torch.equal(model.static, torch.as_tensor(fields))
    data = read_card(load_checkpoint(str(run / "checkpoints")).metadata).run.data
    assert data["static"]["land_sea_mask"] == pytest.approx(list(moments[0]))
    assert np.unique(fields[0]).size == 2  # land and sea, standardised

    out = tmp_path / "latents.zarr"
    result = CliRunner().invoke(app, _encode_args(run, toy_store, out))
    assert result.exit_code == 0, result.output
    group = zarr.open_group(str(out), mode="r")
    times = np.asarray(group["time"][:]).astype("datetime64[ns]")

    from appa.data import WindowDataset

    card = meta["card"]
    spec, stats = card.spec_and_statistics()
    item = WindowDataset(toy_store, spec, stats, window=1)[7]
    with torch.no_grad():
        z = model.encode(item["state"], date_features(times[7:8]))
        z_noon = model.encode(item["state"], date_features(times[7:8] + np.timedelta64(6, "h")))
    assert np.allclose(z.numpy(), group["latent"][7:8], atol=1e-5)
    assert not np.allclose(z_noon.numpy(), z.numpy(), atol=1e-5)  # the date is used

    # a prior over this autoencoder needs times to decode, and uses them
    from appa.diffusion import ScheduleConfig
    from appa.nn.latent import latent_denoiser

    prior = LatentPrior(
        model, latent_denoiser(get_preset("tiny").denoiser), ScheduleConfig().build(),
        spec, stats, model.latent_shape, 4, card.latitudes, card.longitudes,
    )  # fmt: skip
    u = torch.randn(2, 3, *model.latent_shape)
    with pytest.raises(ValueError, match="pass the times"):
        prior.decode(u)
    three = pd.date_range("2000-01-02", periods=3, freq="6h")
    x = prior.decode(u, times=three)
    assert x.shape == (2, 3, 5, 32, 64)
    assert not torch.allclose(x[:, :1], prior.decode(u[:, :1], times=three[1:2]))
    with pytest.raises(ValueError, match="do not fit"):
        prior.decode(u, times=three[:2])


def test_static_fields_must_match_the_preset(toy_store: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from appa.cli import app

    args = _train_args(toy_store, tmp_path / "run", "data.source.static=[land_sea_mask]")
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert "data.source.static names 1" in result.output
    assert "static_channels=2" in result.output
