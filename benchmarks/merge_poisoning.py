"""Merge poisoning runs into the committed results: ``benchmarks/results/poisoning*``.

The matrix runs for days on this machine, so it runs slice by slice, in several output
directories, across sessions (``dfl bench poisoning --subset mlp --partitions P --shares S
--resume --out DIR``). This script folds such directories into the committed CSV and curves,
redraws the plots and rewrites the ``## Poisoning`` section of ``benchmarks/RESULTS.md``,
keeping that section's hand-written notes::

    python -m benchmarks.merge_poisoning runs/slice-a runs/slice-b

Rows are matched by cell key; a later source replaces an earlier one (the committed CSV comes
first). Degree-8 MNIST MLP rows of the ``goal`` subset are relabelled ``mlp``: they are cells of
the mlp matrix (same keys), so they belong in its tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from benchmarks import poisoning as P
from benchmarks._results import RESULTS

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def merge_rows(sources: list[Path]) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Rows (first-seen order, last version) and curve lines of every ``results.csv`` and
    ``curves.jsonl`` pair, given as ``(csv_path, curves_path)`` directories or files."""
    rows: dict[str, dict[str, str]] = {}
    curves: dict[str, str] = {}
    for src in sources:
        csv_path, curves_path = _paths(src)
        for r in P.read_rows(csv_path):
            rows[r["key"]] = r
        if curves_path.exists():
            for line in curves_path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    curves[json.loads(line)["key"]] = line
    for r in rows.values():
        if (
            r["matrix"] == "goal"
            and r["degree"] == str(P.MATRIX_DEGREE)
            and (r["dataset"], r["model"], r["nodes"]) == ("mnist", "mlp", "20")
        ):
            r["matrix"] = "mlp"
    out = follow_default(list(rows.values()), curves, _default_rule())
    return out, curves


def _default_rule() -> str:
    from dfl.node.compute import DEFAULT_RULE

    return DEFAULT_RULE


def follow_default(
    rows: list[dict[str, str]], curves: dict[str, str], default_rule: str
) -> list[dict[str, str]]:
    """Make the ``default`` rows name the current ``DEFAULT_RULE``, each the same run as its
    twin.

    A ``default`` row and its resolved rule's own row are the same deterministic run, recorded
    twice. Where both are there and differ, one was re-run (after a fix) under one of the two
    names: the later-finished row is the run, and the twin follows it. A ``default`` row of an
    earlier default is then dropped: the rule's own row, added if missing, carries it. Every row
    of the current default rule gets a ``default`` alias made from it (as ``run_cells`` writes
    it). ``curves`` follow the rows' keys.
    """
    by_key = {r["key"]: r for r in rows}
    for r in rows:
        if r.get("rule") != "default":
            continue
        own_key = P.key_with_rule(r["key"], r["rule_resolved"])
        own = by_key.get(own_key)
        if own is None or r.get("finished_utc", "") > own.get("finished_utc", ""):
            by_key[own_key] = {**r, "key": own_key, "rule": r["rule_resolved"], "note": ""}
            if r["key"] in curves:
                curves[own_key] = _rekey(curves[r["key"]], own_key)
        if r["rule_resolved"] != default_rule:
            del by_key[r["key"]]
    for key, r in list(by_key.items()):
        if r.get("rule") != default_rule:
            continue
        alias = P.key_with_rule(key, f"default={default_rule}")
        by_key[alias] = P.as_default_row(r, alias, default_rule)
        if key in curves:
            curves[alias] = _rekey(curves[key], alias)
    return list(by_key.values())


def _rekey(line: str, key: str) -> str:
    d = json.loads(line)
    d["key"] = key
    return json.dumps(d)


def _paths(src: Path) -> tuple[Path, Path]:
    if src.is_dir():
        return src / "results.csv", src / "curves.jsonl"
    return src, src.with_name(src.stem + "_curves.jsonl")


def write_merged(rows: list[dict[str, str]], curves: dict[str, str], out_dir: Path) -> None:
    """``out_dir/results.csv`` and ``out_dir/curves.jsonl`` in :data:`P.CSV_COLUMNS` order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    P.write_rows(out_dir / "results.csv", rows)
    with open(out_dir / "curves.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            if r["key"] in curves:
                f.write(curves[r["key"]] + "\n")


def current_notes(results_md: Path = RESULTS) -> str:
    """The hand-written part of the ``## Poisoning`` section (between the header lines and
    the ``### Goals`` heading, a line of its own: notes may name it), or ``""``."""
    if not results_md.exists():
        return ""
    text = results_md.read_text(encoding="utf-8")
    start = text.find("## Poisoning")
    if start < 0:
        return ""
    section = text[start:]
    head = section.find("Cells in the CSV:")
    goals = section.find("\n### Goals\n")
    if head < 0 or goals < 0:
        return ""
    body_start = section.find("\n\n", head)
    return section[body_start:goals].strip() if 0 <= body_start < goals else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="*", type=Path, help="output directories of poisoning runs")
    ap.add_argument("--command", default=None, help="command line to record in RESULTS.md")
    ap.add_argument("--notes", type=Path, default=None, help="notes file (default: keep)")
    args = ap.parse_args(argv)
    rows, curves = merge_rows([RESULTS_DIR / "poisoning.csv", *args.dirs])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_merged(rows, curves, out)
        plots = P.plot_all(out)
        shutil.copy(out / "results.csv", RESULTS_DIR / "poisoning.csv")
        shutil.copy(out / "curves.jsonl", RESULTS_DIR / "poisoning_curves.jsonl")
        copied = []
        for p in plots:  # every share of the matrices; the paper's 2-cell groups have a table
            if p.name.split("_", 2)[1] != "paper":
                shutil.copy(p, RESULTS_DIR / f"poisoning_{p.name}")
                copied.append(p.name)
    notes = args.notes.read_text(encoding="utf-8") if args.notes else current_notes()
    command = args.command or (
        "dfl bench poisoning --subset S [--partitions P --shares S --rules R --attacks A] "
        "--resume --out DIR, one DIR per slice, merged with python -m benchmarks.merge_poisoning"
    )
    path = P.write_results_section(rows, command=command, notes=notes)
    print(f"{len(rows)} rows -> {RESULTS_DIR / 'poisoning.csv'}; plots: {', '.join(copied)}")
    print(f"updated {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
