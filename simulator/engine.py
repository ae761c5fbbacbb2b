"""The many-node simulator: the daemon's node core over an in-memory network and a virtual clock.

Every simulated node is a real :class:`dfl.node.core.NodeCore` with its own Ed25519 identity,
signing real blocks into its own store; only the shell differs from the daemon:

* **clock**: virtual seconds in an event heap; training takes ``train_time_s`` of virtual time,
  links add latency + jitter and ``size / bandwidth``; nothing sleeps;
* **transport**: a published header reaches the author's topology neighbours (one hop), each
  link may drop it (``drop_rate``); blobs are pulled from the author by digest and take
  ``size / bandwidth``; churned-out nodes and partitioned links lose messages;
* **compute**: training, aggregation and evaluation jobs go to the
  :class:`~simulator.compute.ComputePool` (in-process, or worker processes over shared memory)
  as soon as the core emits them; the engine asks for a result only when its virtual time has
  come, so with workers the jobs of many nodes run while the engine does the chain work.

Ordering and determinism
------------------------
Events are processed in ``(virtual time, push sequence)`` order. A training result is fed to
the core at ``t + train_time_s``. An aggregation emitted at virtual time ``t`` is *resolved*
(its ``AggregationDone`` fed to the core, with ``now = t``) at a point fixed by the event stream
alone: just before the node's first event later than ``t``, or at ``t + 0.999 * train_time_s``
at the latest -- exactly the order in which a synchronous engine would feed it (all events of
instant ``t`` first), since nothing but the node itself sees an aggregation's effects before its
next training ends. No decision ever depends on when a worker finishes, so identities, data,
topology, link randomness and training seeds (all from the scenario seed) give identical block
hashes on every node, for any number of workers. The engine never holds two state-changing jobs
of one node at once (see :mod:`simulator.compute`).

Blobs are served from the published model arrays, content-addressed by digest and shared by all
simulated nodes (a memory shortcut: a real node stores the peer blobs it pulled); each delivery
gets its own bytes, as over a real stream. Headers go to each node's own store.

Timings in :attr:`SimResult.summary` (wall-clock seconds)
---------------------------------------------------------
``setup_seconds``
    Building the simulation (worker start, data, partition, identities, initial models, stores).
``rounds_seconds``
    :meth:`Simulation.run` until every node has committed its last block and fed its last
    aggregation (per-round evaluations that ran meanwhile included).
``final_eval_seconds``
    Waiting for the per-round evaluations still running, the final evaluation of every honest
    node (and backdoor ASR), and worker shutdown.
``wall_seconds``
    ``setup_seconds + rounds_seconds + final_eval_seconds``: the whole run, end to end.
``seconds_per_round``
    ``rounds_seconds / rounds``.
``train_seconds``
    Wall time *during which local training ran* on at least one worker (the union of the
    training jobs' intervals within the rounds; not a sum over workers).
``outside_training_share``
    ``1 - train_seconds / rounds_seconds``, i.e. ``1 - train / (wall - setup - final_eval)``:
    the share of the rounds' wall time in which no training ran.
``chain_seconds``
    Main-process time inside the node cores and their stores (decode, signature checks, hashing,
    signing, blob parsing, commits).
``aggregate_seconds``, ``eval_seconds``, ``train_busy_seconds``
    Busy time of aggregation jobs, per-round evaluations and training jobs, summed over workers
    (in-process: their wall time).
``wait_seconds``
    Main-process time spent waiting for a worker result.

CPU time in :attr:`SimResult.summary` (``time.process_time`` seconds, all threads of a process)
-----------------------------------------------------------------------------------------------
Each job's CPU is measured in the process that ran it, around the job; everything below counts
only the rounds (setup and final evaluation excluded).

``cpu_train_seconds``
    Local training jobs whose result a node used.
``cpu_aggregate_seconds``
    Robust-rule jobs (the receiver's validation evaluations of the guard included).
``cpu_main_seconds``
    The main process outside the jobs it ran itself (in-process mode): the node cores and
    stores (``chain_seconds`` of CPU), the simulated network, the event loop and handing jobs
    to workers. An upper bound of a node's own infrastructure: part of it is the simulator's.
``cpu_eval_seconds``
    Per-round test-set evaluations: the simulator's measurement, not a node's work.
``cpu_speculation_wasted_seconds``
    Speculative training jobs thrown away (a wrong guess of the next round's inputs): a cost of
    the simulator's pipelining, not of a node.
``cpu_outside_training_share``
    ``(main + aggregate) / (main + aggregate + train)``: the share of a node's CPU spent outside
    local training (instrumentation and wasted speculation excluded from both sides).
    Worker-side time outside jobs (receiving a message, idling) is not counted.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dfl.config import Config, task_manifest
from dfl.crypto import Identity, blake2b256
from dfl.node import core as C
from dfl.node.home import Home
from dfl.node.store import BlockStore, LmdbStore, MemoryStore
from simulator.compute import SPECULATION_WASTED, AggTicket, ComputePool, World
from simulator.scenario import Scenario
from simulator.topology import make_topology

__all__ = ["SimResult", "Simulation", "available_cpus", "sim_identity"]

_SEED_MASK = 0x7FFFFFFF
_CHECK_STRIDE = 997  # spot-check stride when matching a candidate to its published array


def sim_identity(seed: int, index: int) -> Identity:
    """The deterministic identity of simulated node ``index``."""
    return Identity.from_seed(blake2b256(f"dfl-sim/{seed}/{index}".encode()))


@dataclass
class SimResult:
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    heads: list[bytes]
    accuracy_curve: list[tuple[int, float, float, float]]  # round, mean, min, max (honest)
    stores: list[BlockStore] = field(repr=False, default_factory=list)

    def close(self) -> None:
        """Close the nodes' stores (LMDB files stay on disk)."""
        for store in self.stores:
            store.close()


@dataclass(frozen=True)
class _TrainResult:
    """Heap event: the training job ``ticket`` is due; becomes a ``TrainingDone``."""

    ticket: int


@dataclass(frozen=True)
class _Resolve:
    """Heap event: the latest point at which the node's pending aggregation is fed back."""

    ticket: int


@dataclass(frozen=True)
class _Deliver:
    """Heap event: a blob arrives; its bytes are made from the published array on delivery."""

    digest: bytes
    model: np.ndarray
    peer: str


@dataclass
class _Pending:
    t: float
    ticket: AggTicket
    round: int
    finishing: bool


def _same_model(a: np.ndarray, b: np.ndarray) -> bool:
    """Cheap check that two float32 vectors are the same model (shape + strided sample)."""
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and bool(np.array_equal(a[::_CHECK_STRIDE], b[::_CHECK_STRIDE]))
        and bool(a[-1] == b[-1])
    )


def _union_length(spans: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Total length of the union of ``spans`` clipped to ``[lo, hi]``."""
    total = 0.0
    end = lo
    for a, b in sorted(spans):
        a, b = max(a, end), min(b, hi)
        if b > a:
            total += b - a
            end = b
    return total


class Simulation:
    """Build with a :class:`Scenario`; :meth:`run` it once."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        out_dir: Path | None = None,
        data_dir: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        t_setup = time.perf_counter()
        self.sc = sc = scenario
        self.out_dir = out_dir
        self.progress = progress
        rng = np.random.default_rng(sc.seed)
        n = sc.nodes
        self.malicious = (
            frozenset(int(i) for i in rng.choice(n, size=sc.num_malicious, replace=False))
            if sc.num_malicious
            else frozenset()
        )
        self.adj = make_topology(sc.topology, n, sc.degree, sc.seed)
        self.link_rng = np.random.default_rng(sc.seed + 1)
        # worker processes pay off once there is enough training to spread (measured:
        # benchmarks/RESULTS.md); small networks run faster in-process
        workers = sc.workers or (1 if n < 50 else min(n, max(1, available_cpus())))
        self.pool = ComputePool(World(sc, self.malicious, data_dir), workers)
        try:
            self._build(out_dir)
        except BaseException:
            self.pool.close()
            raise
        self.setup_seconds = time.perf_counter() - t_setup

    def _build(self, out_dir: Path | None) -> None:
        sc, n = self.sc, self.sc.nodes
        self.identities = [sim_identity(sc.seed, i) for i in range(n)]
        self.peer_ids = [ident.peer_id for ident in self.identities]
        self.index_of = {pid: i for i, pid in enumerate(self.peer_ids)}
        init = self.pool.run([(i, ("init", sc.seed)) for i in range(n)])
        num_params = int(init[0][0].shape[0])
        self.config = Config().with_overrides(
            task={
                "network": f"sim-{sc.name}"[:64],
                "dataset": sc.dataset,
                "model": sc.model,
                "partition": sc.partition,
                "num_nodes": sc.nodes,
                "seed": sc.seed,
                "lr": sc.lr,
                "batch_size": sc.batch_size,
                "local_epochs": sc.local_epochs,
            },
            round={
                "timeout_s": sc.round_timeout_s,
                "max_updates": sc.max_updates,
                "max_staleness": sc.max_staleness,
            },
            robust={"rule": sc.rule},
        )
        self.network = task_manifest(self.config).network_id()
        share = sc.num_malicious / n
        self.cores: list[C.NodeCore] = []
        self.stores: list[BlockStore] = []
        for i in range(n):
            # f told to the robust rule: what a node can expect among its own neighbours (its
            # candidates), not the network-wide count -- a rule told f >= its candidate count
            # would trim everything away
            f = (
                min(sc.num_malicious, math.ceil(share * len(self.adj[i]) - 1e-9))
                if sc.num_byzantine < 0
                else sc.num_byzantine
            )
            params = C.CoreParams(
                network=self.network,
                num_params=num_params,
                rule="fedavg" if i in self.malicious else sc.rule,
                num_byzantine=max(f, 1) if f else 0,
                round_timeout_s=sc.round_timeout_s,
                max_updates=sc.max_updates,
                max_staleness=sc.max_staleness,
                max_rounds=sc.rounds,
                seed=sc.seed * 1_000_003 + i,
                attack=sc.attack if i in self.malicious else None,
                check_signatures=sc.check_signatures,
            )
            model, samples = init[i]
            self.cores.append(C.NodeCore(self.identities[i], params, model, samples))
            if sc.store == "lmdb" and out_dir is not None:
                # each simulated node gets a real node home: `dfl chain verify --home` works on it
                home = Home(out_dir / "nodes" / f"node-{i:04d}")
                home.init(
                    self.config.with_overrides(task={"node_index": i}),
                    force=True,
                    identity=self.identities[i],
                )
                path = home.store_path()
                if path.exists():
                    shutil.rmtree(path)
                path.mkdir(parents=True)
                self.stores.append(
                    LmdbStore(path, durable=False, own_author=self.identities[i].public_key)
                )
            else:
                self.stores.append(MemoryStore())
        del init
        # blobs: digest -> the published model array (bytes are made per delivery)
        self.published: dict[bytes, np.ndarray] = {}
        # the committed blob bytes of a digest, kept only while its fetches are in flight
        self._blob_bytes: dict[bytes, list[Any]] = {}  # digest -> [bytes, fetches left]
        self.blob_round: dict[bytes, int] = {}
        self._pub_of: dict[int, np.ndarray] = {}  # node -> model it is about to publish
        self._cand_digest: list[dict[bytes, bytes]] = [{} for _ in range(n)]  # author -> digest
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = itertools.count()
        self.deadlines: dict[int, float] = {}
        self.online = [True] * n
        self.done = [False] * n
        self.n_done = 0
        self.pending: dict[int, _Pending] = {}
        self.n_finishing = 0
        self._last_seed: list[int | None] = [None] * n
        self._round_count = [0] * (sc.rounds + 2)
        self._round_count[0] = n
        self._node_round = [0] * n
        self.low = 0
        self._last_pruned_low = -1
        self._evals: list[tuple[int, int, int]] = []  # node, round, ticket
        self._last_evals: list[tuple[int, int]] = []  # node, round: after the rounds
        # just before the node's training result is due: results are consumed in the order the
        # workers produce them (any value in (0, train_time_s) gives the same chains)
        self.resolve_after = sc.train_time_s * 0.999
        self.metrics: dict[tuple[int, int], dict[str, Any]] = {}
        self.bytes_headers = 0
        self.bytes_blobs = 0
        self.blocks = 0
        self.penalties = 0
        self.chain_seconds = 0.0
        self.speculated = 0
        self.speculation_hits = 0
        self.curve: dict[int, list[float]] = {}

    # ----------------------------------------------------------------- event plumbing

    def _push(self, t: float, node: int, event: Any) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), node, event))

    def _link_ok(self, a: int, b: int, t: float) -> bool:
        if not (self.online[a] and self.online[b]):
            return False
        for p in self.sc.partitions:
            if p.start_s <= t < p.heal_s and ((a in p.group) != (b in p.group)):
                return False
        return True

    def _delay(self, size: int) -> float:
        sc = self.sc
        jitter = float(self.link_rng.uniform(0, sc.jitter_ms)) if sc.jitter_ms else 0.0
        return (sc.latency_ms + jitter) / 1000 + size * 8 / (sc.bandwidth_mbps * 1e6)

    def _apply(self, i: int, effects: list[C.Effect], t: float) -> None:
        sc = self.sc
        for eff in effects:
            if isinstance(eff, C.Commit):
                t0 = time.perf_counter()
                if eff.own:
                    self.blocks += 1
                    assert eff.blob is not None
                    digest = eff.block.model_digest
                    self.published[digest] = self._pub_of.pop(i)
                    self.blob_round[digest] = eff.block.round
                    self._blob_bytes[digest] = [eff.blob, len(self.adj[i])]
                    self.stores[i].put(eff.block, eff.blob if sc.store == "lmdb" else None)
                else:
                    if eff.blob is not None:  # a peer model the core accepted (a candidate)
                        self._cand_digest[i][eff.block.author] = eff.block.model_digest
                    self.stores[i].put(eff.block, None)
                self.chain_seconds += time.perf_counter() - t0
            elif isinstance(eff, C.Publish):
                for j in self.adj[i]:
                    if not self._link_ok(i, j, t):
                        continue
                    if sc.drop_rate and self.link_rng.random() < sc.drop_rate:
                        continue
                    self.bytes_headers += len(eff.data)
                    self._push(
                        t + self._delay(len(eff.data)),
                        j,
                        C.HeaderReceived(eff.data, self.peer_ids[i]),
                    )
            elif isinstance(eff, C.FetchBlob):
                src = self.index_of.get(eff.peer)
                model = self.published.get(eff.digest)
                if src is None or model is None or not self._link_ok(i, src, t):
                    self._push(
                        t + self._delay(64), i, C.BlobFailed(eff.digest, eff.peer, "unreachable")
                    )
                else:
                    self.bytes_blobs += model.nbytes
                    self._push(
                        t + 2 * self._delay(64) + self._delay(model.nbytes),
                        i,
                        _Deliver(eff.digest, model, eff.peer),
                    )
            elif isinstance(eff, C.Train):
                self._train(i, eff, t)
            elif isinstance(eff, C.Aggregate):
                self._aggregate(i, eff, t)
            elif isinstance(eff, C.Metric):
                row = self.metrics.setdefault((i, eff.round), {"node": i, "round": eff.round})
                row.update(eff.values)
            elif isinstance(eff, C.Penalize):
                self.penalties += 1
            elif isinstance(eff, C.Done) and not self.done[i]:
                self.done[i] = True
                self.n_done += 1
            # Log and Evidence: nothing to do in the simulator beyond counting
        dl = self.cores[i].next_deadline()
        if dl is not None and self.deadlines.get(i) != dl:
            self.deadlines[i] = dl
            self._push(dl, i, C.Tick())

    def _feed(self, i: int, event: Any, t: float) -> None:
        p = self.pending.get(i)
        if p is not None and t > p.t:
            self._resolve(i)
        t0 = time.perf_counter()
        effects = self.cores[i].handle(event, t)
        self.chain_seconds += time.perf_counter() - t0
        self._apply(i, effects, t)

    # ----------------------------------------------------------------- compute jobs

    def _train(self, i: int, job: C.Train, t: float, spec: AggTicket | None = None) -> None:
        """Schedule the ``TrainingDone`` of ``job`` at ``t + train_time_s``."""
        if (
            spec is not None
            and spec.spec is not None
            and job.attack is None
            and job.round == spec.spec_round
            and job.seed == spec.spec_seed
        ):
            # an honest learner ignores neighbor_models (only model attacks read them)
            tid = spec.spec
            self.speculation_hits += 1
        else:
            if spec is not None and spec.spec is not None:
                self.pool.discard(spec.spec)
            tid = self.pool.submit_train(i, job)
        self._last_seed[i] = job.seed
        self._push(t + self.sc.train_time_s, i, _TrainResult(tid))

    def _aggregate(self, i: int, job: C.Aggregate, t: float) -> None:
        """Submit an aggregation; it is fed back at a deterministic point (module doc)."""
        sc = self.sc
        cands = list(job.candidates)
        digests = self._cand_digest[i]
        for k, (arr, author) in enumerate(zip(job.candidates, job.authors, strict=True)):
            d = digests.get(author)
            src = self.published.get(d) if d is not None else None
            if src is not None and src is not arr and _same_model(src, arr):
                cands[k] = src  # the same bytes, already in the pool's shared memory
        job = replace(job, candidates=tuple(cands))
        core = self.cores[i]
        evaluate = i not in self.malicious and (
            (job.round + 1) % sc.eval_every == 0 or job.round + 1 >= sc.rounds
        )
        finishing = core.rounds_run + 1 >= sc.rounds
        speculate = None
        last = self._last_seed[i]
        if (
            self.pool.speculative
            and not finishing
            and core.params.attack is None
            and last is not None
        ):
            speculate = (job.round + 1, (last + 1) & _SEED_MASK)
            self.speculated += 1
        if evaluate and finishing:
            # the node's last model: evaluated after the rounds, when nothing else competes
            self._last_evals.append((i, job.round))
            evaluate = False
        ticket = self.pool.submit_aggregate(i, job, evaluate=evaluate, speculate=speculate)
        if ticket.eval is not None:
            self._evals.append((i, job.round, ticket.eval))
        self.pending[i] = _Pending(t, ticket, job.round, finishing)
        self.n_finishing += finishing
        self._push(t + self.resolve_after, i, _Resolve(ticket.agg))

    def _resolve(self, i: int) -> None:
        """Feed node ``i``'s pending aggregation result, at the aggregation's virtual time."""
        p = self.pending.pop(i)
        self.n_finishing -= p.finishing
        res = self.pool.result(p.ticket.agg)
        core = self.cores[i]
        t0 = time.perf_counter()
        effects = core.handle(res, p.t)
        self.chain_seconds += time.perf_counter() - t0
        spec = p.ticket
        for eff in effects:
            if isinstance(eff, C.Train) and spec.spec is not None and eff.model is not res.model:
                spec = replace(spec, spec_round=-1)  # the core trains from another array
        if spec.spec is not None and not any(isinstance(e, C.Train) for e in effects):
            self.pool.discard(spec.spec)
        self._apply_resolved(i, effects, p.t, spec)
        r = core.round
        old = self._node_round[i]
        if r != old:
            self._node_round[i] = r
            self._round_count[old] -= 1
            self._round_count[min(r, len(self._round_count) - 1)] += 1
            while self.low < len(self._round_count) - 1 and self._round_count[self.low] == 0:
                self.low += 1

    def _apply_resolved(self, i: int, effects: list[C.Effect], t: float, spec: AggTicket) -> None:
        rest: list[C.Effect] = []
        for eff in effects:
            if isinstance(eff, C.Train):
                if rest:
                    self._apply(i, rest, t)
                    rest = []
                self._train(i, eff, t, spec)
            else:
                rest.append(eff)
        self._apply(i, rest, t)

    def _training_done(self, ev: _TrainResult) -> C.TrainingDone:
        res: C.TrainingDone = self.pool.result(ev.ticket)
        return res

    # ----------------------------------------------------------------- the run

    def run(self) -> SimResult:
        """Run every node's rounds, evaluate, stop the workers; see the module doc for timings."""
        try:
            return self._run()
        except BaseException:
            self.pool.close()
            raise

    def _run(self) -> SimResult:
        sc = self.sc
        t_run = time.perf_counter()
        t_mono = time.monotonic()
        cpu_main0 = time.process_time()
        cpu_jobs0 = dict(self.pool.intervals.cpu)
        for c in sc.churn:
            self._push(c.leave_s, c.node, ("leave",))
            self._push(c.rejoin_s, c.node, ("rejoin",))
        for i in range(sc.nodes):
            for j in self.adj[i]:
                self._feed(i, C.PeerJoined(self.peer_ids[j]), 0.0)
            self._feed(i, C.Start(), 0.0)
        last_round_reported = -1
        n = sc.nodes
        heap = self.heap
        while heap and self.n_done + self.n_finishing < n:
            t = heap[0][0]
            while heap and heap[0][0] == t:
                _, _, i, ev = heapq.heappop(heap)
                if type(ev) is _Resolve:
                    p = self.pending.get(i)
                    if p is not None and p.ticket.agg == ev.ticket:
                        self._resolve(i)
                    continue
                if isinstance(ev, tuple):
                    self._churn(i, ev[0], t)
                    continue
                if type(ev) is _TrainResult:
                    res = self._training_done(ev)
                    self._pub_of[i] = res.model if res.published is None else res.published
                    self._feed(i, res, t)
                    continue
                if not self.online[i]:
                    continue
                if type(ev) is _Deliver:
                    ev = C.BlobReceived(ev.digest, self._blob_data(ev), ev.peer)
                elif isinstance(ev, C.Tick):
                    if self.deadlines.get(i) != t:
                        continue
                    self.deadlines.pop(i, None)
                self._feed(i, ev, t)
            if self.low != self._last_pruned_low:
                self._prune()
                if self.progress is not None and self.low != last_round_reported:
                    last_round_reported = self.low
                    self.progress(min(self.low, sc.rounds), sc.rounds)
        for i in sorted(self.pending):
            self._resolve(i)
        rounds_seconds = time.perf_counter() - t_run
        train_seconds = _union_length(
            self.pool.intervals.spans.get("train", []), t_mono, time.monotonic()
        )
        cpu = self._rounds_cpu(time.process_time() - cpu_main0, cpu_jobs0)
        return self._finish(rounds_seconds, train_seconds, cpu)

    def _rounds_cpu(self, main_total: float, jobs_before: dict[str, float]) -> dict[str, float]:
        """The rounds' CPU by kind (see the module doc), from the pool's per-label job CPU."""
        jobs = {
            k: v - jobs_before.get(k, 0.0)
            for k, v in self.pool.intervals.cpu.items()
            if v - jobs_before.get(k, 0.0) > 0.0
        }
        # in-process the jobs ran in this process: not the main loop's own CPU
        local_jobs = sum(jobs.values()) if self.pool.workers == 1 else 0.0
        main = max(main_total - local_jobs, 0.0)
        train, agg = jobs.get("train", 0.0), jobs.get("agg", 0.0)
        node = main + agg + train
        return {
            "cpu_train_seconds": train,
            "cpu_aggregate_seconds": agg,
            "cpu_main_seconds": main,
            "cpu_eval_seconds": jobs.get("eval", 0.0),
            "cpu_speculation_wasted_seconds": jobs.get(SPECULATION_WASTED, 0.0),
            "cpu_outside_training_share": (node - train) / node if node > 0 else 0.0,
        }

    def _collect_evals(self) -> None:
        results = [self.pool.result(tid) for _, _, tid in self._evals]
        last = self.pool.run(
            [(i, ("eval", self.cores[i].model, False)) for i, _ in self._last_evals]
        )
        done = [(i, rnd) for i, rnd, _ in self._evals] + self._last_evals
        for (i, rnd), (acc, loss) in zip(done, results + last, strict=True):
            row = self.metrics.setdefault((i, rnd), {"node": i, "round": rnd})
            row["accuracy"] = float(acc)
            row["loss"] = float(loss)
            self.curve.setdefault(rnd, []).append(float(acc))
        self._evals, self._last_evals = [], []

    def _blob_data(self, ev: _Deliver) -> bytes:
        """The bytes of a delivered blob: the committed ones while cached, else from the array."""
        entry = self._blob_bytes.get(ev.digest)
        if entry is None:
            return ev.model.astype("<f4", copy=False).tobytes()
        entry[1] -= 1
        if entry[1] <= 0:
            del self._blob_bytes[ev.digest]
        data: bytes = entry[0]
        return data

    def _churn(self, i: int, what: str, t: float) -> None:
        if what == "leave":
            self.online[i] = False
            for j in self.adj[i]:
                self._feed(j, C.PeerLeft(self.peer_ids[i]), t)
        else:
            self.online[i] = True
            for j in self.adj[i]:
                self._feed(j, C.PeerJoined(self.peer_ids[i]), t)
            self._feed(i, C.Tick(), t)

    def _prune(self) -> None:
        self._last_pruned_low = self.low
        for d in [d for d in self._blob_bytes if self.blob_round[d] < self.low - 1]:
            del self._blob_bytes[d]  # fetches that never came (offline, dropped, stale)
        # a core fetches (and aggregates) only blocks of round >= its round - max_staleness,
        # and every core's round is >= low
        low = self.low - self.sc.max_staleness
        if low <= 0:
            return
        for d in [d for d, r in self.blob_round.items() if r < low]:
            self.published.pop(d, None)
            self.blob_round.pop(d, None)

    def _finish(
        self, rounds_seconds: float, train_seconds: float, cpu: dict[str, float]
    ) -> SimResult:
        sc = self.sc
        honest = [i for i in range(sc.nodes) if i not in self.malicious]
        t0 = time.perf_counter()
        self._collect_evals()
        finals = self.pool.run([(i, ("eval", self.cores[i].model, True)) for i in honest])
        asr = None
        if sc.attack == "backdoor" and honest:
            asrs = self.pool.run([(i, ("backdoor", self.cores[i].model)) for i in honest])
            asr = float(np.mean(asrs))
        accs = [float(a) for a, _ in finals]
        busy = dict(self.pool.intervals.busy)
        wait = self.pool.wait_seconds
        self.pool.close()
        final_seconds = time.perf_counter() - t0
        curve = [
            (r, float(np.mean(v)), float(np.min(v)), float(np.max(v)))
            for r, v in sorted(self.curve.items())
        ]
        wall = self.setup_seconds + rounds_seconds + final_seconds
        summary: dict[str, Any] = {
            "scenario": sc.name,
            "nodes": sc.nodes,
            "rounds": sc.rounds,
            "malicious": len(self.malicious),
            "malicious_share": len(self.malicious) / sc.nodes,
            "malicious_nodes": sorted(self.malicious),
            "rule": sc.rule,
            "attack": sc.attack,
            "seed": sc.seed,
            "dataset": sc.dataset,
            "model": sc.model,
            "partition": sc.partition,
            "topology": sc.topology,
            "degree": sc.degree,
            "honest_accuracy_mean": float(np.mean(accs)) if accs else float("nan"),
            "honest_accuracy_min": float(np.min(accs)) if accs else float("nan"),
            # each honest node's final accuracy, by node index
            "honest_accuracies": {str(i): a for i, a in zip(honest, accs, strict=True)},
            "backdoor_asr": asr,
            "wall_seconds": wall,
            "setup_seconds": self.setup_seconds,
            "rounds_seconds": rounds_seconds,
            "final_eval_seconds": final_seconds,
            "seconds_per_round": rounds_seconds / sc.rounds,
            "train_seconds": train_seconds,
            "outside_training_share": (1 - train_seconds / rounds_seconds)
            if rounds_seconds > 0
            else 0.0,
            "chain_seconds": self.chain_seconds,
            "aggregate_seconds": busy.get("agg", 0.0),
            "eval_seconds": busy.get("eval", 0.0),
            "train_busy_seconds": busy.get("train", 0.0),
            "wait_seconds": wait,
            **cpu,
            "speculated": self.speculated,
            "speculation_hits": self.speculation_hits,
            "blocks": self.blocks,
            "bytes_headers": self.bytes_headers,
            "bytes_blobs": self.bytes_blobs,
            "penalties": self.penalties,
            "workers": self.pool.workers,
        }
        metrics = [self.metrics[k] for k in sorted(self.metrics)]
        heads = [core.head.hash if core.head else b"" for core in self.cores]
        return SimResult(summary, metrics, heads, curve, self.stores)


def write_outputs(result: SimResult, out: Path, scenario: Scenario) -> None:
    """Write metrics.jsonl, summary.json and accuracy.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "metrics.jsonl").open("w", encoding="utf-8") as fh:
        for row in result.metrics:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
    (out / "summary.json").write_text(json.dumps(result.summary, indent=2, sort_keys=True) + "\n")
    plot_accuracy(result, out / "accuracy.png", scenario)


def plot_accuracy(result: SimResult, path: Path, scenario: Scenario) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    if result.accuracy_curve:
        r = [c[0] + 1 for c in result.accuracy_curve]
        ax.plot(r, [c[1] for c in result.accuracy_curve], label="honest mean", color="C0")
        ax.fill_between(
            r,
            [c[2] for c in result.accuracy_curve],
            [c[3] for c in result.accuracy_curve],
            alpha=0.25,
            color="C0",
            label="honest min-max",
        )
    s = result.summary
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(
        f"{s['nodes']} nodes, {s['dataset']}/{s['model']}, rule={s['rule']}, "
        f"attack={s['attack']}, malicious={s['malicious']} ({100 * s['malicious_share']:.0f}%)",
        fontsize=8,
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
