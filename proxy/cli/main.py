"""The `rrproxy` command (also `python -m proxy`): its arguments, the settings they make, and
how a command ends. Only this module configures logging.

Each command names the function that runs it as `"module:function"`; its module is imported
only when that command runs, so `rrproxy --version` and `--help` load neither SQLAlchemy,
aiohttp nor cryptography.

Exit statuses: 0 done; 1 the command failed (a missing cassette, a bad file, the store);
2 bad usage or configuration (one line naming the flag, key or variable); 141 the reader of
standard output went away (`rrproxy show X | head -1`), as for a Unix tool stopped by SIGPIPE.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from proxy import __version__
from proxy.config import UI_PORT, Mode, Settings, load_settings, parse_duration
from proxy.core.records import check_cassette_name
from proxy.errors import ConfigError, RrproxyError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PIPE = 128 + 13  # SIGPIPE

Run = Callable[[Settings, argparse.Namespace], int]


def _options() -> dict[str, argparse.ArgumentParser]:
    """Options several commands share, each declared once (argparse parent parsers)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    _flag(common, "-v", "--verbose", text="log debug lines")
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--db", metavar="URL_OR_PATH", help="store: SQLite file or SQLAlchemy URL")
    directory = argparse.ArgumentParser(add_help=False)
    directory.add_argument(
        "--cassette-dir",
        metavar="DIR",
        help="the team's cassettes as NAME.cassette.jsonl files (loaded first)",
    )
    return {
        "common": common,
        "store": store,
        "dir": directory,
        "listen": _listen("the proxy's", Settings.port),
        "listen-ui": _listen("the UI's", UI_PORT),
    }


def _listen(whose: str, port: int) -> argparse.ArgumentParser:
    """--host and --port, their help naming the defaults the command uses."""
    listen = argparse.ArgumentParser(add_help=False)
    listen.add_argument("--host", help=f"{whose} address (default {Settings.host})")
    listen.add_argument("--port", help=f"{whose} port (default {port})")
    return listen


def _cassette_name(value: str) -> str:
    try:
        return check_cassette_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _flag(parser: argparse.ArgumentParser, *names: str, text: str) -> None:
    """A switch that is None when absent, so the file's or the environment's value stands."""
    parser.add_argument(*names, action="store_const", const=True, default=None, help=text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rrproxy",
        description="Record-and-replay proxy for streaming HTTP APIs (SSE, NDJSON, plain HTTP).",
    )
    parser.add_argument("--version", action="version", version=f"rrproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    o = _options()

    def command(name: str, run: str, text: str, *shared: str, **kw: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, parents=[o[s] for s in shared], **kw)
        sub.set_defaults(run=run)
        return sub

    shared = ("common", "store", "dir", "listen")
    serve = command("serve", "proxy.cli.serve:serve_command", "run the proxy", *shared)
    serve.add_argument("--upstream", metavar="URL", help="default https://api.openai.com")
    serve.add_argument("--mode", help="/".join(m.value for m in Mode) + " (default auto)")
    serve.add_argument("--cassette", metavar="NAME", help="active cassette (default 'default')")
    serve.add_argument("--pace", help="replay pace: instant (default), recorded, or a factor")
    serve.add_argument(
        "--untimed-pace",
        metavar="PACE",
        help="pace of interactions imported without event timing (default instant)",
    )
    _flag(serve, "--strict", text="replay: a request beyond its recordings is a miss")
    _flag(serve, "--read-only", text="replay only, and never write to the store (CI)")
    serve.add_argument(
        "--workers", metavar="N", help="processes sharing the port (auto: one per CPU)"
    )
    _flag(
        serve,
        "--allow-remote",
        text="listen beyond loopback (--host 0.0.0.0); forwarding then needs allow_hosts",
    )

    ui = command(
        "ui",
        "proxy.cli.ui:ui_command",
        "browse a store or a directory of cassette files in the web UI (no proxying)",
        "common",
        "store",
        "dir",
        "listen-ui",
    )
    _flag(ui, "--writable", text="allow deletes from the UI (read-only otherwise)")
    _flag(ui, "--allow-remote", text="listen beyond loopback (--host 0.0.0.0)")

    db = commands.add_parser("db", help="manage the store")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    upgrade = db_commands.add_parser(
        "upgrade", help="apply the schema migrations", parents=[o["common"], o["store"]]
    )
    upgrade.set_defaults(run="proxy.cli.store:db_upgrade")

    _cassette_commands(command)

    command(
        "ca",
        "proxy.cli.env:ca_command",
        "print the path of rrproxy's CA certificate (created on first use)",
        "common",
    )
    env = command(
        "env",
        "proxy.cli.env:env_command",
        'print shell lines that route HTTP clients through rrproxy: eval "$(rrproxy env)"',
        "common",
        "listen",
    )
    env.add_argument("--unset", action="store_true", help="print the lines that undo it")
    return parser


def _cassette_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    shared = ("common", "store", "dir")
    module = "proxy.cli.cassettes"
    ls = command(
        "ls", f"{module}:ls_command", "list the cassettes in the store", *shared, aliases=["list"]
    )
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument(
        "--older-than",
        metavar="AGE",
        type=_duration,
        help="only cassettes with recordings older than AGE (30d, 12h, 90m), and how many",
    )

    stats = command(
        "stats",
        "proxy.cli.stats:stats_command",
        "tokens and money a replay of each cassette saves ([prices] in the config)",
        *shared,
    )
    stats.add_argument("name", nargs="?", type=_cassette_name, metavar="CASSETTE")
    stats.add_argument("--json", action="store_true", help="print JSON")

    rerecord = command(
        "rerecord",
        "proxy.cli.rerecord:rerecord_command",
        "send a cassette's requests again, replace the answers, report how their shape changed",
        *shared,
    )
    rerecord.add_argument("cassette", type=_cassette_name, metavar="CASSETTE")
    rerecord.add_argument(
        "--interaction",
        type=int,
        action="append",
        metavar="N",
        help="only interaction #N (as rrproxy show numbers them); may be repeated",
    )
    rerecord.add_argument("--match", metavar="URL-GLOB", help="only interactions whose URL matches")
    rerecord.add_argument(
        "-H",
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="a header to send in place of a redacted one (overrides [rerecord] headers)",
    )
    rerecord.add_argument(
        "--dry-run",
        action="store_true",
        help="send and compare, write nothing (exit status 3 when a shape changed)",
    )

    show = command(
        "show", f"{module}:show_command", "show a cassette's interactions and events", *shared
    )
    show.add_argument("name", type=_cassette_name, metavar="NAME")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument("--no-events", action="store_true", help="interactions only")
    show.add_argument(
        "--full", action="store_true", help="every event whole (long ones are cut by default)"
    )
    show.add_argument(
        "--pieces",
        action="store_true",
        help="the time of each piece an event arrived in (with --json: always there)",
    )

    export = command(
        "export",
        f"{module}:export_command",
        "write a cassette to a file (NAME.cassette.jsonl), refusing secrets",
        *shared,
    )
    export.add_argument("name", type=_cassette_name, metavar="NAME")
    export.add_argument(
        "-o", "--output", metavar="FILE", help="default NAME.cassette.jsonl; '-' for stdout"
    )
    export.add_argument(
        "--allow-secrets", action="store_true", help="write even if key-like strings are found"
    )
    export.add_argument(
        "--to",
        dest="format",
        choices=("rrproxy", "har"),
        default="rrproxy",
        help="file format: rrproxy (default) or har (HAR 1.2; default file NAME.har)",
    )

    imp = command(
        "import", f"{module}:import_command", "load a cassette file into the store", *shared
    )
    imp.add_argument("file", type=Path, metavar="FILE", help="a file (vcrpy: or a directory)")
    imp.add_argument(
        "--from",
        dest="source",
        choices=("rrproxy", "vcrpy", "har"),
        default="rrproxy",
        help="file format: rrproxy (default), vcrpy (YAML or JSON cassettes), har (HAR 1.2)",
    )
    imp.add_argument(
        "--as", dest="as_name", type=_cassette_name, metavar="NAME", help="store it as NAME"
    )
    imp.add_argument(
        "--replace", action="store_true", help="replace a cassette of that name with other content"
    )

    rm = command(
        "rm", f"{module}:rm_command", "delete cassettes from the store", *shared, aliases=["remove"]
    )
    rm.add_argument("names", type=_cassette_name, nargs="+", metavar="NAME")

    copy = command(
        "copy",
        "proxy.cli.copy:copy_command",
        "copy cassettes between stores and cassette directories (same content: unchanged)",
        "common",
    )
    copy.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="SRC",
        help="a SQLite path, a database URL, or a cassette directory",
    )
    copy.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="DST",
        help="the same kinds (a directory: an existing one, or a path ending in /)",
    )
    copy.add_argument(
        "names", type=_cassette_name, nargs="*", metavar="CASSETTE", help="default: all"
    )
    copy.add_argument(
        "--replace", action="store_true", help="replace cassettes of those names with other content"
    )
    copy.add_argument(
        "--allow-secrets", action="store_true", help="copy even if key-like strings are found"
    )


def _load(args: argparse.Namespace) -> Settings:
    names: tuple[str, ...] = ("host", "port", "upstream", "mode", "cassette", "db", "pace")
    names += (
        "strict",
        "verbose",
        "cassette_dir",
        "allow_remote",
        "read_only",
        "workers",
        "untimed_pace",
    )
    flags: dict[str, Any] = {n: getattr(args, n, None) for n in names}
    return load_settings(args.config, flags=flags)


def _runner(target: str) -> Run:
    module, _, function = target.partition(":")
    return cast(Run, getattr(importlib.import_module(module), function))


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
    if not verbose:
        for noisy in ("aiohttp.access", "alembic", "sqlalchemy"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _stdout_gone() -> int:
    """The reader of standard output went away: stop quietly, as `cat` or `git log` do.
    Python's recipe (library docs, signal, "Note on SIGPIPE"): point stdout at /dev/null so
    that the flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _load(args)
        _configure_logging(settings.verbose)
        status = _runner(args.run)(settings, args)
        sys.stdout.flush()  # a reader gone shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        return _stdout_gone()
    except ConfigError as exc:
        print(f"rrproxy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RrproxyError as exc:
        print(f"rrproxy: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_status", EXIT_ERROR))
