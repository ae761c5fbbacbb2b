"""Sorting and selection networks, built in plain Python (no numba).

Shared by the numba kernels (:mod:`dfl.learning._kernels`, large pools) and by the numpy path
of :mod:`dfl.learning.robust` (pools below ``_KERNEL_MIN_POOL``), which must not import numba.
"""

from __future__ import annotations

import functools

__all__ = ["batcher_pairs", "selection_network"]


def batcher_pairs(size: int) -> list[tuple[int, int]]:
    """Comparators ``(i, j)``, ``i < j`` (min to ``i``), of Batcher's odd-even merge sort for
    ``size`` inputs (a power of two), in execution order."""
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


@functools.cache
def selection_network(m: int, lo: int = 0, hi: int = -1) -> tuple[tuple[int, int], ...]:
    """Comparators ``(i, j)``, ``i < j`` (min to ``i``), that leave the sorted positions
    ``lo:hi`` (``hi = -1``: ``m``) of ``m`` values in place: Batcher's network for the next
    power of two, minus comparators that touch a position ``>= m`` (there sits ``+inf``, which
    no comparator moves) and comparators that no kept comparator or wanted position depends
    on."""
    hi = m if hi < 0 else hi
    size = 1
    while size < m:
        size *= 2
    pairs = [(i, j) for i, j in batcher_pairs(size) if j < m]
    needed = set(range(lo, hi))
    kept: list[tuple[int, int]] = []
    for i, j in reversed(pairs):
        if i in needed or j in needed:
            kept.append((i, j))
            needed.update((i, j))
    kept.reverse()
    return tuple(kept)
