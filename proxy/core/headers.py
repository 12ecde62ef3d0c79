"""Which headers cross the proxy: hop-by-hop ones never do (RFC 9110 §7.6.1)."""

from __future__ import annotations

from collections.abc import Iterable

from proxy.core.records import Headers

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
CONTROL = frozenset({"rrproxy-cassette", "rrproxy-mode", "rrproxy-pace", "rrproxy-untimed-pace"})
"""Per-request control headers: read by rrproxy, never forwarded or recorded."""
NOT_FORWARDED = CONTROL | {"host", "content-length", "rrproxy-hops"}
"""A request's headers that do not go upstream as they came (aiohttp sets Host and
Content-Length itself; rrproxy adds itself to Rrproxy-Hops when it forwards)."""


def end_to_end(pairs: Iterable[tuple[str, str]], *, drop: frozenset[str] = frozenset()) -> Headers:
    """The headers minus hop-by-hop ones, those the Connection header names, and `drop`
    (lower-case names)."""
    pairs = list(pairs)
    excluded = HOP_BY_HOP | drop
    for name, value in pairs:
        if name.lower() == "connection":
            excluded |= {token.strip().lower() for token in value.split(",")}
    return tuple((name, value) for name, value in pairs if name.lower() not in excluded)


def get(pairs: Headers, name: str) -> str | None:
    name = name.lower()
    return next((v for n, v in pairs if n.lower() == name), None)
