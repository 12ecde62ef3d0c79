"""Secrets in headers and query strings are redacted, and nothing else changes."""

from __future__ import annotations

import pytest

from proxy.config import Settings, load_settings
from proxy.core.matching import MatchRules, match_key
from proxy.core.records import Request, ResponseHead
from proxy.core.redact import (
    DEFAULT_ALLOW,
    DEFAULT_HEADERS,
    DEFAULT_NAME_CONTAINS,
    DEFAULT_QUERY_PARAMS,
    REDACTED,
    Redactor,
)

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
        ("https://h/p?monkey=1&keys=2&key_id=3", f"https://h/p?monkey={R}&keys={R}&key_id={R}"),
        ("https://h/p?model=m&alt=sse&n=2", "https://h/p?model=m&alt=sse&n=2"),
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
    redactor = Redactor(
        headers=frozenset({"X-Session"}),
        query_params=frozenset({"Session"}),
        name_contains=frozenset(),
    )
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
    redactor = Redactor(headers=frozenset(), query_params=frozenset(), name_contains=frozenset())
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


# -- the providers' credential names, the substring rule and its allow-list --------------------

# (provider, header): each is a credential in the explicit default list.
PROVIDER_HEADERS = [
    ("OpenAI, Mistral, Cohere, Hugging Face, Groq...", "Authorization"),
    ("Anthropic", "X-Api-Key"),
    ("Azure OpenAI", "api-key"),
    ("Google Gemini", "x-goog-api-key"),
    ("AWS SigV4 session", "X-Amz-Security-Token"),
    ("OpenStack, gateways", "X-Auth-Token"),
    ("Cloudflare", "X-Auth-Key"),
    ("Cloudflare AI Gateway", "cf-aig-authorization"),
    ("GitLab", "Private-Token"),
    ("GitLab CI", "Job-Token"),
    ("Azure API Management, AI services", "Ocp-Apim-Subscription-Key"),
    ("Azure Functions", "x-functions-key"),
    ("ElevenLabs", "xi-api-key"),
    ("Helicone", "Helicone-Auth"),
    ("Datadog", "DD-API-KEY"),
]


@pytest.mark.parametrize(("provider", "name"), PROVIDER_HEADERS)
def test_provider_credential_header_is_in_the_default_list(provider: str, name: str) -> None:
    assert name.lower() in DEFAULT_HEADERS, provider
    for redactor in (Redactor(), Redactor(name_contains=frozenset())):  # not by the rule alone
        assert redactor.redact_headers(((name, "s3cret"),)) == ((name, R),)


# (provider, query parameter): each is a credential in the explicit default list.
PROVIDER_PARAMS = [
    ("Google (Gemini, Maps...)", "key"),
    ("Azure OpenAI", "api-key"),
    ("Azure API Management", "subscription-key"),
    ("AWS presigned URL", "X-Amz-Signature"),
    ("AWS presigned URL", "X-Amz-Credential"),
    ("AWS presigned URL", "X-Amz-Security-Token"),
    ("Google Cloud Storage signed URL", "X-Goog-Signature"),
    ("Google Cloud Storage signed URL", "X-Goog-Credential"),
    ("Azure SAS", "sig"),
    ("GitLab", "private_token"),
    ("GitLab CI", "job_token"),
    ("Firebase", "auth"),
    ("OAuth 2", "access_token"),
    ("OAuth 2", "refresh_token"),
    ("OAuth 2", "client_secret"),
    ("basic forms", "password"),
]


@pytest.mark.parametrize(("provider", "name"), PROVIDER_PARAMS)
def test_provider_credential_param_is_in_the_default_list(provider: str, name: str) -> None:
    assert name.lower() in DEFAULT_QUERY_PARAMS, provider
    for redactor in (Redactor(), Redactor(name_contains=frozenset())):
        url = f"https://h/p?a=1&{name}=s3cret&b=2"
        assert redactor.redact_url(url) == f"https://h/p?a=1&{name}={R}&b=2"


def test_the_substring_rule_names_the_six_words() -> None:
    assert DEFAULT_NAME_CONTAINS == {"key", "token", "secret", "signature", "password", "auth"}


# Names in no list, redacted because they contain one of the words (any case).
SUBSTRING_HEADERS = [
    "X-Custom-Token",
    "X-MY-SECRET",
    "Webhook-Signature",
    "X-Admin-Password",
    "X-Service-Auth",
    "X-Authorization-Extra",
    "X-Portkey-Api-Key",
    "X-Vault-Token",
    "X-Amz-Server-Side-Encryption-Customer-Key",
    "X-Csrf-Token",
    "x-sentry-auth",
    "Session_Key",
]


@pytest.mark.parametrize("name", SUBSTRING_HEADERS)
def test_header_named_like_a_credential_is_redacted(name: str) -> None:
    headers = (("Content-Type", "application/json"), (name, "s3cret"))
    assert Redactor().redact_headers(headers) == (("Content-Type", "application/json"), (name, R))
    assert Redactor().head(ResponseHead(200, headers)).headers[1] == (name, R)


SUBSTRING_PARAMS = [
    "my_key",
    "sessionToken",
    "AccessKey",
    "oauth_signature",
    "oauth_nonce",  # contains "auth": varies per request, so redacting it helps replay too
    "oauth_consumer_key",
    "db_password",
    "app_secret",
    "hf_token",
    "X-Goog-Algorithm-Signature",
    "key%5Fid",  # percent-decoded: key_id
]


@pytest.mark.parametrize("name", SUBSTRING_PARAMS)
def test_param_named_like_a_credential_is_redacted(name: str) -> None:
    url = f"https://h/p?model=m&{name}=s3cret"
    assert Redactor().redact_url(url) == f"https://h/p?model=m&{name}={R}"


# Names the rule spares by default: ordinary headers, and names with one of the words that
# are not credentials. Response metadata among them is replayed as it was recorded.
SPARED_HEADERS = [
    "Content-Type",
    "Accept",
    "Cache-Control",
    "Keep-Alive",
    "User-Agent",
    "X-Request-Id",
    "OpenAI-Organization",
    "anthropic-version",
    "x-ratelimit-limit-tokens",  # OpenAI, Azure, Groq
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "X-RateLimit-Remaining-Tokens",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-output-tokens-reset",
    "x-ratelimit-remaining-tokens-minute",  # Mistral
    "x-tokenlimit-remaining",  # Together
    "x-amzn-bedrock-input-token-count",
    "x-amzn-bedrock-output-token-count",
    "Sec-WebSocket-Key",  # a handshake nonce (RFC 6455), not a credential
    "WWW-Authenticate",  # a challenge, which a 401's client reads
    "Proxy-Authenticate",
    "Idempotency-Key",  # chosen by the client to tell retries apart
]


@pytest.mark.parametrize("name", SPARED_HEADERS)
def test_header_spared_by_the_default_allow_list(name: str) -> None:
    headers = ((name, "v1"),)
    assert Redactor().redact_headers(headers) == headers
    assert Redactor().head(ResponseHead(200, headers)) == ResponseHead(200, headers)


SPARED_PARAMS = [
    "model",
    "alt",
    "max_tokens",
    "maxOutputTokens",
    "max_completion_tokens",
    "pageToken",  # Google APIs: a cursor, and what tells page 2 from page 3
    "page_token",
    "next_page_token",
    "nextPageToken",
    "continuationToken",
    "author",
]


@pytest.mark.parametrize("name", SPARED_PARAMS)
def test_param_spared_by_the_default_allow_list(name: str) -> None:
    url = f"https://h/p?{name}=v1&x=2"
    assert Redactor().redact_url(url) == url


def test_allow_list_is_configurable_and_the_explicit_lists_win_over_it() -> None:
    redactor = Redactor(
        headers=DEFAULT_HEADERS | {"idempotency-key"},
        allow=DEFAULT_ALLOW | {"X-Trace-Token", "*-key-id"},
    )
    headers = (
        ("X-Trace-Token", "t"),
        ("X-Kms-Key-Id", "k"),
        ("Idempotency-Key", "i"),  # allowed by default, but listed: redacted
        ("X-Other-Token", "o"),
    )
    assert redactor.redact_headers(headers) == (
        ("X-Trace-Token", "t"),
        ("X-Kms-Key-Id", "k"),
        ("Idempotency-Key", R),
        ("X-Other-Token", R),
    )
    # an allow-list entry never spares a name of the explicit lists
    assert Redactor(allow=frozenset({"*"})).redact_headers((("X-Api-Key", "k"),)) == (
        ("X-Api-Key", R),
    )
    assert Redactor(allow=frozenset({"*"})).redact_url("https://h/?key=k&my_token=t") == (
        f"https://h/?key={R}&my_token=t"
    )


def test_substring_rule_can_be_turned_off_or_changed() -> None:
    off = Redactor(name_contains=frozenset())
    assert off.redact_headers((("X-Custom-Token", "t"),)) == (("X-Custom-Token", "t"),)
    mine = Redactor(name_contains=frozenset({"Session"}))
    assert mine.redact_headers((("X-Session-Id", "s"), ("X-Custom-Token", "t"))) == (
        ("X-Session-Id", R),
        ("X-Custom-Token", "t"),
    )


def test_redact_settings_from_the_environment() -> None:
    settings = load_settings(
        environ={"RRPROXY_REDACT_ALLOW": "X-Trace-Token", "RRPROXY_REDACT_NAME_CONTAINS": ""}
    )
    assert settings.redact.allow == DEFAULT_ALLOW | {"x-trace-token"}
    assert settings.redact.name_contains == frozenset()
    assert Settings().redact.allow == DEFAULT_ALLOW
    assert Settings().redact.name_contains == DEFAULT_NAME_CONTAINS


@pytest.mark.parametrize(
    ("header", "param"),
    [("X-Amz-Security-Token", "X-Amz-Signature"), ("X-Custom-Token", "session_key")],
)
def test_requests_match_whatever_their_credentials(header: str, param: str) -> None:
    """Matching sees the redacted form, so a value of a redacted name never matters, even
    with the header among the matched ones."""
    redactor = Redactor()
    rules = MatchRules(match_headers=(header,))

    def with_secret(secret: str) -> Request:
        return redactor.request(
            Request("GET", f"https://h/o?{param}={secret}&x=1", ((header, secret),), b"")
        )

    assert match_key(with_secret("alice"), rules) == match_key(with_secret("bob"), rules)
