"""Where a guarded direction stack's Byzantine budget goes: every layer's verdicts, every node.

Usage::

    python -m benchmarks.budget_trace --attacks sign_flip,min_sum --seed 1
    python -m benchmarks.budget_trace --attacks min_sum --seed 1 --rule guarded_direction_trimmed \\
        --no-write

Runs the matrix's goal cell of each attack (MNIST, MLP, ``dirichlet:0.5``, 20 nodes, k-regular
degree 8, 30 % malicious, 20 rounds; :func:`benchmarks.attack_signals.goal_cell`) at ``--seed``,
in-process, with the rule (``default`` unless ``--rule``; one of
:data:`dfl.learning.robust.GUARDED_DIRECTION_STACKS`) rebuilt with every filter layer recording
its verdicts (:func:`dfl.learning.robust.guarded_direction_stack`'s ``wrap``). The recording
changes nothing (tested bit for bit on ``digits``). Two tables per attack:

* per layer (the accuracy guard, BALANCE, the direction rank): the attackers' and the honest
  neighbours' models each layer saw and rejected, over all rounds and over the second half;
* per honest node: how many of its neighbours are attackers, its final accuracy, the honest
  models its rank left out, and the attackers' models that passed every filter (the trimmed
  mean, told what budget is left, sees those).

A layer does not know which node runs it. Each aggregation's receiver is the one honest node
whose neighbours include every candidate the guard (the outermost layer) sees; an aggregation
where that is ambiguous is counted in the layer table only (the node table says how many).
The later layers of the same aggregation follow the guard's call in-process.

Writes the ``## Budget trace`` section of ``benchmarks/RESULTS.md`` (unless ``--no-write``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy.typing as npt

from benchmarks._results import command_header, run_stamp, update_section
from dfl.learning.robust import STACK_LAYERS

TITLE = "Budget trace"
#: The layers that filter: all but the last, the trimmed mean, which accepts everyone it is given.
FILTERS: tuple[str, ...] = STACK_LAYERS[:-1]
OUTERMOST, AGGREGATOR = STACK_LAYERS[0], STACK_LAYERS[-1]


@dataclass
class Verdict:
    """One candidate's verdict at one layer of one aggregation."""

    layer: str
    round: int
    receiver: int | None  # None: the aggregation's receiver is ambiguous
    author: int
    malicious: bool
    accepted: bool


@dataclass
class Recorder:
    """Wraps each layer of the stack (``wrap`` of ``guarded_direction_stack``) and records
    its verdicts; ``neighbours`` and ``authors`` (public key -> node index) come from the
    simulation, ``malicious`` is its set of attackers."""

    neighbours: list[frozenset[int]] = field(default_factory=list)
    authors: dict[bytes, int] = field(default_factory=dict)
    malicious: frozenset[int] = frozenset()
    verdicts: list[Verdict] = field(default_factory=list)
    receiver: int | None = None
    ambiguous: int = 0
    aggregations: int = 0

    def wrap(self, layer: str, rule: Any) -> Any:
        def recorded(
            own: npt.NDArray[Any], cands: npt.NDArray[Any], weights: npt.NDArray[Any], ctx: Any
        ) -> Any:
            res = rule(own, cands, weights, ctx)
            if ctx.candidate_ids is not None:
                self._record(layer, ctx, res)
            return res

        recorded.__name__ = getattr(rule, "__name__", layer)
        return recorded

    def _record(self, layer: str, ctx: Any, res: Any) -> None:
        authors = [self.authors[a] for a in ctx.candidate_ids]
        if layer == OUTERMOST:  # the guard: a new aggregation starts here
            self.aggregations += 1
            who = [
                i
                for i, nb in enumerate(self.neighbours)
                if i not in self.malicious and nb.issuperset(authors)
            ]
            self.receiver = who[0] if len(who) == 1 else None
            self.ambiguous += self.receiver is None
        for a, v in zip(authors, res.verdicts, strict=True):
            self.verdicts.append(
                Verdict(layer, ctx.round, self.receiver, a, a in self.malicious, v.accepted)
            )


def layer_table(rec: Recorder, rounds: int) -> list[dict[str, Any]]:
    """Per filter layer: attackers' and honest models seen and rejected, over all rounds and
    from round ``rounds // 2`` on."""
    late = rounds // 2
    rows = []
    for layer in FILTERS:
        row: dict[str, Any] = {"layer": layer}
        for span, first in (("all", 0), ("late", late)):
            vs = [v for v in rec.verdicts if v.layer == layer and v.round >= first]
            for kind, bad in (("malicious", True), ("honest", False)):
                mine = [v for v in vs if v.malicious == bad]
                row[f"{span}_{kind}_seen"] = len(mine)
                row[f"{span}_{kind}_rejected"] = sum(not v.accepted for v in mine)
        rows.append(row)
    return rows


def node_table(rec: Recorder, accuracies: dict[str, float]) -> list[dict[str, Any]]:
    """Per honest node: attackers among its neighbours, final accuracy, honest models the
    guard and BALANCE rejected, honest models its rank left out, attackers' models that passed
    every filter (reached the trimmed mean)."""
    rows = []
    for i in sorted(int(k) for k in accuracies):
        mine = [v for v in rec.verdicts if v.receiver == i]
        rows.append(
            {
                "node": i,
                "attackers": len(rec.neighbours[i] & rec.malicious),
                "accuracy": accuracies[str(i)],
                "filters_honest_rejected": sum(
                    v.layer in ("guard", "balance") and not v.malicious and not v.accepted
                    for v in mine
                ),
                "rank_honest_rejected": sum(
                    v.layer == "rank" and not v.malicious and not v.accepted for v in mine
                ),
                "malicious_through": sum(v.layer == AGGREGATOR and v.malicious for v in mine),
            }
        )
    rows.sort(key=lambda r: (r["attackers"], r["node"]))
    return rows


def run_attack(
    attack: str, seed: int, rule: str = "default", rounds: int | None = None, dataset: str = "mnist"
) -> tuple[dict[str, Any], Recorder]:
    """Run the goal cell of ``attack`` at ``seed`` with every layer recorded."""
    from benchmarks.attack_signals import goal_cell, run_registered
    from dfl.errors import UsageError
    from dfl.learning import robust
    from dfl.node.compute import DEFAULT_RULE

    resolved = DEFAULT_RULE if rule == "default" else rule
    if resolved not in robust.GUARDED_DIRECTION_STACKS:
        known = ", ".join(sorted(robust.GUARDED_DIRECTION_STACKS))
        raise UsageError(f"--rule must be default or a guarded direction stack ({known})")
    base = replace(goal_cell(attack, resolved, rounds, dataset), seed=seed)
    rec = Recorder()
    traced = robust.guarded_direction_stack(
        *robust.GUARDED_DIRECTION_STACKS[resolved], wrap=rec.wrap
    )

    def prepare(sim: Any) -> None:
        rec.neighbours = [frozenset(int(j) for j in nb) for nb in sim.adj]
        rec.authors = {ident.public_key: i for i, ident in enumerate(sim.identities)}
        rec.malicious = frozenset(sim.malicious)

    summary, seconds = run_registered(base, f"traced_{resolved}", traced, prepare)
    out = {
        "attack": attack,
        "seed": seed,
        "rule": resolved,
        "rounds": base.rounds,
        "honest_accuracy": float(summary["honest_accuracy_mean"]),
        "honest_accuracy_min": float(summary["honest_accuracy_min"]),
        "accuracies": summary["honest_accuracies"],
        "seconds": seconds,
    }
    return out, rec


def markdown(run: dict[str, Any], rec: Recorder) -> str:
    late = run["rounds"] // 2
    lines = [
        f"**{run['attack']}, seed {run['seed']}, `{run['rule']}`**: honest mean "
        f"{100 * run['honest_accuracy']:.2f} % (lowest node {100 * run['honest_accuracy_min']:.2f}"
        f" %); {rec.aggregations} aggregations, {rec.ambiguous} with an ambiguous receiver.",
        "",
        "| layer | attackers' models rejected / seen | honest rejected / seen | attackers' "
        f"from round {late} | honest from round {late} |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in layer_table(rec, run["rounds"]):
        cells = [
            f"{r[f'{span}_{kind}_rejected']} / {r[f'{span}_{kind}_seen']}"
            for span in ("all", "late")
            for kind in ("malicious", "honest")
        ]
        lines.append(f"| {r['layer']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| node | attackers among its 8 neighbours | final accuracy | honest models the guard "
        "and BALANCE rejected | honest models its rank left out | attackers' models past every "
        "filter |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in node_table(rec, run["accuracies"]):
        lines.append(
            f"| {r['node']} | {r['attackers']} | {100 * r['accuracy']:.2f} % "
            f"| {r['filters_honest_rejected']} | {r['rank_honest_rejected']} "
            f"| {r['malicious_through']} |"
        )
    return "\n".join(lines)


_LEGEND = (
    "Goal cell of each attack (MNIST, MLP, `dirichlet:0.5`, 20 nodes, k-regular degree 8, 30 % "
    "malicious, 20 rounds) at the seed shown, in-process, with every filter layer of the rule "
    "recording its verdicts (which changes nothing). Layer table: the attackers' and honest "
    "neighbours' models each layer saw and rejected (a model rejected by the guard never reaches "
    "BALANCE). Node table: per honest node, its attackers among 8 neighbours, its final "
    "accuracy, the honest models its guard and BALANCE rejected, those its rank left out and "
    "the attackers' models that passed every filter, over the run. Each aggregation's receiver "
    "is the one honest node whose neighbours include all the guard's candidates; aggregations "
    "where that is ambiguous are left out of the node table. Definitions: "
    "`benchmarks/budget_trace.py`; reading: docs/design-notes.md, 20."
)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attacks", default="sign_flip,min_sum")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rule", default="default")
    ap.add_argument("--rounds", type=int, default=None, help="default: the matrix's 20")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    stamp = run_stamp()
    parts = []
    for attack in [a for a in args.attacks.split(",") if a]:
        run, rec = run_attack(attack, args.seed, args.rule, args.rounds)
        md = markdown(run, rec)
        print(md + f"\n({run['seconds']:.0f} s)\n", flush=True)
        parts.append(md)
    if not args.no_write:
        header = command_header("benchmarks.budget_trace", argv, stamp)
        update_section(TITLE, f"{header}{_LEGEND}\n\n" + "\n\n".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
