"""Appa's posterior against the sea's classical baselines over the hypoxia season: the
validation year 2002 chooses each system's hypoxia threshold, the held-out year 2003 scores it.

With the commands a user types, on the toy sea the committed prior was trained on
(``appa toy-sea --years 4 --seed 0``: 2000-2001 train, 2002 validates, 2003 is held out):

1. ``appa observe`` of the whole store with ``pipelines/configs/observe_sea.yaml``, once with
   the floats and once without (``floats.enabled=false``; each network draws from its own
   random stream, so the satellites' observations are the same in both stores);
2. ``appa reanalysis`` with ``pipelines/configs/reanalysis_toy_sea_surface.yaml`` (surface
   store) and ``reanalysis_toy_sea_floats.yaml`` (with floats) and the committed prior
   ``pipelines/priors/toy-sea-tiny``, over consecutive windows of the configs' length (14 days)
   covering June to November of each year (the season's remainder joins its last window);
   ``--every K`` reanalyses one window in K, ``--offset J`` starting at the J-th;
3. ``appa baseline sea-climatology`` and ``sea-regression`` (without and with the floats),
   trained on 2000-2001 like the prior, over the same days (each year's span of the chosen
   windows, then the chosen days kept);
4. one ``appa evaluate-sea`` of the five systems (Appa surface, Appa + floats, climatology,
   regression, regression + floats), validation = the 2002 days, test = the 2003 days; with
   ``--sigma S`` a second one whose hypoxia probabilities dress each member's bottom oxygen
   with a Gaussian of std ``S`` (mmol m^-3; 19 is the committed autoencoder's error there).

The windows of each system are joined into one archive per system (the archive layer's
``open_archive`` and ``write_dataset``; nothing is recomputed). It prints the evaluation's
tables and the seconds of each step, and writes ``outputs/benchmarks/ocean_comparison.json``
(``..._quick.json`` with ``--quick``: the arguments, the days, the seconds and
``appa evaluate-sea``'s scores). The truth is ``--truth`` or a toy sea written into ``--work``
(``appa toy-sea --years 4 --seed 0``, about a minute); every product lies under ``--work``.

    nice -n 10 python benchmarks/ocean_comparison.py --sigma 19 # the full comparison
    nice -n 10 python benchmarks/ocean_comparison.py --quick    # 2 windows a year, 2 members

Expected time of the full comparison (13 windows a year, 4 members), from timings measured on
the shared 2-core CPU machine (2026-12-07, ``nice -n 10``): with the configs' 8 solver
iterations one 14-day window of 4 members takes about 100 s alone (230 s with a one-thread job
beside it); observing both stores of 4 years about 2 min; the six baseline calls 3-7 min;
joining and evaluating 366 days of five archives about 3 min. So 52 windows (2 years x 13 x 2
systems) take about 1.6 hours alone, ``--every 2`` about 50 min and ``--every 4`` about 33 min
(1964 s measured alone).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
from _commands import ROOT, appa

PRIOR = ROOT / "pipelines" / "priors" / "toy-sea-tiny"
OBSERVE = ROOT / "pipelines" / "configs" / "observe_sea.yaml"
CONFIGS = {
    "appa": ROOT / "pipelines" / "configs" / "reanalysis_toy_sea_surface.yaml",
    "appa+floats": ROOT / "pipelines" / "configs" / "reanalysis_toy_sea_floats.yaml",
}
VALIDATION_YEAR, TEST_YEAR = 2002, 2003
TRAIN = ("2000-01-01", "2001-12-31")  # the prior's training years; the baselines' too
SEASON = ("06-01", "11-30")  # the shelf's hypoxia season, June to November


def window_length(config: Path) -> int:
    """States in one window of a reanalysis config (its ``start`` to ``end``, both included, at
    its ``step``)."""
    import yaml

    settings = yaml.safe_load(config.read_text())
    span = pd.Timestamp(settings["end"]) - pd.Timestamp(settings["start"])
    return int(span / pd.Timedelta(settings["step"])) + 1


def season_windows(year: int, length: int) -> list[pd.DatetimeIndex]:
    """Consecutive windows of ``length`` days over ``year``'s season, the remainder (fewer than
    ``length`` days) joined to the last window so that every day lies in exactly one."""
    days = pd.date_range(f"{year}-{SEASON[0]}", f"{year}-{SEASON[1]}", freq="1D")
    n = len(days) // length
    if n == 0:
        raise ValueError(f"the season of {year} ({len(days)} days) is shorter than a window")
    return [days[i * length : (i + 1) * length if i < n - 1 else len(days)] for i in range(n)]


def chosen(windows: list, every: int, offset: int, limit: int | None) -> list:
    """One window in ``every`` from the ``offset``-th, at most ``limit`` of them."""
    if not 0 <= offset < len(windows):
        raise ValueError(f"--offset {offset} is outside the season's {len(windows)} windows")
    picked = windows[offset::every]
    return picked[:limit] if limit is not None else picked


def truth_store(path: Path | None, work: Path) -> Path:
    """The given truth, or the prior's toy sea (2000-2003, seed 0) written into ``work``."""
    if path is not None:
        return path
    out = work / "truth.zarr"
    if not out.exists():
        appa("toy-sea", "--out", str(out), "--years", "4", "--seed", "0", "--no-progress")
    return out


def join(parts: list[Path], days: pd.DatetimeIndex, out: Path) -> Path:
    """The archives ``parts`` joined along time and restricted to ``days``, written to ``out``
    (the first part's provenance kept, the parts named in ``joined_from``)."""
    import xarray as xr

    from appa.io.archive import open_archive, write_dataset

    opened = [open_archive(p) for p in parts]
    names = [v for v in opened[0].data_vars if "time" in opened[0][v].dims]
    ds = xr.concat([o[names] for o in opened], dim="time").sortby("time")
    missing = days.difference(pd.DatetimeIndex(ds["time"].values))
    if len(missing):
        raise ValueError(f"{parts}: no state on {missing[0]:%Y-%m-%d} of the chosen days")
    ds = ds.sel(time=days.values).drop_duplicates("time")
    ds.attrs = {**opened[0].attrs, "joined_from": json.dumps([str(p) for p in parts])}
    if out.exists():
        shutil.rmtree(out)
    return write_dataset(ds, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--truth", type=Path, default=None, help="toy sea of 2000-2003")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--every", type=int, default=1, help="reanalyse one window in K")
    parser.add_argument("--offset", type=int, default=0, help="first window reanalysed")
    parser.add_argument("--windows", type=int, default=None, help="at most this many a year")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: 2 windows a year (late September to early November, "
                        "when the shelf turns hypoxic), 2 members")  # fmt: skip
    parser.add_argument(
        "--sigma",
        type=float,
        default=None,
        help="also score hypoxia with each member's bottom oxygen dressed with a Gaussian of "
        "this std (mmol m^-3), as appa evaluate-sea --sigma",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "ocean_comparison")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks")
    args = parser.parse_args()
    if args.quick:
        args.members, args.every, args.offset, args.windows = 2, 2, 8, 2
    if args.every < 1 or args.members < 1:
        parser.error("--every and --members must be at least 1")
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    truth = truth_store(args.truth, args.work)

    t = time.perf_counter()
    stores = {"surface": args.work / "obs_surface", "floats": args.work / "obs_floats"}
    for name, store in stores.items():
        off = ["--set", "floats.enabled=false"] if name == "surface" else []
        appa("observe", "--truth", str(truth), "--out", str(store), "--config", str(OBSERVE),
             *off, "--overwrite")  # fmt: skip
    seconds["observe"] = time.perf_counter() - t

    lengths = {window_length(c) for c in CONFIGS.values()}
    if len(lengths) != 1:
        sys.exit(f"the reanalysis configs' windows differ in length: {sorted(lengths)}")
    length = lengths.pop()
    windows = {
        year: chosen(season_windows(year, length), args.every, args.offset, args.windows)
        for year in (VALIDATION_YEAR, TEST_YEAR)
    }
    days = {year: w[0].append(w[1:]) for year, w in windows.items()}

    parts: dict[str, list[Path]] = {}
    for system, config in CONFIGS.items():
        store = stores["floats" if system.endswith("floats") else "surface"]
        t = time.perf_counter()
        parts[system] = []
        for year in windows:
            for window in windows[year]:
                archive = args.work / "windows" / f"{system}_{window[0]:%Y-%m-%d}.zarr"
                appa(
                    "reanalysis", "--config", str(config),
                    "--start", f"{window[0]:%Y-%m-%d}", "--end", f"{window[-1]:%Y-%m-%d}",
                    "--members", str(args.members), "--out", str(archive),
                    "--set", f"observations=[{store}]", "--set", f"prior.path={PRIOR}",
                    "--set", "prior.device=cpu", "--set", "runner.progress=false",
                    "--set", "overwrite=true",
                )  # fmt: skip
                parts[system].append(archive)
        seconds[f"reanalysis {system}"] = time.perf_counter() - t

    baselines = {
        "climatology": ("sea-climatology", []),
        "regression": ("sea-regression",
                       ["--observations", str(stores["surface"]), "--set", "sea.floats=false"]),
        "regression+floats": ("sea-regression", ["--observations", str(stores["floats"])]),
    }  # fmt: skip
    for system, (kind, extra) in baselines.items():
        t = time.perf_counter()
        parts[system] = []
        for year, span in days.items():
            archive = args.work / "windows" / f"{system}_{year}.zarr"
            appa(
                "baseline", kind, "--out", str(archive), "--truth", str(truth),
                "--start", f"{span[0]:%Y-%m-%d}", "--end", f"{span[-1]:%Y-%m-%d}",
                "--members", str(args.members), "--set", f"train_start={TRAIN[0]}",
                "--set", f"train_end={TRAIN[1]}", *extra, "--overwrite",
            )  # fmt: skip
            parts[system].append(archive)
        seconds[f"baseline {system}"] = time.perf_counter() - t

    t = time.perf_counter()
    every_day = days[VALIDATION_YEAR].append(days[TEST_YEAR])
    joined = {s: join(p, every_day, args.work / f"{s}.zarr") for s, p in parts.items()}
    seconds["join"] = time.perf_counter() - t

    t = time.perf_counter()
    v, h = days[VALIDATION_YEAR], days[TEST_YEAR]
    evaluate = (
        "evaluate-sea", *(f"{s}={p}" for s, p in joined.items()), "--truth", str(truth),
        "--validation-start", f"{v[0]:%Y-%m-%d}", "--validation-end", f"{v[-1]:%Y-%m-%d}",
        "--test-start", f"{h[0]:%Y-%m-%d}", "--test-end", f"{h[-1]:%Y-%m-%d}", "--overwrite",
    )  # fmt: skip
    scores_path = args.work / "scores.json"
    text = appa(*evaluate, "--out", str(scores_path))
    dressed_path = args.work / f"scores_sigma{args.sigma:g}.json" if args.sigma else None
    if dressed_path is not None:
        text += "\nEach member's bottom oxygen dressed with a Gaussian of std "
        text += f"{args.sigma:g} mmol m^-3:\n"
        text += appa(*evaluate, "--sigma", str(args.sigma), "--out", str(dressed_path))
    seconds["evaluate-sea"] = time.perf_counter() - t
    total = time.perf_counter() - started

    described = {
        year: [f"{w[0]:%Y-%m-%d} .. {w[-1]:%Y-%m-%d}" for w in ws] for year, ws in windows.items()
    }
    n_val, n_test = len(days[VALIDATION_YEAR]), len(days[TEST_YEAR])
    print(f"\ntruth {truth}; {args.members} members; windows of {length} days, one in "
          f"{args.every} from the {args.offset}-th; validation {VALIDATION_YEAR}: "
          f"{n_val} days, test {TEST_YEAR}: {n_test} days")  # fmt: skip
    for year, spans in described.items():
        print(f"  {year}: " + ", ".join(spans))
    print()
    print(text.rstrip())
    print(f"\n{total:.0f} s in all: " + ", ".join(f"{k} {s:.0f} s" for k, s in seconds.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / ("ocean_comparison_quick.json" if args.quick else "ocean_comparison.json")
    out.write_text(json.dumps({
        "args": {k: str(x) for k, x in vars(args).items()},
        "windows": {str(y): s for y, s in described.items()},
        "seconds": seconds, "total_seconds": total,
        "scores": json.loads(scores_path.read_text()),
        "scores_dressed": json.loads(dressed_path.read_text()) if dressed_path else None,
    }, indent=1))  # fmt: skip
    print(f"written {out}")


if __name__ == "__main__":
    main()
