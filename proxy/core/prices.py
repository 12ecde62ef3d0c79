"""What tokens cost: the `[prices]` table of the configuration (US dollars per million
tokens, per model), and the money a replayed usage did not spend. Nothing is fetched: the
table is the user's, and rrproxy ships only a dated example of it.

A model is priced by its own name, else by the longest priced name it starts with followed
by `-` (`gpt-4o-2024-08-06` takes `gpt-4o`'s price, `gpt-4o-mini` its own).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.core.usage import Usage


@dataclass(frozen=True)
class Price:
    input: float  # per million input tokens (not cached)
    output: float  # per million output tokens
    cached_input: float  # per million cached input tokens (the input price when not given)


Prices = tuple[tuple[str, Price], ...]
"""Model name and its price, in the order of the table."""


def parse_prices(value: Any) -> Prices:
    """`{"gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25}, ...}`: raises
    ValueError naming the model and the field."""
    if not isinstance(value, Mapping):
        raise ValueError(
            'must be a table of models, such as [prices."gpt-4o"] input = 2.5, output = 10'
        )
    prices: list[tuple[str, Price]] = []
    for model, fields in value.items():
        if not isinstance(fields, Mapping):
            raise ValueError(f"model {model!r}: must be a table with input and output prices")
        unknown = sorted(set(fields) - {"input", "output", "cached_input"})
        if unknown:
            raise ValueError(
                f"model {model!r}: unknown field {unknown[0]!r} (input, output, cached_input)"
            )
        numbers: dict[str, float] = {}
        for name in ("input", "output", "cached_input"):
            if name not in fields:
                if name == "cached_input":
                    numbers[name] = numbers["input"]
                    continue
                raise ValueError(f"model {model!r}: {name} (US$ per million tokens) is missing")
            number = fields[name]
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ValueError(f"model {model!r}: {name} must be a number of US$ per million")
            if not (math.isfinite(number) and number >= 0):
                raise ValueError(f"model {model!r}: {name} must be zero or more")
            numbers[name] = float(number)
        prices.append((str(model), Price(**numbers)))
    return tuple(prices)


def price_for(prices: Prices, model: str | None) -> Price | None:
    if not model:
        return None
    best: tuple[int, Price] | None = None
    for name, price in prices:
        if name == model:
            return price
        if model.startswith(name + "-") and (best is None or len(name) > best[0]):
            best = (len(name), price)
    return best[1] if best else None


def cost(usage: Usage, price: Price) -> float:
    """US dollars: uncached input, cached input and output, each at its price."""
    cached = min(usage.cached_tokens, usage.input_tokens)
    return (
        (usage.input_tokens - cached) * price.input
        + cached * price.cached_input
        + usage.output_tokens * price.output
    ) / 1_000_000


@dataclass
class Tally:
    """Tokens and money over many interactions (a run's replays, a cassette's recordings)."""

    interactions: int = 0
    with_usage: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    dollars: float = 0.0
    unpriced: dict[str, int] | None = None  # model (or "unknown") -> interactions unpriced

    def add(self, usage: Usage | None, prices: Prices, times: int = 1) -> None:
        self.interactions += times
        if usage is None:
            return
        self.with_usage += times
        self.input_tokens += usage.input_tokens * times
        self.output_tokens += usage.output_tokens * times
        self.cached_tokens += usage.cached_tokens * times
        price = price_for(prices, usage.model)
        if price is None:
            if self.unpriced is None:
                self.unpriced = {}
            model = usage.model or "unknown"
            self.unpriced[model] = self.unpriced.get(model, 0) + times
        else:
            self.dollars += cost(usage, price) * times

    def merge(self, other: Tally) -> None:
        self.interactions += other.interactions
        self.with_usage += other.with_usage
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.dollars += other.dollars
        for model, n in (other.unpriced or {}).items():
            if self.unpriced is None:
                self.unpriced = {}
            self.unpriced[model] = self.unpriced.get(model, 0) + n

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def json(self) -> dict[str, Any]:
        return {
            "interactions": self.interactions,
            "with_usage": self.with_usage,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "usd": round(self.dollars, 6),
            "no_price": sorted(self.unpriced or {}),
        }

    def text(self) -> str:
        """`3 interaction(s), 1,042 tokens (543 in, 478 out, 234 cached), $0.0061`"""
        money = f", ${self.dollars:,.4f}" if self.with_usage else ""
        return (
            f"{self.interactions} interaction(s), {self.tokens:,} tokens ({self.input_tokens:,} "
            f"in, {self.output_tokens:,} out, {self.cached_tokens:,} cached){money}"
        )

    def no_price_lines(self) -> list[str]:
        """One line per model without a price: said once, however many interactions."""
        return [
            f"no price for model {model} ({n} interaction(s) not counted in the money; "
            "add it to [prices])"
            for model, n in sorted((self.unpriced or {}).items())
        ]
