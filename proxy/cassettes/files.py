"""Cassette files on disk: read only when they are regular files (written with
`proxy.files.atomic_write`)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from proxy.errors import CassetteFileError

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


@contextmanager
def open_regular(path: Path, *, max_bytes: int) -> Iterator[IO[bytes]]:
    """`path` opened for reading if it is a regular file of at most `max_bytes` (a symbolic
    link is followed: one to a regular file is read). Both are checked on the open file,
    before any byte is read, so a FIFO never makes the open or a read wait for a writer, a
    device such as /dev/zero is never read without end, and a file swapped in between the
    check and the read cannot be."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a file")
            raise CassetteFileError(None, f"not a regular file ({kind})", str(path))
        if st.st_size > max_bytes:
            raise CassetteFileError(
                None,
                f"{st.st_size} bytes is more than the {max_bytes} bytes a cassette file may have",
                str(path),
            )
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f
