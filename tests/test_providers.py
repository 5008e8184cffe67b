"""ProviderRegistry: created once on first use, prewarmed, health-checked, announced, closed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import helixrt
from helixrt import CircuitBreaker, ProviderRegistry, topics
from helixrt.errors import CircuitOpenError, InvalidArgumentError, InvalidTypeError
from helixrt.providers import UnknownProviderError


class Recorder:
    """Records what the registry publishes (the event bus is not part of this test)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str]] = []

    def publish(self, topic: str, payload: dict[str, Any], *, source: str) -> None:
        self.events.append((topic, payload, source))


class Client:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self.healthy = True

    async def aclose(self) -> None:
        await asyncio.sleep(0)
        self.closed = True


class SyncClient:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_provider_is_created_once_on_first_use() -> None:
    created: list[str] = []

    async def make() -> Client:
        created.append("openai")
        await asyncio.sleep(0.01)
        return Client("openai")

    async def main() -> None:
        registry = ProviderRegistry()
        registry.register("openai", make)
        assert created == []
        first, *others = await asyncio.gather(*(registry.get("openai") for _ in range(20)))
        assert all(client is first for client in others)
        assert created == ["openai"]
        assert registry.names() == ["openai"]
        await registry.aclose()
        assert first.closed

    asyncio.run(main())


def test_unknown_and_duplicate_names() -> None:
    async def main() -> None:
        registry = ProviderRegistry()
        registry.register("a", SyncClient)
        with pytest.raises(UnknownProviderError, match="no provider named 'b' \\(registered: a\\)"):
            await registry.get("b")
        with pytest.raises(KeyError):
            registry.unregister("b")
        with pytest.raises(InvalidArgumentError, match="'a' is already registered"):
            registry.register("a", SyncClient)
        with pytest.raises(InvalidArgumentError, match="non-empty str"):
            registry.register("", SyncClient)
        with pytest.raises(InvalidTypeError, match="health_check must be callable"):
            registry.register("c", SyncClient, health_check="yes")  # type: ignore[arg-type]
        with pytest.raises(InvalidTypeError, match=r"breaker must be a helixrt\.CircuitBreaker"):
            registry.register("d", SyncClient, breaker=object())  # type: ignore[arg-type]

    asyncio.run(main())


def test_prewarm_creates_the_eager_ones_and_reports_failures() -> None:
    def broken() -> None:
        raise ConnectionError("no route to the API")

    async def main() -> None:
        registry = ProviderRegistry()
        registry.register("eager", SyncClient, prewarm=True)
        registry.register("lazy", SyncClient)
        registry.register("broken", broken, prewarm=True)
        errors = await registry.prewarm()
        assert errors["eager"] is None
        assert isinstance(errors["broken"], ConnectionError)
        assert set(errors) == {"eager", "broken"}
        statuses = await registry.health()
        assert statuses == {"eager": "healthy", "lazy": "not_created", "broken": "not_created"}
        await registry.aclose()

    asyncio.run(main())


def test_health_checks_and_announced_changes() -> None:
    bus = Recorder()
    client = Client("anthropic")

    async def check(provider: Client) -> bool:
        return provider.healthy

    async def main() -> None:
        registry = ProviderRegistry(bus=bus)
        registry.register("anthropic", lambda: client, health_check=check)
        registry.register("failing-check", SyncClient, health_check=lambda p: 1 / 0)
        await registry.get("anthropic")
        await registry.get("failing-check")
        assert await registry.health() == {"anthropic": "healthy", "failing-check": "unhealthy"}
        client.healthy = False
        assert (await registry.health())["anthropic"] == "unhealthy"
        assert (await registry.health())["anthropic"] == "unhealthy"  # no change, no event
        registry.unregister("failing-check")
        await registry.aclose()

    asyncio.run(main())
    changes = [
        (p["name"], p["old"], p["new"])
        for t, p, _ in bus.events
        if t == topics.PROVIDER_HEALTH_CHANGED
    ]
    assert changes == [
        ("failing-check", "healthy", "unhealthy"),
        ("anthropic", "healthy", "unhealthy"),
    ]
    assert [t for t, _, _ in bus.events if t != topics.PROVIDER_HEALTH_CHANGED] == [
        topics.PROVIDER_REGISTERED,
        topics.PROVIDER_REGISTERED,
        topics.PROVIDER_UNREGISTERED,
    ]
    assert {source for _, _, source in bus.events} == {"provider_registry"}


def test_an_open_breaker_keeps_the_provider_from_being_handed_out() -> None:
    breaker = CircuitBreaker("openai", failure_threshold=1, reset_timeout=60.0)

    async def main() -> None:
        registry = ProviderRegistry()
        registry.register("openai", SyncClient, breaker=breaker)
        await registry.get("openai")
        breaker.force_open()
        with pytest.raises(CircuitOpenError):
            await registry.get("openai")
        assert (await registry.health())["openai"] == "open"
        breaker.reset()
        assert (await registry.health())["openai"] == "healthy"
        await registry.aclose()

    asyncio.run(main())


def test_unregister_and_aclose_close_what_was_created(caplog: pytest.LogCaptureFixture) -> None:
    sync_client, async_client = SyncClient(), Client("x")

    class Unclosable:
        def close(self) -> None:
            raise RuntimeError("socket already gone")

    async def main() -> None:
        async with ProviderRegistry() as registry:
            registry.register("sync", lambda: sync_client)
            registry.register("async", lambda: async_client)
            registry.register("unclosable", Unclosable)
            registry.register("never-used", SyncClient)
            for name in ("sync", "async", "unclosable"):
                await registry.get(name)
            registry.unregister("sync")  # closes on the loop; aclose() waits for it
            assert registry.names() == ["async", "never-used", "unclosable"]
        assert sync_client.closed
        assert async_client.closed

    asyncio.run(main())
    assert "closing provider 'unclosable' failed" in caplog.text


def test_unregister_without_a_running_loop_closes_at_once() -> None:
    client = SyncClient()
    registry = ProviderRegistry()
    registry.register("sync", lambda: client)

    async def use() -> None:
        await registry.get("sync")

    asyncio.run(use())
    registry.unregister("sync")
    assert client.closed


def test_lazy_names() -> None:
    assert helixrt.ProviderRegistry is ProviderRegistry
    assert helixrt.topics.PROVIDER_REGISTERED == "provider.registered"
