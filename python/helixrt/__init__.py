"""helixrt: the performance architecture of a production LLM gateway, for Python services.

`import helixrt` loads only the Rust core (`helixrt._core`) and this module. Every component is
imported on first use through the module `__getattr__` (PEP 562), so aiohttp, redis, mcp and
prometheus_client are imported only by the components that need them.
"""

from __future__ import annotations

import importlib

from helixrt._core import __version__
from helixrt.errors import HelixError

# Not `typing.TYPE_CHECKING`: importing typing would cost more than the rest of `import helixrt`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from helixrt import errors, events, topics
    from helixrt.async_pool import AsyncWorkerPool
    from helixrt.breaker import CircuitBreaker
    from helixrt.cache import L1Cache, L1Stats, cached
    from helixrt.errors import CircuitOpenError
    from helixrt.events import Event, EventBus, Subscription
    from helixrt.http import HTTPPool
    from helixrt.lazy import Lazy
    from helixrt.pool import WorkerPool
    from helixrt.providers import ProviderRegistry
    from helixrt.retries import RetryPolicy, retry
    from helixrt.runtime import Runtime
    from helixrt.tiered import SyncTieredCache, TieredCache

__all__ = [
    "AsyncWorkerPool",
    "CircuitBreaker",
    "CircuitOpenError",
    "Event",
    "EventBus",
    "HTTPPool",
    "HelixError",
    "L1Cache",
    "L1Stats",
    "Lazy",
    "ProviderRegistry",
    "RetryPolicy",
    "Runtime",
    "Subscription",
    "SyncTieredCache",
    "TieredCache",
    "WorkerPool",
    "__version__",
    "cached",
    "errors",
    "events",
    "retry",
    "topics",
]

# Public name -> the module that defines it; filled in as components land.
_LAZY: dict[str, str] = {
    "errors": "helixrt.errors",
    "events": "helixrt.events",
    "Event": "helixrt.events",
    "EventBus": "helixrt.events",
    "Subscription": "helixrt.events",
    "L1Cache": "helixrt.cache",
    "L1Stats": "helixrt.cache",
    "cached": "helixrt.cache",
    "WorkerPool": "helixrt.pool",
    "AsyncWorkerPool": "helixrt.async_pool",
    "CircuitBreaker": "helixrt.breaker",
    "CircuitOpenError": "helixrt.errors",
    "RetryPolicy": "helixrt.retries",
    "Lazy": "helixrt.lazy",
    "ProviderRegistry": "helixrt.providers",
    "HTTPPool": "helixrt.http",
    "topics": "helixrt.topics",
    "TieredCache": "helixrt.tiered",
    "SyncTieredCache": "helixrt.tiered",
    "retry": "helixrt.retries",
    "Runtime": "helixrt.runtime",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'helixrt' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module.__name__ == f"helixrt.{name}" else getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
