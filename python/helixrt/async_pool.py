"""The asyncio worker pool: bounded concurrency for coroutines on one event loop.

`AsyncWorkerPool` runs at most `limit` coroutines at once, keeps up to `pending_limit` more
waiting in FIFO order, and makes callers of `spawn` wait (or refuses them, with `wait=False`)
beyond that. Each job has a `Job`, an `asyncio.Future` for its result; an exception nobody
awaited is reported, never lost. `close()` drains the pool, then cancels what is left.

How it is fast: no `asyncio.Task` per job. Up to `limit` worker tasks pull jobs from a deque
and await each job's coroutine themselves, so a job that finishes without suspending costs no
task switch at all, and a `Job` is a bare future. Context variables still behave as with
`asyncio.create_task`: a job spawned from a context with variables set has each step run in a
copy of it, and a worker whose job set a variable is replaced, so no job sees another's.
Workers end one loop iteration after they run out of work, so an idle pool holds no tasks.

This module does not run blocking functions (use the thread pool, or `asyncio.to_thread`), has
no priorities, and does not cross event loops or threads: a pool is bound to one loop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import types
from asyncio import (
    CancelledError,
    Future,
    current_task,
    get_running_loop,
    shield,
    sleep,
)
from asyncio import wait as wait_for_all
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Iterator
from contextlib import suppress
from contextvars import Context, copy_context
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from helixrt._stats import mean, p99
from helixrt.errors import (
    HelixError,
    InvalidArgumentError,
    InvalidTypeError,
    PoolClosedError,
    QueueFullError,
    TaskTimeoutError,
)

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop, Task
    from types import TracebackType

__all__ = ["AsyncPoolStats", "AsyncWorkerPool", "Job", "WrongLoopError"]

T = TypeVar("T")
A = TypeVar("A")

_log = logging.getLogger("helixrt.pool")
_now = time.perf_counter
_get_ident = threading.get_ident
_CoroutineType = types.CoroutineType

_SAMPLES = 1024  # timings kept for the means and p99s; a power of two, so the index is masked
_MAX_SAMPLE_MASK = 1023  # time at least one job in 1024
_RATE_WINDOW = 64  # samples between two adjustments of the sampling rate
_CLOSED = 1 << 62  # taken from a pool's free slots when it closes
_CANCEL_GRACE = 1.0  # seconds close() gives cancelled jobs to unwind before it gives up


class WrongLoopError(HelixError, RuntimeError):
    """The pool was used from an event loop other than the one it is bound to."""


@dataclass(frozen=True, slots=True)
class AsyncPoolStats:
    """A snapshot of an AsyncWorkerPool's counters (monotonic) and gauges (active, pending).

    `submitted == completed + failed + cancelled + timed_out + active + pending`, and
    `rejected` spawns never became jobs. Timings are in seconds, over the latest 1024 jobs
    timed: the first 64, then a sample whose rate adapts to time 100 to 1000 jobs a second
    (every job of a slower pool), so that timing costs nothing that shows.
    """

    submitted: int
    """Jobs accepted by `spawn` (and so by `run` and `map`)."""
    completed: int
    """Jobs that returned."""
    failed: int
    """Jobs that raised an exception (other than a cancellation or the pool's timeout)."""
    cancelled: int
    """Jobs cancelled while pending or running: by `Job.cancel()`, a cancelled caller of
    `run`, `close()`, or their own coroutine raising CancelledError."""
    timed_out: int
    """Jobs cancelled by `task_timeout`."""
    rejected: int
    """Spawns refused: the pool was full and `wait=False`, or it was closed."""
    active: int
    """Jobs running now."""
    pending: int
    """Jobs not started yet. This includes, for an instant, the jobs that workers about to
    start will take, so it may exceed `pending_limit`; `active + pending` never exceeds
    `limit + pending_limit`."""
    queue_wait_seconds_mean: float
    """From spawn to start."""
    queue_wait_seconds_p99: float
    run_seconds_mean: float
    """From start to end."""
    run_seconds_p99: float

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.cancelled + self.timed_out


class Job(Future[T]):
    """One coroutine run by an `AsyncWorkerPool`: an `asyncio.Future` for its result.

    Await it, or pass it to `asyncio.gather`, `asyncio.wait`, ... like any future. `cancel()`
    works as `asyncio.Task.cancel()` does: a pending job is dropped (its coroutine is closed,
    never started); a running one gets `CancelledError` at its current `await`, and only that
    coroutine, not the worker that runs it. As with a task, a caller cancelled while awaiting a
    job cancels the job (wrap it in `asyncio.shield()` to prevent that). A job that runs longer
    than the pool's `task_timeout` raises `TaskTimeoutError`.
    """

    # Set by spawn on every job. The flags further below are set on few jobs: they go to the
    # instance dict (made only then), with their defaults on the class.
    __slots__ = ("_coro", "_ctx", "_enqueued", "_holder", "_pool")

    _coro: Coroutine[Any, Any, T]
    _ctx: Context | None
    """The caller's context, or None when it was empty: the job then runs in its worker's."""
    _holder: AsyncWorkerPool | Task[None] | None
    """Who has the job: its pool while pending, a worker task while running, None if dropped."""
    _pool: AsyncWorkerPool
    _enqueued: float
    """When it was spawned, if its timings are sampled; else 0.0."""

    _timed_out: bool = False
    _claimed: bool = False
    """Its outcome will be read (by `map`): a failure is the reader's to see, not on_error's."""

    def cancel(self, msg: Any | None = None) -> bool:
        if self.done():
            return False
        holder, pool = self._holder, self._pool
        if holder is pool:
            pool._drop(self, msg)
        elif holder is not None and self not in pool._cancelling:
            # Running: cancel the worker task, which does what Task.cancel() does for a
            # coroutine; the worker tells this apart from a cancellation of its own.
            pool._cancelling.add(self)
            cast("Task[None]", holder).cancel(msg)
        return True

    def _describe(self) -> str:
        return f"{getattr(self._coro, '__qualname__', 'coroutine')}()"


_future_cancel = Future.cancel


@types.coroutine
def _drive(coro: Coroutine[Any, Any, Any], ctx: Context) -> Generator[Any, Any, Any]:
    """Runs `coro` with every step in `ctx`; the worker task that awaits this waits on what
    the coroutine yields, and throws into it what it is thrown (a cancellation, say)."""
    run = ctx.run
    send: Callable[[Any], Any] = coro.send
    throw: Callable[[BaseException], Any] = coro.throw
    step, arg = send, None
    while True:
        try:
            yielded = run(step, arg)
        except StopIteration as stop:
            return stop.value
        try:
            value = yield yielded
        except GeneratorExit:  # the worker task is being destroyed along with its loop
            run(coro.close)
            raise
        except BaseException as exc:
            step, arg = throw, exc
        else:
            step, arg = send, value


async def _consume_cancellation() -> None:
    """Takes the CancelledError that the current task will throw at its next step."""
    with suppress(CancelledError):
        await sleep(0)


def _check_count(name: str, value: object, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidTypeError(f"{name} must be an int >= {least}, got {type(value).__name__}")
    if value < least:
        raise InvalidArgumentError(f"{name} must be an int >= {least}, got {value}")
    return value


def _check_seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidTypeError(
            f"{name} must be a number of seconds or None, got {type(value).__name__}"
        )
    if not (value > 0 and math.isfinite(value)):
        raise InvalidArgumentError(
            f"{name} must be a positive number of seconds or None, got {value}"
        )
    return float(value)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _not_a_coroutine(value: object) -> InvalidTypeError:
    if callable(value):
        name = getattr(value, "__qualname__", type(value).__name__)
        return InvalidTypeError(
            f"spawn() takes a coroutine object, got the callable {name!r} itself; "
            f"call it: spawn({name}(...))"
        )
    return InvalidTypeError(
        f"spawn() takes a coroutine object (what calling an async function returns), "
        f"got {type(value).__name__}: {_shown(value)}"
    )


def _is_coroutine(value: object) -> bool:
    return value.__class__ is _CoroutineType or isinstance(value, Coroutine)


class AsyncWorkerPool:
    """Runs coroutines with bounded concurrency: `AsyncWorkerPool(limit=100, *,
    pending_limit=10_000, task_timeout=None, close_timeout=60.0, on_error=None)`.

    - `limit`: most jobs running at once (aiojobs' default, 100).
    - `pending_limit`: most jobs waiting for a slot, started in FIFO order (aiojobs' default,
      10 000); 0 for none. Beyond it `spawn` waits for room, or raises `QueueFullError` with
      `wait=False`.
    - `task_timeout`: seconds a job may run (time spent pending does not count). At the
      deadline its coroutine is cancelled and the job raises `helixrt.errors.TaskTimeoutError`,
      which is a `TimeoutError` and a `HelixError`. `None`, the default, for no limit.
    - `close_timeout`: seconds `close()` waits for running and pending jobs before it cancels
      them (aiojobs' default for its `wait_and_close`, 60); `None` waits as long as it takes.
    - `on_error(job, exc)`: called with the exception of a job that failed while nobody
      awaited it (no `await`, `gather`, `wait`, done callback, or `map` on it yet). Without
      it, such exceptions are logged to the `helixrt.pool` logger at ERROR with their
      traceback. The exception still reaches whoever awaits the job later.

    `spawn`, `run`, `map` and `close` are for coroutines; `async with pool:` closes the pool on
    exit. The pool is bound to the event loop it is first used on, and raises `WrongLoopError`
    when used from another: make one pool per loop. Only `stats()` may be called from another
    thread. The pool holds strong references to its workers and jobs, so a fire-and-forget job
    is never garbage-collected mid-run.

    Jobs run on the pool's worker tasks, so inside a job `asyncio.current_task()` is a worker;
    `asyncio.timeout()` and task groups work there as in any task. A job sees the context
    variables of the caller of `spawn`, as with `asyncio.create_task`, and the variables it
    sets are seen by no other job. Cancelling a worker task (asyncio.run does so when it ends)
    cancels the job it runs and stops that worker; when the last worker stops so, the pending
    jobs are cancelled too. A job that awaits another job of the same pool holds its slot while
    it waits: when every slot is held so, the pool deadlocks. Use a second pool for sub-jobs.
    """

    __slots__ = (
        "_cancelled",
        "_cancelling",
        "_capacity",
        "_close_timeout",
        "_closed",
        "_closing",
        "_completed",
        "_dropped",
        "_failed",
        "_free",
        "_limit",
        "_loop",
        "_on_error",
        "_pending",
        "_pending_limit",
        "_rejected",
        "_room_waiters",
        "_run_ring",
        "_sample_mask",
        "_samples",
        "_started",
        "_starting",
        "_submitted",
        "_task_timeout",
        "_timed_out",
        "_wait_ring",
        "_window_samples",
        "_window_start",
        "_woken",
        "_workers",
    )

    def __init__(
        self,
        limit: int = 100,
        *,
        pending_limit: int = 10_000,
        task_timeout: float | None = None,
        close_timeout: float | None = 60.0,
        on_error: Callable[[Job[Any], BaseException], object] | None = None,
    ) -> None:
        self._limit = _check_count("limit", limit, 1)
        self._pending_limit = _check_count("pending_limit", pending_limit, 0)
        self._capacity = self._limit + self._pending_limit
        # Slots left: capacity minus the jobs pending, running, and promised to woken room
        # waiters; lowered by _CLOSED on close, so that spawn needs one test on its fast path.
        self._free = self._capacity
        self._task_timeout = _check_seconds("task_timeout", task_timeout)
        self._close_timeout = _check_seconds("close_timeout", close_timeout)
        if on_error is not None and not callable(on_error):
            raise InvalidTypeError(
                f"on_error must be a callable (job, exception) or None, "
                f"got {type(on_error).__name__}"
            )
        self._on_error = on_error
        self._loop: AbstractEventLoop | None = None
        self._pending: deque[Job[Any]] = deque()  # FIFO; dropped jobs stay until popped
        self._room_waiters: deque[Future[None]] = deque()
        self._woken = 0  # room waiters woken but not yet resumed, each promised a slot
        self._workers: set[Task[None]] = set()
        self._starting = 0  # workers created that have not run yet
        self._cancelling: set[Job[Any]] = set()  # running jobs whose worker was cancelled
        self._closed = False
        self._closing: Future[None] | None = None
        # Counters; the gauges are computed from them (see _active_count, _pending_count).
        self._submitted = self._started = self._completed = self._failed = 0
        self._cancelled = self._dropped = self._timed_out = self._rejected = 0
        # Timings of sampled jobs: spawn times one job in `_sample_mask + 1`, a rate that
        # `_sample_clock` adapts. The rings keep the latest `_SAMPLES`.
        self._sample_mask = 0
        self._samples = 0
        self._window_samples = 0
        self._window_start = 0.0
        self._wait_ring = [0.0] * _SAMPLES
        self._run_ring = [0.0] * _SAMPLES

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def pending_limit(self) -> int:
        return self._pending_limit

    @property
    def task_timeout(self) -> float | None:
        return self._task_timeout

    @property
    def close_timeout(self) -> float | None:
        return self._close_timeout

    @property
    def closed(self) -> bool:
        """True once `close()` was called: the pool takes no more jobs."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<AsyncWorkerPool {state} limit={self._limit} active={self._active_count()} "
            f"pending={self._pending_count()}>"
        )

    async def spawn(self, coro: Coroutine[Any, Any, T], *, wait: bool = True) -> Job[T]:
        """Starts `coro` as a job (or queues it while `limit` jobs run) and returns its `Job`.

        When the pool holds `limit + pending_limit` jobs, waits for room (first come, first
        served), or raises `QueueFullError` at once with `wait=False`. Raises
        `PoolClosedError` once `close()` was called. A coroutine refused (or whose caller was
        cancelled while waiting) is closed, so it never warns "was never awaited": pass a new
        one to try again.
        """
        loop: AbstractEventLoop = self._loop  # type: ignore[assignment]
        try:  # on the loop that runs in this thread? Cheaper than get_running_loop()
            if loop._thread_id != _get_ident():  # type: ignore[attr-defined]
                loop = self._running_loop(coro)
        except AttributeError:  # not bound yet, or a loop without `_thread_id`
            loop = self._running_loop(coro)
        if coro.__class__ is not _CoroutineType and not isinstance(coro, Coroutine):
            raise _not_a_coroutine(coro)
        free = self._free
        if free > 0:  # nobody waits for room, then: they would have taken it
            self._free = free - 1
        else:
            await self._wait_for_room(loop, coro, wait)
        job: Job[T] = Job(loop=loop)
        job._coro = coro
        job._pool = job._holder = self
        job._ctx = copy_context() or None  # an empty context: run in the worker's
        submitted = self._submitted = self._submitted + 1
        job._enqueued = 0.0 if submitted & self._sample_mask else self._sample_clock()
        self._pending.append(job)
        if not self._starting and len(self._workers) < self._limit:
            self._start_worker(loop)  # a worker about to start adds more as it sees the need
        return job

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Spawns `coro` (waiting for room if need be) and returns its result or raises its
        exception. Cancelling the caller cancels the job."""
        job = await self.spawn(coro)
        return await job

    def map(
        self,
        fn: Callable[[A], Coroutine[Any, Any, T]],
        iterable: Iterable[A],
        *,
        buffersize: int | None = None,
    ) -> AsyncIterator[T]:
        """Yields the result of `fn(item)` for each item, in the order of `iterable`, with up
        to `buffersize` (default: `limit`) jobs spawned ahead on the pool.

        Items are taken from `iterable` only as results are consumed, so an endless iterable
        is fine. The first exception raised by a job is raised here, and the jobs spawned
        ahead of it are cancelled, as they are when the iteration stops early (close the
        iterator, e.g. with `contextlib.aclosing`, to have that happen at once).
        """
        if not callable(fn):
            raise InvalidTypeError(
                f"map() takes an async function, got {type(fn).__name__}: {_shown(fn)}"
            )
        ahead = self._limit if buffersize is None else _check_count("buffersize", buffersize, 1)
        return self._map(fn, iter(iterable), ahead)

    async def close(self) -> None:
        """Stops taking jobs, waits up to `close_timeout` for the running and pending ones,
        then cancels what is left and waits (up to a second) for it to unwind. Idempotent: a
        later call waits for the first one to finish.

        Called from inside one of the pool's jobs, it does not wait for that job. Cancelling
        the caller of `close()` cancels the remaining jobs at once.
        """
        loop = self._running_loop()
        if self._closing is not None:
            await shield(self._closing)
            return
        self._closed = True
        self._free -= _CLOSED  # every spawn now takes the slow path, which refuses it
        self._closing = closing = loop.create_future()
        self._wake_all_room_waiters()
        try:
            if not await self._wait_for_workers(self._close_timeout):
                self._cancel_all("the pool was closed")
                if not await self._wait_for_workers(_CANCEL_GRACE):
                    _log.warning(
                        "close(): %d jobs still running %s s after being cancelled",
                        self._active_count(),
                        _CANCEL_GRACE,
                    )
        finally:
            self._cancel_all("the pool was closed")  # if close() itself was cancelled
            closing.set_result(None)

    async def __aenter__(self) -> Self:
        self._running_loop()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def stats(self) -> AsyncPoolStats:
        taken = min(self._samples, _SAMPLES)
        waits, runs = self._wait_ring[:taken], self._run_ring[:taken]
        return AsyncPoolStats(
            submitted=self._submitted,
            completed=self._completed,
            failed=self._failed,
            cancelled=self._cancelled,
            timed_out=self._timed_out,
            rejected=self._rejected,
            active=self._active_count(),
            pending=self._pending_count(),
            queue_wait_seconds_mean=mean(waits),
            queue_wait_seconds_p99=p99(waits),
            run_seconds_mean=mean(runs),
            run_seconds_p99=p99(runs),
        )

    # The workers. `_work` is the path every job takes: kept in one piece, on purpose.

    def _start_worker(self, loop: AbstractEventLoop) -> None:
        context = Context()  # empty, as the context of every job that runs inline is
        itself: list[Task[None]] = []  # current_task() would cost more
        worker = loop.create_task(self._work(context, itself), context=context)
        itself.append(worker)
        self._workers.add(worker)
        self._starting += 1
        worker.add_done_callback(self._worker_done)

    def _add_workers(self) -> None:
        """Called by a worker as it starts: adds up to two workers for the pending jobs that
        neither it nor the other starting workers will take. Growing so, a burst of jobs that
        suspend gets `limit` workers in a few loop iterations, and a burst of jobs that do not
        (which one worker runs in one go) does not make `limit` tasks for nothing."""
        uncovered = self._pending_count() - self._starting - 1
        room = self._limit - len(self._workers)
        loop = self._loop
        assert loop is not None
        for _ in range(min(uncovered, room, 2)):
            self._start_worker(loop)

    async def _work(self, context: Context, itself: list[Task[None]]) -> None:
        """Runs pending jobs until there are none left (and none come in the next loop
        iteration), then ends."""
        worker = itself[0]
        self._starting -= 1
        self._add_workers()
        pending, cancelling = self._pending, self._cancelling
        timeout, loop = self._task_timeout, self._loop
        assert loop is not None
        job: Job[Any] | None = None  # the job being run, for the finally clause
        stopped = True
        try:
            while True:
                while pending:
                    job = pending.popleft()
                    if job._holder is not self:  # dropped while pending
                        job = None
                        continue
                    job._holder = worker
                    self._started += 1
                    enqueued = job._enqueued  # 0.0 unless this job is timed
                    if enqueued:
                        started = _now()
                    ctx = job._ctx
                    timer = None if timeout is None else loop.call_later(timeout, self._expire, job)
                    try:
                        result = await (job._coro if ctx is None else _drive(job._coro, ctx))
                    except BaseException as exc:
                        if timer is not None:
                            timer.cancel()
                        if cancelling and job in cancelling:
                            await self._release(job, worker)
                        self._end_with(job, exc, worker)  # re-raises what stops the worker
                    else:
                        if timer is not None:
                            timer.cancel()
                        if cancelling and job in cancelling and await self._release(job, worker):
                            self._end_cancelled(job, None)  # as a task cancelled as it returned
                        else:
                            job.set_result(result)
                            self._completed += 1
                    if enqueued:
                        self._sample(enqueued, started)
                    self._free += 1
                    job = None
                    if self._room_waiters:
                        self._wake_room_waiters()
                    if context:  # the job set a context variable: no other job may see it
                        stopped = False
                        return
                # Out of work. Linger for one loop iteration, counted as a starting worker:
                # a caller awaiting each job before it spawns the next then reuses this task.
                self._starting += 1
                try:
                    await sleep(0)
                finally:
                    self._starting -= 1
                if not pending:
                    stopped = False
                    return
                self._add_workers()
        finally:
            self._worker_ended(worker, job, stopped)

    async def _release(self, job: Job[Any], worker: Task[None]) -> bool:
        """Undoes the worker cancellation that cancelled `job`; True if it never reached the
        job's coroutine (which returned or raised first)."""
        self._cancelling.discard(job)
        undelivered: bool = worker._must_cancel  # type: ignore[attr-defined]
        if undelivered:
            await _consume_cancellation()
        worker.uncancel()
        if undelivered and worker.cancelling():
            # The worker was cancelled too, and the error consumed was also that one's: give
            # it back, for the worker's next await.
            worker.uncancel()
            worker.cancel()
        return undelivered

    def _sample_clock(self) -> float:
        """The time, for a job whose timings are sampled. Every `_RATE_WINDOW` samples, halves
        the sampling rate if they came faster than 1000 a second, or doubles it if slower
        than 100 a second, up to every job."""
        now = _now()
        self._window_samples += 1
        if self._window_samples == _RATE_WINDOW:
            took = now - self._window_start
            mask = self._sample_mask
            if took < _RATE_WINDOW / 1000:
                self._sample_mask = min(mask * 2 + 1, _MAX_SAMPLE_MASK)
            elif took > _RATE_WINDOW / 100:
                self._sample_mask = mask >> 1
            self._window_samples = 0
            self._window_start = now
        return now

    def _sample(self, enqueued: float, started: float) -> None:
        index = self._samples & (_SAMPLES - 1)
        self._wait_ring[index] = started - enqueued
        self._run_ring[index] = _now() - started
        self._samples += 1

    def _end_with(self, job: Job[Any], exc: BaseException, worker: Task[None]) -> None:
        """Records a job that raised `exc`; re-raises what must stop the worker too."""
        if isinstance(exc, CancelledError):
            stopping = worker.cancelling() > 0  # someone cancelled the worker task itself
            if job._timed_out and not stopping:
                self._timed_out += 1
                error = TaskTimeoutError(
                    f"job {job._describe()} ran longer than task_timeout="
                    f"{self._task_timeout:g} s and was cancelled"
                )
                error.__cause__ = exc
                self._set_exception(job, error)
            else:
                self._end_cancelled(job, exc)
            if stopping:
                raise exc
            return
        self._failed += 1
        self._set_exception(job, exc)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise exc  # as in asyncio.Task: these stop the loop

    def _end_cancelled(self, job: Job[Any], exc: CancelledError | None) -> None:
        self._cancelled += 1
        _future_cancel(job, exc.args[0] if exc is not None and exc.args else None)

    def _set_exception(self, job: Job[Any], exc: BaseException) -> None:
        unseen = not job._claimed and not job._callbacks  # nobody awaits it: report it
        job.set_exception(exc)
        if unseen:
            job.exception()  # retrieved: asyncio will not log "exception was never retrieved"
            self._report(job, exc)

    def _report(self, job: Job[Any], exc: BaseException) -> None:
        handler = self._on_error
        if handler is None:
            _log.error("job %s failed and nobody awaited it", job._describe(), exc_info=exc)
            return
        try:
            handler(job, exc)
        except Exception:
            _log.exception("the on_error handler %r failed on %r", handler, exc)

    def _expire(self, job: Job[Any]) -> None:
        job._timed_out = True  # still running: the timer is cancelled as soon as it ends
        job.cancel("task_timeout")

    def _worker_ended(self, worker: Task[None], job: Job[Any] | None, stopped: bool) -> None:
        self._workers.discard(worker)
        if job is not None:  # stopped mid-job; _end_with has recorded how the job ended
            self._free += 1
        if self._pending_count():
            if not stopped:  # retired: a fresh worker takes over
                loop = self._loop
                assert loop is not None
                self._start_worker(loop)
            elif not self._workers:
                # The last worker was cancelled (the loop is ending, or someone cancelled it):
                # nothing would run these jobs, and their callers must not wait forever.
                self._drop_pending("the pool's workers were cancelled")
        if self._room_waiters:
            self._wake_room_waiters()

    def _worker_done(self, worker: Task[None]) -> None:
        if worker in self._workers:  # cancelled before it started: _work never ran
            self._workers.discard(worker)
            self._starting -= 1
            if not self._workers and self._pending_count():
                self._drop_pending("the pool's workers were cancelled")

    async def _map(
        self, fn: Callable[[A], Coroutine[Any, Any, T]], items: Iterator[A], ahead: int
    ) -> AsyncIterator[T]:
        window: deque[Job[T]] = deque()
        try:
            for item in items:
                coro = fn(item)
                if not _is_coroutine(coro):
                    raise InvalidTypeError(
                        f"map() takes an async function; {_shown(fn)} returned "
                        f"{type(coro).__name__}: {_shown(coro)}"
                    )
                job = await self.spawn(coro)
                job._claimed = True
                window.append(job)
                if len(window) >= ahead:
                    yield await window.popleft()
            while window:
                yield await window.popleft()
        finally:
            for job in window:
                job.cancel()

    # Pending jobs and room.

    def _drop(self, job: Job[Any], msg: Any) -> None:
        """Cancels a pending job; it stays in the deque, where the workers skip it."""
        job._holder = None
        job._coro.close()  # never started: closed, it does not warn "was never awaited"
        self._free += 1
        self._cancelled += 1
        self._dropped += 1
        _future_cancel(job, msg)
        if self._room_waiters:
            self._wake_room_waiters()

    def _drop_pending(self, msg: str) -> None:
        pending = self._pending
        while pending:
            job = pending.popleft()
            if job._holder is self:
                self._drop(job, msg)

    async def _wait_for_room(
        self, loop: AbstractEventLoop, coro: Coroutine[Any, Any, Any], wait: bool
    ) -> None:
        """Refuses `coro`, or waits in line for a free slot. A woken waiter is promised its
        slot (taken from `_free` when woken), so nobody can take it before it resumes."""
        if self._closed:
            raise self._refuse(coro, _closed_error())
        if not wait:
            raise self._refuse(coro, self._full_error())
        waiter: Future[None] = loop.create_future()
        self._room_waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.cancelled():  # still in line, unless a waker skipped it already
                with suppress(ValueError):
                    self._room_waiters.remove(waiter)
            else:  # woken, then cancelled before it could run: pass the slot on
                self._woken -= 1
                self._free += 1
                self._wake_room_waiters()
            coro.close()
            raise
        self._woken -= 1
        if self._closed:
            self._free += 1
            raise self._refuse(coro, _closed_error())

    def _wake_room_waiters(self) -> None:
        waiters = self._room_waiters
        while waiters and self._free > 0:
            waiter = waiters.popleft()
            if not waiter.done():  # else cancelled, its spawn not yet resumed to leave
                waiter.set_result(None)
                self._free -= 1
                self._woken += 1

    def _wake_all_room_waiters(self) -> None:
        waiters = self._room_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._free -= 1
                self._woken += 1

    def _pending_count(self) -> int:
        return self._submitted - self._started - self._dropped

    def _active_count(self) -> int:
        ended = self._completed + self._failed + self._timed_out + self._cancelled
        return self._started - (ended - self._dropped)

    def _refuse(self, coro: Coroutine[Any, Any, Any], error: HelixError) -> HelixError:
        self._rejected += 1
        coro.close()
        return error

    def _full_error(self) -> QueueFullError:
        return QueueFullError(
            f"the pool is full: {self._active_count()} jobs running and "
            f"{self._pending_count()} pending "
            f"(limit={self._limit}, pending_limit={self._pending_limit}); "
            f"without wait=False, spawn() waits for room"
        )

    # Binding and closing.

    def _running_loop(self, refused: Coroutine[Any, Any, Any] | None = None) -> AbstractEventLoop:
        """The running loop, which the pool is bound to from its first use on; `refused` is
        closed if it is not the pool's."""
        loop = get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            if refused is not None and _is_coroutine(refused):
                refused.close()
            raise WrongLoopError(
                f"this AsyncWorkerPool is bound to the event loop it was first used on "
                f"({self._loop!r}), not to the running one ({loop!r}); make one pool per loop"
            )
        return loop

    async def _wait_for_workers(self, timeout: float | None) -> bool:
        """Waits until every worker but the caller's own has ended (those started meanwhile
        too); False on timeout."""
        me = current_task()
        loop = self._loop
        assert loop is not None
        deadline = None if timeout is None else loop.time() + timeout
        while others := [worker for worker in self._workers if worker is not me]:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            await wait_for_all(others, timeout=left)
        return True

    def _cancel_all(self, msg: str) -> None:
        """Drops the pending jobs, and cancels the workers (but the caller's own) and so the
        jobs they run."""
        self._drop_pending(msg)
        me = current_task()
        for worker in self._workers:
            if worker is not me:
                worker.cancel(msg)


def _closed_error() -> PoolClosedError:
    return PoolClosedError("the pool is closed: it accepts no new jobs")
