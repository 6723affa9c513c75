"""The posterior-sampling benchmarks run end to end at toy size (without the azula baseline,
which is installed only for benchmarking)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from npe_utils import needs_sbibm

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--no-azula"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_gmm_benchmark_runs(tmp_path):
    result = tmp_path / "gmm.json"
    stdout = _run(
        "bench_posterior_gmm.py",
        *("--seeds", "1", "--samples", "150", "--steps", "8", "--dims", "8", "--obs", "2"),
        *("--out", str(result)),
    )
    assert "smc_mmps=" in stdout
    (row,) = json.loads(result.read_text())
    assert row["prior"] > row["floor"] and "mmps_exact" in row


def test_linear_gaussian_benchmark_runs(tmp_path):
    result = tmp_path / "lg.json"
    stdout = _run(
        "bench_posterior_linear_gaussian.py",
        *("--samples", "300", "--steps", "8", "--out", str(result)),
    )
    assert "W2:" in stdout
    rows = json.loads(result.read_text())
    assert {r["operator"] for r in rows} == {"dense", "mask"}
    assert all(r["mmps_cg"] < r["prior"] for r in rows)


def test_mmps_step_benchmark_runs(tmp_path):
    result = tmp_path / "mmps.json"
    overrides = [
        "autoencoder.in_channels=5",
        "autoencoder.grid=[8,16]",
        "autoencoder.channels=[8,16]",
        "autoencoder.blocks=[1,1]",
        "autoencoder.latent_channels=4",
        "denoiser.channels=4",
        "denoiser.width=24",
        "denoiser.heads=2",
        "denoiser.depth=1",
        "denoiser.mod_features=16",
    ]
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_mmps_step.py"),
         "--override", *overrides, "--obs", "10", "100", "--iterations", "1", "2",
         "--repeats", "1", "--out", str(result)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "observed/all time ratio" in out.stdout
    rows = json.loads(result.read_text())
    assert len(rows) == 2 * 2 * 2 and {r["frames"] for r in rows} == {"observed", "all"}
    for r in rows:
        assert r["plain_ms"] > 0 and r["total_ratio"] > 0
        # half of the frames hold observations: the observed variant decodes half as many
        if r["frames"] == "observed":
            assert 0 < r["decoded_frames"] < 3 * 4
        else:
            assert r["decoded_frames"] == 3 * 4


@pytest.mark.slow
@needs_sbibm
def test_npe_benchmark_scores_resumes_and_refuses_other_settings(tmp_path):
    script = str(ROOT / "benchmarks" / "bench_npe_sbibm.py")
    common = [
        *("--tasks", "two_moons", "--budgets", "200", "--methods", "appa-flow"),
        *("--samples", "400", "--heldout", "200", "--out", str(tmp_path)),
    ]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, script, *common, *args], capture_output=True, text=True, timeout=300
        )

    first = run("--observations", "1", "--lr-schedule", "plateau")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "held-out pairs" in first.stdout
    (row,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert row["observation"] == 1 and 0.5 <= row["c2st"] <= 1.0
    assert row["settings"]["lr_schedule"] == "plateau" and math.isfinite(row["heldout_logq"])
    assert "appa-flow plateau" in first.stdout and (tmp_path / "c2st.png").stat().st_size > 0
    # a rerun with the same settings scores nothing again
    again = run("--observations", "1", "--lr-schedule", "plateau")
    assert again.returncode == 0 and "obs 1: c2st" not in again.stdout
    # draws made with other settings are never scored as these
    other = run("--observations", "2")
    assert other.returncode != 0 and "give another --out" in other.stdout + other.stderr


def test_observation_misfit_is_what_was_added_to_the_analysis(tmp_path):
    """Observations made from an archive's ensemble mean plus a known offset per network (a
    float sample between two depth levels, read linearly in depth; a surface field at the top
    level): the misfit table gives back each offset."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    from appa.io.archive import write_dataset
    from appa.observations.schema import make_table, write_observations

    rng = np.random.default_rng(0)
    times = pd.date_range("2003-09-01", periods=2, freq="1D")
    lat, lon, level = np.array([41.0, 42.0, 43.0]), np.array([30.0, 31.0, 32.0, 33.0]), [5.0, 45.0]
    # member, time, level, lat, lon
    temperature = (280 + rng.standard_normal((2, 2, 2, 3, 4))).astype(np.float32)
    archive = xr.Dataset(
        {"temperature": (("member", "time", "level", "latitude", "longitude"), temperature)},
        coords={"member": [0, 1], "time": times, "latitude": lat, "longitude": lon,
                "level": ("level", level, {"units": "m", "positive": "down"})},
    )  # fmt: skip
    write_dataset(archive, tmp_path / "archive.zarr")
    mean = temperature.astype(np.float64).mean(0)
    # a float at 15 m (a quarter of the way from 5 to 45 m) on a grid point, offset 0.5 K; the
    # satellite on the top level at another point, offset -0.2 K
    float_value = [0.75 * mean[t, 0, 1, 2] + 0.25 * mean[t, 1, 1, 2] + 0.5 for t in range(2)]
    sst_value = [mean[t, 0, 2, 1] - 0.2 for t in range(2)]
    table = make_table(
        time=np.concatenate([times.values, times.values]),
        latitude=[42.0, 42.0, 43.0, 43.0],
        longitude=[32.0, 32.0, 31.0, 31.0],
        variable="temperature",
        value=float_value + sst_value,
        error_std=[0.01, 0.01, 0.4, 0.4],
        platform=["argo", "argo", "sst", "sst"],
        level=[15.0, 15.0, 5.0, 5.0],
    )
    write_observations(table, tmp_path / "obs")
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "observation_misfit.py"),
         "--observations", str(tmp_path / "obs"), f"mine={tmp_path / 'archive.zarr'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:-1]
        for line in out.stdout.splitlines()
        if line.startswith("| ") and "," in line.split("|")[1]
    }
    argo, sst = rows["argo, temperature"], rows["sst, temperature"]
    assert int(argo[0]) == 2 and float(argo[1]) == pytest.approx(0.01)
    assert float(argo[2]) == pytest.approx(0.5, abs=1e-3)
    assert float(sst[2]) == pytest.approx(0.2, abs=1e-3)
