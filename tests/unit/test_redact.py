"""Secrets in headers and query strings are redacted, and nothing else changes."""

from __future__ import annotations

import pytest

from proxy.core.matching import MatchRules, match_key
from proxy.core.records import Request
from proxy.core.redact import DEFAULT_HEADERS, DEFAULT_QUERY_PARAMS, REDACTED, Redactor

R = REDACTED


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "Proxy-Authorization",
        "X-Api-Key",
        "Api-Key",
        "Cookie",
        "Set-Cookie",
        "authorization",
        "AUTHORIZATION",
        "x-API-key",
    ],
)
def test_default_header_redacted(name: str) -> None:
    headers = (("Accept", "text/event-stream"), (name, "sk-secret"), ("X-Trace", "t1"))
    assert Redactor().redact_headers(headers) == (
        ("Accept", "text/event-stream"),
        (name, R),
        ("X-Trace", "t1"),
    )


def test_repeated_headers_all_redacted_in_order() -> None:
    headers = (("Set-Cookie", "a=1"), ("Content-Type", "text/plain"), ("set-cookie", "b=2"))
    assert Redactor().redact_headers(headers) == (
        ("Set-Cookie", R),
        ("Content-Type", "text/plain"),
        ("set-cookie", R),
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        *[
            (f"https://h/p?{name}=s3cret&x=1", f"https://h/p?{name}={R}&x=1")
            for name in sorted(DEFAULT_QUERY_PARAMS)
        ],
        ("https://h/p?KEY=s3cret", f"https://h/p?KEY={R}"),
        ("https://h/p?Api_Key=s3cret", f"https://h/p?Api_Key={R}"),
        ("https://h/p?api%5Fkey=s3cret", f"https://h/p?api%5Fkey={R}"),  # name percent-decoded
        ("https://h/p?key=a&key=b&q=1", f"https://h/p?key={R}&key={R}&q=1"),
        ("https://h/p?key=", f"https://h/p?key={R}"),
        ("https://h/p?key=a=b", f"https://h/p?key={R}"),
        ("https://h/p?key", "https://h/p?key"),  # no value, nothing to hide
        ("https://h/p?monkey=1&keys=2&key_id=3", "https://h/p?monkey=1&keys=2&key_id=3"),
        ("https://h/p?key=s#key=frag", f"https://h/p?key={R}#key=frag"),
        ("https://h/p?q=a%20b+c&key=s&z=%7E&&", f"https://h/p?q=a%20b+c&key={R}&z=%7E&&"),
        ("https://h/key=1/p", "https://h/key=1/p"),
        ("https://h/p", "https://h/p"),
        ("https://h/p?", "https://h/p?"),
        ("/v1/models?key=s", f"/v1/models?key={R}"),
        ("https://user:pw@h:8443/p?x=1", f"https://user:{R}@h:8443/p?x=1"),
        ("https://user@h/p", "https://user@h/p"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert Redactor().redact_url(url) == expected


def test_custom_lists_replace_the_defaults() -> None:
    redactor = Redactor(headers=frozenset({"X-Session"}), query_params=frozenset({"Session"}))
    headers = (("Authorization", "Bearer sk"), ("x-session", "abc"))
    assert redactor.redact_headers(headers) == (("Authorization", "Bearer sk"), ("x-session", R))
    assert redactor.redact_url("https://h/?key=k&session=s") == f"https://h/?key=k&session={R}"


def test_custom_lists_extend_the_defaults() -> None:
    redactor = Redactor(
        headers=DEFAULT_HEADERS | {"anthropic-admin-key"},
        query_params=DEFAULT_QUERY_PARAMS | {"password"},
    )
    headers = (("Anthropic-Admin-Key", "a"), ("X-Api-Key", "b"))
    assert redactor.redact_headers(headers) == (("Anthropic-Admin-Key", R), ("X-Api-Key", R))
    assert redactor.redact_url("https://h/?password=p&key=k") == f"https://h/?password={R}&key={R}"


def test_nothing_redacted_with_empty_lists() -> None:
    redactor = Redactor(headers=frozenset(), query_params=frozenset())
    headers = (("Authorization", "Bearer sk"),)
    assert redactor.redact_headers(headers) == headers
    assert redactor.redact_url("https://h/?key=k") == "https://h/?key=k"


def test_request_redacts_url_and_headers_and_keeps_the_body() -> None:
    request = Request(
        method="POST",
        url="https://generativelanguage.googleapis.com/v1/models:generate?alt=sse&key=AIza",
        headers=(("Authorization", "Bearer sk-1"), ("Content-Type", "application/json")),
        body=b'{"api_key": "left alone"}',
    )
    assert Redactor().request(request) == Request(
        method="POST",
        url=f"https://generativelanguage.googleapis.com/v1/models:generate?alt=sse&key={R}",
        headers=((("Authorization", R), ("Content-Type", "application/json"))),
        body=b'{"api_key": "left alone"}',
    )


def test_redacted_requests_match_whatever_the_key() -> None:
    redactor = Redactor()
    rules = MatchRules(match_headers=("authorization",))

    def with_key(key: str) -> Request:
        return redactor.request(
            Request("GET", f"https://h/v1/models?key={key}", (("Authorization", key),), b"")
        )

    assert match_key(with_key("alice"), rules) == match_key(with_key("bob"), rules)
