"""The `rrproxy` command (also `python -m proxy`). Only this module configures logging."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy import __version__
from proxy.cli.cassettes import add_commands as add_cassette_commands
from proxy.cli.env import add_commands as add_env_commands
from proxy.config import Mode, Settings, load_settings
from proxy.errors import ConfigError, RrproxyError

log = logging.getLogger("proxy")

EXIT_USAGE = 2


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    parser.add_argument("--db", metavar="URL_OR_PATH", help="store: SQLite file or SQLAlchemy URL")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_const",
        const=True,
        default=None,
        help="log more (debug lines)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rrproxy",
        description="Record-and-replay proxy for streaming HTTP APIs (SSE, NDJSON, plain HTTP).",
    )
    parser.add_argument("--version", action="version", version=f"rrproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy")
    _settings_flags(serve)
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", help="listen port (default 8080)")
    serve.add_argument("--upstream", metavar="URL", help="default https://api.openai.com")
    serve.add_argument("--mode", help="/".join(m.value for m in Mode) + " (default auto)")
    serve.add_argument("--cassette", metavar="NAME", help="active cassette (default 'default')")
    serve.add_argument("--cassette-dir", metavar="DIR", help="cassette files (loaded, rewritten)")
    serve.add_argument("--pace", help="replay pace: instant (default), recorded, or a factor")
    serve.add_argument(
        "--strict",
        action="store_const",
        const=True,
        default=None,
        help="replay: a request beyond its recordings is a miss",
    )
    serve.add_argument(
        "--allow-remote",
        action="store_const",
        const=True,
        default=None,
        help="listen beyond loopback (--host 0.0.0.0); forwarding then needs allow_hosts",
    )
    serve.set_defaults(run=_serve)

    db = commands.add_parser("db", help="manage the store")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    upgrade = db_commands.add_parser("upgrade", help="apply the schema migrations")
    _settings_flags(upgrade)
    upgrade.set_defaults(run=_db_upgrade)
    add_cassette_commands(commands)
    add_env_commands(commands)
    return parser


def _load(args: argparse.Namespace) -> Settings:
    names: tuple[str, ...] = ("host", "port", "upstream", "mode", "cassette", "db", "pace")
    names += ("strict", "verbose", "cassette_dir", "allow_remote")
    flags: dict[str, Any] = {n: getattr(args, n, None) for n in names}
    return load_settings(args.config, flags=flags)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("proxy").setLevel(logging.DEBUG if verbose else logging.INFO)
    # A line per interaction: skip gathering what the format never shows (the logging
    # HOWTO's "Optimization" section).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # nor the caller's file and line
    if not verbose:
        for noisy in ("aiohttp.access", "alembic", "sqlalchemy"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _serve(settings: Settings, _args: argparse.Namespace) -> int:
    from proxy.serve.app import create_app

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
            '--upstream https://api.anthropic.com), or eval "$(rrproxy env)" for any host',
            base,
            base,
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
    return 0


async def _freeze_what_lives_forever(_app: web.Application) -> None:
    """What exists once the server has started (modules, the app, the store's engines) lives
    as long as the process: keep it out of the garbage collector's full passes (gc.freeze),
    which would otherwise walk all of it again and again while a long stream is relayed or
    replayed. A 20 MB replay took 100-110 ms of CPU without, 60-70 ms with."""
    gc.freeze()


def _db_upgrade(settings: Settings, _args: argparse.Namespace) -> int:
    from proxy.store import migrate
    from proxy.store.engine import create_engine

    async def run() -> str | None:
        engine = create_engine(settings.db_url, writer=True)
        try:
            await migrate.upgrade(engine)
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    revision = asyncio.run(run())
    print(f"store {settings.db} is at schema revision {revision}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _load(args)
    except ConfigError as exc:
        print(f"rrproxy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(settings.verbose)
    try:
        return int(args.run(settings, args))  # run(settings, args): each command's function
    except ConfigError as exc:
        print(f"rrproxy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RrproxyError as exc:
        print(f"rrproxy: {exc}", file=sys.stderr)
        return 1
