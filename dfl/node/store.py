"""Block store: the node's own chain, its peers' verified headers, and model blobs.

One protocol (:class:`BlockStore`), two implementations (:class:`MemoryStore` for tests and the
simulator, :class:`LmdbStore` for the daemon), one contract test
(``tests/node/test_store_contract.py``) that both pass.

Invariants (both implementations)
---------------------------------
* A block is stored under ``block.hash``; the stored bytes always hash to their key. The LMDB
  store re-checks this on every read and raises :class:`~dfl.errors.StoreError` (naming the file
  and the key) instead of returning a block it cannot vouch for.
* ``(author, height)`` holds at most one block. Putting the same block again is a no-op; putting a
  *different* block at an occupied ``(author, height)`` raises :class:`ConflictError` carrying
  the stored block (material for an equivocation proof) and changes nothing.
* ``head(author)`` is the stored block of ``author`` with the greatest height. Peer chains may
  have gaps (a node may store only part of a peer's chain); ``iter_chain`` yields what is stored,
  in height order.
* A blob is stored under its BLAKE2b-256 digest. ``put(block, blob)`` checks the blob against
  ``block.model_digest`` and ``block.model_size`` before anything is written; ``get_blob`` re-checks
  the digest on every read and never returns wrong bytes.
* ``put``/``put_many`` are atomic: blocks, blobs and every index entry commit together or not at
  all (one LMDB write transaction; the in-memory store checks everything before mutating).
* ``delete_blob`` never deletes a blob referenced by a block of ``own_author`` (the node's own
  chain). The policy lives here, not in the caller: construct the store with ``own_author``.
  Without it, a blob referenced by *any* stored block is refused (:class:`~dfl.errors.UsageError`);
  unreferenced blobs can always be deleted.
* The store checks integrity, not protocol rules: callers store only blocks that passed
  :mod:`dfl.chain` validation. Signatures are not re-verified on read.

LMDB layout (format ``dfl.store/1``)
------------------------------------
One environment (a directory holding ``data.mdb`` and ``lock.mdb``) with named sub-databases::

    dfl      b"format" -> b"dfl.store/1";  b"own_author" -> 32 bytes (optional)
    blocks   hash(32)                      -> canonical block encoding
    index    author(32) + height(8, BE)    -> hash(32)
    heads    author(32)                    -> height(8, BE) + hash(32)
    refs     model_digest(32) + hash(32)   -> author(32)      (which blocks reference a blob)
    blobs    digest(32)                    -> blob bytes
    evidence author(32)                    -> equivocation proof bytes (first proof kept)
    meta     utf-8 key                     -> small value (round, rule state, ...)

Durability: by default every commit is synced (LMDB ``sync`` + ``metasync``), so a block that
``put`` returned for survives a crash of the process or of the machine. ``durable=False`` (the
simulator) keeps crash-of-the-process safety but may lose the last commits on power loss. The map
grows by doubling when full, up to ``max_map_size``. A truncated or foreign ``data.mdb`` is
detected before LMDB maps it (mapping a truncated file would crash the process with SIGBUS).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

import lmdb

from dfl.block import Block, check_blob, decode, encode
from dfl.crypto import blake2b256
from dfl.errors import InvalidBlock, StoreError, UsageError

__all__ = [
    "FORMAT",
    "BlockStore",
    "ConflictError",
    "LmdbStore",
    "MemoryStore",
    "open_store",
]

FORMAT = b"dfl.store/1"
"""Format record of :class:`LmdbStore`; a store with another record is refused on open."""

_HASH_LEN = 32
_MAX_META_KEY = 256
_CHUNK = 256  # blocks read per read transaction while iterating
_T = TypeVar("_T")


class ConflictError(StoreError):
    """A different block is already stored at the same ``(author, height)``.

    Attributes
    ----------
    existing : Block
        The block the store holds (unchanged).
    new : Block
        The block that was refused. ``(existing, new)`` is an equivocation when both are validly
        signed by the author.
    """

    def __init__(self, existing: Block, new: Block) -> None:
        self.existing = existing
        self.new = new
        super().__init__(
            f"author {existing.author.hex()[:16]} height {existing.height} already holds block "
            f"{existing.hash.hex()[:16]}; refusing different block {new.hash.hex()[:16]}"
        )


@runtime_checkable
class BlockStore(Protocol):
    """Storage of blocks, blobs, equivocation evidence and node metadata.

    Every method raises :class:`~dfl.errors.StoreError` when the underlying storage is unusable
    (closed, corrupt, full) and :class:`~dfl.errors.UsageError` on malformed arguments (hashes,
    digests and authors are 32 bytes).
    """

    def put(self, block: Block, blob: bytes | None = None) -> None:
        """Store ``block`` (and its model ``blob``) atomically.

        Raises
        ------
        InvalidBlock
            ``blob`` does not match ``block.model_digest`` / ``block.model_size``.
        ConflictError
            A different block is stored at ``(block.author, block.height)``.
        """
        ...

    def put_many(self, items: Iterable[tuple[Block, bytes | None]]) -> None:
        """Store several ``(block, blob_or_None)`` pairs in one atomic transaction."""
        ...

    def has(self, block_hash: bytes) -> bool:
        """Whether a block with this hash is stored."""
        ...

    def get(self, block_hash: bytes) -> Block | None:
        """The block with this hash, or None."""
        ...

    def get_at(self, author: bytes, height: int) -> Block | None:
        """The block of ``author`` at ``height``, or None."""
        ...

    def head(self, author: bytes) -> Block | None:
        """The stored block of ``author`` with the greatest height, or None."""
        ...

    def authors(self) -> list[bytes]:
        """Authors with at least one stored block, sorted."""
        ...

    def iter_chain(self, author: bytes, start: int = 0) -> Iterator[Block]:
        """Stored blocks of ``author`` with ``height >= start``, in height order (gaps possible)."""
        ...

    def all_blocks(self) -> Iterator[Block]:
        """Every stored block, ordered by ``(author, height)``."""
        ...

    def count(self) -> int:
        """Number of stored blocks."""
        ...

    def get_blob(self, digest: bytes) -> bytes | None:
        """The blob with this digest (re-checked), or None; StoreError if it is corrupt."""
        ...

    def has_blob(self, digest: bytes) -> bool:
        """Whether a blob with this digest is stored (not re-checked)."""
        ...

    def put_blob(self, blob: bytes) -> bytes:
        """Store a blob under its digest and return the digest."""
        ...

    def delete_blob(self, digest: bytes) -> bool:
        """Delete a blob; True if it was deleted, False if absent or pinned by an own block."""
        ...

    def blob_digests(self) -> Iterator[bytes]:
        """Digests of every stored blob, sorted."""
        ...

    def put_evidence(self, author: bytes, proof: bytes) -> None:
        """Record an equivocation proof against ``author`` (the first proof is kept)."""
        ...

    def evidence(self) -> dict[bytes, bytes]:
        """Every recorded proof, by author."""
        ...

    def meta_get(self, key: str) -> bytes | None:
        """A metadata value, or None."""
        ...

    def meta_set(self, key: str, value: bytes) -> None:
        """Set a metadata value (durable like a block)."""
        ...

    def close(self) -> None:
        """Release the store; later calls raise StoreError. Idempotent."""
        ...

    def __enter__(self) -> BlockStore: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


# --------------------------------------------------------------------------------------------
# argument checks and key encodings shared by both implementations


def _check32(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != _HASH_LEN:
        raise UsageError(f"{what} must be {_HASH_LEN} bytes, got {value!r:.80}")
    return value


def _check_height(height: int) -> int:
    if isinstance(height, bool) or not isinstance(height, int) or not 0 <= height < 2**64:
        raise UsageError(f"height must be an int in [0, 2**64), got {height!r}")
    return height


def _check_meta_key(key: str) -> bytes:
    if not isinstance(key, str) or not key:
        raise UsageError(f"meta key must be a non-empty str, got {key!r}")
    raw = key.encode("utf-8")
    if len(raw) > _MAX_META_KEY:
        raise UsageError(f"meta key longer than {_MAX_META_KEY} bytes: {key[:40]!r}...")
    return raw


def _check_bytes(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise UsageError(f"{what} must be bytes, got {type(value).__name__}")
    return value


def _check_blob(block: Block, blob: bytes) -> None:
    """Raise InvalidBlock unless ``blob`` is the model ``block`` commits to (nothing written)."""
    _check_bytes(blob, "blob")
    try:
        check_blob(block, blob)
    except InvalidBlock as exc:
        raise InvalidBlock(
            exc.reason,
            f"refusing to store block {block.hash.hex()[:16]} with this blob: {exc.detail}",
        ) from None


def _index_key(author: bytes, height: int) -> bytes:
    return author + height.to_bytes(8, "big")


# --------------------------------------------------------------------------------------------
# in-memory implementation


class MemoryStore:
    """A :class:`BlockStore` in process memory (tests, simulator). Not persistent.

    Parameters
    ----------
    own_author : bytes, optional
        Public key of the node owning the store; blobs referenced by its blocks are never
        deleted by :meth:`delete_blob`.
    """

    def __init__(self, *, own_author: bytes | None = None) -> None:
        self.own_author = None if own_author is None else _check32(own_author, "own_author")
        self._blocks: dict[bytes, Block] = {}
        self._index: dict[bytes, dict[int, bytes]] = {}
        self._heights: dict[bytes, list[int]] = {}  # sorted heights per author
        self._blobs: dict[bytes, bytes] = {}
        self._refs: dict[bytes, dict[bytes, bytes]] = {}  # digest -> {block hash: author}
        self._evidence: dict[bytes, bytes] = {}
        self._meta: dict[bytes, bytes] = {}
        self._closed = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"MemoryStore(blocks={len(self._blocks)}, blobs={len(self._blobs)})"

    def _open(self) -> None:
        if self._closed:
            raise StoreError("memory store is closed")

    # blocks ------------------------------------------------------------------------------

    def put(self, block: Block, blob: bytes | None = None) -> None:
        self.put_many(((block, blob),))

    def put_many(self, items: Iterable[tuple[Block, bytes | None]]) -> None:
        items = list(items)
        for block, blob in items:
            if blob is not None:
                _check_blob(block, blob)
        with self._lock:
            self._open()
            # Stage first, mutate after: a conflict anywhere leaves the store unchanged.
            staged: dict[tuple[bytes, int], Block] = {}
            new_blocks: list[Block] = []
            for block, _ in items:
                key = (block.author, block.height)
                existing = staged.get(key)
                if existing is None:
                    h = self._index.get(block.author, {}).get(block.height)
                    existing = None if h is None else self._blocks[h]
                if existing is not None:
                    if existing.hash != block.hash:
                        raise ConflictError(existing, block)
                    continue
                staged[key] = block
                new_blocks.append(block)
            for block in new_blocks:
                h = block.hash
                self._blocks[h] = block
                self._index.setdefault(block.author, {})[block.height] = h
                bisect.insort(self._heights.setdefault(block.author, []), block.height)
                self._refs.setdefault(block.model_digest, {})[h] = block.author
            for block, blob in items:
                if blob is not None:
                    self._blobs[block.model_digest] = blob

    def has(self, block_hash: bytes) -> bool:
        _check32(block_hash, "block hash")
        with self._lock:
            self._open()
            return block_hash in self._blocks

    def get(self, block_hash: bytes) -> Block | None:
        _check32(block_hash, "block hash")
        with self._lock:
            self._open()
            return self._blocks.get(block_hash)

    def get_at(self, author: bytes, height: int) -> Block | None:
        _check32(author, "author")
        _check_height(height)
        with self._lock:
            self._open()
            h = self._index.get(author, {}).get(height)
            return None if h is None else self._blocks[h]

    def head(self, author: bytes) -> Block | None:
        _check32(author, "author")
        with self._lock:
            self._open()
            heights = self._heights.get(author)
            if not heights:
                return None
            return self._blocks[self._index[author][heights[-1]]]

    def authors(self) -> list[bytes]:
        with self._lock:
            self._open()
            return sorted(self._index)

    def iter_chain(self, author: bytes, start: int = 0) -> Iterator[Block]:
        _check32(author, "author")
        _check_height(start)
        return self._iter_chain(author, start)

    def _iter_chain(self, author: bytes, start: int) -> Iterator[Block]:
        while True:
            with self._lock:
                self._open()
                heights = self._heights.get(author, [])
                i = bisect.bisect_left(heights, start)
                chunk = [self._blocks[self._index[author][h]] for h in heights[i : i + _CHUNK]]
            if not chunk:
                return
            yield from chunk
            start = chunk[-1].height + 1

    def all_blocks(self) -> Iterator[Block]:
        for author in self.authors():
            yield from self._iter_chain(author, 0)

    def count(self) -> int:
        with self._lock:
            self._open()
            return len(self._blocks)

    # blobs -------------------------------------------------------------------------------

    def get_blob(self, digest: bytes) -> bytes | None:
        _check32(digest, "digest")
        with self._lock:
            self._open()
            return self._blobs.get(digest)  # bytes are immutable: checked when stored

    def has_blob(self, digest: bytes) -> bool:
        _check32(digest, "digest")
        with self._lock:
            self._open()
            return digest in self._blobs

    def put_blob(self, blob: bytes) -> bytes:
        _check_bytes(blob, "blob")
        digest = blake2b256(blob)
        with self._lock:
            self._open()
            self._blobs[digest] = blob
        return digest

    def delete_blob(self, digest: bytes) -> bool:
        _check32(digest, "digest")
        with self._lock:
            self._open()
            if digest not in self._blobs:
                return False
            referers = self._refs.get(digest, {}).values()
            if _pinned(self.own_author, referers, digest, "memory store"):
                return False
            del self._blobs[digest]
            return True

    def blob_digests(self) -> Iterator[bytes]:
        with self._lock:
            self._open()
            digests = sorted(self._blobs)
        return iter(digests)

    # evidence and metadata ---------------------------------------------------------------

    def put_evidence(self, author: bytes, proof: bytes) -> None:
        _check32(author, "author")
        _check_bytes(proof, "proof")
        with self._lock:
            self._open()
            self._evidence.setdefault(author, proof)

    def evidence(self) -> dict[bytes, bytes]:
        with self._lock:
            self._open()
            return dict(sorted(self._evidence.items()))

    def meta_get(self, key: str) -> bytes | None:
        raw = _check_meta_key(key)
        with self._lock:
            self._open()
            return self._meta.get(raw)

    def meta_set(self, key: str, value: bytes) -> None:
        raw = _check_meta_key(key)
        _check_bytes(value, "meta value")
        with self._lock:
            self._open()
            self._meta[raw] = value

    # lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _pinned(own_author: bytes | None, referers: Iterable[bytes], digest: bytes, where: str) -> bool:
    """Apply the delete_blob policy to the authors of the blocks referencing ``digest``."""
    referers = list(referers)
    if own_author is None:
        if referers:
            raise UsageError(
                f"{where}: blob {digest.hex()[:16]} is referenced by {len(referers)} block(s) and "
                "the store has no own_author, so it cannot tell whether it is the node's own"
            )
        return False
    return own_author in referers


# --------------------------------------------------------------------------------------------
# LMDB implementation

_MDB_MAGIC = 0xBEEFC0DE
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_DBS = (b"dfl", b"blocks", b"index", b"heads", b"refs", b"blobs", b"evidence", b"meta")


def _check_data_file(data: Path) -> None:
    """Refuse a data.mdb that is not LMDB, or shorter than its committed pages.

    LMDB maps the file; touching a page past the end of a truncated file kills the process with
    SIGBUS, and a zero-length file would be silently re-initialized. Reading the two meta pages
    ourselves (64-bit, native byte order, LMDB 0.9 or 1.0 page header) avoids both.
    """
    try:
        size = data.stat().st_size
        with data.open("rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise StoreError(f"{data}: cannot read store file: {exc}") from exc
    hdr = next(
        (o for o in (16, 24) if len(head) >= o + 4 and _U32.unpack_from(head, o)[0] == _MDB_MAGIC),
        None,
    )
    if hdr is None:
        if size == 0:
            raise StoreError(f"{data}: store file is empty (truncated to 0 bytes)")
        raise StoreError(f"{data}: not an LMDB data file (no LMDB magic in its first page)")
    psize = _U32.unpack_from(head, hdr + 24)[0]  # mm_psize aliases the free DB's md_pad
    if psize < 512 or psize > 65536 or psize & (psize - 1):
        raise StoreError(f"{data}: corrupt LMDB meta page (page size {psize})")
    if size < 2 * psize:
        raise StoreError(
            f"{data}: store file truncated ({size} bytes, meta pages need {2 * psize})"
        )
    with data.open("rb") as f:
        f.seek(psize)
        second = f.read(hdr + 160)
    metas = []
    for page, buf in ((0, head), (1, second)):
        if _U32.unpack_from(buf, hdr)[0] != _MDB_MAGIC:
            raise StoreError(f"{data}: corrupt LMDB meta page {page} (bad magic)")
        last_pg = _U64.unpack_from(buf, hdr + 24 + 96)[0]
        txnid = _U64.unpack_from(buf, hdr + 24 + 104)[0]
        metas.append((txnid, last_pg))
    _, last_pg = max(metas)
    need = (last_pg + 1) * psize
    if size < need:
        raise StoreError(
            f"{data}: store file truncated ({size} bytes, committed data needs {need} bytes)"
        )


def _verify_data_file(data: Path) -> None:
    """Full structural check of ``data`` with py-lmdb's offline verifier."""
    from lmdb import verify as lmdb_verify

    walk: Callable[[str, bool], list[str]] = lmdb_verify.verify
    try:
        problems = walk(str(data), False)
    except (lmdb_verify.VerifyError, OSError) as exc:
        raise StoreError(f"{data}: store file failed verification: {exc}") from exc
    if problems:
        shown = "; ".join(problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise StoreError(f"{data}: store file is corrupt: {shown}{more}")


def _abort(txn: lmdb.Transaction[bytes]) -> None:
    """Abort ``txn``; a transaction whose commit failed is already gone, which is fine."""
    with contextlib.suppress(lmdb.Error):
        txn.abort()


def _has_key(txn: lmdb.Transaction[bytes], db: lmdb._Database, key: bytes) -> bool:
    """Whether ``key`` is in ``db`` without copying its value (blobs are large)."""
    return txn.cursor(db=db).set_key(key)


class LmdbStore:
    """A persistent :class:`BlockStore` in an LMDB environment (a directory).

    Parameters
    ----------
    path : str or os.PathLike
        Directory of the store (created if missing). Holds ``data.mdb`` and ``lock.mdb``.
    map_size : int
        Initial map size in bytes; the map doubles whenever a transaction does not fit.
    max_map_size : int
        Upper bound of automatic growth; a write that does not fit then raises StoreError.
    durable : bool
        Sync every commit to disk (default). ``False`` is for the simulator: commits survive a
        crash of the process but not of the machine.
    writemap : bool
        Write through a writable memory map. Off by default: a stray write in the process could
        corrupt the file, and durable commits of 250 KB blobs measured slower with it
        (``benchmarks/chain.py``).
    own_author : bytes, optional
        The node's public key; recorded in the store on first use and read back when omitted.
        Opening with a different key raises UsageError.
    verify : bool
        Before opening, walk every page of ``data.mdb`` with py-lmdb's offline verifier (slow:
        seconds per 100 MB; for stores copied from elsewhere or after a disk error). Without it
        only the cheap meta-page and length checks run.

    Raises
    ------
    StoreError
        The path is not a store directory, the file is not LMDB, is truncated, or has another
        format record; the message names the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = 64 << 20,
        max_map_size: int = 1 << 40,
        durable: bool = True,
        writemap: bool = False,
        own_author: bytes | None = None,
        verify: bool = False,
    ) -> None:
        if own_author is not None:
            _check32(own_author, "own_author")
        if map_size <= 0 or max_map_size < map_size:
            raise UsageError(f"need 0 < map_size <= max_map_size, got {map_size}, {max_map_size}")
        self.path = Path(path)
        self.file = self.path / "data.mdb"
        self._max_map_size = max_map_size
        self._lock = threading.RLock()
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path}: is a file, expected a store directory")
        fresh = not self.file.exists()
        if not fresh:
            _check_data_file(self.file)
            if verify:
                _verify_data_file(self.file)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._env: lmdb.Environment | None = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=len(_DBS),
                subdir=True,
                sync=durable,
                metasync=durable,
                writemap=writemap,
            )
        except (lmdb.Error, OSError) as exc:
            raise StoreError(f"{self.file}: cannot open store: {exc}") from exc
        try:
            self._env.reader_check()  # clear reader slots left by killed processes
            self._dbs = self._open_dbs(fresh)
            self.own_author = self._bind_own_author(own_author)
        except BaseException:
            self._env.close()
            self._env = None
            raise

    def __repr__(self) -> str:
        return f"LmdbStore({str(self.path)!r})"

    # plumbing ----------------------------------------------------------------------------

    def _error(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"{self.file}: {what}: {type(exc).__name__}: {exc}")

    def _live_env(self) -> lmdb.Environment:
        if self._env is None:
            raise StoreError(f"{self.file}: store is closed")
        return self._env

    def _open_dbs(self, fresh: bool) -> dict[bytes, lmdb._Database]:
        env = self._live_env()
        try:
            with env.begin(write=True) as txn:
                if not fresh and txn.stat(env.open_db(txn=txn))["entries"] == 0:
                    fresh = True  # killed before the first commit: an empty environment
                if not fresh:
                    try:
                        dfl_db = env.open_db(b"dfl", txn=txn, create=False)
                    except lmdb.NotFoundError:
                        raise StoreError(
                            f"{self.file}: not a dfl store (no format record)"
                        ) from None
                    fmt = txn.get(b"format", db=dfl_db)
                    if fmt != FORMAT:
                        raise StoreError(
                            f"{self.file}: unsupported store format {fmt!r}, "
                            f"this dfl reads {FORMAT!r}"
                        )
                dbs = {name: env.open_db(name, txn=txn, create=True) for name in _DBS}
                if fresh:
                    txn.put(b"format", FORMAT, db=dbs[b"dfl"])
            return dbs
        except lmdb.Error as exc:
            raise self._error("cannot open store", exc) from exc

    def _bind_own_author(self, own_author: bytes | None) -> bytes | None:
        recorded = self._read(lambda txn: txn.get(b"own_author", db=self._dbs[b"dfl"]))
        if own_author is None or recorded == own_author:
            return recorded
        if recorded is not None:
            raise UsageError(
                f"{self.file}: store belongs to author {recorded.hex()[:16]}, "
                f"opened for {own_author.hex()[:16]}"
            )
        self._write(lambda txn: txn.put(b"own_author", own_author, db=self._dbs[b"dfl"]))
        return own_author

    def _read(self, fn: Callable[[lmdb.Transaction[bytes]], _T]) -> _T:
        with self._lock:
            env = self._live_env()
            for _ in range(3):
                try:
                    with env.begin() as txn:
                        return fn(txn)
                except lmdb.MapResizedError:
                    self._adopt_map_size()
                except lmdb.Error as exc:
                    raise self._error("read failed", exc) from exc
            raise StoreError(f"{self.file}: read failed: map keeps being resized")

    def _write(self, fn: Callable[[lmdb.Transaction[bytes]], _T]) -> _T:
        """Run ``fn`` in one write transaction; on MapFullError abort, double the map, retry.

        ``fn`` must only read and write through ``txn`` (it may run more than once).
        """
        with self._lock:
            env = self._live_env()
            while True:
                try:
                    txn = env.begin(write=True)
                except lmdb.MapResizedError:  # another process grew the map
                    self._adopt_map_size()
                    continue
                except lmdb.Error as exc:
                    raise self._error("cannot begin write", exc) from exc
                try:
                    result = fn(txn)
                    txn.commit()
                    return result
                except lmdb.MapFullError:
                    _abort(txn)
                    self._grow()
                except lmdb.Error as exc:
                    _abort(txn)
                    raise self._error("write failed", exc) from exc
                except BaseException:
                    _abort(txn)
                    raise

    def _adopt_map_size(self) -> None:
        try:
            self._live_env().set_mapsize(0)  # 0 = adopt the size another process set
        except lmdb.Error as exc:
            raise self._error("cannot adopt map size", exc) from exc

    def _grow(self) -> None:
        env = self._live_env()
        current = env.info()["map_size"]
        if current >= self._max_map_size:
            raise StoreError(f"{self.file}: store full at max_map_size={self._max_map_size}")
        try:
            env.set_mapsize(min(current * 2, self._max_map_size))
        except lmdb.Error as exc:
            raise self._error("cannot grow map", exc) from exc

    def _decode(self, key: bytes, raw: bytes | None) -> Block:
        if raw is None:
            raise StoreError(f"{self.file}: index names missing block {key.hex()}")
        if blake2b256(raw) != key:
            raise StoreError(f"{self.file}: stored block {key.hex()} is corrupt (hash mismatch)")
        try:
            return decode(raw)
        except InvalidBlock as exc:
            raise StoreError(f"{self.file}: stored block {key.hex()} is corrupt: {exc}") from exc

    def _load(self, txn: lmdb.Transaction[bytes], block_hash: bytes) -> Block:
        return self._decode(block_hash, txn.get(block_hash, db=self._dbs[b"blocks"]))

    # blocks ------------------------------------------------------------------------------

    def put(self, block: Block, blob: bytes | None = None) -> None:
        self.put_many(((block, blob),))

    def put_many(self, items: Iterable[tuple[Block, bytes | None]]) -> None:
        staged = []
        for block, blob in items:
            if blob is not None:
                _check_blob(block, blob)
            staged.append((block, block.hash, encode(block), blob))
        if staged:
            self._write(lambda txn: self._put_txn(txn, staged))

    def _put_txn(
        self, txn: lmdb.Transaction[bytes], staged: list[tuple[Block, bytes, bytes, bytes | None]]
    ) -> None:
        dbs = self._dbs
        for block, h, raw, blob in staged:
            ikey = _index_key(block.author, block.height)
            stored = txn.get(ikey, db=dbs[b"index"])
            if stored is not None and stored != h:
                raise ConflictError(self._load(txn, stored), block)
            if stored is None:
                txn.put(h, raw, db=dbs[b"blocks"])
                txn.put(ikey, h, db=dbs[b"index"])
                txn.put(block.model_digest + h, block.author, db=dbs[b"refs"])
                head = txn.get(block.author, db=dbs[b"heads"])
                if head is None or int.from_bytes(head[:8], "big") < block.height:
                    txn.put(block.author, ikey[32:] + h, db=dbs[b"heads"])
            if blob is not None:
                self._put_blob_txn(txn, block.model_digest, blob)

    def _put_blob_txn(self, txn: lmdb.Transaction[bytes], digest: bytes, blob: bytes) -> None:
        # Skip the rewrite when an intact copy is there; replace a corrupt one.
        existing = txn.get(digest, db=self._dbs[b"blobs"])
        if existing is None or blake2b256(existing) != digest:
            txn.put(digest, blob, db=self._dbs[b"blobs"])

    def has(self, block_hash: bytes) -> bool:
        _check32(block_hash, "block hash")
        return self._read(lambda txn: _has_key(txn, self._dbs[b"blocks"], block_hash))

    def get(self, block_hash: bytes) -> Block | None:
        _check32(block_hash, "block hash")
        raw = self._read(lambda txn: txn.get(block_hash, db=self._dbs[b"blocks"]))
        return None if raw is None else self._decode(block_hash, raw)

    def get_at(self, author: bytes, height: int) -> Block | None:
        ikey = _index_key(_check32(author, "author"), _check_height(height))

        def read(txn: lmdb.Transaction[bytes]) -> Block | None:
            h = txn.get(ikey, db=self._dbs[b"index"])
            return None if h is None else self._load(txn, h)

        return self._read(read)

    def head(self, author: bytes) -> Block | None:
        _check32(author, "author")

        def read(txn: lmdb.Transaction[bytes]) -> Block | None:
            head = txn.get(author, db=self._dbs[b"heads"])
            return None if head is None else self._load(txn, head[8:])

        return self._read(read)

    def authors(self) -> list[bytes]:
        return self._read(
            lambda txn: list(txn.cursor(db=self._dbs[b"heads"]).iternext(keys=True, values=False))
        )

    def iter_chain(self, author: bytes, start: int = 0) -> Iterator[Block]:
        return self._iter_index(_check32(author, "author"), _check_height(start))

    def all_blocks(self) -> Iterator[Block]:
        return self._iter_index(b"", 0)

    def _iter_index(self, prefix: bytes, start: int) -> Iterator[Block]:
        """Blocks whose index key starts with ``prefix``, in key order, from ``start`` on.

        Reads ``_CHUNK`` blocks per read transaction, so no transaction stays open while the
        caller holds the iterator (a long-lived reader would pin pages and block map growth).
        """
        key = prefix + start.to_bytes(8, "big") if prefix else b""
        while True:

            def read(txn: lmdb.Transaction[bytes], key: bytes = key) -> list[tuple[bytes, Block]]:
                cur = txn.cursor(db=self._dbs[b"index"])
                chunk: list[tuple[bytes, Block]] = []
                if not cur.set_range(key):
                    return chunk
                for ikey, h in cur:
                    if not ikey.startswith(prefix) or len(chunk) >= _CHUNK:
                        break
                    chunk.append((ikey, self._load(txn, h)))
                return chunk

            chunk = self._read(read)
            for _, block in chunk:
                yield block
            if len(chunk) < _CHUNK:
                return
            key = chunk[-1][0] + b"\x00"

    def count(self) -> int:
        return self._read(lambda txn: txn.stat(self._dbs[b"blocks"])["entries"])

    # blobs -------------------------------------------------------------------------------

    def get_blob(self, digest: bytes) -> bytes | None:
        _check32(digest, "digest")
        blob = self._read(lambda txn: txn.get(digest, db=self._dbs[b"blobs"]))
        if blob is not None and blake2b256(blob) != digest:
            raise StoreError(
                f"{self.file}: stored blob {digest.hex()} is corrupt (digest mismatch)"
            )
        return blob

    def has_blob(self, digest: bytes) -> bool:
        _check32(digest, "digest")
        return self._read(lambda txn: _has_key(txn, self._dbs[b"blobs"], digest))

    def put_blob(self, blob: bytes) -> bytes:
        _check_bytes(blob, "blob")
        digest = blake2b256(blob)
        self._write(lambda txn: self._put_blob_txn(txn, digest, blob))
        return digest

    def delete_blob(self, digest: bytes) -> bool:
        _check32(digest, "digest")

        def delete(txn: lmdb.Transaction[bytes]) -> bool:
            if not _has_key(txn, self._dbs[b"blobs"], digest):
                return False
            cur = txn.cursor(db=self._dbs[b"refs"])
            referers = []
            if cur.set_range(digest):
                for key, author in cur:
                    if not key.startswith(digest):
                        break
                    referers.append(author)
            if _pinned(self.own_author, referers, digest, str(self.file)):
                return False
            return txn.delete(digest, db=self._dbs[b"blobs"])

        return self._write(delete)

    def blob_digests(self) -> Iterator[bytes]:
        digests = self._read(
            lambda txn: list(txn.cursor(db=self._dbs[b"blobs"]).iternext(keys=True, values=False))
        )
        return iter(digests)

    # evidence and metadata ---------------------------------------------------------------

    def put_evidence(self, author: bytes, proof: bytes) -> None:
        _check32(author, "author")
        _check_bytes(proof, "proof")
        self._write(lambda txn: txn.put(author, proof, db=self._dbs[b"evidence"], overwrite=False))

    def evidence(self) -> dict[bytes, bytes]:
        return self._read(lambda txn: dict(txn.cursor(db=self._dbs[b"evidence"])))

    def meta_get(self, key: str) -> bytes | None:
        raw = _check_meta_key(key)
        return self._read(lambda txn: txn.get(raw, db=self._dbs[b"meta"]))

    def meta_set(self, key: str, value: bytes) -> None:
        raw = _check_meta_key(key)
        _check_bytes(value, "meta value")
        self._write(lambda txn: txn.put(raw, value, db=self._dbs[b"meta"]))

    # lifecycle ---------------------------------------------------------------------------

    def map_size(self) -> int:
        """Current LMDB map size in bytes (grows automatically)."""
        return self._read(lambda txn: self._live_env().info()["map_size"])

    def close(self) -> None:
        with self._lock:
            if self._env is not None:
                self._env.close()
                self._env = None

    def __enter__(self) -> LmdbStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_store(
    spec: str | os.PathLike[str],
    *,
    own_author: bytes | None = None,
    map_size: int = 64 << 20,
    max_map_size: int = 1 << 40,
    durable: bool = True,
    writemap: bool = False,
) -> BlockStore:
    """Open a store from a spec: ``"memory"`` (or ``":memory:"``) or a directory path.

    ``own_author`` applies to both implementations; the LMDB settings are ignored for memory.
    """
    if isinstance(spec, str) and spec in ("memory", ":memory:"):
        return MemoryStore(own_author=own_author)
    return LmdbStore(
        spec,
        map_size=map_size,
        max_map_size=max_map_size,
        durable=durable,
        writemap=writemap,
        own_author=own_author,
    )
