"""CircuitBreaker: the state machine through every way of using it, on a clock the tests move."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest

import helixrt
from helixrt import CircuitBreaker
from helixrt.errors import CircuitOpenError, HelixError, InvalidArgumentError, InvalidTypeError


def breaker(**options: Any) -> CircuitBreaker:
    defaults: dict[str, Any] = {"failure_threshold": 3, "reset_timeout": 10.0}
    return CircuitBreaker("upstream", _manual_clock=True, **(defaults | options))


def fail() -> None:
    raise ConnectionError("upstream down")


def trip(b: CircuitBreaker) -> None:
    while b.state == "closed":
        with pytest.raises(ConnectionError):
            b.call(fail)


def test_defaults_are_the_originals() -> None:
    b = CircuitBreaker()
    assert b.name == "default"
    assert b.state == "closed"
    assert b.retry_after == 0.0


def test_opens_after_consecutive_failures_and_refuses_without_calling() -> None:
    b = breaker()
    with pytest.raises(ConnectionError):
        b.call(fail)
    assert b.call(lambda: "ok") == "ok"  # a success resets the count
    for _ in range(3):
        with pytest.raises(ConnectionError):
            b.call(fail)
    assert b.state == "open"
    calls: list[int] = []
    with pytest.raises(CircuitOpenError) as info:
        b.call(calls.append, 1)
    assert calls == []
    error = info.value
    assert isinstance(error, HelixError)
    assert isinstance(error, ConnectionError)
    assert error.breaker == "upstream"
    assert error.retry_after == pytest.approx(10.0)
    b._advance(4.0)
    assert b.retry_after == pytest.approx(6.0)
    stats = b.stats()
    assert (stats.calls, stats.successes, stats.failures, stats.rejected) == (5, 1, 4, 1)
    assert stats.state == "open"


def test_half_open_trials_close_it_or_open_it_again() -> None:
    b = breaker(success_threshold=2, half_open_max_calls=3)
    trip(b)
    b._advance(10.0)
    assert b.state == "half_open"
    assert b.call(lambda: 1) == 1
    assert b.state == "half_open"
    assert b.call(lambda: 2) == 2
    assert b.state == "closed"
    trip(b)
    b._advance(10.0)
    with pytest.raises(ConnectionError):
        b.call(fail)
    assert b.state == "open"
    assert b.retry_after == pytest.approx(10.0)


def test_half_open_never_lets_more_trials_through_than_allowed() -> None:
    b = breaker(half_open_max_calls=2, success_threshold=5)
    trip(b)
    b._advance(10.0)
    with b, b:  # two trials in flight
        with pytest.raises(CircuitOpenError) as info:
            b.call(lambda: None)
        assert info.value.retry_after == 0.0
    assert b.call(lambda: None) is None  # the slots are free again


def test_an_outcome_from_before_a_state_change_does_not_count() -> None:
    b = breaker(success_threshold=1)
    release = threading.Event()
    result: list[BaseException] = []

    def slow_failure() -> None:
        release.wait(5)
        raise ConnectionError("late")

    def run() -> None:
        try:
            b.call(slow_failure)
        except BaseException as err:
            result.append(err)

    started_while_closed = threading.Thread(target=run)
    started_while_closed.start()
    trip(b)
    b._advance(10.0)
    assert b.state == "half_open"
    release.set()
    started_while_closed.join(5)
    assert isinstance(result[0], ConnectionError)
    assert b.state == "half_open"  # the late failure did not reopen it
    b.call(lambda: None)
    assert b.state == "closed"


def test_failure_rate_over_a_window() -> None:
    b = breaker(failure_threshold=100, failure_rate=0.5, window=10, min_calls=4)
    outcomes = [fail, lambda: None, fail, lambda: None]
    for fn in outcomes[:3]:
        with contextlib.suppress(ConnectionError):
            b.call(fn)
    assert b.state == "closed"  # under min_calls
    b.call(outcomes[3])
    assert b.state == "open"  # 2 of 4 failed


def test_slow_calls_count_as_failures() -> None:
    b = breaker(slow_call_duration=1.0, failure_threshold=2)
    for _ in range(2):
        with b:
            b._advance(1.5)
    assert b.state == "open"


def test_excluded_exceptions_count_as_successes_and_cancellation_not_at_all() -> None:
    b = breaker(exclude=[KeyError], failure_threshold=1)
    with pytest.raises(KeyError):
        b.call(lambda: {}["missing"])
    with pytest.raises(KeyboardInterrupt), b:
        raise KeyboardInterrupt
    assert b.state == "closed"
    stats = b.stats()
    assert (stats.successes, stats.failures) == (1, 0)


def test_with_async_with_and_decorators() -> None:
    b = breaker(failure_threshold=2)

    @b
    def double(x: int) -> int:
        return 2 * x

    @b
    async def triple(x: int) -> int:
        await asyncio.sleep(0)
        return 3 * x

    @b
    async def broken() -> None:
        raise TimeoutError("slow upstream")

    assert double(2) == 4
    assert double.__name__ == "double"

    async def main() -> None:
        assert await triple(2) == 6
        async with b:
            pass
        for _ in range(2):
            with pytest.raises(TimeoutError):
                await broken()
        with pytest.raises(CircuitOpenError):
            await triple(1)
        with pytest.raises(CircuitOpenError):
            async with b:
                pass

    asyncio.run(main())
    assert b.state == "open"


def test_concurrent_tasks_each_keep_their_own_permit() -> None:
    b = breaker(failure_threshold=50)

    async def one(i: int) -> None:
        async with b:
            await asyncio.sleep(0.001 * (i % 3))
            if i % 2:
                raise ConnectionError(str(i))

    async def main() -> None:
        results = await asyncio.gather(*(one(i) for i in range(20)), return_exceptions=True)
        assert sum(isinstance(r, ConnectionError) for r in results) == 10

    asyncio.run(main())
    stats = b.stats()
    assert (stats.calls, stats.successes, stats.failures) == (20, 10, 10)


def test_listeners_hear_every_change_and_a_failing_one_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    b = breaker(success_threshold=1)
    heard: list[tuple[str, str, str]] = []
    b.add_listener(lambda br, old, new: heard.append((br.name, old, new)))

    def broken_listener(br: CircuitBreaker, old: str, new: str) -> None:
        raise RuntimeError("listener bug")

    b.add_listener(broken_listener)
    trip(b)
    b._advance(10.0)
    b.call(lambda: None)
    assert heard == [
        ("upstream", "closed", "open"),
        ("upstream", "open", "half_open"),
        ("upstream", "half_open", "closed"),
    ]
    assert "a listener of circuit breaker 'upstream' failed" in caplog.text
    b.remove_listener(broken_listener)


def test_force_open_and_reset() -> None:
    b = breaker()
    b.force_open()
    assert b.state == "open"
    with pytest.raises(CircuitOpenError):
        b.call(lambda: None)
    b.reset()
    assert b.state == "closed"
    assert b.call(lambda: 1) == 1


def test_threads_share_one_breaker() -> None:
    b = breaker(failure_threshold=10_000)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(2000):
                with contextlib.suppress(ConnectionError):
                    b.call(fail if i % 4 == 0 else (lambda: None))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stats = b.stats()
    assert stats.calls == 8000
    assert (stats.successes, stats.failures) == (6000, 2000)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold must be an int >= 1, got 0"),
        ({"success_threshold": -1}, "success_threshold must be an int >= 1, got -1"),
        ({"reset_timeout": 0.0}, "reset_timeout must be a positive number of seconds, got 0"),
        ({"half_open_max_calls": 0}, "half_open_max_calls must be an int >= 1"),
        ({"failure_rate": 1.5}, "failure_rate must be a number in \\(0, 1\\] or None, got 1.5"),
        ({"window": 0}, "window must be an int >= 1"),
        ({"slow_call_duration": -2.0}, "slow_call_duration must be a positive number"),
    ],
)
def test_bad_arguments_are_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        CircuitBreaker("x", **options)


def test_exclude_must_hold_exception_classes() -> None:
    with pytest.raises(InvalidTypeError, match="exclude must hold exception classes"):
        CircuitBreaker(exclude=["KeyError"])  # type: ignore[list-item]


def test_lazy_names() -> None:
    assert helixrt.CircuitBreaker is CircuitBreaker
    assert helixrt.CircuitOpenError is CircuitOpenError


def test_decorated_functions_keep_their_identity_and_bind_as_methods() -> None:
    b = breaker(failure_threshold=1)

    @b
    def greet(name: str) -> str:
        """Says hello."""
        return f"hello {name}"

    class Client:
        @b
        def fetch(self, path: str) -> tuple[Client, str]:
            return self, path

    assert greet.__name__ == "greet"
    assert greet.__doc__ == "Says hello."
    assert greet.__wrapped__("x") == "hello x"  # type: ignore[attr-defined]
    assert greet.breaker is b  # type: ignore[attr-defined]
    client = Client()
    assert client.fetch("/models") == (client, "/models")
    assert Client.fetch(client, "/a") == (client, "/a")
    with pytest.raises(TypeError):
        greet()  # type: ignore[call-arg]
    assert b.state == "open"  # a TypeError from the call is a failure like any other
    with pytest.raises(CircuitOpenError):
        client.fetch("/b")


def test_changes_of_state_are_published_on_a_bus() -> None:
    from helixrt import topics
    from helixrt.events import EventBus

    with EventBus(history=10) as bus:
        b = breaker(bus=bus, success_threshold=1)
        trip(b)
        b._advance(10.0)
        assert b.call(lambda: "ok") == "ok"
        changes = [
            (e.payload["breaker"], e.payload["old"], e.payload["new"])
            for e in bus.history(topics.BREAKER_STATE_CHANGED)
        ]
        assert changes == [
            ("upstream", "closed", "open"),
            ("upstream", "open", "half_open"),
            ("upstream", "half_open", "closed"),
        ]
        assert {e.source for e in bus.history()} == {"circuit_breaker"}
