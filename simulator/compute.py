"""Where the simulated nodes' training and aggregation run: in-process or in worker processes.

Node ``i`` is always served by worker ``i % W`` (a learner may keep state, e.g. a free rider's
stale model), and each worker processes its jobs in submission order, so results do not depend
on the number of workers: a seeded run is deterministic.

Each worker loads the dataset once, builds the learners of its nodes lazily and compiles each
model's jitted step once; jobs and results cross the process boundary as numpy arrays.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import numpy as np

from dfl.learning.data import Dataset, load_dataset
from dfl.learning.models import get_model
from dfl.learning.partition import partition
from dfl.node.compute import Learner, TrainSettings
from dfl.node.core import Aggregate, AggregationDone, Train, TrainingDone
from simulator.scenario import Scenario

__all__ = ["BACKDOOR_TARGET", "ComputePool", "World"]

#: Target class of ``ATTACKS["backdoor"]`` (its default).
BACKDOOR_TARGET = 0


@dataclass
class World:
    """Everything a process needs to build any node's learner (cheap to pickle)."""

    scenario: Scenario
    malicious: frozenset[int]
    data_dir: str | None = None

    def build(self) -> _Worker:
        return _Worker(self)


class _Worker:
    def __init__(self, world: World) -> None:
        sc = world.scenario
        self.world = world
        self.data: Dataset = load_dataset(sc.dataset, cache_dir=world.data_dir)
        self.model = get_model(sc.model, self.data.input_shape, self.data.num_classes)
        self.parts = partition(self.data.y_train, sc.nodes, sc.partition, seed=sc.seed)
        rng = np.random.default_rng(sc.seed + 17)
        n_eval = min(sc.eval_samples, len(self.data.y_test))
        idx = np.sort(rng.choice(len(self.data.y_test), size=n_eval, replace=False))
        self.x_eval, self.y_eval = self.data.x_test[idx], self.data.y_test[idx]
        self.learners: dict[int, Learner] = {}

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

    def run(self, jobs: list[tuple[int, Any]]) -> list[Any]:
        out: list[Any] = []
        for i, job in jobs:
            if isinstance(job, Train):
                out.append(self.learner(i).train(job))
            elif isinstance(job, Aggregate):
                out.append(self.learner(i).aggregate(job))
            elif isinstance(job, tuple) and job[0] == "eval":
                _, params, full = job
                if full:
                    out.append(self.model.evaluate(params, self.data.x_test, self.data.y_test))
                else:
                    out.append(self.model.evaluate(params, self.x_eval, self.y_eval))
            elif isinstance(job, tuple) and job[0] == "init":
                out.append((self.model.init(job[1]), self.learner(i).samples))
            elif isinstance(job, tuple) and job[0] == "backdoor":
                out.append(self._backdoor_asr(job[1]))
            else:
                raise TypeError(f"unknown job {job!r}")
        return out

    def _backdoor_asr(self, params: np.ndarray) -> float:
        from dfl.learning.attacks import backdoor_asr

        model = self.model

        def predict(x: np.ndarray) -> np.ndarray:
            return model.predict(params, x)

        return float(backdoor_asr(predict, self.data.x_test, self.data.y_test, BACKDOOR_TARGET))


_WORKER: _Worker | None = None


def _init(world: World) -> None:
    global _WORKER
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER = world.build()


def _run(jobs: list[tuple[int, Any]]) -> tuple[list[Any], float]:
    assert _WORKER is not None
    t0 = time.perf_counter()
    out = _WORKER.run(jobs)
    return out, time.perf_counter() - t0


class ComputePool:
    """Runs batches of node jobs, in-process (``workers == 1``) or over worker processes."""

    def __init__(self, world: World, workers: int) -> None:
        self.world = world
        self.workers = max(1, workers)
        self._local: _Worker | None = None
        self._pools: list[ProcessPoolExecutor] = []
        if self.workers == 1:
            self._local = world.build()
        else:
            ctx = get_context("spawn")
            self._pools = [
                ProcessPoolExecutor(1, mp_context=ctx, initializer=_init, initargs=(world,))
                for _ in range(self.workers)
            ]

    def run(self, jobs: list[tuple[int, Any]]) -> list[Any]:
        """Run jobs; results in job order."""
        if not jobs:
            return []
        if self._local is not None:
            return self._local.run(jobs)
        buckets: list[list[int]] = [[] for _ in range(self.workers)]
        for k, (i, _) in enumerate(jobs):
            buckets[i % self.workers].append(k)
        futures: list[tuple[list[int], Future[tuple[list[Any], float]]]] = []
        for w, ks in enumerate(buckets):
            if ks:
                futures.append((ks, self._pools[w].submit(_run, [jobs[k] for k in ks])))
        results: list[Any] = [None] * len(jobs)
        for ks, fut in futures:
            out, _ = fut.result()
            for k, r in zip(ks, out, strict=True):
                results[k] = r
        return results

    def close(self) -> None:
        for p in self._pools:
            p.shutdown(wait=True, cancel_futures=True)
        self._pools = []


_ = (TrainingDone, AggregationDone)
