"""Writing the states of the project's own generators (the toy Earth, the toy sea) as Zarr
stores: the states of each block of times assembled into a dataset with CF attributes, the first
block creating the store (with the statics and the global attributes), the next ones appended,
the whole written to a temporary sibling and renamed into place when complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from numpy.typing import NDArray

from appa.files import written_whole

__all__ = ["states_dataset", "write_states"]

# the time encoding of every generated store
TIME_ENCODING = {
    "units": "hours since 1970-01-01",
    "calendar": "proleptic_gregorian",
    "dtype": "int64",
}


def states_dataset(
    times: Sequence[pd.Timestamp],
    coords: Mapping[str, tuple[str, np.ndarray]],
    dims: Mapping[str, tuple[str, ...]],
    states: Sequence[Mapping[str, NDArray]],
    cf_attrs: Mapping[str, tuple[str, str, str]],
) -> xr.Dataset:
    """The states ``[{variable: array}]`` at ``times`` as a dataset: each variable of ``dims``
    stacked along ``time`` in float32, with its ``(units, standard_name, long_name)`` from
    ``cf_attrs``. ``coords`` holds every coordinate but ``time``."""
    data = {
        name: (("time", *d), np.stack([s[name] for s in states]).astype(np.float32))
        for name, d in dims.items()
    }
    time = pd.DatetimeIndex(times).values.astype("datetime64[ns]")
    ds = xr.Dataset(data, coords={"time": ("time", time), **coords})
    for name in ds.data_vars:
        units, standard, long = cf_attrs[name]
        ds[name].attrs = {"units": units, "standard_name": standard, "long_name": long}
    return ds


def _chunks(dims: tuple[str, ...], shape: tuple[int, ...], chunks: dict[str, int]):
    return tuple(min(chunks.get(d, n), n) for d, n in zip(dims, shape, strict=True))


def write_states(
    out: Path,
    product: str,
    states: Iterator[tuple[pd.Timestamp, dict[str, NDArray]]],
    count: int,
    block_dataset: Callable[[list[pd.Timestamp], list[dict[str, NDArray]]], xr.Dataset],
    first_block: Callable[[xr.Dataset], xr.Dataset],
    time_chunk: int,
    zarr_format: int,
    overwrite: bool = False,
    on_state: Callable[[], None] | None = None,
    later_block: Callable[[xr.Dataset], xr.Dataset] | None = None,
) -> None:
    """Writes ``count`` states of ``states`` to the Zarr store ``out`` (an Appa ``product``),
    whole or not at all (:func:`appa.files.written_whole`).

    Arguments:
        block_dataset: The dataset of a block of ``(times, states)``.
        first_block: Completes the first block (statics, global attributes) before it creates
            the store; ``later_block`` adapts the next ones before they are appended (e.g.
            drops coordinates without time that the store holds already).
        time_chunk: States per chunk; blocks hold a whole number of chunks (about 256 states).
        on_state: Called after each state is taken (a progress bar).
    """
    with written_whole(out, product, overwrite=overwrite) as tmp:
        written = 0
        per_block = time_chunk * max(1, 256 // time_chunk)
        while written < count:
            block = min(per_block, count - written)
            times, fields = [], []
            for _ in range(block):
                t, state = next(states)
                times.append(t)
                fields.append(state)
                if on_state is not None:
                    on_state()
            ds = block_dataset(times, fields)
            if written == 0:
                ds = first_block(ds)
                chunks = {"time": time_chunk}
                encoding = {
                    name: {"chunks": _chunks(ds[name].dims, ds[name].shape, chunks)}
                    for name in ds.data_vars
                }
                encoding["time"] = dict(TIME_ENCODING)
                ds.to_zarr(
                    tmp,
                    mode="w",
                    encoding=encoding,
                    zarr_format=zarr_format,
                    # consolidated metadata is part of format 2 only
                    consolidated=zarr_format == 2,
                )
            else:
                if later_block is not None:
                    ds = later_block(ds)
                ds.to_zarr(tmp, append_dim="time", zarr_format=zarr_format, consolidated=True)
            written += block
