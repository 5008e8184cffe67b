"""Benchmark of `Lazy` against `functools.cached_property`: the cost of reading a value that is
already initialised (the path every request pays)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

from helixrt.bench.runner import Context, Row, compare_time
from helixrt.lazy import Lazy

READS = 1000


def _make_client() -> object:
    return object()


class _Holder:
    @functools.cached_property
    def client(self) -> object:
        return _make_client()


def _lazy_reads(lazy: Lazy[object]) -> Callable[[], None]:

    def run() -> None:
        for _ in range(READS):
            lazy.get()

    return run


def _cached_property_reads(holder: _Holder) -> Callable[[], None]:
    def run() -> None:
        for _ in range(READS):
            holder.client  # noqa: B018 - the read is what is measured

    return run


def rows(ctx: Context) -> Iterator[Row]:
    lazy = Lazy(_make_client)
    lazy.get()
    holder = _Holder()
    _ = holder.client
    ns = compare_time(
        ctx,
        {"lazy": _lazy_reads(lazy), "cached_property": _cached_property_reads(holder)},
        ops=READS,
    )
    yield Row(
        "lazy",
        "get() after initialisation",
        "ns",
        ns["lazy"],
        "functools.cached_property",
        ns["cached_property"],
        "-",
        0.5,
    )
