"""`rrproxy ui`: the web UI on a port of its own, over a store or a directory of cassette
files, proxying nothing. Read-only unless `--writable`."""

from __future__ import annotations

import argparse
import errno
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from proxy.cli.store import check_location
from proxy.config import UI_PORT, Settings
from proxy.core.hosts import is_loopback
from proxy.errors import ConfigError
from proxy.serve.admin import UI_PREFIX
from proxy.ui.app import create_ui_app

log = logging.getLogger("proxy")


def ui_command(settings: Settings, args: argparse.Namespace) -> int:
    port = settings.port if args.port is not None else UI_PORT
    settings = replace(settings, port=port)
    if not is_loopback(settings.host) and not settings.allow_remote:
        raise ConfigError(
            f"--host {settings.host} listens beyond loopback: anyone who can reach it could "
            "read your recordings; pass --allow-remote if you mean it"
        )
    directory = Path(settings.cassette_dir) if settings.cassette_dir else None
    if directory is not None and args.db is not None:
        raise ConfigError(
            "rrproxy ui browses either a store (--db) or a directory of cassette files "
            "(--cassette-dir), not both"
        )
    if directory is not None and not directory.is_dir():
        raise ConfigError(f"--cassette-dir {directory}: no such directory")
    if directory is None:
        check_location(settings, create=False)
        return _serve(settings, args.writable, None)
    with tempfile.TemporaryDirectory(prefix="rrproxy-ui-") as scratch:  # the files' store
        return _serve(replace(settings, db=str(Path(scratch) / "ui.db")), args.writable, directory)


def _serve(settings: Settings, writable: bool, directory: Path | None) -> int:
    def listening(_aiohttp_banner: str) -> None:
        what = f"the cassette files in {directory}" if directory else f"the store {settings.db}"
        log.info(
            "rrproxy ui on http://%s:%d%s/ over %s (%s)",
            settings.host,
            settings.port,
            UI_PREFIX,
            what,
            "changes allowed" if writable else "read-only",
        )

    app = create_ui_app(settings, writable=writable, cassette_dir=directory)
    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            shutdown_timeout=settings.shutdown_timeout,
            access_log=None,
            print=listening,
        )
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}; "
            "choose another --port"
        ) from exc
    return 0
