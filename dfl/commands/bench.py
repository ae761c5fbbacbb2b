"""`dfl bench ...`: benchmarks run through the simulator.

Each benchmark is one command of the :func:`bench` group; adding one is one decorated function
(``@bench.command("name")``) that imports its ``benchmarks.<name>`` module lazily.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click

__all__ = ["bench"]


@click.group()
def bench() -> None:
    """Benchmarks: poisoning matrix (attacks x robust rules x malicious share x partition)."""


def _estimate_line(estimate: tuple[float, int], workers: int, jobs: int, todo: int) -> str:
    """``estimate_seconds``' answer as one line for the console."""
    seconds, unknown = estimate
    if unknown == todo:
        return "no time estimate: no cell like these has finished in the CSV yet"
    h, m = divmod(round(seconds / 60), 60)
    line = (
        f"estimated {h} h {m:02d} min at the median time of finished cells like these (each "
        f"measured with its own --workers and --jobs; this run: --workers {workers} --jobs "
        f"{jobs})"
    )
    if unknown:
        line += f", plus {unknown} cells with none like them finished"
    return line


def _csv_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


@bench.command("poisoning")
@click.option(
    "--quick",
    is_flag=True,
    help="Small subset (digits, 6 rules, 8 attacks, shares 0/0.3; < 10 min on 2 cores).",
)
@click.option("--paper", is_flag=True, help="Only the DFL paper's own setting (10 nodes, 1 bad).")
@click.option(
    "--subset",
    type=click.Choice(["all", "mlp", "lenet", "goal", "paper", "quick"]),
    default=None,
    help="Which cells: all (= mlp + lenet + paper, hours), or one part; default all.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Output directory (results.csv, curves.jsonl, plots/); default runs/bench-poisoning.",
)
@click.option("--resume", is_flag=True, help="Skip the cells already in DIR/results.csv.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
@click.option("--rules", default=None, help="Comma-separated rules to keep (default: all).")
@click.option("--attacks", default=None, help="Comma-separated attacks to keep (default: all).")
@click.option(
    "--partitions", default=None, help="Comma-separated partitions to keep (default: all)."
)
@click.option(
    "--shares",
    default=None,
    help="Comma-separated malicious shares (or counts) to keep, e.g. 0,0.3 (default: all).",
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Worker processes per simulation (1 = in-process).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Cells run at once, each in its own process (0 = one per core; with --workers 1, "
    "one per core is the fastest way through many cells).",
)
@click.option(
    "--max-minutes",
    type=float,
    default=None,
    help="Start no new cell after this many minutes (finished cells stay; --resume continues).",
)
@click.option("--dry-run", is_flag=True, help="List the cells and exit.")
@click.option(
    "--results-md/--no-results-md",
    default=None,
    help="Update the Poisoning section of benchmarks/RESULTS.md (default: on, off with --quick).",
)
def poisoning(
    quick: bool,
    paper: bool,
    subset: str | None,
    out_dir: Path | None,
    resume: bool,
    seeds: str,
    rules: str | None,
    attacks: str | None,
    partitions: str | None,
    shares: str | None,
    workers: int,
    jobs: int,
    max_minutes: float | None,
    dry_run: bool,
    results_md: bool | None,
) -> None:
    """Run the poisoning matrix through the simulator (resumable cell by cell)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from benchmarks import poisoning as P
    from dfl.errors import UsageError

    if sum((quick, paper, subset is not None)) > 1:
        raise UsageError("choose one of --quick, --paper and --subset")
    which = "quick" if quick else "paper" if paper else (subset or "all")
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    rule_list, attack_list = _csv_list(rules), _csv_list(attacks)
    _check_names(rule_list, attack_list)
    partition_list = _csv_list(partitions)
    try:
        share_list = [float(s) for s in _csv_list(shares) or ()] or None
    except ValueError:
        raise UsageError(f"--shares must be comma-separated numbers, got {shares!r}") from None
    cells = P.build_cells(
        which,
        seeds=seed_list,
        rules=rule_list,
        attacks=attack_list,
        partitions=partition_list,
        shares=share_list,
    )
    if not cells:
        raise UsageError("no cell matches these filters (see --dry-run without them)")
    out = out_dir or Path("runs") / f"bench-poisoning-{which}"
    if jobs == 0:
        from simulator.engine import available_cpus

        jobs = available_cpus()
    console = Console()
    finished = P.read_rows(out / "results.csv") if resume else []
    done = {r["key"] for r in finished}
    todo = [c for c in cells if c.key not in done]
    if quick:
        console.print(
            "[bold]quick mode[/]: digits (1,437 training images) + MLP, 20 nodes k-regular(4), "
            f"{P.HPARAMS[('digits', 'mlp')].rounds} rounds, rules {', '.join(P.QUICK_RULES)}, "
            f"attacks {', '.join(P.QUICK_ATTACKS)}, shares 0 / 0.3, dirichlet:0.5 -- a smoke "
            "test of the matrix (72 training images per node), not the MNIST result."
        )
    console.print(
        f"{len(cells)} cells ({which}), {len(cells) - len(todo)} already in "
        f"{out / 'results.csv'}, {len(todo)} to run"
    )
    if todo:
        console.print(_estimate_line(P.estimate_seconds(todo, finished), workers, jobs, len(todo)))
    if dry_run:
        for c in todo:
            click.echo(c.key)
        return
    deadline = time.time() + 60 * max_minutes if max_minutes else None
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("cells", total=len(todo))

        def on_start(cell: P.Cell, k: int, n: int) -> None:
            progress.update(
                task,
                description=(
                    f"{cell.dataset}/{cell.model} {cell.partition} m={cell.malicious:g} "
                    f"{cell.attack} x {cell.rule}"
                ),
            )

        def on_done(cell: P.Cell, row: dict[str, object]) -> None:
            progress.advance(task)
            asr = f" asr {row['backdoor_asr']}" if row.get("backdoor_asr") else ""
            progress.console.print(
                f"{cell.attack:>10} x {cell.rule:<15} m={cell.malicious:<4g} {cell.partition:<14}"
                f" acc {row['honest_accuracy_mean']} (min {row['honest_accuracy_min']}){asr}"
                f" {row['wall_seconds']}s"
            )

        P.run_cells(
            cells,
            out,
            resume=resume,
            workers=workers,
            jobs=jobs,
            deadline=deadline,
            on_start=on_start,
            on_done=on_done,
        )
    rows = P.read_rows(out / "results.csv")
    plots = P.plot_all(out)
    md = P.render_markdown(rows)
    (out / "summary.md").write_text(md, encoding="utf-8")
    console.print(md, markup=False, highlight=False)
    left = [c for c in cells if c.key not in {r["key"] for r in rows}]
    if left:
        console.print(f"{len(left)} cells not run yet; rerun with --resume to continue")
    if results_md if results_md is not None else not quick:
        command = "dfl bench poisoning " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        path = P.write_results_section(rows, command=command.strip())
        console.print(f"updated {path}")
    console.print(f"wrote {out}/results.csv, curves.jsonl, summary.md, {len(plots)} plots")


def _check_names(rules: list[str] | None, attacks: list[str] | None) -> None:
    from dfl.errors import UsageError
    from dfl.learning.attacks import ATTACKS
    from dfl.learning.robust import RULES

    for r in rules or ():
        if r != "default" and r not in RULES:
            raise UsageError(f"unknown rule {r!r} (known: default, {', '.join(sorted(RULES))})")
    for a in attacks or ():
        if a not in ATTACKS:
            raise UsageError(f"unknown attack {a!r} (known: {', '.join(sorted(ATTACKS))})")


@bench.command("overhead")
@click.option("--nodes", type=int, default=4, show_default=True, help="Daemons on 127.0.0.1.")
@click.option("--rounds", type=int, default=5, show_default=True)
@click.option("--dataset", default="mnist", show_default=True)
@click.option("--model", default="lenet", show_default=True)
@click.option("--rule", default="default", show_default=True)
@click.option("--no-record", is_flag=True, help="Do not update benchmarks/RESULTS.md.")
def overhead(nodes: int, rounds: int, dataset: str, model: str, rule: str, no_record: bool) -> None:
    """CPU and memory a daemon spends outside training, on a real N-daemon testbed."""
    from benchmarks.overhead import main as run_overhead

    args = [
        "--nodes",
        str(nodes),
        "--rounds",
        str(rounds),
        "--dataset",
        dataset,
        "--model",
        model,
        "--rule",
        rule,
    ]
    run_overhead([*args, "--no-record"] if no_record else args)
