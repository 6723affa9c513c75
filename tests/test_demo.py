"""``appa demo`` end to end at toy size: a short toy Earth whose January serves as the
baselines' training period, two members reanalysing two February days with a few sampler steps,
scores, figures and the summary (the full demo is the README's main command)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr
import yaml
from typer.testing import CliRunner

from appa.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end(tmp_path: Path, ray_cluster):
    config = yaml.safe_load((ROOT / "pipelines" / "configs" / "demo.yaml").read_text())
    config.update(
        out=str(tmp_path / "demo"),
        truth=str(tmp_path / "toy.zarr"),
        toy_earth={"years": 0.12, "seed": 4, "start": "2003-01-01", "spinup_days": 10},
        start="2003-02-10T00:00",
        end="2003-02-11T18:00",
        members=2,
    )
    config["prior"] = {"path": str(ROOT / "pipelines" / "priors" / "toy-earth-tiny")}
    config["sampling"].update(steps=2, corrections=0, iterations=1)
    config["baselines"].update(train_start="2003-01-01", train_end="2003-01-31T18:00")
    config["baselines"]["enoi"]["ensemble_size"] = 16
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))

    result = CliRunner().invoke(app, ["demo", "--config", str(path)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "demo"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["scores"]) == {"appa", "climatology", "enoi"}
    appa = summary["scores"]["appa"]["temperature@500"]
    assert np.isfinite(appa["rmse"]) and appa["rmse"] > 0 and np.isfinite(appa["spread_skill"])
    for figure in summary["figures"]:
        assert Path(figure).stat().st_size > 10_000, figure
    archive = xr.open_zarr(out / "reanalysis.zarr")
    assert dict(archive.sizes)["member"] == 2 and dict(archive.sizes)["time"] == 8
    assert "spread/skill" in result.output and "RMSE" in result.output


def test_the_demo_describes_its_scores_in_words():
    from appa.jobs.demo import DemoResult, describe

    def scores(rmse, ssr):
        return {"rmse": rmse, "spread_skill": ssr, "crps": rmse / 2}

    result = DemoResult(
        archive="a", baselines={}, table="t", figures=[], seconds={},
        scores={
            "appa": {"2m_temperature": scores(1.0, 0.69), "temperature@500": scores(0.9, 1.0)},
            "climatology": {"2m_temperature": scores(4.0, float("nan")),
                            "temperature@500": scores(3.0, float("nan"))},
            "enoi": {"2m_temperature": scores(2.0, 1.0), "temperature@500": scores(1.8, 1.0)},
        },
    )  # fmt: skip
    lines = describe(result, observed=["2m_temperature"])
    assert lines == [
        "2m_temperature (observed): RMSE 1 K, 25% of climatology's and 50% of EnOI's; "
        "spread/skill 0.69, under-dispersed: the members spread less than their error",
        "temperature@500 (not observed): RMSE 0.9 K, 30% of climatology's and 50% of EnOI's; "
        "spread/skill 1.00, calibrated: the spread matches the error",
    ]
