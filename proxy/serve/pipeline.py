"""The request path: request → match key → (replay | forward → tee → recorder) → client.

One handler serves every proxied request. It reads the per-request control headers, builds
the upstream request, and then, by mode, answers from the index or forwards (recording
through a `Tee` unless the mode is passthrough). One log line per interaction.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from proxy.config import Mode, Pace, Settings, parse_pace
from proxy.core.headers import NOT_FORWARDED, end_to_end
from proxy.core.printable import printable
from proxy.core.records import Outcome, Recording, Request, ResponseHead, check_cassette_name
from proxy.core.sse import framer_for
from proxy.errors import BadRequest, ReplayMiss, RequestTimeout
from proxy.forward_proxy.policy import FORWARD_HOPS, HOPS, next_hops
from proxy.serve.index import Entry
from proxy.serve.relay import Tee, relay
from proxy.serve.replay import replay
from proxy.serve.routing import upstream_url
from proxy.serve.state import RunState, Services
from proxy.serve.upstream import response_head, send

log = logging.getLogger(__name__)

COMMIT_WAIT_S = 10.0
"""How long a replay waits for a recording of this run to reach the store."""


@dataclass(frozen=True)
class Control:
    mode: Mode
    cassette: str
    pace: Pace


def control(request: web.Request, settings: Settings, state: RunState) -> Control:
    h = request.headers
    try:
        mode = Mode(h["Rrproxy-Mode"].strip().lower()) if "Rrproxy-Mode" in h else settings.mode
        # The active cassette was checked when it was set.
        cassette = (
            check_cassette_name(h["Rrproxy-Cassette"])
            if "Rrproxy-Cassette" in h
            else state.cassette
        )
        pace = parse_pace(h["Rrproxy-Pace"]) if "Rrproxy-Pace" in h else settings.pace
    except ValueError as exc:
        modes = ", ".join(m.value for m in Mode)
        raise BadRequest(f"bad rrproxy control header ({exc}; modes: {modes})") from None
    return Control(mode, cassette, pace)


async def upstream_request(request: web.Request, settings: Settings) -> Request:
    request[FORWARD_HOPS] = next_hops(",".join(request.headers.getall(HOPS, ())), settings)
    body = await read_body(request, settings.request_body_timeout)
    headers = end_to_end(request.headers.items(), drop=NOT_FORWARDED)
    return Request(request.method, upstream_url(request, settings), headers, body)


async def read_body(request: web.BaseRequest, limit_s: float) -> bytes:
    """The whole request body; `RequestTimeout` when it takes longer than `limit_s` (a
    client trickling a byte now and then must not hold a connection for good)."""
    try:
        async with asyncio.timeout(limit_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {limit_s:g} s (timeouts.request_body): "
            "send the whole body at once, or raise timeouts.request_body for large uploads "
            "over a slow link"
        ) from None


async def handle(request: web.Request, services: Services, state: RunState) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    settings = services.settings
    ctl = control(request, settings, state)
    wanted = await upstream_request(request, settings)
    if ctl.mode is Mode.PASSTHROUGH:  # nothing to match, record or protect
        return await _forward(request, services, ctl, wanted, wanted, "", t0)
    stored = services.redactor.request(wanted)
    # Record mode matches nothing: the key is computed later, if a replay ever needs it.
    key: str | None = None
    entry: Entry | None = None
    if ctl.mode is Mode.REPLAY:
        key = services.index.key(stored)
        found = await services.index.for_replay(ctl.cassette, key, stored, strict=settings.strict)
        if not isinstance(found, Entry):
            _log(ctl, stored, 404, "missed", 0, t0)
            raise ReplayMiss(found.message)
        entry = found
    elif ctl.mode is Mode.AUTO:
        key = services.index.key(stored)
        entry = await services.index.next_unused(ctl.cassette, key)

    if entry is not None and not entry.committed.is_set():
        # A recording of this very run is replayable once its last batch is in the store,
        # unless its events had to be dropped meanwhile (the store was failing).
        services.recorder.hurry()
        try:
            await asyncio.wait_for(entry.committed.wait(), COMMIT_WAIT_S)
        except TimeoutError:
            if ctl.mode is Mode.REPLAY:
                raise ReplayMiss(
                    f"the recording of {request.method} {stored.url} in cassette "
                    f"{ctl.cassette!r} is still being written to the store, which is slow or "
                    "failing (see rrproxy's log); try again"
                ) from None
            entry = None  # auto: record it again
    if entry is not None:
        if not entry.available:
            if ctl.mode is Mode.REPLAY:
                _log(ctl, stored, 404, "missed (recording incomplete)", 0, t0)
                raise ReplayMiss(
                    f"the recording of {request.method} {stored.url} in cassette "
                    f"{ctl.cassette!r} is incomplete: its events could not all be written to "
                    "the store. Record it again."
                )
            entry = None  # auto: record it again

    if entry is not None:
        response, events = await replay(request, ctl.cassette, entry, services.bodies, ctl.pace, t0)
        _log(ctl, stored, response.status, "replayed", events, t0)
        return response

    return await _forward(request, services, ctl, wanted, stored, key, t0)


async def _forward(
    request: web.Request,
    services: Services,
    ctl: Control,
    wanted: Request,
    stored: Request,
    key: str | None,
    t0: float,
) -> web.StreamResponse:
    upstream = await send(services.upstream, wanted, hops=request[FORWARD_HOPS])
    head = response_head(upstream)
    record = None
    if ctl.mode is not Mode.PASSTHROUGH:
        ttfb = round((asyncio.get_running_loop().time() - t0) * 1000, 3)
        record = functools.partial(_recording, services, ctl, stored, key, head, upstream, t0, ttfb)
    source = "passthrough" if record is None else "recorded"
    failing = record is not None and services.recorder.failing
    relayed = await relay(request, upstream, head, source, record, failing)
    what = source if relayed.outcome is Outcome.COMPLETE else f"{source} ({relayed.outcome})"
    unit = "chunks" if record is None else "events"  # passthrough frames nothing
    _log(ctl, stored, head.status, what, relayed.events, t0, unit)
    return relayed.response


def _recording(
    services: Services,
    ctl: Control,
    stored: Request,
    key: str | None,
    head: ResponseHead,
    upstream: aiohttp.ClientResponse,
    t0: float,
    ttfb: float,
) -> Tee:
    """Start recording a response (the relay calls this once the first bytes are out)."""
    redacted = services.redactor.head(head)
    entry = Entry(stored, key, redacted, Outcome.RECORDING, ttfb_ms=ttfb)

    def committed(rec: Recording) -> None:
        entry.interaction_id = rec.interaction_id
        if rec.interaction_id is not None:
            services.bodies.forget(rec.interaction_id)
        entry.body_size = rec.size
        if rec.dropped:
            entry.outcome = Outcome.INCOMPLETE
        entry.committed.set()

    def ended(outcome: Outcome) -> None:
        entry.outcome = outcome  # replayable now; replay waits for `committed`

    # The entry joins the index and the recording begins at once (neither waits), so the
    # index's order of identical requests is the store's recording order.
    services.index.add(ctl.cassette, entry, use=ctl.mode is Mode.AUTO)
    recording = services.recorder.begin(ctl.cassette, stored, redacted, ttfb, committed)
    framer = framer_for(upstream.headers.get("Content-Type"))
    return Tee(services.recorder, recording, framer, t0, ended)


def _log(
    ctl: Control,
    stored: Request,
    status: int,
    what: str,
    events: int,
    t0: float,
    unit: str = "events",
) -> None:
    """One line per interaction; the URL without its query (which may hold secrets), and
    the client's text (method, host, path) with its control characters escaped."""
    ms = (asyncio.get_running_loop().time() - t0) * 1000
    log.info(
        "%s %s %s %s -> %d %s, %d %s, %.0f ms",
        ctl.mode,
        printable(ctl.cassette),
        printable(stored.method),
        _where(stored.url),
        status,
        what,
        events,
        unit,
        ms,
    )


@functools.lru_cache(maxsize=256)
def _where(url: str) -> str:
    """Host, port and path: no credentials, no query, control characters escaped."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return printable(f"{parts.hostname}{port}{parts.path}")
