"""The thread worker pool: a drop-in `concurrent.futures.ThreadPoolExecutor` on a Rust queue.

`WorkerPool` is the Rust class (`helixrt._core.WorkerPool`: the bounded queue, the worker loop,
the counters) with the `Executor` surface added here: Futures, thread start-up, shutdown,
deadlines of running tasks, and what happens at exit and after `os.fork()`. For asyncio work,
see `helixrt.async_pool`.

Futures are `concurrent.futures.Future` objects whose lock (a `helixrt._core.FutureLock`, used
like an RLock) and Condition are shared by all the Futures of one pool: creating one then costs
a fraction of a standard Future (which makes a Condition and an RLock each), a worker completes
an uncontended one without calling into Python, and `wait`, `as_completed`, `result`, callbacks
and cancellation work as usual.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError, Executor, Future, InvalidStateError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from concurrent.futures.thread import BrokenThreadPool
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from helixrt import _core
from helixrt.errors import HelixError, TaskTimeoutError

__all__ = ["BrokenPoolError", "PoolStats", "WorkerPool"]

logger = logging.getLogger("helixrt.pool")

P = ParamSpec("P")
T = TypeVar("T")

_ON_FULL = ("block", "reject", "caller_runs", "drop_oldest")


class BrokenPoolError(HelixError, BrokenThreadPool):
    """A worker's initializer failed: the pool runs nothing more (as ThreadPoolExecutor's
    `BrokenThreadPool`, which this derives from)."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a WorkerPool's counters (monotonic) and gauges; times in seconds."""

    submitted: int
    completed: int
    failed: int
    rejected: int
    dropped: int
    cancelled: int
    timed_out: int
    active_workers: int
    """Workers running a task now."""
    queued: int
    workers: int
    """Worker threads started."""
    queue_wait_mean: float
    queue_wait_p99: float
    run_time_mean: float
    run_time_p99: float


_NO_CALLBACKS: tuple[()] = ()


class _PoolFuture(Future[Any]):
    """A Future that shares its pool's Condition instead of making its own.

    The methods the pool calls on every task (`set_running_or_notify_cancel`, `set_result`,
    `set_exception`) and `result` take the Condition's lock directly and notify only when some
    thread waits: the standard ones go through the Condition's Python methods each time. As
    one wake-up reaches every waiter of the pool, `result` and `exception` loop until their
    own Future is done.
    """

    _condition: threading.Condition
    _lock: Any  # the pool's FutureLock, which is also its Condition's lock
    # Class-level defaults: a new Future allocates nothing but itself (the lists appear when
    # a waiter or a callback does), which also spares the garbage collector.
    _state = PENDING
    _result = None
    _exception = None
    _done_callbacks: Any = _NO_CALLBACKS  # a list once a callback is added

    def __init__(self) -> None:  # Future.__init__ would make a Condition and two lists.
        pass

    _waiter_list: list[Any] | None = None
    _condition_waiters: Any  # the pool Condition's deque of waiting threads

    @property
    def _waiters(self) -> list[Any]:
        """The waiters `concurrent.futures.wait` and `as_completed` add, made on first use."""
        waiters = self._waiter_list
        if waiters is None:
            waiters = self._waiter_list = []
        return waiters

    @_waiters.setter
    def _waiters(self, waiters: list[Any]) -> None:
        self._waiter_list = waiters

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        with self._lock:
            if self._state not in (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED):
                if self._done_callbacks is _NO_CALLBACKS:
                    self._done_callbacks = []
                self._done_callbacks.append(fn)
                return
        try:
            fn(self)
        except Exception:
            logging.getLogger("concurrent.futures").exception(
                "exception calling callback for %r", self
            )

    def set_running_or_notify_cancel(self) -> bool:
        with self._lock:
            if self._state == PENDING:
                self._state = RUNNING
                return True
            if self._state == CANCELLED:
                self._state = CANCELLED_AND_NOTIFIED
                for waiter in self._waiter_list or ():
                    waiter.add_cancelled(self)
                return False
        raise RuntimeError(f"Future in unexpected state: {self._state}")

    def set_result(self, result: Any) -> None:
        with self._lock:
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED):
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._state = FINISHED
            if self._waiter_list:
                for waiter in self._waiter_list:
                    waiter.add_result(self)
            if self._condition_waiters:
                self._condition.notify_all()
        if self._done_callbacks:
            self._invoke_callbacks()  # type: ignore[attr-defined]

    def set_exception(self, exception: BaseException | None) -> None:
        with self._lock:
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED):
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._exception = exception
            self._state = FINISHED
            if self._waiter_list:
                for waiter in self._waiter_list:
                    waiter.add_exception(self)
            if self._condition_waiters:
                self._condition.notify_all()
        if self._done_callbacks:
            self._invoke_callbacks()  # type: ignore[attr-defined]

    def _wait_done(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._state not in (FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError()
            self._condition.wait(left)

    def result(self, timeout: float | None = None) -> Any:
        if self._state == FINISHED and self._exception is None:
            return self._result  # a finished Future never changes again: no lock needed
        try:
            with self._lock:
                if self._state != FINISHED:
                    self._wait_done(timeout)
                    if self._state != FINISHED:
                        raise CancelledError()
                if self._exception is not None:
                    raise self._exception
                return self._result
        finally:
            self = None  # type: ignore[assignment]  # break the cycle through the traceback

    def exception(self, timeout: float | None = None) -> BaseException | None:
        with self._lock:
            if self._state != FINISHED:
                self._wait_done(timeout)
                if self._state != FINISHED:
                    raise CancelledError()
            return self._exception


class _Deadlines:
    """Times out running tasks: at a task's deadline its Future fails with TaskTimeoutError
    (the task itself cannot be stopped; its eventual result is discarded). One thread for the
    whole process, started on the first deadline and ended when none is left."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        # Weak references: a Future that finished in time is not kept until its deadline.
        self._heap: list[tuple[float, int, weakref.ref[Future[Any]], weakref.ref[WorkerPool]]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, pool: WorkerPool, future: Future[Any], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        entry = (deadline, next(self._order), weakref.ref(future), weakref.ref(pool))
        with self._lock:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="helixrt-pool-deadlines", daemon=True
                )
                self._thread.start()
            elif self._heap[0] is entry:
                self._wakeup.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._heap and self._heap[0][0] > time.monotonic():
                    self._wakeup.wait(self._heap[0][0] - time.monotonic())
                if not self._heap:
                    self._thread = None
                    return
                _, _, future_ref, pool_ref = heapq.heappop(self._heap)
            future = future_ref()
            if future is not None:
                _time_out(future, pool_ref())

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._heap = []
        self._thread = None


def _time_out(future: Future[Any], pool: WorkerPool | None) -> None:
    if future.done():
        return
    try:
        future.set_exception(TaskTimeoutError("the task ran past its deadline"))
    except InvalidStateError:  # finished just now
        return
    if pool is not None:
        pool._count("timed_out", 1)


_DEADLINES = _Deadlines()
_LIVE_POOLS: weakref.WeakSet[WorkerPool] = weakref.WeakSet()
_POOL_NUMBERS = itertools.count()


class WorkerPool(_core.WorkerPool, Executor):
    """A thread pool on a Rust task queue; use it wherever a ThreadPoolExecutor is used.

    `WorkerPool(max_workers=None, thread_name_prefix="", initializer=None, initargs=(), *,
    queue_size=1000, on_full="block", task_timeout=None, on_error=None)`

    - `max_workers`: ThreadPoolExecutor's default, min(32, CPUs + 4). Threads start as work
      arrives and park when there is none (an idle pool uses no CPU).
    - `queue_size`: most tasks waiting (the original's default, 1000). When it is full,
      `on_full` decides: "block" (submit waits for room; shutdown wakes it with an error),
      "reject" (`QueueFullError`), "caller_runs" (the submitting thread runs the task),
      "drop_oldest" (the oldest waiting task's Future is cancelled to make room).
    - `task_timeout`: seconds a task may take from submission; past it, its Future raises
      `TaskTimeoutError` (a TimeoutError). A task still queued then never runs.
    - `on_error(exc)`: called with the exception of a failed `submit_nowait` task (default:
      logged on the `helixrt.pool` logger).

    A failing `initializer` breaks the pool as ThreadPoolExecutor's does (`BrokenPoolError`,
    a `BrokenThreadPool`). Thread-safe. After `os.fork()` the child's copy refuses work.
    """

    _thread_name_prefix: str
    _initializer: Callable[..., object] | None
    _initargs: tuple[Any, ...]
    _on_full: str
    _lock: threading.Lock
    _threads: list[threading.Thread]
    _shutdown_started: bool
    _broken: str | None
    _future_class: type[_PoolFuture]

    def __new__(
        cls,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        queue_size: int = 1000,
        on_full: str = "block",
        task_timeout: float | None = None,
        on_error: Callable[[BaseException], object] | None = None,
    ) -> WorkerPool:
        if max_workers is None:
            max_workers = min(32, (os.cpu_count() or 1) + 4)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        deadlines = _DEADLINES
        pool_ref: list[weakref.ref[WorkerPool]] = []

        def watch(future: Future[Any], seconds: float) -> None:
            pool = pool_ref[0]()
            if pool is not None:
                deadlines.watch(pool, future, seconds)

        def report(exc: BaseException) -> None:
            if on_error is not None:
                on_error(exc)
            else:
                logger.error("a submit_nowait task failed", exc_info=exc)

        def start_worker() -> None:
            pool = pool_ref[0]()
            if pool is not None:
                pool._start_worker()

        lock = _core.FutureLock()
        condition = threading.Condition(lock)  # type: ignore[arg-type]
        future_class: type[_PoolFuture] = type(
            "Future",
            (_PoolFuture,),
            {
                "_condition": condition,
                "_lock": lock,
                "_condition_waiters": condition._waiters,  # type: ignore[attr-defined]
            },
        )
        self = super().__new__(
            cls,
            max_workers,
            queue_size,
            on_full,
            task_timeout,
            report,
            watch,
            start_worker,
            future_class,
            (lock, condition._waiters, PENDING, RUNNING, FINISHED, _NO_CALLBACKS),  # type: ignore[attr-defined]
        )
        pool_ref.append(weakref.ref(self))
        self._thread_name_prefix = thread_name_prefix or f"WorkerPool-{next(_POOL_NUMBERS)}"
        self._initializer = initializer
        self._initargs = initargs
        self._on_full = on_full
        self._lock = threading.Lock()
        self._threads = []
        self._shutdown_started = False
        self._broken = None
        self._future_class = future_class
        _LIVE_POOLS.add(self)
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ did the work

    # --- submitting -------------------------------------------------------------------------

    def submit_with(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        priority: int = 0,
        timeout: float | None = None,
    ) -> Future[T]:
        """Like submit, with a priority (higher runs first, FIFO among equals) and a deadline
        in seconds from now (overriding `task_timeout`)."""
        future: Future[T] = self._future_class()
        self._push(fn, tuple(args), kwargs or None, future, priority, timeout)
        return future

    # --- threads ----------------------------------------------------------------------------

    def _start_worker(self) -> None:
        with self._lock:
            if self._shutdown_started or self._broken is not None:
                self._worker_gone()
                return
            thread = threading.Thread(
                target=self._worker_main,
                name=f"{self._thread_name_prefix}_{len(self._threads)}",
                daemon=True,
            )
            self._threads.append(thread)
        try:
            thread.start()
        except BaseException:
            self._worker_gone()
            raise

    def _worker_main(self) -> None:
        try:
            if self._initializer is not None:
                try:
                    self._initializer(*self._initargs)
                except BaseException:
                    logger.critical("Exception in initializer:", exc_info=True)
                    self._break(
                        "A thread initializer failed, the thread pool is not usable anymore"
                    )
                    return
            self._work()
        finally:
            self._worker_gone()

    def _break(self, reason: str) -> None:
        self._broken = reason
        self._set_broken(reason)
        futures = [f for f in self._drain() if f is not None]
        for future in futures:
            if future.set_running_or_notify_cancel():
                future.set_exception(BrokenPoolError(reason))
        self._count("failed", len(futures))

    # --- shutting down ----------------------------------------------------------------------

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Stops intake, then (with `wait`) runs every accepted task and waits for the workers.
        `cancel_futures` cancels the tasks still queued; `timeout` (seconds) bounds the wait,
        after which the tasks still queued are cancelled (running ones cannot be stopped)."""
        with self._lock:
            self._shutdown_started = True
            threads = list(self._threads)
        self._close()
        if cancel_futures:
            self._cancel_queued()
        if not wait:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        current = threading.current_thread()
        for thread in threads:
            if thread is current:
                continue
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if deadline is not None and any(t.is_alive() for t in threads if t is not current):
            self._cancel_queued()

    def _cancel_queued(self) -> None:
        pending = self._drain()
        for future in pending:
            if future is not None:
                future.cancel()
        self._count("cancelled", len(pending))

    # --- introspection ----------------------------------------------------------------------

    @property
    def max_workers(self) -> int:
        return self._max_workers

    @property
    def queue_size(self) -> int:
        return self._queue_size

    def stats(self) -> PoolStats:
        counters, gauges, times = self._stats()
        return PoolStats(*counters, *gauges, *times)

    def __repr__(self) -> str:
        return (
            f"WorkerPool(max_workers={self.max_workers}, queue_size={self.queue_size}, "
            f"on_full={self._on_full!r})"
        )


def _after_fork_in_child() -> None:
    for pool in list(_LIVE_POOLS):
        pool._abandon()
    _DEADLINES.after_fork()


def _at_exit() -> None:
    for pool in list(_LIVE_POOLS):
        pool.shutdown(wait=True)


os.register_at_fork(after_in_child=_after_fork_in_child)
threading._register_atexit(_at_exit)  # type: ignore[attr-defined]  # as ThreadPoolExecutor does
