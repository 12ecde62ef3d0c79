"""What JSON parsing here refuses that Python's `json` would accept."""

from __future__ import annotations

from typing import Any


def reject_constant(name: str) -> Any:
    """`parse_constant` hook: NaN and Infinity are not JSON (and NaN != NaN would make equal
    bodies differ)."""
    raise ValueError(f"{name} is not JSON")
