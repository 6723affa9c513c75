"""Output paths: what is at a path, whether a writer may replace it, and writing a file or a
folder whole.

Every Appa product marks itself: Zarr stores and netCDF / HDF5 files carry the root attribute
``appa_product`` (a key of :data:`PRODUCTS`); an observation store holds ``observations.json``.
Products written before the attribute existed are recognised by the markers they already had
(an archive's ``appa_units`` group or ``appa_config_hash`` attribute, a score table's ``truth``
attribute and ``system`` / ``metric`` variables, ...). :func:`what_is` is the one place that
reads them; :func:`claim_output` is the one rule every writer applies before it writes:

- an absent path or an empty directory is free;
- a product of the same kind is replaced only when the caller says so (``overwrite``), or
  reopened by writers that resume (``resumable``);
- anything else (a user's folder or file, another kind of product) is never deleted or
  overwritten: :class:`OutputExistsError` names the path and what it holds.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

__all__ = [
    "PRODUCTS",
    "PRODUCT_ATTR",
    "Found",
    "OutputExistsError",
    "WriterBusyError",
    "claim_output",
    "what_is",
    "writer_lock",
    "written_whole",
]

# kind -> what it is called in messages ("an Appa <name>")
PRODUCTS: dict[str, str] = {
    "archive": "archive",
    "observations": "observation store",
    "scores": "score table",
    "toy-earth": "toy-Earth store",
    "toy-sea": "toy-sea store",
    "latents": "latent store",
    "windows": "window store",
    "lenses": "lens store",
    "galaxies": "galaxy store",
    "pairs": "store of simulated pairs",
}
PRODUCT_ATTR = "appa_product"
# the names of appa.io.archive.RECORDS_GROUP and appa.observations.schema's metadata file
# (this module sits below both and imports neither)
_ARCHIVE_RECORDS = "appa_units"
_OBSERVATIONS_META = "observations.json"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class OutputExistsError(FileExistsError):
    """An output path holds something the writer may not replace; the message names the path
    and what it holds."""


@dataclass(frozen=True)
class Found:
    """What is at ``path``: ``kind`` is ``"absent"``, ``"empty"`` (an empty directory),
    ``"file"`` or ``"directory"`` (not an Appa product), or a key of :data:`PRODUCTS`;
    ``attrs`` are the root attributes read there (Zarr, netCDF or HDF5), ``zarr`` whether it
    is a Zarr store."""

    path: str
    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    zarr: bool = False

    @property
    def free(self) -> bool:
        """Nothing is lost by writing there: absent, or an empty directory."""
        return self.kind in ("absent", "empty")

    @property
    def noun(self) -> str:
        """What it is, in words: ``"an Appa archive"``, ``"a directory"``, ``"a Zarr store"``."""
        if self.kind in PRODUCTS:
            return f"an Appa {PRODUCTS[self.kind]}"
        if self.zarr:
            return "a Zarr store"
        return {"absent": "nothing", "empty": "an empty directory", "file": "a file"}.get(
            self.kind, "a directory"
        )


def _is_url(path: str) -> bool:
    return "://" in path


def _filesystem(path: str, storage_options: Mapping[str, Any] | None):
    import fsspec

    if _is_url(path):
        return fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    return fsspec.filesystem("file"), os.path.abspath(path)


def _decoded(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return _decoded(value.item())
    return value


def _file_markers(fs, path: str) -> tuple[dict[str, Any], set[str]]:
    """Root attributes and variable names of a netCDF (classic or 4) or HDF5 file; nothing
    for other files."""
    with fs.open(path, "rb") as f:
        magic = f.read(8)
    try:
        if magic.startswith(_HDF5_MAGIC):
            import h5py

            with fs.open(path, "rb") as f, h5py.File(f, "r") as h5:
                return {k: _decoded(v) for k, v in h5.attrs.items()}, set(h5)
        if magic[:3] == b"CDF" and not _is_url(path):
            from scipy.io import netcdf_file

            with netcdf_file(path, "r", mmap=False) as nc:
                return {k: _decoded(v) for k, v in nc._attributes.items()}, set(nc.variables)
    except Exception:
        pass  # a file its reader cannot parse is not one of ours
    return {}, set()


def _kind(attrs: Mapping[str, Any], names: set[str]) -> str | None:
    """The product kind these markers say, or None."""
    marked = attrs.get(PRODUCT_ATTR)
    if marked in PRODUCTS:
        return str(marked)
    # products written before the attribute existed
    if _OBSERVATIONS_META in names:
        return "observations"
    if _ARCHIVE_RECORDS in names or "appa_config_hash" in attrs or "appa_baseline" in attrs:
        return "archive"
    if "appa_toy_earth_config" in attrs:
        return "toy-earth"
    if attrs.get("variable") == "latent" and "provenance" in attrs:
        return "latents"
    if {"latitudes", "channel_names", "variable"} <= set(attrs):
        return "windows"
    if attrs.get("generator") == "appa.lensing.galaxies":
        return "galaxies"
    if "appa_npe" in attrs:
        return "pairs"
    if "truth" in attrs and {"system", "metric"} <= names:
        return "scores"
    if {"setup", "seed"} <= set(attrs) and {"image", "source"} <= names:
        return "lenses"
    return None


def what_is(path: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> Found:
    """What is at ``path`` (a local path or an fsspec URL), read from the markers each product
    writes (see the module docstring). Reads a few small metadata files, never data."""
    where = os.fspath(path)
    fs, root = _filesystem(where, storage_options)
    if not fs.exists(root):
        return Found(where, "absent")
    if not fs.isdir(root):
        attrs, names = _file_markers(fs, root)
        return Found(where, _kind(attrs, names) or "file", attrs)
    names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
    names.discard("")
    if not names:
        return Found(where, "empty")
    attrs: dict[str, Any] = {}
    is_zarr = bool(names & {".zgroup", ".zattrs", ".zarray", "zarr.json"})
    try:
        if ".zattrs" in names:
            attrs = json.loads(fs.cat_file(f"{root}/.zattrs"))
        elif "zarr.json" in names:
            attrs = json.loads(fs.cat_file(f"{root}/zarr.json")).get("attributes", {}) or {}
    except (OSError, ValueError):
        attrs = {}  # unreadable metadata: judged by its names alone
    if not isinstance(attrs, dict):
        attrs = {}
    return Found(where, _kind(attrs, names) or "directory", attrs, is_zarr)


def claim_output(
    path: str | os.PathLike,
    kind: str,
    *,
    overwrite: bool = False,
    resumable: bool = False,
    flag: str = "--overwrite",
    storage_options: Mapping[str, Any] | None = None,
) -> Found:
    """Checks that a writer of ``kind`` (a key of :data:`PRODUCTS`) may write at ``path`` and
    returns what is there: free (absent, an empty directory), or a product of ``kind`` when
    ``overwrite`` (to replace it) or ``resumable`` (the caller reopens it). Raises
    :class:`OutputExistsError` naming the path and what it holds otherwise; ``flag`` is what
    the message tells the user to pass to replace their own product."""
    if kind not in PRODUCTS:
        raise ValueError(f"unknown product kind {kind!r}: one of {sorted(PRODUCTS)}")
    found = what_is(path, storage_options)
    name = PRODUCTS[kind]
    where = os.fspath(path)
    if found.free or (found.kind == kind and (overwrite or resumable)):
        return found
    if found.kind == kind:
        raise OutputExistsError(f"{where} exists (an Appa {name}); pass {flag} to replace it")
    if found.kind in PRODUCTS:
        raise OutputExistsError(
            f"{where} is {found.noun}, not {_a(name)} {name}; choose another path (it was left "
            "as it is)"
        )
    raise OutputExistsError(
        f"{where} is {found.noun} that is not an Appa {name}; choose another path (it was left "
        "as it is)"
    )


def _a(noun: str) -> str:
    return "an" if noun[:1] in "aeiou" else "a"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _may_replace(out: Path, kind: str | None, overwrite: bool) -> None:
    if kind is not None:
        claim_output(out, kind, overwrite=overwrite)
    elif out.is_dir() and not out.is_symlink() and any(out.iterdir()):
        raise OutputExistsError(f"{out} is a directory; refusing to replace it with a file")


@contextmanager
def written_whole(
    out: str | os.PathLike, kind: str | None = None, *, overwrite: bool = False
) -> Iterator[Path]:
    """Yields a temporary sibling path of ``out`` (not yet created) to write a file or a folder
    (a Zarr store) into.

    When the block ends, the temporary replaces ``out``; when the block raises, the temporary
    is removed and ``out`` is left as it was. Readers see ``out`` absent, old or whole, never
    half-written; a killed writer leaves only a hidden ``.NAME.tmp-*`` sibling.

    What may be replaced (checked on entry, before any work, and again before the rename):
    with ``kind`` (a product of :data:`PRODUCTS`), what :func:`claim_output` allows (a product
    of that kind only with ``overwrite``); without, a file of the caller's own naming (a
    figure, a JSON summary in the job's folder), never a directory that holds anything.
    Raises :class:`OutputExistsError` otherwise.
    """
    out = Path(out)
    _may_replace(out, kind, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        _may_replace(out, kind, overwrite)
        _remove(out)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


class WriterBusyError(RuntimeError):
    """Another process holds the writer's lock of a product."""


@contextmanager
def writer_lock(path: str | os.PathLike, wait_s: float = 0.0) -> Iterator[Path]:
    """Holds the one-writer lock of the product at ``path`` (a local path) for the block: an
    exclusive ``flock`` on the sibling file ``PATH.lock``, which names its holder (host, pid,
    since). The kernel releases it when its holder ends, killed or not, so a killed writer's
    lock is taken over by the next one; the file itself stays (it is ours, and removing it
    would let two writers lock two different files). Waits up to ``wait_s`` seconds for a
    holder to finish, then raises :class:`WriterBusyError` naming it."""
    import fcntl
    import socket
    import time
    from datetime import datetime

    if _is_url(os.fspath(path)):
        raise WriterBusyError(
            f"{path}: the one-writer lock needs a local or mounted path (no lease on object "
            "stores); write the archive to a mounted path"
        )
    lock = Path(os.path.abspath(path)).with_name(Path(path).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "{}"
                    raise WriterBusyError(
                        f"{path} is being written by another process ({holder}); it is left "
                        "to that one"
                    ) from None
                time.sleep(0.2)
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield lock
    finally:
        os.close(fd)  # releases the lock
