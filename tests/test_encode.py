"""``appa encode``: latents equal the autoencoder's, blocks resume, statistics and provenance
are written, and Ray Data's actor pool writes the same store as one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from training_utils import smooth_fields

from appa.config import ConfigError
from appa.data.datasets import WindowStoreDataset, write_window_store
from appa.jobs.encode import EncodeConfig, run_encode
from appa.jobs.train import TrainAutoencoderConfig, build_trainer
from appa.training.encode import load_autoencoder

OVERRIDES = [
    "autoencoder.in_channels=2",
    "autoencoder.grid=[8,16]",
    "autoencoder.channels=[8,16]",
    "autoencoder.blocks=[1,1]",
    "autoencoder.latent_channels=4",
    "denoiser.channels=4",
]


@pytest.fixture
def trained(tmp_path: Path) -> tuple[str, str]:
    """A window store of 22 states and a 2-step autoencoder checkpoint trained on it."""
    times = np.arange(22) * np.timedelta64(6, "h") + np.datetime64("2003-01-01", "ns")
    store = write_window_store(
        str(tmp_path / "states.zarr"), smooth_fields(22, 2, (8, 16)).numpy(), times,
        np.linspace(-78.75, 78.75, 8), ["a", "b"], attrs={"state_spec": {"surface": ["a", "b"]}},
    )  # fmt: skip
    job = TrainAutoencoderConfig.model_validate(
        {
            "overrides": OVERRIDES,
            "data": {"path": store},
            "loop": {"steps": 2, "batch_size": 2, "progress": False},
            "run_dir": str(tmp_path / "ae"),
            "runner": {"backend": "local"},
        }
    )
    build_trainer(job).fit()
    return store, str(tmp_path / "ae" / "checkpoints")


def _job(store: str, checkpoint: str, output: str, **runner) -> EncodeConfig:
    return EncodeConfig.model_validate(
        {
            "checkpoint": checkpoint,
            "source": store,
            "output": output,
            "block": 5,
            "batch_size": 3,
            "stats_period": ["2003-01-01", "2003-01-05T18"],
            "runner": {"backend": "local", **runner},
        }
    )


def test_encode_matches_the_autoencoder_and_resumes(trained, tmp_path: Path):
    store, checkpoint = trained
    job = _job(store, checkpoint, str(tmp_path / "latents.zarr"))
    result = run_encode(job)
    assert result["encoded"] == 5 and result["skipped"] == 0  # 22 steps in blocks of 5
    out = zarr.open_group(job.output, mode="r")
    model, _ = load_autoencoder(checkpoint)
    x = smooth_fields(22, 2, (8, 16))
    with torch.no_grad():
        expected = model.encode(x).numpy()
    np.testing.assert_allclose(out["latent"][:], expected, rtol=1e-5, atol=1e-6)
    z = expected[:20].astype(np.float64)
    np.testing.assert_allclose(out.attrs["latent_mean"], z.mean(axis=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(out.attrs["latent_std"], z.std(axis=(0, 2, 3)), rtol=1e-5)
    prov = out.attrs["provenance"]
    assert prov["checkpoint"].endswith("step-000000002") and prov["checkpoint_step"] == 2
    assert prov["state_spec"] == {"surface": ["a", "b"]}
    assert prov["time_range"][0].startswith("2003-01-01T00")
    # the latent store is a window store for diffusion training
    windows = WindowStoreDataset(job.output, window=4, variable="latent")
    assert windows[0]["latent"].shape == (4, 4, 4, 8)

    # lose two blocks (as a crash would): a rerun encodes only those
    flags = zarr.open_group(job.output, mode="r+")["done"]
    flags[1] = 0
    flags[4] = 0
    zarr.open_group(job.output, mode="r+")["latent"][5:10] = 0.0
    again = run_encode(job)
    assert again["encoded"] == 2 and again["skipped"] == 3
    np.testing.assert_allclose(out["latent"][:], expected, rtol=1e-5, atol=1e-6)


def test_encode_refuses_a_store_of_another_checkpoint(trained, tmp_path: Path):
    store, checkpoint = trained
    job = _job(store, checkpoint, str(tmp_path / "latents.zarr"))
    run_encode(job)
    with pytest.raises(ConfigError, match="other settings"):
        run_encode(job.model_copy(update={"block": 4}))
    with pytest.raises(ConfigError, match="no window store"):
        run_encode(job.model_copy(update={"source": str(tmp_path / "none.zarr")}))


def test_encode_on_ray_data_actor_pool(trained, tmp_path: Path, ray_cluster):
    store, checkpoint = trained
    local = _job(store, checkpoint, str(tmp_path / "local.zarr"))
    run_encode(local)
    remote = _job(store, checkpoint, str(tmp_path / "ray.zarr"), backend="ray", workers=2)
    result = run_encode(remote)
    assert result["encoded"] == 5
    a = zarr.open_group(local.output, mode="r")["latent"][:]
    b = zarr.open_group(remote.output, mode="r")["latent"][:]
    np.testing.assert_array_equal(a, b)


def test_cli_encode_with_the_example_config(trained, tmp_path: Path):
    from typer.testing import CliRunner

    from appa.cli import app

    store, checkpoint = trained
    root = Path(__file__).resolve().parents[1]
    args = ["encode", "-c", str(root / "pipelines" / "configs" / "encode_tiny.yaml")]
    for item in (
        f"checkpoint={checkpoint}",
        f"source={store}",
        f"output={tmp_path / 'z.zarr'}",
        "stats_period=[2003-01-01,2003-01-05T18]",
        "block=8",
        "runner.backend=local",
    ):
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "encoded 3 blocks, skipped 0" in result.output
    result = CliRunner().invoke(app, args)
    assert "encoded 0 blocks, skipped 3" in result.output
    bad = CliRunner().invoke(app, [*args[:3], "--set", f"checkpoint={tmp_path}/nothing"])
    assert bad.exit_code == 2 and "no checkpoint" in bad.output
