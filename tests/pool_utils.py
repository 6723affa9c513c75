"""A dummy unit worker for archive and pool tests: its fields are a deterministic function of
(member, time, seed), so any run, interrupted or not, must produce exactly the same archive."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import xarray as xr

from appa.data.spec import StateSpec
from appa.io.archive import Archive, ArchiveError, create_archive, template_from_spec

SPEC = StateSpec(
    surface=["2m_temperature", "sea_surface_temperature"],
    atmospheric=["geopotential"],
    levels=[500, 850],
    masked=["sea_surface_temperature"],
)
LEVELS = np.asarray(SPEC.levels, dtype=np.float64)  # a plain array: actors need not import torch
LATITUDE = np.linspace(-67.5, 67.5, 4)
LONGITUDE = np.arange(8) * 45.0


def times(n: int) -> np.ndarray:
    return np.datetime64("2003-01-01", "ns") + np.arange(n) * np.timedelta64(6, "h")


def template(members: int = 2, steps: int = 8, lead_time=None) -> xr.Dataset:
    return template_from_spec(
        SPEC, members=members, time=times(steps), latitude=LATITUDE, longitude=LONGITUDE,
        lead_time=lead_time, attrs={"title": "pool test"},
    )  # fmt: skip


def fields(coords: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Fields over ``coords`` (member, time (, lead_time)) in the archive layout; SST is NaN
    where longitude >= 270 (its "land")."""
    member = coords["member"].astype(np.float64)[:, None]
    hours = ((coords["time"] - times(1)[0]) / np.timedelta64(1, "h"))[None, :]
    base = 1000.0 * seed + 100.0 * member + hours  # (member, time)
    if "lead_time" in coords:
        lead = coords["lead_time"] / np.timedelta64(1, "h")
        base = base[..., None] + 0.5 * lead
    lat, lon = np.meshgrid(LATITUDE, LONGITUDE, indexing="ij")
    field2d = np.cos(np.deg2rad(lat)) + 0.01 * lon
    surface = base[..., None, None] + field2d
    levels = LEVELS[:, None, None]
    sst = np.where(lon >= 270, np.nan, surface + 0.25)
    return {
        "2m_temperature": surface.astype(np.float32),
        "sea_surface_temperature": sst.astype(np.float32),
        "geopotential": (base[..., None, None, None] * 10 + levels + field2d).astype(np.float32),
    }


def expected(ds: xr.Dataset, seed: int) -> xr.Dataset:
    """What the dummy worker writes over the whole of ``ds``'s coordinates."""
    coords = {d: ds[d].values for d in ("member", "time", "lead_time") if d in ds.dims}
    out = ds.copy()
    for name, value in fields(coords, seed).items():
        out[name] = (ds[name].dims, value)
    return out


class DummyWorker:
    """A unit worker. ``log``: a file to which each computation appends ``key pid``;
    ``crash_once``: a unit key whose first computation kills the process (``os._exit``),
    remembered by a marker file beside the log; ``crash_always``: a unit key whose every
    computation kills the process; ``fail``: a unit key that always raises;
    ``nan``: a unit key whose 2 m temperature holds a NaN; ``unobservable``: a unit key whose
    observations the state cannot see; ``delay``: seconds per unit."""

    def __init__(
        self, seed: int = 0, log: str | None = None, crash_once: str | None = None,
        fail: str | None = None, nan: str | None = None, delay: float = 0.0,
        crash_always: str | None = None, unobservable: str | None = None,
    ) -> None:  # fmt: skip
        self.seed, self.log, self.delay = seed, log, delay
        self.crash_once, self.fail, self.nan = crash_once, fail, nan
        self.crash_always, self.unobservable = crash_always, unobservable

    def __call__(self, unit, coords):
        if self.log is not None:
            import ray

            # the GPUs Ray gave this actor ("-" for none): the scheduling test reads them
            gpus = ",".join(map(str, ray.get_gpu_ids())) or "-"
            with open(self.log, "a") as f:
                f.write(f"{unit.key} {os.getpid()} {gpus}\n")
        if unit.key == self.crash_once:
            marker = Path(self.log + ".crashed")
            if not marker.exists():
                marker.touch()
                os._exit(3)
        if unit.key == self.crash_always:
            os._exit(3)
        if unit.key == self.fail:
            raise RuntimeError(f"worker cannot compute {unit.key}")
        if unit.key == self.unobservable:
            from appa.observations.schema import ObservationError

            raise ObservationError("12 observation(s) of temperature at 700.0 hPa")
        time.sleep(self.delay)
        out = fields(coords, self.seed)
        if unit.key == self.nan:
            out["2m_temperature"][..., 0, 0] = np.nan
        return out


class CountingWorker(DummyWorker):
    """A dummy worker that logs each build (``built pid``) and each archive it is handed."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        with open(kwargs["log"] + ".built", "a") as f:
            f.write(f"{os.getpid()}\n")
        self.archives: list[str] = []

    def use_archive(self, archive) -> None:
        self.archives.append(archive.url)


def read_log(path: Path) -> list[tuple[str, int]]:
    """``(unit key, pid)`` per computation logged by :class:`DummyWorker`."""
    return [(k, int(p)) for k, p, _ in _log_rows(path)]


def read_gpu_log(path: Path) -> dict[int, str]:
    """The GPU ids Ray gave each actor process (by pid), as logged by :class:`DummyWorker`."""
    return {int(p): g for _, p, g in _log_rows(path)}


def _log_rows(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines()]


JOB_CONFIG = {"job": "pool-test", "seed": 5}


def job_archive(out) -> Archive:
    """The archive of tests/pool_job.py (created, or reopened to resume)."""
    return create_archive(
        out, template(members=2, steps=8), units={"member": 1, "time": 2}, config=JOB_CONFIG,
        allow_nan=["sea_surface_temperature"], provenance={"seeds": {"base": 5}},
    )  # fmt: skip


def done_units(path: Path) -> int:
    """Units a running job has recorded as done in its archive; 0 while the archive is still
    being created (its records' attributes are written last and may be seen half-written)."""
    try:
        return int(Archive(path).done_mask().sum())
    except (ArchiveError, ValueError):
        return 0
