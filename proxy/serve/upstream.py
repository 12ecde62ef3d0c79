"""The upstream client: one pooled `aiohttp.ClientSession`, sending a request exactly as
the client sent it (no decompression, no invented headers, no proxy from the environment),
and the errors it raises in words that carry no URL (a query may hold a key)."""

from __future__ import annotations

import ssl

import aiohttp
from yarl import URL

from proxy.core.headers import end_to_end
from proxy.core.records import Request, ResponseHead
from proxy.errors import ConfigError, UpstreamError, UpstreamTimeout

# Headers aiohttp would otherwise invent: the upstream sees what the client sent.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def upstream_ssl_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """Verification of upstream certificates: the system's trust store, plus the CAs in
    `ca_bundle` (a PEM file, for private upstreams) when one is configured."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"upstream_ca_bundle = {ca_bundle!r}: cannot load it as PEM certificates ({exc})"
            ) from None
    return context


def client_session(
    connect_timeout: float, read_timeout: float, ssl_context: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """The one upstream client: pooled, no decompression, no proxy settings from the
    environment (rrproxy must not loop through itself), certificates verified against
    `ssl_context` (default: the system's trust store)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=0,
            limit_per_host=0,
            ttl_dns_cache=300,
            ssl=ssl_context if ssl_context is not None else upstream_ssl_context(),
        ),
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        ),
        auto_decompress=False,
        trust_env=False,
        skip_auto_headers=SKIP_AUTO_HEADERS,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def send(
    session: aiohttp.ClientSession,
    request: Request,
    *,
    hops: str | None = None,
    setting: str | None = "--upstream",
) -> aiohttp.ClientResponse:
    """Open the upstream response (headers read, body not yet), or raise an `UpstreamError`
    naming the upstream and the cause. `hops`: the `Rrproxy-Hops` header to add (sent for
    loop detection, not part of the request that is recorded). `setting`: what chose this
    upstream, named when it cannot be reached (None: the client named the host)."""
    url = URL(request.url, encoded=True)
    upstream = f"{url.scheme}://{url.authority}"
    try:
        response = await session.request(
            request.method,
            url,
            headers=[*request.headers, *((("Rrproxy-Hops", hops),) if hops else ())],
            data=request.body or None,
            allow_redirects=False,
        )
    except aiohttp.ClientConnectorCertificateError as exc:
        raise UpstreamError(
            f"upstream {upstream}: TLS certificate verification failed ({exc.certificate_error})"
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamError(
            f"cannot connect to upstream {upstream}: {exc.os_error.strerror or exc}; "
            + (f"is it running, and is {setting} right?" if setting else "is it running?")
        ) from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise UpstreamError(
            f"cannot connect to upstream {upstream}: no connection within the connect "
            "timeout (timeouts.connect)"
        ) from exc
    except TimeoutError as exc:  # aiohttp.ServerTimeoutError is one too
        raise UpstreamTimeout(
            f"upstream {upstream} did not answer in time (timeouts.read): {describe(exc)}"
        ) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"upstream {upstream} failed: {describe(exc)}") from exc
    # aiohttp's C parser refuses differing Content-Lengths; its pure-Python one keeps the
    # first. A proxy must answer 502 to such a response (RFC 9110 §8.6, RFC 9112 §6.3).
    lengths = set(response.headers.getall("Content-Length", ()))
    if len(lengths) > 1:
        response.close()
        raise UpstreamError(
            f"upstream {upstream} answered with conflicting Content-Length headers "
            f"({', '.join(sorted(lengths))}): the response's framing is ambiguous"
        )
    return response


def describe(exc: BaseException) -> str:
    """An aiohttp error in words, without the request's URL (whose query may hold a key):
    these messages are logged, answered and stored."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__}: {exc.status}, {exc.message}"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"{type(exc).__name__}: the URL is not valid"
    return f"{type(exc).__name__}: {exc}"


def response_head(upstream: aiohttp.ClientResponse) -> ResponseHead:
    return ResponseHead(upstream.status, end_to_end(upstream.headers.items()))
