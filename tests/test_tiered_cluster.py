"""TieredCache and SyncTieredCache on a real Redis Cluster of 3 masters.

Every test runs with the cache making its own client from a `redis+cluster://` URL and with a
`RedisCluster` client passed in. Where keys are, is checked on each master directly (a plain
connection to the node, which answers only for its own slots), never through the cache.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from helixrt._redis_server import redis_cluster
from helixrt.tiered import L2Error, SyncTieredCache, TieredCache

pytestmark = pytest.mark.integration

FORMS = ["url", "client"]


@dataclass
class Cluster:
    """The cluster under test, seen from outside the cache."""

    url: str
    """`redis+cluster://...`, for the cache."""
    plain_url: str
    """`redis://...` of the seed node, for redis-py's RedisCluster."""
    masters: dict[int, redis.Redis]
    """A plain client per master, by port."""
    slots: list[tuple[int, int, int]]
    """(first slot, last slot, port of the master serving them)."""
    raw: redis.RedisCluster

    @property
    def seed(self) -> redis.Redis:
        return next(iter(self.masters.values()))

    def keyslot(self, name: str) -> int:
        return int(self.seed.execute_command("CLUSTER", "KEYSLOT", name))

    def owner(self, name: str) -> int:
        slot = self.keyslot(name)
        return next(port for first, last, port in self.slots if first <= slot <= last)

    def scan(self, port: int, match: str) -> set[str]:
        return {k.decode() for k in self.masters[port].scan_iter(match=match, count=1000)}

    def exists_on_owner(self, name: str) -> bool:
        return bool(self.masters[self.owner(name)].exists(name))

    def calls(self, command: str) -> dict[int, int]:
        """How many times each master has run `command` (INFO commandstats)."""
        counts = {}
        for port, client in self.masters.items():
            stats = client.info("commandstats").get(f"cmdstat_{command}", {"calls": 0})
            counts[port] = int(stats["calls"])
        return counts

    def spread(self, ns: str, prefix: str, per_master: int) -> list[str]:
        """Keys (under `ns`) on `per_master` distinct slots of every master."""
        chosen: dict[int, list[str]] = {port: [] for port in self.masters}
        seen_slots: set[int] = set()
        i = 0
        while any(len(keys) < per_master for keys in chosen.values()):
            key = f"{prefix}{i}"
            i += 1
            slot = self.keyslot(ns + key)
            port = self.owner(ns + key)
            if slot not in seen_slots and len(chosen[port]) < per_master:
                seen_slots.add(slot)
                chosen[port].append(key)
        return [key for keys in chosen.values() for key in keys]


@pytest.fixture(scope="module")
def cluster(redis_cluster_url: str) -> Iterator[Cluster]:
    assert redis_cluster_url.startswith("redis+cluster://")
    plain_url = "redis://" + redis_cluster_url.removeprefix("redis+cluster://")
    seed = redis.Redis.from_url(plain_url)
    slots = [(int(s[0]), int(s[1]), int(s[2][1])) for s in seed.execute_command("CLUSTER", "SLOTS")]
    seed.close()
    masters = {port: redis.Redis(host="127.0.0.1", port=port) for _, _, port in slots}
    assert len(masters) == 3
    assert sum(last - first + 1 for first, last, _ in slots) == 16384
    raw = redis.RedisCluster.from_url(plain_url)
    yield Cluster(redis_cluster_url, plain_url, masters, slots, raw)
    raw.close()
    for client in masters.values():
        client.close()


# The defects of tiered.py on a cluster that the tests look for (see `defects`), and the fix.
FIX = (
    "helixrt/tiered.py needs its RedisCluster fix (PUBLISH after, not inside, a cluster pipeline; "
    "initialize() before the async pubsub; UNLINK through the client, not the async pipeline)"
)


@pytest.fixture(scope="module")
def defects(cluster: Cluster) -> dict[str, str]:
    """What of the cache does not work on this cluster, found by trying it (strict caches, so
    a Redis failure raises instead of being counted): {name: what happened}. Tests that need a
    part found broken xfail, naming it; with the fix applied this is empty and they all run."""
    found: dict[str, str] = {}
    ns = f"probe{uuid.uuid4().hex[:8]}:"
    with SyncTieredCache(cluster.url, namespace=ns, strict=True) as sync:
        try:
            sync.set("k", 1)
            sync.delete("k")
        except L2Error as exc:
            found["sync writes"] = f"SyncTieredCache.set/delete raise {exc}"

    async def probe() -> None:
        async with TieredCache(cluster.url, namespace=ns, strict=True) as cache:
            try:
                await cache.set("k", 1)
                await cache.delete("k")
            except L2Error as exc:
                found["async writes"] = f"TieredCache.set/delete raise {exc}"
            # Another instance's announcement (written as one, not through a cache).
            message = {"o": "probe", "k": ["k"]}
            deadline = time.monotonic() + 1.0
            while cache.stats().invalidations_received == 0 and time.monotonic() < deadline:
                cluster.raw.publish(f"{ns}__invalidate__", json.dumps(message))
                await asyncio.sleep(0.02)
            if cache.stats().invalidations_received == 0:
                found["async listener"] = (
                    "TieredCache's invalidation listener never subscribed (on a RedisCluster "
                    "not yet initialized, redis.asyncio's ClusterPubSub.subscribe raises KeyError)"
                )
            cluster.raw.set(f"{ns}left", b"1")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # "coroutine never awaited"
                try:
                    await cache.clear()
                except L2Error as exc:
                    found["async clear"] = f"TieredCache.clear raises {exc}"
            if cluster.raw.exists(f"{ns}left"):
                found.setdefault(
                    "async clear",
                    "TieredCache.clear leaves the keys (redis.asyncio's cluster pipeline's "
                    "`unlink` is a coroutine: the pipeline of UNLINKs queues nothing)",
                )
                cluster.raw.delete(f"{ns}left")

    run(probe())
    return found


def needs(defects: dict[str, str], *parts: str) -> None:
    """xfail the test if one of the `parts` of the cache it relies on is broken on a cluster."""
    broken = [f"{part}: {defects[part]}" for part in parts if part in defects]
    if broken:
        pytest.xfail(f"{FIX}. " + "; ".join(broken))


@pytest.fixture
def ns() -> str:
    return f"c{uuid.uuid4().hex[:8]}:"


@asynccontextmanager
async def async_caches(
    cluster: Cluster, form: str, count: int, **options: Any
) -> AsyncIterator[list[TieredCache]]:
    """`count` TieredCaches, each with its own connections (as separate processes would)."""
    clients: list[aredis.RedisCluster] = []
    caches: list[TieredCache] = []
    try:
        for _ in range(count):
            if form == "url":
                cache = TieredCache(cluster.url, **options)
            else:
                client = aredis.RedisCluster.from_url(cluster.plain_url)
                clients.append(client)
                cache = TieredCache(client, **options)
            caches.append(cache)
            await cache.start()
        yield caches
    finally:
        for cache in caches:
            await cache.aclose()
        for client in clients:
            assert await client.ping()  # a client passed in is not closed by the cache
            await client.aclose()


@contextmanager
def sync_caches(
    cluster: Cluster, form: str, count: int, **options: Any
) -> Iterator[list[SyncTieredCache]]:
    clients: list[redis.RedisCluster] = []
    caches: list[SyncTieredCache] = []
    try:
        for _ in range(count):
            if form == "url":
                cache = SyncTieredCache(cluster.url, **options)
            else:
                client = redis.RedisCluster.from_url(cluster.plain_url)
                clients.append(client)
                cache = SyncTieredCache(client, **options)
            caches.append(cache)
        yield caches
    finally:
        for cache in caches:
            cache.close()
        for client in clients:
            assert client.ping()
            client.close()
    listener = f"helixrt-tiered-{options['namespace']}"
    assert not [t for t in threading.enumerate() if t.name == listener]


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def wait_until(condition: Any, within: float, what: str) -> float:
    """Polls `condition()` until true; returns how long it took; fails after `within` s."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"{what}: not within {within * 1000:.0f} ms"
        time.sleep(0.001)
    return time.monotonic() - started


async def await_until(condition: Any, within: float, what: str) -> float:
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < within, f"{what}: not within {within * 1000:.0f} ms"
        await asyncio.sleep(0.001)
    return time.monotonic() - started


def received(cache: TieredCache | SyncTieredCache, count: int) -> None:
    """Waits until `cache` has received `count` invalidations in all.

    On a cluster, an announcement reaches the node a subscriber listens on over the cluster bus,
    so it may arrive after the write that made it has returned. Until it does, a get of the key
    reads Redis without promoting the value into L1 (the cache cannot tell that invalidation
    from one about a newer value): tests that need the value in L1 wait for it first.
    """
    wait_until(lambda: cache.stats().invalidations_received >= count, 1.0, "the invalidation")


def test_the_cluster_has_three_masters_sharing_every_slot(cluster: Cluster) -> None:
    for client in cluster.masters.values():
        info = client.execute_command("CLUSTER", "INFO").decode()
        assert "cluster_state:ok" in info
        assert "cluster_known_nodes:3" in info
        assert "cluster_size:3" in info
    assert cluster.raw.set("probe", b"1")
    assert cluster.exists_on_owner("probe")
    assert cluster.raw.delete("probe") == 1


def test_redis_cluster_stops_every_node_and_removes_its_files() -> None:
    with redis_cluster(masters=2) as url:
        seed = redis.Redis(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]))
        ports = sorted(int(s[2][1]) for s in seed.execute_command("CLUSTER", "SLOTS"))
        workdir = str(seed.config_get("dir")["dir"])
        assert "cluster_state:ok" in seed.execute_command("CLUSTER", "INFO").decode()
        seed.close()
        assert len(ports) == 2
        assert {f"nodes-{port}.conf" for port in ports} <= set(os.listdir(workdir))
    assert not os.path.exists(workdir)
    for port in ports:  # every node is stopped: nothing listens on its port
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    with pytest.raises(FileNotFoundError, match="not on PATH"), redis_cluster(executable="nope"):
        pass
    with pytest.raises(ValueError, match="masters"), redis_cluster(masters=0):
        pass


def check_placement(cluster: Cluster, ns: str, keys: list[str], *others: str) -> None:
    """The keys are on distinct slots of all three masters, and each master holds exactly the
    ones of its slots (and of the `others`: other names in the namespace, such as tag sets)."""
    assert len({cluster.keyslot(ns + k) for k in keys}) == len(keys)
    owners = {ns + k: cluster.owner(ns + k) for k in keys}
    assert set(owners.values()) == set(cluster.masters)
    owners.update({name: cluster.owner(name) for name in others})
    for port in cluster.masters:
        assert cluster.scan(port, f"{ns}*") == {n for n, p in owners.items() if p == port}


# -- TieredCache ---------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_set_get_and_get_many_across_slots(
    cluster: Cluster, defects: dict[str, str], ns: str, form: str
) -> None:
    needs(defects, "async writes", "async listener")
    keys = cluster.spread(ns, "k", per_master=2)
    expected = {k: {"key": k, "n": i} for i, k in enumerate(keys)}

    async def main() -> None:
        async with async_caches(cluster, form, 2, namespace=ns) as (a, b):
            for key in keys[:3]:
                await a.set(key, expected[key], ttl=60)
            await a.set_many({k: expected[k] for k in keys[3:]}, ttl=60)
            await asyncio.to_thread(received, b, 4)
            check_placement(cluster, ns, keys)
            for key in keys:
                assert 50_000 < cluster.masters[cluster.owner(ns + key)].pttl(ns + key) <= 60_000
            assert await a.get(keys[0]) == expected[keys[0]]  # L1
            assert await b.get(keys[1]) == expected[keys[1]]  # Redis, on its master
            assert b.stats().l2_hits == 1
            b.l1.clear()
            assert await b.get_many([*keys, "missing"]) == expected
            assert b.stats().l2_hits == 1 + len(keys)
            assert b.stats().l2_misses == 1
            assert await b.get_many(keys) == expected  # now all from L1
            assert b.stats().l2_hits == 1 + len(keys)
            assert await a.delete(keys[-1]) is True
            assert not cluster.exists_on_owner(ns + keys[-1])

            async def b_sees_the_delete() -> bool:
                return await b.get(keys[-1]) is None

            await await_until(b_sees_the_delete, 0.1, "b seeing the delete")
            assert a.stats().l2_errors == b.stats().l2_errors == 0

    run(main())


@pytest.mark.parametrize("form", FORMS)
def test_gets_in_one_loop_turn_are_batched_per_slot(
    cluster: Cluster, defects: dict[str, str], ns: str, form: str
) -> None:
    needs(defects, "async writes")
    keys = cluster.spread(ns, "b", per_master=10)
    slots = {cluster.keyslot(ns + k) for k in [*keys, "missing"]}

    async def main() -> None:
        async with async_caches(cluster, form, 2, namespace=ns) as (writer, reader):
            await writer.set_many({k: i for i, k in enumerate(keys)})
            gets, mgets = cluster.calls("get"), cluster.calls("mget")
            asked = [*keys, keys[3], "missing"]
            values = await asyncio.gather(*(reader.get(k) for k in asked))
            assert values == [*range(len(keys)), 3, None]
            # the first goes at once as a GET on its master, the others in MGETs
            assert reader.stats().batched_gets == len(asked) - 1
            assert reader.stats().l2_hits == len(asked) - 1
            first = cluster.owner(ns + asked[0])
            assert cluster.calls("get") == {p: n + (p == first) for p, n in gets.items()}
            after = cluster.calls("mget")
            grown = {port: after[port] - mgets[port] for port in after}
            assert all(n >= 1 for n in grown.values()), grown  # every master got its share
            assert sum(grown.values()) <= len(slots)  # at most one MGET per slot
            # a lone get is a plain GET on the key's master
            reader.l1.clear()
            owner = cluster.owner(ns + keys[5])
            assert await reader.get(keys[5]) == 5
            assert cluster.calls("get")[owner] == gets[owner] + 1 + (owner == first)
            assert cluster.calls("mget") == after
            assert reader.stats().l2_errors == 0

    run(main())


@pytest.mark.parametrize("form", FORMS)
def test_a_tag_across_slots_is_invalidated_everywhere(
    cluster: Cluster, defects: dict[str, str], ns: str, form: str
) -> None:
    needs(defects, "async writes", "async listener")
    keys = cluster.spread(ns, "u", per_master=1)

    async def main() -> None:
        async with async_caches(cluster, form, 2, namespace=ns) as (a, b):
            for i, key in enumerate(keys):
                await a.set(key, i, tags=["grp"], ttl=100 + i)
            await a.set("other", "kept", tags=["keep"])
            await asyncio.to_thread(received, b, len(keys) + 1)
            tag_key = f"{ns}__tag__:grp"
            tag_master = cluster.masters[cluster.owner(tag_key)]
            assert tag_master.smembers(tag_key) == {k.encode() for k in keys}
            assert tag_master.pttl(tag_key) > 100_000  # outlives its longest-lived member
            check_placement(cluster, ns, keys, ns + "other", tag_key, f"{ns}__tag__:keep")
            for i, key in enumerate(keys):
                assert await b.get(key) == i
                assert b.l1.get(key) == i
            assert await b.get("other") == "kept"
            assert await a.invalidate_tag("grp") == len(keys)
            for key in keys:
                assert not cluster.exists_on_owner(ns + key)
            assert not cluster.exists_on_owner(tag_key)
            assert cluster.exists_on_owner(ns + "other")

            async def b_dropped_them() -> bool:
                return all(b.l1.get(k) is None for k in keys)

            await await_until(b_dropped_them, 1.0, "b's L1 dropping the tag's keys")
            for key in keys:
                assert await b.get(key) is None
            assert await b.get("other") == "kept"
            assert b.stats().invalidations_received >= 1

    run(main())


@pytest.mark.parametrize("form", FORMS)
def test_clear_empties_the_namespace_on_every_master(
    cluster: Cluster, defects: dict[str, str], ns: str, form: str
) -> None:
    needs(defects, "async writes", "async listener", "async clear")
    other_ns = f"o{uuid.uuid4().hex[:8]}:"
    cluster.raw.set(f"unrelated-{ns}", b"1")
    cluster.raw.set(f"{ns[:-1]}x", b"1")  # shares a prefix but not the namespace

    async def main() -> None:
        async with (
            async_caches(cluster, form, 2, namespace=ns) as (a, b),
            async_caches(cluster, form, 1, namespace=other_ns) as (other,),
        ):
            await a.set_many({f"k{i}": i for i in range(300)}, tags=["t"])
            await other.set_many({f"k{i}": i for i in range(30)})
            await asyncio.to_thread(received, b, 1)
            assert await b.get("k7") == 7
            assert b.l1.get("k7") == 7
            per_master = {port: cluster.scan(port, f"{ns}*") for port in cluster.masters}
            assert all(per_master.values()), "every master holds some of the namespace"
            assert sum(len(names) for names in per_master.values()) == 301  # + the tag set
            await a.clear()
            for port in cluster.masters:
                assert cluster.scan(port, f"{ns}*") == set(), f"left on the master at :{port}"
            assert sum(len(cluster.scan(port, f"{other_ns}*")) for port in cluster.masters) == 30
            assert await a.get("k1") is None

            async def b_dropped_it() -> bool:
                return b.l1.get("k7") is None

            await await_until(b_dropped_it, 1.0, "b's L1 dropping a cleared key")
            assert await b.get("k7") is None
            assert await other.get("k7") == 7

    run(main())
    assert cluster.raw.get(f"unrelated-{ns}") == b"1"
    assert cluster.raw.get(f"{ns[:-1]}x") == b"1"
    cluster.raw.delete(f"unrelated-{ns}")
    cluster.raw.delete(f"{ns[:-1]}x")


@pytest.mark.parametrize("form", FORMS)
def test_an_overwrite_reaches_the_other_instances_l1_within_100_ms(
    cluster: Cluster, defects: dict[str, str], ns: str, form: str
) -> None:
    needs(defects, "async writes", "async listener")
    keys = cluster.spread(ns, "k", per_master=1)

    async def main() -> None:
        async with async_caches(cluster, form, 2, namespace=ns) as (a, b):
            for n, key in enumerate(keys):  # one key per master
                await a.set(key, "old")
                await asyncio.to_thread(received, b, 3 * n + 1)
                assert await b.get(key) == "old"
                assert b.l1.get(key) == "old"
                await a.set(key, "new")

                async def b_sees_new(key: str = key) -> bool:
                    return bool(await b.get(key) == "new")

                staleness = await await_until(b_sees_new, 0.1, "b seeing the overwrite")
                print(f"staleness on the cluster: {staleness * 1000:.2f} ms")
                await a.delete(key)

                async def b_sees_none(key: str = key) -> bool:
                    return await b.get(key) is None

                await await_until(b_sees_none, 0.1, "b seeing the delete")
            assert b.stats().invalidations_received == 3 * len(keys)

    run(main())


@pytest.mark.parametrize("form", FORMS)
def test_lock_true_loads_once_across_instances(
    cluster: Cluster, defects: dict[str, str], ns: str, form: str
) -> None:
    needs(defects, "async writes")
    calls = 0

    async def loader() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        return "once"

    async def main() -> None:
        async with async_caches(cluster, form, 4, namespace=ns) as caches:
            values = await asyncio.gather(
                *(c.get_or_set("k", loader, lock=True) for c in caches for _ in range(5))
            )
            assert values == ["once"] * 20
            assert calls == 1
            assert cluster.exists_on_owner(f"{ns}k")
            assert not cluster.exists_on_owner(f"{ns}__lock__:k")  # the lease is released

    run(main())


# -- SyncTieredCache -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_sync_set_get_and_get_many_across_slots(
    cluster: Cluster, defects: dict[str, str], ns: str, form: str
) -> None:
    needs(defects, "sync writes")
    keys = cluster.spread(ns, "k", per_master=2)
    expected = {k: [k, i] for i, k in enumerate(keys)}
    with sync_caches(cluster, form, 2, namespace=ns) as (a, b):
        for key in keys[:3]:
            a.set(key, expected[key])
        a.set_many({k: expected[k] for k in keys[3:]})
        received(b, 4)
        check_placement(cluster, ns, keys)
        assert b.get(keys[0]) == expected[keys[0]]
        assert b.l1.get(keys[0]) == expected[keys[0]]
        assert b.get_many([*keys, "missing"]) == expected
        assert b.stats().l2_hits == len(keys)
        assert b.stats().l2_misses == 1
        assert a.delete(keys[0]) is True
        assert not cluster.exists_on_owner(ns + keys[0])
        wait_until(lambda: b.get(keys[0]) is None, 0.1, "b seeing the delete")
        assert a.stats().l2_errors == b.stats().l2_errors == 0


@pytest.mark.parametrize("form", FORMS)
def test_sync_a_tag_across_slots_is_invalidated_everywhere(
    cluster: Cluster, defects: dict[str, str], ns: str, form: str
) -> None:
    needs(defects, "sync writes")
    keys = cluster.spread(ns, "u", per_master=1)
    with sync_caches(cluster, form, 2, namespace=ns) as (a, b):
        for i, key in enumerate(keys):
            a.set(key, i, tags=["grp"])
        a.set("other", "kept")
        received(b, len(keys) + 1)
        tag_key = f"{ns}__tag__:grp"
        assert cluster.masters[cluster.owner(tag_key)].smembers(tag_key) == {
            k.encode() for k in keys
        }
        for i, key in enumerate(keys):
            assert b.get(key) == i
            assert b.l1.get(key) == i
        assert a.invalidate_tag("grp") == len(keys)
        for key in keys:
            assert not cluster.exists_on_owner(ns + key)
        assert not cluster.exists_on_owner(tag_key)
        wait_until(
            lambda: all(b.l1.get(k) is None for k in keys), 1.0, "b's L1 dropping the tag's keys"
        )
        assert [b.get(k) for k in keys] == [None] * len(keys)
        assert b.get("other") == "kept"


@pytest.mark.parametrize("form", FORMS)
def test_sync_clear_empties_the_namespace_on_every_master(
    cluster: Cluster, defects: dict[str, str], ns: str, form: str
) -> None:
    needs(defects, "sync writes")
    other_ns = f"o{uuid.uuid4().hex[:8]}:"
    cluster.raw.set(f"unrelated-{ns}", b"1")
    with (
        sync_caches(cluster, form, 2, namespace=ns) as (a, b),
        sync_caches(cluster, form, 1, namespace=other_ns) as (other,),
    ):
        a.set_many({f"k{i}": i for i in range(300)}, tags=["t"])
        other.set_many({f"k{i}": i for i in range(30)})
        received(b, 1)
        assert b.get("k7") == 7
        assert b.l1.get("k7") == 7
        per_master = {port: cluster.scan(port, f"{ns}*") for port in cluster.masters}
        assert all(per_master.values()), "every master holds some of the namespace"
        assert sum(len(names) for names in per_master.values()) == 301
        a.clear()
        for port in cluster.masters:
            assert cluster.scan(port, f"{ns}*") == set(), f"left on the master at :{port}"
        assert sum(len(cluster.scan(port, f"{other_ns}*")) for port in cluster.masters) == 30
        wait_until(lambda: b.l1.get("k7") is None, 1.0, "b's L1 dropping a cleared key")
        assert b.get("k7") is None
        assert other.get("k7") == 7
    assert cluster.raw.get(f"unrelated-{ns}") == b"1"
    cluster.raw.delete(f"unrelated-{ns}")


@pytest.mark.parametrize("form", FORMS)
def test_sync_an_overwrite_reaches_the_other_instances_l1_within_100_ms(
    cluster: Cluster, defects: dict[str, str], ns: str, form: str
) -> None:
    needs(defects, "sync writes")
    keys = cluster.spread(ns, "k", per_master=1)
    with sync_caches(cluster, form, 2, namespace=ns) as (a, b):
        for n, key in enumerate(keys):
            a.set(key, "old")
            received(b, 3 * n + 1)
            assert b.get(key) == "old"
            assert b.l1.get(key) == "old"
            a.set(key, "new")
            wait_until(lambda key=key: b.get(key) == "new", 0.1, "b seeing the overwrite")
            a.delete(key)
            wait_until(lambda key=key: b.get(key) is None, 0.1, "b seeing the delete")
        received(b, 3 * len(keys))
        assert b.stats().invalidations_received == 3 * len(keys)


@pytest.mark.parametrize("form", FORMS)
def test_sync_lock_true_loads_once_across_instances(
    cluster: Cluster, defects: dict[str, str], ns: str, form: str
) -> None:
    needs(defects, "sync writes")
    calls: list[int] = []
    values: list[object] = []

    def loader() -> str:
        calls.append(1)
        time.sleep(0.1)
        return "once"

    with sync_caches(cluster, form, 3, namespace=ns) as caches:
        threads = [
            threading.Thread(target=lambda c=c: values.append(c.get_or_set("k", loader, lock=True)))
            for c in caches
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert values == ["once"] * 12
        assert calls == [1]
        assert not cluster.exists_on_owner(f"{ns}__lock__:k")


def test_the_sync_and_async_caches_share_values_and_invalidations(
    cluster: Cluster, defects: dict[str, str], ns: str
) -> None:
    needs(defects, "sync writes", "async writes", "async listener")
    keys = cluster.spread(ns, "m", per_master=1)
    with sync_caches(cluster, "url", 1, namespace=ns) as (sync,):
        sync.set_many({k: {"v": 1} for k in keys})
        assert [sync.get(k) for k in keys] == [{"v": 1}] * len(keys)

        async def overwrite() -> None:
            async with async_caches(cluster, "url", 1, namespace=ns) as (cache,):
                assert await cache.get_many(keys) == {k: {"v": 1} for k in keys}
                await cache.set_many({k: {"v": 2} for k in keys})

        run(overwrite())
        wait_until(
            lambda: all(sync.get(k) == {"v": 2} for k in keys), 0.1, "sync seeing the overwrite"
        )
