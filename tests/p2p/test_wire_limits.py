"""Pure tests of dfl.p2p.wire codecs, dfl.p2p.limits bookkeeping and HostConfig validation."""

from __future__ import annotations

import msgpack
import pytest

from dfl.errors import ConfigError, InvalidBlock
from dfl.p2p import wire
from dfl.p2p.host import HostConfig
from dfl.p2p.limits import ConcurrencyCounter, KeyedBuckets, PeerScores, TokenBucket


def test_blob_request_roundtrip_and_rejects() -> None:
    d = bytes(range(32))
    frame = wire.encode_blob_request(d)
    assert len(frame) <= wire.MAX_BLOB_REQUEST_BYTES
    assert wire.decode_blob_request(wire.unpack(frame, wire.MAX_BLOB_REQUEST_BYTES)) == d
    for bad in ([], [b"x" * 31], [d, d], ["text" * 8], {"d": d}, None, 7):
        with pytest.raises(InvalidBlock):
            wire.decode_blob_request(bad)
    with pytest.raises(InvalidBlock):
        wire.unpack(b"\xc1", 10)  # never-used msgpack byte
    with pytest.raises(InvalidBlock):
        wire.unpack(b"\x90" * 100, 64)  # over the size limit


def test_blob_header_roundtrip_and_rejects() -> None:
    for status, length in ((wire.BlobStatus.OK, 4_000_000), (wire.BlobStatus.NOT_FOUND, 0)):
        assert wire.decode_blob_header(wire.encode_blob_header(status, length)) == (status, length)
    with pytest.raises(InvalidBlock):
        wire.decode_blob_header(b"\x09" + b"\0" * 8)  # unknown status
    with pytest.raises(InvalidBlock):
        wire.decode_blob_header(wire.BLOB_HEADER.pack(1, 5))  # not-found with a payload
    with pytest.raises(InvalidBlock):
        wire.decode_blob_header(b"\0")


def test_peers_codec_roundtrip_limits_and_rejects() -> None:
    addrs = ["/ip4/10.0.0.1/tcp/4001", "/ip6/::1/tcp/4001"]
    req = wire.unpack(wire.encode_peers_request(addrs, 1000), wire.MAX_PEERS_REQUEST_BYTES)
    assert wire.decode_peers_request(req) == (addrs, wire.MAX_PEERS_PER_RESPONSE)
    entries = [(f"12D3KooW{i:040d}", addrs) for i in range(200)]
    frame = wire.encode_peers_response(entries)
    assert len(frame) <= wire.MAX_PEERS_RESPONSE_BYTES
    decoded = wire.decode_peers_response(wire.unpack(frame, wire.MAX_PEERS_RESPONSE_BYTES))
    assert len(decoded) == wire.MAX_PEERS_PER_RESPONSE and decoded[0] == entries[0]
    bad_objects = [
        [["peer", ["no-slash"]]],
        [["peer/../x", addrs]],
        [["peer", ["/ip4/1.2.3.4/tcp/1"] * 9]],
        [["peer", [b"/bytes"]]],
        [[1, addrs]],
        "nope",
    ]
    for bad in bad_objects:
        with pytest.raises(InvalidBlock):
            wire.decode_peers_response(bad)
    with pytest.raises(InvalidBlock):
        wire.decode_peers_request([addrs, -1])
    with pytest.raises(InvalidBlock):
        wire.decode_peers_request(msgpack.unpackb(msgpack.packb({"a": 1})))


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one token back after 0.5 s at 2/s
    assert not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped
    keyed = KeyedBuckets(rate=1.0, burst=1, max_entries=2)
    assert keyed.take("a", 0.0) and not keyed.take("a", 0.0)
    assert keyed.take("b", 0.0) and keyed.take("c", 0.0)  # "a" evicted, memory bounded
    assert keyed.take("a", 0.0)


def test_peer_scores_decay_ban_and_expiry() -> None:
    scores = PeerScores(ban_threshold=10.0, ban_s=60.0, half_life_s=10.0, max_entries=8)
    assert not scores.penalize("p", 8.0, "x", now=0.0)
    assert scores.score("p", 10.0) == pytest.approx(4.0)  # one half-life later
    assert not scores.penalize("p", 5.0, "y", now=10.0)  # 4 + 5 < 10
    assert scores.penalize("p", 2.0, "z", now=10.0)  # reaches 11: banned
    assert scores.is_banned("p", 69.0) and scores.reason("p") == "z"
    assert not scores.penalize("p", 100.0, "again", now=20.0)  # already banned
    assert scores.expire(69.0) == []
    assert scores.expire(70.0) == ["p"]
    assert not scores.is_banned("p", 70.0) and scores.score("p", 70.0) == 0.0
    for i in range(20):  # bounded memory
        scores.penalize(f"q{i}", 1.0, "spam", now=0.0)
    assert len(scores._records) <= 8
    with pytest.raises(ValueError):
        scores.penalize("p", -1.0, "negative", now=0.0)


def test_concurrency_counter() -> None:
    slots = ConcurrencyCounter(per_key=2, total=3)
    assert slots.try_acquire("a") and slots.try_acquire("a") and not slots.try_acquire("a")
    assert slots.try_acquire("b") and not slots.try_acquire("c")  # total reached
    slots.release("a")
    assert slots.try_acquire("c") and slots.in_flight() == 3
    with pytest.raises(RuntimeError):
        slots.release("zzz")


def test_host_config_validation() -> None:
    ok = HostConfig(seed=b"\1" * 32, topic="/t")
    assert ok.max_peers == 64
    bad_kwargs = [
        {"seed": b"short"},
        {"topic": ""},
        {"heartbeat_s": 0},
        {"max_header_bytes": 2 * 1024 * 1024},
        {"listen": ("/ip4/127.0.0.1/udp/1",)},
        {"listen": ("not a multiaddr",)},
        {"bootstrap": ("/ip4/127.0.0.1/tcp/1",)},  # no /p2p/ part
        {"backoff_min_s": 10.0, "backoff_max_s": 1.0},
    ]
    for kwargs in bad_kwargs:
        args = {"seed": b"\1" * 32, "topic": "/t", **kwargs}
        with pytest.raises(ConfigError):
            HostConfig(**args)  # type: ignore[arg-type]
