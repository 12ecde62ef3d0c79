"""``python -m bench.miss``: a replay miss against a big cassette, and auto mode's memory.

Not part of ``python -m bench`` (one scenario, run by hand). Everything on 127.0.0.1:

1. auto: rrproxy in ``auto`` mode records N unique requests with bodies of about SIZE bytes
   (a chat of 1 KB messages) against ``bench.upstream``; its RSS is read before, once the
   store holds them all, and again after a pause (what it gives back).
2. replay: rrproxy restarted in ``replay`` mode on that store. One hit loads the cassette
   (timed), then each miss (a request like a recorded one, one message changed) is timed
   while ``GET /_rrproxy/health`` is probed back to back: the slowest probe is how long the
   event loop was unavailable during the miss.

    .venv/bin/python -m bench.miss [--requests 2000] [--size 50000] [--misses 3]
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
from pathlib import Path

import aiohttp

from bench import payload, procs

CASSETTE = "big"
TIMEOUT = aiohttp.ClientTimeout(total=300, sock_connect=5)


def body(n: int, size: int) -> bytes:
    """A chat of ~1 KB messages, about ``size`` bytes in all, unique by ``n``."""
    messages = [
        {"role": "user" if i % 2 else "assistant", "content": f"{n}:{i} " + "lorem ipsum " * 80}
        for i in range(max(1, size // 1000))
    ]
    messages.append({"role": "user", "content": str(n)})  # what bench.upstream answers
    return json.dumps({"model": "bench", "stream": False, "messages": messages}).encode()


def missing(n: int, size: int) -> bytes:
    """Like recording ``n``, one message different."""
    chat = json.loads(body(n, size))
    chat["messages"][3]["content"] = "changed"
    return json.dumps(chat).encode()


def rss_mib(pid: int) -> float:
    return procs.memory_kib(pid)[0] / 1024


def anon_mib(pid: int) -> float:
    """The anonymous part of the RSS (the heap; not file pages such as shared libraries)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


def serve(
    mode: str, upstream: str, db: Path, workdir: Path
) -> contextlib.AbstractAsyncContextManager[procs.Server]:
    port = procs.free_port()
    argv = [sys.executable, "-m", "proxy", "serve", "--host", procs.HOST, "--port", str(port)]
    argv += ["--upstream", upstream, "--mode", mode, "--db", str(db), "--cassette", CASSETTE]
    return procs.server(argv, port, "/_rrproxy/health", workdir / f"{mode}-{port}.log")


async def record(session: aiohttp.ClientSession, url: str, n: int, size: int) -> None:
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        async with sem:
            data = body(i, size)
            headers = {"Content-Type": "application/json"}
            async with session.post(url + payload.SMALL_PATH, data=data, headers=headers) as r:
                await r.read()
                if r.status != 200 or r.headers.get("Rrproxy-Source") != "recorded":
                    raise procs.BenchError(f"request {i}: {r.status} {r.headers}")

    await asyncio.gather(*(one(i) for i in range(n)))
    for _ in range(60):  # until the store holds them all (each listing waits up to 5 s)
        async with session.get(url + "/_rrproxy/cassettes") as r:
            listed = await r.json()
        if r.status == 200:
            stored = {c["name"]: c["interactions"] for c in listed["cassettes"]}
            if stored.get(CASSETTE) == n:
                return
        await asyncio.sleep(1)
    raise procs.BenchError(f"the store did not catch up: {listed}")


async def auto_phase(upstream: str, db: Path, workdir: Path, n: int, size: int) -> dict[str, float]:
    async with serve("auto", upstream, db, workdir) as server:
        async with aiohttp.ClientSession(trust_env=False, timeout=TIMEOUT) as session:
            before, anon_before = rss_mib(server.pid), anon_mib(server.pid)
            t = time.perf_counter()
            await record(session, server.url, n, size)
            took = time.perf_counter() - t
            after, anon_after = rss_mib(server.pid), anon_mib(server.pid)
            await asyncio.sleep(5)
            settled = rss_mib(server.pid)
    return {
        "auto: record time (s)": took,
        "auto: RSS before (MiB)": before,
        "auto: RSS after (MiB)": after,
        "auto: RSS growth (MiB)": after - before,
        "auto: RSS growth after 5 s (MiB)": settled - before,
        "auto: anonymous RSS growth (MiB)": anon_after - anon_before,
    }


async def timed_miss(session: aiohttp.ClientSession, url: str, data: bytes) -> tuple[float, float]:
    """(seconds the miss took, slowest health probe while it ran)."""
    headers = {"Content-Type": "application/json"}
    done = asyncio.Event()
    probes: list[float] = []

    async def miss() -> float:
        t = time.perf_counter()
        try:
            async with session.post(url + payload.SMALL_PATH, data=data, headers=headers) as r:
                text = await r.text()
        finally:
            done.set()
        took = time.perf_counter() - t
        if r.status != 404 or "differs" not in text:
            raise procs.BenchError(f"expected a miss naming a difference: {r.status} {text}")
        return took

    async def probe() -> None:
        while not done.is_set():
            t = time.perf_counter()
            async with session.get(url + "/_rrproxy/health") as r:
                await r.read()
            probes.append(time.perf_counter() - t)  # it started while the miss ran

    task = asyncio.create_task(miss())
    await asyncio.sleep(0.01)  # the miss is on its way
    await probe()
    return await task, max(probes)


async def replay_phase(
    upstream: str, db: Path, workdir: Path, n: int, size: int, misses: int
) -> dict[str, float]:
    async with serve("replay", upstream, db, workdir) as server:
        async with aiohttp.ClientSession(trust_env=False, timeout=TIMEOUT) as session:
            headers = {"Content-Type": "application/json"}
            t = time.perf_counter()
            async with session.post(
                server.url + payload.SMALL_PATH, data=body(0, size), headers=headers
            ) as r:
                await r.read()
                if r.headers.get("Rrproxy-Source") != "replayed":
                    raise procs.BenchError(f"first request not replayed: {r.status}")
            load = time.perf_counter() - t
            times, probes = [], []
            for i in range(misses):
                took, probe = await timed_miss(session, server.url, missing(n // 2 + i, size))
                times.append(took)
                probes.append(probe)
            rss = rss_mib(server.pid)
    return {
        "replay: first hit, cassette load (s)": load,
        "replay: miss, median (s)": statistics.median(times),
        "replay: miss, max (s)": max(times),
        "replay: slowest health probe during a miss, median (s)": statistics.median(probes),
        "replay: slowest health probe during a miss, max (s)": max(probes),
        "replay: RSS after the misses (MiB)": rss,
    }


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="rrproxy-miss-") as tmp:
        workdir = Path(tmp)
        port = procs.free_port()
        argv = [sys.executable, "-m", "bench.upstream", "--port", str(port)]
        async with procs.server(argv, port, payload.HEALTH_PATH, workdir / "upstream.log") as up:
            db = workdir / "miss.db"
            figures = await auto_phase(up.url, db, workdir, args.requests, args.size)
            figures |= await replay_phase(
                up.url, db, workdir, args.requests, args.size, args.misses
            )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.miss", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--size", type=int, default=50_000, help="request body bytes")
    parser.add_argument("--misses", type=int, default=3)
    args = parser.parse_args(argv)
    figures = asyncio.run(main_async(args))
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
