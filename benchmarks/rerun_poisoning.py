"""Run recorded poisoning cells again and compare them with their recorded rows.

A check that a committed result still comes out of the committed code, and the way to refresh
rows recorded by older code::

    python -m benchmarks.rerun_poisoning --rules balance_trimmed --recorded-workers 1 \\
        --out runs/rerun --workers 2 [--jobs N] [--finished-before UTC] [--max-minutes M] \\
        [--dry-run]

Selects rows of ``--csv`` (default: the committed ``benchmarks/results/poisoning.csv``) by rule,
recorded worker count, matrix, model, seed or finishing time, rebuilds each cell from its row
(:meth:`benchmarks.poisoning.Cell.from_row`), runs the ones not yet in ``OUT/results.csv``
(so it resumes), and prints recorded against re-run honest accuracy, cell by cell, and
whether the numbers came out the same to the last digit (also written to ``OUT/compare.md``).
``python -m benchmarks.merge_poisoning OUT`` then replaces the recorded rows with the new ones.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import poisoning as P
from benchmarks.merge_poisoning import RESULTS_DIR


def select(
    rows: Sequence[dict[str, str]],
    *,
    rules: Sequence[str] = (),
    recorded_workers: Sequence[str] = (),
    matrices: Sequence[str] = (),
    models: Sequence[str] = (),
    seeds: Sequence[str] = (),
    finished_before: str = "",
) -> list[dict[str, str]]:
    """The rows matching every non-empty filter. ``default`` alias rows are left out: their
    rule's own row is the same run. ``finished_before``: a UTC time as the CSV writes it
    (``2026-11-23T04:56:00Z``); only rows finished earlier, e.g. every row a since-fixed bug
    may have touched."""

    def keep(r: dict[str, str]) -> bool:
        checks = (
            (rules, r["rule"]),
            (recorded_workers, r["workers"]),
            (matrices, r["matrix"]),
            (models, r["model"]),
            (seeds, r["seed"]),
        )
        early = not finished_before or r["finished_utc"] < finished_before
        return (
            r["rule"] != "default"
            and early
            and all(not want or got in want for want, got in checks)
        )

    return [r for r in rows if keep(r)]


def compare(recorded: Sequence[dict[str, str]], rerun: dict[str, dict[str, str]]) -> str:
    """A markdown table: recorded against re-run honest mean (min), for the re-run cells."""
    lines = [
        "| cell | recorded workers | recorded mean (min) | re-run workers | re-run mean (min) "
        "| same numbers |",
        "|---|---:|---:|---:|---:|---|",
    ]
    fields = ("honest_accuracy_mean", "honest_accuracy_min", "backdoor_asr")
    same = 0
    done = 0
    for r in recorded:
        new = rerun.get(r["key"])
        if new is None:
            continue
        done += 1
        equal = all(r[f] == new[f] for f in fields)
        same += equal
        lines.append(
            f"| {r['key']} | {r['workers']} | {_pct(r)} | {new['workers']} "
            f"| {_pct(new)} | {'yes' if equal else 'no'} |"
        )
    lines.append("")
    lines.append(f"{done} of {len(recorded)} cells re-run; {same} with the same numbers.")
    return "\n".join(lines)


def _pct(r: dict[str, str]) -> str:
    mean, low = float(r["honest_accuracy_mean"]), float(r["honest_accuracy_min"])
    return f"{100 * mean:.2f} ({100 * low:.1f})"


def _split(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=RESULTS_DIR / "poisoning.csv", help="recorded rows")
    ap.add_argument("--out", type=Path, required=True, help="output directory (resumable)")
    ap.add_argument("--rules", default="", help="comma-separated rules to re-run")
    ap.add_argument("--recorded-workers", default="", help="only rows recorded with these")
    ap.add_argument("--matrices", default="", help="comma-separated matrices (mlp, goal, ...)")
    ap.add_argument("--models", default="", help="comma-separated models")
    ap.add_argument("--seeds", default="", help="comma-separated seeds")
    ap.add_argument("--finished-before", default="", help="only rows finished before this UTC time")
    ap.add_argument("--workers", type=int, default=2, help="worker processes per simulation")
    ap.add_argument("--jobs", type=int, default=1, help="cells at once, one process each")
    ap.add_argument("--max-minutes", type=float, default=None, help="start no cell after this")
    ap.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    args = ap.parse_args(argv)
    recorded = select(
        P.read_rows(args.csv),
        rules=_split(args.rules),
        recorded_workers=_split(args.recorded_workers),
        matrices=_split(args.matrices),
        models=_split(args.models),
        seeds=_split(args.seeds),
        finished_before=args.finished_before,
    )
    cells = [P.Cell.from_row(r) for r in recorded]
    done = P.done_keys(args.out / "results.csv")
    todo = [c for c in cells if c.key not in done]
    print(f"{len(cells)} recorded cells selected, {len(todo)} to run")
    if args.dry_run:
        for c in todo:
            print(c.key)
        return 0
    deadline = None if args.max_minutes is None else time.time() + 60 * args.max_minutes

    def started(cell: P.Cell, k: int, total: int) -> None:
        print(f"[{k + 1}/{total}] {cell.key}", flush=True)

    P.run_cells(
        cells,
        args.out,
        resume=True,
        workers=args.workers,
        jobs=args.jobs,
        deadline=deadline,
        on_start=started,
    )
    rerun = {r["key"]: r for r in P.read_rows(args.out / "results.csv")}
    table = compare(recorded, rerun)
    (args.out / "compare.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
