"""appa lensing simulate | train | reconstruct | diagnose end to end at toy size, observation
files (NPY, Zarr, FITS), and bad input named."""

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from appa.cli import app
from appa.config import load_config
from appa.jobs.lensing import LensingConfig, finite_samples, load_image, read_lenses

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "pipelines" / "configs" / "lensing_tiny.yaml"


def _invoke(command: str, out: Path, *overrides: str):
    args = ["lensing", command, "--config", str(TINY), "--set", f"out={out}"]
    args += ["--set", f"prior={out / 'prior'}"]
    args += [
        "--set",
        f"data.train={out / 'train.zarr'}",
        "--set",
        f"data.validation={out / 'val.zarr'}",
    ]
    for item in overrides:
        args += ["--set", item]
    return CliRunner().invoke(app, args)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lensing")
    for command in ("simulate", "train"):
        result = _invoke(command, out)
        assert result.exit_code == 0, result.output
    return out


def test_simulate_writes_held_out_lenses_with_their_truth(run):
    lenses = read_lenses(run / "lenses.zarr")
    assert len(lenses) == 2 and lenses[0]["source"].shape == (16, 16)
    noise = lenses[0]["image"] - lenses[0]["clean"]
    assert 0.05 < float(noise.std()) < 0.2  # noise_std 0.1 on 256 pixels
    assert 1.0 <= lenses[0]["theta_e"] <= 1.4
    assert (run / "lenses.png").stat().st_size > 5000
    # a second run keeps the stamps it already has
    result = _invoke("simulate", run)
    assert result.exit_code == 0 and "already holds 64 stamps" in result.output


def test_train_writes_a_loadable_prior(run):
    history = json.loads((run / "prior" / "history.json").read_text())
    assert [s for s, _ in history["validation_loss"]] == [10, 20]
    from appa.lensing.prior import GalaxyPrior

    prior = GalaxyPrior.load(run / "prior")
    assert prior.size == 16 and prior.card.config["setup"]["source_size"] == 16


def test_export_writes_float16_ema_weights_with_their_state(run, tmp_path):
    result = _invoke("export", run, f"train.export={tmp_path / 'prior'}")
    assert result.exit_code == 0, result.output
    assert "EMA weights at step 20 of a 20-step schedule" in result.output
    from appa.lensing.prior import GalaxyPrior

    prior = GalaxyPrior.load(tmp_path / "prior")
    assert prior.card.complete is True and prior.card.dtype == "float16"
    assert prior.card.exported_from.step == 20 and prior.card.resume is None
    result = _invoke("export", run)
    assert result.exit_code == 1 and "train.export is not set" in result.output


def test_train_again_resumes_or_names_what_changed(run):
    before = (run / "prior" / "step-000000020" / "checkpoint.json").read_bytes()
    result = _invoke("train", run)
    assert result.exit_code == 0 and "already trained: 20 steps" in result.output
    assert (run / "prior" / "step-000000020" / "checkpoint.json").read_bytes() == before
    result = _invoke("train", run, "train.lr=0.002")
    assert result.exit_code == 1
    assert "differ in ['config.train.lr', 'settings.lr']" in result.output


@pytest.mark.slow
def test_a_killed_train_resumes_to_the_weights_of_an_uninterrupted_one(run, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    from appa.io.checkpoints import list_checkpoints, load_checkpoint

    def command(out):
        args = [str(Path(sys.executable).parent / "appa"), "lensing", "train", "--config"]
        args += [str(TINY), "--set", f"out={out}", "--set", f"data.train={run / 'train.zarr'}"]
        args += ["--set", f"data.validation={run / 'val.zarr'}", "--set", "train.steps=200"]
        return [*args, "--set", "train.checkpoint_every=10"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list_checkpoints(str(tmp_path / "killed" / "prior")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    killed_at = load_checkpoint(str(tmp_path / "killed" / "prior")).step
    if killed_at == 200:
        pytest.skip("the run finished before it could be killed")
    for out in ("killed", "whole"):
        done = subprocess.run(command(tmp_path / out), env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert ("resumed from" in done.stdout) == (out == "killed"), done.stdout
    a = load_checkpoint(str(tmp_path / "killed" / "prior"))
    b = load_checkpoint(str(tmp_path / "whole" / "prior"))
    assert a.step == b.step == 200
    for group in ("model", "raw"):
        for name, tensor in a.tensors[group].items():
            assert torch.equal(tensor, b.tensors[group][name]), (group, name)
    assert a.metadata["training"]["train_loss"] == b.metadata["training"]["train_loss"]


def test_reconstruct_held_out_lens_and_observation_files(run, tmp_path):
    result = _invoke("reconstruct", run)
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "reconstruct" / "lens-0" / "summary.json").read_text())
    assert summary["samples"] == 2 and summary["samples_per_second"] > 0
    assert {"rmse", "gp_rmse", "empirical_rmse", "reduced_chi_square"} <= set(summary)
    assert np.load(run / "reconstruct" / "lens-0" / "samples.npy").shape == (2, 16, 16)
    # the same image from files, with its lens given in the config
    lens = read_lenses(run / "lenses.zarr")[1]
    image = lens["image"].numpy()
    np.save(tmp_path / "obs.npy", image)
    xr.Dataset({"data": (("y", "x"), image)}).to_zarr(tmp_path / "obs.zarr", zarr_format=2)
    spec = (
        f'[{{"kind": "sie", "theta_e": {lens["theta_e"]}, "q": {lens["q"]}, "phi": {lens["phi"]}}}]'
    )
    for name, extra in (("obs.npy", []), ("obs.zarr", ["reconstruct.variable=data"])):
        result = _invoke(
            "reconstruct",
            run,
            f"reconstruct.observation={tmp_path / name}",
            f"reconstruct.lenses={spec}",
            "reconstruct.baselines=[]",
            *extra,
        )
        assert result.exit_code == 0, result.output
        assert (run / "reconstruct" / "obs" / "reconstruction.png").exists()
    np.testing.assert_array_equal(load_image(tmp_path / "obs.zarr", "data").numpy(), image)


def test_fits_observations_read_with_astropy_or_fail_clearly(tmp_path):
    path = tmp_path / "obs.fits"
    try:
        from astropy.io import fits
    except ImportError:
        path.write_bytes(b"SIMPLE")
        with pytest.raises(ImportError, match="reading FITS needs astropy"):
            load_image(path)
        return
    fits.PrimaryHDU(np.arange(12.0).reshape(3, 4)).writeto(path)
    assert load_image(path).shape == (3, 4)


def test_diagnose_reports_every_method(run):
    result = _invoke("diagnose", run)
    assert result.exit_code == 0, result.output
    report = json.loads((run / "diagnose" / "diagnostics.json").read_text())
    assert set(report["summary"]) == {"mmps", "dps", "gp", "empirical"}
    assert set(report["summary"]["mmps"]["coverage_galaxy"]) == {"0.5", "0.68", "0.9", "0.95"}
    assert {e["theta_e_error"] for e in report["wrong_theta_e"]} == {0.0, 0.03}
    (fit,) = report["fitted_lens"]
    assert fit["start_theta_e_error"] == 0.03 and set(fit["fitted"]) == set(fit["truth"])
    for entry in [*report["wrong_theta_e"], fit]:
        assert entry["reduced_chi_square"] > 0 and entry["rmse_galaxy"] > 0
        assert set(entry["coverage_galaxy"]) == {"0.5", "0.68", "0.9", "0.95"}
    assert set(report["prior_quality"]) == {
        "flux",
        "ellipticity",
        "half_light_radius",
        "peak",
        "profile",
        "background",
    }
    for name in ("coverage.png", "prior_quality.png", "lens-0.png", "lens-1.png"):
        assert (run / "diagnose" / name).stat().st_size > 5000
    # parts are cached: a second run (or one of parts in other processes) reuses them
    result = _invoke("diagnose", run, "diagnose.parts=[lenses]", "diagnose.lenses=[1]")
    assert result.exit_code == 0 and "diagnose: lens-1 from" in result.output
    assert "run with every part" in result.output
    result = _invoke("diagnose", run)
    assert result.exit_code == 0 and "diagnose: fit-0 from" in result.output
    assert json.loads((run / "diagnose" / "diagnostics.json").read_text()) == report
    # other settings are computed afresh
    result = _invoke("diagnose", run, "diagnose.parts=[prior]", "diagnose.prior_samples=9")
    assert result.exit_code == 0 and "diagnose: prior from" not in result.output


def test_bad_input_is_named(run, tmp_path):
    result = _invoke("reconstruct", run, "reconstruct.sampling.stepz=3")
    assert result.exit_code == 2 and "reconstruct.sampling.stepz: unknown key" in result.output
    np.save(tmp_path / "obs.npy", np.zeros((16, 16), dtype=np.float32))
    result = _invoke("reconstruct", run, f"reconstruct.observation={tmp_path / 'obs.npy'}")
    assert result.exit_code == 1 and "needs reconstruct.lenses" in result.output
    np.save(tmp_path / "small.npy", np.zeros((8, 8), dtype=np.float32))
    result = _invoke(
        "reconstruct",
        run,
        f"reconstruct.observation={tmp_path / 'small.npy'}",
        'reconstruct.lenses=[{"kind": "sis", "theta_e": 1.0}]',
    )
    assert result.exit_code == 1 and "setup.image_size is 16" in result.output
    result = _invoke("reconstruct", run, "reconstruct.index=[5]")
    assert result.exit_code == 1 and "there are 2 held-out lenses" in result.output
    result = _invoke("simulate", run, "simulate.seed=1")
    assert result.exit_code == 1 and "training or validation seed" in result.output
    (tmp_path / "obs.txt").write_text("1")
    with pytest.raises(ValueError, match=r"unknown image format '\.txt'"):
        load_image(tmp_path / "obs.txt")


def test_committed_configs_load():
    for path in sorted((ROOT / "pipelines" / "configs").glob("lensing_*.yaml")):
        cfg = load_config(LensingConfig, path)
        assert cfg.setup.source_size % 8 == 0


def test_diverged_samples_are_counted_and_left_out():
    import torch

    samples = torch.ones(4, 3, 3)
    samples[1, 0, 0] = float("nan")
    samples[3, 2, 1] = float("inf")
    kept, dropped = finite_samples(samples)
    assert dropped == 2 and kept.shape == (2, 3, 3) and torch.isfinite(kept).all()
    # a finite sample far beyond anything the sampler starts from has diverged too
    samples[2, 1, 1] = -7e4
    kept, dropped = finite_samples(samples, bound=300.0)
    assert dropped == 3 and kept.shape == (1, 3, 3)
    assert finite_samples(samples, bound=1e5)[1] == 2
