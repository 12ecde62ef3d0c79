"""The client's connection, when a response cannot end as HTTP says it should."""

from __future__ import annotations

from aiohttp import web


def break_connection(request: web.Request) -> None:
    """End the client's connection without finishing the body, as a broken upstream did:
    the client sees the same premature end."""
    if request.transport is not None:
        request.transport.close()
