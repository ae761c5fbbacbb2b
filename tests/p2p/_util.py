"""Helpers for networked p2p tests: real libp2p hosts on 127.0.0.1, every wait bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio

from dfl.p2p.host import BlobProvider, HostConfig, P2PHost, Validator, open_host

TOPIC = "/dfl/test/headers/1"


def seed(i: int) -> bytes:
    return bytes([i + 1]) * 32


def config(i: int, **overrides: Any) -> HostConfig:
    return HostConfig(seed=seed(i), topic=TOPIC, **overrides)


def accept_all(origin: str, data: bytes) -> bool:
    return True


def no_blobs(digest: bytes) -> bytes | None:
    return None


def run(fn: Callable[[], Coroutine[Any, Any, None]], timeout_s: float = 30.0) -> None:
    """Run an async test body under trio, bounded by ``timeout_s``."""

    async def main() -> None:
        with trio.fail_after(timeout_s):
            await fn()

    trio.run(main)


@asynccontextmanager
async def start(
    cfg: HostConfig, validate: Validator = accept_all, serve_blob: BlobProvider = no_blobs
) -> AsyncIterator[P2PHost]:
    async with open_host(cfg, validate=validate, serve_blob=serve_blob) as host:
        yield host


@asynccontextmanager
async def many(configs: list[HostConfig], **kw: Any) -> AsyncIterator[list[P2PHost]]:
    async with AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(start(c, **kw)) for c in configs]
        yield hosts


async def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    with trio.fail_after(timeout_s):
        while not cond():
            await trio.sleep(0.05)


async def drain(
    host: P2PHost, seconds: float, *, expect: int | None = None, timeout_s: float = 15.0
) -> list[tuple[str, bytes]]:
    """Collect every message delivered to ``host`` during ``seconds``.

    With ``expect``: collect until ``expect`` messages arrived (at most ``timeout_s``), then
    ``seconds`` more, so a duplicate would still be seen, however loaded the machine is.
    """
    got: list[tuple[str, bytes]] = []
    if expect is not None:
        with trio.move_on_after(timeout_s):
            async for item in host.messages():
                got.append(item)
                if len(got) >= expect:
                    break
    with trio.move_on_after(seconds):
        async for item in host.messages():
            got.append(item)
    return got


async def mesh_ready(hosts: list[P2PHost], timeout_s: float = 10.0) -> None:
    await wait_until(lambda: all(h.mesh_peers() for h in hosts), timeout_s, "mesh")
