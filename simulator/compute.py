"""Where the simulated nodes' training and aggregation run: in-process or in worker processes.

The engine submits jobs one at a time and asks for each result when its virtual time has come;
with ``W >= 2`` the jobs run meanwhile in ``W`` single-threaded worker processes, so training
overlaps the engine's own (chain) work and the other nodes' jobs.

Invariants
----------
* **Placement**: node ``i`` is always served by worker ``i % W``, which holds that node's
  :class:`~dfl.node.compute.Learner` (data shard, attack state). The engine never has two
  state-changing jobs (train / aggregate) of one node outstanding at once (except an aggregation
  and the training speculatively chained behind it, which run back to back), so a worker runs each
  node's jobs in submission order even though it reorders jobs *across* nodes by priority
  (setup and final jobs, then aggregation and training, then evaluations). A result depends
  only on the job and that node's learner, never on the number of workers or on timing: a
  seeded run is deterministic.
* **No model pickling**: with worker processes, every model crossing a process boundary lives in a
  slot of a shared-memory arena (:class:`_Arena`, ``/dev/shm`` segments of fixed-size float32
  slots). Jobs and replies carry only ``(segment, slot)`` references and small values. The main
  process allocates every slot (inputs it does not already hold in the arena are copied into a
  fresh slot; outputs are allocated at submission and filled by the worker) and frees a slot when
  the last numpy view on it is garbage-collected. A ticket keeps its input and output views alive
  until the worker's reply has arrived, so a worker never reads or writes a freed slot.
  Views handed to the engine are read-only; workers copy the inputs they could retain.
* **Speculation** (workers only, honest nodes only): an aggregation job may carry a *predicted*
  next training job (same node, next round, predicted seed); the worker runs it right after the
  aggregation, so the node's next local training overlaps other nodes' aggregations. The engine
  uses the speculative result only if the training job the core then actually emits is identical
  (round, seed, no attack, and the very model array the aggregation returned); otherwise it
  discards it and submits the real job. A wrong prediction costs time, never correctness
  (an honest learner's only cross-job state is read by attacks alone).
* **Timing**: every job reports its start/end on the system-wide monotonic clock, so the engine
  can compute the wall time during which any training ran (:attr:`ComputePool.intervals`).

In-process mode (``W == 1``) runs each job synchronously at submission, with plain arrays.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from multiprocessing import get_context
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from dfl.learning.data import Dataset, load_dataset
from dfl.learning.models import get_model
from dfl.learning.partition import partition
from dfl.node.compute import Learner, TrainSettings
from dfl.node.core import Aggregate, AggregationDone, Train, TrainingDone
from simulator.scenario import Scenario

__all__ = ["BACKDOOR_TARGET", "AggTicket", "ComputePool", "World"]

#: Target class of ``ATTACKS["backdoor"]`` (its default).
BACKDOOR_TARGET = 0

#: Slots per shared-memory segment (the arena grows by whole segments).
SLOTS_PER_SEGMENT = 64

#: Job priorities inside a worker (lower runs first). Setup/final jobs first; aggregation and
#: training share one FIFO queue (an aggregation's speculative training runs right after it, so
#: an aggregation on one worker overlaps training on the others and results come back in the
#: order the engine needs them). Per-round evaluations, which nothing in the simulation waits
#: for, run only when a worker has nothing else to do; leftovers finish after the rounds.
_PRIO_HIGH, _PRIO_AGG, _PRIO_TRAIN, _PRIO_EVAL = 0, 1, 1, 2

#: Environment of worker processes: one BLAS/OpenMP thread each (W processes share the cores).
_WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

Ref = tuple[int, int]  # (segment, slot) in the arena


@dataclass
class World:
    """Everything a process needs to build any node's learner (cheap to pickle)."""

    scenario: Scenario
    malicious: frozenset[int]
    data_dir: str | None = None

    def build(self) -> _Worker:
        return _Worker(self)


class _Worker:
    """The learning side of the simulation in one process: data, model, the nodes' learners."""

    def __init__(self, world: World) -> None:
        sc = world.scenario
        self.world = world
        self.data: Dataset = load_dataset(sc.dataset, cache_dir=world.data_dir)
        self.model = get_model(sc.model, self.data.input_shape, self.data.num_classes)
        self.parts = partition(self.data.y_train, sc.nodes, sc.partition, seed=sc.seed)
        rng = np.random.default_rng(sc.seed + 17)
        n_test = len(self.data.y_test)
        n_eval = min(sc.eval_samples, n_test)
        idx = np.sort(rng.choice(n_test, size=n_eval, replace=False))
        self.x_eval, self.y_eval = self.data.x_test[idx], self.data.y_test[idx]
        if 0 < sc.final_eval_samples < n_test:
            rng = np.random.default_rng(sc.seed + 19)
            idx = np.sort(rng.choice(n_test, size=sc.final_eval_samples, replace=False))
            self.x_final, self.y_final = self.data.x_test[idx], self.data.y_test[idx]
        else:
            self.x_final, self.y_final = self.data.x_test, self.data.y_test
        self.learners: dict[int, Learner] = {}
        self._warm_up()

    def _warm_up(self) -> None:
        """Compile training for every shard size and the evaluation step now, so that
        compilation counts as setup (before round 1) and not as the first round's training;
        the model's jit cache makes the real calls reuse them."""
        sc = self.world.scenario
        params = self.model.init(sc.seed)
        self.model.compile_training([len(p) for p in self.parts], sc.batch_size)
        self.model.evaluate(params, self.x_eval[:10], self.y_eval[:10])

    def learner(self, i: int) -> Learner:
        lr = self.learners.get(i)
        if lr is None:
            sc = self.world.scenario
            idx = self.parts[i]
            f = sc.num_malicious if sc.num_byzantine < 0 else sc.num_byzantine
            lr = Learner(
                self.model,
                self.data.x_train[idx],
                self.data.y_train[idx],
                num_classes=self.data.num_classes,
                settings=TrainSettings(lr=sc.lr, batch_size=sc.batch_size, epochs=sc.local_epochs),
                attack=sc.attack if i in self.world.malicious else None,
                seed=sc.seed * 100_003 + i,
                num_byzantine=max(f, 1),
                num_nodes=sc.nodes,
            )
            self.learners[i] = lr
        return lr

    def train(self, i: int, job: Train) -> TrainingDone:
        return self.learner(i).train(job)

    def aggregate(self, i: int, job: Aggregate) -> AggregationDone:
        return self.learner(i).aggregate(job)

    def evaluate(self, params: np.ndarray, full: bool) -> tuple[float, float]:
        """Accuracy and loss on the per-round eval subset, or on the final test set."""
        if full:
            return self.model.evaluate(params, self.x_final, self.y_final)
        return self.model.evaluate(params, self.x_eval, self.y_eval)

    def init(self, i: int, seed: int) -> tuple[np.ndarray, int]:
        return self.model.init(seed), self.learner(i).samples

    def backdoor(self, params: np.ndarray) -> float:
        from dfl.learning.attacks import backdoor_asr

        model = self.model

        def predict(x: np.ndarray) -> np.ndarray:
            return model.predict(params, x)

        return float(backdoor_asr(predict, self.data.x_test, self.data.y_test, BACKDOOR_TARGET))

    def num_params(self) -> int:
        return self.model.num_params

    def run_simple(self, i: int, job: tuple[Any, ...]) -> Any:
        """Run one of the small tuple jobs: ``("init", seed)``, ``("eval", params, full)``,
        ``("backdoor", params)``."""
        kind = job[0]
        if kind == "eval":
            return self.evaluate(job[1], bool(job[2]))
        if kind == "init":
            return self.init(i, int(job[1]))
        if kind == "backdoor":
            return self.backdoor(job[1])
        raise TypeError(f"unknown job {job!r}")


# --------------------------------------------------------------------------- shared memory


class _Arena:
    """Fixed-size float32 model slots in shared-memory segments, owned by the main process."""

    def __init__(self, num_params: int, on_segment: Callable[[int, str], None]) -> None:
        self.num_params = num_params
        self.slot_bytes = -(-num_params * 4 // 64) * 64
        self.segment_bytes = self.slot_bytes * SLOTS_PER_SEGMENT
        self.segments: list[SharedMemory] = []
        self.bases: list[int] = []
        self.free: list[Ref] = []
        self.on_segment = on_segment

    def _grow(self) -> None:
        shm = SharedMemory(create=True, size=self.segment_bytes)
        k = len(self.segments)
        self.segments.append(shm)
        self.bases.append(np.ndarray((1,), np.uint8, buffer=shm.buf).ctypes.data)
        self.free.extend((k, s) for s in reversed(range(SLOTS_PER_SEGMENT)))
        self.on_segment(k, shm.name)

    def alloc(self) -> tuple[np.ndarray, Ref]:
        """A writable view on a free slot; the slot is freed when the view is collected."""
        if not self.free:
            self._grow()
        ref = self.free.pop()
        view: np.ndarray = np.ndarray(
            (self.num_params,),
            np.float32,
            buffer=self.segments[ref[0]].buf,
            offset=ref[1] * self.slot_bytes,
        )
        weakref.finalize(view, self.free.append, ref)
        return view, ref

    def ref(self, arr: Any) -> Ref | None:
        """The slot ``arr`` is an exact view of, or ``None``."""
        if (
            not isinstance(arr, np.ndarray)
            or arr.dtype != np.float32
            or arr.shape != (self.num_params,)
            or not arr.flags.c_contiguous
        ):
            return None
        addr = arr.__array_interface__["data"][0]
        for k, base in enumerate(self.bases):
            off = addr - base
            if 0 <= off < self.segment_bytes and off % self.slot_bytes == 0:
                return (k, off // self.slot_bytes)
        return None

    def close(self) -> None:
        for shm in self.segments:
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()
            with contextlib.suppress(BufferError):  # views still alive: mapping goes with them
                shm.close()
        self.segments = []
        self.bases = []


class _Attached:
    """A worker's view of the main process's arena."""

    def __init__(self) -> None:
        self.num_params = 0
        self.slot_bytes = 0
        self.segments: dict[int, SharedMemory] = {}

    def view(self, ref: Ref) -> np.ndarray:
        seg, slot = ref
        return np.ndarray(
            (self.num_params,),
            np.float32,
            buffer=self.segments[seg].buf,
            offset=slot * self.slot_bytes,
        )

    def copy(self, ref: Ref) -> np.ndarray:
        return np.array(self.view(ref), dtype=np.float32, copy=True)


# --------------------------------------------------------------------------- the worker process


@dataclass
class _Job:
    """One unit of work inside a worker."""

    id: int
    prio: int
    node: int
    kind: str  # train | agg | eval | simple
    payload: tuple[Any, ...]
    label: str = ""  # timing label (defaults to ``kind``)


class _Server:
    """A worker process's loop: accept messages, run the best job, reply."""

    def __init__(self, world: World, inbox: Any, outbox: Any) -> None:
        self.worker = world.build()
        self.inbox = inbox
        self.outbox = outbox
        self.mem = _Attached()
        self.mem.num_params = self.worker.num_params()
        self.mem.slot_bytes = -(-self.mem.num_params * 4 // 64) * 64
        self.queues: list[deque[_Job]] = [deque(), deque(), deque()]

    def accept(self, msg: tuple[Any, ...]) -> bool:
        """Handle one message; ``False`` means stop."""
        tag = msg[0]
        if tag == "job":
            job: _Job = msg[1]
            self.queues[job.prio].append(job)
        elif tag == "seg":
            self.mem.segments[msg[1]] = SharedMemory(name=msg[2])
        elif tag == "stop":
            return False
        return True

    def serve(self) -> None:
        self.outbox.put(("ready", self.mem.num_params))
        while True:
            while not any(self.queues):
                if not self.accept(self.inbox.get()):
                    return
            while True:  # take in everything queued, so priorities can apply
                try:
                    msg = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if not self.accept(msg):
                    return
            job = next(q for q in self.queues if q).popleft()
            t0, c0 = time.monotonic(), time.process_time()
            try:
                value = self.run(job)
            except BaseException as e:  # shipped to the main process
                reply = ("err", job.id, _picklable(e))
            else:
                reply = ("ok", job.id, value)
            cpu = time.process_time() - c0
            self.outbox.put((*reply, job.label or job.kind, t0, time.monotonic(), cpu))

    def run(self, job: _Job) -> Any:
        w, mem, i = self.worker, self.mem, job.node
        if job.kind == "train":
            tj, out_ref, pub_ref = job.payload
            return self._train(i, tj, out_ref, pub_ref)
        if job.kind == "agg":
            aj, out_ref, eval_id, spec = job.payload
            aj = _in_transit(
                aj,
                own=mem.copy(aj.own),
                candidates=tuple(mem.view(r) for r in aj.candidates),
                start=None if aj.start is None else mem.view(aj.start),
            )
            res = w.aggregate(i, aj)
            out = mem.view(out_ref)
            out[:] = res.model
            if spec is not None:
                spec_id, rnd, seed, spec_out = spec
                tj = _in_transit(Train(round=rnd, model=np.empty(0), seed=seed), model=out_ref)
                self.queues[_PRIO_TRAIN].appendleft(  # next: no other job in between
                    _Job(spec_id, _PRIO_TRAIN, i, "train", (tj, spec_out, None))
                )
            if eval_id is not None:
                self.queues[_PRIO_EVAL].append(_Job(eval_id, _PRIO_EVAL, i, "eval", (out_ref,)))
            return _in_transit(res, model=None)
        if job.kind == "eval":
            (ref,) = job.payload
            return w.evaluate(mem.view(ref), False)
        (simple,) = job.payload
        if simple[0] == "init":
            model, samples = w.init(i, int(simple[1]))
            mem.view(simple[2])[:] = model
            return samples
        if simple[0] in ("eval", "backdoor"):
            return w.run_simple(i, (simple[0], mem.view(simple[1]), *simple[2:]))
        return w.run_simple(i, simple)

    def _train(self, i: int, tj: Any, out_ref: Ref, pub_ref: Ref | None) -> Any:
        mem = self.mem
        tj = _in_transit(
            tj,
            model=mem.copy(tj.model),
            neighbor_models=tuple(mem.copy(r) for r in tj.neighbor_models),
        )
        res = self.worker.train(i, tj)
        mem.view(out_ref)[:] = res.model
        if res.published is None or res.published is res.model:
            published: Any = "same"
        elif pub_ref is not None:
            mem.view(pub_ref)[:] = res.published
            published = "slot"
        else:
            published = np.asarray(res.published, dtype=np.float32)
        return _in_transit(res, model=None, published=published)


def _in_transit(obj: Any, **changes: Any) -> Any:
    """A copy of a job/result dataclass whose model fields hold slot references (or ``None``)
    while it crosses the process boundary; never handed to the core in that form."""
    return replace(obj, **changes)


def _label(job: tuple[Any, ...]) -> str:
    """Timing label of a small tuple job: ``init``, ``final`` (full eval), ``eval``, ..."""
    if job[0] == "eval":
        return "final" if job[2] else "eval"
    return str(job[0])


def _picklable(e: BaseException) -> BaseException:
    import pickle

    try:
        pickle.dumps(e)
    except Exception:  # any pickling failure
        return RuntimeError(f"{type(e).__name__}: {e}")
    return e


def _serve(world: World, inbox: Any, outbox: Any) -> None:
    """Entry point of a worker process."""
    try:
        server = _Server(world, inbox, outbox)
    except BaseException as e:  # report start-up failures
        outbox.put(("dead", _picklable(e)))
        return
    server.serve()


# --------------------------------------------------------------------------- the main side


@dataclass
class _Ticket:
    worker: int
    kind: str
    keep: tuple[Any, ...] = ()  # views kept alive until the reply arrives
    outputs: tuple[Any, ...] = ()
    done: bool = False
    ok: bool = True
    value: Any = None
    discarded: bool = False
    cpu: float = 0.0  # CPU seconds the job took (set on arrival)


@dataclass(frozen=True)
class AggTicket:
    """Ids of an aggregation job and of what it may have chained (evaluation, speculation)."""

    agg: int
    eval: int | None = None
    spec: int | None = None
    spec_round: int = -1
    spec_seed: int = -1


#: CPU label of a speculative training job whose result was thrown away (a wrong guess).
SPECULATION_WASTED = "train_discarded"


@dataclass
class _Intervals:
    """Per job label: wall spans, summed wall time (``busy``) and summed CPU time (``cpu``:
    ``time.process_time`` of the process that ran the job, all its threads)."""

    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    busy: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def add(self, kind: str, t0: float, t1: float, cpu: float = 0.0) -> None:
        self.spans.setdefault(kind, []).append((t0, t1))
        self.busy[kind] = self.busy.get(kind, 0.0) + (t1 - t0)
        self.add_cpu(kind, cpu)

    def add_cpu(self, kind: str, cpu: float) -> None:
        self.cpu[kind] = self.cpu.get(kind, 0.0) + cpu

    def waste(self, cpu: float) -> None:
        """Move a thrown-away training job's CPU from ``train`` to :data:`SPECULATION_WASTED`."""
        self.add_cpu("train", -cpu)
        self.add_cpu(SPECULATION_WASTED, cpu)


class ComputePool:
    """Runs node jobs in-process (``workers == 1``) or over worker processes.

    Parameters
    ----------
    world
        What every process needs to build the learners.
    workers
        ``1``: run each job synchronously when submitted; ``>= 2``: that many worker processes.
    """

    def __init__(self, world: World, workers: int) -> None:
        self.world = world
        self.workers = max(1, workers)
        self.intervals = _Intervals()
        self.wait_seconds = 0.0
        self._ids = 0
        self._tickets: dict[int, _Ticket] = {}
        self._local: _Worker | None = None
        self._procs: list[Any] = []
        self._inboxes: list[Any] = []
        self._outboxes: list[Any] = []
        self._arena: _Arena | None = None
        self._blas_limit: Any = None
        if self.workers == 1:
            # One BLAS thread, as in a worker process (_WORKER_ENV). A threaded BLAS dot sums in
            # another order; the last bits reach signed scores and accept decisions, and one
            # goal cell ended 1.5 points apart in-process and in workers (benchmarks/RESULTS.md).
            self._blas_limit = threadpool_limits(limits=1, user_api="blas")
            try:
                self._local = world.build()
            except BaseException:
                self._blas_limit.restore_original_limits()
                raise
            self.num_params = self._local.num_params()
            return
        ctx = get_context("spawn")
        saved = {k: os.environ.get(k) for k in _WORKER_ENV}
        os.environ.update(_WORKER_ENV)
        try:
            for _ in range(self.workers):
                inbox, outbox = ctx.Queue(), ctx.Queue()
                p = ctx.Process(target=_serve, args=(world, inbox, outbox), daemon=True)
                p.start()
                self._procs.append(p)
                self._inboxes.append(inbox)
                self._outboxes.append(outbox)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        sizes = {self._get(w)[1] for w in range(self.workers)}
        self.num_params = sizes.pop()
        self._arena = _Arena(self.num_params, self._announce)

    @property
    def speculative(self) -> bool:
        """Whether aggregation jobs may chain a speculative training job."""
        return self._local is None

    # -- plumbing ---------------------------------------------------------------------------
    def _announce(self, k: int, name: str) -> None:
        for box in self._inboxes:
            box.put(("seg", k, name))

    def _new_id(self) -> int:
        self._ids += 1
        return self._ids

    def _get(self, w: int) -> tuple[Any, ...]:
        """Next message from worker ``w`` (raises if the worker died)."""
        while True:
            try:
                msg: tuple[Any, ...] = self._outboxes[w].get(timeout=2.0)
            except queue.Empty:
                if not self._procs[w].is_alive():
                    raise RuntimeError(
                        f"simulator worker {w} died (exit code {self._procs[w].exitcode})"
                    ) from None
                continue
            if msg[0] == "dead":
                raise RuntimeError(f"simulator worker {w} failed to start") from msg[1]
            return msg

    def _receive(self, w: int) -> None:
        tag, tid, value, kind, t0, t1, cpu = self._get(w)
        self.intervals.add(kind, t0, t1, cpu)
        t = self._tickets.get(tid)
        if t is None:
            return
        if t.discarded:
            if kind == "train":  # a speculation dropped before its result arrived
                self.intervals.waste(cpu)
            del self._tickets[tid]
            return
        t.done, t.ok, t.value, t.keep, t.cpu = True, tag == "ok", value, (), cpu

    def _slot_of(self, arr: np.ndarray, keep: list[Any]) -> Ref:
        """The arena slot holding ``arr`` (copied into a fresh slot if it is not in the arena)."""
        assert self._arena is not None
        ref = self._arena.ref(arr)
        if ref is None:
            view, ref = self._arena.alloc()
            view[:] = arr
            keep.append(view)
        else:
            keep.append(arr)
        return ref

    def _send(
        self,
        node: int,
        prio: int,
        kind: str,
        payload: tuple[Any, ...],
        t: _Ticket,
        label: str = "",
    ) -> int:
        tid = self._new_id()
        self._tickets[tid] = t
        self._inboxes[t.worker].put(("job", _Job(tid, prio, node, kind, payload, label)))
        return tid

    def _timed(self, kind: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` run in this process, its wall span and CPU recorded under ``kind``."""
        t0, c0 = time.monotonic(), time.process_time()
        value = fn()
        self.intervals.add(kind, t0, time.monotonic(), time.process_time() - c0)
        return value

    def _local_run(self, kind: str, fn: Callable[[], Any]) -> int:
        value = self._timed(kind, fn)
        tid = self._new_id()
        self._tickets[tid] = _Ticket(0, kind, done=True, value=value)
        return tid

    def _view(self, out: np.ndarray) -> np.ndarray:
        out.flags.writeable = False
        return out

    # -- submission -------------------------------------------------------------------------
    def submit_train(self, node: int, job: Train) -> int:
        """Submit a training job; its result is a :class:`TrainingDone`."""
        if self._local is not None:
            local = self._local
            return self._local_run("train", lambda: local.train(node, job))
        assert self._arena is not None
        keep: list[Any] = []
        model_ref = self._slot_of(job.model, keep)
        neigh = tuple(self._slot_of(m, keep) for m in job.neighbor_models)
        out, out_ref = self._arena.alloc()
        pub: np.ndarray | None = None
        pub_ref: Ref | None = None
        if job.attack is not None:
            pub, pub_ref = self._arena.alloc()
        tj = _in_transit(job, model=model_ref, neighbor_models=neigh)
        ticket = _Ticket(node % self.workers, "train", tuple(keep), (out, pub))
        return self._send(node, _PRIO_TRAIN, "train", (tj, out_ref, pub_ref), ticket)

    def submit_aggregate(
        self,
        node: int,
        job: Aggregate,
        *,
        evaluate: bool,
        speculate: tuple[int, int] | None = None,
    ) -> AggTicket:
        """Submit an aggregation (its result is an :class:`AggregationDone`).

        ``evaluate``: also evaluate the new model on the eval subset (result ``(acc, loss)``
        under ``ticket.eval``, run when the worker is otherwise idle). ``speculate``: ``(round,
        seed)`` of the predicted next training job, run right after the aggregation by a worker
        (result under ``ticket.spec``); ignored in-process.
        """
        if self._local is not None:
            local = self._local
            agg = self._local_run("agg", lambda: local.aggregate(node, job))
            ev = None
            if evaluate:
                model = self._tickets[agg].value.model
                ev = self._local_run("eval", lambda: local.evaluate(model, False))
            return AggTicket(agg, ev)
        assert self._arena is not None
        w = node % self.workers
        keep: list[Any] = []
        own_ref = self._slot_of(job.own, keep)
        cand_refs = tuple(self._slot_of(c, keep) for c in job.candidates)
        out, out_ref = self._arena.alloc()
        eval_id = self._new_id() if evaluate else None
        spec: tuple[int, int, int, Ref] | None = None
        spec_out: np.ndarray | None = None
        if speculate is not None:
            spec_out, spec_ref = self._arena.alloc()
            spec = (self._new_id(), speculate[0], speculate[1], spec_ref)
        start_ref = None if job.start is None else self._slot_of(job.start, keep)
        aj = _in_transit(job, own=own_ref, candidates=cand_refs, start=start_ref)
        agg_id = self._send(
            node,
            _PRIO_AGG,
            "agg",
            (aj, out_ref, eval_id, spec),
            _Ticket(w, "agg", tuple(keep), (out,)),
        )
        # the chained jobs read the aggregation's output slot: keep it alive with them too
        if eval_id is not None:
            self._tickets[eval_id] = _Ticket(w, "eval", (out,))
        if spec is not None:
            self._tickets[spec[0]] = _Ticket(w, "train", (out, spec_out), (spec_out, None))
            return AggTicket(agg_id, eval_id, spec[0], speculate[0], speculate[1])  # type: ignore[index]
        return AggTicket(agg_id, eval_id)

    def discard(self, tid: int) -> None:
        """Forget a job's result (e.g. a wrong speculation); its slots are freed on arrival."""
        t = self._tickets.get(tid)
        if t is None:
            return
        if t.done or self._local is not None:
            if t.done and t.kind == "train":  # a speculation that arrived before it was dropped
                self.intervals.waste(t.cpu)
            del self._tickets[tid]
        else:
            t.discarded = True

    def result(self, tid: int) -> Any:
        """Wait for a job's result (re-raises the worker's exception)."""
        t = self._tickets[tid]
        if not t.done:
            t0 = time.perf_counter()
            while not t.done:
                self._receive(t.worker)
            self.wait_seconds += time.perf_counter() - t0
        del self._tickets[tid]
        if not t.ok:
            raise t.value
        return self._restore(t)

    def _restore(self, t: _Ticket) -> Any:
        v = t.value
        if self._local is not None or t.kind not in ("train", "agg", "init"):
            return v
        if t.kind == "agg":
            return replace(v, model=self._view(t.outputs[0]))
        if t.kind == "init":
            return self._view(t.outputs[0]), v
        model = self._view(t.outputs[0])
        if isinstance(v.published, str):
            published = model if v.published == "same" else self._view(t.outputs[1])
        else:
            published = v.published
        return replace(v, model=model, published=published)

    def run(self, jobs: Sequence[tuple[int, tuple[Any, ...]]]) -> list[Any]:
        """Run small tuple jobs (``("init", seed)``, ``("eval", params, full)``,
        ``("backdoor", params)``) and return their results in order.

        ``init`` returns ``(model, samples)``.
        """
        if self._local is not None:
            local = self._local
            return [self._timed(_label(job), partial(local.run_simple, i, job)) for i, job in jobs]
        assert self._arena is not None
        tids = []
        for i, job in jobs:
            keep: list[Any] = []
            outputs: tuple[Any, ...] = ()
            kind = "simple"
            if job[0] == "init":
                view, ref = self._arena.alloc()
                payload: tuple[Any, ...] = ("init", job[1], ref)
                outputs, kind = (view,), "init"
            elif job[0] in ("eval", "backdoor"):
                payload = (job[0], self._slot_of(job[1], keep), *job[2:])
            else:
                payload = job
            ticket = _Ticket(i % self.workers, kind, tuple(keep), outputs)
            tids.append(self._send(i, _PRIO_HIGH, "simple", (payload,), ticket, _label(job)))
        return [self.result(t) for t in tids]

    def close(self) -> None:
        """Stop the workers and release the shared memory (idempotent)."""
        for box in self._inboxes:
            with contextlib.suppress(OSError, ValueError):  # queue already closed
                box.put(("stop",))
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():  # pragma: no cover - a hung worker
                p.terminate()
                p.join()
        for box in (*self._inboxes, *self._outboxes):
            box.close()
            box.join_thread()
        self._procs, self._inboxes, self._outboxes = [], [], []
        self._tickets.clear()
        if self._arena is not None:
            self._arena.close()
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None
