"""A small pool job for the kill-and-rerun test: creates (or resumes) the archive of
``pool_utils.job_archive`` and runs its units on Ray actors with the dummy worker.

    python tests/pool_job.py OUT LOG --address ADDR [--delay S]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pool_utils
import ray.cloudpickle

from appa.distributed.pool import PoolConfig, run_units


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("log")
    parser.add_argument("--address")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    # the actors import nothing from tests/: the worker travels by value
    ray.cloudpickle.register_pickle_by_value(pool_utils)
    archive = pool_utils.job_archive(args.out)
    factory = functools.partial(pool_utils.DummyWorker, seed=5, log=args.log, delay=args.delay)
    config = PoolConfig(address=args.address, progress=False, stall_timeout_s=120)
    report = run_units(archive, factory, config)
    archive.finalize()
    print(f"computed {len(report.records)} units, skipped {report.skipped}")


if __name__ == "__main__":
    main()
