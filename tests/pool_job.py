"""A small pool job for the kill-and-rerun test: creates (or resumes) an archive of the dummy
worker's fields and runs its units on Ray actors.

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
from appa.io.archive import create_archive

CONFIG = {"job": "pool-test", "seed": 5}
UNITS = {"member": 1, "time": 2}


def build(out: str):
    return create_archive(
        out, pool_utils.template(members=2, steps=8), units=UNITS, config=CONFIG,
        allow_nan=["sea_surface_temperature"], provenance={"seeds": {"base": 5}},
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("log")
    parser.add_argument("--address")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    # the actors import nothing from tests/: the worker travels by value
    ray.cloudpickle.register_pickle_by_value(pool_utils)
    archive = build(args.out)
    factory = functools.partial(pool_utils.DummyWorker, seed=5, log=args.log, delay=args.delay)
    config = PoolConfig(address=args.address, progress=False, stall_timeout_s=120)
    report = run_units(archive, factory, config)
    archive.finalize()
    print(f"computed {len(report.records)} units, skipped {report.skipped}")


if __name__ == "__main__":
    main()
