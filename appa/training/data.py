"""A minimal window store for training until the data layer's datasets are wired in.

A *window store* is a Zarr group holding one array of already standardised states or latents
``<variable>`` of shape ``(T, C, H, W)`` (consecutive in time), an int64 array ``time`` (``(T,)``
nanoseconds since 1970-01-01 UTC) and attributes: ``latitudes`` (degrees, for area weights),
``channel_names``, and optionally ``state_spec`` / ``statistics`` (JSON documents carried into
checkpoints). :class:`ZarrWindows` yields the same items as the data layer's window datasets:
``{variable: (K, C, H, W), "date": (K, 4), "time": (K,)}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from appa.dates import date_features

__all__ = ["ZarrWindows", "write_window_store"]


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
        }
    )
    return path


class ZarrWindows(Dataset):
    """Windows of ``window`` consecutive entries of a window store.

    Arguments:
        path: The store (local path or fsspec URL).
        window: ``K``, states per item.
        variable: The array to read.
        span: ``(start, stop)`` time indices the windows lie in (None: all).
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
        span: tuple[int, int] | None = None,
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
        start, stop = span if span is not None else (0, self.shape[0])
        if not 0 <= start < stop <= self.shape[0]:
            raise ValueError(f"span {span} outside the store's {self.shape[0]} times")
        if window < 1 or stop - start < window:
            raise ValueError(f"span {start}..{stop} holds no window of {window}")
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
