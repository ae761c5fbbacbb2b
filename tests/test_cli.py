"""The command line: init, chain show/verify (with tampering), config errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dfl.block import Verdict, make_block
from dfl.cli import main
from dfl.config import task_manifest
from dfl.crypto import Identity, blake2b256
from dfl.node.home import Home
from dfl.node.store import LmdbStore

runner = CliRunner()


def test_help_everywhere() -> None:
    for args in (
        [],
        ["init"],
        ["chain"],
        ["chain", "show"],
        ["chain", "verify"],
        ["sim", "run"],
        ["node", "run"],
        ["node", "status"],
        ["testbed"],
        ["data"],
    ):
        res = runner.invoke(main, [*args, "--help"])
        assert res.exit_code == 0, (args, res.output)
        assert "Usage:" in res.output


def test_version() -> None:
    res = runner.invoke(main, ["version"])
    assert res.exit_code == 0 and res.output.startswith("dfl ")


def test_init_then_verify(tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = runner.invoke(main, ["init", "--home", str(home), "--network", "net-a"])
    assert res.exit_code == 0, res.output
    peer_id = res.output.split()[2]
    assert peer_id.startswith("12D3KooW")
    key = home / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Home(home).identity().peer_id == peer_id
    cfg = Home(home).config()
    assert cfg.task.network == "net-a"
    # refuses to overwrite the key without --force, and keeps it
    before = key.read_bytes()
    res = runner.invoke(main, ["init", "--home", str(home)])
    assert res.exit_code == 1 and "already exists" in res.output
    assert key.read_bytes() == before
    res = runner.invoke(main, ["init", "--home", str(home), "--force"])
    assert res.exit_code == 0 and key.read_bytes() != before
    res = runner.invoke(main, ["chain", "verify", "--home", str(home)])
    assert res.exit_code == 0, res.output
    assert "ok: 0 blocks" in res.output


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert runner.invoke(main, ["init", "--home", str(home)]).exit_code == 0
    cfg = home / "config.toml"
    cfg.write_text(cfg.read_text().replace("timeout_s = 10.0", "timeout_s = -1.0"))
    res = runner.invoke(main, ["chain", "verify", "--home", str(home)])
    assert res.exit_code == 1
    assert "round.timeout_s" in res.output and "config.toml" in res.output
    cfg.write_text("[task]\nmodle = 'mlp'\n")
    res = runner.invoke(main, ["chain", "show", "--home", str(home)])
    assert res.exit_code == 1 and "task.modle" in res.output
    assert "Traceback" not in res.output


def _populate(home_dir: Path, n_own: int = 4, n_peer: int = 3) -> tuple[Home, list, list]:
    home = Home(home_dir)
    assert runner.invoke(main, ["init", "--home", str(home_dir)]).exit_code == 0
    ident = home.identity()
    net = task_manifest(home.config()).network_id()
    peer = Identity.from_seed(blake2b256(b"peer"))
    rng = np.random.default_rng(0)
    peer_blocks = []
    prev = b"\0" * 32
    for h in range(n_peer):
        m = rng.normal(size=64).astype(np.float32)
        b = make_block(
            peer,
            network=net,
            height=h,
            prev=prev,
            round=h,
            timestamp_ms=1000 + h,
            model=m,
            samples=5,
        )
        peer_blocks.append((b, m.astype("<f4").tobytes()))
        prev = b.hash
    own_blocks = []
    prev = b"\0" * 32
    for h in range(n_own):
        m = rng.normal(size=64).astype(np.float32)
        verdicts = [Verdict(peer_blocks[h - 1][0].hash, True, 1.0, "ok")] if 0 < h <= n_peer else []
        b = make_block(
            ident,
            network=net,
            height=h,
            prev=prev,
            round=h,
            timestamp_ms=1000 + h,
            model=m,
            samples=5,
            parents=[v.block for v in verdicts],
            verdicts=verdicts,
        )
        own_blocks.append((b, m.astype("<f4").tobytes()))
        prev = b.hash
    path = home.store_path()
    path.mkdir(parents=True)
    with LmdbStore(path, own_author=ident.public_key) as store:
        for b, blob in own_blocks:
            store.put(b, blob)
        for b, blob in peer_blocks:
            store.put(b, blob)
    return home, own_blocks, peer_blocks


def test_chain_show_json(tmp_path: Path) -> None:
    home, own, peer = _populate(tmp_path / "h")
    res = runner.invoke(main, ["chain", "show", "--home", str(home.path), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert len(rows) == len(own) + len(peer)
    by_hash = {r["hash"]: r for r in rows}
    b = own[2][0]
    r = by_hash[b.hash.hex()]
    assert r["author"] == b.author.hex() and r["height"] == 2 and r["round"] == 2
    assert r["parents"] == [peer[1][0].hash.hex()] and r["accepted"] == r["parents"]
    assert r["rejected"] == [] and r["model_digest"] == b.model_digest.hex()
    res = runner.invoke(main, ["chain", "show", "--home", str(home.path)])
    assert res.exit_code == 0 and "blocks" in res.output


def _occurrences(data: bytes, needle: bytes) -> list[int]:
    """Every copy of a record in the file (LMDB's copy-on-write can leave stale copies)."""
    found, at = [], data.find(needle)
    while at >= 0:
        found.append(at)
        at = data.find(needle, at + 1)
    assert found, "record not found in data.mdb"
    return found


@pytest.mark.parametrize("what", ["own-block", "peer-block", "own-blob", "peer-blob"])
def test_any_flipped_byte_is_reported(tmp_path: Path, what: str) -> None:
    home, own, peer = _populate(tmp_path / "h")
    mdb = home.store_path() / "data.mdb"
    pristine = mdb.read_bytes()
    src = own if what.startswith("own") else peer
    block, blob = src[1]
    needle = block.encoded() if what.endswith("block") else blob
    starts = _occurrences(pristine, needle)
    step = max(1, len(needle) // 12)
    for pos in range(0, len(needle), step):
        data = bytearray(pristine)
        for at in starts:
            data[at + pos] ^= 0x20
        mdb.write_bytes(bytes(data))
        res = runner.invoke(main, ["chain", "verify", "--home", str(home.path)])
        assert res.exit_code == 1, (what, pos, res.output)
        assert "INVALID" in res.output or "chain verify" in res.output
        assert "Traceback" not in res.output
    mdb.write_bytes(pristine)
    res = runner.invoke(main, ["chain", "verify", "--home", str(home.path)])
    assert res.exit_code == 0, res.output


def test_verify_names_author_height_and_reason(tmp_path: Path) -> None:
    home, own, _ = _populate(tmp_path / "h")
    ident = home.identity()
    net = task_manifest(home.config()).network_id()
    # a block whose prev does not link: committed directly into the store
    bad = make_block(
        ident,
        network=net,
        height=len(own),
        prev=b"\1" * 32,
        round=9,
        timestamp_ms=5000,
        model=np.zeros(64, np.float32),
        samples=5,
    )
    with LmdbStore(home.store_path(), own_author=ident.public_key) as store:
        store.put(bad, np.zeros(64, np.float32).tobytes())
    res = runner.invoke(main, ["chain", "verify", "--home", str(home.path)])
    assert res.exit_code == 1
    assert ident.public_key.hex()[:16] in res.output
    assert f"height {len(own)}" in res.output and "prev-mismatch" in res.output


def test_truncated_store_is_a_clear_error(tmp_path: Path) -> None:
    home, _, _ = _populate(tmp_path / "h")
    mdb = home.store_path() / "data.mdb"
    with open(mdb, "r+b") as fh:
        fh.truncate(os.path.getsize(mdb) // 3)
    res = runner.invoke(main, ["chain", "verify", "--home", str(home.path)])
    assert res.exit_code == 1
    assert "data.mdb" in res.output and "Traceback" not in res.output
