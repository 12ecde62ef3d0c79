"""One WebSocket session on its way through the proxy (`proxy.serve.websocket`): what the
relay (`ws_relay`) and the replay (`ws_replay`) share, and its log line."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from proxy.core.printable import printable
from proxy.core.records import Request
from proxy.serve.pipeline import Control
from proxy.serve.state import RunState, Services

log = logging.getLogger(__name__)

HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-accept", "content-length"})
"""Handshake headers each side makes afresh: neither forwarded nor recorded."""
NEGOTIATED = frozenset(
    {"sec-websocket-protocol", "sec-websocket-extensions", "sec-websocket-version"}
)
"""Made by aiohttp (`protocols`, `compress`) from what each side offered: recorded (the
version and the subprotocols are matched: a handshake never answers a plain request), not
forwarded as they came."""


@dataclass(frozen=True)
class Session:
    """A WebSocket handshake once its control headers are read."""

    request: web.Request
    services: Services
    state: RunState
    ctl: Control
    wanted: Request  # the handshake that goes upstream (less what aiohttp negotiates)
    stored: Request  # ... as it is matched and recorded: redacted
    t0: float


def where(url: str) -> str:
    """The URL for a log line: no query (it may hold a key), control characters escaped."""
    return printable(url.split("?", 1)[0])


def log_session(session: Session, status: int, what: str, messages: int) -> None:
    """One line per session, as the pipeline writes one per interaction."""
    ms = (asyncio.get_running_loop().time() - session.t0) * 1000
    log.info(
        "%s %s WEBSOCKET %s -> %d %s, %d messages, %.0f ms",
        session.ctl.mode,
        printable(session.ctl.cassette),
        where(session.stored.url),
        status,
        what,
        messages,
        ms,
    )
