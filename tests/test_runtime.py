"""helixrt.Runtime: lazy components, start and close order, the wiring of the event diagram,
health and performance, with a real Redis and a real MCP server process."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

import helixrt
from helixrt import topics
from helixrt.errors import HelixError, InvalidArgumentError
from helixrt.runtime import Runtime, RuntimeClosedError

T = TypeVar("T")
FIXTURE = str(Path(__file__).parent / "mcp_fixtures" / "raw_server.py")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def settings(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """A config that keeps the Preinstaller out of the user's cache."""
    mcp = {"root": str(tmp_path / "mcp"), **sections.pop("mcp", {})}
    return {"mcp": mcp, **sections}


def our_threads() -> list[str]:
    prefixes = ("helixrt-runtime", "helixrt-bus-dispatch")
    return [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]


def test_runtime_is_exported_lazily() -> None:
    assert helixrt.Runtime is Runtime
    assert "Runtime" in helixrt.__all__


def test_components_are_created_once_on_first_access_from_many_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[str, int] = {}

    def counting(name: str) -> Callable[[Runtime], Any]:
        make = Runtime._MAKERS[name]

        def wrapper(rt: Runtime) -> Any:
            calls[name] = calls.get(name, 0) + 1
            time.sleep(0.01)  # widen the window for a second creation
            return make(rt)

        return wrapper

    for name in ("bus", "worker_pool", "cache", "providers"):
        monkeypatch.setitem(Runtime._MAKERS, name, counting(name))
    rt = Runtime(settings(tmp_path))
    barrier = threading.Barrier(8)
    seen: list[tuple[Any, ...]] = []

    def grab() -> None:
        barrier.wait()
        seen.append((rt.worker_pool, rt.cache, rt.providers, rt.bus))

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8
    assert all(all(a is b for a, b in zip(s, seen[0], strict=True)) for s in seen)
    assert calls == {"bus": 1, "worker_pool": 1, "cache": 1, "providers": 1}
    assert rt.cache._bus is rt.bus  # components get the runtime's bus

    async def from_tasks() -> None:
        async def take() -> Any:
            await asyncio.sleep(0)
            return rt.async_pool

        pools = await asyncio.gather(*(take() for _ in range(20)))
        assert all(p is pools[0] for p in pools)
        await rt.aclose()

    run(from_tasks())


def test_created_and_component_never_create(tmp_path: Path) -> None:
    rt = Runtime(settings(tmp_path))
    assert Runtime.COMPONENTS == (
        "bus",
        "worker_pool",
        "async_pool",
        "cache",
        "http",
        "providers",
        "preinstaller",
        "mcp",
    )
    for name in Runtime.COMPONENTS:
        assert not rt.created(name)
        assert rt.component(name) is None
    rt.health()
    rt.performance()
    assert not any(rt.created(name) for name in Runtime.COMPONENTS)
    cache = rt.cache
    assert rt.created("cache")
    assert rt.component("cache") is cache
    assert rt.created("bus")  # the cache was given the bus
    assert not rt.created("http")
    with pytest.raises(InvalidArgumentError, match="the components are: bus, worker_pool"):
        rt.created("pool")
    run(rt.aclose())


def test_start_creates_in_order_and_aclose_closes_in_reverse_leaving_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helixrt.async_pool import AsyncWorkerPool
    from helixrt.events import EventBus
    from helixrt.http import HTTPPool
    from helixrt.mcp.pool import MCPConnectionPool
    from helixrt.mcp.preinstall import Preinstaller
    from helixrt.pool import WorkerPool
    from helixrt.providers import ProviderRegistry
    from helixrt.tiered import TieredCache

    created: list[str] = []
    closed: list[str] = []
    for name in Runtime.COMPONENTS:
        make = Runtime._MAKERS[name]

        def wrapper(rt: Runtime, make: Any = make, name: str = name) -> Any:
            created.append(name)
            return make(rt)

        monkeypatch.setitem(Runtime._MAKERS, name, wrapper)

    def recording(cls: type, method: str, name: str) -> None:
        original = getattr(cls, method)
        if asyncio.iscoroutinefunction(original):

            async def closer(self: Any, *args: Any, **kwargs: Any) -> Any:
                closed.append(name)
                return await original(self, *args, **kwargs)
        else:

            def closer(self: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
                closed.append(name)
                return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, closer)

    recording(EventBus, "aclose", "bus")
    recording(WorkerPool, "shutdown", "worker_pool")
    recording(AsyncWorkerPool, "close", "async_pool")
    recording(TieredCache, "aclose", "cache")
    recording(HTTPPool, "aclose", "http")
    recording(ProviderRegistry, "aclose", "providers")
    recording(Preinstaller, "aclose", "preinstaller")
    recording(MCPConnectionPool, "aclose", "mcp")

    threads_before = set(our_threads())

    async def main() -> None:
        rt = Runtime(settings(tmp_path, lazy_loading={"enabled": False}))
        async with rt:
            assert rt.started
            assert all(rt.created(name) for name in Runtime.COMPONENTS)
            future = rt.worker_pool.submit(lambda: 21 * 2)
            assert future.result(timeout=5) == 42
            assert await rt.async_pool.run(asyncio.sleep(0, "done")) == "done"
            assert rt.health()["status"] == "ok"
        assert asyncio.all_tasks() == {asyncio.current_task()}
        await rt.aclose()  # idempotent
        assert rt.closed
        assert rt.health()["status"] == "down"

    run(main())
    assert created == list(Runtime.COMPONENTS)
    assert closed == list(reversed(Runtime.COMPONENTS))
    assert set(our_threads()) <= threads_before


def test_a_closed_runtime_makes_nothing_and_cannot_start(tmp_path: Path) -> None:
    async def main() -> None:
        rt = Runtime(settings(tmp_path))
        rt.providers  # noqa: B018 - create one
        await rt.aclose()
        assert rt.providers is rt.component("providers")  # still readable
        with pytest.raises(RuntimeClosedError, match="closed") as info:
            rt.http  # noqa: B018
        assert isinstance(info.value, HelixError)
        with pytest.raises(RuntimeClosedError):
            await rt.start()

    run(main())


def test_startup_and_shutdown_events_and_the_metrics_collector(tmp_path: Path) -> None:
    async def main() -> None:
        rt = Runtime(settings(tmp_path, lazy_loading={"preload_services": ["provider_registry"]}))
        seen: list[tuple[str, Any]] = []
        rt.bus.subscribe("system.>", lambda e: seen.append((e.topic, e.payload)))
        async with rt:
            assert rt.created("providers")
            assert not rt.created("cache")
            for _ in range(3):
                rt.bus.publish("request.received", {"n": 1})
            await eventually(lambda: rt.event_counts().get("request.received") == 3)
            perf = rt.performance()
            assert perf["event_bus"]["events_by_topic"]["request.received"] == 3
            assert perf["event_bus"]["published"] >= 4
        assert [topic for topic, _ in seen] == [topics.SYSTEM_STARTUP, topics.SYSTEM_SHUTDOWN]
        startup = seen[0][1]
        assert startup["components"] == ["bus", "providers"]
        assert rt.event_counts()[topics.SYSTEM_STARTUP] == 1

    run(main())


def test_the_invalidator_drops_a_providers_entries_and_applies_others_invalidations(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with Runtime(settings(tmp_path)) as rt:
            cache, providers = rt.cache, rt.providers
            tag = Runtime.provider_tag("openai")
            assert tag == "provider:openai"
            await cache.set("openai:q1", "a1", tags=[tag])
            await cache.set("openai:q2", "a2", tags=[tag])
            await cache.set("other", "kept")
            providers.register("openai", lambda: object())
            providers.unregister("openai")
            await eventually(lambda: "openai:q1" not in cache.l1 and "openai:q2" not in cache.l1)
            assert await cache.get("other") == "kept"

            # A provider turning unhealthy drops its entries too.
            providers.register("flaky", lambda: object(), health_check=lambda _p: False)
            await providers.get("flaky")
            await cache.set("flaky:q", "x", tags=[Runtime.provider_tag("flaky")])
            assert (await providers.health())["flaky"] == "unhealthy"
            await eventually(lambda: "flaky:q" not in cache.l1)
            assert rt.health()["components"]["providers"]["providers"] == {"flaky": "unhealthy"}
            assert rt.health()["status"] == "degraded"

            # cache.invalidated from another component: a pattern, keys, a tag.
            await cache.set("user:1", 1)
            await cache.set("user:2", 2)
            await cache.set("session:1", 3, tags=["sessions"])
            rt.bus.publish(topics.CACHE_INVALIDATED, {"pattern": "user:*"}, source="ops")
            rt.bus.publish(topics.CACHE_INVALIDATED, {"tag": "sessions"}, source="ops")
            await eventually(lambda: not {"user:1", "user:2", "session:1"} & set(cache.l1))
            assert await cache.get("other") == "kept"
            assert rt.event_counts()[topics.CACHE_INVALIDATED] >= 4  # ours and the cache's

    run(main())


def test_health_checks_are_answered_and_published(tmp_path: Path) -> None:
    async def main() -> None:
        async with Runtime(settings(tmp_path)) as rt:
            rt.providers.register("ok", lambda: object())
            await rt.providers.get("ok")
            results: list[Any] = []
            rt.bus.subscribe(
                topics.SYSTEM_HEALTH_CHECK,
                lambda e: results.append(e.payload) if "status" in e.payload else None,
            )
            rt.bus.publish(topics.SYSTEM_HEALTH_CHECK, {}, source="a-probe")
            await eventually(lambda: len(results) == 1)
            assert results[0]["status"] == "ok"
            assert results[0]["components"]["providers"]["providers"] == {"ok": "healthy"}
            assert rt.health()["last_check"] is not None

    run(main())


def test_health_and_performance_sections_have_the_same_keys_before_and_after(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        rt = Runtime(settings(tmp_path))
        before = rt.performance()
        health = rt.health()
        assert health["status"] == "ok"
        assert not health["started"]
        assert health["components"]["cache"] == {"created": False, "status": "not_created"}
        assert set(before) == {
            "worker_pool",
            "async_pool",
            "event_bus",
            "cache",
            "http_pool",
            "providers",
            "mcp",
        }
        assert before["worker_pool"]["created"] is False
        assert before["worker_pool"]["completed"] == 0
        assert before["cache"]["hit_ratio"] == 0.0
        assert before["cache"]["l1"]["hits"] == 0
        assert before["cache"]["breaker_state"] == "closed"
        assert before["http_pool"]["requests"] == 0
        assert before["http_pool"]["hosts"] == {}
        assert before["mcp"] == {
            "created": False,
            "active_connections": 0,
            "servers": {},
            "preinstall": {
                "created": False,
                "installed": 0,
                "failed": 0,
                "installing": 0,
                "queued": 0,
                "installs": 0,
                "install_seconds": 0.0,
            },
        }
        async with rt:
            rt.worker_pool.submit(lambda: None).result(timeout=5)
            await rt.cache.set("k", "v")
            assert await rt.cache.get("k") == "v"
            rt.http  # noqa: B018
            after = rt.performance()
            json.dumps(after)
            json.dumps(rt.health())
            for section in ("worker_pool", "async_pool", "event_bus", "cache", "http_pool"):
                assert set(after[section]) == set(before[section]), section
            assert after["worker_pool"]["created"] is True
            assert after["worker_pool"]["completed"] == 1
            assert after["cache"]["l1_hits"] == 1
            assert after["cache"]["l2_enabled"] is False
            components = rt.health()["components"]
            assert components["cache"]["l2"] is False
            assert components["http"] == {"created": True, "status": "ok", "hosts_down": []}

    run(main())


def test_the_cache_uses_redis_from_the_environment(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELIXRT_CACHE_L2_URL", redis_url)
    monkeypatch.setenv("HELIXRT_CACHE_L2_KEY_PREFIX", "rt-test:")

    async def main() -> None:
        async with Runtime(settings(tmp_path)) as first, Runtime(settings(tmp_path)) as second:
            assert first.config.cache.l2.url == redis_url
            await first.cache.set("answer", {"n": 42}, tags=[Runtime.provider_tag("p")])
            assert await second.cache.get("answer") == {"n": 42}  # through Redis
            perf = second.performance()["cache"]
            assert perf["l2_enabled"] is True
            assert perf["l2_hits"] == 1
            assert second.health()["components"]["cache"]["l2"] is True
            # A provider unregistered in `second` drops the entry from Redis, for everyone.
            second.providers.register("p", lambda: object())
            second.providers.unregister("p")
            await eventually(lambda: "answer" not in second.cache.l1)
            await eventually(lambda: "answer" not in first.cache.l1)  # told through Redis
            assert await first.cache.get("answer") is None
            assert await second.cache.get("answer") is None

    run(main())


def test_from_file_warms_up_mcp_servers_and_reports_them(tmp_path: Path) -> None:
    servers = {"mcpServers": {"fx": {"command": sys.executable, "args": [FIXTURE]}}}
    (tmp_path / "servers.json").write_text(json.dumps(servers))
    path = tmp_path / "helixrt.toml"
    path.write_text(
        f'[mcp]\nconfig = "servers.json"\nroot = "{tmp_path / "root"}"\n'
        'warmup_servers = ["fx"]\nconnection_timeout = "10s"\n'
    )

    async def main() -> None:
        rt = Runtime.from_file(path, env={}, profile="dev")
        assert rt.config.profile == "dev"
        assert rt.config.worker_pool.workers == 2
        async with rt:
            assert rt.created("mcp")
            assert rt.created("preinstaller")
            assert rt.mcp.state("fx") == "connected"
            perf = rt.performance()["mcp"]
            assert perf["created"] is True
            assert perf["active_connections"] == 1
            assert perf["servers"]["fx"]["state"] == "connected"
            server = rt.health()["components"]["mcp"]["servers"]["fx"]
            assert server["state"] == "connected"
            await eventually(lambda: rt.event_counts().get(topics.MCP_SERVER_CONNECTED) == 1)
            assert rt.health()["status"] == "ok"
        assert rt.mcp.state("fx") == "closed"
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(main())


def test_a_failing_startup_step_degrades_health_without_failing_start(tmp_path: Path) -> None:
    servers = {
        "mcpServers": {"gone": {"command": sys.executable, "args": [FIXTURE, "--exit-now", "3"]}}
    }
    (tmp_path / "servers.json").write_text(json.dumps(servers))
    config = settings(
        tmp_path,
        mcp={"config": str(tmp_path / "servers.json"), "warmup_servers": ["gone"]},
        lazy_loading={"init_timeout": "10s"},
    )

    async def main() -> None:
        errors: list[Any] = []
        rt = Runtime(config)
        rt.bus.subscribe(topics.SYSTEM_ERROR, lambda e: errors.append(e.payload))
        async with rt:
            health = rt.health()
            assert health["status"] == "degraded"
            assert "mcp" in health["startup_errors"]
            await eventually(lambda: len(errors) == 1)
            assert errors[0]["component"] == "mcp"
            assert errors[0]["during"] == "startup"

    run(main())


def test_bad_config_types() -> None:
    with pytest.raises(TypeError, match="HelixConfig, a mapping or None"):
        Runtime(42)  # type: ignore[arg-type]
