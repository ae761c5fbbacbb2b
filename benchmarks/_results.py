"""Shared writer of ``benchmarks/RESULTS.md``: each benchmark owns one ``## Title`` section.

:func:`update_section` replaces only the named section (from its heading to the next ``## ``
heading) and keeps every other section as it was, so benchmarks can run in any order.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
_HEADER = (
    "# dfl benchmark results\n\n"
    "Each section is written by one benchmark script; rerun it to refresh.\n"
)


def update_section(title: str, markdown: str, path: Path = RESULTS) -> Path:
    """Replace (or append) the ``## {title}`` section of ``path`` with ``markdown``.

    Parameters
    ----------
    title
        Section title without the leading ``## ``.
    markdown
        Section body (the heading is added here).
    path
        Results file; created with a short header if missing.

    Returns
    -------
    Path
        The file written.
    """
    heading = f"## {title}"
    text = path.read_text(encoding="utf-8") if path.exists() else _HEADER
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    section = f"{heading}\n\n{markdown.strip()}\n\n"
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        new = "".join(lines[:start]) + section + "".join(lines[end:])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".RESULTS.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(new.rstrip("\n") + "\n")
    os.replace(tmp, path)
    return path


def cpu_model() -> str:
    """The CPU model name of this machine (``/proc/cpuinfo``), for the results' headers."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - non-Linux
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """``CPU model, nproc=N, OS release, Python version`` of this machine."""
    return (
        f"{cpu_model()}, nproc={os.cpu_count()}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def run_stamp() -> str:
    """When a run starts and how loaded the machine is then, for :func:`command_header`:
    ``"2026-11-23 01:52 UTC; load average at start 4.2/4.3/3.7"``."""
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    load = "/".join(f"{v:.1f}" for v in os.getloadavg())
    return f"{started} UTC; load average at start {load}"


def command_header(module: str, argv: Sequence[str] | None, stamp: str) -> str:
    """The ``Command:`` and ``Machine:`` lines opening a section that ``python -m module`` wrote
    (``argv``: its arguments, ``None`` for the process's own; ``stamp``: :func:`run_stamp`,
    taken when the run started)."""
    shown = list(sys.argv[1:] if argv is None else argv)
    cmd = " ".join([f"python -m {module}", *shown])
    return f"Command: `{cmd}` ({stamp}).\nMachine: {machine()}.\n\n"
