"""What a command may write over, and whether an archive's done units are what was written.

Two rules: nothing that is not ours is ever deleted or overwritten (an output path that holds a
user's folder or file, or another kind of Appa product, is refused even with --overwrite, and
left as it is; our own product is replaced only with --overwrite, except the empty stub of a
job that wrote no unit); and archives verify what they trust (a unit counts as done only if
its chunks read back as written; a damaged one is computed again on the next run, and a reader
of a damaged archive is told which chunk is damaged)."""

from __future__ import annotations

import json
import shutil
import traceback
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from appa.cli import app
from appa.files import OutputExistsError
from appa.io.archive import Archive, ArchiveError
from appa.jobs.assimilate import AssimilateConfig, plan_archive, run_assimilation

CHUNK = Path("2m_temperature") / "1.0.0.0"  # member 1's unit of the base job


def _cli(*args) -> tuple[int, str]:
    """Exit status and output of ``appa ARGS`` (an uncaught exception's traceback appended)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    output = result.output
    if result.exc_info is not None and not isinstance(result.exception, SystemExit):
        output += "".join(traceback.format_exception(*result.exc_info))
    return result.exit_code, output


def _photos(folder: Path) -> dict[str, bytes]:
    """A user's folder of photos; returns its contents (name -> bytes)."""
    folder.mkdir(parents=True)
    files = {"beach.jpg": b"\xff\xd8 sand", "cat.jpg": b"\xff\xd8 whiskers"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def _contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _job_file(base: dict, tmp_path: Path, **changes) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**base, **changes}))
    return path


# --- nothing that is not ours is ever deleted or overwritten ----------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_assimilation_never_writes_into_a_folder_that_is_not_an_archive(
    base, world, tmp_path, overwrite
):
    """`appa reanalysis --out DIR` on a user's folder (with or without overwrite) or on an
    observation store refuses in one line naming the path and what it holds, and leaves it as
    it was."""
    photos = tmp_path / "holiday"
    files = _photos(photos)
    job = _job_file(base, tmp_path, overwrite=overwrite)
    code, output = _cli("reanalysis", "-c", job, "--out", photos)
    assert code == 2, output
    assert output.strip() == f"error: {photos} is a directory that is not an Appa archive; " + (
        "choose another path (it was left as it is)"
    )
    assert _contents(photos) == files

    store = Path(world["observations"])
    before = _contents(store)
    code, output = _cli("reanalysis", "-c", job, "--out", store)
    assert code == 2 and "is an Appa observation store, not an archive" in output, output
    assert _contents(store) == before


def test_an_empty_folder_is_free_for_an_archive(base, tmp_path):
    """An empty directory given as the output is written into like an absent path."""
    empty = tmp_path / "empty"
    empty.mkdir()
    archive = plan_archive(AssimilateConfig.model_validate({**base, "output": str(empty)}))
    assert archive.pending_units() == archive.units and not archive.notes


@pytest.fixture(scope="module")
def climatology(world, tmp_path_factory) -> Path:
    """A climatology archive of the last two days (trained on the first two): a product
    written whole, quick to make, to score and to replace."""
    out = tmp_path_factory.mktemp("climatology") / "climatology.zarr"
    code, output = _cli(*_baseline_args(world, out))
    assert code == 0, output
    return out


def _baseline_args(world, out: Path) -> list:
    return [
        "baseline", "climatology", "--truth", world["truth"], "--start", "2003-03-03",
        "--end", "2003-03-04", "--set", "train_start=2003-03-01",
        "--set", "train_end=2003-03-02T18:00", "--out", out,
    ]  # fmt: skip


def _writers(world, climatology) -> dict[str, tuple[str, object]]:
    """Per command: what it calls its product and how to run it writing to ``out``."""
    observe = ["observe", "--truth", world["truth"], "--set", "satellite.enabled=false"]
    toy = ["toy-earth", "--years", "0.002", "--no-progress", "--set", "spinup_days=0"]
    evaluate = ["evaluate", climatology, "--truth", world["truth"]]
    return {
        "baseline": ("archive", lambda out: _baseline_args(world, out)),
        "observe": ("observation store", lambda out: [*observe, "--out", out]),
        "toy-earth": ("toy-Earth store", lambda out: [*toy, "--out", out]),
        "evaluate": ("score table", lambda out: [*evaluate, "--out", out]),
    }


@pytest.mark.parametrize("command", ["baseline", "observe", "toy-earth", "evaluate"])
def test_every_writer_refuses_what_is_not_its_own_product(world, climatology, tmp_path, command):
    """Each command that writes a product, even with --overwrite, refuses a user's folder, a
    user's file and another kind of product (naming the path and what it holds, leaving it as
    it was); its own product it replaces only with --overwrite."""
    noun, args = _writers(world, climatology)[command]
    photos = tmp_path / "holiday"
    files = _photos(photos)
    code, output = _cli(*args(photos), "--overwrite")
    assert code == 2, output
    assert output.strip() == (
        f"error: {photos} is a directory that is not an Appa {noun}; choose another path "
        "(it was left as it is)"
    )
    assert _contents(photos) == files

    notes = tmp_path / "notes.nc"
    notes.write_bytes(b"CDF\x01 my own measurements")
    code, output = _cli(*args(notes), "--overwrite")
    assert code == 2 and f"{notes} is a file that is not an Appa {noun}" in output, output
    assert notes.read_bytes() == b"CDF\x01 my own measurements"

    other = Path(world["observations"]) if command != "observe" else climatology
    before = _contents(other)
    code, output = _cli(*args(other), "--overwrite")
    assert code == 2 and f"{other} is an Appa " in output and ", not a" in output, output
    assert _contents(other) == before

    ours = tmp_path / f"{command}.zarr"
    code, output = _cli(*args(ours))
    assert code == 0, output
    code, output = _cli(*args(ours))
    assert code == 2, output
    assert f"{ours} exists (an Appa {noun}); pass --overwrite to replace it" in output
    code, output = _cli(*args(ours), "--overwrite")
    assert code == 0, output


def test_library_writers_replace_only_their_own_kind(world, tmp_path):
    """The stores written by library calls (window stores, simulated pairs, galaxy stores, an
    encoding's latent store) replace a store of their own kind, never a user's folder."""
    import torch

    from appa.data.datasets import write_window_store
    from appa.jobs.encode import EncodeConfig, run_encode
    from appa.lensing.galaxies import write_galaxies
    from appa.npe import save_pairs

    times = np.arange(3) * np.timedelta64(6, "h") + np.datetime64("2003-01-01", "ns")
    state = np.zeros((3, 1, 2, 4), dtype=np.float32)
    encode = {
        "checkpoint": f"{world['prior']}/autoencoder",
        "source": world["truth"],
        "source_format": "gridded",
        "runner": {"backend": "local"},
    }
    writes = {
        "window store": lambda out: write_window_store(str(out), state, times, [-45.0, 45.0]),
        "store of simulated pairs": lambda out: save_pairs(
            out, torch.zeros(4, 2), torch.zeros(4, 3)
        ),
        "galaxy store": lambda out: write_galaxies(out, 2, seed=0, size=16, batch=2),
        "latent store": lambda out: run_encode(
            EncodeConfig.model_validate({**encode, "output": str(out)})
        ),
    }
    for noun, write in writes.items():
        photos = tmp_path / noun.replace(" ", "-") / "holiday.zarr"
        files = _photos(photos)
        with pytest.raises(OutputExistsError, match=f"is a directory that is not an Appa {noun}"):
            write(photos)
        assert _contents(photos) == files, noun
        if noun != "latent store":  # the others replace their own kind in place
            ours = photos.with_name("ours.zarr")
            write(ours)
            write(ours)


def test_a_job_that_wrote_no_unit_leaves_nothing_that_blocks_its_corrected_rerun(base, tmp_path):
    """A job that stopped before its first unit leaves an archive stub; the corrected job (a
    changed config) replaces it without --overwrite, saying so; once a unit is written, an
    archive of another config still needs overwrite."""
    first = AssimilateConfig.model_validate(base)
    stub = plan_archive(first)  # what a job that dies before its first unit leaves
    assert not stub.done_mask().any()

    corrected = AssimilateConfig.model_validate({**base, "members": 3})
    archive = plan_archive(corrected)
    assert archive.notes == [
        f"{archive.url}: replacing the empty archive a job of another config left there (it "
        "wrote no unit)"
    ]
    assert archive.open_dataset().sizes["member"] == 3

    # a unit is written: the archive holds work, another config may not replace it unasked
    unit = archive.units[0]
    region = archive.open_dataset().isel(unit.region)
    archive.write_unit(
        unit, {n: np.full(region[n].shape, 280.0, np.float32) for n in region.data_vars}
    )
    code, output = _cli("reanalysis", "-c", _job_file(base, tmp_path))
    assert code == 2 and output.startswith(f"error: {archive.url} was written by another config")
    assert output.count("\n") == 1
    assert Archive(archive.url).done_mask().tolist() == [True, False, False]


# --- archives verify what they trust ----------------------------------------------------------


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory, ray_cluster) -> Path:
    """The base job's finished archive (2 members, one unit each)."""
    folder = tmp_path_factory.mktemp("finished")
    doc = {
        "task": "reanalysis", "prior": {"path": world["prior"], "device": "cpu"},
        "observations": [world["observations"]], "start": "2003-03-01T00:00",
        "end": "2003-03-02T18:00", "members": 2, "seed": 0,
        "sampling": {"sampler": "pc", "steps": 3, "corrections": 1, "iterations": 1},
        "output": str(folder / "reanalysis.zarr"),
        "runner": {"cpus_per_worker": 1, "progress": False, "stall_timeout_s": 300},
    }  # fmt: skip
    archive, report = run_assimilation(AssimilateConfig.model_validate(doc))
    assert archive.complete and len(report.records) == 2
    return Path(archive.url)


def _damage(archive: Path, how: str) -> None:
    """Damages member 1's 2m_temperature chunk as a disk, a user or a copy might."""
    chunk = archive / CHUNK
    if how == "truncated":
        chunk.write_bytes(chunk.read_bytes()[:1000])
    elif how == "deleted":
        chunk.unlink()
    elif how == "garbage":
        chunk.write_bytes(np.random.default_rng(0).bytes(chunk.stat().st_size))
    elif how == "swapped":  # another member's chunk: decodes fine, holds the wrong member
        shutil.copyfile(archive / "2m_temperature" / "0.0.0.0", chunk)
    elif how == "truncated, no checksums":  # an archive written before checksums existed
        import zarr

        shutil.rmtree(archive / "appa_units" / "checksums")
        attrs = archive / "appa_units" / ".zattrs"
        records = json.loads(attrs.read_text())
        del records["checksums"]
        attrs.write_text(json.dumps({**records, "format": 1}))
        zarr.consolidate_metadata(str(archive))
        chunk.write_bytes(chunk.read_bytes()[:1000])


DAMAGE = ["truncated", "deleted", "garbage", "swapped", "truncated, no checksums"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_rerun_recomputes_a_unit_that_does_not_read_back(
    base, finished, tmp_path, ray_cluster, how
):
    """Rerunning a finished job whose archive lost or garbled a chunk names the damaged unit,
    computes it again and ends with the archive the job wrote first (not "0 units computed"
    over the damage)."""
    out = tmp_path / "reanalysis.zarr"
    shutil.copytree(finished, out)
    _damage(out, how)

    lines: list[str] = []
    job = AssimilateConfig.model_validate({**base, "output": str(out)})
    archive, report = run_assimilation(job, echo=lines.append)
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"{out}: unit member=1:2,time=0:8 of 2m_temperature failed its read-back check ("
    )
    assert lines[0].endswith("); computing it again")
    assert [r.key for r in report.records if r.written] == ["member=1:2,time=0:8"]
    assert report.skipped == 1 and archive.complete
    xr.testing.assert_identical(xr.open_zarr(out).load(), xr.open_zarr(finished).load())


def test_the_command_line_reports_a_recomputed_unit(base, finished, tmp_path, ray_cluster):
    """`appa reanalysis` prints the damaged unit before recomputing it."""
    out = tmp_path / "reanalysis.zarr"
    shutil.copytree(finished, out)
    _damage(out, "truncated")
    code, output = _cli("reanalysis", "-c", _job_file(base, tmp_path, output=str(out)))
    assert code == 0, output
    assert "unit member=1:2,time=0:8 of 2m_temperature failed its read-back check" in output
    assert "reanalysis: 1 units computed, 1 already done" in output


@pytest.mark.parametrize("how", ["truncated", "garbage", "deleted"])
def test_scoring_a_damaged_archive_names_the_chunk(world, finished, tmp_path, how):
    """`appa evaluate` on an archive with a damaged chunk says, in one line, which archive,
    variable and chunk, instead of a decoder's traceback."""
    out = tmp_path / "reanalysis.zarr"
    shutil.copytree(finished, out)
    _damage(out, how)
    code, output = _cli("evaluate", out, "--truth", world["truth"])
    assert code == 2, output
    assert output.count("\n") == 1, output
    problem = "is missing" if how == "deleted" else "cannot be read (RuntimeError: "
    assert output.startswith(
        f"error: reanalysis: archive {out}: 2m_temperature chunk 1.0.0.0 {problem}"
    ), output


def test_verification_reads_back_without_changing_a_sound_archive(finished, tmp_path):
    """Reopening a sound archive to resume reads it back, finds nothing, and leaves it
    complete, its done flags and checksums as they were."""
    out = tmp_path / "reanalysis.zarr"
    shutil.copytree(finished, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    archive = Archive(out)
    assert archive.check_units() == [] and archive.verify() == []
    assert archive.complete
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    sums = json.loads((out / "appa_units" / ".zattrs").read_text())["checksums"]
    assert sums == {"algorithm": "sha256", "variables": sorted(archive.records["variables"])}


def test_a_damaged_archive_is_no_longer_complete_until_recomputed(finished, tmp_path):
    """Verification of a damaged complete archive marks the damaged unit pending and the
    archive "writing": it cannot be finalised before the unit is written again."""
    out = tmp_path / "reanalysis.zarr"
    shutil.copytree(finished, out)
    _damage(out, "swapped")
    archive = Archive(out)
    damaged = archive.verify()
    assert [str(d) for d in damaged] == [
        "unit member=1:2,time=0:8 of 2m_temperature failed its read-back check (its data "
        "differ from what was written)"
    ]
    assert not archive.complete and archive.done_mask().tolist() == [True, False]
    assert not Archive(out).complete  # as a fresh reader sees it (consolidated metadata too)
    with pytest.raises(ArchiveError, match="1 of 2 units are not done"):
        archive.finalize()


def test_appa_verify_names_the_damage_and_changes_nothing(finished, climatology, tmp_path):
    """`appa verify ARCHIVE` reads an archive back without changing it: exit 0 when sound,
    exit 1 naming each damaged unit (a job's archive) or chunk (an archive written whole)."""
    out = tmp_path / "reanalysis.zarr"
    shutil.copytree(finished, out)
    code, output = _cli("verify", out)
    assert code == 0 and "2 of 2 units done, each reads back as written" in output, output
    _damage(out, "garbage")
    before = _contents(out)
    code, output = _cli("verify", out)
    assert code == 1, output
    assert output.startswith(
        "damaged: unit member=1:2,time=0:8 of 2m_temperature failed its read-back check "
        "(cannot be read: RuntimeError: "
    ), output
    assert _contents(out) == before and Archive(out).complete

    whole = tmp_path / "climatology.zarr"
    shutil.copytree(climatology, whole)
    chunk = next(p for p in sorted((whole / "temperature").iterdir()) if p.name[0] != ".")
    chunk.write_bytes(chunk.read_bytes()[:100])
    code, output = _cli("verify", whole)
    assert code == 1, output
    assert output.startswith(f"damaged: temperature chunk {chunk.name} cannot be read ("), output
    code, output = _cli("verify", tmp_path / "nothing.zarr")
    assert code == 2 and output.startswith("error: no archive at"), output
