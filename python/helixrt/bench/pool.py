"""Benchmarks of the thread WorkerPool against concurrent.futures.ThreadPoolExecutor.

Each run makes a fresh pool with the default number of workers, submits trivial tasks and
waits for all of them; the two pools alternate, the best of the repeats counts, and the garbage
collector is paused while timing (as timeit does), for both alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from helixrt.bench.runner import Context, Row, gc_paused
from helixrt.pool import WorkerPool


def _noop() -> None:
    return None


def _timed(run: Callable[[], tuple[float, float]], repeats: int) -> tuple[float, float]:
    """Best (submit seconds, total seconds) over `repeats` runs."""
    best_submit, best_total = float("inf"), float("inf")
    for _ in range(repeats):
        with gc_paused():
            submit, total = run()
        best_submit, best_total = min(best_submit, submit), min(best_total, total)
    return best_submit, best_total


def _with_futures(make: Callable[[], Any], tasks: int) -> Callable[[], tuple[float, float]]:
    def run() -> tuple[float, float]:
        pool = make()
        submit = pool.submit
        started = time.perf_counter()
        futures = [submit(_noop) for _ in range(tasks)]
        submitted = time.perf_counter()
        for future in futures:
            future.result()
        done = time.perf_counter()
        pool.shutdown()
        return submitted - started, done - started

    return run


def _many(tasks: int) -> Callable[[], tuple[float, float]]:
    def run() -> tuple[float, float]:
        pool = WorkerPool(queue_size=tasks)
        args = [()] * tasks
        started = time.perf_counter()
        futures: list[Future[None]] = pool.submit_many(_noop, args)
        submitted = time.perf_counter()
        for future in futures:
            future.result()
        done = time.perf_counter()
        pool.shutdown()
        return submitted - started, done - started

    return run


def _nowait(tasks: int) -> Callable[[], tuple[float, float]]:
    def run() -> tuple[float, float]:
        pool = WorkerPool()
        submit = pool.submit_nowait
        started = time.perf_counter()
        for _ in range(tasks):
            submit(_noop)
        submitted = time.perf_counter()
        pool.shutdown()  # waits for every task
        done = time.perf_counter()
        return submitted - started, done - started

    return run


def rows(ctx: Context) -> Iterator[Row]:
    tasks = 20_000 if ctx.quick else 100_000
    repeats = 2 if ctx.quick else 3
    peer = "ThreadPoolExecutor"
    tpe_submit, tpe_total = _timed(_with_futures(ThreadPoolExecutor, tasks), repeats)
    ours_submit, ours_total = _timed(_with_futures(WorkerPool, tasks), repeats)
    many_submit, many_total = _timed(_many(tasks), repeats)
    nowait_submit, nowait_total = _timed(_nowait(tasks), repeats)
    per_task = 1e9 / tasks
    tpe_ns = tpe_submit * per_task
    yield Row(
        "pool", "submit (with a Future)", "ns", ours_submit * per_task, peer, tpe_ns, "~100 ns", 5.0
    )
    yield Row(
        "pool",
        "submit_nowait",
        "ns",
        nowait_submit * per_task,
        f"{peer}.submit",
        tpe_ns,
        "~100 ns",
        20.0,
    )
    yield Row(
        "pool",
        "submit_many, per task",
        "ns",
        many_submit * per_task,
        f"{peer}.submit",
        tpe_ns,
        "~100 ns",
        20.0,
    )
    label = f"{tasks // 1000}k trivial tasks end to end"
    yield Row(
        "pool",
        f"{label}, Futures",
        "ops/s",
        tasks / ours_total,
        peer,
        tasks / tpe_total,
        "1M+/s",
        5.0,
    )
    yield Row(
        "pool",
        f"{label}, submit_many",
        "ops/s",
        tasks / many_total,
        peer,
        tasks / tpe_total,
        "1M+/s",
        10.0,
    )
    yield Row(
        "pool",
        f"{label}, submit_nowait",
        "ops/s",
        tasks / nowait_total,
        peer,
        tasks / tpe_total,
        "1M+/s",
        None,
    )
