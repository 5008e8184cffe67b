"""EventBus: routing, delivery to plain and coroutine handlers and readers, mailbox policies,
accounting, failure paths and shutdown."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import helixrt
from helixrt import topics
from helixrt.errors import (
    BusClosedError,
    EventTimeoutError,
    HelixError,
    InvalidArgumentError,
    InvalidTypeError,
    SubscriberLimitError,
)
from helixrt.events import Event, EventBus, trace_context


def wait_until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


@pytest.fixture
def bus() -> Iterator[EventBus]:
    with EventBus() as b:
        yield b


def dispatcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("helixrt-bus-dispatch")]


# --- events -----------------------------------------------------------------------------------


def test_an_event_is_frozen_and_carries_what_was_published(bus: EventBus) -> None:
    event = bus.publish("cache.hit", {"key": "k"}, source="cache", metadata={"region": "eu"})
    assert event.topic == "cache.hit"
    assert event.payload == {"key": "k"}
    assert event.source == "cache"
    assert dict(event.metadata) == {"region": "eu"}
    assert abs(event.timestamp - time.time()) < 5
    assert event.trace_id is None
    with pytest.raises(AttributeError):
        event.topic = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.metadata["region"] = "us"  # type: ignore[index]
    ids = {bus.publish("cache.hit").id for _ in range(1000)}
    assert len(ids) == 1000
    assert event.id not in ids


def test_an_event_round_trips_through_a_dict() -> None:
    with trace_context("trace-1"):
        event = Event("a.b", [1, 2], source="s", metadata={"m": "1"})
    data = event.to_dict()
    assert data["trace_id"] == "trace-1"
    again = Event.from_dict(data)
    assert again == event
    assert hash(again) == hash(event)
    assert again.to_dict() == data
    with pytest.raises(InvalidArgumentError, match="topic"):
        Event.from_dict({"payload": 1})


def test_trace_id_comes_from_the_trace_context(bus: EventBus) -> None:
    with trace_context("outer") as outer:
        assert outer == "outer"
        assert helixrt.events.current_trace_id() == "outer"
        assert bus.publish("a.b").trace_id == "outer"
        with trace_context() as inner:
            assert len(inner) == 32
            assert inner != "outer"
            assert bus.publish("a.b").trace_id == inner
        assert bus.publish("a.b").trace_id == "outer"
    assert bus.publish("a.b").trace_id is None

    async def in_task() -> str | None:
        return bus.publish("a.b").trace_id

    async def main() -> str | None:
        with trace_context("task-trace"):
            return await asyncio.create_task(in_task())

    assert asyncio.run(main()) == "task-trace"


def test_bad_arguments_are_refused_with_a_clear_error(bus: EventBus) -> None:
    with pytest.raises(InvalidTypeError, match="topic must be a str, got int"):
        bus.publish(3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="wildcard"):
        bus.publish("cache.*")
    with pytest.raises(InvalidArgumentError, match="empty token"):
        bus.publish("cache..hit")
    with pytest.raises(InvalidArgumentError, match="empty"):
        bus.publish("")
    with pytest.raises(InvalidTypeError, match="source"):
        bus.publish("a.b", source=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match="metadata"):
        bus.publish("a.b", metadata=[1])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="'>' may only stand as the last token"):
        bus.subscribe("a.>.b")
    with pytest.raises(InvalidArgumentError, match="whole tokens"):
        bus.subscribe("a.b*")
    with pytest.raises(ValueError, match="empty"):
        bus.subscribe("")
    with pytest.raises(InvalidTypeError, match="handler"):
        bus.subscribe("a", handler=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match="filter"):
        bus.subscribe("a", filter=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="buffer_size"):
        bus.subscribe("a", buffer_size=0)
    with pytest.raises(InvalidArgumentError, match="on_full"):
        bus.subscribe("a", on_full="wait")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="buffer_size"):
        EventBus(buffer_size=0)
    with pytest.raises(InvalidArgumentError, match="history"):
        EventBus(history=-1)
    with pytest.raises(InvalidArgumentError, match="max_subscribers"):
        EventBus(max_subscribers=0)
    with pytest.raises(InvalidArgumentError, match="dispatchers"):
        EventBus(dispatchers=0)

    async def handler(event: Event) -> None:
        pass

    with pytest.raises(InvalidArgumentError, match="no running event loop"):
        bus.subscribe("a", handler)
    assert bus.stats().subscribers_active == 0


# --- routing ----------------------------------------------------------------------------------


def test_wildcards_follow_nats_rules(bus: EventBus) -> None:
    tail = bus.subscribe("cache.>")
    one = bus.subscribe("cache.*")
    everything = bus.subscribe(">")
    exact = bus.subscribe("cache.hit")
    assert bus.matching("cache.hit") == [tail, one, everything, exact]
    assert bus.matching("cache.l2.miss") == [tail, everything]
    assert bus.matching("cache") == [everything]
    assert bus.matching("other.hit") == [everything]
    one.unsubscribe()
    assert bus.matching("cache.hit") == [tail, everything, exact]


TOKENS = st.sampled_from(["a", "b", "c"])
PATTERN_TOKENS = st.sampled_from(["a", "b", "c", "*"])


@st.composite
def patterns(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(PATTERN_TOKENS, min_size=1, max_size=4))
    if draw(st.booleans()):
        tokens[-1] = ">"
    return ".".join(tokens)


def reference_match(pattern: str, topic: str) -> bool:
    """The NATS rules, written plainly."""
    p, t = pattern.split("."), topic.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(t) > i
        if i >= len(t) or (token != "*" and token != t[i]):
            return False
    return len(p) == len(t)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(patterns(), max_size=12),
    st.lists(st.lists(TOKENS, min_size=1, max_size=5).map(".".join), min_size=1, max_size=8),
    st.data(),
)
def test_routing_matches_a_reference_implementation(
    subscribed: list[str], published: list[str], data: st.DataObject
) -> None:
    with EventBus() as bus:
        subs = [bus.subscribe(p) for p in subscribed]
        for topic in published:
            want = [s for s in subs if reference_match(s.pattern, topic)]
            assert bus.matching(topic) == want
            assert bus.matching(topic) == want  # now from the router's cache
        gone = data.draw(st.sets(st.sampled_from(range(len(subs))))) if subs else set()
        for i in gone:
            subs[i].unsubscribe()
        for topic in published:
            want = [
                s for i, s in enumerate(subs) if i not in gone and reference_match(s.pattern, topic)
            ]
            assert bus.matching(topic) == want


# --- delivery ---------------------------------------------------------------------------------


def test_plain_handlers_run_on_a_dispatcher_thread_in_order(bus: EventBus) -> None:
    seen: list[tuple[str, int]] = []
    threads: set[str] = set()

    def handler(event: Event) -> None:
        threads.add(threading.current_thread().name)
        seen.append((event.topic, event.payload))

    bus.subscribe("orders.*", handler)
    for i in range(500):
        bus.publish("orders.created", i)
    bus.publish("orders", -1)
    bus.publish("orders.created.late", -1)
    wait_until(lambda: len(seen) == 500)
    assert seen == [("orders.created", i) for i in range(500)]
    assert threads <= {t.name for t in dispatcher_threads()}
    assert threading.current_thread().name not in threads


def test_coroutine_handlers_run_on_the_loop_that_subscribed() -> None:
    async def main() -> None:
        async with EventBus() as bus:
            loop = asyncio.get_running_loop()
            seen: list[int] = []
            loops: set[asyncio.AbstractEventLoop] = set()

            async def handler(event: Event) -> None:
                loops.add(asyncio.get_running_loop())
                await asyncio.sleep(0)
                seen.append(event.payload)

            bus.subscribe("jobs.>", handler)
            for i in range(100):
                bus.publish("jobs.done", i)
            # and from another thread
            thread = threading.Thread(
                target=lambda: [bus.publish("jobs.done", 100 + i) for i in range(100)]
            )
            thread.start()
            thread.join()
            while len(seen) < 200:
                await asyncio.sleep(0.001)
            assert seen == list(range(200))
            assert loops == {loop}

    asyncio.run(main())


def test_a_subscription_without_handler_is_an_async_iterator() -> None:
    async def main() -> None:
        async with EventBus() as bus:
            sub = bus.subscribe("ticks.*")

            def produce() -> None:
                for i in range(50):
                    bus.publish("ticks.second", i)
                    time.sleep(0.0005)
                sub.unsubscribe()

            thread = threading.Thread(target=produce)
            thread.start()
            got = [event.payload async for event in sub]
            thread.join()
            assert got == list(range(50))
            with pytest.raises(BusClosedError, match="ended"):
                await sub.get()

    asyncio.run(main())


def test_get_times_out_and_wait_for_returns_the_next_match() -> None:
    async def main() -> None:
        async with EventBus() as bus:
            sub = bus.subscribe("a.b")
            with pytest.raises(EventTimeoutError, match=r"'a\.b'"):
                await sub.get(timeout=0.02)
            with pytest.raises(TimeoutError):
                await bus.wait_for("x.y", timeout=0.02)
            assert bus.stats().subscribers_active == 1  # wait_for cleaned up after itself

            async def later() -> None:
                await asyncio.sleep(0.01)
                bus.publish("x.y", 1)
                bus.publish("x.y", 2)
                bus.publish("x.y", 3)

            task = asyncio.create_task(later())
            event = await bus.wait_for("x.*", timeout=5, filter=lambda e: e.payload >= 2)
            assert event.payload == 2
            await task
            # a timed-out get lost nothing
            bus.publish("a.b", "kept")
            assert (await sub.get(timeout=5)).payload == "kept"

    asyncio.run(main())


def test_a_handler_subscription_cannot_be_read(bus: EventBus) -> None:
    sub = bus.subscribe("a", lambda e: None)
    with pytest.raises(InvalidArgumentError, match="handler"):
        asyncio.run(sub.get())


def test_filters_run_before_delivery_and_skip_without_counting_a_drop(bus: EventBus) -> None:
    seen: list[int] = []
    sub = bus.subscribe("n", seen.append, filter=lambda e: e.payload % 2 == 0)
    for i in range(10):
        bus.publish("n", i)
    wait_until(lambda: len(seen) == 5)
    assert [e.payload for e in seen] == [0, 2, 4, 6, 8]  # type: ignore[attr-defined]
    assert sub.stats().dropped == 0


def test_history_keeps_the_last_events(bus: EventBus) -> None:
    with EventBus(history=5) as b:
        for i in range(8):
            b.publish("a.x" if i % 2 else "b.x", i)
        assert [e.payload for e in b.history()] == [3, 4, 5, 6, 7]
        assert [e.payload for e in b.history("a.*")] == [3, 5, 7]
        assert [e.payload for e in b.history(">", limit=2)] == [6, 7]
        with pytest.raises(InvalidArgumentError):
            b.history("a.>.b")
    assert bus.history() == []


def test_max_subscribers_is_enforced() -> None:
    with EventBus(max_subscribers=2) as bus:
        a = bus.subscribe("a")
        bus.subscribe("b")
        with pytest.raises(SubscriberLimitError, match="max_subscribers=2"):
            bus.subscribe("c")
        a.unsubscribe()
        bus.subscribe("c")


# --- mailbox policies and accounting ----------------------------------------------------------


def test_drop_oldest_keeps_the_newest_and_drop_newest_the_first() -> None:
    async def main() -> None:
        async with EventBus(buffer_size=3) as bus:
            newest = bus.subscribe("t")
            first = bus.subscribe("t", on_full="drop_newest")
            big = bus.subscribe("t", buffer_size=100)
            for i in range(10):
                bus.publish("t", i)
            assert [(await newest.get(0)).payload for _ in range(3)] == [7, 8, 9]
            assert [(await first.get(0)).payload for _ in range(3)] == [0, 1, 2]
            assert newest.stats() == helixrt.events.SubscriptionStats(3, 7, 0)
            assert first.stats().dropped == 7
            assert big.stats() == helixrt.events.SubscriptionStats(0, 0, 10)
            stats = bus.stats()
            assert stats.published == 10
            assert stats.delivered == 6
            assert stats.dropped == 14
            assert stats.dropped_by_subscriber == {newest.id: 7, first.id: 7, big.id: 0}
            assert stats.lag >= 0

    asyncio.run(main())


def test_block_loses_nothing_under_four_publishing_threads() -> None:
    per_thread, threads = 5000, 4
    with EventBus(buffer_size=16, on_full="block") as bus:
        counts = [0, 0, 0]
        orders: dict[int, list[int]] = {}

        def counter(i: int) -> object:
            def handler(event: Event) -> None:
                counts[i] += 1
                if i == 0:
                    orders.setdefault(event.payload[0], []).append(event.payload[1])
                if i == 2 and counts[i] % 1000 == 0:
                    time.sleep(0.002)  # a slower one

            return handler

        for i in range(3):
            bus.subscribe("load.>", counter(i))  # type: ignore[arg-type]
        bus.subscribe("other", counter(1))  # type: ignore[arg-type]

        def publish(t: int) -> None:
            for n in range(per_thread):
                bus.publish("load.test", (t, n))

        workers = [threading.Thread(target=publish, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wait_until(lambda: bus.stats().delivered == per_thread * threads * 3)
        stats = bus.stats()
        assert stats.published == per_thread * threads
        assert stats.dropped == 0
        assert counts == [per_thread * threads] * 3
        assert all(orders[t] == list(range(per_thread)) for t in range(threads))


def test_drop_policies_account_for_every_event_under_load() -> None:
    per_thread, threads = 3000, 4
    with EventBus(buffer_size=50) as bus:
        subs = [
            bus.subscribe("load.x", lambda e: time.sleep(0.0001)),
            bus.subscribe("load.*", lambda e: None, on_full="drop_newest"),
            bus.subscribe(">", lambda e: None),
        ]

        def publish() -> None:
            for _ in range(per_thread):
                bus.publish("load.x")

        workers = [threading.Thread(target=publish) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wait_until(lambda: all(s.stats().pending == 0 for s in subs))
        time.sleep(0.05)
        for sub in subs:
            s = sub.stats()
            assert s.delivered + s.dropped == per_thread * threads, sub
        assert subs[0].stats().dropped > 0  # the slow one did overflow
        stats = bus.stats()
        assert stats.delivered + stats.dropped == per_thread * threads * 3


def test_a_slow_subscriber_slows_neither_the_publisher_nor_the_others() -> None:
    with EventBus(buffer_size=1000) as bus:
        fast: list[float] = []
        slow: list[int] = []
        bus.subscribe("t", lambda e: (time.sleep(0.01), slow.append(1)))
        bus.subscribe("t", lambda e: fast.append(time.monotonic()))
        started = time.monotonic()
        times = []
        for _ in range(100):
            t0 = time.perf_counter()
            bus.publish("t")
            times.append(time.perf_counter() - t0)
        published = time.monotonic()
        wait_until(lambda: len(fast) == 100)
        # 100 events at 10 ms each keep the slow handler busy for a second: the publisher and
        # the fast subscriber are done long before.
        assert published - started < 0.5
        assert max(times) < 0.05
        assert fast[-1] - started < 0.5
        assert len(slow) < 60


def test_a_block_subscriber_on_the_readers_own_loop_does_not_deadlock() -> None:
    async def main() -> None:
        async with EventBus(buffer_size=2, on_full="block") as bus:
            sub = bus.subscribe("t")
            handled: list[int] = []

            async def handler(event: Event) -> None:
                handled.append(event.payload)

            bus.subscribe("t", handler)
            # Room in either mailbox can only be made by this thread's loop: publishing must
            # overfill them rather than wait for ever.
            for i in range(10):
                bus.publish("t", i)
            assert [(await sub.get(1)).payload for _ in range(10)] == list(range(10))
            assert sub.stats().dropped == 0
            while len(handled) < 10:
                await asyncio.sleep(0.001)
            assert handled == list(range(10))

    asyncio.run(main())


# --- failures ---------------------------------------------------------------------------------


def test_a_failing_handler_is_reported_on_system_error_and_delivery_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with EventBus() as bus:
        errors: list[Event] = []
        good: list[int] = []
        everything: list[str] = []

        def bad(event: Event) -> None:
            everything.append(event.topic)
            raise RuntimeError(f"cannot handle {event.payload}")

        bad_sub = bus.subscribe(">", bad)  # also receives system.error: must not loop
        bus.subscribe("work", lambda e: good.append(e.payload))
        bus.subscribe(topics.SYSTEM_ERROR, errors.append)
        for i in range(3):
            bus.publish("work", i)
        wait_until(lambda: len(good) == 3 and len(errors) == 3)
        time.sleep(0.05)
        assert len(errors) == 3  # the failures on system.error events were only logged
        payload = errors[0].payload
        assert isinstance(payload["error"], RuntimeError)
        assert payload["event"].topic == "work"
        assert payload["event"].payload == 0
        assert payload["subscription"] == bad_sub.id
        assert payload["pattern"] == ">"
        assert errors[0].source == "helixrt.events"
        assert everything.count("work") == 3
        assert everything.count(topics.SYSTEM_ERROR) == 3
        assert "cannot handle 0" in caplog.text


def test_a_failing_filter_is_reported_and_skips_only_its_subscriber() -> None:
    with EventBus() as bus:
        errors: list[Event] = []
        got: list[Event] = []
        bus.subscribe(topics.SYSTEM_ERROR, errors.append)
        sub = bus.subscribe("t", got.append, filter=lambda e: 1 / 0)
        other: list[Event] = []
        bus.subscribe("t", other.append)
        bus.publish("t")
        wait_until(lambda: len(errors) == 1 and len(other) == 1)
        assert isinstance(errors[0].payload["error"], ZeroDivisionError)
        assert errors[0].payload["subscription"] == sub.id
        assert got == []


def test_a_failing_coroutine_handler_is_reported() -> None:
    async def main() -> None:
        async with EventBus() as bus:
            ok: list[int] = []

            async def handler(event: Event) -> None:
                if event.payload == 1:
                    raise ValueError("one")
                ok.append(event.payload)

            bus.subscribe("n", handler)
            for i in range(3):
                bus.publish("n", i)
            error = await bus.wait_for(topics.SYSTEM_ERROR, timeout=5)
            assert isinstance(error.payload["error"], ValueError)
            while len(ok) < 2:
                await asyncio.sleep(0.001)
            assert ok == [0, 2]

    asyncio.run(main())


def test_handlers_may_subscribe_unsubscribe_and_publish_while_dispatching() -> None:
    with EventBus(buffer_size=4, on_full="block", dispatchers=1) as bus:
        late: list[int] = []
        echoes: list[int] = []
        subs: dict[str, helixrt.Subscription] = {}

        def handler(event: Event) -> None:
            n = event.payload
            if n == 0:
                subs["late"] = bus.subscribe("n", lambda e: late.append(e.payload))
            if n == 5:
                subs["self"].unsubscribe()
            # the echo subscriber is served by this same (only) dispatcher thread and is full
            # long before this loop ends: publishing must not wait for room it would make
            for _ in range(10):
                bus.publish("echo", n)

        subs["self"] = bus.subscribe("n", handler)
        bus.subscribe("echo", lambda e: echoes.append(e.payload))
        for i in range(10):
            bus.publish("n", i)
        wait_until(lambda: late[-1:] == [9])
        wait_until(lambda: len(echoes) == 60)
        assert late == list(range(late[0], 10))  # everything published after it subscribed
        assert not subs["self"].active
        assert echoes == [n for n in range(6) for _ in range(10)]


# --- shutdown ---------------------------------------------------------------------------------


def test_close_delivers_what_is_buffered_then_stops_its_threads() -> None:
    before = len(dispatcher_threads())
    bus = EventBus()
    seen: list[int] = []
    sub = bus.subscribe("t", lambda e: (time.sleep(0.001), seen.append(e.payload)))
    for i in range(200):
        bus.publish("t", i)
    assert len(dispatcher_threads()) == before + 2
    bus.close()
    assert seen == list(range(200))
    assert len(dispatcher_threads()) == before
    assert not sub.active
    assert bus.closed
    with pytest.raises(BusClosedError):
        bus.publish("t")
    with pytest.raises(BusClosedError):
        bus.subscribe("t")
    bus.close()  # idempotent


def test_close_gives_up_after_its_timeout_and_counts_the_rest_as_dropped() -> None:
    bus = EventBus()
    release = threading.Event()
    sub = bus.subscribe("t", lambda e: release.wait(5))
    for _ in range(10):
        bus.publish("t")
    started = time.monotonic()
    threading.Timer(0.3, release.set).start()
    bus.close(timeout=0.1)
    assert time.monotonic() - started < 2
    stats = sub.stats()
    assert stats.delivered + stats.dropped == 10
    assert stats.dropped >= 8
    assert not dispatcher_threads()


def test_aclose_lets_the_loops_readers_finish() -> None:
    async def main() -> list[int]:
        seen: list[int] = []
        bus = EventBus()

        async def handler(event: Event) -> None:
            await asyncio.sleep(0)
            seen.append(event.payload)

        bus.subscribe("t", handler)
        for i in range(300):
            bus.publish("t", i)
        await bus.aclose()
        return seen

    assert asyncio.run(main()) == list(range(300))


def test_a_blocked_publisher_is_released_when_its_subscriber_ends() -> None:
    with EventBus(buffer_size=1, on_full="block") as bus:
        sub = bus.subscribe("t")  # nobody reads it
        bus.publish("t", 0)
        finished = threading.Event()

        def publisher() -> None:
            bus.publish("t", 1)  # waits for room
            finished.set()

        thread = threading.Thread(target=publisher)
        thread.start()
        time.sleep(0.05)
        assert not finished.is_set()
        sub.unsubscribe()
        thread.join(5)
        assert finished.is_set()
        assert sub.stats().dropped == 1


def test_nothing_is_left_behind() -> None:
    import weakref

    class Payload:
        pass

    bus = EventBus()
    bus.subscribe("t", lambda e: None)
    event = bus.publish("t", Payload())
    ref = weakref.ref(event.payload)
    bus.close()
    del event, bus
    gc.collect()
    assert ref() is None
    assert not dispatcher_threads()


def test_errors_are_helix_errors() -> None:
    assert issubclass(BusClosedError, HelixError)
    assert issubclass(BusClosedError, RuntimeError)
    assert issubclass(EventTimeoutError, TimeoutError)
    assert issubclass(SubscriberLimitError, HelixError)


def test_the_provider_registry_publishes_on_a_real_bus() -> None:
    async def main() -> None:
        async with EventBus() as bus:
            registry = helixrt.ProviderRegistry(bus=bus)
            waiting = asyncio.create_task(bus.wait_for("provider.>", timeout=5))
            await asyncio.sleep(0)
            registry.register("llm", lambda: object())
            event = await waiting
            assert event.topic == topics.PROVIDER_REGISTERED
            assert event.payload["name"] == "llm"

    asyncio.run(main())


def test_readers_keep_what_is_buffered_after_close() -> None:
    async def main() -> list[int]:
        bus = EventBus()
        sub = bus.subscribe("t")
        for i in range(5):
            bus.publish("t", i)
        await bus.aclose()
        return [event.payload async for event in sub]

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_sse_handler_streams_events_to_an_http_client() -> None:
    import json

    from aiohttp import ClientSession, web

    from helixrt.events import sse_handler

    async def main() -> None:
        async with EventBus() as bus:
            app = web.Application()
            app.router.add_get("/events", sse_handler(bus, "cache.>"))
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            try:
                async with ClientSession() as client:
                    url = f"http://127.0.0.1:{port}/events"
                    async with client.get(url) as response:
                        assert response.headers["Content-Type"] == "text/event-stream"
                        assert await response.content.readline() == b": connected\n"
                        await response.content.readline()
                        bus.publish("other.topic", 0)
                        bus.publish("cache.hit", {"key": "k"}, source="cache")
                        lines = [await response.content.readline() for _ in range(4)]
                        assert lines[0].startswith(b"id: ")
                        assert lines[1] == b"event: cache.hit\n"
                        data = json.loads(lines[2].removeprefix(b"data: "))
                        assert data["payload"] == {"key": "k"}
                        assert data["source"] == "cache"
                        assert lines[3] == b"\n"
                    async with client.get(url, params={"pattern": "a.>.b"}) as response:
                        assert response.status == 400
                        assert "last token" in await response.text()
                    async with client.get(url, params={"pattern": "x.*"}) as response:
                        await response.content.readline()
                        await response.content.readline()
                        bus.publish("x.y", object())  # not JSON: sent as its repr
                        lines = [await response.content.readline() for _ in range(3)]
                        assert lines[1] == b"event: x.y\n"
                        assert b"object object at" in lines[2]
                # the clients went away: their subscriptions ended
                for _ in range(100):
                    if bus.stats().subscribers_active == 0:
                        break
                    await asyncio.sleep(0.01)
                assert bus.stats().subscribers_active == 0
            finally:
                await runner.cleanup()

    asyncio.run(main())
