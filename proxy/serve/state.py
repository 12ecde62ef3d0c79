"""Application state: what the handlers share, under typed `web.AppKey`s."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.config import Mode, Settings
from proxy.core.redact import Redactor
from proxy.serve.index import Index
from proxy.serve.recorder import Recorder
from proxy.serve.replay import Bodies
from proxy.serve.run_report import RunReport


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


@dataclass
class RunState:
    """The active cassette, for requests that name none (changed through the admin API), the
    mode when the UI has switched it (None: the configured one), and what the current run
    has done."""

    cassette: str
    mode: Mode | None = None
    report: RunReport = field(default_factory=RunReport)
    miss_listeners: list[Callable[[str], None]] = field(default_factory=list)
    """Called with the message of each replay miss that happens after a response has begun
    (a WebSocket client message that differs): the pytest plugin fails the test with it."""
    websockets: set[asyncio.Task[object]] = field(default_factory=set)
    """The handlers of the WebSocket sessions open now: stopped when the proxy stops (a
    session has no end of its own to wait for)."""
    new_run_listeners: list[Callable[[], None]] = field(default_factory=list)
    """Called when a new run starts (`new_run`): the UI forgets the last run's misses."""

    def new_run(self, services: Services) -> None:
        """Start a new replay run: every counter back to zero, cassettes and bodies read
        again from the store, and what listens told."""
        self.report.reset()
        services.index.reset()
        services.bodies.clear()
        for listener in self.new_run_listeners:
            listener()


SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
RUN = web.AppKey("run", RunState)
