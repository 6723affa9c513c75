"""The toy-Earth figures on several independent held-out trajectories, as mean and range.

One trajectory of a chaotic system is an anecdote: every figure that depends on the weather is
measured here on several toy-Earth runs (seeds; the same planet and climate, other weather)
over the held-out year 2003, with the committed prior and the committed configs:

- prior quality (``appa prior-check``): autoencoder RMSE, and the climate of decoded prior
  trajectories against the year's data (mean, standard deviation, lag-1 autocorrelation, zonal
  power);
- the demo (``appa demo``, ``pipelines/configs/demo.yaml``): a 4-day reanalysis against
  climatology and ensemble optimal interpolation from the same observations;
- the filter (``pipelines/configs/filter_toy_earth.yaml``, 4 members, 2 days) against the
  reanalysis of the same days;
- one-day forecasts (``pipelines/configs/forecast_toy_earth.yaml``, 8 members, daily from the
  demo's reanalysis) against persistence of the truth and of the analysis.

Each trajectory's figures go to ``WORK/seed-N/figures.json`` (a rerun reuses them); the
summary (mean, min, max per figure) is printed and written to ``--out`` as JSON and Markdown.

    python benchmarks/bench_trajectories.py --seeds 0 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "pipelines" / "configs"
PRIOR = ROOT / "pipelines" / "priors" / "toy-earth-tiny"
HELD_OUT = ("2003-01-01", "2003-12-31T18:00")
WINTER = ("2003-01-01", "2003-03-31T18:00")
FILTER_PERIOD = ("2003-03-01T00:00", "2003-03-02T18:00")
FORECAST_PERIOD = ("2003-03-02T12:00", "2003-03-04T12:00")  # daily, from the demo's analyses
LEAD = pd.Timedelta("1D")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def truth_store(seed: int, folder: Path) -> Path:
    """2000-2003 of the toy Earth from initial perturbation ``seed`` in ``folder`` (the prior's
    own data for seed 0: ``make demo`` makes the same store)."""
    from appa.data.toy_earth import ToyEarthConfig, write_toy_earth

    path = (ROOT / "data" / "toy_earth.zarr") if seed == 0 else folder / "toy_earth.zarr"
    if not path.exists():
        log(f"seed {seed}: toy Earth -> {path}")
        write_toy_earth(ToyEarthConfig(years=4, seed=seed), path, progress=False)
    return path


def prior_figures(truth: Path, samples: int) -> dict:
    """Prior quality on the held-out year (``samples`` trajectories), and on its first quarter
    with 32 trajectories (the configuration of the test suite's check of the committed prior)."""
    from appa.assimilation import LatentPrior
    from appa.assimilation.quality import prior_quality
    from appa.data.sources import open_era5

    prior = LatentPrior.from_checkpoints(str(PRIOR / "autoencoder"), str(PRIOR / "diffusion"))
    out = {}
    for name, period, n in (("year", HELD_OUT, samples), ("winter", WINTER, 32)):
        data = open_era5(str(truth), spec=prior.spec, time=slice(*period)).load()
        quality = prior_quality(prior, data, samples=n, window=8, seed=0, steps=32)
        out[name] = _quality_figures(quality)
    return out


def _quality_figures(quality) -> dict:
    c, codec = quality.climate, quality.codec_climate
    out: dict = {
        "autoencoder_rmse": float(np.mean(list(quality.reconstruction.values()))),
        "departures": quality.departures(),
    }
    for i, name in enumerate(c.channels):
        ratio = c.spectrum_ratio[i][c.resolved()[i]]
        codec_ratio = codec.spectrum_ratio[i][codec.resolved()[i]]
        out[name] = {
            "mean_error": float(c.mean_error[i]),
            "std_ratio": float(c.std_ratio[i]),
            "lag1_error": float(c.lag1_error[i]),
            "spectrum_min": float(ratio.min()),
            "spectrum_max": float(ratio.max()),
            "codec_spectrum_min": float(codec_ratio.min()),
            "codec_spectrum_max": float(codec_ratio.max()),
        }
    return out


def _scores(table, variables: dict[str, str]) -> dict:
    """``{label: {system: {metric: value}}}`` of a time-mean table (``label``: name@level)."""
    from appa.metrics.wb2 import time_mean

    table = time_mean(table)
    out: dict = {}
    for label, name in variables.items():
        var = table[name]
        if "level" in var.dims:
            var = var.sel(level=int(label.split("@")[1]))
        if "lead_time" in var.dims:
            var = var.sel(lead_time=LEAD)
        out[label] = {
            str(system): {
                str(m): float(var.sel(system=system, metric=m)) for m in var.metric.values
            }
            for system in var.system.values
        }
    return out


VARIABLES = {
    "2m_temperature": "2m_temperature",
    "mean_sea_level_pressure": "mean_sea_level_pressure",
    "temperature@500": "temperature",
    "geopotential@500": "geopotential",
    "sea_surface_temperature": "sea_surface_temperature",
}


def demo_figures(seed: int, truth: Path, work: Path, overrides: list[str]) -> dict:
    """``appa demo`` (``pipelines/configs/demo.yaml`` plus ``overrides``) on this truth."""
    from appa.config import load_config
    from appa.jobs.demo import DemoConfig, run_demo

    config = load_config(
        DemoConfig,
        CONFIGS / "demo.yaml",
        [
            f"out={work / 'demo'}",
            f"truth={truth}",
            f"toy_earth.seed={seed}",
            "runner.progress=false",
            *overrides,
        ],
    )
    log(f"seed {seed}: demo {' '.join(overrides)}")
    result = run_demo(config, echo=lambda *_: None)
    return {
        label: {s: result.scores[s][label] for s in ("appa", "climatology", "enoi")}
        for label in VARIABLES
    }


def filter_figures(seed: int, truth: Path, work: Path) -> dict:
    """The committed filter config (4 members, 2 days, the demo's observations) against the
    demo's reanalysis of the same days."""
    from appa.config import load_config
    from appa.io.archive import open_archive
    from appa.jobs.assimilate import AssimilateConfig, run_assimilation
    from appa.metrics.report import evaluate_archives

    log(f"seed {seed}: filter")
    job = load_config(
        AssimilateConfig,
        CONFIGS / "filter_toy_earth.yaml",
        [
            f"observations=[{work / 'demo' / 'observations'}]",
            f"start={FILTER_PERIOD[0]}",
            f"end={FILTER_PERIOD[1]}",
            "members=4",
            f"output={work / 'filter.zarr'}",
            "overwrite=true",
            "runner.progress=false",
        ],
    )
    filtered, _ = run_assimilation(job)
    same_days = open_archive(work / "demo" / "reanalysis.zarr").sel(time=slice(*FILTER_PERIOD))
    table = evaluate_archives(
        {"filter": filtered.url, "reanalysis": same_days},
        str(truth),
        variables=sorted(set(VARIABLES.values())),
    )
    return _scores(table, VARIABLES)


def forecast_figures(seed: int, truth: Path, work: Path) -> dict:
    """The committed forecast config (8 members, daily from the demo's reanalysis) at one day,
    against persistence of the truth and of the analysis."""
    from appa.config import load_config
    from appa.jobs.assimilate import AssimilateConfig, run_assimilation
    from appa.jobs.baseline import BaselineConfig, run_baseline
    from appa.metrics.report import evaluate_archives

    log(f"seed {seed}: forecast")
    reanalysis = str(work / "demo" / "reanalysis.zarr")
    job = load_config(
        AssimilateConfig,
        CONFIGS / "forecast_toy_earth.yaml",
        [
            f"forecast.initial={reanalysis}",
            f"start={FORECAST_PERIOD[0]}",
            f"end={FORECAST_PERIOD[1]}",
            "forecast.lead_steps=4",
            f"output={work / 'forecast.zarr'}",
            "overwrite=true",
            "runner.progress=false",
        ],
    )
    forecast, _ = run_assimilation(job)
    persistence = {}
    for name, initial in (("persistence", None), ("persistence_of_analysis", reanalysis)):
        baseline = BaselineConfig(
            truth=str(truth),
            start=FORECAST_PERIOD[0],
            end=FORECAST_PERIOD[1],
            lead_times=["1D"],
            every=job.forecast.init_every,
            initial=initial,
        )
        persistence[name] = str(run_baseline("persistence", baseline, work / f"{name}.zarr", True))
    table = evaluate_archives(
        {"forecast": forecast.url, **persistence},
        str(truth),
        variables=sorted(set(VARIABLES.values())),
    )
    return _scores(table, VARIABLES)


SECTIONS = ("prior", "demo", "filter", "forecast")


def measure(seed: int, args: argparse.Namespace) -> dict:
    """The figures of ``args.sections`` on one trajectory (cached in its folder)."""
    folder = args.work / f"seed-{seed}"
    cached = folder / "figures.json"
    if cached.exists():
        return json.loads(cached.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    truth = truth_store(seed, (args.truths or args.work) / f"seed-{seed}")
    figures: dict = {}
    if "prior" in args.sections:
        log(f"seed {seed}: prior quality")
        figures["prior"] = prior_figures(truth, args.samples)
    if "demo" in args.sections:
        figures["demo"] = demo_figures(seed, truth, folder, args.demo_set)
    if "filter" in args.sections:
        figures["filter"] = filter_figures(seed, truth, folder)
    if "forecast" in args.sections:
        figures["forecast"] = forecast_figures(seed, truth, folder)
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    cached.write_text(json.dumps(figures, indent=1))
    return figures


# --------------------------------------------------------------------------------- summary
PRIOR_FIGURES = {
    "mean_error": "mean error (data std)",
    "std_ratio": "std ratio",
    "lag1_error": "lag-1 error",
    "spectrum_min": "zonal power min",
    "spectrum_max": "zonal power max",
    "codec_spectrum_min": "autoencoder zonal power min",
    "codec_spectrum_max": "autoencoder zonal power max",
}
# (section, system, what its RMSE is divided by)
RATIOS = {
    "demo": ("appa", ["climatology", "enoi"]),
    "filter": ("filter", ["reanalysis"]),
    "forecast": ("forecast", ["persistence", "persistence_of_analysis"]),
}


def _rows(per_seed: dict[int, dict]) -> list[tuple[str, str, list[float]]]:
    """(section, figure, values over seeds) for every figure of the summary."""
    figures = [per_seed[s] for s in sorted(per_seed)]
    rows = []
    for period in ("year", "winter") if "prior" in figures[0] else ():
        prior = [f["prior"][period] for f in figures]
        section = f"prior ({period})"
        rows.append((section, "autoencoder RMSE (standardised)",
                     [p["autoencoder_rmse"] for p in prior]))  # fmt: skip
        for channel in prior[0]:
            if channel in ("autoencoder_rmse", "departures"):
                continue
            for key, text in PRIOR_FIGURES.items():
                rows.append((section, f"{channel} {text}", [p[channel][key] for p in prior]))
        rows.append((section, "checks outside tolerance", [len(p["departures"]) for p in prior]))
    for section, (system, bases) in RATIOS.items():
        if section not in figures[0]:
            continue
        for label in VARIABLES:
            scores = [f[section][label] for f in figures]
            rows.append((section, f"{label} RMSE", [x[system]["rmse"] for x in scores]))
            for base in bases:
                rows.append((section, f"{label} RMSE / {base}",
                             [x[system]["rmse"] / x[base]["rmse"] for x in scores]))  # fmt: skip
            rows.append(
                (section, f"{label} spread/skill", [x[system]["spread_skill"] for x in scores])
            )
    return rows


def _cell(values, spec: str = ".2f") -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():{spec}} [{v.min():{spec}}, {v.max():{spec}}]"


NAMES = {"enoi": "EnOI", "persistence_of_analysis": "persistence of the analysis"}
UNITS = {
    "2m_temperature": "K",
    "mean_sea_level_pressure": "Pa",
    "temperature@500": "K",
    "geopotential@500": "m2/s2",
    "sea_surface_temperature": "K",
}


def summary(per_seed: dict[int, dict]) -> str:
    """Compact tables, each cell ``mean [min, max]`` over the trajectories."""
    figures = [per_seed[s] for s in sorted(per_seed)]
    out = []
    if "prior" in figures[0]:
        for period, text in (("year", "2003, 64 trajectories"), ("winter", "Jan-Mar 2003, 32")):
            prior = [f["prior"][period] for f in figures]
            rmse = _cell([p["autoencoder_rmse"] for p in prior], ".3f")
            out += [
                f"Prior quality ({text}; autoencoder RMSE {rmse} standardised)",
                "",
                "| channel | mean error (data std) | std ratio | lag-1 error | zonal power, min | "
                "zonal power, max | autoencoder zonal power, min / max |",
                "|---|---|---|---|---|---|---|",
            ]
            for channel in UNITS:
                c = [p[channel] for p in prior]
                codec = (
                    f"{min(x['codec_spectrum_min'] for x in c):.2f} / "
                    f"{max(x['codec_spectrum_max'] for x in c):.2f}"
                )
                out.append(
                    f"| {channel} | {_cell([x['mean_error'] for x in c], '.3f')} | "
                    f"{_cell([x['std_ratio'] for x in c], '.3f')} | "
                    f"{_cell([x['lag1_error'] for x in c], '.3f')} | "
                    f"{_cell([x['spectrum_min'] for x in c])} | "
                    f"{_cell([x['spectrum_max'] for x in c])} | {codec} |"
                )
            departures = [len(p["departures"]) for p in prior]
            out += ["", f"Checks outside tolerance per trajectory: {departures}", ""]
    for section, (system, bases), title in (
        ("demo", RATIOS["demo"], "Reanalysis (the demo)"),
        ("filter", RATIOS["filter"], "Filter"),
        ("forecast", RATIOS["forecast"], "Forecasts at one day"),
    ):
        if section not in figures[0]:
            continue
        out += [
            title,
            "",
            "| variable | RMSE | "
            + " | ".join(f"RMSE / {NAMES.get(b, b)}" for b in bases)
            + " | spread/skill | CRPS |",
            "|---" * (4 + len(bases)) + "|",
        ]
        for label, unit in UNITS.items():
            x = [f[section][label] for f in figures]
            ratios = " | ".join(_cell([v[system]["rmse"] / v[b]["rmse"] for v in x]) for b in bases)
            out.append(
                f"| {label} ({unit}) | {_cell([v[system]['rmse'] for v in x], '.3g')} | "
                f"{ratios} | {_cell([v[system]['spread_skill'] for v in x])} | "
                f"{_cell([v[system]['crps'] for v in x], '.3g')} |"
            )
        out.append("")
    return "\n".join(out)


def markdown(per_seed: dict[int, dict]) -> str:
    """Every figure of every trajectory: mean, min, max, then one column per trajectory."""
    seeds = sorted(per_seed)
    head = "| | figure | mean | min | max | " + " | ".join(f"seed {s}" for s in seeds) + " |"
    lines = [head, "|" + "---|" * (5 + len(seeds))]
    for section, name, values in _rows(per_seed):
        v = np.asarray(values, dtype=float)
        cells = " | ".join(f"{x:.4g}" for x in v)
        lines.append(
            f"| {section} | {name} | {v.mean():.4g} | {v.min():.4g} | {v.max():.4g} | {cells} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "trajectories")
    parser.add_argument("--samples", type=int, default=64, help="prior trajectories per seed")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "trajectories"
    )
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
        help="what to measure (the filter and forecast start from the demo's archives)",
    )  # fmt: skip
    parser.add_argument(
        "--demo-set", nargs="*", default=[], metavar="KEY=VALUE",
        help="overrides of the demo config, e.g. sampling.corrections=2",
    )  # fmt: skip
    parser.add_argument(
        "--truths", type=Path, default=None,
        help="folder whose seed-N/ hold the toy-Earth stores already made (default: --work)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    per_seed = {seed: measure(seed, args) for seed in args.seeds}
    table = summary(per_seed) + "\n\nEvery figure, by trajectory:\n\n" + markdown(per_seed)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({str(k): v for k, v in per_seed.items()}, indent=1)
    )
    args.out.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
