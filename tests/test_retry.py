"""RetryPolicy and `retry`: attempts counted exactly, the last error raised as itself, backoff
and jitter, total_timeout on a fake clock, what is never retried, async cancellation during a
backoff sleep, Retry-After, HTTP statuses and methods, bad arguments and the decorator's forms.

Sleeps go to a fake clock (`fake_time`) except in the few tests that check the real sleeps are
used; those sleep for a few hundredths of a second in all.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import importlib
import inspect
import logging
import pickle
import random
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from helixrt.errors import CircuitOpenError, HelixError, InvalidArgumentError
from helixrt.retries import RetryPolicy, retry

retry_module = importlib.import_module("helixrt.retries")


class FakeTime:
    """A monotonic clock that moves only when something sleeps on it or calls `advance`."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(retry_module, "_clock", fake.clock)
    monkeypatch.setattr(retry_module, "_sleep", fake.sleep)
    monkeypatch.setattr(retry_module, "_async_sleep", fake.async_sleep)
    return fake


def no_jitter(max_attempts: int = 3, **options: Any) -> RetryPolicy:
    return RetryPolicy(max_attempts, jitter="none", **options)


class Flaky:
    """Raises a new `error` on each of its first `failures` calls, then returns "ok"."""

    def __init__(self, failures: int, error: type[BaseException] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.raised: list[BaseException] = []
        self.succeeded = False

    @property
    def calls(self) -> int:
        return len(self.raised) + self.succeeded

    def __call__(self) -> str:
        if len(self.raised) < self.failures:
            err = self.error(f"attempt {len(self.raised) + 1}")
            self.raised.append(err)
            raise err
        self.succeeded = True
        return "ok"


def always_fails(raised: list[BaseException]) -> None:
    err = ConnectionError(f"attempt {len(raised) + 1}")
    raised.append(err)
    raise err


async def always_fails_async(raised: list[BaseException]) -> None:
    await asyncio.sleep(0)
    err = TimeoutError(f"attempt {len(raised) + 1}")
    raised.append(err)
    raise err


# ------------------------------------------------------------------------------ attempts


@pytest.mark.parametrize("failures", [0, 1, 2, 4])
def test_a_function_failing_k_times_is_called_k_plus_one_times(
    fake_time: FakeTime, failures: int
) -> None:
    flaky = Flaky(failures)
    assert retry(flaky, max_attempts=5)() == "ok"
    assert flaky.calls == failures + 1
    assert len(fake_time.sleeps) == failures


def test_gives_up_after_max_attempts_raising_the_last_error_itself(fake_time: FakeTime) -> None:
    raised: list[BaseException] = []
    wrapped = retry(always_fails, max_attempts=3)
    with pytest.raises(ConnectionError) as info:
        wrapped(raised)
    assert len(raised) == 3
    assert info.value is raised[-1]
    assert len(fake_time.sleeps) == 2
    # Not wrapped, not chained to the errors of earlier attempts, raised from where it was.
    assert type(info.value) is ConnectionError
    assert info.value.__cause__ is None
    assert info.value.__context__ is None
    frames = traceback.extract_tb(info.value.__traceback__)
    assert [frame.name for frame in frames[-2:]] == ["wrapper", "always_fails"]
    assert frames[-1].line == "raise err"


def test_one_attempt_means_no_retry(fake_time: FakeTime) -> None:
    flaky = Flaky(1)
    with pytest.raises(ConnectionError):
        retry(flaky, max_attempts=1)()
    assert flaky.calls == 1
    assert fake_time.sleeps == []


def test_each_call_of_the_wrapper_starts_afresh(fake_time: FakeTime) -> None:
    calls = 0

    @retry(max_attempts=2)
    def fails_once_per_call() -> int:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise ConnectionError
        return calls

    assert [fails_once_per_call() for _ in range(3)] == [2, 4, 6]


def test_threads_share_a_wrapper_without_sharing_attempts(fake_time: FakeTime) -> None:
    local = threading.local()
    results: list[int] = []

    @retry(max_attempts=3)
    def fails_twice_per_thread() -> int:
        local.calls = getattr(local, "calls", 0) + 1
        if local.calls < 3:
            raise ConnectionError
        return int(local.calls)

    def run() -> None:
        results.append(fails_twice_per_thread())

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [3] * 8


# ------------------------------------------------------------------------- total_timeout


def test_total_timeout_bounds_the_run_including_sleeps(fake_time: FakeTime) -> None:
    # Each attempt takes 0.1 s; waits 0.3, 0.6, 1.2: the third would end at 2.4 > 2.0.
    raised: list[BaseException] = []
    policy = no_jitter(100, base_delay=0.3, max_delay=10.0, total_timeout=2.0)

    @retry(policy)
    def slow_failure() -> None:
        fake_time.advance(0.1)
        always_fails(raised)

    started = fake_time.now
    with pytest.raises(ConnectionError) as info:
        slow_failure()
    assert len(raised) == 3
    assert info.value is raised[-1]
    assert fake_time.sleeps == pytest.approx([0.3, 0.6])
    assert fake_time.now - started == pytest.approx(1.2)


def test_a_sleep_ending_exactly_at_the_deadline_is_taken(fake_time: FakeTime) -> None:
    flaky = Flaky(10)
    with pytest.raises(ConnectionError):
        retry(no_jitter(100, base_delay=0.25, total_timeout=0.75))(flaky)()
    assert fake_time.sleeps == [0.25, 0.5]  # then 1.0 would end at 1.75 > 0.75
    assert flaky.calls == 3


def test_max_attempts_stops_before_total_timeout(fake_time: FakeTime) -> None:
    flaky = Flaky(10)
    with pytest.raises(ConnectionError):
        retry(flaky, max_attempts=2, total_timeout=1000.0)()
    assert flaky.calls == 2


def test_total_timeout_bounds_an_async_run(fake_time: FakeTime) -> None:
    raised: list[BaseException] = []
    wrapped = retry(no_jitter(100, base_delay=1.0, total_timeout=3.5))(always_fails_async)
    with pytest.raises(TimeoutError) as info:
        asyncio.run(wrapped(raised))
    assert info.value is raised[-1]
    assert fake_time.sleeps == [1.0, 2.0]  # then 4.0 would pass the 3.5 s deadline
    assert len(raised) == 3


# ------------------------------------------------------------------------ backoff, jitter


def test_backoff_without_jitter_doubles_up_to_max_delay(fake_time: FakeTime) -> None:
    flaky = Flaky(8)
    retry(no_jitter(9, base_delay=0.1, max_delay=1.0))(flaky)()
    assert fake_time.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])


def test_backoff_with_another_factor() -> None:
    policy = no_jitter(base_delay=0.5, factor=3.0, max_delay=100.0)
    assert [policy.delay(n) for n in range(1, 6)] == pytest.approx([0.5, 1.5, 4.5, 13.5, 40.5])
    assert no_jitter(factor=1.0).delay(50) == pytest.approx(0.1)


def test_backoff_never_overflows_and_zero_stays_zero() -> None:
    assert no_jitter(base_delay=0.1, factor=2.0, max_delay=7.0).delay(100_000) == 7.0
    assert no_jitter(base_delay=1e300, factor=10.0, max_delay=7.0).delay(3) == 7.0
    assert no_jitter(base_delay=0.0, factor=1e10).delay(100_000) == 0.0
    assert RetryPolicy(base_delay=0.0).delay(3) == 0.0
    assert no_jitter(max_delay=0.0).delay(1) == 0.0


@pytest.mark.parametrize("jitter", ["full", "equal"])
def test_jitter_draws_from_the_injected_random(fake_time: FakeTime, jitter: Any) -> None:
    policy = RetryPolicy(6, base_delay=0.1, max_delay=1.0, jitter=jitter, _random=random.Random(7))
    retry(policy)(Flaky(5))()
    reference = random.Random(7)
    expected = []
    for delay in [0.1, 0.2, 0.4, 0.8, 1.0]:
        if jitter == "full":
            expected.append(reference.uniform(0.0, delay))
        else:
            expected.append(delay / 2 + reference.uniform(0.0, delay / 2))
    assert fake_time.sleeps == expected


@pytest.mark.parametrize(("jitter", "low"), [("full", 0.0), ("equal", 0.5)])
def test_jitter_stays_in_its_range_and_varies(jitter: Any, low: float) -> None:
    policy = RetryPolicy(jitter=jitter, base_delay=1.0, _random=random.Random(1))
    draws = [policy.delay(1) for _ in range(2000)]
    assert all(low <= draw <= 1.0 for draw in draws)
    assert min(draws) < low + 0.01
    assert max(draws) > 0.99
    assert len(set(draws)) > 1900


def test_jitter_uses_the_random_module_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    assert RetryPolicy(jitter="full").delay(2) == pytest.approx(0.2)
    assert RetryPolicy(jitter="equal").delay(2) == pytest.approx(0.2)
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    assert RetryPolicy(jitter="full").delay(2) == 0.0
    assert RetryPolicy(jitter="equal").delay(2) == pytest.approx(0.1)


def test_sync_retries_sleep_with_time_sleep() -> None:
    assert retry_module._sleep is time.sleep
    flaky = Flaky(1)
    started = time.monotonic()
    retry(no_jitter(2, base_delay=0.01))(flaky)()
    assert time.monotonic() - started >= 0.01
    assert flaky.calls == 2


# ------------------------------------------------------------------------ what is retried


def test_exceptions_not_in_retry_on_propagate_at_once(fake_time: FakeTime) -> None:
    flaky = Flaky(3, ValueError)
    with pytest.raises(ValueError, match="attempt 1") as info:
        retry(flaky, max_attempts=5)()
    assert info.value is flaky.raised[0]
    assert flaky.calls == 1
    assert fake_time.sleeps == []


def test_retry_on_can_be_one_class_or_several(fake_time: FakeTime) -> None:
    assert retry(Flaky(2, KeyError), retry_on=KeyError)() == "ok"
    assert retry(Flaky(2, KeyError), retry_on=(ValueError, LookupError))() == "ok"
    flaky = Flaky(2, KeyError)
    with pytest.raises(KeyError):
        retry(flaky, retry_on=(ValueError,))()
    assert flaky.calls == 1
    flaky = Flaky(2)
    with pytest.raises(ConnectionError):
        retry(flaky, retry_on=())()
    assert flaky.calls == 1


def test_the_defaults_retry_connection_and_timeout_errors(fake_time: FakeTime) -> None:
    for error in (ConnectionError, ConnectionResetError, TimeoutError, asyncio.TimeoutError):
        assert retry(Flaky(2, error))() == "ok"
    flaky = Flaky(2, OSError)
    with pytest.raises(OSError, match="attempt 1"):
        retry(flaky)()


@pytest.mark.parametrize("retry_on", [(ConnectionError,), (Exception,), (HelixError,)])
def test_circuit_open_error_is_not_retried_unless_listed_itself(
    fake_time: FakeTime, retry_on: tuple[type[Exception], ...]
) -> None:
    calls = 0

    @retry(max_attempts=5, retry_on=retry_on)
    def refused() -> None:
        nonlocal calls
        calls += 1
        raise CircuitOpenError("upstream", 2.0)

    with pytest.raises(CircuitOpenError):
        refused()
    assert calls == 1
    assert fake_time.sleeps == []
    assert not RetryPolicy(retry_on=retry_on).should_retry_exception(CircuitOpenError("b", 1.0))


def test_circuit_open_error_listed_is_retried_after_its_retry_after(fake_time: FakeTime) -> None:
    calls = 0

    @retry(no_jitter(3, retry_on=(ConnectionError, CircuitOpenError), max_retry_after=5.0))
    def refused() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise CircuitOpenError("upstream", 2.0)
        if calls == 2:
            raise CircuitOpenError("upstream", 500.0)
        return "ok"

    assert refused() == "ok"
    # Not the 0.1 s and 0.2 s backoff: the breaker's own wait, capped by max_retry_after.
    assert fake_time.sleeps == [2.0, 5.0]


@pytest.mark.parametrize(
    "error", [KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit]
)
def test_base_exceptions_are_never_retried(fake_time: FakeTime, error: type[BaseException]) -> None:
    flaky = Flaky(3, error)
    with pytest.raises(error):
        retry(flaky, max_attempts=5, retry_on=Exception)()
    assert flaky.calls == 1
    assert not RetryPolicy(retry_on=Exception).should_retry_exception(error())


@pytest.mark.parametrize(
    "retry_on", [KeyboardInterrupt, (asyncio.CancelledError,), (ConnectionError, BaseException)]
)
def test_base_exceptions_cannot_be_listed(retry_on: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^retry_on must .*subclasses of Exception"):
        RetryPolicy(retry_on=retry_on)


# ------------------------------------------------------------------------------ async


def test_async_counts_attempts_and_sleeps_with_the_async_sleep(
    fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def blocking_sleep(seconds: float) -> None:
        raise AssertionError("the async wrapper must not call time.sleep")

    monkeypatch.setattr(retry_module, "_sleep", blocking_sleep)
    calls = 0

    @retry(no_jitter(4))
    async def fails_twice() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls < 3:
            raise ConnectionError
        return "ok"

    assert inspect.iscoroutinefunction(fails_twice)
    assert asyncio.run(fails_twice()) == "ok"
    assert calls == 3
    assert fake_time.sleeps == pytest.approx([0.1, 0.2])


def test_async_gives_up_raising_the_last_error_itself(fake_time: FakeTime) -> None:
    raised: list[BaseException] = []
    with pytest.raises(TimeoutError) as info:
        asyncio.run(retry(always_fails_async, max_attempts=4)(raised))
    assert len(raised) == 4
    assert info.value is raised[-1]
    assert info.value.__context__ is None
    frames = traceback.extract_tb(info.value.__traceback__)
    assert [frame.name for frame in frames[-2:]] == ["wrapper", "always_fails_async"]


def test_async_non_retried_errors_propagate_at_once(fake_time: FakeTime) -> None:
    calls = 0

    @retry(max_attempts=5)
    async def bad_request() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        asyncio.run(bad_request())
    assert calls == 1
    assert fake_time.sleeps == []


def test_async_backoff_lets_the_event_loop_run() -> None:
    ticks = 0
    calls = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    @retry(no_jitter(2, base_delay=0.02))
    async def fails_once() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError
        return ticks

    async def main() -> tuple[int, int]:
        background = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        result = await fails_once()
        background.cancel()
        return before, result

    before, during = asyncio.run(main())
    assert during > before  # the ticker ran while the wrapper slept: asyncio.sleep, not time.sleep


def test_cancelling_during_a_backoff_sleep_ends_the_call_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_sleep = retry_module._async_sleep
    events: list[object] = []

    async def spied_sleep(seconds: float) -> None:
        events.append(("sleep", seconds))
        try:
            await real_sleep(seconds)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    monkeypatch.setattr(retry_module, "_async_sleep", spied_sleep)
    calls = 0

    async def main() -> float:
        sleeping = asyncio.Event()

        # Two attempts: a wrapper that swallowed the cancellation would fail fast, not hang.
        @retry(no_jitter(2, base_delay=30.0, max_delay=30.0), on_retry=lambda *_: sleeping.set())
        async def fails() -> None:
            nonlocal calls
            calls += 1
            raise ConnectionError

        task = asyncio.create_task(fails())
        await sleeping.wait()
        await asyncio.sleep(0)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        elapsed = time.monotonic() - started
        for _ in range(10):
            await asyncio.sleep(0)
        assert task.cancelled()
        return elapsed

    elapsed = asyncio.run(main())
    assert events == [("sleep", 30.0), "cancelled"]
    assert calls == 1
    assert elapsed < 5.0  # not the 30 s backoff; a bound that only catches a hang


def test_cancelling_during_an_attempt_is_not_retried(fake_time: FakeTime) -> None:
    calls = 0
    retries: list[int] = []

    @retry(max_attempts=5, retry_on=Exception, on_retry=lambda n, e, d: retries.append(n))
    async def hangs() -> None:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()

    async def main() -> None:
        task = asyncio.create_task(hangs())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert calls == 1
    assert retries == []
    assert fake_time.sleeps == []


def test_async_function_raising_cancelled_error_is_not_retried(fake_time: FakeTime) -> None:
    calls = 0

    @retry(max_attempts=5, retry_on=Exception)
    async def cancelled_inside() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled_inside())
    assert calls == 1


# -------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("5", 5.0), (" 7 ", 7.0), ("0", 0.0), ("1.5", 1.5), ("60", 60.0), ("120", 60.0)],
)
def test_retry_after_in_seconds_is_capped(header: str, seconds: float) -> None:
    assert RetryPolicy().retry_after_seconds(header) == seconds


def test_retry_after_cap_is_max_retry_after() -> None:
    assert RetryPolicy(max_retry_after=600.0).retry_after_seconds("120") == 120.0
    assert RetryPolicy(max_retry_after=0.0).retry_after_seconds("120") == 0.0
    assert RetryPolicy().retry_after_seconds("9" * 400) == 60.0


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "soon",
        "-5",
        "+5",
        "1e3",
        "inf",
        "nan",
        "1_000",
        "5s",
        "1.",
        ".5",
        "1.2.3",
        "\u0663",  # ARABIC-INDIC DIGIT THREE: str.isdigit() says yes
        "Wed, 32 Oct 2015 99:99:99 GMT",
        "Wed, 21 Oct",
    ],
)
def test_retry_after_absent_or_unparseable_is_none(header: str | None) -> None:
    assert RetryPolicy().retry_after_seconds(header) is None


NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("Mon, 01 Jan 2024 12:00:30 GMT", 30.0),
        (format_datetime(NOW + timedelta(seconds=45), usegmt=True), 45.0),
        ("Mon, 01 Jan 2024 13:00:30 +0100", 30.0),  # the same moment in another zone
        ("Mon, 01 Jan 2024 12:00:10 -0000", 10.0),  # no zone known: taken as UTC
        ("Mon, 01 Jan 2024 12:00:00 GMT", 0.0),
        ("Mon, 01 Jan 2024 11:00:00 GMT", 0.0),  # in the past: retry now
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Tue, 02 Jan 2024 12:00:00 GMT", 60.0),  # a day away: capped
        ("Fri, 01 Jan 2100 00:00:00 GMT", 60.0),
    ],
)
def test_retry_after_as_an_http_date(header: str, seconds: float) -> None:
    policy = RetryPolicy()
    assert policy.retry_after_seconds(header, now=NOW) == seconds
    assert policy.retry_after_seconds(header, now=NOW.replace(tzinfo=None)) == seconds


def test_retry_after_date_is_counted_from_the_current_time_by_default() -> None:
    header = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    seconds = RetryPolicy().retry_after_seconds(header)
    assert seconds is not None
    assert 8.0 <= seconds <= 10.0  # the header has whole seconds


def test_retry_after_header_must_be_text() -> None:
    with pytest.raises(InvalidArgumentError, match="header_value must be a str or None"):
        RetryPolicy().retry_after_seconds(b"5")  # type: ignore[arg-type]


def test_delay_takes_retry_after_as_a_floor_capped_by_max_retry_after() -> None:
    policy = no_jitter(base_delay=1.0, max_delay=2.0, max_retry_after=30.0)
    assert policy.delay(1) == 1.0
    assert policy.delay(1, retry_after=3.0) == 3.0  # above max_delay: honoured
    assert policy.delay(1, retry_after=0.5) == 1.0  # the backoff is longer
    assert policy.delay(2, retry_after=0.0) == 2.0
    assert policy.delay(1, retry_after=1000.0) == 30.0
    assert policy.delay(1, retry_after=1000) == 30.0
    ignoring = policy.replace(respect_retry_after=False)
    assert ignoring.delay(1, retry_after=3.0) == 1.0
    assert ignoring.delay(1, retry_after=1000.0) == 1.0


def test_delay_with_a_header_end_to_end() -> None:
    policy = no_jitter(base_delay=0.1)
    assert policy.delay(1, policy.retry_after_seconds("4")) == 4.0
    assert policy.delay(1, policy.retry_after_seconds("garbage")) == pytest.approx(0.1)


@pytest.mark.parametrize("attempt", [0, -1, 1.5, True, "1", None])
def test_delay_refuses_a_bad_attempt(attempt: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^attempt must be an int >= 1, got"):
        RetryPolicy().delay(attempt)


@pytest.mark.parametrize("retry_after", [-1.0, float("nan"), float("inf"), "3", True])
def test_delay_refuses_a_bad_retry_after(retry_after: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^retry_after must be a number of seconds"):
        RetryPolicy().delay(1, retry_after=retry_after)


# --------------------------------------------------------------------- statuses, methods


@pytest.mark.parametrize(
    ("method", "status", "idempotent", "expected"),
    [
        ("GET", 503, False, True),
        ("get", 429, False, True),
        ("HEAD", 502, False, True),
        ("OPTIONS", 504, False, True),
        ("PUT", 503, False, True),
        ("DELETE", 503, False, True),
        ("POST", 503, False, False),
        ("PATCH", 429, False, False),
        ("POST", 503, True, True),
        ("PATCH", 429, True, True),
        ("GET", 500, False, False),
        ("GET", 501, False, False),
        ("GET", 200, False, False),
        ("GET", 404, False, False),
        ("POST", 500, True, False),
    ],
)
def test_should_retry_status(method: str, status: int, idempotent: bool, expected: bool) -> None:
    assert RetryPolicy().should_retry_status(method, status, idempotent=idempotent) is expected


def test_should_retry_status_with_custom_statuses_and_methods() -> None:
    policy = RetryPolicy(retry_statuses=[500, 503], retry_methods=["post", " get "])
    assert policy.retry_methods == ("POST", "GET")
    assert policy.should_retry_status("POST", 500)
    assert policy.should_retry_status("get", 503)
    assert not policy.should_retry_status("PUT", 503)
    assert not policy.should_retry_status("GET", 429)
    none = RetryPolicy(retry_methods=())
    assert not none.should_retry_status("GET", 503)
    assert none.should_retry_status("GET", 503, idempotent=True)


# ------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, r"^max_attempts must be an int >= 1, got 0$"),
        ({"max_attempts": -3}, r"^max_attempts must be an int >= 1, got -3$"),
        ({"max_attempts": 2.0}, r"^max_attempts must be an int >= 1, got 2\.0$"),
        ({"max_attempts": True}, r"^max_attempts must be an int >= 1, got True$"),
        ({"max_attempts": None}, r"^max_attempts must be an int >= 1, got None$"),
        ({"base_delay": -0.1}, r"^base_delay must be a number of seconds >= 0, got -0\.1$"),
        ({"base_delay": float("nan")}, r"^base_delay must be a number of seconds >= 0"),
        ({"base_delay": float("inf")}, r"^base_delay must be a number of seconds >= 0"),
        ({"base_delay": "1"}, r"^base_delay must be a number of seconds >= 0, got '1'$"),
        ({"base_delay": 10**400}, r"^base_delay must be a number of seconds >= 0, got 1000"),
        ({"max_delay": -1}, r"^max_delay must be a number of seconds >= 0, got -1$"),
        ({"max_delay": None}, r"^max_delay must be a number of seconds >= 0, got None$"),
        ({"factor": 0.5}, r"^factor must be a number >= 1, got 0\.5$"),
        ({"factor": 0}, r"^factor must be a number >= 1, got 0$"),
        ({"factor": float("inf")}, r"^factor must be a number >= 1, got inf$"),
        ({"jitter": "random"}, r"^jitter must be 'full', 'equal' or 'none', got 'random'$"),
        ({"jitter": None}, r"^jitter must be 'full', 'equal' or 'none', got None$"),
        ({"jitter": "FULL"}, r"^jitter must be 'full', 'equal' or 'none', got 'FULL'$"),
        ({"total_timeout": 0}, r"^total_timeout must be a positive number of seconds or None"),
        ({"total_timeout": -1.0}, r"^total_timeout must be a positive number of seconds"),
        ({"total_timeout": float("nan")}, r"^total_timeout must be a positive number"),
        ({"total_timeout": "5"}, r"^total_timeout must be a positive number"),
        ({"retry_on": ValueError("x")}, r"^retry_on must be a tuple, got ValueError$"),
        ({"retry_on": (ValueError, 3)}, r"^retry_on must be an exception class or a tuple"),
        ({"retry_on": (int,)}, r"^retry_on must be an exception class or a tuple"),
        ({"retry_on": "ConnectionError"}, r"^retry_on must be a tuple, not a single str$"),
        ({"retry_statuses": 503}, r"^retry_statuses must be a tuple, got int$"),
        ({"retry_statuses": (503, 99)}, r"^retry_statuses must hold HTTP status codes \(ints"),
        ({"retry_statuses": (600,)}, r"^retry_statuses must hold HTTP status codes"),
        ({"retry_statuses": ("503",)}, r"^retry_statuses must hold HTTP status codes"),
        ({"retry_statuses": (True,)}, r"^retry_statuses must hold HTTP status codes"),
        ({"retry_methods": "GET"}, r"^retry_methods must be a tuple, not a single str$"),
        ({"retry_methods": ("GET", "")}, r"^retry_methods must hold HTTP method names"),
        ({"retry_methods": ("GET", b"PUT")}, r"^retry_methods must hold HTTP method names"),
        ({"retry_methods": None}, r"^retry_methods must be a tuple, got NoneType$"),
        ({"respect_retry_after": 1}, r"^respect_retry_after must be True or False, got 1$"),
        ({"respect_retry_after": None}, r"^respect_retry_after must be True or False"),
        ({"max_retry_after": -1.0}, r"^max_retry_after must be a number of seconds >= 0"),
        ({"max_retry_after": None}, r"^max_retry_after must be a number of seconds >= 0"),
        ({"_random": 42}, r"^_random must be a random\.Random or None, got 42$"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        RetryPolicy(**options)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, HelixError)
    with pytest.raises(InvalidArgumentError, match=message):
        retry(**options)
    with pytest.raises(InvalidArgumentError, match=message):
        RetryPolicy().replace(**options)


def test_edge_values_that_are_accepted() -> None:
    policy = RetryPolicy(
        1,
        base_delay=0,
        factor=1,
        max_delay=0,
        jitter="none",
        total_timeout=0.001,
        retry_on=(),
        retry_statuses=range(100, 600),
        retry_methods=(),
        respect_retry_after=False,
        max_retry_after=0,
    )
    assert policy.base_delay == 0.0
    assert isinstance(policy.base_delay, float)
    assert isinstance(policy.factor, float)
    assert len(policy.retry_statuses) == 500
    assert RetryPolicy(retry_statuses=[503, 503, 429]).retry_statuses == (503, 429)
    assert RetryPolicy(retry_on=[KeyError, KeyError]).retry_on == (KeyError,)


# ---------------------------------------------------------------------- decorator forms


def test_decorator_forms(fake_time: FakeTime) -> None:
    policy = RetryPolicy(4)

    @retry
    def bare() -> str:
        """Bare."""
        return "bare"

    @retry()
    def called() -> str:
        return "called"

    @retry(policy)
    def with_policy() -> str:
        return "policy"

    @retry(max_attempts=5)
    def with_options() -> str:
        return "options"

    @retry(policy, max_attempts=6, jitter="none")
    def with_both() -> str:
        return "both"

    assert [bare(), called(), with_policy(), with_options(), with_both()] == [
        "bare",
        "called",
        "policy",
        "options",
        "both",
    ]
    assert bare.retry_policy == RetryPolicy()  # type: ignore[attr-defined]
    assert called.retry_policy == RetryPolicy()  # type: ignore[attr-defined]
    assert with_policy.retry_policy is policy  # type: ignore[attr-defined]
    assert with_options.retry_policy == RetryPolicy(5)  # type: ignore[attr-defined]
    assert with_both.retry_policy == RetryPolicy(6, jitter="none")  # type: ignore[attr-defined]
    assert bare.__name__ == "bare"
    assert bare.__doc__ == "Bare."
    assert inspect.unwrap(bare).__name__ == "bare"


@pytest.mark.parametrize(
    ("decorate", "attempts"),
    [
        (lambda fn: retry(fn), 3),
        (lambda fn: retry()(fn), 3),
        (lambda fn: retry(RetryPolicy(4))(fn), 4),
        (lambda fn: retry(max_attempts=5)(fn), 5),
        (lambda fn: retry(RetryPolicy(4), max_attempts=2)(fn), 2),
        (lambda fn: retry(fn, max_attempts=6), 6),
    ],
)
def test_every_form_retries_by_its_policy(
    fake_time: FakeTime, decorate: Callable[[Flaky], Callable[[], str]], attempts: int
) -> None:
    flaky = Flaky(10)
    with pytest.raises(ConnectionError):
        decorate(flaky)()
    assert flaky.calls == attempts


def test_decorating_methods_and_async_methods(fake_time: FakeTime) -> None:
    class Client:
        def __init__(self) -> None:
            self.calls = 0

        @retry(max_attempts=3)
        def get(self, path: str) -> str:
            self.calls += 1
            if self.calls < 3:
                raise ConnectionError
            return path

        @retry(max_attempts=3)
        async def aget(self, path: str) -> str:
            self.calls += 1
            if self.calls < 6:
                raise ConnectionError
            return path

    client = Client()
    assert client.get("/a") == "/a"
    assert asyncio.run(client.aget("/b")) == "/b"
    assert client.calls == 6


def test_retry_refuses_what_it_cannot_use() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^retry\(\) takes a RetryPolicy or the"):
        retry(5)  # type: ignore[call-overload]
    with pytest.raises(InvalidArgumentError, match=r"^retry\(\) can only wrap a callable"):
        retry()(5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"^on_retry must be a callable"):
        retry(on_retry=3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="attempts"):
        retry(attempts=3)  # type: ignore[call-overload]


def test_on_retry_sees_each_retry(fake_time: FakeTime) -> None:
    seen: list[tuple[int, BaseException, float]] = []
    flaky = Flaky(3)
    policy = RetryPolicy(5, _random=random.Random(3))
    assert retry(policy, on_retry=lambda *args: seen.append(args))(flaky)() == "ok"
    assert [attempt for attempt, _, _ in seen] == [1, 2, 3]
    assert all(exc is raised for (_, exc, _), raised in zip(seen, flaky.raised, strict=True))
    assert [delay for _, _, delay in seen] == fake_time.sleeps


def test_on_retry_is_not_called_when_giving_up(fake_time: FakeTime) -> None:
    seen: list[int] = []
    with pytest.raises(ConnectionError):
        retry(Flaky(10), max_attempts=2, on_retry=lambda n, e, d: seen.append(n))()
    assert seen == [1]


def test_an_error_in_on_retry_propagates(fake_time: FakeTime) -> None:
    def broken_hook(attempt: int, exc: Exception, delay: float) -> None:
        raise RuntimeError("hook failed")

    flaky = Flaky(3)
    with pytest.raises(RuntimeError, match="hook failed") as info:
        retry(flaky, on_retry=broken_hook)()
    assert info.value.__context__ is flaky.raised[0]
    assert flaky.calls == 1


def test_retries_are_logged_at_debug_without_the_message(
    fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="helixrt.retry")

    @retry(max_attempts=3)
    def leaky() -> None:
        raise ConnectionError("https://api.example/v1?token=s3cret")

    with pytest.raises(ConnectionError):
        leaky()
    records = [r for r in caplog.records if r.name == "helixrt.retry"]
    assert [r.levelno for r in records] == [logging.DEBUG] * 3
    messages = [r.getMessage() for r in records]
    assert "retrying" in messages[0]
    assert "leaky" in messages[0]
    assert "attempt 1 of 3" in messages[0]
    assert "ConnectionError" in messages[0]
    assert "attempt 2 of 3" in messages[1]
    assert messages[2].startswith("giving up")
    assert not any("s3cret" in message for message in messages)


# ------------------------------------------------------------------------ value semantics


def test_policy_is_an_immutable_value() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError, match="immutable"):
        policy.max_attempts = 5  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del policy.jitter
    with pytest.raises(AttributeError):
        policy.extra = 1
    assert policy == RetryPolicy()
    assert hash(policy) == hash(RetryPolicy())
    assert policy != RetryPolicy(4)
    assert policy != "RetryPolicy()"
    assert len({policy, RetryPolicy(), RetryPolicy(4)}) == 2
    assert RetryPolicy(_random=random.Random(1)) == policy  # the random source is no part of it


def test_policy_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_delay, policy.factor, policy.max_delay) == (
        3,
        0.1,
        2.0,
        5.0,
    )
    assert policy.jitter == "full"
    assert policy.total_timeout is None
    assert policy.retry_on == (ConnectionError, TimeoutError)
    assert policy.retry_statuses == (429, 502, 503, 504)
    assert policy.retry_methods == ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
    assert policy.respect_retry_after is True
    assert policy.max_retry_after == 60.0


def test_replace_pickle_copy_and_repr() -> None:
    policy = RetryPolicy(5, jitter="equal", retry_on=(KeyError, CircuitOpenError))
    changed = policy.replace(max_attempts=2)
    assert changed.max_attempts == 2
    assert changed.jitter == "equal"
    assert policy.max_attempts == 5
    assert pickle.loads(pickle.dumps(policy)) == policy
    assert copy.copy(policy) == policy
    assert copy.deepcopy(policy) == policy
    assert repr(policy) == (
        "RetryPolicy(max_attempts=5, base_delay=0.1, factor=2.0, max_delay=5.0, "
        "jitter='equal', total_timeout=None, retry_on=(KeyError, "
        "helixrt.errors.CircuitOpenError), retry_statuses=(429, 502, 503, 504), "
        "retry_methods=('GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'), respect_retry_after=True, "
        "max_retry_after=60.0)"
    )
    assert "retry_on=(KeyError,)" in repr(RetryPolicy(retry_on=KeyError))


def test_replace_keeps_the_injected_random() -> None:
    policy = RetryPolicy(_random=random.Random(5)).replace(max_attempts=4)
    assert policy.delay(3) == random.Random(5).uniform(0.0, 0.4)


def test_import_is_light() -> None:
    code = (
        "import sys, helixrt; before = set(sys.modules); import helixrt.retries; "
        "print(sorted(set(sys.modules) - before))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert set(ast.literal_eval(out)) <= {"helixrt.retries", "math"}
