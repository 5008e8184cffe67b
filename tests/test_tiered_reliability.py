"""Reliability of the tiered cache with real processes and a real redis-server: a mixed workload
across a redis-server killed (SIGKILL) and restarted on the same port, for TieredCache and
SyncTieredCache; strict mode during the outage; and how stale another process's L1 can be
after an overwrite or a tag invalidation (tests/tiered_peer.py is that process).

Values that Redis returns undecodable (garbage, truncated, an unknown header) are covered in
test_tiered.py."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import pytest
import redis

from helixrt import CircuitBreaker, L1Cache
from helixrt._redis_server import redis_server
from helixrt.codec import Codec
from helixrt.tiered import L2Error, SyncTieredCache, TieredCache

pytestmark = pytest.mark.integration

T = TypeVar("T")

HANG = 10.0  # seconds: a bound that only a hang exceeds
PEER = Path(__file__).with_name("tiered_peer.py")
STALENESS_BOUND = 0.1  # seconds after the writer's call returned
RESET = 0.5  # the breakers' reset_timeout here (the cache's default is 5 s)


# --- a redis-server that can be killed ----------------------------------------------------------


class RestartableRedis:
    """A throwaway redis-server that a test kills (SIGKILL) and starts again on the same port.
    It keeps nothing on disk: it comes back empty."""

    def __init__(self) -> None:
        self._context: AbstractContextManager[str] | None = None
        self.url = ""
        self.port: int | None = None

    def start(self) -> None:
        assert self._context is None
        context = redis_server(port=self.port)
        self.url = context.__enter__()
        self._context = context
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def kill(self) -> None:
        assert self._context is not None
        with redis.Redis.from_url(self.url) as client:
            pid = int(client.info("server")["process_id"])
        os.kill(pid, signal.SIGKILL)
        context, self._context = self._context, None
        context.__exit__(None, None, None)  # reaps the dead process, removes its directory
        with pytest.raises(redis.ConnectionError), redis.Redis.from_url(self.url) as client:
            client.ping()

    def stop(self) -> None:
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)


@pytest.fixture
def server() -> Iterator[RestartableRedis]:
    restartable = RestartableRedis()
    restartable.start()
    try:
        yield restartable
    finally:
        restartable.stop()


@pytest.fixture
def ns() -> str:
    return f"r{uuid.uuid4().hex[:8]}:"


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """asyncio.run(main()), failing if the loop's exception handler was called."""
    reported: list[dict[str, Any]] = []

    async def watched() -> T:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        return await asyncio.wait_for(main(), HANG * 3)

    result = asyncio.run(watched())
    gc.collect()
    assert reported == []
    return result


# --- the mixed workload -------------------------------------------------------------------------


class Transitions:
    """The breaker's changes of state, with when they happened (time.monotonic())."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.seen: list[tuple[float, str, str]] = []
        breaker.add_listener(lambda _, old, new: self.seen.append((time.monotonic(), old, new)))

    def between(self, start: float, end: float) -> list[tuple[str, str]]:
        return [(old, new) for at, old, new in self.seen if start <= at < end]


class Workload:
    """Random gets, sets, get_many and deletes over `keys` keys, checked against a model: the
    last value written to each key (None once deleted). Every value is unique (a version), so a
    value that comes back after a newer one was written is caught.

    Exact checks (Redis up all along) want the model's value; the others also accept a miss: a
    value written to L1 only during an outage, or lost with the restarted server, is gone, but
    nothing older may ever come back."""

    def __init__(self, seed: int, keys: int = 500) -> None:
        self.rng = random.Random(seed)
        self.keys = [f"k{i}" for i in range(keys)]
        self.model: dict[str, Any] = {}
        self.version = 0
        self.ops = 0
        self.errors: list[tuple[int, str, BaseException]] = []
        self.wrong: list[tuple[int, str, Any, Any]] = []

    def plan(self) -> tuple[str, Any]:
        roll = self.rng.random()
        if roll < 0.45:
            return "get", self.rng.choice(self.keys)
        if roll < 0.75:
            self.version += 1
            key = self.rng.choice(self.keys)
            pad = "x" * 1000 if self.version % 5 == 0 else ""  # some values get compressed
            return "set", (key, {"key": key, "version": self.version, "pad": pad})
        if roll < 0.9:
            return "get_many", self.rng.sample(self.keys, 5)
        return "delete", self.rng.choice(self.keys)

    def check(self, key: str, got: Any, exact: bool) -> None:
        expected = self.model.get(key)
        if got != expected and (exact or got is not None):
            self.wrong.append((self.ops, key, expected, got))

    def done(self, op: str, arg: Any, result: Any, exact: bool) -> None:
        if op == "get":
            self.check(arg, result, exact)
        elif op == "set":
            self.model[arg[0]] = arg[1]
        elif op == "get_many":
            for key in arg:
                self.check(key, result.get(key), exact)
        else:
            self.model[arg] = None

    async def run_async(self, cache: TieredCache, ops: int, exact: bool, duration: float) -> None:
        """`ops` operations, spread over at least `duration` seconds."""
        start = time.monotonic()
        for done in range(1, ops + 1):
            op, arg = self.plan()
            self.ops += 1
            try:
                if op == "get":
                    result = await cache.get(arg)
                elif op == "set":
                    result = await cache.set(*arg)
                elif op == "get_many":
                    result = await cache.get_many(arg)
                else:
                    result = await cache.delete(arg)
            except Exception as exc:
                self.errors.append((self.ops, op, exc))
                continue
            self.done(op, arg, result, exact)
            ahead = start + duration * done / ops - time.monotonic()
            if ahead > 0.002:
                await asyncio.sleep(ahead)

    def run_sync(self, cache: SyncTieredCache, ops: int, exact: bool, duration: float) -> None:
        start = time.monotonic()
        for done in range(1, ops + 1):
            op, arg = self.plan()
            self.ops += 1
            try:
                if op == "get":
                    result = cache.get(arg)
                elif op == "set":
                    result = cache.set(*arg)
                elif op == "get_many":
                    result = cache.get_many(arg)
                else:
                    result = cache.delete(arg)
            except Exception as exc:
                self.errors.append((self.ops, op, exc))
                continue
            self.done(op, arg, result, exact)
            ahead = start + duration * done / ops - time.monotonic()
            if ahead > 0.002:
                time.sleep(ahead)


def check_breaker_history(
    transitions: Transitions, killed: float, restarted: float, final_state: str
) -> None:
    """Closed until the kill; opened by the outage and probed in vain while it lasted; closed
    again after the restart, and still closed at the end."""
    assert transitions.between(0, killed) == []
    during = transitions.between(killed, restarted)
    assert during[0] == ("closed", "open"), transitions.seen
    assert ("half_open", "open") in during, transitions.seen  # a probe failed: still down
    after = transitions.between(restarted, float("inf"))
    assert after[-1] == ("half_open", "closed"), transitions.seen
    assert ("closed", "open") not in after, transitions.seen
    assert final_state == "closed"


def channel_subscribers(raw: redis.Redis, ns: str) -> int:
    (_, count), *_ = raw.pubsub_numsub(f"{ns}__invalidate__")
    return int(count)


def small_l1() -> L1Cache:
    """An L1 smaller than the workload's 500 keys: some gets go to Redis."""
    return L1Cache(maxsize=200, ttl=300)


def fresh_values(count: int) -> dict[str, Any]:
    return {f"fresh{i}": {"fresh": i, "pad": "y" * (i * 20)} for i in range(count)}


def check_in_redis(raw: redis.Redis, ns: str, values: dict[str, Any]) -> None:
    codec = Codec()
    stored = raw.mget([f"{ns}{key}" for key in values])
    assert [codec.decode(data)[0] if data else None for data in stored] == list(values.values())


# --- 1. kill and restart --------------------------------------------------------------------------


def test_a_killed_and_restarted_redis_costs_misses_not_exceptions(
    server: RestartableRedis, ns: str
) -> None:
    workload = Workload(seed=1)
    breaker = CircuitBreaker("reliability-async", reset_timeout=RESET)
    transitions = Transitions(breaker)
    raw = redis.Redis.from_url(server.url)

    async def main() -> None:
        async with TieredCache(
            server.url, namespace=ns, breaker=breaker, timeout=0.5, l1=small_l1()
        ) as cache:
            await workload.run_async(cache, 2500, exact=True, duration=0)
            assert workload.wrong == []
            assert cache.stats().l2_hits > 0
            assert cache.stats().l2_errors == 0

            killed = time.monotonic()
            server.kill()
            await workload.run_async(cache, 4000, exact=False, duration=1.5)
            errors_during = cache.stats().l2_errors

            restarted = time.monotonic()
            server.start()
            await workload.run_async(cache, 3500, exact=False, duration=1.5)
            assert workload.ops == 10_000

            assert workload.errors == []
            assert workload.wrong == []
            stats = cache.stats()
            assert errors_during >= 5
            assert stats.l2_errors == errors_during  # none since the restart
            check_breaker_history(transitions, killed, restarted, stats.breaker_state)

            # The listener is subscribed again, values reach Redis, and L2 serves them.
            deadline = time.monotonic() + HANG
            while channel_subscribers(raw, ns) != 1:
                assert time.monotonic() < deadline, "the invalidation listener is not back"
                await asyncio.sleep(0.02)
            values = fresh_values(100)
            await cache.set_many(values)
            check_in_redis(raw, ns, values)
            cache.l1.clear()
            before = cache.stats().l2_hits
            assert await cache.get_many(values) == values
            assert await cache.get("fresh7") == values["fresh7"]  # from L1 again
            assert cache.stats().l2_hits == before + 100

    try:
        run(main)
    finally:
        raw.close()


def test_the_sync_cache_rides_out_a_killed_redis_too(server: RestartableRedis, ns: str) -> None:
    workload = Workload(seed=2)
    breaker = CircuitBreaker("reliability-sync", reset_timeout=RESET)
    transitions = Transitions(breaker)
    raw = redis.Redis.from_url(server.url)
    strict_breaker = CircuitBreaker("reliability-sync-strict", reset_timeout=1.0)
    try:
        with (
            SyncTieredCache(
                server.url, namespace=ns, breaker=breaker, timeout=0.5, l1=small_l1()
            ) as cache,
            SyncTieredCache(
                server.url, namespace=ns, breaker=strict_breaker, timeout=0.5, strict=True
            ) as strict,
        ):
            workload.run_sync(cache, 1000, exact=True, duration=0)
            assert workload.wrong == []
            assert strict.get("k0") == workload.model.get("k0")

            killed = time.monotonic()
            server.kill()
            workload.run_sync(cache, 1000, exact=False, duration=1.0)
            with pytest.raises(L2Error, match="redis GET failed"):
                strict.get("k1")
            for _ in range(5):
                with pytest.raises(L2Error):
                    strict.set("k1", 1)
            with pytest.raises(L2Error, match=r"circuit breaker .* is open"):
                strict.delete("k1")
            errors_during = cache.stats().l2_errors

            restarted = time.monotonic()
            server.start()
            workload.run_sync(cache, 1000, exact=False, duration=1.0)
            assert workload.errors == []
            assert workload.wrong == []
            stats = cache.stats()
            assert errors_during >= 5
            assert stats.l2_errors == errors_during
            check_breaker_history(transitions, killed, restarted, stats.breaker_state)

            deadline = time.monotonic() + HANG
            while channel_subscribers(raw, ns) != 2:
                assert time.monotonic() < deadline, "the invalidation listeners are not back"
                time.sleep(0.02)
            values = fresh_values(50)
            cache.set_many(values)
            check_in_redis(raw, ns, values)
            cache.l1.clear()
            before = cache.stats().l2_hits
            assert cache.get_many(values) == values
            assert cache.stats().l2_hits == before + 50
            # Its breaker opened before the restart, over a second ago: it tries Redis again.
            assert strict.get("fresh3") == values["fresh3"]
    finally:
        raw.close()


def test_a_strict_cache_raises_l2error_while_redis_is_down(
    server: RestartableRedis, ns: str
) -> None:
    # Longer than RESET: the breaker is still open when the calls below check that it is.
    breaker = CircuitBreaker("reliability-strict", reset_timeout=1.0)

    async def main() -> None:
        async with TieredCache(
            server.url, namespace=ns, breaker=breaker, timeout=0.5, strict=True
        ) as cache:
            await cache.set("k", "before")
            cache.l1.clear()
            assert await cache.get("k") == "before"

            server.kill()
            failures: list[BaseException] = []
            calls: list[Callable[[], Coroutine[Any, Any, Any]]] = [
                lambda: cache.get("other"),
                lambda: cache.get_many(["x", "y"]),
                lambda: cache.set("k", "during"),
                lambda: cache.delete("k"),
                lambda: cache.invalidate_tag("t"),
            ]
            for call in calls * 3:
                with pytest.raises(L2Error) as info:
                    await call()
                failures.append(info.value)
            assert all(isinstance(f, ConnectionError) for f in failures)
            assert "redis GET failed" in str(failures[0])
            assert "redis MGET failed" in str(failures[1])
            assert any("circuit breaker 'reliability-strict' is open" in str(f) for f in failures)
            assert cache.stats().breaker_state == "open"
            with pytest.raises(L2Error, match="is open"):
                await cache.set("w", "during")
            assert await cache.get("w") == "during"  # L1 was written, and serves it

            server.start()
            deadline = time.monotonic() + HANG
            while True:
                try:
                    await cache.set("k", "after")
                    break
                except L2Error:
                    assert time.monotonic() < deadline, "the strict cache never recovered"
                    await asyncio.sleep(0.05)
            cache.l1.clear()
            assert await cache.get("k") == "after"
            assert cache.stats().breaker_state == "closed"

    run(main)


# --- 2. two processes: how stale can another process's L1 be -------------------------------------


class Peer:
    """tests/tiered_peer.py in another process, reading keys over and over."""

    def __init__(self, url: str, namespace: str, mode: str, keys: list[str]) -> None:
        self.args = (url, namespace, mode, ",".join(keys))
        self.lines: list[dict[str, Any]] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PEER),
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.lines.append(json.loads(line))

    def current(self, key: str) -> Any:
        """What the peer last read for `key` (KeyError before its first read)."""
        for line in reversed(self.lines):
            if line.get("key") == key:
                return line["value"]
        raise KeyError(key)

    async def reads(self, expected: dict[str, Any]) -> None:
        """Waits until the peer reads `expected` (key: value)."""
        deadline = time.monotonic() + HANG

        def reached() -> bool:
            try:
                return all(self.current(k) == v for k, v in expected.items())
            except KeyError:
                return False

        while not reached():
            assert self._reader is not None
            assert not self._reader.done(), "the peer exited"
            assert time.monotonic() < deadline, f"the peer does not read {expected}"
            await asyncio.sleep(0.001)

    async def quit(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Stops the peer: (its last read of each key, its cache's stats)."""
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write(b"quit\n")
        await self.process.stdin.drain()
        assert self._reader is not None
        await asyncio.wait_for(self._reader, HANG)
        final = next(line["final"] for line in self.lines if "final" in line)
        stats = next(line["stats"] for line in self.lines if "stats" in line)
        return final, stats

    async def __aexit__(self, *exc_info: object) -> None:
        process = self.process
        assert process is not None
        if process.returncode is None and exc_info[0] is not None:
            process.kill()
        assert process.stdin is not None
        process.stdin.close()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, HANG)
        await asyncio.wait_for(process.wait(), HANG)
        if exc_info[0] is None:
            assert process.returncode == 0


@dataclass(frozen=True)
class Change:
    """A write of the test process (`kind`: the call): `key` went from `old` to `new`; the call
    started and returned at these time.time() instants."""

    kind: str
    key: str
    old: Any
    new: Any
    started: float
    returned: float


@dataclass(frozen=True)
class Interval:
    """The peer read `value` for `key` from the read starting at first_t0 (ending at first_t1)
    to the one starting at last_t0."""

    key: str
    value: Any
    first_t0: float
    first_t1: float
    last_t0: float


def intervals(lines: list[dict[str, Any]], final: dict[str, Any], key: str) -> list[Interval]:
    changes = [line for line in lines if line.get("key") == key]
    found = []
    for this, following in zip(changes, [*changes[1:], None], strict=True):
        last_t0 = final[key]["t0"] if following is None else following["prev_t0"]
        found.append(Interval(key, this["value"], this["t0"], this["t1"], last_t0))
    return found


def staleness(
    changes: list[Change], lines: list[dict[str, Any]], final: dict[str, Any]
) -> tuple[list[float], list[float]]:
    """For each change: how long after the writer's call returned the peer last started a read
    that returned the old value (negative: it had stopped before the call returned), and when
    the first read that returned the new value ended (relative to the same instant)."""
    stale: list[float] = []
    visible: list[float] = []
    for i, change in enumerate(changes):
        later = [c.started for c in changes[i + 1 :] if c.key == change.key]
        until = later[0] if later else float("inf")
        seen = [iv for iv in intervals(lines, final, change.key) if iv.first_t0 < until]
        old = [iv for iv in seen if iv.value == change.old]
        new = [iv for iv in seen if iv.value == change.new and iv.first_t1 >= change.started]
        assert old, f"the peer never read the old value of {change}"
        assert new, f"the peer never read the new value of {change}"
        stale.append(max(iv.last_t0 for iv in old) - change.returned)
        visible.append(min(iv.first_t1 for iv in new) - change.returned)
    return stale, visible


ROUNDS = 20


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_another_process_stops_reading_old_values_within_100_ms(
    redis_url: str, ns: str, mode: str
) -> None:
    keys = ["k", "g1", "g2"]
    changes: list[Change] = []

    async def write(kind: str, key_changes: dict[str, tuple[Any, Any]], call: Any) -> None:
        started = time.time()
        await call
        returned = time.time()
        changes.extend(
            Change(kind, k, old, new, started, returned) for k, (old, new) in key_changes.items()
        )

    async def main() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        async with TieredCache(redis_url, namespace=ns) as writer:
            await writer.set("k", "k-0")
            await writer.set_many({"g1": "g1-0", "g2": "g2-0"}, tags=["grp"])
            async with Peer(redis_url, ns, mode, keys) as peer:
                await peer.reads({"k": "k-0", "g1": "g1-0", "g2": "g2-0"})
                await asyncio.sleep(0.05)  # now from the peer's L1
                for r in range(1, ROUNDS + 1):
                    await write("set", {"k": (f"k-{r - 1}", f"k-{r}")}, writer.set("k", f"k-{r}"))
                    await peer.reads({"k": f"k-{r}"})
                    old = {g: (f"{g}-{r - 1}", None) for g in ("g1", "g2")}
                    await write("invalidate_tag", old, writer.invalidate_tag("grp"))
                    await peer.reads({"g1": None, "g2": None})
                    values = {"g1": f"g1-{r}", "g2": f"g2-{r}"}
                    back = {g: (None, v) for g, v in values.items()}
                    await write("set_many", back, writer.set_many(values, tags=["grp"]))
                    await peer.reads(values)
                    await asyncio.sleep(0.005)
                final, stats = await peer.quit()
                return peer.lines, final, stats

    lines, final, stats = run(main)
    stale, visible = staleness(changes, lines, final)
    for kind in ("set", "invalidate_tag", "set_many"):
        of_kind = [i for i, c in enumerate(changes) if c.kind == kind]
        s = [stale[i] * 1000 for i in of_kind]
        v = [visible[i] * 1000 for i in of_kind]
        print(
            f"\n[{mode} peer, {len(of_kind)} x {kind}] old value last read "
            f"max {max(s):+.2f} ms, median {statistics.median(s):+.2f} ms; new value first "
            f"read by max {max(v):+.2f} ms, median {statistics.median(v):+.2f} ms "
            "(after the writer's call returned)",
            end="",
        )
    late = [(c, s) for c, s in zip(changes, stale, strict=True) if s > STALENESS_BOUND]
    assert late == [], f"old values read more than {STALENESS_BOUND * 1000:.0f} ms later"

    # What the peer read, in order: each value once, never an older one again.
    assert [iv.value for iv in intervals(lines, final, "k")] == [
        f"k-{r}" for r in range(ROUNDS + 1)
    ]
    for g in ("g1", "g2"):
        expected = [f"{g}-0"]
        for r in range(1, ROUNDS + 1):
            expected += [None, f"{g}-{r}"]
        assert [iv.value for iv in intervals(lines, final, g)] == expected
    # The old values were in the peer's L1: only the announcements could drop them.
    assert stats["invalidations_received"] >= 3 * ROUNDS
    assert stats["l1_hits"] > stats["l2_hits"]


# --- invalidate_tag and the invalidating instance's own L1 ---------------------------------------


def test_invalidate_tag_drops_what_the_invalidating_instance_read_from_redis(
    redis_url: str, ns: str
) -> None:
    async def main() -> Any:
        async with (
            TieredCache(redis_url, namespace=ns) as a,
            TieredCache(redis_url, namespace=ns) as b,
        ):
            await a.set("u", "tagged", tags=["t"])
            assert await b.get("u") == "tagged"  # in b's L1 now, without its tags
            assert await b.invalidate_tag("t") == 1
            assert await a.get("u") is None  # a's copy went with the announcement
            return await b.get("u")

    left = [run(main)]
    with (
        SyncTieredCache(redis_url, namespace=ns) as a,
        SyncTieredCache(redis_url, namespace=ns) as b,
    ):
        a.set("s", "tagged", tags=["t"])
        assert b.get("s") == "tagged"
        assert b.invalidate_tag("t") == 1
        assert a.get("s") is None
        left.append(b.get("s"))
    # b read the values from Redis, so its L1 copies carry no tags; they must go all the same.
    assert left == [None, None]
