"""The one contract test of :mod:`dfl.node.store`: every BlockStore passes the same tests.

Tests taking the ``open_store_`` fixture run against both implementations; the ``lmdb``-only
tests at the end cover what only a persistent store can get wrong (reopen, corruption on disk,
truncation, map growth, SIGKILL mid-write).
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfl.block import ZERO_HASH, Block, make_block
from dfl.crypto import Identity, blake2b256
from dfl.errors import InvalidBlock, StoreError, UsageError
from dfl.node.store import (
    FORMAT,
    BlockStore,
    ConflictError,
    LmdbStore,
    MemoryStore,
    open_store,
)

NETWORK = b"\x42" * 32
REPO = Path(__file__).resolve().parents[2]

Factory = Callable[..., BlockStore]


@functools.cache
def ident(i: int) -> Identity:
    return Identity.from_seed(bytes([i + 1]) * 32)


def author(i: int) -> bytes:
    return ident(i).public_key


@functools.cache
def mk(who: int, height: int, variant: int = 0, floats: int = 64) -> tuple[Block, bytes]:
    """A signed block of author ``who`` at ``height`` and its blob (distinct per variant)."""
    model = np.full(floats, who * 1000 + height + variant / 4, dtype=np.float32)
    model[0] = variant
    blob = model.tobytes()
    block = make_block(
        ident(who),
        network=NETWORK,
        height=height,
        prev=ZERO_HASH,
        round=height,
        timestamp_ms=1_700_000_000_000 + height,
        model=blob,
        samples=10 + variant,
    )
    return block, blob


@pytest.fixture(params=["memory", "lmdb"])
def open_store_(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Open a fresh store of each kind (LMDB non-durable: fast, same code paths)."""
    opened: list[BlockStore] = []

    def factory(**kw: object) -> BlockStore:
        if request.param == "memory":
            store: BlockStore = MemoryStore(**kw)  # type: ignore[arg-type]
        else:
            store = LmdbStore(tmp_path / "store", durable=False, **kw)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


# --- blocks ---------------------------------------------------------------------------------


def test_is_a_block_store(open_store_: Factory) -> None:
    assert isinstance(open_store_(), BlockStore)


def test_round_trip_by_hash_and_position(open_store_: Factory) -> None:
    s = open_store_()
    b, blob = mk(0, 0)
    assert s.get(b.hash) is None and not s.has(b.hash) and s.count() == 0
    s.put(b, blob)
    got = s.get(b.hash)
    assert got == b and got is not None and got.hash == b.hash
    assert got.signature == b.signature and got.model_digest == b.model_digest
    assert s.has(b.hash)
    assert s.get_at(author(0), 0) == b
    assert s.get_at(author(0), 1) is None
    assert s.get_at(author(1), 0) is None
    assert s.get_blob(b.model_digest) == blob
    assert s.count() == 1


def test_heads_advance_and_out_of_order_puts(open_store_: Factory) -> None:
    s = open_store_()
    assert s.head(author(0)) is None
    for h in (0, 1):
        s.put(*mk(0, h))
        assert s.head(author(0)) == mk(0, h)[0]
    s.put(*mk(0, 5))
    s.put(*mk(0, 3))  # an older block arriving late does not move the head back
    head = s.head(author(0))
    assert head is not None and head.height == 5
    assert s.head(author(1)) is None


def test_gaps_and_iteration_order(open_store_: Factory) -> None:
    s = open_store_()
    for h in (7, 0, 3):
        s.put(mk(0, h)[0])  # headers only: a peer's partial chain
    s.put(*mk(1, 2))
    assert [b.height for b in s.iter_chain(author(0))] == [0, 3, 7]
    assert [b.height for b in s.iter_chain(author(0), start=1)] == [3, 7]
    assert [b.height for b in s.iter_chain(author(0), start=7)] == [7]
    assert list(s.iter_chain(author(0), start=8)) == []
    assert list(s.iter_chain(author(2))) == []
    assert s.get_at(author(0), 1) is None
    assert s.authors() == sorted([author(0), author(1)])
    expected = sorted(
        [mk(0, h)[0] for h in (0, 3, 7)] + [mk(1, 2)[0]], key=lambda b: (b.author, b.height)
    )
    assert [b.hash for b in s.all_blocks()] == [b.hash for b in expected]
    assert s.count() == 4
    assert not s.has_blob(mk(0, 0)[0].model_digest)


def test_iteration_spans_many_read_chunks(open_store_: Factory) -> None:
    s = open_store_()
    n = 600  # more than the store's per-transaction chunk
    s.put_many((mk(0, h, floats=4)[0], None) for h in range(n))
    assert [b.height for b in s.iter_chain(author(0))] == list(range(n))
    assert [b.height for b in s.iter_chain(author(0), start=257)] == list(range(257, n))
    assert sum(1 for _ in s.all_blocks()) == n == s.count()


def test_put_is_idempotent(open_store_: Factory) -> None:
    s = open_store_()
    b, blob = mk(0, 0)
    s.put(b)
    s.put(b)
    s.put(b, blob)  # the blob may arrive after the header
    s.put(b, blob)
    assert s.count() == 1 and s.get_blob(b.model_digest) == blob
    assert list(s.blob_digests()) == [b.model_digest]


def test_conflict_raises_with_existing_block_and_changes_nothing(open_store_: Factory) -> None:
    s = open_store_()
    first, blob1 = mk(0, 3, variant=0)
    second, blob2 = mk(0, 3, variant=1)
    assert first.hash != second.hash
    s.put(first, blob1)
    with pytest.raises(ConflictError) as info:
        s.put(second, blob2)
    assert isinstance(info.value, StoreError)
    assert info.value.existing == first and info.value.new == second
    assert info.value.existing.signature == first.signature
    assert s.get_at(author(0), 3) == first
    assert s.get(second.hash) is None
    assert not s.has_blob(second.model_digest)
    assert s.count() == 1


def test_put_many_is_atomic(open_store_: Factory) -> None:
    s = open_store_()
    s.put(*mk(0, 0))
    batch = [mk(1, 0), mk(1, 1), mk(0, 0, variant=1)]  # the last one conflicts
    with pytest.raises(ConflictError):
        s.put_many(batch)
    assert s.count() == 1 and s.authors() == [author(0)]
    assert not s.has_blob(mk(1, 0)[0].model_digest)
    with pytest.raises(ConflictError) as info:  # a conflict inside the batch itself
        s.put_many([mk(2, 0), mk(2, 0, variant=1)])
    assert info.value.existing == mk(2, 0)[0]
    assert s.count() == 1
    s.put_many([mk(1, 0), mk(1, 1), mk(0, 0)])
    assert s.count() == 3


@pytest.mark.parametrize("damage", ["digest", "size"])
def test_blob_mismatch_rejected_before_anything_is_written(
    open_store_: Factory, damage: str
) -> None:
    s = open_store_()
    b, blob = mk(0, 0)
    bad = blob[:-4] + b"\x00\x00\x80\x7f" if damage == "digest" else blob + b"\0\0\0\0"
    with pytest.raises(InvalidBlock) as info:
        s.put(b, bad)
    assert info.value.reason in ("blob-digest", "blob-size")
    assert b.hash.hex()[:16] in str(info.value)
    assert s.get(b.hash) is None and s.count() == 0 and s.head(author(0)) is None
    assert not s.has_blob(b.model_digest) and not s.has_blob(blake2b256(bad))
    with pytest.raises(InvalidBlock):  # nor in a batch with good items
        s.put_many([mk(1, 0), (b, bad)])
    assert s.count() == 0 and list(s.blob_digests()) == []


# --- blobs ----------------------------------------------------------------------------------


def test_blob_round_trip(open_store_: Factory) -> None:
    s = open_store_()
    blob = os.urandom(5000)
    digest = s.put_blob(blob)
    assert digest == blake2b256(blob)
    assert s.has_blob(digest) and s.get_blob(digest) == blob
    assert s.put_blob(blob) == digest
    missing = blake2b256(b"nope")
    assert s.get_blob(missing) is None and not s.has_blob(missing)
    assert list(s.blob_digests()) == [digest]


def test_delete_blob_never_deletes_own_blobs(open_store_: Factory) -> None:
    s = open_store_(own_author=author(0))
    own, own_blob = mk(0, 0)
    peer, peer_blob = mk(1, 0)
    s.put(own, own_blob)
    s.put(peer, peer_blob)
    orphan = s.put_blob(b"orphan--")
    assert s.delete_blob(own.model_digest) is False
    assert s.get_blob(own.model_digest) == own_blob
    assert s.delete_blob(peer.model_digest) is True
    assert not s.has_blob(peer.model_digest) and s.get(peer.hash) == peer  # header stays
    assert s.delete_blob(peer.model_digest) is False
    assert s.delete_blob(orphan) is True
    assert list(s.blob_digests()) == [own.model_digest]
    s.put(peer, peer_blob)  # a pruned blob can be fetched again
    assert s.get_blob(peer.model_digest) == peer_blob


def test_delete_blob_without_own_author_refuses_referenced_blobs(open_store_: Factory) -> None:
    s = open_store_()
    b, blob = mk(1, 0)
    s.put(b, blob)
    with pytest.raises(UsageError, match="own_author"):
        s.delete_blob(b.model_digest)
    assert s.has_blob(b.model_digest)
    orphan = s.put_blob(b"orphan--")
    assert s.delete_blob(orphan) is True


# --- evidence, metadata, lifecycle ----------------------------------------------------------


def test_evidence_keeps_the_first_proof(open_store_: Factory) -> None:
    s = open_store_()
    assert s.evidence() == {}
    s.put_evidence(author(1), b"proof-1")
    s.put_evidence(author(1), b"proof-2")
    s.put_evidence(author(0), b"proof-0")
    assert s.evidence() == {author(0): b"proof-0", author(1): b"proof-1"}


def test_meta(open_store_: Factory) -> None:
    s = open_store_()
    assert s.meta_get("round") is None
    s.meta_set("round", b"\x00\x07")
    s.meta_set("rule/krum", b"state")
    s.meta_set("round", b"\x00\x08")
    assert s.meta_get("round") == b"\x00\x08" and s.meta_get("rule/krum") == b"state"
    with pytest.raises(UsageError):
        s.meta_set("", b"x")
    with pytest.raises(UsageError):
        s.meta_set("k" * 300, b"x")


def test_bad_arguments_are_usage_errors(open_store_: Factory) -> None:
    s = open_store_()
    for call in (
        lambda: s.get(b"short"),
        lambda: s.get_at(b"short", 0),
        lambda: s.get_at(author(0), -1),
        lambda: s.head(b""),
        lambda: s.get_blob(b"x" * 31),
        lambda: s.iter_chain(b"x"),
        lambda: s.put_evidence(b"x", b"p"),
    ):
        with pytest.raises(UsageError):
            call()


def test_closed_store_raises_store_error(open_store_: Factory) -> None:
    s = open_store_()
    with s as entered:
        assert entered is s
        s.put(*mk(0, 0))
    with pytest.raises(StoreError):
        s.get(mk(0, 0)[0].hash)
    with pytest.raises(StoreError):
        s.put(*mk(0, 1))
    s.close()  # idempotent


def test_open_store_spec(tmp_path: Path) -> None:
    with open_store("memory") as m:
        assert isinstance(m, MemoryStore)
    with open_store(tmp_path / "s", durable=False) as s:
        assert isinstance(s, LmdbStore)
        s.put(*mk(0, 0))
    with open_store(str(tmp_path / "s")) as s:
        assert s.count() == 1


# --- model-based check with hypothesis ------------------------------------------------------

Key = tuple[int, int, int]  # (author index, height, variant)
Op = tuple[str, list[Key], bool]  # (kind, keys, with blobs)

POOL: list[Key] = [(w, h, v) for w in range(3) for h in range(4) for v in range(2)]
key_ = st.sampled_from(POOL)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.lists(key_, min_size=1, max_size=1), st.booleans()),
        st.tuples(st.just("many"), st.lists(key_, max_size=4), st.booleans()),
        st.tuples(st.just("delete"), st.lists(key_, min_size=1, max_size=1), st.just(False)),
    ),
    max_size=25,
)


def check_against_model(s: BlockStore, model: dict[tuple[int, int], Block]) -> None:
    assert s.count() == len(model)
    assert s.authors() == sorted({author(w) for w, _ in model})
    for w in range(3):
        chain = [model[k] for k in sorted(model) if k[0] == w]
        assert [b.hash for b in s.iter_chain(author(w))] == [b.hash for b in chain]
        head = s.head(author(w))
        assert (head.hash if head else None) == (chain[-1].hash if chain else None)
        for h in range(4):
            got = s.get_at(author(w), h)
            want = model.get((w, h))
            assert (got.hash if got else None) == (want.hash if want else None)
    expected = sorted(model.values(), key=lambda b: (b.author, b.height))
    assert [b.hash for b in s.all_blocks()] == [b.hash for b in expected]


def run_ops(s: BlockStore, script: list[Op]) -> dict[tuple[int, int], Block]:
    """Apply ``script`` to ``s`` and to a plain dict model, comparing after every step."""
    model: dict[tuple[int, int], Block] = {}
    blobs: set[bytes] = set()
    for op, keys, with_blob in script:
        if op == "delete":
            digest = mk(*keys[0])[0].model_digest
            pinned = any(b.model_digest == digest and b.author == author(0) for b in model.values())
            assert s.delete_blob(digest) is (digest in blobs and not pinned)
            if not pinned:
                blobs.discard(digest)
            continue
        items = [(mk(*k)[0], mk(*k)[1] if with_blob else None) for k in keys]
        staged = dict(model)
        conflict = None
        for (w, h, _), (b, _) in zip(keys, items, strict=True):
            old = staged.setdefault((w, h), b)
            if old.hash != b.hash:
                conflict = old
                break
        if conflict is not None:
            with pytest.raises(ConflictError) as info:
                s.put_many(items)
            assert info.value.existing.hash == conflict.hash
        else:
            s.put_many(items)
            model = staged
            if with_blob:
                blobs.update(b.model_digest for b, _ in items)
        check_against_model(s, model)
    assert sorted(s.blob_digests()) == sorted(blobs)
    return model


@pytest.mark.parametrize("kind", ["memory", "lmdb"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=ops)
def test_random_operations_match_a_model(kind: str, script: list[Op]) -> None:
    if kind == "memory":
        s: BlockStore = MemoryStore(own_author=author(0))
        run_ops(s, script)
        return
    with tempfile.TemporaryDirectory() as d:
        with LmdbStore(d, durable=False, own_author=author(0)) as s:
            model = run_ops(s, script)
        with LmdbStore(d) as again:  # everything survives a reopen
            check_against_model(again, model)


# --- LMDB only: persistence, corruption, truncation, growth, crashes ------------------------


def test_lmdb_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with LmdbStore(path, own_author=author(0)) as s:
        s.put(*mk(0, 0))
        s.put(mk(1, 4)[0])
        s.put_evidence(author(1), b"proof")
        s.meta_set("round", b"\x05")
        orphan = s.put_blob(b"orphan--")
    with LmdbStore(path) as s:
        assert s.own_author == author(0)
        assert s.count() == 2 and s.get(mk(0, 0)[0].hash) == mk(0, 0)[0]
        assert s.head(author(1)) == mk(1, 4)[0]
        assert s.get_blob(mk(0, 0)[0].model_digest) == mk(0, 0)[1]
        assert s.get_blob(orphan) == b"orphan--"
        assert s.evidence() == {author(1): b"proof"} and s.meta_get("round") == b"\x05"
    with pytest.raises(UsageError, match="belongs to"):
        LmdbStore(path, own_author=author(1))
    with LmdbStore(path), pytest.raises(StoreError, match="already open"):
        LmdbStore(path)  # LMDB's locks break if one process opens a store twice


def test_lmdb_adopts_an_empty_environment(tmp_path: Path) -> None:
    # A process killed between creating data.mdb and the first commit leaves an empty
    # environment: nothing to lose, so it becomes a store instead of an unusable directory.
    lmdb.open(str(tmp_path / "s")).close()
    with LmdbStore(tmp_path / "s") as s:
        s.put(*mk(0, 0))
    with LmdbStore(tmp_path / "s") as s:
        assert s.count() == 1


def flip(path: Path, needle: bytes, at: int) -> None:
    data = bytearray(path.read_bytes())
    off = data.find(needle)
    assert off >= 0, "content not found in the data file"
    assert data.find(needle, off + 1) < 0, "content found twice"
    data[off + at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_lmdb_detects_blob_corruption_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "s"
    blob = os.urandom(64 * 1024)
    with LmdbStore(path) as s:
        digest = s.put_blob(blob)
    flip(path / "data.mdb", blob, len(blob) // 2)
    with LmdbStore(path) as s:
        assert s.has_blob(digest)
        with pytest.raises(StoreError) as info:
            s.get_blob(digest)
        assert "data.mdb" in str(info.value) and digest.hex() in str(info.value)
        s.put_blob(blob)  # storing the verified blob again repairs the copy
        assert s.get_blob(digest) == blob


def test_lmdb_detects_block_corruption_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "s"
    b = mk(0, 0)[0]
    with LmdbStore(path) as s:
        s.put(b)
    flip(path / "data.mdb", b.signature, 10)
    with LmdbStore(path) as s:
        reads = (lambda: s.get(b.hash), lambda: s.head(author(0)), lambda: list(s.all_blocks()))
        for read in reads:
            with pytest.raises(StoreError) as info:
                read()
            assert "data.mdb" in str(info.value) and b.hash.hex() in str(info.value)


def test_lmdb_verify_on_open_finds_structural_damage(tmp_path: Path) -> None:
    path = tmp_path / "s"
    b = mk(0, 0)[0]
    with LmdbStore(path) as s:
        s.put(b)
    LmdbStore(path, verify=True).close()  # a healthy file passes
    data = path / "data.mdb"
    raw = bytearray(data.read_bytes())
    page = raw.find(b.signature) // 4096 * 4096  # the leaf page holding the block
    raw[page] ^= 0x01  # its stored page number no longer matches its position
    data.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"data\.mdb.*corrupt"):
        LmdbStore(path, verify=True)


@pytest.mark.parametrize("keep", [0, 100, 4096, 0.5])
def test_lmdb_truncated_file_is_a_store_error(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "s"
    with LmdbStore(path) as s:
        for h in range(4):
            s.put(*mk(0, h, floats=20_000))
    data = path / "data.mdb"
    size = data.stat().st_size
    os.truncate(data, int(size * keep) if isinstance(keep, float) else keep)
    with pytest.raises(StoreError, match=r"data\.mdb"):
        LmdbStore(path)
    assert data.stat().st_size <= size  # nothing was re-initialized behind our back


def test_lmdb_refuses_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"hello")
    with pytest.raises(StoreError, match="file"):
        LmdbStore(tmp_path / "file")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "data.mdb").write_bytes(os.urandom(8192))
    with pytest.raises(StoreError, match="not an LMDB"):
        LmdbStore(garbage)
    other = tmp_path / "other"  # an LMDB environment that is not a dfl store
    with lmdb.open(str(other)) as env, env.begin(write=True) as txn:
        txn.put(b"key", b"value")
    with pytest.raises(StoreError, match="not a dfl store"):
        LmdbStore(other)
    future = tmp_path / "future"
    LmdbStore(future).close()
    with lmdb.open(str(future), max_dbs=16) as env:
        db = env.open_db(b"dfl")
        with env.begin(write=True) as txn:
            txn.put(b"format", FORMAT[:-1] + b"9", db=db)
    with pytest.raises(StoreError, match="unsupported store format") as info:
        LmdbStore(future)
    assert "data.mdb" in str(info.value)


def test_lmdb_map_grows_automatically(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with LmdbStore(path, map_size=64 * 1024, durable=False) as s:
        items = [mk(0, h, floats=64 * 1024) for h in range(16)]  # 16 x 256 KiB = 4 MiB
        for block, blob in items:
            s.put(block, blob)
        assert s.map_size() >= 4 * 1024 * 1024
        assert all(s.get_blob(b.model_digest) == blob for b, blob in items)
    with LmdbStore(path, map_size=64 * 1024) as s:
        assert s.count() == 16


def test_lmdb_map_growth_stops_at_max(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "s", map_size=64 * 1024, max_map_size=256 * 1024) as s:
        s.put(*mk(0, 0))
        big, blob = mk(0, 1, floats=256 * 1024)  # 1 MiB
        with pytest.raises(StoreError, match="max_map_size"):
            s.put(big, blob)
        assert s.count() == 1 and s.get(big.hash) is None
        s.put(*mk(0, 2))  # still usable
        assert s.count() == 2


WRITER = """
import sys
import numpy as np
from dfl.block import ZERO_HASH, make_block
from dfl.crypto import Identity
from dfl.node.store import LmdbStore

ident = Identity.from_seed(b"\\x09" * 32)
store = LmdbStore(sys.argv[1], own_author=ident.public_key)
head = store.head(ident.public_key)
height, prev = (0, ZERO_HASH) if head is None else (head.height + 1, head.hash)
while True:
    blob = np.random.default_rng(height).standard_normal(2048).astype(np.float32).tobytes()
    block = make_block(ident, network=b"\\x42" * 32, height=height, prev=prev, round=height,
                       timestamp_ms=height, model=blob, samples=1)
    store.put(block, blob)
    print(block.hash.hex(), flush=True)
    height, prev = height + 1, block.hash
"""


def run_writer_and_kill(path: Path, lines_before_kill: int) -> list[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    committed: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(committed) < lines_before_kill and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"writer died: {proc.stderr.read()}")
            committed.append(bytes.fromhex(line.strip()))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # Lines printed before the kill were committed too.
    committed += [bytes.fromhex(x) for x in proc.stdout.read().split() if len(x) == 64]
    return committed


@pytest.mark.timeout(120)
def test_lmdb_survives_sigkill_mid_write(tmp_path: Path) -> None:
    path = tmp_path / "s"
    committed: list[bytes] = []
    for _ in range(2):  # kill, reopen and continue, kill again
        committed += run_writer_and_kill(path, lines_before_kill=40)
        with LmdbStore(path) as s:
            for h in committed:
                block = s.get(h)
                assert block is not None, f"committed block {h.hex()} lost"
                assert block.verify_signature()
                assert blake2b256(s.get_blob(block.model_digest) or b"") == block.model_digest
            head = s.head(Identity.from_seed(b"\x09" * 32).public_key)
            assert head is not None
            chain = list(s.iter_chain(head.author))
            assert [b.height for b in chain] == list(range(head.height + 1))
            assert all(b.prev == a.hash for a, b in itertools.pairwise(chain))
            assert s.count() >= len(committed)
