"""A job resumes only onto the same inputs.

An archive's identity is its config (without the paths of its inputs) and the digests of what
it reads: the prior's checkpoint manifests (which hold the SHA-256 of every tensor file), each
observation store's partitions over the job's period, a forecast's initial archive. A rerun
whose inputs changed in place is refused, naming what changed; a moved input with the same
contents resumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from appa.cli import app
from appa.io.archive import Archive, ArchiveError
from appa.io.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from appa.jobs.assimilate import AssimilateConfig, plan_archive
from appa.observations.simulators import ObserveConfig, observe_store


def _started(doc: dict) -> Archive:
    """A job that wrote its first unit and was killed: the archive planned, one unit in."""
    archive = plan_archive(AssimilateConfig.model_validate(doc))
    unit = archive.units[0]
    shapes = archive.open_dataset().isel(unit.region)
    # what a worker would write: the unit's region of every variable, finite values
    archive.write_unit(unit, {n: np.ones(v.shape, np.float32) for n, v in shapes.items()})
    return archive


def _other_observations(world: dict, out: Path) -> str:
    """The same network observing the same truth with another noise seed."""
    observe = ObserveConfig.model_validate(
        {"seed": 9, "stations": {"density": 0.25, "variables": ["2m_temperature"]},
         "satellite": {"enabled": False}}
    )  # fmt: skip
    path, _ = observe_store(world["truth"], observe, str(out))
    return path


@pytest.fixture
def replaced_store(base, world, tmp_path) -> tuple[dict, Archive]:
    """A job started on a copy of the observations, that copy then replaced at the same path
    by another store: the job's config document and its archive (one unit done)."""
    store = tmp_path / "obs"
    shutil.copytree(world["observations"], store)
    doc = {**base, "observations": [str(store)]}
    archive = _started(doc)
    shutil.rmtree(store)
    _other_observations(world, store)
    return doc, archive


def test_an_observation_store_replaced_in_place_is_named(replaced_store):
    doc, _ = replaced_store
    with pytest.raises(ArchiveError, match=r"observations\[0\] \(sha256 \w+ then, sha256 \w+ now"):
        plan_archive(AssimilateConfig.model_validate(doc))


def test_a_prior_replaced_in_place_is_named(base, world, tmp_path):
    prior = tmp_path / "prior"
    shutil.copytree(world["prior"], prior)
    doc = {**base, "prior": {"path": str(prior), "device": "cpu"}}
    _started(doc)
    # another training's weights at the same path: the denoiser perturbed, saved as a whole
    # valid checkpoint (manifest and digests consistent)
    checkpoint = load_checkpoint(latest_checkpoint(str(prior / "diffusion")))
    tensors = {
        group: {k: v + 1e-3 if v.is_floating_point() else v for k, v in values.items()}
        for group, values in checkpoint.tensors.items()
    }
    shutil.rmtree(prior / "diffusion")
    save_checkpoint(str(prior / "diffusion"), checkpoint.step, tensors, checkpoint.metadata)
    with pytest.raises(ArchiveError, match=r"prior\.diffusion \(sha256 \w+ then"):
        plan_archive(AssimilateConfig.model_validate(doc))


def test_moved_inputs_with_the_same_contents_resume(base, world, tmp_path):
    first = {**base, "observations": [str(shutil.copytree(world["observations"], tmp_path / "a"))]}
    archive = _started(first)
    moved = {**base, "observations": [str(shutil.copytree(world["observations"], tmp_path / "b"))]}
    again = plan_archive(AssimilateConfig.model_validate(moved))
    assert again.url == archive.url
    assert again.done_mask().tolist() == [True, False]


def test_the_cli_names_the_changed_input_in_one_line(base, replaced_store, tmp_path):
    doc, _ = replaced_store
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["reanalysis", "--config", str(config)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "observations[0]" in lines[0] and "pass overwrite" in lines[0]
    # the units computed from the old store are kept until the user decides
    assert Archive(base["output"]).done_mask().tolist() == [True, False]


def test_a_forecasts_initial_archive_recomputed_in_place_is_named(base, tmp_path):
    initial = _started(base)
    forecast = {
        **base,
        "task": "forecast",
        "observations": [],
        "start": "2003-03-02T00:00",
        "forecast": {"initial": initial.url, "lead_steps": 2},
        "output": str(tmp_path / "forecast.zarr"),
    }
    _started(forecast)
    # the reanalysis recomputed over it with another seed: other members, same path
    _started({**base, "seed": 1, "overwrite": True})
    with pytest.raises(ArchiveError, match=r"forecast\.initial \(sha256"):
        plan_archive(AssimilateConfig.model_validate(forecast))


def test_a_worker_started_after_an_input_changed_refuses_its_units(replaced_store):
    """An actor restarted mid-job reads the inputs again: if they changed since the archive
    was started, it computes nothing (the pool ends the job at once on this error)."""
    from appa.assimilation.units import AssimilationWorker

    doc, archive = replaced_store
    inputs = dict(archive.records["inputs"])
    worker = AssimilationWorker(AssimilateConfig.model_validate(doc), threads=1, inputs=inputs)
    unit = archive.units[1]
    with pytest.raises(ArchiveError, match=r"observations\[0\]"):
        worker(unit, archive.coords(unit))
