"""What a run did, cassette by cassette: replays served (and whether each sent exactly the
recorded bytes), misses, recordings made, replays of recordings older than `max_age`, the
recordings nobody asked for, and the tokens and money the replays did not spend.

A run is what the index calls one (it restarts when the proxy starts, on
`POST /_rrproxy/reset` and when the active cassette changes). `GET /_rrproxy/run` shows the
current one; `rrproxy serve --strict` logs the last one at shutdown and fails on it; the
pytest plugin reads it for each test.

The proof of a faithful replay: every recording keeps the sha256 of its body as it arrived
from the upstream (computed on the relayed bytes, apart from how they were split and
stored); every replay hashes what it wrote to the client. Equal, the replay is verified;
different, rrproxy has a bug, logged loudly. A replay whose client hung up, a body-less
answer, or a recording from before the hash was kept is counted as unverified.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from proxy.core.prices import Prices, Tally
from proxy.store import ledger
from proxy.store.queries import Source

log = logging.getLogger(__name__)


class Verdict(StrEnum):
    VERIFIED = "verified"  # sent exactly what was recorded (same sha256)
    MISMATCH = "mismatch"  # sent something else: a bug in rrproxy
    UNVERIFIED = "unverified"  # nothing to compare (client gone, no body, no recorded hash)


class SentDigest:
    """The sha256 and length of what a replay wrote to its client."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes) -> None:
        self._sha256.update(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


def verdict(
    recorded: str | None, body_size: int, sent: SentDigest, *, client_gone: bool
) -> Verdict:
    """Whether a replay sent what was recorded. Fewer bytes because the client left is not
    a verdict; any other difference is."""
    if recorded is None:
        return Verdict.UNVERIFIED
    if sent.size < body_size and client_gone:
        return Verdict.UNVERIFIED
    if sent.size == body_size and sent.hexdigest() == recorded:
        return Verdict.VERIFIED
    return Verdict.MISMATCH


@dataclass
class CassetteRun:
    served: int = 0
    missed: int = 0
    recorded: int = 0
    stale: int = 0
    verdicts: Counter[Verdict] = field(default_factory=Counter)
    replayed: Counter[int] = field(default_factory=Counter)  # times each interaction was
    touched: set[int] = field(default_factory=set)  # ids served or recorded in this run


@dataclass(frozen=True)
class Unused:
    number: int  # its ordinal in the cassette (`rrproxy show` numbers them so)
    method: str
    url: str  # without its query
    recorded_at: datetime | None


@dataclass
class RunSummary:
    """A run, cassette by cassette, with its unused recordings and its ledger."""

    started_at: datetime
    cassettes: dict[str, dict[str, Any]]
    unused: dict[str, list[Unused]]
    tally: Tally
    stale: int
    mismatched: int

    @property
    def problems(self) -> list[str]:
        """What `--strict` fails on: unused recordings, stale replays, unfaithful replays."""
        found = [
            f"cassette {name!r}: {len(items)} recording(s) never used in this run: "
            + ", ".join(f"#{u.number} {u.method} {u.url}" for u in items[:10])
            + (" ..." if len(items) > 10 else "")
            for name, items in self.unused.items()
            if items
        ]
        if self.stale:
            found.append(f"{self.stale} replay(s) of recordings older than max_age")
        if self.mismatched:
            found.append(f"{self.mismatched} replay(s) did not send the recorded bytes (a bug)")
        return found

    def json(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at.isoformat().replace("+00:00", "Z"),
            "cassettes": [
                {
                    "name": name,
                    **numbers,
                    "unused": [
                        {"number": u.number, "method": u.method, "url": u.url}
                        for u in self.unused.get(name, [])
                    ],
                }
                for name, numbers in self.cassettes.items()
            ],
            "replayed": self.tally.json(),
        }


class RunReport:
    """The current run's counters; `summary` reads what they need from the store."""

    def __init__(self) -> None:
        self.reset()
        self.final: RunSummary | None = None  # the last run's summary, at shutdown

    def reset(self) -> None:
        self.cassettes: dict[str, CassetteRun] = {}
        self.started_at = datetime.now(UTC)

    def _of(self, cassette: str) -> CassetteRun:
        run = self.cassettes.get(cassette)
        if run is None:
            run = self.cassettes[cassette] = CassetteRun()
        return run

    def replayed(self, cassette: str, interaction_id: int, found: Verdict) -> None:
        run = self._of(cassette)
        run.served += 1
        run.replayed[interaction_id] += 1
        run.touched.add(interaction_id)
        run.verdicts[found] += 1

    def judge(
        self,
        cassette: str,
        interaction_id: int,
        recorded: str | None,
        body_size: int,
        sent: SentDigest,
        *,
        client_gone: bool,
    ) -> Verdict:
        """A replay has ended: was it faithful? Counted; an unfaithful one logged loudly.
        `recorded`: the recorded body's sha256 (None when there is nothing to compare)."""
        found = verdict(recorded, body_size, sent, client_gone=client_gone)
        self.replayed(cassette, interaction_id, found)
        if found is Verdict.MISMATCH:
            log.error(
                "BUG: the replay of interaction %d of cassette %r sent %d bytes (sha256 %s), "
                "not the %d bytes recorded (sha256 %s); please report it with the cassette",
                interaction_id,
                cassette,
                sent.size,
                sent.hexdigest(),
                body_size,
                recorded,
            )
        return found

    def missed(self, cassette: str) -> None:
        self._of(cassette).missed += 1

    def recorded(self, cassette: str, interaction_id: int | None) -> None:
        run = self._of(cassette)
        run.recorded += 1
        if interaction_id is not None:
            run.touched.add(interaction_id)

    def stale(self, cassette: str, interaction_id: int) -> None:
        """A replay of a recording older than `max_age` (asked for: not unused)."""
        run = self._of(cassette)
        run.stale += 1
        run.touched.add(interaction_id)

    async def summary(self, source: Source, active: str, prices: Prices) -> RunSummary:
        """The run so far: the cassettes it used (and the active one, if it is stored)."""
        names = dict.fromkeys([*self.cassettes, active])
        cassettes: dict[str, dict[str, Any]] = {}
        unused: dict[str, list[Unused]] = {}
        total = Tally()
        stale = mismatched = 0
        for name in names:
            run = self.cassettes.get(name, CassetteRun())
            rows = await ledger.ordinals(source, name)
            if not rows and name not in self.cassettes:
                continue  # the active cassette, not in the store: nothing to say
            unused[name] = [
                Unused(r.number, r.method, r.url.split("?", 1)[0], r.recorded_at)
                for r in rows
                if r.replayable and r.id not in run.touched
            ]
            usage = await ledger.usage_by_id(source, list(run.replayed))
            tally = Tally()
            for interaction_id, times in run.replayed.items():
                tally.add(usage.get(interaction_id), prices, times)
            total.merge(tally)
            stale += run.stale
            mismatched += run.verdicts[Verdict.MISMATCH]
            cassettes[name] = _numbers(run, tally)
        return RunSummary(self.started_at, cassettes, unused, total, stale, mismatched)


def _numbers(run: CassetteRun, tally: Tally) -> dict[str, Any]:
    verdicts: Mapping[Verdict, int] = run.verdicts
    return {
        "served": run.served,
        "missed": run.missed,
        "recorded": run.recorded,
        "stale": run.stale,
        "verified": verdicts.get(Verdict.VERIFIED, 0),
        "mismatched": verdicts.get(Verdict.MISMATCH, 0),
        "unverified": verdicts.get(Verdict.UNVERIFIED, 0),
        "replayed": tally.json(),
    }


def log_summary(summary: RunSummary, *, strict: bool, priced: bool) -> None:
    """The run in a few log lines (at shutdown): what it replayed, saved, and left unused.
    Models without a price are named only when there is a price table (`priced`)."""
    t = summary.tally
    served = sum(c["served"] for c in summary.cassettes.values())
    verified = sum(c["verified"] for c in summary.cassettes.values())
    log.info("run: %d replay(s), %d verified; replayed %s", served, verified, t.text())
    for line in t.no_price_lines() if priced else ():
        log.warning("%s", line)
    for problem in summary.problems:
        (log.error if strict else log.warning)("run: %s", problem)
