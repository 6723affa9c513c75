"""Time of the lensing forward model (``appa.lensing.LensingOperator``) against caustics, in one
run, on the same SIE + external shear lens, pixelated source, PSF and grids.

- ``ours (fixed lens)``: the operator as reconstructions use it, its ray-traced grid computed
  once at construction; a batch of sources shares the grid.
- ``ours (re-traced)``: ray tracing on every call (``forward(source, lenses=...)``), as when
  lens parameters change between calls.
- ``caustics``: ``LensSource`` with a ``Pixelated`` source, batched with ``torch.vmap`` over the
  source images (it ray-traces on every call).
- ``ours adjoint``: a VJP of the fixed-lens operator (what MMPS runs per solver iteration).

Times are the least over ``--repeats`` calls, in CPU seconds of this process with one thread
(insensitive to other jobs on a shared machine) and in wall seconds. The two images are also
compared (largest difference relative to the image's peak).

    python benchmarks/bench_lensing_operator.py [--batch 1 8 32] [--size 64]
        [--supersample 1 2] [--repeats 20] [--threads 1] [--no-caustics]
        [--out outputs/benchmarks/lensing_operator.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from appa.lensing import SIE, ExternalShear, LensingOperator, PixelGrid, gaussian_psf

LENS = {"theta_e": 1.2, "q": 0.7, "phi": 0.4, "x0": 0.05, "y0": -0.02, "g1": 0.03, "g2": -0.02}


def _lenses():
    return [
        SIE(LENS["theta_e"], LENS["q"], LENS["phi"], LENS["x0"], LENS["y0"]),
        ExternalShear(LENS["g1"], LENS["g2"]),
    ]


def _caustics_simulator(size: int, source_pixel: float, image_pixel: float, psf, supersample):
    import caustics

    cosmology = caustics.FlatLambdaCDM(name="cosmology")
    sie = caustics.SIE(
        cosmology=cosmology,
        name="sie",
        x0=LENS["x0"],
        y0=LENS["y0"],
        q=LENS["q"],
        phi=LENS["phi"],
        Rein=LENS["theta_e"],
    )
    shear = caustics.ExternalShear(
        cosmology=cosmology, name="shear", x0=0.0, y0=0.0, gamma_1=LENS["g1"], gamma_2=LENS["g2"]
    )
    lens = caustics.SinglePlane(cosmology=cosmology, lenses=[sie, shear], z_l=0.5, z_s=1.5)
    source = caustics.Pixelated(
        name="source", image=torch.zeros(size, size), x0=0.0, y0=0.0, pixelscale=source_pixel
    )
    options = {} if psf is None else {"psf": psf, "psf_mode": "conv2d"}
    simulator = caustics.LensSource(
        lens=lens,
        source=source,
        pixelscale=image_pixel,
        pixels_x=size,
        upsample_factor=supersample,
        **options,
    )
    source.image.to_dynamic()
    batched = torch.vmap(simulator)
    return lambda images: batched(images.reshape(images.shape[0], -1))


def _time(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return min(cpu), min(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="source and image width (pixels)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--supersample", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--psf-fwhm", type=float, default=0.15, help="arcsec; 0 for none")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-caustics", action="store_true", help="time ours only")
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/benchmarks/lensing_operator.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    use_caustics = not args.no_caustics
    if use_caustics:
        try:
            import caustics  # noqa: F401
        except ImportError:
            print("caustics is not installed (pip install 'appa[lensing-check]'): ours only")
            use_caustics = False

    source_pixel, image_pixel = 0.05, 0.1
    source_grid = PixelGrid((args.size, args.size), source_pixel)
    image_grid = PixelGrid((args.size, args.size), image_pixel)
    x, y = source_grid.coordinates(dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    rows = []
    for supersample in args.supersample:
        # both convolve at the sub-pixel scale, with the PSF drawn there
        psf = None
        if args.psf_fwhm > 0:
            psf = gaussian_psf(args.psf_fwhm, image_pixel / supersample)
        operator = LensingOperator(_lenses(), source_grid, image_grid, psf, supersample)
        simulator = None
        if use_caustics:
            simulator = _caustics_simulator(args.size, source_pixel, image_pixel, psf, supersample)
        for batch in args.batch:
            centres = torch.randn(batch, 2, generator=g) * 0.2
            sources = torch.exp(
                -((x - centres[:, :1, None]) ** 2 + (y - centres[:, 1:, None]) ** 2) / 0.05
            )
            lenses = _lenses()
            row = {"size": args.size, "supersample": supersample, "batch": batch}
            row["ours_fixed"] = _time(lambda: operator(sources), args.repeats)  # noqa: B023
            row["ours_retraced"] = _time(
                lambda: operator(sources, lenses=lenses),  # noqa: B023
                args.repeats,
            )
            v = torch.randn(batch, args.size, args.size, generator=g)
            row["ours_adjoint"] = _time(lambda: operator.adjoint(v), args.repeats)  # noqa: B023
            if simulator is not None:
                row["caustics"] = _time(lambda: simulator(sources), args.repeats)  # noqa: B023
                theirs = simulator(sources)
                ours = operator(sources)
                row["max_difference"] = float((ours - theirs).abs().max() / ours.abs().max())
                row["ratio_fixed"] = row["caustics"][0] / row["ours_fixed"][0]
                row["ratio_retraced"] = row["caustics"][0] / row["ours_retraced"][0]
            rows.append(row)
            line = (
                f"size {args.size} supersample {supersample} batch {batch:3d}: "
                f"ours fixed {1e3 * row['ours_fixed'][0]:8.3f} ms, "
                f"re-traced {1e3 * row['ours_retraced'][0]:8.3f} ms, "
                f"adjoint {1e3 * row['ours_adjoint'][0]:8.3f} ms"
            )
            if simulator is not None:
                line += (
                    f", caustics {1e3 * row['caustics'][0]:8.3f} ms; caustics/ours "
                    f"{row['ratio_fixed']:.1f}x (fixed), {row['ratio_retraced']:.1f}x "
                    f"(re-traced); max difference {row['max_difference']:.1e} of the peak"
                )
            print(line, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    print(f"CPU seconds of this process, least of {args.repeats}; written to {args.out}")


if __name__ == "__main__":
    main()
