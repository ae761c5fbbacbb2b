"""What a receiver can see of each attack: can per-candidate signals tell attackers apart?

Usage::

    python -m benchmarks.attack_signals                      # every attack, the goal cell
    python -m benchmarks.attack_signals --attacks sign_flip,ipm --no-write

Every robust rule decides from what the receiving node sees of each candidate in one
aggregation. This benchmark measures how much each such signal separates malicious from honest
candidates, attack by attack, in the matrix's goal cell (MNIST, MLP, ``dirichlet:0.5``, 20
nodes, k-regular degree 8, 30 % malicious, 20 rounds, the ``benchmarks.poisoning`` learning
rates). The cell runs in-process with the rule under study (``default`` unless ``--rule``)
wrapped in an observer, which records, at every honest node's aggregation from round 1 on, for
every candidate ``x`` (``own`` = the node's freshly trained model, ``start`` = the model its
training began from, i.e. its previous aggregate):

* ``distance``: ``||x - own|| / ||own||`` (BALANCE's score; smaller looks more honest);
* ``direction``: ``cos(x - start, own - start)`` (does ``x`` move the way own training did,
  the idea of FLTrust-style trust scores; larger looks more honest);
* ``accuracy``: ``acc(x) / acc(own)`` on the receiver's rule-evaluation samples (the accuracy
  guard's test; larger looks more honest);
* ``loss``: ``loss(x) / loss(own)`` on the same samples (smaller looks more honest).

Per signal the table gives the *within-aggregation AUC*: over the aggregations whose
candidates include both kinds, the mean share of (honest, malicious) candidate pairs that the
signal orders the honest-looking way (ties count half). 1.0: a threshold chosen per aggregation
could keep every honest candidate and drop every attacker; 0.5: the signal carries no
information; below 0.5: attackers look *more* honest than honest neighbours. The observer
changes nothing (tested bit for bit on ``digits``); the table also shows the same cell's
accuracy in ``benchmarks/results/poisoning.csv`` (run earlier) for comparison.

Writes the ``## Attack signals`` section of ``benchmarks/RESULTS.md`` (unless ``--no-write``).
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks._results import command_header, run_stamp, update_section

TITLE = "Attack signals"
SIGNALS: tuple[str, ...] = ("distance", "direction", "accuracy", "loss")
#: +1: a larger value looks more honest; -1: a smaller value does.
ORIENTATION: dict[str, int] = {"distance": -1, "direction": 1, "accuracy": 1, "loss": -1}
CSV_PATH = Path(__file__).resolve().parent / "results" / "poisoning.csv"


def pair_auc(honest: Sequence[float], malicious: Sequence[float]) -> float:
    """Share of (honest, malicious) pairs with the honest value larger (ties count half)."""
    h = np.asarray(honest, dtype=np.float64)
    m = np.asarray(malicious, dtype=np.float64)
    if h.size == 0 or m.size == 0:
        raise ValueError("pair_auc needs at least one value of each kind")
    diff = h[:, None] - m[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


@dataclass
class Observation:
    """One candidate as seen by one honest receiver in one aggregation."""

    receiver_round: int
    aggregation: int  # index of the aggregation it belongs to
    malicious: bool
    values: dict[str, float]


@dataclass
class Observer:
    """A robust rule that records what its receiver sees of each candidate, then runs ``inner``
    unchanged (same context, same state); ``malicious_ids`` are the attackers' public keys.
    It observes from round 1 on, with ``ctx.start`` the round's start (its previous aggregate).
    """

    inner: Any
    malicious_ids: frozenset[bytes] = frozenset()
    rows: list[Observation] = field(default_factory=list)
    aggregations: int = 0

    def __call__(
        self,
        own: npt.NDArray[Any],
        candidates: npt.NDArray[Any],
        weights: npt.NDArray[Any],
        ctx: Any,
    ) -> Any:
        if (
            ctx.round >= 1
            and ctx.start is not None
            and len(candidates)
            and ctx.candidate_ids is not None
        ):
            self._observe(np.asarray(own), np.asarray(candidates), ctx)
        return self.inner(own, candidates, weights, ctx)

    def _observe(self, own: np.ndarray, cands: np.ndarray, ctx: Any) -> None:
        from dfl.learning.robust import direction_cosines

        own64 = own.astype(np.float64)
        cos = direction_cosines(own, cands, ctx.start)
        dist = np.linalg.norm(cands.astype(np.float64) - own64, axis=1) / max(
            float(np.linalg.norm(own64)), 1e-30
        )
        scores = ctx.evaluate_many(np.vstack([own[None], cands]).astype(np.float32))
        own_acc, own_loss = scores[0]
        agg = self.aggregations
        self.aggregations += 1
        for i, author in enumerate(ctx.candidate_ids):
            acc, loss = scores[i + 1]
            values = {
                "distance": float(dist[i]),
                "direction": float(cos[i]),
                "accuracy": acc / own_acc if own_acc > 0 else 0.0,
                "loss": loss / own_loss if own_loss > 0 else float("inf"),
            }
            self.rows.append(Observation(ctx.round, agg, author in self.malicious_ids, values))


def summarise(rows: Sequence[Observation]) -> dict[str, float]:
    """Per signal, the mean within-aggregation AUC (module doc), and how many aggregations."""
    groups: dict[int, list[Observation]] = {}
    for r in rows:
        groups.setdefault(r.aggregation, []).append(r)
    mixed = [
        g
        for g in groups.values()
        if any(o.malicious for o in g) and not all(o.malicious for o in g)
    ]
    out: dict[str, float] = {"aggregations": float(len(mixed))}
    for s in SIGNALS:
        sign = ORIENTATION[s]
        aucs = [
            pair_auc(
                [sign * o.values[s] for o in g if not o.malicious],
                [sign * o.values[s] for o in g if o.malicious],
            )
            for g in mixed
        ]
        out[s] = float(np.mean(aucs)) if aucs else float("nan")
    return out


def goal_cell(
    attack: str, rule: str = "default", rounds: int | None = None, dataset: str = "mnist"
) -> Any:
    """The matrix's goal cell of ``attack`` (``dataset`` ``digits``: the same on the small set,
    for tests)."""
    from benchmarks.poisoning import HPARAMS, Cell

    hp = HPARAMS[(dataset, "mlp")]
    return Cell(
        "goal", dataset, "mlp", "dirichlet:0.5", 0.3, attack, rule, 0,
        rounds=rounds or hp.rounds, lr=hp.lr, local_epochs=hp.local_epochs,
        batch_size=hp.batch_size,
    )  # fmt: skip


def run_registered(
    cell: Any, name: str, rule: Callable[..., Any], prepare: Callable[[Any], None]
) -> tuple[dict[str, Any], float]:
    """Run ``cell`` in this process with ``rule`` registered as ``name`` for the run only.

    ``prepare(sim)`` sees the built :class:`simulator.engine.Simulation` before it runs (its
    identities, graph, attackers). Returns the run's summary and its seconds, set-up included.
    """
    from dfl.learning import robust
    from simulator.engine import Simulation

    robust.RULES[name] = rule
    try:
        t0 = time.perf_counter()
        sim = Simulation(replace(cell, rule=name).scenario(workers=1))
        prepare(sim)
        result = sim.run()
        try:
            summary = dict(result.summary)
        finally:
            result.close()
    finally:
        del robust.RULES[name]
    return summary, time.perf_counter() - t0


def run_attack(
    attack: str, rule: str = "default", rounds: int | None = None, dataset: str = "mnist"
) -> tuple[dict[str, Any], Observer]:
    """Run :func:`goal_cell` under an observer; return its table row and the observer."""
    from dfl.node.compute import resolve_rule

    base = goal_cell(attack, rule, rounds, dataset)
    observer = Observer(resolve_rule(rule))

    def prepare(sim: Any) -> None:
        observer.malicious_ids = frozenset(sim.identities[i].public_key for i in sim.malicious)

    summary, seconds = run_registered(base, f"observed_{base.rule_resolved}", observer, prepare)
    row: dict[str, Any] = {
        "attack": attack,
        "rule": base.rule_resolved,
        "honest_accuracy": float(summary["honest_accuracy_mean"]),
    }
    row.update(summarise(observer.rows))
    row["matrix_accuracy"] = _matrix_accuracy(base.key)
    row["seconds"] = seconds
    return row, observer


def _matrix_accuracy(key: str) -> float | None:
    if not CSV_PATH.exists():
        return None
    with CSV_PATH.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["key"] == key and r["honest_accuracy_mean"]:
                return float(r["honest_accuracy_mean"])
    return None


_LEGEND = (
    "Goal cell of each attack (MNIST, MLP, `dirichlet:0.5`, 20 nodes, k-regular degree 8, 30 % "
    "malicious, 20 rounds) run with the rule of the `rule` column, observed at every honest "
    "node's aggregation from round 1 on. Per signal: mean within-aggregation AUC, the share of "
    "(honest, malicious) candidate pairs the signal orders the honest-looking way (1.0 "
    "separable by a per-aggregation threshold, 0.5 no information, < 0.5 attackers look more "
    "honest). `distance` = `||x - own|| / ||own||`; `direction` = `cos(x - start, own - start)`"
    " with `start` the model own training began from; `accuracy` / `loss` = ratio to own on the"
    " receiver's 500 rule-evaluation samples. `acc` is this run's honest mean accuracy; `matrix"
    " acc` the same cell in `benchmarks/results/poisoning.csv`, run in an earlier session "
    "(older code, some with worker processes), for comparison: the observer itself changes "
    "nothing (tested bit for bit on `digits`). Definitions: `benchmarks/attack_signals.py`; "
    "reading: docs/design-notes.md, 17."
)


def table(rows: Sequence[dict[str, Any]]) -> str:
    aucs_head = " | ".join(f"{s} AUC" for s in SIGNALS)
    head = f"| attack | rule | {aucs_head} | aggregations | acc | matrix acc |"
    lines = [head, "|---|---|" + "---:|" * (len(SIGNALS) + 3)]
    for r in rows:
        m = r["matrix_accuracy"]
        aucs = " | ".join(f"{r[s]:.2f}" for s in SIGNALS)
        matrix = "-" if m is None else f"{100 * m:.2f} %"
        n, acc = int(r["aggregations"]), 100 * r["honest_accuracy"]
        lines.append(f"| {r['attack']} | {r['rule']} | {aucs} | {n} | {acc:.2f} % | {matrix} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.poisoning import ATTACK_NAMES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attacks", default=",".join(a for a in ATTACK_NAMES if a != "none"))
    ap.add_argument("--rule", default="default")
    ap.add_argument("--rounds", type=int, default=None, help="default: the matrix's 20")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    attacks = [a for a in args.attacks.split(",") if a]
    stamp = run_stamp()
    rows = []
    for a in attacks:
        row, _ = run_attack(a, args.rule, args.rounds)
        rows.append(row)
        aucs = ", ".join(f"{s} {row[s]:.2f}" for s in SIGNALS)
        acc, secs = row["honest_accuracy"], row["seconds"]
        print(f"{a}: {aucs}, acc {acc:.4f} ({secs:.0f} s)", flush=True)
    md = table(rows)
    print(md)
    if not args.no_write:
        header = command_header("benchmarks.attack_signals", argv, stamp)
        update_section(TITLE, f"{header}{_LEGEND}\n\n{md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
