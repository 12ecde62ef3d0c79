"""Keep secrets out of the store: API keys in headers and query strings, cookies.

A `Redactor` replaces the *value* of each listed header and query parameter with
`REDACTED` and leaves everything else as it was: header names and order, the other query
parameters byte for byte (nothing is re-encoded). It is applied before anything is
written, and to a live request before it is matched, so that a cassette recorded with
one key replays for anyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_plus

from proxy.core.records import Headers, Request, ResponseHead

REDACTED = "[REDACTED]"

DEFAULT_HEADERS: frozenset[str] = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "set-cookie"}
)
DEFAULT_QUERY_PARAMS: frozenset[str] = frozenset(
    {"key", "api_key", "apikey", "access_token", "token", "client_secret", "sig", "signature"}
)


@dataclass(frozen=True)
class Redactor:
    """Which header and query parameter values to redact (names are case-insensitive)."""

    headers: frozenset[str] = DEFAULT_HEADERS
    query_params: frozenset[str] = DEFAULT_QUERY_PARAMS

    def __post_init__(self) -> None:
        # Compare lower-cased names whatever case the configuration used.
        object.__setattr__(self, "headers", frozenset(h.lower() for h in self.headers))
        object.__setattr__(self, "query_params", frozenset(p.lower() for p in self.query_params))

    def redact_headers(self, headers: Headers) -> Headers:
        """The header pairs with each listed header's value replaced (names, order kept)."""
        return tuple(
            (name, REDACTED if name.lower() in self.headers else value) for name, value in headers
        )

    def redact_url(self, url: str) -> str:
        """The URL with listed query parameters' values (and any password) replaced.

        The raw query string is split on "&" and "=" and only a listed parameter's value
        changes; a parameter name is compared percent-decoded and case-insensitively.
        """
        base, hash_, fragment = url.partition("#")
        base, question, query = base.partition("?")
        if question:
            query = "&".join(self._redact_param(part) for part in query.split("&"))
        return _redact_password(base) + question + query + hash_ + fragment

    def request(self, request: Request) -> Request:
        """The request with its URL and headers redacted (the body is kept)."""
        return Request(
            request.method,
            self.redact_url(request.url),
            self.redact_headers(request.headers),
            request.body,
        )

    def head(self, head: ResponseHead) -> ResponseHead:
        """The response head with its headers redacted."""
        return ResponseHead(head.status, self.redact_headers(head.headers))

    def _redact_param(self, part: str) -> str:
        name, equals, _value = part.partition("=")
        if equals and unquote_plus(name).lower() in self.query_params:
            return f"{name}={REDACTED}"
        return part


def _redact_password(base: str) -> str:
    """`scheme://user:password@host/...` with the password replaced; else unchanged."""
    scheme, sep, rest = base.partition("://")
    if not sep:
        return base
    authority, slash, path = rest.partition("/")  # query and fragment already split off
    userinfo, at, host = authority.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not at or not colon:
        return base
    return f"{scheme}://{user}:{REDACTED}@{host}{slash}{path}"
