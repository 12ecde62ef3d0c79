"""A recorded WebSocket session replayed as a conversation.

The recorded head is answered with the recorded subprotocol and extension, then the
recording is walked in order: a recorded client message waits for the client's next message
and compares it (`message_differences`: canonical JSON, ignored fields, `event_id` among
them); the server messages after it are sent at the pace chosen, timed from the client's
message. The first difference closes the socket with 1008 and a reason that names it, and
is logged as a miss (and told to the run's miss listeners). The recorded close ends the
session as it ended (1006: the connection is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import WSMsgType, web

from proxy.config import Pace
from proxy.core.headers import get
from proxy.core.messages import (
    ABNORMAL,
    NO_STATUS,
    POLICY_VIOLATION,
    Kind,
    Message,
    close_of,
    close_reason,
    message_differences,
    with_ignored,
)
from proxy.core.printable import printable
from proxy.serve.connection import break_connection
from proxy.serve.entry import Entry
from proxy.serve.ws_session import NEGOTIATED, Session, log_session, where
from proxy.store import queries

log = logging.getLogger(__name__)


async def replay_session(session: Session, entry: Entry) -> web.StreamResponse:
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
        if name.lower() not in NEGOTIATED:
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
    log_session(session, 101, conversation.what, conversation.sent)
    return ws


class _Conversation:
    """A recording played back to a client, message for message."""

    def __init__(self, session: Session, ws: web.WebSocketResponse, entry: Entry, pace: Pace):
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
            await self.ws.close(code=_sendable(close.code))

    async def _server_close(self, recorded: Message) -> None:
        if recorded.code == ABNORMAL:  # the upstream broke it: the client's connection too
            self.what = "replayed (upstream broken)"
            break_connection(self.session.request)
            return
        await self.ws.close(code=_sendable(recorded.code), message=recorded.data)

    async def _mismatch(self, number: int, diffs: list[str]) -> None:
        """Close with 1008 and a reason naming the first difference; log it as a miss."""
        self.what = "missed (client message differs)"
        cassette = self.session.ctl.cassette
        log.warning(
            "replay miss in cassette %s: client message %d of the WebSocket session %s "
            "(interaction %s, the closest recording) differs: %s",
            printable(repr(cassette)),
            number,
            where(self.session.stored.url),
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


def _sendable(code: int | None) -> int:
    """A recorded close code as a close frame may carry it: 1005 (the close had no code)
    is never sent (RFC 6455 7.4.1), 1000 goes instead."""
    return 1000 if code is None or code in (0, NO_STATUS) else code
