"""A node's home directory: its key, its config and its store.

```
HOME/
  node.key       the Ed25519 seed (hex, one line after a format tag), mode 0600
  config.toml    every setting (see dfl.config)
  data/store/    the LMDB block store (node.data_dir in the config, relative to HOME)
```

The key that signs blocks is the key that identifies the peer on the network.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from dfl.config import Config, load_config, render_toml
from dfl.crypto import Identity
from dfl.errors import ConfigError, UsageError

__all__ = ["CONFIG_FILE", "KEY_FILE", "Home"]

KEY_FILE = "node.key"
CONFIG_FILE = "config.toml"
_KEY_TAG = "dfl-ed25519-seed-v1"


@dataclass(frozen=True)
class Home:
    path: Path

    @property
    def key_path(self) -> Path:
        return self.path / KEY_FILE

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    def store_path(self, config: Config | None = None) -> Path:
        cfg = config or self.config()
        base = Path(cfg.node.data_dir)
        return (base if base.is_absolute() else self.path / base) / "store"

    def exists(self) -> bool:
        return self.key_path.exists()

    def init(
        self, config: Config, *, force: bool = False, identity: Identity | None = None
    ) -> Identity:
        """Create the key (0600) and config; refuse to overwrite an existing key unless forced.

        A new random identity is generated unless one is given (the simulator gives its
        deterministic ones, so a simulated node's directory is a real node home).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if self.key_path.exists() and not force:
            raise UsageError(
                f"{self.key_path} already exists; refusing to overwrite a node key "
                "(use --force to replace it, which changes the node's identity)"
            )
        identity = identity or Identity.generate()
        tmp = self.key_path.with_suffix(".tmp")
        if tmp.exists():
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(f"{_KEY_TAG}\n{identity.seed.hex()}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.key_path)
        self.config_path.write_text(render_toml(config), encoding="utf-8")
        return identity

    def identity(self) -> Identity:
        try:
            text = self.key_path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise UsageError(
                f"{self.key_path}: no node key here (run `dfl init --home {self.path}` first)"
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{self.key_path}: cannot read node key: {e}") from None
        mode = stat.S_IMODE(self.key_path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{self.key_path}: key file is readable by others (mode {mode:o}); chmod 600 it"
            )
        lines = text.split()
        if len(lines) != 2 or lines[0] != _KEY_TAG:
            raise ConfigError(f"{self.key_path}: not a dfl key file")
        try:
            seed = bytes.fromhex(lines[1])
        except ValueError:
            raise ConfigError(f"{self.key_path}: key is not hex") from None
        if len(seed) != 32:
            raise ConfigError(f"{self.key_path}: key must be 32 bytes")
        return Identity.from_seed(seed)

    def config(self) -> Config:
        return load_config(self.config_path)
