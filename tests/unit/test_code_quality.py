"""Lint, format and type checks run with the suite, so `python -m pytest` alone enforces them
(CI runs the same commands first, as a step of their own: see `.ci/run`); and the README
stays true about how the project is tested and laid out."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
CHECKS = [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]]


@pytest.mark.parametrize("command", CHECKS, ids=["ruff-check", "ruff-format", "mypy"])
def test_tool_passes(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _commands(block: str) -> list[str]:
    """The commands of a shell block, comments off."""
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_checks_and_the_readme_test_command() -> None:
    """The README's second command at the top is the test command, exactly as `.ci/run`
    runs it, after the same checks as above."""
    first_block = re.search(r"```sh\n(.*?)```", README, re.DOTALL)
    assert first_block is not None
    install, test = _commands(first_block.group(1))
    ci = _commands(CI)
    assert ci[-1] == test, f".ci/run ends with {ci[-1]!r}, the README says {test!r}"
    for command in CHECKS:
        assert " ".join(command) in ci, f".ci/run does not run {' '.join(command)!r}"
    assert ci.index("mypy") < ci.index(test)
    assert "-c constraints/ci.txt -e '.[test]'" in install
    assert any(line.endswith("-c constraints/ci.txt -e '.[test]'") for line in ci)


def test_the_readme_layout_lists_every_module_once() -> None:
    """`### Layout` in the README: one line per file of `find proxy -name '*.py'`."""
    layout = README[README.index("### Layout") :]
    listed = re.findall(r"^\| `(proxy/[^`]+\.py)` \|", layout, re.MULTILINE)
    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "proxy").rglob("*.py"))
    assert sorted(listed) == files, (
        f"missing from the README: {sorted(set(files) - set(listed))}; "
        f"listed but absent: {sorted(set(listed) - set(files))}"
    )
    assert len(listed) == len(set(listed)), "a module is listed twice"
