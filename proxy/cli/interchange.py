"""`rrproxy import --from vcrpy|har` and `rrproxy export --to har`: other tools' recordings
in, HAR out. The conversions are `proxy.cassettes.vcrpy` and `proxy.cassettes.har`; the
store transaction and the redaction are `proxy.cassettes.transfer`'s."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from proxy.cassettes import har, vcrpy
from proxy.cassettes import transfer as cassettes
from proxy.cassettes.files import open_regular
from proxy.cli import output
from proxy.cli.store import Store, run
from proxy.config import Settings
from proxy.core.records import check_cassette_name
from proxy.errors import ConfigError


def import_command(settings: Settings, args: argparse.Namespace) -> int:
    path: Path = args.file
    skipped: list[str] = []
    if args.source == "vcrpy":
        files = vcrpy.cassette_files(path)
        if args.as_name and len(files) > 1:
            raise ConfigError(f"--as names one cassette; {path} holds {len(files)} cassettes")
        loaded = [(args.as_name or name, vcrpy.read_file(file)) for name, file in files]
    else:
        if not path.is_file():
            raise ConfigError(f"{path} is not a file")
        with open_regular(path, max_bytes=har.MAX_FILE_BYTES) as f:
            data = f.read()
        recs, skipped = har.parse(data, source=str(path))
        loaded = [(args.as_name or _name_of(path), recs)]
    untimed = sum(rec.untimed for _, recs in loaded for rec in recs)

    async def work(store: Store) -> list[cassettes.Imported]:
        results = await cassettes.import_records(
            store.writer,
            loaded,
            replace=args.replace,
            redactor=settings.redact,
            refuse_secrets=store.dir is not None,
        )
        for result in results:
            if store.dir is not None and result.status is not cassettes.ImportStatus.UNCHANGED:
                await store.dir.write(result.name)
        return results

    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    results = run(settings, work, create=True)
    for result in results:
        print(_summary(result, args.source))
    if untimed:
        print(
            f"{untimed} interaction(s) without event timing: each body is one event, "
            "replayed at untimed_pace (default instant)"
        )
    if skipped:
        print(f"{len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} skipped (see above)")
    return 0


def _name_of(path: Path) -> str:
    name = path.name.removesuffix(".har") if path.name.endswith(".har") else path.stem
    try:
        return check_cassette_name(name)
    except ValueError as exc:
        raise ConfigError(f"{exc}; name the cassette with --as NAME") from None


def _summary(result: cassettes.Imported, source: str) -> str:
    what = {
        cassettes.ImportStatus.CREATED: "imported",
        cassettes.ImportStatus.REPLACED: "replaced",
        cassettes.ImportStatus.UNCHANGED: "unchanged (already in the store):",
    }[result.status]
    return (
        f"{what} cassette {result.name!r} from {source}: {result.interactions} interaction(s), "
        f"{result.events} events, {result.redacted} value(s) redacted"
    )


def export_command(settings: Settings, args: argparse.Namespace) -> int:
    name: str = args.name
    target = args.output or f"{name}.har"

    async def work(store: Store) -> bytes:
        recs = await cassettes.records(store.reader, name, allow_secrets=args.allow_secrets)
        doc = har.to_har(name, recs)
        return (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode("utf-8")

    data: bytes = run(settings, work)
    output.write_out(target, lambda out: out.write(data))
    if target == "-":
        return 0
    count = len(json.loads(data)["log"]["entries"])
    print(f"exported cassette {name!r} ({count} interaction(s)) to {target} (HAR)", file=sys.stderr)
    return 0
