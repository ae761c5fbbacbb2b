"""Smoke test of ``benchmarks.network``: real host processes on 127.0.0.1, every wait bounded."""

from __future__ import annotations

import argparse

import trio

from benchmarks import network as N


def test_two_processes_deliver_every_header_with_sane_latency() -> None:
    args = argparse.Namespace(messages=3, gap_ms=100.0, drain_s=3.0, settle_s=1.0)
    r = trio.run(N.propagation_processes, 2, args)
    assert r["expected"] == 2 * 1 * 3
    assert r["delivered"] == r["expected"]
    assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["max_ms"] < 5000
    assert r["reach_all_count"] == 6
    assert 300 < r["header_bytes"] < 600  # a real signed header, as the daemon gossips
    assert r["rejected"] == 0


def test_blob_fetch_between_two_processes() -> None:
    rates = trio.run(N.blob_processes, (4_000, 400_000), 2)
    assert sorted(rates) == [4_000, 400_000]
    assert all(len(r) == 2 and all(x > 0 for x in r) for r in rates.values())


def test_gossip_cpu_child_runs_both_variants_and_delivers_everything() -> None:
    from benchmarks import gossip_cpu as G

    for fixes in (False, True):  # each in its own interpreter, as the benchmark runs them
        r = G._run_child(8, fixes)
        assert r["expected"] == 8 * (G.HOSTS - 1)
        assert r["delivered"] == r["expected"]
        assert r["cpu_s"] > 0 and r["ms_per_delivery"] > 0
