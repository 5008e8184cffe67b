"""The L1 cache: an in-memory cache in Rust with TTL, time-to-idle, tags, weights and S3-FIFO
eviction, and the `cached` decorator.

`L1Cache` is the Rust class with the `MutableMapping` mixins added; every hot method (get, set,
`c[k]`, `k in c`, ...) is a direct call into Rust. Expired entries are reclaimed by one shared
background thread (`_Sweeper`) that runs while any cache is alive, so an idle cache gives its
memory back without being touched. This module holds no Redis code: the tiered cache builds on it.
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from collections.abc import (
    Awaitable,
    Callable,
    Hashable,
    ItemsView,
    Iterable,
    Iterator,
    MutableMapping,
    ValuesView,
)
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from helixrt import _core
from helixrt.errors import InvalidArgumentError, InvalidTypeError

if TYPE_CHECKING:
    import asyncio

    from helixrt.tiered import SyncTieredCache, TieredCache

__all__ = ["L1Cache", "L1Stats", "cached"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class L1Stats:
    """A snapshot of an L1Cache's counters (monotonic) and gauges (size, weight)."""

    hits: int
    misses: int
    inserts: int
    updates: int
    evictions: int
    expirations: int
    invalidations: int
    """Entries removed by the user: delete, pop, del, clear, invalidate_tag."""
    size: int
    weight: int
    hit_ratio: float
    """hits / (hits + misses); 0.0 before any lookup."""

    @property
    def lookups(self) -> int:
        return self.hits + self.misses


class L1Cache(_core.L1Cache, MutableMapping[Any, Any]):
    """A thread-safe in-memory cache: `L1Cache(maxsize=10_000, ttl=300.0, *, tti=None,
    max_weight=None, weigher=None)`.

    - `maxsize`: most entries held (the original's default, 10 000).
    - `ttl`: seconds an entry lives unless `set(..., ttl=)` says otherwise (the original's
      default, 5 minutes); `None` for no expiry.
    - `tti`: seconds an entry lives without being read (time to idle); `None` for none.
    - `max_weight` with `weigher(key, value) -> int`: most total weight held.

    Keys are any hashable objects, values any objects, kept by reference (no copy). Eviction is
    S3-FIFO: new entries must be read again before they can displace established ones, so one-
    pass scans do not flush the hot set; a key back after eviction must also have missed more
    often lately than the entry it would displace (a TinyLFU sketch). A set followed by a get
    on the same thread sees the value unless a bound evicted it. `len()`, iteration, `keys()`,
    `values()` and `items()` never include expired entries; they iterate over a snapshot taken
    when iteration starts, and do not count as reads.
    """

    __slots__ = ()

    def __init__(
        self,
        maxsize: int = 10_000,
        ttl: float | None = 300.0,
        *,
        tti: float | None = None,
        max_weight: int | None = None,
        weigher: Callable[[Any, Any], int] | None = None,
        _manual_clock: bool = False,
    ) -> None:
        # The Rust constructor has checked and stored the arguments already. `_manual_clock`
        # is for tests: time then moves only by `_advance(seconds)`.
        _SWEEPER.watch(self)

    def stats(self) -> L1Stats:
        hits, misses, inserts, updates, evictions, expirations, invalidations, size, weight = (
            self._stats()
        )
        lookups = hits + misses
        return L1Stats(
            hits=hits,
            misses=misses,
            inserts=inserts,
            updates=updates,
            evictions=evictions,
            expirations=expirations,
            invalidations=invalidations,
            size=size,
            weight=weight,
            hit_ratio=hits / lookups if lookups else 0.0,
        )

    def __repr__(self) -> str:
        return (
            f"L1Cache(maxsize={self.maxsize}, ttl={self.ttl}, tti={self.tti}, "
            f"max_weight={self.max_weight}, size={len(self)})"
        )

    # MutableMapping's mixins would go through __getitem__ and count hits; these do not.
    def items(self) -> ItemsView[Any, Any]:
        return _ItemsSnapshot(self)

    def values(self) -> ValuesView[Any]:
        return _ValuesSnapshot(self)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        found = self.get(key, _MISSING)
        if found is _MISSING:
            self[key] = default
            return default
        return found


_MISSING: Any = object()


class _ItemsSnapshot(ItemsView[Any, Any]):
    _mapping: L1Cache

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return iter(self._mapping._items())


class _ValuesSnapshot(ValuesView[Any]):
    _mapping: L1Cache

    def __iter__(self) -> Iterator[Any]:
        return iter(self._mapping._values())


class _Sweeper:
    """One daemon thread for the whole process that purges expired entries of every live
    L1Cache every `interval` seconds, and ends when no cache is left."""

    interval = 0.5

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Weak references (not a WeakSet: a Mapping is unhashable), pruned on every pass.
        self._caches: list[weakref.ref[L1Cache]] = []
        self._thread: threading.Thread | None = None

    def watch(self, cache: L1Cache) -> None:
        with self._lock:
            self._caches.append(weakref.ref(cache))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="helixrt-cache-sweeper", daemon=True
                )
                self._thread.start()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None

    def _run(self) -> None:
        wakeup = threading.Event()
        while True:
            wakeup.wait(self.interval)
            with self._lock:
                self._caches = [ref for ref in self._caches if ref() is not None]
                caches = [cache for ref in self._caches if (cache := ref()) is not None]
                if not caches:
                    self._thread = None
                    return
            for cache in caches:
                cache._purge_expired()
            del caches, cache  # hold no cache alive while sleeping


_SWEEPER = _Sweeper()


def _default_key(fn: Callable[..., Any]) -> Callable[..., Hashable]:
    name = f"{fn.__module__}.{fn.__qualname__}"

    def make_key(*args: Any, **kwargs: Any) -> Hashable:
        if kwargs:
            return (name, args, tuple(sorted(kwargs.items())))
        return (name, args)

    return make_key


def cached(
    cache: L1Cache | TieredCache | SyncTieredCache | None = None,
    *,
    ttl: float | None = None,
    key: Callable[..., Hashable] | None = None,
    tags: Iterable[str] = (),
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Caches a function's results in `cache` (a new `L1Cache` when omitted, or a TieredCache
    for async functions, a SyncTieredCache for plain ones: then keys are strings).

    Works on plain and async functions. Concurrent callers with the same arguments (threads,
    or tasks of one event loop) share one computation; an exception is raised to all of them
    and is not cached. The key is `key(*args, **kwargs)` when given, else the function's name
    with its arguments (which must then be hashable). The wrapper has `.cache` and
    `.invalidate(*args, **kwargs)`.
    """
    if ttl is not None and not ttl > 0:
        raise InvalidArgumentError(f"ttl must be a positive number of seconds or None, got {ttl}")
    tag_list = tuple(tags)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if cache is not None and not isinstance(cache, L1Cache):
            return _tiered_wrapper(fn, cache, key, ttl, tag_list)
        store = cache if cache is not None else L1Cache()
        make_key = key or _default_key(fn)
        if inspect.iscoroutinefunction(fn):
            wrapper = _async_wrapper(cast(Any, fn), store, make_key, ttl, tag_list)
        else:
            wrapper = _sync_wrapper(fn, store, make_key, ttl, tag_list)

        def invalidate(*args: Any, **kwargs: Any) -> bool:
            return store.delete(make_key(*args, **kwargs))

        wrapper.cache = store  # type: ignore[attr-defined]
        wrapper.invalidate = invalidate  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _tiered_wrapper(
    fn: Callable[P, R],
    cache: Any,
    key: Callable[..., Hashable] | None,
    ttl: float | None,
    tags: tuple[str, ...],
) -> Callable[P, R]:
    """`cached` over a TieredCache (async functions) or a SyncTieredCache (plain ones): the
    cache's own get_or_set shares one call per key, and its keys are strings."""
    from helixrt.tiered import SyncTieredCache, TieredCache

    is_async = inspect.iscoroutinefunction(fn)
    if isinstance(cache, TieredCache) and not is_async:
        raise InvalidArgumentError(
            f"{fn.__qualname__} is a plain function and TieredCache is async: use "
            "SyncTieredCache for plain functions"
        )
    if isinstance(cache, SyncTieredCache) and is_async:
        raise InvalidArgumentError(
            f"{fn.__qualname__} is a coroutine function: use TieredCache (async) for it"
        )
    if not isinstance(cache, TieredCache | SyncTieredCache):
        raise InvalidTypeError(
            f"cache must be an L1Cache, a TieredCache or a SyncTieredCache, "
            f"got {type(cache).__name__}"
        )
    name = f"{fn.__module__}.{fn.__qualname__}"

    def make_key(*args: Any, **kwargs: Any) -> str:
        if key is not None:
            made = key(*args, **kwargs)
            if not isinstance(made, str):
                raise InvalidTypeError(
                    f"key() must return a str for a tiered cache, got {type(made).__name__}"
                )
            return made
        # repr, not hash: the key must mean the same in every process that shares the cache.
        return f"{name}:{args!r}:{sorted(kwargs.items())!r}"

    if isinstance(cache, TieredCache):
        acache = cache
        coroutine_fn = cast(Callable[..., Awaitable[Any]], fn)

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            return await acache.get_or_set(
                make_key(*args, **kwargs),
                lambda: coroutine_fn(*args, **kwargs),
                ttl=ttl,
                tags=tags,
            )

        async def ainvalidate(*args: Any, **kwargs: Any) -> bool:
            return await acache.delete(make_key(*args, **kwargs))

        async_wrapper.cache = cache  # type: ignore[attr-defined]
        async_wrapper.invalidate = ainvalidate  # type: ignore[attr-defined]
        return cast(Callable[P, R], async_wrapper)

    scache = cache

    @functools.wraps(fn)
    def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return cast(
            R,
            scache.get_or_set(
                make_key(*args, **kwargs), lambda: fn(*args, **kwargs), ttl=ttl, tags=tags
            ),
        )

    def invalidate(*args: Any, **kwargs: Any) -> bool:
        return scache.delete(make_key(*args, **kwargs))

    sync_wrapper.cache = cache  # type: ignore[attr-defined]
    sync_wrapper.invalidate = invalidate  # type: ignore[attr-defined]
    return sync_wrapper


def _sync_wrapper(
    fn: Callable[P, R],
    store: L1Cache,
    make_key: Callable[..., Hashable],
    ttl: float | None,
    tags: tuple[str, ...],
) -> Callable[P, R]:
    in_flight: dict[Hashable, Future[R]] = {}
    lock = threading.Lock()

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        k = make_key(*args, **kwargs)
        found = store.get(k, _MISSING)
        if found is not _MISSING:
            return cast(R, found)
        with lock:
            pending = in_flight.get(k)
            leader = pending is None
            if pending is None:
                pending = in_flight[k] = Future()
        if not leader:
            return pending.result()
        try:
            result = fn(*args, **kwargs)
        except BaseException as err:
            pending.set_exception(err)
            raise
        else:
            store.set(k, result, ttl=ttl, tags=tags)
            pending.set_result(result)
            return result
        finally:
            with lock:
                del in_flight[k]

    return wrapper


def _async_wrapper(
    fn: Callable[P, R],
    store: L1Cache,
    make_key: Callable[..., Hashable],
    ttl: float | None,
    tags: tuple[str, ...],
) -> Callable[P, R]:
    import asyncio

    # One computation per (event loop, key): a task may only await tasks of its own loop.
    in_flight: dict[tuple[asyncio.AbstractEventLoop, Hashable], asyncio.Task[Any]] = {}
    coroutine_fn = cast(Callable[..., Awaitable[Any]], fn)

    async def compute(
        flight: tuple[asyncio.AbstractEventLoop, Hashable], *args: Any, **kwargs: Any
    ) -> Any:
        try:
            result = await coroutine_fn(*args, **kwargs)
            store.set(flight[1], result, ttl=ttl, tags=tags)
            return result
        finally:
            del in_flight[flight]

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        k = make_key(*args, **kwargs)
        found = store.get(k, _MISSING)
        if found is not _MISSING:
            return found
        flight = (asyncio.get_running_loop(), k)
        task = in_flight.get(flight)
        if task is None:
            task = in_flight[flight] = asyncio.ensure_future(compute(flight, *args, **kwargs))
            # Its callers may all be cancelled; the error was theirs to see, not the loop's.
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
        # shield: one caller's cancellation does not cancel the others' computation.
        return await asyncio.shield(task)

    return cast(Callable[P, R], wrapper)
