"""Which recorded request answers a new one, and why another one does not.

Plain functions over `Request`, in the spirit of vcrpy's `matchers.py` and mitmproxy's
`ServerPlayback._hash`. Both `match_key` and `differences` go through `_canonical`, so
the rules are applied in one place and identically to both sides.

The canonical form of a request is:
- the method, upper-cased;
- the upstream: scheme, host and port, lower-cased, the default port dropped;
- the path, as sent (an empty path is "/");
- the query parameters, percent-decoded and sorted, so their order does not matter but a
  repeated name keeps all its values; ignored names left out;
- the selected headers (names lower-cased, values as sent, in the order sent);
- the body: when it parses as JSON (whatever the content type), the canonical JSON text
  with the ignored fields removed; otherwise the raw bytes.

Secrets are redacted before a request is stored (see `redact.py`); match the redacted
form of a live request too, so that a cassette recorded with one key replays for anyone.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

from proxy.core.records import Request
from proxy.core.strict_json import reject_constant

MAX_DIFFERENCES = 5
"""How many differences `differences` lists before summing up the rest."""

_MAX_VALUE_CHARS = 80
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_ABSENT = "(absent)"
_MISSING: Any = object()  # a body that is not JSON, or a field that one side lacks


@dataclass(frozen=True)
class MatchRules:
    """What is left out of (or added to) the match key."""

    ignore_body_fields: tuple[str, ...] = ()
    """Dotted paths into a JSON body ("metadata.user_id", "messages.0.id"); a numeric part
    indexes a list."""
    match_headers: tuple[str, ...] = ()
    """Header names (case-insensitive) that are part of the key."""
    ignore_query_params: tuple[str, ...] = ()
    """Query parameter names (as decoded, case-sensitive) left out of the key."""


class _Canonical(NamedTuple):  # a tuple: made for every key computed
    method: str
    upstream: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, tuple[str, ...]], ...]
    is_json: bool
    body_json: Any  # the parsed body with ignored fields removed, when is_json
    body_text: str  # canonical JSON text, when is_json
    body_raw: bytes  # the raw body, when not is_json

    @property
    def route(self) -> tuple[str, str, str]:
        return self.method, self.upstream, self.path


def match_key(request: Request, rules: MatchRules) -> str:
    """A stable hex sha256 of the request's canonical form under `rules`."""
    c = _canonical(request, rules)
    parts = [
        c.method,
        c.upstream,
        c.path,
        [list(p) for p in c.query],
        [[name, list(values)] for name, values in c.headers],
        "json" if c.is_json else "raw",
    ]
    digest = hashlib.sha256(_KEY_PARTS.encode(parts).encode())
    digest.update(b"\n")  # then the body, hashed as it is (JSON: its canonical text)
    digest.update(c.body_text.encode("utf-8", "surrogatepass") if c.is_json else c.body_raw)
    return digest.hexdigest()


def key_inputs(request: Request, rules: MatchRules) -> tuple[object, ...]:
    """What `match_key` reads of a request, as it was sent. Requests equal in these have the
    same key (not the other way round), so a replay of a byte-identical request, the usual
    case, can look its key up rather than parse and canonicalise its body again."""
    headers: tuple[tuple[str, str], ...] = ()
    if rules.match_headers:
        wanted = {name.lower() for name in rules.match_headers}
        headers = tuple((n.lower(), v) for n, v in request.headers if n.lower() in wanted)
    return request.method, request.url, headers, request.body


def differences(wanted: Request, recorded: Request, rules: MatchRules) -> list[str]:
    """Short sentences naming what differs between two requests and both values.

    Empty exactly when both have the same `match_key`. At most `MAX_DIFFERENCES`
    sentences, then one saying how many more there are.
    """
    found = _differences(_canonical(wanted, rules), _canonical(recorded, rules))
    if len(found) > MAX_DIFFERENCES:
        rest = len(found) - MAX_DIFFERENCES
        found = [*found[:MAX_DIFFERENCES], f"and {rest} more"]
    return found


def closest(
    wanted: Request, candidates: Sequence[Request], rules: MatchRules
) -> tuple[int, list[str]] | None:
    """The index of the candidate most like `wanted`, and how they differ.

    Prefers a candidate with the same method, upstream and path, then the one with the
    fewest differences, then the nearest body size, then the earliest. None when there
    are no candidates.
    """
    if not candidates:
        return None
    want = _canonical(wanted, rules)

    def score(index: int) -> tuple[bool, int, int]:
        have = _canonical(candidates[index], rules)
        other_route = want.route != have.route
        size = abs(len(wanted.body) - len(candidates[index].body))
        return other_route, len(_differences(want, have)), size

    index = min(range(len(candidates)), key=score)  # min keeps the earliest of equals
    return index, differences(wanted, candidates[index], rules)


# -- canonical form ----------------------------------------------------------------------


def _canonical(request: Request, rules: MatchRules) -> _Canonical:
    parts = urlsplit(request.url)
    query: list[tuple[str, str]] = []
    if parts.query:
        ignored_params = set(rules.ignore_query_params)
        query = sorted(
            (name, value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
            if name not in ignored_params
        )
    headers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    if rules.match_headers:
        headers = tuple(
            (name, tuple(v for n, v in request.headers if n.lower() == name))
            for name in sorted({name.lower() for name in rules.match_headers})
        )
    parsed = _parse_json(request.body)
    is_json = parsed is not _MISSING
    if is_json:
        for field in rules.ignore_body_fields:
            parsed = _without(parsed, field.split("."))
    return _Canonical(
        method=request.method.upper(),
        upstream=_upstream(parts.scheme, parts.netloc),
        path=parts.path or "/",
        query=tuple(query),
        headers=headers,
        is_json=is_json,
        body_json=parsed if is_json else None,
        body_text=_dumps(parsed) if is_json else "",
        body_raw=b"" if is_json else request.body,
    )


@functools.lru_cache(maxsize=256)
def _upstream(scheme: str, netloc: str) -> str:
    """Scheme, host and port, lower-cased, the default port dropped."""
    parts = urlsplit(f"{scheme}://{netloc}")
    scheme = scheme.lower()
    try:
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # a malformed port: keep the authority as written
        return f"{scheme}://{netloc.lower()}"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


_DECODER = json.JSONDecoder(parse_constant=reject_constant)


def _parse_json(body: bytes) -> Any:
    try:
        try:
            text = body.decode("utf-8-sig")  # as json.loads reads bytes
        except UnicodeDecodeError:
            return json.loads(body, parse_constant=reject_constant)  # UTF-16/32 JSON
        return _DECODER.decode(text)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        return _MISSING


# One encoder each, made once: `json.dumps` with options builds a new encoder per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# ensure_ascii=True: the digest input is plain ASCII, even with lone surrogates.
_KEY_PARTS = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def _dumps(value: Any) -> str:
    return _CANONICAL.encode(value)


def _without(value: Any, path: list[str]) -> Any:
    """`value` with the field at `path` removed (a copy along the path; absent is fine)."""
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        if head not in value:
            return value
        copy = dict(value)
        if rest:
            copy[head] = _without(value[head], rest)
        else:
            del copy[head]
        return copy
    if isinstance(value, list) and head.isdigit() and int(head) < len(value):
        items = list(value)
        i = int(head)
        if rest:
            items[i] = _without(items[i], rest)
        else:
            del items[i]
        return items
    return value


# -- differences ---------------------------------------------------------------------------


def _differences(a: _Canonical, b: _Canonical) -> list[str]:
    """Every difference between two canonical forms, uncapped."""
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
    found += _body_differences(a, b)
    if not found and a != b:  # cannot happen; never claim a match that is not one
        found.append("request: canonical forms differ")
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


def _body_differences(a: _Canonical, b: _Canonical) -> list[str]:
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


def _describe_body(c: _Canonical) -> str:
    if c.is_json:
        return f"JSON {_truncate(c.body_text)}"
    if not c.body_raw:
        return "(empty)"
    return f"not JSON, {len(c.body_raw)} bytes {_truncate(repr(c.body_raw))}"


def _walk(a: Any, b: Any, path: list[str], found: list[str]) -> None:
    """Append a sentence for each differing leaf of two JSON trees."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            _walk(a.get(key, _MISSING), b.get(key, _MISSING), [*path, key], found)
    elif isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            x = a[i] if i < len(a) else _MISSING
            y = b[i] if i < len(b) else _MISSING
            _walk(x, y, [*path, str(i)], found)
    elif a is _MISSING or b is _MISSING or _dumps(a) != _dumps(b):  # 1 == True in Python
        where = f"body field {_quote('.'.join(path))}" if path else "body"
        found.append(f"{where}: {_show_json(a)} != {_show_json(b)}")


def _show_json(value: Any) -> str:
    return _ABSENT if value is _MISSING else _truncate(_dumps(value))


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _truncate(text: str) -> str:
    if len(text) <= _MAX_VALUE_CHARS:
        return text
    return text[: _MAX_VALUE_CHARS - 1] + "…"
