"""rrproxy as a forward proxy (HTTP_PROXY / HTTPS_PROXY): absolute form and CONNECT.

`forward_proxy` is a middleware that sees every request before the routes do:
- `GET http://host/path` (absolute form) goes through the pipeline to `http://host`.
- `CONNECT host:port` is answered 200 and the connection taken from aiohttp's handler. A
  pass-through host is spliced blind to the upstream (`tunnel.Tunnel`). Any other gets TLS
  terminated with a certificate for `host` signed by rrproxy's CA (`loop.start_tls`), and
  the decrypted stream goes to a second aiohttp server (`TunnelServer`) whose requests run
  through the same pipeline, upstream `https://host:port`.
An intercepted CONNECT opens nothing upstream by itself: in replay mode the requests inside
are answered from the cassette, with no DNS lookup and no connection.

aiohttp internals used here (the reason pyproject.toml bounds `aiohttp<4`; check each on an
aiohttp upgrade):
- `TunnelServer` subclasses the low-level `web.Server`: calls `self()` for a
  `web.RequestHandler` fed a connection by hand (`connection_made` after `loop.start_tls`),
  overrides `connection_lost(handler, exc)`, uses `pre_shutdown()` and `shutdown()`.
- `web.Server(request_factory=...)`: the factory's arguments (`RawRequestMessage` from
  `aiohttp.http_parser`, `StreamReader` from `aiohttp.streams`, the handler, the writer,
  the task) and `web.Request`'s positional constructor with `client_max_size=`, `state=`.
- Taking a CONNECT's connection from aiohttp: writing on `request.transport`, then
  `request.protocol.connection_lost(None)` to detach aiohttp's handler from it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from proxy.config import Settings
from proxy.core.hosts import Target, parse_absolute, parse_authority
from proxy.core.printable import printable
from proxy.errors import BadRequest, CertificateError, ConfigError, RrproxyError, UpstreamError
from proxy.forward_proxy.ca import CertificateAuthority
from proxy.forward_proxy.policy import (
    TARGET,
    Action,
    check_listen,
    check_loops,
    forward_action,
    refuse_loop,
)
from proxy.forward_proxy.tunnel import Tunnel

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RenderError = Callable[[RrproxyError], web.StreamResponse]

KEEPALIVE_S = 75.0  # idle connections inside tunnels, as aiohttp's run_app default


class TunnelServer(web.Server):
    """aiohttp's HTTP server for decrypted CONNECT tunnels. Each request carries its
    tunnel's target (`policy.TARGET`); each tunnel's end can be awaited."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        client_max_size: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, request_factory=self._request, **kwargs)
        self._client_max_size = client_max_size
        self._tunnels: dict[web.RequestHandler, tuple[Target, asyncio.Future[None]]] = {}

    def open(self, target: Target) -> tuple[web.RequestHandler, asyncio.Future[None]]:
        """A request handler for a new tunnel to `target`, and a future done at its end."""
        protocol = self()
        ended = asyncio.get_running_loop().create_future()
        self._tunnels[protocol] = (target, ended)
        return protocol, ended

    def forget(self, protocol: web.RequestHandler) -> None:
        self._tunnels.pop(protocol, None)

    def connection_lost(
        self, handler: web.RequestHandler, exc: BaseException | None = None
    ) -> None:
        super().connection_lost(handler, exc)
        if (tunnel := self._tunnels.get(handler)) is not None and not tunnel[1].done():
            tunnel[1].set_result(None)

    def _request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        target, _ = self._tunnels[protocol]
        return web.Request(
            message,
            payload,
            protocol,
            writer,
            task,
            asyncio.get_running_loop(),
            client_max_size=self._client_max_size,
            state={TARGET: target},
        )


class Interceptor:
    """Everything CONNECT needs: rrproxy's CA (loaded or created on first use), the server
    for decrypted tunnels, and the open blind tunnels."""

    def __init__(self, settings: Settings, handler: Handler, render_error: RenderError) -> None:
        self.settings = settings
        self.handler = handler  # the record/replay pipeline, for every request inside
        self._render_error = render_error
        self._server = TunnelServer(
            self._handle,
            client_max_size=settings.max_request_body,
            keepalive_timeout=KEEPALIVE_S,
            access_log=None,  # as the outer server: the pipeline logs each interaction
        )
        self._blind: set[Tunnel] = set()
        self._ca_dir = Path(settings.ca_dir).expanduser()
        self._ca: CertificateAuthority | None = None
        self._ca_lock = asyncio.Lock()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert isinstance(request, web.Request)  # TunnelServer makes them
        try:
            return await self.handler(request)
        except RrproxyError as exc:
            if exc.status >= 500:
                where = printable(request[TARGET].origin + request.path)
                log.warning(
                    "%s %s -> %d: %s", printable(request.method), where, exc.status, printable(exc)
                )
            return self._render_error(exc)

    async def ca(self) -> CertificateAuthority:
        async with self._ca_lock:
            if self._ca is None:
                directory = self._ca_dir
                try:
                    self._ca = await asyncio.to_thread(
                        CertificateAuthority.load_or_create, directory
                    )
                except (CertificateError, OSError) as exc:
                    raise ConfigError(f"ca_dir = {str(directory)!r}: {exc}") from exc
            return self._ca

    async def intercept(self, request: web.Request, target: Target) -> web.StreamResponse:
        """Terminate TLS for `target` and serve the requests inside until the tunnel ends."""
        ca = await self.ca()
        context = await asyncio.to_thread(ca.ssl_context_for, target.host)
        transport = _established(request)
        if transport is None:
            return _done()
        protocol, ended = self._server.open(target)
        try:
            try:
                tls = await asyncio.get_running_loop().start_tls(
                    transport,
                    protocol,
                    context,
                    server_side=True,
                    ssl_handshake_timeout=self.settings.connect_timeout,
                )
            except OSError as exc:  # ssl.SSLError is one; start_tls has closed the connection
                log.warning(
                    "CONNECT %s: the client's TLS handshake failed (%s); does it trust %s?",
                    *(target.authority, exc, ca.cert_path),
                )
                return _done()
            assert tls is not None
            if tls.is_closing():  # the client left right after the handshake
                return _done()
            protocol.connection_made(tls)
            log.debug("CONNECT %s: intercepting", target.authority)
            await ended
        finally:
            self._server.forget(protocol)
            transport.close()
            _detach(request)
        return _done()

    async def tunnel_blind(self, request: web.Request, target: Target) -> web.StreamResponse:
        """Join the client to `target` byte for byte: nothing decrypted, nothing recorded."""
        tunnel = Tunnel()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                await tunnel.connect(target.host, target.port)
        except (OSError, TimeoutError) as exc:
            tunnel.close()
            reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or exc
            raise UpstreamError(f"cannot connect to {target.authority}: {reason}") from exc
        transport = _established(request)
        if transport is None:
            tunnel.close()
            return _done()
        self._blind.add(tunnel)
        try:
            tunnel.join(transport)
            log.info("CONNECT %s: tunnelled blind (pass-through host)", target.authority)
            await tunnel.closed
        finally:
            self._blind.discard(tunnel)
            tunnel.close()
            _detach(request)
        return _done()

    async def shutdown(self, grace_s: float) -> None:
        """Let requests in decrypted tunnels finish (up to `grace_s`), then end every tunnel."""
        for tunnel in self._blind:
            tunnel.close()
        self._server.pre_shutdown()  # idle connections close now, busy ones when done
        await self._server.shutdown(grace_s)


def _established(request: web.Request) -> asyncio.Transport | None:
    """Answer the CONNECT and return its connection, which rrproxy now owns (None: the
    client has hung up already)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return None
    version = request.version
    transport.write(
        f"HTTP/{version.major}.{version.minor} 200 Connection Established\r\n\r\n".encode()
    )
    return transport


def _detach(request: web.Request) -> None:
    """Tell aiohttp's handler of the CONNECT that its connection is gone (handed over to a
    tunnel that has ended): it forgets the connection, and writes nothing more on it."""
    request.protocol.connection_lost(None)


def _done() -> web.StreamResponse:
    """What the CONNECT handler returns: aiohttp logs it, and cannot send it (detached)."""
    return web.Response(status=200, reason="Connection Established")


async def _connect(request: web.Request) -> web.StreamResponse:
    interceptor = request.app[INTERCEPTOR]
    settings = interceptor.settings
    try:
        target = parse_authority(request.raw_path, "https")
    except ValueError as exc:
        raise BadRequest(f"bad CONNECT target: {exc}") from None
    refuse_loop(request, settings, target, f"CONNECT {target.authority}")
    if forward_action(target, settings) is Action.PASSTHROUGH:
        return await interceptor.tunnel_blind(request, target)
    return await interceptor.intercept(request, target)


async def _absolute(request: web.Request) -> web.StreamResponse:
    interceptor = request.app[INTERCEPTOR]
    settings = interceptor.settings
    try:
        target, _ = parse_absolute(request.raw_path)
    except ValueError as exc:
        raise BadRequest(f"bad request target: {exc}") from None
    refuse_loop(request, settings, target, request.raw_path)
    if forward_action(target, settings) is Action.PASSTHROUGH:
        headers = request.headers.copy()
        headers["Rrproxy-Mode"] = "passthrough"
        request = request.clone(headers=headers)
    request[TARGET] = target
    return await interceptor.handler(request)


@web.middleware
async def forward_proxy(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CONNECT and absolute-form requests are the forward proxy's; the rest go on."""
    if request.method == "CONNECT":
        return await _connect(request)
    if not request.raw_path.startswith("/"):
        return await _absolute(request)
    return await handler(request)


INTERCEPTOR = web.AppKey("interceptor", Interceptor)


def setup(
    app: web.Application, settings: Settings, handler: Handler, render_error: RenderError
) -> None:
    """Make `app` a forward proxy too: the middleware (after the error middleware, which
    renders its refusals) and the interceptor's lifetime. `handler` serves each request
    (absolute form, or inside a decrypted tunnel) once its target is known."""
    check_loops(settings)
    warning = check_listen(settings)
    if warning is not None:
        log.warning(warning)
    app.middlewares.append(forward_proxy)

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        app[INTERCEPTOR] = Interceptor(settings, handler, render_error)
        yield

    async def shutdown(app: web.Application) -> None:
        await app[INTERCEPTOR].shutdown(settings.shutdown_timeout)

    app.cleanup_ctx.append(lifetime)
    app.on_shutdown.append(shutdown)
