"""Seconds per training step of the toy Earth prior's two networks, eager against
``torch.compile`` (``loop.compile``), and per batch of latent windows read from a Zarr window
store, window by window against from memory (``WindowStoreDataset(memory_limit=...)``).

    python benchmarks/bench_training_step.py [--steps 20] [--threads 1]

Networks and shapes are those of ``pipelines/configs/train_*_toy_earth.yaml`` (presets and
overrides read from them): the autoencoder on 5 x 32 x 64 states (batch 16) and the denoiser on
windows of 8 latents 8 x 8 x 16 (batch 16), one worker's share of a step. The data are
random; only the time is measured. One intra-op thread per worker is what the 2-worker Ray
runs use on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from appa.data.datasets import WindowStoreDataset, write_window_store
from appa.nn import get_preset
from appa.training import (
    AutoencoderLossConfig,
    AutoencoderObjective,
    DiffusionObjective,
    LoopConfig,
    OptimizerConfig,
    Trainer,
)

BATCH = 16
TRAINING_YEARS = ("2000-01-01", "2001-12-31")  # 2,924 six-hourly latents
CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"


def _preset(config: str):
    """The network preset of a committed training config (preset name and overrides)."""
    data = yaml.safe_load((CONFIGS / config).read_text())
    return get_preset(data["preset"], data.get("overrides", []))


def _latent_store(path: str, n: int = 4384) -> str:
    times = np.datetime64("2000-01-01", "ns") + np.arange(n) * np.timedelta64(6, "h")
    data = np.random.default_rng(0).normal(size=(n, 8, 8, 16)).astype(np.float32)
    return write_window_store(path, data, times, np.linspace(-78.75, 78.75, 8), variable="latent")


def _batch(dataset: WindowStoreDataset, start: int) -> dict[str, torch.Tensor]:
    items = [dataset[(start + i * 97) % len(dataset)] for i in range(BATCH)]
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def _seconds_per_batch(dataset: WindowStoreDataset, batches: int) -> float:
    _batch(dataset, 0)  # opens the store (and fills the cache when in memory)
    t0 = time.perf_counter()
    for b in range(batches):
        _batch(dataset, 1 + b * BATCH)
    return (time.perf_counter() - t0) / batches


def _seconds_per_step(task, batch: dict, steps: int, compile: bool) -> tuple[float, float]:
    """``(first step incl. compiling, mean of the next steps)`` in seconds."""
    loop = LoopConfig(steps=10**6, batch_size=BATCH, compile=compile, progress=False)
    trainer = Trainer(task, [batch], loop, OptimizerConfig(lr=1e-4), strategy="none")
    t0 = time.perf_counter()
    trainer.train_step([batch])
    first = time.perf_counter() - t0
    trainer.train_step([batch])
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step([batch])
    return first, (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="outputs/benchmarks/training_step.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, dict[str, float]] = {}

    with tempfile.TemporaryDirectory() as tmp:
        store = _latent_store(f"{tmp}/latents.zarr")
        streamed = WindowStoreDataset(store, 8, "latent", TRAINING_YEARS, memory_limit=0)
        cached = WindowStoreDataset(store, 8, "latent", TRAINING_YEARS)
        t_streamed = _seconds_per_batch(streamed, args.steps)
        t_cached = _seconds_per_batch(cached, args.steps)
        results["latent windows"] = {
            "baseline_s": t_streamed,
            "appa_s": t_cached,
            "speedup": t_streamed / t_cached,
        }
        latent_batch = _batch(cached, 0)

    preset = _preset("train_diffusion_toy_earth.yaml")
    ae_preset = _preset("train_autoencoder_toy_earth.yaml")
    lat = np.linspace(-87.1875, 87.1875, 32).tolist()
    state_batch = {
        "state": torch.randn(BATCH, 1, 5, 32, 64),
        "date": torch.rand(BATCH, 1, 4),
    }
    static = torch.randn(2, 32, 64)
    cases = {
        "denoiser step": (lambda: DiffusionObjective(preset.denoiser), latent_batch),
        "autoencoder step": (
            lambda: AutoencoderObjective(
                ae_preset.autoencoder,
                lat,
                AutoencoderLossConfig(spectral_weight=3e-3),
                static=static,
            ),
            state_batch,
        ),
    }
    for name, (make, batch) in cases.items():
        torch.manual_seed(0)
        first_eager, eager = _seconds_per_step(make(), batch, args.steps, compile=False)
        torch.manual_seed(0)
        first_compiled, compiled = _seconds_per_step(make(), batch, args.steps, compile=True)
        results[name] = {
            "baseline_s": eager,
            "appa_s": compiled,
            "speedup": eager / compiled,
            "compile_s": first_compiled - first_eager,
        }

    print(f"{'':18} {'baseline s':>11} {'appa s':>9} {'speedup':>8}  baseline -> appa")
    labels = {
        "latent windows": "window reads -> in memory",
        "denoiser step": "eager -> torch.compile",
        "autoencoder step": "eager -> torch.compile",
    }
    for name, r in results.items():
        extra = f" (compiling {r['compile_s']:.0f} s once)" if "compile_s" in r else ""
        print(
            f"{name:18} {r['baseline_s']:11.4f} {r['appa_s']:9.4f} {r['speedup']:8.2f}"
            f"  {labels[name]}{extra}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, **results}, indent=2))


if __name__ == "__main__":
    main()
