"""The window plan of ``benchmarks/ocean_comparison.py``: which days the sea's comparison
reanalyses (the run itself drives the CLI for minutes and is not part of the suite)."""

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plan():
    spec = importlib.util.spec_from_file_location(
        "ocean_comparison", ROOT / "benchmarks" / "ocean_comparison.py"
    )
    module = importlib.util.module_from_spec(spec)
    # the benchmark imports its neighbour module as a script run from benchmarks/ would
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def test_configs_windows_are_two_weeks(plan):
    assert {plan.window_length(c) for c in plan.CONFIGS.values()} == {14}


def test_season_windows_cover_every_day_once(plan):
    windows = plan.season_windows(2003, 14)
    days = windows[0].append(windows[1:])
    season = pd.date_range("2003-06-01", "2003-11-30", freq="1D")
    assert days.equals(season)  # 183 days, none twice, in order
    assert [len(w) for w in windows] == [14] * 12 + [15]  # the remainder joins the last
    assert windows[8][0] == pd.Timestamp("2003-09-21")


def test_every_offset_and_limit_pick_windows(plan):
    windows = plan.season_windows(2002, 14)
    picked = plan.chosen(windows, every=2, offset=8, limit=2)
    assert [w[0].strftime("%m-%d") for w in picked] == ["09-21", "10-19"]
    assert len(plan.chosen(windows, every=3, offset=0, limit=None)) == 5  # 0, 3, 6, 9, 12
    with pytest.raises(ValueError, match="--offset 13"):
        plan.chosen(windows, every=1, offset=13, limit=None)
    with pytest.raises(ValueError, match="shorter than a window"):
        plan.season_windows(2002, 200)
