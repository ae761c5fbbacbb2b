"""The daemon's bookkeeping without the network: restore from the store, blob pruning, status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dfl.block import make_block
from dfl.config import Config, task_manifest
from dfl.crypto import Identity, blake2b256
from dfl.node import core as C
from dfl.node.daemon import Daemon, DaemonOptions
from dfl.node.home import Home

CFG = Config().with_overrides(
    task={"dataset": "digits", "model": "logreg", "num_nodes": 2},
    node={"metrics_port": -1},
    limits={"prune_blobs_after_rounds": 2},
)


def _daemon(tmp_path: Path) -> Daemon:
    home = Home(tmp_path / "home")
    home.init(CFG)
    return Daemon(home, home.config(), DaemonOptions(rounds=1))


def test_peer_blobs_are_pruned_own_blobs_and_headers_kept(tmp_path: Path) -> None:
    d = _daemon(tmp_path)
    net = task_manifest(CFG).network_id()
    n = d.core.params.num_params
    peer = Identity.from_seed(blake2b256(b"peer"))
    prev = b"\0" * 32
    peer_blocks = []
    for r in range(6):
        blob = np.full(n, r, np.float32).tobytes()
        b = make_block(
            peer, network=net, height=r, prev=prev, round=r, timestamp_ms=r, model=blob, samples=3
        )
        prev = b.hash
        d._commit(C.Commit(b, blob))
        peer_blocks.append(b)
    own_blob = np.full(n, 0.5, np.float32).tobytes()
    own = make_block(
        d.identity,
        network=net,
        height=0,
        prev=b"\0" * 32,
        round=0,
        timestamp_ms=0,
        model=own_blob,
        samples=3,
    )
    d._commit(C.Commit(own, own_blob, own=True))
    d._metric(C.Metric(5, {"accepted": 1.0, "rejected": 0.0}))
    kept = [d.store.has_blob(b.model_digest) for b in peer_blocks]
    assert kept == [False, False, False, True, True, True]  # rounds < 5 - 2 pruned
    assert all(d.store.get(b.hash) is not None for b in peer_blocks)  # headers stay
    assert d.store.get_blob(own.model_digest) == own_blob
    d.close()


def test_restart_restores_round_model_and_standing(tmp_path: Path) -> None:
    d = _daemon(tmp_path)
    net = d.network
    n = d.core.params.num_params
    peer = Identity.from_seed(blake2b256(b"peer"))
    pb = make_block(
        peer,
        network=net,
        height=0,
        prev=b"\0" * 32,
        round=0,
        timestamp_ms=1,
        model=np.zeros(n, np.float32),
        samples=3,
    )
    d._commit(C.Commit(pb, None))
    from dfl.block import Verdict

    model = np.arange(n, dtype=np.float32) / n
    b0 = make_block(
        d.identity,
        network=net,
        height=0,
        prev=b"\0" * 32,
        round=0,
        timestamp_ms=2,
        model=model,
        samples=3,
    )
    b1 = make_block(
        d.identity,
        network=net,
        height=1,
        prev=b0.hash,
        round=1,
        timestamp_ms=3,
        model=model,
        samples=3,
        verdicts=[Verdict(pb.hash, False, 0.0, "too-far")],
    )
    d._commit(C.Commit(b0, model.tobytes(), own=True))
    d._commit(C.Commit(b1, model.tobytes(), own=True))
    d._write_status()
    st = json.loads((d.home.path / "status.json").read_text())
    assert st["peer_id"] == d.identity.peer_id and st["height"] == 1
    d.close()
    again = Daemon(d.home, d.home.config(), DaemonOptions(rounds=1))
    assert again.core.round == 2 and again.core.height == 1
    assert np.array_equal(again.core.model, model)
    assert again.core.standing(peer.public_key) < 1.0  # rebuilt from the signed verdict
    again.close()


def test_evaluating_an_overflowing_model_scores_worst_not_error(tmp_path: Path) -> None:
    d = _daemon(tmp_path)
    huge = np.full(d.core.params.num_params, 3e38, np.float32)
    acc, loss = d.learner.evaluate_val(huge)
    assert np.isfinite(acc) and np.isfinite(loss) and loss >= 1.0
    d.close()


def test_rule_evaluation_uses_a_capped_subset_and_every_rule_warms_up(tmp_path: Path) -> None:
    from dfl.learning.data import load_dataset
    from dfl.learning.models import get_model
    from dfl.learning.robust import RULES
    from dfl.node.compute import Learner, TrainSettings

    data = load_dataset("digits")
    model = get_model("logreg", data.input_shape, data.num_classes)
    x, y = data.x_train[:1000], data.y_train[:1000]
    learner = Learner(model, x, y, num_classes=10, settings=TrainSettings(), rule_eval_samples=40)
    assert len(learner.x_val) == 100 and learner.rule_eval_count == 40
    params = model.init(0)
    sub = model.evaluate(params, learner.x_val[:40], learner.y_val[:40])
    acc, loss = learner.evaluate_for_rule(params)  # numpy for dense models: float32 rounding
    assert acc == float(sub[0]) and loss == pytest.approx(float(sub[1]), rel=1e-5)
    assert learner.evaluate_val(params) != learner.evaluate_for_rule(params)
    # a rule that needs evaluation, ids or kernels must accept the warm-up context
    for rule in (*RULES, "default"):
        learner.warm_up(rule, params)


def _digits_learner(rule_eval_samples: int, n: int = 1000) -> tuple[Any, Any, Any]:
    from dfl.learning.data import load_dataset
    from dfl.learning.models import get_model
    from dfl.node.compute import Learner, TrainSettings

    data = load_dataset("digits")
    model = get_model("logreg", data.input_shape, data.num_classes)
    x, y = data.x_train[:n], data.y_train[:n]
    learner = Learner(
        model, x, y, num_classes=10, settings=TrainSettings(), rule_eval_samples=rule_eval_samples
    )
    return data, model, learner


def test_evaluate_many_for_rule_matches_evaluate_for_rule_and_scores_broken_models_worst() -> None:
    data, model, capped = _digits_learner(40)  # 100 validation samples, rules score on 40
    _, _, whole = _digits_learner(256)  # rules score on all 100
    _, _, single = _digits_learner(256, n=1)  # no validation data: scores on the 1 training one
    assert (capped.rule_eval_count, whole.rule_eval_count, single.rule_eval_count) == (40, 100, 1)
    trained = model.train_local(
        model.init(0), data.x_train, data.y_train, epochs=1, batch_size=32, lr=0.05, seed=0
    )
    p = model.init(1)
    rows = [
        trained,
        p,
        np.full_like(p, np.nan),
        np.full_like(p, np.inf),
        np.full_like(p, -np.inf),
        np.full_like(p, 3e38),  # finite, but its logits overflow
    ]
    for learner in (capped, whole, single):
        many = learner.evaluate_many_for_rule(np.stack(rows))
        one = [learner.evaluate_for_rule(r) for r in rows]
        assert len(many) == len(rows)
        assert [a for a, _ in many] == [a for a, _ in one]
        assert [lo for _, lo in many] == pytest.approx([lo for _, lo in one], rel=1e-5)
        assert many[2:] == [(0.0, 1e30)] * 4  # NaN, +inf, -inf, overflow: the worst, no error
        assert all(np.isfinite(a) and np.isfinite(lo) for a, lo in many)
    assert capped.evaluate_many_for_rule(np.stack(rows[:2]))[0][0] > 0.5  # trained: not chance


def test_learner_rules_score_all_models_in_batched_calls_with_the_same_verdicts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataclasses import replace

    from dfl.learning.robust import RULES, RuleContext
    from dfl.node.core import Aggregate

    data, model, learner = _digits_learner(256)
    x, y = data.x_train, data.y_train
    kw: dict[str, Any] = {"epochs": 1, "batch_size": 32, "lr": 0.05}
    own = model.train_local(model.init(0), x, y, seed=0, **kw)
    honest = [model.train_local(own, x[i::3], y[i::3], seed=i, **kw) for i in range(3)]
    flipped = model.train_local(model.init(5), x, 9 - y, seed=5, **kw)  # label flipping
    cands = np.stack([*honest, flipped, own * 2.0])
    ids = tuple(bytes([i]) * 32 for i in range(len(cands)))
    weights = np.ones(len(cands))
    for name in (
        "accuracy_guard",
        "guarded_balance_trimmed",
        "guarded_balance_median",
        "dfl",
        "ubar",
    ):
        base = RuleContext(
            num_byzantine=1,
            evaluate=learner.evaluate_for_rule,
            eval_samples=learner.rule_eval_count,
            candidate_ids=ids,
        )
        batched = replace(base, evaluate_many=learner.evaluate_many_for_rule)
        a = RULES[name](own, cands, weights, base)
        b = RULES[name](own, cands, weights, batched)
        assert [v.accepted for v in b.verdicts] == [v.accepted for v in a.verdicts], name
        assert [v.reason for v in b.verdicts] == [v.reason for v in a.verdicts], name
        assert [v.score for v in b.verdicts] == pytest.approx([v.score for v in a.verdicts]), name
        np.testing.assert_allclose(b.model, a.model, rtol=1e-6, atol=1e-7)
        if name == "accuracy_guard":
            assert not a.verdicts[3].accepted and a.verdicts[3].reason == "low-accuracy"
    # Learner.aggregate (and warm_up) hand the rules evaluate_many: per aggregation one call
    # for own and one for the candidates
    calls: list[tuple[str, int]] = []
    one, many = learner.evaluate_for_rule, learner.evaluate_many_for_rule

    def count_one(m: np.ndarray) -> tuple[float, float]:
        calls.append(("one", 1))
        return one(m)

    def count_many(stack: np.ndarray) -> list[tuple[float, float]]:
        calls.append(("many", len(stack)))
        return many(stack)

    monkeypatch.setattr(learner, "evaluate_for_rule", count_one)
    monkeypatch.setattr(learner, "evaluate_many_for_rule", count_many)
    job = Aggregate(
        round=1,
        rule="default",
        own=own,
        own_samples=100,
        candidates=tuple(cands),
        weights=(100,) * len(cands),
        authors=ids,
        num_byzantine=1,
        seed=0,
        state={},
    )
    done = learner.aggregate(job)
    assert calls == [("many", 1), ("many", len(cands))]
    assert done.accepted[3] is False and done.reasons[3] == "low-accuracy"
    calls.clear()
    learner.warm_up("default", own)
    assert calls == [("many", 1), ("many", 2)]


def test_training_that_blows_up_keeps_the_start_model_and_says_so() -> None:
    """A start model so far off that local training overflows to NaN (a malicious fedavg node
    that averaged in noise models did, on LeNet) must not stop the node: it keeps the start
    model for the round and flags ``diverged`` in its metrics; a normal round does not."""
    from dfl.node.compute import Learner, TrainSettings
    from dfl.node.core import Train

    data, model, _ = _digits_learner(40)
    x, y = data.x_train[:300], data.y_train[:300]
    learner = Learner(model, x, y, num_classes=10, settings=TrainSettings(lr=3e38))
    start = (model.init(0) * 1e36).astype(np.float32)
    assert np.isfinite(start).all()
    done = learner.train(Train(round=0, model=start, seed=0))
    np.testing.assert_array_equal(done.model, start)
    assert done.metrics["diverged"] == 1.0 and np.isfinite(done.metrics["val_loss"])
    calm = Learner(model, x, y, num_classes=10, settings=TrainSettings())
    ok = calm.train(Train(round=0, model=model.init(0), seed=0))
    assert "diverged" not in ok.metrics and not np.array_equal(ok.model, model.init(0))
