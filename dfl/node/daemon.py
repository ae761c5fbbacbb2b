"""The node daemon: the trio + libp2p shell around :class:`dfl.node.core.NodeCore`.

The core decides; this module only moves events in and executes effects out:

* one task owns the core: it takes events from one channel, calls ``core.handle`` and executes
  the effects in order (so the core is never re-entered);
* training and aggregation (JAX) run in a worker thread (``trio.to_thread``), so the event loop
  keeps gossiping, serving blobs and answering while a round trains;
* an own block is committed to LMDB (block + blob in one transaction, fsynced) *before* it is
  published: nothing announced is ever lost on a crash;
* headers arrive through the host's topic validator (size, decode, network, signature: the pure
  chain rules), blobs through ``/dfl/blob/1`` with the digest checked on arrival;
* timers: a ticker sends ``Tick`` at the core's next deadline; connected peers are diffed once a
  second into ``PeerJoined``/``PeerLeft``;
* peer model blobs older than ``limits.prune_blobs_after_rounds`` rounds are deleted; verified
  peer headers and own blocks and blobs are kept;
* ``status.json`` in the home (atomically replaced) and Prometheus metrics on 127.0.0.1 say
  what the node is doing; SIGINT/SIGTERM stop it cleanly; after ``kill -9`` a restart resumes
  from the last committed block (the core is restored from the own chain in the store).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from dfl.block import blob_to_model, decode
from dfl.config import Config, task_manifest
from dfl.errors import InvalidBlock, StoreError
from dfl.node import core as C
from dfl.node.compute import Learner, TrainSettings, resolve_rule
from dfl.node.home import Home
from dfl.node.store import ConflictError, LmdbStore
from dfl.p2p.errors import P2PError
from dfl.p2p.host import HostConfig, P2PHost, open_host

__all__ = ["DaemonOptions", "run_daemon"]

log = logging.getLogger("dfl.node")


@dataclass(frozen=True)
class DaemonOptions:
    rounds: int | None = None  # rounds to run in this session; None = until stopped
    attack: str | None = None  # make this node deliberately malicious (testbeds)
    linger_s: float = 5.0  # after the last round, keep serving blobs this long
    status_interval_s: float = 2.0


@dataclass
class _Status:
    peer_id: str = ""
    listen: list[str] = field(default_factory=list)
    round: int = 0
    height: int = -1
    phase: str = "starting"
    connected: list[str] = field(default_factory=list)
    last_accuracy: float | None = None
    last_loss: float | None = None
    accepted_total: int = 0
    rejected_total: int = 0
    last_accepted: int = 0
    last_rejected: int = 0
    metrics_port: int | None = None
    pid: int = 0
    started: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)
    # CPU accounting since the first round started (see Daemon._cpu_snapshot)
    cpu: dict[str, float] = field(default_factory=dict)
    rss_bytes: int = 0
    peak_rss_bytes: int = 0
    idle_rss_bytes: int = 0


def _build_learner(cfg: Config, attack: str | None) -> tuple[Learner, int]:
    from dfl.learning.data import load_dataset
    from dfl.learning.models import get_model
    from dfl.learning.partition import partition

    t = cfg.task
    data = load_dataset(t.dataset)
    model = get_model(t.model, data.input_shape, data.num_classes)
    parts = partition(data.y_train, t.num_nodes, t.partition, seed=t.seed)
    idx = parts[t.node_index]
    learner = Learner(
        model,
        data.x_train[idx],
        data.y_train[idx],
        num_classes=data.num_classes,
        settings=TrainSettings(
            lr=t.lr, batch_size=t.batch_size, epochs=t.local_epochs, momentum=t.momentum
        ),
        validation_share=t.validation_share,
        attack=attack,
        seed=t.seed * 100_003 + t.node_index,
        num_byzantine=max(cfg.robust.num_byzantine, 1),
        num_nodes=t.num_nodes,
        rule_eval_samples=cfg.robust.eval_samples,
    )
    return learner, model.num_params


class Daemon:
    def __init__(self, home: Home, cfg: Config, opts: DaemonOptions) -> None:
        self.home = home
        self.cfg = cfg
        self.opts = opts
        self.identity = home.identity()
        self.network = task_manifest(cfg).network_id()
        resolve_rule(cfg.robust.rule)  # fail fast on a bad rule name
        store_path = home.store_path(cfg)
        store_path.mkdir(parents=True, exist_ok=True)
        self.store = LmdbStore(store_path, own_author=self.identity.public_key)
        self.learner, num_params = _build_learner(cfg, opts.attack)
        own_chain = list(self.store.iter_chain(self.identity.public_key))
        init = self.learner.model.init(cfg.task.seed)  # same start on every node of a network
        params = C.CoreParams(
            network=self.network,
            num_params=num_params,
            rule="fedavg" if opts.attack else cfg.robust.rule,
            num_byzantine=cfg.robust.num_byzantine,
            round_timeout_s=cfg.round.timeout_s,
            min_round_s=cfg.round.min_interval_s,
            max_updates=cfg.round.max_updates,
            max_staleness=cfg.round.max_staleness,
            min_reputation=cfg.robust.min_reputation,
            max_rounds=opts.rounds,
            seed=cfg.task.seed * 1_000_003 + cfg.task.node_index,
            attack=opts.attack,
            max_header_bytes=cfg.limits.max_header_bytes,
        )
        self.learner.warm_up(params.rule, init)
        self.core = C.NodeCore(self.identity, params, init, self.learner.samples)
        if own_chain:
            head = own_chain[-1]
            blob = self.store.get_blob(head.model_digest)
            model = blob_to_model(blob, num_params) if blob is not None else None

            def author_of(h: bytes) -> bytes | None:
                b = self.store.get(h)
                return None if b is None else b.author

            self.core.restore(own_chain, model, author_of)
            log.info("resuming at round %d (height %d)", self.core.round, head.height)
        self.status = _Status(peer_id=self.identity.peer_id, pid=os.getpid(), started=time.time())
        self.peer_blob_round: dict[bytes, int] = {}
        self.events_send, self.events_recv = trio.open_memory_channel[C.Event](10_000)
        self.done = trio.Event()
        self.host: P2PHost | None = None
        self._metrics: Any = None
        self._cpu_acc: dict[str, float] = {}
        self._cpu0: tuple[float, float] | None = None  # (process CPU, loop-thread CPU) at start
        self._loop_cpu = 0.0
        self._loop_thread = 0
        self._loop_clock: int | None = None  # CPU clock of the event-loop thread
        self._deadline_changed = trio.Event()

    # ----------------------------------------------------------------- host callbacks

    def validate(self, origin: str, data: bytes) -> bool | str:
        """Topic validator: the pure checks a header must pass before it is forwarded."""
        try:
            block = decode(data)
        except InvalidBlock as e:
            return e.reason
        if block.network != self.network:
            return "wrong-network"
        if not block.verify_signature():
            return "bad-signature"
        return True

    def serve_blob(self, digest: bytes) -> bytes | None:
        try:
            return self.store.get_blob(digest)
        except StoreError as e:
            log.error("cannot serve blob %s: %s", digest.hex()[:16], e)
            return None

    # ----------------------------------------------------------------- effects

    async def execute(self, eff: C.Effect, nursery: trio.Nursery) -> None:
        assert self.host is not None
        if isinstance(eff, C.Commit):
            self._commit(eff)
        elif isinstance(eff, C.Publish):
            try:
                await self.host.publish(eff.data)
            except Exception as e:  # the block is committed; peers can still fetch it later
                log.warning("publish of height %d failed: %s", eff.block.height, e)
        elif isinstance(eff, C.Train):
            nursery.start_soon(self._compute, self.learner.train, eff)
        elif isinstance(eff, C.Aggregate):
            nursery.start_soon(self._compute, self.learner.aggregate, eff)
        elif isinstance(eff, C.FetchBlob):
            nursery.start_soon(self._fetch, eff)
        elif isinstance(eff, C.Penalize):
            log.info("penalize %s: %s", eff.peer[:16], eff.reason)
            self.host.penalize(eff.peer, eff.reason, eff.weight)
        elif isinstance(eff, C.Evidence):
            try:
                self.store.put_evidence(eff.author, eff.proof)
            except StoreError as e:
                log.error("cannot store equivocation proof: %s", e)
        elif isinstance(eff, C.Metric):
            self._metric(eff)
        elif isinstance(eff, C.Log):
            log.log(getattr(logging, eff.level.upper(), logging.INFO), eff.message)
        elif isinstance(eff, C.Done):
            self.done.set()

    def _commit(self, eff: C.Commit) -> None:
        try:
            self.store.put(eff.block, eff.blob)
        except ConflictError as e:
            log.warning(
                "store conflict at height %d of %s: %s",
                eff.block.height,
                eff.block.author.hex()[:8],
                e,
            )
            return
        if eff.own:
            self.status.height = eff.block.height
            log.info(
                "committed block height %d round %d (%d parents)",
                eff.block.height,
                eff.block.round,
                len(eff.block.parents),
            )
        elif eff.blob is not None:
            self.peer_blob_round[eff.block.model_digest] = eff.block.round

    async def _compute(self, fn: Callable[[Any], C.Event], job: Any) -> None:
        loop_clock = self._loop_clock

        def timed() -> tuple[C.Event, float]:
            # XLA runs a computation on its own threads, never on the caller's: a job's CPU is
            # the whole process's minus the event loop's over the job (jobs never overlap)
            if loop_clock is None:
                t0 = time.thread_time()
                out = fn(job)
                return out, time.thread_time() - t0
            p0, l0 = time.process_time(), time.clock_gettime(loop_clock)
            out = fn(job)
            loop = time.clock_gettime(loop_clock) - l0
            return out, max(0.0, time.process_time() - p0 - loop)

        try:
            result, cpu = await trio.to_thread.run_sync(timed)
        except Exception:
            if not isinstance(job, C.Aggregate):
                raise  # local training failing is a bug of this node: stop loudly
            # a rule must never take the node down: keep the own model, reject every candidate
            log.exception(
                "robust rule %r failed in round %d; keeping own model", job.rule, job.round
            )
            n = len(job.candidates)
            result = C.AggregationDone(
                job.round, job.own, (False,) * n, (0.0,) * n, ("rule-error",) * n, job.state
            )
            cpu = 0.0
        key = "train_thread_s" if isinstance(job, C.Train) else "aggregate_s"
        self._cpu_acc[key] = self._cpu_acc.get(key, 0.0) + cpu
        await self.events_send.send(result)

    def _cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds since the first round: the whole process, the event-loop thread (p2p,
        gossip, crypto, chain rules, store, the core) and the aggregation jobs (the process's
        CPU while one runs, minus the loop's: the rule and XLA's threads evaluating models for
        it). Training is everything else (its jobs, including XLA's compute threads)."""
        import resource

        if self._cpu0 is None:
            return {}
        ru = resource.getrusage(resource.RUSAGE_SELF)
        process = ru.ru_utime + ru.ru_stime - self._cpu0[0]
        loop = self._loop_cpu
        agg = self._cpu_acc.get("aggregate_s", 0.0)
        train = max(0.0, process - loop - agg)
        outside = loop + agg
        return {
            "process_s": process,
            "event_loop_s": loop,
            "aggregate_s": agg,
            "train_s": train,
            "outside_training_share": outside / process if process > 0 else 0.0,
        }

    async def _fetch(self, eff: C.FetchBlob) -> None:
        assert self.host is not None
        try:
            data = await self.host.fetch_blob(
                eff.peer,
                eff.digest,
                max_bytes=min(eff.size, self.cfg.limits.max_blob_bytes),
                timeout_s=self.cfg.limits.blob_timeout_s,
            )
        except InvalidBlock as e:
            await self.events_send.send(C.BlobFailed(eff.digest, eff.peer, e.reason))
        except P2PError as e:
            await self.events_send.send(C.BlobFailed(eff.digest, eff.peer, type(e).__name__))
        else:
            await self.events_send.send(C.BlobReceived(eff.digest, data, eff.peer))

    def _metric(self, eff: C.Metric) -> None:
        v = eff.values
        s = self.status
        if "val_accuracy" in v:
            s.last_accuracy = float(v["val_accuracy"])
        if "val_loss" in v:
            s.last_loss = float(v["val_loss"])
        if "accepted" in v:
            s.last_accepted = int(v["accepted"])
            s.last_rejected = int(v["rejected"])
            s.accepted_total += s.last_accepted
            s.rejected_total += s.last_rejected
            self._prune(eff.round)
        if self._metrics is not None:
            self._metrics.update(self)

    def _prune(self, current_round: int) -> None:
        keep_after = current_round - self.cfg.limits.prune_blobs_after_rounds
        for digest, rnd in list(self.peer_blob_round.items()):
            if rnd < keep_after:
                try:
                    self.store.delete_blob(digest)
                except Exception as e:  # referenced by an own block (never deleted): keep it
                    log.debug("keep blob %s: %s", digest.hex()[:16], e)
                del self.peer_blob_round[digest]

    # ----------------------------------------------------------------- loops

    async def _core_loop(self, nursery: trio.Nursery) -> None:
        import resource

        async for ev in self.events_recv:
            if self._cpu0 is None and isinstance(ev, C.Start):
                ru = resource.getrusage(resource.RUSAGE_SELF)
                self._cpu0 = (ru.ru_utime + ru.ru_stime, time.thread_time())
                self.status.idle_rss_bytes = _rss_bytes()
            try:
                effects = self.core.handle(ev, time.time())
            except Exception:
                log.exception("node core failed on %s", type(ev).__name__)
                raise
            for eff in effects:
                await self.execute(eff, nursery)
            self.status.round = self.core.round
            self.status.phase = self.core.phase
            self._deadline_changed.set()

    async def _gossip_loop(self) -> None:
        assert self.host is not None
        async for origin, data in self.host.messages():
            await self.events_send.send(C.HeaderReceived(data, origin))

    async def _tick_loop(self) -> None:
        """Send ``Tick`` at the core's deadline; sleeps until then (woken when it changes)."""
        while True:
            dl = self.core.next_deadline()
            self._deadline_changed = trio.Event()
            with trio.move_on_after(3600 if dl is None else max(0.0, dl - time.time())):
                await self._deadline_changed.wait()
                continue
            if dl is not None and dl == self.core.next_deadline():
                await self.events_send.send(C.Tick())
                await trio.sleep(0.01)  # let the core consume it before re-reading

    async def _peer_loop(self) -> None:
        assert self.host is not None
        known: set[str] = set()
        while True:
            now = set(self.host.connected_peers())
            for p in sorted(now - known):
                log.info("peer joined %s", p)
                await self.events_send.send(C.PeerJoined(p))
            for p in sorted(known - now):
                log.info("peer left %s", p)
                await self.events_send.send(C.PeerLeft(p))
            known = now
            self.status.connected = sorted(now)
            await trio.sleep(2.0)

    async def _status_loop(self) -> None:
        while True:
            self._write_status()
            await trio.sleep(self.opts.status_interval_s)

    def _write_status(self) -> None:
        import resource

        s = self.status
        if self._cpu0 is not None and self._in_loop_thread():
            self._loop_cpu = time.thread_time() - self._cpu0[1]
        s.cpu = self._cpu_snapshot()
        s.rss_bytes = _rss_bytes()
        s.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if self.host is not None:
            try:
                s.listen = self.host.listen_addrs
                s.stats = dict(self.host.stats())
            except OSError:  # listeners already closed during shutdown
                pass
        s.stats.update({f"core_{k}": v for k, v in self.core.stats.items()})
        path = self.home.path / "status.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(s.__dict__, indent=1, sort_keys=True))
        os.replace(tmp, path)

    async def run(self) -> None:
        import threading

        self._loop_thread = threading.get_ident()
        if hasattr(time, "pthread_getcpuclockid"):
            self._loop_clock = time.pthread_getcpuclockid(self._loop_thread)
        cfg = self.cfg
        host_cfg = HostConfig(
            seed=self.identity.seed,
            topic=f"/dfl/{self.network.hex()}/headers/1",
            listen=cfg.node.listen,
            bootstrap=cfg.node.bootstrap,
            max_header_bytes=cfg.limits.max_header_bytes,
            max_blob_bytes=cfg.limits.max_blob_bytes,
            blob_timeout_s=cfg.limits.blob_timeout_s,
            max_peers=cfg.node.max_peers,
            ban_threshold=cfg.limits.penalty_threshold,
            tick_s=2.0,  # connection maintenance; gossip keeps its own 1 s heartbeat
        )
        if cfg.node.metrics_port >= 0:
            from dfl.node.metrics import Metrics

            self._metrics = Metrics(cfg.node.metrics_port)
            self.status.metrics_port = self._metrics.port
        async with open_host(host_cfg, validate=self.validate, serve_blob=self.serve_blob) as host:
            self.host = host
            self.status.listen = host.listen_addrs
            log.info("node %s listening on %s", host.peer_id, ", ".join(host.listen_addrs))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._core_loop, nursery)
                nursery.start_soon(self._gossip_loop)
                nursery.start_soon(self._tick_loop)
                nursery.start_soon(self._peer_loop)
                nursery.start_soon(self._status_loop)
                nursery.start_soon(self._signals, nursery.cancel_scope)
                await self.events_send.send(C.Start())
                await self.done.wait()
                log.info(
                    "ran %d rounds; serving blobs for %.0f s before exit",
                    self.core.rounds_run,
                    self.opts.linger_s,
                )
                self.status.phase = "done"
                self._write_status()
                await trio.sleep(self.opts.linger_s)
                nursery.cancel_scope.cancel()
            self.status.listen = host.listen_addrs
            self.host = None

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                self.status.phase = "stopped"
                scope.cancel()
                return

    def _in_loop_thread(self) -> bool:
        import threading

        return threading.get_ident() == self._loop_thread

    def close(self) -> None:
        try:
            self._write_status()
        finally:
            self.store.close()
            if self._metrics is not None:
                self._metrics.close()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def run_daemon(home: Home, cfg: Config, opts: DaemonOptions) -> Daemon:
    """Run a node until its rounds are done or it is stopped; returns the (closed) daemon."""
    daemon = Daemon(home, cfg, opts)
    try:
        trio.run(daemon.run)
    finally:
        daemon.close()
    return daemon
