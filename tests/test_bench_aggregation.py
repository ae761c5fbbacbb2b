"""The aggregation benchmark's synthetic case gives every layer of the default's stack work."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.aggregation import _case, _context, run
from dfl.learning.robust import RULES
from dfl.node.compute import DEFAULT_RULE


@pytest.mark.parametrize("n", [10, 50])
def test_case_exercises_guard_and_direction_rank(n: int) -> None:
    own, cands, weights, f, start = _case(n, 20_000)
    res = RULES[DEFAULT_RULE](own, cands, weights, _context(n, f, start))
    far = f - f // 2
    assert Counter(v.reason for v in res.verdicts) == {
        "ok": n - f,
        "low-accuracy": far,  # the far outliers, caught by the accuracy guard
        "rank:backwards": f - far,  # the sign flippers, left to the direction rank
    }
    assert [i for i, v in enumerate(res.verdicts) if not v.accepted] == list(range(n - f, n))


def test_run_times_every_rule_asked() -> None:
    res = run([10], [5_000], ["fedavg", DEFAULT_RULE], repeats=1)
    assert set(res) == {("fedavg", 10, 5_000), (DEFAULT_RULE, 10, 5_000)}
    assert all(wall > 0 and cpu >= 0 for wall, cpu in res.values())
