"""Application state: what the handlers share, under typed `web.AppKey`s."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.config import Settings
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
    """The active cassette, for requests that name none (changed through the admin API), and
    what the current run has done."""

    cassette: str
    report: RunReport = field(default_factory=RunReport)


SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
RUN = web.AppKey("run", RunState)
