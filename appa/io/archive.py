"""Output archives: Zarr groups of ensemble fields written unit by unit, safe to resume.

Layout (readable with plain :func:`xarray.open_zarr`): data variables named as ERA5, float32,
physical SI units, dims ``(member, time, [lead_time,] [level,] latitude, longitude)``;
``member`` int64 from 0 (``standard_name: realization``), ``time`` datetime64, ``lead_time``
timedelta64, ``level`` in hPa, ``latitude`` ascending, ``longitude`` in [0, 360) ascending.
Root attributes hold provenance as JSON strings (``appa_config``, ``appa_config_hash``,
``appa_version``, whatever the caller adds: checkpoint hashes, observation sources, seeds) and
``appa_status`` (``"writing"``, then ``"complete"``).

Writing: :func:`create_archive` writes the template (metadata and coordinates only, data as
lazy zeros with ``to_zarr(compute=False)``), chunked so that every unit of work (a block of
members x times (x lead times)) covers whole chunks. Workers write one unit with
:meth:`Archive.write_unit` (an ``xarray`` region write), then set the unit's flag in
``appa_units/done`` (one chunk per unit, so concurrent writers never share a chunk). A crash
between the two only means the unit is computed again; a unit already done is never rewritten.
:meth:`Archive.finalize` checks that every unit is done, marks the archive complete and
consolidates the metadata once. Cells of units not yet written read as NaN (the fill value),
and NaN is refused in written data (except in ``allow_nan`` variables such as sea-surface
temperature over land), so a NaN outside those variables always means "not written".

Products computed whole in one process (the classical baselines) take the other door to the
same layout: :func:`archive_dataset` puts a dataset in it and :func:`write_dataset` writes it
at once, atomically. Every archive, however written, is read back with :func:`open_archive`.

Paths are local folders or fsspec URLs (``gs://``, ``s3://``, ``memory://``) with
``storage_options``. Nothing here knows about networks or Ray.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import appa
from appa.files import written_whole

__all__ = [
    "DIM_ORDER",
    "FIELD_DIMS",
    "RECORDS_GROUP",
    "UNIT_DIMS",
    "Archive",
    "ArchiveError",
    "Unit",
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
    "template_from_spec",
    "write_dataset",
]

# Dims a unit of work may split; the rest of a field is always written whole by one unit.
UNIT_DIMS = ("member", "time", "lead_time")
FIELD_DIMS = ("level", "latitude", "longitude")
DIM_ORDER = (*UNIT_DIMS, *FIELD_DIMS)
RECORDS_GROUP = "appa_units"
FORMAT_VERSION = 1
MEMBER_ATTRS = {"standard_name": "realization", "long_name": "ensemble member"}
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
    ``level`` = ``spec.levels`` (hPa). ``time`` datetime64, ``lead_time`` timedelta64,
    ``latitude`` / ``longitude`` in degrees."""
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
        out["level"] = out["level"].astype(np.int64)
        out["level"].attrs.setdefault("units", "hPa")
    if "lead_time" in out.coords:
        out["lead_time"].attrs = dict(LEAD_TIME_ATTRS)
    out.attrs = {
        "Conventions": "CF-1.8",
        "appa_version": appa.__version__,
        **provenance_attrs(provenance),
    }
    check_layout(out)
    return out


def write_dataset(ds: xr.Dataset, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Writes a dataset in the archive layout (:func:`archive_dataset`) to the local Zarr store
    ``out`` at once, via a temporary sibling and a rename, so ``out`` is either absent or whole
    (Zarr format 2, consolidated metadata; one member and one time per chunk)."""
    check_layout(ds)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    # the source store's encodings (its codecs, its Zarr format) do not belong to the archive
    ds = ds.drop_encoding()
    with written_whole(out) as tmp:
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


def _open_group(url: str, storage_options, mode: str = "r"):
    import zarr

    try:
        return zarr.open_group(_store(url, storage_options, mode == "r"), mode=mode)
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


def _unit_grid(sizes: Mapping[str, int], unit: Mapping[str, int]) -> list[Unit]:
    dims = [d for d in UNIT_DIMS if d in sizes]
    starts = [range(0, sizes[d], unit[d]) for d in dims]
    units = []
    for index, corner in enumerate(itertools.product(*starts)):
        bounds = tuple(
            (d, a, min(a + unit[d], sizes[d])) for d, a in zip(dims, corner, strict=True)
        )
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
) -> Archive:
    """Creates the archive at ``path`` from ``template`` (only its structure, coordinates and
    attributes are used; its data may be lazy), or reopens the archive already there when it
    was made by the same ``config`` (to resume it).

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
        overwrite: Replace an archive made by another config instead of refusing.

    Raises :class:`ArchiveError` for a template outside the layout, or an existing archive
    made by another config, from other inputs or with another structure (unless
    ``overwrite``).
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
    records_attrs = {
        "format": FORMAT_VERSION,
        "unit": unit,
        "allow_nan": list(allow_nan),
        "config_hash": digest,
        "variables": {str(n): list(map(str, v.dims)) for n, v in template.data_vars.items()},
        "sizes": {str(d): int(n) for d, n in template.sizes.items()},
        "inputs": {str(k): str(v) for k, v in sorted((inputs or {}).items())},
    }

    existing = _open_group(url, storage_options)
    if existing is not None and not overwrite:
        if RECORDS_GROUP not in existing or "config_hash" not in existing[RECORDS_GROUP].attrs:
            raise ArchiveError(
                f"{url} exists but is not an Appa archive (or its creation was interrupted); "
                "choose another path or pass overwrite"
            )
        saved = dict(existing[RECORDS_GROUP].attrs)
        if saved.get("config_hash") != digest:
            raise ArchiveError(
                f"{url} was written by another config (hash {saved.get('config_hash')}, this "
                f"config's is {digest}); choose another path or pass overwrite to replace it"
            )
        check_inputs(url, saved.get("inputs"), records_attrs["inputs"])
        differ = [
            k
            for k in ("unit", "variables", "sizes", "allow_nan")
            if saved.get(k) != _json_round_trip(records_attrs[k])
        ]
        if differ:
            raise ArchiveError(
                f"{url} has another structure than this template ({differ}); choose another "
                "path or pass overwrite"
            )
        return Archive(url, storage_options)

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
    ds.attrs = {
        **template.attrs,
        **provenance_attrs(provenance),
        "appa_config": _config_json(config),
        "appa_config_hash": digest,
        "appa_version": appa.__version__,
        "appa_status": "writing",
    }
    ds.to_zarr(
        _store(url, storage_options),
        mode="w",
        compute=False,
        encoding=encoding,
        consolidated=False,
        zarr_format=2,
    )
    group = _open_group(url, storage_options, mode="r+")
    n_units = len(_unit_grid(dict(template.sizes), unit))
    records = group.create_group(RECORDS_GROUP)
    create_done_flags(records, n_units)
    # written last: an archive without them is one whose creation was interrupted
    records.attrs.update(records_attrs)
    return Archive(url, storage_options)


def check_inputs(url: str, saved: Mapping[str, str] | None, given: Mapping[str, str]) -> None:
    """Raises :class:`ArchiveError` naming each input whose digest in ``given`` differs from
    the one the archive at ``url`` was started from (``saved``): its units must never mix
    inputs."""
    if saved is None:
        if given:
            raise ArchiveError(
                f"{url} records no digests of its inputs (an older appa wrote it), so resuming "
                "it could mix inputs; choose another path or pass overwrite to recompute it"
            )
        return
    changed = []
    for name in sorted(set(saved) | set(given)):
        before, now = saved.get(name), given.get(name)
        if before != now:
            was = "absent" if before is None else f"sha256 {before[:12]}"
            is_ = "absent" if now is None else f"sha256 {now[:12]}"
            changed.append(f"{name} ({was} then, {is_} now)")
    if changed:
        raise ArchiveError(
            f"{url} was started from other inputs: {'; '.join(changed)} changed since; restore "
            "them to resume, or pass overwrite to recompute the archive from the new ones"
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

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options, "records": self.records}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = {}

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
            self._cache["units"] = _unit_grid(self.records["sizes"], self.unit_size)
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
        done = self._done_array(mode="r+")
        if done[unit.index]:
            return False
        ds.to_zarr(
            _store(self.url, self.storage_options),
            region=unit.region,
            mode="r+",
            consolidated=False,
        )
        done[unit.index] = 1  # after the data: a crash in between only recomputes the unit
        return True

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
        group = _open_group(self.url, self.storage_options, mode="r+")
        group.attrs["appa_status"] = "complete"
        zarr.consolidate_metadata(_store(self.url, self.storage_options))
        self._cache.pop("structure", None)
