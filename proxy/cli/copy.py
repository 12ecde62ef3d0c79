"""`rrproxy copy --from SRC --to DST [CASSETTE...]`: cassettes from one store to another.

SRC and DST are each a SQLite path, a database URL, or a cassette directory (an existing
directory, or a path ending in `/`: its `NAME.cassette.jsonl` files). The everyday flow:
record locally on SQLite, `copy` to the team's database, replay from it in CI
(`serve --read-only`).

Idempotent by content: a cassette whose content is already at DST is left as it is
("unchanged"); one of the same name with other content is a conflict, reported and left
alone unless `--replace`. Cassettes leaving a store go through the export's secret scan
(`--allow-secrets` to pass key-like strings that are not secrets); going into a store they
are redacted as an import is. Exit status 1 when any cassette was not copied.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.cassettes import file_format as cassette_file
from proxy.cassettes import transfer
from proxy.cassettes.file_format import Recorded
from proxy.cassettes.files import open_regular
from proxy.config import Settings, database_url, display_db
from proxy.errors import CassetteExists, ConfigError, SecretsFound
from proxy.files import write_atomically
from proxy.store import migrate, queries
from proxy.store.engine import open_store


@dataclass(frozen=True)
class Place:
    """One end of a copy: a cassette directory, or a store (`url`)."""

    shown: str
    directory: Path | None = None
    url: str | None = None


def place(value: str) -> Place:
    path = Path(value).expanduser()
    if "://" not in value and (path.is_dir() or value.endswith("/")):
        return Place(str(path) + "/", directory=path)
    return Place(display_db(value), url=database_url(value))


def _check(source: Place, target: Place) -> None:
    """Before anything is opened: the source is there; a destination directory is made."""
    if source.directory is not None and not source.directory.is_dir():
        raise ConfigError(f"no cassette directory at {source.shown}")
    if source.url is not None and source.url.startswith("sqlite"):
        database = source.url.split(":///", 1)[1]
        if not Path(database).is_file():
            raise ConfigError(f"no store at {source.shown}; check --from")
    if target.directory is not None:
        target.directory.mkdir(parents=True, exist_ok=True)


@asynccontextmanager
async def _opened(end: Place, *, writing: bool) -> AsyncIterator[AsyncEngine | None]:
    """The store's engine (None for a directory). A source is read as it is (its schema
    must be this rrproxy's); a destination is created or migrated like any store."""
    if end.url is None:
        yield None
        return
    if not writing:
        async with open_store(end.url, writer=False, read_only=True) as engine:
            await migrate.require_head(engine)
            yield engine
        return
    async with open_store(end.url, writer=True, migrate=True) as engine:
        yield engine


async def _names(source: Place, engine: AsyncEngine | None) -> list[str]:
    if engine is not None:
        return [c.name for c in await queries.summaries(engine)]
    assert source.directory is not None
    suffix = cassette_file.SUFFIX
    directory = source.directory
    files = await asyncio.to_thread(lambda: list(directory.glob(f"*{suffix}")))
    return sorted(p.name[: -len(suffix)] for p in files)


async def _read(
    source: Place, engine: AsyncEngine | None, name: str, *, allow: bool
) -> list[Recorded]:
    if engine is not None:
        await queries.require(engine, name)
        return await transfer.records(engine, name, allow_secrets=allow)
    assert source.directory is not None
    path = source.directory / cassette_file.file_name(name)

    def load() -> list[Recorded]:
        if not path.is_file():
            raise ConfigError(f"no cassette file {path}")
        with open_regular(path, max_bytes=cassette_file.MAX_FILE_BYTES) as f:
            _, recs = cassette_file.loads(f.read(), source=str(path))
        return recs

    return await asyncio.to_thread(load)


async def _write(
    target: Place, engine: AsyncEngine | None, name: str, recs: list[Recorded], *, replace: bool
) -> str:
    """What happened to the cassette at the destination: copied, replaced, unchanged."""
    if engine is not None:
        [result] = await transfer.import_records(engine, [(name, recs)], replace=replace)
        return {
            transfer.ImportStatus.CREATED: "copied",
            transfer.ImportStatus.REPLACED: "replaced",
            transfer.ImportStatus.UNCHANGED: "unchanged",
        }[result.status]
    assert target.directory is not None
    return await asyncio.to_thread(
        _write_file, target.directory / cassette_file.file_name(name), name, recs, replace
    )


def _write_file(path: Path, name: str, recs: list[Recorded], replace: bool) -> str:
    data = cassette_file.dump(name, recs)
    if not path.is_file():
        write_atomically(path, data)
        return "copied"
    if path.read_bytes() == data:
        return "unchanged"
    if not replace:
        raise CassetteExists(
            f"{path} is already there with other content; pass --replace to replace it"
        )
    write_atomically(path, data)
    return "replaced"


async def copy(
    source: Place, target: Place, names: Sequence[str], *, replace: bool, allow_secrets: bool
) -> int:
    """Copy, printing a line per cassette; how many were not copied."""
    failed = 0
    async with (
        _opened(source, writing=False) as src,
        _opened(target, writing=True) as dst,
    ):
        for name in names or await _names(source, src):
            try:
                recs = await _read(source, src, name, allow=allow_secrets)
                what = await _write(target, dst, name, recs, replace=replace)
            except (CassetteExists, SecretsFound) as exc:
                failed += 1
                print(f"not copied {name!r}: {exc}")
                continue
            print(f"{what} {name!r} ({len(recs)} interaction(s)) {source.shown} -> {target.shown}")
    return failed


def copy_command(_settings: Settings, args: argparse.Namespace) -> int:
    source, target = place(args.source), place(args.target)
    if source == target:
        raise ConfigError("--from and --to name the same place")
    _check(source, target)
    failed = asyncio.run(
        copy(source, target, args.names, replace=args.replace, allow_secrets=args.allow_secrets)
    )
    return 1 if failed else 0
