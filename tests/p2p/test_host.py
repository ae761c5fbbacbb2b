"""Networked tests of dfl.p2p.host with real py-libp2p hosts on 127.0.0.1 (ports 0)."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
import trio

from dfl.crypto import Identity, peer_id_from_public_key
from dfl.errors import InvalidBlock, UsageError
from dfl.p2p import wire
from dfl.p2p.errors import BlobNotFound, P2PError, P2PTimeout, PeerBanned
from tests.p2p._util import config, drain, many, mesh_ready, run, seed, start, wait_until

pytestmark = pytest.mark.timeout(60)


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def test_two_hosts_connect_with_block_author_peer_id() -> None:
    async def body() -> None:
        async with many([config(0), config(1)]) as (a, b):
            assert a.peer_id == peer_id_from_public_key(Identity.from_seed(seed(0)).public_key)
            assert all(addr.endswith("/p2p/" + a.peer_id) for addr in a.listen_addrs)
            await b.connect(a.listen_addrs[0])
            await wait_until(lambda: a.peer_id in b.connected_peers())
            await wait_until(lambda: b.peer_id in a.connected_peers())

    run(body)


def test_peer_learned_through_bootstrap_is_dialled() -> None:
    async def body() -> None:
        # c knows only b, b knows only a: c must learn a's address from b and dial it
        async with start(config(0)) as a, start(config(1, bootstrap=(a.listen_addrs[0],))) as b:
            await wait_until(lambda: a.peer_id in b.connected_peers())
            async with start(config(2, bootstrap=(b.listen_addrs[0],))) as c:
                await wait_until(lambda: a.peer_id in c.connected_peers(), 10.0)
                await wait_until(lambda: c.peer_id in a.connected_peers(), 5.0)

    run(body)


def test_publish_reaches_each_peer_exactly_once() -> None:
    async def body() -> None:
        async with many([config(0), config(1), config(2)]) as (a, b, c):
            # a triangle: every message has two paths to every receiver
            await b.connect(a.listen_addrs[0])
            await c.connect(a.listen_addrs[0])
            await c.connect(b.listen_addrs[0])
            await mesh_ready([a, b, c])
            sent = [b"header-%03d" % i for i in range(30)]  # a burst over py-libp2p's 10 msg/s
            for m in sent:
                await a.publish(m)
            await b.publish(b"same-bytes")  # the same payload from two origins: one delivery
            await a.publish(b"same-bytes")
            got_b = await drain(b, 0.5, expect=len(sent))
            got_c = await drain(c, 0.5, expect=len(sent) + 1)
            got_a = await drain(a, 0.1)
            assert sorted(d for _, d in got_c) == sorted([*sent, b"same-bytes"])
            assert sorted(d for _, d in got_b) == sorted(sent)
            assert all(origin == a.peer_id for origin, d in got_b)
            assert got_a in ([], [(b.peer_id, b"same-bytes")])  # b may beat a to it
            assert a.stats()["published"] == 31

    run(body)


def test_invalid_message_is_dropped_and_sender_penalized() -> None:
    def rules(origin: str, data: bytes) -> bool | str:
        if data.startswith(b"bad"):
            return "bad-prefix"
        if data.startswith(b"raise"):
            raise InvalidBlock("bad-signature")
        return True

    async def body() -> None:
        async with many([config(0), config(1)], validate=rules) as (a, b):
            await b.connect(a.listen_addrs[0])
            await mesh_ready([a, b])
            await a.publish(b"bad header")
            await a.publish(b"raise please")
            await a.publish(b"good header")
            got = await drain(b, 0.5, expect=1)
            assert got == [(a.peer_id, b"good header")]
            assert b.stats()["gossip_rejected"] == 2
            assert b.peer_score(a.peer_id) > 0
            assert a.peer_score(b.peer_id) == 0

    run(body)


def test_oversized_message_is_rejected_before_validation() -> None:
    calls: list[int] = []

    def rules(origin: str, data: bytes) -> bool:
        calls.append(len(data))
        return True

    async def body() -> None:
        async with (
            start(config(0, max_header_bytes=100_000)) as a,
            start(config(1, max_header_bytes=1000), validate=rules) as b,
        ):
            await b.connect(a.listen_addrs[0])
            await mesh_ready([a, b])
            await a.publish(b"x" * 5000)
            await a.publish(b"small")
            got = await drain(b, 0.5, expect=1)
            assert got == [(a.peer_id, b"small")]
            assert calls == [5]
            assert b.stats()["gossip_oversized"] == 1
            assert b.peer_score(a.peer_id) > 0
            with pytest.raises(UsageError):
                await b.publish(b"y" * 1001)

    run(body)


def test_fetch_blob_sizes_not_found_and_limits() -> None:
    small = bytes(range(256)) * 1000  # 256 KB
    large = hashlib.shake_256(b"dfl").digest(4_000_000)
    store = {digest(small): small, digest(large): large}

    async def body() -> None:
        async with start(config(0), serve_blob=store.get) as a, start(config(1)) as b:
            await b.connect(a.listen_addrs[0])
            for blob in (small, large):
                got = await b.fetch_blob(a.peer_id, digest(blob), timeout_s=20)
                assert got == blob
            with pytest.raises(BlobNotFound):
                await b.fetch_blob(a.peer_id, digest(b"missing"), timeout_s=5)
            with pytest.raises(InvalidBlock) as info:
                await b.fetch_blob(a.peer_id, digest(large), max_bytes=1_000_000, timeout_s=5)
            assert info.value.reason == "blob-too-large"
            with pytest.raises(UsageError):
                await b.fetch_blob(a.peer_id, b"short", timeout_s=5)
            assert b.stats()["blob_bytes_in"] >= len(small) + len(large)
            assert a.stats()["blob_requests_served"] == 2
            assert a.stats()["blob_not_found_served"] == 1
            # the server stays healthy after all of that
            assert await b.fetch_blob(a.peer_id, digest(small), timeout_s=5) == small

    run(body)


def test_fetch_blob_detects_a_lying_server() -> None:
    honest = b"the real model" * 1000

    def liar(d: bytes) -> bytes:
        return b"poisoned model" * 1000

    async def body() -> None:
        async with start(config(0), serve_blob=liar) as a, start(config(1)) as b:
            await b.connect(a.listen_addrs[0])
            with pytest.raises(InvalidBlock) as info:
                await b.fetch_blob(a.peer_id, digest(honest), timeout_s=5)
            assert info.value.reason == "blob-digest-mismatch"
            assert b.peer_score(a.peer_id) > 0

    run(body)


def test_fetch_blob_times_out_on_a_silent_server() -> None:
    async def silent(stream: object) -> None:
        await trio.sleep_forever()

    async def body() -> None:
        async with start(config(0)) as a, start(config(1)) as b:
            a._host.set_stream_handler(wire.BLOB_PROTOCOL, silent)  # a server that never answers
            await b.connect(a.listen_addrs[0])
            with trio.fail_after(5):
                t0 = trio.current_time()
                with pytest.raises(P2PTimeout):
                    await b.fetch_blob(a.peer_id, digest(b"x"), timeout_s=1.0)
                assert trio.current_time() - t0 < 3

    run(body)


def test_garbage_request_penalizes_and_server_survives() -> None:
    blob = b"blob" * 100

    async def body() -> None:
        async with (
            start(config(0), serve_blob={digest(blob): blob}.get) as a,
            start(config(1)) as b,
        ):
            await b.connect(a.listen_addrs[0])
            stream = await b._host.new_stream(a._id, [wire.BLOB_PROTOCOL])
            await stream.write(b"\xc1" * 100)  # 0xc1 is never valid msgpack
            await wait_until(lambda: a.peer_score(b.peer_id) > 0, 5)
            assert await b.fetch_blob(a.peer_id, digest(blob), timeout_s=5) == blob

    run(body)


def test_banned_peer_is_disconnected_and_refused() -> None:
    async def body() -> None:
        async with many([config(0, ban_threshold=5.0), config(1)]) as (a, b):
            await b.connect(a.listen_addrs[0])
            await wait_until(lambda: b.peer_id in a.connected_peers())
            a.penalize(b.peer_id, "test", 2.0)
            assert not a.is_banned(b.peer_id)
            a.penalize(b.peer_id, "test", 4.0)
            assert a.is_banned(b.peer_id)
            await wait_until(lambda: b.peer_id not in a.connected_peers(), 5)
            with pytest.raises(PeerBanned):
                await a.fetch_blob(b.peer_id, digest(b"x"), timeout_s=1)
            # b comes back: a closes the connection as soon as it opens
            with contextlib.suppress(P2PError):
                await b.connect(a.listen_addrs[0])
            await wait_until(lambda: b.peer_id not in a.connected_peers(), 2)
            # and b backs off instead of redialling in a loop
            await trio.sleep(0.5)
            assert b.stats()["dials"] <= 3
            assert a.stats()["bans"] == 1

    run(body)


def test_peer_exchange_backs_off_when_it_teaches_nothing_new() -> None:
    async def body() -> None:
        fast = {"peer_exchange_interval_s": 0.1, "tick_s": 0.02}
        async with (
            start(config(0, **fast)) as a,
            start(config(1, bootstrap=(a.listen_addrs[0],), **fast)) as b,
        ):
            await wait_until(lambda: a.peer_id in b.connected_peers())
            # every exchange after the first returns only known peers: 0.1 -> 0.2 -> ... -> 1.6
            await wait_until(lambda: b._exchange_interval == pytest.approx(1.6), 10.0)
            done = b.stats()["peer_exchanges"]
            await trio.sleep(1.5)
            assert b.stats()["peer_exchanges"] - done <= 1  # not 15, as at a fixed 0.1 s
            # a new connection resets the period
            async with start(config(2, bootstrap=(b.listen_addrs[0],), **fast)) as c:
                await wait_until(lambda: c.peer_id in b.connected_peers())
                assert b._exchange_interval <= 0.2 or b.stats()["peer_exchanges"] > done

    run(body)
