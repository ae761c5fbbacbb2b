"""A hostile peer against two real honest daemons on 127.0.0.1.

Hostile peer A speaks the protocol but lies: a block whose model has NaN values, a block whose
model has the wrong shape, then two different blocks at one height (equivocation). Hostile peer
B sends garbage, a forged signature and an oversized header. The honest daemons must reject and
penalize all of it, record the equivocation proof, keep training to the same accuracy, and keep
chains that `dfl chain verify` accepts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import trio
from click.testing import CliRunner

from dfl.block import encode, make_block
from dfl.chain import Equivocation
from dfl.cli import main
from dfl.commands.testbed import prepare_testbed, start_testbed, stop_testbed, wait_testbed
from dfl.config import task_manifest
from dfl.crypto import Identity, blake2b256
from dfl.learning.data import load_dataset
from dfl.learning.models import get_model
from dfl.node.home import Home
from dfl.node.store import LmdbStore
from dfl.p2p.host import HostConfig, open_host


def _status(home: Path) -> dict:  # type: ignore[type-arg]
    try:
        return json.loads((home / "status.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


@pytest.mark.timeout(300)
def test_hostile_peers_are_rejected_and_honest_nodes_keep_learning(tmp_path: Path) -> None:
    cfg_over = {
        "task": {"dataset": "digits", "model": "logreg", "partition": "iid", "lr": 0.2},
        "round": {"timeout_s": 5.0, "max_updates": 1, "min_interval_s": 2.0},
    }
    specs = prepare_testbed(tmp_path, 2, extra_config=cfg_over)
    home0 = Home(specs[0].home)
    cfg = home0.config()
    network = task_manifest(cfg).network_id()
    topic = f"/dfl/{network.hex()}/headers/1"
    data = load_dataset("digits")
    num_params = get_model("logreg", data.input_shape, data.num_classes).num_params
    start_testbed(specs, rounds=14, attack=None, extra_args=("--linger", "3"))
    evil_a = Identity.from_seed(blake2b256(b"evil-a"))
    evil_b = Identity.from_seed(blake2b256(b"evil-b"))
    blobs: dict[bytes, bytes] = {}

    def block(ident: Identity, height: int, prev: bytes, rnd: int, blob: bytes) -> bytes:
        b = make_block(
            ident,
            network=network,
            height=height,
            prev=prev,
            round=rnd,
            timestamp_ms=int(time.time() * 1000),
            model=blob,
            samples=50,
        )
        blobs[b.model_digest] = blob
        return encode(b)

    async def attack() -> None:
        with trio.fail_after(150):
            while not all(_status(s.home).get("round", 0) >= 1 for s in specs):
                await trio.sleep(0.5)
            rnd = _status(specs[0].home)["round"]
            nan = np.zeros(num_params, np.float32)
            nan[7] = np.nan
            nan_blob = nan.astype("<f4").tobytes()
            short_blob = np.zeros(num_params - 3, np.float32).tobytes()
            boot = tuple(s.addr for s in specs)
            cfg_a = HostConfig(seed=evil_a.seed, topic=topic, bootstrap=boot)
            cfg_b = HostConfig(
                seed=evil_b.seed, topic=topic, bootstrap=boot, max_header_bytes=256 * 1024
            )
            async with open_host(cfg_a, validate=lambda o, d: True, serve_blob=blobs.get) as host_a:
                while len(host_a.mesh_peers()) < 2:
                    await trio.sleep(0.2)
                # a NaN model, then a wrong-shape one (its own height), each one penalty of 5:
                # under the ban threshold of 10 only thanks to decay, so keep them apart...
                b0 = block(evil_a, 0, b"\0" * 32, rnd, nan_blob)
                await host_a.publish(b0)
                await trio.sleep(2.5)
                # ...and equivocate at height 1 right away, before the second penalty can ban A
                ones = np.ones(num_params, np.float32).tobytes()
                b1 = block(evil_a, 1, blake2b256(b0), rnd + 1, short_blob)
                b1x = block(evil_a, 1, blake2b256(b0), rnd + 1, ones)
                await host_a.publish(b1)
                await trio.sleep(0.3)
                await host_a.publish(b1x)
                await trio.sleep(3)
            async with open_host(cfg_b, validate=lambda o, d: True, serve_blob=blobs.get) as host_b:
                while len(host_b.mesh_peers()) < 2:
                    await trio.sleep(0.2)
                await host_b.publish(b"\x93garbage that is not a block")
                forged = bytearray(block(evil_b, 0, b"\0" * 32, rnd, nan_blob))
                forged[-3] ^= 0xFF
                await host_b.publish(bytes(forged))
                await host_b.publish(b"\x00" * (100 * 1024))
                await trio.sleep(3)

    try:
        trio.run(attack)
        assert wait_testbed(specs, 150), "honest daemons did not finish"
    finally:
        stop_testbed(specs)
    for s in specs:
        log = (s.home / "node.log").read_text()
        assert s.proc is not None and s.proc.returncode == 0, log[-3000:]
        st = _status(s.home)
        core_stats = st["stats"]
        assert core_stats["core_blobs_invalid"] >= 1, core_stats  # NaN and/or wrong shape
        assert core_stats["core_equivocations"] == 1, core_stats
        assert core_stats["gossip_rejected"] + core_stats["gossip_oversized"] >= 1, core_stats
        assert core_stats["penalties"] >= 2, core_stats
        home = Home(s.home)
        ident = home.identity()
        with LmdbStore(home.store_path(), own_author=ident.public_key) as store:
            ev = store.evidence()
            assert evil_a.public_key in ev
            assert Equivocation.decode(ev[evil_a.public_key]).verify()
            own = list(store.iter_chain(ident.public_key))
            assert len(own) == 14
            rejected = {v.reason for b in own for v in b.verdicts if not v.accepted}
            evil_blocks = {b.hash for b in store.iter_chain(evil_a.public_key)}
            assert not any(p in evil_blocks for b in own for p in b.parents)
            assert rejected, "the NaN / wrong-shape models were not recorded as rejected"
            acc = dict(own[-1].metrics)["val_accuracy"]
        assert acc > 0.8, acc
        res = CliRunner().invoke(main, ["chain", "verify", "--home", str(s.home)])
        assert res.exit_code == 0, res.output
