"""Files Appa writes and reads: checkpoints (safetensors + JSON manifest) and output archives
(Zarr). Names load lazily, so that a process that only writes archives (a Ray actor of a
dummy worker, a notebook) does not import torch."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "appa.io.checkpoints": [
        "FORMAT_VERSION",
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
    ],
    "appa.io.archive": [
        "Archive",
        "ArchiveError",
        "Unit",
        "check_layout",
        "config_hash",
        "create_archive",
        "template_from_spec",
    ],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'appa.io' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return __all__
