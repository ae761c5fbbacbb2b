"""Split a labelled dataset among federated nodes: ``iid``, ``dirichlet:A`` and ``shards:K``.

Invariants
----------
* :func:`partition` returns ``num_nodes`` sorted ``int64`` index arrays that are pairwise
  disjoint; together they cover every sample exactly once (all three schemes use all data).
* Every node gets at least ``min_samples`` samples, or :class:`~dfl.errors.UsageError` is raised
  up front when that is impossible (``len(labels) < num_nodes * min_samples``, or the shard size
  is too small for ``shards:K``).
* Same ``(labels, num_nodes, scheme, seed, min_samples)`` -> identical output, on any platform
  (``numpy.random.Generator(PCG64)``, no global RNG).
* No rejection sampling: the Dirichlet scheme draws one proportion matrix, allocates counts with
  one vectorised multinomial, then moves samples from the richest nodes to any node below
  ``min_samples`` (at most ``num_nodes * num_classes`` moves), so it stays fast at ``alpha <=
  0.1``.

Schemes
-------
``iid``
    Shuffle, then split into nearly equal parts.
``dirichlet:A``
    For each class ``c`` draw ``p_c ~ Dir(A * 1_N)`` over the nodes and give node ``i`` about
    ``p_c[i]`` of class ``c``'s samples. Small ``A`` (0.1) -> very skewed; large (100) -> ~IID.
``shards:K``
    McMahan et al.'s pathological non-IID split: sort by label, cut into ``N * K`` equal shards,
    deal ``K`` random shards to each node. ``shards:2`` is the classic "2 labels per node" (a
    node may get two shards of one label, or a shard straddling two labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from dfl.errors import UsageError

__all__ = [
    "DEFAULT_MIN_SAMPLES",
    "PartitionScheme",
    "label_histograms",
    "parse_partition",
    "partition",
]

DEFAULT_MIN_SAMPLES: Final = 10
"""Default lower bound on samples per node."""

SchemeKind = Literal["iid", "dirichlet", "shards"]


@dataclass(frozen=True)
class PartitionScheme:
    """A parsed partition scheme; ``str(scheme)`` gives the canonical spelling back.

    Attributes
    ----------
    kind : {"iid", "dirichlet", "shards"}
    alpha : float or None
        Dirichlet concentration (``kind == "dirichlet"`` only), finite and > 0.
    shards : int or None
        Shards per node (``kind == "shards"`` only), >= 1.
    """

    kind: SchemeKind
    alpha: float | None = None
    shards: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "iid":
            if self.alpha is not None or self.shards is not None:
                raise UsageError("iid takes no parameter")
        elif self.kind == "dirichlet":
            if self.alpha is None or not math.isfinite(self.alpha) or self.alpha <= 0:
                raise UsageError(f"dirichlet alpha must be a finite number > 0, got {self.alpha}")
            if self.shards is not None:
                raise UsageError("dirichlet takes no shard count")
        elif self.kind == "shards":
            if self.shards is None or self.shards < 1:
                raise UsageError(f"shards:K needs an integer K >= 1, got {self.shards}")
            if self.alpha is not None:
                raise UsageError("shards takes no alpha")
        else:
            raise UsageError(f"unknown partition kind {self.kind!r}")

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "shards":
            return f"shards:{self.shards}"
        return "iid"


def parse_partition(text: str) -> PartitionScheme:
    """Parse ``"iid"``, ``"dirichlet:A"`` or ``"shards:K"``.

    Raises
    ------
    UsageError
        Unknown scheme or bad parameter.
    """
    name, sep, arg = text.strip().partition(":")
    name = name.strip().lower()
    arg = arg.strip()
    if name == "iid" and not sep:
        return PartitionScheme("iid")
    if name == "dirichlet" and arg:
        try:
            alpha = float(arg)
        except ValueError:
            raise UsageError(f"dirichlet:A needs a number, got {arg!r}") from None
        return PartitionScheme("dirichlet", alpha=alpha)
    if name == "shards" and arg:
        try:
            k = int(arg)
        except ValueError:
            raise UsageError(f"shards:K needs an integer, got {arg!r}") from None
        return PartitionScheme("shards", shards=k)
    raise UsageError(f"unknown partition scheme {text!r}; use iid, dirichlet:A or shards:K")


def partition(
    labels: np.ndarray,
    num_nodes: int,
    scheme: str | PartitionScheme,
    *,
    seed: int,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> list[np.ndarray]:
    """Split sample indices among ``num_nodes`` nodes.

    Parameters
    ----------
    labels : np.ndarray
        1-D integer labels, values ``>= 0``.
    num_nodes : int
        Number of nodes (>= 1).
    scheme : str or PartitionScheme
        ``"iid"``, ``"dirichlet:A"`` or ``"shards:K"``.
    seed : int
        Seed; same inputs and seed give the same partition.
    min_samples : int
        Every node gets at least this many samples (default :data:`DEFAULT_MIN_SAMPLES`).

    Returns
    -------
    list of np.ndarray
        ``num_nodes`` sorted ``int64`` index arrays, disjoint, covering ``range(len(labels))``.

    Raises
    ------
    UsageError
        Bad arguments or an impossible ``min_samples``.
    """
    spec = parse_partition(scheme) if isinstance(scheme, str) else scheme
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise UsageError(f"labels must be a 1-D integer array, got shape {y.shape} {y.dtype}")
    if y.size and int(y.min()) < 0:
        raise UsageError("labels must be >= 0")
    if num_nodes < 1:
        raise UsageError(f"num_nodes must be >= 1, got {num_nodes}")
    if min_samples < 0:
        raise UsageError(f"min_samples must be >= 0, got {min_samples}")
    n = int(y.size)
    if n < num_nodes * min_samples:
        raise UsageError(
            f"{n} samples cannot give {num_nodes} nodes {min_samples} samples each; "
            "use fewer nodes or a smaller min_samples"
        )
    rng = np.random.default_rng(seed)
    if spec.kind == "iid":
        parts = np.array_split(rng.permutation(n), num_nodes)
    elif spec.kind == "dirichlet":
        assert spec.alpha is not None
        parts = _dirichlet(y, num_nodes, spec.alpha, min_samples, rng)
    else:
        assert spec.shards is not None
        parts = _shards(y, num_nodes, spec.shards, min_samples, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(
    y: np.ndarray, num_nodes: int, alpha: float, min_samples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    num_classes = int(y.max()) + 1 if y.size else 1
    class_sizes = np.bincount(y, minlength=num_classes).astype(np.int64)
    # Generator.dirichlet switches to a stick-breaking sampler for small alpha, so rows never
    # underflow to 0/0 = NaN the way normalised gamma draws do at alpha <= 0.01.
    props = rng.dirichlet(np.full(num_nodes, alpha), size=num_classes)  # (C, N)
    counts = rng.multinomial(class_sizes, props).astype(np.int64)  # (C, N), rows sum to sizes
    _lift_to_minimum(counts, min_samples)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(y == c))
        for node, chunk in enumerate(np.split(members, np.cumsum(counts[c])[:-1])):
            if chunk.size:
                parts[node].append(chunk)
    return [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]


def _lift_to_minimum(counts: np.ndarray, min_samples: int) -> None:
    """Move samples, in place, from the nodes with most surplus to nodes below ``min_samples``.

    A donor gives from its largest classes first, so a starved node receives few distinct labels
    and the partition stays non-IID. Deterministic; feasibility is checked by the caller.
    """
    totals = counts.sum(axis=0)
    for node in np.flatnonzero(totals < min_samples):
        need = int(min_samples - totals[node])
        while need > 0:
            surplus = totals - min_samples
            surplus[node] = -1
            donor = int(np.argmax(surplus))
            give = min(need, int(surplus[donor]))
            for c in np.argsort(-counts[:, donor], kind="stable"):
                if give == 0:
                    break
                moved = min(give, int(counts[c, donor]))
                counts[c, donor] -= moved
                counts[c, node] += moved
                totals[donor] -= moved
                totals[node] += moved
                give -= moved
                need -= moved


def _shards(
    y: np.ndarray, num_nodes: int, k: int, min_samples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    n = int(y.size)
    num_shards = num_nodes * k
    if n < num_shards:
        raise UsageError(f"{n} samples cannot be cut into {num_nodes} x {k} = {num_shards} shards")
    if (n // num_shards) * k < min_samples:
        raise UsageError(
            f"shards:{k} over {num_nodes} nodes gives nodes {(n // num_shards) * k} samples, "
            f"below min_samples={min_samples}"
        )
    # Shuffle first so samples inside one label are in random order, then sort by label.
    shuffled = rng.permutation(n)
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    deal = rng.permutation(num_shards).reshape(num_nodes, k)
    return [np.concatenate([shards[s] for s in row]) for row in deal]


def label_histograms(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-node label counts.

    Returns
    -------
    np.ndarray
        ``int64`` array of shape ``(len(parts), num_classes)``; row ``i`` counts the labels of
        ``labels[parts[i]]``.
    """
    y = np.asarray(labels)
    out = np.zeros((len(parts), num_classes), dtype=np.int64)
    for i, idx in enumerate(parts):
        if len(idx):
            out[i] = np.bincount(y[idx], minlength=num_classes)[:num_classes]
    return out
