"""Where a request goes: the upstream URL for an incoming request.

Three kinds of request reach the pipeline:
- inside a CONNECT tunnel, or in absolute form (`GET http://host/path`, a client using
  rrproxy as its HTTP_PROXY): the host the client named, which the forward proxy has
  already checked and put in the request's `TARGET`;
- a relative path under a configured route prefix: that route's upstream, the prefix
  stripped (`/openai/v1/responses` with `/openai = "https://api.openai.com"` goes to
  `https://api.openai.com/v1/responses`);
- any other relative path: the configured `upstream`.
A URL aimed at rrproxy's own listening address is refused: it would loop.
"""

from __future__ import annotations

import functools

from aiohttp import web

from proxy.config import Settings
from proxy.core.hosts import Target, origin_form, url_target
from proxy.errors import BadRequest
from proxy.forward_proxy.policy import TARGET, refuse_loop


def upstream_url(request: web.BaseRequest, settings: Settings) -> str:
    """The upstream URL, path and query exactly as sent; `Refused` when it would loop."""
    target: Target | None = request.get(TARGET)
    try:
        if target is not None:
            url = target.origin + origin_form(request.raw_path)
        else:
            upstream, url = _routed(request.raw_path, settings)
            target = _configured_target(upstream)
    except ValueError as exc:
        raise BadRequest(f"bad request target: {exc}") from None
    refuse_loop(request, settings, target, url)
    return url


def routed_url(raw_path: str, settings: Settings) -> str:
    """A relative request's upstream: the longest matching route, else `upstream`."""
    return _routed(raw_path, settings)[1]


def _routed(raw_path: str, settings: Settings) -> tuple[str, str]:
    """(the configured upstream it goes to, the full URL)."""
    prefix = _prefix(raw_path, settings)
    if prefix is None:
        return settings.upstream, settings.upstream + raw_path
    upstream = dict(settings.routes)[prefix]
    rest = raw_path[len(prefix) :]
    return upstream, upstream + (rest if rest.startswith("/") else "/" + rest)


def _prefix(raw_path: str, settings: Settings) -> str | None:
    """The route prefix a relative request goes through; None for `upstream`."""
    if not raw_path.startswith("/"):
        raise ValueError(f"{raw_path!r} is not a path")
    path = raw_path.split("?", 1)[0]
    for prefix, _upstream in settings.routes:  # longest prefix first
        if path == prefix or path.startswith(prefix + "/"):
            return prefix
    return None


def setting_name(request: web.BaseRequest, settings: Settings) -> str | None:
    """The setting that sent this request to its upstream, as an error should name it: the
    front end's name for it (`upstream_labels`) or the configuration's; None when the
    client named the host itself (HTTP_PROXY)."""
    if request.get(TARGET) is not None:
        return None
    try:
        prefix = _prefix(request.raw_path, settings)
    except ValueError:
        return None
    labels = dict(settings.upstream_labels)
    if prefix is None:
        return labels.get("", "--upstream")
    return labels.get(prefix, f"the route {prefix!r} (routes)")


@functools.lru_cache(maxsize=64)
def _configured_target(upstream: str) -> Target:
    """A configured upstream's target, parsed once (it was validated at start)."""
    return url_target(upstream)
