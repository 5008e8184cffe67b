"""Lazy providers: `Lazy`, a value created on first use, once, safely.

`Lazy(factory)` calls `factory()` the first time `get()` (a plain factory) or `await aget()`
(an async one) is called, and hands every later caller the same object. Many threads or tasks
asking at once share one call of the factory. A failure is not kept (unless `failure_ttl` says
for how long), an optional `RetryPolicy` retries the factory, and an async initialisation
survives the cancellation of the caller that started it. After initialisation `get()` costs an
attribute read and a comparison (within 2x of a `functools.cached_property` read).

It does not close what it created (no `close()`): the value is the caller's to manage.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from helixrt.errors import HelixError, InvalidArgumentError, InvalidTypeError
from helixrt.retries import RetryPolicy, _Retrier

if TYPE_CHECKING:
    import asyncio

__all__ = ["Lazy"]

T = TypeVar("T")


class LazyReentryError(HelixError, RuntimeError):
    """A `Lazy` was asked for its value from inside its own factory (which would deadlock)."""


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()
# The outcome of an initialisation that ended without a value or an error to share (it was
# interrupted or cancelled): whoever waited for it starts a new one.
_RESTART: Any = _Unset()

# The clock and the sleeps, looked up on every use so that tests can replace them
# (monkeypatch this module's `_clock`, `_sleep` and `_async_sleep`).
_clock = time.monotonic
_sleep = time.sleep


async def _async_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


# The initialisations running in this context (this thread's call stack, or this task and the
# tasks it created): asking one of them for its value again is a reentry, not a wait.
_ACTIVE: ContextVar[tuple[_Init, ...]] = ContextVar("helixrt.lazy.active", default=())

# Strong references to the running initialisation tasks (the event loop keeps weak ones only).
_TASKS: set[asyncio.Task[None]] = set()


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A cancelled caller no longer looks at its waiter's error: mark it seen, or asyncio
    # reports "Future exception was never retrieved".
    if not future.cancelled():
        future.exception()


class _Init:
    """One run of the factory (with its retries), and how its waiters learn the outcome."""

    __slots__ = ("future", "loop", "task", "thread")

    def __init__(self) -> None:
        # Set once, with the value, the error, or _RESTART: thread-safe and awaitable from any
        # event loop (through asyncio.wrap_future).
        self.future: Future[Any] = Future()
        self.thread = threading.get_ident()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None


def _name_of(factory: Callable[..., object]) -> str:
    name = getattr(factory, "__qualname__", None)
    if not isinstance(name, str):
        return repr(factory)
    module = getattr(factory, "__module__", None)
    return f"{module}.{name}" if isinstance(module, str) and module != "builtins" else name


def _is_async_callable(factory: Callable[..., object]) -> bool:
    return inspect.iscoroutinefunction(factory) or inspect.iscoroutinefunction(
        getattr(factory, "__call__", None)  # noqa: B004 - an instance with `async def __call__`
    )


class Lazy(Generic[T]):
    """`Lazy(factory, *, retry=None, failure_ttl=0.0)`: a value created by `factory()` on first
    use, once.

    - `get()` returns the value of a plain factory, calling it if need be; `await aget()` does
      the same for an async one: a coroutine function, or a function returning an awaitable.
      `get()` on an async factory raises `InvalidTypeError` (so does `get()` when a plain
      factory returns an awaitable: use `aget()`). `aget()` also takes a plain factory: it
      calls it directly on the event loop's thread (so keep it quick; retry waits are
      `asyncio.sleep`s), and shares the value with `get()`.
    - Once: many threads (`get`) or tasks (`aget`) asking at once share one call of the
      factory and all get the same object; the others wait (threads block, tasks await).
    - `retry`: a `RetryPolicy`; one `get()`/`aget()` then retries the factory as the policy
      says (its `retry_on`, backoff, `max_attempts` and `total_timeout`), sleeping with
      `time.sleep` (get) or `asyncio.sleep` (aget). The last error propagates as itself.
    - `failure_ttl`: seconds a failure is remembered. While it is, `get()`/`aget()` raise that
      same exception object at once, without calling the factory; 0 (the default, as in the
      original, which never cached failures) means the next call tries again. Callers that
      waited for the failed initialisation all get its error, whatever the ttl. Only an
      `Exception` is shared or kept: an interrupt or a cancellation of the initialisation
      lets the next caller start again.
    - Cancellation: an async initialisation runs in a task of its own, shielded from its
      callers. Cancelling the caller that started it cancels that caller's wait only: the
      factory runs on and the other waiters (and later callers) get its value.
    - `reset()` forgets the value and any remembered failure (an initialisation running at
      that moment still stores its value when it ends); `initialized` says whether there is a
      value.
    - Reentry: asking a `Lazy` for its value from inside its own factory (in the same thread
      for `get`, the same task or a task it created for `aget`) raises `LazyReentryError`
      naming the factory, instead of deadlocking.

    Thread-safe. Not bound to an event loop: callers on the loop that started an async
    initialisation, on another loop, or in another thread (`get()`, for a factory that
    returned an awaitable) all wait for that one initialisation; it finishes only while its
    loop runs. `get()` on the thread of the loop running the initialisation raises
    `LazyReentryError` (it could only deadlock).
    """

    __slots__ = (
        "__weakref__",
        "_avalue",
        "_error",
        "_error_until",
        "_factory",
        "_failure_ttl",
        "_init",
        "_is_async",
        "_lock",
        "_name",
        "_retry",
        "_value",
    )

    # `_value` is what `get()` returns (set only for a plain factory); `_avalue` is what
    # `aget()` returns (set for every factory).
    _value: T
    _avalue: T

    @overload
    def __init__(
        self: Lazy[T],
        factory: Callable[[], Awaitable[T]],
        *,
        retry: RetryPolicy | None = None,
        failure_ttl: float = 0.0,
    ) -> None: ...

    @overload
    def __init__(
        self: Lazy[T],
        factory: Callable[[], T],
        *,
        retry: RetryPolicy | None = None,
        failure_ttl: float = 0.0,
    ) -> None: ...

    def __init__(
        self,
        factory: Callable[[], Any],
        *,
        retry: RetryPolicy | None = None,
        failure_ttl: float = 0.0,
    ) -> None:
        if not callable(factory):
            raise InvalidTypeError(
                f"factory must be a callable taking no arguments (a function, an async "
                f"function, a class), got {factory!r}"
            )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidTypeError(f"retry must be a helixrt.RetryPolicy or None, got {retry!r}")
        if (
            isinstance(failure_ttl, bool)
            or not isinstance(failure_ttl, int | float)
            or not failure_ttl >= 0  # also refuses NaN
            or failure_ttl == float("inf")
        ):
            raise InvalidArgumentError(
                f"failure_ttl must be a finite number of seconds >= 0 (0: failures are not "
                f"cached), got {failure_ttl!r}"
            )
        self._factory = factory
        self._name = _name_of(factory)
        self._is_async = _is_async_callable(factory)
        self._retry = retry
        self._failure_ttl = float(failure_ttl)
        self._lock = threading.Lock()
        self._init: _Init | None = None
        self._error: Exception | None = None
        self._error_until = 0.0
        self._value = _UNSET
        self._avalue = _UNSET

    # --- the hot paths ------------------------------------------------------------------------

    def get(self) -> T:
        """The value, created by calling the (plain) factory if there is none yet."""
        value = self._value
        if value is not _UNSET:
            return value
        return self._get_slow()

    async def aget(self) -> T:
        """The value, created by awaiting the factory if there is none yet."""
        value = self._avalue
        if value is not _UNSET:
            return value
        return await self._aget_slow()

    # --- state --------------------------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        """Whether there is a value (`get()`/`aget()` will return it without a call)."""
        return self._avalue is not _UNSET

    @property
    def factory(self) -> Callable[[], Any]:
        return self._factory

    def reset(self) -> None:
        """Forgets the value and any remembered failure: the next call creates it again."""
        with self._lock:
            self._value = _UNSET
            self._avalue = _UNSET
            self._error = None

    def __repr__(self) -> str:
        return f"Lazy({self._name}, initialized={self.initialized})"

    # --- the slow paths -----------------------------------------------------------------------

    def _get_slow(self) -> T:
        while True:
            if self._is_async:
                raise InvalidTypeError(
                    f"Lazy({self._name}) has an async factory: use `await lazy.aget()`, "
                    f"not lazy.get()"
                )
            mine = False
            with self._lock:
                value = self._value
                if value is not _UNSET:
                    return value
                self._raise_remembered_failure()
                init = self._init
                if init is None:
                    init = self._init = _Init()
                    mine = True
                else:
                    self._check_reentry(init, sync=True)
            if mine:
                return self._run_sync(init)
            outcome = init.future.result()  # blocks; raises the initialisation's error
            if outcome is not _RESTART:
                return cast(T, outcome)

    async def _aget_slow(self) -> T:
        import asyncio

        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                value = self._avalue
                if value is not _UNSET:
                    return value
                self._raise_remembered_failure()
                init = self._init
                if init is None:
                    init = self._init = _Init()
                    init.loop = loop
                    init.task = task = loop.create_task(self._run_async(init))
                    _TASKS.add(task)
                    task.add_done_callback(_TASKS.discard)
                else:
                    self._check_reentry(init, sync=False)
            # The shield: cancelling this caller cancels its wait, never the initialisation.
            waiter = asyncio.wrap_future(init.future, loop=loop)
            waiter.add_done_callback(_retrieve)
            outcome = await asyncio.shield(waiter)
            if outcome is not _RESTART:
                return cast(T, outcome)

    def _raise_remembered_failure(self) -> None:
        # Called with the lock held.
        error = self._error
        if error is not None:
            if _clock() < self._error_until:
                raise error
            self._error = None

    def _check_reentry(self, init: _Init, *, sync: bool) -> None:
        # Called with the lock held, when an initialisation is running and we would wait for it.
        if init in _ACTIVE.get() or (init.task is None and init.thread == threading.get_ident()):
            raise LazyReentryError(
                f"Lazy({self._name}) was asked for its value from inside its own factory "
                f"({self._name}), which would wait for itself forever"
            )
        if sync and init.task is not None and init.thread == threading.get_ident():
            raise LazyReentryError(
                f"Lazy({self._name}).get() was called on the thread of the event loop that "
                f"runs its initialisation, which would block that loop forever: use aget()"
            )

    def _finish(self, init: _Init, outcome: Any, error: Exception | None = None) -> None:
        with self._lock:
            if self._init is init:
                self._init = None
            if error is not None:
                if self._failure_ttl > 0:
                    self._error = error
                    self._error_until = _clock() + self._failure_ttl
            elif outcome is not _RESTART:
                self._error = None
                self._avalue = outcome
                if not self._is_async:
                    self._value = outcome
        if error is not None:
            init.future.set_exception(error)
        else:
            init.future.set_result(outcome)

    def _run_sync(self, init: _Init) -> T:
        token = _ACTIVE.set((*_ACTIVE.get(), init))
        try:
            value = self._call_sync()
        except Exception as error:
            self._finish(init, None, error)
            raise
        except BaseException:
            self._finish(init, _RESTART)
            raise
        finally:
            _ACTIVE.reset(token)
        self._finish(init, value)
        return value

    async def _run_async(self, init: _Init) -> None:
        # The task has a copy of its creator's context: this does not leak to the caller.
        _ACTIVE.set((*_ACTIVE.get(), init))
        try:
            value = await self._call_async()
        except Exception as error:
            # Handed to the waiters through init.future: the task itself ends without an
            # exception, so there is no "Task exception was never retrieved".
            self._finish(init, None, error)
            return
        except BaseException:
            self._finish(init, _RESTART)
            raise
        self._finish(init, value)

    def _call_sync(self) -> T:
        factory, policy = self._factory, self._retry
        retrier = None if policy is None else _Retrier(policy, None, self._name)
        deadline = None if retrier is None else retrier.deadline()
        attempt = 1
        while True:
            try:
                result = factory()
            except Exception as exc:
                delay = None if retrier is None else retrier.next_delay(exc, attempt, deadline)
                if delay is None:
                    raise
            else:
                if inspect.isawaitable(result):
                    self._is_async = True
                    close = getattr(result, "close", None)
                    if callable(close):  # a coroutine: no "never awaited" warning
                        close()
                    raise InvalidTypeError(
                        f"the factory of Lazy({self._name}) returned an awaitable "
                        f"({type(result).__name__}): use `await lazy.aget()`, not lazy.get()"
                    )
                return cast(T, result)
            # Out of the except block: the next attempt's error must not chain to this one.
            _sleep(delay)
            attempt += 1

    async def _call_async(self) -> T:
        factory, policy = self._factory, self._retry
        retrier = None if policy is None else _Retrier(policy, None, self._name)
        deadline = None if retrier is None else retrier.deadline()
        attempt = 1
        while True:
            try:
                result = factory()
                if inspect.isawaitable(result):
                    self._is_async = True
                    result = await result
                return cast(T, result)
            except Exception as exc:
                delay = None if retrier is None else retrier.next_delay(exc, attempt, deadline)
                if delay is None:
                    raise
            await _async_sleep(delay)
            attempt += 1
