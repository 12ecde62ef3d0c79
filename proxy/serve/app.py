"""The aiohttp application: routes, the error middleware, and everything with a lifetime.

`create_app(settings)` builds it; the store (migrated at start), the recorder's writer task
and the upstream client are created and closed by `cleanup_ctx` generators, in that order.

Serve it as `rrproxy serve` does, with aiohttp's default `handler_cancellation=False`
(`web.run_app`, `web.AppRunner`): a client that hangs up mid-stream then does not stop the
upstream response from being read to its end and recorded. A server that cancels handlers
(aiohttp's `TestServer`) ends such a recording at the hang-up, as incomplete.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.cassettes.directory import CassetteDir
from proxy.config import Settings
from proxy.core.printable import printable
from proxy.errors import ConfigError, RequestTimeout, RrproxyError
from proxy.forward_proxy import connect
from proxy.serve import admin, websocket
from proxy.serve.index import Index
from proxy.serve.pipeline import handle
from proxy.serve.recorder import Recorder
from proxy.serve.replay import Bodies
from proxy.serve.run_report import log_summary
from proxy.serve.state import RUN, SERVICES, SETTINGS, RunState, Services
from proxy.serve.upstream import client_session, upstream_ssl_context
from proxy.store import changes, instances, migrate
from proxy.store.engine import open_store
from proxy.ui import app as ui

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: RrproxyError) -> web.Response:
    response = web.Response(
        status=exc.status,
        text=json.dumps(exc.body()),
        content_type="application/json",
        headers=exc.headers,
    )
    if exc.headers.get("Connection") == "close":
        response.force_close()
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RrproxyError as exc:
        if exc.status >= 500:
            log.warning(
                "%s %s -> %d: %s",
                *(printable(request.method), printable(request.path), exc.status, printable(exc)),
            )
        response = error_response(exc)
        if isinstance(exc, RequestTimeout):  # the body's rest is not waited for
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()  # after the answer, which is written already
        return response


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    verify = upstream_ssl_context(settings.upstream_ca_bundle)  # a bad bundle fails the start
    if settings.read_only:  # nothing migrated, repaired or registered: it never writes
        if settings.cassette_dir is not None:
            raise ConfigError(
                "read_only (--read-only) replays from the store as it is; a cassette "
                "directory is loaded into the store, which writes: drop one of them"
            )
        async with open_store(settings.db_url, writer=False, read_only=True) as reader:
            await migrate.require_head(reader)
            async with _running(app, verify, writer=reader, reader=reader, instance=None):
                yield
        return
    async with (
        open_store(
            settings.db_url,
            writer=True,
            migrate=True,
            lock_timeout=settings.store_lock_timeout,
        ) as writer,
        open_store(settings.db_url, writer=False) as reader,
    ):
        repaired = await instances.repair(writer)
        if repaired:
            log.warning(
                "marked %d interaction(s) left open by a stopped proxy as incomplete", repaired
            )
        instance = await instances.register(writer)
        try:
            async with _running(app, verify, writer=writer, reader=reader, instance=instance):
                yield
        finally:
            try:
                await instances.leave(writer, instance)
            except Exception as exc:  # the next start's repair forgets it after the lapse
                log.debug("could not remove this proxy's instance row: %s", exc)


@asynccontextmanager
async def _running(
    app: web.Application,
    verify: ssl.SSLContext | None,
    *,
    writer: AsyncEngine,
    reader: AsyncEngine,
    instance: int | None,
) -> AsyncIterator[None]:
    """The services on an open store: the recorder's writer task, the upstream client, the
    heartbeat (`instance`: this proxy's row; None for a read-only proxy) and the watch for
    other proxies' commits."""
    settings = app[SETTINGS]
    recorder = Recorder(writer, instance=instance)
    if instance is not None:
        await recorder.warm_up()
    writer_task = asyncio.create_task(recorder.run(), name="rrproxy-recorder")
    upstream = client_session(settings.connect_timeout, settings.read_timeout, verify)
    app[SERVICES] = Services(
        settings=settings,
        index=Index(reader, settings.effective_rules, settings.redact),
        recorder=recorder,
        reader=reader,
        upstream=upstream,
        redactor=settings.redact,
        bodies=Bodies(reader),
    )
    team = [
        asyncio.create_task(
            changes.watch(settings.db_url, app[SERVICES].index.changed), name="rrproxy-changes"
        )
    ]
    if instance is not None:
        team.append(asyncio.create_task(_heartbeat(writer, instance), name="rrproxy-heartbeat"))
    try:
        yield
    finally:
        await upstream.close()
        await recorder.close()
        await writer_task
        for task in team:
            task.cancel()
        await asyncio.gather(*team, return_exceptions=True)


async def _heartbeat(writer: AsyncEngine, instance: int) -> None:
    """Say this proxy is alive, so that another one starting does not repair what it is
    recording (`proxy.store.instances`). A failing store is the recorder's to report."""
    while True:
        await asyncio.sleep(instances.HEARTBEAT_S)
        try:
            await instances.beat(writer, instance)
        except Exception as exc:
            log.debug("heartbeat not written: %s", getattr(exc, "orig", None) or exc)


DIR_LOADED = web.AppKey("dir_loaded", asyncio.Event)
"""Set once the cassette directory is loaded: proxied requests wait for it."""


async def cassette_dir_ctx(app: web.Application) -> AsyncIterator[None]:
    """The app's cleanup context for `cassette_dir`: the files are loaded in the background
    (the proxy listens at once; proxied requests wait until they are loaded); on the way
    out, wait for the recorder's last commits and write their files. Runs after the
    store's context."""
    settings = app[SETTINGS]
    if settings.cassette_dir is None:
        app[DIR_LOADED].set()
        yield
        return
    services = app[SERVICES]
    async with open_store(settings.db_url, writer=True) as writer:
        sync = CassetteDir(Path(settings.cassette_dir), writer, services.reader, settings.redact)
        await sync.prepare()  # a directory that cannot be one fails the start

        async def load() -> None:
            try:
                await sync.load_files()
            finally:
                services.recorder.listeners.append(sync.recorded)
                app[DIR_LOADED].set()
            await sync.run()

        task = asyncio.create_task(load(), name="rrproxy-cassette-dir")
        try:
            yield
        finally:
            # The server has let running streams finish (or cancelled them) by now; this
            # context closes before the store's, so that their files are written too.
            try:
                await asyncio.wait_for(services.recorder.flush(), settings.shutdown_timeout)
            except TimeoutError:
                log.error("the store did not take the last recordings; their files are not written")
            await sync.close()
            if not app[DIR_LOADED].is_set():
                task.cancel()  # stopped while loading
            await asyncio.gather(task, return_exceptions=True)


async def run_report_ctx(app: web.Application) -> AsyncIterator[None]:
    """On the way out, before the store closes: the last run's summary, logged, and kept in
    `RunReport.final` (`rrproxy serve --strict` exits non-zero on its problems). Closed
    first, before the cassette directory's context and the store's."""
    yield
    services, state = app[SERVICES], app[RUN]
    try:
        await asyncio.wait_for(services.recorder.flush(), app[SETTINGS].shutdown_timeout)
        summary = await state.report.summary(
            services.reader, state.cassette, services.settings.prices
        )
    except Exception as exc:  # the store failing at shutdown: said, not raised
        log.error("could not sum up the run: %s", exc)
        return
    state.report.final = summary
    log_summary(summary, strict=services.settings.strict, priced=bool(services.settings.prices))


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware], client_max_size=settings.max_request_body
    )
    app[SETTINGS] = settings
    app[RUN] = RunState(cassette=settings.cassette)
    app[DIR_LOADED] = asyncio.Event()
    app.cleanup_ctx.append(_services)
    app.cleanup_ctx.append(cassette_dir_ctx)  # after the store: loads files, writes them
    app.cleanup_ctx.append(run_report_ctx)  # closed first: sums up the run at shutdown

    loaded = app[DIR_LOADED]

    async def proxy_handler(request: web.Request) -> web.StreamResponse:
        if not loaded.is_set():
            await loaded.wait()  # the cassette directory, loading in the background
        # The app's own state, not `request.app`: requests inside CONNECT tunnels have none.
        if websocket.is_upgrade(request):
            return await websocket.handle(request, app[SERVICES], app[RUN])
        return await handle(request, app[SERVICES], app[RUN])

    async def stop_websockets(app: web.Application) -> None:
        await websocket.stop_sessions(app[RUN])  # before the wait for running handlers

    app.on_shutdown.append(stop_websockets)
    proxied = ui.setup(app, proxy_handler)  # the UI's routes; it notes the replay misses
    # HTTP_PROXY/HTTPS_PROXY: absolute form and CONNECT, through the same pipeline
    connect.setup(app, settings, proxied, error_response)
    admin.setup(app)  # /_rrproxy/*, never forwarded: after the forward proxy's middleware
    app.router.add_route("*", "/{tail:.*}", proxied)
    return app
