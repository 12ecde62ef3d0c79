"""Files that appear complete or not at all: the one atomic write that cassette files, the
CA and trust bundles share. Below every layer: it imports nothing of rrproxy's."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(path: Path, mode: int | None = None) -> Iterator[IO[bytes]]:
    """A file that appears at `path` complete or not at all: a temporary file beside it,
    flushed to disk, renamed over `path`, and the directory synced so that the rename
    itself survives a crash. `mode` sets the permissions before any byte is written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_directory(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes, mode: int | None = None) -> None:
    with atomic_write(path, mode) as f:
        f.write(data)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
