"""Tests for dfl.learning.partition (hypothesis for the invariants)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfl.errors import UsageError
from dfl.learning.partition import (
    PartitionScheme,
    label_histograms,
    parse_partition,
    partition,
)

schemes = st.one_of(
    st.just("iid"),
    st.sampled_from([0.01, 0.05, 0.1, 0.5, 1.0, 10.0, 1000.0]).map(lambda a: f"dirichlet:{a}"),
    st.integers(1, 4).map(lambda k: f"shards:{k}"),
)


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, int, str, int, int]:
    num_classes = draw(st.integers(2, 12))
    num_nodes = draw(st.integers(1, 40))
    min_samples = draw(st.integers(0, 8))
    n = draw(st.integers(max(num_nodes * max(min_samples, 1) * 4, 1), 3000))
    seed = draw(st.integers(0, 2**32 - 1))
    labels = np.random.default_rng(seed).integers(0, num_classes, n)
    return labels, num_nodes, draw(schemes), seed, min_samples


@settings(max_examples=60, deadline=None)
@given(problems())
def test_disjoint_covering_min_size_deterministic(
    problem: tuple[np.ndarray, int, str, int, int],
) -> None:
    labels, num_nodes, scheme, seed, min_samples = problem
    parts = partition(labels, num_nodes, scheme, seed=seed, min_samples=min_samples)
    assert len(parts) == num_nodes
    allidx = np.concatenate(parts)
    assert allidx.dtype == np.int64
    np.testing.assert_array_equal(np.sort(allidx), np.arange(len(labels)))  # disjoint + cover
    assert min(len(p) for p in parts) >= min_samples
    again = partition(labels, num_nodes, scheme, seed=seed, min_samples=min_samples)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    hist = label_histograms(labels, parts, int(labels.max()) + 1)
    assert hist.shape == (num_nodes, int(labels.max()) + 1)
    np.testing.assert_array_equal(hist.sum(axis=0), np.bincount(labels))


def _heterogeneity(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between node label distributions and the global one."""
    c = int(labels.max()) + 1
    hist = label_histograms(labels, parts, c).astype(float)
    local = hist / hist.sum(axis=1, keepdims=True)
    glob = np.bincount(labels, minlength=c) / len(labels)
    return float(0.5 * np.abs(local - glob).sum(axis=1).mean())


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([(0.05, 5.0), (0.1, 10.0), (1.0, 1000.0)]))
def test_heterogeneity_increases_as_alpha_falls(seed: int, alphas: tuple[float, float]) -> None:
    labels = np.random.default_rng(seed).integers(0, 10, 4000)
    low, high = alphas
    h_low = _heterogeneity(labels, partition(labels, 20, f"dirichlet:{low}", seed=seed))
    h_high = _heterogeneity(labels, partition(labels, 20, f"dirichlet:{high}", seed=seed))
    h_iid = _heterogeneity(labels, partition(labels, 20, "iid", seed=seed))
    assert h_low > h_high > 0.0
    assert h_iid < 0.2


def test_dirichlet_tiny_alpha_is_fast_and_respects_min() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 60000)
    t0 = time.perf_counter()
    parts = partition(labels, 1000, "dirichlet:0.01", seed=3, min_samples=20)
    assert time.perf_counter() - t0 < 2.0
    assert min(len(p) for p in parts) >= 20
    hist = label_histograms(labels, parts, 10)
    assert np.median((hist > 0).sum(axis=1)) <= 2  # still very non-IID


def test_shards_two_labels_per_node() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, 10, "shards:2", seed=0)
    hist = label_histograms(labels, parts, 10)
    assert all(len(p) == 100 for p in parts)
    assert (hist > 0).sum(axis=1).max() <= 2


def test_seed_changes_partition() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 500)
    a = partition(labels, 5, "dirichlet:0.5", seed=1)
    b = partition(labels, 5, "dirichlet:0.5", seed=2)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iid", PartitionScheme("iid")),
        (" Dirichlet:0.1 ", PartitionScheme("dirichlet", alpha=0.1)),
        ("shards:2", PartitionScheme("shards", shards=2)),
    ],
)
def test_parse_partition(text: str, expected: PartitionScheme) -> None:
    assert parse_partition(text) == expected
    assert parse_partition(str(expected)) == expected


@pytest.mark.parametrize(
    "text", ["", "iid:1", "dirichlet", "dirichlet:0", "dirichlet:-1", "dirichlet:nan",
             "dirichlet:x", "shards:0", "shards:1.5", "label:2"]
)  # fmt: skip
def test_parse_partition_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_partition(text)


def test_impossible_requests_raise() -> None:
    labels = np.zeros(50, dtype=np.int64)
    with pytest.raises(UsageError, match="min_samples"):
        partition(labels, 10, "iid", seed=0, min_samples=6)
    with pytest.raises(UsageError):
        partition(labels, 0, "iid", seed=0)
    with pytest.raises(UsageError):
        partition(labels.astype(float), 2, "iid", seed=0)
    with pytest.raises(UsageError, match="shards"):
        partition(labels, 10, "shards:6", seed=0, min_samples=1)
