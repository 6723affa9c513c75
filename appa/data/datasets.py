"""Torch datasets of windows of consecutive states (physical or latent) with date features.

Each item is a window of ``K`` consecutive states. The store is opened lazily in each process
on first access (never pickled), so the datasets work with any number of ``DataLoader`` workers
and with Ray Data readers that construct one dataset per actor.

A *window store* is a Zarr group holding one array of already standardised states or latents
``<variable>`` of shape ``(T, C, H, W)`` (consecutive in time, as ``appa encode`` writes
latents), an int64 array ``time`` (``(T,)`` nanoseconds since 1970-01-01 UTC) and attributes:
``latitudes`` (degrees, for area weights), ``channel_names``, and optionally ``state_spec`` /
``statistics`` (JSON documents carried into checkpoints). :class:`WindowStoreDataset` yields
``{variable: (K, C, H, W), "date": (K, 4), "time": (K,)}`` like :class:`WindowDataset`.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from appa.files import PRODUCT_ATTR, claim_output

__all__ = [
    "WindowDataset",
    "WindowStoreDataset",
    "period_index",
    "window_starts",
    "write_window_store",
]


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


def period_index(times: np.ndarray, period: tuple[str, str] | None) -> np.ndarray:
    """Indices of increasing ``times`` within ``period`` (None: all; a None end is open), read
    as pandas and xarray read partial dates: inclusive, and ``2001-12-31`` as an end covers that
    whole day. Raises :class:`ValueError` when the period holds no time."""
    if period is None:
        return np.arange(len(times))
    t = pd.DatetimeIndex(times)
    if not t.is_monotonic_increasing:
        raise ValueError("the store's times are not increasing")
    bounds = slice(*(None if p is None else str(p) for p in period))
    index = np.arange(len(t))[t.slice_indexer(bounds.start, bounds.stop)]
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
        index = period_index(times, period)
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

    def valid_cells(self, samples: int = 64) -> np.ndarray | None:
        """Where the states hold values: ``(C, lat, lon)`` bool, False at the cells of masked
        channels that are NaN in each of ``samples`` states spread evenly over the dataset's
        span (land, cells below the sea floor: what a decoder should leave NaN), True
        elsewhere; None when the spec masks no variable.

        A mask that moves in time (sea ice) is True wherever any sampled state has a value."""
        if not self._masked.any():
            return None
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        lo, hi = self.span
        picks = np.unique(np.linspace(lo, hi - 1, min(samples, hi - lo)).round().astype(int))
        valid = ~np.isnan(self.read(int(picks[0]), 1)[0])
        for t in picks[1:]:
            valid |= ~np.isnan(self.read(int(t), 1)[0])
        valid[~self._masked] = True
        return valid

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


def write_window_store(
    path: str,
    data: np.ndarray | torch.Tensor,
    times: np.ndarray,
    latitudes: Sequence[float],
    channel_names: Sequence[str] | None = None,
    variable: str = "state",
    attrs: dict[str, Any] | None = None,
    chunk_time: int = 16,
) -> str:
    """Writes a window store (see the module docstring); returns ``path``."""
    import zarr

    array = np.asarray(data, dtype=np.float32)
    if array.ndim != 4:
        raise ValueError(f"data must be (T, C, H, W), got shape {array.shape}")
    times = np.asarray(times).astype("datetime64[ns]")
    if times.shape != (array.shape[0],):
        raise ValueError(f"{times.shape[0]} times for {array.shape[0]} states")
    if len(latitudes) != array.shape[2]:
        raise ValueError(f"{len(latitudes)} latitudes for {array.shape[2]} rows")
    if not np.isfinite(array).all():
        raise ValueError("data holds NaN or infinite values")
    names = list(channel_names or [f"c{i}" for i in range(array.shape[1])])
    if len(names) != array.shape[1]:
        raise ValueError(f"{len(names)} channel names for {array.shape[1]} channels")
    # replaces a window store; never anything else (mode="w" would clear any folder)
    claim_output(path, "windows", overwrite=True)
    group = zarr.open_group(path, mode="w")
    chunks = (min(chunk_time, array.shape[0]), *array.shape[1:])
    group.create_array(variable, data=array, chunks=chunks)
    group.create_array("time", data=times.astype(np.int64))
    group.attrs.update(
        {
            "latitudes": [float(v) for v in latitudes],
            "channel_names": names,
            "variable": variable,
            **(attrs or {}),
            PRODUCT_ATTR: "windows",
        }
    )
    return path


class WindowStoreDataset(Dataset):
    """Windows of ``window`` consecutive entries of a window store.

    Arguments:
        path: The store (local path or fsspec URL).
        window: ``K``, states per item.
        variable: The array to read.
        period: Dates (inclusive) the windows lie in (None: all the store's times).
        stride: Keep every ``stride``-th window start.
        memory_limit: Spans up to this many bytes are read whole on first access and served
            from memory (each process its own copy): a latent store of a few years is tens of
            MB, and one Zarr read per window would cost more than the network's step on CPU.
            Larger spans are read window by window.
    """

    def __init__(
        self,
        path: str,
        window: int,
        variable: str = "state",
        period: tuple[str, str] | None = None,
        stride: int = 1,
        memory_limit: int = 2**30,
    ) -> None:
        self.path, self.window, self.variable = str(path), int(window), variable
        group = self._open()
        if variable not in group:
            raise KeyError(f"{path}: no array {variable!r}; it has {sorted(group.array_keys())}")
        if "time" not in group:
            raise KeyError(f"{path}: no array 'time'")
        array = group[variable]
        if array.ndim != 4:
            raise ValueError(f"{path}/{variable}: expected (T, C, H, W), got {array.shape}")
        self.shape = tuple(array.shape)
        self.attrs = dict(group.attrs)
        times = np.asarray(group["time"][:]).astype("datetime64[ns]")
        index = period_index(times, period)
        start, stop = int(index[0]), int(index[-1]) + 1
        if window < 1 or stop - start < window:
            raise ValueError(f"period {period} holds no window of {window} ({stop - start} times)")
        self.starts = np.arange(start, stop - window + 1, stride)
        self.span = (int(start), int(stop))
        self.in_memory = (stop - start) * int(np.prod(self.shape[1:])) * 4 <= memory_limit
        self.dates = date_features(times)
        self.times = times.astype(np.int64)
        self._array = None
        self._offset = 0  # time index of self._array's first entry

    def _open(self):
        import zarr

        try:
            return zarr.open_group(self.path, mode="r")
        except FileNotFoundError:
            raise FileNotFoundError(f"no window store at {self.path}") from None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None  # every process opens its own handle
        return state

    @property
    def channels(self) -> int:
        return self.shape[1]

    def __len__(self) -> int:
        return int(self.starts.size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range [0, {len(self)})")
        s = int(self.starts[i])
        sl = slice(s, s + self.window)
        if self._array is None:
            array = self._open()[self.variable]
            if self.in_memory:
                start, stop = self.span
                self._array = np.asarray(array[start:stop], dtype=np.float32)
                self._offset = start
            else:
                self._array, self._offset = array, 0
        local = slice(s - self._offset, s - self._offset + self.window)
        x = np.array(self._array[local], dtype=np.float32)  # a copy: never a view of the cache
        return {
            self.variable: torch.from_numpy(x),
            "date": self.dates[sl].clone(),
            "time": torch.from_numpy(self.times[sl].copy()),
        }
