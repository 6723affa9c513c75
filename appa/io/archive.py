"""Output archives: Zarr groups of ensemble fields written unit by unit, safe to resume.

Layout (readable with plain :func:`xarray.open_zarr`): data variables named as ERA5, float32,
physical SI units, dims ``(member, time, [lead_time,] [level,] latitude, longitude)``;
``member`` int64 from 0 (``standard_name: realization``), ``time`` datetime64, ``lead_time``
timedelta64, ``level`` in hPa, ``latitude`` ascending, ``longitude`` in [0, 360) ascending.
Root attributes hold provenance as JSON strings (``appa_config``, ``appa_config_hash``,
``appa_version``, whatever the caller adds: checkpoint hashes, observation sources, seeds),
``appa_product: "archive"`` (what :func:`appa.files.what_is` recognises) and ``appa_status``
(``"writing"``, then ``"complete"``).

Writing: :func:`create_archive` writes the template (metadata and coordinates only, data as
lazy zeros with ``to_zarr(compute=False)``), chunked so that every unit of work (a block of
members x times (x lead times)) covers whole chunks. Workers write one unit with
:meth:`Archive.write_unit` (an ``xarray`` region write), record the SHA-256 of each
variable's data as stored (``appa_units/checksums``) and then set the unit's flag in
``appa_units/done`` (one chunk per unit in both, so concurrent writers never share a chunk).
A crash before the flag only means the unit is computed again; a unit already done is never
rewritten. :meth:`Archive.finalize` checks that every unit is done, marks the archive complete
and consolidates the metadata once. Cells of units not yet written read as NaN (the fill
value), and NaN is refused in written data (except in ``allow_nan`` variables such as
sea-surface temperature over land), so a NaN outside those variables always means "not
written".

Guarantees:

- Nothing that is not ours is replaced. :func:`create_archive` writes only where
  :func:`appa.files.what_is` finds nothing (or an empty directory) or an Appa archive: a
  user's folder, or another product (an observation store), is refused even with
  ``overwrite``, naming the path and what it holds. An archive of the same config is reopened
  to resume; of another config it is replaced only with ``overwrite``, except a stub (status
  ``"writing"``, no unit done: what a job that failed before its first unit leaves), which is
  replaced with a note (:attr:`Archive.notes`).
- A unit is done only if its chunks read back. Reopening an archive to resume
  (:meth:`Archive.verify`) reads every done unit back and compares it with the checksums
  recorded when it was written (archives written before the checksums: whether it decodes and
  holds no unwritten cell); a damaged unit (a truncated, deleted or overwritten chunk) is
  pending again, named in :attr:`Archive.notes`, and a complete archive goes back to
  ``"writing"`` until it is recomputed and finalised. Reading back costs one read of the
  archive, small beside sampling it.
- Readers name the damage: :func:`read_errors_named` turns a failure to decode while reading
  an archive into one :class:`ArchiveError` naming the archive, the variable and the chunk
  (:func:`unreadable_chunks` finds them). A truncated chunk always fails to decode: importing
  this module registers a Blosc codec that refuses a buffer shorter than its header says
  (numcodecs' own reads past the end of such a buffer, and then fails, returns garbage or
  returns the stale bytes of an earlier read, at random).

Products computed whole in one process (the classical baselines) take the other door to the
same layout: :func:`archive_dataset` puts a dataset in it and :func:`write_dataset` writes it
at once, atomically, under the same rule of what it may replace. Every archive, however
written, is read back with :func:`open_archive`.

Paths are local folders or fsspec URLs (``gs://``, ``s3://``, ``memory://``) with
``storage_options``. Nothing here knows about networks or Ray.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from numcodecs import Blosc, register_codec
from numcodecs.compat import ensure_contiguous_ndarray

import appa
from appa.files import PRODUCT_ATTR, OutputExistsError, claim_output, written_whole

__all__ = [
    "DIM_ORDER",
    "FIELD_DIMS",
    "RECORDS_GROUP",
    "UNIT_DIMS",
    "Archive",
    "ArchiveError",
    "Unit",
    "UnitDamage",
    "archive_dataset",
    "archive_identity",
    "check_inputs",
    "check_layout",
    "config_hash",
    "create_archive",
    "create_done_flags",
    "open_archive",
    "pending_indices",
    "provenance_attrs",
    "read_errors_named",
    "reopen_archive",
    "template_from_spec",
    "unreadable_chunks",
    "write_dataset",
]

# Dims a unit of work may split; the rest of a field is always written whole by one unit.
UNIT_DIMS = ("member", "time", "lead_time")
FIELD_DIMS = ("level", "latitude", "longitude")
DIM_ORDER = (*UNIT_DIMS, *FIELD_DIMS)
RECORDS_GROUP = "appa_units"
CHECKSUMS = "checksums"
# 2: records hold a checksum per unit and variable (format 1 archives are read and resumed)
FORMAT_VERSION = 2
MEMBER_ATTRS = {"standard_name": "realization", "long_name": "ensemble member"}
# the order of the unit plan (records attribute ``order``; absent: member-major)
MEMBER_MAJOR, TIME_MAJOR = "member-major", "time-major"
# how an archive that grows along time encodes it: any later time stays exact
EXTENSIBLE_TIME_UNITS = "seconds since 1970-01-01"
LEAD_TIME_ATTRS = {"long_name": "forecast lead time (valid time = time + lead_time)"}


class ArchiveError(ValueError):
    """An archive, a template or a unit's data is not what it should be."""


def config_hash(config: Any) -> str:
    """SHA-256 (hex) of a configuration: a pydantic model, a mapping or any JSON-able value,
    serialised with sorted keys (so key order does not matter)."""
    return hashlib.sha256(_config_json(config).encode()).hexdigest()


def _config_json(config: Any) -> str:
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Unit:
    """One unit of work: a block of the unit dims (``member``, ``time``, ``lead_time``), the
    whole field along the others. ``index`` is its position in the archive's plan (and its
    completion flag); ``bounds`` is ``((dim, start, stop), ...)``."""

    index: int
    bounds: tuple[tuple[str, int, int], ...]

    @property
    def key(self) -> str:
        """A stable name such as ``"member=0:1,time=4:8"``."""
        return ",".join(f"{d}={a}:{b}" for d, a, b in self.bounds)

    @property
    def region(self) -> dict[str, slice]:
        """``{dim: slice}``, as :meth:`xarray.Dataset.isel` and ``to_zarr(region=)`` take."""
        return {d: slice(a, b) for d, a, b in self.bounds}

    @property
    def sizes(self) -> dict[str, int]:
        return {d: b - a for d, a, b in self.bounds}

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class UnitDamage:
    """A done unit whose data do not read back as written: the ``variables`` that fail and
    why the first fails (``reason``: a decode error, data that differ from their checksum,
    unwritten cells)."""

    unit: Unit
    variables: tuple[str, ...]
    reason: str

    def __str__(self) -> str:
        return (
            f"unit {self.unit.key} of {', '.join(self.variables)} failed its read-back check "
            f"({self.reason})"
        )


def _digest(array: np.ndarray) -> np.ndarray:
    """SHA-256 (32 uint8) of float32 data as stored: C order, every NaN as one bit pattern
    (the fill value and a written NaN read back alike)."""
    data = np.ascontiguousarray(array, dtype=np.float32)
    nan = np.isnan(data)
    if nan.any():
        data = np.where(nan, np.float32(np.nan), data)
    return np.frombuffer(hashlib.sha256(memoryview(data).cast("B")).digest(), dtype=np.uint8)


class _CheckedBlosc(Blosc):
    """numcodecs' Blosc that refuses a buffer shorter than the compressed size its 16-byte
    header records (a truncated chunk file): numcodecs' own would read past its end. Valid
    chunks decode exactly as before. Registered for every Blosc decode in the process."""

    codec_id = "blosc"

    def decode(self, buf: Any, out: Any = None) -> Any:
        data = memoryview(ensure_contiguous_ndarray(buf)).cast("B")
        if data.nbytes < 16:
            raise RuntimeError(f"blosc: a chunk of {data.nbytes} bytes has no 16-byte header")
        recorded = int.from_bytes(bytes(data[12:16]), "little")
        if data.nbytes < recorded:
            raise RuntimeError(
                f"blosc: the chunk holds {data.nbytes} bytes, its header says {recorded} "
                "(truncated)"
            )
        return super().decode(buf, out)


register_codec(_CheckedBlosc)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no message"
    return f"{type(error).__name__}: {text[:200]}"


def check_layout(ds: xr.Dataset) -> None:
    """Raises :class:`ArchiveError` naming the culprit unless ``ds`` follows the archive
    layout (see the module docstring): dims, their order, coordinates and dtypes."""
    if not ds.data_vars:
        raise ArchiveError("the template has no data variables")
    for dim in ds.dims:
        if dim not in DIM_ORDER:
            raise ArchiveError(f"dimension {dim!r} is not one of {DIM_ORDER}")
        if dim not in ds.coords:
            raise ArchiveError(f"dimension {dim!r} has no coordinate")
    for name, var in ds.data_vars.items():
        dims = tuple(var.dims)
        want = tuple(d for d in DIM_ORDER if d in dims)
        if dims != want:
            raise ArchiveError(f"variable {name!r} has dims {dims}; the layout orders them {want}")
        needed = ["member", "time", "latitude", "longitude"]
        if "lead_time" in ds.dims:
            needed.append("lead_time")
        missing = [d for d in needed if d not in dims]
        if missing:
            raise ArchiveError(f"variable {name!r} (dims {dims}) lacks dims {missing}")
        if var.dtype != np.float32:
            raise ArchiveError(f"variable {name!r} is {var.dtype}; archives hold float32")
    member = ds["member"].values
    if member.dtype.kind not in "iu" or not np.array_equal(member, np.arange(member.size)):
        raise ArchiveError(f"member must be the integers 0..M-1, got {member[:10]}")
    if ds["time"].dtype.kind != "M":
        raise ArchiveError(f"time must be datetime64, got {ds['time'].dtype}")
    if "lead_time" in ds.dims and ds["lead_time"].dtype.kind != "m":
        raise ArchiveError(f"lead_time must be timedelta64, got {ds['lead_time'].dtype}")
    lat = np.asarray(ds["latitude"].values, dtype=np.float64)
    if not (np.all(np.diff(lat) > 0) and lat[0] >= -90 and lat[-1] <= 90):
        raise ArchiveError("latitude must be ascending within [-90, 90]")
    lon = np.asarray(ds["longitude"].values, dtype=np.float64)
    if not (np.all(np.diff(lon) > 0) and lon[0] >= 0 and lon[-1] < 360):
        raise ArchiveError("longitude must be ascending within [0, 360)")


def template_from_spec(
    spec: Any,
    *,
    members: int,
    time: Any,
    latitude: Any,
    longitude: Any,
    lead_time: Any | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """An archive template for the variables of a :class:`~appa.data.StateSpec`: lazy float32
    zeros ``(member, time, [lead_time,] [level,] latitude, longitude)`` with CF attributes,
    ``level`` = ``spec.levels`` (hPa, or m of depth). ``time`` datetime64, ``lead_time``
    timedelta64, ``latitude`` / ``longitude`` in degrees."""
    import dask.array as da

    from appa.data.toy_earth import CF_ATTRS, _coordinate_attrs

    coords: dict[str, Any] = {
        "member": np.arange(members, dtype=np.int64),
        "time": np.asarray(time, dtype="datetime64[ns]"),
    }
    lead: tuple[str, ...] = ()
    if lead_time is not None:
        coords["lead_time"] = np.asarray(lead_time, dtype="timedelta64[ns]")
        lead = ("lead_time",)
    coords["latitude"] = np.asarray(latitude, dtype=np.float64)
    coords["longitude"] = np.asarray(longitude, dtype=np.float64)
    if spec.atmospheric:
        coords["level"] = np.asarray(spec.levels, dtype=np.int64)
    data = {}
    for name in spec.variables:
        dims = ("member", "time", *lead)
        if name in spec.atmospheric:
            dims += ("level",)
        dims += ("latitude", "longitude")
        shape = tuple(coords[d].size for d in dims)
        data[name] = (dims, da.zeros(shape, dtype=np.float32, chunks=-1))
    ds = _coordinate_attrs(xr.Dataset(data, coords=coords, attrs=dict(attrs or {})))
    if spec.atmospheric and spec.vertical == "depth":
        from appa.data.spec import DEPTH_ATTRS

        ds = ds.assign_coords(
            level=("level", np.asarray(spec.levels, dtype=np.float64), dict(DEPTH_ATTRS))
        )
    for name in spec.variables:
        units, standard, long = CF_ATTRS.get(name, (None, None, name))
        ds[name].attrs = {
            k: v
            for k, v in (("units", units), ("standard_name", standard), ("long_name", long))
            if v is not None
        }
    ds["member"].attrs = dict(MEMBER_ATTRS)
    if lead_time is not None:
        ds["lead_time"].attrs = dict(LEAD_TIME_ATTRS)
    return ds


def provenance_attrs(provenance: Mapping[str, Any] | None) -> dict[str, str]:
    """Root attributes from provenance facts: strings as they are, anything else as JSON."""
    return {
        k: v if isinstance(v, str) else json.dumps(v, default=str)
        for k, v in (provenance or {}).items()
    }


def archive_dataset(
    ds: xr.Dataset,
    truth: xr.Dataset | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """``ds`` in the archive layout: dims in archive order, float32, a ``member`` dim of size 1
    when absent, CF attributes of variables and coordinates copied from ``truth``, and
    ``provenance`` in the root attributes (:func:`provenance_attrs`). Raises
    :class:`ArchiveError` for dims outside the layout."""
    if "member" not in ds.dims:
        ds = ds.expand_dims(member=[0])
    out = xr.Dataset(coords={k: v for k, v in ds.coords.items() if k in ds.dims})
    for name in ds.data_vars:
        var = ds[name]
        extra = [d for d in var.dims if d not in DIM_ORDER]
        if extra:
            raise ArchiveError(f"{name} has dims {extra} outside the archive layout {DIM_ORDER}")
        out[name] = var.transpose(*[d for d in DIM_ORDER if d in var.dims]).astype(np.float32)
        attrs = dict(truth[name].attrs) if truth is not None and name in truth else {}
        out[name].attrs = {
            k: v for k, v in attrs.items() if k in ("units", "long_name", "standard_name")
        }
    out["member"] = ("member", np.arange(out.sizes["member"], dtype=np.int64))
    out["member"].attrs = dict(MEMBER_ATTRS)
    if truth is not None:
        for coord in ("latitude", "longitude", "level", "time"):
            if coord in out.coords and coord in truth.coords:
                out[coord].attrs = dict(truth[coord].attrs)
    if "level" in out.coords:
        from appa.data.layout import level_kind

        # depths (m) are not whole numbers; pressures (hPa) are stored as integers
        if level_kind(out["level"]) != "depth":
            out["level"] = out["level"].astype(np.int64)
            out["level"].attrs.setdefault("units", "hPa")
    if "lead_time" in out.coords:
        out["lead_time"].attrs = dict(LEAD_TIME_ATTRS)
    out.attrs = {
        "Conventions": "CF-1.8",
        "appa_version": appa.__version__,
        **provenance_attrs(provenance),
        PRODUCT_ATTR: "archive",
    }
    check_layout(out)
    return out


def write_dataset(ds: xr.Dataset, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Writes a dataset in the archive layout (:func:`archive_dataset`) to the local Zarr store
    ``out`` at once, via a temporary sibling and a rename, so ``out`` is either absent or whole
    (Zarr format 2, consolidated metadata; one member and one time per chunk).

    ``out`` must be free (absent, an empty directory) or, with ``overwrite``, an Appa archive;
    anything else raises :class:`~appa.files.OutputExistsError` (a :class:`FileExistsError`)
    naming what is there, and is left as it is."""
    check_layout(ds)
    out = Path(out)
    claim_output(out, "archive", overwrite=overwrite)
    # the source store's encodings (its codecs, its Zarr format) do not belong to the archive
    ds = ds.drop_encoding().assign_attrs({PRODUCT_ATTR: "archive"})
    with written_whole(out, "archive", overwrite=overwrite) as tmp:
        encoding = {
            name: {
                "chunks": tuple(1 if d in ("member", "time") else n for d, n in var.sizes.items())
            }
            for name, var in ds.data_vars.items()
        }
        if any(ds[name].chunks is not None for name in ds.data_vars):
            # dask chunks must tile the Zarr chunks
            ds = ds.chunk({d: 1 for d in ("member", "time") if d in ds.dims})
        ds.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True, encoding=encoding)
    return out


def open_archive(
    path: str | os.PathLike, storage_options: Mapping[str, Any] | None = None, **kwargs: Any
) -> xr.Dataset:
    """Any archive (written by :class:`Archive` units or by :func:`write_dataset`) as a lazy
    :class:`xarray.Dataset`; unwritten cells read as NaN. Raises :class:`FileNotFoundError` for
    a missing store and :class:`ArchiveError` for one that is not in the archive layout."""
    url = _location(path)
    group = _open_group(url, storage_options)
    if group is None:
        raise FileNotFoundError(f"no archive at {url}")
    complete = group.attrs.get("appa_status", "complete") == "complete"
    try:
        ds = xr.open_zarr(
            _store(url, storage_options, read_only=True),
            consolidated=None if complete else False,
            **kwargs,
        )
    except (KeyError, ValueError, OSError) as error:
        raise ArchiveError(f"{url} is not a readable Zarr archive: {error}") from None
    for dim in ("member", "time", "latitude", "longitude"):
        if dim not in ds.dims:
            raise ArchiveError(
                f"{url}: archive lacks the {dim!r} dimension (dims {dict(ds.sizes)})"
            )
    return ds


def archive_identity(
    path: str | os.PathLike, storage_options: Mapping[str, Any] | None = None
) -> str:
    """SHA-256 (hex) of what an archive is: the config and input digests it was made from (a
    unit archive), or its root attributes (an archive written whole), which determine its
    data. Raises :class:`FileNotFoundError` for a missing store."""
    url = _location(path)
    group = _open_group(url, storage_options)
    if group is None:
        raise FileNotFoundError(f"no archive at {url}")
    if RECORDS_GROUP in group:
        records = dict(group[RECORDS_GROUP].attrs)
        facts: Any = {k: records.get(k) for k in ("config_hash", "inputs")}
    else:
        facts = dict(group.attrs)
    return config_hash(facts)


def unreadable_chunks(
    path: str | os.PathLike,
    storage_options: Mapping[str, Any] | None = None,
    variables: Sequence[str] | None = None,
    limit: int | None = 1,
) -> list[tuple[str, str, str]]:
    """``(variable, chunk key, problem)`` of chunks of an archive's data variables that cannot
    be decoded (a truncated or overwritten chunk file) or, in a complete archive, that read
    as unwritten (all NaN: a deleted chunk file), the first ``limit`` of them (None: all).
    Reads every chunk of ``variables`` (default: all): meant for diagnosis, once a read has
    failed. Errors of the store itself (:class:`OSError`) propagate."""
    url = _location(path)
    group = _open_group(url, storage_options)
    if group is None:
        raise FileNotFoundError(f"no archive at {url}")
    complete = group.attrs.get("appa_status", "complete") == "complete"
    names = list(variables) if variables is not None else sorted(group.array_keys())
    bad: list[tuple[str, str, str]] = []
    for name in names:
        array = group[name]
        if array.ndim == 0 or name in DIM_ORDER:
            continue
        separator = getattr(array.metadata, "dimension_separator", ".") or "."
        for block in itertools.product(*(range(n) for n in array.cdata_shape)):
            why = None
            try:
                data = np.asarray(array.blocks[block])
            except OSError:
                raise
            except Exception as error:  # any decoder's failure: this chunk is damaged
                why = f"cannot be read ({_one_line(error)})"
            else:
                if complete and data.dtype.kind == "f" and np.isnan(data).all():
                    why = "is missing (its cells read as never written)"
            if why is not None:
                bad.append((name, separator.join(map(str, block)), why))
                if limit is not None and len(bad) >= limit:
                    return bad
    return bad


@contextmanager
def read_errors_named(
    path: str | os.PathLike,
    storage_options: Mapping[str, Any] | None = None,
    expected: tuple[type[BaseException], ...] = (),
) -> Iterator[None]:
    """Errors inside the block (computing a lazy dataset of :func:`open_archive`) caused by a
    damaged chunk of the archive at ``path`` become one :class:`ArchiveError` naming the
    archive, the variable and the chunk (:func:`unreadable_chunks` finds it); other errors,
    and those of the ``expected`` types (a caller's own, needing no look at the chunks),
    propagate as they are."""
    try:
        yield
    except (ArchiveError, KeyboardInterrupt, *expected):
        raise
    except Exception as error:
        try:
            bad = unreadable_chunks(path, storage_options)
        except Exception:
            bad = []  # the diagnosis failed too: the original error says more
        if not bad:
            raise
        name, key, why = bad[0]
        raise ArchiveError(f"archive {_location(path)}: {name} chunk {key} {why}") from error


def _is_url(path: str) -> bool:
    return "://" in path


def _location(path: str | os.PathLike) -> str:
    # Ray actors need not share the driver's working folder: local paths become absolute.
    path = os.fspath(path)
    return path if _is_url(path) else os.path.abspath(path)


def _store(url: str, storage_options: Mapping[str, Any] | None, read_only: bool = False):
    """What zarr and xarray accept as a store: the path itself, or an fsspec store carrying
    the storage options."""
    if not storage_options or not _is_url(url):
        return url
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(url, storage_options=dict(storage_options), read_only=read_only)


def _open_group(url: str, storage_options, mode: str = "r", consolidated: bool | None = None):
    import zarr

    try:
        return zarr.open_group(
            _store(url, storage_options, mode == "r"), mode=mode, use_consolidated=consolidated
        )
    except FileNotFoundError:
        return None


def create_done_flags(group: Any, n: int, name: str = "done") -> Any:
    """A completion flag per unit of work in ``group`` (a zarr group): int8, 0 until done, one
    chunk per flag so that concurrent writers never share a chunk. Set a flag only after the
    unit's data are written."""
    return group.create_array(name, shape=(n,), chunks=(1,), dtype="int8", fill_value=0)


def pending_indices(flags: Any) -> list[int]:
    """Indices of the flags (from :func:`create_done_flags`) still 0."""
    return np.flatnonzero(np.asarray(flags[:]) == 0).tolist()


def _unit_grid(
    sizes: Mapping[str, int], unit: Mapping[str, int], order: str = MEMBER_MAJOR
) -> list[Unit]:
    """The units of the plan in index order: member-major, or time-major for archives that
    grow along ``time`` (the units of a longer time axis follow those already there, so every
    unit keeps its index, flag and checksums)."""
    dims = [d for d in UNIT_DIMS if d in sizes]
    walk = ["time", *[d for d in dims if d != "time"]] if order == TIME_MAJOR else dims
    starts = {d: range(0, sizes[d], unit[d]) for d in dims}
    units = []
    for index, corner in enumerate(itertools.product(*(starts[d] for d in walk))):
        at = dict(zip(walk, corner, strict=True))
        bounds = tuple((d, at[d], min(at[d] + unit[d], sizes[d])) for d in dims)
        units.append(Unit(index, bounds))
    return units


def _chunking(
    ds: xr.Dataset, unit: Mapping[str, int], chunks: Mapping[str, int] | None
) -> dict[str, int]:
    """Chunk size per dim: a unit covers whole chunks along the unit dims; field dims are
    whole unless ``chunks`` says otherwise."""
    chunks = dict(chunks or {})
    unknown = [d for d in (*unit, *chunks) if d not in ds.dims]
    if unknown:
        raise ArchiveError(f"unit or chunks name dims {unknown} the template does not have")
    bad = [d for d in unit if d not in UNIT_DIMS]
    if bad:
        raise ArchiveError(f"units may split only {UNIT_DIMS}, not {bad}")
    out = {}
    for dim, size in ds.sizes.items():
        step = int(unit.get(dim, size)) if dim in UNIT_DIMS else size
        if step < 1:
            raise ArchiveError(f"unit size along {dim!r} must be positive, got {step}")
        step = min(step, size)
        chunk = min(int(chunks.get(dim, step)), step)
        if chunk < 1:
            raise ArchiveError(f"chunk size along {dim!r} must be positive, got {chunk}")
        if dim in UNIT_DIMS and step % chunk:
            raise ArchiveError(
                f"chunks along {dim!r} ({chunk}) must divide the unit size ({step}) so that "
                "units never share a chunk"
            )
        out[str(dim)] = chunk
    return out


def create_archive(
    path: str | os.PathLike,
    template: xr.Dataset,
    *,
    units: Mapping[str, int],
    config: Any,
    provenance: Mapping[str, Any] | None = None,
    chunks: Mapping[str, int] | None = None,
    allow_nan: Sequence[str] = (),
    inputs: Mapping[str, str] | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    extensible: bool = False,
) -> Archive:
    """Creates the archive at ``path`` from ``template`` (only its structure, coordinates and
    attributes are used; its data may be lazy), or reopens the archive already there when it
    was made by the same ``config`` (to resume it: its done units are read back first, see
    :meth:`Archive.verify`).

    Args:
        template: A dataset in the archive layout (:func:`check_layout`, e.g. from
            :func:`template_from_spec`).
        units: Unit size per unit dim, e.g. ``{"member": 1, "time": 8}``; dims not given are
            whole in every unit.
        config: The job's configuration (pydantic model or JSON-able); stored as
            ``appa_config`` with its hash ``appa_config_hash``.
        provenance: More root attributes (checkpoint hashes, observation sources, seeds, ...);
            values that are not strings are stored as JSON.
        chunks: Chunk sizes; along unit dims they must divide the unit size (default: the unit
            size), along field dims default to whole.
        allow_nan: Variables whose written data may hold NaN (masked fields).
        inputs: Digests of what the job reads, by name (``{"prior.diffusion": sha256, ...}``):
            part of the archive's identity, so that a resumed job never mixes units computed
            from different inputs; a changed one is named in the error.
        overwrite: Replace an Appa archive made by another config or from other inputs (or the
            same ones) instead of refusing or resuming it. Never replaces anything that is not
            an Appa archive.
        extensible: An archive that grows along ``time`` (:meth:`Archive.extend_time`): its
            unit plan is time-major and ``time`` is stored in whole seconds since 1970.

    Raises :class:`ArchiveError` for a template outside the layout, a path that holds anything
    but an Appa archive (or nothing, or an empty directory), or an archive made by another
    config, from other inputs or with another structure (unless ``overwrite``, or unless it is
    a stub in which no unit was written: that one is replaced, saying so in
    :attr:`Archive.notes`).
    """
    import dask.array as da

    url = _location(path)
    check_layout(template)
    unknown = [v for v in allow_nan if v not in template.data_vars]
    if unknown:
        raise ArchiveError(f"allow_nan names variables {unknown} the template does not have")
    chunking = _chunking(template, units, chunks)
    sizes = template.sizes
    unit = {d: min(int(units.get(d, sizes[d])), sizes[d]) for d in UNIT_DIMS if d in sizes}
    digest = config_hash(config)
    variables = {str(n): list(map(str, v.dims)) for n, v in template.data_vars.items()}
    records_attrs = {
        "format": FORMAT_VERSION,
        "unit": unit,
        "allow_nan": list(allow_nan),
        "config_hash": digest,
        "variables": variables,
        "sizes": {str(d): int(n) for d, n in template.sizes.items()},
        "inputs": {str(k): str(v) for k, v in sorted((inputs or {}).items())},
        "checksums": {"algorithm": "sha256", "variables": sorted(variables)},
    }
    if extensible:
        if "time" not in unit or "lead_time" in sizes:
            raise ArchiveError("an extensible archive needs time units and no lead_time")
        records_attrs["order"] = TIME_MAJOR

    try:
        found = claim_output(
            url, "archive", resumable=True, flag="overwrite", storage_options=storage_options
        )
    except OutputExistsError as error:
        raise ArchiveError(str(error)) from None
    notes = []
    if not found.free:
        existing = _open_group(url, storage_options)
        reopen, note = _judge_existing(url, existing, records_attrs, overwrite)
        if reopen:
            archive = Archive(url, storage_options)
            damaged = archive.verify()
            archive.notes.extend(_damage_notes(url, damaged))
            return archive
        if note:
            notes.append(note)

    ds = template.copy()
    ds["member"].attrs = {**ds["member"].attrs, **MEMBER_ATTRS}
    encoding = {}
    for name, var in template.data_vars.items():
        shape = tuple(template.sizes[d] for d in var.dims)
        chunk = tuple(chunking[str(d)] for d in var.dims)
        # lazy zeros: compute=False below writes metadata and coordinates only
        ds[name] = xr.Variable(var.dims, da.zeros(shape, dtype=np.float32, chunks=chunk), var.attrs)
        encoding[name] = {"chunks": chunk, "_FillValue": np.float32(np.nan)}
    for name in ds.variables:
        ds[name].encoding = {}
    if extensible:
        encoding["time"] = {"units": EXTENSIBLE_TIME_UNITS, "dtype": "int64"}
    ds.attrs = {
        **template.attrs,
        **provenance_attrs(provenance),
        "appa_config": _config_json(config),
        "appa_config_hash": digest,
        "appa_version": appa.__version__,
        "appa_status": "writing",
        PRODUCT_ATTR: "archive",
    }
    # mode="w" clears what is there: nothing, an empty directory or an Appa archive (above)
    ds.to_zarr(
        _store(url, storage_options),
        mode="w",
        compute=False,
        encoding=encoding,
        consolidated=False,
        zarr_format=2,
    )
    group = _open_group(url, storage_options, mode="r+")
    n_units = len(_unit_grid(dict(template.sizes), unit, records_attrs.get("order", MEMBER_MAJOR)))
    records = group.create_group(RECORDS_GROUP)
    create_done_flags(records, n_units)
    # one chunk per unit: concurrent writers never share one
    n_vars = len(variables)
    records.create_array(
        CHECKSUMS, shape=(n_units, n_vars, 32), chunks=(1, n_vars, 32), dtype="uint8",
        fill_value=0,
    )  # fmt: skip
    # written last: an archive without them is one whose creation was interrupted
    records.attrs.update(records_attrs)
    archive = Archive(url, storage_options)
    archive.notes.extend(notes)
    return archive


def reopen_archive(
    path: str | os.PathLike,
    *,
    config: Any,
    storage_options: Mapping[str, Any] | None = None,
) -> Archive | None:
    """The archive of ``config`` already at ``path``, its done units read back (damaged ones
    pending again, named in :attr:`Archive.notes`), or None when the path is free or holds the
    stub of an interrupted creation (which :func:`create_archive` replaces). Raises
    :class:`ArchiveError` for anything else there: another product, a user's folder, an
    archive of another config."""
    try:
        found = claim_output(
            path, "archive", resumable=True, flag="overwrite", storage_options=storage_options
        )
    except OutputExistsError as error:
        raise ArchiveError(str(error)) from None
    if found.free:
        return None
    try:
        archive = Archive.open(path, config=config, storage_options=storage_options)
    except ArchiveError:
        if _is_stub(_open_group(_location(path), storage_options)):
            return None
        raise
    archive.notes.extend(_damage_notes(archive.url, archive.verify()))
    return archive


def _is_stub(group: Any) -> bool:
    """An archive in which no unit was ever written: still ``"writing"``, and either its
    creation was interrupted (no complete records) or no unit is done."""
    if group is None or group.attrs.get("appa_status") != "writing":
        return False
    if RECORDS_GROUP not in group or "done" not in group[RECORDS_GROUP]:
        return "appa_config_hash" in group.attrs  # made by create_archive, interrupted
    return not np.asarray(group[RECORDS_GROUP]["done"][:]).any()


def _judge_existing(
    url: str, group: Any, records_attrs: Mapping[str, Any], overwrite: bool
) -> tuple[bool, str | None]:
    """For an Appa archive at ``url``: ``(True, None)`` to reopen it (same config and
    structure), ``(False, note)`` to replace it (``overwrite``, or a stub: ``note`` says so),
    or raises :class:`ArchiveError` naming why it may not be replaced."""
    records = None
    if group is not None and RECORDS_GROUP in group:
        records = dict(group[RECORDS_GROUP].attrs)
    if records is None or "config_hash" not in records:
        if overwrite:
            return False, None
        if _is_stub(group):
            return False, f"{url}: replacing the stub of an archive whose creation was interrupted"
        raise ArchiveError(
            f"{url} is an Appa archive written whole (a baseline, not unit by unit by a job); "
            "choose another path or pass overwrite to replace it"
        )
    digest = records_attrs["config_hash"]
    hint = "choose another path or pass overwrite to replace it"
    if records.get("config_hash") != digest:
        why = (
            f"{url} was written by another config (hash {records.get('config_hash')}, this "
            f"config's is {digest})"
        )
    else:
        differ = [
            k
            for k in ("unit", "variables", "sizes", "allow_nan", "order")
            if records.get(k) != _json_round_trip(records_attrs.get(k))
        ]
        if not differ:
            changed = _input_changes(records.get("inputs"), records_attrs["inputs"])
            if changed is None:
                return not overwrite, None
            why = f"{url} was started from other inputs: {changed} changed since"
            hint = "restore them to resume, or pass overwrite to recompute it from the new ones"
        else:
            why = f"{url} has another structure than this template ({differ})"
    if overwrite:
        return False, None
    if _is_stub(group):
        return False, (
            f"{url}: replacing the empty archive a job of another config left there (it wrote "
            "no unit)"
        )
    raise ArchiveError(f"{why}; {hint}")


def _damage_notes(url: str, damaged: Sequence[UnitDamage], shown: int = 10) -> list[str]:
    """One line per damaged unit (the first ``shown``), then how many more."""
    lines = [f"{url}: {d}; computing it again" for d in damaged[:shown]]
    if len(damaged) > shown:
        lines.append(f"{url}: {len(damaged) - shown} more damaged units are computed again")
    return lines


def _input_changes(saved: Mapping[str, str] | None, given: Mapping[str, str]) -> str | None:
    """The inputs whose digest in ``given`` differs from the one an archive was started from
    (``saved``; None for an archive that records none), as one phrase naming each with both
    digests; None when they all agree."""
    if saved is None:
        return "its inputs (an older appa recorded no digests of them)" if given else None
    changed = []
    for name in sorted(set(saved) | set(given)):
        before, now = saved.get(name), given.get(name)
        if before != now:
            was = "absent" if before is None else f"sha256 {before[:12]}"
            is_ = "absent" if now is None else f"sha256 {now[:12]}"
            changed.append(f"{name} ({was} then, {is_} now)")
    return "; ".join(changed) or None


def check_inputs(url: str, saved: Mapping[str, str] | None, given: Mapping[str, str]) -> None:
    """Raises :class:`ArchiveError` naming each input whose digest in ``given`` differs from
    the one the archive at ``url`` was started from (``saved``): its units must never mix
    inputs."""
    changed = _input_changes(saved, given)
    if changed is not None:
        raise ArchiveError(
            f"{url} was started from other inputs: {changed} changed since; restore them to "
            "resume, or pass overwrite to recompute it from the new ones"
        )


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Coordinates agree: exactly, or to 1e-6 for floats (a worker's float32 latitudes)."""
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return bool(np.allclose(a, b, rtol=0, atol=1e-6 * max(1.0, float(np.abs(b).max()))))
    return bool(np.array_equal(a, b))


def _json_round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value))


class Archive:
    """An archive created by :func:`create_archive`: its unit plan, completion records, unit
    writes and finalisation. Pickles as its location only (for Ray actors); opens lazily."""

    def __init__(
        self, path: str | os.PathLike, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        self.url = _location(path)
        self.storage_options = dict(storage_options or {})
        self._cache: dict[str, Any] = {}
        group = _open_group(self.url, self.storage_options)
        if group is None:
            raise ArchiveError(f"no archive at {self.url}")
        if RECORDS_GROUP not in group or "config_hash" not in group[RECORDS_GROUP].attrs:
            raise ArchiveError(
                f"{self.url} is not an Appa archive (no complete {RECORDS_GROUP} group: not "
                "made by create_archive, or its creation was interrupted)"
            )
        self.records = dict(group[RECORDS_GROUP].attrs)
        # what opening it did that its user should hear of (a stub replaced, units damaged)
        self.notes: list[str] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options, "records": self.records}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = {}
        self.notes = []

    def __repr__(self) -> str:
        return f"Archive({self.url!r})"

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        config: Any = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> Archive:
        """Opens an archive; with ``config``, refuses (:class:`ArchiveError`) one made by
        another config."""
        archive = cls(path, storage_options)
        if config is not None and archive.config_hash != config_hash(config):
            raise ArchiveError(
                f"{archive.url} was written by another config (hash {archive.config_hash}, "
                f"this config's is {config_hash(config)})"
            )
        return archive

    # -- structure -------------------------------------------------------------------------
    @property
    def config_hash(self) -> str:
        return str(self.records["config_hash"])

    @property
    def unit_size(self) -> dict[str, int]:
        return dict(self.records["unit"])

    @property
    def allow_nan(self) -> list[str]:
        return list(self.records["allow_nan"])

    @property
    def units(self) -> list[Unit]:
        """Every unit of the plan, in index order (member-major)."""
        if "units" not in self._cache:
            self._cache["units"] = _unit_grid(
                self.records["sizes"], self.unit_size, self.records.get("order", MEMBER_MAJOR)
            )
        return self._cache["units"]

    def unit(self, key: str | int) -> Unit:
        """The unit with this key (``"member=0:1,time=0:4"``) or index."""
        units = self.units
        if isinstance(key, int | np.integer):
            return units[int(key)]
        for unit in units:
            if unit.key == key:
                return unit
        raise ArchiveError(f"{self.url} has no unit {key!r}")

    def _structure(self) -> xr.Dataset:
        """The archive opened lazily (coordinates loaded, data not)."""
        if "structure" not in self._cache:
            self._cache["structure"] = self.open_dataset()
        return self._cache["structure"]

    def coords(self, unit: Unit) -> dict[str, np.ndarray]:
        """The coordinate values of ``unit``'s region: ``member``, ``time`` (and ``lead_time``),
        whole or the block the unit covers."""
        ds = self._structure()
        region = unit.region
        return {
            d: np.asarray(ds[d].values[region.get(d, slice(None))])
            for d in UNIT_DIMS
            if d in ds.dims
        }

    def open_dataset(self, **kwargs: Any) -> xr.Dataset:
        """The archive as an :class:`xarray.Dataset` (lazy); consolidated metadata once
        complete. Unwritten cells read as NaN."""
        return open_archive(self.url, self.storage_options, **kwargs)

    # -- completion ------------------------------------------------------------------------
    def _done_array(self, mode: str = "r"):
        group = _open_group(self.url, self.storage_options, mode=mode)
        return group[RECORDS_GROUP]["done"]

    def done_mask(self) -> np.ndarray:
        """Whether each unit (by index) is done, read from the store now."""
        return np.asarray(self._done_array()[:]).astype(bool)

    def is_done(self, unit: Unit) -> bool:
        return bool(self._done_array()[unit.index])

    def pending_units(self) -> list[Unit]:
        """The units not yet done, in plan order."""
        return [self.units[i] for i in pending_indices(self._done_array())]

    @property
    def complete(self) -> bool:
        group = _open_group(self.url, self.storage_options)
        return group is not None and group.attrs.get("appa_status") == "complete"

    # -- writes ----------------------------------------------------------------------------
    def _validated(self, unit: Unit, data: xr.Dataset | Mapping[str, Any]) -> xr.Dataset:
        """``data`` as a dataset of exactly the archive's variables over ``unit``'s region,
        float32, without coordinates; raises :class:`ArchiveError` naming what is wrong."""
        ds = self._structure()
        region = ds.isel(unit.region)
        variables = self.records["variables"]
        given = list(data.data_vars) if isinstance(data, xr.Dataset) else list(data)
        missing = [v for v in variables if v not in given]
        extra = [v for v in given if v not in variables]
        if missing or extra:
            raise ArchiveError(
                f"unit {unit.key}: data variables differ from the archive's: "
                f"missing {missing}, unexpected {extra}"
            )
        out = {}
        for name, dims in variables.items():
            dims = tuple(dims)
            want = tuple(region.sizes[d] for d in dims)
            value = data[name]
            if isinstance(value, xr.DataArray):
                if tuple(value.dims) != dims:
                    raise ArchiveError(
                        f"unit {unit.key}: {name} has dims {tuple(value.dims)}, the archive "
                        f"has {dims}"
                    )
                for dim in dims:
                    if dim in value.coords and value.sizes[dim] == region.sizes[dim]:
                        if not _same(value[dim].values, region[dim].values):
                            raise ArchiveError(
                                f"unit {unit.key}: {name}'s {dim} coordinate differs from the "
                                f"archive's over this unit ({value[dim].values[:4]} vs "
                                f"{region[dim].values[:4]})"
                            )
                value = value.values
            array = np.asarray(value)
            if array.shape != want:
                raise ArchiveError(
                    f"unit {unit.key}: {name} has shape {array.shape}, the unit's region of "
                    f"{dims} is {want}"
                )
            array = array.astype(np.float32, copy=False)
            if name not in self.allow_nan:
                bad = int(np.count_nonzero(~np.isfinite(array)))
                if bad:
                    raise ArchiveError(
                        f"unit {unit.key}: {name} holds {bad} NaN/inf values; refusing to "
                        "write them"
                    )
            elif np.isinf(array).any():
                raise ArchiveError(f"unit {unit.key}: {name} holds infinite values")
            out[name] = (dims, array)
        return xr.Dataset(out)

    def write_unit(self, unit: Unit, data: xr.Dataset | Mapping[str, Any]) -> bool:
        """Writes ``unit``'s fields (a dataset, or ``{variable: array}`` shaped like the unit's
        region) and then marks it done. Returns False, writing nothing, when the unit is
        already done (a done unit is never rewritten). Raises :class:`ArchiveError` for missing
        or unexpected variables, wrong dims, shapes or coordinates, and NaN/inf values."""
        if unit.index >= len(self.units) or self.units[unit.index] != unit:
            raise ArchiveError(f"{unit.key} (index {unit.index}) is not a unit of {self.url}")
        ds = self._validated(unit, data)
        records = _open_group(self.url, self.storage_options, mode="r+", consolidated=False)[
            RECORDS_GROUP
        ]
        done = records["done"]
        if done[unit.index]:
            return False
        ds.to_zarr(
            _store(self.url, self.storage_options),
            region=unit.region,
            mode="r+",
            consolidated=False,
        )
        names = self.records.get("checksums", {}).get("variables")
        if names and CHECKSUMS in records:  # archives of format 1 have none
            records[CHECKSUMS][unit.index] = np.stack([_digest(ds[n].values) for n in names])
        done[unit.index] = 1  # after the data: a crash in between only recomputes the unit
        return True

    # -- read-back -------------------------------------------------------------------------
    def check_units(
        self, units: Sequence[Unit] | None = None, threads: int = 8
    ) -> list[UnitDamage]:
        """Reads back the done ``units`` (default: all) and returns those whose data are not
        what was written: a chunk that cannot be decoded, data that differ from the checksum
        recorded at writing, or (units written without one) unwritten NaN cells outside
        ``allow_nan``. Changes nothing. Raises :class:`ArchiveError` when the store itself
        cannot be read (an :class:`OSError`: a network or permission failure is no damage)."""
        group = _open_group(self.url, self.storage_options)
        records = group[RECORDS_GROUP]
        done = np.asarray(records["done"][:]).astype(bool)
        todo = [u for u in (self.units if units is None else units) if done[u.index]]
        if not todo:
            return []
        sums = np.asarray(records[CHECKSUMS][:]) if CHECKSUMS in records else None
        order = self.records.get("checksums", {}).get("variables", [])
        variables = self.records["variables"]
        arrays = {name: group[name] for name in variables}

        def check(unit: Unit) -> UnitDamage | None:
            region = unit.region
            failed, reason = [], ""
            for name, dims in variables.items():
                selection = tuple(region.get(d, slice(None)) for d in dims)
                try:
                    data = np.asarray(arrays[name][selection])
                except OSError as error:
                    raise ArchiveError(
                        f"{self.url}: cannot read back unit {unit.key} of {name} "
                        f"({_one_line(error)})"
                    ) from error
                except Exception as error:  # a decoder's failure: the chunk is damaged
                    failed.append(name)
                    reason = reason or f"cannot be read: {_one_line(error)}"
                    continue
                recorded = None
                if sums is not None and name in order and sums[unit.index].any():
                    recorded = sums[unit.index, order.index(name)]
                if recorded is not None:
                    if not np.array_equal(_digest(data), recorded):
                        failed.append(name)
                        reason = reason or "its data differ from what was written"
                elif name not in self.allow_nan and not np.isfinite(data).all():
                    failed.append(name)
                    count = int(np.count_nonzero(~np.isfinite(data)))
                    reason = reason or f"{count} cells read as unwritten"
            return UnitDamage(unit, tuple(failed), reason) if failed else None

        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(todo)))) as pool:
            found = list(pool.map(check, todo))
        return [d for d in found if d is not None]

    def verify(self) -> list[UnitDamage]:
        """Reads back every done unit (:meth:`check_units`) and makes the damaged ones pending
        again, so that the next run computes them; a complete archive with damage goes back
        to ``"writing"`` until it is finalised again. Returns the damage found."""
        import zarr

        damaged = self.check_units()
        if not damaged:
            return []
        group = _open_group(self.url, self.storage_options, mode="r+", consolidated=False)
        if group.attrs.get("appa_status") == "complete":
            group.attrs["appa_status"] = "writing"
            # the consolidated copy of the attributes must say so too
            zarr.consolidate_metadata(_store(self.url, self.storage_options))
        done = group[RECORDS_GROUP]["done"]
        for damage in damaged:
            done[damage.unit.index] = 0
        self._cache.pop("structure", None)
        return damaged

    def finalize(self) -> None:
        """Marks the archive complete and consolidates its metadata (once, at the end); raises
        :class:`ArchiveError` naming units not yet done."""
        import zarr

        pending = self.pending_units()
        if pending:
            keys = [u.key for u in pending[:5]]
            raise ArchiveError(
                f"{self.url}: {len(pending)} of {len(self.units)} units are not done "
                f"(first: {keys}); run the job again to finish them"
            )
        group = _open_group(self.url, self.storage_options, mode="r+", consolidated=False)
        group.attrs["appa_status"] = "complete"
        zarr.consolidate_metadata(_store(self.url, self.storage_options))
        self._cache.pop("structure", None)

    # -- growth along time -----------------------------------------------------------------
    @property
    def extensible(self) -> bool:
        """Whether the archive grows along ``time`` (created with ``extensible=True``)."""
        return self.records.get("order") == TIME_MAJOR

    def extend_time(self, times: Any, inputs: Mapping[str, str] | None = None) -> list[Unit]:
        """Grows the archive's ``time`` axis to ``times`` (which must begin with the times it
        holds): every data variable, the ``time`` coordinate, the completion flags and the
        checksums are resized to the target, so calling it again with the same target
        changes nothing (never an append that doubles). The new cells read as unwritten and
        the new units are pending; units already there keep their index, flag and checksums.
        ``inputs``: digests of what the new units read, added to the recorded ones; a name
        already recorded with another digest is refused (:class:`ArchiveError`). The archive
        is ``"writing"`` until finalised again. Returns the new units."""
        import zarr
        from xarray.coding.times import decode_cf_datetime, encode_cf_datetime

        if not self.extensible:
            raise ArchiveError(f"{self.url} was not created extensible along time")
        target = np.asarray(times, dtype="datetime64[ns]")
        # the arrays' own metadata, not a consolidated copy an interrupted extension left stale
        group = _open_group(self.url, self.storage_options, mode="r+", consolidated=False)
        coordinate = group["time"]
        units = coordinate.attrs.get("units", EXTENSIBLE_TIME_UNITS)
        # the records say how many times are held (they are written last)
        count = int(self.records["sizes"]["time"])
        held = np.asarray(
            decode_cf_datetime(np.asarray(coordinate[:count]), units, "proleptic_gregorian"),
            dtype="datetime64[ns]",
        )
        if target.size < held.size or not np.array_equal(target[: held.size], held):
            raise ArchiveError(
                f"{self.url}: the new time axis must begin with the {held.size} times it holds "
                f"({held[0] if held.size else None} .. {held[-1] if held.size else None})"
            )
        if np.any(np.diff(target) <= np.timedelta64(0)):
            raise ArchiveError(f"{self.url}: the new time axis is not increasing")
        given = {str(k): str(v) for k, v in (inputs or {}).items()}
        saved = dict(self.records.get("inputs", {}))
        changed = _input_changes({k: saved[k] for k in given if k in saved}, {
            k: v for k, v in given.items() if k in saved
        })  # fmt: skip
        if changed is not None:
            raise ArchiveError(
                f"{self.url} was started from other inputs: {changed} changed since; restore "
                "them to resume"
            )
        sizes = {**self.records["sizes"], "time": int(target.size)}
        n_units = len(_unit_grid(sizes, self.unit_size, TIME_MAJOR))
        # the records say "writing" first: a crash below leaves an archive to be finished
        group.attrs["appa_status"] = "writing"
        for name, dims in self.records["variables"].items():
            array = group[name]
            shape = tuple(sizes[d] for d in dims)
            if array.shape != shape:
                array.resize(shape)
        if coordinate.shape != (target.size,):
            coordinate.resize((target.size,))
        encoded, _, _ = encode_cf_datetime(target, units, "proleptic_gregorian", np.int64)
        coordinate[held.size :] = np.asarray(encoded)[held.size :]
        records = group[RECORDS_GROUP]
        for name in ("done", CHECKSUMS):
            array = records[name]
            if array.shape[0] != n_units:
                array.resize((n_units, *array.shape[1:]))
        facts = {"sizes": sizes, "inputs": dict(sorted({**saved, **given}.items()))}
        records.attrs.update(facts)
        self.records.update(_json_round_trip(facts))
        zarr.consolidate_metadata(_store(self.url, self.storage_options))
        before = len(self.units)
        self._cache.clear()
        return self.units[before:]

    def record(self, facts: Mapping[str, Any], attrs: Mapping[str, Any] | None = None) -> None:
        """Adds ``facts`` to the unit records (JSON values) and ``attrs`` to the root
        attributes (:func:`provenance_attrs`); :meth:`finalize` consolidates them."""
        group = _open_group(self.url, self.storage_options, mode="r+", consolidated=False)
        if facts:
            group[RECORDS_GROUP].attrs.update(_json_round_trip(dict(facts)))
            self.records.update(_json_round_trip(dict(facts)))
        if attrs:
            group.attrs.update(provenance_attrs(attrs))
