"""appa.files.written_whole: a target is absent, old or whole, never half-written."""

from __future__ import annotations

import pytest

from appa.files import written_whole


def test_written_whole_replaces_files_and_folders_and_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "sub" / "table.zarr"
    with written_whole(out) as tmp:
        assert not tmp.exists() and tmp.parent == out.parent and tmp.name.startswith(".")
        tmp.mkdir()
        (tmp / "a").write_text("first")
    assert (out / "a").read_text() == "first"

    with pytest.raises(RuntimeError, match="killed"):
        with written_whole(out) as tmp:
            tmp.mkdir()
            (tmp / "a").write_text("half")
            raise RuntimeError("killed")
    assert (out / "a").read_text() == "first"
    assert sorted(p.name for p in out.parent.iterdir()) == ["table.zarr"]

    # a file may replace a folder, and the reverse
    with written_whole(out) as tmp:
        tmp.write_text("now a file")
    assert out.read_text() == "now a file"
    with written_whole(out) as tmp:
        tmp.mkdir()
    assert out.is_dir() and not any(out.iterdir())
