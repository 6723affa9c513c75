"""What the regional sea's observation networks give: observations per day by platform and
variable, the share of sea boxes that clouds hide by month, and the floats' profiles.

Generates a year of the toy sea (after a year of spin-up), simulates the networks of
``--config`` (default: ``pipelines/configs/observe_sea.yaml``) over it, and prints the
figures as JSON (also written to ``--out``). The simulation time is measured against the
generation of the states it observes, in the same run.

    python benchmarks/bench_ocean_networks.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from appa.config import load_config
from appa.data.toy_sea import ToySeaConfig, toy_sea_dataset
from appa.observations.ocean import box_means
from appa.observations.simulators import ObserveConfig, simulate


def measure(year: int, seed: int, config: Path) -> dict:
    t0 = time.perf_counter()
    ds = toy_sea_dataset(ToySeaConfig(start=f"{year}-01-01", days=365, spinup_days=365, seed=seed))
    generation = time.perf_counter() - t0
    network = load_config(ObserveConfig, config)
    t0 = time.perf_counter()
    table = simulate(ds, network)
    seconds = time.perf_counter() - t0
    fields = ("time", "variable", "platform", "level", "station")
    frame = pd.DataFrame({k: table[k].values for k in fields})
    days = ds.sizes["time"]
    out: dict = {
        "generation_s": round(generation, 1),
        "simulation_s": round(seconds, 1),
        "simulation_over_generation": round(seconds / generation, 3),
        "observations": int(table.sizes["obs"]),
        "per_day": {
            f"{p}/{v}": round(len(g) / days, 1)
            for (p, v), g in frame.groupby(["platform", "variable"])
        },
    }
    surface = ds["temperature"].isel(level=0, time=slice(0, 1)).values
    boxes = int(
        np.isfinite(box_means(surface, ds.latitude.values, ds.longitude.values, 2)[0]).sum()
    )
    sst = frame[frame["platform"] == "sst"]
    if len(sst):
        month = pd.DatetimeIndex(sst["time"]).month
        lengths = np.array([pd.Timestamp(year, m, 1).days_in_month for m in range(1, 13)])
        seen = sst.groupby(month).size().reindex(range(1, 13), fill_value=0).to_numpy() / lengths
        out["sea_boxes_2x2"] = boxes
        out["cloud_fraction_by_month"] = [round(1 - x / boxes, 2) for x in seen]
    argo = frame[(frame["platform"] == "argo") & (frame["variable"] == "temperature")]
    if len(argo):
        profiles = argo.groupby(["time", "station"])["level"]
        out["argo_profiles_per_day"] = round(profiles.ngroups / days, 2)
        out["argo_samples_per_profile"] = round(len(argo) / profiles.ngroups, 1)
        deepest = profiles.max()
        out["argo_deepest_sample_m"] = {
            "median": round(float(deepest.median()), 1),
            "min": round(float(deepest.min()), 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--year", type=int, default=2001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=Path("pipelines/configs/observe_sea.yaml"))
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/ocean_networks.json"))
    args = parser.parse_args()
    result = measure(args.year, args.seed, args.config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
