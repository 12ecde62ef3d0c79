"""The single writer: takes recorded events off the hot path and commits them in batches.

Relaying never waits on the database. `begin`, `events` and `end` only append to in-memory
lists; one task (`run`) owns every write, taking whatever has piled up and writing it in
one transaction with a few statements (datasette's write thread, as an asyncio task; on
SQLite the batch goes to a thread of its own, `proxy.store.batch_writer`; the statements
are `proxy.store.writes`).
It lets writes gather for up to `linger_s` (50 ms) before a batch: a transaction costs far
more than a row, so batches stay few under any load, and a killed process loses only the
last tens of milliseconds. It writes at once when someone waits for the store (`flush`, a
replay of a recording still being written: `hurry`) or a batch reaches `batch_bytes`.
When it has nothing to write it checkpoints SQLite's WAL, which SQLite would otherwise do
inside a commit, in the middle of a stream.

Memory stays bounded, and back-pressure falls on the recording that produces the bytes.
Queued bytes are counted per recording: a relay whose recording has more than `high_water`
bytes waiting (or all of them together more than `max_pending_bytes`) waits (`room`) until
the writer has taken them, so a store that is slow or locked by another process slows the
stream that outruns it while small streams go on. A store that refuses writes (full,
read-only) holds no stream: the writer retries with backoff, and past `max_pending_bytes`
the recordings with the most bytes waiting are dropped, largest first, and marked
incomplete once the store answers. A batch the store can never take (an integrity error: a
cassette deleted while it was recorded, a name that is not text) is never retried: it is
written recording by recording, and the recordings refused are dropped. Every recording
dropped is logged with its cassette and request and counted (`recordings_dropped`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.core.messages import Message
from proxy.core.pieces import Part, encode
from proxy.core.records import Outcome, Recording, Request, ResponseHead
from proxy.store.batch_writer import BatchWriter
from proxy.store.writes import Batch, EventRow, busy, refused

log = logging.getLogger(__name__)

_BACKOFF_MAX_S = 2.0
_GIVE_UP_AT_CLOSE_S = 5.0
MAX_HOLD_S = 60.0
"""A relay held this long without the store taking anything of its recording goes on
without it: the recording is dropped."""
_CHECKPOINT_BYTES = 4 * 2**20
MESSAGE_OVERHEAD = 256
"""What a queued WebSocket message costs beyond its payload (its objects), counted towards
the back-pressure bounds so that a session of many small messages stays as bounded as a
stream of large events."""


class Recorder:
    """`linger_s`: how long writes may gather before a batch (a test sets an hour to prove
    that what must be written at once is). `batch_bytes`: a batch this big is written
    without lingering. Both are read at each batch, so they may be changed while it runs."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        high_water: int = 4 * 2**20,
        max_pending_bytes: int = 64 * 2**20,
        max_hold_s: float = MAX_HOLD_S,
        linger_s: float = 0.05,
        batch_bytes: int = 2**20,
        instance: int | None = None,
    ):
        self.linger_s = linger_s
        self.batch_bytes = batch_bytes
        self._db = BatchWriter(engine, instance)  # on SQLite, a thread of its own
        self._high_water = high_water
        self._max_pending = max_pending_bytes
        self._max_hold_s = max_hold_s
        self._pending = Batch()
        self._writing: dict[Recording, int] = {}  # bytes by recording of the batch in hand
        self._wakeup = asyncio.Event()  # something to write
        self._hurry = asyncio.Event()  # ... and someone waiting for it, or a batch's worth
        self._closing = False
        self._cassette_ids: dict[str, int] = {}
        self._failing_since: float | None = None  # writes failing since (loop time)
        self._refusing = False  # ... and not because the store is busy: streams are not held
        self.recordings_dropped = 0
        """Recordings whose events could not all be kept, since the start."""
        self._unchecked = 0  # bytes written since the last checkpoint
        self._pushed = 0  # items ever queued
        self._written = 0  # items ever committed (or dropped)
        self._progress = asyncio.Condition()
        self.listeners: list[Callable[[Recording], None]] = []
        """Called with each recording once its last event is committed."""

    # -- the hot path: never awaits ---------------------------------------------------------

    def begin(
        self,
        cassette: str,
        request: Request,
        head: ResponseHead,
        ttfb_ms: float,
        on_committed: Callable[[Recording], None] | None = None,
    ) -> Recording:
        rec = Recording(cassette, request, head, datetime.now(UTC), ttfb_ms, on_committed)
        self._pending.begins.append(rec)
        self._queued()
        return rec

    def events(self, rec: Recording, t_ms: float, events: list[bytes]) -> None:
        """Events that arrived together (one chunk), in order, each whole and in one piece."""
        self.parts(rec, [Part(event, t_ms, None) for event in events])

    def parts(self, rec: Recording, parts: list[Part]) -> None:
        """Parts of the body (`proxy.core.pieces`), in order: whole events, or parts of a
        large one, each with the pieces it arrived in."""
        seq = rec.rows
        size = 0
        rows: list[EventRow] = []
        for part in parts:
            size += len(part.data)
            rows.append((rec, seq, part.t_ms, part.data, encode(part.pieces), part.continues))
            seq += 1
            if not part.continues:
                rec.events += 1
        rec.rows = seq
        rec.size += size
        if not rec.dropped:
            pending = self._pending
            pending.events.extend(rows)
            pending.size += size
            pending.sizes[rec] = pending.sizes.get(rec, 0) + size
            self._queued(len(rows))
            if pending.size > self.batch_bytes:
                self._hurry.set()
            if pending.size > self._max_pending and self._refusing:
                self._shed()

    def message(self, rec: Recording, message: Message) -> None:
        """One message of a WebSocket session, queued as an event is (same back-pressure,
        same batches); it is stored in `messages`."""
        seq, size = rec.events, len(message.data)
        rec.events += 1
        rec.size += size
        if not rec.dropped:
            pending = self._pending
            pending.events.append((rec, seq, message.t_ms, message, None, False))
            weight = size + MESSAGE_OVERHEAD  # a session's many small messages weigh too
            pending.size += weight
            pending.sizes[rec] = pending.sizes.get(rec, 0) + weight
            self._queued()
            if pending.size > self.batch_bytes:
                self._hurry.set()
            if pending.size > self._max_pending and self._refusing:
                self._shed()

    def end(
        self, rec: Recording, outcome: Outcome, duration_ms: float, error: str | None = None
    ) -> None:
        rec.outcome, rec.duration_ms, rec.error = outcome, duration_ms, error
        self._pending.ends.append(rec)
        self._queued()

    def _queued(self, items: int = 1) -> None:
        self._pushed += items
        self._wakeup.set()

    @property
    def failing(self) -> bool:
        """The store's last write failed (locked past its busy timeout, full...)."""
        return self._failing_since is not None

    def behind(self, rec: Recording) -> bool:
        """The store is behind `rec`: more than `high_water` of its bytes wait to be taken,
        or twice that with those being written (a write that failed comes back), or all
        recordings together have more than `max_pending_bytes` waiting. Its relay should
        wait (`room`). A store that refuses writes holds nobody."""
        pending = self._pending
        queued = pending.sizes.get(rec, 0)
        return (
            queued > self._high_water
            or queued + self._writing.get(rec, 0) > 2 * self._high_water
            or pending.size > self._max_pending
        ) and not (self._refusing or rec.dropped)

    def _caught_up(self, rec: Recording) -> bool:
        pending = self._pending
        queued = pending.sizes.get(rec, 0)
        return (
            queued <= self._high_water // 4
            and queued + self._writing.get(rec, 0) <= 2 * self._high_water
            and pending.size <= self._max_pending
        )

    async def room(self, rec: Recording) -> None:
        """Wait until the writer has taken the backlog of `rec` (a slow or locked store
        slows the stream that outruns it; the next batch fills while one is written).
        Should it take nothing for `max_hold_s`, or start refusing writes, the stream goes
        on: in the first case without its recording, which is dropped."""
        try:
            async with self._progress, asyncio.timeout(self._max_hold_s):
                await self._progress.wait_for(
                    lambda: self._caught_up(rec) or self._refusing or rec.dropped or self._closing
                )
        except TimeoutError:
            self._drop({rec}, f"the store took nothing of it for {self._max_hold_s:.0f} s")

    def _shed(self) -> None:
        """The store refuses writes and the backlog is too large: drop the events of the
        recordings with the most waiting, largest first, until it is half the bound,
        rather than grow without bound. Those recordings end as incomplete, saying why."""
        sizes = self._pending.sizes
        victims: set[Recording] = set()
        left = self._pending.size
        for rec in sorted(sizes, key=sizes.__getitem__, reverse=True):
            if left <= self._max_pending // 2:
                break
            victims.add(rec)
            left -= sizes[rec]
        reason = f"the store refuses writes and {self._max_pending // 2**20} MiB are waiting"
        self._drop(victims, reason)

    def _drop(self, recs: set[Recording], reason: str) -> None:
        """Drop the events of `recs`, queued and to come: their interactions are written
        as incomplete (their begins and ends still are)."""
        self._written += self._pending.drop_events(recs)
        for rec in recs:
            self._dropped(rec, reason, "it will be stored as incomplete")

    def _dropped(self, rec: Recording, reason: str, then: str) -> None:
        rec.dropped = True
        self.recordings_dropped += 1
        request = rec.request
        where = request.url.split("?", 1)[0]  # no query: it may hold secrets
        interaction = f" (interaction {rec.interaction_id})" if rec.interaction_id else ""
        log.error(
            "dropped the recording of %s %s into cassette %r%s: %s; %s",
            request.method,
            where,
            rec.cassette,
            interaction,
            reason,
            then,
        )

    # -- the writer task --------------------------------------------------------------------

    async def warm_up(self) -> None:
        """Before serving: the writer's connection opened, its statements compiled."""
        await self._db.warm_up()

    async def run(self) -> None:
        """The writer task: until `close()`, then everything pending is written."""
        try:
            await self._run()
        finally:
            await self._db.close()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if not len(self._pending):
                if self._closing:
                    return
                if self._unchecked > _CHECKPOINT_BYTES:
                    await self._checkpoint()
                    continue
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            if not self._closing:
                await self._linger()
            batch, self._pending = self._pending, Batch()
            self._writing = batch.sizes
            async with self._progress:
                self._progress.notify_all()  # room() waiters: the backlog was taken
            unwritten, error = await self._take(batch)
            self._writing = {}
            async with self._progress:
                self._written += len(batch) - len(unwritten)
                self._progress.notify_all()
            if error is not None:
                self._cassette_ids.clear()  # a cassette may have been deleted under us
                unwritten.extend(self._pending)  # room() sees its bytes waiting again
                self._pending = unwritten
                await self._failed(error)
                if self._pending.size > self._max_pending and self._refusing:
                    self._shed()
                if self._closing and self._give_up():
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = 0.05
            self._unchecked += batch.size
            del batch, unwritten  # they hold request bodies: not kept while the writer waits
            if self._failing_since is not None:
                log.warning("the store is writable again; recording resumed")
                self._failing_since, self._refusing = None, False

    async def _take(self, batch: Batch) -> tuple[Batch, Exception | None]:
        """Write the batch. One the store can never take (`refused`) is written recording
        by recording, and the recordings refused are dropped: one bad recording never
        holds up the others. Returns what is left to write (retried later) and why."""
        try:
            await self._write(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not refused(exc):
                return batch, exc
        else:
            self._committed(batch)
            return Batch(), None
        self._cassette_ids.clear()  # the refusal may come from one deleted under us
        parts = batch.apart()
        for i, part in enumerate(parts):
            try:
                await self._write(part)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not refused(exc):
                    left = Batch()
                    for rest in parts[i:]:
                        left.extend(rest)
                    return left, exc
                self._refuse(part, exc)
            else:
                self._committed(part)
        return Batch(), None

    def _refuse(self, part: Batch, exc: Exception) -> None:
        """The store refuses this recording's rows: drop it (its queued events too), and
        end it for those waiting on it. Its interaction, if it was written, is marked
        incomplete."""
        [rec] = {*part.begins, *part.sizes, *part.ends}
        cause = getattr(exc, "orig", None) or exc
        integrity = isinstance(cause, sqlite3.IntegrityError) or isinstance(
            exc, sa_exc.IntegrityError
        )
        hint = " (was its cassette deleted?)" if integrity else ""
        if not rec.dropped:
            reason = f"the store refuses it ({type(cause).__name__}: {cause}){hint}"
            self._dropped(rec, reason, "its later events are not recorded")
        self._written += self._pending.drop_events({rec})
        if rec in part.ends:
            if rec.interaction_id is not None and rec not in part.begins:
                self._pending.ends.append(rec)  # mark it incomplete, if it is still there
                self._queued()
            else:
                self._committed(Batch(ends=[rec]))

    async def _failed(self, exc: Exception) -> None:
        self._refusing = not busy(exc)
        if self._failing_since is None:
            self._failing_since = asyncio.get_running_loop().time()
            # the driver's error, not SQLAlchemy's wrapper: that one quotes the
            # statement with its parameters (recorded bodies) in the log line
            cause = getattr(exc, "orig", None) or exc
            log.error(
                "cannot write to the store (%s: %s); streams continue, recording is retried",
                type(cause).__name__,
                cause,
            )
        async with self._progress:
            self._progress.notify_all()

    async def _linger(self) -> None:
        """Before a batch: let the relays run first (the first bytes of a stream go to the
        client, not into a contest with the writer), and let writes gather, for up to
        `linger_s` or until someone waits for them (`hurry`). A transaction costs far more
        than a row: few, large batches keep the writer's share of the machine small."""
        if not self._hurry.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.linger_s):
                    await self._hurry.wait()
        self._hurry.clear()

    async def _checkpoint(self) -> None:
        """Idle, with a long WAL behind us: move it into the database file now, between
        streams (SQLite's own checkpoints, inside a commit, are pushed far out)."""
        self._unchecked = 0
        await self._db.checkpoint()

    def _give_up(self) -> bool:
        assert self._failing_since is not None
        if asyncio.get_running_loop().time() - self._failing_since < _GIVE_UP_AT_CLOSE_S:
            return False
        log.error(
            "shutting down with the store still failing: %d event(s) not written",
            len(self._pending.events),
        )
        return True

    def hurry(self) -> None:
        """Someone waits for what is queued (a replay of a recording still being written):
        write it now, not after the linger."""
        self._hurry.set()

    async def flush(self) -> None:
        """Wait until everything queued so far is in the store."""
        target = self._pushed
        if self._written < target:
            self._hurry.set()
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= target)

    async def close(self) -> None:
        """Ask the writer to write what is pending and stop: `run` returns when it has."""
        self._closing = True
        self._wakeup.set()
        self._hurry.set()
        async with self._progress:
            self._progress.notify_all()

    async def _write(self, batch: Batch) -> None:
        cassettes, new_ids = await self._db.write(batch, dict(self._cassette_ids))
        self._cassette_ids.update(cassettes)
        for rec, interaction_id in new_ids.items():
            rec.interaction_id = interaction_id

    def _committed(self, batch: Batch) -> None:
        for rec in batch.ends:
            if rec.on_committed is not None:
                rec.on_committed(rec)
            for listener in self.listeners:
                listener(rec)
