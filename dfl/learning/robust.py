"""Robust filters and aggregators: one pure signature for every defense.

Every rule is a pure function::

    rule(own (d,), candidates (n, d), weights (n,), ctx: RuleContext) -> RuleResult

and :data:`RULES` maps a name to it. State is a value: a stateful rule (``dfl``) reads its state
from ``ctx.state`` and returns the next one in :attr:`RuleResult.state`; nothing is stored in the
module (the optax habit). :func:`compose` chains a filter and an aggregator, so a new defense is
one function plus one registry line.

Invariants (tested in ``tests/learning/test_robust.py``)
-------------------------------------------------------
* **The receiver trusts itself.** ``own`` always takes part and is never judged; verdicts are
  about candidates only, exactly one per candidate, in candidate order.

  - *Point-set statistics* (``median``, ``trimmed_mean``, ``krum``, ``multi_krum``, ``bulyan``,
    ``geomed``) run on the pool ``{own} + candidates`` of ``m = n + 1`` points, ``own`` counted
    as one honest point. ``krum`` may therefore return ``own`` itself.
  - *Anchored rules* (``cclip``, ``scclip``, ``balance``, ``ubar``, ``dfl``) measure every
    candidate against ``own`` and mix the accepted ones with ``own``.
  - ``fedavg`` averages ``own`` (weight ``ctx.own_samples``) and all candidates (their sample
    counts): ``x = (s0 * own + sum_i p_i x_i) / (s0 + sum_i p_i)``.
* **Sample counts are self-reported and unverifiable**, so only ``fedavg`` (by definition) and
  ``geomed`` with ``params={"weighted": 1}`` (RFA's weights) use them; every robust rule weighs
  points uniformly, otherwise one liar claiming 10^9 samples would own the average.
* ``n = 0`` returns ``own`` (as float32) and the state unchanged.
* ``ctx.num_byzantine`` (``f``) is clamped per rule to what the rule tolerates
  (``krum``: ``m >= 2f + 3``; ``bulyan``: ``m >= 4f + 3``; ``trimmed_mean``: ``2f < m``).
* Inputs are validated (shapes, real dtype, finite, non-negative weights, unique ids, known
  hyper-parameters) and :class:`~dfl.errors.UsageError` is raised otherwise. Outputs are finite
  float32: every rule returns a convex combination (or coordinate-wise order statistic) of finite
  float32 points, computed with float64 accumulation where cancellation or overflow can occur.
* Deterministic rules are permutation invariant: permuting candidates (with their weights and
  ids) permutes the verdicts and leaves the model unchanged, up to exact ties.

Performance notes (one core): pairwise distances come from the Gram matrix of the candidates
*centred at own* (so close models do not cancel catastrophically), accumulated in float64 over
cache-sized column chunks. Coordinate-wise order statistics (``median``, ``trimmed_mean``,
``bulyan``) and Bulyan's iterated Krum run in the compiled kernels of
:mod:`dfl.learning._kernels` (numba, imported on first use): tiles of adjacent columns are
sorted in place by a SIMD sorting network, with no transposed copy of the pool. ``median`` and
``trimmed_mean`` order pools of fewer than ``_KERNEL_MIN_POOL`` models with numpy instead (an
elementwise min/max selection network over whole model vectors; same results): a daemon with
8 neighbours then never loads numba, which costs about 170 MiB of resident memory and, on the
first run after an install, about 10 s of compilation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from dfl.errors import UsageError
from dfl.learning._networks import selection_network

__all__ = [
    "RANK_PREFIX",
    "RULES",
    "Rule",
    "RuleContext",
    "RuleResult",
    "RuleVerdict",
    "balance",
    "bulyan",
    "cclip",
    "compose",
    "counts_for_standing",
    "dfl",
    "direction",
    "direction_cosines",
    "fedavg",
    "geomed",
    "krum",
    "median",
    "multi_krum",
    "remember_rejections",
    "scclip",
    "trimmed_mean",
    "ubar",
    "with_params",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: Reason prefix of a rejection that only ranks a candidate below others (RuleVerdict.reason);
#: the node core does not count it against the author's standing (dfl.node.core).
RANK_PREFIX = "rank:"


def counts_for_standing(accepted: bool, reason: str) -> bool:
    """Whether a verdict counts for its author's standing: every verdict but a rejection
    with a ``rank:`` reason. The one definition, for the rules and for the node core."""
    return accepted or not reason.startswith(RANK_PREFIX)


_CHUNK = 2048  # columns per Gram/norm chunk: 100 x 2048 float32 = 800 KB, stays in L2
_KERNEL_MIN_POOL = 17  # pools (own + candidates) this large use the numba kernels


# --------------------------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleContext:
    """Everything a rule may use besides the models.

    Attributes
    ----------
    own_samples
        Sample count of the receiver's own model (``fedavg`` weight of ``own``).
    num_byzantine
        ``f``, the number of Byzantine candidates to tolerate; each rule clamps it.
    round
        Current round (``balance`` shrinks its radius with it).
    seed
        Seed for any randomness (no current rule is randomized).
    evaluate
        ``evaluate(model) -> (accuracy, loss)`` on the *receiver's* validation data; required
        by ``dfl``, ``ubar`` and ``accuracy_guard`` (unless ``evaluate_many`` is given).
    evaluate_many
        Optional ``evaluate_many(models (k, d) float32) -> [(accuracy, loss)] * k``: the same
        as ``evaluate`` on every row, in one batched call. When given, the rules above score
        the candidates in one call (and own in another: stacking own on top of the pool
        was a copy of it) instead of calling ``evaluate`` once per model; it must return
        exactly ``k`` finite pairs.
    eval_samples
        How many samples ``evaluate`` scores on (0 = unknown). ``accuracy_guard`` does not
        judge on fewer than its ``min_samples``: the accuracy of a handful is noise.
    candidate_ids
        Stable sender ids (author public keys), one per candidate; required by ``dfl``.
    state
        The rule's state returned by the previous round (``{}`` at first).
    params
        Hyper-parameter overrides; unknown names raise :class:`UsageError`.
    start
        The model the receiver's own training began from this round (its previous aggregate),
        shape ``(d,)``; ``None`` when unknown. ``own - start`` is the receiver's own update;
        :func:`direction` compares each candidate's move since ``start`` with it.
    inputs_checked
        Set by :func:`compose` for the rules it calls: ``own`` and ``candidates`` come from a
        pool it already checked (finite float32), so the finiteness scan is not repeated (it
        was 10 scans per aggregation with the three-layer default rule). Shapes and weights
        are still checked. A caller that sets it vouches for the models.
    model_needed
        ``False`` when the caller uses only the verdicts and the state (:func:`compose` tells
        its filter so): a rule may then skip computing its model and return ``own`` instead.
        The filters of the default's stack do (``accuracy_guard``, ``balance``,
        ``direction``): each model they computed was thrown away, one ``(n, d)`` pass each.
    """

    own_samples: int = 1
    num_byzantine: int = 0
    round: int = 0
    seed: int = 0
    evaluate: Callable[[npt.NDArray[np.float32]], tuple[float, float]] | None = None
    evaluate_many: Callable[[npt.NDArray[np.float32]], Sequence[tuple[float, float]]] | None = None
    eval_samples: int = 0
    candidate_ids: tuple[bytes, ...] | None = None
    state: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, float] = field(default_factory=dict)
    inputs_checked: bool = False
    start: npt.NDArray[Any] | None = None
    model_needed: bool = True

    def __post_init__(self) -> None:
        for name in ("own_samples", "num_byzantine", "round", "seed", "eval_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise UsageError(f"RuleContext.{name} must be an int, got {value!r}")
            if name != "seed" and value < 0:
                raise UsageError(f"RuleContext.{name} must be >= 0, got {value}")
        if self.evaluate is not None and not callable(self.evaluate):
            raise UsageError("RuleContext.evaluate must be callable or None")
        if self.evaluate_many is not None and not callable(self.evaluate_many):
            raise UsageError("RuleContext.evaluate_many must be callable or None")
        if self.candidate_ids is not None:
            if not all(isinstance(c, bytes) for c in self.candidate_ids):
                raise UsageError("RuleContext.candidate_ids must be a tuple of bytes")
            if len(set(self.candidate_ids)) != len(self.candidate_ids):
                raise UsageError("RuleContext.candidate_ids must be unique")
        if not isinstance(self.state, Mapping):
            raise UsageError("RuleContext.state must be a mapping")
        for key, value in self.params.items():
            if not isinstance(key, str):
                raise UsageError(f"parameter names must be str, got {key!r}")
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise UsageError(f"parameter {key!r} must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise UsageError(f"parameter {key!r} must be finite, got {value!r}")


@dataclass(frozen=True)
class RuleVerdict:
    """The judgement on one candidate.

    Attributes
    ----------
    accepted
        Whether the candidate contributed to the new model.
    score
        Rule-specific number (documented per rule), always finite.
    reason
        Short code: ``"ok"``, ``"krum-score"``, ``"too-far"``, ``"clipped"``,
        ``"low-accuracy"``, ``"high-loss"`` ... A rejection whose reason starts with
        ``"rank:"`` (:data:`RANK_PREFIX`) only ranked the candidate below others
        (:func:`direction` leaves out the ``f`` lowest whatever their values) rather than
        finding it bad: the node core leaves its author's standing alone for it, live and when
        it rebuilds standing from its chain, so a rank never gets an honest neighbour ignored.
    """

    accepted: bool
    score: float
    reason: str

    @property
    def judged(self) -> bool:
        """Whether this verdict counts for the author's standing (not a rank's rejection)."""
        return counts_for_standing(self.accepted, self.reason)

    def __post_init__(self) -> None:
        if not math.isfinite(self.score):
            raise UsageError(f"verdict score must be finite, got {self.score!r}")


@dataclass(frozen=True)
class RuleResult:
    """Output of a rule: the new model, one verdict per candidate and the next state."""

    model: F32
    verdicts: tuple[RuleVerdict, ...]
    state: Mapping[str, Any]


Rule = Callable[[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any], RuleContext], RuleResult]


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _as_real(name: str, value: npt.ArrayLike) -> npt.NDArray[Any]:
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise UsageError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr


def _all_finite(x: F32) -> bool:
    # A sum is NaN/inf whenever an input is; only a (rare) overflow needs the full check.
    if x.size == 0:
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.ones(x.shape[0], np.float32) @ x if x.ndim == 2 else x
    return bool(np.isfinite(total).all()) or bool(np.isfinite(x).all())


def _prepare(
    own: npt.NDArray[Any],
    candidates: npt.NDArray[Any],
    weights: npt.NDArray[Any],
    ctx: RuleContext,
) -> tuple[F32, F32, F64]:
    """Validate the inputs; return contiguous float32 own/candidates and float64 weights."""
    if not isinstance(ctx, RuleContext):
        raise UsageError(f"ctx must be a RuleContext, got {type(ctx).__name__}")
    own_a = _as_real("own", own)
    cand_a = _as_real("candidates", candidates)
    w_a = _as_real("weights", weights)
    if own_a.ndim != 1 or own_a.shape[0] == 0:
        raise UsageError(f"own must have shape (d,) with d > 0, got {own_a.shape}")
    d = own_a.shape[0]
    if cand_a.ndim != 2 or cand_a.shape[1] != d:
        raise UsageError(f"candidates must have shape (n, {d}), got {cand_a.shape}")
    n = cand_a.shape[0]
    if w_a.shape != (n,):
        raise UsageError(f"weights must have shape ({n},), got {w_a.shape}")
    if ctx.candidate_ids is not None and len(ctx.candidate_ids) != n:
        raise UsageError(f"candidate_ids has {len(ctx.candidate_ids)} ids for {n} candidates")
    with np.errstate(over="ignore"):  # out-of-range values become inf and are refused below
        own32 = np.ascontiguousarray(own_a, dtype=np.float32)
        cand32 = np.ascontiguousarray(cand_a, dtype=np.float32)
    w64 = np.asarray(w_a, dtype=np.float64)
    if not ctx.inputs_checked and not _all_finite(own32):
        raise UsageError("own model has non-finite values (or values outside float32 range)")
    if not ctx.inputs_checked and not _all_finite(cand32):
        raise UsageError("candidates have non-finite values (or values outside float32 range)")
    if not np.isfinite(w64).all() or (w64 < 0).any():
        raise UsageError("weights must be finite and >= 0")
    return own32, cand32, w64


def _params(ctx: RuleContext, defaults: Mapping[str, float], rule: str) -> dict[str, float]:
    unknown = set(ctx.params) - set(defaults)
    if unknown:
        raise UsageError(
            f"unknown parameter(s) for rule {rule!r}: {sorted(unknown)}; known: {sorted(defaults)}"
        )
    out = dict(defaults)
    out.update({k: float(v) for k, v in ctx.params.items()})
    return out


def _check_range(name: str, value: float, lo: float, hi: float = math.inf) -> float:
    if not lo <= value <= hi:
        raise UsageError(f"parameter {name!r} must be in [{lo}, {hi}], got {value}")
    return value


def _combine(own: F32, cands: F32, a: float, c: F64) -> F32:
    """Return ``a * own + c @ cands`` as float32 (a convex combination: finite)."""
    out: F32
    if cands.shape[0] == 0 or not np.any(c):
        out = (own * np.float32(a)).astype(np.float32) if a != 1.0 else own.copy()
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow -> float64 pass below
            out = c.astype(np.float32) @ cands
            if a != 0.0:
                out += np.float32(a) * own
    if np.isfinite(out).all():
        return out
    # Overflow of float32 partial sums (inputs near float32 max): redo in float64.
    acc = a * own.astype(np.float64)
    for s in range(0, own.shape[0], _CHUNK):
        acc[s : s + _CHUNK] += c @ cands[:, s : s + _CHUNK].astype(np.float64)
    return np.clip(acc, -np.finfo(np.float32).max, np.finfo(np.float32).max).astype(np.float32)


def _centered_gram(own: F32, cands: F32, full: bool) -> F64:
    """Gram matrix of ``cands - own`` (float64), or only its diagonal when ``full`` is False.

    Centring at ``own`` keeps nearby models from cancelling; chunks keep the working set in
    cache and sum the float32 partial products in float64.
    """
    for wide in (False, True):
        with np.errstate(over="ignore", invalid="ignore"):  # float32 overflow -> float64 pass
            acc = _gram_pass(own, cands, full, wide)
        if np.isfinite(acc).all():
            return acc
    raise UsageError("model norms overflow float64")  # pragma: no cover - needs |x| > 1e150


def _gram_pass(own: F32, cands: F32, full: bool, wide: bool) -> F64:
    n, d = cands.shape
    acc: F64 = np.zeros((n, n) if full else n, np.float64)
    for s in range(0, d, _CHUNK):
        if wide:  # float64 products: only when float32 overflowed
            b64 = cands[:, s : s + _CHUNK].astype(np.float64) - own[s : s + _CHUNK]
            acc += b64 @ b64.T if full else np.einsum("ij,ij->i", b64, b64)
        else:
            b32 = cands[:, s : s + _CHUNK] - own[s : s + _CHUNK]
            acc += b32 @ b32.T if full else np.einsum("ij,ij->i", b32, b32)
    return acc


def _pool_sqdist(gram: F64) -> F64:
    """Squared distances among the pool ``{own} + candidates`` from the centred Gram."""
    n = gram.shape[0]
    diag = np.diag(gram)
    sq = np.empty((n + 1, n + 1), np.float64)
    sq[0, 0] = 0.0
    sq[0, 1:] = diag
    sq[1:, 0] = diag
    sq[1:, 1:] = diag[:, None] + diag[None, :] - 2.0 * gram
    np.maximum(sq, 0.0, out=sq)
    np.fill_diagonal(sq, 0.0)
    return sq


def _sum_rows64(rows: list[F32]) -> F64:
    """``np.sum`` of ``rows`` stacked as columns, ``axis=1, dtype=float64``, in numpy's own
    order (sequential below 8 terms, eight running sums combined pairwise from 8 on), so the
    result is the same to the last bit."""
    k = len(rows)
    if k < 8:
        acc: F64 = rows[0].astype(np.float64)
        for r in rows[1:]:
            acc += r
        return acc
    parts = [rows[j].astype(np.float64) for j in range(8)]
    full = k - k % 8
    for i in range(8, full, 8):
        for j in range(8):
            parts[j] += rows[i + j]
    acc = ((parts[0] + parts[1]) + (parts[2] + parts[3])) + (
        (parts[4] + parts[5]) + (parts[6] + parts[7])
    )
    for i in range(full, k):
        acc += rows[i]
    return acc


def _middle_mean_small(own: F32, cands: F32, b: int) -> F32:
    """:func:`_middle_mean` of a small pool in numpy: an elementwise min/max selection network
    over whole model vectors (:func:`~dfl.learning._networks.selection_network`) instead of
    sorting a transposed copy row by row. The same values come out in the same positions,
    summed in numpy's order, so the result equals the sorted version bit for bit (``-0.0``
    and ``0.0`` aside). With the MLP (159,010 values), own + 8 candidates and ``b = 3``:
    26 comparators."""
    m = cands.shape[0] + 1
    pos = list(_own_on_top(own, cands))
    spare = np.empty_like(own)
    for i, j in selection_network(m, b, m - b):
        np.minimum(pos[i], pos[j], out=spare)
        np.maximum(pos[i], pos[j], out=pos[j])
        pos[i], spare = spare, pos[i]
    mean: F64 = _sum_rows64(pos[b : m - b]) / (m - 2 * b)
    return mean.astype(np.float32)


def _middle_mean(own: F32, cands: F32, b: int) -> F32:
    """Per coordinate, the mean (float64 accumulation) of the pool's sorted positions
    ``b:m - b``: numpy below ``_KERNEL_MIN_POOL`` models, the numba kernel from there on."""
    m = cands.shape[0] + 1
    if m < _KERNEL_MIN_POOL:
        return _middle_mean_small(own, cands, b)
    from dfl.learning import _kernels

    return _kernels.trimmed_mean(own, cands, b)


def _krum_scores(sq: F64, members: I64, k: int) -> F64:
    """Krum score of each member: sum of squared distances to its ``k`` nearest other members."""
    sub = sq[np.ix_(members, members)].copy()
    np.fill_diagonal(sub, np.inf)
    k = max(1, min(k, members.shape[0] - 1))
    part = np.sort(sub, axis=1)[:, :k]
    scores: F64 = part.sum(axis=1)
    return scores


def _krum_order(sq: F64, members: I64, scores: F64) -> I64:
    """Positions of ``members`` by Krum score; exact ties (e.g. two mutual nearest neighbours
    when only one neighbour counts) are broken by the sum of all squared distances, then own
    first, so the choice does not depend on candidate order."""
    spread = sq[np.ix_(members, members)].sum(axis=1)
    order: I64 = np.lexsort((members, spread, scores)).astype(np.int64)
    return order


def _own_result(own: F32, n: int, state: Mapping[str, Any], reason: str) -> RuleResult:
    verdicts = tuple(RuleVerdict(False, 0.0, reason) for _ in range(n))
    return RuleResult(own.copy(), verdicts, state)


def _uniform(n: int) -> F64:
    return np.full(n, 1.0 / (n + 1), np.float64)


def _clamp_f(f: int, limit: int) -> int:
    return max(0, min(f, limit))


def _evaluate(ctx: RuleContext, model: F32, rule: str) -> tuple[float, float]:
    if ctx.evaluate is None:
        raise UsageError(f"rule {rule!r} needs ctx.evaluate (receiver-side validation)")
    return _finite_pair(ctx.evaluate(model), "ctx.evaluate")


def _finite_pair(result: Any, source: str) -> tuple[float, float]:
    acc, loss = result
    acc_f, loss_f = float(acc), float(loss)
    if not (math.isfinite(acc_f) and math.isfinite(loss_f)):
        raise UsageError(f"{source} returned non-finite (accuracy, loss) = ({acc}, {loss})")
    return acc_f, loss_f


def _evaluate_stack(ctx: RuleContext, models: F32, rule: str) -> tuple[F64, F64]:
    """``(accuracy (k,), loss (k,))`` of every row of ``models`` on the receiver's data: one
    ``ctx.evaluate_many`` call when given, else ``ctx.evaluate`` per row, in row order."""
    k = models.shape[0]
    if ctx.evaluate_many is not None:
        results = list(ctx.evaluate_many(models))
        if len(results) != k:
            raise UsageError(
                f"ctx.evaluate_many returned {len(results)} (accuracy, loss) pairs for {k} models"
            )
        pairs = [_finite_pair(r, "ctx.evaluate_many") for r in results]
    elif ctx.evaluate is None:
        raise UsageError(f"rule {rule!r} needs ctx.evaluate (receiver-side validation)")
    else:
        pairs = [_evaluate(ctx, models[i], rule) for i in range(k)]
    out: F64 = np.array(pairs, np.float64).reshape(k, 2)
    return out[:, 0], out[:, 1]


def _evaluate_own_and(ctx: RuleContext, own: F32, models: F32, rule: str) -> tuple[F64, F64]:
    """:func:`_evaluate_stack` of ``[own, *models]`` without stacking them (a copy of the pool):
    own first, then the rows; with ``ctx.evaluate_many``, one call for own and one for the
    rows (each model's numbers do not depend on what it is evaluated with)."""
    own_acc, own_loss = _evaluate_stack(ctx, own[None], rule)
    acc, loss = _evaluate_stack(ctx, models, rule)
    return np.concatenate([own_acc, acc]), np.concatenate([own_loss, loss])


def _own_on_top(own: F32, cands: F32) -> F32:
    """The stack ``[own, *cands]`` (one copy)."""
    stack: F32 = np.empty((cands.shape[0] + 1, own.shape[0]), np.float32)
    stack[0] = own
    stack[1:] = cands
    return stack


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


def fedavg(
    own: npt.NDArray[Any], candidates: npt.NDArray[Any], weights: npt.NDArray[Any], ctx: RuleContext
) -> RuleResult:
    """Sample-weighted average of own and every candidate (not robust).

    ``x = (s0 * own + sum_i p_i x_i) / (s0 + sum_i p_i)`` with ``s0 = ctx.own_samples``;
    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
    AISTATS 2017. One candidate can move the result arbitrarily far. Verdict score: the
    candidate's weight share. If all weights are 0 the result is ``own``.
    """
    own32, x, w = _prepare(own, candidates, weights, ctx)
    _params(ctx, {}, "fedavg")
    n = x.shape[0]
    total = float(ctx.own_samples) + float(w.sum())
    if total == 0.0:
        return _own_result(own32, n, ctx.state, "zero-weight")
    c = w / total
    model = _combine(own32, x, ctx.own_samples / total, c)
    return RuleResult(model, tuple(RuleVerdict(True, float(ci), "ok") for ci in c), ctx.state)


def median(
    own: npt.NDArray[Any], candidates: npt.NDArray[Any], weights: npt.NDArray[Any], ctx: RuleContext
) -> RuleResult:
    """Coordinate-wise median of the pool ``{own} + candidates`` (unweighted).

    Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates",
    ICML 2018. For an even pool size the two middle values are averaged. With ``f < m/2``
    outliers every coordinate stays within the range of the honest values. Every candidate may
    supply some coordinates, so all verdicts are ``accepted`` with score 1.
    """
    own32, x, _ = _prepare(own, candidates, weights, ctx)
    _params(ctx, {}, "median")
    n = x.shape[0]
    if n == 0:
        return RuleResult(own32, (), ctx.state)
    model = _middle_mean(own32, x, n // 2)  # b = (m - 1) // 2: the middle one or two
    return RuleResult(model, tuple(RuleVerdict(True, 1.0, "ok") for _ in range(n)), ctx.state)


def trimmed_mean(
    own: npt.NDArray[Any], candidates: npt.NDArray[Any], weights: npt.NDArray[Any], ctx: RuleContext
) -> RuleResult:
    """Coordinate-wise trimmed mean of the pool: drop the ``b`` largest and smallest values.

    Yin et al., ICML 2018. ``b = f`` clamped to ``(m - 1) // 2``; ``params["trim_fraction"]``
    (``b = floor(fraction * m)``) overrides it. With ``f <= b`` outliers every coordinate stays
    within the range of the honest values. All verdicts ``accepted`` with score 1.
    """
    own32, x, _ = _prepare(own, candidates, weights, ctx)
    p = _params(ctx, {"trim_fraction": -1.0}, "trimmed_mean")
    n = x.shape[0]
    if n == 0:
        return RuleResult(own32, (), ctx.state)
    m = n + 1
    frac = p["trim_fraction"]
    b = ctx.num_byzantine if frac < 0 else int(_check_range("trim_fraction", frac, 0, 0.5) * m)
    b = _clamp_f(b, (m - 1) // 2)
    model = _combine(own32, x, 1.0 / m, _uniform(n)) if b == 0 else _middle_mean(own32, x, b)
    return RuleResult(model, tuple(RuleVerdict(True, 1.0, "ok") for _ in range(n)), ctx.state)


def _krum_select(own32: F32, x: F32, ctx: RuleContext) -> tuple[I64, F64, int]:
    m = x.shape[0] + 1
    f = _clamp_f(ctx.num_byzantine, (m - 3) // 2)
    sq = _pool_sqdist(_centered_gram(own32, x, full=True))
    members = np.arange(m, dtype=np.int64)
    scores = _krum_scores(sq, members, m - f - 2)
    order = _krum_order(sq, members, scores)
    return order, scores, f


def krum(
    own: npt.NDArray[Any], candidates: npt.NDArray[Any], weights: npt.NDArray[Any], ctx: RuleContext
) -> RuleResult:
    """Krum: return the pool point with the smallest sum of squared distances to its neighbours.

    Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
    NeurIPS 2017. Score of point ``i``: sum of squared distances to its ``m - f - 2`` nearest
    pool points, ``f`` clamped so that ``m >= 2f + 3``. With ``m > 2f + 2`` a far outlier is
    never selected. The result may be ``own`` (then every candidate is rejected). Verdict score:
    the Krum score (lower is better); reason ``"krum-score"`` when not selected.
    """
    own32, x, _ = _prepare(own, candidates, weights, ctx)
    _params(ctx, {}, "krum")
    n = x.shape[0]
    if n == 0:
        return RuleResult(own32, (), ctx.state)
    order, scores, _ = _krum_select(own32, x, ctx)
    best = int(order[0])
    model = own32.copy() if best == 0 else x[best - 1].copy()
    verdicts = tuple(
        RuleVerdict(i + 1 == best, float(scores[i + 1]), "ok" if i + 1 == best else "krum-score")
        for i in range(n)
    )
    return RuleResult(model, verdicts, ctx.state)


def multi_krum(
    own: npt.NDArray[Any], candidates: npt.NDArray[Any], weights: npt.NDArray[Any], ctx: RuleContext
) -> RuleResult:
    """Multi-Krum: uniform average of the ``m - f`` pool points with the best Krum scores.

    El Mhamdi et al., "The Hidden Vulnerability of Distributed Learning in Byzantium",
    ICML 2018 (and Blanchard et al. 2017). ``params["select"]`` overrides how many points are
    averaged (at least 1). Verdict score: the Krum score.
    """
    own32, x, _ = _prepare(own, candidates, weights, ctx)
    p = _params(ctx, {"select": -1.0}, "multi_krum")
    n = x.shape[0]
    if n == 0:
        return RuleResult(own32, (), ctx.state)
    m = n + 1
    order, scores, f = _krum_select(own32, x, ctx)
    k = m - f if p["select"] < 0 else int(_check_range("select", p["select"], 1, m))
    chosen = order[:k]
    c = np.zeros(n, np.float64)
    picked = chosen[chosen > 0] - 1
    c[picked] = 1.0 / k
    model = _combine(own32, x, (1.0 / k) if 0 in chosen else 0.0, c)
    ok = set(picked.tolist())
    verdicts = tuple(
        RuleVerdict(i in ok, float(scores[i + 1]), "ok" if i in ok else "krum-score")
        for i in range(n)
    )
    return RuleResult(model, verdicts, ctx.state)


def bulyan(
    own: npt.NDArray[Any], candidates: npt.NDArray[Any], weights: npt.NDArray[Any], ctx: RuleContext
) -> RuleResult:
    """Bulyan: iterated Krum selection, then a coordinate-wise mean around the median.

    El Mhamdi et al., "The Hidden Vulnerability of Distributed Learning in Byzantium",
    ICML 2018. ``f`` is clamped so that ``m >= 4f + 3``. Krum (on the remaining points) is
    applied ``theta = m - 2f`` times, each time moving the winner to the selection set (ties
    broken as in ``krum``); then each coordinate is the mean (float64 accumulation) of the
    ``beta = theta - 2f`` selected values closest to the selected values' median: the window
    ``[j, j + beta)`` of the sorted values with the least total distance to the median, the
    leftmost of equal ones. Verdict: accepted iff in the selection set; score = Krum score in
    the first pass.
    """
    own32, x, _ = _prepare(own, candidates, weights, ctx)
    _params(ctx, {}, "bulyan")
    n = x.shape[0]
    if n == 0:
        return RuleResult(own32, (), ctx.state)
    from dfl.learning import _kernels

    m = n + 1
    f = _clamp_f(ctx.num_byzantine, (m - 3) // 4)
    sq = _pool_sqdist(_centered_gram(own32, x, full=True))
    theta = m - 2 * f
    selected, first = _kernels.bulyan_select(sq, f, theta)
    sel = np.sort(selected)
    beta = theta - 2 * f
    if f == 0:
        c = np.zeros(n, np.float64)
        c[sel[sel > 0] - 1] = 1.0 / theta
        model = _combine(own32, x, (1.0 / theta) if sel[0] == 0 else 0.0, c)
    else:
        model = _kernels.window_mean(own32, x, sel, beta)
    ok = {int(i) - 1 for i in sel if i > 0}
    verdicts = tuple(
        RuleVerdict(i in ok, float(first[i + 1]), "ok" if i in ok else "krum-score")
        for i in range(n)
    )
    return RuleResult(model, verdicts, ctx.state)


def geomed(
    own: npt.NDArray[Any], candidates: npt.NDArray[Any], weights: npt.NDArray[Any], ctx: RuleContext
) -> RuleResult:
    """Geometric median of the pool by the smoothed Weiszfeld algorithm (RFA).

    Pillutla, Kakade and Harchaoui, "Robust Aggregation for Federated Learning", IEEE TSP 2022.
    Minimizes ``sum_i a_i max(nu, ||z - x_i||)``; ``a`` is uniform unless
    ``params["weighted"] = 1`` (then ``a = (own_samples, weights)``, as in RFA). Starts at the
    mean of the half of the pool nearest to the medoid and iterates in the coefficient space of
    the centred Gram matrix (``O(m^2)`` per step) for at most ``params["max_iter"]`` (100) steps
    or until a step is shorter than ``params["tol"]`` (1e-6) times the median distance.
    Breakdown point 1/2. Verdict score: the candidate's final Weiszfeld weight.
    """
    own32, x, w = _prepare(own, candidates, weights, ctx)
    p = _params(ctx, {"nu": 1e-6, "max_iter": 100.0, "tol": 1e-6, "weighted": 0.0}, "geomed")
    nu = _check_range("nu", p["nu"], 1e-300)
    max_iter = int(_check_range("max_iter", p["max_iter"], 1))
    n = x.shape[0]
    if n == 0:
        return RuleResult(own32, (), ctx.state)
    m = n + 1
    alpha = np.ones(m, np.float64)
    if p["weighted"]:
        alpha = np.concatenate([[float(ctx.own_samples)], w])
        if alpha.sum() == 0:
            alpha = np.ones(m, np.float64)
    alpha /= alpha.sum()
    gram = _centered_gram(own32, x, full=True)
    pool = np.zeros((m, m), np.float64)
    pool[1:, 1:] = gram
    diag = np.diag(pool)
    # Start at the mean of the half of the pool nearest to the medoid: a robust point, so a
    # few far outliers cannot drag the start (and an objective-based stop) far away.
    pdist = np.sqrt(_pool_sqdist(gram))
    medoid = int(np.argmin(pdist @ alpha))
    near = np.argsort(pdist[medoid], kind="stable")[: (m + 1) // 2]
    coef = np.zeros(m, np.float64)  # z = sum_j coef_j * pool_j (own is the origin)
    coef[near] = alpha[near] if alpha[near].sum() > 0 else 1.0
    coef /= coef.sum()

    def distances(c: F64) -> F64:
        gc = pool @ c
        dist: F64 = np.sqrt(np.maximum(c @ gc - 2.0 * gc + diag, 0.0))
        return dist

    beta = alpha
    for _ in range(max_iter):
        dist = distances(coef)
        beta = alpha / np.maximum(dist, nu)
        new = beta / beta.sum()
        delta = new - coef
        step = math.sqrt(max(float(delta @ pool @ delta), 0.0))
        coef = new
        if step <= p["tol"] * max(float(np.median(dist)), nu):
            break
    model = _combine(own32, x, float(coef[0]), coef[1:])
    share = beta / beta.sum()
    verdicts = tuple(RuleVerdict(True, float(share[i + 1]), "ok") for i in range(n))
    return RuleResult(model, verdicts, ctx.state)


def _clip_factors(dist: F64, tau: float) -> F64:
    with np.errstate(divide="ignore"):
        lam: F64 = np.where(dist > tau, tau / np.maximum(dist, 1e-300), 1.0)
    return lam


def _clip_verdicts(lam: F64) -> tuple[RuleVerdict, ...]:
    return tuple(RuleVerdict(True, float(v), "ok" if v >= 1.0 else "clipped") for v in lam)


def cclip(
    own: npt.NDArray[Any], candidates: npt.NDArray[Any], weights: npt.NDArray[Any], ctx: RuleContext
) -> RuleResult:
    """Centered clipping around the receiver's own model.

    Karimireddy, He and Jaggi, "Learning from History for Byzantine Robust Optimization",
    ICML 2021: ``v <- v + (1/m) sum_{i in pool} clip_tau(x_i - v)`` with ``v_0 = own`` (in dfl
    the own model is the previous aggregate plus one round of local training) and
    ``clip_tau(u) = u * min(1, tau / ||u||)``; own counts as a pool point. ``params["iters"]``
    steps (default 1). ``params["tau"]`` is the radius; by default the median distance of the
    candidates to own. Each candidate moves the result by at most ``tau / m`` per step.
    Verdict score: the last clip factor ``min(1, tau / ||x_i - v||)``; reason ``"clipped"`` if
    it is below 1.
    """
    own32, x, _ = _prepare(own, candidates, weights, ctx)
    p = _params(ctx, {"tau": -1.0, "iters": 1.0}, "cclip")
    iters = int(_check_range("iters", p["iters"], 1, 1000))
    n = x.shape[0]
    if n == 0:
        return RuleResult(own32, (), ctx.state)
    m = n + 1
    if iters == 1:
        dist = np.sqrt(_centered_gram(own32, x, full=False))
        tau = float(np.median(dist)) if p["tau"] < 0 else p["tau"]
        lam = _clip_factors(dist, tau)
        coef = lam / m
    else:
        gram = _centered_gram(own32, x, full=True)
        diag = np.diag(gram)
        tau = float(np.median(np.sqrt(diag))) if p["tau"] < 0 else p["tau"]
        coef = np.zeros(n, np.float64)  # v = own + coef @ (x - own)
        lam = np.ones(n, np.float64)
        for _ in range(iters):
            gc = gram @ coef
            vv = float(coef @ gc)
            dist = np.sqrt(np.maximum(vv - 2.0 * gc + diag, 0.0))
            lam = _clip_factors(dist, tau)
            lam_own = float(_clip_factors(np.array([math.sqrt(max(vv, 0.0))]), tau)[0])
            coef = coef + (lam - (lam.sum() + lam_own) * coef) / m
    model = _combine(own32, x, 1.0 - float(coef.sum()), coef)
    return RuleResult(model, _clip_verdicts(lam), ctx.state)


def scclip(
    own: npt.NDArray[Any], candidates: npt.NDArray[Any], weights: npt.NDArray[Any], ctx: RuleContext
) -> RuleResult:
    """Self-centered clipping (ClippedGossip) with uniform gossip weights ``1/m``.

    He, Karimireddy and Jaggi, "Byzantine-Robust Decentralized Learning via ClippedGossip",
    2022: ``x <- own + sum_j W_j clip_tau(x_j - own)``. Adaptive radius (the paper's rule with
    uniform weights): ``tau = sqrt((1/delta) * sum_{j in the n - f nearest} W_j ||x_j - own||^2)``
    with ``delta = f / m`` the Byzantine weight; ``f = 0`` means no clipping (plain gossip).
    ``params["tau"]`` fixes the radius. Each candidate moves the result by at most ``tau / m``.
    Verdict score: the clip factor.
    """
    own32, x, _ = _prepare(own, candidates, weights, ctx)
    p = _params(ctx, {"tau": -1.0}, "scclip")
    n = x.shape[0]
    if n == 0:
        return RuleResult(own32, (), ctx.state)
    m = n + 1
    dist = np.sqrt(_centered_gram(own32, x, full=False))
    f = _clamp_f(ctx.num_byzantine, n)
    if p["tau"] >= 0:
        tau = p["tau"]
    elif f == 0:
        tau = math.inf
    else:
        near = np.sort(dist)[: n - f]
        tau = math.sqrt(float((near**2).sum()) / m / (f / m))
    lam = _clip_factors(dist, tau)
    coef = lam / m
    model = _combine(own32, x, 1.0 - float(coef.sum()), coef)
    return RuleResult(model, _clip_verdicts(lam), ctx.state)


def balance(
    own: npt.NDArray[Any], candidates: npt.NDArray[Any], weights: npt.NDArray[Any], ctx: RuleContext
) -> RuleResult:
    """BALANCE: accept neighbours close to own, then mix them with own.

    Fang et al., "Byzantine-Robust Decentralized Federated Learning", ACM CCS 2024. Candidate
    ``i`` is accepted iff ``||x_i - own|| <= gamma * exp(-kappa * round / T) * ||own||``; the
    new model is ``alpha * own + (1 - alpha) * mean(accepted)`` (own alone if none). Params:
    ``gamma`` (0.3), ``kappa`` (1.0), ``alpha`` (0.5), ``total_rounds`` T (100). Verdict score:
    ``||x_i - own|| / ||own||`` (``0`` if own is the zero vector); reason ``"too-far"``.

    ``recenter`` (0 = off, the default): with 1, when two or more candidates are all too far
    from own, own is taken to be the outlier and the same test is made around the candidates'
    coordinate-wise median instead (radius and score relative to the median's norm). Without
    it a node whose own model drifted away rejects every neighbour, trains alone and drifts
    further: docs/design-notes.md, 18.
    """
    own32, x, _ = _prepare(own, candidates, weights, ctx)
    p = _params(
        ctx,
        {"gamma": 0.3, "kappa": 1.0, "alpha": 0.5, "total_rounds": 100.0, "recenter": 0.0},
        "balance",
    )
    gamma = _check_range("gamma", p["gamma"], 0.0)
    kappa = _check_range("kappa", p["kappa"], 0.0)
    alpha = _check_range("alpha", p["alpha"], 0.0, 1.0)
    total_rounds = _check_range("total_rounds", p["total_rounds"], 1e-12)
    recenter = _check_range("recenter", p["recenter"], 0.0, 1.0) >= 0.5
    n = x.shape[0]
    if n == 0:
        return RuleResult(own32, (), ctx.state)
    shrink = gamma * math.exp(-kappa * ctx.round / total_rounds)

    def around(centre: F32) -> tuple[F64, float, npt.NDArray[np.bool_]]:
        """Distances to ``centre``, its norm, and who is within the radius."""
        dist = np.sqrt(_centered_gram(centre, x, full=False))
        c64 = centre.astype(np.float64)
        norm = float(np.sqrt(np.dot(c64, c64)))
        return dist, norm, dist <= shrink * norm

    dist, norm, ok = around(own32)
    if recenter and n >= 2 and not ok.any():
        dist, norm, ok = around(np.median(x, axis=0).astype(np.float32))
    k = int(ok.sum())
    coef = np.where(ok, (1.0 - alpha) / max(k, 1), 0.0)
    model = _combine(own32, x, alpha if k else 1.0, coef) if ctx.model_needed else own32
    rel = dist / norm if norm > 0 else np.zeros(n)
    verdicts = tuple(
        RuleVerdict(bool(ok[i]), float(rel[i]), "ok" if ok[i] else "too-far") for i in range(n)
    )
    return RuleResult(model, verdicts, ctx.state)


def dfl(
    own: npt.NDArray[Any], candidates: npt.NDArray[Any], weights: npt.NDArray[Any], ctx: RuleContext
) -> RuleResult:
    """DFL's receiver-side rule: validation accuracy times a decaying reputation.

    Tian et al., "DFL: High-Performance Blockchain-Based Federated Learning" (the public-chain
    design dfl follows). Each candidate is evaluated on the receiver's own validation data
    (``ctx.evaluate``); its score is ``accuracy * reputation``, reputation (default 1) read from
    ``ctx.state["reputation"][candidate_id]``. The new model is
    ``self_weight * own + (1 - self_weight) * sum_i s_i x_i / sum_i s_i`` over accepted
    candidates (``own`` if none). A candidate is rejected (``"low-accuracy"``) if its accuracy is
    below ``params["min_accuracy"]`` (0) or its score is 0. When ``n >= 2`` the worst sender of
    the round (lowest accuracy; ties -> smallest id) has its reputation multiplied by
    ``params["decay"]`` (0.5) in the returned state; other reputations are carried over.
    Requires ``ctx.evaluate`` (or ``ctx.evaluate_many``: all candidates in one call) and
    ``ctx.candidate_ids``.
    """
    own32, x, _ = _prepare(own, candidates, weights, ctx)
    p = _params(ctx, {"decay": 0.5, "self_weight": 0.5, "min_accuracy": 0.0}, "dfl")
    decay = _check_range("decay", p["decay"], 0.0, 1.0)
    self_w = _check_range("self_weight", p["self_weight"], 0.0, 1.0)
    n = x.shape[0]
    prev = ctx.state.get("reputation", {})
    if not isinstance(prev, Mapping):
        raise UsageError("dfl state['reputation'] must be a mapping id -> float")
    if n == 0:
        return RuleResult(own32, (), ctx.state)
    if ctx.candidate_ids is None:
        raise UsageError("rule 'dfl' needs ctx.candidate_ids to key its reputation state")
    ids = ctx.candidate_ids
    rep = np.array([float(prev.get(i, 1.0)) for i in ids], np.float64)
    if not np.isfinite(rep).all() or (rep < 0).any():
        raise UsageError("dfl reputations must be finite and >= 0")
    acc, _ = _evaluate_stack(ctx, x, "dfl")
    score = np.clip(acc, 0.0, 1.0) * rep
    ok = (acc >= p["min_accuracy"]) & (score > 0)
    total = float(score[ok].sum())
    if total > 0:
        coef = np.where(ok, (1.0 - self_w) * score / total, 0.0)
        model = _combine(own32, x, self_w, coef)
    else:
        model = own32.copy()
    new_rep = {bytes(k): float(v) for k, v in prev.items()}
    for i, cid in enumerate(ids):
        new_rep[cid] = float(rep[i])
    if n >= 2:
        worst = min(range(n), key=lambda i: (acc[i], ids[i]))
        new_rep[ids[worst]] = float(rep[worst] * decay)
    state = {**ctx.state, "reputation": new_rep}
    verdicts = tuple(
        RuleVerdict(bool(ok[i]), float(score[i]), "ok" if ok[i] else "low-accuracy")
        for i in range(n)
    )
    return RuleResult(model, verdicts, state)


def ubar(
    own: npt.NDArray[Any], candidates: npt.NDArray[Any], weights: npt.NDArray[Any], ctx: RuleContext
) -> RuleResult:
    """UBAR: distance pre-selection, then a loss check on the receiver's own data.

    Guo et al., "Towards Byzantine-resilient Learning in Decentralized Systems", 2021. Stage 1
    keeps the ``ceil(rho * n)`` candidates nearest to own in L2 (``rho`` = ``params["rho"]``,
    default ``1 - f/n``: the expected benign fraction). Stage 2 evaluates them
    (``ctx.evaluate``; with ``ctx.evaluate_many`` one call for own and one for them) and keeps
    those whose loss is at most own's loss, or the single lowest-loss one if none is. New
    model: ``alpha * own + (1 - alpha) * mean(kept)`` (``alpha`` default 0.5). Verdict score:
    distance (rejected in stage 1, ``"too-far"``) or loss (``"high-loss"`` / ``"ok"``).
    """
    own32, x, _ = _prepare(own, candidates, weights, ctx)
    p = _params(ctx, {"rho": -1.0, "alpha": 0.5}, "ubar")
    alpha = _check_range("alpha", p["alpha"], 0.0, 1.0)
    n = x.shape[0]
    if n == 0:
        return RuleResult(own32, (), ctx.state)
    f = _clamp_f(ctx.num_byzantine, n - 1)
    rho = 1.0 - f / n if p["rho"] < 0 else _check_range("rho", p["rho"], 0.0, 1.0)
    keep1 = max(1, min(n, math.ceil(rho * n - 1e-9)))
    dist = np.sqrt(_centered_gram(own32, x, full=False))
    near = np.argsort(dist, kind="stable")[:keep1]
    _, losses = _evaluate_own_and(ctx, own32, x[near], "ubar")
    own_loss = float(losses[0])
    loss = np.full(n, np.nan)
    loss[near] = losses[1:]
    ok = np.zeros(n, bool)
    ok[near] = loss[near] <= own_loss
    if not ok.any():
        ok[near[int(np.argmin(loss[near]))]] = True
    coef = np.where(ok, (1.0 - alpha) / int(ok.sum()), 0.0)
    model = _combine(own32, x, alpha, coef)
    verdicts = []
    for i in range(n):
        if np.isnan(loss[i]):
            verdicts.append(RuleVerdict(False, float(dist[i]), "too-far"))
        else:
            reason = "ok" if ok[i] else "high-loss"
            verdicts.append(RuleVerdict(bool(ok[i]), float(loss[i]), reason))
    return RuleResult(model, tuple(verdicts), ctx.state)


def accuracy_guard(
    own: npt.NDArray[Any], candidates: npt.NDArray[Any], weights: npt.NDArray[Any], ctx: RuleContext
) -> RuleResult:
    """Receiver-side accuracy filter: reject candidates far worse than own on own data.

    The validation idea of DFL (Tian et al.) and UBAR's stage 2 (Guo et al., 2021), as a filter
    meant for :func:`compose`: a candidate is accepted if its accuracy on the receiver's
    validation data (``ctx.evaluate``; with ``ctx.evaluate_many``, one call for own and one
    for all candidates) is at least ``ratio`` (default 0.5) times own accuracy. Distance filters
    cannot see label flipping (flipped models stay close in L2); accuracy on data the attacker
    never saw can. The bound is relative and loose on purpose: on non-IID
    shards an honest neighbour trained on other labels scores well below own on own data (on
    the MNIST goal cells, dirichlet:0.5, honest neighbours score 0.5-1.0x own after the first
    round), while a label-flipped model scores 0-0.1x own. (A sign-flipped model, one step
    backwards from an accurate model, is accurate too: the guard passes it.) A tight absolute
    margin (own - 0.1) was measured to reject honest neighbours and cost 4 points without any
    attack (benchmarks/RESULTS.md, Poisoning). With ``0 < ctx.eval_samples < min_samples``
    (default 32) the guard does not judge and accepts everyone with score 0: on 9 validation
    samples (20 nodes sharing the 1,797 ``digits``) it was measured to reject honest
    neighbours and cost the worst node 7 points. Model: mean of own and the accepted
    candidates. Score: the candidate's accuracy; reasons ``"ok"`` / ``"low-accuracy"``.
    """
    own32, x, _ = _prepare(own, candidates, weights, ctx)
    p = _params(ctx, {"ratio": 0.5, "min_samples": 32.0}, "accuracy_guard")
    ratio = _check_range("ratio", p["ratio"], 0.0, 1.0)
    min_samples = _check_range("min_samples", p["min_samples"], 0.0)
    n = x.shape[0]
    if n == 0:
        return RuleResult(own32, (), ctx.state)
    if 0 < ctx.eval_samples < min_samples:
        verdicts = tuple(RuleVerdict(True, 0.0, "ok") for _ in range(n))
        return RuleResult(_combine(own32, x, 1.0 / (n + 1), _uniform(n)), verdicts, ctx.state)
    accs, _ = _evaluate_own_and(ctx, own32, x, "accuracy_guard")
    own_acc, acc = float(accs[0]), accs[1:]
    ok = acc >= ratio * own_acc
    coef = np.where(ok, 1.0 / (1 + int(ok.sum())), 0.0)
    model = _combine(own32, x, 1.0 / (1 + int(ok.sum())), coef) if ctx.model_needed else own32
    verdicts = tuple(
        RuleVerdict(bool(ok[i]), float(acc[i]), "ok" if ok[i] else "low-accuracy") for i in range(n)
    )
    return RuleResult(model, verdicts, ctx.state)


# --------------------------------------------------------------------------------------------
# Composition and registry
# --------------------------------------------------------------------------------------------


def _split_params(params: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    filt: dict[str, float] = {}
    agg: dict[str, float] = {}
    for key, value in params.items():
        prefix, _, name = key.partition(".")
        if prefix == "filter" and name:
            filt[name] = value
        elif prefix == "aggregate" and name:
            agg[name] = value
        else:
            raise UsageError(
                f"composed rules take 'filter.<name>' or 'aggregate.<name>' params, got {key!r}"
            )
    return filt, agg


def direction_cosines(
    own: npt.NDArray[Any], candidates: npt.NDArray[Any], start: npt.NDArray[Any]
) -> F64:
    """``cos(x_i - start, own - start)`` for every row ``x_i`` of ``candidates`` (0 where a move
    or own's update is the zero vector): :func:`direction`'s score.

    Summed with ``einsum``, not BLAS, so every process gets the same bits whatever its BLAS
    threading: the score is signed into blocks, and a last-bit difference changed chains.
    Row by row through one float64 buffer, never an ``(n, d)`` float64 copy of the pool (800 MB
    at n = 100, d = 1M): half the time at n = 100, d = 61.7k, and the same bits for a row
    wherever it sits in the pool.
    """
    own64 = np.asarray(own, dtype=np.float64)
    start64 = np.asarray(start, dtype=np.float64)
    if start64.shape != own64.shape or not np.isfinite(start64).all():
        raise UsageError(f"RuleContext.start must be finite with shape {own64.shape}")
    step = own64 - start64
    x = np.asarray(candidates)
    n = x.shape[0]
    dots, sq = np.empty(n), np.empty(n)
    move = np.empty_like(start64)
    for i in range(n):
        np.subtract(x[i], start64, out=move)  # float32 -> float64 is exact, as astype first
        dots[i] = np.einsum("j,j->", move, step)
        sq[i] = np.einsum("j,j->", move, move)
    norms = np.sqrt(sq * np.einsum("i,i->", step, step))
    cos: F64 = np.divide(dots, norms, out=np.zeros(n), where=norms > 0)
    return cos


def direction(
    own: npt.NDArray[Any], candidates: npt.NDArray[Any], weights: npt.NDArray[Any], ctx: RuleContext
) -> RuleResult:
    """Direction filter: reject the ``f`` candidates that moved least the way own training did.

    Every candidate ``x`` is scored by ``cos(x - start, own - start)``, where ``start``
    (``ctx.start``) is the model the receiver's training began from this round: how far the
    candidate's move since that common point agrees with the receiver's own update (the trust
    score of FLTrust, Cao et al., NDSS 2021, with the receiver's own update as the trusted
    one). The ``min(f, (n - 1) // 2)`` lowest scores are rejected (reason ``"rank:backwards"``;
    never half the pool or more, where a rank cannot tell a minority apart): a rank,
    not a threshold, because on non-IID shards honest neighbours' cosines drift towards 0 and
    below within a few rounds, which made a fixed threshold reject them (docs/design-notes.md,
    14), while within one aggregation sign-flipped and ALIE models still rank lowest (within-
    aggregation AUC 0.91 and 0.95 on the goal cell, ``benchmarks/attack_signals.py``). Without
    ``start`` (first round, restarted node), with ``f = 0`` or fewer than two candidates it
    accepts everyone. Ties keep the earlier candidate. Its rejections are not judgements
    (``rank:`` reasons, :attr:`RuleVerdict.judged`): with ``f`` over-estimated the rank
    leaves out honest neighbours, and counting that against their standing got them ignored
    by the core (docs/design-notes.md, 17). Model: mean of own and the accepted. Score: the
    cosine (0 where a move or own update is the zero vector, and for everyone when nothing
    is ranked away).

    ``memory`` (0 = off, the default; below 1) with ``ctx.candidate_ids``: rank by each
    author's exponential average of its cosines over the rounds it was ranked,
    ``a <- memory * a + (1 - memory) * cos`` (the first sighting starts at ``cos``), and report
    that average as the score. A sign flipper's move is plainly backwards in the first rounds
    and hardly distinguishable late, when honest neighbours' cosines fall below 0 on non-IID
    shards too; the average keeps the early evidence (docs/design-notes.md, 19). ``window``
    (10): an author not ranked for more than that many rounds is forgotten, which bounds the
    state (``{"seen": {author: (average, round)}}``).
    """
    own32, x, _ = _prepare(own, candidates, weights, ctx)
    p = _params(ctx, {"memory": 0.0, "window": 10.0}, "direction")
    memory = _check_range("memory", p["memory"], 0.0, 1.0 - 1e-9)
    window = _check_range("window", p["window"], 0.0)
    n = x.shape[0]
    if n == 0:
        return RuleResult(own32, (), ctx.state)
    cos = np.zeros(n)
    reject = np.zeros(n, dtype=bool)
    start = ctx.start
    state = ctx.state
    # never rank away half the pool or more: with f >= n/2 a rank cannot tell the minority
    # (two peers and f = 1, a three-daemon network's default, would lose one every round)
    k = min(ctx.num_byzantine, (n - 1) // 2)
    if start is not None and k > 0:  # nothing to rank away: skip the n x d pass
        cos = direction_cosines(own32, x, start)
        if memory > 0 and ctx.candidate_ids is not None:
            cos, state = _remembered_cosines(cos, ctx, memory, window)
        # lowest cosine first; among equal cosines the later candidate goes first
        reject[np.lexsort((-np.arange(n), cos))[:k]] = True
    keep = ~reject
    m = int(keep.sum())
    coef = np.where(keep, 1.0 / (1 + m), 0.0)
    model = _combine(own32, x, 1.0 / (1 + m), coef) if ctx.model_needed else own32
    verdicts = tuple(
        RuleVerdict(bool(keep[i]), float(cos[i]), "ok" if keep[i] else RANK_PREFIX + "backwards")
        for i in range(n)
    )
    return RuleResult(model, verdicts, state)


def _remembered_cosines(
    cos: F64, ctx: RuleContext, memory: float, window: float
) -> tuple[F64, dict[str, Any]]:
    """Each author's cosine averaged over the rounds it was ranked (exponential, ``memory``).

    ``state["seen"]`` maps an author to ``(average, round)``; an average older than ``window``
    rounds is forgotten, so the state is bounded by the authors of the last ``window`` rounds.
    """
    assert ctx.candidate_ids is not None
    seen = {
        a: (float(v), int(r))
        for a, (v, r) in ctx.state.get("seen", {}).items()
        if 0 <= ctx.round - int(r) <= window
    }
    out = cos.copy()
    for i, author in enumerate(ctx.candidate_ids):
        if author in seen:
            out[i] = memory * seen[author][0] + (1.0 - memory) * cos[i]
        seen[author] = (float(out[i]), ctx.round)
    return out, {"seen": seen}


def with_params(rule: Rule, **params: float) -> Rule:
    """``rule`` with ``params`` bound as its defaults (``ctx.params`` still overrides them), so
    a registry entry can name a variant: ``with_params(balance, recenter=1)``."""

    def bound(
        own: npt.NDArray[Any],
        candidates: npt.NDArray[Any],
        weights: npt.NDArray[Any],
        ctx: RuleContext,
    ) -> RuleResult:
        return rule(own, candidates, weights, replace(ctx, params={**params, **ctx.params}))

    name = getattr(rule, "__name__", "rule")
    bound.__name__ = f"{name}_" + "_".join(f"{k}{v:g}" for k, v in sorted(params.items()))
    bound.__doc__ = f"{name} with params {params}."
    return bound


def remember_rejections(rule: Rule, *, window: int = 10) -> Rule:
    """Wrap ``rule`` so that attackers the node already keeps out stop costing budget.

    The node core stops fetching the models of authors whose standing fell below
    ``min_reputation`` (repeatedly rejected ones). An author this wrapper saw ``rule`` reject
    (a judged rejection: :attr:`RuleVerdict.judged`, the kind that lowers standing) within the
    last ``window`` rounds and that is absent from this round's candidates is
    counted as a Byzantine already excluded: ``rule`` is told ``f - absent`` (at least 0).
    Without it a rank filter such as :func:`direction`, told the full ``f``, spends it on
    honest neighbours once the attackers the judged filters caught are kept out
    (docs/design-notes.md, 17). Needs
    ``ctx.candidate_ids`` (without them ``rule`` runs unchanged). State: ``{"rule": ...,
    "rejected": {author: round}}``.
    """

    def remembering(
        own: npt.NDArray[Any],
        candidates: npt.NDArray[Any],
        weights: npt.NDArray[Any],
        ctx: RuleContext,
    ) -> RuleResult:
        ids = ctx.candidate_ids
        seen = ctx.state.get("rejected", {})
        rejected = {a: int(r) for a, r in seen.items() if 0 <= ctx.round - int(r) <= window}
        f = ctx.num_byzantine
        if ids is not None:
            present = set(ids)
            f = max(0, f - sum(1 for a in rejected if a not in present))
        inner = replace(ctx, num_byzantine=f, state=ctx.state.get("rule", {}))
        res = rule(own, candidates, weights, inner)
        if ids is not None:
            for author, verdict in zip(ids, res.verdicts, strict=True):
                if not verdict.accepted and verdict.judged:
                    rejected[author] = ctx.round
        return RuleResult(res.model, res.verdicts, {"rule": res.state, "rejected": rejected})

    remembering.__name__ = "remember_" + getattr(rule, "__name__", "rule")
    remembering.__doc__ = f"remember_rejections({remembering.__name__})."
    return remembering


def compose(filter_rule: Rule, aggregator: Rule, *, spend_budget: bool = False) -> Rule:
    """Chain two rules: ``filter_rule`` decides who is accepted, ``aggregator`` averages them.

    The aggregator sees only the accepted candidates (with their weights and ids) and the same
    own model; its model is the result. Verdicts of rejected candidates are the filter's, the
    others are the aggregator's. State is namespaced: ``{"filter": ..., "aggregate": ...}``;
    params are prefixed ``"filter.<name>"`` / ``"aggregate.<name>"``.

    With ``spend_budget`` every rejection spends one unit of the Byzantine budget: the
    aggregator is told ``f' = max(0, f - rejected)``. If the filter rejects only attackers (its
    purpose), at most ``f'`` of the accepted are Byzantine and the aggregator keeps its
    guarantee while discarding less honest information: a trimmed mean that trims ``f`` values
    from a pool the filter already cleaned throws away honest models and slows mixing. If the
    filter also rejects honest candidates the aggregator trims less than ``f``; the filter's own
    bound (BALANCE's radius, the accuracy guard) still limits what a surviving attacker can do.

    Examples
    --------
    >>> RULES["balance_median"] = compose(balance, median)  # doctest: +SKIP
    """

    def run(
        own: npt.NDArray[Any],
        candidates: npt.NDArray[Any],
        weights: npt.NDArray[Any],
        ctx: RuleContext,
        scratch: bool,
    ) -> RuleResult:
        """``scratch``: ``candidates`` is a copy an enclosing compose made and no longer
        reads, so the accepted rows may be moved down in it instead of copied out."""
        own32, x, w = _prepare(own, candidates, weights, ctx)
        fp, ap = _split_params(ctx.params)
        fctx = replace(
            ctx,
            state=ctx.state.get("filter", {}),
            params=fp,
            inputs_checked=True,
            model_needed=False,
        )
        fres = filter_rule(own32, x, w, fctx)
        idx = np.array([i for i, v in enumerate(fres.verdicts) if v.accepted], dtype=np.int64)
        ids = ctx.candidate_ids
        sub_ids = None if ids is None else tuple(ids[i] for i in idx.tolist())
        f = ctx.num_byzantine
        if spend_budget:
            f = max(0, f - (x.shape[0] - idx.shape[0]))
        actx = replace(
            ctx,
            candidate_ids=sub_ids,
            state=ctx.state.get("aggregate", {}),
            params=ap,
            num_byzantine=f,
            inputs_checked=True,
            model_needed=ctx.model_needed,
        )
        everyone = idx.shape[0] == x.shape[0]  # the common case: no copy of the pool
        if everyone:
            sub, wsub = x, w
        else:  # one copy of the accepted rows for the whole stack, compacted in place below
            sub, wsub = (_compact(x, idx) if scratch else x[idx]), w[idx]
        inner = getattr(aggregator, "_compose_run", None)
        if inner is not None:
            ares = inner(own32, sub, wsub, actx, scratch or not everyone)
        else:
            ares = aggregator(own32, sub, wsub, actx)
        verdicts = list(fres.verdicts)
        for j, i in enumerate(idx.tolist()):
            verdicts[i] = ares.verdicts[j]
        state = {"filter": fres.state, "aggregate": ares.state}
        return RuleResult(ares.model, tuple(verdicts), state)

    def composed(
        own: npt.NDArray[Any],
        candidates: npt.NDArray[Any],
        weights: npt.NDArray[Any],
        ctx: RuleContext,
    ) -> RuleResult:
        return run(own, candidates, weights, ctx, False)

    composed._compose_run = run  # type: ignore[attr-defined]

    composed.__name__ = f"compose_{getattr(filter_rule, '__name__', 'filter')}_" + getattr(
        aggregator, "__name__", "aggregate"
    )
    composed.__doc__ = f"compose({composed.__name__}): filter then aggregate."
    return composed


def _compact(x: F32, idx: I64) -> F32:
    """Move rows ``idx`` (increasing) of ``x`` to its top, in place; return that top part."""
    for j, i in enumerate(idx.tolist()):
        if i != j:
            x[j] = x[i]
    return x[: idx.shape[0]]


#: The layers of a guarded direction stack, outermost first (see :func:`guarded_direction_stack`).
STACK_LAYERS: tuple[str, ...] = ("guard", "balance", "rank", "trim")

#: The registered guarded direction stacks: name -> (BALANCE's params, the rank's params).
GUARDED_DIRECTION_STACKS: dict[str, tuple[dict[str, float], dict[str, float]]] = {
    "guarded_direction_trimmed": ({}, {}),
    "guarded_recentered_direction_trimmed": ({"recenter": 1.0}, {}),
    "guarded_recentered_memory_direction_trimmed": ({"recenter": 1.0}, {"memory": 0.9}),
}


def guarded_direction_stack(
    balance_params: Mapping[str, float],
    direction_params: Mapping[str, float],
    *,
    wrap: Callable[[str, Rule], Rule] | None = None,
) -> Rule:
    """The accuracy guard, BALANCE, the direction rank and the trimmed mean, each filter
    spending the Byzantine budget it used, with rejections remembered: the stack of the default
    and of its registered variants (:data:`GUARDED_DIRECTION_STACKS`; they differ only in the
    two filters' params). ``wrap(layer, rule)`` (layer names: :data:`STACK_LAYERS`) may replace
    each layer, e.g. with one that records its verdicts (``benchmarks/budget_trace.py``).
    """

    def layer(name: str, rule: Rule, params: Mapping[str, float]) -> Rule:
        bound = with_params(rule, **params) if params else rule
        return bound if wrap is None else wrap(name, bound)

    return remember_rejections(
        compose(
            layer("guard", accuracy_guard, {}),
            compose(
                layer("balance", balance, balance_params),
                compose(
                    layer("rank", direction, direction_params),
                    layer("trim", trimmed_mean, {}),
                    spend_budget=True,
                ),
                spend_budget=True,
            ),
            spend_budget=True,
        )
    )


RULES: dict[str, Rule] = {
    "fedavg": fedavg,
    "median": median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multi_krum": multi_krum,
    "bulyan": bulyan,
    "geomed": geomed,
    "cclip": cclip,
    "scclip": scclip,
    "balance": balance,
    "dfl": dfl,
    "ubar": ubar,
    "balance_median": compose(balance, median),
    "balance_trimmed": compose(balance, trimmed_mean),
    "accuracy_guard": accuracy_guard,
    # the default of sessions 2-4: accuracy guard, then BALANCE, then a trimmed mean over what
    # is left, each filter spending the Byzantine budget it used
    "guarded_balance_trimmed": compose(
        accuracy_guard, compose(balance, trimmed_mean, spend_budget=True), spend_budget=True
    ),
    # the same filters, then the coordinate-wise median: holds a pixel-trigger backdoor, but
    # costs accuracy with few neighbours and no attack (docs/design-notes.md, 11)
    "guarded_balance_median": compose(
        accuracy_guard, compose(balance, median, spend_budget=True), spend_budget=True
    ),
    # GUARDED_DIRECTION_STACKS:
    # - guarded_direction_trimmed, the default of sessions 5-8: the same two filters, then the
    #   direction filter (a rank, costing no standing) on the budget they left, then the
    #   trimmed mean; rejected authors the core keeps out stop costing budget
    #   (docs/design-notes.md, 11, 17);
    # - guarded_recentered_direction_trimmed: the same, with BALANCE told to take own as the
    #   outlier when every candidate is too far from it (a drifted node otherwise isolates
    #   itself; docs/design-notes.md, 18);
    # - guarded_recentered_memory_direction_trimmed, the default (dfl.node.compute.
    #   DEFAULT_RULE, since session 9): the same, with the direction rank on each author's
    #   cosine averaged over rounds (memory 0.9): sign flippers look backwards early and honest
    #   late (docs/design-notes.md, 19)
    **{name: guarded_direction_stack(b, d) for name, (b, d) in GUARDED_DIRECTION_STACKS.items()},
}
"""Registry of robust rules by name. A new defense: write the function, add one line here."""
