"""A progress line on a terminal, for commands that may take a while (export, import): shown
once the work has taken `AFTER_S` seconds, redrawn at most `EVERY_S`, only when standard
error is a terminal (never in a pipe, a log or CI)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

AFTER_S = 2.0
EVERY_S = 0.1


class Progress:
    """`update(done, total)` as the work goes; `close()` ends the line if one was shown."""

    def __init__(
        self,
        what: str,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._what = what
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._start = clock()
        self._drawn_at: float | None = None
        self._on = self._stream.isatty()

    def update(self, done: int, total: int) -> None:
        if not self._on:
            return
        now = self._clock()
        if now - self._start < AFTER_S:
            return
        if self._drawn_at is not None and now - self._drawn_at < EVERY_S and done < total:
            return
        self._drawn_at = now
        share = f" ({100 * done // total}%)" if total else ""
        self._stream.write(f"\r{self._what}: {done:,}/{total:,} interactions{share}")
        self._stream.flush()

    def close(self) -> None:
        if self._drawn_at is not None:
            self._stream.write("\n")
            self._stream.flush()
