"""Tests of dfl.block: structure, canonical codec, signing, blobs, manifests, decoder fuzzing."""

from __future__ import annotations

import dataclasses
import math
import random
import struct
import time
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfl.block import (
    BLOCK_VERSION,
    MAX_BLOCK_BYTES,
    MAX_METRICS,
    MAX_PARENTS,
    MAX_VERDICTS,
    SIGN_DOMAIN,
    ZERO_HASH,
    Block,
    TaskManifest,
    Verdict,
    blob_to_model,
    check_blob,
    decode,
    encode,
    make_block,
    model_to_blob,
)
from dfl.crypto import Identity, blake2b256, verify
from dfl.errors import InvalidBlock, UsageError

ALICE = Identity.from_seed(bytes(range(32)))
NETWORK = TaskManifest(name="test", model="mlp", dataset="digits").network_id()


# --- helpers shared with tests/test_chain.py ---------------------------------------------------


def h(i: int) -> bytes:
    """A distinct, deterministic 32-byte hash-like value."""
    return blake2b256(i.to_bytes(8, "big"))


def signed(identity: Identity = ALICE, **kw: Any) -> Block:
    """A signed block with sensible defaults (genesis unless overridden)."""
    args: dict[str, Any] = {
        "network": NETWORK,
        "height": 0,
        "prev": ZERO_HASH,
        "round": 0,
        "timestamp_ms": 1_700_000_000_000,
        "model": np.arange(8, dtype=np.float32),
        "samples": 100,
        "metrics": {"acc": 0.5, "loss": 1.25},
        "parents": (),
        "verdicts": (),
    }
    args.update(kw)
    return make_block(identity, **args)


def wire_fields(block: Block) -> list[Any]:
    """The 14 wire fields of a block as plain msgpack-able values."""
    return [*block._unsigned_fields(), block.signature]


def rich_block() -> Block:
    verdicts = [
        Verdict(h(i), i % 3 != 0, i * 0.25 - 1.0, "ok" if i % 3 else "krum") for i in range(6)
    ]
    return signed(
        height=3,
        prev=h(99),
        round=7,
        metrics={"acc": 0.875, "loss": 0.3125, "n/val": 2.0},
        parents=[v.block for v in verdicts if v.accepted],
        verdicts=verdicts,
    )


# --- strategies --------------------------------------------------------------------------------

hashes = st.binary(min_size=32, max_size=32)
uints = st.integers(min_value=0, max_value=2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
codes = st.from_regex(r"[a-z0-9][a-z0-9_.:/-]{0,31}", fullmatch=True)
reasons = st.one_of(st.just(""), codes)


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    """Structurally valid blocks (random signature: decode does not check signatures)."""
    metrics = draw(st.dictionaries(codes, finite, max_size=MAX_METRICS))
    verdicts = draw(
        st.lists(
            st.builds(Verdict, hashes, st.booleans(), finite, reasons),
            max_size=12,
            unique_by=lambda v: v.block,
        )
    )
    parents = draw(st.lists(hashes, max_size=12, unique=True))
    return Block(
        BLOCK_VERSION,
        draw(hashes),
        draw(hashes),
        draw(uints),
        draw(hashes),
        draw(uints),
        draw(uints),
        draw(hashes),
        4 * draw(st.integers(min_value=1, max_value=2**26)),
        draw(uints),
        tuple(sorted(metrics.items())),
        tuple(sorted(parents)),
        tuple(sorted(verdicts, key=lambda v: v.block)),
        draw(st.binary(min_size=64, max_size=64)),
    )


# --- round trip and canonical form -------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks())
def test_roundtrip_is_identity(block: Block) -> None:
    data = encode(block)
    again = decode(data)
    assert encode(again) == data
    assert again == block
    assert again.hash == blake2b256(data)
    assert dataclasses.astuple(again)[:14] == dataclasses.astuple(block)[:14]
    assert data == msgpack.packb(wire_fields(block), use_bin_type=True)


def test_signed_block_roundtrip_and_signature() -> None:
    block = rich_block()
    data = encode(block)
    again = decode(data)
    assert again.verify_signature()
    assert again.hash == block.hash == blake2b256(data)
    assert verify(ALICE.public_key, SIGN_DOMAIN + again.unsigned_bytes(), again.signature)
    assert again.signing_message() == b"dfl/block/v1\0" + again.unsigned_bytes()
    # the unsigned bytes are the canonical 13-field array
    assert msgpack.unpackb(again.unsigned_bytes()) == wire_fields(block)[:13]
    assert again.author_peer_id == ALICE.peer_id
    assert again.parents == tuple(sorted(again.parents))
    assert [m[0] for m in again.metrics] == ["acc", "loss", "n/val"]


def test_signature_covers_domain_prefix() -> None:
    block = rich_block()
    assert not verify(ALICE.public_key, block.unsigned_bytes(), block.signature)
    assert not verify(ALICE.public_key, encode(block), block.signature)


def test_make_block_sorts_inputs_and_commits_to_model() -> None:
    model = np.linspace(-1, 1, 10, dtype=np.float32)
    verdicts = [Verdict(h(2), True, 1.0, "ok"), Verdict(h(1), True, 2.0, "ok")]
    block = signed(model=model, verdicts=verdicts, parents=[h(2), h(1)], metrics={"z": 1, "a": 2})
    assert block.parents == tuple(sorted([h(1), h(2)]))
    assert [v.block for v in block.verdicts] == sorted([h(1), h(2)])
    assert block.metrics == (("a", 2.0), ("z", 1.0))
    assert block.model_size == 40
    assert block.model_digest == blake2b256(model.astype("<f4").tobytes())
    check_blob(block, model_to_blob(model))


def _repack(fields: list[Any], **packer: Any) -> bytes:
    packer.setdefault("use_bin_type", True)
    return bytes(msgpack.packb(fields, **packer))


def _raw_array(parts: list[bytes]) -> bytes:
    assert len(parts) == 14
    return b"\x9e" + b"".join(parts)


def _parts(block: Block) -> list[bytes]:
    return [bytes(msgpack.packb(f, use_bin_type=True)) for f in wire_fields(block)]


def _reason(data: bytes) -> str:
    with pytest.raises(InvalidBlock) as info:
        decode(data)
    return info.value.reason


def test_parts_helper_reproduces_encoding() -> None:
    block = rich_block()
    assert _raw_array(_parts(block)) == encode(block)


def test_non_canonical_map_instead_of_array() -> None:
    block = rich_block()
    assert _reason(_repack(dict(enumerate(wire_fields(block))))) == "malformed"  # type: ignore[arg-type]


def test_non_canonical_float32() -> None:
    block = rich_block()
    data = _repack(wire_fields(block), use_single_float=True)
    assert data != encode(block)
    assert _reason(data) == "non-canonical"


def test_non_canonical_unsorted_parents_and_verdicts() -> None:
    block = rich_block()
    fields = wire_fields(block)
    fields[11] = list(reversed(fields[11]))
    assert _reason(_repack(fields)) == "unsorted"
    fields = wire_fields(block)
    fields[12] = list(reversed(fields[12]))
    assert _reason(_repack(fields)) == "unsorted"
    fields = wire_fields(block)
    fields[11] = [fields[11][0], fields[11][0]]
    assert _reason(_repack(fields)) == "unsorted"
    fields = wire_fields(block)
    fields[10] = list(reversed(fields[10]))
    assert _reason(_repack(fields)) == "unsorted"


@pytest.mark.parametrize(
    ("index", "wide"),
    [
        (3, b"\xcf" + struct.pack(">Q", 3)),  # height 3 as uint64
        (3, b"\xcc\x03"),  # height 3 as uint8
        (5, b"\xcd\x00\x07"),  # round 7 as uint16
        (0, b"\xd0\x01"),  # version 1 as int8
    ],
)
def test_non_canonical_wide_integers(index: int, wide: bytes) -> None:
    parts = _parts(rich_block())
    assert msgpack.unpackb(wide) == msgpack.unpackb(parts[index])
    parts[index] = wide
    assert _reason(_raw_array(parts)) == "non-canonical"


def test_non_canonical_long_string_header_and_array_header() -> None:
    block = signed(verdicts=[Verdict(h(1), False, 0.0, "ok")])
    parts = _parts(block)
    short = bytes(msgpack.packb("ok"))
    parts[12] = parts[12].replace(short, b"\xd9\x02ok")
    assert _reason(_raw_array(parts)) == "non-canonical"
    parts = _parts(block)
    data = b"\xdc\x00\x0e" + b"".join(parts)  # array16 header for a 14-element array
    assert _reason(data) == "non-canonical"


def test_rejects_trailing_bytes_and_truncation() -> None:
    data = encode(rich_block())
    assert _reason(data + b"\x00") == "malformed"
    assert _reason(data[:-1]) == "malformed"
    assert _reason(b"") == "malformed"


def test_rejects_wrong_types_on_the_wire() -> None:
    block = rich_block()
    cases: list[tuple[int, Any]] = [
        (1, "x" * 32),  # str where bin expected
        (3, -1),  # negative height
        (3, True),  # bool where int expected
        (3, 2**63),  # beyond MAX_INT
        (8, 6),  # model size not a multiple of 4
        (8, 0),
        (9, 1.0),  # float where int expected
        (13, b"\0" * 63),  # short signature
        (10, [["acc", 1]]),  # int metric value
        (10, [["Acc", 1.0]]),  # metric name outside the alphabet
        (10, [["acc", math.nan]]),
        (10, [["acc", math.inf]]),
        (12, [[h(1), 1, 0.0, "ok"]]),  # int instead of bool
        (12, [[h(1), True, 0.0, "x" * 33]]),  # reason too long
        (12, [[h(1), True, 0.0]]),  # short verdict
        (11, [h(1)[:31]]),
    ]
    for index, value in cases:
        fields = wire_fields(block)
        fields[index] = value
        assert _reason(_repack(fields)) in {"bad-field", "malformed"}, (index, value)
    fields = wire_fields(block)
    assert _reason(_repack(fields, use_bin_type=False)) in {"bad-field", "malformed"}
    assert _reason(_repack([*fields, 0])) == "malformed"
    assert _reason(_repack(fields[:13])) == "malformed"
    fields[0] = 2
    assert _reason(_repack(fields)) == "unsupported-version"


def test_limits() -> None:
    many = [Verdict(h(i), True, 0.0, "ok") for i in range(MAX_VERDICTS + 1)]
    with pytest.raises(InvalidBlock, match="verdicts"):
        signed(verdicts=many)
    with pytest.raises(InvalidBlock, match="parents"):
        signed(parents=[h(i) for i in range(MAX_PARENTS + 1)])
    with pytest.raises(InvalidBlock, match="metrics"):
        signed(metrics={f"m{i}": 0.0 for i in range(MAX_METRICS + 1)})
    with pytest.raises(InvalidBlock, match="metric name"):
        signed(metrics={"x" * 33: 0.0})
    with pytest.raises(InvalidBlock):
        signed(timestamp_ms=-1)
    # the biggest legal block stays far below the 1 MiB gossip cap and within MAX_BLOCK_BYTES
    reason = "r" * 32
    big = signed(
        metrics={f"metric-{i:02d}-" + "x" * 22: -1.5e300 for i in range(MAX_METRICS)},
        verdicts=[Verdict(h(i), True, -1.5e300, reason) for i in range(MAX_VERDICTS)],
        parents=[h(i) for i in range(MAX_PARENTS)],
        height=2**63 - 1,
        prev=h(1),
    )
    assert len(encode(big)) < MAX_BLOCK_BYTES < 1 << 20
    assert decode(encode(big)) == big
    assert _reason(encode(big) + b"\0" * MAX_BLOCK_BYTES) == "too-large"


def test_hostile_length_prefixes_fail_fast() -> None:
    for data in (
        b"\xdd\xff\xff\xff\xff",  # array32 of 4G elements
        b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
        b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
        b"\xdf\xff\xff\xff\xff",  # map32
        b"\xc9\xff\xff\xff\xff\x01",  # ext32
        b"\x9e" + b"\xdc\xff\xff" * 3,
        b"\x91" * 5000,  # deep nesting
    ):
        start = time.perf_counter()
        assert _reason(data) == "malformed"
        assert time.perf_counter() - start < 0.05


def test_decode_rejects_non_bytes() -> None:
    for value in (None, "text", 5, bytearray(b"\x90"), memoryview(b"\x90")):
        with pytest.raises(InvalidBlock):
            decode(value)  # type: ignore[arg-type]


def test_block_equality_and_hash_follow_the_encoding() -> None:
    a = rich_block()
    b = decode(encode(a))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    c = dataclasses.replace(a, samples=a.samples + 1)
    assert c != a and c.hash != a.hash
    z = signed(metrics={"acc": 0.0})
    nz = signed(metrics={"acc": -0.0})  # distinct encodings, so distinct blocks
    assert z != nz
    assert decode(encode(nz)).metrics == (("acc", -0.0),)


def test_verdict_validation() -> None:
    assert Verdict(h(1), True, 0.5).reason == ""
    for args in (
        (h(1)[:31], True, 0.5, "ok"),
        (h(1), 1, 0.5, "ok"),
        (h(1), True, 1, "ok"),
        (h(1), True, math.nan, "ok"),
        (h(1), True, 0.5, "Bad Reason"),
        (h(1), True, 0.5, "é"),
    ):
        with pytest.raises(InvalidBlock):
            Verdict(*args)


def test_block_is_frozen() -> None:
    block = rich_block()
    with pytest.raises(dataclasses.FrozenInstanceError):
        block.height = 4  # type: ignore[misc]


# --- tamper ------------------------------------------------------------------------------------


def test_every_byte_flip_is_detected() -> None:
    block = rich_block()
    data = encode(block)
    decoded_ok = 0
    for i in range(len(data)):
        for mask in (0x01, 0x80):
            mutated = bytearray(data)
            mutated[i] ^= mask
            try:
                other = decode(bytes(mutated))
            except InvalidBlock:
                continue
            decoded_ok += 1
            assert other.hash != block.hash
            assert not other.verify_signature()
    assert decoded_ok > len(data) // 2  # most flips land in payload bytes and still parse


# --- fuzz --------------------------------------------------------------------------------------


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 7)
    if kind == 0:
        return rng.randrange(-(2**63), 2**64)
    if kind == 1:
        return rng.choice([0.0, -0.0, math.nan, math.inf, 1e308, rng.random()])
    if kind == 2:
        return rng.randbytes(rng.choice([0, 31, 32, 33, 64, 65]))
    if kind == 3:
        return rng.choice(["", "ok", "acc", "A", "x" * 40, "é"])
    if kind == 4:
        return rng.choice([True, False, None])
    if kind == 5:
        return rng.randrange(0, 300)
    if kind == 6:
        return h(rng.randrange(4))
    if kind == 7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rng.randrange(3): _random_value(rng, depth + 1)}


def _mutants(seeds: list[bytes], rng: random.Random, count: int) -> list[bytes]:
    out: list[bytes] = []
    base_fields = [msgpack.unpackb(s) for s in seeds]
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        op = rng.randrange(8)
        if op == 0:  # bit flips
            for _ in range(rng.randrange(1, 4)):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # byte overwrite with an interesting value
            data[rng.randrange(len(data))] = rng.choice([0x00, 0x7F, 0x80, 0x90, 0xC0, 0xC1, 0xFF])
        elif op == 2:  # truncation
            del data[rng.randrange(len(data)) :]
        elif op == 3:  # splice of two encodings
            other = rng.choice(seeds)
            data = data[: rng.randrange(len(data))] + other[rng.randrange(len(other)) :]
        elif op == 4:  # insertion
            i = rng.randrange(len(data) + 1)
            data[i:i] = rng.randbytes(rng.randrange(1, 5))
        elif op == 5:  # deletion
            i = rng.randrange(len(data))
            del data[i : i + rng.randrange(1, 5)]
        else:  # structure-aware: replace one field (or one nested item) with a random value
            fields = [list(f) if isinstance(f, list) else f for f in rng.choice(base_fields)]
            i = rng.randrange(len(fields))
            if isinstance(fields[i], list) and fields[i] and op == 6:
                fields[i][rng.randrange(len(fields[i]))] = _random_value(rng)
            else:
                fields[i] = _random_value(rng)
            try:
                data = bytearray(msgpack.packb(fields, use_bin_type=rng.random() < 0.9))
            except (OverflowError, ValueError, TypeError):
                data = bytearray(b"\xc1")
        out.append(bytes(data))
    return out


def test_fuzz_decode_is_total() -> None:
    """>= 100,000 random and mutated inputs: only InvalidBlock ever escapes decode()."""
    rng = random.Random(20240601)
    seeds = [encode(rich_block()), encode(signed()), encode(signed(metrics={}))]
    seeds += [
        encode(b) for b in (signed(verdicts=[Verdict(h(i), False, -2.5, "x")]) for i in range(2))
    ]
    inputs: list[bytes] = []
    for _ in range(45_000):
        n = rng.choice([0, 1, 2, 3, 5, 8, 16, 40, 200])
        prefix = bytes([rng.choice([0x9E, 0x9D, 0x9F, 0xDC, 0xDD, 0x90, rng.randrange(256)])])
        inputs.append(prefix + rng.randbytes(n))
    inputs += _mutants(seeds, rng, 60_000)
    assert len(inputs) >= 100_000
    accepted = rejected = 0
    reasons: dict[str, int] = {}
    start = time.perf_counter()
    for data in inputs:
        try:
            block = decode(data)
        except InvalidBlock as exc:
            rejected += 1
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
        else:
            accepted += 1
            assert encode(block) == data
    elapsed = time.perf_counter() - start
    assert accepted + rejected == len(inputs)
    assert accepted > 100  # mutations that land in payload bytes yield other valid blocks
    assert {"malformed", "bad-field", "non-canonical"} <= set(reasons)
    assert elapsed < 60, elapsed


def test_fuzz_manifest_decode_is_total() -> None:
    rng = random.Random(7)
    seed = TaskManifest(name="t", model="lenet", dataset="mnist", extra=(("a", "b"),)).encode()
    for data in _mutants([seed], rng, 5_000):
        try:
            m = TaskManifest.decode(data)
        except InvalidBlock:
            continue
        assert m.encode() == data


# --- model blobs -------------------------------------------------------------------------------


def test_blob_roundtrip_is_little_endian_float32() -> None:
    model = np.array([[1.5, -2.0], [0.0, 3.25]], dtype=">f8")
    blob = model_to_blob(model)
    assert blob == struct.pack("<4f", 1.5, -2.0, 0.0, 3.25)
    out = blob_to_model(blob, 4)
    assert out.dtype == np.float32 and out.flags.writeable
    assert out.tolist() == [1.5, -2.0, 0.0, 3.25]


def test_blob_rejections() -> None:
    good = struct.pack("<3f", 1, 2, 3)
    with pytest.raises(InvalidBlock) as info:
        blob_to_model(good, 4)
    assert info.value.reason == "blob-size"
    with pytest.raises(InvalidBlock) as info:
        blob_to_model(good + b"\0", 3)
    assert info.value.reason == "blob-size"
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(InvalidBlock) as info:
            blob_to_model(struct.pack("<3f", 1, bad, 3), 3)
        assert info.value.reason == "blob-non-finite"
    with pytest.raises(UsageError):
        model_to_blob(np.array([1.0, np.nan]))
    with pytest.raises(UsageError):
        model_to_blob(np.zeros(0))


def test_check_blob() -> None:
    model = np.ones(8, dtype=np.float32)
    block = signed(model=model)
    check_blob(block, model_to_blob(model))
    with pytest.raises(InvalidBlock) as info:
        check_blob(block, model_to_blob(model * 2))
    assert info.value.reason == "blob-digest"
    with pytest.raises(InvalidBlock) as info:
        check_blob(block, model_to_blob(model)[:-4])
    assert info.value.reason == "blob-size"


# --- task manifest -----------------------------------------------------------------------------


def test_manifest_network_id() -> None:
    m = TaskManifest(name="demo", model="lenet", dataset="mnist", partition="dirichlet:0.5")
    assert m.network_id() == blake2b256(m.encode())
    assert len(m.network_id()) == 32
    assert TaskManifest.decode(m.encode()) == m
    assert dataclasses.replace(m, lr=0.01).network_id() != m.network_id()
    assert dataclasses.replace(m, name="demo2").network_id() != m.network_id()
    assert msgpack.unpackb(m.encode()) == [
        1, "demo", "lenet", "mnist", "dirichlet:0.5", 0.05, 32, 1, 10_000, 0, 0, 0, [],
    ]  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(
    st.text(min_size=1, max_size=20),
    finite.filter(lambda x: x > 0),
    st.integers(1, 10**6),
    st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=4),
)
def test_manifest_roundtrip(name: str, lr: float, batch: int, extra: dict[str, str]) -> None:
    try:
        m = TaskManifest(
            name, "mlp", "digits", lr=lr, batch_size=batch, extra=tuple(sorted(extra.items()))
        )
    except InvalidBlock:
        return  # e.g. surrogate characters: not valid UTF-8
    assert TaskManifest.decode(m.encode()) == m


def test_manifest_rejections() -> None:
    with pytest.raises(InvalidBlock):
        TaskManifest(name="", model="mlp", dataset="digits")
    with pytest.raises(InvalidBlock):
        TaskManifest(name="x", model="mlp", dataset="digits", lr=0.0)
    assert TaskManifest(name="x", model="mlp", dataset="digits", lr=1).lr == 1.0
    with pytest.raises(InvalidBlock):
        TaskManifest(name="x", model="mlp", dataset="digits", lr=True)
    fields = msgpack.unpackb(TaskManifest(name="x", model="mlp", dataset="digits").encode())
    fields[5] = 1  # an int on the wire is not the canonical float64
    with pytest.raises(InvalidBlock):
        TaskManifest.decode(msgpack.packb(fields))
    with pytest.raises(InvalidBlock):
        TaskManifest(name="x", model="mlp", dataset="digits", extra=(("b", ""), ("a", "")))
    m = TaskManifest(name="x", model="mlp", dataset="digits")
    fields = msgpack.unpackb(m.encode())
    with pytest.raises(InvalidBlock):
        TaskManifest.decode(msgpack.packb(fields, use_single_float=True))
    with pytest.raises(InvalidBlock):
        TaskManifest.decode(m.encode() + b"\0")
    with pytest.raises(InvalidBlock):
        TaskManifest.decode(msgpack.packb({"name": "x"}))


def test_protocol_md_test_vectors() -> None:
    """The vectors printed in docs/protocol.md section 7."""
    manifest = TaskManifest(name="test", model="mlp", dataset="digits")
    assert manifest.encode().hex() == (
        "9d01a474657374a36d6c70a6646967697473a3696964cb3fa999999999999a2001cd271000000090"
    )
    assert manifest.network_id().hex() == (
        "fa00ac0356ebfa0b84a3390c097074934d0f92e9c0b23a9d07caeae36d9e69fb"
    )
    assert ALICE.peer_id == "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"
    model = np.arange(4, dtype=np.float32)
    assert model_to_blob(model).hex() == "000000000000803f0000004000004040"
    block = signed(model=model, metrics={"acc": 0.5})
    expected = (
        "9e01c420fa00ac0356ebfa0b84a3390c097074934d0f92e9c0b23a9d07caeae36d9e69fbc42003a107bff3ce10be"
        "1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b800c42000000000000000000000000000000000000000"
        "0000000000000000000000000000cf0000018bcfe56800c4203460c70b3b77910764f0c56606dad5446f3de5f2eb"
        "02731a42e4529f3811273110649192a3616363cb3fe00000000000009090c44044f8505b58c45b676a2247105bd1"
        "e091b1b2d6bcb45521fddbd21e2a72405f572c4a004d82a6e3da002f68c72039cf0331ba5363462b462d91c43fc0"
        "10eca604"
    )
    assert encode(block).hex() == expected
    assert block.hash.hex() == "f3beb4903587d6fc1da9d0707e59e06befae5a491ed80bf0907c0181b9d9a17d"
    assert decode(bytes.fromhex(expected)).verify_signature()
