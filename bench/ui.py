"""``python -m bench.ui``: the web UI on a big recording and a big cassette.

Not part of ``python -m bench`` (one scenario, run by hand). A store is filled directly
(its schema made by rrproxy's migrations): one interaction of ``--events`` SSE events
(about 200 bytes each, 1 ms apart, with a few long gaps), a cassette of
``--interactions`` interactions and a WebSocket session of ``--messages`` messages. Then
``rrproxy ui --db`` serves it, on 127.0.0.1, and each page is fetched: once cold, then
``--repeat`` times (the median is reported). The first screen of the interaction page (its
head and first page of events; the timeline of a stream over 10,000 events and the LLM
summary are fetched by the page afterwards, and timed apart), its last page, the same for
the session (first screen, timeline, last page of messages), the cassette page of the big
cassette (first and last page) and the cassette list. The UI process's RSS
is read before the first page and after the last, with its peak (VmHWM): paged queries
keep it flat however long the stream.

    .venv/bin/python -m bench.ui [--events 100000] [--interactions 10000]
        [--messages 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from bench import procs

UI = "/_rrproxy/ui"
TIMEOUT = aiohttp.ClientTimeout(total=300, sock_connect=5)


async def migrate(db: Path) -> None:
    from proxy.store.engine import open_store

    async with open_store(f"sqlite+aiosqlite:///{db}", writer=True, migrate=True):
        pass


def fill_session(db: Path, messages: int) -> int:
    """A WebSocket session of `messages` text messages (~200 bytes, one in ten from the
    client, 1 ms apart) ending with the client's close; its interaction id."""
    now = datetime.now(UTC).isoformat()
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("INSERT INTO cassettes (name, created_at) VALUES ('session', ?)", (now,))
        cassette = conn.execute("SELECT max(id) FROM cassettes").fetchone()[0]
        payloads = [_event(n)[40:-2] for n in range(messages)]  # an event's JSON
        conn.execute(
            "INSERT INTO interactions (cassette_id, method, url, request_headers, request_body,"
            " status, response_headers, outcome, error, started_at, ttfb_ms, duration_ms,"
            " event_count, body_size) VALUES (?, 'GET', 'wss://api.openai.com/v1/realtime',"
            " '[]', x'', 101, '[]', 'complete', NULL, ?, 5.0, ?, ?, ?)",
            (cassette, now, 10.0 + messages, messages + 1, sum(map(len, payloads))),
        )
        session = conn.execute("SELECT max(id) FROM interactions").fetchone()[0]
        conn.executemany(
            "INSERT INTO messages (interaction_id, seq, t_ms, from_client, kind, data, code)"
            " VALUES (?, ?, ?, ?, 'text', ?, NULL)",
            ((session, n, 10.0 + n, n % 10 == 0, payloads[n]) for n in range(messages)),
        )
        conn.execute(
            "INSERT INTO messages VALUES (?, ?, ?, 1, 'close', x'', 1000)",
            (session, messages, 10.0 + messages),
        )
    return int(session)


def fill(db: Path, events: int, interactions: int) -> int:
    """The store's rows, written with sqlite3 (fast); the big stream's interaction id."""
    now = datetime.now(UTC).isoformat()
    headers = json.dumps([["Content-Type", "application/json"]])
    sse = json.dumps([["Content-Type", "text/event-stream"]])
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("INSERT INTO cassettes (name, created_at) VALUES ('long-stream', ?)", (now,))
        conn.execute("INSERT INTO cassettes (name, created_at) VALUES ('many', ?)", (now,))
        long_id, many_id = (
            r[0] for r in conn.execute("SELECT id FROM cassettes ORDER BY id").fetchall()
        )
        body = b'{"model": "gpt-4o", "input": "Tell me a long story", "stream": true}'

        def row(cassette: int, n: int, count: int, size: int, took: float) -> tuple[object, ...]:
            return (
                cassette, "POST", f"https://api.openai.com/v1/responses?n={n}", headers, body,
                200, sse, "complete", None, now, 250.0, took, count, size,
            )  # fmt: skip

        insert = (
            "INSERT INTO interactions (cassette_id, method, url, request_headers, request_body,"
            " status, response_headers, outcome, error, started_at, ttfb_ms, duration_ms,"
            " event_count, body_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        chunk = [_event(n) for n in range(events)]
        t = [_t(n) for n in range(events)]
        conn.execute(insert, row(long_id, 0, events, sum(map(len, chunk)), t[-1] if t else 0))
        big = conn.execute("SELECT max(id) FROM interactions").fetchone()[0]
        conn.executemany(
            "INSERT INTO events (interaction_id, seq, t_ms, data) VALUES (?, ?, ?, ?)",
            ((big, n, t[n], chunk[n]) for n in range(events)),
        )
        small = [_event(n) for n in range(3)]
        conn.executemany(insert, (row(many_id, n, 3, 600, 260.0) for n in range(interactions)))
        ids = [
            r[0]
            for r in conn.execute("SELECT id FROM interactions WHERE cassette_id = ?", (many_id,))
        ]
        conn.executemany(
            "INSERT INTO events (interaction_id, seq, t_ms, data) VALUES (?, ?, ?, ?)",
            ((i, n, 250.0 + n, small[n]) for i in ids for n in range(3)),
        )
    return int(big)


def _event(n: int) -> bytes:
    payload = {"type": "response.output_text.delta", "item_id": "msg_1", "delta": f" word{n}"}
    return f"event: response.output_text.delta\ndata: {json.dumps(payload)}\n\n".encode()


def _t(n: int) -> float:
    return 250.0 + n + (400.0 if n > 5000 else 0.0) + (900.0 if n > 50000 else 0.0)


async def timed(session: aiohttp.ClientSession, url: str, repeat: int) -> dict[str, float]:
    async def once() -> tuple[float, int]:
        t = time.perf_counter()
        async with session.get(url) as r:
            data = await r.read()
            if r.status != 200:
                raise procs.BenchError(f"{url}: {r.status} {data[:300]!r}")
        return (time.perf_counter() - t) * 1000, len(data)

    cold, size = await once()
    warm = [(await once())[0] for _ in range(repeat)]
    return {"cold ms": cold, "median ms": statistics.median(warm), "KiB": size / 1024}


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="rrproxy-bench-ui-") as scratch:
        work = Path(scratch)
        db = work / "ui.db"
        t = time.perf_counter()
        await migrate(db)
        big = fill(db, args.events, args.interactions)
        session = fill_session(db, args.messages)
        print(f"store filled in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        port = procs.free_port()
        argv = [sys.executable, "-m", "proxy", "ui", "--db", str(db), "--port", str(port)]
        async with procs.server(argv, port, UI + "/", work / "ui.log") as server:
            rss_before = procs.memory_kib(server.pid)[0] / 1024
            last_page = max(args.interactions - 1, 0) // 100
            pages = {
                "interaction, first screen": f"{UI}/interactions/{big}",
                "interaction, timeline": f"{UI}/interactions/{big}/timeline",
                "interaction, last page": f"{UI}/interactions/{big}?event={args.events}",
                "interaction, LLM summary": f"{UI}/interactions/{big}/summary",
                "session, first screen": f"{UI}/interactions/{session}",
                "session, timeline": f"{UI}/interactions/{session}/timeline",
                "session, last page": f"{UI}/interactions/{session}?message={args.messages}",
                "cassette, first page": f"{UI}/cassettes/many",
                "cassette, last page": f"{UI}/cassettes/many?page={last_page}",
                "cassette list": f"{UI}/",
            }
            figures: dict[str, object] = {}
            async with aiohttp.ClientSession(trust_env=False, timeout=TIMEOUT) as session:
                for name, path in pages.items():
                    figures[name] = await timed(session, server.url + path, args.repeat)
            rss_after, peak = (v / 1024 for v in procs.memory_kib(server.pid))
    figures["ui RSS before (MiB)"] = round(rss_before, 1)
    figures["ui RSS after (MiB)"] = round(rss_after, 1)
    figures["ui RSS peak (MiB)"] = round(peak, 1)
    return {
        "events": args.events,
        "interactions": args.interactions,
        "messages": args.messages,
        "figures": figures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ui", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    result = asyncio.run(main_async(args))
    for name, value in result["figures"].items():  # type: ignore[attr-defined]
        if isinstance(value, dict):
            shown = ", ".join(f"{k} {v:,.1f}" for k, v in value.items())
            print(f"{name:28} {shown}")
        else:
            print(f"{name:28} {value}")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
