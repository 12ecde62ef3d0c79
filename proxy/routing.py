"""Where a request goes: the upstream URL for an incoming request."""

from __future__ import annotations

from aiohttp import web

from .config import Settings


def upstream_url(request: web.Request, settings: Settings) -> str:
    """The configured upstream, plus the request's path and query exactly as sent."""
    return settings.upstream + request.raw_path
