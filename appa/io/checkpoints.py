"""Checkpoints: tensors in safetensors files plus one JSON manifest, never pickle.

A checkpoint is a folder ``<root>/step-<NNNNNNNNN>/`` holding

- ``<group>.safetensors`` for each tensor group (``model``, ``ema``, ``optimizer``, ``rng``...;
  an autoencoder's ``valid``: ``cells``, uint8 ``(C, H, W)``, 1 where its data hold values);
- ``checkpoint.json``: format version, step, the JSON-able metadata (config, state spec,
  normalisation statistics, data position...), the versions of appa, torch and Python, the
  non-tensor structure of the optimiser state, the size and SHA-256 of every tensor file, and
  ``network``: the SHA-256 of the metadata keys that describe the network (its card), so that a
  description edited after the weights were written is refused wherever it is read.

Writing is atomic: on a local disk the folder is written under a temporary name and renamed;
on object stores (``gs://``, ``s3://``, ...), where renames are copies, the manifest is written
last and serves as the commit marker. Either way a crash mid-write leaves the previous
checkpoint the latest valid one. Only the newest ``keep`` checkpoints are kept.

Paths are local paths or fsspec URLs (``memory://`` in tests).
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

import appa

__all__ = [
    "FORMAT_VERSION",
    "VALID_GROUP",
    "Checkpoint",
    "CheckpointError",
    "CheckpointHeader",
    "check_tensor_shapes",
    "export_checkpoint",
    "flatten_state",
    "inspect_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_module_state",
    "network_digest",
    "read_metadata",
    "save_checkpoint",
    "unflatten_state",
]

FORMAT_VERSION = 1
MANIFEST = "checkpoint.json"
VALID_GROUP = "valid"
_STEP_DIR = re.compile(r"^step-(\d{9})$")
_TENSOR = "__tensor__"
_ITEMS = "__items__"
_TUPLE = "__tuple__"
# bytes read at a time when hashing a tensor file (the driver checks a prior without loading it)
_CHUNK = 1 << 22


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match what loads it."""


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: The checkpoint folder.
        step: Optimisation steps done when it was written.
        tensors: Tensor groups by name (``model``, ``ema``, ...), each a flat name -> tensor map.
        metadata: The JSON metadata given to :func:`save_checkpoint`.
        states: Nested states (e.g. the optimiser's) rebuilt with their tensors.
        versions: Versions of appa, torch, Python and safetensors that wrote it.
        files: The manifest's entry of each tensor file (``bytes``, ``sha256``) by file name.
    """

    path: str
    step: int
    tensors: dict[str, dict[str, Tensor]]
    metadata: dict[str, Any]
    states: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class CheckpointHeader:
    """What :func:`inspect_checkpoint` learns of a checkpoint without loading its tensors.

    Attributes:
        path: The checkpoint folder.
        step: Optimisation steps done when it was written.
        metadata: The JSON metadata.
        files: The manifest's entry of each tensor file (``bytes``, ``sha256``) by file name.
        shapes: Shape of each tensor by group (``model``, ``ema``...) and name, from the
            safetensors headers.
    """

    path: str
    step: int
    metadata: dict[str, Any]
    files: dict[str, dict[str, Any]]
    shapes: dict[str, dict[str, tuple[int, ...]]]


def _fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(str(path))
    return fs, root.rstrip("/")


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def flatten_state(state: Any, prefix: str = "") -> tuple[Any, dict[str, Tensor]]:
    """Splits a nested state (dicts, lists, tuples, tensors, JSON scalars) into a JSON-able
    skeleton and a flat map of its tensors.

    Tensors are replaced by ``{"__tensor__": name}``; dicts whose keys are not all strings
    (the optimiser's integer parameter ids) become ``{"__items__": [[key, value], ...]}`` and
    tuples ``{"__tuple__": [...]}``, so :func:`unflatten_state` rebuilds the exact structure.
    """
    tensors: dict[str, Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, Tensor):
            tensors[path] = node
            return {_TENSOR: path}
        if isinstance(node, Mapping):
            if all(isinstance(k, str) for k in node):
                if any(k in (_TENSOR, _ITEMS, _TUPLE) for k in node):
                    raise ValueError(f"state key at {path!r} collides with a reserved marker")
                return {k: walk(v, f"{path}/{k}" if path else k) for k, v in node.items()}
            items = []
            for k, v in node.items():
                if not isinstance(k, str | int | float | bool) and k is not None:
                    raise TypeError(f"state key {k!r} at {path!r} is not JSON-able")
                items.append([k, walk(v, f"{path}/{k}" if path else str(k))])
            return {_ITEMS: items}
        if isinstance(node, tuple):
            return {_TUPLE: [walk(v, f"{path}/{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, str | bool | int | float):
            return node
        raise TypeError(f"cannot store {type(node).__name__} at {path!r} in a checkpoint")

    return walk(state, prefix), tensors


def unflatten_state(skeleton: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR}:
            name = skeleton[_TENSOR]
            if name not in tensors:
                raise KeyError(name)
            return tensors[name]
        if set(skeleton) == {_ITEMS}:
            return {k: unflatten_state(v, tensors) for k, v in skeleton[_ITEMS]}
        if set(skeleton) == {_TUPLE}:
            return tuple(unflatten_state(v, tensors) for v in skeleton[_TUPLE])
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def _prepare(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors, with storage shared between entries broken (safetensors
    refuses shared storage)."""
    out: dict[str, Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"tensor group entry {name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach()
        if hasattr(t, "full_tensor"):  # DTensor: gather the whole tensor
            t = t.full_tensor()
        t = t.cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() and key in seen:
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        out[name] = t
    return out


def _versions() -> dict[str, str]:
    import safetensors

    return {
        "appa": appa.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "safetensors": safetensors.__version__,
    }


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """``(step, path)`` of the committed checkpoints under ``root`` (with a manifest), by step."""
    fs, base = _fs(root)
    if not fs.exists(base):
        return []
    found = []
    for entry in fs.ls(base, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        match = _STEP_DIR.match(name)
        if match and fs.exists(f"{base}/{name}/{MANIFEST}"):
            found.append((int(match.group(1)), _url(fs, f"{base}/{name}")))
    return sorted(found)


def latest_checkpoint(root: str) -> str | None:
    """The path of the newest committed checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def network_digest(metadata: Mapping[str, Any], keys: Sequence[str]) -> str:
    """SHA-256 of the metadata entries ``keys`` (a missing one counts as null), as canonical
    JSON (sorted keys, no spaces): what the manifest's ``network`` records."""
    part = {key: metadata.get(key) for key in keys}
    text = json.dumps(part, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def save_checkpoint(
    root: str,
    step: int,
    tensors: Mapping[str, Mapping[str, Tensor]],
    metadata: Mapping[str, Any] | None = None,
    states: Mapping[str, Any] | None = None,
    keep: int | None = 3,
    network: Sequence[str] | None = None,
) -> str:
    """Writes ``<root>/step-<step>/`` atomically and prunes older checkpoints.

    Arguments:
        root: Folder (local path or fsspec URL) holding the checkpoints of one run.
        step: Optimisation steps done (non-negative).
        tensors: Tensor groups, e.g. ``{"model": model.state_dict(), "ema": ...}``; group
            names are file names (letters, digits, ``_``, ``-``).
        metadata: JSON-able document (config, state spec, statistics, data position...).
        states: Nested states mixing tensors and JSON values (e.g. ``{"optimizer":
            optimizer.state_dict()}``); their tensors go to ``state-<name>.safetensors``.
        keep: Keep the newest ``keep`` checkpoints (None: all).
        network: The top-level metadata keys that describe the network (how to build it and
            use its weights), digested into the manifest and checked on every read (None:
            ``card`` when the metadata has one, else nothing).

    Returns:
        The checkpoint's path (URL for remote stores).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 or None, got {keep}")
    groups: dict[str, dict[str, Tensor]] = {}
    for name, group in tensors.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or name.startswith("state-"):
            raise ValueError(f"bad tensor group name {name!r}")
        groups[name] = _prepare(group)
    skeletons: dict[str, Any] = {}
    for name, state in (states or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"bad state name {name!r}")
        skeleton, flat = flatten_state(state)
        skeletons[name] = skeleton
        groups[f"state-{name}"] = _prepare(flat)
    blobs = {f"{name}.safetensors": st_save(group) for name, group in groups.items()}
    return _commit(root, step, blobs, metadata, skeletons, keep, network)


def _commit(
    root: str,
    step: int,
    blobs: Mapping[str, bytes],
    metadata: Mapping[str, Any] | None,
    skeletons: Mapping[str, Any],
    keep: int | None,
    network: Sequence[str] | None,
) -> str:
    """Writes the serialised tensor files ``blobs`` and their manifest as ``step-<step>/``."""
    fs, base = _fs(root)
    try:
        meta_json = json.loads(json.dumps(dict(metadata or {})))
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint metadata is not JSON-able: {error}") from None
    if network is None:
        network = ["card"] if "card" in meta_json else []
    manifest = {
        "format": "appa-checkpoint",
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "versions": _versions(),
        "files": {
            fname: {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
            for fname, blob in blobs.items()
        },
        "states": dict(skeletons),
        "metadata": meta_json,
    }
    if network:
        keys = [str(k) for k in network]
        manifest["network"] = {"keys": keys, "sha256": network_digest(meta_json, keys)}
    text = json.dumps(manifest, indent=1)
    final = f"{base}/step-{step:09d}"
    fs.makedirs(base, exist_ok=True)
    if _is_local(fs):
        tmp = f"{base}/.tmp-step-{step:09d}-{uuid.uuid4().hex[:8]}"
        fs.makedirs(tmp, exist_ok=True)
        for fname, blob in blobs.items():
            fs.pipe_file(f"{tmp}/{fname}", blob)
        fs.pipe_file(f"{tmp}/{MANIFEST}", text.encode())
        _fsync_dir(tmp)
        if fs.exists(final):  # re-saving a step (after a resume): swap it out
            trash = f"{base}/.old-step-{step:09d}-{uuid.uuid4().hex[:8]}"
            fs.mv(final, trash, recursive=True)
            fs.mv(tmp, final, recursive=True)
            fs.rm(trash, recursive=True)
        else:
            fs.mv(tmp, final, recursive=True)
    else:
        if fs.exists(f"{final}/{MANIFEST}"):
            fs.rm(f"{final}/{MANIFEST}")  # uncommit before overwriting
        for fname, blob in blobs.items():
            fs.pipe_file(f"{final}/{fname}", blob)
        fs.pipe_file(f"{final}/{MANIFEST}", text.encode())  # the commit marker, last
    _prune(fs, base, keep)
    return _url(fs, final)


def _fsync_dir(path: str) -> None:
    import os

    for name in os.listdir(path):
        with open(os.path.join(path, name), "rb") as f:
            os.fsync(f.fileno())


def _prune(fs: fsspec.AbstractFileSystem, base: str, keep: int | None) -> None:
    for entry in fs.ls(base, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        # leftovers of crashed writes are never valid checkpoints
        if name.startswith((".tmp-step-", ".old-step-")):
            fs.rm(f"{base}/{name}", recursive=True)
    if keep is None:
        return
    found = list_checkpoints(_url(fs, base))
    for _, path in found[:-keep]:
        fs.rm(fsspec.core.url_to_fs(path)[1], recursive=True)


def _manifest(path: str) -> tuple[fsspec.AbstractFileSystem, str, dict[str, Any]]:
    fs, base = _fs(path)
    if not fs.exists(f"{base}/{MANIFEST}"):
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"no checkpoint at {path} (no {MANIFEST}, no step-* folders)")
        fs, base = _fs(latest)
    mpath = f"{_url(fs, base)}/{MANIFEST}"
    try:
        manifest = json.loads(fs.cat_file(f"{base}/{MANIFEST}"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{mpath}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "appa-checkpoint":
        raise CheckpointError(f"{mpath}: not an appa checkpoint manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{mpath}: format version {manifest.get('format_version')!r}, this appa reads "
            f"{FORMAT_VERSION}"
        )
    for key in ("step", "files", "states", "metadata"):
        if key not in manifest:
            raise CheckpointError(f"{mpath}: missing key {key!r}")
    for fname, info in manifest["files"].items():
        if not (
            isinstance(info, dict)
            and isinstance(info.get("bytes"), int)
            and isinstance(info.get("sha256"), str)
        ):
            raise CheckpointError(f"{mpath}: the entry of {fname} lacks its bytes or sha256")
    _check_network(manifest, mpath)
    return fs, base, manifest


def _check_network(manifest: dict[str, Any], mpath: str) -> None:
    """Refuses a manifest whose network description (``network.keys`` of its metadata) is not
    the one its weights were written with. Manifests without the record (written before it
    existed) pass; their weights' shapes are still checked where the network is built."""
    record = manifest.get("network")
    if record is None:
        return
    keys, recorded = (
        (record.get("keys"), record.get("sha256")) if isinstance(record, dict) else ((), None)
    )
    if not keys or not isinstance(recorded, str):
        raise CheckpointError(f"{mpath}: malformed network record {record!r}")
    found = network_digest(manifest["metadata"], keys)
    if found != recorded:
        raise CheckpointError(
            f"{mpath}: its card's network description ({', '.join(keys)}) was edited after the "
            f"weights were written (SHA-256 {found[:16]}..., recorded {recorded[:16]}...): "
            "restore it, or train or export the checkpoint again"
        )


def read_metadata(path: str) -> dict[str, Any]:
    """The metadata of a checkpoint (or of the newest under a run folder), reading only the
    manifest (whose network description must be the one the weights were written with)."""
    _, _, manifest = _manifest(path)
    return dict(manifest["metadata"])


def _read_files(
    fs: fsspec.AbstractFileSystem, base: str, manifest: dict[str, Any], verify: bool
) -> dict[str, bytes]:
    """The bytes of every tensor file of a manifest, checked against it when ``verify``."""
    where = _url(fs, base)
    blobs = {}
    for fname, info in manifest["files"].items():
        fpath = f"{where}/{fname}"
        if not fs.exists(f"{base}/{fname}"):
            raise CheckpointError(f"{fpath}: listed in the manifest but missing")
        blob = fs.cat_file(f"{base}/{fname}")
        if verify:
            if len(blob) != info["bytes"]:
                raise CheckpointError(
                    f"{fpath}: {len(blob)} bytes, the manifest says {info['bytes']} (truncated?)"
                )
            if hashlib.sha256(blob).hexdigest() != info["sha256"]:
                raise CheckpointError(f"{fpath}: SHA-256 differs from the manifest (corrupt)")
        blobs[fname] = blob
    return blobs


def load_checkpoint(path: str, verify: bool = True) -> Checkpoint:
    """Loads a checkpoint folder (or the latest checkpoint under a run folder).

    Arguments:
        path: A ``step-*`` folder, or a run folder holding them (the newest is taken).
        verify: Check each file's size and SHA-256 against the manifest.

    Raises:
        CheckpointError: naming the file and what is wrong with it (or a network description
            edited after the weights were written).
    """
    fs, base, manifest = _manifest(path)
    where = _url(fs, base)

    groups: dict[str, dict[str, Tensor]] = {}
    for fname, blob in _read_files(fs, base, manifest, verify).items():
        try:
            groups[fname.removesuffix(".safetensors")] = st_load(blob)
        except (SafetensorError, ValueError, RuntimeError) as error:
            raise CheckpointError(
                f"{where}/{fname}: not a readable safetensors file ({error})"
            ) from None

    states = {}
    for name, skeleton in manifest["states"].items():
        flat = groups.pop(f"state-{name}", None)
        if flat is None:
            raise CheckpointError(f"{where}: state {name!r} has no state-{name}.safetensors")
        try:
            states[name] = unflatten_state(skeleton, flat)
        except KeyError as error:
            raise CheckpointError(
                f"{where}/state-{name}.safetensors: tensor {error} is missing"
            ) from None
    return Checkpoint(
        path=where,
        step=int(manifest["step"]),
        tensors=groups,
        metadata=manifest["metadata"],
        states=states,
        versions=dict(manifest.get("versions", {})),
        files={k: dict(v) for k, v in manifest["files"].items()},
    )


def _header_shapes(text: bytes, data_bytes: int, fpath: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a safetensors header, checking that its tensors lie in (and fill) the
    ``data_bytes`` that follow it."""
    try:
        header = json.loads(text)
        shapes, end = {}, 0
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            first, last = (int(v) for v in entry["data_offsets"])
            if not 0 <= first <= last <= data_bytes:
                raise ValueError(f"tensor {name} lies outside the file")
            shapes[name] = tuple(int(v) for v in entry["shape"])
            end = max(end, last)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{fpath}: not a readable safetensors file ({error})") from None
    if end != data_bytes:
        raise CheckpointError(
            f"{fpath}: not a readable safetensors file (its tensors end at byte {end} of "
            f"{data_bytes})"
        )
    return shapes


def inspect_checkpoint(path: str, verify: bool = True) -> CheckpointHeader:
    """Checks a checkpoint without loading its tensors: the manifest parses (with the network
    description the weights were written with), every file it lists is there with its size
    and, when ``verify``, its SHA-256 (each file read once, in 4 MiB chunks), and every file's
    safetensors header is readable and covers the file. What a job's driver checks before its
    workers load the weights.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    fs, base, manifest = _manifest(path)
    where = _url(fs, base)
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for fname, info in manifest["files"].items():
        fpath, local = f"{where}/{fname}", f"{base}/{fname}"
        if not fs.exists(local):
            raise CheckpointError(f"{fpath}: listed in the manifest but missing")
        size = fs.size(local)
        if size != info["bytes"]:
            raise CheckpointError(
                f"{fpath}: {size} bytes, the manifest says {info['bytes']} (truncated?)"
            )
        with fs.open(local, "rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= length <= size - 8:
                raise CheckpointError(
                    f"{fpath}: not a readable safetensors file (header of {length} bytes)"
                )
            text = handle.read(length)
            digest = hashlib.sha256(head + text)
            while verify and (chunk := handle.read(_CHUNK)):
                digest.update(chunk)
        if verify and digest.hexdigest() != info["sha256"]:
            raise CheckpointError(f"{fpath}: SHA-256 differs from the manifest (corrupt)")
        shapes[fname.removesuffix(".safetensors")] = _header_shapes(text, size - 8 - length, fpath)
    return CheckpointHeader(
        path=where,
        step=int(manifest["step"]),
        metadata=manifest["metadata"],
        files={k: dict(v) for k, v in manifest["files"].items()},
        shapes=shapes,
    )


def check_tensor_shapes(
    expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]], source: str
) -> None:
    """Compares the parameter names and shapes of a network built from a card (``expected``,
    in the network's order) with those of its weights (``found``: e.g.
    :attr:`CheckpointHeader.shapes`); raises :class:`CheckpointError` naming ``source`` and the
    first parameter that differs."""
    differences = []
    for name, shape in expected.items():
        if name not in found:
            differences.append(f"{name} {tuple(shape)} of the network is not in the weights")
        elif tuple(found[name]) != tuple(shape):
            differences.append(
                f"{name} is {tuple(found[name])} in the weights, {tuple(shape)} in the network"
            )
    differences += [
        f"the weights hold {name} {tuple(shape)}, the network has no such parameter"
        for name, shape in found.items()
        if name not in expected
    ]
    if differences:
        more = f" (and {len(differences) - 1} more differences)" if len(differences) > 1 else ""
        raise CheckpointError(
            f"{source} does not match the network its card describes: {differences[0]}{more}"
        )


def export_checkpoint(
    source: str,
    destination: str,
    groups: list[str] | None = None,
    add: Mapping[str, Mapping[str, Tensor]] | None = None,
) -> str:
    """Copies the weights of a checkpoint, without optimiser or RNG state, for distribution.

    The kept tensor files are copied byte for byte, so their SHA-256 (in the manifest's
    ``files``, and in ``exported_from``) stays the source's: what a denoiser's record of the
    autoencoder it was trained with names.

    Arguments:
        source: A checkpoint folder or a run's checkpoints folder (the newest is taken).
        destination: Folder receiving ``step-<N>/`` (its other checkpoints are removed).
        groups: Weight groups to keep (default: ``model`` and ``ema`` where present). The
            ``valid`` group (an autoencoder's valid cells) is kept whenever present.
        add: Tensor groups to add or replace (e.g. ``{"valid": {"cells": ...}}`` for a
            checkpoint written before autoencoders carried it); never a kept weights group.

    Returns:
        The exported checkpoint's path. Its metadata is the source's plus ``exported_from``
        (path, step and the SHA-256 of each kept file; an exported source's own, which names
        the run the weights came from) and, when one weights group is kept, ``weights``
        naming it: the weights to use (:class:`appa.io.cards.CheckpointCard`).
    """
    fs, base, manifest = _manifest(source)
    where = _url(fs, base)
    present = [f.removesuffix(".safetensors") for f in manifest["files"]]
    tensor_groups = [g for g in present if not g.startswith("state-")]
    add = dict(add or {})
    clash = [g for g in add if g in ("model", "ema") or g.startswith("state-")]
    if clash:
        raise CheckpointError(f"export adds tensor groups {clash}: weights are only copied")
    wanted = groups if groups is not None else [g for g in ("model", "ema") if g in present]
    if VALID_GROUP in present and VALID_GROUP not in wanted:
        wanted = [*wanted, VALID_GROUP]
    wanted = [g for g in wanted if g not in add]
    missing = [g for g in wanted if g not in tensor_groups]
    if missing or not wanted:
        raise CheckpointError(
            f"{where}: no tensor group {missing or wanted}; it has {sorted(tensor_groups)}"
        )
    kept = {f"{g}.safetensors": manifest["files"][f"{g}.safetensors"] for g in wanted}
    blobs = _read_files(fs, base, {**manifest, "files": kept}, verify=True)
    for fname, blob in blobs.items():
        try:
            st_load(blob)
        except (SafetensorError, ValueError, RuntimeError) as error:
            raise CheckpointError(
                f"{where}/{fname}: not a readable safetensors file ({error})"
            ) from None
    for name, group in add.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"bad tensor group name {name!r}")
        blobs[f"{name}.safetensors"] = st_save(_prepare(group))
    step = int(manifest["step"])
    origin = {
        "path": where,
        "step": step,
        "sha256": {g: manifest["files"][f"{g}.safetensors"]["sha256"] for g in wanted},
    }
    # a copy of a copy still holds the weights of the first source's run: name that one
    metadata = dict(manifest["metadata"])
    metadata.setdefault("exported_from", origin)
    weights = [g for g in wanted if g != VALID_GROUP]
    if len(weights) == 1:
        metadata["weights"] = weights[0]
    record = manifest.get("network")
    network = record["keys"] if isinstance(record, dict) else None
    path = _commit(destination, step, blobs, metadata, {}, None, network)
    for other_step, other in list_checkpoints(destination):
        if other_step != step:
            other_fs, local = fsspec.core.url_to_fs(other)
            other_fs.rm(local, recursive=True)
    return path


def load_module_state(module: nn.Module, state: Mapping[str, Tensor], source: str = "") -> None:
    """Loads ``state`` into ``module`` strictly, raising :class:`CheckpointError` that lists
    missing and unexpected keys and shape mismatches (``source`` names the file)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"{source or 'checkpoint'} does not match the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing[:8]}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected[:8]}")
        lines.extend(f"  shape {s}" for s in shapes[:8])
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(state, strict=True)
