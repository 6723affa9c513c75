"""The posterior-sampling benchmarks run end to end at toy size (without the azula baseline,
which is installed only for benchmarking)."""

import json
import subprocess
import sys
from pathlib import Path

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
