"""A sea's scores: depth bands, area weights and NaN below the floor against hand computation;
hypoxia probabilities, precision/recall and threshold choice on constructed cases; the table
and ``appa evaluate-sea`` end to end on small archives."""

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from appa.data.toy_sea import mixed_layer_depth
from appa.io.archive import archive_dataset, write_dataset
from appa.metrics.ocean import (
    band_masks,
    band_scores,
    detection_scores,
    evaluate_sea,
    hypoxia_probability,
    select_threshold,
    write_sea_scores,
)
from appa.metrics.wb2 import EvaluationError, latitude_weights


def test_band_masks_split_the_column_at_the_mixed_layer_and_200_m():
    mld = np.array([[[15.0, np.nan]]])  # (time, lat, lon): a sea column and land
    level = np.array([5.0, 10.0, 20.0, 150.0, 300.0])
    bands = band_masks(mld, level)
    assert bands["mixed_layer"][0, :, 0, 0].tolist() == [True, True, False, False, False]
    assert bands["pycnocline"][0, :, 0, 0].tolist() == [False, False, True, True, False]
    assert bands["deep"][0, :, 0, 0].tolist() == [False, False, False, False, True]
    for band in bands.values():
        assert not band[..., 1].any()  # land is in no band
    # a mixed layer deeper than 200 m leaves no pycnocline
    deep_mixed = band_masks(np.array([[[250.0]]]), level)
    assert deep_mixed["mixed_layer"][0, :4, 0, 0].all() and deep_mixed["deep"][0, 4, 0, 0]
    assert not deep_mixed["pycnocline"].any()


def test_band_scores_by_hand_with_area_weights_and_nan_below_the_floor():
    latitude = np.array([40.0, 46.0])
    w = latitude_weights(latitude).values  # unequal cell areas
    # 2 members, 1 time, 2 levels, 2 latitudes, 1 longitude; the second column's floor is
    # above the second level (NaN there in the truth and the members)
    truth = np.array([[[[10.0], [20.0]], [[30.0], [np.nan]]]])
    members = np.stack([truth + 1.0, truth + 3.0])  # mean error 2, variance 2 (ddof=1)
    members[1, 0, 0, 1, 0] = truth[0, 0, 1, 0] + 5.0  # level 0, latitude 1: errors 1 and 5
    bands = {"top": np.zeros((1, 2, 2, 1), bool), "bottom": np.zeros((1, 2, 2, 1), bool)}
    bands["top"][:, 0] = True
    bands["bottom"][:, 1] = True
    scores = band_scores(members, truth, bands, latitude)
    # top: errors of the mean 2 (lat 0) and 3 (lat 1); variances 2 and 8
    rmse = np.sqrt((w[0] * 4 + w[1] * 9) / (w[0] + w[1]))
    spread = np.sqrt((w[0] * 2 + w[1] * 8) / (w[0] + w[1]))
    assert scores["top"]["rmse"] == pytest.approx(rmse)
    assert scores["top"]["spread"] == pytest.approx(spread)
    assert scores["top"]["spread_skill"] == pytest.approx(np.sqrt(3 / 2) * spread / rmse)
    assert scores["top"]["bias"] == pytest.approx((w[0] * 2 + w[1] * 3) / (w[0] + w[1]))
    # bottom: only the first column is sea
    assert scores["bottom"]["rmse"] == pytest.approx(2.0)
    assert scores["bottom"]["spread"] == pytest.approx(np.sqrt(2.0))
    # a prediction that is NaN on a sea cell is an error, not a smaller average
    members[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(EvaluationError, match="NaN where the truth is sea"):
        band_scores(members, truth, bands, latitude)


def test_hypoxia_probability_from_members_and_from_a_gaussian_spread():
    members = np.array([50.0, 70.0, 60.0, 80.0])[:, None]
    assert hypoxia_probability(members)[0] == pytest.approx(0.5)
    assert hypoxia_probability(np.array([[63.0]]), sigma=4.0)[0] == pytest.approx(0.5)
    assert hypoxia_probability(np.array([[59.0]]), sigma=4.0)[0] == pytest.approx(0.8413447)
    assert np.isnan(hypoxia_probability(np.array([[np.nan], [50.0]]))[0])


def test_precision_recall_and_threshold_choice_on_a_constructed_case():
    p = np.array([0.9, 0.6, 0.2, 0.0])
    truth = np.array([True, False, True, False])
    w = np.array([1.0, 1.0, 2.0, 1.0])
    d = detection_scores(p, truth, w, 0.5)
    # flagged: cells 0 and 1 (area 2), hit: cell 0 (area 1), hypoxic area 3
    assert d["precision"] == pytest.approx(0.5)
    assert d["recall"] == pytest.approx(1 / 3)
    assert d["f1"] == pytest.approx(2 * 1 / (2 + 3))
    assert (d["truth_area"], d["flagged_area"]) == (3.0, 2.0)
    # F1: 0.5 at 0.9, 0.4 at 0.6, 6/7 at 0.2
    assert select_threshold(p, truth, w) == pytest.approx(0.2)
    # weights 0 take cells out of the count
    assert select_threshold(p, truth, np.array([1.0, 1.0, 0.0, 1.0])) == pytest.approx(0.9)
    nothing = detection_scores(p, truth, w, 0.95)
    assert np.isnan(nothing["precision"]) and nothing["recall"] == 0.0
    with pytest.raises(EvaluationError, match="no hypoxic cell-day"):
        select_threshold(p, np.zeros(4, bool), w)


# ------------------------------------------------------------------------------ a tiny sea
LEVELS = np.array([2.5, 15.0, 60.0, 250.0])


def tiny_sea(days: pd.DatetimeIndex) -> xr.Dataset:
    """3 x 4 cells (a land cell, a shelf of floor 30 m and 80 m, deep columns), 4 levels; the
    shelf's bottom oxygen falls below 63 mmol m^-3 on the days of odd day of month."""
    rng = np.random.default_rng(0)
    ny, nx, L = 3, 4, len(LEVELS)
    floor = np.full((ny, nx), 1000.0, dtype=np.float32)
    floor[0, 0] = np.nan
    floor[0, 1], floor[0, 2] = 30.0, 80.0
    mask = (LEVELS[:, None, None] < np.nan_to_num(floor, nan=-1)[None]).astype(np.int8)
    n = len(days)
    z = LEVELS[None, :, None, None]
    temperature = 290.0 - 0.02 * z + 0.1 * rng.standard_normal((n, L, ny, nx))
    salinity = 18.0 + 0.01 * z + 0.01 * rng.standard_normal((n, L, ny, nx))
    oxygen = 250.0 - 0.5 * z + rng.standard_normal((n, L, ny, nx))
    low = (days.day % 2 == 1)[:, None, None]
    bottom = np.where(low, 40.0, 100.0) * np.ones((n, ny, nx))
    oxygen[:, 1, 0, 1] = bottom[:, 0, 1]  # floor 30 m: level 1 (15 m) is the bottom
    oxygen[:, 2, 0, 2] = bottom[:, 0, 2]  # floor 80 m: level 2 (60 m)
    dims = ("time", "level", "latitude", "longitude")
    data = {}
    for name, values in (("temperature", temperature), ("salinity", salinity),
                         ("oxygen", oxygen)):  # fmt: skip
        data[name] = (dims, np.where(mask[None] > 0, values, np.nan).astype(np.float32))
    ds = xr.Dataset(
        {**data, "sea_mask": (dims[1:], mask), "sea_floor_depth": (dims[2:], floor)},
        coords={
            "time": days.values,
            "level": LEVELS,
            "latitude": [42.0, 43.0, 44.0],
            "longitude": [30.0, 31.0, 32.0, 33.0],
        },
    )
    ds["level"].attrs = {"units": "m", "standard_name": "depth", "positive": "down"}
    ds["temperature"].attrs["units"] = "K"
    ds["salinity"].attrs["units"] = "g kg**-1"
    ds["oxygen"].attrs["units"] = "mmol m**-3"
    return ds


def as_archive(fields: dict[str, np.ndarray], truth: xr.Dataset) -> xr.Dataset:
    dims = ("member", "time", "level", "latitude", "longitude")
    ds = xr.Dataset(
        {k: (dims, v.astype(np.float32)) for k, v in fields.items()},
        coords={
            "member": np.arange(next(iter(fields.values())).shape[0]),
            **{c: truth[c].values for c in dims[1:]},
        },
    )
    return archive_dataset(ds, truth=truth)


DAYS = pd.date_range("2003-07-01", "2003-07-08").append(pd.date_range("2004-07-01", "2004-07-08"))
VALIDATION = ("2003-01-01", "2003-12-31")


def test_evaluate_sea_perfect_and_offset_archives():
    truth = tiny_sea(DAYS)
    values = {v: truth[v].values for v in ("temperature", "salinity", "oxygen")}
    perfect = as_archive({v: np.stack([x, x]) for v, x in values.items()}, truth)
    # members 0.5 apart around truth + 1 (oxygen +1 keeps the hypoxic days hypoxic)
    offset = as_archive({v: np.stack([x + 0.75, x + 1.25]) for v, x in values.items()}, truth)
    table = evaluate_sea({"perfect": perfect, "offset": offset}, truth, VALIDATION)
    for v in ("temperature", "salinity", "oxygen"):
        for band in ("mixed_layer", "pycnocline", "deep"):
            assert table[v].sel(system="perfect", metric="rmse", band=band) == 0.0
            assert table[v].sel(system="offset", metric="rmse", band=band) == pytest.approx(1.0)
            spread = table[v].sel(system="offset", metric="spread", band=band)
            assert spread == pytest.approx(np.sqrt(0.125), rel=1e-5)
    for system in ("perfect", "offset"):
        h = table["hypoxia"].sel(system=system)
        assert h.sel(score="precision") == 1.0 and h.sel(score="recall") == 1.0
        assert h.sel(score="threshold") == 1.0  # every member agrees
    # both shelf cells are hypoxic on the 4 odd days of 8: half their area on average
    from appa.metrics.ocean import cell_areas_km2

    shelf_area = cell_areas_km2(truth.latitude.values, truth.longitude.values)[0, 1:3].sum()
    truth_area = float(table["hypoxia"].sel(system="perfect", score="truth_area_km2"))
    assert truth_area == pytest.approx(shelf_area / 2)
    by_floor = table["hypoxia_by_floor"].sel(system="perfect", score_by_floor="truth_cell_days")
    assert by_floor.sel(floor_depth="25-50") == 4 and by_floor.sel(floor_depth="75-100") == 4
    assert by_floor.sel(floor_depth="0-25") == 0


def test_evaluate_sea_bands_follow_the_truths_mixed_layer():
    truth = tiny_sea(DAYS)
    # errors only in the mixed layer of the truth: zero in the other bands
    t, s = truth["temperature"].values, truth["salinity"].values
    mld = mixed_layer_depth(t, s, LEVELS)
    above = LEVELS[None, :, None, None] < mld[:, None]
    assert above.any() and (~above & np.isfinite(t)).any()
    fields = {v: truth[v].values[None] for v in ("temperature", "salinity", "oxygen")}
    fields["temperature"] = np.where(above, t + 2.0, t)[None]
    table = evaluate_sea({"x": as_archive(fields, truth)}, truth, VALIDATION)
    rmse = table["temperature"].sel(system="x", metric="rmse")
    assert rmse.sel(band="mixed_layer") == pytest.approx(2.0)
    assert rmse.sel(band="pycnocline") == 0 and rmse.sel(band="deep") == 0
    assert np.isnan(table["temperature"].sel(system="x", metric="spread_skill", band="deep"))


def test_evaluate_sea_names_the_culprits():
    truth = tiny_sea(DAYS)
    x = {v: truth[v].values[None] for v in ("temperature", "salinity", "oxygen")}
    archive = as_archive(x, truth)
    with pytest.raises(EvaluationError, match="no time outside the validation"):
        evaluate_sea({"a": archive}, truth, ("2003-01-01", "2004-12-31"))
    bad = archive.copy()
    bad["oxygen"] = bad["oxygen"].where(bad["level"] < 100)  # NaN in the deep sea
    with pytest.raises(EvaluationError, match=r"a .*oxygen, deep"):
        evaluate_sea({"a": bad}, truth, VALIDATION)


def test_evaluate_sea_command_end_to_end(tmp_path):
    from appa.cli import app

    truth = tiny_sea(DAYS)
    store = tmp_path / "sea.zarr"
    truth.to_zarr(store, zarr_format=2, consolidated=True)
    values = {v: truth[v].values for v in ("temperature", "salinity", "oxygen")}
    write_dataset(as_archive({v: np.stack([x, x + 0.5]) for v, x in values.items()}, truth),
                  tmp_path / "good.zarr")  # fmt: skip
    missed = dict(values, oxygen=values["oxygen"] + 60.0)  # never hypoxic
    write_dataset(as_archive({v: x[None] for v, x in missed.items()}, truth), tmp_path / "m.zarr")
    out = tmp_path / "scores.json"
    runner = CliRunner()
    result = runner.invoke(app, [
        "evaluate-sea", str(tmp_path / "good.zarr"), f"blind={tmp_path / 'm.zarr'}",
        "--truth", str(store), "--validation-start", "2003-01-01",
        "--validation-end", "2003-12-31", "--out", str(out),
        "--figures", str(tmp_path / "figs"), "--day", "2004-07-03",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mixed_layer" in result.output and "recall" in result.output
    scores = json.loads(out.read_text())
    good, blind = scores["systems"]["good"], scores["systems"]["blind"]
    assert good["hypoxia"]["recall"] == 1.0 and blind["hypoxia"]["recall"] == 0.0
    assert blind["hypoxia"]["precision"] is None  # nothing flagged
    assert good["temperature"]["deep"]["rmse"] == pytest.approx(0.25, rel=1e-5)
    assert scores["attrs"]["appa_product"] == "scores"
    for name in (
        "good_section_oxygen.png",
        "good_bottom_oxygen.png",
        "blind_section_temperature.png",
    ):
        assert (tmp_path / "figs" / name).stat().st_size > 0
    # NetCDF too, and an existing file is not replaced without --overwrite
    table = evaluate_sea({"good": tmp_path / "good.zarr"}, store, VALIDATION)
    path = write_sea_scores(table, tmp_path / "scores.nc")
    assert xr.open_dataset(path)["hypoxia"].sel(system="good", score="recall") == 1.0
    again = runner.invoke(app, [
        "evaluate-sea", str(tmp_path / "good.zarr"), "--truth", str(store),
        "--validation-start", "2003-01-01", "--validation-end", "2003-12-31", "--out", str(out),
    ])  # fmt: skip
    assert again.exit_code == 2 and "error:" in again.output


def test_a_validation_period_without_hypoxia_scores_the_bands_and_not_the_detection():
    truth = tiny_sea(DAYS)
    x = {v: truth[v].values[None] for v in ("temperature", "salinity", "oxygen")}
    oxic = truth.assign(oxygen=truth.oxygen + 100)
    table = evaluate_sea({"a": as_archive(x, truth)}, oxic, VALIDATION)
    assert "no hypoxic shelf cell-day" in table.attrs["hypoxia_not_scored"]
    assert np.isnan(float(table["hypoxia"].sel(system="a", score="recall")))
    assert float(table["temperature"].sel(system="a", metric="rmse", band="deep")) == 0.0


def test_an_archive_on_a_subset_of_the_truths_levels_is_scored_on_those():
    truth = tiny_sea(DAYS)
    x = {v: truth[v].values[None] for v in ("temperature", "salinity", "oxygen")}
    archive = as_archive(x, truth).isel(level=[0, 1, 2])  # a prior's state to 60 m
    table = evaluate_sea({"a": archive}, truth, VALIDATION)
    assert float(table["hypoxia"].sel(system="a", score="recall")) == 1.0
    assert float(table["oxygen"].sel(system="a", metric="rmse", band="mixed_layer")) == 0.0
    moved = archive.assign_coords(level=archive["level"].values + np.array([0.0, 0.0, 1.0]))
    with pytest.raises(EvaluationError, match="not levels of the truth"):
        evaluate_sea({"a": moved}, truth, VALIDATION)


def test_figures_of_an_archive_on_a_subset_of_the_truths_levels(tmp_path):
    from appa.metrics.plots import plot_bottom_oxygen, plot_sea_section

    truth = tiny_sea(DAYS)
    x = {v: truth[v].values[None] for v in ("temperature", "salinity", "oxygen")}
    archive = as_archive(x, truth).isel(level=[0, 1, 2])
    section = plot_sea_section(archive, truth, "oxygen", "2004-07-03", tmp_path / "s.png",
                               line=((0.0, 0.0), (2.0, 3.0)))  # fmt: skip
    bottom = plot_bottom_oxygen(archive, truth, "2004-07-03", tmp_path / "b.png")
    assert section.stat().st_size > 0 and bottom.stat().st_size > 0
    with pytest.raises(EvaluationError, match="not levels of the truth"):
        moved = archive.assign_coords(level=archive["level"].values + 1.0)
        plot_sea_section(moved, truth, "oxygen", "2004-07-03", tmp_path / "m.png")


def test_a_json_score_table_is_replaced_with_overwrite_and_a_users_json_is_not(tmp_path):
    from appa.files import OutputExistsError
    from appa.metrics.ocean import write_sea_scores

    truth = tiny_sea(DAYS)
    x = {v: truth[v].values[None] for v in ("temperature", "salinity", "oxygen")}
    table = evaluate_sea({"a": as_archive(x, truth)}, truth, VALIDATION)
    out = tmp_path / "scores.json"
    write_sea_scores(table, out)
    write_sea_scores(table, out, overwrite=True)  # its own product
    theirs = tmp_path / "theirs.json"
    theirs.write_text('{"attrs": {"note": "mine"}}')
    with pytest.raises(OutputExistsError):
        write_sea_scores(table, theirs, overwrite=True)
    assert theirs.read_text() == '{"attrs": {"note": "mine"}}'
