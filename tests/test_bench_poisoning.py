"""The poisoning matrix: cell lists and keys, CSV resume, plots, markdown (tiny digits runs)."""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks import poisoning as P
from benchmarks.merge_poisoning import RESULTS_DIR
from dfl.cli import main
from dfl.commands.bench import _estimate_line
from dfl.learning.attacks import ATTACKS
from dfl.learning.robust import RULES


def test_full_matrix_size_and_keys() -> None:
    rules = len(RULES) + 1  # + default
    attacked = len(P.ATTACK_NAMES) - 1
    mlp = P.build_cells("mlp")
    # share 0 only with "none", "none" only at share 0
    assert len(mlp) == len(P.PARTITIONS) * rules * (1 + attacked * (len(P.SHARES) - 1))
    assert {c.attack for c in mlp} == set(P.ATTACK_NAMES)
    assert {c.rule for c in mlp} == {*RULES, "default"}
    assert {c.malicious for c in mlp} == set(P.SHARES)
    assert all(c.nodes >= 20 and c.topology == "k_regular" for c in mlp)
    assert all((c.malicious == 0) == (c.attack == "none") for c in mlp)
    assert sorted(P.MLP_RUN_PARTITIONS) == sorted(P.PARTITIONS)
    assert sorted(P.MLP_RUN_SHARES) == sorted(P.SHARES)
    # run order: the goal partition first, one whole share (a complete heatmap) at a time
    order = list(dict.fromkeys((c.partition, c.malicious) for c in mlp))
    assert order[:3] == [("dirichlet:0.5", 0.0), ("dirichlet:0.5", 0.3), ("dirichlet:0.5", 0.4)]
    assert len(order) == len(P.PARTITIONS) * len(P.SHARES) and order[-1] == ("iid", 0.1)
    lenet = P.build_cells("lenet")
    assert len(lenet) == len(P.LENET_RULES) * (1 + attacked)
    assert {c.model for c in lenet} == {"lenet"} and {c.malicious for c in lenet} == {0.0, 0.3}
    assert {"fedavg", "default"} <= {c.rule for c in lenet} and len(set(P.LENET_RULES)) == 5
    paper = P.build_cells("paper")
    assert len(paper) == 4 * 2 * 2 and {c.nodes for c in paper} == {10}
    assert {c.rule for c in paper} == {"fedavg", "dfl"}
    everything = P.build_cells("all", seeds=(0, 1))
    assert len(everything) == 2 * (len(mlp) + len(lenet) + len(paper))
    keys = [c.key for c in everything]
    assert len(set(keys)) == len(keys)
    # keys are stable strings naming what changes the result; default names its rule
    assert P.build_cells("mlp")[0].key == mlp[0].key
    default = next(c for c in mlp if c.rule == "default")
    assert f"default={default.rule_resolved}" in default.key
    # ... and its scenario runs that very rule (workers never resolve "default" themselves)
    assert default.scenario().rule == default.rule_resolved != "default"
    assert P.key_with_rule(default.key, "median") == replace(default, rule="median").key
    assert all(a in ATTACKS for a in P.ATTACK_NAMES)
    assert all(r in RULES for r in (*P.GOAL_RULES, *P.LENET_RULES) if r != "default")
    quick = P.build_cells("quick")
    assert len(quick) == len(P.QUICK_RULES) * len(P.QUICK_ATTACKS)
    assert {c.dataset for c in quick} == {"digits"}
    restricted = P.build_cells("goal", rules=["fedavg"], attacks=["none", "ipm"])
    assert [(c.attack, c.rule, c.malicious) for c in restricted] == [
        ("none", "fedavg", 0.0),
        ("ipm", "fedavg", 0.3),
    ]
    slice_ = P.build_cells("mlp", partitions=["dirichlet:0.5"], shares=[0.3], rules=["median"])
    assert len(slice_) == len(P.ATTACK_NAMES) - 1  # every attack but none, which has share 0
    assert {(c.partition, c.malicious, c.rule) for c in slice_} == {
        ("dirichlet:0.5", 0.3, "median")
    }


def _tiny() -> list[P.Cell]:
    base = dict(
        dataset="digits",
        model="logreg",
        partition="dirichlet:0.5",
        nodes=6,
        degree=2,
        rounds=2,
        lr=0.1,
        local_epochs=1,
        eval_samples=100,
    )
    return [
        P.Cell("test", malicious=0.0, attack="none", rule="fedavg", **base),  # type: ignore[arg-type]
        P.Cell("test", malicious=0.34, attack="backdoor", rule="fedavg", **base),  # type: ignore[arg-type]
        P.Cell("test", malicious=0.34, attack="backdoor", rule="trimmed_mean", **base),  # type: ignore[arg-type]
    ]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, object]]]:
    out = tmp_path_factory.mktemp("poisoning")
    return out, P.run_cells(_tiny(), out)


def test_run_writes_csv_and_resume_does_no_work(
    ran: tuple[Path, list[dict[str, object]]],
) -> None:
    out, first = ran
    assert len(first) == 3
    with (out / "results.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames is not None
        for col in (
            "dataset",
            "model",
            "partition",
            "nodes",
            "malicious",
            "attack",
            "rule",
            "seed",
            "rounds",
            "honest_accuracy_mean",
            "honest_accuracy_min",
            "backdoor_asr",
            "wall_seconds",
        ):
            assert col in reader.fieldnames
        rows = list(reader)
    assert [r["key"] for r in rows] == [c.key for c in _tiny()]
    assert all(0 <= float(r["honest_accuracy_mean"]) <= 1 for r in rows)
    assert rows[0]["backdoor_asr"] == "" and 0 <= float(rows[1]["backdoor_asr"]) <= 1
    # second run: nothing to do, no duplicate rows
    again = P.run_cells(_tiny(), out, resume=True)
    assert again == []
    keys = [r["key"] for r in P.read_rows(out / "results.csv")]
    assert len(keys) == len(set(keys)) == 3
    assert P.done_keys(out / "results.csv") == {c.key for c in _tiny()}


def test_torn_last_line_is_ignored(tmp_path: Path, ran: tuple[Path, list[object]]) -> None:
    src = (ran[0] / "results.csv").read_text()
    torn = tmp_path / "results.csv"
    torn.write_text(src + src.splitlines()[1][:25])  # a killed run's half-written line
    assert len(P.read_rows(torn)) == 3


def test_default_reuses_its_resolved_rule(tmp_path: Path, ran: tuple[Path, list[object]]) -> None:
    import shutil
    from dataclasses import replace

    out = tmp_path / "d"
    shutil.copytree(ran[0], out)
    cell = _tiny()[0]
    default = replace(cell, rule="default")
    twin = replace(cell, rule=default.rule_resolved)  # pretend the fedavg row ran that rule
    (out / "results.csv").write_text(
        (out / "results.csv").read_text().replace(cell.key, twin.key, 1)
    )
    new = P.run_cells([default], out)
    assert len(new) == 1 and "same deterministic run" in str(new[0]["note"])
    assert (
        new[0]["honest_accuracy_mean"]
        == P.read_rows(out / "results.csv")[0]["honest_accuracy_mean"]
    )


_SAME = ("key", "honest_accuracy_mean", "honest_accuracy_min", "backdoor_asr", "malicious_nodes")


def test_jobs_run_cells_at_once_with_the_same_results(
    tmp_path: Path, ran: tuple[Path, list[dict[str, object]]]
) -> None:
    """Two cells at a time in spawned processes give the rows and curves of one at a time,
    record ``jobs``, and a ``default`` cell whose twin is still running is taken from it."""
    cells = _tiny()
    default = replace(cells[1], rule="default")
    twin = replace(cells[1], rule=default.rule_resolved)
    started: list[str] = []
    new = P.run_cells(
        [*cells, twin, default],
        tmp_path,
        jobs=2,
        on_start=lambda c, k, n: started.append(c.key),
    )
    assert started == [c.key for c in (*cells, twin, default)]
    rows = {r["key"]: r for r in P.read_rows(tmp_path / "results.csv")}
    assert len(new) == len(rows) == 5
    for r in P.read_rows(ran[0] / "results.csv"):  # the sequential run of the same cells
        assert {c: rows[r["key"]][c] for c in _SAME} == {c: r[c] for c in _SAME}
        assert rows[r["key"]]["jobs"] == "2" and r["jobs"] == "1"
    got = rows[default.key]
    assert "same deterministic run" in got["note"]
    assert got["honest_accuracy_mean"] == rows[twin.key]["honest_accuracy_mean"]
    curves = P._read_curves(tmp_path / "curves.jsonl")
    for key, curve in P._read_curves(ran[0] / "curves.jsonl").items():
        assert curves[key] == curve
    assert curves[default.key] == curves[twin.key] != []


def test_a_failing_cell_keeps_the_cells_that_ran_beside_it(tmp_path: Path) -> None:
    good = _tiny()[0]
    bad = replace(good, rule="no_such_rule")
    with pytest.raises(Exception, match="no_such_rule"):
        P.run_cells([bad, good], tmp_path, jobs=2)
    assert [r["key"] for r in P.read_rows(tmp_path / "results.csv")] == [good.key]


def test_resume_rewrites_an_older_header_before_appending(
    tmp_path: Path, ran: tuple[Path, list[dict[str, object]]]
) -> None:
    old_columns = [c for c in P.CSV_COLUMNS if c != "jobs"]
    old = P.read_rows(ran[0] / "results.csv")[:2]
    with (tmp_path / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=old_columns, lineterminator="\n")
        w.writeheader()
        for r in old:
            w.writerow({c: r[c] for c in old_columns})
    P.run_cells(_tiny(), tmp_path)  # runs the third cell only
    with (tmp_path / "results.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == P.CSV_COLUMNS
        rows = list(reader)
    assert [r["key"] for r in rows] == [c.key for c in _tiny()]
    assert [r["jobs"] for r in rows] == ["", "", "1"]
    for r, was in zip(rows[:2], old, strict=True):
        assert {c: r[c] for c in old_columns} == {c: was[c] for c in old_columns}
    assert float(rows[2]["honest_accuracy_mean"]) > 0 and rows[2]["finished_utc"]


def test_plots_and_markdown(ran: tuple[Path, list[object]], tmp_path: Path) -> None:
    out = ran[0]
    plots = P.plot_all(out)
    names = {p.name for p in plots}
    assert any(n.startswith("heatmap_") for n in names)
    assert any(n.startswith("curves_") for n in names)
    assert all(p.stat().st_size > 1000 for p in plots)
    rows = P.read_rows(out / "results.csv")
    md = P.render_markdown(rows)
    assert "| attack | fedavg | trimmed_mean |" in md and "backdoor ASR" in md
    path = P.write_results_section(rows, command="test", path=tmp_path / "RESULTS.md")
    text = path.read_text()
    assert "## Poisoning" in text and "### Goals" in text and "nproc=" in text


def test_cli_dry_run_and_resume(ran: tuple[Path, list[object]]) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["bench", "poisoning", "--quick", "--dry-run", "--out", "x"])
    assert res.exit_code == 0, res.output
    assert "quick mode" in res.output and f"{len(P.build_cells('quick'))} cells" in res.output
    assert "no time estimate" in res.output  # nothing finished in x/results.csv
    res = runner.invoke(main, ["bench", "poisoning", "--rules", "nope", "--dry-run"])
    assert res.exit_code == 1 and "unknown rule" in res.output
    res = runner.invoke(main, ["bench", "poisoning", "--quick", "--paper"])
    assert res.exit_code == 1
    args = ["bench", "poisoning", "--subset", "mlp", "--dry-run", "--out", "x", "--rules", "median"]
    res = runner.invoke(main, [*args, "--partitions", "iid", "--shares", "0,0.4"])
    assert res.exit_code == 0, res.output
    assert f"{len(P.ATTACK_NAMES)} cells (mlp)" in res.output  # none at 0, 11 attacks at 0.4
    res = runner.invoke(main, [*args, "--shares", "x"])
    assert res.exit_code == 1 and "--shares" in res.output
    res = runner.invoke(main, [*args, "--jobs", "-1"])
    assert res.exit_code == 2 and "--jobs" in res.output
    line = _estimate_line((3900.0, 2), workers=1, jobs=2, todo=5)
    assert "estimated 1 h 05 min" in line and "this run: --workers 1 --jobs 2" in line
    assert line.endswith("plus 2 cells with none like them finished")
    res = runner.invoke(main, [*args, "--partitions", "nope"])
    assert res.exit_code == 1 and "no cell matches" in res.output


def test_cli_jobs_zero_is_one_per_core(tmp_path: Path) -> None:
    from simulator.engine import available_cpus

    cell = P.build_cells("mlp", partitions=["iid"], shares=[0.1], rules=["median"])[0]
    P._append_row(tmp_path / "results.csv", {**P.cell_dict(cell), "key": cell.key,
                  "wall_seconds": "30", "finished_utc": "now"})  # fmt: skip
    args = ["bench", "poisoning", "--subset", "mlp", "--dry-run", "--out", str(tmp_path)]
    res = CliRunner().invoke(main, [*args, "--resume", "--jobs", "0"])
    assert res.exit_code == 0, res.output
    assert f"--jobs {available_cpus()})" in res.output.replace("\n", " ")


def test_estimate_uses_the_median_of_like_cells_and_skips_reusable_defaults() -> None:
    cells = [
        P._cell("mlp", "mnist", "mlp", "iid", 0.3, "sign_flip", rule, 0)
        for rule in ("fedavg", "median", "default")
    ]
    lenet = P._cell("lenet", "mnist", "lenet", "dirichlet:0.5", 0.3, "ipm", "fedavg", 0)

    def row(cell: P.Cell, seconds: str) -> dict[str, str]:
        return {
            "key": cell.key,
            "dataset": cell.dataset,
            "model": cell.model,
            "nodes": str(cell.nodes),
            "wall_seconds": seconds,
        }

    other = [P._cell("mlp", "mnist", "mlp", "iid", 0.1, "ipm", "krum", 0)]
    rows = [
        row(other[0], "10"),
        row(replace(other[0], seed=1), "30"),
        row(replace(other[0], seed=2), "200"),
    ]
    # three unfinished MLP cells at the median 30 s; the LeNet cell has nothing to go by
    assert P.estimate_seconds([*cells, lenet], rows) == (90.0, 1)
    # a finished cell costs nothing, nor does `default` once its resolved rule's twin is done
    twin = replace(cells[2], rule=cells[2].rule_resolved)
    rows += [row(cells[0], "20"), row(twin, "40")]
    assert P.estimate_seconds([*cells, lenet], rows) == (
        statistics.median([10, 30, 200, 20, 40]),
        1,
    )
    assert P.estimate_seconds([], rows) == (0.0, 0)
    # a row without a usable time is ignored
    assert P.estimate_seconds([cells[1]], [{**rows[0], "wall_seconds": ""}]) == (0.0, 1)
    # a row of a run with 2 cells at once counts half its wall time; older rows have no jobs
    halved = [{**rows[0], "jobs": "2"}, {**rows[1], "jobs": ""}]
    assert P.estimate_seconds([cells[1]], halved) == (statistics.median([5, 30]), 0)


def _goal_row(
    degree: int, attack: str, rule: str, share: str, acc: float, seed: int = 0, asr: str = ""
) -> dict[str, str]:
    cell = P._cell("goal", "mnist", "mlp", "dirichlet:0.5", float(share), attack, rule, seed)
    return {
        "key": cell.key + f"/k{degree}",
        "matrix": "goal",
        "dataset": "mnist",
        "model": "mlp",
        "partition": "dirichlet:0.5",
        "nodes": "20",
        "topology": "k_regular",
        "degree": str(degree),
        "malicious": share,
        "attack": attack,
        "rule": rule,
        "rule_resolved": rule,
        "seed": str(seed),
        "rounds": str(cell.rounds),
        "lr": "0.3",
        "local_epochs": "1",
        "honest_accuracy_mean": str(acc),
        "honest_accuracy_min": str(acc - 0.01),
        "backdoor_asr": asr,
    }


def test_tables_keep_graphs_apart_and_goals_read_the_matrix_degree() -> None:
    row = _goal_row
    rows = [
        row(4, "none", "fedavg", "0", 0.90),
        row(4, "ipm", "fedavg", "0.3", 0.80),
        row(P.MATRIX_DEGREE, "none", "fedavg", "0", 0.96),
        row(P.MATRIX_DEGREE, "ipm", "fedavg", "0.3", 0.955),
    ]
    md = P.render_markdown(rows, default_rule="fedavg")
    # one table per graph, never an average of the two degrees (85 % / 87.8 %)
    assert "degree 4" in md and f"degree {P.MATRIX_DEGREE}" in md
    assert "| ipm | 80.0 (79.0) |" in md and "| ipm | 95.5 (94.5) |" in md
    assert "87.8" not in md and "85.0" not in md
    report = P.goal_report(rows, "fedavg")
    assert "ipm" not in report.split("\n")[0]  # 95.5 % at the matrix degree: not a miss
    assert "96.0 % vs 96.0 %" in report
    # the clean-run goal must hold at every seed: a gap of 1.5 points at seed 1 is a miss
    worse = [*rows, row(P.MATRIX_DEGREE, "none", "fedavg", "0", 0.97, seed=1)]
    worse.append(
        {**worse[-1], "rule": "other", "rule_resolved": "other", "honest_accuracy_mean": "0.955"}
    )
    worse.append({**rows[2], "rule": "other", "rule_resolved": "other"})
    clean = P.goal_report(worse, "other").split("\n")[1]
    assert "(seed 1, gap +1.5)" in clean and clean.endswith("**missed**")


def test_tables_and_goals_show_the_lowest_seed_and_the_seeds_table_shows_all() -> None:
    k = P.MATRIX_DEGREE
    rows = [
        _goal_row(k, "none", "fedavg", "0", 0.96, seed=1),
        _goal_row(k, "none", "fedavg", "0", 0.97, seed=0),
        _goal_row(k, "sign_flip", "fedavg", "0.3", 0.951, seed=0),
        _goal_row(k, "sign_flip", "fedavg", "0.3", 0.90, seed=1),
        _goal_row(k, "sign_flip", "fedavg", "0.3", 0.92, seed=2),
        _goal_row(k, "backdoor", "fedavg", "0.3", 0.96, seed=0, asr="0.99"),
        _goal_row(k, "backdoor", "fedavg", "0.3", 0.95, seed=3, asr="0.5"),
        _goal_row(k, "ipm", "fedavg", "0.3", 0.955, seed=0),  # one seed: not in the spread
    ]
    md = P.render_markdown(rows, default_rule="fedavg")
    assert "| sign_flip | 95.1 (94.1) |" in md and "| none | 97.0 (96.0) |" in md
    assert "| backdoor ASR | 99.0 |" in md
    report = P.goal_report(rows, "fedavg")
    goal = report.split("\n")[0]
    # every seed is judged: seed 0 on all cells (missing ones are misses), higher seeds on theirs
    s0, s1, s2, s3 = goal.split(": ", 1)[1].split("; ")
    assert s0.startswith("seed 0 **missed**: ") and "label_flip (not run)" in s0
    assert "sign_flip" not in s0 and "ipm" not in s0
    n = len(P.ATTACK_NAMES)
    assert s1 == f"seed 1 (2 of {n} cells run) **missed**: sign_flip 90.00 %"
    assert s2 == f"seed 2 (1 of {n} cells run) **missed**: sign_flip 92.00 %"
    assert s3 == f"seed 3 (1 of {n} cells run) **met**"
    clean = report.split("\n")[1]
    assert "97.0 % vs 97.0 % (seed 0, gap +0.0); 96.0 % vs 96.0 % (seed 1, gap +0.0)" in clean
    assert clean.endswith("**met**")
    assert "default 99.0 % vs undefended fedavg 99.0 % (seed 0); default 50.0 %" in report
    spread = P.seed_spread(rows).splitlines()
    assert len(spread) == 2 + 3 and not any("ipm" in line for line in spread)
    sign = next(line for line in spread if "| sign_flip |" in line)
    assert "0: 95.1 (94.1), 1: 90.0 (89.0), 2: 92.0 (91.0) | 92.4 | 90.0-95.1 |" in sign
    back = next(line for line in spread if "| backdoor |" in line)
    assert back.endswith("| 0: 99.0, 3: 50.0 |")
    assert P.seed_spread(rows[-1:]) == ""


def test_each_group_ranks_its_rules_by_their_worst_attack() -> None:
    k = P.MATRIX_DEGREE

    def row(attack: str, rule: str, acc: float, asr: str = "", seed: int = 0) -> dict[str, str]:
        share = "0" if attack == "none" else "0.3"
        return _goal_row(k, attack, rule, share, acc, seed=seed, asr=asr)

    rows = [
        row("none", "fedavg", 0.97),
        row("ipm", "fedavg", 0.96),
        row("scaling", "fedavg", 0.10),
        row("backdoor", "fedavg", 0.96, asr="0.99"),
        row("ipm", "krum", 0.90),
        row("scaling", "krum", 0.91),
        row("backdoor", "krum", 0.93, asr="0.20"),
        row("ipm", "krum", 0.50, seed=1),  # not the shown seed
        row("ipm", "median", 0.95),  # two of three attacks: unranked, last
        row("scaling", "median", 0.94),
        row("ipm", "dfl", 0.90),  # ties with krum's worst attack: the same rank
        row("scaling", "dfl", 0.95),
        row("backdoor", "dfl", 0.92, asr="0.5"),
    ]
    md = P.render_markdown(rows, default_rule="fedavg")
    table = md.split("Ranked by the worst attack:\n\n")[1].strip().splitlines()
    assert table[2:] == [
        "| 1 | dfl | ipm 90.0 (89.0) | 92.3 |  | 50.0 |",
        "| 1 | krum | ipm 90.0 (89.0) | 91.3 |  | 20.0 |",
        "| 3 | fedavg | scaling 10.0 (9.0) | 67.3 | 97.0 (96.0) | 99.0 |",
        "|  | median | scaling 94.0 (93.0); 2 of 3 attacks run | 94.5 |  |  |",
    ]
    # a `default` column is the default rule's own runs: ranked once, under `default`
    aliased = [{**r, "rule": "default"} for r in rows if r["rule"] == "krum"]
    ranked = P.render_markdown(rows + aliased, default_rule="krum").split("Ranked by")[1]
    assert "| default | ipm 90.0 (89.0) |" in ranked and "| krum |" not in ranked
    # nothing to rank with one attack or one rule
    assert "Ranked by" not in P.render_markdown([r for r in rows if r["attack"] == "ipm"])
    assert "Ranked by" not in P.render_markdown([r for r in rows if r["rule"] == "fedavg"])


def test_merge_keeps_the_last_version_of_each_cell_and_relabels_goal_rows(tmp_path: Path) -> None:
    from benchmarks import merge_poisoning as M

    def row(key: str, matrix: str, degree: int, acc: str) -> dict[str, object]:
        return {
            "key": key,
            "matrix": matrix,
            "dataset": "mnist",
            "model": "mlp",
            "nodes": 20,
            "degree": degree,
            "honest_accuracy_mean": acc,
            "finished_utc": "2026-11-22T00:00:00Z",
        }

    a, b = tmp_path / "a", tmp_path / "b"
    for d, rows in (
        (a, [row("k1", "goal", 8, "0.5"), row("k2", "goal", 4, "0.6")]),
        (b, [row("k1", "mlp", 8, "0.7"), row("k3", "mlp", 8, "0.8")]),
    ):
        d.mkdir()
        for r in rows:
            P._append_row(d / "results.csv", r)
            P._append_line(d / "curves.jsonl", json.dumps({"key": r["key"], "curve": [[1]]}) + "\n")
    rows, curves = M.merge_rows([a, b])
    got = {r["key"]: (r["matrix"], r["honest_accuracy_mean"]) for r in rows}
    assert got == {"k1": ("mlp", "0.7"), "k2": ("goal", "0.6"), "k3": ("mlp", "0.8")}
    assert [r["key"] for r in rows] == ["k1", "k2", "k3"]
    M.write_merged(rows, curves, tmp_path / "out")
    assert [r["key"] for r in P.read_rows(tmp_path / "out" / "results.csv")] == ["k1", "k2", "k3"]
    lines = (tmp_path / "out" / "curves.jsonl").read_text().splitlines()
    assert [json.loads(x)["key"] for x in lines] == ["k1", "k2", "k3"]
    md = tmp_path / "R.md"
    md.write_text("## Poisoning\n\nCommand: x  \nCells in the CSV: 3\n\nmy notes\n\n### Goals\n\n")
    assert M.current_notes(md) == "my notes"
    named = "my notes (the `### Goals` below)\n\nmore"
    md.write_text(f"## Poisoning\n\nCommand: x  \nCells in the CSV: 3\n\n{named}\n\n### Goals\n\n")
    assert M.current_notes(md) == named  # a note naming the heading is kept whole
    assert M.current_notes(tmp_path / "missing.md") == ""


def test_merge_follows_the_current_default_rule() -> None:
    from benchmarks import merge_poisoning as M

    def key(attack: str, rule: str) -> str:
        return f"mnist/mlp/dirichlet:0.5/n20/k_regular8/m0.3/{attack}/{rule}/s0/r20/lr0.3/e1/b32"

    def row(attack: str, rule: str, resolved: str, acc: str, t: str = "1") -> dict[str, str]:
        name = "default" if rule.startswith("default=") else rule
        return {"key": key(attack, rule), "rule": name, "rule_resolved": resolved,
                "honest_accuracy_mean": acc, "finished_utc": t, "note": ""}  # fmt: skip

    rows = [
        row("ipm", "default=old", "old", "0.1"),  # twin present: dropped
        row("ipm", "old", "old", "0.1"),
        row("alie", "default=old", "old", "0.2"),  # twin missing: renamed
        row("gaussian", "default=old", "old", "0.25", t="2"),  # re-run as default: it wins
        row("gaussian", "old", "old", "0.2"),
        row("ipm", "new", "new", "0.3"),  # gets a default alias
        row("alie", "new", "new", "0.4"),
        row("alie", "default=new", "new", "0.4"),  # alias already there
        row("scaling", "new", "new", "0.55", t="2"),  # re-run under its own name
        row("scaling", "default=new", "new", "0.5"),  # an older alias follows it
        row("label_flip", "default=new", "new", "0.65", t="2"),  # re-run as default
        row("label_flip", "new", "new", "0.6"),  # the own row follows it
    ]
    curves = {
        r["key"]: json.dumps({"key": r["key"], "curve": [[float(r["honest_accuracy_mean"])]]})
        for r in rows
    }
    out = M.follow_default(rows, curves, "new")
    got = sorted((r["key"].split("/")[6], r["rule"], r["honest_accuracy_mean"]) for r in out)
    assert got == [
        ("alie", "default", "0.4"),
        ("alie", "new", "0.4"),
        ("alie", "old", "0.2"),
        ("gaussian", "old", "0.25"),
        ("ipm", "default", "0.3"),
        ("ipm", "new", "0.3"),
        ("ipm", "old", "0.1"),
        ("label_flip", "default", "0.65"),
        ("label_flip", "new", "0.65"),
        ("scaling", "default", "0.55"),
        ("scaling", "new", "0.55"),
    ]
    assert len({r["key"] for r in out}) == len(out)
    for r in out:  # every row's curve is its run's, under its key
        assert json.loads(curves[r["key"]]) == {
            "key": r["key"], "curve": [[float(r["honest_accuracy_mean"])]]
        }  # fmt: skip
    alias = key("ipm", "default=new")
    assert next(r for r in out if r["key"] == alias)["note"].startswith("same deterministic run")
    assert next(r for r in out if r["key"] == key("label_flip", "new"))["note"] == ""


def _as_row(cell: P.Cell, workers: int = 2) -> dict[str, str]:
    d = {k: str(v) for k, v in P.cell_dict(cell).items()}
    d.update(
        key=cell.key,
        malicious=f"{cell.malicious:g}",
        lr=f"{cell.lr:g}",
        rule_resolved=cell.rule_resolved,
        workers=str(workers),
    )
    return d


def test_every_cell_and_every_committed_row_rebuilds_as_its_cell() -> None:
    cells = P.build_cells("all", seeds=(0, 2)) + P.build_cells("quick")
    for cell in cells:
        back = P.Cell.from_row(_as_row(cell))
        if cell.rule == "default":  # runs the rule it names, under that rule's own key
            assert back == replace(cell, rule=cell.rule_resolved)
        else:
            assert back == cell
    committed = P.read_rows(RESULTS_DIR / "poisoning.csv")
    assert len(committed) > 500
    for row in committed:  # every recorded result can be run again
        cell = P.Cell.from_row(row)
        assert cell.key == P.key_with_rule(row["key"], cell.rule)
    bad = {**_as_row(cells[0]), "seed": "7"}
    with pytest.raises(ValueError, match="rebuilds as cell"):
        P.Cell.from_row(bad)


def test_rerun_selects_runs_and_compares(
    ran: tuple[Path, list[dict[str, object]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import rerun_poisoning as R

    rows = P.read_rows(ran[0] / "results.csv")
    assert [r["rule"] for r in R.select(rows, rules=["trimmed_mean"])] == ["trimmed_mean"]
    assert len(R.select(rows, recorded_workers=["1"])) == 3
    assert R.select(rows, recorded_workers=["2"]) == []
    first = min(r["finished_utc"] for r in rows)
    assert R.select(rows, finished_before=first) == []
    assert len(R.select(rows, finished_before="9999")) == 3
    aliased = [*rows, {**rows[0], "rule": "default"}]
    assert len(R.select(aliased)) == 3  # default aliases are their rule's run
    csv_path = ran[0] / "results.csv"
    args = ["--csv", str(csv_path), "--out", str(tmp_path / "r"), "--rules", "trimmed_mean"]
    assert R.main([*args, "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 cells re-run; 1 with the same numbers." in out
    again = P.read_rows(tmp_path / "r" / "results.csv")
    assert len(again) == 1 and again[0]["key"] == rows[2]["key"]
    assert again[0]["honest_accuracy_mean"] == rows[2]["honest_accuracy_mean"]
    assert (tmp_path / "r" / "compare.md").read_text().count("| yes |") == 1
    assert R.main([*args, "--dry-run"]) == 0  # resumes: nothing left to run
    assert "1 recorded cells selected, 0 to run" in capsys.readouterr().out
