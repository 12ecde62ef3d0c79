"""Forwarding: send a request upstream and relay the response while it streams.

Each chunk is written to the client the moment it arrives; when a `Tee` is given, the same
chunk is also split into events and handed to the recorder, which takes them without
waiting (only a healthy store more than its high-water mark behind makes the relay wait).
A client that hangs up stops the writing, not the reading: the upstream response is still
read to its end and recorded, since its tokens were paid for (the server does not cancel
the handler when its client hangs up: see `proxy.serve.app`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.core.headers import end_to_end
from proxy.core.records import Outcome, Request, ResponseHead
from proxy.core.sse import Framer
from proxy.errors import ConfigError, UpstreamError, UpstreamTimeout
from proxy.serve.recorder import Recorder, Recording

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 32 * 2**20
"""An event still open past this size is stored in parts (the body stays byte-exact)."""

# Headers aiohttp would otherwise invent: the upstream sees what the client sent.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def upstream_ssl_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """Verification of upstream certificates: the system's trust store, plus the CAs in
    `ca_bundle` (a PEM file, for private upstreams) when one is configured."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"upstream_ca_bundle = {ca_bundle!r}: cannot load it as PEM certificates ({exc})"
            ) from None
    return context


def client_session(
    connect_timeout: float, read_timeout: float, ssl_context: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """The one upstream client: pooled, no decompression, no proxy settings from the
    environment (rrproxy must not loop through itself), certificates verified against
    `ssl_context` (default: the system's trust store)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=0,
            limit_per_host=0,
            ttl_dns_cache=300,
            ssl=ssl_context if ssl_context is not None else upstream_ssl_context(),
        ),
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        ),
        auto_decompress=False,
        trust_env=False,
        skip_auto_headers=SKIP_AUTO_HEADERS,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def send(session: aiohttp.ClientSession, request: Request) -> aiohttp.ClientResponse:
    """Open the upstream response (headers read, body not yet), or raise an `UpstreamError`
    naming the upstream and the cause."""
    url = URL(request.url, encoded=True)
    upstream = f"{url.scheme}://{url.authority}"
    try:
        response = await session.request(
            request.method,
            url,
            headers=list(request.headers),
            data=request.body or None,
            allow_redirects=False,
        )
    except aiohttp.ClientConnectorCertificateError as exc:
        raise UpstreamError(
            f"upstream {upstream}: TLS certificate verification failed ({exc.certificate_error})"
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamError(
            f"cannot connect to upstream {upstream}: {exc.os_error.strerror or exc}; "
            "is it running, and is --upstream right?"
        ) from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise UpstreamError(
            f"cannot connect to upstream {upstream}: no connection within the connect "
            "timeout (timeouts.connect)"
        ) from exc
    except TimeoutError as exc:  # aiohttp.ServerTimeoutError is one too
        raise UpstreamTimeout(
            f"upstream {upstream} did not answer in time (timeouts.read): {describe(exc)}"
        ) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"upstream {upstream} failed: {describe(exc)}") from exc
    # aiohttp's C parser refuses differing Content-Lengths; its pure-Python one keeps the
    # first. A proxy must answer 502 to such a response (RFC 9110 §8.6, RFC 9112 §6.3).
    lengths = set(response.headers.getall("Content-Length", ()))
    if len(lengths) > 1:
        response.close()
        raise UpstreamError(
            f"upstream {upstream} answered with conflicting Content-Length headers "
            f"({', '.join(sorted(lengths))}): the response's framing is ambiguous"
        )
    return response


def describe(exc: BaseException) -> str:
    """An aiohttp error in words, without the request's URL (whose query may hold a key):
    these messages are logged, answered and stored."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__}: {exc.status}, {exc.message}"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"{type(exc).__name__}: the URL is not valid"
    return f"{type(exc).__name__}: {exc}"


def response_head(upstream: aiohttp.ClientResponse) -> ResponseHead:
    return ResponseHead(upstream.status, end_to_end(upstream.headers.items()))


@dataclass
class Tee:
    """Splits relayed bytes into events and hands them to the recorder, with timings."""

    recorder: Recorder
    recording: Recording
    framer: Framer
    t0: float  # loop time at the request's start
    on_end: Callable[[Outcome], None] | None = None

    def __post_init__(self) -> None:
        self._clock = asyncio.get_running_loop().time  # called for every chunk

    def _ms(self) -> float:
        return round((self._clock() - self.t0) * 1000, 3)

    def feed(self, chunk: bytes) -> None:
        events = self.framer.feed(chunk)
        if self.framer.buffered > MAX_EVENT_BYTES:  # an event without end: keep memory flat
            events.append(self.framer.spill())
        if events:
            self.recorder.events(self.recording, self._ms(), events)

    def end(self, outcome: Outcome, error: str | None = None) -> None:
        t = self._ms()
        if rest := self.framer.close():
            self.recorder.events(self.recording, t, rest)
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
) -> Relayed:
    """Relay the response; with `record`, also record it. The recording is started once
    the first bytes are out (or at the end, for a body with none): its bookkeeping is not
    in their way."""
    response = web.StreamResponse(status=head.status, reason=upstream.reason)
    for name, value in head.headers:
        if name.lower() != "content-length":
            response.headers.add(name, value)
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    response.headers["Rrproxy-Source"] = source
    outcome, error, events = Outcome.COMPLETE, None, 0
    tee: Tee | None = None
    try:
        try:
            await response.prepare(request)
        except ConnectionError:
            outcome = Outcome.CLIENT_GONE
        async for chunk in upstream.content.iter_any():
            events += 1
            if outcome is Outcome.COMPLETE:
                try:
                    await response.write(chunk)
                except ConnectionError:
                    outcome = Outcome.CLIENT_GONE  # keep reading: the rest is still recorded
            if record is not None:
                if tee is None:
                    tee = record()
                tee.feed(chunk)
                if tee.recorder.backlogged:
                    await tee.recorder.room()
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome = Outcome.UPSTREAM_BROKEN
        error = f"upstream broke the stream: {describe(exc)}"
    except asyncio.CancelledError:
        if record is not None:
            tee = tee or record()
            tee.end(Outcome.INCOMPLETE, "the proxy stopped before the response ended")
        raise
    finally:
        upstream.release()
    try:
        if outcome is Outcome.UPSTREAM_BROKEN:
            log.warning("%s %s: %s", request.method, request.path, error)
            break_connection(request)
        elif outcome is Outcome.COMPLETE:
            try:
                await response.write_eof()
            except ConnectionError:
                outcome = Outcome.CLIENT_GONE
    finally:  # the outcome as the client saw it, in the store as in the log
        if record is not None:
            tee = tee or record()
            tee.end(outcome, error)
            events = tee.recording.events
    return Relayed(response, outcome, events)


def break_connection(request: web.Request) -> None:
    """End the client's connection without finishing the body, as a broken upstream did:
    the client sees the same premature end."""
    if request.transport is not None:
        request.transport.close()
