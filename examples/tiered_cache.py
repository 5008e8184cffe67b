"""The tiered cache: L1 in memory over Redis, coherent between instances.

Needs a Redis: `python -m helixrt._redis_server -- python examples/tiered_cache.py` starts a
throwaway one and sets REDIS_URL.
"""

from __future__ import annotations

import asyncio
import os

from helixrt import TieredCache, cached

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


async def main() -> None:
    async with (
        TieredCache(URL, namespace="demo:") as a,
        TieredCache(URL, namespace="demo:") as b,  # another process, as far as Redis knows
    ):
        await a.set("user:1", {"name": "Ada", "plan": "pro"}, ttl=60, tags=["user:1"])
        print("b reads:", await b.get("user:1"), "(from Redis, now in b's L1)")
        await a.set("user:1", {"name": "Ada", "plan": "team"}, tags=["user:1"])
        await asyncio.sleep(0.01)  # the invalidation reaches b over Redis Pub/Sub
        print("b reads:", await b.get("user:1"))

        @cached(a, ttl=30, tags=["completions"])
        async def complete(prompt: str) -> str:
            await asyncio.sleep(0.05)  # an LLM call
            return prompt.upper()

        answers = await asyncio.gather(*(complete("hello") for _ in range(10)))
        print("10 callers, one call:", set(answers))
        print("dropped by tag:", await a.invalidate_tag("completions"))
        stats = a.stats()
        print(f"a: l1_hits={stats.l1_hits} l2_hits={stats.l2_hits} misses={stats.l2_misses}")
        print(f"b: l1_hits={b.stats().l1_hits} l2_hits={b.stats().l2_hits}")
        await a.clear()


asyncio.run(main())
