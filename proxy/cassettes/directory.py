"""A cassette directory as the source of truth (`--cassette-dir DIR`).

The files `DIR/NAME.cassette.jsonl` are the team's cassettes, kept in git. At start every
file whose content changed since this store last loaded or wrote it is imported (replacing
that cassette); a cassette whose file was removed is removed from the store, so deleting a
file is how a cassette is recorded afresh. A file that cannot be read, stored or replayed is
reported by name with the reason, in one log line, and skipped; the others load. Only
regular files are read (a symbolic link to one too), each checked on the open file before a
byte is read: a FIFO or a device never holds up the start.

Whenever a recording finishes (a `Recorder` listener), it is appended to its cassette's
file (see `appends`: the file stays byte for byte what `rrproxy export` writes, and a
recording costs the same whatever the file holds) so `git status` shows it at once. The
whole file is written atomically (`files.atomic_write`: a temporary file in DIR, flushed to
disk, renamed over the old one, the directory flushed) only when an append cannot do, such
as the first write of a cassette after start. The content hashes of the files loaded and
written are kept in the `cassette_files` table.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.cassettes import appends
from proxy.cassettes import transfer as cassettes
from proxy.cassettes.appends import Tail
from proxy.cassettes.file_format import SUFFIX, file_name
from proxy.cassettes.transfer import Imported
from proxy.core.records import Recording, check_cassette_name
from proxy.core.redact import Redactor
from proxy.errors import CassetteFileError, ConfigError, FileChanged, SecretsFound
from proxy.files import atomic_write
from proxy.store import maintenance

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # file name -> why


def _file_hashes(path: Path) -> tuple[str, str]:
    return appends.file_hashes(path)


def _shown(file_name: str) -> str:
    """A file name as it can be printed: bytes that are not UTF-8 as escapes (\\xe9)."""
    return os.fsencode(file_name).decode("utf-8", "backslashreplace")


class CassetteDir:
    def __init__(
        self,
        path: Path,
        writer: AsyncEngine,
        reader: AsyncEngine,
        redactor: Redactor | None = None,
    ):
        self.path = path
        self._writer = writer
        self._reader = reader
        self._redactor = redactor or Redactor()
        self._dirty: dict[str, int] = {}  # cassette -> the oldest id recorded since written
        self._tails: dict[str, Tail] = {}  # files this process wrote, to append to
        self.rewritten = 0  # whole files written (the rest were appends)
        self._wakeup = asyncio.Event()
        self._closing = False
        self.written = 0

    def file(self, name: str) -> Path:
        return self.path / file_name(name)

    # -- at start ---------------------------------------------------------------------------

    async def load(self) -> LoadReport:
        """Import each changed file; drop cassettes whose file is gone."""
        return await self.load_files()  # which checks the directory first

    async def prepare(self) -> list[Path]:
        """The cassette files (`ConfigError` if the directory cannot be one)."""
        try:
            return await asyncio.to_thread(self._files)
        except OSError as exc:
            raise ConfigError(
                f"cassette_dir = {str(self.path)!r}: cannot use it as a directory "
                f"({exc.strerror or exc})"
            ) from None

    async def load_files(self) -> LoadReport:
        """Import each changed file; drop cassettes whose file is gone (see `load`)."""
        report = LoadReport()
        files = await self.prepare()
        async with self._writer.connect() as conn:
            known = await maintenance.file_hashes(conn)
        present: set[str] = set()
        for path in files:
            name = path.name.removesuffix(SUFFIX)
            try:
                check_cassette_name(name)
            except ValueError as exc:
                report.failed[path.name] = str(exc)
                continue
            present.add(name)
            try:
                await self._load_file(path, name, known.get(name), report)
            except CassetteFileError as exc:  # the log line names the file already
                where = f"line {exc.line}: " if exc.line else ""
                report.failed[path.name] = where + exc.reason
            except OSError as exc:
                report.failed[path.name] = exc.strerror or str(exc)
        for name in sorted(known.keys() - present):
            async with self._writer.begin() as conn:
                await maintenance.delete_cassette(conn, name)
            report.removed.append(name)
        self._log(report)
        return report

    def _files(self) -> list[Path]:
        """The cassette files in the directory; none while it does not exist, as long as it
        can be made: it is made when a first recording is written, so that a run that records
        nothing (a replay in CI) leaves no empty directory behind."""
        if self.path.exists():
            if not self.path.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            return sorted(self.path.glob("*" + SUFFIX))
        parent = next(p for p in self.path.absolute().parents if p.exists())
        if not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return []

    async def _load_file(
        self, path: Path, name: str, known: str | None, report: LoadReport
    ) -> None:
        sha, plain = await asyncio.to_thread(_file_hashes, path)
        if known in (sha, plain):
            report.unchanged.append(name)
            return

        async def remember(conn: AsyncConnection, _result: Imported) -> None:
            await maintenance.set_file_hash(conn, name, sha)

        imported = await cassettes.import_file(
            self._writer, path, name=name, replace=True, then=remember, redactor=self._redactor
        )
        if imported.status is cassettes.ImportStatus.UNCHANGED:
            report.unchanged.append(name)
        else:
            report.loaded.append(name)

    def _log(self, report: LoadReport) -> None:
        for file, why in report.failed.items():
            log.error("cassette file %s skipped: %s", _shown(str(self.path / file)), why)
        for name in report.removed:
            log.warning(
                "cassette %r removed from the store: its file is gone from %s", name, self.path
            )
        changed = report.loaded or report.removed or report.failed
        log.log(
            logging.INFO if changed else logging.DEBUG,
            "cassette directory %s: %d loaded, %d unchanged, %d removed, %d skipped",
            self.path,
            len(report.loaded),
            len(report.unchanged),
            len(report.removed),
            len(report.failed),
        )

    # -- while serving ----------------------------------------------------------------------

    def recorded(self, rec: Recording) -> None:
        """Recorder listener: the recording is committed; its cassette's file is out of date."""
        oldest = rec.interaction_id or 0
        self._dirty[rec.cassette] = min(self._dirty.get(rec.cassette, oldest), oldest)
        self._wakeup.set()

    async def run(self) -> None:
        """Rewrite the files of cassettes that changed, until `close` (then the last ones)."""
        while True:
            if not self._dirty:
                if self._closing:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            name = min(self._dirty)
            oldest = self._dirty.pop(name)
            try:
                await self.write(name, oldest)
            except (SecretsFound, FileChanged) as exc:
                log.error("cassette file %s not written: %s", self.file(name), exc)
            except Exception as exc:
                log.error(
                    "cannot write cassette file %s (%s: %s); it is tried again after the "
                    "next recording",
                    self.file(name),
                    type(exc).__name__,
                    exc,
                )

    async def write(self, name: str, oldest: int | None = None) -> None:
        """Bring the cassette's file up to date with the store (finished interactions
        only): append what was recorded since this process wrote it (`oldest`: the oldest
        id recorded since, None if unknown), else write it whole, unless someone changed
        the file since this store last loaded or wrote it (a `git pull`, an edit): that
        would be lost."""
        path = self.file(name)
        tail = self._tails.pop(name, None)
        if (
            tail is not None
            and oldest is not None
            and oldest > tail.last_id
            and await asyncio.to_thread(tail.unchanged, path)
        ):
            async with self._reader.connect() as conn:
                appended = await appends.append(conn, name, path, tail, self._redactor)
            if appended is not None:
                await self._written(name, path, appended, "appended to")
                return
        if path.exists():
            async with self._reader.connect() as conn:
                known = (await maintenance.file_hashes(conn)).get(name)
            if known not in await asyncio.to_thread(_file_hashes, path):
                raise FileChanged(
                    "it changed on disk since rrproxy loaded it; the new recordings stay in "
                    "the store only, until a restart loads the file in their place (delete "
                    "the file instead to have it written anew)"
                )
        await asyncio.to_thread(self.path.mkdir, parents=True, exist_ok=True)
        with atomic_write(path) as f:
            async with self._reader.connect() as conn:
                _, tail = await appends.write_all(conn, name, f, self._redactor)
        tail.stat = await asyncio.to_thread(appends.stat_of, path)
        self.rewritten += 1
        await self._written(name, path, tail, "written to")

    async def _written(self, name: str, path: Path, tail: Tail, how: str) -> None:
        async with self._writer.begin() as conn:
            await maintenance.set_file_hash(conn, name, tail.fingerprint)
        self._tails[name] = tail
        self.written += 1
        log.info("cassette %r %s %s", name, how, path)

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
