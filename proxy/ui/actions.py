"""The UI's state changes: delete an interaction or a cassette, switch the mode or the
active cassette, start a new replay run. Each is a `POST` of JSON from the UI's own pages:
the admin guard has checked the Host, the Content-Type and the Origin (a cross-origin form
cannot send JSON without a preflight, which rrproxy never grants); here the CSRF token
(`X-Rrproxy-Csrf`, from the page) is checked as well, and whether changes are allowed."""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web
from sqlalchemy import delete, select

from proxy.cassettes.file_format import file_name
from proxy.config import Mode
from proxy.core.records import check_cassette_name
from proxy.errors import BadRequest, NotFound, Refused
from proxy.serve.pipeline import read_body
from proxy.store import maintenance
from proxy.store.models import Cassette, Interaction
from proxy.ui.context import UI, Ui

CSRF_HEADER = "X-Rrproxy-Csrf"


async def _checked(request: web.Request, *, needs_proxy: bool = False) -> tuple[Ui, dict[str, Any]]:
    ui = request.app[UI]
    token = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(token.encode(), ui.csrf.encode()):
        raise Refused(
            f"refused: no valid {CSRF_HEADER} token; changes are made from rrproxy's own "
            "pages (reload the page for a fresh one)"
        )
    if needs_proxy and (ui.services is None or ui.run is None):
        raise BadRequest("this UI browses a store; it runs no proxy to switch")
    if not needs_proxy and ui.writer is None:
        raise Refused("refused: this UI is read-only (rrproxy ui --writable allows changes)")
    raw = await read_body(request, ui.settings.request_body_timeout)
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return ui, body


def _new_run(ui: Ui) -> None:
    """What the store holds changed (or the run was asked to restart): counters back to
    zero, cassettes read again."""
    if ui.services is not None and ui.run is not None:
        ui.run.new_run(ui.services)  # (which empties `ui.misses`, as POST /_rrproxy/reset)
    else:
        ui.misses.clear()


async def delete_interaction(request: web.Request) -> web.Response:
    ui, body = await _checked(request)
    assert ui.writer is not None
    try:
        interaction_id = int(body.get("id", ""))
    except (TypeError, ValueError):
        raise BadRequest('send {"id": N}, the interaction\'s id') from None
    if ui.cassette_dir is not None:
        raise BadRequest(
            "the cassettes are files in a directory here: edit or re-record the file "
            "(a whole cassette can be deleted)"
        )
    async with ui.writer.begin() as conn:
        name = await conn.scalar(
            select(Cassette.name).join(Interaction).where(Interaction.id == interaction_id)
        )
        if name is None:
            raise NotFound(f"no interaction {interaction_id} in the store")
        await conn.execute(delete(Interaction).where(Interaction.id == interaction_id))
    _new_run(ui)
    return web.json_response({"status": "deleted", "id": interaction_id, "cassette": name})


async def delete_cassette(request: web.Request) -> web.Response:
    ui, body = await _checked(request)
    assert ui.writer is not None
    name = str(body.get("name", ""))
    async with ui.writer.begin() as conn:
        if not await maintenance.delete_cassette(conn, name):
            raise NotFound(f"no cassette named {name!r} in the store")
    if ui.cassette_dir is not None:
        (ui.cassette_dir / file_name(name)).unlink(missing_ok=True)
    ui.scans.pop(name, None)
    _new_run(ui)
    return web.json_response({"status": "deleted", "cassette": name})


async def set_mode(request: web.Request) -> web.Response:
    ui, body = await _checked(request, needs_proxy=True)
    assert ui.run is not None
    try:
        mode = Mode(str(body.get("mode", "")))
    except ValueError:
        modes = ", ".join(m.value for m in Mode)
        raise BadRequest(f"unknown mode {body.get('mode')!r} (modes: {modes})") from None
    ui.run.mode = mode
    return web.json_response({"status": "ok", "mode": mode.value})


async def set_cassette(request: web.Request) -> web.Response:
    ui, body = await _checked(request, needs_proxy=True)
    assert ui.run is not None
    try:
        name = check_cassette_name(str(body.get("name", "")))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    ui.run.cassette = name
    _new_run(ui)
    return web.json_response({"status": "ok", "cassette": name})


async def reset(request: web.Request) -> web.Response:
    ui, _ = await _checked(request, needs_proxy=True)
    _new_run(ui)
    return web.json_response({"status": "reset"})
