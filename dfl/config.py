"""One typed configuration for the daemon, the simulator and the CLI.

Invariants:

* every setting has a default, and :func:`render_toml` writes every setting, so a fresh
  ``config.toml`` documents the whole surface;
* :func:`load_config` rejects unknown sections/keys and wrong types with a :class:`ConfigError`
  naming the file, the key and what was expected -- a typo never silently falls back to a default;
* values are validated in ``__post_init__``: an invalid config object cannot exist.

Pure: stdlib only (``tomllib``), so the node core may depend on it.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

from dfl.block import TaskManifest
from dfl.errors import ConfigError

__all__ = [
    "Config",
    "LimitsConfig",
    "NodeConfig",
    "RobustConfig",
    "RoundConfig",
    "TaskConfig",
    "load_config",
    "render_toml",
    "task_manifest",
]


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class NodeConfig:
    """Where the node listens, whom it dials, where it keeps data."""

    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    bootstrap: tuple[str, ...] = ()
    data_dir: str = "data"  # relative to the home directory
    metrics_port: int = 0  # Prometheus metrics on 127.0.0.1; 0 = pick a free port, -1 = off
    max_peers: int = 32
    log_level: str = "info"

    def __post_init__(self) -> None:
        _require(
            all(a.startswith("/") for a in self.listen), "node.listen: multiaddrs start with '/'"
        )
        _require(
            all("/p2p/" in a for a in self.bootstrap),
            "node.bootstrap: every bootstrap multiaddr must end in /p2p/<peer id>",
        )
        _require(-1 <= self.metrics_port <= 65535, "node.metrics_port: -1..65535")
        _require(1 <= self.max_peers <= 1024, "node.max_peers: 1..1024")
        _require(
            self.log_level in ("debug", "info", "warning", "error"),
            "node.log_level: one of debug, info, warning, error",
        )


@dataclass(frozen=True)
class TaskConfig:
    """The learning task. Everything here except node_index/num_nodes goes into the task
    manifest, whose hash is the network id: one manifest = one network."""

    network: str = "dfl-mnist"
    dataset: str = "mnist"
    model: str = "mlp"
    partition: str = "dirichlet:0.5"
    num_nodes: int = 4
    node_index: int = 0
    seed: int = 0
    lr: float = 0.05
    batch_size: int = 32
    local_epochs: int = 1
    momentum: float = 0.0
    validation_share: float = 0.1  # share of the local shard kept as the node's validation data

    def __post_init__(self) -> None:
        _require(bool(self.network) and len(self.network) <= 64, "task.network: 1..64 characters")
        _require(self.num_nodes >= 1, "task.num_nodes must be >= 1")
        _require(
            0 <= self.node_index < self.num_nodes,
            f"task.node_index must be in 0..{self.num_nodes - 1} (got {self.node_index})",
        )
        _require(self.lr > 0, "task.lr must be > 0")
        _require(1 <= self.batch_size <= 4096, "task.batch_size: 1..4096")
        _require(1 <= self.local_epochs <= 100, "task.local_epochs: 1..100")
        _require(0 <= self.momentum < 1, "task.momentum: 0 <= m < 1")
        _require(0 <= self.validation_share < 0.9, "task.validation_share: 0 <= s < 0.9")
        scheme = self.partition.split(":", 1)[0]
        _require(
            scheme in ("iid", "dirichlet", "shards"),
            f"task.partition: iid, dirichlet:ALPHA or shards:K (got {self.partition!r})",
        )


@dataclass(frozen=True)
class RoundConfig:
    """Round timing: wait for up to ``max_updates`` neighbour updates or ``timeout_s``."""

    timeout_s: float = 10.0
    max_updates: int = 8
    max_staleness: int = 2  # accept peer blocks from rounds >= own round - max_staleness
    min_interval_s: float = 0.0  # lower bound on a round's duration (rate-limits a fast node)

    def __post_init__(self) -> None:
        _require(0 < self.timeout_s <= 3600, "round.timeout_s: 0 < t <= 3600")
        _require(0 <= self.max_updates <= 1024, "round.max_updates: 0..1024")
        _require(0 <= self.max_staleness <= 1000, "round.max_staleness: 0..1000")
        _require(0 <= self.min_interval_s <= 3600, "round.min_interval_s: 0..3600")


@dataclass(frozen=True)
class RobustConfig:
    """Which robust rule filters and aggregates peer models."""

    rule: str = "default"
    num_byzantine: int = 1  # f assumed by rules that need it (krum, bulyan, trimmed mean...)
    # Standing: an author is ignored once its reputation (from signed verdicts) drops below this.
    min_reputation: float = 0.2
    # Validation samples a rule evaluates each candidate on (accuracy guard, dfl, ubar): the
    # defense's CPU cost scales with it (benchmarks/RESULTS.md, Overhead).
    eval_samples: int = 256

    def __post_init__(self) -> None:
        _require(bool(self.rule), "robust.rule must name a rule")
        _require(0 <= self.num_byzantine <= 1000, "robust.num_byzantine: 0..1000")
        _require(0 <= self.min_reputation <= 1, "robust.min_reputation: 0..1")
        _require(1 <= self.eval_samples <= 1_000_000, "robust.eval_samples: 1..1000000")


@dataclass(frozen=True)
class LimitsConfig:
    """Hard limits on what a peer may send and on what the node keeps."""

    max_header_bytes: int = 64 * 1024
    max_blob_bytes: int = 64 * 1024 * 1024
    blob_timeout_s: float = 30.0
    penalty_threshold: float = 10.0  # penalty points before a peer is disconnected and banned
    prune_blobs_after_rounds: int = 20  # peer model blobs older than this are deleted

    def __post_init__(self) -> None:
        _require(
            1024 <= self.max_header_bytes <= 1024 * 1024, "limits.max_header_bytes: 1 KiB..1 MiB"
        )
        _require(1 <= self.max_blob_bytes <= 1 << 30, "limits.max_blob_bytes: 1 B..1 GiB")
        _require(0 < self.blob_timeout_s <= 600, "limits.blob_timeout_s: 0 < t <= 600")
        _require(self.penalty_threshold > 0, "limits.penalty_threshold must be > 0")
        _require(self.prune_blobs_after_rounds >= 1, "limits.prune_blobs_after_rounds must be >= 1")


@dataclass(frozen=True)
class Config:
    """The whole configuration: one section per concern."""

    node: NodeConfig = field(default_factory=NodeConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    round: RoundConfig = field(default_factory=RoundConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def with_overrides(self, **sections: dict[str, Any]) -> Config:
        """Return a copy with some keys replaced, e.g. ``with_overrides(task={"model": "lenet"})``.

        ``None`` values are ignored (unset CLI flags). Values are type-checked like file values.
        """
        new = self
        for section, values in sections.items():
            current = getattr(new, section, None)
            if current is None:
                raise ConfigError(f"unknown config section {section!r}")
            clean = {k: v for k, v in values.items() if v is not None}
            if clean:
                new = replace(new, **{section: _build(type(current), clean, section, current)})
        return new


_SECTIONS: dict[str, type] = {
    "node": NodeConfig,
    "task": TaskConfig,
    "round": RoundConfig,
    "robust": RobustConfig,
    "limits": LimitsConfig,
}


def _coerce(value: Any, typ: Any, where: str) -> Any:
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ == tuple[str, ...]:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    base = typ if isinstance(typ, type) else object
    if base is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    if not isinstance(value, base):
        raise ConfigError(
            f"{where}: expected {base.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _build(cls: type, values: dict[str, Any], section: str, base: Any = None) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown key {section}.{key} (known: {', '.join(sorted(known))})")
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    if base is not None:
        return replace(base, **kwargs)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from a parsed TOML document (raises :class:`ConfigError`)."""
    sections = {}
    for name, values in data.items():
        if name not in _SECTIONS:
            raise ConfigError(f"unknown config section [{name}] (known: {', '.join(_SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table")
        sections[name] = _build(_SECTIONS[name], values, name)
    return Config(**sections)


def load_config(path: Path) -> Config:
    """Read ``config.toml``; every error names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file (run `dfl init --home DIR` first)"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r}")


def render_toml(config: Config) -> str:
    """Render every setting of ``config`` as TOML (round-trips through :func:`load_config`)."""
    lines = ["# dfl node configuration: every setting with its value.", ""]
    for section in fields(Config):
        obj = getattr(config, section.name)
        lines.append(f"[{section.name}]")
        doc = (type(obj).__doc__ or "").strip().splitlines()
        if doc:
            lines.insert(len(lines) - 1, f"# {doc[0]}")
        for f in dataclasses.fields(obj):
            lines.append(f"{f.name} = {_toml_value(getattr(obj, f.name))}")
        lines.append("")
    return "\n".join(lines)


def task_manifest(config: Config) -> TaskManifest:
    """The task manifest of ``config``; its hash is the network id (one manifest = one network).

    ``node_index`` is not part of it: every node of a network shares the manifest.
    """
    t = config.task
    return TaskManifest(
        name=t.network,
        model=t.model,
        dataset=t.dataset,
        partition=t.partition,
        lr=t.lr,
        batch_size=t.batch_size,
        local_epochs=t.local_epochs,
        round_ms=int(config.round.timeout_s * 1000),
        seed=t.seed,
        num_nodes=t.num_nodes,
    )
