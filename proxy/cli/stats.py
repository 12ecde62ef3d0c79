"""`rrproxy stats [CASSETTE]`: what a replay of each cassette replays and saves (its
recordings' tokens, and their price from `[prices]`); `rrproxy ls --older-than AGE`: the
cassettes holding recordings older than AGE."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from proxy.cli import output
from proxy.cli.store import Store, run
from proxy.config import Settings
from proxy.core.prices import Tally
from proxy.store import ledger, queries


def stats_command(settings: Settings, args: argparse.Namespace) -> int:
    name: str | None = args.name

    async def read(store: Store) -> list[ledger.LedgerRow]:
        if name is not None:
            await queries.require(store.reader, name)
        return await ledger.cassette_usage(store.reader, name)

    rows = run(settings, read)
    tallies: dict[str, Tally] = {}
    total = Tally()
    for row in rows:
        tallies.setdefault(row.cassette, Tally()).add(row.usage, settings.prices)
    for tally in tallies.values():
        total.merge(tally)
    if args.json:
        output.print_json(
            {
                "cassettes": [{"name": n, **t.json()} for n, t in tallies.items()],
                "total": total.json(),
            }
        )
        return 0
    if not tallies:
        print("no replayable interactions" + (f" in cassette {name!r}" if name else ""))
        return 0
    table = [
        [
            output.printable(n),
            str(t.interactions),
            str(t.with_usage),
            f"{t.input_tokens:,}",
            f"{t.output_tokens:,}",
            f"{t.cached_tokens:,}",
            _money(t),
        ]
        for n, t in tallies.items()
    ]
    header = ["CASSETTE", "INTERACTIONS", "WITH USAGE", "INPUT", "OUTPUT", "CACHED", "US$"]
    print(output.table(header, table))
    print(f"each replay of these replays {total.text()}")
    if not settings.prices and total.with_usage:
        print("no [prices] in the configuration: the money is not counted (config.example.toml)")
    for line in total.no_price_lines() if settings.prices else ():
        print(line)
    return 0


def _money(t: Tally) -> str:
    if not t.with_usage:
        return "-"
    unpriced = sum((t.unpriced or {}).values())
    return f"{t.dollars:,.4f}" + (f" ({unpriced} unpriced)" if unpriced else "")


def ls_older_than(settings: Settings, args: argparse.Namespace) -> int:
    before = datetime.now(UTC) - timedelta(seconds=args.older_than)
    aged = run(settings, lambda store: ledger.older_than(store.reader, before))
    if args.json:
        output.print_json(
            {
                "older_than": output.json_time(before),
                "cassettes": [
                    {
                        "name": a.cassette,
                        "old": a.old,
                        "interactions": a.interactions,
                        "oldest": output.json_time(a.oldest),
                    }
                    for a in aged
                ],
            }
        )
    elif not aged:
        print(f"no recordings older than {output.table_time(before)}")
    else:
        rows = [
            [
                output.printable(a.cassette),
                str(a.old),
                str(a.interactions),
                output.table_time(a.oldest),
            ]
            for a in aged
        ]
        print(output.table(["NAME", "OLDER", "INTERACTIONS", "OLDEST"], rows))
    return 0
