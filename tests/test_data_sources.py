"""Readers: every known ERA5 layout, written as small local stores, comes back canonical."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from appa.data.layout import LayoutError, check_canonical, normalize
from appa.data.sources import (
    ERA5_PRESETS,
    SelectionError,
    from_earthkit,
    open_era5,
    resolve_store,
)


@pytest.fixture(scope="module")
def reference():
    """A canonical dataset: 6-hourly, 3 levels, 0.25-deg-like grid with poles (coarse)."""
    rng = np.random.default_rng(0)
    time = pd.date_range("2020-01-01", periods=10, freq="6h")
    lat = np.linspace(-90, 90, 7)
    lon = np.arange(0, 360, 30.0)
    level = np.array([250, 500, 850])
    ds = xr.Dataset(
        {
            "temperature": (
                ("time", "level", "latitude", "longitude"),
                rng.normal(250, 10, (10, 3, 7, 12)).astype("f4"),
            ),
            "geopotential": (
                ("time", "level", "latitude", "longitude"),
                rng.normal(5e4, 1e3, (10, 3, 7, 12)).astype("f4"),
            ),
            "2m_temperature": (
                ("time", "latitude", "longitude"),
                rng.normal(280, 5, (10, 7, 12)).astype("f4"),
            ),
        },
        coords={"time": time, "level": level, "latitude": lat, "longitude": lon},
    )
    ds.level.attrs["units"] = "hPa"
    return ds


def _assert_same(actual, expected):
    check_canonical(actual)
    for name in expected.data_vars:
        assert actual[name].dims == expected[name].dims
        np.testing.assert_array_equal(actual[name].values, expected[name].values)
    for c in ("time", "level", "latitude", "longitude"):
        np.testing.assert_array_equal(actual[c].values, expected[c].values)


def test_wb2_high_res_latitude_descending(tmp_path, reference):
    path = tmp_path / "wb2.zarr"
    reference.isel(latitude=slice(None, None, -1)).to_zarr(path, zarr_format=2, consolidated=True)
    _assert_same(open_era5(path), reference)


def test_wb2_low_res_longitude_latitude_order(tmp_path, reference):
    path = tmp_path / "wb2_lowres.zarr"
    stored = reference.transpose("time", "level", "longitude", "latitude")
    stored.to_zarr(path, zarr_format=2, consolidated=True)
    assert xr.open_zarr(path).temperature.dims[-2:] == ("longitude", "latitude")
    _assert_same(open_era5(f"file://{path}"), reference)


def test_arco_valid_time_range(tmp_path, reference):
    path = tmp_path / "arco.zarr"
    # ARCO's axis starts long before the valid data; the attributes bound the valid range.
    early = reference.isel(time=slice(0, 4)).assign_coords(
        time=pd.date_range("1900-01-01", periods=4, freq="6h")
    )
    stored = xr.concat([early, reference], dim="time").isel(latitude=slice(None, None, -1))
    stored.attrs = {"valid_time_start": "2020-01-01", "valid_time_stop": "2020-01-03T12"}
    stored.to_zarr(path, zarr_format=2, consolidated=True)
    _assert_same(open_era5(path), reference)


def test_lat_lon_names_pa_levels_signed_longitude_zarr3(tmp_path, reference):
    path = tmp_path / "forecast.zarr"
    stored = reference.assign_coords(
        longitude=np.where(
            reference.longitude >= 180, reference.longitude - 360, reference.longitude
        )
    ).sortby("longitude")
    stored = stored.rename(latitude="lat", longitude="lon", level="pressure_level")
    stored = stored.assign_coords(pressure_level=stored.pressure_level * 100)
    stored.pressure_level.attrs["units"] = "Pa"
    stored.to_zarr(path, zarr_format=3, consolidated=False)
    ds = open_era5(path)
    assert ds.temperature.chunks is not None  # still lazy (dask) after the rotation
    _assert_same(ds, reference)
    assert ds.level.attrs["units"] == "hPa"
    lazy = open_era5(path, chunks=None)
    assert not isinstance(lazy.temperature.variable._data, np.ndarray)  # nothing read yet
    _assert_same(lazy, reference)


def test_lazy_storage_aligned_chunks(tmp_path, reference):
    path = tmp_path / "wb2.zarr"
    reference.to_zarr(path, zarr_format=2, encoding={"temperature": {"chunks": (2, 3, 7, 12)}})
    ds = open_era5(path, variables=["temperature"])
    assert ds.temperature.chunks[0][0] % 2 == 0  # whole stored time chunks per dask chunk
    assert ds.temperature.chunks[1:] == ((3,), (7,), (12,))


def test_large_store_opens_without_a_huge_graph(tmp_path):
    """A 0.25-deg-sized store (metadata only, no chunk written): open and select cheaply."""
    import zarr

    n = 40_000
    path = tmp_path / "big.zarr"
    group = zarr.open_group(path, mode="w", zarr_format=2)
    dims = ["time", "level", "latitude", "longitude"]
    group.create_array(
        "temperature", shape=(n, 13, 721, 1440), chunks=(1, 13, 721, 1440), dtype="f4",
        fill_value=np.nan, attributes={"_ARRAY_DIMENSIONS": dims},
    )  # fmt: skip
    coords = {
        "time": (np.arange(n, dtype="i8") * 6, {"units": "hours since 1959-01-01"}),
        "level": (np.arange(13, dtype="i8") * 50 + 400, {"units": "hPa"}),
        "latitude": (np.linspace(90, -90, 721), {}),
        "longitude": (np.arange(1440) * 0.25, {}),
    }
    for name, (values, attrs) in coords.items():
        array = group.create_array(
            name, shape=values.shape, dtype=values.dtype, fill_value=None,
            attributes={"_ARRAY_DIMENSIONS": [name], **attrs},
        )  # fmt: skip
        array[:] = values
    zarr.consolidate_metadata(path)
    ds = open_era5(path, time=slice("1980-01-01", "1980-01-31"), levels=[500, 850])
    assert ds.temperature.shape == (124, 2, 721, 1440)
    assert len(ds.temperature.data.__dask_graph__()) < 1000
    assert ds.latitude.values[0] == -90
    # Unselected, the full store is still a lazy graph layer, not 40,000 materialised tasks.
    full = open_era5(path)
    assert full.temperature.shape[0] == n


def test_selection_errors_list_what_the_store_has(tmp_path, reference):
    path = tmp_path / "wb2.zarr"
    reference.to_zarr(path, zarr_format=2)
    with pytest.raises(SelectionError, match=r"specific_humidity.*it has \['2m_temperature'"):
        open_era5(path, variables=["specific_humidity"])
    with pytest.raises(
        SelectionError, match=r"levels \[700\] hPa not found; it has \[250, 500, 850\]"
    ):
        open_era5(path, levels=[500, 700])
    with pytest.raises(SelectionError, match="no time in"):
        open_era5(path, time=slice("1990-01-01", "1990-02-01"))
    with pytest.raises(FileNotFoundError):
        open_era5(tmp_path / "absent.zarr")


def test_remote_urls_and_presets(monkeypatch, reference):
    assert resolve_store("gs://bucket/x.zarr") == ("gs://bucket/x.zarr", {"token": "anon"})
    assert resolve_store("s3://bucket/x.zarr") == ("s3://bucket/x.zarr", {"anon": True})
    assert resolve_store("file:///data/x.zarr") == ("/data/x.zarr", {})
    url, _ = resolve_store("preset:arco-0p25-1h-37")
    assert url == ERA5_PRESETS["arco-0p25-1h-37"] and url.startswith("gs://")
    with pytest.raises(SelectionError, match="unknown ERA5 preset"):
        resolve_store("preset:nope")
    calls = []

    def fake_open_zarr(url, **kwargs):
        calls.append((url, kwargs))
        return reference

    monkeypatch.setattr(xr, "open_zarr", fake_open_zarr)
    ds = open_era5("wb2-5p625-6h", storage_options={"project": "p"})
    assert calls[0][0] == ERA5_PRESETS["wb2-5p625-6h"]
    assert calls[0][1]["storage_options"] == {"token": "anon", "project": "p"}
    assert calls[0][1]["chunks"] is None and calls[0][1]["consolidated"] is True
    check_canonical(ds)


def _earthkit_like(reference):
    """What earthkit's ``to_xarray`` returns: short names, ``number``, descending latitude,
    ``forecast_reference_time``, ``isobaricInhPa``, longitudes in [-180, 180)."""
    members = xr.concat([reference, reference + 1], dim="number").assign_coords(number=[0, 1])
    ds = members.rename(
        temperature="t", geopotential="z", level="isobaricInhPa", time="forecast_reference_time"
    ).rename({"2m_temperature": "2t"})
    ds = ds.isel(latitude=slice(None, None, -1))
    ds = ds.assign_coords(longitude=((ds.longitude + 180) % 360) - 180).sortby("longitude")
    return ds.transpose("number", "forecast_reference_time", ...)


def test_earthkit_layout_mapping(reference):
    ds = from_earthkit(_earthkit_like(reference))
    assert set(ds.data_vars) == {"temperature", "geopotential", "2m_temperature"}
    assert ds.temperature.dims == ("member", "time", "level", "latitude", "longitude")
    assert ds.member.attrs["standard_name"] == "realization"
    _assert_same(ds.isel(member=0), reference)
    np.testing.assert_array_equal(ds.isel(member=1).temperature, reference.temperature + 1)


def test_earthkit_file_source(tmp_path, reference):
    ekd = pytest.importorskip("earthkit.data")
    path = tmp_path / "ek.nc"
    _earthkit_like(reference).to_netcdf(path)
    ds = from_earthkit(ekd.from_source("file", str(path)))
    _assert_same(ds.isel(member=0).load(), reference)


def test_normalize_rejects_bad_layouts(reference):
    with pytest.raises(LayoutError, match="no 'latitude'"):
        normalize(reference.rename(latitude="y"))
    bad = reference.assign_coords(level=reference.level.assign_attrs(units="K"))
    with pytest.raises(LayoutError, match="not pressure"):
        normalize(bad)
    with pytest.raises(LayoutError, match="not in the canonical layout"):
        check_canonical(reference.isel(latitude=slice(None, None, -1)))


def test_earthkit_cfgrib_style_time_and_step(reference):
    """GRIB through cfgrib: analysis ``time`` plus a length-1 ``step``, ``valid_time`` coord."""
    ds = reference.rename(temperature="t", level="isobaricInhPa")[["t"]]
    ds = ds.assign_coords(time=ds.time - np.timedelta64(6, "h")).expand_dims(
        step=[np.timedelta64(6, "h")], axis=1
    )
    ds = ds.assign_coords(valid_time=(("time", "step"), (ds.time + ds.step).values))
    out = from_earthkit(ds)
    np.testing.assert_array_equal(out.time.values, reference.time.values)
    assert out.temperature.dims == ("time", "level", "latitude", "longitude")
    np.testing.assert_array_equal(out.temperature.values, reference.temperature.values)


def test_earthkit_grib_source(tmp_path, reference):
    """A real GRIB file (written with ecCodes) read by earthkit-data, then made canonical."""
    ekd = pytest.importorskip("earthkit.data")
    eccodes = pytest.importorskip("eccodes")
    ref = reference.isel(time=slice(0, 2))
    grid = {
        "Ni": 12, "Nj": 7, "latitudeOfFirstGridPointInDegrees": 90.0,
        "latitudeOfLastGridPointInDegrees": -90.0, "longitudeOfFirstGridPointInDegrees": 0.0,
        "longitudeOfLastGridPointInDegrees": 330.0, "iDirectionIncrementInDegrees": 30.0,
        "jDirectionIncrementInDegrees": 30.0,
    }  # fmt: skip

    def write(f, sample, short, level, member, hour, field):
        h = eccodes.codes_grib_new_from_samples(sample)
        eccodes.codes_set(h, "productDefinitionTemplateNumber", 1)  # ensemble member
        eccodes.codes_set(h, "numberOfForecastsInEnsemble", 2)
        eccodes.codes_set(h, "perturbationNumber", member)
        for key, value in grid.items():
            eccodes.codes_set(h, key, value)
        eccodes.codes_set(h, "dataDate", 20200101)
        eccodes.codes_set(h, "dataTime", hour * 100)
        eccodes.codes_set(h, "shortName", short)
        if level is not None:
            eccodes.codes_set(h, "level", level)
        eccodes.codes_set(h, "packingType", "grid_ieee")  # exact float32
        eccodes.codes_set_values(h, field[::-1].astype(np.float64).ravel())  # north first
        eccodes.codes_write(h, f)
        eccodes.codes_release(h)

    path = tmp_path / "ens.grib"
    with open(path, "wb") as f:
        for member in (0, 1):
            for k, hour in enumerate((0, 6)):
                for p in (250, 500, 850):
                    field = ref.temperature.isel(time=k).sel(level=p).values + member
                    write(f, "regular_ll_pl_grib2", "t", p, member, hour, field)
                field = ref["2m_temperature"].isel(time=k).values + member
                write(f, "regular_ll_sfc_grib2", "2t", None, member, hour, field)
    ds = from_earthkit(ekd.from_source("file", str(path))).load()
    assert ds.temperature.dims == ("member", "time", "level", "latitude", "longitude")
    assert ds["2m_temperature"].dims == ("member", "time", "latitude", "longitude")
    for m in (0, 1):
        _assert_same(
            ds.isel(member=m)[["temperature", "2m_temperature"]],
            ref[["temperature", "2m_temperature"]] + m,
        )


def test_store_config(tmp_path, reference):
    from appa.config import load_config
    from appa.data.sources import StoreConfig

    path = tmp_path / "wb2.zarr"
    reference.to_zarr(path, zarr_format=2, consolidated=True)
    yaml = tmp_path / "source.yaml"
    yaml.write_text(f"store: {path}\nstorage_options: {{}}\n")
    cfg = load_config(StoreConfig, yaml)
    ds = cfg.open(time=slice("2020-01-01T06:00", "2020-01-02"), variables=["temperature"])
    # A date-only end includes that whole day (06:00 on the 1st to 18:00 on the 2nd).
    assert ds.sizes["time"] == 7 and list(ds.data_vars) == ["temperature"]
    # a Store field takes the store's name alone, or the whole config
    from appa.config import StrictModel
    from appa.data.sources import Store

    class _Job(StrictModel):
        truth: Store

    assert load_config(_Job, None, [f"truth={path}"]).truth == StoreConfig(store=str(path))
    full = load_config(_Job, None, [f"truth={{store: {path}, storage_options: {{token: anon}}}}"])
    assert full.truth.storage_options == {"token": "anon"}
    default = load_config(StoreConfig, None, ["store=arco-0p25-1h-37"])
    assert default.url == ERA5_PRESETS["arco-0p25-1h-37"]
