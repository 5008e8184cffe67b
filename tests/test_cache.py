"""L1Cache and `cached`: the mapping protocol, expiry, tags, bounds, bad input, callbacks that
re-enter the cache, many threads, and memory given back after a mass expiry."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import MutableMapping
from typing import Any

import pytest

import helixrt
from helixrt import L1Cache, cached
from helixrt.cache import _SWEEPER
from helixrt.errors import CacheKeyError, HelixError, InvalidArgumentError, InvalidTypeError


def manual(maxsize: int = 100, ttl: float | None = 10.0, **kw: Any) -> L1Cache:
    return L1Cache(maxsize, ttl, _manual_clock=True, **kw)


def test_is_a_mutable_mapping() -> None:
    cache = L1Cache()
    assert isinstance(cache, MutableMapping)
    cache["a"] = 1
    cache.update({"b": 2}, c=3)
    assert sorted(cache) == ["a", "b", "c"]
    assert len(cache) == 3
    assert "a" in cache
    assert "z" not in cache
    assert cache.get("z") is None
    assert cache.get("z", 7) == 7
    assert sorted(cache.items()) == [("a", 1), ("b", 2), ("c", 3)]
    assert sorted(cache.values()) == [1, 2, 3]
    assert cache.setdefault("a", 9) == 1
    assert cache.setdefault("d", 4) == 4
    assert cache.pop("d") == 4
    assert cache.pop("d", None) is None
    del cache["c"]
    assert cache.delete("b") is True
    assert cache.delete("b") is False
    assert dict(cache) == {"a": 1}
    cache.clear()
    assert len(cache) == 0


def test_values_are_kept_by_reference() -> None:
    cache = L1Cache()
    value: list[int] = []
    cache["k"] = value
    assert cache["k"] is value


def test_missing_key_raises_a_key_error_holding_the_key() -> None:
    cache = L1Cache()
    with pytest.raises(KeyError) as info:
        _ = cache[("no", 1)]
    assert isinstance(info.value, CacheKeyError)
    assert isinstance(info.value, HelixError)
    assert info.value.args == (("no", 1),)
    with pytest.raises(CacheKeyError):
        del cache["absent"]
    with pytest.raises(CacheKeyError):
        cache.pop("absent")


def test_equal_keys_of_different_types_are_one_key_as_in_a_dict() -> None:
    cache = L1Cache()
    cache[1] = "int"
    cache[1.0] = "float"
    cache[True] = "bool"
    assert len(cache) == 1
    assert cache[1] == "bool"
    cache[("a", (1, b"x"))] = "tuple"
    assert cache[("a", (1, b"x"))] == "tuple"


def test_set_many_get_many() -> None:
    cache = L1Cache()
    cache.set_many({"a": 1, "b": 2}, tags=["t"])
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    assert cache.invalidate_tag("t") == 2


def test_per_entry_ttl_overrides_the_caches() -> None:
    cache = manual(ttl=10.0)
    cache.set("short", 1, ttl=1.0)
    cache.set("default", 2)
    assert cache.remaining_ttl("short") == pytest.approx(1.0)
    assert cache.remaining_ttl("default") == pytest.approx(10.0)
    cache._advance(1.0)
    assert "short" not in cache
    assert cache.remaining_ttl("short") is None
    assert cache["default"] == 2
    cache._advance(9.0)
    assert len(cache) == 0
    assert cache.stats().expirations == 2


def test_no_ttl_means_no_expiry() -> None:
    cache = manual(ttl=None)
    cache["k"] = 1
    cache._advance(1e9)
    assert cache["k"] == 1
    assert cache.remaining_ttl("k") == float("inf")


def test_time_to_idle_is_reset_by_reads_only() -> None:
    cache = manual(ttl=100.0, tti=2.0)
    cache["k"] = 1
    cache._advance(1.5)
    assert cache["k"] == 1  # a read moves the idle deadline
    cache._advance(1.5)
    assert "k" in cache  # `in` is not a read...
    cache._advance(0.6)
    assert "k" not in cache  # ...so the entry idled out 2 s after the last read


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_bad_ttl_is_refused_naming_the_argument(bad: float) -> None:
    cache = L1Cache()
    with pytest.raises(ValueError, match="ttl must be a positive number of seconds or None"):
        cache.set("k", 1, ttl=bad)
    assert "k" not in cache
    with pytest.raises(InvalidArgumentError, match=r"^ttl must"):
        L1Cache(ttl=bad)
    with pytest.raises(InvalidArgumentError, match=r"^tti must"):
        L1Cache(tti=bad)


@pytest.mark.parametrize("maxsize", [0, -5])
def test_bad_maxsize_is_refused_naming_the_argument(maxsize: int) -> None:
    with pytest.raises(ValueError, match=f"maxsize must be an int >= 1, got {maxsize}"):
        L1Cache(maxsize)


def test_unhashable_key_is_a_type_error_and_changes_nothing() -> None:
    cache = L1Cache()
    with pytest.raises(TypeError, match="unhashable"):
        cache[["list"]] = 1
    with pytest.raises(TypeError, match="unhashable"):
        cache.get({})
    assert len(cache) == 0


def test_tags() -> None:
    cache = L1Cache()
    cache.set("a", 1, tags=["user:1", "org:1"])
    cache.set("b", 2, tags=("org:1",))
    cache.set("c", 3)
    assert cache.invalidate_tag("user:1") == 1
    assert cache.invalidate_tag("user:1") == 0
    assert cache.invalidate_tag("org:1") == 1
    assert list(cache) == ["c"]
    cache.set("a", 1, tags=["x"])
    cache.set("a", 2, tags=["y"])  # an update replaces the entry's tags
    assert cache.invalidate_tag("x") == 0
    assert cache.invalidate_tag("y") == 1
    assert cache.stats().invalidations == 3


def test_bad_tags_are_refused() -> None:
    cache = L1Cache()
    with pytest.raises(InvalidTypeError, match="not a str"):
        cache.set("a", 1, tags="oops")
    with pytest.raises(TypeError, match="tags must be str, got int"):
        cache.set("a", 1, tags=[1])
    with pytest.raises(TypeError, match="tag must be a str, got int"):
        cache.invalidate_tag(1)  # type: ignore[arg-type]
    assert "a" not in cache


def test_count_bound_is_never_exceeded() -> None:
    cache = L1Cache(50)
    for i in range(1000):
        cache[i] = i
        assert len(cache) <= 50
    stats = cache.stats()
    assert stats.size == 50
    assert stats.evictions == 950


def test_a_set_is_seen_by_the_next_get() -> None:
    cache = L1Cache(10)
    for i in range(500):
        cache[i] = str(i)
        assert cache[i] == str(i)


def test_weight_bound() -> None:
    cache = L1Cache(1000, max_weight=100, weigher=lambda k, v: len(v))
    for i in range(200):
        cache[i] = "x" * 7
        assert cache.stats().weight <= 100
    assert cache.stats().weight == 98  # 14 entries of 7
    cache["huge"] = "x" * 101  # heavier than the bound: not stored
    assert "huge" not in cache
    assert cache.stats().weight <= 100


def test_a_weigher_that_fails_leaves_the_cache_unchanged() -> None:
    def weigher(key: Any, value: Any) -> Any:
        if value == "raise":
            raise RuntimeError("cannot weigh")
        return value

    cache = L1Cache(max_weight=100, weigher=weigher)
    cache["k"] = 5
    with pytest.raises(RuntimeError, match="cannot weigh"):
        cache["k"] = "raise"
    with pytest.raises(TypeError, match="weigher must return an int, got str"):
        cache["k"] = "a str"
    with pytest.raises(ValueError, match="weigher must return an int >= 0, got -1"):
        cache["k"] = -1
    assert cache["k"] == 5
    assert cache.stats().weight == 5


def test_max_weight_needs_a_weigher() -> None:
    with pytest.raises(ValueError, match="max_weight needs a weigher"):
        L1Cache(max_weight=10)


def test_scan_does_not_flush_the_hot_set() -> None:
    cache = L1Cache(100, ttl=None)
    hot = [f"hot{i}" for i in range(50)]
    for _ in range(3):
        for key in hot:
            if key not in cache:
                cache[key] = key
            cache.get(key)
    for i in range(10_000):  # a one-pass scan, ten times the cache
        cache[f"scan{i}"] = i
    survivors = sum(key in cache for key in hot)
    assert survivors == len(hot)


class ReentrantKey:
    """A key whose __eq__ and __hash__ call back into the cache that holds it."""

    def __init__(self, cache: L1Cache, name: str, fail: bool = False) -> None:
        self.cache, self.name, self.fail = cache, name, fail

    def __hash__(self) -> int:
        self.cache.get("probe")
        return 42  # every ReentrantKey collides: __eq__ must run

    def __eq__(self, other: object) -> bool:
        self.cache["side-effect"] = self.name
        len(self.cache)
        if self.fail:
            raise RuntimeError("eq failed")
        return isinstance(other, ReentrantKey) and other.name == self.name


def test_keys_that_reenter_the_cache_do_not_deadlock_or_corrupt_it() -> None:
    cache = L1Cache()
    a, b = ReentrantKey(cache, "a"), ReentrantKey(cache, "b")
    cache[a] = 1
    cache[b] = 2
    assert cache[ReentrantKey(cache, "a")] == 1
    assert cache[ReentrantKey(cache, "b")] == 2
    cache[ReentrantKey(cache, "a")] = 3  # update through an equal, different object
    assert cache[a] == 3
    assert cache.pop(ReentrantKey(cache, "b")) == 2
    assert len([k for k in cache if isinstance(k, ReentrantKey)]) == 1


def test_an_exception_from_eq_or_hash_reaches_the_caller() -> None:
    cache = L1Cache()
    cache[ReentrantKey(cache, "a")] = 1
    with pytest.raises(RuntimeError, match="eq failed"):
        cache.get(ReentrantKey(cache, "a", fail=True))
    with pytest.raises(RuntimeError, match="eq failed"):
        cache[ReentrantKey(cache, "x", fail=True)] = 2

    class BadHash:
        def __hash__(self) -> int:
            raise ValueError("no hash today")

    with pytest.raises(ValueError, match="no hash today"):
        cache[BadHash()] = 1
    assert cache[ReentrantKey(cache, "a")] == 1
    assert len(cache) == 2  # "a" and "side-effect"


def test_a_value_whose_finalizer_uses_the_cache_is_safe() -> None:
    cache = L1Cache(2)

    class Noisy:
        def __del__(self) -> None:
            cache["finalized"] = True

    cache["a"] = Noisy()
    cache["a"] = "replaced"  # drops the Noisy value: its __del__ writes to the cache
    assert cache["finalized"] is True


def test_cycles_through_the_cache_are_collected() -> None:
    cache = L1Cache()
    cache["self"] = cache
    ref = weakref.ref(cache)
    del cache
    gc.collect()
    assert ref() is None


def test_many_threads_keep_the_stats_consistent_and_the_bounds() -> None:
    cache = L1Cache(500, ttl=0.05)
    lookups = [0] * 8
    stop = time.monotonic() + 3.0
    errors: list[BaseException] = []

    def work(n: int) -> None:
        rng = random.Random(n)
        try:
            while time.monotonic() < stop:
                key = rng.randrange(2000)
                op = rng.random()
                if op < 0.5:
                    cache.get(key)
                    lookups[n] += 1
                elif op < 0.85:
                    cache.set(key, n, tags=[f"t{key % 7}"])
                elif op < 0.97:
                    cache.delete(key)
                else:
                    cache.invalidate_tag(f"t{rng.randrange(7)}")
                assert len(cache) <= 500
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stats = cache.stats()
    assert stats.hits + stats.misses == sum(lookups)
    assert stats.hits > 0
    assert stats.size <= 500


_RECLAIM_SCRIPT = """
import gc, json, time
import helixrt

def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096

gc.collect()
before = rss()
cache = helixrt.L1Cache(1_000_000, ttl=1.0)
for i in range(1_000_000):
    cache[i] = i
grown = rss() - before
# The sweeper runs every 0.5 s; nothing touches the cache meanwhile. On a loaded machine it may
# take a few rounds: wait for the memory to come back, for at most 15 s.
deadline = time.monotonic() + 15
time.sleep(1.5)
while (left := rss() - before) >= grown * 0.2 and time.monotonic() < deadline:
    time.sleep(0.5)
stats = cache.stats()
print(json.dumps([grown, left, stats.expirations, len(cache)]))
"""


@pytest.mark.slow
def test_a_million_expired_entries_are_reclaimed_untouched() -> None:
    # A fresh process: other tests' freed memory would blur what this cache gives back.
    out = subprocess.run(
        [sys.executable, "-c", _RECLAIM_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    grown, left, expirations, size = json.loads(out)
    assert grown > 40_000_000
    assert left < grown * 0.2, f"RSS grew {grown} B with the entries, {left} B remain"
    assert expirations == 1_000_000
    assert size == 0


def test_the_sweeper_thread_stops_when_no_cache_is_left() -> None:
    cache = L1Cache()
    assert _SWEEPER.running
    del cache
    gc.collect()
    deadline = time.monotonic() + 5
    while _SWEEPER.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _SWEEPER.running
    assert "helixrt-cache-sweeper" not in {t.name for t in threading.enumerate()}


def test_cached_sync_computes_once_for_concurrent_callers() -> None:
    calls = []
    gate = threading.Event()

    @cached(ttl=60)
    def slow(x: int) -> int:
        calls.append(x)
        gate.wait(5)
        return x * 2

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(slow(21))) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    gate.set()
    for thread in threads:
        thread.join()
    assert results == [42] * 6
    assert calls == [21]
    assert slow(21) == 42
    assert calls == [21]
    assert slow.invalidate(21) is True  # type: ignore[attr-defined]
    assert slow(21) == 42
    assert calls == [21, 21]
    assert isinstance(slow.cache, L1Cache)  # type: ignore[attr-defined]


def test_cached_does_not_cache_exceptions() -> None:
    attempts = []

    @cached()
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) == 1:
            raise ConnectionError("first call fails")
        return x

    with pytest.raises(ConnectionError):
        flaky(1)
    assert flaky(1) == 1
    assert flaky(1) == 1
    assert attempts == [1, 1]


def test_cached_with_a_shared_cache_key_function_and_tags() -> None:
    cache = L1Cache()

    @cached(cache, key=lambda user_id, **_: f"user:{user_id}", tags=["users"])
    def load(user_id: int, verbose: bool = False) -> dict[str, int]:
        return {"id": user_id}

    assert load(7, verbose=True) == {"id": 7}
    assert cache["user:7"] == {"id": 7}
    assert cache.invalidate_tag("users") == 1

    @cached(cache)
    def other(user_id: int) -> int:
        return -user_id

    assert other(7) == -7  # a different function: a different default key
    with pytest.raises(TypeError, match="unhashable"):
        other([1])  # type: ignore[arg-type]


def test_cached_async_computes_once_per_key_and_survives_a_cancelled_caller() -> None:
    calls = []

    @cached(ttl=60)
    async def fetch(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.05)
        return x + 1

    async def main() -> None:
        impatient = asyncio.ensure_future(fetch(1))
        await asyncio.sleep(0)
        results = asyncio.gather(*(fetch(1) for _ in range(5)), fetch(2))
        impatient.cancel()
        assert await results == [2, 2, 2, 2, 2, 3]
        assert await fetch(1) == 2

    asyncio.run(main())
    assert sorted(calls) == [1, 2]


def test_cached_async_exception_is_raised_to_every_waiter_and_not_cached() -> None:
    calls = []

    @cached()
    async def boom(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.01)
        if len(calls) == 1:
            raise TimeoutError("upstream slow")
        return x

    async def main() -> None:
        results = await asyncio.gather(boom(1), boom(1), return_exceptions=True)
        assert all(isinstance(r, TimeoutError) for r in results)
        assert await boom(1) == 1

    asyncio.run(main())
    assert calls == [1, 1]


def test_cached_refuses_a_bad_ttl() -> None:
    with pytest.raises(ValueError, match="ttl must be a positive number"):
        cached(ttl=0)


def test_lazy_names() -> None:
    assert helixrt.L1Cache is L1Cache
    assert helixrt.cached is cached


def test_stats_count_reads_and_the_hit_ratio() -> None:
    cache = L1Cache()
    assert cache.stats().hit_ratio == 0.0
    cache["a"] = 1
    cache["a"] = 2
    cache.get("a")
    cache.get("b")
    _ = cache["a"]
    assert "a" in cache  # not a read
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.inserts, stats.updates) == (2, 1, 1, 1)
    assert stats.lookups == 3
    assert stats.hit_ratio == pytest.approx(2 / 3)


def test_clear_counts_expired_entries_as_expirations() -> None:
    cache = manual(ttl=10.0)
    cache.set("short", 1, ttl=1.0)
    cache.set("long", 2)
    cache._advance(2.0)
    cache.clear()
    stats = cache.stats()
    assert (stats.expirations, stats.invalidations, stats.size) == (1, 1, 0)
