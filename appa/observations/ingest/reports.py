"""Decoded reports: what every reader of a real observation format returns.

A reports frame is a :class:`pandas.DataFrame`, one row per observed value, in canonical names
and SI units, before quality control:

========== =============== =============================================================
column      dtype           meaning
========== =============== =============================================================
station     str             station identifier: a WIGOS identifier (``0-20000-0-10384``)
                            where the report has one, else the traditional one (``10384``
                            from block and station numbers, a ship's call sign, an aircraft's
                            registration), or the satellite and instrument of a swath
platform    str             the kind of report: ``synop``, ``ship``, ``temp``, ``aircraft``,
                            ``station`` (a station table), ``satellite`` (a swath or grid)
time        datetime64[ns]  when the value was observed (UTC)
latitude    float64         degrees north
longitude   float64         degrees east, any range (wrapped to [0, 360) in the store)
elevation   float64         station height above mean sea level (m); NaN when unknown or
                            not a surface station
level       float64         pressure level (hPa); NaN for surface variables
variable    str             canonical (ERA5 / WeatherBench2) name, e.g. ``2m_temperature``
value       float64         value in the variable's SI units (:data:`CANONICAL_UNITS`)
error_std   float64         the report's own uncertainty (SI units), NaN when it has none
                            (the default error table fills it)
footprint   float64         side of the box the value averages over (degrees); 0 for points
reason      str             why the reader rejects the value (e.g. ``source_flag``), ``""``
                            when it does not; quality control adds its own reasons
========== =============== =============================================================

Readers convert with :mod:`appa.observations.ingest.convert` and end with
:func:`check_reports`, which normalises dtypes and refuses a frame that breaks this contract.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from appa.observations.schema import ObservationError
from appa.observations.screening import CANONICAL_UNITS

__all__ = ["REPORT_COLUMNS", "check_reports", "empty_reports"]

REPORT_COLUMNS: dict[str, str] = {
    "station": "str",
    "platform": "str",
    "time": "datetime64[ns]",
    "latitude": "float64",
    "longitude": "float64",
    "elevation": "float64",
    "level": "float64",
    "variable": "str",
    "value": "float64",
    "error_std": "float64",
    "footprint": "float64",
    "reason": "str",
}


def empty_reports() -> pd.DataFrame:
    """A reports frame with no rows and every column."""
    return check_reports(pd.DataFrame({name: [] for name in REPORT_COLUMNS}))


def check_reports(frame: pd.DataFrame, source: str = "reports") -> pd.DataFrame:
    """``frame`` with the columns of :data:`REPORT_COLUMNS` in order and their dtypes, or
    :class:`ObservationError` naming ``source`` and the problem: a missing column, a variable
    without canonical units, a time that is missing, coordinates out of range on a row the
    reader kept."""
    missing = [name for name in REPORT_COLUMNS if name not in frame.columns]
    if missing:
        raise ObservationError(f"{source}: reports lack columns {missing}")
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for name, dtype in REPORT_COLUMNS.items():
        column = frame[name].to_numpy()
        if dtype == "str":
            out[name] = np.asarray(column, dtype=object).astype(str)
        elif dtype.startswith("datetime64"):
            times = pd.to_datetime(column, utc=True) if len(column) else pd.DatetimeIndex([])
            out[name] = pd.DatetimeIndex(times).tz_localize(None).astype(dtype)
        else:
            try:
                out[name] = np.asarray(column, dtype=np.float64)
            except (TypeError, ValueError) as error:
                message = f"{source}: column {name} is not numeric ({error})"
                raise ObservationError(message) from None
    unknown = sorted(set(out["variable"].unique()) - set(CANONICAL_UNITS))
    if unknown:
        raise ObservationError(
            f"{source}: variables {unknown} have no canonical units; known: "
            f"{sorted(CANONICAL_UNITS)}"
        )
    kept = out["reason"].to_numpy() == ""
    checks = {
        "time is missing": out["time"].isna().to_numpy(),
        "latitude outside [-90, 90]": ~(np.abs(out["latitude"].to_numpy()) <= 90),
        "longitude is not finite": ~np.isfinite(out["longitude"].to_numpy()),
        "level is not a positive pressure (hPa)": ~(
            np.isnan(out["level"].to_numpy()) | (out["level"].to_numpy() > 0)
        ),
        "footprint is negative or NaN": ~(out["footprint"].to_numpy() >= 0),
    }
    for message, bad in checks.items():
        bad = bad & kept
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ObservationError(
                f"{source}: {message} on {int(bad.sum())} kept rows (first: row {row}, station "
                f"{out['station'].iloc[row]!r}, variable {out['variable'].iloc[row]!r}); a "
                "reader rejects such rows with a reason instead"
            )
    return out
