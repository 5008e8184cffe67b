"""Model-based test of L1Cache: hypothesis drives random sequences of set, get, [], get_many,
delete, del, pop, in, invalidate_tag, remaining_ttl, clear and clock moves against a reference
model (a dict and a nanosecond clock mirroring the cache's manual one).

Eviction order (S3-FIFO) is not modelled: the model is the set of entries that may be present,
and an entry it holds may only go missing when the cache's eviction counter explains it. Whatever
the cache does hold must be the latest value set for that key: never a stale value, nor a key
deleted, expired or invalidated. Expiry (TTL per entry, time to idle), hit and miss counts,
inserts and updates, bounds on size and weight and tag invalidation counts are checked exactly.

Full audits (len, items, stats) purge expired entries, so they run only as an occasional rule
and at the end of each run: between them expired entries linger unpurged, as in real use, and
sets, reads and tag invalidations meet them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from helixrt import L1Cache

NEVER = 2**64 - 1  # the core's "no deadline", in nanoseconds
MISSING: Any = object()
# 1, 1.0 and True are one key, as in a dict.
KEYS = st.sampled_from([*range(16), "a", "bb", "ccc", 1.0, 2.0, True])
VALUES = st.integers(0, 99)
TAG = st.sampled_from(["a", "b", "c"])
TAGS = st.lists(TAG, max_size=3)
TTLS = st.sampled_from([None, 0.5, 1.0, 2.5, 3.0, 10.0, math.inf])
STEPS = st.one_of(st.sampled_from([0.5, 1.0, 2.5, 3.0, 5.0]), st.floats(0.1, 5.0))
SETTINGS = settings(max_examples=150, stateful_step_count=40, deadline=None)


def ticks(seconds: float) -> int:
    """Seconds to the core's ticks, converted as the core does (truncated, saturating)."""
    nanos = seconds * 1e9
    return NEVER if nanos >= float(NEVER) else int(nanos)


def later(now: int, delta: int) -> int:
    return min(now + delta, NEVER)


def weigh(key: Any, value: int) -> int:
    return value % 5 + 1


class UnsweptCache(L1Cache):
    """L1Cache without the background sweeper: its purges run on real time, which would make a
    failing example depend on timing. Purging is exercised by the audits instead."""

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


@dataclass
class Entry:
    value: int
    expires: int
    idle_expires: int
    tags: set[str]

    @property
    def deadline(self) -> int:
        return min(self.expires, self.idle_expires)


class CacheMachine(RuleBasedStateMachine):
    MAXSIZE: ClassVar[int] = 8
    TTL: ClassVar[float] = 10.0
    TTI: ClassVar[float | None] = None
    MAX_WEIGHT: ClassVar[int | None] = None

    def __init__(self) -> None:
        super().__init__()
        extra: dict[str, Any] = {}
        if self.MAX_WEIGHT is not None:
            extra = {"max_weight": self.MAX_WEIGHT, "weigher": weigh}
        self.cache = UnsweptCache(self.MAXSIZE, self.TTL, tti=self.TTI, _manual_clock=True, **extra)
        self.tti = NEVER if self.TTI is None else ticks(self.TTI)
        self.now = 0
        # Every key here is live (not expired) and, after each rule, present in the cache.
        self.model: dict[Any, Entry] = {}
        self.hits = self.misses = self.evictions_seen = 0
        # Writes, and how many of them the model saw as new keys: a key that a set_many evicts
        # and sets again in the same call is one more insert than that.
        self.writes = self.inserts = 0
        self.known: dict[Any, None] = {}  # every key set so far, in order

    def read(self, key: Any, got: Any) -> None:
        """Checks what one counted lookup returned (MISSING for a miss) and models the read."""
        entry = self.model.get(key)
        if entry is None:
            assert got is MISSING, f"{key!r} should be absent, got {got!r}"
            self.misses += 1
        else:
            assert got == entry.value, f"{key!r}: got {got!r}, model has {entry.value!r}"
            entry.idle_expires = later(self.now, self.tti)
            self.hits += 1

    def pick(self, data: st.DataObject) -> Any:
        """A key: often one set before (live, or gone since), else any from the pool."""
        pool = st.one_of(st.sampled_from(list(self.known)), KEYS) if self.known else KEYS
        return data.draw(pool, label="key")

    def model_set(self, key: Any, value: int, ttl: float | None, tags: list[str]) -> None:
        lifetime = ticks(self.TTL if ttl is None else ttl)
        entry = Entry(value, later(self.now, lifetime), later(self.now, self.tti), set(tags))
        self.writes += 1
        self.inserts += key not in self.model
        self.model[key] = entry
        self.known.setdefault(key)

    def check_evictions(self, new_keys: int) -> None:
        """Only sets evict: which entries go is the cache's choice, how many must be explained."""
        missing = [k for k in self.model if k not in self.cache]
        if not missing:
            return
        evictions = self.cache.stats().evictions
        assert len(missing) <= evictions - self.evictions_seen, f"lost {missing} unevicted"
        self.evictions_seen = evictions
        if self.MAX_WEIGHT is None:
            # Counted in entries, each new key evicts at most one entry; an update none.
            assert len(missing) <= new_keys, f"{new_keys} new keys evicted {missing}"
        for k in missing:
            del self.model[k]

    @rule(data=st.data(), value=VALUES, ttl=TTLS, tags=TAGS, item=st.booleans())
    def store(
        self, data: st.DataObject, value: int, ttl: float | None, tags: list[str], item: bool
    ) -> None:
        key = self.pick(data)
        new_keys = int(key not in self.model)
        if item and ttl is None and not tags:
            self.cache[key] = value
        else:
            self.cache.set(key, value, ttl=ttl, tags=tags)
        self.model_set(key, value, ttl, tags)
        self.check_evictions(new_keys)

    @initialize(items=st.dictionaries(KEYS, VALUES, max_size=12), ttl=TTLS, tags=TAGS)
    def fill(self, items: dict[Any, int], ttl: float | None, tags: list[str]) -> None:
        self.store_many(items, ttl, tags)

    @rule(items=st.dictionaries(KEYS, VALUES, max_size=6), ttl=TTLS, tags=TAGS)
    def store_many(self, items: dict[Any, int], ttl: float | None, tags: list[str]) -> None:
        new_keys = sum(k not in self.model for k in items)
        self.cache.set_many(items, ttl=ttl, tags=tags)
        for key, value in items.items():
            self.model_set(key, value, ttl, tags)
        self.check_evictions(new_keys)

    @rule(data=st.data(), item=st.booleans())
    def get(self, data: st.DataObject, item: bool) -> None:
        key = self.pick(data)
        if not item:
            self.read(key, self.cache.get(key, MISSING))
            return
        try:
            got = self.cache[key]
        except KeyError:
            got = MISSING
        self.read(key, got)

    @rule(data=st.data())
    def get_many(self, data: st.DataObject) -> None:
        keys = [self.pick(data) for _ in range(data.draw(st.integers(0, 4), label="n"))]
        expected = {k: self.model[k].value for k in keys if k in self.model}
        assert self.cache.get_many(keys) == expected
        for key in keys:
            self.read(key, self.model[key].value if key in self.model else MISSING)

    @rule(data=st.data(), how=st.sampled_from(["delete", "del", "pop"]))
    def delete(self, data: st.DataObject, how: str) -> None:
        key = self.pick(data)
        entry = self.model.pop(key, None)
        if how == "delete":
            assert self.cache.delete(key) is (entry is not None)
        elif how == "pop":
            assert self.cache.pop(key, MISSING) == (MISSING if entry is None else entry.value)
        else:
            try:
                del self.cache[key]
            except KeyError:
                assert entry is None, f"del {key!r} raised KeyError, model has {entry}"
            else:
                assert entry is not None, f"del {key!r} removed what the model does not hold"

    @rule(data=st.data())
    def contains(self, data: st.DataObject) -> None:
        key = self.pick(data)
        assert (key in self.cache) is (key in self.model)

    @rule(tag=TAG)
    def invalidate_tag(self, tag: str) -> None:
        tagged = [k for k, entry in self.model.items() if tag in entry.tags]
        assert self.cache.invalidate_tag(tag) == len(tagged)
        for k in tagged:
            del self.model[k]
        assert not any(k in self.cache for k in tagged)

    @rule(data=st.data())
    def remaining_ttl(self, data: st.DataObject) -> None:
        key = self.pick(data)
        got = self.cache.remaining_ttl(key)
        entry = self.model.get(key)
        if entry is None:
            assert got is None
        elif entry.deadline == NEVER:
            assert got == math.inf
        else:
            assert got is not None
            assert got == pytest.approx((entry.deadline - self.now) / 1e9, abs=1e-6)

    @rule(seconds=STEPS)
    def advance(self, seconds: float) -> None:
        self.cache._advance(seconds)
        self.now += ticks(seconds)
        self.model = {k: e for k, e in self.model.items() if e.deadline > self.now}

    @precondition(lambda self: len(self.model) >= 4)  # else runs would mostly start empty
    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.clear()
        assert len(self.cache) == 0

    @invariant()
    def model_entries_present(self) -> None:
        # `in` is not a read and the model's keys are live: this leaves the cache as it was.
        assert all(k in self.cache for k in self.model)

    @rule()
    def audit(self) -> None:
        pairs = list(self.cache.items())
        present = dict(pairs)
        assert len(present) == len(pairs), f"one key stored twice: {pairs}"
        assert set(self.cache.keys()) == set(present)
        for key, value in present.items():
            assert key in self.model, f"{key!r} is back after being deleted, expired or dropped"
            assert value == self.model[key].value, f"{key!r}: stale value {value!r}"
        assert len(present) == len(self.model)
        stats = self.cache.stats()
        assert len(self.cache) == stats.size == len(present) <= self.MAXSIZE
        assert (stats.hits, stats.misses) == (self.hits, self.misses)
        assert stats.inserts + stats.updates == self.writes
        assert stats.inserts >= self.inserts
        assert stats.evictions >= self.evictions_seen
        self.evictions_seen = stats.evictions
        if self.MAX_WEIGHT is not None:
            total = sum(weigh(k, v) for k, v in present.items())
            assert stats.weight == total <= self.MAX_WEIGHT

    def teardown(self) -> None:
        self.audit()


class IdleCacheMachine(CacheMachine):
    TTI = 3.0


class WeightedCacheMachine(CacheMachine):
    MAX_WEIGHT = 12


TestCacheModel = CacheMachine.TestCase
TestCacheModel.settings = SETTINGS
TestIdleCacheModel = IdleCacheMachine.TestCase
TestIdleCacheModel.settings = SETTINGS
TestWeightedCacheModel = WeightedCacheMachine.TestCase
TestWeightedCacheModel.settings = SETTINGS
