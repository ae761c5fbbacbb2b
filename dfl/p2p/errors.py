"""Errors of the networking layer.

Whose fault it was decides the class (see :mod:`dfl.errors`):

* a peer sent bytes that break a rule (wrong digest, oversized blob, malformed frame) ->
  :class:`dfl.errors.InvalidBlock` with a short ``reason`` code; the host also penalizes it;
* the network did not deliver (timeout, unreachable, refused, not found, banned) ->
  :class:`P2PError` or one of its subclasses below; nobody is proven guilty;
* the caller misused the API -> :class:`dfl.errors.UsageError`.
"""

from __future__ import annotations

from dfl.errors import DflError


class P2PError(DflError):
    """A network operation failed without proof that the peer misbehaved."""


class PeerUnreachable(P2PError):
    """The peer could not be dialled, or the stream could not be opened or broke off."""


class P2PTimeout(P2PError):
    """The peer did not answer (or did not finish answering) in time."""


class BlobNotFound(P2PError):
    """The peer answered cleanly that it does not hold the requested blob."""


class PeerBusy(P2PError):
    """The peer refused the request because this node exceeded its rate or concurrency limit."""


class PeerBanned(P2PError):
    """The operation targets a peer this node has banned."""
