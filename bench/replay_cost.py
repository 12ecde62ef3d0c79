"""``python -m bench.replay_cost``: what one small-JSON replay costs the proxy, in CPU.

Records, through rrproxy, ``--requests`` identical small JSON requests (one match key,
that many recordings: the agent-loop case) and as many distinct ones, then starts a replay
proxy on that store and replays both sets, each ``--concurrency`` at a time, in turns
(``--rounds``): the proxy's CPU per request from ``/proc`` (steadier than time on a shared
machine) and requests/s, for the repeats of one key and for the distinct requests.
``--profile DIR`` runs the replay proxy under ``py-spy record`` (a dev tool, not a
dependency) and writes the collapsed stacks of each run there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench import payload, procs
from bench.loads import JSON_HEADERS

CASSETTE = "cost"


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, expect: bytes) -> None:
    async with session.post(url, data=body, headers=JSON_HEADERS) as response:
        got = await response.read()
    if response.status != 200 or got != expect:
        raise SystemExit(f"HTTP {response.status}: {got[:300]!r}")


async def _drive(
    session: aiohttp.ClientSession, url: str, ids: list[str], concurrency: int
) -> float:
    """Send every request (``concurrency`` at a time); the wall time in seconds."""
    todo = iter(ids)

    async def worker() -> None:
        for request_id in todo:
            expect = payload.small_response(request_id)
            await _post(session, url, payload.small_request(request_id), expect)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


def _proxy(port: int, upstream: str, mode: str, db: Path) -> list[str]:
    argv = [sys.executable, "-m", "proxy", "serve", "--host", procs.HOST, "--port", str(port)]
    return [*argv, "--upstream", upstream, "--mode", mode, "--db", str(db), "--cassette", CASSETTE]


async def main_async(args: argparse.Namespace, workdir: Path) -> dict[str, list[float]]:
    up_port = procs.free_port()
    up_argv = [sys.executable, "-m", "bench.upstream", "--port", str(up_port)]
    db = workdir / "cost.db"
    same = ["same"] * args.requests
    distinct = [f"small-{i}" for i in range(args.requests)]
    timeout = aiohttp.ClientTimeout(total=600)
    async with procs.server(up_argv, up_port, payload.HEALTH_PATH, workdir / "up.log") as up:
        port = procs.free_port()
        argv = _proxy(port, up.url, "record", db)
        async with (
            procs.server(argv, port, "/_rrproxy/health", workdir / "record.log") as rec,
            aiohttp.ClientSession(trust_env=False, timeout=timeout) as session,
        ):
            url = rec.url + payload.SMALL_PATH
            await _drive(session, url, same, args.concurrency)
            await _drive(session, url, distinct, args.concurrency)
        figures: dict[str, list[float]] = {}
        for n in range(args.rounds):
            port = procs.free_port()
            argv = _proxy(port, up.url, "replay", db)
            if args.profile is not None:
                out = args.profile / f"replay-{n}.txt"  # collapsed stacks
                spy = ["py-spy", "record", "--nonblocking", "-r", "500", "-f", "raw"]
                argv = [*spy, "-o", str(out), "--", *argv]
            async with (
                procs.server(argv, port, "/_rrproxy/health", workdir / f"replay-{n}.log") as rp,
                aiohttp.ClientSession(trust_env=False, timeout=timeout) as session,
            ):
                pid = _python_pid(rp.pid) if args.profile is not None else rp.pid
                url = rp.url + payload.SMALL_PATH
                await _drive(session, url, ["small-0"], 1)  # the cassette's first load
                for name, ids in (("repeats", same), ("distinct", distinct)):
                    for _ in range(2):  # the second pass: the recordings of a key used up
                        cpu = procs.cpu_seconds(pid)
                        wall = await _drive(session, url, ids, args.concurrency)
                        used = procs.cpu_seconds(pid) - cpu
                        figures.setdefault(f"{name} cpu ms/request", []).append(
                            used * 1000 / len(ids)
                        )
                        figures.setdefault(f"{name} requests/s", []).append(len(ids) / wall)
                if args.profile is not None:  # py-spy writes its output once the proxy ends
                    os.kill(pid, signal.SIGINT)
                    await _gone(pid)
    return figures


async def _gone(pid: int) -> None:
    for _ in range(300):
        if not os.path.exists(f"/proc/{pid}"):  # noqa: ASYNC240 (procfs: never blocks)
            return
        await asyncio.sleep(0.1)


def _python_pid(pid: int) -> int:
    """The proxy's pid under py-spy (its only child)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay_cost", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="replay proxies started in turn")
    parser.add_argument("--profile", type=Path, help="py-spy flame graphs into this directory")
    args = parser.parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="rrproxy-cost-"))
    try:
        figures = asyncio.run(main_async(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for name, values in figures.items():
        shown = ", ".join(f"{v:.3f}" if "cpu" in name else f"{v:,.0f}" for v in values)
        print(f"{name:28} {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
