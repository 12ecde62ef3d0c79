"""Admin endpoints under `/_rrproxy/` on the proxy's own port.

They answer only requests addressed to the proxy itself, so that a web page cannot use
them (`guard`):
- the `Host` must name the proxy (a loopback address or `localhost`, the address the
  request arrived on, or the configured host, with the listening port) or be in
  `admin_hosts`: a page on a DNS-rebound name sends its own name, and is refused;
- a state change (any method but GET and HEAD) must carry `Content-Type:
  application/json`, which a browser sends cross-origin only after a CORS preflight that
  rrproxy never grants, and an `Origin`, when there is one, naming the proxy likewise;
- nothing under `/_rrproxy` is ever forwarded: an unknown path is a 404, an unknown
  method a 405, both from rrproxy.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from proxy import __version__
from proxy.cassettes.file_format import format_time
from proxy.core.hosts import host_matches, names_this_host, parse_authority
from proxy.core.messages import as_json
from proxy.core.printable import printable
from proxy.core.records import check_cassette_name
from proxy.errors import BadRequest, MethodNotAllowed, NotFound, NotJson, Refused, StoreError
from proxy.serve.pipeline import read_body
from proxy.serve.state import RUN, SERVICES, SETTINGS
from proxy.store import queries

PREFIX = "/_rrproxy"
UI_PREFIX = PREFIX + "/ui"
"""The web UI (`proxy.ui`): guarded here like the endpoints, answered by its own routes."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def health(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    recorder = request.app[SERVICES].recorder
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "mode": (request.app[RUN].mode or settings.mode).value,
            "cassette": request.app[RUN].cassette,
            "upstream": settings.upstream,
            "store": "failing" if recorder.failing else "ok",
            "recordings_dropped": recorder.recordings_dropped,
            "pid": os.getpid(),  # which worker answered (serve --workers N)
        }
    )


async def cassettes(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:  # list what was recorded, up to now
        await asyncio.wait_for(services.recorder.flush(), timeout=5)
    except TimeoutError:
        raise StoreError(
            "the store has not taken the latest recordings within 5 s (locked, or full?); "
            "see rrproxy's log"
        ) from None
    summaries = await queries.summaries(services.reader)
    return web.json_response(
        {
            "cassettes": [
                {
                    "name": s.name,
                    "interactions": s.interactions,
                    "events": s.events,
                    "size": s.size,
                    "incomplete": s.incomplete,
                    "untimed": s.untimed,
                    "last_recorded": format_time(s.last_recorded) if s.last_recorded else None,
                }
                for s in summaries
            ]
        }
    )


async def run(request: web.Request) -> web.Response:
    """The current run: per cassette, replays served (verified or not), misses, recordings
    made, stale replays, the recordings never used, and the tokens and money replayed."""
    services = request.app[SERVICES]
    try:  # recordings of this run count as used once their ids are known
        await asyncio.wait_for(services.recorder.flush(), timeout=5)
    except TimeoutError:
        raise StoreError("the store has not taken the latest recordings within 5 s") from None
    state = request.app[RUN]
    summary = await state.report.summary(services.reader, state.cassette, services.settings.prices)
    return web.json_response(summary.json())


async def messages(request: web.Request) -> web.Response:
    """A recorded WebSocket session's messages: `?cassette=NAME&interaction=N` (N counted
    from 1 in recording order, as `rrproxy show` numbers them), a page at a time (`after`:
    the last `seq` seen, `limit`: at most 1000)."""
    services = request.app[SERVICES]
    q = request.query
    try:
        cassette = check_cassette_name(q.get("cassette", request.app[RUN].cassette))
        number = int(q["interaction"])
        after = int(q.get("after", "-1"))
        limit = min(max(int(q.get("limit", "1000")), 1), 1000)
    except (KeyError, ValueError) as exc:
        raise BadRequest(
            "give ?interaction=N (its number in the cassette, from 1) and optionally "
            f"cassette=NAME, after=SEQ, limit=COUNT ({printable(str(exc))})"
        ) from None
    found = await queries.interactions(services.reader, cassette, required=True)
    if not 1 <= number <= len(found):
        raise NotFound(f"cassette {cassette!r} has {len(found)} interaction(s), not {number}")
    i = found[number - 1]
    page = await queries.message_page(services.reader, i.id, after, limit)
    return web.json_response(
        {
            "cassette": cassette,
            "interaction": number,
            "url": services.redactor.redact_url(i.request.url),
            "status": i.response.status,
            "outcome": i.outcome.value,
            "messages": [{"seq": seq, **as_json(m)} for seq, m in page],
            "next_after": page[-1][0] if len(page) == limit else None,
        }
    )


async def reset(request: web.Request) -> web.Response:
    """Start a new replay run: every counter back to zero, cassettes and bodies read again
    from the store (which `rrproxy import`/`rm` may have changed meanwhile), the UI's list
    of misses emptied."""
    request.app[RUN].new_run(request.app[SERVICES])
    return web.json_response({"status": "reset", "cassette": request.app[RUN].cassette})


async def set_cassette(request: web.Request) -> web.Response:
    """Make another cassette the active one (and start a new run)."""
    body = await _json(request)
    try:
        name = check_cassette_name(str(body.get("name", "")))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    request.app[RUN].cassette = name
    request.app[RUN].new_run(request.app[SERVICES])
    return web.json_response({"status": "ok", "cassette": name})


async def _json(request: web.Request) -> dict[str, Any]:
    raw = await read_body(request, request.app[SETTINGS].request_body_timeout)
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise BadRequest('the body must be JSON, such as {"name": "my-cassette"}') from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


ENDPOINTS: dict[str, dict[str, Handler]] = {
    "/health": {"GET": health},
    "/cassettes": {"GET": cassettes},
    "/messages": {"GET": messages},
    "/reset": {"POST": reset},
    "/run": {"GET": run},
    "/cassette": {"PUT": set_cassette},
}
"""Each endpoint's path under `PREFIX` and its methods (GET answers HEAD too)."""

_READ_ONLY = frozenset({"GET", "HEAD"})


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve `/_rrproxy/*` (to the proxy's own address only); pass everything else on."""
    path = request.path
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return await handler(request)
    _check_host(request)
    if path == UI_PREFIX or path.startswith(UI_PREFIX + "/"):
        if request.method not in _READ_ONLY:
            _check_state_change(request)
        return await handler(request)  # the UI's routes (its own 404 included)
    methods = ENDPOINTS.get(path[len(PREFIX) :])
    if methods is None:
        known = ", ".join(PREFIX + p for p in ENDPOINTS)
        raise NotFound(f"no rrproxy endpoint {printable(path)} (there are: {known})")
    endpoint = methods.get("GET" if request.method == "HEAD" else request.method)
    if endpoint is None:
        allowed = (*methods, "HEAD") if "GET" in methods else tuple(methods)
        raise MethodNotAllowed(
            f"{path} answers {', '.join(allowed)}, not {printable(request.method)}", allowed
        )
    if request.method not in _READ_ONLY:
        _check_state_change(request)
    return await endpoint(request)


def check_request(request: web.Request) -> None:
    """The guard's checks on its own, for a server that is not the proxy (`rrproxy ui`):
    the Host, and for a state change its Content-Type and Origin."""
    _check_host(request)
    if request.method not in _READ_ONLY:
        _check_state_change(request)


def _check_host(request: web.Request) -> None:
    host = request.headers.get("Host")
    if host is None or _names_proxy(request, host, "http"):
        return  # no browser sends a request without a Host
    raise Refused(
        f"refused: Host {printable(host)!r} is not rrproxy's own address; /_rrproxy/ answers "
        f"only requests addressed to the proxy itself ({_own(request)}), so that no web page "
        "can reach it under another name (DNS rebinding). To use another name, add it to "
        "admin_hosts (RRPROXY_ADMIN_HOSTS)."
    )


def _check_state_change(request: web.Request) -> None:
    if request.content_type != "application/json":
        raise NotJson(
            f"{request.method} {request.path} changes rrproxy's state: send it with "
            "Content-Type: application/json (and a JSON body, {} when there is nothing to say), "
            f"as curl -X {request.method} -H 'Content-Type: application/json' -d '{{}}' URL"
        )
    origin = request.headers.get("Origin")
    if origin is None:
        return
    parts = urlsplit(origin)
    if parts.scheme == "http" and not parts.path and _names_proxy(request, parts.netloc, "http"):
        return
    raise Refused(
        f"refused: a state change from Origin {printable(origin)!r}, which is not rrproxy's own "
        f"({_own(request)}); a web page may not change rrproxy's state. To use another name, "
        "add it to admin_hosts (RRPROXY_ADMIN_HOSTS)."
    )


def _names_proxy(request: web.Request, authority: str, scheme: str) -> bool:
    """Whether `authority` (a Host header, an Origin's host and port) names this proxy."""
    try:
        target = parse_authority(authority, scheme)
    except ValueError:
        return False
    settings = request.app[SETTINGS]
    if host_matches(target.host, settings.admin_hosts, target.port):
        return True
    return names_this_host(target.host, target.port, _local(request), settings.host)


def _local(request: web.Request) -> tuple[str, int] | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return (str(sockname[0]), int(sockname[1])) if isinstance(sockname, tuple) else None


def _own(request: web.Request) -> str:
    local = _local(request)
    return f"such as 127.0.0.1:{local[1]} or localhost:{local[1]}" if local else "its address"


def setup(app: web.Application) -> None:
    """Serve the admin endpoints: a middleware after the forward proxy's, which takes the
    absolute-form requests (those go elsewhere, whatever their path)."""
    app.middlewares.append(guard)
