"""Benchmarks of the tiered cache against raw redis.asyncio, cashews and aiocache, on one Redis.

Rows:
- a get that misses L1 and hits Redis (a 1 KiB chat completion), one at a time: TieredCache.get
  with its L1 emptied before every get (so every timed get goes to Redis, counted and checked)
  against a bare `redis.asyncio` GET + `msgpack.unpackb` of the same value, and against cashews
  and aiocache (RedisCache) gets;
- 64 gets of different keys at once (`asyncio.gather`), all Redis hits: gets a second, against
  cashews, aiocache and 64 concurrent raw GETs (TieredCache sends one GET and one MGET);
- a get that hits L1 through TieredCache against a bare `L1Cache.get`;
- then the value codec's rows (`helixrt.bench.codec`).

Each Redis measurement runs in one event loop with its own clients and keys (under a prefix unique
to the run, removed afterwards); the candidates take turns, the best of `ctx.repeats` runs counts,
and the garbage collector is paused while timing, as `compare_time` does. The peers run with the
settings their documentation shows (cashews: `Cache().setup("redis://...")`, pickle, a pool of 10
connections; aiocache: `RedisCache` with its pickle serializer, since its msgpack serializer
decodes values as UTF-8 text first).
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import suppress
from typing import Any
from urllib.parse import urlparse

from helixrt.bench.codec import chat_completion
from helixrt.bench.codec import rows as codec_rows
from helixrt.bench.runner import Context, Row, missing_peer, peer_module
from helixrt.cache import L1Cache
from helixrt.tiered import TieredCache

__all__ = ["rows"]

COMPONENT = "tiered"
SIZE = 1 << 10  # the value: a chat completion of about 1 KiB once msgpack-encoded
KEYS = 64  # distinct keys read, and the gets in flight in the concurrent row
CONCURRENCY = 64

Run = Callable[[int], Awaitable[None]]
"""A candidate: performs its operation `n` times."""


async def _calibrated(run: Run, budget: float) -> int:
    """How many calls of `run` take about `budget` seconds (after a warm-up call)."""
    await run(1)
    calls = 1
    while True:
        started = time.perf_counter()
        await run(calls)
        elapsed = time.perf_counter() - started
        if elapsed >= budget / 4 or calls >= 1 << 22:
            return max(1, int(calls * budget / max(elapsed, 1e-9)))
        calls *= 4


async def _interleaved(ctx: Context, candidates: Mapping[str, Run], ops: int) -> dict[str, float]:
    """Nanoseconds per operation for each candidate (each call performs `ops`), the candidates
    taking turns in this event loop, the best of ctx.repeats runs counting, GC paused."""
    calls = {name: await _calibrated(run, ctx.budget) for name, run in candidates.items()}
    best = dict.fromkeys(candidates, float("inf"))
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(ctx.repeats):
            for name, run in candidates.items():
                gc.collect()
                gc.disable()
                started = time.perf_counter_ns()
                await run(calls[name])
                elapsed = time.perf_counter_ns() - started
                gc.enable()
                best[name] = min(best[name], elapsed / (calls[name] * ops))
    finally:
        if gc_was_enabled:
            gc.enable()
        else:
            gc.disable()
    return best


# -- the candidates ----------------------------------------------------------------------------


class _Setup:
    """The clients and keys of one measurement, made and torn down in its event loop."""

    def __init__(self, url: str, prefix: str, msgpack: Any) -> None:
        import redis.asyncio as async_redis

        self.url = url
        self.prefix = prefix
        self.msgpack = msgpack
        self.value = chat_completion(SIZE, seed=SIZE)
        self.keys = [f"k{i}" for i in range(KEYS)]
        self.raw = async_redis.Redis.from_url(url)
        self.tiered = TieredCache(url, namespace=prefix + "helixrt:")
        self.cashews: Any = None
        self.aiocache: Any = None

    async def start(self, cashews: Any, aiocache: Any) -> None:
        await self.tiered.set_many(dict.fromkeys(self.keys, self.value))
        self.tiered.l1.clear()
        packed = self.msgpack.packb(self.value, use_bin_type=True)
        await self.raw.mset({self.prefix + "raw:" + key: packed for key in self.keys})
        if cashews is not None:
            self.cashews = cashews.Cache()
            self.cashews.setup(self.url)
            for key in self.keys:
                await self.cashews.set(self.prefix + "cashews:" + key, self.value, expire=1800)
        if aiocache is not None:
            where = urlparse(self.url)
            self.aiocache = aiocache.RedisCache(
                endpoint=where.hostname or "127.0.0.1",
                port=where.port or 6379,
                db=int(where.path.strip("/") or 0),
                namespace=self.prefix + "aiocache:",
                serializer=aiocache.serializers.PickleSerializer(),
            )
            for key in self.keys:
                await self.aiocache.set(key, self.value, ttl=1800)
        await self._check()

    async def _check(self) -> None:
        """Every candidate reads back the value written (else the figures mean nothing)."""
        key = self.keys[0]
        found = {
            "helixrt": await self.tiered.get(key),
            "raw": self.msgpack.unpackb(await self.raw.get(self.prefix + "raw:" + key)),
        }
        self.tiered.l1.clear()
        if self.cashews is not None:
            found["cashews"] = await self.cashews.get(self.prefix + "cashews:" + key)
        if self.aiocache is not None:
            found["aiocache"] = await self.aiocache.get(key)
        wrong = [name for name, value in found.items() if value != self.value]
        if wrong:
            raise RuntimeError(f"the benchmark value did not round-trip through {wrong}")

    async def close(self) -> None:
        with suppress(Exception):
            await self.tiered.aclose()
        if self.cashews is not None:
            with suppress(Exception):
                await self.cashews.close()
        if self.aiocache is not None:
            with suppress(Exception):
                await self.aiocache.close()
        try:
            names = [name async for name in self.raw.scan_iter(match=self.prefix + "*")]
            if names:
                await self.raw.unlink(*names)
        finally:
            await self.raw.aclose()

    # Sequential gets, cycling over the keys.

    def helixrt_get(self) -> Run:
        get, clear, keys = self.tiered.get, self.tiered.l1.clear, self.keys

        async def run(n: int) -> None:
            for i in range(n):
                clear()  # every get must go to Redis: L1 is emptied before each
                await get(keys[i % KEYS])

        return run

    def raw_get(self) -> Run:
        get, unpackb = self.raw.get, self.msgpack.unpackb
        keys = [self.prefix + "raw:" + key for key in self.keys]

        async def run(n: int) -> None:
            for i in range(n):
                unpackb(await get(keys[i % KEYS]))

        return run

    def peer_get(self, cache: Any, prefix: str) -> Run:
        get = cache.get
        keys = [prefix + key for key in self.keys]

        async def run(n: int) -> None:
            for i in range(n):
                await get(keys[i % KEYS])

        return run

    # CONCURRENCY gets at once, of different keys.

    def helixrt_gather(self) -> Run:
        get, clear, keys = self.tiered.get, self.tiered.l1.clear, self.keys[:CONCURRENCY]
        gather = asyncio.gather

        async def run(n: int) -> None:
            for _ in range(n):
                clear()
                await gather(*[get(key) for key in keys])

        return run

    def raw_gather(self) -> Run:
        get, unpackb, gather = self.raw.get, self.msgpack.unpackb, asyncio.gather
        keys = [self.prefix + "raw:" + key for key in self.keys[:CONCURRENCY]]

        async def one(key: str) -> Any:
            return unpackb(await get(key))

        async def run(n: int) -> None:
            for _ in range(n):
                await gather(*[one(key) for key in keys])

        return run

    def peer_gather(self, cache: Any, prefix: str) -> Run:
        get, gather = cache.get, asyncio.gather
        keys = [prefix + key for key in self.keys[:CONCURRENCY]]

        async def run(n: int) -> None:
            for _ in range(n):
                await gather(*[get(key) for key in keys])

        return run


def _candidates(setup: _Setup, concurrent: bool) -> dict[str, Run]:
    helixrt, raw, peer = (
        (setup.helixrt_gather, setup.raw_gather, setup.peer_gather)
        if concurrent
        else (setup.helixrt_get, setup.raw_get, setup.peer_get)
    )
    candidates = {"helixrt": helixrt(), "raw": raw()}
    if setup.cashews is not None:
        candidates["cashews"] = peer(setup.cashews, setup.prefix + "cashews:")
    if setup.aiocache is not None:
        candidates["aiocache"] = peer(setup.aiocache, "")
    return candidates


async def _measure(
    ctx: Context, url: str, prefix: str, concurrent: bool, cashews: Any, aiocache: Any, msgpack: Any
) -> dict[str, float]:
    """ns per get of each candidate; checks that every timed TieredCache get went to Redis."""
    setup = _Setup(url, prefix, msgpack)
    try:
        await setup.start(cashews, aiocache)
        before = setup.tiered.stats()
        ns = await _interleaved(
            ctx, _candidates(setup, concurrent), CONCURRENCY if concurrent else 1
        )
        after = setup.tiered.stats()
    finally:
        await setup.close()
    if after.l1_hits != before.l1_hits or after.l2_misses != before.l2_misses:
        raise RuntimeError(
            f"a timed TieredCache get did not go to Redis: {after.l1_hits - before.l1_hits} "
            f"L1 hits, {after.l2_misses - before.l2_misses} L2 misses"
        )
    return ns


# -- the rows ----------------------------------------------------------------------------------


def _redis_rows(ctx: Context) -> Iterator[Row]:
    sequential = f"get, L1 miss + Redis hit, {SIZE >> 10} KiB, one at a time"
    concurrent = f"{CONCURRENCY} concurrent gets (gather), Redis hits, {SIZE >> 10} KiB"
    msgpack = peer_module("msgpack")
    redis = peer_module("redis")
    note = ""
    if ctx.redis_url is None:
        note = "no Redis: run under `python -m helixrt._redis_server -- ...` (make bench)"
    elif msgpack is None or redis is None or peer_module("lz4") is None:
        note = missing_peer("redis, msgpack and lz4", "helixrt[redis]")
    if note:
        yield Row(
            COMPONENT, sequential, "ns", None, "redis.asyncio GET + msgpack", None, "-", 0.87, note
        )
        yield Row(COMPONENT, concurrent, "ops/s", None, "cashews (redis)", None, "-", 2.0, note)
        return
    url = ctx.redis_url
    assert url is not None
    cashews, aiocache = peer_module("cashews"), peer_module("aiocache")
    if aiocache is not None and not hasattr(aiocache, "RedisCache"):
        aiocache = None  # aiocache without its redis extra
    prefix = f"helixrt-bench:{uuid.uuid4().hex[:12]}:"
    no_cashews = "" if cashews is not None else missing_peer("cashews", "cashews[redis]")
    no_aiocache = "" if aiocache is not None else missing_peer("aiocache", "aiocache[redis]")

    ns = asyncio.run(_measure(ctx, url, prefix + "seq:", False, cashews, aiocache, msgpack))
    yield Row(
        COMPONENT,
        sequential,
        "ns",
        ns["helixrt"],
        "redis.asyncio GET + msgpack.unpackb",
        ns["raw"],
        "-",
        1 / 1.15,
        "goal: at most 1.15x raw's time; helixrt's L1 emptied before every get "
        "(its value: header + lz4 body)",
    )
    yield Row(
        COMPONENT,
        sequential,
        "ns",
        ns["helixrt"],
        "cashews (redis)",
        ns.get("cashews"),
        "-",
        None,
        no_cashews,
    )
    yield Row(
        COMPONENT,
        sequential,
        "ns",
        ns["helixrt"],
        "aiocache RedisCache",
        ns.get("aiocache"),
        "-",
        None,
        no_aiocache,
    )

    ns = asyncio.run(_measure(ctx, url, prefix + "gather:", True, cashews, aiocache, msgpack))
    rate = {name: 1e9 / value for name, value in ns.items()}
    yield Row(
        COMPONENT,
        concurrent,
        "ops/s",
        rate["helixrt"],
        "cashews (redis)",
        rate.get("cashews"),
        "-",
        2.0,
        no_cashews or "cashews with its defaults: a pool of at most 10 connections",
    )
    yield Row(
        COMPONENT,
        concurrent,
        "ops/s",
        rate["helixrt"],
        "aiocache RedisCache",
        rate.get("aiocache"),
        "-",
        None,
        no_aiocache,
    )
    yield Row(
        COMPONENT,
        concurrent,
        "ops/s",
        rate["helixrt"],
        f"redis.asyncio, {CONCURRENCY} GETs + msgpack",
        rate["raw"],
        "-",
        None,
        "helixrt sends the first get at once and the 63 after it as one MGET",
    )


def _l1_hit_rows(ctx: Context) -> Iterator[Row]:
    """The L1 hit path is the same with or without Redis, so it is measured without one."""
    value = chat_completion(SIZE, seed=SIZE)
    key = "hot"
    calls = range(1000)

    async def measure() -> dict[str, float]:
        l1 = L1Cache(maxsize=10_000, ttl=300.0)
        l1.set(key, value)
        tiered = TieredCache(None)
        await tiered.set(key, value)

        async def through_tiered(n: int) -> None:
            get = tiered.get
            for _ in range(n):
                for _ in calls:
                    await get(key)

        async def bare(n: int) -> None:
            get = l1.get
            for _ in range(n):
                for _ in calls:
                    get(key)

        try:
            return await _interleaved(ctx, {"helixrt": through_tiered, "l1": bare}, len(calls))
        finally:
            await tiered.aclose()

    ns = asyncio.run(measure())
    yield Row(
        COMPONENT,
        "get, L1 hit (await TieredCache.get)",
        "ns",
        ns["helixrt"],
        "bare L1Cache.get",
        ns["l1"],
        "-",
        1 / 3,
        "goal: at most 3x a bare L1Cache.get",
    )


def rows(ctx: Context) -> Iterator[Row]:
    yield from _redis_rows(ctx)
    yield from _l1_hit_rows(ctx)
    yield from codec_rows(ctx)
