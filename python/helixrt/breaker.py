"""The circuit breaker: fail fast while a dependency is down, then probe it carefully.

`CircuitBreaker` is the Rust state machine (`helixrt._core.CircuitBreaker`) with the Python
ways to use it added: `with breaker:`, `async with breaker:`, `@breaker` on plain and async
functions, `breaker.call(fn, *args)`, and listeners on state changes. It does not retry (see
`helixrt.retry`) and does not time calls out (slow calls can count as failures).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from helixrt import _core

__all__ = ["BreakerStats", "CircuitBreaker"]

logger = logging.getLogger("helixrt.breaker")

P = ParamSpec("P")
R = TypeVar("R")

Listener = Callable[["CircuitBreaker", str, str], object]


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A snapshot of a breaker's counters (monotonic) and its state."""

    calls: int
    successes: int
    failures: int
    rejected: int
    state_changes: int
    state: str


def _announcer(bus: Any) -> Listener:
    from helixrt import topics

    def announce(breaker: CircuitBreaker, old: str, new: str) -> None:
        payload = {"breaker": breaker.name, "old": old, "new": new}
        bus.publish(topics.BREAKER_STATE_CHANGED, payload, source="circuit_breaker")

    return announce


class CircuitBreaker(_core.CircuitBreaker):
    """`CircuitBreaker(name="default", *, failure_threshold=5, success_threshold=2,
    reset_timeout=30.0, half_open_max_calls=3, failure_rate=None, window=100, min_calls=20,
    slow_call_duration=None, exclude=(), bus=None)`

    Closed, it lets calls through and opens after `failure_threshold` consecutive failures
    (the original's defaults: 5 failures, 30 s, 2 successes) or, with `failure_rate` (0-1),
    when that share of the last `window` calls (at least `min_calls`) failed. Open, it refuses
    calls with `CircuitOpenError` (carrying `retry_after`) for `reset_timeout` seconds, then
    lets `half_open_max_calls` trial calls through at once: `success_threshold` successes close
    it, one failure opens it again. A call's outcome counts in the state it started in only.

    A failure is an `Exception` not in `exclude` (excluded ones count as successes: the callee
    answered), or a call slower than `slow_call_duration`. A `BaseException` that is not an
    `Exception` (a cancellation, KeyboardInterrupt) does not count either way.

    With a `bus` (an EventBus), each change of state is published on
    `breaker.state.changed` with the breaker's name and the old and new states.

    Thread-safe and usable from any event loop.
    """

    def __new__(
        cls,
        name: str = "default",
        *,
        failure_threshold: int = 5,
        success_threshold: int = 2,
        reset_timeout: float = 30.0,
        half_open_max_calls: int = 3,
        failure_rate: float | None = None,
        window: int = 100,
        min_calls: int = 20,
        slow_call_duration: float | None = None,
        exclude: Iterable[type[BaseException]] = (),
        bus: Any = None,
        _manual_clock: bool = False,
    ) -> CircuitBreaker:
        excluded = tuple(exclude)
        for kind in excluded:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                from helixrt.errors import InvalidTypeError

                raise InvalidTypeError(f"exclude must hold exception classes, got {kind!r}")
        listeners: list[Listener] = []
        holder: list[CircuitBreaker] = []

        def on_change(old: str, new: str) -> None:
            breaker = holder[0]
            logger.info("circuit breaker %r: %s -> %s", breaker.name, old, new)
            for listener in list(listeners):
                try:
                    listener(breaker, old, new)
                except Exception:
                    logger.exception("a listener of circuit breaker %r failed", breaker.name)

        self = super().__new__(
            cls,
            name,
            failure_threshold,
            success_threshold,
            reset_timeout,
            half_open_max_calls,
            failure_rate,
            window,
            min_calls,
            slow_call_duration,
            excluded,
            on_change,
            _manual_clock,
        )
        holder.append(self)
        if bus is not None:
            listeners.append(_announcer(bus))
        self._listeners = listeners
        self._permits = ContextVar(f"helixrt.breaker.{name}")
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ did the work

    _listeners: list[Listener]
    _permits: ContextVar[list[Any]]

    def add_listener(self, listener: Listener) -> None:
        """Calls `listener(breaker, old_state, new_state)` after each change of state."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def stats(self) -> BreakerStats:
        return BreakerStats(*self._stats(), state=self.state)

    # --- with / async with ------------------------------------------------------------------

    def __enter__(self) -> CircuitBreaker:
        # The permit lives in a context variable: concurrent threads and tasks, and nested
        # `with` blocks, each find their own in __exit__.
        entry: list[Any] = [self._acquire(), None]
        entry[1] = self._permits.set(entry)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        permit, token = self._permits.get()
        self._permits.reset(token)
        self._record(permit, error)

    async def __aenter__(self) -> CircuitBreaker:
        return self.__enter__()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(kind, error, traceback)

    # --- @breaker ---------------------------------------------------------------------------

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorates a plain or async function: each call goes through the breaker."""
        if inspect.iscoroutinefunction(fn):
            return cast(Callable[P, R], self._wrap_async(cast(Any, fn)))
        # A Rust callable: the call and the breaker's bookkeeping cost no Python frame.
        guarded = self._guard(fn)
        functools.update_wrapper(guarded, fn)
        return cast(Callable[P, R], guarded)

    def _wrap_async(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        acquire, record = self._acquire, self._record

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            permit = acquire()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as error:
                record(permit, error)
                raise
            record(permit, None)
            return result

        wrapper.breaker = self  # type: ignore[attr-defined]
        return wrapper

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state!r})"
