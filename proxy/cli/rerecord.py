"""`rrproxy rerecord CASSETTE [--interaction N | --match URL-GLOB] [--dry-run]`: send recorded
requests to the upstream again, put the new answers in place of the old (ordinals kept), and
say how each answer's shape changed (`proxy.core.shape`).

Requests are stored redacted: each header the recording holds as `[REDACTED]` is filled from
`-H NAME:VALUE`, else from the `[rerecord] headers` templates (`${VAR}` read from the
environment); one that nothing fills stops the command before anything is sent.

Nothing is written until every selected request has been answered in full: an upstream that
cannot be reached, an answer that breaks off or is an error where a success was recorded,
or a process killed halfway, leaves every old recording as it was. `--dry-run` sends and
compares, and writes nothing (exit status 3 when a shape changed: "is the API still what we
recorded?" on a schedule).
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from proxy.cli.store import Store, run
from proxy.config import Settings
from proxy.core.headers import NOT_FORWARDED, end_to_end
from proxy.core.records import Event, Request, ResponseHead
from proxy.core.redact import REDACTED
from proxy.core.shape import Shape, drift, facts, shape_of
from proxy.core.sse import framer_for
from proxy.errors import ConfigError, RerecordError, UpstreamError
from proxy.serve.upstream import client_session, describe, response_head, send, upstream_ssl_context
from proxy.store import queries
from proxy.store.queries import StoredInteraction
from proxy.store.replace import Answer, replace_answers

EXIT_DRIFT = 3
MAX_HELD_BYTES = 256 * 2**20
"""New answers are held in memory until all have arrived (then written in one go)."""
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Fresh:
    stored: StoredInteraction
    answer: Answer
    old: Shape
    new: Shape


def rerecord_command(settings: Settings, args: argparse.Namespace) -> int:
    overrides = _overrides(args.header or [])
    return run(settings, lambda store: _rerecord(store, settings, args, overrides))


def _overrides(given: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in given:
        name, colon, value = item.partition(":")
        if not colon or not name.strip():
            raise ConfigError(f"-H {item!r}: give a header as 'Name: value'")
        found[name.strip().lower()] = value.strip()
    return found


async def _rerecord(
    store: Store, settings: Settings, args: argparse.Namespace, overrides: dict[str, str]
) -> int:
    name: str = args.cassette
    stored = await queries.interactions(store.reader, name, required=True, finished_only=True)
    chosen = _choose(stored, args.interaction, args.match, name)
    requests = [(s, _request(s, settings, overrides)) for s in chosen]  # all checked first
    fresh: list[Fresh] = []
    held = 0
    verify = upstream_ssl_context(settings.upstream_ca_bundle)
    async with client_session(settings.connect_timeout, settings.read_timeout, verify) as session:
        for s, request in requests:
            answer = await _send(session, s, request, settings)
            held += sum(len(e.data) for e in answer.events)
            if held > MAX_HELD_BYTES:
                raise RerecordError(
                    f"the new answers exceed {MAX_HELD_BYTES // 2**20} MiB; nothing was "
                    "changed: rerecord fewer interactions at a time (--interaction, --match)"
                )
            old = shape_of(s.response, await queries.events(store.reader, s.id))
            fresh.append(Fresh(s, answer, old, shape_of(answer.head, answer.events)))
    changed = _report(fresh)
    if args.dry_run:
        print(f"dry run: nothing written; {changed} of {len(fresh)} answer(s) changed shape")
        return EXIT_DRIFT if changed else 0
    await replace_answers(store.writer, [f.answer for f in fresh])
    print(f"rerecorded {len(fresh)} interaction(s) of cassette {name!r}; {changed} changed shape")
    if store.dir is not None:
        await store.dir.write(name)
    return 0


def _choose(
    stored: list[StoredInteraction], numbers: list[int] | None, glob: str | None, name: str
) -> list[StoredInteraction]:
    chosen = stored
    if numbers:
        by_number = {s.number: s for s in stored}
        missing = [n for n in numbers if n not in by_number]
        if missing:
            raise RerecordError(
                f"cassette {name!r} has no finished interaction #{missing[0]} "
                f"(it has {len(stored)}; rrproxy show {name} numbers them)"
            )
        chosen = [by_number[n] for n in sorted(set(numbers))]
    if glob is not None:
        chosen = [s for s in chosen if fnmatch.fnmatchcase(s.request.url, glob)]
    if not chosen:
        raise RerecordError(f"no interaction of cassette {name!r} matches; nothing was changed")
    return chosen


def _request(s: StoredInteraction, settings: Settings, overrides: dict[str, str]) -> Request:
    """The stored request with its redacted headers filled in, as it is sent again."""
    if REDACTED in s.request.url:
        raise RerecordError(
            f"#{s.number} {s.request.method} {s.request.url.split('?', 1)[0]}: its URL holds a "
            "redacted value (a key in the query), which rerecord cannot restore; nothing "
            "was sent"
        )
    templates = {n.lower(): t for n, t in settings.rerecord_headers}
    headers: list[tuple[str, str]] = []
    for hname, value in end_to_end(s.request.headers, drop=NOT_FORWARDED):
        if value == REDACTED:
            value = _fill(s, hname, overrides, templates)
        elif hname.lower() in overrides:
            value = overrides[hname.lower()]
        headers.append((hname, value))
    return Request(s.request.method, s.request.url, tuple(headers), s.request.body)


def _fill(
    s: StoredInteraction, hname: str, overrides: dict[str, str], templates: dict[str, str]
) -> str:
    where = f"#{s.number} {s.request.method} {s.request.url.split('?', 1)[0]}"
    if hname.lower() in overrides:
        return overrides[hname.lower()]
    template = templates.get(hname.lower())
    if template is None:
        raise RerecordError(
            f"{where}: its {hname} header was redacted and nothing fills it: pass "
            f"-H '{hname}: VALUE', or add it to [rerecord] headers; nothing was sent"
        )

    def variable(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if not value:
            raise RerecordError(
                f"{where}: its {hname} header was redacted, and ${{{m.group(1)}}} "
                f"([rerecord] headers) is not set in the environment; set it or pass "
                f"-H '{hname}: VALUE'; nothing was sent"
            )
        return value

    return _VARIABLE.sub(variable, template)


async def _send(
    session: aiohttp.ClientSession, s: StoredInteraction, request: Request, settings: Settings
) -> Answer:
    loop = asyncio.get_running_loop()
    where = f"#{s.number} {s.request.method} {s.request.url.split('?', 1)[0]}"
    recorded_at = datetime.now(UTC)
    t0 = loop.time()

    def ms() -> float:
        return round((loop.time() - t0) * 1000, 3)

    try:
        upstream = await send(session, request)
    except UpstreamError as exc:
        raise RerecordError(f"{where}: {exc}; nothing was changed") from None
    ttfb = ms()
    head = response_head(upstream)
    if head.status >= 400 and s.response.status < 400:
        upstream.release()
        raise RerecordError(
            f"{where}: the upstream answered {head.status} where {s.response.status} was "
            "recorded (a wrong or missing key?); nothing was changed"
        )
    framer = framer_for(upstream.headers.get("Content-Type"))
    events: list[Event] = []
    try:
        async for chunk in upstream.content.iter_any():
            t = ms()
            events += [Event(t, data) for data in framer.feed(chunk)]
        events += [Event(ms(), data) for data in framer.close()]
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RerecordError(
            f"{where}: the upstream broke the answer off ({describe(exc)}); nothing was changed"
        ) from None
    finally:
        upstream.release()
    redacted = settings.redact.head(ResponseHead(head.status, head.headers))
    return Answer(s.id, redacted, tuple(events), recorded_at, ttfb, ms())


def _report(fresh: list[Fresh]) -> int:
    """The drift report, one block per interaction; how many changed shape."""
    changed = 0
    for f in fresh:
        s = f.stored
        lines = drift(f.old, f.new)
        verdict = "shape changed" if lines else "same shape"
        print(f"#{s.number} {s.request.method} {s.request.url.split('?', 1)[0]}: {verdict}")
        for line in [*lines, *facts(f.old, f.new)]:
            print(f"    {line}")
        changed += bool(lines)
    sys.stdout.flush()
    return changed
