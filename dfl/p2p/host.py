"""dfl's libp2p host: gossip for headers, direct streams for blobs, peer discovery, bans.

The host moves bytes and knows nothing about blocks. The daemon passes in two callables:

* ``validate(origin_peer_id, data) -> True | reason`` -- decides whether a gossip message is
  accepted (delivered to :meth:`P2PHost.messages` and forwarded) -- it must be fast and pure
  (it runs on the event loop, once per arrival); raising :class:`dfl.errors.InvalidBlock`
  counts as a rejection with ``exc.reason``; any other exception is logged as a local bug and
  the message is dropped without penalizing anyone;
* ``serve_blob(digest) -> bytes | None`` (sync, or async returning the same) -- the blob whose
  BLAKE2b-256 is ``digest``, or None if this node does not hold it.

Usage::

    async with open_host(config, validate=rules, serve_blob=store.get_blob) as host:
        await host.publish(header_bytes)
        async for origin, data in host.messages(): ...
        blob = await host.fetch_blob(origin, digest, max_bytes=n, timeout_s=30)

Stack: TCP + Noise + Yamux only (no plaintext, secio, TLS or mplex is offered), the Ed25519 key
built from ``HostConfig.seed`` (so the libp2p peer id is the block author's id), gossipsub
(``/meshsub/1.2.0`` and ``1.1.0``) on ``HostConfig.topic`` and two dfl stream protocols
(:mod:`dfl.p2p.wire`): ``/dfl/blob/1`` and ``/dfl/peers/1``.

Invariants
----------
* Gossip: every message from a peer passes, in this order, the ban check, the size check
  (``max_header_bytes``, before signature checking or decoding), the per-neighbour rate limit,
  the libp2p signature check (strict signing: the origin is authenticated), the content-hash
  duplicate filter, and ``validate``. Rejections penalize the neighbour that sent it (and the
  origin, when different). Own publishes skip size-rate-validate checks, are never rate-limited
  and are never delivered back through :meth:`P2PHost.messages`.
* Message id = BLAKE2b-256 of the payload: the same bytes are delivered at most once per
  ``seen_ttl_s`` no matter how many peers forward them or who publishes them.
* Peer input never crashes the host nor blocks the loop: every handler catches its own errors,
  logs one line and penalizes when the peer is to blame; every stream read is bounded in size
  and time.
* A banned peer is disconnected, its gossip dropped, its inbound connections closed as soon as
  they open, and it is never dialled until the ban expires.
* Connections: bootstrap peers are redialled with exponential backoff whenever they are not
  connected; peers learned via ``/dfl/peers/1`` are dialled while fewer than ``max_peers`` are
  connected; libp2p's own auto-connector is disabled (it would dial banned peers).
* Yamux flow control: py-libp2p 0.8.1 sends a WINDOW_UPDATE frame after every read by default
  (``PY_YAMUX_RELEASE_ON_READ=1``); this module sets it to ``0`` unless the environment already
  chose, for go-yamux's batching (an update once half a window is consumed). On a 4-daemon
  LeNet testbed that cut event-loop CPU from 1.30-1.37 s to 1.12 s over 5 rounds
  (benchmarks/RESULTS.md, Overhead).
* Signed peer records (:mod:`dfl.p2p._libp2p_fixes`): py-libp2p attaches one to nearly every
  gossip RPC and verifies every one it receives; a host caches its own address list and
  accepts a record it already verified from the same peer without verifying it again.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.mcache import CacheEntry, MessageCache
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")  # read per frame by py-libp2p; see above

from dfl.crypto import blake2b256
from dfl.errors import ConfigError, InvalidBlock, UsageError
from dfl.p2p import wire
from dfl.p2p._libp2p_fixes import cache_host_addrs, install_record_dedupe
from dfl.p2p.errors import (
    BlobNotFound,
    P2PError,
    P2PTimeout,
    PeerBanned,
    PeerBusy,
    PeerUnreachable,
)
from dfl.p2p.limits import ConcurrencyCounter, KeyedBuckets, PeerScores
from dfl.p2p.streams import (
    close_quietly,
    read_exactly,
    read_into,
    read_msgpack,
    write_all,
)

__all__ = ["BlobProvider", "HostConfig", "P2PHost", "Validator", "open_host"]

install_record_dedupe()

log = logging.getLogger("dfl.p2p")

Validator = Callable[[str, bytes], "bool | str"]
BlobProvider = Callable[[bytes], "bytes | Awaitable[bytes | None] | None"]

_STABLE_S = 10.0  # a connection that lasted this long resets the redial backoff
_BLOB = TProtocol(wire.BLOB_PROTOCOL)
_PEERS = TProtocol(wire.PEERS_PROTOCOL)
_STAT_KEYS = (
    "gossip_in",
    "gossip_in_bytes",
    "gossip_delivered",
    "gossip_rejected",
    "gossip_oversized",
    "gossip_rate_limited",
    "gossip_inbox_dropped",
    "published",
    "published_bytes",
    "blob_requests_served",
    "blob_not_found_served",
    "blob_busy_served",
    "blob_bytes_out",
    "blob_fetches",
    "blob_fetch_failures",
    "blob_bytes_in",
    "peer_exchanges",
    "dials",
    "dial_failures",
    "penalties",
    "bans",
)


_POSITIVE_FIELDS = (
    "heartbeat_s",
    "max_header_bytes",
    "max_blob_bytes",
    "blob_timeout_s",
    "read_idle_s",
    "dial_timeout_s",
    "max_peers",
    "gossip_degree",
    "gossip_rate_per_peer",
    "gossip_burst_per_peer",
    "blob_rate_per_peer",
    "blob_burst_per_peer",
    "blob_concurrency_per_peer",
    "blob_concurrency_total",
    "ban_threshold",
    "ban_s",
    "penalty_half_life_s",
    "penalty_invalid",
    "seen_ttl_s",
    "inbox_size",
    "outbound_queue_size",
    "peer_exchange_interval_s",
    "backoff_min_s",
    "backoff_max_s",
    "tick_s",
)


@dataclass(frozen=True)
class HostConfig:
    """Everything the host needs; validated on construction (raises ConfigError).

    Attributes
    ----------
    seed:
        32-byte Ed25519 seed; the same key signs blocks, so peer id == block author.
    topic:
        The gossipsub topic, e.g. ``"/dfl/<network id hex>/headers/1"``.
    listen:
        TCP multiaddrs to listen on (port 0 = any free port).
    bootstrap:
        Multiaddrs with ``/p2p/<peer id>``, kept connected (redialled with backoff).
    heartbeat_s:
        Gossipsub heartbeat (py-libp2p's default of 120 s makes the mesh form too slowly).
    max_header_bytes:
        Largest gossip payload accepted or published.
    max_blob_bytes:
        Largest blob served, and default limit of :meth:`P2PHost.fetch_blob`.
    blob_timeout_s:
        Default total timeout of a blob fetch, and time bound of serving one.
    read_idle_s:
        Longest wait for the next chunk on any dfl stream.
    dial_timeout_s:
        Time bound of one dial.
    max_peers:
        Connected peers this node dials up to (and accepts at most).
    gossip_degree:
        Gossipsub target mesh degree D (low = D - 2, high = 2 D).
    gossip_rate_per_peer, gossip_burst_per_peer:
        Token bucket on messages a neighbour may send us (own publishes are never limited).
    blob_rate_per_peer, blob_burst_per_peer:
        Token bucket on blob requests a peer may send us.
    blob_concurrency_per_peer, blob_concurrency_total:
        Blob requests served at once, per peer and in total.
    ban_threshold, ban_s, penalty_half_life_s:
        Penalty score that bans a peer, ban length, score decay half-life.
    penalty_invalid:
        Penalty for a gossip message rejected by ``validate``, an oversized message, a bad
        blob (digest mismatch, over the limit) or a malformed frame.
    seen_ttl_s:
        How long a message id is remembered for duplicate suppression.
    inbox_size:
        Capacity of the :meth:`P2PHost.messages` channel (overflow drops and counts).
    outbound_queue_size:
        RPCs queued per neighbour before gossip to it is dropped (py-libp2p's default is 32;
        :meth:`P2PHost.publish` waits while a queue is over half full).
    peer_exchange_interval_s:
        Period of asking one random neighbour for more peers while below ``max_peers``. Each
        exchange that teaches nothing new doubles the period, up to 16x; a new peer (learned or
        connected) resets it. A settled network stops paying for discovery it does not need.
    backoff_min_s, backoff_max_s:
        Redial backoff range (doubling per failure).
    tick_s:
        Period of the connection-maintenance loop.
    """

    seed: bytes
    topic: str
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    heartbeat_s: float = 1.0
    max_header_bytes: int = 64 * 1024
    max_blob_bytes: int = 64 * 1024 * 1024
    blob_timeout_s: float = 30.0
    read_idle_s: float = 10.0
    dial_timeout_s: float = 5.0
    max_peers: int = 64
    gossip_degree: int = 6
    gossip_rate_per_peer: float = 100.0
    gossip_burst_per_peer: int = 500
    blob_rate_per_peer: float = 5.0
    blob_burst_per_peer: int = 20
    blob_concurrency_per_peer: int = 2
    blob_concurrency_total: int = 16
    ban_threshold: float = 10.0
    ban_s: float = 600.0
    penalty_half_life_s: float = 300.0
    penalty_invalid: float = 4.0
    seen_ttl_s: int = 600
    inbox_size: int = 4096
    outbound_queue_size: int = 512
    peer_exchange_interval_s: float = 10.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 60.0
    tick_s: float = 0.5
    _bootstrap_infos: tuple[PeerInfo, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, bytes) or len(self.seed) != 32:
            raise ConfigError("seed must be 32 bytes")
        if not self.topic:
            raise ConfigError("topic must not be empty")
        for name in _POSITIVE_FIELDS:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.max_header_bytes > 1024 * 1024 - 4096:
            raise ConfigError("max_header_bytes must stay below py-libp2p's 1 MiB RPC cap")
        if self.backoff_max_s < self.backoff_min_s:
            raise ConfigError("backoff_max_s must be >= backoff_min_s")
        if not self.listen:
            raise ConfigError("listen must name at least one address")
        for addr in self.listen:
            maddr = _parse_maddr(addr, ConfigError)
            if "tcp" not in {p.name for p in maddr.protocols()}:
                raise ConfigError(f"listen address {addr!r} is not TCP")
        infos = []
        for addr in self.bootstrap:
            info = _parse_peer_addr(addr, ConfigError)
            infos.append(info)
        object.__setattr__(self, "_bootstrap_infos", tuple(infos))


def _parse_maddr(text: str, error: type[Exception]) -> multiaddr.Multiaddr:
    try:
        return multiaddr.Multiaddr(text)
    except Exception as exc:
        raise error(f"bad multiaddr {text!r}: {exc}") from None


def _parse_peer_addr(text: str, error: type[Exception]) -> PeerInfo:
    maddr = _parse_maddr(text, error)
    try:
        return info_from_p2p_addr(maddr)
    except Exception as exc:
        raise error(f"multiaddr {text!r} needs a /p2p/<peer id> part: {exc}") from None


def _peer_id(text: str) -> ID:
    try:
        return ID.from_base58(text)
    except Exception:
        raise UsageError(f"not a peer id: {text!r}") from None


def _message_id(msg: Any) -> bytes:
    """Content-addressed message id (the default, origin + seqno, lets re-publishes through)."""
    return hashlib.blake2b(msg.data, digest_size=32).digest()


def _strip_p2p(addr: multiaddr.Multiaddr | str) -> str:
    return str(addr).split("/p2p/", 1)[0]


def _dialable(addr: str) -> multiaddr.Multiaddr | None:
    """The multiaddr if it is a plain, specified TCP address, else None."""
    try:
        maddr = multiaddr.Multiaddr(addr)
        names = [p.name for p in maddr.protocols()]
    except Exception:
        return None
    if len(names) != 2 or names[1] != "tcp" or names[0] not in ("ip4", "ip6", "dns4", "dns6"):
        return None
    host = maddr.value_for_protocol(names[0])
    if host in ("0.0.0.0", "::"):
        return None
    return maddr


class _ContentCache(MessageCache):
    """Gossipsub message cache keyed by our content id.

    py-libp2p 0.8.1 keys its cache (and so IHAVE/IWANT ids) by origin + seqno even when the
    pubsub uses another message id, so peers would IWANT every message they already have.
    """

    def put(self, msg: Any) -> None:
        mid = _message_id(msg)
        if mid in self.msgs:
            return
        self.msgs[mid] = msg
        self.history[0].append(CacheEntry(mid, msg.topicIDs))


class _Router(GossipSub):
    """GossipSub whose built-in spam check never drops our own publishes (0.8.1 counts them)."""

    def _check_spam_protection(self, peer_id: ID, msg: Any) -> bool:
        return True  # rate limiting happens before validation, in _Pubsub.push_msg


class _QueueTable(dict[ID, Any]):
    """``Pubsub.peer_queues`` that enlarges each per-peer outbound queue as it is stored.

    py-libp2p 0.8.1 drops RPCs beyond 32 queued per peer: a burst of 30 publishes (or of
    forwards) loses messages silently.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: ID, queue: Any) -> None:
        with suppress(AttributeError):
            queue._queue.max_size = self.size
        super().__setitem__(key, queue)


class _Pubsub(Pubsub):
    """Pubsub with dfl's admission checks in front and delivery straight to the host inbox."""

    def __init__(self, owner: P2PHost, *args: Any, queue_size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner
        self._queue_size = queue_size
        self.peer_queues = _QueueTable(queue_size)

    async def wait_for_queue_room(self, timeout_s: float) -> None:
        """Wait (bounded) until every per-peer outbound queue is at most half full."""
        half = self._queue_size // 2
        with trio.move_on_after(timeout_s):
            while any(len(q) > half for q in list(self.peer_queues.values())):
                await trio.sleep(0.005)

    async def push_msg(self, msg_forwarder: ID, msg: Any) -> None:
        if msg_forwarder != self.my_id and not self._owner._admit(msg_forwarder, msg):
            return
        await super().push_msg(msg_forwarder, msg)

    def notify_subscriptions(self, publish_message: Any) -> None:
        self._owner._deliver(publish_message)


class _Events(INotifee):
    """Forwards connect/disconnect events to the host without ever blocking the swarm."""

    def __init__(self, send: trio.MemorySendChannel[tuple[str, ID]]) -> None:
        self._send = send

    def _post(self, kind: str, conn: Any) -> None:
        with suppress(trio.WouldBlock, trio.ClosedResourceError, AttributeError):
            self._send.send_nowait((kind, conn.muxed_conn.peer_id))

    async def connected(self, network: Any, conn: Any) -> None:
        self._post("up", conn)

    async def disconnected(self, network: Any, conn: Any) -> None:
        self._post("down", conn)

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass


@dataclass
class _Backoff:
    failures: int = 0
    next_try: float = 0.0


class P2PHost:
    """A running dfl libp2p host; create it with :func:`open_host`."""

    def __init__(
        self,
        config: HostConfig,
        validate: Validator,
        serve_blob: BlobProvider,
    ) -> None:
        self.config = config
        self._validate = validate
        self._serve_blob = serve_blob
        key_pair = create_new_key_pair(config.seed)
        self._host = new_host(
            key_pair=key_pair,
            sec_opt={
                TProtocol(NOISE_PROTOCOL_ID): NoiseTransport(
                    key_pair, noise_privkey=create_x25519_key_pair().private_key
                )
            },
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            listen_addrs=[multiaddr.Multiaddr(a) for a in config.listen],
            connection_config=ConnectionConfig(
                max_connections=config.max_peers,
                min_connections=0,
                low_watermark=config.max_peers,
                high_watermark=config.max_peers,
                dial_timeout=config.dial_timeout_s,
            ),
        )
        cache_host_addrs(self._host)  # py-libp2p rebuilds them for nearly every gossip RPC
        network: Any = self._host.get_network()
        # we run our own dialer (bans, backoff); libp2p's would dial every peerstore entry
        network.auto_connector.maybe_connect = _noop
        network.retry_config = RetryConfig(max_retries=0)
        self._id: ID = self._host.get_id()
        self.peer_id: str = self._id.to_base58()
        d = config.gossip_degree
        self._router = _Router(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11],
            degree=d,
            degree_low=max(1, d - 2),
            degree_high=2 * d,
            heartbeat_interval=config.heartbeat_s,  # type: ignore[arg-type]
            heartbeat_initial_delay=0.1,
            # 0.8.1's "adaptive" mode stretches the heartbeat to 30-60 s when it thinks the
            # network is unhealthy; its eclipse protection counts IPs (useless on a LAN)
            adaptive_gossip_enabled=False,
            eclipse_protection_enabled=False,
            spam_protection_enabled=False,
        )
        self._router.mcache = _ContentCache(
            self._router.mcache.window_size, self._router.mcache.history_size
        )
        self._pubsub = _Pubsub(
            self,
            self._host,
            self._router,
            seen_ttl=config.seen_ttl_s,
            strict_signing=True,
            msg_id_constructor=_message_id,
            validation_cache_ttl=0,  # every arrival is judged, so every bad sender is penalized
            max_inbound_rpc_size=max(4 * config.max_header_bytes, 256 * 1024),
            allowed_topics={config.topic},
            queue_size=config.outbound_queue_size,
        )
        self._pubsub.set_topic_validator(config.topic, self._validate_gossip, False)
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[tuple[str, bytes]](
            config.inbox_size
        )
        self._events_send, self._events_recv = trio.open_memory_channel[tuple[str, ID]](1024)
        network.register_notifee(_Events(self._events_send))
        self._host.set_stream_handler(_BLOB, self._handle_blob)
        self._host.set_stream_handler(_PEERS, self._handle_peers)

        self._scores = PeerScores(
            config.ban_threshold, config.ban_s, config.penalty_half_life_s, max_entries=4096
        )
        self._gossip_buckets = KeyedBuckets(
            config.gossip_rate_per_peer, config.gossip_burst_per_peer
        )
        self._blob_buckets = KeyedBuckets(config.blob_rate_per_peer, config.blob_burst_per_peer)
        self._blob_slots = ConcurrencyCounter(
            config.blob_concurrency_per_peer, config.blob_concurrency_total
        )
        # peer id -> (addrs without /p2p, self-reported or dialled successfully)
        self._book: dict[str, tuple[tuple[str, ...], bool]] = {}
        self._backoff: dict[str, _Backoff] = {}
        self._dialing: set[str] = set()
        self._up_since: dict[str, float] = {}
        self._bootstrap = {info.peer_id.to_base58(): info for info in config._bootstrap_infos}
        self._stats = dict.fromkeys(_STAT_KEYS, 0)
        self._nursery: trio.Nursery | None = None
        self._addrs: list[str] = []  # our listen multiaddrs, computed once the host listens
        self._exchange_interval = config.peer_exchange_interval_s
        self._exchanges_running = 0

    # -- public API ------------------------------------------------------------------------

    @property
    def listen_addrs(self) -> list[str]:
        """Our listen multiaddrs, each ending in ``/p2p/<peer id>``."""
        if not self._addrs:  # fixed once listening; py-libp2p rebuilds them on every call
            self._addrs = [str(a) for a in self._host.get_addrs()]
        return list(self._addrs)

    def messages(self) -> trio.MemoryReceiveChannel[tuple[str, bytes]]:
        """The channel of accepted gossip messages ``(origin peer id, data)``.

        Own publishes are excluded; each payload arrives at most once (content-hash ids).
        There is one channel per host: use one consumer (or ``clone()`` it).
        """
        return self._inbox_recv

    async def publish(self, data: bytes) -> None:
        """Sign and gossip ``data`` on the topic (never rate-limited, never echoed back).

        Message ids are content hashes: publishing bytes this host has already seen (sent or
        received within ``seen_ttl_s``) is a no-op, since they are already propagating.

        Raises
        ------
        UsageError
            If ``data`` is larger than ``max_header_bytes``.
        """
        if len(data) > self.config.max_header_bytes:
            raise UsageError(
                f"message of {len(data)} bytes exceeds max_header_bytes "
                f"({self.config.max_header_bytes})"
            )
        # backpressure instead of libp2p's drop-when-full outbound queues
        await self._pubsub.wait_for_queue_room(self.config.read_idle_s)
        await self._pubsub.publish(self.config.topic, bytes(data))
        self._stats["published"] += 1
        self._stats["published_bytes"] += len(data)

    async def fetch_blob(
        self,
        peer_id: str,
        digest: bytes,
        *,
        max_bytes: int | None = None,
        timeout_s: float | None = None,
    ) -> bytes:
        """Fetch the blob whose BLAKE2b-256 is ``digest`` from ``peer_id`` over ``/dfl/blob/1``.

        Dials the peer if needed. ``max_bytes`` (default ``max_blob_bytes``) is checked against
        the announced length before reading; ``timeout_s`` (default ``blob_timeout_s``) bounds
        the whole fetch, and no single read waits longer than ``read_idle_s``.

        Raises
        ------
        InvalidBlock
            The peer sent a blob whose digest differs (``"blob-digest-mismatch"``), announced
            more than ``max_bytes`` (``"blob-too-large"``) or broke the framing
            (``"bad-frame"``). The peer is penalized.
        BlobNotFound, PeerBusy
            The peer answered that it lacks the blob / that we exceeded its limits.
        P2PTimeout, PeerUnreachable, PeerBanned, P2PError
            The network failed, or the peer is banned.
        UsageError
            ``digest`` is not 32 bytes or ``peer_id`` is not a peer id.
        """
        if len(digest) != wire.DIGEST_SIZE:
            raise UsageError(f"digest must be {wire.DIGEST_SIZE} bytes, got {len(digest)}")
        pid = _peer_id(peer_id)
        if pid == self._id:
            raise UsageError("cannot fetch a blob from ourselves")
        limit = self.config.max_blob_bytes if max_bytes is None else max_bytes
        timeout = self.config.blob_timeout_s if timeout_s is None else timeout_s
        if self._scores.is_banned(peer_id, trio.current_time()):
            raise PeerBanned(f"peer {peer_id} is banned")
        idle = self.config.read_idle_s
        stream = None
        ok = False
        self._stats["blob_fetches"] += 1
        try:
            with trio.fail_after(timeout):
                stream = await self._open_stream(pid, _BLOB)
                await write_all(stream, wire.encode_blob_request(digest), idle_s=idle)
                header = await read_exactly(stream, wire.BLOB_HEADER.size, idle_s=idle)
                status, length = wire.decode_blob_header(header)
                if status == wire.BlobStatus.NOT_FOUND:
                    raise BlobNotFound(f"peer {peer_id} does not hold blob {digest.hex()[:16]}")
                if status == wire.BlobStatus.BUSY:
                    raise PeerBusy(f"peer {peer_id} refused: rate or concurrency limit")
                if status != wire.BlobStatus.OK:
                    raise P2PError(f"peer {peer_id} answered {status.name}")
                if length > limit:
                    raise InvalidBlock(
                        "blob-too-large", f"peer {peer_id} announced {length} > {limit} bytes"
                    )
                data = await read_into(stream, length, idle_s=idle, on_chunk=self._count_in)
            if blake2b256(data) != digest:
                raise InvalidBlock(
                    "blob-digest-mismatch",
                    f"peer {peer_id} sent {length} bytes not matching {digest.hex()[:16]}",
                )
            ok = True
            return data
        except trio.TooSlowError:
            raise P2PTimeout(
                f"blob {digest.hex()[:16]} from {peer_id} not received within {timeout:g} s"
            ) from None
        except InvalidBlock as exc:
            self.penalize(peer_id, f"blob:{exc.reason}", self.config.penalty_invalid)
            raise
        finally:
            if not ok:
                self._stats["blob_fetch_failures"] += 1
            if stream is not None:
                await close_quietly(stream, reset=not ok)

    def connected_peers(self) -> list[str]:
        """Peer ids with at least one open connection."""
        return [p.to_base58() for p in self._host.get_network().connections]

    def penalize(self, peer_id: str, reason: str, weight: float = 1.0) -> None:
        """Add ``weight`` to the peer's misbehaviour score (decaying with a half-life).

        When the score reaches ``ban_threshold`` the peer is banned for ``ban_s``: it is
        disconnected, its gossip dropped, and reconnects (both ways) refused until the ban ends.
        """
        if peer_id == self.peer_id:
            return
        now = trio.current_time()
        self._stats["penalties"] += 1
        if self._scores.penalize(peer_id, weight, reason, now):
            self._enforce_ban(peer_id, reason)

    def ban(self, peer_id: str, reason: str, duration_s: float | None = None) -> None:
        """Ban ``peer_id`` now for ``duration_s`` (default ``ban_s``)."""
        _peer_id(peer_id)
        if peer_id == self.peer_id:
            raise UsageError("cannot ban ourselves")
        self._scores.ban(peer_id, trio.current_time(), reason, duration_s)
        self._enforce_ban(peer_id, reason)

    def peer_score(self, peer_id: str) -> float:
        """Current (decayed) misbehaviour score of ``peer_id``."""
        return self._scores.score(peer_id, trio.current_time())

    def is_banned(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is banned right now."""
        return self._scores.is_banned(peer_id, trio.current_time())

    async def connect(self, addr: str) -> None:
        """Dial a ``.../p2p/<peer id>`` multiaddr now.

        Raises
        ------
        UsageError
            Malformed address, or our own peer id.
        PeerBanned, PeerUnreachable
            The peer is banned, or the dial failed or timed out.
        """
        info = _parse_peer_addr(addr, UsageError)
        pid = info.peer_id.to_base58()
        if pid == self.peer_id:
            raise UsageError("cannot connect to ourselves")
        if self.is_banned(pid):
            raise PeerBanned(f"peer {pid} is banned")
        with trio.move_on_after(self.config.dial_timeout_s + 1.0):
            while pid in self._dialing:  # a dial of ours is already under way: share it
                await trio.sleep(0.02)
        if pid in self.connected_peers():
            return
        if not await self._dial(info):
            raise PeerUnreachable(f"could not connect to {addr}")

    def stats(self) -> dict[str, int]:
        """Counters since start (bytes, messages, rejections, penalties...), plus gauges."""
        out = dict(self._stats)
        now = trio.current_time()
        out["connected_peers"] = len(self._host.get_network().connections)
        out["known_peers"] = len(self._book)
        out["banned_peers"] = len(self._scores.banned(now))
        out["mesh_peers"] = len(self._router.mesh.get(self.config.topic, ()))
        return out

    def mesh_peers(self) -> list[str]:
        """Peers in our gossipsub mesh for the topic (diagnostics and tests)."""
        return [p.to_base58() for p in self._router.mesh.get(self.config.topic, ())]

    # -- gossip ----------------------------------------------------------------------------

    def _admit(self, forwarder: ID, msg: Any) -> bool:
        """Cheap checks before signature verification and validation (sync, never raises)."""
        peer = forwarder.to_base58()
        now = trio.current_time()
        self._stats["gossip_in"] += 1
        self._stats["gossip_in_bytes"] += len(msg.data)
        if self._scores.is_banned(peer, now):
            return False
        if len(msg.data) > self.config.max_header_bytes:
            self._stats["gossip_oversized"] += 1
            log.info("gossip from %s: %d-byte message dropped (oversized)", peer, len(msg.data))
            self.penalize(peer, "oversized-message", self.config.penalty_invalid)
            return False
        if not self._gossip_buckets.take(peer, now):
            # not marked seen: the same message may still arrive from a calmer neighbour
            self._stats["gossip_rate_limited"] += 1
            self.penalize(peer, "gossip-rate", 0.05)
            return False
        return True

    def _validate_gossip(self, forwarder: ID, msg: Any) -> bool:
        """Topic validator: runs ``validate`` and penalizes on rejection (never raises)."""
        if forwarder == self._id:
            return True  # own publishes are the daemon's responsibility
        try:
            origin = ID(msg.from_id).to_base58()
        except Exception:
            origin = ""
        try:
            verdict: bool | str = self._validate(origin, bytes(msg.data))
        except InvalidBlock as exc:
            verdict = exc.reason or "invalid"
        except Exception as exc:
            log.error("validate raised %s: %s (message dropped)", type(exc).__name__, exc)
            return False
        if verdict is True:
            return True
        reason = verdict if isinstance(verdict, str) and verdict else "rejected"
        sender = forwarder.to_base58()
        self._stats["gossip_rejected"] += 1
        log.info("gossip from %s (origin %s) rejected: %s", sender, origin, reason)
        self.penalize(sender, reason, self.config.penalty_invalid)
        if origin and origin != sender:
            self.penalize(origin, reason, self.config.penalty_invalid)
        return False

    def _deliver(self, msg: Any) -> None:
        if msg.from_id == self._id.to_bytes():
            return
        try:
            origin = ID(msg.from_id).to_base58()
            self._inbox_send.send_nowait((origin, bytes(msg.data)))
            self._stats["gossip_delivered"] += 1
        except trio.ClosedResourceError:
            pass  # shutting down
        except trio.WouldBlock:
            self._stats["gossip_inbox_dropped"] += 1
            log.warning("inbox full (%d): gossip message dropped", self.config.inbox_size)
        except Exception as exc:
            log.error("delivery failed: %s: %s", type(exc).__name__, exc)

    # -- blobs -----------------------------------------------------------------------------

    def _count_in(self, n: int) -> None:
        self._stats["blob_bytes_in"] += n

    async def _open_stream(self, pid: ID, protocol: TProtocol) -> Any:
        try:
            return await self._host.new_stream(pid, [protocol])
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise PeerUnreachable(
                f"cannot open {protocol} to {pid.to_base58()}: {type(exc).__name__}: {exc}"
            ) from None

    async def _handle_blob(self, stream: Any) -> None:
        """Serve one ``/dfl/blob/1`` request (catches everything, bounded in time)."""
        try:
            peer = stream.muxed_conn.peer_id.to_base58()
        except Exception:
            await close_quietly(stream, reset=True)
            return
        now = trio.current_time()
        if self._scores.is_banned(peer, now):
            await close_quietly(stream, reset=True)
            return
        idle = self.config.read_idle_s
        if not self._blob_buckets.take(peer, now) or not self._blob_slots.try_acquire(peer):
            self._stats["blob_busy_served"] += 1
            with trio.move_on_after(idle), suppress(P2PError):
                busy = wire.encode_blob_header(wire.BlobStatus.BUSY)
                await write_all(stream, busy, idle_s=idle)
            await close_quietly(stream)
            return
        ok = False
        try:
            with trio.move_on_after(self.config.blob_timeout_s) as scope:
                obj = await read_msgpack(stream, wire.MAX_BLOB_REQUEST_BYTES, idle_s=idle)
                digest = wire.decode_blob_request(obj)
                blob = await self._provide(digest)
                if blob is None:
                    self._stats["blob_not_found_served"] += 1
                    await write_all(
                        stream, wire.encode_blob_header(wire.BlobStatus.NOT_FOUND), idle_s=idle
                    )
                else:
                    header = wire.encode_blob_header(wire.BlobStatus.OK, len(blob))
                    await write_all(stream, header, idle_s=idle)
                    await write_all(stream, blob, idle_s=idle)
                    self._stats["blob_requests_served"] += 1
                    self._stats["blob_bytes_out"] += len(blob)
                ok = True
            if scope.cancelled_caught:
                log.info("blob request from %s: not done within %g s", peer, scope.deadline)
        except InvalidBlock as exc:
            log.info("blob request from %s: %s", peer, exc)
            self.penalize(peer, f"blob-request:{exc.reason}", 1.0)
        except P2PError as exc:
            log.debug("blob request from %s: %s", peer, exc)
        except Exception as exc:
            log.warning("blob request from %s: %s: %s", peer, type(exc).__name__, exc)
        finally:
            self._blob_slots.release(peer)
            await close_quietly(stream, reset=not ok)

    async def _provide(self, digest: bytes) -> bytes | None:
        try:
            result = self._serve_blob(digest)
            if inspect.isawaitable(result):
                result = await result
        except trio.Cancelled:
            raise
        except Exception as exc:
            log.error("serve_blob raised %s: %s (answering not-found)", type(exc).__name__, exc)
            return None
        if result is None:
            return None
        blob = bytes(result)
        if len(blob) > self.config.max_blob_bytes:
            log.error("serve_blob returned %d bytes > max_blob_bytes: not served", len(blob))
            return None
        return blob

    # -- peer exchange ---------------------------------------------------------------------

    def _own_addrs(self) -> list[str]:
        return [a for a in (_strip_p2p(x) for x in self.listen_addrs) if _dialable(a)]

    def _learn(self, peer: str, addrs: list[str], verified: bool) -> bool:
        """Record ``peer``'s addresses; True if the peer was not in the book before."""
        if peer == self.peer_id:
            return False
        good = tuple(a for a in addrs if _dialable(a))[: wire.MAX_ADDRS_PER_PEER]
        if not good:
            return False
        old = self._book.get(peer)
        if old is not None and old[1] and not verified:
            return False  # a third party's claim never overrides the peer's own report
        self._book.pop(peer, None)
        if len(self._book) >= 4 * self.config.max_peers + 256:
            self._book.pop(next(iter(self._book)))
        self._book[peer] = (good, verified)
        return old is None

    async def _handle_peers(self, stream: Any) -> None:
        """Serve one ``/dfl/peers/1`` request (catches everything, bounded in time)."""
        peer = "?"
        ok = False
        try:
            peer = stream.muxed_conn.peer_id.to_base58()
            if self.is_banned(peer):
                return
            idle = self.config.read_idle_s
            with trio.move_on_after(2 * idle):
                obj = await read_msgpack(stream, wire.MAX_PEERS_REQUEST_BYTES, idle_s=idle)
                addrs, want = wire.decode_peers_request(obj)
                self._learn(peer, addrs, verified=True)
                entries: list[tuple[str, list[str]]] = [(self.peer_id, self._own_addrs())]
                connected = self.connected_peers()
                random.shuffle(connected)
                for other in connected:
                    book = self._book.get(other)
                    if other != peer and book is not None and book[1]:
                        entries.append((other, list(book[0])))
                response = wire.encode_peers_response(entries[: want + 1])
                await write_all(stream, response, idle_s=idle)
                ok = True
        except InvalidBlock as exc:
            log.info("peers request from %s: %s", peer, exc)
            self.penalize(peer, f"peers-request:{exc.reason}", 1.0)
        except P2PError as exc:
            log.debug("peers request from %s: %s", peer, exc)
        except Exception as exc:
            log.warning("peers request from %s: %s: %s", peer, type(exc).__name__, exc)
        finally:
            await close_quietly(stream, reset=not ok)

    async def _exchange_peers(self, pid: ID) -> None:
        """Ask ``pid`` for peers (telling it our addresses); never raises."""
        peer = pid.to_base58()
        stream = None
        ok = new_peers = False
        idle = self.config.read_idle_s
        self._exchanges_running += 1
        try:
            with trio.fail_after(2 * idle):
                stream = await self._open_stream(pid, _PEERS)
                request = wire.encode_peers_request(self._own_addrs(), self.config.max_peers)
                await write_all(stream, request, idle_s=idle)
                obj = await read_msgpack(stream, wire.MAX_PEERS_RESPONSE_BYTES, idle_s=idle)
                entries = wire.decode_peers_response(obj)
            ok = True
            self._stats["peer_exchanges"] += 1
            learned = [
                self._learn(other, addrs, verified=other == peer) for other, addrs in entries
            ]
            new_peers = any(learned)
        except InvalidBlock as exc:
            log.info("peers response from %s: %s", peer, exc)
            self.penalize(peer, f"peers-response:{exc.reason}", 1.0)
        except (P2PError, trio.TooSlowError) as exc:
            log.debug("peer exchange with %s failed: %s", peer, exc)
        except Exception as exc:
            log.warning("peer exchange with %s: %s: %s", peer, type(exc).__name__, exc)
        finally:
            self._exchanges_running -= 1
            base = self.config.peer_exchange_interval_s  # back off unless it taught us a peer
            self._exchange_interval = (
                base if new_peers else min(2 * self._exchange_interval, 16 * base)
            )
            if stream is not None:
                await close_quietly(stream, reset=not ok)

    # -- connections -----------------------------------------------------------------------

    async def _dial(self, info: PeerInfo) -> bool:
        """Dial once (bounded by ``dial_timeout_s``); update backoff; never raises."""
        peer = info.peer_id.to_base58()
        if peer in self._dialing:
            return False
        self._dialing.add(peer)
        self._stats["dials"] += 1
        network: Any = self._host.get_network()
        try:
            network.unblock_peer(info.peer_id)  # our backoff replaces libp2p's negative cache
            with trio.fail_after(self.config.dial_timeout_s):
                await self._host.connect(info)
            ok = True
        except Exception as exc:
            log.debug("dial %s failed: %s: %s", peer, type(exc).__name__, exc)
            ok = False
        finally:
            self._dialing.discard(peer)
        if ok:
            # failures are forgiven only once the connection has lasted (see _events_loop)
            self._learn(peer, [_strip_p2p(a) for a in info.addrs], verified=True)
        else:
            self._stats["dial_failures"] += 1
            self._back_off(peer)
        return ok

    def _back_off(self, peer: str) -> None:
        backoff = self._backoff.setdefault(peer, _Backoff())
        delay = min(self.config.backoff_max_s, self.config.backoff_min_s * 2**backoff.failures)
        backoff.failures = min(backoff.failures + 1, 32)
        backoff.next_try = trio.current_time() + delay * random.uniform(0.8, 1.2)

    def _may_dial(self, peer: str, now: float) -> bool:
        if peer == self.peer_id or peer in self._dialing or self._scores.is_banned(peer, now):
            return False
        backoff = self._backoff.get(peer)
        return backoff is None or now >= backoff.next_try

    def _enforce_ban(self, peer: str, reason: str) -> None:
        self._stats["bans"] += 1
        log.warning("banning %s for %g s: %s", peer, self.config.ban_s, reason)
        try:
            pid = ID.from_base58(peer)
        except Exception:
            return
        self._book.pop(peer, None)
        if self._nursery is not None:
            try:
                self._pubsub.add_to_blacklist(pid)
            except Exception as exc:
                log.debug("pubsub blacklist failed: %s", exc)
            self._nursery.start_soon(self._disconnect, pid)

    async def _disconnect(self, pid: ID) -> None:
        with trio.move_on_after(5.0):
            try:
                await self._host.disconnect(pid)
            except Exception as exc:
                log.debug("disconnect %s: %s", pid, exc)

    async def _events_loop(self, nursery: trio.Nursery) -> None:
        async for kind, pid in self._events_recv:
            peer = pid.to_base58()
            if kind == "up":
                if self.is_banned(peer):
                    nursery.start_soon(self._disconnect, pid)
                else:
                    nursery.start_soon(self._exchange_peers, pid)
                    self._up_since.setdefault(peer, trio.current_time())
                    self._exchange_interval = self.config.peer_exchange_interval_s
            elif kind == "down" and peer not in self.connected_peers():
                since = self._up_since.pop(peer, None)
                if since is not None and trio.current_time() - since >= _STABLE_S:
                    self._backoff.pop(peer, None)  # a lasting connection: redial right away
                else:
                    self._back_off(peer)  # dropped soon after connecting: maybe refused

    async def _maintain_loop(self, nursery: trio.Nursery) -> None:
        next_exchange = trio.current_time() + self.config.peer_exchange_interval_s
        while True:
            now = trio.current_time()
            for peer in self._scores.expire(now):
                log.info("ban of %s ended", peer)
                with suppress(Exception):
                    self._pubsub.remove_from_blacklist(ID.from_base58(peer))
            connected = set(self.connected_peers())
            for peer, info in self._bootstrap.items():
                if peer not in connected and self._may_dial(peer, now):
                    nursery.start_soon(self._dial, info)
            room = self.config.max_peers - len(connected) - len(self._dialing)
            if room > 0:
                candidates = [
                    p for p in self._book if p not in connected and self._may_dial(p, now)
                ]
                random.shuffle(candidates)
                for peer in candidates[: min(room, 4)]:
                    addrs = [multiaddr.Multiaddr(a) for a in self._book[peer][0]]
                    nursery.start_soon(self._dial, PeerInfo(ID.from_base58(peer), addrs))
            next_exchange = min(next_exchange, now + self._exchange_interval)  # after a reset
            if now >= next_exchange and not self._exchanges_running:
                next_exchange = now + self._exchange_interval
                if connected and len(connected) < self.config.max_peers:
                    target = random.choice(sorted(connected))
                    nursery.start_soon(self._exchange_peers, ID.from_base58(target))
            await trio.sleep(self.config.tick_s)


async def _noop(*args: Any, **kwargs: Any) -> None:
    return None


@asynccontextmanager
async def open_host(
    config: HostConfig,
    *,
    validate: Validator,
    serve_blob: BlobProvider,
) -> AsyncIterator[P2PHost]:
    """Start a :class:`P2PHost`, listening and subscribed, and stop it on exit.

    On entry the host listens on ``config.listen``, is subscribed to ``config.topic`` and has
    started dialling the bootstrap peers (it does not wait for them).
    """
    host = P2PHost(config, validate, serve_blob)
    listen = [multiaddr.Multiaddr(a) for a in config.listen]
    async with (
        host._host.run(listen),
        background_trio_service(host._pubsub),
        background_trio_service(host._router),
    ):
        await host._pubsub.wait_until_ready()
        await host._pubsub.subscribe(config.topic)
        async with trio.open_nursery() as nursery:
            host._nursery = nursery
            nursery.start_soon(host._events_loop, nursery)
            nursery.start_soon(host._maintain_loop, nursery)
            try:
                yield host
            finally:
                host._nursery = None
                nursery.cancel_scope.cancel()
                host._inbox_send.close()
                # close connections while pubsub still runs: in 0.8.1 a gossip RPC arriving
                # after pubsub stopped raises "Nursery is closed" out of the swarm
                with trio.CancelScope(shield=True), trio.move_on_after(5.0):
                    try:
                        await host._host.close()
                    except Exception as exc:
                        log.debug("host close: %s: %s", type(exc).__name__, exc)
