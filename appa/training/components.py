"""Pieces of the training loop: a resumable data order, per-step seeds, weight EMA, CSV logs."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Sampler

from appa.seeds import derive_seed

__all__ = ["EMA", "CSVLog", "StreamSampler"]


class StreamSampler(Sampler[int]):
    """An endless, resumable stream of dataset indices: epoch ``e`` is a permutation drawn from
    ``derive_seed(seed, e)``, epochs follow each other without a break, and each global
    micro-batch of ``batch_size * world`` consecutive stream positions is split into ``world``
    slices of ``batch_size``, one per rank.

    The order depends only on ``(seed, len(dataset), batch_size, world)``, so a run resumed at
    ``start`` (stream positions consumed by all ranks) sees exactly the batches an uninterrupted
    run would have seen.
    """

    def __init__(
        self, size: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        if size < 1:
            raise ValueError("the dataset is empty")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world of {world}")
        if start % (batch_size * world):
            raise ValueError(f"start {start} is not a multiple of batch_size * world")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.rank, self.world = start, rank, world
        self._perm: tuple[int, torch.Tensor] | None = None

    def _index(self, position: int) -> int:
        epoch, i = divmod(position, self.size)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            self._perm = (epoch, torch.randperm(self.size, generator=g))
        return int(self._perm[1][i])

    def __iter__(self) -> Iterator[int]:
        span = self.batch_size * self.world
        position = self.start
        while True:
            first = position + self.rank * self.batch_size
            for p in range(first, first + self.batch_size):
                yield self._index(p)
            position += span


class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers:
    ``e <- e + (1 - d_n) (p - e)`` with ``d_n = min(decay, (1 + n) / (10 + n))`` after ``n``
    updates (a short warm-up so the average does not remember the initialisation for long)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        import copy

        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        source = dict(module.state_dict(keep_vars=True))
        for name, e in self.module.state_dict(keep_vars=True).items():
            p = source[name].detach()
            if e.dtype.is_floating_point:
                e.lerp_(p.to(e.dtype), 1 - d)
            else:
                e.copy_(p)
        self.updates += 1


class CSVLog:
    """Appends rows to a CSV file with a fixed header (the first row's keys). Reopening at a
    resumed step drops rows of later steps, which a crashed run logged after its last
    checkpoint."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fields: list[str] | None = None
        if self.path.exists() and resume_step is not None:
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.fields = reader.fieldnames and list(reader.fieldnames)
                rows = [r for r in reader if int(r["step"]) <= resume_step]
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w", newline="") as f:
                if self.fields:
                    writer = csv.DictWriter(f, self.fields)
                    writer.writeheader()
                    writer.writerows(rows)
            os.replace(tmp, self.path)
        elif self.path.exists():
            self.path.unlink()

    def write(self, row: Mapping[str, float | int | str]) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        unknown = set(row) - set(self.fields)
        if unknown:
            raise ValueError(f"{self.path}: columns {sorted(unknown)} not in the header")
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            if new:
                writer.writeheader()
            writer.writerow(dict(row))
