"""`dfl data ...`: fetch, list, import and partition datasets.

Thin click shell over :mod:`dfl.learning.data` and :mod:`dfl.learning.partition`; dfl's own
errors (``DataError``, ``UsageError``) propagate to ``dfl.cli``, which prints them as one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from dfl.learning import data as data_mod
from dfl.learning.partition import (
    DEFAULT_MIN_SAMPLES,
    PartitionScheme,
    label_histograms,
    partition,
)

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["data"]

_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data directory (default: $DFL_DATA_DIR, else the user cache dir).",
)


def _console(min_width: int = 0) -> Console:
    """A console at least ``min_width`` wide, so wide tables are not squeezed when piped."""
    from rich.console import Console

    console = Console(soft_wrap=False)
    return Console(soft_wrap=False, width=min_width) if console.width < min_width else console


def _human(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{nbytes} B"  # pragma: no cover


@click.group()
def data() -> None:
    """Fetch, list, import and partition datasets (mnist, digits, synthetic)."""


@data.command()
@click.argument("name", type=click.Choice(data_mod.DATASETS))
@_data_dir_option
@click.option("--force", is_flag=True, help="Download again even if cached.")
@click.option("--quiet", is_flag=True, help="No progress display.")
def fetch(name: str, data_dir: Path | None, force: bool, quiet: bool) -> None:
    """Download dataset NAME into the data directory (only mnist needs a download)."""
    if name != "mnist":
        click.echo(f"{name} needs no download (it is built in).")
        return
    path = data_mod.fetch_mnist(cache_dir=data_dir, progress=not quiet, force=force)
    click.echo(f"mnist cached at {path} ({_human(path.stat().st_size)})")


@data.command("list")
@_data_dir_option
def list_(data_dir: Path | None) -> None:
    """List the datasets, whether they are available offline, and their sizes."""
    from rich.table import Table

    table = Table(title=f"datasets (data dir: {data_mod.data_dir(data_dir)})")
    for col in ("name", "status", "train", "test", "input", "classes", "on disk"):
        table.add_column(col, justify="right" if col in ("train", "test", "classes") else "left")
    path = data_mod.mnist_cache_path(data_dir)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            n_train, n_test = len(z["y_train"]), len(z["y_test"])
        table.add_row(
            "mnist", "cached", str(n_train), str(n_test), "28x28x1", "10",
            _human(path.stat().st_size),
        )  # fmt: skip
    else:
        table.add_row(
            "mnist", "not cached: dfl data fetch mnist", "60000", "10000", "28x28x1", "10", "-"
        )
    digits = data_mod.load_dataset("digits")
    table.add_row(
        "digits", "built in", str(digits.num_train), str(digits.num_test),
        "8x8x1", "10", "-",
    )  # fmt: skip
    table.add_row("synthetic", "generated", "1000*", "200*", "8x8x1*", "10*", "-")
    console = _console()
    console.print(table)
    console.print("* defaults; every size is configurable")
    console.print(f"mnist cache file: {path}")


@data.command("import")
@click.argument("name", type=click.Choice(["mnist"]))
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_data_dir_option
def import_(name: str, directory: Path, data_dir: Path | None) -> None:
    """Import NAME from DIRECTORY holding the four standard MNIST IDX files (.gz is fine)."""
    path = data_mod.import_mnist_idx(directory, cache_dir=data_dir)
    ds = data_mod.load_dataset("mnist", cache_dir=data_dir, download=False)
    click.echo(f"{name}: imported {ds.num_train} train + {ds.num_test} test images into {path}")


@data.command("partition")
@click.option("--dataset", "dataset", type=click.Choice(data_mod.DATASETS), default="mnist",
              show_default=True)  # fmt: skip
@click.option("--nodes", type=click.IntRange(min=1), required=True, help="Number of nodes.")
@click.option("--iid", is_flag=True, help="IID split.")
@click.option("--dirichlet", type=float, default=None, help="Dirichlet label skew, alpha > 0.")
@click.option("--shards", type=int, default=None, help="K label shards per node (McMahan).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--min-samples", type=click.IntRange(min=0), default=DEFAULT_MIN_SAMPLES,
              show_default=True, help="Lower bound on samples per node.")  # fmt: skip
@click.option("--max-rows", type=click.IntRange(min=1), default=100, show_default=True,
              help="Show at most this many nodes.")  # fmt: skip
@_data_dir_option
def partition_cmd(
    dataset: str,
    nodes: int,
    iid: bool,
    dirichlet: float | None,
    shards: int | None,
    seed: int,
    min_samples: int,
    max_rows: int,
    data_dir: Path | None,
) -> None:
    """Partition a dataset's training labels among NODES and print each node's label histogram."""
    chosen = [iid, dirichlet is not None, shards is not None]
    if sum(chosen) != 1:
        raise click.UsageError("choose exactly one of --iid, --dirichlet A, --shards K")
    if iid:
        scheme = PartitionScheme("iid")
    elif dirichlet is not None:
        scheme = PartitionScheme("dirichlet", alpha=dirichlet)
    else:
        scheme = PartitionScheme("shards", shards=shards)
    kw = {"cache_dir": data_dir} if dataset == "mnist" else {}
    ds = data_mod.load_dataset(dataset, **kw)
    parts = partition(ds.y_train, nodes, scheme, seed=seed, min_samples=min_samples)
    hist = label_histograms(ds.y_train, parts, ds.num_classes)

    from rich.table import Table

    table = Table(title=f"{dataset}: {scheme} over {nodes} nodes (seed {seed})", box=None)
    table.add_column("node", justify="right")
    table.add_column("samples", justify="right")
    table.add_column("labels", justify="right")
    for c in range(ds.num_classes):
        table.add_column(str(c), justify="right")
    for i, row in enumerate(hist[:max_rows]):
        table.add_row(
            str(i),
            str(int(row.sum())),
            str(int((row > 0).sum())),
            *(str(int(v)) if v else "." for v in row),
        )
    widest = len(str(int(hist.max()))) if hist.size else 1
    console = _console(24 + ds.num_classes * (max(widest, 2) + 2))
    console.print(table)
    if nodes > max_rows:
        console.print(f"... {nodes - max_rows} more nodes not shown (--max-rows)")
    sizes = hist.sum(axis=1)
    local = hist / np.maximum(sizes[:, None], 1)
    glob = hist.sum(axis=0) / max(int(hist.sum()), 1)
    tv = float(0.5 * np.abs(local - glob).sum(axis=1).mean())
    console.print(
        f"samples per node: min {sizes.min()}, median {int(np.median(sizes))}, max "
        f"{sizes.max()}; labels per node: mean {(hist > 0).sum(axis=1).mean():.2f}; "
        f"label skew (mean total-variation distance to the global mix): {tv:.3f}"
    )
