"""Keep secrets out of the store: API keys in headers and query strings, cookies.

A `Redactor` replaces the *value* of each credential header and query parameter with
`REDACTED` and leaves everything else as it was: header names and order, the other query
parameters byte for byte (nothing is re-encoded). It is applied before anything is
written, and to a live request before it is matched, so that a cassette recorded with
one key replays for anyone.

A name is a credential's when it is in one of the explicit lists (the providers' own
headers and parameters, below), or when it contains one of `name_contains` ("key",
"token", ...) and matches no pattern of `allow`. The allow-list spares names that hold
one of those words and are no credential: rate-limit and usage headers that a replay must
send back as they came (`x-ratelimit-remaining-tokens`), token counts (`max_tokens`),
pagination cursors (`pageToken`, whose value tells page 2 from page 3 when matching), and
protocol headers (`Sec-WebSocket-Key`, `WWW-Authenticate`). The explicit lists always win.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import translate
from urllib.parse import unquote_plus

from proxy.core.records import Headers, Request, ResponseHead

REDACTED = "[REDACTED]"

DEFAULT_HEADERS: frozenset[str] = frozenset(
    {
        "authorization",  # OpenAI, Mistral, Cohere, Hugging Face, Groq, AWS SigV4...
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",  # Anthropic, LangSmith
        "api-key",  # Azure OpenAI, Pinecone
        "x-goog-api-key",  # Google Gemini, Google Cloud APIs
        "x-amz-security-token",  # AWS SigV4 with temporary credentials
        "x-auth-token",  # OpenStack, many gateways
        "x-auth-key",  # Cloudflare
        "cf-aig-authorization",  # Cloudflare AI Gateway
        "private-token",  # GitLab
        "job-token",  # GitLab CI
        "ocp-apim-subscription-key",  # Azure API Management, Azure AI services
        "x-functions-key",  # Azure Functions
        "xi-api-key",  # ElevenLabs
        "helicone-auth",  # Helicone
        "dd-api-key",  # Datadog
        "dd-application-key",
    }
)
DEFAULT_QUERY_PARAMS: frozenset[str] = frozenset(
    {
        "key",  # Google (Gemini, Maps, ...)
        "api_key",
        "apikey",
        "api-key",  # Azure OpenAI
        "subscription-key",  # Azure API Management
        "x-amz-signature",  # AWS presigned URLs
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",  # Google Cloud Storage signed URLs
        "x-goog-credential",
        "sig",  # Azure shared access signatures
        "signature",
        "private_token",  # GitLab
        "job_token",
        "auth",  # Firebase
        "access_token",  # OAuth 2
        "refresh_token",
        "id_token",
        "token",
        "client_secret",
        "password",
    }
)
DEFAULT_NAME_CONTAINS: frozenset[str] = frozenset(
    {"key", "token", "secret", "signature", "password", "auth"}
)
"""A header or query parameter whose name contains one of these is redacted too."""

DEFAULT_ALLOW: frozenset[str] = frozenset(
    {
        # Rate-limit and usage metadata of responses: OpenAI, Azure, Groq, Mistral
        # (x-ratelimit-*-tokens*), Anthropic (anthropic-ratelimit-*), Together
        # (x-tokenlimit-*), Amazon Bedrock (x-amzn-bedrock-*-token-count).
        "*ratelimit*",
        "*rate-limit*",
        "*rate_limit*",
        "*tokenlimit*",
        "*token-count",
        "*token_count",
        # Token counts: max_tokens, max_output_tokens, maxOutputTokens, max_new_tokens...
        "max*tokens*",
        # Pagination cursors: pageToken, page_token, next_page_token, continuationToken...
        "*pagetoken",
        "*page_token",
        "*page-token",
        "*continuation*token",
        # Protocol headers that hold no credential.
        "sec-websocket-key",  # the handshake's nonce (RFC 6455)
        "www-authenticate",  # a challenge: what a 401's client reads
        "proxy-authenticate",
        "idempotency-key",  # chosen by the client to tell retries apart
        "author",
    }
)
"""Names (shell-style patterns, case-insensitive) that `DEFAULT_NAME_CONTAINS` spares."""


def _lower(names: frozenset[str]) -> frozenset[str]:
    return frozenset(n.lower() for n in names)


@dataclass(frozen=True)
class Redactor:
    """Which header and query parameter values to redact (names are case-insensitive)."""

    headers: frozenset[str] = DEFAULT_HEADERS
    query_params: frozenset[str] = DEFAULT_QUERY_PARAMS
    name_contains: frozenset[str] = DEFAULT_NAME_CONTAINS
    allow: frozenset[str] = DEFAULT_ALLOW
    _allowed: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Compare lower-cased names whatever case the configuration used.
        for attr in ("headers", "query_params", "name_contains", "allow"):
            object.__setattr__(self, attr, _lower(getattr(self, attr)))
        either = "|".join(translate(p) for p in sorted(self.allow)) or r"(?!)"
        object.__setattr__(self, "_allowed", re.compile(either, re.DOTALL))

    def redacts_header(self, name: str) -> bool:
        """Whether a header of this name holds a credential."""
        lower = name.lower()
        return lower in self.headers or self._named_like_a_credential(lower)

    def redacts_param(self, name: str) -> bool:
        """Whether a query parameter of this (percent-decoded) name holds a credential."""
        lower = name.lower()
        return lower in self.query_params or self._named_like_a_credential(lower)

    def _named_like_a_credential(self, lower: str) -> bool:
        return any(word in lower for word in self.name_contains) and not self._allowed.match(lower)

    def redact_headers(self, headers: Headers) -> Headers:
        """The header pairs with each credential's value replaced (names, order kept)."""
        return tuple(
            (name, REDACTED if self.redacts_header(name) else value) for name, value in headers
        )

    def redact_url(self, url: str) -> str:
        """The URL with credential query parameters' values (and any password) replaced.

        The raw query string is split on "&" and "=" and only a credential parameter's value
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
        if equals and self.redacts_param(unquote_plus(name)):
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
