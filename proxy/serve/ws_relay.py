"""A WebSocket session relayed live, both ways, and recorded per message.

The upstream handshake is made first with what the client offered (its subprotocols;
permessage-deflate only if the client offered it), and the client is given what the
upstream agreed (the upstream's 101 head is recorded as it came). Then two pumps copy
messages each way as they come (text, binary, ping and pong, close code and reason;
aiohttp reassembles fragmented messages) and hand each to the recorder, which never makes
them wait but for back-pressure. A side that drops its connection without a close frame is
recorded as a close 1006 from that side, and the other side is ended the same way.

aiohttp internals used: `ClientWebSocketResponse._response` (the handshake's response,
which aiohttp keeps and does not expose).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from proxy.config import Mode
from proxy.core.headers import end_to_end
from proxy.core.messages import (
    ABNORMAL,
    NO_STATUS,
    Kind,
    Message,
    close_of,
    offered_protocols,
)
from proxy.core.records import Outcome, Recording, ResponseHead
from proxy.errors import UpstreamError
from proxy.forward_proxy.policy import FORWARD_HOPS
from proxy.serve.connection import break_connection
from proxy.serve.entry import Entry
from proxy.serve.upstream import describe
from proxy.serve.ws_session import HANDSHAKE, NEGOTIATED, Session, log_session, where

log = logging.getLogger(__name__)

_FINISH_S = 10.0
"""How long the other direction may take to finish once one side has closed."""


async def _connect(session: Session) -> aiohttp.ClientWebSocketResponse | web.Response:
    """The upstream's session, or the answer it gave instead of a 101."""
    wanted = session.wanted
    offered = session.request.headers.get("Sec-WebSocket-Extensions", "")
    hops = session.request[FORWARD_HOPS]
    headers = [(n, v) for n, v in wanted.headers if n.lower() not in NEGOTIATED]
    if hops:
        headers.append(("Rrproxy-Hops", hops))
    url = URL(wanted.url, encoded=True)
    try:
        return await session.services.upstream.ws_connect(
            url,
            headers=headers,
            protocols=offered_protocols(wanted.headers),
            compress=15 if "permessage-deflate" in offered.lower() else 0,
            autoclose=False,
            autoping=False,
            max_msg_size=0,
        )
    except aiohttp.WSServerHandshakeError as exc:
        # Its status and headers; aiohttp does not keep the body of a refused handshake, so
        # the headers that describe one go too.
        refused = end_to_end(exc.headers.items() if exc.headers is not None else ())
        return web.Response(
            status=exc.status,
            headers=[(n, v) for n, v in refused if not n.lower().startswith("content-")],
        )
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamError(
            f"cannot connect to upstream {url.scheme}://{url.authority}: "
            f"{exc.os_error.strerror or exc}; is it running, and is --upstream right?"
        ) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError(
            f"upstream {url.scheme}://{url.authority} failed the WebSocket handshake: "
            f"{describe(exc)}"
        ) from exc


def _agreed_head(upstream: aiohttp.ClientWebSocketResponse) -> ResponseHead:
    """The upstream's 101 as it sent it (what was agreed included), less what each side
    makes afresh."""
    response = upstream._response  # aiohttp keeps the handshake's response here, only
    pairs = tuple(
        (n, v)
        for n, v in response.headers.items()
        if n.lower() not in HANDSHAKE | {"upgrade", "connection"}
    )
    return ResponseHead(response.status, pairs)


async def forward(session: Session, *, key: str | None) -> web.StreamResponse:
    services, ctl = session.services, session.ctl
    connected = await _connect(session)
    loop = asyncio.get_running_loop()
    ttfb = round((loop.time() - session.t0) * 1000, 3)
    recording = ctl.mode is not Mode.PASSTHROUGH
    source = "recorded" if recording else "passthrough"
    if isinstance(connected, web.Response):  # refused: an ordinary interaction, no body
        head = ResponseHead(connected.status, tuple(connected.headers.items()))
        if recording:
            refused, refused_entry = _begin(session, key, services.redactor.head(head), ttfb)
            services.recorder.end(refused, Outcome.COMPLETE, ttfb)
            refused_entry.outcome = Outcome.COMPLETE
        connected.headers["Rrproxy-Source"] = source
        log_session(session, connected.status, source, 0)
        return connected
    upstream = connected
    head = _agreed_head(upstream)
    ws = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        compress=bool(upstream.compress),
        max_msg_size=0,
        autoclose=False,
        autoping=False,
    )
    for name, value in head.headers:
        if name.lower() not in NEGOTIATED:
            ws.headers.add(name, value)
    ws.headers["Rrproxy-Source"] = source
    rec: Recording | None = None
    entry: Entry | None = None
    if recording:
        rec, entry = _begin(session, key, services.redactor.head(head), ttfb)
    pumps = _Pumps(session, ws, upstream, rec)
    try:
        await ws.prepare(session.request)
        await pumps.run()
    except asyncio.CancelledError:
        if not pumps.closed:  # (a session that had ended is whole: the rest is the goodbye)
            pumps.outcome, pumps.error = Outcome.INCOMPLETE, "the proxy stopped mid-session"
        raise
    finally:
        await upstream.close()
        if rec is not None and entry is not None:
            t = round((loop.time() - session.t0) * 1000, 3)
            services.recorder.end(rec, pumps.outcome, t, pumps.error)
            entry.outcome = pumps.outcome
    what = source if pumps.outcome is Outcome.COMPLETE else f"{source} ({pumps.outcome})"
    log_session(session, 101, what, pumps.messages)
    return ws


def _begin(
    session: Session, key: str | None, head: ResponseHead, ttfb: float
) -> tuple[Recording, Entry]:
    """The handshake joins the index and the recording begins (neither waits)."""
    services, cassette = session.services, session.ctl.cassette
    entry = Entry.recording(session.stored, key, head, ttfb)

    def committed(rec: Recording) -> None:
        if rec.interaction_id is not None:
            services.bodies.forget(rec.interaction_id)
        entry.stored(rec.interaction_id, rec.size, dropped=rec.dropped)

    services.index.add(cassette, entry, use=session.ctl.mode is Mode.AUTO)
    rec = services.recorder.begin(cassette, session.stored, head, ttfb, committed)
    return rec, entry


class _Pumps:
    """The two directions of one relayed session, and how it ended."""

    def __init__(
        self,
        session: Session,
        ws: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        rec: Recording | None,
    ):
        self.session = session
        self.ws = ws
        self.upstream = upstream
        self.rec = rec
        self.recorder = session.services.recorder
        self.outcome = Outcome.COMPLETE
        self.error: str | None = None
        self.messages = 0
        self.closed = False  # a close (or a drop) was seen on either side
        self._clock = asyncio.get_running_loop().time

    async def run(self) -> None:
        to_upstream = asyncio.create_task(self._pump(True), name="rrproxy-ws-client")
        to_client = asyncio.create_task(self._pump(False), name="rrproxy-ws-upstream")
        tasks = {to_upstream, to_client}
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if pending:
                _, pending = await asyncio.wait(pending, timeout=_FINISH_S)
            for task in done:
                task.result()  # a bug in a pump is not swallowed
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _record(self, message: Message) -> bool:
        """Hand the message to the recorder; whether the store is behind this recording
        (the pump then waits for `room`, after passing the message on)."""
        if self.rec is None:
            return False
        self.recorder.message(self.rec, message)
        return self.recorder.behind(self.rec)

    def _ms(self) -> float:
        return round((self._clock() - self.session.t0) * 1000, 3)

    async def _pump(self, from_client: bool) -> None:
        src: aiohttp.ClientWebSocketResponse | web.WebSocketResponse
        dst: aiohttp.ClientWebSocketResponse | web.WebSocketResponse
        src, dst = (self.ws, self.upstream) if from_client else (self.upstream, self.ws)
        while True:
            msg = await src.receive()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                text = msg.type is WSMsgType.TEXT
                data = msg.data.encode("utf-8") if text else msg.data
                kind = Kind.TEXT if text else Kind.BINARY
                self.messages += 1
                behind = self._record(Message(self._ms(), from_client, kind, data))
                try:
                    if text:
                        await dst.send_str(msg.data)
                    else:
                        await dst.send_bytes(msg.data)
                except ConnectionError:
                    pass  # the other side is going: its own pump sees how
                if behind and self.rec is not None:
                    await self.recorder.room(self.rec)
            elif msg.type is WSMsgType.PING:  # relayed, not recorded: control frames
                with contextlib.suppress(ConnectionError):
                    await dst.ping(msg.data)
            elif msg.type is WSMsgType.PONG:
                with contextlib.suppress(ConnectionError):
                    await dst.pong(msg.data)
            elif msg.type is WSMsgType.CLOSE:  # code 0: a close without one (1005)
                await self._closed_by(from_client, msg.data or NO_STATUS, msg.extra or "")
                return
            else:  # CLOSING: our own close of this side is under way; CLOSED, ERROR: a drop
                if msg.type is not WSMsgType.CLOSING and not self.closed:
                    await self._dropped_by(from_client, msg.data)
                return

    async def _closed_by(self, from_client: bool, code: int, reason: str) -> None:
        """`from_client`'s side closed: record it, pass the close on, then answer it."""
        if self.closed:
            return
        self.closed = True
        self._record(close_of(self._ms(), from_client, code, reason))
        src, dst = (self.ws, self.upstream) if from_client else (self.upstream, self.ws)
        code = 1000 if code == NO_STATUS else code  # 1005 is never sent (RFC 6455 7.4.1)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await dst.close(code=code, message=reason.encode("utf-8"))
        with contextlib.suppress(ConnectionError, RuntimeError):
            await src.close(code=code)

    async def _dropped_by(self, from_client: bool, cause: object) -> None:
        """`from_client`'s side dropped its connection without a close frame: record a
        close 1006 from it, and end the other side (a client that left: the upstream
        session is closed as going away; an upstream that broke: the client's connection
        is broken the same way)."""
        self.closed = True
        self._record(close_of(self._ms(), from_client, ABNORMAL))
        what = f" ({describe(cause)})" if isinstance(cause, BaseException) else ""
        if from_client:
            self.outcome = Outcome.CLIENT_GONE
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.upstream.close(code=1001, message=b"client went away")
        else:
            self.outcome = Outcome.UPSTREAM_BROKEN
            self.error = f"upstream dropped the WebSocket connection without a close{what}"
            log.warning("%s: %s", where(self.session.stored.url), self.error)
            break_connection(self.session.request)
