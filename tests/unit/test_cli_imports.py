"""`rrproxy --version` and `--help` answer at once because the command's module imports no
heavy library: each command's module is imported only when that command runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("sqlalchemy", "aiohttp", "cryptography", "alembic", "aiosqlite")

SCRIPT = """
import json, sys
import proxy.cli.main
{action}
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "action",
    [
        "",
        "try:\n    proxy.cli.main.main(['--version'])\nexcept SystemExit:\n    pass",
        "try:\n    proxy.cli.main.main(['--help'])\nexcept SystemExit:\n    pass",
        "try:\n    proxy.cli.main.main(['serve', '--help'])\nexcept SystemExit:\n    pass",
    ],
    ids=["import", "--version", "--help", "serve --help"],
)
def test_the_command_loads_no_heavy_library_until_a_command_runs(action: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(action=action, heavy=HEAVY)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stderr.splitlines()[-1]) == []


def test_a_command_that_runs_loads_what_it_needs() -> None:
    """The same check can fail: running `ls` does import SQLAlchemy."""
    script = SCRIPT.format(action="import proxy.cli.cassettes", heavy=HEAVY)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "sqlalchemy" in json.loads(result.stderr.splitlines()[-1])
