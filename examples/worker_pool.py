"""The thread WorkerPool as a drop-in ThreadPoolExecutor, with its extras."""

from __future__ import annotations

import time
from concurrent.futures import as_completed

from helixrt import WorkerPool


def fetch(n: int) -> int:
    time.sleep(0.01)  # a blocking call: an HTTP request, a database query
    return n * n


with WorkerPool(max_workers=8, queue_size=1000, on_full="block") as pool:
    futures = [pool.submit(fetch, n) for n in range(20)]
    print(sum(f.result() for f in as_completed(futures)))
    print(list(pool.map(fetch, range(5))))
    batch = pool.submit_many(fetch, [(n,) for n in range(100)])  # one call into Rust
    urgent = pool.submit_with(fetch, (7,), priority=10, timeout=5.0)
    print(urgent.result(), len([f for f in batch if f.result() >= 0]))
    pool.submit_nowait(print, "fire and forget")
print(pool.stats())
