"""`rrproxy serve --workers N`: N processes serving one port (`SO_REUSEPORT`: the kernel
spreads connections between them), each with its own connections to the store, its own
instance row and heartbeat, and the same watch for the others' commits, as separate
proxies on one store have. Replay throughput grows with cores.

The first process forks the workers and supervises them: SIGTERM or SIGINT is passed on to
every worker (each stops as `rrproxy serve` does); a worker that exits with an error stops
the others, and its status is the command's.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from types import FrameType

from proxy.errors import ConfigError, RrproxyError

log = logging.getLogger(__name__)


def supervise(n: int, serve: Callable[[int], int]) -> int:
    """Fork `n` workers running `serve(i)` (i from 1), wait for them all; the first failing
    status, else 0."""
    children: list[int] = []
    for i in range(1, n + 1):
        pid = os.fork()
        if pid == 0:
            os._exit(_worker(serve, i))
        children.append(pid)

    def forward(signum: int, _frame: FrameType | None) -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    alive = set(children)
    while alive:
        pid, code = os.wait()
        alive.discard(pid)
        code = os.waitstatus_to_exitcode(code)
        if code != 0 and status == 0:
            status = code if code > 0 else 1
            log.error("worker %d exited with status %d; stopping the others", pid, code)
            forward(signal.SIGTERM, None)
    return status


def _worker(serve: Callable[[int], int], i: int) -> int:
    """A worker's life, ending in its exit status (never returns into the parent's code)."""
    try:
        return serve(i)
    except ConfigError as exc:
        print(f"rrproxy: {exc}", file=sys.stderr)
        return 2
    except RrproxyError as exc:
        print(f"rrproxy: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_status", 1))
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
