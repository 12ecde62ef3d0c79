"""What the UI's handlers share: the store's engines, whether changes are allowed, the
CSRF token, and, inside `rrproxy serve`, the running proxy (its index, run and misses)."""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.config import Settings
from proxy.serve.state import RunState, Services
from proxy.ui.llm import Summary
from proxy.ui.misses import Misses


@dataclass
class Ui:
    settings: Settings
    reader: AsyncEngine
    writer: AsyncEngine | None  # None: read-only (`rrproxy ui` unless --writable)
    services: Services | None = None  # inside `rrproxy serve`
    run: RunState | None = None
    cassette_dir: Path | None = None  # the files a delete must remove too
    misses: Misses = field(default_factory=Misses)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    scans: dict[str, tuple[tuple[int, int], str]] = field(default_factory=dict)
    """Secret-scan status by cassette, with the (interactions, events) it was taken at."""
    timelines: OrderedDict[int, dict[str, Any]] = field(default_factory=OrderedDict)
    """Timelines drawn of finished recordings, by interaction id (the latest few)."""
    summaries: OrderedDict[int, Summary] = field(default_factory=OrderedDict)
    """LLM summaries of finished recordings, likewise (each holds at most 256 KiB of text)."""

    @property
    def serving(self) -> bool:
        return self.services is not None


UI = web.AppKey("rrproxy_ui", Ui)
