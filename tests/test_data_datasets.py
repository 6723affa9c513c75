"""State spec stacking, statistics over a training period, and window datasets."""

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from torch.utils.data import DataLoader

from appa.data.datasets import (
    WindowDataset,
    WindowStoreDataset,
    window_starts,
    write_window_store,
)
from appa.data.grids import area_weights
from appa.data.sources import open_era5
from appa.data.spec import StateSpec, stack, unstack
from appa.data.stats import Statistics, compute_statistics, default_stats_path
from appa.data.toy_earth import ToyEarthConfig, write_toy_earth
from appa.dates import date_features

SPEC = StateSpec(
    surface=["2m_temperature", "sea_surface_temperature"],
    atmospheric=["geopotential", "u_component_of_wind"],
    levels=[500, 250],
    grid="64x32",
    masked=["sea_surface_temperature"],
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "toy.zarr"
    cfg = ToyEarthConfig(years=0.05, spinup_days=3, time_chunk=8)
    return write_toy_earth(cfg, path, progress=False)


def test_spec_channels_and_validation():
    assert SPEC.channel_names() == [
        "2m_temperature",
        "sea_surface_temperature",
        "geopotential@500",
        "geopotential@250",
        "u_component_of_wind@500",
        "u_component_of_wind@250",
    ]
    assert SPEC.num_channels == 6
    assert SPEC.channel_mask() == [False, True, False, False, False, False]
    with pytest.raises(ValueError, match="need levels"):
        StateSpec(atmospheric=["temperature"])
    with pytest.raises(ValueError, match="repeat"):
        StateSpec(surface=["2m_temperature", "2m_temperature"])
    with pytest.raises(ValueError, match="not in the spec"):
        StateSpec(surface=["2m_temperature"], masked=["sea_surface_temperature"])


def test_stack_unstack_exact(store):
    ds = open_era5(store, spec=SPEC).load()
    x, mask = stack(ds, SPEC)
    assert x.shape == (ds.sizes["time"], 6, 32, 64) and mask is None
    np.testing.assert_array_equal(x[:, 3].numpy(), ds.geopotential.sel(level=250).values)
    back = unstack(x, SPEC, {k: ds[k].values for k in ("time", "latitude", "longitude")})
    for name in SPEC.variables:
        np.testing.assert_array_equal(back[name].values, ds[name].values)  # NaN == NaN here
    # Explicit NaN handling: filled with a mask, or an error outside masked variables.
    filled, valid = stack(ds, SPEC, fill_value=0.0)
    land = open_era5(store, variables=["land_sea_mask"]).land_sea_mask.values > 0.5
    assert not torch.isnan(filled).any()
    assert (~valid[:, 1]).any() and valid[:, 0].all()
    assert np.array_equal(~valid[0, 1].numpy(), land)
    unmasked = SPEC.model_copy(update={"masked": []})
    with pytest.raises(ValueError, match=r"NaN in channels \['sea_surface_temperature'\]"):
        stack(ds, unmasked)
    with pytest.raises(ValueError, match="the spec says 128x64"):
        stack(ds, SPEC.model_copy(update={"grid": "128x64"}))


def test_statistics_use_the_training_period_only(store, tmp_path):
    ds = open_era5(store, spec=SPEC)
    times = pd.DatetimeIndex(ds.time.values)
    period = (str(times[0]), str(times[39]))
    stats = compute_statistics(ds, SPEC, period)
    assert stats.count == 40 and stats.channels == SPEC.channel_names()
    # Against a direct numpy computation over the same 40 states.
    w = area_weights(ds.latitude.values)[None, :, None]
    z = ds.geopotential.sel(level=250).values[:40].astype(np.float64)
    mean = (z * w).mean() / w.mean()
    std = np.sqrt((((z - mean) ** 2) * w).mean() / w.mean())
    assert stats.mean[3] == pytest.approx(mean, rel=1e-10)
    assert stats.std[3] == pytest.approx(std, rel=1e-8)
    sst = ds.sea_surface_temperature.values[:40].astype(np.float64)
    wb = np.broadcast_to(w, sst.shape)
    valid = ~np.isnan(sst)
    sst_mean = (sst[valid] * wb[valid]).sum() / wb[valid].sum()
    assert stats.mean[1] == pytest.approx(sst_mean, rel=1e-10)
    # The test period does not leak: corrupting it leaves the statistics unchanged.
    corrupted = ds.copy()
    corrupted["geopotential"] = ds.geopotential.where(ds.time <= times[39], 1e9)
    again = compute_statistics(corrupted, SPEC, period)
    np.testing.assert_array_equal(again.mean, stats.mean)
    full = compute_statistics(corrupted, SPEC, (str(times[0]), str(times[-1])))
    assert full.mean[2] > 1e6
    # Stored next to the data and read back; standardisation inverts exactly.
    path = stats.save(default_stats_path(store))
    assert path == store.with_name("toy.zarr.stats.json")
    loaded = Statistics.load(path)
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    x = torch.randn(2, 6, 32, 64, dtype=torch.float64) * 100 + 5e4
    torch.testing.assert_close(loaded.unstandardize(loaded.standardize(x)), x)
    with pytest.raises(ValueError, match="holds no time"):
        compute_statistics(ds, SPEC, ("1990-01-01", "1990-12-31"))
    with pytest.raises(ValueError, match="not declared masked"):
        compute_statistics(ds, SPEC.model_copy(update={"masked": []}), period)


def test_date_features():
    f = date_features(pd.DatetimeIndex(["2001-01-01T00:00", "2001-07-02T12:00", "2000-01-01T06"]))
    np.testing.assert_allclose(f[0], [0, 1, 0, 1], atol=1e-6)
    assert f[1, 3] == pytest.approx(-1, abs=1e-6)  # 12:00
    assert f[1, 1] == pytest.approx(-1, abs=1e-3)  # half-way through the year
    assert f[2, 2] == pytest.approx(1, abs=1e-6)  # 06:00


def test_window_starts_skip_gaps():
    t = pd.date_range("2000-01-01", periods=10, freq="6h").delete(5).values
    starts = window_starts(t, 3)
    assert starts.tolist() == [0, 1, 2, 5, 6]
    assert window_starts(t, 3, stride=2).tolist() == [0, 2, 6]


def test_window_dataset(store):
    ds = open_era5(store, spec=SPEC)
    times = pd.DatetimeIndex(ds.time.values)
    stats = compute_statistics(ds, SPEC, (str(times[0]), str(times[39])))
    data_period = (str(times[0]), str(times[39]))
    data = WindowDataset(store, SPEC, stats, window=4, period=data_period)
    assert len(data) == 37
    item = data[5]
    assert item["state"].shape == (4, 6, 32, 64) and item["state"].dtype == torch.float32
    assert item["date"].shape == (4, 4) and item["mask"].shape == (4, 6, 32, 64)
    x, _ = stack(ds.isel(time=slice(5, 9)).load(), SPEC)
    expected = (x - torch.tensor(stats.mean, dtype=torch.float32)[:, None, None]) / torch.tensor(
        stats.std, dtype=torch.float32
    )[:, None, None]
    valid = item["mask"]
    torch.testing.assert_close(item["state"][valid], expected[valid])
    assert (item["state"][~valid] == 0).all()
    np.testing.assert_array_equal(item["time"].numpy(), times[5:9].asi8)
    with pytest.raises(IndexError):
        data[len(data)]
    # Multi-process loading gives the same windows as serial reading.
    loader = DataLoader(data, batch_size=8, num_workers=2, shuffle=False)
    batches = torch.cat([b["state"] for b in loader])
    serial = torch.stack([data[i]["state"] for i in range(len(data))])
    torch.testing.assert_close(batches, serial)
    # the span (40 states, 2 MB) is served from memory; item by item from the store, the same
    streamed = WindowDataset(store, SPEC, stats, window=4, period=data_period, memory_limit=0)
    assert data.in_memory and not streamed.in_memory and data.span == (0, 40)
    for i in (0, 17, len(data) - 1):
        assert all(torch.equal(data[i][k], streamed[i][k]) for k in item)
    data[0]["state"].zero_()  # items are copies, never views of the cache
    assert torch.equal(data[0]["state"], streamed[0]["state"])
    with pytest.raises(ValueError, match="no window"):
        WindowDataset(store, SPEC, stats, window=400)
    # the cells the data hold: all but sea-surface temperature over land
    land = np.isnan(ds["sea_surface_temperature"].isel(time=0).values)
    assert land.any() and (~land).any()
    valid = data.valid_cells(samples=5)
    assert valid.shape == (6, 32, 64) and valid.dtype == bool
    np.testing.assert_array_equal(valid[1], ~land)
    assert np.delete(valid, 1, axis=0).all()
    unmasked = SPEC.model_copy(update={"surface": ["2m_temperature"], "masked": []})
    assert WindowDataset(store, unmasked, window=1).valid_cells() is None


def test_window_store_dataset_reads_latent_windows_by_dates(tmp_path):
    times = pd.date_range("2000-01-01", periods=12, freq="6h")
    z = np.random.default_rng(0).normal(size=(12, 4, 3, 5)).astype("f4")
    path = write_window_store(
        str(tmp_path / "latent.zarr"), z, times.values, [-45.0, 0.0, 45.0], variable="latent"
    )
    data = WindowStoreDataset(path, window=5, variable="latent", stride=2)
    assert len(data) == 4 and data.shape[1:] == (4, 3, 5)
    item = data[1]
    np.testing.assert_array_equal(item["latent"].numpy(), z[2:7])
    np.testing.assert_allclose(item["date"].numpy(), date_features(times[2:7]))
    # a period of dates is the same windows as the indices it covers, inclusive
    later = WindowStoreDataset(path, window=5, variable="latent", period=("2000-01-01T12", None))
    np.testing.assert_array_equal(later[0]["latent"].numpy(), z[2:7])
    assert later.span == (2, 12)
    with pytest.raises(KeyError, match="no array 'z'"):
        WindowStoreDataset(path, window=1, variable="z")
    with pytest.raises(ValueError, match="holds no time of the store"):
        WindowStoreDataset(path, window=1, variable="latent", period=("2001-01-01", "2001-02-01"))


def test_stack_with_members(store):
    ds = open_era5(store, spec=SPEC).isel(time=slice(0, 3)).load()
    ens = xr.concat([ds, ds + 1], dim="member").transpose("member", ...)
    x, _ = stack(ens, SPEC)
    assert x.shape == (2, 3, 6, 32, 64)
    single, _ = stack(ds, SPEC)
    torch.testing.assert_close(x[1], single + 1, equal_nan=True)
    coords = {k: ens[k].values for k in ("member", "time", "latitude", "longitude")}
    back = unstack(x, SPEC, coords)
    assert back.geopotential.dims == ("member", "time", "level", "latitude", "longitude")
    np.testing.assert_array_equal(back.geopotential.values, ens.geopotential.values)
