"""Output archives: template, unit plan, region writes, completion records, finalisation,
resumption checks and the errors for bad input (no Ray here: the reliability catalogue's
test_faults_pool.py runs actors)."""

from __future__ import annotations

import json
import pickle
import uuid

import numpy as np
import pytest
import xarray as xr
import zarr
from pool_utils import LATITUDE, LONGITUDE, SPEC, expected, fields, template, times

from appa.io.archive import (
    Archive,
    ArchiveError,
    check_layout,
    config_hash,
    create_archive,
)

CONFIG = {"job": "reanalysis", "members": 2, "seed": 7}


def _new(path, tmpl=None, **kwargs):
    kwargs = {"units": {"member": 1, "time": 4}, "config": CONFIG,
              "allow_nan": ["sea_surface_temperature"], **kwargs}  # fmt: skip
    return create_archive(path, template() if tmpl is None else tmpl, **kwargs)


def _write_all(archive: Archive, seed: int = 7) -> None:
    for unit in archive.pending_units():
        assert archive.write_unit(unit, fields(archive.coords(unit), seed))


@pytest.mark.parametrize("where", ["local", "memory", "memory+options"])
def test_all_units_then_finalize_equals_expected(tmp_path, where):
    path = str(tmp_path / "a.zarr") if where == "local" else f"memory://{uuid.uuid4().hex}.zarr"
    # storage options travel with the archive (an fsspec store), as gs:// credentials would
    options = {"skip_instance_cache": False} if where.endswith("options") else None
    provenance = {"seeds": {"base": 7}, "checkpoint_sha256": "abc", "observations": ["stations"]}
    archive = _new(path, provenance=provenance, storage_options=options)
    if options:
        archive = pickle.loads(pickle.dumps(archive))  # as a Ray actor receives it
        assert archive.storage_options == options
    assert [u.key for u in archive.units] == [
        "member=0:1,time=0:4", "member=0:1,time=4:8", "member=1:2,time=0:4", "member=1:2,time=4:8",
    ]  # fmt: skip
    assert archive.pending_units() == archive.units and not archive.complete
    if where == "local":  # the template wrote metadata and coordinates, no data chunk
        assert sorted(p.name for p in (tmp_path / "a.zarr" / "geopotential").iterdir()) == [
            ".zarray", ".zattrs",
        ]  # fmt: skip

    first = archive.units[1]
    assert archive.write_unit(first, fields(archive.coords(first), 7))
    # before finalisation: readable through plain xarray (no consolidated metadata yet);
    # unwritten cells are NaN, the written unit holds its values
    partial = xr.open_zarr(path, consolidated=False, storage_options=options)
    want = expected(template(), 7)
    got = partial["2m_temperature"].isel(first.region).values
    np.testing.assert_array_equal(got, want["2m_temperature"].isel(first.region).values)
    assert np.isnan(partial["2m_temperature"].isel(member=1).values).all()
    assert partial.attrs["appa_status"] == "writing"
    assert [u.index for u in archive.pending_units()] == [0, 2, 3]

    _write_all(archive)
    archive.finalize()
    assert archive.complete
    ds = xr.open_zarr(path, storage_options=options)  # consolidated metadata now
    assert "appa_units" not in ds.variables
    xr.testing.assert_identical(ds.load().drop_attrs(), want.load().drop_attrs())
    for name in ds.variables:
        for key, value in want[name].attrs.items():
            assert ds[name].attrs[key] == value, (name, key)
    assert ds["member"].attrs["standard_name"] == "realization"
    assert ds["2m_temperature"].attrs["units"] == "K"
    assert ds["time"].dtype == np.dtype("datetime64[ns]")
    assert json.loads(ds.attrs["appa_config"]) == CONFIG
    assert ds.attrs["appa_config_hash"] == config_hash(CONFIG)
    assert json.loads(ds.attrs["seeds"]) == {"base": 7}
    assert ds.attrs["checkpoint_sha256"] == "abc"
    assert ds.attrs["appa_status"] == "complete" and ds.attrs["title"] == "pool test"
    # chunk-aligned: one chunk per unit along member and time, whole fields otherwise
    assert ds["geopotential"].encoding["chunks"] == (1, 4, 2, 4, 8)
    records = zarr.open_group(path, mode="r", storage_options=options)["appa_units"]
    assert records["done"].chunks == (1,)


def test_forecast_layout_with_lead_time_and_uneven_units(tmp_path):
    lead = np.arange(3) * np.timedelta64(6, "h")
    tmpl = template(members=3, steps=5, lead_time=lead)
    archive = _new(tmp_path / "f.zarr", tmpl, units={"member": 2, "time": 2}, chunks={"time": 1})
    # units: members [0,2) [2,3) x times [0,2) [2,4) [4,5); lead_time whole in each unit
    assert len(archive.units) == 6
    assert archive.units[-1].key == "member=2:3,time=4:5,lead_time=0:3"
    for unit in archive.units:
        coords = archive.coords(unit)
        assert coords["lead_time"].size == 3
        assert archive.write_unit(unit, fields(coords, 1))
    archive.finalize()
    ds = xr.open_zarr(tmp_path / "f.zarr")
    assert ds["geopotential"].dims == ("member", "time", "lead_time", "level", "latitude",
                                       "longitude")  # fmt: skip
    assert ds["lead_time"].dtype.kind == "m"
    assert ds["2m_temperature"].encoding["chunks"] == (2, 1, 3, 4, 8)
    t2m = ds["2m_temperature"].isel(member=2, time=4, lead_time=2).values
    hours = (times(5)[4] - times(1)[0]) / np.timedelta64(1, "h")
    field2d = np.cos(np.deg2rad(LATITUDE))[:, None] + 0.01 * LONGITUDE
    np.testing.assert_allclose(t2m, 1000 + 200 + hours + 0.5 * 12 + field2d, rtol=1e-6)
    xr.testing.assert_identical(ds.load().drop_attrs(), expected(tmpl, 1).load().drop_attrs())


def test_reopen_resumes_same_config_and_refuses_another(tmp_path):
    path = tmp_path / "a.zarr"
    archive = _new(path)
    unit = archive.units[2]
    archive.write_unit(unit, fields(archive.coords(unit), 7))
    again = _new(path)  # same config: the existing archive, to resume
    assert [u.index for u in again.pending_units()] == [0, 1, 3]
    assert Archive.open(path, config=CONFIG).config_hash == config_hash(CONFIG)
    # key order does not change the hash
    assert config_hash(dict(reversed(CONFIG.items()))) == config_hash(CONFIG)

    other = {**CONFIG, "seed": 8}
    with pytest.raises(ArchiveError, match=r"another config \(hash [0-9a-f]{64}, this config"):
        _new(path, config=other)
    with pytest.raises(ArchiveError, match="another config"):
        Archive.open(path, config=other)
    with pytest.raises(ArchiveError, match=r"another structure .*sizes"):
        _new(path, template(members=3))
    with pytest.raises(ArchiveError, match=r"another structure .*unit"):
        _new(path, units={"member": 2, "time": 4})
    # overwrite: a fresh archive of the other config
    fresh = _new(path, config=other, overwrite=True)
    assert fresh.pending_units() == fresh.units
    assert np.isnan(fresh.open_dataset()["2m_temperature"].values).all()
    assert fresh.config_hash == config_hash(other)


def test_existing_store_that_is_not_an_archive_is_refused(tmp_path):
    template().to_zarr(tmp_path / "plain.zarr", compute=False, zarr_format=2)
    with pytest.raises(ArchiveError, match="not an Appa archive"):
        _new(tmp_path / "plain.zarr")
    with pytest.raises(ArchiveError, match="not an Appa archive"):
        Archive(tmp_path / "plain.zarr")
    with pytest.raises(ArchiveError, match="no archive at"):
        Archive(tmp_path / "missing.zarr")


def test_bad_unit_data_is_refused_and_nothing_is_written(tmp_path):
    archive = _new(tmp_path / "a.zarr")
    unit = archive.units[1]
    coords = archive.coords(unit)
    good = fields(coords, 7)

    def refused(data, match):
        with pytest.raises(ArchiveError, match=match):
            archive.write_unit(unit, data)

    refused({k: v for k, v in good.items() if k != "geopotential"}, r"missing \['geopotential'\]")
    refused({**good, "10m_u_component_of_wind": good["2m_temperature"]}, "unexpected")
    refused({**good, "2m_temperature": good["2m_temperature"][:, :3]}, r"2m_temperature has shape")
    refused({**good, "geopotential": good["geopotential"][:, :, :1]}, r"geopotential has shape")
    dims = ("member", "time", "latitude", "longitude")
    ds = xr.Dataset({k: (archive.open_dataset()[k].dims, v) for k, v in good.items()})
    refused(ds.transpose("time", "member", ...), r"dims \('time', 'member'")
    shifted = ds.assign_coords(time=coords["time"] - np.timedelta64(6, "h"))
    refused(shifted, r"time coordinate differs")
    bad = good["2m_temperature"].copy()
    bad[0, 1, 2, 3] = np.nan
    refused({**good, "2m_temperature": bad}, r"2m_temperature holds 1 NaN/inf values; refusing")
    inf = good["sea_surface_temperature"].copy()
    inf[0, 0, 0, 0] = np.inf
    refused({**good, "sea_surface_temperature": inf}, "sea_surface_temperature holds infinite")
    assert not archive.done_mask().any()
    assert np.isnan(archive.open_dataset()["2m_temperature"].values).all()

    # the dataset form with matching coordinates is accepted; NaN over SST "land" is allowed
    assert np.isnan(good["sea_surface_temperature"]).any()
    assert archive.write_unit(unit, ds.assign_coords(time=coords["time"]))
    assert archive.done_mask().tolist() == [False, True, False, False]
    # a done unit is never rewritten: the second write is skipped, the data stay
    assert not archive.write_unit(unit, {k: v + 1 for k, v in good.items()})
    stored = archive.open_dataset()["2m_temperature"].isel(unit.region).values
    np.testing.assert_array_equal(stored, good["2m_temperature"])
    assert dims == archive.open_dataset()["2m_temperature"].dims


def test_finalize_refuses_an_unfinished_archive(tmp_path):
    archive = _new(tmp_path / "a.zarr")
    unit = archive.units[0]
    archive.write_unit(unit, fields(archive.coords(unit), 7))
    with pytest.raises(ArchiveError, match=r"3 of 4 units are not done .*member=0:1,time=4:8"):
        archive.finalize()
    assert not archive.complete


def test_templates_outside_the_layout_are_refused(tmp_path):
    ds = template()
    check_layout(ds)
    cases = [
        (ds.assign(geopotential=ds["geopotential"].astype("float64")), "is float64"),
        (ds.transpose("time", "member", ...), r"'2m_temperature' has dims \('time', 'member'"),
        (ds.isel(latitude=slice(None, None, -1)), "latitude must be ascending"),
        (ds.assign_coords(longitude=ds["longitude"] - 180), r"longitude must be .*\[0, 360\)"),
        (ds.assign_coords(member=[1, 2]), "member must be the integers 0..M-1"),
        (ds.rename(time="valid_time"), "dimension 'valid_time' is not one of"),
        (ds.drop_vars(list(ds.data_vars)), "no data variables"),
    ]
    for bad, match in cases:
        with pytest.raises(ArchiveError, match=match):
            create_archive(tmp_path / "x.zarr", bad, units={"member": 1}, config=CONFIG)
    with pytest.raises(ArchiveError, match=r"chunks along 'time' \(3\) must divide the unit"):
        _new(tmp_path / "x.zarr", chunks={"time": 3})
    with pytest.raises(ArchiveError, match=r"units may split only .* not \['latitude'\]"):
        _new(tmp_path / "x.zarr", units={"latitude": 2})
    with pytest.raises(ArchiveError, match=r"allow_nan names variables \['precip'\]"):
        _new(tmp_path / "x.zarr", allow_nan=["precip"])
    assert not (tmp_path / "x.zarr").exists()
    assert SPEC.num_channels == 4
