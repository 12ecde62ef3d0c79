"""`rrproxy ls | show | export | import | rm`: managing cassettes from the command line.

Named as git and docker name theirs. Tables for people by default, `--json` for scripts.
With a cassette directory configured, each command first loads the files that changed
(as `serve` does at start); `import` and `rm` then also write or remove the file there.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.cassettes import transfer as cassettes
from proxy.cassettes.directory import CassetteDir
from proxy.cassettes.file_format import SUFFIX, file_name
from proxy.cli import interchange
from proxy.config import Settings
from proxy.core.records import Event, check_cassette_name
from proxy.errors import CassetteNotFound, ConfigError, SecretsFound
from proxy.files import atomic_write
from proxy.store import maintenance, migrate, queries
from proxy.store.engine import create_engine
from proxy.store.queries import CassetteInfo, StoredInteraction

T = TypeVar("T")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    parser.add_argument("--db", metavar="URL_OR_PATH", help="store: SQLite file or SQLAlchemy URL")
    parser.add_argument(
        "--cassette-dir", metavar="DIR", help="cassette files directory (loaded first)"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_const", const=True, default=None, help="log more"
    )


def _name(value: str) -> str:
    try:
        return check_cassette_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_commands(commands: Any) -> None:
    """Register the cassette commands on the `rrproxy` subparsers."""
    ls = commands.add_parser("ls", aliases=["list"], help="list the cassettes in the store")
    _common(ls)
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(run=_ls)

    show = commands.add_parser("show", help="show a cassette's interactions and their events")
    _common(show)
    show.add_argument("name", type=_name, metavar="NAME")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument("--no-events", action="store_true", help="interactions only")
    show.set_defaults(run=_show)

    export = commands.add_parser(
        "export", help="write a cassette to a file (NAME.cassette.jsonl), refusing secrets"
    )
    _common(export)
    export.add_argument("name", type=_name, metavar="NAME")
    export.add_argument(
        "-o", "--output", metavar="FILE", help=f"default NAME{SUFFIX}; '-' for standard output"
    )
    export.add_argument(
        "--allow-secrets", action="store_true", help="write even if key-like strings are found"
    )
    export.add_argument(
        "--to",
        dest="format",
        choices=interchange.EXPORT_FORMATS,
        default="rrproxy",
        help="file format: rrproxy (default) or har (HAR 1.2, default file NAME.har)",
    )
    export.set_defaults(run=_export)

    imp = commands.add_parser("import", help="load a cassette file into the store")
    _common(imp)
    imp.add_argument("file", type=Path, metavar="FILE", help="a file (vcrpy: or a directory)")
    imp.add_argument(
        "--from",
        dest="source",
        choices=interchange.IMPORT_FORMATS,
        default="rrproxy",
        help="file format: rrproxy (default), vcrpy (YAML or JSON cassettes), har (HAR 1.2)",
    )
    imp.add_argument("--as", dest="as_name", type=_name, metavar="NAME", help="store it as NAME")
    imp.add_argument(
        "--replace", action="store_true", help="replace a cassette of that name with other content"
    )
    imp.set_defaults(run=_import)

    rm = commands.add_parser("rm", aliases=["remove"], help="delete cassettes from the store")
    _common(rm)
    rm.add_argument("names", type=_name, nargs="+", metavar="NAME")
    rm.set_defaults(run=_rm)


# -- plumbing ---------------------------------------------------------------------------------


@dataclass
class _Store:
    writer: AsyncEngine
    reader: AsyncEngine
    dir: CassetteDir | None


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[_Store]:
    writer = create_engine(settings.db_url, writer=True)
    reader = create_engine(settings.db_url)
    try:
        await migrate.upgrade(writer)
        sync = None
        if settings.cassette_dir is not None:
            sync = CassetteDir(Path(settings.cassette_dir), writer, reader, settings.redact)
            await sync.load()
        yield _Store(writer, reader, sync)
    finally:
        await reader.dispose()
        await writer.dispose()


def _run(settings: Settings, work: Callable[[_Store], Awaitable[T]]) -> T:
    async def main() -> T:
        async with _store(settings) as store:
            return await work(store)

    return asyncio.run(main())


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _time(t: datetime | None) -> str | None:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError  # unreachable


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


# -- ls ---------------------------------------------------------------------------------------


def _ls(settings: Settings, args: argparse.Namespace) -> int:
    infos = _run(settings, lambda s: queries.summaries(s.reader))
    if args.json:
        _print_json({"cassettes": [_info_json(i) for i in infos]})
    elif not infos:
        print(f"no cassettes in the store {settings.db}")
    else:
        print(
            _table(
                ("NAME", "INTERACTIONS", "EVENTS", "SIZE", "LAST RECORDED", "INCOMPLETE"),
                [
                    (
                        i.name,
                        str(i.interactions),
                        str(i.events),
                        _size(i.size),
                        _time(i.last_recorded) or "-",
                        str(i.incomplete),
                    )
                    for i in infos
                ],
            )
        )
    return 0


def _info_json(i: CassetteInfo) -> dict[str, Any]:
    return {
        "name": i.name,
        "interactions": i.interactions,
        "events": i.events,
        "size": i.size,
        "last_recorded": _time(i.last_recorded),
        "incomplete": i.incomplete,
    }


# -- show -------------------------------------------------------------------------------------


def _show(settings: Settings, args: argparse.Namespace) -> int:
    async def work(store: _Store) -> list[tuple[StoredInteraction, list[Event]]]:
        found = await queries.interactions(store.reader, args.name, required=True)
        if args.no_events:
            return [(i, []) for i in found]
        return [(i, await queries.events(store.reader, i.id)) for i in found]

    shown = _run(settings, work)
    if args.json:
        _print_json(
            {
                "name": args.name,
                "interactions": [_interaction_json(i, evs, args.no_events) for i, evs in shown],
            }
        )
        return 0
    n_events = sum(i.events for i, _ in shown)
    size = sum(i.size for i, _ in shown)
    print(f"cassette {args.name!r}: {len(shown)} interaction(s), {n_events} events, {_size(size)}")
    for info, evs in shown:
        print()
        print(_interaction_text(info))
        for event in evs:
            print(_event_text(event))
    return 0


def _interaction_json(i: StoredInteraction, evs: list[Event], no_events: bool) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "number": i.number,
        "method": i.method,
        "url": i.url,
        "status": i.status,
        "events": i.events,
        "size": i.size,
        "ttfb_ms": i.ttfb_ms,
        "duration_ms": i.duration_ms,
        "complete": i.complete,
        "outcome": i.outcome.value,
        "error": i.error,
        "recorded_at": _time(i.recorded_at),
    }
    if not no_events:
        obj["body"] = [_event_json(e) for e in evs]
    return obj


def _event_json(event: Event) -> dict[str, Any]:
    try:
        return {"t": event.t_ms, "data": event.data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"t": event.t_ms, "b64": base64.b64encode(event.data).decode("ascii")}


def _interaction_text(i: StoredInteraction) -> str:
    took = f"took {i.duration_ms:.0f} ms" if i.duration_ms is not None else "no end"
    state = "complete" if i.complete else i.outcome.value.replace("_", " ")
    lines = [
        f"#{i.number}  {i.method} {_printable(i.url)}",
        f"    {i.status}, {i.events} events, {_size(i.size)}, first byte {i.ttfb_ms:.0f} ms, "
        f"{took}, {state}; recorded {_time(i.recorded_at)}",
    ]
    if i.error:
        lines.append(f"    {_printable(i.error)}")
    return "\n".join(lines)


def _printable(text: str) -> str:
    """Text safe for a terminal: control characters shown as escapes, never obeyed."""
    return "".join(c if c.isprintable() or c == "\t" else f"\\x{ord(c):02x}" for c in text)


def _event_text(event: Event) -> str:
    stamp = f"    {event.t_ms:>9.1f} ms  "
    pad = " " * len(stamp)
    try:
        text = event.data.decode("utf-8")
    except UnicodeDecodeError:
        return f"{stamp}({len(event.data)} bytes, not UTF-8) {event.data[:48]!r}"
    lines = text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")
    return "\n".join((stamp if i == 0 else pad) + _printable(line) for i, line in enumerate(lines))


# -- export -----------------------------------------------------------------------------------


def _export(settings: Settings, args: argparse.Namespace) -> int:
    if args.format == "har":
        return interchange.export_command(settings, args, _run)
    name: str = args.name
    output = args.output or file_name(name)

    async def write(store: _Store, out: IO[bytes]) -> int:
        return await cassettes.export(store.reader, name, out, allow_secrets=args.allow_secrets)

    if output == "-":
        with tempfile.TemporaryFile() as spool:  # nothing reaches stdout unless all is well
            _run(settings, lambda s: write(s, spool))
            spool.seek(0)
            shutil.copyfileobj(spool, sys.stdout.buffer)
            sys.stdout.flush()
        return 0
    path = Path(output)
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {path}: the directory {path.parent} does not exist")
    with atomic_write(path) as f:
        count = _run(settings, lambda s: write(s, f))
    print(f"exported cassette {name!r} ({count} interaction(s)) to {path}", file=sys.stderr)
    return 0


# -- import -----------------------------------------------------------------------------------


def _import(settings: Settings, args: argparse.Namespace) -> int:
    if args.source != "rrproxy":
        return interchange.import_command(settings, args, _run)
    path: Path = args.file
    if not path.is_file():
        raise ConfigError(f"{path} is not a file")

    async def work(store: _Store) -> cassettes.Imported:
        if store.dir is not None:  # the file the directory would get: check it first
            found = await asyncio.to_thread(cassettes.find_secrets, path, redactor=settings.redact)
            if found:
                raise SecretsFound(args.as_name or path.name, found)
        result = await cassettes.import_file(
            store.writer, path, name=args.as_name, replace=args.replace, redactor=settings.redact
        )
        if store.dir is not None and result.status is not cassettes.ImportStatus.UNCHANGED:
            await store.dir.write(result.name)
        return result

    result = _run(settings, work)
    what = {
        cassettes.ImportStatus.CREATED: "imported",
        cassettes.ImportStatus.REPLACED: "replaced",
        cassettes.ImportStatus.UNCHANGED: "unchanged (already in the store):",
    }[result.status]
    print(
        f"{what} cassette {result.name!r}: {result.interactions} interaction(s), "
        f"{result.events} events"
    )
    return 0


# -- rm ---------------------------------------------------------------------------------------


def _rm(settings: Settings, args: argparse.Namespace) -> int:
    names: list[str] = list(dict.fromkeys(args.names))

    async def work(store: _Store) -> list[str]:
        missing: list[str] = []
        async with store.writer.begin() as conn:  # all or none
            for name in names:
                if not await maintenance.delete_cassette(conn, name):
                    missing.append(name)
            if missing:
                raise CassetteNotFound(
                    "no cassette named " + ", ".join(map(repr, missing)) + " in the store; "
                    "nothing was deleted"
                )
        if store.dir is not None:
            for name in names:
                store.dir.file(name).unlink(missing_ok=True)
        return names

    for name in _run(settings, work):
        print(f"deleted cassette {name!r}")
    return 0
