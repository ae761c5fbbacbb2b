"""Shared writer of ``benchmarks/RESULTS.md``: each benchmark owns one ``## Title`` section.

:func:`update_section` replaces only the named section (from its heading to the next ``## ``
heading) and keeps every other section as it was, so benchmarks can run in any order.
"""

from __future__ import annotations

import os
import platform
import tempfile
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
