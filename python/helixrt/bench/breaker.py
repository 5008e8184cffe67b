"""Benchmarks of the circuit breaker against pybreaker and purgatory: the cost one call pays
to go through a closed breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

from helixrt.bench.runner import Context, Row, compare_time, missing_peer, peer_module
from helixrt.breaker import CircuitBreaker

CALLS = 1000


def _noop() -> None:
    return None


def _calls(call: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        for _ in range(CALLS):
            call()

    return run


def _sync_rows(ctx: Context) -> Iterator[Row]:
    ours = CircuitBreaker("bench")
    decorated = ours(_noop)
    pybreaker = peer_module("pybreaker")
    candidates = {
        "call": _calls(lambda: ours.call(_noop)),
        "decorated": _calls(decorated),
    }

    def with_ours() -> None:
        for _ in range(CALLS):
            with ours:
                pass

    candidates["with"] = with_ours
    if pybreaker is not None:
        theirs = pybreaker.CircuitBreaker()
        theirs_decorated = theirs(_noop)
        candidates["pybreaker call"] = _calls(lambda: theirs.call(_noop))
        candidates["pybreaker decorated"] = _calls(theirs_decorated)
    purgatory = peer_module("purgatory")
    if purgatory is not None:
        factory = purgatory.SyncCircuitBreakerFactory()

        def with_purgatory() -> None:
            for _ in range(CALLS):
                with factory.get_breaker("bench"):
                    pass

        candidates["purgatory with"] = with_purgatory
    ns = compare_time(ctx, candidates, ops=CALLS)
    missing = "" if pybreaker else missing_peer("pybreaker", "pybreaker")
    yield Row(
        "breaker",
        "call(fn), closed",
        "ns",
        ns["call"],
        "pybreaker",
        ns.get("pybreaker call"),
        "-",
        5.0,
        missing,
    )
    yield Row(
        "breaker",
        "@breaker decorated call, closed",
        "ns",
        ns["decorated"],
        "pybreaker",
        ns.get("pybreaker decorated"),
        "-",
        5.0,
        missing,
    )
    yield Row(
        "breaker",
        "with breaker:, closed",
        "ns",
        ns["with"],
        "purgatory",
        ns.get("purgatory with"),
        "-",
        None,
        "" if purgatory else missing_peer("purgatory", "purgatory"),
    )


async def _async_ns(enter: Callable[[], Any], calls: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(calls):
        async with enter():
            pass
    return (time.perf_counter_ns() - started) / calls


async def _async_purgatory_ns(factory: Any, calls: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(calls):
        async with await factory.get_breaker("bench"):
            pass
    return (time.perf_counter_ns() - started) / calls


def _async_rows(ctx: Context) -> Iterator[Row]:
    calls = 5_000 if ctx.quick else 20_000
    ours = CircuitBreaker("bench-async")
    purgatory = peer_module("purgatory")
    best_ours, best_theirs = float("inf"), float("inf")
    for _ in range(ctx.repeats):
        best_ours = min(best_ours, asyncio.run(_async_ns(lambda: ours, calls)))
        if purgatory is not None:
            factory = purgatory.AsyncCircuitBreakerFactory()
            best_theirs = min(best_theirs, asyncio.run(_async_purgatory_ns(factory, calls)))
    yield Row(
        "breaker",
        "async with breaker:, closed",
        "ns",
        best_ours,
        "purgatory",
        best_theirs if purgatory else None,
        "-",
        None,
        "" if purgatory else missing_peer("purgatory", "purgatory"),
    )


def rows(ctx: Context) -> Iterator[Row]:
    yield from _sync_rows(ctx)
    yield from _async_rows(ctx)
