"""Tests for proxy.cassettes.har on documents: each refusal names the entry and why, and
the shapes other tools write are read.

The end-to-end tests (tests/integration/test_har.py) export recordings made through the
proxy and import them again; these cover what a hand-edited or foreign HAR can hold.
"""

from __future__ import annotations

import base64
import json
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
    [rec], skipped, untimed = har.parse(har_of(obj), source="x.har")
    assert skipped == [] and untimed == 1
    assert rec.request.headers == (("A", "1"),)  # HTTP/2 pseudo-headers are not headers
    assert rec.request.body == b"q"
    assert rec.ttfb_ms == 5.0 and rec.duration_ms == 12.5  # send + wait; HAR's time
    assert [(e.t_ms, e.data) for e in rec.events] == [(5.0, b"\x00binary")]


def test_rrproxys_own_fields_come_back_whole() -> None:
    [rec], _, untimed = har.parse(har_of(ours(request_body_b64="/w==")), source="x.har")
    assert untimed == 0
    assert rec.request.body == b"\xff"
    assert (rec.ttfb_ms, rec.duration_ms) == (3.0, 9.0)
    assert [(e.t_ms, e.data) for e in rec.events] == [(3.0, b"hi")]
