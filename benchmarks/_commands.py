"""Running ``appa`` commands from a benchmark as a user would type them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    """``message`` after the wall-clock time, flushed (benchmarks run for minutes)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def appa(*args: str) -> str:
    """Runs ``appa ARGS`` from the repository root (printed as a user would type it); its
    output, or exit naming the command and showing its output on failure."""
    command = shutil.which("appa", path=str(Path(sys.executable).parent)) or "appa"
    log("appa " + " ".join(args))
    # wide enough for the evaluation tables' cells not to wrap
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run([command, *args], capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        sys.exit(f"appa {args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout
