"""Pure bookkeeping for rate limits, peer penalties and bans.

No I/O and no clock of its own: every method takes ``now`` (seconds, any monotonic origin), so
the same code runs under trio's clock in the host and under a virtual clock in tests.

Invariants
----------
* A :class:`TokenBucket` never holds more than ``burst`` tokens nor fewer than zero.
* A :class:`PeerScores` score decays exponentially towards zero with ``half_life_s``; a peer is
  banned exactly when its decayed score reaches ``ban_threshold``; the ban lasts ``ban_s`` and
  the score restarts from zero when it ends.
* Memory is bounded: every per-peer table holds at most ``max_entries`` peers (the stalest
  entries are dropped first; bans are never dropped before they expire unless the table is full
  of bans).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class TokenBucket:
    """Classic token bucket: ``rate`` tokens per second, at most ``burst`` stored.

    Parameters
    ----------
    rate:
        Tokens added per second (> 0).
    burst:
        Bucket capacity (>= 1); the bucket starts full.
    now:
        Current time in seconds.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if available; return whether they were taken."""
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False


class KeyedBuckets:
    """One :class:`TokenBucket` per key (peer id), bounded in number."""

    def __init__(self, rate: float, burst: float, max_entries: int = 4096) -> None:
        TokenBucket(rate, burst, 0.0)  # validates the parameters once
        self.rate = rate
        self.burst = burst
        self.max_entries = max_entries
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket (created full on first use)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_entries:
                # dicts keep insertion order: drop the oldest key
                self._buckets.pop(next(iter(self._buckets)))
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now, cost)

    def forget(self, key: str) -> None:
        """Drop ``key``'s bucket (e.g. after a disconnect)."""
        self._buckets.pop(key, None)


@dataclass
class _Record:
    score: float
    updated: float
    banned_until: float | None = None
    last_reason: str = ""


class PeerScores:
    """Misbehaviour scores with exponential decay, and the ban list they feed.

    Parameters
    ----------
    ban_threshold:
        A peer whose decayed score reaches this value is banned.
    ban_s:
        Ban duration in seconds.
    half_life_s:
        Half-life of the score decay in seconds.
    max_entries:
        Maximum number of peers tracked.
    """

    def __init__(
        self,
        ban_threshold: float = 10.0,
        ban_s: float = 600.0,
        half_life_s: float = 300.0,
        max_entries: int = 4096,
    ) -> None:
        if ban_threshold <= 0 or ban_s <= 0 or half_life_s <= 0 or max_entries < 1:
            raise ValueError("ban_threshold, ban_s, half_life_s and max_entries must be > 0")
        self.ban_threshold = ban_threshold
        self.ban_s = ban_s
        self.half_life_s = half_life_s
        self.max_entries = max_entries
        self._records: dict[str, _Record] = {}

    def _decayed(self, rec: _Record, now: float) -> float:
        dt = max(0.0, now - rec.updated)
        return rec.score * math.exp2(-dt / self.half_life_s)

    def penalize(self, peer: str, weight: float, reason: str, now: float) -> bool:
        """Add ``weight`` to ``peer``'s score; return True if this call bans the peer."""
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"penalty weight must be finite and >= 0, got {weight}")
        rec = self._records.get(peer)
        if rec is None:
            self._make_room(now)
            rec = self._records[peer] = _Record(0.0, now)
        if self.is_banned(peer, now):
            return False
        rec.score = self._decayed(rec, now) + weight
        rec.updated = now
        rec.last_reason = reason
        if rec.score >= self.ban_threshold:
            rec.banned_until = now + self.ban_s
            return True
        return False

    def ban(self, peer: str, now: float, reason: str, duration_s: float | None = None) -> None:
        """Ban ``peer`` right away for ``duration_s`` (default ``ban_s``)."""
        rec = self._records.get(peer)
        if rec is None:
            self._make_room(now)
            rec = self._records[peer] = _Record(0.0, now)
        rec.banned_until = now + (self.ban_s if duration_s is None else duration_s)
        rec.last_reason = reason

    def score(self, peer: str, now: float) -> float:
        """Current decayed score of ``peer`` (0.0 if unknown)."""
        rec = self._records.get(peer)
        return 0.0 if rec is None else self._decayed(rec, now)

    def is_banned(self, peer: str, now: float) -> bool:
        """Whether ``peer`` is banned at ``now``."""
        rec = self._records.get(peer)
        return rec is not None and rec.banned_until is not None and now < rec.banned_until

    def reason(self, peer: str) -> str:
        """The reason of the last penalty or ban of ``peer`` ("" if none)."""
        rec = self._records.get(peer)
        return "" if rec is None else rec.last_reason

    def expire(self, now: float) -> list[str]:
        """End the bans that are over; return the peers that were unbanned."""
        ended = []
        for peer, rec in self._records.items():
            if rec.banned_until is not None and now >= rec.banned_until:
                rec.banned_until = None
                rec.score = 0.0
                rec.updated = now
                ended.append(peer)
        return ended

    def banned(self, now: float) -> list[str]:
        """Peers banned at ``now``."""
        return [p for p in self._records if self.is_banned(p, now)]

    def _make_room(self, now: float) -> None:
        if len(self._records) < self.max_entries:
            return
        # drop the lowest-scored non-banned peer; if every entry is a ban, the oldest one
        candidates = [p for p in self._records if not self.is_banned(p, now)]
        if candidates:
            victim = min(candidates, key=lambda p: self._decayed(self._records[p], now))
        else:
            victim = next(iter(self._records))
        del self._records[victim]


class ConcurrencyCounter:
    """How many operations each key has in flight, with a per-key and a global cap."""

    def __init__(self, per_key: int, total: int) -> None:
        if per_key < 1 or total < 1:
            raise ValueError("per_key and total must be >= 1")
        self.per_key = per_key
        self.total = total
        self._counts: dict[str, int] = {}
        self._total = 0

    def try_acquire(self, key: str) -> bool:
        """Reserve one slot for ``key``; False if a cap is reached."""
        if self._total >= self.total or self._counts.get(key, 0) >= self.per_key:
            return False
        self._counts[key] = self._counts.get(key, 0) + 1
        self._total += 1
        return True

    def release(self, key: str) -> None:
        """Give back one slot of ``key`` (must match a successful :meth:`try_acquire`)."""
        count = self._counts.get(key, 0)
        if count <= 0:
            raise RuntimeError(f"release without acquire for {key!r}")
        if count == 1:
            del self._counts[key]
        else:
            self._counts[key] = count - 1
        self._total -= 1

    def in_flight(self, key: str | None = None) -> int:
        """Operations in flight for ``key``, or in total when ``key`` is None."""
        return self._total if key is None else self._counts.get(key, 0)
