"""Tests for proxy.cassettes.har on documents: each refusal names the entry and why, and
the shapes other tools write are read.

The end-to-end tests (tests/integration/test_har.py) export recordings made through the
proxy and import them again; these cover what a hand-edited or foreign HAR can hold.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest

from proxy.cassettes import har
from proxy.errors import CassetteFileError

URL = "http://127.0.0.1:1/v1/x"


def entry(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "startedDateTime": "2026-01-02T03:04:05.678Z",
        "time": 12.5,
        "request": {"method": "POST", "url": URL, "headers": [], "postData": {"text": "q"}},
        "response": {
            "status": 200,
            "headers": [{"name": "Content-Type", "value": "text/plain"}],
            "content": {"size": 2, "mimeType": "text/plain", "text": "hi"},
        },
        "timings": {"blocked": -1, "send": 1, "wait": 4, "receive": 7.5},
    }
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = obj
        for p in parents:
            target = target[p]
        target[last] = value
    return obj


def har_of(*entries: Any) -> bytes:
    return json.dumps({"log": {"version": "1.2", "entries": list(entries)}}).encode()


def ours(**changes: Any) -> dict[str, Any]:
    """An entry as rrproxy exports it: its own fields beside HAR's."""
    fields: dict[str, Any] = {
        "outcome": "complete",
        "error": None,
        "recorded_at": "2026-01-02T03:04:05.678901+00:00",
        "ttfb_ms": 3.0,
        "duration_ms": 9.0,
    }
    fields.update(changes)
    return entry(_rrproxy=fields, _rrproxy_events=[{"t": 3.0, "data": "hi"}])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{nope", "not valid JSON"),
        (json.dumps({"log": {}}).encode(), "not a HAR file"),
        (har_of("not an entry"), "entry 1: needs a 'request' and a 'response'"),
        (har_of(entry(response__status="200")), "'status' must be a whole number"),
        (har_of(entry(request__headers={"a": "b"})), "must be a list of {name, value}"),
        (har_of(entry(request__method=None)), "request method must be text"),
        (har_of(entry(startedDateTime="yesterday")), "startedDateTime must be an ISO 8601"),
        (har_of(entry(startedDateTime="2026-01-02T03:04:05")), "with its zone"),
        (
            har_of(entry(response__content={"text": "!!", "encoding": "base64"})),
            "content.text is not valid base64",
        ),
        (
            har_of(entry(request__postData={"text": "%%", "encoding": "base64"})),
            "postData.text is not valid base64",
        ),
        (har_of(ours(outcome="exploded")), "'outcome' must be one of"),
        (har_of(ours(ttfb_ms=-1)), "'ttfb_ms' must be milliseconds"),
        (har_of(ours(duration_ms="9")), "'duration_ms' must be milliseconds"),
        (
            har_of({**ours(), "_rrproxy_events": [{"data": "hi"}]}),
            "each event needs a 't'",
        ),
        (
            har_of({**ours(), "_rrproxy_events": [{"t": 1, "data": "a", "b64": "YQ=="}]}),
            "each needs data or b64",
        ),
        (har_of(ours(request_body_b64="***")), "request_body_b64 is not valid base64"),
        (har_of(ours(untimed="yes")), "_rrproxy: 'untimed' must be true or false"),
        (
            har_of(
                entry(response__headers=[{"name": "Content-Type", "value": "text/x; charset=nope"}])
            ),
            "charset 'nope', which rrproxy does not know",
        ),
        (
            har_of(
                entry(
                    response__headers=[{"name": "Content-Type", "value": "text/x; charset=ascii"}],
                    response__content={"text": "café"},
                )
            ),
            "cannot be written in its charset 'ascii'",
        ),
    ],
)
def test_a_bad_har_is_refused_naming_the_entry(data: bytes, reason: str) -> None:
    with pytest.raises(CassetteFileError) as caught:
        har.parse(data, source="x.har")
    assert reason in str(caught.value)
    assert "x.har" in str(caught.value)


def test_another_tools_entry_is_one_event_at_its_time_to_first_byte() -> None:
    body = base64.b64encode(b"\x00binary").decode()
    obj = entry(response__content={"size": 7, "text": body, "encoding": "base64"})
    obj["request"]["headers"] = [{"name": ":authority", "value": "h"}, {"name": "A", "value": "1"}]
    [rec], skipped = har.parse(har_of(obj), source="x.har")
    assert skipped == [] and rec.untimed  # imported without event timing
    assert rec.request.headers == (("A", "1"),)  # HTTP/2 pseudo-headers are not headers
    assert rec.request.body == b"q"
    assert rec.ttfb_ms == 5.0 and rec.duration_ms == 12.5  # send + wait; HAR's time
    assert [(e.t_ms, e.data) for e in rec.events] == [(5.0, b"\x00binary")]


def test_rrproxys_own_fields_come_back_whole() -> None:
    [rec], _ = har.parse(har_of(ours(request_body_b64="/w==")), source="x.har")
    assert not rec.untimed
    assert rec.request.body == b"\xff"
    assert (rec.ttfb_ms, rec.duration_ms) == (3.0, 9.0)
    assert [(e.t_ms, e.data) for e in rec.events] == [(3.0, b"hi")]


def har_by(creator: str, *entries: Any) -> bytes:
    log = {"version": "1.2", "creator": {"name": creator, "version": "1"}, "entries": entries}
    return json.dumps({"log": log}).encode()


def text_entry(content_type: str | None, text: str) -> dict[str, Any]:
    headers = [] if content_type is None else [{"name": "Content-Type", "value": content_type}]
    return entry(
        response__headers=headers,
        response__content={"size": len(text), "mimeType": content_type or "", "text": text},
    )


@pytest.mark.parametrize(
    ("creator", "content_type", "text", "sent"),
    [
        # browsers: the charset the response names, else UTF-8 (HAR 1.2: the text was
        # "trans-coded from its original character set into UTF-8")
        ("Firefox", "text/event-stream", "data: Wörld\n\n", "data: Wörld\n\n".encode()),
        ("WebInspector", "text/plain; charset=ISO-8859-1", "café", b"caf\xe9"),
        ("Playwright", None, "plain", b"plain"),
        # mitmproxy (mitmproxy.net.http.headers.infer_content_encoding): without a charset,
        # JSON is UTF-8 and anything else Latin-1 (its HAR of an SSE stream with "ö" holds
        # "Ã¶"); bytes that were not UTF-8 come back through surrogateescape
        ("mitmproxy", "text/event-stream", "data: WÃ¶rld\n\n", "data: Wörld\n\n".encode()),
        ("mitmproxy", "application/json", '{"a": "é"}', '{"a": "é"}'.encode()),
        ("mitmproxy", "text/plain; charset=utf-8", "x\udcff", b"x\xff"),
        ("mitmproxy", "text/html; charset=GBK", "中文", "中文".encode("gb18030")),
        ("mitmproxy", "application/octet-stream", "\x00\x80\xff", b"\x00\x80\xff"),
    ],
)
def test_a_text_body_goes_back_to_the_bytes_the_tool_decoded(
    creator: str, content_type: str | None, text: str, sent: bytes
) -> None:
    [rec], _ = har.parse(har_by(creator, text_entry(content_type, text)), source="x.har")
    assert b"".join(e.data for e in rec.events) == sent


# Firefox's HAR, as devtools/client/netmonitor/src/har/har-builder.js (Firefox ESR 153)
# writes it: an offset instead of Z in startedDateTime (dateToHarString), `blocked: -1`,
# its own `_securityState` and `_priority`, `size: -1` and a comment (no `text`) when the
# body was not kept, status 0 for an aborted request, and a 304 whose `content.text` is the
# cached body (no body came over the wire).
FIREFOX_KEPT = entry(
    startedDateTime="2026-12-02T15:44:16.530+00:00",
    timings={"blocked": -1, "dns": 0, "connect": 0, "ssl": 0, "send": 0, "wait": 1, "receive": 202},
    time=203,
    _securityState="insecure",
    _priority="Normal",
)
FIREFOX_DISCARDED = entry(
    request__method="GET",
    request__url="http://127.0.0.1:1/big",
    response__bodySize=-1,
    response__content={
        "mimeType": "application/json",
        "size": -1,
        "comment": "Response bodies are not included.",
    },
)
FIREFOX_ABORTED = entry(request__url="http://127.0.0.1:1/gone", response__status=0)
FIREFOX_NOT_MODIFIED = entry(
    request__method="GET",
    request__url="http://127.0.0.1:1/cached",
    response__status=304,
    response__content={"mimeType": "text/plain", "size": 6, "text": "cached"},
)


def test_firefoxs_har_shape() -> None:
    entries = [FIREFOX_KEPT, FIREFOX_DISCARDED, FIREFOX_ABORTED, FIREFOX_NOT_MODIFIED]
    recs, skipped = har.parse(har_by("Firefox", *entries), source="ff.har")
    assert skipped == [
        "entry 2 (GET http://127.0.0.1:1/big): its response body was not saved in the HAR",
        "entry 3 (POST http://127.0.0.1:1/gone): no final response (status 0: failed, "
        "blocked or upgraded)",
    ]
    kept, not_modified = recs
    assert kept.recorded_at.isoformat() == "2026-12-02T15:44:16.530000+00:00"
    assert (kept.ttfb_ms, kept.duration_ms) == (1.0, 203.0)  # blocked -1 is "not known"
    assert [(e.t_ms, e.data) for e in kept.events] == [(1.0, b"hi")] and kept.untimed
    assert not_modified.response.status == 304 and not_modified.events == ()


def test_an_untimed_interaction_keeps_its_mark_through_rrproxys_har() -> None:
    [rec], _ = har.parse(har_of(entry()), source="x.har")
    assert rec.untimed
    exported = har.entry(rec)
    assert exported["_rrproxy"]["untimed"] is True
    [back], _ = har.parse(har_of(exported), source="again.har")
    assert back == rec
    timed = har.entry(replace(rec, untimed=False))
    assert "untimed" not in timed["_rrproxy"]  # written only when true, as in the file
    [back], _ = har.parse(har_of(timed), source="again.har")
    assert not back.untimed


@pytest.mark.parametrize(
    ("content_type", "body", "text"),
    [
        ("text/plain; charset=iso-8859-1", b"caf\xe9", "café"),  # in its charset, as browsers
        ("text/event-stream", "Wörld".encode(), "Wörld"),  # no charset: UTF-8
        ("text/plain; charset=utf-8", b"\xff\xfe", None),  # not that text: base64
        ("text/plain; charset=no-such", b"abc", None),
    ],
)
def test_export_writes_text_in_its_charset_and_another_tool_reads_it_back(
    content_type: str, body: bytes, text: str | None
) -> None:
    [rec], _ = har.parse(har_of(entry()), source="x.har")
    rec = replace(
        rec,
        response=replace(rec.response, headers=(("Content-Type", content_type),)),
        events=(replace(rec.events[0], data=body),),
    )
    exported = har.entry(rec)
    content = exported["response"]["content"]
    if text is None:
        assert content["encoding"] == "base64" and base64.b64decode(content["text"]) == body
    else:
        assert content["text"] == text and "encoding" not in content
    foreign = {k: v for k, v in exported.items() if not k.startswith("_")}  # a browser's view
    [back], _ = har.parse(har_of(foreign), source="x.har")
    assert b"".join(e.data for e in back.events) == body


def ws_entry(*messages: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A WebSocket handshake's entry as Chrome saves it, with these messages."""
    obj = entry(
        request__method="GET",
        request__url="ws://127.0.0.1:1/v1/realtime",
        response__status=101,
        response__content={"size": 0, "mimeType": "x-unknown"},
        **changes,
    )
    del obj["request"]["postData"]
    return {**obj, "_resourceType": "websocket", "_webSocketMessages": list(messages)}


START = 1767323045.678  # the entry's startedDateTime, 2026-01-02T03:04:05.678Z


def test_chromes_websocket_entry_is_a_session_and_a_101_without_messages_is_skipped() -> None:
    """Text, binary (base64), a close frame (no code: 1005) and pings left out, each at its
    time less the entry's start; the `ws://` URL is the `http://` one rrproxy forwards to.
    A 101 whose messages were not saved is skipped, as before."""
    obj = ws_entry(
        {"type": "receive", "time": START + 0.0105, "opcode": 1, "data": '{"type": "hi"}'},
        {"type": "send", "time": START + 0.02, "opcode": 9, "data": ""},
        {"type": "send", "time": START + 0.0301, "opcode": 2, "data": "AAH/"},
        {"type": "send", "time": START + 0.04, "opcode": 8, "data": ""},
    )
    bare = ws_entry()
    del bare["_webSocketMessages"]
    [rec], skipped = har.parse(har_of(obj, bare), source="x.har")
    assert len(skipped) == 1 and skipped[0].startswith("entry 2") and "status 101" in skipped[0]
    assert rec.websocket and not rec.untimed and rec.events == ()
    assert rec.request.url == "http://127.0.0.1:1/v1/realtime"
    got = [(m.t_ms, m.from_client, m.kind.value, m.data, m.code) for m in rec.messages]
    assert got == [
        (10.5, False, "text", b'{"type": "hi"}', None),
        (30.1, True, "binary", b"\x00\x01\xff", None),
        (40.0, True, "close", b"", 1005),
    ]
    assert rec.duration_ms == 40.0


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"type": "sent", "time": START, "opcode": 1, "data": "a"}, "must be send or receive"),
        ({"type": "send", "time": START, "opcode": 3, "data": "a"}, "'opcode' must be 1"),
        ({"type": "send", "time": START, "opcode": 2, "data": "%%"}, "is not base64"),
        ({"type": "send", "time": "now", "opcode": 1, "data": "a"}, "'time' must be seconds"),
        ({"type": "send", "time": START, "opcode": 1, "data": 5}, "'data' must be text"),
        ({"type": "send", "time": START, "opcode": 1, "data": "a", "_t": -1}, "'_t' must be"),
    ],
)
def test_a_bad_websocket_message_is_refused_naming_the_entry(
    message: dict[str, Any], reason: str
) -> None:
    with pytest.raises(CassetteFileError) as caught:
        har.parse(har_of(ws_entry(message)), source="x.har")
    assert reason in str(caught.value) and "entry 1" in str(caught.value)
    assert "_webSocketMessages[0]" in str(caught.value)
