"""appa.files.written_whole: a target is absent, old or whole, never half-written, and only
what the writer may replace is replaced."""

from __future__ import annotations

import json

import pytest

from appa.files import OutputExistsError, written_whole


def _table(tmp, text: str) -> None:
    """A folder marked as a score table, holding ``text``."""
    tmp.mkdir()
    (tmp / ".zattrs").write_text(json.dumps({"appa_product": "scores"}))
    (tmp / "a").write_text(text)


def test_written_whole_replaces_files_and_folders_and_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "sub" / "table.zarr"
    with written_whole(out, "scores") as tmp:
        assert not tmp.exists() and tmp.parent == out.parent and tmp.name.startswith(".")
        _table(tmp, "first")
    assert (out / "a").read_text() == "first"

    with pytest.raises(RuntimeError, match="killed"):
        with written_whole(out, "scores", overwrite=True) as tmp:
            _table(tmp, "half")
            raise RuntimeError("killed")
    assert (out / "a").read_text() == "first"
    assert sorted(p.name for p in out.parent.iterdir()) == ["table.zarr"]

    # our own product of the same kind is replaced only when the caller says so
    mine = r"exists \(an Appa score table\); pass --overwrite"
    with pytest.raises(OutputExistsError, match=mine):
        with written_whole(out, "scores"):
            pass
    with written_whole(out, "scores", overwrite=True) as tmp:
        _table(tmp, "second")
    assert (out / "a").read_text() == "second"

    # a file of the caller's naming replaces a file, never a folder that holds anything
    with pytest.raises(OutputExistsError, match="is a directory; refusing"):
        with written_whole(out) as tmp:
            tmp.write_text("now a file")
    assert (out / "a").read_text() == "second"
    summary = out.parent / "summary.json"
    for text in ("one", "two"):
        with written_whole(summary) as tmp:
            tmp.write_text(text)
    assert summary.read_text() == "two"
    assert sorted(p.name for p in out.parent.iterdir()) == ["summary.json", "table.zarr"]
