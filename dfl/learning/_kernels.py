"""Compiled kernels (numba) for the coordinate-wise rules of :mod:`dfl.learning.robust`.

Each coordinate-wise rule needs, per coordinate, a few order statistics of the pool's values.
The kernels never build a transposed copy of the pool: they walk the ``(n, d)`` candidates in
tiles of :data:`LANES` adjacent columns, copy one tile (one short contiguous slice per pool
row) into a small local buffer and sort every column of the tile at once with a sorting
network (Batcher's odd-even merge sort). A compare-exchange is one vector ``min`` and ``max``
over the :data:`LANES` columns, emitted as LLVM vector IR (numba's LLVM pipeline does not
vectorize the equivalent loop); LLVM lowers it to the CPU's widest SIMD registers. The network
is built once per pool size in Python (:func:`network`), restricted to the pool size (a network
for ``2^k`` inputs with ``+inf`` in the unused top inputs never moves them, so every
comparator touching them is dropped) and pruned to the comparators the needed outputs depend
on. A per-column quickselect (numba's ``np.median``) measured ten times slower. Everything runs
on the calling thread (``nogil``, no ``parallel``); means are accumulated in float64.

Compiled code is cached next to this file (``cache=True``): the first call in a process loads
it (plus numba's own one-time start-up), the first call after an install or an edit compiles.

:func:`bulyan_select` is Bulyan's iterated Krum selection on the pool's squared distances, with
exactly the scores (numpy's pairwise summation of the ascending distances) and tie-breaking of
``robust._krum_scores`` / ``robust._krum_order``.
"""

from __future__ import annotations

import functools
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from dfl.learning._networks import selection_network

__all__ = ["LANES", "bulyan_select", "median", "network", "trimmed_mean", "window_mean"]

LANES = 32  # columns per tile: 128 bytes (two cache lines) per pool row; best of 16/32/64

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]

_jit = numba.njit(cache=True, nogil=True)
_alloca_once_value: Any = cgutils.alloca_once_value  # a stack slot in the entry block (untyped)


# --------------------------------------------------------------------------------------------
# Sorting networks (built in Python, cached per size)
# --------------------------------------------------------------------------------------------


@functools.cache
def network(m: int, lo: int = 0, hi: int = -1) -> I32:
    """Comparators (a ``(c, 2)`` int32 array) that sort ``m`` inputs at least enough to put the
    right values in the sorted positions ``lo:hi`` (``hi = -1``: ``m``)."""
    out: I32 = np.array(selection_network(m, lo, hi), dtype=np.int32).reshape(-1, 2)
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------------------------
# Tile helpers
# --------------------------------------------------------------------------------------------


def _cmpx_intrinsic(typingctx: Any, buf: Any, i: Any, j: Any) -> Any:
    """Compare-exchange ``buf[i:i + LANES]`` and ``buf[j:j + LANES]`` lane by lane (min to
    ``i``), as one vector load, min, max and store each (LLVM would not vectorize the loop)."""
    sig = types.void(buf, i, j)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        vec = ir.VectorType(ir.FloatType(), LANES)
        pa = builder.bitcast(builder.gep(data, [args[1]], inbounds=True), vec.as_pointer())
        pb = builder.bitcast(builder.gep(data, [args[2]], inbounds=True), vec.as_pointer())
        a = builder.load(pa, align=4, typ=vec)
        b = builder.load(pb, align=4, typ=vec)
        flags = ("nnan", "nsz")  # inputs are finite: plain vector min/max, no masked stores
        less = builder.fcmp_ordered("<", a, b, flags=flags)
        builder.store(builder.select(less, a, b, flags=flags), pa, align=4)
        builder.store(builder.select(less, b, a, flags=flags), pb, align=4)
        return context.get_dummy_value()

    return sig, codegen


_cmpx: Any = intrinsic(_cmpx_intrinsic)


@_jit
def _sort(flat: Any, comps: Any) -> None:
    """Apply the comparators to the ``LANES`` columns of the tile ``flat`` (row-major)."""
    for c in range(comps.shape[0]):
        _cmpx(flat, comps[c, 0] * LANES, comps[c, 1] * LANES)


def _vcopy_intrinsic(typingctx: Any, dst: Any, di: Any, src: Any, si: Any) -> Any:
    """``dst[di:di + LANES] = src[si:si + LANES]`` as one vector load and store."""
    sig = types.void(dst, di, src, si)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        vec = ir.VectorType(ir.FloatType(), LANES)
        out = context.make_array(signature.args[0])(context, builder, args[0]).data
        inp = context.make_array(signature.args[2])(context, builder, args[2]).data
        po = builder.bitcast(builder.gep(out, [args[1]], inbounds=True), vec.as_pointer())
        pi = builder.bitcast(builder.gep(inp, [args[3]], inbounds=True), vec.as_pointer())
        builder.store(builder.load(pi, align=4, typ=vec), po, align=4)
        return context.get_dummy_value()

    return sig, codegen


_vcopy: Any = intrinsic(_vcopy_intrinsic)


@_jit
def _load(own: Any, xf: Any, d: int, rows: Any, c0: int, width: int, flat: Any) -> None:
    """Tile row ``r`` = ``pool[rows[r], c0:c0 + width]`` (pool row 0 is ``own``, row ``p > 0``
    is ``xf[(p - 1) * d:p * d]``); the lanes past ``width`` (last tile only) get 0."""
    if width == LANES:
        for r in range(rows.shape[0]):
            p = rows[r]
            if p == 0:
                _vcopy(flat, r * LANES, own, c0)
            else:
                _vcopy(flat, r * LANES, xf, (p - 1) * d + c0)
        return
    flat[:] = 0.0
    for r in range(rows.shape[0]):
        p = rows[r]
        for lane in range(width):
            flat[r * LANES + lane] = own[c0 + lane] if p == 0 else xf[(p - 1) * d + c0 + lane]


# --------------------------------------------------------------------------------------------
# Coordinate-wise kernels
# --------------------------------------------------------------------------------------------


@_jit
def _trimmed_mean(own: Any, x: Any, comps: Any, b: int, out: Any) -> None:
    m = x.shape[0] + 1
    d = own.shape[0]
    xf = x.reshape(-1)
    rows = np.arange(m)
    flat = np.empty(m * LANES, np.float32)
    tile = flat.reshape(m, LANES)
    acc = np.zeros(LANES, np.float64)
    count = m - 2 * b
    for c0 in range(0, d, LANES):
        width = min(LANES, d - c0)
        _load(own, xf, d, rows, c0, width, flat)
        _sort(flat, comps)
        acc[:] = 0.0
        for k in range(b, m - b):
            acc += tile[k]
        for lane in range(width):
            out[c0 + lane] = np.float32(acc[lane] / count)


def _window_tile_intrinsic(typingctx: Any, flat: Any, theta: Any, beta: Any, res: Any) -> Any:
    """``res[:LANES]`` = per column of the sorted tile ``flat`` (``theta`` rows), the mean of
    the ``beta`` values closest to the median, all columns at once in vector IR.

    Window ``[j, j + beta)`` loses to ``[j + 1, j + 1 + beta)`` iff ``s_j`` is farther from the
    median than ``s_{j + beta}``, i.e. iff ``s_j + s_{j + beta} < s_lo + s_hi`` (``= 2 med``): a
    test monotone in ``j``, so the best window (the leftmost of equal ones, up to windows
    holding the same values) starts at the number of ``j`` passing it. The test is exact:
    TwoSum gives each float64 sum with its rounding error, rounding is monotone, so unequal
    rounded sums order the exact ones and equal ones leave the errors to compare. The window is
    then summed in float64 in sorted order (the other rows add 0). Branch-free vector code:
    a per-column binary search measured four times slower (mispredictions, add latency)."""
    sig = types.void(flat, theta, beta, res)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        out = context.make_array(signature.args[3])(context, builder, args[3]).data
        theta_v, beta_v = args[1], args[2]  # i64: rows of the tile, window
        i64 = ir.IntType(64)
        v32 = ir.VectorType(ir.FloatType(), LANES)
        v64 = ir.VectorType(ir.DoubleType(), LANES)
        vint = ir.VectorType(i64, LANES)
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)

        def row(k: Any) -> Any:  # tile row k as float64
            ptr = builder.gep(data, [builder.mul(k, i64(LANES))], inbounds=True)
            val = builder.load(builder.bitcast(ptr, v32.as_pointer()), align=4, typ=v32)
            return builder.fpext(val, v64)

        def splat(value: Any, vty: Any) -> Any:
            undef = ir.Constant(vty, ir.Undefined)
            return builder.shuffle_vector(
                builder.insert_element(undef, value, i64(0)), undef, zeros
            )

        def two_sum(a: Any, b: Any) -> tuple[Any, Any]:  # no fast-math flags: exact
            s = builder.fadd(a, b)
            bb = builder.fsub(s, a)
            return s, builder.fadd(builder.fsub(a, builder.fsub(s, bb)), builder.fsub(b, bb))

        lo_mid = builder.sdiv(builder.sub(theta_v, i64(1)), i64(2))
        hi_mid = builder.sdiv(theta_v, i64(2))
        s2, e2 = two_sum(row(lo_mid), row(hi_mid))
        start_p = _alloca_once_value(builder, ir.Constant(vint, [0] * LANES))
        with cgutils.for_range(builder, builder.sub(theta_v, beta_v)) as loop:
            s1, e1 = two_sum(row(loop.index), row(builder.add(loop.index, beta_v)))
            tie = builder.and_(
                builder.fcmp_ordered("==", s1, s2), builder.fcmp_ordered("<", e1, e2)
            )
            less = builder.or_(builder.fcmp_ordered("<", s1, s2), tie)
            builder.store(builder.add(builder.load(start_p), builder.zext(less, vint)), start_p)
        start = builder.load(start_p)
        stop = builder.add(start, splat(beta_v, vint))
        acc_p = _alloca_once_value(builder, ir.Constant(v64, [0.0] * LANES))
        with cgutils.for_range(builder, theta_v) as loop:
            k = splat(loop.index, vint)
            inside = builder.and_(
                builder.icmp_signed("<=", start, k), builder.icmp_signed("<", k, stop)
            )
            val = builder.select(inside, row(loop.index), ir.Constant(v64, [0.0] * LANES))
            builder.store(builder.fadd(builder.load(acc_p), val), acc_p)
        count = splat(builder.sitofp(beta_v, ir.DoubleType()), v64)
        mean = builder.fptrunc(builder.fdiv(builder.load(acc_p), count), v32)
        builder.store(mean, builder.bitcast(out, v32.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


_window_tile: Any = intrinsic(_window_tile_intrinsic)


@_jit
def _window_mean(own: Any, x: Any, rows: Any, comps: Any, beta: int, out: Any) -> None:
    theta = rows.shape[0]
    d = own.shape[0]
    xf = x.reshape(-1)
    flat = np.empty(theta * LANES, np.float32)
    res = np.empty(LANES, np.float32)
    for c0 in range(0, d, LANES):
        width = min(LANES, d - c0)
        _load(own, xf, d, rows, c0, width, flat)
        _sort(flat, comps)
        _window_tile(flat, theta, beta, res)
        for lane in range(width):
            out[c0 + lane] = res[lane]


# --------------------------------------------------------------------------------------------
# Bulyan's iterated Krum
# --------------------------------------------------------------------------------------------


@_jit
def _pairwise_leaf(a: Any, off: int, n: int) -> float:
    """numpy's pairwise summation of ``a[off:off + n]`` for ``n <= 128`` (no split)."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[off + i]
        return res
    r = np.empty(8, np.float64)
    for t in range(8):
        r[t] = a[off + t]
    i = 8
    while i < n - (n % 8):
        for t in range(8):
            r[t] += a[off + i + t]
        i += 8
    res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    while i < n:
        res += a[off + i]
        i += 1
    return float(res)


@_jit
def _pairwise_sum(a: Any, n: int) -> float:
    """``a[:n].sum()`` (float64) with numpy's pairwise summation, so with its rounding: blocks
    of at most 128 summed by 8 interleaved accumulators, longer ranges split in two halves
    (rounded down to a multiple of 8) whose sums are added; an explicit stack replaces
    numpy's recursion."""
    if n <= 128:
        return _pairwise_leaf(a, 0, n)
    off = np.empty(64, np.int64)  # depth <= log2(n), far below 64
    size = np.empty(64, np.int64)
    stage = np.empty(64, np.int64)
    vals = np.empty(64, np.float64)
    top = 0
    nv = 0
    off[0], size[0], stage[0] = 0, n, 0
    while top >= 0:
        o, s = off[top], size[top]
        if s <= 128:
            vals[nv] = _pairwise_leaf(a, o, s)
            nv += 1
            top -= 1
            continue
        half = s // 2
        half -= half % 8
        if stage[top] == 0:  # first the left half
            stage[top] = 1
            top += 1
            off[top], size[top], stage[top] = o, half, 0
        elif stage[top] == 1:  # then the right half
            stage[top] = 2
            top += 1
            off[top], size[top], stage[top] = o + half, s - half, 0
        else:  # both done: left + right
            vals[nv - 2] = vals[nv - 2] + vals[nv - 1]
            nv -= 1
            top -= 1
    return float(vals[0])


@_jit
def _spread(sq: Any, alive: Any, i: int, tmp: Any) -> float:
    """Sum of the squared distances of ``i`` to the alive members (itself included, as 0), in
    member order: the tie-breaker of ``robust._krum_order``."""
    got = 0
    for j in range(sq.shape[0]):
        if alive[j]:
            tmp[got] = sq[i, j] if j != i else 0.0
            got += 1
    return _pairwise_sum(tmp, got)


@_jit
def _bulyan_select(sq: Any, near: Any, f: int, theta: int, selected: Any, first: Any) -> None:
    m = sq.shape[0]
    alive = np.ones(m, np.bool_)
    tmp = np.empty(m, np.float64)
    for it in range(theta):
        r = m - it
        k = max(1, min(r - f - 2, r - 1))
        best = -1
        best_score = 0.0
        best_spread = -1.0  # computed only when a score ties (spread >= 0)
        for i in range(m):
            if not alive[i]:
                continue
            got = 0
            for t in range(m):
                if got == k:
                    break
                j = near[i, t]
                if j != i and alive[j]:
                    tmp[got] = sq[i, j]
                    got += 1
            score = _pairwise_sum(tmp, got)
            if it == 0:
                first[i] = score
            if best < 0 or score < best_score:
                best, best_score, best_spread = i, score, -1.0
            elif score == best_score:  # lexsort: then the spread, then the index
                if best_spread < 0.0:
                    best_spread = _spread(sq, alive, best, tmp)
                spread = _spread(sq, alive, i, tmp)
                if spread < best_spread:
                    best, best_spread = i, spread
        selected[it] = best
        alive[best] = False


# --------------------------------------------------------------------------------------------
# Entry points (validated, typed)
# --------------------------------------------------------------------------------------------


def _contiguous(own: F32, x: F32) -> tuple[F32, F32]:
    """C-contiguous float32 ``own (d,)`` and ``x (n, d)``; the kernels read them unchecked."""
    own_c = np.ascontiguousarray(own, np.float32)
    x_c = np.ascontiguousarray(x, np.float32)
    if own_c.ndim != 1 or x_c.ndim != 2 or x_c.shape[1] != own_c.shape[0]:
        raise ValueError(f"need own (d,) and x (n, d), got {own_c.shape} and {x_c.shape}")
    return own_c, x_c


def median(own: F32, x: F32) -> F32:
    """Coordinate-wise median of the pool ``{own} + x`` (mean of the middle two if even): the
    trimmed mean that keeps only the middle one or two sorted positions."""
    return trimmed_mean(own, x, x.shape[0] // 2)


def trimmed_mean(own: F32, x: F32, b: int) -> F32:
    """Coordinate-wise mean of the sorted pool positions ``b:m - b`` (float64 accumulation)."""
    own, x = _contiguous(own, x)
    m = x.shape[0] + 1
    if not 0 <= b <= (m - 1) // 2:
        raise ValueError(f"trim b={b} out of [0, {(m - 1) // 2}] for a pool of {m}")
    out = np.empty_like(own)
    _trimmed_mean(own, x, network(m, b, m - b), b, out)
    return out


def window_mean(own: F32, x: F32, rows: I64, beta: int) -> F32:
    """Per coordinate, the mean of the ``beta`` values of the pool rows ``rows`` (0 is own)
    closest to their median: the window ``[j, j + beta)`` of the sorted values with the least
    total distance to the median (ties -> leftmost)."""
    own, x = _contiguous(own, x)
    rows = np.ascontiguousarray(rows, np.int64)
    if rows.ndim != 1 or rows.shape[0] == 0 or rows.min() < 0 or rows.max() > x.shape[0]:
        raise ValueError(f"rows must be pool rows in [0, {x.shape[0]}], got {rows}")
    if not 1 <= beta <= rows.shape[0]:
        raise ValueError(f"beta={beta} out of [1, {rows.shape[0]}]")
    out = np.empty_like(own)
    _window_mean(own, x, rows, network(rows.shape[0]), beta, out)
    return out


def bulyan_select(sq: F64, f: int, theta: int) -> tuple[I64, F64]:
    """Iterated Krum on the pool's squared distances ``sq``: the ``theta`` winners in selection
    order and the first-pass Krum scores (``k = m - f - 2`` nearest)."""
    sq = np.ascontiguousarray(sq, np.float64)
    m = sq.shape[0]
    if sq.shape != (m, m) or not 1 <= theta <= m:
        raise ValueError(f"need a square sq and 1 <= theta <= m, got {sq.shape}, theta={theta}")
    selected = np.empty(theta, np.int64)
    first = np.empty(m, np.float64)
    # Each row's pool points by increasing distance: the ascending distances to the remaining
    # members are this order filtered, so no iteration sorts anything.
    near = np.argsort(sq, axis=1).astype(np.int64)
    _bulyan_select(sq, near, f, theta, selected, first)
    return selected, first
