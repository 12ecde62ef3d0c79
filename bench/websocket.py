"""``python -m bench.websocket``: WebSocket message round trips and a long session's memory.

Not part of ``python -m bench`` (one scenario, run by hand). Everything on 127.0.0.1, each
server its own process (``bench.ws_servers``):

1. latency: one session of N round trips (a small JSON text message, its echo), each timed,
   through ``direct`` (the upstream), ``aiohttp`` (a plain aiohttp WebSocket pass-through),
   rrproxy ``record`` and rrproxy ``replay`` (on what ``record`` stored; the same messages,
   so every one matches). p50 and p99, and ratios against direct and against aiohttp, taken
   within each repeat; the median over the repeats.
2. memory: one session of M server messages (``--session-messages``, 100,000 by default)
   through rrproxy ``record``, then the same session replayed: the proxy's RSS before, its
   peak during the session (in record mode until the store holds every message), and the
   growth.

    .venv/bin/python -m bench.websocket [--round-trips 2000] [--session-messages 100000]
        [--size 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from bench import procs
from bench.loads import percentile

CASSETTE = "ws-bench"
TIMEOUT = aiohttp.ClientTimeout(total=600, sock_connect=5)


@contextlib.asynccontextmanager
async def target(
    name: str, upstream: str, db: Path, workdir: Path
) -> AsyncIterator[procs.Server | None]:
    if name == "direct":
        yield None
        return
    port = procs.free_port()
    if name == "aiohttp":
        argv = [sys.executable, "-m", "bench.ws_servers", "aiohttp", "--port", str(port)]
        argv += ["--upstream", upstream]
        health = "/health"
    else:
        argv = [sys.executable, "-m", "proxy", "serve", "--host", procs.HOST, "--port", str(port)]
        argv += ["--upstream", upstream, "--mode", name, "--db", str(db), "--cassette", CASSETTE]
        health = "/_rrproxy/health"
    async with procs.server(argv, port, health, workdir / f"{name}-{port}.log") as server:
        yield server


async def round_trips(session: aiohttp.ClientSession, url: str, n: int, size: int) -> list[float]:
    """Seconds per round trip, each checked."""
    times: list[float] = []
    pad = "p" * size
    async with session.ws_connect(url + "/ws", max_msg_size=0) as ws:
        for i in range(n):
            t = time.perf_counter()
            await ws.send_str(json.dumps({"n": i, "pad": pad}))
            answer = json.loads((await ws.receive()).data)
            times.append(time.perf_counter() - t)
            if answer["echo"] != i:
                raise procs.BenchError(f"round trip {i}: wrong answer {answer}")
    return times


async def long_session(session: aiohttp.ClientSession, url: str, m: int, size: int) -> None:
    async with session.ws_connect(url + "/ws", max_msg_size=0) as ws:
        await ws.send_str(json.dumps({"burst": m, "size": size}))
        for i in range(m):
            msg = await ws.receive()
            if not msg.data.startswith(f'{{"i": {i},'):
                raise procs.BenchError(f"message {i} of the session: {msg.data[:40]!r}")
        if json.loads((await ws.receive()).data) != {"burst_done": m}:
            raise procs.BenchError("the session did not end as sent")


async def stored(session: aiohttp.ClientSession, url: str, messages: int) -> None:
    """Until the store holds `messages` messages in finished sessions of the cassette."""
    listed: object = None
    for _ in range(600):
        async with session.get(url + "/_rrproxy/cassettes") as r:
            listed = await r.json()
        found = {c["name"]: c for c in listed["cassettes"]}.get(CASSETTE)  # type: ignore[index]
        if found and found["events"] >= messages and not found["incomplete"]:
            return
        await asyncio.sleep(0.1)
    raise procs.BenchError(f"the store did not catch up: {listed}")


async def latency(
    upstream: str, workdir: Path, n: int, size: int, repeat: int
) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {}
    for index in range(repeat):
        db = workdir / f"latency-{index}.db"
        p50: dict[str, float] = {}
        async with aiohttp.ClientSession(trust_env=False, timeout=TIMEOUT) as session:
            for name in ("direct", "aiohttp", "record", "replay"):
                async with target(name, upstream, db, workdir) as server:
                    url = server.url if server is not None else upstream
                    times = await round_trips(session, url, n, size)
                    if name == "record":
                        await stored(session, url, 2 * n)
                p50[name] = statistics.median(times)
                figures.setdefault(f"{name}: round trip p50 (ms)", []).append(p50[name] * 1000)
                figures.setdefault(f"{name}: round trip p99 (ms)", []).append(
                    percentile(times, 99) * 1000
                )
        for name in ("aiohttp", "record", "replay"):
            figures.setdefault(f"{name}: p50 / direct", []).append(p50[name] / p50["direct"])
        for name in ("record", "replay"):
            figures.setdefault(f"{name}: p50 / aiohttp", []).append(p50[name] / p50["aiohttp"])
    return figures


async def memory(upstream: str, workdir: Path, m: int, size: int) -> dict[str, float]:
    db = workdir / "memory.db"
    figures: dict[str, float] = {}
    async with aiohttp.ClientSession(trust_env=False, timeout=TIMEOUT) as session:
        for name in ("record", "replay"):
            async with target(name, upstream, db, workdir) as server:
                assert server is not None
                t = time.perf_counter()
                async with procs.RssSampler(server.pid) as rss:
                    await long_session(session, server.url, m, size)
                    if name == "record":
                        await stored(session, server.url, m + 1)
                took = time.perf_counter() - t
                figures[f"{name}: {m} messages, time (s)"] = took
                figures[f"{name}: RSS before (MiB)"] = rss.before_kib / 1024
                figures[f"{name}: RSS peak (MiB)"] = rss.peak_kib / 1024
                figures[f"{name}: RSS growth (MiB)"] = (rss.peak_kib - rss.before_kib) / 1024
    return figures


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="rrproxy-ws-bench-") as tmp:
        workdir = Path(tmp)
        port = procs.free_port()
        argv = [sys.executable, "-m", "bench.ws_servers", "upstream", "--port", str(port)]
        async with procs.server(argv, port, "/health", workdir / "upstream.log") as up:
            runs = await latency(up.url, workdir, args.round_trips, args.size, args.repeat)
            figures = {name: statistics.median(values) for name, values in runs.items()}
            figures |= await memory(up.url, workdir, args.session_messages, args.size)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.websocket", description=__doc__)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--session-messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=200, help="bytes of padding a message")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    figures = asyncio.run(main_async(args))
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
