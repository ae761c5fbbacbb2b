"""The signed-peer-record fixes: same verdicts as py-libp2p's own check, fewer verifications."""

from __future__ import annotations

from typing import Any

import pytest
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.pubsub import gossipsub, pubsub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.utils import maybe_consume_signed_record as libp2p_consume

import dfl.p2p.host  # noqa: F401  (installs the dedupe)
from dfl.p2p._libp2p_fixes import cache_host_addrs, deduplicating


def _host(i: int) -> Any:
    return new_host(key_pair=create_new_key_pair(bytes([i]) * 32))


def _rpc_from(host: Any) -> rpc_pb2.RPC:
    rpc = rpc_pb2.RPC()
    rpc.senderRecord, _ = env_to_send_in_RPC(host)
    return rpc


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _counting(original: Any) -> tuple[Any, list[int]]:
    calls = [0]

    def counted(msg: Any, host: Any, peer_id: Any) -> bool:
        calls[0] += 1
        return bool(original(msg, host, peer_id))

    return counted, calls


def test_installed_in_pubsub_and_gossipsub() -> None:
    installed = vars(pubsub)["maybe_consume_signed_record"]
    assert vars(gossipsub)["maybe_consume_signed_record"] is installed
    assert getattr(installed, "original", None) is libp2p_consume


def test_valid_record_verified_once_then_accepted_from_cache() -> None:
    sender, receiver = _host(1), _host(2)
    original, calls = _counting(libp2p_consume)
    consume = deduplicating(original, clock=Clock())
    rpc = _rpc_from(sender)
    for _ in range(5):
        assert consume(rpc, receiver, sender.get_id()) is True
    assert calls[0] == 1
    assert consume.cache.hits == 4  # type: ignore[attr-defined]
    assert libp2p_consume(rpc, receiver, sender.get_id()) is True  # the same verdict


def test_record_of_another_peer_is_refused_every_time() -> None:
    sender, other, receiver = _host(1), _host(3), _host(2)
    original, calls = _counting(libp2p_consume)
    consume = deduplicating(original, clock=Clock())
    rpc = _rpc_from(sender)
    for _ in range(3):
        # a connection peer relaying someone else's record: py-libp2p refuses it
        assert consume(rpc, receiver, other.get_id()) is False
    assert calls[0] == 3  # failures are never cached


def test_tampered_record_is_refused_even_after_the_valid_one() -> None:
    sender, receiver = _host(1), _host(2)
    consume = deduplicating(libp2p_consume, clock=Clock())
    good = _rpc_from(sender)
    assert consume(good, receiver, sender.get_id()) is True
    bad = rpc_pb2.RPC()
    raw = bytearray(good.senderRecord)
    raw[-1] ^= 0x01  # flips a bit of the signature
    bad.senderRecord = bytes(raw)
    assert libp2p_consume(bad, receiver, sender.get_id()) is False
    assert consume(bad, receiver, sender.get_id()) is False


def test_entries_expire_and_are_verified_again() -> None:
    sender, receiver = _host(1), _host(2)
    clock = Clock()
    original, calls = _counting(libp2p_consume)
    consume = deduplicating(original, ttl_s=10.0, clock=clock)
    rpc = _rpc_from(sender)
    assert consume(rpc, receiver, sender.get_id())
    clock.t = 9.9
    assert consume(rpc, receiver, sender.get_id())
    assert calls[0] == 1
    clock.t = 10.0
    assert consume(rpc, receiver, sender.get_id())
    assert calls[0] == 2


def test_cache_is_bounded() -> None:
    receiver = _host(9)
    senders = [_host(i) for i in range(1, 6)]
    original, calls = _counting(libp2p_consume)
    consume = deduplicating(original, max_entries=3, clock=Clock())
    rpcs = [_rpc_from(s) for s in senders]
    for s, rpc in zip(senders, rpcs, strict=True):
        assert consume(rpc, receiver, s.get_id())
    assert len(consume.cache._entries) == 3  # type: ignore[attr-defined]
    assert consume(rpcs[0], receiver, senders[0].get_id())  # evicted: verified again
    assert calls[0] == 6
    assert consume(rpcs[4], receiver, senders[4].get_id())  # still cached
    assert calls[0] == 6


def test_rpc_without_record_goes_to_libp2p() -> None:
    original, calls = _counting(libp2p_consume)
    consume = deduplicating(original, clock=Clock())
    assert consume(rpc_pb2.RPC(), _host(2), _host(1).get_id()) is True
    assert calls[0] == 1


class _AddrSource:
    """Stands for a host whose address list changes: counts how often it is rebuilt."""

    def __init__(self) -> None:
        self.addrs: list[str] = []
        self.calls = 0

    def get_addrs(self) -> list[str]:
        self.calls += 1
        return list(self.addrs)


def test_host_addrs_cached_for_ttl_and_never_while_empty() -> None:
    src, clock = _AddrSource(), Clock()
    cache_host_addrs(src, ttl_s=5.0, clock=clock)
    assert src.get_addrs() == [] and src.get_addrs() == []
    assert src.calls == 2  # empty (not listening yet): asked again each time
    src.addrs = ["/ip4/127.0.0.1/tcp/1"]
    assert src.get_addrs() == ["/ip4/127.0.0.1/tcp/1"]
    src.addrs = ["/ip4/127.0.0.1/tcp/2"]
    clock.t = 4.9
    assert src.get_addrs() == ["/ip4/127.0.0.1/tcp/1"]
    assert src.calls == 3
    clock.t = 5.0
    assert src.get_addrs() == ["/ip4/127.0.0.1/tcp/2"]
    assert src.calls == 4


@pytest.mark.parametrize("ttl", [0.0, 5.0])
def test_cached_addrs_of_a_real_host_match(ttl: float) -> None:
    host = _host(4)
    before = [str(a) for a in host.get_addrs()]
    cache_host_addrs(host, ttl_s=ttl)
    assert [str(a) for a in host.get_addrs()] == before
