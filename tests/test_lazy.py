"""Lazy: one initialisation under contention, failures, retries, cancellation and reentry."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from typing import Any

import pytest

import helixrt.lazy as lazy_module
from helixrt.errors import HelixError, InvalidArgumentError, InvalidTypeError
from helixrt.lazy import Lazy, LazyReentryError
from helixrt.retries import RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(lazy_module, "_clock", fake)
    return fake


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []

    async def async_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(lazy_module, "_sleep", slept.append)
    monkeypatch.setattr(lazy_module, "_async_sleep", async_sleep)
    return slept


def run(coro: Any) -> Any:
    """asyncio.run, failing the test on anything sent to the loop's exception handler (such as
    "Task exception was never retrieved")."""
    reported: list[dict[str, Any]] = []

    async def main() -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        return await coro

    result = asyncio.run(main())
    gc.collect()
    assert reported == []
    return result


# --- once ---------------------------------------------------------------------------------


def test_one_initialisation_under_16_threads() -> None:
    calls: list[int] = []

    def factory() -> object:
        calls.append(1)
        time.sleep(0.05)  # long enough for every thread to arrive while it runs
        return object()

    lazy = Lazy(factory)
    barrier = threading.Barrier(16)
    results: list[object] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        value = lazy.get()
        with lock:
            results.append(value)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1
    assert len(results) == 16
    assert all(value is results[0] for value in results)
    assert lazy.get() is results[0]
    assert len(calls) == 1


def test_one_initialisation_under_100_tasks() -> None:
    calls: list[int] = []

    async def factory() -> object:
        calls.append(1)
        await asyncio.sleep(0.01)
        return object()

    lazy = Lazy(factory)

    async def main() -> list[object]:
        return list(await asyncio.gather(*(lazy.aget() for _ in range(100))))

    results = run(main())
    assert len(calls) == 1
    assert len(results) == 100
    assert all(value is results[0] for value in results)
    assert run(lazy.aget()) is results[0]
    assert len(calls) == 1


def test_one_initialisation_for_two_event_loops() -> None:
    calls: list[int] = []

    async def factory() -> object:
        calls.append(1)
        await asyncio.sleep(0.05)
        return object()

    lazy = Lazy(factory)
    barrier = threading.Barrier(2)
    results: list[object] = []

    def worker() -> None:
        barrier.wait()
        results.append(asyncio.run(lazy.aget()))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1
    assert len(results) == 2
    assert results[0] is results[1]


def test_none_is_a_value_and_is_kept() -> None:
    calls: list[int] = []
    lazy = Lazy(lambda: calls.append(1))
    assert lazy.get() is None
    assert lazy.get() is None
    assert calls == [1]
    assert lazy.initialized


# --- failures ------------------------------------------------------------------------------


def test_a_failure_is_not_cached_by_default() -> None:
    outcomes: list[Any] = [ConnectionError("down"), "client"]
    calls: list[int] = []

    def factory() -> str:
        calls.append(1)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return str(outcome)

    lazy = Lazy(factory)
    with pytest.raises(ConnectionError, match="down"):
        lazy.get()
    assert not lazy.initialized
    assert lazy.get() == "client"
    assert len(calls) == 2


def test_a_failure_is_cached_for_failure_ttl(clock: Clock) -> None:
    calls: list[int] = []
    error = ConnectionError("down")

    def factory() -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise error
        return "client"

    lazy = Lazy(factory, failure_ttl=5.0)
    with pytest.raises(ConnectionError) as first:
        lazy.get()
    clock.now += 4.9
    with pytest.raises(ConnectionError) as second:
        lazy.get()
    assert first.value is error
    assert second.value is error
    assert len(calls) == 1  # raised again without calling the factory
    clock.now += 0.1
    with pytest.raises(ConnectionError):
        lazy.get()  # expired: tried again, failed again, cached again
    assert len(calls) == 2
    clock.now += 1.0
    with pytest.raises(ConnectionError):
        lazy.get()
    assert len(calls) == 2
    lazy.reset()  # forgets the failure too
    assert lazy.get() == "client"
    assert len(calls) == 3


def test_a_cached_failure_is_raised_by_aget_too(clock: Clock) -> None:
    calls: list[int] = []

    async def factory() -> str:
        calls.append(1)
        raise TimeoutError("slow")

    lazy = Lazy(factory, failure_ttl=1.0)

    async def main() -> None:
        for _ in range(3):
            with pytest.raises(TimeoutError, match="slow"):
                await lazy.aget()

    run(main())
    assert len(calls) == 1
    clock.now += 1.0
    with pytest.raises(TimeoutError):
        run(lazy.aget())
    assert len(calls) == 2


def test_concurrent_waiters_share_the_failure_of_their_initialisation() -> None:
    calls: list[int] = []
    error = ConnectionError("down")

    async def factory() -> str:
        calls.append(1)
        await asyncio.sleep(0.01)
        raise error

    lazy = Lazy(factory)

    async def main() -> list[BaseException | str]:
        return await asyncio.gather(*(lazy.aget() for _ in range(10)), return_exceptions=True)

    results = run(main())
    assert len(calls) == 1
    assert all(result is error for result in results)


# --- retries --------------------------------------------------------------------------------


def flaky(failures: int, calls: list[int], error: type[Exception] = ConnectionError) -> Any:
    def factory() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise error(f"attempt {len(calls)}")
        return "client"

    return factory


def test_retry_policy_retries_the_factory_within_one_get(sleeps: list[float]) -> None:
    calls: list[int] = []
    policy = RetryPolicy(3, base_delay=0.5, jitter="none")
    lazy = Lazy(flaky(2, calls), retry=policy)
    assert lazy.get() == "client"
    assert len(calls) == 3
    assert sleeps == [0.5, 1.0]


def test_retry_policy_gives_up_with_the_last_error(sleeps: list[float]) -> None:
    calls: list[int] = []
    lazy = Lazy(flaky(10, calls), retry=RetryPolicy(3, base_delay=0.5, jitter="none"))
    with pytest.raises(ConnectionError, match="attempt 3"):
        lazy.get()
    assert len(calls) == 3
    assert sleeps == [0.5, 1.0]
    assert not lazy.initialized


def test_retry_policy_does_not_retry_what_it_should_not(sleeps: list[float]) -> None:
    calls: list[int] = []
    lazy = Lazy(flaky(1, calls, ValueError), retry=RetryPolicy(5, jitter="none"))
    with pytest.raises(ValueError, match="attempt 1"):
        lazy.get()
    assert len(calls) == 1
    assert sleeps == []


def test_retry_policy_is_used_by_aget(sleeps: list[float]) -> None:
    calls: list[int] = []
    sync_factory = flaky(2, calls)

    async def factory() -> str:
        return str(sync_factory())

    lazy = Lazy(factory, retry=RetryPolicy(4, base_delay=0.25, jitter="none"))
    assert run(lazy.aget()) == "client"
    assert len(calls) == 3
    assert sleeps == [0.25, 0.5]


# --- cancellation ---------------------------------------------------------------------------


def test_cancelling_the_first_caller_does_not_cancel_the_initialisation() -> None:
    calls: list[int] = []
    value = object()

    async def main() -> None:
        release = asyncio.Event()
        running = asyncio.Event()

        async def factory() -> object:
            calls.append(1)
            running.set()
            await release.wait()
            return value

        lazy = Lazy(factory)
        first = asyncio.create_task(lazy.aget())
        await running.wait()
        second = asyncio.create_task(lazy.aget())
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert not lazy.initialized
        release.set()
        assert await second is value
        assert await lazy.aget() is value
        assert lazy.initialized

    run(main())
    assert calls == [1]


def test_an_initialisation_whose_only_caller_was_cancelled_completes() -> None:
    calls: list[int] = []

    async def main() -> None:
        release = asyncio.Event()

        async def factory() -> str:
            calls.append(1)
            await release.wait()
            return "client"

        lazy = Lazy(factory)
        first = asyncio.create_task(lazy.aget())
        await asyncio.sleep(0.01)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        release.set()
        for _ in range(10):
            await asyncio.sleep(0)
        assert lazy.initialized
        assert await lazy.aget() == "client"

    run(main())
    assert calls == [1]


def test_a_failure_nobody_waits_for_is_not_reported_as_never_retrieved() -> None:
    async def main() -> Lazy[str]:
        release = asyncio.Event()

        async def factory() -> str:
            await release.wait()
            raise ConnectionError("down")

        lazy = Lazy(factory)
        first = asyncio.create_task(lazy.aget())
        await asyncio.sleep(0.01)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        release.set()
        for _ in range(10):
            await asyncio.sleep(0)
        return lazy

    lazy = run(main())  # run() fails on anything given to the loop's exception handler
    assert not lazy.initialized


def test_an_initialisation_cancelled_with_its_loop_is_started_again() -> None:
    calls: list[int] = []

    async def factory() -> str:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(3600)
        return "client"

    lazy = Lazy(factory)

    async def abandon() -> None:
        task = asyncio.create_task(lazy.aget())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the loop ends here, with the initialisation pending: asyncio.run cancels it

    run(abandon())
    assert not lazy.initialized
    assert run(lazy.aget()) == "client"
    assert len(calls) == 2


# --- reentry --------------------------------------------------------------------------------


def test_get_from_inside_the_factory_raises_instead_of_deadlocking() -> None:
    def make_client() -> str:
        return lazy.get()

    lazy: Lazy[str] = Lazy(make_client)
    with pytest.raises(LazyReentryError, match="make_client") as info:
        lazy.get()
    assert isinstance(info.value, HelixError)
    assert isinstance(info.value, RuntimeError)
    assert not lazy.initialized


def test_aget_from_inside_the_factory_raises_instead_of_deadlocking() -> None:
    async def make_client() -> str:
        return await lazy.aget()

    lazy: Lazy[str] = Lazy(make_client)
    with pytest.raises(LazyReentryError, match="make_client"):
        run(lazy.aget())


def test_aget_from_a_task_the_factory_awaits_raises() -> None:
    async def make_client() -> str:
        return await asyncio.create_task(lazy.aget())

    lazy: Lazy[str] = Lazy(make_client)
    with pytest.raises(LazyReentryError, match="make_client"):
        run(lazy.aget())


def test_one_lazy_may_use_another_in_its_factory() -> None:
    inner = Lazy(lambda: 2)
    outer = Lazy(lambda: inner.get() * 21)
    assert outer.get() == 42


# --- reset and initialized ------------------------------------------------------------------


def test_reset_forgets_the_value() -> None:
    calls: list[int] = []

    def factory() -> object:
        calls.append(1)
        return object()

    lazy = Lazy(factory)
    assert not lazy.initialized
    first = lazy.get()
    assert lazy.initialized
    assert "initialized=True" in repr(lazy)
    lazy.reset()
    assert not lazy.initialized
    second = lazy.get()
    assert second is not first
    assert len(calls) == 2


def test_reset_of_an_async_lazy() -> None:
    calls: list[int] = []

    async def factory() -> int:
        calls.append(1)
        return len(calls)

    lazy = Lazy(factory)
    assert run(lazy.aget()) == 1
    assert lazy.initialized
    lazy.reset()
    assert not lazy.initialized
    assert run(lazy.aget()) == 2


# --- the kind of factory -------------------------------------------------------------------


def test_get_of_an_async_factory_is_refused() -> None:
    async def factory() -> str:
        return "client"

    lazy = Lazy(factory)
    with pytest.raises(InvalidTypeError, match="aget"):
        lazy.get()
    assert run(lazy.aget()) == "client"
    with pytest.raises(InvalidTypeError, match="aget"):
        lazy.get()  # even once there is a value: the same answer every time


def test_get_of_a_factory_returning_an_awaitable_is_refused_and_aget_takes_it() -> None:
    async def connect() -> str:
        return "client"

    def factory() -> Any:
        return connect()

    lazy = Lazy(factory)
    with pytest.raises(InvalidTypeError, match="awaitable"):
        lazy.get()  # the coroutine is closed: no "never awaited" warning
    assert run(lazy.aget()) == "client"


def test_aget_takes_a_plain_factory() -> None:
    calls: list[int] = []

    def factory() -> str:
        calls.append(1)
        return "client"

    lazy = Lazy(factory)
    assert run(lazy.aget()) == "client"
    assert lazy.get() == "client"
    assert calls == [1]


def test_an_async_callable_object_is_an_async_factory() -> None:
    class Connect:
        async def __call__(self) -> str:
            return "client"

    lazy = Lazy(Connect())
    with pytest.raises(InvalidTypeError):
        lazy.get()
    assert run(lazy.aget()) == "client"


# --- bad arguments --------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [-1, -0.5, float("nan"), float("inf"), True, "5", None])
def test_bad_failure_ttl(ttl: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="failure_ttl"):
        Lazy(lambda: 1, failure_ttl=ttl)


def test_factory_must_be_callable() -> None:
    with pytest.raises(InvalidTypeError, match="factory must be a callable"):
        Lazy(42)  # type: ignore[call-overload]


def test_retry_must_be_a_policy() -> None:
    with pytest.raises(InvalidTypeError, match="RetryPolicy"):
        Lazy(lambda: 1, retry=3)  # type: ignore[call-overload]


def test_lazy_name() -> None:
    import helixrt

    assert helixrt.Lazy is Lazy
