"""Gossip CPU: CPU time per delivered header, with and without dfl's py-libp2p fixes.

Run ``python -m benchmarks.gossip_cpu`` (``--runs N``, ``--headers M``). It writes the
``## Gossip CPU`` section of ``benchmarks/RESULTS.md`` unless ``--no-write``.

Four :class:`dfl.p2p.host.P2PHost` in **one** process and one trio loop (all connected, gossip
mesh formed), on 127.0.0.1, TCP + Noise + Yamux as a daemon runs them. The hosts take turns
publishing ``M`` real signed dfl headers, 20 ms apart; every host validates what it receives as
the daemon does (decode, network, signature). Measured: the process CPU from the first publish
until every header reached the other three hosts, minus the CPU the same hosts use idle over
the same wall time, divided by the deliveries (``3 M``). Each run starts a fresh interpreter;
runs alternate between the two variants:

* ``with fixes``: as shipped (:mod:`dfl.p2p._libp2p_fixes`);
* ``without``: py-libp2p's own peer-record handling restored in that interpreter.

One process keeps the number free of the scheduler noise of 4 processes on 2 shared cores; it
is a CPU cost per message, not a latency (``benchmarks/network.py`` measures latency).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

HOSTS = 4


def _disable_fixes() -> None:
    from libp2p.pubsub import gossipsub, pubsub

    import dfl.p2p.host as host_module

    name = "maybe_consume_signed_record"
    original = getattr(vars(pubsub)[name], "original", None)
    if original is not None:
        vars(pubsub)[name] = original
        vars(gossipsub)[name] = original
    vars(host_module)["cache_host_addrs"] = lambda *a, **k: None


def measure(headers: int, fixes: bool) -> dict[str, Any]:
    """One run in this process: CPU seconds per delivered header (see module doc)."""
    import trio

    if not fixes:
        _disable_fixes()
    from benchmarks.network import _header_template, _no_blob, _signed_header, _validate_header
    from dfl.crypto import Identity
    from dfl.p2p.host import HostConfig, open_host

    out: dict[str, Any] = {}

    async def main() -> None:
        async with AsyncExitStack() as stack:
            hosts: list[Any] = []
            for i in range(HOSTS):
                boot = tuple(hosts[0].listen_addrs) if hosts else ()
                cfg = HostConfig(
                    seed=bytes([i + 1]) * 32,
                    topic="/dfl/bench/gossip-cpu/1",
                    listen=("/ip4/127.0.0.1/tcp/0",),
                    bootstrap=boot,
                )
                host = await stack.enter_async_context(
                    open_host(cfg, validate=_validate_header, serve_blob=_no_blob)
                )
                hosts.append(host)
            with trio.fail_after(60):
                while not all(
                    len(h.connected_peers()) == HOSTS - 1 and len(h.mesh_peers()) >= HOSTS - 1
                    for h in hosts
                ):
                    await trio.sleep(0.1)
            await trio.sleep(2.0)
            ids = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(HOSTS)]
            templates = [_header_template(x) for x in ids]
            got = [0] * HOSTS

            async def drain(i: int) -> None:
                async for _ in hosts[i].messages():
                    got[i] += 1

            async with trio.open_nursery() as nursery:
                for i in range(HOSTS):
                    nursery.start_soon(drain, i)
                c0, t0 = time.process_time(), time.perf_counter()
                for k in range(headers):
                    i = k % HOSTS
                    await hosts[i].publish(_signed_header(ids[i], templates[i], k, time.time_ns()))
                    await trio.sleep(0.02)
                with trio.move_on_after(30):
                    while sum(got) < headers * (HOSTS - 1):
                        await trio.sleep(0.02)
                c1, t1 = time.process_time(), time.perf_counter()
                await trio.sleep(t1 - t0)
                c2 = time.process_time()
                nursery.cancel_scope.cancel()
            delivered = sum(got)
            busy = (c1 - c0) - (c2 - c1)
            out.update(
                delivered=delivered,
                expected=headers * (HOSTS - 1),
                wall_s=t1 - t0,
                cpu_s=c1 - c0,
                idle_cpu_s=c2 - c1,
                ms_per_delivery=1000 * busy / max(delivered, 1),
            )

    trio.run(main)
    return out


def _run_child(headers: int, fixes: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.gossip_cpu", "--one", json.dumps([headers, fixes])]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"gossip_cpu child failed ({res.returncode}): {res.stderr[-2000:]}")
    row: dict[str, Any] = json.loads(lines[-1])
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per variant (alternating)")
    ap.add_argument("--headers", type=int, default=200)
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one run, print JSON
    args = ap.parse_args(argv)
    if args.one:
        headers, fixes = json.loads(args.one)
        print(json.dumps(measure(int(headers), bool(fixes))))
        return 0
    load = os.getloadavg()
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for r in range(args.runs):
        for fixes in (False, True):
            row = _run_child(args.headers, fixes)
            results[fixes].append(row)
            print(
                f"run {r + 1} {'with fixes' if fixes else 'without  '}: "
                f"{row['ms_per_delivery']:.2f} ms CPU per delivered header "
                f"({row['delivered']}/{row['expected']} delivered)",
                flush=True,
            )
    lines = [
        f"Command: `python -m benchmarks.gossip_cpu --runs {args.runs} --headers {args.headers}` "
        f"({started}; load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}).",
        "",
        f"{HOSTS} hosts in one process exchange {args.headers} real signed headers; CPU per "
        "delivered header net of idle CPU (definitions in `benchmarks/gossip_cpu.py`). "
        "Runs alternate, each in a fresh interpreter.",
        "",
        "| variant | median ms | min | max | runs | all delivered |",
        "|---|---:|---:|---:|---:|---|",
    ]
    medians = {}
    for fixes in (False, True):
        ms = [r["ms_per_delivery"] for r in results[fixes]]
        medians[fixes] = statistics.median(ms)
        ok = all(r["delivered"] == r["expected"] for r in results[fixes])
        name = "with dfl's py-libp2p fixes" if fixes else "py-libp2p's own record handling"
        lines.append(
            f"| {name} | {medians[fixes]:.2f} | {min(ms):.2f} | {max(ms):.2f} | {len(ms)} "
            f"| {'yes' if ok else 'NO'} |"
        )
    change = 100 * (1 - medians[True] / medians[False])
    lines += ["", f"CPU per delivered header with the fixes: {change:.0f} % less (medians)."]
    md = "\n".join(lines) + "\n"
    print(md)
    if not args.no_write:
        from benchmarks._results import update_section

        print(f"wrote {update_section('Gossip CPU', md)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
