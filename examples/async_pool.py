"""The asyncio worker pool: at most `limit` coroutines at once, results in order."""

from __future__ import annotations

import asyncio

from helixrt import AsyncWorkerPool


async def embed(text: str) -> int:
    await asyncio.sleep(0.01)  # a call to an embedding API
    return len(text)


async def main() -> None:
    async with AsyncWorkerPool(limit=10, pending_limit=1000, task_timeout=5.0) as pool:
        job = await pool.spawn(embed("hello"))
        print(await job)
        print(await pool.run(embed("one call, awaited")))
        lengths = [n async for n in pool.map(embed, ["a", "bb", "ccc"] * 100)]
        print(len(lengths), sum(lengths))
    print(pool.stats())


asyncio.run(main())
