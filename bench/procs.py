"""Server subprocesses: start on a free loopback port, wait until healthy, always stop.

Also reads a process's memory from ``/proc/PID/status`` (Linux only).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HOST = "127.0.0.1"
STOP_GRACE_S = 30
REPO = Path(__file__).resolve().parent.parent
# Never let a child reach anything but loopback through a proxy found in the environment.
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


class BenchError(Exception):
    """A target failed: did not start, answered wrongly, or lost data."""


@dataclass(frozen=True, slots=True)
class Server:
    url: str
    pid: int
    log: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """Run in the child before exec: get SIGTERM when the benchmark dies, even by SIGKILL."""
    pr_set_pdeathsig = 1  # linux/prctl.h
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}


async def _wait_ready(proc: asyncio.subprocess.Process, url: str, log: Path) -> None:
    probe = aiohttp.ClientTimeout(total=1)
    async with aiohttp.ClientSession(trust_env=False, timeout=probe) as session:
        while True:
            if proc.returncode is not None:
                raise BenchError(f"exited with {proc.returncode} before ready:\n{log_tail(log)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after a grace period long enough for a recorder to flush."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def server(
    argv: Sequence[str], port: int, health_path: str, log: Path, ready_timeout: float = 30
) -> AsyncIterator[Server]:
    """Run ``argv`` (a server listening on ``port``) until the block ends; killed in any case."""
    url = f"http://{HOST}:{port}"
    with log.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=REPO,
            env=_child_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    try:
        try:
            async with asyncio.timeout(ready_timeout):
                await _wait_ready(proc, url + health_path, log)
        except TimeoutError:
            raise BenchError(f"not ready after {ready_timeout:.0f} s:\n{log_tail(log)}") from None
        yield Server(url, proc.pid, log)
        if proc.returncode is not None:
            raise BenchError(f"exited with {proc.returncode} during the run:\n{log_tail(log)}")
    finally:
        await _stop(proc)


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB: its resident memory now and at its peak."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used, in seconds (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()  # after the command name
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@dataclass(slots=True)
class RssSampler:
    """Peak resident memory of ``pid`` while the ``async with`` block runs.

    Samples VmRSS every few milliseconds; when the process's all-time peak (VmHWM) rose
    during the block, that exact peak is used instead of the samples.
    """

    pid: int
    interval: float = 0.005
    before_kib: int = 0
    peak_kib: int = 0
    _hwm_before: int = 0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def __aenter__(self) -> RssSampler:
        self.before_kib, self._hwm_before = memory_kib(self.pid)
        self.peak_kib = self.before_kib
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        rss, hwm = memory_kib(self.pid)
        self.peak_kib = max(self.peak_kib, rss)
        if hwm > self._hwm_before:
            self.peak_kib = max(self.peak_kib, hwm)

    async def _sample(self) -> None:
        while True:
            self.peak_kib = max(self.peak_kib, memory_kib(self.pid)[0])
            await asyncio.sleep(self.interval)
