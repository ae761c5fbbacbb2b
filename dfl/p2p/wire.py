"""Wire formats of dfl's own libp2p stream protocols (pure: no I/O, no libp2p).

``/dfl/blob/1`` -- fetch one model blob by digest
    request  = msgpack ``[digest]`` with ``digest`` a 32-byte bin (BLAKE2b-256 of the blob);
    response = 9-byte header ``>BQ`` (status, length) followed, for status ``OK`` only, by exactly
    ``length`` payload bytes; then the server closes the stream. Any other status carries
    ``length == 0``. The client checks ``length`` against its own limit *before* reading the
    payload and the digest after it.

``/dfl/peers/1`` -- exchange dialable addresses
    request  = msgpack ``[listen_addrs, max_peers]``: the requester's own listen multiaddrs
    (strings, without ``/p2p/``) and how many entries it wants back;
    response = msgpack ``[[peer_id, [addr, ...]], ...]``, the responder's own entry first.
    The peer id of a requester is the one authenticated by Noise, never a claimed one.

Invariants: every decoder is total (returns a value or raises :class:`dfl.errors.InvalidBlock`
with ``reason="bad-frame"``); every encoded frame is at most its ``MAX_*`` constant; pickle is
never used.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import Any

import msgpack

from dfl.errors import InvalidBlock

BLOB_PROTOCOL = "/dfl/blob/1"
PEERS_PROTOCOL = "/dfl/peers/1"

DIGEST_SIZE = 32
MAX_BLOB_REQUEST_BYTES = 64
BLOB_HEADER = struct.Struct(">BQ")

MAX_ADDR_CHARS = 256
MAX_ADDRS_PER_PEER = 8
MAX_PEER_ID_CHARS = 128
MAX_PEERS_PER_RESPONSE = 64
MAX_PEERS_REQUEST_BYTES = 8 * 1024
MAX_PEERS_RESPONSE_BYTES = 64 * 1024


class BlobStatus(IntEnum):
    """Status byte of a ``/dfl/blob/1`` response."""

    OK = 0
    NOT_FOUND = 1
    BUSY = 2
    BAD_REQUEST = 3
    ERROR = 4


def _bad(detail: str) -> InvalidBlock:
    return InvalidBlock("bad-frame", detail)


def unpack(data: bytes, max_bytes: int) -> Any:
    """Decode one msgpack object of at most ``max_bytes`` bytes (strings as str, bins as bytes)."""
    if len(data) > max_bytes:
        raise _bad(f"frame of {len(data)} bytes exceeds {max_bytes}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise _bad(f"not msgpack: {type(exc).__name__}") from None


# -- /dfl/blob/1 ---------------------------------------------------------------------------


def encode_blob_request(digest: bytes) -> bytes:
    """Frame a request for the blob whose BLAKE2b-256 is ``digest``."""
    if len(digest) != DIGEST_SIZE:
        raise ValueError(f"digest must be {DIGEST_SIZE} bytes, got {len(digest)}")
    data: bytes = msgpack.packb([bytes(digest)], use_bin_type=True)
    return data


def decode_blob_request(obj: Any) -> bytes:
    """Validate a decoded request object; return the digest."""
    if not (isinstance(obj, list) and len(obj) == 1):
        raise _bad("blob request must be a 1-element array")
    digest = obj[0]
    if not (isinstance(digest, bytes) and len(digest) == DIGEST_SIZE):
        raise _bad(f"blob request digest must be {DIGEST_SIZE} bytes")
    return digest


def encode_blob_header(status: BlobStatus, length: int = 0) -> bytes:
    """Frame the response header; ``length`` must be 0 unless ``status`` is OK."""
    if status != BlobStatus.OK and length != 0:
        raise ValueError("only OK responses carry a payload")
    return BLOB_HEADER.pack(int(status), length)


def decode_blob_header(header: bytes) -> tuple[BlobStatus, int]:
    """Parse the 9-byte response header."""
    if len(header) != BLOB_HEADER.size:
        raise _bad(f"blob header must be {BLOB_HEADER.size} bytes")
    raw_status, length = BLOB_HEADER.unpack(header)
    try:
        status = BlobStatus(raw_status)
    except ValueError:
        raise _bad(f"unknown blob status {raw_status}") from None
    if status != BlobStatus.OK and length != 0:
        raise _bad(f"status {status.name} with a payload of {length} bytes")
    return status, length


# -- /dfl/peers/1 --------------------------------------------------------------------------


def _check_addrs(addrs: Any) -> list[str]:
    if not isinstance(addrs, list) or len(addrs) > MAX_ADDRS_PER_PEER:
        raise _bad(f"addresses must be an array of at most {MAX_ADDRS_PER_PEER}")
    for addr in addrs:
        if not (
            isinstance(addr, str)
            and 0 < len(addr) <= MAX_ADDR_CHARS
            and addr.startswith("/")
            and addr.isascii()
            and addr.isprintable()
        ):
            raise _bad("address must be a printable ASCII multiaddr string")
    return addrs


def encode_peers_request(listen_addrs: Sequence[str], max_peers: int) -> bytes:
    """Frame a peers request carrying our own listen addresses."""
    addrs = _check_addrs(list(listen_addrs)[:MAX_ADDRS_PER_PEER])
    data: bytes = msgpack.packb([addrs, int(max_peers)], use_bin_type=True)
    if len(data) > MAX_PEERS_REQUEST_BYTES:
        raise ValueError("peers request too large")
    return data


def decode_peers_request(obj: Any) -> tuple[list[str], int]:
    """Validate a decoded peers request; return (requester's addrs, max entries wanted)."""
    if not (isinstance(obj, list) and len(obj) == 2):
        raise _bad("peers request must be a 2-element array")
    addrs, max_peers = obj
    if not (isinstance(max_peers, int) and max_peers >= 0):
        raise _bad("max_peers must be a non-negative integer")
    return _check_addrs(addrs), min(max_peers, MAX_PEERS_PER_RESPONSE)


def encode_peers_response(entries: Sequence[tuple[str, Sequence[str]]]) -> bytes:
    """Frame a peers response; entries beyond the size limits are dropped, never truncated."""
    out: list[list[Any]] = []
    size = 5  # array header
    for peer_id, addrs in entries[:MAX_PEERS_PER_RESPONSE]:
        item = [peer_id, list(addrs)[:MAX_ADDRS_PER_PEER]]
        packed = msgpack.packb(item, use_bin_type=True)
        if size + len(packed) > MAX_PEERS_RESPONSE_BYTES:
            break
        size += len(packed)
        out.append(item)
    data: bytes = msgpack.packb(out, use_bin_type=True)
    return data


def decode_peers_response(obj: Any) -> list[tuple[str, list[str]]]:
    """Validate a decoded peers response; return ``[(peer_id, addrs), ...]``."""
    if not (isinstance(obj, list) and len(obj) <= MAX_PEERS_PER_RESPONSE):
        raise _bad(f"peers response must be an array of at most {MAX_PEERS_PER_RESPONSE}")
    result = []
    for item in obj:
        if not (isinstance(item, list) and len(item) == 2):
            raise _bad("peers entry must be [peer_id, addrs]")
        peer_id, addrs = item
        if not (
            isinstance(peer_id, str) and 0 < len(peer_id) <= MAX_PEER_ID_CHARS and peer_id.isalnum()
        ):
            raise _bad("peer id must be a short alphanumeric string")
        result.append((peer_id, _check_addrs(addrs)))
    return result
