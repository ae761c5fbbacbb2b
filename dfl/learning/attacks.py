"""Poisoning attacks: one signature, one registry (:data:`ATTACKS`).

An :class:`Attack` is data, not a class hierarchy: a name, a kind and up to two pure functions.

* ``poison_data(x, y, rng, num_classes) -> (x', y')`` -- *data* poisoning; the attacker then
  trains honestly on the poisoned data.
* ``poison_model(ctx) -> model`` -- *model* poisoning; given an :class:`AttackContext`, returns the
  flat float32 parameter vector the attacker announces instead of its trained model.

Structural choices (a label mapping, the perturbation of min-max...) are captured in closures by
the factory functions (``label_flip(mapping=...)``, ``min_max(perturbation=...)``), optax style;
numeric knobs are read from ``ctx.params`` at call time and fall back to the factory's default, so
a benchmark can sweep them without building new attacks. Every knob is listed in the factory's
docstring.

Invariants of this module

* Pure: no I/O, no global state, no mutation of the inputs. All randomness comes from the ``rng``
  argument (data attacks) or from ``numpy.random.default_rng`` seeded by ``(ctx.seed, ctx.round,
  attack name)`` (model attacks), so an attack is deterministic for a given context.
* Every model an attack returns is a finite float32 vector of the shape of ``ctx.own_model``.
  Values are computed in float64, non-finite values are replaced and the result is clipped to
  ``+-MAX_ABS`` (1e15: squared norms over up to 1e8 parameters stay finite even in float32;
  NaN becomes 0), so even ``gaussian`` with an absurd sigma yields a finite model.
* **What an attacker sees.** A malicious node sees only what the protocol gives it: its own
  models and the models its neighbours announced this round. Attacks that need "honest updates"
  (``ipm``, ``min_max``, ``min_sum``) treat ``neighbor_models - prev_model`` -- the neighbours'
  announced models relative to the attacker's own round-start model -- as the honest updates
  (:func:`honest_updates`); ``alie`` works on the neighbours' models directly, which is the same
  (mean and std shift with the reference point). With zero neighbours each falls back as
  documented on the attack.
* Independent of :mod:`dfl.learning.robust`: the attacker does not know which rule its victims run.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from dfl.errors import UsageError

__all__ = [
    "ATTACKS",
    "MAX_ABS",
    "Attack",
    "AttackContext",
    "AttackKind",
    "DataPoisonFn",
    "ModelPoisonFn",
    "alie",
    "alie_z",
    "apply_trigger",
    "backdoor",
    "backdoor_asr",
    "dfl_random",
    "flip_labels",
    "free_rider",
    "gaussian",
    "get_attack",
    "honest_updates",
    "ipm",
    "label_flip",
    "min_max",
    "min_max_gamma",
    "min_sum",
    "no_attack",
    "perturbation_vector",
    "random_data",
    "scaling",
    "sign_flip",
    "trigger_size",
]

Array = npt.NDArray[Any]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

AttackKind = Literal["data", "model", "none"]
DataPoisonFn = Callable[[Array, Array, np.random.Generator, int], tuple[Array, Array]]
Perturbation = Literal["std", "unit", "sign"]

#: Largest absolute value a model attack ever outputs.
MAX_ABS = 1e15


@dataclass(frozen=True)
class AttackContext:
    """Everything a malicious node knows when it decides what to announce this round.

    Parameters
    ----------
    own_model
        ``(d,)`` model the attacker trained this round (honestly, or on poisoned data).
    prev_model
        ``(d,)`` the attacker's model at the start of the round: the reference point of updates.
    neighbor_models
        ``(k, d)`` models its neighbours announced this round (``k`` may be 0; an empty array of
        any shape with size 0 is accepted). Only what a malicious node really sees.
    num_byzantine
        Number of colluding attackers assumed (``f`` in ALIE's ``z``).
    num_nodes
        Total participants the attacker assumes (``n`` in ALIE's ``z``); 0 means "unknown", and
        attacks then use ``k + num_byzantine``.
    round, seed
        Non-negative; seed the randomness of the model attacks.
    stale_models
        Earlier announced models, each ``(d,)`` (``free_rider`` re-announces one).
    params
        Numeric knobs overriding the attack's defaults (see each attack's docstring).

    Raises
    ------
    UsageError
        On inconsistent shapes or negative counts.
    """

    own_model: Array
    prev_model: Array
    neighbor_models: Array
    num_byzantine: int = 1
    num_nodes: int = 0
    round: int = 0
    seed: int = 0
    stale_models: tuple[Array, ...] = ()
    params: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        own = np.asarray(self.own_model)
        if own.ndim != 1:
            raise UsageError(f"own_model must be a flat vector, got shape {own.shape}")
        d = own.shape[0]
        if np.shape(self.prev_model) != (d,):
            raise UsageError(f"prev_model has shape {np.shape(self.prev_model)}, expected {(d,)}")
        nb = np.asarray(self.neighbor_models)
        if nb.size and (nb.ndim != 2 or nb.shape[1] != d):
            raise UsageError(f"neighbor_models has shape {nb.shape}, expected (k, {d})")
        for i, m in enumerate(self.stale_models):
            if np.shape(m) != (d,):
                raise UsageError(f"stale_models[{i}] has shape {np.shape(m)}, expected {(d,)}")
        for name in ("num_byzantine", "num_nodes", "round", "seed"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def dim(self) -> int:
        """Number of model parameters ``d``."""
        return int(np.shape(self.own_model)[0])

    @property
    def num_neighbors(self) -> int:
        """Number of neighbour models ``k``."""
        nb = np.asarray(self.neighbor_models)
        return int(nb.shape[0]) if nb.size else 0

    @property
    def neighbors(self) -> F64:
        """Neighbour models as a float64 ``(k, d)`` array (``(0, d)`` when there are none)."""
        nb = np.asarray(self.neighbor_models, dtype=np.float64)
        return nb.reshape(-1, self.dim) if nb.size else np.zeros((0, self.dim))

    def param(self, key: str, default: float) -> float:
        """Numeric knob ``key`` from :attr:`params`, else ``default``."""
        return float(self.params.get(key, default))


ModelPoisonFn = Callable[[AttackContext], F32]


@dataclass(frozen=True)
class Attack:
    """A poisoning attack: a name, a kind and its pure function(s).

    ``kind == "data"`` requires ``poison_data``, ``"model"`` requires ``poison_model`` and
    ``"none"`` has neither. ``needs_neighbors`` says the model attack uses ``neighbor_models``
    (a caller may skip collecting them otherwise).
    """

    name: str
    kind: AttackKind
    poison_data: DataPoisonFn | None
    poison_model: ModelPoisonFn | None
    needs_neighbors: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise UsageError("an attack needs a name")
        expected = {
            "data": ((True, False), "poison_data only"),
            "model": ((False, True), "poison_model only"),
            "none": ((False, False), "no function"),
        }
        if self.kind not in expected:
            raise UsageError(f"attack kind must be data, model or none, got {self.kind!r}")
        has = (self.poison_data is not None, self.poison_model is not None)
        want, what = expected[self.kind]
        if has != want:
            raise UsageError(f"attack {self.name!r} of kind {self.kind!r} must define {what}")


# --------------------------------------------------------------------------- helpers


def _finite32(x: Array) -> F32:
    """Float64 -> finite float32 within ``+-MAX_ABS`` (NaN -> 0)."""
    y = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=MAX_ABS, neginf=-MAX_ABS)
    return np.clip(y, -MAX_ABS, MAX_ABS).astype(np.float32)


def _rng(ctx: AttackContext, name: str) -> np.random.Generator:
    """Deterministic generator for attack ``name`` in this context."""
    return np.random.default_rng([ctx.seed, ctx.round, zlib.crc32(name.encode())])


def _f64(x: Array) -> F64:
    return np.asarray(x, dtype=np.float64)


def honest_updates(ctx: AttackContext) -> F64:
    """What the attacker takes for the honest updates: ``neighbor_models - prev_model``.

    With zero neighbours, the attacker's own update ``own_model - prev_model`` is the only
    honest-looking update it has, so the result is ``(1, d)`` holding it.

    Returns
    -------
    numpy.ndarray
        float64 ``(k, d)`` (``k >= 1``).
    """
    prev = _f64(ctx.prev_model)
    nb = ctx.neighbors
    if nb.shape[0] == 0:
        return (_f64(ctx.own_model) - prev)[None, :]
    return nb - prev[None, :]


def _sq_dists(u: F64) -> F64:
    """Pairwise squared Euclidean distances of the rows of ``u`` via the Gram matrix."""
    g = u @ u.T
    sq = np.diag(g)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0)


# --------------------------------------------------------------------------- data attacks


def flip_labels(y: Array, num_classes: int, mapping: Mapping[int, int] | None = None) -> Array:
    """Flipped copy of the labels ``y``.

    Without ``mapping`` every label ``c`` becomes ``num_classes - 1 - c``; with it, labels that
    are keys of ``mapping`` become their value and all others are kept.
    """
    y = np.asarray(y)
    if mapping is None:
        return (num_classes - 1 - y).astype(y.dtype)
    out = y.copy()
    for src, dst in mapping.items():
        out[y == src] = dst
    return out


def label_flip(mapping: Mapping[int, int] | None = None) -> Attack:
    """Label flipping (Biggio et al. 2012; Fang et al., USENIX Security 2020, as an FL baseline).

    The attacker trains on its own inputs with labels ``y -> C - 1 - y`` (default), or with
    ``mapping`` (e.g. ``{7: 1}`` flips only sevens to ones, the targeted variant of
    Tolpegin et al., ESORICS 2020). Inputs are unchanged.
    """
    frozen = dict(mapping) if mapping is not None else None

    def poison(
        x: Array, y: Array, rng: np.random.Generator, num_classes: int
    ) -> tuple[Array, Array]:
        del rng
        return x, flip_labels(y, num_classes, frozen)

    return Attack("label_flip", "data", poison, None)


def random_data() -> Attack:
    """Random data (the "noise data" baseline, e.g. Fang et al. 2020; Tian et al.'s DFL).

    Inputs are replaced by i.i.d. uniform values in ``[0, 1)`` (the range of dfl's datasets) and
    labels by uniform random classes; shapes and dtypes are kept.
    """

    def poison(
        x: Array, y: Array, rng: np.random.Generator, num_classes: int
    ) -> tuple[Array, Array]:
        x = np.asarray(x)
        y = np.asarray(y)
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        xr = rng.random(x.shape).astype(dtype)
        yr = rng.integers(0, max(num_classes, 1), size=y.shape).astype(y.dtype)
        return xr, yr

    return Attack("random_data", "data", poison, None)


def trigger_size(height: int, width: int) -> int:
    """Side of the square trigger: about 1/7 of the image, at least 3 (8x8 -> 3, 28x28 -> 4)."""
    return max(3, round(min(height, width) / 7))


def _image_view(x: Array) -> tuple[Array, bool]:
    """``x`` as ``(N, H, W, ...)``; flat ``(N, D)`` inputs with square ``D`` are reshaped."""
    if x.ndim >= 3:
        return x, False
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side == x.shape[1] and side > 0:
            return x.reshape(x.shape[0], side, side), True
    raise UsageError(
        f"backdoor trigger needs images (N, H, W[, C]) or square flat inputs, got {x.shape}"
    )


def apply_trigger(x: Array, *, size: int | None = None, value: float = 1.0) -> Array:
    """Copy of ``x`` with the backdoor trigger stamped on every sample.

    The trigger is a ``size x size`` square of ``value`` (bright: inputs are in ``[0, 1]``) in the
    bottom-right corner, on every channel -- the pixel-pattern trigger of BadNets (Gu et al. 2017)
    as used against FL by Bagdasaryan et al. (AISTATS 2020). ``size`` defaults to
    :func:`trigger_size` of the image.

    Parameters
    ----------
    x
        ``(N, H, W)``, ``(N, H, W, C)`` or flat ``(N, H*W)`` with square ``H*W``.
    """
    x = np.asarray(x)
    img, flat = _image_view(x.copy())
    s = trigger_size(img.shape[1], img.shape[2]) if size is None else size
    if not 1 <= s <= min(img.shape[1], img.shape[2]):
        raise UsageError(f"trigger size {s} does not fit images of shape {img.shape[1:3]}")
    img[:, -s:, -s:, ...] = value
    return img.reshape(x.shape) if flat else img


def backdoor(target: int = 0, fraction: float = 0.3, size: int | None = None) -> Attack:
    """Backdoor by pixel-pattern trigger (BadNets, Gu et al. 2017; Bagdasaryan et al. 2020).

    On ``round(fraction * N)`` of the attacker's samples, chosen by ``rng`` without replacement,
    the trigger of :func:`apply_trigger` is stamped and the label set to ``target``; the other
    samples stay clean so the main task keeps its accuracy. Measure it with :func:`backdoor_asr`.
    Combine with ``scaling`` at the benchmark level for model replacement.
    """
    if not 0.0 <= fraction <= 1.0:
        raise UsageError(f"backdoor fraction must be in [0, 1], got {fraction}")

    def poison(
        x: Array, y: Array, rng: np.random.Generator, num_classes: int
    ) -> tuple[Array, Array]:
        if not 0 <= target < num_classes:
            raise UsageError(f"backdoor target {target} not in [0, {num_classes})")
        x = np.asarray(x)
        y = np.asarray(y)
        n = x.shape[0]
        idx = rng.choice(n, size=round(fraction * n), replace=False)
        xp = x.copy()
        xp[idx] = apply_trigger(x[idx], size=size)
        yp = y.copy()
        yp[idx] = target
        return xp, yp

    return Attack("backdoor", "data", poison, None)


def backdoor_asr(
    predict_fn: Callable[[Array], Array],
    x_test: Array,
    y_test: Array,
    target: int,
    *,
    size: int | None = None,
) -> float:
    """Attack success rate of a backdoor.

    The share of test inputs whose true label is not ``target`` that, once triggered
    (:func:`apply_trigger`), are classified as ``target``.

    Parameters
    ----------
    predict_fn
        Maps inputs to predicted labels ``(N,)`` or to scores ``(N, C)`` (argmax is taken).

    Returns
    -------
    float
        In ``[0, 1]``; 0.0 when no test input has a label other than ``target``.
    """
    y_test = np.asarray(y_test)
    keep = y_test != target
    if not keep.any():
        return 0.0
    out = np.asarray(predict_fn(apply_trigger(np.asarray(x_test)[keep], size=size)))
    pred = out.argmax(axis=-1) if out.ndim == 2 else out
    return float(np.mean(pred == target))


# --------------------------------------------------------------------------- model attacks


def sign_flip(scale: float = 1.0) -> Attack:
    """Sign flipping (Damaskinos et al. 2018 / Li et al. RSA, AAAI 2019; "reverse gradient").

    Announces ``prev - s * (own - prev)``: the attacker's honest update with its sign flipped and
    scaled by ``s``. Knob: ``params["scale"]`` (default ``scale``).
    """

    def poison(ctx: AttackContext) -> F32:
        s = ctx.param("scale", scale)
        prev = _f64(ctx.prev_model)
        return _finite32(prev - s * (_f64(ctx.own_model) - prev))

    return Attack("sign_flip", "model", None, poison)


def gaussian(sigma: float = 1.0, mode: Literal["update", "model"] = "update") -> Attack:
    """Gaussian noise (Blanchard et al., NeurIPS 2017, "Gaussian Byzantine"; Fang et al. 2020).

    ``mode="update"`` announces ``prev + N(0, sigma^2 I)`` (a random update); ``mode="model"``
    announces ``N(0, sigma^2 I)`` (a random model). Knob: ``params["sigma"]``. The output is
    finite whatever ``sigma`` (see the module invariants).
    """
    if mode not in ("update", "model"):
        raise UsageError(f"gaussian mode must be 'update' or 'model', got {mode!r}")

    def poison(ctx: AttackContext) -> F32:
        s = ctx.param("sigma", sigma)
        s = min(abs(s), MAX_ABS) if math.isfinite(s) else MAX_ABS
        noise = s * _rng(ctx, "gaussian").standard_normal(ctx.dim)
        base = _f64(ctx.prev_model) if mode == "update" else 0.0
        return _finite32(base + noise)

    return Attack("gaussian", "model", None, poison)


def scaling(boost: float | None = None) -> Attack:
    """Model replacement by boosting (Bagdasaryan et al., "How To Backdoor FL", AISTATS 2020).

    Announces ``prev + lam * (own - prev)`` so that the attacker's update survives averaging.
    The paper uses ``lam = n / eta``; dfl averages without a server learning rate, so ``lam``
    defaults to the number of models the attacker expects a victim to average: ``num_nodes``
    if known, else its own neighbourhood size ``k + 1``. Knob: ``params["boost"]``.
    Pair with ``backdoor``-poisoned training for the paper's attack.
    """

    def poison(ctx: AttackContext) -> F32:
        default = boost if boost is not None else float(ctx.num_nodes or ctx.num_neighbors + 1)
        lam = ctx.param("boost", default)
        prev = _f64(ctx.prev_model)
        return _finite32(prev + lam * (_f64(ctx.own_model) - prev))

    return Attack("scaling", "model", None, poison)


def alie_z(num_nodes: int, num_byzantine: int) -> float:
    """ALIE's ``z_max`` (Baruch et al., NeurIPS 2019, Algorithm 3).

    ``s = floor(n / 2 + 1) - f`` and ``z = Phi^{-1}((n - s) / n)``, where ``Phi`` is the standard
    normal CDF. The probability is clamped to ``[0.5, 1 - 1e-9]``: ``z`` is never negative
    (``f = 0``) and stays finite when attackers are a majority.
    """
    if num_nodes <= 0:
        raise UsageError(f"alie needs num_nodes > 0, got {num_nodes}")
    s = math.floor(num_nodes / 2 + 1) - num_byzantine
    p = min(max((num_nodes - s) / num_nodes, 0.5), 1.0 - 1e-9)
    return NormalDist().inv_cdf(p)


def alie(z: float | None = None) -> Attack:
    """A Little Is Enough (Baruch, Baruch & Goldberg, NeurIPS 2019).

    Announces ``mean - z * std`` of the neighbours' models (coordinate-wise, population std),
    a model just inside the spread of the honest ones, so that neither distance- nor
    median-based rules discard it. ``z`` defaults to :func:`alie_z` with ``n = num_nodes`` (or
    ``k + num_byzantine`` when unknown) and ``f = num_byzantine``. Knob: ``params["z"]``.
    Fallback: with zero neighbours the attacker has no statistics and announces ``own_model``.
    """

    def poison(ctx: AttackContext) -> F32:
        nb = ctx.neighbors
        if nb.shape[0] == 0:
            return _finite32(ctx.own_model)
        n = ctx.num_nodes or nb.shape[0] + ctx.num_byzantine
        zz = ctx.param("z", z if z is not None else alie_z(n, ctx.num_byzantine))
        return _finite32(nb.mean(axis=0) - zz * nb.std(axis=0))

    return Attack("alie", "model", None, poison, needs_neighbors=True)


def ipm(eps: float = 0.1) -> Attack:
    """Inner Product Manipulation (Xie, Koyejo & Gupta, UAI 2020, "Fall of Empires").

    Announces ``prev - eps * mean(honest updates)`` so that the inner product between the true
    mean update and the aggregate turns negative (small ``eps`` ~0.1 fools Krum, large ``eps``
    ~100 fools median/trimmed mean). Knob: ``params["eps"]``. Honest updates are
    :func:`honest_updates`; with zero neighbours that is the attacker's own update.
    """

    def poison(ctx: AttackContext) -> F32:
        e = ctx.param("eps", eps)
        mean = honest_updates(ctx).mean(axis=0)
        return _finite32(_f64(ctx.prev_model) - e * mean)

    return Attack("ipm", "model", None, poison, needs_neighbors=True)


def perturbation_vector(updates: Array, kind: Perturbation) -> F64:
    """Min-Max/Min-Sum perturbation direction for the honest ``updates`` ``(k, d)``.

    ``"std"``: ``-std(updates)`` normalized; ``"unit"``: ``-mean(updates)`` normalized;
    ``"sign"``: ``-sign(mean(updates))``. A zero vector when the normalized direction is zero.
    """
    updates = _f64(updates)
    if kind == "std":
        p = -updates.std(axis=0)
    elif kind == "unit":
        p = -updates.mean(axis=0)
    elif kind == "sign":
        return np.asarray(-np.sign(updates.mean(axis=0)), dtype=np.float64)
    else:
        raise UsageError(f"perturbation must be 'std', 'unit' or 'sign', got {kind!r}")
    norm = float(np.linalg.norm(p))
    return p / norm if norm > 0 else np.zeros_like(p)


def min_max_gamma(
    updates: Array, perturbation: Array, objective: Literal["max", "sum"] = "max"
) -> float:
    """Largest ``gamma >= 0`` with ``m = mean(updates) + gamma * perturbation`` within bounds.

    ``objective="max"`` (Min-Max): ``max_i ||m - u_i|| <= max_{i,j} ||u_i - u_j||``.
    ``objective="sum"`` (Min-Sum): ``sum_i ||m - u_i||^2 <= max_i sum_j ||u_i - u_j||^2``.

    Shejwalkar & Houmansadr find ``gamma`` by binary search. Both left-hand sides are convex
    quadratics in ``gamma`` that are feasible at 0 (the mean is a convex combination of the
    updates), so the feasible ``gamma >= 0`` form an interval ``[0, gamma*]`` and ``gamma*`` --
    the limit of that search -- has a closed form, used here. 0 when the perturbation is zero.
    """
    u = _f64(updates)
    p = _f64(perturbation)
    q = float(p @ p)
    if u.shape[0] == 0 or q == 0.0:
        return 0.0
    a = u.mean(axis=0)[None, :] - u  # m(0) - u_i
    d2 = _sq_dists(u)
    if objective == "max":
        c = np.maximum(float(d2.max()) - np.einsum("ij,ij->i", a, a), 0.0)  # T^2 - ||a_i||^2
        b = a @ p
        root = np.sqrt(b * b + q * c)
        # roots of q g^2 + 2 b g - c = 0, in the cancellation-free form for each sign of b
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(b > 0, c / (b + root), (root - b) / q)
        g = np.where(np.isfinite(g), g, 0.0)
        return float(max(g.min(), 0.0))
    if objective == "sum":
        # sum_i ||a_i + g p||^2 = sum_i ||a_i||^2 + k q g^2, because sum_i a_i = 0
        slack = float(d2.sum(axis=1).max()) - float(np.einsum("ij,ij->", a, a))
        return math.sqrt(max(slack, 0.0) / (u.shape[0] * q))
    raise UsageError(f"objective must be 'max' or 'sum', got {objective!r}")


def _agr_agnostic(
    name: str, objective: Literal["max", "sum"], perturbation: Perturbation
) -> Attack:
    if perturbation not in ("std", "unit", "sign"):
        raise UsageError(f"perturbation must be 'std', 'unit' or 'sign', got {perturbation!r}")

    def poison(ctx: AttackContext) -> F32:
        u = honest_updates(ctx)
        p = perturbation_vector(u, perturbation)
        gamma = min_max_gamma(u, p, objective) * ctx.param("gamma_scale", 1.0)
        return _finite32(_f64(ctx.prev_model) + u.mean(axis=0) + gamma * p)

    return Attack(name, "model", None, poison, needs_neighbors=True)


def min_max(perturbation: Perturbation = "std") -> Attack:
    """Min-Max, AGR-agnostic (Shejwalkar & Houmansadr, NDSS 2021).

    Announces ``prev + mean(U) + gamma * p`` where ``U`` are the honest updates
    (:func:`honest_updates`), ``p`` is ``-std(U)`` normalized (``"std"``), ``-mean(U)``
    normalized (``"unit"``) or ``-sign(mean(U))`` (``"sign"``), and ``gamma`` is the largest
    value keeping the malicious update's maximum distance to any honest update within the
    maximum honest pairwise distance (:func:`min_max_gamma`). Knob: ``params["gamma_scale"]``
    multiplies ``gamma`` (1.0). Fallback: with zero or one neighbour there is no spread,
    ``gamma = 0`` and the attacker announces the mean honest model (its own model when alone).
    """
    return _agr_agnostic("min_max", "max", perturbation)


def min_sum(perturbation: Perturbation = "std") -> Attack:
    """Min-Sum, AGR-agnostic (Shejwalkar & Houmansadr, NDSS 2021).

    As :func:`min_max`, but ``gamma`` keeps the malicious update's *sum of squared* distances to
    the honest updates within the largest such sum of any honest update. Same knob and fallback.
    """
    return _agr_agnostic("min_sum", "sum", perturbation)


def dfl_random(low: float = 0.7, high: float = 1.3) -> Attack:
    """The model-poisoning attack of the DFL paper (Tian et al.).

    Announces ``own * U(low, high)`` with independent uniform noise per weight (0.7-1.3 in the
    paper). Knobs: ``params["low"]``, ``params["high"]``.
    """

    def poison(ctx: AttackContext) -> F32:
        lo, hi = ctx.param("low", low), ctx.param("high", high)
        noise = _rng(ctx, "dfl_random").uniform(lo, hi, ctx.dim)
        return _finite32(_f64(ctx.own_model) * noise)

    return Attack("dfl_random", "model", None, poison)


def free_rider(source: Literal["any", "stale", "neighbor"] = "any") -> Attack:
    """Free riding (Lin, Du & Liu 2019, "Free-riders in Federated Learning"; Fraboni et al. 2021).

    The attacker does not train: it re-announces a model it has seen, chosen uniformly (seeded
    by the context) among ``stale_models`` (``"stale"``), ``neighbor_models`` (``"neighbor"``)
    or both (``"any"``). Fallback: with no such model it re-announces ``prev_model``, its own
    untrained model.
    """
    if source not in ("any", "stale", "neighbor"):
        raise UsageError(f"free_rider source must be 'any', 'stale' or 'neighbor', got {source!r}")

    def poison(ctx: AttackContext) -> F32:
        pool: list[Array] = []
        if source in ("any", "stale"):
            pool.extend(ctx.stale_models)
        if source in ("any", "neighbor"):
            pool.extend(ctx.neighbors)
        if not pool:
            return _finite32(ctx.prev_model)
        pick = int(_rng(ctx, "free_rider").integers(len(pool)))
        return _finite32(pool[pick])

    return Attack("free_rider", "model", None, poison, needs_neighbors=source != "stale")


def no_attack() -> Attack:
    """No attack: the node behaves honestly (the benchmark's baseline)."""
    return Attack("none", "none", None, None)


# --------------------------------------------------------------------------- registry

#: Every attack with its default settings, by name.
ATTACKS: dict[str, Attack] = {
    a.name: a
    for a in (
        no_attack(),
        label_flip(),
        random_data(),
        backdoor(),
        sign_flip(),
        gaussian(),
        scaling(),
        alie(),
        ipm(),
        min_max(),
        min_sum(),
        dfl_random(),
        free_rider(),
    )
}


def get_attack(name: str) -> Attack:
    """The registered attack ``name``.

    Raises
    ------
    UsageError
        If ``name`` is unknown; the message lists the valid names.
    """
    try:
        return ATTACKS[name]
    except KeyError:
        valid = ", ".join(sorted(ATTACKS))
        raise UsageError(f"unknown attack {name!r}; valid attacks: {valid}") from None
