"""The provider registry: named providers (LLM API clients, pools, connections) created on first
use, checked for health, and closed together.

Each provider is a `helixrt.Lazy` around its factory, so it is created once however many tasks
ask for it at the same moment. A registry given a `bus=` (anything with
`publish(topic, payload, *, source=...)`, such as the event bus) announces registrations and
health changes on the standard topics. It does not route requests between providers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from helixrt import topics
from helixrt.breaker import CircuitBreaker
from helixrt.errors import HelixError, InvalidArgumentError, InvalidTypeError
from helixrt.lazy import Lazy

__all__ = ["ProviderRegistry", "UnknownProviderError"]

logger = logging.getLogger("helixrt.providers")

HealthCheck = Callable[[Any], "bool | Awaitable[bool]"]


class UnknownProviderError(HelixError, KeyError):
    """No provider is registered under that name."""


@dataclass
class _Entry:
    lazy: Lazy[Any]
    prewarm: bool
    health_check: HealthCheck | None
    breaker: CircuitBreaker | None
    status: str = "not_created"


class ProviderRegistry:
    """`ProviderRegistry(*, bus=None)`: `register(name, factory, *, prewarm=False,
    health_check=None, breaker=None)`, `await get(name)`, `await prewarm()`, `await health()`,
    `unregister(name)`, `await aclose()` (and `async with`).

    A provider with a `breaker` is not handed out while the breaker is open: `get` raises
    `CircuitOpenError` at once. Health statuses: "not_created", "healthy", "unhealthy" (the
    check returned false or raised), "open" (its breaker is open). Thread-safe; `get` may be
    awaited from any event loop.
    """

    def __init__(self, *, bus: Any = None) -> None:
        self._bus = bus
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def register(
        self,
        name: str,
        factory: Callable[[], Any],
        *,
        prewarm: bool = False,
        health_check: HealthCheck | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        """Registers `factory` (plain or async) under `name`; nothing is created yet."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"a provider name must be a non-empty str, got {name!r}")
        if health_check is not None and not callable(health_check):
            raise InvalidTypeError(f"health_check must be callable, got {health_check!r}")
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise InvalidTypeError(f"breaker must be a helixrt.CircuitBreaker, got {breaker!r}")
        entry = _Entry(Lazy(factory), prewarm, health_check, breaker)
        with self._lock:
            if name in self._entries:
                raise InvalidArgumentError(f"a provider named {name!r} is already registered")
            self._entries[name] = entry
        self._publish(topics.PROVIDER_REGISTERED, {"name": name})

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownProviderError(
                f"no provider named {name!r} (registered: {known})"
            ) from None

    async def get(self, name: str) -> Any:
        """The provider `name`, created on first use."""
        entry = self._entry(name)
        if entry.breaker is not None and entry.breaker.state == "open":
            from helixrt.errors import CircuitOpenError

            raise CircuitOpenError(entry.breaker.name, entry.breaker.retry_after)
        provider = await entry.lazy.aget()
        if entry.status == "not_created":
            entry.status = "healthy"
        return provider

    def names(self) -> list[str]:
        return sorted(self._entries)

    async def prewarm(self) -> dict[str, BaseException | None]:
        """Creates every provider registered with `prewarm=True`, concurrently. Returns each
        one's error (None when it was created); failures are also logged."""
        names = [name for name, entry in self._entries.items() if entry.prewarm]
        results = await asyncio.gather(*(self.get(name) for name in names), return_exceptions=True)
        errors: dict[str, BaseException | None] = {}
        for name, result in zip(names, results, strict=True):
            error = result if isinstance(result, BaseException) else None
            if error is not None:
                logger.warning("prewarming provider %r failed: %r", name, error)
            errors[name] = error
        return errors

    async def health(self) -> dict[str, str]:
        """Runs the health checks of the providers already created; returns each provider's
        status and announces the ones that changed."""
        statuses: dict[str, str] = {}
        for name, entry in list(self._entries.items()):
            status = await self._check(name, entry)
            if status != entry.status:
                old, entry.status = entry.status, status
                self._publish(
                    topics.PROVIDER_HEALTH_CHANGED, {"name": name, "old": old, "new": status}
                )
            statuses[name] = status
        return statuses

    async def _check(self, name: str, entry: _Entry) -> str:
        if entry.breaker is not None and entry.breaker.state == "open":
            return "open"
        if not entry.lazy.initialized:
            return "not_created"
        if entry.health_check is None:
            return "healthy"
        try:
            outcome = entry.health_check(await entry.lazy.aget())
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except Exception:
            logger.warning("the health check of provider %r failed", name, exc_info=True)
            return "unhealthy"
        return "healthy" if outcome else "unhealthy"

    def unregister(self, name: str) -> None:
        """Removes `name`; a provider it created is closed (`close()` now, or `aclose()` on the
        running event loop, finished by the registry's `aclose()`)."""
        with self._lock:
            entry = self._entry(name)
            del self._entries[name]
        self._publish(topics.PROVIDER_UNREGISTERED, {"name": name})
        if not entry.lazy.initialized:
            return
        closing = _close(name, entry.lazy)
        try:
            task = asyncio.get_running_loop().create_task(closing)
        except RuntimeError:  # no running loop: run it here
            asyncio.run(closing)
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Closes every provider created so far (`aclose()` or `close()`), and forgets them all.
        A provider whose close fails is logged, and the others are still closed."""
        with self._lock:
            entries, self._entries = self._entries, {}
        closings = [
            _close(name, entry.lazy) for name, entry in entries.items() if entry.lazy.initialized
        ]
        await asyncio.gather(*closings, *self._closing)

    async def __aenter__(self) -> ProviderRegistry:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        if self._bus is None:
            return
        try:
            self._bus.publish(topic, payload, source="provider_registry")
        except Exception:
            logger.exception("publishing %s failed", topic)


async def _close(name: str, lazy: Lazy[Any]) -> None:
    """Closes the provider `lazy` created (`aclose()` or `close()`, if it has one); a failure
    is logged, not raised."""
    try:
        provider = await lazy.aget()  # created already: returns at once
        close = getattr(provider, "aclose", None) or getattr(provider, "close", None)
        if callable(close):
            outcome = close()
            if inspect.isawaitable(outcome):
                await outcome
    except Exception:
        logger.exception("closing provider %r failed", name)
