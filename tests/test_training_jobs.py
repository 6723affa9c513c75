"""Training jobs from configs over window stores: local runs, config errors, Ray Train (2 CPU
workers, DDP over gloo) against an equivalent single-process run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from training_utils import smooth_fields

from appa.config import ConfigError, load_config
from appa.data.datasets import WindowStoreDataset, write_window_store
from appa.io import load_checkpoint
from appa.io.cards import read_card
from appa.jobs.train import (
    TrainAutoencoderConfig,
    TrainDiffusionConfig,
    build_trainer,
    run_training,
)

AE_OVERRIDES = [
    "autoencoder.in_channels=2",
    "autoencoder.grid=[8,16]",
    "autoencoder.channels=[8,16]",
    "autoencoder.blocks=[1,1]",
    "autoencoder.latent_channels=4",
    "denoiser.channels=4",
]
DIT_OVERRIDES = [
    "autoencoder.latent_channels=4",
    "denoiser.channels=4",
    "denoiser.width=24",
    "denoiser.heads=2",
    "denoiser.depth=1",
    "denoiser.mod_features=16",
]


def _times(n: int) -> np.ndarray:
    return np.arange(n) * np.timedelta64(6, "h") + np.datetime64("2001-03-01T00", "ns")


@pytest.fixture
def state_store(tmp_path: Path) -> str:
    series = smooth_fields(16, 2, (8, 16)).numpy()
    lat = np.linspace(-78.75, 78.75, 8)
    return write_window_store(
        str(tmp_path / "states.zarr"), series, _times(16), lat, ["t2m", "msl"]
    )


@pytest.fixture
def latent_store(tmp_path: Path) -> str:
    series = 3.0 * smooth_fields(20, 4, (4, 8), seed=4).numpy() + 1.0
    lat = np.linspace(-67.5, 67.5, 4)
    return write_window_store(
        str(tmp_path / "latents.zarr"), series, _times(20), lat, variable="latent"
    )


def _ae_job(store: str, run_dir: Path, **runner) -> TrainAutoencoderConfig:
    return TrainAutoencoderConfig.model_validate(
        {
            "overrides": AE_OVERRIDES,
            "data": {
                "path": store,
                "train": ["2001-03-01", "2001-03-03T18"],
                "val": ["2001-03-04", "2001-03-04T18"],
            },
            "window": 2,
            "loop": {
                "steps": 4,
                "batch_size": 2,
                "log_every": 2,
                "val_every": 4,
                "checkpoint_every": 2,
                "progress": False,
            },
            "optim": {"lr": 1e-3, "warmup_steps": 1},
            "run_dir": str(run_dir),
            "runner": {"backend": "local", **runner},
        }
    )


def test_window_store_items_and_errors(state_store: str):
    data = WindowStoreDataset(state_store, window=3, period=("2001-03-01T12", "2001-03-03T06"))
    assert len(data) == 6
    item = data[1]
    assert item["state"].shape == (3, 2, 8, 16) and item["date"].shape == (3, 4)
    expected = smooth_fields(16, 2, (8, 16))[3:6]
    assert torch.equal(item["state"], expected)
    assert item["time"][0] == _times(16)[3].astype(np.int64)
    # a span under the memory limit is served from memory, the same items as window reads
    streamed = WindowStoreDataset(
        state_store, window=3, period=("2001-03-01T12", "2001-03-03T06"), memory_limit=0
    )
    assert data.in_memory and not streamed.in_memory
    for i in range(len(data)):
        assert all(torch.equal(data[i][k], streamed[i][k]) for k in item)
    data[0]["state"].zero_()  # items are copies: editing one leaves the cache alone
    assert torch.equal(data[0]["state"], streamed[0]["state"])
    with pytest.raises(ValueError, match="holds no window"):
        WindowStoreDataset(state_store, window=5, period=("2001-03-01", "2001-03-01T12"))
    with pytest.raises(KeyError, match="no array 'latent'"):
        WindowStoreDataset(state_store, window=1, variable="latent")
    with pytest.raises(ValueError, match="NaN"):
        write_window_store("/tmp/never", np.full((2, 1, 2, 2), np.nan), _times(2), [0, 1])


def test_autoencoder_job_runs_locally_and_resumes(state_store: str, tmp_path: Path):
    job = _ae_job(state_store, tmp_path / "run")
    metrics = run_training(job)
    assert metrics["step"] == 4 and np.isfinite(metrics["val_rmse"])
    assert {"val_rmse_t2m", "val_rmse_msl"} <= set(metrics)
    ckpt = load_checkpoint(str(tmp_path / "run" / "checkpoints"))
    run = read_card(ckpt.metadata).run
    assert run.job["preset"] == "tiny"
    assert run.data["channel_names"] == ["t2m", "msl"]
    # a longer rerun of the same job continues from step 4
    longer = job.model_copy(update={"loop": job.loop.model_copy(update={"steps": 6})})
    trainer = build_trainer(longer)
    assert trainer.step == 4
    trainer.fit()
    assert load_checkpoint(str(tmp_path / "run" / "checkpoints")).step == 6


def test_diffusion_job_computes_latent_statistics(latent_store: str, tmp_path: Path):
    job = TrainDiffusionConfig.model_validate(
        {
            "overrides": DIT_OVERRIDES,
            "data": {
                "path": latent_store,
                "train": ["2001-03-01", "2001-03-04T18"],
                "val": ["2001-03-05", "2001-03-05T18"],
            },
            "loop": {"steps": 2, "batch_size": 2, "val_every": 2, "progress": False},
            "run_dir": str(tmp_path / "dit"),
            "runner": {"backend": "local"},
        }
    )
    trainer = build_trainer(job)
    z = smooth_fields(20, 4, (4, 8), seed=4)[:16].double() * 3.0 + 1.0
    mean = z.mean(dim=(0, 2, 3))
    std = z.std(dim=(0, 2, 3), unbiased=False)
    assert np.allclose(trainer.objective.latent_mean, mean.numpy(), atol=1e-5)
    assert np.allclose(trainer.objective.latent_std, std.numpy(), rtol=1e-5)
    metrics = trainer.fit()
    assert len([k for k in metrics if k.startswith("val_loss_sigma")]) == 6


def test_job_config_errors_name_the_culprit(state_store: str, tmp_path: Path):
    job = _ae_job(state_store, tmp_path / "x")
    bad = job.model_copy(update={"overrides": [*AE_OVERRIDES, "autoencoder.in_channels=3"]})
    with pytest.raises(ConfigError, match=r"states\.zarr/state holds states \(2, 8, 16\)"):
        build_trainer(bad)
    path = tmp_path / "bad.yaml"
    path.write_text("data: {path: x}\nloop: {stepz: 3}\n")
    with pytest.raises(ConfigError, match=r"loop\.stepz: unknown key"):
        load_config(TrainAutoencoderConfig, path)
    path.write_text("data: {path: x}\ntendency_weight: 1.0\n")
    with pytest.raises(ConfigError, match=r"tendency_weight=1\.0 .*window >= 2 \(got window=1\)"):
        load_config(TrainAutoencoderConfig, path)


@pytest.mark.slow
def test_ray_train_two_workers_matches_one_process(state_store, tmp_path, ray_cluster):
    """2 Ray Train workers with batch 2 (DDP, gloo) take the same steps as one process with
    batch 4: the same samples (the stream is split by rank) and averaged gradients."""
    ray_job = _ae_job(state_store, tmp_path / "ray", backend="ray", workers=2)
    metrics = run_training(ray_job)
    assert metrics["step"] == 4

    local = _ae_job(state_store, tmp_path / "local")
    local = local.model_copy(update={"loop": local.loop.model_copy(update={"batch_size": 4})})
    reference = run_training(local)
    a = load_checkpoint(str(tmp_path / "ray" / "checkpoints"))
    b = load_checkpoint(str(tmp_path / "local" / "checkpoints"))
    assert a.step == b.step == 4
    for k, v in b.tensors["model"].items():
        torch.testing.assert_close(a.tensors["model"][k], v, rtol=1e-4, atol=1e-5)
    assert metrics["loss"] == pytest.approx(reference["loss"], rel=1e-4)
    assert (tmp_path / "ray" / "train.csv").exists()


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("command", "config"),
    [
        ("autoencoder", "train_autoencoder_tiny.yaml"),
        ("diffusion", "train_diffusion_tiny.yaml"),
    ],
)
def test_cli_runs_the_example_configs(command, config, state_store, latent_store, tmp_path):
    from typer.testing import CliRunner

    from appa.cli import app

    store = state_store if command == "autoencoder" else latent_store
    overrides = AE_OVERRIDES if command == "autoencoder" else DIT_OVERRIDES
    args = [
        "train",
        command,
        "--config",
        str(ROOT / "pipelines" / "configs" / config),
        "--set",
        f"data.path={store}",
        "--set",
        "data.train=[2001-03-01,2001-03-03T18]",
        "--set",
        "data.val=[2001-03-04,2001-03-04T18]",
        "--set",
        f"overrides={overrides}",
        "--set",
        "loop.steps=2",
        "--set",
        "loop.batch_size=2",
        "--set",
        "loop.val_every=2",
        "--set",
        "loop.progress=false",
        "--set",
        f"run_dir={tmp_path / 'run'}",
        "--set",
        "runner.backend=local",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"{command}: step=2" in result.output
    assert load_checkpoint(str(tmp_path / "run" / "checkpoints")).step == 2


def test_cli_reports_bad_configs(tmp_path):
    from typer.testing import CliRunner

    from appa.cli import app

    result = CliRunner().invoke(
        app, ["train", "autoencoder", "--set", "data.path=/nowhere.zarr", "--set", "loop.steps=0"]
    )
    assert result.exit_code == 2 and "loop.steps" in result.output
    result = CliRunner().invoke(
        app, ["train", "diffusion", "--set", f"data.path={tmp_path}/missing.zarr"]
    )
    assert result.exit_code == 2 and "missing.zarr" in result.output


def _train_worker_pids() -> list[int]:
    """Ray Train worker processes descending from this test process (Linux /proc)."""
    import os

    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                titles[int(entry)] = f.read().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return sorted(p for p, t in titles.items() if "RayTrainWorker" in t and descends(p))


@pytest.mark.slow  # about 4 min on 2 loaded cores: Ray detects the death, then restarts
def test_ray_train_restarts_a_killed_worker_from_the_last_checkpoint(
    state_store, tmp_path, ray_cluster
):
    """SIGKILL of one Ray Train worker after the first checkpoint: with ``max_failures=1``
    Ray restarts the worker group, which resumes from that checkpoint and ends with the
    weights of an uninterrupted run."""
    import os
    import signal
    import threading
    import time

    from appa.io import list_checkpoints

    def job(run: str, **runner):
        j = _ae_job(state_store, tmp_path / run, backend="ray", workers=2, **runner)
        loop = j.loop.model_copy(update={"steps": 40, "checkpoint_every": 4})
        return j.model_copy(update={"loop": loop})

    killed: list[int] = []

    def kill_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            found = list_checkpoints(str(tmp_path / "failing" / "checkpoints"))
            if found and found[-1][0] < 40:
                pids = _train_worker_pids()
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    killed.append(found[-1][0])
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    metrics = run_training(job("failing", max_failures=1))
    killer.join(timeout=5)
    if not killed:
        pytest.skip("the run finished before a worker could be killed (machine too fast)")
    assert metrics["step"] == 40
    run_training(job("straight"))
    a = load_checkpoint(str(tmp_path / "failing" / "checkpoints"))
    b = load_checkpoint(str(tmp_path / "straight" / "checkpoints"))
    assert a.step == b.step == 40
    for k, v in b.tensors["model"].items():
        torch.testing.assert_close(a.tensors["model"][k], v, rtol=0, atol=0)
