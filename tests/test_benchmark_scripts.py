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
