"""Error hierarchy of dfl.

Errors say whose fault it was (the h11 habit):

* :class:`InvalidBlock` -- a *peer* sent something that breaks the protocol (bad bytes, bad
  signature, broken link...). The node penalizes the sender and keeps running.
* :class:`UsageError` -- the *caller* misused the API or gave a bad config/flag.
* :class:`StoreError` -- the local store is corrupt, truncated or unusable; names the file.
* :class:`DataError` -- a dataset could not be fetched, read or verified.

Every error carries a human-readable message that names what was wrong.
"""

from __future__ import annotations


class DflError(Exception):
    """Base class of every error dfl raises on purpose."""


class InvalidBlock(DflError):
    """A block (or blob, or header) from a peer is invalid.

    ``reason`` is a short machine-readable code (``"bad-signature"``, ``"height-gap"`` ...);
    ``detail`` is free text for humans.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class UsageError(DflError):
    """The caller misused an API or supplied a bad configuration value."""


class ConfigError(UsageError):
    """A configuration file or flag is invalid."""


class StoreError(DflError):
    """The block store is unusable (corrupt, truncated, wrong format); names the file."""


class DataError(DflError):
    """A dataset could not be obtained or failed verification."""


class ChainError(InvalidBlock):
    """A block breaks a chain rule; names the author (public key) and height of the first bad block.

    ``reason`` is the same short code :class:`InvalidBlock` uses (``"bad-signature"``,
    ``"height-gap"`` ...).
    """

    def __init__(self, author: bytes, height: int, reason: str, detail: str = "") -> None:
        self.author = author
        self.height = height
        super().__init__(reason, detail)

    def __str__(self) -> str:
        where = f"author {self.author.hex()[:16]}.. height {self.height}"
        return f"{where}: {self.reason}" + (f": {self.detail}" if self.detail else "")

    def __reduce__(self) -> tuple[type[ChainError], tuple[bytes, int, str, str]]:
        return (ChainError, (self.author, self.height, self.reason, self.detail))
