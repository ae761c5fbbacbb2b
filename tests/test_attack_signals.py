"""benchmarks.attack_signals: the pair AUC, its per-aggregation summary, and the observer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks import attack_signals as S
from dfl.learning.robust import RULES
from dfl.node.compute import DEFAULT_RULE

values = st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=8)


def test_pair_auc_values() -> None:
    assert S.pair_auc([3.0, 2.0], [1.0]) == 1.0
    assert S.pair_auc([0.0], [1.0, 2.0]) == 0.0
    assert S.pair_auc([1.0], [1.0]) == 0.5
    assert S.pair_auc([1.0, 3.0], [2.0]) == 0.5
    assert S.pair_auc([1.0, 3.0, 3.0], [2.0, 3.0]) == pytest.approx((0 + 1 + 1 + 0.5 + 0.5) / 6)
    with pytest.raises(ValueError, match="at least one"):
        S.pair_auc([], [1.0])


@given(values, values)
def test_pair_auc_is_antisymmetric(h: list[float], m: list[float]) -> None:
    assert S.pair_auc(h, m) + S.pair_auc(m, h) == pytest.approx(1.0)


def _obs(agg: int, bad: bool, **v: float) -> S.Observation:
    full = {"distance": 0.0, "direction": 0.0, "accuracy": 1.0, "loss": 1.0} | v
    return S.Observation(1, agg, bad, full)


def test_summary_orients_each_signal_and_skips_one_sided_aggregations() -> None:
    rows = [
        # aggregation 0: the attacker is farther and points backwards -> both separate it
        _obs(0, False, distance=0.1, direction=0.5, loss=2.0),
        _obs(0, False, distance=0.2, direction=0.3, loss=3.0),
        _obs(0, True, distance=0.3, direction=-0.4, loss=1.0),
        # aggregation 1: the attacker is closer and better on the loss
        _obs(1, False, distance=0.3, direction=0.1, loss=2.0),
        _obs(1, True, distance=0.1, direction=0.2, loss=1.0),
        # aggregation 2: honest only, aggregation 3: attackers only -> not counted
        _obs(2, False, distance=9.0),
        _obs(3, True, distance=9.0),
    ]
    s = S.summarise(rows)
    assert s["aggregations"] == 2
    assert s["distance"] == pytest.approx((1.0 + 0.0) / 2)
    assert s["direction"] == pytest.approx((1.0 + 0.0) / 2)
    assert s["loss"] == 0.0  # smaller loss looks more honest: the attackers won both
    assert s["accuracy"] == 0.5  # all ties


def test_observer_records_both_kinds_and_changes_nothing() -> None:
    """On the small ``digits`` goal cell, 3 rounds: the observed run gives exactly the plain
    run's accuracy, records every candidate of every honest aggregation after round 0 with
    the right label, and leaves the rule registry as it found it."""
    from simulator.engine import Simulation

    before = set(RULES)
    row, obs = S.run_attack("sign_flip", "default", rounds=3, dataset="digits")
    assert set(RULES) == before
    plain = Simulation(S.goal_cell("sign_flip", "default", 3, "digits").scenario(workers=1)).run()
    try:
        assert row["honest_accuracy"] == plain.summary["honest_accuracy_mean"]
        malicious = plain.summary["malicious"]
    finally:
        plain.close()
    assert row["rule"] == DEFAULT_RULE and malicious == 6
    # 14 honest nodes x rounds 1 and 2, 8 candidates each (k-regular degree 8)
    assert obs.aggregations == 28 and len(obs.rows) == 28 * 8
    assert {o.receiver_round for o in obs.rows} == {1, 2}
    bad = [o.malicious for o in obs.rows]
    assert 0 < sum(bad) < len(bad)
    direction = np.array([o.values["direction"] for o in obs.rows])
    assert np.all(np.abs(direction) <= 1 + 1e-9)
    assert all(o.values["distance"] > 0 for o in obs.rows)
    for s in S.SIGNALS:
        assert 0.0 <= row[s] <= 1.0
    assert 0 < row["aggregations"] <= 28
