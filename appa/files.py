"""Writing a file or folder whole: into a temporary sibling, then one rename over the target."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["written_whole"]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def written_whole(out: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary sibling path of ``out`` (not yet created) to write a file or a folder
    (a Zarr store) into.

    When the block ends, the temporary replaces ``out`` (an existing ``out`` is removed first);
    when the block raises, the temporary is removed and ``out`` is left as it was. Readers see
    ``out`` absent, old or whole, never half-written; a killed writer leaves only a hidden
    ``.NAME.tmp-*`` sibling.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        _remove(out)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
