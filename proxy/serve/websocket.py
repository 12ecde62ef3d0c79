"""WebSocket sessions: relayed live and recorded per message, or replayed as a conversation.

A WebSocket upgrade (reverse mode, absolute form, or inside an intercepted CONNECT tunnel)
goes through the same control headers, match key and `Index.resolve` as any request: the
handshake is an interaction (its request; the upstream's `101` head) whose body is the
session's messages (`proxy.core.messages`). This module decides; `ws_relay` forwards and
records, `ws_replay` plays a recording back.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from proxy.config import Mode
from proxy.core.messages import (
    redact_handshake,
)
from proxy.core.records import Request
from proxy.errors import ReplayMiss
from proxy.serve.entry import Entry
from proxy.serve.pipeline import control, upstream_request
from proxy.serve.replay import replay as replay_http
from proxy.serve.state import RunState, Services
from proxy.serve.ws_relay import forward
from proxy.serve.ws_replay import replay_session
from proxy.serve.ws_session import HANDSHAKE, Session, log_session


def is_upgrade(request: web.BaseRequest) -> bool:
    """A WebSocket opening handshake (RFC 6455 section 4.1)."""
    h = request.headers
    return (
        request.method == "GET"
        and h.get("Upgrade", "").strip().lower() == "websocket"
        and "upgrade" in {t.strip().lower() for t in h.get("Connection", "").split(",")}
    )


async def handle(request: web.Request, services: Services, state: RunState) -> web.StreamResponse:
    """control → key → resolve → replay the conversation | relay it (and record)."""
    t0 = asyncio.get_running_loop().time()
    ctl = control(request, services.settings, state)
    sent = await upstream_request(request, services.settings)
    headers = tuple((n, v) for n, v in sent.headers if n.lower() not in HANDSHAKE)
    wanted = Request(sent.method, sent.url, headers, b"")
    stored = services.redactor.request(wanted)
    stored = Request(stored.method, stored.url, redact_handshake(stored.headers), b"")
    session = Session(request, services, state, ctl, wanted, stored, t0)
    task: asyncio.Task[object] | None = asyncio.current_task()
    if task is not None:
        state.websockets.add(task)
    try:
        return await _handle(session)
    finally:
        state.websockets.discard(task)


async def _handle(session: Session) -> web.StreamResponse:
    request, services, ctl, stored = session.request, session.services, session.ctl, session.stored
    if ctl.mode in (Mode.PASSTHROUGH, Mode.RECORD):
        return await forward(session, key=None)
    found = await services.index.resolve(
        ctl.cassette,
        stored,
        replay=ctl.mode is Mode.REPLAY,
        strict=services.settings.strict,
        hurry=services.recorder.hurry,
    )
    if isinstance(found, Entry):
        if found.head.status != 101:  # the upstream refused the handshake: the same answer
            response, _ = await replay_http(
                request, ctl.cassette, found, services.bodies, ctl.pace, session.t0
            )
            log_session(session, response.status, "replayed", 0)
            return response
        return await replay_session(session, found)
    if ctl.mode is Mode.REPLAY:
        log_session(session, 404, found.log, 0)
        raise ReplayMiss(found.message)
    return await forward(session, key=found.key)


async def stop_sessions(state: RunState) -> None:
    """The proxy stops: end the WebSocket sessions still open (their handlers are cancelled;
    a recording is kept as incomplete, never replayed), rather than wait for them."""
    for task in list(state.websockets):
        task.cancel()
