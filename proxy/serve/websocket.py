"""WebSocket sessions: relayed live and recorded per message, or replayed as a conversation.

A WebSocket upgrade (reverse mode, absolute form, or inside an intercepted CONNECT tunnel)
goes through the same control headers, match key and `Index.resolve` as any request: the
handshake is an interaction (its request; the upstream's `101` head) whose body is the
session's messages (`proxy.core.messages`).

Forward (record, auto, passthrough): the upstream handshake is made first with what the
client offered (its subprotocols; permessage-deflate only if the client offered it), and
the client is given what the upstream agreed. Then two pumps copy messages each way as they
come (text, binary, ping and pong, close code and reason; aiohttp reassembles fragmented
messages) and hand each to the recorder, which never makes them wait but for back-pressure.
A side that drops its connection without a close frame is recorded as a close 1006 from
that side, and the other side is ended the same way.

Replay: the recorded head is answered with the recorded subprotocol, then the recording is
walked in order: a recorded client message waits for the client's next message and compares
it (`message_differences`: canonical JSON, ignored fields, `event_id` among them); the
server messages after it are sent at the pace chosen, timed from the client's message. The
first difference closes the socket with 1008 and a reason that names it, and is logged as a
miss. The recorded close ends the session as it ended (1006: the connection is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from proxy.config import Mode, Pace
from proxy.core.headers import get
from proxy.core.messages import (
    ABNORMAL,
    POLICY_VIOLATION,
    Kind,
    Message,
    close_of,
    close_reason,
    message_differences,
    offered_protocols,
    redact_handshake,
    with_ignored,
)
from proxy.core.printable import printable
from proxy.core.records import Outcome, Recording, Request, ResponseHead
from proxy.errors import ReplayMiss, UpstreamError
from proxy.forward_proxy.policy import FORWARD_HOPS
from proxy.serve.connection import break_connection
from proxy.serve.entry import Entry
from proxy.serve.pipeline import Control, control, upstream_request
from proxy.serve.replay import replay as replay_http
from proxy.serve.state import RunState, Services
from proxy.serve.upstream import describe
from proxy.store import queries

log = logging.getLogger(__name__)

_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-accept", "content-length"})
"""Handshake headers each side makes afresh: neither forwarded nor recorded."""
_NEGOTIATED = frozenset(
    {"sec-websocket-protocol", "sec-websocket-extensions", "sec-websocket-version"}
)
"""Made by aiohttp (`protocols`, `compress`) from what each side offered: recorded (the
version and the subprotocols are matched: a handshake never answers a plain request), not
forwarded as they came."""
_FINISH_S = 10.0
"""How long the other direction may take to finish once one side has closed."""


def is_upgrade(request: web.BaseRequest) -> bool:
    """A WebSocket opening handshake (RFC 6455 section 4.1)."""
    h = request.headers
    return (
        request.method == "GET"
        and h.get("Upgrade", "").strip().lower() == "websocket"
        and "upgrade" in {t.strip().lower() for t in h.get("Connection", "").split(",")}
    )


@dataclass(frozen=True)
class _Session:
    request: web.Request
    services: Services
    state: RunState
    ctl: Control
    wanted: Request  # the handshake that goes upstream (less what aiohttp negotiates)
    stored: Request  # ... as it is matched and recorded: redacted
    t0: float


async def handle(request: web.Request, services: Services, state: RunState) -> web.StreamResponse:
    """control → key → resolve → replay the conversation | relay it (and record)."""
    t0 = asyncio.get_running_loop().time()
    ctl = control(request, services.settings, state)
    sent = await upstream_request(request, services.settings)
    headers = tuple((n, v) for n, v in sent.headers if n.lower() not in _HANDSHAKE)
    wanted = Request(sent.method, sent.url, headers, b"")
    stored = services.redactor.request(wanted)
    stored = Request(stored.method, stored.url, redact_handshake(stored.headers), b"")
    session = _Session(request, services, state, ctl, wanted, stored, t0)
    if ctl.mode in (Mode.PASSTHROUGH, Mode.RECORD):
        return await _forward(session, key=None)
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
                request, ctl.cassette, found, services.bodies, ctl.pace, t0
            )
            _log(session, response.status, "replayed", 0)
            return response
        return await _replay(session, found)
    if ctl.mode is Mode.REPLAY:
        _log(session, 404, found.log, 0)
        raise ReplayMiss(found.message)
    return await _forward(session, key=found.key)


# -- forward and record ---------------------------------------------------------------------


async def _connect(session: _Session) -> aiohttp.ClientWebSocketResponse | web.Response:
    """The upstream's session, or the answer it gave instead of a 101."""
    wanted = session.wanted
    offered = session.request.headers.get("Sec-WebSocket-Extensions", "")
    hops = session.request[FORWARD_HOPS]
    headers = [(n, v) for n, v in wanted.headers if n.lower() not in _NEGOTIATED]
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
        refused = exc.headers.items() if exc.headers is not None else ()
        return web.Response(
            status=exc.status,
            headers=[(n, v) for n, v in refused if n.lower() not in ("content-length",)],
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
        if n.lower() not in _HANDSHAKE | {"upgrade", "connection"}
    )
    return ResponseHead(response.status, pairs)


async def _forward(session: _Session, *, key: str | None) -> web.StreamResponse:
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
        _log(session, connected.status, source, 0)
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
        if name.lower() not in _NEGOTIATED:
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
        pumps.outcome, pumps.error = Outcome.INCOMPLETE, "the proxy stopped mid-session"
        raise
    finally:
        await upstream.close()
        if rec is not None and entry is not None:
            t = round((loop.time() - session.t0) * 1000, 3)
            services.recorder.end(rec, pumps.outcome, t, pumps.error)
            entry.outcome = pumps.outcome
    what = source if pumps.outcome is Outcome.COMPLETE else f"{source} ({pumps.outcome})"
    _log(session, 101, what, pumps.messages)
    return ws


def _begin(
    session: _Session, key: str | None, head: ResponseHead, ttfb: float
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
        session: _Session,
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
            elif msg.type is WSMsgType.CLOSE:
                await self._closed_by(from_client, msg.data, msg.extra or "")
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
            log.warning("%s: %s", _where(self.session.stored.url), self.error)
            break_connection(self.session.request)


# -- replay ---------------------------------------------------------------------------------


async def _replay(session: _Session, entry: Entry) -> web.StreamResponse:
    assert entry.interaction_id is not None
    head = entry.head
    protocol = get(head.headers, "sec-websocket-protocol")
    extensions = (get(head.headers, "sec-websocket-extensions") or "").lower()
    ws = web.WebSocketResponse(
        protocols=(protocol,) if protocol else (),
        compress="permessage-deflate" in extensions,
        max_msg_size=0,
        autoclose=False,
        autoping=True,
    )
    for name, value in head.headers:
        if name.lower() not in _NEGOTIATED:
            ws.headers.add(name, value)
    ws.headers["Rrproxy-Source"] = "replayed"
    pace = session.ctl.pace
    if pace.factor is not None:
        delay = session.t0 + entry.ttfb_ms / 1000 / pace.factor - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
    await ws.prepare(session.request)
    conversation = _Conversation(session, ws, entry, pace)
    await conversation.run()
    _log(session, 101, conversation.what, conversation.sent)
    return ws


class _Conversation:
    """A recording played back to a client, message for message."""

    def __init__(self, session: _Session, ws: web.WebSocketResponse, entry: Entry, pace: Pace):
        self.session = session
        self.ws = ws
        self.entry = entry
        self.pace = pace
        self.rules = with_ignored(session.services.index.rules)
        self.sent = 0
        self.what = "replayed"
        self._incoming: asyncio.Queue[Message] = asyncio.Queue(maxsize=16)
        self._loop = asyncio.get_running_loop()
        self._anchor = (session.t0, 0.0)  # (loop time, recorded ms) the pace counts from

    async def run(self) -> None:
        reader = asyncio.create_task(self._read(), name="rrproxy-ws-replay-reader")
        try:
            await self._walk()
        except ConnectionError:
            pass  # the client went away
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if not self.ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.close()

    async def _read(self) -> None:
        """The client's messages, in order, into the queue (a close or a drop last)."""
        t0 = self.session.t0
        while True:
            msg = await self.ws.receive()
            t = round((self._loop.time() - t0) * 1000, 3)
            if msg.type is WSMsgType.TEXT:
                await self._incoming.put(Message(t, True, Kind.TEXT, msg.data.encode("utf-8")))
            elif msg.type is WSMsgType.BINARY:
                await self._incoming.put(Message(t, True, Kind.BINARY, msg.data))
            elif msg.type is WSMsgType.CLOSE:
                await self._incoming.put(close_of(t, True, msg.data, msg.extra or ""))
                return
            elif msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR):
                await self._incoming.put(close_of(t, True, ABNORMAL))
                return
            elif msg.type is WSMsgType.CLOSING:
                return  # we are closing it

    async def _walk(self) -> None:
        received = 0
        pages = queries.message_pages(self.session.services.reader, self.entry.interaction_id or 0)
        async for page in pages:
            for recorded in page:
                if recorded.from_client:
                    got = await self._incoming.get()
                    if got.kind is Kind.CLOSE:
                        await self._client_closed(got, received)
                        return
                    if recorded.kind is Kind.CLOSE:
                        await self._mismatch(
                            received + 1,
                            ["the client sent a message where the recording has its close"],
                        )
                        return
                    received += 1
                    diffs = message_differences(got, recorded, self.rules)
                    if diffs:
                        await self._mismatch(received, diffs)
                        return
                    self._anchor = (self._loop.time(), recorded.t_ms)
                else:
                    await self._wait_until(recorded.t_ms)
                    if recorded.kind is Kind.CLOSE:
                        await self._server_close(recorded)
                        return
                    if recorded.kind is Kind.TEXT:
                        await self.ws.send_str(recorded.data.decode("utf-8"))
                    else:
                        await self.ws.send_bytes(recorded.data)
                    self.sent += 1
        # A recording ends with its close; one without (imported that way) ends here.
        got = await self._incoming.get()
        if got.kind is Kind.CLOSE:
            await self._client_closed(got, received)
        else:
            await self._mismatch(received + 1, ["the recording has no more client messages"])

    async def _wait_until(self, t_ms: float) -> None:
        if self.pace.factor is None:
            return
        at, since = self._anchor
        delay = at + (t_ms - since) / 1000 / self.pace.factor - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _client_closed(self, close: Message, received: int) -> None:
        if close.code == ABNORMAL:
            self.what = f"replayed (client gone after {received} message(s))"
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=close.code or 1000)

    async def _server_close(self, recorded: Message) -> None:
        if recorded.code == ABNORMAL:  # the upstream broke it: the client's connection too
            self.what = "replayed (upstream broken)"
            break_connection(self.session.request)
            return
        await self.ws.close(code=recorded.code or 1000, message=recorded.data)

    async def _mismatch(self, number: int, diffs: list[str]) -> None:
        """Close with 1008 and a reason naming the first difference; log it as a miss."""
        self.what = "missed (client message differs)"
        cassette = self.session.ctl.cassette
        log.warning(
            "replay miss in cassette %s: client message %d of the WebSocket session %s "
            "(interaction %s, the closest recording) differs: %s",
            printable(repr(cassette)),
            number,
            _where(self.session.stored.url),
            self.entry.interaction_id,
            "; ".join(printable(d) for d in diffs),
        )
        for listener in self.session.state.miss_listeners:
            listener(
                f"client message {number} of the WebSocket session {self.session.stored.url} "
                f"in cassette {cassette!r} differs from the recording: " + "; ".join(diffs)
            )
        reason = close_reason(f"rrproxy replay miss: message {number}: {diffs[0]}")
        await self.ws.close(code=POLICY_VIOLATION, message=reason.encode("utf-8"))


def _where(url: str) -> str:
    return printable(url.split("?", 1)[0])


def _log(session: _Session, status: int, what: str, messages: int) -> None:
    ms = (asyncio.get_running_loop().time() - session.t0) * 1000
    log.info(
        "%s %s WEBSOCKET %s -> %d %s, %d messages, %.0f ms",
        session.ctl.mode,
        printable(session.ctl.cassette),
        _where(session.stored.url),
        status,
        what,
        messages,
        ms,
    )
