"""The poisoning matrix: attacks x robust rules x malicious share x data partition.

Every cell is one :class:`simulator.engine.Simulation` (real node cores, signed blocks, JAX
training) on a random k-regular topology. Cells are frozen dataclasses with a stable
:attr:`Cell.key`; a finished cell is appended to ``results.csv`` at once (flush + fsync) with its
accuracy curve in ``curves.jsonl``, so an interrupted run loses at most the cell in progress and
``--resume`` skips every cell already in the CSV.

Matrices (:func:`build_cells`):

* ``mlp``: MNIST + MLP, every attack x every rule of ``RULES`` + ``default`` x malicious share
  {0, 0.1, 0.2, 0.3, 0.4} x partition {iid, dirichlet:0.5, dirichlet:0.1}. A share of 0 has no
  attacker, so it is only run with attack ``none`` (the clean baseline of every heatmap), and
  ``none`` is only run at share 0.
* ``lenet``: MNIST + LeNet-5 on the slice that matters most: every attack x {fedavg, default,
  the three best other rules} x {0, 0.3} x dirichlet:0.5.
* ``goal``: the cells behind the issue's goals (MNIST MLP, dirichlet:0.5, 30 % malicious, every
  attack) for the candidate default rules.
* ``paper``: the DFL paper's own setting (10 nodes, average degree 4 on an Erdos-Renyi graph,
  one malicious node running the paper's attack), partitions iid / dirichlet:1.0 /
  dirichlet:0.1 / shards:2, fedavg vs the ``dfl`` rule.
* ``quick``: digits + MLP, a few rules and attacks at {0, 0.3}, dirichlet:0.5 (< 10 minutes).

Run with ``dfl bench poisoning`` (see ``--help``) or ``python -m benchmarks.poisoning``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

__all__ = [
    "ATTACK_NAMES",
    "CSV_COLUMNS",
    "KEY_RULE_FIELD",
    "LENET_RULES",
    "MATRIX_DEGREE",
    "SHARES",
    "Cell",
    "HParams",
    "as_default_row",
    "build_cells",
    "done_keys",
    "estimate_seconds",
    "key_with_rule",
    "matrix_rules",
    "plot_all",
    "read_rows",
    "render_markdown",
    "run_cells",
    "seed_spread",
    "write_results_section",
    "write_rows",
]

#: Attacks of the matrix (issue 6), in table order.
ATTACK_NAMES: tuple[str, ...] = (
    "none",
    "label_flip",
    "sign_flip",
    "gaussian",
    "scaling",
    "alie",
    "ipm",
    "min_max",
    "min_sum",
    "dfl_random",
    "free_rider",
    "backdoor",
)
SHARES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4)
PARTITIONS: tuple[str, ...] = ("iid", "dirichlet:0.5", "dirichlet:0.1")
PAPER_PARTITIONS: tuple[str, ...] = ("iid", "dirichlet:1.0", "dirichlet:0.1", "shards:2")
#: The order the MLP matrix runs in (it takes many sessions, so what runs first is what a
#: partial CSV shows): the goal partition first, then the harder non-IID one, IID last; within
#: a partition, one whole share at a time (every rule on every attack: a complete heatmap),
#: the clean cells and the goal share first, then the share above it, then the lighter ones.
MLP_RUN_PARTITIONS: tuple[str, ...] = ("dirichlet:0.5", "dirichlet:0.1", "iid")
MLP_RUN_SHARES: tuple[float, ...] = (0.0, 0.3, 0.4, 0.2, 0.1)
#: Rules of the LeNet slice: fedavg, default and the three best other rules of the MLP matrix's
#: dirichlet:0.5 x 30 % slice at degree 8, ranked by the honest mean accuracy under their worst
#: attack, as session 4 measured it: accuracy_guard, guarded_balance_median, balance_median.
#: Earlier defaults ran the slice too and keep their rows under their own names
#: (guarded_balance_trimmed, sessions 2-4; guarded_direction_trimmed, sessions 5-8). With the
#: session-11 core fix the ranking at seed 0, the default's variants aside, is
#: guarded_direction_trimmed 95.5 %, accuracy_guard 94.8 %, guarded_balance_trimmed 94.3 %,
#: guarded_balance_median 94.2 %, balance_median 94.1 % (benchmarks/RESULTS.md, "Poisoning").
LENET_RULES: tuple[str, ...] = (
    "fedavg",
    "default",
    "accuracy_guard",
    "guarded_balance_median",
    "balance_median",
)
#: Candidate default rules compared on the goal cells.
GOAL_RULES: tuple[str, ...] = (
    "fedavg",
    "default",
    "cclip",
    "scclip",
    "balance",
    "dfl",
    "ubar",
    "multi_krum",
    "trimmed_mean",
    "median",
    "balance_median",
    "balance_trimmed",
    "guarded_balance_trimmed",
    "guarded_balance_median",
    "guarded_direction_trimmed",
)
#: Per-round test samples of the quick subset's cells (``digits`` has 360 test images).
QUICK_EVAL_SAMPLES = 360
QUICK_RULES: tuple[str, ...] = ("fedavg", "default", "trimmed_mean", "median", "balance", "ubar")
QUICK_ATTACKS: tuple[str, ...] = (
    "none",
    "label_flip",
    "sign_flip",
    "gaussian",
    "scaling",
    "alie",
    "ipm",
    "backdoor",
)

CSV_COLUMNS: tuple[str, ...] = (
    "key",
    "matrix",
    "dataset",
    "model",
    "partition",
    "nodes",
    "topology",
    "degree",
    "malicious",
    "malicious_nodes",
    "attack",
    "rule",
    "rule_resolved",
    "seed",
    "rounds",
    "lr",
    "local_epochs",
    "batch_size",
    "honest_accuracy_mean",
    "honest_accuracy_min",
    "backdoor_asr",
    "wall_seconds",
    "train_seconds",
    "workers",
    "jobs",
    "finished_utc",
    "note",
)


@dataclass(frozen=True)
class HParams:
    """Training settings of one model (chosen by measurement, see RESULTS.md)."""

    rounds: int
    lr: float
    local_epochs: int
    batch_size: int = 32


#: Per (dataset, model). MNIST MLP measured with fedavg, 20 nodes, dirichlet:0.5, no attack:
#: lr 0.1 -> 93.95 %, lr 0.3 -> 96.22 % after 20 rounds of one local epoch (RESULTS.md).
#: MNIST LeNet, same setting (k-regular degree 8), fedavg: lr 0.05 -> 97.80 %, lr 0.1 -> 98.27 %
#: (RESULTS.md); one local LeNet epoch costs ~12x an MLP one here.
HPARAMS: dict[tuple[str, str], HParams] = {
    ("mnist", "mlp"): HParams(rounds=20, lr=0.3, local_epochs=1),
    ("mnist", "lenet"): HParams(rounds=20, lr=0.1, local_epochs=1),
    ("digits", "mlp"): HParams(rounds=15, lr=0.1, local_epochs=2),
    ("digits", "logreg"): HParams(rounds=3, lr=0.1, local_epochs=1),
}


#: Degree of the k-regular graphs of the mlp, lenet, goal and quick matrices. 8 of 19 possible
#: neighbours keeps the DFL paper's density (10 nodes, average degree 4). Degree 4 was used
#: first: with 30 % malicious it leaves the honest subgraph so sparse that even when every
#: malicious model is rejected the honest nodes reach only 94.2 % in 20 rounds (96.1 % at
#: degree 8, same run otherwise); those degree-4 cells stay in the CSV under their own key.
MATRIX_DEGREE = 8


#: Index of the rule in a cell key's ``/``-separated fields (see :attr:`Cell.key`).
KEY_RULE_FIELD = 7


def key_with_rule(key: str, rule: str) -> str:
    """A cell key with its rule field replaced (``rule`` as a key writes it, e.g.
    ``default=guarded_direction_trimmed``)."""
    parts = key.split("/")
    parts[KEY_RULE_FIELD] = rule
    return "/".join(parts)


def as_default_row(row: Mapping[str, Any], key: str, resolved: str) -> dict[str, Any]:
    """``row`` (a run of rule ``resolved``) relabelled as the ``default`` cell ``key``: the same
    deterministic run under the name ``default``."""
    return {
        **row,
        "key": key,
        "rule": "default",
        "note": f"same deterministic run as rule {resolved}",
    }


@dataclass(frozen=True)
class Cell:
    """One simulation of the matrix; :attr:`key` identifies it in the CSV."""

    matrix: str
    dataset: str
    model: str
    partition: str
    malicious: float  # share (< 1) or count (>= 1) of malicious nodes
    attack: str
    rule: str
    seed: int = 0
    nodes: int = 20
    topology: str = "k_regular"
    degree: int = 8  # MATRIX_DEGREE
    rounds: int = 20
    lr: float = 0.1
    local_epochs: int = 1
    batch_size: int = 32
    eval_samples: int = 500

    @classmethod
    def from_row(cls, row: Mapping[str, str]) -> Cell:
        """The cell a CSV row recorded (to run it again). ``eval_samples``, which is not in the
        row (it sizes only the curves' per-round test sample), is the subset's:
        :data:`QUICK_EVAL_SAMPLES` for the quick subset's ``digits`` cells, else the field's
        default. A ``default`` row runs the rule it names.

        Raises ``ValueError`` if the rebuilt cell's key is not the row's."""
        rule = row["rule"]
        if rule == "default":
            rule = row["rule_resolved"]
        quick = {"eval_samples": QUICK_EVAL_SAMPLES} if row["dataset"] == "digits" else {}
        cell = cls(
            matrix=row["matrix"],
            dataset=row["dataset"],
            model=row["model"],
            partition=row["partition"],
            malicious=float(row["malicious"]),
            attack=row["attack"],
            rule=rule,
            seed=int(row["seed"]),
            nodes=int(row["nodes"]),
            topology=row["topology"],
            degree=int(row["degree"]),
            rounds=int(row["rounds"]),
            lr=float(row["lr"]),
            local_epochs=int(row["local_epochs"]),
            batch_size=int(row["batch_size"]),
            **quick,
        )
        if cell.key != key_with_rule(row["key"], rule):
            raise ValueError(f"row {row['key']!r} rebuilds as cell {cell.key!r}")
        return cell

    @property
    def rule_resolved(self) -> str:
        """The registry name the rule runs as (``default`` -> ``DEFAULT_RULE``)."""
        from dfl.node.compute import DEFAULT_RULE

        return DEFAULT_RULE if self.rule == "default" else self.rule

    @property
    def key(self) -> str:
        """Stable id: every field that changes the result (``default`` names its rule)."""
        rule = f"default={self.rule_resolved}" if self.rule == "default" else self.rule
        return "/".join(
            (
                self.dataset,
                self.model,
                self.partition,
                f"n{self.nodes}",
                f"{self.topology}{self.degree}",
                f"m{self.malicious:g}",
                self.attack,
                rule,  # field KEY_RULE_FIELD
                f"s{self.seed}",
                f"r{self.rounds}",
                f"lr{self.lr:g}",
                f"e{self.local_epochs}",
                f"b{self.batch_size}",
            )
        )

    def scenario(self, workers: int = 1) -> Any:
        """The simulator scenario of this cell. It names the resolved rule, so a cell always runs
        the rule its key records, even if ``DEFAULT_RULE`` changes on disk while a long run is
        going (worker processes import the code afresh)."""
        from simulator.scenario import Scenario

        return Scenario(
            name=f"poisoning-{self.attack}-{self.rule}"[:60],
            nodes=self.nodes,
            rounds=self.rounds,
            topology=self.topology,
            degree=self.degree,
            dataset=self.dataset,
            model=self.model,
            partition=self.partition,
            rule=self.rule_resolved,
            attack=self.attack,
            malicious=self.malicious,
            seed=self.seed,
            lr=self.lr,
            batch_size=self.batch_size,
            local_epochs=self.local_epochs,
            workers=workers,
            eval_samples=self.eval_samples,
        )


def matrix_rules() -> tuple[str, ...]:
    """Every registered rule plus ``default``."""
    from dfl.learning.robust import RULES

    return (*RULES, "default")


def _cell(
    matrix: str,
    dataset: str,
    model: str,
    partition: str,
    share: float,
    attack: str,
    rule: str,
    seed: int,
    **kw: Any,
) -> Cell:
    hp = HPARAMS[(dataset, model)]
    base: dict[str, Any] = {
        "rounds": hp.rounds,
        "lr": hp.lr,
        "local_epochs": hp.local_epochs,
        "batch_size": hp.batch_size,
    }
    base.update(kw)
    return Cell(matrix, dataset, model, partition, share, attack, rule, seed, **base)


def _attack_share_pairs(
    attacks: Sequence[str], shares: Sequence[float]
) -> Iterable[tuple[str, float]]:
    """Share 0 only with attack ``none``; ``none`` only at share 0."""
    for share in shares:
        for attack in attacks:
            if (share == 0) == (attack == "none"):
                yield attack, share


def build_cells(
    subset: str = "all",
    *,
    seeds: Sequence[int] = (0,),
    rules: Sequence[str] | None = None,
    attacks: Sequence[str] | None = None,
    partitions: Sequence[str] | None = None,
    shares: Sequence[float] | None = None,
) -> list[Cell]:
    """The cells of ``subset`` (``all`` = mlp + lenet + paper; or mlp, lenet, goal, paper, quick).

    ``rules`` / ``attacks`` / ``partitions`` / ``shares`` restrict the chosen subset (None = the
    subset's own lists), so a long run can go slice by slice, most informative slice first.
    """
    known = ("all", "mlp", "lenet", "goal", "paper", "quick")
    if subset not in known:
        raise ValueError(f"unknown subset {subset!r} (known: {', '.join(known)})")
    parts = ("mlp", "lenet", "paper") if subset == "all" else (subset,)
    out: list[Cell] = []

    def keep_rule(r: str) -> bool:
        return rules is None or r in rules

    def pick_attacks(default: Sequence[str]) -> list[str]:
        return [a for a in default if attacks is None or a in attacks]

    for part in parts:
        for seed in seeds:
            if part == "mlp":
                for partition in MLP_RUN_PARTITIONS:
                    for attack, share in _attack_share_pairs(
                        pick_attacks(ATTACK_NAMES), MLP_RUN_SHARES
                    ):
                        for rule in matrix_rules():
                            if keep_rule(rule):
                                out.append(
                                    _cell(
                                        "mlp", "mnist", "mlp", partition, share, attack, rule, seed
                                    )
                                )
            elif part == "lenet":
                for attack, share in _attack_share_pairs(pick_attacks(ATTACK_NAMES), (0.0, 0.3)):
                    for rule in LENET_RULES:
                        if keep_rule(rule):
                            out.append(
                                _cell(
                                    "lenet",
                                    "mnist",
                                    "lenet",
                                    "dirichlet:0.5",
                                    share,
                                    attack,
                                    rule,
                                    seed,
                                )
                            )
            elif part == "goal":
                for attack, share in _attack_share_pairs(pick_attacks(ATTACK_NAMES), (0.0, 0.3)):
                    for rule in GOAL_RULES:
                        if keep_rule(rule):
                            out.append(
                                _cell(
                                    "goal",
                                    "mnist",
                                    "mlp",
                                    "dirichlet:0.5",
                                    share,
                                    attack,
                                    rule,
                                    seed,
                                )
                            )
            elif part == "paper":
                for partition in PAPER_PARTITIONS:
                    for attack, share in (("none", 0.0), ("dfl_random", 1.0)):
                        if attacks is not None and attack not in attacks:
                            continue
                        for rule in ("fedavg", "dfl"):
                            if keep_rule(rule):
                                out.append(
                                    _cell(
                                        "paper",
                                        "mnist",
                                        "mlp",
                                        partition,
                                        share,
                                        attack,
                                        rule,
                                        seed,
                                        nodes=10,
                                        topology="erdos_renyi",
                                        degree=4,
                                    )
                                )
            else:  # quick
                for attack, share in _attack_share_pairs(pick_attacks(QUICK_ATTACKS), (0.0, 0.3)):
                    for rule in QUICK_RULES:
                        if keep_rule(rule):
                            out.append(
                                _cell(
                                    "quick",
                                    "digits",
                                    "mlp",
                                    "dirichlet:0.5",
                                    share,
                                    attack,
                                    rule,
                                    seed,
                                    eval_samples=QUICK_EVAL_SAMPLES,
                                )
                            )
    if partitions is not None:
        out = [c for c in out if c.partition in partitions]
    if shares is not None:
        out = [c for c in out if any(abs(c.malicious - s) < 1e-9 for s in shares)]
    seen: set[str] = set()
    unique = []
    for c in out:
        if c.key not in seen:
            seen.add(c.key)
            unique.append(c)
    return unique


# ----------------------------------------------------------------------------- CSV and curves


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a results CSV (empty if missing); a torn last line (killed run) is dropped."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r for r in rows if r.get("finished_utc")]


def done_keys(path: Path) -> set[str]:
    """Keys of the cells already in the CSV."""
    return {r["key"] for r in read_rows(path)}


def estimate_seconds(cells: Sequence[Cell], rows: Sequence[dict[str, str]]) -> tuple[float, int]:
    """Wall time the not-yet-run ``cells`` should take, from the finished ``rows``.

    Each cell costs the median time of the finished rows of its dataset, model and node count
    (the rest barely moves a cell's time), a row's time being its ``wall_seconds`` divided by
    its ``jobs`` (cells that ran at once; empty in older rows: 1); a ``default`` cell whose
    resolved twin is finished costs nothing (:func:`run_cells` reuses it). Returns
    ``(seconds, unknown)``, ``unknown`` counting the cells with no finished row to go by (not
    in ``seconds``).
    """
    times: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        try:
            t = float(r["wall_seconds"]) / max(1, int(r.get("jobs") or 1))
        except (KeyError, ValueError):
            continue
        times.setdefault((r["dataset"], r["model"], r["nodes"]), []).append(t)
    medians = {k: statistics.median(v) for k, v in times.items()}
    by_key = {r["key"]: r for r in rows}
    total, unknown = 0.0, 0
    for c in cells:
        if c.key in by_key or _reusable_default(c, by_key) is not None:
            continue
        m = medians.get((c.dataset, c.model, str(c.nodes)))
        if m is None:
            unknown += 1
        else:
            total += m
    return total, unknown


def _append_line(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _append_row(path: Path, row: dict[str, Any]) -> None:
    import io

    new = not path.exists() or path.stat().st_size == 0
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    if new:
        writer.writeheader()
    writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
    _append_line(path, buf.getvalue())


def _fmt(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def run_cell(
    cell: Cell, workers: int = 1, jobs: int = 1
) -> tuple[dict[str, Any], list[list[float]]]:
    """Run one cell; return its CSV row and its honest accuracy curve. ``jobs`` is only
    recorded: how many cells the run had going at once (their wall times overlap)."""
    from simulator.engine import Simulation

    sim = Simulation(cell.scenario(workers))
    result = sim.run()
    try:
        s = result.summary
        row: dict[str, Any] = {
            "key": cell.key,
            "matrix": cell.matrix,
            "dataset": cell.dataset,
            "model": cell.model,
            "partition": cell.partition,
            "nodes": cell.nodes,
            "topology": cell.topology,
            "degree": cell.degree,
            "malicious": f"{cell.malicious:g}",
            "malicious_nodes": s["malicious"],
            "attack": cell.attack,
            "rule": cell.rule,
            "rule_resolved": cell.rule_resolved,
            "seed": cell.seed,
            "rounds": cell.rounds,
            "lr": f"{cell.lr:g}",
            "local_epochs": cell.local_epochs,
            "batch_size": cell.batch_size,
            "honest_accuracy_mean": _fmt(s["honest_accuracy_mean"]),
            "honest_accuracy_min": _fmt(s["honest_accuracy_min"]),
            "backdoor_asr": _fmt(s.get("backdoor_asr")),
            "wall_seconds": f"{s['wall_seconds']:.1f}",
            "train_seconds": f"{s['train_seconds']:.1f}",
            "workers": s.get("workers", workers),
            "jobs": jobs,
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "note": "",
        }
        curve = [[float(v) for v in c] for c in result.accuracy_curve]
    finally:
        result.close()
    return row, curve


def _reusable_default(cell: Cell, rows: dict[str, dict[str, str]]) -> dict[str, str] | None:
    """A ``default`` cell is the same run as its resolved rule: reuse a finished one."""
    if cell.rule != "default":
        return None
    twin = replace(cell, rule=cell.rule_resolved)
    return rows.get(twin.key)


def run_cells(
    cells: Sequence[Cell],
    out_dir: Path,
    *,
    resume: bool = True,
    workers: int = 1,
    jobs: int = 1,
    deadline: float | None = None,
    on_start: Callable[[Cell, int, int], None] | None = None,
    on_done: Callable[[Cell, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the cells not yet in ``out_dir/results.csv``; append each as it finishes.

    Without ``resume`` an existing CSV is moved aside (``results.csv.bak-<time>``) first; a CSV
    written with older columns is rewritten with :data:`CSV_COLUMNS` (new columns empty) before
    rows are appended. ``workers``: worker processes per simulation (1 = in-process). ``jobs``:
    cells run at once, each in its own long-lived process (``jobs`` = 1: one at a time in this
    process); rows are appended in the order the cells finish. ``deadline`` (``time.time()``
    value): start no new cell after it. Returns the new rows.

    If a cell raises, the cells already running are finished and recorded, then the error is
    raised.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.csv"
    curves = out_dir / "curves.jsonl"
    if not resume:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for p in (path, curves):
            if p.exists():
                p.rename(p.with_name(f"{p.name}.bak-{stamp}"))
    _upgrade_columns(path)
    by_key = {r["key"]: r for r in read_rows(path)}
    todo = [c for c in cells if c.key not in by_key]
    new_rows: list[dict[str, Any]] = []

    def record(cell: Cell, row: dict[str, Any], curve: list[list[float]]) -> None:
        _append_line(curves, json.dumps({"key": cell.key, "curve": curve}) + "\n")
        _append_row(path, row)
        by_key[cell.key] = {k2: str(v) for k2, v in row.items()}
        new_rows.append(row)
        if on_done is not None:
            on_done(cell, row)

    def reuse(cell: Cell) -> bool:
        """Record a ``default`` cell from its finished twin; False if there is none."""
        twin = _reusable_default(cell, by_key)
        if twin is None:
            return False
        row: dict[str, Any] = as_default_row(twin, cell.key, cell.rule_resolved)
        row.update(
            matrix=cell.matrix,
            finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        record(cell, row, _read_curves(curves).get(twin["key"], []))
        return True

    def start(cell: Cell, k: int) -> None:
        if on_start is not None:
            on_start(cell, k, len(todo))

    if jobs <= 1:
        for k, cell in enumerate(todo):
            if deadline is not None and time.time() > deadline:
                break
            start(cell, k)
            if not reuse(cell):
                record(cell, *run_cell(cell, workers))
        return new_rows
    _run_parallel(todo, workers, jobs, deadline, start, reuse, record)
    return new_rows


def _run_parallel(
    todo: Sequence[Cell],
    workers: int,
    jobs: int,
    deadline: float | None,
    start: Callable[[Cell, int], None],
    reuse: Callable[[Cell], bool],
    record: Callable[[Cell, dict[str, Any], list[list[float]]], None],
) -> None:
    """:func:`run_cells` with ``jobs`` cells at a time in a pool of spawned processes (a fresh
    interpreter each: no state of this process leaks into a cell). A process runs one cell after
    another, so its compiled functions serve every later cell. A ``default`` cell whose twin is
    still running waits for it and is then recorded from it (:func:`_reusable_default`)."""
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    queue = list(enumerate(todo))[::-1]  # popped from the end: in order
    running: dict[Future[tuple[dict[str, Any], list[list[float]]]], Cell] = {}
    waiting: list[Cell] = []  # defaults whose twin is running
    error: BaseException | None = None

    def twin_running(cell: Cell) -> bool:
        twin = replace(cell, rule=cell.rule_resolved).key
        return any(c.key == twin for c in running.values())

    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        while True:
            while error is None and queue and len(running) < jobs:
                if deadline is not None and time.time() > deadline:
                    queue.clear()
                    break
                k, cell = queue.pop()
                start(cell, k)
                if reuse(cell):
                    continue
                if cell.rule == "default" and twin_running(cell):
                    waiting.append(cell)
                    continue
                running[pool.submit(run_cell, cell, workers, jobs)] = cell
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                cell = running.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    error = error or exc
                    continue
                record(cell, *fut.result())
            for cell in list(waiting):
                if not twin_running(cell):
                    waiting.remove(cell)
                    if error is None:  # else the twin may have failed: nothing to reuse
                        reuse(cell)
    if error is not None:
        raise error


def _upgrade_columns(path: Path) -> None:
    """Rewrite a results CSV whose header is not :data:`CSV_COLUMNS` (written by an older
    version) with those columns, so that appended rows line up (:func:`write_rows`)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    if tuple(header) != CSV_COLUMNS:
        write_rows(path, read_rows(path))


def write_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write ``rows`` as a results CSV with :data:`CSV_COLUMNS` (missing ones empty). Atomic:
    a temporary file is renamed over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c) or "" for c in CSV_COLUMNS})
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_curves(path: Path) -> dict[str, list[list[float]]]:
    out: dict[str, list[list[float]]] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            d = json.loads(line)
        except json.JSONDecodeError:  # torn last line of a killed run
            continue
        out[d["key"]] = d["curve"]
    return out


# ----------------------------------------------------------------------------- aggregation


def _num(s: str | None) -> float | None:
    if s is None or s == "":
        return None
    return float(s)


Group = tuple[str, str, str, str, str, str]  # matrix, dataset, model, partition, graph, share


def _group(r: dict[str, str]) -> Group:
    graph = f"{r['topology']}{r['degree']}/n{r['nodes']}/r{r['rounds']}"
    return (r["matrix"], r["dataset"], r["model"], r["partition"], graph, r["malicious"])


def _slug(g: Group) -> str:
    """File-name part of a group: matrix_dataset_model_partition_graph_mShare."""
    graph = g[4].split("/")[0]
    return f"{g[0]}_{g[1]}_{g[2]}_{g[3].replace(':', '')}_{graph}_m{g[5]}"


def _grid(
    rows: Sequence[dict[str, str]], metric: str = "honest_accuracy_mean"
) -> dict[Group, dict[tuple[str, str], float]]:
    """(matrix, dataset, model, partition, share) -> (attack, rule) -> metric of the lowest seed.

    Every table cell is then one run of the same seed as its neighbours (seed 0 of the matrix);
    cells run with more seeds are summarised by :func:`seed_spread`. The share-0 ``none`` cells
    are also shown as the ``none`` column of every other share.
    """
    out: dict[Group, dict[tuple[str, str], float]] = {}
    for g, cells in _by_seed(rows, metric).items():
        out[g] = {k: by_seed[min(by_seed)] for k, by_seed in cells.items()}
    for g, means in list(out.items()):
        if g[5] != "0":
            base = out.get((*g[:5], "0"), {})
            for (attack, rule), mean in base.items():
                if attack == "none":
                    means.setdefault(("none", rule), mean)
    return out


def _by_seed(
    rows: Sequence[dict[str, str]], metric: str
) -> dict[Group, dict[tuple[str, str], dict[int, float]]]:
    """group -> (attack, rule) -> seed -> metric (rows without the metric left out)."""
    acc: dict[Group, dict[tuple[str, str], dict[int, float]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for r in rows:
        v = _num(r.get(metric))
        if v is not None:
            acc[_group(r)][(r["attack"], r["rule"])][int(r.get("seed") or 0)] = v
    return acc


def seed_spread(rows: Sequence[dict[str, str]]) -> str:
    """Markdown table of every cell run with two or more seeds: accuracy per seed, mean, range
    (and the backdoor attack success per seed); empty if there is none."""
    accs = _by_seed(rows, "honest_accuracy_mean")
    mins = _by_seed(rows, "honest_accuracy_min")
    asrs = _by_seed(rows, "backdoor_asr")
    lines = []
    for g in sorted(accs):
        for (attack, rule), by_seed in sorted(accs[g].items()):
            if len(by_seed) < 2:
                continue
            seeds = sorted(by_seed)
            vals = [by_seed[k] for k in seeds]
            low = mins[g].get((attack, rule), {})
            per_seed = ", ".join(
                f"{k}: {_pct(by_seed[k])}" + (f" ({_pct(low[k])})" if k in low else "")
                for k in seeds
            )
            asr = asrs.get(g, {}).get((attack, rule), {})
            asr_text = ", ".join(f"{k}: {_pct(asr[k])}" for k in seeds if k in asr)
            lines.append(
                f"| {g[2]} {g[3]} {g[4].split('/')[0]} m={g[5]} | {attack} | {rule} | {per_seed} "
                f"| {_pct(sum(vals) / len(vals))} | {_pct(min(vals))}-{_pct(max(vals))} "
                f"| {asr_text} |"
            )
    if not lines:
        return ""
    head = (
        "| cells | attack | rule | accuracy by seed (min) | mean | range | backdoor ASR by seed |\n"
        "|---|---|---|---|---:|---:|---|\n"
    )
    return head + "\n".join(lines) + "\n"


def _order(values: Iterable[str], reference: Sequence[str]) -> list[str]:
    vals = set(values)
    first = [v for v in dict.fromkeys(reference) if v in vals]
    return first + sorted(vals - set(first))


def _rule_order(rules: Iterable[str]) -> list[str]:
    from dfl.learning.robust import RULES

    return _order(rules, ("fedavg", "default", *GOAL_RULES, *RULES))


# ----------------------------------------------------------------------------- plots


def plot_all(out_dir: Path) -> list[Path]:
    """Heatmaps (rule x attack per share and partition) and accuracy curves, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(out_dir / "results.csv")
    curves = _read_curves(out_dir / "curves.jsonl")
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    written: list[Path] = []
    grid = _grid(rows)
    for g, cells in sorted(grid.items()):
        if g[5] == "0" and any(h[:5] == g[:5] and h[5] != "0" for h in grid):
            continue  # the clean baseline is the 'none' column of the other shares
        attacks = _order({a for a, _ in cells}, ATTACK_NAMES)
        rules = _rule_order({r for _, r in cells})
        data = [[cells.get((a, r), math.nan) * 100 for a in attacks] for r in rules]
        fig, ax = plt.subplots(
            figsize=(1.0 + 0.75 * len(attacks), 1.2 + 0.38 * len(rules)), dpi=110
        )
        im = ax.imshow(data, vmin=50, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(attacks)), attacks, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(rules)), rules, fontsize=8)
        for yi, line in enumerate(data):
            for xi, v in enumerate(line):
                if not math.isnan(v):
                    ax.text(xi, yi, f"{v:.0f}", ha="center", va="center", fontsize=7)
        ax.set_title(
            f"honest mean accuracy (%): {g[1]}/{g[2]}, {g[3]}, {g[4]}, malicious {g[5]} ({g[0]})",
            fontsize=8,
        )
        fig.colorbar(im, ax=ax, fraction=0.03)
        fig.tight_layout()
        name = f"heatmap_{_slug(g)}.png"
        fig.savefig(plots / name)
        plt.close(fig)
        written.append(plots / name)
    # accuracy curves: one panel per attack, one line per rule
    groups: dict[Group, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        groups[_group(r)].append(r)
    for g, grows in sorted(groups.items()):
        attacks = _order({r["attack"] for r in grows}, ATTACK_NAMES)
        rules = _rule_order({r["rule"] for r in grows})
        cols = min(4, len(attacks))
        nrows = math.ceil(len(attacks) / cols)
        fig, axes = plt.subplots(
            nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), dpi=100, squeeze=False
        )
        for ax, attack in zip(axes.flat, attacks, strict=False):
            for ri, rule in enumerate(rules):
                for r in grows:
                    if (
                        r["attack"] == attack
                        and r["rule"] == rule
                        and r["seed"] == grows[0]["seed"]
                    ):
                        c = curves.get(r["key"], [])
                        if c:
                            ax.plot(
                                [p[0] + 1 for p in c],
                                [p[1] for p in c],
                                label=rule,
                                color=f"C{ri % 10}",
                                lw=1.2,
                            )
            ax.set_title(attack, fontsize=8)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(attacks) :]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7)
        fig.suptitle(
            f"honest mean accuracy per round: {g[1]}/{g[2]}, {g[3]}, {g[4]}, "
            f"malicious {g[5]} ({g[0]})",
            fontsize=9,
        )
        fig.tight_layout(rect=(0, 0.06, 1, 0.97))
        name = f"curves_{_slug(g)}.png"
        fig.savefig(plots / name)
        plt.close(fig)
        written.append(plots / name)
    return written


# ----------------------------------------------------------------------------- markdown


def _pct(v: float | None) -> str:
    return "" if v is None or math.isnan(v) else f"{100 * v:.1f}"


def _pct_min(
    cells: Mapping[tuple[str, str], float],
    mins: Mapping[tuple[str, str], float],
    key: tuple[str, str],
) -> str:
    """A cell's value in %, with its honest minimum in parentheses where known; "" if not run."""
    s = _pct(cells.get(key))
    m = mins.get(key)
    return f"{s} ({_pct(m)})" if s and m is not None else s


def _table(
    cells: dict[tuple[str, str], float],
    mins: dict[tuple[str, str], float],
    asr: dict[tuple[str, str], float],
) -> str:
    attacks = _order({a for a, _ in cells}, ATTACK_NAMES)
    rules = _rule_order({r for _, r in cells})
    head = "| attack | " + " | ".join(rules) + " |\n|---|" + "---:|" * len(rules) + "\n"
    lines = []
    for a in attacks:
        vals = [_pct_min(cells, mins, (a, r)) for r in rules]
        lines.append(f"| {a} | " + " | ".join(vals) + " |")
        if a == "backdoor" and any((a, r) in asr for r in rules):
            lines.append(
                "| backdoor ASR | " + " | ".join(_pct(asr.get((a, r))) for r in rules) + " |"
            )
    return head + "\n".join(lines) + "\n"


def ranking(
    cells: Mapping[tuple[str, str], float],
    mins: Mapping[tuple[str, str], float],
    asr: Mapping[tuple[str, str], float],
    default_rule: str,
) -> str:
    """Markdown table of one group's rules ranked by their worst attack (honest mean accuracy,
    lowest node in parentheses), with the mean over the attacks, the clean run and the
    backdoor's success. A rule that has not run every attack of the group comes last, unranked,
    with how many it ran. The default's own rule is left out where its ``default`` runs are
    there (the same runs). Empty for a group with fewer than two attacks or rules."""
    attacks = {a for a, _ in cells if a != "none"}
    rules = {r for _, r in cells}
    if "default" in rules:
        rules.discard(default_rule)
    if len(attacks) < 2 or len(rules) < 2:
        return ""
    entries = []
    for rule in rules:
        ran = {a: cells[(a, rule)] for a in attacks if (a, rule) in cells}
        if ran:
            worst = min(sorted(ran), key=ran.__getitem__)
            entries.append((len(ran) < len(attacks), -ran[worst], rule, worst, ran))
    order = _rule_order(rules)
    entries.sort(key=lambda e: (e[0], e[1], order.index(e[2])))
    lines, rank, last = [], 0, None
    for i, (partial, neg_worst, rule, worst, ran) in enumerate(entries):
        if not partial and neg_worst != last:
            rank, last = i + 1, neg_worst
        shown = f"{worst} {_pct_min(cells, mins, (worst, rule))}"
        if partial:
            shown += f"; {len(ran)} of {len(attacks)} attacks run"
        clean = _pct_min(cells, mins, ("none", rule))
        mean = _pct(sum(ran.values()) / len(ran))
        backdoor = _pct(asr.get(("backdoor", rule)))
        lines.append(
            f"| {'' if partial else rank} | {rule} | {shown} | {mean} | {clean} | {backdoor} |"
        )
    head = (
        "| rank | rule | worst attack (min) | mean over attacks | no attack (min) "
        "| backdoor ASR |\n|---:|---|---|---:|---:|---:|\n"
    )
    return head + "\n".join(lines) + "\n"


def render_markdown(rows: Sequence[dict[str, str]], *, default_rule: str | None = None) -> str:
    """Tables of ``rows``: honest mean (min) accuracy in % per attack x rule, per group, and
    each group's rules ranked by their worst attack (:func:`ranking`)."""
    if default_rule is None:
        from dfl.node.compute import DEFAULT_RULE

        default_rule = DEFAULT_RULE
    means = _grid(rows)
    mins = _grid(rows, "honest_accuracy_min")
    asr = _grid(rows, "backdoor_asr")
    parts = []
    titles = {
        "goal": "Goal cells",
        "mlp": "MNIST MLP matrix",
        "lenet": "MNIST LeNet slice",
        "paper": "DFL paper setting",
        "quick": "Quick mode",
    }
    for g in sorted(means, key=lambda g: (list(titles).index(g[0]) if g[0] in titles else 9, g)):
        if g[5] == "0" and any(h[:5] == g[:5] and h[5] != "0" for h in means):
            continue
        sample = next(r for r in rows if _group(r)[:5] == g[:5])
        n_cells = sum(1 for r in rows if _group(r) == g)
        ranked = ranking(means[g], mins.get(g, {}), asr.get(g, {}), default_rule)
        parts.append(
            f"**{titles.get(g[0], g[0])}: {g[1]} / {g[2]}, {g[3]}, {sample['nodes']} nodes "
            f"({sample['topology']}, degree {sample['degree']}), malicious {g[5]}, "
            f"{sample['rounds']} rounds, lr {sample['lr']}, {sample['local_epochs']} local "
            f"epoch(s)** ({n_cells} cells at this share)\n\n"
            + _table(means[g], mins.get(g, {}), asr.get(g, {}))
            + (f"\nRanked by the worst attack:\n\n{ranked}" if ranked else "")
        )
    body = "\n".join(parts)
    return (
        "Cells: honest mean accuracy in % on the full test set after the last round "
        f"(honest minimum in parentheses); `default` = `{default_rule}`. The `none` row of a "
        "share > 0 is the clean run (share 0).\n\n" + body
    )


def goal_report(rows: Sequence[dict[str, str]], default_rule: str) -> str:
    """Check the issue's goals on the goal slice (MNIST MLP, dirichlet:0.5, 30 %, 20 nodes,
    ``MATRIX_DEGREE``-regular), at every seed the default's goal cells ran.

    The lowest seed (the tables' seed; see :func:`_grid`) must have every cell: one not run is
    a miss. A higher seed is judged on the cells it has, and says how many that is, so a
    goal met at seed 0 and missed at seed 1 reads as exactly that."""

    def goal_rows(rule: str) -> dict[tuple[str, int], dict[str, str]]:
        out: dict[tuple[str, int], dict[str, str]] = {}
        for r in rows:
            if (
                r["dataset"] == "mnist"
                and r["model"] == "mlp"
                and r["partition"] == "dirichlet:0.5"
                and r["nodes"] == "20"
                and r["topology"] == "k_regular"
                and r["degree"] == str(MATRIX_DEGREE)
                and r["rounds"] == str(HPARAMS[("mnist", "mlp")].rounds)
                and r["malicious"] == ("0" if r["attack"] == "none" else "0.3")
                and r["rule_resolved"] == rule
            ):
                out[(r["attack"], int(r.get("seed") or 0))] = r
        return out

    mine, base = goal_rows(default_rule), goal_rows("fedavg")
    seeds = sorted({s for _, s in mine}) or [0]
    verdicts = []
    for seed in seeds:
        misses, ran = [], 0
        for attack in ATTACK_NAMES:
            r = mine.get((attack, seed))
            if r is None:
                if seed == seeds[0]:
                    misses.append(f"{attack} (not run)")
                continue
            ran += 1
            if float(r["honest_accuracy_mean"]) < 0.95:
                # two decimals: a miss by less than 0.05 points must not read "95.0 %"
                misses.append(f"{attack} {100 * float(r['honest_accuracy_mean']):.2f} %")
        part = "" if seed == seeds[0] else f" ({ran} of {len(ATTACK_NAMES)} cells run)"
        verdict = "**met**" if not misses else "**missed**: " + ", ".join(misses)
        verdicts.append(f"seed {seed}{part} {verdict}")
    lines = [
        f"- Default rule (`{default_rule}`) >= 95 % honest mean accuracy on MNIST dirichlet:0.5 "
        "with 30 % malicious, every attack: " + "; ".join(verdicts)
    ]
    gaps, worst = [], -math.inf
    for seed in seeds:
        d, f = mine.get(("none", seed)), base.get(("none", seed))
        if d and f:
            gap = 100 * (float(f["honest_accuracy_mean"]) - float(d["honest_accuracy_mean"]))
            worst = max(worst, gap)
            gaps.append(
                f"{100 * float(d['honest_accuracy_mean']):.1f} % vs "
                f"{100 * float(f['honest_accuracy_mean']):.1f} % (seed {seed}, gap {gap:+.1f})"
            )
    if gaps:
        verdict = "met" if worst <= 1.0 else "missed"
        lines.append(
            f"- No attack, default within 1 point of fedavg: {'; '.join(gaps)}: **{verdict}**"
        )
    asr = []
    for seed in seeds:
        b, bf = mine.get(("backdoor", seed)), base.get(("backdoor", seed))
        if b and bf:
            asr.append(
                f"default {_pct(_num(b['backdoor_asr']))} % vs undefended fedavg "
                f"{_pct(_num(bf['backdoor_asr']))} % (seed {seed})"
            )
    if asr:
        lines.append("- Backdoor ASR at 30 %: " + "; ".join(asr))
    return "\n".join(lines) + "\n"


def write_results_section(
    rows: Sequence[dict[str, str]],
    *,
    command: str,
    notes: str = "",
    path: Path | None = None,
) -> Path:
    """Update the ``## Poisoning`` section of ``benchmarks/RESULTS.md``."""
    from benchmarks._results import RESULTS, machine, update_section
    from dfl.node.compute import DEFAULT_RULE

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    md = (
        f"Command: `{command}`  \n"
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  \n"
        f"Machine: {machine()}  \n"
        f"Load average when written: {load} (shared machine)  \n"
        f"Cells in the CSV: {len(rows)}\n\n"
        + (notes.strip() + "\n\n" if notes else "")
        + "### Goals\n\n"
        + goal_report(rows, DEFAULT_RULE)
        + "\n### Tables\n\n"
        + render_markdown(rows)
    )
    spread = seed_spread(rows)
    if spread:
        md += (
            "\n### Seeds\n\nThe tables and goals above show each cell's lowest seed; these "
            "cells also ran with other seeds (another partition, topology, choice of malicious "
            "nodes and training order). Honest mean accuracy in % by seed (honest minimum), "
            "mean and range over the seeds.\n\n" + spread
        )
    return update_section("Poisoning", md, path or RESULTS)


def cell_fields() -> list[str]:
    return [f.name for f in fields(Cell)]


def cell_dict(cell: Cell) -> dict[str, Any]:
    return asdict(cell)


if __name__ == "__main__":  # pragma: no cover
    import sys

    from dfl.commands.bench import bench

    bench.main(["poisoning", *sys.argv[1:]], prog_name="python -m benchmarks.poisoning")
