"""Cost of one posterior-sampling step (MMPS through the decoder) against a plain denoiser call.

One step denoises a trajectory of ``2K`` latent states as overlapping windows (stride ``K/2``)
with :class:`appa.assimilation.WindowObservation` and :class:`appa.diffusion.MMPSDenoiser`, for
``n`` station observations spread over half of the frames, and for several Krylov iterations.
Both operator variants run in the same process: decoding only the frames that hold
observations (ours) and decoding every frame of every window (Appa's way). Printed as ratios
to the plain (prior) windowed denoiser call on the same batch:

- ``total``: the MMPS call;
- ``decoder``: the operator's forward, JVP and VJP passes, timed where they run (around each
  call, and between gradient hooks as backpropagation enters and leaves the operator);
- ``solver``: the Krylov arithmetic alone (the solver run on a diagonal system of the same
  size);
- ``denoiser``: the rest (the denoiser's forward with its graph and the VJPs through it, and
  the bookkeeping around them).

Random weights (the cost does not depend on them). Times are the least over ``--repeats`` runs,
in CPU seconds of this process on the CPU (with one thread, insensitive to other jobs on a
shared machine) and wall-clock seconds on a GPU.

    python benchmarks/bench_mmps_step.py [--preset tiny] [--override KEY=VALUE ...]
        [--obs 10 100 1000 10000]
        [--iterations 1 2 4] [--repeats 3] [--device cpu] [--out outputs/benchmarks/mmps_step.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from appa.assimilation import LatentPrior, WindowObservation
from appa.data.spec import StateSpec
from appa.data.stats import Statistics
from appa.diffusion import MMPSDenoiser, ScheduleConfig, WindowedDenoiser, cg, gmres
from appa.nn import StateAutoencoder, get_preset
from appa.nn.latent import latent_denoiser
from appa.observations import make_table

TOY_SPEC = StateSpec(
    surface=["2m_temperature", "mean_sea_level_pressure", "sea_surface_temperature"],
    atmospheric=["geopotential", "temperature"],
    levels=[500],
)


def build_prior(preset: str, device: str, overrides: list[str] = ()) -> LatentPrior:
    """A :class:`LatentPrior` of the preset's networks with random weights."""
    torch.manual_seed(0)
    p = get_preset(preset, overrides)
    ae, dn = p.autoencoder, p.denoiser
    C = ae.in_channels
    spec = TOY_SPEC if C == 5 else StateSpec(surface=[f"channel_{i}" for i in range(C)])
    stats = Statistics(spec.channel_names(), np.zeros(C), np.ones(C), ("2000", "2000"))
    H, W = ae.grid
    lat = np.linspace(-90 + 90 / H, 90 - 90 / H, H)
    prior = LatentPrior(
        StateAutoencoder(ae),
        latent_denoiser(dn),
        ScheduleConfig().build(),
        spec,
        stats,
        ae.latent_shape,
        dn.window,
        lat,
        np.arange(W) * 360.0 / W,
        date_conditioning=dn.date_features > 0,
    )
    return prior.to(device)


def stations(prior: LatentPrior, times: pd.DatetimeIndex, n: int, seed: int = 0):
    """``n`` point observations of random channels at random places, over ``times``."""
    rng = np.random.default_rng(seed)
    t = times.values[rng.integers(0, len(times), n)]
    channels = prior.spec.channels
    pick = rng.integers(0, len(channels), n)
    variable = [channels[i][0] for i in pick]
    level = [np.nan if channels[i][1] is None else channels[i][1] for i in pick]
    return make_table(
        time=t, latitude=rng.uniform(-80, 80, n), longitude=rng.uniform(0, 360, n),
        variable=variable, value=rng.standard_normal(n), error_std=0.1, platform="station",
        level=level,
    )  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def clock(device: torch.device):
    """CPU time of this process on the CPU (one thread: the work done, whatever else runs on a
    shared machine), wall-clock time on a GPU."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def timed(fn, repeats: int, device: torch.device) -> float:
    """Least seconds of ``fn()`` over ``repeats`` runs after one warm-up (the least is the
    estimate least disturbed by other work)."""
    fn()
    now = clock(device)
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = now()
        fn()
        _sync(device)
        out.append(now() - t0)
    return float(np.min(out))


class Timed:
    """Wraps the operator and accumulates the seconds spent in it: its forward and JVP passes
    (around each call) and its backward passes (between hooks on its output's and its input's
    gradients, which fire as backpropagation enters and leaves the operator)."""

    def __init__(self, op: WindowObservation, device: torch.device) -> None:
        self.op, self.device, self.seconds = op, device, 0.0

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        now = clock(self.device)
        _sync(self.device)
        t0 = now()
        out = self.op(u)
        _sync(self.device)
        self.seconds += now() - t0
        if torch.is_grad_enabled() and u.requires_grad:
            entered: list[float] = []

            def enter(grad: torch.Tensor) -> torch.Tensor:
                _sync(self.device)
                entered.append(now())
                return grad

            def leave(grad: torch.Tensor) -> torch.Tensor:
                _sync(self.device)
                if entered:
                    self.seconds += now() - entered.pop()
                return grad

            out.register_hook(enter)
            u.register_hook(leave)
        return out


def run(args) -> list[dict]:
    device = torch.device(args.device)
    prior = build_prior(args.preset, args.device, args.override)
    K = prior.window
    stride = max(1, K // 2)
    L = 2 * K
    times = pd.date_range("2003-01-01", periods=L, freq="6h")
    wd = WindowedDenoiser(prior.denoiser, K, stride)
    layout = wd.layout(L)
    g = torch.Generator(device=device).manual_seed(0)
    sigma_value = 1.0
    x_t = sigma_value * torch.randn(1, L, *prior.latent_shape, generator=g, device=device)
    sigma = torch.full((1,), sigma_value, device=device)
    cond = prior.conditioning(times, 1)
    with torch.no_grad():
        t_plain = timed(lambda: wd(x_t, sigma, **cond), args.repeats, device)
    print(
        f"preset {args.preset}: window K={K}, {layout.num_windows} windows of a {L}-state "
        f"trajectory, latent {prior.latent_shape}, state {prior.state_shape}; "
        f"plain denoiser call {1e3 * t_plain:.1f} ms"
    )
    solve = cg if args.solver == "cg" else gmres
    observed_times = times[::2]  # half of the frames hold observations
    C, H, W = prior.state_shape
    rows = []
    header = (
        f"{'obs':>6} {'it':>3} {'frames':>9} {'decoded':>7} {'ms':>9} {'total':>7} "
        f"{'denoiser':>8} {'decoder':>8} {'solver':>7}"
    )
    print(header)
    for n in args.obs:
        n_eff = min(n, len(observed_times) * C * H * W)
        table = stations(prior, observed_times, n_eff)
        for iterations in args.iterations:
            for frames in ("observed", "all"):
                obs = WindowObservation(prior, layout, times, table, frames=frames)
                gaussian = obs.observation(1)
                timer = Timed(obs, device)
                gaussian.operator = timer
                mmps = MMPSDenoiser(prior.denoiser, gaussian, args.solver, iterations)
                step = WindowedDenoiser(mmps, K, stride)
                # the total and the operator's share from the same runs; the fastest run kept
                now = clock(device)
                step(x_t, sigma, **cond)
                runs = []
                for _ in range(args.repeats):
                    timer.seconds = 0.0
                    _sync(device)
                    t0 = now()
                    step(x_t, sigma, **cond)
                    _sync(device)
                    runs.append((now() - t0, timer.seconds))
                t_total, t_op = min(runs)
                r = torch.randn(layout.num_windows, obs.size, device=device)
                d = torch.rand(obs.size, device=device) + 1
                t_solver = timed(
                    lambda r=r, d=d, it=iterations: solve(lambda p, d=d: d * p, r, it),
                    args.repeats,
                    device,
                )
                t_decoder = t_op
                t_denoiser = t_total - t_decoder - t_solver
                row = {
                    "preset": args.preset,
                    "obs": n_eff,
                    "iterations": iterations,
                    "solver": args.solver,
                    "frames": frames,
                    "decoded_frames": obs.decoded_frames,
                    "plain_ms": 1e3 * t_plain,
                    "mmps_ms": 1e3 * t_total,
                    "total_ratio": t_total / t_plain,
                    "denoiser_ratio": t_denoiser / t_plain,
                    "decoder_ratio": t_decoder / t_plain,
                    "solver_ratio": t_solver / t_plain,
                }
                rows.append(row)
                print(
                    f"{n_eff:>6} {iterations:>3} {frames:>9} {obs.decoded_frames:>7} "
                    f"{row['mmps_ms']:>9.1f} {row['total_ratio']:>7.2f} "
                    f"{row['denoiser_ratio']:>8.2f} {row['decoder_ratio']:>8.2f} "
                    f"{row['solver_ratio']:>7.2f}"
                )
            pair = rows[-2:]
            print(
                f"{'':>6} {'':>3} observed/all time ratio: "
                f"{pair[0]['mmps_ms'] / pair[1]['mmps_ms']:.2f}"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--override", nargs="*", default=[], help="preset key=value overrides")
    parser.add_argument("--obs", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--iterations", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--solver", choices=["cg", "gmres"], default="gmres")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/mmps_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
