"""Every notebook runs top to bottom in a real Jupyter kernel (nbclient). The notebooks over
output archives run on a small world this module makes once: a few days of toy Earth, stations
and a satellite observing it, a 2-member reanalysis of two days with the committed tiny prior
(few sampler steps: the notebooks are checked, not the skill), and the climatology and
persistence baselines of ``appa baseline`` (analysis and forecast layouts); and a daily archive
of three days appended by two ``appa daily`` runs (in-process, as ``tests/test_daily.py``).

``APPA_NOTEBOOKS_OUT=DIR`` keeps the executed notebooks (with their outputs) in ``DIR``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import nbclient
import nbformat
import pytest
from worlds import toy_world

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PRIOR = ROOT / "pipelines" / "priors" / "toy-earth-tiny"
ARCHIVE_NOTEBOOKS = [
    "reanalysis_maps.ipynb",
    "point_time_series.ipynb",
    "scores_against_baselines.ipynb",
    "daily_provenance.ipynb",
]


def run_notebook(
    path: Path, cwd: Path, parameters: dict[str, Any] | None = None, keep_as: str | None = None
):
    """Executes ``path`` in a fresh kernel with ``parameters`` injected after its cell tagged
    ``parameters`` (as papermill does); returns the executed notebook, also written to
    ``$APPA_NOTEBOOKS_OUT/keep_as`` (default: its own name) when that variable is set. Raises
    nbclient's ``CellExecutionError`` (which holds the cell's error) when a cell fails."""
    nb = nbformat.read(path, as_version=4)
    if parameters:
        at = next(
            (i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])),
            None,
        )
        assert at is not None, f"{path.name} has no cell tagged 'parameters'"
        source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
        cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
        cell.id = "injected-parameters"
        nb.cells.insert(at + 1, cell)
    # the kernel imports this checkout's appa, whatever the environment's editable install is
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": pythonpath}
    env.pop("MPLBACKEND", None)  # the kernel's inline backend renders the figures
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    t0 = time.perf_counter()
    client.execute(env=env)
    keep = os.environ.get("APPA_NOTEBOOKS_OUT")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        nb.metadata["appa_seconds"] = round(time.perf_counter() - t0, 1)
        nbformat.write(nb, Path(keep) / (keep_as or path.name))
    return nb


def outputs_of(nb, kind: str) -> list[Any]:
    """The outputs of every code cell with the given MIME type (e.g. ``image/png``)."""
    return [
        out["data"][kind]
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if kind in out.get("data", {})
    ]


def text_of(nb) -> str:
    """Everything the code cells printed or displayed as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.fixture(scope="session")
def archives(tmp_path_factory, ray_cluster) -> dict[str, str]:
    """A small world of archives: truth, observations, a reanalysis, its climatology
    baseline, and a persistence forecast with the climatology in forecast layout."""
    from appa.jobs.assimilate import AssimilateConfig, run_assimilation
    from appa.jobs.baseline import BaselineConfig, run_baseline

    folder = tmp_path_factory.mktemp("notebook-archives")
    # 2003-02-19 .. 2003-03-02: the last 8 days train the climatology, the last 2 are analysed
    truth, obs = toy_world(
        folder, days=12, start="2003-02-19", observed=("2003-03-01", "2003-03-02T18:00")
    )
    job = AssimilateConfig.model_validate(
        {
            "task": "reanalysis",
            "prior": {"path": str(PRIOR), "device": "cpu"},
            "observations": [obs],
            "start": "2003-03-01T00:00",
            "end": "2003-03-02T18:00",
            "members": 2,
            "seed": 0,
            "sampling": {"sampler": "pc", "steps": 3, "corrections": 1, "iterations": 1},
            "output": str(folder / "reanalysis.zarr"),
            "runner": {"cpus_per_worker": 1, "progress": False, "stall_timeout_s": 300},
        }
    )
    archive, _ = run_assimilation(job, echo=lambda line: None)
    analysis = BaselineConfig(
        truth=truth,
        start="2003-03-01T00:00",
        end="2003-03-02T18:00",
        train_start="2003-02-19",
        train_end="2003-02-28T18:00",
    )
    forecast = analysis.model_copy(
        update={"end": "2003-03-01T18:00", "lead_times": ["6h", "12h", "1D"], "every": 2}
    )
    return {
        "truth": truth,
        "observations": obs,
        "reanalysis": archive.url,
        "climatology": str(run_baseline("climatology", analysis, folder / "clim.zarr")),
        "persistence": str(run_baseline("persistence", forecast, folder / "pers.zarr")),
        "climatology_fc": str(run_baseline("climatology", forecast, folder / "clim_fc.zarr")),
    }


def test_notebooks_are_stored_without_outputs_and_parameterised():
    assert {p.name for p in NOTEBOOKS} >= set(ARCHIVE_NOTEBOOKS)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name
    for name in ARCHIVE_NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        assert nb.cells[0].cell_type == "markdown", name  # the question it answers
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert first.metadata.get("tags") == ["parameters"], name
        assert "archive = " in first.source, name


def test_posterior_sampling_notebook_runs(tmp_path):
    nb = run_notebook(ROOT / "notebooks" / "posterior_sampling.ipynb", tmp_path)
    assert outputs_of(nb, "image/png")


def test_reanalysis_maps_notebook(archives, tmp_path):
    parameters = {
        "archive": archives["reanalysis"],
        "truth": archives["truth"],
        "variable": "temperature",
        "level": 500,
        "time": "2003-03-01T12:00",
    }
    nb = run_notebook(ROOT / "notebooks" / "reanalysis_maps.ipynb", tmp_path, parameters)
    text = text_of(nb)
    # the observation stores come from the archive's attributes, and the satellite's
    # soundings of that state are found and drawn
    assert archives["observations"] in text
    count = int(text.split(" observations of temperature at 500 hPa between")[0].split()[-1])
    assert count > 0
    assert len(outputs_of(nb, "image/png")) == 2  # the maps and the innovations


def test_reanalysis_maps_notebook_names_what_the_archive_lacks(archives, tmp_path):
    # a climatology is a single member: no ensemble spread to map
    parameters = {"archive": archives["climatology"]}
    with pytest.raises(nbclient.exceptions.CellExecutionError) as error:
        run_notebook(ROOT / "notebooks" / "reanalysis_maps.ipynb", tmp_path, parameters)
    assert f"{archives['climatology']} has 1 member" in str(error.value)


def test_point_time_series_notebook(archives, tmp_path):
    parameters = {
        "archive": archives["reanalysis"],
        "truth": archives["truth"],
        "baseline": archives["climatology"],
        "baseline_name": "climatology",
        "variable": "2m_temperature",
    }
    nb = run_notebook(ROOT / "notebooks" / "point_time_series.ipynb", tmp_path, parameters)
    text = text_of(nb)
    assert "the most observed station of 2m_temperature" in text
    observed = int(text.split(" observations of 2m_temperature in that cell")[0].split()[-1])
    assert observed > 0  # the station's own observations are drawn
    assert len(outputs_of(nb, "image/png")) == 1
    table = outputs_of(nb, "text/plain")[-1]
    assert "RMSE" in table and "climatology" in table


def test_scores_notebook_on_a_reanalysis(archives, tmp_path):
    parameters = {
        "archive": archives["reanalysis"],
        "truth": archives["truth"],
        "baselines": {"climatology": archives["climatology"]},
    }
    nb = run_notebook(ROOT / "notebooks" / "scores_against_baselines.ipynb", tmp_path, parameters)
    assert len(outputs_of(nb, "image/png")) == 2  # metrics against time, scorecard
    table = outputs_of(nb, "text/plain")[-1]
    assert "temperature@500" in table and "spread_skill" in table


def test_scores_notebook_on_a_forecast(archives, tmp_path):
    parameters = {
        "archive": archives["persistence"],
        "archive_name": "persistence",
        "truth": archives["truth"],
        "baselines": {"climatology": archives["climatology_fc"]},
    }
    path = ROOT / "notebooks" / "scores_against_baselines.ipynb"
    nb = run_notebook(path, tmp_path, parameters, keep_as="scores_against_baselines-forecast.ipynb")
    assert len(outputs_of(nb, "image/png")) == 2
    table = outputs_of(nb, "text/plain")[-1]
    assert "lead_time" in table


@pytest.fixture(scope="module")
def daily_world(tmp_path_factory) -> dict[str, str]:
    """Four days of toy Earth from 2003-03-01, observed; a daily archive whose first day is
    appended by one run and days 2-3 by a second once the store gained days 3-4."""
    from test_daily import config, grow

    from appa.jobs.daily import DailyConfig, run_daily
    from appa.observations.schema import read_observations

    folder = tmp_path_factory.mktemp("daily-notebook")
    (folder / "world").mkdir()
    truth, all_obs = toy_world(folder / "world", days=4)
    table = read_observations(all_obs).load()
    store, out = folder / "obs", folder / "daily.zarr"
    job = DailyConfig.model_validate(config(store, out))
    grow(table, store, "2003-03-01", "2003-03-02")
    assert run_daily(job, echo=lambda _: None).days == ["2003-03-01"]
    grow(table, store, "2003-03-03", "2003-03-04")
    assert run_daily(job, echo=lambda _: None).days == ["2003-03-02", "2003-03-03"]
    return {"truth": truth, "observations": str(store), "daily": str(out)}


def test_daily_provenance_notebook(daily_world, tmp_path):
    from appa.io.archive import open_archive

    parameters = {"archive": daily_world["daily"], "variable": "temperature", "level": 500}
    nb = run_notebook(ROOT / "notebooks" / "daily_provenance.ipynb", tmp_path, parameters)
    text = text_of(nb)
    log = json.loads(open_archive(daily_world["daily"]).attrs["daily_log"])
    assert "3 days recorded, complete through 2003-03-03" in text
    assert f"observations[0]: {daily_world['observations']}" in text
    table = next(t for t in outputs_of(nb, "text/plain") if "written (UTC)" in t)
    for day, entry in log.items():
        # each day's row: its recorded digest and how many observations it used
        row = next(line for line in table.splitlines() if line.startswith(day))
        assert entry["inputs"][f"observations[0]@{day}"][:12] in row
        assert str(entry["observations_used"][daily_world["observations"]]) in row
        assert "2/2" in row and row.rstrip().endswith("same")
    # day 3 read the partitions of days 2-4 (its lag day, and the last state of day 2)
    assert "2003-03-02T0000, 2003-03-03T0000, 2003-03-04T0000" in table
    assert "every recorded digest matches the stores today" in text
    assert "across day boundaries" in text
    assert len(outputs_of(nb, "image/png")) == 2  # the write times, the point across days


def test_daily_provenance_notebook_shows_a_rewritten_partition(daily_world, tmp_path):
    import shutil

    import xarray as xr

    store = tmp_path / "obs"
    shutil.copytree(daily_world["observations"], store)
    partition = store / "2003-03-04T0000"
    table = xr.open_zarr(partition).load()
    shutil.rmtree(partition)
    table.assign(value=table["value"] + 1.0).to_zarr(partition, zarr_format=2, consolidated=True)
    parameters = {"archive": daily_world["daily"], "observations": str(store)}
    nb = run_notebook(ROOT / "notebooks" / "daily_provenance.ipynb", tmp_path, parameters)
    # only day 3's window reaches into 2003-03-04
    assert "days whose stores differ now: ['2003-03-03']" in text_of(nb)


def test_daily_provenance_notebook_tells_land_from_unwritten(daily_world, tmp_path):
    """Sea-surface temperature is NaN on land in every state: that cell is refused, not shown
    as a day no member wrote."""
    from appa.io import load_checkpoint

    cells = load_checkpoint(str(ROOT / "pipelines/priors/toy-earth-tiny/autoencoder"))
    assert not cells.tensors["valid"]["cells"][2, 18, 14]  # 14.06 N, 78.75 E: land
    parameters = {"archive": daily_world["daily"], "variable": "sea_surface_temperature",
                  "level": None, "latitude": 14.06, "longitude": 78.75}  # fmt: skip
    path = ROOT / "notebooks" / "daily_provenance.ipynb"
    with pytest.raises(nbclient.exceptions.CellExecutionError) as error:
        run_notebook(path, tmp_path, parameters)
    assert "sea_surface_temperature holds no value at 14.06N 78.75E" in str(error.value)


def test_daily_provenance_notebook_names_what_the_archive_lacks(daily_world, tmp_path):
    from appa.jobs.baseline import BaselineConfig, run_baseline

    analysis = BaselineConfig(
        truth=daily_world["truth"],
        start="2003-03-03T00:00",
        end="2003-03-03T18:00",
        train_start="2003-03-01",
        train_end="2003-03-02T18:00",
    )
    clim = str(run_baseline("climatology", analysis, tmp_path / "clim.zarr"))
    path = ROOT / "notebooks" / "daily_provenance.ipynb"
    with pytest.raises(nbclient.exceptions.CellExecutionError) as error:
        run_notebook(path, tmp_path, {"archive": clim})
    assert f"{clim} is not a daily archive (no attribute daily_log)" in str(error.value)
