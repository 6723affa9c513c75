"""What the toy Earth's machine independence costs: its exact matrix products against plain
BLAS products of the same matrices, in the same run.

The toy Earth computes every Legendre and Fourier sum as an exact product
(``appa.data.portable.ExactMatrix``: integer-valued slices that any BLAS sums exactly), so that
any CPU computes the same trajectory. The baseline replaces each exact product by the plain
BLAS product of the unsplit matrices (fast, but its rounding depends on the BLAS kernel and so
on the CPU). Both run the same simulated days from the same state; the script prints
milliseconds per simulated 6 hours (six time steps and the diagnostics of one output state)
and their ratio.

    python benchmarks/bench_toy_earth.py --days 30 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from appa.data import portable
from appa.data.toy_earth import ToyEarth, ToyEarthConfig


@contextmanager
def plain_blas_products():
    """Every ``x @ ExactMatrix`` as the plain product ``x @ W`` while inside."""
    exact = portable.ExactMatrix.__rmatmul__

    def plain(self, x):
        return np.asarray(x, dtype=np.float64) @ self.matrix

    portable.ExactMatrix.__rmatmul__ = plain
    try:
        yield
    finally:
        portable.ExactMatrix.__rmatmul__ = exact


def run(model: ToyEarth, outputs: int) -> float:
    """Seconds for ``outputs`` output intervals (steps and diagnostics) from a copy."""
    model = copy.deepcopy(model)
    t0 = time.perf_counter()
    for _ in range(outputs):
        model.advance()
        model.fields()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/toy_earth.json"))
    args = parser.parse_args()
    model = ToyEarth(ToyEarthConfig(spinup_days=30))
    model.spin_up()
    outputs = round(args.days * 4)
    exact, plain = [], []
    for _ in range(args.repeats):  # interleaved, so that both see the same machine load
        exact.append(run(model, outputs))
        with plain_blas_products():
            plain.append(run(model, outputs))
    per = {
        name: 1e3 * float(np.median(t)) / outputs
        for name, t in (("exact", exact), ("plain", plain))
    }
    result = {
        "outputs": outputs,
        "exact_ms_per_output": round(per["exact"], 3),
        "plain_blas_ms_per_output": round(per["plain"], 3),
        "ratio": round(per["exact"] / per["plain"], 3),
    }
    print(
        f"{outputs} outputs (6 h each), median of {args.repeats}: exact products "
        f"{per['exact']:.2f} ms per output, plain BLAS {per['plain']:.2f} ms: "
        f"ratio {per['exact'] / per['plain']:.2f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
