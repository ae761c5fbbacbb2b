"""`dfl sim run`: the many-node simulator (same node core as the daemon)."""

from __future__ import annotations

import time
from pathlib import Path

import click

__all__ = ["sim"]


@click.group()
def sim() -> None:
    """Simulate many dfl nodes on this machine (virtual clock, in-memory network)."""


@sim.command("run")
@click.argument("scenario_file", required=False, type=click.Path(path_type=Path))
@click.option("--nodes", type=int, help="Number of nodes.")
@click.option("--rounds", type=int, help="Rounds each node runs.")
@click.option("--topology", help="complete, ring, k_regular, erdos_renyi, small_world, file:PATH.")
@click.option("--degree", type=int, help="Node degree (mean degree for erdos_renyi).")
@click.option("--dataset", help="mnist, digits or synthetic.")
@click.option("--model", help="logreg, mlp or lenet.")
@click.option("--partition", help="iid, dirichlet:ALPHA or shards:K.")
@click.option("--rule", help="Robust rule (see `dfl.learning.robust.RULES`), or 'default'.")
@click.option("--attack", help="Poisoning attack of the malicious nodes (or 'none').")
@click.option("--malicious", type=float, help="Share (< 1) or count (>= 1) of malicious nodes.")
@click.option("--seed", type=int, help="Seed of everything (identities, data, topology, links).")
@click.option("--workers", type=int, help="Worker processes (0 = one per core, 1 = in-process).")
@click.option("--store", type=click.Choice(["memory", "lmdb"]), help="Where blocks are kept.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Output directory (default: runs/sim-<time>).",
)
def run(scenario_file: Path | None, out_dir: Path | None, **overrides: object) -> None:
    """Run a simulation and write metrics.jsonl, summary.json and accuracy.png."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from simulator.engine import Simulation, write_outputs
    from simulator.scenario import Scenario, load_scenario

    scenario = load_scenario(scenario_file) if scenario_file else Scenario()
    scenario = scenario.with_overrides(**overrides)
    out = out_dir or Path("runs") / f"sim-{time.strftime('%Y%m%d-%H%M%S')}"
    click.echo(
        f"simulating {scenario.nodes} nodes x {scenario.rounds} rounds: {scenario.dataset}/"
        f"{scenario.model}, {scenario.partition}, topology {scenario.topology}"
        f"(k={scenario.degree}),"
        f" rule {scenario.rule}, attack {scenario.attack} on {scenario.num_malicious} nodes"
    )
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
        TimeElapsedColumn(),
    ) as progress:
        task = progress.add_task("setting up", total=scenario.rounds)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, description="running")

        simulation = Simulation(scenario, out_dir=out, progress=report)
        result = simulation.run()
        progress.update(task, completed=scenario.rounds, description="done")
    write_outputs(result, out, scenario)
    result.close()
    s = result.summary
    click.echo(
        f"honest accuracy: mean {s['honest_accuracy_mean']:.4f}, min {s['honest_accuracy_min']:.4f}"
        + (f", backdoor ASR {s['backdoor_asr']:.3f}" if s.get("backdoor_asr") is not None else "")
    )
    click.echo(
        f"wall {s['wall_seconds']:.1f}s: setup {s['setup_seconds']:.1f}s, rounds "
        f"{s['rounds_seconds']:.1f}s ({s['seconds_per_round']:.2f}s/round; training "
        f"{s['train_seconds']:.1f}s, outside training {100 * s['outside_training_share']:.1f}%), "
        f"{s['blocks']} blocks"
    )
    click.echo(f"wrote {out}/metrics.jsonl, summary.json, accuracy.png")
