"""The UI's routes, templates and lifetimes: inside the proxy (`setup`, from
`proxy.serve.app`) or on a server of its own over a store (`create_ui_app`, for `rrproxy ui`).
Every asset ships in the package: no CDN, no build step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from proxy.cassettes.directory import CassetteDir
from proxy.config import Settings
from proxy.core.records import Request
from proxy.errors import NotFound, RrproxyError
from proxy.serve.admin import UI_PREFIX, check_request
from proxy.serve.state import RUN, SERVICES, SETTINGS
from proxy.store.engine import open_store
from proxy.ui import actions, live, templating, views
from proxy.ui.context import UI, Ui
from proxy.ui.misses import watching

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATIC = Path(__file__).resolve().parent / "static"


def _routes(app: web.Application) -> None:
    p = UI_PREFIX
    app.router.add_get(p, _to_index)
    app.router.add_get(p + "/", views.cassettes)
    app.router.add_get(p + "/cassettes/{name}", views.cassette)
    app.router.add_get(p + "/cassettes/{name}/download", views.download)
    app.router.add_get(p + "/cassettes/{name}/scan", views.scan)
    app.router.add_get(p + "/interactions/{id}", views.interaction)
    app.router.add_get(p + "/interactions/{id}/summary", views.summary)
    app.router.add_get(p + "/interactions/{id}/timeline", views.timeline)
    app.router.add_get(p + "/interactions/{id}/messages/{n}", views.message_bytes)
    app.router.add_get(p + "/live", live.page)
    app.router.add_get(p + "/live/feed", live.feed)
    app.router.add_get(p + "/misses", views.misses)
    app.router.add_get(p + "/compare", views.compare)
    app.router.add_post(p + "/actions/delete-interaction", actions.delete_interaction)
    app.router.add_post(p + "/actions/delete-cassette", actions.delete_cassette)
    app.router.add_post(p + "/actions/mode", actions.set_mode)
    app.router.add_post(p + "/actions/cassette", actions.set_cassette)
    app.router.add_post(p + "/actions/reset", actions.reset)
    app.router.add_static(p + "/static", STATIC, append_version=True, name="rrproxy-ui-static")
    app.router.add_route("*", p + "/{tail:.*}", _unknown)  # never the proxy's catch-all


async def _to_index(_request: web.Request) -> web.Response:
    raise web.HTTPFound(UI_PREFIX + "/")


async def _unknown(request: web.Request) -> web.StreamResponse:
    if request.method in ("GET", "HEAD"):
        return views.page_not_found(request, f"no page {request.path}")
    raise NotFound(f"no rrproxy UI endpoint {request.method} {request.path}")


def setup(app: web.Application, proxy_handler: Handler) -> Handler:
    """Serve the UI inside the proxy; returns `proxy_handler` watched for replay misses."""
    templating.setup(app)
    _routes(app)
    app[live.STOPPING] = asyncio.Event()
    app.on_shutdown.append(live.stop)

    async def context(app: web.Application) -> AsyncIterator[None]:
        services = app[SERVICES]
        settings = services.settings
        async with open_store(settings.db_url, writer=True) as writer:
            ui = Ui(
                settings=settings,
                reader=services.reader,
                writer=writer,
                services=services,
                run=app[RUN],
                cassette_dir=Path(settings.cassette_dir) if settings.cassette_dir else None,
            )
            app[UI] = ui
            app[RUN].new_run_listeners.append(ui.misses.clear)  # POST /_rrproxy/reset too
            try:
                yield
            finally:
                app[RUN].new_run_listeners.remove(ui.misses.clear)

    app.cleanup_ctx.append(context)

    def note(cassette: str, request: Request, message: str) -> None:
        if UI in app:
            app[UI].misses.add(cassette, request, message)

    return watching(proxy_handler, note, lambda: app[SERVICES], app[RUN])


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`rrproxy ui`: the proxy's guard on every path (Host; Origin and JSON for changes)."""
    check_request(request)
    if request.path == "/":
        raise web.HTTPFound(UI_PREFIX + "/")
    if not request.path.startswith(UI_PREFIX):
        return views.page_not_found(request, f"no page {request.path}")
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RrproxyError as exc:
        return web.json_response(exc.body(), status=exc.status)


def create_ui_app(
    settings: Settings, *, writable: bool = False, cassette_dir: Path | None = None
) -> web.Application:
    """The UI alone, over the store `settings` name: nothing is proxied. Read-only unless
    `writable`. The store is opened (and migrated) at start; `cassette_dir`'s files are
    loaded into it first (and a cassette deleted through the UI loses its file)."""
    app = web.Application(middlewares=[_errors, _guard])
    app[SETTINGS] = settings
    templating.setup(app)
    _routes(app)
    app[live.STOPPING] = asyncio.Event()
    app.on_shutdown.append(live.stop)

    async def context(app: web.Application) -> AsyncIterator[None]:
        async with (
            open_store(settings.db_url, writer=True, migrate=True) as writer,
            open_store(settings.db_url, writer=False) as reader,
        ):
            if cassette_dir is not None:  # the files fill the store first
                await CassetteDir(cassette_dir, writer, reader, settings.redact).load()
            app[UI] = Ui(
                settings=settings,
                reader=reader,
                writer=writer if writable else None,
                cassette_dir=cassette_dir,
            )
            yield

    app.cleanup_ctx.append(context)
    return app
