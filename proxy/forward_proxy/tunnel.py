"""Blind tunnels: bytes copied both ways between two connections, never decrypted.

For pass-through hosts. Memory stays bounded whatever the two speeds: when one side's
write buffer is full, asyncio tells that side's protocol (`pause_writing`), which stops
reading from the other side until the buffer drains (`resume_writing`).
"""

from __future__ import annotations

import asyncio
from typing import cast


class _Side(asyncio.Protocol):
    """One connection of a tunnel: what arrives here is written to the other side."""

    def __init__(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.eof = False

    def _peer_transport(self) -> asyncio.Transport | None:
        return self.peer.transport if self.peer is not None else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._tunnel.opened()
        if self.peer is None:
            self.transport.pause_reading()  # nowhere to put data until the tunnel is joined

    def data_received(self, data: bytes) -> None:
        if (peer := self._peer_transport()) is not None:
            peer.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self._peer_transport()
        if peer is None or (self.peer is not None and self.peer.eof):
            self._tunnel.close()
        elif peer.can_write_eof():
            peer.write_eof()  # half-close: the other side may still answer
        return True

    def pause_writing(self) -> None:
        if (peer := self._peer_transport()) is not None:
            peer.pause_reading()

    def resume_writing(self) -> None:
        if (peer := self._peer_transport()) is not None:
            peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._tunnel.lost()


class Tunnel:
    """Two connections joined. `closed` resolves once every connection opened is gone."""

    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._upstream = _Side(self)
        self._client = _Side(self)
        self._open = 0

    async def connect(self, host: str, port: int) -> None:
        """Open the upstream side (it reads nothing until `join`); bound it with a timeout."""
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self._upstream, host, port)

    def join(self, client: asyncio.Transport) -> None:
        """Take over the client's connection and start copying both ways."""
        self._client.peer, self._upstream.peer = self._upstream, self._client
        client.set_protocol(self._client)
        self._client.connection_made(client)
        if self._upstream.transport is None:  # the upstream hung up already
            self.close()
            return
        self._upstream.transport.resume_reading()
        client.resume_reading()

    def close(self) -> None:
        for side in (self._client, self._upstream):
            if side.transport is not None:
                side.transport.close()

    def opened(self) -> None:
        self._open += 1

    def lost(self) -> None:
        self._open -= 1
        self.close()  # one side gone: the tunnel is over
        if self._open == 0 and not self.closed.done():
            self.closed.set_result(None)
