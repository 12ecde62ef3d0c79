"""``python -m bench.scale``: costs as the store grows (also ``python -m bench --scale``).

For each size (``--sizes 1000,50000,1000000``; the default is the small one), a cassette
file of that many small chat requests (~300 B each, answered with two events) is written
and imported with ``rrproxy import`` (MB/s); a replay proxy starts on that store (time until
it answers ``/_rrproxy/health``), answers its first replay (the cassette's first read),
then ``--scale-requests`` distinct replays, ``--scale-concurrency`` at a time (p50, p99, requests/s,
proxy CPU per request from ``/proc``), one miss (its time, and the replays answered while
it was explained), and the proxy's RSS; then ``rrproxy export`` writes the cassette back
(MB/s). ``--dir-recordings K`` records K interactions through a proxy with
``--cassette-dir`` and compares the proxy's CPU for the first and the last tenth of them:
a recording must cost the same whatever its cassette's file already holds.

Figures are measured on whatever else the machine runs: read them as ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench import payload, procs
from bench.loads import JSON_HEADERS, percentile

CASSETTE = "scale"
MB = 1e6


def _request(n: int) -> bytes:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": f"question {n} " + "x" * 200}],
    }
    return json.dumps(body).encode()


def _write_cassette(path: Path, n: int) -> int:
    """A cassette file of `n` interactions, written line by line (no proxy code: the
    benchmark drives rrproxy from outside); its size in bytes."""
    header = {"format": "rrproxy-cassette", "version": 1, "name": CASSETTE, "interactions": n}
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for i in range(n):
            head = {
                "request": {
                    "method": "POST",
                    "url": "http://127.0.0.1:9" + payload.SMALL_PATH,
                    "headers": [["Content-Type", "application/json"]],
                    "body": _request(i).decode(),
                },
                "response": {"status": 200, "headers": [["Content-Type", "application/json"]]},
                "complete": True,
                "outcome": "complete",
                "error": None,
                "recorded_at": "2026-01-01T00:00:00Z",
                "ttfb_ms": 1.0,
                "duration_ms": 2.0,
                "events": 2,
            }
            f.write(json.dumps(head) + "\n")
            f.write(json.dumps({"t": 1.0, "data": '{"answer": '}) + "\n")
            f.write(json.dumps({"t": 2.0, "data": f"{i}}}"}) + "\n")
    return path.stat().st_size


async def _cli(*args: str, cwd: Path) -> float:
    """Run an rrproxy command to its end; its wall time in seconds."""
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"rrproxy {' '.join(args)} failed:\n{err.decode()[-2000:]}")
    return time.perf_counter() - start


async def _replay(session: aiohttp.ClientSession, url: str, n: int) -> float:
    start = time.perf_counter()
    async with session.post(url, data=_request(n), headers=JSON_HEADERS) as response:
        body = await response.read()
    if response.status != 200 or body != f'{{"answer": {n}}}'.encode():
        raise SystemExit(f"replay {n}: HTTP {response.status} {body[:200]!r}")
    return (time.perf_counter() - start) * 1000


async def one_size(n: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    file, db = workdir / f"{CASSETTE}.cassette.jsonl", workdir / f"scale-{n}.db"
    size = await asyncio.to_thread(_write_cassette, file, n)
    figures: dict[str, Any] = {"interactions": n, "file_mb": size / MB}
    took = await _cli("import", str(file), "--db", str(db), cwd=workdir)
    figures["import_mb_s"] = size / MB / took
    port = procs.free_port()
    argv = [sys.executable, "-m", "proxy", "serve", "--host", procs.HOST, "--port", str(port)]
    argv += ["--upstream", "http://127.0.0.1:9", "--mode", "replay", "--db", str(db)]
    argv += ["--cassette", CASSETTE]
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=600)
    async with (
        procs.server(argv, port, "/_rrproxy/health", workdir / f"serve-{n}.log", 600) as proxy,
        aiohttp.ClientSession(trust_env=False, timeout=timeout) as session,
    ):
        figures["start_s"] = time.perf_counter() - started
        url = proxy.url + payload.SMALL_PATH
        figures["first_replay_ms"] = await _replay(session, url, 0)
        count = min(args.scale_requests, n)
        todo = iter(range(0, n, max(1, n // count)))
        times: list[float] = []

        async def worker() -> None:
            for i in todo:
                times.append(await _replay(session, url, i))

        cpu = procs.cpu_seconds(proxy.pid)
        wall = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.scale_concurrency)))
        wall = time.perf_counter() - wall
        figures["cpu_ms_per_replay"] = (procs.cpu_seconds(proxy.pid) - cpu) * 1000 / len(times)
        figures["replay_p50_ms"] = percentile(times, 50)
        figures["replay_p99_ms"] = percentile(times, 99)
        figures["replays_per_s"] = len(times) / wall
        figures["miss_ms"], figures["replays_during_miss"] = await _miss(session, url, n)
        figures["rss_mib"] = procs.memory_kib(proxy.pid)[0] / 1024
    out = workdir / "exported.cassette.jsonl"
    took = await _cli("export", CASSETTE, "-o", str(out), "--db", str(db), cwd=workdir)
    figures["export_mb_s"] = out.stat().st_size / MB / took
    for path in (db, out, file):
        path.unlink()
    return figures


async def _miss(session: aiohttp.ClientSession, url: str, n: int) -> tuple[float, int]:
    """One miss: its time, and the replays answered (one after another) meanwhile."""
    body = json.loads(_request(n // 2))
    body["model"] = "another"
    start = time.perf_counter()
    miss = asyncio.create_task(session.post(url, json=body, headers=JSON_HEADERS))
    answered = 0
    while not miss.done() and answered < 100_000:
        await _replay(session, url, answered % n)
        answered += 1
    async with await miss as response:
        await response.read()
    if response.status != 404:
        raise SystemExit(f"the miss answered HTTP {response.status}")
    return (time.perf_counter() - start) * 1000, answered


async def cassette_dir(k: int, workdir: Path) -> dict[str, Any]:
    """Record `k` interactions into a cassette directory: proxy CPU per recording, first
    tenth against last tenth."""
    up_port, port = procs.free_port(), procs.free_port()
    up_argv = [sys.executable, "-m", "bench.upstream", "--port", str(up_port)]
    tenth = max(1, k // 10)
    cpu: list[float] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with procs.server(up_argv, up_port, payload.HEALTH_PATH, workdir / "up.log") as up:
        argv = [sys.executable, "-m", "proxy", "serve", "--host", procs.HOST, "--port", str(port)]
        argv += ["--upstream", up.url, "--mode", "record", "--db", str(workdir / "dir.db")]
        argv += ["--cassette", "dir", "--cassette-dir", str(workdir / "cassettes")]
        async with (
            procs.server(argv, port, "/_rrproxy/health", workdir / "dir.log") as proxy,
            aiohttp.ClientSession(trust_env=False, timeout=timeout) as session,
        ):
            file = workdir / "cassettes" / "dir.cassette.jsonl"
            for i in range(k):
                before = procs.cpu_seconds(proxy.pid)
                data = payload.small_request(f"dir-{i}")
                async with session.post(proxy.url + payload.SMALL_PATH, data=data) as response:
                    await response.read()
                wanted = f'"interactions": {i + 1}}}'.encode()
                for _ in range(2000):  # until the file holds it (bounded)
                    if file.exists() and wanted in file.read_bytes()[:200]:
                        break
                    await asyncio.sleep(0.005)
                cpu.append(procs.cpu_seconds(proxy.pid) - before)
    first, last = sum(cpu[:tenth]) / tenth, sum(cpu[-tenth:]) / tenth
    return {
        "recordings": k,
        "cpu_ms_first_tenth": first * 1000,
        "cpu_ms_last_tenth": last * 1000,
        "ratio": last / first if first else None,
    }


def parse_sizes(text: str) -> list[int]:
    """`1000,50k,1M` to numbers (an empty text: none)."""
    units = {"k": 1000, "M": 1_000_000}
    sizes = []
    for part in filter(None, (p.strip().replace("_", "") for p in text.split(","))):
        sizes.append(int(part[:-1]) * units[part[-1]] if part[-1] in units else int(part))
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale-requests", type=int, default=2000, help="replays per size")
    parser.add_argument("--scale-concurrency", type=int, default=16, help="replays at a time")
    parser.add_argument(
        "--dir-recordings", type=int, default=200, help="cassette-directory recordings (0: none)"
    )


async def run(sizes: list[int], args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="rrproxy-scale-"))
    try:
        results: dict[str, Any] = {"sizes": [await one_size(n, args, workdir) for n in sizes]}
        if args.dir_recordings:
            results["cassette_dir"] = await cassette_dir(args.dir_recordings, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["measured"] = datetime.now(UTC).isoformat(timespec="seconds")
    return results


ROWS = [
    ("import MB/s", "import_mb_s", "{:.1f}"),
    ("start-up s", "start_s", "{:.2f}"),
    ("first replay ms", "first_replay_ms", "{:.0f}"),
    ("replay p50 ms", "replay_p50_ms", "{:.2f}"),
    ("replay p99 ms", "replay_p99_ms", "{:.2f}"),
    ("replays/s", "replays_per_s", "{:,.0f}"),
    ("proxy CPU ms/replay", "cpu_ms_per_replay", "{:.3f}"),
    ("miss ms", "miss_ms", "{:.0f}"),
    ("replays answered during the miss", "replays_during_miss", "{}"),
    ("proxy RSS MiB", "rss_mib", "{:.0f}"),
    ("export MB/s", "export_mb_s", "{:.1f}"),
]


def table(results: dict[str, Any]) -> str:
    sizes = results["sizes"]
    lines = (
        []
        if not sizes
        else ["| figure | " + " | ".join(f"{s['interactions']:,}" for s in sizes) + " |"]
    )
    if sizes:
        lines.append("|---|" + "---|" * len(sizes))
        for label, key, shape in ROWS:
            lines.append(f"| {label} | " + " | ".join(shape.format(s[key]) for s in sizes) + " |")
    if (d := results.get("cassette_dir")) is not None:
        lines.append("")
        lines.append(
            f"cassette directory, {d['recordings']} recordings: proxy CPU "
            f"{d['cpu_ms_first_tenth']:.2f} ms a recording in the first tenth, "
            f"{d['cpu_ms_last_tenth']:.2f} ms in the last ({d['ratio']:.2f}x)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--sizes", default="1000", help="interactions, e.g. 1000,50000,1M")
    parser.add_argument("--json-out", type=Path)
    add_arguments(parser)
    args = parser.parse_args(argv)
    results = asyncio.run(run(parse_sizes(args.sizes), args))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
