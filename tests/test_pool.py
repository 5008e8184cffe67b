"""WorkerPool: the Executor contract, the full-queue policies under load, shutdown, deadlines,
priorities, broken pools, fork, and no threads or CPU left behind."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import os
import resource
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import helixrt
from helixrt import WorkerPool
from helixrt.errors import (
    BrokenPoolError,
    HelixError,
    InvalidArgumentError,
    PoolClosedError,
    QueueFullError,
    TaskTimeoutError,
)


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """An event that tasks wait on; always set at the end so no worker stays stuck."""
    event = threading.Event()
    yield event
    event.set()


def blocked_pool(gate: threading.Event, **options: Any) -> WorkerPool:
    """A one-worker pool whose worker is busy until `gate` is set."""
    pool = WorkerPool(1, **options)
    started = threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(10)

    pool.submit(hold)
    assert started.wait(5)
    return pool


def square(x: int) -> int:
    return x * x


def test_it_is_an_executor_with_thread_pool_defaults() -> None:
    with WorkerPool() as pool:
        assert isinstance(pool, cf.Executor)
        assert pool.max_workers == cf.ThreadPoolExecutor()._max_workers
        assert pool.queue_size == 1000


def test_submit_map_wait_and_as_completed() -> None:
    with WorkerPool(4) as pool:
        futures = [pool.submit(square, i) for i in range(50)]
        assert isinstance(futures[0], cf.Future)
        assert [f.result(timeout=5) for f in futures] == [i * i for i in range(50)]
        assert list(pool.map(square, range(20))) == [i * i for i in range(20)]
        assert list(pool.map(pow, [2, 3], [5, 2], timeout=5)) == [32, 9]
        done, not_done = cf.wait([pool.submit(square, i) for i in range(10)], timeout=5)
        assert len(done) == 10
        assert not not_done
        total = sum(f.result() for f in cf.as_completed(pool.submit_many(square, [(3,)] * 10)))
        assert total == 90
        assert pool.submit(lambda *a, **k: (a, k), 1, key="v").result() == ((1,), {"key": "v"})


def test_exceptions_reach_the_future_and_the_worker_survives() -> None:
    with WorkerPool(1) as pool:
        failing = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=5)
        assert isinstance(failing.exception(), ZeroDivisionError)
        assert pool.submit(square, 5).result(timeout=5) == 25
        assert pool.stats().failed == 1


def test_callbacks_and_result_timeout(gate: threading.Event) -> None:
    pool = blocked_pool(gate)
    seen: list[int] = []
    future = pool.submit(square, 6)
    future.add_done_callback(lambda f: seen.append(f.result()))
    with pytest.raises(TimeoutError):
        future.result(timeout=0.05)
    done, not_done = cf.wait([future], timeout=0.05)
    assert (done, not_done) == (set(), {future})
    gate.set()
    assert future.result(timeout=5) == 36
    pool.shutdown()
    assert seen == [36]
    late: list[int] = []
    future.add_done_callback(lambda f: late.append(f.result()))  # runs at once
    assert late == [36]


def test_a_queued_future_can_be_cancelled(gate: threading.Event) -> None:
    pool = blocked_pool(gate)
    ran: list[int] = []
    future = pool.submit(ran.append, 1)
    assert future.cancel()
    assert future.cancelled()
    with pytest.raises(cf.CancelledError):
        future.result()
    gate.set()
    pool.shutdown()
    assert ran == []
    assert pool.stats().cancelled == 1


def test_thread_names_and_initializer() -> None:
    local = threading.local()

    def init(tag: str) -> None:
        local.tag = tag

    with WorkerPool(2, thread_name_prefix="llm", initializer=init, initargs=("ready",)) as pool:
        name, tag = pool.submit(lambda: (threading.current_thread().name, local.tag)).result()
    assert name.startswith("llm_")
    assert tag == "ready"


def test_a_failing_initializer_breaks_the_pool(caplog: pytest.LogCaptureFixture) -> None:
    def init() -> None:
        raise RuntimeError("no database")

    pool = WorkerPool(2, initializer=init)
    future = pool.submit(square, 2)
    with pytest.raises(BrokenPoolError) as info:
        future.result(timeout=5)
    assert isinstance(info.value, cf.thread.BrokenThreadPool)
    assert isinstance(info.value, HelixError)
    with pytest.raises(cf.thread.BrokenThreadPool, match="initializer failed"):
        pool.submit(square, 3)
    pool.shutdown()
    assert "Exception in initializer" in caplog.text


def _flood(pool: WorkerPool, threads: int, per_thread: int) -> tuple[int, int]:
    """Submits from several threads at once; returns (accepted, refused) submissions."""
    accepted, refused = itertools.count(), itertools.count()

    def submitter() -> None:
        for _ in range(per_thread):
            try:
                pool.submit_nowait(int)
                next(accepted)
            except QueueFullError:
                next(refused)

    workers = [threading.Thread(target=submitter) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return next(accepted), next(refused)


@pytest.mark.slow
@pytest.mark.parametrize("on_full", ["block", "reject", "caller_runs", "drop_oldest"])
def test_no_task_is_lost_under_load_whatever_the_policy(on_full: str) -> None:
    pool = WorkerPool(4, queue_size=1024, on_full=on_full)
    accepted, refused = _flood(pool, threads=8, per_thread=100_000)
    pool.shutdown(wait=True)
    stats = pool.stats()
    assert stats.submitted == 800_000
    assert accepted + refused == 800_000
    assert stats.rejected == refused
    assert stats.failed == stats.timed_out == stats.cancelled == 0
    assert stats.completed + stats.rejected + stats.dropped == stats.submitted
    assert stats.queued == 0
    if on_full in ("block", "caller_runs"):
        assert stats.completed == 800_000
    if on_full == "reject":
        assert stats.rejected > 0
    if on_full == "drop_oldest":
        assert stats.dropped > 0


def test_drop_oldest_cancels_the_oldest_future(gate: threading.Event) -> None:
    pool = blocked_pool(gate, queue_size=2, on_full="drop_oldest")
    first, second, third = (pool.submit(square, i) for i in (1, 2, 3))
    assert first.cancelled()
    gate.set()
    assert (second.result(timeout=5), third.result(timeout=5)) == (4, 9)
    pool.shutdown()
    assert pool.stats().dropped == 1


def test_reject_raises_queue_full(gate: threading.Event) -> None:
    pool = blocked_pool(gate, queue_size=1, on_full="reject")
    pool.submit(square, 1)
    with pytest.raises(QueueFullError, match="queue is full \\(1 tasks\\)") as info:
        pool.submit(square, 2)
    assert isinstance(info.value, RuntimeError)
    gate.set()
    pool.shutdown()


def test_caller_runs_runs_in_the_submitting_thread(gate: threading.Event) -> None:
    pool = blocked_pool(gate, queue_size=1, on_full="caller_runs")
    pool.submit(square, 1)
    future = pool.submit(lambda: threading.current_thread().name)
    assert future.result(timeout=1) == threading.current_thread().name
    gate.set()
    pool.shutdown()


def test_a_blocked_submit_is_woken_by_shutdown(gate: threading.Event) -> None:
    pool = blocked_pool(gate, queue_size=1)
    pool.submit(square, 1)
    errors: list[BaseException] = []

    def submit_more() -> None:
        try:
            pool.submit(square, 2)
        except BaseException as err:
            errors.append(err)

    waiter = threading.Thread(target=submit_more)
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()  # waiting for room
    pool.shutdown(wait=False)
    waiter.join(5)
    assert not waiter.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], PoolClosedError)
    gate.set()
    pool.shutdown()


def test_a_task_submitting_into_its_own_full_pool_does_not_deadlock() -> None:
    pool = WorkerPool(1, queue_size=1)

    def nested() -> str:
        pool.submit(square, 1)  # fills the queue: this worker is the only one
        try:
            pool.submit(square, 2)
        except QueueFullError as err:
            return str(err)
        return "no error"

    assert "would deadlock" in pool.submit(nested).result(timeout=5)
    pool.shutdown()


def test_shutdown_runs_every_accepted_task() -> None:
    ran = itertools.count()
    pool = WorkerPool(2)
    for _ in range(500):
        pool.submit(lambda: next(ran))
    pool.shutdown(wait=True)
    assert next(ran) == 500
    with pytest.raises(PoolClosedError, match="shut down"):
        pool.submit(square, 1)
    with pytest.raises(RuntimeError):
        pool.submit_nowait(square, 1)


def test_shutdown_cancel_futures_cancels_exactly_the_queued(gate: threading.Event) -> None:
    pool = blocked_pool(gate)
    queued = [pool.submit(square, i) for i in range(5)]
    pool.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    gate.set()
    pool.shutdown()
    stats = pool.stats()
    assert stats.cancelled == 5
    assert stats.completed == 1  # the blocking task


def test_shutdown_timeout_returns_with_stuck_tasks(gate: threading.Event) -> None:
    pool = blocked_pool(gate)
    queued = pool.submit(square, 3)
    started = time.monotonic()
    pool.shutdown(wait=True, timeout=0.3)
    assert time.monotonic() - started < 2.0
    assert queued.cancelled()


def test_a_task_whose_deadline_passes_in_the_queue_never_runs(gate: threading.Event) -> None:
    pool = blocked_pool(gate)
    ran: list[int] = []
    late = pool.submit_with(ran.append, (1,), timeout=0.05)
    time.sleep(0.1)
    gate.set()
    with pytest.raises(TaskTimeoutError, match="while it was queued"):
        late.result(timeout=5)
    pool.shutdown()
    assert ran == []
    assert pool.stats().timed_out == 1


def test_a_running_task_times_out_and_its_result_is_discarded() -> None:
    release = threading.Event()
    with WorkerPool(1, task_timeout=0.1) as pool:
        slow = pool.submit(lambda: release.wait(5) and "late")
        with pytest.raises(TimeoutError) as info:
            slow.result(timeout=5)
        assert isinstance(info.value, TaskTimeoutError)
        release.set()
        assert pool.submit(square, 2).result(timeout=5) == 4
    stats = pool.stats()
    assert stats.timed_out == 1
    assert stats.completed == 1
    with pytest.raises(TaskTimeoutError):
        slow.result()


def test_priorities_run_highest_first_fifo_within(gate: threading.Event) -> None:
    pool = blocked_pool(gate)
    order: list[str] = []
    for name, priority in [("low", -1), ("a", 0), ("urgent", 5), ("b", 0), ("high", 1)]:
        pool.submit_with(order.append, (name,), priority=priority)
    gate.set()
    pool.shutdown()
    assert order == ["urgent", "high", "a", "b", "low"]


def test_submit_nowait_failures_go_to_on_error_or_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors: list[BaseException] = []
    with WorkerPool(1, on_error=errors.append) as pool:
        pool.submit_nowait(lambda: 1 / 0)
    assert len(errors) == 1
    assert isinstance(errors[0], ZeroDivisionError)
    with caplog.at_level(logging.ERROR, logger="helixrt.pool"), WorkerPool(1) as pool:
        pool.submit_nowait(lambda: [][1])
    assert "a submit_nowait task failed" in caplog.text
    assert "IndexError" in caplog.text


def test_stats_time_the_queue_and_the_runs() -> None:
    with WorkerPool(2) as pool:
        for future in [pool.submit(time.sleep, 0.01) for _ in range(10)]:
            future.result()
    stats = pool.stats()
    assert stats.submitted == stats.completed == 10
    assert 0.005 < stats.run_time_mean < 1.0
    assert stats.run_time_p99 >= 0.005
    assert stats.queue_wait_mean >= 0.0
    assert stats.active_workers == 0


def test_bad_arguments_are_named() -> None:
    with pytest.raises(InvalidArgumentError, match="max_workers must be an int >= 1, got 0"):
        WorkerPool(0)
    with pytest.raises(ValueError, match="queue_size must be an int >= 1, got -3"):
        WorkerPool(queue_size=-3)
    with pytest.raises(ValueError, match="on_full must be 'block', 'reject', 'caller_runs'"):
        WorkerPool(on_full="later")
    with pytest.raises(ValueError, match="task_timeout must be a positive number"):
        WorkerPool(task_timeout=0)
    with WorkerPool(1) as pool:
        with pytest.raises(TypeError, match="iterable of argument tuples, got an item of type"):
            pool.submit_many(square, [1, 2])
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            pool.submit_with(square, (1,), timeout=-1)


def test_idle_workers_use_no_cpu() -> None:
    with WorkerPool(4) as pool:
        for future in [pool.submit(square, i) for i in range(100)]:
            future.result()
        time.sleep(0.1)
        before = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(1.0)
        after = resource.getrusage(resource.RUSAGE_SELF)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert used < 0.1, f"an idle pool used {used:.3f} s of CPU in 1 s"


def test_no_worker_thread_outlives_shutdown() -> None:
    before = set(threading.enumerate())
    pool = WorkerPool(4, thread_name_prefix="leakcheck")
    for future in [pool.submit(time.sleep, 0.01) for _ in range(8)]:
        future.result()
    pool.shutdown()
    left = [t for t in set(threading.enumerate()) - before if t.name.startswith("leakcheck")]
    assert left == []


def test_the_child_of_a_fork_gets_an_error_not_a_hang() -> None:
    pool = WorkerPool(2)
    assert pool.submit(square, 2).result() == 4
    pid = os.fork()
    if pid == 0:  # the child: must refuse at once
        try:
            pool.submit(square, 3)
        except PoolClosedError as err:
            os._exit(0 if "os.fork()" in str(err) else 2)
        except BaseException:
            os._exit(3)
        os._exit(4)
    deadline = time.monotonic() + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        assert time.monotonic() < deadline, "the child hung"
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pool.submit(square, 5).result() == 25  # the parent's pool still works
    pool.shutdown()


def test_lazy_name() -> None:
    assert helixrt.WorkerPool is WorkerPool
