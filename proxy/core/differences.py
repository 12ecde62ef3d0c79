"""How two requests in canonical form differ, in short sentences naming both values: what a
replay miss says."""

from __future__ import annotations

import json
from typing import Any

from proxy.core.canonical import MISSING, Canonical, Head, dumps

MAX_DIFFERENCES = 5
"""How many differences are listed before summing up the rest (`capped`)."""

_MAX_VALUE_CHARS = 80
_ABSENT = "(absent)"


def capped(found: list[str]) -> list[str]:
    if len(found) > MAX_DIFFERENCES:
        rest = len(found) - MAX_DIFFERENCES
        found = [*found[:MAX_DIFFERENCES], f"and {rest} more"]
    return found


def between(a: Canonical, b: Canonical) -> list[str]:
    """Every difference between two canonical forms, uncapped."""
    found = [*between_heads(a.head, b.head), *_body_differences(a, b)]
    if not found and a[:-1] != b[:-1]:  # cannot happen; never claim a match that is not one
        found.append("request: canonical forms differ")
    return found


def between_heads(a: Head, b: Head) -> list[str]:
    found: list[str] = []
    for label, x, y in (
        ("method", a.method, b.method),
        ("upstream", a.upstream, b.upstream),
        ("path", a.path, b.path),
    ):
        if x != y:
            found.append(f"{label}: {_truncate(x)} != {_truncate(y)}")
    found += _multi_differences("query param", _group(a.query), _group(b.query))
    found += _multi_differences("header", dict(a.headers), dict(b.headers))
    return found


def _group(pairs: tuple[tuple[str, str], ...]) -> dict[str, tuple[str, ...]]:
    grouped: dict[str, tuple[str, ...]] = {}
    for name, value in pairs:
        grouped[name] = (*grouped.get(name, ()), value)
    return grouped


def _multi_differences(
    label: str, a: dict[str, tuple[str, ...]], b: dict[str, tuple[str, ...]]
) -> list[str]:
    found = []
    for name in sorted(a.keys() | b.keys()):
        x, y = a.get(name, ()), b.get(name, ())
        if x != y:
            found.append(f"{label} {_quote(name)}: {_show_values(x)} != {_show_values(y)}")
    return found


def _show_values(values: tuple[str, ...]) -> str:
    if not values:
        return _ABSENT
    if len(values) == 1:
        return _truncate(_quote(values[0]))
    return _truncate("[" + ", ".join(_quote(v) for v in values) + "]")


def _body_differences(a: Canonical, b: Canonical) -> list[str]:
    if a.is_json and b.is_json:
        leaves: list[str] = []
        _walk(a.body_json, b.body_json, [], leaves)
        return leaves
    if not a.is_json and not b.is_json:
        x, y = a.body_raw, b.body_raw
        if x == y:
            return []
        at = next(
            (i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y))
        )
        return [
            f"body: not JSON, {len(x)} bytes != {len(y)} bytes (first difference at byte {at}):"
            f" {_truncate(repr(x[at : at + 24]))} != {_truncate(repr(y[at : at + 24]))}"
        ]
    return [f"body: {_describe_body(a)} != {_describe_body(b)}"]


def _describe_body(c: Canonical) -> str:
    if c.is_json:
        return f"JSON {_truncate(c.body_text)}"
    if not c.body_raw:
        return "(empty)"
    return f"not JSON, {len(c.body_raw)} bytes {_truncate(repr(c.body_raw))}"


def _walk(a: Any, b: Any, path: list[str], found: list[str]) -> None:
    """Append a sentence for each differing leaf of two JSON trees."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            _walk(a.get(key, MISSING), b.get(key, MISSING), [*path, key], found)
    elif isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            x = a[i] if i < len(a) else MISSING
            y = b[i] if i < len(b) else MISSING
            _walk(x, y, [*path, str(i)], found)
    elif a is MISSING or b is MISSING or dumps(a) != dumps(b):  # 1 == True in Python
        where = f"body field {_quote('.'.join(path))}" if path else "body"
        found.append(f"{where}: {_show_json(a)} != {_show_json(b)}")


def _show_json(value: Any) -> str:
    return _ABSENT if value is MISSING else _truncate(dumps(value))


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _truncate(text: str) -> str:
    if len(text) <= _MAX_VALUE_CHARS:
        return text
    return text[: _MAX_VALUE_CHARS - 1] + "…"
