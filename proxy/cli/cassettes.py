"""`rrproxy ls | show | export | import | rm`: managing cassettes from the command line.

Named as git and docker name theirs. Tables for people by default, `--json` for scripts
(both in `output.py`). With a cassette directory configured, each command first loads the
files that changed (as `serve` does at start); `import` and `rm` then also write or remove
the file there.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import IO

from proxy.cassettes import transfer as cassettes
from proxy.cassettes.file_format import file_name
from proxy.cli import interchange, output
from proxy.cli.event_view import shown_events
from proxy.cli.progress import Progress
from proxy.cli.store import Store, run
from proxy.config import Settings, display_db
from proxy.core.messages import Message
from proxy.core.records import Event
from proxy.errors import CassetteNotFound, ConfigError, SecretsFound
from proxy.store import maintenance, queries
from proxy.store.queries import StoredInteraction

# -- ls ---------------------------------------------------------------------------------------


def ls_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.older_than is not None:
        from proxy.cli.stats import ls_older_than

        return ls_older_than(settings, args)
    infos = run(settings, lambda s: queries.summaries(s.reader))
    if args.json:
        output.print_json({"cassettes": [output.cassette_json(i) for i in infos]})
    elif not infos:
        print(f"no cassettes in the store {display_db(settings.db)}")
    else:
        print(output.cassettes_table(infos))
    return 0


# -- show -------------------------------------------------------------------------------------


def show_command(settings: Settings, args: argparse.Namespace) -> int:
    async def work(store: Store) -> list[tuple[StoredInteraction, list[Event], list[Message]]]:
        found = await queries.interactions(store.reader, args.name, required=True)
        if args.no_events:
            return [(i, [], []) for i in found]
        return [
            (
                i,
                await queries.events(store.reader, i.id),
                await queries.messages(store.reader, i.id) if i.response.status == 101 else [],
            )
            for i in found
        ]

    shown = run(settings, work)
    if args.json:
        output.print_json(
            {
                "name": args.name,
                "interactions": [
                    output.interaction_json(i, evs, args.no_events, msgs) for i, evs, msgs in shown
                ],
            }
        )
        return 0
    n_events = sum(i.events for i, _, _ in shown)
    size = sum(i.size for i, _, _ in shown)
    print(
        f"cassette {args.name!r}: {len(shown)} interaction(s), {n_events} events, "
        + output.size(size)
    )
    for info, evs, msgs in shown:
        print()
        print(output.interaction_text(info))
        for text in shown_events(info.response.headers, evs, full=args.full, pieces=args.pieces):
            print(text)
        for message in msgs:
            print(output.message_text(message))
    return 0


# -- export -----------------------------------------------------------------------------------


def export_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.format == "har":
        return interchange.export_command(settings, args)
    name: str = args.name
    target = args.output or file_name(name)

    shown = Progress(f"exporting {name}")

    async def write(store: Store, out: IO[bytes]) -> int:
        return await cassettes.export(
            store.reader,
            name,
            out,
            allow_secrets=args.allow_secrets,
            redactor=settings.redact,
            progress=shown.update,
        )

    try:
        count = output.write_out(target, lambda out: run(settings, lambda s: write(s, out)))
    finally:
        shown.close()
    if target != "-":
        print(f"exported cassette {name!r} ({count} interaction(s)) to {target}", file=sys.stderr)
    return 0


# -- import -----------------------------------------------------------------------------------


def import_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.source != "rrproxy":
        return interchange.import_command(settings, args)
    path: Path = args.file
    if not path.is_file():
        raise ConfigError(f"{path} is not a file")

    async def work(store: Store) -> cassettes.Imported:
        if store.dir is not None:  # the file the directory would get: check it first
            found = await asyncio.to_thread(cassettes.find_secrets, path, redactor=settings.redact)
            if found:
                raise SecretsFound(args.as_name or path.name, found)
        result = await cassettes.import_file(
            store.writer,
            path,
            name=args.as_name,
            replace=args.replace,
            redactor=settings.redact,
            progress=shown.update,
        )
        if store.dir is not None and result.status is not cassettes.ImportStatus.UNCHANGED:
            await store.dir.write(result.name)
        return result

    shown = Progress(f"importing {path.name}")
    try:
        result = run(settings, work, create=True)
    finally:
        shown.close()
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


def rm_command(settings: Settings, args: argparse.Namespace) -> int:
    names: list[str] = list(dict.fromkeys(args.names))

    async def work(store: Store) -> list[str]:
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

    for name in run(settings, work):
        print(f"deleted cassette {name!r}")
    return 0
