"""Tests of dfl.learning.robust: contracts for every rule, hand-computed values per rule, and
the bounded-influence guarantee each rule promises against f outliers."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dfl.errors import UsageError
from dfl.learning import robust as R
from dfl.learning._networks import selection_network
from dfl.learning.robust import RULES, RuleContext, RuleResult

FAST = settings(max_examples=30, deadline=None)
ALL = sorted(RULES)
NEEDS_EVAL = {
    "dfl",
    "ubar",
    "accuracy_guard",
    "guarded_balance_trimmed",
    "guarded_balance_median",
    "guarded_direction_trimmed",
    "guarded_recentered_direction_trimmed",
    "guarded_recentered_memory_direction_trimmed",
}


def f32(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def fake_eval(model: np.ndarray) -> tuple[float, float]:
    """Deterministic (accuracy, loss) of a model: better the closer its mean is to 0."""
    loss = float(np.mean(np.abs(model.astype(np.float64))))
    return 1.0 / (1.0 + loss), loss


def ids(n: int) -> tuple[bytes, ...]:
    return tuple(i.to_bytes(4, "big") for i in range(n))


def ctx_for(name: str, n: int, **kw: Any) -> RuleContext:
    if name in NEEDS_EVAL:
        kw.setdefault("evaluate", fake_eval)
        kw.setdefault("candidate_ids", ids(n))
    return RuleContext(**kw)


def run(name: str, own: Any, cands: Any, weights: Any = None, **kw: Any) -> RuleResult:
    cands = f32(cands)
    n = cands.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    return RULES[name](f32(own), cands, w, ctx_for(name, n, **kw))


def accepted(res: RuleResult) -> list[bool]:
    return [v.accepted for v in res.verdicts]


# ------------------------------------------------------------------------------ contracts


@pytest.mark.parametrize("name", ALL)
def test_no_candidates_returns_own(name: str) -> None:
    own = f32([1.0, -2.0, 3.5])
    res = RULES[name](own, np.zeros((0, 3), np.float32), np.zeros(0), ctx_for(name, 0))
    assert res.verdicts == ()
    assert res.model.dtype == np.float32
    np.testing.assert_array_equal(res.model, own)


@pytest.mark.parametrize("name", ALL)
def test_one_verdict_per_candidate_and_finite_float32(name: str) -> None:
    rng = np.random.default_rng(3)
    own = rng.normal(size=9)
    cands = own + 0.1 * rng.normal(size=(7, 9))  # float64 input is accepted and converted
    res = RULES[name](own, cands, np.arange(1, 8), ctx_for(name, 7, num_byzantine=1))
    assert len(res.verdicts) == 7
    assert res.model.dtype == np.float32 and res.model.shape == (9,)
    assert np.isfinite(res.model).all()
    assert all(math.isfinite(v.score) and v.reason for v in res.verdicts)


@pytest.mark.parametrize("name", ALL)
def test_extreme_finite_inputs_give_finite_float32(name: str) -> None:
    big = np.finfo(np.float32).max
    own = f32([0.0, 1.0, -1.0, 2.0])
    cands = f32([[big, -big, big, -big], [-big, big, -big, big], [1, 1, 1, 1], [0, 1, 0, 1]])
    res = run(name, own, cands, num_byzantine=1)
    assert res.model.dtype == np.float32 and np.isfinite(res.model).all()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    ("own", "cands", "weights", "match"),
    [
        (np.zeros((2, 2)), np.zeros((1, 2)), np.ones(1), "own must have shape"),
        (np.zeros(0), np.zeros((1, 0)), np.ones(1), "own must have shape"),
        (np.zeros(2), np.zeros((1, 3)), np.ones(1), "candidates must have shape"),
        (np.zeros(2), np.zeros(2), np.ones(1), "candidates must have shape"),
        (np.zeros(2), np.zeros((2, 2)), np.ones(1), "weights must have shape"),
        (np.zeros(2), np.zeros((1, 2)), -np.ones(1), "weights must be finite"),
        (np.zeros(2), np.zeros((1, 2)), np.array([np.nan]), "weights must be finite"),
        (np.zeros(2), np.array([[np.nan, 0.0]]), np.ones(1), "non-finite"),
        (np.zeros(2), np.array([[np.inf, 0.0]]), np.ones(1), "non-finite"),
        (np.array([0.0, np.inf]), np.zeros((1, 2)), np.ones(1), "non-finite"),
        (np.zeros(2), np.array([[1e39, 0.0]]), np.ones(1), "float32 range"),
        (np.zeros(2, bool), np.zeros((1, 2)), np.ones(1), "real numeric"),
        (np.zeros(2), np.array([["a", "b"]]), np.ones(1), "real numeric"),
    ],
)
def test_invalid_inputs_raise_usage_error(
    name: str, own: Any, cands: Any, weights: Any, match: str
) -> None:
    with pytest.raises(UsageError, match=match):
        RULES[name](own, cands, weights, ctx_for(name, len(weights)))


@pytest.mark.parametrize("name", ALL)
def test_unknown_param_rejected(name: str) -> None:
    with pytest.raises(UsageError, match="param"):
        run(name, [0.0], [[1.0]], params={"no_such_param": 1.0})


def test_context_is_validated() -> None:
    with pytest.raises(UsageError):
        RuleContext(num_byzantine=-1)
    with pytest.raises(UsageError):
        RuleContext(own_samples=True)
    with pytest.raises(UsageError):
        RuleContext(candidate_ids=(b"a", b"a"))
    with pytest.raises(UsageError):
        RuleContext(params={"tau": math.nan})
    with pytest.raises(UsageError, match="candidate_ids"):
        run("fedavg", [0.0], [[1.0], [2.0]], candidate_ids=(b"a",))
    with pytest.raises(UsageError, match="must be in"):
        run("balance", [0.0], [[1.0]], params={"alpha": 2.0})


@pytest.mark.parametrize("name", sorted(NEEDS_EVAL))
def test_rules_needing_evaluate_say_so(name: str) -> None:
    with pytest.raises(UsageError, match="evaluate"):
        RULES[name](f32([0.0]), f32([[1.0]]), np.ones(1), RuleContext(candidate_ids=(b"a",)))


def test_dfl_needs_candidate_ids() -> None:
    with pytest.raises(UsageError, match="candidate_ids"):
        R.dfl(f32([0.0]), f32([[1.0]]), np.ones(1), RuleContext(evaluate=fake_eval))


@st.composite
def permuted_case(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int], int]:
    n = draw(st.integers(1, 9))
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    own = rng.normal(size=d).astype(np.float32)
    cands = (own + rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, size=(n, 1))).astype(np.float32)
    weights = rng.integers(1, 50, size=n).astype(np.float64)
    perm = draw(st.permutations(list(range(n))))
    f = draw(st.integers(0, n))
    return own, cands, weights, perm, f


@pytest.mark.parametrize("name", ALL)
@FAST
@given(case=permuted_case())
def test_permutation_invariance(name: str, case: Any) -> None:
    own, cands, weights, perm, f = case
    n = cands.shape[0]
    a = RULES[name](own, cands, weights, ctx_for(name, n, num_byzantine=f))
    p = np.asarray(perm)
    ctx_b = ctx_for(name, n, num_byzantine=f, candidate_ids=tuple(ids(n)[i] for i in perm))
    b = RULES[name](own, cands[p], weights[p], ctx_b)
    np.testing.assert_allclose(b.model, a.model, rtol=2e-5, atol=2e-5)
    for j, i in enumerate(perm):
        assert b.verdicts[j].accepted == a.verdicts[i].accepted
        assert b.verdicts[j].reason == a.verdicts[i].reason
        assert b.verdicts[j].score == pytest.approx(a.verdicts[i].score, rel=1e-4, abs=1e-5)


# ------------------------------------------------------------------------------ hand-computed


def test_fedavg_hand() -> None:
    res = run("fedavg", [0, 0], [[2, 0], [0, 4]], [1, 3], own_samples=2)
    np.testing.assert_allclose(res.model, [1 / 3, 2.0], rtol=1e-6)
    assert [v.score for v in res.verdicts] == pytest.approx([1 / 6, 3 / 6])
    assert all(accepted(res))


def test_fedavg_all_zero_weights_returns_own() -> None:
    res = run("fedavg", [1, 2], [[5, 5]], [0], own_samples=0)
    np.testing.assert_array_equal(res.model, [1, 2])
    assert res.verdicts[0].reason == "zero-weight"


def test_median_hand_odd_and_even() -> None:
    np.testing.assert_array_equal(run("median", [0], [[1], [5]]).model, [1.0])
    np.testing.assert_array_equal(run("median", [0], [[1], [5], [2]]).model, [1.5])
    res = run("median", [0, 10], [[1, 8], [5, 9], [2, -3]])
    np.testing.assert_array_equal(res.model, [1.5, 8.5])


def test_trimmed_mean_hand() -> None:
    res = run("trimmed_mean", [0], [[1], [2], [5], [100]], num_byzantine=1)
    np.testing.assert_allclose(res.model, [8 / 3], rtol=1e-6)
    # f = 0 is the plain mean of the pool; trim_fraction overrides f
    np.testing.assert_allclose(run("trimmed_mean", [0], [[1], [2]]).model, [1.0])
    res = run("trimmed_mean", [0], [[1], [2], [5], [100]], params={"trim_fraction": 0.2})
    np.testing.assert_allclose(res.model, [8 / 3], rtol=1e-6)


def test_krum_hand_picks_a_candidate() -> None:
    cands = [[1, 0], [1.1, 0], [0.9, 0], [50, 0]]
    res = run("krum", [0, 0], cands, num_byzantine=1)
    # scores (k = m - f - 2 = 2): own 0.81+1, c0 .01+.01, c1 .01+.04, c2 .01+.04, far huge
    np.testing.assert_array_equal(res.model, [1, 0])
    assert accepted(res) == [True, False, False, False]
    assert res.verdicts[0].score == pytest.approx(0.02, rel=1e-4)
    assert res.verdicts[1].score == pytest.approx(0.05, rel=1e-4)
    assert res.verdicts[3].reason == "krum-score"


def test_krum_hand_picks_own() -> None:
    res = run("krum", [0, 0], [[1, 0], [0, 1], [10, 10]])
    # own: 1 + 1 = 2; (1,0): 1 + 2 = 3; (0,1): 3; far: 181 + 181
    np.testing.assert_array_equal(res.model, [0, 0])
    assert accepted(res) == [False, False, False]
    assert [v.score for v in res.verdicts] == pytest.approx([3, 3, 362], rel=1e-5)


def test_multi_krum_hand() -> None:
    cands = [[1, 0], [1.1, 0], [0.9, 0], [50, 0]]
    res = run("multi_krum", [0, 0], cands, num_byzantine=1)
    # m - f = 4 best: c0, c1, c2, own -> mean (1 + 1.1 + 0.9 + 0) / 4
    np.testing.assert_allclose(res.model, [0.75, 0], rtol=1e-6)
    assert accepted(res) == [True, True, True, False]
    res = run("multi_krum", [0, 0], cands, num_byzantine=1, params={"select": 1})
    np.testing.assert_array_equal(res.model, [1, 0])


def naive_bulyan(pool: np.ndarray, f: int) -> np.ndarray:
    """Reference Bulyan written with plain loops (El Mhamdi et al. 2018, Algorithm 1)."""
    remaining = list(range(len(pool)))
    selected: list[int] = []
    theta = len(pool) - 2 * f
    while len(selected) < theta:
        k = max(1, min(len(remaining) - f - 2, len(remaining) - 1))
        best, best_key = -1, (math.inf, math.inf)
        for i in remaining:
            dists = sorted(float(np.sum((pool[i] - pool[j]) ** 2)) for j in remaining if j != i)
            key = (sum(dists[:k]), sum(dists))  # exact ties: larger spread loses
            if key < best_key:
                best, best_key = i, key
        selected.append(best)
        remaining.remove(best)
    beta = theta - 2 * f
    out = []
    for c in range(pool.shape[1]):
        vals = sorted(float(pool[i, c]) for i in selected)
        med = (vals[(theta - 1) // 2] + vals[theta // 2]) / 2
        out.append(np.mean(sorted(vals, key=lambda v: abs(v - med))[:beta]))
    return np.asarray(out)


def test_bulyan_hand() -> None:
    own = [0.0, 0.0]
    cands = [[0.1, 0.3], [-0.1, 0.1], [0.2, -0.2], [-0.2, 0.0], [0.05, 0.2], [100, -100]]
    res = run("bulyan", own, cands, num_byzantine=1)
    # m = 7 >= 4f + 3: theta = 5 selected by iterated Krum, beta = 3 around the median
    assert accepted(res)[-1] is False
    assert sum(accepted(res)) == 4  # own + 4 candidates make theta = 5
    expected = naive_bulyan(f32([own, *cands]).astype(np.float64), 1)
    np.testing.assert_allclose(res.model, expected, rtol=1e-5, atol=1e-7)


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 12), f=st.integers(0, 3))
def test_bulyan_matches_reference(seed: int, n: int, f: int) -> None:
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(n + 1, 3)).astype(np.float32)
    res = run("bulyan", pool[0], pool[1:], num_byzantine=f)
    f_eff = max(0, min(f, (n + 1 - 3) // 4))
    expected = naive_bulyan(pool.astype(np.float64), f_eff)
    np.testing.assert_allclose(res.model, expected, rtol=1e-4, atol=1e-5)


def test_geomed_hand() -> None:
    # symmetric square: the geometric median is its centre
    res = run("geomed", [0, 0], [[2, 0], [0, 2], [2, 2]])
    np.testing.assert_allclose(res.model, [1, 1], atol=1e-5)
    # collinear points: the geometric median is the median point, far from the mean (11/3)
    res = run("geomed", [0], [[1], [10]])
    assert res.model[0] == pytest.approx(1.0, abs=2e-3)
    assert res.verdicts[1].score < res.verdicts[0].score  # far point gets less weight


def test_geomed_weighted() -> None:
    # with RFA weights, a point holding most of the mass is the geometric median
    res = run("geomed", [0], [[1], [10]], [1, 5], own_samples=1, params={"weighted": 1})
    assert res.model[0] == pytest.approx(10.0, abs=1e-2)


def test_cclip_hand() -> None:
    res = run("cclip", [0, 0], [[3, 0], [0, 1]], params={"tau": 2})
    # clip (3,0) -> (2,0); (0,1) unchanged; own counts with a zero difference: / 3
    np.testing.assert_allclose(res.model, [2 / 3, 1 / 3], rtol=1e-6)
    assert [v.reason for v in res.verdicts] == ["clipped", "ok"]
    assert [v.score for v in res.verdicts] == pytest.approx([2 / 3, 1.0])


def test_cclip_default_radius_is_median_distance() -> None:
    res = run("cclip", [0], [[1], [2], [30]])
    # tau = 2: (30) -> (2); v = (1 + 2 + 2) / 4
    np.testing.assert_allclose(res.model, [1.25], rtol=1e-6)


def test_cclip_iterations_move_the_centre() -> None:
    own, cands = [0.0], [[1.0], [1.0], [1.0]]
    one = run("cclip", own, cands, params={"tau": 0.5}).model
    many = run("cclip", own, cands, params={"tau": 0.5, "iters": 50}).model
    np.testing.assert_allclose(one, [3 * 0.5 / 4], rtol=1e-6)
    # the fixed point v satisfies 3 clip(1 - v) + clip(-v) = 0: 3 (1 - v) = 0.5 -> v = 5/6
    assert many[0] == pytest.approx(5 / 6, abs=1e-4)


def test_scclip_hand() -> None:
    res = run("scclip", [0, 0], [[1, 0], [0, 1], [10, 0]], num_byzantine=1)
    # delta = f/m = 1/4, W = 1/4, nearest n - f = 2 at distance 1: tau = sqrt(4 * (1 + 1) / 4)
    tau = math.sqrt(2)
    np.testing.assert_allclose(res.model, [(1 + tau) / 4, 1 / 4], rtol=1e-6)
    assert [v.reason for v in res.verdicts] == ["ok", "ok", "clipped"]
    # f = 0: no clipping, plain gossip average of the pool
    res = run("scclip", [0, 0], [[1, 0], [0, 1], [10, 0]])
    np.testing.assert_allclose(res.model, [11 / 4, 1 / 4], rtol=1e-6)


def test_balance_accepts_near_rejects_far() -> None:
    own = [3.0, 4.0]  # ||own|| = 5, radius gamma * 5 = 1.5 at round 0
    res = run("balance", own, [[3, 5], [10, 10], [4.4, 4]])
    assert accepted(res) == [True, False, True]
    assert res.verdicts[1].reason == "too-far"
    assert res.verdicts[0].score == pytest.approx(1 / 5)
    # 0.5 * own + 0.5 * mean((3,5), (4.4,4))
    np.testing.assert_allclose(res.model, [0.5 * 3 + 0.5 * 3.7, 0.5 * 4 + 0.5 * 4.5], rtol=1e-6)


def test_balance_radius_shrinks_with_rounds() -> None:
    own, cands = [3.0, 4.0], [[3, 5]]  # distance 1
    assert accepted(run("balance", own, cands, round=0)) == [True]
    # round = T: radius 1.5 / e = 0.55 < 1
    res = run("balance", own, cands, round=100)
    assert accepted(res) == [False]
    np.testing.assert_array_equal(res.model, own)


def test_balance_recenter_takes_own_as_the_outlier_when_everyone_is_too_far() -> None:
    own = [30.0, 40.0]  # drifted away: every candidate is farther than 0.3 * 50 = 15
    cands = [[3, 4], [3.2, 4.1], [2.9, 3.8], [12, 12]]
    assert accepted(run("balance", own, cands)) == [False] * 4  # the default: isolated
    res = run("balance", own, cands, params={"recenter": 1})
    # around the median (3.1, 4.05), norm 5.1, radius 1.53: the three close ones, not (12, 12)
    assert accepted(res) == [True, True, True, False]
    assert res.verdicts[3].reason == "too-far"
    assert res.verdicts[0].score == pytest.approx(math.hypot(0.1, 0.05) / math.hypot(3.1, 4.05))
    mean = np.mean(f32(cands[:3]), axis=0)
    np.testing.assert_allclose(res.model, 0.5 * f32(own) + 0.5 * mean, rtol=1e-6)
    # one candidate is not a majority that could overrule own
    assert accepted(run("balance", own, [[3, 4]], params={"recenter": 1})) == [False]
    with pytest.raises(UsageError, match="recenter"):
        run("balance", own, cands, params={"recenter": 2})


@FAST
@given(
    st.lists(st.floats(-3, 3, width=32), min_size=4, max_size=4),
    st.lists(st.lists(st.floats(-3, 3, width=32), min_size=4, max_size=4), min_size=1, max_size=6),
    st.integers(0, 100),
)
def test_balance_recenter_changes_nothing_while_someone_is_close(
    own: list[float], cands: list[list[float]], rnd: int
) -> None:
    plain = run("balance", own, cands, round=rnd)
    assume(any(accepted(plain)) or len(cands) < 2)
    rc = run("balance", own, cands, round=rnd, params={"recenter": 1})
    assert rc.verdicts == plain.verdicts
    np.testing.assert_array_equal(rc.model, plain.model)


def test_dfl_hand_and_reputation_decay() -> None:
    acc_of = {1.0: 0.9, 2.0: 0.6, 3.0: 0.3}

    def evaluate(model: np.ndarray) -> tuple[float, float]:
        return acc_of[float(model[0])], 0.0

    cid = ids(3)
    ctx = RuleContext(evaluate=evaluate, candidate_ids=cid)
    res = R.dfl(f32([0]), f32([[1], [2], [3]]), np.ones(3), ctx)
    # scores .9, .6, .3 -> weighted mean 3.0 / 1.8; half own (0) + half that
    np.testing.assert_allclose(res.model, [0.5 * 3.0 / 1.8], rtol=1e-6)
    assert [v.score for v in res.verdicts] == pytest.approx([0.9, 0.6, 0.3])
    rep = res.state["reputation"]
    assert rep == {cid[0]: 1.0, cid[1]: 1.0, cid[2]: 0.5}
    # state carries over: the worst sender keeps decaying, round after round
    state = res.state
    for r in range(1, 5):
        res = R.dfl(
            f32([0]),
            f32([[1], [2], [3]]),
            np.ones(3),
            RuleContext(evaluate=evaluate, candidate_ids=cid, state=state, round=r),
        )
        state = res.state
        assert res.verdicts[2].score == pytest.approx(0.3 * 0.5**r)
        assert state["reputation"][cid[2]] == pytest.approx(0.5 ** (r + 1))
        assert state["reputation"][cid[0]] == 1.0
    assert ctx.state == {}  # inputs are never mutated


def test_dfl_rejects_low_accuracy_and_keeps_absent_reputations() -> None:
    def evaluate(model: np.ndarray) -> tuple[float, float]:
        return (0.1 if model[0] > 5 else 0.8), 0.0

    state = {"reputation": {b"gone": 0.25}}
    ctx = RuleContext(
        evaluate=evaluate,
        candidate_ids=(b"a", b"b"),
        state=state,
        params={"min_accuracy": 0.5},
    )
    res = R.dfl(f32([0]), f32([[1], [9]]), np.ones(2), ctx)
    assert accepted(res) == [True, False]
    assert res.verdicts[1].reason == "low-accuracy"
    np.testing.assert_allclose(res.model, [0.5], rtol=1e-6)
    assert res.state["reputation"] == {b"gone": 0.25, b"a": 1.0, b"b": 0.5}


def test_ubar_two_stages_use_evaluate() -> None:
    calls: list[float] = []

    def evaluate(model: np.ndarray) -> tuple[float, float]:
        calls.append(float(model[0]))
        return 0.0, abs(float(model[0]) - 0.8)

    ctx = RuleContext(evaluate=evaluate, num_byzantine=1)
    res = R.ubar(f32([0]), f32([[1], [2], [10]]), np.ones(3), ctx)
    # rho = 1 - 1/3: stage 1 keeps 2 nearest (1, 2); own loss .8; loss(1) = .2 ok, loss(2) = 1.2
    assert [v.reason for v in res.verdicts] == ["ok", "high-loss", "too-far"]
    assert accepted(res) == [True, False, False]
    np.testing.assert_allclose(res.model, [0.5], rtol=1e-6)
    assert sorted(calls) == [0.0, 1.0, 2.0]  # own + stage-1 survivors only
    assert res.verdicts[0].score == pytest.approx(0.2)
    assert res.verdicts[2].score == pytest.approx(10.0)


def test_ubar_keeps_best_when_all_worse_than_own() -> None:
    def evaluate(model: np.ndarray) -> tuple[float, float]:
        return 0.0, abs(float(model[0]))

    res = R.ubar(f32([0]), f32([[3], [2]]), np.ones(2), RuleContext(evaluate=evaluate))
    assert accepted(res) == [False, True]
    np.testing.assert_allclose(res.model, [1.0], rtol=1e-6)


def test_compose_filters_then_aggregates() -> None:
    rule = R.compose(R.balance, R.median)
    own = [3.0, 4.0]
    cands = f32([[3, 5], [10, 10], [4.4, 4], [3.2, 4.1]])
    res = rule(f32(own), cands, np.ones(4), RuleContext())
    assert accepted(res) == [True, False, True, True]
    assert res.verdicts[1].reason == "too-far"
    # median of own + accepted: x: 3, 3, 4.4, 3.2 -> 3.1 ; y: 4, 5, 4, 4.1 -> 4.05
    np.testing.assert_allclose(res.model, [3.1, 4.05], rtol=1e-6)
    assert res.state == {"filter": {}, "aggregate": {}}
    assert RULES["balance_median"](f32(own), cands, np.ones(4), RuleContext()).model.tolist() == (
        res.model.tolist()
    )
    # params are namespaced; bare names are refused
    wide = rule(f32(own), cands, np.ones(4), RuleContext(params={"filter.gamma": 10.0}))
    assert all(accepted(wide))
    with pytest.raises(UsageError, match="filter"):
        rule(f32(own), cands, np.ones(4), RuleContext(params={"gamma": 10.0}))


def test_compose_namespaces_state_and_ids() -> None:
    def evaluate(model: np.ndarray) -> tuple[float, float]:
        return 1.0 / (1.0 + float(model[0])), 0.0

    rule = R.compose(R.balance, R.dfl)
    cid = (b"a", b"b", b"c")
    ctx = RuleContext(evaluate=evaluate, candidate_ids=cid, params={"filter.gamma": 1.0})
    res = rule(f32([1.0]), f32([[1.1], [1.5], [50]]), np.ones(3), ctx)
    assert accepted(res) == [True, True, False]
    assert res.state["aggregate"]["reputation"] == {b"a": 1.0, b"b": 0.5}
    ctx2 = RuleContext(
        evaluate=evaluate, candidate_ids=cid, params={"filter.gamma": 1.0}, state=res.state
    )
    res2 = rule(f32([1.0]), f32([[1.1], [1.5], [50]]), np.ones(3), ctx2)
    assert res2.state["aggregate"]["reputation"][b"b"] == 0.25


# ------------------------------------------------------------------------------ robustness


@st.composite
def attacked(draw: st.DrawFn, max_f: Callable[[int], int]) -> tuple[Any, ...]:
    """own + (n - f) honest candidates near own, and f arbitrary outliers."""
    n = draw(st.integers(1, 14))
    f = draw(st.integers(0, max_f(n)))
    d = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e2, 1e5, 1e20, 3e38]))
    own = rng.normal(size=d).astype(np.float32)
    honest = (own + rng.normal(size=(n - f, d))).astype(np.float32)
    outliers = (rng.choice([-1.0, 1.0], size=(f, d)) * scale).astype(np.float32)
    cands = np.concatenate([honest, outliers])
    perm = rng.permutation(n)
    return own, cands[perm], perm >= n - f, f


@pytest.mark.parametrize("name", ["median", "trimmed_mean"])
@FAST
@given(case=attacked(lambda n: n // 2))  # f < m / 2 with m = n + 1
def test_coordinatewise_stays_in_honest_range(name: str, case: Any) -> None:
    own, cands, bad, f = case
    res = run(name, own, cands, num_byzantine=f)
    honest = np.concatenate([own[None], cands[~bad]])
    assert (res.model >= honest.min(axis=0)).all()
    assert (res.model <= honest.max(axis=0)).all()


@pytest.mark.parametrize("name", ["krum", "multi_krum", "bulyan"])
@FAST
@given(case=attacked(lambda n: n // 4))
def test_krum_family_never_selects_far_outliers(name: str, case: Any) -> None:
    own, cands, bad, f = case
    m = cands.shape[0] + 1
    res = run(name, own, cands, num_byzantine=f)
    if m <= 2 * f + 2 or (name == "bulyan" and m < 4 * f + 3):
        return  # outside the rule's promise (f is clamped below the real count)
    if name != "bulyan":  # Bulyan may select up to f outliers, then trims them per coordinate
        assert not any(a for a, b in zip(accepted(res), bad, strict=True) if b)
    honest = np.concatenate([own[None], cands[~bad]])
    assert (res.model >= honest.min(axis=0) - 1e-5).all()
    assert (res.model <= honest.max(axis=0) + 1e-5).all()


@pytest.mark.parametrize("name", ["cclip", "scclip"])
@FAST
@given(case=attacked(lambda n: n), tau=st.floats(0.01, 10.0))
def test_clipping_moves_at_most_tau_over_m_per_outlier(name: str, case: Any, tau: float) -> None:
    own, cands, bad, f = case
    m = cands.shape[0] + 1
    res = run(name, own, cands, params={"tau": tau})
    neutral = cands.copy()
    neutral[bad] = own  # an outlier replaced by a copy of own contributes nothing
    base = run(name, own, neutral, params={"tau": tau})
    shift = float(np.linalg.norm(res.model.astype(np.float64) - base.model))
    assert shift <= f * tau / m * (1 + 1e-5) + 1e-5


def test_cclip_multi_step_bound() -> None:
    rng = np.random.default_rng(0)
    own = rng.normal(size=4).astype(np.float32)
    cands = (own + rng.normal(size=(6, 4))).astype(np.float32)
    bad = cands.copy()
    bad[0] = 1e30
    tau, iters = 0.5, 3
    p = {"tau": tau, "iters": iters}
    a = run("cclip", own, bad, params=p).model.astype(np.float64)
    neutral = cands.copy()
    neutral[0] = own
    b = run("cclip", own, neutral, params=p).model
    assert np.linalg.norm(a - b) <= iters * tau  # loose: each step moves by <= tau/m + drift


def test_geomed_bounded_influence() -> None:
    rng = np.random.default_rng(1)
    own = rng.normal(size=5).astype(np.float32)
    honest = (own + rng.normal(size=(6, 5))).astype(np.float32)
    direction = rng.normal(size=5)
    direction /= np.linalg.norm(direction)
    results = []
    for dist in (1e2, 1e4, 1e8):
        bad = (own + dist * direction * np.ones((3, 1))).astype(np.float32)
        results.append(run("geomed", own, np.concatenate([honest, bad])).model)
    # 3 outliers among 10 points: moving them 10^6 times further barely moves the median
    assert np.linalg.norm(results[2] - results[1]) < 0.1
    assert np.linalg.norm(results[2] - own) < 5.0


def test_fedavg_is_not_robust() -> None:
    own = np.zeros(3, np.float32)
    honest = np.zeros((9, 3), np.float32)
    for scale in (1e3, 1e6, 1e9):
        cands = np.concatenate([honest, np.full((1, 3), scale, np.float32)])
        res = run("fedavg", own, cands)
        # one outlier of 10 + own: the average moves by scale / 11, without bound
        np.testing.assert_allclose(res.model, np.full(3, scale / 11), rtol=1e-5)


def test_robust_rules_ignore_inflated_sample_counts() -> None:
    own = np.zeros(2, np.float32)
    cands = f32([[0.1, 0], [0, 0.1], [-0.1, 0], [100, 100]])
    liar = [1, 1, 1, 1e9]
    for name in ("median", "trimmed_mean", "krum", "multi_krum", "geomed", "cclip", "balance"):
        res = run(name, own, cands, liar, num_byzantine=1)
        assert np.abs(res.model).max() < 1.0, name


def test_accuracy_guard_rejects_models_worse_on_own_data() -> None:
    from dfl.learning.robust import RULES, RuleContext, accuracy_guard

    own = np.zeros(4, np.float32)
    cands = np.array([[0.1] * 4, [5.0] * 4, [0.2] * 4], np.float32)

    def evaluate(m: np.ndarray) -> tuple[float, float]:
        acc = 0.8 - 0.15 * float(abs(m).mean())  # farther from own = worse on own data
        return acc, 1.0 - acc

    # own scores 0.8, candidates 0.785, 0.05 and 0.77: the bound is 0.5 * 0.8 = 0.4
    ctx = RuleContext(evaluate=evaluate)
    res = accuracy_guard(own, cands, np.ones(3), ctx)
    assert [v.accepted for v in res.verdicts] == [True, False, True]
    assert [v.reason for v in res.verdicts] == ["ok", "low-accuracy", "ok"]
    assert [v.score for v in res.verdicts] == pytest.approx([0.785, 0.05, 0.77])
    np.testing.assert_allclose(res.model, np.full(4, 0.1, np.float32), rtol=1e-6)
    # the bound is relative: with ratio 0.975 the 0.77 candidate (< 0.78) is rejected too
    strict = accuracy_guard(
        own, cands, np.ones(3), RuleContext(evaluate=evaluate, params={"ratio": 0.975})
    )
    assert [v.accepted for v in strict.verdicts] == [True, False, False]
    with pytest.raises(UsageError, match="ratio"):
        accuracy_guard(
            own, cands, np.ones(3), RuleContext(evaluate=evaluate, params={"ratio": 1.5})
        )
    composed = RULES["guarded_balance_trimmed"](own, cands, np.ones(3), ctx)
    assert composed.verdicts[1].accepted is False
    assert np.isfinite(composed.model).all()


# ------------------------------------------------------------------------------ compiled kernels
# dfl.learning._kernels against plain numpy / exact references: small pools (m = 1..9, odd and
# even), a few larger ones, d around the tile width, ties, duplicates and huge magnitudes.


@st.composite
def pools(draw: st.DrawFn, min_m: int = 1, max_m: int = 70) -> np.ndarray:
    """A float32 pool ``(m, d)`` (row 0 is own), ``min_m <= m <= max_m``."""
    m = draw(
        st.one_of(
            st.integers(max(1, min_m), min(9, max_m)),
            st.integers(max(10, min_m), max(10, max_m)),
        ).filter(lambda v: v <= max_m)
    )
    d = draw(st.sampled_from([1, 2, 5, 31, 32, 33, 64, 97]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "ties", "duplicates", "huge", "mixed"]))
    if kind == "normal":
        pool = rng.normal(size=(m, d))
    elif kind == "ties":  # few distinct values: many exact ties
        pool = rng.integers(-2, 3, size=(m, d)).astype(np.float64)
    elif kind == "duplicates":  # repeated rows
        pool = rng.normal(size=(max(1, m // 2), d))[rng.integers(0, max(1, m // 2), size=m)]
    elif kind == "huge":  # near float32 max, both signs
        pool = rng.choice([-1.0, 1.0], size=(m, d)) * rng.uniform(1e37, 3.4e38, size=(m, d))
    else:  # magnitudes from 1e-30 to 1e38 side by side
        pool = rng.normal(size=(m, d)) * 10.0 ** rng.integers(-30, 38, size=(m, d))
    return np.clip(pool, -3.4e38, 3.4e38).astype(np.float32)


def mean_tolerance(window: np.ndarray) -> np.ndarray:
    """|kernel - reference| bound for a float64-accumulated mean rounded to float32: one float32
    spacing, plus twice the float64 summation error bound ``(k - 1) * 2^-53 * sum|v| / k``
    (either order of summation), at most ``2^-52 * sum|v|``."""
    ref = window.astype(np.float64).mean(axis=0)
    sum_abs = np.abs(window.astype(np.float64)).sum(axis=0)
    spacing = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    bound: np.ndarray = spacing + 2.0**-52 * sum_abs
    return bound


def test_network_sorts_every_zero_one_input() -> None:
    from dfl.learning import _kernels as K

    for m in range(1, 13):  # 0-1 principle: sorting all 2^m 0/1 inputs proves the network
        bits = ((np.arange(2**m)[:, None] >> np.arange(m)) & 1).astype(np.int8)
        for i, j in K.network(m):
            lo = np.minimum(bits[:, i], bits[:, j])
            bits[:, j] = np.maximum(bits[:, i], bits[:, j])
            bits[:, i] = lo
        assert (np.diff(bits, axis=1) >= 0).all(), m
    rng = np.random.default_rng(0)
    for m in (13, 64, 100, 129, 200):
        vals = rng.integers(0, 5, size=(50, m))
        expected = np.sort(vals, axis=1)
        for i, j in K.network(m):
            lo = np.minimum(vals[:, i], vals[:, j])
            vals[:, j] = np.maximum(vals[:, i], vals[:, j])
            vals[:, i] = lo
        np.testing.assert_array_equal(vals, expected)


@FAST
@given(pool=pools())
def test_median_kernel_matches_numpy(pool: np.ndarray) -> None:
    from dfl.learning import _kernels as K

    m = pool.shape[0]
    s = np.sort(pool, axis=0)
    lo, hi = s[(m - 1) // 2].astype(np.float64), s[m // 2].astype(np.float64)
    expected = ((lo + hi) / 2).astype(np.float32)
    np.testing.assert_array_equal(K.median(pool[0], pool[1:]), expected)
    if m > 1:
        np.testing.assert_array_equal(run("median", pool[0], pool[1:]).model, expected)


@FAST
@given(pool=pools(), data=st.data())
def test_trimmed_mean_kernel_matches_numpy(pool: np.ndarray, data: st.DataObject) -> None:
    from dfl.learning import _kernels as K

    m = pool.shape[0]
    b = data.draw(st.integers(0, (m - 1) // 2))
    window = np.sort(pool, axis=0)[b : m - b]
    expected = window.astype(np.float64).mean(axis=0)
    got = K.trimmed_mean(pool[0], pool[1:], b)
    assert got.dtype == np.float32
    assert (np.abs(got - expected) <= mean_tolerance(window)).all()


@FAST
@given(pool=pools(min_m=3), data=st.data())
def test_trimmed_mean_rule_agrees_on_both_sides_of_the_kernel_threshold(
    pool: np.ndarray, data: st.DataObject
) -> None:
    m = pool.shape[0]
    b = data.draw(st.integers(1, (m - 1) // 2))
    window = np.sort(pool, axis=0)[b : m - b]
    got = run("trimmed_mean", pool[0], pool[1:], num_byzantine=b).model
    assert got.dtype == np.float32  # numpy below R._KERNEL_MIN_POOL, the kernel from it on
    assert (np.abs(got - window.astype(np.float64).mean(axis=0)) <= mean_tolerance(window)).all()


def test_small_pools_never_load_numba() -> None:
    """A daemon with a handful of neighbours must not pay numba's ~170 MiB (see robust.py)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from dfl.learning.robust import RULES, RuleContext\n"
        "x = np.random.default_rng(0).normal(size=(9, 1000)).astype(np.float32)\n"
        "for rule in ('median', 'trimmed_mean', 'balance_trimmed', 'guarded_balance_trimmed'):\n"
        "    ctx = RuleContext(num_byzantine=2, evaluate=lambda m: (0.9, 0.1))\n"
        "    RULES[rule](x[0], x[1:], np.ones(8), ctx)\n"
        "print('numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def closest_window_reference(vals: list[float], beta: int) -> np.ndarray:
    """The ``beta`` sorted values with the least total distance to the median (exact rational
    arithmetic; ties -> the leftmost window)."""
    from fractions import Fraction

    s = sorted(vals)
    theta = len(s)
    med = (Fraction(s[(theta - 1) // 2]) + Fraction(s[theta // 2])) / 2
    costs = [sum(abs(Fraction(v) - med) for v in s[j : j + beta]) for j in range(theta - beta + 1)]
    j = costs.index(min(costs))
    return np.asarray(s[j : j + beta], np.float64)


@FAST
@given(pool=pools(min_m=2), data=st.data())
def test_window_mean_kernel_matches_exact_reference(pool: np.ndarray, data: st.DataObject) -> None:
    from dfl.learning import _kernels as K

    m, d = pool.shape
    rows = np.sort(data.draw(st.permutations(range(m)))[: data.draw(st.integers(1, m))])
    rows = np.asarray(rows, np.int64)
    theta = rows.shape[0]
    beta = data.draw(st.integers(1, theta))
    got = K.window_mean(pool[0], pool[1:], rows, beta)
    window = np.stack(
        [closest_window_reference(pool[rows, c].tolist(), beta) for c in range(d)], axis=1
    )
    expected = window.mean(axis=0)
    assert (np.abs(got - expected) <= mean_tolerance(window)).all()


def iterated_krum_reference(sq: np.ndarray, f: int, theta: int) -> tuple[list[int], np.ndarray]:
    """Bulyan's selection with robust's own helpers: re-score and re-sort every iteration."""
    remaining = np.arange(sq.shape[0], dtype=np.int64)
    first = R._krum_scores(sq, remaining, sq.shape[0] - f - 2)
    selected: list[int] = []
    while len(selected) < theta:
        scores = R._krum_scores(sq, remaining, remaining.shape[0] - f - 2)
        win = int(R._krum_order(sq, remaining, scores)[0])
        selected.append(int(remaining[win]))
        remaining = np.delete(remaining, win)
    return selected, first


@FAST
@given(pool=pools(min_m=2), data=st.data())
def test_bulyan_select_kernel_matches_iterated_krum(pool: np.ndarray, data: st.DataObject) -> None:
    from dfl.learning import _kernels as K

    m = pool.shape[0]
    f = data.draw(st.integers(0, max(0, (m - 3) // 4)))
    theta = m - 2 * f
    with np.errstate(over="ignore", invalid="ignore"):
        gram = R._centered_gram(pool[0], pool[1:], full=True)
    sq = R._pool_sqdist(gram)
    selected, first = K.bulyan_select(sq, f, theta)
    ref_selected, ref_first = iterated_krum_reference(sq, f, theta)
    assert selected.tolist() == ref_selected
    np.testing.assert_array_equal(first, ref_first)  # bit for bit: same summation order


def test_bulyan_select_breaks_exact_ties_like_krum() -> None:
    from dfl.learning import _kernels as K

    # a square and its centre: every corner has the same Krum score and spread
    pts = np.array([[0, 0], [1, 1], [1, -1], [-1, 1], [-1, -1], [0, 0], [5, 5]], np.float64)
    sq = ((pts[:, None] - pts[None]) ** 2).sum(axis=2)
    for f in (0, 1):
        theta = pts.shape[0] - 2 * f
        selected, first = K.bulyan_select(sq, f, theta)
        ref_selected, ref_first = iterated_krum_reference(sq, f, theta)
        assert selected.tolist() == ref_selected
        np.testing.assert_array_equal(first, ref_first)


def test_compose_spend_budget_tells_the_aggregator_what_is_left() -> None:
    from dfl.learning.robust import RuleContext, balance, compose, trimmed_mean

    own = np.full(3, 10.0, np.float32)
    # balance (gamma 0.3, round 0) accepts within 0.3 * ||own|| ~ 5.2: three near, two far
    cands = np.array([[9.0] * 3, [10.5] * 3, [11.5] * 3, [100.0] * 3, [-80.0] * 3], np.float32)
    ctx = RuleContext(num_byzantine=2)
    spent = compose(balance, trimmed_mean, spend_budget=True)(own, cands, np.ones(5), ctx)
    kept = compose(balance, trimmed_mean)(own, cands, np.ones(5), ctx)
    assert [v.accepted for v in spent.verdicts] == [True, True, True, False, False]
    # two rejections spend f = 2: a plain mean of own and the three near ones
    np.testing.assert_allclose(spent.model, np.full(3, (10 + 9 + 10.5 + 11.5) / 4), rtol=1e-6)
    # without: f = 2 clamped to (4 - 1) // 2 = 1 of a pool of 4 -> mean of the middle two
    np.testing.assert_allclose(kept.model, np.full(3, (10 + 10.5) / 2), rtol=1e-6)
    # one rejection of two leaves f' = 1 (never below 0)
    one = compose(balance, trimmed_mean, spend_budget=True)(
        own, cands[:4], np.ones(4), RuleContext(num_byzantine=2)
    )
    np.testing.assert_allclose(one.model, np.full(3, (10 + 10.5) / 2), rtol=1e-6)


def test_accuracy_guard_does_not_judge_on_a_handful_of_samples() -> None:
    from dfl.learning.robust import RuleContext, accuracy_guard

    own = np.zeros(2, np.float32)
    cands = np.array([[1.0, 1.0], [3.0, 3.0]], np.float32)

    def evaluate(m: np.ndarray) -> tuple[float, float]:
        return (0.9, 0.1) if not m.any() else (0.1, 2.0)

    few = accuracy_guard(own, cands, np.ones(2), RuleContext(evaluate=evaluate, eval_samples=9))
    assert [(v.accepted, v.score) for v in few.verdicts] == [(True, 0.0), (True, 0.0)]
    np.testing.assert_allclose(few.model, [4 / 3, 4 / 3], rtol=1e-6)
    enough = accuracy_guard(own, cands, np.ones(2), RuleContext(evaluate=evaluate, eval_samples=32))
    assert [v.accepted for v in enough.verdicts] == [False, False]
    np.testing.assert_allclose(enough.model, own)
    # unknown size (0) judges as before
    unknown = accuracy_guard(own, cands, np.ones(2), RuleContext(evaluate=evaluate))
    assert [v.accepted for v in unknown.verdicts] == [False, False]


# ------------------------------------------------------------------------------ evaluate_many


def fake_eval_many(stack: np.ndarray) -> list[tuple[float, float]]:
    """``fake_eval`` of every row, the way a batched evaluator answers."""
    assert stack.ndim == 2 and stack.dtype == np.float32
    return [fake_eval(row) for row in stack]


@pytest.mark.parametrize("name", sorted(NEEDS_EVAL))
@FAST
@given(case=permuted_case(), ratio=st.floats(0.0, 1.0))
def test_evaluate_many_gives_the_same_result_as_evaluate(
    name: str, case: Any, ratio: float
) -> None:
    own, cands, weights, _, f = case
    n = cands.shape[0]
    params = {"ratio": ratio} if name == "accuracy_guard" else {}
    one = run(name, own, cands, weights, num_byzantine=f, params=params)
    many = run(
        name, own, cands, weights, num_byzantine=f, params=params, evaluate_many=fake_eval_many
    )
    only_many = RULES[name](
        own,
        cands,
        weights,
        RuleContext(
            num_byzantine=f, params=params, evaluate_many=fake_eval_many, candidate_ids=ids(n)
        ),
    )
    for res in (many, only_many):  # evaluate_many is enough on its own
        assert [(v.accepted, v.reason) for v in res.verdicts] == [
            (v.accepted, v.reason) for v in one.verdicts
        ]
        assert [v.score for v in res.verdicts] == [v.score for v in one.verdicts]
        np.testing.assert_array_equal(res.model, one.model)
        assert res.state == one.state


@pytest.mark.parametrize(
    "name",
    ["accuracy_guard", "guarded_balance_trimmed", "guarded_balance_median", "dfl", "ubar"],
)
def test_rules_score_all_models_in_batched_evaluate_many_calls(name: str) -> None:
    """The candidates in one call, own (when judged) in one more: never a copy of the pool
    with own stacked on top."""
    own = f32([0.0, 0.0])
    cands = f32([[0.1, 0.1], [5.0, 5.0], [0.2, -0.1], [0.3, 0.0]])
    seen: list[np.ndarray] = []

    def evaluate_many(stack: np.ndarray) -> list[tuple[float, float]]:
        seen.append(stack.copy())
        return fake_eval_many(stack)

    def evaluate(model: np.ndarray) -> tuple[float, float]:
        raise AssertionError("evaluate must not be called when evaluate_many is given")

    res = run(name, own, cands, num_byzantine=1, evaluate=evaluate, evaluate_many=evaluate_many)
    if name == "dfl":  # candidates only: own is not judged
        assert len(seen) == 1
        np.testing.assert_array_equal(seen[0], cands)
    else:  # own, then every candidate (ubar: the 3 nearest of 4 that pass stage 1)
        assert len(seen) == 2
        np.testing.assert_array_equal(seen[0], own[None])
        np.testing.assert_array_equal(seen[1], cands[[0, 2, 3]] if name == "ubar" else cands)
    if name == "dfl":  # accepts every candidate, weighted by its accuracy
        assert res.verdicts[1].score == min(v.score for v in res.verdicts)
    else:
        assert not res.verdicts[1].accepted  # the far, bad candidate


def test_accuracy_guard_same_verdicts_and_model_with_evaluate_many() -> None:
    from dfl.learning.robust import accuracy_guard

    own = np.zeros(4, np.float32)
    cands = np.array([[0.1] * 4, [5.0] * 4, [0.2] * 4], np.float32)

    def evaluate(m: np.ndarray) -> tuple[float, float]:
        acc = 0.8 - 0.15 * float(abs(m).mean())
        return acc, 1.0 - acc

    def evaluate_many(stack: np.ndarray) -> list[tuple[float, float]]:
        return [evaluate(m) for m in stack]

    for ratio in (0.5, 0.975):
        a = accuracy_guard(
            own, cands, np.ones(3), RuleContext(evaluate=evaluate, params={"ratio": ratio})
        )
        b = accuracy_guard(
            own,
            cands,
            np.ones(3),
            RuleContext(evaluate_many=evaluate_many, params={"ratio": ratio}),
        )
        assert b.verdicts == a.verdicts
        np.testing.assert_array_equal(b.model, a.model)
    assert [v.accepted for v in a.verdicts] == [True, False, False]  # ratio 0.975


@pytest.mark.parametrize("name", sorted(NEEDS_EVAL))
@pytest.mark.parametrize("delta", [-1, 1])
def test_evaluate_many_with_the_wrong_number_of_results_is_refused(name: str, delta: int) -> None:
    def evaluate_many(stack: np.ndarray) -> list[tuple[float, float]]:
        out = fake_eval_many(stack)
        return out[:-1] if delta < 0 else [*out, (0.5, 1.0)]

    with pytest.raises(UsageError, match=r"evaluate_many returned \d+ .* for \d+ models"):
        run(name, [0.0], [[1.0], [2.0], [3.0]], num_byzantine=1, evaluate_many=evaluate_many)


@pytest.mark.parametrize("name", sorted(NEEDS_EVAL))
def test_evaluate_many_with_non_finite_results_is_refused(name: str) -> None:
    def evaluate_many(stack: np.ndarray) -> list[tuple[float, float]]:
        return [(0.5, math.nan)] * len(stack)

    with pytest.raises(UsageError, match="evaluate_many returned non-finite"):
        run(name, [0.0], [[1.0], [2.0]], evaluate_many=evaluate_many)


def test_context_checks_evaluate_many() -> None:
    with pytest.raises(UsageError, match="evaluate_many must be callable"):
        RuleContext(evaluate_many=42)  # type: ignore[arg-type]
    assert RuleContext(evaluate_many=fake_eval_many).evaluate_many is fake_eval_many


def test_small_pool_selection_network_orders_the_wanted_positions() -> None:
    for m in range(1, R._KERNEL_MIN_POOL):  # 0-1 principle, for every trim of every small pool
        bits = ((np.arange(2**m)[:, None] >> np.arange(m)) & 1).astype(np.int8)
        expected = np.sort(bits, axis=1)
        for b in range((m - 1) // 2 + 1):
            vals = bits.copy()
            for i, j in selection_network(m, b, m - b):
                lo = np.minimum(vals[:, i], vals[:, j])
                vals[:, j] = np.maximum(vals[:, i], vals[:, j])
                vals[:, i] = lo
            np.testing.assert_array_equal(vals[:, b : m - b], expected[:, b : m - b])
    # pruning pays: the middle 3 of 9 need 26 of the 28 comparators of a full sort
    assert len(selection_network(9, 3, 6)) < len(selection_network(9, 0, 9))


@FAST
@given(pool=pools(max_m=R._KERNEL_MIN_POOL - 1), data=st.data())
def test_small_pool_middle_mean_equals_numpy_sort_bit_for_bit(
    pool: np.ndarray, data: st.DataObject
) -> None:
    m = pool.shape[0]
    b = data.draw(st.integers(0, (m - 1) // 2))
    s = np.sort(pool, axis=0)[b : m - b]
    expected = (s.T.sum(axis=1, dtype=np.float64) / (m - 2 * b)).astype(np.float32)
    got = R._middle_mean(pool[0], pool[1:], b)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)  # -0.0 == 0.0


@given(k=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_row_sum_follows_numpys_order(k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = (rng.normal(size=(k, 257)) * 10.0 ** rng.integers(-8, 9, size=(k, 257))).astype(
        np.float32
    )
    expected = rows.T.copy().sum(axis=1, dtype=np.float64)
    np.testing.assert_array_equal(R._sum_rows64(list(rows)), expected)


def test_compose_checks_the_pool_once_and_still_refuses_non_finite_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(0)
    own = rng.normal(size=50).astype(np.float32)
    cands = (own + 0.01 * rng.normal(size=(6, 50))).astype(np.float32)
    ctx = RuleContext(num_byzantine=1, evaluate=lambda m: (1.0, 0.1), eval_samples=64)
    scans: list[int] = []
    real = R._all_finite

    def counting(x: np.ndarray) -> bool:
        scans.append(x.shape[0])
        return real(x)

    monkeypatch.setattr(R, "_all_finite", counting)
    for name in ("guarded_balance_trimmed", "guarded_balance_median"):
        scans.clear()
        res = RULES[name](own, cands, np.ones(6), ctx)
        assert all(v.accepted for v in res.verdicts)
        assert sorted(scans) == [6, 50]  # the candidates and own, once each, for three layers
    bad = cands.copy()
    bad[3, 7] = np.nan
    names = ("guarded_balance_trimmed", "guarded_balance_median", "balance_trimmed", "median")
    for name in (*names, "trimmed_mean"):
        with pytest.raises(UsageError, match="non-finite"):
            RULES[name](own, bad, np.ones(6), ctx)
    with pytest.raises(UsageError, match="non-finite"):
        RULES["balance_trimmed"](np.full_like(own, np.inf), cands, np.ones(6), ctx)


def test_median_variant_holds_coordinates_only_attackers_move() -> None:
    """The backdoor mechanism of design note 11: 4 of 8 neighbours push 10 coordinates that
    honest training never moves (trigger pixels). Everyone is accurate and close, so both
    filters accept all; the trimmed mean (f = 3 of 9 values) lets a third of the push through,
    the median none of it."""
    rng = np.random.default_rng(0)
    own = np.ones(50, dtype=np.float32)
    cands = np.ones((8, 50), dtype=np.float32)
    cands[:, :40] += 0.01 * rng.normal(size=(8, 40))
    cands[4:, 40:] += 0.05  # the attackers' push
    ctx = RuleContext(num_byzantine=3, evaluate=lambda m: (1.0, 0.1), eval_samples=64)
    trimmed = RULES["guarded_balance_trimmed"](own, cands, np.ones(8), ctx)
    med = RULES["guarded_balance_median"](own, cands, np.ones(8), ctx)
    assert all(v.accepted for v in (*trimmed.verdicts, *med.verdicts))
    np.testing.assert_allclose(trimmed.model[40:], 1 + 0.05 / 3, rtol=1e-6)
    np.testing.assert_array_equal(med.model[40:], 1.0)


# ------------------------------------------------------------------ direction, remembering


def _moves(n_good: int, n_bad: int, d: int = 40, seed: int = 0) -> tuple[Any, ...]:
    """start, own = start + step, honest candidates near own, attackers near start - step."""
    rng = np.random.default_rng(seed)
    start = rng.normal(size=d).astype(np.float32)
    step = rng.normal(size=d)
    own = f32(start + step)
    good = [start + step + 0.3 * rng.normal(size=d) for _ in range(n_good)]
    bad = [start - step + 0.3 * rng.normal(size=d) for _ in range(n_bad)]
    return start, own, f32(np.array(good + bad).reshape(n_good + n_bad, d))


def test_direction_rejects_the_f_candidates_moving_against_own_update() -> None:
    from dfl.learning.robust import direction

    start, own, x = _moves(5, 2)
    res = direction(own, x, np.ones(7), RuleContext(num_byzantine=2, start=start))
    assert [v.accepted for v in res.verdicts] == [True] * 5 + [False] * 2
    assert [v.reason for v in res.verdicts[5:]] == ["rank:backwards", "rank:backwards"]
    assert not any(v.judged for v in res.verdicts[5:]) and all(v.judged for v in res.verdicts[:5])
    moves, step = x.astype(np.float64) - start, own.astype(np.float64) - start
    cos = moves @ step / (np.linalg.norm(moves, axis=1) * np.linalg.norm(step))
    assert [v.score for v in res.verdicts] == pytest.approx(cos.tolist(), rel=1e-6)
    np.testing.assert_allclose(res.model, np.mean(np.vstack([own[None], x[:5]]), axis=0), rtol=1e-6)
    # a budget of 1 drops the single most backward one
    one = direction(own, x, np.ones(7), RuleContext(num_byzantine=1, start=start))
    assert [v.accepted for v in one.verdicts].count(False) == 1
    assert not one.verdicts[int(np.argmin(cos))].accepted
    big = direction(own, x, np.ones(7), RuleContext(num_byzantine=9, start=start))
    # never half the pool or more: (7 - 1) // 2 = 3 go, the two backward ones and the lowest
    lowest = set(np.argsort(cos)[:3].tolist())
    assert [v.accepted for v in big.verdicts] == [i not in lowest for i in range(7)]
    two = direction(own, x[4:6], np.ones(2), RuleContext(num_byzantine=1, start=start))
    assert all(v.accepted for v in two.verdicts)  # 2 candidates, f = 1: nothing to rank


def test_direction_accepts_everyone_without_start_or_budget_and_checks_start() -> None:
    from dfl.learning.robust import direction

    start, own, x = _moves(3, 2)
    mean = np.mean(np.vstack([own[None], x]), axis=0)
    for ctx in (RuleContext(num_byzantine=2), RuleContext(num_byzantine=0, start=start)):
        res = direction(own, x, np.ones(5), ctx)
        assert all(v.accepted for v in res.verdicts)
        np.testing.assert_allclose(res.model, mean, rtol=1e-6)
    assert direction(own, x[:0], np.ones(0), RuleContext(start=start)).model.tolist() == (
        own.tolist()
    )
    # own == start (a node that did not train): every cosine is 0, the later ones go first
    flat = direction(own, x, np.ones(5), RuleContext(num_byzantine=2, start=own))
    assert [v.accepted for v in flat.verdicts] == [True, True, True, False, False]
    assert all(v.score == 0.0 for v in flat.verdicts)
    with pytest.raises(UsageError, match="start must be finite with shape"):
        direction(own, x, np.ones(5), RuleContext(num_byzantine=1, start=start[:-1]))
    with pytest.raises(UsageError, match="start must be finite"):
        direction(
            own, x, np.ones(5), RuleContext(num_byzantine=1, start=np.full_like(start, np.nan))
        )


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 12),
    st.sampled_from([1, 5, 8191, 8193, 61_706]),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_direction_cosines_are_the_cosines_and_do_not_depend_on_the_row_order(
    n: int, d: int, seed: int, wide: bool
) -> None:
    rng = np.random.default_rng(seed)
    own = rng.standard_normal(d).astype(np.float32)
    start = (own + 0.01 * rng.standard_normal(d)).astype(np.float32)
    x = (own + 0.05 * rng.standard_normal((n, d))).astype(np.float64 if wide else np.float32)
    x[0] = start  # a candidate that did not move: cosine 0
    cos = R.direction_cosines(own, x, start)
    step = own.astype(np.float64) - start
    moves = x.astype(np.float64) - start
    with np.errstate(invalid="ignore", divide="ignore"):
        want = moves @ step / (np.linalg.norm(moves, axis=1) * np.linalg.norm(step))
    assert cos[0] == 0.0
    np.testing.assert_allclose(cos[1:], want[1:], rtol=1e-9, atol=1e-12)
    perm = rng.permutation(n)
    assert R.direction_cosines(own, x[perm], start).tobytes() == cos[perm].tobytes()


def test_direction_memory_ranks_by_each_authors_average_cosine() -> None:
    from dfl.learning.robust import direction

    start, own, x = _moves(5, 2)
    names = ids(7)
    rule = R.with_params(direction, memory=0.9)
    ctx0 = RuleContext(num_byzantine=2, start=start, candidate_ids=names)
    r0 = rule(own, x, np.ones(7), ctx0)
    cos0 = [v.score for v in r0.verdicts]  # first sight: the cosine itself
    assert [v.accepted for v in r0.verdicts] == [True] * 5 + [False] * 2
    assert r0.state == {"seen": {a: (c, 0) for a, c in zip(names, cos0, strict=True)}}
    # round 1: attacker 5 now moves exactly like own (cosine 1), honest 0 moves at right angles
    # (cosine 0) -- one round's cosine would keep 5 and drop 0, its average keeps 0 and drops 5
    later = x.copy()
    later[5] = own + (own - start)
    ortho = np.random.default_rng(1).normal(size=own.shape)
    step = (own - start).astype(np.float64)
    ortho -= (ortho @ step) / (step @ step) * step
    later[0] = start + ortho
    ctx1 = RuleContext(num_byzantine=2, start=start, candidate_ids=names, round=1, state=r0.state)
    r1 = rule(own, later, np.ones(7), ctx1)
    assert r1.verdicts[5].score == pytest.approx(0.9 * cos0[5] + 0.1, rel=1e-9)
    assert r1.verdicts[0].score == pytest.approx(0.9 * cos0[0], abs=1e-6)
    assert [v.accepted for v in r1.verdicts] == [True] * 5 + [False] * 2
    plain = direction(own, later, np.ones(7), replace(ctx1, state={}))
    assert not plain.verdicts[0].accepted and plain.verdicts[5].accepted
    # an author unseen for more than `window` (10) rounds is forgotten: state stays bounded
    ctx12 = RuleContext(
        num_byzantine=2, start=start, candidate_ids=names[:6], round=12, state=r1.state
    )
    r12 = rule(own, x[:6], np.ones(6), ctx12)
    assert set(r12.state["seen"]) == set(names[:6])
    # ... and the authors back after such a gap start again from their cosine
    fresh = direction(own, x[:6], np.ones(6), replace(ctx12, state={}))
    assert [v.score for v in r12.verdicts] == [v.score for v in fresh.verdicts]
    # without ids, or with memory 0, nothing is remembered; memory must be below 1
    assert rule(own, x, np.ones(7), RuleContext(num_byzantine=2, start=start)).state == {}
    assert direction(own, x, np.ones(7), ctx0).state == {}
    with pytest.raises(UsageError, match="memory"):
        direction(own, x, np.ones(7), replace(ctx0, params={"memory": 1.0}))


@FAST
@given(case=permuted_case())
def test_direction_rules_are_permutation_invariant_with_a_start(case: Any) -> None:
    own, cands, weights, perm, f = case
    n, d = cands.shape
    start = (own - np.random.default_rng(n * 31 + d).normal(size=d)).astype(np.float32)
    moves, step = cands.astype(np.float64) - start, own.astype(np.float64) - start
    cos = moves @ step / (np.linalg.norm(moves, axis=1) * np.linalg.norm(step))
    # equal cosines are broken by position (documented), so only distinct ones are invariant
    assume(np.min(np.diff(np.sort(cos)), initial=1.0) > 1e-6)
    name = "guarded_direction_trimmed"
    a = RULES[name](own, cands, weights, ctx_for(name, n, num_byzantine=f, start=start))
    p = np.asarray(perm)
    ctx_b = ctx_for(
        name, n, num_byzantine=f, start=start, candidate_ids=tuple(ids(n)[i] for i in perm)
    )
    b = RULES[name](own, cands[p], weights[p], ctx_b)
    np.testing.assert_allclose(b.model, a.model, rtol=2e-5, atol=2e-5)
    for j, i in enumerate(perm):
        assert b.verdicts[j].accepted == a.verdicts[i].accepted


def test_remembered_rejections_that_stay_away_stop_costing_budget() -> None:
    from dfl.learning.robust import RuleVerdict, compose, direction, remember_rejections

    def far(own: Any, cands: Any, weights: Any, ctx: RuleContext) -> RuleResult:
        """A judged filter: rejects candidates with a coordinate above 100."""
        ok = np.abs(cands).max(axis=1) <= 100
        verdicts = tuple(RuleVerdict(bool(o), 0.0, "ok" if o else "too-far") for o in ok)
        return RuleResult(own, verdicts, {})

    rule = remember_rejections(compose(far, direction, spend_budget=True), window=3)
    start, own, x = _moves(5, 2)
    names = ids(7)
    loud = x.copy()
    loud[5:] += 1000.0  # the two attackers are caught by the judged filter
    r0 = rule(own, loud, np.ones(7), RuleContext(num_byzantine=2, start=start, candidate_ids=names))
    assert [v.reason for v in r0.verdicts] == ["ok"] * 5 + ["too-far"] * 2
    assert r0.state["rejected"] == {names[5]: 0, names[6]: 0}
    # round 1: the core keeps them out -> f = 0 for the rank, every honest neighbour stays
    ctx1 = RuleContext(
        num_byzantine=2, start=start, candidate_ids=names[:5], round=1, state=r0.state
    )
    r1 = rule(own, x[:5], np.ones(5), ctx1)
    assert all(v.accepted for v in r1.verdicts) and r1.state["rejected"] == r0.state["rejected"]
    # round 2: one is back, quieter (sign-flipped): the budget left (1) goes to the rank, whose
    # rejection is not remembered (it is not a judgement and costs no standing)
    ctx2 = RuleContext(
        num_byzantine=2, start=start, candidate_ids=names[:6], round=2, state=r1.state
    )
    r2 = rule(own, x[:6], np.ones(6), ctx2)
    assert [v.reason for v in r2.verdicts] == ["ok"] * 5 + ["rank:backwards"]
    assert r2.state["rejected"] == {names[5]: 0, names[6]: 0}
    # after `window` rounds a rejection is forgotten: the full budget again
    ctx4 = RuleContext(
        num_byzantine=2, start=start, candidate_ids=names[:5], round=4, state=r2.state
    )
    r4 = rule(own, x[:5], np.ones(5), ctx4)
    assert [v.accepted for v in r4.verdicts].count(False) == 2 and r4.state["rejected"] == {}
    # without ids the wrapped rule runs unchanged
    plain = rule(own, loud, np.ones(7), RuleContext(num_byzantine=2, start=start, state=r0.state))
    assert [v.accepted for v in plain.verdicts] == [True] * 5 + [False] * 2


def test_with_params_binds_defaults_that_ctx_params_override() -> None:
    rule = R.with_params(R.balance, gamma=10.0)
    own, cands = f32([3.0, 4.0]), f32([[10.0, 10.0]])  # 9.2 away: inside 10 * 5, not 0.3 * 5
    assert accepted(rule(own, cands, np.ones(1), RuleContext())) == [True]
    assert accepted(rule(own, cands, np.ones(1), RuleContext(params={"gamma": 0.3}))) == [False]
    assert rule.__name__ == "balance_gamma10"


# ------------------------------------------------------------------ no model from a filter


@st.composite
def ranked_case(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]:
    """Own, candidates (some far, some moved backwards), weights, f and the round's start."""
    n = draw(st.integers(1, 12))
    d = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    start = rng.normal(size=d).astype(np.float32)
    own = (start + rng.normal(size=d) * 0.3).astype(np.float32)
    cands = (own + rng.normal(size=(n, d)) * rng.uniform(0.01, 0.5, size=(n, 1))).astype(np.float32)
    far = draw(st.integers(0, n))
    back = draw(st.integers(0, n - far))
    cands[:far] += np.float32(draw(st.sampled_from([1.0, 10.0])))
    cands[far : far + back] = 2 * start - cands[far : far + back]
    perm = np.asarray(draw(st.permutations(list(range(n)))), dtype=np.int64)
    f = draw(st.integers(0, n))
    return own, cands[perm], rng.integers(1, 9, size=n).astype(np.float64), f, start


@pytest.mark.parametrize(
    "rule",
    [
        R.accuracy_guard,
        R.balance,
        R.with_params(R.balance, recenter=1.0),
        R.direction,
        R.with_params(R.direction, memory=0.9),
    ],
)
@FAST
@given(case=ranked_case())
def test_a_filter_told_its_model_is_not_needed_returns_own_and_the_same_verdicts(
    rule: R.Rule, case: Any
) -> None:
    own, cands, weights, f, start = case
    ctx = ctx_for("accuracy_guard", cands.shape[0], num_byzantine=f, start=start, round=3)
    full = rule(own, cands, weights, ctx)
    lean = rule(own, cands, weights, replace(ctx, model_needed=False))
    assert lean.verdicts == full.verdicts
    assert lean.state == full.state
    np.testing.assert_array_equal(lean.model, own)


def _opaque(rule: R.Rule) -> R.Rule:
    """``rule`` behind a plain function: :func:`compose` cannot see it is a compose, so it
    hands it its own copy of the accepted rows instead of a scratch buffer."""

    def wrapped(
        own: np.ndarray, cands: np.ndarray, weights: np.ndarray, ctx: RuleContext
    ) -> RuleResult:
        return rule(own, cands, weights, ctx)

    return wrapped


@FAST
@given(case=ranked_case(), rounds=st.integers(1, 3))
def test_nested_composes_compact_in_place_with_the_same_result_and_inputs_untouched(
    case: Any, rounds: int
) -> None:
    """The default's stack shares one copy of the accepted rows between its layers and moves
    rows down in it; the result must be that of layers that each copy, bit for bit, and the
    caller's arrays (read-only here) must not be written."""
    own, cands, weights, f, start = case
    recenter = R.with_params(R.balance, recenter=1.0)
    memory = R.with_params(R.direction, memory=0.9)
    copying = R.remember_rejections(
        R.compose(
            R.accuracy_guard,
            _opaque(
                R.compose(
                    recenter,
                    _opaque(R.compose(memory, R.trimmed_mean, spend_budget=True)),
                    spend_budget=True,
                )
            ),
            spend_budget=True,
        )
    )
    shared = RULES["guarded_recentered_memory_direction_trimmed"]
    keep = cands.copy()
    for a in (own, cands, weights, start):
        a.setflags(write=False)
    state_a: dict[str, Any] = {}
    state_b: dict[str, Any] = {}
    for r in range(rounds):
        ctx = ctx_for("accuracy_guard", cands.shape[0], num_byzantine=f, start=start, round=r)
        a = copying(own, cands, weights, replace(ctx, state=state_a))
        b = shared(own, cands, weights, replace(ctx, state=state_b))
        assert a.verdicts == b.verdicts
        assert a.model.tobytes() == b.model.tobytes()
        assert a.state == b.state
        state_a, state_b = dict(a.state), dict(b.state)
    np.testing.assert_array_equal(cands, keep)
