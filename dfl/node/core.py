"""The dfl node as a sans-I/O state machine.

``NodeCore.handle(event, now) -> list[Effect]`` is the whole API: the caller (the trio daemon or
the simulator) owns every socket, timer, thread, store and clock, feeds events in and executes the
effects that come out. Nothing here blocks, sleeps, reads a clock or touches the network, so the
daemon and the simulator run exactly the same logic.

One round ``r`` of a node:

1. ``Train`` effect: train locally from the current model ``x_r`` -> ``TrainingDone``.
2. Build, sign and ``Commit`` + ``Publish`` block ``B_r``: it announces the trained model ``y_r``
   (digest, size, samples, metrics) and records, as ``parents`` and ``verdicts``, the decisions of
   the aggregation that produced ``x_r``. So every block says "I trained from the average of these
   accepted peer blocks (and rejected those), and got this model".
3. Collect peer headers (arriving at any time, prefetched while training) and ``FetchBlob`` their
   models, until ``K`` candidates are ready or the round timer fires. ``K`` is
   ``min(round.max_updates, connected peers)``; with no peers the node waits the full timeout and
   continues alone.
4. ``Aggregate`` effect: run the robust rule on own ``y_r`` + candidates -> ``AggregationDone``,
   giving ``x_{r+1}`` and one verdict per candidate; go to round ``r + 1``.

Invariants:

* every header from the network is size-checked, decoded (total decoder), network-checked,
  signature-checked and link-checked before anything else looks at it; a bad one yields a
  ``Penalize`` effect naming the reason and changes nothing else;
* two different valid blocks by one author at one height produce an ``Evidence`` effect with a
  self-verifying proof; the author is ignored from then on;
* a peer model is used only if its bytes hash to the announced digest (checked by the transport)
  and decode to ``num_params`` finite float32 values (checked here);
* the standing (reputation) of an author is an exponential average of this node's own signed
  verdicts on it (a rejection whose reason starts with ``rank:`` only ranked the model below
  others and does not count); it is rebuilt from the node's chain on restart; authors under
  ``min_reputation`` are ignored until their standing recovers (it recovers slowly each round);
* candidates are processed in a canonical order (sorted by author key) so a seeded simulation is
  deterministic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dfl.block import (
    ZERO_HASH,
    Block,
    Verdict,
    blob_to_model,
    decode,
    encode,
    make_block,
    model_to_blob,
)
from dfl.chain import check_block, find_equivocation
from dfl.crypto import Identity, peer_id_from_public_key
from dfl.errors import InvalidBlock, UsageError
from dfl.learning.robust import counts_for_standing

__all__ = [
    "Aggregate",
    "AggregationDone",
    "BlobFailed",
    "BlobReceived",
    "Commit",
    "CoreParams",
    "Done",
    "Effect",
    "Event",
    "Evidence",
    "FetchBlob",
    "HeaderReceived",
    "Log",
    "Metric",
    "NodeCore",
    "PeerJoined",
    "PeerLeft",
    "Penalize",
    "Publish",
    "Start",
    "Tick",
    "Train",
    "TrainingDone",
]

REPUTATION_ALPHA = 0.3  # weight of the newest verdict in the standing average
REPUTATION_RECOVERY = 0.02  # standing regained per round without a verdict
SEEN_WINDOW = 64  # heights per author kept for equivocation detection
MAX_TRACKED_AUTHORS = 4096  # authors whose recent blocks are kept (bounds memory under Sybils)
MAX_PENDING = 256  # candidate blocks waiting for their round (newest per author)


# --------------------------------------------------------------------------- events (in)


@dataclass(frozen=True)
class Start:
    """Begin (or resume) running rounds."""


@dataclass(frozen=True)
class Tick:
    """Time passed; the core checks its timers. Send it at ``next_deadline()`` at the latest."""


@dataclass(frozen=True)
class TrainingDone:
    """Local training of ``round`` finished.

    ``model`` is the node's own next state; ``published`` is what it announces (equal to
    ``model`` for honest nodes; a poisoned model for a deliberately malicious node).
    """

    round: int
    model: np.ndarray
    samples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    published: np.ndarray | None = None


@dataclass(frozen=True)
class HeaderReceived:
    """Raw header bytes from the network, relayed by ``peer``."""

    data: bytes
    peer: str


@dataclass(frozen=True)
class BlobReceived:
    """A model blob whose BLAKE2b-256 digest the transport already checked."""

    digest: bytes
    data: bytes
    peer: str


@dataclass(frozen=True)
class BlobFailed:
    """A blob request failed (timeout, not found, digest mismatch...)."""

    digest: bytes
    peer: str
    reason: str


@dataclass(frozen=True)
class AggregationDone:
    """The robust rule finished: new model, one verdict per candidate (same order), rule state."""

    round: int
    model: np.ndarray
    accepted: tuple[bool, ...]
    scores: tuple[float, ...]
    reasons: tuple[str, ...]
    state: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PeerJoined:
    peer: str


@dataclass(frozen=True)
class PeerLeft:
    peer: str


Event = (
    Start
    | Tick
    | TrainingDone
    | HeaderReceived
    | BlobReceived
    | BlobFailed
    | AggregationDone
    | PeerJoined
    | PeerLeft
)


# --------------------------------------------------------------------------- effects (out)


@dataclass(frozen=True)
class Train:
    """Run local training of ``round`` from ``model``; answer with :class:`TrainingDone`.

    ``attack`` names the poisoning attack of a malicious node (``None`` for honest nodes);
    ``neighbor_models`` are the peer models this node saw last round (all an attacker sees).
    """

    round: int
    model: np.ndarray
    seed: int
    attack: str | None = None
    neighbor_models: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class Aggregate:
    """Run the robust rule; answer with :class:`AggregationDone`."""

    round: int
    rule: str
    own: np.ndarray
    own_samples: int
    candidates: tuple[np.ndarray, ...]
    weights: tuple[int, ...]
    authors: tuple[bytes, ...]
    num_byzantine: int
    seed: int
    state: Mapping[str, Any]
    start: np.ndarray | None = None  # the model this round's training began from


@dataclass(frozen=True)
class Commit:
    """Persist ``block`` (own or a verified peer header) and its blob, if given, atomically."""

    block: Block
    blob: bytes | None = None
    own: bool = False


@dataclass(frozen=True)
class Publish:
    """Gossip these header bytes to the network."""

    data: bytes
    block: Block


@dataclass(frozen=True)
class FetchBlob:
    """Fetch the blob ``digest`` (``size`` bytes) from ``peer``; answer BlobReceived/BlobFailed."""

    peer: str
    digest: bytes
    size: int


@dataclass(frozen=True)
class Penalize:
    """``peer`` sent something invalid."""

    peer: str
    reason: str
    weight: float = 1.0


@dataclass(frozen=True)
class Evidence:
    """Two signed blocks by one author at one height (self-verifying equivocation proof)."""

    author: bytes
    proof: bytes


@dataclass(frozen=True)
class Metric:
    """Per-round numbers for logs, dashboards and the simulator's metrics file."""

    round: int
    values: Mapping[str, float]


@dataclass(frozen=True)
class Log:
    level: str
    message: str


@dataclass(frozen=True)
class Done:
    """The configured number of rounds has run."""


Effect = (
    Train | Aggregate | Commit | Publish | FetchBlob | Penalize | Evidence | Metric | Log | Done
)


# --------------------------------------------------------------------------- the core


@dataclass(frozen=True)
class CoreParams:
    """Everything the core needs to know; see :mod:`dfl.config` for the user-facing names."""

    network: bytes
    num_params: int
    rule: str = "fedavg"
    num_byzantine: int = 1
    round_timeout_s: float = 10.0
    min_round_s: float = 0.0  # a round never ends sooner than this after its training started
    max_updates: int = 8
    max_staleness: int = 2
    min_reputation: float = 0.2
    max_rounds: int | None = None  # rounds to run in this session (None = forever)
    seed: int = 0
    attack: str | None = None
    check_signatures: bool = True
    max_header_bytes: int = 64 * 1024
    max_clock_skew_ms: int = 120_000

    def __post_init__(self) -> None:
        if len(self.network) != 32:
            raise UsageError("CoreParams.network must be a 32-byte network id")
        if self.num_params <= 0:
            raise UsageError("CoreParams.num_params must be positive")
        if self.round_timeout_s <= 0:
            raise UsageError("CoreParams.round_timeout_s must be positive")
        if self.max_rounds is not None and self.max_rounds < 0:
            raise UsageError("CoreParams.max_rounds must be >= 0")


@dataclass
class _Candidate:
    block: Block
    peer: str
    model: np.ndarray | None = None
    requested: bool = False


class NodeCore:
    """One dfl node's logic: create it, optionally :meth:`restore` its chain, send ``Start``."""

    def __init__(
        self, identity: Identity, params: CoreParams, initial_model: np.ndarray, samples: int
    ) -> None:
        if initial_model.shape != (params.num_params,):
            raise UsageError(
                f"initial model has shape {initial_model.shape}, expected ({params.num_params},)"
            )
        self.identity = identity
        self.params = params
        self.author = identity.public_key
        self.samples = int(samples)
        self.round = 0
        self.phase = "idle"  # idle -> training -> collecting -> aggregating -> training ... -> done
        self.model = np.asarray(initial_model, dtype=np.float32)
        self.trained: np.ndarray | None = None
        self.head: Block | None = None
        self.rounds_run = 0
        self.deadline: float | None = None
        self._round_started = 0.0
        self._timeout_at = 0.0
        self.rule_state: Mapping[str, Any] = {}
        self.reputation: dict[bytes, float] = {}
        self.banned: set[bytes] = set()
        self.peers: set[str] = set()
        self.last_neighbor_models: tuple[np.ndarray, ...] = ()
        self._next_parents: tuple[bytes, ...] = ()
        self._next_verdicts: tuple[Verdict, ...] = ()
        self._extra_verdicts: list[Verdict] = []  # bad blobs seen this round
        self._pending: dict[bytes, _Candidate] = {}  # author -> its newest usable block
        self._by_digest: dict[bytes, bytes] = {}  # requested digest -> author
        self._used: OrderedDict[bytes, None] = OrderedDict()  # block hashes already aggregated
        # author -> height -> block, least recently active author first
        self._seen: OrderedDict[bytes, OrderedDict[int, Block]] = OrderedDict()
        self._known_hashes: OrderedDict[bytes, None] = OrderedDict()
        self._aggregating: tuple[_Candidate, ...] = ()
        self._peer_ids: dict[bytes, str] = {}
        self.stats: dict[str, int] = {
            "headers_in": 0,
            "headers_invalid": 0,
            "blobs_in": 0,
            "blobs_invalid": 0,
            "accepted": 0,
            "rejected": 0,
            "equivocations": 0,
        }

    # ----------------------------------------------------------------- restore / queries

    def restore(
        self,
        own_chain: Sequence[Block],
        last_model: np.ndarray | None,
        author_of: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        """Resume from the node's own committed chain (height order) and its head's model.

        Standing is rebuilt from the signed verdicts in the chain; ``author_of`` maps a verdict's
        block hash to its author (from the store's peer headers).
        """
        if self.phase != "idle":
            raise UsageError("restore() must be called before Start")
        if not own_chain:
            return
        for block in own_chain:
            if block.author != self.author:
                raise UsageError("restore(): chain contains a block by another author")
            for v in block.verdicts:
                self._remember_hash(v.block)
            if author_of is not None:
                self._apply_standing(
                    [
                        (author_of(v.block), v.accepted)
                        for v in block.verdicts
                        if counts_for_standing(v.accepted, v.reason)
                    ],
                    recover=True,
                )
        head = own_chain[-1]
        self.head = head
        self.round = head.round + 1
        if last_model is not None:
            if last_model.shape != (self.params.num_params,):
                raise UsageError("restore(): model has the wrong shape")
            self.model = np.asarray(last_model, dtype=np.float32)

    def next_deadline(self) -> float | None:
        """When the core next needs a :class:`Tick` (``None``: no timer running)."""
        return self.deadline

    @property
    def height(self) -> int:
        return -1 if self.head is None else self.head.height

    def peer_of(self, author: bytes) -> str:
        """The libp2p peer id of an author (the block-signing key is the peer key)."""
        pid = self._peer_ids.get(author)
        if pid is None:
            pid = peer_id_from_public_key(author)
            self._peer_ids[author] = pid
        return pid

    def standing(self, author: bytes) -> float:
        if author in self.banned:
            return 0.0
        return self.reputation.get(author, 1.0)

    # ----------------------------------------------------------------- dispatch

    def handle(self, event: Event, now: float) -> list[Effect]:
        """Feed one event at time ``now`` (seconds); return the effects to execute, in order."""
        if isinstance(event, HeaderReceived):
            return self._on_header(event, now)
        if isinstance(event, BlobReceived):
            return self._on_blob(event, now)
        if isinstance(event, BlobFailed):
            return self._on_blob_failed(event, now)
        if isinstance(event, TrainingDone):
            return self._on_trained(event, now)
        if isinstance(event, AggregationDone):
            return self._on_aggregated(event, now)
        if isinstance(event, Tick):
            return self._on_tick(now)
        if isinstance(event, Start):
            return self._on_start(now)
        if isinstance(event, PeerJoined):
            self.peers.add(event.peer)
            return self._maybe_aggregate(now)
        if isinstance(event, PeerLeft):
            self.peers.discard(event.peer)
            return self._maybe_aggregate(now)
        raise UsageError(f"unknown event {event!r}")

    # ----------------------------------------------------------------- round flow

    def _on_start(self, now: float) -> list[Effect]:
        if self.phase != "idle":
            return []
        if self.params.max_rounds == 0:
            self.phase = "done"
            return [Done()]
        return self._begin_training(now)

    def _begin_training(self, now: float) -> list[Effect]:
        self.phase = "training"
        self.deadline = None
        self._round_started = now
        seed = (self.params.seed * 1_000_003 + self.round) & 0x7FFFFFFF
        return [
            Train(
                round=self.round,
                model=self.model,
                seed=seed,
                attack=self.params.attack,
                neighbor_models=self.last_neighbor_models,
            )
        ]

    def _on_trained(self, ev: TrainingDone, now: float) -> list[Effect]:
        if self.phase != "training" or ev.round != self.round:
            return [Log("warning", f"ignoring stale training result for round {ev.round}")]
        model = np.asarray(ev.model, dtype=np.float32)
        published = model if ev.published is None else np.asarray(ev.published, dtype=np.float32)
        if model.shape != (self.params.num_params,) or published.shape != model.shape:
            raise UsageError("training returned a model of the wrong shape")
        self.trained = model
        blob = model_to_blob(published)
        metrics = tuple(sorted((str(k), float(v)) for k, v in ev.metrics.items()))
        block = make_block(
            self.identity,
            network=self.params.network,
            height=self.height + 1,
            prev=ZERO_HASH if self.head is None else self.head.hash,
            round=self.round,
            timestamp_ms=max(int(now * 1000), 0 if self.head is None else self.head.timestamp_ms),
            model=blob,
            samples=max(1, int(ev.samples)),
            metrics=metrics,
            parents=self._next_parents,
            verdicts=self._next_verdicts,
        )
        self.head = block
        self.samples = max(1, int(ev.samples))
        self._remember(block)
        self.phase = "collecting"
        self._timeout_at = now + self.params.round_timeout_s
        self.deadline = self._timeout_at
        effects: list[Effect] = [
            Commit(block, blob, own=True),
            Publish(encode(block), block),
            Metric(self.round, {"height": float(block.height), **dict(metrics)}),
        ]
        effects.extend(self._request_pending())
        effects.extend(self._maybe_aggregate(now))
        return effects

    def _on_tick(self, now: float) -> list[Effect]:
        if self.phase == "collecting" and self.deadline is not None and now >= self.deadline:
            return self._maybe_aggregate(now)
        return []

    def _usable(self, c: _Candidate) -> bool:
        return (
            c.block.round >= self.round - self.params.max_staleness
            and c.block.hash not in self._used
            and self.standing(c.block.author) >= self.params.min_reputation
        )

    def _ready(self) -> list[_Candidate]:
        return sorted(
            (c for c in self._pending.values() if c.model is not None and self._usable(c)),
            key=lambda c: c.block.author,
        )

    def _wanted(self) -> int:
        """Candidates worth waiting for: one per connected peer the node still listens to.

        A peer whose author is ignored (banned, or standing below ``min_reputation``) sends
        nothing usable, so waiting for its model would only run every round into the timeout
        (and hold back the neighbours, who wait for this node's blocks in turn). With no peer
        left to listen to the node waits the full timeout, as with no peers at all."""
        ignored = {
            self.peer_of(a)
            for a in (*self.banned, *self.reputation)
            if self.standing(a) < self.params.min_reputation
        }
        listened = len(self.peers - ignored)
        if not listened:
            return self.params.max_updates
        return min(self.params.max_updates, listened)

    def _maybe_aggregate(self, now: float) -> list[Effect]:
        """Aggregate when K candidates are ready or the round timed out -- but never before
        ``min_round_s`` after the round's training started."""
        if self.phase != "collecting":
            return []
        wanted = self._wanted()
        enough = wanted == 0 or (bool(self.peers) and len(self._ready()) >= wanted)
        if not (enough or now >= self._timeout_at):
            return []
        earliest = self._round_started + self.params.min_round_s
        if now < earliest:
            self.deadline = earliest
            return []
        return self._aggregate(now)

    def _aggregate(self, now: float) -> list[Effect]:
        assert self.trained is not None
        ready = self._ready()[: max(self.params.max_updates, 0)]
        self.phase = "aggregating"
        self.deadline = None
        self._aggregating = tuple(ready)
        return [
            Aggregate(
                round=self.round,
                rule=self.params.rule,
                own=self.trained,
                own_samples=self.samples,
                candidates=tuple(c.model for c in ready if c.model is not None),
                weights=tuple(c.block.samples for c in ready),
                authors=tuple(c.block.author for c in ready),
                num_byzantine=self.params.num_byzantine,
                seed=(self.params.seed * 7_919 + self.round) & 0x7FFFFFFF,
                state=self.rule_state,
                start=self.model,
            )
        ]

    def _on_aggregated(self, ev: AggregationDone, now: float) -> list[Effect]:
        if self.phase != "aggregating" or ev.round != self.round:
            return [Log("warning", f"ignoring stale aggregation result for round {ev.round}")]
        cands = self._aggregating
        n = len(cands)
        if not (len(ev.accepted) == len(ev.scores) == len(ev.reasons) == n):
            raise UsageError("aggregation returned a verdict count that does not match")
        model = np.asarray(ev.model, dtype=np.float32)
        if model.shape != (self.params.num_params,) or not np.isfinite(model).all():
            raise UsageError("aggregation returned a non-finite or wrongly shaped model")
        verdicts = []
        parents = []
        for c, ok, score, reason in zip(cands, ev.accepted, ev.scores, ev.reasons, strict=True):
            h = c.block.hash
            self._mark_used(h)
            s = float(score) if np.isfinite(score) else 0.0
            verdicts.append(Verdict(block=h, accepted=bool(ok), score=s, reason=reason[:32]))
            if ok:
                parents.append(h)
        self._apply_standing(
            [
                (c.block.author, ok)
                for c, ok, reason in zip(cands, ev.accepted, ev.reasons, strict=True)
                if counts_for_standing(ok, reason)
            ],
            True,
        )
        n_acc = sum(ev.accepted)
        self.stats["accepted"] += n_acc
        self.stats["rejected"] += n - n_acc
        self._next_parents = tuple(sorted(set(parents)))
        verdicts.extend(self._extra_verdicts)
        self._extra_verdicts = []
        self._next_verdicts = tuple(sorted(verdicts, key=lambda v: v.block))
        # only an attacker reads them (see Train.neighbor_models); honest nodes keep no copies
        if self.params.attack:
            self.last_neighbor_models = tuple(c.model for c in cands if c.model is not None)
        self.rule_state = dict(ev.state)
        self.model = model
        self._aggregating = ()
        # drop models we no longer need; keep headers of authors for later rounds
        for author, c in list(self._pending.items()):
            if c.block.hash in self._used:
                del self._pending[author]
        effects: list[Effect] = [
            Metric(self.round, {"accepted": float(n_acc), "rejected": float(n - n_acc)})
        ]
        rejected = [
            f"{c.block.author.hex()[:8]}:{reason}"
            for c, ok, reason in zip(cands, ev.accepted, ev.reasons, strict=True)
            if not ok
        ]
        msg = f"round {self.round}: accepted {n_acc}/{n}"
        if rejected:
            msg += " rejected " + ", ".join(rejected)
        effects.append(Log("info", msg))
        self.rounds_run += 1
        self.round += 1
        if self.params.max_rounds is not None and self.rounds_run >= self.params.max_rounds:
            self.phase = "done"
            effects.append(Done())
            return effects
        effects.extend(self._begin_training(now))
        return effects

    # ----------------------------------------------------------------- standing

    def _apply_standing(self, outcomes: Sequence[tuple[bytes | None, bool]], recover: bool) -> None:
        judged = set()
        for author, ok in outcomes:
            if author is None:
                continue
            judged.add(author)
            old = self.reputation.get(author, 1.0)
            self.reputation[author] = (1 - REPUTATION_ALPHA) * old + REPUTATION_ALPHA * float(ok)
        if recover:
            for author, rep in self.reputation.items():
                if author not in judged and rep < 1.0:
                    self.reputation[author] = min(1.0, rep + REPUTATION_RECOVERY)

    # ----------------------------------------------------------------- network input

    def _remember_hash(self, h: bytes) -> None:
        self._known_hashes[h] = None
        if len(self._known_hashes) > 100_000:
            self._known_hashes.popitem(last=False)

    def _mark_used(self, h: bytes) -> None:
        self._used[h] = None
        if len(self._used) > 100_000:
            self._used.popitem(last=False)

    def _remember(self, block: Block) -> None:
        self._remember_hash(block.hash)
        heights = self._seen.setdefault(block.author, OrderedDict())
        self._seen.move_to_end(block.author)
        while len(self._seen) > MAX_TRACKED_AUTHORS:
            self._seen.popitem(last=False)
        heights[block.height] = block
        while len(heights) > SEEN_WINDOW:
            heights.popitem(last=False)

    def _on_header(self, ev: HeaderReceived, now: float) -> list[Effect]:
        self.stats["headers_in"] += 1
        if len(ev.data) > self.params.max_header_bytes:
            return self._invalid(ev.peer, "oversized-header")
        try:
            block = decode(ev.data)
        except InvalidBlock as e:
            return self._invalid(ev.peer, e.reason)
        if block.network != self.params.network:
            return self._invalid(ev.peer, "wrong-network")
        if block.author == self.author:
            # our own block echoed back, or someone forging blocks in our name
            known = block.hash in self._known_hashes
            if not known and self.params.check_signatures and not block.verify_signature():
                return self._invalid(ev.peer, "bad-signature")
            return []
        if block.hash in self._known_hashes:
            return []
        if self.params.check_signatures and not block.verify_signature():
            return self._invalid(ev.peer, "bad-signature")
        heights = self._seen.get(block.author)
        effects: list[Effect] = []
        if heights is not None:
            other = heights.get(block.height)
            if other is not None and other.hash != block.hash:
                proof = find_equivocation(other, block)
                if proof is not None:
                    self.banned.add(block.author)
                    self.stats["equivocations"] += 1
                    self._pending.pop(block.author, None)
                    self._remember_hash(block.hash)
                    return [
                        Evidence(block.author, proof.encode()),
                        Penalize(self.peer_of(block.author), "equivocation", 100.0),
                        Log(
                            "warning",
                            f"author {block.author.hex()[:8]} equivocated at "
                            f"height {block.height}; ignoring it from now on",
                        ),
                    ]
            prev = heights.get(block.height - 1)
        else:
            prev = None
        try:
            if prev is not None or block.height == 0:
                check_block(
                    block,
                    prev,
                    network=self.params.network,
                    now_ms=int(now * 1000),
                    max_skew_ms=self.params.max_clock_skew_ms,
                    check_signature=False,
                )
            elif block.timestamp_ms > int(now * 1000) + self.params.max_clock_skew_ms:
                raise InvalidBlock("future-timestamp")
        except InvalidBlock as e:
            return self._invalid(ev.peer, e.reason)
        self._remember(block)
        effects.append(Commit(block))
        if block.author in self.banned:
            return effects
        if block.round < self.round - self.params.max_staleness:
            return effects
        current = self._pending.get(block.author)
        if current is not None and current.block.round >= block.round:
            return effects
        if current is not None:
            self._by_digest.pop(current.block.model_digest, None)
        self._pending[block.author] = _Candidate(block=block, peer=ev.peer)
        if len(self._pending) > MAX_PENDING:
            # drop the stalest candidate (lowest round, then author) to bound memory
            worst = min(self._pending.values(), key=lambda c: (c.block.round, c.block.author))
            self._by_digest.pop(worst.block.model_digest, None)
            del self._pending[worst.block.author]
        effects.extend(self._request_pending())
        effects.extend(self._maybe_aggregate(now))
        return effects

    def _request_pending(self) -> list[Effect]:
        effects: list[Effect] = []
        outstanding = sum(1 for c in self._pending.values() if c.requested and c.model is None)
        for author in sorted(self._pending):
            c = self._pending[author]
            if c.requested or not self._usable(c):
                continue
            if outstanding >= max(2 * self.params.max_updates, 4):
                break
            c.requested = True
            outstanding += 1
            self._by_digest[c.block.model_digest] = author
            effects.append(
                FetchBlob(self.peer_of(author), c.block.model_digest, c.block.model_size)
            )
        return effects

    def _on_blob(self, ev: BlobReceived, now: float) -> list[Effect]:
        author = self._by_digest.pop(ev.digest, None)
        if author is None:
            return []
        c = self._pending.get(author)
        if c is None or c.block.model_digest != ev.digest:
            return []
        self.stats["blobs_in"] += 1
        try:
            if len(ev.data) != c.block.model_size:
                raise InvalidBlock("blob-size-mismatch")
            model = blob_to_model(ev.data, self.params.num_params)
        except InvalidBlock as e:
            self.stats["blobs_invalid"] += 1
            del self._pending[author]
            self._mark_used(c.block.hash)
            self._apply_standing([(author, False)], recover=False)
            self._extra_verdicts.append(Verdict(c.block.hash, False, 0.0, e.reason[:32]))
            return [
                Penalize(ev.peer, e.reason, 5.0),
                Log("warning", f"bad model from {author.hex()[:8]}: {e.reason}"),
            ]
        c.model = model
        effects: list[Effect] = [Commit(c.block, ev.data)]
        effects.extend(self._maybe_aggregate(now))
        return effects

    def _on_blob_failed(self, ev: BlobFailed, now: float) -> list[Effect]:
        author = self._by_digest.pop(ev.digest, None)
        if author is None:
            return []
        c = self._pending.get(author)
        if c is not None and c.block.model_digest == ev.digest:
            c.requested = False  # may be retried via another relay later
            del self._pending[author]
        effects: list[Effect] = [Log("debug", f"blob fetch failed from {ev.peer}: {ev.reason}")]
        if ev.reason in ("digest-mismatch", "oversized"):
            effects.append(Penalize(ev.peer, ev.reason, 5.0))
        return effects

    def _invalid(self, peer: str, reason: str) -> list[Effect]:
        self.stats["headers_invalid"] += 1
        return [Penalize(peer, reason, 1.0), Log("debug", f"invalid header from {peer}: {reason}")]
