"""Retries with exponential backoff and jitter: `RetryPolicy` and the `retry` decorator.

`RetryPolicy` is an immutable value that says how often and how long to retry, which exceptions
are worth retrying, and (for the HTTP pool) which responses are: `should_retry_status`,
`retry_after_seconds` and `delay`. `retry` applies a policy to a plain or an async function.
Nothing retries forever: `max_attempts` counts the first call, and `total_timeout` bounds the
whole run, sleeps included. The last error is raised as itself, never wrapped. (The module is
`retries`, not `retry`, so that `helixrt.retry` stays the decorator.)

This module does not interrupt a running attempt (put `asyncio.timeout` inside the function for
a per-attempt timeout), does not retry on results, and sends no HTTP requests: the HTTP pool
does that with the policy's helpers. It imports nothing heavy (no asyncio, logging, random,
typing or dataclasses until they are needed).
"""

from __future__ import annotations

import math
import time

from helixrt.errors import CircuitOpenError, InvalidArgumentError

# Not `typing.TYPE_CHECKING`: importing typing would cost more than this whole module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    import random
    from collections.abc import Awaitable, Callable, Iterable
    from datetime import datetime
    from typing import (
        Any,
        Literal,
        NoReturn,
        ParamSpec,
        TypeAlias,
        TypedDict,
        TypeGuard,
        TypeVar,
        Unpack,
        final,
        overload,
    )

    P = ParamSpec("P")
    R = TypeVar("R")
    Jitter: TypeAlias = Literal["full", "equal", "none"]
    OnRetry: TypeAlias = Callable[[int, Exception, float], object]

    class RetryOptions(TypedDict, total=False):
        """The keyword arguments of `RetryPolicy`, as `retry()` and `replace()` take them."""

        max_attempts: int
        base_delay: float
        factor: float
        max_delay: float
        jitter: Jitter
        total_timeout: float | None
        retry_on: type[Exception] | Iterable[type[Exception]]
        retry_statuses: Iterable[int]
        retry_methods: Iterable[str]
        respect_retry_after: bool
        max_retry_after: float
else:

    def final(cls: object) -> object:
        return cls


__all__ = ["RetryPolicy", "retry"]

_JITTERS = ("full", "equal", "none")
_FIELDS = (
    "max_attempts",
    "base_delay",
    "factor",
    "max_delay",
    "jitter",
    "total_timeout",
    "retry_on",
    "retry_statuses",
    "retry_methods",
    "respect_retry_after",
    "max_retry_after",
)

# The clock and the sleeps the decorator uses, looked up on every call so that tests can
# replace them (monkeypatch this module's `_clock`, `_sleep` and `_async_sleep`).
_clock = time.monotonic
_sleep = time.sleep


async def _async_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


@final
class RetryPolicy:
    """How to retry: `RetryPolicy(max_attempts=3, *, base_delay=0.1, factor=2.0, max_delay=5.0,
    jitter="full", total_timeout=None, retry_on=(ConnectionError, TimeoutError),
    retry_statuses=(429, 502, 503, 504), retry_methods=("GET", "HEAD", "OPTIONS", "PUT",
    "DELETE"), respect_retry_after=True, max_retry_after=60.0)`.

    - `max_attempts`: calls in all, the first one included (the original's "retry 3" setting;
      its HTTP client made 4). Never unbounded: tenacity's retry-forever default is its users'
      most cited pain.
    - `base_delay`, `factor`, `max_delay`: the wait before retry n (n = 1 for the first) is
      `min(max_delay, base_delay * factor ** (n - 1))` seconds, before jitter (the original's
      100 ms doubling up to 5 s).
    - `jitter`: `"full"` waits `uniform(0, d)` (the default: the original promised jitter and
      had none, and full jitter spreads a thundering herd best), `"equal"` waits
      `d / 2 + uniform(0, d / 2)`, `"none"` waits `d`.
    - `total_timeout`: seconds the whole run may take, sleeps included, or `None`. A sleep that
      would end past the deadline is not taken: the last error is raised at once. A running
      attempt is not interrupted.
    - `retry_on`: the exceptions worth retrying: an exception class or a tuple of them, all
      subclasses of `Exception`. `CircuitOpenError` (a `ConnectionError`) is not retried unless
      it, or a subclass, is listed itself: retrying into an open breaker only adds load.
      `KeyboardInterrupt`, `SystemExit` and `asyncio.CancelledError` are never retried.
    - `retry_statuses`, `retry_methods`: the HTTP statuses worth retrying (the original's 429,
      502, 503, 504), and the methods safe to repeat (urllib3's idempotent methods without
      TRACE). Method names are stored upper-cased; an empty tuple means none.
    - `respect_retry_after`, `max_retry_after`: wait at least what the server's `Retry-After`
      asks, but never more than `max_retry_after` seconds (urllib3 caps it at 6 hours and
      go-retryablehttp not at all; both caps have made clients hang).

    Policies are immutable, hashable and comparable; `replace(**changes)` makes a changed copy.
    Bad arguments raise `InvalidArgumentError` naming the argument and what it accepts. The
    private `_random` (a `random.Random`) makes the jitter reproducible in tests.
    """

    __slots__ = (*_FIELDS, "_random")

    if TYPE_CHECKING:
        # Read-only to type checkers as they are at run time (set once, by __init__).
        @property
        def max_attempts(self) -> int: ...
        @property
        def base_delay(self) -> float: ...
        @property
        def factor(self) -> float: ...
        @property
        def max_delay(self) -> float: ...
        @property
        def jitter(self) -> Jitter: ...
        @property
        def total_timeout(self) -> float | None: ...
        @property
        def retry_on(self) -> tuple[type[Exception], ...]: ...
        @property
        def retry_statuses(self) -> tuple[int, ...]: ...
        @property
        def retry_methods(self) -> tuple[str, ...]: ...
        @property
        def respect_retry_after(self) -> bool: ...
        @property
        def max_retry_after(self) -> float: ...
        @property
        def _random(self) -> random.Random | None: ...

    def __init__(
        self,
        max_attempts: int = 3,
        *,
        base_delay: float = 0.1,
        factor: float = 2.0,
        max_delay: float = 5.0,
        jitter: Jitter = "full",
        total_timeout: float | None = None,
        retry_on: type[Exception] | Iterable[type[Exception]] = (ConnectionError, TimeoutError),
        retry_statuses: Iterable[int] = (429, 502, 503, 504),
        retry_methods: Iterable[str] = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE"),
        respect_retry_after: bool = True,
        max_retry_after: float = 60.0,
        _random: random.Random | None = None,
    ) -> None:
        if type(max_attempts) is not int or max_attempts < 1:
            raise InvalidArgumentError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        if not _is_number(factor) or factor < 1:
            raise InvalidArgumentError(f"factor must be a number >= 1, got {factor!r}")
        if jitter not in _JITTERS:
            raise InvalidArgumentError(f"jitter must be 'full', 'equal' or 'none', got {jitter!r}")
        if total_timeout is not None and (not _is_number(total_timeout) or total_timeout <= 0):
            raise InvalidArgumentError(
                f"total_timeout must be a positive number of seconds or None, got {total_timeout!r}"
            )
        if type(respect_retry_after) is not bool:
            raise InvalidArgumentError(
                f"respect_retry_after must be True or False, got {respect_retry_after!r}"
            )
        if _random is not None and not _is_random(_random):
            raise InvalidArgumentError(f"_random must be a random.Random or None, got {_random!r}")
        values = {
            "max_attempts": max_attempts,
            "base_delay": _seconds("base_delay", base_delay),
            "factor": float(factor),
            "max_delay": _seconds("max_delay", max_delay),
            "jitter": jitter,
            "total_timeout": None if total_timeout is None else float(total_timeout),
            "retry_on": _exception_classes(retry_on),
            "retry_statuses": _statuses(retry_statuses),
            "retry_methods": _methods(retry_methods),
            "respect_retry_after": respect_retry_after,
            "max_retry_after": _seconds("max_retry_after", max_retry_after),
            "_random": _random,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    # ----------------------------------------------------------------------------- decisions

    def should_retry_exception(self, exc: BaseException) -> bool:
        """Whether `exc` is worth another attempt: an instance of `retry_on`, but not a
        `CircuitOpenError` unless that is listed itself, and never a `BaseException` that is
        not an `Exception` (cancellation and interrupts propagate at once)."""
        if not isinstance(exc, Exception) or not isinstance(exc, self.retry_on):
            return False
        if isinstance(exc, CircuitOpenError):
            return any(
                issubclass(cls, CircuitOpenError) and isinstance(exc, cls) for cls in self.retry_on
            )
        return True

    def should_retry_status(self, method: str, status: int, *, idempotent: bool = False) -> bool:
        """Whether a response with `status` to a `method` request is worth another attempt:
        the status is in `retry_statuses` and the method (any case) in `retry_methods`, or the
        caller vouches that this request may be repeated (`idempotent=True`, e.g. a POST with an
        idempotency key)."""
        return status in self.retry_statuses and (
            idempotent or method.upper() in self.retry_methods
        )

    def retry_after_seconds(
        self, header_value: str | None, now: datetime | None = None
    ) -> float | None:
        """The wait a `Retry-After` header asks for, in seconds, capped at `max_retry_after`.

        The header is a number of seconds (`"120"`; a decimal fraction is accepted too) or an
        HTTP date (`"Wed, 21 Oct 2015 07:28:00 GMT"`), counted from `now` (default: the current
        time; naive datetimes are taken as UTC). A date in the past gives 0.0: the server's
        moment has come. `None` when the header is absent, empty, negative or unparseable.
        This only parses: `delay()` decides whether to honour it (`respect_retry_after`).
        """
        if header_value is None:
            return None
        if not isinstance(header_value, str):
            raise InvalidArgumentError(
                f"header_value must be a str or None, got {type(header_value).__name__}"
            )
        text = header_value.strip()
        seconds = _decimal_seconds(text)
        if seconds is None and text:
            seconds = _seconds_until_http_date(text, now)
        if seconds is None:
            return None
        return min(seconds, self.max_retry_after)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (1 for the first retry): the backoff
        `min(max_delay, base_delay * factor ** (attempt - 1))` with the jitter applied.

        With `retry_after` (seconds a server asked for, e.g. from `retry_after_seconds`) and
        `respect_retry_after`, the wait is `max(backoff, min(retry_after, max_retry_after))`:
        the server's wish is a floor, so clients do not come back sooner than asked, and the
        cap keeps a hostile or broken server from parking the client. A `retry_after` above
        `max_delay` is honoured (up to the cap); `total_timeout` still bounds the whole run.
        """
        if type(attempt) is not int or attempt < 1:
            raise InvalidArgumentError(f"attempt must be an int >= 1, got {attempt!r}")
        wait = self._jittered(self._backoff(attempt))
        if retry_after is not None:
            if not _is_number(retry_after) or retry_after < 0:
                raise InvalidArgumentError(
                    f"retry_after must be a number of seconds >= 0 or None, got {retry_after!r}"
                )
            if self.respect_retry_after:
                wait = max(wait, min(float(retry_after), self.max_retry_after))
        return wait

    def _backoff(self, attempt: int) -> float:
        if self.base_delay == 0.0:
            return 0.0  # and not 0 * inf = nan after many attempts
        try:
            grown = self.base_delay * self.factor ** (attempt - 1)
        except OverflowError:
            return self.max_delay
        return min(self.max_delay, grown)

    def _jittered(self, delay: float) -> float:
        if self.jitter == "none" or delay == 0.0:
            return delay
        if self._random is not None:
            uniform = self._random.uniform
        else:
            import random

            uniform = random.uniform
        if self.jitter == "full":
            return uniform(0.0, delay)
        return delay / 2 + uniform(0.0, delay / 2)

    # ------------------------------------------------------------------------ value semantics

    def replace(self, **changes: Unpack[RetryOptions]) -> RetryPolicy:
        """A copy of this policy with `changes` applied (and checked as the constructor does)."""
        options: dict[str, Any] = {name: getattr(self, name) for name in _FIELDS}
        options["_random"] = self._random
        options.update(changes)
        return RetryPolicy(**options)

    __replace__ = replace  # copy.replace() (Python 3.13)

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in _FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RetryPolicy):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        parts = []
        for name in _FIELDS:
            value = getattr(self, name)
            if name == "retry_on":
                names = [_class_name(cls) for cls in value]
                text = f"({names[0]},)" if len(names) == 1 else f"({', '.join(names)})"
            else:
                text = repr(value)
            parts.append(f"{name}={text}")
        return f"RetryPolicy({', '.join(parts)})"

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(
            f"RetryPolicy is immutable: use policy.replace({name}=...) for a changed copy"
        )

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("RetryPolicy is immutable")

    def __reduce__(self) -> tuple[Callable[..., RetryPolicy], tuple[dict[str, Any]]]:
        options: dict[str, Any] = {name: getattr(self, name) for name in _FIELDS}
        options["_random"] = self._random
        return (_rebuild_policy, (options,))


def _rebuild_policy(options: dict[str, Any]) -> RetryPolicy:
    return RetryPolicy(**options)


# --------------------------------------------------------------------------- argument checks


def _is_number(value: object) -> TypeGuard[float]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _is_random(value: object) -> bool:
    import random

    return isinstance(value, random.Random)


def _seconds(name: str, value: object) -> float:
    if not _is_number(value) or value < 0:
        raise InvalidArgumentError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _exception_classes(value: object) -> tuple[type[Exception], ...]:
    classes = (value,) if isinstance(value, type) else _tuple_of("retry_on", value)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise InvalidArgumentError(
                "retry_on must be an exception class or a tuple of them, all subclasses of "
                f"Exception (interrupts and cancellation are never retried), got {cls!r}"
            )
    return tuple(dict.fromkeys(classes))


def _statuses(value: object) -> tuple[int, ...]:
    statuses = _tuple_of("retry_statuses", value)
    for status in statuses:
        if type(status) is not int or not 100 <= status <= 599:
            raise InvalidArgumentError(
                f"retry_statuses must hold HTTP status codes (ints from 100 to 599), got {status!r}"
            )
    return tuple(dict.fromkeys(statuses))


def _methods(value: object) -> tuple[str, ...]:
    methods = _tuple_of("retry_methods", value)
    for method in methods:
        if not isinstance(method, str) or not method.strip():
            raise InvalidArgumentError(
                f"retry_methods must hold HTTP method names (non-empty str), got {method!r}"
            )
    return tuple(dict.fromkeys(method.strip().upper() for method in methods))


def _tuple_of(name: str, value: object) -> tuple[Any, ...]:
    if isinstance(value, str | bytes):
        raise InvalidArgumentError(f"{name} must be a tuple, not a single {type(value).__name__}")
    try:
        return tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgumentError(f"{name} must be a tuple, got {type(value).__name__}") from None


def _class_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


# -------------------------------------------------------------------------------- Retry-After


def _decimal_seconds(text: str) -> float | None:
    # Digits only (RFC 9110 delay-seconds), optionally with a fraction: float() alone would
    # also take "-1", "1e3", "inf", "nan" and "1_000".
    whole, dot, fraction = text.partition(".")
    if not (whole.isascii() and whole.isdigit()):
        return None
    if dot and not (fraction.isascii() and fraction.isdigit()):
        return None
    return float(text)


def _seconds_until_http_date(text: str, now: datetime | None) -> float | None:
    from datetime import UTC
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if now is None:
        from datetime import datetime

        now = datetime.now(UTC)
    if when.tzinfo is None:  # "-0000": UTC, origin unknown
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _retry_after_of(exc: Exception) -> float | None:
    # An exception may say when to come back (CircuitOpenError does): treated as a Retry-After.
    value = getattr(exc, "retry_after", None)
    if _is_number(value) and value >= 0:
        return float(value)
    return None


# ---------------------------------------------------------------------------- the decorator


if TYPE_CHECKING:
    # The two forms of the decorator, for type checkers only (importing typing is not free).

    @overload
    def retry(
        fn: Callable[P, R], /, *, on_retry: OnRetry | None = None, **options: Unpack[RetryOptions]
    ) -> Callable[P, R]: ...

    @overload
    def retry(
        policy: RetryPolicy | None = None,
        /,
        *,
        on_retry: OnRetry | None = None,
        **options: Unpack[RetryOptions],
    ) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def retry(
    fn_or_policy: Callable[..., Any] | RetryPolicy | None = None,
    /,
    *,
    on_retry: OnRetry | None = None,
    **options: Any,
) -> Any:
    """Retries a plain or an async function by a `RetryPolicy`.

    `@retry`, `@retry()`, `@retry(policy)`, `@retry(max_attempts=5, base_delay=1.0)` and
    `@retry(policy, max_attempts=5)` (the policy with those changes) all work, as does
    `retry(fn, ...)`. Each call of the wrapper runs the function up to `max_attempts` times,
    sleeping `policy.delay(n)` between attempts (`time.sleep` for a plain function, so do not
    call one on an event loop's thread; `asyncio.sleep` for an `async def` function, whose
    wrapper is a coroutine function too). An exception with a numeric `retry_after` attribute
    (`CircuitOpenError` has one, when it is retried at all) is waited for as a `Retry-After`.

    When the policy gives up, or an exception is not worth retrying, that exception propagates
    unchanged, with its traceback; errors of earlier attempts are not chained to it. Cancelling
    an async wrapper during a sleep ends it at once, with no further attempt.

    `on_retry(attempt, exc, delay)` is called before each sleep (attempt 1 has just failed when
    the first retry is planned); it runs in the caller's thread, and what it raises propagates.
    Each retry is also logged at DEBUG on the `helixrt.retry` logger, with the exception's type
    but not its message (messages can hold URLs with tokens). The wrapper has `.retry_policy`.
    """
    if on_retry is not None and not callable(on_retry):
        raise InvalidArgumentError(
            f"on_retry must be a callable (attempt, exc, delay) or None, got {on_retry!r}"
        )
    if fn_or_policy is None or isinstance(fn_or_policy, RetryPolicy):
        base = fn_or_policy or RetryPolicy()
        policy = base.replace(**options) if options else base
        return lambda fn: _wrap(fn, policy, on_retry)
    if not callable(fn_or_policy):
        raise InvalidArgumentError(
            f"retry() takes a RetryPolicy or the function to wrap, got {fn_or_policy!r}"
        )
    return _wrap(fn_or_policy, RetryPolicy(**options), on_retry)


def _wrap(fn: Callable[P, R], policy: RetryPolicy, on_retry: OnRetry | None) -> Callable[P, R]:
    import functools
    import inspect

    if not callable(fn):
        raise InvalidArgumentError(f"retry() can only wrap a callable, got {fn!r}")
    retrier = _Retrier(policy, on_retry, getattr(fn, "__qualname__", repr(fn)))
    wrapper: Callable[P, R]
    if inspect.iscoroutinefunction(fn):
        wrapper = _async_wrapper(fn, retrier)
    else:
        wrapper = _sync_wrapper(fn, retrier)
    wrapper = functools.wraps(fn)(wrapper)
    wrapper.retry_policy = policy  # type: ignore[attr-defined]
    return wrapper


def _sync_wrapper(fn: Callable[P, R], retrier: _Retrier) -> Callable[P, R]:
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        deadline = retrier.deadline()
        attempt = 1
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                delay = retrier.next_delay(exc, attempt, deadline)
                if delay is None:
                    raise
            # Out of the except block: the next attempt's error must not chain to this one.
            _sleep(delay)
            attempt += 1

    return wrapper


def _async_wrapper(fn: Callable[..., Awaitable[Any]], retrier: _Retrier) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        deadline = retrier.deadline()
        attempt = 1
        while True:
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                delay = retrier.next_delay(exc, attempt, deadline)
                if delay is None:
                    raise
            await _async_sleep(delay)
            attempt += 1

    return wrapper


class _Retrier:
    """The decisions of one decorated function, shared by its sync and async loops."""

    __slots__ = ("name", "on_retry", "policy")

    def __init__(self, policy: RetryPolicy, on_retry: OnRetry | None, name: str) -> None:
        self.policy = policy
        self.on_retry = on_retry
        self.name = name

    def deadline(self) -> float | None:
        timeout = self.policy.total_timeout
        return None if timeout is None else _clock() + timeout

    def next_delay(self, exc: Exception, attempt: int, deadline: float | None) -> float | None:
        """The wait before the next attempt, or None to give up (and raise `exc`)."""
        policy = self.policy
        if not policy.should_retry_exception(exc):
            return None
        if attempt >= policy.max_attempts:
            _logger().debug(
                "giving up on %s after %d attempts: %s",
                self.name,
                attempt,
                _class_name(type(exc)),
            )
            return None
        delay = policy.delay(attempt, _retry_after_of(exc))
        if deadline is not None and _clock() + delay > deadline:
            _logger().debug(
                "giving up on %s after %d attempts: %s, and a %.3f s wait would pass the "
                "%.3f s total_timeout",
                self.name,
                attempt,
                _class_name(type(exc)),
                delay,
                policy.total_timeout,
            )
            return None
        _logger().debug(
            "retrying %s in %.3f s: attempt %d of %d failed with %s",
            self.name,
            delay,
            attempt,
            policy.max_attempts,
            _class_name(type(exc)),
        )
        if self.on_retry is not None:
            self.on_retry(attempt, exc, delay)
        return delay


def _logger() -> logging.Logger:
    # Imported on the first retry, not with the module: most calls never retry.
    import logging

    return logging.getLogger("helixrt.retry")
