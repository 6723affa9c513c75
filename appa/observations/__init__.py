"""Observations: the table schema and store, simulators from gridded truth, and the
differentiable observation operator on gridded states, and the rules of their use that need no
prior (which state an observation belongs to, physical bounds, declared units).

Names load on first use, so reading a store (``appa.observations.schema``, e.g. in a notebook)
does not import torch, which only the operator needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ObservationOperator": "appa.observations.operator",
    "interpolation_weights": "appa.observations.operator",
    "FIELDS": "appa.observations.schema",
    "ObservationError": "appa.observations.schema",
    "concat_tables": "appa.observations.schema",
    "make_table": "appa.observations.schema",
    "read_observations": "appa.observations.schema",
    "validate_table": "appa.observations.schema",
    "write_observations": "appa.observations.schema",
    "assign_times": "appa.observations.screening",
    "check_units": "appa.observations.screening",
    "physical_bounds": "appa.observations.screening",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'appa.observations' has no attribute {name!r}")
