"""The Gaussian-mixture posterior-sampling benchmark (Cardoso et al., MCGdiff, ICLR 2024).

25-component mixtures in d = 8 and 80 observed through d_y = 1, 2, 4 random projections; the
exact posterior is a mixture. For each seed (a new mixture, operator and observation), draws
samples with each posterior denoiser (100 DDPM steps by default) and reports the sliced
Wasserstein distance to exact posterior samples, beside the floor (two independent exact sets)
and the prior. azula's MMPS runs on the same denoiser, sampler, steps and sample count; the time
ratio ours/azula compares identical algorithms (GMRES, same iterations).

    python benchmarks/bench_posterior_gmm.py [--seeds 5] [--samples 1000] [--dims 8 80]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from appa.diffusion import (
    DiagonalGaussianDenoiser,
    DPSDenoiser,
    MMPSDenoiser,
    SMCSampler,
    make_sampler,
)
from appa.diffusion.testproblems import gaussian_mixture_problem
from appa.metrics import sliced_wasserstein

f64 = torch.float64

METHODS = [
    "floor",
    "prior",
    "dps",
    "diagonal",
    "mmps_cg1",
    "mmps_exact",
    "mmps_gmres_m",
    "azula_gmres_m",
    "mmps_gmres_1",
    "azula_gmres_1",
    "smc_mmps",
]


def run_cell(d: int, m: int, seed: int, n: int, steps: int, azula: bool) -> dict[str, float]:
    p = gaussian_mixture_problem(d=d, m=m, seed=seed)
    ref = p.posterior.sample(n, torch.Generator().manual_seed(10_000 + seed))
    out: dict[str, float] = {}
    times: dict[str, float] = {}

    def record(name, fn):
        start = time.perf_counter()
        x = fn()
        times[name] = time.perf_counter() - start
        out[name] = sliced_wasserstein(x, ref)

    record("floor", lambda: p.posterior.sample(n, torch.Generator().manual_seed(20_000 + seed)))
    record("prior", lambda: p.prior.sample(n, torch.Generator().manual_seed(30_000 + seed)))

    def ours(den):
        return lambda: make_sampler("ddpm", den, steps=steps).sample(n, (d,), seed=seed, dtype=f64)

    record("dps", ours(DPSDenoiser(p.prior, p.observation)))
    record("diagonal", ours(DiagonalGaussianDenoiser(p.prior, p.observation)))
    record("mmps_cg1", ours(MMPSDenoiser(p.prior, p.observation, solver="cg", iterations=1)))
    exact = MMPSDenoiser(p.prior, p.observation, solver="direct")
    record("mmps_exact", ours(exact))
    for its in (m, 1):
        record(
            f"mmps_gmres_{'m' if its == m else 1}",
            ours(MMPSDenoiser(p.prior, p.observation, solver="gmres", iterations=its)),
        )
        if azula:
            from _azula import azula_mmps_sampler, azula_sample

            sampler = azula_mmps_sampler(p.prior, p.A, p.y, p.noise_variance, its, steps)
            record(
                f"azula_gmres_{'m' if its == m else 1}",
                lambda s=sampler: azula_sample(s, n, d, seed),
            )
    record("smc_mmps", lambda: SMCSampler(exact, steps=steps).sample(n, (d,), seed=seed, dtype=f64))
    out.update({f"{k}_time_s": v for k, v in times.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 80])
    parser.add_argument("--obs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--no-azula", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/gmm.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    azula = not args.no_azula
    if azula:
        from _azula import require_azula

        require_azula()

    summary = []
    for d in args.dims:
        for m in args.obs:
            cells = [run_cell(d, m, s, args.samples, args.steps, azula) for s in range(args.seeds)]
            row = {
                "d": d,
                "d_y": m,
                "seeds": args.seeds,
                "samples": args.samples,
                "steps": args.steps,
            }
            for key in cells[0]:
                values = [c[key] for c in cells]
                row[key] = statistics.mean(values)
                row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            for its in ("m", "1"):
                if f"azula_gmres_{its}_time_s" in row:
                    row[f"time_ratio_gmres_{its}"] = (
                        row[f"mmps_gmres_{its}_time_s"] / row[f"azula_gmres_{its}_time_s"]
                    )
            summary.append(row)
            shown = "  ".join(
                f"{k}={row[k]:.2f}±{row[k + '_std']:.2f}" for k in METHODS if k in row
            )
            ratios = "  ".join(f"{k}={row[k]:.2f}" for k in row if k.startswith("time_ratio"))
            print(f"[d={d:3d} d_y={m}] SW: {shown}  {ratios}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
