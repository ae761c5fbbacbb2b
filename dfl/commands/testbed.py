"""`dfl testbed`: N real daemons as separate processes on 127.0.0.1 (the DFL paper's testbed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

__all__ = ["TestbedNode", "start_testbed", "testbed"]


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(int(s.getsockname()[1]))
    for s in socks:
        s.close()
    return ports


@dataclass
class TestbedNode:
    index: int
    home: Path
    peer_id: str
    addr: str
    malicious: bool
    proc: subprocess.Popen[bytes] | None = None


def prepare_testbed(
    out: Path,
    nodes: int,
    *,
    malicious: int = 0,
    network: str = "testbed",
    extra_config: dict[str, dict[str, object]] | None = None,
) -> list[TestbedNode]:
    """Create N homes with keys and configs that bootstrap to each other on loopback."""
    from dfl.config import Config
    from dfl.crypto import Identity
    from dfl.node.home import Home

    ports = free_ports(nodes)
    idents = [Identity.generate() for _ in range(nodes)]
    addrs = [
        f"/ip4/127.0.0.1/tcp/{p}/p2p/{ident.peer_id}"
        for p, ident in zip(ports, idents, strict=True)
    ]
    overrides = dict(extra_config or {})
    node_over = dict(overrides.pop("node", {}))
    specs: list[TestbedNode] = []
    for i in range(nodes):
        home = Home(out / f"node-{i}")
        cfg = (
            Config()
            .with_overrides(
                node={
                    "listen": (f"/ip4/127.0.0.1/tcp/{ports[i]}",),
                    "metrics_port": -1,
                    "bootstrap": tuple(a for j, a in enumerate(addrs) if j != i),
                    **node_over,
                },
                task={"network": network, "num_nodes": nodes, "node_index": i},
            )
            .with_overrides(**overrides)
        )
        home.init(cfg, force=True, identity=idents[i])
        specs.append(TestbedNode(i, home.path, idents[i].peer_id, addrs[i], i >= nodes - malicious))
    return specs


def start_testbed(
    specs: list[TestbedNode],
    *,
    rounds: int | None,
    attack: str | None,
    extra_args: tuple[str, ...] = (),
    log_dir: Path | None = None,
) -> None:
    """Start one `dfl node run` process per home (logs in HOME/node.log)."""
    for s in specs:
        cmd = [sys.executable, "-m", "dfl", "node", "run", "--home", str(s.home), *extra_args]
        if rounds is not None:
            cmd += ["--rounds", str(rounds)]
        if s.malicious and attack:
            cmd += ["--attack", attack]
        logf = (log_dir or s.home) / "node.log"
        fh = logf.open("wb")
        env = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            OMP_NUM_THREADS="1",
            XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        )
        s.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        fh.close()


def stop_testbed(specs: list[TestbedNode], sig: int = signal.SIGTERM) -> None:
    for s in specs:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.send_signal(sig)
    for s in specs:
        if s.proc is not None:
            try:
                s.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()


def wait_testbed(specs: list[TestbedNode], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(s.proc is not None and s.proc.poll() is not None for s in specs):
            return True
        time.sleep(0.5)
    return False


def accuracy_table(specs: list[TestbedNode]) -> dict[int, dict[int, float]]:
    """Per node, per round: the validation accuracy each node signed into its own blocks."""
    from dfl.node.home import Home
    from dfl.node.store import LmdbStore

    table: dict[int, dict[int, float]] = {}
    for s in specs:
        home = Home(s.home)
        ident = home.identity()
        with LmdbStore(home.store_path(), own_author=ident.public_key) as store:
            for b in store.iter_chain(ident.public_key):
                acc = dict(b.metrics).get("val_accuracy")
                if acc is not None:
                    table.setdefault(s.index, {})[b.round] = float(acc)
    return table


@click.command()
@click.option("--nodes", type=int, default=4, show_default=True, help="Daemons to start.")
@click.option(
    "--malicious",
    type=int,
    default=0,
    show_default=True,
    help="How many of them are malicious (the last ones).",
)
@click.option(
    "--attack", default="sign_flip", show_default=True, help="Attack of the malicious daemons."
)
@click.option("--rounds", type=int, default=5, show_default=True, help="Rounds per daemon.")
@click.option("--dataset", default="digits", show_default=True)
@click.option("--model", default="mlp", show_default=True)
@click.option("--partition", default="iid", show_default=True)
@click.option("--rule", default="default", show_default=True)
@click.option("--round-timeout", type=float, default=20.0, show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory for the homes (default: runs/testbed-<time>).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=900.0,
    show_default=True,
    help="Give up after this many seconds.",
)
def testbed(
    nodes: int,
    malicious: int,
    attack: str,
    rounds: int,
    dataset: str,
    model: str,
    partition: str,
    rule: str,
    round_timeout: float,
    out_dir: Path | None,
    timeout_s: float,
) -> None:
    """Start N real daemons on 127.0.0.1 and print each node's accuracy per round."""
    if not 1 <= nodes <= 64 or not 0 <= malicious < nodes:
        raise click.UsageError("need 1 <= nodes <= 64 and 0 <= malicious < nodes")
    out = out_dir or Path("runs") / f"testbed-{time.strftime('%Y%m%d-%H%M%S')}"
    specs = prepare_testbed(
        out,
        nodes,
        malicious=malicious,
        extra_config={
            "task": {"dataset": dataset, "model": model, "partition": partition},
            "robust": {"rule": rule},
            "round": {"timeout_s": round_timeout, "max_updates": nodes - 1},
        },
    )
    click.echo(f"starting {nodes} daemons in {out} ({malicious} malicious, attack {attack})")
    start_testbed(specs, rounds=rounds, attack=attack if malicious else None)
    try:
        ok = wait_testbed(specs, timeout_s)
    except KeyboardInterrupt:
        ok = False
    finally:
        stop_testbed(specs)
    codes = [s.proc.returncode if s.proc else None for s in specs]
    table = accuracy_table(specs)
    header = "round " + " ".join(
        f"{'node' + str(s.index) + ('*' if s.malicious else ''):>9}" for s in specs
    )
    click.echo(header)
    all_rounds = sorted({r for t in table.values() for r in t})
    for r in all_rounds:
        cells = " ".join(f"{table.get(s.index, {}).get(r, float('nan')):9.4f}" for s in specs)
        click.echo(f"{r:5d} {cells}")
    click.echo(
        "(* = malicious; accuracy on each node's own validation data, as signed in its blocks)"
    )
    if not ok or any(c != 0 for c in codes):
        click.echo(
            f"some daemons failed or timed out (exit codes {codes}); logs in {out}/*/node.log",
            err=True,
        )
        sys.exit(1)
