"""`rrproxy serve`: run the proxy until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import os

from aiohttp import web

from proxy import __version__
from proxy.cli.env import command_line
from proxy.cli.store import check_location
from proxy.config import CONFIG_VARIABLE, Settings
from proxy.errors import ConfigError
from proxy.serve.app import create_app
from proxy.serve.state import RUN

log = logging.getLogger("proxy")


def serve_command(settings: Settings, args: argparse.Namespace) -> int:
    check_location(settings, create=True)  # before the server starts: one line, no traceback

    def listening(_aiohttp_banner: str) -> None:  # called once the port is bound
        base = f"http://{settings.host}:{settings.port}"
        log.info(
            "rrproxy %s on %s -> %s (mode %s, cassette %r, store %s)",
            __version__,
            base,
            settings.upstream,
            settings.mode,
            settings.cassette,
            settings.db,
        )
        log.info(
            "point an app at it: OPENAI_BASE_URL=%s/v1, ANTHROPIC_BASE_URL=%s (with "
            '--upstream https://api.anthropic.com), or eval "$(%s)" for any host',
            base,
            base,
            command_line(settings, args.config or os.environ.get(CONFIG_VARIABLE)),
        )

    app = create_app(settings)
    app.on_startup.append(_freeze_what_lives_forever)  # after the app's own start-up
    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            shutdown_timeout=settings.shutdown_timeout,
            access_log=None,  # our own line per interaction; it never shows a query's secrets
            handler_cancellation=False,  # a client hanging up leaves its recording to finish
            print=listening,
        )
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}; "
            "choose another --port or --host"
        ) from exc
    log.info("rrproxy stopped")  # the recorder has said so above if anything was not written
    final = app[RUN].report.final
    if settings.strict and final is not None and final.problems:
        log.error(
            "strict: the run had %d problem(s) (listed above); exit status 1", len(final.problems)
        )
        return 1
    return 0


async def _freeze_what_lives_forever(_app: web.Application) -> None:
    """What exists once the server has started (modules, the app, the store's engines) lives
    as long as the process: keep it out of the garbage collector's full passes (gc.freeze),
    which would otherwise walk all of it again and again while a long stream is relayed or
    replayed (the README's performance section has what it saves)."""
    gc.freeze()
