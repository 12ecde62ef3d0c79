"""The UI's templates (Jinja2 through aiohttp-jinja2, autoescaped) and what every page is
given: the CSRF token, the run's mode and cassette, the static files' versioned URLs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from proxy.core.records import Outcome
from proxy.serve.admin import UI_PREFIX
from proxy.ui import render
from proxy.ui.context import UI

OUTCOMES = {
    Outcome.COMPLETE: "complete",
    Outcome.CLIENT_GONE: "complete (client left)",
    Outcome.UPSTREAM_BROKEN: "upstream broke",
    Outcome.INCOMPLETE: "incomplete",
    Outcome.RECORDING: "recording",
}


def cassette_url(name: str) -> str:
    from urllib.parse import quote

    return f"{UI_PREFIX}/cassettes/{quote(name, safe='')}"


def interaction_url(interaction_id: int) -> str:
    return f"{UI_PREFIX}/interactions/{interaction_id}"


def setup(app: web.Application) -> None:
    """No context processors: aiohttp-jinja2's would add a middleware to every request the
    proxy serves. Pages get their common context from `page`."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("proxy.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        default_helpers=False,
    )
    env.filters.update(size=render.size, ms=render.ms, outcome=lambda o: OUTCOMES[o])
    env.globals.update(prefix=UI_PREFIX, cassette_url=cassette_url, interaction_url=interaction_url)


def page(
    template: str, request: web.Request, context: Mapping[str, Any], status: int = 200
) -> web.Response:
    ui = request.app[UI]
    run = ui.run
    common = {
        "csrf": ui.csrf,
        "serving": ui.serving,
        "writable": ui.writer is not None,
        "mode": (run.mode or ui.settings.mode).value if run is not None else None,
        "active": run.cassette if run is not None else None,
        "css": _static(request, "ui.css"),
        "js": _static(request, "ui.js"),
    }
    response = aiohttp_jinja2.render_template(
        template, request, {**common, **context}, status=status
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"  # no page of another site may frame it
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'"
    )
    return response


def _static(request: web.Request, name: str) -> str:
    resource = request.app.router.named_resources().get("rrproxy-ui-static")
    if isinstance(resource, web.StaticResource):
        return str(resource.url_for(filename=name))
    return f"{UI_PREFIX}/static/{name}"  # pragma: no cover
