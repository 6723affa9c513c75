"""Scores of a sea's 3-D ensembles: errors by depth band and detection of shelf hypoxia.

**Depth bands** (per time and column, from the truth): the mixed layer (cell centres above
the truth's mixed-layer depth, :func:`appa.data.toy_sea.mixed_layer_depth`), the pycnocline
(from there to ``pycnocline_bottom_m``, 200 m by default) and the deep water (below). Over the
cells of a band where the truth is sea (not NaN: land and cells below the floor are left out),
weighted by cell area (``cos``-latitude cell areas, :func:`appa.metrics.wb2.latitude_weights`,
every level alike), pooled over the scored times:

- ``rmse`` = ``sqrt(sum w (xbar - y)^2 / sum w)`` of the ensemble mean ``xbar``;
- ``spread`` = ``sqrt(sum w s^2 / sum w)`` with ``s^2`` the unbiased ensemble variance;
- ``spread_skill`` = ``sqrt((M + 1) / M) spread / rmse`` (1 when calibrated; NaN for one
  member), as in :mod:`appa.metrics.wb2`;
- ``bias`` = ``sum w (xbar - y) / sum w``.

**Hypoxia** on the shelf (cells whose floor is shallower than ``SHELF_DEPTH_M``): the bottom
oxygen (value at the deepest sea level, :func:`appa.data.toy_sea.bottom_values`) of each
member gives the probability of hypoxia per cell and day, the fraction of members below
``HYPOXIA_THRESHOLD`` (with ``sigma`` > 0, each member is dressed with a Gaussian of that
standard deviation: ``p = mean_i Phi((63 - b_i) / sigma)``, which gives a single-member
product a probability). A cell-day is flagged where ``p >= threshold``; the threshold is
chosen on validation days as the one that maximises F1 (:func:`select_threshold`), then
precision and recall (area-weighted counts of cell-days) are measured on held-out days
against the truth's hypoxia, in the hypoxia season (June to November by default).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import ndtr

from appa.data.toy_sea import (
    HYPOXIA_THRESHOLD,
    SHELF_DEPTH_M,
    bottom_values,
    mixed_layer_depth,
    shelf_cells,
)
from appa.files import PRODUCT_ATTR, written_whole
from appa.metrics.wb2 import EvaluationError, latitude_weights, open_truth

__all__ = [
    "BANDS",
    "BAND_METRICS",
    "DETECTION_SCORES",
    "SCORED_VARIABLES",
    "band_masks",
    "band_scores",
    "detection_scores",
    "evaluate_sea",
    "hypoxia_probability",
    "sea_summary",
    "select_threshold",
    "truth_on_levels",
    "write_sea_scores",
]

BANDS = ("mixed_layer", "pycnocline", "deep")
BAND_METRICS = ("rmse", "spread", "spread_skill", "bias")
SCORED_VARIABLES = ("temperature", "salinity", "oxygen")
DETECTION_SCORES = (
    "threshold",
    "precision",
    "recall",
    "f1",
    "truth_area_km2",
    "flagged_area_km2",
)
HYPOXIA_MONTHS = (6, 7, 8, 9, 10, 11)
FLOOR_EDGES_M = (0.0, 25.0, 50.0, 75.0, SHELF_DEPTH_M)
EARTH_RADIUS_KM = 6371.0


# ------------------------------------------------------------------------------ bands
def band_masks(
    mixed_layer_depth_m: np.ndarray, level: np.ndarray, pycnocline_bottom_m: float = 200.0
) -> dict[str, np.ndarray]:
    """Masks ``(time, level, lat, lon)`` of the depth bands from the mixed-layer depth
    ``(time, lat, lon)`` (m) and the level centres ``(level,)`` (m): ``mixed_layer`` (centre
    above the mixed-layer depth), ``pycnocline`` (from there to ``pycnocline_bottom_m``) and
    ``deep`` (below both). NaN mixed-layer depths (land) give no band."""
    mld = np.asarray(mixed_layer_depth_m, dtype=np.float64)[:, None]
    z = np.asarray(level, dtype=np.float64)[None, :, None, None]
    sea = np.isfinite(mld)
    mixed = sea & (z < mld)
    pycnocline = sea & ~mixed & (z < pycnocline_bottom_m)
    deep = sea & ~mixed & (z >= pycnocline_bottom_m)
    return {"mixed_layer": mixed, "pycnocline": pycnocline, "deep": deep}


class _BandSums:
    """Accumulates weighted sums of a band over time blocks."""

    def __init__(self) -> None:
        self.w = self.se = self.var = self.err = 0.0

    def add(self, members: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> None:
        mean = members.mean(axis=0)
        e = mean - truth
        use = weights > 0
        if np.any(~np.isfinite(e[use])):
            raise EvaluationError("the prediction is NaN where the truth is sea")
        w = weights[use]
        self.w += float(w.sum())
        self.se += float((w * e[use] ** 2).sum())
        self.err += float((w * e[use]).sum())
        if members.shape[0] > 1:
            self.var += float((w * members.var(axis=0, ddof=1)[use]).sum())

    def scores(self, m: int) -> dict[str, float]:
        if self.w == 0:
            return dict.fromkeys(BAND_METRICS, np.nan)
        rmse = np.sqrt(self.se / self.w)
        spread = np.sqrt(self.var / self.w) if m > 1 else 0.0
        ssr = np.sqrt((m + 1) / m) * spread / rmse if m > 1 and rmse > 0 else np.nan
        return {"rmse": rmse, "spread": spread, "spread_skill": ssr, "bias": self.err / self.w}


def band_scores(
    members: np.ndarray,
    truth: np.ndarray,
    bands: Mapping[str, np.ndarray],
    latitude: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Scores per band (see the module docstring) of ``members`` ``(M, time, level, lat,
    lon)`` against ``truth`` ``(time, level, lat, lon)`` (NaN off the sea), with ``bands`` as
    from :func:`band_masks`. Raises :class:`EvaluationError` where the prediction is NaN on a
    sea cell of a band."""
    area = latitude_weights(latitude).values[None, None, :, None]
    sea = np.isfinite(truth)
    out = {}
    for name, mask in bands.items():
        sums = _BandSums()
        sums.add(members, np.where(sea, truth, 0.0), (mask & sea) * area)
        out[name] = sums.scores(members.shape[0])
    return out


# ------------------------------------------------------------------------------ hypoxia
def hypoxia_probability(
    bottom: np.ndarray, threshold: float = HYPOXIA_THRESHOLD, sigma: float | None = None
) -> np.ndarray:
    """Probability ``(...)`` that the bottom oxygen is below ``threshold`` from members
    ``(M, ...)`` (mmol m^-3): the fraction of members below, or with ``sigma`` > 0 the mean
    over members of ``Phi((threshold - b) / sigma)``. NaN where the members are."""
    b = np.asarray(bottom, dtype=np.float64)
    if sigma is None or sigma == 0:
        p = (b < threshold).mean(axis=0)
    else:
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        p = ndtr((threshold - b) / sigma).mean(axis=0)
    return np.where(np.isnan(b).any(axis=0), np.nan, p)


def detection_scores(
    probability: np.ndarray, truth: np.ndarray, weights: np.ndarray, threshold: float
) -> dict[str, float]:
    """Precision, recall and F1 of flags ``probability >= threshold`` against ``truth``
    (bool), counting cell-days with ``weights`` (areas; 0 outside the scored cells), all
    broadcast to one shape; ``truth_area`` and ``flagged_area`` are the weighted counts.
    Precision is NaN when nothing is flagged, recall when nothing is hypoxic."""
    p, y = np.broadcast_arrays(np.asarray(probability, np.float64), np.asarray(truth, bool))
    w = np.broadcast_to(np.asarray(weights, np.float64), p.shape)
    use = w > 0
    if np.any(np.isnan(p[use])):
        raise EvaluationError("the hypoxia probability is NaN on a scored shelf cell")
    flag = (p >= threshold) & use
    hit = float(w[flag & y].sum())
    flagged = float(w[flag].sum())
    true = float(w[y & use].sum())
    precision = hit / flagged if flagged > 0 else np.nan
    recall = hit / true if true > 0 else np.nan
    f1 = 2 * hit / (flagged + true) if flagged + true > 0 else np.nan
    return {
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "truth_area": true,
        "flagged_area": flagged,
    }


def select_threshold(probability: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> float:
    """The flagging threshold (among the positive probabilities that occur) that maximises F1
    on these (validation) cell-days; the lowest of equal ones. Raises
    :class:`EvaluationError` when no cell-day is hypoxic (F1 undefined)."""
    p, y = np.broadcast_arrays(np.asarray(probability, np.float64), np.asarray(truth, bool))
    w = np.broadcast_to(np.asarray(weights, np.float64), p.shape)
    use = w > 0
    p, y, w = p[use], y[use], w[use]
    true = float(w[y].sum())
    if true == 0:
        raise EvaluationError("no hypoxic cell-day in the validation period: no F1 to maximise")
    candidates = np.unique(p[p > 0])
    if candidates.size == 0:
        return 1.0  # never flagged: any threshold above 0 gives F1 = 0
    order = np.argsort(-p, kind="stable")
    ps, ys, ws = p[order], y[order], w[order]
    hits = np.cumsum(ws * ys)
    flagged = np.cumsum(ws)
    # flags of threshold c are the cell-days with p >= c: the prefix up to the last p >= c
    ends = np.searchsorted(-ps, -candidates, side="right") - 1
    f1 = 2 * hits[ends] / (flagged[ends] + true)
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return float(candidates[best].min())


def cell_areas_km2(latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """Areas ``(lat, lon)`` (km^2) of the cells of a regular grid (spacings from the centres)."""
    lat = np.asarray(latitude, dtype=np.float64)
    lon = np.asarray(longitude, dtype=np.float64)
    dlat = np.radians(np.gradient(lat)) if lat.size > 1 else np.array([0.0])
    dlon = np.radians(np.gradient(lon)) if lon.size > 1 else np.array([0.0])
    rows = EARTH_RADIUS_KM**2 * np.cos(np.radians(lat)) * dlat
    return rows[:, None] * dlon[None, :]


# ------------------------------------------------------------------------------ the table
def _load_archive(archive: str | Path | xr.Dataset) -> tuple[str, xr.Dataset]:
    from appa.io.archive import ArchiveError, open_archive

    if isinstance(archive, xr.Dataset):
        return "dataset", archive
    try:
        return str(archive), open_archive(archive)
    except (ArchiveError, FileNotFoundError) as error:
        raise EvaluationError(str(error)) from None


def _held_levels(name: str, ds: xr.Dataset, truth: xr.Dataset) -> np.ndarray:
    """The indices of the truth's levels the archive holds (a prior's state may keep a subset
    of the truth's levels); the same horizontal grid is required."""
    for coord in ("level", "latitude", "longitude"):
        if coord not in ds.coords:
            raise EvaluationError(f"{name}: no {coord} coordinate")
    for coord in ("latitude", "longitude"):
        a, b = ds[coord].values, truth[coord].values
        if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=1e-4):
            raise EvaluationError(f"{name}: its {coord} differ from the truth's")
    held = np.asarray(ds["level"].values, dtype=np.float64)
    levels = np.asarray(truth["level"].values, dtype=np.float64)
    gap = np.abs(held[:, None] - levels[None, :])
    index = gap.argmin(axis=1)
    if (
        held.size == 0
        or np.any(gap[np.arange(held.size), index] > 1e-4)
        or np.any(np.diff(index) <= 0)
    ):
        raise EvaluationError(
            f"{name}: its levels {held.tolist()} are not levels of the truth's "
            f"{levels.tolist()} in the same order"
        )
    return index


def truth_on_levels(archive: xr.Dataset, truth: xr.Dataset, name: str = "archive") -> xr.Dataset:
    """The truth (every variable with a ``level`` dimension, ``sea_mask`` included) on the
    levels ``archive`` holds, a subset of the truth's as a prior's state keeps; an archive on
    other levels or another grid is an :class:`EvaluationError` naming ``name``."""
    return truth.isel(level=_held_levels(name, archive, truth))


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def evaluate_sea(
    archives: Mapping[str, str | Path | xr.Dataset],
    truth: str | Path | xr.Dataset,
    validation: tuple[str, str],
    *,
    test: tuple[str, str] | None = None,
    months: Sequence[int] = HYPOXIA_MONTHS,
    sigma: float | None = None,
    pycnocline_bottom_m: float = 200.0,
    floor_edges_m: Sequence[float] = FLOOR_EDGES_M,
    block: int = 16,
) -> xr.Dataset:
    """Scores each archive (name -> path or dataset) against a sea's truth (a store or a
    dataset with ``sea_mask`` and ``sea_floor_depth``), on the archive's levels (all of the
    truth's, or a subset as a prior's state keeps; the shelf's bottom cells must be among them).

    Band scores use the archive's times outside ``validation`` (inside ``test`` when given);
    hypoxia thresholds are chosen on its times inside ``validation`` and ``months`` and scored
    on its held-out times in ``months``. Returns a dataset with one variable per scored
    variable ``(system, metric, band)``, ``hypoxia(system, score)``,
    ``hypoxia_by_floor(system, score, floor_depth)`` (precision, recall and the truth's
    hypoxic cell-days per range of floor depth) and ``ensemble_size(system)``."""
    if not archives:
        raise EvaluationError("no archive to evaluate")
    source, truth = open_truth(truth)
    for need in ("sea_mask", "sea_floor_depth", "temperature", "salinity", "oxygen"):
        if need not in truth:
            raise EvaluationError(f"the truth {source} lacks {need!r} (a toy-sea store has it)")
    mask = truth["sea_mask"].values.astype(bool)
    floor = truth["sea_floor_depth"].values.astype(np.float64)
    level = truth["level"].values.astype(np.float64)
    lat, lon = truth["latitude"].values, truth["longitude"].values
    shelf = shelf_cells(mask, floor)
    areas = cell_areas_km2(lat, lon) * shelf
    v0, v1 = pd.Timestamp(validation[0]), pd.Timestamp(validation[1])
    edges = np.asarray(floor_edges_m, dtype=np.float64)
    labels = [f"{a:g}-{b:g}" for a, b in itertools.pairwise(edges)]
    truth_times = pd.DatetimeIndex(truth["time"].values)

    results = []
    notes: list[str] = []
    for system, archive in archives.items():
        where, ds = _load_archive(archive)
        index = _held_levels(system, ds, truth)
        # the truth on the archive's levels (its bottom cells on the shelf, its mixed layer)
        held_mask, held_level = mask[index], level[index]
        names = [v for v in SCORED_VARIABLES if v in ds.data_vars]
        if "oxygen" not in names:
            raise EvaluationError(f"{system}: no oxygen, nothing to score hypoxia with")
        times = pd.DatetimeIndex(ds["time"].values)
        missing = times.difference(truth_times)
        if len(missing):
            raise EvaluationError(f"{system}: time {missing[0]} is not in the truth {source}")
        in_validation = (times >= v0) & (times <= v1)
        held = ~in_validation
        if test is not None:
            held &= (times >= pd.Timestamp(test[0])) & (times <= pd.Timestamp(test[1]))
        if not held.any():
            raise EvaluationError(f"{system}: no time outside the validation period {validation}")
        seasonal = np.isin(times.month, list(months))
        sums = {v: {b: _BandSums() for b in BANDS} for v in names}
        prob = np.full((len(times), *shelf.shape), np.nan)
        hypoxic = np.zeros((len(times), *shelf.shape), dtype=bool)
        m = ds.sizes["member"]
        area = latitude_weights(lat).values[None, None, :, None]
        for part in _blocks(len(times), block):
            t = times[part].values
            y = truth[list(SCORED_VARIABLES)].sel(time=t).isel(level=index).load()
            x = {v: np.asarray(ds[v].isel(time=part).values, dtype=np.float64) for v in names}
            yo = y["oxygen"].values.astype(np.float64)
            hypoxic[part] = (bottom_values(yo, held_mask) < HYPOXIA_THRESHOLD) & shelf
            prob[part] = hypoxia_probability(bottom_values(x["oxygen"], held_mask), sigma=sigma)
            keep = held[part]
            if not keep.any():
                continue
            mld = mixed_layer_depth(
                y["temperature"].values[keep], y["salinity"].values[keep], held_level
            )
            bands = band_masks(mld, held_level, pycnocline_bottom_m)
            for v in names:
                yt = y[v].values[keep].astype(np.float64)
                sea = np.isfinite(yt)
                for b in BANDS:
                    try:
                        sums[v][b].add(
                            x[v][:, keep], np.where(sea, yt, 0.0), (bands[b] & sea) * area
                        )
                    except EvaluationError as error:
                        raise EvaluationError(f"{system} ({where}) {v}, {b}: {error}") from None
        table = xr.Dataset()
        for v in names:
            values = [[sums[v][b].scores(m)[k] for b in BANDS] for k in BAND_METRICS]
            table[v] = (("metric", "band"), np.array(values))
        weights = areas[None]
        pick = in_validation & seasonal
        score = held & seasonal
        if not score.any():
            raise EvaluationError(f"{system}: no held-out time in months {list(months)}")
        if not (hypoxic[pick] & (weights > 0)).any():
            # nothing to choose a threshold on: the bands are scored, detection is not
            notes.append(f"{system}: no hypoxic shelf cell-day in the validation period")
            threshold = np.nan
        else:
            try:
                threshold = select_threshold(prob[pick], hypoxic[pick], weights)
            except EvaluationError as error:
                raise EvaluationError(f"{system}, validation {validation}: {error}") from None
        det = detection_scores(prob[score], hypoxic[score], weights, threshold)
        if np.isnan(threshold):
            det.update(precision=np.nan, recall=np.nan, f1=np.nan, flagged_area=np.nan)
        days = int(score.sum())
        det = {
            "threshold": det["threshold"],
            "precision": det["precision"],
            "recall": det["recall"],
            "f1": det["f1"],
            "truth_area_km2": det["truth_area"] / days,
            "flagged_area_km2": det["flagged_area"] / days,
        }
        table["hypoxia"] = ("score", [det[k] for k in DETECTION_SCORES])
        by_floor = []
        for a, b in itertools.pairwise(edges):
            w = areas * ((floor >= a) & (floor < b))
            d = detection_scores(prob[score], hypoxic[score], w[None], threshold)
            cells = float((hypoxic[score] & (w[None] > 0)).sum())
            if np.isnan(threshold):
                d.update(precision=np.nan, recall=np.nan)
            by_floor.append([d["precision"], d["recall"], cells])
        table["hypoxia_by_floor"] = (("floor_depth", "score_by_floor"), np.array(by_floor))
        table = table.expand_dims(system=[system]).assign_coords(ensemble_size=("system", [m]))
        results.append(table)
    out = xr.concat(results, dim="system", join="outer", combine_attrs="drop")
    out = out.assign_coords(
        metric=list(BAND_METRICS),
        band=list(BANDS),
        score=list(DETECTION_SCORES),
        floor_depth=labels,
        score_by_floor=["precision", "recall", "truth_cell_days"],
    )
    out.attrs = {
        "truth": source,
        "validation": f"{validation[0]} to {validation[1]}",
        "test": "outside validation" if test is None else f"{test[0]} to {test[1]}",
        "hypoxia_months": json.dumps(list(months)),
        "hypoxia_threshold_mmol_m3": HYPOXIA_THRESHOLD,
        "shelf_depth_m": SHELF_DEPTH_M,
        "pycnocline_bottom_m": pycnocline_bottom_m,
        "threshold_choice": "maximum F1 on the validation period",
        "probability": "fraction of members" if not sigma else f"Gaussian dressing {sigma}",
    }
    if notes:
        out.attrs["hypoxia_not_scored"] = "; ".join(notes)
    return out


def _as_dict(table: xr.Dataset) -> dict:
    out: dict = {"attrs": dict(table.attrs), "systems": {}}
    for system in table["system"].values:
        t = table.sel(system=system)
        entry: dict = {"ensemble_size": int(t["ensemble_size"])}
        for v in SCORED_VARIABLES:
            if v in t:
                entry[v] = {
                    str(b): {str(k): _num(t[v].sel(metric=k, band=b)) for k in BAND_METRICS}
                    for b in BANDS
                }
        entry["hypoxia"] = {str(k): _num(t["hypoxia"].sel(score=k)) for k in DETECTION_SCORES}
        entry["hypoxia_by_floor_depth_m"] = {
            str(f): {
                str(k): _num(t["hypoxia_by_floor"].sel(floor_depth=f, score_by_floor=k))
                for k in t["score_by_floor"].values
            }
            for f in t["floor_depth"].values
        }
        out["systems"][str(system)] = entry
    return out


def _num(value: xr.DataArray) -> float | None:
    v = float(value)
    return v if np.isfinite(v) else None


def write_sea_scores(table: xr.Dataset, out: str | Path, overwrite: bool = False) -> Path:
    """Writes the sea's score table atomically: JSON for ``.json`` (NaN as null), NetCDF
    otherwise. ``out`` must be free or, with ``overwrite``, a score table."""
    out = Path(out)
    table = table.assign_attrs({PRODUCT_ATTR: "scores"})
    with written_whole(out, "scores", overwrite=overwrite) as tmp:
        if out.suffix == ".json":
            document = _as_dict(table)
            document["attrs"][PRODUCT_ATTR] = "scores"
            Path(tmp).write_text(json.dumps(document, indent=1) + "\n")
        else:
            encoded = table.copy()
            for coord in ("system", "metric", "band", "score", "floor_depth", "score_by_floor"):
                encoded[coord] = encoded[coord].astype(str)
            encoded.to_netcdf(tmp)
    return out


def sea_summary(table: xr.Dataset):
    """Two :class:`rich.table.Table`: errors by variable and depth band (RMSE, spread/skill
    per system), and the hypoxia scores per system."""
    from rich.table import Table

    systems = [str(s) for s in table["system"].values]
    bands = Table(title="Sea: ensemble-mean RMSE and spread/skill by depth band (held-out days)")
    bands.add_column("variable, band")
    for short in ("RMSE", "SSR"):
        for s in systems:
            bands.add_column(f"{short}\n{s}", justify="right")
    for v in SCORED_VARIABLES:
        if v not in table:
            continue
        units = {"temperature": "K", "salinity": "g/kg", "oxygen": "mmol/m3"}[v]
        for b in BANDS:
            cells = []
            for metric in ("rmse", "spread_skill"):
                values = table[v].sel(metric=metric, band=b).values
                cells += ["-" if not np.isfinite(x) else f"{x:.3g}" for x in values]
            bands.add_row(f"{v} ({units}), {b}", *cells)
    hyp = Table(title="Shelf bottom hypoxia (held-out days of the season)")
    hyp.add_column("system", no_wrap=True)
    for k in DETECTION_SCORES:
        hyp.add_column(k.replace("_", " "), justify="right")
    for f in table["floor_depth"].values:
        hyp.add_column(f"recall\nfloor {f} m", justify="right")
    for s in systems:
        t = table.sel(system=s)
        cells = [
            "-" if not np.isfinite(x) else f"{x:.3g}"
            for x in t["hypoxia"].sel(score=list(DETECTION_SCORES)).values
        ]
        cells += [
            "-" if not np.isfinite(x) else f"{x:.2f}"
            for x in t["hypoxia_by_floor"].sel(score_by_floor="recall").values
        ]
        hyp.add_row(s, *cells)
    return bands, hyp
