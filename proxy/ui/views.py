"""The UI's pages: cassettes, a cassette, an interaction (with its timeline, events and
LLM summary), misses and compare. Each page is one GET whose URL says everything it shows
(filter, sort, page), so that it can be pasted into a bug report."""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any
from urllib.parse import quote

from aiohttp import web

from proxy.cassettes.file_format import file_name
from proxy.cassettes.transfer import export
from proxy.core.records import Outcome
from proxy.core.secrets_scan import scan_request, scan_response
from proxy.errors import CassetteNotFound, SecretsFound
from proxy.serve.nearest import Closest
from proxy.store import queries
from proxy.ui import reads, render, templating, ws_session
from proxy.ui.context import UI, Ui
from proxy.ui.llm import Summary

COLUMNS = ("name", "interactions", "events", "size", "incomplete", "last_recorded", "scan")


cassette_url = templating.cassette_url
interaction_url = templating.interaction_url


def _int(request: web.Request, name: str, default: int = 0) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError:
        return default


def page_not_found(request: web.Request, message: str) -> web.Response:
    return templating.page(
        "404.html", request, {"message": message, "title": "Not found"}, status=404
    )


async def cassettes(request: web.Request) -> web.Response:
    """Every cassette: a filter box, and a sort by any column (`?q=`, `?sort=`, `?desc=1`)."""
    ui = request.app[UI]
    if ui.services is not None:  # what was recorded, up to now (as GET /_rrproxy/cassettes)
        try:
            await asyncio.wait_for(ui.services.recorder.flush(), timeout=5)
        except TimeoutError:
            pass  # the page says what the store has
    q = request.query.get("q", "").strip()
    sort = request.query.get("sort", "name")
    sort = sort if sort in COLUMNS else "name"
    desc = request.query.get("desc") == "1"
    rows = []
    for s in await queries.summaries(ui.reader):
        if q and q.lower() not in s.name.lower():
            continue
        scan = ui.scans.get(s.name)
        rows.append(
            {
                "name": s.name,
                "url": cassette_url(s.name),
                "interactions": s.interactions,
                "events": s.events,
                "size": s.size,
                "incomplete": s.incomplete,
                "last_recorded": s.last_recorded,
                "scan": scan[1] if scan and scan[0] == (s.interactions, s.events) else "",
            }
        )

    def key(row: dict[str, Any]) -> Any:
        value = row[sort]
        return (value is None, value if value is not None else 0)

    rows.sort(key=key, reverse=desc)
    return templating.page(
        "cassettes.html",
        request,
        {"title": "Cassettes", "rows": rows, "q": q, "sort": sort, "desc": desc},
    )


async def cassette(request: web.Request) -> web.Response:
    """A cassette's interactions in replay order, filtered by URL (`?url=`) or status
    (`?status=`), a page at a time (`?page=`)."""
    ui = request.app[UI]
    name = request.match_info["name"]
    if await queries.cassette_id(ui.reader, name) is None:
        return page_not_found(request, f"no cassette named {name!r} in the store")
    url = request.query.get("url", "").strip()
    status_text = request.query.get("status", "").strip()
    status = int(status_text) if status_text.isdigit() else None
    page = max(_int(request, "page"), 0)
    total, rows = await reads.interaction_rows(ui.reader, name, url=url, status=status, page=page)
    interactions, events = await queries.counts(ui.reader, name)
    scan = ui.scans.get(name)
    return templating.page(
        "cassette.html",
        request,
        {
            "title": name,
            "name": name,
            "rows": rows,
            "total": total,
            "interactions": interactions,
            "events": events,
            "url": url,
            "status": status_text,
            "page": page,
            "pages": max((total + reads.PAGE - 1) // reads.PAGE, 1),
            "download": cassette_url(name) + "/download",
            "scan": scan[1] if scan and scan[0] == (interactions, events) else "",
            "is_active": ui.run is not None and ui.run.cassette == name,
        },
    )


async def interaction(request: web.Request) -> web.Response:
    """One interaction: request, response head, timeline, a page of events (`?page=`, or
    `?event=N` for the page holding event N)."""
    ui = request.app[UI]
    try:
        interaction_id = int(request.match_info["id"])
    except ValueError:
        return page_not_found(request, "an interaction's id is a number")
    h = await reads.head(ui.reader, interaction_id)
    if h is None:
        return page_not_found(request, f"no interaction {interaction_id} in the store")
    websocket = h.response.status == 101  # a session: its messages, not events
    event = _int(request, "message" if websocket else "event")
    page = (event - 1) // reads.PAGE if event > 0 else max(_int(request, "page"), 0)
    events = [] if websocket else await reads.events_page(ui.reader, interaction_id, page=page)
    messages = []
    if websocket:
        rows = await ws_session.messages_page(
            ui.reader, interaction_id, page=page, upgraded_ms=h.row.ttfb_ms
        )
        messages = [ws_session.shown(m) for m in rows]
    tl = await _timeline_of(ui, h) if h.row.events <= INLINE_TIMELINE_EVENTS else None
    shown = []
    for e in events:
        name, data = render.sse_parts(e.data)
        shown.append(
            {
                "n": e.n,
                "t": e.t_ms,
                "delta": e.delta_ms,
                "size": len(e.data),
                "name": name,
                "data": data,
                "pretty": render.pretty_json(data),
                "raw": render.escaped(e.data),
            }
        )
    body_kind, body = render.body_view(h.request.body)
    others = await reads.same_request(ui.reader, h)
    return templating.page(
        "interaction.html",
        request,
        {
            "title": f"{h.cassette} #{h.row.number}",
            "h": h,
            "cassette_url": cassette_url(h.cassette),
            "events": shown,
            "websocket": websocket,
            "messages": messages,
            "page": page,
            "pages": max((h.row.events + reads.PAGE - 1) // reads.PAGE, 1),
            "body_kind": body_kind,
            "body": body,
            "curl": render.curl(h.request),
            "tl": tl,
            "timeline_url": interaction_url(interaction_id) + "/timeline",
            "others": others,
            "download": cassette_url(h.cassette) + "/download",
            "summary_url": interaction_url(interaction_id) + "/summary",
        },
    )


INLINE_TIMELINE_EVENTS = 10_000
"""A stream with more events has its timeline drawn after the first screen (`timeline`)."""
CACHED_TIMELINES = 64


async def _timeline_of(ui: Ui, h: reads.Head) -> dict[str, Any]:
    """The timeline's geometry; kept for the next view once the recording is over."""
    key = h.row.id
    cached = ui.timelines.get(key)
    if cached is not None:
        ui.timelines.move_to_end(key)
        return cached
    span = max(h.row.duration_ms or 0.0, h.row.ttfb_ms, h.first_event_ms or 0.0, 1.0)
    if h.response.status == 101:  # a WebSocket session: its messages in two lanes
        drawn = await ws_session.timeline(ui.reader, h.row.id, span, h.row.ttfb_ms)
    else:
        buckets, gaps = await reads.timeline(ui.reader, h.row.id, span)
        if buckets:
            span = max(span, buckets[-1].start_ms)
        drawn = _timeline(buckets, gaps, span, h.row.ttfb_ms, h.first_event_ms)
    if h.row.outcome is not Outcome.RECORDING:
        ui.timelines[key] = drawn
        while len(ui.timelines) > CACHED_TIMELINES:
            ui.timelines.popitem(last=False)
    return drawn


async def timeline(request: web.Request) -> web.Response:
    """The timeline of a long stream: an HTML fragment the interaction page loads."""
    ui = request.app[UI]
    try:
        h = await reads.head(ui.reader, int(request.match_info["id"]))
    except ValueError:
        h = None
    if h is None:
        return page_not_found(request, "no such interaction")
    tl = await _timeline_of(ui, h)
    return templating.page("timeline_block.html", request, {"tl": tl, "h": h})


async def message_bytes(request: web.Request) -> web.Response:
    """A WebSocket message's payload as escaped bytes (what the page shows when a binary
    message is opened), its first `MAX_SHOWN_BYTES` only."""
    ui = request.app[UI]
    try:
        interaction_id, n = int(request.match_info["id"]), int(request.match_info["n"])
    except ValueError:
        return page_not_found(request, "an interaction's id and a message's n are numbers")
    size, head = await ws_session.payload_head(ui.reader, interaction_id, n)
    if size < 0:
        return page_not_found(request, f"no message {n} in interaction {interaction_id}")
    return web.Response(
        text=ws_session.escaped_payload(size, head),
        content_type="text/plain",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def _timeline(
    buckets: list[reads.Bucket],
    gaps: list[reads.Gap],
    span: float,
    ttfb: float | None,
    first: float | None,
    width: float = 1000.0,
) -> dict[str, Any]:
    """The SVG's geometry: x in [0, width] for [0, span] ms; a mark's height by bytes."""
    biggest = max((b.size for b in buckets), default=1) or 1
    scale = width / span
    average = span / max(sum(b.events for b in buckets), 1)
    marks = [
        {
            "x": round(b.start_ms * scale, 2),
            "h": round(8 + 52 * (b.size / biggest) ** 0.5, 1),
            "title": f"{b.events} event(s), {b.size} bytes from {b.start_ms:.1f} ms",
        }
        for b in buckets
    ]
    long_gaps = [
        {
            "x": round(g.from_ms * scale, 2),
            "w": round(max((g.to_ms - g.from_ms) * scale, 1.0), 2),
            "title": f"{g.to_ms - g.from_ms:.1f} ms without an event before event {g.n}",
            "n": g.n,
        }
        for g in gaps
        if g.to_ms - g.from_ms > max(5 * average, 50.0) and g.n > 1
    ]
    ticks = [{"x": round(width * k / 5, 1), "label": f"{span * k / 5:.0f} ms"} for k in range(6)]
    return {
        "width": width,
        "marks": marks,
        "gaps": long_gaps,
        "ticks": ticks,
        "ttfb": None if ttfb is None else round(ttfb * scale, 2),
        "ttfb_ms": ttfb,
        "first": None if first is None else round(first * scale, 2),
        "first_ms": first,
    }


async def summary(request: web.Request) -> web.Response:
    """The LLM summary of a stream (an HTML fragment the interaction page loads after its
    first screen): one pass over its events, a page at a time."""
    ui = request.app[UI]
    try:
        interaction_id = int(request.match_info["id"])
    except ValueError:
        return page_not_found(request, "an interaction's id is a number")
    s = ui.summaries.get(interaction_id)
    if s is None:
        state = (await reads.outcomes(ui.reader, [interaction_id])).get(interaction_id)
        s = Summary()
        async for page in queries.event_pages(ui.reader, interaction_id, page=1024):
            for _, data, _, _ in page:  # (an event over 1 MiB is read in parts)
                s.feed(render.sse_parts(data)[1])
        if state is not None and state[0] != Outcome.RECORDING.value:  # final: keep it
            ui.summaries[interaction_id] = s
            while len(ui.summaries) > CACHED_TIMELINES:
                ui.summaries.popitem(last=False)
    else:
        ui.summaries.move_to_end(interaction_id)
    return templating.page("summary.html", request, {"s": s})


async def download(request: web.Request) -> web.StreamResponse:
    """The cassette file, as `rrproxy export` writes it (spooled to a temporary file, never
    held whole in memory). Key-like strings stop it with the scan's findings, unless
    `?allow_secrets=1`."""
    ui = request.app[UI]
    name = request.match_info["name"]
    allow = request.query.get("allow_secrets") == "1"
    with tempfile.TemporaryFile() as spool:
        try:
            await export(ui.reader, name, spool, allow_secrets=allow, redactor=ui.settings.redact)
        except CassetteNotFound:
            return page_not_found(request, f"no cassette named {name!r} in the store")
        except SecretsFound as exc:
            ui.scans[name] = (await queries.counts(ui.reader, name), "key-like strings found")
            return templating.page(
                "secrets.html",
                request,
                {"title": "Secrets found", "name": name, "message": str(exc)},
                status=409,
            )
        if not allow:
            ui.scans[name] = (await queries.counts(ui.reader, name), "clean")
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson; charset=utf-8",
                "Content-Disposition": f"attachment; filename*=UTF-8''{quote(file_name(name))}",
            }
        )
        response.content_length = spool.tell()
        spool.seek(0)
        await response.prepare(request)
        while chunk := spool.read(256 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response


async def scan(request: web.Request) -> web.Response:
    """Run the secret scan over a cassette (one interaction at a time), then show it."""
    ui = request.app[UI]
    name = request.match_info["name"]
    heads = await queries.interactions(ui.reader, name)
    found = 0
    for stored in heads:
        events = await queries.events(ui.reader, stored.id)
        found += len(list(scan_request(stored.request, ui.settings.redact)))
        found += len(list(scan_response(stored.response, tuple(events), ui.settings.redact)))
    status = f"{found} key-like string(s) found" if found else "clean"
    ui.scans[name] = (await queries.counts(ui.reader, name), status)
    raise web.HTTPSeeOther(cassette_url(name))


async def misses(request: web.Request) -> web.Response:
    """This run's replay misses, each with the closest recording and how it differs."""
    ui = request.app[UI]
    shown = []
    # The closest recording is looked up (a bounded search each) for the latest 10 only.
    for k, m in enumerate(ui.misses.latest()[:50]):
        closest = await _closest(ui, m.cassette, m.request) if k < 10 else None
        shown.append({"m": m, "closest": closest})
    return templating.page(
        "misses.html",
        request,
        {"title": "Misses", "misses": shown, "serving": ui.serving, "count": ui.misses.count},
    )


async def _closest(ui: Ui, cassette: str, request: Any) -> dict[str, Any] | None:
    if ui.services is None:
        return None
    index = ui.services.index
    recorded = [e for e in index.entries(cassette) if e.available]
    finder = Closest(ui.reader, index.rules, ui.settings.redact)
    found = await finder.find(request, recorded)
    if found is None:
        return None
    entry, diffs = found
    return {
        "method": entry.method,
        "url": ui.settings.redact.redact_url(entry.url),
        "link": None if entry.interaction_id is None else interaction_url(entry.interaction_id),
        "diffs": diffs,
    }


async def compare(request: web.Request) -> web.Response:
    """Two recordings (`?a=ID&b=ID`): their timelines on one axis, and event by event, the
    data that differs (`?all=1`: every event, up to `COMPARE_ROWS`)."""
    ui = request.app[UI]
    a, b = _int(request, "a"), _int(request, "b")
    ha = await reads.head(ui.reader, a) if a else None
    hb = await reads.head(ui.reader, b) if b else None
    context: dict[str, Any] = {"title": "Compare", "a": a or "", "b": b or "", "ha": ha, "hb": hb}
    if ha is None or hb is None:
        context["missing"] = bool(a or b)
        return templating.page("compare.html", request, context)
    show_all = request.query.get("all") == "1"
    rows, differing = await _diff(ui, a, b, show_all)
    span = max(
        ha.row.duration_ms or 0.0, hb.row.duration_ms or 0.0, ha.row.ttfb_ms, hb.row.ttfb_ms, 1.0
    )
    marks_a, marks_b = (
        await reads.timeline(ui.reader, a, span),
        await reads.timeline(ui.reader, b, span),
    )
    ta = _timeline(*marks_a, span, ha.row.ttfb_ms, ha.first_event_ms)
    tb = _timeline(*marks_b, span, hb.row.ttfb_ms, hb.first_event_ms)
    context.update(
        {"rows": rows, "differing": differing, "all": show_all, "ta": ta, "tb": tb, "span": span}
    )
    return templating.page("compare.html", request, context)


COMPARE_ROWS = 2000


async def _diff(ui: Ui, a: int, b: int, show_all: bool) -> tuple[list[dict[str, Any]], int]:
    """Both streams read side by side, a page at a time: the rows to show, and how many
    events differ in all."""
    rows: list[dict[str, Any]] = []
    differing = 0
    pages_a = queries.event_pages(ui.reader, a)
    pages_b = queries.event_pages(ui.reader, b)
    left: queries.Page = []  # stored parts: events, an event over 1 MiB in parts
    right: queries.Page = []
    done_a = done_b = False
    n = 0
    while True:
        if not left and not done_a:
            left = await anext(pages_a, [])
            done_a = not left
        if not right and not done_b:
            right = await anext(pages_b, [])
            done_b = not right
        if not left and not right:
            break
        n += 1
        ea = left.pop(0) if left else None
        eb = right.pop(0) if right else None
        same = ea is not None and eb is not None and ea[1] == eb[1]
        if not same:
            differing += 1
        if (show_all or not same) and len(rows) < COMPARE_ROWS:
            rows.append({"n": n, "same": same, "a": _side(ea), "b": _side(eb)})
    return rows, differing


def _side(event: queries.Row | None) -> dict[str, Any] | None:
    if event is None:
        return None
    name, data = render.sse_parts(event[1])
    return {"t": event[0], "name": name, "data": data or render.escaped(event[1])}
