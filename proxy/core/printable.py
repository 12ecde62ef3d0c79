"""Text from a request made safe for a log line.

A path, a header or an error message quoting either is the client's text: a CR or LF in
it would start a forged log line, an ANSI escape (`ESC [31m`) would repaint the
terminal of whoever reads the log. `printable` writes every control character (C0, DEL,
C1) and the Unicode line and paragraph separators as a visible escape, the rest as it is.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def printable(text: object) -> str:
    """`str(text)` with each control character written as `\\r`, `\\n`, `\\t`, `\\xNN` or
    `\\uNNNN`: one log line stays one line, and shows what was sent."""
    return _UNSAFE.sub(_escape, str(text))


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
