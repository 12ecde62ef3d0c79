"""The canonical form of a request: what matching compares (see `matching`).

- the method, upper-cased;
- the upstream: scheme, host and port, lower-cased, the default port dropped;
- the path, as sent (an empty path is "/");
- the query parameters, percent-decoded and sorted, so their order does not matter but a
  repeated name keeps all its values; ignored names left out;
- the selected headers (names lower-cased, values as sent, in the order sent);
- the body: when it parses as JSON (whatever the content type), the canonical JSON text
  with the ignored fields removed; otherwise the raw bytes.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

from proxy.core.records import Headers, Request
from proxy.core.strict_json import reject_constant

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
MISSING: Any = object()  # a body that is not JSON, or a field that one side lacks


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


class Head(NamedTuple):  # a tuple: made for every key computed
    method: str
    upstream: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def route(self) -> tuple[str, str, str]:
        return self.method, self.upstream, self.path


class Canonical(NamedTuple):
    """A request in canonical form (see the module's docstring); what `nearest` compares."""

    head: Head
    is_json: bool
    body_json: Any  # the parsed body with ignored fields removed, when is_json
    body_text: str  # canonical JSON text, when is_json
    body_raw: bytes  # the raw body, when not is_json
    size: int  # the length of the body as sent


def canonical(request: Request, rules: MatchRules) -> Canonical:
    parsed = parse_json(request.body)
    is_json = parsed is not MISSING
    if is_json:
        for field in rules.ignore_body_fields:
            parsed = _without(parsed, field.split("."))
    return Canonical(
        head=head(request.method, request.url, request.headers, rules),
        is_json=is_json,
        body_json=parsed if is_json else None,
        body_text=dumps(parsed) if is_json else "",
        body_raw=b"" if is_json else request.body,
        size=len(request.body),
    )


def head(method: str, url: str, request_headers: Headers, rules: MatchRules) -> Head:
    parts = urlsplit(url)
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
            (name, tuple(v for n, v in request_headers if n.lower() == name))
            for name in sorted({name.lower() for name in rules.match_headers})
        )
    return Head(
        method=method.upper(),
        upstream=_upstream(parts.scheme, parts.netloc),
        path=parts.path or "/",
        query=tuple(query),
        headers=headers,
    )


def route(method: str, url: str) -> tuple[str, str, str]:
    """Method, upstream and path as `head` reads them (its `route`), without the rest."""
    parts = urlsplit(url)
    return method.upper(), _upstream(parts.scheme, parts.netloc), parts.path or "/"


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


def parse_json(body: bytes) -> Any:
    try:
        try:
            text = body.decode("utf-8-sig")  # as json.loads reads bytes
        except UnicodeDecodeError:
            return json.loads(body, parse_constant=reject_constant)  # UTF-16/32 JSON
        return _DECODER.decode(text)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        return MISSING


# One encoder each, made once: `json.dumps` with options builds a new encoder per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# ensure_ascii=True: the digest input is plain ASCII, even with lone surrogates.
KEY_PARTS = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def dumps(value: Any) -> str:
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
