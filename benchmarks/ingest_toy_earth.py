"""An observing-system experiment on the toy Earth: real-format reports through `appa ingest`
into a reanalysis, against the same network handed to the reanalysis directly.

For each seed of the network (station and radiosonde sites, observation noise), with the
commands a user types:

1. ``appa observe --format bufr``: the stations as SYNOP and the radiosondes as TEMP BUFR
   files, one per day, stations at their own heights (their 2 m temperature with them);
2. ``appa ingest bufr ... --grid TRUTH``: decoded, height-corrected, quality-controlled into an
   observation store (observation errors set to the network's, so that both paths weigh the
   same observations alike);
3. ``appa observe`` of the same network as an observation store (the baseline: no BUFR, no
   ingest);
4. ``appa reanalysis`` of both with the committed prior (``pipelines/priors/toy-earth-tiny``),
   the same period, members and sampler seed, ``observation_use.outside_state: skip``; and of
   the direct store once more with another sampler seed (the sampling noise, for scale);
5. ``appa evaluate`` of the three against the truth.

It prints the RMSE of the ensemble mean and the spread per variable for both paths (mean and
range over the seeds), the ratios ingest / direct and resampled / direct, the observations
each reanalysis used per channel, and the ingest's account. The two paths hold the same
observations up to BUFR's rounding and the round trip of the 2 m temperature's height
correction, so their scores should agree well within the sampling noise.

    nice -n 10 python benchmarks/ingest_toy_earth.py --seeds 1 2 3

The truth is ``data/toy_earth.zarr`` (``make demo`` writes it) when present, else a short toy
Earth written here (``appa toy-earth``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from _commands import ROOT, appa

PRIOR = ROOT / "pipelines" / "priors" / "toy-earth-tiny"
CONFIG = ROOT / "pipelines" / "configs" / "reanalysis_toy_earth.yaml"
VARIABLES = ("2m_temperature", "mean_sea_level_pressure", "temperature", "geopotential")
# the network: the demo's stations (about 130, 2 m temperature and sea-level pressure) and 30
# radiosonde sites at 00 and 12 UTC (temperature and geopotential at 250, 500 and 700 hPa and
# one significant level between each pair); no satellite (BUFR here is SYNOP and TEMP)
NETWORK = {
    "stations.density": "0.25",
    "stations.variables": "[2m_temperature,mean_sea_level_pressure]",
    "stations.error_std": "{2m_temperature: 0.5, mean_sea_level_pressure: 100.0}",
    "satellite.enabled": "false",
    "radiosondes.enabled": "true",
    "radiosondes.sites": "30",
    "radiosondes.significant_levels": "1",
    "radiosondes.error_std": "{temperature: 0.8, geopotential: 100.0}",
}
# the same errors for the ingested reports (the ingest's defaults are those of real networks)
INGEST_ERRORS = {
    "errors.table.synop.2m_temperature": "0.5",
    "errors.table.synop.mean_sea_level_pressure": "100.0",
    "errors.table.temp.temperature": "0.8",
    "errors.table.temp.geopotential": "100.0",
}


def sets(settings: dict[str, str]) -> list[str]:
    return [a for key, value in settings.items() for a in ("--set", f"{key}={value}")]


def truth_store(path: Path | None, work: Path, start: str) -> Path:
    """The given truth, ``data/toy_earth.zarr``, or a week of toy Earth from ``start``."""
    if path is not None:
        return path
    if (ROOT / "data" / "toy_earth.zarr").exists():
        return ROOT / "data" / "toy_earth.zarr"
    out = work / "truth.zarr"
    if not out.exists():
        appa("toy-earth", "--out", str(out), "--years", "0.02", "--seed", "3", "--no-progress",
             "--set", f"start={start}", "--set", "spinup_days=60")  # fmt: skip
    return out


def one_seed(seed: int, truth: Path, args: argparse.Namespace, folder: Path) -> dict:
    """Both paths for one seed of the network: scores, observations used, ingest account."""
    folder.mkdir(parents=True, exist_ok=True)
    period = ["--set", f"start={args.start}", "--set", f"end={args.end}"]
    network = [*sets(NETWORK), "--set", f"seed={seed}", *period]
    bufr, direct_obs = folder / "bufr", folder / "obs_direct"
    ingested = folder / "obs_ingested"
    seconds = {}
    t0 = time.perf_counter()
    appa("observe", "--truth", str(truth), "--out", str(bufr), "--format", "bufr", *network,
         "--overwrite")  # fmt: skip
    appa("observe", "--truth", str(truth), "--out", str(direct_obs), *network, "--overwrite")
    if ingested.exists():  # an ingest adds partitions, never replaces them
        shutil.rmtree(ingested)
    t1 = time.perf_counter()
    account_text = appa(
        "ingest", "bufr", *map(str, sorted(bufr.glob("*.bufr"))), "--out", str(ingested),
        "--grid", str(truth), "--set", "time_step=6h", *sets(INGEST_ERRORS),
    )  # fmt: skip
    seconds["ingest"] = time.perf_counter() - t1
    seconds["observe"] = t1 - t0
    archives = {}
    # the direct path once more with another sampler seed: the sampling noise, for scale
    for name, store, sampler_seed in (
        ("ingest", ingested, 0),
        ("direct", direct_obs, 0),
        ("resampled", direct_obs, 1),
    ):
        archive = folder / f"reanalysis_{name}.zarr"
        if archive.exists():
            shutil.rmtree(archive)
        t = time.perf_counter()
        appa(
            "reanalysis", "--config", str(CONFIG), "--start", args.start, "--end", args.end,
            "--members", str(args.members), "--out", str(archive),
            "--set", f"observations=[{store}]", "--set", f"prior.path={PRIOR}",
            "--set", "prior.device=cpu", "--set", f"seed={sampler_seed}",
            "--set", f"sampling.steps={args.steps}",
            "--set", "observation_use.outside_state=skip",
            "--set", "runner.progress=false",
        )  # fmt: skip
        seconds[f"reanalysis_{name}"] = time.perf_counter() - t
        archives[name] = archive
    table_path = folder / "scores.nc"
    appa("evaluate", str(archives["ingest"]), "--truth", str(truth), "--name", "ingest",
         "--baseline", f"direct={archives['direct']}",
         "--baseline", f"resampled={archives['resampled']}", "--out", str(table_path),
         "--overwrite")  # fmt: skip
    figures = {"seconds": seconds, "scores": scores(table_path), "used": {}}
    for name, archive in list(archives.items())[:2]:
        figures["used"][name] = observations_used(archive)
    history = json.loads((ingested / "observations.json").read_text())["history"]
    figures["account"] = history[0]["account"]
    figures["account_text"] = account_text.strip().splitlines()[-4:]
    return figures


def scores(path: Path) -> dict:
    """``{system: {variable: {"rmse": x, "spread": x}}}`` (time means; 500 hPa for upper air)."""
    import xarray as xr

    from appa.metrics.report import time_mean

    table = time_mean(xr.open_dataset(path).load())
    out: dict = {}
    for system in table["system"].values.astype(str):
        out[system] = {}
        for variable in VARIABLES:
            if variable not in table:
                continue
            da = table[variable].sel(system=system)
            if "level" in da.dims:
                da = da.sel(level=500)
            out[system][variable] = {
                m: float(da.sel(metric=m)) for m in ("rmse", "spread", "spread_skill")
            }
    return out


def observations_used(archive: Path) -> dict[str, int]:
    """Observations the reanalysis used, per channel (its ``observation_summary``)."""
    import xarray as xr

    attrs = xr.open_zarr(archive).attrs
    summary = json.loads(attrs["observation_summary"])
    used: dict[str, int] = {}
    for store in summary["stores"]:
        for channel, counts in store["channels"].items():
            used[channel] = used.get(channel, 0) + int(counts.get("used", 0))
    return used


def summarise(results: dict[int, dict]) -> str:
    """The Markdown table: per variable, both paths' RMSE and spread (mean [min, max] over the
    seeds), the ratio ingest / direct of the RMSE, and for scale the ratio of the direct path
    sampled with another seed to the direct path."""

    def cell(values: list[float], digits: int | None = None) -> str:
        v = np.asarray(values)
        if digits is None:
            digits = 3 if np.abs(v).max() < 10 else 0
        return f"{v.mean():.{digits}f} [{v.min():.{digits}f}, {v.max():.{digits}f}]"

    units = {"2m_temperature": "K", "mean_sea_level_pressure": "Pa", "temperature": "K",
             "geopotential": "m2/s2"}  # fmt: skip
    lines = [
        "| variable | RMSE, ingest | RMSE, direct | RMSE ingest / direct | RMSE direct resampled"
        " / direct | spread, ingest | spread, direct |",
        "|---|---|---|---|---|---|---|",
    ]
    for variable in VARIABLES:
        got = {
            (s, m): np.array([r["scores"][s][variable][m] for r in results.values()])
            for s in ("ingest", "direct", "resampled")
            for m in ("rmse", "spread")
        }
        ratio = got[("ingest", "rmse")] / got[("direct", "rmse")]
        noise = got[("resampled", "rmse")] / got[("direct", "rmse")]
        name = variable + ("@500" if variable in ("temperature", "geopotential") else "")
        lines.append(
            f"| {name} ({units[variable]}) | {cell(got[('ingest', 'rmse')])} | "
            f"{cell(got[('direct', 'rmse')])} | {cell(ratio, 4)} | {cell(noise, 3)} | "
            f"{cell(got[('ingest', 'spread')])} | {cell(got[('direct', 'spread')])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--truth", type=Path, default=None)
    parser.add_argument("--start", default="2003-03-01T00:00")
    parser.add_argument("--end", default="2003-03-02T18:00")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="sampler steps")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "ingest_osse")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks")
    args = parser.parse_args()
    started = time.perf_counter()
    truth = truth_store(args.truth, args.work, args.start)
    results = {s: one_seed(s, truth, args, args.work / f"seed-{s}") for s in args.seeds}
    table = summarise(results)
    print(f"\ntruth {truth}, {args.start} .. {args.end}, {args.members} members, "
          f"{args.steps} sampler steps, network seeds {args.seeds}\n")  # fmt: skip
    print(table)
    print("\nobservations used per channel (ingest / direct), per seed:")
    for seed, r in results.items():
        channels = sorted(set(r["used"]["ingest"]) | set(r["used"]["direct"]))
        used = ", ".join(
            f"{c} {r['used']['ingest'].get(c, 0)} / {r['used']['direct'].get(c, 0)}"
            for c in channels
            if r["used"]["ingest"].get(c, 0) or r["used"]["direct"].get(c, 0)
        )
        print(f"  seed {seed}: {used}")
    print("\ningest account (read, kept, rejected by reason), per seed:")
    for seed, r in results.items():
        print(f"  seed {seed}: {json.dumps(r['account'], sort_keys=True)}")
    total = time.perf_counter() - started
    print(f"\n{total:.0f} s in all; per seed: " + "; ".join(
        f"{s}: " + ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items())
        for s, r in results.items()
    ))  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "ingest_toy_earth.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                               "seeds": results, "table": table, "seconds": total},
                              indent=1))  # fmt: skip
    print(f"written {out}")


if __name__ == "__main__":
    main()
