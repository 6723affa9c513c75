"""Shared data of the reliability catalogue: a few days of toy Earth, the demo's kind of
observation network over them, the committed tiny prior, and ``base``: a 2-member, 2-day
reanalysis job over that data (small sampling settings: these tests check what a job accepts,
refuses, reports and writes, not its skill)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# the suite's helper modules (pool_utils, ...) live one folder up
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[2]
PRIOR = ROOT / "pipelines" / "priors" / "toy-earth-tiny"


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict[str, str]:
    """Four days of toy Earth from 2003-03-01 (a short spin-up) and stations and a polar
    orbiter observing them, as the demo does."""
    from worlds import toy_world

    truth, obs = toy_world(tmp_path_factory.mktemp("reliability-world"), days=4)
    return {"truth": truth, "observations": obs, "prior": str(PRIOR)}


@pytest.fixture
def base(world, tmp_path) -> dict:
    """The config document of a 2-member, 2-day reanalysis of ``world`` into
    ``tmp_path/reanalysis.zarr`` (a fresh copy per test: edit it freely)."""
    return {
        "task": "reanalysis",
        "prior": {"path": world["prior"], "device": "cpu"},
        "observations": [world["observations"]],
        "start": "2003-03-01T00:00",
        "end": "2003-03-02T18:00",  # 8 states: one window of the prior
        "members": 2,
        "seed": 0,
        "sampling": {"sampler": "pc", "steps": 3, "corrections": 1, "iterations": 1},
        "output": str(tmp_path / "reanalysis.zarr"),
        "runner": {"cpus_per_worker": 1, "progress": False, "stall_timeout_s": 300},
    }
