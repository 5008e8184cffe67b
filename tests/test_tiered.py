"""TieredCache and SyncTieredCache against a real redis-server."""

from __future__ import annotations

import asyncio
import collections.abc
import inspect
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aredis

from helixrt import L1Cache, topics
from helixrt.codec import Codec
from helixrt.errors import HelixError, InvalidArgumentError, InvalidTypeError
from helixrt.events import EventBus
from helixrt.tiered import L2Error, SyncTieredCache, TieredCache

pytestmark = pytest.mark.integration


@pytest.fixture
def ns() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def announced(cache: TieredCache, count: int) -> None:
    """Waits until `cache` has received `count` invalidations. A read of Redis that the
    announcement of the write it read overtakes is (rightly) not kept in L1, so a test of what
    L1 keeps lets the writer's announcements arrive first."""
    deadline = time.monotonic() + 2
    while cache.stats().invalidations_received < count and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert cache.stats().invalidations_received == count


def test_l1_only_without_redis() -> None:
    async def main() -> None:
        async with TieredCache() as cache:
            await cache.set("a", {"x": 1}, tags=["t"])
            await cache.set_many({"b": 2, "c": 3})
            assert await cache.get("a") == {"x": 1}
            assert await cache.get("zz", "dflt") == "dflt"
            assert await cache.get_many(["a", "b", "zz"]) == {"a": {"x": 1}, "b": 2}
            assert await cache.invalidate_tag("t") == 1
            assert await cache.get("a") is None
            assert await cache.delete("b") is True
            assert await cache.delete("b") is False
            await cache.clear()
            assert await cache.get("c") is None
            stats = cache.stats()
            assert stats.l2_errors == 0
            assert stats.l1_hits == 3

    run(main())


def test_an_l1_hit_is_a_finished_awaitable_that_passes_for_a_coroutine() -> None:
    """The L1 hit path returns no coroutine (it would cost more than the lookup), so what it
    returns must go everywhere a coroutine goes."""

    async def main() -> TieredCache:
        cache = TieredCache()
        await cache.set("k", {"x": 1})
        hit = cache.get("k")
        assert not inspect.iscoroutine(hit)  # the fast path was taken
        assert isinstance(hit, collections.abc.Coroutine)
        assert await hit == {"x": 1}
        assert await hit == {"x": 1}  # like a done future: awaiting again gives the value
        assert await asyncio.create_task(cache.get("k")) == {"x": 1}
        assert await asyncio.gather(cache.get("k"), cache.get("nope", 7)) == [{"x": 1}, 7]
        assert await asyncio.wait_for(cache.get("k"), 1) == {"x": 1}
        with pytest.raises(StopIteration) as stop:
            cache.get("k").send(None)
        assert stop.value.value == {"x": 1}
        with pytest.raises(KeyError, match="thrown"):
            cache.get("k").throw(KeyError("thrown"))
        cache.get("k").close()
        # a miss is a coroutine; a key of the wrong type is refused when awaited, as before
        miss = cache.get("nope")
        assert inspect.iscoroutine(miss)
        assert await miss is None
        with pytest.raises(InvalidTypeError, match="keys must be str, got list"):
            await cache.get(["unhashable"])  # type: ignore[arg-type]
        with pytest.raises(InvalidTypeError, match="keys must be str, got int"):
            await cache.get(5)  # type: ignore[arg-type]
        stats = cache.stats()
        assert (stats.l1_hits, stats.l1_misses) == (7, 2)
        await cache.aclose()
        return cache

    cache = run(main())
    assert isinstance(cache, TieredCache)
    assert asyncio.run(cache.get("k")) == {"x": 1}  # asyncio.run takes it too


def test_set_writes_both_tiers_and_get_promotes_with_the_remaining_ttl(
    redis_url: str, ns: str, raw: redis.Redis
) -> None:
    async def main() -> None:
        async with (
            TieredCache(redis_url, namespace=ns, l1_ttl=60) as a,
            TieredCache(redis_url, namespace=ns, l1_ttl=60) as b,
        ):
            await a.set("k", ["v", 1], ttl=5)
            assert 4000 < raw.pttl(f"{ns}k") <= 5000
            assert a.l1.remaining_ttl("k") == pytest.approx(5, abs=0.5)
            await announced(b, 1)
            assert await b.get("k") == ["v", 1]  # from Redis
            assert b.stats().l2_hits == 1
            assert b.l1.remaining_ttl("k") == pytest.approx(5, abs=0.5)  # not l1_ttl
            assert await b.get("k") == ["v", 1]
            assert b.stats().l1_hits == 1
            await a.set("long", 1)  # l2_ttl by default
            assert 1_790_000 < raw.pttl(f"{ns}long") <= 1_800_000
            assert a.l1.remaining_ttl("long") == pytest.approx(60, abs=1)

    run(main())


def test_an_overwrite_reaches_the_other_instances_l1_within_100_ms(redis_url: str, ns: str) -> None:
    async def main() -> float:
        async with (
            TieredCache(redis_url, namespace=ns) as a,
            TieredCache(redis_url, namespace=ns) as b,
        ):
            await a.set("k", "old")
            await announced(b, 1)
            assert await b.get("k") == "old"
            assert b.l1.get("k") == "old"
            started = time.monotonic()
            await a.set("k", "new")
            while await b.get("k") != "new":
                assert time.monotonic() - started < 0.1, "stale beyond 100 ms"
                await asyncio.sleep(0.001)
            staleness = time.monotonic() - started
            await a.delete("k")
            while await b.get("k") is not None:
                assert time.monotonic() - started < 0.2
                await asyncio.sleep(0.001)
            assert b.stats().invalidations_received >= 2
            return staleness

    staleness = run(main())
    print(f"staleness on loopback: {staleness * 1000:.2f} ms")


def test_tags_live_in_redis_and_invalidate_every_instance(
    redis_url: str, ns: str, raw: redis.Redis
) -> None:
    async def main() -> None:
        async with (
            TieredCache(redis_url, namespace=ns) as a,
            TieredCache(redis_url, namespace=ns) as b,
        ):
            await a.set("u1", 1, tags=["user:1"], ttl=100)
            await a.set("u2", 2, tags=["user:1", "all"], ttl=50)
            await a.set("other", 3, tags=["all"])
            assert raw.smembers(f"{ns}__tag__:user:1") == {b"u1", b"u2"}
            # the tag set lives at least as long as its longest-lived member
            assert raw.pttl(f"{ns}__tag__:user:1") > 99_000
            assert raw.pttl(f"{ns}__tag__:all") > 1_799_000
            await announced(b, 3)
            assert await b.get("u1") == 1  # promoted into b's L1, which knows no tags
            assert await b.get("u2") == 2
            assert b.l1.get("u1") == 1
            assert b.l1.get("u2") == 2
            assert await a.invalidate_tag("user:1") == 2
            assert raw.exists(f"{ns}u1", f"{ns}u2", f"{ns}__tag__:user:1") == 0
            deadline = time.monotonic() + 1
            while b.l1.get("u1") is not None or b.l1.get("u2") is not None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.001)
            assert await b.get("u1") is None
            assert await b.get("other") == 3

    run(main())


def test_clear_empties_only_its_namespace(redis_url: str, ns: str, raw: redis.Redis) -> None:
    raw.set("unrelated", b"1")
    raw.set(f"{ns[:-1]}x", b"1")  # shares a prefix but not the namespace

    async def main() -> None:
        async with TieredCache(redis_url, namespace=ns) as cache:
            await cache.set_many({f"k{i}": i for i in range(2500)}, tags=["t"])
            assert len(list(raw.scan_iter(match=f"{ns}*"))) == 2501
            await cache.clear()
            assert list(raw.scan_iter(match=f"{ns}*")) == []
            assert await cache.get("k1") is None

    run(main())
    assert raw.get("unrelated") == b"1"
    assert raw.get(f"{ns[:-1]}x") == b"1"


def test_gets_issued_in_one_loop_turn_share_one_mget(
    redis_url: str, ns: str, raw: redis.Redis
) -> None:
    def calls(command: str) -> int:
        stats = raw.info("commandstats").get(f"cmdstat_{command}", {"calls": 0})
        return int(stats["calls"])

    async def main() -> None:
        async with (
            TieredCache(redis_url, namespace=ns) as writer,
            TieredCache(redis_url, namespace=ns) as reader,
        ):
            await writer.set_many({f"k{i}": i for i in range(64)})
            gets, mgets = calls("get"), calls("mget")
            keys = [f"k{i}" for i in range(64)] + ["k3", "missing"]
            values = await asyncio.gather(*(reader.get(k) for k in keys))
            assert values == [*range(64), 3, None]
            # the first goes at once as a GET, the 65 after it share one MGET
            assert (calls("get"), calls("mget")) == (gets + 1, mgets + 1)
            assert reader.stats().batched_gets == len(keys) - 1
            # a lone get is a plain GET, no batch
            reader.l1.clear()
            assert await reader.get("k5") == 5
            assert (calls("get"), calls("mget")) == (gets + 2, mgets + 1)

    run(main())


@pytest.mark.parametrize(
    "bad",
    [b"garbage bytes", b"\x01\x01\x01", b"\x09" + b"\x00" * 20],
    ids=["garbage", "truncated", "unknown-version"],
)
def test_undecodable_values_are_counted_misses(
    redis_url: str, ns: str, raw: redis.Redis, bad: bytes
) -> None:
    async def main() -> None:
        async with TieredCache(redis_url, namespace=ns) as cache:
            raw.set(f"{ns}k", bad)
            assert await cache.get("k", "default") == "default"
            stats = cache.stats()
            assert stats.decode_errors == 1
            assert stats.l2_misses == 1
            assert stats.l2_errors == 0

    run(main())


def test_a_truncated_real_value_is_a_miss(redis_url: str, ns: str, raw: redis.Redis) -> None:
    async def main() -> None:
        async with TieredCache(redis_url, namespace=ns, compress_min_bytes=10) as cache:
            await cache.set("k", "x" * 5000)
            value = raw.get(f"{ns}k")
            assert value is not None
            raw.set(f"{ns}k", value[: len(value) // 2])
            cache.l1.clear()
            assert await cache.get("k") is None
            assert cache.stats().decode_errors == 1

    run(main())


def test_a_failing_redis_degrades_to_l1_and_the_breaker_opens(ns: str) -> None:
    from helixrt._redis_server import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    async def main() -> None:
        async with TieredCache(dead, namespace=ns, timeout=0.2) as cache:
            for i in range(10):
                await cache.set(f"k{i}", i)  # L1 only, no exception
                assert await cache.get(f"k{i}") == i
                assert await cache.get(f"absent{i}") is None
            stats = cache.stats()
            assert stats.l2_errors >= 5
            assert stats.breaker_state == "open"
            assert await cache.delete("k1") is True
            assert await cache.invalidate_tag("t") == 0
            await cache.clear()

        async with TieredCache(dead, namespace=ns, timeout=0.2, strict=True) as strict:
            with pytest.raises(L2Error, match="GET"):
                await strict.get("k")
            with pytest.raises(ConnectionError):
                await strict.set("k", 1)

    run(main())


def test_get_or_set_calls_the_loader_once_and_shares_its_failure(
    redis_url: str, ns: str, raw: redis.Redis
) -> None:
    async def main() -> None:
        async with TieredCache(redis_url, namespace=ns) as cache:
            calls = 0

            async def failing() -> str:
                nonlocal calls
                calls += 1
                await asyncio.sleep(0.05)
                raise RuntimeError("backend down")

            results = await asyncio.gather(
                *(cache.get_or_set("k", failing) for _ in range(100)), return_exceptions=True
            )
            assert calls == 1
            assert all(isinstance(r, RuntimeError) for r in results)
            assert len({id(r) for r in results}) == 1
            assert raw.exists(f"{ns}k") == 0
            assert await cache.get("k") is None

            def loader() -> str:
                nonlocal calls
                calls += 1
                return "loaded"

            values = await asyncio.gather(*(cache.get_or_set("k", loader) for _ in range(50)))
            assert values == ["loaded"] * 50
            assert calls == 2
            assert raw.exists(f"{ns}k") == 1

    run(main())


def test_negative_ttl_caches_a_loaders_none(redis_url: str, ns: str, raw: redis.Redis) -> None:
    async def main() -> None:
        calls = 0

        def loader() -> None:
            nonlocal calls
            calls += 1

        async with TieredCache(redis_url, namespace=ns) as plain:
            assert await plain.get_or_set("a", loader) is None
            assert await plain.get_or_set("a", loader) is None
            assert calls == 2  # None is not cached by default
        async with TieredCache(redis_url, namespace=ns, negative_ttl=2) as negative:
            assert await negative.get_or_set("b", loader) is None
            assert await negative.get_or_set("b", loader) is None
            assert calls == 3
            assert 0 < raw.pttl(f"{ns}b") <= 2000

    run(main())


def test_lock_true_loads_once_across_instances(redis_url: str, ns: str) -> None:
    async def main() -> None:
        caches = [TieredCache(redis_url, namespace=ns) for _ in range(4)]
        calls = 0

        async def loader() -> str:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.1)
            return "once"

        try:
            values = await asyncio.gather(
                *(c.get_or_set("k", loader, lock=True) for c in caches for _ in range(5))
            )
            assert values == ["once"] * 20
            assert calls == 1
        finally:
            for cache in caches:
                await cache.aclose()

    run(main())


def test_the_sync_twin_shares_the_format_and_the_coherence(
    redis_url: str, ns: str, raw: redis.Redis
) -> None:
    with SyncTieredCache(redis_url, namespace=ns) as sync:
        sync.set("k", {"v": 1})
        assert sync.get("k") == {"v": 1}

        async def read_then_overwrite() -> None:
            async with TieredCache(redis_url, namespace=ns) as cache:
                assert await cache.get("k") == {"v": 1}
                await cache.set("k", {"v": 2})

        run(read_then_overwrite())
        deadline = time.monotonic() + 1
        while sync.get("k") != {"v": 2}:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert sync.get_many(["k", "zz"]) == {"k": {"v": 2}}
        sync.set_many({"a": 1, "b": 2}, tags=["t"])
        assert sync.invalidate_tag("t") == 2
        assert sync.delete("k") is True
        calls = []

        def loader() -> int:
            calls.append(1)
            time.sleep(0.05)
            return 7

        threads = [threading.Thread(target=lambda: sync.get_or_set("n", loader)) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert calls == [1]
        assert sync.get("n") == 7
        sync.clear()
        assert list(raw.scan_iter(match=f"{ns}*")) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("helixrt-tiered")]


def test_bus_gets_invalidation_events_and_hits_when_asked(redis_url: str, ns: str) -> None:
    async def main() -> None:
        async with (
            EventBus() as bus,
            TieredCache(redis_url, namespace=ns, bus=bus, events=True) as cache,
        ):
            sub = bus.subscribe("cache.>")
            await cache.set("k", 1)
            await cache.get("k")
            await cache.get("zz")
            await cache.delete("k")
            await cache.invalidate_tag("t")
            seen = [(await sub.get(1)) for _ in range(4)]
            assert [e.topic for e in seen] == [
                topics.CACHE_HIT,
                topics.CACHE_MISS,
                topics.CACHE_INVALIDATED,
                topics.CACHE_INVALIDATED,
            ]
            assert seen[0].payload == {"key": "k", "tier": "l1"}
            assert seen[2].payload == {"keys": ["k"]}
            assert seen[3].payload == {"tag": "t"}

    run(main())


def test_bad_arguments_are_refused_clearly() -> None:
    with pytest.raises(InvalidArgumentError, match="l1_ttl"):
        TieredCache(l1_ttl=0)
    with pytest.raises(InvalidArgumentError, match="negative_ttl"):
        TieredCache(negative_ttl=-1)
    with pytest.raises(InvalidArgumentError, match="namespace"):
        TieredCache(namespace="")
    with pytest.raises(InvalidTypeError, match="l1"):
        TieredCache(l1={})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="pickle"):
        TieredCache(serializer="pickle")

    async def main() -> None:
        cache = TieredCache(l1=L1Cache(maxsize=10))
        with pytest.raises(InvalidTypeError, match="keys must be str"):
            await cache.get(1)  # type: ignore[arg-type]
        with pytest.raises(InvalidTypeError, match="tags"):
            await cache.set("k", 1, tags="single")
        with pytest.raises(InvalidArgumentError, match="ttl"):
            await cache.set("k", 1, ttl=0)
        await cache.set("k", object())  # L1 only: kept by reference, never serialized
        await cache.aclose()

    run(main())
    assert issubclass(L2Error, HelixError)
    assert Codec().encode(1)  # the codec the cache uses is importable on its own


def test_an_async_client_passed_in_is_not_closed(redis_url: str, ns: str) -> None:
    async def main() -> None:
        client = aredis.Redis.from_url(redis_url)
        async with TieredCache(client, namespace=ns) as cache:
            with pytest.raises(InvalidTypeError):
                await cache.set("bad", object())  # not serializable: refused, not lost later
            assert await cache.get("bad") is None
            await cache.set("k", 1)
        assert await client.get(f"{ns}k") is not None  # still usable
        await client.aclose()

    run(main())


def test_cached_works_over_both_tiered_caches(redis_url: str, ns: str) -> None:
    from helixrt import cached

    calls: list[int] = []

    async def main() -> None:
        async with TieredCache(redis_url, namespace=ns) as cache:

            @cached(cache, ttl=10, tags=["sq"])
            async def square(n: int) -> int:
                calls.append(n)
                await asyncio.sleep(0.01)
                return n * n

            assert await asyncio.gather(*(square(3) for _ in range(10))) == [9] * 10
            assert calls == [3]
            assert await square.invalidate(3) is True  # type: ignore[attr-defined]
            assert await square(3) == 9
            assert calls == [3, 3]
            with pytest.raises(InvalidArgumentError, match="SyncTieredCache"):
                cached(cache)(lambda: 1)

    run(main())
    with SyncTieredCache(redis_url, namespace=ns) as sync:

        @cached(sync, key=lambda n: f"cube:{n}")
        def cube(n: int) -> int:
            calls.append(n)
            return n**3

        assert cube(2) == 8
        assert cube(2) == 8
        assert calls == [3, 3, 2]
        assert sync.get("cube:2") == 8
        assert cube.invalidate(2) is True  # type: ignore[attr-defined]
    with pytest.raises(InvalidTypeError, match="L1Cache, a TieredCache"):
        cached({})(lambda: 1)  # type: ignore[arg-type]


def test_invalidate_pattern_matches_like_redis_in_both_tiers(
    redis_url: str, ns: str, raw: redis.Redis
) -> None:
    async def main() -> None:
        async with TieredCache() as local:
            for key in ("a*b", "axb", "a[b", "ab", "Ab", "a.b"):
                await local.set(key, 1)
            assert await local.invalidate_pattern(r"a\*b") == 1
            assert await local.invalidate_pattern("[^A]b") == 1  # ab
            assert await local.invalidate_pattern("[a-c]b") == 0
            assert await local.invalidate_pattern("[A-C]b") == 1  # Ab
            assert sorted(local.l1.keys()) == ["a.b", "a[b", "axb"]
            assert await local.invalidate_pattern("a[.x]b") == 2
            assert list(local.l1.keys()) == ["a[b"]
            with pytest.raises(InvalidArgumentError, match="pattern"):
                await local.invalidate_pattern("")

        async with (
            TieredCache(redis_url, namespace=ns) as a,
            TieredCache(redis_url, namespace=ns) as b,
        ):
            await a.set_many({f"user:{i}": i for i in range(1200)}, tags=["users"])
            await a.set("order:1", "o")
            await announced(b, 2)
            assert await b.get("user:7") == 7
            assert b.l1.get("user:7") == 7
            a.l1.clear()  # only in Redis now: the SCAN must find them
            assert await a.invalidate_pattern("user:*") == 1200
            assert list(raw.scan_iter(match=f"{ns}user:*")) == []
            assert raw.exists(f"{ns}order:1", f"{ns}__tag__:users") == 2  # internal keys stay
            deadline = time.monotonic() + 1
            while b.l1.get("user:7") is not None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.001)
            assert await b.get("order:1") == "o"

    run(main())
    with SyncTieredCache(redis_url, namespace=ns) as sync:
        sync.set_many({"x1": 1, "x2": 2, "y": 3})
        assert sync.invalidate_pattern("x?") == 2
        assert sync.get("y") == 3
