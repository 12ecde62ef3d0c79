"""Medians over repeats, ratios to the two references, and the table and JSON that show them.

A figure is the median over the repeats; its ratio is the median over the repeats of the
ratio within each repeat (target and reference measured moments apart).

Every ratio is a cost relative to the reference: above 1 is worse. For times and memory it
is ``value / reference``; for throughputs it is ``reference / value``, so ``2.00x`` always
reads "twice as slow" (or twice the memory).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.loads import Figures

REFERENCES = ("direct", "aiohttp")


@dataclass(frozen=True, slots=True)
class Metric:
    load: str
    key: str
    label: str
    higher_is_better: bool = False
    ratio: bool = True


METRICS = (
    Metric("latency", "ttfe_p50_ms", "latency: first event p50 (ms)"),
    Metric("latency", "ttfe_p99_ms", "latency: first event p99 (ms)"),
    Metric("latency", "ttlb_p50_ms", "latency: last byte p50 (ms)"),
    Metric("latency", "ttlb_p99_ms", "latency: last byte p99 (ms)"),
    Metric("latency", "cpu_ms_per_request", "latency: proxy CPU per request (ms)"),
    Metric("large", "mb_per_s", "large: MB/s", higher_is_better=True),
    Metric("large", "events_per_s", "large: events/s", higher_is_better=True),
    Metric("large", "cpu_ms_per_request", "large: proxy CPU for the stream (ms)"),
    Metric("large", "rss_peak_mib", "large: proxy peak RSS (MiB)"),
    Metric("large", "rss_growth_mib", "large: proxy RSS growth (MiB)", ratio=False),
    Metric("large", "record_flush_ms", "large: store caught up (ms)", ratio=False),
    Metric("concurrency", "wall_ms", "concurrency: wall (ms)"),
    Metric("concurrency", "requests_per_s", "concurrency: requests/s", higher_is_better=True),
    Metric("concurrency", "cpu_ms_per_request", "concurrency: proxy CPU per stream (ms)"),
    Metric("concurrency", "record_flush_ms", "concurrency: store caught up (ms)", ratio=False),
    Metric("small_json", "requests_per_s", "small JSON: requests/s", higher_is_better=True),
    Metric("small_json", "cpu_ms_per_request", "small JSON: proxy CPU per request (ms)"),
    Metric("small_json", "record_flush_ms", "small JSON: store caught up (ms)", ratio=False),
)
LOADS = ("latency", "large", "concurrency", "small_json")

# runs[target][repeat][load] -> the figures of that load, with "verified" and maybe "error"
Runs = dict[str, list[dict[str, Figures]]]


def _median(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return statistics.median(numbers) if numbers else None


def _cost(metric: Metric, value: float | None, reference: float | None) -> float | None:
    if not metric.ratio or value is None or reference is None or value <= 0 or reference <= 0:
        return None
    return reference / value if metric.higher_is_better else value / reference


def summarize(runs: Runs, meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: per target and load, medians, verification and the raw runs."""
    results: dict[str, dict[str, Any]] = {}
    for target, repeats in runs.items():
        results[target] = {}
        for load in LOADS:
            per_run = [run.get(load, {"verified": False, "error": "not run"}) for run in repeats]
            keys = {k for figures in per_run for k in figures} - {"verified", "error"}
            results[target][load] = {
                "verified": bool(per_run) and all(f.get("verified") is True for f in per_run),
                "errors": [f["error"] for f in per_run if "error" in f],
                "median": {k: _median([f.get(k) for f in per_run]) for k in sorted(keys)},
                "runs": per_run,
            }
    # A ratio is taken within each repeat (target and reference measured minutes apart at
    # most, on the same machine state), then the median over the repeats.
    ratios: dict[str, dict[str, dict[str, dict[str, float | None]]]] = {}
    for target in results:
        for metric in METRICS:
            mine = results[target][metric.load]["runs"]
            ratios.setdefault(target, {}).setdefault(metric.load, {})[metric.key] = {
                f"vs_{ref}": _median(
                    [
                        _cost(metric, a.get(metric.key), b.get(metric.key))
                        for a, b in zip(mine, results[ref][metric.load]["runs"], strict=True)
                    ]
                )
                if ref in results
                else None
                for ref in REFERENCES
            }
    return {"meta": meta, "targets": list(runs), "results": results, "ratios": ratios}


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def table(summary: dict[str, Any]) -> str:
    """Plain aligned text: one row per metric and target, medians and cost ratios."""
    header = ("metric", "target", "median", "x direct", "x aiohttp", "verified")
    rows: list[tuple[str, ...]] = [header]
    first_of_load = {m.load: m for m in reversed(METRICS)}
    for metric in METRICS:
        label = metric.label
        for target in summary["targets"]:
            result = summary["results"][target][metric.load]
            value = result["median"].get(metric.key)
            if result["verified"] and value is None:
                continue  # not applicable to this target (no proxy process, not recording)
            if not result["verified"] and first_of_load[metric.load] is not metric:
                continue  # a failed load shows once, on its first row
            ratio = summary["ratios"][target][metric.load][metric.key]
            rows.append(
                (
                    label,
                    target,
                    _number(value),
                    *(f"{r:.2f}x" if (r := ratio[f"vs_{ref}"]) else "-" for ref in REFERENCES),
                    "yes" if result["verified"] else "FAILED",
                )
            )
            label = ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if row is header:
            lines.append("-" * len(lines[-1]))
    return "\n".join(lines)


def failures(summary: dict[str, Any]) -> list[str]:
    """What did not verify, with its first error: per target, or per load when they differ."""
    out = []
    for target, results in summary["results"].items():
        failed = {
            load: (result["errors"] or ["not verified"])[0]
            for load, result in results.items()
            if not result["verified"]
        }
        if len(failed) == len(LOADS) and len(set(failed.values())) == 1:
            out.append(f"{target}: {failed[LOADS[0]]}")
        else:
            out.extend(f"{target} / {load}: {error}" for load, error in failed.items())
    return out
