"""Torch datasets of windows of consecutive states (physical or latent) with date features.

Each item is a window of ``K`` consecutive states. The store is opened lazily in each process
on first access (never pickled), so the datasets work with any number of ``DataLoader`` workers
and with Ray Data readers that construct one dataset per actor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch.utils.data import Dataset

from appa.data.sources import open_era5
from appa.data.spec import StateSpec
from appa.data.stats import Statistics
from appa.dates import date_features

__all__ = ["LatentWindowDataset", "WindowDataset", "window_starts"]


def window_starts(times: np.ndarray, window: int, stride: int = 1) -> np.ndarray:
    """Indices ``i`` such that ``times[i : i + window]`` are consecutive at the most common
    spacing (windows never straddle a gap), every ``stride``-th."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
    n = len(times)
    if n < window:
        return np.zeros(0, dtype=np.int64)
    if window == 1:
        return np.arange(0, n, stride, dtype=np.int64)
    dt = np.diff(np.asarray(times).astype("datetime64[ns]").astype(np.int64))
    values, counts = np.unique(dt, return_counts=True)
    regular = dt == values[np.argmax(counts)]
    # A window starting at i is valid when the K - 1 steps after i are all regular.
    bad = np.concatenate([[0], np.cumsum(~regular)])
    starts = np.arange(n - window + 1)
    ok = bad[starts + window - 1] - bad[starts] == 0
    return starts[ok][::stride]


def _period_index(times: np.ndarray, period: tuple[str, str] | None) -> np.ndarray:
    if period is None:
        return np.arange(len(times))
    start, end = (pd.Timestamp(p) for p in period)
    t = pd.DatetimeIndex(times)
    index = np.flatnonzero((t >= start) & (t <= end))
    if index.size == 0:
        raise ValueError(f"period {period} holds no time of the store ({t[0]} to {t[-1]})")
    return index


class WindowDataset(Dataset):
    """Windows of ``K`` consecutive standardised states from a gridded store.

    Arguments:
        store: Anything :func:`~appa.data.sources.open_era5` opens (path, URL, preset).
        spec: The state spec (channel order).
        stats: Standardisation statistics; ``None`` returns physical values.
        window: ``K``, states per item.
        period: ``(start, end)`` dates (inclusive) the windows lie in, e.g. the training years.
        stride: Keep every ``stride``-th window start.
        fill_value: Replaces NaN of masked variables (after standardisation); items then carry
            a ``mask`` (True where valid).
        storage_options: fsspec options for remote stores.
        memory_limit: When the states the windows span take at most this many bytes (float32),
            the first access reads them whole and later items come from memory (each process
            its own copy): the toy Earth's two training years are 120 MB, and reading each
            variable of each item from the store cost a third of the tiny autoencoder's CPU
            step. Larger spans (ERA5) are read item by item.

    Items are dicts: ``state`` ``(K, C, lat, lon)`` float32, ``date`` ``(K, 4)`` float32
    (:func:`date_features`), ``time`` ``(K,)`` int64 nanoseconds since 1970 and, with masked
    variables, ``mask`` ``(K, C, lat, lon)`` bool.
    """

    def __init__(
        self,
        store: str | Path,
        spec: StateSpec,
        stats: Statistics | None = None,
        window: int = 1,
        period: tuple[str, str] | None = None,
        stride: int = 1,
        fill_value: float = 0.0,
        storage_options: dict[str, Any] | None = None,
        memory_limit: int = 2**30,
    ) -> None:
        self.store = str(store)
        self.spec = spec
        self.stats = stats.for_spec(spec) if stats is not None else None
        self.window = int(window)
        self.fill_value = float(fill_value)
        self.storage_options = storage_options
        ds = self._open()
        times = ds["time"].values
        index = _period_index(times, period)
        sub_times = times[index]
        self.starts = index[window_starts(sub_times, self.window, stride)]
        self.times = times
        if self.starts.size == 0:
            raise ValueError(
                f"no window of {window} consecutive states in {self.store} within {period}"
            )
        self.dates = date_features(times).numpy()  # once, not per item
        self._ds: xr.Dataset | None = ds
        self.span = (int(self.starts.min()), int(self.starts.max()) + self.window)
        state_bytes = 4 * spec.num_channels * ds.sizes["latitude"] * ds.sizes["longitude"]
        self.in_memory = (self.span[1] - self.span[0]) * state_bytes <= memory_limit
        self._cache: np.ndarray | None = None
        if self.stats is not None:
            self._mean = self.stats.mean.astype(np.float32)[:, None, None]
            self._std = self.stats.std.astype(np.float32)[:, None, None]
        self._masked = np.asarray(spec.channel_mask())

    def _open(self) -> xr.Dataset:
        return open_era5(
            self.store, spec=self.spec, storage_options=self.storage_options, chunks=None
        )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_ds"] = None  # each worker opens its own handle
        state["_cache"] = None  # and reads its own copy
        return state

    def __len__(self) -> int:
        return int(self.starts.size)

    def read(self, start: int, length: int) -> np.ndarray:
        """Physical states ``(length, C, lat, lon)`` float32 from time index ``start``."""
        lo, hi = self.span
        if self.in_memory and lo <= start and start + length <= hi:
            if self._cache is None:
                self._cache = self._read_store(lo, hi - lo)
            return self._cache[start - lo : start - lo + length].copy()
        return self._read_store(start, length)

    def _read_store(self, start: int, length: int) -> np.ndarray:
        if self._ds is None:
            self._ds = self._open()
        ds = self._ds
        sl = slice(start, start + length)
        parts = []
        for name in self.spec.surface:
            parts.append(np.asarray(ds[name].variable[sl].values)[:, None])
        for name in self.spec.atmospheric:
            parts.append(np.asarray(ds[name].variable[sl].values))
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range [0, {len(self)})")
        start = int(self.starts[i])
        x = self.read(start, self.window)
        if self.stats is not None:
            x = (x - self._mean) / self._std
        item: dict[str, torch.Tensor] = {}
        if self._masked.any():
            valid = ~np.isnan(x)
            x = np.where(valid, x, np.float32(self.fill_value))
            item["mask"] = torch.from_numpy(valid)
        elif np.isnan(x).any():
            names = [
                n
                for n, bad in zip(
                    self.spec.channel_names(), np.isnan(x).any((0, 2, 3)), strict=True
                )
                if bad
            ]
            raise ValueError(f"NaN in unmasked channels {names} at time index {start}")
        times = self.times[start : start + self.window]
        item["state"] = torch.from_numpy(np.ascontiguousarray(x))
        item["date"] = torch.from_numpy(self.dates[start : start + self.window])
        item["time"] = torch.from_numpy(times.astype("datetime64[ns]").astype(np.int64))
        return item


class LatentWindowDataset(Dataset):
    """Windows of ``K`` consecutive latent states from a latent Zarr store.

    The store holds a variable (default ``latent``) with dims ``(time, ...)`` and a ``time``
    coordinate, as written by the encoding stage. Items: ``latent`` ``(K, ...)`` float32,
    ``date`` ``(K, 4)``, ``time`` ``(K,)`` int64 nanoseconds.
    """

    def __init__(
        self,
        store: str | Path,
        window: int = 1,
        period: tuple[str, str] | None = None,
        stride: int = 1,
        variable: str = "latent",
    ) -> None:
        self.store = str(store)
        self.variable = variable
        self.window = int(window)
        ds = self._open()
        times = ds["time"].values
        index = _period_index(times, period)
        self.starts = index[window_starts(times[index], self.window, stride)]
        self.times = times
        if self.starts.size == 0:
            raise ValueError(f"no window of {window} consecutive latents in {self.store}")
        self.latent_shape = tuple(ds[variable].shape[1:])
        self.dates = date_features(times).numpy()
        self._ds: xr.Dataset | None = ds

    def _open(self) -> xr.Dataset:
        path = self.store.removeprefix("file://")
        if "://" not in path and not Path(path).exists():
            raise FileNotFoundError(f"no latent store at {path}")
        ds = xr.open_zarr(path, chunks=None)
        if self.variable not in ds.data_vars:
            raise KeyError(
                f"{self.store}: no variable {self.variable!r}; it has {sorted(ds.data_vars)}"
            )
        if ds[self.variable].dims[0] != "time":
            raise ValueError(f"{self.variable} dims {ds[self.variable].dims} must start with time")
        return ds

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_ds"] = None
        return state

    def __len__(self) -> int:
        return int(self.starts.size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range [0, {len(self)})")
        if self._ds is None:
            self._ds = self._open()
        start = int(self.starts[i])
        z = np.asarray(self._ds[self.variable].variable[start : start + self.window].values)
        times = self.times[start : start + self.window]
        return {
            "latent": torch.from_numpy(z.astype(np.float32, copy=False)),
            "date": torch.from_numpy(self.dates[start : start + self.window]),
            "time": torch.from_numpy(times.astype("datetime64[ns]").astype(np.int64)),
        }
