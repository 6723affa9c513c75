"""Depth as a vertical coordinate: the state spec's levels and channel names, the layout of a
sea's store through open_era5, stacking, the operator's ``depth`` rule (exact on profiles linear
in depth), regional grids, and the sea's canonical units and bounds."""

import numpy as np
import pytest
import torch
import xarray as xr

from appa.data.layout import LayoutError, check_canonical, level_key, normalize
from appa.data.sources import SelectionError, open_era5
from appa.data.spec import StateSpec, stack, unstack
from appa.data.toy_sea import ToySeaConfig, generate_toy_sea
from appa.observations.operator import (
    ObservationOperator,
    interpolation_weights,
    vertical_weights,
)
from appa.observations.schema import ObservationError, make_table

DEPTHS = [2.5, 8.2, 15.0, 40.0, 100.0]
SEA = StateSpec(
    surface=["sea_surface_height"],
    atmospheric=["temperature", "oxygen"],
    levels=DEPTHS,
    vertical="depth",
    masked=["sea_surface_height", "temperature", "oxygen"],
)
LAT = np.array([41.0, 42.0, 43.0, 44.0])
LON = np.array([30.0, 31.5, 33.0, 34.5, 36.0])  # a regional run of longitudes
TIME = ["2001-07-01T00:00"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    cfg = ToySeaConfig(nlat=16, nlon=32, n_levels=16, days=3, spinup_days=0, time_chunk=2)
    return generate_toy_sea(cfg, tmp_path_factory.mktemp("sea") / "sea.zarr", progress=False)


# ------------------------------------------------------------------------------ the spec
def test_levels_keep_ints_and_name_depth_channels():
    pressure = StateSpec(atmospheric=["temperature"], levels=[500, 850.0])
    assert pressure.levels == [500, 850] and all(type(p) is int for p in pressure.levels)
    assert pressure.channel_names() == ["temperature@500", "temperature@850"]
    assert pressure.vertical == "pressure"
    assert SEA.channel_names()[:3] == ["sea_surface_height", "temperature@2.5", "temperature@8.2"]
    assert SEA.channels[3] == ("temperature", 15) and type(SEA.channels[3][1]) is int
    assert SEA.num_channels == 1 + 2 * len(DEPTHS)
    assert level_key(500.0) == 500 and level_key(2.5) == 2.5
    with pytest.raises(ValueError, match="positive"):
        StateSpec(atmospheric=["temperature"], levels=[0.0, 2.5], vertical="depth")
    with pytest.raises(ValueError, match="repeat"):
        StateSpec(atmospheric=["temperature"], levels=[15, 15.0], vertical="depth")
    with pytest.raises(ValueError, match="vertical"):
        StateSpec(atmospheric=["temperature"], levels=[500], vertical="height")
    # a spec travels as JSON and comes back the same
    assert StateSpec(**SEA.model_dump(mode="json")) == SEA


# ------------------------------------------------------------------------------ the layout
def test_a_sea_store_round_trips_through_open_era5_and_stack(store):
    raw = xr.open_zarr(store)
    levels = raw["level"].values.tolist()
    spec = StateSpec(
        surface=["sea_surface_height"],
        atmospheric=["temperature", "salinity", "oxygen", "chlorophyll"],
        levels=levels,
        vertical="depth",
        masked=["sea_surface_height", "temperature", "salinity", "oxygen", "chlorophyll"],
    )
    ds = open_era5(store, spec=spec).load()
    check_canonical(ds)
    assert ds["level"].attrs["units"] == "m" and ds["level"].attrs["positive"] == "down"
    assert ds["level"].values.tolist() == levels
    assert spec.channel_names()[1] == f"temperature@{levels[0]!r}"
    x, mask = stack(ds, spec, fill_value=0.0, dtype=torch.float64)
    assert x.shape == (3, spec.num_channels, 16, 32)
    # NaN only on land and below the sea floor: the sea mask, level by level
    sea = raw["sea_mask"].values.astype(bool)
    np.testing.assert_array_equal(mask[0, 1 : 1 + len(levels)].numpy(), sea)
    back = unstack(x, spec, {k: ds[k].values for k in ("time", "latitude", "longitude")})
    check_canonical(back)
    assert back["level"].values.tolist() == levels and back["level"].attrs["units"] == "m"
    again, _ = stack(back, spec, dtype=torch.float64)
    torch.testing.assert_close(again, x, rtol=0, atol=0)
    np.testing.assert_array_equal(
        back["oxygen"].values[:, :, sea[0] & sea[-1]],
        ds["oxygen"].values[:, :, sea[0] & sea[-1]],
    )
    # a few levels, by value; a level the store lacks is named with its units
    part = open_era5(store, variables=["oxygen"], levels=[levels[0], levels[3]])
    assert part["level"].values.tolist() == [levels[0], levels[3]]
    with pytest.raises(SelectionError, match=r"levels \[3\] m not found"):
        open_era5(store, variables=["oxygen"], levels=[3.0])


def test_pressure_and_depth_never_mix(store):
    ds = open_era5(store, variables=["temperature"], chunks=None)
    levels = ds["level"].values.tolist()
    pressure_spec = StateSpec(atmospheric=["temperature"], levels=levels[:2])
    with pytest.raises(ValueError, match="levels are depth"):
        stack(ds.load(), pressure_spec)
    atmosphere = xr.Dataset(
        {"temperature": (("level", "latitude", "longitude"), np.zeros((2, 4, 5)))},
        coords={"level": [500, 850], "latitude": LAT, "longitude": LON},
    )
    atmosphere["level"].attrs = {"units": "hPa", "positive": "down"}  # CF pressure says down too
    assert normalize(atmosphere)["level"].attrs["units"] == "hPa"
    up = {"units": "m", "positive": "up"}
    upward = atmosphere.assign_coords(level=("level", [-5.0, -10.0], up))
    with pytest.raises(LayoutError, match="positive down"):
        normalize(upward)
    with pytest.raises(LayoutError, match="not pressure"):
        normalize(atmosphere.assign_coords(level=("level", [5.0, 10.0], {"units": "km"})))


# ------------------------------------------------------------------------------ operator
def table(depths, variable="temperature", latitude=None, longitude=None):
    n = len(depths)
    return make_table(
        time=TIME * n,
        latitude=np.linspace(41.2, 43.7, n) if latitude is None else latitude,
        longitude=np.linspace(30.4, 35.8, n) if longitude is None else longitude,
        variable=[variable] * n,
        level=depths,
        value=np.zeros(n),
        error_std=0.01,
        platform="argo",
    )


def linear_state(a=290.0, b=-0.05, c=0.01) -> torch.Tensor:
    """(1, 1, C, H, W): temperature ``a + b z + c (lon - 30)``, oxygen ``300 - z``, SSH 0.1."""
    x = torch.zeros(1, 1, SEA.num_channels, LAT.size, LON.size, dtype=torch.float64)
    x[:, :, 0] = 0.1
    for k, z in enumerate(DEPTHS):
        x[:, :, 1 + k] = torch.as_tensor(a + b * z + c * (LON - 30.0))[None, :]
        x[:, :, 1 + len(DEPTHS) + k] = 300.0 - z
    return x


def test_depth_rule_weights_are_linear_in_depth():
    channel, weight = vertical_weights(table([5.0, 15.0, 70.0]), SEA, "depth")
    f = (5.0 - 2.5) / (8.2 - 2.5)
    read = {int(c): w for c, w in zip(channel[0], weight[0], strict=True)}
    np.testing.assert_allclose([read[1], read[2]], [1 - f, f])
    assert channel[1, 0] == 3 and weight[1].tolist() == [1.0, 0.0]
    np.testing.assert_allclose(sorted(weight[2]), sorted([0.5, 0.5]))


def test_a_profile_linear_in_depth_is_observed_exactly():
    depths = [2.5, 5.0, 8.2, 11.7, 27.5, 99.0, 100.0]
    lon = np.linspace(30.4, 35.8, len(depths))
    op = ObservationOperator(
        table(depths, longitude=lon), SEA, LAT, LON, TIME, vertical="depth", dtype=torch.float64
    )
    got = op(linear_state()).numpy()[0]
    want = 290.0 - 0.05 * np.array(depths) + 0.01 * (lon - 30.0)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    oxygen = ObservationOperator(
        table([3.0, 60.0], "oxygen"), SEA, LAT, LON, TIME, vertical="depth", dtype=torch.float64
    )
    np.testing.assert_allclose(oxygen(linear_state()).numpy()[0], [297.0, 240.0], rtol=1e-12)


def test_depths_outside_the_state_or_rules_of_the_other_kind_are_refused():
    with pytest.raises(ObservationError, match=r"5\.0 m; the state has levels"):
        vertical_weights(table([5.0]), SEA, "exact")
    with pytest.raises(ObservationError, match="outside the range"):
        vertical_weights(table([150.0]), SEA, "depth")
    with pytest.raises(ObservationError, match="outside the range"):
        vertical_weights(table([1.0]), SEA, "depth")
    with pytest.raises(ObservationError, match="levels are depth"):
        vertical_weights(table([5.0]), SEA, "log_pressure")
    pressure = StateSpec(atmospheric=["temperature"], levels=[850, 500])
    with pytest.raises(ObservationError, match="levels are pressure"):
        vertical_weights(table([700.0]), pressure, "depth")
    # on a level, every rule reads it alone
    for rule in ("exact", "depth"):
        channel, weight = vertical_weights(table([8.2]), SEA, rule)
        assert channel[0, 0] == 2 and weight[0].tolist() == [1.0, 0.0]


def test_regional_grids_interpolate_without_wrapping():
    lat, lon = np.array([41.5, 43.9]), np.array([30.2, 35.99])
    index, weights = interpolation_weights(lat, lon, LAT, LON)
    field = (LAT[:, None] * 2.0 + LON[None, :] * 3.0).reshape(-1)
    np.testing.assert_allclose((field[index] * weights).sum(1), 2.0 * lat + 3.0 * lon)
    # half a cell beyond the edge: the edge column; further: refused by name
    index, weights = interpolation_weights(np.array([42.0]), np.array([29.4]), LAT, LON)
    np.testing.assert_allclose((field[index] * weights).sum(1), [2.0 * 42.0 + 3.0 * 30.0])
    with pytest.raises(ObservationError, match="outside the grid's longitudes"):
        interpolation_weights(np.array([42.0]), np.array([40.0]), LAT, LON)


# ------------------------------------------------------------------------------ units
def test_the_seas_units_and_bounds():
    from appa.observations.ingest.convert import to_si
    from appa.observations.screening import CANONICAL_UNITS, check_units, physical_bounds

    assert CANONICAL_UNITS["salinity"] == "g kg**-1"
    assert CANONICAL_UNITS["oxygen"] == "mmol m**-3"
    assert CANONICAL_UNITS["chlorophyll"] == "mg m**-3"
    assert CANONICAL_UNITS["sea_surface_height"] == "m"
    assert physical_bounds("salinity") == (0.0, 45.0)
    assert physical_bounds("oxygen") == (0.0, 500.0)
    assert physical_bounds("chlorophyll") == (0.0, 100.0)
    assert physical_bounds("sea_surface_height") == (-5.0, 5.0)
    np.testing.assert_allclose(to_si(np.array([1.0]), "umol/l", "oxygen"), [1.0])
    np.testing.assert_allclose(to_si(np.array([0.018]), "kg/kg", "salinity"), [18.0])
    np.testing.assert_allclose(to_si(np.array([2.0]), "ug/l", "chlorophyll"), [2.0])
    t = table([8.2], "salinity")
    t["value"].attrs["units"] = "g kg**-1"
    check_units(t)  # as the toy sea writes it
    t["value"].attrs["units"] = "kg/kg"
    with pytest.raises(ObservationError, match="g kg"):
        check_units(t)
