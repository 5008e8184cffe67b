"""The other process of the tiered cache reliability tests: a reader on the Redis at argv[1].

    python tests/tiered_peer.py REDIS_URL NAMESPACE MODE KEY[,KEY...]

MODE is "async" (a TieredCache, read from an asyncio loop) or "sync" (a SyncTieredCache, read
from the main thread). The peer reads every KEY over and over, about once a millisecond, so
what it read sits in its L1 and only the invalidation messages of the other process can drop
it. It prints one JSON line on stdout each time what it reads for a key changes:

    {"key": K, "value": V, "t0": T0, "t1": T1, "prev_t0": P0, "prev_t1": P1}

where [T0, T1] is the time.time() span of the first read that returned V and [P0, P1] that of
the last read before it (null for the first read of a key). On "quit" or the end of stdin it
stops reading, prints {"final": {K: {"value": V, "t0": T0, "t1": T1}}} (the last read of each
key) and {"stats": the cache's stats}, closes the cache and exits 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import threading
import time
from typing import Any

from helixrt.tiered import SyncTieredCache, TieredCache

# Between two rounds of reads: the asyncio listener needs the loop, and a busy loop would
# compete for the CPU with the writer and redis-server.
PAUSE = 0.0005


def say(**what: Any) -> None:
    sys.stdout.write(json.dumps(what) + "\n")
    sys.stdout.flush()


class Reads:
    """The last read of each key; reports the changes."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[Any, float, float]] = {}

    def saw(self, key: str, value: Any, t0: float, t1: float) -> None:
        previous = self.last.get(key)
        if previous is None or previous[0] != value:
            prev_t0 = prev_t1 = None
            if previous is not None:
                prev_t0, prev_t1 = previous[1], previous[2]
            say(key=key, value=value, t0=t0, t1=t1, prev_t0=prev_t0, prev_t1=prev_t1)
        self.last[key] = (value, t0, t1)

    def final(self) -> None:
        say(final={k: {"value": v, "t0": t0, "t1": t1} for k, (v, t0, t1) in self.last.items()})


def wait_for_quit(stop: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "quit":
            break
    stop.set()


async def run_async(url: str, namespace: str, keys: list[str]) -> None:
    stop = threading.Event()
    threading.Thread(target=wait_for_quit, args=(stop,), daemon=True).start()
    reads = Reads()
    async with TieredCache(url, namespace=namespace) as cache:
        while not stop.is_set():
            for key in keys:
                t0 = time.time()
                value = await cache.get(key)
                reads.saw(key, value, t0, time.time())
            await asyncio.sleep(PAUSE)
        reads.final()
        say(stats=dataclasses.asdict(cache.stats()))


def run_sync(url: str, namespace: str, keys: list[str]) -> None:
    stop = threading.Event()
    threading.Thread(target=wait_for_quit, args=(stop,), daemon=True).start()
    reads = Reads()
    with SyncTieredCache(url, namespace=namespace) as cache:
        while not stop.is_set():
            for key in keys:
                t0 = time.time()
                value = cache.get(key)
                reads.saw(key, value, t0, time.time())
            time.sleep(PAUSE)
        reads.final()
        say(stats=dataclasses.asdict(cache.stats()))


def main(url: str, namespace: str, mode: str, keys: str) -> None:
    names = keys.split(",")
    if mode == "async":
        asyncio.run(run_async(url, namespace, names))
    elif mode == "sync":
        run_sync(url, namespace, names)
    else:
        raise SystemExit(f"unknown mode {mode!r}: 'async' or 'sync'")


if __name__ == "__main__":
    main(*sys.argv[1:5])
