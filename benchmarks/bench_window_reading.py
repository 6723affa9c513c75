"""Throughput of reading standardised windows (``WindowDataset``) vs a raw zarr read.

Both read the same arrays of the same random windows from a local Zarr store; the raw read
opens the arrays with zarr and slices them (no layout handling, no standardisation, no date
features). Prints windows per second and the ratio (goal: >= 0.7). A third line reads the same
windows from ``WindowDataset``'s in-memory copy of the span (the default for spans under its
``memory_limit``, as the toy Earth's training years).

    python benchmarks/bench_window_reading.py [--store PATH] [--window 8] [--windows 300]

Without ``--store`` a toy-Earth store (64x32, 3 levels, 0.25 years) is generated first.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from appa.data.datasets import WindowDataset
from appa.data.sources import open_era5
from appa.data.spec import StateSpec
from appa.data.stats import compute_statistics
from appa.data.toy_earth import ToyEarthConfig, write_toy_earth

SPEC = StateSpec(
    surface=["2m_temperature", "mean_sea_level_pressure", "10m_u_component_of_wind",
             "10m_v_component_of_wind"],
    atmospheric=["geopotential", "temperature", "u_component_of_wind", "v_component_of_wind"],
    levels=[250, 500, 700],
)  # fmt: skip


def raw_read(group: zarr.Group, spec: StateSpec, start: int, window: int) -> np.ndarray:
    """The baseline: slice each stored array and concatenate channels."""
    parts = [group[v][start : start + window][:, None] for v in spec.surface]
    parts += [group[v][start : start + window] for v in spec.atmospheric]
    return np.concatenate(parts, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--windows", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = None
    store = args.store
    if store is None:
        tmp = tempfile.TemporaryDirectory()
        store = Path(tmp.name) / "toy.zarr"
        print("generating a toy-Earth store (0.25 years, 64x32) ...")
        write_toy_earth(ToyEarthConfig(years=0.25, spinup_days=30), store, progress=False)
    ds = open_era5(store, spec=SPEC)
    times = ds.time.values
    stats = compute_statistics(ds, SPEC, (str(times[0]), str(times[-1])))
    data = WindowDataset(store, SPEC, stats, window=args.window, memory_limit=0)
    cached = WindowDataset(store, SPEC, stats, window=args.window)
    group = zarr.open_group(str(store), mode="r")
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(data), args.windows)
    starts = data.starts[picks]

    # Both paths once, to warm caches and check they read the same data.
    x = data[int(picks[0])]["state"].numpy()
    mean, std = stats.mean[:, None, None], stats.std[:, None, None]
    raw = raw_read(group, SPEC, int(starts[0]), args.window)
    np.testing.assert_allclose(x, (raw - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cached[int(picks[0])]["state"].numpy(), x)

    # Interleaved per window, so that load from other processes hits both paths alike; the
    # best of the repeats of each window is kept.
    t_ours = np.full(args.windows, np.inf)
    t_raw = np.full(args.windows, np.inf)
    t_cached = np.full(args.windows, np.inf)
    for _ in range(args.repeats):
        for k, (i, s) in enumerate(zip(picks, starts, strict=True)):
            t0 = time.perf_counter()
            data[int(i)]
            t1 = time.perf_counter()
            raw_read(group, SPEC, int(s), args.window)
            t2 = time.perf_counter()
            cached[int(i)]
            t3 = time.perf_counter()
            t_ours[k] = min(t_ours[k], t1 - t0)
            t_raw[k] = min(t_raw[k], t2 - t1)
            t_cached[k] = min(t_cached[k], t3 - t2)
    ours, base = args.windows / t_ours.sum(), args.windows / t_raw.sum()
    memory = args.windows / t_cached.sum()
    mb = x.nbytes / 2**20
    print(f"window {args.window} x {SPEC.num_channels} channels x 32 x 64 ({mb:.2f} MiB float32)")
    print(f"WindowDataset (standardised, dates): {ours:8.1f} windows/s")
    print(f"raw zarr read:                       {base:8.1f} windows/s")
    print(f"ratio ours / raw: {ours / base:.2f} (goal >= 0.7)")
    print(f"WindowDataset from memory:           {memory:8.1f} windows/s", end=" ")
    print(f"({memory / base:.0f} x raw)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
