"""The README's example runs, the CLI answers, and configs reject bad input by name."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field
from typer.testing import CliRunner

import appa
from appa.cli import app
from appa.config import ConfigError, StrictModel, apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_readme_posterior_example_runs_and_is_accurate(capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = next(b for b in blocks if "MMPSDenoiser" in b)
    exec(compile(example, "README.md", "exec"), {})
    relative_error = float(capsys.readouterr().out.strip().split("(")[1].split(",")[0])
    assert relative_error < 0.1


def test_cli_help_and_version():
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "showcase" in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and appa.__version__ in result.output


def test_console_script_is_installed():
    out = subprocess.run(
        [str(Path(sys.executable).parent / "appa"), "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("appa ")


def test_showcase_runs_small(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["showcase", "--out", str(tmp_path), "--set", "samples=300", "--set", "steps=16"],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "showcase.png").stat().st_size > 10_000
    summary = (tmp_path / "summary.json").read_text()
    assert '"MMPS"' in summary


def test_showcase_rejects_bad_config_by_name(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["showcase", "--set", "stepz=3"])
    assert result.exit_code == 2 and "stepz: unknown key" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: -1\n")
    result = runner.invoke(app, ["showcase", "--config", str(bad)])
    assert result.exit_code == 2 and "steps" in result.output


class _Inner(StrictModel):
    rate: float = Field(1.0, gt=0)


class _Outer(StrictModel):
    name: str = "x"
    inner: _Inner = _Inner()


def test_config_loading_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner:\n  rate: 2.5\n")
    cfg = load_config(_Outer, path, ["inner.rate=4"])
    assert cfg.name == "run" and cfg.inner.rate == 4.0
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}
    with pytest.raises(ConfigError, match=r"inner\.rate"):
        load_config(_Outer, path, ["inner.rate=-1"])
    with pytest.raises(ConfigError, match=r"inner\.speed: unknown key"):
        load_config(_Outer, path, ["inner.speed=1"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(_Outer, None, ["inner.rate"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(_Outer, tmp_path / "missing.yaml")
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_Outer, path)


def test_every_pipeline_config_validates():
    from appa.jobs.assimilate import AssimilateConfig
    from appa.jobs.daily import DailyConfig
    from appa.jobs.demo import DemoConfig
    from appa.jobs.encode import EncodeConfig
    from appa.jobs.ingest import IngestConfig
    from appa.jobs.lensing import LensingConfig
    from appa.jobs.showcase import ShowcaseConfig
    from appa.jobs.train import TrainAutoencoderConfig, TrainDiffusionConfig
    from appa.observations.simulators import ObserveConfig

    models = {
        "showcase.yaml": ShowcaseConfig,
        "encode_tiny.yaml": EncodeConfig,
        "encode_toy_earth.yaml": EncodeConfig,
        "train_autoencoder_toy_earth.yaml": TrainAutoencoderConfig,
        "train_autoencoder_tiny.yaml": TrainAutoencoderConfig,
        "train_diffusion_tiny.yaml": TrainDiffusionConfig,
        "train_diffusion_toy_earth.yaml": TrainDiffusionConfig,
        "reanalysis_toy_earth.yaml": AssimilateConfig,
        "filter_toy_earth.yaml": AssimilateConfig,
        "forecast_toy_earth.yaml": AssimilateConfig,
        "daily_toy_earth.yaml": DailyConfig,
        "ingest_example.yaml": IngestConfig,
        "demo.yaml": DemoConfig,
        "lensing_galaxies.yaml": LensingConfig,
        "lensing_tiny.yaml": LensingConfig,
        "observe_sea.yaml": ObserveConfig,
        "train_autoencoder_toy_sea.yaml": TrainAutoencoderConfig,
        "encode_toy_sea.yaml": EncodeConfig,
        "train_diffusion_toy_sea.yaml": TrainDiffusionConfig,
        "train_diffusion_toy_sea_forecast.yaml": TrainDiffusionConfig,
        "reanalysis_toy_sea_surface.yaml": AssimilateConfig,
        "reanalysis_toy_sea_floats.yaml": AssimilateConfig,
        "forecast_toy_sea.yaml": AssimilateConfig,
    }
    paths = sorted((ROOT / "pipelines" / "configs").glob("*.yaml"))
    assert paths
    for path in paths:
        assert path.name in models, f"{path.name}: no config model registered in this test"
        load_config(models[path.name], path)


def test_demo_defaults_are_the_committed_demo_config():
    """`appa demo` without --config runs what `make demo` runs: with the observers' own
    defaults it would observe levels the committed prior does not hold and fail in the actors."""
    from appa.jobs.demo import DemoConfig

    committed = load_config(DemoConfig, ROOT / "pipelines" / "configs" / "demo.yaml")
    assert DemoConfig() == committed
    assert DemoConfig().observed_channels() == [
        "2m_temperature",
        "mean_sea_level_pressure",
        "temperature@500",
    ]


def test_the_repository_holds_no_run_artefacts():
    """Jobs write under runs/, outputs/ and data/ (ignored); none of it is ever committed."""
    import shutil

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "runs", "outputs", "data"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert tracked == []
    ignored = subprocess.run(
        ["git", "check-ignore", "runs/x", "outputs/x", "data/x"],
        cwd=ROOT, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert ignored == ["runs/x", "outputs/x", "data/x"]
