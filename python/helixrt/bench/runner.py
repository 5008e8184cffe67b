"""The machinery behind `helixrt bench`: timing, rows, the table and the JSON report.

Each component has a module in this package with a `rows(ctx)` generator that measures helixrt
and its best peer side by side (interleaved, in this process) and yields one `Row` per operation.
Figures are the best of several repeats (the least disturbed run, as timeit recommends); the
speedup is always "how many times better than the peer", so above 1.0 helixrt wins.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TextIO

__all__ = [
    "Context",
    "Row",
    "compare_time",
    "format_table",
    "missing_peer",
    "ns_per_op",
    "peer_module",
    "write_json",
]

Unit = Literal["ns", "ops/s", "ratio", "bytes"]


@dataclass(frozen=True)
class Context:
    """What every benchmark module is given."""

    quick: bool = False
    redis_url: str | None = None
    # Seconds of timing per candidate per repeat, and how many repeats.
    budget: float = field(default=0.0)
    repeats: int = field(default=0)

    def __post_init__(self) -> None:
        if not self.budget:
            object.__setattr__(self, "budget", 0.02 if self.quick else 0.1)
        if not self.repeats:
            object.__setattr__(self, "repeats", 3 if self.quick else 7)


@dataclass(frozen=True)
class Row:
    """One line of the table.

    `unit` says how to read the figures: "ns" (time per operation, lower is better), "ops/s" and
    "ratio" (higher is better), "bytes" (lower is better). `goal` is the least speedup over the
    peer that helixrt aims for; `note` explains a missing figure (peer not installed, no Redis).
    """

    component: str
    operation: str
    unit: Unit
    helixrt: float | None
    peer_name: str = ""
    peer: float | None = None
    claim: str = ""
    goal: float | None = None
    note: str = ""

    @property
    def speedup(self) -> float | None:
        if self.helixrt is None or self.peer is None or self.helixrt <= 0 or self.peer <= 0:
            return None
        if self.unit in ("ns", "bytes"):
            return self.peer / self.helixrt
        return self.helixrt / self.peer

    @property
    def met(self) -> bool | None:
        speedup = self.speedup
        if self.goal is None or speedup is None:
            return None
        return speedup >= self.goal


def peer_module(name: str) -> Any | None:
    """The peer package `name`, or None when it is not installed (its rows then say so)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def missing_peer(module: str, package: str) -> str:
    """The note of a row whose peer is not installed."""
    return f"{module} not installed (pip install {package})"


def _calibrate(fn: Callable[[], object], budget: float) -> int:
    """How many calls of `fn` take about `budget` seconds."""
    calls = 1
    while True:
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - started
        if elapsed >= budget / 4 or calls >= 1 << 24:
            return max(1, int(calls * budget / max(elapsed, 1e-9)))
        calls *= 4


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Collects, then pauses the garbage collector for the block, as timeit does: a collection
    set off by one candidate's garbage must not land in another's timing."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def compare_time(
    ctx: Context, candidates: Mapping[str, Callable[[], object]], ops: int = 1
) -> dict[str, float]:
    """Nanoseconds per operation for each candidate, measured interleaved.

    Each candidate performs `ops` operations per call (a loop over keys, say), so the loop stays
    inside the candidate and the figure is per operation. The GC is paused while timing, as
    timeit does, so a collection triggered by one candidate does not land on another.
    """
    calls = {name: _calibrate(fn, ctx.budget) for name, fn in candidates.items()}
    best = dict.fromkeys(candidates, float("inf"))
    with gc_paused():
        for _ in range(ctx.repeats):
            for name, fn in candidates.items():
                count = calls[name]
                started = time.perf_counter_ns()
                for _ in range(count):
                    fn()
                elapsed = time.perf_counter_ns() - started
                best[name] = min(best[name], elapsed / (count * ops))
    return best


def ns_per_op(ctx: Context, fn: Callable[[], object], ops: int = 1) -> float:
    return compare_time(ctx, {"only": fn}, ops)["only"]


def _figure(value: float | None, unit: Unit) -> str:
    if value is None:
        return "-"
    if unit == "ns":
        if value >= 1_000_000:
            return f"{value / 1_000_000:.2f} ms"
        if value >= 10_000:
            return f"{value / 1000:.1f} us"
        return f"{value:.1f} ns" if value < 100 else f"{value:.0f} ns"
    if unit == "ops/s":
        if value >= 1_000_000:
            return f"{value / 1_000_000:.2f}M/s"
        return f"{value / 1000:.1f}k/s" if value >= 1000 else f"{value:.0f}/s"
    if unit == "bytes":
        return f"{value:.0f} B"
    return f"{value:.3f}"


def _cells(row: Row) -> list[str]:
    speedup = row.speedup
    met = {True: " ok", False: " MISS", None: ""}[row.met]
    return [
        row.component,
        row.operation,
        _figure(row.helixrt, row.unit),
        row.peer_name or "-",
        _figure(row.peer, row.unit) if row.peer is not None else (row.note or "-"),
        f"{speedup:.2f}x{met}" if speedup is not None else "-",
        row.claim or "-",
        f">= {row.goal:.3g}x" if row.goal is not None else "-",
    ]


HEADERS = ["component", "operation", "helixrt", "best peer", "peer", "speedup", "original", "goal"]


def format_table(rows: list[Row]) -> str:
    """A plain-text table; speedup = how many times better helixrt did than the peer."""
    table = [HEADERS, *(_cells(row) for row in rows)]
    widths = [max(len(line[col]) for line in table) for col in range(len(HEADERS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    notes = [
        f"  {row.component} {row.operation}: {row.note}"
        for row in rows
        if row.note and row.peer is not None
    ]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def environment() -> dict[str, object]:
    from helixrt import _core

    return {
        "helixrt": _core.build_info(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "system": platform.platform(),
        "cpus": os.cpu_count(),
    }


def write_json(path: str, rows: list[Row], *, quick: bool) -> None:
    report = {
        "environment": environment(),
        "quick": quick,
        "rows": [asdict(row) | {"speedup": row.speedup, "met": row.met} for row in rows],
    }
    with open(path, "w", encoding="utf-8") as out:
        json.dump(report, out, indent=2)
        out.write("\n")


def progress(message: str, stream: TextIO = sys.stderr) -> None:
    """Progress goes to stderr, so stdout stays the table alone."""
    print(message, file=stream, flush=True)


RowSource = Callable[[Context], Iterator[Row]]
