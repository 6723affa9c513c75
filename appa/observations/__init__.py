"""Observations: the table schema and store, simulators from gridded truth, and the
differentiable observation operator on gridded states."""

from appa.observations.operator import ObservationOperator, interpolation_weights
from appa.observations.schema import (
    FIELDS,
    ObservationError,
    concat_tables,
    make_table,
    read_observations,
    validate_table,
    write_observations,
)

__all__ = [
    "FIELDS",
    "ObservationError",
    "ObservationOperator",
    "concat_tables",
    "interpolation_weights",
    "make_table",
    "read_observations",
    "validate_table",
    "write_observations",
]
