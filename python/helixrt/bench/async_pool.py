"""Benchmarks of the asyncio worker pool against aiojobs, an asyncio.Queue feeding worker tasks,
and create_task bounded by a Semaphore.

Rows, in coroutines a second: no-op coroutines end to end (spawn them all, at most 100 running,
then await each result in order); the same through `map`; and `run` awaited once at a time.
Each candidate runs in a fresh event loop (`asyncio.run`), the candidates take turns, the best
of `ctx.repeats` runs counts, and the garbage collector is paused while timing, as
`compare_time` does.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any

from helixrt.async_pool import AsyncWorkerPool
from helixrt.bench.runner import Context, Row, missing_peer, peer_module

LIMIT = 100  # jobs running at once, in every candidate
PENDING = 10_000  # waiting room of the pools that have one

Candidate = Callable[[int], Coroutine[Any, Any, None]]


async def _noop() -> None:
    pass


async def _echo(item: int) -> int:
    return item


async def _helixrt(n: int) -> None:
    pool = AsyncWorkerPool(LIMIT, pending_limit=PENDING)
    spawn = pool.spawn
    jobs = [await spawn(_noop()) for _ in range(n)]
    for job in jobs:
        await job
    await pool.close()


def _aiojobs(aiojobs: Any) -> Candidate:
    async def candidate(n: int) -> None:
        scheduler = aiojobs.Scheduler(limit=LIMIT, pending_limit=PENDING)
        spawn = scheduler.spawn
        jobs = [await spawn(_noop()) for _ in range(n)]
        for job in jobs:
            await job.wait()
        await scheduler.close()

    return candidate


async def _queue_workers(n: int) -> None:
    """The usual pattern: worker tasks take (coroutine, future) pairs from a bounded queue."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Coroutine[Any, Any, Any], asyncio.Future[Any]]]
    queue = asyncio.Queue(PENDING)

    async def worker() -> None:
        while True:
            coro, future = await queue.get()
            try:
                future.set_result(await coro)
            except Exception as exc:
                future.set_exception(exc)
            queue.task_done()

    workers = [asyncio.create_task(worker()) for _ in range(LIMIT)]
    futures = []
    for _ in range(n):
        future = loop.create_future()
        await queue.put((_noop(), future))
        futures.append(future)
    for future in futures:
        await future
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)


async def _semaphore(n: int) -> None:
    """A task per coroutine, at most LIMIT of them past the semaphore at once."""
    semaphore = asyncio.Semaphore(LIMIT)

    async def bounded(coro: Coroutine[Any, Any, Any]) -> Any:
        async with semaphore:
            return await coro

    tasks = [asyncio.create_task(bounded(_noop())) for _ in range(n)]
    for task in tasks:
        await task


async def _yield() -> None:
    await asyncio.sleep(0)


async def _helixrt_run(n: int) -> None:
    async with AsyncWorkerPool(LIMIT, pending_limit=PENDING) as pool:
        for _ in range(n):
            await pool.run(_yield())


def _aiojobs_run(aiojobs: Any) -> Candidate:
    async def candidate(n: int) -> None:
        scheduler = aiojobs.Scheduler(limit=LIMIT, pending_limit=PENDING)
        for _ in range(n):
            await (await scheduler.spawn(_yield())).wait()
        await scheduler.close()

    return candidate


async def _create_task_run(n: int) -> None:
    for _ in range(n):
        await asyncio.create_task(_yield())


async def _helixrt_map(n: int) -> None:
    async with AsyncWorkerPool(LIMIT, pending_limit=PENDING) as pool:
        async for _ in pool.map(_echo, range(n)):
            pass


async def _semaphore_map(n: int) -> None:
    """Results in order from tasks bounded by a semaphore (all created up front)."""
    semaphore = asyncio.Semaphore(LIMIT)

    async def bounded(item: int) -> int:
        async with semaphore:
            return await _echo(item)

    tasks = [asyncio.create_task(bounded(item)) for item in range(n)]
    for task in tasks:
        await task


def _throughput(ctx: Context, candidates: Mapping[str, Candidate], n: int) -> dict[str, float]:
    """Coroutines a second for each candidate: the best of ctx.repeats fresh event loops,
    the candidates taking turns."""
    best = dict.fromkeys(candidates, float("inf"))
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(ctx.repeats):
            for name, candidate in candidates.items():
                gc.collect()
                gc.disable()
                started = time.perf_counter()
                asyncio.run(candidate(n))
                best[name] = min(best[name], time.perf_counter() - started)
                gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()
        else:
            gc.disable()
    return {name: n / seconds for name, seconds in best.items()}


def _end_to_end_rows(ctx: Context, n: int) -> Iterator[Row]:
    candidates: dict[str, Candidate] = {
        "helixrt": _helixrt,
        "queue": _queue_workers,
        "semaphore": _semaphore,
    }
    aiojobs = peer_module("aiojobs")
    if aiojobs is not None:
        candidates["aiojobs"] = _aiojobs(aiojobs)
    rate = _throughput(ctx, candidates, n)
    op = f"{n // 1000}k no-op coroutines, spawn then await, limit {LIMIT}"
    yield Row(
        "async_pool",
        op,
        "ops/s",
        rate["helixrt"],
        "aiojobs.Scheduler",
        rate.get("aiojobs"),
        "-",
        3.0,
        "" if aiojobs is not None else missing_peer("aiojobs", "aiojobs"),
    )
    yield Row(
        "async_pool",
        op,
        "ops/s",
        rate["helixrt"],
        f"asyncio.Queue + {LIMIT} workers",
        rate["queue"],
        "-",
        1.0,
    )
    yield Row(
        "async_pool",
        op,
        "ops/s",
        rate["helixrt"],
        f"create_task + Semaphore({LIMIT})",
        rate["semaphore"],
        "-",
        None,
    )


def _map_rows(ctx: Context, n: int) -> Iterator[Row]:
    rate = _throughput(ctx, {"helixrt": _helixrt_map, "semaphore": _semaphore_map}, n)
    yield Row(
        "async_pool",
        f"map, {n // 1000}k no-op coroutines, results in order",
        "ops/s",
        rate["helixrt"],
        f"create_task + Semaphore({LIMIT})",
        rate["semaphore"],
        "-",
        None,
    )


def _run_rows(ctx: Context, n: int) -> Iterator[Row]:
    candidates: dict[str, Candidate] = {"helixrt": _helixrt_run, "create_task": _create_task_run}
    aiojobs = peer_module("aiojobs")
    if aiojobs is not None:
        candidates["aiojobs"] = _aiojobs_run(aiojobs)
    rate = _throughput(ctx, candidates, n)
    op = f"run, {n // 1000}k coroutines one after another (each yields once)"
    yield Row(
        "async_pool",
        op,
        "ops/s",
        rate["helixrt"],
        "aiojobs spawn + wait",
        rate.get("aiojobs"),
        "-",
        None,
        "" if aiojobs is not None else missing_peer("aiojobs", "aiojobs"),
    )
    yield Row(
        "async_pool", op, "ops/s", rate["helixrt"], "create_task + await", rate["create_task"]
    )


def rows(ctx: Context) -> Iterator[Row]:
    n = 20_000 if ctx.quick else 100_000
    yield from _end_to_end_rows(ctx, n)
    yield from _map_rows(ctx, n)
    yield from _run_rows(ctx, n // 5)
