"""The sea's prior through the same commands as the atmosphere's: what a regional grid with
depth levels changes (area weights, level weights, statistics of nearly constant deep water,
non-periodic convolutions, the grid a checkpoint carries), and the toy sea trained, encoded,
exported and reanalysed from surface observations end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml
from typer.testing import CliRunner

from appa.config import ConfigError
from appa.data import StateSpec, compute_statistics
from appa.data.grids import area_weights, equiangular_grid, latitude_bounds
from appa.nn import StateAutoencoder, cell_area_weights, level_weights
from appa.nn.layers import GridConv
from appa.nn.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "pipelines" / "configs"
SEA_LAT = 40.5 + 0.203125 * (np.arange(32) + 0.5)  # the toy sea's rows (degrees)


# ------------------------------------------------------------------------ grids and weights
def test_regional_rows_weigh_as_their_areas_and_global_grids_keep_the_poles():
    # a regional box ends half a row beyond its edge rows: weights follow cos(latitude)
    w = area_weights(SEA_LAT)
    cos = np.cos(np.radians(SEA_LAT))
    np.testing.assert_allclose(w, cos / cos.mean(), rtol=1e-5)
    torch.testing.assert_close(cell_area_weights(SEA_LAT), torch.from_numpy(w))
    flipped = cell_area_weights(SEA_LAT[::-1].copy())
    torch.testing.assert_close(flipped, torch.from_numpy(w[::-1].copy()))
    bounds = latitude_bounds(SEA_LAT)
    assert bounds[0] == pytest.approx(40.5) and bounds[-1] == pytest.approx(47.0)
    # global grids, with or without poles, end at the poles (WeatherBench2's definition)
    lat, _ = equiangular_grid("64x32")
    assert latitude_bounds(lat)[[0, -1]].tolist() == [-90.0, 90.0]
    assert latitude_bounds(np.linspace(-90, 90, 121))[[0, -1]].tolist() == [-90.0, 90.0]
    b = np.concatenate([[-90.0], 0.5 * (lat[1:] + lat[:-1]), [90.0]])
    old = np.diff(np.sin(np.radians(b)))
    np.testing.assert_array_equal(area_weights(lat), old / old.mean())
    # a grid that reaches one pole only
    north = np.arange(60.0, 90.1, 2.5)
    assert latitude_bounds(north)[[0, -1]].tolist() == [58.75, 90.0]


def test_depth_levels_weigh_alike_and_pressure_levels_as_before():
    depth = level_weights([None, 2.55, 8.23, 971.18], vertical="depth")
    assert depth.tolist() == [1.0, 1.0, 1.0, 1.0]
    pressure = level_weights([None, 500, 850])
    assert pressure.tolist() == pytest.approx([1.0, 500 / 675, 850 / 675])
    with pytest.raises(ValueError, match="vertical"):
        level_weights([10.0], vertical="height")
    with pytest.raises(ValueError, match=r"depth levels must be positive \(m\)"):
        level_weights([0.0], vertical="depth")


def _sea_like() -> tuple[xr.Dataset, StateSpec]:
    """Two depth levels on a regional grid: a varying surface, a deep level that is constant
    (anoxic water) where there is water, NaN below the floor in the first column."""
    rng = np.random.default_rng(0)
    time = pd.date_range("2000-01-01", periods=6, freq="1D")
    lat, lon = SEA_LAT[:4], np.linspace(28.0, 29.0, 5)
    oxygen = np.empty((6, 2, 4, 5))
    oxygen[:, 0] = 250 + 30 * rng.standard_normal((6, 4, 5))
    oxygen[:, 1] = 0.0
    oxygen[:, 1, :, 0] = np.nan
    depth = xr.DataArray([2.5, 900.0], dims="level", attrs={"units": "m", "positive": "down"})
    ds = xr.Dataset(
        {"oxygen": (("time", "level", "latitude", "longitude"), oxygen)},
        coords={"time": time, "level": depth, "latitude": lat, "longitude": lon},
    )
    spec = StateSpec(atmospheric=["oxygen"], levels=[2.5, 900.0], vertical="depth")
    return ds, spec.model_copy(update={"masked": ["oxygen"]})


def test_statistics_floor_constant_deep_water_and_name_an_empty_level():
    ds, spec = _sea_like()
    period = ("2000-01-01", "2000-01-06")
    with pytest.raises(ValueError, match="zero variance"):
        compute_statistics(ds, spec, period)
    stats = compute_statistics(ds, spec, period, std_floor=0.01)
    surface = np.nanstd(ds.oxygen.values[:, 0])  # equal rows: equal-area cells nearly
    assert stats.std[0] == pytest.approx(surface, rel=2e-3)
    assert stats.std[1] == pytest.approx(0.01 * stats.std[0])
    assert stats.mean[1] == 0.0 and stats.extra["std_floor"] == 0.01
    ds["oxygen"][:, 1] = np.nan
    with pytest.raises(ValueError, match=r"oxygen \(level 900\) holds no valid value"):
        compute_statistics(ds, spec, period, std_floor=0.01)
    with pytest.raises(ValueError, match="std_floor"):
        compute_statistics(ds, spec, period, std_floor=1.0)


# ------------------------------------------------------------------------ networks
def test_regional_convolutions_do_not_wrap_around():
    conv = GridConv(1, 1, 3, periodic=False)
    periodic = GridConv(1, 1, 3)
    periodic.load_state_dict(conv.state_dict())
    x = torch.randn(1, 1, 4, 8)
    y = x.clone()
    y[..., -1] += 1.0  # the east edge
    with torch.no_grad():
        assert torch.equal(conv(x)[..., 0], conv(y)[..., 0])  # the west edge does not see it
        assert not torch.equal(periodic(x)[..., 0], periodic(y)[..., 0])
        # inside, both are the same convolution
        assert torch.equal(conv(x)[..., 1:-1], periodic(x)[..., 1:-1])


REGIONAL = [
    "autoencoder.in_channels=3",
    "autoencoder.grid=[8,64]",
    "autoencoder.channels=[4,8]",
    "autoencoder.blocks=[1,1]",
    "autoencoder.latent_channels=2",
    "autoencoder.lat_padding=zeros",
    "autoencoder.periodic_lon=false",
    "denoiser.channels=2",
    "denoiser.periodic_lon=false",
]


def test_regional_autoencoder_keeps_east_and_west_apart():
    torch.manual_seed(0)
    net = StateAutoencoder(get_preset("tiny", REGIONAL).autoencoder).eval()
    x = torch.randn(1, 3, 8, 64)
    y = x.clone()
    y[..., -1] += 1.0
    with torch.no_grad():
        zx, zy = net.encode(x), net.encode(y)
    # the latent's western half never sees the eastern edge (a reach of 11 columns)
    assert torch.equal(zx[..., :16], zy[..., :16])
    assert not torch.equal(zx[..., -1], zy[..., -1])
    with pytest.raises(ConfigError, match="periodic_lon=false"):
        get_preset("tiny", [*REGIONAL, "autoencoder.date_context=true"])
    with pytest.raises(ConfigError, match="lat_padding"):
        get_preset("tiny", [*REGIONAL, "autoencoder.lat_padding=pole-half"])
    with pytest.raises(ConfigError, match=r"denoiser\.periodic_lon needs a periodic"):
        get_preset("tiny", [*REGIONAL, "denoiser.periodic_lon=true"])


# ------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def sea(tmp_path_factory) -> Path:
    """Three weeks of a small toy sea (16 x 32 cells, 16 levels, a short spin-up: a wiring
    test, not a skill test)."""
    from appa.data.toy_sea import ToySeaConfig, generate_toy_sea

    folder = tmp_path_factory.mktemp("sea")
    config = ToySeaConfig(
        nlat=16, nlon=32, n_levels=16, start="2003-08-01", days=21, spinup_days=5, seed=1
    )
    return generate_toy_sea(config, folder / "sea.zarr", progress=False)


def _config(name: str, folder: Path, **updates) -> Path:
    """A committed config with ``updates`` (dotted keys) written beside the test's files."""
    doc = yaml.safe_load((CONFIGS / name).read_text())
    for key, value in updates.items():
        *parents, last = key.split(".")
        node = doc
        for part in parents:
            node = node[part]
        node[last] = value
    path = folder / name
    path.write_text(yaml.safe_dump(doc))
    return path


def _invoke(*args: str) -> str:
    from appa.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_toy_sea_prior_trains_encodes_and_reanalyses(sea: Path, tmp_path: Path, ray_cluster):
    from appa.io.archive import Archive
    from appa.io.cards import read_card
    from appa.io.checkpoints import load_checkpoint

    levels = xr.open_zarr(sea)["level"].values.tolist()
    channels = 1 + 4 * len(levels)
    small = [
        f"autoencoder.in_channels={channels}",
        "autoencoder.grid=[16,32]",
        "autoencoder.lat_padding=zeros",
        "autoencoder.periodic_lon=false",
        "autoencoder.latent_channels=4",
        "denoiser.channels=4",
        "denoiser.periodic_lon=false",
        "denoiser.window=4",
        "denoiser.head_channels=4",
        "denoiser.head_skip=true",
    ]
    loop = {"steps": 3, "batch_size": 2, "val_every": 3, "val_batches": 1,
            "checkpoint_every": 3, "progress": False, "compile": False}  # fmt: skip
    ae = _config(
        "train_autoencoder_toy_sea.yaml", tmp_path,
        overrides=small, run_dir=str(tmp_path / "ae"),
        **{"data.source.store": str(sea), "data.source.spec.levels": levels,
           "data.source.stats_period": ["2003-08-01", "2003-08-12"],
           "data.source.train": ["2003-08-01", "2003-08-12"],
           "data.source.val": ["2003-08-13", "2003-08-15"], "loop": loop},
    )  # fmt: skip
    _invoke("train", "autoencoder", "--config", str(ae))
    card = read_card(load_checkpoint(str(tmp_path / "ae" / "checkpoints")).metadata).card
    longitude = xr.open_zarr(sea)["longitude"].values
    assert card.longitudes == pytest.approx(longitude.tolist())  # the regional grid, kept
    assert card.channel_weights == [1.0] * channels
    assert card.state_spec.vertical == "depth"

    encode = _config(
        "encode_toy_sea.yaml", tmp_path, checkpoint=str(tmp_path / "ae" / "checkpoints"),
        source=str(sea), output=str(tmp_path / "latents.zarr"),
        stats_period=["2003-08-01", "2003-08-12"], block=8,
    )  # fmt: skip
    _invoke("encode", "--config", str(encode))
    dn = _config(
        "train_diffusion_toy_sea.yaml", tmp_path, overrides=small,
        run_dir=str(tmp_path / "dn"), **{"loop": loop, "data.path": str(tmp_path / "latents.zarr"),
        "data.train": ["2003-08-01", "2003-08-12"], "data.val": ["2003-08-13", "2003-08-21"]},
    )  # fmt: skip
    _invoke("train", "diffusion", "--config", str(dn))
    prior = tmp_path / "prior"
    for part, run in (("autoencoder", "ae"), ("diffusion", "dn")):
        _invoke("export-checkpoint", str(tmp_path / run / "checkpoints"), str(prior / part))

    obs = tmp_path / "obs"
    _invoke(
        "observe", "--truth", str(sea), "--out", str(obs),
        "--config", str(CONFIGS / "observe_sea.yaml"), "--set", "floats.enabled=false",
        "--set", "start=2003-08-16", "--set", "end=2003-08-19",
    )  # fmt: skip
    job = _config(
        "reanalysis_toy_sea_surface.yaml", tmp_path, observations=[str(obs)],
        start="2003-08-16T00:00", end="2003-08-19T00:00", members=2,
        output=str(tmp_path / "reanalysis.zarr"),
        **{"prior.path": str(prior), "prior.device": "cpu", "sampling.steps": 2,
           "sampling.corrections": 0, "sampling.iterations": 1, "runner.workers": 1,
           "runner.progress": False},
    )  # fmt: skip
    _invoke("reanalysis", "--config", str(job))
    archive = Archive(str(tmp_path / "reanalysis.zarr"))
    assert archive.complete
    ds = xr.open_zarr(tmp_path / "reanalysis.zarr")
    assert ds.sizes["member"] == 2 and ds.sizes["time"] == 4
    np.testing.assert_allclose(ds["longitude"].values, longitude)
    assert ds["level"].values.tolist() == levels
    truth = xr.open_zarr(sea)["temperature"].sel(time=ds.time)
    sea_cells = np.broadcast_to(truth.notnull().values, ds["temperature"].shape)
    # values over the sea, NaN on land and below the sea floor (the autoencoder's valid cells)
    assert np.isfinite(ds["temperature"].values[sea_cells]).all()
    assert np.isnan(ds["temperature"].values[~sea_cells]).all() and (~sea_cells).any()


def test_climate_comparison_reports_constant_deep_water_without_judging_it():
    from appa.metrics.climate import compare_climate

    rng = np.random.default_rng(1)
    data = rng.standard_normal((3, 4, 2, 4, 8))
    data[:, :, 1] = 0.0  # anoxic: exactly constant
    samples = data + 0.01 * rng.standard_normal(data.shape)
    climate = compare_climate(samples, data, SEA_LAT[:4], ["oxygen@2.55", "oxygen@900"])
    assert not any(line.startswith("oxygen@900") for line in climate.departures())
    row = climate.table().splitlines()[2]
    assert row.startswith("oxygen@900") and row.split()[-2:] == ["-", "-"]


def test_the_atmospheres_cards_read_and_dump_as_they_were_written():
    """A global grid's autoencoder config and card carry neither ``periodic_lon`` nor
    ``regional_longitudes``: runs resume and cards compare as before regional grids."""
    import json

    from appa.io.cards import read_card
    from appa.io.checkpoints import load_checkpoint

    path = ROOT / "pipelines" / "priors" / "toy-earth-tiny" / "autoencoder"
    ckpt = load_checkpoint(str(path))
    card = read_card(ckpt.metadata)
    written = json.loads(json.dumps(ckpt.metadata["card"]))
    dumped = card.card.model_dump(mode="json")
    assert set(dumped) == set(written)
    assert dumped["autoencoder"] == written["autoencoder"]
    assert card.card.longitudes == (np.arange(64) * 5.625).tolist()
    assert "periodic_lon" not in get_preset("tiny").model_dump()["autoencoder"]
