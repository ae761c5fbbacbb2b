"""Simulation scenarios: one frozen, validated dataclass, loadable from TOML.

A scenario fixes everything that determines a run; with the same scenario and seed, every node
ends with the same chain (identical block hashes), whatever the number of worker processes.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from dfl.errors import ConfigError

__all__ = ["Churn", "Partition", "Scenario", "load_scenario"]


@dataclass(frozen=True)
class Churn:
    """Node ``node`` is offline from ``leave_s`` to ``rejoin_s`` (virtual seconds)."""

    node: int
    leave_s: float
    rejoin_s: float


@dataclass(frozen=True)
class Partition:
    """Links between ``group`` and the rest are cut from ``start_s`` until ``heal_s``."""

    group: tuple[int, ...]
    start_s: float
    heal_s: float


@dataclass(frozen=True)
class Scenario:
    name: str = "default"
    nodes: int = 20
    rounds: int = 30
    topology: str = (
        "k_regular"  # complete | ring | k_regular | erdos_renyi | small_world | file:PATH
    )
    degree: int = 4
    dataset: str = "digits"
    model: str = "mlp"
    partition: str = "dirichlet:0.5"
    rule: str = "default"
    attack: str = "none"
    malicious: float = 0.0  # share of malicious nodes (rounded down), or a count if >= 1
    seed: int = 0
    lr: float = 0.1
    batch_size: int = 32
    local_epochs: int = 2
    # virtual time and links
    train_time_s: float = 1.0
    round_timeout_s: float = 5.0
    max_updates: int = 8
    max_staleness: int = 2
    latency_ms: float = 20.0
    jitter_ms: float = 5.0
    bandwidth_mbps: float = 100.0
    drop_rate: float = 0.0
    churn: tuple[Churn, ...] = ()
    partitions: tuple[Partition, ...] = ()
    # execution
    workers: int = 0  # 0 = one per core (capped at the number of nodes); 1 = in-process
    store: str = "memory"  # memory | lmdb
    check_signatures: bool = True
    eval_samples: int = 1000  # test samples for the per-round accuracy curve
    eval_every: int = 1  # evaluate every k-th round (and always the last) for the curve
    final_eval_samples: int = 0  # test samples for the final accuracy; 0 = the whole test set
    # f told to robust rules; -1 = expected among a node's neighbours: ceil(share x degree)
    num_byzantine: int = -1

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"scenario {self.name!r}: {msg}")

        need(self.nodes >= 1, "nodes must be >= 1")
        need(self.rounds >= 1, "rounds must be >= 1")
        need(self.degree >= 0, "degree must be >= 0")
        need(0 <= self.drop_rate < 1, "drop_rate must be in [0, 1)")
        need(self.latency_ms >= 0 and self.jitter_ms >= 0, "latency and jitter must be >= 0")
        need(self.bandwidth_mbps > 0, "bandwidth_mbps must be > 0")
        need(self.malicious >= 0, "malicious must be >= 0")
        need(
            self.num_malicious < self.nodes or (self.nodes == 1 and self.num_malicious == 0),
            "malicious must leave at least one honest node",
        )
        need(self.store in ("memory", "lmdb"), "store: memory or lmdb")
        need(self.workers >= 0, "workers must be >= 0")
        need(self.eval_samples >= 1 and self.eval_every >= 1, "eval_samples, eval_every >= 1")
        need(self.final_eval_samples >= 0, "final_eval_samples must be >= 0")
        need(self.train_time_s > 0 and self.round_timeout_s > 0, "times must be > 0")
        for c in self.churn:
            need(0 <= c.node < self.nodes and c.leave_s < c.rejoin_s, f"bad churn entry {c}")
        for p in self.partitions:
            need(
                all(0 <= n < self.nodes for n in p.group) and p.start_s < p.heal_s,
                f"bad partition entry {p}",
            )

    @property
    def num_malicious(self) -> int:
        if self.malicious >= 1:
            return int(self.malicious)
        return int(self.malicious * self.nodes + 1e-9)

    def with_overrides(self, **kw: Any) -> Scenario:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def scenario_from_dict(data: dict[str, Any], name: str = "scenario") -> Scenario:
    known = {f.name: f for f in fields(Scenario)}
    kw: dict[str, Any] = {"name": name}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"scenario {name!r}: unknown key {key!r} (known: {', '.join(known)})")
        if key == "churn":
            kw[key] = tuple(Churn(**c) for c in value)
        elif key == "partitions":
            kw[key] = tuple(
                Partition(tuple(p["group"]), float(p["start_s"]), float(p["heal_s"])) for p in value
            )
        else:
            default = getattr(Scenario(), key)
            if (
                isinstance(default, float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            if type(default) is not type(value):
                raise ConfigError(
                    f"scenario {name!r}: {key} must be {type(default).__name__}, got {value!r}"
                )
            kw[key] = value
    try:
        return Scenario(**kw)
    except TypeError as e:
        raise ConfigError(f"scenario {name!r}: {e}") from None


def load_scenario(path: Path) -> Scenario:
    """Load a scenario TOML file; errors name the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such scenario file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    data = data.get("scenario", data)
    return scenario_from_dict(
        data, name=data.pop("name", path.stem) if "name" in data else path.stem
    )
