"""Satellite swaths and gridded products: superobservation means and errors against
hand-computed values, box assignment across the dateline and near the poles, quality flags,
valid ranges, times, levels, NetCDF and Zarr alike, and errors that name the culprit."""

import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from appa.data.grids import equiangular_grid
from appa.data.spec import StateSpec
from appa.observations import ObservationOperator, make_table
from appa.observations.ingest.convert import G0
from appa.observations.ingest.reports import REPORT_COLUMNS
from appa.observations.ingest.swath import SwathSpec, SwathVariable, read_swath
from appa.observations.schema import ObservationError

# a grid with poles: 9 latitudes by 22.5 degrees, 16 longitudes
POLAR_LAT = np.linspace(-90.0, 90.0, 9)
POLAR_LON = np.arange(16) * 22.5
T0 = pd.Timestamp("2020-01-01T00:10")


def _swath(lat, lon, value, time, **extra) -> xr.Dataset:
    dims = ("scanline", "pixel")
    ds = xr.Dataset(
        {
            "sst": (dims, np.asarray(value, dtype=np.float64), {"units": "degC"}),
            "lat": (dims, np.asarray(lat, dtype=np.float64)),
            "lon": (dims, np.asarray(lon, dtype=np.float64)),
            "time": (dims[: np.ndim(time)], np.asarray(time, dtype="datetime64[ns]")),
        }
    )
    for name, (array, attrs) in extra.items():
        ds[name] = (dims, np.asarray(array), attrs)
    return ds


def _spec(**overrides) -> SwathSpec:
    fields = dict(
        variables={"sst": SwathVariable("skin_temperature", error="sst_err")},
        latitude="lat",
        longitude="lon",
        instrument="test-sat/radiometer",
    )
    fields.update(overrides)
    return SwathSpec(**fields)


def _hand_swath() -> xr.Dataset:
    """Two boxes of three pixels each: around (0, 0) across the prime meridian, around
    (22.5, 180) across the dateline."""
    lat = [[1.0, -2.0, 3.0], [20.0, 25.0, 22.0]]
    lon = [[1.0, 359.0, -4.0], [179.9, -179.9, 181.0]]
    value = [[10.0, 20.0, 30.0], [1.0, 2.0, 6.0]]
    sigma = [[1.0, 2.0, 2.0], [3.0, 3.0, 3.0]]
    time = [T0, T0 + pd.Timedelta("10min")]  # per scan line, both rounded to 00:00
    return _swath(lat, lon, value, time, sst_err=(sigma, {"units": "K"}))


@pytest.mark.parametrize("store", ["nc", "zarr"])
def test_superob_means_and_correlated_errors(tmp_path, store):
    path = tmp_path / f"swath.{store}"
    ds = _hand_swath()
    ds.to_netcdf(path) if store == "nc" else ds.to_zarr(path, zarr_format=2)
    read = read_swath(path, _spec(error_correlation=0.2), POLAR_LAT, POLAR_LON, "1h")
    reports = read.reports
    assert list(reports.columns) == list(REPORT_COLUMNS)
    assert read.pixels_read == 6 and sum(read.rejected_pixels.values()) == 0
    assert len(reports) == 2
    a = reports[reports["latitude"] == 0.0].iloc[0]
    b = reports[reports["latitude"] == 22.5].iloc[0]
    assert (a["longitude"], b["longitude"]) == (0.0, 180.0)
    assert a["value"] == pytest.approx(273.15 + 20.0)  # degC -> K
    assert b["value"] == pytest.approx(273.15 + 3.0)
    # ((1 - rho) sum sigma^2 + rho (sum sigma)^2) / n^2
    assert a["error_std"] == pytest.approx(math.sqrt((0.8 * 9 + 0.2 * 25) / 9))
    assert b["error_std"] == pytest.approx(math.sqrt((0.8 * 27 + 0.2 * 81) / 9))
    assert (reports["time"] == pd.Timestamp("2020-01-01T00:00")).all()
    assert (reports["footprint"] == 22.5).all() and reports["level"].isna().all()
    assert set(reports["station"]) == {"test-sat/radiometer"}
    assert set(reports["platform"]) == {"satellite"} and (reports["reason"] == "").all()

    independent = read_swath(path, _spec(error_correlation=0.0), POLAR_LAT, POLAR_LON, "1h")
    a0 = independent.reports[independent.reports["latitude"] == 0.0].iloc[0]
    assert a0["error_std"] == pytest.approx(math.sqrt(1 + 4 + 4) / 3)


def test_correlated_part_does_not_average_out(tmp_path):
    n = 400
    rng = np.random.default_rng(1)
    lat = rng.uniform(-5, 5, (20, n // 20))
    lon = rng.uniform(-5, 5, (20, n // 20))
    _swath(lat, lon, rng.normal(size=lat.shape), T0).to_netcdf(tmp_path / "s.nc")
    variables = {"sst": SwathVariable("skin_temperature", pixel_error=0.8)}
    reports = read_swath(
        tmp_path / "s.nc", _spec(variables=variables), POLAR_LAT, POLAR_LON, "1h"
    ).reports
    assert len(reports) == 1
    exact = 0.8 * math.sqrt((0.8 * n + 0.2 * n * n) / n**2)
    assert reports["error_std"].item() == pytest.approx(exact)
    assert reports["error_std"].item() > math.sqrt(0.2) * 0.8  # the floor, never below


def _nearest(lat, lon, grid_lat, grid_lon):
    """Brute force: the grid centre nearest in latitude, and in periodic longitude."""
    j = np.argmin(np.abs(lat[:, None] - grid_lat[None, :]), axis=1)
    d = np.abs((lon[:, None] - grid_lon[None, :] + 180.0) % 360.0 - 180.0)
    return grid_lat[j], grid_lon[np.argmin(d, axis=1)]


GRIDS = {
    "polar": (POLAR_LAT, POLAR_LON),
    "equiangular": equiangular_grid("64x32"),
    "irregular": (
        np.array([-80.0, -50.0, -20.0, 0.0, 15.0, 40.0, 70.0, 85.0]),
        np.array([0.0, 31.0, 100.0, 170.0, 185.0, 250.0, 301.0, 347.0]),  # no halfway pixel
    ),
}


@pytest.mark.parametrize("grid", list(GRIDS))
def test_dense_swath_over_dateline_and_pole_gives_one_superob_per_box(tmp_path, grid):
    glat, glon = GRIDS[grid]
    rng = np.random.default_rng(0)
    lines, pixels = 120, 40
    # scan lines from 60 N over the pole to 60 N on the other side, crossing the dateline
    along = np.linspace(-1, 1, lines)[:, None]
    across = np.linspace(-1, 1, pixels)[None, :]
    lat = 90.0 - 30.0 * np.abs(along) - 0.5 * np.abs(across)
    lon = np.where(along < 0, 170.0, -10.0) + 25.0 * across
    lon = ((lon + 180.0) % 360.0) - 180.0  # [-180, 180)
    value = rng.normal(280.0, 3.0, (lines, pixels))
    times = T0 + pd.to_timedelta(np.arange(lines) * 60.0, "s")  # 2 h of scan lines
    _swath(lat, lon, value, times).to_netcdf(tmp_path / "s.nc")
    variables = {"sst": SwathVariable("skin_temperature", units="K", pixel_error=1.0)}
    read = read_swath(tmp_path / "s.nc", _spec(variables=variables), glat, glon, "1h")
    reports = read.reports
    keys = reports[["time", "latitude", "longitude"]]
    assert not keys.duplicated().any()

    blat, blon = _nearest(lat.ravel(), lon.ravel(), glat, glon)
    # halfway goes to the later hour (pandas' round would go to the even one)
    rounded = (pd.DatetimeIndex(np.repeat(times, pixels)) + pd.Timedelta("30min")).floor("1h")
    expected = (
        pd.DataFrame({"time": rounded, "latitude": blat, "longitude": blon, "v": value.ravel()})
        .groupby(["time", "latitude", "longitude"])["v"]
        .agg(["mean", "size"])
    )
    got = reports.set_index(["time", "latitude", "longitude"]).sort_index()
    assert got.index.equals(expected.index)
    np.testing.assert_allclose(got["value"], expected["mean"], rtol=1e-12)
    n = expected["size"].to_numpy()
    np.testing.assert_allclose(got["error_std"], np.sqrt((0.8 * n + 0.2 * n * n) / n**2))
    assert len(reports) < lines * pixels / 10  # thinned
    if grid == "polar":
        assert (reports["latitude"] == 90.0).any() and reports["latitude"].min() >= 45.0


def test_box_assignment_at_poles_and_dateline(tmp_path):
    lat = [[89.0, 80.0, -89.9, 90.0, 0.0, 0.0]]
    lon = [[10.0, 100.0, 200.0, -170.0, 359.0, -12.0]]
    _swath(lat, lon, [[1, 2, 3, 4, 5, 6]], [T0]).to_netcdf(tmp_path / "s.nc")
    variables = {"sst": SwathVariable("skin_temperature", units="K")}
    polar = read_swath(tmp_path / "s.nc", _spec(variables=variables), POLAR_LAT, POLAR_LON, "1h")
    boxes = {(r.latitude, r.longitude): r.value for r in polar.reports.itertuples()}
    assert boxes == {
        (90.0, 0.0): 1.0,  # 10 E is nearer 0 than 22.5
        (90.0, 90.0): 2.0,  # 80 N is nearer the pole row than 67.5
        (-90.0, 202.5): 3.0,
        (90.0, 180.0): 4.0,  # -170 = 190 E
        (0.0, 0.0): 5.0,  # 359 E wraps to the first column
        (0.0, 337.5): 6.0,  # -12 = 348 E
    }
    assert polar.reports["error_std"].isna().all()  # no error given: left to the error table
    glat, glon = equiangular_grid("64x32")  # without poles: the outermost rows
    boxed = read_swath(tmp_path / "s.nc", _spec(variables=variables), glat, glon, "1h").reports
    # the equator lies halfway between two rows: the northern one
    assert sorted(set(boxed["latitude"])) == [-87.1875, 2.8125, 81.5625, 87.1875]


def test_rejected_pixels_by_reason(tmp_path):
    # packed values: physical = 200 + 0.01 * stored; valid_range in stored units
    physical = np.array([[250.0, 150.0, 390.0, 250.0, 250.0, 250.0, 250.0, np.nan]])
    lat = np.zeros_like(physical)
    lat[0, 6] = np.nan
    flag = np.array([[0, 0, 0, 2, 0, 5, 0, 0]], dtype=np.int16)
    sigma = np.array([[0.5, 0.5, 0.5, 0.5, np.nan, 0.5, 0.5, 0.5]])
    ds = _swath(lat, np.zeros_like(physical), physical, T0, qf=(flag, {}))
    ds["sst"].attrs = {"units": "K", "valid_range": np.array([-3000, 18000], dtype=np.int16)}
    ds["sst"].encoding = {"dtype": "int16", "scale_factor": 0.01, "add_offset": 200.0}
    ds["sst"].encoding["_FillValue"] = np.int16(-32768)
    ds["sst_err"] = (("scanline", "pixel"), sigma, {"units": "K"})
    ds.to_netcdf(tmp_path / "s.nc")
    spec = _spec(quality="qf", good_values=(0, 1, 2), bad_bits=0b10)
    read = read_swath(tmp_path / "s.nc", spec, POLAR_LAT, POLAR_LON, "1h")
    assert read.pixels_read == 8
    assert read.rejected_pixels == {
        "no_location": 1,  # pixel 6
        "no_time": 0,
        "quality_flag": 2,  # pixel 3 (bit 2 set), pixel 5 (value 5)
        "missing": 1,  # pixel 7 (fill value)
        "outside_valid_range": 2,  # 150 < 170 and 390 > 380
        "missing_error": 1,  # pixel 4
        "sparse_box": 0,
    }
    assert read.reports["value"].item() == pytest.approx(250.0)
    assert read.reports["error_std"].item() == pytest.approx(0.5)

    # a fixed range overrides the attributes; too few pixels in a box drops it
    variables = {"sst": SwathVariable("skin_temperature", error="sst_err", valid_range=(0, 500))}
    spec = _spec(variables=variables, quality="qf", good_values=(0,), min_pixels=4)
    read = read_swath(tmp_path / "s.nc", spec, POLAR_LAT, POLAR_LON, "1h")
    assert read.rejected_pixels["outside_valid_range"] == 0
    assert read.rejected_pixels["sparse_box"] == 3 and len(read.reports) == 0


def test_times_per_pixel_rounded_and_per_file_attribute(tmp_path):
    times = np.array(
        [["2020-01-01T00:29", "2020-01-01T00:30", "2020-01-01T00:31", "NaT"]],
        dtype="datetime64[ns]",
    )
    ds = _swath(np.zeros((1, 4)), np.zeros((1, 4)), [[1.0, 2.0, 3.0, 4.0]], times)
    ds.to_netcdf(tmp_path / "s.nc")
    variables = {"sst": SwathVariable("skin_temperature", units="K")}
    read = read_swath(tmp_path / "s.nc", _spec(variables=variables), POLAR_LAT, POLAR_LON, "1h")
    by_time = dict(zip(read.reports["time"], read.reports["value"], strict=True))
    assert by_time == {pd.Timestamp("2020-01-01T00"): 1.0, pd.Timestamp("2020-01-01T01"): 2.5}
    assert read.rejected_pixels["no_time"] == 1

    ds = ds.drop_vars("time")
    ds.attrs["time_coverage_start"] = "2020-01-01T05:50:00Z"
    ds.to_netcdf(tmp_path / "f.nc")
    spec = _spec(variables=variables, time="time_coverage_start")
    read = read_swath(tmp_path / "f.nc", spec, POLAR_LAT, POLAR_LON, "6h")
    assert set(read.reports["time"]) == {pd.Timestamp("2020-01-01T06")}


def test_levels_selected_from_a_vertical_dimension_in_pa(tmp_path):
    heights = np.stack([np.full((2, 3), 5500.0), np.full((2, 3), 1500.0), np.full((2, 3), 0.0)])
    ds = xr.Dataset(
        {
            "gh": (("plev", "scanline", "pixel"), heights, {"units": "m"}),
            "lat": (("scanline", "pixel"), np.full((2, 3), 45.0)),
            "lon": (("scanline", "pixel"), np.full((2, 3), -90.0)),
            "time": (("scanline",), np.array([T0, T0], dtype="datetime64[ns]")),
        },
        coords={"plev": ("plev", [50000.0, 85000.0, 100000.0], {"units": "Pa"})},
    )
    ds.to_zarr(tmp_path / "levels.zarr", zarr_format=2)
    spec = SwathSpec(
        {"gh": SwathVariable("geopotential", pixel_error=10.0)},
        latitude="lat",
        longitude="lon",
        vertical="plev",
        levels=(850.0, 500.0),
        error_correlation=0.0,
    )
    read = read_swath(tmp_path / "levels.zarr", spec, POLAR_LAT, POLAR_LON, "1h")
    values = dict(zip(read.reports["level"], read.reports["value"], strict=True))
    assert values == pytest.approx({850.0: G0 * 1500.0, 500.0: G0 * 5500.0})
    errors = read.reports["error_std"].to_numpy()
    np.testing.assert_allclose(errors, G0 * 10.0 / math.sqrt(6))
    assert read.pixels_read == 12 and set(read.reports["longitude"]) == {270.0}

    wrong = SwathSpec(
        {"gh": SwathVariable("geopotential")},
        latitude="lat",
        longitude="lon",
        vertical="plev",
        levels=(700.0,),
    )
    with pytest.raises(ObservationError, match=r"levels\.zarr: variable 'gh' has no level 700"):
        read_swath(tmp_path / "levels.zarr", wrong, POLAR_LAT, POLAR_LON, "1h")


def test_gridded_product_on_the_state_grid_is_kept_cell_by_cell(tmp_path):
    glat, glon = equiangular_grid("16x8")
    lon180 = np.where(glon >= 180, glon - 360, glon)
    order = np.argsort(lon180)
    field = np.random.default_rng(2).normal(290, 5, (2, 8, 16))
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), field[:, ::-1][:, :, order], {"units": "K"})},
        coords={
            "time": pd.date_range("2020-01-01", periods=2, freq="6h"),
            "lat": glat[::-1],  # descending, as many products
            "lon": lon180[order],  # [-180, 180)
        },
    )
    ds.to_netcdf(tmp_path / "grid.nc")
    spec = SwathSpec({"t2m": SwathVariable("2m_temperature")}, latitude="lat", longitude="lon")
    reports = read_swath(tmp_path / "grid.nc", spec, glat, glon, "6h").reports
    assert len(reports) == 2 * 8 * 16
    t = reports["time"].to_numpy() == np.datetime64("2020-01-01T06")
    j = np.searchsorted(glat, reports["latitude"][t])
    i = np.searchsorted(glon, reports["longitude"][t])
    np.testing.assert_array_equal(reports["value"][t], field[1, j, i])


def test_footprint_makes_the_operator_average_exactly_the_box(tmp_path):
    path = tmp_path / "s.nc"
    _hand_swath().to_netcdf(path)
    variables = {"sst": SwathVariable("2m_temperature", error="sst_err")}
    reports = read_swath(path, _spec(variables=variables), POLAR_LAT, POLAR_LON, "1h").reports
    table = make_table(
        time=reports["time"],
        latitude=reports["latitude"],
        longitude=reports["longitude"],
        variable=reports["variable"],
        value=reports["value"],
        error_std=reports["error_std"],
        platform=reports["platform"],
        footprint=reports["footprint"],
    )
    spec = StateSpec(surface=["2m_temperature"])
    times = [pd.Timestamp("2020-01-01")]
    op = ObservationOperator(table, spec, POLAR_LAT, POLAR_LON, times, time_axis=False)
    rows, index, weights = op.entries()
    assert rows.tolist() == [0, 1] and weights.tolist() == [1.0, 1.0]
    cells = [np.flatnonzero(POLAR_LAT == la)[0] * 16 + np.flatnonzero(POLAR_LON == lo)[0]
             for la, lo in zip(reports["latitude"], reports["longitude"], strict=True)]  # fmt: skip
    assert index.tolist() == cells


def test_errors_name_file_and_variable(tmp_path):
    path = tmp_path / "s.nc"
    ds = _hand_swath()
    ds.to_netcdf(path)
    with pytest.raises(ObservationError, match=r"s\.nc: no variables \['sst_err2'\]"):
        variables = {"sst": SwathVariable("skin_temperature", error="sst_err2")}
        read_swath(path, _spec(variables=variables), POLAR_LAT, POLAR_LON, "1h")
    ds["sst"].attrs = {}
    ds.to_netcdf(tmp_path / "nounits.nc")
    with pytest.raises(ObservationError, match=r"nounits\.nc: variable 'sst' has no units"):
        read_swath(tmp_path / "nounits.nc", _spec(), POLAR_LAT, POLAR_LON, "1h")
    ds["sst"].attrs = {"units": "hPa"}
    ds.to_netcdf(tmp_path / "pressure.nc")
    with pytest.raises(ObservationError, match=r"pressure\.nc: variable 'sst'.*cannot be conv"):
        read_swath(tmp_path / "pressure.nc", _spec(), POLAR_LAT, POLAR_LON, "1h")
    ds = _hand_swath()
    ds["time"] = (("scanline",), np.array([1.0, 2.0]))
    ds.to_netcdf(tmp_path / "rawtime.nc")
    with pytest.raises(ObservationError, match=r"rawtime\.nc: time 'time' is not decoded"):
        read_swath(tmp_path / "rawtime.nc", _spec(), POLAR_LAT, POLAR_LON, "1h")
    with pytest.raises(ObservationError, match="no such file"):
        read_swath(tmp_path / "absent.nc", _spec(), POLAR_LAT, POLAR_LON, "1h")
    with pytest.raises(ObservationError, match=r"\[0, 360\)"):
        read_swath(path, _spec(), POLAR_LAT, POLAR_LON - 180.0, "1h")
    with pytest.raises(ObservationError, match="error_correlation"):
        _spec(error_correlation=1.5)
    with pytest.raises(ObservationError, match=r"'sst_temp'.*no canonical units"):
        _spec(variables={"sst": SwathVariable("sst_temp")})
