"""Prometheus metrics of a running daemon, served on 127.0.0.1 only."""

from __future__ import annotations

import socket
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

__all__ = ["Metrics"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Metrics:
    """Gauges and counters of one daemon, on their own registry (no global state)."""

    def __init__(self, port: int = 0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.round = Gauge("dfl_round", "Current round", registry=r)
        self.height = Gauge("dfl_height", "Height of the own chain head", registry=r)
        self.peers = Gauge("dfl_connected_peers", "Connected peers", registry=r)
        self.accuracy = Gauge("dfl_val_accuracy", "Validation accuracy after training", registry=r)
        self.accepted = Counter("dfl_accepted", "Peer models accepted", registry=r)
        self.rejected = Counter("dfl_rejected", "Peer models rejected", registry=r)
        self.port = port or _free_port()
        self._server, self._thread = start_http_server(self.port, addr="127.0.0.1", registry=r)
        self._last = (0, 0)

    def update(self, daemon: Any) -> None:
        s = daemon.status
        self.round.set(daemon.core.round)
        self.height.set(s.height)
        self.peers.set(len(s.connected))
        if s.last_accuracy is not None:
            self.accuracy.set(s.last_accuracy)
        a, r = s.accepted_total, s.rejected_total
        if a > self._last[0]:
            self.accepted.inc(a - self._last[0])
        if r > self._last[1]:
            self.rejected.inc(r - self._last[1])
        self._last = (a, r)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
