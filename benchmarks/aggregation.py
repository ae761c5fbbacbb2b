"""Aggregation speed: every rule of :data:`dfl.learning.robust.RULES` on one core.

Usage::

    python -m benchmarks.aggregation            # n in {10, 50, 100} x d in {61.7k, 1M}
    python -m benchmarks.aggregation --quick    # n in {10, 100} x d = 61.7k, 3 repeats

BLAS runs single-threaded: the script sets ``OPENBLAS_NUM_THREADS=1``, ``OMP_NUM_THREADS=1``
and ``MKL_NUM_THREADS=1`` before numpy is imported (and also limits thread pools with
threadpoolctl). Each cell is the median of several repeats of one call, in
milliseconds, wall-clock and CPU time (``time.process_time``, less sensitive to other load on a
shared machine). Candidates are ``own + noise``; of ``f = n // 5`` attackers half are far
outliers and half moved backwards from the round's start ``ctx.start`` (see :func:`_case`);
``ctx.num_byzantine = f``, round 5. ``dfl``, ``ubar`` and the guarded rules get a trivial
``evaluate`` stub, so their timings exclude model evaluation (which dominates in practice).
The table is printed and written to the ``## Aggregation`` section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import functools  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from benchmarks._results import cpu_model, update_section  # noqa: E402
from dfl.learning.robust import RULES, RuleContext  # noqa: E402

TITLE = "Aggregation"
D_LENET = 61_706  # LeNet-5 on MNIST, the reference model size ("61.7k")
TARGETS_MS = {"median": 20.0}  # at n=100, d=61.7k; every other rule but geomed: 50 ms


def _stub_evaluate(model: np.ndarray) -> tuple[float, float]:
    loss = float(abs(model[:256].mean()))
    return 1.0 / (1.0 + loss), loss


def _case(
    n: int, d: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]:
    """Own model, candidates, weights, f and the round's start (own before its step).

    Candidates are ``own + noise``; of the last ``f``, half are far outliers (``+10``) and
    the other half moved backwards from the start (a sign flip: close and accurate, so every
    layer of the default's stack has work: the guard and BALANCE reject the far ones, the
    direction rank gets the budget they leave).
    """
    rng = np.random.default_rng(seed)
    own = (0.05 * rng.standard_normal(d)).astype(np.float32)
    step = np.float32(0.003) * np.sign(own)
    start = own - step
    cands = np.empty((n, d), np.float32)
    for i in range(n):  # row by row: no (n, d) float64 temporary at d = 1M
        cands[i] = own + np.float32(0.01) * rng.standard_normal(d, dtype=np.float32)
    f = n // 5
    far = f - f // 2
    cands[n - f : n - f + far] += np.float32(10.0)
    cands[n - f + far :] -= 2 * step
    weights = rng.integers(100, 1000, size=n).astype(np.float64)
    return own, cands, weights, f, start


def _context(n: int, f: int, start: np.ndarray) -> RuleContext:
    """The rules' context for a case: budget ``f``, round 5, its start, the stub evaluation."""
    return RuleContext(
        own_samples=500,
        num_byzantine=f,
        evaluate=_stub_evaluate,
        candidate_ids=tuple(i.to_bytes(4, "big") for i in range(n)),
        start=start,
        round=5,
    )


def _time(fn: Any, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def run(
    ns: list[int], ds: list[int], rules: list[str], repeats: int
) -> dict[tuple[str, int, int], tuple[float, float]]:
    """Time every rule on every ``(n, d)``; returns ``{(rule, n, d): (wall_ms, cpu_ms)}``."""
    out: dict[tuple[str, int, int], tuple[float, float]] = {}
    for d in ds:
        for n in ns:
            own, cands, weights, f, start = _case(n, d)
            ctx = _context(n, f, start)
            reps = repeats if d <= D_LENET else max(1, repeats // 2)
            for name in rules:
                call = functools.partial(RULES[name], own, cands, weights, ctx)
                wall, cpu = out[(name, n, d)] = _time(call, reps)
                print(f"  {name:15s} n={n:<4d} d={d:<8d} {wall:9.1f} ms  (cpu {cpu:.1f})")
    return out


def _fmt_d(d: int) -> str:
    return f"{d / 1e6:g}M" if d >= 1_000_000 else f"{d / 1e3:.1f}k"


def table(
    res: dict[tuple[str, int, int], tuple[float, float]], ns: list[int], ds: list[int]
) -> str:
    """Markdown table: one row per rule, one column per (n, d): ``wall (cpu)`` in ms."""
    rules = list(dict.fromkeys(k[0] for k in res))
    cols = [(n, d) for d in ds for n in ns]
    head = "| rule | " + " | ".join(f"n={n}, d={_fmt_d(d)}" for n, d in cols) + " |"
    sep = "|---|" + "---:|" * len(cols)
    rows = [head, sep]
    for name in rules:
        cells = []
        for n, d in cols:
            wall, cpu = res[(name, n, d)]
            cells.append(f"{wall:.1f} ({cpu:.1f})")
        rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n in {10, 100}, d = 61.7k only")
    parser.add_argument("--repeats", type=int, default=0, help="repeats per cell (median)")
    parser.add_argument("--rules", default="", help="comma-separated subset of rules")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)

    ns = [10, 100] if args.quick else [10, 50, 100]
    ds = [D_LENET] if args.quick else [D_LENET, 1_000_000]
    repeats = args.repeats or (3 if args.quick else 7)
    rules = [r for r in args.rules.split(",") if r] or list(RULES)
    unknown = set(rules) - set(RULES)
    if unknown:
        parser.error(f"unknown rules: {sorted(unknown)}")

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    started = dt.datetime.now(dt.UTC)
    with threadpool_limits(limits=1):
        res = run(ns, ds, rules, repeats)
    md_table = table(res, ns, ds)
    print()
    print(md_table)

    command = "python -m benchmarks.aggregation" + (" --quick" if args.quick else "")
    if args.repeats:
        command += f" --repeats {args.repeats}"
    if args.rules:
        command += f" --rules {args.rules}"
    checks = []
    if (D_LENET in ds) and (100 in ns):
        for name in rules:
            cpu = res[(name, 100, D_LENET)][1]
            target = TARGETS_MS.get(name, None if name == "geomed" else 50.0)
            if target is not None:
                verdict = "ok" if cpu < target else "MISSED"
                checks.append(f"`{name}` {cpu:.1f} ms CPU vs < {target:g} ms: {verdict}")
    body = "\n".join(
        [
            f"Command: `OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 {command}`  ",
            f"Date: {started:%Y-%m-%d %H:%M} UTC  ",
            f"Machine: {cpu_model()}, nproc={os.cpu_count()}, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, numpy {np.__version__}, "
            "single-threaded BLAS  ",
            f"Load average at start: {load} (shared machine: CPU time is the steadier number)  ",
            "Setup: candidates = own + noise; of f = n // 5 attackers half far outliers, half "
            "one step backwards from the round's start (a sign flip, which only the direction "
            f"rank sees); `num_byzantine = f`, round 5; median of {repeats} calls per cell "
            "(half as many at d = 1M); `dfl`, `ubar` and the guarded rules use a trivial "
            "`evaluate` stub (model evaluation not included).",
            "",
            "Milliseconds per call, wall-clock (CPU):",
            "",
            md_table,
            "",
            "Targets at n = 100, d = 61.7k (CPU time): " + ("; ".join(checks) or "n/a") + ".",
        ]
    )
    if not args.no_write:
        path = update_section(TITLE, body)
        print(f"\nwrote section '## {TITLE}' of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
