"""Observations: the table schema and store, simulators from gridded truth, and the
differentiable observation operator on gridded states, and the rules of their use that need no
prior (which state an observation belongs to, physical bounds, declared units)."""

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
from appa.observations.screening import assign_times, check_units, physical_bounds

__all__ = [
    "FIELDS",
    "ObservationError",
    "ObservationOperator",
    "assign_times",
    "check_units",
    "concat_tables",
    "interpolation_weights",
    "make_table",
    "physical_bounds",
    "read_observations",
    "validate_table",
    "write_observations",
]
