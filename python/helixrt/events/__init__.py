"""The event bus: async pub/sub between components, with NATS-style wildcard topics.

`EventBus.publish(topic, payload)` routes in Rust (a token trie with `*` and `>` slots and a
cache of literal-topic results), puts the event in each matching subscriber's bounded mailbox
and returns at once. Plain-function handlers run on the bus's dispatcher threads; coroutine
handlers and `async for` readers run on the event loop that subscribed them. A slow subscriber
fills its own mailbox only; its `on_full` policy says what happens then.

`RedisBridge` (in `helixrt.events.bridge`) joins buses across processes through Redis;
`sse_handler` (in `helixrt.events.sse`) streams events to HTTP clients as Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self

from helixrt import _core, topics
from helixrt.errors import (
    BusClosedError,
    EventTimeoutError,
    InvalidArgumentError,
    InvalidTypeError,
)

if TYPE_CHECKING:
    from types import TracebackType

    from helixrt.events.bridge import RedisBridge
    from helixrt.events.sse import sse_handler

__all__ = [
    "BusStats",
    "Event",
    "EventBus",
    "RedisBridge",
    "Subscription",
    "SubscriptionStats",
    "current_trace_id",
    "sse_handler",
    "trace_context",
]

log = logging.getLogger("helixrt.events")

Event = _core.Event
OnFull = Literal["drop_oldest", "drop_newest", "block"]
Handler = Callable[[_core.Event], Any]
Filter = Callable[[_core.Event], bool]

# Events one coroutine consumer takes from its mailbox at a time.
_BATCH = 64

_TRACE_ID: contextvars.ContextVar[str | None] = _core.trace_id_var()


def current_trace_id() -> str | None:
    """The trace id events published here now carry, or None."""
    return _TRACE_ID.get(None)


@contextmanager
def trace_context(trace_id: str | None = None) -> Iterator[str]:
    """Events published inside the block (from this thread or task) carry `trace_id`; a new
    random one when None. Nests, and follows asyncio tasks created inside it."""
    if trace_id is None:
        trace_id = uuid.uuid4().hex
    elif not isinstance(trace_id, str):
        raise InvalidTypeError(f"trace_id must be a str or None, got {type(trace_id).__name__}")
    token = _TRACE_ID.set(trace_id)
    try:
        yield trace_id
    finally:
        _TRACE_ID.reset(token)


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    """One subscription's counters: events handed to it, events its full mailbox dropped (or
    still pending when it ended), and events waiting now."""

    delivered: int
    dropped: int
    pending: int


@dataclass(frozen=True, slots=True)
class BusStats:
    """A snapshot of an EventBus: counters since it was made, and gauges."""

    published: int
    delivered: int
    dropped: int
    dropped_by_subscriber: dict[int, int]
    """Drops of each active subscription, by subscription id."""
    subscribers_active: int
    subscribers_total: int
    lag: float
    """Seconds the oldest event still pending in any mailbox has waited (0 when none)."""


def _wake_later(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _waker(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> Callable[[], None]:
    """What a publisher calls (once) to wake a reader parked on `loop`."""
    thread = threading.get_ident()

    def wake() -> None:
        if threading.get_ident() == thread:
            _wake_later(future)
            return
        with suppress(RuntimeError):  # the loop is closed: nobody waits on it any more
            loop.call_soon_threadsafe(_wake_later, future)

    return wake


class Subscription:
    """A pattern's subscription on an EventBus. Ends with `unsubscribe()` (or as a context
    manager); without a handler, read it with `async for event in sub` or `await sub.get()`."""

    __slots__ = ("__weakref__", "_bus", "_core", "_task", "handler")

    def __init__(self, bus: EventBus, core: _core.Subscription, handler: Handler | None) -> None:
        self._bus = bus
        self._core = core
        self._task: asyncio.Task[None] | None = None
        self.handler = handler

    @property
    def id(self) -> int:
        return self._core.id

    @property
    def pattern(self) -> str:
        return self._core.pattern

    @property
    def active(self) -> bool:
        """False once unsubscribed or the bus has closed."""
        return self._core.active

    @property
    def buffer_size(self) -> int:
        return self._core.buffer_size

    @property
    def on_full(self) -> str:
        return self._core.on_full

    def unsubscribe(self) -> None:
        """Stops delivery; pending events are dropped (and counted). Idempotent."""
        self._core.unsubscribe()
        self._bus._forget(self)

    def stats(self) -> SubscriptionStats:
        return SubscriptionStats(*self._core._counts())

    async def get(self, timeout: float | None = None) -> _core.Event:
        """The next event. Raises EventTimeoutError after `timeout` seconds, BusClosedError
        once the subscription has ended and nothing is left."""
        if self.handler is not None:
            raise InvalidArgumentError(
                "this subscription has a handler, which receives its events; subscribe "
                "without one to read events with get() or async for"
            )
        try:
            async with asyncio.timeout(timeout):
                return await self._next()
        except TimeoutError:
            raise EventTimeoutError(f"no event on {self.pattern!r} within {timeout} s") from None

    async def _next(self) -> _core.Event:
        loop = asyncio.get_running_loop()
        while True:
            batch = self._core._take(1)
            if batch:
                return batch[0]
            if not self._core.active:
                raise BusClosedError(f"the subscription to {self.pattern!r} has ended")
            woken = loop.create_future()
            batch = self._core._take(1, _waker(loop, woken))
            if batch:
                return batch[0]
            if not self._core.active:
                raise BusClosedError(f"the subscription to {self.pattern!r} has ended")
            await woken

    def __aiter__(self) -> AsyncIterator[_core.Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[_core.Event]:
        while True:
            try:
                yield await self.get()
            except BusClosedError:
                return

    async def _consume(self, handler: Callable[[_core.Event], Awaitable[Any]]) -> None:
        """Runs a coroutine handler on this subscription's events, in order, until it ends."""
        loop = asyncio.get_running_loop()
        core = self._core
        while True:
            batch = core._take(_BATCH)
            if not batch:
                if not core.active:
                    return
                woken = loop.create_future()
                batch = core._take(_BATCH, _waker(loop, woken))
                if not batch:
                    if not core.active:
                        return
                    await woken
                    continue
            for i, event in enumerate(batch):
                if not core.active:  # unsubscribed meanwhile: the rest is dropped
                    core._untake(len(batch) - i)
                    return
                try:
                    await handler(event)
                except Exception as exc:
                    self._bus._handler_failed(self.id, event, exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unsubscribe()

    def __repr__(self) -> str:
        state = "active" if self.active else "ended"
        return f"<Subscription {self.id} {self.pattern!r} {state}>"


_LIVE_BUSES: weakref.WeakSet[EventBus] = weakref.WeakSet()


class EventBus(_core.EventBus):
    """Async pub/sub: `EventBus(*, buffer_size=1000, on_full="drop_oldest", history=0,
    max_subscribers=None, dispatchers=2)`.

    - `buffer_size`: each subscriber's mailbox holds this many pending events (the original's
      1000); a subscription may set its own.
    - `on_full`: what a full mailbox does with a new event: "drop_oldest" (the default: a slow
      subscriber sees the latest events), "drop_newest", or "block" (the publisher waits for
      room, so nothing is lost; a publisher on the subscriber's own thread or event loop
      overfills the mailbox instead of waiting for itself).
    - `history`: how many recent events `history()` keeps (none by default).
    - `max_subscribers`: the most subscriptions at once (the original declared 100 and never
      enforced it; here None means no limit, and a limit is enforced).
    - `dispatchers`: threads that run plain-function handlers. Each subscriber's events are
      handled in order by one thread at a time, so with two, one slow handler leaves the other
      thread to everyone else.

    Safe to use from any thread and any event loop. Close it (`close()`, `await aclose()`, or a
    `with` / `async with` block) to deliver what is buffered and stop its threads.
    """

    def __new__(
        cls,
        *,
        buffer_size: int = 1000,
        on_full: OnFull = "drop_oldest",
        history: int = 0,
        max_subscribers: int | None = None,
        dispatchers: int = 2,
    ) -> Self:
        return super().__new__(
            cls,
            buffer_size=buffer_size,
            on_full=on_full,
            history=history,
            max_subscribers=max_subscribers,
        )

    def __init__(
        self,
        *,
        buffer_size: int = 1000,
        on_full: OnFull = "drop_oldest",
        history: int = 0,
        max_subscribers: int | None = None,
        dispatchers: int = 2,
    ) -> None:
        if not isinstance(dispatchers, int) or dispatchers < 1:
            raise InvalidArgumentError(f"dispatchers must be at least 1, got {dispatchers!r}")
        self._settings = (buffer_size, on_full, history, max_subscribers, dispatchers)
        self._dispatcher_count = dispatchers
        self._threads: list[threading.Thread] = []
        self._subscriptions: dict[int, Subscription] = {}
        self._lock = threading.Lock()
        _LIVE_BUSES.add(self)

    def subscribe(
        self,
        pattern: str,
        handler: Handler | None = None,
        *,
        filter: Filter | None = None,
        buffer_size: int | None = None,
        on_full: OnFull | None = None,
    ) -> Subscription:
        """Subscribes to topics matching `pattern` (`*` one token, `>` the rest).

        `handler` may be a plain function (run on a dispatcher thread) or a coroutine function
        (run on this thread's running event loop); without one, read the Subscription with
        `async for` or `await sub.get()`. `filter(event)` runs in the publisher: events it
        rejects are neither delivered nor counted as dropped.
        """
        return self._subscribe_as(pattern, handler, filter, buffer_size, on_full, False)

    def _subscribe_as(
        self,
        pattern: str,
        handler: Handler | None,
        filter: Filter | None,
        buffer_size: int | None,
        on_full: OnFull | None,
        strict_filter: bool,
    ) -> Subscription:
        if filter is not None and not callable(filter):
            raise InvalidTypeError(f"filter must be callable or None, got {type(filter).__name__}")
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if handler is None:
            plain = None
        elif not callable(handler):
            raise InvalidTypeError(
                f"handler must be a function, a coroutine function or None, "
                f"got {type(handler).__name__}"
            )
        elif _is_coroutine_function(handler):
            if loop is None:
                raise InvalidArgumentError(
                    "a coroutine handler runs on the event loop that subscribes it, and this "
                    "thread has no running event loop: subscribe it from async code"
                )
            plain = None
        else:
            plain = handler
        core = self._subscribe(
            pattern,
            plain,
            filter,
            buffer_size,
            on_full,
            reader=handler is None,
            # A publisher on the subscribing loop's thread must never wait for room only that
            # loop can make: until a reader parks elsewhere, assume it reads on this loop.
            loop_thread=threading.get_ident() if loop is not None else 0,
            strict_filter=strict_filter,
        )
        sub = Subscription(self, core, handler)
        with self._lock:
            self._subscriptions[sub.id] = sub
        if plain is not None:
            self._start_dispatchers()
        elif loop is not None and handler is not None:
            sub._task = loop.create_task(sub._consume(handler))
        return sub

    def matching(self, topic: str) -> list[Subscription]:
        """The subscriptions an event on `topic` would reach now, in delivery order."""
        ids = self._matching(topic)
        with self._lock:
            return [self._subscriptions[i] for i in ids if i in self._subscriptions]

    async def wait_for(
        self,
        pattern: str,
        *,
        timeout: float | None = None,
        filter: Filter | None = None,
    ) -> _core.Event:
        """The next event matching `pattern` (and `filter`) published after this call starts;
        EventTimeoutError after `timeout` seconds."""
        sub = self.subscribe(pattern, filter=filter, buffer_size=1, on_full="drop_newest")
        try:
            return await sub.get(timeout)
        finally:
            sub.unsubscribe()

    def stats(self) -> BusStats:
        published, delivered, dropped, active, total, lag = self._stats()
        with self._lock:
            subs = list(self._subscriptions.values())
        return BusStats(
            published=published,
            delivered=delivered,
            dropped=dropped,
            dropped_by_subscriber={s.id: s.stats().dropped for s in subs},
            subscribers_active=active,
            subscribers_total=total,
            lag=lag,
        )

    def _forget(self, sub: Subscription) -> None:
        with self._lock:
            self._subscriptions.pop(sub.id, None)

    def _start_dispatchers(self) -> None:
        with self._lock:
            if self._threads or self.closed:
                return
            for i in range(self._dispatcher_count):
                thread = threading.Thread(
                    target=self._dispatch,
                    args=(self._handler_failed,),
                    name=f"helixrt-bus-dispatch-{i}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)

    def _handler_failed(
        self, subscription_id: int, event: _core.Event, error: BaseException
    ) -> None:
        """A handler raised: log it and publish it on `system.error`. An error while handling
        a `system.error` event is only logged, so a failing catch-all handler cannot loop."""
        with self._lock:
            sub = self._subscriptions.get(subscription_id)
        handler = getattr(sub.handler, "__qualname__", repr(sub.handler)) if sub else None
        log.error(
            "event handler %s of subscription %d failed on %s event %s",
            handler,
            subscription_id,
            event.topic,
            event.id,
            exc_info=error,
        )
        if event.topic == topics.SYSTEM_ERROR or self.closed:
            return
        payload = {
            "error": error,
            "event": event,
            "subscription": subscription_id,
            "pattern": sub.pattern if sub else None,
            "handler": handler,
        }
        with suppress(BusClosedError):
            self.publish(topics.SYSTEM_ERROR, payload, source="helixrt.events")

    def close(self, timeout: float = 5.0) -> None:
        """Stops intake, waits up to `timeout` s for the handlers to work through what is
        buffered (coroutine handlers on this thread's own event loop cannot run meanwhile: use
        `aclose` from async code), then ends every subscription and stops the dispatcher
        threads. What a handler did not get to counts as dropped; readers (`async for`,
        `get()`) can still take what is buffered, then their iteration ends. Idempotent."""
        self._close()
        me = threading.current_thread()
        if me not in self._threads:
            deadline = time.monotonic() + timeout
            while not self._idle(threading.get_ident()) and time.monotonic() < deadline:
                time.sleep(0.001)
        self._finish(me)

    async def aclose(self, timeout: float = 5.0) -> None:
        """As `close`, from async code: the coroutine handlers on this event loop get to
        finish too."""
        self._close()
        deadline = time.monotonic() + timeout
        while not self._idle() and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        self._finish(threading.current_thread())
        with self._lock:
            tasks = [s._task for s in self._subscriptions.values() if s._task is not None]
        loop = asyncio.get_running_loop()
        mine = [t for t in tasks if t.get_loop() is loop and not t.done()]
        if mine:
            await asyncio.wait(mine)

    def _finish(self, me: threading.Thread) -> None:
        self._shutdown()
        for thread in self._threads:
            if thread is not me:
                thread.join()
        _LIVE_BUSES.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        buffer_size, on_full, history, max_subscribers, dispatchers = self._settings
        state = " closed" if self.closed else ""
        return (
            f"<EventBus buffer_size={buffer_size} on_full={on_full!r} history={history} "
            f"max_subscribers={max_subscribers} dispatchers={dispatchers}{state}>"
        )


def _is_coroutine_function(handler: object) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def _at_exit() -> None:
    for bus in list(_LIVE_BUSES):
        bus.close(timeout=1.0)


os.register_at_fork(after_in_child=_core._reseed)
threading._register_atexit(_at_exit)  # type: ignore[attr-defined]  # as ThreadPoolExecutor does


def __getattr__(name: str) -> Any:
    # The bridge imports redis and the SSE handler aiohttp: only when asked for.
    if name == "RedisBridge":
        from helixrt.events.bridge import RedisBridge

        return RedisBridge
    if name == "sse_handler":
        from helixrt.events.sse import sse_handler

        return sse_handler
    raise AttributeError(f"module 'helixrt.events' has no attribute {name!r}")
