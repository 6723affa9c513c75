"""``appa npe train | sample | diagnose`` end to end on a tiny budget."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from appa.cli import app
from appa.npe import make_problem, save_pairs


def test_npe_commands_train_sample_diagnose(tmp_path):
    runner = CliRunner()
    task = make_problem("gaussian_mixture")
    theta, x = task.sample_joint(400, seed=0)
    data = save_pairs(tmp_path / "pairs.h5", theta, x)
    config = tmp_path / "npe.yaml"
    config.write_text(
        f"task: gaussian_mixture\ndata: {data}\nout: {tmp_path / 'run'}\nmembers: 2\n"
        "training: {max_epochs: 4, batch_size: 64}\n"
        "estimator: {flow: {transforms: 2, hidden: [16, 16]}}\n"
    )
    common = ["--config", str(config)]
    result = runner.invoke(app, ["npe", "train", *common])
    assert result.exit_code == 0, result.output
    assert next((tmp_path / "run" / "checkpoint").glob("step-*/member1.safetensors")).is_file()
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 2

    result = runner.invoke(
        app,
        [
            "npe",
            "sample",
            *common,
            "--set",
            "sample.samples=300",
            "--set",
            "sample.observation_file=" + str(tmp_path / "x.npy"),
        ],
    )
    assert result.exit_code != 0 and "observation file not found" in repr(result.exception)
    np.save(tmp_path / "x.npy", np.array([1.0, -2.0], dtype=np.float32))
    result = runner.invoke(
        app,
        [
            "npe",
            "sample",
            *common,
            "--set",
            "sample.samples=300",
            "--set",
            "sample.observation_file=" + str(tmp_path / "x.npy"),
        ],
    )
    assert result.exit_code == 0, result.output
    samples = np.load(tmp_path / "run" / "sample" / "samples.npy")
    assert samples.shape == (300, 2) and np.abs(samples).max() <= 10
    assert (tmp_path / "run" / "sample" / "corner.png").is_file()

    result = runner.invoke(
        app,
        [
            "npe",
            "diagnose",
            *common,
            "--set",
            "diagnose.pairs=20",
            "--set",
            "diagnose.posterior_samples=20",
            "--set",
            "diagnose.c2st_observations=[]",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "diagnose" / "diagnostics.json").read_text())
    assert set(report["coverage"]) == {"0.5", "0.68", "0.9", "0.95"}
    assert all(0 <= v <= 1 for v in report["coverage"].values())
    assert (tmp_path / "run" / "diagnose" / "coverage.png").is_file()


def test_npe_bad_config_is_named(tmp_path):
    result = CliRunner().invoke(app, ["npe", "train", "--set", "estimator.kind=gan"])
    assert result.exit_code == 2
    assert "estimator.kind" in result.output
    result = CliRunner().invoke(app, ["npe", "train", "--set", "simulations=5"])
    assert result.exit_code == 2 and "simulations" in result.output
