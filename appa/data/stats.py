"""Standardisation statistics per channel (variable and level), computed with dask over a
configured training period only, and stored next to the data as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import torch
import xarray as xr

from appa.data.grids import area_weights
from appa.data.spec import StateSpec
from appa.files import written_whole

__all__ = ["Statistics", "channel_moments", "compute_statistics", "default_stats_path"]


@dataclass
class Statistics:
    """Mean and standard deviation per channel of a :class:`StateSpec`, in physical units."""

    channels: list[str]
    mean: np.ndarray
    std: np.ndarray
    period: tuple[str, str]
    area_weighted: bool = True
    source: str = ""
    count: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.std = np.asarray(self.std, dtype=np.float64)
        if self.mean.shape != (len(self.channels),) or self.std.shape != self.mean.shape:
            raise ValueError("mean and std need one value per channel")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.std).all()):
            raise ValueError("statistics contain NaN or infinite values")
        bad = [c for c, s in zip(self.channels, self.std, strict=True) if s <= 0]
        if bad:
            raise ValueError(f"channels {bad} have zero variance over {self.period}")

    def for_spec(self, spec: StateSpec) -> Statistics:
        """The statistics of the channels of ``spec`` (a subset, in its order)."""
        names = spec.channel_names()
        missing = [n for n in names if n not in self.channels]
        if missing:
            raise KeyError(f"no statistics for channels {missing}; have {self.channels}")
        index = [self.channels.index(n) for n in names]
        return Statistics(
            names, self.mean[index], self.std[index], self.period, self.area_weighted,
            self.source, self.count, dict(self.extra),
        )  # fmt: skip

    def tensors(self, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` shaped ``(channel, 1, 1)`` for broadcasting over ``(.., C, H, W)``."""
        mean = torch.as_tensor(self.mean, dtype=dtype)[:, None, None]
        std = torch.as_tensor(self.std, dtype=dtype)[:, None, None]
        return mean, std

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` on ``(..., channel, lat, lon)``."""
        mean, std = self.tensors(x.dtype)
        return (x - mean.to(x.device)) / std.to(x.device)

    def unstandardize(self, z: torch.Tensor) -> torch.Tensor:
        """``z std + mean`` on ``(..., channel, lat, lon)``."""
        mean, std = self.tensors(z.dtype)
        return z * std.to(z.device) + mean.to(z.device)

    def to_json(self) -> dict:
        return {
            "channels": self.channels,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "period": list(self.period),
            "area_weighted": self.area_weighted,
            "source": self.source,
            "count": self.count,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: dict) -> Statistics:
        return cls(
            list(data["channels"]), np.asarray(data["mean"]), np.asarray(data["std"]),
            tuple(data["period"]), bool(data["area_weighted"]), data.get("source", ""),
            int(data.get("count", 0)), dict(data.get("extra", {})),
        )  # fmt: skip

    def save(self, path: str | Path) -> Path:
        """Writes JSON atomically (temporary file, then rename)."""
        path = Path(path)
        with written_whole(path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Statistics:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no statistics at {path}; compute them with compute_statistics"
            )
        return cls.from_json(json.loads(path.read_text()))


def default_stats_path(store: str | Path) -> Path:
    """``<store>.stats.json`` beside a local store."""
    text = str(store).removeprefix("file://").rstrip("/")
    if "://" in text:
        raise ValueError(f"{store} is remote: give a local path for its statistics")
    return Path(text + ".stats.json")


def compute_statistics(
    ds: xr.Dataset,
    spec: StateSpec,
    period: tuple[str, str],
    area_weighted: bool = True,
    source: str = "",
    std_floor: float = 0.0,
) -> Statistics:
    """Per-channel mean and standard deviation over ``period`` (inclusive dates) only.

    ``ds`` is canonical (dask-backed or not). Area weighting uses the cell areas of
    :func:`appa.data.grids.area_weights` (global or regional grids).
    NaN in the spec's masked variables is skipped (weights renormalised over valid cells):
    land, and the levels below a sea's floor. A channel with no valid value in the period is an
    error naming it.

    ``std_floor`` (in ``[0, 1)``) raises each channel's standard deviation to at least that
    fraction of the largest standard deviation of the same variable over the spec's levels
    (recorded in ``extra["std_floor"]``). A sea's deep water barely changes (oxygen is exactly
    0 in an anoxic basin, chlorophyll below the light): standardised by their own tiny spread,
    those channels would weigh as much as the surface's in a loss and hold values that mean
    nothing; with the floor they are measured on their variable's scale. 0 keeps every
    channel's own spread (zero variance is then an error).

    Everything is reduced in one dask computation (mean and mean square in float64).
    """
    if not 0.0 <= std_floor < 1.0:
        raise ValueError(f"std_floor must lie in [0, 1), got {std_floor}")
    start, end = (pd.Timestamp(p) for p in period)
    if end < start:
        raise ValueError(f"statistics period {period} ends before it starts")
    times = pd.DatetimeIndex(ds["time"].values)
    inside = (times >= start) & (times <= end)
    if not inside.any():
        raise ValueError(
            f"statistics period {period} holds no time of the data ({times[0]} to {times[-1]})"
        )
    sub = ds.isel(time=np.flatnonzero(inside))
    weights = xr.DataArray(
        area_weights(sub["latitude"].values) if area_weighted else np.ones(sub.sizes["latitude"]),
        dims=("latitude",),
    )
    lazy = []
    for name, level in spec.channels:
        var = sub[name] if level is None else sub[name].sel(level=level)
        var = var.astype(np.float64)
        w = var.notnull() * weights
        total = w.sum(("time", "latitude", "longitude"))
        m1 = (var.fillna(0) * w).sum(("time", "latitude", "longitude")) / total
        m2 = (var.fillna(0) ** 2 * w).sum(("time", "latitude", "longitude")) / total
        nans = var.isnull().sum()
        lazy.append((m1.data, m2.data, nans.data, total.data))
    (results,) = dask.compute(lazy)
    for (name, level), (_, _, nans, total) in zip(spec.channels, results, strict=True):
        if nans and name not in spec.masked:
            raise ValueError(f"NaN in {name} (level {level}), which is not declared masked")
        if not total > 0:
            raise ValueError(
                f"{name} (level {level}) holds no valid value over {period} (all NaN: a level "
                "below the sea floor everywhere?); leave that level out of the spec"
            )
    mean = np.array([float(r[0]) for r in results])
    var = np.array([float(r[1]) for r in results]) - mean**2
    std = np.sqrt(np.clip(var, 0.0, None))
    extra: dict = {}
    if std_floor > 0:
        names = [name for name, _ in spec.channels]
        largest = {n: max(s for m, s in zip(names, std, strict=True) if m == n) for n in names}
        std = np.maximum(std, [std_floor * largest[n] for n in names])
        extra["std_floor"] = std_floor
    return Statistics(
        spec.channel_names(), mean, std,
        (str(times[inside][0]), str(times[inside][-1])), area_weighted, source,
        int(inside.sum()), extra,
    )  # fmt: skip


def channel_moments(array: Any, start: int, stop: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation ``(C,)`` of ``array[start:stop]``, an array of
    shape ``(T, C, H, W)`` (a Zarr array: read ``block`` times at a time), from float64 sums
    of ``x`` and ``x^2`` in that order of blocks (the std is floored at 1e-6)."""
    if not 0 <= start < stop <= array.shape[0]:
        raise ValueError(f"times [{start}, {stop}) outside the array's {array.shape[0]}")
    s = np.zeros(array.shape[1])
    s2 = np.zeros(array.shape[1])
    n = 0
    for i in range(start, stop, block):
        x = np.asarray(array[i : min(i + block, stop)], dtype=np.float64)
        s += x.sum(axis=(0, 2, 3))
        s2 += np.square(x).sum(axis=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    return mean, np.sqrt(np.maximum(s2 / n - mean**2, 1e-12))
