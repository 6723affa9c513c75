"""``appa baseline climatology|persistence|enoi|sea-climatology|sea-regression``: the job
config and its run function, which writes the baseline as an archive (the ``sea-`` kinds: a
sea's 3-D state from its surface, :mod:`appa.baselines.ocean`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd
import xarray as xr
from pydantic import Field, field_validator

from appa.baselines.climatology import climatology_at, compute_climatology, persistence
from appa.baselines.enoi import EnOIConfig, enoi_analyses
from appa.baselines.ocean import SeaRegressionConfig
from appa.config import StrictModel, Timestamp
from appa.data.sources import Store, StoreConfig
from appa.data.spec import StateSpec
from appa.files import claim_output
from appa.io.archive import archive_dataset, open_archive, read_errors_named, write_dataset

__all__ = ["BaselineConfig", "run_baseline"]


def _tiny_spec() -> StateSpec:
    return StateSpec(
        surface=["2m_temperature", "mean_sea_level_pressure", "sea_surface_temperature"],
        atmospheric=["geopotential", "temperature"],
        levels=[500],
        masked=["sea_surface_temperature"],
    )


class BaselineConfig(StrictModel):
    """Settings of ``appa baseline``. Times are inclusive ISO dates."""

    truth: Store = Field(
        default_factory=lambda: StoreConfig(store="data/toy_earth.zarr"),
        description="gridded truth store (a path, URL or preset, or a StoreConfig)",
    )
    start: Timestamp = Field(
        "2003-01-01T00:00:00", description="first analysis / initialisation time"
    )
    end: Timestamp = Field("2003-01-07T18:00:00", description="last analysis / initialisation time")
    train_start: Timestamp = "2000-01-01T00:00:00"
    train_end: Timestamp = "2001-12-31T23:59:00"
    spec: StateSpec | None = Field(
        default_factory=_tiny_spec,
        description="variables and levels read from the truth (null: all of the store's, as "
        "a sea's truth holds them; climatology and persistence)",
    )
    lead_times: list[str] = Field(
        default_factory=list,
        description="e.g. ['6h', '1D']: forecast layout (climatology, persistence)",
    )
    every: int = Field(
        1, ge=1, description="one time in every `every` of [start, end], e.g. 4: daily from 6 h"
    )
    window_days: int = Field(15, ge=0, le=183, description="climatology smoothing, +- days")
    # Persistence only.
    initial: str | None = Field(
        None,
        description="persist this archive's ensemble mean (e.g. the reanalysis a forecast "
        "starts from) instead of the truth",
    )
    # EnOI only.
    observations: str | None = Field(None, description="observation store (appa observe)")
    enoi: EnOIConfig = Field(default_factory=EnOIConfig)
    # The sea's kinds only (members and seed serve both).
    sea: SeaRegressionConfig = Field(default_factory=SeaRegressionConfig)

    @field_validator("lead_times")
    @classmethod
    def _leads(cls, value: list[str]) -> list[str]:
        for lead in value:
            try:
                if pd.Timedelta(lead) <= pd.Timedelta(0):
                    raise ValueError
            except ValueError:
                raise ValueError(f"lead time {lead!r} is not a positive duration") from None
        return value


Kind = Literal["climatology", "persistence", "enoi", "sea-climatology", "sea-regression"]
KINDS = ("climatology", "persistence", "enoi", "sea-climatology", "sea-regression")


def _open(job: BaselineConfig, kind: str = "climatology") -> xr.Dataset:
    # a sea's baselines read its own variables, depth levels and statics, not the spec's
    if kind.startswith("sea-") or job.spec is None:
        if kind == "enoi":
            raise ValueError("enoi needs a state spec (spec: null reads the whole store)")
        return job.truth.open()
    return job.truth.open(spec=job.spec)


def _sea_baseline(kind: str, job: BaselineConfig, ds: xr.Dataset, times: pd.DatetimeIndex):
    from appa.baselines.ocean import PROFILE_VARIABLES, sea_climatology, sea_regression
    from appa.observations import read_observations

    period = (job.train_start, job.train_end)
    if kind == "sea-climatology":
        product = sea_climatology(
            ds, period, times, job.window_days, job.sea.members, job.sea.seed,
            variables=PROFILE_VARIABLES,
        )  # fmt: skip
        return product, {}
    if job.observations is None:
        raise ValueError("sea-regression needs observations (an observation store)")
    # the training period's observations train the regression; the window's drive it
    first = min(pd.Timestamp(job.train_start), times[0])
    last = max(pd.Timestamp(job.train_end), times[-1]) + pd.Timedelta(days=1)
    table = read_observations(job.observations, str(first), str(last))
    product, facts = sea_regression(ds, table, period, times, job.window_days, job.sea)
    return product, {"observation_sources": [str(job.observations)], "regression": facts}


def _target_times(ds: xr.Dataset, job: BaselineConfig) -> pd.DatetimeIndex:
    times = pd.DatetimeIndex(ds["time"].sel(time=slice(job.start, job.end)).values)
    if len(times) == 0:
        have = ds["time"].values
        raise ValueError(
            f"no truth time between {job.start} and {job.end}; the truth spans "
            f"{have[0]} to {have[-1]}"
        )
    train_end = pd.Timestamp(job.train_end)
    if times[0] <= train_end and times[-1] >= pd.Timestamp(job.train_start):
        raise ValueError(
            f"the target window {job.start} .. {job.end} overlaps the training period "
            f"{job.train_start} .. {job.train_end}"
        )
    return times[:: job.every]


def _analysis_mean(job: BaselineConfig, truth: xr.Dataset) -> xr.Dataset:
    """The ensemble mean of the archive ``job.initial``, with the truth's time-dependent
    variables (all of them: persistence of an analysis must cover what it is scored on)."""
    try:
        analysis = open_archive(job.initial)
    except FileNotFoundError:
        raise FileNotFoundError(f"no initial archive at {job.initial}") from None
    wanted = [v for v in truth.data_vars if "time" in truth[v].dims]
    missing = [v for v in wanted if v not in analysis.data_vars]
    if missing:
        raise ValueError(f"initial archive {job.initial} lacks the variables {missing}")
    analysis = analysis[wanted]
    return analysis.mean("member") if "member" in analysis.dims else analysis


def run_baseline(kind: Kind, job: BaselineConfig, out: str | Path, overwrite: bool = False) -> Path:
    """Computes one baseline over ``[start, end]`` and writes it as an archive at ``out`` (free,
    or an Appa archive replaced with ``overwrite``: checked before the work, see
    :func:`~appa.io.archive.write_dataset`)."""
    claim_output(out, "archive", overwrite=overwrite)
    ds = _open(job, kind)
    times = _target_times(ds, job)
    period = (job.train_start, job.train_end)
    provenance = {
        "appa_config": job.model_dump(),
        "appa_baseline": kind,
        "seeds": [job.sea.seed if kind.startswith("sea-") else job.enoi.seed],
    }
    leads = job.lead_times or None
    if kind == "climatology":
        train = ds.sel(time=slice(*period)).load()
        clim = compute_climatology(train, period, job.window_days)
        product = climatology_at(clim, times, leads)
    elif kind == "persistence":
        if not leads:
            raise ValueError("persistence is a forecast: give lead_times (e.g. ['6h', '1D'])")
        source = ds if job.initial is None else _analysis_mean(job, ds)
        name = "truth" if job.initial is None else f"initial archive {job.initial}"
        if job.initial is None:
            product = persistence(source, times, leads, source=name).load()
        else:  # a damaged chunk of the initial archive is named
            with read_errors_named(job.initial, expected=(KeyError,)):
                product = persistence(source, times, leads, source=name).load()
        if job.initial is not None:
            provenance["initial"] = job.initial
    elif kind == "enoi":
        if leads:
            raise ValueError("enoi writes analyses: lead_times must be empty")
        if job.observations is None:
            raise ValueError("enoi needs observations (an observation store)")
        product = enoi_analyses(
            ds, times, job.observations, job.spec, period, job.window_days, job.enoi
        )
        provenance["observation_sources"] = [str(job.observations)]
    elif kind in ("sea-climatology", "sea-regression"):
        if leads:
            raise ValueError(f"{kind} writes analyses: lead_times must be empty")
        product, facts = _sea_baseline(kind, job, ds, times)
        provenance.update(facts)
    else:
        raise ValueError(f"unknown baseline {kind!r}: {', '.join(KINDS)}")
    archive = archive_dataset(product, truth=ds, provenance=provenance)
    return write_dataset(archive, out, overwrite=overwrite)
