"""Relaying an upstream response to the client while it streams, teeing it to the recorder.

Each chunk is written to the client the moment it arrives; when a `Tee` is given, the same
chunk is also split into events and handed to the recorder, which takes them without
waiting (only a store more than its high-water mark behind this recording makes the relay
wait).
A client that hangs up stops the writing, not the reading: the upstream response is still
read to its end and recorded, since its tokens were paid for (the server does not cancel
the handler when its client hangs up: see `proxy.serve.app`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from proxy.core.records import Outcome, Recording, ResponseHead
from proxy.core.sse import Framer
from proxy.core.usage import UsageMeter
from proxy.serve.connection import break_connection
from proxy.serve.recorder import Recorder
from proxy.serve.upstream import describe

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 32 * 2**20
"""An event still open past this size is stored in parts (the body stays byte-exact)."""


@dataclass
class Tee:
    """Splits relayed bytes into events and hands them to the recorder, with timings."""

    recorder: Recorder
    recording: Recording
    framer: Framer
    t0: float  # loop time at the request's start
    on_end: Callable[[Outcome], None] | None = None
    meter: UsageMeter | None = None  # reads the answer's token usage off its events

    def __post_init__(self) -> None:
        self._clock = asyncio.get_running_loop().time  # called for every chunk
        self._sha256 = hashlib.sha256()  # of the body as it arrived: replays are checked on it

    def _ms(self) -> float:
        return round((self._clock() - self.t0) * 1000, 3)

    def feed(self, chunk: bytes) -> None:
        self._sha256.update(chunk)
        events = self.framer.feed(chunk)
        if self.framer.buffered > MAX_EVENT_BYTES:  # an event without end: keep memory flat
            events.append(self.framer.spill())
        if events:
            self.recorder.events(self.recording, self._ms(), events)
            if self.meter is not None:
                for event in events:
                    self.meter.feed(event)

    def end(self, outcome: Outcome, error: str | None = None) -> None:
        t = self._ms()
        if rest := self.framer.close():
            self.recorder.events(self.recording, t, rest)
            if self.meter is not None:
                for event in rest:
                    self.meter.feed(event)
        self.recording.body_sha256 = self._sha256.hexdigest()
        if self.meter is not None and outcome.complete:
            self.recording.usage = self.meter.result()
        self.recorder.end(self.recording, outcome, t, error)
        if self.on_end is not None:
            self.on_end(outcome)


@dataclass(frozen=True)
class Relayed:
    response: web.StreamResponse
    outcome: Outcome
    events: int


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    head: ResponseHead,
    source: str,
    record: Callable[[], Tee] | None,
    store_failing: bool = False,
) -> Relayed:
    """Relay the response; with `record`, also record it. The recording is started once
    the first bytes are out (or at the end, for a body with none): its bookkeeping is not
    in their way."""
    copy = _Copy(request, _response_head(upstream, head, source, store_failing), record)
    try:
        await copy.body(upstream)
    except asyncio.CancelledError:
        copy.stopped()
        raise
    finally:
        upstream.release()
    try:
        await copy.finish()
    finally:  # the outcome as the client saw it, in the store as in the log
        copy.end()
    return Relayed(copy.response, copy.outcome, copy.events)


def _response_head(
    upstream: aiohttp.ClientResponse, head: ResponseHead, source: str, store_failing: bool
) -> web.StreamResponse:
    """The client's response: the upstream's status and headers, and where it came from."""
    response = web.StreamResponse(status=head.status, reason=upstream.reason)
    for name, value in head.headers:
        if name.lower() != "content-length":
            response.headers.add(name, value)
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    response.headers["Rrproxy-Source"] = source
    if store_failing:  # this recording may not be kept: the client is told while it can be
        response.headers["Rrproxy-Store"] = "failing"
    return response


class _Copy:
    """One response relayed: its outcome so far, and the recording once it has begun."""

    def __init__(
        self, request: web.Request, response: web.StreamResponse, record: Callable[[], Tee] | None
    ):
        self.request = request
        self.response = response
        self.outcome = Outcome.COMPLETE
        self.error: str | None = None
        self.events = 0
        self._record = record
        self._tee: Tee | None = None

    async def body(self, upstream: aiohttp.ClientResponse) -> None:
        """Send the head, then every chunk as it arrives (to the client while it listens,
        to the recorder in any case)."""
        try:
            try:
                await self.response.prepare(self.request)
            except ConnectionError:
                self.outcome = Outcome.CLIENT_GONE
            async for chunk in upstream.content.iter_any():
                self.events += 1
                await self._to_client(chunk)
                await self._to_recorder(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.outcome = Outcome.UPSTREAM_BROKEN
            self.error = f"upstream broke the stream: {describe(exc)}"

    async def _to_client(self, chunk: bytes) -> None:
        if self.outcome is Outcome.COMPLETE:
            try:
                await self.response.write(chunk)
            except ConnectionError:
                self.outcome = Outcome.CLIENT_GONE  # keep reading: the rest is still recorded

    async def _to_recorder(self, chunk: bytes) -> None:
        if self._record is None:
            return
        if self._tee is None:
            self._tee = self._record()
        self._tee.feed(chunk)
        if self._tee.recorder.behind(self._tee.recording):
            await self._tee.recorder.room(self._tee.recording)

    async def finish(self) -> None:
        """End the client's response as upstream ended it: a break, or its end."""
        if self.outcome is Outcome.UPSTREAM_BROKEN:
            log.warning("%s %s: %s", self.request.method, self.request.path, self.error)
            break_connection(self.request)
        elif self.outcome is Outcome.COMPLETE:
            try:
                await self.response.write_eof()
            except ConnectionError:
                self.outcome = Outcome.CLIENT_GONE

    def stopped(self) -> None:
        """The proxy is stopping mid-response: what was recorded is incomplete."""
        if self._record is not None:
            tee = self._tee or self._record()
            tee.end(Outcome.INCOMPLETE, "the proxy stopped before the response ended")

    def end(self) -> None:
        """Close the recording with the outcome the client saw."""
        if self._record is not None:
            tee = self._tee or self._record()
            tee.end(self.outcome, self.error)
            self.events = tee.recording.events
