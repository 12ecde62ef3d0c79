"""The shape of a recorded answer, and how two shapes differ (`rrproxy rerecord`'s drift
report): what code that reads a stream depends on, without the values that change on every
call (ids, text, timings).

A shape is: the status; the headers that change how a body is read (`MATTERING`); the
sequence of SSE `event:` names, consecutive repeats collapsed (`response.output_text.delta`
x12 and x9 are the same shape); the JSON key paths present in the `data:` payloads (an NDJSON
line, a JSON body), arrays as `[]`, values ignored; and, for information only, the event
count and the time to the first event.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.core.event_fields import is_json, is_ndjson, is_sse, json_object, sse_fields
from proxy.core.headers import get
from proxy.core.records import Event, ResponseHead

MATTERING = ("content-type", "content-encoding", "openai-version", "anthropic-version")
"""The headers whose change changes how a client reads the answer."""
MAX_PATHS = 2000
"""Key paths kept per answer (a body with more is reported as truncated)."""


@dataclass(frozen=True)
class Shape:
    status: int
    headers: tuple[tuple[str, str | None], ...]
    event_names: tuple[tuple[str, int], ...]  # (name, consecutive repeats)
    key_paths: frozenset[str]
    events: int
    first_event_ms: float | None
    readable: bool  # False: a compressed body, whose payloads are not read


def shape_of(head: ResponseHead, events: Sequence[Event]) -> Shape:
    content_type = get(head.headers, "content-type")
    encoding = (get(head.headers, "content-encoding") or "identity").lower()
    readable = encoding in ("identity", "")
    names: list[tuple[str, int]] = []
    paths: set[str] = set()
    if readable:
        for payload, name in _payloads(content_type, events):
            if name is not None:
                if names and names[-1][0] == name:
                    names[-1] = (name, names[-1][1] + 1)
                else:
                    names.append((name, 1))
            if payload is not None and len(paths) < MAX_PATHS:
                paths.update(key_paths(payload))
    return Shape(
        head.status,
        tuple((h, get(head.headers, h)) for h in MATTERING),
        tuple(names),
        frozenset(paths),
        len(events),
        events[0].t_ms if events else None,
        readable,
    )


def _payloads(
    content_type: str | None, events: Sequence[Event]
) -> Iterator[tuple[dict[str, Any] | None, str | None]]:
    if is_sse(content_type):
        for event in events:
            name, data = sse_fields(event.data)
            if name is None and data is None:
                continue  # a comment, a keep-alive
            yield json_object(data), name or "message"
    elif is_ndjson(content_type):
        for event in events:
            for line in event.data.splitlines():
                yield json_object(line.strip()), None
    elif is_json(content_type):
        yield json_object(b"".join(e.data for e in events)), None


def key_paths(value: Any, prefix: str = "") -> Iterator[str]:
    """Every key path of a JSON value: `response.usage.input_tokens`, `output[].content[]`."""
    if isinstance(value, dict):
        for key, sub in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            yield from key_paths(sub, path)
    elif isinstance(value, list):
        for item in value:
            yield from key_paths(item, prefix + "[]")


def _names_text(names: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(n if k == 1 else f"{n} x{k}" for n, k in names) or "(none)"


def _collapsed(names: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    return tuple(n for n, _ in names)


def drift(old: Shape, new: Shape) -> list[str]:
    """What changed in the shape, one line each; empty when the shape is the same."""
    changes: list[str] = []
    if old.status != new.status:
        changes.append(f"status: {old.status} -> {new.status}")
    for (name, before), (_, after) in zip(old.headers, new.headers, strict=True):
        if before != after:
            changes.append(f"header {name}: {before or '(none)'} -> {after or '(none)'}")
    if _collapsed(old.event_names) != _collapsed(new.event_names):
        changes.append(
            f"event names: {_names_text(old.event_names)} -> {_names_text(new.event_names)}"
        )
    if added := sorted(new.key_paths - old.key_paths):
        changes.append("key paths added: " + ", ".join(added))
    if removed := sorted(old.key_paths - new.key_paths):
        changes.append("key paths removed: " + ", ".join(removed))
    return changes


def facts(old: Shape, new: Shape) -> list[str]:
    """What is told but is no drift: event count and time to first event."""

    def ms(t: float | None) -> str:
        return "-" if t is None else f"{t:.0f} ms"

    lines = [f"events: {old.events} -> {new.events}"]
    lines.append(f"first event: {ms(old.first_event_ms)} -> {ms(new.first_event_ms)}")
    if not (old.readable and new.readable):
        lines.append("a compressed body: its payloads were not compared")
    return lines
