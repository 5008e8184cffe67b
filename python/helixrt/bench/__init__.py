"""`helixrt bench`: helixrt measured side by side with its best peers, one table.

Each component's benchmarks live in a module of this package (`helixrt.bench.core`, ...), so an
installed wheel can run them; the Rust core's own criterion benches are in the repository's
`benches/`. A component whose module is missing a peer or a Redis server still yields its rows,
with a note instead of the missing figure.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from helixrt.bench.runner import Context, Row, format_table, progress, write_json

__all__ = ["COMPONENTS", "Context", "Row", "run_bench"]

# Component name -> the module whose `rows(ctx)` measures it, in table order.
COMPONENTS: dict[str, str] = {
    "core": "helixrt.bench.core",
    "cache": "helixrt.bench.cache",
    "pool": "helixrt.bench.pool",
    "async_pool": "helixrt.bench.async_pool",
    "events": "helixrt.bench.events",
    "tiered": "helixrt.bench.tiered",
    "breaker": "helixrt.bench.breaker",
    "lazy": "helixrt.bench.lazy",
    "http": "helixrt.bench.http",
    "mcp": "helixrt.bench.mcp",
}


def run_bench(
    *,
    quick: bool = False,
    only: Sequence[str] | None = None,
    json_path: str | None = None,
    plot_path: str | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Run the selected components' benchmarks and print the table; returns an exit status.
    `json_path` also writes the rows as JSON; `plot_path` draws them as a PNG chart (needs
    matplotlib, checked before anything is measured: `MissingDependencyError` otherwise)."""
    selected = list(only or COMPONENTS)
    unknown = [name for name in selected if name not in COMPONENTS]
    if unknown:
        raise ValueError(
            f"unknown component {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(COMPONENTS)}"
        )
    if plot_path:
        from helixrt.bench.plot import require_matplotlib

        require_matplotlib()
    ctx = Context(quick=quick, redis_url=os.environ.get("REDIS_URL"))
    rows: list[Row] = []
    for index, name in enumerate(selected, 1):
        started = time.perf_counter()
        progress(f"[{index}/{len(selected)}] {name} ...")
        module = importlib.import_module(COMPONENTS[name])
        for row in module.rows(ctx):
            progress(f"    {row.operation}")
            rows.append(row)
        progress(f"    done in {time.perf_counter() - started:.1f} s")
    print(format_table(rows), file=out)
    if json_path:
        write_json(json_path, rows, quick=quick)
        progress(f"wrote {json_path}")
    if plot_path:
        from helixrt.bench.plot import plot_rows

        drawn = plot_rows(rows, plot_path)
        progress(f"wrote {plot_path} ({len(drawn)} of {len(rows)} rows have a peer figure)")
    return 0
