"""Tests of dfl.crypto: identities, signatures, batch verification, digests, libp2p peer ids."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfl.crypto import (
    Identity,
    blake2b256,
    peer_id_from_public_key,
    public_key_from_peer_id,
    verify,
    verify_batch,
)
from dfl.errors import InvalidBlock, UsageError

SEED = bytes(range(32))


def test_identity_from_seed_is_deterministic() -> None:
    a = Identity.from_seed(SEED)
    b = Identity.from_seed(SEED)
    assert a.seed == SEED
    assert a.public_key == b.public_key and len(a.public_key) == 32
    assert a == b and hash(a) == hash(b)
    assert a.sign(b"m") == b.sign(b"m")  # Ed25519 signatures are deterministic
    assert len(a.sign(b"m")) == 64
    assert SEED.hex() not in repr(a) and a.peer_id in repr(a)


def test_rfc8032_test_vector_1() -> None:
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    identity = Identity.from_seed(seed)
    assert identity.public_key.hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    assert identity.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )


def test_generate_gives_distinct_identities() -> None:
    assert Identity.generate().public_key != Identity.generate().public_key


def test_from_seed_rejects_bad_seeds() -> None:
    for seed in (b"", b"\0" * 31, b"\0" * 33, "x" * 32, bytearray(32)):
        with pytest.raises(UsageError):
            Identity.from_seed(seed)  # type: ignore[arg-type]


def test_verify_accepts_valid_and_rejects_everything_else() -> None:
    ident = Identity.from_seed(SEED)
    other = Identity.from_seed(b"\1" * 32)
    msg = b"hello dfl"
    sig = ident.sign(msg)
    assert verify(ident.public_key, msg, sig)
    assert verify(ident.public_key, bytearray(msg), sig)
    assert not verify(other.public_key, msg, sig)
    assert not verify(ident.public_key, msg + b"!", sig)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify(ident.public_key, msg, flipped)


@pytest.mark.parametrize(
    ("pub", "msg", "sig"),
    [
        (b"", b"m", b"\0" * 64),
        (b"\0" * 31, b"m", b"\0" * 64),
        (b"\0" * 32, b"m", b"\0" * 64),  # small-order point
        (b"\xff" * 32, b"m", b"\xff" * 64),  # not a point, non-canonical S
        (None, b"m", b"\0" * 64),
        ("x" * 32, b"m", b"\0" * 64),
        (b"\0" * 32, None, b"\0" * 64),
        (b"\0" * 32, 5, b"\0" * 64),
        (b"\0" * 32, b"m", b"\0" * 63),
        (b"\0" * 32, b"m", None),
    ],
)
def test_verify_never_raises(pub: object, msg: object, sig: object) -> None:
    assert verify(pub, msg, sig) is False  # type: ignore[arg-type]


def test_verify_rejects_non_canonical_s() -> None:
    """libsodium rejects S >= L (malleated signatures), so block hashes cannot be malleated."""
    ident = Identity.from_seed(SEED)
    msg = b"m"
    sig = ident.sign(msg)
    order = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(sig[32:], "little") + order
    assert s < 2**256
    malleated = sig[:32] + s.to_bytes(32, "little")
    assert not verify(ident.public_key, msg, malleated)


def test_verify_batch_matches_verify() -> None:
    idents = [Identity.from_seed(bytes([i]) * 32) for i in range(8)]
    items: list[tuple[bytes, bytes, bytes]] = []
    for i in range(300):
        ident = idents[i % 8]
        msg = os.urandom(i % 50)
        sig = ident.sign(msg)
        if i % 7 == 0:
            sig = bytes([sig[0] ^ 0x40]) + sig[1:]
        if i % 11 == 0:
            msg += b"x"
        items.append((ident.public_key, msg, sig))
    items.append(items[1])  # duplicate
    items.append(items[0])
    items.append((b"", b"", b""))
    expected = [verify(*it) for it in items]
    assert expected.count(False) > 40
    assert verify_batch(items) == expected
    assert verify_batch(items, workers=1) == expected
    assert verify_batch(items, workers=2) == expected
    assert verify_batch(items[:5]) == expected[:5]
    assert verify_batch([]) == []


def test_verify_batch_never_raises_on_junk_items() -> None:
    junk: list[object] = [None, (), (b"",), ([], b"", b""), (b"\0" * 32, [1], b"\0" * 64), 5]
    assert verify_batch(junk * 20) == [False] * 120  # type: ignore[arg-type]


def test_blake2b256() -> None:
    assert blake2b256(b"abc") == hashlib.blake2b(b"abc", digest_size=32).digest()
    assert blake2b256(b"").hex() == (
        "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8"
    )


def test_peer_id_format() -> None:
    ident = Identity.from_seed(SEED)
    pid = ident.peer_id
    assert pid.startswith("12D3KooW") and len(pid) == 52
    assert pid == peer_id_from_public_key(ident.public_key)
    assert public_key_from_peer_id(pid) == ident.public_key


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_peer_id_roundtrip(key: bytes) -> None:
    pid = peer_id_from_public_key(key)
    assert pid.startswith("12D3KooW")
    assert public_key_from_peer_id(pid) == key


def test_peer_id_rejections() -> None:
    pid = Identity.from_seed(SEED).peer_id
    for bad in ("", "0OIl", pid[:-1], pid + "1", "1" + pid, "Qm" + pid[2:], None, 5, "1" * 200):
        with pytest.raises(InvalidBlock) as info:
            public_key_from_peer_id(bad)  # type: ignore[arg-type]
        assert info.value.reason == "bad-peer-id"
    # a valid sha256 (legacy RSA-style) peer id is not an Ed25519 identity peer id
    with pytest.raises(InvalidBlock):
        public_key_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
    with pytest.raises(UsageError):
        peer_id_from_public_key(b"\0" * 31)


def test_peer_id_matches_py_libp2p() -> None:
    pytest.importorskip("libp2p")
    from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
    from libp2p.peer.id import ID

    for seed in (SEED, b"\x42" * 32, hashlib.sha256(b"dfl").digest()):
        ours = Identity.from_seed(seed)
        pair = create_new_key_pair(seed)
        assert pair.public_key.to_bytes() == ours.public_key
        theirs = ID.from_pubkey(pair.public_key)
        assert theirs.to_base58() == ours.peer_id
        assert ID.from_base58(ours.peer_id) == theirs
        extracted = theirs.extract_public_key()
        assert extracted is not None and extracted.to_bytes() == ours.public_key
        # signatures interoperate both ways
        msg = b"interop"
        assert verify(ours.public_key, msg, pair.private_key.sign(msg))
        assert Ed25519PublicKey.from_bytes(ours.public_key).verify(msg, ours.sign(msg))
