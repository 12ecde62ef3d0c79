"""HAR 1.2 (HTTP Archive) to and from rrproxy interactions.

Export writes what Chrome's network panel, Firefox and HAR viewers open: every field HAR 1.2
requires, the response body decoded from gzip/deflate as browsers save it (base64 when it
is not text). What HAR has no field for is kept in custom fields (HAR allows names starting
with `_`): `_rrproxy_events` (each event's `t` and `data` or `b64`, the bytes exactly as
recorded, compressed or not) and `_rrproxy` (outcome, error, recorded_at, ttfb_ms,
duration_ms, a request body that is not UTF-8, and `untimed` when the interaction was itself
imported without event timing), so that importing an rrproxy HAR gives back exactly the
cassette that was exported. A WebSocket session's messages are written as Chrome DevTools
writes them, in the entry's `_webSocketMessages` (`proxy.cassettes.har_websocket`).

Import reads HARs from browsers (Chrome, Firefox), Playwright's `record_har` and mitmproxy.
Those save the body decoded and whole: `Content-Encoding` and `Content-Length` are dropped
(they no longer describe it), and the body (a `text/event-stream` one too) becomes one event
at the time to first byte, which is all HAR records of it (the `timings` before `receive`),
marked `untimed`: it replays at `untimed_pace`, instant unless told otherwise.
Pseudo-headers (`:authority`) are dropped. An entry whose body was not saved, or that got no
response (status 0), is skipped and reported; so is a 101 without `_webSocketMessages`
(a 101 with them is a WebSocket session, its messages imported).

A text body is turned back into the bytes that were sent with the charset it was decoded
with (HAR 1.2: "trans-coded from its original character set into UTF-8"): the response's
`charset` when it names one, else UTF-8, as browsers decode. mitmproxy decodes otherwise
(`mitmproxy.net.http.headers.infer_content_encoding`): without a charset, JSON as UTF-8 and
anything else (an SSE stream too) as Latin-1, and bytes that do not decode as UTF-8 with
`surrogateescape`; a HAR whose `creator` is mitmproxy is read back by the same rules.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import re
import zlib
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from proxy import __version__
from proxy.cassettes import har_websocket
from proxy.cassettes.file_format import Recorded, format_time
from proxy.cassettes.foreign import checked, entry_error, source_entry, text_pairs, whole_body
from proxy.core.messages import Message
from proxy.core.records import Event, Headers, Outcome, Request, ResponseHead
from proxy.errors import CassetteFileError

MAX_FILE_BYTES = 1024 * 1024 * 1024
_OUTCOMES = {o.value: o for o in Outcome if o is not Outcome.RECORDING}
_DECODED = {"content-encoding", "content-length"}


# -- export -------------------------------------------------------------------------------


def to_har(name: str, recs: Iterable[Recorded]) -> dict[str, Any]:
    """The HAR 1.2 document of a cassette (`json.dumps` it)."""
    return {
        "log": {
            "version": "1.2",
            "creator": {"name": "rrproxy", "version": __version__},
            "pages": [],
            "entries": [entry(rec) for rec in recs],
            "comment": f"rrproxy cassette {name}",
            "_rrproxy_cassette": name,
        }
    }


def entry(rec: Recorded) -> dict[str, Any]:
    body = b"".join(e.data for e in rec.events)
    ttfb = rec.ttfb_ms
    end = rec.duration_ms if rec.duration_ms is not None else ttfb
    receive = max(end - ttfb, 0.0)
    ours: dict[str, Any] = {
        "outcome": rec.outcome.value,
        "error": rec.error,
        "recorded_at": format_time(rec.recorded_at),
        "ttfb_ms": rec.ttfb_ms,
        "duration_ms": rec.duration_ms,
    }
    if rec.untimed:
        ours["untimed"] = True
    request: dict[str, Any] = {
        "method": rec.request.method,
        "url": har_websocket.har_url(rec.request.url) if rec.websocket else rec.request.url,
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": _har_headers(rec.request.headers),
        "queryString": [
            {"name": n, "value": v} for n, v in parse_qsl(urlsplit(rec.request.url).query, True)
        ],
        "headersSize": -1,
        "bodySize": len(rec.request.body),
    }
    if rec.request.body:
        try:
            text = rec.request.body.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
            ours["request_body_b64"] = base64.b64encode(rec.request.body).decode("ascii")
        mime = _header(rec.request.headers, "content-type") or "application/octet-stream"
        request["postData"] = {"mimeType": mime, "params": [], "text": text}
    session: dict[str, Any] = {}
    if rec.websocket:  # as Chrome saves one; the closes (and exact times) are rrproxy's
        messages, ours["closes"] = har_websocket.to_har(rec.messages, rec.recorded_at)
        session = {"_resourceType": "websocket", har_websocket.FIELD: messages}
    return {
        "startedDateTime": _started_text(rec.recorded_at),
        "time": ttfb + receive,
        "request": request,
        "response": {
            "status": rec.response.status,
            "statusText": _reason(rec.response.status),
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": _har_headers(rec.response.headers),
            "content": _content(body, rec.response.headers),
            "redirectURL": _header(rec.response.headers, "location") or "",
            "headersSize": -1,
            "bodySize": len(body),
        },
        "cache": {},
        "timings": {
            "blocked": -1,
            "dns": -1,
            "connect": -1,
            "ssl": -1,
            "send": 0,
            "wait": ttfb,
            "receive": receive,
        },
        "_rrproxy": ours,
        "_rrproxy_events": [_event_json(e) for e in rec.events],
        **session,
    }


def _started_text(t: datetime) -> str:
    """Milliseconds and Z, as Chrome writes it (the exact time is in `_rrproxy`)."""
    return format_time(t)[:23] + "Z"


def _har_headers(headers: Headers) -> list[dict[str, str]]:
    return [{"name": n, "value": v} for n, v in headers]


def _header(headers: Headers, name: str) -> str | None:
    return next((v for n, v in headers if n.lower() == name), None)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _content(raw: bytes, headers: Headers) -> dict[str, Any]:
    """The body as browsers save it: decoded, text in its charset (UTF-8 when it names
    none) when the bytes are that text exactly, else base64."""
    mime = _header(headers, "content-type") or "application/octet-stream"
    coding = (_header(headers, "content-encoding") or "").strip().lower()
    decoded = _decoded(raw, coding)
    content: dict[str, Any] = {"size": len(decoded if decoded is not None else raw)}
    content["mimeType"] = mime
    if decoded is None:
        decoded = raw
        content["comment"] = f"still {coding}-encoded (rrproxy decodes gzip and deflate only)"
    elif decoded is not raw:
        content["compression"] = len(decoded) - len(raw)
    charset = _charset(headers, None, _BROWSER)
    try:
        text = decoded.decode(charset)
        exact = text.encode(charset) == decoded  # not so for a BOM under utf-8-sig
    except (LookupError, UnicodeError):
        exact = False
    if exact:
        content["text"] = text
    else:
        content["text"] = base64.b64encode(decoded).decode("ascii")
        content["encoding"] = "base64"
    return content


def _decoded(raw: bytes, coding: str) -> bytes | None:
    if coding in ("", "identity"):
        return raw
    if coding not in ("gzip", "x-gzip", "deflate"):
        return None
    for wbits in (47, -15):  # gzip or zlib header (auto); raw deflate
        try:
            return zlib.decompressobj(wbits).decompress(raw)  # a cut stream: what there is
        except zlib.error:
            continue
    return None


def _event_json(event: Event) -> dict[str, Any]:
    try:
        return {"t": event.t_ms, "data": event.data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"t": event.t_ms, "b64": base64.b64encode(event.data).decode("ascii")}


# -- import -------------------------------------------------------------------------------


def parse(data: bytes, *, source: str) -> tuple[list[Recorded], list[str]]:
    """The interactions of a HAR file, each checked as a cassette file line is, and the
    entries skipped (each named, with the reason)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CassetteFileError(None, f"not valid JSON ({exc})", source) from None
    log = doc.get("log") if isinstance(doc, dict) else None
    if not isinstance(log, dict) or not isinstance(log.get("entries"), list):
        raise CassetteFileError(None, "not a HAR file (no log.entries)", source)
    recs: list[Recorded] = []
    skipped: list[str] = []
    creator = log.get("creator")
    decoding = (
        _MITMPROXY if isinstance(creator, dict) and creator.get("name") == "mitmproxy" else _BROWSER
    )
    for i, obj in enumerate(log["entries"]):
        req = obj.get("request") if isinstance(obj, dict) else None
        resp = obj.get("response") if isinstance(obj, dict) else None
        if not isinstance(req, dict) or not isinstance(resp, dict):
            raise entry_error(source, f"entry {i + 1}", "needs a 'request' and a 'response'")
        where = source_entry(i, req.get("method"), req.get("url"))
        why = _unusable(req.get("method"), resp, obj)
        if why is not None:
            skipped.append(f"{where}: {why}")
            continue
        rec = _interaction(obj, req, resp, decoding, source, where)
        recs.append(checked(rec, source, where))
    return recs, skipped


def _unusable(method: Any, resp: dict[str, Any], obj: dict[str, Any]) -> str | None:
    status = resp.get("status")
    if status == 101 and har_websocket.FIELD in obj:
        return None  # a WebSocket session with its messages
    if status == 0 or (isinstance(status, int) and 100 <= status < 200):
        return f"no final response (status {status}: failed, blocked or upgraded)"
    content = resp.get("content")
    if _bodiless(method, status) or not isinstance(content, dict) or "text" in content:
        return None
    # Firefox writes `size: -1` and a comment when it kept no body (har-builder.js)
    size = content.get("size")
    body_size = resp.get("bodySize")
    if (isinstance(size, int) and size != 0) or (isinstance(body_size, int) and body_size > 0):
        return "its response body was not saved in the HAR"
    return None


def _bodiless(method: Any, status: Any) -> bool:
    """No body was sent (RFC 9110): what a HAR holds for it came from the browser's cache
    (Firefox and Chrome save a 304's cached body)."""
    return method == "HEAD" or status in (204, 304)


def _interaction(
    obj: dict[str, Any],
    req: dict[str, Any],
    resp: dict[str, Any],
    decoding: str,
    source: str,
    where: str,
) -> Recorded:
    ours = obj.get("_rrproxy") if isinstance(obj.get("_rrproxy"), dict) else None
    headers = _headers(resp.get("headers"), source, where, "response headers")
    request = Request(
        _text(req.get("method"), source, where, "request method"),
        _text(req.get("url"), source, where, "request url"),
        _headers(req.get("headers"), source, where, "request headers"),
        _request_body(req, ours, source, where),
    )
    status = resp.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
        raise entry_error(source, where, "response: 'status' must be a whole number")
    if status == 101:  # a WebSocket handshake: the URL it was forwarded to
        request = replace(request, url=har_websocket.stored_url(request.url))
    if ours is not None and isinstance(obj.get("_rrproxy_events"), list):
        return _ours(obj, ours, request, ResponseHead(status, headers), source, where)
    ttfb, duration = _timing(obj)
    if status == 101:  # a WebSocket session, timed by its messages
        started = _started(obj.get("startedDateTime"), source, where)
        messages = har_websocket.from_har(obj[har_websocket.FIELD], None, started, source, where)
        return Recorded(
            request=request,
            response=ResponseHead(status, headers),
            outcome=Outcome.COMPLETE,
            error=None,
            recorded_at=started,
            ttfb_ms=ttfb,
            duration_ms=max([duration, *(m.t_ms for m in messages)]),
            events=(),
            messages=messages,
        )
    charset = _charset(headers, resp.get("content"), decoding)
    body = b""
    if not _bodiless(request.method, status):
        body = _content_bytes(resp.get("content"), charset, source, where)
    return Recorded(
        request=request,
        response=ResponseHead(status, tuple(h for h in headers if h[0].lower() not in _DECODED)),
        outcome=Outcome.COMPLETE,
        error=None,
        recorded_at=_started(obj.get("startedDateTime"), source, where),
        ttfb_ms=ttfb,
        duration_ms=duration,
        events=whole_body(body, ttfb),
        untimed=True,
    )


def _ours(
    obj: dict[str, Any],
    ours: dict[str, Any],
    request: Request,
    head: ResponseHead,
    source: str,
    where: str,
) -> Recorded:
    """An entry rrproxy exported: everything back from its `_rrproxy` fields."""
    outcome = _OUTCOMES.get(ours.get("outcome"))  # type: ignore[arg-type]
    if outcome is None:
        known = ", ".join(_OUTCOMES)
        raise entry_error(source, where, f"_rrproxy: 'outcome' must be one of {known}")
    events = []
    for e in obj["_rrproxy_events"]:
        t = e.get("t") if isinstance(e, dict) else None
        if not isinstance(t, int | float) or isinstance(t, bool):
            raise entry_error(source, where, "_rrproxy_events: each event needs a 't'")
        events.append(Event(float(t), _data(e, "data", "b64", source, where)))
    recorded_at = _started(ours.get("recorded_at"), source, where)
    messages: tuple[Message, ...] = ()
    if head.status == 101:
        messages = har_websocket.from_har(
            obj.get(har_websocket.FIELD, []), ours.get("closes"), recorded_at, source, where
        )
    return Recorded(
        request=request,
        response=head,
        outcome=outcome,
        error=ours.get("error"),
        recorded_at=recorded_at,
        ttfb_ms=_ms(ours.get("ttfb_ms"), source, where, "ttfb_ms"),
        duration_ms=None
        if ours.get("duration_ms") is None
        else _ms(ours["duration_ms"], source, where, "duration_ms"),
        events=tuple(events),
        messages=messages,
        untimed=_flag(ours.get("untimed", False), source, where, "untimed"),
    )


def _timing(obj: dict[str, Any]) -> tuple[float, float]:
    """Time to first byte (the timings before `receive`) and the whole time, in ms."""
    timings: dict[str, Any] = obj["timings"] if isinstance(obj.get("timings"), dict) else {}
    # `ssl` is part of `connect` (HAR 1.2), so it is not added again.
    parts = [timings.get(k) for k in ("blocked", "dns", "connect", "send", "wait")]
    ttfb = sum(float(p) for p in parts if isinstance(p, int | float) and p > 0)
    total = obj.get("time")
    duration = float(total) if isinstance(total, int | float) and total >= ttfb else ttfb
    return ttfb, duration


_BROWSER = "browser"
_MITMPROXY = "mitmproxy"
_CHARSET = re.compile(r"""(?i);\s*charset\s*=\s*["']?([^"';\s]+)""")


def _charset(headers: Headers, content: Any, decoding: str) -> str:
    """The charset a HAR's tool decoded a text body with (see the module's docstring)."""
    mime = _header(headers, "content-type")
    if mime is None and isinstance(content, dict) and isinstance(content.get("mimeType"), str):
        mime = content["mimeType"]
    found = _CHARSET.search(mime or "")
    if found is not None:
        name = found.group(1).lower()
        if decoding == _MITMPROXY and name in ("gb2312", "gbk"):
            return "gb18030"  # as mitmproxy reads them
        return name
    if decoding == _MITMPROXY and "json" not in (mime or ""):
        return "latin-1"  # mitmproxy's fallback, an SSE stream's too (html and css aside)
    return "utf-8"


def _content_bytes(content: Any, charset: str, source: str, where: str) -> bytes:
    if not isinstance(content, dict) or content.get("text") is None:
        return b""
    if content.get("encoding") == "base64":
        return _b64(content["text"], source, where, "response: content.text")
    text = _text(content["text"], source, where, "response: content.text")
    try:
        codecs.lookup(charset)
    except LookupError:
        reason = f"response: content.text is in charset {charset!r}, which rrproxy does not know"
        raise entry_error(source, where, reason) from None
    try:
        # surrogateescape: the bytes mitmproxy could not decode, given back as they came
        return text.encode(charset, "surrogateescape")
    except UnicodeEncodeError as exc:
        reason = (
            f"response: content.text cannot be written in its charset {charset!r} "
            f"(character {exc.start}); it was not decoded with it"
        )
        raise entry_error(source, where, reason) from None


def _request_body(
    req: dict[str, Any], ours: dict[str, Any] | None, source: str, where: str
) -> bytes:
    if ours is not None and "request_body_b64" in ours:
        return _b64(ours["request_body_b64"], source, where, "_rrproxy: request_body_b64")
    post = req.get("postData")
    if not isinstance(post, dict) or post.get("text") is None:
        return b""
    if post.get("encoding") == "base64":
        return _b64(post["text"], source, where, "request: postData.text")
    return _utf8(post["text"], source, where, "request: postData.text")


def _headers(raw: Any, source: str, where: str, what: str) -> Headers:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(h, dict) for h in raw):
        raise entry_error(source, where, f"{what} must be a list of {{name, value}} objects")
    pairs = [(h.get("name"), h.get("value")) for h in raw]
    return text_pairs(
        [(n, v) for n, v in pairs if not (isinstance(n, str) and n.startswith(":"))],
        source,
        where,
        what,
    )


def _started(raw: Any, source: str, where: str) -> datetime:
    try:
        t = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        t = None
    if t is None or t.tzinfo is None:
        raise entry_error(source, where, "startedDateTime must be an ISO 8601 time with its zone")
    return t.astimezone(UTC)


def _flag(raw: Any, source: str, where: str, what: str) -> bool:
    if not isinstance(raw, bool):
        raise entry_error(source, where, f"_rrproxy: {what!r} must be true or false")
    return raw


def _ms(raw: Any, source: str, where: str, what: str) -> float:
    if not isinstance(raw, int | float) or isinstance(raw, bool) or raw < 0:
        raise entry_error(source, where, f"_rrproxy: {what!r} must be milliseconds, 0 or more")
    return float(raw)


def _text(raw: Any, source: str, where: str, what: str) -> str:
    if not isinstance(raw, str):
        raise entry_error(source, where, f"{what} must be text")
    return raw


def _utf8(raw: Any, source: str, where: str, what: str) -> bytes:
    try:
        return _text(raw, source, where, what).encode("utf-8")
    except UnicodeEncodeError:
        raise entry_error(source, where, f"{what} holds a lone surrogate") from None


def _b64(raw: Any, source: str, where: str, what: str) -> bytes:
    try:
        return base64.b64decode(_text(raw, source, where, what), validate=True)
    except (binascii.Error, ValueError):
        raise entry_error(source, where, f"{what} is not valid base64") from None


def _data(obj: dict[str, Any], text_key: str, b64_key: str, source: str, where: str) -> bytes:
    if (text_key in obj) == (b64_key in obj):
        raise entry_error(source, where, f"_rrproxy_events: each needs {text_key} or {b64_key}")
    if text_key in obj:
        return _utf8(obj[text_key], source, where, f"_rrproxy_events: {text_key}")
    return _b64(obj[b64_key], source, where, f"_rrproxy_events: {b64_key}")
