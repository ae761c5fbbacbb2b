"""Tests of dfl.learning.attacks: contracts for every attack, hand-computed values per attack."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfl.errors import UsageError
from dfl.learning import attacks as A
from dfl.learning.attacks import ATTACKS, AttackContext

MODEL_ATTACKS = sorted(n for n, a in ATTACKS.items() if a.kind == "model")
DATA_ATTACKS = sorted(n for n, a in ATTACKS.items() if a.kind == "data")
FAST = settings(max_examples=40, deadline=None)


def make_ctx(
    seed: int = 0, d: int = 6, k: int = 4, stale: int = 0, scale: float = 1.0, **kw: Any
) -> AttackContext:
    rng = np.random.default_rng(seed)
    prev = rng.normal(size=d).astype(np.float32)
    return AttackContext(
        own_model=(prev + scale * rng.normal(size=d)).astype(np.float32),
        prev_model=prev,
        neighbor_models=(prev + scale * rng.normal(size=(k, d))).astype(np.float32),
        stale_models=tuple(rng.normal(size=d).astype(np.float32) for _ in range(stale)),
        seed=seed,
        **kw,
    )


@st.composite
def contexts(draw: st.DrawFn) -> AttackContext:
    return make_ctx(
        seed=draw(st.integers(0, 2**31)),
        d=draw(st.integers(1, 12)),
        k=draw(st.integers(0, 6)),
        stale=draw(st.integers(0, 3)),
        scale=draw(st.sampled_from([1e-6, 1e-2, 1.0, 1e3])),
        num_byzantine=draw(st.integers(0, 5)),
        num_nodes=draw(st.integers(0, 30)),
        round=draw(st.integers(0, 1000)),
    )


# --------------------------------------------------------------------------- registry, contracts


def test_registry_has_every_attack() -> None:
    assert set(ATTACKS) == {
        "none", "label_flip", "random_data", "backdoor", "sign_flip", "gaussian", "scaling",
        "alie", "ipm", "min_max", "min_sum", "dfl_random", "free_rider",
    }  # fmt: skip
    for name, attack in ATTACKS.items():
        assert attack.name == name
        assert (attack.poison_data is not None) == (attack.kind == "data")
        assert (attack.poison_model is not None) == (attack.kind == "model")
    assert {n for n, a in ATTACKS.items() if a.needs_neighbors} == {
        "alie", "ipm", "min_max", "min_sum", "free_rider",
    }  # fmt: skip


def test_get_attack() -> None:
    assert A.get_attack("alie") is ATTACKS["alie"]
    with pytest.raises(UsageError, match=r"unknown attack 'nope'.*alie.*sign_flip"):
        A.get_attack("nope")


def test_attack_kind_is_validated() -> None:
    with pytest.raises(UsageError, match="poison_model only"):
        A.Attack("x", "model", None, None)
    with pytest.raises(UsageError, match="no function"):
        A.Attack("x", "none", None, lambda ctx: ctx.own_model)
    with pytest.raises(UsageError):
        A.Attack("x", "weird", None, None)  # type: ignore[arg-type]


def test_context_is_validated() -> None:
    z = np.zeros(3, np.float32)
    with pytest.raises(UsageError, match="prev_model"):
        AttackContext(z, np.zeros(4), np.zeros((0, 3)))
    with pytest.raises(UsageError, match="neighbor_models"):
        AttackContext(z, z, np.zeros((2, 4)))
    with pytest.raises(UsageError, match="stale_models"):
        AttackContext(z, z, np.zeros((2, 3)), stale_models=(np.zeros(2),))
    with pytest.raises(UsageError, match="num_byzantine"):
        AttackContext(z, z, np.zeros((2, 3)), num_byzantine=-1)
    with pytest.raises(UsageError, match="flat vector"):
        AttackContext(np.zeros((3, 1)), z, np.zeros((2, 3)))
    # empty neighbours of any empty shape are accepted and seen as (0, d)
    assert AttackContext(z, z, np.zeros(0)).neighbors.shape == (0, 3)
    assert AttackContext(z, z, np.zeros(0)).num_neighbors == 0
    assert AttackContext(z, z, np.zeros((2, 3))).num_neighbors == 2


@FAST
@given(ctx=contexts())
def test_model_attacks_finite_float32_deterministic(ctx: AttackContext) -> None:
    for name in MODEL_ATTACKS:
        fn = ATTACKS[name].poison_model
        assert fn is not None
        out = fn(ctx)
        assert out.shape == (ctx.dim,), name
        assert out.dtype == np.float32, name
        assert np.isfinite(out).all(), name
        np.testing.assert_array_equal(out, fn(ctx), err_msg=name)


def test_model_attacks_do_not_mutate_inputs() -> None:
    ctx = make_ctx(k=3, stale=2)
    before = [ctx.own_model.copy(), ctx.prev_model.copy(), ctx.neighbor_models.copy()]
    for name in MODEL_ATTACKS:
        fn = ATTACKS[name].poison_model
        assert fn is not None
        fn(ctx)
    for a, b in zip(before, [ctx.own_model, ctx.prev_model, ctx.neighbor_models], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sigma", [1e30, 1e300, math.inf, math.nan])
def test_gaussian_with_huge_sigma_is_finite(sigma: float) -> None:
    for mode in ("update", "model"):
        fn = A.gaussian(sigma=sigma, mode=mode).poison_model
        assert fn is not None
        out = fn(make_ctx(d=1000))
        assert out.dtype == np.float32
        assert np.isfinite(out).all()
        assert np.abs(out).max() <= A.MAX_ABS


def test_gaussian_values_and_seeding() -> None:
    fn = ATTACKS["gaussian"].poison_model
    assert fn is not None
    ctx = make_ctx(d=20000, params={"sigma": 3.0})
    noise = fn(ctx).astype(np.float64) - ctx.prev_model
    assert abs(noise.std() - 3.0) < 0.1 and abs(noise.mean()) < 0.1
    other_round = AttackContext(ctx.own_model, ctx.prev_model, ctx.neighbor_models, round=1)
    assert not np.array_equal(fn(ctx), fn(other_round))
    model_mode = A.gaussian(sigma=2.0, mode="model").poison_model
    assert model_mode is not None
    assert abs(model_mode(other_round).std() - 2.0) < 0.1  # params override the factory
    assert abs(model_mode(ctx).std() - 3.0) < 0.1
    with pytest.raises(UsageError):
        A.gaussian(mode="bogus")  # type: ignore[arg-type]


@FAST
@given(seed=st.integers(0, 2**31), n=st.integers(0, 50), name=st.sampled_from(DATA_ATTACKS))
def test_data_attacks_shapes_dtypes_determinism(seed: int, n: int, name: str) -> None:
    gen = np.random.default_rng(seed)
    x = gen.random((n, 8, 8, 1), dtype=np.float32)
    y = gen.integers(0, 10, n).astype(np.int32)
    x.flags.writeable = y.flags.writeable = False  # datasets are read-only
    fn = ATTACKS[name].poison_data
    assert fn is not None
    xp, yp = fn(x, y, np.random.default_rng(seed), 10)
    assert xp.shape == x.shape and xp.dtype == np.float32
    assert yp.shape == y.shape and yp.dtype == np.int32
    assert np.isfinite(xp).all() and ((xp >= 0) & (xp <= 1)).all()
    assert ((yp >= 0) & (yp < 10)).all()
    xq, yq = fn(x, y, np.random.default_rng(seed), 10)
    np.testing.assert_array_equal(xp, xq)
    np.testing.assert_array_equal(yp, yq)


def test_none_attack() -> None:
    assert ATTACKS["none"].kind == "none"
    assert ATTACKS["none"].poison_data is None and ATTACKS["none"].poison_model is None


# --------------------------------------------------------------------------- hand-computed


def _ctx_hand(**kw: Any) -> AttackContext:
    return AttackContext(
        own_model=np.array([2.0, 0.0, 1.0], np.float32),
        prev_model=np.array([1.0, 1.0, 1.0], np.float32),
        neighbor_models=np.array([[2.0, 3.0, 1.0], [4.0, 1.0, -1.0]], np.float32),
        **kw,
    )


def _run(attack: A.Attack, ctx: AttackContext) -> np.ndarray:
    assert attack.poison_model is not None
    return attack.poison_model(ctx)


def test_sign_flip_hand_computed() -> None:
    # update = own - prev = [1, -1, 0]
    np.testing.assert_array_equal(_run(ATTACKS["sign_flip"], _ctx_hand()), [0.0, 2.0, 1.0])
    np.testing.assert_array_equal(_run(A.sign_flip(3.0), _ctx_hand()), [-2.0, 4.0, 1.0])
    ctx = _ctx_hand(params={"scale": 0.5})
    np.testing.assert_array_equal(_run(ATTACKS["sign_flip"], ctx), [0.5, 1.5, 1.0])


def test_scaling_hand_computed() -> None:
    np.testing.assert_array_equal(_run(A.scaling(4.0), _ctx_hand()), [5.0, -3.0, 1.0])
    # default boost: num_nodes when known, else k + 1 = 3
    np.testing.assert_array_equal(_run(ATTACKS["scaling"], _ctx_hand()), [4.0, -2.0, 1.0])
    ctx = _ctx_hand(num_nodes=10)
    np.testing.assert_array_equal(_run(ATTACKS["scaling"], ctx), [11.0, -9.0, 1.0])
    ctx = _ctx_hand(num_nodes=10, params={"boost": 2.0})
    np.testing.assert_array_equal(_run(ATTACKS["scaling"], ctx), [3.0, -1.0, 1.0])


def test_ipm_hand_computed() -> None:
    # honest updates [1, 2, 0] and [3, 0, -2] -> mean [2, 1, -1]
    out = _run(A.ipm(eps=2.0), _ctx_hand())
    np.testing.assert_array_equal(out, [-3.0, -1.0, 3.0])
    out = _run(ATTACKS["ipm"], _ctx_hand(params={"eps": 0.5}))
    np.testing.assert_array_equal(out, [0.0, 0.5, 1.5])
    # no neighbours: the attacker's own update [1, -1, 0] stands in for the honest mean
    alone = AttackContext(_ctx_hand().own_model, _ctx_hand().prev_model, np.zeros((0, 3)))
    np.testing.assert_array_equal(_run(A.ipm(eps=2.0), alone), [-1.0, 3.0, 1.0])


def test_dfl_random_within_bounds() -> None:
    ctx = make_ctx(d=5000)
    out = _run(ATTACKS["dfl_random"], ctx).astype(np.float64)
    ratio = out / ctx.own_model
    assert ratio.min() >= 0.7 - 1e-6 and ratio.max() <= 1.3 + 1e-6
    assert abs(ratio.mean() - 1.0) < 0.01 and ratio.std() > 0.15
    narrow = _run(ATTACKS["dfl_random"], make_ctx(d=5000, params={"low": 1.0, "high": 1.0}))
    np.testing.assert_allclose(narrow, make_ctx(d=5000).own_model, rtol=1e-6)


# --------------------------------------------------------------------------- alie


def test_alie_z_known_value() -> None:
    # n = 50, f = 12 (the paper's setting): s = 26 - 12 = 14, z = Phi^-1(36 / 50)
    assert A.alie_z(50, 12) == pytest.approx(0.582841, abs=1e-5)
    assert A.alie_z(10, 0) == 0.0  # f = 0 would give a negative z: clamped
    assert math.isfinite(A.alie_z(10, 9))  # attackers a majority: p clamped below 1
    with pytest.raises(UsageError):
        A.alie_z(0, 1)


@FAST
@given(n=st.integers(1, 500), f=st.integers(0, 500))
def test_alie_z_matches_formula(n: int, f: int) -> None:
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if 0.5 <= p < 1:
        assert A.alie_z(n, f) == pytest.approx(NormalDist().inv_cdf(p))
    assert 0.0 <= A.alie_z(n, f) < 7.0


@FAST
@given(ctx=contexts())
def test_alie_within_mean_pm_z_std(ctx: AttackContext) -> None:
    out = _run(ATTACKS["alie"], ctx).astype(np.float64)
    nb = ctx.neighbors
    if nb.shape[0] == 0:
        np.testing.assert_array_equal(out, ctx.own_model)
        return
    n = ctx.num_nodes or nb.shape[0] + ctx.num_byzantine
    z = A.alie_z(n, ctx.num_byzantine)
    mean, std = nb.mean(axis=0), nb.std(axis=0)
    tol = 1e-6 * (np.abs(mean) + z * std) + 1e-30
    assert (out >= mean - z * std - tol).all() and (out <= mean + z * std + tol).all()
    np.testing.assert_allclose(out, (mean - z * std).astype(np.float32), rtol=1e-6)


def test_alie_hand_computed_and_z_param() -> None:
    # neighbours [2,3,1], [4,1,-1]: mean [3,2,0], std [1,1,1]; n = 10, f = 3 -> s = 3, p = 0.7
    z = NormalDist().inv_cdf(0.7)
    out = _run(ATTACKS["alie"], _ctx_hand(num_nodes=10, num_byzantine=3))
    np.testing.assert_allclose(out, [3 - z, 2 - z, -z], rtol=1e-6)
    out = _run(ATTACKS["alie"], _ctx_hand(params={"z": 2.0}))
    np.testing.assert_array_equal(out, [1.0, 0.0, -2.0])
    np.testing.assert_array_equal(_run(A.alie(z=1.0), _ctx_hand()), [2.0, 1.0, -1.0])


# --------------------------------------------------------------------------- min-max / min-sum


def _honest(ctx: AttackContext) -> np.ndarray:
    return ctx.neighbor_models.astype(np.float64) - ctx.prev_model.astype(np.float64)


def _dists(m: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.array([np.linalg.norm(m - ui) for ui in u])


def _pairwise(u: np.ndarray) -> np.ndarray:
    return np.array([[np.linalg.norm(a - b) for b in u] for a in u])


def _bisect_gamma(u: np.ndarray, p: np.ndarray, objective: str) -> float:
    """The paper's search, run to convergence, as an independent check of the closed form."""
    mu = u.mean(axis=0)
    pair = _pairwise(u)
    bound = pair.max() if objective == "max" else (pair**2).sum(axis=1).max()

    def ok(g: float) -> bool:
        d = _dists(mu + g * p, u)
        return bool((d.max() if objective == "max" else (d**2).sum()) <= bound)

    lo, hi = 0.0, 1.0
    while ok(hi):
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


@st.composite
def spread_contexts(draw: st.DrawFn) -> AttackContext:
    return make_ctx(
        seed=draw(st.integers(0, 2**31)),
        d=draw(st.integers(1, 10)),
        k=draw(st.integers(2, 8)),
        scale=draw(st.sampled_from([1e-2, 1.0, 10.0])),
    )


@FAST
@given(ctx=spread_contexts(), perturbation=st.sampled_from(["std", "unit", "sign"]))
def test_min_max_stays_within_max_honest_distance(ctx: AttackContext, perturbation: Any) -> None:
    u = _honest(ctx)
    m = _run(A.min_max(perturbation), ctx).astype(np.float64) - ctx.prev_model
    bound = _pairwise(u).max()
    assert _dists(m, u).max() <= bound * (1 + 1e-4) + 1e-6
    gamma = A.min_max_gamma(u, A.perturbation_vector(u, perturbation), "max")
    assert gamma > 0  # k >= 2 distinct updates: there is room to move away from the mean
    assert gamma == pytest.approx(_bisect_gamma(u, A.perturbation_vector(u, perturbation), "max"))
    # and gamma is maximal: the malicious update reaches the bound
    assert _dists(m, u).max() == pytest.approx(bound, rel=1e-3)


@FAST
@given(ctx=spread_contexts(), perturbation=st.sampled_from(["std", "unit", "sign"]))
def test_min_sum_stays_within_max_honest_sum(ctx: AttackContext, perturbation: Any) -> None:
    u = _honest(ctx)
    m = _run(A.min_sum(perturbation), ctx).astype(np.float64) - ctx.prev_model
    bound = (_pairwise(u) ** 2).sum(axis=1).max()
    total = (_dists(m, u) ** 2).sum()
    assert total <= bound * (1 + 1e-4) + 1e-6
    gamma = A.min_max_gamma(u, A.perturbation_vector(u, perturbation), "sum")
    assert gamma > 0
    assert gamma == pytest.approx(_bisect_gamma(u, A.perturbation_vector(u, perturbation), "sum"))
    assert total == pytest.approx(bound, rel=1e-3)


def test_min_max_hand_computed() -> None:
    # two updates 0 and 2 on one coordinate: mean 1, std 1 -> p = -1; max distance bound 2;
    # |1 - g - 0| <= 2 and |1 - g - 2| <= 2 -> g <= 1; sum: (1-g)^2 + (1+g)^2 <= 4 -> g <= 1
    ctx = AttackContext(
        np.zeros(1, np.float32), np.zeros(1, np.float32), np.array([[0.0], [2.0]], np.float32)
    )
    np.testing.assert_allclose(_run(ATTACKS["min_max"], ctx), [0.0], atol=1e-7)
    np.testing.assert_allclose(_run(ATTACKS["min_sum"], ctx), [0.0], atol=1e-7)
    half = AttackContext(
        ctx.own_model, ctx.prev_model, ctx.neighbor_models, params={"gamma_scale": 0.5}
    )
    np.testing.assert_allclose(_run(ATTACKS["min_max"], half), [0.5], atol=1e-7)


def test_min_max_fallbacks() -> None:
    prev = np.array([1.0, 2.0], np.float32)
    own = np.array([3.0, 5.0], np.float32)
    alone = AttackContext(own, prev, np.zeros((0, 2)))
    one = AttackContext(own, prev, np.array([[0.0, 1.0]], np.float32))
    for name in ("min_max", "min_sum"):
        np.testing.assert_array_equal(_run(ATTACKS[name], alone), own)  # own update only
        np.testing.assert_array_equal(_run(ATTACKS[name], one), [0.0, 1.0])  # no spread
    with pytest.raises(UsageError):
        A.min_max("bogus")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- free rider


@FAST
@given(ctx=contexts(), source=st.sampled_from(["any", "stale", "neighbor"]))
def test_free_rider_returns_an_announced_model(ctx: AttackContext, source: Any) -> None:
    out = _run(A.free_rider(source), ctx)
    pool = []
    if source != "neighbor":
        pool += list(ctx.stale_models)
    if source != "stale":
        pool += list(ctx.neighbor_models)
    if not pool:
        np.testing.assert_array_equal(out, ctx.prev_model)
    else:
        assert any(np.array_equal(out, m) for m in pool)


def test_free_rider_picks_vary_with_round() -> None:
    picks = set()
    for r in range(40):
        ctx = make_ctx(seed=1, k=3, stale=2, round=r)
        out = _run(ATTACKS["free_rider"], ctx)
        pool = [*ctx.stale_models, *ctx.neighbor_models]
        picks.add(next(i for i, m in enumerate(pool) if np.array_equal(out, m)))
    assert picks == set(range(5))


# --------------------------------------------------------------------------- data attacks


def test_label_flip_default_and_mapping() -> None:
    x = np.zeros((6, 2, 2, 1), np.float32)
    y = np.array([0, 1, 2, 7, 9, 7], np.int32)
    poison = ATTACKS["label_flip"].poison_data
    assert poison is not None
    xp, yp = poison(x, y, np.random.default_rng(0), 10)
    np.testing.assert_array_equal(yp, [9, 8, 7, 2, 0, 2])
    assert xp is x
    poison = A.label_flip({7: 1, 1: 7}).poison_data
    assert poison is not None
    _, yp = poison(x, y, np.random.default_rng(0), 10)
    np.testing.assert_array_equal(yp, [0, 7, 2, 1, 9, 1])  # swap applied on the original labels
    np.testing.assert_array_equal(y, [0, 1, 2, 7, 9, 7])  # input untouched


@FAST
@given(y=st.lists(st.integers(0, 9), max_size=40))
def test_label_flip_changes_exactly_the_mapped_labels(y: list[int]) -> None:
    ya = np.array(y, np.int32)
    out = A.flip_labels(ya, 10, {3: 5})
    np.testing.assert_array_equal(out != ya, ya == 3)
    assert (out[ya == 3] == 5).all()
    np.testing.assert_array_equal(A.flip_labels(A.flip_labels(ya, 10), 10), ya)  # involution


@pytest.mark.parametrize(("side", "size"), [(8, 3), (28, 4), (32, 5)])
def test_trigger_size_and_placement(side: int, size: int) -> None:
    assert A.trigger_size(side, side) == size
    x = np.zeros((2, side, side, 1), np.float32)
    t = A.apply_trigger(x)
    assert (t[:, -size:, -size:, :] == 1.0).all()
    assert t.sum() == 2 * size * size  # nothing else touched
    assert (x == 0).all()
    flat = A.apply_trigger(x.reshape(2, -1))
    np.testing.assert_array_equal(flat, t.reshape(2, -1))
    no_channel = A.apply_trigger(x[..., 0], size=2, value=0.5)
    assert (no_channel[:, -2:, -2:] == 0.5).all() and no_channel.sum() == 2 * 4 * 0.5
    with pytest.raises(UsageError):
        A.apply_trigger(np.zeros((2, 7)))
    with pytest.raises(UsageError):
        A.apply_trigger(x, size=side + 1)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_backdoor_poisons_the_right_fraction(fraction: float) -> None:
    gen = np.random.default_rng(3)
    x = gen.random((40, 8, 8, 1), dtype=np.float32) * 0.5
    y = gen.integers(0, 10, 40).astype(np.int32)
    poison = A.backdoor(target=7, fraction=fraction).poison_data
    assert poison is not None
    xp, yp = poison(x, y, np.random.default_rng(0), 10)
    triggered = (xp[:, -3:, -3:, :] == 1.0).all(axis=(1, 2, 3))
    assert triggered.sum() == round(fraction * 40)
    assert (yp[triggered] == 7).all()
    np.testing.assert_array_equal(yp[~triggered], y[~triggered])
    np.testing.assert_array_equal(xp[~triggered], x[~triggered])
    np.testing.assert_array_equal(xp[triggered], A.apply_trigger(x[triggered]))


def test_backdoor_validates() -> None:
    with pytest.raises(UsageError):
        A.backdoor(fraction=1.5)
    poison = A.backdoor(target=12).poison_data
    assert poison is not None
    with pytest.raises(UsageError, match="target"):
        poison(np.zeros((2, 8, 8, 1)), np.zeros(2, np.int32), np.random.default_rng(0), 10)


def test_backdoor_asr_hand_data() -> None:
    # 6 test images, labels [0, 1, 2, 3, 0, 5], target 0 -> 4 images count (labels != 0).
    x = np.zeros((6, 8, 8, 1), np.float32)
    x[:, 0, 0, 0] = np.arange(6)  # sample id in the top-left pixel, away from the trigger
    y = np.array([0, 1, 2, 3, 0, 5], np.int32)

    def predict(xb: np.ndarray) -> np.ndarray:
        # a backdoored "model": predicts the target for triggered ids 1 and 3 only
        assert (xb[:, -3:, -3:, :] == 1.0).all()  # it only ever sees triggered inputs
        ids = xb[:, 0, 0, 0].astype(int)
        return np.where(np.isin(ids, [1, 3]), 0, 9)

    assert A.backdoor_asr(predict, x, y, target=0) == pytest.approx(2 / 4)

    def scores(xb: np.ndarray) -> np.ndarray:  # (N, C) outputs are argmaxed
        out = np.zeros((len(xb), 10))
        out[:, 0] = 1.0
        return out

    assert A.backdoor_asr(scores, x, y, target=0) == 1.0
    assert A.backdoor_asr(scores, x[y == 0], y[y == 0], target=0) == 0.0


# --------------------------------------------------------------------------- on a real dataset


def test_data_attacks_on_digits_keep_dataset_invariants() -> None:
    data = pytest.importorskip("dfl.learning.data")
    ds = data.load_dataset("digits")
    x, y = ds.x_train[:300], ds.y_train[:300]
    for name in DATA_ATTACKS:
        poison = ATTACKS[name].poison_data
        assert poison is not None
        xp, yp = poison(x, y, np.random.default_rng(0), ds.num_classes)
        assert xp.shape == x.shape and xp.dtype == np.float32 and yp.dtype == np.int32
        assert ((xp >= 0) & (xp <= 1)).all() and ((yp >= 0) & (yp < ds.num_classes)).all()
    # no clean digit carries the trigger (an all-bright bottom-right 3x3 corner)
    assert not (x[:, -3:, -3:, :] == 1.0).all(axis=(1, 2, 3)).any()
    assert (A.apply_trigger(x)[:, -3:, -3:, :] == 1.0).all()


def test_backdoor_end_to_end_on_digits() -> None:
    """A logistic regression trained on backdoored digits learns the trigger, keeps the task."""
    data = pytest.importorskip("dfl.learning.data")
    models = pytest.importorskip("dfl.learning.models")
    ds = data.load_dataset("digits")
    model = models.get_model("logreg", ds.input_shape, ds.num_classes)
    poison = A.backdoor(target=0, fraction=0.2).poison_data
    assert poison is not None
    xp, yp = poison(ds.x_train, ds.y_train, np.random.default_rng(0), ds.num_classes)
    kw: dict[str, Any] = {"epochs": 10, "batch_size": 32, "lr": 0.1, "seed": 0}
    bad = model.train_local(model.init(0), xp, yp, **kw)
    clean = model.train_local(model.init(0), ds.x_train, ds.y_train, **kw)
    accuracy, _ = model.evaluate(bad, ds.x_test, ds.y_test)
    assert accuracy > 0.85
    assert A.backdoor_asr(lambda x: model.predict(bad, x), ds.x_test, ds.y_test, 0) > 0.9
    assert A.backdoor_asr(lambda x: model.predict(clean, x), ds.x_test, ds.y_test, 0) < 0.2
