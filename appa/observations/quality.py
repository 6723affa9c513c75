"""Quality control of observations: the checks an operational centre makes before it assimilates
a report, as flags that keep every rejected value and its reason, never silent drops.

Each rule looks at the rows still kept (``reason == ""``) of a decoded-reports frame
(:mod:`appa.observations.ingest.reports`) and returns which of them it rejects; :func:`flag`
writes the reason. :func:`quality_control` applies them in this order:

1. ``out_of_range``: a value outside the physically possible range of its variable and level
   (:func:`appa.observations.screening.physical_bounds`), by more than three of its error
   standard deviations when it has one;
2. ``blacklisted``: a station (and variable) on the blacklist (shell patterns);
3. ``duplicate``: several values of one station, variable and level at one state time (and,
   for platforms that move or see many places, ``ship``, ``aircraft``, ``satellite``, at one
   position): the one observed closest to the state time is kept, and of equally close ones
   the last received (a corrected report follows the one it corrects);
4. ``station_moved``: a fixed station (``synop``, ``station``) reporting further than
   ``station_move_km`` from its median position;
5. ``impossible_motion``: a moving platform (``ship``, ``aircraft``) whose position implies a
   speed above its limit both from the report before and to the report after (an isolated
   wrong position; at the ends of a track, the one segment);
6. ``spike``: a value that jumps away from both neighbours of its series (one station,
   variable and level, reports at most ``spike_max_gap`` apart) by more than the variable's
   limit per hour, in opposite directions (up then down, or down then up);
7. ``background``: a value departing from a reference (a climatology, or the prior's own
   states) by more than ``k * sqrt(background_std^2 + error_std^2)``: the same test as the
   gross check a job makes against the prior's climatology (:func:`departure_exceeds`).

Rows rejected by a reader (``source_flag``, ``no_time``, ``no_position``, ``no_level``,
``wind_direction``, ``station_not_listed``, ``ambiguous_local_time``) or for their time
(``off_time``) keep the reason they came with.
Everything here is NumPy and pandas; no files, no networks.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from appa.observations.screening import physical_bounds

__all__ = [
    "REASONS",
    "QualityRules",
    "departure_exceeds",
    "flag",
    "great_circle_km",
    "outside_bounds",
    "quality_control",
    "reject_background",
    "reject_blacklisted",
    "reject_duplicates",
    "reject_impossible_motion",
    "reject_out_of_range",
    "reject_spikes",
    "reject_station_moved",
]

# every reason a value may be rejected for, readers' and quality control's, in a stable order
REASONS: dict[str, str] = {
    "source_flag": "flagged bad by its source",
    "no_time": "no valid time",
    "no_position": "no valid position",
    "no_level": "no valid pressure level",
    "wind_direction": "wind direction outside 0-360 degrees",
    "station_not_listed": "station not in the station list",
    "ambiguous_local_time": "local time repeated or skipped by daylight saving",
    "off_time": "too far from a state time",
    "out_of_range": "physically impossible value",
    "blacklisted": "blacklisted station",
    "duplicate": "duplicate report",
    "station_moved": "fixed station away from its position",
    "impossible_motion": "impossible platform motion",
    "spike": "spike in the station's series",
    "background": "far from the background",
}

FIXED_PLATFORMS = ("synop", "station")
# platforms whose reports of one station come from one site (a sounding drifts from it)
SITED_PLATFORMS = ("synop", "station", "temp")
# a speed no ship and no subsonic aircraft reaches (m/s): 40 m/s is 78 knots
DEFAULT_MAX_SPEED = {"ship": 40.0, "aircraft": 350.0}
# the largest change per hour of a real series (SI units): beyond these both ways is a spike
DEFAULT_SPIKE_LIMITS = {
    "2m_temperature": 10.0,
    "2m_dewpoint_temperature": 10.0,
    "mean_sea_level_pressure": 600.0,
    "surface_pressure": 600.0,
    "10m_u_component_of_wind": 20.0,
    "10m_v_component_of_wind": 20.0,
}
EARTH_RADIUS_KM = 6371.0


@dataclass(frozen=True)
class QualityRules:
    """The settings of :func:`quality_control` (see the module docstring).

    Attributes:
        blacklist: ``(station_pattern, variable_pattern)`` pairs of shell patterns
            (``fnmatch``, e.g. ``("0-20000-0-103*", "*")``).
        station_move_km: How far a fixed station may report from its median position (km).
        max_speed: Highest plausible speed per moving platform (m/s).
        spike_limits: Largest change per hour per variable (SI units); variables not listed
            are not checked.
        spike_max_gap: Reports further apart than this (hours) are not neighbours.
        background_k: The background check's threshold in standard deviations.
    """

    blacklist: tuple[tuple[str, str], ...] = ()
    station_move_km: float = 10.0
    max_speed: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MAX_SPEED))
    spike_limits: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SPIKE_LIMITS))
    spike_max_gap: float = 6.0
    background_k: float = 5.0


def flag(frame: pd.DataFrame, reject: np.ndarray, reason: str) -> pd.DataFrame:
    """``frame`` with ``reason`` written on the rows of the boolean mask ``reject`` ``(n,)``
    that were still kept (an earlier reason is never overwritten)."""
    if reason not in REASONS:
        raise ValueError(f"unknown reason {reason!r}; known: {list(REASONS)}")
    out = frame.copy()
    kept = out["reason"].to_numpy() == ""
    out.loc[np.asarray(reject, dtype=bool) & kept, "reason"] = reason
    return out


def _kept(frame: pd.DataFrame) -> np.ndarray:
    return frame["reason"].to_numpy() == ""


# how many of its error standard deviations an observation may lie beyond a physical bound:
# a noisy observation of a value at the bound (anoxic water's zero oxygen) is a good one
BOUND_TOLERANCE_STD = 3.0


def outside_bounds(
    variable: np.ndarray,
    level: np.ndarray,
    value: np.ndarray,
    error_std: np.ndarray | None = None,
) -> np.ndarray:
    """Whether each value ``(n,)`` lies outside the physical bounds of its variable and level
    (hPa or m of depth, NaN for surface), widened by :data:`BOUND_TOLERANCE_STD` times its
    ``error_std`` when given; values of variables without bounds are inside."""
    variable = np.asarray(variable).astype(str)
    level = np.asarray(level, dtype=np.float64)
    value = np.asarray(value, dtype=np.float64)
    margin = np.zeros(value.shape)
    if error_std is not None:
        margin = BOUND_TOLERANCE_STD * np.nan_to_num(np.asarray(error_std, dtype=np.float64))
    out = ~np.isfinite(value)
    keys = pd.DataFrame({"v": variable, "l": level}).drop_duplicates()
    for v, lev in keys.itertuples(index=False):
        bounds = physical_bounds(v, None if np.isnan(lev) else float(lev))
        if bounds is None:
            continue
        at = (variable == v) & ((level == lev) | (np.isnan(level) & np.isnan(lev)))
        low, high = bounds[0] - margin[at], bounds[1] + margin[at]
        out[at] |= (value[at] < low) | (value[at] > high)
    return out


def departure_exceeds(
    value: np.ndarray,
    background: np.ndarray,
    background_std: np.ndarray,
    error_std: np.ndarray,
    k: float,
) -> np.ndarray:
    """Whether ``|value - background| > k * sqrt(background_std^2 + error_std^2)`` ``(n,)``:
    the observation-minus-background test. NaN backgrounds (no reference there) pass."""
    spread = np.sqrt(np.asarray(background_std, dtype=np.float64) ** 2 + np.asarray(error_std) ** 2)
    departure = np.abs(np.asarray(value, dtype=np.float64) - np.asarray(background))
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(departure > k * spread, nan=False).astype(bool)


def reject_out_of_range(frame: pd.DataFrame) -> np.ndarray:
    """Kept rows whose value is physically impossible (:func:`outside_bounds`)."""
    bad = outside_bounds(frame["variable"], frame["level"], frame["value"], frame["error_std"])
    return bad & _kept(frame)


def reject_blacklisted(frame: pd.DataFrame, blacklist: Sequence[tuple[str, str]]) -> np.ndarray:
    """Kept rows whose station and variable match a ``(station, variable)`` pattern pair."""
    bad = np.zeros(len(frame), dtype=bool)
    if not blacklist:
        return bad
    stations = frame["station"].to_numpy().astype(str)
    variables = frame["variable"].to_numpy().astype(str)
    for station_pattern, variable_pattern in blacklist:
        for station in set(fnmatch.filter(np.unique(stations).tolist(), station_pattern)):
            at = stations == station
            matches = np.array([fnmatch.fnmatchcase(v, variable_pattern) for v in variables[at]])
            bad[np.flatnonzero(at)[matches]] = True
    return bad & _kept(frame)


def reject_duplicates(frame: pd.DataFrame, state_time: np.ndarray) -> np.ndarray:
    """Kept rows that duplicate another of the same station, variable, level and state time
    ``(n,)`` (datetime64), and position (to 0.001 degrees) unless the platform is a fixed
    one (:data:`SITED_PLATFORMS`): all but the one observed closest to the state time, of
    equally close ones the last in the frame's order."""
    kept = _kept(frame)
    rows = np.flatnonzero(kept)
    if rows.size == 0:
        return np.zeros(len(frame), dtype=bool)
    sited = np.isin(frame["platform"].to_numpy()[rows], SITED_PLATFORMS)
    sub = pd.DataFrame(
        {
            "station": frame["station"].to_numpy()[rows],
            "variable": frame["variable"].to_numpy()[rows],
            "level": np.nan_to_num(frame["level"].to_numpy()[rows], nan=-1.0),
            "state": np.asarray(state_time)[rows],
            "lat": np.where(sited, 0.0, np.round(frame["latitude"].to_numpy()[rows], 3)),
            "lon": np.where(sited, 0.0, np.round(frame["longitude"].to_numpy()[rows] % 360, 3)),
            "gap": np.abs(
                (frame["time"].to_numpy()[rows] - np.asarray(state_time)[rows]).astype(np.int64)
            ),
            "order": -np.arange(rows.size),  # later rows first among equal gaps
        }
    )
    sub = sub.sort_values(["gap", "order"], kind="stable")
    loser = sub.duplicated(["station", "variable", "level", "state", "lat", "lon"], keep="first")
    bad = np.zeros(len(frame), dtype=bool)
    bad[rows[sub.index.to_numpy()[loser.to_numpy()]]] = True
    return bad


def great_circle_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance (km) between points given in degrees (haversine)."""
    p1, p2 = np.deg2rad(lat1), np.deg2rad(lat2)
    dp, dl = p2 - p1, np.deg2rad(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def reject_station_moved(frame: pd.DataFrame, max_km: float) -> np.ndarray:
    """Kept rows of fixed stations (:data:`FIXED_PLATFORMS`) further than ``max_km`` from the
    station's median position (longitudes taken on the side of the dateline the station is)."""
    kept = _kept(frame) & np.isin(frame["platform"].to_numpy(), FIXED_PLATFORMS)
    bad = np.zeros(len(frame), dtype=bool)
    rows = np.flatnonzero(kept)
    if rows.size == 0:
        return bad
    sub = frame.iloc[rows]
    lon = np.mod(sub["longitude"].to_numpy(), 360.0)
    # median of longitudes near the dateline: unwrap around the station's first report
    first = sub.groupby("station")["longitude"].transform("first").to_numpy() % 360.0
    lon = first + (np.mod(lon - first + 180.0, 360.0) - 180.0)
    work = pd.DataFrame({"station": sub["station"].to_numpy(), "lat": sub["latitude"], "lon": lon})
    med = work.groupby("station")[["lat", "lon"]].transform("median")
    far = great_circle_km(work["lat"], work["lon"], med["lat"], med["lon"]) > max_km
    bad[rows[np.asarray(far)]] = True
    return bad


def reject_impossible_motion(frame: pd.DataFrame, max_speed: Mapping[str, float]) -> np.ndarray:
    """Kept rows of moving platforms whose report position is impossible: the speed from the
    previous report and to the next one both exceed the platform's ``max_speed`` (m/s); at the
    ends of a track the one segment decides. Reports at the same time and place are one fix."""
    bad = np.zeros(len(frame), dtype=bool)
    platforms = frame["platform"].to_numpy()
    for platform, limit in max_speed.items():
        rows = np.flatnonzero(_kept(frame) & (platforms == platform))
        if rows.size == 0:
            continue
        sub = frame.iloc[rows]
        fixes = sub[["station", "time", "latitude", "longitude"]].drop_duplicates()
        fixes = fixes.sort_values(["station", "time"], kind="stable").reset_index(drop=True)
        same = fixes["station"].to_numpy()
        t = fixes["time"].to_numpy().astype("datetime64[ns]").astype(np.int64) / 1e9
        dist = great_circle_km(
            fixes["latitude"].to_numpy()[:-1],
            fixes["longitude"].to_numpy()[:-1],
            fixes["latitude"].to_numpy()[1:],
            fixes["longitude"].to_numpy()[1:],
        )
        dt = np.diff(t)
        with np.errstate(divide="ignore", invalid="ignore"):
            speed = np.where(dt > 0, dist * 1e3 / dt, np.where(dist > 0, np.inf, 0.0))
        segment = (same[:-1] == same[1:]) & (speed > limit)
        linked = same[:-1] == same[1:]
        before = np.concatenate([[False], segment])
        after = np.concatenate([segment, [False]])
        has_before = np.concatenate([[False], linked])
        has_after = np.concatenate([linked, [False]])
        wrong = (before & after) | (before & ~has_after) | (after & ~has_before)
        if not wrong.any():
            continue
        key = ["station", "time", "latitude", "longitude"]
        marked = fixes.loc[wrong, key].assign(_wrong=True)
        joined = sub[key].merge(marked, on=key, how="left")["_wrong"].fillna(False).to_numpy()
        bad[rows[joined.astype(bool)]] = True
    return bad


def reject_spikes(
    frame: pd.DataFrame, limits: Mapping[str, float], max_gap_hours: float
) -> np.ndarray:
    """Kept rows that spike in their series (one station, variable and level, in time order):
    the jumps from the previous value and to the next both exceed ``limit * max(hours, 1)``
    and go in opposite directions; neighbours more than ``max_gap_hours`` apart are not
    compared."""
    bad = np.zeros(len(frame), dtype=bool)
    kept = _kept(frame) & np.isin(frame["variable"].to_numpy(), list(limits))
    rows = np.flatnonzero(kept)
    if rows.size < 3:
        return bad
    sub = pd.DataFrame(
        {
            "row": rows,
            "station": frame["station"].to_numpy()[rows],
            "variable": frame["variable"].to_numpy()[rows],
            "level": np.nan_to_num(frame["level"].to_numpy()[rows], nan=-1.0),
            "t": frame["time"].to_numpy()[rows].astype("datetime64[ns]").astype(np.int64) / 3.6e12,
            "value": frame["value"].to_numpy()[rows],
        }
    ).sort_values(["station", "variable", "level", "t"], kind="stable")
    series = sub[["station", "variable", "level"]].to_numpy()
    same = np.all(series[1:] == series[:-1], axis=1)
    dt = np.diff(sub["t"].to_numpy())
    dv = np.diff(sub["value"].to_numpy())
    limit = sub["variable"].map(dict(limits)).to_numpy(dtype=np.float64)[1:]
    jump = same & (dt <= max_gap_hours) & (np.abs(dv) > limit * np.maximum(dt, 1.0))
    spike = jump[:-1] & jump[1:] & (np.sign(dv[:-1]) != np.sign(dv[1:]))
    bad[sub["row"].to_numpy()[1:-1][spike]] = True
    return bad


def reject_background(
    frame: pd.DataFrame,
    background: np.ndarray,
    background_std: np.ndarray,
    k: float,
) -> np.ndarray:
    """Kept rows whose value departs from the background ``(n,)`` (the reference at each
    observation; NaN where there is none) by more than ``k`` standard deviations of the
    departure (:func:`departure_exceeds`; the observation's ``error_std`` must be filled)."""
    bad = departure_exceeds(
        frame["value"].to_numpy(), background, background_std, frame["error_std"].to_numpy(), k
    )
    return bad & _kept(frame)


def quality_control(
    frame: pd.DataFrame,
    rules: QualityRules,
    state_time: np.ndarray,
    background: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """``frame`` (decoded reports with ``error_std`` filled) with every rule of the module
    docstring applied in order: rejected rows keep their values and gain a ``reason``.

    Arguments:
        state_time: The state time each row belongs to ``(n,)`` (datetime64), for duplicates.
        background: ``(value, std)`` of the reference at each row ``(n,)``, or None to skip
            the background check.
    """
    out = flag(frame, reject_out_of_range(frame), "out_of_range")
    out = flag(out, reject_blacklisted(out, rules.blacklist), "blacklisted")
    out = flag(out, reject_duplicates(out, state_time), "duplicate")
    out = flag(out, reject_station_moved(out, rules.station_move_km), "station_moved")
    out = flag(out, reject_impossible_motion(out, rules.max_speed), "impossible_motion")
    out = flag(out, reject_spikes(out, rules.spike_limits, rules.spike_max_gap), "spike")
    if background is not None:
        value, std = background
        out = flag(out, reject_background(out, value, std, rules.background_k), "background")
    return out
