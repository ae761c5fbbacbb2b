"""Overhead of being a dfl node: CPU and memory spent outside training on a real testbed.

Starts N real daemons on 127.0.0.1 (separate processes, real libp2p, LMDB, signatures), runs R
rounds of LeNet on MNIST, then reads each node's own accounting from its ``status.json``:

* ``process_s``: the daemon's CPU seconds since its first round began (startup, imports and the
  first JIT compile excluded);
* ``event_loop_s``: CPU of the trio thread: gossip, blob serving and fetching, Noise/Yamux,
  signatures, chain rules, the LMDB store and the node core;
* ``aggregate_s``: CPU of the robust-rule jobs;
* training = the rest (the training thread and XLA's compute threads).

The share outside training is ``(event_loop_s + aggregate_s) / process_s``, over the whole run
and in the steady state: from the first status snapshot after the node committed its first
block (connections, handshakes, gossip mesh and first-round set-up behind it) to the end. The
benchmark polls each node's ``status.json`` (rewritten every 2 s) for that. Memory: RSS after
start-up before the first round (idle daemon, model compiled and data loaded) and peak RSS.

    python -m benchmarks.overhead [--nodes 4] [--rounds 5] [--dataset mnist] [--model lenet]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._results import cpu_model, update_section
from dfl.commands.testbed import prepare_testbed, start_testbed, stop_testbed

CPU_KEYS = ("process_s", "event_loop_s", "aggregate_s")


def _snapshot(home: Path) -> dict[str, float] | None:
    """(height, CPU counters) from a node's status.json, or None while it is being replaced."""
    try:
        st = json.loads((home / "status.json").read_text())
        return {"height": float(st["height"]), **{k: float(st["cpu"][k]) for k in CPU_KEYS}}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def steady_share(snaps: list[dict[str, float]], final: dict[str, float]) -> float | None:
    """Share outside training between the first snapshot at height >= 0 and ``final``."""
    first = next((x for x in snaps if x["height"] >= 0), None)
    if first is None:
        return None
    proc = final["process_s"] - first["process_s"]
    outside = (final["event_loop_s"] - first["event_loop_s"]) + (
        final["aggregate_s"] - first["aggregate_s"]
    )
    return outside / proc if proc > 0 else None


def run(nodes: int, rounds: int, dataset: str, model: str, rule: str) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory(prefix="dfl-overhead-") as tmp:
        specs = prepare_testbed(
            Path(tmp),
            nodes,
            extra_config={
                "task": {
                    "dataset": dataset,
                    "model": model,
                    "partition": "dirichlet:0.5",
                    "lr": 0.05,
                },
                "robust": {"rule": rule},
                "round": {"timeout_s": 120.0, "max_updates": nodes - 1},
            },
        )
        start_testbed(specs, rounds=rounds, attack=None, extra_args=("--linger", "3"))
        snaps: dict[int, list[dict[str, float]]] = {s.index: [] for s in specs}
        deadline = time.monotonic() + 3600
        try:
            while not all(s.proc is not None and s.proc.poll() is not None for s in specs):
                if time.monotonic() > deadline:
                    raise SystemExit("testbed did not finish within an hour")
                for s in specs:
                    snap = _snapshot(s.home)
                    if snap is not None:
                        snaps[s.index].append(snap)
                time.sleep(0.5)
        finally:
            stop_testbed(specs)
        out = []
        for s in specs:
            st = json.loads((s.home / "status.json").read_text())
            if s.proc is None or s.proc.returncode != 0:
                tail = (s.home / "node.log").read_text()[-2000:]
                raise SystemExit(f"node {s.index} failed:\n{tail}")
            final = {k: float(st["cpu"][k]) for k in CPU_KEYS}
            out.append(
                {
                    "node": s.index,
                    **st["cpu"],
                    "steady_share": steady_share(snaps[s.index], final),
                    "idle_rss": st["idle_rss_bytes"],
                    "peak_rss": st["peak_rss_bytes"],
                    "height": st["height"],
                    "accuracy": st["last_accuracy"],
                }
            )
        return out


def _pct(v: object) -> str:
    return "" if v is None else f"{100 * float(v):.2f} %"  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--rule", default="default")
    ap.add_argument("--no-record", action="store_true", help="Do not update RESULTS.md.")
    args = ap.parse_args(argv)
    t0 = time.time()
    rows = run(args.nodes, args.rounds, args.dataset, args.model, args.rule)
    wall = time.time() - t0
    lines = [
        "| node | process CPU s | event loop s | aggregation s | training s | outside training "
        "| steady state | idle RSS MiB | peak RSS MiB | val acc |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['node']} | {r['process_s']:.1f} | {r['event_loop_s']:.2f} | "
            f"{r['aggregate_s']:.2f} | {r['train_s']:.1f} | "
            f"{100 * float(r['outside_training_share']):.2f} % | "  # type: ignore[arg-type]
            f"{_pct(r['steady_share'])} | "
            f"{int(r['idle_rss']) / 2**20:.0f} | {int(r['peak_rss']) / 2**20:.0f} | "  # type: ignore[call-overload]
            f"{float(r['accuracy'] or 0):.4f} |"  # type: ignore[arg-type]
        )
    shares = [float(r["outside_training_share"]) for r in rows]  # type: ignore[arg-type]
    steady = [float(r["steady_share"]) for r in rows if r["steady_share"] is not None]  # type: ignore[arg-type]
    summary = (
        f"Median share of CPU outside training: **{100 * statistics.median(shares):.2f} %** "
        f"(max {100 * max(shares):.2f} %) over the whole run"
        + (
            f", **{100 * statistics.median(steady):.2f} %** (max {100 * max(steady):.2f} %) "
            "in the steady state (after each node's first block)"
            if steady
            else ""
        )
        + f"; target < 1 %. Wall time {wall:.0f} s."
    )
    table = "\n".join(lines)
    print(table)
    print(summary)
    if not args.no_record:
        cmd = "python -m benchmarks.overhead " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        md = (
            f"Command: `{cmd.strip()}`  \n"
            f"Date: {time.strftime('%Y-%m-%d')}; "
            f"machine: {os.cpu_count()} cores, {cpu_model()}  \n"
            f"{args.nodes} daemons on 127.0.0.1, {args.model} on {args.dataset}, "
            f"dirichlet:0.5, rule {args.rule}, {args.rounds} rounds.\n\n{table}\n\n{summary}\n"
        )
        update_section("Overhead (daemon testbed)", md)


if __name__ == "__main__":
    main()
