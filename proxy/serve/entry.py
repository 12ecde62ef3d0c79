"""What the replay index keeps of a recorded interaction: its request without the body,
its match key, the sketch of its body, its response head and outcome."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from proxy.core.matching import Candidate, MatchRules, Sketch, input_digest, keyed
from proxy.core.records import Headers, Outcome, Request, ResponseHead
from proxy.store import queries

Row = tuple[int, datetime, int, str, str, Headers]
"""What identifies a stored interaction, even when SQLite gives a deleted one's id to
another: id, start, request size, method, URL, request headers."""
Computed = tuple[str, bytes, Sketch]
"""What the index computes of a recorded request: its key, its `input_digest`, its sketch."""


@dataclass(eq=False)
class Entry:
    """One recorded interaction as replay sees it: its request without the body (`body`
    only until the store has it), its match key and the sketch of its body."""

    method: str
    url: str
    headers: Headers
    request_size: int
    key: str | None  # None until needed (record mode does not match)
    head: ResponseHead
    outcome: Outcome
    interaction_id: int | None = None
    body_size: int = 0
    ttfb_ms: float = 0.0
    body: bytes | None = None
    sketch: Sketch | None = None  # computed when the cassette is (re)loaded
    row: Row | None = None  # once read from the store
    body_sha256: str | None = None  # of the body as recorded: a replay must send the same
    committed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def recording(
        cls, request: Request, key: str | None, head: ResponseHead, ttfb_ms: float
    ) -> Entry:
        """A recording this process starts (its request body is kept until it is stored)."""
        return cls(
            request.method,
            request.url,
            request.headers,
            len(request.body),
            key,
            head,
            Outcome.RECORDING,
            ttfb_ms=ttfb_ms,
            body=request.body,
        )

    @property
    def available(self) -> bool:
        return self.outcome.replayable

    def stored(self, interaction_id: int | None, size: int, *, dropped: bool) -> None:
        """The recording is in the store (less its events when they had to be dropped)."""
        self.interaction_id = interaction_id
        self.body_size = size
        if dropped:
            self.outcome = Outcome.INCOMPLETE
        self.body = None  # the store has it
        self.committed.set()

    def request(self, body: bytes) -> Request:
        return Request(self.method, self.url, self.headers, body)

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.method, self.url, self.headers, self.request_size, self.sketch or ())


def row_of(entry: Entry, started_at: datetime) -> Row:
    assert entry.interaction_id is not None
    return (
        entry.interaction_id,
        started_at,
        entry.request_size,
        entry.method,
        entry.url,
        entry.headers,
    )


def entry_of(stored: queries.StoredHead) -> Entry:
    entry = Entry(
        stored.method,
        stored.url,
        stored.request_headers,
        stored.request_size,
        None,
        stored.head,
        stored.outcome,
        stored.id,
        stored.body_size,
        stored.ttfb_ms,
        body_sha256=stored.body_sha256,
    )
    entry.committed.set()
    return entry


def compute_all(requests: list[Request | None], rules: MatchRules) -> list[Computed | None]:
    """Key, digest and sketch of each request (run in a worker thread)."""
    done: list[Computed | None] = []
    for request in requests:
        if request is None:
            done.append(None)
            continue
        key, sketch = keyed(request, rules)
        done.append((key, input_digest(request, rules), sketch))
    return done
