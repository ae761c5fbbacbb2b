"""The many-node simulator: the daemon's node core over an in-memory network and a virtual clock.

Every simulated node is a real :class:`dfl.node.core.NodeCore` with its own Ed25519 identity,
signing real blocks into its own store; only the shell differs from the daemon:

* **clock**: virtual seconds in an event heap; training takes ``train_time_s`` of virtual time,
  links add latency + jitter and ``size / bandwidth``; nothing sleeps;
* **transport**: a published header reaches the author's topology neighbours (one hop), each
  link may drop it (``drop_rate``); blobs are pulled from the author by digest and take
  ``size / bandwidth``; churned-out nodes and partitioned links lose messages;
* **compute**: all training/aggregation jobs due at one virtual instant run as one batch on the
  :class:`~simulator.compute.ComputePool` (worker processes), results are fed back in node order.

Determinism: identities, data partition, topology, link randomness and training seeds derive from
the scenario seed; events at one instant are processed in (time, sequence) order. Same scenario +
seed -> identical block hashes on every node, for any number of workers.

Blobs live once in a content-addressed pool shared by all simulated nodes (a memory shortcut:
a real node stores the peer blobs it pulled); headers go to each node's own store.
"""

from __future__ import annotations

import heapq
import itertools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfl.config import Config, task_manifest
from dfl.crypto import Identity, blake2b256
from dfl.node import core as C
from dfl.node.home import Home
from dfl.node.store import BlockStore, LmdbStore, MemoryStore
from simulator.compute import ComputePool, World
from simulator.scenario import Scenario
from simulator.topology import make_topology

__all__ = ["SimResult", "Simulation", "sim_identity"]


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
        workers = sc.workers or (1 if n < 50 else min(n, max(1, _cpu_count())))
        self.pool = ComputePool(World(sc, self.malicious, data_dir), workers)
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
        f = sc.num_malicious if sc.num_byzantine < 0 else sc.num_byzantine
        self.cores: list[C.NodeCore] = []
        self.stores: list[BlockStore] = []
        for i in range(n):
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
        self.blobs: dict[bytes, bytes] = {}
        self.blob_round: dict[bytes, int] = {}
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = itertools.count()
        self.deadlines: dict[int, float] = {}
        self.online = [True] * n
        self.done = [False] * n
        self.metrics: dict[tuple[int, int], dict[str, Any]] = {}
        self.bytes_headers = 0
        self.bytes_blobs = 0
        self.blocks = 0
        self.penalties = 0
        self.train_seconds = 0.0
        self.chain_seconds = 0.0
        self.eval_seconds = 0.0
        self.setup_seconds = time.perf_counter() - t_setup
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

    def _apply(
        self, i: int, effects: list[C.Effect], t: float, jobs: list[tuple[int, Any]]
    ) -> None:
        sc = self.sc
        for eff in effects:
            if isinstance(eff, C.Commit):
                t0 = time.perf_counter()
                if eff.own:
                    self.blocks += 1
                    assert eff.blob is not None
                    self.blobs[eff.block.model_digest] = eff.blob
                    self.blob_round[eff.block.model_digest] = eff.block.round
                    self.stores[i].put(eff.block, eff.blob if sc.store == "lmdb" else None)
                else:
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
                blob = self.blobs.get(eff.digest)
                if src is None or blob is None or not self._link_ok(i, src, t):
                    self._push(
                        t + self._delay(64), i, C.BlobFailed(eff.digest, eff.peer, "unreachable")
                    )
                else:
                    self.bytes_blobs += len(blob)
                    self._push(
                        t + 2 * self._delay(64) + self._delay(len(blob)),
                        i,
                        C.BlobReceived(eff.digest, blob, eff.peer),
                    )
            elif isinstance(eff, (C.Train, C.Aggregate)):
                jobs.append((i, eff))
            elif isinstance(eff, C.Metric):
                row = self.metrics.setdefault((i, eff.round), {"node": i, "round": eff.round})
                row.update(eff.values)
            elif isinstance(eff, C.Penalize):
                self.penalties += 1
            elif isinstance(eff, C.Done):
                self.done[i] = True
            # Log and Evidence: nothing to do in the simulator beyond counting
        dl = self.cores[i].next_deadline()
        if dl is not None and self.deadlines.get(i) != dl:
            self.deadlines[i] = dl
            self._push(dl, i, C.Tick())

    def _feed(self, i: int, event: Any, t: float, jobs: list[tuple[int, Any]]) -> None:
        t0 = time.perf_counter()
        effects = self.cores[i].handle(event, t)
        self.chain_seconds += time.perf_counter() - t0
        self._apply(i, effects, t, jobs)

    def _run_jobs(self, jobs: list[tuple[int, Any]], t: float) -> None:
        """Run a batch: aggregations first (their results may start training), then training."""
        while jobs:
            aggs = [(i, j) for i, j in jobs if isinstance(j, C.Aggregate)]
            trains = [(i, j) for i, j in jobs if isinstance(j, C.Train)]
            jobs.clear()
            if aggs:
                t0 = time.perf_counter()
                results = self.pool.run(aggs)
                self.chain_seconds += time.perf_counter() - t0
                evals = []
                rounds = []
                for (i, _), res in zip(aggs, results, strict=True):
                    self._feed(i, res, t, jobs)
                    if i not in self.malicious:
                        evals.append((i, ("eval", res.model, False)))
                        rounds.append(res.round)
                if evals:
                    t0 = time.perf_counter()
                    accs = self.pool.run(evals)
                    self.eval_seconds += time.perf_counter() - t0
                    for (i, _), rnd, (acc, loss) in zip(evals, rounds, accs, strict=True):
                        row = self.metrics.setdefault((i, rnd), {"node": i, "round": rnd})
                        row["accuracy"] = float(acc)
                        row["loss"] = float(loss)
                        self.curve.setdefault(rnd, []).append(float(acc))
                continue
            if trains:
                t0 = time.perf_counter()
                results = self.pool.run(trains)
                self.train_seconds += time.perf_counter() - t0
                for (i, _), res in zip(trains, results, strict=True):
                    self._push(t + self.sc.train_time_s, i, res)

    # ----------------------------------------------------------------- the run

    def run(self) -> SimResult:
        sc = self.sc
        t_wall = time.perf_counter()
        for c in sc.churn:
            self._push(c.leave_s, c.node, ("leave",))
            self._push(c.rejoin_s, c.node, ("rejoin",))
        jobs: list[tuple[int, Any]] = []
        for i in range(sc.nodes):
            for j in self.adj[i]:
                self._feed(i, C.PeerJoined(self.peer_ids[j]), 0.0, jobs)
            self._feed(i, C.Start(), 0.0, jobs)
        self._run_jobs(jobs, 0.0)
        last_round_reported = -1
        while self.heap and not all(self.done):
            t = self.heap[0][0]
            while self.heap and self.heap[0][0] == t:
                _, _, i, ev = heapq.heappop(self.heap)
                if isinstance(ev, tuple):
                    self._churn(i, ev[0], t, jobs)
                    continue
                if not self.online[i] and not isinstance(ev, (C.TrainingDone,)):
                    continue
                if isinstance(ev, C.Tick):
                    if self.deadlines.get(i) != t:
                        continue
                    self.deadlines.pop(i, None)
                self._feed(i, ev, t, jobs)
            self._run_jobs(jobs, t)
            self._prune()
            low = min(core.round for core in self.cores)
            if self.progress is not None and low != last_round_reported:
                last_round_reported = low
                self.progress(min(low, sc.rounds), sc.rounds)
        wall = time.perf_counter() - t_wall
        return self._finish(wall)

    def _churn(self, i: int, what: str, t: float, jobs: list[tuple[int, Any]]) -> None:
        if what == "leave":
            self.online[i] = False
            for j in self.adj[i]:
                self._feed(j, C.PeerLeft(self.peer_ids[i]), t, jobs)
        else:
            self.online[i] = True
            for j in self.adj[i]:
                self._feed(j, C.PeerJoined(self.peer_ids[i]), t, jobs)
            self._feed(i, C.Tick(), t, jobs)

    def _prune(self) -> None:
        low = min(core.round for core in self.cores) - self.sc.max_staleness - 2
        if low <= 0 or len(self.blobs) < 4 * self.sc.nodes:
            return
        for d in [d for d, r in self.blob_round.items() if r < low]:
            self.blobs.pop(d, None)
            self.blob_round.pop(d, None)

    def _finish(self, wall: float) -> SimResult:
        sc = self.sc
        honest = [i for i in range(sc.nodes) if i not in self.malicious]
        t0 = time.perf_counter()
        finals = self.pool.run([(i, ("eval", self.cores[i].model, True)) for i in honest])
        asr = None
        if sc.attack == "backdoor" and honest:
            asrs = self.pool.run([(i, ("backdoor", self.cores[i].model)) for i in honest])
            asr = float(np.mean(asrs))
        self.eval_seconds += time.perf_counter() - t0
        accs = [float(a) for a, _ in finals]
        self.pool.close()
        curve = [
            (r, float(np.mean(v)), float(np.min(v)), float(np.max(v)))
            for r, v in sorted(self.curve.items())
        ]
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
            "backdoor_asr": asr,
            "wall_seconds": wall,
            "setup_seconds": self.setup_seconds,
            "train_seconds": self.train_seconds,
            "chain_seconds": self.chain_seconds,
            "eval_seconds": self.eval_seconds,
            "outside_training_share": (1 - self.train_seconds / wall) if wall > 0 else 0.0,
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


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
