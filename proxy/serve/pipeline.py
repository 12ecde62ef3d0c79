"""The request path: request → match key → (replay | forward → tee → recorder) → client.

One handler serves every proxied request. It reads the per-request control headers, builds
the upstream request, asks the index which recording answers (`Index.resolve`: the whole
replay policy), and then replays it or forwards (recording through a `Tee` unless the mode
is passthrough). One log line per interaction.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from proxy.config import Mode, Pace, Settings, parse_pace
from proxy.core.headers import NOT_FORWARDED, end_to_end
from proxy.core.pieces import splitter_for
from proxy.core.printable import printable
from proxy.core.records import Outcome, Recording, Request, ResponseHead, check_cassette_name
from proxy.core.usage import UsageMeter
from proxy.errors import BadRequest, ReplayMiss, RequestTimeout, StaleRecording
from proxy.forward_proxy.policy import FORWARD_HOPS, HOPS, next_hops
from proxy.serve.entry import Entry
from proxy.serve.relay import Tee, relay
from proxy.serve.replay import pace_for, replay
from proxy.serve.routing import setting_name, upstream_url
from proxy.serve.run_report import RunReport, SentDigest
from proxy.serve.state import RunState, Services
from proxy.serve.upstream import response_head, send
from proxy.store.queries import utc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Control:
    mode: Mode
    cassette: str
    pace: Pace
    untimed_pace: Pace


def control(request: web.Request, settings: Settings, state: RunState) -> Control:
    h = request.headers
    try:
        # never writes when read-only; else the UI may have switched the mode
        default = Mode.REPLAY if settings.read_only else state.mode or settings.mode
        mode = Mode(h["Rrproxy-Mode"].strip().lower()) if "Rrproxy-Mode" in h else default
        # The active cassette was checked when it was set.
        cassette = (
            check_cassette_name(h["Rrproxy-Cassette"])
            if "Rrproxy-Cassette" in h
            else state.cassette
        )
        pace = parse_pace(h["Rrproxy-Pace"]) if "Rrproxy-Pace" in h else settings.pace
        untimed = h.get("Rrproxy-Untimed-Pace")
        untimed_pace = settings.untimed_pace if untimed is None else parse_pace(untimed)
    except ValueError as exc:
        modes = ", ".join(m.value for m in Mode)
        raise BadRequest(f"bad rrproxy control header ({exc}; modes: {modes})") from None
    if settings.read_only and mode is not Mode.REPLAY:
        raise BadRequest(
            f"this proxy is read-only (--read-only): it only replays, and mode {mode.value} "
            "would write to the store; send the request to a proxy that records"
        )
    return Control(mode, cassette, pace, untimed_pace)


async def upstream_request(request: web.Request, settings: Settings) -> Request:
    request[FORWARD_HOPS] = next_hops(",".join(request.headers.getall(HOPS, ())), settings)
    body = await read_body(request, settings.request_body_timeout)
    headers = end_to_end(request.headers.items(), drop=NOT_FORWARDED)
    return Request(request.method, upstream_url(request, settings), headers, body)


async def read_body(request: web.BaseRequest, limit_s: float) -> bytes:
    """The whole request body; `RequestTimeout` when it takes longer than `limit_s` (a
    client trickling a byte now and then must not hold a connection for good)."""
    if request.content.is_eof():  # all of it arrived with the head (small bodies): no wait
        return await request.read()
    try:
        async with asyncio.timeout(limit_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {limit_s:g} s (timeouts.request_body): "
            "send the whole body at once, or raise timeouts.request_body for large uploads "
            "over a slow link"
        ) from None


@dataclass(frozen=True)
class _Call:
    """One proxied request on its way through the pipeline."""

    request: web.Request
    services: Services
    ctl: Control
    wanted: Request  # what goes upstream
    stored: Request  # what is matched and recorded: `wanted` redacted
    t0: float  # loop time at the request's start
    report: RunReport | None = None  # the run's counters (None: passthrough)


async def handle(request: web.Request, services: Services, state: RunState) -> web.StreamResponse:
    """control → key → resolve → replay | forward (and record)."""
    t0 = asyncio.get_running_loop().time()
    ctl = control(request, services.settings, state)
    wanted = await upstream_request(request, services.settings)
    if ctl.mode is Mode.PASSTHROUGH:  # nothing to match, record or protect
        return await _forward(_Call(request, services, ctl, wanted, wanted, t0), key=None)
    stored = services.redactor.request(wanted)
    call = _Call(request, services, ctl, wanted, stored, t0, state.report)
    if ctl.mode is Mode.RECORD:  # matches nothing: the key waits until a replay needs it
        return await _forward(call, key=None)
    found = await services.index.resolve(
        ctl.cassette,
        call.stored,
        replay=ctl.mode is Mode.REPLAY,
        strict=services.settings.strict,
        hurry=services.recorder.hurry,
    )
    if isinstance(found, Entry):
        return await _replay(call, found)
    if ctl.mode is Mode.REPLAY:
        _log(ctl, call.stored, 404, found.log, 0, t0)
        state.report.missed(ctl.cassette)
        raise ReplayMiss(_naming_the_setting(found.message, request, services.settings))
    return await _forward(call, key=found.key)  # auto: record it


def _naming_the_setting(message: str, request: web.Request, settings: Settings) -> str:
    """A miss whose closest recording went to another upstream says which setting chose
    this request's upstream: that setting may be what is wrong, not the cassette."""
    setting = setting_name(request, settings)
    differences = message.partition(" differs: ")[2]
    if setting is None or not any(d.startswith("upstream: ") for d in differences.split("; ")):
        return message
    return f"{message}. This request's upstream is set by {setting}"


async def _replay(call: _Call, entry: Entry) -> web.StreamResponse:
    ctl, settings, report = call.ctl, call.services.settings, call.report
    assert report is not None and entry.interaction_id is not None
    if settings.max_age is not None and entry.row is not None:
        _check_age(call, entry, settings.max_age, report)
    pace = pace_for(entry, ctl.pace, ctl.untimed_pace)
    sent = SentDigest()
    response, events = await replay(
        call.request, ctl.cassette, entry, call.services.bodies, pace, call.t0, sent.update
    )
    transport = call.request.transport
    report.judge(
        ctl.cassette,
        entry.interaction_id,
        None
        if response.status in (204, 304) or call.request.method == "HEAD"
        else entry.body_sha256,
        entry.body_size,
        sent,
        client_gone=transport is None or transport.is_closing(),
    )
    _log(ctl, call.stored, response.status, "replayed", events, call.t0)
    return response


def _check_age(call: _Call, entry: Entry, max_age: float, report: RunReport) -> None:
    """A recording older than `max_age`: a warning, or under `strict` a refusal."""
    assert entry.row is not None
    recorded_at = utc(entry.row[1])
    assert recorded_at is not None
    age = (datetime.now(UTC) - recorded_at).total_seconds()
    if age <= max_age:
        return
    assert entry.interaction_id is not None
    report.stale(call.ctl.cassette, entry.interaction_id)
    days = age / 86400
    what = (
        f"the recording of {call.stored.method} {_where(call.stored.url)} in cassette "
        f"{call.ctl.cassette!r} is {days:.1f} days old, older than max_age "
        f"({max_age / 86400:g} days)"
    )
    if call.services.settings.strict:
        _log(call.ctl, call.stored, 404, "refused (stale)", 0, call.t0)
        raise StaleRecording(
            f"{what}; record it again (rrproxy rerecord {call.ctl.cassette}) or raise max_age"
        )
    log.warning(
        "%s: replayed anyway; rrproxy rerecord %s records it again",
        what,
        printable(call.ctl.cassette),
    )


async def _forward(call: _Call, *, key: str | None) -> web.StreamResponse:
    """Forward upstream and relay the answer, recording it unless the mode is passthrough."""
    upstream = await send(
        call.services.upstream,
        call.wanted,
        hops=call.request[FORWARD_HOPS],
        setting=setting_name(call.request, call.services.settings),
    )
    head = response_head(upstream)
    record = None
    if call.ctl.mode is not Mode.PASSTHROUGH:
        ttfb = round((asyncio.get_running_loop().time() - call.t0) * 1000, 3)
        record = _StartRecording(call, key, head, upstream, ttfb)
    source = "passthrough" if record is None else "recorded"
    failing = record is not None and call.services.recorder.failing
    relayed = await relay(call.request, upstream, head, source, record, failing)
    what = source if relayed.outcome is Outcome.COMPLETE else f"{source} ({relayed.outcome})"
    unit = "chunks" if record is None else "events"  # passthrough frames nothing
    _log(call.ctl, call.stored, head.status, what, relayed.events, call.t0, unit)
    return relayed.response


@dataclass(frozen=True)
class _StartRecording:
    """Starts recording a response; the relay calls it once the first bytes are out."""

    call: _Call
    key: str | None  # None in record mode: computed when a replay needs it
    head: ResponseHead  # as upstream sent it
    upstream: aiohttp.ClientResponse
    ttfb: float

    def __call__(self) -> Tee:
        services, cassette = self.call.services, self.call.ctl.cassette
        redacted = services.redactor.head(self.head)
        entry = Entry.recording(self.call.stored, self.key, redacted, self.ttfb)

        def committed(rec: Recording) -> None:
            if rec.interaction_id is not None:
                services.bodies.forget(rec.interaction_id)
            entry.body_sha256 = rec.body_sha256
            if self.call.report is not None:
                self.call.report.recorded(cassette, rec.interaction_id)
            entry.stored(rec.interaction_id, rec.size, dropped=rec.dropped)

        def ended(outcome: Outcome) -> None:
            entry.outcome = outcome  # replayable now; replay waits for `committed`

        # The entry joins the index and the recording begins at once (neither waits), so
        # the index's order of identical requests is the store's recording order.
        services.index.add(cassette, entry, use=self.call.ctl.mode is Mode.AUTO)
        recording = services.recorder.begin(
            cassette, self.call.stored, redacted, self.ttfb, committed
        )
        headers = self.upstream.headers
        splitter = splitter_for(headers.get("Content-Type"), headers.get("Content-Encoding"))
        meter = UsageMeter(headers.get("Content-Type"), headers.get("Content-Encoding"))
        return Tee(services.recorder, recording, splitter, self.call.t0, ended, meter)


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
