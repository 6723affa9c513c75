"""Short forecasts of the toy sea against persistence and climatology, by depth band and lead.

With the commands a user types, on the toy sea the committed prior was trained on
(``appa toy-sea --years 4 --seed 0``: 2000-2001 train, 2003 held out), for each period start
``S`` (``--periods``, default 2003-06-01, 2003-09-01):

1. ``appa observe`` of ``S .. S+13 days`` with ``pipelines/configs/observe_sea.yaml`` (the
   satellites and the floats);
2. ``appa reanalysis --config pipelines/configs/reanalysis_toy_sea_floats.yaml`` of those two
   weeks (the initial states);
3. ``appa forecast --config pipelines/configs/forecast_toy_sea.yaml``: five-day forecasts
   started every day from day 7 to day 14 of the reanalysis, each member from its member;
4. ``appa baseline persistence`` of the reanalysis' ensemble mean (what a forecaster without a
   model would issue) and of the truth (a bound no analysis reaches), and ``appa baseline
   climatology`` of 2000-2001, at the same starts and leads;
5. ``appa evaluate`` of the forecast with the three baselines (RMSE per variable, level and
   lead; the truth's NaN below the floor excluded).

Printed and written to ``outputs/benchmarks/ocean_forecast.json``: the RMSE of each system by
variable, depth band (mean over the band's levels that every system holds: 0-50 m, 50-200 m,
200-1000 m) and lead, pooled over the periods (mean of the periods' scores), and the forecast's
spread/skill.

    nice -n 10 python benchmarks/ocean_forecast.py [--truth data/toy_sea.zarr]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _commands import ROOT, appa

OBSERVE = ROOT / "pipelines" / "configs" / "observe_sea.yaml"
REANALYSIS = ROOT / "pipelines" / "configs" / "reanalysis_toy_sea_floats.yaml"
FORECAST = ROOT / "pipelines" / "configs" / "forecast_toy_sea.yaml"
TRAIN = ("2000-01-01", "2001-12-31")
BANDS = {"0-50 m": (0.0, 50.0), "50-200 m": (50.0, 200.0), "200-1000 m": (200.0, 1000.0)}
VARIABLES = ("temperature", "salinity", "oxygen", "chlorophyll")


def band_means(scores, metric: str = "rmse") -> dict:
    """``{system: {variable: {band: [value per lead]}}}`` from an ``appa evaluate`` table: the
    mean over the band's levels where every system has a score."""
    out: dict = {}
    levels = scores["level"].values
    for system in scores["system"].values:
        out[str(system)] = {}
        for variable in VARIABLES:
            table = scores[variable].sel(metric=metric)  # (system, lead_time, level)
            rmse = scores[variable].sel(metric="rmse").values
            held = np.isfinite(rmse).all(axis=(0, 1))  # levels every system scores
            row = {}
            for band, (top, bottom) in BANDS.items():
                pick = held & (levels >= top) & (levels < bottom)
                if pick.any():
                    values = table.sel(system=system).values[:, pick].mean(axis=1)
                    row[band] = [float(v) for v in values]
            out[str(system)][variable] = row
        ssh = scores["sea_surface_height"].sel(metric=metric, system=system).values
        out[str(system)]["sea_surface_height"] = {"surface": [float(v) for v in ssh]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--truth", type=Path, default=None, help="toy sea of 2000-2003")
    parser.add_argument("--periods", nargs="+", default=["2003-06-01", "2003-09-01"])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument(
        "--prior", type=Path, default=None,
        help="prior folder for both steps (default: each config's, the committed sea prior)",
    )  # fmt: skip
    parser.add_argument(
        "--forecaster", type=Path, default=None,
        help="the forecast's denoiser checkpoint (default: the forecast config's)",
    )  # fmt: skip
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "ocean_forecast")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks")
    args = parser.parse_args()
    import xarray as xr

    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    truth = args.truth
    if truth is None:
        truth = args.work / "truth.zarr"
        if not truth.exists():
            appa("toy-sea", "--out", str(truth), "--years", "4", "--seed", "0", "--no-progress")
    leads = [f"{d}D" for d in range(1, 6)]
    chosen = [] if args.prior is None else ["--set", f"prior.path={args.prior}"]
    forecaster = [] if args.forecaster is None else ["--set", f"prior.diffusion={args.forecaster}"]
    lead_args = [a for lead in leads for a in ("--lead-time", lead)]
    per_period, seconds = [], {}
    for period in args.periods:
        first = pd.Timestamp(period)
        last, init0 = first + pd.Timedelta(days=13), first + pd.Timedelta(days=6)
        work = args.work / f"{first:%Y-%m-%d}"
        span = ["--set", f"start={first:%Y-%m-%d}", "--set", f"end={last:%Y-%m-%d}"]
        t = time.perf_counter()
        obs = work / "obs"
        appa("observe", "--truth", str(truth), "--out", str(obs), "--config", str(OBSERVE),
             *span, "--overwrite")  # fmt: skip
        analysis = work / "reanalysis.zarr"
        appa("reanalysis", "--config", str(REANALYSIS), "--start", f"{first:%Y-%m-%d}",
             "--end", f"{last:%Y-%m-%d}", "--members", str(args.members), "--out", str(analysis),
             "--set", f"observations=[{obs}]", *chosen, "--set", "prior.device=cpu",
             "--set", "runner.progress=false", "--set", "overwrite=true")  # fmt: skip
        seconds[f"reanalysis {period}"] = time.perf_counter() - t
        t = time.perf_counter()
        forecast = work / "forecast.zarr"
        appa("forecast", "--config", str(FORECAST), "--start", f"{init0:%Y-%m-%d}",
             "--end", f"{last:%Y-%m-%d}", "--members", str(args.members), "--out", str(forecast),
             "--set", f"forecast.initial={analysis}", *chosen, *forecaster,
             "--set", "prior.device=cpu", "--set", "runner.progress=false",
             "--set", "overwrite=true")  # fmt: skip
        seconds[f"forecast {period}"] = time.perf_counter() - t
        t = time.perf_counter()
        window = ["--truth", str(truth), "--start", f"{init0:%Y-%m-%d}", "--end",
                  f"{last:%Y-%m-%d}", *lead_args, "--set", "spec=null", "--overwrite"]  # fmt: skip
        baselines = {
            "persistence": [*window, "--set", f"initial={analysis}"],
            "persistence-of-truth": window,
            "climatology": [*window, "--set", f"train_start={TRAIN[0]}", "--set",
                            f"train_end={TRAIN[1]}"],
        }  # fmt: skip
        for name, extra in baselines.items():
            kind = "climatology" if name == "climatology" else "persistence"
            appa("baseline", kind, "--out", str(work / f"{name}.zarr"), *extra)
        scores = work / "scores.nc"
        appa("evaluate", str(forecast), "--name", "appa", "--truth", str(truth),
             *(a for name in baselines for a in ("--baseline", f"{name}={work / name}.zarr")),
             "--out", str(scores), "--overwrite")  # fmt: skip
        seconds[f"baselines and scores {period}"] = time.perf_counter() - t
        with xr.open_dataset(scores) as table:
            per_period.append(
                {"rmse": band_means(table.load()), "ssr": band_means(table, "spread_skill")["appa"]}
            )

    def pooled(get) -> dict:
        first = get(per_period[0])
        return {
            system: {
                variable: {
                    band: [
                        float(np.mean(v))
                        for v in zip(
                            *(get(p)[system][variable][band] for p in per_period), strict=True
                        )
                    ]
                    for band in bands
                }
                for variable, bands in variables.items()
            }
            for system, variables in first.items()
        }

    rmse = pooled(lambda p: p["rmse"])
    ssr = pooled(lambda p: {"appa": p["ssr"]})["appa"]
    print(
        f"\nRMSE by lead (days {', '.join(x[:-1] for x in leads)}), mean of {len(per_period)} "
        f"periods ({', '.join(args.periods)}), {args.members} members; Appa's spread/skill"
    )
    for variable in ("temperature", "salinity", "oxygen", "chlorophyll", "sea_surface_height"):
        for band in rmse["appa"][variable]:
            cells = "  ".join(
                f"{system} " + " ".join(f"{v:.3g}" for v in rmse[system][variable][band])
                for system in rmse
            )
            spread = " ".join(f"{v:.2f}" for v in ssr[variable][band])
            print(f"{variable} {band}: {cells}  | SSR {spread}")
    total = time.perf_counter() - started
    print(f"\n{total:.0f} s in all: " + ", ".join(f"{k} {s:.0f} s" for k, s in seconds.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "ocean_forecast.json"
    out.write_text(json.dumps({
        "args": {k: str(x) for k, x in vars(args).items()}, "leads": leads,
        "bands": BANDS, "rmse": rmse, "ssr": ssr, "periods": per_period,
        "seconds": seconds, "total_seconds": total,
    }, indent=1))  # fmt: skip
    print(f"written {out}")


if __name__ == "__main__":
    main()
