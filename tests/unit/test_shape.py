"""The drift report's shapes: what counts as a change (table-driven), and what does not."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.core.records import Event, ResponseHead
from proxy.core.shape import drift, facts, key_paths, shape_of
from tests.conftest import example_events, sse_event

SSE = (("Content-Type", "text/event-stream; charset=utf-8"), ("x-request-id", "req_1"))


def stream(payloads: list[dict[str, Any]], t0: float = 400.0) -> list[Event]:
    return [Event(t0 + i, sse_event(p)) for i, p in enumerate(payloads)]


BASE = example_events()


def with_text(text: str) -> list[dict[str, Any]]:
    """The same stream, other words: as many deltas as the text has characters."""
    head = [p for p in BASE if p["type"] != "response.output_text.delta"]
    at = next(i for i, p in enumerate(head) if p["type"] == "response.output_text.done")
    deltas = [{**BASE[4], "delta": c} for c in text]
    return head[:at] + deltas + head[at:]


def renamed(payloads: list[dict[str, Any]], old: str, new: str) -> list[dict[str, Any]]:
    return [{**p, "type": new} if p["type"] == old else p for p in payloads]


def extra_field(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last = json.loads(json.dumps(payloads[-1]))
    last["response"]["usage"]["output_tokens_details"]["audio_tokens"] = 0
    del last["response"]["usage"]["input_tokens_details"]
    return [*payloads[:-1], last]


CASES = [
    ("same stream, new ids and text", SSE, with_text("Hi there, friend"), SSE, []),
    ("status", SSE, BASE, SSE, ["status: 200 -> 500"]),
    ("content type", SSE, BASE, (("Content-Type", "application/json"),),
     ["header content-type: text/event-stream; charset=utf-8 -> application/json"]),
    ("an event renamed", SSE, renamed(BASE, "response.in_progress", "response.queued"), SSE,
     ["event names: "]),
    ("key paths", SSE, extra_field(BASE), SSE,
     ["key paths added: response.usage.output_tokens_details.audio_tokens",
      "key paths removed: response.usage.input_tokens_details, "
      "response.usage.input_tokens_details.cached_tokens"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old_headers", "new_payloads", "new_headers", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_drift(
    old_headers: tuple[tuple[str, str], ...],
    new_payloads: list[dict[str, Any]],
    new_headers: tuple[tuple[str, str], ...],
    expected: list[str],
) -> None:
    status = 500 if expected and expected[0].startswith("status") else 200
    old = shape_of(ResponseHead(200, old_headers), stream(BASE))
    new = shape_of(ResponseHead(status, new_headers), stream(new_payloads, t0=120.0))
    found = drift(old, new)
    if new_headers != SSE:  # read as JSON: the body is no JSON object, nor are there events
        found = found[:1]
    assert len(found) == len(expected)
    for line, start in zip(found, expected, strict=True):
        assert line.startswith(start), line


def test_facts_tell_event_count_and_first_event() -> None:
    old = shape_of(ResponseHead(200, SSE), stream(BASE))
    new = shape_of(ResponseHead(200, SSE), stream(with_text("Hello"), t0=120.0))
    assert facts(old, new) == [
        f"events: {len(BASE)} -> {len(BASE) - 2 + 5}",
        "first event: 400 ms -> 120 ms",
    ]


def test_collapsed_names_and_key_paths_of_lists() -> None:
    shape = shape_of(ResponseHead(200, SSE), stream(BASE))
    names = [n for n, _ in shape.event_names]
    assert names.count("response.output_text.delta") == 1
    assert ("response.output_text.delta", 2) in shape.event_names
    assert sorted(key_paths({"a": [{"b": 1}, {"c": [2]}]})) == ["a", "a[].b", "a[].c"]


def test_a_compressed_body_is_not_read() -> None:
    head = ResponseHead(200, (*SSE, ("Content-Encoding", "gzip")))
    shape = shape_of(head, [Event(1.0, b"\x1f\x8b...")])
    assert not shape.readable and shape.key_paths == frozenset()
    assert "a compressed body: its payloads were not compared" in facts(shape, shape)
