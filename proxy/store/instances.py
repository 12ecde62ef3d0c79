"""The proxies running on a store: each registers itself (a row in `instances`) and beats
a heartbeat; start-up repair marks incomplete only the open interactions of instances that
are gone (stopped, or whose heartbeat has lapsed), never those another live proxy is still
recording.

An instance is gone when its heartbeat is older than `LAPSE_S`, or, on this very host, when
its process no longer exists (a proxy killed and started again repairs at once, not a lapse
later).
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.core.records import Outcome
from proxy.store.models import Event, Instance, Interaction

HEARTBEAT_S = 2.0
"""How often a running proxy says it is alive."""
LAPSE_S = 30.0
"""A heartbeat older than this: the instance is gone (killed, its machine off)."""


def _host() -> str:
    return socket.gethostname()[:255]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


async def register(engine: AsyncEngine) -> int:
    """This proxy's row: its id goes on every interaction it records."""
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(Instance)
            .values(host=_host(), pid=os.getpid(), started_at=now, heartbeat_at=now)
            .returning(Instance.id)
        )
        return int(result.scalar_one())


async def beat(engine: AsyncEngine, instance: int) -> None:
    """The heartbeat. A row removed meanwhile (this proxy was stalled past the lapse and
    another one repaired) is put back: this proxy is alive after all."""
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        result = await conn.execute(
            update(Instance).where(Instance.id == instance).values(heartbeat_at=now)
        )
        if result.rowcount == 0:
            await conn.execute(
                insert(Instance).values(
                    id=instance, host=_host(), pid=os.getpid(), started_at=now, heartbeat_at=now
                )
            )


async def leave(engine: AsyncEngine, instance: int) -> None:
    """A clean stop: the row goes (anything it left open is repaired by the next start)."""
    async with engine.begin() as conn:
        await conn.execute(delete(Instance).where(Instance.id == instance))


async def repair(engine: AsyncEngine, *, lapse_s: float = LAPSE_S) -> int:
    """Forget the instances that are gone and mark the interactions they left open (or that
    no instance owns: recorded before instances existed) incomplete. How many were marked."""
    now = datetime.now(UTC)
    cutoff = now - timedelta(seconds=lapse_s)
    here = _host()
    of_this = Event.interaction_id == Interaction.id
    async with engine.begin() as conn:
        known = select(Instance.id, Instance.host, Instance.pid, Instance.heartbeat_at)
        rows = (await conn.execute(known)).all()
        gone = [
            r.id
            for r in rows
            if _utc(r.heartbeat_at) < cutoff or (r.host == here and not _alive(r.pid))
        ]
        if gone:
            await conn.execute(delete(Instance).where(Instance.id.in_(gone)))
        live = select(Instance.id)
        result = await conn.execute(
            update(Interaction)
            .where(
                Interaction.outcome == Outcome.RECORDING.value,
                Interaction.instance_id.is_(None) | Interaction.instance_id.not_in(live),
            )
            .values(
                outcome=Outcome.INCOMPLETE.value,
                error="the proxy stopped before the response ended",
                event_count=select(func.count()).where(of_this).scalar_subquery(),
                body_size=select(func.coalesce(func.sum(func.length(Event.data)), 0))
                .where(of_this)
                .scalar_subquery(),
            )
        )
        return result.rowcount
