"""Where a batch meets the database: on SQLite, a thread of its own.

SQLite writes run in one thread on a synchronous twin of the engine (datasette's write
thread): one hop between threads per batch, not one per statement. Any other database is
written through the async engine (`AsyncConnection.run_sync`). The recorder
(`proxy.serve.recorder`) decides when to write and what; the statements are
`proxy.store.writes`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.core.records import Recording
from proxy.store.engine import checkpoint, create_writer_thread_engine, is_sqlite
from proxy.store.writes import Batch, CoreStatements, rehearse, write_batch, write_in_thread

log = logging.getLogger(__name__)

WRITER_NICENESS = 19


class BatchWriter:
    def __init__(self, engine: AsyncEngine, instance: int | None = None):
        self._engine = engine
        self.instance = instance  # this proxy's row in `instances`, on each new interaction
        self._thread: ThreadPoolExecutor | None = None
        self._thread_engine: Engine | None = None
        url = engine.url.render_as_string(hide_password=False)
        if is_sqlite(url):
            self._thread = ThreadPoolExecutor(
                1, thread_name_prefix="rrproxy-writer", initializer=_give_way
            )
            self._thread_engine = create_writer_thread_engine(url)

    async def warm_up(self) -> None:
        """Start the writer thread and have it write a recording, rolled back, so that its
        connection is open and its statements are compiled before the first batch, which
        would otherwise pay for them (milliseconds of CPU) in the middle of the first
        streams."""
        if self._thread is None or self._thread_engine is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, rehearse, self._thread_engine)
        except Exception as exc:  # the first batch will pay, that is all
            log.debug("the writer's warm-up failed: %s", getattr(exc, "orig", None) or exc)

    async def write(
        self, batch: Batch, known: dict[str, int]
    ) -> tuple[dict[str, int], dict[Recording, int]]:
        """One transaction (`write_batch`): the cassette ids it used, the new interactions'
        ids."""
        if self._thread is not None:
            assert self._thread_engine is not None
            return await asyncio.get_running_loop().run_in_executor(
                self._thread, write_in_thread, self._thread_engine, batch, known, self.instance
            )
        async with self._engine.begin() as conn:
            return await conn.run_sync(
                lambda sync: write_batch(CoreStatements(sync), batch, known, self.instance)
            )

    async def checkpoint(self) -> None:
        """Move SQLite's WAL into the database file, as far as readers allow."""
        if self._thread is None or self._thread_engine is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, checkpoint, self._thread_engine)
        except Exception as exc:  # the next idle moment, or SQLite's own, will do it
            log.debug("checkpoint failed: %s", getattr(exc, "orig", None) or exc)

    async def close(self) -> None:
        if self._thread is not None and self._thread_engine is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._thread, self._thread_engine.dispose)
            self._thread.shutdown(wait=False)


def _give_way() -> None:
    """In the writer thread, on Linux: the lowest CPU priority (nice 19), so that the
    relays, and the clients and upstreams sharing the machine, are never kept waiting by
    a batch. A core that nothing else wants still writes at full speed. Where the system
    refuses, the writer writes at the process's priority: it must not fail over this."""
    if sys.platform == "linux":  # elsewhere a thread id is not a `setpriority` target
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
        except OSError as exc:
            log.debug("the writer thread keeps the process's CPU priority: %s", exc)
