"""Application state: what the handlers share, under typed `web.AppKey`s."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from .config import Settings
from .index import Index
from .recorder import Recorder
from .redact import Redactor
from .replay import Bodies

T = TypeVar("T")


@dataclass(frozen=True)
class Services:
    """What the handlers need, all created and closed by the app's cleanup context."""

    settings: Settings
    index: Index
    recorder: Recorder
    reader: AsyncEngine
    upstream: aiohttp.ClientSession
    redactor: Redactor
    bodies: Bodies
    background: set[asyncio.Task[Any]] = field(default_factory=set)

    async def shielded(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` to its end even if the caller is cancelled; the app waits for it at
        shutdown (`settle`)."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(_forget(self.background))
        return await asyncio.shield(task)

    async def settle(self, grace: float) -> None:
        """At shutdown: let shielded work finish (bounded), then cancel what is left."""
        if self.background:
            _, pending = await asyncio.wait(self.background, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def _forget(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not warn: a caller still there got it

    return done


@dataclass
class RunState:
    """The active cassette, for requests that name none (changed through the admin API)."""

    cassette: str


SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
RUN = web.AppKey("run", RunState)
