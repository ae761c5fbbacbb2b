"""Real daemons as separate processes on 127.0.0.1: convergence, crash recovery, audit.

Every test is bounded in time (pytest-timeout and explicit waits) and uses loopback only.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dfl.cli import main
from dfl.commands.testbed import (
    accuracy_table,
    prepare_testbed,
    start_testbed,
    stop_testbed,
    wait_testbed,
)
from dfl.node.home import Home
from dfl.node.store import LmdbStore

TASK = {"task": {"dataset": "digits", "model": "logreg", "partition": "iid", "lr": 0.2}}


def _cfg(timeout_s: float, max_updates: int) -> dict[str, dict[str, object]]:
    return {**TASK, "round": {"timeout_s": timeout_s, "max_updates": max_updates}}


def _own_chain(home_dir: Path) -> list:  # type: ignore[type-arg]
    home = Home(home_dir)
    ident = home.identity()
    with LmdbStore(home.store_path(), own_author=ident.public_key) as store:
        return list(store.iter_chain(ident.public_key))


def _authors_of(home_dir: Path, hashes: set[bytes]) -> set[bytes]:
    home = Home(home_dir)
    with LmdbStore(home.store_path(), own_author=home.identity().public_key) as store:
        return {b.author for h in hashes if (b := store.get(h)) is not None}


@pytest.mark.timeout(240)
def test_three_daemons_converge_and_chains_verify(tmp_path: Path) -> None:
    specs = prepare_testbed(tmp_path, 3, extra_config=_cfg(20.0, 2))
    start_testbed(specs, rounds=6, attack=None, extra_args=("--linger", "3"))
    try:
        assert wait_testbed(specs, 200), "daemons did not finish in time"
    finally:
        stop_testbed(specs)
    logs = {s.index: (s.home / "node.log").read_text() for s in specs}
    assert [s.proc.returncode for s in specs if s.proc] == [0, 0, 0], logs
    table = accuracy_table(specs)
    for s in specs:
        chain = _own_chain(s.home)
        assert [b.height for b in chain] == list(range(6))
        parents = {p for b in chain for p in b.parents}
        others = {o.home for o in specs if o.index != s.index}
        authors = _authors_of(s.home, parents)
        assert Home(s.home).identity().public_key not in authors
        assert len(authors) == 2, f"node {s.index} averaged in {len(authors)} other authors"
        assert others
        res = CliRunner().invoke(main, ["chain", "verify", "--home", str(s.home)])
        assert res.exit_code == 0, res.output
        assert table[s.index][5] > 0.8, table
        status = json.loads((s.home / "status.json").read_text())
        # status counts every round's verdicts, the chain those of rounds 0..4 (round 5's
        # aggregation is recorded by the block a 7th round would make)
        signed_accepts = sum(v.accepted for b in chain for v in b.verdicts)
        assert status["height"] == 5
        assert status["accepted_total"] >= signed_accepts >= 5


@pytest.mark.timeout(300)
def test_sigkill_restart_continues_the_chain(tmp_path: Path) -> None:
    specs = prepare_testbed(tmp_path, 2, extra_config=_cfg(4.0, 1))
    start_testbed(specs, rounds=None, attack=None)
    victim = specs[1]
    try:
        deadline = time.monotonic() + 150
        committed: list = []  # type: ignore[type-arg]
        while time.monotonic() < deadline:
            time.sleep(1.0)
            try:
                st = json.loads((victim.home / "status.json").read_text())
            except (OSError, ValueError):
                continue
            if st.get("height", -1) >= 2:
                break
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)
        committed = _own_chain(victim.home)
        assert len(committed) >= 3
        # restart for 2 more rounds: it resumes after its last committed block
        start_testbed([victim], rounds=2, attack=None, extra_args=("--linger", "2"))
        assert wait_testbed([victim], 150)
        assert victim.proc.returncode == 0, (victim.home / "node.log").read_text()[-3000:]
    finally:
        stop_testbed(specs)
    after = _own_chain(victim.home)
    assert [b.hash for b in after[: len(committed)]] == [b.hash for b in committed]
    assert len(after) == len(committed) + 2
    assert after[len(committed)].round > committed[-1].round
    res = CliRunner().invoke(main, ["chain", "verify", "--home", str(victim.home)])
    assert res.exit_code == 0, res.output
