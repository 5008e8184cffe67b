"""Benchmarks of the Rust core itself: what one call into `helixrt._core` costs.

Every helixrt hot path pays this toll once per call, so it bounds how fast any of them can be.
The peer is the cheapest thing a Python caller could do instead: call a Python function.
"""

from __future__ import annotations

from collections.abc import Iterator

from helixrt import _core
from helixrt.bench.runner import Context, Row, compare_time


def _python_noop() -> None:
    return None


def rows(ctx: Context) -> Iterator[Row]:
    rust_noop, python_noop = _core.noop, _python_noop
    batch = range(1000)

    def call_rust() -> None:
        for _ in batch:
            rust_noop()

    def call_python() -> None:
        for _ in batch:
            python_noop()

    figures = compare_time(ctx, {"rust": call_rust, "python": call_python}, ops=len(batch))
    yield Row(
        component="core",
        operation="call overhead (no-op function)",
        unit="ns",
        helixrt=figures["rust"],
        peer_name="Python function",
        peer=figures["python"],
        claim="-",
        # CPython 3.11+ inlines calls between Python functions; a call into Rust may cost a
        # little more, and should not cost much more.
        goal=0.8,
    )
