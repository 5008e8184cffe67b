"""Benchmarks of the L1 cache against cachebox, moka-py, theine, cachetools and a plain dict.

Rows: get (hit) and set (update, insert with eviction) per operation; get/set throughput with
two threads sharing one cache; hit ratio on generated traces (Zipf 0.8, Zipf 1.0, Zipf with
one-pass scans, a hot set that shifts) at 1% and 10% of the key space; and bytes per entry at a
million entries, each cache measured in a fresh process.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from itertools import accumulate
from typing import Any

from helixrt.bench.runner import Context, Row, compare_time, missing_peer, peer_module
from helixrt.cache import L1Cache

KEYS = 10_000


def _get_rows(ctx: Context) -> Iterator[Row]:
    keys = [f"user:{i}:profile" for i in range(KEYS)]
    ours = L1Cache(KEYS * 2, ttl=300.0)
    plain: dict[str, str] = {}
    for key in keys:
        ours[key] = plain[key] = key

    def loop(get: Callable[[str], object]) -> Callable[[], None]:
        def run() -> None:
            for key in keys:
                get(key)

        return run

    candidates = {"helixrt": loop(ours.get), "dict": loop(plain.get)}
    cachebox, cachetools = peer_module("cachebox"), peer_module("cachetools")
    if cachebox is not None:
        box = cachebox.TTLCache(KEYS * 2, 300.0)
        for key in keys:
            box[key] = key
        candidates["cachebox"] = loop(box.get)
    if cachetools is not None:
        tools = cachetools.TTLCache(KEYS * 2, ttl=300.0)
        for key in keys:
            tools[key] = key
        candidates["cachetools"] = loop(tools.get)
    ns = compare_time(ctx, candidates, ops=KEYS)
    claim = "~50 ns"
    op = "get (hit), 10k str keys"
    if cachebox is not None:
        yield Row("cache", op, "ns", ns["helixrt"], "cachebox.TTLCache", ns["cachebox"], claim, 1.0)
    else:
        yield Row(
            "cache",
            op,
            "ns",
            ns["helixrt"],
            "cachebox.TTLCache",
            None,
            claim,
            1.0,
            missing_peer("cachebox", "cachebox"),
        )
    yield Row(
        "cache",
        op,
        "ns",
        ns["helixrt"],
        "dict.get",
        ns["dict"],
        claim,
        0.5,
        "goal: under 2x dict.get",
    )
    if cachetools is not None:
        yield Row(
            "cache", op, "ns", ns["helixrt"], "cachetools.TTLCache", ns["cachetools"], claim, 10.0
        )


def _set_rows(ctx: Context) -> Iterator[Row]:
    cachebox = peer_module("cachebox")
    present = [f"user:{i}:profile" for i in range(KEYS)]
    fresh = [f"session:{i}" for i in range(KEYS * 10)]  # ten times the cache: every set evicts

    def loop(store: Callable[[str, str], object], keys: list[str]) -> Callable[[], None]:
        def run() -> None:
            for key in keys:
                store(key, key)

        return run

    for op, keys in (("set (update)", present), ("set (insert, evicting)", fresh)):
        ours = L1Cache(KEYS, ttl=300.0)
        for key in present:
            ours[key] = key
        candidates = {"helixrt": loop(ours.__setitem__, keys)}
        if cachebox is not None:
            box = cachebox.TTLCache(KEYS, 300.0)
            for key in present:
                box[key] = key
            candidates["cachebox"] = loop(box.__setitem__, keys)
        ns = compare_time(ctx, candidates, ops=len(keys))
        yield Row(
            "cache",
            op,
            "ns",
            ns["helixrt"],
            "cachebox.TTLCache",
            ns.get("cachebox"),
            "-",
            1.0,
            "" if cachebox else missing_peer("cachebox", "cachebox"),
        )


def _threaded_ops(
    get: Callable[[Any], object], put: Callable[[Any, Any], object], seconds: float
) -> float:
    """get/set operations per second, two threads sharing the cache (90% gets)."""
    counts = [0, 0]
    stop = time.perf_counter() + seconds

    def work(n: int) -> None:
        rng = random.Random(n)
        keys = [rng.randrange(20_000) for _ in range(4096)]
        done = 0
        while time.perf_counter() < stop:
            for i, key in enumerate(keys):
                if i % 10:
                    get(key)
                else:
                    put(key, key)
            done += len(keys)
        counts[n] = done

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def _thread_rows(ctx: Context) -> Iterator[Row]:
    seconds = 0.3 if ctx.quick else 1.0
    ours = L1Cache(10_000)
    figures = {"helixrt": _threaded_ops(ours.get, ours.__setitem__, seconds)}
    cachebox, moka = peer_module("cachebox"), peer_module("moka_py")
    if cachebox is not None:
        box = cachebox.TTLCache(10_000, 300.0)
        figures["cachebox.TTLCache"] = _threaded_ops(box.get, box.__setitem__, seconds)
    if moka is not None:
        m = moka.Moka(10_000, ttl=300.0)
        figures["moka-py"] = _threaded_ops(m.get, m.set, seconds)
    for peer in ("cachebox.TTLCache", "moka-py"):
        yield Row(
            "cache",
            "get+set, 2 threads",
            "ops/s",
            figures["helixrt"],
            peer,
            figures.get(peer),
            "-",
            None,
            "" if peer in figures else f"{peer} not installed",
        )


def _zipf(n: int, s: float, length: int, rng: random.Random) -> list[int]:
    cumulative = list(accumulate(1.0 / (rank**s) for rank in range(1, n + 1)))
    return rng.choices(range(n), cum_weights=cumulative, k=length)


def traces(length: int, keyspace: int = 100_000) -> dict[str, list[int]]:
    """Request traces of `length` keys from a `keyspace`; fixed seeds, same every run."""
    rng = random.Random(20261129)
    order = list(range(keyspace))
    rng.shuffle(order)
    zipf08 = [order[r] for r in _zipf(keyspace, 0.8, length, rng)]
    zipf10_ranks = _zipf(keyspace, 1.0, length, rng)
    zipf10 = [order[r] for r in zipf10_ranks]
    scans: list[int] = []
    fresh = keyspace
    for start in range(0, length, 10_000):  # every 10k requests, a one-pass scan of 4k new keys
        scans.extend(zipf10[start : start + 10_000])
        scans.extend(range(fresh, fresh + 4_000))
        fresh += 4_000
    shifting: list[int] = []
    quarter = max(1, length // 4)
    for start in range(0, length, quarter):  # the hot set moves to other keys four times
        rng.shuffle(order)
        shifting.extend(order[r] for r in zipf10_ranks[start : start + quarter])
    return {
        "zipf 0.8": zipf08,
        "zipf 1.0": zipf10,
        "zipf 1.0 + scans": scans,
        "shifting hot set": shifting,
    }


def _replay(
    trace: list[int],
    get: Callable[[int], Any],
    put: Callable[[int, int], Any],
    miss: Callable[[Any], bool],
) -> float:
    hits = 0
    for key in trace:
        if miss(get(key)):
            put(key, 1)
        else:
            hits += 1
    return hits / len(trace)


def _hit_ratio_peers(size: int) -> dict[str, tuple[Any, Callable[[Any], bool]]]:
    peers: dict[str, tuple[Any, Callable[[Any], bool]]] = {}
    moka, theine, cachebox = peer_module("moka_py"), peer_module("theine"), peer_module("cachebox")
    if moka is not None:
        m = moka.Moka(size)
        peers["moka-py"] = ((m.get, m.set), lambda v: v is None)
    if theine is not None:
        t = theine.Cache(size)
        peers["theine"] = ((t.get, t.set), lambda v: not v[1])
    if cachebox is not None:
        b = cachebox.LRUCache(size)
        peers["cachebox.LRUCache"] = ((b.get, b.__setitem__), lambda v: v is None)
    return peers


def _hit_ratio_rows(ctx: Context) -> Iterator[Row]:
    keyspace = 100_000
    for name, trace in traces(200_000 if ctx.quick else 1_000_000, keyspace).items():
        for share in (0.01, 0.10):
            size = int(keyspace * share)
            ours = L1Cache(size, ttl=None)
            mine = _replay(trace, ours.get, ours.__setitem__, lambda v: v is None)
            results = {
                peer: _replay(trace, ops[0], ops[1], miss)
                for peer, (ops, miss) in _hit_ratio_peers(size).items()
            }
            best = max(results, key=results.__getitem__) if results else ""
            others = ", ".join(f"{p} {r:.3f}" for p, r in results.items())
            yield Row(
                "cache",
                f"hit ratio, {name}, {share:.0%}",
                "ratio",
                mine,
                best,
                results.get(best),
                "-",
                1.0,
                others or "no peer installed",
            )


_MEMORY_SCRIPT = """
import gc, json, sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
n = int(sys.argv[2])
values = list(range(n))  # the same Python objects for every cache: only structure differs
gc.collect()
before = rss()
if sys.argv[1] == "helixrt":
    import helixrt
    cache = helixrt.L1Cache(n, ttl=300.0)
else:
    import cachebox
    cache = cachebox.TTLCache(n, 300.0)
for i in values:
    cache[i] = i
gc.collect()
print(json.dumps((rss() - before) / n))
"""


def _bytes_per_entry(which: str, entries: int) -> float | None:
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, which, str(entries)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return float(json.loads(result.stdout)) if result.returncode == 0 else None


def _memory_rows(ctx: Context) -> Iterator[Row]:
    entries = 1_000_000
    ours = _bytes_per_entry("helixrt", entries)
    theirs = _bytes_per_entry("cachebox", entries) if peer_module("cachebox") else None
    yield Row(
        "cache",
        "bytes per entry, 1M entries",
        "bytes",
        ours,
        "cachebox.TTLCache",
        theirs,
        "-",
        1.0,
        "" if theirs else missing_peer("cachebox", "cachebox"),
    )


def rows(ctx: Context) -> Iterator[Row]:
    yield from _get_rows(ctx)
    yield from _set_rows(ctx)
    yield from _thread_rows(ctx)
    yield from _hit_ratio_rows(ctx)
    yield from _memory_rows(ctx)
