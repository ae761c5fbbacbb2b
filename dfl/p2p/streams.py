"""Bounded reads and writes on libp2p streams (trio).

Every read here is bounded in size (the caller passes the limit) and in time (``idle_s``: the
longest wait for the next chunk). Totals in time are the caller's job (``trio.fail_after``).
libp2p stream exceptions never escape: they become :class:`~dfl.p2p.errors.PeerUnreachable`
(stream broke), :class:`~dfl.p2p.errors.P2PTimeout` (peer silent) or
:class:`dfl.errors.InvalidBlock` (peer sent bytes that break the framing).
"""

from __future__ import annotations

from typing import Any, Protocol

import msgpack
import trio

from dfl.errors import InvalidBlock
from dfl.p2p.errors import P2PTimeout, PeerUnreachable

CHUNK = 256 * 1024


class ByteStream(Protocol):
    """The part of libp2p's ``INetStream`` used here."""

    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


class StreamEnded(PeerUnreachable):
    """The peer closed the stream before the expected bytes arrived."""


async def _read_some(stream: ByteStream, n: int, idle_s: float) -> bytes:
    with trio.move_on_after(idle_s) as scope:
        try:
            chunk = await stream.read(n)
        except trio.Cancelled:
            raise
        except Exception as exc:
            # libp2p raises StreamEOF / StreamReset / StreamError / IOException ... all mean
            # "nothing more will come"
            if type(exc).__name__ == "StreamEOF":
                raise StreamEnded("stream closed by peer") from None
            raise PeerUnreachable(f"stream broke: {type(exc).__name__}: {exc}") from None
    if scope.cancelled_caught:
        raise P2PTimeout(f"peer silent for {idle_s:g} s")
    if not chunk:
        raise StreamEnded("stream closed by peer")
    return chunk


async def read_exactly(stream: ByteStream, n: int, *, idle_s: float) -> bytes:
    """Read exactly ``n`` bytes (``n`` is the caller's already-checked limit)."""
    buf = bytearray()
    while len(buf) < n:
        buf += await _read_some(stream, min(CHUNK, n - len(buf)), idle_s)
    return bytes(buf)


async def read_into(stream: ByteStream, n: int, *, idle_s: float, on_chunk: Any = None) -> bytes:
    """Read exactly ``n`` bytes into one buffer, calling ``on_chunk(len)`` after each chunk."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        chunk = await _read_some(stream, min(CHUNK, n - got), idle_s)
        view[got : got + len(chunk)] = chunk
        got += len(chunk)
        if on_chunk is not None:
            on_chunk(len(chunk))
    view.release()
    return bytes(buf)


async def read_msgpack(stream: ByteStream, max_bytes: int, *, idle_s: float) -> Any:
    """Read one msgpack object of at most ``max_bytes`` bytes from the stream."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max_bytes)
    got = 0
    while True:
        if got >= max_bytes:
            raise InvalidBlock("bad-frame", f"no complete msgpack object in {max_bytes} bytes")
        chunk = await _read_some(stream, max_bytes - got, idle_s)
        got += len(chunk)
        try:
            unpacker.feed(chunk)
            return unpacker.unpack()
        except msgpack.OutOfData:
            continue
        except Exception as exc:
            raise InvalidBlock("bad-frame", f"not msgpack: {type(exc).__name__}") from None


async def write_all(stream: ByteStream, data: bytes, *, idle_s: float) -> None:
    """Write ``data`` in chunks, each bounded by ``idle_s``; stream errors -> PeerUnreachable."""
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        with trio.move_on_after(idle_s) as scope:
            try:
                await stream.write(bytes(view[start : start + CHUNK]))
            except trio.Cancelled:
                raise
            except Exception as exc:
                raise PeerUnreachable(f"stream broke: {type(exc).__name__}: {exc}") from None
        if scope.cancelled_caught:
            raise P2PTimeout(f"peer did not read for {idle_s:g} s")


async def close_quietly(stream: Any, *, reset: bool = False) -> None:
    """Close (or reset) a stream, swallowing every error; bounded to 2 s, shielded from cancel."""
    with trio.CancelScope(shield=True), trio.move_on_after(2.0):
        try:
            if reset:
                await stream.reset()
            else:
                await stream.close()
        except trio.Cancelled:
            raise
        except Exception:
            pass
