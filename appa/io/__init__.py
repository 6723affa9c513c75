"""Files Appa writes and reads: checkpoints (safetensors + JSON manifest)."""

from appa.io.checkpoints import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    export_checkpoint,
    flatten_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_module_state,
    read_metadata,
    save_checkpoint,
    unflatten_state,
)

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "export_checkpoint",
    "flatten_state",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_module_state",
    "read_metadata",
    "save_checkpoint",
    "unflatten_state",
]
