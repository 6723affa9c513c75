"""From decoded reports to the rows of an observation store: state times, height correction of
2 m temperature, observation errors, quality control, and the per-platform account.

:func:`prepare_reports` is the one path every format takes after its reader, so a BUFR report,
a station table and a satellite superobservation are held to the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from appa.observations.errors import DEFAULT_ERRORS, ErrorEntry, fill_errors
from appa.observations.ingest.convert import (
    STANDARD_LAPSE_RATE,
    lapse_rate_correction,
    round_times,
    wrap_longitude,
)
from appa.observations.quality import REASONS, QualityRules, flag, quality_control
from appa.observations.schema import FIELDS, ObservationError, validate_table

__all__ = [
    "GridField",
    "IngestAccount",
    "background_at",
    "prepare_reports",
    "reports_to_table",
]


@dataclass(frozen=True)
class GridField:
    """A 2-D field ``(lat, lon)`` on a regular grid (latitude ascending, longitude regular in
    [0, 360)), e.g. the model's orography in metres."""

    values: np.ndarray
    latitude: np.ndarray
    longitude: np.ndarray

    def at(self, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
        """Bilinear values at points ``(n,)`` (degrees; longitudes periodic)."""
        from appa.observations.operator import interpolation_weights

        index, weights = interpolation_weights(
            np.asarray(latitude, dtype=np.float64),
            wrap_longitude(longitude),
            np.asarray(self.latitude, dtype=np.float64),
            np.asarray(self.longitude, dtype=np.float64),
        )
        return (np.asarray(self.values, dtype=np.float64).reshape(-1)[index] * weights).sum(-1)


def background_at(
    frame: pd.DataFrame, state_time: np.ndarray, mean: xr.Dataset, std: xr.Dataset
) -> tuple[np.ndarray, np.ndarray]:
    """The reference and its standard deviation at each row ``(n,)``: ``mean`` and ``std``
    hold the canonical variables with dims ``(time, [level,] latitude, longitude)`` at the
    state times (bilinear in space, the row's state time exactly). NaN where the reference
    lacks the variable, level or time."""
    n = len(frame)
    value, spread = np.full(n, np.nan), np.full(n, np.nan)
    variables = frame["variable"].to_numpy().astype(str)
    levels = frame["level"].to_numpy(dtype=np.float64)
    times = np.asarray(state_time).astype("datetime64[ns]")
    have = pd.DatetimeIndex(mean["time"].values)
    lat = mean["latitude"].values
    lon = mean["longitude"].values
    keys = pd.DataFrame({"v": variables, "l": levels, "t": times}).drop_duplicates()
    for v, lev, t in keys.itertuples(index=False):
        if v not in mean or v not in std or t not in have:
            continue
        m, s = mean[v].sel(time=t), std[v].sel(time=t)
        if "level" in m.dims:
            if np.isnan(lev) or float(lev) not in m["level"].values.astype(float):
                continue
            m, s = m.sel(level=lev), s.sel(level=lev)
        elif not np.isnan(lev):
            continue
        same_level = (levels == lev) | (np.isnan(levels) & np.isnan(lev))
        at = (variables == v) & (times == t) & same_level
        lat_at, lon_at = frame["latitude"].to_numpy()[at], frame["longitude"].to_numpy()[at]
        value[at] = GridField(m.values, lat, lon).at(lat_at, lon_at)
        spread[at] = GridField(s.values, lat, lon).at(lat_at, lon_at)
    return value, spread


@dataclass
class IngestAccount:
    """What an ingest read and did, per platform: reports read, kept, rejected by reason, plus
    rejections made before reports existed (a swath's bad pixels, by reason)."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, frame: pd.DataFrame) -> None:
        """Counts the rows of a prepared frame (its ``reason``)."""
        for (platform, reason), n in frame.groupby(["platform", "reason"]).size().items():
            row = self.counts.setdefault(str(platform), {})
            key = "kept" if reason == "" else str(reason)
            row[key] = row.get(key, 0) + int(n)

    def add_rejected_before(self, platform: str, rejected: Mapping[str, int]) -> None:
        """Counts values a reader rejected without making them reports (e.g. pixels)."""
        row = self.counts.setdefault(platform, {})
        for reason, n in rejected.items():
            key = f"{reason} (pixels)"
            row[key] = row.get(key, 0) + int(n)

    def table(self) -> pd.DataFrame:
        """One row per platform: ``read``, ``kept``, then a column per rejection reason."""
        reasons = [r for r in REASONS if any(r in c for c in self.counts.values())]
        pixel = sorted({k for c in self.counts.values() for k in c if k.endswith("(pixels)")})
        rows = []
        for platform in sorted(self.counts):
            c = self.counts[platform]
            read = sum(v for k, v in c.items() if not k.endswith("(pixels)"))
            rows.append(
                {
                    "platform": platform,
                    "read": read,
                    "kept": c.get("kept", 0),
                    **{r: c.get(r, 0) for r in reasons},
                    **{p: c.get(p, 0) for p in pixel},
                }
            )
        if not rows:
            return pd.DataFrame()
        table = pd.DataFrame(rows).set_index("platform")
        fixed = ["read", "kept"]
        return table[fixed + [c for c in table.columns if c not in fixed and table[c].any()]]


def prepare_reports(
    frame: pd.DataFrame,
    step: str | pd.Timedelta,
    window: str | pd.Timedelta,
    rules: QualityRules,
    orography: GridField | None = None,
    error_table: Mapping[str, Mapping[str, ErrorEntry]] = DEFAULT_ERRORS,
    representativeness: Mapping[str, float] | None = None,
    background: tuple[xr.Dataset, xr.Dataset] | None = None,
    lapse_rate: float = STANDARD_LAPSE_RATE,
) -> pd.DataFrame:
    """Decoded reports made ready for a store.

    In order: each row's state time (the nearest multiple of ``step``; further than
    ``window`` -> ``off_time``) and its offset; 2 m temperatures of stations with a known
    elevation brought to the ``orography`` (m) by ``lapse_rate`` (K/m; the correction is kept in
    ``height_correction``); errors from the report or ``error_table`` (plus
    ``representativeness`` in quadrature for points); quality control (:func:`quality_control`
    with ``rules``, the background check when ``background = (mean, std)`` at the state
    times).

    Returns:
        The frame with ``time`` replaced by the state time and the columns ``time_offset``
        (s), ``height_correction`` (K) and ``reason`` set, longitudes in [0, 360).
    """
    out = frame.copy()
    state, offset, inside = round_times(out["time"].to_numpy(), step, window)
    out = flag(out, ~inside, "off_time")
    out["longitude"] = wrap_longitude(out["longitude"].to_numpy())
    correction = np.zeros(len(out))
    if orography is not None:
        t2m = (out["variable"].to_numpy() == "2m_temperature") & np.isfinite(
            out["elevation"].to_numpy()
        )
        if t2m.any():
            model = orography.at(out["latitude"].to_numpy()[t2m], out["longitude"].to_numpy()[t2m])
            value = out["value"].to_numpy()[t2m]
            corrected = lapse_rate_correction(
                value, out["elevation"].to_numpy()[t2m], model, lapse_rate
            )
            correction[t2m] = corrected - value
            out.loc[t2m, "value"] = corrected
    out["height_correction"] = correction
    out = fill_errors(out, error_table, representativeness)
    reference = None
    if background is not None:
        reference = background_at(out, state, *background)
    out = quality_control(out, rules, state, reference)
    out["time"] = state
    out["time_offset"] = offset
    return out


def reports_to_table(frame: pd.DataFrame) -> xr.Dataset:
    """A prepared frame (:func:`prepare_reports`) as an observation table: the store's fields
    plus ``footprint``, ``station``, ``elevation``, ``time_offset``, ``height_correction`` and
    ``reason`` (validated: accepted rows must satisfy the schema)."""
    names = [*FIELDS, "footprint", "station", "elevation", "time_offset", "height_correction"]
    missing = [n for n in [*names, "reason"] if n not in frame.columns]
    if missing:
        raise ObservationError(f"prepared reports lack columns {missing}")
    data = {}
    for name in [*names, "reason"]:
        column = frame[name].to_numpy()
        if name in ("variable", "platform", "station", "reason"):
            column = column.astype(str)
        elif name == "time":
            column = column.astype("datetime64[ns]")
        else:
            column = column.astype(np.float64)
        data[name] = ("obs", column)
    table = xr.Dataset(data)
    validate_table(table)
    return table
