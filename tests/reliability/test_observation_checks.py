"""Every observation a job reads is used or accounted for, and implausible values are caught
before they are assimilated: the time rule (an observation off the state times belongs to its
nearest state), days without observations, physical bounds, the prior's climatology, declared
units and the usual unit mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from appa.assimilation import tasks
from appa.assimilation.screening import ObservationSummary
from appa.assimilation.units import AssimilationWorker, check_observations, job_times, prior_layout
from appa.cli import app
from appa.data.spec import StateSpec
from appa.jobs.assimilate import AssimilateConfig, plan_archive
from appa.observations import ObservationOperator
from appa.observations.schema import (
    ObservationError,
    make_table,
    read_observations,
    write_observations,
)
from appa.observations.screening import OFF_TIME, OUTSIDE_PERIOD, assign_times


def _store(table: xr.Dataset, path: Path) -> str:
    write_observations(table, path)
    return str(path)


def _edited(world: dict, path: Path, **edits) -> str:
    """A copy of the world's observation store with ``time`` shifted by ``shift`` and the
    values of ``variable`` mapped by ``value``."""
    table = read_observations(world["observations"]).load()
    if "shift" in edits:
        table["time"] = table["time"] + np.timedelta64(pd.Timedelta(edits["shift"]))
    if "variable" in edits:
        value = table["value"].values.copy()
        at = table["variable"].values.astype(str) == edits["variable"]
        value[at] = edits["value"](value[at])
        table["value"] = ("obs", value)
    return _store(table, path)


def _summary(archive) -> ObservationSummary:
    summary = ObservationSummary.from_attributes(archive.open_dataset().attrs)
    assert summary is not None
    return summary


def _t2m_rmse(result: dict, world: dict, times: pd.DatetimeIndex) -> float:
    truth = xr.open_zarr(world["truth"])["2m_temperature"].sel(time=times.values).values
    return float(np.sqrt(np.mean((result["2m_temperature"].mean(0) - truth) ** 2)))


# --- the time rule -------------------------------------------------------------------------


def test_an_observation_between_two_states_belongs_to_the_nearest_one_and_halfway_to_the_later():
    """An observation off the 6-hourly states is assigned to its nearest state, one exactly
    halfway to the later state; past the last state it belongs to no state of the job; with a
    tolerance it is dropped as off time, never silently."""
    states = pd.date_range("2003-03-01T00:00", periods=3, freq="6h")  # 00, 06, 12
    at = pd.to_datetime(
        [
            "2003-03-01T02:00",  # nearer 00
            "2003-03-01T03:00",  # halfway: 06
            "2003-03-01T04:00",  # nearer 06
            "2003-02-28T21:00",  # halfway before the first state: 00
            "2003-03-01T13:00",  # nearer 12
            "2003-03-01T15:00",  # halfway after the last: 18, not a state
            "2003-03-01T20:00",  # nearer 18
        ]
    )
    out = OUTSIDE_PERIOD
    assert assign_times(at, states, "3h").tolist() == [0, 1, 1, 0, 2, out, out]
    off = OFF_TIME
    assert assign_times(at, states, "1h").tolist() == [off, off, off, off, 2, out, out]
    assert assign_times(at, states, "0s")[:3].tolist() == [OFF_TIME] * 3
    # the settings' default: the nearest state within half the step
    assert tasks.SamplingConfig().tolerance(pd.Timedelta("6h")) == pd.Timedelta("3h")
    with pytest.raises(ValueError, match="'exact' takes no time_tolerance"):
        tasks.SamplingConfig(time_rule="exact", time_tolerance="1h")
    doc = {"start": "2003-03-01", "end": "2003-03-02", "observations": ["o"], "output": "a"}
    with pytest.raises(ValueError, match="exceeds half the step"):
        AssimilateConfig.model_validate({**doc, "sampling": {"time_tolerance": "4h"}})


def test_units_and_filter_cycles_share_each_observation_exactly_once():
    """Time segments and filter cycles select an observation halfway between two of their
    states in exactly one of them (the later), as the operator assigns it, so no observation is
    assimilated twice or read from the future of a filter analysis."""
    times = pd.date_range("2003-03-01T00:00", periods=8, freq="6h")
    obs_times = times[0] + pd.to_timedelta(np.arange(0, 48, 1.5), "h")
    n = len(obs_times)
    table = make_table(obs_times, 10.0, 20.0, "2m_temperature", np.full(n, 280.0), 1.0, "station")
    table = table.assign(id=("obs", np.arange(table.sizes["obs"])))
    settings = tasks.SamplingConfig()
    whole = tasks.select_observations(table, times, settings)
    segments = [tasks.select_observations(table, part, settings) for part in (times[:4], times[4:])]
    assert sorted(np.concatenate([s["id"].values for s in segments])) == whole["id"].values.tolist()
    step = pd.Timedelta("6h")
    cycles = [tasks.select_observations(table, times[i : i + 1], settings, step) for i in range(8)]
    ids = np.concatenate([c["id"].values for c in cycles if c is not None])
    assert sorted(ids) == whole["id"].values.tolist()
    for i, cycle in enumerate(cycles):
        # never later than halfway to the next cycle
        assert (cycle["time"].values < (times[i] + step / 2).to_datetime64()).all()
    # the operator puts each selected observation on the state the selection chose
    op = ObservationOperator(
        whole,
        StateSpec(surface=["2m_temperature"]),
        np.linspace(-80, 80, 8),
        np.arange(16) * 22.5,
        times,
        time_tolerance=settings.tolerance(step),
    )
    assert op.time_index.tolist() == assign_times(whole["time"].values, times, "3h").tolist()


def test_observations_off_the_state_times_are_assimilated_at_their_nearest_state(
    world, base, tmp_path
):
    """Observations at 03, 09, 15, 21 UTC between the 6-hourly states are used (each at its
    nearest state) instead of silently dropped, which ran the job unconstrained: the worker
    assimilates as many as the summary counts, and the analysis is far closer to the truth
    than prior samples."""
    base["observations"] = [_edited(world, tmp_path / "late", shift="3h")]
    job = AssimilateConfig.model_validate(base)
    summary = _summary(plan_archive(job))
    (store,) = summary.stores
    # only those past the last state (21 UTC of the last day) belong to no state of the job
    assert store.used > 0 and set(store.dropped) <= {"outside_period"}
    worker = AssimilationWorker(job, threads=1)
    assert worker.observations.sizes["obs"] == store.used
    times = job_times(job)
    assert np.isin(worker.observations["time"].values, times.values).all()
    coords = {"member": np.arange(2), "time": times.values}
    analysis = _t2m_rmse(worker(None, coords), world, times)
    prior = tasks.reanalysis(worker.prior, None, times, [1, 2], job.sampling).numpy()
    names = worker.prior.spec.channel_names()
    free = _t2m_rmse({"2m_temperature": prior[:, :, names.index("2m_temperature")]}, world, times)
    assert analysis < 0.5 * free


def test_the_exact_time_rule_refuses_a_store_without_observations_at_the_state_times(
    world, base, tmp_path
):
    """Under ``time_rule: exact`` a store whose observations all lie off the state times stops
    the job, counting them, instead of writing prior samples as a reanalysis."""
    base["observations"] = [_edited(world, tmp_path / "late", shift="3h")]
    base["sampling"]["time_rule"] = "exact"
    with pytest.raises(ObservationError, match=r"none of its \d+ observations .* off the state"):
        plan_archive(AssimilateConfig.model_validate(base))
    assert not Path(base["output"]).exists()


# --- days without observations -------------------------------------------------------------


def test_days_without_observations_are_refused_by_default_and_flagged_on_request(world, base):
    """A period reaching past the last observation would write prior samples for those days:
    the job refuses, naming the days, unless ``observation_use.unobserved: flag``, which runs
    and records them in the archive's ``unobserved_days`` and its summary."""
    base["end"] = "2003-03-05T18:00"  # the world's observations end on 2003-03-04
    with pytest.raises(ObservationError, match="none is used on 2003-03-05 "):
        plan_archive(AssimilateConfig.model_validate(base))
    assert not Path(base["output"]).exists()
    base["observation_use"] = {"unobserved": "flag"}
    archive = plan_archive(AssimilateConfig.model_validate(base))
    attrs = archive.open_dataset().attrs
    assert json.loads(attrs["unobserved_days"]) == ["2003-03-05"]
    assert _summary(archive).unobserved_days == ["2003-03-05"]


def test_a_forecast_from_an_initial_archive_reads_no_observations(world, base):
    """A forecast that starts from ``forecast.initial`` reads no observations, so days without
    any are no reason to refuse it; the summary says it read none. A forecast from observations
    is held to the days rule like any other job."""
    initial = str(Path(base["output"]).with_name("r.zarr"))
    plan_archive(AssimilateConfig.model_validate({**base, "output": initial}))
    base.update(task="forecast", start="2003-03-02T00:00", end="2003-03-06T00:00")
    base["forecast"] = {"initial": initial, "lead_steps": 2}
    summary = _summary(plan_archive(AssimilateConfig.model_validate(base)))
    assert summary.stores == [] and "reads no observations" in summary.note
    base["forecast"] = {"lead_steps": 2}
    base["output"] = str(Path(base["output"]).with_name("f.zarr"))
    with pytest.raises(ObservationError, match="none is used on 2003-03-05, 2003-03-06"):
        plan_archive(AssimilateConfig.model_validate(base))


# --- gross checks --------------------------------------------------------------------------


def _geopotential_heights(world: dict, path: Path) -> str:
    """Geopotential at 500 hPa of a few grid cells, written as heights (m)."""
    truth = xr.open_zarr(world["truth"])["geopotential"].sel(level=500)
    truth = truth.sel(time=slice("2003-03-01", "2003-03-02T18:00")).isel(
        latitude=slice(4, 28, 6), longitude=slice(0, 64, 8)
    )
    stacked = truth.stack(obs=("time", "latitude", "longitude"))
    return _store(
        make_table(
            stacked["time"].values,
            stacked["latitude"].values,
            stacked["longitude"].values,
            "geopotential",
            stacked.values / 9.80665,
            5.0,
            "sonde",
            level=500.0,
        ),
        path,
    )


@pytest.mark.parametrize(
    ("variable", "mistake", "message"),
    [
        ("2m_temperature", lambda v: v - 273.15, "2m_temperature looks like degrees Celsius"),
        ("mean_sea_level_pressure", lambda v: v / 100, "looks like hPa instead of Pa"),
        ("geopotential", None, r"geopotential@500 looks like geopotential height \(m\)"),
        (
            "2m_temperature",
            lambda v: v * 10,
            r"\d+ of \d+ 2m_temperature observations \(100%\) fail the gross checks \(\d+ "
            r"outside the physical bounds 150 .. 350 K",
        ),
    ],
)
def test_values_in_the_wrong_units_stop_the_job_naming_the_likely_mistake(
    world, base, tmp_path, variable, mistake, message
):
    """2 m temperature in degrees Celsius, pressure in hPa, geopotential height instead of
    geopotential: assimilated as they were, they ruined every variable (rc 0). Now the driver
    stops the job before any unit, naming the store and the likely unit mistake (or, for
    values no usual mistake explains, how many fail which check), and writes no archive."""
    if mistake is None:
        store = _geopotential_heights(world, tmp_path / "heights")
        base["observations"] = [world["observations"], store]
    else:
        store = _edited(world, tmp_path / "edited", variable=variable, value=mistake)
        base["observations"] = [store]
    with pytest.raises(ObservationError, match=message) as raised:
        plan_archive(AssimilateConfig.model_validate(base))
    assert str(raised.value).startswith(f"observations {store}: ")
    assert "the prior's mean is" in str(raised.value)
    assert not Path(base["output"]).exists()


def test_units_declared_other_than_si_are_refused(world, base, tmp_path):
    """A store whose ``value`` field (or the table, per variable) declares units other than
    the canonical SI units is refused, naming the variable, the units and the conversion."""
    table = read_observations(world["observations"]).load()
    table["value"].attrs["units"] = "degC"
    base["observations"] = [_store(table, tmp_path / "celsius")]
    with pytest.raises(ObservationError, match=r"2m_temperature values are declared in 'degC'"):
        plan_archive(AssimilateConfig.model_validate(base))
    table["value"].attrs["units"] = {"2m_temperature": "K", "mean_sea_level_pressure": "Pa"}
    table.attrs["units"] = {"mean_sea_level_pressure": "hPa"}
    base["observations"] = [_store(table, tmp_path / "hpa")]
    with pytest.raises(ObservationError, match=r"mean_sea_level_pressure .* 'hPa'.*\* 100"):
        plan_archive(AssimilateConfig.model_validate(base))
    table.attrs["units"] = {"mean_sea_level_pressure": "Pa", "temperature": "kelvin"}
    base["observations"] = [_store(table, tmp_path / "si")]
    plan_archive(AssimilateConfig.model_validate(base))


def test_a_few_implausible_values_are_rejected_counted_and_not_assimilated(world, base, tmp_path):
    """Single bad values (outside physical bounds, or far from the prior's climatology) do not
    stop the job: they are dropped, counted by reason in the summary, and no worker
    assimilates them."""
    table = read_observations(world["observations"]).load()
    names = table["variable"].values.astype(str)
    value = table["value"].values.copy()
    hot = np.flatnonzero(names == "2m_temperature")[:3]
    value[hot] = 1000.0  # K: outside the physical bounds
    layout = prior_layout(AssimilateConfig.model_validate(base).prior)
    c = layout.spec.channel_names().index("mean_sea_level_pressure")
    deep = np.flatnonzero(names == "mean_sea_level_pressure")[:2]
    value[deep] = layout.mean[c] + 9 * layout.std[c]  # plausible Pa, 9 std off
    table["value"] = ("obs", value)
    base["observations"] = [_store(table, tmp_path / "bad")]
    base["observation_use"] = {"gross_std": 6}
    job = AssimilateConfig.model_validate(base)
    (store,) = _summary(plan_archive(job)).stores
    assert store.channels["2m_temperature"].dropped == {"out_of_bounds": 3}
    assert store.channels["mean_sea_level_pressure"].dropped == {"gross_deviation": 2}
    assert store.used == store.read - 5
    used = AssimilationWorker(job, threads=1).observations
    assert used.sizes["obs"] == store.used
    assert used["value"].values.max() < layout.mean[c] + 6 * layout.std[c]


# --- the account ---------------------------------------------------------------------------


def test_the_demo_network_is_used_whole_and_unchanged(world, base):
    """The demo's observations lie on the state times and are plausible: every one read is
    used, and the workers assimilate exactly the observations they did before the checks (same
    values, times and order), so the demo's results do not change."""
    job = AssimilateConfig.model_validate(base)
    summary = check_observations(job, prior_layout(job.prior))
    (store,) = summary.stores
    assert store.dropped == {} and store.used == store.read > 0
    assert summary.unobserved_days == []
    times = job_times(job)
    raw = read_observations(world["observations"], times[0], times[-1] + pd.Timedelta("1s"))
    used = AssimilationWorker(job, threads=1).observations
    for field in ("time", "latitude", "longitude", "variable", "level", "value", "error_std"):
        np.testing.assert_array_equal(used[field].values, raw[field].values, err_msg=field)


def test_the_cli_prints_the_account_of_every_observation_after_the_job(
    world, base, tmp_path, ray_cluster
):
    """After ``appa reanalysis`` the CLI prints, per store and per channel, the observations
    read, used and dropped with the reason, and the archive keeps the same account."""
    base["observations"] = [_edited(world, tmp_path / "late", shift="3h")]
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(base))
    result = CliRunner().invoke(app, ["reanalysis", "--config", str(config)])
    assert result.exit_code == 0, result.output
    summary = ObservationSummary.from_attributes(xr.open_zarr(base["output"]).attrs)
    (store,) = summary.stores
    assert "nearest 6h state within 3h" in result.output
    assert f"{store.path}: {store.read} read, {store.used} used" in result.output
    t2m = store.channels["2m_temperature"]
    assert f"2m_temperature: {t2m.read} read, {t2m.used} used" in result.output
    assert "outside the period" in result.output
