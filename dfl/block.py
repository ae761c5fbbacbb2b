"""The dfl block: frozen dataclasses, canonical msgpack codec, signing, model blobs, task manifest.

The normative description is ``docs/protocol.md``; this module is its reference implementation.

Invariants
----------
* A :class:`Block` (and :class:`Verdict`, :class:`TaskManifest`) that exists is structurally
  valid: every field has its exact type, lies within its limits, floats are finite, parents and
  verdicts are sorted by hash with no duplicates, metrics sorted by name with no duplicates.
  Construction raises :class:`~dfl.errors.InvalidBlock` otherwise.
* Every valid block has exactly one encoding: ``encode(decode(b)) == b`` for every ``b`` that
  :func:`decode` accepts, and :func:`decode` rejects every other byte string (maps, float32,
  over-wide integers, unsorted lists, trailing bytes, ...). It does so by re-encoding and
  comparing bytes.
* :func:`decode` is total: any input yields a :class:`Block` or raises ``InvalidBlock``, never
  another exception, and never allocates more than a small multiple of ``MAX_BLOCK_BYTES``.
* ``Block.hash`` is BLAKE2b-256 of the full encoding (signature included); the signature covers
  ``SIGN_DOMAIN + unsigned_bytes()`` (the encoding without the signature). Block equality and
  Python hashing follow ``Block.hash``.
* Structural validity says nothing about the signature or the chain: see
  :meth:`Block.verify_signature` and :mod:`dfl.chain`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
import numpy as np
import numpy.typing as npt

from dfl.crypto import Identity, blake2b256, peer_id_from_public_key, verify
from dfl.errors import InvalidBlock, UsageError

__all__ = [
    "BLOCK_VERSION",
    "HASH_BYTES",
    "MANIFEST_VERSION",
    "MAX_BLOCK_BYTES",
    "MAX_INT",
    "MAX_METRICS",
    "MAX_METRIC_NAME_BYTES",
    "MAX_MODEL_BYTES",
    "MAX_PARENTS",
    "MAX_REASON_BYTES",
    "MAX_VERDICTS",
    "SIGN_DOMAIN",
    "ZERO_HASH",
    "Block",
    "TaskManifest",
    "Verdict",
    "blob_to_model",
    "check_blob",
    "decode",
    "encode",
    "make_block",
    "model_to_blob",
]

BLOCK_VERSION: Final = 1
MANIFEST_VERSION: Final = 1
HASH_BYTES: Final = 32
ZERO_HASH: Final = b"\0" * HASH_BYTES
SIGN_DOMAIN: Final = b"dfl/block/v1\0"

MAX_BLOCK_BYTES: Final = 64 * 1024
MAX_PARENTS: Final = 256
MAX_VERDICTS: Final = 256
MAX_METRICS: Final = 16
MAX_METRIC_NAME_BYTES: Final = 32
MAX_REASON_BYTES: Final = 32
MAX_MODEL_BYTES: Final = 256 * 1024 * 1024
MAX_INT: Final = 2**63 - 1
MAX_MANIFEST_BYTES: Final = 16 * 1024
MAX_MANIFEST_STR_BYTES: Final = 256
MAX_MANIFEST_EXTRA: Final = 32

_BLOCK_FIELDS: Final = 14
_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.:/-]*\Z")
_REASON_RE: Final = re.compile(r"[a-z0-9_.:/-]*\Z")

# Unpack limits: nothing in a block is longer than these, so a hostile length prefix fails fast.
_UNPACK_LIMITS: Final[dict[str, int]] = {
    "max_str_len": max(MAX_METRIC_NAME_BYTES, MAX_REASON_BYTES),
    "max_bin_len": 64,
    "max_array_len": max(MAX_PARENTS, MAX_VERDICTS, MAX_METRICS, _BLOCK_FIELDS),
    "max_map_len": 0,
    "max_ext_len": 0,
}
_UNPACK_ERRORS: Final = (
    ValueError,  # FormatError, StackError, ExtraData, OutOfData-ish, UnicodeDecodeError, limits
    TypeError,
    OverflowError,
    msgpack.UnpackException,
)


def _bad(reason: str, detail: str = "") -> InvalidBlock:
    return InvalidBlock(reason, detail)


def _check_bytes(value: object, size: int, name: str) -> None:
    if type(value) is not bytes or len(value) != size:
        raise _bad("bad-field", f"{name} must be {size} bytes")


def _check_uint(value: object, name: str, limit: int = MAX_INT) -> None:
    if type(value) is not int or not 0 <= value <= limit:
        raise _bad("bad-field", f"{name} must be an integer in [0, {limit}]")


def _check_float(value: object, name: str) -> None:
    if type(value) is not float or not math.isfinite(value):
        raise _bad("bad-field", f"{name} must be a finite float64")


def _check_code(value: object, name: str, pattern: re.Pattern[str], limit: int) -> None:
    # The patterns are ASCII-only, so len(str) == len(utf-8 bytes).
    if type(value) is not str or len(value) > limit or pattern.match(value) is None:
        raise _bad("bad-field", f"{name} must match {pattern.pattern} and be <= {limit} bytes")


@dataclass(frozen=True, slots=True)
class Verdict:
    """A block author's judgement of one peer block.

    Attributes
    ----------
    block
        Hash of the judged peer block (32 bytes).
    accepted
        Whether its model passed the author's robust filter.
    score
        The filter's score (rule-specific, finite float64; e.g. a distance or a trust weight).
    reason
        Short ASCII code (``[a-z0-9_.:/-]*``, <= 32 bytes), e.g. ``"ok"``, ``"krum-outlier"``.
    """

    block: bytes
    accepted: bool
    score: float
    reason: str = ""

    def __post_init__(self) -> None:
        _check_bytes(self.block, HASH_BYTES, "verdict.block")
        if type(self.accepted) is not bool:
            raise _bad("bad-field", "verdict.accepted must be a bool")
        _check_float(self.score, "verdict.score")
        _check_code(self.reason, "verdict.reason", _REASON_RE, MAX_REASON_BYTES)


@dataclass(frozen=True, slots=True, eq=False)
class Block:
    """One signed model-update block of an author's chain (structurally valid by construction).

    Attributes
    ----------
    version
        Format version, always :data:`BLOCK_VERSION`.
    network
        Network id (32 bytes) = :meth:`TaskManifest.network_id` of the task.
    author
        Author's Ed25519 public key (32 bytes).
    height
        Position in the author's chain, from 0.
    prev
        Hash of the author's previous block; :data:`ZERO_HASH` for height 0 (checked by
        :mod:`dfl.chain`, not here).
    round
        Training round this model belongs to.
    timestamp_ms
        Author's wall clock, milliseconds since the Unix epoch.
    model_digest
        BLAKE2b-256 of the model blob.
    model_size
        Blob length in bytes: positive, a multiple of 4, at most :data:`MAX_MODEL_BYTES`.
    samples
        Number of training samples behind the model (FedAvg weight).
    metrics
        ``((name, value), ...)`` sorted by name, names unique, values finite.
    parents
        Hashes of peer blocks whose models were averaged in; sorted, unique.
    verdicts
        Judgements of peer blocks; sorted by ``Verdict.block``, unique.
    signature
        Ed25519 signature (64 bytes) of ``SIGN_DOMAIN + unsigned_bytes()``.
    """

    version: int
    network: bytes
    author: bytes
    height: int
    prev: bytes
    round: int
    timestamp_ms: int
    model_digest: bytes
    model_size: int
    samples: int
    metrics: tuple[tuple[str, float], ...]
    parents: tuple[bytes, ...]
    verdicts: tuple[Verdict, ...]
    signature: bytes
    _unsigned: bytes = field(init=False, repr=False, default=b"")
    _hash: bytes = field(init=False, repr=False, default=b"")
    _sig_ok: bool | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if type(self.version) is not int or self.version != BLOCK_VERSION:
            raise _bad("unsupported-version", f"block version {self.version!r}")
        _check_bytes(self.network, HASH_BYTES, "network")
        _check_bytes(self.author, 32, "author")
        _check_uint(self.height, "height")
        _check_bytes(self.prev, HASH_BYTES, "prev")
        _check_uint(self.round, "round")
        _check_uint(self.timestamp_ms, "timestamp_ms")
        _check_bytes(self.model_digest, HASH_BYTES, "model_digest")
        _check_uint(self.model_size, "model_size", MAX_MODEL_BYTES)
        if self.model_size == 0 or self.model_size % 4:
            raise _bad("bad-field", "model_size must be a positive multiple of 4")
        _check_uint(self.samples, "samples")
        _check_metrics(self.metrics)
        _check_parents(self.parents)
        _check_verdicts(self.verdicts)
        _check_bytes(self.signature, 64, "signature")
        unsigned = msgpack.packb(self._unsigned_fields(), use_bin_type=True)
        object.__setattr__(self, "_unsigned", unsigned)
        if len(unsigned) + 66 > MAX_BLOCK_BYTES:  # 66 = bin8 header + 64-byte signature
            raise _bad("too-large", f"block encoding exceeds {MAX_BLOCK_BYTES} bytes")

    def _unsigned_fields(self) -> list[Any]:
        return [
            self.version,
            self.network,
            self.author,
            self.height,
            self.prev,
            self.round,
            self.timestamp_ms,
            self.model_digest,
            self.model_size,
            self.samples,
            [list(m) for m in self.metrics],
            list(self.parents),
            [[v.block, v.accepted, v.score, v.reason] for v in self.verdicts],
        ]

    def unsigned_bytes(self) -> bytes:
        """Canonical encoding of the 13 fields before the signature (a msgpack array of 13)."""
        return self._unsigned

    def signing_message(self) -> bytes:
        """The exact bytes the signature covers: ``SIGN_DOMAIN + unsigned_bytes()``."""
        return SIGN_DOMAIN + self._unsigned

    def encoded(self) -> bytes:
        """The canonical encoding (same as :func:`encode`)."""
        # The 14-element array differs from the 13-element one only in its fixarray header.
        return b"\x9e" + self._unsigned[1:] + b"\xc4\x40" + self.signature

    @property
    def hash(self) -> bytes:
        """BLAKE2b-256 of the full canonical encoding (cached)."""
        h = self._hash
        if not h:
            h = blake2b256(self.encoded())
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def author_peer_id(self) -> str:
        """The libp2p peer id of the author."""
        return peer_id_from_public_key(self.author)

    def verify_signature(self) -> bool:
        """Return whether :attr:`signature` is the author's signature of this block (cached)."""
        ok = self._sig_ok
        if ok is None:
            ok = verify(self.author, self.signing_message(), self.signature)
            object.__setattr__(self, "_sig_ok", ok)
        return ok

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Block):
            return NotImplemented
        return self.hash == other.hash

    def __hash__(self) -> int:
        return hash(self.hash)


def _check_metrics(metrics: object) -> None:
    if type(metrics) is not tuple or len(metrics) > MAX_METRICS:
        raise _bad("bad-field", f"metrics must be a tuple of at most {MAX_METRICS} pairs")
    last = ""
    for i, item in enumerate(metrics):
        if type(item) is not tuple or len(item) != 2:
            raise _bad("bad-field", "each metric is a (name, value) tuple")
        name, value = item
        _check_code(name, "metric name", _NAME_RE, MAX_METRIC_NAME_BYTES)
        _check_float(value, f"metric {name}")
        if i and name <= last:
            raise _bad("unsorted", "metric names must be sorted and unique")
        last = name


def _check_parents(parents: object) -> None:
    if type(parents) is not tuple or len(parents) > MAX_PARENTS:
        raise _bad("bad-field", f"parents must be a tuple of at most {MAX_PARENTS} hashes")
    last = b""
    for p in parents:
        _check_bytes(p, HASH_BYTES, "parent")
        if p <= last:
            raise _bad("unsorted", "parents must be sorted and unique")
        last = p


def _check_verdicts(verdicts: object) -> None:
    if type(verdicts) is not tuple or len(verdicts) > MAX_VERDICTS:
        raise _bad("bad-field", f"verdicts must be a tuple of at most {MAX_VERDICTS} verdicts")
    last = b""
    for v in verdicts:
        if type(v) is not Verdict:
            raise _bad("bad-field", "verdicts must hold Verdict objects")
        if v.block <= last:
            raise _bad("unsorted", "verdicts must be sorted by block hash and unique")
        last = v.block


_new_verdict = object.__new__
_set = object.__setattr__
_isfinite = math.isfinite
_reason_match = _REASON_RE.match


def _verdict_from_wire(blk: object, accepted: object, score: object, reason: object) -> Verdict:
    # Decoding hot path: the same checks as Verdict.__post_init__, inlined (about 2x faster).
    if (
        type(blk) is not bytes
        or len(blk) != HASH_BYTES
        or type(accepted) is not bool
        or type(score) is not float
        or not _isfinite(score)
        or type(reason) is not str
        or len(reason) > MAX_REASON_BYTES
        or _reason_match(reason) is None
    ):
        Verdict(blk, accepted, score, reason)  # type: ignore[arg-type]  # raises the precise error
        raise _bad("bad-field", "verdict")  # pragma: no cover - unreachable
    v: Verdict = _new_verdict(Verdict)
    _set(v, "block", blk)
    _set(v, "accepted", accepted)
    _set(v, "score", score)
    _set(v, "reason", reason)
    return v


def encode(block: Block) -> bytes:
    """Return the canonical encoding of ``block`` (a msgpack array of 14 fields)."""
    return block.encoded()


def _unpack(data: object, limit: int) -> Any:
    if type(data) is not bytes:
        raise _bad("malformed", f"expected bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise _bad("too-large", f"{len(data)} bytes > {limit}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, **_UNPACK_LIMITS)
    except _UNPACK_ERRORS as exc:
        raise _bad("malformed", f"{type(exc).__name__}: {exc}"[:200]) from None


def decode(data: bytes) -> Block:
    """Decode one canonical block encoding.

    Total: returns a structurally valid :class:`Block` or raises ``InvalidBlock`` (never
    another exception). Does not check the signature or any chain rule.

    Raises
    ------
    InvalidBlock
        ``reason`` is one of ``"too-large"``, ``"malformed"`` (not msgpack, wrong shape or
        types), ``"unsupported-version"``, ``"bad-field"``, ``"unsorted"``, ``"non-canonical"``.
    """
    obj = _unpack(data, MAX_BLOCK_BYTES)
    if type(obj) is not list or not obj:
        raise _bad("malformed", "a block is a msgpack array of 14 fields")
    if type(obj[0]) is not int or obj[0] != BLOCK_VERSION:
        raise _bad("unsupported-version", f"block version {obj[0]!r}"[:100])
    if len(obj) != _BLOCK_FIELDS:
        raise _bad("malformed", "a block is a msgpack array of 14 fields")
    metrics, parents, verdicts = obj[10], obj[11], obj[12]
    if type(metrics) is not list or type(parents) is not list or type(verdicts) is not list:
        raise _bad("malformed", "metrics, parents and verdicts are arrays")
    for m in metrics:
        if type(m) is not list or len(m) != 2:
            raise _bad("malformed", "a metric is an array [name, value]")
    verdict_objs = []
    for v in verdicts:
        if type(v) is not list or len(v) != 4:
            raise _bad("malformed", "a verdict is an array [block, accepted, score, reason]")
        verdict_objs.append(_verdict_from_wire(*v))
    block = Block(
        obj[0],
        obj[1],
        obj[2],
        obj[3],
        obj[4],
        obj[5],
        obj[6],
        obj[7],
        obj[8],
        obj[9],
        tuple((m[0], m[1]) for m in metrics),
        tuple(parents),
        tuple(verdict_objs),
        obj[13],
    )
    if block.encoded() != data:
        raise _bad("non-canonical", "re-encoding differs from the input")
    return block


def make_block(
    identity: Identity,
    *,
    network: bytes,
    height: int,
    prev: bytes,
    round: int,
    timestamp_ms: int,
    model: npt.NDArray[Any] | bytes,
    samples: int,
    metrics: dict[str, float] | tuple[tuple[str, float], ...] = (),
    parents: tuple[bytes, ...] | list[bytes] = (),
    verdicts: tuple[Verdict, ...] | list[Verdict] = (),
) -> Block:
    """Build and sign a block.

    Convenience over the raw constructor: ``model`` may be an array (converted with
    :func:`model_to_blob`) or the blob itself; metric values are converted to ``float``;
    metrics, parents and verdicts are sorted.

    Raises
    ------
    InvalidBlock
        If a field breaks a structural rule (duplicates, limits, non-finite numbers...).
    UsageError
        If ``model`` is an array with non-finite values.
    """
    blob = model if isinstance(model, bytes) else model_to_blob(model)
    items = metrics.items() if isinstance(metrics, dict) else metrics
    metric_t = tuple(sorted((k, float(v)) for k, v in items))
    draft = Block(
        BLOCK_VERSION,
        network,
        identity.public_key,
        height,
        prev,
        round,
        timestamp_ms,
        blake2b256(blob),
        len(blob),
        samples,
        metric_t,
        tuple(sorted(parents)),
        tuple(sorted(verdicts, key=lambda v: v.block)),
        b"\0" * 64,
    )
    signature = identity.sign(draft.signing_message())
    block = dataclasses.replace(draft, signature=signature)
    object.__setattr__(block, "_sig_ok", True)
    return block


# --- model blobs -----------------------------------------------------------------------------


def model_to_blob(model: npt.NDArray[Any]) -> bytes:
    """Return the blob of a model: its parameters flattened (C order) as little-endian float32.

    Raises
    ------
    UsageError
        If the model is empty, too large, or has non-finite values.
    """
    flat = np.ascontiguousarray(model, dtype="<f4").reshape(-1)
    if flat.size == 0 or flat.size * 4 > MAX_MODEL_BYTES:
        raise UsageError(f"a model has 1..{MAX_MODEL_BYTES // 4} parameters, got {flat.size}")
    if not np.isfinite(flat).all():
        raise UsageError("the model has NaN or infinite parameters")
    return flat.tobytes()


def blob_to_model(blob: bytes, expected_params: int) -> npt.NDArray[np.float32]:
    """Parse a blob into a fresh, writable, native float32 vector of ``expected_params``.

    Raises
    ------
    InvalidBlock
        ``"blob-size"`` if the length is not ``4 * expected_params``; ``"blob-non-finite"``
        if any value is NaN or infinite.
    """
    if not isinstance(blob, bytes | bytearray | memoryview) or len(blob) != 4 * expected_params:
        raise _bad("blob-size", f"expected {4 * expected_params} bytes")
    model = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    if not np.isfinite(model).all():
        raise _bad("blob-non-finite", "the model has NaN or infinite parameters")
    return model


def check_blob(block: Block, blob: bytes) -> None:
    """Check that ``blob`` is the model ``block`` commits to (size, then digest).

    Raises
    ------
    InvalidBlock
        ``"blob-size"`` or ``"blob-digest"``.
    """
    if len(blob) != block.model_size:
        raise _bad("blob-size", f"blob has {len(blob)} bytes, block says {block.model_size}")
    if blake2b256(blob) != block.model_digest:
        raise _bad("blob-digest", "blob digest differs from block.model_digest")


# --- task manifest ---------------------------------------------------------------------------

_MANIFEST_FIELDS: Final = 13


@dataclass(frozen=True, slots=True)
class TaskManifest:
    """A federated-learning task; its hash is the network id (one manifest = one network).

    Attributes
    ----------
    name
        Human label of the task; two otherwise equal tasks with different names are different
        networks.
    model, dataset, partition
        Registry names, e.g. ``"lenet"``, ``"mnist"``, ``"dirichlet:0.5"``.
    lr, batch_size, local_epochs
        Local training hyper-parameters.
    round_ms
        Nominal round duration in milliseconds.
    rounds
        Number of rounds (0 = unbounded).
    seed
        Seed of the data partition (and other task-level randomness).
    num_nodes
        Number of data shards the partition is cut into (0 = unspecified).
    extra
        Further ``(key, value)`` string pairs, sorted by key, keys unique.
    """

    name: str
    model: str
    dataset: str
    partition: str = "iid"
    lr: float = 0.05
    batch_size: int = 32
    local_epochs: int = 1
    round_ms: int = 10_000
    rounds: int = 0
    seed: int = 0
    num_nodes: int = 0
    extra: tuple[tuple[str, str], ...] = ()
    version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        if type(self.version) is not int or self.version != MANIFEST_VERSION:
            raise _bad("unsupported-version", f"manifest version {self.version!r}")
        for name in ("name", "model", "dataset", "partition"):
            _check_text(getattr(self, name), f"manifest.{name}", allow_empty=name == "partition")
        if type(self.lr) is int:  # TOML/CLI convenience: ``lr = 1`` means 1.0
            object.__setattr__(self, "lr", float(self.lr))
        _check_float(self.lr, "manifest.lr")
        if not self.lr > 0:
            raise _bad("bad-field", "manifest.lr must be positive")
        _check_uint(self.batch_size, "manifest.batch_size")
        if self.batch_size == 0:
            raise _bad("bad-field", "manifest.batch_size must be positive")
        for name in ("local_epochs", "round_ms", "rounds", "seed", "num_nodes"):
            _check_uint(getattr(self, name), f"manifest.{name}")
        if type(self.extra) is not tuple or len(self.extra) > MAX_MANIFEST_EXTRA:
            raise _bad("bad-field", f"manifest.extra holds at most {MAX_MANIFEST_EXTRA} pairs")
        last = ""
        for i, item in enumerate(self.extra):
            if type(item) is not tuple or len(item) != 2:
                raise _bad("bad-field", "manifest.extra items are (key, value) pairs")
            _check_text(item[0], "manifest.extra key", allow_empty=False)
            _check_text(item[1], "manifest.extra value", allow_empty=True)
            if i and item[0] <= last:
                raise _bad("unsorted", "manifest.extra keys must be sorted and unique")
            last = item[0]

    def _fields(self) -> list[Any]:
        return [
            self.version,
            self.name,
            self.model,
            self.dataset,
            self.partition,
            self.lr,
            self.batch_size,
            self.local_epochs,
            self.round_ms,
            self.rounds,
            self.seed,
            self.num_nodes,
            [list(kv) for kv in self.extra],
        ]

    def encode(self) -> bytes:
        """Canonical encoding: a msgpack array of 13 fields (see ``docs/protocol.md``)."""
        return bytes(msgpack.packb(self._fields(), use_bin_type=True))

    def network_id(self) -> bytes:
        """BLAKE2b-256 of :meth:`encode` -- the id of the network running this task."""
        return blake2b256(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> TaskManifest:
        """Decode a canonical manifest encoding (total, like :func:`decode`).

        Raises
        ------
        InvalidBlock
            On any malformed or non-canonical input.
        """
        if type(data) is not bytes or len(data) > MAX_MANIFEST_BYTES:
            raise _bad("malformed", "a manifest is at most 16 KiB of bytes")
        try:
            obj = msgpack.unpackb(
                data,
                raw=False,
                max_str_len=MAX_MANIFEST_STR_BYTES,
                max_bin_len=0,
                max_array_len=MAX_MANIFEST_EXTRA,
                max_map_len=0,
                max_ext_len=0,
            )
        except _UNPACK_ERRORS as exc:
            raise _bad("malformed", f"{type(exc).__name__}: {exc}"[:200]) from None
        if type(obj) is not list or len(obj) != _MANIFEST_FIELDS or type(obj[12]) is not list:
            raise _bad("malformed", "a manifest is a msgpack array of 13 fields")
        if any(type(kv) is not list or len(kv) != 2 for kv in obj[12]):
            raise _bad("malformed", "manifest.extra items are [key, value] arrays")
        manifest = cls(
            obj[1],
            obj[2],
            obj[3],
            obj[4],
            obj[5],
            obj[6],
            obj[7],
            obj[8],
            obj[9],
            obj[10],
            obj[11],
            tuple((kv[0], kv[1]) for kv in obj[12]),
            obj[0],
        )
        if manifest.encode() != data:
            raise _bad("non-canonical", "re-encoding differs from the input")
        return manifest


def _check_text(value: object, name: str, *, allow_empty: bool) -> None:
    if type(value) is not str or (not value and not allow_empty):
        raise _bad("bad-field", f"{name} must be a {'' if allow_empty else 'non-empty '}string")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_MANIFEST_STR_BYTES or any(
        0xD800 <= ord(c) <= 0xDFFF for c in value
    ):
        raise _bad("bad-field", f"{name} must be valid UTF-8 of at most 256 bytes")
