"""JAX models over flat float32 parameter vectors: ``logreg``, ``mlp`` and ``lenet``.

Invariants
----------
* A model's parameters are **one flat float32 vector** of length :attr:`Model.num_params`. The
  layout is fixed and documented (it is what crosses the network as a model blob): layers in
  forward order, for each layer the weight then the bias, each raveled in C order. Dense weights
  are ``(in, out)``; conv kernels are ``HWIO``. :attr:`Model.layout` lists the slices.
* Every public method takes and returns **numpy** arrays; JAX arrays never leak out, so callers
  can hash, serialise and average the results directly. Returned vectors are fresh, writable
  copies.
* One jitted training step per model, compiled once per batch size and reused for any shard
  size: a shard is cut into fixed-size batches and the last, short batch is padded and masked
  (padded rows have zero weight in the loss), so no sample is dropped and nothing retraces.
  Dense models (``logreg``, ``mlp``) run up to :data:`_EPOCH_CHUNK` steps per call in one jitted
  ``fori_loop`` over the same step function (bit-identical to calling it step by step, tested;
  one compile per power-of-two chunk capacity, at most 6 per batch size); per-step dispatch
  was 9 % (one core) to 21 % (two cores) of an MLP epoch here. LeNet keeps one call per step:
  in a ``lax.scan`` loop XLA compiled its convolutions differently (not bit-identical) and the
  epoch ran 2x slower.
  ``lr`` and ``momentum`` are traced scalars, so changing them does not retrace either.
  Evaluation pads to ``min(batch_size, next power of two >= n, floor 32)``, so at most a few
  eval shapes per model are ever compiled (:meth:`Model.evaluate_many` reuses them).
  :attr:`Model.traces` counts traces per function.
* Pure and deterministic: ``init(seed)`` uses numpy's PCG64; ``train_local`` shuffles with
  ``numpy.random.default_rng(seed)`` and has no other randomness. Same inputs -> same output on
  one machine.

Threads and processes
---------------------
All methods are safe to call from several threads at once (jitted functions are thread-safe and
the model cache is guarded by a lock). The only module state is that lazy per-process cache of
:class:`Model` objects and whether the on-disk compilation cache is on (decided once per
process by :func:`enable_compilation_cache`). JAX is not fork-safe once it has run, so start
worker processes with the ``"spawn"`` or ``"forkserver"`` method; a :class:`Model` pickles as
``(name, input_shape, num_classes)`` and is rebuilt in the worker by :func:`get_model`
(compiled once, or loaded from the on-disk cache).

Measured on the 2-core CPU dev machine (jax 0.10.2, batch 32, 600 MNIST samples = 19 steps,
first call excluded), while 5 other engineers shared the 2 cores (load average 2 to 17), so
these are upper bounds: ``mlp`` (784-200-10, 159,010 params) 0.95-2.5 ms/step, 18-50 ms per
local epoch; ``lenet`` (61,706 params) 14-37 ms/step, 260-710 ms per local epoch. First call
(trace + compile + 1 step): 2.5-2.8 s (mlp), 2.8-5 s (lenet). DESIGN.md's quiet-machine figures
are ~0.5 ms / ~6-9 ms per step. One centralized epoch over 60k MNIST: mlp (batch 32, lr 0.1)
5 s -> 95.3 % test accuracy; lenet (batch 16, lr 0.01, momentum 0.9) 32 s -> 98.4 % (batch 32,
lr 0.02, momentum 0.9: 33-42 s -> 97.5-98.1 % depending on the seed).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jax
import jax.numpy as jnp
import numpy as np

from dfl.errors import UsageError

__all__ = ["MODELS", "LayerSlice", "Model", "enable_compilation_cache", "get_model"]

MODELS: Final = ("logreg", "mlp", "lenet")
"""Names accepted by :func:`get_model`."""

_MLP_HIDDEN: Final = 200
_EVAL_MIN_BATCH: Final = 32
#: Models made only of dense layers (weight then bias, in layout order): evaluated in numpy.
_DENSE_MODELS: Final = frozenset({"logreg", "mlp"})
#: Most training steps of a dense model per jitted call (see the module doc).
_EPOCH_CHUNK: Final = 256
#: Smallest chunk capacity (shorter chunks are padded with steps that never run).
_EPOCH_MIN_CAP: Final = 8

ParamDict = dict[str, jax.Array]
Apply = Callable[[ParamDict, jax.Array], jax.Array]


@dataclass(frozen=True)
class LayerSlice:
    """Where one parameter tensor lives in the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int
    fan_in: int
    relu_follows: bool

    @property
    def size(self) -> int:
        """Number of scalars in the tensor."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class _Arch:
    params: tuple[tuple[str, tuple[int, ...], int, bool], ...]  # name, shape, fan_in, relu
    apply: Apply


# --------------------------------------------------------------------------------------------
# architectures


def _dense(x: jax.Array, p: ParamDict, name: str) -> jax.Array:
    return x @ p[f"{name}.w"] + p[f"{name}.b"]


def _dense_params(
    name: str, n_in: int, n_out: int, relu: bool
) -> list[tuple[str, tuple[int, ...], int, bool]]:
    return [(f"{name}.w", (n_in, n_out), n_in, relu), (f"{name}.b", (n_out,), n_in, relu)]


def _logreg(input_shape: tuple[int, int, int], num_classes: int) -> _Arch:
    d = math.prod(input_shape)

    def apply(p: ParamDict, x: jax.Array) -> jax.Array:
        return _dense(x.reshape(x.shape[0], -1), p, "out")

    return _Arch(tuple(_dense_params("out", d, num_classes, False)), apply)


def _mlp(input_shape: tuple[int, int, int], num_classes: int) -> _Arch:
    d = math.prod(input_shape)

    def apply(p: ParamDict, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(_dense(x.reshape(x.shape[0], -1), p, "fc1"))
        return _dense(h, p, "out")

    spec = _dense_params("fc1", d, _MLP_HIDDEN, True) + _dense_params(
        "out", _MLP_HIDDEN, num_classes, False
    )
    return _Arch(tuple(spec), apply)


def _pool_out(n: int) -> int:
    return n // 2 if n >= 2 else n


def _maxpool2(x: jax.Array) -> jax.Array:
    """2x2 max pool, stride 2, floor mode; a dimension of size 1 is left alone."""
    b, h, w, c = x.shape
    ph, pw = (2 if h >= 2 else 1), (2 if w >= 2 else 1)
    ho, wo = h // ph, w // pw
    x = x[:, : ho * ph, : wo * pw, :].reshape(b, ho, ph, wo, pw, c)
    return x.max(axis=(2, 4))


def _conv(x: jax.Array, p: ParamDict, name: str, padding: str) -> jax.Array:
    # lax.conv_general_dilated beat an im2col + matmul and conv_general_dilated_patches here
    # (2-core CPU): faster steps and 2-3x faster compiles.
    y = jax.lax.conv_general_dilated(
        x, p[f"{name}.w"], (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + p[f"{name}.b"]


def _lenet(input_shape: tuple[int, int, int], num_classes: int) -> _Arch:
    """LeNet-5 (ReLU + max-pool variant).

    conv 5x5x6 'SAME' -> pool -> conv 5x5x16 -> pool -> fc 120 -> fc 84 -> fc classes. The
    second conv is 'VALID' (the classic geometry: 28x28 -> 14 -> 10 -> 5, 61,706 params on
    MNIST) when the pooled map is at least 6 wide, else 'SAME', so 8x8 digits work too.
    """
    h, w, c = input_shape
    h1, w1 = _pool_out(h), _pool_out(w)
    pad2 = "VALID" if min(h1, w1) >= 6 else "SAME"
    h2, w2 = (h1 - 4, w1 - 4) if pad2 == "VALID" else (h1, w1)
    flat = _pool_out(h2) * _pool_out(w2) * 16

    def apply(p: ParamDict, x: jax.Array) -> jax.Array:
        y = _maxpool2(jax.nn.relu(_conv(x, p, "conv1", "SAME")))
        y = _maxpool2(jax.nn.relu(_conv(y, p, "conv2", pad2)))
        y = y.reshape(y.shape[0], -1)
        y = jax.nn.relu(_dense(y, p, "fc1"))
        y = jax.nn.relu(_dense(y, p, "fc2"))
        return _dense(y, p, "out")

    spec = [
        ("conv1.w", (5, 5, c, 6), 25 * c, True),
        ("conv1.b", (6,), 25 * c, True),
        ("conv2.w", (5, 5, 6, 16), 150, True),
        ("conv2.b", (16,), 150, True),
        *_dense_params("fc1", flat, 120, True),
        *_dense_params("fc2", 120, 84, True),
        *_dense_params("out", 84, num_classes, False),
    ]
    return _Arch(tuple(spec), apply)


_ARCHS: Final[dict[str, Callable[[tuple[int, int, int], int], _Arch]]] = {
    "logreg": _logreg,
    "mlp": _mlp,
    "lenet": _lenet,
}


# --------------------------------------------------------------------------------------------
# the model


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _epoch_chunks(steps: int) -> list[tuple[int, int, int]]:
    """How a dense model's epoch of ``steps`` steps is cut: ``(start, steps, capacity)`` per
    jitted call, at most :data:`_EPOCH_CHUNK` steps each, each padded to a power-of-two
    capacity (at least :data:`_EPOCH_MIN_CAP`) whose extra steps never run."""
    out = []
    for start in range(0, steps, _EPOCH_CHUNK):
        n = min(_EPOCH_CHUNK, steps - start)
        out.append((start, n, max(_EPOCH_MIN_CAP, _next_pow2(n))))
    return out


@dataclass(frozen=True, eq=False)
class Model:
    """A classifier over a flat float32 parameter vector. Build it with :func:`get_model`.

    Attributes
    ----------
    name : str
        ``"logreg"``, ``"mlp"`` or ``"lenet"``.
    input_shape : tuple[int, int, int]
        ``(H, W, C)`` of one sample.
    num_classes : int
        Number of output classes.
    num_params : int
        Length of the flat parameter vector.
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    num_params: int
    _layout: tuple[LayerSlice, ...] = field(repr=False)
    _apply: Apply = field(repr=False)
    _traces: dict[str, int] = field(repr=False)
    _step: Any = field(repr=False)
    _steps: Any = field(repr=False)
    _eval: Any = field(repr=False)
    _grad: Any = field(repr=False)
    _logits: Any = field(repr=False)

    # -- pickling: rebuild through the per-process cache (never ship compiled functions) ----
    def __reduce__(self) -> tuple[Any, ...]:
        return (get_model, (self.name, self.input_shape, self.num_classes))

    @property
    def layout(self) -> tuple[LayerSlice, ...]:
        """Slices of the flat vector, in order (see module doc)."""
        return self._layout

    @property
    def traces(self) -> dict[str, int]:
        """How many times each jitted function was traced (== compiled) in this process."""
        return dict(self._traces)

    # -- parameters ------------------------------------------------------------------------
    def init(self, seed: int) -> np.ndarray:
        """Fresh parameters: He-uniform before ReLU, LeCun-uniform otherwise, zero biases.

        Returns
        -------
        np.ndarray
            ``float32`` vector of length :attr:`num_params`.
        """
        rng = np.random.default_rng(seed)
        out = np.zeros(self.num_params, dtype=np.float32)
        for sl in self._layout:
            if sl.name.endswith(".w"):
                bound = math.sqrt((6.0 if sl.relu_follows else 3.0) / sl.fan_in)
                out[sl.offset : sl.offset + sl.size] = rng.uniform(-bound, bound, sl.size)
        return out

    def unflatten(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat vector into named tensors (views into ``params``)."""
        flat = self._check_params(params)
        return {
            sl.name: flat[sl.offset : sl.offset + sl.size].reshape(sl.shape) for sl in self._layout
        }

    # -- training --------------------------------------------------------------------------
    def train_local(
        self,
        params: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
        momentum: float = 0.0,
    ) -> np.ndarray:
        """Minibatch SGD (optionally with heavy-ball momentum) on ``(x, y)``.

        Each epoch visits every sample once in a fresh ``seed``-derived order, in batches of
        ``batch_size``; the last short batch is padded and masked. The jitted step is compiled
        once per ``batch_size`` and reused for any number of samples.

        Parameters
        ----------
        params : np.ndarray
            Flat float32 starting point (not modified).
        x, y : np.ndarray
            Samples ``(N, H, W, C)`` (or anything reshapeable to it) and int labels ``(N,)``.
        epochs, batch_size : int
            Local epochs (>= 0) and batch size (>= 1).
        lr, momentum : float
            Learning rate and momentum coefficient in ``[0, 1)``.
        seed : int
            Shuffling seed.

        Returns
        -------
        np.ndarray
            New flat float32 parameters (a fresh array).
        """
        flat = self._check_params(params)
        xs, ys = self._check_data(x, y)
        if epochs < 0 or batch_size < 1:
            raise UsageError(f"need epochs >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
        if not (math.isfinite(lr) and lr >= 0 and 0.0 <= momentum < 1.0):
            raise UsageError(f"need lr >= 0 and 0 <= momentum < 1, got {lr}, {momentum}")
        n = len(ys)
        if n == 0 or epochs == 0:
            return np.array(flat, dtype=np.float32, copy=True)
        rng = np.random.default_rng(seed)
        steps = -(-n // batch_size)
        pad = steps * batch_size - n
        mask = np.ones(steps * batch_size, dtype=np.float32)
        if pad:
            mask[n:] = 0.0
        masks = mask.reshape(steps, batch_size)
        w = jnp.asarray(flat)
        v = jnp.zeros_like(w)
        lr32, mom32 = np.float32(lr), np.float32(momentum)
        for _ in range(epochs):
            order = rng.permutation(n)
            if pad:
                order = np.concatenate([order, np.zeros(pad, dtype=order.dtype)])
            order = order.reshape(steps, batch_size)
            if self.name in _DENSE_MODELS:
                w, v = self._train_chunks(w, v, xs, ys, order, masks, lr32, mom32)
                continue
            for s in range(steps):
                idx = order[s]
                w, v = self._step(w, v, xs[idx], ys[idx], masks[s], lr32, mom32)
        return np.array(w, dtype=np.float32, copy=True)

    def compile_training(self, shard_sizes: Sequence[int], batch_size: int) -> int:
        """Compile (without training) what :meth:`train_local` needs for shards of these sizes
        and this batch size, so the first real call runs at full speed. Returns how many
        functions were compiled now (0 when all were cached)."""
        if batch_size < 1:
            raise UsageError(f"need batch_size >= 1, got {batch_size}")
        key = "steps" if self.name in _DENSE_MODELS else "step"
        before = self._traces[key]
        w = jnp.zeros(self.num_params, dtype=jnp.float32)
        zero = np.float32(0.0)
        if self.name not in _DENSE_MODELS:
            xb = np.zeros((batch_size, *self.input_shape), dtype=np.float32)
            yb, mb = np.zeros(batch_size, dtype=np.int32), np.zeros(batch_size, np.float32)
            self._step(w, w, xb, yb, mb, zero, zero)
            return self._traces[key] - before
        caps = {
            cap for size in shard_sizes for _, _, cap in _epoch_chunks(-(-int(size) // batch_size))
        }
        for cap in sorted(caps):
            xc = np.zeros((cap, batch_size, *self.input_shape), dtype=np.float32)
            yc = np.zeros((cap, batch_size), dtype=np.int32)
            mc = np.zeros((cap, batch_size), dtype=np.float32)
            self._steps(w, w, xc, yc, mc, np.int32(0), zero, zero)  # runs no step
        return self._traces[key] - before

    def _train_chunks(
        self,
        w: jax.Array,
        v: jax.Array,
        xs: np.ndarray,
        ys: np.ndarray,
        order: np.ndarray,
        masks: np.ndarray,
        lr: np.float32,
        mom: np.float32,
    ) -> tuple[jax.Array, jax.Array]:
        """One epoch's steps (``order``: ``(steps, batch)`` sample indices) in the jitted chunks
        of :func:`_epoch_chunks`."""
        for start, n, cap in _epoch_chunks(order.shape[0]):
            idx = order[start : start + n]
            mb = masks[start : start + n]
            if cap > n:
                idx = np.concatenate([idx, np.zeros((cap - n, idx.shape[1]), idx.dtype)])
                mb = np.concatenate([mb, np.zeros((cap - n, mb.shape[1]), mb.dtype)])
            w, v = self._steps(w, v, xs[idx], ys[idx], mb, np.int32(n), lr, mom)
        return w, v

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, batch_size: int = 1000
    ) -> tuple[float, float]:
        """Accuracy and mean cross-entropy loss of ``params`` on ``(x, y)``.

        Returns
        -------
        tuple[float, float]
            ``(accuracy in [0, 1], mean loss)``; ``(0.0, 0.0)`` for empty data.
        """
        correct, loss = self._sum_over_batches(self._eval, params, x, y, batch_size)
        n = len(y)
        return (float(correct) / n, float(loss) / n) if n else (0.0, 0.0)

    def evaluate_many(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, batch_size: int = 1000
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`evaluate` of every row of a stack of parameter vectors, with shared set-up.

        Dense-only models (``logreg``, ``mlp``) are evaluated in numpy
        (:meth:`_evaluate_many_dense`: the same numbers up to float32 rounding, about 5x
        cheaper for the MLP on the accuracy guard's few dozen samples). Others (LeNet) give
        the same numbers as calling :meth:`evaluate` on each row, bit for bit (the same
        compiled per-batch function, summed over batches in the same float32 order), for
        less: the data is checked, padded and copied to the device once for all models (not
        once per model) and each model once (not once per batch). No new shape is compiled,
        whatever the number of models. With LeNet on 256 samples, where the arithmetic
        dominates, this and separate calls cost the same (about 0.4 s for 9 models).

        One jitted ``jax.vmap`` call per data batch for all the models was measured and not
        kept (same machine and case): XLA first transposes the stacked weight matrices, so a
        model costs no less than in a separate call, and with the model count padded to a few
        bucket sizes (to bound recompiles) the accuracy guard's 9 evaluations took 19-21 ms
        against 16-19 ms with separate :meth:`evaluate` calls. ``lax.map`` (one call, the
        models in sequence) cost the same as this method (8.7 against 8.5 ms) but compiles
        every (model count, eval batch) shape anew, 0.3-0.5 s each in every process.

        Parameters
        ----------
        params : np.ndarray
            ``(k, num_params)`` stack of flat parameter vectors (converted to float32).
        x, y : np.ndarray
            Samples and int labels, as for :meth:`evaluate`.
        batch_size : int
            Data batch size, as for :meth:`evaluate`.

        Returns
        -------
        tuple[np.ndarray, np.ndarray]
            ``(accuracy (k,), mean loss (k,))`` as float64 arrays; zeros for empty data. A
            non-finite row gives non-finite results for that row only.
        """
        stack = np.asarray(params, dtype=np.float32)
        if stack.ndim != 2 or stack.shape[1] != self.num_params:
            raise UsageError(
                f"{self.name}: expected a (k, {self.num_params}) stack of params, "
                f"got shape {stack.shape}"
            )
        xs, ys = self._check_data(x, y)
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        if self.name in _DENSE_MODELS:
            return self._evaluate_many_dense(stack, xs, ys)
        batches = [
            (jnp.asarray(xb), jnp.asarray(yb), jnp.asarray(mb))
            for _, xb, yb, mb in self._batches(xs, ys, batch_size)
        ]
        k, n = stack.shape[0], len(ys)
        accuracy = np.zeros(k, np.float64)
        loss = np.zeros(k, np.float64)
        if n == 0:
            return accuracy, loss
        for i in range(k):
            # one batch: the jitted call copies the row itself (cheaper than device_put)
            w = stack[i] if len(batches) == 1 else jax.device_put(stack[i])
            sums = [self._eval(w, xb, yb, mb) for xb, yb, mb in batches]
            correct, total = np.float32(0.0), np.float32(0.0)
            for a, b in sums:  # the float32 order of _sum_over_batches
                correct, total = correct + np.float32(a), total + np.float32(b)
            accuracy[i], loss[i] = float(correct) / n, float(total) / n
        return accuracy, loss

    def _evaluate_many_dense(
        self, stack: np.ndarray, xs: np.ndarray, ys: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`evaluate_many` of a dense-only model (``logreg``, ``mlp``) in numpy.

        The same forward pass as the JAX model (float32 matmuls, ReLU, log-softmax), on the
        flat vectors in place: for these small networks XLA's call costs more than the
        arithmetic (MLP, 66 samples: about 2 ms per model through JAX, 0.4 ms here). Results
        equal :meth:`evaluate`'s up to float32 rounding (loss to about 1e-6 relative; an
        accuracy differs only if two logits of a sample tie within rounding).
        """
        k, n = stack.shape[0], len(ys)
        accuracy = np.zeros(k, np.float64)
        loss = np.zeros(k, np.float64)
        if n == 0:
            return accuracy, loss
        x0 = xs.reshape(n, -1)
        rows = np.arange(n)
        layers = list(zip(self._layout[0::2], self._layout[1::2], strict=True))
        for i in range(k):
            flat = stack[i]
            h = x0
            # a broken model (huge or non-finite values) gives a non-finite loss, not a warning
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                for w_sl, b_sl in layers:
                    w = flat[w_sl.offset : w_sl.offset + w_sl.size].reshape(w_sl.shape)
                    h = h @ w
                    h += flat[b_sl.offset : b_sl.offset + b_sl.size]
                    if w_sl.relu_follows:
                        np.maximum(h, 0.0, out=h)
                top = h.max(axis=1, keepdims=True)
                lse = np.log(np.exp(h - top).sum(axis=1)) + top[:, 0]
                per_sample = lse - h[rows, ys]
                loss[i] = float(per_sample.sum(dtype=np.float64)) / n
            accuracy[i] = float(np.count_nonzero(h.argmax(axis=1) == ys)) / n
        return accuracy, loss

    def loss(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, batch_size: int = 1000
    ) -> float:
        """Mean cross-entropy loss on ``(x, y)``."""
        return self.evaluate(params, x, y, batch_size)[1]

    def grad(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, batch_size: int = 1000
    ) -> np.ndarray:
        """Gradient of the mean cross-entropy loss over all of ``(x, y)``, as a flat vector."""
        total, _ = self._sum_over_batches(self._grad, params, x, y, batch_size)
        n = max(len(y), 1)
        return np.asarray(total, dtype=np.float32) / np.float32(n)

    def predict(self, params: np.ndarray, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Predicted class of every sample, ``int32`` ``(N,)``."""
        flat = jnp.asarray(self._check_params(params))
        xs = self._check_x(x)
        out = np.empty(len(xs), dtype=np.int32)
        for start, xb, _, _ in self._batches(xs, None, batch_size):
            pred = np.asarray(self._logits(flat, xb)).argmax(axis=1)
            stop = min(start + len(xb), len(xs))
            out[start:stop] = pred[: stop - start]
        return out

    # -- internals -------------------------------------------------------------------------
    def _sum_over_batches(
        self, fn: Any, params: np.ndarray, x: np.ndarray, y: np.ndarray, batch_size: int
    ) -> tuple[Any, Any]:
        flat = jnp.asarray(self._check_params(params))
        xs, ys = self._check_data(x, y)
        acc_a: Any = 0.0
        acc_b: Any = 0.0
        for _, xb, yb, mb in self._batches(xs, ys, batch_size):
            a, b = fn(flat, xb, yb, mb)
            acc_a = acc_a + a
            acc_b = acc_b + b
        return acc_a, acc_b

    def _batches(
        self, xs: np.ndarray, ys: np.ndarray | None, batch_size: int
    ) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        n = len(xs)
        if n == 0:
            return []
        b = max(_EVAL_MIN_BATCH, min(batch_size, _next_pow2(n)))
        labels = ys if ys is not None else np.zeros(n, dtype=np.int32)
        out = []
        for start in range(0, n, b):
            xb, yb = xs[start : start + b], labels[start : start + b]
            mb = np.ones(b, dtype=np.float32)
            if len(xb) < b:
                short = b - len(xb)
                mb[len(xb) :] = 0.0
                xb = np.concatenate([xb, np.zeros((short, *xb.shape[1:]), xb.dtype)])
                yb = np.concatenate([yb, np.zeros(short, yb.dtype)])
            out.append((start, xb, yb, mb))
        return out

    def _check_params(self, params: np.ndarray) -> np.ndarray:
        flat = np.asarray(params, dtype=np.float32)
        if flat.shape != (self.num_params,):
            raise UsageError(
                f"{self.name}: expected a flat vector of {self.num_params} params, "
                f"got shape {flat.shape}"
            )
        return flat

    def _check_x(self, x: np.ndarray) -> np.ndarray:
        xs = np.asarray(x, dtype=np.float32)
        if xs.ndim < 2 or math.prod(xs.shape[1:]) != math.prod(self.input_shape):
            raise UsageError(f"{self.name}: x shape {xs.shape} does not fit {self.input_shape}")
        return xs.reshape(len(xs), *self.input_shape)

    def _check_data(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xs = self._check_x(x)
        ys = np.asarray(y)
        if ys.shape != (len(xs),) or (ys.size and ys.dtype.kind not in "iu"):
            raise UsageError(f"{self.name}: y must be ({len(xs)},) integers, got {ys.shape}")
        if ys.size and (int(ys.min()) < 0 or int(ys.max()) >= self.num_classes):
            raise UsageError(f"{self.name}: labels must be in [0, {self.num_classes})")
        return xs, ys.astype(np.int32, copy=False)


# --------------------------------------------------------------------------------------------
# construction


def _build(name: str, input_shape: tuple[int, int, int], num_classes: int) -> Model:
    arch = _ARCHS[name](input_shape, num_classes)
    layout: list[LayerSlice] = []
    offset = 0
    for pname, shape, fan_in, relu in arch.params:
        layout.append(LayerSlice(pname, shape, offset, fan_in, relu))
        offset += math.prod(shape)
    num_params = offset
    frozen_layout = tuple(layout)
    apply = arch.apply
    traces = {"step": 0, "steps": 0, "eval": 0, "grad": 0, "logits": 0}

    def unravel(flat: jax.Array) -> ParamDict:
        return {
            sl.name: flat[sl.offset : sl.offset + sl.size].reshape(sl.shape) for sl in frozen_layout
        }

    def per_sample_loss(flat: jax.Array, xb: jax.Array, yb: jax.Array) -> jax.Array:
        logits = apply(unravel(flat), xb)
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, yb[:, None], axis=1)[:, 0]

    def masked_mean_loss(flat: jax.Array, xb: jax.Array, yb: jax.Array, mb: jax.Array) -> jax.Array:
        return jnp.sum(per_sample_loss(flat, xb, yb) * mb) / jnp.maximum(jnp.sum(mb), 1.0)

    def step(
        w: jax.Array,
        v: jax.Array,
        xb: jax.Array,
        yb: jax.Array,
        mb: jax.Array,
        lr: jax.Array,
        mom: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        traces["step"] += 1  # runs at trace time only
        g = jax.grad(masked_mean_loss)(w, xb, yb, mb)
        v = mom * v + g
        return w - lr * v, v

    def steps(
        w: jax.Array,
        v: jax.Array,
        xc: jax.Array,
        yc: jax.Array,
        mc: jax.Array,
        n: jax.Array,
        lr: jax.Array,
        mom: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """The first ``n`` steps of a chunk (``xc``: ``(capacity, batch, ...)``)."""
        traces["steps"] += 1

        def body(i: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            return step(carry[0], carry[1], xc[i], yc[i], mc[i], lr, mom)

        out: tuple[jax.Array, jax.Array] = jax.lax.fori_loop(0, n, body, (w, v))
        return out

    def eval_sums(
        w: jax.Array, xb: jax.Array, yb: jax.Array, mb: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        traces["eval"] += 1
        logits = apply(unravel(w), xb)
        logp = jax.nn.log_softmax(logits)
        loss = -jnp.take_along_axis(logp, yb[:, None], axis=1)[:, 0]
        correct = (jnp.argmax(logits, axis=1) == yb).astype(jnp.float32)
        return jnp.sum(correct * mb), jnp.sum(loss * mb)

    def grad_sums(
        w: jax.Array, xb: jax.Array, yb: jax.Array, mb: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        traces["grad"] += 1

        def summed(flat: jax.Array) -> jax.Array:
            return jnp.sum(per_sample_loss(flat, xb, yb) * mb)

        loss, g = jax.value_and_grad(summed)(w)
        return g, loss

    def logits_fn(w: jax.Array, xb: jax.Array) -> jax.Array:
        traces["logits"] += 1
        return apply(unravel(w), xb)

    return Model(
        name=name,
        input_shape=input_shape,
        num_classes=num_classes,
        num_params=num_params,
        _layout=frozen_layout,
        _apply=apply,
        _traces=traces,
        _step=jax.jit(step),
        _steps=jax.jit(steps),
        _eval=jax.jit(eval_sums),
        _grad=jax.jit(grad_sums),
        _logits=jax.jit(logits_fn),
    )


_CACHE: dict[tuple[str, tuple[int, int, int], int], Model] = {}
_CACHE_LOCK = threading.Lock()

#: Environment variable naming the on-disk compilation cache (``off`` disables it).
JIT_CACHE_ENV: Final = "DFL_JIT_CACHE"
#: Size cap of the on-disk compilation cache (JAX evicts least recently used entries).
_JIT_CACHE_MAX_BYTES: Final = 256 * 2**20


@functools.cache  # decided once per process; later calls return the first answer
def enable_compilation_cache() -> Path | None:
    """Keep JAX's compiled functions on disk, so a new process loads them instead of compiling.

    Every simulation worker and every daemon compiles the same few functions (training chunks,
    evaluation) for the same shapes: 3-6 s of XLA per process here, paid again by each cell of
    a benchmark. JAX's persistent cache stores the compiled executables keyed by the lowered
    program, the compile options and the JAX/XLA versions; a hit loads the same executable, so
    the numbers are bit-identical to a fresh compile.

    Where: ``$DFL_JIT_CACHE`` (``off`` disables the cache), else ``jit/`` in the user cache
    dir (``platformdirs.user_cache_dir("dfl")``). A ``JAX_COMPILATION_CACHE_DIR`` the user set
    wins. Capped at 256 MiB. The cache is trusted code, so it must live in a directory only
    this user can write; nothing from the network is ever written there.

    Called by :func:`get_model` before the first model of a process is built; idempotent, and
    a no-op once decided. Returns the directory in use, or None when disabled.
    """
    setting = os.environ.get(JIT_CACHE_ENV, "").strip()
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    own = getattr(jax.config, "jax_compilation_cache_dir", None)
    if own:  # the user's own JAX setting (JAX_COMPILATION_CACHE_DIR) wins
        return Path(own)
    if setting:
        path = Path(setting).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir("dfl")) / "jit"
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:  # read-only home, say: compile every time, as without the cache
        return None
    update: Callable[[str, Any], None] = jax.config.update  # (untyped in JAX)
    update("jax_compilation_cache_dir", str(path))
    # our functions compile in 0.1-3 s each and are small: keep them all
    update("jax_persistent_cache_min_compile_time_secs", 0.0)
    update("jax_persistent_cache_min_entry_size_bytes", 0)
    update("jax_compilation_cache_max_size", _JIT_CACHE_MAX_BYTES)  # LRU, with filelock
    return path


def get_model(name: str, input_shape: Sequence[int], num_classes: int) -> Model:
    """Return the (per-process cached) model ``name`` for this input shape and class count.

    Parameters
    ----------
    name : str
        ``"logreg"``, ``"mlp"`` (hidden layer of 200) or ``"lenet"`` (LeNet-5).
    input_shape : sequence of int
        ``(H, W, C)`` or ``(H, W)`` (then ``C = 1``), e.g. ``Dataset.input_shape``.
    num_classes : int
        Number of classes (>= 2).

    Returns
    -------
    Model
        The same object for the same arguments within a process.

    Raises
    ------
    UsageError
        Unknown name or bad shape.
    """
    if name not in _ARCHS:
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    dims = tuple(int(s) for s in input_shape)
    if len(dims) == 2:
        dims = (*dims, 1)
    if len(dims) != 3 or min(dims) < 1:
        raise UsageError(f"input_shape must be (H, W[, C]) with positive sizes, got {input_shape}")
    shape: tuple[int, int, int] = (dims[0], dims[1], dims[2])
    if num_classes < 2:
        raise UsageError(f"num_classes must be >= 2, got {num_classes}")
    key = (name, shape, int(num_classes))
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            enable_compilation_cache()
            model = _build(*key)
            _CACHE[key] = model
        return model
