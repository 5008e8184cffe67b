"""AsyncWorkerPool: results, order, the concurrency and pending bounds, timeouts, cancellation
(of pending and running jobs, and of callers), close, error reporting, stats, context
variables, the event loop binding and bad input.

Each test runs its own event loop with `run()`, which also fails the test when asyncio's
exception handler saw anything (a "Task exception was never retrieved", say).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import random
import time
from collections.abc import Callable, Coroutine
from contextlib import aclosing, suppress
from typing import Any, TypeVar

import pytest

from helixrt.async_pool import AsyncPoolStats, AsyncWorkerPool, Job, WrongLoopError
from helixrt.errors import (
    HelixError,
    InvalidArgumentError,
    InvalidTypeError,
    PoolClosedError,
    QueueFullError,
    TaskTimeoutError,
)

T = TypeVar("T")

HANG = 5.0  # seconds: a bound that only a hang exceeds


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID")

# Jobs spawned from a context with no variable set run in their worker's context, the others
# in a copy of their spawner's: the tests marked with this run both ways.
both_paths = pytest.mark.parametrize("copied", [False, True], ids=["inline", "copied-context"])


def run(main: Callable[[], Coroutine[Any, Any, T]], copied: bool = False) -> T:
    """asyncio.run(main()), failing if the loop's exception handler was called, then or when
    the garbage collector finalizes what the loop left behind. With `copied`, main runs with
    a context variable set."""
    reported: list[dict[str, Any]] = []

    async def watched() -> T:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        if copied:
            REQUEST_ID.set("request-1")
        return await asyncio.wait_for(main(), HANG * 4)

    result = asyncio.run(watched())
    gc.collect()
    assert reported == []
    return result


def settled(stats: AsyncPoolStats) -> bool:
    return stats.active == 0 and stats.pending == 0


def check_invariant(stats: AsyncPoolStats) -> None:
    assert stats.submitted == (
        stats.completed
        + stats.failed
        + stats.cancelled
        + stats.timed_out
        + stats.active
        + stats.pending
    )


async def noop() -> None:
    pass


async def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG
    while not condition():
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(0.001)


@both_paths
def test_results_and_exceptions_reach_the_job_and_run(copied: bool) -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def boom(message: str) -> int:
        await asyncio.sleep(0)
        raise ValueError(message)

    async def main() -> None:
        async with AsyncWorkerPool(4) as pool:
            job = await pool.spawn(double(21))
            assert isinstance(job, Job)
            assert isinstance(job, asyncio.Future)
            assert await job == 42
            assert job.done()
            assert job.result() == 42
            assert await pool.run(double(5)) == 10
            failing = await pool.spawn(boom("first"))
            with pytest.raises(ValueError, match="first"):
                await failing
            assert isinstance(failing.exception(), ValueError)
            with pytest.raises(ValueError, match="second"):
                await pool.run(boom("second"))
            jobs = [await pool.spawn(double(i)) for i in range(50)]
            assert await asyncio.gather(*jobs) == [2 * i for i in range(50)]
            sync_jobs = [await pool.spawn(noop()) for _ in range(50)]  # never suspend
            assert await asyncio.gather(*sync_jobs) == [None] * 50
        stats = pool.stats()
        assert (stats.submitted, stats.completed, stats.failed) == (104, 102, 2)

    run(main, copied)


def test_map_yields_results_in_input_order() -> None:
    async def slow_square(x: int) -> int:
        await asyncio.sleep(random.random() / 200)  # finish out of order
        return x * x

    async def main() -> None:
        async with AsyncWorkerPool(8) as pool:
            results = [r async for r in pool.map(slow_square, range(100))]
            assert results == [x * x for x in range(100)]
            assert [r async for r in pool.map(slow_square, [])] == []
            smallest = [r async for r in pool.map(slow_square, [3, 1, 2], buffersize=1)]
            assert smallest == [9, 1, 4]

    run(main)


def test_map_takes_items_lazily_and_cancels_what_it_started_when_closed_early() -> None:
    taken: list[int] = []
    started: list[int] = []
    cancelled: list[int] = []

    def items() -> Any:
        n = 0
        while True:  # endless: map must not read ahead of its buffer
            taken.append(n)
            yield n
            n += 1

    async def work(x: int) -> int:
        started.append(x)
        try:
            await asyncio.sleep(0 if x == 0 else 10)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    async def main() -> None:
        async with AsyncWorkerPool(4) as pool:
            async with aclosing(pool.map(work, items(), buffersize=3)) as results:
                async for first in results:
                    assert first == 0
                    break
            assert len(taken) <= 4
            await wait_until(lambda: settled(pool.stats()))
            assert sorted(cancelled) == sorted(set(started) - {0})
            assert pool.stats().cancelled == len(taken) - 1

    run(main)


def test_map_raises_the_first_failure_and_cancels_the_rest() -> None:
    async def work(x: int) -> int:
        if x == 3:
            raise KeyError(x)
        await asyncio.sleep(0.01 if x < 3 else 10)
        return x

    reports: list[BaseException] = []

    async def main() -> None:
        async with AsyncWorkerPool(10, on_error=lambda job, exc: reports.append(exc)) as pool:
            seen: list[int] = []

            async def consume() -> None:
                async for result in pool.map(work, range(10)):
                    seen.append(result)

            with pytest.raises(KeyError):
                await consume()
            assert seen == [0, 1, 2]
            await wait_until(lambda: settled(pool.stats()))
            stats = pool.stats()
            assert (stats.completed, stats.failed, stats.cancelled) == (3, 1, 6)

    run(main)
    assert reports == []  # job 3 failed before map awaited it, but map was going to


def test_the_limit_is_never_exceeded() -> None:
    running = 0
    most = 0

    async def work() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        assert running <= 5
        for _ in range(random.randrange(3)):
            await asyncio.sleep(random.random() / 500)
        running -= 1

    async def main() -> None:
        async with AsyncWorkerPool(5, pending_limit=20) as pool:
            jobs = [await pool.spawn(work()) for _ in range(300)]
            await asyncio.gather(*jobs)
            assert pool.stats().completed == 300

    run(main)
    assert most == 5


def test_a_burst_of_jobs_that_wait_gets_every_slot() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        async with AsyncWorkerPool(50) as pool:
            jobs = [await pool.spawn(gate.wait()) for _ in range(80)]
            await wait_until(lambda: pool.stats().active == 50)
            assert pool.stats().pending == 30
            gate.set()
            await asyncio.gather(*jobs)

    run(main)


def test_gauges_count_running_and_pending_jobs() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async with AsyncWorkerPool(3) as pool:
            jobs = [await pool.spawn(gate.wait()) for _ in range(10)]
            await asyncio.sleep(0.01)
            stats = pool.stats()
            assert (stats.active, stats.pending, stats.submitted) == (3, 7, 10)
            check_invariant(stats)
            gate.set()
            await asyncio.gather(*jobs)
            assert settled(pool.stats())

    run(main)


def test_a_full_pool_refuses_with_wait_false_and_makes_spawn_wait_otherwise() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        pool = AsyncWorkerPool(2, pending_limit=3)
        held = [await pool.spawn(gate.wait()) for _ in range(5)]
        await asyncio.sleep(0.01)  # 2 running, 3 pending
        refused = gate.wait()
        with pytest.raises(QueueFullError, match="2 jobs running and 3 pending"):
            await pool.spawn(refused, wait=False)
        assert refused.cr_frame is None  # closed: it will not warn "never awaited"
        waiting = asyncio.ensure_future(pool.spawn(noop()))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        gate.set()
        job = await asyncio.wait_for(waiting, HANG)
        await job
        await asyncio.gather(*held)
        stats = pool.stats()
        assert (stats.submitted, stats.completed, stats.rejected) == (6, 6, 1)
        await pool.close()

    run(main)


def test_room_is_given_first_come_first_served() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        order: list[int] = []

        async def record(n: int) -> None:
            order.append(n)

        async with AsyncWorkerPool(1, pending_limit=0) as pool:
            first = await pool.spawn(gate.wait())
            waiters = [asyncio.ensure_future(pool.spawn(record(n))) for n in range(5)]
            await asyncio.sleep(0.01)
            with pytest.raises(QueueFullError):  # no jumping the line, even with room later
                await pool.spawn(noop(), wait=False)
            gate.set()
            await first
            jobs = await asyncio.gather(*waiters)
            await asyncio.gather(*jobs)
        assert order == [0, 1, 2, 3, 4]

    run(main)


def test_a_spawn_cancelled_while_waiting_for_room_leaves_nothing_behind() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        async with AsyncWorkerPool(1, pending_limit=0) as pool:
            blocker = await pool.spawn(gate.wait())
            coro = noop()
            waiting = asyncio.ensure_future(pool.spawn(coro))
            await asyncio.sleep(0.01)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert coro.cr_frame is None
            after = asyncio.ensure_future(pool.spawn(noop()))  # the slot is not lost
            gate.set()
            await blocker
            await (await asyncio.wait_for(after, HANG))
        stats = pool.stats()
        assert (stats.submitted, stats.completed, stats.rejected) == (2, 2, 0)

    run(main)


def test_a_woken_spawn_cancelled_before_it_resumes_passes_its_slot_on() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        async with AsyncWorkerPool(1, pending_limit=0) as pool:
            blocker = await pool.spawn(gate.wait())
            first = asyncio.ensure_future(pool.spawn(noop()))
            second = asyncio.ensure_future(pool.spawn(asyncio.sleep(0, result="second")))
            await asyncio.sleep(0.01)
            # runs after the blocker's slot went to `first`, before `first` resumes
            blocker.add_done_callback(lambda _: first.cancel())
            gate.set()
            with pytest.raises(asyncio.CancelledError):
                await first
            job = await asyncio.wait_for(second, HANG)
            assert await job == "second"

    run(main)


@both_paths
def test_task_timeout_cancels_the_job_and_the_worker_carries_on(copied: bool) -> None:
    cleaned_up = []

    async def stuck() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned_up.append(True)

    async def main() -> None:
        async with AsyncWorkerPool(1, task_timeout=0.05) as pool:
            job = await pool.spawn(stuck())
            after = await pool.spawn(asyncio.sleep(0, result="next"))
            with pytest.raises(TaskTimeoutError, match=r"stuck\(\) ran longer than task_timeout"):
                await job
            assert await after == "next"
            error = job.exception()
            assert isinstance(error, TimeoutError)
            assert isinstance(error, HelixError)
            assert isinstance(error.__cause__, asyncio.CancelledError)
            assert await pool.run(asyncio.sleep(0.001, result=7)) == 7
        stats = pool.stats()
        assert (stats.timed_out, stats.completed, stats.failed, stats.cancelled) == (1, 2, 0, 0)

    run(main, copied)
    assert cleaned_up == [True]


def test_asyncio_timeout_inside_a_job_is_the_job_s_own_business() -> None:
    async def impatient() -> str:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        except TimeoutError:
            return "gave up"
        return "finished"

    async def main() -> None:
        async with AsyncWorkerPool(1, task_timeout=5) as pool:
            assert await pool.run(impatient()) == "gave up"
            assert await pool.run(asyncio.sleep(0.001, result="fine")) == "fine"
            assert pool.stats().timed_out == 0

    run(main)


def test_cancelling_a_pending_job_drops_it_unstarted() -> None:
    started = []

    async def work(n: int) -> int:
        started.append(n)
        await asyncio.sleep(0.01)
        return n

    async def main() -> None:
        async with AsyncWorkerPool(1) as pool:
            jobs = [await pool.spawn(work(n)) for n in range(4)]
            assert jobs[2].cancel()
            assert jobs[2].cancelled()
            assert not jobs[2].cancel()
            assert await jobs[3] == 3
            assert [await jobs[0], await jobs[1]] == [0, 1]
            with pytest.raises(asyncio.CancelledError):
                await jobs[2]
        assert started == [0, 1, 3]
        stats = pool.stats()
        assert (stats.completed, stats.cancelled) == (3, 1)
        check_invariant(stats)

    run(main)


@both_paths
def test_cancelling_a_running_job_cancels_that_coroutine_only(copied: bool) -> None:
    seen: list[str] = []

    async def victim() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("victim cancelled")
            raise

    async def bystander() -> str:
        await asyncio.sleep(0.05)
        return "bystander done"

    async def main() -> None:
        async with AsyncWorkerPool(2) as pool:
            job = await pool.spawn(victim())
            other = await pool.spawn(bystander())
            await asyncio.sleep(0.01)
            assert job.cancel("enough")
            with pytest.raises(asyncio.CancelledError, match="enough"):
                await job
            assert job.cancelled()
            assert await other == "bystander done"
            # the worker that ran the victim is fine, and not left cancelled
            assert await pool.run(asyncio.sleep(0.01, result="next")) == "next"
            assert pool._cancelling == set()
        stats = pool.stats()
        assert (stats.cancelled, stats.completed) == (1, 2)

    run(main, copied)
    assert seen == ["victim cancelled"]


@both_paths
def test_cancellation_follows_task_semantics(copied: bool) -> None:
    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "ignored the cancellation"
        return "slept"

    async def self_cancelling(job_box: list[Job[str]]) -> str:
        job_box[0].cancel()  # then returns without another await: a task ends cancelled
        return "returned"

    async def main() -> None:
        async with AsyncWorkerPool(1) as pool:
            job = await pool.spawn(stubborn())
            await asyncio.sleep(0.01)
            job.cancel()
            assert await job == "ignored the cancellation"

            box: list[Job[str]] = []
            box.append(await pool.spawn(self_cancelling(box)))
            follower = await pool.spawn(asyncio.sleep(0.001, result="next"))  # same worker
            with pytest.raises(asyncio.CancelledError):
                await box[0]
            # the cancellation the worker took back does not hit the next job
            assert await follower == "next"
        stats = pool.stats()
        assert (stats.completed, stats.cancelled) == (2, 1)

    run(main, copied)


@both_paths
def test_a_cancel_just_after_what_the_job_awaits_is_done_still_cancels_it(copied: bool) -> None:
    async def main() -> None:
        event = asyncio.Event()
        async with AsyncWorkerPool(1) as pool:
            job = await pool.spawn(event.wait())
            await asyncio.sleep(0.01)
            event.set()  # the job's wakeup is queued; the cancel is thrown in instead
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job
            assert await pool.run(asyncio.sleep(0.001, result="next")) == "next"

    run(main, copied)


@both_paths
def test_cancelling_a_caller_of_run_cancels_its_job(copied: bool) -> None:
    started = []
    cancelled = []

    async def work(n: int) -> None:
        started.append(n)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(n)
            raise

    async def main() -> None:
        async with AsyncWorkerPool(1) as pool:
            running = asyncio.ensure_future(pool.run(work(1)))
            pending = asyncio.ensure_future(pool.run(work(2)))
            await asyncio.sleep(0.01)
            assert pool.stats().pending == 1
            pending.cancel()
            running.cancel()
            for caller in (pending, running):
                with pytest.raises(asyncio.CancelledError):
                    await caller
            await wait_until(lambda: settled(pool.stats()))
            stats = pool.stats()
            assert (stats.cancelled, stats.active, stats.pending) == (2, 0, 0)
            assert pool._cancelling == set()
            assert len(pool._pending) == 0
            assert await pool.run(asyncio.sleep(0, result="ok")) == "ok"
        assert (started, cancelled) == ([1], [1])

    run(main, copied)


@pytest.mark.parametrize(("limit", "jobs"), [(2, 10), (4, 4)])
def test_close_lets_pending_work_finish(limit: int, jobs: int) -> None:
    done: list[int] = []

    async def work(n: int) -> None:
        await asyncio.sleep(0.001 if n == 0 else 0.02)  # the first worker is done first
        done.append(n)

    async def main() -> None:
        pool = AsyncWorkerPool(limit, close_timeout=HANG)
        for n in range(jobs):
            await pool.spawn(work(n))
        await pool.close()
        assert pool.closed
        assert sorted(done) == list(range(jobs))
        stats = pool.stats()
        assert (stats.completed, stats.active, stats.pending) == (jobs, 0, 0)
        await pool.close()  # idempotent

    run(main)


@both_paths
def test_close_cancels_what_is_left_after_close_timeout(copied: bool) -> None:
    started: list[int] = []

    async def stuck(n: int) -> None:
        started.append(n)
        await asyncio.Event().wait()

    async def main() -> None:
        pool = AsyncWorkerPool(2, close_timeout=0.2)
        jobs = [await pool.spawn(stuck(n)) for n in range(5)]
        begun = time.monotonic()
        await asyncio.gather(pool.close(), pool.close())  # the second waits for the first
        took = time.monotonic() - begun
        assert 0.15 < took < 0.2 + HANG
        assert all(job.cancelled() for job in jobs)
        assert started == [0, 1]
        stats = pool.stats()
        assert (stats.cancelled, stats.active, stats.pending) == (5, 0, 0)
        assert not pool._workers

    run(main, copied)


def test_close_gives_up_on_a_job_that_ignores_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def deaf() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if release.is_set():
                    raise

    release = asyncio.Event()

    async def main() -> None:
        pool = AsyncWorkerPool(1, close_timeout=0.05)
        job = await pool.spawn(deaf())
        behind = noop()
        queued = await pool.spawn(behind)
        await asyncio.sleep(0.01)
        try:
            begun = time.monotonic()
            await pool.close()
            assert time.monotonic() - begun < 0.05 + HANG
            assert not job.done()
            assert queued.cancelled()  # while its worker is still busy
            assert behind.cr_frame is None
        finally:
            release.set()
            job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job

    run(main)
    assert "still running" in caplog.text


def test_close_called_from_a_job_does_not_wait_for_it() -> None:
    async def main() -> None:
        pool = AsyncWorkerPool(2)

        async def closer() -> str:
            await pool.close()
            return "closed from inside"

        others = [await pool.spawn(asyncio.sleep(0.01, result=n)) for n in range(3)]
        assert await pool.run(closer()) == "closed from inside"
        assert await asyncio.gather(*others) == [0, 1, 2]
        assert pool.closed

    run(main)


def test_cancelling_close_cancels_the_remaining_jobs() -> None:
    async def main() -> None:
        pool = AsyncWorkerPool(1, close_timeout=HANG)
        jobs = [await pool.spawn(asyncio.sleep(10)) for _ in range(3)]
        closing = asyncio.ensure_future(pool.close())
        await asyncio.sleep(0.01)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        await asyncio.wait(jobs, timeout=HANG)
        assert all(job.cancelled() for job in jobs)
        await pool.close()  # returns at once: the first close is over

    run(main)


def test_spawn_after_close_is_refused() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        pool = AsyncWorkerPool(1, pending_limit=0, close_timeout=HANG)
        await pool.spawn(gate.wait())
        waiting = asyncio.ensure_future(pool.spawn(noop()))  # waiting for room at close
        await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(pool.close())
        with pytest.raises(PoolClosedError):
            await waiting
        late = noop()
        with pytest.raises(PoolClosedError, match="closed"):
            await pool.spawn(late)
        assert late.cr_frame is None
        with pytest.raises(PoolClosedError):
            await pool.run(noop())
        gate.set()
        await closing
        stats = pool.stats()
        assert (stats.submitted, stats.completed, stats.rejected) == (1, 1, 3)

    run(main)


@both_paths
def test_an_exception_nobody_awaited_goes_to_on_error(copied: bool) -> None:
    reports: list[tuple[Job[Any], BaseException]] = []

    async def boom() -> None:
        await asyncio.sleep(0)
        raise ValueError("unseen")

    async def main() -> None:
        async with AsyncWorkerPool(2, on_error=lambda job, exc: reports.append((job, exc))) as pool:
            job = await pool.spawn(boom())
            await asyncio.sleep(0.01)
            assert len(reports) == 1
            assert reports[0][0] is job
            assert isinstance(reports[0][1], ValueError)
            with pytest.raises(ValueError, match="unseen"):  # still there for a late reader
                await job
            with pytest.raises(ValueError, match="unseen"):  # awaited from the start: not reported
                await pool.run(boom())
            await pool.spawn(boom())  # fire and forget
        assert len(reports) == 2

    run(main, copied)


def test_an_exception_nobody_awaited_is_logged_without_on_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom() -> None:
        raise RuntimeError("nobody listens")

    async def main() -> None:
        async with AsyncWorkerPool(2) as pool:
            await pool.spawn(boom())

    with caplog.at_level(logging.ERROR, logger="helixrt.pool"):
        run(main)
    [record] = [r for r in caplog.records if r.name == "helixrt.pool"]
    assert record.levelno == logging.ERROR
    assert "boom()" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert not [r for r in caplog.records if r.name == "asyncio"]


def test_a_failing_on_error_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def handler(job: Job[Any], exc: BaseException) -> None:
        raise TypeError("handler bug")

    async def boom() -> None:
        raise KeyError("k")

    async def main() -> None:
        async with AsyncWorkerPool(on_error=handler) as pool:
            await pool.spawn(boom())
            assert await pool.run(asyncio.sleep(0.01, result="working")) == "working"

    run(main)
    assert "on_error handler" in caplog.text
    assert "handler bug" in caplog.text


def test_stats_add_up() -> None:
    async def fail() -> None:
        await asyncio.sleep(0)
        raise ValueError

    async def main() -> None:
        gate = asyncio.Event()
        pool = AsyncWorkerPool(2, pending_limit=2, task_timeout=0.2, on_error=lambda j, e: None)
        outcomes: list[Job[Any]] = [
            await pool.spawn(asyncio.sleep(0.001)),  # completed
            await pool.spawn(fail()),  # failed
        ]
        await asyncio.gather(*outcomes, return_exceptions=True)
        running = await pool.spawn(gate.wait())  # cancelled while running
        timing_out = await pool.spawn(asyncio.sleep(10))  # timed out
        dropped = await pool.spawn(noop())  # cancelled while pending
        waiting = await pool.spawn(noop())  # completed after waiting
        with pytest.raises(QueueFullError):
            await pool.spawn(noop(), wait=False)  # rejected
        await asyncio.sleep(0.01)
        stats = pool.stats()
        check_invariant(stats)
        assert (stats.active, stats.pending) == (2, 2)
        dropped.cancel()
        running.cancel()
        await asyncio.wait([timing_out, waiting], timeout=HANG)
        assert isinstance(timing_out.exception(), TaskTimeoutError)
        await pool.close()
        with pytest.raises(PoolClosedError):
            await pool.spawn(noop())  # rejected
        stats = pool.stats()
        check_invariant(stats)
        assert stats == AsyncPoolStats(
            submitted=6,
            completed=2,
            failed=1,
            cancelled=2,
            timed_out=1,
            rejected=2,
            active=0,
            pending=0,
            queue_wait_seconds_mean=stats.queue_wait_seconds_mean,
            queue_wait_seconds_p99=stats.queue_wait_seconds_p99,
            run_seconds_mean=stats.run_seconds_mean,
            run_seconds_p99=stats.run_seconds_p99,
        )
        assert stats.finished == 6

    run(main)


def test_stats_time_the_queue_wait_and_the_run() -> None:
    async def main() -> None:
        async with AsyncWorkerPool(1) as pool:
            assert pool.stats().run_seconds_p99 == 0.0
            await asyncio.gather(*[await pool.spawn(asyncio.sleep(0.02)) for _ in range(3)])
            stats = pool.stats()
            # asyncio timers do not fire early: these are floors, with some slack, not timings
            assert stats.run_seconds_p99 >= 0.015
            assert stats.run_seconds_mean >= 0.015
            assert stats.queue_wait_seconds_p99 >= 0.03  # the third waited for two runs
            assert stats.queue_wait_seconds_mean > 0

    run(main)
    with pytest.raises(AttributeError):
        AsyncWorkerPool().stats().completed = 1  # type: ignore[misc]


def test_jobs_see_the_spawner_s_context_and_never_each_other_s() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def read() -> str:
        await asyncio.sleep(0)
        return var.get()

    async def write(value: str) -> str:
        var.set(value)
        await asyncio.sleep(0)
        return var.get()

    async def mixed(pool: AsyncWorkerPool) -> list[str]:
        jobs = [await pool.spawn(write(str(n)) if n % 3 == 1 else read()) for n in range(30)]
        return await asyncio.gather(*jobs)

    expected = [str(n) if n % 3 == 1 else "unset" for n in range(30)]

    async def main() -> None:
        async with AsyncWorkerPool(1) as pool:  # one worker at a time: it would leak there
            # from a context with no variable set, jobs run in the worker's own context
            empty = contextvars.Context()
            assert await asyncio.create_task(pool.run(write("job's")), context=empty) == "job's"
            assert await asyncio.create_task(pool.run(read()), context=empty) == "unset"
            assert await asyncio.create_task(mixed(pool), context=empty) == expected
            # from a context with variables set, in a copy of that context
            var.set("the caller's")
            assert await pool.run(read()) == "the caller's"
            assert await pool.run(write("in a copy")) == "in a copy"
            assert var.get() == "the caller's"
            assert await pool.run(read()) == "the caller's"
            var.set("unset")
            assert await mixed(pool) == expected

    run(main)


def test_fire_and_forget_jobs_are_not_collected_mid_run() -> None:
    finished: list[int] = []

    async def work(n: int) -> None:
        await asyncio.sleep(0.01)
        finished.append(n)

    async def main() -> None:
        async with AsyncWorkerPool(10) as pool:
            for n in range(20):
                await pool.spawn(work(n))
            gc.collect()
        assert sorted(finished) == list(range(20))

    run(main)


@both_paths
def test_jobs_left_at_the_end_of_asyncio_run_are_cancelled_quietly(copied: bool) -> None:
    started = []

    async def work() -> None:
        started.append(True)
        await asyncio.sleep(10)

    pool = AsyncWorkerPool(2)

    async def main() -> None:
        for _ in range(5):
            await pool.spawn(work())
        await asyncio.sleep(0.01)

    run(main, copied)
    stats = pool.stats()
    assert (stats.cancelled, stats.active, stats.pending) == (5, 0, 0)
    assert len(started) == 2


def test_jobs_never_started_at_the_end_of_asyncio_run_are_closed() -> None:
    pool = AsyncWorkerPool(2)

    async def main() -> None:
        for _ in range(5):
            await pool.spawn(noop())  # the workers have not run yet when main returns

    run(main)  # would fail on a "coroutine 'noop' was never awaited" warning
    stats = pool.stats()
    assert stats.active == 0
    assert stats.pending == 0
    check_invariant(stats)


def test_workers_cancelled_before_they_start_leave_no_job_behind() -> None:
    async def main() -> None:
        pool = AsyncWorkerPool(2)
        coros = [noop() for _ in range(5)]
        jobs = [await pool.spawn(coro) for coro in coros]
        assert pool._workers
        for worker in pool._workers:  # as a shutdown routine might, before they ran
            worker.cancel()
        await asyncio.wait(jobs, timeout=HANG)
        assert all(job.cancelled() for job in jobs)
        assert all(coro.cr_frame is None for coro in coros)
        stats = pool.stats()
        assert (stats.cancelled, stats.active, stats.pending) == (5, 0, 0)
        assert await pool.run(asyncio.sleep(0, result="new workers")) == "new workers"

    run(main)


def test_the_pool_is_bound_to_its_first_loop() -> None:
    pool = AsyncWorkerPool()
    run(lambda: pool.run(noop()))

    async def again() -> None:
        coro = noop()
        with pytest.raises(WrongLoopError, match="bound to the event loop it was first used on"):
            await pool.spawn(coro)
        coro.close()
        with pytest.raises(WrongLoopError):
            await pool.close()

    run(again)


def test_using_the_pool_from_another_thread_s_loop_is_refused() -> None:
    async def main() -> None:
        async with AsyncWorkerPool() as pool:
            await pool.run(noop())

            def elsewhere() -> BaseException | None:
                async def use() -> None:
                    await pool.run(noop())

                try:
                    asyncio.run(use())
                except WrongLoopError as err:
                    return err
                return None

            assert isinstance(await asyncio.to_thread(elsewhere), WrongLoopError)

    run(main)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"limit": 0}, InvalidArgumentError, "limit must be an int >= 1, got 0"),
        ({"limit": -3}, InvalidArgumentError, "limit must be an int >= 1, got -3"),
        ({"limit": 2.5}, InvalidTypeError, "limit must be an int >= 1, got float"),
        ({"limit": True}, InvalidTypeError, "limit must be an int >= 1, got bool"),
        ({"pending_limit": -1}, InvalidArgumentError, "pending_limit must be an int >= 0"),
        ({"task_timeout": 0}, InvalidArgumentError, "task_timeout must be a positive number"),
        ({"task_timeout": -1.0}, InvalidArgumentError, "task_timeout must be a positive"),
        ({"task_timeout": float("nan")}, InvalidArgumentError, "task_timeout must be"),
        ({"task_timeout": "5"}, InvalidTypeError, "task_timeout must be a number of seconds"),
        ({"close_timeout": 0}, InvalidArgumentError, "close_timeout must be a positive number"),
        ({"on_error": "log"}, InvalidTypeError, "on_error must be a callable"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        AsyncWorkerPool(**kwargs)
    assert issubclass(error, HelixError)
    assert issubclass(error, ValueError | TypeError)


def test_none_is_accepted_for_the_timeouts() -> None:
    pool = AsyncWorkerPool(1, pending_limit=0, task_timeout=None, close_timeout=None)
    assert (pool.limit, pool.pending_limit, pool.task_timeout, pool.close_timeout) == (
        1,
        0,
        None,
        None,
    )
    assert AsyncWorkerPool().close_timeout == 60.0


def test_what_is_not_a_coroutine_is_refused_by_name() -> None:
    async def main() -> None:
        async with AsyncWorkerPool() as pool:
            with pytest.raises(InvalidTypeError, match=r"got the callable 'noop' itself"):
                await pool.spawn(noop)  # type: ignore[arg-type]
            with pytest.raises(InvalidTypeError, match=r"takes a coroutine object.*got int: 5"):
                await pool.spawn(5)  # type: ignore[arg-type]
            future = asyncio.get_running_loop().create_future()
            with pytest.raises(TypeError, match="got Future"):
                await pool.run(future)  # type: ignore[arg-type]
            with pytest.raises(InvalidTypeError, match="returned int"):
                async for _ in pool.map(lambda x: x, [1]):  # type: ignore[arg-type,misc]
                    pass
            with pytest.raises(InvalidTypeError, match="takes an async function"):
                pool.map(None, [1])  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError, match="buffersize must be an int >= 1"):
                pool.map(asyncio.sleep, [1], buffersize=0)
            assert pool.stats().submitted == 0

    run(main)


@pytest.mark.parametrize("seed", range(16))
def test_random_workloads_keep_every_promise(seed: int) -> None:
    """Spawns (waiting or not, from contexts with and without variables), cancels jobs and
    waiting callers, at random, then ends by cancelling everything or by close(); checks the
    bounds, every job's outcome against what its coroutine did, and the stats against both."""
    rng = random.Random(seed)
    limit, pending_limit = rng.randint(1, 6), rng.randint(0, 8)
    timeout = rng.choice([None, 0.03])
    running = most = 0
    reports: list[Job[Any]] = []
    kinds = ["sync", "sleep", "sleep", "raise", "sync-raise", "hang", "stubborn"]

    async def job_body(kind: str, delay: float) -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            if kind == "stubborn":
                with suppress(asyncio.CancelledError):
                    await asyncio.sleep(10)
            elif kind != "sync":
                await asyncio.sleep(10 if kind == "hang" else delay)
            if kind in ("raise", "sync-raise"):
                raise LookupError(kind)
            return kind
        finally:
            running -= 1

    async def main() -> None:
        pool = AsyncWorkerPool(
            limit,
            pending_limit=pending_limit,
            task_timeout=timeout,
            close_timeout=0.05,
            on_error=lambda job, exc: reports.append(job),
        )
        loop = asyncio.get_running_loop()
        jobs: list[Job[str]] = []
        spawners: list[tuple[asyncio.Task[Job[str]], Coroutine[Any, Any, str]]] = []
        refused = 0
        for _ in range(150):
            action = rng.random()
            if action < 0.6:
                coro = job_body(rng.choice(kinds), rng.random() / 200)
                if rng.random() < 0.5:
                    try:
                        jobs.append(await pool.spawn(coro, wait=False))
                    except QueueFullError:
                        refused += 1
                else:
                    context = contextvars.Context()
                    if rng.random() < 0.5:
                        context.run(REQUEST_ID.set, "request")
                    spawner = loop.create_task(pool.spawn(coro), context=context)
                    spawners.append((spawner, coro))
            elif action < 0.72 and jobs:
                rng.choice(jobs).cancel()
            elif action < 0.78 and spawners:
                rng.choice(spawners)[0].cancel()
            else:
                await asyncio.sleep(rng.choice([0, 0, 0.001, 0.003]))
            stats = pool.stats()
            check_invariant(stats)
            assert stats.active <= limit
            assert stats.active + stats.pending <= limit + pending_limit

        if rng.random() < 0.5:  # the callers give up, and the jobs are cancelled
            for spawner, _ in spawners:
                spawner.cancel()
            closing = None
        else:  # the pool is closed: waiting callers are refused, what is left cancelled
            closing = asyncio.ensure_future(pool.close())
            await asyncio.sleep(0)
        for spawner, coro in spawners:
            try:
                jobs.append(await spawner)
            except asyncio.CancelledError:
                coro.close()  # in case the spawner was cancelled before it ran
            except PoolClosedError:
                refused += 1
        if closing is None:
            for job in jobs:
                job.cancel()
            await asyncio.wait(jobs, timeout=HANG)
        await pool.close()
        if closing is not None:
            assert closing.done()

        outcomes = {"completed": 0, "failed": 0, "timed_out": 0, "cancelled": 0}
        for job in jobs:
            assert job.done()
            if job.cancelled():
                outcomes["cancelled"] += 1
            elif isinstance(job.exception(), TaskTimeoutError):
                outcomes["timed_out"] += 1
            elif job.exception() is not None:
                assert isinstance(job.exception(), LookupError)
                outcomes["failed"] += 1
            else:
                assert job.result() in ("sync", "sleep", "stubborn")
                outcomes["completed"] += 1
        stats = pool.stats()
        check_invariant(stats)
        assert stats.submitted == len(jobs)
        assert stats.rejected == refused
        assert (stats.active, stats.pending) == (0, 0)
        assert {
            "completed": stats.completed,
            "failed": stats.failed,
            "timed_out": stats.timed_out,
            "cancelled": stats.cancelled,
        } == outcomes
        assert all(job.exception() is not None for job in reports if not job.cancelled())
        assert len(reports) <= outcomes["failed"] + outcomes["timed_out"]
        assert not pool._workers

    run(main)
    assert running == 0
    assert most <= limit
