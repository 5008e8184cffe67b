"""Benchmarks of the event bus against blinker (Signal.send) and pyee (EventEmitter.emit).

The peers call their receivers inside `send`/`emit`; the bus hands the event to a dispatcher
thread. So the publish row compares what a publisher pays, and the end-to-end rows compare the
time until every subscriber has handled every event.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from helixrt.bench.runner import Context, Row, gc_paused, missing_peer, peer_module
from helixrt.events import Event, EventBus

TOPIC = "request.completed"
BURST = 500  # publishes timed at a time: under the mailbox's 1000, so nothing is dropped


def _best(ctx: Context, run: Callable[[], float]) -> float:
    """The best of the repeats of `run` (which returns ns per event), with the GC paused."""
    with gc_paused():
        return min(run() for _ in range(ctx.repeats))


class _Counter:
    """Subscribers that count the events they see, each saying when it has seen `expected`.
    They are plain functions doing the least a handler can, the same for every library, so
    that what is compared is the cost of the bus and not of the handler."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.done: list[threading.Event] = []

    def handler(self) -> Callable[[object], None]:
        seen = 0
        expected = self.expected
        done = threading.Event()
        self.done.append(done)

        def on_event(event: object) -> None:
            nonlocal seen
            seen += 1
            if seen == expected:
                seen = 0
                done.set()

        return on_event

    def wait(self) -> None:
        for done in self.done:
            done.wait(60)
            done.clear()


def _publish_row(ctx: Context) -> Row:
    bursts = 20 if ctx.quick else 100
    counter = _Counter(BURST)
    with EventBus() as bus:
        bus.subscribe(TOPIC, counter.handler())
        publish = bus.publish

        def ours() -> float:
            total = 0
            for _ in range(bursts):
                started = time.perf_counter_ns()
                for _ in range(BURST):
                    publish(TOPIC, None)
                total += time.perf_counter_ns() - started
                counter.wait()  # delivery is not part of what the publisher pays
            return total / (bursts * BURST)

        ns = _best(ctx, ours)
    blinker = peer_module("blinker")
    theirs = None
    if blinker is not None:
        signal = blinker.Signal()
        signal.connect(_Counter(0).handler(), weak=False)
        send = signal.send

        def peer() -> float:
            started = time.perf_counter_ns()
            for _ in range(bursts * BURST):
                send(None)
            return (time.perf_counter_ns() - started) / (bursts * BURST)

        theirs = _best(ctx, peer)
    return Row(
        "events",
        "publish, 1 sync subscriber",
        "ns",
        ns,
        "blinker send",
        theirs,
        "~1 us",
        5.0,
        "" if blinker else missing_peer("blinker", "blinker"),
    )


def _end_to_end(ctx: Context, events: int, subscribers: int) -> float:
    counter = _Counter(events)
    with EventBus(on_full="block") as bus:
        for _ in range(subscribers):
            bus.subscribe(TOPIC, counter.handler())
        publish = bus.publish

        def run() -> float:
            started = time.perf_counter_ns()
            for _ in range(events):
                publish(TOPIC, None)
            counter.wait()
            return (time.perf_counter_ns() - started) / events

        return _best(ctx, run)


def _peer_loop(
    emit: Callable[..., object], args: tuple[object, ...], events: int
) -> Callable[[], float]:
    """Times `events` calls of the peer's bound `emit(*args)`, called directly as ours is."""

    def run() -> float:
        started = time.perf_counter_ns()
        if len(args) == 1:
            (first,) = args
            for _ in range(events):
                emit(first)
        else:
            first, second = args
            for _ in range(events):
                emit(first, second)
        return (time.perf_counter_ns() - started) / events

    return run


def _end_to_end_rows(ctx: Context) -> Iterator[Row]:
    events = 20_000 if ctx.quick else 100_000
    label = f"{events // 1000}k events end to end"
    ns = _end_to_end(ctx, events, 1)
    pyee = peer_module("pyee")
    theirs = None
    if pyee is not None:
        emitter = pyee.EventEmitter()
        emitter.on(TOPIC, _Counter(0).handler())
        theirs = _best(ctx, _peer_loop(emitter.emit, (TOPIC, None), events))
    yield Row(
        "events",
        f"{label}, 1 sync subscriber",
        "ns",
        ns,
        "pyee emit",
        theirs,
        "100k+/s",
        3.0,
        "" if pyee else missing_peer("pyee", "pyee"),
    )
    ns = _end_to_end(ctx, events, 10)
    blinker = peer_module("blinker")
    theirs = None
    if blinker is not None:
        signal = blinker.Signal()
        counter = _Counter(0)
        for _ in range(10):
            signal.connect(counter.handler(), weak=False)
        theirs = _best(ctx, _peer_loop(signal.send, (None,), events))
    yield Row(
        "events",
        f"{label}, 10 sync subscribers",
        "ns",
        ns,
        "blinker send",
        theirs,
        "-",
        10.0,
        "" if blinker else missing_peer("blinker", "blinker"),
    )


async def _async_ours(events: int) -> float:
    async with EventBus(on_full="block") as bus:
        seen = 0
        done = asyncio.Event()

        async def handler(event: Event) -> None:
            nonlocal seen
            seen += 1
            if seen == events:
                done.set()

        bus.subscribe(TOPIC, handler)
        started = time.perf_counter_ns()
        for _ in range(events):
            bus.publish(TOPIC, None)
        await done.wait()
        return (time.perf_counter_ns() - started) / events


async def _async_pyee(pyee: Any, events: int) -> float:
    emitter = pyee.asyncio.AsyncIOEventEmitter()
    seen = 0
    done = asyncio.Event()

    async def handler(payload: object) -> None:
        nonlocal seen
        seen += 1
        if seen == events:
            done.set()

    emitter.on(TOPIC, handler)
    started = time.perf_counter_ns()
    for _ in range(events):
        emitter.emit(TOPIC, None)
    await done.wait()
    return (time.perf_counter_ns() - started) / events


def _async_row(ctx: Context) -> Row:
    events = 20_000 if ctx.quick else 100_000
    ns = _best(ctx, lambda: asyncio.run(_async_ours(events)))
    pyee = peer_module("pyee")
    theirs = None
    if pyee is not None:
        import pyee.asyncio  # the asyncio emitter lives in a submodule

        theirs = _best(ctx, lambda: asyncio.run(_async_pyee(pyee, events)))
    return Row(
        "events",
        f"{events // 1000}k events end to end, 1 async subscriber",
        "ops/s",
        1e9 / ns,
        "pyee AsyncIOEventEmitter",
        1e9 / theirs if theirs else None,
        "-",
        None,
        "" if pyee else missing_peer("pyee", "pyee"),
    )


def rows(ctx: Context) -> Iterator[Row]:
    yield _publish_row(ctx)
    yield from _end_to_end_rows(ctx)
    yield _async_row(ctx)
