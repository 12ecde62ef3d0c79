"""Tests for proxy.cli.progress: a line on a terminal past two seconds, nothing elsewhere."""

from __future__ import annotations

import io

from proxy.cli.progress import AFTER_S, Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_sees_the_line_once_the_work_takes_a_while() -> None:
    now = [0.0]
    out = Terminal()
    shown = Progress("exporting c", out, clock=lambda: now[0])
    shown.update(1, 10)
    assert out.getvalue() == ""  # quick work shows nothing
    now[0] = AFTER_S + 1
    shown.update(5, 10)
    shown.update(6, 10)  # too soon after: not drawn again
    now[0] += 1
    shown.update(10, 10)
    shown.close()
    assert out.getvalue() == (
        "\rexporting c: 5/10 interactions (50%)\rexporting c: 10/10 interactions (100%)\n"
    )


def test_a_pipe_sees_nothing() -> None:
    now = [0.0]
    out = io.StringIO()
    shown = Progress("importing c", out, clock=lambda: now[0])
    now[0] = 60.0
    shown.update(5, 10)
    shown.close()
    assert out.getvalue() == ""
