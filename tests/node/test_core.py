"""The node core as a state machine: several cores wired in memory, a tiny numpy 'learner'.

No JAX, no sockets: training adds a per-node constant to the model, aggregation is a plain
sample-weighted mean that rejects candidates far from the own model. Every assertion is on values
(blocks, parents, verdicts, penalties, evidence).
"""

from __future__ import annotations

import numpy as np
import pytest

from dfl.block import Verdict, decode, encode, make_block, model_to_blob
from dfl.chain import Equivocation, validate_chain
from dfl.crypto import Identity, blake2b256
from dfl.errors import UsageError
from dfl.node import core as C

NET = blake2b256(b"test-network")
D = 16


def ident(i: int) -> Identity:
    return Identity.from_seed(blake2b256(b"node-%d" % i))


def params(**kw: object) -> C.CoreParams:
    base: dict[str, object] = dict(
        network=NET, num_params=D, rule="toy", round_timeout_s=5.0, max_updates=8, max_rounds=3
    )
    base.update(kw)
    return C.CoreParams(**base)  # type: ignore[arg-type]


def toy_train(job: C.Train, delta: float, bad: bool = False) -> C.TrainingDone:
    new = job.model + np.float32(delta)
    pub = new * 1000 if bad else new
    return C.TrainingDone(
        job.round, new, samples=10, metrics={"loss": 1.0 / (job.round + 1)}, published=pub
    )


def toy_aggregate(job: C.Aggregate) -> C.AggregationDone:
    own = job.own
    acc, keep = [], [own]
    for m in job.candidates:
        ok = bool(np.linalg.norm(m - own) < 50.0)
        acc.append(ok)
        if ok:
            keep.append(m)
    return C.AggregationDone(
        job.round,
        np.mean(keep, axis=0).astype(np.float32),
        tuple(acc),
        tuple(1.0 if a else 0.0 for a in acc),
        tuple("ok" if a else "too-far" for a in acc),
        {},
    )


class Net:
    """Cores wired fully; effects executed immediately; a virtual clock."""

    def __init__(self, n: int, bad: set[int] = frozenset(), **kw: object) -> None:  # type: ignore[assignment]
        self.cores = [
            C.NodeCore(ident(i), params(**kw), np.zeros(D, np.float32), 10) for i in range(n)
        ]
        self.bad = bad
        self.now = 0.0
        self.blobs: dict[bytes, bytes] = {}
        self.chains: dict[int, list] = {i: [] for i in range(n)}
        self.penalties: list[tuple[int, str, str]] = []
        self.evidence: list[tuple[int, bytes]] = []
        self.done = [False] * n
        self.queue: list[tuple[int, C.Event]] = []
        for i in range(n):
            for j in range(n):
                if i != j:
                    self.queue.append((i, C.PeerJoined(self.cores[j].identity.peer_id)))
            self.queue.append((i, C.Start()))
        self.pid = {c.identity.peer_id: i for i, c in enumerate(self.cores)}

    def pump(self, limit: int = 10_000) -> None:
        steps = 0
        while self.queue and steps < limit:
            steps += 1
            i, ev = self.queue.pop(0)
            for eff in self.cores[i].handle(ev, self.now):
                self.execute(i, eff)

    def execute(self, i: int, eff: C.Effect) -> None:
        if isinstance(eff, C.Train):
            self.queue.append((i, toy_train(eff, 0.1 * (i + 1), bad=i in self.bad)))
        elif isinstance(eff, C.Aggregate):
            self.queue.append((i, toy_aggregate(eff)))
        elif isinstance(eff, C.Commit):
            if eff.own:
                self.chains[i].append(eff.block)
                assert eff.blob is not None
                self.blobs[eff.block.model_digest] = eff.blob
        elif isinstance(eff, C.Publish):
            for j in range(len(self.cores)):
                if j != i:
                    self.queue.append(
                        (j, C.HeaderReceived(eff.data, self.cores[i].identity.peer_id))
                    )
        elif isinstance(eff, C.FetchBlob):
            blob = self.blobs.get(eff.digest)
            if blob is None:
                self.queue.append((i, C.BlobFailed(eff.digest, eff.peer, "not-found")))
            else:
                self.queue.append((i, C.BlobReceived(eff.digest, blob, eff.peer)))
        elif isinstance(eff, C.Penalize):
            self.penalties.append((i, eff.peer, eff.reason))
        elif isinstance(eff, C.Evidence):
            self.evidence.append((i, eff.proof))
        elif isinstance(eff, C.Done):
            self.done[i] = True

    def tick_until_done(self, max_ticks: int = 50) -> None:
        for _ in range(max_ticks):
            self.pump()
            if all(self.done):
                return
            self.now += 1.0
            for i in range(len(self.cores)):
                self.queue.append((i, C.Tick()))
        self.pump()


def test_three_honest_nodes_run_rounds_and_name_each_other_as_parents() -> None:
    net = Net(3)
    net.tick_until_done()
    assert all(net.done)
    for i, chain in net.chains.items():
        assert [b.height for b in chain] == [0, 1, 2]
        assert [b.round for b in chain] == [0, 1, 2]
        validate_chain(chain, network=NET, sig_check="each")
        others = {b.hash for j, ch in net.chains.items() if j != i for b in ch}
        # from round 1 on, each block names the other two nodes' previous blocks as parents
        for b in chain[1:]:
            assert len(b.parents) == 2
            assert set(b.parents) <= others
            assert all(v.accepted for v in b.verdicts)
    # all three models converge to the same average (fully connected, everyone accepted)
    models = [c.model for c in net.cores]
    assert np.allclose(models[0], models[1]) and np.allclose(models[1], models[2])
    assert net.penalties == []


def test_far_model_is_rejected_recorded_and_standing_drops() -> None:
    net = Net(4, bad={3}, max_rounds=6)
    net.tick_until_done()
    bad_author = net.cores[3].author
    bad_hashes = {b.hash for b in net.chains[3]}
    for i in range(3):
        rejected = [v for b in net.chains[i] for v in b.verdicts if v.block in bad_hashes]
        assert rejected and all(not v.accepted and v.reason == "too-far" for v in rejected)
        assert not any(p in bad_hashes for b in net.chains[i] for p in b.parents)
        assert net.cores[i].standing(bad_author) < 0.5
        # the honest nodes stay together
        assert np.abs(net.cores[i].model).max() < 10


def test_lonely_node_commits_after_timeout() -> None:
    core = C.NodeCore(ident(0), params(max_rounds=2), np.zeros(D, np.float32), 10)
    eff = core.handle(C.Start(), 0.0)
    assert isinstance(eff[0], C.Train)
    effs = core.handle(toy_train(eff[0], 1.0), 0.5)
    assert any(isinstance(e, C.Commit) and e.own for e in effs)
    assert core.next_deadline() == pytest.approx(5.5)
    assert core.handle(C.Tick(), 3.0) == []
    effs = core.handle(C.Tick(), 5.5)
    agg = [e for e in effs if isinstance(e, C.Aggregate)]
    assert len(agg) == 1 and agg[0].candidates == ()
    effs = core.handle(toy_aggregate(agg[0]), 5.5)
    assert any(isinstance(e, C.Train) and e.round == 1 for e in effs)


def test_aggregate_carries_the_model_training_began_from() -> None:
    """``Aggregate.start`` is the model of the round's ``Train`` (the previous aggregate), so
    ``own - start`` is exactly the node's own update (what ``robust.direction`` compares)."""
    core = C.NodeCore(ident(0), params(max_rounds=3), np.full(D, 0.5, np.float32), 10)
    (train,) = core.handle(C.Start(), 0.0)
    for rnd in range(2):
        core.handle(toy_train(train, 1.0), 0.5 + 10 * rnd)
        effs = core.handle(C.Tick(), 5.5 + 10 * rnd)
        (agg,) = [e for e in effs if isinstance(e, C.Aggregate)]
        assert agg.start is not None and agg.start is train.model
        np.testing.assert_array_equal(agg.own - agg.start, np.ones(D, np.float32))
        done = toy_aggregate(agg)
        effs = core.handle(done, 5.5 + 10 * rnd)
        (train,) = [e for e in effs if isinstance(e, C.Train)]
        np.testing.assert_array_equal(train.model, done.model)


def _started_core(max_rounds: int = 5) -> C.NodeCore:
    core = C.NodeCore(ident(0), params(max_rounds=max_rounds), np.zeros(D, np.float32), 10)
    core.handle(C.PeerJoined("peer"), 0.0)
    (train,) = core.handle(C.Start(), 0.0)
    assert isinstance(train, C.Train)
    core.handle(toy_train(train, 1.0), 0.0)
    return core


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", None),
        (b"\x93\x01\x02\x03", None),
        (b"\xff" * 100, None),
        (b"x" * (70 * 1024), "oversized-header"),
    ],
)
def test_garbage_headers_are_penalized_and_change_nothing(data: bytes, reason: str | None) -> None:
    core = _started_core()
    before = (core.round, core.phase, core.height)
    effs = core.handle(C.HeaderReceived(data, "evil"), 1.0)
    pens = [e for e in effs if isinstance(e, C.Penalize)]
    assert len(pens) == 1 and pens[0].peer == "evil"
    if reason:
        assert pens[0].reason == reason
    assert (core.round, core.phase, core.height) == before
    assert not any(isinstance(e, (C.Commit, C.FetchBlob)) for e in effs)


def _peer_block(
    i: int,
    height: int = 0,
    round: int = 0,
    model: np.ndarray | None = None,
    prev: bytes = b"\0" * 32,
    net: bytes = NET,
):
    m = np.zeros(D, np.float32) if model is None else model
    return make_block(
        ident(i),
        network=net,
        height=height,
        prev=prev,
        round=round,
        timestamp_ms=1000,
        model=m,
        samples=10,
    )


def test_bad_signature_and_wrong_network_are_penalized() -> None:
    core = _started_core()
    good = _peer_block(1)
    raw = bytearray(encode(good))
    raw[-5] ^= 0x01  # inside the signature
    effs = core.handle(C.HeaderReceived(bytes(raw), "evil"), 1.0)
    assert [e.reason for e in effs if isinstance(e, C.Penalize)] == ["bad-signature"]
    other = _peer_block(1, net=blake2b256(b"other"))
    effs = core.handle(C.HeaderReceived(encode(other), "evil"), 1.0)
    assert [e.reason for e in effs if isinstance(e, C.Penalize)] == ["wrong-network"]


def test_nan_and_wrong_shape_models_are_rejected_with_a_verdict() -> None:
    core = _started_core()
    nan = np.zeros(D, np.float32)
    nan[3] = np.nan
    blob = nan.astype("<f4").tobytes()
    blk = make_block(
        ident(1),
        network=NET,
        height=0,
        prev=b"\0" * 32,
        round=0,
        timestamp_ms=1,
        model=blob,
        samples=10,
    )
    effs = core.handle(C.HeaderReceived(encode(blk), "p1"), 1.0)
    (fetch,) = [e for e in effs if isinstance(e, C.FetchBlob)]
    effs = core.handle(C.BlobReceived(fetch.digest, blob, "p1"), 1.0)
    assert [e.reason for e in effs if isinstance(e, C.Penalize)] != []
    short = model_to_blob(np.zeros(D - 1, np.float32))
    blk2 = make_block(
        ident(2),
        network=NET,
        height=0,
        prev=b"\0" * 32,
        round=0,
        timestamp_ms=1,
        model=short,
        samples=10,
    )
    effs = core.handle(C.HeaderReceived(encode(blk2), "p2"), 1.0)
    (fetch,) = [e for e in effs if isinstance(e, C.FetchBlob)]
    effs = core.handle(C.BlobReceived(fetch.digest, short, "p2"), 1.0)
    assert any(isinstance(e, C.Penalize) for e in effs)
    # the timeout aggregates without them, and the next block records both rejections
    effs = core.handle(C.Tick(), 100.0)
    (agg,) = [e for e in effs if isinstance(e, C.Aggregate)]
    assert agg.candidates == ()
    effs = core.handle(toy_aggregate(agg), 100.0)
    (train,) = [e for e in effs if isinstance(e, C.Train)]
    effs = core.handle(toy_train(train, 1.0), 101.0)
    (commit,) = [e for e in effs if isinstance(e, C.Commit) and e.own]
    assert {v.block for v in commit.block.verdicts} == {blk.hash, blk2.hash}
    assert all(not v.accepted for v in commit.block.verdicts)


def test_equivocation_produces_a_verifiable_proof_and_the_author_is_ignored() -> None:
    core = _started_core()
    a = _peer_block(1, model=np.ones(D, np.float32))
    b = _peer_block(1, model=np.full(D, 2.0, np.float32))
    core.handle(C.HeaderReceived(encode(a), "p1"), 1.0)
    effs = core.handle(C.HeaderReceived(encode(b), "p1"), 1.0)
    (ev,) = [e for e in effs if isinstance(e, C.Evidence)]
    proof = Equivocation.decode(ev.proof)
    assert proof.verify() and proof.author == ident(1).public_key
    assert core.standing(ident(1).public_key) == 0.0
    # later blocks by that author are not fetched
    c = _peer_block(1, height=1, round=1, prev=a.hash)
    effs = core.handle(C.HeaderReceived(encode(c), "p1"), 2.0)
    assert not any(isinstance(e, C.FetchBlob) for e in effs)


def test_a_node_does_not_wait_for_the_peers_it_ignores() -> None:
    """Once an author is ignored (here banned for equivocating), the node aggregates as soon as
    the peers it still listens to have delivered, instead of running every round into the
    timeout waiting for a model it would not use. (A simulation found such a node falling a
    round behind its neighbours and ending the run on its own model.)"""
    core = C.NodeCore(ident(0), params(max_rounds=5), np.zeros(D, np.float32), 10)
    for k in (1, 2):
        core.handle(C.PeerJoined(ident(k).peer_id), 0.0)
    (train,) = core.handle(C.Start(), 0.0)
    core.handle(toy_train(train, 1.0), 0.0)
    for value in (1.0, 2.0):  # author 2 equivocates at height 0: banned
        blk = _peer_block(2, model=np.full(D, value, np.float32))
        core.handle(C.HeaderReceived(encode(blk), ident(2).peer_id), 0.5)
    assert core.standing(ident(2).public_key) == 0.0
    model = np.ones(D, np.float32)
    effs = core.handle(C.HeaderReceived(encode(_peer_block(1, model=model)), ident(1).peer_id), 1.0)
    (fetch,) = [e for e in effs if isinstance(e, C.FetchBlob)]
    effs = core.handle(C.BlobReceived(fetch.digest, model_to_blob(model), fetch.peer), 1.0)
    (agg,) = [e for e in effs if isinstance(e, C.Aggregate)]  # at 1.0, not at the 5.0 timeout
    assert agg.authors == (ident(1).public_key,)
    # with nobody left to listen to, the node waits the full timeout, as with no peers
    lonely = C.NodeCore(ident(0), params(max_rounds=5), np.zeros(D, np.float32), 10)
    lonely.handle(C.PeerJoined(ident(2).peer_id), 0.0)
    (train,) = lonely.handle(C.Start(), 0.0)
    for value in (1.0, 2.0):
        blk = _peer_block(2, model=np.full(D, value, np.float32))
        lonely.handle(C.HeaderReceived(encode(blk), ident(2).peer_id), 0.1)
    effs = lonely.handle(toy_train(train, 1.0), 0.5)
    assert not any(isinstance(e, C.Aggregate) for e in effs)
    assert lonely.next_deadline() == pytest.approx(5.5)


def test_stale_blocks_are_not_used() -> None:
    core = C.NodeCore(ident(0), params(max_rounds=20, max_staleness=1), np.zeros(D, np.float32), 1)
    core.handle(C.PeerJoined("peer"), 0.0)
    core.round = 10  # as if restored
    (train,) = core.handle(C.Start(), 0.0)
    core.handle(toy_train(train, 1.0), 0.0)
    old = _peer_block(1, round=3)
    effs = core.handle(C.HeaderReceived(encode(old), "p1"), 1.0)
    assert any(isinstance(e, C.Commit) for e in effs)  # kept as audit trail
    assert not any(isinstance(e, C.FetchBlob) for e in effs)  # but not used


def test_restore_continues_the_chain() -> None:
    net = Net(2, max_rounds=2)
    net.tick_until_done()
    chain = net.chains[0]
    core = C.NodeCore(ident(0), params(max_rounds=1), np.zeros(D, np.float32), 10)
    core.restore(chain, np.ones(D, np.float32))
    assert core.round == chain[-1].round + 1
    (train,) = core.handle(C.Start(), 10.0)
    assert isinstance(train, C.Train) and np.allclose(train.model, 1.0)
    effs = core.handle(toy_train(train, 1.0), 10.0)
    (commit,) = [e for e in effs if isinstance(e, C.Commit)]
    validate_chain([*chain, commit.block], network=NET, sig_check="each")


def test_restore_rejects_foreign_blocks() -> None:
    net = Net(2, max_rounds=1)
    net.tick_until_done()
    core = C.NodeCore(ident(5), params(), np.zeros(D, np.float32), 10)
    with pytest.raises(UsageError):
        core.restore(net.chains[0], None)


def test_own_echo_is_ignored_without_penalty() -> None:
    core = _started_core()
    assert core.head is not None
    effs = core.handle(C.HeaderReceived(encode(core.head), "relay"), 1.0)
    assert effs == []
    assert decode(encode(core.head)) == core.head


_ = Verdict


def test_memory_stays_bounded_under_many_authors() -> None:
    core = _started_core()
    for i in range(1, C.MAX_PENDING + 50):
        core.handle(C.HeaderReceived(encode(_peer_block(i)), f"p{i}"), 1.0)
    assert len(core._pending) <= C.MAX_PENDING
    assert len(core._seen) <= C.MAX_TRACKED_AUTHORS


def test_a_ranks_rejection_leaves_the_standing_alone_live_and_on_restore() -> None:
    """Verdicts with a ``rank:`` reason (the direction filter's) are signed but do not lower
    the author's standing; other rejections do (robust.counts_for_standing decides both)."""
    core = C.NodeCore(ident(0), params(max_rounds=3), np.zeros(D, np.float32), 10)
    for peer in ("p1", "p2"):
        core.handle(C.PeerJoined(peer), 0.0)
    (train,) = core.handle(C.Start(), 0.0)
    core.handle(toy_train(train, 1.0), 0.0)
    author_of = {}
    effs = []
    for k in (1, 2):
        model = np.full(D, float(k), np.float32)
        blk = _peer_block(k, model=model)
        author_of[blk.hash] = blk.author
        got = core.handle(C.HeaderReceived(encode(blk), f"p{k}"), 1.0)
        (fetch,) = [e for e in got if isinstance(e, C.FetchBlob)]
        effs += core.handle(C.BlobReceived(fetch.digest, model_to_blob(model), f"p{k}"), 1.0)
    effs += core.handle(C.Tick(), 100.0)
    (agg,) = [e for e in effs if isinstance(e, C.Aggregate)]
    ranked, judged = agg.authors
    reasons = {ranked: "rank:backwards", judged: "too-far"}
    done = C.AggregationDone(
        agg.round, agg.own, (False, False), (0.0, 0.0), tuple(reasons[a] for a in agg.authors)
    )
    effs = core.handle(done, 100.0)
    assert core.standing(ranked) == 1.0 and core.standing(judged) < 1.0
    (train,) = [e for e in effs if isinstance(e, C.Train)]
    effs = core.handle(toy_train(train, 1.0), 101.0)
    (commit,) = [e for e in effs if isinstance(e, C.Commit) and e.own]
    assert sorted(v.reason for v in commit.block.verdicts) == ["rank:backwards", "too-far"]
    # a restarted node rebuilds the same standing from its signed verdicts
    fresh = C.NodeCore(ident(0), params(max_rounds=3), np.zeros(D, np.float32), 10)
    fresh.restore([commit.block], None, author_of=author_of.get)
    assert fresh.standing(ranked) == 1.0 and fresh.standing(judged) == core.standing(judged)
