"""Network benchmark: blob throughput between two processes, header propagation latency.

Run ``python -m benchmarks.network`` (``--quick`` for a smoke run). It prints a table and writes
the ``## Network`` section of ``benchmarks/RESULTS.md``.

* Blob transfer: a server process holds 4 MB and 16 MB blobs; this process fetches each one
  ``--repeats`` times over ``/dfl/blob/1`` on 127.0.0.1 (Noise + Yamux, digest checked on
  arrival) and reports the median MB/s (1 MB = 1e6 bytes).
* Header propagation: ``N`` hosts (4 and 8) run in **this one process** (one trio loop, so
  every hop also pays for the other hosts' CPU); each joins via host 0 and discovers the rest
  through ``/dfl/peers/1``. Rotating publishers send ``--messages`` 1 KiB headers 200 ms apart;
  the latency
  of a message to a host is the time from ``publish`` to its arrival in that host's inbox.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import platform
import statistics
import subprocess
import sys
from contextlib import AsyncExitStack

import trio

from dfl.p2p.host import HostConfig, P2PHost, open_host

TOPIC = "/dfl/bench/headers/1"
SIZES = (4_000_000, 16_000_000)


def _blob(size: int) -> bytes:
    return hashlib.shake_256(size.to_bytes(8, "big")).digest(size)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def _accept(origin: str, data: bytes) -> bool:
    return True


def _no_blob(digest: bytes) -> bytes | None:
    return None


async def _serve() -> None:
    """Server process: print the listen address, serve blobs until stdin closes."""
    store = {_digest(b): b for b in map(_blob, SIZES)}
    cfg = HostConfig(seed=b"\x51" * 32, topic=TOPIC, blob_rate_per_peer=100.0)
    async with open_host(cfg, validate=_accept, serve_blob=store.get) as host:
        print(host.listen_addrs[0], flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)


async def _blob_bench(repeats: int) -> dict[int, list[float]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.network", "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        addr = (await trio.to_thread.run_sync(proc.stdout.readline)).strip()
        cfg = HostConfig(seed=b"\x52" * 32, topic=TOPIC)
        rates: dict[int, list[float]] = {size: [] for size in SIZES}
        async with open_host(cfg, validate=_accept, serve_blob=_no_blob) as host:
            await host.connect(addr)
            server = addr.rsplit("/p2p/", 1)[1]
            for size in SIZES:
                digest = _digest(_blob(size))
                await host.fetch_blob(server, digest, timeout_s=60)  # warm-up
                for _ in range(repeats):
                    t0 = trio.current_time()
                    data = await host.fetch_blob(server, digest, timeout_s=60)
                    elapsed = trio.current_time() - t0
                    assert len(data) == size
                    rates[size].append(size / 1e6 / elapsed)
        return rates
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=30)


async def _propagation_bench(n: int, messages: int) -> dict[str, float]:
    async with AsyncExitStack() as stack:
        hosts: list[P2PHost] = []
        for i in range(n):
            boot = (hosts[0].listen_addrs[0],) if hosts else ()
            cfg = HostConfig(seed=bytes([0x60 + i]) * 32, topic=TOPIC, bootstrap=boot)
            hosts.append(
                await stack.enter_async_context(
                    open_host(cfg, validate=_accept, serve_blob=_no_blob)
                )
            )
        with trio.fail_after(30):
            while not all(
                len(h.connected_peers()) >= min(n - 1, 3) and h.mesh_peers() for h in hosts
            ):
                await trio.sleep(0.1)
        await trio.sleep(2.0)  # let the mesh settle over a couple of heartbeats
        sent_at: dict[bytes, float] = {}
        latencies: list[float] = []
        reach_all: dict[bytes, float] = {}
        pending: dict[bytes, int] = {}

        async def listen(host: P2PHost) -> None:
            async for _, data in host.messages():
                now = trio.current_time()
                latencies.append(now - sent_at[data])
                pending[data] -= 1
                if pending[data] == 0:
                    reach_all[data] = now - sent_at[data]

        async with trio.open_nursery() as nursery:
            for host in hosts:
                nursery.start_soon(listen, host)
            for k in range(messages):
                payload = k.to_bytes(4, "big") + os.urandom(1020)
                pending[payload] = n - 1
                sent_at[payload] = trio.current_time()
                await hosts[k % n].publish(payload)
                await trio.sleep(0.2)
            with trio.move_on_after(10):
                while len(reach_all) < messages:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        lat = sorted(latencies)
        return {
            "delivered": len(latencies) / (messages * (n - 1)),
            "median_ms": 1e3 * statistics.median(lat),
            "p95_ms": 1e3 * lat[int(0.95 * (len(lat) - 1))],
            "all_median_ms": 1e3 * statistics.median(reach_all.values()) if reach_all else -1,
        }


async def _main(args: argparse.Namespace) -> str:
    repeats = 2 if args.quick else args.repeats
    messages = 10 if args.quick else args.messages
    rates = await _blob_bench(repeats)
    prop = {n: await _propagation_bench(n, messages) for n in (4, 8)}
    cmd = "python -m benchmarks.network" + (" --quick" if args.quick else "")
    lines = [
        f"Command: `{cmd}` (repeats={repeats}, messages={messages})  ",
        f"Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, py-libp2p 0.8.1 (TCP + Noise + Yamux), loopback; "
        "the machine was shared with other jobs",
        "",
        "| blob size | fetches | median MB/s | min MB/s | max MB/s |",
        "|---|---|---|---|---|",
    ]
    for size, r in rates.items():
        lines.append(
            f"| {size / 1e6:g} MB | {len(r)} | {statistics.median(r):.1f} | {min(r):.1f} "
            f"| {max(r):.1f} |"
        )
    lines += [
        "",
        "Blob fetches: two processes (server + client), digest verified on arrival.",
        "",
        "| hosts (one process) | delivered | median latency ms | p95 ms | median to reach all ms |",
        "|---|---|---|---|---|",
    ]
    for n, p in prop.items():
        lines.append(
            f"| {n} | {100 * p['delivered']:.0f} % | {p['median_ms']:.1f} | {p['p95_ms']:.1f} "
            f"| {p['all_median_ms']:.1f} |"
        )
    lines += [
        "",
        "Header propagation: all hosts share one trio loop in one process (1 KiB headers, "
        "gossipsub D=6, heartbeat 1 s, publishers rotate, 200 ms apart).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smoke run (few repeats)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--messages", type=int, default=25)
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    if args.serve:
        trio.run(_serve)
        return
    section = trio.run(_main, args)
    print(section)
    if not args.no_write:
        from benchmarks._results import update_section

        print("wrote", update_section("Network", section))


if __name__ == "__main__":
    main()
