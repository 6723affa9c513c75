"""Kill a training process with SIGKILL after a checkpoint, start it again: it resumes from
the last checkpoint and ends with the weights of an uninterrupted run (fixed seeds, CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from training_utils import smooth_fields

from appa.config import load_config
from appa.data.datasets import write_window_store
from appa.io import list_checkpoints, load_checkpoint
from appa.jobs.train import TrainAutoencoderConfig, run_training

OVERRIDES = [
    "autoencoder.in_channels=2",
    "autoencoder.grid=[8,16]",
    "autoencoder.channels=[8,16]",
    "autoencoder.blocks=[1,1]",
    "autoencoder.latent_channels=4",
    "autoencoder.latent_noise=0.05",
    "denoiser.channels=4",
]


def _config(tmp_path: Path, store: str, run: str) -> Path:
    doc = {
        "overrides": OVERRIDES,
        "data": {"path": store, "train": ["2002-01-01", "2002-01-05T18"]},
        "loop": {"steps": 60, "batch_size": 2, "log_every": 5, "checkpoint_every": 10,
                 "keep_checkpoints": 2, "progress": False, "seed": 3},
        "optim": {"lr": 1e-3, "warmup_steps": 5, "accumulation": 2},
        "run_dir": str(tmp_path / run),
        "runner": {"backend": "local", "torch_threads": 1},
    }  # fmt: skip
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _command(config: Path) -> list[str]:
    return [str(Path(sys.executable).parent / "appa"), "train", "autoencoder", "-c", str(config)]


def test_sigkill_then_rerun_matches_uninterrupted_run(tmp_path: Path):
    times = np.arange(20) * np.timedelta64(6, "h") + np.datetime64("2002-01-01", "ns")
    store = write_window_store(
        str(tmp_path / "s.zarr"), smooth_fields(20, 2, (8, 16)).numpy(), times,
        np.linspace(-78.75, 78.75, 8),
    )  # fmt: skip
    config = _config(tmp_path, store, "killed")
    checkpoints = str(tmp_path / "killed" / "checkpoints")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _command(config), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(checkpoints):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(checkpoints).step
    if killed_at == 60:
        pytest.skip("the run finished before it could be killed (machine too fast)")

    rerun = subprocess.run(_command(config), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    resumed = load_checkpoint(checkpoints)
    assert resumed.step == 60

    # the uninterrupted reference, in this process
    reference_job = load_config(TrainAutoencoderConfig, _config(tmp_path, store, "straight"))
    run_training(reference_job)
    straight = load_checkpoint(str(tmp_path / "straight" / "checkpoints"))
    for k, v in straight.tensors["model"].items():
        assert torch.equal(resumed.tensors["model"][k], v), k  # bitwise
    # the killed run resumed (its log has one row per log step, none repeated)
    rows = (tmp_path / "killed" / "train.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(5, 61, 5))
    print(f"killed after checkpoint {killed_at}; resumed to 60")
