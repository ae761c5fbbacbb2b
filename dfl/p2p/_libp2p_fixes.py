"""Two CPU fixes for py-libp2p 0.8.1's signed peer records in gossipsub.

py-libp2p attaches the sender's *signed peer record* (an Ed25519-signed envelope with its
listen addresses) to nearly every pubsub RPC, including every IDONTWANT, and processes the
record of every RPC it receives. On four hosts exchanging 200 real dfl headers, these two
fixes cut the CPU per delivered header by 14-19 % (``benchmarks/gossip_cpu.py``):

* **Sending**: ``env_to_send_in_RPC`` calls ``host.get_addrs()`` each time to check that the
  cached record still matches the listen addresses; ``BasicHost.get_addrs`` rebuilds and
  re-parses every multiaddr on each call. :func:`cache_host_addrs` makes a
  host remember its non-empty address list for ``ttl_s`` seconds.
* **Receiving**: ``maybe_consume_signed_record`` decodes the envelope, verifies its Ed25519
  signature, re-parses its addresses, and clears and re-adds them in the peerstore, for every
  RPC, although a peer sends the same record bytes for hours.
  :func:`install_record_dedupe` wraps it so that bytes already accepted from the same
  connection peer in the last ``ttl_s`` seconds are accepted without re-verification. A
  record that is new, changed, or failed before goes through the original function, so a
  forged or mismatched record is still refused (and its RPC ignored, as before). The cache is
  bounded; an expired entry is re-verified, which also refreshes the peerstore's address TTL.

Neither changes what goes over the wire.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["cache_host_addrs", "install_record_dedupe"]

_ConsumeFn = Callable[[Any, Any, Any], bool]


class _RecordCache:
    """``(peer id bytes, record bytes)`` accepted recently; LRU-bounded, entries expire."""

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[tuple[bytes, bytes], float] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def fresh(self, key: tuple[bytes, bytes], now: float) -> bool:
        expires = self._entries.get(key)
        if expires is None or expires <= now:
            return False
        self._entries.move_to_end(key)
        return True

    def add(self, key: tuple[bytes, bytes], now: float) -> None:
        self._entries[key] = now + self.ttl_s
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def deduplicating(
    original: _ConsumeFn,
    *,
    max_entries: int = 4096,
    ttl_s: float = 600.0,
    clock: Callable[[], float] = time.monotonic,
) -> _ConsumeFn:
    """``maybe_consume_signed_record`` that skips records it accepted recently (see module)."""
    cache = _RecordCache(max_entries, ttl_s)

    def consume(msg: Any, host: Any, peer_id: Any) -> bool:
        try:
            has = msg.HasField("senderRecord")
        except Exception:
            has = False
        if not has:
            return original(msg, host, peer_id)
        key = (peer_id.to_bytes(), bytes(msg.senderRecord))
        now = clock()
        if cache.fresh(key, now):
            cache.hits += 1
            return True
        cache.misses += 1
        ok = original(msg, host, peer_id)
        if ok:
            cache.add(key, now)
        return ok

    consume.cache = cache  # type: ignore[attr-defined]
    consume.original = original  # type: ignore[attr-defined]
    return consume


def install_record_dedupe() -> None:
    """Route py-libp2p's pubsub and gossipsub through :func:`deduplicating` (idempotent)."""
    from libp2p.pubsub import gossipsub, pubsub

    name = "maybe_consume_signed_record"  # imported by name into both modules
    current = vars(pubsub)[name]
    if getattr(current, "original", None) is not None:
        return
    wrapped = deduplicating(current)
    for module in (pubsub, gossipsub):
        vars(module)[name] = wrapped


def cache_host_addrs(
    host: Any, ttl_s: float = 5.0, clock: Callable[[], float] = time.monotonic
) -> None:
    """Make ``host.get_addrs()`` return its last non-empty result for up to ``ttl_s`` seconds.

    Empty results (before the host listens) are never cached. Sets an instance attribute, so
    only this host is affected.
    """
    original = host.get_addrs
    state: dict[str, Any] = {"value": None, "expires": 0.0}

    def get_addrs() -> list[Any]:
        now = clock()
        value = state["value"]
        if value is not None and now < state["expires"]:
            return list(value)
        fresh = list(original())
        if fresh:
            state["value"], state["expires"] = fresh, now + ttl_s
        return fresh

    host.get_addrs = get_addrs
