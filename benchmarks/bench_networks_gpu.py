"""Forward + backward of a preset's two networks: step time, peak memory, achieved TFLOP/s.

Prepared for one GPU (the ``paper`` preset in bf16 autocast at batch 1, against a float32/TF32
baseline of the same network in the same run, with the bf16/fp32 speed ratio), and runnable on a
CPU with a tiny preset so it is tested on every machine::

    python benchmarks/bench_networks_gpu.py --preset paper --device cuda --out outputs/bench.json
    python benchmarks/bench_networks_gpu.py --preset tiny --device cpu --steps 2 --warmup 1

FLOPs are model FLOPs (one forward and one backward, without the recomputation of activation
checkpointing), counted on the meta device with ``torch.utils.flop_counter``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from appa.dates import date_features
from appa.nn import LatentDiT, StateAutoencoder, WeightedMSE, get_preset
from appa.nn.info import model_info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _steps(
    model: nn.Module,
    loss_fn,
    device: torch.device,
    dtype: str,
    warmup: int,
    steps: int,
) -> dict:
    """Times ``steps`` forward+backward passes after ``warmup`` ones."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def one() -> float:
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model)
        loss.backward()
        return float(loss.detach())

    for _ in range(warmup):
        one()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    loss = math.nan
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        loss = one()
        _sync(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:  # whole-process peak resident memory (kB on Linux)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times.sort()
    return {"step_s": times[len(times) // 2], "peak_bytes": int(peak), "loss": loss}


def run(
    preset_name: str,
    device: str,
    batch: int = 1,
    steps: int = 5,
    warmup: int = 2,
    checkpointing: str = "preset",
    overrides: list[str] | None = None,
    baseline: bool = True,
) -> list[dict]:
    """Benchmarks both networks of the preset; returns one record per (network, precision)."""
    dev = torch.device(device)
    over = list(overrides or [])
    if checkpointing != "preset":
        flag = "true" if checkpointing == "on" else "false"
        over += [f"autoencoder.checkpointing={flag}", f"denoiser.checkpointing={flag}"]
    preset = get_preset(preset_name, over)
    info = model_info(preset, preset_name, batch_size=batch)
    if dev.type == "cuda":
        # the fp32 baseline is what one would run without bf16: TF32 tensor cores allowed
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    ae_cfg, dn_cfg = preset.autoencoder, preset.denoiser
    C, (H, W) = ae_cfg.in_channels, ae_cfg.grid
    c, h, w = ae_cfg.latent_shape
    g = torch.Generator(device=dev).manual_seed(0)
    lat = torch.linspace(-90, 90, H).tolist()

    def ae_factory() -> tuple[nn.Module, object]:
        with dev:  # initialise on the device: a CPU init of 10^9 parameters takes a while
            model = StateAutoencoder(ae_cfg).train()
        loss = WeightedMSE(lat, None).to(dev)
        x = torch.randn(batch, C, H, W, device=dev, generator=g)

        def step(m: nn.Module) -> Tensor:
            _, y = m(x)
            return loss(y, x).mean()

        return model, step

    def dit_factory() -> tuple[nn.Module, object]:
        with dev:
            model = LatentDiT(dn_cfg).train()
        T = dn_cfg.window
        z = torch.randn(batch, T, c, h, w, device=dev, generator=g)
        sigma = torch.exp(torch.randn(batch, device=dev, generator=g))
        hours = torch.arange(T, dtype=torch.float64)[None].expand(batch, T)
        date = date_features(hours).to(dev)
        ctx = None
        if dn_cfg.context_channels:
            ctx = torch.randn(batch, dn_cfg.context_channels, h, w, device=dev, generator=g)

        def step(m: nn.Module) -> Tensor:
            noisy = z + sigma[:, None, None, None, None] * torch.randn_like(z)
            out = m(noisy, sigma.log() / 4, date=date, context=ctx)
            return (out.float() - z).square().mean()

        return model, step

    records = []
    for name, factory, cost in (
        ("autoencoder", ae_factory, info.autoencoder),
        ("denoiser", dit_factory, info.denoiser),
    ):
        model, step = factory()
        for dtype in ("bf16", "fp32") if baseline else ("bf16",):
            record = {
                "preset": preset_name,
                "network": name,
                "dtype": dtype,
                "batch": batch,
                "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                "parameters": cost.parameters,
                "flops": cost.flops,
                "checkpointing": bool(getattr(model.config, "checkpointing", False)),
            }
            try:
                record.update(_steps(model, step, dev, dtype, warmup, steps))
                record["tflops_per_s"] = cost.flops / record["step_s"] / 1e12
            except torch.OutOfMemoryError as error:
                record["error"] = f"out of memory: {str(error).splitlines()[0]}"
                model.zero_grad(set_to_none=True)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            records.append(record)
            _print(record)
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for name in ("autoencoder", "denoiser"):
        pair = {r["dtype"]: r for r in records if r["network"] == name and "step_s" in r}
        if "bf16" in pair and "fp32" in pair:
            ratio = pair["fp32"]["step_s"] / pair["bf16"]["step_s"]
            print(f"{name}: bf16 is {ratio:.2f}x the speed of fp32/TF32")
    return records


def _print(r: dict) -> None:
    if "error" in r:
        print(f"{r['network']:<12} {r['dtype']:<5} {r['error']}", flush=True)
        return
    print(
        f"{r['network']:<12} {r['dtype']:<5} batch {r['batch']}  "
        f"step {r['step_s'] * 1e3:9.1f} ms  peak {r['peak_bytes'] / 2**30:7.2f} GiB  "
        f"{r['tflops_per_s']:8.3g} TFLOP/s  ({r['flops'] / 1e12:.3g} TFLOP/step, "
        f"{r['parameters'] / 1e6:.1f}M params, checkpointing {r['checkpointing']})",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--checkpointing", choices=["preset", "on", "off"], default="preset")
    parser.add_argument("--no-baseline", action="store_true", help="Skip the fp32 baseline.")
    parser.add_argument("--set", action="append", default=[], help="Preset override key=value.")
    parser.add_argument("--out", type=Path, default=None, help="Write the records as JSON.")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here; use --device cpu with --preset tiny", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    print(f"torch {torch.__version__}, preset {args.preset}, device {args.device}", flush=True)
    records = run(
        args.preset,
        args.device,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        checkpointing=args.checkpointing,
        overrides=args.set,
        baseline=not args.no_baseline,
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps(records, indent=2))
        tmp.replace(args.out)
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
