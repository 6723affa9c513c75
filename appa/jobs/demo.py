"""``appa demo``: a reanalysis of a few toy-Earth days with the committed tiny prior, end to end.

1. the toy Earth (generated when missing: 2000-2003, seed 0; the prior trained on 2000-2001);
2. stations and a satellite observing a few held-out days of 2003 (``appa observe``);
3. a reanalysis with ``members`` members on Ray actors into a Zarr archive (``appa reanalysis``);
4. the classical baselines of the same window: climatology and ensemble optimal interpolation;
5. WeatherBench2 scores of all three against the truth, maps and curves, a summary table.

Every step writes under ``out``; a rerun reuses the toy Earth and resumes the reanalysis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field

from appa.assimilation.tasks import SamplingConfig
from appa.assimilation.units import PriorConfig
from appa.baselines.enoi import EnOIConfig
from appa.config import StrictModel, Timestamp
from appa.data.layout import level_key
from appa.data.toy_earth import ToyEarthConfig
from appa.distributed.runner import RayConfig
from appa.observations.simulators import ObserveConfig, SatelliteConfig, StationsConfig

__all__ = ["DemoConfig", "DemoResult", "describe", "run_demo"]


def _toy_earth() -> ToyEarthConfig:
    return ToyEarthConfig(years=4, seed=0)


def _observe() -> ObserveConfig:
    # what the committed prior holds: stations of its two surface variables, and a satellite
    # sounding its one level (the observers' own default is every level of the truth)
    return ObserveConfig(
        seed=1,
        stations=StationsConfig(density=0.25),
        satellite=SatelliteConfig(levels=[500]),
    )


def _sampling() -> SamplingConfig:
    return SamplingConfig(
        sampler="pc", steps=16, corrections=1, solver="gmres", iterations=2,
        representation_error=True,
    )  # fmt: skip


class DemoBaselinesConfig(StrictModel):
    """The classical baselines' settings (see :class:`appa.jobs.baseline.BaselineConfig`); the
    EnOI draws the demo's members with its seed."""

    train_start: Timestamp = "2000-01-01T00:00:00"
    train_end: Timestamp = "2001-12-31T23:59:00"
    window_days: int = Field(15, ge=0)
    enoi: EnOIConfig = Field(default_factory=EnOIConfig)


class DemoConfig(StrictModel):
    """Settings of ``appa demo``; the defaults are ``pipelines/configs/demo.yaml``'s, so
    ``appa demo`` without a config runs the README's demo."""

    out: str = "outputs/demo"
    truth: str = "data/toy_earth.zarr"
    toy_earth: ToyEarthConfig = Field(default_factory=_toy_earth)
    start: Timestamp = "2003-03-01T00:00:00"
    end: Timestamp = "2003-03-04T18:00:00"
    step: str = "6h"
    members: int = Field(8, ge=2)
    seed: int = 0
    observe: ObserveConfig = Field(default_factory=_observe)
    prior: PriorConfig = Field(default_factory=PriorConfig)
    sampling: SamplingConfig = Field(default_factory=_sampling)
    runner: RayConfig = Field(default_factory=lambda: RayConfig(workers=2, cpus_per_worker=1))
    baselines: DemoBaselinesConfig = Field(default_factory=DemoBaselinesConfig)
    plot_variables: list[str] = Field(
        default_factory=lambda: ["2m_temperature", "mean_sea_level_pressure", "temperature"]
    )

    def observed_channels(self) -> list[str]:
        """The channels the simulated networks observe (``name`` or ``name@level``)."""
        out = []
        if self.observe.stations.enabled:
            out += list(self.observe.stations.variables)
        sat = self.observe.satellite
        if sat.enabled:
            out += [f"{v}@{level}" for v in sat.variables for level in sat.levels or []]
        return out


class DemoResult(StrictModel):
    """Paths of what the demo wrote and its scores (time means, per variable and system)."""

    archive: str
    baselines: dict[str, str]
    table: str
    figures: list[str]
    scores: dict[str, dict[str, dict[str, float]]]
    seconds: dict[str, float]


def _truth(config: DemoConfig, echo) -> None:
    from appa.data.toy_earth import write_toy_earth

    if Path(config.truth).exists():
        echo(f"toy Earth: {config.truth} (exists)")
        return
    echo(f"toy Earth: generating {config.truth} ({config.toy_earth.years} years) ...")
    write_toy_earth(config.toy_earth, config.truth, progress=True)


def _observe(config: DemoConfig, out: Path, echo) -> str:
    from appa.observations.simulators import observe_store

    observe = config.observe.model_copy(
        update={"start": pd.Timestamp(config.start).isoformat(), "end": config.end}
    )
    path, n = observe_store(config.truth, observe, str(out / "observations"), overwrite=True)
    echo(f"observations: {n} in {path}")
    return str(path)


def _scores(table) -> dict[str, dict[str, dict[str, float]]]:
    """``{system: {variable[@level]: {metric: value}}}`` of a time-mean table."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for system in table["system"].values:
        per = out.setdefault(str(system), {})
        for name in table.data_vars:
            da = table[name].sel(system=system)
            levels = da["level"].values if "level" in da.dims else [None]
            for level in levels:
                sel = da if level is None else da.sel(level=level)
                label = name if level is None else f"{name}@{level_key(level)}"
                per[label] = {str(m): float(sel.sel(metric=m)) for m in sel["metric"].values}
    return out


def run_demo(config: DemoConfig, echo=print) -> DemoResult:
    """Runs the demo (see the module docstring); ``echo`` prints progress lines."""
    import time

    from rich.console import Console

    from appa.data.sources import open_era5
    from appa.jobs.assimilate import AssimilateConfig, run_assimilation
    from appa.jobs.baseline import BaselineConfig, run_baseline
    from appa.metrics.plots import plot_maps, plot_metric_curves
    from appa.metrics.report import evaluate_archives, summary_table, time_mean, write_table
    from appa.observations.schema import read_observations

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def timed(name: str, fn, *args: Any, **kwargs: Any):
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - t0, 1)
        return result

    timed("toy_earth", _truth, config, echo)
    observations = timed("observe", _observe, config, out, echo)

    job = AssimilateConfig(
        task="reanalysis",
        prior=config.prior,
        observations=[observations],
        start=config.start,
        end=config.end,
        step=config.step,
        members=config.members,
        seed=config.seed,
        sampling=config.sampling,
        output=str(out / "reanalysis.zarr"),
        overwrite=True,
        runner=config.runner,
    )
    echo(f"reanalysis: {config.members} members on Ray actors -> {job.output}")
    archive, report = timed("reanalysis", run_assimilation, job, echo)
    computed = sum(r.written for r in report.records)
    echo(f"reanalysis: {computed} units computed, {report.skipped} already done")

    b = config.baselines
    baseline_job = BaselineConfig(
        truth=config.truth,
        start=config.start,
        end=config.end,
        train_start=b.train_start,
        train_end=b.train_end,
        window_days=b.window_days,
        observations=observations,
        enoi=b.enoi.model_copy(update={"members": config.members, "seed": config.seed}),
    )
    baselines = {}
    for kind in ("climatology", "enoi"):
        path = timed(kind, run_baseline, kind, baseline_job, out / f"{kind}.zarr", True)
        baselines[kind] = str(path)
        echo(f"{kind}: {path}")

    systems = {"appa": archive.url, **baselines}
    table = timed("evaluate", evaluate_archives, systems, config.truth)
    table_path = write_table(table, out / "scores.nc", overwrite=True)
    by_time = evaluate_archives(systems, config.truth, by_time=True)
    write_table(by_time, out / "scores_by_time.nc", overwrite=True)
    Console(width=160).print(summary_table(table))

    figures = []
    prediction = archive.open_dataset()
    truth = open_era5(config.truth, time=slice(config.start, config.end))
    obs = read_observations(observations)
    middle = pd.DatetimeIndex(prediction["time"].values)[len(prediction["time"]) // 2]
    level = int(prediction["level"].values[0]) if "level" in prediction.dims else None
    for variable in config.plot_variables:
        path = plot_maps(
            prediction,
            truth,
            variable,
            middle,
            out / f"maps_{variable}.png",
            level=level if "level" in prediction[variable].dims else None,
            observations=obs,
            title=f"appa reanalysis, {config.members} members",
        )
        figures.append(str(path))
    curves = plot_metric_curves(
        by_time, list(config.plot_variables), out / "scores_by_time.png", level=level
    )
    figures.append(str(curves))
    result = DemoResult(
        archive=archive.url,
        baselines=baselines,
        table=str(table_path),
        figures=figures,
        scores=_scores(time_mean(table)),
        seconds=seconds,
    )
    (out / "summary.json").write_text(result.model_dump_json(indent=1))
    return result


def _dispersion(ratio: float) -> str:
    """What a spread/skill ratio says of an ensemble."""
    if not ratio == ratio:  # NaN: a single member has no spread
        return "no spread to judge"
    for bound, words in (
        (0.5, "strongly under-dispersed: the members spread far less than their error"),
        (0.8, "under-dispersed: the members spread less than their error"),
        (0.95, "slightly under-dispersed"),
        (1.05, "calibrated: the spread matches the error"),
        (1.2, "slightly over-dispersed"),
        (1.5, "over-dispersed: the members spread more than their error"),
    ):
        if ratio < bound:
            return words
    return "strongly over-dispersed: the members spread far more than their error"


def _units(name: str) -> str:
    from appa.data.toy_earth import CF_ATTRS

    units = CF_ATTRS.get(name.split("@")[0], ("",))[0]
    return {"m**2 s**-2": "m2/s2", "m s**-1": "m/s"}.get(units, units)


def describe(result: DemoResult, observed: list[str]) -> list[str]:
    """The demo's scores in words, one line per variable: the ensemble mean's RMSE against
    climatology's and ensemble optimal interpolation's (EnOI, the classical analysis from the
    same observations), and what the ensemble's spread/skill says of its calibration."""
    appa, clim, enoi = (result.scores[k] for k in ("appa", "climatology", "enoi"))
    lines = []
    for name in appa:
        if name not in clim or name not in enoi:
            continue
        a, c, e = appa[name]["rmse"], clim[name]["rmse"], enoi[name]["rmse"]
        ssr = appa[name]["spread_skill"]
        seen = "observed" if name in observed else "not observed"
        lines.append(
            f"{name} ({seen}): RMSE {a:.4g} {_units(name)}, {a / c:.0%} of climatology's and "
            f"{a / e:.0%} of EnOI's; spread/skill {ssr:.2f}, {_dispersion(ssr)}"
        )
    return lines
