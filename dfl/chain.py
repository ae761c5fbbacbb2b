"""Validation rules for one author's chain, and equivocation proofs. Pure: no I/O, no state.

Invariants
----------
* A chain is the sequence of one author's blocks on one network, heights ``0, 1, 2, ...``,
  each block's ``prev`` the hash of the one before, the genesis block's ``prev`` ``ZERO_HASH``.
* :func:`check_block` applies the rules of ``docs/protocol.md`` ("Validation") to one block given
  its predecessor, in the documented order, and raises ``InvalidBlock`` with the code of the
  first rule that fails. :func:`validate_chain` reports the *first* bad block as a
  :class:`~dfl.errors.ChainError`; within one block the signature is checked before the
  other rules, whatever the ``sig_check`` mode, so ``"each"`` and ``"batch"`` agree exactly.
* Rounds and timestamps are monotonic non-decreasing along a chain (an author may publish several
  blocks in one round, e.g. a late re-aggregation; gaps are allowed).
* An :class:`Equivocation` holds two blocks of the same author, network and height with
  different hashes, ordered by hash; it is a proof once :meth:`Equivocation.verify` confirms
  both signatures, and anyone can re-check it from its encoding alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import msgpack

from dfl.block import MAX_BLOCK_BYTES, ZERO_HASH, Block, decode, encode
from dfl.crypto import verify_batch
from dfl.errors import ChainError, InvalidBlock

__all__ = [
    "DEFAULT_MAX_SKEW_MS",
    "EVIDENCE_VERSION",
    "ChainError",
    "Equivocation",
    "SigCheck",
    "check_block",
    "find_equivocation",
    "validate_chain",
]

SigCheck = Literal["off", "each", "batch"]

DEFAULT_MAX_SKEW_MS: Final = 60_000
EVIDENCE_VERSION: Final = 1
MAX_EVIDENCE_BYTES: Final = 2 * MAX_BLOCK_BYTES + 64


def check_block(
    block: Block,
    prev: Block | None,
    *,
    network: bytes,
    now_ms: int | None = None,
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
    check_signature: bool = True,
) -> None:
    """Check one block against its predecessor (``None`` for a genesis block).

    Rules, in order (reason codes in quotes): ``"wrong-network"``; ``"bad-signature"`` (if
    ``check_signature``); genesis shape ``"bad-genesis"`` / ``"missing-prev"``; link to ``prev``:
    ``"author-mismatch"``, ``"wrong-network"``, ``"height-gap"``, ``"prev-mismatch"``,
    ``"round-regression"``, ``"timestamp-regression"``; ``"future-timestamp"`` (only when
    ``now_ms`` is given);
    references: ``"self-reference"``, ``"own-chain-reference"``, ``"parent-not-accepted"``.

    Parameters
    ----------
    block
        The block to check (already structurally valid, e.g. from :func:`dfl.block.decode`).
    prev
        The author's block at ``block.height - 1``, or ``None`` if ``block`` claims genesis.
    network
        The network id this node runs.
    now_ms
        Local wall clock (ms); when given, blocks stamped more than ``max_skew_ms`` later are
        rejected.
    max_skew_ms
        Tolerated clock skew into the future.
    check_signature
        Verify the author's signature first (default); :func:`validate_chain` turns this off
        to verify signatures in bulk.

    Raises
    ------
    InvalidBlock
        With the reason code of the first rule broken.
    """
    if block.network != network:
        raise InvalidBlock("wrong-network", f"block network {block.network.hex()[:16]}..")
    if check_signature and not block.verify_signature():
        raise InvalidBlock("bad-signature", "signature does not verify under the author key")
    _check_link(block, prev)
    if now_ms is not None and block.timestamp_ms > now_ms + max_skew_ms:
        raise InvalidBlock(
            "future-timestamp", f"{block.timestamp_ms - now_ms} ms ahead (max {max_skew_ms})"
        )
    _check_references(block)


def _check_link(block: Block, prev: Block | None) -> None:
    if block.height == 0 or prev is None:
        if block.height != 0:
            raise InvalidBlock("missing-prev", f"height {block.height} needs its predecessor")
        if block.prev != ZERO_HASH:
            raise InvalidBlock("bad-genesis", "a height-0 block has prev = ZERO_HASH")
        if prev is not None:
            raise InvalidBlock("height-gap", "a genesis block has no predecessor")
        return
    if block.prev == ZERO_HASH:
        raise InvalidBlock("bad-genesis", "only a height-0 block has prev = ZERO_HASH")
    if block.author != prev.author:
        raise InvalidBlock("author-mismatch", "prev has a different author")
    if block.network != prev.network:
        raise InvalidBlock("wrong-network", "prev is on a different network")
    if block.height != prev.height + 1:
        raise InvalidBlock("height-gap", f"height {block.height} after {prev.height}")
    if block.prev != prev.hash:
        raise InvalidBlock("prev-mismatch", "prev is not the hash of the previous block")
    if block.round < prev.round:
        raise InvalidBlock("round-regression", f"round {block.round} after {prev.round}")
    if block.timestamp_ms < prev.timestamp_ms:
        raise InvalidBlock(
            "timestamp-regression", f"timestamp {block.timestamp_ms} after {prev.timestamp_ms}"
        )


def _check_references(block: Block) -> None:
    if not block.parents and not block.verdicts:
        return
    own = block.hash
    judged = {v.block for v in block.verdicts}
    if own in judged or own in block.parents:
        raise InvalidBlock("self-reference", "a block cannot judge or average itself")
    if block.prev != ZERO_HASH and (block.prev in judged or block.prev in block.parents):
        raise InvalidBlock("own-chain-reference", "prev is the base, not a peer block")
    accepted = {v.block for v in block.verdicts if v.accepted}
    for p in block.parents:
        if p not in accepted:
            raise InvalidBlock("parent-not-accepted", f"parent {p.hex()[:16]}.. has no accept")


def validate_chain(
    blocks: Sequence[Block],
    *,
    network: bytes,
    sig_check: SigCheck = "batch",
    prev: Block | None = None,
    now_ms: int | None = None,
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
) -> None:
    """Validate consecutive blocks of one author's chain.

    Parameters
    ----------
    blocks
        Blocks in height order: from genesis, or continuing ``prev``.
    network
        The network id this node runs.
    sig_check
        ``"off"`` (trusted replay, e.g. from the local store), ``"each"`` (one verification per
        block, stops early) or ``"batch"`` (all signatures via
        :func:`dfl.crypto.verify_batch`; the same result as ``"each"``).
    prev
        Trusted predecessor of ``blocks[0]``; ``None`` means ``blocks[0]`` must be genesis.
    now_ms, max_skew_ms
        As in :func:`check_block`.

    Raises
    ------
    ChainError
        At the first bad block: its author, height and the reason code.
    """
    if sig_check not in ("off", "each", "batch"):
        raise ValueError(f"sig_check must be 'off', 'each' or 'batch', not {sig_check!r}")
    first_bad = len(blocks)
    rule_error: InvalidBlock | None = None
    last = prev
    for i, block in enumerate(blocks):
        try:
            check_block(
                block,
                last,
                network=network,
                now_ms=now_ms,
                max_skew_ms=max_skew_ms,
                check_signature=sig_check == "each",
            )
        except InvalidBlock as exc:
            first_bad, rule_error = i, exc
            break
        last = block
    if sig_check == "batch":
        todo = [b for b in blocks[: first_bad + 1] if b._sig_ok is None]
        oks = verify_batch([(b.author, b.signing_message(), b.signature) for b in todo])
        for b, ok in zip(todo, oks, strict=True):
            object.__setattr__(b, "_sig_ok", ok)
        for i, block in enumerate(blocks[: first_bad + 1]):
            if not block.verify_signature():  # cached: no second verification
                if i < first_bad or rule_error is None or rule_error.reason != "wrong-network":
                    raise ChainError(block.author, block.height, "bad-signature")
                break
    if rule_error is not None:
        bad = blocks[first_bad]
        raise ChainError(bad.author, bad.height, rule_error.reason, rule_error.detail)


# --- equivocation ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Equivocation:
    """Two blocks by one author, on one network, at one height, with different hashes.

    The pair is stored ordered by hash (``a.hash < b.hash``) whatever order it was given in, so
    a proof has one encoding. Construction checks the shape; :meth:`verify` checks that both
    signatures are the author's, which makes it a proof of misbehaviour.

    Raises
    ------
    InvalidBlock
        ``"not-equivocation"`` if the two blocks do not have that shape.
    """

    a: Block
    b: Block

    def __post_init__(self) -> None:
        a, b = self.a, self.b
        if type(a) is not Block or type(b) is not Block:
            raise InvalidBlock("not-equivocation", "an equivocation holds two blocks")
        if a.author != b.author or a.network != b.network or a.height != b.height:
            raise InvalidBlock("not-equivocation", "different author, network or height")
        if a.hash == b.hash:
            raise InvalidBlock("not-equivocation", "the same block twice")
        if b.hash < a.hash:
            object.__setattr__(self, "a", b)
            object.__setattr__(self, "b", a)

    @property
    def author(self) -> bytes:
        """The equivocating author's public key."""
        return self.a.author

    @property
    def height(self) -> int:
        """The height at which the author signed two blocks."""
        return self.a.height

    def verify(self) -> bool:
        """Return whether both blocks carry valid signatures of the author (a real proof)."""
        return self.a.verify_signature() and self.b.verify_signature()

    def encode(self) -> bytes:
        """Canonical encoding: msgpack ``[EVIDENCE_VERSION, bin(encode(a)), bin(encode(b))]``."""
        return bytes(msgpack.packb([EVIDENCE_VERSION, encode(self.a), encode(self.b)]))

    @classmethod
    def decode(cls, data: bytes) -> Equivocation:
        """Decode a canonical encoding. Total: an ``Equivocation`` or ``InvalidBlock``.

        Signatures are not checked here; call :meth:`verify`.
        """
        if type(data) is not bytes or len(data) > MAX_EVIDENCE_BYTES:
            raise InvalidBlock("malformed", "evidence is bytes of bounded size")
        try:
            obj = msgpack.unpackb(
                data,
                raw=False,
                max_str_len=0,
                max_bin_len=MAX_BLOCK_BYTES,
                max_array_len=3,
                max_map_len=0,
                max_ext_len=0,
            )
        except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
            raise InvalidBlock("malformed", f"{type(exc).__name__}: {exc}"[:200]) from None
        if type(obj) is not list or len(obj) != 3 or obj[0] != EVIDENCE_VERSION:
            raise InvalidBlock("malformed", "evidence is [1, block, block]")
        if type(obj[0]) is not int or type(obj[1]) is not bytes or type(obj[2]) is not bytes:
            raise InvalidBlock("malformed", "evidence is [1, block, block]")
        proof = cls(decode(obj[1]), decode(obj[2]))
        if proof.encode() != data:
            raise InvalidBlock("non-canonical", "evidence blocks must be ordered by hash")
        return proof


def find_equivocation(a: Block, b: Block) -> Equivocation | None:
    """Return a verified proof if ``a`` and ``b`` equivocate, else ``None``.

    ``None`` when they differ in author, network or height, are the same block, or either
    signature is invalid (a forged block proves nothing against its claimed author).
    """
    if a.author != b.author or a.network != b.network or a.height != b.height or a == b:
        return None
    proof = Equivocation(a, b)
    return proof if proof.verify() else None
