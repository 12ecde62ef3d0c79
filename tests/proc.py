"""The proxy as a real process: `python -m proxy ...` on a free loopback port.

`serving(...)` starts `python -m proxy serve`, waits (a bounded loop) until
`GET /_rrproxy/health` answers, and kills the process on the way out whatever happened.
stderr goes to a file so a test can read the log lines. `run_cli(...)` runs a command that
ends by itself. Both clear every `RRPROXY_*` variable inherited from the test's environment.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import aiohttp

STARTUP_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 30.0

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RRPROXY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    executable: tuple[str, ...] = (sys.executable, "-m", "proxy"),
) -> subprocess.CompletedProcess[str]:
    """Run a command that ends by itself (bounded by a timeout)."""
    return subprocess.run(
        [*executable, *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
        check=False,
    )


class ProxyProcess:
    def __init__(self, popen: subprocess.Popen[bytes], port: int, stderr_path: Path):
        self.popen = popen
        self.port = port
        self.stderr_path = stderr_path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def send_signal(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    async def wait(self) -> int:
        """The exit status (negative: killed by that signal), waiting at most EXIT_TIMEOUT_S."""
        return await asyncio.to_thread(self.popen.wait, EXIT_TIMEOUT_S)

    async def wait_healthy(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT_S
        async with aiohttp.ClientSession() as client:
            while loop.time() < deadline:
                if self.popen.poll() is not None:
                    raise RuntimeError(
                        f"the proxy exited with {self.popen.returncode} before it was healthy:\n"
                        + self.stderr()
                    )
                try:
                    async with client.get(
                        self.url("/_rrproxy/health"), timeout=aiohttp.ClientTimeout(total=2)
                    ) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"the proxy was not healthy in {STARTUP_TIMEOUT_S} s:\n{self.stderr()}")

    async def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        await self.wait()


def spawn(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, name: str = "proxy"
) -> ProxyProcess:
    """Start `python -m proxy serve ARGS --port P` (not waiting for it)."""
    port = free_port()
    stderr_path = cwd / f"{name}-{port}.stderr"
    with stderr_path.open("wb") as stderr:
        popen = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", *args, "--port", str(port)],
            cwd=cwd,
            env=clean_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    return ProxyProcess(popen, port, stderr_path)


@asynccontextmanager
async def serving(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, name: str = "proxy"
) -> AsyncIterator[ProxyProcess]:
    """A healthy proxy process, killed on exit (if it has not stopped already)."""
    proc = spawn(*args, cwd=cwd, env=env, name=name)
    try:
        await proc.wait_healthy()
        yield proc
    finally:
        await proc.kill()


async def eventually(check: Callable[[], T | None], within: float = 10.0) -> T:
    """Poll `check` (a bounded loop) until it returns something other than None/False."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"condition not met within {within} s: {check}")
        await asyncio.sleep(0.05)
