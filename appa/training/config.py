"""Typed settings of the training loop and its optimiser."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from appa.config import StrictModel

__all__ = ["LoopConfig", "OptimizerConfig", "learning_rate"]


class OptimizerConfig(StrictModel):
    """AdamW with linear warm-up then cosine (or linear, or no) decay to ``min_lr_ratio * lr``.

    ``accumulation`` micro-batches are summed into each step; gradients are clipped to a global
    norm of ``grad_clip`` (None: no clipping, the norm is still logged).
    """

    lr: float = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)
    accumulation: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> OptimizerConfig:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        return self


def learning_rate(config: OptimizerConfig, step: int, total_steps: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``total_steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.decay == "constant":
        return config.lr
    span = max(total_steps - config.warmup_steps, 1)
    progress = min(max(step - config.warmup_steps, 0) / span, 1.0)
    if config.decay == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        shape = 1 - progress
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * shape)


class LoopConfig(StrictModel):
    """The training loop.

    ``batch_size`` is per worker and micro-batch: a step sees ``batch_size * accumulation *
    workers`` samples. ``precision="auto"`` is bf16 autocast on GPU and float32 on CPU.
    ``ema_decay`` keeps an exponential moving average of the weights (diffusion), used for
    validation and saved beside the raw weights. Intervals of 0 disable the action.
    ``compile`` runs the training steps through ``torch.compile`` (validation and checkpoints
    use the plain module): on CPU it needs a C++ compiler and costs a minute of compiling, and
    speeds up small networks' steps by fusing their element-wise work (measured in
    ``benchmarks/bench_training_step.py``).
    """

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    ema_decay: float | None = Field(None, ge=0, lt=1)
    log_every: int = Field(10, ge=1)
    val_every: int = Field(0, ge=0)
    val_batches: int = Field(4, ge=1)
    checkpoint_every: int = Field(100, ge=0)
    keep_checkpoints: int = Field(3, ge=1)
    loader_workers: int = Field(0, ge=0)
    compile: bool = False
    progress: bool = True
