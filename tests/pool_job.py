"""A small pool job for the kill-and-rerun test: creates (or resumes) the archive of
``pool_utils.job_archive`` and runs its units on Ray actors with the dummy worker.

    python tests/pool_job.py OUT LOG [--address ADDR] [--delay S] [--fake-gpus N]

With ``--fake-gpus N`` it starts its own local cluster declaring N GPUs and asks for one GPU
(and half a CPU) per actor.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pool_utils
import ray.cloudpickle

from appa.distributed.pool import run_units
from appa.distributed.runner import RayConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("log")
    parser.add_argument("--address")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--fake-gpus", type=int, default=0, help="a local cluster with N GPUs")
    args = parser.parse_args()
    if args.fake_gpus:
        # Ray schedules on declared resources only: a CPU machine can pretend to hold GPUs
        ray.init(num_cpus=2, num_gpus=args.fake_gpus, include_dashboard=False,
                 object_store_memory=100_000_000)  # fmt: skip
    # the actors import nothing from tests/: the worker travels by value
    ray.cloudpickle.register_pickle_by_value(pool_utils)
    archive = pool_utils.job_archive(args.out)
    factory = functools.partial(pool_utils.DummyWorker, seed=5, log=args.log, delay=args.delay)
    config = RayConfig(
        address=args.address, progress=False, stall_timeout_s=120,
        gpus_per_worker=1.0 if args.fake_gpus else 0.0,
        cpus_per_worker=0.5 if args.fake_gpus else 1.0,
    )  # fmt: skip
    report = run_units(archive, factory, config)
    archive.finalize()
    print(
        f"computed {len(report.records)} units on {report.actors} actors, skipped {report.skipped}"
    )


if __name__ == "__main__":
    main()
