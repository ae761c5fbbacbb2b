"""Tests for dfl.learning.models: shapes, learning, no retracing, threads and processes."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from dfl.errors import UsageError
from dfl.learning.data import load_dataset
from dfl.learning.models import MODELS, Model, get_model


@pytest.mark.parametrize(
    ("name", "expected"), [("logreg", 7850), ("mlp", 159010), ("lenet", 61706)]
)
def test_param_counts_on_mnist_shape(name: str, expected: int) -> None:
    model = get_model(name, (28, 28, 1), 10)
    assert model.num_params == expected
    assert sum(sl.size for sl in model.layout) == expected
    p = model.init(0)
    assert p.dtype == np.float32 and p.shape == (expected,)
    assert np.array_equal(p, model.init(0)) and not np.array_equal(p, model.init(1))


def test_get_model_is_cached_and_pickles_by_name() -> None:
    a = get_model("mlp", (8, 8), 10)
    assert a is get_model("mlp", (8, 8, 1), 10)
    assert pickle.loads(pickle.dumps(a)) is a
    with pytest.raises(UsageError):
        get_model("resnet", (8, 8, 1), 10)
    with pytest.raises(UsageError):
        get_model("mlp", (8, 8, 1), 1)


@pytest.mark.parametrize("name", MODELS)
def test_models_run_on_odd_small_inputs(name: str) -> None:
    shape = (5, 7, 1)  # odd sizes: lenet pools in floor mode and falls back to a 'SAME' conv2
    model = get_model(name, shape, 3)
    x = np.random.default_rng(0).random((7, *shape), dtype=np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    p = model.train_local(model.init(0), x, y, epochs=1, batch_size=4, lr=0.1, seed=0)
    acc, loss = model.evaluate(p, x, y)
    assert 0.0 <= acc <= 1.0 and np.isfinite(loss)
    assert model.predict(p, x).shape == (7,)


@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_learns_digits(name: str) -> None:
    ds = load_dataset("digits")
    model = get_model(name, ds.input_shape, ds.num_classes)
    p = model.train_local(
        model.init(0), ds.x_train, ds.y_train, epochs=4, batch_size=32, lr=0.02, momentum=0.9,
        seed=0,
    )  # fmt: skip
    acc, loss = model.evaluate(p, ds.x_test, ds.y_test)
    assert acc >= 0.88, (name, acc, loss)  # chance is 0.10; measured 0.93 (lenet), 0.95 (mlp)


def test_logreg_learns_synthetic() -> None:
    ds = load_dataset("synthetic", num_train=600, num_test=300, num_classes=5)
    model = get_model("logreg", ds.input_shape, ds.num_classes)
    p0 = model.init(0)
    p = model.train_local(p0, ds.x_train, ds.y_train, epochs=3, batch_size=16, lr=0.2, seed=0)
    acc, loss = model.evaluate(p, ds.x_test, ds.y_test)
    assert acc >= 0.95 and loss < model.evaluate(p0, ds.x_test, ds.y_test)[1]


def test_no_retrace_across_shard_sizes_lr_and_momentum() -> None:
    model = get_model("mlp", (6, 5, 1), 4)  # a shape no other test uses: fresh trace counters
    rng = np.random.default_rng(0)
    p = model.init(0)
    for n, lr, mom in [(5, 0.1, 0.0), (33, 0.05, 0.9), (100, 0.2, 0.5), (64, 1, 0)]:
        x = rng.random((n, 6, 5, 1), dtype=np.float32)
        y = rng.integers(0, 4, n)
        p = model.train_local(p, x, y, epochs=2, batch_size=32, lr=lr, momentum=mom, seed=n)
        model.evaluate(p, x, y, batch_size=64)
    assert model.traces["step"] == 1
    assert model.traces["eval"] <= 3  # pads to 32 / 64: one shape per power of two
    model.train_local(p, x, y, epochs=1, batch_size=16, lr=0.1, seed=0)
    assert model.traces["step"] == 2  # a new batch size compiles once more


def test_deterministic_and_input_untouched() -> None:
    ds = load_dataset("synthetic", num_train=100, num_test=10)
    model = get_model("mlp", ds.input_shape, ds.num_classes)
    p0 = model.init(3)
    keep = p0.copy()
    kw = {"epochs": 2, "batch_size": 16, "lr": 0.1, "seed": 7}
    a = model.train_local(p0, ds.x_train, ds.y_train, **kw)
    b = model.train_local(p0, ds.x_train, ds.y_train, **kw)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(p0, keep)
    assert a.flags.writeable
    c = model.train_local(p0, ds.x_train, ds.y_train, **{**kw, "seed": 8})
    assert not np.array_equal(a, c)


def test_full_batch_step_equals_grad_helper() -> None:
    ds = load_dataset("synthetic", num_train=40, num_test=10)
    model = get_model("logreg", ds.input_shape, ds.num_classes)
    p0 = model.init(0)
    g = model.grad(p0, ds.x_train, ds.y_train, batch_size=16)  # 3 padded batches, summed
    step = model.train_local(p0, ds.x_train, ds.y_train, epochs=1, batch_size=40, lr=0.5, seed=0)
    np.testing.assert_allclose(step, p0 - 0.5 * g, atol=1e-5)
    assert model.loss(p0, ds.x_train, ds.y_train) > 0


def test_bad_arguments() -> None:
    model = get_model("logreg", (8, 8, 1), 10)
    p = model.init(0)
    x = np.zeros((4, 8, 8, 1), np.float32)
    y = np.zeros(4, np.int32)
    with pytest.raises(UsageError):
        model.train_local(p[:-1], x, y, epochs=1, batch_size=2, lr=0.1, seed=0)
    with pytest.raises(UsageError):
        model.train_local(p, x[:, :4], y, epochs=1, batch_size=2, lr=0.1, seed=0)
    with pytest.raises(UsageError):
        model.train_local(p, x, y + 10, epochs=1, batch_size=2, lr=0.1, seed=0)
    with pytest.raises(UsageError):
        model.train_local(p, x, y, epochs=1, batch_size=0, lr=0.1, seed=0)
    with pytest.raises(UsageError):
        model.train_local(p, x, y, epochs=1, batch_size=2, lr=0.1, seed=0, momentum=1.0)
    np.testing.assert_array_equal(
        model.train_local(p, x[:0], y[:0], epochs=1, batch_size=2, lr=0.1, seed=0), p
    )
    assert model.evaluate(p, x[:0], y[:0]) == (0.0, 0.0)


def _digits_models(name: str, k: int) -> tuple[Model, np.ndarray]:
    """A stack of ``k`` distinct ``name`` models on ``digits``, some trained, some not."""
    ds = load_dataset("digits")
    model = get_model(name, ds.input_shape, ds.num_classes)
    rows = []
    for i in range(k):
        p = model.init(i)
        if i % 2:  # trained a little: accuracies well away from chance and from each other
            n = 40 * (i + 1)
            p = model.train_local(
                p, ds.x_train[:n], ds.y_train[:n], epochs=1, batch_size=16, lr=0.05, seed=i
            )
        rows.append(p)
    return model, np.stack(rows)


@pytest.mark.parametrize("name", ["logreg", "mlp"])
@pytest.mark.parametrize("k", [1, 3, 5, 9])
@pytest.mark.parametrize(("n", "batch_size"), [(300, 1000), (300, 128), (7, 1000)])
def test_evaluate_many_equals_a_loop_of_evaluate(
    name: str, k: int, n: int, batch_size: int
) -> None:
    ds = load_dataset("digits")
    model, stack = _digits_models(name, k)
    x, y = ds.x_test[:n], ds.y_test[:n]
    acc, loss = model.evaluate_many(stack, x, y, batch_size=batch_size)
    assert acc.dtype == np.float64 and loss.dtype == np.float64
    assert acc.shape == (k,) and loss.shape == (k,)
    expected = np.array([model.evaluate(p, x, y, batch_size=batch_size) for p in stack])
    np.testing.assert_array_equal(acc, expected[:, 0])
    np.testing.assert_allclose(loss, expected[:, 1], rtol=1e-5)
    if k > 1:
        assert len(set(loss.tolist())) == k  # really k different models


def test_evaluate_many_compiles_nothing_new_and_checks_its_input() -> None:
    model = get_model("logreg", (3, 4, 1), 3)  # a shape no other test uses: fresh trace counters
    rng = np.random.default_rng(0)
    x = rng.random((50, 3, 4, 1), dtype=np.float32)
    y = rng.integers(0, 3, 50)
    stack = np.stack([model.init(s) for s in range(6)])
    model.evaluate(stack[0], x, y)
    traced = model.traces["eval"]
    for k in range(1, 7):  # any number of models reuses the compiled per-batch function
        model.evaluate_many(stack[:k], x, y)
    assert model.traces["eval"] == traced
    # a non-finite row spoils its own results only
    bad = stack.copy()
    bad[2, 0] = np.nan
    acc, loss = model.evaluate_many(bad, x, y)
    good_acc, good_loss = model.evaluate_many(stack, x, y)
    assert not np.isfinite(loss[2])
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_array_equal(acc[keep], good_acc[keep])
    np.testing.assert_array_equal(loss[keep], good_loss[keep])
    # empty inputs
    acc, loss = model.evaluate_many(stack[:0], x, y)
    assert acc.shape == (0,) and loss.shape == (0,)
    acc, loss = model.evaluate_many(stack[:2], x[:0], y[:0])
    np.testing.assert_array_equal(acc, [0.0, 0.0])
    np.testing.assert_array_equal(loss, [0.0, 0.0])
    # shapes
    with pytest.raises(UsageError, match=r"\(k, 39\) stack"):
        model.evaluate_many(stack[0], x, y)  # one flat vector, not a stack
    with pytest.raises(UsageError, match=r"\(k, 39\) stack"):
        model.evaluate_many(stack[:, :-1], x, y)
    with pytest.raises(UsageError, match=r"\(k, 39\) stack"):
        model.evaluate_many(stack[None], x, y)
    with pytest.raises(UsageError, match="labels"):
        model.evaluate_many(stack, x, y + 3)
    with pytest.raises(UsageError, match="batch_size"):
        model.evaluate_many(stack, x, y, batch_size=0)


def _train_in_worker(model: Model, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return model.train_local(params, x, y, epochs=1, batch_size=8, lr=0.1, seed=1)


def test_threads_and_spawned_process_agree() -> None:
    ds = load_dataset("synthetic", num_train=64, num_test=8)
    model = get_model("mlp", ds.input_shape, ds.num_classes)
    p0 = model.init(0)
    expected = _train_in_worker(model, p0, ds.x_train, ds.y_train)
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(_train_in_worker, model, p0, ds.x_train, ds.y_train) for _ in range(3)
        ]
        for fut in futures:
            np.testing.assert_array_equal(fut.result(), expected)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        out = pool.submit(_train_in_worker, model, p0, ds.x_train, ds.y_train).result(timeout=120)
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.slow
def test_centralized_mnist_accuracy() -> None:
    ds = load_dataset("mnist")
    lenet = get_model("lenet", ds.input_shape, ds.num_classes)
    p = lenet.train_local(
        lenet.init(0), ds.x_train, ds.y_train, epochs=1, batch_size=16, lr=0.01, momentum=0.9,
        seed=0,
    )  # fmt: skip
    acc, _ = lenet.evaluate(p, ds.x_test, ds.y_test)
    assert acc >= 0.97, acc  # measured 0.984 (batch 32, lr 0.02: 0.975-0.981)
    mlp = get_model("mlp", ds.input_shape, ds.num_classes)
    p = mlp.train_local(mlp.init(0), ds.x_train, ds.y_train, epochs=1, batch_size=32, lr=0.1,
                        seed=0)  # fmt: skip
    acc, _ = mlp.evaluate(p, ds.x_test, ds.y_test)
    assert acc >= 0.93, acc  # measured 0.953


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_dense_chunked_steps_match_step_by_step(name: str) -> None:
    """Dense models run an epoch in jitted chunks (one of 256 steps and one padded to 64 here);
    the result is bit-identical to calling the jitted step once per batch."""
    model = get_model(name, (5, 6, 1), 4)
    rng = np.random.default_rng(1)
    n, bs, lr, mom, seed = 1205, 4, 0.05, 0.5, 11  # 302 steps, the last one 1 sample short
    x = rng.random((n, 5, 6, 1), dtype=np.float32)
    y = rng.integers(0, 4, n)
    p0 = model.init(2)
    got = model.train_local(p0, x, y, epochs=2, batch_size=bs, lr=lr, momentum=mom, seed=seed)

    steps = -(-n // bs)
    mask = np.zeros(steps * bs, dtype=np.float32)
    mask[:n] = 1.0
    w, v = jnp.asarray(p0), jnp.zeros(model.num_params, dtype=jnp.float32)
    order_rng = np.random.default_rng(seed)
    for _ in range(2):
        order = np.concatenate([order_rng.permutation(n), np.zeros(steps * bs - n, np.int64)])
        for s in range(steps):
            idx = order[s * bs : (s + 1) * bs]
            w, v = model._step(
                w, v, x[idx], y[idx], mask[s * bs : (s + 1) * bs], np.float32(lr), np.float32(mom)
            )
    np.testing.assert_array_equal(got, np.asarray(w))
    assert not np.array_equal(got, p0)


@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_compile_training_covers_the_shards(name: str) -> None:
    model = get_model(name, (8, 7, 1), 3)  # a shape no other test uses: fresh trace counters
    sizes = [40, 300, 2100]  # batch 8: 5, 38, 263 (= 256 + 7) steps: mlp capacities 8, 64, 256
    assert model.compile_training(sizes, 8) == (1 if name == "lenet" else 3)
    assert model.compile_training(sizes, 8) == 0
    before = model.traces
    rng = np.random.default_rng(0)
    p = model.init(0)
    for n in sizes:
        x = rng.random((n, 8, 7, 1), dtype=np.float32)
        p = model.train_local(p, x, rng.integers(0, 3, n), epochs=1, batch_size=8, lr=0.1, seed=n)
    assert model.traces == before
    with pytest.raises(UsageError, match="batch_size"):
        model.compile_training(sizes, 0)


_CACHE_PROBE = """
import hashlib, sys
import numpy as np
from dfl.learning.models import enable_compilation_cache, get_model
m = get_model(sys.argv[1], (8, 8, 1), 3)
rng = np.random.default_rng(0)
x = rng.normal(size=(70, 8, 8, 1)).astype(np.float32)
y = rng.integers(0, 3, size=70)
w = m.train_local(m.init(0), x, y, epochs=2, batch_size=16, lr=0.1, seed=1, momentum=0.5)
acc, loss = m.evaluate(w, x, y)
print(enable_compilation_cache(), hashlib.sha256(w.tobytes()).hexdigest(), acc, loss)
"""


@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_compilation_cache_loads_the_same_executables(name: str, tmp_path: Path) -> None:
    """A process that loads its compiled functions from the on-disk cache trains and evaluates
    to the same bits as one that compiles them (and as one with the cache off); the second
    cached process adds no entry, so it did load them."""
    cache = tmp_path / "jit"

    def run(setting: str) -> list[str]:
        env = {**os.environ, "DFL_JIT_CACHE": setting}
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        out = subprocess.run(
            [sys.executable, "-c", _CACHE_PROBE, name],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return out.stdout.split()

    off = run("off")
    assert off[0] == "None"
    first = run(str(cache))
    entries = sorted(p.name for p in cache.iterdir())
    assert first[0] == str(cache) and any(not e.endswith("-atime") for e in entries)
    second = run(str(cache))
    assert sorted(p.name for p in cache.iterdir()) == entries  # hits only: nothing new
    assert off[1:] == first[1:] == second[1:]
