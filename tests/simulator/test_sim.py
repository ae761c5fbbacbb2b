"""The simulator drives the real node core: determinism, learning, faults, verifiable chains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from threadpoolctl import threadpool_info, threadpool_limits

from dfl.chain import validate_chain
from dfl.cli import main
from dfl.commands.chain import verify_store
from simulator.engine import Simulation
from simulator.scenario import Churn, Partition, Scenario
from simulator.topology import make_topology

SMALL = dict(dataset="digits", model="logreg", nodes=8, rounds=4, workers=1, eval_samples=100)


def run(**kw: object):  # type: ignore[no-untyped-def]
    sc = Scenario(**{**SMALL, **kw})  # type: ignore[arg-type]
    return Simulation(sc).run()


def own_chains_valid(result, network: bytes) -> int:  # type: ignore[no-untyped-def]
    total = 0
    for store in result.stores:
        for author in store.authors():
            blocks = list(store.iter_chain(author))
            heights = [b.height for b in blocks]
            assert heights == sorted(set(heights))
        _, problems = verify_store(store, None, network)
        assert problems == []
        total += store.count()
    return total


def test_same_seed_same_chains_and_different_seed_differs() -> None:
    a = run(seed=3)
    b = run(seed=3)
    c = run(seed=4)
    assert a.heads == b.heads
    assert a.summary["honest_accuracy_mean"] == b.summary["honest_accuracy_mean"]
    assert a.heads != c.heads
    assert all(len(h) == 32 for h in a.heads)


def test_same_heads_for_any_number_of_workers() -> None:
    """In-process and 2 worker processes (shared memory, speculation) sign identical chains."""
    kw = dict(model="mlp", nodes=10, rounds=4, eval_every=2, malicious=1, attack="sign_flip")
    a = run(**kw)
    b = run(**kw, workers=2)
    assert a.heads == b.heads
    assert a.accuracy_curve == b.accuracy_curve
    assert a.summary["honest_accuracy_mean"] == b.summary["honest_accuracy_mean"]
    assert b.summary["workers"] == 2 and b.summary["speculation_hits"] > 0
    assert {r["round"] for r in a.metrics if "accuracy" in r} == {1, 3}  # eval_every=2
    s = b.summary
    assert s["wall_seconds"] == pytest.approx(
        s["setup_seconds"] + s["rounds_seconds"] + s["final_eval_seconds"]
    )
    assert 0 < s["train_seconds"] <= s["rounds_seconds"]
    assert s["outside_training_share"] == pytest.approx(
        1 - s["train_seconds"] / s["rounds_seconds"]
    )
    for s in (a.summary, b.summary):  # CPU of the rounds by kind, measured in each process
        main, agg, train = (s[f"cpu_{k}_seconds"] for k in ("main", "aggregate", "train"))
        assert main > 0 and agg > 0 and train > 0 and s["cpu_eval_seconds"] > 0
        assert 0 < s["cpu_outside_training_share"] < 1
        assert s["cpu_outside_training_share"] == pytest.approx((main + agg) / (main + agg + train))
    assert a.summary["cpu_speculation_wasted_seconds"] == 0  # in-process: no speculation
    missed = b.summary["speculated"] > b.summary["speculation_hits"]
    assert missed == (b.summary["cpu_speculation_wasted_seconds"] > 0)


def test_in_process_runs_blas_single_threaded_like_a_worker() -> None:
    """A threaded BLAS dot sums in another order: BALANCE's norm (a ``np.dot`` of 15k params
    here) changed the signed scores in-process, so one goal cell ended 1.5 points apart with
    1 and 2 workers. The in-process pool pins BLAS to one thread, as the workers' environment
    does, and gives the thread count back when it closes."""
    kw = dict(model="mlp", malicious=2, attack="sign_flip", rule="balance")
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        sim = Simulation(Scenario(**{**SMALL, **kw}))  # type: ignore[arg-type]
        assert _blas_threads() == [1] * len(before)
        a = sim.run()
        a.close()
        assert _blas_threads() == before
    b = run(**kw, workers=2)
    assert a.heads == b.heads
    assert a.summary["honest_accuracy_mean"] == b.summary["honest_accuracy_mean"]


def _blas_threads() -> list[int]:
    return [int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]


def test_direction_rule_gets_the_round_start_in_process_and_in_workers() -> None:
    """``Aggregate.start`` crosses the worker boundary: the direction filter rejects the same
    sign-flipped models (reason ``rank:backwards`` in the signed verdicts) with 1 or 2 workers."""
    kw = dict(
        model="mlp", nodes=10, rounds=4, malicious=3, attack="sign_flip",
        rule="guarded_direction_trimmed",
    )  # fmt: skip
    a = run(**kw)
    b = run(**kw, workers=2)
    assert a.heads == b.heads
    assert a.summary["honest_accuracy_mean"] == b.summary["honest_accuracy_mean"]
    reasons = [
        v.reason
        for store, head in zip(a.stores, a.heads, strict=True)
        for blk in [store.get(head)]
        if blk is not None
        for v in blk.verdicts
    ]
    assert "rank:backwards" in reasons


def test_twenty_nodes_learn_digits() -> None:
    r = Simulation(Scenario(nodes=20, rounds=20, workers=1, eval_samples=200)).run()
    s = r.summary
    assert s["blocks"] == 20 * 20
    assert s["honest_accuracy_mean"] >= 0.85, s
    assert s["honest_accuracy_min"] >= 0.8, s
    by_node = s["honest_accuracies"]
    assert sorted(by_node, key=int) == [str(i) for i in range(20)]  # no attackers here
    assert min(by_node.values()) == s["honest_accuracy_min"]
    assert sum(by_node.values()) / 20 == pytest.approx(s["honest_accuracy_mean"])
    # every node's chain names other authors' blocks as parents
    for store, head in zip(r.stores, r.heads, strict=True):
        blk = store.get(head)
        assert blk is not None and blk.height == 19
        assert len(blk.parents) >= 1
        assert all(store.get(p) is None or store.get(p).author != blk.author for p in blk.parents)


def test_churn_and_partitions_lose_no_block() -> None:
    sc = dict(
        nodes=8,
        rounds=6,
        churn=(Churn(node=2, leave_s=3.0, rejoin_s=12.0),),
        partitions=(Partition(group=(0, 1, 2), start_s=1.0, heal_s=15.0),),
        topology="complete",
    )
    sim = Simulation(Scenario(**{**SMALL, **sc}))  # type: ignore[arg-type]
    r = sim.run()
    assert r.summary["blocks"] == 8 * 6  # every node, including the churned one, ran all rounds
    for i, store in enumerate(r.stores):
        own = list(store.iter_chain(sim.identities[i].public_key))
        assert [b.height for b in own] == list(range(6))
        validate_chain(own, network=sim.network, sig_check="batch")
    own_chains_valid(r, sim.network)


def test_malicious_nodes_are_rejected_by_a_robust_rule() -> None:
    sim = Simulation(
        Scenario(
            **{
                **SMALL,
                "nodes": 10,
                "rounds": 5,
                "malicious": 0.2,  # type: ignore[arg-type]
                "attack": "gaussian",
                "rule": "multi_krum",
                "topology": "complete",
            }
        )
    )
    r = sim.run()
    bad = {sim.identities[i].public_key for i in sim.malicious}
    assert len(bad) == 2
    rejected = accepted = 0
    for i, store in enumerate(r.stores):
        if i in sim.malicious:
            continue
        for b in store.iter_chain(sim.identities[i].public_key):
            for v in b.verdicts:
                author = store.get(v.block).author  # type: ignore[union-attr]
                if author in bad:
                    rejected += not v.accepted
                    accepted += v.accepted
    assert rejected > 0 and accepted == 0


def test_sim_cli_writes_outputs_and_its_homes_verify(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = CliRunner().invoke(
        main,
        [
            "sim",
            "run",
            "--nodes",
            "4",
            "--rounds",
            "2",
            "--model",
            "logreg",
            "--workers",
            "1",
            "--store",
            "lmdb",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "nodes",
        "rounds",
        "malicious",
        "rule",
        "attack",
        "seed",
        "honest_accuracy_mean",
        "honest_accuracy_min",
        "wall_seconds",
        "setup_seconds",
        "train_seconds",
        "chain_seconds",
        "blocks",
        "bytes_headers",
        "bytes_blobs",
    ):
        assert key in summary
    assert summary["nodes"] == 4 and summary["blocks"] == 8
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 2
    row = json.loads(lines[0])
    assert {"node", "round", "accuracy", "accepted", "rejected"} <= set(row)
    assert (out / "accuracy.png").stat().st_size > 1000
    home = out / "nodes" / "node-0001"
    res = CliRunner().invoke(main, ["chain", "verify", "--home", str(home)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["chain", "show", "--home", str(home), "--json"])
    rows = json.loads(res.output)
    assert len([r for r in rows if r["height"] == 1]) >= 1


@pytest.mark.parametrize("kind", ["complete", "ring", "k_regular", "erdos_renyi", "small_world"])
def test_topologies_are_symmetric_and_seeded(kind: str) -> None:
    adj = make_topology(kind, 30, 4, seed=1)
    assert adj == make_topology(kind, 30, 4, seed=1)
    for i, ns in enumerate(adj):
        assert i not in ns
        for j in ns:
            assert i in adj[j]
    if kind == "k_regular":
        assert all(len(ns) == 4 for ns in adj)
    if kind == "ring":
        assert all(len(ns) == 2 for ns in adj)


def test_edge_list_topology(tmp_path: Path) -> None:
    f = tmp_path / "edges.txt"
    f.write_text("0 1\n1 2  # comment\n\n2,3\n")
    assert make_topology(f"file:{f}", 4, 0, 0) == [[1], [0, 2], [1, 3], [2]]


SCENARIOS = sorted((Path(__file__).parents[2] / "simulator" / "scenarios").glob("*.toml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_shipped_scenarios_load(path: Path) -> None:
    from simulator.scenario import load_scenario

    sc = load_scenario(path)
    assert sc.name == path.stem and sc.nodes >= 10 and sc.rounds >= 10


def test_shipped_churn_scenario_runs_small(tmp_path: Path) -> None:
    from simulator.scenario import load_scenario

    root = Path(__file__).parents[2] / "simulator" / "scenarios"
    sc = load_scenario(root / "churn-partition.toml").with_overrides(
        rounds=4, model="logreg", workers=1
    )
    r = Simulation(sc).run()
    assert r.summary["blocks"] == sc.nodes * 4


def test_bad_scenario_file_names_the_key(tmp_path: Path) -> None:
    from dfl.errors import ConfigError
    from simulator.scenario import load_scenario

    f = tmp_path / "bad.toml"
    f.write_text("[scenario]\nnodez = 3\n")
    with pytest.raises(ConfigError, match="nodez"):
        load_scenario(f)
    f.write_text("[scenario]\nnodes = 'many'\n")
    with pytest.raises(ConfigError, match="nodes"):
        load_scenario(f)


@pytest.mark.parametrize("arrived_first", [True, False])
def test_discarded_speculation_is_not_counted_as_training_cpu(arrived_first: bool) -> None:
    """A speculative training job that is thrown away moves its CPU from ``train`` to
    ``SPECULATION_WASTED``, whether its result arrived before the discard or after."""
    import numpy as np

    from dfl.node.core import Aggregate
    from simulator.compute import SPECULATION_WASTED, ComputePool, World

    sc = Scenario(**{**SMALL, "workers": 2})  # type: ignore[arg-type]
    pool = ComputePool(World(sc, frozenset()), 2)
    try:
        ((own, _),) = pool.run([(0, ("init", 0))])
        own = np.array(own)
        job = Aggregate(
            round=0, rule="fedavg", own=own, own_samples=10, candidates=(own + 1,),
            weights=(10,), authors=(b"a" * 32,), num_byzantine=0, seed=1, state={},
        )  # fmt: skip
        ticket = pool.submit_aggregate(0, job, evaluate=False, speculate=(1, 7))
        assert ticket.spec is not None
        pool.result(ticket.agg)
        if arrived_first:
            while not pool._tickets[ticket.spec].done:
                pool._receive(0)
        pool.discard(ticket.spec)
        while ticket.spec in pool._tickets:  # a discarded job's ticket goes when it arrives
            pool._receive(0)
        cpu = pool.intervals.cpu
        assert cpu[SPECULATION_WASTED] > 0
        assert cpu.get("train", 0.0) == pytest.approx(0.0, abs=1e-9)
        assert cpu["agg"] > 0
    finally:
        pool.close()
