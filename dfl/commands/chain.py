"""`dfl chain show` and `dfl chain verify`: read and audit a node's store."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from dfl.block import Block
from dfl.chain import ChainError, Equivocation, validate_chain
from dfl.config import task_manifest
from dfl.errors import DflError, InvalidBlock, StoreError
from dfl.node.home import Home
from dfl.node.store import BlockStore, LmdbStore

__all__ = ["chain", "verify_store"]


def _open(home: Home) -> tuple[BlockStore, bytes, bytes]:
    cfg = home.config()
    ident = home.identity()
    path = home.store_path(cfg)
    path.mkdir(parents=True, exist_ok=True)
    store = LmdbStore(path, own_author=ident.public_key)
    return store, ident.public_key, task_manifest(cfg).network_id()


def block_json(b: Block) -> dict[str, object]:
    return {
        "hash": b.hash.hex(),
        "author": b.author.hex(),
        "peer_id": b.author_peer_id,
        "height": b.height,
        "round": b.round,
        "prev": b.prev.hex(),
        "timestamp_ms": b.timestamp_ms,
        "model_digest": b.model_digest.hex(),
        "model_size": b.model_size,
        "samples": b.samples,
        "metrics": dict(b.metrics),
        "parents": [p.hex() for p in b.parents],
        "accepted": [v.block.hex() for v in b.verdicts if v.accepted],
        "rejected": [
            {"block": v.block.hex(), "reason": v.reason, "score": v.score}
            for v in b.verdicts
            if not v.accepted
        ],
    }


@dataclass(frozen=True)
class Problem:
    author: bytes
    height: int
    reason: str

    def __str__(self) -> str:
        return f"author {self.author.hex()[:16]} height {self.height}: {self.reason}"


def _segments(blocks: list[Block]) -> Iterator[list[Block]]:
    seg: list[Block] = []
    for b in blocks:
        if seg and b.height != seg[-1].height + 1:
            yield seg
            seg = []
        seg.append(b)
    if seg:
        yield seg


def verify_store(store: BlockStore, own: bytes | None, network: bytes) -> tuple[int, list[Problem]]:
    """Audit every chain, blob and proof in ``store``; return (blocks checked, problems).

    The node's own chain must be complete from genesis with every blob present. Peer chains may
    have gaps (a node stores what it received); each contiguous segment must link and verify.
    """
    problems: list[Problem] = []
    checked = 0
    for author in store.authors():
        try:
            blocks = list(store.iter_chain(author))
        except StoreError as e:
            problems.append(Problem(author, -1, f"store: {e}"))
            continue
        checked += len(blocks)
        if author == own and blocks and blocks[0].height != 0:
            problems.append(Problem(author, 0, "missing-genesis"))
        for i, seg in enumerate(_segments(blocks)):
            if author == own and i > 0:
                problems.append(Problem(author, seg[0].height, "height-gap"))
            try:
                if seg[0].height == 0:
                    validate_chain(seg, network=network, sig_check="batch")
                else:
                    first = seg[0]
                    if first.network != network:
                        raise ChainError(author, first.height, "wrong-network")
                    if not first.verify_signature():
                        raise ChainError(author, first.height, "bad-signature")
                    validate_chain(seg[1:], network=network, sig_check="batch", prev=first)
            except ChainError as e:
                problems.append(Problem(e.author, e.height, e.reason))
                continue
        for b in blocks:
            try:
                blob = store.get_blob(b.model_digest)
            except StoreError as e:
                problems.append(Problem(author, b.height, f"corrupt-blob: {e}"))
                continue
            if blob is None:
                if author == own:
                    problems.append(Problem(author, b.height, "missing-blob"))
                continue
            if len(blob) != b.model_size:
                problems.append(Problem(author, b.height, "blob-size-mismatch"))
    for author, proof in store.evidence().items():
        try:
            eq = Equivocation.decode(proof)
            if not eq.verify() or eq.author != author:
                raise InvalidBlock("bad-evidence")
        except InvalidBlock as e:
            problems.append(Problem(author, -1, f"evidence: {e.reason}"))
    return checked, problems


@click.group()
def chain() -> None:
    """Inspect and audit a node's chain store."""


@chain.command("show")
@click.option(
    "--home",
    "home_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Node home directory.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of blocks.")
@click.option("--author", default=None, help="Only this author (hex public key or 'own').")
def show(home_dir: Path, as_json: bool, author: str | None) -> None:
    """List the blocks in the store (own chain and verified peer headers)."""
    home = Home(home_dir)
    store, own, _ = _open(home)
    with store:
        authors = store.authors()
        if author == "own":
            authors = [a for a in authors if a == own]
        elif author:
            authors = [a for a in authors if a.hex().startswith(author.lower())]
        rows = [block_json(b) for a in authors for b in store.iter_chain(a)]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} blocks in {home.store_path()}")
    for col in ("author", "height", "round", "hash", "accepted", "rejected", "samples", "metrics"):
        table.add_column(col)
    for r in rows:
        metrics = r["metrics"]
        assert isinstance(metrics, dict)
        table.add_row(
            ("* " if r["author"] == own.hex() else "") + str(r["author"])[:12],
            str(r["height"]),
            str(r["round"]),
            str(r["hash"])[:16],
            str(len(r["accepted"])),  # type: ignore[arg-type]
            str(len(r["rejected"])),  # type: ignore[arg-type]
            str(r["samples"]),
            " ".join(f"{k}={v:.3g}" for k, v in metrics.items()),
        )
    Console().print(table)


@chain.command("verify")
@click.option(
    "--home",
    "home_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Node home directory.",
)
def verify(home_dir: Path) -> None:
    """Verify every chain, blob and equivocation proof; exit 1 naming the first bad block."""
    home = Home(home_dir)
    try:
        store, own, network = _open(home)
        with store:
            checked, problems = verify_store(store, own, network)
    except DflError as e:
        click.echo(f"chain verify: {e}", err=True)
        sys.exit(1)
    if problems:
        click.echo(f"INVALID: {problems[0]}", err=True)
        for p in problems[1:10]:
            click.echo(f"  also: {p}", err=True)
        sys.exit(1)
    click.echo(f"ok: {checked} blocks verified")
