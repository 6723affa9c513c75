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

import errno
import json
import os
import shutil
import threading
import time
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
    "Held",
    "ObjectLease",
    "OutputExistsError",
    "WriterBusyError",
    "WriterLostError",
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
    "bufr": "folder of BUFR reports",
}
PRODUCT_ATTR = "appa_product"
# the names of appa.io.archive.RECORDS_GROUP and appa.observations.schema's metadata file
# (this module sits below both and imports neither)
_ARCHIVE_RECORDS = "appa_units"
_OBSERVATIONS_META = "observations.json"
_BUFR_INDEX = "bufr_reports.json"  # appa.observations.simulators.BUFR_MANIFEST
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


# the largest JSON file read for its markers (a score table is a few kB)
_JSON_MARKERS_MAX_BYTES = 16 * 2**20


def _file_markers(fs, path: str) -> tuple[dict[str, Any], set[str]]:
    """Root attributes and variable names of a netCDF (classic or 4) or HDF5 file, and the
    ``attrs`` of a JSON document (a score table written as JSON); nothing for other files."""
    with fs.open(path, "rb") as f:
        magic = f.read(8)
    try:
        if magic.lstrip().startswith(b"{") and fs.size(path) <= _JSON_MARKERS_MAX_BYTES:
            document = json.loads(fs.cat_file(path))
            attrs = document.get("attrs") if isinstance(document, dict) else None
            return (dict(attrs), set()) if isinstance(attrs, dict) else ({}, set())
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
    if _BUFR_INDEX in names:
        return "bufr"
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
    """Another process holds the writer's lock (or lease) of a product."""


class WriterLostError(WriterBusyError):
    """This writer's lease of a product on an object store was lost (taken over after it
    expired, or removed): the writer stops before it writes more."""


class Held:
    """What :func:`writer_lock` yields for a local path: an exclusive ``flock`` held for as
    long as its file stays open, which no other process can take from its holder."""

    def __init__(self, where: str) -> None:
        self.where = where

    def check(self) -> None:
        """Raises :class:`WriterLostError` when the writer may no longer write; a ``flock``
        is never lost while held."""


# Object stores on which a create-if-absent is one atomic request (or, for memory:// and local
# files, one atomic step in this process or kernel); any other store could let two writers
# both create the lease object.
LEASE_PROTOCOLS = frozenset({"memory", "file", "local", "gs", "gcs", "s3", "s3a"})
_EPOCH = "epoch-"
# memory:// checks for the key and then inserts it: two threads could both pass the check
_MEMORY_CREATE = threading.Lock()


class ObjectLease(Held):
    """The one-writer lease of the product at ``url`` (an fsspec URL): a time-limited claim
    kept in the folder ``URL.lease/`` beside the product, renewed by a heartbeat thread.

    The folder holds numbered records ``epoch-000000000001`` ...; the lease is the highest.
    A record names its holder (host, pid, a random token), when it was acquired and when it
    expires (seconds since 1970, the holder's clock), or that it was released. A writer takes
    the lease by creating the next number with a create-if-absent (``ifGenerationMatch=0`` on
    GCS, ``If-None-Match: *`` on S3, ``O_EXCL`` for local files), after the highest record was
    released or expired ``margin_s`` ago: of several takers exactly one create succeeds. Only
    the process that created a record ever writes it again (its renewals and its release), so
    renewals need no compare-and-swap; a holder checks before each renewal and in
    :meth:`check` that its record is still the highest and still bears its token.

    The holder counts itself lost once ``lease_s - margin_s`` have passed (on its monotonic
    clock) since the start of its last renewal that succeeded in time, so it stops before any
    taker may begin, provided the hosts' clocks agree within ``margin_s``. Older records are
    deleted by the next holder; the highest is never deleted (a released lease is marked
    released), so numbers never go back.
    """

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        lease_s: float = 60.0,
        renew_s: float = 20.0,
        margin_s: float | None = None,
    ) -> None:
        import fsspec

        margin = lease_s / 6 if margin_s is None else margin_s
        if not 0 < renew_s < lease_s - margin or margin < 0:
            raise ValueError(
                f"{url}: a lease of {lease_s} s needs a renewal interval (now {renew_s} s) "
                f"shorter than the lease less its margin ({lease_s} - {margin} s)"
            )
        fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        if not protocols & LEASE_PROTOCOLS:
            raise WriterBusyError(
                f"{url}: no one-writer lease on {'/'.join(sorted(protocols))}:// (it needs a "
                f"create-if-absent: {', '.join(sorted(LEASE_PROTOCOLS))})"
            )
        super().__init__(f"{url.rstrip('/')}.lease")
        self.url = url
        self.fs = fs
        self.folder = f"{root.rstrip('/')}.lease"
        self.local = bool(protocols & {"file", "local"})
        self.lease_s, self.renew_s, self.margin_s = lease_s, renew_s, margin
        self.token = uuid.uuid4().hex
        self.epoch: int | None = None
        self.lost: str | None = None
        self._since = ""
        self._deadline = 0.0
        self._io = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # --- the store ---------------------------------------------------------------------------

    def _path(self, epoch: int) -> str:
        return f"{self.folder}/{_EPOCH}{epoch:012d}"

    def _epochs(self) -> list[int]:
        self.fs.invalidate_cache(self.folder)  # listings of gcsfs / s3fs are cached
        try:
            names = self.fs.ls(self.folder, detail=False)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            stem = name.rstrip("/").rsplit("/", 1)[-1]
            if stem.startswith(_EPOCH) and stem[len(_EPOCH) :].isdigit():
                found.append(int(stem[len(_EPOCH) :]))
        return sorted(found)

    def _read(self, epoch: int) -> dict[str, Any] | None:
        """The record of ``epoch``, None while it is unreadable (being written); raises
        FileNotFoundError when it is gone."""
        try:
            record = json.loads(self.fs.cat_file(self._path(epoch)))
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def _create(self, epoch: int, data: bytes) -> None:
        """Creates the record of ``epoch`` unless it exists (FileExistsError)."""
        path = self._path(epoch)
        try:
            if self.local:
                # written whole under a private name, then linked: link() fails when the
                # name exists, and a reader never sees the record half-written
                self.fs.makedirs(self.folder, exist_ok=True)
                tmp = f"{self.folder}/.{_EPOCH}{epoch:012d}.{self.token}"
                with open(tmp, "wb") as f:
                    f.write(data)
                try:
                    os.link(tmp, path)
                finally:
                    os.unlink(tmp)
            elif "memory" in self.fs.protocol:
                with _MEMORY_CREATE:
                    self.fs.pipe_file(path, data, mode="create")
            else:
                self.fs.pipe_file(path, data, mode="create")
        except OSError as error:
            # S3 answers 409 to a create racing another in flight: that other one may win
            if isinstance(error, FileExistsError) or error.errno == errno.EBUSY:
                raise FileExistsError(path) from None
            raise

    def _write(self, epoch: int, data: bytes) -> None:
        path = self._path(epoch)
        if self.local:
            # a reader never sees the record half-written
            tmp = f"{self.folder}/.{_EPOCH}{epoch:012d}.{self.token}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def _record(self, epoch: int, expires: float, released: bool = False) -> bytes:
        import socket

        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": self.token,
                "epoch": epoch,
                "since": self._since,
                "expires": expires,
                "until": _iso(expires),
                "released": released,
            }
        ).encode()

    # --- acquiring ---------------------------------------------------------------------------

    def _free(self) -> tuple[int, str | None]:
        """The highest epoch and, when the lease is held, its holder in words (None: free)."""
        epochs = self._epochs()
        if not epochs:
            return 0, None
        top = epochs[-1]
        try:
            record = self._read(top)
        except FileNotFoundError:
            return top, "a record removed while it was read"
        if record is None:
            # not a record of ours (written by hand, or damaged): held for a lease from when
            # it was written
            try:
                written = self.fs.modified(self._path(top)).timestamp()
            except (OSError, NotImplementedError):
                written = time.time()
            if written + self.lease_s + self.margin_s < time.time():
                return top, None
            return top, f"{self._path(top)}, not a lease record"
        if record.get("released") or record.get("expires", 0) + self.margin_s < time.time():
            return top, None
        holder = {k: record.get(k) for k in ("host", "pid", "since", "until")}
        return top, json.dumps(holder)

    def acquire(self, wait_s: float = 0.0, heartbeat: bool = True) -> ObjectLease:
        """Takes the lease, waiting up to ``wait_s`` seconds for its holder to release it or
        for it to expire; raises :class:`WriterBusyError` naming the holder after that. With
        ``heartbeat``, a thread renews it every ``renew_s`` seconds until :meth:`release`."""
        from datetime import datetime

        if self.epoch is not None:
            raise RuntimeError(f"{self.where} is already held by this lease")
        deadline = time.monotonic() + wait_s
        lost_race = 0
        while True:
            top, holder = self._free()
            if holder is None and top < lost_race:
                holder = f"{self._path(lost_race)} just created by another writer"
            if holder is None:
                epoch = top + 1
                start = time.monotonic()
                self._since = datetime.now(UTC).isoformat(timespec="seconds")
                try:
                    self._create(epoch, self._record(epoch, time.time() + self.lease_s))
                except FileExistsError:
                    lost_race = epoch  # another taker won this number: it is the holder now
                    continue
                if self._won(epoch):
                    self.epoch, self._deadline = epoch, start + self.lease_s - self.margin_s
                    break
                continue
            if time.monotonic() >= deadline:
                raise WriterBusyError(
                    f"{self.url} is being written by another process ({holder}); it is left "
                    "to that one"
                )
            time.sleep(min(0.2, self.renew_s))
        for old in self._epochs():
            if old < self.epoch:
                try:
                    self.fs.rm_file(self._path(old))
                except OSError:
                    pass  # a record left behind is ignored: only the highest counts
        if heartbeat:
            self._beat = threading.Thread(
                target=self._heartbeat, name=f"lease {self.where}", daemon=True
            )
            self._beat.start()
        return self

    def _won(self, epoch: int) -> bool:
        """After creating ``epoch``: whether it is the highest record and bears our token. A
        number freed by the cleanup of a later holder can be created again; then it is not."""
        try:
            ours = (self._read(epoch) or {}).get("token") == self.token
        except FileNotFoundError:
            ours = False
        if ours and self._epochs()[-1:] == [epoch]:
            return True
        if ours:
            try:
                self.fs.rm_file(self._path(epoch))
            except OSError:
                pass
        return False

    # --- holding -----------------------------------------------------------------------------

    def _lose(self, why: str) -> WriterLostError:
        if self.lost is None:
            self.lost = (
                f"{self.url}: this writer's lease was lost ({why}); it stopped before writing more"
            )
        return WriterLostError(self.lost)

    def _verify(self) -> None:
        """Raises :class:`WriterLostError` unless our record is the highest and ours, in time."""
        if self.epoch is None:
            raise RuntimeError(f"{self.where} is not held by this lease")
        if self.lost is not None:
            raise WriterLostError(self.lost)
        if time.monotonic() > self._deadline:
            raise self._lose(f"not renewed within {self.lease_s - self.margin_s:g} s")
        epochs = self._epochs()
        if not epochs or epochs[-1] != self.epoch:
            taken = f"taken as epoch {epochs[-1]}" if epochs else "its records were removed"
            raise self._lose(taken)
        try:
            record = self._read(self.epoch)
        except FileNotFoundError:
            raise self._lose(f"{self._path(self.epoch)} was removed") from None
        if record is None or record.get("token") != self.token:
            raise self._lose(f"{self._path(self.epoch)} was replaced by another writer's")

    def check(self) -> None:
        """Raises :class:`WriterLostError` when the lease is no longer ours (expired without a
        renewal, taken over, removed or replaced): a writer calls it before each write."""
        with self._io:
            self._verify()

    def renew(self) -> None:
        """Extends the lease by ``lease_s`` from now, if it is still ours; raises
        :class:`WriterLostError` otherwise, or when the renewal came too late."""
        with self._io:
            self._verify()
            start = time.monotonic()
            epoch = self.epoch
            assert epoch is not None
            self._write(epoch, self._record(epoch, time.time() + self.lease_s))
            self._verify()  # read back: ours, still the highest
            self._deadline = start + self.lease_s - self.margin_s

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                self.renew()
            except WriterLostError:
                return
            except Exception as error:  # a store that did not answer: tried again until late
                if time.monotonic() > self._deadline:
                    self._lose(f"renewal failed: {type(error).__name__}: {error}")
                    return

    def release(self) -> None:
        """Stops the heartbeat and marks the lease released, if it is still ours (a lease
        taken over by another writer is left to it)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        with self._io:
            if self.epoch is None:
                return
            try:
                self._verify()
                self._write(self.epoch, self._record(self.epoch, time.time(), released=True))
            except (WriterLostError, OSError):
                pass  # not ours any more, or the store did not answer: it expires
            finally:
                self.epoch = None


def _iso(seconds: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


@contextmanager
def writer_lock(
    path: str | os.PathLike,
    wait_s: float = 0.0,
    *,
    storage_options: Mapping[str, Any] | None = None,
    lease_s: float = 60.0,
    renew_s: float = 20.0,
) -> Iterator[Held]:
    """Holds the one-writer lock of the product at ``path`` for the block; waits up to
    ``wait_s`` seconds for a holder to finish, then raises :class:`WriterBusyError` naming it.
    The writer calls ``check()`` of what it yields before each write.

    A local path: an exclusive ``flock`` on the sibling file ``PATH.lock``, which names its
    holder (host, pid, since). The kernel releases it when its holder ends, killed or not, so
    a killed writer's lock is taken over by the next one; the file itself stays (it is ours,
    and removing it would let two writers lock two different files).

    An fsspec URL (``gs://``, ``s3://``, ``memory://``, ``file://``): an :class:`ObjectLease`
    in ``URL.lease/`` of ``lease_s`` seconds renewed every ``renew_s`` seconds; a killed
    writer's lease is taken over once it expired. ``check()`` raises :class:`WriterLostError`
    once it is lost."""
    import fcntl
    import socket
    from datetime import datetime

    where = os.fspath(path)
    if _is_url(where):
        lease = ObjectLease(where, storage_options, lease_s=lease_s, renew_s=renew_s)
        lease.acquire(wait_s)
        try:
            yield lease
        finally:
            lease.release()
        return
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
        yield Held(str(lock))
    finally:
        os.close(fd)  # releases the lock
