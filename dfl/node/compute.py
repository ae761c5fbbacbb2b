"""The compute half of a node: runs the core's ``Train`` and ``Aggregate`` effects.

Pure (numpy + JAX, no I/O), so the daemon runs it in a worker thread/process and the simulator
in its worker pool, and both get identical results for identical inputs:

* :class:`Learner` holds one node's data shard (train + validation split), its model, and, for a
  deliberately malicious node, its attack. ``train(job)`` returns ``TrainingDone``;
  ``aggregate(job)`` returns ``AggregationDone``.
* :func:`resolve_rule` maps a rule name (including ``default``) to a function of
  :data:`dfl.learning.robust.RULES`.

A malicious node trains (on poisoned data for data attacks), then poisons what it *publishes*
(model attacks); it keeps its honestly trained model as its own state, and it aggregates like an
honest ``fedavg`` node, so its attacks stay relative to where the network is. Attacks that need
honest updates get the peer models the node received in its previous aggregation -- exactly what a
malicious node of a real network sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dfl.config import RobustConfig
from dfl.errors import UsageError
from dfl.learning.attacks import AttackContext, get_attack
from dfl.learning.models import Model
from dfl.learning.robust import RULES, Rule, RuleContext
from dfl.node.core import Aggregate, AggregationDone, Train, TrainingDone

__all__ = ["DEFAULT_RULE", "RULE_EVAL_SAMPLES", "Learner", "TrainSettings", "resolve_rule"]

#: The rule behind the name ``default``; chosen from the poisoning matrix (benchmarks/RESULTS.md).
DEFAULT_RULE = "guarded_recentered_memory_direction_trimmed"

#: Validation samples a robust rule evaluates each candidate on (see Learner.evaluate_for_rule;
#: a node's ``robust.eval_samples``).
RULE_EVAL_SAMPLES: int = RobustConfig.eval_samples


def resolve_rule(name: str) -> Rule:
    """Return the robust rule registered as ``name`` (``default`` -> :data:`DEFAULT_RULE`)."""
    key = DEFAULT_RULE if name == "default" else name
    try:
        return RULES[key]
    except KeyError:
        raise UsageError(
            f"unknown robust rule {name!r} (known: default, {', '.join(sorted(RULES))})"
        ) from None


def _sanitise(acc: float, loss: float) -> tuple[float, float]:
    """A model's ``(accuracy, loss)`` made finite. A non-finite loss (NaN or overflowing
    logits) scores the worst, accuracy 0 and loss ``1e30``: its argmax "predictions" are an
    artefact (NaN logits all predict class 0, which would score the share of class 0).
    Otherwise a non-finite accuracy scores 0 and the loss is capped at ``1e30``."""
    if not np.isfinite(loss):
        return 0.0, 1e30
    acc = float(acc) if np.isfinite(acc) else 0.0
    return acc, min(float(loss), 1e30)


@dataclass(frozen=True)
class TrainSettings:
    lr: float = 0.05
    batch_size: int = 32
    epochs: int = 1
    momentum: float = 0.0


class Learner:
    """One node's local learning: data shard, model, optional attack."""

    def __init__(
        self,
        model: Model,
        x: np.ndarray,
        y: np.ndarray,
        *,
        num_classes: int,
        settings: TrainSettings,
        validation_share: float = 0.1,
        attack: str | None = None,
        seed: int = 0,
        num_byzantine: int = 1,
        num_nodes: int = 0,
        rule_eval_samples: int = RULE_EVAL_SAMPLES,
    ) -> None:
        if len(x) != len(y) or len(x) == 0:
            raise UsageError("a learner needs a non-empty shard with as many labels as inputs")
        self.model = model
        self.settings = settings
        self.num_classes = num_classes
        self.seed = seed
        self.num_byzantine = num_byzantine
        self.num_nodes = num_nodes
        if rule_eval_samples < 1:
            raise UsageError(f"rule_eval_samples must be >= 1, got {rule_eval_samples}")
        self.rule_eval_samples = rule_eval_samples
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(x))
        n_val = round(len(x) * validation_share)
        n_val = min(max(n_val, 1 if len(x) > 1 else 0), len(x) - 1)
        val, train = order[:n_val], order[n_val:]
        self.x_val, self.y_val = x[val], y[val]
        self.x_train, self.y_train = x[train], y[train]
        self.attack = get_attack(attack) if attack and attack != "none" else None
        if self.attack is not None and self.attack.poison_data is not None:
            self.x_train, self.y_train = self.attack.poison_data(
                self.x_train, self.y_train, np.random.default_rng(seed + 1), num_classes
            )
        self._stale: list[np.ndarray] = []

    @property
    def samples(self) -> int:
        return len(self.x_train)

    def evaluate_val(self, params: np.ndarray) -> tuple[float, float]:
        """Accuracy and loss on the node's own validation data (training data if it has none).

        Always finite: a peer's model whose loss overflows (a scaled or noise model) scores
        accuracy 0 and loss ``1e30`` -- the worst possible, never an error.
        """
        if len(self.x_val) == 0:
            return self._evaluate(params, self.x_train, self.y_train)
        return self._evaluate(params, self.x_val, self.y_val)

    @property
    def rule_eval_count(self) -> int:
        """How many samples :meth:`evaluate_for_rule` scores on."""
        if len(self.x_val) == 0:
            return len(self.x_train)
        return min(len(self.x_val), self.rule_eval_samples)

    def evaluate_for_rule(self, params: np.ndarray) -> tuple[float, float]:
        """:meth:`evaluate_val` on at most ``rule_eval_samples`` validation samples.

        What the robust rules call (``ctx.evaluate``) on every candidate, every round: a fixed
        random subset keeps that cost a small share of training (with LeNet, one pass over
        1,500 validation samples took 0.33 s CPU here, over 256 samples 0.043 s, against about
        10 s for a training epoch on 13,500), while 256 samples still tell a poisoned model
        (accuracy near 0) from an honest one. One row of :meth:`evaluate_many_for_rule`, so a
        rule scores the same with either.
        """
        flat = np.asarray(params, dtype=np.float32)
        if flat.shape != (self.model.num_params,):
            raise UsageError(
                f"expected a flat vector of {self.model.num_params} params, got {flat.shape}"
            )
        return self.evaluate_many_for_rule(flat[None])[0]

    def evaluate_many_for_rule(self, stack: np.ndarray) -> list[tuple[float, float]]:
        """:meth:`evaluate_for_rule` of every row of a ``(k, d)`` stack, in one call.

        What the robust rules call (``ctx.evaluate_many``) to score all candidates (and own)
        at once: the same samples, the same numbers and the same sanitising per model as
        :meth:`evaluate_for_rule` (a model whose loss is not finite scores ``(0.0, 1e30)``),
        with the set-up shared by all the models (:meth:`Model.evaluate_many`).
        """
        x, y = self._rule_data()
        accs, losses = self.model.evaluate_many(stack, x, y)
        return [_sanitise(a, lo) for a, lo in zip(accs.tolist(), losses.tolist(), strict=True)]

    def _rule_data(self) -> tuple[np.ndarray, np.ndarray]:
        """The samples the rules score on (see :attr:`rule_eval_count`)."""
        if len(self.x_val) == 0:
            return self.x_train, self.y_train
        n = self.rule_eval_samples
        return self.x_val[:n], self.y_val[:n]

    def _evaluate(self, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        return _sanitise(*self.model.evaluate(params, x, y))

    def warm_up(self, rule: str, params: np.ndarray) -> None:
        """Compile what the first aggregation would otherwise compile mid-round: the rule's
        evaluation batch (JAX) and its kernels (numba), by running ``rule`` once on copies of
        ``params``. The daemon calls it at start-up, so a node's first round costs what every
        later round costs (a first guarded aggregation was measured at 1.8 s CPU, later ones at
        0.17 s, with LeNet)."""
        params = np.asarray(params, dtype=np.float32)
        ctx = RuleContext(
            own_samples=1,
            num_byzantine=1,
            evaluate=self.evaluate_for_rule,
            evaluate_many=self.evaluate_many_for_rule,
            eval_samples=self.rule_eval_count,
            candidate_ids=(b"\x00" * 32, b"\x01" * 32),
        )
        resolve_rule(rule)(params, np.stack([params, params]), np.ones(2), ctx)

    def train(self, job: Train) -> TrainingDone:
        s = self.settings
        free_rider = self.attack is not None and self.attack.name == "free_rider"
        if free_rider:
            new = np.asarray(job.model, dtype=np.float32)
        else:
            new = self.model.train_local(
                job.model,
                self.x_train,
                self.y_train,
                epochs=s.epochs,
                batch_size=s.batch_size,
                lr=s.lr,
                seed=job.seed,
                momentum=s.momentum,
            )
        diverged = not bool(np.isfinite(new).all())
        if diverged:
            # local training blew up (a start model far off, e.g. a malicious fedavg node that
            # averaged in noise models): keep the start model for this round, as a node that
            # skipped training, and say so in the block's metrics
            new = np.asarray(job.model, dtype=np.float32).copy()
        acc, loss = self.evaluate_val(new)
        published = new
        if self.attack is not None and self.attack.poison_model is not None:
            d = new.shape[0]
            neigh = (
                np.stack(job.neighbor_models)
                if job.neighbor_models
                else np.zeros((0, d), dtype=np.float32)
            )
            ctx = AttackContext(
                own_model=new,
                prev_model=np.asarray(job.model, dtype=np.float32),
                neighbor_models=neigh,
                num_byzantine=self.num_byzantine,
                num_nodes=self.num_nodes,
                round=job.round,
                seed=job.seed,
                stale_models=tuple(self._stale),
            )
            published = np.asarray(self.attack.poison_model(ctx), dtype=np.float32)
        self._stale = [new] if not self._stale else [self._stale[0]]
        metrics = {
            "val_accuracy": float(acc),
            "val_loss": float(loss) if np.isfinite(loss) else 1e9,
        }
        if diverged:
            metrics["diverged"] = 1.0
        return TrainingDone(
            round=job.round,
            model=new,
            samples=self.samples,
            metrics=metrics,
            published=published,
        )

    def aggregate(self, job: Aggregate) -> AggregationDone:
        rule = resolve_rule(job.rule)
        d = job.own.shape[0]
        cands = np.stack(job.candidates) if job.candidates else np.zeros((0, d), dtype=np.float32)
        ctx = RuleContext(
            own_samples=job.own_samples,
            num_byzantine=job.num_byzantine,
            round=job.round,
            seed=job.seed,
            evaluate=self.evaluate_for_rule,
            evaluate_many=self.evaluate_many_for_rule,
            eval_samples=self.rule_eval_count,
            candidate_ids=job.authors,
            state=dict(job.state),
            start=job.start,
        )
        res = rule(job.own, cands, np.asarray(job.weights, dtype=np.float64), ctx)
        state: dict[str, Any] = dict(res.state)
        return AggregationDone(
            round=job.round,
            model=np.asarray(res.model, dtype=np.float32),
            accepted=tuple(bool(v.accepted) for v in res.verdicts),
            scores=tuple(float(v.score) for v in res.verdicts),
            reasons=tuple(str(v.reason) for v in res.verdicts),
            state=state,
        )
