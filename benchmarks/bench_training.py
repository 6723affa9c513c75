"""Training throughput of the tiny autoencoder: one process versus Ray Train with 2 CPU
workers (DDP over gloo) at the same global batch, on smooth synthetic fields (5 x 32 x 64).

    python benchmarks/bench_training.py [--steps 60]

Prints seconds per step of the loop itself (from the loop's own clock, so Ray's start-up is
reported separately) and the ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import numpy as np
import torch

from appa.data.datasets import write_window_store
from appa.distributed import init_ray, run_training
from appa.jobs.train import TrainAutoencoderConfig


def _fields(n: int, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    lat = np.linspace(-math.pi / 2, math.pi / 2, 32)[:, None]
    lon = np.linspace(0, 2 * math.pi, 65)[:-1][None, :]
    t = np.arange(n)[:, None, None, None]
    out = np.zeros((n, 5, 32, 64))
    for k in range(1, 5):
        for m in range(3):
            amp = g.normal(size=(1, 5, 1, 1)) / (k + m)
            phase = g.uniform(0, 2 * math.pi, size=(1, 5, 1, 1))
            out += amp * np.cos(k * lon + phase + 0.05 * k * t) * np.cos((m + 0.5) * lat)
    return ((out - out.mean()) / out.std()).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="bench-train-")
    times = np.arange(256) * np.timedelta64(6, "h") + np.datetime64("2000-01-01", "ns")
    lat = np.linspace(-90 + 2.8125, 90 - 2.8125, 32)
    store = write_window_store(f"{tmp}/s.zarr", _fields(256), times, lat)

    def job(name: str, **runner) -> TrainAutoencoderConfig:
        workers = runner.get("workers", 1)
        return TrainAutoencoderConfig.model_validate(
            {
                "data": {"path": store},
                "loop": {
                    "steps": args.steps,
                    "batch_size": args.batch // workers,
                    "log_every": args.steps,
                    "checkpoint_every": 0,
                    "progress": False,
                },
                "run_dir": f"{tmp}/{name}",
                "runner": runner,
            }
        )

    t0 = time.perf_counter()
    local = run_training(job("local", backend="local", torch_threads=1))
    local_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    init_ray(num_cpus=2, object_store_memory=200_000_000)
    ray_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray_job = job("ray", backend="ray", workers=2, torch_threads=1)
    ray_job = ray_job.model_copy(
        update={"loop": ray_job.loop.model_copy(update={"checkpoint_every": args.steps})}
    )
    ray = run_training(ray_job)
    ray_wall = time.perf_counter() - t0
    per_local = local["seconds"] / args.steps
    per_ray = ray["seconds"] / args.steps
    print(f"tiny autoencoder, global batch {args.batch}, {args.steps} steps, 1 thread per process")
    print(f"  one process:      {per_local * 1e3:7.1f} ms/step  (wall {local_wall:.1f} s)")
    print(
        f"  Ray, 2 workers:   {per_ray * 1e3:7.1f} ms/step  (wall {ray_wall:.1f} s "
        f"+ ray.init {ray_start:.1f} s)"
    )
    print(f"  speed-up of the loop: {per_local / per_ray:.2f}x; final loss {local['loss']:.4f} "
          f"(one process) vs {ray['loss']:.4f} (Ray)")  # fmt: skip


if __name__ == "__main__":
    main()
