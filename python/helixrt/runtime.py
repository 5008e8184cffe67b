"""The runtime: every component of the architecture in one object, built from the config,
wired together on the event bus, started in order and closed in reverse.

`Runtime(config)` creates nothing up front: each component (`rt.bus`, `rt.worker_pool`,
`rt.async_pool`, `rt.cache`, `rt.http`, `rt.providers`, `rt.preinstaller`, `rt.mcp`) is made on
first access, once, whatever the number of threads or tasks asking, and given the runtime's bus.
`await rt.start()` creates what the config says to create early, wires the subscribers of the
original's event diagram (a cache invalidator, a metrics collector, a health monitor) and
publishes `system.startup`; `await rt.aclose()` publishes `system.shutdown` and closes what was
created, in reverse order. `health()` and `performance()` read every component without
creating any. This module holds no component logic and serves nothing over HTTP (`helixrt.ops`
does that).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

from helixrt import topics
from helixrt.config import COMPONENT_NAMES, HelixConfig, load_config
from helixrt.errors import HelixError, InvalidArgumentError, InvalidTypeError

if TYPE_CHECKING:
    import os
    from types import TracebackType

    from helixrt.async_pool import AsyncWorkerPool
    from helixrt.events import Event, EventBus, Subscription
    from helixrt.http import HTTPPool
    from helixrt.mcp.config import ServerConfig
    from helixrt.mcp.pool import MCPConnectionPool
    from helixrt.mcp.preinstall import Preinstaller
    from helixrt.pool import WorkerPool
    from helixrt.providers import ProviderRegistry
    from helixrt.tiered import TieredCache

__all__ = ["Runtime", "RuntimeClosedError"]

log = logging.getLogger("helixrt.runtime")

_SOURCE = "helixrt.runtime"
# Provider statuses (ProviderRegistry.health) and MCP server states that make a runtime degraded.
_BAD_PROVIDER = frozenset({"unhealthy", "open"})
_BAD_SERVER = frozenset({"failed"})


class RuntimeClosedError(HelixError, RuntimeError):
    """The runtime is closed: it creates no more components and cannot be started again."""


class Runtime:
    """Owns and wires the components: `Runtime(config=None)`.

    - `config`: a `HelixConfig`, a mapping (read by `helixrt.config.load_config`, with the
      `HELIXRT_*` environment variables on top), or None (the defaults and the environment).
      `Runtime.from_file(path, *, profile=None, env=None)` reads a TOML or YAML file.
    - Components, each created on first access and given `bus=rt.bus`: `bus` (EventBus),
      `worker_pool` (WorkerPool), `async_pool` (AsyncWorkerPool), `cache` (TieredCache: L1,
      plus Redis when `cache.l2.url` is set), `http` (HTTPPool), `providers`
      (ProviderRegistry), `preinstaller` (Preinstaller), `mcp` (MCPConnectionPool over the
      servers of `mcp.config`). `created(name)` and `component(name)` look without creating.
    - `await start()` / `await aclose()`, or `async with Runtime(...) as rt:`.
    - Subscribers (wired by `start()`; the metrics collector as soon as the bus exists):
      the cache invalidator applies `cache.invalidated` events from other components (payload
      `tag`, `tags`, `key`, `keys`, `pattern` or `clear`) and drops the entries tagged
      `Runtime.provider_tag(name)` when that provider is unregistered or turns unhealthy; the
      metrics collector counts events per topic (`event_counts()`); the health monitor keeps
      provider and MCP server health from their events, answers a `system.health.check` event
      without a `status` by running `check_health()`, which publishes the result on the same
      topic.

    Components may be created from any thread. The asyncio ones (and `start`, `aclose`,
    `check_health`) belong to the event loop that first uses them: run the runtime on one loop.
    """

    COMPONENTS: ClassVar[tuple[str, ...]] = COMPONENT_NAMES
    """The components, in start order (`aclose` goes the other way)."""

    def __init__(self, config: HelixConfig | Mapping[str, Any] | None = None) -> None:
        if config is None or isinstance(config, Mapping):
            config = load_config(config)
        elif not isinstance(config, HelixConfig):
            raise InvalidTypeError(
                "config must be a HelixConfig, a mapping or None, got " + type(config).__name__
            )
        self._config = config
        self._lock = threading.RLock()
        self._components: dict[str, Any] = {}
        self._started = False
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        self._subscriptions: list[Subscription] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._counts: dict[str, int] = {}
        self._counts_lock = threading.Lock()
        self._provider_health: dict[str, str] = {}
        self._server_health: dict[str, dict[str, Any]] = {}
        self._startup_errors: dict[str, str] = {}
        self._last_check: float | None = None
        self._servers: dict[str, ServerConfig] | None = None

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        profile: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Runtime:
        """A runtime configured by a TOML (or YAML) file; see `helixrt.config.load_config`."""
        return cls(load_config(path, profile=profile, env=env))

    @property
    def config(self) -> HelixConfig:
        return self._config

    @property
    def started(self) -> bool:
        return self._started

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "started" if self._started else "not started"
        made = ", ".join(n for n in self.COMPONENTS if n in self._components) or "nothing"
        return f"<Runtime {state}, profile={self._config.profile!r}, created: {made}>"

    # --- components -------------------------------------------------------------------------

    @property
    def bus(self) -> EventBus:
        return self._get("bus")  # type: ignore[no-any-return]

    @property
    def worker_pool(self) -> WorkerPool:
        return self._get("worker_pool")  # type: ignore[no-any-return]

    @property
    def async_pool(self) -> AsyncWorkerPool:
        return self._get("async_pool")  # type: ignore[no-any-return]

    @property
    def cache(self) -> TieredCache:
        return self._get("cache")  # type: ignore[no-any-return]

    @property
    def http(self) -> HTTPPool:
        return self._get("http")  # type: ignore[no-any-return]

    @property
    def providers(self) -> ProviderRegistry:
        return self._get("providers")  # type: ignore[no-any-return]

    @property
    def preinstaller(self) -> Preinstaller:
        return self._get("preinstaller")  # type: ignore[no-any-return]

    @property
    def mcp(self) -> MCPConnectionPool:
        return self._get("mcp")  # type: ignore[no-any-return]

    def created(self, name: str) -> bool:
        """Whether the component `name` exists yet (never creates it)."""
        return self._check_name(name) in self._components

    def component(self, name: str) -> Any | None:
        """The component `name` if it was created, else None (never creates it)."""
        return self._components.get(self._check_name(name))

    def _check_name(self, name: str) -> str:
        if name not in self.COMPONENTS:
            raise InvalidArgumentError(
                f"no component named {name!r}; the components are: {', '.join(self.COMPONENTS)}"
            )
        return name

    def _get(self, name: str) -> Any:
        made = self._components.get(name)
        if made is not None:
            return made
        with self._lock:  # re-entrant: making `mcp` makes `preinstaller` and `bus` first
            made = self._components.get(name)
            if made is None:
                if self._closed:
                    raise RuntimeClosedError(f"the runtime is closed: it makes no {name} now")
                made = self._MAKERS[name](self)
                self._components[name] = made
                log.debug("created %s", name)
        return made

    def _make_bus(self) -> EventBus:
        from helixrt.events import EventBus

        c = self._config.event_bus
        bus = EventBus(
            buffer_size=c.buffer_size,
            on_full=c.on_full,  # type: ignore[arg-type]  # checked by the config
            history=c.history,
            max_subscribers=c.max_subscribers,
        )
        # The metrics collector: a plain handler (run on the bus's threads), from the start.
        bus.subscribe(">", self._count)
        return bus

    def _make_worker_pool(self) -> WorkerPool:
        from helixrt.pool import WorkerPool

        c = self._config.worker_pool
        return WorkerPool(
            c.workers,
            thread_name_prefix="helixrt-runtime-pool",
            queue_size=c.queue_size,
            task_timeout=c.task_timeout,
        )

    def _make_async_pool(self) -> AsyncWorkerPool:
        from helixrt.async_pool import AsyncWorkerPool

        c = self._config.async_pool
        return AsyncWorkerPool(
            c.limit,
            pending_limit=c.pending_limit,
            task_timeout=c.task_timeout,
            close_timeout=c.close_timeout,
        )

    def _make_cache(self) -> TieredCache:
        from helixrt.cache import L1Cache
        from helixrt.tiered import TieredCache

        l1, l2 = self._config.cache.l1, self._config.cache.l2
        return TieredCache(
            l2.url if l2.enabled else None,
            l1=L1Cache(maxsize=l1.max_size, ttl=l1.ttl),
            l1_ttl=l1.ttl,
            l2_ttl=l2.ttl,
            namespace=l2.key_prefix,
            compression="lz4" if l2.compression else None,
            negative_ttl=l2.negative_ttl,
            bus=self.bus,
        )

    def _make_http(self) -> HTTPPool:
        try:
            from helixrt.http import HTTPPool
        except ImportError as err:
            raise ImportError(
                f"rt.http needs aiohttp: pip install 'helixrt[http]' ({err})"
            ) from err
        from helixrt.retries import RetryPolicy

        c = self._config.http_pool
        retry = RetryPolicy(
            c.retry.max_attempts,
            base_delay=c.retry.base_delay,
            max_delay=c.retry.max_delay,
            factor=c.retry.multiplier,
        )
        return HTTPPool(
            limit=c.max_idle,
            limit_per_host=c.per_host,
            keepalive_timeout=c.idle_timeout,
            connect_timeout=c.dial_timeout,
            read_timeout=c.header_timeout,
            retry=retry,
            bus=self.bus,
        )

    def _make_providers(self) -> ProviderRegistry:
        from helixrt.providers import ProviderRegistry

        return ProviderRegistry(bus=self.bus)

    def _make_preinstaller(self) -> Preinstaller:
        from helixrt.mcp.preinstall import Preinstaller

        c = self._config.mcp
        packages = self._mcp_servers() if c.config is not None else None
        return Preinstaller(c.root, packages, bus=self.bus)

    def _make_mcp(self) -> MCPConnectionPool:
        try:
            from helixrt.mcp.pool import MCPConnectionPool
        except ImportError as err:
            raise ImportError(
                f"rt.mcp needs the mcp SDK: pip install 'helixrt[mcp]' ({err})"
            ) from err

        return MCPConnectionPool(
            self._mcp_servers(),
            preinstaller=self.preinstaller,
            max_connections=self._config.mcp.connection_pool_size,
            bus=self.bus,
        )

    def _mcp_servers(self) -> dict[str, ServerConfig]:
        """The servers of `mcp.config` (none without one); those that keep the default connect
        timeout get `mcp.connection_timeout`."""
        if self._servers is None:
            from helixrt.mcp.config import Timeouts
            from helixrt.mcp.config import load_config as load_mcp

            c = self._config.mcp
            servers = load_mcp(c.config) if c.config is not None else {}
            default = Timeouts().connect
            self._servers = {
                name: dataclasses.replace(
                    server,
                    timeouts=dataclasses.replace(server.timeouts, connect=c.connection_timeout),
                )
                if server.timeouts.connect == default
                else server
                for name, server in servers.items()
            }
        return self._servers

    _MAKERS: ClassVar[dict[str, Callable[[Runtime], Any]]] = {
        "bus": _make_bus,
        "worker_pool": _make_worker_pool,
        "async_pool": _make_async_pool,
        "cache": _make_cache,
        "http": _make_http,
        "providers": _make_providers,
        "preinstaller": _make_preinstaller,
        "mcp": _make_mcp,
    }

    # --- lifetime ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Wires the subscribers, creates the components the config asks for early
        (`lazy_loading.preload_services`, or all with `lazy_loading.enabled = false`; the
        Preinstaller with `mcp.preinstall_on_startup`; the pool for `mcp.warmup_servers` or
        `mcp.lazy_connect = false`), starts them (cache's invalidation channel, provider
        prewarm, background installs, server warmup: each step bounded by
        `lazy_loading.init_timeout`), and publishes `system.startup`. A step that fails is
        logged, published on `system.error` and shown by `health()`; it does not fail start.
        Idempotent."""
        if self._closed:
            raise RuntimeClosedError("the runtime is closed: make a new one")
        if self._started:
            return
        self._started = True
        bus = self.bus
        self._wire(bus)
        c = self._config
        wanted = set(c.lazy_loading.preload_services)
        if not c.lazy_loading.enabled:
            wanted.update(self.COMPONENTS)
        if c.mcp.preinstall_on_startup:
            wanted.add("preinstaller")
        warm = list(c.mcp.warmup_servers)
        if not c.mcp.lazy_connect:
            warm = list(self._mcp_servers())
        if warm:
            wanted.add("mcp")
        for name in self.COMPONENTS:
            if name in wanted:
                self._get(name)
        cache = self._components.get("cache")
        if cache is not None:
            await self._step("cache", cache.start)
        providers = self._components.get("providers")
        if providers is not None:
            await self._step("providers", providers.prewarm)
        if c.mcp.preinstall_on_startup:
            await self._step("preinstaller", self.preinstaller.start)
        if warm:
            await self._step("mcp", lambda: self.mcp.warmup(warm))
        self._publish(
            topics.SYSTEM_STARTUP,
            {
                "profile": c.profile,
                "components": [n for n in self.COMPONENTS if n in self._components],
                "errors": dict(self._startup_errors),
            },
        )

    async def _step(self, name: str, run: Callable[[], Awaitable[Any]]) -> None:
        try:
            async with asyncio.timeout(self._config.lazy_loading.init_timeout):
                await run()
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                error = f"not done within {self._config.lazy_loading.init_timeout:g} s"
            else:
                error = f"{type(exc).__name__}: {exc}"
            self._startup_errors[name] = error
            log.warning("starting %s failed: %s", name, error)
            self._publish(
                topics.SYSTEM_ERROR, {"component": name, "during": "startup", "error": error}
            )

    async def aclose(self) -> None:
        """Publishes `system.shutdown`, then closes every component created, in the reverse of
        `COMPONENTS` (the MCP servers first, the bus last: the others publish while they
        close). The WorkerPool gets `worker_pool.shutdown_grace` seconds to finish its queue.
        A component that fails to close is logged and the others are still closed; the first
        error is raised at the end. Idempotent (a second call waits for the first)."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        with self._lock:
            self._closed = True
        errors: list[BaseException] = []
        try:
            created = [n for n in self.COMPONENTS if n in self._components]
            self._publish(topics.SYSTEM_SHUTDOWN, {"components": created})
            for name in reversed(created):
                if name == "bus":
                    continue
                try:
                    await self._close(name, self._components[name])
                except Exception as exc:
                    log.exception("closing %s failed", name)
                    errors.append(exc)
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks))
            bus = self._components.get("bus")
            if bus is not None:
                await bus.aclose()
                self._subscriptions.clear()
        finally:
            self._closing.set_result(None)
        if errors:
            raise errors[0]

    async def _close(self, name: str, component: Any) -> None:
        if name == "worker_pool":
            grace = self._config.worker_pool.shutdown_grace
            await _in_thread(lambda: component.shutdown(wait=True, timeout=grace))
        elif name == "async_pool":
            await component.close()
        else:
            await component.aclose()
        log.debug("closed %s", name)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- subscribers ------------------------------------------------------------------------

    def _wire(self, bus: EventBus) -> None:
        self._subscriptions += [
            bus.subscribe(topics.CACHE_INVALIDATED, self._on_cache_invalidated),
            bus.subscribe(topics.PROVIDER_UNREGISTERED, self._on_provider_unregistered),
            bus.subscribe(topics.PROVIDER_HEALTH_CHANGED, self._on_provider_health),
            bus.subscribe("mcp.server.>", self._on_mcp_server),
            bus.subscribe(topics.SYSTEM_HEALTH_CHECK, self._on_health_check),
        ]

    def _count(self, event: Event) -> None:
        with self._counts_lock:
            self._counts[event.topic] = self._counts.get(event.topic, 0) + 1

    def event_counts(self) -> dict[str, int]:
        """Events seen on the bus, per topic, since it was created (the metrics collector)."""
        with self._counts_lock:
            return dict(self._counts)

    @staticmethod
    def provider_tag(name: str) -> str:
        """The cache tag of entries that depend on the provider `name` ("provider:NAME"):
        `await rt.cache.set(key, value, tags=[Runtime.provider_tag(name)])`."""
        return f"provider:{name}"

    def _cache_to_invalidate(self) -> TieredCache | None:
        """The cache, if it may hold something: created, or (when Redis is configured) made
        now, since Redis may hold entries from before."""
        cache = self._components.get("cache")
        if cache is None and not self._closed:
            l2 = self._config.cache.l2
            if l2.enabled and l2.url is not None:
                cache = self.cache
        return cache

    async def _on_cache_invalidated(self, event: Event) -> None:
        if event.source == "tiered_cache":  # the cache's own announcement of what it did
            return
        payload = event.payload
        if not isinstance(payload, Mapping):
            log.warning("ignored a cache.invalidated event from %s: %r", event.source, payload)
            return
        tags = list(payload.get("tags") or ()) + ([payload["tag"]] if payload.get("tag") else [])
        keys = list(payload.get("keys") or ()) + ([payload["key"]] if payload.get("key") else [])
        await self.invalidate_cache(
            tags=tags, keys=keys, pattern=payload.get("pattern"), clear=bool(payload.get("clear"))
        )

    async def _on_provider_unregistered(self, event: Event) -> None:
        name = _name_of(event)
        if name is not None:
            self._provider_health.pop(name, None)
            await self.invalidate_cache(tags=[self.provider_tag(name)])

    async def _on_provider_health(self, event: Event) -> None:
        name = _name_of(event)
        if name is None:
            return
        status = str(event.payload.get("new"))
        self._provider_health[name] = status
        if status in _BAD_PROVIDER:
            await self.invalidate_cache(tags=[self.provider_tag(name)])

    async def _on_mcp_server(self, event: Event) -> None:
        payload = event.payload if isinstance(event.payload, Mapping) else {}
        server = payload.get("server")
        if not isinstance(server, str):
            return
        record = self._server_health.setdefault(server, {})
        if event.topic == topics.MCP_SERVER_HEALTH_CHANGED:
            record["healthy"] = bool(payload.get("healthy"))
            record["error"] = payload.get("error")
        elif event.topic == topics.MCP_SERVER_CONNECTED:
            record["healthy"], record["error"] = True, None
        elif event.topic == topics.MCP_SERVER_DISCONNECTED:
            record["disconnect_reason"] = payload.get("reason")
        record["last_event"] = event.timestamp

    async def _on_health_check(self, event: Event) -> None:
        payload = event.payload
        if isinstance(payload, Mapping) and "status" in payload:
            return  # a result (ours, or another runtime's over a bridge)
        if not self._closed:
            await self.check_health()

    async def invalidate_cache(
        self,
        *,
        tags: list[str] | tuple[str, ...] = (),
        keys: list[str] | tuple[str, ...] = (),
        pattern: str | None = None,
        clear: bool = False,
    ) -> int:
        """Drops cache entries: those with any of `tags`, the `keys`, the keys matching the
        glob `pattern` (`*`, `?`, `[...]`; in L1 and, with Redis, in L2), or everything with
        `clear`. Returns how many entries were dropped (as the cache counts them; 0 for
        `clear`). Does nothing if the cache was never created and has no Redis."""
        cache = self._cache_to_invalidate()
        if cache is None:
            return 0
        if clear:
            await cache.clear()
            return 0
        dropped = 0
        for tag in tags:
            dropped += await cache.invalidate_tag(tag)
        if pattern is not None:
            dropped += await cache.invalidate_pattern(pattern)
        for key in sorted(set(keys)):
            dropped += await cache.delete(key)
        return dropped

    # --- health and performance -------------------------------------------------------------

    async def check_health(self) -> dict[str, Any]:
        """Runs the providers' health checks and pings the connected MCP servers (those
        created), publishes the resulting `health()` on `system.health.check`, and returns it."""
        providers = self._components.get("providers")
        if providers is not None:
            self._provider_health.update(await providers.health())
        pool = self._components.get("mcp")
        if pool is not None:
            for server, ok in (await pool.health_check()).items():
                self._server_health.setdefault(server, {})["healthy"] = ok
        self._last_check = time.time()
        result = self.health()
        self._publish(topics.SYSTEM_HEALTH_CHECK, result)
        return result

    def health(self) -> dict[str, Any]:
        """One status: "down" once closed (or if the bus is), "degraded" if a component is not
        "ok" (an unhealthy provider, a failed MCP server or package, an open breaker on Redis or
        on an HTTP host, a broken worker pool, a failed startup step), else "ok"; and each
        component's own: `{"created": False, "status": "not_created"}` for one never used."""
        components = {name: self._health_of(name) for name in self.COMPONENTS}
        statuses = {c["status"] for c in components.values() if c["created"]}
        bus = self._components.get("bus")
        if self._closed or (bus is not None and bus.closed):
            status = "down"
        elif self._startup_errors or statuses - {"ok"}:
            status = "degraded"
        else:
            status = "ok"
        return {
            "status": status,
            "started": self._started,
            "profile": self._config.profile,
            "startup_errors": dict(self._startup_errors),
            "last_check": self._last_check,
            "components": components,
        }

    def _health_of(self, name: str) -> dict[str, Any]:
        component = self._components.get(name)
        if component is None:
            return {"created": False, "status": "not_created"}
        detail: dict[str, Any] = _HEALTH[name](self, component)
        detail.setdefault("status", "ok")
        return {"created": True, **detail}

    def _bus_health(self, bus: EventBus) -> dict[str, Any]:
        stats = bus.stats()
        return {
            "status": "down" if bus.closed else "ok",
            "subscribers": stats.subscribers_active,
            "dropped": stats.dropped,
        }

    def _worker_pool_health(self, pool: WorkerPool) -> dict[str, Any]:
        broken = getattr(pool, "_broken", None)
        detail: dict[str, Any] = {"status": "down" if broken else "ok"}
        if broken:
            detail["error"] = broken
        return detail

    def _async_pool_health(self, pool: AsyncWorkerPool) -> dict[str, Any]:
        return {"status": "down" if pool.closed and not self._closed else "ok"}

    def _cache_health(self, cache: TieredCache) -> dict[str, Any]:
        l2 = self._config.cache.l2
        redis = l2.enabled and l2.url is not None
        state = cache.breaker.state
        return {
            "status": "degraded" if redis and state == "open" else "ok",
            "l2": redis,
            "breaker_state": state,
        }

    def _http_health(self, http: HTTPPool) -> dict[str, Any]:
        hosts = http.stats().hosts
        down = sorted(h for h, s in hosts.items() if s.breaker_state == "open")
        return {"status": "degraded" if down else "ok", "hosts_down": down}

    def _providers_health(self, registry: ProviderRegistry) -> dict[str, Any]:
        statuses = {name: self._provider_health.get(name, "unknown") for name in registry.names()}
        bad = any(s in _BAD_PROVIDER for s in statuses.values())
        return {"status": "degraded" if bad else "ok", "providers": statuses}

    def _preinstaller_health(self, preinstaller: Preinstaller) -> dict[str, Any]:
        states = {name: s.state for name, s in preinstaller.status().items()}
        failed = sorted(name for name, state in states.items() if state == "failed")
        return {"status": "degraded" if failed else "ok", "packages": states, "failed": failed}

    def _mcp_health(self, pool: MCPConnectionPool) -> dict[str, Any]:
        servers: dict[str, dict[str, Any]] = {}
        for name, stats in pool.stats().items():
            servers[name] = {"state": stats.state, **self._server_health.get(name, {})}
        bad = any(s["state"] in _BAD_SERVER or s.get("healthy") is False for s in servers.values())
        return {"status": "degraded" if bad else "ok", "servers": servers}

    def performance(self) -> dict[str, Any]:
        """JSON-able sections, one per component family: `worker_pool`, `async_pool`,
        `event_bus`, `cache`, `http_pool`, `providers`, `mcp`. Each has `created`, and every
        field of the component's `stats()` (zeros for one not created yet, so that readers see
        the same keys from the start)."""
        return {
            "worker_pool": self._section("worker_pool", "helixrt.pool", "PoolStats"),
            "async_pool": self._section("async_pool", "helixrt.async_pool", "AsyncPoolStats"),
            "event_bus": {
                **self._section("bus", "helixrt.events", "BusStats"),
                "events_by_topic": self.event_counts(),
            },
            "cache": self._cache_section(),
            "http_pool": self._section("http", "helixrt.http", "HTTPStats"),
            "providers": self._providers_section(),
            "mcp": self._mcp_section(),
        }

    def _section(self, name: str, module: str, stats_class: str) -> dict[str, Any]:
        component = self._components.get(name)
        if component is None:
            return {"created": False, **_zeros(module, stats_class)}
        return {"created": True, **_jsonable(component.stats())}

    def _cache_section(self) -> dict[str, Any]:
        section = self._section("cache", "helixrt.tiered", "TieredStats")
        cache = self._components.get("cache")
        section["l1"] = (
            _jsonable(cache.l1.stats()) if cache is not None else _zeros("helixrt.cache", "L1Stats")
        )
        l2 = self._config.cache.l2
        section["l2_enabled"] = l2.enabled and l2.url is not None
        return section

    def _providers_section(self) -> dict[str, Any]:
        registry = self._components.get("providers")
        if registry is None:
            return {"created": False, "providers": {}}
        names = registry.names()
        return {
            "created": True,
            "providers": {n: self._provider_health.get(n, "unknown") for n in names},
        }

    def _mcp_section(self) -> dict[str, Any]:
        pool = self._components.get("mcp")
        servers = {} if pool is None else {k: _jsonable(v) for k, v in pool.stats().items()}
        preinstaller = self._components.get("preinstaller")
        return {
            "created": pool is not None,
            "active_connections": sum(1 for s in servers.values() if s["state"] == "connected"),
            "servers": servers,
            "preinstall": {
                "created": preinstaller is not None,
                **(
                    _jsonable(preinstaller.stats())
                    if preinstaller is not None
                    else _zeros("helixrt.mcp.preinstall", "PreinstallStats")
                ),
            },
        }

    # --- helpers ----------------------------------------------------------------------------

    def _publish(self, topic: str, payload: Any) -> None:
        bus = self._components.get("bus")
        if bus is None or bus.closed:
            return
        try:
            bus.publish(topic, payload, source=_SOURCE)
        except Exception:
            log.exception("publishing %s failed", topic)


_HEALTH: dict[str, Callable[[Runtime, Any], dict[str, Any]]] = {
    "bus": Runtime._bus_health,
    "worker_pool": Runtime._worker_pool_health,
    "async_pool": Runtime._async_pool_health,
    "cache": Runtime._cache_health,
    "http": Runtime._http_health,
    "providers": Runtime._providers_health,
    "preinstaller": Runtime._preinstaller_health,
    "mcp": Runtime._mcp_health,
}


def _name_of(event: Event) -> str | None:
    payload = event.payload
    name = payload.get("name") if isinstance(payload, Mapping) else None
    return name if isinstance(name, str) else None


async def _in_thread(fn: Callable[[], Any]) -> Any:
    """Runs a blocking `fn` on a thread of its own (not the loop's executor, whose threads
    outlive the call) and waits for it without blocking the event loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def run() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:
            result, error = None, exc
        loop.call_soon_threadsafe(settle, result, error)

    thread = threading.Thread(target=run, name="helixrt-runtime-close", daemon=True)
    thread.start()
    try:
        return await done
    finally:
        thread.join()


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


_ZERO_BY_TYPE = {"int": 0, "float": 0.0, "str": "", "bool": False}
_ZEROS: dict[tuple[str, str], dict[str, Any]] = {}


def _zeros(module: str, stats_class: str) -> dict[str, Any]:
    """A stats dataclass's fields, all zero (None for optional ones, {} for mappings)."""
    key = (module, stats_class)
    cached = _ZEROS.get(key)
    if cached is None:
        import importlib

        cls = getattr(importlib.import_module(module), stats_class)
        cached = {}
        for f in dataclasses.fields(cls):
            kind = str(f.type)
            if "None" in kind:
                cached[f.name] = None
            elif kind.startswith(("dict", "Mapping")):
                cached[f.name] = {}
            else:
                cached[f.name] = _ZERO_BY_TYPE.get(kind, 0)
        if "breaker_state" in cached:
            cached["breaker_state"] = "closed"
        _ZEROS[key] = cached
    return dict(cached)
