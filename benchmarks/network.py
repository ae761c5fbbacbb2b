"""Network benchmark: header propagation latency and blob throughput, one libp2p host per process.

Run ``python -m benchmarks.network`` (``--quick`` for a smoke run, ``--in-process`` to add the
old all-hosts-in-one-trio-loop comparison). It prints a table and writes the ``## Network``
section of ``benchmarks/RESULTS.md``.

Every host is a :class:`dfl.p2p.host.P2PHost` in its **own OS process** (``multiprocessing``
spawn), on 127.0.0.1, TCP + Noise + Yamux, as a daemon runs it. The parent process runs no
host: it only coordinates the workers over a ``multiprocessing`` Pipe each (a small control
protocol: ``addr`` -> ``peers`` -> ``ready`` -> ``go`` -> ``result`` -> ``stop``), with every
step bounded in time; worker processes are killed if anything fails or they do not exit.

* Header propagation (``N`` = 2, 4 and 8 processes): each worker dials every lower-numbered
  worker (all pairs connected, as peer exchange makes a small network) and reports ``ready``
  once it has ``N - 1`` peers and a gossipsub mesh of ``min(N - 1, 4)``; after a settling pause
  every host publishes ``--messages`` real signed dfl block headers (3 parents and 3 verdicts:
  ~530 bytes). Publishers take turns: header ``k`` is sent by host ``k % N`` at
  ``t0 + k * gap`` (``--gap-ms``, default 500 ms: 2 headers/s network-wide, well above what a
  dfl round produces, but low enough that the hosts are not saturated on a shared 2-core
  machine; ``--gap-ms 12.5 --hosts 8`` gives the "every host every 100 ms" load). The send time
  (``time.time_ns()``, taken just before the header is signed) is carried in a metric of the
  header; receivers validate exactly as the daemon does (decode, network id, signature) and
  record ``arrival - send`` when the message leaves ``P2PHost.messages()``. All processes
  share one clock (same machine). N = 2 is the one-hop baseline.
* Blob transfer: one process serves 250 KB (about a LeNet model) and 10 MB blobs through its
  blob provider; another fetches each one ``--repeats`` times with ``fetch_blob`` (after one
  warm-up fetch; digest verified on arrival) and reports MB/s (1 MB = 1e6 bytes).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import logging
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection
from typing import Any, Protocol

import trio

from dfl.block import Block, Verdict, decode, make_block
from dfl.crypto import Identity
from dfl.errors import InvalidBlock
from dfl.p2p.errors import P2PError
from dfl.p2p.host import HostConfig, P2PHost, open_host

TOPIC = "/dfl/bench/headers/1"
NETWORK = hashlib.blake2b(b"dfl-bench-network", digest_size=32).digest()
BLOB_SIZES = (250_000, 10_000_000)
SEND_METRIC = "bench_send_ns"
MESH_LOW = 4  # gossip_degree 6 - 2: the mesh size a settled host keeps at least
STARTUP_S = 90.0  # spawning and importing libp2p in 8 processes on a busy 2-core machine
READY_S = 60.0

Msg = tuple[Any, ...]


class WorkerError(RuntimeError):
    """A worker reported an error or did not answer in time."""


# -- control links ------------------------------------------------------------------------


class Link(Protocol):
    def send(self, msg: Msg) -> None: ...

    async def recv(self, timeout_s: float) -> Msg: ...


class PipeLink:
    """One end of a ``multiprocessing`` Pipe, read without blocking the trio loop."""

    def __init__(self, conn: Connection, name: str) -> None:
        self.conn = conn
        self.name = name

    def send(self, msg: Msg) -> None:
        self.conn.send(msg)

    async def recv(self, timeout_s: float) -> Msg:
        with trio.move_on_after(timeout_s):
            while not self.conn.poll():
                await trio.lowlevel.wait_readable(self.conn.fileno())
            try:
                msg: Msg = self.conn.recv()
            except EOFError:
                raise WorkerError(f"{self.name}: control pipe closed (worker died?)") from None
            if msg[0] == "error":
                raise WorkerError(f"{self.name}: {msg[1]}")
            return msg
        raise WorkerError(f"{self.name}: no message within {timeout_s:g} s")


class ChannelLink:
    """In-process stand-in for :class:`PipeLink` (the ``--in-process`` comparison)."""

    def __init__(
        self, send: trio.MemorySendChannel[Msg], recv: trio.MemoryReceiveChannel[Msg]
    ) -> None:
        self._send = send
        self._recv = recv

    @classmethod
    def pair(cls) -> tuple[ChannelLink, ChannelLink]:
        a_send, a_recv = trio.open_memory_channel[Msg](math.inf)
        b_send, b_recv = trio.open_memory_channel[Msg](math.inf)
        return cls(a_send, b_recv), cls(b_send, a_recv)

    def send(self, msg: Msg) -> None:
        self._send.send_nowait(msg)

    async def recv(self, timeout_s: float) -> Msg:
        with trio.fail_after(timeout_s):
            return await self._recv.receive()


# -- worker side --------------------------------------------------------------------------


def _seed(i: int) -> bytes:
    return hashlib.blake2b(b"dfl-bench-%d" % i, digest_size=32).digest()


def _blob(size: int) -> bytes:
    return hashlib.shake_256(size.to_bytes(8, "big")).digest(size)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def _no_blob(digest: bytes) -> bytes | None:
    return None


def _accept(origin: str, data: bytes) -> bool:
    return True


def _validate_header(origin: str, data: bytes) -> bool | str:
    """The daemon's topic validator (``dfl.node.daemon.Daemon.validate``)."""
    try:
        block = decode(data)
    except InvalidBlock as e:
        return e.reason
    if block.network != NETWORK:
        return "wrong-network"
    if not block.verify_signature():
        return "bad-signature"
    return True


def _header_template(ident: Identity) -> Block:
    parents = [hashlib.blake2b(b"parent-%d" % i, digest_size=32).digest() for i in range(3)]
    return make_block(
        ident,
        network=NETWORK,
        height=0,
        prev=b"\x01" * 32,
        round=0,
        timestamp_ms=0,
        model=_blob(BLOB_SIZES[0]),
        samples=600,
        metrics={"accuracy": 0.97, "loss": 0.11, SEND_METRIC: 0.0},
        parents=parents,
        verdicts=[Verdict(p, True, 0.97, "ok") for p in parents],
    )


def _signed_header(ident: Identity, template: Block, seq: int, send_ns: int) -> bytes:
    metrics = tuple((k, float(send_ns) if k == SEND_METRIC else v) for k, v in template.metrics)
    draft = dataclasses.replace(
        template,
        height=seq,
        round=seq,
        timestamp_ms=send_ns // 1_000_000,
        metrics=metrics,
        signature=b"\0" * 64,
    )
    return dataclasses.replace(draft, signature=ident.sign(draft.signing_message())).encoded()


async def _wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    with trio.move_on_after(timeout_s):
        while not cond():
            await trio.sleep(0.05)
        return
    raise WorkerError(f"not {what} within {timeout_s:g} s")


async def _dial(host: P2PHost, addr: str, timeout_s: float = 30.0) -> None:
    with trio.move_on_after(timeout_s):
        while True:
            try:
                await host.connect(addr)
                return
            except P2PError:
                await trio.sleep(0.5)
    raise WorkerError(f"could not connect to {addr} within {timeout_s:g} s")


async def gossip_node(index: int, link: Link, p: dict[str, Any]) -> None:
    """One host of the propagation benchmark: connect, publish, record arrival latencies."""
    n, messages, gap_ns = p["n"], p["messages"], int(p["gap_s"] * 1e9)
    ident = Identity.from_seed(_seed(index))
    authors = {Identity.from_seed(_seed(i)).public_key: i for i in range(n)}
    template = _header_template(ident)
    cfg = HostConfig(seed=_seed(index), topic=TOPIC)
    async with open_host(cfg, validate=_validate_header, serve_blob=_no_blob) as host:
        link.send(("addr", host.listen_addrs[0]))
        _, addrs = await link.recv(STARTUP_S + READY_S)
        for addr in addrs:
            await _dial(host, addr)
        mesh = min(n - 1, MESH_LOW)
        await _wait_for(
            lambda: len(host.connected_peers()) >= n - 1 and len(host.mesh_peers()) >= mesh,
            READY_S,
            f"connected to {n - 1} peers with a mesh of {mesh}",
        )
        link.send(("ready", len(host.connected_peers()), len(host.mesh_peers())))
        _, t0 = await link.recv(READY_S + 30.0)
        expected = (n - 1) * messages
        arrivals: list[tuple[int, int, int]] = []  # (publisher, seq, latency ns)
        all_in = trio.Event()

        async def listen() -> None:
            async for _, data in host.messages():
                now = time.time_ns()
                block = decode(data)
                send_ns = int(dict(block.metrics)[SEND_METRIC])
                arrivals.append((authors[block.author], block.height, now - send_ns))
                if len(arrivals) >= expected:
                    all_in.set()

        stats0 = host.stats()
        cpu0 = time.process_time()
        publish_ms: list[float] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            for seq in range(index, n * messages, n):  # header ``seq`` is due at t0 + seq gaps
                due = t0 + seq * gap_ns
                await trio.sleep(max(0.0, (due - time.time_ns()) / 1e9))
                send_ns = time.time_ns()
                await host.publish(_signed_header(ident, template, seq, send_ns))
                publish_ms.append((time.time_ns() - send_ns) / 1e6)
            last = t0 + n * messages * gap_ns
            with trio.move_on_after(max(0.0, (last - time.time_ns()) / 1e9) + p["drain_s"]):
                await all_in.wait()
            nursery.cancel_scope.cancel()
        stats = {k: v - stats0.get(k, 0) for k, v in host.stats().items()}
        link.send(
            (
                "result",
                {
                    "arrivals": arrivals,
                    "cpu_s": time.process_time() - cpu0,
                    "wall_s": (time.time_ns() - t0) / 1e9,
                    "publish_ms": publish_ms,
                    "gossip_in": stats["gossip_in"],
                    "rejected": stats["gossip_rejected"] + stats["gossip_rate_limited"],
                    "header_bytes": len(_signed_header(ident, template, 0, time.time_ns())),
                },
            )
        )
        await link.recv(120.0)  # "stop": keep forwarding until every host has finished


async def blob_server(index: int, link: Link, p: dict[str, Any]) -> None:
    store = {_digest(b): b for b in map(_blob, p["sizes"])}
    cfg = HostConfig(seed=_seed(100 + index), topic=TOPIC, blob_rate_per_peer=100.0)
    async with open_host(cfg, validate=_accept, serve_blob=store.get) as host:
        link.send(("addr", host.listen_addrs[0]))
        await link.recv(p["timeout_s"])


async def blob_client(index: int, link: Link, p: dict[str, Any]) -> None:
    cfg = HostConfig(seed=_seed(200 + index), topic=TOPIC)
    async with open_host(cfg, validate=_accept, serve_blob=_no_blob) as host:
        link.send(("addr", host.listen_addrs[0]))
        _, server_addr = await link.recv(STARTUP_S)
        await _dial(host, server_addr)
        server = server_addr.rsplit("/p2p/", 1)[1]
        rates: dict[int, list[float]] = {}
        for size in p["sizes"]:
            digest = _digest(_blob(size))
            await host.fetch_blob(server, digest, timeout_s=60)  # warm-up
            rates[size] = []
            for _ in range(p["repeats"]):
                t0 = time.perf_counter()
                data = await host.fetch_blob(server, digest, timeout_s=60)
                elapsed = time.perf_counter() - t0
                if len(data) != size:
                    raise WorkerError(f"fetched {len(data)} bytes, expected {size}")
                rates[size].append(size / 1e6 / elapsed)
        link.send(("result", rates))
        await link.recv(60.0)


_ROLES: dict[str, Callable[[int, Link, dict[str, Any]], Awaitable[None]]] = {
    "gossip": gossip_node,
    "blob-server": blob_server,
    "blob-client": blob_client,
}


def _worker(role: str, index: int, conn: Connection, params: dict[str, Any]) -> None:
    """``multiprocessing`` target: run one host until told to stop, bounded by a deadline."""
    logging.basicConfig(
        level=logging.WARNING, format=f"[{role} {index}] %(name)s %(levelname)s %(message)s"
    )

    async def main() -> None:
        with trio.fail_after(params["timeout_s"]):
            await _ROLES[role](index, PipeLink(conn, f"parent of {role} {index}"), params)

    try:
        trio.run(main)
    except BaseException as exc:
        with suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        conn.close()


# -- parent side --------------------------------------------------------------------------

Starter = Callable[[str, int, dict[str, Any]], PipeLink]


@contextmanager
def _processes() -> Iterator[Starter]:
    """Start worker processes; on exit wait briefly for them, then kill any still running."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that imported trio
    procs: list[Any] = []

    def start(role: str, index: int, params: dict[str, Any]) -> PipeLink:
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_worker,
            args=(role, index, child, params),
            name=f"dfl-bench-{role}-{index}",
            daemon=True,
        )
        proc.start()
        child.close()
        procs.append(proc)
        return PipeLink(parent, f"{role} {index} (pid {proc.pid})")

    failed = True
    try:
        yield start
        failed = False
    finally:
        deadline = time.monotonic() + (0.0 if failed else 20.0)
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in procs:
            if proc.is_alive():
                if not failed:
                    print(f"killing {proc.name} (did not exit)", file=sys.stderr)
                proc.kill()
                proc.join(5.0)


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


async def _coordinate_gossip(links: list[Link], p: dict[str, Any]) -> dict[str, Any]:
    n, messages = p["n"], p["messages"]
    addrs = [(await link.recv(STARTUP_S))[1] for link in links]
    for i, link in enumerate(links):
        link.send(("peers", addrs[:i]))
    ready = [await link.recv(READY_S + 60.0) for link in links]
    await trio.sleep(p["settle_s"])  # a couple of heartbeats: meshes fill up to D
    t0 = time.time_ns() + 500_000_000
    for link in links:
        link.send(("go", t0))
    run_s = n * messages * p["gap_s"] + p["drain_s"] + 30.0
    results = [(await link.recv(run_s))[1] for link in links]
    for link in links:
        link.send(("stop",))
    lat_ms: list[float] = []
    per_msg: dict[tuple[int, int], list[float]] = {}
    for r in results:
        for pub, seq, ns in r["arrivals"]:
            lat_ms.append(ns / 1e6)
            per_msg.setdefault((pub, seq), []).append(ns / 1e6)
    reach_all = [max(v) for v in per_msg.values() if len(v) == n - 1]
    publish_ms = [x for r in results for x in r["publish_ms"]]
    return {
        "n": n,
        "expected": n * (n - 1) * messages,
        "delivered": len(lat_ms),
        "median_ms": statistics.median(lat_ms) if lat_ms else math.nan,
        "p90_ms": _quantile(lat_ms, 0.9) if lat_ms else math.nan,
        "max_ms": max(lat_ms, default=math.nan),
        "min_ms": min(lat_ms, default=math.nan),
        "reach_all_median_ms": statistics.median(reach_all) if reach_all else math.nan,
        "reach_all_count": len(reach_all),
        "publish_median_ms": statistics.median(publish_ms) if publish_ms else math.nan,
        "cpu_s": [r["cpu_s"] for r in results],
        "cores": sum(r["cpu_s"] for r in results) / max(r["wall_s"] for r in results),
        "cpu_ms_per_copy": 1e3
        * sum(r["cpu_s"] for r in results)
        / max(1, sum(r["gossip_in"] for r in results)),
        "gossip_in": sum(r["gossip_in"] for r in results),
        "rejected": sum(r["rejected"] for r in results),
        "header_bytes": results[0]["header_bytes"],
        "mesh": [m for _, _, m in ready],
    }


def _gossip_params(n: int, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "n": n,
        "messages": args.messages,
        "gap_s": args.gap_ms / 1e3,
        "drain_s": args.drain_s,
        "settle_s": args.settle_s,
        "timeout_s": STARTUP_S + 2 * READY_S + n * args.messages * args.gap_ms / 1e3 + 240.0,
    }


async def propagation_processes(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Header propagation with ``n`` hosts, each in its own process."""
    params = _gossip_params(n, args)
    with _processes() as start:
        links: list[Link] = [start("gossip", i, params) for i in range(n)]
        return await _coordinate_gossip(links, params)


async def propagation_in_process(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """The same measurement with all ``n`` hosts in this process's trio loop (comparison)."""
    params = _gossip_params(n, args)
    async with trio.open_nursery() as nursery:
        links: list[Link] = []
        for i in range(n):
            ours, theirs = ChannelLink.pair()
            nursery.start_soon(gossip_node, i, theirs, params)
            links.append(ours)
        return await _coordinate_gossip(links, params)


async def blob_processes(sizes: tuple[int, ...], repeats: int) -> dict[int, list[float]]:
    """Blob fetch rates (MB/s) between a serving process and a fetching process."""
    params = {"sizes": sizes, "repeats": repeats, "timeout_s": STARTUP_S + 300.0}
    with _processes() as start:
        server = start("blob-server", 0, params)
        client = start("blob-client", 0, params)
        _, addr = await server.recv(STARTUP_S)
        await client.recv(STARTUP_S)
        client.send(("fetch", addr))
        _, rates = await client.recv(300.0)
        client.send(("stop",))
        server.send(("stop",))
        return dict(rates)


# -- report -------------------------------------------------------------------------------


def _gossip_rows(results: list[dict[str, Any]], label: str) -> list[str]:
    rows = []
    for r in results:
        rows.append(
            f"| {r['n']} {label} | {r['delivered']}/{r['expected']} "
            f"| {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['max_ms']:.1f} "
            f"| {r['reach_all_median_ms']:.1f} | {r['cpu_ms_per_copy']:.1f} | {r['cores']:.2f} |"
        )
    return rows


def _autogroup() -> bool:
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled", encoding="ascii") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def report(
    args: argparse.Namespace,
    cmd: str,
    started: dt.datetime,
    load: tuple[float, float, float],
    procs: list[dict[str, Any]],
    inproc: list[dict[str, Any]],
    rates: dict[int, list[float]],
) -> str:
    from benchmarks._results import machine

    libp2p = importlib.metadata.version("libp2p")
    header_bytes = procs[0]["header_bytes"] if procs else 0
    lines = [
        f"Command: `{cmd}`  ",
        f"Date: {started.strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Machine: {machine()}; py-libp2p {libp2p} (TCP + Noise + Yamux) on 127.0.0.1  ",
        f"Load average at start: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min). "
        "The machine was shared: other benchmarks were running at the same time, so absolute "
        "numbers are pessimistic and noisy; 8 host processes on 2 cores also contend with "
        "each other."
        + (
            " Linux autogroup scheduling is on: the host processes, all in this benchmark's "
            "session, share one session's slice of the CPU (see the cores column)."
            if _autogroup()
            else ""
        ),
        "",
        "### Header propagation, one host per OS process",
        "",
        f"Every host publishes {args.messages} signed dfl block headers ({header_bytes} bytes: "
        f"3 parents, 3 verdicts); publishers take turns, one header every {args.gap_ms:g} ms "
        f"network-wide ({1e3 / args.gap_ms:g} headers/s, each host one every N x "
        f"{args.gap_ms:g} ms; a real round carries one header per node). Latency = arrival in "
        "the receiver's `messages()` (after the daemon's validation: decode + signature check) "
        "minus the send time (before signing), one sample per (header, receiver); delivered "
        f"counts samples within {args.drain_s:g} s after the last send; reach-all = the "
        "slowest receiver of a header. Gossipsub D=6, heartbeat 1 s; every pair of hosts "
        "connected. CPU ms/copy = CPU time of all hosts during the run / gossip messages "
        "they received (duplicates included, so it covers sending, forwarding and "
        "validating, plus the idle background work: heartbeats, connection upkeep, which "
        "dominates when few messages flow, as with N = 2); cores = CPU time of all hosts / "
        "wall time of the run.",
        "",
        "| hosts | delivered | median ms | p90 ms | max ms | median reach-all ms "
        "| CPU ms/copy | cores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += _gossip_rows(procs, "processes")
    if inproc:
        lines += _gossip_rows(inproc, "in one process")
        lines += [
            "",
            '"in one process": the same run with every host in one trio loop of one process '
            "(each hop also waits for the other hosts' CPU work; CPU s is then the whole "
            "process's).",
        ]
    lines += [
        "",
        "### Blob transfer between two processes",
        "",
        "| blob | fetches | median MB/s | min MB/s | max MB/s |",
        "|---|---|---|---|---|",
    ]
    for size, r in rates.items():
        label = f"{size / 1e3:g} KB" if size < 1e6 else f"{size / 1e6:g} MB"
        lines.append(
            f"| {label} | {len(r)} | {statistics.median(r):.1f} | {min(r):.1f} | {max(r):.1f} |"
        )
    lines += [
        "",
        "One process serves the blobs from its blob provider, the other fetches each with "
        "`fetch_blob` (one warm-up fetch first, BLAKE2b digest verified on arrival); "
        "1 MB = 1e6 bytes.",
    ]
    return "\n".join(lines)


def _summary(r: dict[str, Any]) -> str:
    return (
        f"N={r['n']}: delivered {r['delivered']}/{r['expected']}, median {r['median_ms']:.1f} "
        f"ms, p90 {r['p90_ms']:.1f} ms, max {r['max_ms']:.1f} ms, mesh {r['mesh']}, "
        f"cpu {[round(c, 1) for c in r['cpu_s']]}, cores {r['cores']:.2f}, "
        f"cpu/copy {r['cpu_ms_per_copy']:.1f} ms, gossip_in {r['gossip_in']}, publish "
        f"{r['publish_median_ms']:.1f} ms, "
        f"rejected {r['rejected']}"
    )


async def _main(args: argparse.Namespace) -> tuple[list[Any], list[Any], dict[int, list[float]]]:
    procs, inproc = [], []
    for n in args.hosts:
        procs.append(await propagation_processes(n, args))
        print(_summary(procs[-1]), file=sys.stderr, flush=True)
    if args.in_process:
        for n in args.hosts:
            inproc.append(await propagation_in_process(n, args))
            print("in-process", _summary(inproc[-1]), file=sys.stderr, flush=True)
    rates = await blob_processes(BLOB_SIZES, args.repeats)
    return procs, inproc, rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="smoke run (fewer messages)")
    parser.add_argument("--hosts", type=int, nargs="+", default=[2, 4, 8], help="network sizes")
    parser.add_argument("--messages", type=int, default=10, help="headers per publisher")
    parser.add_argument("--gap-ms", type=float, default=500.0, help="between headers, network-wide")
    parser.add_argument("--drain-s", type=float, default=5.0, help="wait for late arrivals")
    parser.add_argument("--settle-s", type=float, default=3.0, help="pause once meshes form")
    parser.add_argument("--repeats", type=int, default=10, help="fetches per blob size")
    parser.add_argument(
        "--in-process", action="store_true", help="also run all hosts in one process"
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.repeats = min(args.messages, 5), min(args.repeats, 3)
    cmd = " ".join(["python -m benchmarks.network", *(argv if argv is not None else sys.argv[1:])])
    started = dt.datetime.now(dt.UTC)
    load = os.getloadavg()
    procs, inproc, rates = trio.run(_main, args)
    section = report(args, cmd.strip(), started, load, procs, inproc, rates)
    print(section)
    if not args.no_write:
        from benchmarks._results import update_section

        print("wrote", update_section("Network", section))


if __name__ == "__main__":
    main()
