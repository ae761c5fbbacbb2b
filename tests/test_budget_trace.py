"""benchmarks.budget_trace: the recorded layers change nothing and add up."""

from __future__ import annotations

import pytest

from benchmarks import budget_trace as B
from benchmarks.attack_signals import goal_cell
from dfl.errors import UsageError
from dfl.learning.robust import RULES
from dfl.node.compute import DEFAULT_RULE


def test_trace_changes_nothing_and_every_layer_adds_up() -> None:
    """The small ``digits`` goal cell, 3 rounds, seed 1: the traced run gives the plain run's
    per-node accuracies; each layer sees exactly what the layer before it accepted; every
    honest node appears once in the node table with its neighbours' attackers counted."""
    from dataclasses import replace

    from simulator.engine import Simulation

    before = set(RULES)
    run, rec = B.run_attack("sign_flip", 1, "default", rounds=3, dataset="digits")
    assert set(RULES) == before
    plain_cell = replace(goal_cell("sign_flip", "default", 3, "digits"), seed=1)
    plain = Simulation(plain_cell.scenario(workers=1)).run()
    try:
        assert run["accuracies"] == plain.summary["honest_accuracies"]
        assert run["honest_accuracy"] == plain.summary["honest_accuracy_mean"]
    finally:
        plain.close()
    assert run["rule"] == DEFAULT_RULE and run["rounds"] == 3
    # 14 honest nodes x 3 rounds, each aggregation starting at the guard
    assert rec.aggregations == 42 and rec.ambiguous < rec.aggregations
    layers = {name: [v for v in rec.verdicts if v.layer == name] for name in B.FILTERS}
    trim = [v for v in rec.verdicts if v.layer == "trim"]
    for outer, inner in (("guard", "balance"), ("balance", "rank")):
        assert sum(v.accepted for v in layers[outer]) == len(layers[inner])
    assert sum(v.accepted for v in layers["rank"]) == len(trim)
    assert any(v.malicious for v in layers["guard"]) and not all(
        v.malicious for v in layers["guard"]
    )
    table = B.layer_table(rec, 3)
    assert [r["layer"] for r in table] == list(B.FILTERS)
    guard = table[0]
    assert guard["all_malicious_seen"] + guard["all_honest_seen"] == len(layers["guard"])
    nodes = B.node_table(rec, run["accuracies"])
    assert sorted(r["node"] for r in nodes) == sorted(int(k) for k in run["accuracies"])
    assert len(nodes) == 14
    for r in nodes:
        assert r["attackers"] == len(rec.neighbours[r["node"]] & rec.malicious)
        assert 0 <= r["malicious_through"] <= 3 * r["attackers"]
        assert 0 <= r["filters_honest_rejected"] <= 3 * (8 - r["attackers"])
    md = B.markdown(run, rec)
    assert md.count("\n| ") == len(B.FILTERS) + len(nodes) + 2  # rows + two header rows


def test_only_guarded_direction_stacks_can_be_traced() -> None:
    with pytest.raises(UsageError, match="guarded direction stack"):
        B.run_attack("sign_flip", 0, "fedavg", rounds=1, dataset="digits")


def test_command_header_is_the_sections_opening() -> None:
    from benchmarks._results import command_header, machine, run_stamp

    stamp = run_stamp()
    assert " UTC; load average at start " in stamp and len(stamp.split("/")) == 3
    head = command_header("benchmarks.budget_trace", ["--seed", "1"], stamp)
    assert head == (
        f"Command: `python -m benchmarks.budget_trace --seed 1` ({stamp}).\n"
        f"Machine: {machine()}.\n\n"
    )
