"""The observation table and its Zarr store.

A table is an :class:`xarray.Dataset` along one dimension ``obs`` with the fields

- ``time`` (datetime64[ns]), ``latitude`` (degrees north, [-90, 90]), ``longitude`` (degrees
  east, any range; wrapped to [0, 360)),
- ``level`` (hPa; for the variables of a sea, depth in m, positive down; NaN for surface
  variables), ``variable`` (canonical ERA5 name, or the ocean's: ``temperature``,
  ``salinity``, ``oxygen``, ``chlorophyll``, ``sea_surface_height``),
- ``value`` (SI units), ``error_std`` (> 0, same units), ``platform`` (e.g. ``station``,
  ``satellite``, ``coarse``),
- optionally ``footprint`` (degrees; 0 for point observations, else the side of the
  latitude-longitude box the value averages over),
- optionally, from ingest of real reports: ``station`` (its identifier), ``elevation`` (m above
  sea level, NaN unknown), ``time_offset`` (seconds; ``time`` is the state time the
  observation was rounded to, observed at ``time + time_offset``), ``height_correction`` (K
  added to a 2 m temperature to bring it from the station's height to the model's ground) and
  ``reason`` (``""`` for an accepted observation, else why quality control rejected it: the
  rejected ones stay in the store with their reason, and readers leave them out unless asked).

The store is a directory of Zarr groups, one per time partition (``YYYY-MM-DDTHH``), each
holding the observations of ``[start, start + partition)``; reading a time window opens only
the partitions that overlap it. ``observations.json`` at its root lists them; it is also what
marks the directory as an Appa observation store (:func:`appa.files.what_is`), the only thing
:func:`write_observations` replaces (with ``overwrite``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from appa.files import claim_output, written_whole

__all__ = [
    "FIELDS",
    "OPTIONAL_FIELDS",
    "ObservationError",
    "accepted",
    "add_partitions",
    "concat_tables",
    "make_table",
    "missing_partitions",
    "read_observations",
    "store_digest",
    "store_partitions",
    "validate_table",
    "write_observations",
]

FIELDS = ("time", "latitude", "longitude", "level", "variable", "value", "error_std", "platform")
OPTIONAL_FIELDS = (
    "footprint",
    "station",
    "elevation",
    "time_offset",
    "height_correction",
    "reason",
)
_TEXT_FIELDS = ("variable", "platform", "station", "reason")
_META = "observations.json"


class ObservationError(ValueError):
    """Observations that break the schema or do not fit the state they observe."""


def make_table(
    time: Sequence | np.ndarray,
    latitude: Sequence[float] | np.ndarray,
    longitude: Sequence[float] | np.ndarray,
    variable: Sequence[str] | np.ndarray | str,
    value: Sequence[float] | np.ndarray,
    error_std: Sequence[float] | np.ndarray | float,
    platform: Sequence[str] | np.ndarray | str,
    level: Sequence[float] | np.ndarray | None = None,
    footprint: Sequence[float] | np.ndarray | float | None = None,
) -> xr.Dataset:
    """Builds and validates an observation table (scalars broadcast over ``obs``)."""
    value = np.asarray(value, dtype=np.float64)
    n = value.shape[0] if value.ndim else 1
    value = np.broadcast_to(value, (n,))

    def full(x, dtype):
        return np.broadcast_to(np.asarray(x, dtype=dtype), (n,)).copy()

    data = {
        "time": full(pd.DatetimeIndex(np.atleast_1d(time)).values, "datetime64[ns]"),
        "latitude": full(latitude, np.float64),
        "longitude": full(longitude, np.float64),
        "level": full(np.nan if level is None else level, np.float64),
        "variable": full(variable, str),
        "value": value.copy(),
        "error_std": full(error_std, np.float64),
        "platform": full(platform, str),
    }
    if footprint is not None:
        data["footprint"] = full(footprint, np.float64)
    table = xr.Dataset({k: ("obs", v) for k, v in data.items()})
    validate_table(table)
    return table


def validate_table(table: xr.Dataset) -> None:
    """Raises :class:`ObservationError` naming the problem when ``table`` breaks the schema."""
    missing = [f for f in FIELDS if f not in table.variables]
    if missing:
        raise ObservationError(f"observation table lacks fields {missing}")
    for name in (*FIELDS, *OPTIONAL_FIELDS):
        if name in table.variables and table[name].dims != ("obs",):
            raise ObservationError(f"field {name} has dims {table[name].dims}, expected ('obs',)")
    if not np.issubdtype(table["time"].dtype, np.datetime64):
        raise ObservationError(f"time must be datetime64, got {table['time'].dtype}")
    # rejected observations keep whatever values they came with; only accepted ones are judged
    table = accepted(table)
    value = table["value"].values
    _check(np.isfinite(value), table, "value is NaN or infinite")
    err = table["error_std"].values
    _check(np.isfinite(err) & (err > 0), table, "error_std is not positive")
    lat = table["latitude"].values
    _check(np.isfinite(lat) & (np.abs(lat) <= 90), table, "latitude outside [-90, 90]")
    _check(np.isfinite(table["longitude"].values), table, "longitude is not finite")
    _check(~np.isnat(table["time"].values), table, "time is missing")
    level = table["level"].values
    # depths are of cell centres and samples below the surface, so > 0 holds for both kinds
    _check(np.isnan(level) | (level > 0), table, "level is not positive (hPa, or m of depth)")
    if "footprint" in table.variables:
        fp = table["footprint"].values
        _check(np.isfinite(fp) & (fp >= 0), table, "footprint is negative")


def _check(ok: np.ndarray, table: xr.Dataset, message: str) -> None:
    if not np.all(ok):
        bad = np.flatnonzero(~ok)
        first = int(bad[0])
        where = {
            k: table[k].values[first].item() if hasattr(table[k].values[first], "item") else None
            for k in ("variable", "platform")
        }
        raise ObservationError(
            f"{bad.size} observation(s) where {message}; first at obs={first} ({where})"
        )


def accepted(table: xr.Dataset) -> xr.Dataset:
    """The observations of ``table`` that quality control accepted (all of a table without a
    ``reason`` field)."""
    if "reason" not in table.variables:
        return table
    return table.isel(obs=np.flatnonzero(table["reason"].values.astype(str) == ""))


# what an optional field holds where a table lacks it
_ABSENT = {
    "footprint": 0.0,
    "station": "",
    "elevation": np.nan,
    "time_offset": 0.0,
    "height_correction": 0.0,
    "reason": "",
}


def concat_tables(tables: Sequence[xr.Dataset]) -> xr.Dataset:
    """Concatenates tables along ``obs``; an optional field that some tables lack is filled in
    the others with its neutral value (``footprint`` 0, ``station`` and ``reason`` empty,
    ``elevation`` NaN, offsets and corrections 0)."""
    tables = [t for t in tables if t.sizes.get("obs", 0) > 0]
    if not tables:
        raise ObservationError("no observations to concatenate")
    for name in OPTIONAL_FIELDS:
        if any(name in t for t in tables):
            tables = [
                t
                if name in t
                else t.assign({name: ("obs", np.full(t.sizes["obs"], _ABSENT[name]))})
                for t in tables
            ]
    return xr.concat(tables, dim="obs")


def _partition_starts(times: np.ndarray, partition: pd.Timedelta) -> np.ndarray:
    epoch = np.datetime64("1970-01-01T00:00", "ns")
    step = np.timedelta64(int(partition.value), "ns")
    return epoch + ((times - epoch) // step) * step


def write_observations(
    table: xr.Dataset,
    path: str | Path,
    partition: str = "1D",
    overwrite: bool = False,
    record: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a table as a store partitioned by time (atomic: temporary directory, rename).
    ``path`` must be free (absent, an empty directory) or, with ``overwrite``, an observation
    store; anything else raises :class:`~appa.files.OutputExistsError` naming what is there.
    ``record`` (JSON-serialisable, e.g. what an ingest read and rejected) is kept in the
    index's ``history`` with the partitions it wrote."""
    validate_table(table)
    path = Path(path)
    claim_output(path, "observations", overwrite=overwrite)
    span = pd.Timedelta(partition)
    if span <= pd.Timedelta(0):
        raise ObservationError(f"partition {partition!r} must be a positive duration")
    with written_whole(path, "observations", overwrite=overwrite) as tmp:
        tmp.mkdir()
        times = table["time"].values.astype("datetime64[ns]")
        starts = _partition_starts(times, span)
        parts = []
        order = np.argsort(times, kind="stable")
        table = table.isel(obs=order)
        starts = starts[order]
        for start in np.unique(starts):
            sel = np.flatnonzero(starts == start)
            name = pd.Timestamp(start).strftime("%Y-%m-%dT%H%M")
            part = table.isel(obs=sel)
            for field in _TEXT_FIELDS:
                if field in part:
                    part[field] = part[field].astype(str)
            part.to_zarr(tmp / name, zarr_format=2, consolidated=True, mode="w")
            parts.append({"name": name, "start": str(pd.Timestamp(start)), "count": int(sel.size)})
        meta = {"schema": list(FIELDS), "partition": str(span), "partitions": parts}
        if record is not None:
            meta["history"] = [{**record, "partitions": [p["name"] for p in parts]}]
        (tmp / _META).write_text(json.dumps(meta, indent=1))
    return path


def store_partitions(path: str | Path) -> tuple[pd.Timedelta, list[str]]:
    """The partition span of the store at ``path`` and the names of its partitions (in time
    order); raises :class:`FileNotFoundError` for a path that is not a store."""
    span, listed = _index(Path(path))
    return span, [name for name, _ in sorted(listed, key=lambda p: p[1])]


def _index(path: Path) -> tuple[pd.Timedelta, list[tuple[str, pd.Timestamp]]]:
    """The store's partition span and its ``(name, start)`` partitions, from its index."""
    meta_path = path / _META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not an observation store (no {_META})")
    try:
        meta = json.loads(meta_path.read_text())
        span = pd.Timedelta(meta["partition"])
        partitions = [(str(p["name"]), pd.Timestamp(p["start"])) for p in meta["partitions"]]
    except (UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        # a truncated or hand-edited index (JSONDecodeError is a ValueError)
        raise ObservationError(
            f"{meta_path}: not a valid observation store index ({type(error).__name__}: {error})"
        ) from None
    return span, partitions


def add_partitions(
    table: xr.Dataset, path: str | Path, record: Mapping[str, Any] | None = None
) -> list[str]:
    """Adds the observations of ``table`` to the store at ``path`` as new partitions, leaving
    the old ones as they are (each partition is written under a temporary name and renamed,
    then the index is replaced whole): how a store grows day by day. Returns the names added.
    ``record`` is appended to the index's ``history`` with those names.

    Raises:
        FileNotFoundError: when ``path`` is not an observation store.
        ObservationError: when an observation falls in a partition the store already holds
            (a partition once listed is never rewritten).
    """
    validate_table(table)
    path = Path(path)
    span, listed = _index(path)
    names = {name for name, _ in listed}
    times = table["time"].values.astype("datetime64[ns]")
    order = np.argsort(times, kind="stable")
    table = table.isel(obs=order)
    starts = _partition_starts(times[order], span)
    new = [pd.Timestamp(s).strftime("%Y-%m-%dT%H%M") for s in np.unique(starts)]
    held = sorted(set(new) & names)
    if held:
        raise ObservationError(
            f"{path}: partitions {', '.join(held)} exist already; a partition is never rewritten"
        )
    meta = json.loads((path / _META).read_text())
    for start, name in zip(np.unique(starts), new, strict=True):
        part = table.isel(obs=np.flatnonzero(starts == start))
        for field in _TEXT_FIELDS:
            if field in part:
                part[field] = part[field].astype(str)
        tmp = path / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        part.to_zarr(tmp, zarr_format=2, consolidated=True, mode="w")
        if (path / name).exists():
            # an unlisted partition folder: what an addition killed before its index left
            shutil.rmtree(path / name)
        os.replace(tmp, path / name)
        count = int(part.sizes["obs"])
        meta["partitions"].append({"name": name, "start": str(pd.Timestamp(start)), "count": count})
    meta["partitions"].sort(key=lambda p: pd.Timestamp(p["start"]))
    if record is not None:
        meta.setdefault("history", []).append({**record, "partitions": new})
    index = path / f".{_META}.tmp-{uuid.uuid4().hex[:8]}"
    index.write_text(json.dumps(meta, indent=1))
    os.replace(index, path / _META)  # the new partitions appear to readers all at once
    return new


def missing_partitions(
    path: str | Path,
    start: str | pd.Timestamp,
    end: str | pd.Timestamp,
    final_after: str | pd.Timedelta,
    now: pd.Timestamp,
) -> str | None:
    """Why the store does not yet hold all observations of ``[start, end)``, or None when it
    does: every partition overlapping the window must be listed, and the last of them
    complete, which it is once a later partition is listed or ``final_after`` has passed
    since its end by the clock ``now`` (late observations arrive within that)."""
    path = Path(path)
    span, listed = _index(path)
    t0, t1 = pd.Timestamp(start), pd.Timestamp(end)
    starts = {p0 for _, p0 in listed}
    epoch = pd.Timestamp("1970-01-01")
    first = epoch + ((t0 - epoch) // span) * span
    wanted = []
    p0 = first
    while p0 < t1:
        wanted.append(p0)
        p0 += span
    for p0 in wanted:
        if p0 not in starts:
            return f"{path} has no partition {p0.strftime('%Y-%m-%dT%H%M')} yet"
    last = wanted[-1]
    if not any(p0 > last for p0 in starts) and now < last + span + pd.Timedelta(final_after):
        return (
            f"{path}: partition {last.strftime('%Y-%m-%dT%H%M')} is not final before "
            f"{last + span + pd.Timedelta(final_after)} (or a later partition)"
        )
    return None


def _partitions(path: Path, t0: pd.Timestamp | None, t1: pd.Timestamp | None) -> list[str]:
    """Names of the store's partitions overlapping ``[t0, t1)`` (either bound optional), from
    its index; raises :class:`FileNotFoundError` for a path that is no store and
    :class:`ObservationError` for an index that cannot be read."""
    span, partitions = _index(path)
    return [
        name
        for name, p0 in partitions
        if not ((t1 is not None and p0 >= t1) or (t0 is not None and p0 + span <= t0))
    ]


def read_observations(
    path: str | Path,
    start: str | None = None,
    end: str | None = None,
    fields: Sequence[str] | None = None,
    whole_partitions: bool = False,
    rejected: bool = False,
) -> xr.Dataset:
    """Observations with ``start <= time < end`` (either bound optional), reading only the
    partitions that overlap the window, and only ``fields`` of them when given (``time`` is
    always read). ``whole_partitions``: every observation of those partitions (what a reader
    of the window loads), inside the window or not. ``rejected``: also the observations that
    quality control rejected at ingest (with their ``reason``); by default only the accepted.

    Raises:
        FileNotFoundError: when ``path`` is not an observation store.
        ObservationError: naming the store and the partition that cannot be read (a truncated
            index or ``.zmetadata``, a missing partition, a corrupt chunk), or when the window
            holds no observations.
    """
    path = Path(path)
    t0 = pd.Timestamp(start) if start is not None else None
    t1 = pd.Timestamp(end) if end is not None else None
    tables = []
    for name in _partitions(path, t0, t1):
        try:
            table = xr.open_zarr(path / name, consolidated=True)
            if fields is not None:
                extra = ["reason"] if "reason" in table.variables and not rejected else []
                table = table[list(dict.fromkeys(["time", *fields, *extra]))]
            table = table.load()
        except (KeyError, OSError, RuntimeError, TypeError, ValueError) as error:
            # a missing folder, truncated .zmetadata, a lost field or a corrupt chunk
            raise ObservationError(
                f"{path}: partition {name} cannot be read ({type(error).__name__}: {error})"
            ) from None
        keep = np.ones(table.sizes["obs"], dtype=bool)
        if t0 is not None and not whole_partitions:
            keep &= table["time"].values >= t0.to_datetime64()
        if t1 is not None and not whole_partitions:
            keep &= table["time"].values < t1.to_datetime64()
        if "reason" in table.variables and not rejected:
            keep &= table["reason"].values.astype(str) == ""
            if fields is not None and "reason" not in fields:
                table = table.drop_vars("reason")
        tables.append(table.isel(obs=np.flatnonzero(keep)))
    if not tables or sum(t.sizes["obs"] for t in tables) == 0:
        raise ObservationError(f"no observations in {path} between {start} and {end}")
    return concat_tables(tables)


def store_digest(path: str | Path, start: str | None = None, end: str | None = None) -> str:
    """SHA-256 (hex) of what a store holds for ``start <= time < end``: the bytes of every file
    of the partitions overlapping the window (names and contents), so a store replaced at the
    same path, or a partition rewritten, gives another digest while a moved store gives the same.
    Raises :class:`FileNotFoundError` for a path that is not a store."""
    path = Path(path)
    t0 = pd.Timestamp(start) if start is not None else None
    t1 = pd.Timestamp(end) if end is not None else None
    digest = hashlib.sha256()
    for name in _partitions(path, t0, t1):
        for file in sorted(f for f in (path / name).rglob("*") if f.is_file()):
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()
