"""Seeded network topologies (networkx generators), as sorted adjacency lists."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from dfl.errors import ConfigError

__all__ = ["TOPOLOGIES", "make_topology"]

TOPOLOGIES = ("complete", "ring", "k_regular", "erdos_renyi", "small_world", "file:PATH")


def _from_file(path: Path, n: int) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(range(n))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read edge list: {e.strerror}") from None
    for lineno, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        try:
            a, b = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise ConfigError(f"{path}:{lineno}: expected 'A B' node indices") from None
        if not (0 <= a < n and 0 <= b < n) or a == b:
            raise ConfigError(f"{path}:{lineno}: edge {a}-{b} outside 0..{n - 1} or a self-loop")
        g.add_edge(a, b)
    return g


def make_topology(kind: str, n: int, degree: int, seed: int) -> list[list[int]]:
    """Neighbour lists of an undirected graph on ``n`` nodes.

    ``degree`` is the degree (k-regular), the mean degree (Erdos-Renyi) or the ring-lattice
    neighbourhood (small world, rewiring probability 0.1).
    """
    if n == 1:
        return [[]]
    k = max(1, min(degree, n - 1))
    if kind == "complete":
        g = nx.complete_graph(n)
    elif kind == "ring":
        g = nx.cycle_graph(n)
    elif kind == "k_regular":
        if (k * n) % 2:
            k = k - 1 if k > 1 else k + 1
        g = nx.random_regular_graph(k, n, seed=seed)
        # a random regular graph may be disconnected for small k; re-draw deterministically
        tries = 0
        while not nx.is_connected(g) and tries < 50:
            tries += 1
            g = nx.random_regular_graph(k, n, seed=seed + 7919 * tries)
    elif kind == "erdos_renyi":
        g = nx.erdos_renyi_graph(n, min(1.0, k / (n - 1)), seed=seed)
    elif kind == "small_world":
        g = nx.connected_watts_strogatz_graph(n, max(2, k), 0.1, seed=seed)
    elif kind.startswith("file:"):
        g = _from_file(Path(kind[5:]), n)
    else:
        raise ConfigError(f"unknown topology {kind!r} (known: {', '.join(TOPOLOGIES)})")
    return [sorted(int(j) for j in g.neighbors(i)) for i in range(n)]
