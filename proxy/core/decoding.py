"""Incremental decoding of a compressed body (`Content-Encoding`), for finding its events.

rrproxy relays and stores a compressed body exactly as it came; it decodes a copy beside
the relay only to see where the events of the decoded stream end (`proxy.core.pieces`)
and, in `rrproxy show`, to display them. Memory is bounded: output comes in slices of about
`slice_bytes` (zlib: at most; brotli stops a little past it), however much a small input
expands (a "decompression bomb" too).
Pure code: bytes in, bytes out.

Codings: `gzip` (`x-gzip`; several members one after the other too), `deflate` (zlib-wrapped
as RFC 9110 says, or raw, as some servers send it: aiohttp accepts both), and `br` with the
`Brotli` package (Google's; 1.2 or later has the bounded output this needs).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Protocol

import brotli

__all__ = ["DecodeError", "Decoder", "decoded", "decoder_for"]

SLICE_BYTES = 256 * 2**10


class DecodeError(ValueError):
    """The bytes are not what their coding says (the stream is relayed all the same)."""


class Decoder(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of `data` (after what came before), in bounded slices."""
        ...


class _Zlib:
    """gzip or deflate through zlib's streaming decompressor, its output bounded."""

    def __init__(self, coding: str, slice_bytes: int):
        self._coding = coding
        self._slice = slice_bytes
        self._d: zlib._Decompress | None = None
        self._head = b""  # deflate: the first bytes, until they tell zlib from raw
        self._ended = False

    def _start(self, first: bytes) -> zlib._Decompress:
        if self._coding == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # RFC 1950: CMF (method 8) and FLG make a multiple of 31; else raw deflate (RFC 1951)
        wrapped = first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._d is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return
            self._d = self._start(data)
        try:
            while data:
                if self._ended:  # gzip: another member follows; deflate: trailing bytes
                    if self._coding != "gzip":
                        return
                    self._d, self._ended = self._start(data), False
                d = self._d
                out = d.decompress(data, self._slice)
                if out:
                    yield out
                data = d.unconsumed_tail
                while len(out) == self._slice and not data and not d.eof:
                    out = d.decompress(b"", self._slice)  # what zlib still holds
                    if out:
                        yield out
                    data = d.unconsumed_tail
                if d.eof:
                    self._ended = True
                    data = d.unused_data + data
        except zlib.error as exc:
            raise DecodeError(f"not valid {self._coding} data: {exc}") from None


class _Brotli:
    def __init__(self, slice_bytes: int):
        self._d = brotli.Decompressor()
        self._slice = slice_bytes

    def feed(self, data: bytes) -> Iterator[bytes]:
        d = self._d
        try:
            if d.is_finished():
                return
            out = d.process(data, output_buffer_limit=self._slice)
            if out:
                yield out
            while not d.is_finished():  # what brotli still holds, a slice at a time
                out = d.process(b"", output_buffer_limit=self._slice)
                if not out:
                    break
                yield out
        except brotli.error as exc:
            raise DecodeError(f"not valid br data: {exc}") from None


_CODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate", "br": "br"}


def decoder_for(content_encoding: str | None, slice_bytes: int = SLICE_BYTES) -> Decoder | None:
    """A decoder for a body with this `Content-Encoding` value; None when the body is not
    compressed (absent, `identity`) or compressed in a way not decoded here (several
    codings, or an unknown one): `coded(...)` tells the two apart."""
    coding = _coding(content_encoding)
    if coding is None:
        return None
    if coding == "br":
        return _Brotli(slice_bytes)
    return _Zlib(coding, slice_bytes)


def coded(content_encoding: str | None) -> bool:
    """Whether the body is compressed at all (whether or not it can be decoded here)."""
    value = (content_encoding or "").strip().lower()
    return value not in ("", "identity")


def _coding(content_encoding: str | None) -> str | None:
    return _CODINGS.get((content_encoding or "").strip().lower())


def decoded(content_encoding: str | None, parts: list[bytes]) -> list[bytes] | None:
    """Each part's decoded bytes, decoding them in order as one stream (for display); None
    when the body is not compressed, or not in a coding decoded here, or not valid."""
    decoder = decoder_for(content_encoding)
    if decoder is None:
        return None
    try:
        return [b"".join(decoder.feed(part)) for part in parts]
    except DecodeError:
        return None
