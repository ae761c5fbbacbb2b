"""`dfl node run` and `dfl node status`."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

__all__ = ["node"]


@click.group()
def node() -> None:
    """Run a dfl node daemon on this machine, or ask a running one how it is doing."""


@node.command("run")
@click.option(
    "--home",
    "home_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Node home (from `dfl init`).",
)
@click.option("--listen", multiple=True, help="Listen multiaddr, e.g. /ip4/0.0.0.0/tcp/4001.")
@click.option("--bootstrap", multiple=True, help="Bootstrap multiaddr ending in /p2p/<peer id>.")
@click.option("--rounds", type=int, default=None, help="Run N rounds, then exit 0.")
@click.option("--dataset", default=None, help="mnist, digits or synthetic.")
@click.option("--model", default=None, help="logreg, mlp or lenet.")
@click.option("--node-index", type=int, default=None, help="This node's shard of the partition.")
@click.option("--num-nodes", type=int, default=None, help="Number of shards of the partition.")
@click.option("--partition", default=None, help="iid, dirichlet:ALPHA or shards:K.")
@click.option("--rule", default=None, help="Robust rule, or 'default'.")
@click.option("--attack", default=None, help="Make this node deliberately malicious (testbeds).")
@click.option("--round-timeout", type=float, default=None, help="Seconds to wait for peers.")
@click.option("--max-updates", type=int, default=None, help="Peer updates to wait for.")
@click.option("--network", default=None, help="Network (task) name.")
@click.option("--seed", type=int, default=None, help="Task seed (partition and initial model).")
@click.option("--metrics-port", type=int, default=None, help="Prometheus port (-1 = off).")
@click.option(
    "--linger",
    type=float,
    default=5.0,
    show_default=True,
    help="After the last round, keep serving blobs this many seconds.",
)
@click.option("--log-level", default=None, help="debug, info, warning or error.")
def run(
    home_dir: Path,
    listen: tuple[str, ...],
    bootstrap: tuple[str, ...],
    rounds: int | None,
    dataset: str | None,
    model: str | None,
    node_index: int | None,
    num_nodes: int | None,
    partition: str | None,
    rule: str | None,
    attack: str | None,
    round_timeout: float | None,
    max_updates: int | None,
    network: str | None,
    seed: int | None,
    metrics_port: int | None,
    linger: float,
    log_level: str | None,
) -> None:
    """Train on this node's shard, publish signed blocks, pull and filter peer models."""
    from dfl.node.daemon import DaemonOptions, run_daemon
    from dfl.node.home import Home

    home = Home(home_dir)
    cfg = home.config().with_overrides(
        node={
            "listen": listen or None,
            "bootstrap": bootstrap or None,
            "metrics_port": metrics_port,
            "log_level": log_level,
        },
        task={
            "dataset": dataset,
            "model": model,
            "node_index": node_index,
            "num_nodes": num_nodes,
            "partition": partition,
            "network": network,
            "seed": seed,
        },
        round={"timeout_s": round_timeout, "max_updates": max_updates},
        robust={"rule": rule},
    )
    logging.basicConfig(
        level=getattr(logging, cfg.node.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # py-libp2p logs multi-line warnings for every failed dial or stream; keep errors only
    for noisy in ("libp2p", "multiaddr", "jax", "absl"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    daemon = run_daemon(home, cfg, DaemonOptions(rounds=rounds, attack=attack, linger_s=linger))
    click.echo(
        f"stopped at round {daemon.core.round}, height {daemon.core.height}; "
        f"last accuracy {daemon.status.last_accuracy}"
    )


@node.command("status")
@click.option(
    "--home", "home_dir", required=True, type=click.Path(path_type=Path), help="Node home."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(home_dir: Path, as_json: bool) -> None:
    """Peer id, listen addresses, connected peers, round, height, accuracy, verdict counts."""
    path = home_dir / "status.json"
    try:
        s = json.loads(path.read_text())
    except FileNotFoundError:
        click.echo(f"no status in {home_dir} (has `dfl node run` been started there?)", err=True)
        sys.exit(1)
    except (OSError, ValueError) as e:
        click.echo(f"{path}: unreadable status: {e}", err=True)
        sys.exit(1)
    pid = int(s.get("pid", 0))
    running = False
    if pid > 0:
        try:
            os.kill(pid, 0)
            running = s.get("phase") not in ("done", "stopped")
        except OSError:
            running = False
    s["running"] = running
    if as_json:
        click.echo(json.dumps(s, indent=1, sort_keys=True))
        return
    click.echo(f"peer id:   {s['peer_id']}  ({'running' if running else 'not running'})")
    for a in s.get("listen", []):
        click.echo(f"listen:    {a}")
    click.echo(f"peers:     {len(s.get('connected', []))} connected")
    click.echo(f"round:     {s['round']}  height {s['height']}  phase {s['phase']}")
    acc = s.get("last_accuracy")
    click.echo(f"accuracy:  {'-' if acc is None else f'{acc:.4f}'} (own validation data)")
    click.echo(
        f"verdicts:  last round {s['last_accepted']} accepted / {s['last_rejected']} rejected; "
        f"total {s['accepted_total']} / {s['rejected_total']}"
    )
    if s.get("metrics_port"):
        click.echo(f"metrics:   http://127.0.0.1:{s['metrics_port']}/metrics")
