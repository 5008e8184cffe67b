"""The exceptions helixrt raises.

Every one derives from `HelixError`, and also from the standard type a user would already catch
(`ValueError`, `KeyError`, `TypeError`, `TimeoutError`, ...), so `except HelixError` catches
everything from helixrt and `except KeyError` keeps working in code written for a dict.
The Rust core raises these same classes (it imports this module on its first error).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from helixrt.pool import BrokenPoolError

__all__ = [
    "BrokenPoolError",
    "BusClosedError",
    "CacheKeyError",
    "CircuitOpenError",
    "EventTimeoutError",
    "HelixError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "PoolClosedError",
    "QueueFullError",
    "ReentryError",
    "SubscriberLimitError",
    "TaskTimeoutError",
]


class HelixError(Exception):
    """The root of every exception helixrt raises."""


class InvalidArgumentError(HelixError, ValueError):
    """An argument has a value helixrt does not accept; the message names it and what is."""


class InvalidTypeError(HelixError, TypeError):
    """An argument, or a value returned by a user's callback, has the wrong type."""


class CacheKeyError(HelixError, KeyError):
    """The key is not in the cache (never set, expired, evicted or deleted)."""


class ReentryError(HelixError, RuntimeError):
    """A helixrt object was used from inside one of its own operations (a bug in helixrt: its
    Rust core never runs Python code while it holds an object's state)."""


class QueueFullError(HelixError, RuntimeError):
    """A pool's queue is full and its policy is to refuse new work rather than wait."""


class PoolClosedError(HelixError, RuntimeError):
    """The pool no longer accepts work: it was shut down (or closed)."""


class TaskTimeoutError(HelixError, TimeoutError):
    """A task's deadline passed: before it started (it never ran) or while it ran (its result
    will be discarded)."""


class BusClosedError(HelixError, RuntimeError):
    """The event bus is closed (publish and subscribe refuse), or the subscription being read
    has ended."""


class SubscriberLimitError(HelixError, RuntimeError):
    """The event bus already has its `max_subscribers` subscriptions."""


class EventTimeoutError(HelixError, TimeoutError):
    """No matching event arrived in the time given."""


class CircuitOpenError(HelixError, ConnectionError):
    """A circuit breaker is open: the call was refused without being attempted.

    `breaker` names the breaker; `retry_after` is the number of seconds until it lets a trial
    call through (0 when it is half-open and all its trial calls are taken).
    """

    def __init__(self, breaker: str, retry_after: float) -> None:
        super().__init__(
            f"circuit breaker {breaker!r} is open: calls are refused for {retry_after:.3f} s more"
        )
        self.breaker = breaker
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, float]]:
        return (type(self), (self.breaker, self.retry_after))


def __getattr__(name: str) -> type[HelixError]:
    # BrokenPoolError derives from concurrent.futures' BrokenThreadPool, whose import would
    # slow `import helixrt` down: it lives with the pool and is found here on first use.
    if name != "BrokenPoolError":
        raise AttributeError(f"module 'helixrt.errors' has no attribute {name!r}")
    from helixrt.pool import BrokenPoolError

    return BrokenPoolError
