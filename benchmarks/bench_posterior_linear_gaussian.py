"""Linear-Gaussian posterior sampling: accuracy of posterior denoisers against the closed form.

d = 64 Gaussian-process prior (dense covariance), 16 observations (random matrix or 0/1 mask),
noise variance 1e-2. For each step count, draws samples with the Heun sampler and reports the
2-Wasserstein distance between the Gaussian fitted to the samples and the exact posterior, for
MMPS (converged CG), DPS, the diagonal (SDA) approximation and the prior; and runs azula's MMPS
on the same denoiser, sampler, steps and sample count, with the time ratio ours/azula.

    python benchmarks/bench_posterior_linear_gaussian.py [--samples 10000] [--steps 16 32 64 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from appa.diffusion import (
    DiagonalGaussianDenoiser,
    DPSDenoiser,
    MMPSDenoiser,
    make_sampler,
)
from appa.diffusion.testproblems import linear_gaussian_problem
from appa.metrics import gaussian_w2

f64 = torch.float64


def w2_to(post, samples: torch.Tensor) -> float:
    return gaussian_w2(samples.mean(0), torch.cov(samples.T), post.mean, post.cov)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--iterations", type=int, default=16, help="Krylov iterations (m = 16)")
    parser.add_argument("--no-azula", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the pair")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/linear_gaussian.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.no_azula:
        from _azula import azula_mmps_sampler, azula_sample, require_azula

        require_azula()

    results = []
    for operator in ("dense", "mask"):
        p = linear_gaussian_problem(d=64, m=16, noise_variance=1e-2, operator=operator, seed=0)
        exact = p.posterior.sample(args.samples, torch.Generator().manual_seed(123))
        floor = w2_to(p.posterior, exact)
        prior = w2_to(p.posterior, p.prior.sample(args.samples, torch.Generator().manual_seed(7)))
        for steps in args.steps:
            row = {"operator": operator, "steps": steps, "floor": floor, "prior": prior}
            methods = {
                "mmps_cg": MMPSDenoiser(
                    p.prior, p.observation, solver="cg", iterations=args.iterations
                ),
                "mmps_gmres": MMPSDenoiser(
                    p.prior, p.observation, solver="gmres", iterations=args.iterations
                ),
                "dps": DPSDenoiser(p.prior, p.observation),
                "diagonal": DiagonalGaussianDenoiser(p.prior, p.observation),
            }
            runs = {
                name: lambda den=den, steps=steps: make_sampler("heun", den, steps=steps).sample(
                    args.samples, (64,), seed=0, dtype=f64
                )
                for name, den in methods.items()
            }
            if not args.no_azula:
                sampler = azula_mmps_sampler(
                    p.prior, p.A, p.y, p.noise_variance, args.iterations, steps, sampler="heun"
                )
                runs["azula_mmps_gmres"] = lambda s=sampler: azula_sample(
                    s, args.samples, 64, seed=0
                )
            # the timed pair (same algorithm) alternates, best of --repeats, so that load from
            # other processes hits both alike
            timed = {"mmps_gmres", "azula_mmps_gmres"}
            for name, run in runs.items():
                if name not in timed:
                    start = time.perf_counter()
                    row[name] = w2_to(p.posterior, run())
                    row[f"{name}_time_s"] = time.perf_counter() - start
            for repeat in range(args.repeats):
                for name in sorted(timed & runs.keys()):
                    start = time.perf_counter()
                    x = runs[name]()
                    elapsed = time.perf_counter() - start
                    row[f"{name}_time_s"] = min(row.get(f"{name}_time_s", elapsed), elapsed)
                    if repeat == 0:
                        row[name] = w2_to(p.posterior, x)
            if not args.no_azula:
                row["time_ratio_ours_over_azula"] = (
                    row["mmps_gmres_time_s"] / row["azula_mmps_gmres_time_s"]
                )
            results.append(row)
            cols = [
                "mmps_cg",
                "mmps_gmres",
                "azula_mmps_gmres",
                "dps",
                "diagonal",
                "prior",
                "floor",
            ]
            cells = "  ".join(f"{c}={row[c]:.4f}" for c in cols if c in row)
            ratio = row.get("time_ratio_ours_over_azula")
            print(
                f"[{operator:5s} steps={steps:4d}] W2: {cells}"
                + (f"  time ours/azula={ratio:.2f}" if ratio else ""),
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
